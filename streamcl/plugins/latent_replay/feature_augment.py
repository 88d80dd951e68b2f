"""Feature-map augmentation of replayed items: random resized crop and mixup, vectorised over the batch."""

from __future__ import annotations

import math
from typing import Any, Literal, Optional, Tuple

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "augment_features",
    "random_resized_crop_features",
    "sample_crop_boxes",
    "resize_crops",
    "mixup_features",
    "mixup_loss",
]


# =====================================================================================
def _uniform(n: int, lo: float, hi: float, g: Optional[torch.Generator]) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)


def _bilinear_axis(feats: Tensor, start: Tensor, length: Tensor, out_len: int, dim: int) -> Tensor:
    """Resample ``feats`` along ``dim`` from the window ``[start, start+length)`` of each item to ``out_len``.

    Same sampling as ``F.interpolate(mode="bilinear", align_corners=False)``
    applied to the cropped window (source coordinates clamped inside the window).
    """
    n = feats.shape[0]
    dev = feats.device
    i = torch.arange(out_len, device=dev, dtype=torch.float64).unsqueeze(0)  # (1, out)
    scale = (length.to(dev) / out_len).unsqueeze(1)  # (N, 1)
    src = ((i + 0.5) * scale - 0.5).clamp(min=0.0)
    lo = torch.floor(src)
    w = (src - lo).to(feats.dtype)
    lo = lo.long()
    last = (length.to(dev).long() - 1).unsqueeze(1)
    hi = torch.minimum(lo + 1, last)
    lo = torch.minimum(lo, last)
    off = start.to(dev).long().unsqueeze(1)
    lo, hi = lo + off, hi + off
    shape = [n, 1, 1, 1]
    shape[dim] = out_len
    expand = list(feats.shape)
    expand[dim] = out_len
    g_lo = feats.gather(dim, lo.view(shape).expand(expand))
    g_hi = feats.gather(dim, hi.view(shape).expand(expand))
    if feats.requires_grad and torch.is_grad_enabled():
        return g_lo + (g_hi - g_lo) * w.view(shape)
    # The same arithmetic in place (bit-identical: (hi - lo) * w + lo): two feature-sized
    # allocations instead of five, which on the CPU cost more than the arithmetic (fresh pages).
    return g_hi.sub_(g_lo).mul_(w.view(shape)).add_(g_lo)


def random_resized_crop_features(
    feats: Tensor,
    *,
    scale: Tuple[float, float] = (2 / 7, 1.0),
    ratio: Tuple[float, float] = (3 / 4, 4 / 3),
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Random resized crop of each feature map, resized back to ``H x W`` bilinearly (vectorised).

    Per item: area fraction ``s ~ U(scale)``, aspect ratio ``r ~ logU(ratio)``,
    integer crop ``w = round(sqrt(s r) W)``, ``h = round(sqrt(s / r) H)``
    (clamped to the map), random integer offset; the crop is resampled to
    ``H x W`` exactly like ``F.interpolate(crop, (H, W), mode="bilinear",
    align_corners=False)`` would, for the whole batch at once (two separable
    gathers). Differentiable w.r.t. ``feats``.
    """
    n, _, h, w = feats.shape
    if n == 0:
        return feats
    x0, y0, cw, ch = sample_crop_boxes(n, h, w, scale=scale, ratio=ratio, generator=generator)
    return resize_crops(feats, x0, y0, cw, ch)


def sample_crop_boxes(
    n: int,
    h: int,
    w: int,
    *,
    scale: Tuple[float, float] = (2 / 7, 1.0),
    ratio: Tuple[float, float] = (3 / 4, 4 / 3),
    generator: Optional[torch.Generator] = None,
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """Integer crop boxes ``(x0, y0, width, height)`` (float64 tensors of length ``n``) of a random resized crop."""
    s = _uniform(n, scale[0], scale[1], generator)
    r = torch.exp(_uniform(n, math.log(ratio[0]), math.log(ratio[1]), generator))
    cw = torch.clamp(torch.round(torch.sqrt(s * r) * w), 1, w)
    ch = torch.clamp(torch.round(torch.sqrt(s / r) * h), 1, h)
    x0 = torch.floor(torch.rand(n, generator=generator, dtype=torch.float64) * (w - cw + 1))
    y0 = torch.floor(torch.rand(n, generator=generator, dtype=torch.float64) * (h - ch + 1))
    return x0, y0, cw, ch


def resize_crops(feats: Tensor, x0: Tensor, y0: Tensor, cw: Tensor, ch: Tensor) -> Tensor:
    """Crop item ``i`` to ``[y0:y0+ch, x0:x0+cw]`` and resize it back to ``H x W`` (bilinear), batched."""
    _, _, h, w = feats.shape
    out = _bilinear_axis(feats, x0, cw, w, dim=3)
    return _bilinear_axis(out, y0, ch, h, dim=2)


def _sample_beta(alpha: float, generator: Optional[torch.Generator]) -> float:
    seed = int(torch.randint(2**31 - 1, (1,), generator=generator).item())
    return float(np.random.default_rng(seed).beta(alpha, alpha))


def mixup_features(
    feats: Tensor,
    labels: Tensor,
    *,
    alpha: float = 0.1,
    mode: Literal["halves", "permute"] = "halves",
    generator: Optional[torch.Generator] = None,
) -> Tuple[Tensor, Tensor, Tensor, float]:
    """Mixup with one ``lam ~ Beta(alpha, alpha)`` per call.

    ``mode="halves"`` (REMIND): mix the first half with the second half,
    returning ``len // 2`` items; ``"permute"``: mix with a random permutation
    of the batch (same length). Returns ``(mixed, labels_a, labels_b, lam)``.
    """
    if alpha is None or alpha <= 0 or len(labels) < 2:
        return feats, labels, labels, 1.0
    lam = _sample_beta(alpha, generator)
    if mode == "halves":
        h = len(labels) // 2
        if feats.requires_grad and torch.is_grad_enabled():
            mixed = lam * feats[:h] + (1 - lam) * feats[h : 2 * h]
        else:  # the same products and sum, one allocation fewer
            mixed = torch.mul(feats[:h], lam).add_(torch.mul(feats[h : 2 * h], 1 - lam))
        return mixed, labels[:h], labels[h : 2 * h], lam
    if mode == "permute":
        perm = torch.randperm(len(labels), generator=generator).to(feats.device)
        return lam * feats + (1 - lam) * feats[perm], labels, labels[perm], lam
    raise ValueError(f"unknown mixup mode {mode!r}; valid: halves, permute")


def augment_features(
    feats: Tensor,
    labels: Tensor,
    *,
    crop: bool = True,
    crop_scale: Tuple[float, float] = (2 / 7, 1.0),
    crop_ratio: Tuple[float, float] = (3 / 4, 4 / 3),
    mixup_alpha: Optional[float] = 0.1,
    mixup_mode: Literal["halves", "permute"] = "halves",
    generator: Optional[torch.Generator] = None,
) -> Tuple[Tensor, Tensor, Tensor, float]:
    """Feature-map augmentation of replayed items: random resized crop then mixup.

    Returns ``(feats, labels_a, labels_b, lam)``; train with
    :func:`mixup_loss` (``lam * CE(., labels_a) + (1 - lam) * CE(., labels_b)``).
    With ``mixup_alpha`` None/0: ``labels_b == labels_a``, ``lam == 1``. With
    ``mixup_mode="halves"`` the output holds ``len(feats) // 2`` items.
    REMIND: crop scale (2/7, 1) at 7x7 (4/13 at 13x13 in the CRUMB comparison),
    ratio (3/4, 4/3), mixup alpha 0.1 between two replay halves.
    """
    if crop:
        feats = random_resized_crop_features(feats, scale=crop_scale, ratio=crop_ratio, generator=generator)
    return mixup_features(feats, labels, alpha=mixup_alpha or 0.0, mode=mixup_mode, generator=generator)


def mixup_loss(criterion: Any, logits: Tensor, labels_a: Tensor, labels_b: Tensor, lam: float) -> Tensor:
    """``lam * criterion(logits, labels_a) + (1 - lam) * criterion(logits, labels_b)``."""
    if lam >= 1.0 or labels_b is labels_a:
        return criterion(logits, labels_a)
    return lam * criterion(logits, labels_a) + (1 - lam) * criterion(logits, labels_b)

