"""Avalanche plugins: compressed latent replay (CRUMB, REMIND) on one shared pipeline.

``CRUMBPlugin`` and ``REMINDPlugin`` are both :class:`LatentReplayPlugin`
configurations (see :mod:`streamcl.plugins.latent_replay`); they work with
``avalanche.training.Naive`` next to Avalanche's own plugins.
"""

from streamcl.plugins.latent_replay import (
    BufferPolicy,
    ClassBalancedPolicy,
    Codec,
    CodeBuffer,
    LargestClassEvictionPolicy,
    LatentReplayPlugin,
    MemoryBudget,
    ReconstructedAccuracy,
    augment_features,
    parse_memory,
    reconstructed_accuracy_metrics,
)

try:
    from streamcl.plugins.crumb import CRUMBPlugin
except ImportError:  # pragma: no cover - transient while crumb.py is being written
    pass

try:
    from streamcl.plugins.remind import REMINDPlugin
except ImportError:  # pragma: no cover - transient while remind.py is being written
    pass

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
