"""The runner end to end on a tiny synthetic Toybox stream: outputs, resume, reports."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from streamcl.config import load_experiment
from streamcl.errors import CheckpointError, ConfigError
from streamcl.report import make_report
from streamcl.runner import STREAM_ACC, read_metrics, run_experiment

# Metrics whose values depend on the machine's clock or memory, not on the computation.
NONDETERMINISTIC = ("Time", "RAM", "CPU")


def experiment(tmp_path: Path, synthetic_root: Path, methods: dict, n_classes: int = 6, runs=(0,)) -> Path:
    doc = {
        "name": "tiny",
        "runs": list(runs),
        "output_dir": str(tmp_path / "runs"),
        "benchmark": {"name": "synthetic", "root": str(synthetic_root), "layout": "toybox",
                      "n_classes": n_classes, "n_objects": 2, "image_size": 32},
        "model": {"name": "small_cnn_cut", "width": 8},
        "strategy": {"name": "naive", "train_mb_size": 16, "train_epochs": 1, "first_experience_epochs": 2,
                     "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
        "evaluation": {"loggers": ["tensorboard", "csv"]},
        "methods": methods,
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def deterministic_rows(run_dir: Path):
    return [(r["experience"], r["step"], r["metric"], r["value"]) for r in read_metrics(run_dir / "metrics.csv")
            if not any(k in r["metric"] for k in NONDETERMINISTIC)]


RESUME_METHODS = {
    # Replay buffer (datasets restored by sample id), EWC importances, MAS importances, an LR schedule.
    "replay_ewc_mas": {
        "plugins": [{"name": "replay", "mem_size": 24}, {"name": "ewc", "ewc_lambda": 5.0},
                    {"name": "mas", "lambda_reg": 0.5}],
        "strategy": {"scheduler": {"name": "step", "step_size": 1, "gamma": 0.5}},
    },
    # LwF keeps a copy of the previous model.
    "lwf": {"plugins": [{"name": "lwf", "alpha": 1.0, "temperature": 2.0}]},
}


@pytest.mark.slow
def test_run_writes_outputs_and_resumes_identically(tmp_path, synthetic_root):
    path = experiment(tmp_path, synthetic_root, RESUME_METHODS)
    exp = load_experiment(path)
    root = run_experiment(exp, progress=False)

    # -- outputs of an uninterrupted run
    assert (root / "summary.csv").exists() and (root / "summary.md").exists()
    table = (root / "summary.md").read_text()
    for cell in ("replay_ewc_mas", "lwf"):
        run_dir = root / cell / "run0"
        assert (run_dir / "metrics.csv").exists() and (run_dir / "checkpoint.pt").exists()
        assert list((run_dir / "tb").glob("events.out.tfevents.*"))
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["n_experiences"] == 3 and len(summary["accuracy_per_experience"]) == 3
        assert 0.0 <= summary["final_accuracy"] <= 1.0
        assert cell in table
    replay_summary = json.loads((root / "replay_ewc_mas" / "run0" / "summary.json").read_text())
    assert replay_summary["stored_bytes"] == 24 * 3 * 32 * 32  # 24 raw 32x32 RGB images
    assert json.loads((root / "lwf" / "run0" / "summary.json").read_text())["stored_bytes"] == 0

    # -- the same experiment "killed" after every single experience, resumed each time
    path2 = experiment(tmp_path / "second", synthetic_root, RESUME_METHODS)
    exp2 = load_experiment(path2)
    interruptions = 0
    while True:
        try:
            run_experiment(load_experiment(path2), progress=False, stop_after=1)
            break
        except KeyboardInterrupt:
            interruptions += 1
            assert interruptions <= 6
    # 2 cells x 3 experiences: each call trains one and "crashes" after its checkpoint (the
    # last crash of each cell lands before summary.json, which the next call then writes).
    assert interruptions == 6
    for cell in ("replay_ewc_mas", "lwf"):
        a = json.loads((root / cell / "run0" / "summary.json").read_text())
        b = json.loads((exp2.root / cell / "run0" / "summary.json").read_text())
        assert a["accuracy_per_experience"] == b["accuracy_per_experience"], cell
        assert a["final_accuracy"] == b["final_accuracy"] and a["stored_bytes"] == b["stored_bytes"]
        assert deterministic_rows(root / cell / "run0") == deterministic_rows(exp2.root / cell / "run0"), cell

    # -- finished runs are skipped, reports are drawn
    run_experiment(load_experiment(path2), progress=False)
    out = make_report([exp2.root])
    for name in ("accuracy_curve.png", "accuracy_matrix_lwf.png", "accuracy_matrix_replay_ewc_mas.png",
                 "report.md", "summary.csv", "summary.md"):
        assert (out / name).stat().st_size > 0, name


def test_changed_config_or_bad_checkpoint_is_refused(tmp_path, synthetic_root):
    methods = {"naive": {}}
    path = experiment(tmp_path, synthetic_root, methods, n_classes=4)
    exp = load_experiment(path)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(exp, progress=False, stop_after=1)
    # A different learning rate must not resume the old checkpoint.
    with pytest.raises(ConfigError, match="different configuration"):
        run_experiment(load_experiment(path, ["strategy.optimizer.lr=0.5"]), progress=False)
    # A corrupt checkpoint is named in the error, and nothing is overwritten.
    ckpt = exp.root / "naive" / "run0" / "checkpoint.pt"
    ckpt.write_bytes(b"not a checkpoint")
    before = sorted(p.name for p in ckpt.parent.rglob("*"))
    with pytest.raises(CheckpointError, match="checkpoint.pt"):
        run_experiment(load_experiment(path), progress=False)
    assert ckpt.read_bytes() == b"not a checkpoint"
    assert sorted(p.name for p in ckpt.parent.rglob("*")) == before  # nothing new written
    # --restart discards the cell and runs from scratch.
    run_experiment(load_experiment(path), restart=True, progress=False)
    assert (exp.root / "naive" / "run0" / "summary.json").exists()


def test_cli_reports_bad_checkpoint_with_exit_2(tmp_path, synthetic_root):
    path = experiment(tmp_path, synthetic_root, {"naive": {}}, n_classes=4)
    exp = load_experiment(path)
    run_dir = exp.root / "naive" / "run0"
    run_dir.mkdir(parents=True)
    (run_dir / "checkpoint.pt").write_bytes(b"garbage")
    proc = subprocess.run([sys.executable, "-m", "streamcl", "run", str(path), "-q"], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "checkpoint.pt" in proc.stderr and "--restart" in proc.stderr


def test_report_needs_runs(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "streamcl", "report", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "no runs" in proc.stderr


def test_stream_accuracy_is_recorded_per_experience(tmp_path, synthetic_root):
    path = experiment(tmp_path, synthetic_root, {"naive": {}}, n_classes=4)
    root = run_experiment(load_experiment(path), progress=False)
    rows = read_metrics(root / "naive" / "run0" / "metrics.csv")
    assert [r["experience"] for r in rows if r["metric"] == STREAM_ACC] == [0, 1]


@pytest.mark.slow
def test_pretrain_phase_feeds_every_cell(tmp_path, synthetic_root, capsys):
    path = experiment(tmp_path, synthetic_root, {
        "crumb": {"plugins": [{"name": "crumb", "memory": 40, "n_blocks": 32, "block_dim": 8}]},
        "crumb_raw": {"plugins": [{"name": "crumb", "memory": 40, "storage": "raw_features"}]},
        "naive": {},
    }, n_classes=4)
    doc = yaml.safe_load(path.read_text())
    doc["pretrain"] = {
        # A different base dataset (CORe50's layout, classes the stream does not have), trained offline
        # in one experience, trunk included (the paper's ImageNet stage).
        "benchmark": {"name": "synthetic", "root": str(synthetic_root), "layout": "core50", "n_classes": 3,
                      "first_class": 4, "n_objects": 2, "image_size": 32, "protocol": "offline"},
        "plugin": {"name": "crumb", "n_blocks": 32, "block_dim": 8},
        "epochs": 1, "mb_size": 32, "max_steps": 5, "train_trunk": True,
    }
    path.write_text(yaml.safe_dump(doc))
    exp = load_experiment(path)
    target = str(exp.root / "pretrain" / "crumb.pt")
    crumb_cfg = next(c for c in exp.cells if c.name == "crumb").config
    assert crumb_cfg["model"]["weights"] == target and crumb_cfg["plugins"][0]["pretrained"] == target
    assert next(c for c in exp.cells if c.name == "naive").config["model"]["weights"] == target
    raw_cfg = next(c for c in exp.cells if c.name == "crumb_raw").config  # no codebook to take, weights yes
    assert raw_cfg["plugins"][0].get("pretrained") is None and raw_cfg["model"]["weights"] == target
    assert exp.pretrain["model"]["name"] == "small_cnn_cut" and exp.pretrain["model"].get("weights") is None

    root = run_experiment(exp, progress=False)
    saved = torch.load(root / "pretrain" / "crumb.pt", weights_only=True)["model"]
    assert saved["trunk.bn1.running_mean"].abs().sum() > 0  # the trunk trained (a frozen one keeps zeros)
    assert json.loads((root / "crumb" / "run0" / "summary.json").read_text())["stored_bytes"] > 0
    capsys.readouterr()
    run_experiment(load_experiment(path), progress=False)  # everything done: pretraining is reused
    assert "[pretrain] reusing" in capsys.readouterr().out

    doc["pretrain"]["plugin"] = {"name": "replay"}
    path.write_text(yaml.safe_dump(doc))
    with pytest.raises(ConfigError, match="only 'crumb'"):
        load_experiment(path)


@pytest.mark.slow
def test_crumb_and_remind_resume_identically(tmp_path, synthetic_root):
    methods = {
        "crumb": {"plugins": [{"name": "crumb", "memory": 40, "n_blocks": 32, "block_dim": 8,
                               "plus_direct_loss": True}]},
        "remind": {"plugins": [{"name": "remind", "memory": 40, "num_codebooks": 8, "pq_train_vectors": 512,
                                "n_replay": 4, "lr_schedule": "constant"}]},
    }
    root = run_experiment(load_experiment(experiment(tmp_path / "a", synthetic_root, methods, n_classes=4)),
                          progress=False)
    path2 = experiment(tmp_path / "b", synthetic_root, methods, n_classes=4)
    for _ in range(6):
        try:
            root2 = run_experiment(load_experiment(path2), progress=False, stop_after=1)
            break
        except KeyboardInterrupt:
            continue
    for cell in methods:
        a = json.loads((root / cell / "run0" / "summary.json").read_text())
        b = json.loads((root2 / cell / "run0" / "summary.json").read_text())
        assert a["stored_bytes"] > 0
        assert a["accuracy_per_experience"] == b["accuracy_per_experience"], cell
        assert a["stored_bytes"] == b["stored_bytes"], cell
        assert deterministic_rows(root / cell / "run0") == deterministic_rows(root2 / cell / "run0"), cell
