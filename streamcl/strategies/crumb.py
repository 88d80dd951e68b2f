"""CRUMB as a strategy: ``avalanche.training.Naive`` with a :class:`~streamcl.plugins.CRUMBPlugin` first.

``CRUMB(model=..., optimizer=..., train_mb_size=21, memory={"bytes": "2.26MB"})`` trains
exactly as ``Naive(model=..., optimizer=..., train_mb_size=21,
plugins=[CRUMBPlugin(memory=...)])``: CRUMB needs no loop of its own (its replay step runs
in the plugin's ``after_update``).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Literal, Optional, Sequence, Union

import torch
from avalanche.training.plugins.evaluation import EvaluationPlugin, default_evaluator
from torch import Tensor, nn

from streamcl.plugins.crumb import CRUMBPlugin
from streamcl.plugins.latent_replay import parse_memory
from streamcl.plugins.latent_replay.cut import refuse_task_aware
from streamcl.registry import register_strategy
from streamcl.strategies.latent import LatentReplayStrategy

__all__ = ["CRUMB"]


@register_strategy("crumb")
class CRUMB(LatentReplayStrategy):
    """CRUMB strategy: Naive fine-tuning of the layers after the cut + CRUMBPlugin (compressed latent replay).

    The keyword arguments of ``avalanche.training.Naive``, ``first_experience_epochs``, and
    those of :class:`streamcl.plugins.CRUMBPlugin` (documented there in full). The plugin is
    ``self.latent_plugin``, first in ``self.plugins``. Paper schedule: ``train_mb_size`` 21
    on video datasets (128 on CIFAR-100 / ImageNet), SGD lr 1e-3 momentum 0.9 weight decay
    1e-4, ``first_experience_epochs=10`` then ``train_epochs=1``.

    :param model: a :class:`~streamcl.models.SplitNet`, or any ``nn.Module`` with ``latent_layer``;
        single-head (a multi-head ``MultiTaskModule``, e.g. from ``as_multitask``, is refused here).
    :param optimizer: the optimiser of the model's parameters (what lies before the cut never gets a gradient).
    :param criterion: loss of new and replayed items (``None``: cross-entropy).
    :param train_mb_size: new items per training step.
    :param train_epochs: epochs per experience (after the first when ``first_experience_epochs`` is set).
    :param eval_mb_size: evaluation batch size (default ``train_mb_size``).
    :param device: where the model trains (the code buffer stays on ``buffer_device``).
    :param plugins: further plugins (EWC, MAS, LwF ...), after the CRUMB plugin.
    :param evaluator: Avalanche's ``EvaluationPlugin`` (or a factory of one).
    :param eval_every: evaluate every this many epochs during training (-1: never).
    :param first_experience_epochs: epochs on the first experience (``None``: ``train_epochs``).
    :param latent_layer: the layer to cut a model that is not a SplitNet at (``"layer4.0"``, ``"features.11"``).
    :param memory: replay budget: items (``417``), ``{"items": 417}`` or ``{"bytes": "2.26MB"}``.
    :param recipe: ``balanced`` (default: k-means codebook, replay in the new data's step, weight 1)
        or ``paper`` (the authors' settings); fills ``init``, ``replay_mode``, ``replay_weight`` left unset.
    :param n_blocks: codebook rows (null: the pretrained file's, else 256).
    :param block_dim: codebook row length, must divide the channels at the cut (null: the file's, else 16).
    :param init: codebook initialisation (null: the recipe's, ``kmeans`` or ``distmatch_sparse``).
    :param init_std: std of the distmatch init (default: the paper's preset or measured).
    :param init_sparsity: zeroed fraction of the sparse distmatch init (same default rule).
    :param freeze_memory: ablation: the codebook never changes.
    :param direct_loss_only: ablation: new data trains on ``head(f)`` instead of the reconstruction.
    :param plus_direct_loss: ablation: add ``CE(head(f))`` to the reconstructed-path loss.
    :param no_replay: ablation: no replay step, nothing stored.
    :param storage: ``codes`` (CRUMB) or ``raw_features`` (uncompressed float16 maps, ablation).
    :param replay_mode: ``separate`` (paper) or ``joint`` (balanced) replay step (null: the recipe's).
    :param replay_weight: weight of the replay loss (null: the recipe's, 5 paper, 1 balanced).
    :param clamp: element-wise gradient clamp (10; null disables it).
    :param mask_eval_logits: predict among seen classes only at evaluation.
    :param eval_path: ``direct`` (the paper) or ``reconstructed``.
    :param store: which codes fill the buffer: ``last_pass``, ``experience`` or ``stream``.
    :param augment: random resized crops of replayed feature maps.
    :param crop_scale_min: smallest crop area fraction when ``augment``.
    :param pretrained: a file written by ``CRUMBPlugin.save_pretrained`` (its codebook).
    :param buffer_device: where the code buffer lives.
    :param seed: seed of codebook init, replay draws and buffer truncation.
    :param amp: mixed precision of the frozen trunk's forward only: ``bf16``, ``fp16`` or null (float32).
    :param channels_last: run the frozen trunk in channels_last memory layout.
    :param base_kwargs: other keyword arguments of Avalanche's templates (e.g. ``peval_mode``).
    """

    # The YAML validator calls these on the raw values, so a bad budget fails at load time.
    config_checks = {"memory": parse_memory}

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
        recipe: Literal["balanced", "paper"] = "balanced",
        n_blocks: Optional[int] = None,
        block_dim: Optional[int] = None,
        init: Optional[Literal["distmatch_sparse", "distmatch_dense", "normal", "uniform", "first_batch",
                               "kmeans"]] = None,
        init_std: Optional[float] = None,
        init_sparsity: Optional[float] = None,
        freeze_memory: bool = False,
        direct_loss_only: bool = False,
        plus_direct_loss: bool = False,
        no_replay: bool = False,
        storage: Literal["codes", "raw_features"] = "codes",
        replay_mode: Optional[Literal["separate", "joint"]] = None,
        replay_weight: Optional[float] = None,
        clamp: Optional[float] = 10.0,
        mask_eval_logits: bool = True,
        eval_path: Literal["direct", "reconstructed"] = "direct",
        store: Literal["last_pass", "experience", "stream"] = "last_pass",
        augment: bool = False,
        crop_scale_min: float = 4 / 13,
        pretrained: Optional[str] = None,
        buffer_device: str = "cpu",
        seed: int = 0,
        amp: Optional[Literal["bf16", "fp16"]] = None,
        channels_last: bool = False,
        **base_kwargs: Any,
    ) -> None:
        refuse_task_aware(model, "CRUMB")  # a multi-head model: refused here, before anything is built
        plugin = CRUMBPlugin(
            latent_layer=latent_layer,
            memory=memory,
            recipe=recipe,
            n_blocks=n_blocks,
            block_dim=block_dim,
            init=init,
            init_std=init_std,
            init_sparsity=init_sparsity,
            freeze_memory=freeze_memory,
            direct_loss_only=direct_loss_only,
            plus_direct_loss=plus_direct_loss,
            no_replay=no_replay,
            storage=storage,
            replay_mode=replay_mode,
            replay_weight=replay_weight,
            clamp=clamp,
            mask_eval_logits=mask_eval_logits,
            eval_path=eval_path,
            store=store,
            augment=augment,
            crop_scale_min=crop_scale_min,
            pretrained=pretrained,
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
