"""A method of your own: pull the weights towards those learnt on the previous experience.

``@register_plugin("l2_anchor")`` makes ``{name: l2_anchor, strength: ...}`` valid in any
experiment that lists this module under ``imports:``; the keyword arguments of
``__init__`` are the YAML keys, checked against their type hints like streamcl's own.
"""

from __future__ import annotations

from avalanche.core import SupervisedPlugin

from streamcl.registry import register_plugin


@register_plugin("l2_anchor")
class L2Anchor(SupervisedPlugin):
    """Adds strength * ||w - w_previous||^2 to the loss (w_previous: the weights after the last experience)."""

    def __init__(self, strength: float = 0.1):
        super().__init__()
        self.strength = strength
        self.anchor = None  # the weights after the previous experience (none before the first)

    def before_backward(self, strategy, **kwargs):
        if self.anchor is not None:
            params = [p for p in strategy.model.parameters() if p.requires_grad]
            penalty = sum(((p - a) ** 2).sum() for p, a in zip(params, self.anchor))
            strategy.loss = strategy.loss + self.strength * penalty

    def after_training_exp(self, strategy, **kwargs):
        self.anchor = [p.detach().clone() for p in strategy.model.parameters() if p.requires_grad]
