"""Compressed latent replay: ONE pipeline shared by CRUMB and REMIND (they differ by codec and settings).

::

    image -> trunk (frozen) -> feature map (C,H,W) -> codec.encode -> codes -> CodeBuffer
                                                                      | sample
               head (plastic) <- augment (crop/mixup) <- codec.decode <+

Pieces, each usable on its own:

- :class:`Codec`: ``encode`` float maps ``(N,C,H,W)`` to compact integer codes,
  ``decode`` maps them back. An ``nn.Module`` so a learned codebook is a
  parameter and ``state_dict()`` works. CRUMB: ``streamcl.models.codebook``;
  REMIND: a faiss product quantiser.
- :class:`CodeBuffer`: a preallocated tensor of codes (``uint8``, ``int16`` for
  large codebooks; never ``int64``) plus ``int16`` labels, capacity in items or
  bytes, with a pluggable :class:`BufferPolicy` for admission/eviction
  (:class:`ClassBalancedPolicy` for CRUMB, :class:`LargestClassEvictionPolicy`
  for REMIND).
- :func:`augment_features`: vectorised random-resized-crop + mixup on feature maps.
- :class:`LatentReplayPlugin`: the Avalanche ``SupervisedPlugin`` that wires it
  all into ``avalanche.training.Naive`` (or any ``SupervisedTemplate``).

How the plugin hooks into Avalanche's training iteration
--------------------------------------------------------
The model must be a :class:`streamcl.models.SplitNet`. Avalanche keeps doing
its usual ``forward -> criterion -> backward -> optimizer.step`` and the plugin
only steers it:

* ``before_forward`` installs a *feature hook* on the SplitNet, so the
  strategy's own ``model(x)`` computes ``head(hook(trunk(x)))``. The hook sees
  the trunk features once (no second trunk pass), records them, encodes them
  (the codes are what the buffer stores) and returns the training-path input of
  the head: the reconstruction ``decode(encode(f))`` (``train_path="reconstructed"``),
  ``f`` itself (``"direct"``), and, in ``replay="joint"`` mode, the decoded and
  augmented replay items concatenated to the batch (so BatchNorm in the head
  sees new and replayed items together, as in REMIND).
* ``after_forward`` removes the hook, splits joint-mode outputs (``mb_output``
  keeps the new items only, so Avalanche's criterion and metrics see the real
  mini-batch) and masks logits of classes not seen yet.
* ``before_backward`` adds the joint replay loss and/or the extra direct loss.
* ``after_backward`` clamps gradients element-wise (``grad_clamp``).
* ``after_update`` steps the codec's optimiser (learned codebooks) and, in
  ``replay="separate"`` mode (CRUMB), runs one extra replay step with its own
  ``zero_grad / backward / clamp / step`` on the strategy's optimiser.
* ``after_training_iteration`` (``store="stream"``) or ``after_training_exp``
  (``store="experience"``) admit new codes into the buffer.
* evaluation: a hook captures eval features; the head reads the direct path
  (``eval_path="direct"``) or the reconstruction (``"reconstructed"``);
  :class:`ReconstructedAccuracy` reports the other path as an extra metric.

Other plugins (EWC, MAS, LwF, EvaluationPlugin ...) see an ordinary iteration:
``mb_x`` stays the image batch, ``mb_output`` the logits of the new items.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Literal, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from avalanche.core import SupervisedPlugin
from avalanche.evaluation.metrics.accuracy import AccuracyPluginMetric
from torch import Tensor, nn

from streamcl.errors import CheckpointError, ConfigError, StreamclError
from streamcl.utils import parse_bytes

__all__ = [
    "Codec",
    "IdentityCodec",
    "MemoryBudget",
    "parse_memory",
    "BufferPolicy",
    "ClassBalancedPolicy",
    "LargestClassEvictionPolicy",
    "make_policy",
    "CodeBuffer",
    "augment_features",
    "random_resized_crop_features",
    "sample_crop_boxes",
    "resize_crops",
    "mixup_features",
    "mixup_loss",
    "LatentReplayPlugin",
    "ReconstructedAccuracy",
    "reconstructed_accuracy_metrics",
    "find_latent_replay_plugin",
]

FeatureShape = Tuple[int, int, int]
_ALLOWED_CODE_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32)


# The Codec interface lives in streamcl.models.codec so that codec implementations under
# streamcl.models (CRUMB codebook, PQ) can subclass it without importing this plugin package
# (which imports them back): no import cycle. It is re-exported here as part of this interface.
from streamcl.models.codec import Codec, IdentityCodec  # noqa: E402

# =====================================================================================
# Memory budget
# =====================================================================================
LABEL_DTYPE = torch.int16
LABEL_NBYTES = 2


@dataclass(frozen=True)
class MemoryBudget:
    """A replay budget: a number of items, or a number of bytes (codes + labels of each item)."""

    items: Optional[int] = None
    bytes: Optional[int] = None

    def __post_init__(self) -> None:
        if (self.items is None) == (self.bytes is None):
            raise ConfigError("give exactly one of memory.items or memory.bytes", key="memory")
        if self.items is not None and self.items < 0:
            raise ConfigError(f"memory.items must be >= 0, got {self.items}", key="memory.items")
        if self.bytes is not None and self.bytes < 0:
            raise ConfigError(f"memory.bytes must be >= 0, got {self.bytes}", key="memory.bytes")

    def capacity(self, item_nbytes: int, reserved_nbytes: int = 0) -> int:
        """Items that fit: ``items``, or ``(bytes - reserved_nbytes) // item_nbytes``.

        ``item_nbytes`` is one item's codes + label; ``reserved_nbytes`` is what the
        memory holds besides the items (a codec's codebook or PQ centroids), so that
        a byte budget is the whole memory a method keeps and methods compare at
        equal bytes. An item budget ignores it.
        """
        if self.items is not None:
            return int(self.items)
        if item_nbytes <= 0:
            raise ValueError("item_nbytes must be positive")
        if reserved_nbytes > int(self.bytes):  # type: ignore[arg-type]
            raise ConfigError(
                f"memory.bytes={self.bytes} is smaller than the codec's own state ({reserved_nbytes} bytes, "
                "codebook or centroids), which the byte budget includes: raise the budget, shrink the codec, "
                "or give memory.items",
                key="memory.bytes",
            )
        return (int(self.bytes) - int(reserved_nbytes)) // int(item_nbytes)  # type: ignore[arg-type]

    def to_dict(self) -> Dict[str, int]:
        return {"items": int(self.items)} if self.items is not None else {"bytes": int(self.bytes)}  # type: ignore[arg-type]


MemorySpec = Union[int, str, Mapping[str, Any], MemoryBudget]


def parse_memory(memory: MemorySpec) -> MemoryBudget:
    """Parse a replay budget.

    Accepted forms: ``417`` (items), ``{"items": 417}``, ``{"bytes": "2.26MB"}``
    (decimal SI and binary IEC units, see :func:`streamcl.utils.parse_bytes`),
    ``"2.26MB"`` (a string with a unit means bytes), or a :class:`MemoryBudget`.
    """
    if isinstance(memory, MemoryBudget):
        return memory
    hint = "write memory: 417, memory: {items: 417} or memory: {bytes: 2.26MB}"
    if isinstance(memory, bool):
        raise ConfigError(f"not a replay budget: {memory!r}; {hint}", key="memory")
    if isinstance(memory, int):
        return MemoryBudget(items=memory)
    if isinstance(memory, float) and float(memory).is_integer():
        return MemoryBudget(items=int(memory))
    if isinstance(memory, str):
        s = memory.strip()
        if s.isdigit():
            return MemoryBudget(items=int(s))
        try:
            return MemoryBudget(bytes=parse_bytes(s))
        except ValueError as e:
            raise ConfigError(f"{e}; {hint}", key="memory") from None
    if isinstance(memory, Mapping):
        keys = set(memory)
        if keys == {"items"}:
            v = memory["items"]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not float(v).is_integer():
                raise ConfigError(f"memory.items must be an integer, got {v!r}", key="memory.items")
            return MemoryBudget(items=int(v))
        if keys == {"bytes"}:
            try:
                return MemoryBudget(bytes=parse_bytes(memory["bytes"]))
            except ValueError as e:
                raise ConfigError(str(e), key="memory.bytes") from None
        raise ConfigError(f"unknown keys {sorted(keys)}; valid keys: items | bytes (one of them); {hint}", key="memory")
    raise ConfigError(f"not a replay budget: {memory!r}; {hint}", key="memory")


# =====================================================================================
# Buffer policies
# =====================================================================================
class BufferPolicy:
    """Admission/eviction rule of a :class:`CodeBuffer`.

    :meth:`add` receives the buffer and a batch of ``codes``/``labels`` (on the
    buffer's device, labels as ``int64``) and must use the buffer's primitives
    (:meth:`CodeBuffer.append`, :meth:`CodeBuffer.remove`,
    :meth:`CodeBuffer.indices_of`, :meth:`CodeBuffer.class_counts`) and its
    ``generator`` for randomness, never exceeding ``buffer.capacity``.
    State must be python primitives / tensors (see :meth:`state_dict`).
    """

    name = "base"

    def begin_experience(
        self, buffer: CodeBuffer, *, n_items: Optional[int] = None, classes: Optional[Iterable[int]] = None
    ) -> None:
        """Called by the plugin before an experience is walked/trained (stream length, its classes)."""

    def add(self, buffer: CodeBuffer, codes: Tensor, labels: Tensor) -> None:  # pragma: no cover
        raise NotImplementedError

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        return None


class ClassBalancedPolicy(BufferPolicy):
    """CRUMB's buffer rule: class-balanced quota with random truncation.

    - quota per class = ``floor(capacity / number of seen classes)``; when new
      classes arrive the quota drops and old classes are shrunk by random removal;
    - while walking an experience's stream keep every ``k``-th example of each
      class, ``k = max(1, floor(len(stream) / capacity))`` (set by
      :meth:`begin_experience`; ``stride`` fixes it instead);
    - a class above its quota is truncated to the quota by removing random
      items (among the stored ones and the newly admitted ones).
    """

    name = "class_balanced"

    def __init__(self, *, stride: Optional[int] = None):
        self.fixed_stride = stride
        self.stride = max(1, int(stride)) if stride else 1
        self.seen: List[int] = []
        self._counters: Dict[int, int] = {}

    def begin_experience(
        self, buffer: CodeBuffer, *, n_items: Optional[int] = None, classes: Optional[Iterable[int]] = None
    ) -> None:
        if self.fixed_stride:
            self.stride = max(1, int(self.fixed_stride))
        elif n_items is not None and buffer.capacity > 0:
            self.stride = max(1, int(n_items) // int(buffer.capacity))
        else:
            self.stride = 1
        self._counters = {}
        if classes is not None:
            self.observe_classes(classes)

    def observe_classes(self, classes: Iterable[int]) -> None:
        s = set(self.seen)
        for c in classes:
            if int(c) not in s:
                s.add(int(c))
                self.seen.append(int(c))

    def quota(self, buffer: CodeBuffer) -> int:
        return buffer.capacity // len(self.seen) if self.seen else buffer.capacity

    def shrink(self, buffer: CodeBuffer) -> None:
        """Truncate every stored class to the current quota by random removal."""
        q = self.quota(buffer)
        drop: List[Tensor] = []
        for c, n in buffer.items_per_class().items():
            if n > q:
                idx = buffer.indices_of(c)
                perm = torch.randperm(len(idx), generator=buffer.generator)
                drop.append(idx[perm[: n - q].to(idx.device)])
        if drop:
            buffer.remove(torch.cat(drop))

    def select(self, labels: Tensor) -> Tensor:
        """Stride rule: mask of the items that are every k-th example of their class in stream order."""
        keep = torch.zeros(len(labels), dtype=torch.bool, device=labels.device)
        for c in torch.unique(labels).tolist():
            pos = (labels == c).nonzero(as_tuple=True)[0]
            start = self._counters.get(int(c), 0)
            order = torch.arange(start, start + len(pos), device=labels.device)
            keep[pos[order % self.stride == 0]] = True
            self._counters[int(c)] = start + len(pos)
        return keep

    def add(self, buffer: CodeBuffer, codes: Tensor, labels: Tensor) -> None:
        if len(labels) == 0:
            return
        keep = self.select(labels)
        self.admit(buffer, codes[keep], labels[keep])

    def admit(self, buffer: CodeBuffer, codes: Tensor, labels: Tensor) -> None:
        """Merge already-selected items with the stored ones, truncating each class to its quota."""
        keep = self.plan(buffer, labels)
        if bool(keep.any()):
            buffer.append(codes[keep], labels[keep])

    def plan(self, buffer: CodeBuffer, labels: Tensor) -> Tensor:
        """The labels-only half of :meth:`admit`: evict the stored items that lose the
        random truncation and return the mask of offered items that win it.

        Lets a caller compute codes for the winners only (``store="experience"``
        runs the trunk on just those); ``admit`` is ``plan`` + append.
        """
        if len(labels) == 0:
            return torch.zeros(0, dtype=torch.bool, device=labels.device)
        self.observe_classes(torch.unique(labels).tolist())
        self.shrink(buffer)
        q = self.quota(buffer)
        # per class: merge with the stored items, truncate to the quota at random
        drop_old: List[Tensor] = []
        new_keep = torch.zeros(len(labels), dtype=torch.bool, device=labels.device)
        for c in torch.unique(labels).tolist():
            new_pos = (labels == c).nonzero(as_tuple=True)[0]
            old_idx = buffer.indices_of(c)
            m, n = len(old_idx), len(new_pos)
            if m + n <= q:
                new_keep[new_pos] = True
                continue
            perm = torch.randperm(m + n, generator=buffer.generator)
            survivors = perm[:q]
            old_survive = torch.zeros(m, dtype=torch.bool)
            old_survive[survivors[survivors < m]] = True
            drop_old.append(old_idx[~old_survive.to(old_idx.device)])
            new_keep[new_pos[(survivors[survivors >= m] - m).to(new_pos.device)]] = True
        if drop_old:
            buffer.remove(torch.cat(drop_old))
        return new_keep

    def state_dict(self) -> Dict[str, Any]:
        return {
            "fixed_stride": int(self.fixed_stride or 0),
            "stride": int(self.stride),
            "seen": [int(c) for c in self.seen],
            "counters": {int(k): int(v) for k, v in self._counters.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.fixed_stride = int(state.get("fixed_stride", 0)) or None
        self.stride = int(state.get("stride", 1))
        self.seen = [int(c) for c in state.get("seen", [])]
        self._counters = {int(k): int(v) for k, v in dict(state.get("counters", {})).items()}


class LargestClassEvictionPolicy(BufferPolicy):
    """REMIND's buffer rule: admit every item; when full, evict a random item of the largest class.

    Items are admitted one at a time in stream order. When the buffer is full
    the new item is counted with its class, the class holding the most items
    is found (ties: smallest label) and one of its items, chosen uniformly at
    random *including the newcomer when it belongs to that class*, is dropped.
    The cap therefore holds after any bulk insert (e.g. a base initialisation).
    """

    name = "largest_class"

    def add(self, buffer: CodeBuffer, codes: Tensor, labels: Tensor) -> None:
        n = len(labels)
        i = 0
        free = buffer.capacity - len(buffer)
        if buffer.capacity == 0:
            return
        if free > 0:  # fast path: bulk append while there is room
            k = min(free, n)
            buffer.append(codes[:k], labels[:k])
            i = k
        if i >= n:
            return
        counts = buffer.class_counts(minlength=int(labels.max().item()) + 1).clone()
        for j in range(i, n):
            c = int(labels[j])
            if c >= len(counts):
                counts = torch.cat([counts, counts.new_zeros(c + 1 - len(counts))])
            counts[c] += 1
            big = int(torch.argmax(counts).item())  # first max = smallest label on ties
            n_big = int(counts[big].item())
            r = int(torch.randint(n_big, (1,), generator=buffer.generator).item())
            counts[big] -= 1
            if big == c and r == n_big - 1:
                continue  # the newcomer itself is evicted
            victim = buffer.indices_of(big)[r]
            buffer.replace(int(victim), codes[j : j + 1], labels[j : j + 1])


def make_policy(policy: Union[str, BufferPolicy]) -> BufferPolicy:
    """``"class_balanced"`` / ``"largest_class"`` (or a :class:`BufferPolicy` instance) -> policy."""
    if isinstance(policy, BufferPolicy):
        return policy
    if policy in ("class_balanced", "crumb"):
        return ClassBalancedPolicy()
    if policy in ("largest_class", "remind"):
        return LargestClassEvictionPolicy()
    raise ConfigError(f"unknown buffer policy {policy!r}; valid: class_balanced, largest_class", key="policy")


# =====================================================================================
# CodeBuffer
# =====================================================================================
class CodeBuffer:
    """Fixed-capacity store of codes and labels in two preallocated tensors.

    ``codes``: ``[capacity, *code_shape]`` of ``code_dtype`` (``uint8`` default;
    ``int16``/``int32`` allowed for large codebooks; ``int64`` and floats are
    refused). ``labels``: ``[capacity]`` ``int16``. Items ``[0, len)`` are valid;
    removal compacts. Admission/eviction is delegated to ``policy``.

    :param capacity: number of items.
    :param code_shape: shape of one item's codes.
    :param policy: a :class:`BufferPolicy` or its name.
    :param device: where the tensors live (``"cpu"`` default).
    :param seed: seed of the buffer's own ``torch.Generator`` (evictions, default sampling).
    """

    def __init__(
        self,
        capacity: int,
        code_shape: Sequence[int],
        policy: Union[str, BufferPolicy] = "class_balanced",
        *,
        code_dtype: torch.dtype = torch.uint8,
        device: Union[str, torch.device] = "cpu",
        seed: int = 0,
    ):
        if code_dtype not in _ALLOWED_CODE_DTYPES:
            raise StreamclError(
                f"CodeBuffer stores compact integer codes; code_dtype {code_dtype} is not allowed "
                f"(use one of {', '.join(str(d) for d in _ALLOWED_CODE_DTYPES)})"
            )
        if capacity < 0:
            raise StreamclError(f"CodeBuffer capacity must be >= 0, got {capacity}")
        self.capacity = int(capacity)
        self.code_shape = tuple(int(s) for s in code_shape)
        self.code_dtype = code_dtype
        self.device = torch.device(device)
        self.policy = make_policy(policy)
        self.seed = int(seed)
        self.generator = torch.Generator()
        self.generator.manual_seed(self.seed)
        self.codes = torch.zeros((self.capacity, *self.code_shape), dtype=code_dtype, device=self.device)
        self.labels = torch.full((self.capacity,), -1, dtype=LABEL_DTYPE, device=self.device)
        self._size = 0

    # ------------------------------------------------------------------ construction
    @staticmethod
    def item_nbytes(code_shape: Sequence[int], code_dtype: torch.dtype = torch.uint8) -> int:
        """Bytes per stored item: its codes plus its ``int16`` label."""
        return int(np.prod(code_shape)) * torch.empty((), dtype=code_dtype).element_size() + LABEL_NBYTES

    @classmethod
    def from_budget(
        cls,
        memory: MemorySpec,
        code_shape: Sequence[int],
        policy: Union[str, BufferPolicy] = "class_balanced",
        *,
        code_dtype: torch.dtype = torch.uint8,
        device: Union[str, torch.device] = "cpu",
        seed: int = 0,
        reserved_nbytes: int = 0,
    ) -> CodeBuffer:
        """Buffer sized by a budget in items or bytes.

        A byte budget pays ``reserved_nbytes`` (the codec state) first, then codes + label per item.
        """
        budget = parse_memory(memory)
        cap = budget.capacity(cls.item_nbytes(code_shape, code_dtype), reserved_nbytes)
        return cls(cap, code_shape, policy, code_dtype=code_dtype, device=device, seed=seed)

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return self._size

    @property
    def is_full(self) -> bool:
        return self._size >= self.capacity

    def nbytes(self) -> int:
        """Real bytes held: ``codes.nbytes + labels.nbytes`` of the preallocated tensors."""
        return int(self.codes.nbytes + self.labels.nbytes)

    def valid_labels(self) -> Tensor:
        return self.labels[: self._size]

    def class_counts(self, minlength: int = 0) -> Tensor:
        lab = self.labels[: self._size].long()
        return torch.bincount(lab.cpu(), minlength=minlength)

    def items_per_class(self) -> Dict[int, int]:
        counts = self.class_counts()
        return {int(c): int(n) for c, n in enumerate(counts.tolist()) if n > 0}

    def classes(self) -> List[int]:
        return sorted(self.items_per_class())

    def indices_of(self, label: int) -> Tensor:
        """Positions (on the buffer's device) of the items of class ``label``."""
        return (self.labels[: self._size] == int(label)).nonzero(as_tuple=True)[0]

    # ------------------------------------------------------------------ primitives for policies
    def _check(self, codes: Tensor, labels: Tensor) -> Tuple[Tensor, Tensor]:
        if tuple(codes.shape[1:]) != self.code_shape:
            raise StreamclError(f"codes of shape {tuple(codes.shape[1:])} do not match the buffer's {self.code_shape}")
        if len(codes) != len(labels):
            raise StreamclError("codes and labels must have the same length")
        if len(labels) and (int(labels.max()) > torch.iinfo(LABEL_DTYPE).max or int(labels.min()) < 0):
            raise StreamclError("labels must lie in [0, 32767] to be stored as int16")
        return codes.to(self.device, self.code_dtype), labels.to(self.device)

    def append(self, codes: Tensor, labels: Tensor) -> None:
        """Write items at the end (raises when the capacity would be exceeded)."""
        n = len(labels)
        if self._size + n > self.capacity:
            raise StreamclError(f"CodeBuffer overflow: {self._size} + {n} > capacity {self.capacity}")
        codes, labels = self._check(codes, labels)
        self.codes[self._size : self._size + n] = codes
        self.labels[self._size : self._size + n] = labels.to(LABEL_DTYPE)
        self._size += n

    def replace(self, index: int, codes: Tensor, labels: Tensor) -> None:
        """Overwrite the item at ``index`` with one new item."""
        codes, labels = self._check(codes, labels)
        self.codes[index] = codes[0]
        self.labels[index] = labels[0].to(LABEL_DTYPE)

    def remove(self, indices: Tensor) -> None:
        """Drop items at ``indices`` and compact the rest (order of survivors preserved)."""
        if indices.numel() == 0:
            return
        keep = torch.ones(self._size, dtype=torch.bool, device=self.device)
        keep[indices.to(self.device)] = False
        kept = keep.nonzero(as_tuple=True)[0]
        n = len(kept)
        self.codes[:n] = self.codes[kept]
        self.labels[:n] = self.labels[kept]
        self.labels[n : self._size] = -1
        self._size = n

    def clear(self) -> None:
        self.labels.fill_(-1)
        self._size = 0

    # ------------------------------------------------------------------ public API
    def add(self, codes: Tensor, labels: Tensor) -> None:
        """Offer a batch of items; the policy decides what is admitted and what is evicted."""
        if self.capacity == 0 or len(labels) == 0:
            return
        codes, labels = self._check(codes, labels)
        self.policy.add(self, codes, labels.long())

    def begin_experience(self, *, n_items: Optional[int] = None, classes: Optional[Iterable[int]] = None) -> None:
        self.policy.begin_experience(self, n_items=n_items, classes=classes)

    def sample(
        self,
        n: int,
        *,
        classes: Optional[Iterable[int]] = None,
        replace: bool = False,
        generator: Optional[torch.Generator] = None,
    ) -> Tuple[Tensor, Tensor]:
        """``n`` random items (restricted to ``classes`` if given) as ``(codes, labels int64)``.

        Without replacement while ``n`` does not exceed the eligible items
        (then with replacement); empty tensors when nothing is eligible.
        """
        g = generator if generator is not None else self.generator
        if classes is None:
            pool = torch.arange(self._size)
        else:
            cl = torch.as_tensor(sorted(int(c) for c in classes), dtype=torch.long)
            lab = self.labels[: self._size].long().cpu()
            pool = torch.isin(lab, cl).nonzero(as_tuple=True)[0]
        if len(pool) == 0 or n <= 0:
            return self._empty()
        if replace or n > len(pool):
            pick = pool[torch.randint(len(pool), (n,), generator=g)]
        else:
            pick = pool[torch.randperm(len(pool), generator=g)[:n]]
        pick = pick.to(self.device)
        return self.codes[pick], self.labels[pick].long()

    def sample_per_class(
        self, classes: Sequence[int], rounds: int, *, generator: Optional[torch.Generator] = None
    ) -> Tuple[Tensor, Tensor]:
        """``rounds`` rounds of one random stored item per class (round-major order), with replacement.

        Classes without stored items are skipped. This is CRUMB's replay draw.
        """
        g = generator if generator is not None else self.generator
        lab = self.labels[: self._size].long().cpu()
        per_class = [(int(c), (lab == int(c)).nonzero(as_tuple=True)[0]) for c in classes]
        per_class = [(c, idx) for c, idx in per_class if len(idx)]
        if not per_class or rounds <= 0:
            return self._empty()
        picks = []
        for _ in range(rounds):
            for _, idx in per_class:
                picks.append(idx[int(torch.randint(len(idx), (1,), generator=g).item())])
        pick = torch.stack(picks).to(self.device)
        return self.codes[pick], self.labels[pick].long()

    def _empty(self) -> Tuple[Tensor, Tensor]:
        return (
            torch.empty((0, *self.code_shape), dtype=self.code_dtype, device=self.device),
            torch.empty((0,), dtype=torch.long, device=self.device),
        )

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        """Tensors and python primitives only (loads with ``torch.load(weights_only=True)``)."""
        return {
            "capacity": self.capacity,
            "code_shape": list(self.code_shape),
            "code_dtype": str(self.code_dtype).replace("torch.", ""),
            "size": self._size,
            "codes": self.codes[: self._size].cpu().clone(),
            "labels": self.labels[: self._size].cpu().clone(),
            "policy_name": getattr(self.policy, "name", type(self.policy).__name__),
            "policy": self.policy.state_dict(),
            "seed": self.seed,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        try:
            cap = int(state["capacity"])
            shape = tuple(int(s) for s in state["code_shape"])
            dtype = getattr(torch, str(state["code_dtype"]))
            size = int(state["size"])
            codes, labels = state["codes"], state["labels"]
        except (KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"replay buffer state is incomplete or malformed ({e!r})") from None
        if cap != self.capacity or shape != self.code_shape or dtype != self.code_dtype:
            self.capacity, self.code_shape, self.code_dtype = cap, shape, dtype
            self.codes = torch.zeros((cap, *shape), dtype=dtype, device=self.device)
            self.labels = torch.full((cap,), -1, dtype=LABEL_DTYPE, device=self.device)
        self.labels.fill_(-1)
        self.codes[:size] = codes.to(self.device, dtype)
        self.labels[:size] = labels.to(self.device, LABEL_DTYPE)
        self._size = size
        self.policy.load_state_dict(state.get("policy", {}))
        self.seed = int(state.get("seed", self.seed))
        if "generator" in state:
            self.generator.set_state(state["generator"])

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], policy: Union[str, BufferPolicy, None] = None,
                        *, device: Union[str, torch.device] = "cpu") -> CodeBuffer:
        buf = cls(
            int(state["capacity"]),
            tuple(state["code_shape"]),
            policy if policy is not None else str(state.get("policy_name", "class_balanced")),
            code_dtype=getattr(torch, str(state["code_dtype"])),
            device=device,
            seed=int(state.get("seed", 0)),
        )
        buf.load_state_dict(state)
        return buf

    def __repr__(self) -> str:
        return (
            f"CodeBuffer({self._size}/{self.capacity} items, code_shape={self.code_shape}, "
            f"dtype={self.code_dtype}, policy={getattr(self.policy, 'name', self.policy)}, {self.nbytes()} B)"
        )


# =====================================================================================
# Feature augmentation
# =====================================================================================
def _uniform(n: int, lo: float, hi: float, g: Optional[torch.Generator]) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


def _bilinear_axis(feats: Tensor, start: Tensor, length: Tensor, out_len: int, dim: int) -> Tensor:
    """Resample ``feats`` along ``dim`` from the window ``[start, start+length)`` of each item to ``out_len``.

    Same sampling as ``F.interpolate(mode="bilinear", align_corners=False)``
    applied to the cropped window (source coordinates clamped inside the window).
    """
    n = feats.shape[0]
    dev = feats.device
    i = torch.arange(out_len, device=dev, dtype=torch.float64).unsqueeze(0)  # (1, out)
    scale = (length.to(dev) / out_len).unsqueeze(1)  # (N, 1)
    src = ((i + 0.5) * scale - 0.5).clamp(min=0.0)
    lo = torch.floor(src)
    w = (src - lo).to(feats.dtype)
    lo = lo.long()
    last = (length.to(dev).long() - 1).unsqueeze(1)
    hi = torch.minimum(lo + 1, last)
    lo = torch.minimum(lo, last)
    off = start.to(dev).long().unsqueeze(1)
    lo, hi = lo + off, hi + off
    shape = [n, 1, 1, 1]
    shape[dim] = out_len
    expand = list(feats.shape)
    expand[dim] = out_len
    g_lo = feats.gather(dim, lo.view(shape).expand(expand))
    g_hi = feats.gather(dim, hi.view(shape).expand(expand))
    return g_lo + (g_hi - g_lo) * w.view(shape)


def random_resized_crop_features(
    feats: Tensor,
    *,
    scale: Tuple[float, float] = (2 / 7, 1.0),
    ratio: Tuple[float, float] = (3 / 4, 4 / 3),
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Random resized crop of each feature map, resized back to ``H x W`` bilinearly (vectorised).

    Per item: area fraction ``s ~ U(scale)``, aspect ratio ``r ~ logU(ratio)``,
    integer crop ``w = round(sqrt(s r) W)``, ``h = round(sqrt(s / r) H)``
    (clamped to the map), random integer offset; the crop is resampled to
    ``H x W`` exactly like ``F.interpolate(crop, (H, W), mode="bilinear",
    align_corners=False)`` would, for the whole batch at once (two separable
    gathers). Differentiable w.r.t. ``feats``.
    """
    n, _, h, w = feats.shape
    if n == 0:
        return feats
    x0, y0, cw, ch = sample_crop_boxes(n, h, w, scale=scale, ratio=ratio, generator=generator)
    return resize_crops(feats, x0, y0, cw, ch)


def sample_crop_boxes(
    n: int,
    h: int,
    w: int,
    *,
    scale: Tuple[float, float] = (2 / 7, 1.0),
    ratio: Tuple[float, float] = (3 / 4, 4 / 3),
    generator: Optional[torch.Generator] = None,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Integer crop boxes ``(x0, y0, width, height)`` (float64 tensors of length ``n``) of a random resized crop."""
    s = _uniform(n, scale[0], scale[1], generator)
    r = torch.exp(_uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator))
    cw = torch.clamp(torch.round(torch.sqrt(s * r) * w), 1, w)
    ch = torch.clamp(torch.round(torch.sqrt(s / r) * h), 1, h)
    x0 = torch.floor(torch.rand(n, generator=generator, dtype=torch.float64) * (w - cw + 1))
    y0 = torch.floor(torch.rand(n, generator=generator, dtype=torch.float64) * (h - ch + 1))
    return x0, y0, cw, ch


def resize_crops(feats: Tensor, x0: Tensor, y0: Tensor, cw: Tensor, ch: Tensor) -> Tensor:
    """Crop item ``i`` to ``[y0:y0+ch, x0:x0+cw]`` and resize it back to ``H x W`` (bilinear), batched."""
    _, _, h, w = feats.shape
    out = _bilinear_axis(feats, x0, cw, w, dim=3)
    return _bilinear_axis(out, y0, ch, h, dim=2)


def _sample_beta(alpha: float, generator: Optional[torch.Generator]) -> float:
    seed = int(torch.randint(2**31 - 1, (1,), generator=generator).item())
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def mixup_features(
    feats: Tensor,
    labels: Tensor,
    *,
    alpha: float = 0.1,
    mode: Literal["halves", "permute"] = "halves",
    generator: Optional[torch.Generator] = None,
) -> Tuple[Tensor, Tensor, Tensor, float]:
    """Mixup with one ``lam ~ Beta(alpha, alpha)`` per call.

    ``mode="halves"`` (REMIND): mix the first half with the second half,
    returning ``len // 2`` items; ``"permute"``: mix with a random permutation
    of the batch (same length). Returns ``(mixed, labels_a, labels_b, lam)``.
    """
    if alpha is None or alpha <= 0 or len(labels) < 2:
        return feats, labels, labels, 1.0
    lam = _sample_beta(alpha, generator)
    if mode == "halves":
        h = len(labels) // 2
        return lam * feats[:h] + (1 - lam) * feats[h : 2 * h], labels[:h], labels[h : 2 * h], lam
    if mode == "permute":
        perm = torch.randperm(len(labels), generator=generator).to(feats.device)
        return lam * feats + (1 - lam) * feats[perm], labels, labels[perm], lam
    raise ValueError(f"unknown mixup mode {mode!r}; valid: halves, permute")


def augment_features(
    feats: Tensor,
    labels: Tensor,
    *,
    crop: bool = True,
    crop_scale: Tuple[float, float] = (2 / 7, 1.0),
    crop_ratio: Tuple[float, float] = (3 / 4, 4 / 3),
    mixup_alpha: Optional[float] = 0.1,
    mixup_mode: Literal["halves", "permute"] = "halves",
    generator: Optional[torch.Generator] = None,
) -> Tuple[Tensor, Tensor, Tensor, float]:
    """Feature-map augmentation of replayed items: random resized crop then mixup.

    Returns ``(feats, labels_a, labels_b, lam)``; train with
    :func:`mixup_loss` (``lam * CE(., labels_a) + (1 - lam) * CE(., labels_b)``).
    With ``mixup_alpha`` None/0: ``labels_b == labels_a``, ``lam == 1``. With
    ``mixup_mode="halves"`` the output holds ``len(feats) // 2`` items.
    REMIND: crop scale (2/7, 1) at 7x7 (4/13 at 13x13 in the CRUMB comparison),
    ratio (3/4, 4/3), mixup alpha 0.1 between two replay halves.
    """
    if crop:
        feats = random_resized_crop_features(feats, scale=crop_scale, ratio=crop_ratio, generator=generator)
    return mixup_features(feats, labels, alpha=mixup_alpha or 0.0, mode=mixup_mode, generator=generator)


def mixup_loss(criterion: Any, logits: Tensor, labels_a: Tensor, labels_b: Tensor, lam: float) -> Tensor:
    """``lam * criterion(logits, labels_a) + (1 - lam) * criterion(logits, labels_b)``."""
    if lam >= 1.0 or labels_b is labels_a:
        return criterion(logits, labels_a)
    return lam * criterion(logits, labels_a) + (1 - lam) * criterion(logits, labels_b)


# =====================================================================================
# The plugin
# =====================================================================================
def _splitnet_or_raise(model: Any, who: str) -> Any:
    from streamcl.models.splitnet import is_splitnet

    if not is_splitnet(model):
        raise StreamclError(
            f"{who} needs a streamcl.models.SplitNet (a frozen trunk + a trainable head), "
            f"got {type(model).__name__}; build the model with a cut factory "
            "(squeezenet_cut, resnet18_cut, mobilenetv2_cut, small_cnn_cut) or wrap yours as "
            "SplitNet(trunk, head)"
        )
    return model


def _optimizer_like(template: torch.optim.Optimizer, params: List[nn.Parameter], lr: Optional[float]) -> torch.optim.Optimizer:
    """A new optimiser of the template's class and first-group hyper-parameters over ``params``."""
    hyper = {k: v for k, v in template.param_groups[0].items() if k not in ("params", "initial_lr", "name")}
    if lr is not None:
        hyper["lr"] = lr
    try:
        return type(template)(params, **hyper)
    except TypeError:
        return torch.optim.SGD(params, lr=float(hyper.get("lr", 1e-3)))


class LatentReplayPlugin(SupervisedPlugin):
    """Compressed latent replay on a :class:`~streamcl.models.SplitNet`: the shared CRUMB/REMIND machinery.

    The codec encodes the frozen trunk's feature maps into codes kept in a
    :class:`CodeBuffer`; replayed codes are decoded (and optionally augmented)
    and fed to the head. See the module docstring for how it hooks into
    Avalanche's loop. Subclasses (``CRUMBPlugin``, ``REMINDPlugin``) choose the
    codec and the settings below and may override the ``sample_replay``,
    ``replay_features``, ``replay_loss``, ``fit_codec`` and ``store_*`` methods.

    :param codec: the :class:`Codec` (may also be set later through :meth:`set_codec`).
    :param memory: replay budget: items (int), ``{"items": N}`` or ``{"bytes": "2.26MB"}``.
        A byte budget is the whole memory: the codec state (codebook, PQ
        centroids) is charged first, then codes + ``int16`` label per item, so
        :meth:`replay_nbytes` never exceeds it.
    :param policy: ``"class_balanced"`` (CRUMB), ``"largest_class"`` (REMIND) or a :class:`BufferPolicy`.
    :param replay: ``"separate"``: after each new-data step, one extra replay
        step with its own optimiser step (CRUMB); ``"joint"``: replayed items are
        concatenated to the new mini-batch in the same step (REMIND);
        ``"none"``: store but never replay.
    :param replay_sampling: ``"absent_classes"``: K = seen classes absent from
        the batch with stored items, ``ceil(B / K)`` rounds of one random item
        per class (CRUMB); ``"uniform"``: ``replay_mb_size`` items drawn
        uniformly without replacement (REMIND).
    :param replay_mb_size: replayed items per step for ``"uniform"`` (before mixup
        halving: with ``mixup_mode="halves"`` twice as many are drawn).
    :param replay_weight: weight of the replay loss; ``None`` in joint mode means
        per-item weighting, i.e. the mean loss over the concatenated batch (REMIND).
    :param train_path: what the head trains on for new data: ``"reconstructed"``
        ``head(decode(encode(f)))``, ``"direct"`` ``head(f)``, or ``"both"``
        (reconstructed + an added direct CE term).
    :param eval_path: ``"direct"`` (CRUMB) or ``"reconstructed"`` (REMIND).
    :param mask_logits: mask logits of classes not seen yet during training.
    :param mask_eval_logits: same at evaluation (predictions among seen classes only).
    :param grad_clamp: clamp every gradient element to ``[-grad_clamp, grad_clamp]`` before each step.
    :param augment: crop/mixup the replayed feature maps (:func:`augment_features`).
    :param store: ``"experience"``: after each experience encode its data with
        the final codec and offer the codes (only the items a labels-only policy
        will keep go through the trunk again); ``"last_pass"``: the same
        selection, from the codes the last training epoch of the experience
        already computed (no second trunk pass; selected codes are held until the
        experience ends, then admitted: CRUMB's default); ``"stream"``: offer the
        codes of every training mini-batch during the first epoch (REMIND);
        ``"none"``: never store (e.g. a no-replay ablation).
    :param fit_codec: when the codec is not fitted: ``"first_batch"`` fit it on
        the first training mini-batch; ``"first_experience"`` on the features of
        the whole first experience before training (up to ``fit_max_items``);
        ``"never"`` (the codec must come fitted).
    :param freeze_codec: never update a learnable codec.
    :param codec_lr: learning rate of the codec optimiser (default: follow the
        strategy optimiser's current learning rate, same class and hyper-parameters).
    :param buffer_device: device of the code buffer (``"cpu"`` default).
    :param seed: seed of the plugin's generator (replay draws, augmentation) and the buffer's.
    """

    # The YAML validator calls these on the raw values, so a bad budget fails at load time.
    config_checks = {"memory": parse_memory}

    def __init__(
        self,
        codec: Optional[Codec] = None,
        *,
        memory: MemorySpec = 417,
        policy: Union[str, BufferPolicy] = "class_balanced",
        replay: Literal["separate", "joint", "none"] = "separate",
        replay_sampling: Literal["absent_classes", "uniform"] = "absent_classes",
        replay_mb_size: Optional[int] = None,
        replay_weight: Optional[float] = 1.0,
        train_path: Literal["reconstructed", "direct", "both"] = "reconstructed",
        eval_path: Literal["direct", "reconstructed"] = "direct",
        mask_logits: bool = True,
        mask_eval_logits: bool = False,
        grad_clamp: Optional[float] = None,
        augment: bool = False,
        crop_scale: Tuple[float, float] = (2 / 7, 1.0),
        crop_ratio: Tuple[float, float] = (3 / 4, 4 / 3),
        mixup_alpha: Optional[float] = None,
        mixup_mode: Literal["halves", "permute"] = "halves",
        store: Literal["experience", "last_pass", "stream", "none"] = "experience",
        fit_codec: Literal["first_batch", "first_experience", "never"] = "first_batch",
        fit_max_items: Optional[int] = None,
        freeze_codec: bool = False,
        codec_lr: Optional[float] = None,
        buffer_device: str = "cpu",
        seed: int = 0,
    ):
        super().__init__()
        self._check_choice("replay", replay, ("separate", "joint", "none"))
        self._check_choice("replay_sampling", replay_sampling, ("absent_classes", "uniform"))
        self._check_choice("train_path", train_path, ("reconstructed", "direct", "both"))
        self._check_choice("eval_path", eval_path, ("direct", "reconstructed"))
        self._check_choice("store", store, ("experience", "last_pass", "stream", "none"))
        self._check_choice("fit_codec", fit_codec, ("first_batch", "first_experience", "never"))
        self._check_choice("mixup_mode", mixup_mode, ("halves", "permute"))
        if replay_sampling == "uniform" and replay != "none" and not replay_mb_size:
            raise ConfigError("replay_sampling='uniform' needs replay_mb_size (e.g. 50)", key="replay_mb_size")
        if grad_clamp is not None and grad_clamp <= 0:
            raise ConfigError(f"grad_clamp must be positive or null, got {grad_clamp}", key="grad_clamp")
        self.budget = parse_memory(memory)
        self.policy = make_policy(policy)
        self.codec: Optional[Codec] = codec
        self.replay = replay
        self.replay_sampling = replay_sampling
        self.replay_mb_size = replay_mb_size
        self.replay_weight = replay_weight
        self.train_path = train_path
        self.eval_path = eval_path
        self.mask_logits = bool(mask_logits)
        self.mask_eval_logits = bool(mask_eval_logits)
        self.grad_clamp = grad_clamp
        self.augment = bool(augment)
        self.crop_scale = tuple(crop_scale)
        self.crop_ratio = tuple(crop_ratio)
        self.mixup_alpha = mixup_alpha
        self.mixup_mode = mixup_mode
        self.store = store
        self._staged: List[Tuple[Tensor, Tensor]] = []  # store="last_pass": selected codes of this experience
        self.fit_codec_on = fit_codec
        self.fit_max_items = fit_max_items
        self.freeze_codec = bool(freeze_codec)
        self.codec_lr = codec_lr
        self.buffer_device = buffer_device
        self.seed = int(seed)

        self.generator = torch.Generator()
        self.generator.manual_seed(self.seed)
        self.buffer: Optional[CodeBuffer] = None
        self.feature_shape: Optional[FeatureShape] = None
        self.seen_classes: List[int] = []
        self.codec_optimizer: Optional[torch.optim.Optimizer] = None
        self.last_replay_loss: Optional[float] = None
        self.last_replay_size: int = 0
        self.replay_steps: int = 0
        # transient per-iteration state
        self._feats: Optional[Tensor] = None
        self._codes: Optional[Tensor] = None
        self._joint: Optional[Tuple[Tensor, Tensor, Tensor, float]] = None
        self._replay_logits: Optional[Tensor] = None
        self._eval_feats: Optional[Tensor] = None
        self._pending_codec_state: Optional[Dict[str, Any]] = None
        self._pending_codec_opt: Optional[Dict[str, Any]] = None
        self._pending_begin: Optional[Tuple[Optional[int], Optional[List[int]]]] = None
        self._exp_key: Any = None
        self._strategy: Any = None

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _check_choice(key: str, value: Any, valid: Sequence[str]) -> None:
        if value not in valid:
            raise ConfigError(f"invalid value {value!r}; valid: {', '.join(valid)}", key=key)

    def set_codec(self, codec: Codec) -> None:
        """Install (or replace) the codec; drops a codec optimiser built for the previous one."""
        self.codec = codec
        self.codec_optimizer = None

    def make_codec(self, feature_shape: FeatureShape, model: nn.Module) -> Codec:
        """Build the codec lazily once the feature shape is known (subclasses override; default: error)."""
        raise StreamclError(f"{type(self).__name__} has no codec: pass codec=... or override make_codec")

    def _ensure_codec(self, strategy: Any, feature_shape: Optional[FeatureShape] = None) -> Codec:
        if self.codec is None:
            if feature_shape is None:
                raise StreamclError("codec not built yet: no feature map seen")
            self.codec = self.make_codec(feature_shape, strategy.model if strategy is not None else None)
            if self._pending_codec_state is not None:
                self.codec.load_state_dict(self._pending_codec_state)
                self._pending_codec_state = None
        dev = torch.device(strategy.device) if strategy is not None else None
        if dev is not None:
            p = next(iter(list(self.codec.parameters()) + list(self.codec.buffers())), None)
            if p is not None and p.device != dev:
                self.codec.to(dev)
        return self.codec

    def _on_feature_shape(self, strategy: Any, feats: Tensor) -> None:
        """Record the feature shape and allocate the buffer on the first feature map seen."""
        shape = tuple(int(s) for s in feats.shape[1:])
        if len(shape) != 3:
            raise StreamclError(f"latent replay expects trunk feature maps (N, C, H, W), got shape {tuple(feats.shape)}")
        if self.feature_shape is None:
            self.feature_shape = shape  # type: ignore[assignment]
        elif shape != self.feature_shape:
            raise StreamclError(
                f"the trunk's feature shape changed from {self.feature_shape} to {shape}: "
                "latent replay needs a fixed input size (resize the images in the benchmark's transforms)"
            )
        codec = self._ensure_codec(strategy, self.feature_shape)
        if self.buffer is None:
            self.buffer = CodeBuffer.from_budget(
                self.budget,
                codec.code_shape(self.feature_shape),
                self.policy,
                code_dtype=codec.code_dtype,
                device=self.buffer_device,
                seed=self.seed,
                reserved_nbytes=codec.state_nbytes_for(self.feature_shape),
            )
            if self._pending_begin is not None:
                n_items, classes = self._pending_begin
                self.buffer.begin_experience(n_items=n_items, classes=classes)
                self._pending_begin = None

    def _observe_classes(self, classes: Iterable[int]) -> None:
        s = set(self.seen_classes)
        for c in classes:
            c = int(c)
            if c not in s:
                s.add(c)
                self.seen_classes.append(c)

    def mask(self, logits: Tensor) -> Tensor:
        """Logits with every class not seen so far set to a very negative value."""
        if not self.seen_classes:
            return logits
        keep = torch.zeros(logits.shape[1], dtype=torch.bool, device=logits.device)
        idx = torch.as_tensor([c for c in self.seen_classes if c < logits.shape[1]], dtype=torch.long)
        keep[idx.to(logits.device)] = True
        return logits.masked_fill(~keep, torch.finfo(logits.dtype).min / 4)

    def _trainable_params(self, strategy: Any) -> List[Tensor]:
        ps = [p for p in strategy.model.parameters() if p.requires_grad]
        if self.codec is not None:
            ps += [p for p in self.codec.parameters() if p.requires_grad]
        return ps

    def clamp_gradients(self, strategy: Any) -> None:
        if self.grad_clamp is None:
            return
        for p in self._trainable_params(strategy):
            if p.grad is not None:
                p.grad.data.clamp_(-self.grad_clamp, self.grad_clamp)

    def _codec_trains(self) -> bool:
        return self.codec is not None and not self.freeze_codec and self.codec.learnable

    def _codec_zero_grad(self) -> None:
        if self.codec is not None:
            for p in self.codec.parameters():
                p.grad = None

    def _codec_step(self, strategy: Any) -> None:
        if not self._codec_trains():
            return
        params = [p for p in self.codec.parameters() if p.requires_grad]  # type: ignore[union-attr]
        if not any(p.grad is not None for p in params):
            return
        if self.codec_optimizer is None:
            self.codec_optimizer = _optimizer_like(strategy.optimizer, params, self.codec_lr)
            if self._pending_codec_opt is not None:  # resumed from a checkpoint
                try:
                    self.codec_optimizer.load_state_dict(self._pending_codec_opt)
                except (ValueError, KeyError) as e:
                    raise CheckpointError(
                        f"{type(self).__name__}: the checkpoint's codebook optimiser state does not fit this "
                        f"codebook ({e}); rerun with --restart"
                    ) from None
                self._pending_codec_opt = None
        if self.codec_lr is None:  # follow the strategy's (possibly scheduled) learning rate
            lr = strategy.optimizer.param_groups[0].get("lr")
            for g in self.codec_optimizer.param_groups:
                g["lr"] = lr
        self.codec_optimizer.step()

    def features(self, strategy: Any, x: Tensor) -> Tensor:
        """Trunk features of ``x`` without gradient, trunk in eval mode."""
        model = _splitnet_or_raise(strategy.model, type(self).__name__)
        with torch.no_grad():
            was = model.trunk.training
            model.trunk.eval()
            f = model.trunk(x)
            model.trunk.train(was)
        return f

    def encode(self, feats: Tensor) -> Tensor:
        with torch.no_grad():
            return self.codec.encode(feats.detach())  # type: ignore[union-attr]

    # ------------------------------------------------------------------ overridable pieces
    def replay_classes(self, batch_labels: Tensor) -> List[int]:
        """Seen classes absent from the batch that have stored items (CRUMB's replay classes)."""
        if self.buffer is None or len(self.buffer) == 0:
            return []
        present = set(torch.unique(batch_labels).tolist())
        stored = set(self.buffer.items_per_class())
        return [c for c in self.seen_classes if c not in present and c in stored]

    def sample_replay(self, strategy: Any, batch_labels: Tensor) -> Optional[Tuple[Tensor, Tensor]]:
        """Codes and labels to replay for this step, or None."""
        if self.replay == "none" or self.buffer is None or len(self.buffer) == 0:
            return None
        if self.replay_sampling == "absent_classes":
            classes = self.replay_classes(batch_labels)
            if not classes:
                return None
            rounds = math.ceil(len(batch_labels) / len(classes))
            codes, labels = self.buffer.sample_per_class(classes, rounds, generator=self.generator)
        else:
            n = int(self.replay_mb_size or 0)
            if self.augment and self.mixup_alpha and self.mixup_mode == "halves":
                n *= 2
            codes, labels = self.buffer.sample(n, generator=self.generator)
        if len(labels) == 0:
            return None
        return codes, labels

    def replay_features(self, codes: Tensor, labels: Tensor, device: Any) -> Tuple[Tensor, Tensor, Tensor, float]:
        """Decode (and augment) replayed codes: ``(feats, labels_a, labels_b, lam)``."""
        feats = self.codec.decode(codes.to(device))  # type: ignore[union-attr]
        labels = labels.to(device)
        if self.augment:
            return augment_features(
                feats,
                labels,
                crop=True,
                crop_scale=self.crop_scale,  # type: ignore[arg-type]
                crop_ratio=self.crop_ratio,  # type: ignore[arg-type]
                mixup_alpha=self.mixup_alpha,
                mixup_mode=self.mixup_mode,
                generator=self.generator,
            )
        return feats, labels, labels, 1.0

    def replay_loss(self, strategy: Any, logits: Tensor, labels_a: Tensor, labels_b: Tensor, lam: float) -> Tensor:
        """Loss on replayed items (strategy's criterion, mixup-aware)."""
        return mixup_loss(strategy._criterion, logits, labels_a, labels_b, lam)

    def store_codes(self, codes: Tensor, labels: Tensor) -> None:
        """Offer codes to the buffer (policy decides)."""
        if self.buffer is not None:
            self.buffer.add(codes.detach(), labels.detach())

    def fit_codec(self, strategy: Any, dataset: Any = None) -> None:
        """``fit_codec="first_experience"``: fit the codec on the experience's trunk features.

        ``dataset`` defaults to the experience being trained (the whole origin
        experience in online streams); at most ``fit_max_items`` items are used.
        """
        feats = []
        n = 0
        for x, _ in self._iterate_experience(strategy, dataset):
            f = self.features(strategy, x)
            feats.append(f.cpu())
            n += len(f)
            if self.fit_max_items is not None and n >= self.fit_max_items:
                break
        if not feats:
            return
        f = torch.cat(feats)
        if self.fit_max_items is not None:
            f = f[: self.fit_max_items]
        self._on_feature_shape(strategy, f)
        self.codec.fit(f.to(strategy.device))  # type: ignore[union-attr]

    def _iterate_experience(self, strategy: Any, dataset: Any = None):
        """Yield ``(x, y)`` batches of the current experience's training data in stream order."""
        from torch.utils.data import DataLoader

        ds = dataset if dataset is not None else getattr(strategy, "adapted_dataset", None)
        if ds is None:
            ds = strategy.experience.dataset
        mb = int(getattr(strategy, "eval_mb_size", None) or getattr(strategy, "train_mb_size", 32) or 32)
        loader = DataLoader(ds, batch_size=mb, shuffle=False, num_workers=0)
        for batch in loader:
            yield batch[0].to(strategy.device), batch[1].to(strategy.device)

    def store_experience(self, strategy: Any, dataset: Any = None) -> None:
        """``store="experience"``: encode the experience's data with the final codec and offer the codes.

        When the buffer policy decides from labels alone (CRUMB's class-balanced
        rule: :meth:`ClassBalancedPolicy.select` + :meth:`~ClassBalancedPolicy.plan`)
        and the dataset exposes its ``targets``, the trunk runs only on the items
        that will be stored; otherwise the whole experience is walked.
        """
        from torch.utils.data import Subset

        model = _splitnet_or_raise(strategy.model, type(self).__name__)
        ds = dataset if dataset is not None else getattr(strategy, "adapted_dataset", None)
        if ds is None:
            ds = strategy.experience.dataset
        policy = self.buffer.policy if self.buffer is not None else None
        targets = _dataset_targets(ds)
        planned = (policy is not None and hasattr(policy, "select") and hasattr(policy, "plan")
                   and targets is not None and self.codec is not None and self.codec.is_fitted)
        was = model.training
        model.eval()
        try:
            if planned:
                labels = targets.to(self.buffer.codes.device)  # type: ignore[union-attr]
                chosen = policy.select(labels).nonzero(as_tuple=True)[0]  # type: ignore[union-attr]
                chosen = chosen[policy.plan(self.buffer, labels[chosen])]  # type: ignore[union-attr]
                if len(chosen) == 0:
                    return
                for x, y in self._iterate_experience(strategy, Subset(ds, chosen.tolist())):
                    self.buffer.append(self.encode(self.features(strategy, x)), y)  # type: ignore[union-attr]
                return
            for x, y in self._iterate_experience(strategy, ds):
                f = self.features(strategy, x)
                self._on_feature_shape(strategy, f)
                if not self.codec.is_fitted:  # type: ignore[union-attr]
                    self.codec.fit(f)  # type: ignore[union-attr]
                self.store_codes(self.encode(f), y)
        finally:
            model.train(was)

    # ------------------------------------------------------------------ training hooks
    def _train_hook(self, f: Tensor) -> Tensor:
        strategy = self._strategy
        self._on_feature_shape(strategy, f)
        codec = self.codec
        fd = f.detach()
        if not codec.is_fitted and self.fit_codec_on == "first_batch":  # type: ignore[union-attr]
            codec.fit(fd)  # type: ignore[union-attr]
        self._feats = fd
        need_codes = self.train_path != "direct" or self.store in ("stream", "last_pass")
        self._codes = self.encode(fd) if need_codes and codec.is_fitted else None  # type: ignore[union-attr]
        if self.train_path == "direct" or self._codes is None:
            new = f
        else:
            new = codec.decode(self._codes)  # type: ignore[union-attr]
        if self._joint is not None:
            new = torch.cat([new, self._joint[0].to(new.dtype)], dim=0)
        return new

    def before_training_exp(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        _splitnet_or_raise(strategy.model, type(self).__name__)
        exp = strategy.experience
        # Online streams (split_online_stream) fire this for every mini-experience: the "stream"
        # whose length sets CRUMB's stride is the origin experience, begun once.
        origin = getattr(exp, "origin_experience", None) or exp
        classes = getattr(origin, "classes_in_this_experience", None)
        if classes is None:
            classes = getattr(exp, "classes_in_this_experience", None)
        if classes is not None:
            self._observe_classes(classes)
        if self.codec is not None:
            self._ensure_codec(strategy)
        if (self.codec is None or not self.codec.is_fitted) and self.fit_codec_on == "first_experience":
            self.fit_codec(strategy, dataset=getattr(origin, "dataset", None) if origin is not exp else None)
        key = getattr(origin, "current_experience", None)
        if key is None or key != self._exp_key:
            self._exp_key = key
            ds = getattr(origin, "dataset", None)
            begin = (len(ds) if ds is not None else None, list(classes) if classes is not None else None)
            if self.buffer is not None:
                self.buffer.begin_experience(n_items=begin[0], classes=begin[1])
            else:
                self._pending_begin = begin  # applied when the buffer is allocated
        if self.codec is not None and self.freeze_codec:
            for p in self.codec.parameters():
                p.requires_grad_(False)

    def before_training_iteration(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self._observe_classes(torch.unique(strategy.mb_y).tolist())

    def before_forward(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        model = _splitnet_or_raise(strategy.model, type(self).__name__)
        self._codec_zero_grad()
        self._joint = None
        self._replay_logits = None
        if self.replay == "joint" and self.codec is not None and self.buffer is not None:
            sample = self.sample_replay(strategy, strategy.mb_y)
            if sample is not None:
                self._joint = self.replay_features(sample[0], sample[1], strategy.device)
        self._strategy = strategy
        model.feature_hook = self._train_hook

    def after_forward(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        model = strategy.model
        model.feature_hook = None
        self._strategy = None
        out = strategy.mb_output
        if self._joint is not None:
            b = len(strategy.mb_y)
            self._replay_logits = out[b:]
            out = out[:b]
        if self.mask_logits:
            out = self.mask(out)
            if self._replay_logits is not None:
                self._replay_logits = self.mask(self._replay_logits)
        strategy.mb_output = out

    def before_backward(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        if self.train_path == "both" and self._feats is not None:
            direct = strategy.model.head(self._feats)
            if self.mask_logits:
                direct = self.mask(direct)
            strategy.loss = strategy.loss + strategy._criterion(direct, strategy.mb_y)
        if self._joint is not None and self._replay_logits is not None and len(self._replay_logits):
            _, ya, yb, lam = self._joint
            rl = self.replay_loss(strategy, self._replay_logits, ya, yb, lam)
            r, b = len(self._replay_logits), len(strategy.mb_y)
            if self.replay_weight is None:  # mean over the concatenated batch
                ce_new = strategy._criterion(strategy.mb_output, strategy.mb_y)
                strategy.loss = strategy.loss + (r / (b + r)) * (rl - ce_new)
            else:
                strategy.loss = strategy.loss + self.replay_weight * rl
            self.last_replay_loss = float(rl.detach())
            self.last_replay_size = r

    def after_backward(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self.clamp_gradients(strategy)

    def after_update(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self._codec_step(strategy)
        if self.replay == "separate":
            self.separate_replay_step(strategy)

    def separate_replay_step(self, strategy: Any) -> Optional[float]:
        """One replay step with its own zero_grad / backward / clamp / optimiser step (CRUMB)."""
        if self.codec is None:
            return None
        sample = self.sample_replay(strategy, strategy.mb_y)
        if sample is None:
            self.last_replay_size = 0
            return None
        model = strategy.model
        strategy.optimizer.zero_grad()
        self._codec_zero_grad()
        feats, ya, yb, lam = self.replay_features(sample[0], sample[1], strategy.device)
        logits = model.head(feats)
        if self.mask_logits:
            logits = self.mask(logits)
        loss = self.replay_loss(strategy, logits, ya, yb, lam)
        weight = 1.0 if self.replay_weight is None else float(self.replay_weight)
        (weight * loss).backward()
        self.clamp_gradients(strategy)
        strategy.optimizer.step()
        self._codec_step(strategy)
        strategy.optimizer.zero_grad()
        self._codec_zero_grad()
        self.last_replay_loss = float(loss.detach())
        self.last_replay_size = len(ya)
        self.replay_steps += 1
        return self.last_replay_loss

    def after_training_iteration(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        if getattr(strategy.model, "feature_hook", None) is not None:
            strategy.model.feature_hook = None
        if self.store == "stream" and self._codes is not None and strategy.clock.train_exp_epochs == 0:
            self.store_codes(self._codes, strategy.mb_y)
        if (self.store == "last_pass" and self._codes is not None
                and strategy.clock.train_exp_epochs == strategy.train_epochs - 1):
            self._stage_codes(self._codes, strategy.mb_y)
        self._feats = None
        self._codes = None
        self._joint = None
        self._replay_logits = None

    def after_training_exp(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        if self.store == "experience":
            self.store_experience(strategy)
        elif self.store == "last_pass" and self._staged:
            codes = torch.cat([c for c, _ in self._staged])
            labels = torch.cat([y for _, y in self._staged])
            self._staged = []
            policy = self.buffer.policy  # type: ignore[union-attr]
            (policy.admit if hasattr(policy, "admit") else policy.add)(self.buffer, codes, labels)

    def _stage_codes(self, codes: Tensor, labels: Tensor) -> None:
        """``store="last_pass"``: keep the codes the policy would select, to admit after the experience."""
        if self.buffer is None:
            return
        policy = self.buffer.policy
        keep = policy.select(labels) if hasattr(policy, "select") else torch.ones_like(labels, dtype=torch.bool)
        if bool(keep.any()):
            self._staged.append((codes[keep].detach().to(self.buffer.codes.device),
                                 labels[keep].detach().long().to(self.buffer.codes.device)))

    # ------------------------------------------------------------------ evaluation hooks
    def _eval_hook(self, f: Tensor) -> Tensor:
        self._eval_feats = f.detach()
        if self.eval_path == "reconstructed" and self.codec is not None and self.codec.is_fitted:
            with torch.no_grad():
                return self.codec.reconstruct(f)
        return f

    def before_eval_forward(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        model = strategy.model
        if not hasattr(model, "feature_hook"):
            return
        self._eval_feats = None
        if self.codec is not None:
            self._ensure_codec(strategy)
        model.feature_hook = self._eval_hook

    def after_eval_forward(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        model = strategy.model
        if hasattr(model, "feature_hook"):
            model.feature_hook = None
        if self.mask_eval_logits:
            strategy.mb_output = self.mask(strategy.mb_output)

    def other_path_logits(self, strategy: Any) -> Optional[Tensor]:
        """Eval logits of the path *not* used for evaluation (for :class:`ReconstructedAccuracy`)."""
        if self._eval_feats is None or self.codec is None or not self.codec.is_fitted:
            return None
        with torch.no_grad():
            f = self._eval_feats
            if self.eval_path == "direct":
                f = self.codec.reconstruct(f)
            out = strategy.model.head(f)
        return self.mask(out) if self.mask_eval_logits else out

    def reconstructed_logits(self, strategy: Any) -> Optional[Tensor]:
        """Eval logits of the reconstructed path for the current eval mini-batch."""
        if self.eval_path == "reconstructed":
            return strategy.mb_output
        return self.other_path_logits(strategy)

    # ------------------------------------------------------------------ accounting & state
    def replay_nbytes(self) -> int:
        """Real stored bytes: ``buffer.nbytes()`` (codes + labels tensors) + ``codec.state_nbytes()``."""
        n = self.buffer.nbytes() if self.buffer is not None else 0
        if self.codec is not None:
            n += int(self.codec.state_nbytes())
        return int(n)

    def state_dict(self) -> Dict[str, Any]:
        """Tensors and python primitives only (for ``torch.save`` / ``torch.load(weights_only=True)``)."""
        return {
            "version": 1,
            "codec": {k: v.detach().cpu().clone() for k, v in self.codec.state_dict().items()}
            if self.codec is not None
            else None,
            "buffer": self.buffer.state_dict() if self.buffer is not None else None,
            "feature_shape": list(self.feature_shape) if self.feature_shape is not None else None,
            "seen_classes": [int(c) for c in self.seen_classes],
            "policy": self.policy.state_dict(),
            "generator": self.generator.get_state(),
            "codec_optimizer": self.codec_optimizer.state_dict() if self.codec_optimizer is not None else None,
            "replay_steps": int(self.replay_steps),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping) or "seen_classes" not in state:
            raise CheckpointError(f"not a {type(self).__name__} state (missing 'seen_classes')")
        self.seen_classes = [int(c) for c in state["seen_classes"]]
        fs = state.get("feature_shape")
        self.feature_shape = tuple(int(s) for s in fs) if fs is not None else None  # type: ignore[assignment]
        self.policy.load_state_dict(state.get("policy", {}))
        if state.get("codec") is not None:
            if self.codec is None and self.feature_shape is not None:
                self._pending_codec_state = dict(state["codec"])
                self._ensure_codec(None, self.feature_shape)
            elif self.codec is None:
                self._pending_codec_state = dict(state["codec"])
            else:
                try:
                    self.codec.load_state_dict(state["codec"])
                except RuntimeError as e:
                    raise CheckpointError(f"codec state does not match this plugin's codec: {e}") from None
        if state.get("buffer") is not None:
            self.buffer = CodeBuffer.from_state_dict(state["buffer"], self.policy, device=self.buffer_device)
        else:
            self.buffer = None
        if "generator" in state:
            self.generator.set_state(state["generator"])
        self.replay_steps = int(state.get("replay_steps", 0))
        self._pending_codec_opt = state.get("codec_optimizer")
        self.codec_optimizer = None  # rebuilt (with that state) on the next codec step


def _dataset_targets(ds: Any) -> Optional[Tensor]:
    """A dataset's labels as an int64 tensor without loading its inputs (Avalanche's
    ``targets`` attribute), or None when it has none of the right length."""
    t = getattr(ds, "targets", None)
    if t is None:
        return None
    try:
        t = torch.as_tensor(list(t) if not isinstance(t, Tensor) else t, dtype=torch.long)
    except (TypeError, ValueError, RuntimeError):
        return None
    return t if t.dim() == 1 and len(t) == len(ds) else None


# =====================================================================================
# Metric: accuracy of the other path
# =====================================================================================
def find_latent_replay_plugin(strategy: Any) -> Optional[LatentReplayPlugin]:
    for p in getattr(strategy, "plugins", []) or []:
        if isinstance(p, LatentReplayPlugin):
            return p
    return None


class ReconstructedAccuracy(AccuracyPluginMetric):
    """Accuracy of ``head(decode(encode(trunk(x))))`` at evaluation, per experience or per stream.

    Needs a :class:`LatentReplayPlugin` (CRUMB/REMIND) among the strategy's
    plugins; reports nothing otherwise. Names: ``Top1_RecAcc_Exp`` /
    ``Top1_RecAcc_Stream``. Costs one extra head forward per eval mini-batch
    (the trunk features are captured from the regular eval forward).
    """

    def __init__(self, level: Literal["experience", "stream"] = "experience"):
        super().__init__(reset_at=level, emit_at=level, mode="eval")
        self.level = level

    def update(self, strategy: Any) -> None:
        plugin = find_latent_replay_plugin(strategy)
        if plugin is None:
            return
        logits = plugin.reconstructed_logits(strategy)
        if logits is None:
            return
        self._metric.update(logits, strategy.mb_y)

    def __str__(self) -> str:
        return "Top1_RecAcc_Exp" if self.level == "experience" else "Top1_RecAcc_Stream"


def reconstructed_accuracy_metrics(*, experience: bool = True, stream: bool = True) -> List[Any]:
    """Metrics for ``EvaluationPlugin``: accuracy on the reconstructed path (CRUMB's extra metric)."""
    out = []
    if experience:
        out.append(ReconstructedAccuracy("experience"))
    if stream:
        out.append(ReconstructedAccuracy("stream"))
    return out
