"""Comparison tables and plots from finished runs (``metrics.csv`` + ``summary.json``).

``write_summary(root)`` writes ``summary.csv`` / ``summary.md`` for one experiment
(mean ± std over runs of final accuracy on all seen classes, stored bytes, wall
time); ``make_report(paths, out)`` adds PNG plots: accuracy on seen classes after
each experience (one line per cell, band = ± std over runs) and an accuracy
matrix heatmap per cell.
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path
from typing import Dict, List, Sequence, Union

import numpy as np

from streamcl.errors import StreamclError
from streamcl.results import accuracy_per_experience, experience_accuracies, read_metrics, read_summary
from streamcl.utils import format_bytes

PathLike = Union[str, Path]
COLUMNS = ["cell", "runs", "final_accuracy_mean", "final_accuracy_std", "forgetting_mean", "stored_bytes",
           "wall_time_s_mean", "wall_time_s_std"]


def _mean_std(values: Sequence[float]) -> tuple:
    vals = [v for v in values if v is not None]
    if not vals:
        return float("nan"), float("nan")
    arr = np.asarray(vals, dtype=float)
    return float(arr.mean()), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0


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
        found = [p] if (p / "metrics.csv").exists() else sorted(m.parent for m in p.rglob("metrics.csv"))
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


def summary_table(groups: Dict[str, List[Path]]) -> List[Dict[str, object]]:
    """One row per cell over its finished runs (those with ``summary.json``)."""
    rows = []
    for cell, run_dirs in groups.items():
        sums = [read_summary(d / "summary.json") for d in run_dirs if (d / "summary.json").exists()]
        if not sums:
            continue
        acc = _mean_std([s["final_accuracy"] for s in sums])
        wall = _mean_std([s["wall_time_s"] for s in sums])
        fgt = _mean_std([s.get("forgetting") for s in sums])
        rows.append({
            "cell": cell,
            "runs": len(sums),
            "final_accuracy_mean": round(acc[0], 4),
            "final_accuracy_std": round(acc[1], 4),
            "forgetting_mean": round(fgt[0], 4),
            "stored_bytes": int(np.mean([s["stored_bytes"] for s in sums])),
            "wall_time_s_mean": round(wall[0], 2),
            "wall_time_s_std": round(wall[1], 2),
        })
    return rows


def markdown_table(rows: List[Dict[str, object]]) -> str:
    lines = [
        "| cell | runs | final accuracy (seen classes) | forgetting | stored bytes | wall time (s) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['cell']} | {r['runs']} | {100 * r['final_accuracy_mean']:.2f} ± {100 * r['final_accuracy_std']:.2f} "
            f"| {r['forgetting_mean']:.4f} | {format_bytes(r['stored_bytes'])} "
            f"| {r['wall_time_s_mean']:.1f} ± {r['wall_time_s_std']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_tables(rows: List[Dict[str, object]], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    csv_lines = [",".join(COLUMNS)] + [",".join(str(r[c]) for c in COLUMNS) for r in rows]
    _atomic_write(out / "summary.csv", "\n".join(csv_lines) + "\n")
    _atomic_write(out / "summary.md", markdown_table(rows))


def write_summary(root: PathLike) -> Path:
    """``summary.csv`` and ``summary.md`` for every cell under an experiment folder."""
    root = Path(root)
    write_tables(summary_table(find_runs([root])), root)
    return root / "summary.md"


def _curves(run_dirs: List[Path]) -> np.ndarray:
    """(runs, experiences) accuracy on seen classes after each experience (NaN-padded)."""
    curves = []
    for d in run_dirs:
        curves.append(accuracy_per_experience(read_metrics(d / "metrics.csv")))
    n = max((len(c) for c in curves), default=0)
    return np.array([c + [np.nan] * (n - len(c)) for c in curves], dtype=float)


def accuracy_matrix(run_dir: Path) -> np.ndarray:
    """acc[t, j]: accuracy on experience j's test set after training experience t (NaN if not evaluated)."""
    cells = experience_accuracies(read_metrics(run_dir / "metrics.csv"))
    if not cells:
        return np.zeros((0, 0))
    n = max(max(t, j) for t, j, _ in cells) + 1
    m = np.full((n, n), np.nan)
    for t, j, v in cells:
        m[t, j] = v
    return m


def make_report(paths: Sequence[PathLike], out: PathLike | None = None) -> Path:
    """Plots + tables for the runs under ``paths``; returns the report folder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = find_runs(paths)
    out = Path(out) if out is not None else Path(paths[0]) / "report"
    out.mkdir(parents=True, exist_ok=True)

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    n_max = 0
    for cell, run_dirs in sorted(groups.items()):
        c = _curves(run_dirs)
        if c.size == 0:
            continue
        n_max = max(n_max, c.shape[1])
        x = np.arange(c.shape[1])
        mean = _nanmean(c)
        ax.plot(x, 100 * mean, marker="o", label=f"{cell} ({len(run_dirs)} runs)")
        if c.shape[0] > 1:
            std = _nanstd(c)
            ax.fill_between(x, 100 * (mean - std), 100 * (mean + std), alpha=0.2)
    ax.set_xticks(range(n_max))
    ax.set_xlabel("after training experience")
    ax.set_ylabel("accuracy on seen classes (%)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy_curve.png", dpi=120)
    plt.close(fig)

    images = ["accuracy_curve.png"]
    for cell, run_dirs in sorted(groups.items()):
        mats = [accuracy_matrix(d) for d in run_dirs]
        mats = [m for m in mats if m.size]
        if not mats:
            continue
        n = max(m.shape[0] for m in mats)
        stack = np.full((len(mats), n, n), np.nan)
        for i, m in enumerate(mats):
            stack[i, : m.shape[0], : m.shape[1]] = m
        mean = _nanmean(stack)
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
        ax.set_yticks(range(n))
        ax.set_title(f"{cell}: mean over {len(mats)} run{'s' if len(mats) > 1 else ''}", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
        fig.tight_layout()
        name = f"accuracy_matrix_{cell.replace('/', '_')}.png"
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        images.append(name)

    rows = summary_table(groups)
    write_tables(rows, out)
    md = ["# streamcl report", "", markdown_table(rows)] + [f"![{i}]({i})" for i in images]
    _atomic_write(out / "report.md", "\n".join(md) + "\n")
    return out
