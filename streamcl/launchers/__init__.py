"""Launchers: where an experiment's units of work run. Each is a thin layer over its engine.

A unit is one (cell, run) (:class:`streamcl.units.Unit`). The runner hands a launcher the
units and a *worker* (:class:`streamcl.runner.UnitWorker`): calling ``worker(exp, unit)``
runs one unit, idempotently, under the unit's file lock, resuming from its checkpoint;
``worker.finish(exp)`` writes the summary once every unit has finished. A launcher only
decides where and when the worker is called:

* ``local`` (:mod:`.local`): in this process, one unit after another (the default);
* ``ray`` (:mod:`.ray`): one Ray task per unit, local or on a running cluster;
* ``slurm`` (:mod:`.slurm`): one SLURM job array per grid through submitit, preempted or
  timed-out units requeued and resumed from their checkpoints.

Nothing here schedules, pools or talks over the network by hand: Ray and submitit do.
Launchers never import the runner (it calls them), so imports point down only.
"""

from __future__ import annotations

import importlib
from typing import Any, Sequence

from streamcl.config import Experiment
from streamcl.units import Unit

__all__ = ["launch", "on_cluster", "returns_before_done"]


def on_cluster(exp: Experiment) -> bool:
    """True when the units run as cluster jobs (SLURM), not on the submitting machine (a login node)."""
    la = exp.launcher
    return la["name"] == "slurm" and la.get("executor") == "slurm"


def returns_before_done(exp: Experiment) -> bool:
    """True when :func:`launch` returns once the units are submitted (SLURM without ``wait``)."""
    return on_cluster(exp) and not exp.launcher.get("wait")


def launch(exp: Experiment, units: Sequence[Unit], worker: Any) -> bool:
    """Run ``units`` with ``exp.launcher`` through ``worker``; True when all have finished on return (False: submitted)."""
    name = exp.launcher["name"]
    module = importlib.import_module(f"streamcl.launchers.{name}")
    return bool(module.launch(exp, units, worker))
