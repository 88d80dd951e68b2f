"""CodeBuffer: a fixed-capacity store of integer codes and labels in two preallocated tensors.

Every operation's cost is independent of the number of items held (issue 29): the buffer
keeps, next to the two tensors, a per-class index (:class:`_ClassIndex`: per-class counts and
each class's positions), removes an item by moving the last item into its hole (no
compaction), and draws without replacement by rejecting repeats (no permutation of the whole
buffer). See ``docs/performance.md`` for the figures.
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from streamcl.errors import CheckpointError, StreamclError
from streamcl.plugins.latent_replay.budget import LABEL_DTYPE, LABEL_NBYTES, MemorySpec, parse_memory
from streamcl.plugins.latent_replay.policies import BufferPolicy, make_policy, sample_distinct

__all__ = ["CodeBuffer"]

_ALLOWED_CODE_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32)

# A bulk removal of more than 1/_BULK_REMOVE of the items is done with vectorised moves and an
# index rebuild (O(items), i.e. <= _BULK_REMOVE element operations per removed item) instead of
# one Python-level swap-remove per item.
_BULK_REMOVE = 32


class _ClassIndex:
    """Which buffer positions hold each class: one sorted array of positions per class.

    Data structure (all NumPy, on the CPU whatever the buffer's device):

    - ``cnt[c]``: number of items of class ``c`` held (kept incrementally: ``class_counts``
      never scans the items);
    - ``pos``: one flat ``int32`` array of "slabs". Class ``c`` owns
      ``pos[off[c] : off[c] + cap[c]]``; its first ``cnt[c]`` entries are the buffer positions
      of its items **in ascending order**, the rest is headroom.

    Why sorted: the enumeration "rank r of class c" is then a function of the buffer's
    contents (positions and labels) alone, not of the history of insertions and removals. A
    buffer restored from a checkpoint (which saves codes and labels in position order and
    rebuilds this index) therefore draws exactly what the saved one would have drawn, and the
    rank order is the one the buffer used before this index existed (ascending positions).
    Keeping it sorted costs one ``memmove`` of the class's tail per insertion/removal
    (4 bytes per item of that class, no Python-level work); the common cases (a new largest
    position, removing a class's last position) are O(1).

    Slab growth: a full slab is copied to the end of ``pos`` (bump pointer ``end``) with twice
    the room; when ``pos`` has no room left, every slab is repacked with fresh headroom
    (:meth:`_repack`, O(items), amortised over the growth that made it necessary).

    A uniform draw from class ``c`` is ``pos[off[c] + floor(u * cnt[c])]``, which vectorises
    over classes: CRUMB's one-item-per-class draw is a handful of array operations.
    """

    _MIN_ROOM = 4

    def __init__(self, capacity: int) -> None:
        self.capacity = int(capacity)
        self.cnt = np.zeros(0, dtype=np.int64)
        self.off = np.zeros(0, dtype=np.int64)
        self.cap = np.zeros(0, dtype=np.int64)
        # np.zeros maps untouched pages lazily: a large buffer's index costs memory as it fills
        self.pos = np.zeros(2 * self.capacity + 64, dtype=np.int32)
        self.end = 0
        self.repacks = 0  # full O(items) passes (rebuild or repack), for tests and benchmarks

    # ------------------------------------------------------------------ classes
    def ensure_class(self, c: int) -> None:
        """Make room for label ``c`` in the per-class arrays (labels are int16: at most 32768)."""
        n = len(self.cnt)
        if c < n:
            return
        m = max(c + 1, 2 * n, 16)
        for name in ("cnt", "off", "cap"):
            arr = np.zeros(m, dtype=np.int64)
            arr[:n] = getattr(self, name)
            setattr(self, name, arr)

    def count(self, c: int) -> int:
        return int(self.cnt[c]) if 0 <= c < len(self.cnt) else 0

    # ------------------------------------------------------------------ whole-index passes
    def rebuild(self, labels: np.ndarray) -> None:
        """Index from scratch from the labels of positions ``[0, len(labels))`` (O(items), vectorised)."""
        self.repacks += 1
        lab = labels.astype(np.int64, copy=False)
        if len(lab):
            self.ensure_class(int(lab.max()))
        counts = np.bincount(lab, minlength=len(self.cnt)) if len(lab) else np.zeros(len(self.cnt), np.int64)
        order = np.argsort(lab, kind="stable")  # positions grouped by class, ascending within each
        self._layout(counts)
        starts = np.cumsum(counts) - counts  # where each class begins in `order`
        dest = np.repeat(self.off - starts, counts) + np.arange(len(lab))
        self.pos[dest] = order

    def _layout(self, counts: np.ndarray, grow: Optional[Tuple[int, int]] = None) -> None:
        """New slab offsets/capacities for ``counts`` (headroom ~50 %), ``pos`` sized to fit (no copy)."""
        caps = np.where(counts > 0, counts + np.maximum(self._MIN_ROOM, counts // 2), 0)
        if grow is not None:
            caps[grow[0]] = max(int(caps[grow[0]]), grow[1])
        total = int(caps.sum())
        need = max(2 * self.capacity, 2 * total) + 64
        if len(self.pos) < need or len(self.pos) > 2 * need:
            self.pos = np.zeros(need, dtype=np.int32)
        self.cnt = counts.astype(np.int64)
        self.cap = caps.astype(np.int64)
        self.off = np.cumsum(self.cap) - self.cap
        self.end = total

    def _repack(self, grow: Tuple[int, int]) -> None:
        """Copy every slab into a fresh layout (class ``grow[0]`` gets room for ``grow[1]``)."""
        self.repacks += 1
        counts, old_off, old_pos = self.cnt.copy(), self.off, self.pos
        src = np.repeat(old_off - (np.cumsum(counts) - counts), counts) + np.arange(int(counts.sum()))
        live = old_pos[src]
        self.pos = np.zeros(0, dtype=np.int32)  # let _layout allocate
        self._layout(counts, grow)
        dest = np.repeat(self.off - (np.cumsum(counts) - counts), counts) + np.arange(len(live))
        self.pos[dest] = live

    def _room(self, c: int, need: int) -> None:
        """Make class ``c``'s slab hold at least ``need`` positions (moving it if needed)."""
        if need <= self.cap[c]:
            return
        new_cap = max(need + need // 2, 2 * int(self.cap[c]), 8)  # headroom: amortised O(1) growth
        if self.end + new_cap > len(self.pos):
            self._repack((c, new_cap))
            return
        o, n = int(self.off[c]), int(self.cnt[c])
        self.pos[self.end : self.end + n] = self.pos[o : o + n]
        self.off[c] = self.end
        self.cap[c] = new_cap
        self.end += new_cap

    # ------------------------------------------------------------------ single positions
    def insert(self, c: int, p: int) -> None:
        """Add position ``p`` to class ``c`` (kept sorted)."""
        self.ensure_class(c)
        n = int(self.cnt[c])
        self._room(c, n + 1)
        o = int(self.off[c])
        pos = self.pos
        if n == 0 or pos[o + n - 1] < p:  # a new largest position (every append): O(1)
            pos[o + n] = p
        else:
            k = o + int(np.searchsorted(pos[o : o + n], p))
            pos[k + 1 : o + n + 1] = pos[k : o + n]  # memmove of the tail (NumPy handles the overlap)
            pos[k] = p
        self.cnt[c] = n + 1

    def delete(self, c: int, p: int) -> None:
        """Remove position ``p`` from class ``c``."""
        o, n = int(self.off[c]), int(self.cnt[c])
        pos = self.pos
        if pos[o + n - 1] != p:
            k = o + int(np.searchsorted(pos[o : o + n], p))
            pos[k : o + n - 1] = pos[k + 1 : o + n]
        self.cnt[c] = n - 1

    def append_block(self, labels: np.ndarray, start: int) -> None:
        """Positions ``start, start+1, ...`` (all larger than any held) get ``labels``."""
        if len(labels) == 1:
            self.insert(int(labels[0]), start)
            return
        lab = labels.astype(np.int64, copy=False)
        self.ensure_class(int(lab.max()))
        order = np.argsort(lab, kind="stable")
        classes, first, counts = np.unique(lab[order], return_index=True, return_counts=True)
        for c, i, k in zip(classes.tolist(), first.tolist(), counts.tolist()):
            n = int(self.cnt[c])
            self._room(c, n + k)
            o = int(self.off[c])
            self.pos[o + n : o + n + k] = order[i : i + k] + start  # ascending, after the class's others
            self.cnt[c] = n + k

    # ------------------------------------------------------------------ lookups
    def members(self, c: int) -> np.ndarray:
        """View of class ``c``'s positions, ascending."""
        if not 0 <= c < len(self.cnt):
            return self.pos[:0]
        o = int(self.off[c])
        return self.pos[o : o + int(self.cnt[c])]

    def at(self, classes: np.ndarray, ranks: np.ndarray) -> np.ndarray:
        """Positions of the ``ranks``-th items of ``classes`` (broadcast), as int64."""
        return self.pos[self.off[classes] + ranks].astype(np.int64)


class CodeBuffer:
    """Fixed-capacity store of codes and labels in two preallocated tensors.

    ``codes``: ``[capacity, *code_shape]`` of ``code_dtype`` (``uint8`` default;
    ``int16``/``int32`` allowed for large codebooks; ``int64`` and floats are
    refused). ``labels``: ``[capacity]`` ``int16``. Items ``[0, len)`` are valid
    (positions past ``len`` hold zero codes and label ``-1``). Removing an item moves the
    last item into its place (no compaction, so the survivors' order is not kept).
    Admission/eviction is delegated to ``policy``.

    A per-class index (:class:`_ClassIndex`, rebuilt on load, never saved) keeps each class's
    count and positions, so admission, eviction and draws cost O(1) in the number of items
    held, plus O(items returned); class-wide queries (``class_counts``, ``items_per_class``,
    the largest class) are vectorised O(classes). Memory: 8 bytes per item of capacity for
    the index (plus a 2-byte CPU copy of the labels when the buffer lives on a GPU), not
    counted in :meth:`nbytes` (the replay budget counts what is stored, as the papers do).

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
        self._size = 0
        self._allocate()

    def _allocate(self) -> None:
        """(Re)allocate the two tensors for ``capacity`` / ``code_shape`` / ``code_dtype``, and an empty index."""
        self.codes = torch.zeros((self.capacity, *self.code_shape), dtype=self.code_dtype, device=self.device)
        self.labels = torch.full((self.capacity,), -1, dtype=LABEL_DTYPE, device=self.device)
        # CPU views for O(1) scalar reads/writes (a NumPy element access costs ~0.1 us, a tensor's
        # ~1-3 us). On a GPU the labels get a CPU mirror instead, kept in step by every write.
        self._on_cpu = self.device.type == "cpu"
        self._lab: np.ndarray = (self.labels.numpy() if self._on_cpu
                                 else np.full(self.capacity, -1, dtype=np.int16))
        self._codes_np: Optional[np.ndarray] = self.codes.numpy() if self._on_cpu else None
        self._index = _ClassIndex(self.capacity)
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
        """Bytes reserved: ``codes.nbytes + labels.nbytes`` of the preallocated tensors (the capacity)."""
        return int(self.codes.nbytes + self.labels.nbytes)

    def held_nbytes(self) -> int:
        """Bytes of the items held now (codes + label of each stored item)."""
        per_item = (self.codes.nbytes + self.labels.nbytes) // max(1, self.capacity)
        return int(self._size * per_item)

    def valid_labels(self) -> Tensor:
        return self.labels[: self._size]

    def class_counts(self, minlength: int = 0) -> Tensor:
        """Items per class as an ``int64`` CPU tensor of length ``max(minlength, largest held label + 1)``
        (what ``bincount`` of the held labels gives), from the incremental counts: O(classes)."""
        cnt = self._index.cnt
        nz = np.flatnonzero(cnt)
        n = max(int(minlength), int(nz[-1]) + 1 if len(nz) else 0)
        out = np.zeros(n, dtype=np.int64)
        m = min(n, len(cnt))
        out[:m] = cnt[:m]
        return torch.from_numpy(out)

    def items_per_class(self) -> Dict[int, int]:
        """``{label: items held}`` for the classes holding items (ascending labels): O(classes)."""
        cnt = self._index.cnt
        nz = np.flatnonzero(cnt)
        return dict(zip(nz.tolist(), cnt[nz].tolist()))

    def classes(self) -> List[int]:
        return np.flatnonzero(self._index.cnt).tolist()

    def indices_of(self, label: int) -> Tensor:
        """Positions (on the buffer's device, ascending) of the items of class ``label``: O(its items)."""
        return self._to_device(self._index.members(int(label)).astype(np.int64))

    def count_of(self, label: int) -> int:
        """Number of items of class ``label`` held: O(1)."""
        return self._index.count(int(label))

    def max_class_count(self) -> int:
        """Items of the largest class (0 when empty): one vectorised max over the classes."""
        return int(self._index.cnt.max()) if len(self._index.cnt) else 0

    def largest_class(self, extra: Optional[int] = None) -> int:
        """The class holding the most items, smallest label on ties (-1 when empty).

        ``extra``: count one more item of that class (a newcomer not stored yet). One
        vectorised argmax over the per-class counts (about a microsecond at 1000 classes),
        never a scan of the items.
        """
        idx = self._index
        if extra is None:
            return int(idx.cnt.argmax()) if len(idx.cnt) and idx.cnt.max() > 0 else -1
        c = int(extra)
        idx.ensure_class(c)
        idx.cnt[c] += 1
        try:
            return int(idx.cnt.argmax())  # first max: smallest label on ties
        finally:
            idx.cnt[c] -= 1

    def position_of(self, label: int, rank: int) -> int:
        """Position of the ``rank``-th item (ascending positions) of class ``label``: O(1)."""
        n = self._index.count(int(label))
        if not 0 <= rank < n:
            raise StreamclError(f"class {label} holds {n} items; no item of rank {rank}")
        idx = self._index
        return int(idx.pos[idx.off[int(label)] + int(rank)])

    def positions_of(self, label: int, ranks: Tensor) -> Tensor:
        """Positions (on the buffer's device) of the ``ranks``-th items of class ``label``: O(len(ranks))."""
        r = torch.as_tensor(ranks).cpu().numpy().astype(np.int64, copy=False)
        n = self._index.count(int(label))
        if len(r) and (int(r.min()) < 0 or int(r.max()) >= n):
            raise StreamclError(f"class {label} holds {n} items; ranks out of range")
        return self._to_device(self._index.members(int(label))[r].astype(np.int64))

    def _to_device(self, positions: np.ndarray) -> Tensor:
        t = torch.from_numpy(positions)
        return t if self._on_cpu else t.to(self.device)

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
        """Write items at the end (raises when the capacity would be exceeded): O(items written)."""
        n = len(labels)
        if self._size + n > self.capacity:
            raise StreamclError(f"CodeBuffer overflow: {self._size} + {n} > capacity {self.capacity}")
        if n == 0:
            return
        codes, labels = self._check(codes, labels)
        s = self._size
        self.codes[s : s + n] = codes
        self.labels[s : s + n] = labels.to(LABEL_DTYPE)
        if not self._on_cpu:
            self._lab[s : s + n] = labels.cpu().numpy()
        self._index.append_block(self._lab[s : s + n], s)
        self._size = s + n

    def replace(self, index: int, codes: Tensor, labels: Tensor) -> None:
        """Overwrite the item at ``index`` (in ``[0, len)``) with one new item: O(1)."""
        index = int(index)
        if not 0 <= index < self._size:
            raise StreamclError(f"CodeBuffer.replace: position {index} is not in [0, {self._size})")
        codes, labels = self._check(codes, labels)
        new, old = int(labels[0]), int(self._lab[index])
        if self._codes_np is not None:
            self._codes_np[index] = codes[0].numpy()
        else:
            self.codes[index] = codes[0]
        if new != old:
            self._index.delete(old, index)
            self._index.insert(new, index)
            self._set_label(index, new)

    def remove(self, indices: Tensor) -> None:
        """Drop the items at ``indices`` (duplicates allowed); the last items move into the holes.

        O(items removed): each removal moves the buffer's last item into the hole (swap-remove;
        the survivors' order is not preserved). Removing more than ``1/32`` of the items at once
        is done with vectorised moves and one index rebuild instead.
        """
        idx = np.unique(torch.as_tensor(indices).cpu().numpy().astype(np.int64, copy=False))
        if len(idx) == 0:
            return
        if int(idx[0]) < 0 or int(idx[-1]) >= self._size:
            raise StreamclError(f"CodeBuffer.remove: positions must lie in [0, {self._size})")
        if len(idx) * _BULK_REMOVE <= self._size:
            for p in idx[::-1].tolist():  # descending: the current last item is never one to remove
                self._swap_remove(p)
        else:
            self._bulk_remove(idx)

    def _swap_remove(self, p: int) -> None:
        """Remove position ``p``: the last item moves into it (index updated for both classes)."""
        last = self._size - 1
        lab, index = self._lab, self._index
        index.delete(int(lab[p]), p)
        if p != last:
            moved = int(lab[last])
            index.delete(moved, last)  # `last` is its class's largest position: O(1)
            index.insert(moved, p)
            if self._codes_np is not None:
                self._codes_np[p] = self._codes_np[last]
            else:
                self.codes[p] = self.codes[last]
            self._set_label(p, moved)
        self._clear_slots(last, last + 1)
        self._size = last

    def _bulk_remove(self, idx: np.ndarray) -> None:
        """Remove the sorted distinct positions ``idx``: survivors past the new end fill the holes before it."""
        n_new = self._size - len(idx)
        keep = np.ones(self._size, dtype=bool)
        keep[idx] = False
        holes = idx[idx < n_new]  # removed positions that stay inside [0, n_new)
        movers = np.flatnonzero(keep[n_new:]) + n_new  # survivors beyond it: as many as holes
        if len(holes):
            h, m = torch.from_numpy(holes).to(self.device), torch.from_numpy(movers).to(self.device)
            self.codes[h] = self.codes[m]
            self.labels[h] = self.labels[m]
            if not self._on_cpu:
                self._lab[holes] = self._lab[movers]
        self._clear_slots(n_new, self._size)
        self._size = n_new
        self._index.rebuild(self._lab[:n_new])

    def _set_label(self, p: int, label: int) -> None:
        self._lab[p] = label
        if not self._on_cpu:
            self.labels[p] = label

    def _clear_slots(self, start: int, stop: int) -> None:
        """Positions ``[start, stop)`` back to empty (zero codes, label -1): a restored buffer is identical."""
        if self._codes_np is not None:  # NumPy slices: ~1 us against ~10 us for a tensor's
            self._codes_np[start:stop] = 0
            self._lab[start:stop] = -1
            return
        self.codes[start:stop] = 0
        self.labels[start:stop] = -1
        self._lab[start:stop] = -1

    def clear(self) -> None:
        self._clear_slots(0, self._size)
        self._size = 0
        self._index.rebuild(self._lab[:0])

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

        Cost O(n) (plus O(len(classes))): the eligible items are numbered without being listed
        (all positions, or the classes' ranks one after another in ascending label order) and
        ``n`` distinct numbers are drawn by rejecting repeats (:func:`sample_distinct`), never
        by permuting every eligible item.
        """
        g = generator if generator is not None else self.generator
        n = int(n)
        if n <= 0:
            return self._empty()
        if classes is None:
            pool = self._size
        else:
            cl = np.unique(_as_int64(classes))  # ascending, distinct
            cl = cl[(cl >= 0) & (cl < len(self._index.cnt))]
            counts = self._index.cnt[cl]
            cl, counts = cl[counts > 0], counts[counts > 0]
            pool = int(counts.sum())
        if pool == 0:
            return self._empty()
        if replace or n > pool:
            j = torch.randint(pool, (n,), generator=g)
        else:
            j = sample_distinct(pool, n, g)
        if classes is None:
            return self._gather(j.numpy())
        # number j -> (class k, rank j - items of the classes before k)
        jn = j.numpy()
        ends = np.cumsum(counts)
        k = np.searchsorted(ends, jn, side="right")
        return self._gather(self._index.at(cl[k], jn - (ends[k] - counts[k])))

    def sample_per_class(
        self, classes: Sequence[int], rounds: int, *, generator: Optional[torch.Generator] = None
    ) -> Tuple[Tensor, Tensor]:
        """``rounds`` rounds of one random stored item per class (round-major order), with replacement.

        Classes without stored items are skipped. This is CRUMB's replay draw.

        Vectorised over classes and rounds: rank ``floor(u * count)`` of each class, with ``u``
        uniform in [0, 1) (float64, so the rounding bias is below 2**-50), read from the
        per-class index. Cost O(len(classes) * rounds), independent of the items held.
        """
        g = generator if generator is not None else self.generator
        if rounds <= 0:
            return self._empty()
        cl = _as_int64(classes)
        if len(cl) == 0:
            return self._empty()
        cnt = self._index.cnt
        if int(cl.min()) >= 0 and int(cl.max()) < len(cnt):
            counts = cnt[cl]
        else:  # labels never stored: count 0
            counts = np.zeros(len(cl), dtype=np.int64)
            known = (cl >= 0) & (cl < len(cnt))
            counts[known] = cnt[cl[known]]
        if not counts.all():  # skip classes without stored items
            cl, counts = cl[counts > 0], counts[counts > 0]
            if len(cl) == 0:
                return self._empty()
        u = torch.rand((int(rounds), len(cl)), generator=g, dtype=torch.float64).numpy()
        ranks = np.minimum((u * counts).astype(np.int64), counts - 1)
        return self._gather(self._index.at(cl, ranks).reshape(-1))  # round-major

    def _gather(self, positions: np.ndarray) -> Tuple[Tensor, Tensor]:
        """``(codes, labels int64)`` of the items at ``positions`` (int64 array).

        ``np.take`` / ``index_select`` rather than ``codes[tensor]``: advanced indexing is
        ~6x slower on random rows of a large tensor (0.19 vs 0.03 ms for 1000 rows of 1M).
        """
        if self._codes_np is not None:
            return (torch.from_numpy(self._codes_np.take(positions, axis=0)),
                    torch.from_numpy(self._lab.take(positions).astype(np.int64)))
        pick = torch.from_numpy(positions).to(self.device)
        return self.codes.index_select(0, pick), self.labels.index_select(0, pick).long()

    def _empty(self) -> Tuple[Tensor, Tensor]:
        return (
            torch.empty((0, *self.code_shape), dtype=self.code_dtype, device=self.device),
            torch.empty((0,), dtype=torch.long, device=self.device),
        )

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        """Tensors and python primitives only (loads with ``torch.load(weights_only=True)``).

        A snapshot (the held codes and labels are copied), except inside
        :func:`streamcl.checkpoint.encode.live_tensors` (``capture_strategy``, whose result the
        runner writes to disk at once): there ``codes`` and ``labels`` are the live memory, no
        copy (the buffer itself when full, else a tensor over exactly the held prefix of the
        same memory, so ``torch.save`` writes the held items only). The saved format is the
        same either way.
        """
        from streamcl.checkpoint.encode import references_live_tensors

        n = self._size
        if not references_live_tensors():
            codes, labels = self.codes[:n].cpu(), self.labels[:n].cpu()
            codes = codes.clone() if self._on_cpu else codes  # .cpu() of a device tensor is already a copy
            labels = labels.clone() if self._on_cpu else labels
        elif self._on_cpu:
            full = n == self.capacity
            codes = self.codes if full else torch.from_numpy(self.codes.numpy()[:n])
            labels = self.labels if full else torch.from_numpy(self.labels.numpy()[:n])
        else:  # device buffer: one copy to the host, unavoidable; the labels come from their CPU mirror
            codes, labels = self.codes[:n].cpu(), torch.from_numpy(self._lab[:n])
        return {
            "capacity": self.capacity,
            "code_shape": list(self.code_shape),
            "code_dtype": str(self.code_dtype).replace("torch.", ""),
            "size": n,
            "codes": codes,
            "labels": labels,
            "policy_name": getattr(self.policy, "name", type(self.policy).__name__),
            "policy": self.policy.state_dict(),
            "seed": self.seed,
            "generator": self.generator.get_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        try:
            cap = int(state["capacity"])
            shape = tuple(int(s) for s in state["code_shape"])
            dtype = _code_dtype(state["code_dtype"])
            size = int(state["size"])
            codes, labels = state["codes"], state["labels"]
        except (KeyError, TypeError, AttributeError) as e:
            raise CheckpointError(f"replay buffer state is incomplete or malformed ({e!r})") from None
        if not 0 <= size <= cap or len(codes) != size or len(labels) != size:
            raise CheckpointError(f"replay buffer state holds {len(labels)} labels and {len(codes)} codes "
                                  f"for size {size} (capacity {cap})")
        from streamcl.checkpoint.files import claim_loaded

        # A full buffer read from disk by streamcl.checkpoint.files.load, in exactly the layout of
        # _allocate's tensors, becomes this buffer's storage: no copy, no second buffer in memory.
        # Only tensors that load read and no one adopted before qualify (claim_loaded): a state
        # taken from a live buffer, or loaded twice, is copied, so two buffers never share memory.
        # (The fields set here are _allocate's: keep them in step.)
        if (self.device.type == "cpu" and isinstance(codes, Tensor) and isinstance(labels, Tensor)
                and codes.dtype == dtype and tuple(codes.shape) == (cap, *shape)
                and labels.dtype == LABEL_DTYPE and tuple(labels.shape) == (cap,) and claim_loaded(codes, labels)):
            self.capacity, self.code_shape, self.code_dtype = cap, shape, dtype
            self.codes, self.labels = codes, labels
            self._on_cpu = True
            self._lab = labels.numpy()
            self._codes_np = codes.numpy()
            self._index = _ClassIndex(cap)
        else:
            if cap != self.capacity or shape != self.code_shape or dtype != self.code_dtype:
                self.capacity, self.code_shape, self.code_dtype = cap, shape, dtype
                self._allocate()
            else:
                self._clear_slots(0, self._size)
            self.codes[:size] = codes.to(self.device, dtype)
            self.labels[:size] = labels.to(self.device, LABEL_DTYPE)
            if not self._on_cpu:
                self._lab[:size] = labels.cpu().numpy()
        if size and (int(self._lab[:size].min()) < 0):
            raise CheckpointError("replay buffer state holds negative labels")
        self._size = size
        self._index.rebuild(self._lab[:size])  # the index is derived data: rebuilt, never saved
        self.policy.load_state_dict(state.get("policy", {}))
        self.seed = int(state.get("seed", self.seed))
        if "generator" in state:
            self.generator.set_state(state["generator"])

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], policy: Union[str, BufferPolicy, None] = None,
                        *, device: Union[str, torch.device] = "cpu") -> CodeBuffer:
        """A buffer holding ``state``. Built empty (capacity 0) first, so that loading allocates the
        buffer once, or adopts the loaded tensors (see :meth:`load_state_dict`)."""
        buf = cls(
            0,
            tuple(state["code_shape"]),
            policy if policy is not None else str(state.get("policy_name", "class_balanced")),
            code_dtype=_code_dtype(state["code_dtype"]),
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


def _as_int64(values: Union[Iterable[int], Tensor, np.ndarray]) -> np.ndarray:
    """Labels given as a list, tuple, range, array or tensor -> 1-D ``int64`` array (order kept)."""
    if isinstance(values, Tensor):
        return values.detach().cpu().numpy().astype(np.int64).reshape(-1)
    if isinstance(values, np.ndarray):
        return values.astype(np.int64, copy=False).reshape(-1)
    try:
        if isinstance(values, (list, tuple)):  # fromiter: ~13 ns per Python int, the cheapest
            return np.fromiter(values, dtype=np.int64, count=len(values))
        return np.asarray(list(values), dtype=np.int64).reshape(-1)
    except (TypeError, ValueError):
        return np.asarray([int(v) for v in values], dtype=np.int64)


# The code dtypes a checkpoint may name are the ones a buffer accepts, looked up by name in this
# table, never with getattr on saved text.
_CODE_DTYPES = {str(d).replace("torch.", ""): d for d in _ALLOWED_CODE_DTYPES}


def _code_dtype(name: Any) -> torch.dtype:
    try:
        return _CODE_DTYPES[str(name).replace("torch.", "")]
    except KeyError:
        raise CheckpointError(f"replay buffer state names an unknown code dtype {str(name)[:40]!r}") from None
