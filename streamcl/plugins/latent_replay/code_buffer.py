"""CodeBuffer: a fixed-capacity store of integer codes and labels in two preallocated tensors."""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

from streamcl.errors import CheckpointError, StreamclError
from streamcl.plugins.latent_replay.budget import LABEL_DTYPE, LABEL_NBYTES, MemorySpec, parse_memory
from streamcl.plugins.latent_replay.policies import BufferPolicy, make_policy

__all__ = ["CodeBuffer"]

_ALLOWED_CODE_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32)


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
        """Bytes reserved: ``codes.nbytes + labels.nbytes`` of the preallocated tensors (the capacity)."""
        return int(self.codes.nbytes + self.labels.nbytes)

    def held_nbytes(self) -> int:
        """Bytes of the items held now (codes + label of each stored item)."""
        per_item = (self.codes.nbytes + self.labels.nbytes) // max(1, self.capacity)
        return int(self._size * per_item)

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
            dtype = _code_dtype(state["code_dtype"])
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


# The code dtypes a checkpoint may name are the ones a buffer accepts, looked up by name in this
# table, never with getattr on saved text.
_CODE_DTYPES = {str(d).replace("torch.", ""): d for d in _ALLOWED_CODE_DTYPES}


def _code_dtype(name: Any) -> torch.dtype:
    try:
        return _CODE_DTYPES[str(name).replace("torch.", "")]
    except KeyError:
        raise CheckpointError(f"replay buffer state names an unknown code dtype {str(name)[:40]!r}") from None
