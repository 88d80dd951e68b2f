"""Run a validated experiment: every cell x run, with checkpoints, resume and summaries.

Reading order for newcomers: :func:`run_experiment` loops over cells and runs;
:class:`Run` builds the benchmark, model, plugins and Avalanche strategy for one
run, then :meth:`Run.execute` trains experience by experience
(``strategy.train`` -> ``strategy.eval``), appending to ``metrics.csv`` and
saving a checkpoint after each. A killed run restarts from its last finished
experience and ends with the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import yaml

from streamcl import checkpoint
from streamcl.config import Cell, Experiment
from streamcl.errors import CheckpointError, ConfigError, StreamclError
from streamcl.registry import BENCHMARKS, MODELS, PLUGINS, STRATEGIES
from streamcl.utils import seed_everything

STREAM_ACC = "Top1_Acc_Stream/eval_phase/test_stream/Task000"
EXP_ACC_PREFIX = "Top1_Acc_Exp/eval_phase/test_stream/Task000/Exp"
REPLAY_BYTES = "ReplayBytes/train_phase/train_stream"
METRICS_HEADER = ["experience", "step", "metric", "value"]


@dataclass
class RunContext:
    """What the runner knows about a run; factories that declare a ``context`` parameter receive it."""

    scenario: Any
    n_classes: int
    run: int
    device: torch.device
    run_dir: Path
    cell: str


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise StreamclError("device: cuda was asked for but no CUDA device is available; set device: cpu or auto")
    return torch.device(name)


def _kwargs(cfg: Dict[str, Any], drop: Tuple[str, ...] = ("name",)) -> Dict[str, Any]:
    return {k: v for k, v in cfg.items() if k not in drop}


def n_classes_of(scenario) -> int:
    """Number of classes of a scenario (streamcl benchmarks attach it; Avalanche ones have n_classes)."""
    info = getattr(scenario, "streamcl_info", None)
    if info is not None and getattr(info, "n_classes", None) is not None:
        return int(info.n_classes)
    if getattr(scenario, "n_classes", None) is not None:
        return int(scenario.n_classes)
    classes = set()
    for exp in scenario.train_stream:
        classes.update(int(c) for c in exp.classes_in_this_experience)
    return max(classes) + 1


def build_scenario(cfg: Dict[str, Any], run: int):
    entry = BENCHMARKS.get(cfg["name"])
    kwargs = _kwargs(cfg)
    if entry.wants("run"):
        kwargs["run"] = run
    return entry.factory(**kwargs)


def build_model(cfg: Dict[str, Any], n_classes: int) -> torch.nn.Module:
    return MODELS.get(cfg["name"]).factory(num_classes=n_classes, **_kwargs(cfg))


def build_plugins(cfgs: List[Dict[str, Any]], context: RunContext) -> List[Any]:
    plugins = []
    for cfg in cfgs:
        entry = PLUGINS.get(cfg["name"])
        kwargs = _kwargs(cfg)
        if entry.wants("context"):
            kwargs["context"] = context
        plugins.append(entry.factory(**kwargs))
    return plugins


def build_strategy(cfg: Dict[str, Any], model, plugins, evaluator, context: RunContext):
    from streamcl.optim import build_optimizer, build_schedule

    optimizer = build_optimizer(cfg["optimizer"], model.parameters())
    plugins = list(plugins)
    if cfg.get("scheduler"):
        plugins.append(build_schedule(cfg["scheduler"], optimizer))
    entry = STRATEGIES.get(cfg["name"])
    kwargs = _kwargs(cfg, drop=("name", "optimizer", "scheduler", "first_experience_epochs"))
    if entry.wants("context"):
        kwargs["context"] = context
    return entry.factory(
        model=model,
        optimizer=optimizer,
        criterion=torch.nn.CrossEntropyLoss(),
        device=context.device,
        plugins=plugins,
        evaluator=evaluator,
        **kwargs,
    )


def config_digest(cfg: Dict[str, Any]) -> str:
    """Stable hash of a cell's config: a checkpoint is resumed only by the config that wrote it."""
    text = json.dumps(cfg, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class Run:
    """One run (seed / class order) of one cell."""

    def __init__(self, cell: Cell, run: int, run_dir: Path, *, progress: bool = True):
        self.cell = cell
        self.cfg = cell.config
        self.run = run
        self.dir = run_dir
        self.progress = progress
        self.ckpt_path = run_dir / "checkpoint.pt"
        self.metrics_path = run_dir / "metrics.csv"

    # -- building -----------------------------------------------------------------------------

    def build(self):
        """Benchmark, model, plugins, evaluator and strategy, deterministic for (config, run)."""
        from streamcl.metrics import build_evaluator

        cfg = self.cfg
        seed_everything(self.run)
        device = resolve_device(cfg["device"])
        scenario = build_scenario(cfg["benchmark"], self.run)
        n_classes = n_classes_of(scenario)
        self.context = RunContext(scenario, n_classes, self.run, device, self.dir, self.cell.name)
        seed_everything(self.run)  # model init does not depend on what the benchmark consumed
        model = build_model(cfg["model"], n_classes)
        plugins = build_plugins(cfg["plugins"], self.context)
        loggers = cfg["evaluation"]["loggers"] if self.progress else [
            lg for lg in cfg["evaluation"]["loggers"] if lg != "progress"
        ]
        self.dir.mkdir(parents=True, exist_ok=True)
        _write_cell_config(self.dir.parent, cfg)
        evaluator = build_evaluator(cfg["evaluation"]["metrics"], loggers, self.dir)
        strategy = build_strategy(cfg["strategy"], model, plugins, evaluator, self.context)
        return scenario, strategy

    def _dataset_from_ids(self, ids: torch.Tensor):
        from streamcl.benchmarks.scenarios import subset_by_sample_id

        return subset_by_sample_id(self.context.scenario, ids.tolist())

    # -- resume -------------------------------------------------------------------------------

    def _read_checkpoint(self) -> Optional[Dict[str, Any]]:
        """The last checkpoint of this run, checked against the config (before anything is built)."""
        if not self.ckpt_path.exists():
            return None
        payload = checkpoint.load(self.ckpt_path)
        if payload.get("digest") != config_digest(self.cfg) or payload.get("run") != self.run:
            raise CheckpointError(
                f"{self.ckpt_path}: written by a different configuration of cell '{self.cell.name}'; "
                "rerun with --restart to discard it, or change `name`/`output_dir`"
            )
        return payload

    def _resume(self, strategy, payload: Optional[Dict[str, Any]]) -> Tuple[int, float]:
        """Restore ``payload`` (if any) into the strategy: returns (next experience, wall time so far)."""
        if payload is None:
            if self.metrics_path.exists():
                self.metrics_path.unlink()  # rows of an experience that never finished
            return 0, 0.0
        checkpoint.restore_strategy(
            strategy, payload["strategy"], checkpoint.RestoreContext(dataset_from_ids=self._dataset_from_ids),
            self.ckpt_path,
        )
        checkpoint.warn_unverified(strategy)
        self._truncate_metrics(int(payload["metric_rows"]))
        checkpoint.set_rng_state(payload["rng"])
        self._purge_tensorboard(strategy, int(strategy.clock.train_iterations) + 1)
        return int(payload["next_experience"]), float(payload["wall_time"])

    def _truncate_metrics(self, n_rows: int) -> None:
        if not self.metrics_path.exists():
            raise CheckpointError(f"{self.metrics_path}: missing next to its checkpoint; rerun with --restart")
        with open(self.metrics_path, newline="") as f:
            lines = f.readlines()
        with open(self.metrics_path, "w", newline="") as f:
            f.writelines(lines[: n_rows + 1])

    def _purge_tensorboard(self, strategy, step: int) -> None:
        """Drop TensorBoard events the interrupted run logged after its checkpoint."""
        from avalanche.logging import TensorboardLogger
        from torch.utils.tensorboard import SummaryWriter

        for logger in strategy.evaluator.loggers:
            if isinstance(logger, TensorboardLogger):
                logger.writer.close()
                logger.writer = SummaryWriter(str(self.dir / "tb"), purge_step=step)

    # -- training -----------------------------------------------------------------------------

    def _append_metrics(self, strategy, exp_index: int, since_step: int) -> None:
        """Append this experience's numeric metric values (the last one logged for each name)."""
        rows = []
        for name, (xs, ys) in sorted(strategy.evaluator.get_all_metrics().items()):
            if not xs or xs[-1] < since_step or not isinstance(ys[-1], (int, float)):
                continue
            rows.append([exp_index, xs[-1], name, float(ys[-1])])
        new = not self.metrics_path.exists()
        with open(self.metrics_path, "a", newline="") as f:
            w = csv.writer(f)
            if new:
                w.writerow(METRICS_HEADER)
            w.writerows(rows)
        self._n_rows += len(rows)

    def execute(self, *, stop_after: Optional[int] = None) -> Dict[str, Any]:
        """Train and evaluate every experience (resuming if possible); returns the run summary.

        ``stop_after=k`` raises KeyboardInterrupt once k experiences have been trained by this
        call (after their checkpoint), as a crash would; tests use it to check resume.
        """
        payload = self._read_checkpoint()
        scenario, strategy = self.build()
        start, wall = self._resume(strategy, payload)
        self._n_rows = 0
        if self.metrics_path.exists():
            with open(self.metrics_path) as f:
                self._n_rows = max(0, sum(1 for _ in f) - 1)
        st = self.cfg["strategy"]
        n_exp = len(scenario.train_stream)
        workers = self.cfg["num_workers"]
        # Clip-ordered protocols (class_instance, instance) must see consecutive frames.
        shuffle = bool(getattr(getattr(scenario, "streamcl_info", None), "train_shuffle", True))
        for t, experience in enumerate(scenario.train_stream):
            if t < start:
                continue
            t0 = time.perf_counter()
            since = int(strategy.clock.train_iterations)
            strategy.train_epochs = st["first_experience_epochs"] if t == 0 else st["train_epochs"]
            strategy.train(experience, num_workers=workers, shuffle=shuffle)
            eval_stream = scenario.test_stream if self.cfg["evaluation"]["eval_on"] == "all" else \
                scenario.test_stream[: t + 1]
            strategy.eval(eval_stream, num_workers=workers)
            wall += time.perf_counter() - t0
            self._append_metrics(strategy, t, since)
            checkpoint.save(self.ckpt_path, {
                "run": self.run,
                "cell": self.cell.name,
                "digest": config_digest(self.cfg),
                "next_experience": t + 1,
                "wall_time": wall,
                "metric_rows": self._n_rows,
                "strategy": checkpoint.capture_strategy(strategy),
                "rng": checkpoint.rng_state(),
            })
            acc = strategy.evaluator.get_last_metrics().get(STREAM_ACC)
            if acc is not None:
                print(f"[{self.cell.name} run{self.run}] experience {t + 1}/{n_exp}: "
                      f"accuracy on seen classes {acc:.4f} ({wall:.1f} s)", flush=True)
            if stop_after is not None and t + 1 - start >= stop_after:
                self._close(strategy)
                raise KeyboardInterrupt(f"stopped after experience {t} (stop_after={stop_after})")
        summary = self._summary(strategy, n_exp, wall)
        _write_json(self.dir / "summary.json", summary)
        self._close(strategy)
        return summary

    def _close(self, strategy) -> None:
        for logger in strategy.evaluator.loggers:
            close = getattr(logger, "close", None)
            if close:
                close()
            w = getattr(logger, "writer", None)
            if w is not None and hasattr(w, "close"):
                w.close()

    def _summary(self, strategy, n_exp: int, wall: float) -> Dict[str, Any]:
        rows = read_metrics(self.metrics_path)
        per_exp = [r["value"] for r in rows if r["metric"] == STREAM_ACC]
        last = {r["metric"]: r["value"] for r in rows}
        return {
            "cell": self.cell.name,
            "run": self.run,
            "n_experiences": n_exp,
            "final_accuracy": per_exp[-1] if per_exp else None,
            "accuracy_per_experience": per_exp,
            "forgetting": last.get("StreamForgetting/eval_phase/test_stream"),
            "bwt": last.get("StreamBWT/eval_phase/test_stream"),
            "stored_bytes": int(last.get(REPLAY_BYTES, 0)),
            "wall_time_s": round(wall, 3),
        }


def read_metrics(path: Path) -> List[Dict[str, Any]]:
    """Rows of a run's ``metrics.csv`` as dicts (experience:int, step:int, metric:str, value:float)."""
    out = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            out.append({"experience": int(r["experience"]), "step": int(r["step"]), "metric": r["metric"],
                        "value": float(r["value"])})
    return out


def _write_json(path: Path, data: Any) -> None:
    _write_text(path, json.dumps(data, indent=2))


def _check_cell_config(cell_dir: Path, cfg: Dict[str, Any]) -> None:
    """Refuse to mix results of two different configs under one cell folder."""
    path = cell_dir / "config.yaml"
    if path.exists() and path.read_text() != yaml.safe_dump(cfg, sort_keys=True):
        raise ConfigError(
            f"{cell_dir} holds runs of a different configuration of this cell; rerun with --restart to "
            "replace them, or change `name` or `output_dir`", file=path
        )


def _write_cell_config(cell_dir: Path, cfg: Dict[str, Any]) -> None:
    path = cell_dir / "config.yaml"
    if not path.exists():
        _write_text(path, yaml.safe_dump(cfg, sort_keys=True))


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_experiment(
    exp: Experiment, *, restart: bool = False, progress: bool = True, stop_after: Optional[int] = None
) -> Path:
    """Run every cell x run of ``exp`` (skipping finished runs), then write the summary tables."""
    from streamcl.report import write_summary

    root = exp.root
    if exp.pretrain is not None:
        from streamcl.pretrain import run_pretrain

        run_pretrain(exp, restart=restart, progress=progress)
    for cell in exp.cells:
        cell_dir = root / cell.name
        if restart and cell_dir.exists():
            shutil.rmtree(cell_dir)
        _check_cell_config(cell_dir, cell.config)
        for run in exp.runs:
            run_dir = cell_dir / f"run{run}"
            if (run_dir / "summary.json").exists():
                print(f"[{cell.name} run{run}] already finished; skipping", flush=True)
                continue
            if (run_dir / "checkpoint.pt").exists():
                print(f"[{cell.name} run{run}] resuming from {run_dir / 'checkpoint.pt'}", flush=True)
            Run(cell, run, run_dir, progress=progress).execute(stop_after=stop_after)
    write_summary(root)
    return root
