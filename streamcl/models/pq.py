"""Product-quantisation codec (REMIND's compressor) on top of faiss.

A :class:`PQCodec` is trained once on every spatial C-vector of a set of feature
maps (channels-last), then turns each (C, H, W) feature map into ``H * W * M``
one-byte codes and back:

* ``encode(features)``: (N, C, H, W) float -> (N, H, W, M) ``torch.uint8``
  (**channels-last**: ``codes[n, i, j]`` holds the M sub-quantiser indices of
  the C-vector at spatial position (i, j); this is the layout faiss produces,
  so no transpose is needed on the code side).
* ``decode(codes)``: (N, H, W, M) uint8 -> (N, C, H, W) float32.

faiss is an optional dependency (extras ``streamcl[cpu]`` -> faiss-cpu,
``streamcl[gpu]`` -> faiss-gpu). It is imported when a codec is built, never at
``import streamcl``; a missing faiss raises a :class:`~streamcl.errors.StreamclError`
naming the extra.

Devices: training always runs faiss k-means (on the GPU when faiss has GPUs and
the features are on CUDA: a ``GpuIndexFlatL2`` does the assignment). Encoding of
CPU tensors uses faiss's own ``compute_codes``; encoding of CUDA tensors uses
``faiss.knn_gpu`` per sub-quantiser when faiss-gpu is present and a plain torch
nearest-centroid search otherwise (no host round trip). Decoding is a torch
gather of the centroid table on the codes' device, bit-identical to faiss's
``decode`` (both copy centroid floats).

The codec's whole state is its centroid table, a float32 buffer of shape
(M, 2**nbits, C // M); ``state_dict()`` / ``load_state_dict()`` round-trip it
through ``torch.save`` / ``torch.load(weights_only=True)`` and rebuild the faiss
quantiser from it.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

from streamcl.errors import StreamclError, missing_extra
from streamcl.models.codec import Codec

__all__ = ["PQCodec", "PQConfigError", "import_faiss", "faiss_gpu_available"]


class PQConfigError(StreamclError, ValueError):
    """A PQ setting that does not fit the features (e.g. M does not divide C)."""


def import_faiss() -> Any:
    """Import faiss or raise a :class:`StreamclError` that names the extra to install."""
    try:
        import faiss  # noqa: PLC0415
    except ImportError as exc:
        err = missing_extra("faiss", "cpu")
        raise StreamclError(
            f"{err} (or pip install 'streamcl[gpu]' for faiss-gpu on a CUDA machine); "
            "REMIND's product quantiser needs it"
        ) from exc
    return faiss


def _gpu_index(t: Tensor) -> int:
    """The CUDA device index ``t`` lives on (``cuda`` without an index: the current device), for faiss-gpu calls."""
    return t.device.index if t.device.index is not None else torch.cuda.current_device()


def faiss_gpu_available(faiss: Any = None) -> bool:
    """True when the installed faiss is a GPU build that sees at least one GPU."""
    faiss = faiss or import_faiss()
    try:
        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    except Exception:  # pragma: no cover - broken GPU runtime
        return False


def _feature_vectors(features: Tensor) -> Tensor:
    """(N, C, H, W) -> (N*H*W, C) channels-last rows (contiguous, float32)."""
    if features.dim() != 4:
        raise ValueError(f"PQCodec expects (N, C, H, W) feature maps, got shape {tuple(features.shape)}")
    c = features.shape[1]
    return features.detach().permute(0, 2, 3, 1).reshape(-1, c).float().contiguous()


class PQCodec(Codec):
    """faiss ``ProductQuantizer(d=C, M, nbits)`` over the C-vectors of feature maps.

    :param num_codebooks: M, the number of sub-quantisers; must divide the channel
        count C (checked at :meth:`fit`). One byte per sub-quantiser per
        spatial position is stored: ``H * W * M`` bytes per item
        (7*7*32 = 1568 for ResNet-18 layer4.0, 13*13*32 = 5408 for the
        SqueezeNet cut).
    :param nbits: bits per code (2**nbits centroids per sub-quantiser), 1..8.
    :param niter: k-means iterations of the training.
    :param max_train_vectors: subsample at most this many C-vectors for training
        (None = faiss's own cap of 256 points per centroid).
    :param seed: k-means seed (training is deterministic for a given seed and data).
    :param use_gpu: "auto" (GPU when faiss-gpu sees a GPU and the data are on CUDA),
        True (require it), False (never).
    """

    code_dtype = torch.uint8

    def __init__(
        self,
        num_codebooks: int = 32,
        nbits: int = 8,
        *,
        niter: int = 25,
        max_train_vectors: Optional[int] = None,
        seed: int = 1234,
        use_gpu: Any = "auto",
    ):
        super().__init__()
        import_faiss()  # fail now, naming the extra, rather than at the first fit
        if not (isinstance(num_codebooks, int) and num_codebooks > 0):
            raise PQConfigError(f"num_codebooks (M) must be a positive integer, got {num_codebooks!r}")
        if not (isinstance(nbits, int) and 1 <= nbits <= 8):
            raise PQConfigError(
                f"nbits must be an integer in 1..8 (codes are stored as uint8), got {nbits!r}"
            )
        if use_gpu not in ("auto", True, False):
            raise PQConfigError(f"use_gpu must be 'auto', True or False, got {use_gpu!r}")
        self.num_codebooks = num_codebooks
        self.nbits = nbits
        self.niter = niter
        self.max_train_vectors = max_train_vectors
        self.seed = seed
        self.use_gpu = use_gpu
        # (M, ksub, dsub) float32; empty until fitted or loaded.
        self.register_buffer("centroids", torch.empty(0, dtype=torch.float32))
        self._pq: Any = None  # faiss.ProductQuantizer, rebuilt from `centroids`
        self._gpu_res: Any = None

    @property
    def _faiss(self) -> Any:
        return import_faiss()

    def __getstate__(self) -> Dict[str, Any]:
        # faiss objects are neither picklable nor deep-copyable: rebuilt from `centroids` on demand.
        state = super().__getstate__()
        state["_pq"] = None
        state["_gpu_res"] = None
        return state

    # ------------------------------------------------------------------ info
    @property
    def is_fitted(self) -> bool:
        return self.centroids.numel() > 0

    @property
    def dim(self) -> int:
        """Channel count C the codec was fitted on (0 before fitting)."""
        return int(self.centroids.shape[0] * self.centroids.shape[2]) if self.is_fitted else 0

    @property
    def ksub(self) -> int:
        return 1 << self.nbits

    def code_shape(self, feature_shape: Sequence[int]) -> Tuple[int, ...]:
        """Per-item code shape for a (C, H, W) (or (N, C, H, W)) feature shape: (H, W, M)."""
        c, h, w = tuple(feature_shape)[-3:]
        self._check_divides(c)
        return (int(h), int(w), self.num_codebooks)

    def nbytes_per_item(self, feature_shape: Sequence[int]) -> int:
        """Bytes one stored item takes: H * W * M (one uint8 per code)."""
        h, w, m = self.code_shape(feature_shape)
        return h * w * m

    def state_nbytes(self) -> int:
        """Bytes of codec state that must be kept with the codes: the centroid table."""
        return int(self.centroids.numel() * self.centroids.element_size())

    def state_nbytes_for(self, feature_shape: Sequence[int]) -> int:
        """Centroid bytes after fitting on ``(C, H, W)`` maps: ``2**nbits * C`` float32 values."""
        c = int(tuple(feature_shape)[-3])
        self._check_divides(c)
        return self.ksub * c * 4

    def extra_repr(self) -> str:
        fitted = f"d={self.dim}" if self.is_fitted else "not fitted"
        return f"M={self.num_codebooks}, nbits={self.nbits}, {fitted}"

    def _check_divides(self, c: int) -> None:
        if c % self.num_codebooks != 0:
            raise PQConfigError(
                f"PQCodec: num_codebooks M={self.num_codebooks} must divide the channel count C={c} "
                f"(each sub-quantiser takes C/M channels); pick M among the divisors of {c}"
            )

    def _wants_gpu(self, t: Tensor) -> bool:
        if self.use_gpu is False:
            return False
        ok = faiss_gpu_available(self._faiss) and t.is_cuda
        if self.use_gpu is True and not ok:
            # a setting this machine cannot honour (YAML use_gpu: true): a StreamclError, so the CLI says it in one line
            raise PQConfigError(
                "use_gpu: true needs faiss-gpu (pip install 'streamcl[gpu]'), a visible GPU and device: cuda; "
                "set use_gpu: auto (faiss-gpu when present, else faiss-cpu) or false"
            )
        return ok

    def _gpu_resources(self) -> Any:
        if self._gpu_res is None:
            self._gpu_res = self._faiss.StandardGpuResources()
        return self._gpu_res

    # --------------------------------------------------------------- training
    def fit(self, features: Tensor) -> None:
        """Train the quantiser on every spatial C-vector of ``features`` (N, C, H, W)."""
        vectors = _feature_vectors(features)
        n, c = vectors.shape
        self._check_divides(c)
        if n < self.ksub:
            raise PQConfigError(
                f"PQCodec.fit needs at least 2**nbits = {self.ksub} training vectors (N*H*W), got {n}; "
                "give it more base features or lower nbits"
            )
        if self.max_train_vectors is not None and n > self.max_train_vectors:
            g = torch.Generator().manual_seed(self.seed)
            vectors = vectors[torch.randperm(n, generator=g)[: self.max_train_vectors].to(vectors.device)]
            n = vectors.shape[0]
        faiss = self._faiss
        pq = faiss.ProductQuantizer(c, self.num_codebooks, self.nbits)
        pq.cp.niter = self.niter
        pq.cp.seed = self.seed
        # faiss prints a warning to stderr below 39 points per centroid; small streams are
        # legitimate here, so warn once in Python instead.
        if n < pq.cp.min_points_per_centroid * self.ksub:
            warnings.warn(
                f"PQCodec: training {self.ksub} centroids per sub-quantiser on only {n} vectors",
                stacklevel=2,
            )
        pq.cp.min_points_per_centroid = 1
        if self._wants_gpu(features):
            # k-means assignment on the GPU; centroids stay in the CPU quantiser.
            # (keep a Python reference: the quantiser does not own the index)
            cfg = faiss.GpuIndexFlatConfig()
            cfg.device = _gpu_index(features)
            gpu_index = faiss.GpuIndexFlatL2(self._gpu_resources(), pq.dsub, cfg)
            pq.assign_index = gpu_index
        try:
            pq.train(vectors.cpu().numpy())
        finally:
            pq.assign_index = None
        table = faiss.vector_to_array(pq.centroids).reshape(self.num_codebooks, pq.ksub, pq.dsub)
        self.centroids = torch.from_numpy(table.copy()).to(features.device)
        self._pq = pq

    def _faiss_pq(self) -> Any:
        """The faiss quantiser, rebuilt from ``centroids`` when it is missing (after loading)."""
        if not self.is_fitted:
            raise RuntimeError("PQCodec is not fitted: call fit(features) or load_state_dict() first")
        if self._pq is None:
            m, ksub, dsub = self.centroids.shape
            pq = self._faiss.ProductQuantizer(m * dsub, m, self.nbits)
            if pq.ksub != ksub:
                raise ValueError(
                    f"centroid table has {ksub} rows per sub-quantiser, nbits={self.nbits} needs {pq.ksub}"
                )
            flat = self.centroids.detach().cpu().float().contiguous().numpy().reshape(-1)
            self._faiss.copy_array_to_vector(flat, pq.centroids)
            self._pq = pq
        return self._pq

    # ----------------------------------------------------------- encode/decode
    @torch.no_grad()
    def encode(self, features: Tensor) -> Tensor:
        """(N, C, H, W) float -> (N, H, W, M) uint8 codes on the features' device."""
        if not self.is_fitted:
            raise RuntimeError("PQCodec is not fitted: call fit(features) or load_state_dict() first")
        n, c, h, w = features.shape
        if c != self.dim:
            raise ValueError(f"PQCodec was fitted on C={self.dim} channels, got features with C={c}")
        vectors = _feature_vectors(features)
        if features.is_cuda and self.use_gpu is not False:
            codes = self._encode_cuda(vectors)
        else:
            codes = torch.from_numpy(self._faiss_pq().compute_codes(vectors.cpu().numpy()))
            if self.nbits != 8:  # faiss packs sub-byte codes; unpack to one byte per code
                codes = self._unpack(codes)
        return codes.reshape(n, h, w, self.num_codebooks).to(features.device)

    def _unpack(self, packed: Tensor) -> Tensor:
        """Unpack faiss's bit-packed codes (nbits < 8) to one uint8 per sub-quantiser."""
        bits = np.unpackbits(packed.numpy(), axis=1, bitorder="little")[:, : self.num_codebooks * self.nbits]
        bits = bits.reshape(-1, self.num_codebooks, self.nbits).astype(np.uint16)
        weights = (1 << np.arange(self.nbits, dtype=np.uint16))[None, None, :]
        return torch.from_numpy((bits * weights).sum(-1).astype(np.uint8))

    def _encode_cuda(self, vectors: Tensor) -> Tensor:
        """Nearest centroid per sub-vector on the GPU: faiss-gpu brute force, else torch."""
        m, ksub, dsub = self.centroids.shape
        cents = self.centroids.to(vectors.device)
        sub = vectors.view(-1, m, dsub)
        codes = torch.empty(sub.shape[0], m, dtype=torch.uint8, device=vectors.device)
        if self._wants_gpu(vectors):
            import faiss.contrib.torch_utils  # noqa: F401,PLC0415  (lets faiss take CUDA tensors)

            res = self._gpu_resources()
            dev = _gpu_index(vectors)  # faiss's default, -1, is the current device, not necessarily the tensors'
            for j in range(m):
                _, idx = self._faiss.knn_gpu(res, sub[:, j].contiguous(), cents[j].contiguous(), 1, device=dev)
                codes[:, j] = idx[:, 0].to(torch.uint8)
            return codes
        # torch fallback: ||x - c||^2 = ||x||^2 - 2 x.c + ||c||^2; ||x||^2 is constant per row.
        c_sq = (cents * cents).sum(-1)  # (M, ksub)
        chunk = 65536
        for s in range(0, sub.shape[0], chunk):
            x = sub[s : s + chunk].transpose(0, 1)  # (M, n, dsub)
            d = c_sq[:, None, :] - 2 * torch.bmm(x, cents.transpose(1, 2))  # (M, n, ksub)
            codes[s : s + chunk] = d.argmin(-1).transpose(0, 1).to(torch.uint8)
        return codes

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """(N, H, W, M) uint8 -> (N, C, H, W) float32 on the codes' device."""
        if not self.is_fitted:
            raise RuntimeError("PQCodec is not fitted: call fit(features) or load_state_dict() first")
        if codes.dim() != 4 or codes.shape[-1] != self.num_codebooks:
            raise ValueError(
                f"PQCodec.decode expects (N, H, W, M={self.num_codebooks}) codes, got shape {tuple(codes.shape)}"
            )
        n, h, w, m = codes.shape
        cents = self.centroids.to(codes.device)
        _, ksub, dsub = cents.shape
        # out[i, j * dsub + d, p] = cents[j, codes[i, p, j], d]: one gather straight into the (N, C, H, W)
        # layout (no channels-last intermediate to transpose), from the table seen as (M, dsub, ksub)
        idx = codes.reshape(n, 1, h * w, m).permute(0, 3, 1, 2).long()  # (N, M, 1, P)
        table = cents.transpose(1, 2).unsqueeze(0).expand(n, m, dsub, ksub)
        out = torch.gather(table, 3, idx.expand(n, m, dsub, h * w))  # (N, M, dsub, P)
        return out.reshape(n, m * dsub, h, w)

    def reconstruct(self, features: Tensor) -> Tensor:
        """``decode(encode(features))``: what the head sees for a feature map."""
        return self.decode(self.encode(features))

    def forward(self, features: Tensor) -> Tensor:  # nn.Module protocol
        return self.reconstruct(features)

    # ------------------------------------------------------------------ state
    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        key = prefix + "centroids"
        if key in state_dict:
            table = state_dict[key]
            if table.numel() > 0:
                if table.dim() != 3 or table.shape[0] != self.num_codebooks or table.shape[1] != self.ksub:
                    error_msgs.append(
                        f"PQCodec: saved centroid table has shape {tuple(table.shape)}, this codec expects "
                        f"(M={self.num_codebooks}, 2**nbits={self.ksub}, C/M)"
                    )
                    return
            # resize our (possibly empty) buffer so the default copy accepts the saved shape
            self.centroids = torch.empty_like(table, device=self.centroids.device, dtype=torch.float32)
            self._pq = None
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
