"""Small helpers shared across streamcl: byte sizes, seeding."""

from __future__ import annotations

import random
import re
from typing import Union

import numpy as np

_UNITS = {
    "": 1,
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
}


def parse_bytes(value: Union[int, float, str]) -> int:
    """``2.26MB`` -> 2260000, ``64KiB`` -> 65536, ``1024`` -> 1024 (decimal SI and binary IEC units)."""
    if isinstance(value, bool):
        raise ValueError(f"not a byte size: {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"negative byte size: {value!r}")
        return int(value)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"not a byte size: {value!r} (write e.g. 2.26MB, 512KiB or 1000000)")
    return int(round(float(m.group(1)) * _UNITS[m.group(2).lower()]))


def format_bytes(n: Union[int, float]) -> str:
    """Human-readable decimal size: 2255616 -> '2.26 MB'."""
    n = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) RNGs."""
    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
