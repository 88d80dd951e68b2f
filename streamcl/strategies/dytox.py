"""DyTox (dynamic token expansion) as an Avalanche strategy, on timm and continuum.

Per experience t (Douillard et al., CVPR 2022; details read from the authors' code):

1. **Expansion** (``model_adaptation``): a frozen copy of the network is kept as the
   teacher, then :class:`~streamcl.models.dytox.DyToxNet` adds a task token (copied from
   the last), a head for the new classes and a new divergence head (new classes + 1).
2. **Main phase** (``train_epochs`` epochs, the template's own epoch loop): the
   experience's data plus the rehearsal memory, RandAugment + crop (timm's
   ``create_transform``), old tokens and heads frozen. Loss
   ``(1 - l) * BCE + l * KD + 0.1 * divergence`` with ``l = n_old / n_all``; KD is the KL
   divergence between the old and new softmax over the old classes (temperature 1,
   averaged over batch and old classes as the authors' ``F.kl_div(reduction='mean')``);
   the divergence head classifies the new classes vs "any old class" from the last
   task embedding. AdamW through ``timm.optim.create_optimizer_v2``, a cosine schedule
   with linear warm-up through ``timm.scheduler.create_scheduler_v2``, stepped per epoch.
3. **Memory update**: the memory (``memory`` items or bytes, shared by all seen classes,
   ``capacity // n_seen`` per class) keeps its old classes' first exemplars and herds the
   new classes on the task-token features (all tokens concatenated, eval transforms)
   with continuum's ``herd_closest_to_barycenter`` (iCaRL herding, the authors' choice).
4. **Balanced finetuning** (t > 0, ``finetune_epochs`` epochs at constant ``finetune_lr``):
   on the memory alone (every seen class equally represented), patch embedding, position
   embedding and SABs frozen; TAB, task tokens and all heads train; BCE only.

Learning-rate scaling rule (the authors'): every lr given (``optimizer.lr``,
``incremental_lr``, ``finetune_lr``) is a rate for a batch of 512 images and is used as
``lr * train_mb_size * world_size / 512`` (:func:`scaled_lr`; ``world_size`` is the
number of ``torch.distributed`` processes, 1 without DDP). The paper's 5e-4 at batch 128
on 2 GPUs trains at 2.5e-4.

The optimiser passed in (the YAML ``optimizer:`` section) is a recipe: its class, base
lr, weight decay (and momentum / betas / eps) are read, and a timm optimiser with those
settings is built for every phase over the parameters that phase trains. Do not give
a ``scheduler:`` section: DyTox schedules itself.

Every phase runs through the template's ``training_epoch``, so other plugins' callbacks
(metrics, EWC penalties, loggers ...) reach every step; ``strategy.phase`` is ``"main"``
or ``"finetune"`` during training, for plugins that must tell them apart.

Checkpoints: the network carries its task structure in its state dict
(:meth:`DyToxNet.load_state_dict` grows or shrinks to match), the memory lives in the
:class:`DyToxMemory` plugin (first in ``strategy.plugins``) as a dict class -> Avalanche
subset, which streamcl's checkpoints store as sample ids, and the teacher is rebuilt at
the start of every experience (it is the network as the previous experience left it),
so a checkpoint taken between experiences needs nothing else.
"""

from __future__ import annotations

import copy
import functools
import warnings
from typing import Any, Dict, Literal, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from avalanche.benchmarks import OnlineCLExperience
from avalanche.core import BasePlugin, SupervisedPlugin
from avalanche.training.plugins import LRSchedulerPlugin
from avalanche.training.plugins.evaluation import default_evaluator
from avalanche.training.templates import SupervisedTemplate
from torch import nn
from torch.nn import CrossEntropyLoss
from torch.optim import Optimizer

from streamcl.errors import ConfigError
from streamcl.metrics import raw_item_nbytes
from streamcl.models.dytox import DyToxNet, DyToxOutput
from streamcl.plugins.latent_replay import MemorySpec, parse_memory
from streamcl.registry import register_strategy

__all__ = ["DyTox", "DyToxMemory", "scaled_lr", "kd_lambda", "divergence_targets", "world_size", "optimizer_recipe",
           "dytox_train_transform", "find_normalization"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def world_size() -> int:
    """Number of ``torch.distributed`` processes (1 when not running distributed)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return int(torch.distributed.get_world_size())
    return 1


def scaled_lr(lr: float, batch_size: int, n_processes: int = 1) -> float:
    """DyTox's linear scaling rule: ``lr`` is given for 512 images per step; returns ``lr * batch * world / 512``."""
    return float(lr) * int(batch_size) * int(n_processes) / 512.0


def divergence_targets(columns: torch.Tensor, n_old: int) -> torch.Tensor:
    """Targets of the divergence head: 0 for a sample of an old class, 1 + j for the new task's j-th class."""
    return torch.where(columns >= n_old, columns - n_old + 1, torch.zeros_like(columns))


def kd_lambda(n_old: int, n_all: int) -> float:
    """Weight of the distillation term: the fraction of seen classes that are old (0 on the first task)."""
    return float(n_old) / float(n_all) if n_all else 0.0


# torch optimiser class -> timm name (timm's "sgd" is Nesterov SGD, "momentum" is plain SGD).
_TIMM_NAMES = {
    torch.optim.AdamW: "adamw",
    torch.optim.Adam: "adam",
    torch.optim.RMSprop: "rmsprop",
    torch.optim.Adagrad: "adagrad",
}


def optimizer_recipe(optimizer: Optimizer) -> Dict[str, Any]:
    """Keyword arguments for ``timm.optim.create_optimizer_v2`` that rebuild ``optimizer``'s kind and settings."""
    d = optimizer.defaults
    cls = type(optimizer)
    if cls is torch.optim.SGD:
        recipe = {"opt": "sgd" if d.get("nesterov") else "momentum", "momentum": float(d.get("momentum", 0.0))}
    elif cls in _TIMM_NAMES:
        recipe = {"opt": _TIMM_NAMES[cls]}
        if cls in (torch.optim.Adam, torch.optim.AdamW):
            recipe.update(betas=tuple(d["betas"]), eps=float(d["eps"]))
    else:
        raise ConfigError(
            f"DyTox rebuilds its optimiser with timm and does not know {cls.__name__}; "
            "use adamw (the paper's), adam, sgd, rmsprop or adagrad",
            key="strategy.optimizer.name",
        )
    lr = d.get("lr")
    recipe.update(lr=float(lr if lr is not None else 0.0), weight_decay=float(d.get("weight_decay", 0.0)))
    return recipe


def find_normalization(dataset: Any) -> Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]]:
    """(mean, std) of the first ``Normalize`` in an Avalanche dataset's 'eval' transforms, or None.

    DyTox replaces the training transforms with timm's augmentation pipeline, which must
    normalise as the benchmark's evaluation transforms do.
    """
    seen = set()

    def in_transform(t: Any) -> Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]]:
        if t is None or id(t) in seen:
            return None
        seen.add(id(t))
        if type(t).__name__ == "Normalize" and hasattr(t, "mean") and hasattr(t, "std"):
            def floats(v: Any) -> Tuple[float, ...]:
                v = v.flatten().tolist() if hasattr(v, "flatten") else v
                return tuple(float(x) for x in (v if isinstance(v, (list, tuple)) else [v]))

            return floats(t.mean), floats(t.std)
        for attr in ("transforms", "transform"):
            inner = getattr(t, attr, None)
            for sub in inner if isinstance(inner, (list, tuple)) else [inner]:
                found = in_transform(sub)
                if found:
                    return found
        return None

    def in_data(node: Any, depth: int = 0) -> Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]]:
        if node is None or depth > 50:
            return None
        groups = getattr(getattr(node, "_transform_groups", None), "transform_groups", None) or {}
        found = in_transform(groups.get("eval"))
        if found:
            return found
        for child in getattr(node, "_datasets", None) or []:
            found = in_data(child, depth + 1)
            if found:
                return found
        return in_data(getattr(node, "_flat_data", None), depth + 1) if hasattr(node, "_flat_data") else None

    return in_data(dataset)


def dytox_train_transform(
    img_size: int,
    *,
    auto_augment: str = "rand-m9-mstd0.5-inc1",
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
):
    """timm's training pipeline with RandAugment (the authors' settings); on images <= 32 px the
    random-resized crop becomes resize + ``RandomCrop(img_size, padding=4)``, as the authors did on CIFAR.

    Returns a :class:`DyToxTrainTransform`: PIL images go through timm's pipeline as they are;
    image tensors too (RandAugment is PIL-only), see there."""
    from timm.data import create_transform
    from torchvision import transforms as T

    t = create_transform(
        img_size, is_training=True, auto_augment=auto_augment, interpolation="bicubic", re_prob=0.0,
        mean=tuple(mean), std=tuple(std),
    )
    if img_size <= 32:
        t.transforms[0:1] = [T.Resize((img_size, img_size), antialias=True), T.RandomCrop(img_size, padding=4)]
    for op in getattr(t, "transforms", []):
        for aug in getattr(op, "ops", []):  # timm's RandAugment
            if getattr(aug, "name", "").startswith("Posterize"):
                aug.aug_fn = _posterize
    return DyToxTrainTransform(t)


class DyToxTrainTransform:
    """DyTox's training augmentation for PIL images and for image tensors.

    timm's RandAugment works on PIL images only (on a tensor it fails deep inside timm, with a
    different error for each op it draws). A tensor image (C x H x W or H x W, 1 or 3 channels)
    is therefore turned into a PIL image exactly when that is lossless or nearly so, run through
    the same pipeline and returned as the pipeline's normalised float tensor:

    * ``uint8`` tensors: as they are;
    * floating-point tensors with values in ``[0, 1]`` (what ``ToTensor`` gives): scaled by 255
      and rounded (8-bit, as a PNG or JPEG of them);
    * anything else (values outside ``[0, 1]``, e.g. already normalised, or other channel
      counts) cannot be an image without changing it: RandAugment is skipped for those, crop,
      flip and normalisation still apply, with one warning naming ``augment: null``
      (``DyTox(augment=None)``), which keeps the benchmark's own training transforms instead.

    ``normalize_tensors=False`` leaves tensor images unnormalised (DyTox sets it when the
    benchmark's evaluation transforms have no ``Normalize``, so training sees what evaluation sees).
    """

    def __init__(self, pipeline: Any, normalize_tensors: bool = True):
        self.pipeline = pipeline
        self.normalize_tensors = bool(normalize_tensors)
        self._warned = False

    @property
    def transforms(self) -> list:
        """The steps of timm's pipeline (as ``Compose.transforms``)."""
        return self.pipeline.transforms

    def _split(self) -> Tuple[list, list]:
        """timm's pipeline as (the steps on PIL images, the steps from ``ToTensor`` on)."""
        ops = list(self.pipeline.transforms)
        at = next((i for i, op in enumerate(ops) if "ToTensor" in type(op).__name__), len(ops))
        return ops[:at], ops[at:]

    def _run_pil(self, img: Any, tail: list) -> Any:
        head, _ = self._split()
        mode = getattr(img, "mode", "RGB")
        if mode == "L":  # timm's RandAugment fills with an RGB colour: augment in RGB, back to 1 channel
            img = img.convert("RGB")
        for op in head:
            img = op(img)
        if mode == "L":
            img = img.convert("L")
        for op in tail:
            img = op(img)
        return img

    def __call__(self, img: Any) -> Any:
        _, tail = self._split()
        if not isinstance(img, torch.Tensor):
            return self._run_pil(img, tail)
        from torchvision.transforms.functional import to_pil_image

        if not self.normalize_tensors:
            tail = [op for op in tail if type(op).__name__ != "Normalize"]
        x = img.detach().cpu()
        if x.dim() == 2:
            x = x.unsqueeze(0)
        as_image = x.dim() == 3 and x.shape[0] in (1, 3)
        if as_image and x.dtype != torch.uint8:
            as_image = x.is_floating_point() and bool(x.numel()) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
            if as_image:
                x = (x * 255.0).round().to(torch.uint8)
        if as_image:
            return self._run_pil(to_pil_image(x), tail)
        if not self._warned:
            self._warned = True
            lo, hi = (float(x.min()), float(x.max())) if x.numel() else (0.0, 0.0)
            warnings.warn(
                f"DyTox: RandAugment needs images (PIL, uint8 tensors or float tensors in [0, 1]); these training "
                f"tensors ({x.dtype}, shape {tuple(img.shape)}, values in [{lo:.3g}, {hi:.3g}]) are not, so "
                "RandAugment is skipped for them (crop, flip and normalisation still apply). Give the benchmark "
                "images in [0, 1], or set augment: null (DyTox(augment=None)) to keep its own training transforms",
                stacklevel=2,
            )
        x = x.float()
        for op in self._split()[0] + tail:
            if type(op).__name__ != "RandAugment":
                x = op(x)
        return x

    def __repr__(self) -> str:
        return f"DyToxTrainTransform({self.pipeline!r}, normalize_tensors={self.normalize_tensors})"


def _posterize(img, bits_to_keep: int, **_: Any):
    """Posterize that accepts 0 bits: timm's PosterizeIncreasing reaches 0 at magnitude 10, which
    Pillow 13 rejects; older Pillow (the authors') returned a black image, as this does."""
    from PIL import ImageOps

    if bits_to_keep >= 8:
        return img
    if bits_to_keep <= 0:
        return img.point(lambda _: 0)
    return ImageOps.posterize(img, bits_to_keep)


class DyToxMemory(SupervisedPlugin):
    """DyTox's rehearsal memory: herded exemplars per class, within a budget in items or bytes.

    It holds state only (the strategy fills it) and sits in ``strategy.plugins`` so that
    streamcl's checkpoints save it: ``exemplars`` maps each class to an Avalanche subset of
    its experience's dataset, stored as sample ids and rebuilt from the benchmark on resume.
    A byte budget is turned into items once the first image is seen (raw uint8 size).
    """

    def __init__(self, memory: MemorySpec = 2000):
        super().__init__()
        self.budget: Dict[str, int] = parse_memory(memory).to_dict()  # plain dict: checkpoint-friendly
        self.capacity: Optional[int] = None
        self.item_nbytes: int = 0
        self.exemplars: Dict[int, Any] = {}

    def fix_capacity(self, dataset: Any) -> int:
        """Items the budget holds (computed once, from the first dataset's image size for a byte budget)."""
        if self.capacity is None:
            self.item_nbytes = raw_item_nbytes(dataset)
            self.capacity = parse_memory(self.budget).capacity(max(1, self.item_nbytes))
        return int(self.capacity)

    def __len__(self) -> int:
        return sum(len(ds) for ds in self.exemplars.values())

    def dataset(self, classes: Optional[Sequence[int]] = None):
        """All exemplars (of ``classes``, default all) as one Avalanche dataset, classes in label order; None if empty."""
        keys = sorted(self.exemplars) if classes is None else [c for c in sorted(classes) if c in self.exemplars]
        parts = [self.exemplars[c] for c in keys if len(self.exemplars[c])]
        return functools.reduce(lambda a, b: a.concat(b), parts) if parts else None

    def sample_ids(self) -> Dict[int, torch.Tensor]:
        """Class -> the ``sample_id`` of each exemplar (herding order), for inspection and checkpoints."""
        return {c: torch.as_tensor(list(ds.sample_id), dtype=torch.long) for c, ds in sorted(self.exemplars.items())}

    def replay_nbytes(self) -> int:
        """Bytes the exemplars take as raw uint8 images (streamcl's replay_bytes metric reads this)."""
        return len(self) * int(self.item_nbytes)


@register_strategy("dytox")
class DyTox(SupervisedTemplate):
    """DyTox: a transformer with one task token per task, KD, divergence head, herded memory and balanced finetuning.

    Needs a :class:`~streamcl.models.dytox.DyToxNet` (model ``dytox``). See the module
    docstring for the algorithm, the lr scaling rule and what the ``optimizer`` is used for.

    :param memory: rehearsal budget shared by all seen classes: items (``2000``) or bytes
        (``{bytes: 6MB}``, raw uint8 images).
    :param incremental_lr: base lr for experiences after the first (default: the optimiser's).
    :param warmup_epochs: linear warm-up epochs of the cosine schedule (at most ``train_epochs - 1``).
    :param warmup_lr: lr the warm-up starts from. :param min_lr: floor of the cosine schedule.
    :param kd_temperature: distillation temperature (the paper: 1).
    :param divergence_weight: weight of the divergence loss (the paper: 0.1; 0 disables it).
    :param finetune: run the balanced finetuning phase after every experience but the first
        (``false``: the ablation without it).
    :param finetune_epochs: epochs of that phase (the paper: 20).
    :param finetune_lr: base lr of the finetuning phase (scaled like the others, kept constant).
    :param herding_features: ``all`` task embeddings concatenated (the authors' ``icarl_all``) or the ``last``.
    :param augment: timm RandAugment policy for training images, or null to keep the
        benchmark's training transforms. PIL images and image tensors (uint8, or floats in
        ``[0, 1]``) are augmented alike; other tensors get crop and flip only, with a warning
        (see :class:`DyToxTrainTransform`).
    :param bce: binary cross-entropy on one-hot targets (the paper); False uses ``criterion``
        (default cross-entropy) on the task-ordered logits.
    """

    config_checks = {"memory": parse_memory}

    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: Optimizer,
        criterion: Optional[nn.Module] = None,
        train_mb_size: int = 128,
        train_epochs: int = 500,
        eval_mb_size: Optional[int] = None,
        device: Union[str, torch.device] = "cpu",
        plugins: Optional[Sequence[BasePlugin]] = None,
        evaluator: Any = default_evaluator,
        eval_every: int = -1,
        peval_mode: str = "epoch",
        memory: MemorySpec = 2000,
        incremental_lr: Optional[float] = None,
        warmup_epochs: int = 5,
        warmup_lr: float = 1e-6,
        min_lr: float = 1e-5,
        kd_temperature: float = 1.0,
        divergence_weight: float = 0.1,
        finetune: bool = True,
        finetune_epochs: int = 20,
        finetune_lr: float = 5e-5,
        herding_features: Literal["all", "last"] = "all",
        augment: Optional[str] = "rand-m9-mstd0.5-inc1",
        bce: bool = True,
    ):
        if not isinstance(model, DyToxNet):
            raise ConfigError(f"DyTox needs the `dytox` model (a DyToxNet), got {type(model).__name__}; "
                              "set model: {name: dytox, ...}", key="model.name")
        plugins = list(plugins or [])
        if any(isinstance(p, LRSchedulerPlugin) for p in plugins):
            raise ConfigError("DyTox runs its own warm-up + cosine schedule (timm); remove the scheduler section",
                              key="strategy.scheduler")
        for name, value in (("warmup_epochs", warmup_epochs), ("finetune_epochs", finetune_epochs)):
            if value < 0:
                raise ConfigError(f"must be >= 0, got {value}", key=f"strategy.{name}")
        if herding_features not in ("all", "last"):
            raise ConfigError(f"must be all or last, got {herding_features!r}", key="strategy.herding_features")
        self.memory_plugin = DyToxMemory(memory)
        self.recipe = optimizer_recipe(optimizer)
        self.incremental_lr = incremental_lr
        self.warmup_epochs = int(warmup_epochs)
        self.warmup_lr = float(warmup_lr)
        self.min_lr = float(min_lr)
        self.kd_temperature = float(kd_temperature)
        self.divergence_weight = float(divergence_weight)
        self.finetune_enabled = bool(finetune)
        self.finetune_epochs = int(finetune_epochs)
        self.finetune_lr = float(finetune_lr)
        self.herding_features = herding_features
        self.augment = augment if augment not in ("", "none") else None
        self.bce = bool(bce)
        self.phase: Optional[str] = None  # "main" | "finetune" while training, None otherwise
        self.old_model: Optional[DyToxNet] = None  # teacher for the current experience
        self.lr_scheduler: Any = None
        self.loss_terms: Dict[str, float] = {}  # last training step's loss parts (for logs and tests)
        self._out: Optional[DyToxOutput] = None
        self._train_transform: Any = None
        self._phase_epoch = 0
        super().__init__(
            model=model,
            optimizer=optimizer,
            criterion=criterion if criterion is not None else CrossEntropyLoss(),
            train_mb_size=train_mb_size,
            train_epochs=train_epochs,
            eval_mb_size=eval_mb_size,
            device=device,
            plugins=[self.memory_plugin] + plugins,
            evaluator=evaluator,
            eval_every=eval_every,
            peval_mode=peval_mode,
        )

    # -- memory -----------------------------------------------------------------------------

    @property
    def memory(self) -> DyToxMemory:
        """The rehearsal memory (also ``strategy.plugins[0]``)."""
        return self.memory_plugin

    def memory_sample_ids(self) -> Dict[int, torch.Tensor]:
        """Class -> sample ids of its exemplars."""
        return self.memory_plugin.sample_ids()

    @torch.no_grad()
    def extract_features(self, dataset, **kwargs) -> torch.Tensor:
        """Task-token features (N, T*C for ``all``, N, C for ``last``) of ``dataset`` with its eval transforms."""
        was_training = self.model.training
        self.model.eval()
        loader = torch.utils.data.DataLoader(
            dataset.eval(), batch_size=self.eval_mb_size or self.train_mb_size, shuffle=False,
            num_workers=int(kwargs.get("num_workers", 0) or 0),
        )
        feats = []
        for batch in loader:
            tokens = self.model.forward_features(batch[0].to(self.device))
            feats.append((tokens.flatten(1) if self.herding_features == "all" else tokens[:, -1]).float().cpu())
        self.model.train(was_training)
        return torch.cat(feats) if feats else torch.zeros(0, 0)

    def update_memory(self, experience, **kwargs) -> None:
        """Shrink old classes to the new per-class quota, herd this experience's classes (continuum's iCaRL herding)."""
        from continuum.rehearsal.herding import herd_closest_to_barycenter

        mem = self.memory_plugin
        dataset = experience.dataset
        capacity = mem.fix_capacity(dataset)
        n_seen = len(set(self.model.known_classes) | set(mem.exemplars))
        per_class = capacity // max(1, n_seen)
        targets = np.asarray([int(y) for y in dataset.targets], dtype=np.int64)
        here = sorted(set(targets.tolist()))
        for c in list(mem.exemplars):
            if c not in here:  # herding order: the first exemplars are the best ones
                ds = mem.exemplars[c]
                mem.exemplars[c] = ds.subset(list(range(min(per_class, len(ds)))))
        if per_class == 0:
            for c in here:
                mem.exemplars[c] = dataset.subset([])
            return
        features = self.extract_features(dataset, **kwargs).numpy()
        for c in here:
            idx = np.flatnonzero(targets == c)
            chosen, _, _ = herd_closest_to_barycenter(
                idx, targets[idx], np.zeros(len(idx), dtype=np.int64), features[idx], per_class
            )
            mem.exemplars[c] = dataset.subset([int(i) for i in chosen])

    # -- data -------------------------------------------------------------------------------

    def _augmented(self, dataset):
        """``dataset`` in its 'train' group, with timm's augmentation replacing the benchmark's transforms."""
        dataset = dataset.train()
        if self.augment is None:
            return dataset
        if self._train_transform is None:
            found = norm = find_normalization(dataset)
            if norm is None:
                warnings.warn("DyTox: no Normalize found in the benchmark's eval transforms; augmented PIL "
                              "training images are normalised with ImageNet statistics (tensor images are left "
                              "unnormalised, as evaluation sees them)", stacklevel=2)
                norm = (IMAGENET_MEAN, IMAGENET_STD)
            self._train_transform = dytox_train_transform(
                self.model.img_size, auto_augment=self.augment, mean=norm[0], std=norm[1]
            )
            self._train_transform.normalize_tensors = found is not None
        # A new layer that owns the transform: Avalanche's replace_current_transform_group
        # puts it on a node that subset() flattens away (the TaskBalancedDataLoader subsets).
        from avalanche.benchmarks.utils.transform_groups import TransformGroups

        return type(dataset)(
            [dataset.remove_current_transform_group()],
            transform_groups=TransformGroups({"train": self._train_transform, "eval": None}),
        )

    def train_dataset_adaptation(self, **kwargs):
        """The experience's data plus every exemplar in memory, with DyTox's augmentation."""
        dataset = self.experience.dataset
        memory = self.memory_plugin.dataset()
        if memory is not None:
            dataset = dataset.concat(memory)
        self.adapted_dataset = self._augmented(dataset)

    # -- model and optimiser ----------------------------------------------------------------

    def model_adaptation(self, model=None):
        """Training: keep a frozen copy of the network as teacher, then add a task for the new classes."""
        model = self.model if model is None else model
        if self.is_training and self.experience is not None:
            known = set(model.known_classes)
            new = [c for c in self.experience.classes_in_this_experience if int(c) not in known]
            self.old_model = None
            if new and model.n_tasks > 0:
                self.old_model = copy.deepcopy(model).to(self.device).eval()
                for p in self.old_model.parameters():
                    p.requires_grad_(False)
        return super().model_adaptation(model)

    def check_model_and_optimizer(self, reset_optimizer_state=False, **kwargs):
        """Expand the model, freeze old tokens/heads, build the main phase's optimiser and schedule."""
        if isinstance(self.experience, OnlineCLExperience):
            raise ConfigError("DyTox trains whole experiences (epochs, then a finetuning phase) and cannot run on "
                              "an online stream: train on the benchmark's experiences, not on avalanche's "
                              "split_online_stream(...) mini-experiences (in a YAML: remove benchmark.online_mb_size)",
                              key="strategy.name")
        self.model = self.model_adaptation()
        self.phase = "main"
        self.model.set_trainable(encoder=True, old_tasks=False)
        self.make_optimizer()

    def phase_lr(self) -> float:
        """The current phase's lr after the scaling rule (base lr x batch x world size / 512)."""
        base = self.recipe["lr"]
        if self.phase == "finetune":
            base = self.finetune_lr
        elif self.phase == "main" and self.incremental_lr is not None and self.model.n_tasks > 1:
            base = self.incremental_lr
        return scaled_lr(base, self.train_mb_size, world_size())

    def make_optimizer(self, reset_optimizer_state: bool = False, **kwargs):
        """A fresh timm optimiser over the parameters the current phase trains (+ the warm-up cosine schedule in the main phase).

        Outside training (``phase`` None, e.g. when a checkpoint is restored) it covers every
        parameter, so that the optimiser saved after an experience loads back.
        """
        from timm.optim import create_optimizer_v2
        from timm.scheduler import create_scheduler_v2

        if self.phase is None:
            self.model.set_trainable()
        kwargs_opt = {k: v for k, v in self.recipe.items() if k != "lr"}
        self.optimizer = create_optimizer_v2(self.model, lr=self.phase_lr(), **kwargs_opt)
        self.lr_scheduler = None
        self._phase_epoch = 0
        if self.phase == "main":
            epochs = int(self.train_epochs)
            warmup = min(self.warmup_epochs, max(0, epochs - 1))
            # `warmup` linear epochs from warmup_lr (absolute, as the authors'), then a cosine from the
            # scaled lr down to min_lr over the remaining epochs: train_epochs in all.
            self.lr_scheduler, _ = create_scheduler_v2(
                self.optimizer, sched="cosine", num_epochs=epochs - warmup, warmup_epochs=warmup,
                warmup_prefix=True, warmup_lr=self.warmup_lr, min_lr=self.min_lr,
            )

    # -- loop -------------------------------------------------------------------------------

    def _after_training_epoch(self, **kwargs):
        super()._after_training_epoch(**kwargs)
        self._phase_epoch += 1
        if self.phase == "main" and self.lr_scheduler is not None:
            self.lr_scheduler.step(self._phase_epoch)

    def _train_exp(self, experience, eval_streams=None, **kwargs):
        """Main phase (the template's epoch loop), memory update, then the balanced finetuning phase."""
        super()._train_exp(experience, eval_streams, **kwargs)
        self.phase = "memory"
        self.update_memory(experience, **kwargs)
        if self.finetune_enabled and self.finetune_epochs > 0 and self.model.n_tasks > 1 and len(self.memory_plugin) > 0:
            self.finetune(**kwargs)

    def finetune(self, **kwargs) -> None:
        """Balanced finetuning: the memory alone, encoder frozen, constant lr, BCE only; plugins' callbacks fire as usual."""
        self.phase = "finetune"
        self.model.set_trainable(encoder=False, old_tasks=True)
        if self.model.head_div is not None:  # no divergence loss here: keep it out of the optimiser
            self.model.head_div.requires_grad_(False)
        self.adapted_dataset = self._augmented(self.memory_plugin.dataset())
        self.make_train_dataloader(**kwargs)
        self.make_optimizer()
        for _ in range(self.finetune_epochs):
            self._before_training_epoch(**kwargs)
            if self._stop_training:
                self._stop_training = False
                break
            for module in (self.model.patch_embed, self.model.pos_drop, self.model.sabs):
                module.eval()  # frozen encoder: no dropout / stochastic depth either
            self.training_epoch(**kwargs)
            self._after_training_epoch(**kwargs)
        self.model.train()

    def _after_training_exp(self, **kwargs):
        """Back to the resting state (all parameters trainable, optimiser over all), then plugins' callbacks."""
        self.phase = None
        self.old_model = None
        self.make_optimizer()
        super()._after_training_exp(**kwargs)

    def _train_cleanup(self):
        super()._train_cleanup()
        self._out = None

    def _eval_cleanup(self):
        super()._eval_cleanup()
        self._out = None  # a checkpoint saves the strategy's attributes: keep tensors of a batch out of it

    # -- forward and loss -------------------------------------------------------------------

    def forward(self):
        """Run the network once; keep its full output for the loss, return label-space logits (for metrics/plugins)."""
        self._out = self.model.forward_all(self.mb_x)
        return self.model.to_label_space(self._out.logits)

    def _classification(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.bce:
            return F.binary_cross_entropy_with_logits(logits, F.one_hot(targets, logits.shape[1]).to(logits.dtype))
        return self._criterion(logits, targets)

    def criterion(self):
        """DyTox's loss in training; in evaluation the classification loss on samples of known classes."""
        out = self._out
        model: DyToxNet = self.model
        if not self.is_training or self.phase is None:
            known = torch.isin(self.mb_y, model.class_order.to(self.mb_y.device))
            if out is None or not bool(known.any()):
                return self._make_empty_loss()
            return self._classification(out.logits[known], model.columns_of(self.mb_y[known]))
        cols = model.columns_of(self.mb_y)
        cls = self._classification(out.logits, cols)
        loss = cls
        terms = {"classification": float(cls.detach()), "kd_lambda": 0.0}
        if self.phase == "main" and self.old_model is not None:
            with torch.no_grad():
                old = self.old_model.forward_all(self.mb_x).logits
            n_old, n_all = old.shape[1], out.logits.shape[1]
            lam = kd_lambda(n_old, n_all)
            tau = self.kd_temperature
            log_p_new = F.log_softmax(out.logits[:, :n_old] / tau, dim=1)
            log_p_old = F.log_softmax(old / tau, dim=1)
            # KL(old || new) averaged over batch and old classes (the authors' reduction='mean').
            kd = (log_p_old.exp() * (log_p_old - log_p_new)).mean() * tau ** 2
            loss = (1.0 - lam) * cls + lam * kd
            terms.update(kd=float(kd.detach()), kd_lambda=lam)
        if self.phase == "main" and out.div_logits is not None and self.divergence_weight > 0:
            n_new = out.div_logits.shape[1] - 1
            n_old = out.logits.shape[1] - n_new
            div = self._classification(out.div_logits, divergence_targets(cols, n_old))
            loss = loss + self.divergence_weight * div
            terms["divergence"] = float(div.detach())
        self.loss_terms = terms
        return loss
