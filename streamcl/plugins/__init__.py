"""Avalanche plugins: compressed latent replay (CRUMB, REMIND) on one shared pipeline, raw-image replay.

``CRUMBPlugin`` and ``REMINDPlugin`` are both :class:`LatentReplayPlugin`
configurations (see :mod:`streamcl.plugins.latent_replay`); they work with
``avalanche.training.Naive`` next to Avalanche's own plugins, on a
:class:`~streamcl.models.SplitNet` or on any model with ``latent_layer="layer4.0"``.
``RawReplayPlugin`` is Avalanche's ``ReplayPlugin`` with its budget in items or bytes.
"""

from streamcl.plugins.crumb import CRUMBPlugin
from streamcl.plugins.latent_replay import (
    BufferPolicy,
    ClassBalancedPolicy,
    CodeBuffer,
    Codec,
    LargestClassEvictionPolicy,
    LatentReplayPlugin,
    LayerCut,
    MemoryBudget,
    ModelCut,
    ReconstructedAccuracy,
    SplitNetCut,
    augment_features,
    parse_memory,
    reconstructed_accuracy_metrics,
)
from streamcl.plugins.raw_replay import RawReplayPlugin
from streamcl.plugins.remind import REMINDPlugin

__all__ = [
    "CRUMBPlugin",
    "REMINDPlugin",
    "RawReplayPlugin",
    "LatentReplayPlugin",
    "CodeBuffer",
    "Codec",
    "BufferPolicy",
    "ClassBalancedPolicy",
    "LargestClassEvictionPolicy",
    "MemoryBudget",
    "parse_memory",
    "augment_features",
    "ModelCut",
    "SplitNetCut",
    "LayerCut",
    "ReconstructedAccuracy",
    "reconstructed_accuracy_metrics",
]
