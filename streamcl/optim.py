"""Optimisers and learning-rate schedules an experiment YAML can name.

torch's own classes are registered as they are, so their keyword arguments are
the YAML keys (``optimizer: {name: sgd, lr: 0.001, momentum: 0.9}``). A schedule
runs through Avalanche's ``LRSchedulerPlugin``; the plugin's options sit next to
the scheduler's own keys (see :data:`SCHEDULE_OPTIONS`).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable

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
