"""Whole-image classifiers with growing heads: timm ResNet-18, CIFAR ResNet-32, an AlexNet for MAS.

Class-incremental methods (WA, iCaRL-style replay) need a classifier that gets
new output rows as classes arrive; task-incremental ones (the MAS experiment)
need one head per task. Both come from Avalanche's dynamic modules, adapted so
that a streamcl checkpoint loads at any grown size:

- :class:`GrowingClassifier`: Avalanche's ``IncrementalClassifier`` (rows added
  per experience, unseen classes masked) with an optional bias and a
  ``load_state_dict`` that first resizes itself to the saved shape.
- :class:`GrowingMultiHeadClassifier`: Avalanche's ``MultiHeadClassifier`` (one
  growing head per task label) that re-creates saved heads on load.
- :class:`IncrementalNet` (``backbone`` -> ``classifier``) and
  :class:`MultiHeadNet` (a ``MultiTaskModule``: ``forward(x, task_labels)``),
  both with ``features(x)`` for herding and feature-space methods.

Registered factories (YAML ``model: {name: ...}``; the runner passes
``num_classes``): ``resnet18`` (``timm.create_model``; ``stem: cifar`` swaps
the 7 x 7 stem and max-pool for a 3 x 3 stride-1 conv, the CIFAR variant used
by the WA/DER reference runs), ``resnet32`` (:mod:`streamcl.models.cifar_resnet`,
timm has no CIFAR ResNet) and ``alexnet`` (torchvision's AlexNet layout, so a
local torchvision AlexNet state_dict loads, with the first
``num_freeze_layers`` weight layers frozen). ``head`` picks ``incremental``
(grows per experience), ``multi`` (one head per task) or ``fixed``
(``num_classes`` rows from the start, nothing masked).
"""

from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional

import torch
from avalanche.models import IncrementalClassifier, MultiHeadClassifier
from avalanche.models.dynamic_modules import MultiTaskModule
from torch import Tensor, nn

from streamcl.errors import StreamclError
from streamcl.models.cifar_resnet import CifarResNet
from streamcl.models.weights import load_matching, read_state_dict, resolve_weights
from streamcl.registry import register_model

__all__ = [
    "GrowingClassifier",
    "GrowingMultiHeadClassifier",
    "IncrementalNet",
    "MultiHeadNet",
    "AlexNetBackbone",
    "classifier_layer",
    "make_head",
    "resnet18",
    "resnet32",
    "cifar_resnet",
    "alexnet",
]

HeadKind = Literal["incremental", "multi", "fixed"]


class GrowingClassifier(IncrementalClassifier):
    """Avalanche's ``IncrementalClassifier`` with an optional bias, loadable at any grown size.

    Rows are added by :meth:`adaptation` up to the largest class id of each
    training experience; logits of classes not trained yet are masked to
    ``mask_value`` (``masking=True``). ``load_state_dict`` resizes the layer (and
    the mask) to the saved shape first, so a checkpoint written after k
    experiences restores into a freshly built model.
    """

    def __init__(
        self,
        in_features: int,
        initial_out_features: int = 2,
        *,
        bias: bool = True,
        masking: bool = True,
        mask_value: float = -1000,
        auto_adapt: bool = True,
    ):
        super().__init__(in_features, initial_out_features, masking=masking, mask_value=mask_value,
                         auto_adapt=auto_adapt)
        self.bias = bool(bias)
        if not self.bias:
            self.classifier = nn.Linear(in_features, initial_out_features, bias=False)

    @property
    def weight(self) -> Tensor:
        """The ``(n_classes, in_features)`` weight rows."""
        return self.classifier.weight

    @torch.no_grad()
    def _resize(self, n_out: int) -> None:
        """Grow (or shrink, when loading) to ``n_out`` rows, keeping the existing rows and mask."""
        old = self.classifier
        if n_out == old.out_features:
            return
        device = old.weight.device
        new = nn.Linear(old.in_features, n_out, bias=self.bias).to(device)
        k = min(n_out, old.out_features)
        new.weight[:k] = old.weight[:k]
        if self.bias:
            new.bias[:k] = old.bias[:k]
        self.classifier = new
        au = torch.zeros(n_out, dtype=torch.int8, device=self.active_units.device)
        au[: min(n_out, self.active_units.shape[0])] = self.active_units[: min(n_out, self.active_units.shape[0])]
        self.active_units = au

    @torch.no_grad()
    def adaptation(self, experience: Any) -> None:
        """Add rows up to ``max(classes_in_this_experience) + 1`` and unmask the trained classes."""
        curr = list(experience.classes_in_this_experience)
        self._resize(max(self.classifier.out_features, max(curr) + 1))
        if self.masking and self.training:
            self.active_units[curr] = 1

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        w = state_dict.get(prefix + "classifier.weight")
        if w is not None and w.shape[0] != self.classifier.out_features:
            _resize_linear_in_place(self.classifier, int(w.shape[0]))
            self.active_units = torch.zeros(int(w.shape[0]), dtype=torch.int8, device=self.active_units.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


@torch.no_grad()
def _resize_linear_in_place(layer: nn.Linear, n_out: int) -> None:
    """Give ``layer`` ``n_out`` rows keeping its Parameter objects (values are loaded right after).

    A checkpoint is loaded into a freshly built strategy whose optimiser already holds the
    model's parameters: replacing them (as growing does) would leave stale entries in it.
    """
    layer.weight.data = layer.weight.new_zeros(n_out, layer.in_features)
    if layer.bias is not None:
        layer.bias.data = layer.bias.new_zeros(n_out)
    layer.out_features = n_out


class _SortedClasses:
    """An experience whose ``classes_in_this_experience`` is a sorted list (Avalanche's multi-head code indexes
    tensors with it, and streams built with ``with_classes_timeline`` give a set)."""

    def __init__(self, experience: Any):
        self._experience = experience
        self.classes_in_this_experience = sorted(int(c) for c in experience.classes_in_this_experience)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._experience, name)


class GrowingMultiHeadClassifier(MultiHeadClassifier):
    """Avalanche's ``MultiHeadClassifier`` whose ``load_state_dict`` re-creates the saved heads (any size)."""

    def adaptation(self, experience: Any) -> None:
        """Avalanche's head creation/expansion, with the experience's classes as a sorted list."""
        super().adaptation(_SortedClasses(experience))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        head_prefix = prefix + "classifiers."
        for key, value in state_dict.items():
            if not (key.startswith(head_prefix) and key.endswith(".classifier.weight")):
                continue
            tid = key[len(head_prefix): -len(".classifier.weight")]
            if "." in tid:
                continue
            n_out = int(value.shape[0])
            if tid not in self.classifiers:
                head = IncrementalClassifier(self.in_features, n_out, masking=False, auto_adapt=False)
                self.classifiers[tid] = head.to(next(self.parameters()).device)
            head = self.classifiers[tid]
            if head.classifier.out_features != n_out:
                _resize_linear_in_place(head.classifier, n_out)
            head_au = state_dict.get(f"{head_prefix}{tid}.active_units")
            if head_au is not None and head.active_units.shape != head_au.shape:
                head.active_units = torch.zeros_like(head_au, device=head.active_units.device)
            au_key = f"active_units_T{tid}"
            saved_au = state_dict.get(prefix + au_key)
            if saved_au is not None and (au_key not in self._buffers or self._buffers[au_key].shape != saved_au.shape):
                self.register_buffer(au_key, torch.zeros_like(saved_au))
            if tid.isdigit():
                self.known_train_tasks_labels.add(int(tid))
            self.max_class_label = max(self.max_class_label, n_out)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)


def classifier_layer(model: nn.Module) -> nn.Linear:
    """The final ``nn.Linear`` of a single-head model (``model.classifier`` or the last Linear in it)."""
    head = getattr(model, "classifier", None)
    if isinstance(head, IncrementalClassifier):  # GrowingClassifier included
        return head.classifier
    if isinstance(head, nn.Linear):
        return head
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    if last is None:
        raise ValueError(f"{type(model).__name__} has no nn.Linear classifier")
    return last


class IncrementalNet(nn.Module):
    """``classifier(backbone(x))``: a feature extractor followed by a (growing) linear classifier.

    :param backbone: maps images to ``(N, num_features)`` features.
    :param classifier: a :class:`GrowingClassifier` or an ``nn.Linear``.
    """

    def __init__(self, backbone: nn.Module, classifier: nn.Module, *, meta: Optional[Dict[str, Any]] = None):
        super().__init__()
        self.backbone = backbone
        self.classifier = classifier
        self.meta: Dict[str, Any] = dict(meta or {})

    def features(self, x: Tensor) -> Tensor:
        """Backbone features ``(N, num_features)`` (what herding and WA's memory use)."""
        return self.backbone(x)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.backbone(x))


class MultiHeadNet(MultiTaskModule):
    """Backbone + :class:`GrowingMultiHeadClassifier`: ``forward(x, task_labels)`` picks each sample's head."""

    def __init__(self, backbone: nn.Module, in_features: int, *, meta: Optional[Dict[str, Any]] = None):
        super().__init__()
        self.backbone = backbone
        self.classifier = GrowingMultiHeadClassifier(in_features)
        self.meta: Dict[str, Any] = dict(meta or {})

    def features(self, x: Tensor) -> Tensor:
        return self.backbone(x)

    def forward_single_task(self, x: Tensor, task_label: int) -> Tensor:
        return self.classifier.forward_single_task(self.backbone(x), task_label)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        heads = {k[len(prefix + "classifier.classifiers."):].split(".")[0]
                 for k in state_dict if k.startswith(prefix + "classifier.classifiers.")}
        self.known_train_tasks_labels |= {int(t) for t in heads if t.isdigit()}
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def forward(self, x: Tensor, task_labels: Any) -> Tensor:
        # The heads may differ in size across tasks: size the output by the largest one.
        self.max_class_label = max(self.max_class_label, self.classifier.max_class_label)
        return super().forward(x, task_labels)


def make_head(in_features: int, num_classes: int, head: HeadKind, *, bias: bool = True) -> nn.Module:
    """The classifier for ``head``: growing (``incremental``), one per task (``multi``) or ``fixed``."""
    if head == "incremental":
        return GrowingClassifier(in_features, 2, bias=bias)
    if head == "fixed":
        return nn.Linear(in_features, num_classes, bias=bias)
    raise ValueError(f"unknown head {head!r}; choose incremental, multi or fixed")


def _wrap(backbone: nn.Module, in_features: int, num_classes: int, head: HeadKind, bias: bool,
          meta: Dict[str, Any]) -> nn.Module:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise StreamclError(f"num_classes must be a positive integer, got {num_classes!r}")
    if head == "multi":
        if not bias:
            raise StreamclError("head: multi uses Avalanche's MultiHeadClassifier heads, which have a bias; "
                                "remove bias: false or use head: incremental")
        return MultiHeadNet(backbone, in_features, meta=meta)
    return IncrementalNet(backbone, make_head(in_features, num_classes, head, bias=bias), meta=meta)


def _backbone_state(path: str, drop_prefixes: tuple) -> Dict[str, Tensor]:
    """A local state_dict for a backbone: ``backbone.`` prefix stripped, classifier keys dropped."""
    state = read_state_dict(path)
    if state and all(k.startswith("backbone.") for k in state if not k.startswith("classifier.")):
        state = {k[len("backbone."):]: v for k, v in state.items() if k.startswith("backbone.")}
    return {k: v for k, v in state.items() if not k.startswith(drop_prefixes)}


def _load_weights(backbone: nn.Module, weights: Optional[str], drop_prefixes: tuple, arch: str) -> bool:
    w = resolve_weights(weights)
    if w is None:
        return False
    if w == "imagenet":
        raise StreamclError(
            f"weights: imagenet: pretrained {arch} weights come from a hub this machine may not reach; "
            f"save them on a connected machine (torch.save(model.state_dict(), 'file.pth')) and pass "
            "weights: /path/to/file.pth"
        )
    load_matching(backbone, _backbone_state(w, drop_prefixes), path=w)
    return True


@register_model("resnet18")
def resnet18(
    num_classes: int,
    *,
    head: HeadKind = "incremental",
    stem: Literal["imagenet", "cifar"] = "imagenet",
    bias: bool = True,
    weights: Optional[str] = None,
) -> nn.Module:
    """timm ResNet-18 (512-d features) with a growing, per-task or fixed linear head.

    :param stem: ``imagenet`` (7 x 7 stride-2 conv + max-pool, for 224 px) or
        ``cifar`` (3 x 3 stride-1 conv, no max-pool, for 32 px inputs).
    :param weights: None (random init) or a local state_dict file of a timm /
        torchvision ResNet-18 (its ``fc`` is dropped) or of this model.
    """
    import timm

    backbone = timm.create_model("resnet18", pretrained=False, num_classes=0)
    if stem == "cifar":
        backbone.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        nn.init.kaiming_normal_(backbone.conv1.weight, mode="fan_out", nonlinearity="relu")
        backbone.maxpool = nn.Identity()
    pretrained = _load_weights(backbone, weights, ("fc.",), "resnet18")
    meta = {"arch": "resnet18", "stem": stem, "head": head, "pretrained": pretrained}
    return _wrap(backbone, int(backbone.num_features), num_classes, head, bias, meta)


@register_model("cifar_resnet")
def cifar_resnet(
    num_classes: int,
    *,
    depth: int = 32,
    width: int = 1,
    head: HeadKind = "incremental",
    bias: bool = True,
    weights: Optional[str] = None,
) -> nn.Module:
    """CIFAR ResNet of any depth 6n + 2 (8, 14, 20, 32 ...): ``depth: 8`` is a fast CPU stand-in for ResNet-32.

    Same stem, stages and head as :func:`resnet32` (``depth: 32``).
    """
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 8 or (depth - 2) % 6:
        raise StreamclError(f"depth must be 6n + 2 (8, 14, 20, 32, 44, 56 ...), got {depth!r}")
    backbone = CifarResNet(depth=depth, width=width)
    pretrained = _load_weights(backbone, weights, ("fc.", "linear.", "classifier."), f"resnet{depth}")
    meta = {"arch": f"resnet{depth}", "head": head, "pretrained": pretrained}
    return _wrap(backbone, backbone.num_features, num_classes, head, bias, meta)


@register_model("resnet32")
def resnet32(
    num_classes: int,
    *,
    head: HeadKind = "incremental",
    width: int = 1,
    bias: bool = True,
    weights: Optional[str] = None,
) -> nn.Module:
    """CIFAR ResNet-32 (3 stages x 5 basic blocks, 16/32/64 channels, 64-d features) with a linear head.

    :param width: channel multiplier (1 = the paper's network, ~0.46 M parameters).
    :param weights: None or a local state_dict file of this model or its backbone.
    """
    return cifar_resnet(num_classes, depth=32, width=width, head=head, bias=bias, weights=weights)


class AlexNetBackbone(nn.Module):
    """AlexNet without its last layer: 5 convs, 6 x 6 adaptive pool, two dropout-FC-ReLU layers.

    With ``width=1`` the parameter names equal torchvision's ``alexnet``
    (``features.0`` ... ``classifier.4``), so its state_dict loads (the final
    ``classifier.6`` is dropped). ``width`` scales every layer (small CPU
    versions for tests). Inputs need at least 63 x 63 pixels.
    """

    WEIGHT_LAYERS = ("features.0", "features.3", "features.6", "features.8", "features.10",
                     "classifier.1", "classifier.4")

    def __init__(self, width: float = 1.0, dropout: float = 0.5):
        super().__init__()
        c = [max(1, int(round(k * width))) for k in (64, 192, 384, 256, 256)]
        hidden = max(1, int(round(4096 * width)))
        self.features = nn.Sequential(
            nn.Conv2d(3, c[0], kernel_size=11, stride=4, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(c[0], c[1], kernel_size=5, padding=2), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
            nn.Conv2d(c[1], c[2], kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c[2], c[3], kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(c[3], c[4], kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout), nn.Linear(c[4] * 36, hidden), nn.ReLU(inplace=True),
            nn.Dropout(p=dropout), nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
        )
        self.num_features = hidden

    def freeze(self, n_layers: int) -> List[str]:
        """Freeze the first ``n_layers`` weight layers (conv1 ... conv5, fc6, fc7); returns their names."""
        if isinstance(n_layers, bool) or not 0 <= n_layers <= len(self.WEIGHT_LAYERS):
            raise StreamclError(
                f"num_freeze_layers must be between 0 and {len(self.WEIGHT_LAYERS)} "
                f"(AlexNet's conv1-conv5, fc6, fc7), got {n_layers!r}"
            )
        names = list(self.WEIGHT_LAYERS[:n_layers])
        for name in names:
            for p in self.get_submodule(name).parameters():
                p.requires_grad_(False)
        return names

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@register_model("alexnet")
def alexnet(
    num_classes: int,
    *,
    head: HeadKind = "multi",
    num_freeze_layers: int = 0,
    width: float = 1.0,
    dropout: float = 0.5,
    weights: Optional[str] = None,
) -> nn.Module:
    """AlexNet-style network (MAS's backbone) with one head per task by default.

    :param num_freeze_layers: the first N weight layers (conv1 ... conv5, fc6,
        fc7) get ``requires_grad=False`` and never change.
    :param width: scales every layer (1 = AlexNet; 0.25 is a quick CPU version).
    :param weights: None or a local state_dict of torchvision's ``alexnet``
        (final layer dropped) or of this model, e.g. ImageNet weights saved on a
        connected machine.
    """
    backbone = AlexNetBackbone(width=width, dropout=dropout)
    pretrained = _load_weights(backbone, weights, ("classifier.6.",), "alexnet")
    frozen = backbone.freeze(num_freeze_layers)
    meta = {"arch": "alexnet", "head": head, "pretrained": pretrained, "frozen_layers": frozen}
    return _wrap(backbone, backbone.num_features, num_classes, head, True, meta)
