"""A cell: one (benchmark, method) combination of an experiment, with its validated config.

Its own module so that the modules checking parts of an experiment (``reference``) and the one
assembling it (``experiment``) both import it, and imports point one way only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict

__all__ = ["Cell"]


@dataclass
class Cell:
    """One (benchmark, method) combination of an experiment; run once per run id."""

    name: str
    config: Dict[str, Any]
    sweep: Dict[str, Any] = field(default_factory=dict)  # this cell's swept values by sweep key ({}: no sweep)
