"""CRUMB and REMIND as ready-made strategies: ``avalanche.training.Naive`` + the latent-replay plugin.

``CRUMB(model=..., optimizer=..., train_mb_size=21, memory={"bytes": "2.26MB"})``
is exactly ``Naive(model=..., optimizer=..., train_mb_size=21,
plugins=[CRUMBPlugin(memory=...)])``: the keyword arguments of Avalanche's
``Naive`` (``model, optimizer, criterion, train_mb_size, train_epochs,
eval_mb_size, device, plugins, evaluator, eval_every``) plus those of the
plugin. The plugin instance is ``strategy.latent_plugin`` and comes first in
``strategy.plugins``.
"""

from __future__ import annotations

import inspect
import typing
from typing import Any, Dict, List, Type

from avalanche.training import Naive

from streamcl.plugins.crumb import CRUMBPlugin
from streamcl.plugins.latent_replay import LatentReplayPlugin
from streamcl.plugins.remind import REMINDPlugin
from streamcl.registry import register_strategy

__all__ = ["CRUMB", "REMIND", "latent_replay_strategy"]

_NAIVE_KEYS = (
    "model",
    "optimizer",
    "criterion",
    "train_mb_size",
    "train_epochs",
    "eval_mb_size",
    "device",
    "plugins",
    "evaluator",
    "eval_every",
)


def _resolved_params(func: Any, skip: tuple = ("self",)) -> List[inspect.Parameter]:
    """Keyword parameters of ``func`` with evaluated annotations (for the YAML validator)."""
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # unresolved forward references: keep the raw annotations
        hints = {}
    out = []
    for p in inspect.signature(func).parameters.values():
        if p.name in skip or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        ann = hints.get(p.name, p.annotation)
        out.append(p.replace(kind=inspect.Parameter.KEYWORD_ONLY, annotation=ann))
    return out


def latent_replay_strategy(name: str, plugin_cls: Type[LatentReplayPlugin], doc: str) -> type:
    """Build a ``Naive`` subclass whose constructor also takes ``plugin_cls``'s keyword arguments."""
    naive_params = [p for p in _resolved_params(Naive.__init__) if p.name in _NAIVE_KEYS]
    naive_names = {p.name for p in naive_params}
    plugin_params = [p for p in _resolved_params(plugin_cls.__init__) if p.name not in naive_names]
    plugin_names = tuple(p.name for p in plugin_params)

    def __init__(self, **kwargs: Any) -> None:
        plugin_kwargs: Dict[str, Any] = {k: kwargs.pop(k) for k in plugin_names if k in kwargs}
        plugin = plugin_cls(**plugin_kwargs)
        plugins = [plugin] + list(kwargs.pop("plugins", None) or [])
        self.latent_plugin = plugin
        Naive.__init__(self, plugins=plugins, **kwargs)

    sig = inspect.Signature(
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)] + naive_params + plugin_params
    )
    __init__.__signature__ = sig  # type: ignore[attr-defined]
    __init__.__annotations__ = {p.name: p.annotation for p in sig.parameters.values() if p.name != "self"}
    __init__.__doc__ = doc
    cls = type(name, (Naive,), {"__init__": __init__, "__doc__": doc, "__module__": __name__, "plugin_class": plugin_cls})
    cls.__qualname__ = name
    return cls


CRUMB = register_strategy("crumb")(
    latent_replay_strategy(
        "CRUMB",
        CRUMBPlugin,
        """CRUMB strategy: Naive fine-tuning of a SplitNet's head + CRUMBPlugin (compressed latent replay).

        Keyword arguments: those of ``avalanche.training.Naive`` and of
        :class:`streamcl.plugins.CRUMBPlugin` (memory, n_blocks, block_dim, init, ...).
        Paper schedule: train_mb_size 21 (video datasets) or 128, SGD lr 1e-3, 10 epochs
        on the first experience then 1.
        """,
    )
)

REMIND = register_strategy("remind")(
    latent_replay_strategy(
        "REMIND",
        REMINDPlugin,
        """REMIND strategy: Naive training of a SplitNet's head + REMINDPlugin (PQ latent replay).

        Keyword arguments: those of ``avalanche.training.Naive`` and of
        :class:`streamcl.plugins.REMINDPlugin`. REMIND streams one example per
        step in the paper: use ``train_mb_size=1`` for that setting.
        """,
    )
)
