"""The ``slurm`` launcher: one SLURM job array per grid, through submitit.

submitit writes the sbatch script, submits the array (``--array=0-N%array_parallelism``),
pickles the experiment for the tasks and keeps one stdout/stderr log per array task under
``launcher.folder`` (default ``<output_dir>/<name>/.slurm``, files ``<job id>_<task>_log.out/err``).
Each array task calls :class:`UnitJob`, which runs one (cell, run) through the runner's worker
(:func:`streamcl.runner.run_unit`, under the unit's lock) and then writes the summary tables if
it was the last unit to finish, so the grid completes even though ``streamcl run`` returned
right after submitting.

Preemption and time-out: SLURM signals the task before killing it; submitit's handler calls
:meth:`UnitJob.checkpoint`, which resubmits the same call, and requeues the task (at most
``max_requeues`` times). The requeued task finds the run's ``checkpoint.pt`` (written after
every experience) and resumes from it: at most one experience is trained again.

``executor: local`` / ``debug`` use submitit's local executors (subprocesses on this machine /
this process), for tests and for trying a configuration before a cluster; they wait for the
units. With ``local``, ``array_parallelism`` worker processes share the units through their
locks (:class:`WorkerLoop`) instead of one process per unit: a fresh process spends seconds
importing torch and Avalanche, more than a small unit takes.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from streamcl.config import Experiment
from streamcl.errors import StreamclError, missing_extra
from streamcl.units import Unit

__all__ = ["launch", "UnitJob", "prepare_worker"]


def prepare_worker(exp: Experiment) -> None:
    """In a fresh worker process: import the registered components and the experiment's ``imports:``.

    The submitting process did this while validating the file; a Ray worker or a SLURM task
    starts from nothing, and a ``mymethods.py`` next to the YAML is only found through the
    experiment file's folder.
    """
    from streamcl.registry import import_modules, load_all

    load_all()
    search = [Path(exp.file).resolve().parent]
    for cell in exp.cells:
        import_modules(cell.config.get("imports", []), search=search)


def _join_ranks() -> None:
    """A unit with several tasks (``tasks_per_node > 1``): one torch.distributed rank per task.

    submitit starts the task ``tasks_per_node`` times; its environment gives each its rank and
    the master's address, which torch.distributed reads (as under torchrun), and the runner's
    distributed mode then splits batches, averages gradients and lets rank 0 write.
    """
    import submitit

    try:
        tasks = submitit.JobEnvironment().num_tasks
    except RuntimeError:  # not inside a submitit job (UnitJob called directly)
        return
    if tasks > 1:
        from submitit.helpers import TorchDistributedEnvironment

        from streamcl import distributed

        TorchDistributedEnvironment().export()
        distributed.init_from_env()


class UnitJob:
    """What each array task runs: one unit, then the summary if the grid is complete; requeue-able.

    submitit calls ``UnitJob(worker, ...)(exp, unit)`` in the task and, on preemption or
    time-out, :meth:`checkpoint` with the same arguments. ``worker`` is the runner's
    :class:`~streamcl.runner.UnitWorker` (``worker(exp, unit)`` runs the unit under its lock,
    resuming from its checkpoint; ``worker.finish(exp)`` writes the summary once all units
    are done). A user error (bad config, corrupt checkpoint) is printed to the task's log and
    returned as ``("error", exc)``, so that a waiting ``streamcl run`` raises the same one-line
    error; otherwise returns ``(state, None)``.
    """

    def __init__(self, worker: Any, threads: int = 1, *, write_summary: bool = True):
        self.worker = worker
        self.threads = threads
        self.write_summary = write_summary

    def __call__(self, exp: Experiment, unit: Unit) -> Tuple[str, Any]:
        from streamcl import distributed

        try:
            _join_ranks()
            prepare_worker(exp)
            if self.write_summary:  # on a cluster: pretraining runs in the first task, not on the login node
                self.worker.prepare(exp)
            state = self.worker(exp, unit, wait=True, threads=self.threads)
            if self.write_summary and distributed.is_main_process():
                self.worker.finish(exp)
        except StreamclError as e:
            print(f"streamcl: error: {e}", file=sys.stderr, flush=True)
            if self.write_summary:  # on a cluster nobody waits for the value: fail the task (sacct shows it)
                raise
            return "error", e
        except KeyboardInterrupt as e:  # the worker's stop_after (tests): an interruption, not a failure
            return "interrupted", str(e)
        return state, None

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit's requeue hook: resubmit the same call; the unit resumes from its ``checkpoint.pt``."""
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


def _executor(submitit: Any, exp: Experiment, cfg: Dict[str, Any], folder: Path) -> Any:
    """A submitit AutoExecutor with the launcher's resources (cluster-only ones are dropped elsewhere)."""
    kind = cfg["executor"]
    if kind == "slurm" and shutil.which("sbatch") is None:
        raise StreamclError(f"{exp.file}: launcher.executor is slurm but 'sbatch' is not on PATH; submit from a "
                            "SLURM login node, or set launcher.executor: local to run the array on this machine")
    # cluster="slurm", not None: submitit's auto-detection would silently fall back to local.
    executor = submitit.AutoExecutor(folder=folder, cluster=kind, slurm_max_num_timeout=cfg["max_requeues"],
                                     local_max_num_timeout=cfg["max_requeues"])
    params: Dict[str, Any] = {
        "name": f"streamcl-{exp.name}",
        "timeout_min": cfg["time"],
        "cpus_per_task": cfg["cpus_per_task"],
        "tasks_per_node": cfg["tasks_per_node"],
        "gpus_per_node": cfg["gpus_per_task"] * cfg["tasks_per_node"],
        # slurm_* keys reach sbatch only; AutoExecutor drops them for the local/debug executors.
        "slurm_array_parallelism": cfg["array_parallelism"],
        "slurm_partition": cfg["partition"],
        "slurm_mem": cfg["mem"],
    }
    if cfg["sbatch"]:
        params["slurm_additional_parameters"] = dict(cfg["sbatch"])
    if cfg["setup"]:
        params["slurm_setup"] = [str(line) for line in cfg["setup"]]
        params["local_setup"] = params["slurm_setup"]
    executor.update_parameters(**params)
    return executor


def launch(exp: Experiment, units: Sequence[Unit], worker: Any) -> bool:
    """Submit ``worker(exp, unit)`` for every unit as one job array; wait (``wait: true``, local/debug) or return False.

    A task runs ``cpus_per_task`` torch threads, whatever the worker's own thread count.
    """
    try:
        import submitit
    except ImportError:
        raise missing_extra("submitit", "slurm") from None
    progress = bool(getattr(worker, "progress", True))
    units = list(units)
    if not units:
        return True
    cfg = exp.launcher
    folder = Path(cfg["folder"]) if cfg["folder"] else exp.root / ".slurm"  # submitit names files <job id>_...
    executor = _executor(submitit, exp, cfg, folder)
    on_cluster = cfg["executor"] == "slurm"
    # On a cluster the last task writes the summary (the submitter may be gone); here the submitter does.
    job_fn = UnitJob(worker, cfg["cpus_per_task"], write_summary=on_cluster)

    if cfg["executor"] == "local":
        return _run_workers(executor, exp, units, worker, cfg["cpus_per_task"], cfg["array_parallelism"], progress)
    jobs = executor.map_array(job_fn, [exp] * len(units), units)  # one array (sbatch --array)
    if on_cluster and not cfg["wait"]:
        array_id = str(jobs[0].job_id).split("_")[0]
        print(f"Submitted SLURM job array {array_id}: {len(units)} unit(s) of {exp.name}\n"
              f"  logs: {folder}/{array_id}_<task>_0_log.out|err\n"
              f"  progress: streamcl status {exp.root}\n"
              "  the summary tables are written when the last unit finishes", flush=True)
        return False
    if progress:
        print(f"Submitted {len(units)} unit(s) to submitit's {cfg['executor']} executor; waiting", flush=True)
    outcome = _Outcome(len(units), progress)
    for unit, job in zip(units, jobs):
        outcome.collect(unit, job)
    outcome.raise_if_failed()
    return True


class WorkerLoop:
    """``executor: local``: one of ``array_parallelism`` worker processes that share the units through their locks.

    submitit's local executor starts a fresh Python process per job, and importing torch and
    Avalanche there costs seconds (about 7 s on 2 cores): a process per unit would cost more
    than a small unit. So on one machine each job is a worker, as concurrent ``streamcl run``
    processes are: it runs every unit nobody holds, starting at its own offset, then waits for
    (and finds finished) those others held. On a cluster each unit stays one array task, with its
    own resources, log and requeue. Returns ``([(unit, state)], error or None)``.
    """

    def __init__(self, worker: Any, threads: int, offset: int):
        self.worker = worker
        self.threads = threads
        self.offset = offset

    def __call__(self, exp: Experiment, units: Sequence[Unit]) -> Tuple[List[Tuple[Unit, str]], Any]:
        units = list(units)
        order = units[self.offset:] + units[:self.offset]
        done: List[Tuple[Unit, str]] = []
        busy: List[Unit] = []
        try:
            prepare_worker(exp)
            for unit in order:
                state = self.worker(exp, unit, wait=False, threads=self.threads)
                if state == "busy":
                    busy.append(unit)
                else:
                    done.append((unit, state))
            for unit in busy:
                done.append((unit, self.worker(exp, unit, wait=True, threads=self.threads)))
        except StreamclError as e:
            print(f"streamcl: error: {e}", file=sys.stderr, flush=True)
            return done, e
        except KeyboardInterrupt as e:  # the worker's stop_after (tests)
            return done, str(e) or "interrupted"
        return done, None


def _run_workers(executor: Any, exp: Experiment, units: List[Unit], worker: Any, threads: int, parallelism: int,
                 progress: bool) -> bool:
    """``executor: local``: ``parallelism`` :class:`WorkerLoop` jobs over all the units; raises what they met."""
    from submitit.core.utils import FailedJobError, UncompletedJobError

    n = max(1, min(parallelism, len(units)))
    if progress:
        print(f"Running {len(units)} unit(s) in {n} worker process(es) of submitit's local executor", flush=True)
    jobs = [executor.submit(WorkerLoop(worker, threads, k * len(units) // n), exp, units) for k in range(n)]
    ran: List[Unit] = []
    user_error, interrupted, failed = None, None, []
    for job in jobs:
        try:
            states, err = job.result()
        except (FailedJobError, UncompletedJobError) as e:
            lines = [ln for ln in str(e).splitlines() if ln.strip()]
            failed.append(f"worker job {job.job_id} failed ({lines[-1].strip() if lines else type(e).__name__}); "
                          f"see {job.paths.stderr}")
            print(failed[-1], file=sys.stderr, flush=True)
            continue
        for unit, state in states:
            if state == "ran" and unit not in ran:
                ran.append(unit)
                if progress:
                    print(f"[{unit.cell} run{unit.run}] finished ({len(ran)}/{len(units)} units)", flush=True)
        if isinstance(err, StreamclError):
            user_error = user_error or err
        elif err is not None:
            interrupted = interrupted or err
    if user_error is not None:
        raise user_error
    if interrupted is not None:
        raise KeyboardInterrupt(interrupted)
    if failed:
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise StreamclError(f"{failed[0]}{more}; fix the cause and rerun: finished units are skipped, the others "
                            "resume from their checkpoints")
    return True


class _Outcome:
    """Results of submitted jobs: progress lines, the first user error, the failed units."""

    def __init__(self, total: int, progress: bool):
        self.total = total
        self.progress = progress
        self.count = 0
        self.user_error: Optional[StreamclError] = None
        self.interrupted: Optional[str] = None
        self.failed: List[str] = []

    def collect(self, unit: Unit, job: Any) -> None:
        from submitit.core.utils import FailedJobError, UncompletedJobError

        self.count += 1
        try:
            state, detail = job.result()
        except (FailedJobError, UncompletedJobError) as e:
            lines = [ln for ln in str(e).splitlines() if ln.strip()]
            self.failed.append(f"[{unit.cell} run{unit.run}] failed in job {job.job_id} "
                               f"({lines[-1].strip() if lines else type(e).__name__}); see {job.paths.stderr}")
            print(self.failed[-1], file=sys.stderr, flush=True)
            return
        if state == "error":
            self.user_error = self.user_error or detail
        elif state == "interrupted":
            self.interrupted = self.interrupted or detail
        elif self.progress:
            what = "finished" if state == "ran" else "already finished; skipped"
            print(f"[{unit.cell} run{unit.run}] {what} ({self.count}/{self.total} units)", flush=True)

    def raise_if_failed(self) -> None:
        if self.user_error is not None:
            raise self.user_error
        if self.interrupted is not None:
            raise KeyboardInterrupt(self.interrupted)
        if self.failed:
            more = f" (and {len(self.failed) - 1} more unit(s))" if len(self.failed) > 1 else ""
            raise StreamclError(f"{self.failed[0]}{more}; fix the cause and rerun: finished units are skipped, "
                                "the others resume from their checkpoints")
