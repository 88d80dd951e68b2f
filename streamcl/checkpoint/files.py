"""Checkpoint files: atomic save, checked load, removal of temp files a killed save left."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path
from typing import Any, Dict, List

import torch

from streamcl.checkpoint.base import _RESTART, FORMAT, _first_line, _Malformed
from streamcl.checkpoint.rng import check_rng_state
from streamcl.checkpoint.strategy_state import _check_strategy_state
from streamcl.errors import CheckpointError
from streamcl.faults import failpoint


def _temp_pattern(path: Path) -> re.Pattern[str]:
    # What tempfile.mkstemp(prefix=name + ".", suffix=".tmp") creates: name.<random letters/digits/_>.tmp
    return re.compile(re.escape(path.name) + r"\.[A-Za-z0-9_]+\.tmp")


def remove_stale_temp(path: Path) -> List[Path]:
    """Delete temp files a killed :func:`save` of ``path`` left behind (``checkpoint.pt.<random>.tmp``).

    Only regular files whose name is exactly what ``save`` creates for this checkpoint are
    removed; returns them. Call it before a run resumes; ``save`` calls it too.
    """
    path = Path(path)
    pattern = _temp_pattern(path)
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            removed.append(Path(entry.path))
    return removed


def save(path: Path, payload: Dict[str, Any]) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact (and a temp file the next save removes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save({"format": FORMAT, **payload}, tmp)
        failpoint("checkpoint_write")  # tests: a kill here leaves the temp file, the old checkpoint intact
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load(path: Path) -> Dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` and check its shape; any problem -> CheckpointError naming the file.

    Checked here: a mapping of the current format whose ``strategy`` entry has the parts
    :func:`restore_strategy` reads and whose ``rng`` entry is a valid RNG state. The runner
    checks its own entries (rows, counters).
    """
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except Exception as e:  # unpickling errors come in many types
        detail = _first_line(e)
        if "weights_only" in detail or "Weights only" in detail:  # do not echo torch's advice to unpickle it anyway
            detail = f"{type(e).__name__}: holds something other than tensors and plain values"
        raise CheckpointError(f"{path}: not a readable streamcl checkpoint ({detail}); {_RESTART}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or isinstance(payload.get("format"), bool):
        raise CheckpointError(f"{path}: not a streamcl checkpoint of format {FORMAT}; {_RESTART}")
    for key in ("strategy", "rng"):
        if key not in payload:
            raise CheckpointError(f"{path}: has no '{key}' entry (damaged, or written by another streamcl "
                                  f"version); {_RESTART}")
    try:
        _check_strategy_state(payload["strategy"])
    except _Malformed as e:
        raise CheckpointError(f"{path}: {e}; {_RESTART}") from None
    check_rng_state(payload["rng"], path)
    return payload
