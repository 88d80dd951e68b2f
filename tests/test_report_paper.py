"""``streamcl report``: the papers' metrics, published numbers, paired statistics, md / LaTeX / CSV (issue #19).

Run folders are written by hand (metrics.csv rows as Avalanche names them, summary.json,
config.yaml, reference.yaml), so every figure below is worked out in the comments.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import pytest
import yaml

from streamcl.errors import StreamclError
from streamcl.report import collect, find_runs, make_report, summary_table
from streamcl.results import rows_to_csv_text

STREAM = "Top1_Acc_Stream/eval_phase/test_stream/Task000"
EXP = "Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp{:03d}"
BENCH = {"name": "synthetic", "n_classes": 6}


def write_run(cell_dir: Path, run: int, matrix: List[List[Optional[float]]], curve: List[float],
              config: Optional[Dict] = None, top5: Optional[List[float]] = None) -> Path:
    """A finished run: ``matrix[t][j]`` per-experience accuracy (None: not evaluated), ``curve[t]`` stream accuracy."""
    d = cell_dir / f"run{run}"
    d.mkdir(parents=True)
    rows = []
    for t, row in enumerate(matrix):
        for j, v in enumerate(row):
            if v is not None:
                rows.append([t, t, EXP.format(j), v])
        rows.append([t, t, STREAM, curve[t]])
        if top5 is not None:
            rows.append([t, t, "Topk_5_Acc_Stream/eval_phase/test_stream/Task000", top5[t]])
    (d / "metrics.csv").write_text(rows_to_csv_text(rows))
    (d / "summary.json").write_text(json.dumps({"final_accuracy": curve[-1], "stored_bytes": 1000,
                                                "wall_time_s": 2.0}))
    cfg = config or {"benchmark": BENCH, "strategy": {"name": "naive", "train_epochs": 1}}
    (cell_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
    return d


M = [[0.9, None, None],  # after experience 0
     [0.6, 0.8, None],  # after experience 1
     [0.5, 0.7, 0.9]]   # after experience 2
CURVE = [0.9, 0.7, 0.7]


def test_metrics_table_has_the_papers_metrics_and_a_95_interval(tmp_path):
    exp = tmp_path / "exp"
    for run, shift in enumerate([0.0, 0.02, -0.02]):
        write_run(exp / "wa", run, M, [c + shift for c in CURVE], top5=[0.99, 0.95, 0.9])
    cells = collect(find_runs([exp]))
    (wa,) = cells
    m = wa.metrics[0]
    # average incremental accuracy (0.9 + 0.7 + 0.7) / 3; forgetting ((0.9-0.5) + (0.8-0.7)) / 2 = 0.25;
    # BWT ((0.5-0.9) + (0.7-0.8)) / 2 = -0.25; top-5 final 0.9
    assert m["average_incremental_accuracy"] == pytest.approx(2.3 / 3)
    assert m["forgetting"] == pytest.approx(0.25) and m["bwt"] == pytest.approx(-0.25)
    assert m["top5_final_accuracy"] == pytest.approx(0.9) and math.isnan(m["omega_all"])
    row = summary_table({}, cells)[0]
    # final accuracies 0.70, 0.72, 0.68: mean 0.70, std 0.02, t(0.975, 2) = 4.3027 -> half-width 0.0497
    assert row["final_accuracy_mean"] == pytest.approx(0.70) and row["final_accuracy_std"] == pytest.approx(0.02)
    assert row["final_accuracy_ci_low"] == pytest.approx(0.70 - 4.3027 * 0.02 / math.sqrt(3), abs=1e-4)
    out = make_report([exp])
    text = (out / "report.md").read_text()
    for col in ("final accuracy", "95 % CI", "avg incremental accuracy", "forgetting", "BWT", "top-5 final"):
        assert f"| {col} " in text or f" {col} |" in text, col
    assert "| wa | 3 | 70.00 ± 2.00 | [65.0, 75.0] | 76.67 ± 2.00 | 25.00 ± 0.00 | -25.00 ± 0.00 |" in text
    assert "Ω_all" not in text  # no offline cell: the column is left out
    assert (out / "forgetting.png").stat().st_size > 0 and (out / "accuracy_curve.png").stat().st_size > 0


def test_omega_against_the_offline_cell_of_the_same_run_id(tmp_path):
    exp = tmp_path / "exp"
    cfg = {"benchmark": BENCH, "evaluation": {"offline": "joint"}}
    write_run(exp / "wa", 0, M, [0.9, 0.6, 0.5], config=cfg)
    write_run(exp / "joint", 0, M, [0.9, 0.8, 1.0], config=cfg)
    cells = {c.name: c for c in collect(find_runs([exp]))}
    # Ω = (0.9/0.9 + 0.6/0.8 + 0.5/1.0) / 3 = (1 + 0.75 + 0.5) / 3 = 0.75; the offline cell's own Ω is 1
    assert cells["wa"].metrics[0]["omega_all"] == pytest.approx(0.75)
    assert cells["joint"].metrics[0]["omega_all"] == pytest.approx(1.0)
    text = (make_report([exp]) / "report.md").read_text()
    assert "Ω_all" in text and "0.750 ± 0.000" in text


def test_missing_offline_run_is_said_not_guessed(tmp_path):
    exp = tmp_path / "exp"
    write_run(exp / "wa", 0, M, CURVE, config={"benchmark": BENCH, "evaluation": {"offline": "joint"}})
    (cell,) = collect(find_runs([exp]))
    assert math.isnan(cell.metrics[0]["omega_all"]) and "offline cell 'joint' has no finished run0" in cell.notes[0]


def _reference(exp: Path, **setting) -> None:
    (exp / "reference.yaml").write_text(yaml.safe_dump({
        "source": "Paper et al. 2020, Table 1",
        "setting": setting or {"strategy.train_epochs": 1},
        "values": [{"cell": "wa", "metric": "final_accuracy", "value": 71.0, "tolerance": 1.5},
                   {"cell": "wa", "metric": "average_incremental_accuracy", "value": 80.0, "tolerance": 1.0}],
    }))


def test_published_numbers_side_by_side_and_reduced_runs_marked(tmp_path):
    exp = tmp_path / "exp"
    write_run(exp / "wa", 0, M, CURVE)
    _reference(exp)  # the run's config matches the setting
    text = (make_report([exp]) / "report.md").read_text()
    # measured 70.00 vs 71: -1.00, within 1.5 -> reproduced; 76.67 vs 80: -3.33, outside 1.0
    assert "| wa | final_accuracy | 70.00 ± 0.00 (n=1) | 71.00 | -1.00 | ± 1.5 | yes | reproduced |" in text
    assert "| wa | average_incremental_accuracy | 76.67 ± 0.00 (n=1) | 80.00 | -3.33 | ± 1 | no | not reproduced |" \
        in text
    assert "source: Paper et al. 2020, Table 1" in text

    _reference(exp, **{"strategy.train_epochs": 170, "model.name": "resnet18"})
    text = (make_report([exp]) / "report.md").read_text()
    assert "reduced: model.name unset (paper: resnet18); strategy.train_epochs=1 (paper: 170)" in text
    assert "| reproduced |" not in text


def test_paired_differences_with_and_without_enough_orders(tmp_path):
    exp = tmp_path / "exp"
    for run in range(6):  # b beats a by 1 + run points on each of six orders
        write_run(exp / "a", run, M, [0.9, 0.7, 0.5])
        write_run(exp / "b", run, M, [0.9, 0.7, 0.51 + 0.01 * run])
    text = (make_report([exp]) / "report.md").read_text()
    # six pairs all on one side: exact two-sided Wilcoxon p = 2 / 2**6 = 0.03125
    assert "| a − b | 6 | -3.50 |" in text and "| 0 / 6 / 0 | 0.0312 |" in text

    few = tmp_path / "few"
    for run in range(3):
        write_run(few / "a", run, M, [0.9, 0.7, 0.5])
        write_run(few / "b", run, M, [0.9, 0.7, 0.52])
    text = (make_report([few], baseline="b") / "report.md").read_text()
    assert "| a − b | 3 | -2.00 |" in text and "| — |" in text
    assert "n=3 pairs: too few for a Wilcoxon signed-rank test at 5 % (needs >= 6)" in text


def test_cells_on_other_class_orders_are_not_paired(tmp_path):
    exp = tmp_path / "exp"
    write_run(exp / "a", 0, M, CURVE, config={"benchmark": BENCH, "class_order_seed": 1})
    write_run(exp / "b", 0, M, CURVE, config={"benchmark": BENCH, "class_order_seed": 2})
    assert "Paired differences" not in (make_report([exp]) / "report.md").read_text()


def test_a_run_with_a_missing_row_still_reports(tmp_path):
    exp = tmp_path / "exp"
    # experience 1 never evaluated: mean over the evaluated steps, forgetting from the rows there are
    write_run(exp / "wa", 0, [[0.9, None, None], [None, None, None], [0.5, 0.7, 0.9]], [0.9, math.nan, 0.7])
    (cell,) = collect(find_runs([exp]))
    assert cell.metrics[0]["average_incremental_accuracy"] == pytest.approx(0.8)
    assert cell.metrics[0]["forgetting"] == pytest.approx(0.4)  # only experience 0 has a best-before value


def test_latex_and_csv_formats(tmp_path):
    exp = tmp_path / "exp"
    write_run(exp / "wa", 0, M, CURVE)
    _reference(exp)
    out = make_report([exp], fmt="latex")
    tex = (out / "report.tex").read_text()
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"70.00 $\pm$ 0.00" in tex and r"final\_accuracy" in tex and r"95 \% CI" in tex
    out = make_report([exp], fmt="csv")
    results = (out / "report_results.csv").read_text().splitlines()
    assert results[0].startswith("cell,runs,final accuracy,95 % CI,avg incremental accuracy")
    assert (out / "report_published_numbers.csv").read_text().count("\n") == 3


def test_bad_report_input_exits_2_and_writes_nothing(tmp_path):
    exp = tmp_path / "exp"
    write_run(exp / "wa", 0, M, CURVE)
    with pytest.raises(StreamclError, match="--baseline nope: no such cell"):
        make_report([exp], baseline="nope")
    assert not (exp / "report").exists()
    proc = subprocess.run([sys.executable, "-m", "streamcl", "report", str(exp), "--baseline", "nope"],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "no such cell" in proc.stderr and not (exp / "report").exists()


def test_a_tiny_yaml_with_an_offline_cell_and_references_reports_every_column(tmp_path, synthetic_root):
    """`streamcl run` then `streamcl report` in the three formats, as a user would: Ω, top-5, published numbers."""
    doc = {
        "name": "tiny_paper",
        "runs": 2,
        "output_dir": str(tmp_path / "runs"),
        "benchmark": {"name": "synthetic", "root": str(synthetic_root), "layout": "toybox", "n_classes": 4,
                      "n_objects": 2, "image_size": 32},
        "model": {"name": "small_cnn_cut", "width": 8},
        "strategy": {"name": "naive", "train_mb_size": 16, "train_epochs": 1},
        "methods": {"naive": {}, "joint": {"strategy": {"name": "cumulative"}}},
        "evaluation": {"metrics": ["accuracy", "top5"], "loggers": ["csv"], "offline": "joint"},
        "reference": {"source": "A paper, Table 2", "setting": {"strategy.train_epochs": 30},
                      "values": [{"cell": "naive", "metric": "final_accuracy", "value": 50.0, "tolerance": 5.0},
                                 {"cell": "naive", "metric": "omega_all", "value": 0.8, "tolerance": 0.1}]},
    }
    path = tmp_path / "tiny_paper.yaml"
    path.write_text(yaml.safe_dump(doc))

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "streamcl", *args], capture_output=True, text=True,
                              timeout=600, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})

    proc = cli("run", str(path), "-q")
    assert proc.returncode == 0, proc.stderr[-2000:]
    root = tmp_path / "runs" / "tiny_paper"
    assert "avg incremental accuracy" in (root / "summary.md").read_text()  # the table `run` prints
    assert yaml.safe_load((root / "reference.yaml").read_text())["values"][0]["cell"] == "naive"

    proc = cli("report", str(root))
    assert proc.returncode == 0, proc.stderr[-2000:]
    md = proc.stdout
    for column in ("final accuracy", "95 % CI", "avg incremental accuracy", "forgetting", "BWT", "top-5 final",
                   "top-5 avg incremental", "Ω_all", "measured", "published", "difference", "within tolerance"):
        assert column in md, column
    assert "| joint | 2 |" in md and "| naive | 2 |" in md
    assert "reduced: strategy.train_epochs=1 (paper: 30)" in md  # a CPU-sized run is no reproduction
    assert "| naive − joint | 2 |" in md or "| joint − naive | 2 |" in md
    cells = {c.name: c for c in collect(find_runs([root]))}
    assert all(v == pytest.approx(1.0) for v in cells["joint"].values("omega_all").values())
    assert all(0.0 < v < 2.0 for v in cells["naive"].values("omega_all").values())

    for fmt, name in (("latex", "report.tex"), ("csv", "report_results.csv")):
        proc = cli("report", str(root), "--format", fmt, "--out", str(tmp_path / fmt))
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert (tmp_path / fmt / name).stat().st_size > 0
    assert r"$\Omega$\_all" in (tmp_path / "latex" / "report.tex").read_text()


def test_multi_head_run_shows_task_aware_and_task_agnostic_accuracy(tmp_path):
    d = tmp_path / "exp" / "mas" / "run0"
    d.mkdir(parents=True)
    acc = "Top1_Acc_Exp/eval_phase/test_stream/Task{:03d}/Exp{:03d}"
    stream = "Top1_Acc_Stream/eval_phase/test_stream/Task{:03d}"
    rows = [[0, 0, acc.format(0, 0), 0.8], [0, 0, stream.format(0), 0.8],
            [0, 0, "TaskAgnostic_Acc_Stream/eval_phase/test_stream", 0.8],
            [1, 1, acc.format(0, 0), 0.6], [1, 1, acc.format(1, 1), 0.9],
            [1, 1, stream.format(0), 0.6], [1, 1, stream.format(1), 0.9],
            [1, 1, "TaskAgnostic_Acc_Stream/eval_phase/test_stream", 0.5]]
    (d / "metrics.csv").write_text(rows_to_csv_text(rows))
    (d / "summary.json").write_text(json.dumps({"final_accuracy": 0.75, "stored_bytes": 0, "wall_time_s": 1.0}))
    (cell,) = collect(find_runs([tmp_path / "exp"]))
    m = cell.metrics[0]
    # task-aware: after task 1, (0.6 + 0.9) / 2 = 0.75; averaged with 0.8 after task 0: 0.775
    assert m["task_aware_final_accuracy"] == pytest.approx(0.75)
    assert m["task_aware_average_accuracy"] == pytest.approx(0.775)
    assert m["task_agnostic_final_accuracy"] == pytest.approx(0.5)
    text = (make_report([tmp_path / "exp"]) / "report.md").read_text()
    assert "| task-aware final | task-aware avg | task-agnostic final |" in text
    assert "| 75.00 ± 0.00 | 77.50 ± 0.00 | 50.00 ± 0.00 |" in text
