"""Evaluation: Avalanche's metrics by name, plus the replay-bytes, top-5 and task-agnostic metrics.

``stored_bytes(strategy)`` is the one place that counts what a method keeps in
memory, so budgets can be compared across CRUMB, REMIND and raw-image replay:
plugins that hold compressed data report ``replay_nbytes()`` themselves (codes +
labels + codec state); Avalanche's raw-image buffers count as uint8 images.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

import torch
from avalanche.evaluation.metric_definitions import PluginMetric
from avalanche.evaluation.metric_results import MetricValue
from torch import Tensor


def raw_item_nbytes(dataset) -> int:
    """Bytes a device must keep for one raw image of ``dataset``: decoded uint8 pixels.

    The image is charged at the smaller of its source resolution and the network's input
    (the CRUMB paper's rule: a 224x224 RGB input costs 224*224*3 = 150 528 B): an 8x8 grey
    source image fed to the network as a 3x16x16 tensor costs 64 B, not 768. The source is
    the item without its transforms (Avalanche's ``remove_current_transform_group``).
    """
    if len(dataset) == 0:
        return 0
    x = dataset[0][0]
    net = _chw(x)
    if net is None:
        return 0
    src = None
    cached = _cached_source_hw(dataset)
    if cached is not None:  # a decoded-frame cache: its rows are already resized; the manifest knows the source
        src = (net[0], int(cached[0]), int(cached[1]))
    else:
        try:
            src = _chw(dataset.remove_current_transform_group()[0][0])
        except Exception:  # a dataset without Avalanche transform groups: charge the network input
            src = None
    if src is None:
        return net[0] * net[1] * net[2]
    return min(src[0], net[0]) * min(src[1], net[1]) * min(src[2], net[2])


def _cached_source_hw(dataset: Any, depth: int = 12):
    """The source (height, width) recorded by a frame cache under ``dataset`` (Avalanche's nested datasets), if any."""
    todo = [(dataset, 0)]
    while todo:
        ds, d = todo.pop()
        hw = getattr(ds, "source_hw", None)
        if hw is not None and not callable(hw):
            return tuple(hw)
        if d < depth:
            todo.extend((c, d + 1) for c in (getattr(ds, "_datasets", None) or ()))
            inner = getattr(ds, "dataset", None)
            if inner is not None and inner is not ds:
                todo.append((inner, d + 1))
    return None


def _chw(x: Any):
    """(channels, height, width) of an image given as a PIL image, a CHW tensor or an HWC array."""
    if hasattr(x, "size") and hasattr(x, "getbands"):  # PIL.Image
        w, h = x.size
        return len(x.getbands()), h, w
    shape = tuple(getattr(x, "shape", ()))
    if len(shape) == 3:
        if hasattr(x, "numel"):  # torch tensors are CHW
            return int(shape[0]), int(shape[1]), int(shape[2])
        return int(shape[2]), int(shape[0]), int(shape[1])  # numpy images are HWC
    if len(shape) == 2:
        return 1, int(shape[0]), int(shape[1])
    return None


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
    """Real bytes of replay memory held now by the strategy and its plugins (0 for methods without memory)."""
    total = int(strategy.replay_nbytes()) if hasattr(strategy, "replay_nbytes") else 0  # WA, DyTox exemplars
    for plugin in getattr(strategy, "plugins", []):
        if hasattr(plugin, "replay_nbytes"):
            total += int(plugin.replay_nbytes())
            continue
        for ds in _buffer_datasets(plugin):
            n = len(ds)
            total += n * raw_item_nbytes(ds) if n else 0
    return total


def reserved_bytes(strategy) -> int:
    """Bytes of replay memory set aside: a buffer's capacity (CRUMB/REMIND preallocate it) plus codec state.

    Methods that do not preallocate (Avalanche's raw buffers, WA/DyTox exemplars) reserve what they hold.
    """
    total = int(strategy.replay_nbytes()) if hasattr(strategy, "replay_nbytes") else 0
    for plugin in getattr(strategy, "plugins", []):
        if hasattr(plugin, "reserved_nbytes"):
            total += int(plugin.reserved_nbytes())
        elif hasattr(plugin, "replay_nbytes"):
            total += int(plugin.replay_nbytes())
        else:
            for ds in _buffer_datasets(plugin):
                n = len(ds)
                total += n * raw_item_nbytes(ds) if n else 0
    return total


class ReplayBytes(PluginMetric[int]):
    """Bytes held in replay memory after each training experience (``ReplayBytes/train_phase/train_stream``).

    Also reports the bytes reserved (``ReplayBytesReserved/train_phase/train_stream``): CRUMB and
    REMIND preallocate their buffer, so reserved can exceed held while the buffer fills up.
    """

    def __init__(self):
        super().__init__()
        self._value = 0

    def result(self) -> int:
        return self._value

    def reset(self) -> None:
        self._value = 0

    def after_training_exp(self, strategy) -> List[MetricValue]:
        self._value = stored_bytes(strategy)
        step = strategy.clock.train_iterations
        values = [
            MetricValue(self, "ReplayBytes/train_phase/train_stream", self._value, step),
            MetricValue(self, "ReplayBytesReserved/train_phase/train_stream", reserved_bytes(strategy), step),
        ]
        return values + replay_scalars(self, strategy, step)

    def __str__(self) -> str:
        return "ReplayBytes"


def replay_scalars(metric: PluginMetric, strategy, step: int) -> List[MetricValue]:
    """Latent replay's own counters (CRUMB, REMIND): replay steps, last replay loss, items per class."""
    out: List[MetricValue] = []
    for plugin in getattr(strategy, "plugins", []):
        if not hasattr(plugin, "replay_steps"):
            continue
        out.append(MetricValue(metric, "ReplaySteps/train_phase/train_stream", int(plugin.replay_steps), step))
        if getattr(plugin, "last_replay_loss", None) is not None:
            out.append(MetricValue(metric, "ReplayLoss/train_phase/train_stream", float(plugin.last_replay_loss),
                                   step))
        buffer = getattr(plugin, "buffer", None)
        if buffer is not None and hasattr(buffer, "items_per_class"):
            for c, n in sorted(buffer.items_per_class().items()):
                out.append(MetricValue(metric, f"BufferItems/train_phase/train_stream/Class{int(c):03d}", int(n), step))
    return out


def topk_hits(output: Tensor, target: Tensor, k: int) -> Tensor:
    """Per sample: is ``target`` among the ``k`` largest logits of ``output`` (N, C)? (all True when k >= C)."""
    k = min(int(k), int(output.shape[1]))
    return (output.topk(k, dim=1).indices == target.reshape(-1, 1)).any(dim=1)


def _topk_metric_class():
    from avalanche.evaluation.metrics.topk_acc import TopkAccuracy

    class VectorTopkAccuracy(TopkAccuracy):
        """Avalanche's ``TopkAccuracy`` counted in one pass per minibatch.

        Avalanche's own goes through torchmetrics sample by sample when the task label comes per
        sample (a cumulative or joint stream) and fails there on this torchmetrics version, and
        refuses heads with fewer than k classes; here a head of C <= k classes counts every sample.
        """

        @torch.no_grad()
        def update(self, predicted_y: Tensor, true_y: Tensor, task_labels: Any) -> None:
            predicted_y, true_y = torch.as_tensor(predicted_y), torch.as_tensor(true_y)
            if len(true_y) != len(predicted_y):
                raise ValueError("Size mismatch for true_y and predicted_y tensors")
            if predicted_y.dim() == 1:  # labels, not logits: top-k is top-1
                hits = predicted_y == true_y
            else:
                hits = topk_hits(predicted_y, true_y if true_y.dim() == 1 else true_y.argmax(1), self.top_k)
            if isinstance(task_labels, Tensor) and task_labels.dim() > 0:
                task_labels = task_labels.to(hits.device)
                for t in torch.unique(task_labels).tolist():
                    sel = hits[task_labels == t]
                    self._topk_acc_dict[int(t)].update(float(sel.float().mean()), int(sel.numel()))
            elif len(hits):
                self._topk_acc_dict[int(task_labels)].update(float(hits.float().mean()), int(hits.numel()))

    return VectorTopkAccuracy


def topk_accuracy_metrics(k: int = 5) -> List[PluginMetric]:
    """Top-k accuracy per test experience and over the stream, under Avalanche's names.

    ``Topk_5_Acc_Exp/eval_phase/test_stream/Task000/Exp000`` and
    ``Topk_5_Acc_Stream/eval_phase/test_stream/Task000`` (Avalanche's ``topk_acc_metrics``
    with a vectorised count: see ``VectorTopkAccuracy``).
    """
    from avalanche.evaluation.metrics.topk_acc import ExperienceTopkAccuracy, StreamTopkAccuracy

    cls = _topk_metric_class()
    out: List[PluginMetric] = []
    for metric in (ExperienceTopkAccuracy(top_k=k), StreamTopkAccuracy(top_k=k)):
        metric._metric = cls(top_k=k)
        out.append(metric)
    return out


TASK_AGNOSTIC = "TaskAgnostic_Acc_Stream/eval_phase/test_stream"  # its name on the test stream


def task_agnostic_hits(head_logits: Dict[int, Tensor], target: Tensor, task: Tensor) -> Tensor:
    """Per sample: is the arg-max over the concatenated logits of every head its (task, class)?

    ``head_logits``: task label -> (N, C_t) logits of that task's head (heads may differ in size);
    ``target``: the class within its task (labels restart at 0 in every task); ``task``: its task
    label. A sample whose task has no head here is counted wrong.
    """
    tasks = sorted(int(t) for t in head_logits)
    if not tasks:
        return torch.zeros(len(target), dtype=torch.bool)
    logits = [head_logits[t] if t in head_logits else head_logits[str(t)] for t in tasks]
    sizes = [int(x.shape[1]) for x in logits]
    flat = torch.cat([x.float() for x in logits], dim=1).argmax(dim=1)
    owner = torch.repeat_interleave(torch.tensor(tasks, device=flat.device), torch.tensor(sizes, device=flat.device))
    starts = torch.tensor([0, *sizes[:-1]], device=flat.device).cumsum(0)
    first = torch.repeat_interleave(starts, torch.tensor(sizes, device=flat.device))
    pred_task, pred_class = owner[flat], flat - first[flat]
    return (pred_task == task.to(flat.device).long()) & (pred_class == target.to(flat.device).long())


def all_head_logits(model: Any, x: Tensor):
    """Task label -> logits of every head the model has learned, or None for a single-head model.

    An Avalanche ``MultiTaskModule`` (``model.head: multi`` builds one): the backbone runs once
    when the model has ``features`` and a multi-task ``classifier`` (streamcl's ``MultiHeadNet``),
    else ``model.forward_all_tasks(x)`` (every known training task).
    """
    from avalanche.models.dynamic_modules import MultiTaskModule

    if not isinstance(model, MultiTaskModule) and isinstance(getattr(model, "module", None), MultiTaskModule):
        model = model.module  # DistributedDataParallel
    if not isinstance(model, MultiTaskModule):
        return None
    head = getattr(model, "classifier", None)
    if isinstance(head, MultiTaskModule) and callable(getattr(model, "features", None)):
        return {int(t): y for t, y in head.forward_all_tasks(model.features(x)).items()}
    return {int(t): y for t, y in model.forward_all_tasks(x).items()}


class TaskAgnosticAccuracy(PluginMetric[float]):
    """Accuracy of a multi-head (task-incremental) model when it is not told the task.

    Every test image goes through every head the model has learned; the prediction is the
    arg-max over all heads' logits together, i.e. a (task, class) pair, and it is right when
    both match. Emitted once per evaluation as ``TaskAgnostic_Acc_Stream/eval_phase/test_stream``
    (a fraction, like Avalanche's accuracies). It costs one extra forward of the backbone per
    evaluation minibatch. A single-head model has nothing to choose between: the metric is then
    its ordinary accuracy on the evaluated stream (the arg-max of its output, no extra forward).
    """

    def __init__(self):
        super().__init__()
        self._correct = 0
        self._total = 0

    def result(self) -> float:
        return self._correct / self._total if self._total else 0.0

    def reset(self) -> None:
        self._correct = 0
        self._total = 0

    def update(self, head_logits: Dict[int, Tensor] | None, output: Tensor, target: Tensor, task: Tensor) -> None:
        """Count one minibatch: with every head's logits (multi-head) or from ``output`` (single head)."""
        if head_logits is None:
            hits = output.argmax(dim=1) == target.to(output.device)
        else:
            hits = task_agnostic_hits(head_logits, target, task)
        self._correct += int(hits.sum())
        self._total += int(hits.numel())

    def before_eval(self, strategy) -> None:
        self.reset()

    @torch.no_grad()
    def after_eval_iteration(self, strategy) -> None:
        task = strategy.mb_task_id
        if not isinstance(task, Tensor):
            task = torch.full((len(strategy.mb_y),), int(task))
        heads = all_head_logits(strategy.model, strategy.mb_x)
        self.update(heads, strategy.mb_output, strategy.mb_y, task)

    def after_eval(self, strategy) -> List[MetricValue]:
        from avalanche.evaluation.metric_utils import get_metric_name

        if not self._total:
            return []
        name = get_metric_name(self, strategy, add_experience=False, add_task=False)  # .../eval_phase/test_stream
        return [MetricValue(self, name, self.result(), strategy.clock.train_iterations)]

    def __str__(self) -> str:
        return "TaskAgnostic_Acc_Stream"


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
        "top5": lambda: topk_accuracy_metrics(5),
        "task_agnostic": lambda: [TaskAgnosticAccuracy()],
    }


def _reconstructed_accuracy() -> Sequence[PluginMetric]:
    """Accuracy of the head on codec-reconstructed features (CRUMB/REMIND; nothing for other methods)."""
    from streamcl.plugins.latent_replay import reconstructed_accuracy_metrics

    return reconstructed_accuracy_metrics()


# evaluation.metrics names: Avalanche's groups; replay_bytes, reconstructed_accuracy, top5 (top-5 accuracy per
# experience and stream, Topk_5_Acc_*) and task_agnostic (TaskAgnostic_Acc_Stream: a multi-head model without
# task labels) are streamcl's.
METRIC_NAMES = ("accuracy", "loss", "forgetting", "bwt", "timing", "ram", "cpu", "replay_bytes",
                "reconstructed_accuracy", "top5", "task_agnostic")
LOGGER_NAMES = ("tensorboard", "csv", "progress", "text", "wandb")
# Loggers that need an optional dependency: name -> (module, pip extra); the config refuses them when it is missing.
LOGGER_EXTRAS = {"wandb": ("wandb", "wandb")}
DEFAULT_METRICS = ["accuracy", "loss", "forgetting", "bwt", "timing", "ram", "replay_bytes"]
DEFAULT_LOGGERS = ["tensorboard", "csv", "progress"]


def build_evaluator(metrics: Sequence[str]):
    """EvaluationPlugin with the named metric groups and no loggers yet (see :func:`build_loggers`).

    The runner attaches the loggers only once the whole strategy has been built, so a
    configuration error found while building writes nothing into the run folder.
    """
    import warnings

    from avalanche.training.plugins import EvaluationPlugin

    factories = _metric_factories()
    plugin_metrics: List[PluginMetric] = []
    for name in metrics:
        made = factories[name]()
        plugin_metrics.extend(made if isinstance(made, (list, tuple)) else [made])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No loggers specified")
        return EvaluationPlugin(*plugin_metrics, loggers=[], strict_checks=False)


def build_loggers(loggers: Sequence[str], run_dir: Path, *, config: Dict[str, Any] | None = None) -> List[Any]:
    """Avalanche loggers by name, writing into ``run_dir`` (``runs/<experiment>/<cell>/run<k>``).

    ``csv`` is streamcl's own ``metrics.csv`` (written by the runner, resume-safe;
    Avalanche's CSVLogger truncates its files on reload), so it adds no logger here.
    ``wandb``: see :func:`streamcl.wandb_logger.wandb_logger` (``config``: the cell's
    config, shown as the W&B run's hyperparameters).
    """
    from avalanche.logging import InteractiveLogger, TensorboardLogger, TextLogger

    out: List[Any] = []
    if "tensorboard" in loggers:
        out.append(TensorboardLogger(tb_log_dir=str(run_dir / "tb")))
    if "progress" in loggers:
        out.append(InteractiveLogger())
    if "text" in loggers:
        out.append(TextLogger(open(run_dir / "log.txt", "a")))
    if "wandb" in loggers:
        from streamcl.wandb_logger import wandb_logger

        out.append(wandb_logger(run_dir, config))
    return out


__all__ = ["ReplayBytes", "TaskAgnosticAccuracy", "stored_bytes", "reserved_bytes", "build_evaluator", "build_loggers",
           "raw_item_nbytes", "task_agnostic_hits", "topk_accuracy_metrics", "topk_hits"]
