"""Python, NumPy, torch and CUDA RNG states: saved, validated on scratch generators, then set."""

from __future__ import annotations

import random
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from streamcl.checkpoint.base import _RESTART, _first_line, _Malformed, _need
from streamcl.checkpoint.decode import RestoreContext, _restore
from streamcl.checkpoint.encode import encode
from streamcl.errors import CheckpointError


def rng_state() -> Dict[str, Any]:
    """Python, NumPy and torch RNG states (CUDA too when present)."""
    state = {
        "python": encode(random.getstate()),
        "numpy": encode(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _checked_rng_state(state: Any) -> Tuple[Any, Any, torch.Tensor, Optional[List[torch.Tensor]]]:
    """Decode and validate every part of an RNG state on scratch generators, touching no global RNG."""
    _need(isinstance(state, dict), "rng", f"is a {type(state).__name__}, not a mapping")
    for key in ("python", "numpy", "torch"):
        _need(key in state, "rng", f"has no '{key}' state")
    ctx = RestoreContext()
    try:
        py = _restore(None, state["python"], ctx, "rng.python")
        _need(isinstance(py, tuple) and len(py) == 3 and isinstance(py[1], tuple), "rng.python",
              "is not a Python random state")
        random.Random().setstate(py)  # validates version, length and ranges
        np_state = _restore(None, state["numpy"], ctx, "rng.numpy")
        _need(isinstance(np_state, tuple) and len(np_state) == 5, "rng.numpy", "is not a NumPy random state")
        np.random.RandomState().set_state(np_state)
        torch_state = state["torch"]
        _need(isinstance(torch_state, torch.Tensor) and torch_state.dtype == torch.uint8, "rng.torch",
              "is not a byte tensor")
        torch.Generator().set_state(torch_state)
    except _Malformed:
        raise
    except Exception as e:  # the generators' own checks raise TypeError, ValueError, RuntimeError ...
        raise _Malformed(f"rng: not a valid random state ({_first_line(e)})") from None
    cuda = state.get("cuda")
    if cuda is not None:
        _need(isinstance(cuda, list) and all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in cuda),
              "rng.cuda", "is not a list of byte tensors")
        if torch.cuda.is_available():
            _need(len(cuda) <= torch.cuda.device_count(), "rng.cuda", "holds more devices than this machine has")
            for i, t in enumerate(cuda):
                _need(t.numel() == torch.cuda.get_rng_state(i).numel(), "rng.cuda", f"device {i} state has "
                      "the wrong size")
    return py, np_state, torch_state, cuda


def check_rng_state(state: Any, where: Any = "checkpoint") -> None:
    """Raise CheckpointError (naming ``where``) unless ``state`` is a complete, valid :func:`rng_state`."""
    try:
        _checked_rng_state(state)
    except _Malformed as e:
        raise CheckpointError(f"{where}: {e}; {_RESTART}") from None


def set_rng_state(state: Dict[str, Any], where: Any = "checkpoint") -> None:
    """Set every RNG from :func:`rng_state`'s output; validated first, so a bad state changes nothing."""
    try:
        py, np_state, torch_state, cuda = _checked_rng_state(state)
    except _Malformed as e:
        raise CheckpointError(f"{where}: {e}; {_RESTART}") from None
    random.setstate(py)
    np.random.set_state(np_state)
    torch.set_rng_state(torch_state)
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
