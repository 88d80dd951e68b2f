"""SplitNet: a frozen trunk followed by a plastic head, one convenient shape for latent replay.

``SplitNet(trunk, head)(x) == head(trunk(x))``. Latent-replay plugins
(:class:`streamcl.plugins.CRUMBPlugin`, :class:`streamcl.plugins.REMINDPlugin`)
read ``model.trunk`` and ``model.head`` and may install a *feature hook*
(:meth:`SplitNet.hooked`) that rewrites the trunk's feature map before the head
sees it (e.g. replace it by its compressed reconstruction). The hook is a plain
attribute, not a sub-module: it never appears in ``state_dict()``. The plugins
also take any other ``nn.Module`` with ``latent_layer="layer4.0"`` (the name of
the layer to cut at, see :mod:`streamcl.plugins.latent_replay.cut`); the cut
factories below build SplitNets with the papers' cuts and heads.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Dict, Iterator, Literal, Optional

import torch
from torch import Tensor, nn

FeatureHook = Callable[[Tensor], Tensor]


class SplitNet(nn.Module):
    """A network cut in two: ``trunk`` (feature extractor, frozen by default) and ``head`` (trained).

    :param trunk: maps an input batch to a feature map ``(N, C, H, W)``.
    :param head: maps the feature map to logits ``(N, num_classes)``.
    :param freeze_trunk: when True (default) every trunk parameter gets
        ``requires_grad=False``, the trunk runs under ``torch.no_grad()`` and
        stays in eval mode even when ``.train()`` is called on the SplitNet,
        so BatchNorm running statistics of the trunk never drift.
    :param meta: free-form description of the cut (architecture, cut layer,
        names of the final classifier parameters ...) used by factories and
        plugins (e.g. CRUMB picks its codebook init from ``meta["cut"]``).
    """

    def __init__(
        self,
        trunk: nn.Module,
        head: nn.Module,
        *,
        freeze_trunk: bool = True,
        meta: Optional[Dict[str, Any]] = None,
    ):
        super().__init__()
        self.trunk = trunk
        self.head = head
        self.freeze_trunk = bool(freeze_trunk)
        self.meta: Dict[str, Any] = dict(meta or {})
        # Plain attribute (not a Module): excluded from state_dict and from deepcopy issues.
        self.feature_hook: Optional[FeatureHook] = None
        if self.freeze_trunk:
            for p in self.trunk.parameters():
                p.requires_grad_(False)
            self.trunk.eval()

    # ------------------------------------------------------------------ forward
    def features(self, x: Tensor) -> Tensor:
        """Trunk output ``(N, C, H, W)`` (no gradient when the trunk is frozen)."""
        if self.freeze_trunk:
            with torch.no_grad():
                return self.trunk(x)
        return self.trunk(x)

    def forward(self, x: Tensor) -> Tensor:
        f = self.features(x)
        if self.feature_hook is not None:
            f = self.feature_hook(f)
        return self.head(f)

    def forward_features(self, f: Tensor) -> Tensor:
        """Head output for an already computed (or decoded) feature map."""
        return self.head(f)

    # ------------------------------------------------------------------ modes
    def train(self, mode: bool = True) -> SplitNet:
        super().train(mode)
        if self.freeze_trunk:
            self.trunk.eval()
        return self

    @contextlib.contextmanager
    def hooked(self, hook: Optional[FeatureHook]) -> Iterator[SplitNet]:
        """Context manager: run ``forward`` with ``f = hook(trunk(x))`` in between."""
        prev = self.feature_hook
        self.feature_hook = hook
        try:
            yield self
        finally:
            self.feature_hook = prev

    def __getstate__(self) -> Dict[str, Any]:
        # A hook is a transient callable (often a bound method of a plugin): never copy/pickle it.
        state = self.__dict__.copy()
        state["feature_hook"] = None
        return state

    def extra_repr(self) -> str:
        return f"freeze_trunk={self.freeze_trunk}" + (f", meta={self.meta}" if self.meta else "")


def classifier_prefix(model: nn.Module) -> Optional[str]:
    """State-dict prefix of the final classifier (``meta["classifier_prefix"]`` or the head's last weight)."""
    meta = getattr(model, "meta", None) or {}
    if meta.get("classifier_prefix"):
        return str(meta["classifier_prefix"])
    last = None
    for name, _ in model.named_parameters():
        if name.startswith("head.") and name.endswith("weight"):
            last = name
    return last[: -len("weight")] if last else None


def is_splitnet(model: Any) -> bool:
    """True for a :class:`SplitNet` (or any module exposing ``trunk``, ``head`` and ``feature_hook``)."""
    if isinstance(model, SplitNet):
        return True
    return (
        isinstance(model, nn.Module)
        and isinstance(getattr(model, "trunk", None), nn.Module)
        and isinstance(getattr(model, "head", None), nn.Module)
        and hasattr(model, "feature_hook")
    )


# =====================================================================================
# Cut backbones (registered for the YAML runner; the runner injects num_classes)
# =====================================================================================
from collections import OrderedDict  # noqa: E402

from streamcl.errors import StreamclError  # noqa: E402
from streamcl.models.weights import (  # noqa: E402
    is_splitnet_state,
    load_matching,
    read_state_dict,
    resolve_weights,
    torchvision_pretrained,
)
from streamcl.registry import register_model  # noqa: E402


def _check_num_classes(num_classes: int) -> int:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise StreamclError(f"num_classes must be a positive integer, got {num_classes!r}")
    return num_classes


def _build_from_torchvision(
    arch: str,
    weights: Optional[str],
    *,
    full_classifier_prefix: str,
    split: Callable[[nn.Module], SplitNet],
    builder: Callable[..., nn.Module],
    weights_enum: Any,
    num_classes: Optional[int] = None,
) -> SplitNet:
    """Build a torchvision model, load weights (hub / full-model file / SplitNet file) and split it.

    ``meta["pretrained"]`` records whether the trunk carries trained weights.
    """
    w = resolve_weights(weights)
    if w == "imagenet":
        net = split(torchvision_pretrained(builder, weights_enum, arch))
    else:
        # Random init, sized for num_classes so a file with that many classes keeps its classifier.
        full = builder(weights=None, **({"num_classes": num_classes} if num_classes else {}))
        if w is None:
            net = split(full)
        else:
            state = read_state_dict(w)
            if is_splitnet_state(state):
                net = split(full)
                load_matching(net, state, path=w, optional_prefixes=(net.meta["classifier_prefix"],))
            else:
                load_matching(full, state, path=w, optional_prefixes=(full_classifier_prefix,))
                net = split(full)
    net.meta["pretrained"] = w is not None
    return net


@register_model("squeezenet_cut")
def squeezenet_cut(
    num_classes: int,
    *,
    cut_layer: int = 12,
    weights: Optional[str] = None,
    freeze_trunk: bool = True,
) -> SplitNet:
    """SqueezeNet 1.0 cut for latent replay (CRUMB's backbone).

    Trunk = ``features[:cut_layer]`` (12: through the third max-pool, 512 x 13 x 13
    at 224 x 224; 3: 96 x 54 x 54, the ablation cut). Head = the remaining
    features (Fire9 for cut 12) + the classifier with its conv replaced by a
    3 x 3 conv (padding 1) to ``num_classes``, ReLU, global average pool, flatten.

    :param weights: None (random init), ``"imagenet"`` (torchvision's weights,
        needs the internet or torch's hub cache), or a local state_dict file of
        the full torchvision model or of the SplitNet (the final classifier is
        re-initialised when its shape differs).
    """
    import torchvision.models as tvm

    _check_num_classes(num_classes)
    if not 1 <= int(cut_layer) <= 13:
        raise StreamclError(f"squeezenet_cut: cut_layer must lie in 1..13 (12 = CRUMB default, 3 = ablation), got {cut_layer}")

    def split(full: nn.Module) -> SplitNet:
        feats = full.features
        in_ch = 512
        # channels entering the classifier: output of the last feature block
        classifier = nn.Sequential(
            nn.Dropout(p=0.5),
            nn.Conv2d(in_ch, num_classes, kernel_size=3, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d((1, 1)),
        )
        trunk = nn.Sequential(OrderedDict(features=nn.Sequential(*list(feats.children())[:cut_layer])))
        head = nn.Sequential(
            OrderedDict(
                features=nn.Sequential(*list(feats.children())[cut_layer:]),
                classifier=classifier,
                flatten=nn.Flatten(1),
            )
        )
        return SplitNet(
            trunk,
            head,
            freeze_trunk=freeze_trunk,
            meta={"arch": "squeezenet1_0", "cut_layer": int(cut_layer), "cut": f"squeezenet_cut{int(cut_layer)}",
                  "classifier_prefix": "head.classifier.1.", "input_size": 224},
        )

    return _build_from_torchvision(
        "squeezenet1_0",
        weights,
        full_classifier_prefix="classifier.1.",
        split=split,
        builder=tvm.squeezenet1_0,
        weights_enum=tvm.SqueezeNet1_0_Weights.IMAGENET1K_V1,
    )


@register_model("resnet18_cut")
def resnet18_cut(num_classes: int, *, weights: Optional[str] = None, freeze_trunk: bool = True) -> SplitNet:
    """ResNet-18 cut for latent replay (REMIND's backbone).

    Trunk = stem + layer1..layer3 + ``layer4[0]`` (512 x 7 x 7 at 224 x 224);
    head = ``layer4[1]`` + global average pool + flatten + fc to ``num_classes``.
    ``weights`` as in :func:`squeezenet_cut` (``fc`` re-initialised when its shape differs).
    """
    import torchvision.models as tvm

    _check_num_classes(num_classes)

    def split(full: nn.Module) -> SplitNet:
        trunk = nn.Sequential(
            OrderedDict(
                conv1=full.conv1, bn1=full.bn1, relu=full.relu, maxpool=full.maxpool,
                layer1=full.layer1, layer2=full.layer2, layer3=full.layer3, layer4_0=full.layer4[0],
            )
        )
        fc = full.fc if full.fc.out_features == num_classes else nn.Linear(full.fc.in_features, num_classes)
        head = nn.Sequential(
            OrderedDict(layer4_1=full.layer4[1], avgpool=full.avgpool, flatten=nn.Flatten(1), fc=fc)
        )
        return SplitNet(
            trunk, head, freeze_trunk=freeze_trunk,
            meta={"arch": "resnet18", "cut": "resnet18_layer4.0", "classifier_prefix": "head.fc.", "input_size": 224},
        )

    return _build_from_torchvision(
        "resnet18",
        weights,
        full_classifier_prefix="fc.",
        split=split,
        builder=tvm.resnet18,
        num_classes=num_classes,
        weights_enum=tvm.ResNet18_Weights.IMAGENET1K_V1,
    )


@register_model("mobilenetv2_cut")
def mobilenetv2_cut(num_classes: int, *, weights: Optional[str] = None, freeze_trunk: bool = True) -> SplitNet:
    """MobileNetV2 cut (CRUMB's ablation): trunk ``features[:8]`` (64 x 14 x 14 at 224 x 224).

    Head = ``features[8:]`` + global average pool + flatten + dropout + linear to ``num_classes``.
    ``weights`` as in :func:`squeezenet_cut`.
    """
    import torchvision.models as tvm

    _check_num_classes(num_classes)

    def split(full: nn.Module) -> SplitNet:
        feats = list(full.features.children())
        lin = full.classifier[1]
        if lin.out_features != num_classes:
            lin = nn.Linear(lin.in_features, num_classes)
        trunk = nn.Sequential(OrderedDict(features=nn.Sequential(*feats[:8])))
        head = nn.Sequential(
            OrderedDict(
                features=nn.Sequential(*feats[8:]),
                pool=nn.AdaptiveAvgPool2d((1, 1)),
                flatten=nn.Flatten(1),
                classifier=nn.Sequential(nn.Dropout(p=0.2), lin),
            )
        )
        return SplitNet(
            trunk, head, freeze_trunk=freeze_trunk,
            meta={"arch": "mobilenet_v2", "cut": "mobilenetv2_cut8", "classifier_prefix": "head.classifier.1.",
                  "input_size": 224},
        )

    return _build_from_torchvision(
        "mobilenet_v2",
        weights,
        full_classifier_prefix="classifier.1.",
        split=split,
        builder=tvm.mobilenet_v2,
        num_classes=num_classes,
        weights_enum=tvm.MobileNet_V2_Weights.IMAGENET1K_V1,
    )


def _head_norm(kind: str, channels: int, momentum: Optional[float]) -> nn.Module:
    """The normalisation layer of the small CNN's head (kept under the name ``bn`` for its state_dict keys)."""
    if kind == "batch":
        return nn.BatchNorm2d(channels, momentum=momentum)
    if kind == "group":
        return nn.GroupNorm(math.gcd(8, channels), channels)
    if kind == "none":
        return nn.Identity()
    raise StreamclError(f"small_cnn_cut: head_norm must be batch, group or none, got {kind!r}")


@register_model("small_cnn_cut")
def small_cnn_cut(
    num_classes: int,
    *,
    width: int = 32,
    in_channels: int = 3,
    weights: Optional[str] = None,
    freeze_trunk: bool = True,
    seed: Optional[int] = None,
    head_norm: Literal["batch", "group", "none"] = "batch",
    bn_momentum: Optional[float] = 0.1,
) -> SplitNet:
    """A tiny CNN cut for CPU demos and tests (not a paper model).

    ``head_norm`` is the head's normalisation: ``batch`` (BatchNorm, ``bn_momentum``; None:
    a cumulative average), ``group`` (GroupNorm, 8 groups: no running statistics, so train and
    eval modes agree on class-pure stream batches) or ``none``. ``perf/bench_head_norm.py``
    measures the three on the demo's stream.

    Trunk: two conv3x3-BN-ReLU-maxpool stages -> ``2*width`` x H/4 x W/4
    (64 x 16 x 16 at 64 x 64 with the default width). Head: conv3x3-BN-ReLU,
    global average pool, linear. Randomly initialised (``seed`` makes it
    reproducible) unless ``weights`` names a local SplitNet state_dict file.
    A frozen random trunk still gives usable features for the demo.
    """
    _check_num_classes(num_classes)
    if width < 1:
        raise StreamclError(f"small_cnn_cut: width must be >= 1, got {width}")
    if seed is not None:
        cpu_state = torch.random.get_rng_state()
        torch.manual_seed(int(seed))
    c = 2 * int(width)
    trunk = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            bn1=nn.BatchNorm2d(width),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(width, c, 3, padding=1, bias=False),
            bn2=nn.BatchNorm2d(c),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
        )
    )
    head = nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(c, c, 3, padding=1, bias=False),
            bn=_head_norm(head_norm, c, bn_momentum),
            relu=nn.ReLU(),
            pool=nn.AdaptiveAvgPool2d((1, 1)),
            flatten=nn.Flatten(1),
            fc=nn.Linear(c, num_classes),
        )
    )
    if seed is not None:
        torch.random.set_rng_state(cpu_state)
    net = SplitNet(
        trunk, head, freeze_trunk=freeze_trunk,
        meta={"arch": "small_cnn", "cut": "small_cnn", "classifier_prefix": "head.fc.", "width": int(width)},
    )
    w = resolve_weights(weights)
    if w == "imagenet":
        raise StreamclError("small_cnn_cut: there are no pretrained imagenet weights for the demo CNN; "
                            "use weights: null or a local SplitNet state_dict file")
    if w is not None:
        load_matching(net, read_state_dict(w), path=w, optional_prefixes=("head.fc.",))
    net.meta["pretrained"] = w is not None
    return net
