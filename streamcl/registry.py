"""Name -> factory registries for everything an experiment YAML can name.

Each registry maps a lower-case name to a callable (class or function) whose
keyword arguments are what the YAML entry may set. The config validator reads
the callable's signature, so a factory's parameters *are* its YAML schema.
Parameters listed in ``injected`` are supplied by the runner (the model, the
optimiser, the run context ...) and may not be set from YAML.

streamcl's own components register themselves with the decorators below when
their module is imported; Avalanche's strategies and plugins are registered by
walking ``avalanche.training`` (see :func:`load_all`).

A user's own code takes part in two ways (see :func:`import_object` and
:func:`import_modules`): a ``module.path:Name`` in place of a registered name
(``plugins: [{name: mypkg.methods:MyPlugin}]``) is imported and registered under
that path on first use, and modules listed under an experiment's ``imports:`` are
imported before validation, so that their ``@register_plugin(...)`` decorators
register names that then validate like ours. Registered names are case-insensitive;
dotted paths are not (Python's module and class names are not).
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from streamcl.errors import ConfigError


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
    """The first sentence of a docstring's first paragraph, whole (for ``streamcl list``).

    Docstrings often wrap their first sentence over several lines ("ER ACE, as proposed
    in" / "<paper>"): the paragraph is joined before the sentence is cut at its first
    full stop, so no description stops mid-sentence.
    """
    if not doc:
        return ""
    paragraph: List[str] = []
    for line in inspect.cleandoc(doc).splitlines():
        line = line.strip()
        if not line:
            if paragraph:
                break
            continue
        if line.startswith((":param", ":return", "Args:", "Parameters")):
            break
        paragraph.append(line)
    text = " ".join(paragraph).rstrip(":")
    m = re.search(r"(?<!\be\.g)(?<!\bi\.e)(?<!\bet)(?<!\bal)(?<!\bvs)\.(\s|$)", text)
    return text[: m.start() + 1] if m else text


def describe(factory: Callable[..., Any]) -> str:
    """A one-line description of a factory: its docstring's, else its ``__init__``'s, else its kind."""
    text = first_line(getattr(factory, "__doc__", None))
    if not text and inspect.isclass(factory):
        text = first_line(getattr(factory.__init__, "__doc__", None))
    return text or f"{factory.__name__} (no description in its docstring)"


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
        name = _key(name)
        if name in self._entries and not overwrite:
            if self._entries[name].factory is factory:
                return self._entries[name]
            raise ValueError(f"{self.kind} '{name}' is registered twice ({_qualname(self._entries[name].factory)} "
                             f"and {_qualname(factory)}); register one of them under another name")
        entry = Entry(
            name=name,
            factory=factory,
            description=description or describe(factory),
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
            self.add(name or snake_case(factory.__name__), factory, description, injected=injected,
                     origin=_origin(factory))
            return factory

        return deco

    def get(self, name: str) -> Entry:
        """The entry registered as ``name``; a ``module:Name`` path is imported and registered on first use.

        Raises KeyError for an unknown plain name, ConfigError for a dotted path that does
        not import or names no class or function (see :meth:`resolve`).
        """
        entry = self._entries.get(_key(name))
        if entry is None and is_dotted_path(name):
            return self.resolve(name)
        if entry is None:
            raise KeyError(name)
        return entry

    def resolve(self, path: str, *, search: Sequence[Path] = ()) -> Entry:
        """Import ``module.path:Name`` and register it under that path (ConfigError says what went wrong).

        A class must be of this registry's kind (a plugin a ``BasePlugin``, a model an
        ``nn.Module`` ...); a function is trusted to return one. The new entry's ``origin``
        is the module's top-level package, so ``torch.optim:NAdam`` is checked like
        torch's registered optimisers. ``search``: folders to import the module from when it
        is not on ``sys.path`` (see :func:`import_modules`).
        """
        entry = self._entries.get(_key(path))
        if entry is not None:
            return entry
        factory = import_object(path, search=search)
        if not callable(factory):
            raise ConfigError(f"'{path}' is a {type(factory).__name__}, not a class or function; name the "
                              f"{self.kind}'s class or factory function after ':'")
        base = _kind_base(self.kind)
        if inspect.isclass(factory) and base is not None and not issubclass(factory, base):
            raise ConfigError(f"'{path}' is a class that does not subclass {_qualname(base)}, as every "
                              f"{self.kind} must; name such a class, or a function that builds one")
        return self.add(path, factory, origin=path.partition(":")[0].split(".")[0])

    def __contains__(self, name: object) -> bool:
        """True for a registered name (a dotted path only once it has been resolved; nothing is imported)."""
        return isinstance(name, str) and _key(name) in self._entries

    def __iter__(self) -> Iterator[Entry]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def names(self) -> List[str]:
        return sorted(self._entries)

    def name_of(self, factory: Callable[..., Any]) -> Optional[str]:
        for e in self._entries.values():
            if e.factory is factory:
                return e.name
        return None


def _key(name: str) -> str:
    """Registry key of ``name``: registered names are case-insensitive, dotted paths are not."""
    return name if ":" in name else name.lower()


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


def _origin(factory: Any) -> str:
    """``streamcl`` for our own components, else the top-level package that defines ``factory``."""
    module = getattr(factory, "__module__", None) or "streamcl"
    return module.split(".")[0]


_DOTTED = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")
_MODULE = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")


def is_dotted_path(name: object) -> bool:
    """True for ``package.module:Name`` (or ``module:Outer.Inner``): a user's component named by its import path."""
    return isinstance(name, str) and _DOTTED.match(name) is not None


def _first_line(e: BaseException, limit: int = 200) -> str:
    """``ModuleNotFoundError: No module named 'x'``: an exception's type and first line, cut to ``limit``."""
    text = (str(e).strip().splitlines() or [""])[0].strip()
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def import_modules(names: Sequence[str], *, search: Sequence[Path] = ()) -> List[ModuleType]:
    """Import each module of ``names`` (an experiment's ``imports:``), so that its registrations take effect.

    A module not found on ``sys.path`` is looked for in ``search`` (the folder of the
    experiment file that names it): a ``mymethods.py`` next to the YAML imports without
    setting PYTHONPATH. Any failure raises ConfigError naming the module and the first
    line of the exception it raised (ImportError, SyntaxError, or whatever its code raised).
    """
    out = []
    for name in names:
        if not isinstance(name, str) or not _MODULE.match(name):
            raise ConfigError(f"{str(name)[:80]!r} is not a module path; write e.g. mypkg.methods")
        out.append(_import(name, search))
    return out


def _import(name: str, search: Sequence[Path]) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as e:
        top = name.split(".")[0]
        if e.name == top:
            for folder in search:
                folder = Path(folder)
                if (folder / f"{top}.py").is_file() or (folder / top).is_dir():
                    if str(folder) not in sys.path:
                        sys.path.append(str(folder))  # (stays: the runner imports the same module again)
                    importlib.invalidate_caches()
                    return _import(name, ())
            raise ConfigError(f"cannot import module '{name}' ({_first_line(e)}); put the folder that holds "
                              f"'{top}' on PYTHONPATH or next to the experiment file, or pip install it") from None
        raise ConfigError(f"cannot import module '{name}' ({_first_line(e)}); fix the module") from None
    except Exception as e:  # the module's own code failed: SyntaxError, NameError, a registration clash ...
        raise ConfigError(f"cannot import module '{name}' ({_first_line(e)}); fix the module") from None


def import_object(path: str, *, search: Sequence[Path] = ()) -> Any:
    """``package.module:Name`` -> the object (ConfigError naming the module and what failed)."""
    if not is_dotted_path(path):
        raise ConfigError(f"'{path}' is not an import path; write package.module:Name")
    module_name, _, attr = path.partition(":")
    obj: Any = _import(module_name, search)
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(part, names, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"module '{module_name}' has no attribute '{attr}'{hint}; check the name after ':'")
        obj = getattr(obj, part)
    return obj


# The class every component of a kind must be (a factory function is trusted to return one).
_KIND_BASES = {
    "model": ("torch.nn", "Module"),
    "strategy": ("avalanche.training.templates.base", "BaseTemplate"),
    "plugin": ("avalanche.core", "BasePlugin"),
    "optimizer": ("torch.optim", "Optimizer"),
    "scheduler": ("torch.optim.lr_scheduler", "LRScheduler"),
}


def _kind_base(kind: str) -> Optional[type]:
    if kind not in _KIND_BASES:
        return None
    module, attr = _KIND_BASES[kind]
    return getattr(importlib.import_module(module), attr, None)


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

__all__ = [
    "Entry",
    "Registry",
    "BENCHMARKS",
    "MODELS",
    "STRATEGIES",
    "PLUGINS",
    "OPTIMIZERS",
    "SCHEDULERS",
    "REGISTRIES",
    "register_benchmark",
    "register_model",
    "register_strategy",
    "register_plugin",
    "register_optimizer",
    "register_scheduler",
    "is_dotted_path",
    "import_modules",
    "import_object",
    "load_all",
]


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
    "streamcl.models.classifiers",
    "streamcl.models.dytox",
    "streamcl.benchmarks.classic",
    "streamcl.plugins",
    "streamcl.plugins.mas_paper",
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
