"""streamcl: stream-learning benchmarks and compressed latent replay for Avalanche.

Import the parts you need::

    from streamcl.benchmarks import toybox, core50, from_dirmap
    from streamcl.plugins import CRUMBPlugin, REMINDPlugin
    from streamcl.models import squeezenet_cut

Sub-packages import Avalanche lazily, so ``import streamcl`` itself is cheap.
"""

__version__ = "0.1.0"

# Public names of this package; its API lives in the sub-packages (checked by tests/test_public_api.py).
__all__ = ["__version__"]

import warnings as _warnings

# Avalanche imports qpsolvers for GEM, which warns on import when no QP solver is installed.
# Only GEM needs one (and fails with its own error without it): keep every other run's
# output clean, so a one-line error stays one line.
_warnings.filterwarnings("ignore", message="no QP solver found", category=UserWarning)
