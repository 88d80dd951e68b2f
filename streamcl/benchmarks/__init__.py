"""Stream benchmarks as Avalanche scenarios.

``toybox``, ``ilab2mlight``, ``core50`` and ``icubworld`` read a folder written by
``streamcl prepare``; ``from_dirmap`` builds the same streams from any dirmap
table; ``synthetic.generate`` writes tiny trees in each native raw layout.
"""

from streamcl.benchmarks.scenarios import (  # noqa: F401  (registers the benchmarks)
    StreamInfo,
    core50,
    from_dirmap,
    icubworld,
    ilab2mlight,
    subset_by_sample_id,
    toybox,
)

__all__ = ["toybox", "ilab2mlight", "core50", "icubworld", "from_dirmap", "subset_by_sample_id", "StreamInfo"]
