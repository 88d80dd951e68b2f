"""Admission/eviction rules of a :class:`~streamcl.plugins.latent_replay.code_buffer.CodeBuffer`.

:class:`ClassBalancedPolicy` is CRUMB's rule, :class:`LargestClassEvictionPolicy` REMIND's.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Protocol, Union

import torch
from torch import Tensor

from streamcl.errors import ConfigError

__all__ = ["BufferPolicy", "PolicyBuffer", "ClassBalancedPolicy", "LargestClassEvictionPolicy", "make_policy"]


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

    def append(self, codes: Tensor, labels: Tensor) -> None: ...

    def replace(self, index: int, codes: Tensor, labels: Tensor) -> None: ...

    def remove(self, indices: Tensor) -> None: ...


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
        s = set(self.seen)
        for c in classes:
            if int(c) not in s:
                s.add(int(c))
                self.seen.append(int(c))

    def quota(self, buffer: PolicyBuffer) -> int:
        return buffer.capacity // len(self.seen) if self.seen else buffer.capacity

    def shrink(self, buffer: PolicyBuffer) -> None:
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

