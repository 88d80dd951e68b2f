"""REMIND as a strategy: ``avalanche.training.Naive`` with REMIND's per-sample training epoch.

REMIND steps once per new example while streaming (``mode="per_sample"``, the paper). The
strategy overrides ``training_epoch``, as Avalanche's AR1 does, with
:func:`streamcl.plugins.remind.per_sample_training_epoch`: Avalanche's own iteration with an
inner loop over the examples of each mini-batch, so every plugin's callbacks and penalties
(EWC, MAS, LwF adding to ``strategy.loss`` in ``before_backward``) reach every step.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Literal, Optional, Sequence, Union

import torch
from avalanche.training.plugins.evaluation import EvaluationPlugin, default_evaluator
from torch import Tensor, nn

from streamcl.plugins.latent_replay import parse_memory
from streamcl.plugins.remind import REMINDPlugin, per_sample_training_epoch
from streamcl.registry import register_strategy
from streamcl.strategies.latent import LatentReplayStrategy

__all__ = ["REMIND"]


@register_strategy("remind")
class REMIND(LatentReplayStrategy):
    """REMIND strategy: one SGD step per new example on it + replayed product-quantised features.

    The keyword arguments of ``avalanche.training.Naive``, ``first_experience_epochs``, and
    those of :class:`streamcl.plugins.REMINDPlugin` (documented there in full). The plugin is
    ``self.latent_plugin``, first in ``self.plugins``. The first experience is REMIND's base
    initialisation (ordinary training for ``base_epochs``, then the PQ is fitted and the
    buffer filled); later experiences stream.

    :param model: a :class:`~streamcl.models.SplitNet`, or any ``nn.Module`` with ``latent_layer``.
    :param optimizer: SGD in the paper (momentum 0.9, weight decay 1e-5).
    :param criterion: loss of new and replayed items (``None``: cross-entropy).
    :param train_mb_size: examples encoded together (per-sample mode still steps once per example).
    :param train_epochs: epochs per experience (after the first when ``first_experience_epochs`` is set).
    :param eval_mb_size: evaluation batch size (default ``train_mb_size``).
    :param device: where the model trains (the code buffer stays on ``buffer_device``).
    :param plugins: further plugins (EWC, MAS, LwF ...), after the REMIND plugin.
    :param evaluator: Avalanche's ``EvaluationPlugin`` (or a factory of one).
    :param eval_every: evaluate every this many epochs during training (-1: never).
    :param first_experience_epochs: epochs on the first experience, i.e. of the base
        initialisation unless ``base_epochs`` is given (``None``: ``train_epochs``).
    :param latent_layer: the layer to cut a model that is not a SplitNet at (``"layer4.0"``).
    :param memory: replay budget: items (``417``), ``{"items": N}`` or ``{"bytes": "2.26MB"}``.
    :param num_codebooks: PQ sub-quantisers M (32), must divide the channels at the cut.
    :param nbits: bits per PQ code (8).
    :param mode: ``per_sample`` (the paper) or ``batched`` (one step per mini-batch).
    :param n_replay: replayed items per step in per-sample mode (50).
    :param batched_replay: replayed items per step in batched mode (default ``n_replay``).
    :param lr_schedule: ``per_class`` (the paper) or ``constant``.
    :param max_lr: per-class lr of a new class (0.1).
    :param min_lr: floor of the per-class lr (0.001).
    :param lr_gamma: decay factor of the per-class lr (0.7017).
    :param lr_step: samples of a class between two decays (100).
    :param augment: random resized crop + mixup of replayed maps.
    :param crop_scale: area range of the crop.
    :param crop_ratio: aspect-ratio range of the crop.
    :param crop_new: also crop the new example.
    :param mixup_alpha: Beta(alpha, alpha) of the mixup between two replay halves (0.1).
    :param base_epochs: epochs of the base initialisation (the first experience); ``None``:
        ``first_experience_epochs``, else ``train_epochs``.
    :param base_train_trunk: also train the part before the cut during base initialisation.
    :param pq_train_vectors: at most this many C-vectors train the PQ.
    :param pq_niter: k-means iterations of the PQ training.
    :param mask_logits: mask logits of unseen classes during training.
    :param mask_eval_logits: same at evaluation.
    :param grad_clamp: element-wise gradient clamp (null: none).
    :param use_gpu: faiss on the GPU: ``"auto"``, true, false.
    :param buffer_device: where the code buffer lives.
    :param seed: seed of the PQ k-means, replay draws, augmentation and evictions.
    :param amp: mixed precision of the frozen trunk's forward only: ``bf16``, ``fp16`` or null (float32).
    :param channels_last: run the frozen trunk in channels_last memory layout.
    :param base_kwargs: other keyword arguments of Avalanche's templates (e.g. ``peval_mode``).
    """

    config_checks = {"memory": parse_memory}
    #: REMINDPlugin checks this before installing its per-sample epoch on a plain strategy.
    runs_remind_epoch = True

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        criterion: Optional[Union[nn.Module, Callable[[Tensor, Tensor], Tensor]]] = None,
        train_mb_size: int = 1,
        train_epochs: int = 1,
        eval_mb_size: Optional[int] = None,
        device: Union[str, torch.device] = "cpu",
        plugins: Optional[Sequence[Any]] = None,
        evaluator: Union[EvaluationPlugin, Callable[[], EvaluationPlugin]] = default_evaluator,
        eval_every: int = -1,
        first_experience_epochs: Optional[int] = None,
        latent_layer: Optional[str] = None,
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
        amp: Optional[Literal["bf16", "fp16"]] = None,
        channels_last: bool = False,
        **base_kwargs: Any,
    ) -> None:
        plugin = REMINDPlugin(
            latent_layer=latent_layer,
            memory=memory,
            num_codebooks=num_codebooks,
            nbits=nbits,
            mode=mode,
            n_replay=n_replay,
            batched_replay=batched_replay,
            lr_schedule=lr_schedule,
            max_lr=max_lr,
            min_lr=min_lr,
            lr_gamma=lr_gamma,
            lr_step=lr_step,
            augment=augment,
            crop_scale=crop_scale,
            crop_ratio=crop_ratio,
            crop_new=crop_new,
            mixup_alpha=mixup_alpha,
            base_epochs=base_epochs,
            base_train_trunk=base_train_trunk,
            pq_train_vectors=pq_train_vectors,
            pq_niter=pq_niter,
            mask_logits=mask_logits,
            mask_eval_logits=mask_eval_logits,
            grad_clamp=grad_clamp,
            use_gpu=use_gpu,
            buffer_device=buffer_device,
            seed=seed,
            amp=amp,
            channels_last=channels_last,
        )
        super().__init__(
            plugin,
            first_experience_epochs=first_experience_epochs,
            model=model,
            optimizer=optimizer,
            criterion=criterion if criterion is not None else nn.CrossEntropyLoss(),
            train_mb_size=train_mb_size,
            train_epochs=train_epochs,
            eval_mb_size=eval_mb_size,
            device=device,
            plugins=plugins,
            evaluator=evaluator,
            eval_every=eval_every,
            **base_kwargs,
        )

    def training_epoch(self, **kwargs: Any) -> None:
        """One epoch: REMIND's per-sample steps while streaming in per-sample mode, else Avalanche's own.

        See :func:`streamcl.plugins.remind.per_sample_training_epoch` for the step order.
        """
        if self.latent_plugin.steps_per_sample():
            per_sample_training_epoch(self, self.latent_plugin, **kwargs)
        else:
            super().training_epoch(**kwargs)
