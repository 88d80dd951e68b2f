"""Stream benchmarks as Avalanche scenarios.

``toybox``, ``ilab2mlight``, ``core50`` and ``icubworld`` read a folder written by
``streamcl prepare``; ``from_dirmap`` builds the same streams from any dirmap
table (e.g. the original CRUMB CSVs); ``synthetic.generate`` writes tiny trees in
each native raw layout. Raw layouts and indexers live in :mod:`streamcl.benchmarks.raw`.

The scenario factories import Avalanche (seconds), so they load on first use:
``import streamcl.benchmarks`` stays cheap for ``streamcl prepare``.
"""

from __future__ import annotations

import importlib
from typing import Any

_SCENARIOS = ("toybox", "ilab2mlight", "core50", "icubworld", "from_dirmap", "subset_by_sample_id", "StreamInfo")

__all__ = list(_SCENARIOS)


def __getattr__(name: str) -> Any:
    if name in _SCENARIOS:
        return getattr(importlib.import_module("streamcl.benchmarks.scenarios"), name)
    raise AttributeError(f"module 'streamcl.benchmarks' has no attribute {name!r}")
