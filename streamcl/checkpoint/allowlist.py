"""Allow-lists: the exact classes a checkpoint may create, ``defaultdict`` factories and dtypes it may name.

Looked up by exact string, never imported from a name read in a checkpoint.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional, Tuple

import torch

from streamcl.checkpoint.base import _ENCODED_PACKAGES, _need, _qualname

_BUILTIN_FACTORIES: Dict[str, Callable[[], Any]] = {"list": list, "dict": dict, "set": set, "int": int,
                                                    "float": float}

# Every dtype a saved ``torch.dtype`` may name (looked up by exact string, never by getattr).
_DTYPES: Dict[str, torch.dtype] = {
    str(d).replace("torch.", ""): d
    for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128,
              torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool)
}


@dataclass(frozen=True)
class _Maker:
    """How to create one allow-listed class: empty (no ``__init__``), a few defaults, attributes it must get."""

    cls: type
    defaults: Tuple[Tuple[str, Any], ...] = ()
    required: Tuple[str, ...] = ()

    def make(self, attrs: Dict[str, Any], at: str) -> Any:
        missing = [a for a in self.required if a not in attrs]
        _need(not missing, at, f"a {self.cls.__name__} without its {missing}, which the checkpoint could not hold "
                               "(e.g. samples without sample ids): this method cannot resume")
        obj = self.cls.__new__(self.cls)
        obj.__dict__.update(self.defaults)
        return obj


@functools.lru_cache(maxsize=1)
def _creatable() -> Dict[str, _Maker]:
    """Exact classes a checkpoint may create (``"module:qualname"`` -> maker), when a fresh strategy lacks them.

    Only plain state containers that Avalanche builds during training belong here; each is
    created empty and then filled with restored attributes. Written out by hand on purpose:
    no prefix matching, no import of a name read from a checkpoint.
    """
    from avalanche.evaluation.metrics import Accuracy, Mean, Sum
    from avalanche.training.storage_policy import (
        RandomExemplarsSelectionStrategy,
        ReservoirSamplingBuffer,
        _ParametricSingleBuffer,
    )
    from avalanche.training.utils import ParamData

    makers = [
        # Sub-buffers of ExperienceBalancedBuffer / ClassBalancedBuffer / ParametricBuffer (one per group
        # seen); the selection strategy of a parametric group (stateless).
        _Maker(ReservoirSamplingBuffer, required=("_buffer",)),
        _Maker(_ParametricSingleBuffer, (("_curr_strategy", None),), required=("_buffer",)),
        _Maker(RandomExemplarsSelectionStrategy),
        # Per-parameter importances / anchors of EWC, MAS, SI, RWalk. Avalanche always builds them with
        # the default init_function (torch.zeros), which is a function and therefore not saved.
        _Maker(ParamData, (("init_function", torch.zeros),), required=("_data",)),
        # Per-task accumulators of the evaluation metrics (``defaultdict(Mean)``, ``defaultdict(Accuracy)``).
        _Maker(Mean),
        _Maker(Sum),
        _Maker(Accuracy),
    ]
    return {_qualname(m.cls): m for m in makers}


@functools.lru_cache(maxsize=1)
def _factories() -> Dict[str, Callable[[], Any]]:
    """``defaultdict`` factories a checkpoint may name: builtins and the metric accumulators above."""
    from avalanche.evaluation.metrics import Accuracy, Mean, Sum

    out = dict(_BUILTIN_FACTORIES)
    for cls in (Mean, Sum, Accuracy):
        out[_qualname(cls)] = cls
    return out


def _factory_name(factory: Any) -> Optional[str]:
    """How a ``defaultdict`` factory is saved (None: a lambda or local function, the live object's is kept)."""
    if factory in (list, dict, set, int, float):
        return factory.__name__
    if isinstance(factory, type) and factory.__module__.startswith(_ENCODED_PACKAGES):
        return _qualname(factory)
    return None
