"""Comparison tables and plots from finished runs (``metrics.csv`` + ``summary.json``).

``write_summary(root)`` writes ``summary.csv`` / ``summary.md`` for one experiment (the table
``streamcl run`` prints: final and average incremental accuracy, forgetting, bytes, wall time).
``make_report(paths, out, fmt)`` recomputes the papers' metrics from every run's accuracy rows
(:mod:`streamcl.paper_metrics`, so older run folders gain them), sets them against the YAML's
published numbers (:mod:`streamcl.references`), compares cells run on the same class orders
(:mod:`streamcl.stats`) and writes the tables as Markdown, LaTeX or CSV (:mod:`streamcl.tables`)
with PNG plots: accuracy on seen classes per experience (published end points marked),
forgetting per cell and an accuracy matrix per cell.

Every figure comes from the runs' rows, read by :mod:`streamcl.results` and turned into metrics by
:func:`streamcl.paper_metrics.metrics_from_rows` (:func:`streamcl.paper_metrics.summary_fields` gives
the same figures for a run's ``summary.json``).
What the user sees follows three rules: intervals and error bars are clipped to the values the
quantity can take (:data:`streamcl.paper_metrics.RANGES`); one run is shown as its value, not
``± 0.00``; stored bytes a run did not measure show as "–", not "0 B". Experiences are numbered
from 1, as ``streamcl run`` prints them.
"""

from __future__ import annotations

import math
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import yaml

from streamcl.errors import StreamclError
from streamcl.paper_metrics import METRICS, RANGES, run_metrics
from streamcl.references import compare as compare_references
from streamcl.references import comparison_table, read_reference, scale
from streamcl.results import (
    METRICS_FILE,
    SUMMARY_FILE,
    accuracy_curve,
    accuracy_matrix_from_rows,
    read_run,
    read_summary,
    replay_bytes,
)
from streamcl.stats import Summary, format_ci, format_mean_std, paired_comparison, summarize
from streamcl.tables import FORMATS, Table, render, to_csv
from streamcl.utils import format_bytes

PathLike = Union[str, Path]
COLUMNS = ["cell", "runs", "final_accuracy_mean", "final_accuracy_std", "final_accuracy_ci_low",
           "final_accuracy_ci_high", "average_incremental_accuracy_mean", "average_incremental_accuracy_std",
           "forgetting_mean", "bwt_mean", "stored_bytes", "wall_time_s_mean", "wall_time_s_std"]
# Columns of the paper table shown only when some cell logged them (top-5, multi-head, an offline cell).
OPTIONAL_METRICS = ("top5_final_accuracy", "top5_average_incremental_accuracy", "task_aware_final_accuracy",
                    "task_aware_average_accuracy", "task_agnostic_final_accuracy", "omega_all")
HEADINGS = {
    "final_accuracy": "final accuracy", "average_incremental_accuracy": "avg incremental accuracy",
    "forgetting": "forgetting", "bwt": "BWT", "top5_final_accuracy": "top-5 final",
    "top5_average_incremental_accuracy": "top-5 avg incremental", "task_aware_final_accuracy": "task-aware final",
    "task_aware_average_accuracy": "task-aware avg", "task_agnostic_final_accuracy": "task-agnostic final",
    "omega_all": "Ω_all",
}
_RUN_DIR = re.compile(r"^run(\d+)$")
NOT_MEASURED = "–"  # stored bytes a run did not measure (0 B is a method measured to store nothing)
# One marker and line style per cell (7 x 4 coprime: 28 distinct pairs), markers hollow, so a curve
# drawn exactly over another still shows the one beneath. "*" is left for the published end points.
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
LINESTYLES = ("-", "--", "-.", ":")

__all__ = [
    "CellRuns",
    "accuracy_matrix",
    "collect",
    "find_runs",
    "make_report",
    "markdown_table",
    "metrics_table",
    "paired_table",
    "reference_rows",
    "report_tables",
    "summary_table",
    "write_summary",
    "write_tables",
]


def _nanmean(a: np.ndarray) -> np.ndarray:
    """Mean over axis 0 ignoring NaN; NaN (without numpy's empty-slice warning) where all are NaN."""
    ok = ~np.isnan(a)
    n = ok.sum(axis=0)
    total = np.where(ok, a, 0.0).sum(axis=0)
    return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def _nanstd(a: np.ndarray) -> np.ndarray:
    """Population std over axis 0 ignoring NaN, like ``np.nanstd`` without its warnings."""
    mean = _nanmean(a)
    ok = ~np.isnan(a)
    n = ok.sum(axis=0)
    sq = np.where(ok, (a - mean) ** 2, 0.0).sum(axis=0)
    return np.where(n > 0, np.sqrt(sq / np.maximum(n, 1)), np.nan)


def find_runs(paths: Sequence[PathLike]) -> Dict[str, List[Path]]:
    """Run folders (holding ``metrics.csv``) under each path, grouped by their cell folder.

    A group is named after its cell; cells of the same name from different experiment
    folders stay apart (``demo/crumb``, ``other/crumb``) instead of being pooled.
    """
    by_cell: Dict[Path, List[Path]] = defaultdict(list)
    for p in map(Path, paths):
        if not p.exists():
            raise StreamclError(f"{p}: no such folder; pass run folders such as runs/<experiment>")
        found = [p] if (p / METRICS_FILE).exists() else sorted(m.parent for m in p.rglob(METRICS_FILE))
        for run_dir in found:
            cell_dir = run_dir.parent.resolve()
            if run_dir not in by_cell[cell_dir]:
                by_cell[cell_dir].append(run_dir)
    if not by_cell:
        raise StreamclError(f"no runs (folders with metrics.csv) under {', '.join(map(str, paths))}; "
                            "run `streamcl run FILE.yaml` first")
    names = [c.name for c in by_cell]
    groups: Dict[str, List[Path]] = {}
    for cell_dir, run_dirs in by_cell.items():
        label = cell_dir.name if names.count(cell_dir.name) == 1 else f"{cell_dir.parent.name}/{cell_dir.name}"
        groups[label] = run_dirs
    return groups


@dataclass
class CellRuns:
    """A cell's finished runs: the papers' metrics per run id (fractions), summaries and the cell config.

    ``stored_bytes[run id]``: what the run measured its method to store (None: not measured).
    """

    name: str
    cell_dir: Path
    config: Optional[Dict[str, Any]]
    metrics: Dict[int, Dict[str, float]] = field(default_factory=dict)
    summaries: Dict[int, Dict[str, Any]] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    stored_bytes: Dict[int, Optional[int]] = field(default_factory=dict)

    def values(self, metric: str) -> Dict[int, float]:
        """The metric per run id (fractions; NaN where the run did not log it)."""
        return {rid: m[metric] for rid, m in self.metrics.items()}

    def summary(self, metric: str) -> Summary:
        """Mean, std and 95 % interval over the runs, the interval clipped to the metric's range."""
        return summarize(self.values(metric).values(), bounds=RANGES.get(metric))

    def wall_time(self) -> Summary:
        """Wall time (s) over the runs, from their ``summary.json``."""
        return summarize(s["wall_time_s"] for s in self.summaries.values())

    def stored(self) -> Optional[float]:
        """Mean bytes stored over the runs that measured them; None when none did."""
        measured = [b for b in self.stored_bytes.values() if b is not None]
        return float(np.mean(measured)) if measured else None


def _run_id(run_dir: Path, position: int) -> int:
    """The run id of a ``run<k>`` folder (the class order); another folder name gets ``-1 - position``."""
    m = _RUN_DIR.match(run_dir.name)
    return int(m.group(1)) if m else -1 - position


def _cell_config(cell_dir: Path) -> Optional[Dict[str, Any]]:
    path = cell_dir / "config.yaml"
    if not path.exists():
        return None
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise StreamclError(f"{path}: unreadable cell config ({type(e).__name__}); rerun the experiment") from None
    return cfg if isinstance(cfg, dict) else None


def collect(groups: Dict[str, List[Path]]) -> List[CellRuns]:
    """Every cell's finished runs (those with ``summary.json``), metrics recomputed from ``metrics.csv``.

    Stored bytes come from the rows too (:func:`streamcl.results.replay_bytes`): a ``summary.json``
    written before it could say "not measured" holds 0 for a run that never measured them.

    Ω_all needs the offline learner's run of the same id, in the cell named by the cell config's
    ``evaluation.offline``; when that run is not there, Ω is n/a and the cell says so in a note.
    """
    cells = []
    for name, run_dirs in groups.items():
        cell_dir = run_dirs[0].parent.resolve()
        cfg = _cell_config(cell_dir)
        cell = CellRuns(name, cell_dir, cfg)
        offline = ((cfg or {}).get("evaluation") or {}).get("offline")
        for i, d in enumerate(run_dirs):
            if not (d / SUMMARY_FILE).exists():
                continue
            rid = _run_id(d, i)
            off = cell_dir.parent / str(offline) / d.name if offline else None
            if off is not None and not (off / SUMMARY_FILE).exists():
                cell.notes.append(f"{name}: Ω_all n/a for {d.name}: the offline cell '{offline}' has no finished "
                                  f"{d.name} ({off})")
                off = None
            cell.summaries[rid] = read_summary(d / SUMMARY_FILE)
            cell.metrics[rid] = run_metrics(d, off)
            cell.stored_bytes[rid] = replay_bytes(read_run(d))
        if cell.metrics:
            cells.append(cell)
    return cells


def summary_table(groups: Dict[str, List[Path]], cells: Optional[List[CellRuns]] = None) -> List[Dict[str, object]]:
    """One row per cell over its finished runs (those with ``summary.json``): the ``summary.csv`` columns."""
    rows = []
    for cell in cells if cells is not None else collect(groups):
        acc = cell.summary("final_accuracy")
        aia = cell.summary("average_incremental_accuracy")
        wall = cell.wall_time()
        stored = cell.stored()
        rows.append({
            "cell": cell.name,
            "runs": len(cell.summaries),
            "final_accuracy_mean": round(acc.mean, 4),
            "final_accuracy_std": round(_spread(acc), 4),
            "final_accuracy_ci_low": round(acc.ci_low, 4),
            "final_accuracy_ci_high": round(acc.ci_high, 4),
            "average_incremental_accuracy_mean": round(aia.mean, 4),
            "average_incremental_accuracy_std": round(_spread(aia), 4),
            "forgetting_mean": round(cell.summary("forgetting").mean, 4),
            "bwt_mean": round(cell.summary("bwt").mean, 4),
            "stored_bytes": None if stored is None else int(stored),
            "wall_time_s_mean": round(wall.mean, 2),
            "wall_time_s_std": round(_spread(wall), 2),
        })
    return rows


def _spread(s: Summary) -> float:
    """The std over runs, NaN with fewer than two (one run has no spread, not a spread of 0)."""
    return s.std if s.n > 1 else math.nan


def _mean_spread(mean: float, std: float, scale: float, digits: int) -> str:
    """``mean ± std`` scaled, the mean alone when there is no spread (NaN std), "n/a" without a mean."""
    if np.isnan(mean):
        return "n/a"
    return f"{scale * mean:.{digits}f}" if np.isnan(std) else f"{scale * mean:.{digits}f} ± {scale * std:.{digits}f}"


def _format_stored(n: Optional[float]) -> str:
    """Bytes stored, human-readable; "–" when not measured (never "0 B", which means measured to be none)."""
    return NOT_MEASURED if n is None else format_bytes(int(n))


def markdown_table(rows: List[Dict[str, object]]) -> str:
    """The table ``streamcl run`` prints at the end (``summary.md``)."""
    lines = [
        "| cell | runs | final accuracy (seen classes) | avg incremental accuracy | forgetting | stored bytes "
        "| wall time (s) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['cell']} | {r['runs']} | {_mean_spread(r['final_accuracy_mean'], r['final_accuracy_std'], 100, 2)} "
            f"| {_mean_spread(r['average_incremental_accuracy_mean'], r['average_incremental_accuracy_std'], 100, 2)} "
            f"| {_mean_spread(r['forgetting_mean'], math.nan, 100, 2)} | {_format_stored(r['stored_bytes'])} "
            f"| {_mean_spread(r['wall_time_s_mean'], r['wall_time_s_std'], 1, 1)} |"
        )
    return "\n".join(lines) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_tables(rows: List[Dict[str, object]], out: Path) -> None:
    """``summary.csv`` (an empty field: not measured, e.g. stored bytes) and ``summary.md`` in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    csv_lines = [",".join(COLUMNS)] + [",".join("" if r[c] is None else str(r[c]) for c in COLUMNS) for r in rows]
    _atomic_write(out / "summary.csv", "\n".join(csv_lines) + "\n")
    _atomic_write(out / "summary.md", markdown_table(rows))


def write_summary(root: PathLike) -> Path:
    """``summary.csv`` and ``summary.md`` for every cell under an experiment folder."""
    root = Path(root)
    write_tables(summary_table(find_runs([root])), root)
    return root / "summary.md"


# ------------------------------------------------------------------------------ the paper tables


def metrics_table(cells: Sequence[CellRuns]) -> Table:
    """The papers' metrics per cell: mean ± std over runs (%; Ω as a ratio) and final accuracy's 95 % interval."""
    shown = [m for m in OPTIONAL_METRICS if any(not np.isnan(v) for c in cells for v in c.values(m).values())]
    metrics = ["final_accuracy", "average_incremental_accuracy", "forgetting", "bwt", *shown]
    header = ["cell", "runs", "final accuracy", "95 % CI"] + [HEADINGS[m] for m in metrics[1:]]
    t = Table("Results (mean ± std over runs, %)", header + ["stored", "wall time (s)"])
    for c in cells:
        acc = c.summary("final_accuracy")
        row = [c.name, str(acc.n), format_mean_std(acc), format_ci(acc)]
        for m in metrics[1:]:
            s = c.summary(m)
            row.append(format_mean_std(s, scale=scale(m), digits=2 if scale(m) == 100 else 3))
        row += [_format_stored(c.stored()), format_mean_std(c.wall_time(), scale=1, digits=1)]
        t.rows.append(row)
        t.notes += c.notes
    t.notes.append("95 % CI: Student-t interval of the mean final accuracy (n/a with one run), clipped to [0, 100]; "
                   "one run shows its value alone (no spread); stored: – where the runs did not measure it; "
                   "forgetting after Chaudhry et al. 2018, BWT after Lopez-Paz & Ranzato 2017, both from the "
                   "accuracy matrix")
    return t


def _same_orders(a: CellRuns, b: CellRuns) -> bool:
    """Two cells ran the same class orders: same experiment folder, benchmark and class-order seed."""
    if a.cell_dir.parent != b.cell_dir.parent or a.config is None or b.config is None:
        return False
    keys = ("benchmark", "class_order_seed", "seed")
    return all(a.config.get(k) == b.config.get(k) for k in keys)


def paired_table(cells: Sequence[CellRuns], metric: str = "final_accuracy",
                 baseline: Optional[str] = None) -> Optional[Table]:
    """Paired differences between cells run on the same class orders (every pair, or each cell vs ``baseline``)."""
    names = [c.name for c in cells]
    if baseline is not None and baseline not in names:
        raise StreamclError(f"--baseline {baseline}: no such cell in the report (cells: {', '.join(names)})")
    pairs = [(a, b) for i, a in enumerate(cells) for b in cells[i + 1:]]
    if baseline is not None:
        base = cells[names.index(baseline)]
        pairs = [(c, base) for c in cells if c is not base]
    pairs = [(a, b) for a, b in pairs if _same_orders(a, b)]
    if not pairs:
        return None
    t = Table(f"Paired differences on the same class orders ({HEADINGS[metric]}, points)",
              ["a − b", "pairs", "mean difference", "95 % CI", "wins a / b / ties", "Wilcoxon p"])
    notes = set()
    for a, b in pairs:
        p = paired_comparison(a.values(metric), b.values(metric), bounds=RANGES.get(metric))
        ci = "n/a" if np.isnan(p.ci_low) else f"[{100 * p.ci_low:+.2f}, {100 * p.ci_high:+.2f}]"
        mean = "n/a" if np.isnan(p.mean_diff) else f"{100 * p.mean_diff:+.2f}"
        t.rows.append([f"{a.name} − {b.name}", str(p.n_pairs), mean, ci, f"{p.wins_a} / {p.wins_b} / {p.ties}",
                       "—" if p.p_value is None else f"{p.p_value:.4f}"])
        if p.note:
            notes.add(p.note)
    t.notes = ["pairs are runs with the same run id (the same class order); Wilcoxon signed-rank, exact, "
               "two-sided: no normality assumed for a handful of orders"] + sorted(notes)
    return t


def reference_rows(cells: Sequence[CellRuns]) -> List[Dict[str, Any]]:
    """Each experiment folder's ``reference.yaml`` set against its cells' runs."""
    rows: List[Dict[str, Any]] = []
    by_exp: Dict[Path, List[CellRuns]] = defaultdict(list)
    for c in cells:
        by_exp[c.cell_dir.parent].append(c)
    for exp_dir, group in by_exp.items():
        ref = read_reference(exp_dir)
        if ref is None:
            continue
        label = {c.cell_dir.name: c.name for c in group}  # the YAML names cells by folder
        measured = {(c.cell_dir.name, m): c.summary(m) for c in group for m in METRICS}
        configs = {c.cell_dir.name: c.config for c in group}
        for r in compare_references(ref, measured, configs):
            r["cell"] = label.get(r["cell"], r["cell"])
            rows.append(r)
    return rows


def _curves(run_dirs: List[Path]) -> np.ndarray:
    """(runs, experiences) accuracy on seen classes after each experience, NaN where not evaluated (or padded)."""
    curves = [accuracy_curve(read_run(d)) for d in run_dirs]
    n = max((len(c) for c in curves), default=0)
    return np.array([c + [np.nan] * (n - len(c)) for c in curves], dtype=float).reshape(len(curves), n)


def accuracy_matrix(run_dir: Path) -> np.ndarray:
    """acc[t, j]: accuracy on experience j's test set after training experience t (NaN if not evaluated)."""
    m = accuracy_matrix_from_rows(read_run(run_dir))
    return np.zeros((0, 0)) if np.isnan(m).all() else m  # (0, 0): nothing to draw


def _published_end_points(refs: Sequence[Dict[str, Any]]) -> Dict[str, float]:
    """Published final accuracy (%) per cell, for the curve plot."""
    return {r["cell"]: r["published"] for r in refs if r["metric"] == "final_accuracy"}


def _experiences(n: int) -> np.ndarray:
    """Experience numbers as users see them (``streamcl run`` prints "experience 1/3"): 1..n."""
    return np.arange(1, n + 1)


def _line_style(i: int) -> Dict[str, Any]:
    """The i-th cell's marker and line style: distinct for 28 cells, hollow markers, so no curve hides another."""
    return {"marker": MARKERS[i % len(MARKERS)], "linestyle": LINESTYLES[i % len(LINESTYLES)],
            "fillstyle": "none"}


def _band(mean: np.ndarray, std: np.ndarray, bounds: Tuple[float, float]) -> Tuple[np.ndarray, np.ndarray]:
    """mean ± std clipped to ``bounds``: no band or bar shows a value the quantity cannot take."""
    lo, hi = bounds
    return np.clip(mean - std, lo, hi), np.clip(mean + std, lo, hi)


def _curve_figure(plt, groups: Dict[str, List[Path]], published: Dict[str, float]):
    """Accuracy on seen classes after each experience (1..T), one line per cell (band ± std), published end points."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    n_max = 0
    for i, (cell, run_dirs) in enumerate(sorted(groups.items())):
        c = _curves(run_dirs)
        if c.size == 0:
            continue
        n_max = max(n_max, c.shape[1])
        x = _experiences(c.shape[1])
        mean = _nanmean(c)
        (line,) = ax.plot(x, 100 * mean, label=f"{cell} ({len(run_dirs)} runs)", **_line_style(i))
        if c.shape[0] > 1:
            low, high = _band(mean, _nanstd(c), RANGES["final_accuracy"])
            ax.fill_between(x, 100 * low, 100 * high, alpha=0.2, color=line.get_color())
        if cell in published:
            ax.plot([x[-1]], [published[cell]], marker="*", markersize=14, color=line.get_color(),
                    markeredgecolor="black", linestyle="none", label=f"{cell}: published {published[cell]:g}")
    ax.set_xticks(_experiences(n_max))
    ax.set_xlabel("after training experience")
    ax.set_ylabel("accuracy on seen classes (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def _forgetting_figure(plt, cells: Sequence[CellRuns]):
    """Forgetting per cell (Chaudhry et al.), mean ± std over runs clipped to its range; None when no cell has it."""
    stats = [(c.name, c.summary("forgetting")) for c in cells]
    stats = [(n, s) for n, s in stats if s.n]
    if not stats:
        return None
    mean = np.array([s.mean for _, s in stats])
    std = np.array([s.std for _, s in stats])
    low, high = _band(mean, std, RANGES["forgetting"])
    fig, ax = plt.subplots(figsize=(1.8 + 0.9 * len(stats), 3.8))
    x = np.arange(len(stats))
    ax.bar(x, 100 * mean, yerr=100 * np.vstack([mean - low, high - mean]), capsize=4, color="tab:red", alpha=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels([n for n, _ in stats], rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("forgetting (%)")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return fig


def _mean_matrix(run_dirs: List[Path]) -> Tuple[np.ndarray, int]:
    """The runs' accuracy matrices averaged (NaN where no run evaluated), and how many runs had one."""
    mats = [m for m in (accuracy_matrix(d) for d in run_dirs) if m.size]
    if not mats:
        return np.zeros((0, 0)), 0
    n = max(m.shape[0] for m in mats)
    stack = np.full((len(mats), n, n), np.nan)
    for i, m in enumerate(mats):
        stack[i, : m.shape[0], : m.shape[1]] = m
    return _nanmean(stack), len(mats)


def _matrix_figure(plt, cell: str, mean: np.ndarray, runs: int):
    """One cell's mean accuracy matrix (%), experiences numbered 1..T on both axes."""
    n = mean.shape[0]
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * n, 1.0 + 0.55 * n))
    im = ax.imshow(100 * mean, vmin=0, vmax=100, cmap="viridis")
    for t in range(n):
        for j in range(n):
            if not np.isnan(mean[t, j]):
                ax.text(j, t, f"{100 * mean[t, j]:.0f}", ha="center", va="center", fontsize=7,
                        color="white" if mean[t, j] < 0.6 else "black")
    ax.set_xlabel("evaluated experience")
    ax.set_ylabel("after training experience")
    ax.set_xticks(range(n))
    ax.set_xticklabels([str(e) for e in _experiences(n)])
    ax.set_yticks(range(n))
    ax.set_yticklabels([str(e) for e in _experiences(n)])
    ax.set_title(f"{cell}: mean over {runs} run{'s' if runs > 1 else ''}", fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def _save(plt, fig, path: Path) -> None:
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _plot_matrices(plt, groups: Dict[str, List[Path]], out: Path) -> List[str]:
    """``accuracy_matrix_<cell>.png`` for every cell with per-experience accuracy rows; their file names."""
    images = []
    for cell, run_dirs in sorted(groups.items()):
        mean, runs = _mean_matrix(run_dirs)
        if not runs:
            continue
        name = f"accuracy_matrix_{cell.replace('/', '_')}.png"
        _save(plt, _matrix_figure(plt, cell, mean, runs), out / name)
        images.append(name)
    return images


def report_tables(cells: Sequence[CellRuns], baseline: Optional[str] = None) -> List[Table]:
    """The report's tables: the papers' metrics, published numbers (when referenced), paired differences."""
    tables = [metrics_table(cells)]
    refs = reference_rows(cells)
    if refs:
        tables.append(comparison_table(refs))
    paired = paired_table(cells, baseline=baseline)
    if paired is not None:
        tables.append(paired)
    return tables


def make_report(paths: Sequence[PathLike], out: PathLike | None = None, fmt: str = "md",
                baseline: Optional[str] = None) -> Path:
    """Plots and tables for the runs under ``paths`` in ``fmt`` (md, latex or csv); returns the report folder.

    Everything is computed before anything is written, so bad input (an unknown ``baseline``, an
    offline run that does not match) leaves no half-written report.
    """
    if fmt not in FORMATS:
        raise StreamclError(f"--format {fmt}: one of {', '.join(FORMATS)}")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = find_runs(paths)
    cells = collect(groups)
    tables = report_tables(cells, baseline)
    rows = summary_table(groups, cells)
    out = Path(out) if out is not None else Path(paths[0]) / "report"
    out.mkdir(parents=True, exist_ok=True)

    _save(plt, _curve_figure(plt, groups, _published_end_points(reference_rows(cells))), out / "accuracy_curve.png")
    images = ["accuracy_curve.png"]
    forgetting_fig = _forgetting_figure(plt, cells)
    if forgetting_fig is not None:
        _save(plt, forgetting_fig, out / "forgetting.png")
        images.append("forgetting.png")
    images += _plot_matrices(plt, groups, out)
    write_tables(rows, out)
    if fmt == "csv":
        for t in tables:
            slug = re.sub(r"[^a-z0-9]+", "_", t.title.lower().split("(")[0]).strip("_")
            _atomic_write(out / f"report_{slug}.csv", to_csv(t))
    elif fmt == "latex":
        _atomic_write(out / "report.tex", render(tables, "latex"))
    if fmt == "md" or not (out / "report.md").exists():
        md = ["# streamcl report", "", render(tables, "md")] + [f"![{i}]({i})" for i in images]
        _atomic_write(out / "report.md", "\n".join(md) + "\n")
    return out
