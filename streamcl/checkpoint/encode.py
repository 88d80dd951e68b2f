"""Encoding: live objects -> nested containers of tensors and primitives (``torch.load(weights_only=True)``).

We walk the objects that carry training state (model, optimiser, plugins, the
strategy's own attributes, evaluator metrics, clock, RNGs) and encode them as
nested containers of tensors and primitives:

* ``nn.Module`` / optimiser / LR scheduler -> their ``state_dict()`` (a module
  also keeps its plain attributes, mode and frozen parameters);
* Avalanche datasets (replay buffers) -> the ``sample_id`` of each item, rebuilt
  on load from the benchmark (streamcl's benchmarks attach that attribute), plus
  per-item tensors a method attached (DER's logits);
* plugins and strategies with their own ``state_dict()`` (CRUMB, REMIND, WA) -> that;
* other Avalanche/streamcl objects -> their ``__dict__``, recursively, with the
  class name as a string; for a strategy, the attributes beyond the template's;
* Avalanche's not-yet-started ``cycle(DataLoader(buffer))`` replay loaders (MIR)
  -> their buffer and options;
* anything else (threads, loggers, functions, started iterators) is not saved: a
  fresh object built from the same config already holds it, or a hook rebuilds it
  (AGEM's memory loader; CoPE's model surgery is redone before the model loads).

Copies: by default every tensor is copied (the result is a snapshot). Inside :func:`live_tensors`
(what :func:`~streamcl.checkpoint.capture_strategy` uses, since the runner writes its result to
disk at once) a CPU tensor that is the whole of its storage is referenced, not copied, and
``state_dict()`` methods that honour :func:`references_live_tensors` (``CodeBuffer``) reference
their live tensors too: a GB replay buffer goes to ``torch.save`` without a second copy in memory.
Such a state must be written before the objects it came from change (training again); keep a
snapshot with ``copy.deepcopy``.
"""

from __future__ import annotations

import collections
import contextlib
import contextvars
import inspect
from typing import Any, Callable, Dict, Iterator, List, Optional

import numpy as np
import torch
from torch import nn

from streamcl.checkpoint.allowlist import _DTYPES, _factory_name
from streamcl.checkpoint.base import _ENCODED_PACKAGES, _SKIP, _qualname

_LIVE: contextvars.ContextVar[bool] = contextvars.ContextVar("streamcl_checkpoint_live_tensors", default=False)


@contextlib.contextmanager
def live_tensors() -> Iterator[None]:
    """Within this block, encoding references live CPU tensors instead of copying them (see the module doc).

    For a state written to disk before anything changes it (``capture_strategy`` then ``files.save``,
    one after the other, as the runner does): no second in-memory copy of model or buffer.
    """
    token = _LIVE.set(True)
    try:
        yield
    finally:
        _LIVE.reset(token)


def references_live_tensors() -> bool:
    """True inside :func:`live_tensors`: a ``state_dict()`` may return views of its live tensors."""
    return _LIVE.get()


def whole_storage(t: torch.Tensor) -> bool:
    """``t`` covers all of its storage, contiguously (``torch.save`` of it writes exactly its own bytes)."""
    return (t.is_contiguous() and t.storage_offset() == 0
            and t.untyped_storage().nbytes() == t.numel() * t.element_size())


def _tensor(value: torch.Tensor) -> torch.Tensor:
    """A CPU tensor to save: a copy, or (inside :func:`live_tensors`) the live one when that is safe to write."""
    t = value.detach()
    if t.device.type != "cpu":
        return t.cpu()  # already a fresh copy
    if _LIVE.get() and whole_storage(t):
        return t  # written as is: a view of a larger storage would write (and load) all of it, so those are copied
    return t.clone()


def _is_dataset(obj: Any) -> bool:
    try:
        from avalanche.benchmarks.utils import AvalancheDataset
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, AvalancheDataset)


def _skippable(obj: Any) -> bool:
    """Objects that never hold training state worth saving (back references, loggers, loaders)."""
    from avalanche.benchmarks.utils.data_loader import MultiDatasetDataLoader
    from avalanche.logging import BaseLogger
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.templates import BaseTemplate

    return isinstance(obj, (BaseTemplate, BaseLogger, EvaluationPlugin, torch.utils.data.DataLoader,
                            MultiDatasetDataLoader))


def encode(value: Any, _seen: Optional[set] = None) -> Any:
    """Encode ``value`` into tensors + primitives (``_SKIP`` when it cannot / need not be saved)."""
    seen = set() if _seen is None else _seen
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        return _tensor(value)
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biuf":
            return _SKIP
        return {"__type__": "ndarray", "data": torch.from_numpy(np.ascontiguousarray(value).copy())}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.device):
        return {"__type__": "device", "v": str(value)}
    if isinstance(value, torch.dtype):
        name = str(value).replace("torch.", "")
        return {"__type__": "dtype", "v": name} if name in _DTYPES else _SKIP
    if isinstance(value, torch.Size):
        return {"__type__": "size", "v": list(value)}
    if isinstance(value, torch.Generator):
        return {"__type__": "generator", "state": value.get_state()}
    if isinstance(value, nn.Module):
        # Plain attributes some methods keep on the model (CWR*'s past_j, cur_j, saved_weights) come along.
        extra = {k: v for k, v in vars(value).items() if not k.startswith("_") and k != "training"}
        return {"__type__": "module", "state": {k: _tensor(v) for k, v in value.state_dict().items()},
                "training": bool(value.training),
                "frozen": [n for n, p in value.named_parameters() if not p.requires_grad],
                "attrs": _encode_attrs(extra, seen)}
    if isinstance(value, torch.optim.Optimizer):
        return {"__type__": "optimizer", "state": value.state_dict()}
    if isinstance(value, torch.optim.lr_scheduler.LRScheduler):
        return {"__type__": "scheduler", "state": value.state_dict()}
    if isinstance(value, collections.defaultdict):
        return {"__type__": "defaultdict", "factory": _factory_name(value.default_factory),
                "items": _encode_items(value.items(), seen)}
    if isinstance(value, dict):
        return {"__type__": "dict", "items": _encode_items(value.items(), seen)}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [encode(v, seen) for v in value]
        if any(i is _SKIP for i in items):
            return _SKIP
        return items if isinstance(value, list) else {"__type__": type(value).__name__, "items": items}
    if inspect.isgenerator(value):
        return _encode_cycle_loader(value, seen)
    if _is_dataset(value):
        ids = _sample_ids(value)
        extra = _extra_attributes(value)
        if ids is None or extra is None:
            return _SKIP
        return {"__type__": "dataset", "ids": ids, "group": _transform_group(value), "extra": extra}
    if hasattr(value, "state_dict") and hasattr(value, "load_state_dict") and not isinstance(value, type):
        return {"__type__": "custom", "cls": _qualname(value), "state": value.state_dict()}
    if type(value).__module__.startswith(_ENCODED_PACKAGES) and hasattr(value, "__dict__"):
        if id(value) in seen or _skippable(value):
            return _SKIP
        seen.add(id(value))
        return {"__type__": "object", "cls": _qualname(value), "attrs": _encode_attrs(vars(value), seen)}
    return _SKIP


def _cycle_functions() -> Dict[str, Callable[[Any], Any]]:
    """Avalanche's endless replay-loader generators (``cycle(loader)``), by exact name."""
    from avalanche.training import utils as training_utils
    from avalanche.training.plugins import mir

    return {"avalanche.training.utils:cycle": training_utils.cycle, "avalanche.training.plugins.mir:cycle": mir.cycle}


def _encode_cycle_loader(value: Any, seen: set) -> Any:
    """An Avalanche ``cycle(DataLoader(buffer, ...))`` generator that has not started, as its buffer and options.

    MIR builds such a replay loader at the end of an experience (so it is live at checkpoint
    time) over a buffer that depends on the last training mini-batch, gone after evaluation:
    save what it iterates over. A started generator cannot be saved (_SKIP).
    """
    from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler
    from torch.utils.data._utils.collate import default_collate

    name = next((n for n, f in _cycle_functions().items() if value.gi_code is f.__code__), None)
    if name is None or inspect.getgeneratorstate(value) != inspect.GEN_CREATED:
        return _SKIP
    loader = inspect.getgeneratorlocals(value).get("loader")
    if not isinstance(loader, torch.utils.data.DataLoader) or loader.num_workers or loader.collate_fn is not \
            default_collate or not isinstance(loader.batch_sampler, BatchSampler):
        return _SKIP
    sampler = loader.sampler
    if isinstance(sampler, RandomSampler):
        if sampler.replacement or sampler._num_samples is not None or sampler.generator is not None:
            return _SKIP
    elif not isinstance(sampler, SequentialSampler):
        return _SKIP
    dataset = encode(loader.dataset, seen)
    if dataset is _SKIP:
        return _SKIP
    return {"__type__": "cycle_loader", "fn": name, "dataset": dataset, "batch_size": int(loader.batch_size),
            "shuffle": isinstance(sampler, RandomSampler), "drop_last": bool(loader.drop_last)}


def _encode_attrs(attrs: Dict[str, Any], seen: set) -> Dict[str, Any]:
    out = {}
    for k, v in attrs.items():
        enc = encode(v, seen)
        if enc is not _SKIP:
            out[k] = enc
    return out


def _encode_items(items, seen) -> List[List[Any]]:
    out = []
    for k, v in items:
        ek, ev = encode(k, seen), encode(v, seen)
        if ek is not _SKIP and ev is not _SKIP:
            out.append([ek, ev])
    return out


# Data attributes every streamcl benchmark dataset has: rebuilt from the benchmark by sample id.
_BENCHMARK_ATTRIBUTES = ("targets", "targets_task_labels", "sample_id")


def _extra_attributes(ds) -> Optional[Dict[str, Any]]:
    """Per-item tensors a method attached to a buffer (DER's ``logits``), which the benchmark cannot rebuild.

    None when an extra attribute is not one tensor per item (the dataset is then not saved).
    """
    out = {}
    for name, attr in getattr(ds, "_data_attributes", {}).items():
        if name in _BENCHMARK_ATTRIBUTES:
            continue
        items = [attr[i] for i in range(len(attr))]
        if not items or not all(isinstance(t, torch.Tensor) and t.shape == items[0].shape for t in items):
            return None
        out[name] = {"values": torch.stack([t.detach().cpu() for t in items]), "getitem": bool(attr.use_in_getitem)}
    return out


def _sample_ids(ds) -> Optional[torch.Tensor]:
    try:
        ids = ds.sample_id
    except AttributeError:
        return None
    return torch.as_tensor(list(ids), dtype=torch.int64)


def _transform_group(ds) -> str:
    try:
        return ds._flat_data._transform_groups.current_group
    except AttributeError:
        return "train"
