"""streamcl: stream-learning benchmarks and compressed latent replay for Avalanche.

Import the parts you need::

    from streamcl.benchmarks import toybox, core50, from_dirmap
    from streamcl.plugins import CRUMBPlugin, REMINDPlugin
    from streamcl.models import squeezenet_cut

Sub-packages import Avalanche lazily, so ``import streamcl`` itself is cheap.
"""

__version__ = "0.1.0"
