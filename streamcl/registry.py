"""Name -> factory registries for everything an experiment YAML can name.

Each registry maps a lower-case name to a callable (class or function) whose
keyword arguments are what the YAML entry may set. The config validator reads
the callable's signature, so a factory's parameters *are* its YAML schema.
Parameters listed in ``injected`` are supplied by the runner (the model, the
optimiser, the run context ...) and may not be set from YAML.

streamcl's own components register themselves with the decorators below when
their module is imported; Avalanche's strategies and plugins are registered by
walking ``avalanche.training`` (see :func:`load_all`).
"""

from __future__ import annotations

import importlib
import inspect
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple


@dataclass(frozen=True)
class Entry:
    """One registered component: its name, factory and one-line description."""

    name: str
    factory: Callable[..., Any]
    description: str
    injected: Tuple[str, ...] = ()
    origin: str = "streamcl"

    def parameters(self) -> Dict[str, inspect.Parameter]:
        """YAML-settable keyword parameters (``self``, ``*args``, ``**kwargs`` and injected ones left out)."""
        try:
            sig = inspect.signature(self.factory)
        except (TypeError, ValueError):  # builtins without a signature
            return {}
        out = {}
        for p in sig.parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name == "self":
                continue
            if p.name in self.injected:
                continue
            out[p.name] = p
        return out

    def wants(self, name: str) -> bool:
        """True when the factory declares a parameter called ``name`` (used for injection)."""
        try:
            return name in inspect.signature(self.factory).parameters
        except (TypeError, ValueError):
            return False


def first_line(doc: Optional[str]) -> str:
    """First sentence-ish line of a docstring, for ``streamcl list``."""
    if not doc:
        return ""
    for line in inspect.cleandoc(doc).splitlines():
        line = line.strip()
        if line:
            return line.rstrip(":")
    return ""


class Registry:
    """A named collection of factories of one kind (benchmark, model, strategy ...)."""

    def __init__(self, kind: str, injected: Sequence[str] = ()):
        self.kind = kind
        self.injected = tuple(injected)
        self._entries: Dict[str, Entry] = {}

    def add(
        self,
        name: str,
        factory: Callable[..., Any],
        description: Optional[str] = None,
        *,
        injected: Sequence[str] = (),
        origin: str = "streamcl",
        overwrite: bool = False,
    ) -> Entry:
        name = name.lower()
        if name in self._entries and not overwrite:
            if self._entries[name].factory is factory:
                return self._entries[name]
            raise ValueError(f"{self.kind} '{name}' is registered twice")
        entry = Entry(
            name=name,
            factory=factory,
            description=description or first_line(factory.__doc__),
            injected=self.injected + tuple(injected),
            origin=origin,
        )
        self._entries[name] = entry
        return entry

    def register(
        self, name: Optional[str] = None, *, description: Optional[str] = None, injected: Sequence[str] = ()
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: ``@register_model("squeezenet_cut")`` above a factory or class."""

        def deco(factory: Callable[..., Any]) -> Callable[..., Any]:
            self.add(name or snake_case(factory.__name__), factory, description, injected=injected)
            return factory

        return deco

    def get(self, name: str) -> Entry:
        return self._entries[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def names(self) -> List[str]:
        return sorted(self._entries)

    def name_of(self, factory: Callable[..., Any]) -> Optional[str]:
        for e in self._entries.values():
            if e.factory is factory:
                return e.name
        return None


# What the runner hands to every factory that declares these parameters.
BENCHMARKS = Registry("benchmark", injected=("run",))
MODELS = Registry("model", injected=("num_classes",))
STRATEGIES = Registry(
    "strategy",
    injected=(
        "model",
        "optimizer",
        "criterion",
        "evaluator",
        "plugins",
        "device",
        "train_mb_size",
        "eval_mb_size",
        "train_epochs",
        "eval_every",
        "peval_mode",
        "context",
    ),
)
PLUGINS = Registry("plugin", injected=("context",))
OPTIMIZERS = Registry("optimizer", injected=("params",))
SCHEDULERS = Registry("scheduler", injected=("optimizer",))

REGISTRIES: Dict[str, Registry] = {
    r.kind: r for r in (BENCHMARKS, MODELS, STRATEGIES, PLUGINS, OPTIMIZERS, SCHEDULERS)
}

register_benchmark = BENCHMARKS.register
register_model = MODELS.register
register_strategy = STRATEGIES.register
register_plugin = PLUGINS.register
register_optimizer = OPTIMIZERS.register
register_scheduler = SCHEDULERS.register


# Class names whose acronyms a mechanical camel->snake split would mangle.
_ALIASES = {
    "LwF": "lwf",
    "GDumb": "gdumb",
    "ICaRL": "icarl",
    "CoPE": "cope",
    "BiC": "bic",
    "GSS_greedy": "gss_greedy",
    "ER_ACE": "er_ace",
    "ER_AML": "er_aml",
    "PNNStrategy": "pnn",
    "LearningToPrompt": "l2p",
    "FromScratchTraining": "from_scratch",
    "ExpertGateStrategy": "expert_gate",
    "SupervisedContrastiveReplay": "scr",
    "RWalk": "rwalk",
    "FeCAM": "fecam",
    "RARPlugin": "rar",
    "LRSchedulerPlugin": "lr_scheduler",
    "EWCPlugin": "ewc",
    "LwFPlugin": "lwf",
    "CWRStarPlugin": "cwr_star",
    "GDumbPlugin": "gdumb",
    "BiCPlugin": "bic",
    "RWalkPlugin": "rwalk",
    "UpdatedCWRStar": "updated_cwr_star",
    "CWRStar": "cwr_star",
}


def snake_case(name: str) -> str:
    """``SynapticIntelligencePlugin`` -> ``synaptic_intelligence_plugin`` (aliases for acronyms)."""
    if name in _ALIASES:
        return _ALIASES[name]
    s = re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", name)
    return re.sub(r"_+", "_", s).lower()


_LOADED = False


def _register_avalanche() -> None:
    """Register every strategy in ``avalanche.training`` and every plugin in ``avalanche.training.plugins``."""
    import avalanche.training as avl_training
    import avalanche.training.plugins as avl_plugins
    from avalanche.core import BasePlugin
    from avalanche.training.templates.base import BaseTemplate

    for attr in sorted(getattr(avl_training, "__all__", None) or dir(avl_training)):
        obj = getattr(avl_training, attr, None)
        if not (inspect.isclass(obj) and issubclass(obj, BaseTemplate)):
            continue
        if inspect.isabstract(obj) or attr.endswith("Template") or obj.__module__.startswith(
            "avalanche.training.templates"
        ):
            continue
        name = snake_case(attr)
        if name not in STRATEGIES:
            STRATEGIES.add(name, obj, origin="avalanche")

    skip = {"EvaluationPlugin"}  # configured through the `evaluation:` section instead
    for attr in sorted(getattr(avl_plugins, "__all__", None) or dir(avl_plugins)):
        obj = getattr(avl_plugins, attr, None)
        if not (inspect.isclass(obj) and issubclass(obj, BasePlugin)) or attr in skip:
            continue
        if inspect.isabstract(obj) or attr in ("BasePlugin", "SupervisedPlugin"):
            continue
        name = snake_case(attr[: -len("Plugin")] if attr.endswith("Plugin") and attr not in _ALIASES else attr)
        if name not in PLUGINS:
            PLUGINS.add(name, obj, origin="avalanche")


# streamcl modules that register components when imported.
_MODULES = (
    "streamcl.optim",
    "streamcl.benchmarks.scenarios",
    "streamcl.models",
    "streamcl.plugins",
    "streamcl.plugins.raw_replay",
    "streamcl.strategies",
)


def load_all() -> None:
    """Import every module that registers components (idempotent; imports Avalanche)."""
    global _LOADED
    if _LOADED:
        return
    for mod in _MODULES:
        importlib.import_module(mod)
    _register_avalanche()
    _LOADED = True
