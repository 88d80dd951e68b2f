"""The ``launcher:`` section: where an experiment's units of work run (see :mod:`streamcl.launchers`).

::

    launcher: local                       # the default: one process, units one after another
    launcher: {name: ray, address: auto, num_cpus: 1, num_gpus: 0, max_retries: 2, workers: 2}
    launcher:
      name: slurm                         # one job array per grid through submitit
      partition: gpu
      gpus_per_task: 1
      cpus_per_task: 8
      mem: 32G
      time: 240                           # minutes (submitit's unit); preempted/timed-out units requeue
      array_parallelism: 64
      sbatch: {account: my-lab, qos: normal}   # extra #SBATCH flags, passed through as they are

``--launcher NAME`` on the command line replaces ``name`` (keeping the other keys when the
name is the same). A launcher section never enters a cell's config: where a unit runs does
not change what it computes, so results from any launcher resume and compare with each other.
"""

from __future__ import annotations

import re
from typing import Any, Dict, Optional

from streamcl.config.text import KeyPath

__all__ = ["LAUNCHER_KEYS", "LAUNCHERS", "check_launcher"]

# Each launcher's keys with (type, default). Types are checked with the config's own Checker.
LAUNCHER_KEYS: Dict[str, Dict[str, Any]] = {
    "local": {},
    "ray": {
        "address": (Optional[str], None),  # None: start a local Ray on this machine; "auto": join a running one
        "num_cpus": (float, 1.0),  # per unit
        "num_gpus": (float, 0.0),  # per unit
        "max_retries": (int, 2),  # a failed unit is retried (it resumes from its checkpoint)
        "workers": (Optional[int], None),  # at most this many units at once (None: as many as Ray fits)
        "num_cpus_total": (Optional[int], None),  # a local Ray's CPU count (None: Ray's default, all cores)
    },
    "slurm": {
        "partition": (Optional[str], None),
        "gpus_per_task": (int, 0),
        "cpus_per_task": (int, 1),
        "tasks_per_node": (int, 1),  # > 1: torchrun-style data parallel inside one unit (one task per GPU)
        "mem": (Optional[str], None),  # e.g. 32G
        "time": (int, 60),  # minutes
        "array_parallelism": (int, 256),  # array tasks at once (sbatch --array=...%N); executor local: workers
        "max_requeues": (int, 3),  # submitit's max_num_timeout: requeues after preemption / time-out
        "sbatch": (Dict[str, Any], {}),  # extra sbatch parameters (submitit's slurm_additional_parameters)
        "setup": (list, []),  # shell lines run before the unit (module load ..., source venv)
        "folder": (Optional[str], None),  # submitit's logs; default <output_dir>/<name>/.slurm (2 per task)
        "executor": (str, "slurm"),  # "slurm", or "local"/"debug" (submitit's executors, for tests)
        "wait": (bool, False),  # block until the array finishes (then write the summary)
    },
}
LAUNCHERS = tuple(LAUNCHER_KEYS)
_SLURM_MEM = re.compile(r"^[0-9]+[KMGT]?$")  # sbatch --mem: an integer, megabytes unless suffixed


def check_launcher(c: Any, path: KeyPath, value: Any, cli_name: Optional[str] = None) -> Dict[str, Any]:
    """Validate a ``launcher:`` value (a name or a mapping) into ``{name, **options}`` with defaults filled."""
    if value is None:
        value = "local"
    if isinstance(value, str):
        value = {"name": value}
    value = dict(c.mapping(path, value))
    if cli_name is not None:
        if value.get("name", cli_name) != cli_name:
            value = {"name": cli_name}  # another launcher: the file's options were for the other one
        else:
            value["name"] = cli_name  # options given without a name (e.g. -o launcher.executor=local) apply
    name = value.get("name", "local")
    if name not in LAUNCHER_KEYS:
        c.fail(path + ("name",), f"unknown launcher {name!r}; choose one of {', '.join(LAUNCHERS)}")
    spec = LAUNCHER_KEYS[name]
    c.keys(path, value, ("name",) + tuple(spec))
    out: Dict[str, Any] = {"name": name}
    for key, (tp, default) in spec.items():
        v = c.typed(path + (key,), value.get(key, default), tp)
        if isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0:
            c.fail(path + (key,), f"must be >= 0, got {v}")
        out[key] = v
    if name == "slurm":
        if out["time"] < 1 or out["cpus_per_task"] < 1 or out["tasks_per_node"] < 1 or out["array_parallelism"] < 1:
            c.fail(path, "time, cpus_per_task, tasks_per_node and array_parallelism must be >= 1")
        if out["executor"] not in ("slurm", "local", "debug"):
            c.fail(path + ("executor",), f"must be slurm, local or debug (submitit's executors), "
                                         f"got {out['executor']!r}")
        if out["mem"] is not None and not _SLURM_MEM.match(out["mem"]):
            c.fail(path + ("mem",), f"must be sbatch's --mem format (a whole number with K, M, G or T, "
                                    f"e.g. 32G), got {out['mem']!r}")
    if name == "ray" and out["workers"] is not None and out["workers"] < 1:
        c.fail(path + ("workers",), f"must be >= 1, got {out['workers']}")
    return out
