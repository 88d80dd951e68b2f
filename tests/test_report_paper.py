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
              config: Optional[Dict] = None, top5: Optional[List[float]] = None,
              stored: Optional[int] = None) -> Path:
    """A finished run: ``matrix[t][j]`` per-experience accuracy (None: not evaluated), ``curve[t]`` stream accuracy.

    ``stored``: the ``replay_bytes`` metric's value after each experience (None: not measured, no row).
    Its ``summary.json`` says 1000 stored bytes whatever ``stored`` is (the report must read the rows).
    """
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
        if stored is not None:
            rows.append([t, t, "ReplayBytes/train_phase/train_stream", stored])
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
    assert "Ω_all" in text and "| 0.750 |" in text  # one run: the value alone, no "± 0.000"


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
    assert "| wa | final_accuracy | 70.00 (n=1) | 71.00 | -1.00 | ± 1.5 | yes | reproduced |" in text
    assert "| wa | average_incremental_accuracy | 76.67 (n=1) | 80.00 | -3.33 | ± 1 | no | not reproduced |" \
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
    assert r"70.00 (n=1)" in tex and r"\pm$ 0.00" not in tex and r"final\_accuracy" in tex and r"95 \% CI" in tex
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
    assert "| 75.00 | 77.50 | 50.00 |" in text  # one run: no spread to show


# ---- issue #25: what `streamcl report` shows ------------------------------------------------------

def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _intervals(text: str) -> List[tuple]:
    """Every ``[low, high]`` printed in a report."""
    import re

    return [(float(a), float(b)) for a, b in re.findall(r"\[([-+]?\d+\.\d+), ([-+]?\d+\.\d+)\]", text)]


def test_interval_near_100_is_clipped_to_the_accuracy_range(tmp_path):
    exp = tmp_path / "exp"
    # final accuracies 0.99 and 0.80: mean 0.895, std 0.1344, t(0.975, 1) = 12.706 -> half-width 1.2075:
    # the t interval [-31.3, 210.3] % is cut to [0, 100], the accuracies possible
    write_run(exp / "wa", 0, M, [0.9, 0.7, 0.99])
    write_run(exp / "wa", 1, M, [0.9, 0.7, 0.80])
    row = summary_table({}, collect(find_runs([exp])))[0]
    assert row["final_accuracy_ci_low"] == 0.0 and row["final_accuracy_ci_high"] == 1.0
    text = (make_report([exp]) / "report.md").read_text()
    assert "| wa | 2 | 89.50 ± 13.44 | [0.0, 100.0] |" in text
    assert _intervals(text) and all(0 <= lo <= hi <= 100 for lo, hi in _intervals(text))
    assert "clipped to [0, 100]" in text


def test_paired_interval_is_clipped_to_the_possible_differences(tmp_path):
    exp = tmp_path / "exp"
    for run, (a, b) in enumerate([(1.0, 0.0), (0.0, 1.0)]):  # differences +1, -1: t interval +-12.7 (points x100)
        write_run(exp / "a", run, M, [0.9, 0.7, a])
        write_run(exp / "b", run, M, [0.9, 0.7, b])
    text = (make_report([exp]) / "report.md").read_text()
    assert "| a − b | 2 | +0.00 | [-100.00, +100.00] |" in text


def test_forgetting_error_bar_stays_within_its_range(tmp_path):
    exp = tmp_path / "exp"
    # forgetting = acc[0,0] - acc[1,0]: 1.0 - 0.05 = 0.95 and 0.9 - 0.4 = 0.5; mean 0.725, std 0.318:
    # mean + std = 1.043 > 1, so the bar's top is cut at 100 %
    write_run(exp / "lwf", 0, [[1.0, None], [0.05, 0.9]], [1.0, 0.5])
    write_run(exp / "lwf", 1, [[0.9, None], [0.4, 0.9]], [0.9, 0.6])
    from streamcl.report import _forgetting_figure

    plt = _plt()
    fig = _forgetting_figure(plt, collect(find_runs([exp])))
    from matplotlib.container import ErrorbarContainer

    (bar,) = [c for c in fig.axes[0].containers if isinstance(c, ErrorbarContainer)]
    tops = [y for seg in bar.lines[2][0].get_segments() for _, y in seg]
    plt.close(fig)
    assert max(tops) == pytest.approx(100.0) and min(tops) == pytest.approx(100 * (0.725 - 0.31820), abs=1e-3)


def test_one_run_shows_its_value_not_plus_minus_zero(tmp_path):
    exp = tmp_path / "exp"
    write_run(exp / "wa", 0, M, CURVE)
    out = make_report([exp])
    results = (out / "report.md").read_text().split("Results")[1]
    assert "| wa | 1 | 70.00 | n/a | 76.67 | 25.00 | -25.00 |" in results
    assert "± 0.0" not in results and "± 0.0" not in (out / "summary.md").read_text()
    assert "| wa | 1 | 70.00 | 76.67 | 25.00 | – | 2.0 |" in (out / "summary.md").read_text()
    csv_row = (out / "summary.csv").read_text().splitlines()[1].split(",")
    assert csv_row[:4] == ["wa", "1", "0.7", "nan"]  # std of one run: none, not 0


def test_stored_bytes_not_measured_is_a_dash_and_measured_zero_is_0_B(tmp_path):
    exp = tmp_path / "exp"
    write_run(exp / "naive", 0, M, CURVE)  # no replay_bytes metric (summary.json says 1000 anyway)
    write_run(exp / "lwf", 0, M, CURVE, stored=0)  # measured: stores nothing
    write_run(exp / "replay", 0, M, CURVE, stored=3072)
    out = make_report([exp])
    md = (out / "summary.md").read_text()
    assert "| naive | 1 | 70.00 | 76.67 | 25.00 | – |" in md
    assert "| lwf | 1 | 70.00 | 76.67 | 25.00 | 0 B |" in md
    assert "| replay | 1 | 70.00 | 76.67 | 25.00 | 3.07 kB |" in md
    report = (out / "report.md").read_text()
    assert "| – | 2.0 |" in report and "| 0 B | 2.0 |" in report and "| 3.07 kB | 2.0 |" in report
    stored = {r.split(",")[0]: r.split(",")[10] for r in (out / "summary.csv").read_text().splitlines()[1:]}
    assert stored == {"naive": "", "lwf": "0", "replay": "3072"}


def test_summary_fields_and_the_table_share_one_forgetting(tmp_path):
    from streamcl.paper_metrics import summary_fields
    from streamcl.results import read_run

    exp = tmp_path / "exp"
    # rising accuracy on experience 0 (0.5 -> 0.7): forgetting -0.2 (negative), no StreamForgetting row
    d = write_run(exp / "wa", 0, [[0.5, None], [0.7, 0.9]], [0.5, 0.8], stored=0)
    fields = summary_fields(read_run(d))
    row = summary_table(find_runs([exp]))[0]
    assert fields["forgetting"] == pytest.approx(-0.2) and row["forgetting_mean"] == round(fields["forgetting"], 4)
    assert fields["bwt"] == pytest.approx(0.2) and row["bwt_mean"] == round(fields["bwt"], 4)
    assert fields["final_accuracy"] == row["final_accuracy_mean"] == 0.8
    assert fields["stored_bytes"] == 0 and fields["accuracy_per_experience"] == [0.5, 0.8]
    assert json.loads(json.dumps(fields)) == fields  # JSON-ready: no NaN


def test_the_runner_writes_the_tables_figures_to_summary_json(tmp_path):
    from types import SimpleNamespace

    from streamcl.paper_metrics import summary_fields
    from streamcl.runner import Run

    rows = [[0, 0, EXP.format(0), 0.5], [0, 0, STREAM, 0.5],
            [1, 1, EXP.format(0), 0.7], [1, 1, EXP.format(1), 0.9], [1, 1, STREAM, 0.8]]
    run = SimpleNamespace(rows=rows, cell=SimpleNamespace(name="wa"), run=0, cfg={"benchmark": BENCH})
    summary = Run._summary(run, 2, 1.0)
    expected = summary_fields([dict(zip(("experience", "step", "metric", "value"), r)) for r in rows])
    assert {k: summary[k] for k in expected} == expected  # forgetting -0.2, not null; stored bytes null, not 0


def test_plots_number_experiences_from_1(tmp_path):
    from streamcl.report import _curve_figure, _matrix_figure, _mean_matrix

    exp = tmp_path / "exp"
    write_run(exp / "wa", 0, M, CURVE)
    groups = find_runs([exp])
    plt = _plt()
    fig = _curve_figure(plt, groups, {"wa": 71.0})
    ax = fig.axes[0]
    assert [list(line.get_xdata()) for line in ax.get_lines()] == [[1, 2, 3], [3]]  # curve, published star
    assert list(ax.get_xticks()) == [1, 2, 3]
    plt.close(fig)
    mean, runs = _mean_matrix(groups["wa"])
    fig = _matrix_figure(plt, "wa", mean, runs)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "3"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["1", "2", "3"]
    plt.close(fig)


def test_identical_curves_stay_distinguishable(tmp_path):
    from streamcl.report import _curve_figure

    exp = tmp_path / "exp"
    for cell in ("a", "b", "c", "d", "e"):
        write_run(exp / cell, 0, M, CURVE)  # five curves exactly on top of one another
    plt = _plt()
    fig = _curve_figure(plt, find_runs([exp]), {})
    lines = fig.axes[0].get_lines()
    styles = {(line.get_marker(), line.get_linestyle()) for line in lines}
    plt.close(fig)
    assert len(lines) == 5 and len(styles) == 5
    assert len({line.get_marker() for line in lines}) == 5 and all(line.get_fillstyle() == "none" for line in lines)


def test_the_report_reads_rows_only_through_streamcl_results():
    """metrics.csv parsing, row grouping, curves and matrices live in streamcl.results alone (issue #25)."""
    import ast
    import inspect

    import streamcl.paper_metrics as pm
    import streamcl.report as report
    import streamcl.results as results

    for name in ("accuracy_curve", "accuracy_matrix_from_rows", "topk_curve", "task_agnostic_curve", "task_labels",
                 "TOPK_STREAM_PREFIXES", "TASK_AGNOSTIC_ACC"):
        assert getattr(pm, name) is getattr(results, name), name  # the old import path still works
    for module in (pm, report):
        tree = ast.parse(inspect.getsource(module))
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)} | \
                {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        strings = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
        assert not names & {"csv", "read_metrics", "experience_accuracies", "accuracy_per_experience"} or \
            module is pm, module.__name__
        assert "metrics.csv" not in strings and "Top1_Acc_Stream/eval_phase/test_stream" not in strings
        defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
        assert not defined & {"_dense_curve", "accuracy_curve", "accuracy_matrix_from_rows", "topk_curve",
                              "task_labels", "task_agnostic_curve", "_n_experiences"}, module.__name__
