"""Experiment YAML -> validated experiment spec.

Loading is strict so that a typo never silently runs the wrong experiment:
every key is checked against the schema of the section it sits in, and a
component's keys (``benchmark``, ``model``, ``strategy``, each plugin ...) are
checked against the signature of the factory its ``name`` selects. The first
problem raises :class:`~streamcl.errors.ConfigError` naming the file the key
came from, its key path and the valid choices.

A file may ``include:`` other files (deep-merged underneath it), set grid axes
``benchmarks:`` and ``methods:`` (label -> partial config, deep-merged over the
base), and reference environment variables as ``${VAR}`` or ``${VAR:-default}``.
``-o key.path=value`` overrides are applied last.
"""

from __future__ import annotations

import collections.abc
import copy
import difflib
import inspect
import os
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import yaml

from streamcl.errors import ConfigError
from streamcl.registry import BENCHMARKS, MODELS, OPTIMIZERS, PLUGINS, SCHEDULERS, STRATEGIES, Registry

KeyPath = Tuple[Union[str, int], ...]
_UNIONS = (Union, types.UnionType)


# --------------------------------------------------------------------------- YAML


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_TOKEN = re.compile(r"__streamcl_env_([0-9a-f]+)__")


def _env_token(ref: str) -> str:
    """``${VAR}`` as a plain-scalar-safe token that carries the reference itself (hex)."""
    return f"__streamcl_env_{ref.encode().hex()}__"


class _Loader(yaml.SafeLoader):
    """Safe loader that also reads ``1e-3`` as a float (YAML 1.1 wants ``1.0e-3``)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def parse_value(text: str) -> Any:
    """A ``-o`` value as YAML (``0.01`` -> float, ``[0, 1]`` -> list, ``null`` -> None)."""
    try:
        return yaml.load(text, Loader=_Loader)
    except yaml.YAMLError:
        return text


def fmt_path(path: KeyPath) -> str:
    """``("plugins", 0, "lr")`` -> ``plugins[0].lr``."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "<top level>"


def _read_yaml(path: Path, key_hint: str = "") -> Dict[str, Any]:
    if not path.is_file():
        raise ConfigError(
            f"file not found{' (' + key_hint + ')' if key_hint else ''}; check the path", file=path
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read the file ({e})", file=path) from None
    # `${VAR}` is not a valid plain scalar inside flow mappings ({root: ${X}}): protect it
    # as a token, parse, and expand it later (expand_env) where its key path is known.
    text = _ENV.sub(lambda m: _env_token(m.group(0)), text)
    try:
        doc = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"invalid YAML{where}: {problem}", file=path) from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"the file must hold a mapping of keys, not a {type(doc).__name__}", file=path)
    return doc


def deep_merge(base: Any, over: Any) -> Any:
    """Mappings merge key by key; lists and scalars in ``over`` replace those in ``base``."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = deep_merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(over)


class Origins:
    """Which file (and which displayed key) every key path of a merged document came from."""

    def __init__(self) -> None:
        self._map: Dict[KeyPath, Tuple[str, KeyPath]] = {}

    def record(self, doc: Any, source: str, prefix: KeyPath = (), shown: Optional[KeyPath] = None) -> None:
        shown = prefix if shown is None else shown
        self._map[prefix] = (source, shown)
        if isinstance(doc, dict):
            for k, v in doc.items():
                self.record(v, source, prefix + (k,), shown + (k,))
        elif isinstance(doc, list):
            for i, v in enumerate(doc):
                self.record(v, source, prefix + (i,), shown + (i,))

    def locate(self, path: KeyPath) -> Tuple[Optional[str], str]:
        """(file, displayed key path) for ``path``: the longest recorded prefix decides."""
        for n in range(len(path), -1, -1):
            hit = self._map.get(tuple(path[:n]))
            if hit is not None:
                source, shown = hit
                return source, fmt_path(shown + tuple(path[n:]))
        return None, fmt_path(path)

    def copy(self) -> Origins:
        o = Origins()
        o._map = dict(self._map)
        return o

    def rebase(self, src_prefix: KeyPath, dst_prefix: KeyPath) -> None:
        """Make keys recorded under ``src_prefix`` also answer for ``dst_prefix`` (grid cells)."""
        for k, v in list(self._map.items()):
            if k[: len(src_prefix)] == src_prefix:
                self._map[dst_prefix + k[len(src_prefix) :]] = v


def load_document(path: Union[str, Path], _stack: Sequence[Path] = ()) -> Tuple[Dict[str, Any], Origins]:
    """Read ``path`` with its ``include:`` files merged underneath, recording where each key came from."""
    path = Path(path)
    real = path.resolve()
    if real in _stack:
        chain = " -> ".join(str(p) for p in (*_stack, real))
        raise ConfigError(f"include cycle: {chain}", file=path, key="include")
    doc = _read_yaml(path)
    includes = doc.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError("must be a file path or a list of file paths", file=path, key="include")
    merged: Dict[str, Any] = {}
    origins = Origins()
    for inc in includes:
        inc_path = (path.parent / os.path.expandvars(inc)).resolve()
        if not inc_path.is_file():
            raise ConfigError(f"included file not found: {inc_path}; paths are relative to {path.parent}",
                              file=path, key="include")
        sub, sub_origins = load_document(inc_path, (*_stack, real))
        merged = deep_merge(merged, sub)
        origins._map.update(sub_origins._map)
    merged = deep_merge(merged, doc)
    origins.record(doc, str(path))
    return merged, origins


_INDEX = re.compile(r"^(\w[\w-]*)((?:\[\d+\])*)$")


def _split_key(key: str) -> List[Union[str, int]]:
    parts: List[Union[str, int]] = []
    for chunk in key.split("."):
        if chunk.isdigit():
            parts.append(int(chunk))
            continue
        m = _INDEX.match(chunk)
        if not m:
            raise ConfigError(f"bad key path '{key}' (write e.g. strategy.optimizer.lr or plugins[0].mem_size)",
                              file="-o")
        parts.append(m.group(1))
        parts.extend(int(i) for i in re.findall(r"\[(\d+)\]", m.group(2)))
    return parts


def apply_override(doc: Dict[str, Any], origins: Origins, item: str) -> None:
    """Apply one ``key.path=value`` override in place."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' must look like key.path=value", file="-o")
    key, _, text = item.partition("=")
    parts = _split_key(key.strip())
    node: Any = doc
    for i, p in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, dict):
            if p not in node or node[p] is None:
                node[p] = [] if isinstance(nxt, int) else {}
            node = node[p]
        elif isinstance(node, list) and isinstance(p, int) and p < len(node):
            node = node[p]
        else:
            raise ConfigError(f"cannot set '{key}': {fmt_path(tuple(parts[: i + 1]))} is not a mapping or "
                              "an existing list item", file="-o")
    last = parts[-1]
    value = parse_value(text)
    if isinstance(node, dict):
        node[last] = value
    elif isinstance(node, list) and isinstance(last, int) and last <= len(node):
        node[last:last + 1] = [value]
    else:
        raise ConfigError(f"cannot set '{key}'", file="-o")
    origins.record(value, f"-o {item}", tuple(parts))


def expand_env(doc: Any, origins: Origins, path: KeyPath = ()) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string value."""
    if isinstance(doc, dict):
        return {k: expand_env(v, origins, path + (k,)) for k, v in doc.items()}
    if isinstance(doc, list):
        return [expand_env(v, origins, path + (i,)) for i, v in enumerate(doc)]
    if isinstance(doc, str) and "__streamcl_env_" in doc:
        doc = _TOKEN.sub(lambda m: bytes.fromhex(m.group(1)).decode(), doc)
    if isinstance(doc, str) and "${" in doc:

        def sub(m: re.Match[str]) -> str:
            var, default = m.group(1), m.group(2)
            if var in os.environ:
                return os.environ[var]
            if default is not None:
                return default
            file, key = origins.locate(path)
            raise ConfigError(f"environment variable {var} is not set; export it or write ${{{var}:-default}}",
                              file=file, key=key)

        text = _ENV.sub(sub, doc)
        return parse_value(text) if text != doc and _ENV.fullmatch(doc) else text
    return doc


# --------------------------------------------------------------------------- types


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in _UNIONS:
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


_YAML_TYPES = (bool, int, float, str, list, dict, type(None))


def _is_yaml_type(tp: Any) -> bool:
    """True when a YAML value can ever be of type ``tp`` (False for modules, callables, objects)."""
    if tp is Any or tp is inspect.Parameter.empty or isinstance(tp, (str, typing.TypeVar)):
        return True
    origin = typing.get_origin(tp)
    if origin in _UNIONS:
        return any(_is_yaml_type(a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return True
    if origin is not None:
        tp = origin
    if tp in (typing.Sequence, typing.Mapping, collections.abc.Sequence, collections.abc.Mapping):
        return True
    try:
        return any(issubclass(t, tp) for t in _YAML_TYPES) or issubclass(tp, (list, tuple, dict))
    except TypeError:
        return True


def check_type(value: Any, tp: Any) -> Tuple[bool, Any]:
    """(ok, value coerced to ``tp``) for a YAML value against a type hint; unknown hints accept anything."""
    if tp is Any or tp is inspect.Parameter.empty or isinstance(tp, (str, typing.TypeVar)):
        return True, value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in _UNIONS:
        for a in sorted(args, key=lambda a: a is float):  # prefer exact matches (int before float)
            ok, v = check_type(value, a)
            if ok:
                return True, v
        return False, value
    if origin is typing.Literal:
        return value in args, value
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if tp is str:
        return isinstance(value, str), value
    base = origin or tp
    is_seq = base in (list, tuple, typing.Sequence, collections.abc.Sequence) or (
        inspect.isclass(base) and issubclass(base, (list, tuple)) and base is not str
    )
    if is_seq:
        if not isinstance(value, list):
            return False, value
        item_tp = args[0] if len(args) == 1 or (len(args) == 2 and args[1] is Ellipsis) else Any
        out = []
        for v in value:
            ok, v2 = check_type(v, item_tp)
            if not ok:
                return False, value
            out.append(v2)
        return True, tuple(out) if base is tuple else out
    if base in (dict, typing.Mapping, collections.abc.Mapping) or (inspect.isclass(base) and issubclass(base, dict)):
        return isinstance(value, dict), value
    if not _is_yaml_type(tp):
        return value is None, value
    return True, value


def _hints(factory: Any) -> Dict[str, Any]:
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        return typing.get_type_hints(target)
    except Exception:  # unresolvable forward references: fall back to raw annotations
        return {k: v for k, v in getattr(target, "__annotations__", {}).items() if not isinstance(v, str)}


# Many Avalanche plugins carry no type hints (``EWCPlugin(ewc_lambda, ...)``); for a
# hint-less parameter without a default, its name says what it holds.
_NAME_TYPES = (
    (re.compile(r"(^|_)(lambda|lamb|alpha|beta|temperature|temp|lr|gamma|eps|epsilon|margin|decay)(_|$)"), float),
    (re.compile(r"(_size|_sizes)$|^(n|num|nb)_|^patterns_per_|_per_(exp|experience|class)$|_epochs$"), int),
)


def param_type(param: inspect.Parameter, hints: Dict[str, Any]) -> Any:
    """The hint for a parameter, else the type of its default, else a type its name implies."""
    tp = hints.get(param.name, inspect.Parameter.empty)
    if tp is inspect.Parameter.empty and param.default is inspect.Parameter.empty:
        for pattern, guess in _NAME_TYPES:
            if pattern.search(param.name):
                return guess
    if tp is inspect.Parameter.empty and param.default is not inspect.Parameter.empty:
        d = param.default
        if isinstance(d, bool):
            return bool
        if isinstance(d, float):
            return float
        if isinstance(d, int):  # unannotated `alpha=1` may well be given 0.5
            return Union[int, float]
        if isinstance(d, str):
            return str
    return tp


# --------------------------------------------------------------------------- validation


class _Checker:
    """Walks one merged document, raising ConfigError at the first bad key."""

    def __init__(self, origins: Origins):
        self.origins = origins

    def fail(self, path: KeyPath, msg: str) -> None:
        file, key = self.origins.locate(path)
        raise ConfigError(msg, file=file, key=key)

    def mapping(self, path: KeyPath, value: Any) -> Dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping of keys, got {type(value).__name__} {value!r}")
        return value

    def keys(self, path: KeyPath, value: Dict[str, Any], allowed: Sequence[str], required: Sequence[str] = ()):
        for k in value:
            if k not in allowed:
                self.unknown(path + (k,), k, allowed)
        for k in required:
            if k not in value:
                self.fail(path, f"missing required key '{k}'")

    def unknown(self, path: KeyPath, key: Any, allowed: Sequence[str], what: str = "key", owner: str = "") -> None:
        close = difflib.get_close_matches(str(key), [str(a) for a in allowed], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        valid = ", ".join(sorted(str(a) for a in allowed)) or "none"
        of = f" for {owner}" if owner else ""
        self.fail(path, f"unknown {what} '{key}'{of}{hint}; valid: {valid}")

    def typed(self, path: KeyPath, value: Any, tp: Any) -> Any:
        ok, out = check_type(value, tp)
        if not ok:
            if not _is_yaml_type(tp):
                self.fail(path, f"takes a Python object ({_type_name(tp)}) and cannot be set from YAML; "
                                "remove the key or build this component in Python")
            self.fail(path, f"must be {_type_name(tp)}, got {type(value).__name__} {value!r}")
        return out

    def component(
        self, path: KeyPath, value: Any, registry: Registry, extra: Optional[Dict[str, Any]] = None
    ) -> Dict[str, Any]:
        """``{name: ..., **kwargs}`` checked against the named factory's signature (+ ``extra`` keys)."""
        extra = extra or {}
        if isinstance(value, str):
            value = {"name": value}
        value = dict(self.mapping(path, value))
        name = value.get("name")
        if name is None:
            self.fail(path, f"missing required key 'name' (the {registry.kind}; `streamcl list` shows them)")
        if not isinstance(name, str) or name.lower() not in registry:
            self.unknown(path + ("name",), name, registry.names(), what=registry.kind)
        value["name"] = name.lower()
        entry = registry.get(name)
        params = entry.parameters()
        hints = _hints(entry.factory)
        for k in list(value):
            if k == "name":
                continue
            if k in extra:
                value[k] = self.typed(path + (k,), value[k], extra[k])
            elif k in params:
                value[k] = self.typed(path + (k,), value[k], param_type(params[k], hints))
            elif k in entry.injected:
                self.fail(path + (k,), f"is set by streamcl's runner for {registry.kind} '{entry.name}', "
                                       "not from YAML; remove it")
            else:
                self.unknown(path + (k,), k, [*params, *extra], owner=f"{registry.kind} '{entry.name}'")
        # Factories may check values further at load time: `config_checks = {"memory": parse_memory}`.
        for k, check in getattr(entry.factory, "config_checks", {}).items():
            if k in value and value[k] is not None:
                try:
                    check(value[k])
                except (ValueError, TypeError, ConfigError) as e:
                    self.fail(path + (k,), getattr(e, "detail", None) or str(e))
        for p in params.values():
            if p.default is inspect.Parameter.empty and p.name not in value:
                tp = param_type(p, hints)
                if not _is_yaml_type(tp):
                    self.fail(path, f"{registry.kind} '{entry.name}' needs a Python object for '{p.name}' "
                                    f"({_type_name(tp)}) and cannot be built from YAML alone")
                self.fail(path, f"missing required key '{p.name}' ({_type_name(tp)}) for "
                                f"{registry.kind} '{entry.name}'")
        return value


# Keys of the `strategy:` section that streamcl handles itself, next to the strategy's own arguments.
STRATEGY_KEYS: Dict[str, Any] = {
    "train_mb_size": int,
    "eval_mb_size": Optional[int],
    "train_epochs": int,
    "first_experience_epochs": Optional[int],
    "optimizer": dict,
    "scheduler": Optional[dict],
}
EVALUATION_KEYS = ("metrics", "loggers", "eval_on")
METHOD_KEYS = ("strategy", "plugins", "model", "description")
TOP_KEYS = (
    "name",
    "description",
    "runs",
    "benchmark",
    "benchmarks",
    "model",
    "strategy",
    "plugins",
    "methods",
    "evaluation",
    "pretrain",
    "output_dir",
    "device",
    "num_workers",
)
DEFAULT_OPTIMIZER = {"name": "sgd", "lr": 0.01, "momentum": 0.9}


def _check_strategy(c: _Checker, path: KeyPath, value: Any) -> Dict[str, Any]:
    from streamcl.optim import SCHEDULE_OPTIONS

    value = c.component(path, value, STRATEGIES, extra=STRATEGY_KEYS)
    for k in ("train_mb_size", "train_epochs"):
        if k in value and value[k] < 1:
            c.fail(path + (k,), f"must be >= 1, got {value[k]}")
    value.setdefault("train_mb_size", 32)
    value.setdefault("train_epochs", 1)
    if value.get("eval_mb_size") is None:
        value["eval_mb_size"] = max(64, value["train_mb_size"])
    if value.get("first_experience_epochs") is None:
        value["first_experience_epochs"] = value["train_epochs"]
    value["optimizer"] = c.component(path + ("optimizer",), value.get("optimizer", DEFAULT_OPTIMIZER), OPTIMIZERS)
    if value.get("scheduler") is not None:
        sched_extra = {k: (typing.Literal["epoch", "iteration"] if k == "step_granularity" else type(v))
                       for k, v in SCHEDULE_OPTIONS.items()}
        value["scheduler"] = c.component(path + ("scheduler",), value["scheduler"], SCHEDULERS, extra=sched_extra)
    else:
        value["scheduler"] = None
    return value


def _check_plugins(c: _Checker, path: KeyPath, value: Any) -> List[Dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list):
        c.fail(path, f"must be a list of plugins ({{name: ..., ...}}), got {type(value).__name__}")
    return [c.component(path + (i,), p, PLUGINS) for i, p in enumerate(value)]


def _check_evaluation(c: _Checker, path: KeyPath, value: Any) -> Dict[str, Any]:
    from streamcl.metrics import DEFAULT_LOGGERS, DEFAULT_METRICS, LOGGER_NAMES, METRIC_NAMES

    value = dict(c.mapping(path, value or {}))
    c.keys(path, value, EVALUATION_KEYS)
    for key, names, default in (("metrics", METRIC_NAMES, DEFAULT_METRICS), ("loggers", LOGGER_NAMES, DEFAULT_LOGGERS)):
        got = value.get(key, list(default))
        if not isinstance(got, list):
            c.fail(path + (key,), f"must be a list of names from: {', '.join(names)}")
        for i, n in enumerate(got):
            if n not in names:
                c.unknown(path + (key, i), n, names, what=key[:-1])
        value[key] = list(got)
    value["eval_on"] = c.typed(path + ("eval_on",), value.get("eval_on", "seen"), typing.Literal["seen", "all"])
    return value


def _check_runs(c: _Checker, value: Any) -> List[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            c.fail(("runs",), f"must be >= 1 (a count) or a list of run ids, got {value}")
        return list(range(value))
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        if len(set(value)) != len(value):
            c.fail(("runs",), f"run ids must be unique, got {value}")
        return list(value)
    c.fail(("runs",), f"must be a count (int) or a non-empty list of integer run ids, got {value!r}")
    raise AssertionError


_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def _check_label(c: _Checker, path: KeyPath, label: Any) -> str:
    if not isinstance(label, str) or not _LABEL.match(label):
        c.fail(path, f"label {label!r} must be a name made of letters, digits, '_', '-', '.', '+' "
                     "(it becomes a folder name)")
    return label


@dataclass
class Cell:
    """One (benchmark, method) combination of an experiment; run once per run id."""

    name: str
    config: Dict[str, Any]


@dataclass
class Experiment:
    """A validated experiment file: its cells (grid) and run ids."""

    name: str
    file: Path
    runs: List[int]
    cells: List[Cell]
    output_dir: Path
    pretrain: Optional[Dict[str, Any]] = None

    @property
    def root(self) -> Path:
        """``<output_dir>/<name>``: where the runs and summary tables go."""
        return self.output_dir / self.name


def _method_label(cfg: Dict[str, Any]) -> str:
    parts = [cfg["strategy"]["name"]] + [p["name"] for p in cfg["plugins"]]
    return "+".join(parts)


def validate(doc: Dict[str, Any], origins: Origins, file: Path) -> Experiment:
    """Check a merged document and expand its grid into cells."""
    from streamcl.registry import load_all

    load_all()
    c = _Checker(origins)
    doc = dict(c.mapping((), doc))
    c.keys((), doc, TOP_KEYS, required=("name", "model", "strategy"))
    name = _check_label(c, ("name",), doc["name"])
    if "benchmark" in doc and "benchmarks" in doc:
        c.fail(("benchmarks",), "give either 'benchmark' (one) or 'benchmarks' (a grid axis), not both")
    if "benchmark" not in doc and "benchmarks" not in doc:
        c.fail((), "missing required key 'benchmark' (or 'benchmarks' for a grid)")
    runs = _check_runs(c, doc.get("runs", [0]))
    device = c.typed(("device",), doc.get("device", "cpu"), typing.Literal["cpu", "cuda", "auto"])
    num_workers = c.typed(("num_workers",), doc.get("num_workers", 0), int)
    output_dir = c.typed(("output_dir",), doc.get("output_dir", "runs"), str)
    c.typed(("description",), doc.get("description", ""), str)

    if "benchmarks" in doc:
        bench_axis = c.mapping(("benchmarks",), doc["benchmarks"])
        if not bench_axis:
            c.fail(("benchmarks",), "must name at least one benchmark")
        benches = {}
        for label, b in bench_axis.items():
            _check_label(c, ("benchmarks", label), label)
            benches[label] = c.component(("benchmarks", label), b, BENCHMARKS)
    else:
        benches = {None: c.component(("benchmark",), doc["benchmark"], BENCHMARKS)}

    methods_raw = c.mapping(("methods",), doc["methods"]) if "methods" in doc else {None: {}}
    if not methods_raw:
        c.fail(("methods",), "must name at least one method")
    base = {k: doc[k] for k in ("model", "strategy", "plugins") if k in doc}
    evaluation = _check_evaluation(c, ("evaluation",), doc.get("evaluation"))

    cells: List[Cell] = []
    for m_label, override in methods_raw.items():
        mpath: KeyPath = ("methods", m_label)
        if m_label is not None:
            _check_label(c, mpath, m_label)
            override = c.mapping(mpath, override or {})
            c.keys(mpath, override, METHOD_KEYS)
        merged = deep_merge(base, {k: v for k, v in override.items() if k != "description"})
        cell_origins = origins.copy()
        if m_label is not None:
            cell_origins.rebase(mpath, ())
        mc = _Checker(cell_origins)
        model = mc.component(("model",), merged["model"], MODELS)
        strategy = _check_strategy(mc, ("strategy",), merged["strategy"])
        plugins = _check_plugins(mc, ("plugins",), merged.get("plugins"))
        for b_label, bench in benches.items():
            cfg = {
                "name": name,
                "benchmark": bench,
                "model": model,
                "strategy": strategy,
                "plugins": plugins,
                "evaluation": evaluation,
                "device": device,
                "num_workers": num_workers,
            }
            label = m_label or _method_label(cfg)
            cell_name = f"{b_label}-{label}" if b_label else label
            cells.append(Cell(cell_name, copy.deepcopy(cfg)))
    names = [cell.name for cell in cells]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        c.fail(("methods",), f"two grid cells share the name {sorted(dup)}; give the methods distinct labels")

    exp = Experiment(name=name, file=file, runs=runs, cells=cells, output_dir=Path(output_dir))
    if doc.get("pretrain") is not None:
        from streamcl.pretrain import attach_pretrained, check_pretrain

        exp.pretrain = check_pretrain(c, ("pretrain",), doc["pretrain"])
        attach_pretrained(exp)
    return exp


def load_experiment(path: Union[str, Path], overrides: Sequence[str] = ()) -> Experiment:
    """Read, merge, override and validate an experiment file (raises ConfigError on any problem)."""
    path = Path(path)
    doc, origins = load_document(path)
    for item in overrides:
        apply_override(doc, origins, item)
    doc = expand_env(doc, origins)
    return validate(doc, origins, path)
