"""Avalanche's raw-image ReplayPlugin with its budget in items or bytes.

Registered as plugin ``replay`` so that an experiment can give every replay
method the same memory: ``{name: replay, memory: {bytes: 2.26MB}}`` keeps as many
raw images as fit (a 224x224 RGB image is 150 528 bytes as uint8), next to
``{name: crumb, memory: {bytes: 2.26MB}}``. Only the budget is new; storage,
sampling and the replay data loader are Avalanche's.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Union

from avalanche.training.plugins import ReplayPlugin

from streamcl.metrics import raw_item_nbytes
from streamcl.plugins.latent_replay import parse_memory
from streamcl.registry import register_plugin


@register_plugin("replay")
class RawReplayPlugin(ReplayPlugin, supports_distributed=True):
    """Experience replay of raw images (Avalanche's ReplayPlugin); budget in items (mem_size) or memory bytes.

    Under torchrun (:mod:`streamcl.distributed`) the buffer stays the same on every rank: Avalanche's
    storage policy picks from the whole experience (not a rank's shard) with the global random
    generators, which are aligned across ranks first; the replay loader shards the buffer like the data.
    ``batch_size`` / ``batch_size_mem``, when set, are per process (default: the per-process mini-batch).
    """

    config_checks = {"memory": parse_memory}

    def __init__(
        self,
        mem_size: int = 200,
        *,
        memory: Optional[Union[int, str, Dict[str, Any]]] = None,
        batch_size: Optional[int] = None,
        batch_size_mem: Optional[int] = None,
        task_balanced_dataloader: bool = False,
    ):
        self.memory = parse_memory(memory) if memory is not None else None
        if self.memory is not None and self.memory.items is not None:
            mem_size = self.memory.items
        super().__init__(
            mem_size=mem_size,
            batch_size=batch_size,
            batch_size_mem=batch_size_mem,
            task_balanced_dataloader=task_balanced_dataloader,
        )

    def before_training_exp(self, strategy, num_workers: int = 0, shuffle: bool = True, drop_last: bool = False,
                            **kwargs):
        if self.memory is not None and self.memory.bytes is not None and len(self.storage_policy.buffer) == 0:
            # The size of a raw item is known only once data arrives: fix the capacity then.
            item = raw_item_nbytes(strategy.experience.dataset)
            self.mem_size = self.memory.capacity(item)
            self.storage_policy.max_size = self.mem_size
        return super().before_training_exp(strategy, num_workers=num_workers, shuffle=shuffle,
                                            drop_last=drop_last, **kwargs)

    def after_training_exp(self, strategy, **kwargs):
        from avalanche.distributed import DistributedHelper

        DistributedHelper.align_seeds()  # torchrun: every rank draws the same items (no-op in one process)
        return super().after_training_exp(strategy, **kwargs)

    def budget(self) -> Mapping[str, int]:
        """The configured budget (``{"items": N}`` or ``{"bytes": B}``)."""
        return self.memory.to_dict() if self.memory is not None else {"items": self.mem_size}
