"""Every name `streamcl list` prints resolves, validates from YAML and builds (or says why it cannot)."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from streamcl.config import _hints, _is_yaml_type, load_experiment, param_type
from streamcl.errors import ConfigError
from streamcl.registry import REGISTRIES, load_all

load_all()
ROOT = Path(__file__).resolve().parents[1]

# Values for required YAML keys that have no default, by parameter name.
SAMPLE_VALUES = {
    "root": "/data/x", "ewc_lambda": 1.0, "lambda_reg": 1.0, "alpha": 0.5, "temperature": 2.0, "mem_size": 10,
    "patterns_per_exp": 5, "patterns_per_experience": 5, "memory_strength": 0.5, "si_lambda": 1.0,
    "lambda_e": 1.0, "sample_size": 5, "lr": 0.1, "step_size": 1, "milestones": [1], "T_max": 2, "gamma": 0.5,
    "test_sessions": [3], "dirmap": "/data/x.csv", "patience": 2, "val_stream_name": "valid",
    "memory_size": 10, "buffer_transform": None, "fixed_memory": True, "mem_strength": 0.5,
    "subsample": 5, "batch_size_mem": 4, "feature_size": 8, "num_classes": 4, "n_classes": 4,
    "input_size": 8, "lambda_": 1.0, "scheduler": None,
}


def sample_for(tp):
    """A YAML value of type ``tp`` (for required keys without a known sample)."""
    import typing

    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return args[0]
    if args and origin is not None and type(None) in args:
        return sample_for(next(a for a in args if a is not type(None)))
    if args and origin is not None and not isinstance(origin, type):  # Union[int, float] ...
        return sample_for(args[0])
    return {str: "x", int: 1, float: 1.0, bool: False, list: [], dict: {}}.get(origin or tp, 1)


def yaml_for(kind: str, name: str) -> str:
    """A minimal experiment putting component ``name`` of ``kind`` where it belongs."""
    entry = REGISTRIES[kind].get(name)
    hints = _hints(entry.factory)
    required = {n: SAMPLE_VALUES.get(n, sample_for(param_type(p, hints))) for n, p in entry.parameters().items()
                if p.default is inspect.Parameter.empty and _is_yaml_type(param_type(p, hints))}
    comp = {"name": name, **required}
    parts = {
        "benchmark": {"name": "toybox", "root": "/data/x"},
        "model": {"name": "small_cnn_cut"},
        "strategy": {"name": "naive"},
        "plugins": [],
    }
    if kind == "benchmark":
        parts["benchmark"] = comp
    elif kind == "model":
        parts["model"] = comp
    elif kind == "strategy":
        parts["strategy"] = comp
    elif kind == "plugin":
        parts["plugins"] = [comp]
    elif kind == "optimizer":
        parts["strategy"] = {"name": "naive", "optimizer": {"lr": 0.1, **comp}}
    elif kind == "scheduler":
        parts["strategy"] = {"name": "naive", "scheduler": comp}
    import yaml

    return yaml.safe_dump({"name": "t", **parts})


ALL = [(kind, e.name) for kind, reg in REGISTRIES.items() for e in reg]


def test_registries_are_populated_with_avalanche_and_streamcl():
    names = {kind: set(reg.names()) for kind, reg in REGISTRIES.items()}
    assert {"naive", "replay", "ewc", "mas", "lwf", "gdumb", "icarl", "agem", "crumb", "remind"} <= names["strategy"]
    assert {"replay", "ewc", "mas", "lwf", "gdumb", "agem", "crumb", "remind", "lr_scheduler"} <= names["plugin"]
    assert {"toybox", "ilab2mlight", "core50", "icubworld", "from_dirmap", "synthetic"} <= names["benchmark"]
    assert {"squeezenet_cut", "resnet18_cut", "mobilenetv2_cut", "small_cnn_cut"} <= names["model"]


@pytest.mark.parametrize("kind,name", ALL, ids=[f"{k}:{n}" for k, n in ALL])
def test_every_name_round_trips_through_yaml(kind, name, tmp_path):
    reg = REGISTRIES[kind]
    entry = reg.get(name)
    assert reg.name_of(entry.factory) == name and callable(entry.factory)
    path = tmp_path / "exp.yaml"
    path.write_text(yaml_for(kind, name))
    try:
        exp = load_experiment(path)
    except ConfigError as e:  # only components that need Python objects may refuse, and they must say so
        assert "Python object" in str(e), str(e)
        return
    cfg = exp.cells[0].config
    section = {"benchmark": cfg["benchmark"], "model": cfg["model"], "strategy": cfg["strategy"],
               "plugin": (cfg["plugins"] or [{}])[0], "optimizer": cfg["strategy"]["optimizer"],
               "scheduler": cfg["strategy"]["scheduler"]}[kind]
    assert section["name"] == name


def test_list_prints_every_name():
    out = subprocess.run([sys.executable, "-m", "streamcl", "list"], capture_output=True, text=True, check=True).stdout
    for kind, name in ALL:
        assert f"  {name} " in out, (kind, name)


@pytest.mark.parametrize("name", ["naive", "replay", "ewc", "mas", "lwf", "gdumb", "agem", "cumulative",
                                  "synaptic_intelligence", "crumb"])
def test_common_strategies_build_from_yaml(name, tmp_path):
    from streamcl.metrics import build_evaluator
    from streamcl.runner import RunContext, build_model, build_strategy

    path = tmp_path / "exp.yaml"
    path.write_text(yaml_for("strategy", name))
    cfg = load_experiment(path).cells[0].config
    ctx = RunContext(scenario=None, n_classes=4, run=0, device=torch.device("cpu"), run_dir=tmp_path, cell="c")
    model = build_model(cfg["model"], 4)
    strategy = build_strategy(cfg["strategy"], model, [], build_evaluator(["accuracy"]), ctx)
    assert strategy.train_mb_size == cfg["strategy"]["train_mb_size"]


INCLUDE_ONLY = {"experiments/paper/base.yaml", "experiments/paper/methods.yaml"}  # pulled in by the others
EXPERIMENT_FILES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "experiments").rglob("*.yaml"))


@pytest.mark.parametrize("path", [p for p in EXPERIMENT_FILES if p not in INCLUDE_ONLY])
def test_every_shipped_experiment_file_validates(path, monkeypatch):
    for var in ("SQUEEZENET_WEIGHTS", "TOYBOX_ROOT", "CORE50_ROOT", "ILAB_ROOT", "ICUB_ROOT"):
        monkeypatch.setenv(var, "/data/placeholder")  # the paper files name the user's local copies
    exp = load_experiment(ROOT / path)
    assert exp.cells and all(c.config["plugins"] is not None for c in exp.cells)


@pytest.mark.slow
def test_demo_file_runs_end_to_end_at_reduced_size(tmp_path, synthetic_root):
    """The default experiment itself (every method in it), on a smaller stream and one class order."""
    from streamcl.runner import run_experiment

    exp = load_experiment("experiments/demo.yaml", [
        f"output_dir={tmp_path}", f"benchmark.root={synthetic_root}", "runs=[0]", "benchmark.n_classes=4",
        "benchmark.n_objects=2", "strategy.first_experience_epochs=1", f"pretrain.benchmark.root={synthetic_root}",
        "pretrain.benchmark.n_classes=4", "pretrain.benchmark.n_objects=2",
    ])
    assert len(exp.cells) >= 4
    root = run_experiment(exp, progress=False)
    table = (root / "summary.md").read_text()
    for cell in exp.cells:
        assert f"| {cell.name} |" in table
    assert textwrap.dedent(table).count("\n") == len(exp.cells) + 2
    # Compressed latent replay beats fine-tuning clearly on this stream (seeded: deterministic on CPU).
    final = {c.name: json.loads((root / c.name / "run0" / "summary.json").read_text())["final_accuracy"]
             for c in exp.cells}
    assert final["crumb"] >= final["naive"] + 0.15, final
    assert final["remind"] >= final["naive"] + 0.15, final
