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

On CPU the result equals the decode path's ``ToTensor()`` + ``Normalize(mean, std)`` bit for
bit: the same float32 operations in the same order (divide by 255, subtract, divide), applied
on the CPU through a 256-entry table per channel holding those operations' results.

Public API (stable; ``perf/bench_gpu_stream.py`` imports it): :class:`DeviceNormalize`,
:class:`DeviceTransformPlugin`, :func:`normalize_for`.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
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

    def _stats(self, device: torch.device) -> Tuple[Tensor, Tensor]:
        key = (str(device), device.index)
        if key not in self._consts:  # built once per device, like torchvision's Normalize builds them per call
            mean = torch.as_tensor(self.mean, dtype=torch.float32, device=device).view(-1, 1, 1)
            std = torch.as_tensor(self.std, dtype=torch.float32, device=device).view(-1, 1, 1)
            self._consts[key] = (mean, std)
        return self._consts[key]

    def _lut(self) -> np.ndarray:
        """(C, 256) float32 table: every uint8 value of every channel through exactly the ops of ``__call__``."""
        if "lut" not in self.__dict__ or self.__dict__["lut"] is None:
            mean, std = self._stats(torch.device("cpu"))
            v = torch.arange(256, dtype=torch.uint8).to(torch.float32).div_(255).view(1, 1, 256)
            self.__dict__["lut"] = v.sub(mean).div_(std).view(len(self.mean), 256).numpy()
        return self.__dict__["lut"]

    def __call__(self, x: Tensor, *, train: bool = False) -> Tensor:
        if x.dtype != torch.uint8:
            raise TypeError(f"DeviceNormalize expects uint8 frames (a frame-cache batch), got {x.dtype}")
        if x.device.type == "cpu" and x.dim() in (3, 4) and x.shape[-3] == len(self.mean):
            # CPU: one table lookup per pixel instead of four passes over a float tensor (~2x faster
            # on one core). The table holds the same ops' results, so the output is the same bits.
            out = self._normalize_lut(x)
        else:
            mean, std = self._stats(x.device)
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

    def _normalize_lut(self, x: Tensor) -> Tensor:
        lut = self._lut()
        xb = x.contiguous().numpy().reshape(-1, len(self.mean), x.shape[-2] * x.shape[-1])
        out = np.empty(xb.shape, dtype=np.float32)
        for i in range(xb.shape[0]):  # per (image, channel): contiguous rows, no index buffering (mode="clip")
            for c in range(xb.shape[1]):
                np.take(lut[c], xb[i, c], out=out[i, c], mode="clip")
        return torch.from_numpy(out).view(x.shape)

    def __repr__(self) -> str:
        return (f"DeviceNormalize(mean={self.mean}, std={self.std}, channels_last={self.channels_last}, "
                f"hflip={self.hflip})")

    def __getstate__(self) -> Dict[str, Any]:  # per-device constants are rebuilt after unpickling / deepcopy
        state = dict(self.__dict__)
        state["_consts"] = {}
        state["lut"] = None
        return state


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
