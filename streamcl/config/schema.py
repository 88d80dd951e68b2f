"""The schema of an experiment: which keys each section takes, and the component checker.

:class:`Checker` walks a composed document and raises :class:`~streamcl.errors.ConfigError`
at the first bad key, naming the file it came from (:class:`~streamcl.config.compose.Origins`),
its key path and the valid choices. A *component* (``benchmark``, ``model``, ``strategy``,
each plugin, the optimiser, the schedule) is ``{name: ..., **kwargs}``: ``name`` selects a
registered factory, or imports one given as ``package.module:Name``, and the keyword
arguments are checked against the factory's signature (:mod:`streamcl.config.typecheck`).

The top-level keys beside the components (``runs``, ``seed``, ``class_order_seed``,
``device``, ``imports`` ...) are checked by the ``check_*`` functions below; see
:func:`check_seeds` and :func:`check_device` for what the runner does with them
(``evaluation:``: :func:`check_evaluation`; ``reference:``: :mod:`streamcl.config.reference`).
"""

from __future__ import annotations

import difflib
import importlib.util
import inspect
import math
import re
import sys
import typing
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from streamcl.config.compose import Origins
from streamcl.config.text import KeyPath, clip, one_line, short
from streamcl.config.typecheck import check_type, is_yaml_type, param_type, signature_of, type_name
from streamcl.errors import ConfigError, missing_extra
from streamcl.registry import (
    OPTIMIZERS,
    PLUGINS,
    SCHEDULERS,
    STRATEGIES,
    Entry,
    Registry,
    import_modules,
    is_dotted_path,
)

# Integer arguments named like sizes, epoch counts or numbers of things (see Checker.counts);
# those that may be 0 (no workers, no replay, an empty memory) are listed.
_COUNT = re.compile(r"(_size|_sizes)$|(^|_)epochs$|^(n|num|nb)_|^max_steps$")
_ZERO_OK = frozenset({"num_workers", "n_replay", "mem_size", "memory_size", "replay_size", "warmup_epochs",
                      "finetune_epochs"})
_LR = re.compile(r"(^|_)lr$|^learning_rate$")


class Checker:
    """Walks one merged document, raising ConfigError at the first bad key.

    ``home``: the experiment file's folder, where a user's module named by ``imports:`` or a
    ``package.module:Name`` is also looked for (beside the folder of the file that names it).
    """

    def __init__(self, origins: Origins, home: Optional[Path] = None):
        self.origins = origins
        self.home = home

    def fail(self, path: KeyPath, msg: str) -> typing.NoReturn:
        """Raise ConfigError for ``path``, naming the file it came from."""
        file, key = self.origins.locate(path)
        raise ConfigError(one_line(msg), file=file, key=key)

    def folders(self, path: KeyPath) -> List[Path]:
        """Folders to import a user's module from, for the key at ``path``: its file's, then the experiment's."""
        out: List[Path] = []
        file, _ = self.origins.locate(path)
        if file and not file.startswith("-o"):
            out.append(Path(file).resolve().parent)
        if self.home is not None and self.home not in out:
            out.append(self.home)
        return out

    def mapping(self, path: KeyPath, value: Any) -> Dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping of keys, got {type(value).__name__} {short(value)}")
        return value

    def keys(self, path: KeyPath, value: Dict[str, Any], allowed: Sequence[str], required: Sequence[str] = ()):
        for k in value:
            if k not in allowed:
                self.unknown(path + (k,), k, allowed)
        for k in required:
            if k not in value:
                self.fail(path, f"missing required key '{k}'")

    def unknown(self, path: KeyPath, key: Any, allowed: Sequence[str], what: str = "key",
                owner: str = "") -> typing.NoReturn:
        close = difflib.get_close_matches(str(key)[:200], [str(a) for a in allowed], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        valid = ", ".join(sorted(str(a) for a in allowed)) or "none"
        of = f" for {owner}" if owner else ""
        shown = key if isinstance(key, str) and len(key) <= 60 else short(key)
        self.fail(path, f"unknown {what} '{shown}'{of}{hint}; valid: {valid}")

    def typed(self, path: KeyPath, value: Any, tp: Any) -> Any:
        ok, out = check_type(value, tp)
        if not ok:
            if not is_yaml_type(tp):
                self.fail(path, f"takes a Python object ({type_name(tp)}) and cannot be set from YAML; "
                                "remove the key or build this component in Python")
            self.fail(path, f"must be {type_name(tp)}, got {type(value).__name__} {short(value)}")
        self.finite(path, out)
        return out

    def finite(self, path: KeyPath, value: Any) -> None:
        """Every float in ``value`` (a number or a list of them) is finite: no factory wants NaN or inf."""
        if isinstance(value, float) and not math.isfinite(value):
            self.fail(path, f"must be a finite number, got {value}")
        if isinstance(value, (list, tuple)):
            for i, v in enumerate(value):
                self.finite(path + (i,), v)

    def counts(self, path: KeyPath, value: Dict[str, Any]) -> None:
        """Count-like integers (sizes, epochs, numbers of things) of a component are >= 1 (a few >= 0).

        Written by hand because the factories mostly do not check them: torch's StepLR takes
        ``step_size: 0`` and divides by it at its first step, a DataLoader fails deep inside on a
        batch size of 0, and a negative epoch count silently trains nothing.
        """
        for k, v in value.items():
            if not isinstance(k, str) or not isinstance(v, int) or isinstance(v, bool):
                continue
            if _COUNT.search(k):
                low = 0 if k in _ZERO_OK else 1
                if v < low:
                    self.fail(path + (k,), f"must be >= {low} (a {'count' if low == 0 else 'size or count'}), "
                                           f"got {v}")

    def entry(self, path: KeyPath, name: Any, registry: Registry) -> Entry:
        """The registry entry ``name`` selects: a registered name, or a ``package.module:Name`` imported now."""
        if is_dotted_path(name):
            try:
                return registry.resolve(name, search=self.folders(path))
            except ConfigError as e:
                self.fail(path, e.detail)
        if isinstance(name, str) and name.lower() in registry:
            return registry.get(name)
        if isinstance(name, str) and ("." in name or ":" in name) and len(name) <= 200:
            module, _, attr = name.rpartition(".") if ":" not in name else name.partition(":")
            example = f"'{module}:{attr}'" if module and attr and ":" not in name else "'package.module:ClassName'"
            self.fail(path, f"unknown {registry.kind} '{name}'; to use your own class or function, write its "
                            f"import path with one colon before the name, e.g. {example}")
        self.unknown(path, name, registry.names(), what=registry.kind)

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
        entry = self.entry(path + ("name",), name, registry)
        value["name"] = entry.name
        params, hints = signature_of(entry)
        for k in list(value):
            if k == "name":
                continue
            if k in params and value[k] is None and params[k].default is None:
                continue  # null = the factory's own default (None), whatever its type hint says
            if k in extra:
                value[k] = self.typed(path + (k,), value[k], extra[k])
            elif k in params:
                value[k] = self.typed(path + (k,), value[k], param_type(params[k], hints))
            elif k in entry.injected:
                self.fail(path + (k,), f"is set by streamcl's runner for {registry.kind} '{entry.name}', "
                                       "not from YAML; remove it")
            else:
                self.unknown(path + (k,), k, [*params, *extra], owner=f"{registry.kind} '{entry.name}'")
        self.counts(path, value)
        if registry is not OPTIMIZERS:  # (torch's optimisers check their own lr: see check_optimizer)
            for k, v in value.items():
                if isinstance(k, str) and _LR.search(k) and isinstance(v, (int, float)) and not isinstance(v, bool) \
                        and v < 0:
                    self.fail(path + (k,), f"must be >= 0 (a learning rate), got {v}")
        # Factories may check values further at load time: `config_checks = {"memory": parse_memory}`.
        for k, check in getattr(entry.factory, "config_checks", {}).items():
            if k in value and value[k] is not None:
                try:
                    check(value[k])
                except (ValueError, TypeError, ArithmeticError, ConfigError) as e:
                    self.fail(path + (k,), getattr(e, "detail", None) or str(e))
        for p in params.values():
            if p.default is inspect.Parameter.empty and p.name not in value:
                tp = param_type(p, hints)
                if not is_yaml_type(tp):
                    self.fail(path, f"{registry.kind} '{entry.name}' needs a Python object for '{p.name}' "
                                    f"({type_name(tp)}) and cannot be built from YAML alone")
                self.fail(path, f"missing required key '{p.name}' ({type_name(tp)}) for "
                                f"{registry.kind} '{entry.name}'")
        # ... and checks that need several keys: `config_validate(**all arguments with defaults)`,
        # raising ConfigError(key=<argument>) (see streamcl.benchmarks.scenarios.synthetic).
        validate_all = getattr(entry.factory, "config_validate", None)
        if validate_all is not None:
            args = {n: p.default for n, p in params.items() if p.default is not inspect.Parameter.empty}
            args.update({k: v for k, v in value.items() if k in params})
            try:
                validate_all(**args)
            except ConfigError as e:
                self.fail(path + ((e.key,) if e.key else ()), e.detail)
            except (ValueError, TypeError, ArithmeticError) as e:
                self.fail(path, str(e))
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
EVALUATION_KEYS = ("metrics", "loggers", "eval_on", "offline")
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
    "threads",
    "seed",
    "class_order_seed",
    "imports",
    "launcher",
    "sweep",
    "reference",
)
DEFAULT_OPTIMIZER = {"name": "sgd", "lr": 0.01, "momentum": 0.9}


def check_optimizer(c: Checker, path: KeyPath, cfg: Dict[str, Any]) -> Any:
    """Let torch check an optimiser's values by building it over a dummy parameter (None if not torch's)."""
    from streamcl.optim import culprit, probe_optimizer

    entry = OPTIMIZERS.get(cfg["name"])
    if entry.origin != "torch":  # a registered custom optimiser may need the real model's parameters
        return None
    try:
        return probe_optimizer(cfg)
    except Exception as e:  # torch raises ValueError mostly, IndexError/TypeError on odd shapes
        key = culprit(str(e), [k for k in cfg if k != "name"])
        c.fail(path + ((key,) if key else ()),
               f"{clip(str(e))} (torch.optim.{entry.factory.__name__}'s own check); fix the value")


def check_schedule(c: Checker, path: KeyPath, cfg: Dict[str, Any], optimizer: Any) -> None:
    """Let torch check a schedule's values by building and stepping it on a probe optimiser."""
    from streamcl.optim import SCHEDULE_OPTIONS, culprit, probe_schedule

    entry = SCHEDULERS.get(cfg["name"])
    if optimizer is None or entry.origin != "torch":
        return
    if isinstance(cfg.get("T_max"), int) and cfg["T_max"] < 1:  # torch divides by it at the first step
        c.fail(path + ("T_max",), f"must be >= 1 (iterations or epochs of a half cosine), got {cfg['T_max']}")
    try:
        probe_schedule(cfg, optimizer)
    except Exception as e:
        key = culprit(str(e), [k for k in cfg if k != "name" and k not in SCHEDULE_OPTIONS])
        c.fail(path + ((key,) if key else ()),
               f"torch's {entry.factory.__name__} fails on these values ({type(e).__name__}: {clip(str(e))}); "
               "fix the value")


def check_strategy(c: Checker, path: KeyPath, value: Any) -> Dict[str, Any]:
    """The ``strategy:`` section: the strategy's own keys, batch sizes and epochs (defaults filled), optimiser, schedule."""
    from streamcl.optim import SCHEDULE_OPTIONS

    value = c.component(path, value, STRATEGIES, extra=STRATEGY_KEYS)
    # (train_mb_size, eval_mb_size, train_epochs, first_experience_epochs are >= 1: Checker.counts)
    value.setdefault("train_mb_size", 32)
    value.setdefault("train_epochs", 1)
    if value.get("eval_mb_size") is None:
        value["eval_mb_size"] = max(64, value["train_mb_size"])
    if value.get("first_experience_epochs") is None:
        value["first_experience_epochs"] = value["train_epochs"]
    value["optimizer"] = c.component(path + ("optimizer",), value.get("optimizer", DEFAULT_OPTIMIZER), OPTIMIZERS)
    probe = check_optimizer(c, path + ("optimizer",), value["optimizer"])
    if value.get("scheduler") is not None:
        sched_extra = {k: (typing.Literal["epoch", "iteration"] if k == "step_granularity" else type(v))
                       for k, v in SCHEDULE_OPTIONS.items()}
        value["scheduler"] = c.component(path + ("scheduler",), value["scheduler"], SCHEDULERS, extra=sched_extra)
        check_schedule(c, path + ("scheduler",), value["scheduler"], probe)
    else:
        value["scheduler"] = None
    return value


def check_plugins(c: Checker, path: KeyPath, value: Any) -> List[Dict[str, Any]]:
    """The ``plugins:`` list, one component per item (null: no plugins)."""
    if value is None:
        return []
    if not isinstance(value, list):
        c.fail(path, f"must be a list of plugins ({{name: ..., ...}}), got {type(value).__name__}")
    return [c.component(path + (i,), p, PLUGINS) for i, p in enumerate(value)]


def check_evaluation(c: Checker, path: KeyPath, value: Any) -> Dict[str, Any]:
    """The ``evaluation:`` section: ``metrics``, ``loggers``, ``eval_on``, ``offline``.

    * ``metrics``: names from :data:`streamcl.metrics.METRIC_NAMES` (``top5``: top-5 accuracy;
      ``task_agnostic``: a multi-head model's accuracy without task labels);
    * ``loggers``: names from :data:`streamcl.metrics.LOGGER_NAMES` (a logger's optional package installed);
    * ``eval_on``: ``seen`` (the test experiences trained so far) or ``all``;
    * ``offline``: the label of the method (in ``methods:``) that trains the offline learner
      (e.g. a ``cumulative`` or ``joint_training`` strategy) that Omega_all divides by. Checked
      here as a label; :func:`~streamcl.config.experiment.validate` resolves it per cell to the
      offline cell of the same benchmark. The key is in the cell config only when set (so that
      the digests of existing runs do not change).
    """
    from streamcl.metrics import DEFAULT_LOGGERS, DEFAULT_METRICS, LOGGER_EXTRAS, LOGGER_NAMES, METRIC_NAMES

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
    for i, n in enumerate(value["loggers"]):
        if n in LOGGER_EXTRAS and not _installed(LOGGER_EXTRAS[n][0]):
            c.fail(path + ("loggers", i), f"logger '{n}': {missing_extra(*LOGGER_EXTRAS[n])}")
    value["eval_on"] = c.typed(path + ("eval_on",), value.get("eval_on", "seen"), typing.Literal["seen", "all"])
    if value.get("offline") is None:
        value.pop("offline", None)
    else:
        check_label(c, path + ("offline",), value["offline"])
    return value


def _installed(module: str) -> bool:
    """True when ``module`` can be imported (without importing it: wandb takes a second)."""
    if module in sys.modules:
        return sys.modules[module] is not None
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# A run id seeds Python, NumPy and torch and picks the class order: it must fit every RNG's seed.
# More runs than MAX_RUNS is a typo (runs: 1000000000 would first build a list of 10^9 ids).
MAX_RUNS = 10_000
MAX_RUN_ID = 2**31 - 1
MAX_CELLS = 1_000  # (benchmarks x methods; a paper grid has tens)


def check_runs(c: Checker, value: Any) -> List[int]:
    """``runs``: a count (``3`` -> ``[0, 1, 2]``) or a list of unique run ids."""
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= MAX_RUNS:
            c.fail(("runs",), f"must be a count from 1 to {MAX_RUNS} (streamcl's limit) or a list of run ids, "
                              f"got {value}")
        return list(range(value))
    if isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        if len(value) > MAX_RUNS:
            c.fail(("runs",), f"lists {len(value)} run ids; at most {MAX_RUNS} (streamcl's limit)")
        for i, v in enumerate(value):
            if not 0 <= v <= MAX_RUN_ID:
                c.fail(("runs", i), f"run id must be from 0 to {MAX_RUN_ID} (it seeds the RNGs), got {v}")
        if len(set(value)) != len(value):
            c.fail(("runs",), f"run ids must be unique, got {short(value)}")
        return list(value)
    c.fail(("runs",), f"must be a count (int) or a non-empty list of integer run ids, got {short(value)}")
    raise AssertionError


_LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def check_label(c: Checker, path: KeyPath, label: Any) -> str:
    """A name that becomes a folder name (experiment, grid labels)."""
    if not isinstance(label, str) or not _LABEL.match(label):
        c.fail(path, f"label {label!r} must be a name made of letters, digits, '_', '-', '.', '+' "
                     "(it becomes a folder name)")
    return label


def check_seeds(c: Checker, doc: Dict[str, Any], runs: List[int]) -> Dict[str, int]:
    """``seed`` and ``class_order_seed``: a fixed value for every run, or (left out) the run id.

    By default run id ``k`` does both jobs: it seeds Python, NumPy and torch (weight
    initialisation, shuffling, augmentation) and the benchmark factory receives it as
    ``run`` (its class order). Either key fixes one of the two for every run, so that the
    runs vary only the other: ``class_order_seed: 0`` with ``runs: 5`` trains five
    initialisations on one class order; ``seed: 0`` with ``runs: 5`` one initialisation
    on five class orders. Returns the keys that are set (left out of the cell config
    otherwise, so that configs without them keep their digests). Fixing both with more
    than one run would make every run the same run: an error.
    """
    out: Dict[str, int] = {}
    for key in ("seed", "class_order_seed"):
        value = c.typed((key,), doc.get(key), Optional[int])
        if value is None:
            continue
        if not 0 <= value <= MAX_RUN_ID:
            c.fail((key,), f"must be from 0 to {MAX_RUN_ID} (it seeds the RNGs), got {value}; leave it out to use "
                           "the run id")
        out[key] = value
    if len(out) == 2 and len(runs) > 1:
        c.fail(("runs",), f"seed and class_order_seed are both fixed, so the {len(runs)} runs would all be the same "
                          "run; set runs: 1, or leave one of the two keys out (it then follows the run id)")
    return out


DEVICE_NAMES = ("cpu", "cuda", "auto")
MAX_GPU_ID = 1023
_CUDA = re.compile(r"^cuda:([0-9]{1,4})$")


def check_device(c: Checker, value: Any) -> Union[str, List[int]]:
    """``cpu`` | ``cuda`` | ``cuda:N`` | ``auto`` as given, or a list of GPU ids as a list of ints.

    A list (``[0, 1]``, or ``[cuda:0, cuda:1]``) asks for data-parallel training on those
    GPUs; until that exists, the runner trains on the first of them. Whether the GPUs
    exist is checked when a run starts, not here (a config is often checked on a machine
    without the GPUs it will run on).
    """
    hint = "cpu, cuda, cuda:N (one GPU), auto, or a list of GPU ids such as [0, 1]"
    if isinstance(value, str):
        m = _CUDA.match(value)
        if value in DEVICE_NAMES or (m and int(m.group(1)) <= MAX_GPU_ID and str(int(m.group(1))) == m.group(1)):
            return value
        close = difflib.get_close_matches(value[:40].lower(), [*DEVICE_NAMES, "cuda:0"], n=1)
        c.fail(("device",), f"unknown device {short(value)}{f' (did you mean {close[0]!r}?)' if close else ''}; "
                            f"write {hint}")
    if isinstance(value, int) and not isinstance(value, bool):
        c.fail(("device",), f"a bare number is ambiguous: write cuda:{value} for one GPU or [{value}] for a list "
                            "of GPU ids")
    if isinstance(value, list) and value:
        ids: List[int] = []
        for i, v in enumerate(value):
            m = _CUDA.match(v) if isinstance(v, str) else None
            gpu = int(m.group(1)) if m else v
            if not isinstance(gpu, int) or isinstance(gpu, bool) or not 0 <= gpu <= MAX_GPU_ID:
                c.fail(("device", i), f"must be a GPU id from 0 to {MAX_GPU_ID} (or cuda:N), got {short(v)}")
            ids.append(gpu)
        if len(set(ids)) != len(ids):
            c.fail(("device",), f"GPU ids must be unique, got {short(value)}")
        return ids
    c.fail(("device",), f"must be {hint}, got {type(value).__name__} {short(value)}")


def check_imports(c: Checker, value: Any) -> List[str]:
    """``imports: [mypkg.methods, ...]``: import each module now, so that what it registers validates.

    A module is looked for on the Python path, then beside the file that lists it and
    the experiment file. A failing import names the key, the module and the first line
    of the exception.
    """
    if value is None:
        return []
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        c.fail(("imports",), f"must be a module path or a list of them (imports: [mypkg.methods]), got "
                             f"{type(value).__name__} {short(value)}")
    for i, name in enumerate(value):
        if not isinstance(name, str):
            c.fail(("imports", i), f"must be a module path (such as mypkg.methods), got {short(name)}")
        try:
            import_modules([name], search=c.folders(("imports", i)))
        except ConfigError as e:
            c.fail(("imports", i), e.detail)
    return list(value)
