"""The ``ray`` launcher: one Ray task per (cell, run), on a local Ray or a running Ray cluster.

Ray does the scheduling (each task asks for ``num_cpus``/``num_gpus``), the transport of the
experiment to the workers and the retries: a worker that dies (OOM, lost node) or a task that
raises anything but a user error is retried up to ``max_retries`` times, and the unit resumes
from its ``checkpoint.pt``. A :class:`~streamcl.errors.StreamclError` raised inside a task is
a user error: it is returned (not raised) by the task so that Ray does not retry it, and the
driver raises the very same one-line error. ``workers`` bounds the units in flight with a
``ray.wait`` loop (Ray itself would start as many as the cluster's resources fit).

Every worker shares ``output_dir`` with the driver (one machine, or a shared filesystem on a
cluster); each unit runs under its file lock (:func:`streamcl.runner.run_unit`), so a unit
that another ``streamcl run`` holds is waited for, never run twice.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from streamcl.config import Experiment
from streamcl.errors import StreamclError, missing_extra
from streamcl.units import Unit

__all__ = ["launch", "run_unit_task"]


def run_unit_task(worker: Any, exp: Experiment, unit: Unit, threads: int) -> Tuple[str, Any]:
    """Body of one Ray task: ``worker(exp, unit)``; user errors and interruptions come back as values, not raised.

    Returns ``("ran"|"finished", None)``, ``("error", StreamclError)`` or ``("interrupted", message)``.
    Any other exception propagates, so that Ray retries the task (it resumes from the checkpoint).
    """
    from streamcl.launchers.slurm import prepare_worker

    try:
        prepare_worker(exp)
        return worker(exp, unit, wait=True, threads=threads), None
    except StreamclError as e:
        return "error", e
    except KeyboardInterrupt as e:  # the worker's stop_after (tests), or a SIGINT: not a crash to retry
        return "interrupted", str(e)


def _init_options(launcher: Dict[str, Any], verbose: bool) -> Dict[str, Any]:
    """Keyword arguments of ``ray.init`` for this launcher section."""
    opts: Dict[str, Any] = {
        "include_dashboard": False,
        "logging_level": logging.INFO if verbose else logging.ERROR,
        "log_to_driver": verbose,  # the driver prints one line per unit; workers' output stays in Ray's logs
    }
    if launcher["address"] is None:
        # "local": a new Ray on this machine even when another one runs here (ray.init() would join it).
        opts.update(address="local", _node_ip_address="127.0.0.1")
        if launcher["num_cpus_total"] is not None:
            opts["num_cpus"] = launcher["num_cpus_total"]
    else:
        opts["address"] = launcher["address"]
    return opts


def launch(exp: Experiment, units: Sequence[Unit], worker: Any) -> bool:
    """Run ``worker(exp, unit)`` as one Ray task per unit and wait for all of them; True when all have finished.

    A task runs ``max(1, int(num_cpus))`` torch threads, the CPUs it reserved from Ray (more
    would oversubscribe the node), whatever the worker's own thread count.
    """
    try:
        import ray
    except ImportError:
        raise missing_extra("ray", "ray") from None

    cfg = exp.launcher
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(**_init_options(cfg, bool(getattr(worker, "verbose", False))))
    try:
        return _gather(ray, exp, list(units), cfg, worker)
    finally:
        if started_here:
            ray.shutdown()


def _gather(ray: Any, exp: Experiment, units: List[Unit], cfg: Dict[str, Any], worker: Any) -> bool:
    """Submit the units (at most ``workers`` in flight), collect their results, raise the first failure."""
    progress = bool(getattr(worker, "progress", True))
    task_threads = max(1, int(cfg["num_cpus"]))
    task = ray.remote(run_unit_task).options(
        num_cpus=cfg["num_cpus"], num_gpus=cfg["num_gpus"], max_retries=cfg["max_retries"],
        retry_exceptions=True,  # user errors are returned, not raised: only crashes and bugs are retried
        name="streamcl_unit",
    )
    limit = cfg["workers"] or len(units)
    queue = list(units)
    pending: Dict[Any, Tuple[Unit, float]] = {}
    failures: List[Tuple[Unit, BaseException]] = []
    user_error: Optional[StreamclError] = None
    interrupted: Optional[str] = None
    done_count = 0
    while queue or pending:
        while queue and len(pending) < limit and user_error is None and interrupted is None:
            unit = queue.pop(0)
            pending[task.remote(worker, exp, unit, task_threads)] = (unit, time.perf_counter())
        if not pending:
            break
        ready, _ = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            unit, t0 = pending.pop(ref)
            done_count += 1
            try:
                state, detail = ray.get(ref)
            except (ray.exceptions.RayTaskError, ray.exceptions.RayError) as e:
                failures.append((unit, e))
                print(f"[{unit.cell} run{unit.run}] failed after {cfg['max_retries']} retries: "
                      f"{_first_line(e)}", flush=True)
                continue
            if state == "error":
                user_error = user_error or detail  # no new units; those running finish (they hold their locks)
            elif state == "interrupted":
                interrupted = interrupted or detail
            elif progress:
                what = "finished" if state == "ran" else "already finished; skipped"
                print(f"[{unit.cell} run{unit.run}] {what} ({time.perf_counter() - t0:.1f} s, "
                      f"{done_count}/{len(units)} units)", flush=True)
    if user_error is not None:
        raise user_error
    if interrupted is not None:
        raise KeyboardInterrupt(interrupted)
    if failures:
        for unit, err in failures:  # the workers' tracebacks: not user errors, so show where they came from
            print(f"--- [{unit.cell} run{unit.run}] ---\n{err}", file=sys.stderr, flush=True)
        unit, err = failures[0]
        raise StreamclError(f"{len(failures)} unit(s) failed on Ray after {cfg['max_retries']} retries, the first "
                            f"[{unit.cell} run{unit.run}] with {_first_line(err)} (traceback above); fix the cause "
                            "and rerun: finished units are skipped, the others resume from their checkpoints")
    return True


def _first_line(e: BaseException) -> str:
    """``Type: message`` of an exception (or the cause Ray wrapped), on one line."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException):
        e = cause
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"
