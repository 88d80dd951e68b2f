"""Build a run's pieces from a validated cell config: scenario, model, plugins, evaluator, strategy.

Below the runner, the pretraining phase and the report (imports point down:
``cli -> runner/report -> pretrain -> build -> registry``). Each function takes
the plain dicts that :mod:`streamcl.config` validated; the registry maps their
``name`` to a factory (an Avalanche class or one of ours).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Tuple, Union

import torch

from streamcl.errors import StreamclError
from streamcl.registry import BENCHMARKS, MODELS, PLUGINS, STRATEGIES


@dataclass
class RunContext:
    """What the runner knows about a run; factories that declare a ``context`` parameter receive it."""

    scenario: Any
    n_classes: int
    run: int
    device: torch.device
    run_dir: Path
    cell: str


def resolve_device(name: Union[str, List[int]]) -> torch.device:
    """The validated ``device:`` value -> a torch device (asking for a GPU that is not there is a user error).

    ``cpu`` | ``cuda`` | ``cuda:N`` | ``auto`` | a list of GPU ids. A list is meant for
    multi-GPU data parallel (one process per id under torchrun); a single process uses
    the first id. Under torchrun (:mod:`streamcl.distributed`) each process takes its own device
    instead: its ``LOCAL_RANK``'s GPU (NCCL), or the CPU (gloo; also when ``device: cpu``).
    A ``cuda:N`` device also becomes the process's current CUDA device, so that what works on the
    current device (faiss-gpu's searches, CUDA streams and synchronisation) works on that GPU.
    """
    from streamcl import distributed

    if distributed.is_distributed():
        return distributed.device()
    if isinstance(name, list):
        name = f"cuda:{int(name[0])}"
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise StreamclError(f"device: {name} was asked for but no CUDA device is available; set device: cpu "
                                "or auto")
        index = int(name.partition(":")[2] or 0)
        if index >= torch.cuda.device_count():
            raise StreamclError(f"device: {name} names GPU {index}, but this machine has "
                                f"{torch.cuda.device_count()} (ids 0..{torch.cuda.device_count() - 1})")
        torch.cuda.set_device(index)
    return torch.device(name)


def available_cores() -> int:
    """CPU cores this process may use: its affinity mask, capped by a cgroup v2 CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def default_threads(parallel_workers: int = 1, loader_workers: int = 0) -> int:
    """Intra-op threads for one run: ``$OMP_NUM_THREADS`` when set, else the available cores less the
    data-loader processes, shared among parallel workers."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    return max(1, (available_cores() - loader_workers) // max(1, parallel_workers))


def set_threads(n: int) -> None:
    """Set torch's intra-op threads (and faiss's OpenMP threads, when faiss is loaded) to ``n``.

    Oversubscribed cores are the usual cause of 10x slowdowns on shared machines: every
    library must agree on one count.
    """
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    faiss = sys.modules.get("faiss")
    if faiss is not None and hasattr(faiss, "omp_set_num_threads"):
        faiss.omp_set_num_threads(n)


def deterministic(enabled: bool = True) -> None:
    """Ask torch for deterministic kernels (CPU runs are then bit-reproducible at a fixed thread count)."""
    torch.use_deterministic_algorithms(enabled, warn_only=True)
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = not enabled
        torch.backends.cudnn.deterministic = enabled


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
    """The benchmark's Avalanche scenario for run ``run`` (its seed / class order)."""
    entry = BENCHMARKS.get(cfg["name"])
    kwargs = _kwargs(cfg)
    if entry.wants("run"):
        kwargs["run"] = run
    return entry.factory(**kwargs)


def build_model(cfg: Dict[str, Any], n_classes: int) -> torch.nn.Module:
    """The model with ``n_classes`` outputs."""
    return MODELS.get(cfg["name"]).factory(num_classes=n_classes, **_kwargs(cfg))


def build_plugins(cfgs: List[Dict[str, Any]], context: RunContext) -> List[Any]:
    """One plugin per ``plugins:`` entry, in order (after a DeviceTransformPlugin when the scenario's inputs are uint8)."""
    plugins = []
    info = getattr(context.scenario, "streamcl_info", None)
    if getattr(info, "device_normalize", None) is not None:  # frame-cache uint8 inputs: normalise on the device, first
        from streamcl.benchmarks.device_transforms import DeviceTransformPlugin

        plugins.append(DeviceTransformPlugin(*info.device_normalize))
    for cfg in cfgs:
        entry = PLUGINS.get(cfg["name"])
        kwargs = _kwargs(cfg)
        if entry.wants("context"):
            kwargs["context"] = context
        plugins.append(entry.factory(**kwargs))
    return plugins


def build_strategy(cfg: Dict[str, Any], model, plugins, evaluator, context: RunContext):
    """The Avalanche strategy with its optimiser (and LR schedule, as a plugin)."""
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


__all__ = [
    "RunContext",
    "resolve_device",
    "available_cores",
    "default_threads",
    "set_threads",
    "deterministic",
    "n_classes_of",
    "build_scenario",
    "build_model",
    "build_plugins",
    "build_strategy",
]
