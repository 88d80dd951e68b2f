"""``streamcl status``: which units (cell x run) of an experiment are finished, running, interrupted or not started.

Read from the output folder alone, so that it works whatever launcher (local, Ray,
SLURM) filled it and while workers are still running:

* **finished**: the run's ``summary.json`` exists;
* **running**: another process holds the unit's lock ``<root>/.locks/<cell>-run<k>.lock``
  (filelock's OS locks die with their process, so a crashed worker never looks running);
* **interrupted**: the run folder exists (a checkpoint, partial metrics), no summary, nobody
  holds the lock: ``streamcl run`` on the same file resumes it from its checkpoint;
* **not started**: none of these.

Given a folder, the cells are those with a ``config.yaml`` (or a held lock) and the runs the
``run<k>`` folders found; given the experiment YAML, the validated grid (so that units that
have not started show). Finished experiences come from ``metrics.csv`` (one row per
metric after each experience), not from the checkpoint, which would need torch to read.
"""

from __future__ import annotations

import argparse
import collections
import csv
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from streamcl.errors import StreamclError
from streamcl.units import Selector, Unit, parse_selectors, select_from

__all__ = ["STATES", "StatusTable", "unit_status", "unit_experiences", "experiment_status", "cmd_status",
           "add_status_parser"]

STATES = ("finished", "running", "interrupted", "not started")
_RUN_DIR = re.compile(r"^run(\d{1,10})$")
_LOCK = re.compile(r"^(.+)-run(\d{1,10})\.lock$")


def lock_held(path: Path) -> bool:
    """True when some process holds the filelock at ``path`` (tried without waiting, released at once)."""
    from filelock import FileLock, Timeout

    if not path.is_file():  # (never create a lock file: nobody has locked a unit whose file is missing)
        return False
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    except OSError:  # a read-only folder: cannot tell; the folder's contents decide
        return False
    lock.release()
    return False


def unit_status(root: Union[str, Path], unit: Unit) -> str:
    """``finished`` | ``running`` | ``interrupted`` | ``not started`` for one unit of the experiment at ``root``."""
    run_dir = unit.run_dir(Path(root))
    if (run_dir / "summary.json").is_file():
        return "finished"
    if lock_held(unit.lock_path(Path(root))):
        return "running"
    if run_dir.is_dir():
        return "interrupted"
    return "not started"


def unit_experiences(root: Union[str, Path], unit: Unit) -> Optional[int]:
    """How many experiences the unit has finished, from its ``metrics.csv`` (None when unreadable or absent)."""
    path = unit.run_dir(Path(root)) / "metrics.csv"
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = csv.reader(f)
            next(rows, None)  # header: experience, step, metric, value
            return 1 + max((int(r[0]) for r in rows if r), default=-1)
    except (OSError, ValueError, UnicodeDecodeError, csv.Error):
        return None


@dataclass
class StatusTable:
    """The state of every unit of an experiment (cells x runs), as :func:`experiment_status` found it."""

    name: str
    root: Path
    cells: List[str]
    runs: List[int]
    states: Dict[Unit, str] = field(default_factory=dict)  # units missing here are not part of the grid
    experiences: Dict[Unit, Optional[int]] = field(default_factory=dict)
    yaml: Optional[Path] = None  # the experiment file, when status was given one

    def totals(self) -> Dict[str, int]:
        """How many units are in each state (every state listed, 0 included)."""
        count = collections.Counter(self.states.values())
        return {s: count.get(s, 0) for s in STATES}

    def cell_text(self, unit: Unit) -> str:
        """``finished``, ``running (1 exp)``, ...: one unit's entry in the table."""
        state = self.states.get(unit)
        if state is None:
            return "-"
        n = self.experiences.get(unit)
        return f"{state} ({n} exp)" if state in ("running", "interrupted") and n is not None else state

    def format(self) -> str:
        """The table (one row per cell, one column per run), then a totals line."""
        header = ["cell"] + [f"run{r}" for r in self.runs]
        rows = [[c] + [self.cell_text(Unit(c, r)) for r in self.runs] for c in self.cells]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
        lines = [f"{self.name} ({self.root})"]
        lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in [header, *rows]]
        totals = self.totals()
        lines.append(f"{len(self.states)} unit(s): " + ", ".join(f"{n} {s}" for s, n in totals.items()))
        if totals["interrupted"]:
            how = f"streamcl run {self.yaml}" if self.yaml else "`streamcl run` on the experiment's YAML"
            lines.append(f"interrupted units resume from their checkpoints: {how}")
        return "\n".join(lines)


def _folder_grid(root: Path) -> Tuple[List[str], List[int]]:
    """Cells (with a ``config.yaml``, or a held lock) and run ids (``run<k>`` folders, held locks) under ``root``."""
    cells = {p.name for p in root.iterdir() if p.is_dir() and (p / "config.yaml").is_file()}
    runs = {int(m.group(1)) for c in cells for p in (root / c).iterdir() if p.is_dir()
            for m in [_RUN_DIR.match(p.name)] if m}
    locks = root / ".locks"
    if locks.is_dir():  # a unit still building has its lock before its folder
        for p in locks.iterdir():
            m = _LOCK.match(p.name)
            if m and lock_held(p):
                cells.add(m.group(1))
                runs.add(int(m.group(2)))
    return sorted(cells), sorted(runs)


def _not_an_experiment(folder: Path) -> StreamclError:
    inside = sorted(p.name for p in folder.iterdir() if p.is_dir() and any(
        (q / "config.yaml").is_file() for q in p.iterdir() if q.is_dir())) if folder.is_dir() else []
    hint = f" (did you mean {folder / inside[0]}?)" if inside else ""
    return StreamclError(f"{folder}: no streamcl runs here (no <cell>/config.yaml){hint}; give the experiment "
                         "folder that `streamcl run` writes (<output_dir>/<name>, e.g. runs/demo) or the experiment "
                         "YAML")


def experiment_status(
    target: Union[str, Path], overrides: Sequence[str] = (), selector: Optional[Selector] = None
) -> StatusTable:
    """The status of every unit of the experiment in folder ``target``, or of experiment YAML ``target``.

    ``overrides`` (``-o``, a YAML only) and ``selector`` (``--only``) are applied as ``streamcl run``
    applies them, so that the same flags show the same units. Raises StreamclError (one line) for a
    path that is neither.
    """
    target = Path(target)
    selector = selector or Selector()
    if not target.exists():
        raise StreamclError(f"{target}: no such file or folder; give the experiment folder that `streamcl run` "
                            "writes (<output_dir>/<name>, e.g. runs/demo) or the experiment YAML")
    yaml_file: Optional[Path] = None
    if target.is_file():
        if target.suffix.lower() not in (".yaml", ".yml"):
            raise StreamclError(f"{target}: not an experiment YAML or folder; give the experiment folder "
                                "(<output_dir>/<name>, e.g. runs/demo) or the .yaml file")
        from streamcl.config import load_experiment

        exp = load_experiment(target, overrides)
        name, root, yaml_file = exp.name, exp.root, target
        cells, runs = [c.name for c in exp.cells], list(exp.runs)
    else:
        if overrides:
            raise StreamclError("-o applies to an experiment YAML: give the .yaml file instead of its folder "
                                f"{target}")
        root, cells, runs = target, [], []
        if _RUN_DIR.match(target.name) and (target.parent / "config.yaml").is_file():  # one run folder
            root, cells, runs = target.parent.parent, [target.parent.name], [int(target.name[3:])]
        elif (target / "config.yaml").is_file():  # one cell folder
            root, cells = target.parent, [target.name]
            runs = sorted(int(m.group(1)) for p in target.iterdir() if p.is_dir()
                          for m in [_RUN_DIR.match(p.name)] if m)
        else:
            try:
                cells, runs = _folder_grid(target)
            except OSError as e:
                raise StreamclError(f"{target}: cannot be read ({e.strerror or e}); check its permissions") from None
            if not cells:
                raise _not_an_experiment(target)
        name = root.name
    units = select_from(cells, runs, selector, str(yaml_file or root))
    table = StatusTable(name, root, [c for c in cells if any(u.cell == c for u in units)],
                        [r for r in runs if any(u.run == r for u in units)], yaml=yaml_file)
    for unit in units:
        table.states[unit] = state = unit_status(root, unit)
        if state in ("running", "interrupted"):
            table.experiences[unit] = unit_experiences(root, unit)
    return table


def cmd_status(args: argparse.Namespace) -> int:
    """``streamcl status TARGET [-o KEY=VALUE] [--only SEL]``: print the table and the totals; exit 0."""
    table = experiment_status(args.target, getattr(args, "override", None) or (),
                              parse_selectors(getattr(args, "only", None) or ()))
    print(table.format())
    return 0


def add_status_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``status`` subcommand to ``streamcl``'s subparsers (``sub``); returns its parser."""
    st = sub.add_parser("status", help="finished / running / interrupted / not started, per cell x run")
    st.add_argument("target", help="experiment folder (e.g. runs/demo) or the experiment YAML")
    st.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                    help="the overrides given to `streamcl run` (with a YAML), e.g. -o output_dir=/scratch/runs")
    st.add_argument("--only", action="append", default=[], metavar="SELECTOR",
                    help="only these units, e.g. --only cell=crumb*,run=0-2 (as for `streamcl run`)")
    st.set_defaults(func=cmd_status)
    return st
