"""Evaluation: Avalanche's metrics by name, plus the replay-bytes metric.

``stored_bytes(strategy)`` is the one place that counts what a method keeps in
memory, so budgets can be compared across CRUMB, REMIND and raw-image replay:
plugins that hold compressed data report ``replay_nbytes()`` themselves (codes +
labels + codec state); Avalanche's raw-image buffers count as uint8 images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

from avalanche.evaluation.metric_definitions import PluginMetric
from avalanche.evaluation.metric_results import MetricValue


def raw_item_nbytes(dataset) -> int:
    """Bytes of one stored raw image: its input tensor's elements as uint8 (224x224x3 -> 150 528)."""
    if len(dataset) == 0:
        return 0
    x = dataset[0][0]
    return int(x.numel()) if hasattr(x, "numel") else 0


def _buffer_datasets(plugin) -> List[Any]:
    """Raw-image buffers of Avalanche's replay-style plugins (ReplayPlugin, GDumb, AGEM, GEM ...)."""
    out = []
    policy = getattr(plugin, "storage_policy", None)
    if policy is not None and hasattr(policy, "buffer"):
        out.append(policy.buffer)
    for ds in getattr(plugin, "buffers", None) or []:  # AGEM keeps a list of datasets
        if hasattr(ds, "__len__") and hasattr(ds, "__getitem__"):
            out.append(ds)
    return out


def stored_bytes(strategy) -> int:
    """Real bytes of replay memory held by the strategy's plugins (0 for methods without memory)."""
    total = 0
    for plugin in getattr(strategy, "plugins", []):
        if hasattr(plugin, "replay_nbytes"):
            total += int(plugin.replay_nbytes())
            continue
        for ds in _buffer_datasets(plugin):
            n = len(ds)
            total += n * raw_item_nbytes(ds) if n else 0
    return total


class ReplayBytes(PluginMetric[int]):
    """Bytes held in replay memory after each training experience (``ReplayBytes/train_phase/train_stream``)."""

    def __init__(self):
        super().__init__()
        self._value = 0

    def result(self) -> int:
        return self._value

    def reset(self) -> None:
        self._value = 0

    def after_training_exp(self, strategy) -> List[MetricValue]:
        self._value = stored_bytes(strategy)
        return [
            MetricValue(
                self, "ReplayBytes/train_phase/train_stream", self._value, strategy.clock.train_iterations
            )
        ]

    def __str__(self) -> str:
        return "ReplayBytes"


def _metric_factories() -> Dict[str, Callable[[], Sequence[PluginMetric]]]:
    from avalanche.evaluation import metrics as M

    return {
        "accuracy": lambda: M.accuracy_metrics(epoch=True, experience=True, stream=True),
        "loss": lambda: M.loss_metrics(epoch=True, experience=True, stream=True),
        "forgetting": lambda: M.forgetting_metrics(experience=True, stream=True),
        "bwt": lambda: M.bwt_metrics(experience=True, stream=True),
        "timing": lambda: M.timing_metrics(epoch=True, experience=True),
        "ram": lambda: M.ram_usage_metrics(every=0.1, experience=True),
        "cpu": lambda: M.cpu_usage_metrics(experience=True),
        "replay_bytes": lambda: [ReplayBytes()],
        "reconstructed_accuracy": _reconstructed_accuracy,
    }


def _reconstructed_accuracy() -> Sequence[PluginMetric]:
    """Accuracy of the head on codec-reconstructed features (CRUMB/REMIND; nothing for other methods)."""
    from streamcl.plugins.latent_replay import reconstructed_accuracy_metrics

    return reconstructed_accuracy_metrics()


METRIC_NAMES = ("accuracy", "loss", "forgetting", "bwt", "timing", "ram", "cpu", "replay_bytes",
                "reconstructed_accuracy")
LOGGER_NAMES = ("tensorboard", "csv", "progress", "text")
DEFAULT_METRICS = ["accuracy", "loss", "forgetting", "bwt", "timing", "ram", "replay_bytes"]
DEFAULT_LOGGERS = ["tensorboard", "csv", "progress"]


def build_evaluator(metrics: Sequence[str], loggers: Sequence[str], run_dir: Path):
    """EvaluationPlugin with the named metric groups and loggers writing into ``run_dir``.

    ``csv`` is streamcl's own ``metrics.csv`` (written by the runner, resume-safe;
    Avalanche's CSVLogger truncates its files on reload), so it adds no logger here.
    """
    from avalanche.logging import InteractiveLogger, TensorboardLogger, TextLogger
    from avalanche.training.plugins import EvaluationPlugin

    factories = _metric_factories()
    plugin_metrics: List[PluginMetric] = []
    for name in metrics:
        made = factories[name]()
        plugin_metrics.extend(made if isinstance(made, (list, tuple)) else [made])
    avl_loggers = []
    if "tensorboard" in loggers:
        avl_loggers.append(TensorboardLogger(tb_log_dir=str(run_dir / "tb")))
    if "progress" in loggers:
        avl_loggers.append(InteractiveLogger())
    if "text" in loggers:
        avl_loggers.append(TextLogger(open(run_dir / "log.txt", "a")))
    return EvaluationPlugin(*plugin_metrics, loggers=avl_loggers, strict_checks=False)


__all__ = ["ReplayBytes", "stored_bytes", "build_evaluator", "raw_item_nbytes"]
