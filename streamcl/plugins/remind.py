"""REMIND (REplay using Memory INDexing) as an Avalanche plugin.

REMIND is :class:`~streamcl.plugins.latent_replay.LatentReplayPlugin` with a
faiss product quantiser (:class:`~streamcl.models.pq.PQCodec`) and these settings:

- **base initialisation** on the first experience (on an online stream, its mini-experiences
  from ``split_online_stream(..., access_task_boundaries=True)``: the base experience ends after
  as many of them as the splitter made, ``sub_stream_length``, or at its ``is_last_subexp``, or
  when one of another origin arrives; a stream that hides its boundaries is refused): the head (optionally the
  whole net, ``base_train_trunk``) trains normally on the direct path
  ``head(trunk(x))`` for ``base_epochs`` epochs; then the PQ is fitted on the
  spatial C-vectors of the base features and every base example is encoded
  into the buffer, which is capped to ``memory`` right away by evicting random
  items of the largest class (the authors' code never trimmed it);
- **streaming** (later experiences): every new example is encoded + decoded
  too; ``mode="per_sample"`` (the paper) makes one SGD step per new example on
  that example plus ``n_replay`` (50) replayed items drawn uniformly from the
  buffer; ``2 * n_replay`` codes are drawn, decoded, randomly resized-cropped
  and mixed up pairwise (``lam ~ Beta(0.1, 0.1)``) into ``n_replay`` items; the
  new example is then admitted to the buffer (largest-class eviction when
  full). ``mode="batched"`` does the same for the whole mini-batch in one step
  (B new + ``batched_replay`` mixed replays), for speed;
- **learning rate** ``lr_schedule="per_class"``: each class has its own
  step-decayed lr, ``max_lr * lr_gamma ** (n_samples_of_class // lr_step)``
  floored at ``min_lr`` (0.1 -> 0.001, x0.7017 every 100 samples), which
  starts again from ``max_lr`` for every new class. It is written to the
  optimiser's ``param_group["lr"]`` explicitly before each step (torch's
  chained schedulers broke the authors' scheduler-based restart).
  ``lr_schedule="constant"`` keeps the optimiser's lr (1e-3 in the CRUMB comparison);
- **evaluation** passes test features through encode/decode as well
  (``head(decode(encode(trunk(x))))``).

``mode="per_sample"``: REMIND's own training loop
--------------------------------------------------
Avalanche runs one ``forward -> criterion -> backward -> optimizer.step`` per
mini-batch; REMIND steps once per example. :func:`per_sample_training_epoch` is
that epoch, written as Avalanche's own loop with the inner loop added (as AR1
overrides ``training_epoch``), so every plugin's callbacks run at every step:

* per mini-batch, ``before_training_iteration``; then the model runs once on
  the mini-batch with the feature hook (the trunk, by far the most expensive
  part, computes the features once; they are encoded, and the logits of the
  mini-batch are ``mb_output`` for the training metrics);
* per example, a whole Avalanche step with ``mbatch`` = that example:
  ``zero_grad -> before_forward -> head(1 new + n_replay replayed items) ->
  after_forward -> REMIND's loss -> before_backward -> backward -> after_backward
  -> before_update -> optimizer.step -> after_update``. ``mb_output`` holds the new
  example's logits, so EWC, MAS and LwF add their terms to ``strategy.loss`` in
  ``before_backward`` as in any step; the example is admitted to the buffer after its step;
* ``after_training_iteration`` sees the mini-batch again (its logits and loss).

:class:`streamcl.strategies.REMIND` runs this epoch. On another strategy whose
``training_epoch`` is Avalanche's standard one (``Naive`` and the other
``SupervisedTemplate`` strategies), the plugin installs the same epoch on that
strategy instance for each streaming experience and removes it afterwards, so
``Naive(plugins=[REMINDPlugin()])`` trains exactly as ``REMIND(...)``; a strategy
with a training loop of its own gets an error (use ``mode="batched"`` there).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Dict, List, Literal, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from streamcl.errors import CheckpointError, ConfigError, StreamclError
from streamcl.models.pq import PQCodec
from streamcl.plugins.latent_replay import LatentReplayPlugin, mixup_loss, random_resized_crop_features
from streamcl.registry import register_plugin

__all__ = ["REMINDPlugin", "PerClassStepLR", "per_sample_training_epoch"]


class PerClassStepLR:
    """REMIND's per-class learning rate, applied explicitly to an optimiser.

    ``lr(c) = max(min_lr, max_lr * gamma ** (count[c] // step_size))`` where
    ``count[c]`` is the number of streaming samples of class ``c`` trained so
    far. A class never seen starts at ``max_lr`` (the restart); a class seen
    again resumes its own decayed lr (as the authors' per-class schedulers do).
    """

    def __init__(
        self, max_lr: float = 0.1, min_lr: float = 0.001, gamma: float = 0.7017, step_size: int = 100
    ):
        if not (max_lr > 0 and 0 <= min_lr <= max_lr and 0 < gamma <= 1 and step_size >= 1):
            raise ConfigError(
                f"per-class lr needs max_lr > 0, 0 <= min_lr <= max_lr, 0 < lr_gamma <= 1, lr_step >= 1 "
                f"(got {max_lr}, {min_lr}, {gamma}, {step_size})",
                key="lr_schedule",
            )
        self.max_lr = float(max_lr)
        self.min_lr = float(min_lr)
        self.gamma = float(gamma)
        self.step_size = int(step_size)
        self.counts: Dict[int, int] = {}

    def lr(self, cls: int) -> float:
        k = self.counts.get(int(cls), 0) // self.step_size
        return max(self.min_lr, self.max_lr * self.gamma**k)

    def step(self, cls: int, n: int = 1) -> None:
        self.counts[int(cls)] = self.counts.get(int(cls), 0) + int(n)

    @staticmethod
    def apply(optimizer: torch.optim.Optimizer, lr: float) -> None:
        for group in optimizer.param_groups:
            group["lr"] = lr

    def state_dict(self) -> Dict[str, Any]:
        return {"counts": {int(k): int(v) for k, v in self.counts.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.counts = {int(k): int(v) for k, v in dict(state.get("counts", {})).items()}



@register_plugin("remind")
class REMINDPlugin(LatentReplayPlugin):
    """REMIND: streaming replay of product-quantised frozen-trunk features.

    Use with :class:`streamcl.strategies.REMIND`, or ``avalanche.training.Naive``
    (see the module docstring for how per-sample steps run there), on a
    :class:`~streamcl.models.SplitNet` (``resnet18_cut`` for the paper,
    ``squeezenet_cut`` for the CRUMB comparison) or on any model with
    ``latent_layer`` (``"layer4.0"`` for a torchvision or timm ResNet-18);
    ``train_mb_size`` as you like (per-sample mode steps once per example anyway),
    one epoch per streaming experience, and an SGD optimiser (momentum 0.9, weight
    decay 1e-5 in the paper). Requires faiss (``pip install 'streamcl[cpu]'`` or
    ``'streamcl[gpu]'``).

    :param memory: replay budget: items (``417``), ``{"items": N}`` or
        ``{"bytes": "2.26MB"}`` (the whole memory: the PQ centroids, then codes +
        int16 label per item).
    :param num_codebooks: PQ sub-quantisers M (32); must divide the trunk's channels.
        Each item stores ``H * W * M`` bytes.
    :param nbits: bits per PQ code (8: 256 centroids per sub-quantiser).
    :param mode: ``"per_sample"`` (paper: one step per new example) or
        ``"batched"`` (one step per mini-batch: B new + ``batched_replay`` replays).
    :param n_replay: replayed items per step in per-sample mode (50).
    :param batched_replay: replayed items per step in batched mode (default ``n_replay``).
    :param lr_schedule: ``"per_class"`` (paper) or ``"constant"`` (keep the optimiser's lr).
    :param max_lr: per-class lr of a new class (0.1).
    :param min_lr: floor of the per-class lr (0.001).
    :param lr_gamma: decay factor of the per-class lr (0.7017).
    :param lr_step: samples of a class between two decays (100).
    :param augment: random resized crop + mixup of replayed maps (True).
    :param crop_scale: area range of the crop ((2/7, 1) at 7x7; (4/13, 1) at 13x13).
    :param crop_ratio: aspect-ratio range of the crop.
    :param crop_new: also crop the new example (the authors' code does; the paper text crops replays).
    :param mixup_alpha: Beta(alpha, alpha) of the mixup between two replay halves (0.1; null disables).
    :param base_epochs: epochs of the base initialisation, i.e. of the first experience. ``None``:
        the strategy's ``train_epochs`` when the first experience starts, which is the YAML's
        ``first_experience_epochs`` under ``streamcl run`` (the runner sets ``train_epochs`` per
        experience) and :class:`streamcl.strategies.REMIND`'s ``first_experience_epochs``. On an
        online stream it holds for each mini-experience of the base experience; ``train_epochs``
        is restored after every (mini-)experience.
    :param base_train_trunk: also train the trunk during base initialisation (frozen again afterwards).
    :param pq_train_vectors: at most this many C-vectors (sampled uniformly) train the PQ.
    :param pq_niter: k-means iterations of the PQ training.
    :param mask_logits: mask logits of unseen classes during training (REMIND: no).
    :param mask_eval_logits: same at evaluation.
    :param grad_clamp: element-wise gradient clamp (null: none, as the paper).
    :param use_gpu: faiss on the GPU: ``"auto"`` (faiss-gpu present and data on CUDA), true, false.
    :param buffer_device: where the code buffer lives (``"cpu"``).
    :param seed: seed of the PQ k-means, replay draws, augmentation and evictions.
    :param latent_layer: for a model that is not a SplitNet, the name of the layer to cut it at
        (any ``model.named_modules()`` name, e.g. ``"layer4.0"``); what lies before is frozen,
        replayed items go through the layers after it only.
    :param amp: mixed precision of the frozen trunk's forward only: ``bf16``, ``fp16`` or null (float32).
    :param channels_last: run the frozen trunk in channels_last memory layout.
    """

    def __init__(
        self,
        *,
        memory: Union[int, str, Dict[str, Any]] = 417,
        num_codebooks: int = 32,
        nbits: int = 8,
        mode: Literal["per_sample", "batched"] = "per_sample",
        n_replay: int = 50,
        batched_replay: Optional[int] = None,
        lr_schedule: Literal["per_class", "constant"] = "per_class",
        max_lr: float = 0.1,
        min_lr: float = 0.001,
        lr_gamma: float = 0.7017,
        lr_step: int = 100,
        augment: bool = True,
        crop_scale: Sequence[float] = (2 / 7, 1.0),
        crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
        crop_new: bool = False,
        mixup_alpha: Optional[float] = 0.1,
        base_epochs: Optional[int] = None,
        base_train_trunk: bool = False,
        pq_train_vectors: int = 65536,
        pq_niter: int = 25,
        mask_logits: bool = False,
        mask_eval_logits: bool = False,
        grad_clamp: Optional[float] = None,
        use_gpu: Union[bool, str] = "auto",
        buffer_device: str = "cpu",
        seed: int = 0,
        latent_layer: Optional[str] = None,
        amp: Optional[Literal["bf16", "fp16"]] = None,
        channels_last: bool = False,
    ):
        self._check_choice("mode", mode, ("per_sample", "batched"))
        self._check_choice("lr_schedule", lr_schedule, ("per_class", "constant"))
        if int(n_replay) < 0:
            raise ConfigError(f"n_replay must be >= 0, got {n_replay}", key="n_replay")
        if batched_replay is not None and int(batched_replay) < 0:
            raise ConfigError(f"batched_replay must be >= 0, got {batched_replay}", key="batched_replay")
        if base_epochs is not None and int(base_epochs) < 1:
            raise ConfigError(f"base_epochs must be >= 1 (or null), got {base_epochs}", key="base_epochs")
        if len(tuple(crop_scale)) != 2 or not 0 < float(crop_scale[0]) <= float(crop_scale[1]) <= 1:
            raise ConfigError(
                f"crop_scale must be [min, max] with 0 < min <= max <= 1, got {crop_scale}", key="crop_scale"
            )
        if int(pq_train_vectors) < 2**nbits:
            raise ConfigError(f"pq_train_vectors must be >= 2**nbits = {2**nbits}", key="pq_train_vectors")
        # Built now, so a missing faiss fails when REMIND is constructed (naming the extra).
        codec = PQCodec(num_codebooks, nbits, niter=pq_niter, seed=seed, use_gpu=use_gpu)
        replays = int(n_replay if mode == "per_sample" or batched_replay is None else batched_replay)
        super().__init__(
            codec,
            memory=memory,
            policy="largest_class",
            # batched: the shared joint replay (B new + replays in one step); per_sample: the
            # per-example steps draw their own replays, so the shared joint draw is switched off.
            replay="joint" if (mode == "batched" and replays > 0) else "none",
            replay_sampling="uniform",
            replay_mb_size=replays or None,
            replay_weight=None,  # mean loss over new + replayed items, as REMIND
            train_path="reconstructed",
            eval_path="reconstructed",
            mask_logits=mask_logits,
            mask_eval_logits=mask_eval_logits,
            grad_clamp=grad_clamp,
            augment=augment,
            crop_scale=(float(crop_scale[0]), float(crop_scale[1])),
            crop_ratio=(float(crop_ratio[0]), float(crop_ratio[1])),
            mixup_alpha=mixup_alpha if augment else None,
            mixup_mode="halves",
            store="stream",
            fit_codec="never",  # fitted by the base initialisation
            buffer_device=buffer_device,
            seed=seed,
            latent_layer=latent_layer,
            amp=amp,
            channels_last=channels_last,
        )
        self.mode = mode
        self.n_replay = int(n_replay)
        self.batched_replay = batched_replay
        self.lr_schedule = lr_schedule
        self.lr_scheduler = (
            PerClassStepLR(max_lr, min_lr, lr_gamma, lr_step) if lr_schedule == "per_class" else None
        )
        self.crop_new = bool(crop_new)
        self.base_epochs = None if base_epochs is None else int(base_epochs)
        self.base_train_trunk = bool(base_train_trunk)
        self.pq_train_vectors = int(pq_train_vectors)
        self.base_done = False
        self.steps = 0  # optimiser steps taken by REMIND while streaming
        self._saved_train_epochs: Optional[int] = None
        self._in_base = False
        # where the base experience is (online streams: its origin, mini-experiences trained, data)
        self._base_origin: Optional[Tuple[str, int]] = None  # ("index" | "id", value)
        self._base_parts: set = set()
        self._base_dataset: Any = None
        self._base_position: Optional[Tuple[int, bool, Optional[int]]] = None
        # per-sample steps: the mini-batch's codes and decoded maps, the step being taken
        self._batch_codes: Optional[Tensor] = None
        self._new_feats: Optional[Tensor] = None
        self._step_index: Optional[int] = None
        self._step: Optional[Tuple[Tensor, Tensor, Tensor, float]] = None
        self._step_loss_sum = 0.0
        self._installed_on: Any = None  # a plain strategy running per_sample_training_epoch

    # ------------------------------------------------------------------ properties
    @property
    def pq(self) -> PQCodec:
        return self.codec  # type: ignore[return-value]

    def _streaming(self) -> bool:
        return self.base_done and self.codec is not None and self.codec.is_fitted

    def steps_per_sample(self) -> bool:
        """True when the current epoch must take one optimiser step per example (per_sample mode, streaming)."""
        return self.mode == "per_sample" and self._streaming()

    def _in_step(self) -> bool:
        return self._step_index is not None

    # ------------------------------------------------------------------ base initialisation
    def before_training_exp(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        if not self.base_done:
            self._track_base(strategy)
        super().before_training_exp(strategy, *args, **kwargs)
        self._in_base = not self.base_done
        if not self._in_base:
            self._install_per_sample_epoch(strategy)
            return
        if self.base_epochs is not None and self._saved_train_epochs is None:
            self._saved_train_epochs = strategy.train_epochs
            strategy.train_epochs = self.base_epochs
        if self.base_train_trunk:
            self.model_cut(strategy.model).unfreeze()
            strategy.model.train()  # the trunk leaves eval mode too (BatchNorm statistics adapt to the base data)

    def after_training_exp(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        super().after_training_exp(strategy, *args, **kwargs)
        self._uninstall_per_sample_epoch(strategy)
        if self._saved_train_epochs is not None:  # base_epochs holds for this (mini-)experience only
            strategy.train_epochs = self._saved_train_epochs
            self._saved_train_epochs = None
        if not self._in_base:
            return
        self._in_base = False
        position = self._base_position
        self._base_position = None
        if position is not None:  # a mini-experience of an online stream
            part, is_last, length = position
            self._base_parts.add(part)
            # The base experience is over when its last mini-experience says so, or when as many
            # mini-experiences of it as the splitter made (sub_stream_length) have been trained:
            # Avalanche 0.6 sets is_last_subexp only when the last one is shorter than the others.
            if not (is_last or (length is not None and len(self._base_parts) >= length)):
                return
        self._finish_base(strategy, self._base_dataset)

    def _track_base(self, strategy: Any) -> None:
        """Before a (mini-)experience while the base initialisation is pending: where is the base experience?

        Whole experiences: the first one is the base experience. Mini-experiences of an online
        stream (``split_online_stream``): the base experience is the origin experience of the
        first one; it ends after its last mini-experience (see :meth:`after_training_exp`) or,
        failing that, when a mini-experience of another origin arrives, which then
        initialises first. Decided from what the plugin sees, not from a single flag.
        """
        exp = strategy.experience
        info = _online_position(exp)
        if info is None and self._base_origin is not None:  # whole experiences after an online base
            self._finish_base(strategy, self._base_dataset)
            return
        if info is None:
            self._base_position = None
            self._base_dataset = exp.dataset
            return
        origin, key, part, is_last, length = info
        if self._base_origin is not None and key != self._base_origin:
            # The base experience ended without a mini-experience we could recognise as its last.
            self._finish_base(strategy, self._base_dataset)
            return
        if part is None:
            part = len(self._base_parts)
        self._base_origin = key
        self._base_dataset = origin.dataset
        self._base_position = (part, is_last, length)

    def _finish_base(self, strategy: Any, dataset: Any) -> None:
        """End of the base experience: freeze the trunk again, fit the PQ, fill the buffer."""
        if dataset is None:
            raise StreamclError(
                "REMINDPlugin: the base experience ended but its data is not known (resumed between two of "
                "its mini-experiences?): restart the run, or resume after the whole first experience"
            )
        if self.base_train_trunk:
            self.model_cut(strategy.model).freeze()
        self.base_initialise(strategy, dataset)
        self._base_origin = None
        self._base_dataset = None
        self._base_parts = set()
        self._base_position = None

    @staticmethod
    def _eval_view(dataset: Any) -> Any:
        """The dataset with its eval transforms (deterministic features for the PQ and the buffer)."""
        ev = getattr(dataset, "eval", None)
        return ev() if callable(ev) else dataset

    def base_initialise(self, strategy: Any, dataset: Any) -> None:
        """Fit the PQ on the base features, encode every base example into the (capped) buffer.

        Two passes over ``dataset`` through the trunk: the first samples up to
        ``pq_train_vectors`` spatial C-vectors uniformly and fits the PQ, the
        second encodes all examples in order (largest-class eviction caps the buffer).
        """
        model = self.model_cut(strategy.model).model
        dataset = self._eval_view(dataset)
        was = model.training
        model.eval()
        try:
            if not self.codec.is_fitted:  # type: ignore[union-attr]
                total = max(1, len(dataset))
                vecs: List[Tensor] = []
                for x, _ in self._iterate_experience(strategy, dataset, desc="REMIND: training the quantiser"):
                    f = self.features(strategy, x)
                    self._on_feature_shape(strategy, f)
                    v = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])
                    # keep the same fraction of every batch: ~pq_train_vectors over the whole experience
                    frac = self.pq_train_vectors / (total * f.shape[2] * f.shape[3])
                    k = min(len(v), math.ceil(frac * len(v)))
                    if k < len(v):
                        v = v[torch.randperm(len(v), generator=self.generator)[:k].to(v.device)]
                    vecs.append(v.cpu())
                if not vecs:
                    raise ConfigError(
                        "REMIND base initialisation: the first experience holds no data", key="memory"
                    )
                train = torch.cat(vecs)[: self.pq_train_vectors]
                self.codec.fit(train[:, :, None, None].to(strategy.device))  # type: ignore[union-attr]
            for x, y in self._iterate_experience(strategy, dataset, desc="REMIND: encoding the base data"):
                f = self.features(strategy, x)
                self._on_feature_shape(strategy, f)
                self.store_codes(self.encode(f), y)
        finally:
            model.train(was)
        self.base_done = True

    # ------------------------------------------------------------------ per-sample steps
    def _install_per_sample_epoch(self, strategy: Any) -> None:
        """Give a plain strategy REMIND's per-sample epoch for this experience (see the module docstring)."""
        if not self.steps_per_sample() or getattr(strategy, "runs_remind_epoch", False):
            return
        from avalanche.training.templates.update_type import SGDUpdate

        if getattr(type(strategy), "training_epoch", None) is not SGDUpdate.training_epoch:
            raise StreamclError(
                f"REMINDPlugin(mode='per_sample') takes one optimiser step per example, which needs REMIND's "
                f"training epoch, but {type(strategy).__name__} has a training loop of its own: use "
                "streamcl.strategies.REMIND (strategy: {name: remind} in YAML), or mode='batched'"
            )
        strategy.training_epoch = functools.partial(per_sample_training_epoch, strategy, self)
        self._installed_on = strategy

    def _uninstall_per_sample_epoch(self, strategy: Any) -> None:
        if self._installed_on is strategy:
            vars(strategy).pop("training_epoch", None)
        self._installed_on = None

    def encode_minibatch(self, strategy: Any) -> Tensor:
        """Run the model once on ``strategy.mbatch`` with the feature hook: the trunk features are
        encoded (and decoded for the per-example steps); returns the mini-batch's logits (masked
        when ``mask_logits``) for the training metrics."""
        cut = self.model_cut(strategy.model)
        self._codec_zero_grad()
        self._joint = None
        self._replay_logits = None
        self._strategy = strategy
        cut.set_hook(self._train_hook)
        try:
            with torch.no_grad():
                out = strategy.forward()
        finally:
            cut.set_hook(None)
            self._strategy = None
        if self.mask_logits:
            out = self.mask(out)
        self._batch_codes = self._codes
        self._new_feats = self.codec.decode(self._codes.to(strategy.device))  # type: ignore[union-attr]
        self._step_loss_sum = 0.0
        return out

    def draw_replay(self, device: Any) -> Optional[Tuple[Tensor, Tensor, Tensor, float]]:
        """Decoded, augmented replay items for one step: ``(feats, labels_a, labels_b, lam)`` or None."""
        if self.buffer is None or len(self.buffer) == 0 or self.n_replay == 0:
            return None
        n = self.n_replay * (2 if (self.augment and self.mixup_alpha) else 1)
        codes, labels = self.buffer.sample(n, generator=self.generator)
        if len(labels) == 0:
            return None
        return self.replay_features(codes, labels, device)

    def step_forward(self, strategy: Any, i: int) -> Tensor:
        """Step ``i``: the layers after the cut on new example ``i`` + ``n_replay`` replayed items.

        Returns the new example's logits (the step's ``mb_output``); the replayed items'
        logits and labels are kept for :meth:`step_loss`.
        """
        self._step_index = i
        y = strategy.mb_y.long()
        x = self._new_feats[i : i + 1]  # type: ignore[index]
        if self.crop_new:
            x = random_resized_crop_features(
                x,
                scale=self.crop_scale,
                ratio=self.crop_ratio,
                generator=self.generator,  # type: ignore[arg-type]
            )
        ya, yb, lam = y, y, 1.0
        replay = self.draw_replay(strategy.device)
        if replay is not None:
            rf, ra, rb, lam = replay
            x = torch.cat([x, rf.to(x.dtype)])
            ya, yb = torch.cat([y, ra]), torch.cat([y, rb])
        logits = self.head(strategy, x)
        if self.mask_logits:
            logits = self.mask(logits)
        self._step = (logits, ya, yb, lam)
        return logits[:1]

    def step_loss(self, strategy: Any) -> Tensor:
        """REMIND's loss of the current step: mean (mixup-aware) loss over the new and replayed items."""
        logits, ya, yb, lam = self._step  # type: ignore[misc]
        loss = mixup_loss(strategy._criterion, logits, ya, yb, lam)
        self._step_loss_sum += float(loss.detach())
        self.last_replay_size = len(logits) - 1
        return loss

    def end_minibatch(self, strategy: Any) -> None:
        """After the per-example steps: the replay loss of the mini-batch; its codes are stored already."""
        self.last_replay_loss = self._step_loss_sum / max(1, len(strategy.mb_y))
        self._codes = None  # admitted one by one, after each example's step
        self._batch_codes = None
        self._new_feats = None
        self._step = None

    # ------------------------------------------------------------------ streaming callbacks
    def before_forward(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        if self._in_step():
            return  # the step's forward is step_forward (the layers after the cut only)
        super().before_forward(strategy, *args, **kwargs)

    def after_forward(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        if self._in_step():
            return
        super().after_forward(strategy, *args, **kwargs)

    def before_backward(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        if self._in_step():
            return  # REMIND's loss is the step's loss already
        super().before_backward(strategy, *args, **kwargs)

    def before_update(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        """Set the step's lr: the example's per-class lr, or in batched mode the mini-batch's mean."""
        if self.lr_scheduler is None or not self._streaming():
            return
        if self._in_step():
            self.lr_scheduler.apply(strategy.optimizer, self.lr_scheduler.lr(int(strategy.mb_y[0])))
        elif self.mode == "batched":
            labels = strategy.mb_y.tolist()
            lr = sum(self.lr_scheduler.lr(c) for c in labels) / max(1, len(labels))
            self.lr_scheduler.apply(strategy.optimizer, lr)

    def after_update(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        super().after_update(strategy, *args, **kwargs)
        if self._in_step():
            i = self._step_index
            self._step_index = None
            self.steps += 1
            if strategy.clock.train_exp_epochs == 0:
                self.store_codes(self._batch_codes[i : i + 1], strategy.mb_y)  # type: ignore[index]
            if self.lr_scheduler is not None:
                self.lr_scheduler.step(int(strategy.mb_y[0]))
        elif self.mode == "batched" and self._streaming() and self._codes is not None:
            self.steps += 1
            if self.lr_scheduler is not None:
                for c in strategy.mb_y.tolist():
                    self.lr_scheduler.step(c)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> Dict[str, Any]:
        state = super().state_dict()
        state["remind"] = {
            "num_codebooks": int(self.pq.num_codebooks),
            "nbits": int(self.pq.nbits),
            "mode": self.mode,
            "base_done": bool(self.base_done),
            "base_origin": self._base_origin[1] if self._base_origin and self._base_origin[0] == "index" else None,
            "base_parts": sorted(int(p) for p in self._base_parts),
            "steps": int(self.steps),
            "lr": self.lr_scheduler.state_dict() if self.lr_scheduler is not None else None,
        }
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        cfg = state.get("remind") if isinstance(state, Mapping) else None
        if cfg:
            saved = (int(cfg["num_codebooks"]), int(cfg["nbits"]))
            if saved != (self.pq.num_codebooks, self.pq.nbits):
                raise CheckpointError(
                    f"checkpoint PQ is M={saved[0]}, nbits={saved[1]} but this REMINDPlugin is "
                    f"M={self.pq.num_codebooks}, nbits={self.pq.nbits}: use the experiment's original settings"
                )
        super().load_state_dict(state)  # type: ignore[arg-type]
        if cfg:
            self.base_done = bool(cfg.get("base_done", False))
            origin = cfg.get("base_origin")
            self._base_origin = None if origin is None else ("index", int(origin))
            self._base_parts = {int(p) for p in cfg.get("base_parts", [])}
            self.steps = int(cfg.get("steps", 0))
            if self.lr_scheduler is not None and cfg.get("lr") is not None:
                self.lr_scheduler.load_state_dict(cfg["lr"])

    def __repr__(self) -> str:
        return (
            f"REMINDPlugin(M={self.pq.num_codebooks}, nbits={self.pq.nbits}, mode={self.mode}, "
            f"n_replay={self.n_replay}, lr_schedule={self.lr_schedule}, memory={self.budget.to_dict()})"
        )


def per_sample_training_epoch(strategy: Any, plugin: REMINDPlugin, **kwargs: Any) -> None:
    """REMIND's training epoch in per-sample mode: one optimiser step per example, all callbacks at each.

    :class:`streamcl.strategies.REMIND` runs it as its ``training_epoch`` while streaming; the
    plugin installs it on a plain strategy (see the module docstring). Avalanche's own
    ``SGDUpdate.training_epoch`` with an inner loop over the examples of each mini-batch.
    """
    for mbatch in strategy.dataloader:
        if strategy._stop_training:
            break
        strategy.mbatch = mbatch
        strategy._unpack_minibatch()
        strategy._before_training_iteration(**kwargs)

        # The trunk once per mini-batch: codes of every example, logits for the metrics.
        batch = strategy.mbatch
        logits = plugin.encode_minibatch(strategy)
        for i in range(len(batch[1])):
            strategy.mbatch = [t[i : i + 1] for t in batch]
            strategy.optimizer.zero_grad()
            strategy.loss = strategy._make_empty_loss()

            strategy._before_forward(**kwargs)
            strategy.mb_output = plugin.step_forward(strategy, i)
            strategy._after_forward(**kwargs)

            strategy.loss += plugin.step_loss(strategy)
            strategy._before_backward(**kwargs)  # EWC, MAS, LwF ... add their terms here
            strategy.backward()
            strategy._after_backward(**kwargs)

            strategy._before_update(**kwargs)
            strategy.optimizer_step()
            strategy._after_update(**kwargs)  # the example joins the buffer

        # The mini-batch again for after_training_iteration (metrics, clock): its logits and loss.
        strategy.mbatch = batch
        strategy.mb_output = logits
        strategy.loss = strategy._make_empty_loss() + strategy.criterion().detach()
        plugin.end_minibatch(strategy)
        strategy._after_training_iteration(**kwargs)


def _online_position(exp: Any) -> Optional[Tuple[Any, Tuple[str, int], Optional[int], bool, Optional[int]]]:
    """``(origin, origin_key, index, is_last_subexp, sub_stream_length)`` of a mini-experience of an
    online stream; None for a whole experience. Refuses online streams that hide their boundaries."""
    from avalanche.benchmarks.scenarios.online import OnlineCLExperience

    if not isinstance(exp, OnlineCLExperience) and "origin_experience" not in vars(exp):
        return None
    fix = ("REMIND's base initialisation needs to know where the first experience ends: build the online "
           "stream with avalanche's split_online_stream(stream, experience_size, access_task_boundaries=True) "
           "(streamcl's benchmark.online_mb_size does), or train on whole experiences")
    try:
        boundaries = bool(getattr(exp, "access_task_boundaries", True))
        origin = exp.origin_experience
        is_last = bool(exp.is_last_subexp)
        length = exp.sub_stream_length
    except (AttributeError, ValueError):  # avalanche's MaskedAttributeError is a ValueError
        boundaries, origin, is_last, length = False, None, False, None
    if not boundaries:
        raise StreamclError(f"REMINDPlugin: this online stream hides its experience boundaries "
                            f"(access_task_boundaries=False). {fix}")
    if origin is None:
        raise StreamclError(f"REMINDPlugin: this online mini-experience has no origin experience "
                            f"(a stream with blurred boundaries?). {fix}")
    key = _int_attr(origin, "current_experience")
    part = _int_attr(exp, "current_experience")
    return (origin, ("id", id(origin)) if key is None else ("index", key), part, is_last,
            None if length is None else int(length))


def _int_attr(obj: Any, name: str) -> Optional[int]:
    try:
        value = getattr(obj, name)
    except Exception:  # unset or masked
        return None
    return int(value) if isinstance(value, int) and not isinstance(value, bool) else None
