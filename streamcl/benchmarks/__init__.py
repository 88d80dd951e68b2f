"""Stream benchmarks as Avalanche scenarios.

``toybox``, ``ilab2mlight``, ``core50`` and ``icubworld`` read a folder written by
``streamcl prepare``; ``from_dirmap`` builds the same streams from any dirmap
table (e.g. the original CRUMB CSVs); ``synthetic.generate`` writes tiny trees in
each native raw layout and ``synthetic_scenario`` streams one (the YAML benchmark
``synthetic``). Raw layouts and indexers live in :mod:`streamcl.benchmarks.raw`.

The scenario factories import Avalanche (seconds), so they load on first use:
``import streamcl.benchmarks`` stays cheap for ``streamcl prepare``.
"""

from __future__ import annotations

import importlib
from typing import Any

_SCENARIOS = ("toybox", "ilab2mlight", "core50", "icubworld", "from_dirmap", "subset_by_sample_id", "StreamInfo")
# Class-incremental CIFAR-100 / ImageNet-100 and task-incremental Tiny-ImageNet (streamcl.benchmarks.classic).
_CLASSIC = ("cifar100", "imagenet_subset", "tiny_imagenet", "synthetic_classic", "ClassicInfo")
_LAZY = {**{n: "streamcl.benchmarks.scenarios" for n in _SCENARIOS},
         **{n: "streamcl.benchmarks.classic" for n in _CLASSIC}}
# Exported under another name: `streamcl.benchmarks.synthetic` is the tree generator module.
_RENAMED = {"synthetic_scenario": ("streamcl.benchmarks.scenarios", "synthetic")}

__all__ = list(_SCENARIOS) + list(_CLASSIC) + list(_RENAMED)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _RENAMED:
        module, attr = _RENAMED[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'streamcl.benchmarks' has no attribute {name!r}")
