"""What a user needs to see a compressed replay going wrong: codec fidelity and learning of each experience.

Latent replay trains the head on what the codec reconstructs; when the codec loses much of
the features (a codebook that fits the base set's features but not the stream's, or that was
never fitted for fidelity) the head learns the new classes on reconstructions that look like
the replayed ones, and the replay step then suppresses them (issue #26). These helpers measure
that as it happens, per experience, and publish it through Avalanche's evaluation plugin
(``strategy.evaluator.publish_metric_value``), so the values land in ``metrics.csv``, TensorBoard
and any other logger like the metrics' own:

- ``CodecError_New``: relative squared reconstruction error ``sum ||f - rec(f)||^2 / sum ||f||^2``
  of the experience's training batches (the new data), under the codec of each step;
- ``CodecError_Stored``: the same for the classes held in the buffer from earlier experiences,
  measured when their items were encoded (the stored items are a subset of those);
- ``CodecError_Base``: the reference: the base set's error recorded by the pretraining, else the
  first experience's;
- ``Top1_Acc_JustTrained``: accuracy, at each evaluation, on the test items of the classes of the
  experience trained last (a replay step that suppresses new classes shows here first).

One :class:`UserWarning` is raised, once, when the new data's error exceeds ``WARN_RATIO`` times
the reference (and the reference by ``WARN_MIN_GAP``): the codec fits the stream much worse than
the base set.
"""

from __future__ import annotations

import warnings
from typing import Any, Dict, Iterable, List, Optional, Set, Tuple

import torch
from torch import Tensor

__all__ = ["CodecDiagnostics", "JustTrainedAccuracy", "publish", "WARN_RATIO", "WARN_MIN_GAP"]

WARN_RATIO = 2.0
WARN_MIN_GAP = 0.05


def publish(plugin: Any, strategy: Any, name: str, value: float) -> None:
    """Publish one scalar through the strategy's evaluation plugin (metrics.csv, TensorBoard ...).

    Step = ``strategy.clock.train_iterations``, as Avalanche's own metrics. A strategy
    without an evaluator (a bare test harness) publishes nothing.
    """
    evaluator = getattr(strategy, "evaluator", None)
    if evaluator is None or not hasattr(evaluator, "publish_metric_value"):
        return
    from avalanche.evaluation.metric_results import MetricValue

    evaluator.publish_metric_value(MetricValue(plugin, name, float(value), int(strategy.clock.train_iterations)))


class CodecDiagnostics:
    """Per-class sums of squared reconstruction error and squared feature norm, over training batches.

    :meth:`update` is called with each training batch's features, their reconstruction and labels;
    :meth:`end_experience` returns the experience's values and starts the next one.
    """

    def __init__(self) -> None:
        self.per_class: Dict[int, Tuple[float, float]] = {}  # class -> (sum err^2, sum f^2), when encoded
        self._new: List[float] = [0.0, 0.0]
        self.reference: Optional[float] = None  # the base set's error (pretraining) or the first experience's
        self.warned = False

    @torch.no_grad()
    def update(self, feats: Tensor, rec: Tensor, labels: Tensor) -> None:
        f = feats.detach().float()
        err = (f - rec.detach().float()).pow(2).flatten(1).sum(1)
        nrm = f.pow(2).flatten(1).sum(1)
        # per-class sums on the device, then one transfer (no sync per class: this runs every iteration)
        classes, inverse = torch.unique(labels.to(err.device), return_inverse=True)
        sums = torch.zeros(2, len(classes), dtype=err.dtype, device=err.device)
        sums.index_add_(1, inverse, torch.stack([err, nrm]))
        for c, e_c, n_c in zip(classes.tolist(), *sums.tolist()):
            e, n = self.per_class.get(int(c), (0.0, 0.0))
            self.per_class[int(c)] = (e + e_c, n + n_c)
            self._new[0] += e_c
            self._new[1] += n_c

    def error_of(self, classes: Iterable[int]) -> Optional[float]:
        """Relative error over the given classes' encoded items (None when none was seen)."""
        e = n = 0.0
        for c in classes:
            if int(c) in self.per_class:
                e += self.per_class[int(c)][0]
                n += self.per_class[int(c)][1]
        return e / n if n > 0 else None

    def end_experience(self, new_classes: Set[int], stored_classes: Iterable[int]) -> Dict[str, float]:
        """``{"new": ..., "stored": ..., "base": ...}`` for the experience just trained (keys with a value only)."""
        out: Dict[str, float] = {}
        if self._new[1] > 0:
            out["new"] = self._new[0] / self._new[1]
        old = self.error_of(c for c in stored_classes if int(c) not in new_classes)
        if old is not None:
            out["stored"] = old
        if self.reference is None and "new" in out:
            self.reference = out["new"]
        if self.reference is not None:
            out["base"] = self.reference
        self._new = [0.0, 0.0]
        return out

    def check(self, values: Dict[str, float], where: str) -> Optional[str]:
        """The one warning (returned and issued) when the new data's error is far above the reference."""
        new, ref = values.get("new"), self.reference
        if self.warned or new is None or ref is None:
            return None
        if new > WARN_RATIO * ref and new - ref > WARN_MIN_GAP:
            self.warned = True
            msg = (f"{where}: the codebook reconstructs this stream's features with {100 * new:.1f} % relative "
                   f"error against {100 * ref:.1f} % on its base set: replayed items and new items will look "
                   "alike to the head; refit the codebook on features like the stream's (pretrain on a closer "
                   "base set, or init: kmeans without a pretrained codebook)")
            warnings.warn(msg, UserWarning, stacklevel=3)
            return msg
        return None

    def state_dict(self) -> Dict[str, Any]:
        return {"per_class": {int(c): [float(e), float(n)] for c, (e, n) in self.per_class.items()},
                "reference": self.reference, "warned": bool(self.warned)}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.per_class = {int(c): (float(v[0]), float(v[1])) for c, v in dict(state.get("per_class", {})).items()}
        ref = state.get("reference")
        self.reference = None if ref is None else float(ref)
        self.warned = bool(state.get("warned", False))


class JustTrainedAccuracy:
    """Accuracy on the test items of the classes trained last, counted over one evaluation call."""

    def __init__(self) -> None:
        self.classes: List[int] = []
        self.hits = 0
        self.total = 0

    def reset(self) -> None:
        self.hits = self.total = 0

    @torch.no_grad()
    def update(self, logits: Tensor, labels: Tensor) -> None:
        if not self.classes:
            return
        y = labels.detach()
        m = torch.isin(y, torch.as_tensor(self.classes, device=y.device))
        if bool(m.any()):
            self.hits += int((logits.detach()[m].argmax(1) == y[m]).sum())
            self.total += int(m.sum())

    def result(self) -> Optional[float]:
        return self.hits / self.total if self.total else None
