"""Checkpoints that streamcl owns: tensors and plain values only, restored into live objects.

Avalanche's ``save_checkpoint`` pickles the whole strategy with dill, which
breaks with torch 2.14 and can only be read back with ``weights_only=False``
(arbitrary code on load). Instead the objects that carry training state are
encoded as nested containers of tensors and primitives, readable with
``torch.load(weights_only=True)``, and restored INTO a freshly built strategy
of the same config without importing or calling anything a checkpoint names.

Submodules (each imports only those above it):

* :mod:`~streamcl.checkpoint.base`: the format number, markers, ``_Malformed``
  and the error helpers every part shares;
* :mod:`~streamcl.checkpoint.allowlist`: the exact classes a checkpoint may
  create, the ``defaultdict`` factories and dtypes it may name;
* :mod:`~streamcl.checkpoint.encode`: live objects -> tensors and primitives
  (what is saved, and how);
* :mod:`~streamcl.checkpoint.decode`: :class:`RestoreContext`, :func:`restore`
  and one decoder per entry type (the security boundary);
* :mod:`~streamcl.checkpoint.rng`: Python / NumPy / torch / CUDA RNG states;
* :mod:`~streamcl.checkpoint.strategy_state`: :func:`capture_strategy` and
  :func:`restore_strategy`, a whole strategy's state;
* :mod:`~streamcl.checkpoint.files`: atomic :func:`save`, checked :func:`load`,
  :func:`remove_stale_temp`;
* :mod:`~streamcl.checkpoint.coverage`: :data:`RESUME_NOT_TESTED` and
  :func:`warn_unverified`;
* :mod:`~streamcl.checkpoint.avalanche_native`: :func:`save_checkpoint` and
  :func:`maybe_load_checkpoint`, Avalanche's own dill checkpoints made to work with the pinned
  torch and dill, and atomic (for Avalanche users; the runner does not use them).

Anything malformed raises :class:`~streamcl.errors.CheckpointError`, one line
naming the file, the entry at fault and the fix (``--restart``).
"""

from streamcl.checkpoint.avalanche_native import dill_byref, maybe_load_checkpoint, save_checkpoint
from streamcl.checkpoint.base import FORMAT
from streamcl.checkpoint.coverage import RESUME_NOT_TESTED, warn_unverified
from streamcl.checkpoint.decode import RestoreContext, restore
from streamcl.checkpoint.encode import encode
from streamcl.checkpoint.files import load, remove_stale_temp, save
from streamcl.checkpoint.rng import check_rng_state, rng_state, set_rng_state
from streamcl.checkpoint.strategy_state import capture_strategy, encode_object, restore_strategy

__all__ = [
    "FORMAT", "RESUME_NOT_TESTED", "RestoreContext", "capture_strategy", "check_rng_state", "dill_byref",
    "encode", "encode_object", "load", "maybe_load_checkpoint", "remove_stale_temp", "restore",
    "restore_strategy", "rng_state", "save", "save_checkpoint", "set_rng_state", "warn_unverified",
]
