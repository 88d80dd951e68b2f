"""``--only`` selectors: globs on cells, run ids and ranges, AND inside a flag, OR across flags, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from streamcl.config import Cell, Experiment
from streamcl.errors import ConfigError
from streamcl.units import Unit, format_runs, parse_selectors, select_units

CELLS = ["crumb-lr0.01", "crumb-lr0.1", "naive", "ewc", "remind"]


def experiment(cells=CELLS, runs=(0, 1, 2, 3, 4, 7)) -> Experiment:
    return Experiment(name="t", file=Path("t.yaml"), runs=list(runs), cells=[Cell(c, {}) for c in cells],
                      output_dir=Path("runs"))


def pick(*specs: str, exp=None):
    return [(u.cell, u.run) for u in select_units(exp or experiment(), parse_selectors(specs))]


def test_no_flag_selects_every_unit_in_grid_order():
    units = select_units(experiment(), parse_selectors([]))
    assert units == [Unit(c, r) for c in CELLS for r in (0, 1, 2, 3, 4, 7)]


def test_cell_globs_and_run_ids_and_together():
    assert pick("cell=crumb*,run=3") == [("crumb-lr0.01", 3), ("crumb-lr0.1", 3)]
    assert pick("cell=crumb-lr0.0?,run=0") == [("crumb-lr0.01", 0)]  # '?' is one character
    assert pick("cell=[en]*,run=7") == [("naive", 7), ("ewc", 7)]


def test_run_ranges_and_alternatives():
    assert [r for _, r in pick("cell=naive,run=1-3")] == [1, 2, 3]
    assert [r for _, r in pick("cell=naive,run=0|4-7")] == [0, 4, 7]
    assert [r for _, r in pick("cell=naive,run=0,3")] == [0, 3]  # a chunk without '=' continues the key
    assert [c for c, _ in pick("run=7,cell=naive|ewc")] == ["naive", "ewc"]


def test_several_flags_or_together_without_duplicates():
    got = pick("cell=naive,run=0", "run=0", "cell=ewc,run=1")
    assert got == [(c, 0) for c in CELLS[:3]] + [("ewc", 0), ("ewc", 1), ("remind", 0)]


def test_flag_matching_nothing_lists_what_there_is():
    for spec in ("cell=navie", "cell=NAIVE", "cell=naive,run=5", "run=100-200"):
        with pytest.raises(ConfigError) as ei:
            pick("cell=ewc", spec)  # one flag matching is not enough: each must match
        msg = str(ei.value)
        assert msg.startswith(f"--only: {spec}: matches no unit of t") and "\n" not in msg
        assert "cells: crumb-lr0.01, crumb-lr0.1, naive, ewc, remind" in msg and "runs: 0-4, 7" in msg
    with pytest.raises(ConfigError, match="did you mean 'naive'"):
        pick("cell=navie")


def test_no_match_error_is_shortened_for_big_grids():
    exp = experiment(cells=[f"cell{i:03d}" for i in range(500)], runs=range(40))
    with pytest.raises(ConfigError) as ei:
        pick("cell=zzz", exp=exp)
    msg = str(ei.value)
    assert "(488 more)" in msg and "runs: 0-39" in msg and len(msg) < 900


def test_unknown_key_and_bad_values():
    cases = {
        "cel=naive": "unknown selector key 'cel' (did you mean 'cell'?); valid: cell, run",
        "runs=1": "did you mean 'run'",
        "naive": "KEY=VALUE",
        "run=x": "run 'x' is not a run id or a range",
        "run=3-1": "run range 3-1 is empty",
        "cell=": "'cell' has an empty value",
        "run=1|": "'run' has an empty value",
    }
    for spec, words in cases.items():
        with pytest.raises(ConfigError) as ei:
            parse_selectors([spec])
        assert words in str(ei.value), (spec, str(ei.value))
        assert str(ei.value).startswith("--only: ")


def test_format_runs():
    assert format_runs([7, 0, 1, 2, 4, 5]) == "0-2, 4-5, 7"
    assert format_runs([3]) == "3" and format_runs([]) == ""


def test_unit_paths():
    u = Unit("crumb-lr0.1", 3)
    assert u.run_dir(Path("runs/x")) == Path("runs/x/crumb-lr0.1/run3")
    assert u.lock_path(Path("runs/x")) == Path("runs/x/.locks/crumb-lr0.1-run3.lock")
    assert sorted([Unit("b", 0), Unit("a", 2), Unit("a", 1)]) == [Unit("a", 1), Unit("a", 2), Unit("b", 0)]
