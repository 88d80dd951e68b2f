"""LatentReplayPlugin: the Avalanche plugin that wires codec, buffer and replay into a training iteration.

How the plugin hooks into Avalanche's training iteration
--------------------------------------------------------
The model is cut in two (:mod:`streamcl.plugins.latent_replay.cut`): a
:class:`streamcl.models.SplitNet`, or any ``nn.Module`` with ``latent_layer`` naming the
layer to cut at. Avalanche keeps doing its usual ``forward -> criterion -> backward ->
optimizer.step`` and the plugin only steers it:

* ``before_forward`` installs a *feature hook* at the cut, so the strategy's own
  ``model(x)`` computes ``head(hook(trunk(x)))``. The hook sees the trunk features once
  (no second trunk pass), records them, encodes them (the codes are what the buffer
  stores) and returns the training-path input of the head: the reconstruction
  ``decode(encode(f))`` (``train_path="reconstructed"``), ``f`` itself (``"direct"``), and,
  in ``replay="joint"`` mode, the decoded and augmented replay items concatenated to the
  batch (so BatchNorm in the head sees new and replayed items together, as in REMIND).
* ``after_forward`` removes the hook, splits joint-mode outputs (``mb_output`` keeps the
  new items only, so Avalanche's criterion and metrics see the real mini-batch) and masks
  logits of classes not seen yet.
* ``before_backward`` adds the joint replay loss and/or the extra direct loss.
* ``after_backward`` clamps gradients element-wise (``grad_clamp``).
* ``after_update`` steps the codec's optimiser (learned codebooks) and, in
  ``replay="separate"`` mode (CRUMB), runs one extra replay step with its own
  ``zero_grad / backward / clamp / step`` on the strategy's optimiser (with the penalty
  terms of parameter regularisers such as EWC and MAS: :mod:`.penalties`).
* ``after_training_iteration`` (``store="stream"``/``"last_pass"``) or ``after_training_exp``
  (``store="experience"``) admit new codes into the buffer.
* evaluation: a hook captures eval features; the head reads the direct path
  (``eval_path="direct"``) or the reconstruction (``"reconstructed"``);
  :class:`~streamcl.plugins.latent_replay.metrics.ReconstructedAccuracy` reports the other
  path as an extra metric.

Other plugins (EWC, MAS, LwF, EvaluationPlugin ...) see an ordinary iteration: ``mb_x``
stays the image batch, ``mb_output`` the logits of the new items.
"""

from __future__ import annotations

import copy
import math
from typing import Any, Dict, Iterable, Iterator, List, Literal, Mapping, Optional, Sequence, Tuple, Union

import torch
from avalanche.core import SupervisedPlugin
from torch import Tensor, nn

from streamcl import distributed
from streamcl.errors import CheckpointError, ConfigError, StreamclError
from streamcl.models.codec import Codec
from streamcl.plugins.latent_replay.budget import MemorySpec, parse_memory
from streamcl.plugins.latent_replay.code_buffer import CodeBuffer
from streamcl.plugins.latent_replay.cut import ModelCut, amp_dtype, resolve_cut
from streamcl.plugins.latent_replay.feature_augment import augment_features, mixup_loss
from streamcl.plugins.latent_replay.passes import dataset_targets, experience_dataset, iterate_batches
from streamcl.plugins.latent_replay.penalties import add_parameter_penalties, parameter_penalty_plugins
from streamcl.plugins.latent_replay.policies import BufferPolicy, make_policy

__all__ = ["LatentReplayPlugin", "FeatureShape"]

FeatureShape = Tuple[int, int, int]

#: How far below the largest seen-class logit masked classes are put (nats): see :meth:`LatentReplayPlugin.mask`.
MASK_MARGIN = 1e4


def _optimizer_like(template: torch.optim.Optimizer, params: List[nn.Parameter], lr: Optional[float]) -> torch.optim.Optimizer:
    """A new optimiser of the template's class and first-group hyper-parameters over ``params``."""
    hyper = {k: v for k, v in template.param_groups[0].items() if k not in ("params", "initial_lr", "name")}
    if lr is not None:
        hyper["lr"] = lr
    try:
        return type(template)(params, **hyper)
    except TypeError:
        return torch.optim.SGD(params, lr=float(hyper.get("lr", 1e-3)))


class LatentReplayPlugin(SupervisedPlugin, supports_distributed=True):
    """Compressed latent replay on a model cut in two: the shared CRUMB/REMIND machinery.

    The model is a :class:`~streamcl.models.SplitNet`, or any ``nn.Module`` cut at
    ``latent_layer``. The codec encodes the frozen trunk's feature maps into codes kept in a
    :class:`CodeBuffer`; replayed codes are decoded (and optionally augmented)
    and fed to the layers after the cut. See the module docstring for how it hooks into
    Avalanche's loop. Subclasses (``CRUMBPlugin``, ``REMINDPlugin``) choose the
    codec and the settings below and may override the ``sample_replay``,
    ``replay_features``, ``replay_loss``, ``fit_codec`` and ``store_*`` methods.

    :param codec: the :class:`Codec` (may also be set later through :meth:`set_codec`).
    :param memory: replay budget: items (int), ``{"items": N}`` or ``{"bytes": "2.26MB"}``.
        A byte budget is the whole memory: the codec state (codebook, PQ
        centroids) is charged first, then codes + ``int16`` label per item, so
        :meth:`replay_nbytes` never exceeds it.
    :param policy: ``"class_balanced"`` (CRUMB), ``"largest_class"`` (REMIND) or a :class:`BufferPolicy`.
    :param replay: ``"separate"``: after each new-data step, one extra replay
        step with its own optimiser step (CRUMB); ``"joint"``: replayed items are
        concatenated to the new mini-batch in the same step (REMIND);
        ``"none"``: store but never replay.
    :param replay_sampling: ``"absent_classes"``: K = seen classes absent from
        the batch with stored items, ``ceil(B / K)`` rounds of one random item
        per class (CRUMB); ``"uniform"``: ``replay_mb_size`` items drawn
        uniformly without replacement (REMIND).
    :param replay_mb_size: replayed items per step for ``"uniform"`` (before mixup
        halving: with ``mixup_mode="halves"`` twice as many are drawn).
    :param replay_weight: weight of the replay loss; ``None`` in joint mode means
        per-item weighting, i.e. the mean loss over the concatenated batch (REMIND).
    :param train_path: what the head trains on for new data: ``"reconstructed"``
        ``head(decode(encode(f)))``, ``"direct"`` ``head(f)``, or ``"both"``
        (reconstructed + an added direct CE term).
    :param eval_path: ``"direct"`` (CRUMB) or ``"reconstructed"`` (REMIND).
    :param mask_logits: mask logits of classes not seen yet during training.
    :param mask_eval_logits: same at evaluation (predictions among seen classes only).
    :param grad_clamp: clamp every gradient element to ``[-grad_clamp, grad_clamp]`` before each step.
    :param augment: crop/mixup the replayed feature maps (:func:`augment_features`).
    :param store: ``"experience"``: after each experience encode its data with
        the final codec and offer the codes (only the items a labels-only policy
        will keep go through the trunk again); ``"last_pass"``: the same
        selection, from the codes the last training epoch of the experience
        already computed (no second trunk pass; selected codes are held until the
        experience ends, then admitted: CRUMB's default; every epoch selects afresh
        and the latest complete epoch's selection is admitted, the partial one only
        if no epoch completed, so training stopped early by ``EarlyStoppingPlugin`` or
        ``strategy.stop_training()`` still stores); ``"stream"``: offer the
        codes of every training mini-batch during the first epoch (REMIND);
        ``"none"``: never store (e.g. a no-replay ablation).
    :param fit_codec: when the codec is not fitted: ``"first_batch"`` fit it on
        the first training mini-batch; ``"first_experience"`` on the features of
        the whole first experience before training (up to ``fit_max_items``);
        ``"never"`` (the codec must come fitted).
    :param freeze_codec: never update a learnable codec.
    :param codec_lr: learning rate of the codec optimiser (default: follow the
        strategy optimiser's current learning rate, same class and hyper-parameters).
    :param buffer_device: device of the code buffer (``"cpu"`` default).
    :param seed: seed of the plugin's generator (replay draws, augmentation) and the buffer's.
    :param latent_layer: name of the layer to cut the model at (``"layer4.0"``, ``"features.11"``:
        any name of ``model.named_modules()``), for a model that is not a
        :class:`~streamcl.models.SplitNet`; everything the layer's output is computed from is
        frozen, replayed items go through the layers after it only (see
        :mod:`streamcl.plugins.latent_replay.cut`). ``None``: the model must be a SplitNet.
    :param amp: mixed precision of the frozen part's forward: ``"bf16"`` or ``"fp16"``
        (``torch.autocast`` on the input's device type, around the layers before the cut only;
        the features are cast back to float32 before the codec, the buffer and the head), or
        ``None`` (float32, bit-identical to no switch).
    :param channels_last: run the frozen part in ``channels_last`` memory layout (its 4-D
        weights and the input batch); the features leave the cut contiguous.
    """

    # The YAML validator calls these on the raw values, so a bad budget fails at load time.
    config_checks = {"memory": parse_memory}

    def __init__(
        self,
        codec: Optional[Codec] = None,
        *,
        memory: MemorySpec = 417,
        policy: Union[str, BufferPolicy] = "class_balanced",
        replay: Literal["separate", "joint", "none"] = "separate",
        replay_sampling: Literal["absent_classes", "uniform"] = "absent_classes",
        replay_mb_size: Optional[int] = None,
        replay_weight: Optional[float] = 1.0,
        train_path: Literal["reconstructed", "direct", "both"] = "reconstructed",
        eval_path: Literal["direct", "reconstructed"] = "direct",
        mask_logits: bool = True,
        mask_eval_logits: bool = False,
        grad_clamp: Optional[float] = None,
        augment: bool = False,
        crop_scale: Tuple[float, float] = (2 / 7, 1.0),
        crop_ratio: Tuple[float, float] = (3 / 4, 4 / 3),
        mixup_alpha: Optional[float] = None,
        mixup_mode: Literal["halves", "permute"] = "halves",
        store: Literal["experience", "last_pass", "stream", "none"] = "experience",
        fit_codec: Literal["first_batch", "first_experience", "never"] = "first_batch",
        fit_max_items: Optional[int] = None,
        freeze_codec: bool = False,
        codec_lr: Optional[float] = None,
        buffer_device: str = "cpu",
        seed: int = 0,
        latent_layer: Optional[str] = None,
        amp: Optional[Literal["bf16", "fp16"]] = None,
        channels_last: bool = False,
    ):
        super().__init__()
        self._amp_dtype = amp_dtype(amp, type(self).__name__)
        if not isinstance(channels_last, bool):
            raise ConfigError(f"channels_last must be true or false, got {channels_last!r}", key="channels_last")
        self._check_choice("replay", replay, ("separate", "joint", "none"))
        self._check_choice("replay_sampling", replay_sampling, ("absent_classes", "uniform"))
        self._check_choice("train_path", train_path, ("reconstructed", "direct", "both"))
        self._check_choice("eval_path", eval_path, ("direct", "reconstructed"))
        self._check_choice("store", store, ("experience", "last_pass", "stream", "none"))
        self._check_choice("fit_codec", fit_codec, ("first_batch", "first_experience", "never"))
        self._check_choice("mixup_mode", mixup_mode, ("halves", "permute"))
        if replay_sampling == "uniform" and replay != "none" and not replay_mb_size:
            raise ConfigError("replay_sampling='uniform' needs replay_mb_size (e.g. 50)", key="replay_mb_size")
        if grad_clamp is not None and grad_clamp <= 0:
            raise ConfigError(f"grad_clamp must be positive or null, got {grad_clamp}", key="grad_clamp")
        self.budget = parse_memory(memory)
        self.policy = make_policy(policy)
        self.codec: Optional[Codec] = codec
        self.replay = replay
        self.replay_sampling = replay_sampling
        self.replay_mb_size = replay_mb_size
        self.replay_weight = replay_weight
        self.train_path = train_path
        self.eval_path = eval_path
        self.mask_logits = bool(mask_logits)
        self.mask_eval_logits = bool(mask_eval_logits)
        self.grad_clamp = grad_clamp
        self.augment = bool(augment)
        self.crop_scale = tuple(crop_scale)
        self.crop_ratio = tuple(crop_ratio)
        self.mixup_alpha = mixup_alpha
        self.mixup_mode = mixup_mode
        self.store = store
        # store="last_pass": codes selected in the epoch running now, and in the latest complete epoch, with the
        # policy's state before this (mini-)experience's first selection and after that complete epoch
        self._staging: List[Tuple[Tensor, Tensor]] = []
        self._staged: Optional[List[Tuple[Tensor, Tensor]]] = None
        self._policy_at_start: Optional[Dict[str, Any]] = None
        self._policy_after_staged: Optional[Dict[str, Any]] = None
        self.fit_codec_on = fit_codec
        self.fit_max_items = fit_max_items
        self.freeze_codec = bool(freeze_codec)
        self.codec_lr = codec_lr
        self.buffer_device = buffer_device
        self.seed = int(seed)
        self.latent_layer = latent_layer
        self.amp = amp
        self.channels_last = channels_last

        self.generator = torch.Generator()
        self.generator.manual_seed(self.seed)
        self.buffer: Optional[CodeBuffer] = None
        self.feature_shape: Optional[FeatureShape] = None
        self.seen_classes: List[int] = []
        self.codec_optimizer: Optional[torch.optim.Optimizer] = None
        self.last_replay_loss: Optional[float] = None
        self.last_replay_size: int = 0
        self.replay_steps: int = 0
        # transient per-iteration state
        self._feats: Optional[Tensor] = None
        self._codes: Optional[Tensor] = None
        self._joint: Optional[Tuple[Tensor, Tensor, Tensor, float]] = None
        self._recon: Optional[Tensor] = None  # decode(encode(features)) of this iteration's new items, when trained on
        self._replay_logits: Optional[Tensor] = None
        self._eval_feats: Optional[Tensor] = None
        self._pending_codec_state: Optional[Dict[str, Any]] = None
        self._pending_codec_opt: Optional[Dict[str, Any]] = None
        self._pending_begin: Optional[Tuple[Optional[int], Optional[List[int]]]] = None
        self._exp_key: Any = None
        self._strategy: Any = None
        self._cut: Optional[ModelCut] = None

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _check_choice(key: str, value: Any, valid: Sequence[str]) -> None:
        if value not in valid:
            raise ConfigError(f"invalid value {value!r}; valid: {', '.join(valid)}", key=key)

    def model_cut(self, model: Any) -> ModelCut:
        """The cut of ``model`` (at ``latent_layer``, or a SplitNet's own), built once per model."""
        if self._cut is None or self._cut.model is not model:
            self._cut = resolve_cut(model, self.latent_layer, type(self).__name__)
            if self._amp_dtype is not None or self.channels_last:
                self._cut.set_precision(self._amp_dtype, self.channels_last)
        return self._cut

    def set_codec(self, codec: Codec) -> None:
        """Install (or replace) the codec; drops a codec optimiser built for the previous one."""
        self.codec = codec
        self.codec_optimizer = None

    def make_codec(self, feature_shape: FeatureShape, model: nn.Module) -> Codec:
        """Build the codec lazily once the feature shape is known (subclasses override; default: error)."""
        raise StreamclError(f"{type(self).__name__} has no codec: pass codec=... or override make_codec")

    def _ensure_codec(self, strategy: Any, feature_shape: Optional[FeatureShape] = None) -> Codec:
        if self.codec is None:
            if feature_shape is None:
                raise StreamclError("codec not built yet: no feature map seen")
            self.codec = self.make_codec(feature_shape, strategy.model if strategy is not None else None)
            if self._pending_codec_state is not None:
                self.codec.load_state_dict(self._pending_codec_state)
                self._pending_codec_state = None
        dev = torch.device(strategy.device) if strategy is not None else None
        if dev is not None:
            p = next(iter(list(self.codec.parameters()) + list(self.codec.buffers())), None)
            if p is not None and p.device != dev:
                self.codec.to(dev)
        return self.codec

    def _on_feature_shape(self, strategy: Any, feats: Tensor) -> None:
        """Record the feature shape and allocate the buffer on the first feature map seen."""
        shape = tuple(int(s) for s in feats.shape[1:])
        if len(shape) != 3:
            raise StreamclError(f"latent replay expects trunk feature maps (N, C, H, W), got shape {tuple(feats.shape)}")
        if self.feature_shape is None:
            self.feature_shape = shape  # type: ignore[assignment]
        elif shape != self.feature_shape:
            raise StreamclError(
                f"the trunk's feature shape changed from {self.feature_shape} to {shape}: "
                "latent replay needs a fixed input size (resize the images in the benchmark's transforms)"
            )
        codec = self._ensure_codec(strategy, self.feature_shape)
        if self.buffer is None:
            self.buffer = CodeBuffer.from_budget(
                self.budget,
                codec.code_shape(self.feature_shape),
                self.policy,
                code_dtype=codec.code_dtype,
                device=self.buffer_device,
                seed=self.seed,
                reserved_nbytes=codec.state_nbytes_for(self.feature_shape),
            )
            if self._pending_begin is not None:
                n_items, classes = self._pending_begin
                self.buffer.begin_experience(n_items=n_items, classes=classes)
                self._pending_begin = None

    def _observe_classes(self, classes: Iterable[int]) -> None:
        s = set(self.seen_classes)
        for c in classes:
            c = int(c)
            if c not in s:
                s.add(c)
                self.seen_classes.append(c)

    def mask(self, logits: Tensor) -> Tensor:
        """Logits with every class not seen so far set ``MASK_MARGIN`` (1e4) below the row's largest seen logit.

        Finite on purpose: ``e^-1e4`` is exactly 0 in every floating dtype, so softmax,
        log-softmax, losses, gradients and predictions over the seen classes are those of an
        infinite mask, bit for bit, while the loss of an item whose class is not seen yet
        (evaluating on a full test or validation stream) is about 1e4 instead of ``inf`` (the
        old ``finfo.min / 4`` overflowed once a few such items were summed), so loss-based
        early stopping and plateau schedulers keep working. Masked logits get no gradient.
        """
        if not self.seen_classes:
            return logits
        keep = torch.zeros(logits.shape[1], dtype=torch.bool)  # built on the CPU: no device sync for the checks
        keep[torch.as_tensor([c for c in self.seen_classes if c < logits.shape[1]], dtype=torch.long)] = True
        if bool(keep.all()) or not bool(keep.any()):
            return logits
        keep = keep.to(logits.device)
        top = logits.detach().masked_fill(~keep, float("-inf")).amax(dim=1, keepdim=True)
        fill = torch.nan_to_num(top, nan=0.0, posinf=0.0, neginf=0.0) - MASK_MARGIN
        return torch.where(keep, logits, fill.to(logits.dtype))

    def _trainable_params(self, strategy: Any) -> List[Tensor]:
        ps = [p for p in strategy.model.parameters() if p.requires_grad]
        if self.codec is not None:
            ps += [p for p in self.codec.parameters() if p.requires_grad]
        return ps

    def clamp_gradients(self, strategy: Any) -> None:
        if self.grad_clamp is None:
            return
        params = self._trainable_params(strategy)
        distributed.sync_gradients(params)  # torchrun: clamp the averaged gradient
        # the same element-wise clamp, as two foreach kernels over all gradients (not two per parameter)
        torch.nn.utils.clip_grad_value_(params, self.grad_clamp)

    def _codec_trains(self) -> bool:
        return self.codec is not None and not self.freeze_codec and self.codec.learnable

    def _codec_zero_grad(self) -> None:
        if self.codec is not None:
            for p in self.codec.parameters():
                p.grad = None

    def _codec_step(self, strategy: Any) -> None:
        if not self._codec_trains():
            return
        params = [p for p in self.codec.parameters() if p.requires_grad]  # type: ignore[union-attr]
        if not any(p.grad is not None for p in params):
            return
        if self.codec_optimizer is None:
            self.codec_optimizer = _optimizer_like(strategy.optimizer, params, self.codec_lr)
            if self._pending_codec_opt is not None:  # resumed from a checkpoint
                try:
                    self.codec_optimizer.load_state_dict(self._pending_codec_opt)
                except (ValueError, KeyError) as e:
                    raise CheckpointError(
                        f"{type(self).__name__}: the checkpoint's codebook optimiser state does not fit this "
                        f"codebook ({e}); rerun with --restart"
                    ) from None
                self._pending_codec_opt = None
        if self.codec_lr is None:  # follow the strategy's (possibly scheduled) learning rate
            lr = strategy.optimizer.param_groups[0].get("lr")
            for g in self.codec_optimizer.param_groups:
                g["lr"] = lr
        self.codec_optimizer.step()

    def features(self, strategy: Any, x: Tensor) -> Tensor:
        """Trunk features of ``x`` without gradient, trunk in eval mode."""
        return self.model_cut(strategy.model).features(x)

    def head(self, strategy: Any, feats: Tensor) -> Tensor:
        """The layers after the cut on a feature map (what replayed items go through)."""
        return self.model_cut(strategy.model).head(feats)

    def encode(self, feats: Tensor) -> Tensor:
        with torch.no_grad():
            return self.codec.encode(feats.detach())  # type: ignore[union-attr]

    # ------------------------------------------------------------------ overridable pieces
    def replay_classes(self, batch_labels: Tensor) -> List[int]:
        """Seen classes absent from the batch that have stored items (CRUMB's replay classes)."""
        if self.buffer is None or len(self.buffer) == 0:
            return []
        present = set(torch.unique(batch_labels).tolist())
        stored = set(self.buffer.items_per_class())
        return [c for c in self.seen_classes if c not in present and c in stored]

    def sample_replay(self, strategy: Any, batch_labels: Tensor) -> Optional[Tuple[Tensor, Tensor]]:
        """Codes and labels to replay for this step, or None."""
        if self.replay == "none" or self.buffer is None or len(self.buffer) == 0:
            return None
        batch_labels = distributed.gather_in_stream_order(batch_labels)  # torchrun: the global batch decides
        if self.replay_sampling == "absent_classes":
            classes = self.replay_classes(batch_labels)
            if not classes:
                return None
            rounds = math.ceil(len(batch_labels) / len(classes))
            codes, labels = self.buffer.sample_per_class(classes, rounds, generator=self.generator)
        else:
            n = int(self.replay_mb_size or 0)
            if self.augment and self.mixup_alpha and self.mixup_mode == "halves":
                n *= 2
            codes, labels = self.buffer.sample(n, generator=self.generator)
        if len(labels) == 0:
            return None
        return codes, labels

    def replay_features(self, codes: Tensor, labels: Tensor, device: Any) -> Tuple[Tensor, Tensor, Tensor, float]:
        """Decode (and augment) replayed codes: ``(feats, labels_a, labels_b, lam)``."""
        feats = self.codec.decode(codes.to(device))  # type: ignore[union-attr]
        labels = labels.to(device)
        if self.augment:
            return augment_features(
                feats,
                labels,
                crop=True,
                crop_scale=self.crop_scale,  # type: ignore[arg-type]
                crop_ratio=self.crop_ratio,  # type: ignore[arg-type]
                mixup_alpha=self.mixup_alpha,
                mixup_mode=self.mixup_mode,
                generator=self.generator,
            )
        return feats, labels, labels, 1.0

    def replay_loss(self, strategy: Any, logits: Tensor, labels_a: Tensor, labels_b: Tensor, lam: float) -> Tensor:
        """Loss on replayed items (strategy's criterion, mixup-aware)."""
        return mixup_loss(strategy._criterion, logits, labels_a, labels_b, lam)

    def store_codes(self, codes: Tensor, labels: Tensor) -> None:
        """Offer codes to the buffer (policy decides)."""
        if self.buffer is not None:
            if getattr(self, "_in_iteration", False):  # torchrun: every rank adds all ranks' items, in stream order
                codes, labels = (distributed.gather_in_stream_order(t.detach()) for t in (codes, labels))
            self.buffer.add(codes.detach(), labels.detach())

    def fit_codec(self, strategy: Any, dataset: Any = None) -> None:
        """``fit_codec="first_experience"``: fit the codec on the experience's trunk features.

        ``dataset`` defaults to the experience being trained (the whole origin
        experience in online streams); at most ``fit_max_items`` items are used.
        """
        feats = []
        n = 0
        for x, _ in self._iterate_experience(strategy, dataset, desc="fitting the codec"):
            f = self.features(strategy, x)
            feats.append(f.cpu())
            n += len(f)
            if self.fit_max_items is not None and n >= self.fit_max_items:
                break
        if not feats:
            return
        f = torch.cat(feats)
        if self.fit_max_items is not None:
            f = f[: self.fit_max_items]
        self._on_feature_shape(strategy, f)
        self.codec.fit(f.to(strategy.device))  # type: ignore[union-attr]

    def _iterate_experience(self, strategy: Any, dataset: Any = None,
                            desc: Optional[str] = None) -> Iterator[Tuple[Tensor, Tensor]]:
        """Yield ``(x, y)`` batches of the current experience's training data in stream order (``desc``: a bar)."""
        return iterate_batches(strategy, dataset, desc)

    def store_experience(self, strategy: Any, dataset: Any = None) -> None:
        """``store="experience"``: encode the experience's data with the final codec and offer the codes.

        When the buffer policy decides from labels alone (CRUMB's class-balanced
        rule: :meth:`ClassBalancedPolicy.select` + :meth:`~ClassBalancedPolicy.plan`)
        and the dataset exposes its ``targets``, the trunk runs only on the items
        that will be stored; otherwise the whole experience is walked.
        """
        from torch.utils.data import Subset

        model = self.model_cut(strategy.model).model
        ds = experience_dataset(strategy, dataset)
        policy = self.buffer.policy if self.buffer is not None else None
        targets = dataset_targets(ds)
        planned = (policy is not None and hasattr(policy, "select") and hasattr(policy, "plan")
                   and targets is not None and self.codec is not None and self.codec.is_fitted)
        was = model.training
        model.eval()
        try:
            if planned:
                labels = targets.to(self.buffer.codes.device)  # type: ignore[union-attr]
                chosen = policy.select(labels).nonzero(as_tuple=True)[0]  # type: ignore[union-attr]
                chosen = chosen[policy.plan(self.buffer, labels[chosen])]  # type: ignore[union-attr]
                if len(chosen) == 0:
                    return
                for x, y in self._iterate_experience(strategy, Subset(ds, chosen.tolist()), desc="storing codes"):
                    self.buffer.append(self.encode(self.features(strategy, x)), y)  # type: ignore[union-attr]
                return
            for x, y in self._iterate_experience(strategy, ds, desc="storing codes"):
                f = self.features(strategy, x)
                self._on_feature_shape(strategy, f)
                if not self.codec.is_fitted:  # type: ignore[union-attr]
                    self.codec.fit(f)  # type: ignore[union-attr]
                self.store_codes(self.encode(f), y)
        finally:
            model.train(was)

    # ------------------------------------------------------------------ training hooks
    def _train_hook(self, f: Tensor) -> Tensor:
        strategy = self._strategy
        self._on_feature_shape(strategy, f)
        codec = self.codec
        fd = f.detach()
        if not codec.is_fitted and self.fit_codec_on == "first_batch":  # type: ignore[union-attr]
            codec.fit(distributed.gather_in_stream_order(fd))  # type: ignore[union-attr]  # torchrun: all ranks' batch
            distributed.broadcast_module(codec)  # type: ignore[arg-type]  # ... and rank 0's result, to be sure
        self._feats = fd
        need_codes = self.train_path != "direct" or self.store in ("stream", "last_pass")
        self._codes = self.encode(fd) if need_codes and codec.is_fitted else None  # type: ignore[union-attr]
        if self.train_path == "direct" or self._codes is None:
            new = f
            self._recon = None
        else:
            new = codec.decode(self._codes)  # type: ignore[union-attr]
            self._recon = new.detach()  # the new items' reconstruction, for per-iteration diagnostics
        if self._joint is not None:
            new = torch.cat([new, self._joint[0].to(new.dtype)], dim=0)
        return new

    def before_training(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self.model_cut(strategy.model)  # freezes what lies before the cut before any step

    def before_training_exp(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self.model_cut(strategy.model)
        exp = strategy.experience
        # Online streams (split_online_stream) fire this for every mini-experience: the "stream"
        # whose length sets CRUMB's stride is the origin experience, begun once.
        origin = getattr(exp, "origin_experience", None) or exp
        classes = getattr(origin, "classes_in_this_experience", None)
        if classes is None:
            classes = getattr(exp, "classes_in_this_experience", None)
        if classes is not None:
            self._observe_classes(classes)
        if self.codec is not None:
            self._ensure_codec(strategy)
        if (self.codec is None or not self.codec.is_fitted) and self.fit_codec_on == "first_experience":
            self.fit_codec(strategy, dataset=getattr(origin, "dataset", None) if origin is not exp else None)
        key = getattr(origin, "current_experience", None)
        if key is None or key != self._exp_key:
            self._exp_key = key
            ds = getattr(origin, "dataset", None)
            begin = (len(ds) if ds is not None else None, list(classes) if classes is not None else None)
            if self.buffer is not None:
                self.buffer.begin_experience(n_items=begin[0], classes=begin[1])
            else:
                self._pending_begin = begin  # applied when the buffer is allocated
        if self.codec is not None and self.freeze_codec:
            for p in self.codec.parameters():
                p.requires_grad_(False)

    def before_training_epoch(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        # each epoch selects afresh, from the policy's state before the first one (Avalanche calls this hook
        # once more after stop_training() before leaving the loop: that partial epoch's selection is kept)
        if self.store == "last_pass" and not getattr(strategy, "_stop_training", False):
            self._staging = []
            if self._policy_at_start is not None and self.buffer is not None:
                self.buffer.policy.load_state_dict(copy.deepcopy(self._policy_at_start))

    def after_training_epoch(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        # an epoch cut short by stop_training() (Avalanche still calls this hook) is not complete
        if self.store == "last_pass" and not getattr(strategy, "_stop_training", False) and self.buffer is not None:
            self._staged = self._staging
            self._policy_after_staged = copy.deepcopy(self.buffer.policy.state_dict())
            self._staging = []

    def before_training_iteration(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self._in_iteration = True  # torchrun: codes stored from here on are gathered from every rank
        self._observe_classes(torch.unique(distributed.gather_in_stream_order(strategy.mb_y)).tolist())

    def before_forward(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        cut = self.model_cut(strategy.model)
        self._codec_zero_grad()
        self._joint = None
        self._replay_logits = None
        if self.replay == "joint" and self.codec is not None and self.buffer is not None:
            sample = self.sample_replay(strategy, strategy.mb_y)
            if sample is not None:  # torchrun: the same draw on every rank, each trains on its share
                self._joint = distributed.shard(*self.replay_features(sample[0], sample[1], strategy.device))
        self._strategy = strategy
        cut.set_hook(self._train_hook)

    def after_forward(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self.model_cut(strategy.model).set_hook(None)
        self._strategy = None
        out = strategy.mb_output
        if self._joint is not None:
            b = len(strategy.mb_y)
            self._replay_logits = out[b:]
            out = out[:b]
        if self.mask_logits:
            out = self.mask(out)
            if self._replay_logits is not None:
                self._replay_logits = self.mask(self._replay_logits)
        strategy.mb_output = out

    def before_backward(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        if self.train_path == "both" and self._feats is not None:
            direct = self.head(strategy, self._feats)
            if self.mask_logits:
                direct = self.mask(direct)
            strategy.loss = strategy.loss + strategy._criterion(direct, strategy.mb_y)
        if self._joint is not None and self._replay_logits is not None and len(self._replay_logits):
            _, ya, yb, lam = self._joint
            rl = self.replay_loss(strategy, self._replay_logits, ya, yb, lam)
            r, b = len(self._replay_logits), len(strategy.mb_y)
            if self.replay_weight is None:  # mean over the concatenated batch
                ce_new = strategy._criterion(strategy.mb_output, strategy.mb_y)
                strategy.loss = strategy.loss + (r / (b + r)) * (rl - ce_new)
            else:
                strategy.loss = strategy.loss + self.replay_weight * rl
            self.last_replay_loss = float(rl.detach())
            self.last_replay_size = r
            self.replay_steps += 1  # (a joint step that replayed: counted as the separate mode's steps are)

    def after_backward(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self.clamp_gradients(strategy)

    def after_update(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self._codec_step(strategy)
        if self.replay == "separate":
            self.separate_replay_step(strategy)

    def separate_replay_step(self, strategy: Any) -> Optional[float]:
        """One replay step with its own zero_grad / backward / clamp / optimiser step (CRUMB).

        Its loss is ``replay_weight`` x the replay loss plus the penalty terms of the other
        plugins that regularise the parameters alone (EWC, MAS, SI, RWalk: see
        :mod:`streamcl.plugins.latent_replay.penalties`), so they constrain every step the
        weights take; plugins whose loss reads the image batch (LwF) act on the new-data step
        only, since replayed items have no image.

        Afterwards the model's ``.grad`` holds the sum of both steps' gradients (the gradient of
        the iteration's whole loss, what one joint step would have followed), never ``None`` or
        zeros: plugins that read gradients after the update (Synaptic Intelligence's path
        integral ``grad x (theta_after - theta_before)``, RWalk's importance) see the two steps
        the parameters took, as Avalanche's iteration leaves them its one step's gradient.
        """
        if self.codec is None:
            return None
        sample = self.sample_replay(strategy, strategy.mb_y)
        if sample is None:
            self.last_replay_size = 0
            return None
        # The new-data step's gradients are set aside (not zeroed in place) and added back after the
        # replay step: see the docstring.
        params = [p for p in strategy.model.parameters() if p.requires_grad]
        new_grads = [p.grad for p in params]
        for p in params:
            p.grad = None
        strategy.optimizer.zero_grad()
        self._codec_zero_grad()
        feats, ya, yb, lam = distributed.shard(*self.replay_features(sample[0], sample[1], strategy.device))
        logits = self.head(strategy, feats)
        if self.mask_logits:
            logits = self.mask(logits)
        loss = self.replay_loss(strategy, logits, ya, yb, lam)
        weight = 1.0 if self.replay_weight is None else float(self.replay_weight)
        step_loss = add_parameter_penalties(strategy, weight * loss, parameter_penalty_plugins(strategy, self))
        step_loss.backward()
        self.clamp_gradients(strategy)
        strategy.optimizer.step()
        self._codec_step(strategy)
        with torch.no_grad():
            for p, g in zip(params, new_grads):
                if g is None:
                    continue
                if p.grad is None:
                    p.grad = g
                else:
                    p.grad.add_(g)
        self._codec_zero_grad()
        self.last_replay_loss = float(loss.detach())
        self.last_replay_size = len(ya)
        self.replay_steps += 1
        return self.last_replay_loss

    def after_training_iteration(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self.model_cut(strategy.model).set_hook(None)
        if self.store == "stream" and self._codes is not None and strategy.clock.train_exp_epochs == 0:
            self.store_codes(self._codes, strategy.mb_y)
        if self.store == "last_pass" and self._codes is not None:
            self._stage_codes(self._codes, strategy.mb_y)
        self._feats = None
        self._codes = None
        self._recon = None
        self._joint = None
        self._replay_logits = None
        self._in_iteration = False

    def after_training_exp(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        if self.store == "experience":
            self.store_experience(strategy)
        elif self.store == "last_pass":
            self.admit_staged()

    def admit_staged(self) -> None:
        """``store="last_pass"``: admit the latest complete epoch's selection (else the partial epoch's).

        Decided from the epochs this plugin saw end, not from ``train_epochs``: an experience
        whose training stopped early still fills the buffer.
        """
        staged, partial = self._staged, self._staging
        if staged:  # the policy continues from the state that selection left (online streams count on it)
            if partial and self._policy_after_staged is not None and self.buffer is not None:
                self.buffer.policy.load_state_dict(copy.deepcopy(self._policy_after_staged))
            chosen = staged
        else:
            chosen = partial
        self._staging, self._staged = [], None
        self._policy_at_start = self._policy_after_staged = None
        if not chosen or self.buffer is None:
            return
        codes = torch.cat([c for c, _ in chosen])
        labels = torch.cat([y for _, y in chosen])
        policy = self.buffer.policy
        (policy.admit if hasattr(policy, "admit") else policy.add)(self.buffer, codes, labels)

    def _stage_codes(self, codes: Tensor, labels: Tensor) -> None:
        """``store="last_pass"``: keep the codes the policy would select, to admit after the experience."""
        if self.buffer is None:
            return
        # torchrun: every rank stages all ranks' items, in stream order
        codes, labels = (distributed.gather_in_stream_order(t.detach()) for t in (codes, labels))
        policy = self.buffer.policy
        if self._policy_at_start is None:  # this (mini-)experience's first selection: later epochs restart here
            self._policy_at_start = copy.deepcopy(policy.state_dict())
        keep = policy.select(labels) if hasattr(policy, "select") else torch.ones_like(labels, dtype=torch.bool)
        if bool(keep.any()):
            self._staging.append((codes[keep].detach().to(self.buffer.codes.device),
                                 labels[keep].detach().long().to(self.buffer.codes.device)))

    # ------------------------------------------------------------------ evaluation hooks
    def _eval_hook(self, f: Tensor) -> Tensor:
        self._eval_feats = f.detach()
        if self.eval_path == "reconstructed" and self.codec is not None and self.codec.is_fitted:
            with torch.no_grad():
                return self.codec.reconstruct(f)
        return f

    def _eval_cut(self, strategy: Any) -> Optional[ModelCut]:
        """The model's cut at evaluation, or None when it has none (evaluated as it is)."""
        from streamcl.models.splitnet import is_splitnet

        if self.latent_layer is None and not is_splitnet(strategy.model):
            return None
        return self.model_cut(strategy.model)

    def before_eval_forward(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        cut = self._eval_cut(strategy)
        if cut is None:
            return
        self._eval_feats = None
        if self.codec is not None:
            self._ensure_codec(strategy)
        cut.set_hook(self._eval_hook)

    def after_eval_forward(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        cut = self._eval_cut(strategy)
        if cut is not None:
            cut.set_hook(None)
        if self.mask_eval_logits:
            strategy.mb_output = self.mask(strategy.mb_output)

    def other_path_logits(self, strategy: Any) -> Optional[Tensor]:
        """Eval logits of the path *not* used for evaluation (for :class:`ReconstructedAccuracy`)."""
        if self._eval_feats is None or self.codec is None or not self.codec.is_fitted:
            return None
        with torch.no_grad():
            f = self._eval_feats
            if self.eval_path == "direct":
                f = self.codec.reconstruct(f)
            out = self.head(strategy, f)
        return self.mask(out) if self.mask_eval_logits else out

    def reconstructed_logits(self, strategy: Any) -> Optional[Tensor]:
        """Eval logits of the reconstructed path for the current eval mini-batch."""
        if self.eval_path == "reconstructed":
            return strategy.mb_output
        return self.other_path_logits(strategy)

    # ------------------------------------------------------------------ accounting & state
    def replay_nbytes(self) -> int:
        """Bytes held now: the stored items' codes + labels, plus ``codec.state_nbytes()`` once fitted."""
        n = self.buffer.held_nbytes() if self.buffer is not None else 0
        if self.codec is not None:
            n += int(self.codec.state_nbytes())
        return int(n)

    def reserved_nbytes(self) -> int:
        """Bytes reserved: the preallocated buffer (its capacity) plus the codec's state."""
        n = self.buffer.nbytes() if self.buffer is not None else 0
        if self.codec is not None:
            n += int(self.codec.state_nbytes())
        return int(n)

    def state_dict(self) -> Dict[str, Any]:
        """Tensors and python primitives only (for ``torch.save`` / ``torch.load(weights_only=True)``)."""
        return {
            "version": 1,
            "codec": {k: v.detach().cpu().clone() for k, v in self.codec.state_dict().items()}
            if self.codec is not None
            else None,
            "buffer": self.buffer.state_dict() if self.buffer is not None else None,
            "feature_shape": list(self.feature_shape) if self.feature_shape is not None else None,
            "seen_classes": [int(c) for c in self.seen_classes],
            "policy": self.policy.state_dict(),
            "generator": self.generator.get_state(),
            "codec_optimizer": self.codec_optimizer.state_dict() if self.codec_optimizer is not None else None,
            "replay_steps": int(self.replay_steps),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not isinstance(state, Mapping) or "seen_classes" not in state:
            raise CheckpointError(f"not a {type(self).__name__} state (missing 'seen_classes')")
        self.seen_classes = [int(c) for c in state["seen_classes"]]
        fs = state.get("feature_shape")
        self.feature_shape = tuple(int(s) for s in fs) if fs is not None else None  # type: ignore[assignment]
        self.policy.load_state_dict(state.get("policy", {}))
        if state.get("codec") is not None:
            if self.codec is None and self.feature_shape is not None:
                self._pending_codec_state = dict(state["codec"])
                self._ensure_codec(None, self.feature_shape)
            elif self.codec is None:
                self._pending_codec_state = dict(state["codec"])
            else:
                try:
                    self.codec.load_state_dict(state["codec"])
                except RuntimeError as e:
                    raise CheckpointError(f"codec state does not match this plugin's codec: {e}") from None
        if state.get("buffer") is not None:
            self.buffer = CodeBuffer.from_state_dict(state["buffer"], self.policy, device=self.buffer_device)
        else:
            self.buffer = None
        if "generator" in state:
            self.generator.set_state(state["generator"])
        self.replay_steps = int(state.get("replay_steps", 0))
        self._pending_codec_opt = state.get("codec_optimizer")
        self.codec_optimizer = None  # rebuilt (with that state) on the next codec step

