"""Experiment YAML validation: every kind of mistake gives one clear ConfigError."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from streamcl.config import load_experiment
from streamcl.errors import ConfigError

BASE = """
name: t
benchmark: {name: toybox, root: /data/toybox}
model: {name: squeezenet_cut}
strategy:
  name: naive
  train_mb_size: 8
  optimizer: {name: sgd, lr: 1e-3, momentum: 0.9}
"""


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def error_of(path: Path, overrides=()) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        load_experiment(path, overrides)
    return ei.value


def test_minimal_file_gets_defaults(tmp_path):
    exp = load_experiment(write(tmp_path, BASE))
    assert exp.runs == [0]
    (cell,) = exp.cells
    st = cell.config["strategy"]
    assert st["optimizer"]["lr"] == pytest.approx(1e-3)  # YAML 1.1 would read 1e-3 as a string
    assert st["first_experience_epochs"] == st["train_epochs"] == 1
    assert st["eval_mb_size"] >= st["train_mb_size"]
    assert cell.config["plugins"] == []
    assert "accuracy" in cell.config["evaluation"]["metrics"]
    assert cell.name == "naive"


def test_unknown_top_level_key(tmp_path):
    e = error_of(write(tmp_path, BASE + "evalutaion: {}\n"))
    msg = str(e)
    assert "exp.yaml" in msg and "evalutaion" in msg
    assert "did you mean 'evaluation'" in msg
    assert "valid:" in msg and "strategy" in msg


def test_unknown_strategy_key_names_path_and_choices(tmp_path):
    e = error_of(write(tmp_path, BASE.replace("train_mb_size: 8", "train_mb_sise: 8")))
    assert e.key == "strategy.train_mb_sise"
    assert "did you mean 'train_mb_size'" in str(e)


def test_wrong_type(tmp_path):
    e = error_of(write(tmp_path, BASE + "  train_epochs: ten\n"))
    assert e.key == "strategy.train_epochs"
    assert "must be int" in str(e) and "'ten'" in str(e)


def test_wrong_type_in_plugin_list(tmp_path):
    e = error_of(write(tmp_path, BASE + "plugins:\n  - {name: replay, mem_size: 10}\n  - {name: ewc, ewc_lambda: lots}\n"))
    assert e.key == "plugins[1].ewc_lambda"
    assert "must be float" in str(e)


def test_missing_required_key(tmp_path):
    e = error_of(write(tmp_path, BASE.replace("name: naive", "name: ewc")))
    assert e.key == "strategy"
    assert "missing required key 'ewc_lambda'" in str(e)


def test_missing_top_level_key(tmp_path):
    e = error_of(write(tmp_path, BASE.replace("model: {name: squeezenet_cut}\n", "")))
    assert "missing required key 'model'" in str(e)


def test_unknown_component_name_lists_choices(tmp_path):
    e = error_of(write(tmp_path, BASE.replace("name: naive", "name: navie")))
    assert e.key == "strategy.name"
    assert "unknown strategy 'navie'" in str(e) and "did you mean 'naive'" in str(e)
    assert "replay" in str(e) and "ewc" in str(e)


def test_runner_owned_key_rejected(tmp_path):
    e = error_of(write(tmp_path, BASE + "  device: cuda\n"))
    assert e.key == "strategy.device"
    assert "set by streamcl's runner" in str(e)


def test_python_object_parameter_is_explained(tmp_path):
    e = error_of(write(tmp_path, BASE.replace("name: naive", "name: icarl\n  feature_extractor: resnet")))
    assert e.key == "strategy.feature_extractor"
    assert "cannot be set from YAML" in str(e)
    e = error_of(write(tmp_path, BASE.replace("name: naive", "name: icarl")))
    assert "needs a Python object for 'feature_extractor'" in str(e)


def test_invalid_yaml_names_line(tmp_path):
    e = error_of(write(tmp_path, BASE + "plugins: [oops\n"))
    assert "invalid YAML" in str(e) and "line" in str(e)


def test_yaml_must_be_mapping(tmp_path):
    e = error_of(write(tmp_path, "- a\n- b\n"))
    assert "mapping" in str(e)


def test_missing_file(tmp_path):
    e = error_of(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(e) and "not found" in str(e)


def test_include_merges_and_errors_name_the_included_file(tmp_path):
    write(tmp_path, BASE, "base.yaml")
    child = write(tmp_path, "include: base.yaml\nname: child\nstrategy: {optimizer: {name: sgd, lr: 0.5}}\n")
    exp = load_experiment(child)
    assert exp.name == "child"
    assert exp.cells[0].config["strategy"]["optimizer"]["lr"] == 0.5
    assert exp.cells[0].config["strategy"]["train_mb_size"] == 8  # from base.yaml

    write(tmp_path, BASE + "  trian_epochs: 2\n", "base.yaml")
    e = error_of(child)
    assert "base.yaml" in str(e) and e.key == "strategy.trian_epochs"


def test_include_cycle(tmp_path):
    write(tmp_path, "include: b.yaml\n", "a.yaml")
    write(tmp_path, "include: a.yaml\n", "b.yaml")
    assert "include cycle" in str(error_of(tmp_path / "a.yaml"))


def test_grid_of_benchmarks_methods_runs(tmp_path):
    text = BASE.replace("benchmark: {name: toybox, root: /data/toybox}\n", "") + textwrap.dedent("""
    runs: 3
    benchmarks:
      toy: {name: toybox, root: /data/toybox}
      core: {name: core50, root: /data/core50}
    methods:
      naive: {}
      ewc: {strategy: {name: ewc, ewc_lambda: 10.0}}
      replay: {plugins: [{name: replay, mem_size: 20}]}
    """)
    exp = load_experiment(write(tmp_path, text))
    assert exp.runs == [0, 1, 2]
    assert sorted(c.name for c in exp.cells) == sorted(
        f"{b}-{m}" for b in ("toy", "core") for m in ("naive", "ewc", "replay")
    )
    ewc = next(c for c in exp.cells if c.name == "toy-ewc").config
    assert ewc["strategy"]["name"] == "ewc" and ewc["strategy"]["ewc_lambda"] == 10.0
    assert ewc["strategy"]["train_mb_size"] == 8  # inherited from the base strategy
    replay = next(c for c in exp.cells if c.name == "core-replay").config
    assert replay["plugins"] == [{"name": "replay", "mem_size": 20}]
    assert replay["benchmark"]["name"] == "core50"


def test_error_inside_a_method_names_the_method(tmp_path):
    text = BASE + "methods:\n  ewc: {strategy: {name: ewc, ewc_lambda: high}}\n"
    e = error_of(write(tmp_path, text))
    assert e.key == "methods.ewc.strategy.ewc_lambda"


def test_overrides(tmp_path):
    path = write(tmp_path, BASE + "plugins: [{name: replay, mem_size: 10}]\n")
    exp = load_experiment(path, ["strategy.optimizer.lr=0.25", "plugins[0].mem_size=7", "runs=[4, 5]"])
    cfg = exp.cells[0].config
    assert cfg["strategy"]["optimizer"]["lr"] == 0.25
    assert cfg["plugins"][0]["mem_size"] == 7
    assert exp.runs == [4, 5]
    e = error_of(path, ["strategy.optimizer.lr=fast"])
    assert "-o strategy.optimizer.lr=fast" in str(e)


def test_environment_variables(tmp_path, monkeypatch):
    path = write(tmp_path, BASE.replace("/data/toybox", "${TOYBOX_ROOT}"))
    monkeypatch.setenv("TOYBOX_ROOT", "/somewhere")
    assert load_experiment(path).cells[0].config["benchmark"]["root"] == "/somewhere"
    monkeypatch.delenv("TOYBOX_ROOT")
    e = error_of(path)
    assert "TOYBOX_ROOT" in str(e) and e.key == "benchmark.root"
    path = write(tmp_path, BASE.replace("/data/toybox", "${TOYBOX_ROOT:-/default}"))
    assert load_experiment(path).cells[0].config["benchmark"]["root"] == "/default"


def test_evaluation_section(tmp_path):
    e = error_of(write(tmp_path, BASE + "evaluation: {metrics: [accuracy, acuracy]}\n"))
    assert e.key == "evaluation.metrics[1]" and "did you mean 'accuracy'" in str(e)
    e = error_of(write(tmp_path, BASE + "evaluation: {loggers: [tensorboard, mlflow]}\n"))
    assert e.key == "evaluation.loggers[1]"


def test_cli_bad_yaml_exit_code_2_no_traceback_nothing_written(tmp_path):
    path = write(tmp_path, BASE.replace("train_mb_size: 8", "train_mb_size: eight") + f"output_dir: {tmp_path}/runs\n")
    proc = subprocess.run([sys.executable, "-m", "streamcl", "run", str(path)], capture_output=True, text=True,
                          cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("streamcl: error:") and "strategy.train_mb_size" in lines[-1]
    assert "exp.yaml" in lines[-1] and "must be int" in lines[-1]
    assert not (tmp_path / "runs").exists()
