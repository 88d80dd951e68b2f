"""Which other plugins' loss terms reach an optimiser step taken on replayed latent items alone.

CRUMB's separate replay step is an optimiser step of its own on decoded feature maps: there
is no image batch in it. A plugin whose ``before_backward`` adds a term of the *parameters*
alone (EWC, MAS, SI, RWalk: ``lambda * sum Omega (theta - theta*)^2``) constrains that step
like any other, so its term is added to the replay loss. A plugin whose term reads the
mini-batch (LwF and LFL distil on ``mb_x``, BiC, MIR ...) cannot take part: replayed items
have no image for it to read. Avalanche does not tell the two kinds apart, so the parameter
penalties are listed here; a plugin of your own joins by setting the class attribute
``parameter_penalty = True`` (or opts out with ``False``).
"""

from __future__ import annotations

from typing import Any, List

from torch import Tensor

__all__ = ["is_parameter_penalty", "parameter_penalty_plugins", "add_parameter_penalties"]


def is_parameter_penalty(plugin: Any) -> bool:
    """True when ``plugin.before_backward`` adds a term that depends on the model's parameters only."""
    flag = getattr(plugin, "parameter_penalty", None)
    if flag is not None:
        return bool(flag)
    from avalanche.training.plugins import EWCPlugin, MASPlugin, RWalkPlugin, SynapticIntelligencePlugin

    return isinstance(plugin, (EWCPlugin, MASPlugin, RWalkPlugin, SynapticIntelligencePlugin))


def parameter_penalty_plugins(strategy: Any, exclude: Any = None) -> List[Any]:
    """The strategy's plugins (in order, ``exclude`` left out) whose penalty reaches latent-only steps."""
    return [p for p in getattr(strategy, "plugins", None) or [] if p is not exclude and is_parameter_penalty(p)]


def add_parameter_penalties(strategy: Any, loss: Tensor, plugins: List[Any]) -> Tensor:
    """``loss`` plus the terms ``plugins`` add in ``before_backward``; ``strategy.loss`` is left as it was.

    Each plugin's own ``before_backward`` is called with ``strategy.loss`` set to ``loss``
    (they add to it in place, as in Avalanche's iteration), so the term is exactly the one the
    plugin adds to an ordinary step.
    """
    if not plugins:
        return loss
    saved = strategy.loss
    strategy.loss = loss
    try:
        for p in plugins:
            p.before_backward(strategy)
        return strategy.loss
    finally:
        strategy.loss = saved
