"""The ``sweep:`` section: expansion, cell names, validation errors naming the sweep key, ``-o`` composition."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from streamcl.config import load_experiment
from streamcl.config.sweep import value_label
from streamcl.errors import ConfigError
from streamcl.utils import config_digest

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "experiments" / "synthetic" / "sweep_demo.yaml"

BASE = """
name: t
benchmark: {name: synthetic, layout: toybox, root: /tmp/none, n_classes: 4, n_objects: 2, image_size: 32}
model: {name: small_cnn_cut, width: 8}
strategy:
  name: naive
  train_mb_size: 8
  optimizer: {name: sgd, lr: 0.01, momentum: 0.9}
"""


def write(tmp_path: Path, text: str, name: str = "exp.yaml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(BASE) + textwrap.dedent(text))
    return p


def error_of(path: Path, overrides=()) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        load_experiment(path, overrides)
    return ei.value


def test_demo_expands_into_the_cartesian_product_in_order():
    exp = load_experiment(DEMO)
    assert [c.name for c in exp.cells] == ["crumb-lr0.01-n_blocks32", "crumb-lr0.01-n_blocks64",
                                          "crumb-lr0.1-n_blocks32", "crumb-lr0.1-n_blocks64"]
    for cell in exp.cells:
        lr, n_blocks = cell.sweep["strategy.optimizer.lr"], cell.sweep["plugins[0].n_blocks"]
        assert cell.config["strategy"]["optimizer"]["lr"] == lr
        assert cell.config["plugins"][0]["n_blocks"] == n_blocks
        assert cell.name == f"crumb-lr{lr}-n_blocks{n_blocks}"
        assert not any("sweep" in str(k) for k in cell.config)  # no key of its own in the cell config
    assert len({config_digest(c.config) for c in exp.cells}) == 4


def test_swept_value_equal_to_the_file_gives_the_unswept_config_and_digest(tmp_path):
    """A sweep adds nothing to a cell's config: digests of experiments without one cannot move."""
    demo = REPO / "experiments" / "demo.yaml"
    plain = load_experiment(demo)
    lr = plain.cells[0].config["strategy"]["optimizer"]["lr"]
    swept = load_experiment(demo, [f"sweep.strategy.optimizer.lr=[{lr}]"])
    assert [c.name for c in swept.cells] == [f"{c.name}-lr{value_label(lr)}" for c in plain.cells]
    for a, b in zip(plain.cells, swept.cells):
        assert a.sweep == {} and b.sweep == {"strategy.optimizer.lr": lr}
        assert a.config == b.config
        assert config_digest(a.config) == config_digest(b.config)
    # an empty or null sweep section is no sweep at all (demo.yaml's paths do not depend on its folder)
    for i, text in enumerate(("\nsweep: {}\n", "\nsweep: null\n")):
        copy = tmp_path / f"demo{i}.yaml"
        copy.write_text(demo.read_text() + text)
        assert load_experiment(copy).cells == plain.cells


def test_keys_sharing_a_last_component_take_more_of_their_path(tmp_path):
    exp = load_experiment(write(tmp_path, """
        plugins: [{name: bic, mem_size: 10}]
        sweep:
          strategy.optimizer.lr: [0.01, 0.1]
          plugins[0].lr: [0.5]
          model.width: [4]
    """))
    assert [c.name for c in exp.cells] == ["naive+bic-optimizer.lr0.01-plugins0.lr0.5-width4",
                                          "naive+bic-optimizer.lr0.1-plugins0.lr0.5-width4"]
    assert exp.cells[1].config["plugins"][0]["lr"] == 0.5
    assert exp.cells[1].config["strategy"]["optimizer"]["lr"] == 0.1


def test_value_labels_are_compact_and_folder_safe():
    assert value_label(1e-5) == "1e-5" and value_label(0.1) == "0.1" and value_label(2.5e20) == "2.5e+20"
    assert value_label(True) == "true" and value_label(False) == "false" and value_label(None) == "null"
    assert value_label(256) == "256" and value_label("class_iid") == "class_iid"
    assert value_label("a/b") is None and value_label("") is None and value_label(float("nan")) is None
    assert value_label([1, 2]) is None and value_label({"a": 1}) is None


def test_bool_and_benchmark_axes_with_a_benchmark_grid(tmp_path):
    text = (textwrap.dedent(BASE).replace("benchmark: {", "benchmarks:\n  a: {").replace("image_size: 32}",
                                                                                           "image_size: 32}\n  b: {name: synthetic, layout: toybox, root: /tmp/none, n_classes: 6, n_objects: 2}"))
    p = tmp_path / "exp.yaml"
    p.write_text(text + textwrap.dedent("""
        plugins: [{name: crumb, memory: 100, n_blocks: 16, block_dim: 8}]
        sweep:
          benchmark.protocol: [class_iid, class_instance]
          plugins[0].plus_direct_loss: [true]
    """))
    exp = load_experiment(p)
    names = [c.name for c in exp.cells]
    assert names == ["a-naive+crumb-protocolclass_iid-plus_direct_losstrue",
                     "a-naive+crumb-protocolclass_instance-plus_direct_losstrue",
                     "b-naive+crumb-protocolclass_iid-plus_direct_losstrue",
                     "b-naive+crumb-protocolclass_instance-plus_direct_losstrue"]
    assert [c.config["benchmark"]["protocol"] for c in exp.cells] == ["class_iid", "class_instance"] * 2
    assert [c.config["benchmark"]["n_classes"] for c in exp.cells] == [4, 4, 6, 6]
    assert all(c.config["plugins"][0]["plus_direct_loss"] is True for c in exp.cells)


def test_wrong_type_names_the_sweep_key_value_and_file(tmp_path):
    e = error_of(write(tmp_path, "sweep:\n  strategy.optimizer.lr: [0.1, fast]\n"))
    assert e.key == "sweep.strategy.optimizer.lr[1]"
    assert "exp.yaml" in str(e) and "'fast'" in str(e) and "\n" not in str(e)
    e = error_of(write(tmp_path, "sweep:\n  benchmark.n_classes: [4, four]\n"))
    assert e.key == "sweep.benchmark.n_classes[1]" and "'four'" in str(e)
    e = error_of(write(tmp_path, "sweep:\n  strategy.train_epochs: [1, 0]\n"))  # a value check, not only a type
    assert e.key == "sweep.strategy.train_epochs[1]"


def test_bad_sweep_keys_and_values(tmp_path):
    cases = {
        "sweep:\n  runs: [1, 2]\n": ("sweep.runs", "cannot be swept"),
        "sweep:\n  stratgy.optimizer.lr: [0.1]\n": ("sweep.stratgy.optimizer.lr", "did you mean 'strategy'"),
        "sweep:\n  strategy.optimizer.lr: 0.1\n": ("sweep.strategy.optimizer.lr", "[0.1]"),
        "sweep:\n  strategy.optimizer.lr: []\n": ("sweep.strategy.optimizer.lr", "at least one value"),
        "sweep:\n  strategy: {optimizer: {lr: [0.1]}}\n": ("sweep.strategy", "whole path as one key"),
        "sweep:\n  'strategy.optimizer..lr': [0.1]\n": ("sweep.strategy.optimizer..lr", "bad key path"),
        "sweep:\n  benchmark.root: [/a/b]\n": ("sweep.benchmark.root[0]", "cannot be part of a cell"),
        "sweep:\n  strategy.optimizer: [{name: adam}]\n": ("sweep.strategy.optimizer[0]", "methods:"),
        "sweep:\n  strategy.optimizer.lr: [0.1, '0.1']\n": ("sweep.strategy.optimizer.lr[1]", "list each value once"),
        "sweep:\n  plugins[0].n_blocks: [8]\n  plugins.0.n_blocks: [16]\n": ("sweep.plugins.0.n_blocks", "overlaps"),
        "sweep: [1, 2]\n": ("sweep", "mapping"),
    }
    for text, (key, words) in cases.items():
        e = error_of(write(tmp_path, text))
        assert e.key == key, (text, str(e))
        assert words in str(e), (text, str(e))
        assert "\n" not in str(e)


def test_a_path_a_method_lacks_names_the_method(tmp_path):
    e = error_of(write(tmp_path, """
        methods:
          crumb: {plugins: [{name: crumb, memory: 100, n_blocks: 16, block_dim: 8}]}
          naive: {}
        sweep:
          plugins[0].n_blocks: [8, 16]
    """))
    assert e.key == "sweep.plugins[0].n_blocks" and "method 'naive'" in str(e)
    e = error_of(write(tmp_path, """
        methods:
          crumb: {plugins: [{name: crumb, memory: 100, n_blocks: 16, block_dim: 8}]}
          ewc: {plugins: [{name: ewc, ewc_lambda: 1.0}]}
        sweep:
          plugins[0].n_blocks: [8]
    """))
    assert e.key == "sweep.plugins[0].n_blocks[0]" and "method 'ewc'" in str(e) and "unknown key" in str(e)


def test_overrides_replace_add_and_drop_axes():
    exp = load_experiment(DEMO, ["sweep.strategy.optimizer.lr=[0.5]"])
    assert [c.name for c in exp.cells] == ["crumb-lr0.5-n_blocks32", "crumb-lr0.5-n_blocks64"]
    # the same path written another way replaces the file's axis; null drops it
    exp = load_experiment(DEMO, ["sweep.plugins.0.n_blocks=null"])
    assert [c.name for c in exp.cells] == ["crumb-lr0.01", "crumb-lr0.1"]
    assert all(c.config["plugins"][0]["n_blocks"] == 64 for c in exp.cells)  # the method's own value again
    exp = load_experiment(DEMO, ["sweep=null", "sweep.strategy.train_mb_size=[4,8]", "strategy.train_epochs=2"])
    assert [c.name for c in exp.cells] == ["crumb-train_mb_size4", "crumb-train_mb_size8"]
    assert [c.config["strategy"]["train_mb_size"] for c in exp.cells] == [4, 8]
    assert all(c.config["strategy"]["train_epochs"] == 2 for c in exp.cells)


def test_override_errors_name_the_override():
    e = error_of(DEMO, ["sweep.strategy.optimizer.lr=[0.1, x]"])
    assert e.key == "sweep.strategy.optimizer.lr[1]" and str(e).startswith("-o sweep.strategy.optimizer.lr=")


def test_override_of_a_swept_key_is_refused():
    for item in ("strategy.optimizer.lr=0.05", "methods.crumb.plugins[0].n_blocks=16"):
        e = error_of(DEMO, [item])
        assert "is swept by sweep." in str(e) and "-o sweep." in str(e), str(e)
    # ... unless that axis is dropped first
    exp = load_experiment(DEMO, ["sweep.strategy.optimizer.lr=null", "strategy.optimizer.lr=0.05"])
    assert {c.config["strategy"]["optimizer"]["lr"] for c in exp.cells} == {0.05}


def test_max_cells_counts_swept_cells(tmp_path, monkeypatch):
    import streamcl.config.experiment as experiment

    monkeypatch.setattr(experiment, "MAX_CELLS", 3)
    e = error_of(DEMO)
    assert e.key == "sweep" and "4 cells" in str(e)
    monkeypatch.setattr(experiment, "MAX_CELLS", 4)
    assert len(load_experiment(DEMO).cells) == 4
