"""Published numbers next to measured ones: an experiment's ``reference:`` section.

The runner copies a YAML's validated ``reference:`` section to ``<output_dir>/<name>/reference.yaml``
(see :mod:`streamcl.config.schema`); the report sets each value against the mean over the cell's
runs and marks runs whose configuration differs from the paper's ``setting`` (epochs, model,
data size...) as *reduced*, so that a CPU-sized run is never read as a reproduction.
:func:`published_table` lists the references of YAML files without any run (the README's table).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import yaml

from streamcl.config.reference import REFERENCE_FILE
from streamcl.errors import StreamclError
from streamcl.paper_metrics import METRICS
from streamcl.stats import Summary
from streamcl.tables import Table


def scale(metric: str) -> float:
    """100 for metrics reported in % (the fractions in ``metrics.csv``), 1 for ratios (Ω)."""
    return 100.0 if METRICS[metric][0] == "%" else 1.0


def read_reference(experiment_dir: Path) -> Optional[Dict[str, Any]]:
    """The experiment's ``reference.yaml`` (None when its YAML has no ``reference:`` section)."""
    path = Path(experiment_dir) / REFERENCE_FILE
    if not path.exists():
        return None
    try:
        ref = yaml.safe_load(path.read_text(encoding="utf-8"))
        if not isinstance(ref, dict) or not isinstance(ref.get("values"), list):
            raise ValueError("no `values:` list")
        return ref
    except (yaml.YAMLError, ValueError, UnicodeDecodeError) as e:
        raise StreamclError(f"{path}: unreadable reference section ({str(e).splitlines()[0][:100]}); rerun "
                            "`streamcl run` on the experiment YAML to rewrite it") from None


def reduced_keys(cell_config: Optional[Mapping[str, Any]], setting: Mapping[str, Any]) -> List[str]:
    """``key=run value (paper: value)`` for every ``setting`` key where the run's cell config differs."""
    if not setting:
        return []
    if cell_config is None:
        return ["config.yaml missing: setting unknown"]
    from streamcl.config.reference import lookup, split_key_path

    out = []
    for key, paper in setting.items():
        found, got = lookup(cell_config, split_key_path(key))
        if not found:
            out.append(f"{key} unset (paper: {paper})")
        elif got != paper:
            out.append(f"{key}={got} (paper: {paper})")
    return out


def compare(reference: Mapping[str, Any], measured: Mapping[Tuple[str, str], Summary],
            configs: Mapping[str, Optional[Mapping[str, Any]]], prefix: str = "") -> List[Dict[str, Any]]:
    """One row per reference value: measured mean (published units), difference, tolerance check, reduced keys.

    ``measured[(cell, metric)]`` is the summary over the cell's runs (fractions); ``configs[cell]`` the
    cell's ``config.yaml``. ``prefix`` names cells of another experiment folder (``exp/cell``).
    """
    rows = []
    setting = reference.get("setting") or {}
    for v in reference["values"]:
        cell, metric = prefix + str(v["cell"]), str(v["metric"])
        s = measured.get((cell, metric))
        k = scale(metric)
        mean = s.mean * k if s is not None and s.n else math.nan
        diff = mean - float(v["value"])
        rows.append({
            "cell": cell, "metric": metric, "measured": mean, "std": (s.std * k) if s is not None and s.n else math.nan,
            "n": s.n if s is not None else 0, "published": float(v["value"]), "difference": diff,
            "tolerance": float(v["tolerance"]), "within": (not math.isnan(diff)) and abs(diff) <= float(v["tolerance"]),
            "reduced": reduced_keys(configs.get(cell), setting),
            "source": v.get("source") or reference.get("source", ""),
        })
    return rows


def status(row: Mapping[str, Any]) -> str:
    """``reproduced`` / ``not reproduced`` for a run at the paper's setting; ``reduced`` otherwise."""
    if row["n"] == 0:
        return "no finished runs"
    if row["reduced"]:
        return "reduced: " + "; ".join(row["reduced"])
    return "reproduced" if row["within"] else "not reproduced"


def _num(x: float, digits: int = 2, sign: bool = False) -> str:
    return "n/a" if math.isnan(x) else f"{x:{'+' if sign else ''}.{digits}f}"


def comparison_table(rows: Sequence[Mapping[str, Any]]) -> Table:
    """measured | published | difference | within tolerance, with the sources as notes."""
    t = Table("Published numbers", ["cell", "metric", "measured", "published", "difference", "tolerance",
                                    "within tolerance", "status"], align="llrrrrll")
    sources: List[str] = []
    for r in rows:
        if math.isnan(r["measured"]):
            measured = "n/a"
        elif r["n"] == 1:  # one run has no spread to show
            measured = f"{r['measured']:.2f} (n=1)"
        else:
            measured = f"{r['measured']:.2f} ± {r['std']:.2f} (n={r['n']})"
        t.rows.append([r["cell"], r["metric"], measured, _num(r["published"]), _num(r["difference"], sign=True),
                       f"± {r['tolerance']:g}", "yes" if r["within"] else "no", status(r)])
        if r["source"] and r["source"] not in sources:
            sources.append(r["source"])
    t.notes = [f"source: {s}" for s in sources] + [
        "a *reduced* run differs from the paper's setting at the keys listed: it is not a reproduction"]
    return t


def published_references(paths: Sequence[Union[str, Path]]) -> List[Tuple[str, Dict[str, Any]]]:
    """``(file, reference section)`` of each experiment YAML given, or under each folder given (files without one skipped).

    Only the section is read (includes merged, ``${VAR}`` left as written), so the files need neither
    their datasets nor their environment variables; ``streamcl run`` validates it against the cells.
    """
    from streamcl.config.compose import load_document

    found: List[Tuple[str, Dict[str, Any]]] = []
    for p in map(Path, paths):
        if not p.exists():
            raise StreamclError(f"{p}: no such file or folder; pass experiment YAMLs such as experiments/wa")
        files = sorted(p.glob("*.yaml")) if p.is_dir() else [p]
        for f in files:
            doc, _ = load_document(f)
            ref = doc.get("reference") if isinstance(doc, dict) else None
            if ref is None:
                if not p.is_dir():
                    raise StreamclError(f"{f}: no `reference:` section (published numbers); see streamcl/config/"
                                        "reference.py for its keys")
                continue
            if not isinstance(ref, dict) or not isinstance(ref.get("values"), list):
                raise StreamclError(f"{f}: reference: needs a `values:` list; run `streamcl run {f} --dry-run` to "
                                    "check it")
            found.append((f.as_posix(), ref))
    if not found:
        raise StreamclError(f"no experiment YAML with a `reference:` section under {', '.join(map(str, paths))}")
    return found


def published_table(references: Sequence[Tuple[str, Mapping[str, Any]]]) -> Table:
    """The published targets of YAML files (``(file, reference section)`` pairs), no runs needed; sources as notes."""
    t = Table("Published targets", ["experiment", "cell", "metric", "published", "tolerance", "source"],
              align="lllrrl")
    sources: List[str] = []
    for file, ref in references:
        for v in ref["values"]:
            src = str(v.get("source") or ref.get("source", ""))
            if src not in sources:
                sources.append(src)
            unit = " %" if METRICS[str(v["metric"])][0] == "%" else ""
            t.rows.append([f"`{file}`", str(v.get("cell", "")), str(v["metric"]), f"{float(v['value']):.2f}{unit}",
                           f"± {float(v['tolerance']):g}", f"[{sources.index(src) + 1}]"])
    t.notes = [f"[{i + 1}] {s}" for i, s in enumerate(sources)]
    return t


__all__ = ["REFERENCE_FILE", "compare", "comparison_table", "published_references", "published_table", "read_reference",
           "reduced_keys", "scale", "status"]
