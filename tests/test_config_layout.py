"""The ``streamcl.config`` package: every name of the former module still there, imports pointing down only."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import streamcl.config as config

# Public names of streamcl/config.py before it became a package, and the private ones tests import.
FORMER_NAMES = """
Cell DEFAULT_OPTIMIZER EVALUATION_KEYS Experiment KeyPath MAX_CELLS MAX_DEPTH MAX_FILE_BYTES MAX_INCLUDE_DEPTH
MAX_NODES MAX_RUNS MAX_RUN_ID METHOD_KEYS Origins STRATEGY_KEYS TOP_KEYS apply_override check_optimizer
check_schedule check_shape check_type deep_merge expand_env fmt_path load_document load_experiment load_yaml_text
one_line param_type parse_value validate yaml_problem ConfigError _hints _is_yaml_type _Checker
""".split()


def test_every_former_name_is_still_exported():
    missing = [n for n in FORMER_NAMES if not hasattr(config, n)]
    assert not missing
    assert set(config.__all__) <= set(dir(config))


def test_importing_the_config_imports_nothing_above_it():
    code = textwrap.dedent("""
        import sys
        import streamcl.config
        above = ("streamcl.runner", "streamcl.report", "streamcl.build", "streamcl.cli", "streamcl.pretrain",
                 "streamcl.metrics", "avalanche", "torch")
        print(" ".join(m for m in above if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == ""


def test_each_concept_module_imports_only_those_below_it():
    """read -> compose -> typecheck/schema -> sweep/launcher -> experiment: no module imports one listed after it."""
    import ast
    from pathlib import Path

    order = ["text", "read", "compose", "typecheck", "schema", "sweep", "launcher", "experiment"]
    folder = Path(config.__file__).parent
    for i, name in enumerate(order):
        tree = ast.parse((folder / f"{name}.py").read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        later = {f"streamcl.config.{m}" for m in order[i + 1:]} | {"streamcl.config"}
        assert not imported & later, (name, imported & later)
