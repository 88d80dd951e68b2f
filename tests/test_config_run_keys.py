"""Top-level run keys: ``device`` (one device or a list of GPU ids), ``seed`` and ``class_order_seed``."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from streamcl.config import load_experiment
from streamcl.errors import ConfigError
from streamcl.utils import config_digest

BASE = """
name: t
benchmark: {name: toybox, root: /data/toybox}
model: {name: small_cnn_cut}
strategy: {name: naive, train_mb_size: 8}
"""


def load(tmp_path: Path, extra: str = "", overrides=()):
    path = tmp_path / "exp.yaml"
    path.write_text(textwrap.dedent(BASE) + textwrap.dedent(extra))
    return load_experiment(path, overrides)


def error_of(tmp_path: Path, extra: str, overrides=()) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        load(tmp_path, extra, overrides)
    assert "\n" not in str(ei.value)
    return ei.value


@pytest.mark.parametrize("text, stored", [
    ("", "cpu"),
    ("device: cpu", "cpu"),
    ("device: auto", "auto"),
    ("device: cuda", "cuda"),
    ("device: cuda:1", "cuda:1"),
    ("device: 'cuda:0'", "cuda:0"),
    ("device: [0, 1]", [0, 1]),
    ("device: [3]", [3]),
    ("device: [cuda:2, cuda:0]", [2, 0]),  # order kept: the first is the main device
])
def test_accepted_devices_and_their_stored_form(tmp_path, text, stored):
    cfg = load(tmp_path, text + "\n").cells[0].config
    assert cfg["device"] == stored and type(cfg["device"]) is type(stored)


@pytest.mark.parametrize("text, key, needle", [
    ("device: gpu", "device", "unknown device 'gpu'"),
    ("device: cuda:x", "device", "cuda:N"),
    ("device: cuda:01", "device", "unknown device"),
    ("device: cuda:-1", "device", "unknown device"),
    ("device: CUDA", "device", "did you mean 'cuda'"),
    ("device: 1", "device", "write cuda:1 for one GPU or [1]"),
    ("device: []", "device", "a list of GPU ids"),
    ("device: [0, 0]", "device", "unique"),
    ("device: [0, -1]", "device[1]", "GPU id from 0"),
    ("device: [0, true]", "device[1]", "GPU id from 0"),
    ("device: [0, cpu]", "device[1]", "GPU id from 0"),
    ("device: [0, 1.0]", "device[1]", "GPU id from 0"),
    ("device: null", "device", "must be cpu, cuda"),
    ("device: {cuda: 1}", "device", "must be cpu, cuda"),
])
def test_refused_devices_name_the_key_and_the_forms(tmp_path, text, key, needle):
    e = error_of(tmp_path, text + "\n")
    assert e.key == key and needle in str(e), str(e)


def test_device_list_from_the_command_line(tmp_path):
    assert load(tmp_path, overrides=["device=[1, 2]"]).cells[0].config["device"] == [1, 2]
    assert load(tmp_path, overrides=["device=cuda:3"]).cells[0].config["device"] == "cuda:3"


def test_seeds_are_absent_unless_set_so_existing_digests_do_not_change(tmp_path):
    exp = load(tmp_path, "runs: 3\n")
    cfg = exp.cells[0].config
    assert "seed" not in cfg and "class_order_seed" not in cfg and "imports" not in cfg
    assert exp.runs == [0, 1, 2]
    assert config_digest(load(tmp_path, "runs: 3\nseed: 7\n").cells[0].config) != config_digest(cfg)


@pytest.mark.parametrize("text, stored", [
    ("runs: 5\nseed: 7\n", {"seed": 7}),
    ("runs: 5\nclass_order_seed: 0\n", {"class_order_seed": 0}),
    ("runs: 1\nseed: 3\nclass_order_seed: 4\n", {"seed": 3, "class_order_seed": 4}),
    ("runs: [9]\nseed: 3\nclass_order_seed: 4\n", {"seed": 3, "class_order_seed": 4}),
    ("runs: 2\nseed: null\n", {}),
])
def test_seed_keys_are_stored_in_every_cell(tmp_path, text, stored):
    grid = "methods: {a: {}, b: {plugins: [{name: lwf, alpha: 1.0, temperature: 2.0}]}}\n"
    exp = load(tmp_path, text + grid)
    for cell in exp.cells:
        assert {k: cell.config[k] for k in ("seed", "class_order_seed") if k in cell.config} == stored


@pytest.mark.parametrize("text, key, needle", [
    ("seed: -1\n", "seed", "from 0 to"),
    ("class_order_seed: 2147483648\n", "class_order_seed", "from 0 to"),
    ("seed: 1.5\n", "seed", "must be int"),
    ("class_order_seed: first\n", "class_order_seed", "must be int"),
    ("seed: true\n", "seed", "must be int"),
    ("runs: 3\nseed: 1\nclass_order_seed: 2\n", "runs", "would all be the same run"),
    ("sead: 1\n", "sead", "did you mean 'seed'"),
])
def test_bad_seed_keys(tmp_path, text, key, needle):
    e = error_of(tmp_path, text)
    assert e.key == key and needle in str(e), str(e)
