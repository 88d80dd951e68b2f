"""Replay budgets: a number of items or a number of bytes (``417``, ``{bytes: 2.26MB}``)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Union

import torch

from streamcl.errors import ConfigError
from streamcl.utils import parse_bytes

__all__ = ["LABEL_DTYPE", "LABEL_NBYTES", "MemoryBudget", "MemorySpec", "parse_memory"]

LABEL_DTYPE = torch.int16
LABEL_NBYTES = 2
MAX_MEMORY_ITEMS = 2**31 - 1  # (buffer positions are indexed with int32-range tensors)
MAX_MEMORY_BYTES = 2**40


@dataclass(frozen=True)
class MemoryBudget:
    """A replay budget: a number of items, or a number of bytes (codes + labels of each item)."""

    items: Optional[int] = None
    bytes: Optional[int] = None

    def __post_init__(self) -> None:
        if (self.items is None) == (self.bytes is None):
            raise ConfigError("give exactly one of memory.items or memory.bytes", key="memory")
        for key, value, limit, unit in (("items", self.items, MAX_MEMORY_ITEMS, "items"),
                                        ("bytes", self.bytes, MAX_MEMORY_BYTES, "bytes (1 TiB)")):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise ConfigError(f"memory.{key} must be an integer, got {value!r}", key=f"memory.{key}")
            if value < 0:
                raise ConfigError(f"memory.{key} must be >= 0, got {value}", key=f"memory.{key}")
            if value > limit:  # the buffer preallocates its capacity: this would fail only when built
                raise ConfigError(f"memory.{key}={value} is more than {limit} {unit}, beyond any machine's "
                                  "memory (a typo?); give a smaller budget", key=f"memory.{key}")

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
        items = (int(self.bytes) - int(reserved_nbytes)) // int(item_nbytes)  # type: ignore[arg-type]
        if items < 1:
            raise ConfigError(
                f"memory.bytes={self.bytes} holds no item: one takes {item_nbytes} bytes"
                + (f" after the codec's own {reserved_nbytes}" if reserved_nbytes else "")
                + "; raise the budget or give memory.items",
                key="memory.bytes",
            )
        return items

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
    if isinstance(memory, float) and math.isfinite(memory) and memory.is_integer():
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
            if isinstance(v, bool) or not isinstance(v, (int, float)) or (
                isinstance(v, float) and not (math.isfinite(v) and v.is_integer())
            ):
                raise ConfigError(f"memory.items must be an integer, got {v!r}", key="memory.items")
            return MemoryBudget(items=int(v))
        if keys == {"bytes"}:
            try:
                return MemoryBudget(bytes=parse_bytes(memory["bytes"]))
            except ValueError as e:
                raise ConfigError(f"memory.bytes: {e}", key="memory.bytes") from None
        shown = sorted(repr(k)[:40] for k in keys)
        raise ConfigError(f"unknown keys {', '.join(shown) or 'none'}; valid keys: items | bytes (one of them); "
                          f"{hint}", key="memory")
    shown = repr(memory) if len(repr(memory)) <= 60 else repr(memory)[:57] + "..."
    raise ConfigError(f"not a replay budget: {shown}; {hint}", key="memory")

