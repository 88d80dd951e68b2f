"""CRUMB's offline pretraining as an Avalanche strategy (head + codebook, optionally the trunk).

The paper pretrains the classifier head and the memory blocks on a base set (ImageNet)
with ``CE(head(decode(encode(f)))) + CE(head(f))``, ``f = trunk(x)``, before any stream.
Written as a :class:`~avalanche.training.templates.SupervisedTemplate` so that it gets
what every Avalanche training gets: the evaluation plugin's metrics (loss and accuracy of the
reconstructed path per epoch), its loggers (TensorBoard, a progress bar) and plugins.
What is specific to CRUMB is small and overridden here: the forward pass (two paths through
the head), the criterion (their sum), the data loader (plain shuffled batches from a seeded
generator, no task balancing: pretraining sees one offline dataset), and a kept optimiser.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, List, Optional, Sequence, Union

import torch
from avalanche.benchmarks.scenarios.dataset_scenario import DatasetExperience
from avalanche.benchmarks.scenarios.generic_scenario import EagerCLStream
from avalanche.training.plugins import EvaluationPlugin
from avalanche.training.templates import SupervisedTemplate
from torch import Tensor, nn
from torch.utils.data import DataLoader

from streamcl.faults import failpoint
from streamcl.models.codebook import MemoryBlockCodec

__all__ = ["CRUMBPretraining"]


class _TwoPaths(nn.Module):
    """The network being pretrained: ``forward`` is the reconstructed path; the direct one is kept for the loss."""

    def __init__(self, cut: Any, codec: MemoryBlockCodec, features: bool, direct_loss: bool,
                 input_transform: Optional[Callable[[Tensor], Tensor]] = None):
        super().__init__()
        self.net = cut.model  # registered, so that the strategy moves and trains the whole network
        self.codec = codec
        self.cut = cut
        self.features = features  # batches hold trunk outputs already (cache_features)
        self.direct_loss = direct_loss
        self.input_transform = input_transform  # e.g. DeviceNormalize for uint8 frame-cache batches
        self.direct: Optional[Tensor] = None

    def forward(self, x: Tensor) -> Tensor:
        if self.input_transform is not None and not self.features:
            x = self.input_transform(x)
        f = x if self.features else self.cut.trunk(x)
        if not self.codec.is_fitted:  # a "first_batch" codebook initialisation
            self.codec.fit(f)
        out = self.cut.head(self.codec.decode(self.codec.encode(f)))
        # The direct path after the reconstructed one, and only when the loss uses it: a head with
        # BatchNorm updates its running statistics on each call, in call order.
        self.direct = self.cut.head(f) if self.direct_loss else None
        return out


def _with_task_labels(batch: Sequence[Any]) -> List[Any]:
    """Collate ``(x, y[, t, ...])`` items; batches without task labels get task 0 (Avalanche unpacks three)."""
    from torch.utils.data import default_collate

    out = list(default_collate(batch))
    out[1] = torch.as_tensor(out[1]).long()
    if len(out) == 2:
        out.append(torch.zeros(len(out[1]), dtype=torch.long))
    return out


def evaluation_plugin(*metrics: Any, loggers: Sequence[Any] = ()) -> EvaluationPlugin:
    """Avalanche's EvaluationPlugin, without its "no loggers" warning: the metrics are still collected
    (``strategy.evaluator.get_all_metrics()``), which is all a Python caller of the pretraining may want."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No loggers specified")
        return EvaluationPlugin(*metrics, loggers=list(loggers))


class _TaskLabelled:
    """A ready ``DataLoader`` whose batches get task labels 0 when they have none (re-iterable)."""

    def __init__(self, loader: DataLoader):
        self.loader = loader

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            batch = list(batch)
            batch[1] = torch.as_tensor(batch[1]).long()
            if len(batch) == 2:
                batch.append(torch.zeros(len(batch[1]), dtype=torch.long))
            yield batch


class CRUMBPretraining(SupervisedTemplate):
    """``CE(head(decode(encode(f)))) + CE(head(f))`` over one offline dataset, as an Avalanche strategy.

    Built by :func:`streamcl.plugins.crumb.pretrain_crumb` (see it for the arguments);
    :meth:`run` trains and returns the mean loss of each epoch.
    """

    def __init__(self, *, cut: Any, codec: MemoryBlockCodec, data: Any, optimizer: torch.optim.Optimizer,
                 params: List[nn.Parameter], mb_size: int, epochs: int, device: Union[str, torch.device],
                 direct_loss: bool = True, clamp: Optional[float] = None, features: bool = False,
                 max_steps: Optional[int] = None, shuffle: bool = True, num_workers: int = 0,
                 seed: Optional[int] = None, evaluator: Any = None, plugins: Optional[List[Any]] = None,
                 input_transform: Optional[Callable[[Tensor], Tensor]] = None):
        super().__init__(
            model=_TwoPaths(cut, codec, features, direct_loss, input_transform), optimizer=optimizer,
            criterion=nn.CrossEntropyLoss(), train_mb_size=mb_size, train_epochs=int(epochs), device=device,
            plugins=plugins, evaluator=evaluator if evaluator is not None else evaluation_plugin(), eval_every=-1,
        )
        self._data = data
        self._params = params
        self._direct_loss = direct_loss
        self._clamp = clamp
        self._max_steps = max_steps
        self._shuffle = shuffle
        self._workers = num_workers
        self._seed = seed
        self._steps = 0
        self._epoch_sum = 0.0
        self._epoch_count = 0
        self.history: List[float] = []

    def run(self) -> List[float]:
        """Train every epoch over the dataset; returns the mean loss of each epoch."""
        # One experience in a one-experience stream (Avalanche's callbacks expect an origin stream).
        stream = EagerCLStream("pretrain", [DatasetExperience(dataset=self._data, current_experience=0)])
        self.train(stream[0], eval_streams=[])
        return self.history

    # -- what differs from a plain supervised strategy ------------------------------------
    def train_dataset_adaptation(self, **kwargs):
        self.adapted_dataset = self._data  # the dataset as given (its own transforms), no group switch

    def make_train_dataloader(self, num_workers=0, shuffle=True, pin_memory=None, persistent_workers=False,
                              **kwargs):
        if isinstance(self.adapted_dataset, DataLoader):  # a ready loader: its batches, task labels added
            self.dataloader = _TaskLabelled(self.adapted_dataset)
            return
        g = torch.Generator()
        if self._seed is not None:
            g.manual_seed(int(self._seed))
        self.dataloader = DataLoader(self.adapted_dataset, batch_size=self.train_mb_size, shuffle=self._shuffle,
                                     num_workers=self._workers, generator=g, collate_fn=_with_task_labels)

    def make_optimizer(self, **kwargs):
        pass  # the optimiser given holds exactly the parameters to train (head, codebook[, trunk])

    def model_adaptation(self, model=None):
        return self.model

    def criterion(self):
        loss = self._criterion(self.mb_output, self.mb_y)
        if self._direct_loss:
            loss = loss + self._criterion(self.model.direct, self.mb_y)
        return loss

    def _after_backward(self, **kwargs):
        if self._clamp is not None:
            for p in self._params:
                if p.grad is not None:
                    p.grad.data.clamp_(-self._clamp, self._clamp)
        super()._after_backward(**kwargs)

    def _after_training_iteration(self, **kwargs):
        failpoint("pretrain_step")
        self._epoch_sum += float(self.loss.detach().sum()) * len(self.mb_y)
        self._epoch_count += len(self.mb_y)
        self._steps += 1
        super()._after_training_iteration(**kwargs)
        if self._max_steps is not None and self._steps >= self._max_steps:
            self.stop_training()

    def _after_training_epoch(self, **kwargs):
        self.history.append(self._epoch_sum / max(self._epoch_count, 1))
        self._epoch_sum, self._epoch_count = 0.0, 0
        super()._after_training_epoch(**kwargs)
