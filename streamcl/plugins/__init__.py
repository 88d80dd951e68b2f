"""Avalanche plugins: compressed latent replay (CRUMB, REMIND) on one shared pipeline.

``CRUMBPlugin`` and ``REMINDPlugin`` are both :class:`LatentReplayPlugin`
configurations (see :mod:`streamcl.plugins.latent_replay`); they work with
``avalanche.training.Naive`` next to Avalanche's own plugins.
"""

from streamcl.plugins.crumb import CRUMBPlugin
from streamcl.plugins.latent_replay import (
    BufferPolicy,
    ClassBalancedPolicy,
    CodeBuffer,
    Codec,
    LargestClassEvictionPolicy,
    LatentReplayPlugin,
    MemoryBudget,
    ReconstructedAccuracy,
    augment_features,
    parse_memory,
    reconstructed_accuracy_metrics,
)
from streamcl.plugins.remind import REMINDPlugin

__all__ = [
    "CRUMBPlugin",
    "REMINDPlugin",
    "LatentReplayPlugin",
    "CodeBuffer",
    "Codec",
    "BufferPolicy",
    "ClassBalancedPolicy",
    "LargestClassEvictionPolicy",
    "MemoryBudget",
    "parse_memory",
    "augment_features",
    "ReconstructedAccuracy",
    "reconstructed_accuracy_metrics",
]
