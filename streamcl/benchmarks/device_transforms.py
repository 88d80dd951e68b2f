"""Transforms on the device: uint8 frame-cache batches -> normalised float32 model inputs, where the model runs.

With ``cache:`` a scenario's datasets yield uint8 CHW tensors (``streamcl_info.device_normalize``
holds the mean/std); data-loader workers then only copy bytes, the batch crosses to the GPU
as uint8 (4x fewer bytes than float32; pin memory + ``non_blocking`` for an async copy) and
:class:`DeviceNormalize` does ``x / 255``, ``(x - mean) / std`` (and, optionally, a random
horizontal flip for training and a ``channels_last`` layout) on the device.

:class:`DeviceTransformPlugin` applies it to ``strategy.mbatch[0]`` in Avalanche's loops;
``streamcl.build`` adds it, first in the plugin list, whenever the scenario asks for it.
Code that feeds the model outside those loops (the latent-replay passes, EWC/MAS importance,
MIR's buffer scoring ...) is covered too: the plugin also installs a forward pre-hook on the
strategy's model that normalises any uint8 input it receives (float inputs pass untouched,
so nothing is normalised twice), and :func:`normalize_for` gives the normaliser of a strategy.

The result equals the decode path's ``ToTensor()`` + ``Normalize(mean, std)`` bit for bit: the
same float32 operations in the same order (to float, divide by 255, subtract, divide). On the
CPU they write into an output buffer that is reused once nothing references the previous batch
(:class:`_CPUOutputPool`): touching fresh pages from the kernel cost more than the arithmetic.

Public API (stable; ``perf/bench_gpu_stream.py`` imports it): :class:`DeviceNormalize`,
:class:`DeviceTransformPlugin`, :func:`normalize_for`.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from avalanche.core import SupervisedPlugin
from torch import Tensor

__all__ = ["DeviceNormalize", "DeviceTransformPlugin", "normalize_for", "maybe_normalize"]


class DeviceNormalize:
    """uint8 ``(N, C, H, W)`` (or ``(C, H, W)``) batch on any device -> float32 ``((x / 255) - mean) / std``.

    ``channels_last``: return a 4-D batch in ``torch.channels_last`` memory format (faster
    convolutions on GPUs with tensor cores). ``hflip``: with ``train=True``, flip each image
    horizontally with probability 0.5 (``generator`` on the batch's device, else torch's global RNG),
    as ``torchvision.transforms.RandomHorizontalFlip`` would on the CPU.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        *,
        channels_last: bool = False,
        hflip: bool = False,
        generator: Optional[torch.Generator] = None,
    ):
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} channels but std has {len(std)}")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.channels_last = bool(channels_last)
        self.hflip = bool(hflip)
        self.generator = generator
        self._consts: Dict[Tuple[str, Any], Tuple[Tensor, Tensor]] = {}
        self._pool: Optional[_CPUOutputPool] = None  # made on first CPU call (not pickled)

    def _stats(self, device: torch.device) -> Tuple[Tensor, Tensor]:
        key = (str(device), device.index)
        if key not in self._consts:  # built once per device, like torchvision's Normalize builds them per call
            mean = torch.as_tensor(self.mean, dtype=torch.float32, device=device).view(-1, 1, 1)
            std = torch.as_tensor(self.std, dtype=torch.float32, device=device).view(-1, 1, 1)
            self._consts[key] = (mean, std)
        return self._consts[key]

    def __call__(self, x: Tensor, *, train: bool = False) -> Tensor:
        if x.dtype != torch.uint8:
            raise TypeError(f"DeviceNormalize expects uint8 frames (a frame-cache batch), got {x.dtype}")
        mean, std = self._stats(x.device)
        if x.device.type == "cpu" and x.dim() in (3, 4):
            out = self._normalize_cpu(x, mean, std)
        else:
            # The exact ops of ToTensor (to float, div 255) and Normalize (sub_ mean, div_ std), in place
            # on the fresh float tensor: equal to the CPU decode path's inputs bit for bit.
            out = x.to(torch.float32).div_(255).sub_(mean).div_(std)
        if self.hflip and train:
            flip = torch.rand(out.shape[0] if out.dim() == 4 else 1, device=out.device, generator=self.generator) < 0.5
            if out.dim() == 4:
                out = torch.where(flip.view(-1, 1, 1, 1), out.flip(-1), out)
            elif bool(flip[0]):
                out = out.flip(-1)
        if self.channels_last and out.dim() == 4:
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def _normalize_cpu(self, x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
        """The same four ops, in place in a pooled output buffer (see :class:`_CPUOutputPool` for why)."""
        if self._pool is None:
            self._pool = _CPUOutputPool()
        out = self._pool.empty(x.shape)
        return out.copy_(x).div_(255).sub_(mean).div_(std)  # copy_ converts uint8 -> float32 exactly like .to()

    def __repr__(self) -> str:
        return (f"DeviceNormalize(mean={self.mean}, std={self.std}, channels_last={self.channels_last}, "
                f"hflip={self.hflip})")

    def __getstate__(self) -> Dict[str, Any]:  # per-device constants are rebuilt after unpickling / deepcopy
        state = dict(self.__dict__)
        state["_consts"] = {}
        state["_pool"] = None
        return state


class _CPUOutputPool:
    """Float32 output storage for CPU batches, reused once no tensor references the previous batch.

    Why: a 64-image 224 px batch is 38 MB, above glibc's largest mmap threshold (32 MB), so each
    fresh batch is new pages from the kernel, and touching them cost more than the arithmetic:
    cache read + normalisation ran at 2 874 images/s into fresh batches and 8 124 into a reused
    one (``perf/bench_cache.py --format png224``, one core). PyTorch's CPU allocator keeps no
    cache (its CUDA one does: GPU outputs are not pooled).

    Safety: the pool holds only storages. A batch it hands out is a separate tensor on one, so
    while anything still references that batch (a view of it, an autograd graph that saved it, a
    NumPy array made from it ...) the storage's use count is above one and the pool allocates a
    new buffer instead. The count is ``torch._C._storage_Use_Count``, which torch's CUDA-graph
    trees use for the same question (are outputs still alive?); without it nothing is reused.
    A few sizes are kept (full batch, last partial batch, eval batch), least recently used dropped.
    """

    def __init__(self, max_sizes: int = 4):
        self.max_sizes = max_sizes
        self._storages: OrderedDict[int, torch.UntypedStorage] = OrderedDict()
        self._lock = threading.Lock()  # check-then-hand-out is one step, should two threads share a normaliser

    def empty(self, shape: torch.Size) -> Tensor:
        """An uninitialised contiguous float32 tensor of ``shape``, on reused storage when none is referenced."""
        use_count = getattr(torch._C, "_storage_Use_Count", None)
        n = 1
        for d in shape:
            n *= int(d)
        if use_count is None or n == 0:
            return torch.empty(shape, dtype=torch.float32)
        with self._lock:
            st = self._storages.get(n)
            if st is None or use_count(st._cdata) != 1:  # 1: only this pool holds it
                st = torch.empty(n, dtype=torch.float32).untyped_storage()
                self._storages[n] = st
            self._storages.move_to_end(n)
            while len(self._storages) > self.max_sizes:
                self._storages.popitem(last=False)
            return torch.empty(0, dtype=torch.float32).set_(st, 0, shape)


class _UInt8InputHook:
    """Forward pre-hook: normalise a uint8 first input (eval-style: never flips); anything else passes through.

    A small object rather than a bound method of the plugin, so that deep copies of the model
    (LwF's teacher, WA's snapshots) copy only the normaliser, not the plugin and its strategy.
    """

    def __init__(self, normalize: DeviceNormalize):
        self.normalize = normalize

    def __call__(self, module: torch.nn.Module, args: Tuple[Any, ...]) -> Optional[Tuple[Any, ...]]:
        if args and isinstance(args[0], Tensor) and args[0].dtype == torch.uint8:
            return (self.normalize(args[0]),) + tuple(args[1:])
        return None


class DeviceTransformPlugin(SupervisedPlugin):
    """Avalanche plugin: normalise the uint8 input batch on the device, before any other plugin or the model sees it.

    Callbacks, from Avalanche 0.6's ``SGDUpdate.training_epoch`` / ``BaseSGDTemplate.eval_epoch``:
    ``_unpack_minibatch()`` moves the batch to ``strategy.device`` (``non_blocking=True``) and
    then ``before_training_iteration`` / ``before_eval_iteration`` run, before
    ``before_forward`` and the forward. We act in the two ``*_iteration`` callbacks because:
    they are the first moment the batch is on the device; every later callback (other
    plugins' ``before_training_iteration``, ``before_forward``) already sees float inputs when
    this plugin comes first in the list; and REMIND's per-sample epoch
    (``streamcl.plugins.remind``) runs the trunk right after ``before_training_iteration``
    and calls ``before_forward`` once per example, so ``before_forward`` would be too late.
    Only uint8 batches are touched, so running twice is harmless.

    The plugin also registers :class:`_UInt8InputHook` on ``strategy.model`` (re-registered if
    the strategy swaps its model), for code that calls the model outside these loops.
    """

    def __init__(
        self,
        mean: Optional[Sequence[float]] = None,
        std: Optional[Sequence[float]] = None,
        *,
        normalize: Optional[DeviceNormalize] = None,
        channels_last: bool = False,
        hflip: bool = False,
    ):
        super().__init__()
        if normalize is None:
            if mean is None or std is None:
                raise ValueError("give mean and std, or a DeviceNormalize")
            normalize = DeviceNormalize(mean, std, channels_last=channels_last, hflip=hflip)
        self.normalize = normalize
        self._hooked: Optional[Tuple[int, Any]] = None  # (id(model), hook handle)

    def _ensure_hook(self, strategy: Any) -> None:
        model = getattr(strategy, "model", None)
        if model is None or (self._hooked is not None and self._hooked[0] == id(model)):
            return
        if self._hooked is not None:
            self._hooked[1].remove()
        # prepend: run before any hook another plugin put on the model (those must see float inputs)
        self._hooked = (id(model), model.register_forward_pre_hook(_UInt8InputHook(self.normalize), prepend=True))

    def _apply(self, strategy: Any, train: bool) -> None:
        self._ensure_hook(strategy)
        mb = strategy.mbatch
        if mb is not None and len(mb) and isinstance(mb[0], Tensor) and mb[0].dtype == torch.uint8:
            if isinstance(mb, tuple):  # _unpack_minibatch makes it a list; be safe with custom loops
                mb = strategy.mbatch = list(mb)
            mb[0] = self.normalize(mb[0], train=train)

    def before_training(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self._ensure_hook(strategy)

    def before_training_exp(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self._ensure_hook(strategy)  # model adaptation may have replaced the model

    def after_training_exp(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self._ensure_hook(strategy)  # EWC/MAS importances, WA, latent-replay passes run around here

    def before_eval(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self._ensure_hook(strategy)

    def before_training_iteration(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self._apply(strategy, train=True)

    def state_dict(self) -> Dict[str, Any]:
        """Nothing to checkpoint: the plugin is rebuilt from the scenario (streamcl.checkpoint saves this)."""
        return {}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Stateless (see :meth:`state_dict`)."""

    def before_eval_iteration(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self._apply(strategy, train=False)


def normalize_for(strategy: Any) -> Optional[DeviceNormalize]:
    """The :class:`DeviceNormalize` of a strategy's :class:`DeviceTransformPlugin` (None when it has none)."""
    for p in getattr(strategy, "plugins", None) or ():
        if isinstance(p, DeviceTransformPlugin):
            return p.normalize
    return None


def maybe_normalize(x: Tensor, strategy: Any) -> Tensor:
    """``x`` normalised by the strategy's device transform when it is a uint8 batch (eval-style), else ``x``."""
    if x.dtype != torch.uint8:
        return x
    norm = normalize_for(strategy)
    return norm(x) if norm is not None else x
