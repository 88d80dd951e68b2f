"""Issue-8 regressions in the runner: what a crash, a failed build or a damaged output file leaves.

Each test runs the CLI in-process (``streamcl.cli.main``) where the exit code and the
one-line message matter, and the runner directly where only the files matter.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import yaml

from streamcl import tensorboard_events
from streamcl.cli import main
from streamcl.config import load_experiment
from streamcl.results import read_metrics
from streamcl.runner import run_experiment


def tiny(tmp_path: Path, synthetic_root: Path, **extra) -> Path:
    doc = {
        "name": "tiny",
        "runs": [0],
        "threads": 1,
        "output_dir": str(tmp_path / "runs"),
        "benchmark": {"name": "synthetic", "root": str(synthetic_root), "layout": "toybox", "n_classes": 4,
                      "n_objects": 2, "image_size": 32},
        "model": {"name": "small_cnn_cut", "width": 8},
        "strategy": {"name": "naive", "train_mb_size": 16, "optimizer": {"name": "sgd", "lr": 0.05}},
        "evaluation": {"loggers": ["tensorboard", "csv"]},
    }
    doc.update(extra)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def cli(capsys, *args: str) -> tuple:
    code = main(["run", *args, "-q"])
    err = capsys.readouterr().err
    return code, [line for line in err.splitlines() if line.strip()]


def one_line_error(capsys, *args: str, match: str) -> str:
    code, lines = cli(capsys, *args)
    assert code == 2, lines
    assert len(lines) == 1 and lines[0].startswith("streamcl: error: "), lines
    assert match in lines[0], lines[0]
    return lines[0]


@pytest.fixture()
def finished(tmp_path, synthetic_root, capsys):
    """A finished tiny run (and its folder)."""
    path = tiny(tmp_path, synthetic_root)
    assert cli(capsys, str(path))[0] == 0
    return path, tmp_path / "runs" / "tiny" / "naive" / "run0"


def test_build_error_writes_nothing_and_the_fix_runs(tmp_path, synthetic_root, capsys):
    # A byte budget smaller than CRUMB's codebook fails while the buffer is sized, after config time.
    path = tiny(tmp_path, synthetic_root, plugins=[{"name": "crumb", "memory": {"bytes": 7}, "n_blocks": 16,
                                                   "block_dim": 8}])
    one_line_error(capsys, str(path), match="memory")
    assert not (tmp_path / "runs" / "tiny" / "naive+crumb").exists()
    # The corrected rerun is not refused as "a different configuration of this cell".
    code, _ = cli(capsys, str(path), "-o", "plugins[0].memory={bytes: 40KB}")
    assert code == 0


def test_killed_before_first_checkpoint_restarts_clean(tmp_path, synthetic_root):
    path = tiny(tmp_path, synthetic_root)
    exp = load_experiment(path)
    run_dir = exp.root / "naive" / "run0"
    # What an attempt killed before its first checkpoint leaves: events, rows, temp files.
    (run_dir / "tb").mkdir(parents=True)
    from torch.utils.tensorboard import SummaryWriter

    with SummaryWriter(str(run_dir / "tb")) as w:
        for step in range(5):
            w.add_scalar("Top1_Acc_Stream/eval_phase/test_stream/Task000", 0.1, step)
    (run_dir / "metrics.csv").write_text("experience,step,metric,value\n0,3,x,1.0\n")
    (run_dir / "checkpoint.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    (run_dir / "metrics.csv.tmp").write_text("half")
    run_experiment(exp, progress=False)
    tags = [(tag, step) for tag, step, _ in tensorboard_events.scalars(run_dir / "tb")]
    assert len(tags) == len(set(tags))
    assert not list(run_dir.glob("*.tmp"))
    rows = read_metrics(run_dir / "metrics.csv")
    assert "x" not in {r["metric"] for r in rows}
    # TensorBoard and metrics.csv agree on the stream accuracy.
    csv_acc = [(r["step"], r["value"]) for r in rows if r["metric"].startswith("Top1_Acc_Stream")]
    tb_acc = [(step, v) for tag, step, v in tensorboard_events.scalars(run_dir / "tb")
              if tag.startswith("Top1_Acc_Stream")]
    assert [s for s, _ in sorted(tb_acc)] == [s for s, _ in sorted(csv_acc)]
    assert [v for _, v in sorted(tb_acc)] == pytest.approx([v for _, v in sorted(csv_acc)])  # TB keeps float32


def test_tensorboard_truncate_is_kill_safe(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    tb = tmp_path / "tb"
    with SummaryWriter(str(tb)) as w:
        for step in range(10):
            w.add_scalar("a", float(step), step)
    # A resume killed after writing its "ready" file but before swapping it in.
    assert tensorboard_events.truncate(tb, 6) == 8  # file_version event + steps 0..6
    ready = tb / "resume.ready"
    (event_file,) = list(tb.glob("*tfevents*"))
    shutil.copy(event_file, ready)
    with SummaryWriter(str(tb)) as w:  # the interrupted attempt's own events
        w.add_scalar("a", 99.0, 7)
    tensorboard_events.truncate(tb, 6)
    assert [(t, s) for t, s, _ in tensorboard_events.scalars(tb)] == [("a", s) for s in range(7)]
    assert not ready.exists() and not (tb / "resume.partial").exists()


def test_changed_pretraining_invalidates_finished_cells(tmp_path, synthetic_root, capsys):
    pretrain = {"benchmark": {"name": "synthetic", "root": str(synthetic_root), "layout": "toybox", "n_classes": 4,
                              "first_class": 4, "n_objects": 2, "image_size": 32, "protocol": "offline"},
                "epochs": 1, "mb_size": 32, "max_steps": 2,
                "plugin": {"name": "crumb", "n_blocks": 16, "block_dim": 8}}
    path = tiny(tmp_path, synthetic_root, pretrain=pretrain,
                plugins=[{"name": "crumb", "memory": 20, "n_blocks": 16, "block_dim": 8}])
    assert cli(capsys, str(path))[0] == 0
    line = one_line_error(capsys, str(path), "-o", "pretrain.lr=0.005", match="different configuration")
    assert "--restart" in line
    assert cli(capsys, str(path), "-o", "pretrain.lr=0.005", "--restart")[0] == 0


def test_damaged_summary_is_named_and_rebuilt_from_the_checkpoint(finished, capsys):
    path, run_dir = finished
    good = json.loads((run_dir / "summary.json").read_text())
    (run_dir / "summary.json").write_text('{"cell": "naive", "fin')
    one_line_error(capsys, str(path), match="summary.json")
    (run_dir / "summary.json").unlink()  # the fix the message gives
    assert cli(capsys, str(path))[0] == 0
    again = json.loads((run_dir / "summary.json").read_text())
    assert {k: v for k, v in again.items() if k != "wall_time_s"} == \
        {k: v for k, v in good.items() if k != "wall_time_s"}


def test_binary_metrics_csv_is_named_by_report(finished, capsys):
    _, run_dir = finished
    (run_dir / "metrics.csv").write_bytes(bytes(range(256)) * 4)
    assert main(["report", str(run_dir.parent.parent)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "metrics.csv" in err[0]


def test_garbled_cell_config_is_named(finished, capsys):
    path, run_dir = finished
    (run_dir.parent / "config.yaml").write_text("name: [unclosed\n  : :")
    one_line_error(capsys, str(path), match="config.yaml")


def test_garbled_pretrain_marker_is_named(tmp_path, synthetic_root, capsys):
    pretrain = {"benchmark": {"name": "synthetic", "root": str(synthetic_root), "layout": "toybox", "n_classes": 4,
                              "first_class": 4, "n_objects": 2, "image_size": 32, "protocol": "offline"},
                "epochs": 1, "mb_size": 32, "max_steps": 2,
                "plugin": {"name": "crumb", "n_blocks": 16, "block_dim": 8}}
    path = tiny(tmp_path, synthetic_root, pretrain=pretrain, runs=[0],
                plugins=[{"name": "crumb", "memory": 20, "n_blocks": 16, "block_dim": 8}])
    assert cli(capsys, str(path))[0] == 0
    (tmp_path / "runs" / "tiny" / "pretrain" / "crumb.json").write_bytes(b"\x00\xff{")
    one_line_error(capsys, str(path), "-o", "runs=[1]", match="crumb.json")


def test_garbled_synthetic_cache_marker_is_named(tmp_path, synthetic_root, capsys):
    root = tmp_path / "data"
    shutil.copytree(synthetic_root, root) if synthetic_root.exists() else None
    path = tiny(tmp_path, root)
    assert cli(capsys, str(path))[0] == 0
    markers = list(root.glob("toybox-*/done.json"))
    assert markers
    for marker in markers:
        marker.write_text("{not json")
    one_line_error(capsys, str(path), "-o", "runs=[1]", match="done.json")


@pytest.mark.parametrize("damage", ["no_metrics", "rows_not_list", "bad_row", "zero_bytes"])
def test_damaged_checkpoint_entries_are_refused(tmp_path, synthetic_root, capsys, damage):
    path = tiny(tmp_path, synthetic_root)
    exp = load_experiment(path)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(exp, progress=False, stop_after=1)
    ckpt = exp.root / "naive" / "run0" / "checkpoint.pt"
    if damage == "zero_bytes":
        ckpt.write_bytes(b"")
    else:
        payload = torch.load(ckpt, weights_only=True)
        if damage == "no_metrics":
            del payload["metrics"]
        elif damage == "rows_not_list":
            payload["metrics"] = "rows"
        else:
            payload["metrics"] = [[0, 1, 2]]
        torch.save(payload, ckpt)
    before = ckpt.read_bytes()
    one_line_error(capsys, str(path), match="checkpoint.pt")
    assert ckpt.read_bytes() == before


def test_short_metrics_csv_is_rebuilt_from_the_checkpoint(tmp_path, synthetic_root):
    path = tiny(tmp_path, synthetic_root, runs=[0])
    exp = load_experiment(path)
    reference = run_experiment(load_experiment(path, [f"output_dir={tmp_path / 'ref'}"]), progress=False)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(exp, progress=False, stop_after=1)
    metrics = exp.root / "naive" / "run0" / "metrics.csv"
    metrics.write_text(metrics.read_text().splitlines()[0] + "\n")  # header only
    run_experiment(load_experiment(path), progress=False)
    got = json.loads((exp.root / "naive" / "run0" / "summary.json").read_text())
    ref = json.loads((reference / "naive" / "run0" / "summary.json").read_text())
    assert got["accuracy_per_experience"] == ref["accuracy_per_experience"]
    assert got["final_accuracy"] is not None


def test_threads_key_sets_torch_threads(tmp_path, synthetic_root):
    path = tiny(tmp_path, synthetic_root, threads=1)
    assert load_experiment(path).threads == 1
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        run_experiment(load_experiment(path), progress=False)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(old)


def test_two_processes_on_one_experiment_run_each_unit_once(tmp_path, synthetic_root):
    """Two `streamcl run` started at once share the work through per-run locks."""
    import os
    import subprocess
    import sys

    path = tiny(tmp_path, synthetic_root, runs=[0, 1],
                methods={"naive": {}, "replay": {"plugins": [{"name": "replay", "mem_size": 20}]}})
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("STREAMCL_FAILPOINT", None)
    procs = [subprocess.Popen([sys.executable, "-m", "streamcl", "run", str(path)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    trained = [line for out, _ in outs for line in out.splitlines() if "experience 1/" in line]
    units = sorted(line.split("]")[0] for line in trained)
    assert units == ["[naive run0", "[naive run1", "[replay run0", "[replay run1"]  # each unit once
    root = tmp_path / "runs" / "tiny"
    for cell in ("naive", "replay"):
        for run in (0, 1):
            rows = read_metrics(root / cell / f"run{run}" / "metrics.csv")
            keys = [(r["experience"], r["metric"]) for r in rows]
            assert len(keys) == len(set(keys)) and {e for e, _ in keys} == {0, 1}
    table = (root / "summary.md").read_text()
    assert "| naive | 2 |" in table and "| replay | 2 |" in table


def test_a_unit_held_by_another_worker_is_waited_for_then_run(tmp_path, synthetic_root, capsys):
    """A locked (cell, run) is skipped first, then waited for; if its holder finished nothing, it runs here."""
    import threading

    from streamcl.runner import _lock

    path = tiny(tmp_path, synthetic_root, runs=[0, 1])
    exp = load_experiment(path)
    taken, done = threading.Event(), threading.Event()

    def other_worker():  # holds run 0 for a while, then gives up without finishing it
        with _lock(exp.root, "naive-run0"):
            taken.set()
            done.wait(3.0)

    worker = threading.Thread(target=other_worker)
    worker.start()
    taken.wait(10)
    run_experiment(exp, progress=True)
    done.set()
    worker.join()
    out = capsys.readouterr().out
    assert "[naive run0] another process is running it; waiting for it at the end" in out
    assert out.index("[naive run1] experience 1/") < out.index("[naive run0] experience 1/")  # run 1 went first
    assert (exp.root / "naive" / "run0" / "summary.json").exists()


def test_pretrain_cache_features_from_yaml(tmp_path, synthetic_root, capsys):
    from streamcl.errors import ConfigError

    pretrain = {"benchmark": {"name": "synthetic", "root": str(synthetic_root), "layout": "toybox", "n_classes": 4,
                              "first_class": 4, "n_objects": 2, "image_size": 32, "protocol": "offline"},
                "epochs": 2, "mb_size": 32, "cache_features": True,
                "plugin": {"name": "crumb", "n_blocks": 16, "block_dim": 8}}
    path = tiny(tmp_path, synthetic_root, pretrain=pretrain,
                plugins=[{"name": "crumb", "memory": 20, "n_blocks": 16, "block_dim": 8}])
    assert cli(capsys, str(path))[0] == 0
    meta = json.loads((tmp_path / "runs" / "tiny" / "pretrain" / "crumb.json").read_text())
    assert meta["final_loss"] is not None
    with pytest.raises(ConfigError, match="cache_features"):
        load_experiment(path, ["pretrain.train_trunk=true"])


def test_atomic_writes_of_one_file_from_two_writers_do_not_collide(tmp_path):
    """Two runs of one cell, in two processes, both write the cell's config.yaml (seen with two `streamcl run`)."""
    import threading

    from streamcl.utils import atomic_write_text

    target = tmp_path / "config.yaml"
    errors = []

    def write(text):
        try:
            for _ in range(200):
                atomic_write_text(target, text)
        except OSError as e:  # before the fix: the other writer renamed the shared "config.yaml.tmp" away
            errors.append(e)

    threads = [threading.Thread(target=write, args=(t,)) for t in ("a: 1\n", "a: 1\n")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert target.read_text() == "a: 1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]  # no temporary file left
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_current_umask())


def _current_umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask
