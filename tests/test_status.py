"""``streamcl status``: finished / running / interrupted / not started, read from an output folder or a YAML."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from streamcl.errors import StreamclError
from streamcl.results import METRICS_HEADER, rows_to_csv_text
from streamcl.status import add_status_parser, experiment_status, unit_experiences, unit_status
from streamcl.units import Unit, parse_selectors

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "experiments" / "synthetic" / "sweep_demo.yaml"

HOLDER = textwrap.dedent("""
    import sys, time
    from filelock import FileLock
    locks = [FileLock(p) for p in sys.argv[1:]]
    for lock in locks:
        lock.acquire()
    print("held", flush=True)
    time.sleep(120)
""")


def hold_locks(*paths: Path) -> subprocess.Popen:
    """Another process holding the given filelocks until it is killed."""
    for p in paths:
        p.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, *map(str, paths)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def finish(run_dir: Path, n_exp: int = 2) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "summary.json").write_text(json.dumps({"final_accuracy": 0.5, "n_experiences": n_exp}))


def metrics(run_dir: Path, n_exp: int) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    rows = [[t, 10 * t + 5, m, 0.5] for t in range(n_exp) for m in ("Top1_Acc_Stream/eval_phase/test_stream", "x")]
    (run_dir / "metrics.csv").write_text(rows_to_csv_text(rows))


@pytest.fixture
def grid(tmp_path):
    """An experiment folder with units in every state; units a/run2 and c/run0 locked by another process."""
    root = tmp_path / "runs" / "exp"
    for cell in ("a", "b"):
        (root / cell).mkdir(parents=True)
        (root / cell / "config.yaml").write_text("name: exp\n")
    finish(root / "a" / "run0")
    metrics(root / "a" / "run1", 2)
    (root / "a" / "run1" / "checkpoint.pt").write_bytes(b"not read")
    metrics(root / "a" / "run2", 1)
    (root / "b" / "run3").mkdir()  # killed before its first checkpoint
    (root / ".locks").mkdir()
    (root / ".locks" / "b-run0.lock").write_text("")  # a lock file nobody holds (an earlier process's)
    proc = hold_locks(Unit("a", 2).lock_path(root), Unit("c", 0).lock_path(root))  # c: still building
    try:
        yield root
    finally:
        proc.kill()
        proc.wait()


def test_unit_status_all_four_states(grid):
    assert unit_status(grid, Unit("a", 0)) == "finished"
    assert unit_status(grid, Unit("a", 1)) == "interrupted"
    assert unit_status(grid, Unit("a", 2)) == "running"
    assert unit_status(grid, Unit("b", 3)) == "interrupted"
    assert unit_status(grid, Unit("b", 0)) == "not started"  # its stale lock file is free
    assert unit_status(grid, Unit("a", 3)) == "not started"
    assert not Unit("a", 3).lock_path(grid).exists()  # asking created no lock file
    assert unit_experiences(grid, Unit("a", 1)) == 2 and unit_experiences(grid, Unit("a", 2)) == 1
    assert unit_experiences(grid, Unit("b", 3)) is None


def test_running_turns_interrupted_when_the_holder_dies(tmp_path):
    root = tmp_path / "exp"
    metrics(root / "a" / "run0", 1)
    proc = hold_locks(Unit("a", 0).lock_path(root))
    try:
        assert unit_status(root, Unit("a", 0)) == "running"
    finally:
        proc.kill()
        proc.wait()
    assert unit_status(root, Unit("a", 0)) == "interrupted"


def test_folder_table(grid):
    table = experiment_status(grid)
    assert table.cells == ["a", "b", "c"] and table.runs == [0, 1, 2, 3]
    assert table.totals() == {"finished": 1, "running": 2, "interrupted": 2, "not started": 7}
    text = table.format()
    lines = text.splitlines()
    assert lines[0] == f"exp ({grid})"
    assert lines[1].split() == ["cell", "run0", "run1", "run2", "run3"]
    assert lines[2].split("  ")[0] == "a" and "finished" in lines[2] and "interrupted (2 exp)" in lines[2] \
        and "running (1 exp)" in lines[2]
    assert lines[4].startswith("c ") and "running" in lines[4]
    assert "12 unit(s): 1 finished, 2 running, 2 interrupted, 7 not started" in text
    assert "resume" in text
    # one cell folder, one run folder, and --only
    assert experiment_status(grid / "a").states == {Unit("a", r): s for r, s in
                                                  enumerate(["finished", "interrupted", "running"])}
    assert experiment_status(grid / "a" / "run1").states == {Unit("a", 1): "interrupted"}
    sel = experiment_status(grid, selector=parse_selectors(["cell=a|b,run=2-3"]))
    assert sel.cells == ["a", "b"] and sel.runs == [2, 3] and len(sel.states) == 4


def test_yaml_shows_units_not_started(tmp_path):
    out = tmp_path / "out"
    finish(out / "synthetic_sweep_demo" / "crumb-lr0.1-n_blocks64" / "run0")
    table = experiment_status(DEMO, [f"output_dir={out}"])
    assert table.root == out / "synthetic_sweep_demo" and table.runs == [0]
    assert table.cells[0] == "crumb-lr0.01-n_blocks32" and len(table.cells) == 4
    assert table.totals() == {"finished": 1, "running": 0, "interrupted": 0, "not started": 3}
    assert table.states[Unit("crumb-lr0.1-n_blocks64", 0)] == "finished"
    only = experiment_status(DEMO, [f"output_dir={out}"], parse_selectors(["cell=*n_blocks32"]))
    assert only.cells == ["crumb-lr0.01-n_blocks32", "crumb-lr0.1-n_blocks32"]


def test_command(grid, capsys):
    parser = argparse.ArgumentParser(prog="streamcl")
    add_status_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["status", str(grid), "--only", "cell=a"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "4 unit(s): 1 finished, 1 running, 1 interrupted, 1 not started" in out and "\nb " not in out


def test_bad_paths_are_one_line_errors(tmp_path):
    (tmp_path / "runs" / "exp" / "a").mkdir(parents=True)
    (tmp_path / "runs" / "exp" / "a" / "config.yaml").write_text("name: exp\n")
    (tmp_path / "notes.txt").write_text("x")
    cases = {
        tmp_path / "missing": "no such file or folder",
        tmp_path / "runs": f"did you mean {tmp_path / 'runs' / 'exp'}?",
        tmp_path / "notes.txt": "not an experiment YAML or folder",
    }
    for target, words in cases.items():
        with pytest.raises(StreamclError) as ei:
            experiment_status(target)
        assert words in str(ei.value) and "\n" not in str(ei.value) and str(target) in str(ei.value)
    with pytest.raises(StreamclError, match="-o applies to an experiment YAML"):
        experiment_status(tmp_path / "runs" / "exp", ["runs=2"])
    assert METRICS_HEADER[0] == "experience"  # unit_experiences reads the first column
