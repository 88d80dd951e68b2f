"""Compressed latent replay: ONE pipeline shared by CRUMB and REMIND (they differ by codec and settings).

::

    image -> trunk (frozen) -> feature map (C,H,W) -> codec.encode -> codes -> CodeBuffer
                                                                      | sample
               head (plastic) <- augment (crop/mixup) <- codec.decode <+

One concept per module, each usable on its own:

- :mod:`.budget`: :class:`MemoryBudget` / :func:`parse_memory`, a budget in items or bytes.
- :mod:`.policies`: :class:`BufferPolicy` admission/eviction rules,
  :class:`ClassBalancedPolicy` (CRUMB) and :class:`LargestClassEvictionPolicy` (REMIND).
- :mod:`.code_buffer`: :class:`CodeBuffer`, a preallocated tensor of codes (``uint8``,
  ``int16`` for large codebooks; never ``int64``) plus ``int16`` labels.
- :mod:`.feature_augment`: :func:`augment_features`, vectorised random-resized-crop + mixup
  on feature maps.
- :mod:`.cut`: :class:`ModelCut`, where the model is cut: a
  :class:`~streamcl.models.SplitNet`, or any ``nn.Module`` at ``latent_layer="layer4.0"``.
- :mod:`.passes`: walking an experience's data outside the training loop (codec fitting, storing).
- :mod:`.penalties`: which other plugins' loss terms reach a step on replayed items alone.
- :mod:`.plugin`: :class:`LatentReplayPlugin`, the Avalanche ``SupervisedPlugin`` that wires
  it all into ``avalanche.training.Naive`` (or any ``SupervisedTemplate``); its module
  docstring says how it hooks into Avalanche's iteration.
- :mod:`.metrics`: :class:`ReconstructedAccuracy`, accuracy of the path evaluation does not use.

:class:`Codec` (``encode`` float maps ``(N,C,H,W)`` to compact integer codes, ``decode``
maps them back; an ``nn.Module`` so a learned codebook is a parameter) lives in
:mod:`streamcl.models.codec` and is re-exported here. CRUMB's codec is
:mod:`streamcl.models.codebook`, REMIND's a faiss product quantiser (:mod:`streamcl.models.pq`).
"""

from streamcl.models.codec import Codec, IdentityCodec
from streamcl.plugins.latent_replay.budget import (
    LABEL_DTYPE,
    LABEL_NBYTES,
    MemoryBudget,
    MemorySpec,
    parse_memory,
)
from streamcl.plugins.latent_replay.code_buffer import CodeBuffer
from streamcl.plugins.latent_replay.cut import LayerCut, ModelCut, SplitNetCut, resolve_cut
from streamcl.plugins.latent_replay.feature_augment import (
    augment_features,
    mixup_features,
    mixup_loss,
    random_resized_crop_features,
    resize_crops,
    sample_crop_boxes,
)
from streamcl.plugins.latent_replay.metrics import (
    ReconstructedAccuracy,
    find_latent_replay_plugin,
    reconstructed_accuracy_metrics,
)
from streamcl.plugins.latent_replay.penalties import is_parameter_penalty
from streamcl.plugins.latent_replay.plugin import FeatureShape, LatentReplayPlugin
from streamcl.plugins.latent_replay.policies import (
    BufferPolicy,
    ClassBalancedPolicy,
    LargestClassEvictionPolicy,
    make_policy,
)

__all__ = [
    "Codec",
    "IdentityCodec",
    "LABEL_DTYPE",
    "LABEL_NBYTES",
    "MemoryBudget",
    "MemorySpec",
    "parse_memory",
    "BufferPolicy",
    "ClassBalancedPolicy",
    "LargestClassEvictionPolicy",
    "make_policy",
    "CodeBuffer",
    "augment_features",
    "random_resized_crop_features",
    "sample_crop_boxes",
    "resize_crops",
    "mixup_features",
    "mixup_loss",
    "ModelCut",
    "SplitNetCut",
    "LayerCut",
    "resolve_cut",
    "is_parameter_penalty",
    "FeatureShape",
    "LatentReplayPlugin",
    "ReconstructedAccuracy",
    "reconstructed_accuracy_metrics",
    "find_latent_replay_plugin",
]
