"""Bad values and hostile YAML (issue 8, items 6 and 7): one-line ConfigError at config time, exit 2, nothing written.

Every case goes through ``streamcl run FILE --dry-run`` in-process (``cli.main``), so the
check happens before anything is built, and asserts the exit code, a single stderr line
naming the file and the key path (or the line, for YAML shape problems), and that the
output folder was never created.
"""

from __future__ import annotations

import copy
import math
import time
import tracemalloc
from pathlib import Path
from typing import Any, Dict

import pytest
import yaml

from streamcl import cli
from streamcl.config import MAX_DEPTH, MAX_NODES, check_shape, load_experiment, load_yaml_text
from streamcl.errors import ConfigError, StreamclError

BASE: Dict[str, Any] = {
    "name": "t",
    "benchmark": {"name": "synthetic", "root": "DATA", "layout": "toybox", "n_classes": 4, "n_objects": 2},
    "model": {"name": "small_cnn_cut"},
    "strategy": {"name": "naive", "train_mb_size": 8, "optimizer": {"name": "sgd", "lr": 0.01, "momentum": 0.9}},
    "output_dir": "OUT",
}
PRETRAIN = {"benchmark": {"name": "synthetic", "root": "DATA", "n_classes": 4, "first_class": 6}}


class Replace(dict):
    """A patch value that replaces the whole section instead of merging into it."""


def patched(patch: Dict[str, Any]) -> Dict[str, Any]:
    """BASE with ``patch`` deep-merged over it (a ``None`` leaf is written as YAML null)."""

    def merge(a: Any, b: Any) -> Any:
        if isinstance(b, Replace):
            return dict(b)
        if isinstance(a, dict) and isinstance(b, dict):
            out = dict(a)
            for k, v in b.items():
                out[k] = merge(a[k], v) if k in a else v
            return out
        return b

    return merge(copy.deepcopy(BASE), patch)


def run_dry(tmp_path: Path, capsys, text: str, *overrides: str) -> tuple[int, str]:
    """``streamcl run exp.yaml --dry-run`` in-process: (exit code, the stderr line); asserts nothing was written."""
    path = tmp_path / "exp.yaml"
    path.write_text(text.replace("DATA", str(tmp_path / "data")).replace("OUT", str(tmp_path / "out")))
    args = ["run", str(path), "--dry-run"]
    for o in overrides:
        args += ["-o", o]
    capsys.readouterr()
    rc = cli.main(args)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip() and "Warning" not in ln and "warnings.warn(" not in ln]
    assert not (tmp_path / "out").exists() and not (tmp_path / "data").exists()
    if rc == 0:
        return rc, ""
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith("streamcl: error: ")
    return rc, lines[0]


# --------------------------------------------------------------------------- item 6: values

VALUE_CASES = {
    "lr_negative": ({"strategy": {"optimizer": {"lr": -1}}}, "strategy.optimizer.lr"),
    "lr_nan": ({"strategy": {"optimizer": {"lr": math.nan}}}, "strategy.optimizer.lr"),
    "lr_inf": ({"strategy": {"optimizer": {"lr": math.inf}}}, "strategy.optimizer.lr"),
    "momentum_negative": ({"strategy": {"optimizer": {"momentum": -1}}}, "strategy.optimizer.momentum"),
    "adam_betas": ({"strategy": {"optimizer": Replace(name="adam", betas=[2, 3])}}, "strategy.optimizer.betas"),
    "adam_betas_short": ({"strategy": {"optimizer": Replace(name="adam", lr=0.1, betas=[0.9])}},
                         "strategy.optimizer"),
    "weight_decay_negative": ({"strategy": {"optimizer": {"weight_decay": -0.1}}}, "strategy.optimizer.weight_decay"),
    "eval_mb_size_zero": ({"strategy": {"eval_mb_size": 0}}, "strategy.eval_mb_size"),
    "eval_mb_size_negative": ({"strategy": {"eval_mb_size": -5}}, "strategy.eval_mb_size"),
    "train_mb_size_zero": ({"strategy": {"train_mb_size": 0}}, "strategy.train_mb_size"),
    "train_epochs_zero": ({"strategy": {"train_epochs": 0}}, "strategy.train_epochs"),
    "first_experience_epochs_negative": ({"strategy": {"first_experience_epochs": -1}},
                                         "strategy.first_experience_epochs"),
    "num_workers_negative": ({"num_workers": -1}, "num_workers"),
    "step_size_zero": ({"strategy": {"scheduler": {"name": "step", "step_size": 0}}}, "strategy.scheduler.step_size"),
    "cosine_t_max_zero": ({"strategy": {"scheduler": {"name": "cosine", "T_max": 0}}}, "strategy.scheduler.T_max"),
    "linear_factor": ({"strategy": {"scheduler": {"name": "linear", "start_factor": 3.0}}},
                      "strategy.scheduler.start_factor"),
    "gamma_nan": ({"strategy": {"scheduler": {"name": "step", "step_size": 1, "gamma": math.nan}}},
                  "strategy.scheduler.gamma"),
    "pretrain_lr_negative": ({"pretrain": {**PRETRAIN, "lr": -1}}, "pretrain.lr"),
    "pretrain_lr_nan": ({"pretrain": {**PRETRAIN, "lr": math.nan}}, "pretrain.lr"),
    "pretrain_momentum_negative": ({"pretrain": {**PRETRAIN, "momentum": -0.5}}, "pretrain.momentum"),
    "pretrain_max_steps_zero": ({"pretrain": {**PRETRAIN, "max_steps": 0}}, "pretrain.max_steps"),
    "runs_negative_id": ({"runs": [-1]}, "runs[0]"),
    "runs_huge_count": ({"runs": 1_000_000_000}, "runs"),
    "runs_count_over_cap": ({"runs": 10_001}, "runs"),
    "runs_huge_id": ({"runs": [99999999999999999999]}, "runs[0]"),
    "runs_zero": ({"runs": 0}, "runs"),
    "memory_bytes_inf": ({"plugins": [{"name": "replay", "memory": {"bytes": math.inf}}]}, "plugins[0].memory"),
    "memory_bytes_nan": ({"plugins": [{"name": "replay", "memory": {"bytes": math.nan}}]}, "plugins[0].memory"),
    "memory_bytes_string_inf": ({"plugins": [{"name": "replay", "memory": {"bytes": "1e999MB"}}]},
                                "plugins[0].memory"),
    "memory_bytes_huge": ({"plugins": [{"name": "replay", "memory": {"bytes": 10**20}}]}, "plugins[0].memory"),
    "memory_items_inf": ({"plugins": [{"name": "replay", "memory": {"items": math.inf}}]}, "plugins[0].memory"),
    "memory_inf": ({"plugins": [{"name": "crumb", "memory": math.inf}]}, "plugins[0].memory"),
    "n_classes_zero": ({"benchmark": {"n_classes": 0}}, "benchmark.n_classes"),
    "n_classes_too_many": ({"benchmark": {"n_classes": 13}}, "benchmark.n_classes"),
    "first_class_out_of_range": ({"benchmark": {"first_class": 9}}, "benchmark.first_class"),
    "image_size_tiny": ({"benchmark": {"image_size": 4}}, "benchmark.image_size"),
    "benchmark_root_null": ({"benchmark": {"root": None}}, "benchmark.root"),
    "prepared_root_null": ({"benchmark": Replace(name="toybox", root=None)}, "benchmark.root"),
    "plugin_lr_negative": ({"plugins": [{"name": "remind", "memory": 10, "max_lr": -0.1}]}, "plugins[0].max_lr"),
    "plugin_count_zero": ({"plugins": [{"name": "crumb", "memory": 10, "n_blocks": 0}]}, "plugins[0].n_blocks"),
    "float_param_nan": ({"plugins": [{"name": "ewc", "ewc_lambda": math.nan}]}, "plugins[0].ewc_lambda"),
}


@pytest.mark.parametrize("case", sorted(VALUE_CASES))
def test_bad_value_is_one_line_exit_2_naming_the_key(case, tmp_path, capsys):
    patch, key = VALUE_CASES[case]
    rc, line = run_dry(tmp_path, capsys, yaml.safe_dump(patched(patch)))
    assert rc == 2, f"{case} was accepted"
    assert f"exp.yaml: {key}" in line, line
    assert "\n" not in line


def test_optimizer_errors_come_from_torch_and_name_the_key(tmp_path, capsys):
    _, line = run_dry(tmp_path, capsys, yaml.safe_dump(patched({"strategy": {"optimizer": {"lr": -1}}})))
    assert "strategy.optimizer.lr" in line and "Invalid learning rate" in line  # torch's own constraint
    doc = patched({"strategy": {"optimizer": Replace(name="adam", betas=[2, 3])}})
    _, line = run_dry(tmp_path, capsys, yaml.safe_dump(doc))
    assert "strategy.optimizer.betas" in line and "beta" in line


def test_values_through_overrides_name_the_override(tmp_path, capsys):
    rc, line = run_dry(tmp_path, capsys, yaml.safe_dump(BASE), "strategy.optimizer.lr=-1")
    assert rc == 2 and "-o strategy.optimizer.lr=-1" in line and "strategy.optimizer.lr" in line
    rc, line = run_dry(tmp_path, capsys, yaml.safe_dump(BASE), "runs=1000000000")
    assert rc == 2 and "runs" in line and "10000" in line


def test_limits_accept_the_boundary(tmp_path, capsys):
    doc = patched({"runs": 10_000, "num_workers": 0, "plugins": [{"name": "replay", "memory": {"bytes": "1GB"}}],
                   "strategy": {"scheduler": {"name": "step", "step_size": 1}}})
    assert run_dry(tmp_path, capsys, yaml.safe_dump(doc))[0] == 0
    doc = patched({"runs": [0, 2**31 - 1], "benchmark": {"n_classes": 12}})
    assert run_dry(tmp_path, capsys, yaml.safe_dump(doc))[0] == 0


def test_empty_environment_variable_is_an_error_unless_defaulted(tmp_path, capsys, monkeypatch):
    text = yaml.safe_dump(patched({"benchmark": {"root": "${STREAMCL_TEST_EMPTY}"}}))
    monkeypatch.setenv("STREAMCL_TEST_EMPTY", "")
    rc, line = run_dry(tmp_path, capsys, text)
    assert rc == 2 and "STREAMCL_TEST_EMPTY" in line and "exp.yaml: benchmark.root" in line and "empty" in line
    monkeypatch.delenv("STREAMCL_TEST_EMPTY")
    rc, line = run_dry(tmp_path, capsys, text)
    assert rc == 2 and "STREAMCL_TEST_EMPTY is not set" in line
    # ${VAR:-default}: bash semantics, the default also replaces an empty value
    text = yaml.safe_dump(patched({"benchmark": {"root": "${STREAMCL_TEST_EMPTY:-/from/default}"}}))
    monkeypatch.setenv("STREAMCL_TEST_EMPTY", "")
    path = tmp_path / "exp.yaml"
    path.write_text(text.replace("OUT", str(tmp_path / "out")))
    assert load_experiment(path).cells[0].config["benchmark"]["root"] == "/from/default"


def test_synthetic_generator_refuses_zero_classes_instead_of_the_default(tmp_path):
    from streamcl.benchmarks.synthetic import generate

    with pytest.raises(StreamclError, match="n_classes must be 1..12, got 0"):
        generate("toybox", tmp_path / "gen", n_classes=0)
    assert not (tmp_path / "gen").exists()


def test_parse_bytes_and_memory_budget_bounds():
    from streamcl.plugins.latent_replay import MemoryBudget, parse_memory
    from streamcl.utils import parse_bytes

    assert parse_bytes("2.26MB") == 2_260_000 and parse_bytes(1024) == 1024 and parse_bytes(7.9) == 7
    for bad in (math.inf, math.nan, -1, "1e999MB", "-5kB", True, None, [1]):
        with pytest.raises(ValueError):
            parse_bytes(bad)
    with pytest.raises(ConfigError, match="memory.bytes"):
        MemoryBudget(bytes=2**41)
    with pytest.raises(ConfigError, match="memory.items"):
        MemoryBudget(items=1.5)  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        parse_memory({"items": math.nan})
    assert parse_memory({"bytes": "1KiB"}).bytes == 1024


# --------------------------------------------------------------------------- item 7: hostile YAML


def alias_bomb(levels: int, width: int = 10) -> str:
    """"Billion laughs": each level lists ``width`` aliases of the previous one (width**levels values)."""
    lines = ["l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * width) + "]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


HOSTILE = {
    "nesting_1000_block": ("".join(" " * i + f"k{i}:\n" for i in range(1000)), f"more than {MAX_DEPTH} levels"),
    "nesting_1000_flow": ("a: " + "[" * 1000 + "]" * 1000 + "\n", "line 1"),
    "nesting_65": ("a: " + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1) + "\n", f"more than {MAX_DEPTH} levels"),
    "self_alias_list": ("a: &x [*x]\n", "self-referencing alias"),
    "self_alias_map": ("a: &x {b: {c: *x}}\n", "self-referencing alias"),
    "alias_bomb_9": (alias_bomb(9), f"more than {MAX_NODES} values"),
    "alias_bomb_3kB": (alias_bomb(60, 5), f"more than {MAX_NODES} values"),
    "alias_deep": ("a: &x " + "[" * 40 + "]" * 40 + "\nb: " + "[" * 30 + "*x" + "]" * 30 + "\n",
                   f"more than {MAX_DEPTH} levels"),
    "duplicate_top_key": (yaml.safe_dump(BASE) + "name: again\n", "duplicate key 'name'"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_yaml_fails_fast_on_one_line(case, tmp_path, capsys):
    text, expected = HOSTILE[case]
    tracemalloc.start()
    start = time.perf_counter()
    try:
        rc, line = run_dry(tmp_path, capsys, text)
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert time.perf_counter() - start < 1.0
    assert peak < 64 * 2**20
    assert rc == 2
    assert "exp.yaml" in line and "line " in line and expected in line, line


def test_duplicate_nested_key_names_key_and_both_lines(tmp_path, capsys):
    text = (
        "name: t\n"
        "benchmark: {name: synthetic, root: DATA}\n"
        "model: {name: small_cnn_cut}\n"
        "strategy:\n"
        "  name: naive\n"
        "  optimizer: {name: sgd, lr: 0.01}\n"
        "  optimizer: {name: adam, lr: 0.1}\n"
    )
    rc, line = run_dry(tmp_path, capsys, text)
    assert rc == 2
    assert "exp.yaml" in line and "line 7" in line and "duplicate key 'optimizer'" in line and "line 6" in line
    # a merge key may bring in a key the mapping then overrides: not a duplicate
    text = "defaults: &d {lr: 0.01, momentum: 0.9}\nx:\n  <<: *d\n  lr: 0.5\n"
    assert load_yaml_text(text)["x"] == {"lr": 0.5, "momentum": 0.9}


def test_aliases_count_as_the_size_of_what_they_point_to():
    width = 20
    base = "a: &a [" + ", ".join(["1"] * width) + "]\n"
    copies = MAX_NODES // (width + 1)
    check_shape(base + "b: [" + ", ".join(["*a"] * (copies - 2)) + "]\n")  # just under the bound
    with pytest.raises(yaml.YAMLError, match="more than"):
        check_shape(base + "b: [" + ", ".join(["*a"] * (copies + 2)) + "]\n")
    assert load_yaml_text("a: &x [1, 2]\nb: *x\n") == {"a": [1, 2], "b": [1, 2]}


def test_deepest_accepted_document_never_recurses_too_far(tmp_path, capsys, monkeypatch):
    """A document at the depth bound, merged through an include, an override and ${VAR}: a ConfigError, no RecursionError."""
    deep = "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1)
    (tmp_path / "base.yaml").write_text(f"extra: {deep}\n")
    monkeypatch.setenv("STREAMCL_TEST_DEEP", "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5))
    text = "include: base.yaml\n" + yaml.safe_dump(BASE)
    rc, line = run_dry(tmp_path, capsys, text)
    assert rc == 2 and "base.yaml: extra: unknown key 'extra'" in line
    rc, line = run_dry(tmp_path, capsys, yaml.safe_dump(BASE), "description=" + "[" * 70 + "]" * 70)
    assert rc == 2 and "-o description=" in line and "levels" in line
    rc, line = run_dry(tmp_path, capsys, yaml.safe_dump(patched({"description": "${STREAMCL_TEST_DEEP}"})))
    assert rc == 2 and "exp.yaml" in line and "description" in line and "levels" in line


def test_file_size_is_bounded(tmp_path, capsys):
    rc, line = run_dry(tmp_path, capsys, yaml.safe_dump(BASE) + "# " + "x" * (2 << 20) + "\n")
    assert rc == 2 and "too large" in line


def test_aliases_are_copies_so_an_override_changes_one_place(tmp_path, capsys):
    doc = load_yaml_text("a: &x {k: [1]}\nb: *x\n")
    assert doc["a"] == doc["b"] and doc["a"] is not doc["b"] and doc["a"]["k"] is not doc["b"]["k"]


def test_override_of_a_whole_section_is_blamed_on_the_override(tmp_path, capsys):
    rc, line = run_dry(tmp_path, capsys, yaml.safe_dump(BASE), "benchmark=not_a_benchmark")
    assert rc == 2 and line.startswith("streamcl: error: -o benchmark=not_a_benchmark: benchmark.name")


def test_include_path_with_a_nul_byte(tmp_path, capsys):
    rc, line = run_dry(tmp_path, capsys, 'include: "a\\0b.yaml"\n' + yaml.safe_dump(BASE))
    assert rc == 2 and "exp.yaml: include" in line


def test_grid_size_is_bounded_and_large_grids_stay_linear(tmp_path, capsys):
    from streamcl.config import MAX_CELLS

    def grid(n: int) -> str:
        methods = "".join(f"  m{i}: {{plugins: [{{name: ewc, ewc_lambda: {i}.0}}]}}\n" for i in range(n))
        return yaml.safe_dump(BASE) + "methods:\n" + methods

    rc, line = run_dry(tmp_path, capsys, grid(MAX_CELLS + 1))
    assert rc == 2 and "exp.yaml: methods" in line and str(MAX_CELLS) in line
    start = time.perf_counter()
    assert run_dry(tmp_path, capsys, grid(300))[0] == 0
    assert time.perf_counter() - start < 10  # (thousands of methods took minutes: origins copied per method)


@pytest.mark.parametrize("where", ["file", "override"])
def test_line_breaks_in_keys_never_split_the_message(where, tmp_path, capsys):
    if where == "file":
        rc, line = run_dry(tmp_path, capsys, yaml.safe_dump(BASE) + '"bad\\u2028key\\nx": 1\n')
    else:
        rc, line = run_dry(tmp_path, capsys, yaml.safe_dump(BASE), "bad\nkey\u2028=1")
    assert rc == 2 and "bad" in line  # run_dry asserts the single stderr line
