"""CRUMB's codec: a learned codebook of "memory blocks" matched by cosine similarity.

A feature map ``(C, H, W)`` is moved channels-last and every spatial C-vector
is cut into ``C / L`` contiguous chunks of length ``L`` (``block_dim``). Each
chunk is scored against the L2-normalised codebook rows by a dot product
(argmax of the dot product with normalised rows == argmax of cosine
similarity) and replaced by the index of its best row. An item is thus stored
as ``H * W * C / L`` indices: one byte each for ``n_blocks <= 256``
(13 * 13 * 32 = 5408 B for SqueezeNet's 512 x 13 x 13 at L = 16).

Decoding gathers the *un-normalised* rows and reshapes back to ``(C, H, W)``.
There is no straight-through estimator: the codebook learns only through this
gather (gradients of the loss w.r.t. the decoded features land on the rows
that were used).
"""

from __future__ import annotations

import warnings
from typing import Literal, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from streamcl.errors import StreamclError
from streamcl.models.codec import Codec

__all__ = ["MemoryBlockCodec", "CRUMBCodec", "DISTMATCH_PRESETS", "DATA_INITS", "distmatch_preset", "relative_error"]

InitName = Literal["distmatch_sparse", "distmatch_dense", "normal", "uniform", "first_batch", "kmeans"]
INITS: Tuple[str, ...] = ("distmatch_sparse", "distmatch_dense", "normal", "uniform", "first_batch", "kmeans")
#: Inits that need data: the codebook stays unfitted until :meth:`MemoryBlockCodec.fit` sees features.
DATA_INITS: Tuple[str, ...] = ("first_batch", "kmeans")

#: ``(std, sparsity)`` of the "distmatch" init per cut, matching the trunk's feature statistics.
DISTMATCH_PRESETS = {
    "squeezenet_cut12": (14 * 5 / 3, 0.64),
    "squeezenet_cut3": (0.73, 0.25),
}
_DEFAULT_PRESET = "squeezenet_cut12"
#: Chunks scored at a time by :meth:`MemoryBlockCodec.encode` on the CPU (a 4 MB score block at 256 rows).
CPU_ENCODE_ROWS = 4096


def distmatch_preset(cut: Optional[str]) -> Tuple[float, float]:
    """``(std, sparsity)`` for a cut name (``SplitNet.meta["cut"]``); SqueezeNet cut 12 otherwise."""
    return DISTMATCH_PRESETS.get(str(cut), DISTMATCH_PRESETS[_DEFAULT_PRESET])


class MemoryBlockCodec(Codec):
    """CRUMB codebook: ``n_blocks`` x ``block_dim`` trainable matrix; cosine top-1 encode, gather decode.

    :param n_blocks: codebook rows (256 in the paper). Up to 256 rows the codes
        are ``uint8``; up to 32768 they are ``int16`` (2 bytes per index, a
        warning says so); more is refused.
    :param block_dim: row length ``L`` (16 in the paper, 8 in an ablation); must divide
        the trunk's channel count ``C`` (checked on the first feature map).
    :param init: ``"distmatch_sparse"`` (default: ``|N(0, std^2)|`` with a
        fraction ``sparsity`` of entries zeroed), ``"distmatch_dense"`` (the
        same without zeros), ``"normal"`` (standard normal), ``"uniform"``
        (``U(0, 1)``), ``"first_batch"`` (rows are random chunks of the first
        feature batch passed to :meth:`fit`; unfitted until then), ``"kmeans"``
        (beyond the paper: rows are the k-means centroids of the chunks passed to
        :meth:`fit`, assigned by the codec's own cosine rule, as REMIND fits its
        quantiser on base features; unfitted until then). The paper's inits give
        rows that the gradient through the gather only shapes for classification: on a
        small trunk they reconstruct features with ~40-50 % relative squared error, k-means
        rows with ~5-9 % (``perf/bench_crumb_real.py``).
    :param init_std: std of the distmatch init (default: 14*5/3 for SqueezeNet cut 12).
    :param init_sparsity: zeroed fraction of the sparse distmatch init (default 0.64).
    :param match_features: distmatch init whose ``std`` / ``sparsity`` (those not
        given explicitly) are measured on the first feature batch passed to
        :meth:`fit`: ``std`` = root mean square of the non-zero feature values
        (the rms of ``|N(0, std^2)|`` is ``std``), ``sparsity`` = fraction of zero
        values. The codec stays unfitted until then. Use it for trunks whose
        statistics differ from the paper's pretrained SqueezeNet.
    :param seed: seed of the initialisation (None: torch's global RNG).
    """

    def __init__(
        self,
        n_blocks: int = 256,
        block_dim: int = 16,
        *,
        init: InitName = "distmatch_sparse",
        init_std: Optional[float] = None,
        init_sparsity: Optional[float] = None,
        match_features: bool = False,
        seed: Optional[int] = None,
    ):
        super().__init__()
        if n_blocks < 1 or block_dim < 1:
            raise StreamclError(f"CRUMB codebook needs n_blocks >= 1 and block_dim >= 1, got {n_blocks} x {block_dim}")
        if n_blocks > 2**15:
            raise StreamclError(f"CRUMB codebook: n_blocks={n_blocks} is too large (at most 32768 rows, int16 codes)")
        if init not in INITS:
            raise StreamclError(f"CRUMB codebook: unknown init {init!r}; valid: {', '.join(INITS)}")
        self.n_blocks = int(n_blocks)
        self.block_dim = int(block_dim)
        self.init = init
        std0, sp0 = DISTMATCH_PRESETS[_DEFAULT_PRESET]
        self.match_features = bool(match_features) and init in ("distmatch_sparse", "distmatch_dense")
        self._match_std = self.match_features and init_std is None
        self._match_sparsity = self.match_features and init_sparsity is None and init == "distmatch_sparse"
        self.init_std = float(std0 if init_std is None else init_std)
        self.init_sparsity = float(sp0 if init_sparsity is None else init_sparsity)
        if not 0.0 <= self.init_sparsity < 1.0:
            raise StreamclError(f"CRUMB codebook: init_sparsity must lie in [0, 1), got {self.init_sparsity}")
        if self.n_blocks > 256:
            self.code_dtype = torch.int16
            warnings.warn(
                f"CRUMB codebook with {self.n_blocks} rows: codes are stored as int16 (2 bytes per index), "
                "twice the memory of the 256-row uint8 setting",
                stacklevel=2,
            )
        else:
            self.code_dtype = torch.uint8
        g = torch.Generator()
        if seed is not None:
            g.manual_seed(int(seed))
        else:
            g.manual_seed(int(torch.randint(2**62, (1,)).item()))
        self._init_generator = g
        self.memory = nn.Parameter(self._initial_rows(g))
        #: relative reconstruction error on the base set, recorded by the pretraining (diagnostics' reference)
        self.reference_error: Optional[float] = None
        self.register_buffer("_fitted", torch.tensor(init not in DATA_INITS and not self.match_features))

    # ------------------------------------------------------------------ init
    def _initial_rows(self, g: torch.Generator) -> Tensor:
        shape = (self.n_blocks, self.block_dim)
        if self.init in ("distmatch_sparse", "distmatch_dense"):
            rows = torch.randn(shape, generator=g).mul_(self.init_std).abs_()
            if self.init == "distmatch_sparse":
                rows[torch.rand(shape, generator=g) < self.init_sparsity] = 0.0
            return rows
        if self.init == "normal":
            return torch.randn(shape, generator=g)
        if self.init == "uniform":
            return torch.rand(shape, generator=g)
        return torch.zeros(shape)  # first_batch / kmeans: filled by fit()

    @property
    def is_fitted(self) -> bool:
        return bool(self._fitted.item())

    def fit(self, features: Tensor, generator: Optional[torch.Generator] = None) -> None:
        """Data-dependent init on feature maps: ``init="first_batch"`` (rows = random chunks),
        ``init="kmeans"`` (rows = k-means centroids, :meth:`fit_kmeans`) or ``match_features``
        (distmatch with measured std / sparsity); no-op once fitted."""
        if self.is_fitted:
            return
        if self.init == "kmeans":
            self.fit_kmeans(features, generator=generator)
            return
        if self.match_features:
            f = features.detach().float()
            nz = f[f != 0]
            if self._match_std and nz.numel():
                self.init_std = float(nz.pow(2).mean().sqrt())
            if self._match_sparsity:
                self.init_sparsity = min(float((f == 0).float().mean()), 0.99)
            with torch.no_grad():
                self.memory.copy_(self._initial_rows(generator or self._init_generator).to(self.memory.device))
                self._fitted.fill_(True)
            return
        chunks = self._chunks(features.detach()).reshape(-1, self.block_dim)
        n = chunks.shape[0]
        if n >= self.n_blocks:
            idx = torch.randperm(n, generator=generator)[: self.n_blocks]
        else:
            idx = torch.randint(n, (self.n_blocks,), generator=generator)
        with torch.no_grad():
            self.memory.copy_(chunks[idx.to(chunks.device)].to(self.memory.dtype))
            self._fitted.fill_(True)

    @torch.no_grad()
    def fit_kmeans(self, features: Tensor, *, iters: int = 25, max_chunks: int = 200_000,
                   generator: Optional[torch.Generator] = None) -> float:
        """Set the rows to k-means centroids of the chunks of ``features`` (refits a fitted codebook too).

        ``features`` are feature maps ``(N, C, H, W)`` or chunks ``(M, L)`` already cut. Lloyd's
        iterations with the codec's own assignment (cosine top-1, as :meth:`encode`) and mean
        updates, so each step lowers the error of what is stored; an empty row is re-seeded with the
        chunk reconstructed worst. At most ``max_chunks`` chunks (a random subset) are used.
        Returns the relative squared reconstruction error on those chunks.
        """
        g = generator or self._init_generator
        chunks = features.detach() if features.dim() == 2 else self._chunks(features.detach())
        x = chunks.reshape(-1, self.block_dim).to(self.memory.device, self.memory.dtype)
        if x.shape[0] > max_chunks:
            x = x[torch.randperm(x.shape[0], generator=g)[:max_chunks].to(x.device)]
        n = x.shape[0]
        if n == 0:
            raise StreamclError("CRUMB codebook: k-means needs at least one feature chunk")
        pick = torch.randperm(n, generator=g)[: self.n_blocks] if n >= self.n_blocks \
            else torch.randint(n, (self.n_blocks,), generator=g)
        rows = x[pick.to(x.device)].clone()
        for _ in range(int(iters)):
            idx = (x @ F.normalize(rows, dim=1).t()).argmax(dim=1)
            sums = torch.zeros_like(rows).index_add_(0, idx, x)
            counts = torch.bincount(idx, minlength=self.n_blocks).to(x.dtype)
            empty = counts == 0
            rows = torch.where(empty[:, None], rows, sums / counts.clamp_min(1)[:, None])
            if bool(empty.any()):  # re-seed empty rows with the worst-reconstructed chunks
                err = (x - rows[idx]).pow(2).sum(1)
                worst = err.topk(int(empty.sum())).indices
                rows[empty] = x[worst]
        self.memory.copy_(rows)
        self._fitted.fill_(True)
        return relative_error(self, x)

    # ------------------------------------------------------------------ codec
    def _check_channels(self, c: int) -> None:
        if c % self.block_dim != 0:
            raise StreamclError(
                f"CRUMB codebook: block_dim={self.block_dim} must divide the trunk's {c} channels; "
                f"choose a divisor of {c} (e.g. {self._divisor_hint(c)})"
            )

    def _divisor_hint(self, c: int) -> str:
        ds = [d for d in (4, 8, 16, 32, 64) if c % d == 0]
        return ", ".join(str(d) for d in ds) if ds else "1"

    def _chunks(self, features: Tensor) -> Tensor:
        """``(N,C,H,W)`` -> ``(N,H,W,C/L,L)`` channels-last chunks."""
        if features.dim() != 4:
            raise StreamclError(f"CRUMB codebook expects feature maps (N, C, H, W), got shape {tuple(features.shape)}")
        n, c, h, w = features.shape
        self._check_channels(c)
        return features.permute(0, 2, 3, 1).reshape(n, h, w, c // self.block_dim, self.block_dim)

    def code_shape(self, feature_shape: Sequence[int]) -> Tuple[int, ...]:
        c, h, w = (int(s) for s in feature_shape)
        self._check_channels(c)
        return (h, w, c // self.block_dim)

    def normalized_memory(self) -> Tensor:
        return F.normalize(self.memory, dim=1)

    @torch.no_grad()
    def encode(self, features: Tensor, *, max_rows: Optional[int] = None) -> Tensor:
        """``(N,C,H,W)`` -> ``(N,H,W,C/L)`` top-1 row indices (``uint8``; ``int16`` above 256 rows).

        The ``(rows x n_blocks)`` score matrix is computed ``max_rows`` chunks at a time into one
        reused block (default: ``CPU_ENCODE_ROWS`` on the CPU, where a block that stays in cache
        makes the argmax several times cheaper than a fresh 100 MB matrix; ``1 << 16`` on a GPU).
        Each chunk's scores are the same dot products, so the codes do not depend on it.
        """
        chunks = self._chunks(features.detach())
        flat = chunks.reshape(-1, self.block_dim).to(self.memory.dtype)
        mem_t = self.normalized_memory().detach().t().contiguous()
        n = flat.shape[0]
        if max_rows is None:
            max_rows = CPU_ENCODE_ROWS if flat.device.type == "cpu" else 1 << 16
        out = torch.empty(n, dtype=torch.long, device=flat.device)
        scores = torch.empty(min(n, max_rows), mem_t.shape[1], dtype=mem_t.dtype, device=flat.device)
        for s in range(0, n, max_rows):  # bound the (rows x n_blocks) score matrix
            x = flat[s : s + max_rows]
            block = torch.mm(x, mem_t, out=scores[: len(x)])
            torch.argmax(block, dim=1, out=out[s : s + len(x)])
        return out.to(self.code_dtype).reshape(chunks.shape[:-1])

    def decode(self, codes: Tensor) -> Tensor:
        """``(N,H,W,C/L)`` indices -> ``(N,C,H,W)``: gather of the un-normalised rows (differentiable)."""
        if codes.dim() != 4:
            raise StreamclError(f"CRUMB codebook expects codes (N, H, W, C/L), got shape {tuple(codes.shape)}")
        n, h, w, k = codes.shape
        if torch.is_grad_enabled() and self.memory.requires_grad:  # the codebook learns through this gather
            rows = self.memory[codes.long().reshape(-1)]  # (N*H*W*k, L)
            return rows.reshape(n, h, w, k * self.block_dim).permute(0, 3, 1, 2).contiguous()
        # Without a gradient: the same values gathered straight into the (N, C, H, W) layout,
        # out[i, j * L + d, p] = memory[codes[i, p, j], d] (no channels-last intermediate to transpose).
        mem = self.memory.detach()
        idx = codes.reshape(n, 1, h * w, k).permute(0, 3, 1, 2).long()  # (N, k, 1, P)
        table = mem.t().unsqueeze(0).unsqueeze(0).expand(n, k, self.block_dim, self.n_blocks)
        out = torch.gather(table, 3, idx.expand(n, k, self.block_dim, h * w))  # (N, k, L, P)
        return out.reshape(n, k * self.block_dim, h, w)

    def extra_repr(self) -> str:
        return (
            f"n_blocks={self.n_blocks}, block_dim={self.block_dim}, init={self.init}, "
            f"std={self.init_std:.3g}, sparsity={self.init_sparsity:.3g}, codes={self.code_dtype}"
        )


CRUMBCodec = MemoryBlockCodec


@torch.no_grad()
def relative_error(codec: Codec, features: Tensor) -> float:
    """``sum ||f - decode(encode(f))||^2 / sum ||f||^2`` over a batch of feature maps (or of chunks
    ``(M, L)`` for a :class:`MemoryBlockCodec`): how much of the features the codec loses (0 = exact)."""
    f = features.detach().float()
    if f.dim() == 2 and isinstance(codec, MemoryBlockCodec):
        mem = codec.memory.detach().float()
        rec = mem[(f @ F.normalize(mem, dim=1).t()).argmax(dim=1)]
    else:
        rec = codec.reconstruct(features.detach()).float()
    den = float(f.pow(2).sum())
    return float((f - rec).pow(2).sum()) / den if den > 0 else 0.0
