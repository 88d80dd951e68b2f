"""Admission/eviction rules of a :class:`~streamcl.plugins.latent_replay.code_buffer.CodeBuffer`.

:class:`ClassBalancedPolicy` is CRUMB's rule, :class:`LargestClassEvictionPolicy` REMIND's.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Protocol, Set, Union

import numpy as np
import torch
from torch import Tensor

from streamcl.errors import ConfigError

__all__ = ["BufferPolicy", "PolicyBuffer", "ClassBalancedPolicy", "LargestClassEvictionPolicy", "make_policy"]

# Below this ratio of drawn to eligible items a draw without replacement rejects repeated i.i.d.
# draws (cost ~ n); at or above it a permutation of the eligible items is cheaper (cost ~ N ~ n).
_PERMUTE_RATIO = 4


def sample_distinct(population: int, n: int, generator: torch.Generator) -> Tensor:
    """``n`` distinct integers of ``[0, population)`` in uniformly random order (int64, CPU).

    Same distribution as ``torch.randperm(population)[:n]`` without its cost when
    ``n << population``: i.i.d. draws are taken in order and a value already drawn is
    rejected and drawn again (each kept value is then uniform over the values not yet kept,
    so the ordered result is a uniform random ``n``-arrangement). The expected number of draws
    is below ``n * 4/3`` because the rejection path only runs while ``4 n < population``;
    otherwise ``randperm`` is used, whose cost ``population <= 4 n`` is also O(n).
    Deterministic given the generator's state.
    """
    if n > population:
        raise ValueError(f"cannot draw {n} distinct values from {population}")
    if n <= 0:
        return torch.empty(0, dtype=torch.long)
    if _PERMUTE_RATIO * n >= population:
        return torch.randperm(population, generator=generator)[:n]
    out = torch.randint(population, (n,), generator=generator).numpy()
    while True:
        _, first = np.unique(out, return_index=True)
        if len(first) < len(out):  # keep first occurrences, in draw order
            out = out[np.sort(first)]
        need = n - len(out)
        if need == 0:
            return torch.from_numpy(out)
        out = np.concatenate([out, torch.randint(population, (need,), generator=generator).numpy()])


class PolicyBuffer(Protocol):
    """What a policy may use of the buffer it rules (:class:`~streamcl.plugins.latent_replay.code_buffer.CodeBuffer`).

    Policies depend on this interface, not on the buffer's module, so the import runs one way
    only: ``code_buffer`` imports ``policies``.
    """

    capacity: int
    generator: torch.Generator

    def __len__(self) -> int: ...

    def class_counts(self, minlength: int = 0) -> Tensor: ...

    def items_per_class(self) -> Dict[int, int]: ...

    def indices_of(self, label: int) -> Tensor: ...

    def count_of(self, label: int) -> int: ...

    def max_class_count(self) -> int: ...

    def largest_class(self, extra: Optional[int] = None) -> int: ...

    def position_of(self, label: int, rank: int) -> int: ...

    def positions_of(self, label: int, ranks: Tensor) -> Tensor: ...

    def append(self, codes: Tensor, labels: Tensor) -> None: ...

    def replace(self, index: int, codes: Tensor, labels: Tensor) -> None: ...

    def remove(self, indices: Tensor) -> None: ...


class BufferPolicy:
    """Admission/eviction rule of a :class:`CodeBuffer`.

    :meth:`add` receives the buffer and a batch of ``codes``/``labels`` (on the
    buffer's device, labels as ``int64``) and must use the buffer's primitives
    (:meth:`CodeBuffer.append`, :meth:`CodeBuffer.remove`, :meth:`CodeBuffer.replace`,
    :meth:`CodeBuffer.count_of`, :meth:`CodeBuffer.positions_of`, ...) and its
    ``generator`` for randomness, never exceeding ``buffer.capacity``. The two built-in
    policies touch only the items they admit or evict (the buffer keeps per-class counts
    and positions), so their cost does not grow with the number of items held.
    State must be python primitives / tensors (see :meth:`state_dict`).
    """

    name = "base"

    def begin_experience(
        self, buffer: PolicyBuffer, *, n_items: Optional[int] = None, classes: Optional[Iterable[int]] = None
    ) -> None:
        """Called by the plugin before an experience is walked/trained (stream length, its classes)."""

    def add(self, buffer: PolicyBuffer, codes: Tensor, labels: Tensor) -> None:  # pragma: no cover
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
        self._seen_set: Set[int] = set()  # mirror of ``seen`` for O(1) membership
        self._counters: Dict[int, int] = {}

    def begin_experience(
        self, buffer: PolicyBuffer, *, n_items: Optional[int] = None, classes: Optional[Iterable[int]] = None
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
        """Append the classes not seen yet to ``seen`` (in the order given)."""
        s = self._seen_set
        if len(s) != len(self.seen):  # ``seen`` was assigned or loaded: resync the mirror
            s = self._seen_set = set(self.seen)
        for c in classes:
            if int(c) not in s:
                s.add(int(c))
                self.seen.append(int(c))

    def quota(self, buffer: PolicyBuffer) -> int:
        return buffer.capacity // len(self.seen) if self.seen else buffer.capacity

    def shrink(self, buffer: PolicyBuffer) -> None:
        """Truncate every stored class to the current quota by random removal.

        Costs O(classes) vectorised to find that nothing is over the quota (the usual case:
        the quota only drops when new classes arrive), then O(items removed).
        """
        q = self.quota(buffer)
        if buffer.max_class_count() <= q:
            return
        counts = buffer.class_counts()
        drop: List[Tensor] = []
        for c in (counts > q).nonzero(as_tuple=True)[0].tolist():
            n = int(counts[c])
            drop.append(buffer.positions_of(c, sample_distinct(n, n - q, buffer.generator)))
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

    def add(self, buffer: PolicyBuffer, codes: Tensor, labels: Tensor) -> None:
        if len(labels) == 0:
            return
        keep = self.select(labels)
        self.admit(buffer, codes[keep], labels[keep])

    def admit(self, buffer: PolicyBuffer, codes: Tensor, labels: Tensor) -> None:
        """Merge already-selected items with the stored ones, truncating each class to its quota."""
        keep = self.plan(buffer, labels)
        if bool(keep.any()):
            buffer.append(codes[keep], labels[keep])

    def plan(self, buffer: PolicyBuffer, labels: Tensor) -> Tensor:
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
        # Per class: merge the m stored items (ranks 0..m-1) with the n offered ones (ranks
        # m..m+n-1) and keep a uniformly random q-subset, i.e. drop a uniformly random
        # (m+n-q)-subset, drawn without touching the survivors (cost ~ items dropped).
        drop_old: List[Tensor] = []
        new_keep = torch.zeros(len(labels), dtype=torch.bool, device=labels.device)
        for c in torch.unique(labels).tolist():
            new_pos = (labels == c).nonzero(as_tuple=True)[0]
            m, n = buffer.count_of(c), len(new_pos)
            if m + n <= q:
                new_keep[new_pos] = True
                continue
            dropped = sample_distinct(m + n, m + n - q, buffer.generator)
            old_dropped = dropped[dropped < m]
            if len(old_dropped):
                drop_old.append(buffer.positions_of(c, old_dropped))
            keep_new = torch.ones(n, dtype=torch.bool)
            keep_new[dropped[dropped >= m] - m] = False
            new_keep[new_pos[keep_new.to(new_pos.device)]] = True
        if drop_old:  # positions were all taken before this one removal
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
        self._seen_set = set(self.seen)
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

    def add(self, buffer: PolicyBuffer, codes: Tensor, labels: Tensor) -> None:
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
        # One item at a time, in stream order. The buffer keeps per-class counts and, per class,
        # its items' positions in ascending order, so each step costs O(1) buffer work plus one
        # vectorised argmax over the per-class counts (no scan of the items). The random draws
        # are the ones of the rule as first written (one ``randint(n_big)`` per item), so the
        # buffer's contents are the same as before the per-class index existed.
        g = buffer.generator
        for j, c in enumerate(labels[i:].tolist(), start=i):
            big = buffer.largest_class(extra=c)  # the newcomer counted; first max = smallest label
            n_big = buffer.count_of(big) + (1 if big == c else 0)
            r = int(torch.randint(n_big, (1,), generator=g).item())
            if big == c and r == n_big - 1:
                continue  # the newcomer itself is evicted
            # rank r among the stored items of `big`, in ascending position order
            buffer.replace(buffer.position_of(big, r), codes[j : j + 1], labels[j : j + 1])


def make_policy(policy: Union[str, BufferPolicy]) -> BufferPolicy:
    """``"class_balanced"`` / ``"largest_class"`` (or a :class:`BufferPolicy` instance) -> policy."""
    if isinstance(policy, BufferPolicy):
        return policy
    if policy in ("class_balanced", "crumb"):
        return ClassBalancedPolicy()
    if policy in ("largest_class", "remind"):
        return LargestClassEvictionPolicy()
    raise ConfigError(f"unknown buffer policy {policy!r}; valid: class_balanced, largest_class", key="policy")

