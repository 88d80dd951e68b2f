"""Checkpoint files: atomic and durable save, checked load, removal of temp files a killed save left.

Memory: :func:`save` hands the payload to ``torch.save``, which writes CPU tensors straight from
their memory (with :func:`~streamcl.checkpoint.capture_strategy`'s live references, a GB replay
buffer is never copied). :func:`load` remembers the tensors it read (weakly): a consumer that may
take one over as its own storage instead of copying it (``CodeBuffer.load_state_dict``) claims it
with :func:`claim_loaded`, once.
"""

from __future__ import annotations

import os
import re
import tempfile
import weakref
from pathlib import Path
from typing import Any, Dict, List

import torch

from streamcl.checkpoint.base import _RESTART, FORMAT, _first_line, _Malformed
from streamcl.checkpoint.encode import whole_storage
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
    """Write atomically and durably: a crash or power loss mid-write leaves the previous checkpoint intact.

    ``torch.save`` to a temp file in the same folder, ``fsync`` it, ``os.replace`` it over ``path``,
    then ``fsync`` the folder (where the platform allows) so the new name survives a power loss too.
    A kill before the replace leaves the old file and a temp file, which the next save (or
    :func:`remove_stale_temp`) deletes.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save({"format": FORMAT, **payload}, tmp)  # by name: torch writes the tensors' memory itself
        _fsync(tmp)
        failpoint("checkpoint_write")  # tests: a kill here leaves the temp file, the old checkpoint intact
        os.replace(tmp, path)
        _fsync(path.parent, directory=True)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _fsync(where: Any, directory: bool = False) -> None:
    """Flush a file's (or a folder's entries') data to the disk; folders only where the OS can open them."""
    try:
        fd = os.open(where, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:
        if directory:  # e.g. Windows: a folder cannot be opened; os.replace is still atomic
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not directory:  # some file systems refuse fsync on a folder: nothing more to do there
            raise
    finally:
        os.close(fd)


# Tensors that load() read from disk, by id (weakly: gone with the payload), not claimed yet.
_LOADED: weakref.WeakValueDictionary[int, torch.Tensor] = weakref.WeakValueDictionary()


def _remember_loaded(payload: Any) -> None:
    """Record the payload's tensors that own all of their storage alone (none shares memory with another)."""
    tensors: List[torch.Tensor] = []
    stack = [payload]
    while stack:
        v = stack.pop()
        if isinstance(v, torch.Tensor):
            tensors.append(v)
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    users: Dict[int, int] = {}
    for t in tensors:
        ptr = t.untyped_storage().data_ptr()
        users[ptr] = users.get(ptr, 0) + 1
    for t in tensors:
        if t.numel() and users[t.untyped_storage().data_ptr()] == 1 and whole_storage(t) and not t.requires_grad:
            _LOADED[id(t)] = t


def claim_loaded(*tensors: torch.Tensor) -> bool:
    """True (once) when every one of ``tensors`` was read by :func:`load` and none was claimed before.

    The caller may then use them as its own storage (no copy); nothing else holds their memory
    but the loaded payload, whose later reader would see the caller's changes. Any other tensor
    (built in memory, a live object's state, a ``copy.deepcopy``, claimed already) gives False:
    copy it.
    """
    if not tensors or not all(_LOADED.get(id(t)) is t for t in tensors):
        return False
    for t in tensors:
        _LOADED.pop(id(t), None)
    return True


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
    _remember_loaded(payload)
    return payload
