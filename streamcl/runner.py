"""Run a validated experiment: every cell x run, with checkpoints, resume and summaries.

Reading order for newcomers: :func:`run_experiment` loops over cells and runs;
:class:`Run` builds the benchmark, model, plugins and Avalanche strategy for one
run (:mod:`streamcl.build`), then :meth:`Run.execute` trains experience by
experience (``strategy.train`` -> ``strategy.eval``), rewriting ``metrics.csv``
and saving a checkpoint after each.

Crash safety: the checkpoint is the source of truth. It holds the strategy's
state and every metric row so far; on resume ``metrics.csv`` is rewritten from it
and the TensorBoard events are cut back to its step, so a run killed at any
moment ends with the files of an uninterrupted run. Nothing is written for a
run before its strategy has been built, and a run that fails with a user error
before its first checkpoint leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from streamcl import checkpoint, distributed, tensorboard_events
from streamcl.build import (  # re-exported: these lived here before streamcl.build existed
    RunContext,
    build_model,
    build_plugins,
    build_scenario,
    build_strategy,
    default_threads,
    deterministic,
    n_classes_of,
    resolve_device,
    set_threads,
)
from streamcl.config import Cell, Experiment
from streamcl.config.reference import REFERENCE_FILE
from streamcl.errors import CheckpointError, ConfigError, StreamclError
from streamcl.faults import ENV as FAILPOINT_ENV
from streamcl.faults import failpoint
from streamcl.metrics import build_evaluator, build_loggers
from streamcl.paper_metrics import summary_fields
from streamcl.progress import RunProgressLogger, estimated_iterations, is_interactive
from streamcl.registry import import_modules
from streamcl.results import (
    EXP_ACC_PREFIX,
    METRICS_HEADER,
    STREAM_ACC,
    ResultsError,
    read_metrics,
    read_summary,
    rows_to_csv_text,
    stream_accuracy,
)
from streamcl.units import Unit
from streamcl.utils import atomic_write_text, config_digest, remove_temp_files, seed_everything

__all__ = [
    "Run",
    "Unit",
    "run_experiment",
    "run_unit",
    "UnitWorker",
    "all_units",
    "RunContext",
    "build_model",
    "build_plugins",
    "build_scenario",
    "build_strategy",
    "n_classes_of",
    "resolve_device",
    "config_digest",
    "read_metrics",
    "STREAM_ACC",
    "EXP_ACC_PREFIX",
    "METRICS_HEADER",
]

# Top-level entries of a checkpoint written by Run.execute, with their types.
PAYLOAD_KEYS: Dict[str, Any] = {
    "run": int,
    "cell": str,
    "digest": str,
    "next_experience": int,
    "wall_time": (int, float),
    "step": int,
    "metrics": list,
    "strategy": dict,
    "rng": dict,
}


def _failpoint_logger():
    """A logger whose only job is the ``train_iteration`` failpoint (see :mod:`streamcl.faults`)."""
    from avalanche.logging import BaseLogger

    class FailpointLogger(BaseLogger):
        def log_single_metric(self, name, value, x_plot) -> None:
            pass

        def after_training_iteration(self, strategy, metric_values, **kwargs) -> None:
            failpoint("train_iteration")

    return FailpointLogger()


class Run:
    """One run (seed / class order) of one cell."""

    def __init__(self, cell: Cell, run: int, run_dir: Path, *, progress: bool = True, verbose: bool = False,
                 threads: int = 1):
        self.cell = cell
        self.cfg = cell.config
        self.run = run
        self.dir = run_dir
        self.progress = progress  # False (-q): print nothing but errors
        self.verbose = verbose  # True (-v): Avalanche's InteractiveLogger, every metric after every eval
        self.threads = threads
        self.ckpt_path = run_dir / "checkpoint.pt"
        self.metrics_path = run_dir / "metrics.csv"
        self.rows: List[List[Any]] = []
        self._bar = False  # a tqdm bar shows progress (else one printed line per experience)

    # -- building -----------------------------------------------------------------------------

    def build(self):
        """Benchmark, model, plugins, evaluator and strategy, deterministic for (config, run); writes nothing."""
        cfg = self.cfg
        # `seed` / `class_order_seed` fix one of the two for every run; by default both are the run id.
        seed = self.run if cfg.get("seed") is None else int(cfg["seed"])
        order = self.run if cfg.get("class_order_seed") is None else int(cfg["class_order_seed"])
        import_modules(cfg.get("imports", []))  # a user's registrations (validated at config time)
        seed_everything(seed)
        device = resolve_device(cfg["device"])
        with distributed.main_process_first():  # torchrun: rank 0 generates / indexes a dataset first
            scenario = build_scenario(cfg["benchmark"], order)
        n_classes = n_classes_of(scenario)
        self.context = RunContext(scenario, n_classes, self.run, device, self.dir, self.cell.name)
        seed_everything(seed)  # model init does not depend on what the benchmark consumed
        model = build_model(cfg["model"], n_classes)
        plugins = build_plugins(cfg["plugins"], self.context)
        evaluator = build_evaluator(cfg["evaluation"]["metrics"])
        strategy = build_strategy(cfg["strategy"], model, plugins, evaluator, self.context)
        return scenario, strategy

    def _attach_loggers(self, scenario, strategy, start_step: int) -> None:
        if not distributed.is_main_process():  # torchrun: only rank 0 logs (Avalanche refuses loggers elsewhere)
            return
        names = self.cfg["evaluation"]["loggers"]
        show = "progress" in names and self.progress
        loggers = build_loggers([n for n in names if n != "progress" or (show and self.verbose)], self.dir,
                                config=self.cfg)
        self._bar = show and not self.verbose and is_interactive()
        if self._bar:
            st = self.cfg["strategy"]
            total = estimated_iterations(scenario, st["train_mb_size"], st["first_experience_epochs"],
                                         st["train_epochs"])
            loggers.append(RunProgressLogger(f"{self.cell.name} run{self.run}", total, min(start_step, total)))
        if os.environ.get(FAILPOINT_ENV):
            loggers.append(_failpoint_logger())
        strategy.evaluator.loggers = list(strategy.evaluator.loggers) + loggers
        if start_step == 0:  # the resolved config, once per run, as TensorBoard text (kept by a resume)
            text = "    " + yaml.safe_dump(self.cfg, sort_keys=True).replace("\n", "\n    ")
            for logger in loggers:
                writer = getattr(logger, "writer", None)
                if writer is not None and hasattr(writer, "add_text"):
                    writer.add_text("config", text, 0)

    def _dataset_from_ids(self, ids):
        from streamcl.benchmarks.scenarios import subset_by_sample_id

        return subset_by_sample_id(self.context.scenario, ids.tolist())

    # -- resume -------------------------------------------------------------------------------

    def _read_checkpoint(self) -> Optional[Dict[str, Any]]:
        """The last checkpoint of this run, checked against the config (before anything is built)."""
        if not self.ckpt_path.exists():
            return None
        payload = checkpoint.load(self.ckpt_path)
        for key, tp in PAYLOAD_KEYS.items():
            if key not in payload:
                raise CheckpointError(f"{self.ckpt_path}: has no '{key}' entry (damaged, or written by another "
                                      "streamcl version); rerun with --restart to discard it")
            if not isinstance(payload[key], tp) or isinstance(payload[key], bool):
                raise CheckpointError(f"{self.ckpt_path}: entry '{key}' is a {type(payload[key]).__name__}, not "
                                      "what streamcl writes (damaged); rerun with --restart to discard it")
        if payload["digest"] != config_digest(self.cfg) or payload["run"] != self.run:
            raise CheckpointError(
                f"{self.ckpt_path}: written by a different configuration of cell '{self.cell.name}'; "
                "rerun with --restart to discard it, or change `name`/`output_dir`"
            )
        rows = payload["metrics"]
        if not all(isinstance(r, list) and len(r) == 4 and isinstance(r[2], str) for r in rows):
            raise CheckpointError(f"{self.ckpt_path}: its metric rows are damaged; rerun with --restart to discard it")
        return payload

    def _prepare_outputs(self, payload: Optional[Dict[str, Any]]) -> None:
        """Make the run folder hold exactly what the checkpoint (or a fresh start) says it should."""
        if payload is None:  # a fresh start: drop whatever an attempt killed before its first checkpoint left
            tensorboard_events.reset(self.dir / "tb")
            for name in ("metrics.csv", "summary.json", "log.txt"):
                (self.dir / name).unlink(missing_ok=True)
            self.rows = []
            return
        self.rows = [list(r) for r in payload["metrics"]]
        atomic_write_text(self.metrics_path, rows_to_csv_text(self.rows))
        tensorboard_events.truncate(self.dir / "tb", int(payload["step"]))

    def _restore(self, strategy, payload: Optional[Dict[str, Any]]) -> Tuple[int, float]:
        """Load ``payload`` (if any) into the strategy: returns (next experience, wall time so far)."""
        if payload is None:
            return 0, 0.0
        checkpoint.restore_strategy(
            strategy, payload["strategy"], checkpoint.RestoreContext(dataset_from_ids=self._dataset_from_ids),
            self.ckpt_path,
        )
        checkpoint.warn_unverified(strategy)
        return int(payload["next_experience"]), float(payload["wall_time"])

    # -- training -----------------------------------------------------------------------------

    @staticmethod
    def _metric_counts(strategy) -> Dict[str, int]:
        return {name: len(xs) for name, (xs, _) in strategy.evaluator.get_all_metrics().items()}

    def _new_rows(self, strategy, exp_index: int, before: Dict[str, int]) -> List[List[Any]]:
        """The numeric metric values published since ``before`` (the last one of each name).

        Counting values, not comparing steps: the previous evaluation's values sit at the step
        this experience starts from, and must not be taken again.
        """
        rows = []
        for name, (xs, ys) in sorted(strategy.evaluator.get_all_metrics().items()):
            if len(xs) <= before.get(name, 0) or not isinstance(ys[-1], (int, float)):
                continue
            rows.append([exp_index, int(xs[-1]), name, float(ys[-1])])
        return rows

    def execute(self, *, stop_after: Optional[int] = None) -> Dict[str, Any]:
        """Train and evaluate every experience (resuming if possible); returns the run summary.

        ``stop_after=k`` raises KeyboardInterrupt once k experiences have been trained by this
        call (after their checkpoint), as a crash would; tests use it to check resume.
        """
        # torchrun: rank 0 reads the checkpoint and every rank restores that same payload; only rank 0 writes.
        main = distributed.is_main_process()
        if main:
            remove_temp_files(self.dir)  # left by a kill during an atomic write (checkpoint.pt.*.tmp included)
        payload = distributed.on_main(self._read_checkpoint)
        set_threads(self.threads)
        deterministic()
        scenario, strategy = self.build()
        set_threads(self.threads)  # again: building may have loaded faiss

        start, wall = self._restore(strategy, payload)  # a refused checkpoint stops here, nothing written
        shared = distributed.prepare_strategy(strategy, self.cfg["strategy"]["train_mb_size"])

        # Built and restored: from here on the run folder is written.
        if main:
            self.dir.mkdir(parents=True, exist_ok=True)
            _write_cell_config(self.dir.parent, self.cfg)
            self._prepare_outputs(payload)
        else:
            self.rows = [list(r) for r in payload["metrics"]] if payload is not None else []
        self._attach_loggers(scenario, strategy, int(payload["step"]) if payload else 0)
        if payload is not None:
            checkpoint.set_rng_state(payload["rng"], where=self.ckpt_path)  # last: nothing may draw after it
        # Restored: drop the loaded checkpoint, whose tensors (model weights, a replay buffer not full) would
        # otherwise stay in memory beside their restored copies for the whole run.
        payload = None

        st = self.cfg["strategy"]
        n_exp = len(scenario.train_stream)
        workers = self.cfg["num_workers"]
        # Clip-ordered protocols (class_instance, instance) must see consecutive frames.
        shuffle = bool(getattr(getattr(scenario, "streamcl_info", None), "train_shuffle", True))
        # On a GPU Avalanche already pins batches and copies them with non_blocking=True; keep its loader
        # workers alive across an experience's epochs (Avalanche builds a new loader per experience).
        on_gpu = self.context.device.type == "cuda"
        loader_kwargs = {"persistent_workers": True} if on_gpu and workers > 0 else {}
        try:
            for t, experience in enumerate(scenario.train_stream):
                if t < start:
                    continue
                t0 = time.perf_counter()
                before = self._metric_counts(strategy)
                strategy.train_epochs = st["first_experience_epochs"] if t == 0 else st["train_epochs"]
                strategy.train(experience, num_workers=workers, shuffle=shuffle, **loader_kwargs)
                eval_stream = scenario.test_stream if self.cfg["evaluation"]["eval_on"] == "all" else \
                    scenario.test_stream[: t + 1]
                strategy.eval(eval_stream, num_workers=workers, **loader_kwargs)
                wall += time.perf_counter() - t0
                self.rows.extend(self._new_rows(strategy, t, before))
                if main:
                    atomic_write_text(self.metrics_path, rows_to_csv_text(self.rows))
                    _flush_loggers(strategy)
                    with shared.plugin_hidden():  # the same checkpoint for any number of processes
                        state = checkpoint.capture_strategy(strategy)
                    checkpoint.save(self.ckpt_path, {
                        "run": self.run,
                        "cell": self.cell.name,
                        "digest": config_digest(self.cfg),
                        "next_experience": t + 1,
                        "wall_time": wall,
                        "step": int(strategy.clock.train_iterations),
                        "metrics": [list(r) for r in self.rows],
                        "strategy": state,
                        "rng": checkpoint.rng_state(),
                    })
                distributed.barrier()  # no rank runs ahead (or stops) before rank 0's checkpoint is on disk
                failpoint("after_checkpoint")
                acc = stream_accuracy(strategy.evaluator.get_last_metrics())
                if acc is not None and self.progress and not self._bar and main:
                    print(f"[{self.cell.name} run{self.run}] experience {t + 1}/{n_exp}: "
                          f"accuracy on seen classes {acc:.4f} ({wall:.1f} s)", flush=True)
                if stop_after is not None and t + 1 - start >= stop_after:
                    raise KeyboardInterrupt(f"stopped after experience {t} (stop_after={stop_after})")
            summary = self._summary(n_exp, wall)
            if main:
                atomic_write_text(self.dir / "summary.json", json.dumps(summary, indent=2))
            distributed.barrier()
            return summary
        finally:
            shared.close()
            _close_loggers(strategy)

    def _summary(self, n_exp: int, wall: float) -> Dict[str, Any]:
        rows = [dict(zip(METRICS_HEADER, r)) for r in self.rows]
        return {
            "cell": self.cell.name,
            "run": self.run,
            "digest": config_digest(self.cfg),
            "n_experiences": n_exp,
            **summary_fields(rows),
            "wall_time_s": round(wall, 3),
        }


def _flush_loggers(strategy) -> None:
    """Push buffered TensorBoard events to disk, so the checkpoint's step covers what is on disk."""
    for logger in strategy.evaluator.loggers:
        w = getattr(logger, "writer", None)
        if w is not None and hasattr(w, "flush"):
            w.flush()


def _close_loggers(strategy) -> None:
    for logger in strategy.evaluator.loggers:
        close = getattr(logger, "close", None)
        if close:
            close()
        w = getattr(logger, "writer", None)
        if w is not None and hasattr(w, "close"):
            w.close()


def _check_cell_config(cell_dir: Path, cfg: Dict[str, Any]) -> None:
    """Refuse to mix results of two different configs under one cell folder."""
    path = cell_dir / "config.yaml"
    if not path.exists():
        return
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
        raise ConfigError(
            f"unreadable ({type(e).__name__}); rerun with --restart to discard this cell's runs, or delete the "
            "file to keep them (each run is still checked against its own checkpoint and summary)", file=path
        ) from None
    if saved != yaml.safe_load(yaml.safe_dump(cfg, sort_keys=True)):
        raise ConfigError(
            f"{cell_dir} holds runs of a different configuration of this cell; rerun with --restart to "
            "replace them, or change `name` or `output_dir`", file=path
        )


def _write_cell_config(cell_dir: Path, cfg: Dict[str, Any]) -> None:
    path = cell_dir / "config.yaml"
    if not path.exists():
        atomic_write_text(path, yaml.safe_dump(cfg, sort_keys=True))


def _finished(run_dir: Path, cfg: Dict[str, Any]) -> bool:
    """True when the run has a summary written by this configuration."""
    path = run_dir / "summary.json"
    if not path.exists():
        return False
    try:
        summary = read_summary(path)
    except ResultsError as e:
        raise ResultsError(f"{e}; or delete it and rerun: the summary is rebuilt from checkpoint.pt") from None
    if summary.get("digest", config_digest(cfg)) != config_digest(cfg):
        raise ConfigError("written by a different configuration of this cell; rerun with --restart to discard it",
                          file=path)
    return True


def _discard_unstarted(cell_dir: Path, run_dir: Path) -> None:
    """Remove what a run that failed before its first checkpoint wrote (and its cell, if now empty)."""
    if (run_dir / "checkpoint.pt").exists():
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    if cell_dir.is_dir() and not any(p.is_dir() and p.name.startswith("run") for p in cell_dir.iterdir()):
        shutil.rmtree(cell_dir, ignore_errors=True)


def _lock(root: Path, name: str):
    """A process-safe lock for one unit of work (``<root>/.locks/<name>.lock``).

    filelock's OS locks are released when their process dies (kill -9 included), so a
    crashed worker never leaves a unit locked. On network filesystems without POSIX
    locks, run each unit from one worker only.
    """
    from filelock import FileLock

    folder = root / ".locks"
    folder.mkdir(parents=True, exist_ok=True)
    return FileLock(str(folder / f"{name}.lock"))


def unit_lock(root: Path, unit: Unit):
    """The lock of one (cell, run) (:meth:`Unit.lock_path`): held while a process works on its folder."""
    return _lock(root, unit.lock_name)


def _cell(exp: Experiment, name: str) -> Cell:
    for cell in exp.cells:
        if cell.name == name:
            return cell
    raise ConfigError(f"{exp.file}: no cell named '{name}' (cells: {', '.join(c.name for c in exp.cells)})")


def ensure_pretrained(exp: Experiment, *, restart: bool = False, progress: bool = True,
                      threads: Optional[int] = None) -> None:
    """Run the experiment's ``pretrain:`` phase once (under a lock: other processes wait, then reuse its file)."""
    if exp.pretrain is None:
        return
    from streamcl.pretrain import run_pretrain

    set_threads(threads or default_threads())

    def pretrain() -> None:
        with _lock(exp.root, "pretrain"):
            run_pretrain(exp, restart=restart, progress=progress)

    distributed.on_main(pretrain)  # torchrun: rank 0 pretrains and writes the file, the others then read it


def run_unit(exp: Experiment, unit: Unit, *, progress: bool = True, verbose: bool = False,
             threads: Optional[int] = None, stop_after: Optional[int] = None, wait: bool = True) -> str:
    """Run one (cell, run) to its end unless it is finished; returns ``"finished"``, ``"ran"`` or ``"busy"``.

    Idempotent and safe to call from any process on any machine sharing ``exp.root``: the
    unit's lock is held while it runs, a finished unit is skipped, an interrupted one resumes
    from its checkpoint. ``wait=False``: return ``"busy"`` at once when another process holds it.
    This is the function every launcher (:mod:`streamcl.launchers`) calls, once per unit.
    """
    from filelock import Timeout

    cell = _cell(exp, unit.cell)
    root = exp.root
    cell_dir = root / cell.name
    run_dir = cell_dir / f"run{unit.run}"
    main = distributed.is_main_process()
    lock = unit_lock(root, unit) if main else None  # torchrun: rank 0 holds the lock for all its ranks

    def decide() -> str:
        try:
            lock.acquire(timeout=-1 if wait else 0)
        except Timeout:
            return "busy"
        try:
            _check_cell_config(cell_dir, cell.config)
            if _finished(run_dir, cell.config):
                if progress:
                    print(f"[{cell.name} run{unit.run}] already finished; skipping", flush=True)
                lock.release()
                return "finished"
            if (run_dir / "checkpoint.pt").exists() and progress:
                print(f"[{cell.name} run{unit.run}] resuming from {run_dir / 'checkpoint.pt'}", flush=True)
        except BaseException:
            lock.release()
            raise
        return "run"

    state = distributed.on_main(decide)  # torchrun: every rank takes rank 0's decision
    if state != "run":
        return state
    try:
        threads = threads or exp.threads or default_threads(loader_workers=cell.config["num_workers"])
        try:
            Run(cell, unit.run, run_dir, progress=progress, verbose=verbose, threads=threads).execute(
                stop_after=stop_after)
        except StreamclError:
            if main:
                _discard_unstarted(cell_dir, run_dir)
            raise
        return "ran"
    finally:
        if main:
            lock.release()


@dataclass(frozen=True)
class UnitWorker:
    """What a launcher calls for each unit: :func:`run_unit` with this invocation's options (picklable).

    Launchers receive one instead of importing this module, so that imports point down only
    (``runner -> launchers``); Ray and submitit pickle it by reference with the experiment.
    """

    progress: bool = True
    verbose: bool = False
    threads: Optional[int] = None
    stop_after: Optional[int] = None

    def __call__(self, exp: Experiment, unit: Unit, *, wait: bool = True, threads: Optional[int] = None) -> str:
        """Run ``unit`` (see :func:`run_unit`); ``threads`` replaces this worker's thread count (a launcher's CPUs)."""
        return run_unit(exp, unit, progress=self.progress, verbose=self.verbose, threads=threads or self.threads,
                        stop_after=self.stop_after, wait=wait)

    def prepare(self, exp: Experiment) -> None:
        """The experiment's ``pretrain:`` phase, once (an array task on a cluster calls this before its unit)."""
        ensure_pretrained(exp, progress=self.progress, threads=self.threads)

    def finish(self, exp: Experiment) -> bool:
        """Write the summary tables if every unit of ``exp`` has finished (what the last unit to finish does)."""
        return write_summary_if_complete(exp)


def all_units(exp: Experiment) -> List[Unit]:
    """Every (cell, run) of the experiment, in grid order (cells outer, runs inner)."""
    return [Unit(cell.name, run) for cell in exp.cells for run in exp.runs]


def discard_for_restart(exp: Experiment, units: Sequence[Unit]) -> None:
    """``--restart``: delete the folders of ``units`` (a whole cell when all its runs are among them).

    Refused while another process holds one of their locks.
    """
    from filelock import Timeout

    root = exp.root
    chosen = {(u.cell, u.run) for u in units}
    for cell in exp.cells:
        runs = [r for r in exp.runs if (cell.name, r) in chosen]
        cell_dir = root / cell.name
        if not runs or not cell_dir.exists():
            continue
        locks = [unit_lock(root, Unit(cell.name, r)) for r in runs]
        try:
            for lock in locks:
                lock.acquire(timeout=0)
            whole = not any(p.is_dir() and p.name.startswith("run") and p.name[3:] not in {str(r) for r in runs}
                            for p in cell_dir.iterdir())
            if whole:
                shutil.rmtree(cell_dir)
            else:
                for r in runs:
                    shutil.rmtree(cell_dir / f"run{r}", ignore_errors=True)
        except Timeout:
            raise StreamclError(f"{cell_dir}: another streamcl process is running this cell; stop it "
                                "before --restart") from None
        finally:
            for lock in locks:
                lock.release()


def run_experiment(
    exp: Experiment,
    *,
    restart: bool = False,
    progress: bool = True,
    verbose: bool = False,
    stop_after: Optional[int] = None,
    threads: Optional[int] = None,
    units: Optional[Sequence[Unit]] = None,
) -> Path:
    """Run the units of ``exp`` (default: every cell x run) with its launcher, then write the summary tables.

    Each (cell, run) is one unit of work, keyed by its folder and guarded by a lock: any
    number of ``streamcl run`` processes on the same file share the work, each unit runs
    once, and each process waits for the units others hold before writing the summary.
    ``threads``: torch intra-op threads per run (default: the experiment's ``threads:``,
    else ``$OMP_NUM_THREADS``, else the cores available less the data-loader workers).
    With a launcher that returns before the units finish (SLURM without ``wait``), the
    summary is written by whichever unit finishes last; ``streamcl status`` shows progress.
    """
    from streamcl.launchers import launch, on_cluster

    root = exp.root
    units = list(all_units(exp) if units is None else units)
    if threads is None:
        threads = exp.threads or default_threads(
            loader_workers=max((c.config["num_workers"] for c in exp.cells), default=0))
    # Under torchrun every process runs this same call: join the process group (gloo on CPU, NCCL on GPUs).
    if distributed.init_from_env(use_cuda=any(c.config["device"] != "cpu" for c in exp.cells)):
        if exp.launcher["name"] != "local":
            raise ConfigError(f"torchrun already runs each unit data-parallel in its processes; the "
                              f"'{exp.launcher['name']}' launcher cannot run inside it (use --launcher local)",
                              file=exp.file, key="launcher")
    main = distributed.is_main_process()
    progress, verbose = progress and main, verbose and main  # torchrun: rank 0 prints

    def check() -> None:
        if restart:
            discard_for_restart(exp, units)
        for cell in exp.cells:  # a changed config is refused before anything runs
            _check_cell_config(root / cell.name, cell.config)
        write_reference(exp)

    try:
        distributed.on_main(check)
        if not on_cluster(exp):  # on a cluster the first job pretrains (UnitWorker.prepare), not the login node
            ensure_pretrained(exp, restart=restart, progress=progress, threads=threads)
        if exp.launcher["name"] != "local":  # a finished unit costs a remote process for nothing
            units = [u for u in units if not _finished(root / u.cell / f"run{u.run}", _cell(exp, u.cell).config)]
        done = launch(exp, units, UnitWorker(progress, verbose, threads, stop_after))
    except StreamclError:
        if main:
            _remove_lonely_locks(root)
        raise
    if done:
        distributed.on_main(lambda: write_summary_if_complete(exp, force=True))
    return root


def write_reference(exp: Experiment) -> None:
    """``<root>/reference.yaml``: the file's ``reference:`` section (published numbers), for ``streamcl report``.

    Written before any unit runs (a config error has written nothing by then); without a
    reference section, a ``reference.yaml`` an earlier version of the file left is removed, so
    that the report never compares the runs with numbers the file no longer names.
    """
    from streamcl.config.reference import reference_yaml

    path = exp.root / REFERENCE_FILE
    text = reference_yaml(exp.reference)
    if text is None:
        path.unlink(missing_ok=True)
    elif not path.is_file() or path.read_text(encoding="utf-8") != text:
        atomic_write_text(path, text)


def write_summary_if_complete(exp: Experiment, *, force: bool = False) -> bool:
    """Write ``summary.csv/md`` when every unit of ``exp`` has its summary (or always, with ``force``)."""
    from streamcl.report import write_summary

    root = exp.root
    if not force and not all((root / u.cell / f"run{u.run}" / "summary.json").exists() for u in all_units(exp)):
        return False
    with _lock(root, "summary"):
        write_summary(root)
    return True


def _remove_lonely_locks(root: Path) -> None:
    """After a user error, drop ``<root>/.locks`` when it is all the experiment folder holds (and nobody holds a lock).

    So that a configuration error found while building leaves no output folder behind
    (``reference.yaml``, written before the units start, goes with it).
    """
    from filelock import FileLock, Timeout

    if not root.is_dir() or any(p.name not in (".locks", REFERENCE_FILE) for p in root.iterdir()):
        return
    held = []
    try:
        for path in (root / ".locks").glob("*.lock"):
            lock = FileLock(str(path))
            lock.acquire(timeout=0)
            held.append(lock)
        shutil.rmtree(root)
    except Timeout:
        return  # another process is working here: leave its locks alone
    finally:
        for lock in held:
            lock.release()
