"""MAS with the paper's importance accumulation, as an option next to Avalanche's ``MASPlugin``.

Avalanche's ``MASPlugin`` (0.6) and the authors' code (rahafaljundi/MAS-Memory-Aware-Synapses)
differ in three ways when the importance Omega is computed after a task:

============================  ========================================  ============================================
                              Avalanche ``MASPlugin`` (``mas``)         paper / authors' code (``mas_paper``)
============================  ========================================  ============================================
model mode                    train (dropout on, BatchNorm statistics   eval (deterministic outputs, statistics
                              updated by the importance pass)           untouched)
importance over tasks         ``alpha * old + (1 - alpha) * new``       ``old + new`` (sum over tasks)
normalisation                 per-batch mean of ||F(x)||^2, ``|grad|``  sum over the batch of ||F(x)||^2, ``|grad|``
                              averaged over batches                     averaged over samples
============================  ========================================  ============================================

The penalty is the same, ``lambda * sum Omega (theta - theta*)^2`` (Avalanche's
``before_backward``, reused). With AlexNet's dropout the train-mode pass gives
noisy gradients, and the running average halves the weight of the first task at
every new task, so the two differ on a 4-task stream. ``accumulate`` and
``mode`` switch each part back to Avalanche's choice, to ablate them. The
importance pass reads the experience's data with its eval transforms (the
training set, as the paper's ``reg_sets``, without augmentation).
"""

from __future__ import annotations

from typing import Any, Dict, Literal

import torch
from avalanche.models.utils import avalanche_forward
from avalanche.training.plugins import MASPlugin
from avalanche.training.utils import ParamData, copy_params_dict, zerolike_params_dict
from torch.utils.data import DataLoader

from streamcl.registry import register_plugin

__all__ = ["MASPaperPlugin"]


@register_plugin("mas_paper")
class MASPaperPlugin(MASPlugin):
    """MAS as in the paper: importance computed in eval mode and summed over tasks (Avalanche's ``mas`` averages).

    :param lambda_reg: penalty weight (the MAS experiment uses 0.01).
    :param accumulate: ``sum`` (paper: Omega_t = Omega_{t-1} + new) or
        ``average`` (Avalanche: ``alpha * old + (1 - alpha) * new``).
    :param mode: ``eval`` (paper) or ``train`` (Avalanche) for the importance pass.
    :param alpha: weight of the old importance when ``accumulate: average``.
    """

    def __init__(
        self,
        lambda_reg: float = 1.0,
        *,
        accumulate: Literal["sum", "average"] = "sum",
        mode: Literal["eval", "train"] = "eval",
        alpha: float = 0.5,
        verbose: bool = False,
    ):
        if accumulate not in ("sum", "average"):
            raise ValueError(f"accumulate must be 'sum' or 'average', got {accumulate!r}")
        if mode not in ("eval", "train"):
            raise ValueError(f"mode must be 'eval' or 'train', got {mode!r}")
        super().__init__(lambda_reg=lambda_reg, alpha=alpha, verbose=verbose)
        self.accumulate = accumulate
        self.mode = mode

    def _get_importance(self, strategy: Any) -> Dict[str, ParamData]:
        """Mean over the experience's samples of |d sum_batch ||F(x)||^2 / d theta| (the authors' normalisation)."""
        model = strategy.model
        importance = dict(zerolike_params_dict(model))
        dataset = strategy.experience.dataset.eval()
        loader = DataLoader(dataset, batch_size=strategy.train_mb_size, shuffle=False,
                            collate_fn=getattr(dataset, "collate_fn", None))
        was_training = model.training
        model.train(self.mode == "train")
        n = 0
        try:
            for batch in loader:
                x, t = batch[0].to(strategy.device), batch[-1].to(strategy.device)
                model.zero_grad(set_to_none=True)
                out = avalanche_forward(model, x, t)
                out.pow(2).sum().backward()
                for name, param in model.named_parameters():
                    if param.requires_grad and param.grad is not None:
                        importance[name].data += param.grad.detach().abs()
                n += len(x)
        finally:
            model.zero_grad(set_to_none=True)
            model.train(was_training)
        for k in importance:
            importance[k].data /= float(max(n, 1))
        return importance

    def after_training_exp(self, strategy: Any, **kwargs: Any) -> None:
        self.params = dict(copy_params_dict(strategy.model))
        new = self._get_importance(strategy)
        if not self.importance:
            self.importance = new
            return
        for name, cur in new.items():
            shape = cur.data.shape
            if name not in self.importance:
                self.importance[name] = ParamData(name, cur.shape, device=cur.device, init_tensor=cur.data.clone())
                continue
            old = self.importance[name].expand(shape)
            if self.accumulate == "sum":
                self.importance[name].data = old + cur.data
            else:
                self.importance[name].data = self.alpha * old + (1 - self.alpha) * cur.data

    @torch.no_grad()
    def total_importance(self) -> float:
        """Sum of every Omega (a scalar to compare runs and check accumulation)."""
        if not self.importance:
            return 0.0
        return float(sum(p.data.sum() for p in self.importance.values()))
