"""Small helpers shared across streamcl: byte sizes, seeding."""

from __future__ import annotations

import math
import os
import random
import re
import tempfile
from pathlib import Path
from typing import Any, Union

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
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"not a byte size: {_short(value)} (write e.g. 2.26MB, 512KiB or 1000000)")
    if isinstance(value, (int, float)):
        number: float = value
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*([a-zA-Z]*)\s*", value)
        if not m or m.group(2).lower() not in _UNITS:
            raise ValueError(f"not a byte size: {_short(value)} (write e.g. 2.26MB, 512KiB or 1000000)")
        number = float(m.group(1)) * _UNITS[m.group(2).lower()]
    if isinstance(number, float) and not math.isfinite(number):  # .inf, .nan, 1e999MB: int() would raise
        raise ValueError(f"not a finite byte size: {_short(value)} (write e.g. 2.26MB, 512KiB or 1000000)")
    if number < 0:
        raise ValueError(f"negative byte size: {_short(value)}")
    return int(number) if isinstance(value, (int, float)) else int(round(number))


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


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


def config_digest(cfg: Any) -> str:
    """Stable hash of a config: a checkpoint is resumed only by the config that wrote it."""
    import hashlib
    import json

    text = json.dumps(cfg, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def atomic_write_text(path: Union[str, Path], text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and ``os.replace``: readers see old or new, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A temporary name of its own: two processes writing the same file (a cell's config.yaml, written by
    # whichever of its runs starts first) must not rename each other's temporary file away.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    """The process's umask (mkstemp creates 0600 files; results files get the usual permissions)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def remove_temp_files(folder: Union[str, Path]) -> None:
    """Delete the ``*.tmp`` files that :func:`atomic_write_text` leaves when killed mid-write."""
    folder = Path(folder)
    if folder.is_dir():
        for p in folder.glob("*.tmp"):
            if p.is_file():
                p.unlink(missing_ok=True)
