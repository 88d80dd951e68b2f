"""Optimisers and learning-rate schedules an experiment YAML can name.

torch's own classes are registered as they are, so their keyword arguments are
the YAML keys (``optimizer: {name: sgd, lr: 0.001, momentum: 0.9}``). A schedule
runs through Avalanche's ``LRSchedulerPlugin``; the plugin's options sit next to
the scheduler's own keys (see :data:`SCHEDULE_OPTIONS`).
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Dict, Iterable, Optional

import torch
from torch.optim import lr_scheduler

from streamcl.registry import OPTIMIZERS, SCHEDULERS

for _name, _cls in {
    "sgd": torch.optim.SGD,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "rmsprop": torch.optim.RMSprop,
    "adagrad": torch.optim.Adagrad,
}.items():
    OPTIMIZERS.add(_name, _cls, origin="torch")

for _name, _cls in {
    "step": lr_scheduler.StepLR,
    "multistep": lr_scheduler.MultiStepLR,
    "cosine": lr_scheduler.CosineAnnealingLR,
    "exponential": lr_scheduler.ExponentialLR,
    "linear": lr_scheduler.LinearLR,
    "constant": lr_scheduler.ConstantLR,
}.items():
    SCHEDULERS.add(_name, _cls, origin="torch")

# Keys of a `scheduler:` section that configure Avalanche's LRSchedulerPlugin
# rather than the scheduler itself, with their defaults and types.
SCHEDULE_OPTIONS: Dict[str, Any] = {
    "step_granularity": "epoch",  # "epoch" | "iteration"
    "reset_scheduler": True,  # restart the schedule at every experience
    "reset_lr": True,  # restore the initial lr at every experience
    "first_exp_only": False,
}


def build_optimizer(cfg: Dict[str, Any], params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """``{name: sgd, lr: ...}`` -> optimiser over ``params``."""
    kwargs = {k: v for k, v in cfg.items() if k != "name"}
    return OPTIMIZERS.get(cfg["name"]).factory(params, **kwargs)


def build_schedule(cfg: Dict[str, Any], optimizer: torch.optim.Optimizer):
    """``{name: step, step_size: 15, gamma: 0.1, step_granularity: epoch}`` -> LRSchedulerPlugin."""
    from avalanche.training.plugins import LRSchedulerPlugin

    options = {k: cfg.get(k, v) for k, v in SCHEDULE_OPTIONS.items()}
    kwargs = {k: v for k, v in cfg.items() if k != "name" and k not in SCHEDULE_OPTIONS}
    scheduler = SCHEDULERS.get(cfg["name"]).factory(optimizer, **kwargs)
    return LRSchedulerPlugin(scheduler, **options)


# torch's messages name some arguments in words ("Invalid learning rate: -1").
_TORCH_WORDS = {
    "learning rate": "lr",
    "beta": "betas",
    "epsilon": "eps",
    "starting multiplicative": "start_factor",
    "ending multiplicative": "end_factor",
    "constant multiplicative": "factor",
}


def culprit(message: str, keys: Iterable[str]) -> Optional[str]:
    """The key among ``keys`` that a torch error ``message`` is about, if it can be told."""
    keys = [k for k in keys if isinstance(k, str)]
    low = message.lower()
    for k in sorted(keys, key=len, reverse=True):
        if re.search(rf"(?<![a-z0-9_]){re.escape(k.lower())}(?![a-z0-9_])", low):
            return k
    for words, k in _TORCH_WORDS.items():
        if words in low and k in keys:
            return k
    return None


def probe_optimizer(cfg: Dict[str, Any]) -> torch.optim.Optimizer:
    """Build the optimiser ``cfg`` names over a dummy parameter, so that torch checks its values at config time.

    Raises whatever torch raises (``ValueError: Invalid learning rate: -1`` ...). ``fused``
    is left out: whether it is supported depends on the device of the real parameters.
    """
    kwargs = {k: v for k, v in cfg.items() if k not in ("name", "fused")}
    return OPTIMIZERS.get(cfg["name"]).factory([torch.nn.Parameter(torch.zeros(1))], **kwargs)


def probe_schedule(cfg: Dict[str, Any], optimizer: torch.optim.Optimizer, steps: int = 3) -> None:
    """Build the schedule ``cfg`` names on ``optimizer`` (a probe) and step it a few times.

    torch checks some values when it builds a scheduler (LinearLR's factors) and others only
    when it steps (StepLR's ``step_size: 0`` divides by zero): both surface here, at config time.
    """
    kwargs = {k: v for k, v in cfg.items() if k != "name" and k not in SCHEDULE_OPTIONS}
    scheduler = SCHEDULERS.get(cfg["name"]).factory(optimizer, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(steps):
            optimizer.step()
            scheduler.step()
