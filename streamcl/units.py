"""Units of work: one (cell, run) of an experiment, the thing every launcher runs and locks.

``--only`` selectors pick some of them (:func:`parse_selectors`, :func:`select_units`)::

    --only cell=crumb*                  every run of the cells whose name matches the glob
    --only cell=crumb*,run=3            ... and only run 3 (keys inside one flag AND together)
    --only run=0-2|5                    runs 0, 1, 2 and 5 of every cell ('|' separates alternatives,
    --only run=0-2,5                    so does a comma before a chunk without '=')
    --only cell=naive --only cell=ewc   several flags OR together

``cell`` takes shell-style globs (``*``, ``?``, ``[ab]``; :mod:`fnmatch`, case-sensitive
like the folder names), ``run`` takes run ids and inclusive ranges ``A-B``. Each flag must
match at least one unit, so that a typo never silently selects less than meant.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable, List, Sequence, Tuple

from streamcl.errors import ConfigError

if TYPE_CHECKING:  # (the config package is not imported for a Unit alone)
    from streamcl.config import Experiment

__all__ = ["Unit", "Selector", "SELECTOR_KEYS", "parse_selectors", "select_units", "select_from", "format_runs"]

SELECTOR_KEYS = ("cell", "run")
_RUN = re.compile(r"^\s*(\d{1,10})\s*(?:-\s*(\d{1,10})\s*)?$")
_SHOWN = 12  # cell names listed in a "matches nothing" error before "... (N more)"


@dataclass(frozen=True, order=True)
class Unit:
    """One run of one cell; its outputs are ``<root>/<cell>/run<run>/``."""

    cell: str
    run: int

    @property
    def lock_name(self) -> str:
        """``<cell>-run<k>``: the name of the unit's lock file (``<root>/.locks/<cell>-run<k>.lock``)."""
        return f"{self.cell}-run{self.run}"

    def run_dir(self, root: Path) -> Path:
        """``<root>/<cell>/run<k>``: the unit's output folder."""
        return Path(root) / self.cell / f"run{self.run}"

    def lock_path(self, root: Path) -> Path:
        """``<root>/.locks/<cell>-run<k>.lock``: the file every process locks before working on the unit."""
        return Path(root) / ".locks" / f"{self.lock_name}.lock"


@dataclass(frozen=True)
class _Clause:
    """One ``--only`` flag: every (key, alternatives) condition must hold."""

    spec: str
    cells: Tuple[Tuple[str, ...], ...] = ()  # each: glob alternatives, one must match
    runs: Tuple[Tuple[Tuple[int, int], ...], ...] = ()  # each: inclusive ranges, one must contain the run

    def matches(self, unit: Unit) -> bool:
        """True when every key of this flag matches ``unit`` (one of its alternatives each)."""
        return all(any(fnmatch.fnmatchcase(unit.cell, g) for g in alts) for alts in self.cells) and \
            all(any(lo <= unit.run <= hi for lo, hi in alts) for alts in self.runs)


@dataclass(frozen=True)
class Selector:
    """The parsed ``--only`` flags: a unit is selected when any flag matches it (no flag: every unit)."""

    clauses: Tuple[_Clause, ...] = field(default_factory=tuple)

    def matches(self, unit: Unit) -> bool:
        """True when some flag matches ``unit`` (always, without flags)."""
        return not self.clauses or any(c.matches(unit) for c in self.clauses)

    def __bool__(self) -> bool:  # True when it restricts anything
        return bool(self.clauses)


def _fail(spec: str, msg: str) -> ConfigError:
    return ConfigError(msg, file="--only", key=_clip(spec, 80))


def _clip(text: str, limit: int) -> str:
    from streamcl.config.text import one_line

    text = one_line(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _parse_clause(spec: str) -> _Clause:
    pairs: List[Tuple[str, List[str]]] = []
    for chunk in spec.split(","):
        key, eq, value = chunk.partition("=")
        if not eq:  # `run=1,3`: a chunk without '=' is one more alternative of the key before it
            if not pairs:
                raise _fail(spec, "write KEY=VALUE pairs separated by commas, e.g. --only cell=crumb*,run=0-2")
            pairs[-1][1].extend(chunk.split("|"))
            continue
        key = key.strip()
        if key not in SELECTOR_KEYS:
            close = difflib.get_close_matches(key[:40], SELECTOR_KEYS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise _fail(spec, f"unknown selector key '{_clip(key, 40)}'{hint}; valid: {', '.join(SELECTOR_KEYS)}")
        pairs.append((key, value.split("|")))
    cells: List[Tuple[str, ...]] = []
    runs: List[Tuple[Tuple[int, int], ...]] = []
    for key, alts in pairs:
        alts = [a.strip() for a in alts]
        if any(not a for a in alts):
            raise _fail(spec, f"'{key}' has an empty value; write e.g. {key}={'crumb*' if key == 'cell' else '0-2'}")
        if key == "cell":
            cells.append(tuple(alts))
            continue
        ranges = []
        for a in alts:
            m = _RUN.match(a)
            if not m:
                raise _fail(spec, f"run '{_clip(a, 40)}' is not a run id or a range such as 0-4 (alternatives "
                                  "separated by '|')")
            lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
            if hi < lo:
                raise _fail(spec, f"run range {lo}-{hi} is empty; write the smaller id first ({hi}-{lo})")
            ranges.append((lo, hi))
        runs.append(tuple(ranges))
    return _Clause(spec, tuple(cells), tuple(runs))


def parse_selectors(specs: Sequence[str]) -> Selector:
    """``--only`` flags -> a :class:`Selector` (keys ``cell`` and ``run``; raises ConfigError on a bad flag)."""
    return Selector(tuple(_parse_clause(s) for s in specs))


def format_runs(runs: Iterable[int]) -> str:
    """``[0, 1, 2, 5]`` -> ``0-2, 5``."""
    out: List[str] = []
    ids = sorted(set(runs))
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        out.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ", ".join(out)


def select_units(exp: Experiment, selector: Selector) -> List[Unit]:
    """The units of ``exp`` the selector matches, in grid order (cells outer, runs inner).

    Raises ConfigError, listing the cells and run ids there are, when a ``--only`` flag
    matches no unit.
    """
    return select_from([c.name for c in exp.cells], exp.runs, selector, exp.name)


def select_from(cells: Sequence[str], runs: Sequence[int], selector: Selector, what: str) -> List[Unit]:
    """The units of the grid ``cells`` x ``runs`` that ``selector`` matches, in that order (see :func:`select_units`).

    ``what`` names the grid in the "matches no unit" error (the experiment's name or folder).
    """
    units = [Unit(cell, run) for cell in cells for run in runs]
    for clause in selector.clauses:
        if not any(clause.matches(u) for u in units):
            names = list(cells)
            shown = ", ".join(names[:_SHOWN]) + (f", ... ({len(names) - _SHOWN} more)" if len(names) > _SHOWN else "")
            globs = [g for alts in clause.cells for g in alts]
            close = [m for g in globs for m in difflib.get_close_matches(g, names, n=1)]
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise _fail(clause.spec, f"matches no unit of {_clip(what, 120)}{hint}; cells: "
                                     f"{_clip(shown or 'none', 600)}; runs: {_clip(format_runs(runs) or 'none', 120)}")
    return [u for u in units if selector.matches(u)]
