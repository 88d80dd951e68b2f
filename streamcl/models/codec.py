"""The codec interface of compressed latent replay (re-exported by :mod:`streamcl.plugins.latent_replay`).

A codec maps trunk feature maps ``(N, C, H, W)`` to compact integer codes and
back. Implementations: :class:`streamcl.models.codebook.MemoryBlockCodec`
(CRUMB), :class:`streamcl.models.pq.PQCodec` (REMIND), :class:`IdentityCodec`
(uncompressed float16 baseline / test double). Codec modules under
``streamcl.models`` import :class:`Codec` from here (not from the plugins
package) to keep imports acyclic.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["Codec", "IdentityCodec"]


# =====================================================================================
class Codec(nn.Module):
    """Interface of a feature-map codec: ``(N,C,H,W)`` float <-> ``(N, *code_shape)`` integer codes.

    Subclasses implement :meth:`encode`, :meth:`decode` and :meth:`code_shape`;
    optionally :meth:`fit` (one-off training such as a PQ, or a data-dependent
    initialisation) together with :attr:`is_fitted`. Keep every piece of state
    in parameters or registered buffers so ``state_dict()`` captures it and
    :meth:`state_nbytes` counts it.

    ``decode`` must be differentiable w.r.t. the codec's parameters when the
    codec is meant to learn (CRUMB's codebook learns through the gather).
    """

    #: dtype of the codes (``uint8`` for <= 256 symbols). Instances may override it.
    code_dtype: torch.dtype = torch.uint8

    def fit(self, features: Tensor) -> None:
        """One-off fitting on a feature batch ``(N,C,H,W)``; default: nothing to fit."""
        return None

    @property
    def is_fitted(self) -> bool:
        """False while :meth:`fit` still has to be called before :meth:`encode` is meaningful."""
        return True

    def encode(self, features: Tensor) -> Tensor:  # pragma: no cover - interface
        """``(N,C,H,W)`` float -> ``(N, *code_shape)`` codes of dtype :attr:`code_dtype`."""
        raise NotImplementedError

    def decode(self, codes: Tensor) -> Tensor:  # pragma: no cover - interface
        """``(N, *code_shape)`` codes -> ``(N,C,H,W)`` float feature maps."""
        raise NotImplementedError

    def reconstruct(self, features: Tensor) -> Tensor:
        """``decode(encode(features))`` (gradients flow into the codec through ``decode`` only)."""
        return self.decode(self.encode(features))

    def code_shape(self, feature_shape: Sequence[int]) -> Tuple[int, ...]:  # pragma: no cover
        """Shape of one item's codes for a feature map of shape ``(C, H, W)``."""
        raise NotImplementedError

    def nbytes_per_item(self, feature_shape: Sequence[int]) -> int:
        """Bytes of one stored item's codes (labels not included)."""
        n = int(np.prod(self.code_shape(tuple(feature_shape))))
        return n * torch.empty((), dtype=self.code_dtype).element_size()

    def state_nbytes(self) -> int:
        """Bytes of the codec's own state (codebook, PQ centroids ...): parameters + buffers."""
        seen = set()
        total = 0
        for t in list(self.parameters()) + list(self.buffers()):
            if id(t) in seen:
                continue
            seen.add(id(t))
            total += t.numel() * t.element_size()
        return total

    def state_nbytes_for(self, feature_shape: Sequence[int]) -> int:
        """Bytes :meth:`state_nbytes` will take once fitted on ``(C, H, W)`` maps (byte budgets charge it up front)."""
        return self.state_nbytes()

    @property
    def learnable(self) -> bool:
        """True when the codec has parameters that require gradients (it then gets its own optimiser)."""
        return any(p.requires_grad for p in self.parameters())


class IdentityCodec(Codec):
    """Stores raw ``float16`` features viewed as bytes: an uncompressed baseline and a test double.

    Codes are the float16 feature map reinterpreted as ``uint8`` (2 bytes per value).
    """

    code_dtype = torch.uint8

    def encode(self, features: Tensor) -> Tensor:
        f = features.detach().to(torch.float16).contiguous()
        return f.view(torch.uint8).reshape(f.shape[0], *f.shape[1:-1], f.shape[-1] * 2)

    def decode(self, codes: Tensor) -> Tensor:
        c = codes.contiguous()
        return c.view(torch.float16).to(torch.float32)

    def code_shape(self, feature_shape: Sequence[int]) -> Tuple[int, ...]:
        c, h, w = feature_shape
        return (c, h, w * 2)
