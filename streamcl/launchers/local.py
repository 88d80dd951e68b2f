"""The ``local`` launcher: every unit in this process, one after another (``streamcl run``'s default)."""

from __future__ import annotations

from typing import Any, List, Sequence

from streamcl.config import Experiment
from streamcl.units import Unit


def launch(exp: Experiment, units: Sequence[Unit], worker: Any) -> bool:
    """Run each unit here; units another process holds are run (or found finished) after the others."""
    busy: List[Unit] = []
    for unit in units:
        if worker(exp, unit, wait=False) == "busy":
            if worker.progress:
                print(f"[{unit.cell} run{unit.run}] another process is running it; waiting for it at the end",
                      flush=True)
            busy.append(unit)
    for unit in busy:  # blocks until the other process is done with it (or died: then it runs here)
        worker(exp, unit, wait=True)
    return True
