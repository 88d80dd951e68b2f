"""WA (weight aligning; Zhao et al., "Maintaining Discrimination and Fairness in Class Incremental Learning", CVPR 2020).

Class-incremental training with three parts, each a method of :class:`WA` so that
other plugins' callbacks and penalties still reach every step:

1. loss ``(1 - l) CE + l KD`` with ``l = n_old / n_seen``: cross-entropy on every
   seen class plus knowledge distillation (temperature 2) of the old classes'
   logits against a frozen copy of the model from the end of the previous
   experience (:meth:`WA.criterion`); by default divided by ``1 - l``
   (``loss_scale``, below), on batches of the experience's data shuffled together
   with every exemplar (``exemplar_sampling``, below);
2. optional weight clipping ``W >= 0`` of the classifier after every optimiser
   step (:meth:`WA.optimizer_step`);
3. after each experience t > 0, weight aligning: ``gamma = mean ||w_old|| /
   mean ||w_new||`` over classifier rows and the new classes' rows are
   multiplied by gamma (:func:`align_weights`), then the exemplar memory is
   rebuilt by herding with the aligned model (:class:`HerdingMemory`).

The norm ratio ``mean ||w_new|| / mean ||w_old||`` before and after aligning is
published as ``WA_NormRatio_{Before,After}Align/train_phase/train_stream`` and
the share of test predictions falling on the newest classes (with the true
share next to it) as ``WA_NewClassPredShare`` / ``WA_NewClassTrueShare``
``/eval_phase/test_stream``, so runs show the bias WA removes in ``metrics.csv``
and TensorBoard.

The classifier's bias (``classifier_bias``). The paper writes the logits as
``W^T phi(x)``: the FC layer has no bias, and the preference for new classes is
read off the norms of W's rows alone. The reference runs behind
``experiments/wa`` (DER's code) build that classifier with ``use_bias: False``
and apply the alignment as ``gamma x`` the new classes' logits; PyCIL keeps a
trained bias (initialised to 0) and rescales the weight rows only. On a head
with a bias, the prior for the newest classes, which dominate each
experience's data, can settle in the bias instead of the row norms, and the new
rows can come out *smaller* than the old ones (gamma > 1): aligning then scales
the new classes up, the opposite of its purpose. So by default WA makes any head
bias-free, as in the paper and the reference runs:

- ``"zero"`` (default): the bias is set to 0 before each experience and after
  every optimiser step, so it never carries anything (heads without a bias are
  unaffected);
- ``"scale"``: the bias is trained and the new classes' entries are multiplied by
  gamma with their rows, i.e. the new logits are scaled by gamma as DER's
  post-processing does;
- ``"keep"``: the bias is trained and left alone (PyCIL).

Aligning presumes gamma < 1 (new rows larger). A bias-free head does not make that
true: on real digits (``perf/bench_wa_heads.py``: plain CNN, ``nn.Linear`` head, SGD,
200 exemplars, 20 epochs, 3 class orders) gamma was 1.05-1.38 at every alignment and
aligning anyway cut the seen classes' accuracy by 32 points on average (final 22.2 %
against 79.7 % unaligned); with Adam gamma fell below 1 at 5 alignments of 12, and
aligning there raised it by 16 points on average. So ``max_gamma`` (default 1.0) skips an
alignment whose gamma exceeds it: WA then only ever shrinks the new rows, which is what
the reference code does whenever its premise holds; ``max_gamma: null`` aligns at every
gamma, as the reference code does. The first gamma > 1 of a run is reported once, as a
warning and as ``WA_GammaAboveOne/train_phase/train_stream`` (the gamma) in ``metrics.csv``.

How the exemplars enter the batches and how the loss is scaled (issue #27;
``perf/bench_wa_vs_replay.py``). The paper, PyCIL and DER all concatenate the
exemplars to the new data in one shuffled loader (``exemplar_sampling: concat``,
the default); ``balanced`` instead puts a memory batch of ``mem_mb_size`` beside
every batch, as Avalanche's ``ReplayPlugin`` does. The paper and DER weight the loss
``(1 - l) CE + l KD`` (``loss_scale: paper``); PyCIL uses ``CE + 2 KD``. Under SGD the
``1 - l`` factor is a learning-rate cut that grows with the stream (x2 at the second
of 5 experiences of 2 classes, x5 at the last, x10 at the last of CIFAR-100 in 10
steps), which the references' 170 epochs per task absorb and a short budget does not:
on digits at 20 epochs (biased head, 3 orders) it left WA at 79.7 % against replay's
91.4 % with the same 200 exemplars, and ``loss_scale: ce`` brings it to 91.2 %.
``loss_scale: ce`` (default) divides the loss by ``1 - l``: the same minimiser and
CE:KD balance, with CE at the step size the optimiser was tuned for
(+11.5 points with SGD; +10.3 with Adam, which is invariant to a constant scale but
carries its running gradient scale across experiences, as Avalanche keeps the optimiser).
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Callable, Dict, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from avalanche.benchmarks.utils import AvalancheDataset
from avalanche.benchmarks.utils.data_loader import ReplayDataLoader
from avalanche.core import BasePlugin
from avalanche.evaluation.metric_results import MetricValue
from avalanche.models.dynamic_modules import MultiTaskModule
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.plugins.evaluation import default_evaluator
from avalanche.training.templates import SupervisedTemplate
from continuum.rehearsal.herding import herd_closest_to_barycenter
from torch import Tensor, nn
from torch.nn import CrossEntropyLoss
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from streamcl.errors import CheckpointError, ConfigError
from streamcl.metrics import raw_item_nbytes
from streamcl.models.classifiers import classifier_layer
from streamcl.plugins.latent_replay import MemoryBudget, parse_memory
from streamcl.registry import register_strategy

__all__ = [
    "WA",
    "HerdingMemory",
    "kd_weight",
    "kd_loss",
    "weight_norm_ratio",
    "align_weights",
    "align_gamma",
    "herding_order",
    "BIAS_MODES",
    "SAMPLING_MODES",
    "LOSS_SCALES",
]

MemoryArg = Union[int, str, Dict[str, Any]]
BIAS_MODES = ("zero", "scale", "keep")  # what WA does with the classifier's bias (module docstring)
SAMPLING_MODES = ("concat", "balanced")  # how exemplars enter the training batches (WA's docstring)
LOSS_SCALES = ("ce", "paper")  # how WA's loss is scaled (WA's docstring)


# ------------------------------------------------------------------------------------- pieces


def kd_weight(n_old: int, n_seen: int) -> float:
    """WA's loss weight ``l = n_old / n_seen`` (0 on the first experience: plain cross-entropy)."""
    if n_seen <= 0:
        return 0.0
    return float(n_old) / float(n_seen)


def kd_loss(student: Tensor, teacher: Tensor, temperature: float = 2.0, t_squared: bool = False) -> Tensor:
    """KL(softmax(teacher / T) || softmax(student / T)), batch mean; times T**2 when ``t_squared``.

    Both arguments are the logits of the *old* classes only.
    """
    t = float(temperature)
    loss = F.kl_div(F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1),
                    reduction="batchmean", log_target=True)
    return loss * (t * t) if t_squared else loss


def _mean_row_norm(weight: Tensor, rows: Sequence[int]) -> Tensor:
    return weight[list(rows)].norm(p=2, dim=1).mean()


def weight_norm_ratio(weight: Tensor, old_classes: Sequence[int], new_classes: Sequence[int]) -> float:
    """``mean ||w_new|| / mean ||w_old||`` over classifier rows (> 1: new classes have larger weights)."""
    return float(_mean_row_norm(weight, new_classes) / _mean_row_norm(weight, old_classes))


def align_gamma(weight: Tensor, old_classes: Sequence[int], new_classes: Sequence[int]) -> float:
    """WA's ``gamma = mean ||w_old|| / mean ||w_new||`` over classifier rows (< 1 when the new rows are larger)."""
    return float(_mean_row_norm(weight, old_classes) / _mean_row_norm(weight, new_classes))


@torch.no_grad()
def align_weights(weight: Tensor, old_classes: Sequence[int], new_classes: Sequence[int],
                  bias: Optional[Tensor] = None) -> float:
    """Multiply the new classes' rows of ``weight`` in place by ``gamma = mean||w_old|| / mean||w_new||``.

    Only the rows listed in ``new_classes`` change; with ``bias`` their bias entries are
    multiplied by gamma too, which scales the new classes' logits by gamma. Returns gamma.
    """
    gamma = align_gamma(weight, old_classes, new_classes)
    weight[list(new_classes)] *= gamma
    if bias is not None:
        bias[list(new_classes)] *= gamma
    return gamma


def herding_order(features: np.ndarray, labels: np.ndarray, per_class: int) -> Dict[int, np.ndarray]:
    """Positions of the ``per_class`` herding exemplars of every class in ``labels``, in herding order.

    Uses continuum's ``herd_closest_to_barycenter`` (iCaRL's herding on
    L2-normalised features, the selection WA and PyCIL use) rather than Avalanche's
    ``HerdingSelectionStrategy``: continuum normalises the features as the method
    prescribes, stops after ``per_class`` picks instead of ordering the whole
    class, and works on features we extract ourselves (Avalanche's needs a
    layer name to hook). Its greedy order means any prefix is the herding
    selection of that size, which is how old classes are shrunk.
    """
    labels = np.asarray(labels, dtype=np.int64)
    if per_class <= 0 or len(labels) == 0:
        return {int(c): np.empty(0, np.int64) for c in np.unique(labels)}
    positions = np.arange(len(labels))
    picked, picked_y, _ = herd_closest_to_barycenter(
        positions, labels, np.zeros(len(labels), np.int64), np.asarray(features, dtype=np.float64), per_class
    )
    return {int(c): picked[picked_y == c].astype(np.int64) for c in np.unique(labels)}


def _feature_fn(model: nn.Module) -> Callable[[Tensor], Tensor]:
    """``model.features`` when it has one, else the input of its final linear layer (captured by a hook)."""
    features = getattr(model, "features", None)
    if callable(features) and not isinstance(features, nn.Module):
        return features
    layer = classifier_layer(model)

    def run(x: Tensor) -> Tensor:
        box: List[Tensor] = []
        handle = layer.register_forward_pre_hook(lambda m, inp: box.append(inp[0]))
        try:
            model(x)
        finally:
            handle.remove()
        return box[0]

    return run


@torch.no_grad()
def extract_features(model: nn.Module, dataset: AvalancheDataset, device: torch.device, batch_size: int,
                     num_workers: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """(features, labels) of every sample of ``dataset`` (eval transforms, model in eval mode)."""
    was_training = model.training
    model.eval()
    fn = _feature_fn(model)
    feats, labels = [], []
    collate = getattr(dataset, "collate_fn", None)
    try:
        for batch in DataLoader(dataset.eval(), batch_size=batch_size, shuffle=False, collate_fn=collate,
                                num_workers=num_workers):
            feats.append(fn(batch[0].to(device)).flatten(1).float().cpu())
            labels.append(torch.as_tensor(batch[1]).cpu())
    finally:
        model.train(was_training)
    return torch.cat(feats).numpy(), torch.cat(labels).numpy().astype(np.int64)


class HerdingMemory:
    """Class-balanced exemplar memory chosen by herding, sized in exemplars or bytes.

    After an experience, every seen class gets ``capacity // n_seen`` exemplars
    (the remainder stays free, as in iCaRL): old classes keep the first ones of
    their herding order, new classes are herded from the experience's data with
    the current model's features. A byte budget holds as many raw images as fit
    (an item is its input tensor's elements as uint8, as the replay plugin and
    the ``replay_bytes`` metric count).
    """

    def __init__(self, memory: MemoryArg = 2000):
        self.budget: MemoryBudget = parse_memory(memory)
        self.per_class: Dict[int, AvalancheDataset] = {}
        self.item_nbytes: Optional[int] = None

    def __len__(self) -> int:
        return sum(len(d) for d in self.per_class.values())

    def capacity(self) -> int:
        """Exemplars the budget holds (needs ``item_nbytes`` for a byte budget)."""
        if self.budget.items is not None:
            return int(self.budget.items)
        if not self.item_nbytes:
            return 0
        return self.budget.capacity(self.item_nbytes)

    def quota(self, n_classes: int) -> int:
        """Exemplars per class when ``n_classes`` classes share the memory."""
        return self.capacity() // n_classes if n_classes > 0 else 0

    def update(self, dataset: AvalancheDataset, new_classes: Sequence[int], seen_classes: Sequence[int],
               features: np.ndarray, labels: np.ndarray) -> None:
        """Shrink old classes to the new quota and herd ``new_classes`` from ``dataset`` (``features``/``labels`` per sample)."""
        if self.item_nbytes is None and len(dataset):
            self.item_nbytes = raw_item_nbytes(dataset.eval())
        m = self.quota(len(seen_classes))
        for c in list(self.per_class):
            if c not in seen_classes:
                continue
            if len(self.per_class[c]) > m:
                self.per_class[c] = self.per_class[c].subset(range(m))
        new = [int(c) for c in new_classes]
        keep = np.isin(labels, new)
        pos = np.flatnonzero(keep)
        order = herding_order(features[pos], labels[pos], m)
        for c in new:
            idx = pos[order.get(c, np.empty(0, np.int64))]
            self.per_class[c] = dataset.subset(idx.tolist()).train()

    def dataset(self) -> Optional[AvalancheDataset]:
        """All exemplars (train transforms), classes in increasing order; None when empty."""
        parts = [self.per_class[c] for c in sorted(self.per_class) if len(self.per_class[c])]
        if not parts:
            return None
        out = parts[0]
        for p in parts[1:]:
            out = out.concat(p)
        return out.train()

    def nbytes(self) -> int:
        """Raw bytes of the stored exemplars (uint8 images)."""
        return len(self) * int(self.item_nbytes or 0)

    def sample_ids(self) -> Dict[int, Tensor]:
        """Class -> ``sample_id`` of its exemplars in herding order (what a checkpoint stores)."""
        out = {}
        for c, ds in self.per_class.items():
            try:
                ids = list(ds.sample_id)
            except AttributeError:
                raise CheckpointError(
                    "WA's memory holds samples without a `sample_id`; build the benchmark with streamcl "
                    "(its datasets carry sample ids) to checkpoint it"
                ) from None
            out[int(c)] = torch.as_tensor(ids, dtype=torch.int64)
        return out


# ------------------------------------------------------------------------------------- strategy


@register_strategy("wa")
class WA(SupervisedTemplate):
    """WA (weight aligning): KD on old logits + exemplar replay + classifier norm alignment after each experience.

    Loss ``(1 - l) * CE(all seen classes) + l * KD(old classes)``, ``l = n_old / n_seen``
    (by default divided by ``1 - l``: ``loss_scale``),
    KD at ``temperature`` (2) against a frozen copy of the model from the end of the
    previous experience. After each experience t > 0 the new classes' classifier rows
    are multiplied by ``gamma = mean ||w_old|| / mean ||w_new||`` (``align: false``
    skips it: the ablation), then the exemplar memory is rebuilt by herding.

    Switch defaults (the reference numbers in ``experiments/wa`` come from DER's runs):

    - ``clip_weights=True``: classifier weights are clamped to ``>= 0`` after every
      optimiser step, DER's variant (PyCIL omits it). With non-negative weights
      on non-negative (post-ReLU) features, the row norms compare class scores
      directly, which is what the alignment equalises.
    - ``kd_t_squared=False``: the KD term is not multiplied by ``T**2``. DER's and
      PyCIL's WA weight KD by ``l`` alone; ``T**2`` (Hinton's rescaling that keeps
      gradients comparable across temperatures) matters when T is tuned, and
      would here change the CE/KD balance that ``l`` sets.

    :param memory: exemplar budget: ``2000`` (exemplars), ``{items: 2000}`` or
        ``{bytes: 6.1MB}`` (raw uint8 images), spread evenly over seen classes.
    :param temperature: KD temperature (2).
    :param align: apply weight aligning after each experience t > 0.
    :param herding_mb_size: batch size of the feature pass that herds exemplars
        (default: ``eval_mb_size``).
    :param classifier_bias: ``"zero"`` (a bias-free head, as in the paper and the
        reference runs), ``"scale"`` or ``"keep"``: see the module docstring.
    :param max_gamma: skip an alignment whose gamma exceeds this: 1.0 aligns only when the
        new rows are the larger ones, WA's premise; ``None`` always aligns, as the reference code.
    :param exemplar_sampling: ``"concat"`` (default: the exemplars join the experience's data
        in one shuffled loader, as the paper, PyCIL and DER) or ``"balanced"`` (Avalanche's
        ``ReplayDataLoader``: ``mem_mb_size`` exemplars beside every ``train_mb_size`` new
        images, an epoch being one pass over the new data). On digits ``balanced`` was the
        worse of the two for WA in every measured setting (module docstring, docs).
    :param mem_mb_size: exemplars per batch with ``"balanced"`` (default ``train_mb_size``).
    :param loss_scale: ``"ce"`` (default: ``CE + l / (1 - l) KD``, the paper's loss divided
        by ``1 - l`` so that CE keeps the optimiser's step size on every experience) or
        ``"paper"`` (``(1 - l) CE + l KD`` as the paper and DER; use it to reproduce their
        runs, whose long schedules absorb the shrinking CE weight).

    The model needs a linear classifier with one row per class id
    (``streamcl.models`` ``resnet32`` / ``resnet18`` with ``head: incremental``, or
    any model whose final ``nn.Linear`` is indexed by class id) and, for
    herding, ``model.features(x)`` (else the classifier's input is used).
    :meth:`state_dict` / :meth:`load_state_dict` carry the old model and the
    exemplars' sample ids for checkpoints. Alignment and herding run once per
    experience: use whole experiences, not ``split_online_stream`` mini-experiences.
    """

    config_checks = {"memory": parse_memory}

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: Optimizer,
        criterion: Optional[nn.Module] = None,
        train_mb_size: int = 128,
        train_epochs: int = 1,
        eval_mb_size: Optional[int] = 128,
        device: Union[str, torch.device] = "cpu",
        plugins: Optional[Sequence[BasePlugin]] = None,
        evaluator: Union[EvaluationPlugin, Callable[[], EvaluationPlugin]] = default_evaluator,
        eval_every: int = -1,
        peval_mode: str = "epoch",
        memory: MemoryArg = 2000,
        temperature: float = 2.0,
        kd_t_squared: bool = False,
        clip_weights: bool = True,
        align: bool = True,
        herding_mb_size: Optional[int] = None,
        classifier_bias: Literal["zero", "scale", "keep"] = "zero",
        max_gamma: Optional[float] = 1.0,
        exemplar_sampling: Literal["concat", "balanced"] = "concat",
        mem_mb_size: Optional[int] = None,
        loss_scale: Literal["ce", "paper"] = "ce",
    ):
        if temperature <= 0:
            raise ConfigError(f"must be > 0, got {temperature}", key="strategy.temperature")
        if classifier_bias not in BIAS_MODES:
            raise ConfigError(f"must be one of {', '.join(BIAS_MODES)}, got {classifier_bias!r}",
                              key="strategy.classifier_bias")
        if max_gamma is not None and not max_gamma > 0:
            raise ConfigError(f"must be > 0 (or null: always align), got {max_gamma}", key="strategy.max_gamma")
        if exemplar_sampling not in SAMPLING_MODES:
            raise ConfigError(f"must be one of {', '.join(SAMPLING_MODES)}, got {exemplar_sampling!r}",
                              key="strategy.exemplar_sampling")
        if loss_scale not in LOSS_SCALES:
            raise ConfigError(f"must be one of {', '.join(LOSS_SCALES)}, got {loss_scale!r}",
                              key="strategy.loss_scale")
        if mem_mb_size is not None and mem_mb_size < 1:
            raise ConfigError(f"must be >= 1 (or null: train_mb_size), got {mem_mb_size}",
                              key="strategy.mem_mb_size")
        if isinstance(model, MultiTaskModule):
            raise ConfigError("WA is class-incremental and needs one classifier over all classes; use a single-head "
                              "model (head: incremental or fixed), not one head per task", key="model.head")
        super().__init__(
            model=model,
            optimizer=optimizer,
            criterion=criterion if criterion is not None else CrossEntropyLoss(),
            train_mb_size=train_mb_size,
            train_epochs=train_epochs,
            eval_mb_size=eval_mb_size,
            device=device,
            plugins=plugins,
            evaluator=evaluator,
            eval_every=eval_every,
            peval_mode=peval_mode,
        )
        self.memory = HerdingMemory(memory)
        self.temperature = float(temperature)
        self.kd_t_squared = bool(kd_t_squared)
        self.clip_weights = bool(clip_weights)
        self.align = bool(align)
        self.herding_mb_size = herding_mb_size
        self.classifier_bias = classifier_bias
        self.max_gamma = None if max_gamma is None else float(max_gamma)
        self.exemplar_sampling = exemplar_sampling
        self.mem_mb_size = mem_mb_size
        self.loss_scale = loss_scale
        self.gamma_warned = False  # the gamma > 1 warning is given once per run
        self.old_model: Optional[nn.Module] = None
        self.seen_classes: List[int] = []  # every class trained so far
        self.old_classes: List[int] = []  # classes seen before the current/last experience
        self.new_classes: List[int] = []  # classes the current/last experience added
        self.last_gamma: Optional[float] = None
        self._pred_counts = np.zeros(3, dtype=np.int64)  # [n, predicted newest, truly newest]

    # -- what the loss uses ---------------------------------------------------------------

    @property
    def kd_lambda(self) -> float:
        """``l = n_old / n_seen`` of the current experience."""
        return kd_weight(len(self.old_classes), len(self.old_classes) + len(self.new_classes))

    @property
    def classifier(self) -> nn.Linear:
        """The model's final linear layer (rows = class ids)."""
        return classifier_layer(self.model)

    # -- training loop ----------------------------------------------------------------------

    def _before_training_exp(self, **kwargs: Any) -> None:
        if self.clock.train_exp_counter > 0 and self.old_model is None and self.seen_classes == []:
            raise CheckpointError(
                "WA resumed after experience "
                f"{self.clock.train_exp_counter} without its state (old model, exemplars): restore it with "
                "WA.load_state_dict(...) next to the model and optimiser, or rerun with --restart"
            )
        curr = sorted(int(c) for c in self.experience.classes_in_this_experience)
        self.old_classes = list(self.seen_classes)
        self.new_classes = [c for c in curr if c not in set(self.old_classes)]
        self.seen_classes = sorted(set(self.old_classes) | set(curr))
        super()._before_training_exp(**kwargs)  # the head has grown to this experience's classes here
        self._constrain_classifier(clip=False)

    def train_dataset_adaptation(self, **kwargs: Any) -> None:
        """The experience's data, plus every exemplar with ``exemplar_sampling="concat"`` (train transforms)."""
        super().train_dataset_adaptation(**kwargs)
        mem = self.memory.dataset()
        if mem is not None and self.exemplar_sampling == "concat":
            self.adapted_dataset = self.adapted_dataset.concat(mem).train()

    def make_train_dataloader(self, num_workers: int = 0, shuffle: bool = True, pin_memory: Optional[bool] = None,
                              persistent_workers: bool = False, drop_last: bool = False, **kwargs: Any) -> None:
        """With ``exemplar_sampling="balanced"`` and exemplars in memory: Avalanche's ``ReplayDataLoader``.

        Every mini-batch is then ``train_mb_size`` images of the experience next to
        ``mem_mb_size`` (default ``train_mb_size``) exemplars drawn from the memory (cycled
        as needed), the batches Avalanche's ``ReplayPlugin`` builds; an epoch is one pass
        over the experience's data. Otherwise (first experience, empty memory, ``"concat"``)
        Avalanche's own loader over the adapted dataset.
        """
        mem = self.memory.dataset()
        if self.exemplar_sampling != "balanced" or mem is None:
            super().make_train_dataloader(num_workers=num_workers, shuffle=shuffle, pin_memory=pin_memory,
                                          persistent_workers=persistent_workers, drop_last=drop_last, **kwargs)
            return
        extra: Dict[str, Any] = {"persistent_workers": persistent_workers} if num_workers > 0 else {}
        self.dataloader = ReplayDataLoader(
            self.adapted_dataset, mem, oversample_small_tasks=True, batch_size=self.train_mb_size,
            batch_size_mem=self.mem_mb_size or self.train_mb_size, num_workers=num_workers, shuffle=shuffle,
            drop_last=drop_last, **extra)

    def criterion(self) -> Tensor:
        """WA's loss while training with an old model; plain CE otherwise.

        ``loss_scale="paper"``: ``(1 - l) CE + l KD(old classes)``; ``"ce"`` (default): the
        same divided by ``1 - l``, i.e. ``CE + l / (1 - l) KD`` (same CE:KD balance, CE at full
        weight; see the class docstring). With no new class (``l = 1``) both are ``KD``.
        """
        ce = self._criterion(self.mb_output, self.mb_y)
        if not self.is_training or self.old_model is None or not self.old_classes:
            return ce
        with torch.no_grad():
            teacher = self.old_model(self.mb_x)
        old = torch.as_tensor(self.old_classes, device=self.mb_output.device)
        kd = kd_loss(self.mb_output[:, old], teacher[:, old], self.temperature, self.kd_t_squared)
        lam = self.kd_lambda
        if self.loss_scale == "ce" and lam < 1.0:
            return ce + (lam / (1.0 - lam)) * kd
        return (1.0 - lam) * ce + lam * kd

    def optimizer_step(self) -> None:
        """The optimiser step, then ``W >= 0`` when ``clip_weights`` and bias 0 when ``classifier_bias="zero"``."""
        super().optimizer_step()
        self._constrain_classifier(clip=self.clip_weights)

    @torch.no_grad()
    def _constrain_classifier(self, clip: bool) -> None:
        if not clip and self.classifier_bias != "zero":
            return  # nothing to constrain: skip finding the layer on every step
        layer = self.classifier
        if clip:
            layer.weight.clamp_(min=0.0)
        if self.classifier_bias == "zero" and layer.bias is not None:
            layer.bias.zero_()

    def _after_training_exp(self, **kwargs: Any) -> None:
        self._align_and_log()
        self._rebuild_memory(num_workers=int(kwargs.get("num_workers", 0) or 0))
        self.old_model = self._frozen_copy(self.model)
        super()._after_training_exp(**kwargs)

    def _align_and_log(self) -> None:
        """Weight aligning after experiences t > 0 (when ``align``), logging the norm ratio around it.

        ``last_gamma`` is the gamma applied, ``None`` when nothing was aligned.
        """
        self.last_gamma = None
        if not self.old_classes or not self.new_classes:
            return
        layer = self.classifier
        before = weight_norm_ratio(layer.weight.detach(), self.old_classes, self.new_classes)
        gamma = align_gamma(layer.weight.detach(), self.old_classes, self.new_classes)
        if gamma > 1.0 and not self.gamma_warned:
            self.gamma_warned = True
            skip = self.align and self.max_gamma is not None and gamma > self.max_gamma
            warnings.warn(
                f"WA: gamma = {gamma:.3f} > 1 after experience {self.clock.train_exp_counter}: the new classes' "
                "classifier rows are smaller than the old ones, against WA's premise; "
                + (f"not aligned (max_gamma {self.max_gamma:g})" if skip
                   else "aligning scales them up" if self.align else "not aligned (align: false)")
                + " (said once per run; WA_GammaAboveOne in metrics.csv)", stacklevel=2)
            self._publish("WA_GammaAboveOne/train_phase/train_stream", gamma)
        if self.align and (self.max_gamma is None or gamma <= self.max_gamma):
            bias = layer.bias.data if self.classifier_bias == "scale" and layer.bias is not None else None
            self.last_gamma = align_weights(layer.weight.data, self.old_classes, self.new_classes, bias=bias)
        after = weight_norm_ratio(layer.weight.detach(), self.old_classes, self.new_classes)
        self._publish("WA_NormRatio_BeforeAlign/train_phase/train_stream", before)
        self._publish("WA_NormRatio_AfterAlign/train_phase/train_stream", after)
        if self.last_gamma is not None:
            self._publish("WA_Gamma/train_phase/train_stream", self.last_gamma)

    def _rebuild_memory(self, num_workers: int = 0) -> None:
        """Herd the new classes' exemplars with the (aligned) model and shrink the old classes."""
        if not self.new_classes or self.memory.budget == MemoryBudget(items=0):
            return
        ds = self.experience.dataset
        bs = self.herding_mb_size or self.eval_mb_size or self.train_mb_size
        feats, labels = extract_features(self.model, ds, self.device, bs, num_workers)
        self.memory.update(ds, self.new_classes, self.seen_classes, feats, labels)

    @staticmethod
    def _frozen_copy(model: nn.Module) -> nn.Module:
        old = copy.deepcopy(model)
        old.eval()
        for p in old.parameters():
            p.requires_grad_(False)
        return old

    # -- evaluation: how biased are predictions towards the newest classes? ------------------

    def _before_eval(self, **kwargs: Any) -> None:
        self._pred_counts[:] = 0
        super()._before_eval(**kwargs)

    def _after_eval_iteration(self, **kwargs: Any) -> None:
        if self.new_classes and self.old_classes:
            newest = torch.as_tensor(self.new_classes, device=self.mb_y.device)
            pred = self.mb_output.argmax(dim=1)
            self._pred_counts += np.array([len(pred), int(torch.isin(pred, newest).sum()),
                                           int(torch.isin(self.mb_y, newest).sum())])
        super()._after_eval_iteration(**kwargs)

    def _after_eval(self, **kwargs: Any) -> None:
        n, pred_new, true_new = (int(v) for v in self._pred_counts)
        if n:
            self._publish("WA_NewClassPredShare/eval_phase/test_stream", pred_new / n)
            self._publish("WA_NewClassTrueShare/eval_phase/test_stream", true_new / n)
        super()._after_eval(**kwargs)

    def _publish(self, name: str, value: float) -> None:
        """Hand a scalar to the evaluator (metrics.csv, TensorBoard) at the current training step."""
        ev = self.evaluator
        if ev is not None and hasattr(ev, "publish_metric_value"):
            ev.publish_metric_value(MetricValue(self, name, float(value), int(self.clock.train_iterations)))

    # -- memory accounting and checkpoints ---------------------------------------------------

    def replay_nbytes(self) -> int:
        """Bytes of raw exemplar images held (for the ``replay_bytes`` metric)."""
        return self.memory.nbytes()

    def state_dict(self) -> Dict[str, Any]:
        """WA's own state as tensors and plain values: class sets, old model, exemplar sample ids."""
        ids = self.memory.sample_ids()
        return {
            "seen_classes": list(self.seen_classes),
            "old_classes": list(self.old_classes),
            "new_classes": list(self.new_classes),
            "old_model": None if self.old_model is None else {
                k: v.detach().cpu().clone() for k, v in self.old_model.state_dict().items()},
            "memory_classes": sorted(ids),
            "memory_ids": [ids[c] for c in sorted(ids)],
            "item_nbytes": self.memory.item_nbytes,
            "gamma_warned": self.gamma_warned,
        }

    def load_state_dict(self, state: Dict[str, Any],
                        dataset_from_ids: Optional[Callable[[Tensor], AvalancheDataset]] = None) -> None:
        """Restore :meth:`state_dict`'s output; ``dataset_from_ids`` rebuilds exemplars from sample ids.

        Call it after the model's own state is loaded: the old model is rebuilt
        as a copy of the model (heads resize to the saved shape) with the saved
        weights.
        """
        self.seen_classes = [int(c) for c in state["seen_classes"]]
        self.old_classes = [int(c) for c in state["old_classes"]]
        self.new_classes = [int(c) for c in state["new_classes"]]
        self.gamma_warned = bool(state.get("gamma_warned", False))
        if state.get("old_model") is None:
            self.old_model = None
        else:
            old = copy.deepcopy(self.model)
            old.load_state_dict(state["old_model"])
            self.old_model = self._frozen_copy(old)
        self.memory.item_nbytes = None if state.get("item_nbytes") is None else int(state["item_nbytes"])
        self.memory.per_class = {}
        classes, ids = list(state.get("memory_classes", [])), list(state.get("memory_ids", []))
        if classes and dataset_from_ids is None:
            raise CheckpointError("WA's checkpoint holds exemplars: pass dataset_from_ids to rebuild them")
        for c, cid in zip(classes, ids):
            self.memory.per_class[int(c)] = dataset_from_ids(torch.as_tensor(cid, dtype=torch.int64)).train()
