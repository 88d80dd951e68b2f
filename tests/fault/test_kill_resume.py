"""Fault injection: SIGKILL a real ``streamcl run`` process at chosen places, resume, compare.

Each case runs the same tiny experiment three times in fresh processes: once
uninterrupted (the reference), once with ``STREAMCL_FAILPOINT`` set so the process
kills itself (during pretraining, inside an experience, in the middle of a
checkpoint write, right after a checkpoint), and once more to resume. The
resumed run must end with the reference's ``summary.json``, ``metrics.csv`` and
TensorBoard scalars (each point once), and leave no temporary file behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml

from streamcl.results import read_metrics
from streamcl.tensorboard_events import scalars

# Metric values that depend on the machine's clock or memory, not on the computation.
NONDETERMINISTIC = ("Time", "RAM", "CPU")

METHODS = {
    "replay": {"plugins": [{"name": "replay", "memory": {"bytes": "40KB"}}]},
    "crumb": {"plugins": [{"name": "crumb", "memory": {"bytes": "40KB"}, "n_blocks": 32, "block_dim": 8}]},
    "remind": {"plugins": [{"name": "remind", "memory": {"bytes": "40KB"}, "num_codebooks": 4, "n_replay": 4}]},
    "ewc": {"plugins": [{"name": "ewc", "ewc_lambda": 5.0}]},
    "mas": {"plugins": [{"name": "mas", "lambda_reg": 0.5}]},
    "lwf": {"plugins": [{"name": "lwf", "alpha": 1.0, "temperature": 2.0}]},
    "schedule": {"strategy": {"scheduler": {"name": "step", "step_size": 1, "gamma": 0.5}}},
    # The two strategies with exemplar memories: WA on the small CNN's class-indexed head, DyTox on its own model.
    "wa": {"strategy": {"name": "wa", "memory": 24, "temperature": 2.0}},
    "dytox": {"strategy": {"name": "dytox", "memory": 24, "warmup_epochs": 0, "finetune_epochs": 1,
                           "finetune_lr": 0.005}},
    # Replay fed by the decoded-frame cache (uint8 batches normalised by the DeviceTransformPlugin).
    "cache": {"plugins": [{"name": "replay", "memory": {"bytes": "40KB"}}]},
}
# What a method changes outside its cell (cells hold strategy and plugins; model and benchmark are the experiment's).
MODEL = {"dytox": {"name": "dytox", "img_size": 32, "patch_size": 8, "embed_dim": 16, "depth": 2, "num_heads": 2,
                   "drop_path_rate": 0.0}}
BENCHMARK = {"cache": {"cache": True}}


def write_experiment(folder: Path, data_root: Path, method: str, *, pretrain: bool = False) -> Path:
    doc = {
        "name": "fault",
        "runs": [0],
        "output_dir": str(folder / "runs"),
        "threads": 1,
        "benchmark": {"name": "synthetic", "root": str(data_root), "layout": "toybox", "n_classes": 6,
                      "n_objects": 2, "image_size": 32, "protocol": "class_iid"},
        "model": MODEL.get(method, {"name": "small_cnn_cut", "width": 8}),
        "strategy": {"name": "naive", "train_mb_size": 16, "train_epochs": 1, "first_experience_epochs": 2,
                     "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
        "evaluation": {"metrics": ["accuracy", "loss", "forgetting", "replay_bytes", "timing"],
                       "loggers": ["tensorboard", "csv"]},
        "methods": {method: METHODS[method]},
    }
    doc["benchmark"].update(BENCHMARK.get(method, {}))
    if pretrain:
        doc["pretrain"] = {
            "benchmark": {"name": "synthetic", "root": str(data_root), "layout": "toybox", "n_classes": 4,
                          "first_class": 6, "n_objects": 2, "image_size": 32, "protocol": "offline"},
            "plugin": {"name": "crumb", "n_blocks": 32, "block_dim": 8},
            "epochs": 2, "mb_size": 32, "lr": 0.02, "train_trunk": True,
        }
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "exp.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def streamcl_run(path: Path, failpoint: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "STREAMCL_FAILPOINT"}
    env["OMP_NUM_THREADS"] = "1"
    if failpoint:
        env["STREAMCL_FAILPOINT"] = failpoint
    return subprocess.run([sys.executable, "-m", "streamcl", "run", str(path), "-q"], env=env,
                          capture_output=True, text=True, timeout=600)


def outputs(root: Path) -> dict:
    """Everything a finished run leaves that must not depend on being killed."""
    (run_dir,) = [p for p in root.glob("fault/*/run0")]
    summary = json.loads((run_dir / "summary.json").read_text())
    summary.pop("wall_time_s")
    summary.pop("digest")  # the config's hash: it holds the (per-test) path of the pretrained file
    rows = [(r["experience"], r["step"], r["metric"], r["value"]) for r in read_metrics(run_dir / "metrics.csv")
            if not any(k in r["metric"] for k in NONDETERMINISTIC)]
    tb = [(tag, step, value) for tag, step, value in scalars(run_dir / "tb")
          if not any(k in tag for k in NONDETERMINISTIC)]
    return {"summary": summary, "rows": rows, "tb": tb}


def leftovers(root: Path) -> list:
    return [str(p) for p in root.rglob("*") if p.name.endswith((".tmp", ".partial", ".ready"))]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("fault-data")


_REFERENCES: dict = {}


def reference(tmp_path_factory, data_root: Path, method: str, pretrain: bool) -> dict:
    key = (method, pretrain)
    if key not in _REFERENCES:
        folder = tmp_path_factory.mktemp(f"ref-{method}")
        done = streamcl_run(write_experiment(folder, data_root, method, pretrain=pretrain))
        assert done.returncode == 0, done.stderr
        _REFERENCES[key] = outputs(folder / "runs")
    return _REFERENCES[key]


def kill_and_resume(tmp_path: Path, data_root: Path, method: str, failpoint: str, pretrain: bool = False) -> dict:
    path = write_experiment(tmp_path, data_root, method, pretrain=pretrain)
    killed = streamcl_run(path, failpoint)
    assert killed.returncode == -signal.SIGKILL, (killed.returncode, killed.stderr[-2000:])
    resumed = streamcl_run(path)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert leftovers(tmp_path) == []
    return outputs(tmp_path / "runs")


def assert_same(got: dict, ref: dict) -> None:
    assert got["summary"] == ref["summary"]
    assert got["rows"] == ref["rows"]
    duplicates = [k for k, n in Counter((tag, step) for tag, step, _ in got["tb"]).items() if n > 1]
    ref_duplicates = [k for k, n in Counter((tag, step) for tag, step, _ in ref["tb"]).items() if n > 1]
    assert duplicates == ref_duplicates
    assert sorted(got["tb"]) == sorted(ref["tb"])


# Fast enough for the default suite: one replay method, killed inside its second experience
# and in the middle of its second checkpoint write.
@pytest.mark.parametrize("failpoint", ["train_iteration:20", "checkpoint_write:2"])
def test_replay_survives_sigkill(tmp_path, tmp_path_factory, data_root, failpoint):
    ref = reference(tmp_path_factory, data_root, "replay", False)
    assert_same(kill_and_resume(tmp_path, data_root, "replay", failpoint), ref)


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(METHODS))
@pytest.mark.parametrize("failpoint", ["train_iteration:3", "train_iteration:20", "checkpoint_write:1",
                                       "checkpoint_write:2", "after_checkpoint:1"])
def test_every_method_survives_sigkill(tmp_path, tmp_path_factory, data_root, method, failpoint):
    ref = reference(tmp_path_factory, data_root, method, False)
    assert_same(kill_and_resume(tmp_path, data_root, method, failpoint), ref)


@pytest.mark.slow
@pytest.mark.parametrize("failpoint", ["pretrain_step:3", "train_iteration:10"])
def test_pretrained_crumb_survives_sigkill(tmp_path, tmp_path_factory, data_root, failpoint):
    ref = reference(tmp_path_factory, data_root, "crumb", True)
    assert_same(kill_and_resume(tmp_path, data_root, "crumb", failpoint, pretrain=True), ref)
