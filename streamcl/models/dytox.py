"""DyTox's network: one shared ViT encoder, one task token per task, per-task heads.

Douillard et al., "DyTox: Transformers for Continual Learning with DYnamic TOken
eXpansion", CVPR 2022. The network (:class:`DyToxNet`) is

    image -> PatchEmbed + position embedding -> self-attention blocks (SABs, the encoder)
          -> task-attention block(s) (TAB, the decoder), run for every task token
          -> task embedding e_i -> head_i (LayerNorm + Linear over task i's classes)

and the logits of all heads, concatenated in task order, classify among every class
seen so far. Each new task adds a task token (a copy of the last one), a head for its
classes and a new divergence head (its new classes + 1 "old" class, a training aid
that :class:`streamcl.strategies.DyTox` uses in the main phase only). The encoder and
the TAB are shared by all tasks, so a task costs ``embed_dim`` + one head's
parameters: 10.73 M / 10.74 M / 10.77 M at 10 / 20 / 50 CIFAR-100 steps.

Built from timm: :class:`timm.layers.PatchEmbed`, timm's ViT ``Block`` (itself
``timm.layers`` Attention, Mlp, DropPath, LayerNorm) for the SABs, and a TAB whose
attention subclasses :class:`timm.layers.Attention`. The original SABs are ConViT
blocks with gated positional self-attention; here they are plain ViT blocks with a
learned position embedding (60 parameters per block fewer: GPSA's position
projection and gates).

The model is an Avalanche ``DynamicModule``: in training mode,
``avalanche_model_adaptation`` (called by every Avalanche strategy before an
experience) adds a task for the experience's unseen classes, so the same network
also runs under ``Naive`` or any other strategy. ``forward(x)`` returns logits in
label space (column ``c`` = class ``c``; classes not seen yet get the lowest float),
which is what Avalanche's metrics expect; :meth:`DyToxNet.forward_all` returns the
task-ordered logits, the divergence logits and the task embeddings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterator, List, Literal, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from avalanche.models import DynamicModule
from timm.layers import Attention, DropPath, LayerNorm, Mlp, PatchEmbed, trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from streamcl.errors import ConfigError
from streamcl.registry import register_model

__all__ = [
    "DyToxNet",
    "DyToxOutput",
    "TaskAttention",
    "TaskAttentionBlock",
    "TaskHead",
    "dytox",
    "parameter_count",
    "task_summary",
]

TokenInit = Literal["copy", "trunc_normal"]


class TaskAttention(Attention):
    """timm's ``Attention`` where only task tokens query, each attending to itself and the patch tokens.

    Same parameters as the parent (``qkv``, ``proj``); only ``forward`` differs. It is
    written over timm's layer because timm has no attention of this shape: CaiT's
    ``ClassAttn`` decodes a single class token, so running it once per task token
    would recompute the patches' keys and values T times. Here the T tokens are
    decoded in one pass; the mask lets token i see only token i and the patches,
    which is exactly T separate passes of the paper's TAB (tested against the parent
    ``Attention`` run on ``[token_i, patches]``).
    """

    def forward(self, tokens: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        """``tokens`` (B, T, C) and ``patches`` (B, N, C), both already normalised -> (B, T, C)."""
        B, T, _ = tokens.shape
        N = patches.shape[1]
        a, h, d = self.attn_dim, self.num_heads, self.head_dim
        bias = self.qkv.bias
        q = F.linear(tokens, self.qkv.weight[:a], None if bias is None else bias[:a])
        kv = F.linear(torch.cat([tokens, patches], dim=1), self.qkv.weight[a:], None if bias is None else bias[a:])
        q = q.reshape(B, T, h, d).transpose(1, 2)
        k, v = kv.reshape(B, T + N, 2, h, d).permute(2, 0, 3, 1, 4).unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        allowed = torch.ones(T, T + N, dtype=torch.bool, device=tokens.device)
        allowed[:, :T] = torch.eye(T, dtype=torch.bool, device=tokens.device)
        x = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.attn_drop.p if self.training else 0.0
        )
        x = self.norm(x.transpose(1, 2).reshape(B, T, a))
        return self.proj_drop(self.proj(x))


class TaskAttentionBlock(nn.Module):
    """The TAB: pre-norm task attention + MLP, with residuals on the task tokens only (the patches pass through)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.norm1 = LayerNorm(dim)
        self.attn = TaskAttention(dim, num_heads=num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)

    def forward(self, tokens: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
        """(B, T, C) task tokens, (B, N, C) patch tokens -> (B, T, C) task embeddings."""
        tokens = tokens + self.drop_path(self.attn(self.norm1(tokens), self.norm1(patches)))
        return tokens + self.drop_path(self.mlp(self.norm2(tokens)))


class TaskHead(nn.Module):
    """One task's classifier: LayerNorm + Linear (the paper's independent classifier)."""

    def __init__(self, dim: int, n_classes: int):
        super().__init__()
        self.norm = LayerNorm(dim)
        self.fc = nn.Linear(dim, n_classes)
        trunc_normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    @property
    def n_classes(self) -> int:
        return self.fc.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(x))


@dataclass
class DyToxOutput:
    """Everything one forward pass gives the strategy."""

    logits: torch.Tensor  # (B, n_seen) task-ordered: head 0's classes, then head 1's ...
    div_logits: Optional[torch.Tensor]  # (B, n_new + 1) from the last token, or None (one task / disabled)
    tokens: torch.Tensor  # (B, T, C) task embeddings


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class DyToxNet(DynamicModule):
    """DyTox's transformer with dynamic task tokens (see the module docstring).

    :param num_classes: size of the label space (``forward`` returns this many columns).
    :param depth: number of blocks in all: ``depth - num_tabs`` SABs then ``num_tabs`` TABs
        (the paper: 6 = 5 + 1).
    :param divergence_head: build the divergence head from the second task on.
    :param new_token_init: ``copy`` (a new task token starts as a copy of the last one) or
        ``trunc_normal`` (what the authors' code ends up doing: it copies, then re-draws).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        img_size: int = 32,
        patch_size: int = 4,
        in_chans: int = 3,
        embed_dim: int = 384,
        depth: int = 6,
        num_tabs: int = 1,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = False,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.1,
        divergence_head: bool = True,
        new_token_init: TokenInit = "copy",
    ):
        super().__init__()
        _check_sizes(num_classes, img_size, patch_size, embed_dim, depth, num_tabs, num_heads, new_token_init)
        self.num_classes = int(num_classes)
        self.img_size = int(img_size)
        self.embed_dim = int(embed_dim)
        self.use_divergence_head = bool(divergence_head)
        self.new_token_init = new_token_init

        self.patch_embed = PatchEmbed(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches, embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = [float(r) for r in torch.linspace(0, drop_path_rate, depth, device="cpu")]  # stochastic depth rule
        n_sab = depth - num_tabs
        self.sabs = nn.Sequential(*[
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=drop_rate,
                  attn_drop=attn_drop_rate, drop_path=rates[i])
            for i in range(n_sab)
        ])
        self.tabs = nn.ModuleList([
            TaskAttentionBlock(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, proj_drop=drop_rate,
                               attn_drop=attn_drop_rate, drop_path=rates[n_sab + i])
            for i in range(num_tabs)
        ])
        self.task_tokens = nn.ParameterList([nn.Parameter(torch.zeros(1, 1, embed_dim))])
        self.heads = nn.ModuleList()
        self.head_div: Optional[TaskHead] = None
        # Task structure: a Python list (readable on any device, meta included), mirrored in
        # buffers so that the state dict carries it and load_state_dict can rebuild the model.
        self._tasks: List[List[int]] = []
        self.register_buffer("task_sizes", torch.zeros(0, dtype=torch.long))
        self.register_buffer("class_order", torch.zeros(0, dtype=torch.long))
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.task_tokens[0], std=0.02)
        self.apply(_init_weights)

    # -- task structure -----------------------------------------------------------------------

    @property
    def n_tasks(self) -> int:
        return len(self.heads)

    @property
    def known_classes(self) -> List[int]:
        """Labels of the classes seen so far, in column (task) order."""
        return [c for task in self._tasks for c in task]

    @property
    def classes_per_task(self) -> List[int]:
        return [len(task) for task in self._tasks]

    def add_task(self, classes: Sequence[int]) -> None:
        """Expand for a new task over ``classes`` (labels): a task token (from the second task on), a head, the divergence head."""
        classes = [int(c) for c in classes]
        known = set(self.known_classes)
        if not classes or len(set(classes)) != len(classes):
            raise ValueError(f"a task needs distinct classes, got {classes}")
        bad = [c for c in classes if c in known or not 0 <= c < self.num_classes]
        if bad:
            raise ValueError(
                f"classes {bad} are already known or outside 0..{self.num_classes - 1} (known: {sorted(known)})"
            )
        ref = self.pos_embed
        if self.heads:
            token = self.task_tokens[-1].detach().clone()
            if self.new_token_init == "trunc_normal":
                trunc_normal_(token, std=0.02)
            self.task_tokens.append(nn.Parameter(token, requires_grad=True))
        with torch.device(ref.device):  # new parameters where the model lives (meta included)
            self.heads.append(TaskHead(self.embed_dim, len(classes)).to(dtype=ref.dtype))
            if self.use_divergence_head and len(self.heads) > 1:
                self.head_div = TaskHead(self.embed_dim, len(classes) + 1).to(dtype=ref.dtype)
        self._tasks.append(classes)
        self._sync_buffers()

    def _sync_buffers(self) -> None:
        dev = self.pos_embed.device
        self.task_sizes = torch.tensor(self.classes_per_task, dtype=torch.long, device=dev)
        self.class_order = torch.tensor(self.known_classes, dtype=torch.long, device=dev)

    def adaptation(self, experience) -> None:
        """Avalanche hook: in training mode, add a task for the experience's classes not seen yet."""
        super().adaptation(experience)
        if not self.training:
            return
        known = set(self.known_classes)
        new = sorted(int(c) for c in experience.classes_in_this_experience if int(c) not in known)
        if new:
            self.add_task(new)

    def _rebuild_tasks(self, sizes: Sequence[int], order: Sequence[int]) -> None:
        """Reshape the task-dependent parts to ``sizes``/``order`` (values are loaded afterwards)."""
        if list(sizes) == self.classes_per_task and list(order) == self.known_classes:
            return
        self.task_tokens = nn.ParameterList(list(self.task_tokens)[:1])
        self.heads = nn.ModuleList()
        self.head_div = None
        self._tasks = []
        self._sync_buffers()
        start = 0
        for n in sizes:
            self.add_task(list(order[start:start + int(n)]))
            start += int(n)

    def load_state_dict(self, state_dict: Mapping[str, torch.Tensor], strict: bool = True, assign: bool = False):
        """Load a state dict saved after any number of tasks: tokens and heads are added or removed to match it."""
        sizes, order = state_dict.get("task_sizes"), state_dict.get("class_order")
        if sizes is not None and order is not None:
            self._rebuild_tasks([int(n) for n in sizes.tolist()], [int(c) for c in order.tolist()])
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # -- freezing -----------------------------------------------------------------------------

    def encoder_parameters(self) -> Iterator[nn.Parameter]:
        """Patch embedding, position embedding and SABs: what the finetuning phase freezes."""
        yield from self.patch_embed.parameters()
        yield self.pos_embed
        yield from self.sabs.parameters()

    def set_trainable(self, *, encoder: bool = True, old_tasks: bool = True) -> None:
        """Unfreeze everything, then freeze the encoder (``encoder=False``) and/or old tokens and heads."""
        for p in self.parameters():
            p.requires_grad_(True)
        if not encoder:
            for p in self.encoder_parameters():
                p.requires_grad_(False)
        if not old_tasks and self.n_tasks > 1:
            for p in list(self.task_tokens)[: self.n_tasks - 1]:
                p.requires_grad_(False)
            for head in list(self.heads)[:-1]:
                for p in head.parameters():
                    p.requires_grad_(False)

    def no_weight_decay(self) -> set:
        """Parameter names timm's optimiser factory keeps out of weight decay (embeddings, task tokens)."""
        return {"pos_embed"} | {f"task_tokens.{i}" for i in range(len(self.task_tokens))}

    # -- forward ------------------------------------------------------------------------------

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) -> task embeddings (B, T, C), one per task token."""
        x = self.patch_embed(x)
        x = self.sabs(self.pos_drop(x + self.pos_embed))
        tokens = torch.cat([t.expand(x.shape[0], -1, -1) for t in self.task_tokens], dim=1)
        for tab in self.tabs:
            tokens = tab(tokens, x)
        return tokens

    def forward_all(self, x: torch.Tensor) -> DyToxOutput:
        """Task-ordered logits, divergence logits (last token) and task embeddings."""
        tokens = self.forward_features(x)
        if self.heads:
            logits = torch.cat([head(tokens[:, i]) for i, head in enumerate(self.heads)], dim=1)
        else:
            logits = tokens.new_zeros(tokens.shape[0], 0)
        div = self.head_div(tokens[:, -1]) if self.head_div is not None else None
        return DyToxOutput(logits=logits, div_logits=div, tokens=tokens)

    def to_label_space(self, logits: torch.Tensor) -> torch.Tensor:
        """Task-ordered logits (B, n_seen) -> (B, num_classes), unseen classes at the lowest float."""
        out = logits.new_full((logits.shape[0], self.num_classes), torch.finfo(logits.dtype).min)
        if not self.heads:
            return out.zero_()
        return out.index_copy(1, self.class_order, logits)

    def columns_of(self, labels: torch.Tensor) -> torch.Tensor:
        """Class labels -> their column in the task-ordered logits (ValueError for an unknown class)."""
        lut = torch.full((self.num_classes,), -1, dtype=torch.long, device=labels.device)
        lut[self.class_order.to(labels.device)] = torch.arange(len(self.class_order), device=labels.device)
        cols = lut[labels.long()]
        if bool((cols < 0).any()):
            unknown = sorted(set(labels[cols < 0].tolist()))
            raise ValueError(f"labels {unknown} belong to no task of the model (known: {self.known_classes})")
        return cols

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits in label space (B, num_classes), for Avalanche's metrics and any strategy."""
        return self.to_label_space(self.forward_all(x).logits)


def parameter_count(model: nn.Module, *, divergence_head: bool = True) -> int:
    """Number of parameters (meta tensors count too); ``divergence_head=False`` leaves out that training-only head.

    The paper's figures (10.73 / 10.74 / 10.77 M) are the inference network, i.e.
    without the divergence head, truncated to two decimals.
    """
    skip = set()
    if not divergence_head and getattr(model, "head_div", None) is not None:
        skip = {id(p) for p in model.head_div.parameters()}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def _check_sizes(num_classes: int, img_size: int, patch_size: int, embed_dim: int, depth: int, num_tabs: int,
                 num_heads: int, new_token_init: str) -> None:
    if num_classes < 1:
        raise ConfigError(f"num_classes must be >= 1, got {num_classes}", key="model.num_classes")
    if patch_size < 1 or img_size % patch_size:
        raise ConfigError(f"img_size {img_size} must be a multiple of patch_size {patch_size}", key="model.patch_size")
    if num_heads < 1 or embed_dim % num_heads:
        raise ConfigError(f"embed_dim {embed_dim} must be a multiple of num_heads {num_heads}", key="model.num_heads")
    if num_tabs < 1 or depth <= num_tabs:
        raise ConfigError(f"depth {depth} must exceed num_tabs {num_tabs} (>= 1): depth counts SABs + TABs",
                          key="model.depth")
    if new_token_init not in ("copy", "trunc_normal"):
        raise ConfigError(f"new_token_init must be copy or trunc_normal, got {new_token_init!r}",
                          key="model.new_token_init")


@register_model("dytox")
def dytox(
    num_classes: int,
    *,
    img_size: int = 32,
    patch_size: int = 4,
    in_chans: int = 3,
    embed_dim: int = 384,
    depth: int = 6,
    num_tabs: int = 1,
    num_heads: int = 12,
    mlp_ratio: float = 4.0,
    qkv_bias: bool = False,
    drop_rate: float = 0.0,
    attn_drop_rate: float = 0.0,
    drop_path_rate: float = 0.1,
    divergence_head: bool = True,
    new_token_init: TokenInit = "copy",
) -> DyToxNet:
    """DyTox transformer (5 SABs + 1 TAB, dim 384, 12 heads, patch 4 on 32 px: the paper's CIFAR network).

    ImageNet-100 in the paper: ``img_size=224, patch_size=16`` with the same widths.
    Tokens and heads are added per task (by the DyTox strategy or Avalanche's model
    adaptation); see :class:`DyToxNet`.
    """
    return DyToxNet(
        num_classes,
        img_size=img_size,
        patch_size=patch_size,
        in_chans=in_chans,
        embed_dim=embed_dim,
        depth=depth,
        num_tabs=num_tabs,
        num_heads=num_heads,
        mlp_ratio=mlp_ratio,
        qkv_bias=qkv_bias,
        drop_rate=drop_rate,
        attn_drop_rate=attn_drop_rate,
        drop_path_rate=drop_path_rate,
        divergence_head=divergence_head,
        new_token_init=new_token_init,
    )


def task_summary(model: DyToxNet) -> Dict[str, object]:
    """Tokens, heads, divergence-head width and parameter counts (for logs and the README)."""
    return {
        "tasks": model.n_tasks,
        "tokens": len(model.task_tokens),
        "classes_per_task": model.classes_per_task,
        "divergence_head_classes": None if model.head_div is None else model.head_div.n_classes,
        "parameters": parameter_count(model),
        "inference_parameters": parameter_count(model, divergence_head=False),
    }
