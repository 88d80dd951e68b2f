"""Experiment YAML -> validated experiment spec.

Loading is strict so that a typo never silently runs the wrong experiment: every key
is checked against the schema of the section it sits in, and a component's keys
(``benchmark``, ``model``, ``strategy``, each plugin ...) against the signature of the
factory its ``name`` selects. The first problem raises
:class:`~streamcl.errors.ConfigError` naming the file the key came from, its key path
and the valid choices.

One concept per module, in reading order (imports point down only: nothing here
imports the runner, the report or the build step):

* :mod:`~streamcl.config.read`: one bounded, safe YAML document per file or ``-o`` value.
* :mod:`~streamcl.config.compose`: ``include:`` files, ``-o key.path=value`` overrides,
  ``${VAR}`` / ``${VAR:-default}``, and :class:`Origins` (which file each key came from).
* :mod:`~streamcl.config.typecheck`: a YAML value against a factory parameter's type hint.
* :mod:`~streamcl.config.schema`: the keys of each section and the component checker;
  ``device``, ``seed``/``class_order_seed``, ``imports`` (a user's own modules).
* :mod:`~streamcl.config.sweep`: the ``sweep:`` section (cartesian product of values, cell names);
* :mod:`~streamcl.config.launcher`: the ``launcher:`` section (local, ray, slurm and their resources);
* :mod:`~streamcl.config.cell`: :class:`Cell`, one (benchmark, method) combination and its config;
* :mod:`~streamcl.config.reference`: the ``reference:`` section (a paper's published numbers, its protocol);
* :mod:`~streamcl.config.experiment`: :class:`Experiment`, :func:`validate`, :func:`load_experiment`.
* :mod:`~streamcl.config.text`: one-line error text and key paths.

Every name this module had before it became a package is still importable from here.
"""

from __future__ import annotations

from streamcl.config.compose import (
    MAX_INCLUDE_DEPTH,
    Origins,
    apply_override,
    deep_merge,
    expand_env,
    load_document,
)
from streamcl.config.experiment import Cell, Experiment, load_experiment, validate
from streamcl.config.read import (
    MAX_DEPTH,
    MAX_FILE_BYTES,
    MAX_NODES,
    check_shape,
    load_yaml_text,
    parse_value,
    read_yaml,
    yaml_problem,
)
from streamcl.config.schema import (
    DEFAULT_OPTIMIZER,
    DEVICE_NAMES,
    EVALUATION_KEYS,
    MAX_CELLS,
    MAX_GPU_ID,
    MAX_RUN_ID,
    MAX_RUNS,
    METHOD_KEYS,
    STRATEGY_KEYS,
    TOP_KEYS,
    Checker,
    check_device,
    check_evaluation,
    check_imports,
    check_label,
    check_optimizer,
    check_plugins,
    check_runs,
    check_schedule,
    check_seeds,
    check_strategy,
)
from streamcl.config.text import KeyPath, fmt_path, one_line
from streamcl.config.typecheck import check_type, hints_of, is_yaml_type, param_type, signature_of, type_name
from streamcl.errors import ConfigError

# The names these had when streamcl.config was one module (tests and user code import some).
_Checker = Checker
_hints = hints_of
_is_yaml_type = is_yaml_type
_type_name = type_name
_signature = signature_of
_read_yaml = read_yaml
_check_strategy = check_strategy
_check_plugins = check_plugins
_check_evaluation = check_evaluation
_check_runs = check_runs
_check_label = check_label

__all__ = [
    "Cell",
    "Checker",
    "ConfigError",
    "DEFAULT_OPTIMIZER",
    "DEVICE_NAMES",
    "EVALUATION_KEYS",
    "Experiment",
    "KeyPath",
    "MAX_CELLS",
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_GPU_ID",
    "MAX_INCLUDE_DEPTH",
    "MAX_NODES",
    "MAX_RUNS",
    "MAX_RUN_ID",
    "METHOD_KEYS",
    "Origins",
    "STRATEGY_KEYS",
    "TOP_KEYS",
    "apply_override",
    "check_device",
    "check_evaluation",
    "check_imports",
    "check_label",
    "check_optimizer",
    "check_plugins",
    "check_runs",
    "check_schedule",
    "check_seeds",
    "check_shape",
    "check_strategy",
    "check_type",
    "deep_merge",
    "expand_env",
    "fmt_path",
    "hints_of",
    "is_yaml_type",
    "load_document",
    "load_experiment",
    "load_yaml_text",
    "one_line",
    "param_type",
    "parse_value",
    "read_yaml",
    "signature_of",
    "type_name",
    "validate",
    "yaml_problem",
]
