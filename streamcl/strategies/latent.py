"""What CRUMB and REMIND share as strategies: ``Naive`` with a latent-replay plugin first in its plugins.

:class:`LatentReplayStrategy` is the base of :class:`streamcl.strategies.CRUMB` and
:class:`streamcl.strategies.REMIND` (each in its own module, with its full signature);
:func:`latent_replay_strategy` builds the same kind of strategy for a
:class:`~streamcl.plugins.LatentReplayPlugin` subclass of your own.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Type

from avalanche.training import Naive

from streamcl.errors import ConfigError
from streamcl.plugins.latent_replay import LatentReplayPlugin

__all__ = ["LatentReplayStrategy", "latent_replay_strategy"]


class LatentReplayStrategy(Naive):
    """``avalanche.training.Naive`` whose first plugin is a latent-replay plugin (``self.latent_plugin``).

    :param latent_plugin: the :class:`~streamcl.plugins.LatentReplayPlugin` (CRUMB, REMIND ...).
    :param first_experience_epochs: epochs on the first experience (the papers train it longer:
        10, then 1 pass); ``None`` keeps ``train_epochs`` throughout. ``streamcl run`` leaves it
        ``None`` and sets ``train_epochs`` per experience from the YAML's
        ``first_experience_epochs`` itself.
    :param plugins: further plugins (EWC, MAS, LwF, metrics ...), after ``latent_plugin``.
    :param kwargs: the other keyword arguments of ``avalanche.training.Naive``.
    """

    def __init__(
        self,
        latent_plugin: LatentReplayPlugin,
        *,
        first_experience_epochs: Optional[int] = None,
        plugins: Optional[Sequence[Any]] = None,
        **kwargs: Any,
    ) -> None:
        if first_experience_epochs is not None and int(first_experience_epochs) < 1:
            raise ConfigError(f"first_experience_epochs must be >= 1 (or null), got {first_experience_epochs}",
                              key="first_experience_epochs")
        super().__init__(plugins=[latent_plugin, *(plugins or [])], **kwargs)
        self.latent_plugin = latent_plugin
        self.first_experience_epochs = None if first_experience_epochs is None else int(first_experience_epochs)
        self.later_experience_epochs = int(self.train_epochs)

    def _before_training_exp(self, **kwargs: Any) -> None:
        """Set ``train_epochs`` for this experience when ``first_experience_epochs`` is given."""
        if self.first_experience_epochs is not None:
            first = self.first_experience_epochs if _is_first_experience(self) else self.later_experience_epochs
            self.train_epochs = first
        super()._before_training_exp(**kwargs)


def _is_first_experience(strategy: Any) -> bool:
    """True while training the stream's first experience (each mini-experience of it in online streams)."""
    exp = strategy.experience
    try:
        exp = getattr(exp, "origin_experience", None) or exp
        index = exp.current_experience
    except Exception:  # attributes masked (no access to task boundaries)
        return strategy.clock.train_exp_counter == 0
    return int(index) == 0


def latent_replay_strategy(name: str, plugin_cls: Type[LatentReplayPlugin], doc: str) -> type:
    """A :class:`LatentReplayStrategy` subclass whose constructor also takes ``plugin_cls``'s keyword arguments.

    For a plugin of your own; :class:`~streamcl.strategies.CRUMB` and
    :class:`~streamcl.strategies.REMIND` are written out with their full signatures instead.
    """
    import inspect

    plugin_params = [n for n, p in inspect.signature(plugin_cls).parameters.items()
                     if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]

    def __init__(self: Any, **kwargs: Any) -> None:
        plugin_kwargs: Dict[str, Any] = {k: kwargs.pop(k) for k in plugin_params if k in kwargs}
        LatentReplayStrategy.__init__(self, plugin_cls(**plugin_kwargs), **kwargs)

    __init__.__doc__ = doc
    return type(name, (LatentReplayStrategy,), {"__init__": __init__, "__doc__": doc, "plugin_class": plugin_cls})


def __getattr__(name: str) -> Any:
    # CRUMB and REMIND lived here before they got modules of their own: keep the old import path working.
    if name in ("CRUMB", "REMIND"):
        import importlib

        return getattr(importlib.import_module(f"streamcl.strategies.{name.lower()}"), name)
    raise AttributeError(f"module 'streamcl.strategies.latent' has no attribute {name!r}")
