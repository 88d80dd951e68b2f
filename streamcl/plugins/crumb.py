"""CRUMB (Compositional Replay Using Memory Blocks) as an Avalanche plugin.

CRUMB is :class:`~streamcl.plugins.latent_replay.LatentReplayPlugin` with a
learned codebook (:class:`~streamcl.models.codebook.MemoryBlockCodec`) and
these settings:

Two recipes, chosen by ``recipe`` (each key below can still be set on its own):

- ``recipe="paper"``: the authors' settings, as described next;
- ``recipe="balanced"`` (default): three changes beyond the paper that make CRUMB learn every
  experience of a base-initialised stream of real images (issue #26, ``perf/bench_crumb_real.py``):
  a codebook fitted by k-means (``init="kmeans"``: on the base set at the end of pretraining,
  else on the first experience), replayed items trained in the new data's step
  (``replay_mode="joint"``) with weight 1 (``replay_weight=1``).

The paper's settings:

- new data: CE on the reconstructed path ``head(decode(encode(trunk(x))))``
  only; logits masked to the classes seen so far; gradients clamped
  element-wise to +-10; the codebook keeps learning (through the gather) unless
  ``freeze_memory``;
- after each new-data step, one separate replay step: the K seen classes that
  are absent from the batch and have stored items, ``ceil(B / K)`` rounds of
  one random stored item per class, loss weight 5, its own optimiser step;
- buffer: class-balanced quota ``floor(N / seen classes)``, filled after each
  experience by walking its stream and keeping every k-th example of each
  class (``k = max(1, floor(len(stream) / N))``), random truncation;
- evaluation on the direct path ``head(trunk(x))`` (logits masked to seen
  classes); the reconstructed path is available as the extra metric
  :class:`~streamcl.plugins.latent_replay.ReconstructedAccuracy`.

Pretraining (offline, e.g. on ImageNet): :func:`pretrain_crumb` /
:meth:`CRUMBPlugin.pretrain` minimise ``CE(head(decode(encode(f)))) + CE(head(f))``;
:meth:`CRUMBPlugin.save_pretrained` / :meth:`CRUMBPlugin.load_pretrained` store
trunk, head and codebook in one file.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from streamcl.errors import CheckpointError, ConfigError, StreamclError
from streamcl.models.codebook import (
    DISTMATCH_PRESETS,
    INITS,
    MemoryBlockCodec,
    distmatch_preset,
    relative_error,
)
from streamcl.models.codec import Codec, IdentityCodec
from streamcl.models.splitnet import classifier_prefix
from streamcl.models.weights import load_matching
from streamcl.plugins.crumb_pretraining import CRUMBPretraining, evaluation_plugin
from streamcl.plugins.latent_replay import LatentReplayPlugin, ModelCut, resolve_cut
from streamcl.plugins.latent_replay.diagnostics import CodecDiagnostics, JustTrainedAccuracy, publish
from streamcl.registry import register_plugin

__all__ = ["CRUMBPlugin", "RECIPES", "pretrain_crumb", "save_crumb_pretrained", "load_crumb_pretrained"]

PRETRAINED_FORMAT = "streamcl.crumb_pretrained"
PathLike = Union[str, Path]

#: What ``recipe`` fills in for the keys left unset. ``paper``: the authors' code (MorganBDT/crumb);
#: ``balanced``: beyond the paper, measured against it in ``perf/bench_crumb_real.py`` (issue #26).
RECIPES: Dict[str, Dict[str, Any]] = {
    "paper": {"init": "distmatch_sparse", "replay_mode": "separate", "replay_weight": 5.0},
    "balanced": {"init": "kmeans", "replay_mode": "joint", "replay_weight": 1.0},
}
DEFAULT_SHAPE = (256, 16)  # n_blocks x block_dim when neither the cell nor a pretrained file says
KMEANS_FIT_IMAGES = 2048  # images whose trunk features the k-means fits see (a random chunk subset of them)


# =====================================================================================
# Pretraining and pretrained files
# =====================================================================================
def pretrain_crumb(
    model: nn.Module,
    codec: MemoryBlockCodec,
    data: Any,
    *,
    epochs: int = 10,
    mb_size: int = 128,
    lr: float = 1e-3,
    momentum: float = 0.9,
    weight_decay: float = 1e-4,
    optimizer: Optional[torch.optim.Optimizer] = None,
    direct_loss: bool = True,
    train_trunk: bool = False,
    clamp: Optional[float] = None,
    device: Union[str, torch.device] = "cpu",
    shuffle: bool = True,
    num_workers: int = 0,
    seed: Optional[int] = None,
    max_steps: Optional[int] = None,
    latent_layer: Optional[str] = None,
    cache_features: bool = False,
    log_dir: Optional[PathLike] = None,
    progress: bool = False,
    input_transform: Optional[Callable[[Tensor], Tensor]] = None,
) -> List[float]:
    """Offline CRUMB pretraining of the head and the codebook (trunk frozen), run as an Avalanche strategy.

    Loss per mini-batch: ``CE(head(decode(encode(f)))) + CE(head(f))`` with
    ``f = trunk(x)`` (``direct_loss=False`` drops the second term, which is what
    the authors' current script does by mistake). Defaults follow the paper:
    SGD lr 1e-3, momentum 0.9, weight decay 1e-4, batch 128, 10 epochs.

    :param model: a :class:`~streamcl.models.SplitNet`, or any model with ``latent_layer``.
    :param codec: the codebook to train (a ``"first_batch"`` init is fitted on the first batch).
    :param data: a ``Dataset`` yielding ``(x, y, ...)`` or a ready ``DataLoader``.
    :param train_trunk: also train the trunk (through the direct term), i.e. the
        ImageNet-style pretraining of the whole network that the paper starts from,
        done here on a base set when no pretrained weights can be had; the trunk
        is frozen again afterwards.
    :param optimizer: optional optimiser over head + codebook parameters (default: SGD as above).
    :param max_steps: stop after this many mini-batches (smoke tests).
    :param latent_layer: the layer to cut a model that is not a SplitNet at (e.g. ``"layer4.0"``).
    :param cache_features: run the frozen trunk over ``data`` once and train every epoch on those
        feature maps, instead of decoding and encoding the images again each epoch (same batches,
        same result; it holds every feature map in memory, and random image augmentations are
        drawn once). Needs ``train_trunk=False`` and a dataset (not a ready ``DataLoader``).
    :param log_dir: write the per-epoch loss and reconstructed-path accuracy there as TensorBoard events.
    :param progress: a progress bar over the mini-batches (on a terminal).
    :param input_transform: applied to each input batch on the device before the trunk (e.g. a
        :class:`~streamcl.benchmarks.device_transforms.DeviceNormalize` for frame-cache batches).
    :return: mean loss of each epoch.

    The training loop is :class:`~streamcl.plugins.crumb_pretraining.CRUMBPretraining`.
    """
    from torch.utils.data import DataLoader

    cut = resolve_cut(model, latent_layer, "pretrain_crumb")
    if train_trunk and not direct_loss:
        raise StreamclError("pretrain_crumb: train_trunk needs direct_loss (the trunk learns through head(trunk(x)) only)")
    device = torch.device(device)
    model.to(device)
    codec.to(device)
    if cache_features and (train_trunk or isinstance(data, DataLoader)):
        raise StreamclError("pretrain_crumb: cache_features needs a frozen trunk (train_trunk=False) and a dataset, "
                            "not a DataLoader")
    if cache_features:
        data = _trunk_features(cut, data, mb_size, num_workers, device, input_transform)
    frozen = cut.frozen
    if train_trunk:
        cut.unfreeze()
    params = [p for p in model.parameters() if p.requires_grad] + [p for p in codec.parameters() if p.requires_grad]
    opt = optimizer or torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    model.train()
    try:
        losses = CRUMBPretraining(
            cut=cut, codec=codec, data=data, optimizer=opt, params=params, mb_size=mb_size, epochs=epochs, device=device,
            direct_loss=direct_loss, clamp=clamp, features=cache_features, max_steps=max_steps, shuffle=shuffle,
            num_workers=num_workers, seed=seed, evaluator=_pretrain_evaluator(log_dir, progress, data, mb_size, epochs),
            input_transform=input_transform,
        ).run()
    finally:
        if train_trunk and frozen:  # back to a frozen trunk (no gradients, eval-mode BatchNorm) for streaming
            cut.freeze()
    fit_on_base(cut, codec, data, mb_size=mb_size, device=device, features=cache_features,
                input_transform=input_transform, seed=seed)
    return losses


def fit_on_base(cut: ModelCut, codec: MemoryBlockCodec, data: Any, *, mb_size: int = 128,
                device: Union[str, torch.device] = "cpu", features: bool = False,
                input_transform: Optional[Callable[[Tensor], Tensor]] = None, seed: Optional[int] = None,
                max_images: int = KMEANS_FIT_IMAGES) -> float:
    """After pretraining: refit a ``kmeans`` codebook on the base set's final trunk features, and record
    the base set's reconstruction error as ``codec.reference_error`` (saved with the pretrained file).

    The k-means runs after the gradient epochs because a trained trunk (``train_trunk``) only has its
    final features then. ``data`` is what the pretraining saw (images, or trunk features when
    ``features``); at most ``max_images`` items, in a seeded random order, are used.
    """
    from torch.utils.data import DataLoader, Subset

    g = torch.Generator()
    g.manual_seed(0 if seed is None else int(seed))
    if not isinstance(data, DataLoader):
        if len(data) > max_images:
            data = Subset(data, torch.randperm(len(data), generator=g)[:max_images].tolist())
        data = DataLoader(data, batch_size=mb_size, shuffle=False)
    chunks, n = [], 0
    with torch.no_grad():
        for batch in data:
            x = batch[0].to(device)
            if not features:
                x = cut.features(input_transform(x) if input_transform is not None else x)
            chunks.append(codec._chunks(x.float()).reshape(-1, codec.block_dim).cpu())
            n += len(x)
            if n >= max_images:
                break
    if not chunks:
        return float("nan")
    flat = torch.cat(chunks)
    if len(flat) > 200_000:
        flat = flat[torch.randperm(len(flat), generator=g)[:200_000]]
    flat = flat.to(codec.memory.device)
    if codec.init == "kmeans":
        codec.fit_kmeans(flat, generator=g)
    codec.reference_error = relative_error(codec, flat)
    return codec.reference_error


def _trunk_features(cut: ModelCut, data: Any, mb_size: int, num_workers: int, device: torch.device,
                    input_transform: Optional[Callable[[Tensor], Tensor]] = None):
    """``(trunk(x), y)`` of every item of ``data``, in order, as a CPU TensorDataset (one pass of the frozen trunk)."""
    from torch.utils.data import DataLoader, TensorDataset
    from tqdm.auto import tqdm

    feats, labels = [], []
    loader = DataLoader(data, batch_size=mb_size, shuffle=False, num_workers=num_workers)
    with torch.no_grad():
        for batch in tqdm(loader, desc="pretrain: trunk features", unit="batch", leave=False, disable=None):
            x = batch[0].to(device)
            feats.append(cut.trunk(input_transform(x) if input_transform is not None else x).cpu())
            labels.append(torch.as_tensor(batch[1]).long().cpu())
    return TensorDataset(torch.cat(feats), torch.cat(labels))


def _pretrain_evaluator(log_dir: Optional[PathLike], progress: bool, data: Any, mb_size: int, epochs: int):
    """Loss and reconstructed-path accuracy per epoch, to TensorBoard (``log_dir``) and a progress bar."""
    from avalanche.evaluation.metrics import accuracy_metrics, loss_metrics
    from avalanche.logging import TensorboardLogger

    from streamcl.progress import RunProgressLogger, is_interactive

    loggers: List[Any] = []
    if log_dir is not None:
        loggers.append(TensorboardLogger(str(log_dir)))
    if progress and is_interactive():
        steps = -(-len(data) // max(1, mb_size)) * int(epochs) if hasattr(data, "__len__") else None
        loggers.append(RunProgressLogger("pretrain", steps))
    return evaluation_plugin(loss_metrics(epoch=True), accuracy_metrics(epoch=True), loggers=loggers)


def save_crumb_pretrained(path: PathLike, model: Optional[nn.Module], codec: MemoryBlockCodec) -> Path:
    """Write trunk + head (the SplitNet's state_dict) and the codebook to one file.

    The file holds tensors, strings and ints only (readable with
    ``torch.load(weights_only=True)``); its ``model`` entry also loads as
    ``weights:`` of a cut factory (e.g. ``squeezenet_cut(weights=path)``).
    """
    p = Path(path).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    obj: Dict[str, Any] = {
        "format": PRETRAINED_FORMAT,
        "version": 1,
        "codec_config": {"n_blocks": codec.n_blocks, "block_dim": codec.block_dim, "init": codec.init},
        "codec": {k: v.detach().cpu().clone() for k, v in codec.state_dict().items()},
    }
    ref = getattr(codec, "reference_error", None)
    if ref is not None:
        obj["codec_stats"] = {"base_error": float(ref)}
    if model is not None:
        obj["model"] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        meta = getattr(model, "meta", {}) or {}
        obj["model_meta"] = {k: v for k, v in meta.items() if isinstance(v, (str, int, float, bool))}
    tmp = p.with_name(p.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(p)
    return p


def load_crumb_pretrained(
    path: PathLike, model: Optional[nn.Module] = None
) -> Tuple[MemoryBlockCodec, Optional[Dict[str, Tensor]]]:
    """Read a file written by :func:`save_crumb_pretrained`.

    Returns the codebook (a new :class:`MemoryBlockCodec`) and the model
    state_dict (or None). When ``model`` is given, its trunk and head are
    loaded too (the final classifier is skipped when its shape differs, e.g.
    1000 ImageNet classes vs. the benchmark's). Any problem raises a
    :class:`CheckpointError` naming ``path``.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise CheckpointError(f"{path}: CRUMB pretrained file not found; write one with CRUMBPlugin.save_pretrained(path)")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{path}: cannot read the CRUMB pretrained file ({type(e).__name__}); "
            "it must be written by CRUMBPlugin.save_pretrained / save_crumb_pretrained"
        ) from None
    if not isinstance(obj, dict) or obj.get("format") != PRETRAINED_FORMAT or "codec" not in obj:
        raise CheckpointError(
            f"{path}: not a CRUMB pretrained file (format tag {PRETRAINED_FORMAT!r} missing); "
            "write one with CRUMBPlugin.save_pretrained(path)"
        )
    cfg = obj.get("codec_config", {})
    try:
        init = str(cfg.get("init", "distmatch_sparse"))
        codec = MemoryBlockCodec(
            int(cfg["n_blocks"]), int(cfg["block_dim"]), init=init if init in INITS else "distmatch_sparse"
        )
        codec.load_state_dict(obj["codec"])
    except (KeyError, RuntimeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: the codebook in the CRUMB pretrained file is malformed ({e})") from None
    stats = obj.get("codec_stats") or {}
    if isinstance(stats, dict) and isinstance(stats.get("base_error"), float):
        codec.reference_error = stats["base_error"]  # type: ignore[assignment]
    state = obj.get("model")
    if model is not None:
        if state is None:
            raise CheckpointError(f"{path}: holds no model weights (it was saved with model=None)")
        prefix = classifier_prefix(model)
        load_matching(model, state, path=p, optional_prefixes=(prefix,) if prefix else ())
    return codec, state


# =====================================================================================
# The plugin
# =====================================================================================
@register_plugin("crumb")
class CRUMBPlugin(LatentReplayPlugin):
    """CRUMB: compositional replay of codebook indices ("memory blocks") of frozen-trunk features.

    Use with ``avalanche.training.Naive`` (or :class:`streamcl.strategies.CRUMB`)
    on a :class:`~streamcl.models.SplitNet` (e.g. ``squeezenet_cut``), or on any
    model with ``latent_layer`` naming the layer to cut at (torchvision's
    ``squeezenet1_0()`` at ``"features.11"``, a ResNet at ``"layer4.0"``). Paper
    settings are the defaults; the ablations are switches.

    :param memory: replay budget: items (``417``), ``{"items": 417}`` or
        ``{"bytes": "2.26MB"}`` (the whole memory: the float32 codebook, then codes +
        int16 label per item; 417 items at 5408 code bytes plus a 256 x 16 codebook
        take 2.272 MB; the paper's 2.255 MB counts the codes only).
    :param recipe: ``balanced`` (default) or ``paper``: the values of ``init``, ``replay_mode`` and
        ``replay_weight`` left unset (:data:`RECIPES`). ``paper`` is the authors' code: a
        gradient-trained codebook, a separate replay step, weight 5. ``balanced`` fits the codebook
        by k-means and replays in the new data's step with weight 1: with the paper's setting a
        codebook that reconstructs the features poorly lets the weight-5 replay step suppress the
        classes being learned (issue #26; ``docs/methods.md``).
    :param n_blocks: codebook rows (null: the pretrained file's, else 256; more than 256 stores
        int16 codes). A value that disagrees with the pretrained file is an error.
    :param block_dim: codebook row length L (null: the pretrained file's, else 16; must divide the
        trunk's channels). A value that disagrees with the pretrained file is an error.
    :param init: codebook init (null: the recipe's): ``distmatch_sparse`` (paper), ``distmatch_dense``,
        ``normal``, ``uniform``, ``first_batch``, ``kmeans`` (balanced: k-means on the base set's
        features at the end of pretraining, else on the first experience's features before training).
    :param init_std: std of the distmatch init. Default: the paper's value for a
        pretrained SqueezeNet cut (14*5/3 at cut 12, 0.73 at cut 3); for other or
        randomly initialised trunks, measured on the first feature batch.
    :param init_sparsity: zeroed fraction of the sparse distmatch init (0.64 cut 12,
        0.25 cut 3; otherwise measured like ``init_std``).
    :param freeze_memory: ablation: the codebook never changes.
    :param direct_loss_only: ablation: train new data on ``head(f)`` instead of the reconstruction.
    :param plus_direct_loss: ablation: add ``CE(head(f))`` to the reconstructed-path loss.
    :param no_replay: ablation: no replay step (and nothing stored).
    :param storage: ``codes`` (CRUMB) or ``raw_features`` (ablation, the authors'
        ``storage_type="raw_feature"``: store the trunk's feature maps uncompressed,
        as float16, train new data on the direct path; the same buffer and replay
        rules, so it separates what the codebook's compression costs from the rest).
    :param replay_mode: ``separate`` (paper: after each new-data step, one replay step with its own
        optimiser step) or ``joint`` (balanced: the replayed items join the new data's step, so
        BatchNorm and the optimiser see both); null: the recipe's.
    :param replay_weight: weight of the replay loss (null: the recipe's, 5 paper, 1 balanced).
    :param clamp: element-wise gradient clamp (10); null disables it.
    :param mask_eval_logits: predict among seen classes only at evaluation (as the authors' code).
    :param eval_path: ``direct`` (the paper: ``head(trunk(x))``) or ``reconstructed`` (ablation:
        ``head(decode(encode(trunk(x))))``, the path CRUMB's streaming loss trains).
    :param store: which codes fill the buffer, chosen by the same every-k-th-per-class
        rule: ``last_pass`` (default) those computed during the experience's last
        training epoch, admitted after it, so the trunk runs once per image;
        ``experience`` after the experience, the items that will be kept are
        re-encoded with the final codebook (the trunk runs again on those only);
        ``stream`` every training mini-batch of the first epoch is offered as it
        arrives (REMIND's timing: a class is protected while the next one trains).
    :param augment: random resized crops of replayed feature maps (the authors'
        optional ``use_random_resize_crops``; off in the paper's main results).
    :param crop_scale_min: smallest crop area fraction when ``augment`` (4/13 at 13x13).
    :param pretrained: file written by :meth:`save_pretrained`: its codebook
        replaces the initial one (load the trunk/head with the model's ``weights:``); its shape
        must match ``n_blocks`` / ``block_dim`` when they are set.
    :param buffer_device: where the code buffer lives.
    :param seed: seed of codebook init, replay draws and buffer truncation.
    :param latent_layer: for a model that is not a SplitNet, the name of the layer to cut it at
        (any ``model.named_modules()`` name); what lies before is frozen, replayed items go
        through the layers after it only.
    :param amp: mixed precision of the frozen trunk's forward only: ``bf16``, ``fp16`` or null (float32).
    :param channels_last: run the frozen trunk in channels_last memory layout.
    """

    def __init__(
        self,
        *,
        memory: Union[int, str, Dict[str, Any]] = 417,
        recipe: Literal["balanced", "paper"] = "balanced",
        n_blocks: Optional[int] = None,
        block_dim: Optional[int] = None,
        init: Optional[Literal["distmatch_sparse", "distmatch_dense", "normal", "uniform", "first_batch",
                               "kmeans"]] = None,
        init_std: Optional[float] = None,
        init_sparsity: Optional[float] = None,
        freeze_memory: bool = False,
        direct_loss_only: bool = False,
        plus_direct_loss: bool = False,
        no_replay: bool = False,
        storage: Literal["codes", "raw_features"] = "codes",
        replay_mode: Optional[Literal["separate", "joint"]] = None,
        replay_weight: Optional[float] = None,
        clamp: Optional[float] = 10.0,
        mask_eval_logits: bool = True,
        eval_path: Literal["direct", "reconstructed"] = "direct",
        store: Literal["last_pass", "experience", "stream"] = "last_pass",
        augment: bool = False,
        crop_scale_min: float = 4 / 13,
        pretrained: Optional[str] = None,
        buffer_device: str = "cpu",
        seed: int = 0,
        latent_layer: Optional[str] = None,
        amp: Optional[Literal["bf16", "fp16"]] = None,
        channels_last: bool = False,
    ):
        if direct_loss_only and plus_direct_loss:
            raise ConfigError("direct_loss_only and plus_direct_loss exclude each other: set at most one", key="plus_direct_loss")
        if recipe not in RECIPES:
            raise ConfigError(f"invalid value {recipe!r}; valid: {', '.join(RECIPES)}", key="recipe")
        chosen = RECIPES[recipe]
        init = chosen["init"] if init is None else init
        replay_mode = chosen["replay_mode"] if replay_mode is None else replay_mode
        replay_weight = chosen["replay_weight"] if replay_weight is None else replay_weight
        if init not in INITS:
            raise ConfigError(f"invalid value {init!r}; valid: {', '.join(INITS)}", key="init")
        if replay_mode not in ("separate", "joint"):
            raise ConfigError(f"invalid value {replay_mode!r}; valid: separate, joint", key="replay_mode")
        self._shape_set = (n_blocks, block_dim)  # as given: None = the pretrained file's (else the default)
        n_blocks = DEFAULT_SHAPE[0] if n_blocks is None else n_blocks
        block_dim = DEFAULT_SHAPE[1] if block_dim is None else block_dim
        if n_blocks < 1 or block_dim < 1:
            raise ConfigError(f"n_blocks and block_dim must be >= 1 (got {n_blocks} x {block_dim})", key="n_blocks")
        if n_blocks > 2**15:
            raise ConfigError(f"n_blocks={n_blocks} exceeds 32768 (int16 codes)", key="n_blocks")
        if not 0 < crop_scale_min <= 1:
            raise ConfigError(f"crop_scale_min must lie in (0, 1], got {crop_scale_min}", key="crop_scale_min")
        if storage not in ("codes", "raw_features"):
            raise ConfigError(f"invalid value {storage!r}; valid: codes, raw_features", key="storage")
        raw = storage == "raw_features"
        if raw and (pretrained or freeze_memory):
            raise ConfigError("raw_features has no codebook to load or freeze; drop pretrained / freeze_memory",
                              key="storage")
        train_path = "direct" if direct_loss_only or raw else ("both" if plus_direct_loss else "reconstructed")
        super().__init__(
            None,
            memory=memory,
            policy="class_balanced",
            replay="none" if no_replay else replay_mode,  # type: ignore[arg-type]
            replay_sampling="absent_classes",
            replay_weight=float(replay_weight),
            train_path=train_path,  # type: ignore[arg-type]
            eval_path=eval_path,  # type: ignore[arg-type]
            mask_logits=True,
            mask_eval_logits=mask_eval_logits,
            grad_clamp=clamp,
            augment=augment,
            crop_scale=(float(crop_scale_min), 1.0),
            mixup_alpha=None,
            store="none" if no_replay else store,
            fit_codec="first_experience" if init == "kmeans" and not raw else "first_batch",
            fit_max_items=KMEANS_FIT_IMAGES if init == "kmeans" and not raw else None,
            freeze_codec=freeze_memory,
            buffer_device=buffer_device,
            seed=seed,
            latent_layer=latent_layer,
            amp=amp,
            channels_last=channels_last,
        )
        self.storage = storage
        self.recipe = recipe
        self.replay_mode = replay_mode
        self.diagnostics = CodecDiagnostics()
        self.just_trained = JustTrainedAccuracy()
        self.n_blocks = int(n_blocks)
        self.block_dim = int(block_dim)
        self.init = init
        self.init_std = init_std
        self.init_sparsity = init_sparsity
        self.freeze_memory = bool(freeze_memory)
        self.pretrained = pretrained
        if pretrained:
            self.load_pretrained(pretrained)

    # ------------------------------------------------------------------ codec
    def make_codec(self, feature_shape: Optional[Tuple[int, int, int]], model: Optional[nn.Module]) -> Codec:
        """Build the codebook (a float16 :class:`IdentityCodec` for ``storage="raw_features"``).

        Distmatch std / sparsity not given explicitly come from the paper's preset
        when the model is a pretrained cut that has one (SqueezeNet cut 12 / 3,
        ``model.meta["cut"]`` and ``meta["pretrained"]``); otherwise they are
        measured on the first feature batch (``match_features``), since a random
        or unfamiliar trunk has other feature statistics.
        """
        if self.storage == "raw_features":
            return IdentityCodec()
        meta = getattr(model, "meta", {}) or {}
        cut = meta.get("cut")
        use_preset = cut in DISTMATCH_PRESETS and bool(meta.get("pretrained", False))
        std, sparsity = distmatch_preset(cut) if use_preset else (None, None)
        codec = MemoryBlockCodec(
            self.n_blocks,
            self.block_dim,
            init=self.init,  # type: ignore[arg-type]
            init_std=self.init_std if self.init_std is not None else std,
            init_sparsity=self.init_sparsity if self.init_sparsity is not None else sparsity,
            match_features=not use_preset,
            seed=self.seed,
        )
        if feature_shape is not None:
            codec.code_shape(feature_shape)  # L must divide C: fail early with a clear message
        if self.freeze_memory:
            codec.memory.requires_grad_(False)
        return codec

    def ensure_codec(self, model: nn.Module, feature_shape: Optional[Tuple[int, int, int]] = None) -> MemoryBlockCodec:
        """The plugin's codebook, built for ``model`` if it does not exist yet."""
        if self.codec is None:
            self.codec = self.make_codec(feature_shape, model)  # type: ignore[arg-type]
        return self.codec  # type: ignore[return-value]

    # ------------------------------------------------------------------ pretraining
    def pretrain(
        self,
        model: Any,
        data: Any,
        *,
        epochs: int = 10,
        mb_size: int = 128,
        lr: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        optimizer: Optional[torch.optim.Optimizer] = None,
        direct_loss: bool = True,
        train_trunk: bool = False,
        device: Union[str, torch.device, None] = None,
        max_steps: Optional[int] = None,
        cache_features: bool = False,
        log_dir: Optional[PathLike] = None,
        progress: bool = False,
        input_transform: Optional[Callable[[Tensor], Tensor]] = None,
    ) -> List[float]:
        """Pretrain head + this plugin's codebook offline (see :func:`pretrain_crumb`).

        ``model`` is the model (a SplitNet, or any model cut at this plugin's ``latent_layer``)
        or a strategy (its ``model`` and ``device`` are used).
        """
        if not isinstance(model, nn.Module) and hasattr(model, "model"):
            device = device if device is not None else getattr(model, "device", "cpu")
            model = model.model
        if self.storage == "raw_features":
            raise StreamclError("CRUMBPlugin.pretrain: storage='raw_features' has no codebook to pretrain")
        codec = self.ensure_codec(model)
        if self.freeze_memory:
            codec.memory.requires_grad_(False)
        return pretrain_crumb(
            model,
            codec,
            data,
            epochs=epochs,
            mb_size=mb_size,
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            optimizer=optimizer,
            direct_loss=direct_loss,
            train_trunk=train_trunk,
            device=device or "cpu",
            seed=self.seed,
            max_steps=max_steps,
            latent_layer=self.latent_layer,
            cache_features=cache_features,
            log_dir=log_dir,
            progress=progress,
            input_transform=input_transform,
        )

    def save_pretrained(self, path: PathLike, model: Optional[nn.Module] = None) -> Path:
        """Save the codebook (and ``model``'s trunk + head when given) to ``path``."""
        if self.codec is None:
            if model is None:
                raise StreamclError("CRUMBPlugin.save_pretrained: no codebook yet (train or pretrain first, or pass model=)")
            self.ensure_codec(model)
        return save_crumb_pretrained(path, model, self.codec)  # type: ignore[arg-type]

    def load_pretrained(self, path: PathLike, model: Optional[nn.Module] = None) -> None:
        """Load a codebook (and ``model``'s trunk + head when given) written by :meth:`save_pretrained`.

        ``n_blocks`` / ``block_dim`` left unset take the file's shape; set ones must equal it
        (a :class:`ConfigError` naming both values otherwise: nothing is silently overridden).
        """
        codec, _ = load_crumb_pretrained(path, model)
        for key, mine, theirs in (("n_blocks", self._shape_set[0], codec.n_blocks),
                                  ("block_dim", self._shape_set[1], codec.block_dim)):
            if mine is not None and int(mine) != int(theirs):
                raise ConfigError(
                    f"{mine} disagrees with the pretrained file {path}, whose codebook is "
                    f"{codec.n_blocks} x {codec.block_dim} ({key} {theirs}); drop {key} to use the file's, "
                    f"or pretrain with {key}: {mine}", key=key)
        self.n_blocks, self.block_dim = codec.n_blocks, codec.block_dim
        self.diagnostics.reference = codec.reference_error
        if self.freeze_memory:
            codec.memory.requires_grad_(False)
        self.set_codec(codec)
        self.buffer = None  # code shape may differ: reallocated on the next feature map
        self.feature_shape = None

    # ------------------------------------------------------------------ diagnostics (issue #26)
    def before_training_exp(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        super().before_training_exp(strategy, *args, **kwargs)
        self.just_trained.classes = [int(c) for c in self._experience_classes(strategy)]
        if self.diagnostics.reference is None and self.codec is not None:
            self.diagnostics.reference = getattr(self.codec, "reference_error", None)

    @staticmethod
    def _experience_classes(strategy: Any) -> List[int]:
        exp = strategy.experience
        origin = getattr(exp, "origin_experience", None) or exp
        classes = getattr(origin, "classes_in_this_experience", None)
        return list(classes) if classes is not None else []

    def after_training_iteration(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        codec = self.codec
        if (self._feats is not None and self.storage == "codes" and codec is not None and codec.is_fitted):
            rec = self._recon  # what the new-data step already decoded (no second decode per iteration)
            if rec is None:
                with torch.no_grad():
                    rec = codec.decode(self._codes) if self._codes is not None else codec.reconstruct(self._feats)
            self.diagnostics.update(self._feats, rec, strategy.mb_y)
        super().after_training_iteration(strategy, *args, **kwargs)

    def after_training_exp(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        super().after_training_exp(strategy, *args, **kwargs)
        if self.storage != "codes":
            return
        stored = self.buffer.items_per_class().keys() if self.buffer is not None else []
        values = self.diagnostics.end_experience({int(c) for c in self._experience_classes(strategy)}, stored)
        for key, name in (("new", "CodecError_New"), ("stored", "CodecError_Stored"), ("base", "CodecError_Base")):
            if key in values:
                publish(self, strategy, f"{name}/train_phase/train_stream", values[key])
        self.diagnostics.check(values, "CRUMB")

    def before_eval(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self.just_trained.reset()

    def after_eval_forward(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        super().after_eval_forward(strategy, *args, **kwargs)
        self.just_trained.update(strategy.mb_output, strategy.mb_y)

    def after_eval(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        acc = self.just_trained.result()
        if acc is not None:
            publish(self, strategy, "Top1_Acc_JustTrained/eval_phase/test_stream", acc)

    # ------------------------------------------------------------------ bookkeeping
    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        state["crumb"] = {"n_blocks": self.n_blocks, "block_dim": self.block_dim, "init": str(self.init),
                          "recipe": self.recipe}
        state["diagnostics"] = self.diagnostics.state_dict()
        return state

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        cfg = state.get("crumb") if isinstance(state, dict) else None
        if cfg:
            if (int(cfg["n_blocks"]), int(cfg["block_dim"])) != (self.n_blocks, self.block_dim):
                raise CheckpointError(
                    f"checkpoint codebook is {cfg['n_blocks']} x {cfg['block_dim']} but this CRUMBPlugin is "
                    f"{self.n_blocks} x {self.block_dim}: use the experiment's original n_blocks/block_dim"
                )
            if self.codec is None and state.get("codec") is not None:
                self.codec = self.make_codec(None, None)  # its state is loaded next
        super().load_state_dict(state)
        if isinstance(state, dict) and isinstance(state.get("diagnostics"), dict):
            self.diagnostics.load_state_dict(state["diagnostics"])
        if self.freeze_memory and self.codec is not None:
            self.codec.memory.requires_grad_(False)

    def replay_rounds(self, batch_size: int, n_classes: int) -> int:
        """CRUMB's number of replay rounds: ``ceil(B / K)``."""
        return math.ceil(batch_size / n_classes) if n_classes else 0

    def __repr__(self) -> str:
        return (
            f"CRUMBPlugin(recipe={self.recipe}, n_blocks={self.n_blocks}, block_dim={self.block_dim}, "
            f"init={self.init}, memory={self.budget.to_dict()}, train_path={self.train_path}, replay={self.replay}, "
            f"replay_weight={self.replay_weight})"
        )
