"""Models for latent replay: SplitNet (frozen trunk + plastic head), cut backbones, CRUMB codebook.

- :class:`SplitNet` ``(trunk, head)``: ``forward(x) == head(trunk(x))``, trunk frozen.
- Cut factories (registered model names in experiment YAMLs): :func:`squeezenet_cut`
  (CRUMB), :func:`resnet18_cut` (REMIND), :func:`mobilenetv2_cut` (ablation),
  :func:`small_cnn_cut` (tiny CPU demo/test model).
- Codecs (:class:`Codec` interface): :class:`MemoryBlockCodec` (alias ``CRUMBCodec``),
  CRUMB's learned codebook of memory blocks; :class:`PQCodec`, REMIND's faiss
  product quantiser (faiss imported only when used); :class:`IdentityCodec`.
"""

from streamcl.models.codebook import CRUMBCodec, MemoryBlockCodec
from streamcl.models.codec import Codec, IdentityCodec
from streamcl.models.pq import PQCodec
from streamcl.models.splitnet import (
    SplitNet,
    is_splitnet,
    mobilenetv2_cut,
    resnet18_cut,
    small_cnn_cut,
    squeezenet_cut,
)

__all__ = [
    "SplitNet",
    "is_splitnet",
    "squeezenet_cut",
    "resnet18_cut",
    "mobilenetv2_cut",
    "small_cnn_cut",
    "Codec",
    "IdentityCodec",
    "MemoryBlockCodec",
    "CRUMBCodec",
    "PQCodec",
    # whole-image classifiers with growing heads (lazy: they import Avalanche)
    "GrowingClassifier",
    "GrowingMultiHeadClassifier",
    "IncrementalNet",
    "MultiHeadNet",
    "resnet18",
    "resnet32",
    "alexnet",
    "CifarResNet",
    # DyTox's transformer with task tokens (lazy: it imports Avalanche; factory: streamcl.models.dytox.dytox)
    "DyToxNet",
]

_LAZY = {
    "GrowingClassifier": "streamcl.models.classifiers",
    "GrowingMultiHeadClassifier": "streamcl.models.classifiers",
    "IncrementalNet": "streamcl.models.classifiers",
    "MultiHeadNet": "streamcl.models.classifiers",
    "resnet18": "streamcl.models.classifiers",
    "resnet32": "streamcl.models.classifiers",
    "alexnet": "streamcl.models.classifiers",
    "CifarResNet": "streamcl.models.cifar_resnet",
    "DyToxNet": "streamcl.models.dytox",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'streamcl.models' has no attribute {name!r}")
