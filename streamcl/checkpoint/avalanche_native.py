"""Avalanche's own checkpoints (``avalanche.checkpointing``), made to work and made atomic.

Avalanche's ``save_checkpoint`` pickles the whole strategy with dill. With the torch and dill
streamcl pins (torch 2.14, dill 0.4.1; dill 0.3.6 to 0.4.0 behave the same) it fails for every
strategy, plain ``Naive`` included::

    _pickle.PicklingError: Can't pickle sentinel: it's not the same object as typing_extensions.sentinel

Cause (upstream, not streamcl's): ``torch/optim/__init__.py`` deletes its submodule names
(``del sgd``, ``del adam`` ...), so dill's ``_locate_function`` cannot find
``torch.optim.sgd.SGD`` through ``torch.optim.sgd`` and pickles the optimiser *class by value*,
dragging in its module's globals, among which an unpicklable ``typing_extensions.sentinel``
(an older ``typing_extensions`` only changes the error, to ``PyCapsule``). And ``torch.save``
has opened the file already: a truncated file is left behind, on which the next run's
``maybe_load_checkpoint`` fails (``PytorchStreamReader failed locating file data.pkl``).

:func:`save_checkpoint` and :func:`maybe_load_checkpoint` are drop-in replacements of
Avalanche's with the same arguments. They pickle with ``dill.settings["byref"] = True`` (classes
by reference, as plain pickle does; restored afterwards), which saves every streamcl method and
resumes it bit-identically; the save writes a temp file next to the target and renames it over
the target only once complete, so a failed save leaves the previous checkpoint (or none), never
a truncated one. A file that cannot be read raises :class:`~streamcl.errors.CheckpointError`
naming it and the fix. What byref means for you: classes are stored by their import path, so a
class defined in a script's ``__main__`` must be defined (importable) when loading too.

These checkpoints run arbitrary code when loaded (``weights_only=False``), as Avalanche's do:
load only your own files. ``streamcl run`` uses streamcl's own format instead (tensors and plain
values, ``weights_only=True``: see :mod:`streamcl.checkpoint`).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Any, Collection, Iterator, Optional, Tuple, TypeVar, Union

from streamcl.checkpoint.base import _first_line
from streamcl.checkpoint.files import remove_stale_temp
from streamcl.errors import CheckpointError

__all__ = ["dill_byref", "maybe_load_checkpoint", "save_checkpoint"]

T = TypeVar("T")
PathLike = Union[str, "os.PathLike[str]"]


@contextlib.contextmanager
def dill_byref() -> Iterator[None]:
    """``dill.settings["byref"] = True`` inside the block, the previous value restored after it."""
    import dill

    old = dill.settings.get("byref", False)
    dill.settings["byref"] = True
    try:
        yield
    finally:
        dill.settings["byref"] = old


def save_checkpoint(strategy: Any, fname: PathLike, exclude: Optional[Collection[str]] = None) -> None:
    """``avalanche.checkpointing.save_checkpoint`` with dill's byref, written atomically.

    Same arguments as Avalanche's (``exclude``: strategy attributes left out). Call it between
    experiences, as Avalanche requires. On any error the previous file at ``fname`` is intact
    (or there is none) and the temp file is removed.
    """
    from avalanche.checkpointing import save_checkpoint as _save

    path = Path(fname)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp(path)  # temp files of a save that was killed
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with dill_byref():
            _save(strategy, tmp, exclude=list(exclude) if exclude is not None else None)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def maybe_load_checkpoint(
    strategy: T, fname: PathLike, map_location: Any = None, unique_objects: Any = None
) -> Tuple[T, int]:
    """``avalanche.checkpointing.maybe_load_checkpoint``: ``(strategy, index of the next experience)``.

    ``(strategy, 0)`` unchanged when ``fname`` does not exist (the first run). A file that is not
    a readable checkpoint (e.g. the truncated file Avalanche's own ``save_checkpoint`` leaves when
    it fails) raises :class:`~streamcl.errors.CheckpointError` naming it, instead of a raw
    ``RuntimeError`` from torch.
    """
    from avalanche.checkpointing import maybe_load_checkpoint as _load

    path = Path(fname)
    remove_stale_temp(path)
    if not path.exists():
        return strategy, 0
    try:
        with dill_byref():
            return _load(strategy, str(path), map_location=map_location, unique_objects=unique_objects)
    except Exception as e:  # torch and dill raise many types for a damaged file
        raise CheckpointError(
            f"{path}: not a readable Avalanche checkpoint ({_first_line(e)}); a save that "
            "failed part-way (avalanche's own save_checkpoint leaves such files) cannot be resumed from: delete "
            "the file to start over, and save with streamcl.checkpoint.save_checkpoint"
        ) from e
