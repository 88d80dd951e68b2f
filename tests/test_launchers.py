"""Launchers on one tiny grid (2 cells x 2 runs): submitit's local/debug executors and a local Ray give the
summary table of a sequential run; a requeued unit resumes from its checkpoint; missing extras and user
errors inside a unit end as one-line errors."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from streamcl.cli import main
from streamcl.config import load_experiment
from streamcl.errors import CheckpointError, StreamclError
from streamcl.runner import UnitWorker, read_metrics, run_experiment
from streamcl.units import Unit

REPO = Path(__file__).resolve().parents[1]

NONDETERMINISTIC = ("Time", "RAM", "CPU")  # metric names measured on the machine, not computed
UNITS = [Unit(c, r) for c in ("naive", "replay") for r in (0, 1)]


def write_experiment(folder: Path, synthetic_root: Path, launcher=None) -> Path:
    doc = {
        "name": "grid",
        "runs": [0, 1],
        "threads": 1,
        "output_dir": str(folder / "runs"),
        "benchmark": {"name": "synthetic", "root": str(synthetic_root), "layout": "toybox", "n_classes": 4,
                      "n_objects": 2, "image_size": 32},
        "model": {"name": "small_cnn_cut", "width": 8},
        "strategy": {"name": "naive", "train_mb_size": 16, "train_epochs": 1, "first_experience_epochs": 1,
                     "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
        "evaluation": {"loggers": ["csv"]},
        "methods": {"naive": {}, "replay": {"plugins": [{"name": "replay", "mem_size": 8}]}},
    }
    if launcher is not None:
        doc["launcher"] = launcher
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "grid.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def summary_table(root: Path):
    """summary.csv without its wall-time columns (the only thing a launcher may change)."""
    with open(root / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows
    return [{k: v for k, v in r.items() if not k.startswith("wall_time")} for r in rows]


def deterministic_rows(run_dir: Path):
    return [(r["experience"], r["step"], r["metric"], r["value"]) for r in read_metrics(run_dir / "metrics.csv")
            if not any(k in r["metric"] for k in NONDETERMINISTIC)]


def run_summary(run_dir: Path):
    s = json.loads((run_dir / "summary.json").read_text())
    return {k: v for k, v in s.items() if "wall" not in k and "time" not in k}


def assert_same_grid(a: Path, b: Path):
    assert summary_table(a) == summary_table(b)
    for u in UNITS:
        rows = deterministic_rows(b / u.cell / f"run{u.run}")
        assert rows == deterministic_rows(a / u.cell / f"run{u.run}"), u
        assert len(rows) == len(set(rows)), f"{u}: duplicated metric rows"


@pytest.fixture(scope="module")
def sequential(tmp_path_factory, synthetic_root) -> Path:
    """The grid run by the default (local, sequential) launcher: the reference."""
    path = write_experiment(tmp_path_factory.mktemp("sequential"), synthetic_root)
    return run_experiment(load_experiment(path), progress=False)


def test_submitit_local_executor_matches_sequential(tmp_path, synthetic_root, sequential, capsys):
    pytest.importorskip("submitit")
    # The local executor: array_parallelism 2 worker processes share the 4 units through their locks.
    path = write_experiment(tmp_path, synthetic_root,
                            {"name": "slurm", "executor": "local", "array_parallelism": 2, "time": 10})
    root = run_experiment(load_experiment(path), progress=True)
    assert_same_grid(sequential, root)
    out = capsys.readouterr().out
    assert out.count("] finished (") == 4, out  # every unit ran once
    logs = list((root / ".slurm").glob("*_log.out"))
    assert len(logs) == 2  # one log pair per worker job
    trained = [line for log in logs for line in log.read_text().splitlines() if "experience 1/" in line]
    assert len(trained) == 4 and len(set(trained)) == 4, trained  # each unit's first experience once, in total
    # Submitted again (debug executor: in this process, cheap): finished units are not submitted at all,
    # and a unit without its summary (its checkpoint holds every experience) is the only job.
    exp = load_experiment(path, ["launcher.executor=debug"])
    run_experiment(exp, progress=True)
    assert "] finished (" not in capsys.readouterr().out
    unit_dir = next(p for p in sorted(root.glob("*/run*")) if p.is_dir())
    (unit_dir / "summary.json").unlink()
    run_experiment(exp, progress=True)
    out = capsys.readouterr().out
    assert out.count("] finished (1/1 units)") == 1, out
    assert (unit_dir / "summary.json").exists()
    assert summary_table(root) == summary_table(sequential)


def test_ray_local_cluster_matches_sequential(tmp_path, synthetic_root, sequential, capsys):
    pytest.importorskip("ray")
    import ray

    assert not ray.is_initialized()
    path = write_experiment(tmp_path, synthetic_root, {"name": "ray", "num_cpus_total": 2, "workers": 2,
                                                       "num_cpus": 1})
    root = run_experiment(load_experiment(path), progress=True)
    assert not ray.is_initialized()  # the launcher stops the Ray it started
    assert_same_grid(sequential, root)
    out = capsys.readouterr().out
    assert out.count("] finished (") == 4, out


def test_requeued_unit_resumes_from_checkpoint(tmp_path, synthetic_root, sequential):
    """A SLURM task killed after its first experience, then requeued through UnitJob.checkpoint."""
    submitit = pytest.importorskip("submitit")
    path = write_experiment(tmp_path, synthetic_root, {"name": "slurm", "executor": "local"})
    unit = Unit("replay", 1)
    script = textwrap.dedent(f"""
        from streamcl.config import load_experiment
        from streamcl.launchers.slurm import UnitJob
        from streamcl.runner import UnitWorker
        from streamcl.units import Unit
        UnitJob(UnitWorker(progress=True), 1)(load_experiment({str(path)!r}), Unit({unit.cell!r}, {unit.run}))
    """)
    env = dict(os.environ, STREAMCL_FAILPOINT="after_checkpoint:1")
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-2000:]  # SIGKILLed after the first checkpoint
    exp = load_experiment(path)
    run_dir = exp.root / unit.cell / f"run{unit.run}"
    assert (run_dir / "checkpoint.pt").exists() and not (run_dir / "summary.json").exists()

    from streamcl.launchers.slurm import UnitJob

    job = UnitJob(UnitWorker(progress=True), 1)
    requeued = job.checkpoint(exp, unit)  # what submitit's time-out / preemption handler resubmits
    assert isinstance(requeued, submitit.helpers.DelayedSubmission) and requeued.function is job
    assert requeued.function(*requeued.args, **requeued.kwargs) == ("ran", None)
    assert run_summary(run_dir) == run_summary(sequential / unit.cell / f"run{unit.run}")
    rows = deterministic_rows(run_dir)
    assert rows == deterministic_rows(sequential / unit.cell / f"run{unit.run}")
    assert len(rows) == len(set(rows))


@pytest.mark.parametrize("module,extra,launcher", [("ray", "ray", "ray"), ("submitit", "slurm", "slurm")])
def test_missing_extra_is_a_one_line_exit_2(tmp_path, synthetic_root, monkeypatch, capsys, module, extra, launcher):
    monkeypatch.setitem(sys.modules, module, None)  # `import ray` raises ImportError
    path = write_experiment(tmp_path, synthetic_root)
    assert main(["run", str(path), "--launcher", launcher, "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"pip install 'streamcl[{extra}]'" in err, err
    assert not (tmp_path / "runs" / "grid").exists()  # nothing left behind


def _corrupt(exp, unit: Unit) -> None:
    run_dir = exp.root / unit.cell / f"run{unit.run}"
    run_dir.mkdir(parents=True)
    (run_dir / "checkpoint.pt").write_bytes(b"not a checkpoint")


def _local_error(tmp_path, synthetic_root, unit: Unit) -> str:
    exp = load_experiment(write_experiment(tmp_path / "local", synthetic_root))
    _corrupt(exp, unit)
    with pytest.raises(CheckpointError) as e:
        run_experiment(exp, progress=False, units=[unit])
    return str(e.value)


@pytest.mark.parametrize("launcher", [
    {"name": "slurm", "executor": "debug"},
    {"name": "ray", "num_cpus_total": 1, "max_retries": 1},
])
def test_user_error_in_a_unit_surfaces_as_the_same_one_line_error(tmp_path, synthetic_root, launcher):
    pytest.importorskip("ray" if launcher["name"] == "ray" else "submitit")
    unit = Unit("naive", 0)
    expected = _local_error(tmp_path, synthetic_root, unit)
    exp = load_experiment(write_experiment(tmp_path / "remote", synthetic_root, launcher))
    _corrupt(exp, unit)
    with pytest.raises(CheckpointError) as e:
        run_experiment(exp, progress=False, units=[unit])
    message = str(e.value)
    assert "\n" not in message and "checkpoint.pt" in message
    assert message == expected.replace(str(tmp_path / "local"), str(tmp_path / "remote"))


def test_slurm_executor_without_sbatch_is_a_user_error(tmp_path, synthetic_root, monkeypatch):
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no sbatch on PATH
    exp = load_experiment(write_experiment(tmp_path, synthetic_root, {"name": "slurm", "partition": "gpu"}))
    with pytest.raises(StreamclError, match="'sbatch' is not on PATH.*executor: local"):
        run_experiment(exp, progress=False)


def test_launcher_section_is_checked(tmp_path, synthetic_root):
    from streamcl.errors import ConfigError

    path = write_experiment(tmp_path, synthetic_root, {"name": "slurm", "mem": "lots"})
    with pytest.raises(ConfigError, match="mem.*32G"):
        load_experiment(path)
    path = write_experiment(tmp_path, synthetic_root, {"name": "ray", "workers": 0})
    with pytest.raises(ConfigError, match="workers"):
        load_experiment(path)


def test_cluster_task_pretrains_before_its_unit(tmp_path, monkeypatch):
    """On SLURM the submitting (login) node does not pretrain: the first array task does, under the pretrain lock."""
    from streamcl.launchers.slurm import UnitJob

    monkeypatch.setenv("STREAMCL_DATA", str(tmp_path / "data"))
    exp = load_experiment(REPO / "experiments" / "demo.yaml", [
        f"output_dir={tmp_path / 'runs'}", "runs=[0]", "threads=1", "pretrain.epochs=1",
        "methods={crumb: {plugins: [{name: crumb, memory: 40, n_blocks: 32, block_dim: 8}]}}",
        "pretrain.plugin={name: crumb, n_blocks: 32, block_dim: 8}",
        "launcher={name: slurm, executor: slurm}",
    ])
    pretrained = exp.root / "pretrain" / "crumb.pt"
    assert not pretrained.exists()
    state = UnitJob(UnitWorker(progress=False), 1, write_summary=True)(exp, Unit("crumb", 0))
    assert state == ("ran", None)
    assert pretrained.exists() and (exp.root / "crumb" / "run0" / "summary.json").exists()
    assert (exp.root / "summary.csv").exists()  # the last (only) unit wrote the tables
