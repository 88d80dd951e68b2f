"""The extra metric of latent replay: accuracy of the path the evaluation does not use."""

from __future__ import annotations

from typing import Any, List, Literal, Optional

from avalanche.evaluation.metrics.accuracy import AccuracyPluginMetric

from streamcl.plugins.latent_replay.plugin import LatentReplayPlugin

__all__ = ["find_latent_replay_plugin", "ReconstructedAccuracy", "reconstructed_accuracy_metrics"]


# =====================================================================================
def find_latent_replay_plugin(strategy: Any) -> Optional[LatentReplayPlugin]:
    for p in getattr(strategy, "plugins", []) or []:
        if isinstance(p, LatentReplayPlugin):
            return p
    return None


class ReconstructedAccuracy(AccuracyPluginMetric):
    """Accuracy of ``head(decode(encode(trunk(x))))`` at evaluation, per experience or per stream.

    Needs a :class:`LatentReplayPlugin` (CRUMB/REMIND) among the strategy's
    plugins; reports nothing otherwise. Names: ``Top1_RecAcc_Exp`` /
    ``Top1_RecAcc_Stream``. Costs one extra head forward per eval mini-batch
    (the trunk features are captured from the regular eval forward).
    """

    def __init__(self, level: Literal["experience", "stream"] = "experience"):
        super().__init__(reset_at=level, emit_at=level, mode="eval")
        self.level = level

    def update(self, strategy: Any) -> None:
        plugin = find_latent_replay_plugin(strategy)
        if plugin is None:
            return
        logits = plugin.reconstructed_logits(strategy)
        if logits is None:
            return
        self._metric.update(logits, strategy.mb_y)

    def __str__(self) -> str:
        return "Top1_RecAcc_Exp" if self.level == "experience" else "Top1_RecAcc_Stream"


def reconstructed_accuracy_metrics(*, experience: bool = True, stream: bool = True) -> List[Any]:
    """Metrics for ``EvaluationPlugin``: accuracy on the reconstructed path (CRUMB's extra metric)."""
    out = []
    if experience:
        out.append(ReconstructedAccuracy("experience"))
    if stream:
        out.append(ReconstructedAccuracy("stream"))
    return out
