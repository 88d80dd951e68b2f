"""Checkpoints that streamcl owns: tensors and plain values only, restored into live objects.

Avalanche's ``save_checkpoint`` pickles the whole strategy with dill, which
breaks with torch 2.14 and can only be read back with ``weights_only=False``
(arbitrary code on load). Instead we walk the objects that carry training state
(model, optimiser, plugins, the strategy's own attributes, evaluator metrics,
clock, RNGs) and encode them as nested containers of tensors and primitives,
readable with ``torch.load(weights_only=True)``:

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

Restoring never imports or calls anything a checkpoint names. ``weights_only``
only protects the unpickling; a checkpoint of plain dicts could still name any
class, so the restore step is the security boundary:

* state is loaded INTO the objects of a freshly built strategy (same config, so
  the same plugins, metrics and buffers exist); an entry whose class name is not
  exactly the live object's (string comparison, nothing imported) is refused;
* the few objects Avalanche creates during training, which a fresh strategy
  does not have yet (storage-policy sub-buffers, ``ParamData`` importances, the
  ``Mean``/``Accuracy`` of a ``defaultdict`` metric), are created only from
  :func:`_creatable`, an explicit list of exact classes whose instances are
  plain state containers; ``defaultdict`` factories come from the same list;
* config-derived immutable values (frozen dataclasses such as a plugin's
  ``MemoryBudget``) are never set: the checkpoint's value must equal the fresh
  object's;
* attribute names must be plain identifiers that do not shadow a method,
  property or other descriptor of the object's class.

Anything malformed raises :class:`~streamcl.errors.CheckpointError`, one line
naming the file, the entry at fault and the fix (``--restart``).
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import functools
import inspect
import os
import random
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from streamcl.errors import CheckpointError
from streamcl.faults import failpoint

FORMAT = 1
# Objects of these packages are saved through their ``__dict__``. Encoding only: restoring never imports.
_ENCODED_PACKAGES = ("avalanche.", "streamcl.")
_SKIP = object()  # marker: value not saved
_RESTART = "rerun with --restart to discard it"


class _Malformed(Exception):
    """Checkpoint content that cannot be restored; the message names the entry (the caller adds the file)."""


def _qualname(obj_or_cls: Any) -> str:
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    return f"{cls.__module__}:{cls.__qualname__}"


def _first_line(e: BaseException, limit: int = 200) -> str:
    """``Type: first line`` of an exception, on one line (some, like EOFError from an empty file, have no message).

    A first line ending in ':' (torch's "Error(s) in loading state_dict for X:") gets the next one too.
    """
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = " ".join(lines[:2]) if len(lines) > 1 and lines[0].endswith(":") else (lines[0] if lines else "")
    return f"{type(e).__name__}: {text[:limit]}" if text else type(e).__name__


# --------------------------------------------------------------------------- allow-lists


_BUILTIN_FACTORIES: Dict[str, Callable[[], Any]] = {"list": list, "dict": dict, "set": set, "int": int,
                                                    "float": float}

# Every dtype a saved ``torch.dtype`` may name (looked up by exact string, never by getattr).
_DTYPES: Dict[str, torch.dtype] = {
    str(d).replace("torch.", ""): d
    for d in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64, torch.complex128,
              torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool)
}


@dataclass(frozen=True)
class _Maker:
    """How to create one allow-listed class: empty (no ``__init__``), a few defaults, attributes it must get."""

    cls: type
    defaults: Tuple[Tuple[str, Any], ...] = ()
    required: Tuple[str, ...] = ()

    def make(self, attrs: Dict[str, Any], at: str) -> Any:
        missing = [a for a in self.required if a not in attrs]
        _need(not missing, at, f"a {self.cls.__name__} without its {missing}, which the checkpoint could not hold "
                               "(e.g. samples without sample ids): this method cannot resume")
        obj = self.cls.__new__(self.cls)
        obj.__dict__.update(self.defaults)
        return obj


@functools.lru_cache(maxsize=1)
def _creatable() -> Dict[str, _Maker]:
    """Exact classes a checkpoint may create (``"module:qualname"`` -> maker), when a fresh strategy lacks them.

    Only plain state containers that Avalanche builds during training belong here; each is
    created empty and then filled with restored attributes. Written out by hand on purpose:
    no prefix matching, no import of a name read from a checkpoint.
    """
    from avalanche.evaluation.metrics import Accuracy, Mean, Sum
    from avalanche.training.storage_policy import (
        RandomExemplarsSelectionStrategy,
        ReservoirSamplingBuffer,
        _ParametricSingleBuffer,
    )
    from avalanche.training.utils import ParamData

    makers = [
        # Sub-buffers of ExperienceBalancedBuffer / ClassBalancedBuffer / ParametricBuffer (one per group
        # seen); the selection strategy of a parametric group (stateless).
        _Maker(ReservoirSamplingBuffer, required=("_buffer",)),
        _Maker(_ParametricSingleBuffer, (("_curr_strategy", None),), required=("_buffer",)),
        _Maker(RandomExemplarsSelectionStrategy),
        # Per-parameter importances / anchors of EWC, MAS, SI, RWalk. Avalanche always builds them with
        # the default init_function (torch.zeros), which is a function and therefore not saved.
        _Maker(ParamData, (("init_function", torch.zeros),), required=("_data",)),
        # Per-task accumulators of the evaluation metrics (``defaultdict(Mean)``, ``defaultdict(Accuracy)``).
        _Maker(Mean),
        _Maker(Sum),
        _Maker(Accuracy),
    ]
    return {_qualname(m.cls): m for m in makers}


@functools.lru_cache(maxsize=1)
def _factories() -> Dict[str, Callable[[], Any]]:
    """``defaultdict`` factories a checkpoint may name: builtins and the metric accumulators above."""
    from avalanche.evaluation.metrics import Accuracy, Mean, Sum

    out = dict(_BUILTIN_FACTORIES)
    for cls in (Mean, Sum, Accuracy):
        out[_qualname(cls)] = cls
    return out


def _factory_name(factory: Any) -> Optional[str]:
    """How a ``defaultdict`` factory is saved (None: a lambda or local function, the live object's is kept)."""
    if factory in (list, dict, set, int, float):
        return factory.__name__
    if isinstance(factory, type) and factory.__module__.startswith(_ENCODED_PACKAGES):
        return _qualname(factory)
    return None


# --------------------------------------------------------------------------- encoding


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
        return value.detach().cpu().clone()
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
        return {"__type__": "module", "state": {k: v.detach().cpu().clone() for k, v in value.state_dict().items()},
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


# --------------------------------------------------------------------------- decoding


@dataclass
class RestoreContext:
    """What decoding needs from the live run: fresh module copies and datasets by sample id."""

    module_factory: Optional[Callable[[], nn.Module]] = None
    dataset_from_ids: Optional[Callable[[torch.Tensor], Any]] = None


def _need(cond: bool, at: str, what: str) -> None:
    if not cond:
        raise _Malformed(f"{at}: {what}")


def _field(enc: Dict[str, Any], key: str, types: Any, at: str) -> Any:
    _need(key in enc, at, f"has no '{key}'")
    _need(isinstance(enc[key], types), at, f"'{key}' is a {type(enc[key]).__name__}")
    return enc[key]


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def restore(current: Any, enc: Any, ctx: RestoreContext, _at: str = "entry") -> Any:
    """Return the value ``enc`` decodes to, loading into ``current`` (the live value) in place where possible.

    Raises CheckpointError (without a file name: :func:`restore_strategy` adds it) for anything
    malformed or not allowed.
    """
    try:
        return _restore(current, enc, ctx, _at)
    except _Malformed as e:
        raise CheckpointError(str(e)) from None


def _restore(current: Any, enc: Any, ctx: RestoreContext, at: str) -> Any:
    if enc is None or isinstance(enc, (bool, int, float, str)):
        return enc
    if isinstance(enc, torch.Tensor):
        return enc.to(current.device) if isinstance(current, torch.Tensor) else enc
    if isinstance(enc, list):
        live = current if isinstance(current, list) else []
        items = [_restore(live[i] if i < len(live) else None, e, ctx, f"{at}[{i}]") for i, e in enumerate(enc)]
        if isinstance(current, list):
            current[:] = items  # in place: other references to the live list see the restored items
            return current
        return items
    _need(isinstance(enc, dict) and isinstance(enc.get("__type__"), str), at,
          f"unexpected {type(enc).__name__} (not written by streamcl)")
    decoder = _DECODERS.get(enc["__type__"])
    _need(decoder is not None, at, f"unknown entry type {enc['__type__']!r}")
    return decoder(current, enc, ctx, at)


def _dec_ndarray(current, enc, ctx, at):
    data = _field(enc, "data", torch.Tensor, at)
    return data.numpy().copy()


def _dec_device(current, enc, ctx, at):
    v = _field(enc, "v", str, at)
    try:
        return torch.device(v)
    except (RuntimeError, ValueError):
        raise _Malformed(f"{at}: {v!r} is not a device") from None


def _dec_dtype(current, enc, ctx, at):
    v = _field(enc, "v", str, at)
    _need(v in _DTYPES, at, f"{v!r} is not a tensor dtype")
    return _DTYPES[v]


def _dec_size(current, enc, ctx, at):
    v = _field(enc, "v", list, at)
    _need(all(_is_int(s) and s >= 0 for s in v), at, "a size holds something other than non-negative ints")
    return torch.Size(v)


def _dec_generator(current, enc, ctx, at):
    state = _field(enc, "state", torch.Tensor, at)
    _need(state.dtype == torch.uint8, at, "generator state is not a byte tensor")
    g = current if isinstance(current, torch.Generator) else torch.Generator()
    g.set_state(state)
    return g


def _load_module(module: nn.Module, state: Dict[str, Any]) -> None:
    """``load_state_dict``, strict about names and shapes.

    When the saved names are exactly the module's own, torch's strict key walk is skipped: it trips
    over modules registered under dotted names (Avalanche's CoPE adds ``"head.fc"`` to the model).
    Shapes are still checked by torch either way.
    """
    if set(state) == set(module.state_dict()):
        module.load_state_dict(state, strict=False)
    else:
        module.load_state_dict(state)  # raises, naming the missing / unexpected keys


def _dec_module(current, enc, ctx, at):
    state = _field(enc, "state", dict, at)
    _need(all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()), at,
          "module state holds something other than named tensors")
    attrs = enc.get("attrs", {})
    _need(isinstance(attrs, dict), at, "module attributes are not a mapping")
    module = current
    if not isinstance(module, nn.Module):
        _need(ctx.module_factory is not None, at, "holds a model copy but no model is available to rebuild it")
        module = ctx.module_factory()
        # A copy kept by a method (LwF's previous model, WA's teacher) is often frozen / in eval mode.
        # (A live module's flags are the strategy's business: it sets them when training starts.)
        training, frozen = enc.get("training"), enc.get("frozen")
        if isinstance(training, bool):
            module.train(training)
        if isinstance(frozen, list) and all(isinstance(n, str) for n in frozen):
            for n, p in module.named_parameters():
                p.requires_grad_(n not in frozen)
    _load_module(module, state)
    for k, v in attrs.items():
        _check_attr_name(module, k, at)
        _need(not k.startswith("_") and k != "training", at, f"refusing to set module internal {k!r}")
        value = _restore(getattr(module, k, None), v, ctx, f"{at}.{k}")
        _need(not isinstance(value, (nn.Module, nn.Parameter)), at, f"attribute {k!r} would register a submodule")
        setattr(module, k, value)
    return module


def _dec_state_dict_owner(current, enc, ctx, at):
    state = _field(enc, "state", dict, at)
    if current is None:  # the fresh strategy has none (e.g. no scheduler configured): nothing to load into
        return None
    kind = torch.optim.Optimizer if enc["__type__"] == "optimizer" else torch.optim.lr_scheduler.LRScheduler
    _need(isinstance(current, kind), at, f"holds an {enc['__type__']} where this experiment has a "
                                         f"{type(current).__name__}")
    current.load_state_dict(state)
    return current


def _load_own_state(obj: Any, state: Dict[str, Any], ctx: RestoreContext) -> None:
    """``obj.load_state_dict(state)``, handing over ``dataset_from_ids`` when it declares that parameter."""
    try:
        wants = "dataset_from_ids" in inspect.signature(obj.load_state_dict).parameters
    except (TypeError, ValueError):
        wants = False
    if wants:
        obj.load_state_dict(state, dataset_from_ids=ctx.dataset_from_ids)
    else:
        obj.load_state_dict(state)


def _dec_custom(current, enc, ctx, at):
    cls = _field(enc, "cls", str, at)
    _need(current is not None, at, f"holds a {cls} that this experiment does not have")
    _need(_qualname(current) == cls, at, f"holds a {cls} where this experiment has a {_qualname(current)}")
    _load_own_state(current, _field(enc, "state", dict, at), ctx)
    return current


def _dec_dict(current, enc, ctx, at):
    items = _field(enc, "items", list, at)
    if enc["__type__"] == "defaultdict":
        name = enc.get("factory")
        _need(name is None or isinstance(name, str), at, "defaultdict factory is not a name")
        if isinstance(current, collections.defaultdict):
            live_name = _factory_name(current.default_factory)
            _need(name is None or live_name is None or name == live_name, at,
                  f"defaultdict factory {name} differs from this experiment's {live_name}")
            factory = current.default_factory
        elif name is None:
            factory = None  # a lambda in the saved run and nothing live to take it from: plain mapping
        else:
            _need(name in _factories(), at, f"defaultdict factory {name} is not on streamcl's allow-list")
            factory = _factories()[name]
        fresh: Dict[Any, Any] = collections.defaultdict(factory)
    else:
        fresh = collections.OrderedDict() if isinstance(current, collections.OrderedDict) else {}
    live = current if isinstance(current, dict) else {}
    pairs = []
    for i, pair in enumerate(items):
        _need(isinstance(pair, list) and len(pair) == 2, f"{at}[{i}]", "is not a key/value pair")
        key = _restore(None, pair[0], ctx, f"{at}[{i}].key")
        try:
            old = live.get(key)  # never live[key]: that would call a defaultdict's factory
        except TypeError:
            raise _Malformed(f"{at}[{i}]: key of type {type(key).__name__} is not hashable") from None
        pairs.append((key, _restore(old, pair[1], ctx, f"{at}[{key!r}]")))
    same_kind = isinstance(current, dict) and type(current) is type(fresh)
    out = current if same_kind else fresh
    out.clear()  # in place when the live mapping has the saved kind: its other references stay valid
    for key, value in pairs:
        out[key] = value
    return out


def _dec_collection(current, enc, ctx, at):
    kind = enc["__type__"]
    items = _field(enc, "items", list, at)
    live = list(current) if kind == "tuple" and isinstance(current, tuple) and len(current) == len(items) else []
    values = [_restore(live[i] if live else None, e, ctx, f"{at}[{i}]") for i, e in enumerate(items)]
    if kind == "tuple":
        return tuple(values)
    try:
        return set(values) if kind == "set" else frozenset(values)
    except TypeError:
        raise _Malformed(f"{at}: a {kind} holds an unhashable value") from None


def _dec_dataset(current, enc, ctx, at):
    ids = _field(enc, "ids", torch.Tensor, at)
    _need(ids.dtype == torch.int64 and ids.dim() == 1, at, "sample ids are not a 1-D int64 tensor")
    group = enc.get("group", "train")
    _need(group in ("train", "eval"), at, f"transform group {group!r} is not 'train' or 'eval'")
    _need(ctx.dataset_from_ids is not None, at, "holds a replay buffer but the benchmark cannot rebuild samples by id")
    extra = enc.get("extra", {})
    _need(isinstance(extra, dict), at, "extra attributes are not a mapping")
    ds = ctx.dataset_from_ids(ids)
    for name, attr in extra.items():
        _need(isinstance(name, str) and name.isidentifier() and name not in _BENCHMARK_ATTRIBUTES
              and name not in getattr(ds, "_data_attributes", {}), at, f"extra attribute {name!r} is not allowed")
        _need(isinstance(attr, dict) and isinstance(attr.get("values"), torch.Tensor)
              and isinstance(attr.get("getitem"), bool), f"{at}.{name}", "is not a tensor attribute")
        _need(attr["values"].dim() >= 1 and len(attr["values"]) == len(ids), f"{at}.{name}",
              f"holds {len(attr['values'])} values for {len(ids)} items")
        ds = _with_attribute(ds, name, attr["values"], attr["getitem"])
    return ds.eval() if group == "eval" else ds.train()


def _with_attribute(ds: Any, name: str, values: torch.Tensor, getitem: bool) -> Any:
    """``ds`` with a per-item tensor attribute, built the way Avalanche's DER attaches its logits."""
    from avalanche.benchmarks.utils import make_avalanche_dataset
    from avalanche.benchmarks.utils.data_attribute import TensorDataAttribute
    from avalanche.benchmarks.utils.flat_data import FlatData

    rows = [v.clone() for v in values]
    attr = TensorDataAttribute(FlatData([rows], discard_elements_not_in_indices=True), name=name,
                               use_in_getitem=getitem)
    return make_avalanche_dataset(ds, data_attributes=[attr])


def _dec_cycle_loader(current, enc, ctx, at):
    batch_size, shuffle, drop_last = enc.get("batch_size"), enc.get("shuffle"), enc.get("drop_last")
    _need(_is_int(batch_size) and batch_size > 0 and isinstance(shuffle, bool) and isinstance(drop_last, bool), at,
          "replay loader options are not a positive batch size and two flags")
    fn = _cycle_functions().get(_field(enc, "fn", str, at))
    _need(fn is not None, at, f"{enc['fn']!r} is not one of Avalanche's replay-loader generators")
    dataset = _restore(None, _field(enc, "dataset", dict, at), ctx, f"{at}.dataset")
    _need(_is_dataset(dataset), f"{at}.dataset", "is not a replay buffer")
    # Built again as it was; it draws nothing until its first batch, from the RNG restored after this.
    return fn(torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last))


def _is_frozen_dataclass(obj: Any) -> bool:
    params = getattr(type(obj), "__dataclass_params__", None)
    return dataclasses.is_dataclass(obj) and params is not None and bool(params.frozen)


def _check_attr_name(obj: Any, name: Any, at: str) -> None:
    """Attribute names a checkpoint may set: identifiers that are no dunder, method, property or descriptor."""
    _need(isinstance(name, str) and name.isidentifier(), at, f"attribute name {name!r} is not an identifier")
    _need(not (name.startswith("__") and name.endswith("__")), at, f"refusing to set special attribute {name!r}")
    static = inspect.getattr_static(type(obj), name, None)
    _need(static is None or not (callable(static) or hasattr(type(static), "__get__")), at,
          f"refusing to replace {type(obj).__name__}.{name}, a method or descriptor of its class")


def _dec_object(current, enc, ctx, at):
    cls = _field(enc, "cls", str, at)
    attrs = _field(enc, "attrs", dict, at)
    if current is not None:
        # A live object of the fresh strategy: only the very same class may be loaded into it.
        _need(_qualname(current) == cls, at, f"holds a {cls} where this experiment has a {_qualname(current)}")
        obj = current
    else:
        maker = _creatable().get(cls)
        _need(maker is not None, at, f"names class {cls}, which a checkpoint may not create (not on streamcl's "
                                     "allow-list of state containers)")
        obj = maker.make(attrs, at)
    if _is_frozen_dataclass(obj):
        # Config-derived and immutable (e.g. a plugin's MemoryBudget): the fresh object already has it.
        for k, v in attrs.items():
            _check_attr_name(obj, k, at)
            saved = _restore(None, v, ctx, f"{at}.{k}")
            _need(_plain_equal(saved, getattr(obj, k, _SKIP)), at,
                  f"{k}={saved!r} differs from this experiment's {getattr(obj, k, None)!r} (the config changed)")
        return obj
    for k, v in attrs.items():
        _check_attr_name(obj, k, at)
        setattr(obj, k, _restore(getattr(obj, k, None), v, ctx, f"{at}.{k}"))
    return obj


def _plain_equal(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # tensors and the like: never equal to a config value
        return False


_DECODERS: Dict[str, Callable[[Any, Dict[str, Any], RestoreContext, str], Any]] = {
    "ndarray": _dec_ndarray,
    "device": _dec_device,
    "dtype": _dec_dtype,
    "size": _dec_size,
    "generator": _dec_generator,
    "module": _dec_module,
    "optimizer": _dec_state_dict_owner,
    "scheduler": _dec_state_dict_owner,
    "custom": _dec_custom,
    "dict": _dec_dict,
    "defaultdict": _dec_dict,
    "tuple": _dec_collection,
    "set": _dec_collection,
    "frozenset": _dec_collection,
    "dataset": _dec_dataset,
    "cycle_loader": _dec_cycle_loader,
    "object": _dec_object,
}


# --------------------------------------------------------------------------- RNG


def rng_state() -> Dict[str, Any]:
    """Python, NumPy and torch RNG states (CUDA too when present)."""
    state = {
        "python": encode(random.getstate()),
        "numpy": encode(np.random.get_state()),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _checked_rng_state(state: Any) -> Tuple[Any, Any, torch.Tensor, Optional[List[torch.Tensor]]]:
    """Decode and validate every part of an RNG state on scratch generators, touching no global RNG."""
    _need(isinstance(state, dict), "rng", f"is a {type(state).__name__}, not a mapping")
    for key in ("python", "numpy", "torch"):
        _need(key in state, "rng", f"has no '{key}' state")
    ctx = RestoreContext()
    try:
        py = _restore(None, state["python"], ctx, "rng.python")
        _need(isinstance(py, tuple) and len(py) == 3 and isinstance(py[1], tuple), "rng.python",
              "is not a Python random state")
        random.Random().setstate(py)  # validates version, length and ranges
        np_state = _restore(None, state["numpy"], ctx, "rng.numpy")
        _need(isinstance(np_state, tuple) and len(np_state) == 5, "rng.numpy", "is not a NumPy random state")
        np.random.RandomState().set_state(np_state)
        torch_state = state["torch"]
        _need(isinstance(torch_state, torch.Tensor) and torch_state.dtype == torch.uint8, "rng.torch",
              "is not a byte tensor")
        torch.Generator().set_state(torch_state)
    except _Malformed:
        raise
    except Exception as e:  # the generators' own checks raise TypeError, ValueError, RuntimeError ...
        raise _Malformed(f"rng: not a valid random state ({_first_line(e)})") from None
    cuda = state.get("cuda")
    if cuda is not None:
        _need(isinstance(cuda, list) and all(isinstance(t, torch.Tensor) and t.dtype == torch.uint8 for t in cuda),
              "rng.cuda", "is not a list of byte tensors")
        if torch.cuda.is_available():
            _need(len(cuda) <= torch.cuda.device_count(), "rng.cuda", "holds more devices than this machine has")
            for i, t in enumerate(cuda):
                _need(t.numel() == torch.cuda.get_rng_state(i).numel(), "rng.cuda", f"device {i} state has "
                      "the wrong size")
    return py, np_state, torch_state, cuda


def check_rng_state(state: Any, where: Any = "checkpoint") -> None:
    """Raise CheckpointError (naming ``where``) unless ``state`` is a complete, valid :func:`rng_state`."""
    try:
        _checked_rng_state(state)
    except _Malformed as e:
        raise CheckpointError(f"{where}: {e}; {_RESTART}") from None


def set_rng_state(state: Dict[str, Any], where: Any = "checkpoint") -> None:
    """Set every RNG from :func:`rng_state`'s output; validated first, so a bad state changes nothing."""
    try:
        py, np_state, torch_state, cuda = _checked_rng_state(state)
    except _Malformed as e:
        raise CheckpointError(f"{where}: {e}; {_RESTART}") from None
    random.setstate(py)
    np.random.set_state(np_state)
    torch.set_rng_state(torch_state)
    if cuda is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)


# --------------------------------------------------------------------------- files


def _temp_pattern(path: Path) -> re.Pattern[str]:
    # What tempfile.mkstemp(prefix=name + ".", suffix=".tmp") creates: name.<random letters/digits/_>.tmp
    return re.compile(re.escape(path.name) + r"\.[A-Za-z0-9_]+\.tmp")


def remove_stale_temp(path: Path) -> List[Path]:
    """Delete temp files a killed :func:`save` of ``path`` left behind (``checkpoint.pt.<random>.tmp``).

    Only regular files whose name is exactly what ``save`` creates for this checkpoint are
    removed; returns them. Call it before a run resumes; ``save`` calls it too.
    """
    path = Path(path)
    pattern = _temp_pattern(path)
    removed = []
    try:
        entries = list(os.scandir(path.parent))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if pattern.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            removed.append(Path(entry.path))
    return removed


def save(path: Path, payload: Dict[str, Any]) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact (and a temp file the next save removes)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temp(path)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save({"format": FORMAT, **payload}, tmp)
        failpoint("checkpoint_write")  # tests: a kill here leaves the temp file, the old checkpoint intact
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load(path: Path) -> Dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` and check its shape; any problem -> CheckpointError naming the file.

    Checked here: a mapping of the current format whose ``strategy`` entry has the parts
    :func:`restore_strategy` reads and whose ``rng`` entry is a valid RNG state. The runner
    checks its own entries (rows, counters).
    """
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except Exception as e:  # unpickling errors come in many types
        detail = _first_line(e)
        if "weights_only" in detail or "Weights only" in detail:  # do not echo torch's advice to unpickle it anyway
            detail = f"{type(e).__name__}: holds something other than tensors and plain values"
        raise CheckpointError(f"{path}: not a readable streamcl checkpoint ({detail}); {_RESTART}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or isinstance(payload.get("format"), bool):
        raise CheckpointError(f"{path}: not a streamcl checkpoint of format {FORMAT}; {_RESTART}")
    for key in ("strategy", "rng"):
        if key not in payload:
            raise CheckpointError(f"{path}: has no '{key}' entry (damaged, or written by another streamcl "
                                  f"version); {_RESTART}")
    try:
        _check_strategy_state(payload["strategy"])
    except _Malformed as e:
        raise CheckpointError(f"{path}: {e}; {_RESTART}") from None
    check_rng_state(payload["rng"], path)
    return payload


# --------------------------------------------------------------------------- strategy state

# Attributes every SupervisedTemplate has (Avalanche 0.6). They are either saved on their own
# (model, optimizer, clock, plugins, evaluator) or rebuilt by the next experience (the current
# experience, its data loader, mini-batch, loss ...). Whatever else a strategy holds is its own
# training state (DER's buffer, Cumulative's dataset ...) and is saved as the strategy's ``attrs``.
_TEMPLATE_ATTRS = frozenset({
    "_criterion", "_distributed_check", "_eval_streams", "_stop_training", "adapted_dataset", "clock",
    "current_eval_stream", "dataloader", "device", "eval_every", "eval_mb_size", "evaluator", "experience",
    "is_training", "loss", "mb_output", "mbatch", "model", "optimized_param_id", "optimizer", "plugins",
    "retain_graph", "train_epochs", "train_mb_size",
})

_STRATEGY_KEYS = {"model": dict, "optimizer": dict, "clock": dict, "plugins": list, "metrics": list}


def _check_strategy_state(state: Any) -> None:
    _need(isinstance(state, dict), "strategy", f"is a {type(state).__name__}, not a mapping")
    for key, tp in _STRATEGY_KEYS.items():
        _need(key in state, "strategy", f"has no '{key}'")
        _need(isinstance(state[key], tp), f"strategy.{key}", f"is a {type(state[key]).__name__}")
    for i, s in enumerate(state["plugins"]):
        _need(isinstance(s, dict) and isinstance(s.get("cls"), str) and isinstance(s.get("state"), dict),
              f"strategy.plugins[{i}]", "is not a plugin entry")
    for key in ("metric_results", "last_metric_results"):
        _need(key in state, "strategy", f"has no '{key}'")
    if "attrs" in state:
        _need(isinstance(state["attrs"], dict), "strategy.attrs", "is not a mapping")
        _need(isinstance(state.get("cls"), str), "strategy.cls", "is not a class name")


def _stateful_plugins(strategy) -> List[Any]:
    from avalanche.training.plugins import EvaluationPlugin

    return [p for p in strategy.plugins if not isinstance(p, EvaluationPlugin) and p is not strategy.clock]


def _has_own_state(obj: Any) -> bool:
    return callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None))


def _strategy_attrs(strategy) -> Dict[str, Any]:
    """The strategy's own attributes beyond the template's, minus references to what is saved elsewhere."""
    saved_elsewhere = {id(strategy.model), id(strategy.optimizer), id(strategy.evaluator), id(strategy.clock)}
    saved_elsewhere.update(id(p) for p in strategy.plugins)
    return {k: v for k, v in vars(strategy).items() if k not in _TEMPLATE_ATTRS and id(v) not in saved_elsewhere}


def _rebuild_agem_loader(plugin: Any) -> None:
    """AGEM samples its memory through an endless loader iterator, which is not state and is not saved.

    Avalanche's ``AGEMPlugin.update_memory`` builds a fresh one at the end of every experience
    (before our checkpoint), and the iterator draws nothing until its first ``next``: building it
    again over the restored buffers, with the same arguments, continues exactly.
    """
    from avalanche.benchmarks.utils.data_loader import GroupBalancedInfiniteDataLoader

    if plugin.buffers:
        plugin.buffer_dataloader = GroupBalancedInfiniteDataLoader(
            plugin.buffers, batch_size=plugin.sample_size // len(plugin.buffers), num_workers=0, pin_memory=False,
            persistent_workers=False)
        plugin.buffer_dliter = iter(plugin.buffer_dataloader)


# Plugins that hold something derived from their state which is not saved (loaders, iterators):
# rebuilt after their state is restored. Keyed by exact class name.
_AFTER_RESTORE: Dict[str, Callable[[Any], None]] = {
    "avalanche.training.plugins.agem:AGEMPlugin": _rebuild_agem_loader,
}


def _redo_cope_surgery(plugin: Any, strategy: Any, enc: Any) -> None:
    """CoPE's first ``train()`` wraps the model's last layer as ``[fc, L2Normalization]`` and makes its PPP
    loss the criterion (``CoPEPlugin.before_training``). A resumed run never calls that again, and the
    saved model has the wrapped layer: redo both, as CoPE does, before the model is loaded."""
    from avalanche.training.plugins.cope import L2Normalization
    from avalanche.training.utils import get_last_fc_layer, swap_last_fc_layer

    attrs = enc.get("attrs") if isinstance(enc, dict) else None
    if isinstance(attrs, dict) and attrs.get("initialized") is True and not plugin.initialized:
        strategy._criterion = plugin.ppp_loss
        swap_last_fc_layer(strategy.model,
                           torch.nn.Sequential(get_last_fc_layer(strategy.model)[1], L2Normalization()))


# Plugins that change the model's structure when training starts: done again before the saved
# model is loaded (the hook gets the plugin, the strategy and the plugin's saved entry).
_BEFORE_MODEL_RESTORE: Dict[str, Callable[[Any, Any, Any], None]] = {
    "avalanche.training.plugins.cope:CoPEPlugin": _redo_cope_surgery,
}


def capture_strategy(strategy: Any) -> Dict[str, Any]:
    """Everything that makes the rest of a run continue as if uninterrupted."""
    plugins = []
    for p in _stateful_plugins(strategy):
        enc = encode(p) if hasattr(p, "state_dict") else encode_object(p)
        plugins.append({"cls": _qualname(p), "state": enc})
    evaluator = strategy.evaluator
    return {
        "cls": _qualname(strategy),
        "model": encode(strategy.model)["state"],
        "optimizer": strategy.optimizer.state_dict(),
        "clock": encode_object(strategy.clock),
        "plugins": plugins,
        # A strategy with its own state_dict (streamcl's WA ...) says what its state is; for
        # others (Avalanche's DER, Cumulative ...) every attribute beyond the template's is saved.
        **({"own": strategy.state_dict()} if _has_own_state(strategy) else
           {"attrs": _encode_attrs(_strategy_attrs(strategy), {id(strategy)})}),
        "metrics": [encode_object(m) for m in evaluator.metrics],
        "metric_results": encode(evaluator.all_metric_results),
        "last_metric_results": encode(evaluator.last_metric_results),
    }


def encode_object(obj: Any) -> Any:
    """Encode any object's ``__dict__`` (used at top level, where the class need not be avalanche's)."""
    return {"__type__": "object", "cls": _qualname(obj), "attrs": _encode_attrs(vars(obj), {id(obj)})}


def restore_strategy(strategy: Any, state: Dict[str, Any], ctx: RestoreContext, where: Path) -> None:
    """Load ``capture_strategy``'s output into a freshly built strategy of the same config.

    Every value goes into the live objects of ``strategy`` (see the module docstring); any
    mismatch or malformed entry raises CheckpointError naming ``where``.
    """
    if ctx.module_factory is None:
        model = strategy.model
        ctx.module_factory = lambda: copy.deepcopy(model)
    try:
        _check_strategy_state(state)
        if "cls" in state:
            _need(state["cls"] == _qualname(strategy), "strategy",
                  f"was written by a {state['cls']} strategy, this experiment builds a {_qualname(strategy)}")
        live = _stateful_plugins(strategy)
        saved = state["plugins"]
        _need([_qualname(p) for p in live] == [s["cls"] for s in saved], "strategy.plugins",
              f"the checkpoint's {[s['cls'] for s in saved]} differ from the experiment's "
              f"{[_qualname(p) for p in live]}")
        _need(len(state["metrics"]) == len(strategy.evaluator.metrics), "strategy.metrics",
              f"holds {len(state['metrics'])} metrics, this experiment has {len(strategy.evaluator.metrics)}")
        for plugin, s in zip(live, saved):
            prepare = _BEFORE_MODEL_RESTORE.get(_qualname(plugin))
            if prepare is not None:
                prepare(plugin, strategy, s["state"])
        _load_module(strategy.model, state["model"])
        # Avalanche adds every model parameter to the optimiser on its first experience;
        # do that now so the saved optimiser state lines up parameter by parameter.
        strategy.make_optimizer(reset_optimizer_state=True)
        strategy.optimizer.load_state_dict(state["optimizer"])
        _restore(strategy.clock, state["clock"], ctx, "strategy.clock")
        for i, (plugin, s) in enumerate(zip(live, saved)):
            _restore(plugin, s["state"], ctx, f"strategy.plugins[{i}]")
            rebuild = _AFTER_RESTORE.get(_qualname(plugin))
            if rebuild is not None:
                rebuild(plugin)
        if "own" in state:
            _need(_has_own_state(strategy) and isinstance(state["own"], dict), "strategy.own",
                  "holds a strategy state this experiment's strategy cannot load")
            _load_own_state(strategy, state["own"], ctx)
        for k, v in state.get("attrs", {}).items():
            _check_attr_name(strategy, k, "strategy.attrs")
            _need(k not in _TEMPLATE_ATTRS, "strategy.attrs", f"{k!r} is restored on its own")
            setattr(strategy, k, _restore(getattr(strategy, k, None), v, ctx, f"strategy.attrs.{k}"))
        for i, (metric, enc) in enumerate(zip(strategy.evaluator.metrics, state["metrics"])):
            _restore(metric, enc, ctx, f"strategy.metrics[{i}]")
        ev = strategy.evaluator
        ev.all_metric_results = _restore(ev.all_metric_results, state["metric_results"], ctx,
                                         "strategy.metric_results")
        ev.last_metric_results = _restore(ev.last_metric_results, state["last_metric_results"], ctx,
                                          "strategy.last_metric_results")
    except _Malformed as e:
        raise CheckpointError(f"{where}: does not match this experiment ({e}); {_RESTART}") from None
    except CheckpointError as e:  # from a plugin's own load_state_dict: add the file
        msg = str(e)
        raise CheckpointError(msg if str(where) in msg else f"{where}: {msg}; {_RESTART}") from None
    except Exception as e:  # state_dict loaders raise RuntimeError, KeyError, ValueError, IndexError ...
        raise CheckpointError(f"{where}: checkpoint does not match this experiment ({_first_line(e, 300)}); "
                              f"{_RESTART}") from None


# --------------------------------------------------------------------------- coverage

# Registered components whose resume streamcl's tests do not check (tests/test_resume_all.py runs
# every other registered strategy and plugin, interrupted after each experience, and asserts the
# same metrics as an uninterrupted run). Keys are "strategy:<name>" / "plugin:<name>".
_PYTHON_OBJECT = "needs a Python object that YAML cannot give"
_NCM_MODEL = "needs a model with an NCM/FeCAM eval_classifier, not a plain classifier"
_GSS = ("Avalanche 0.6's GSS-greedy fails on the small test stream before any checkpoint (torch.multinomial "
        "on all-zero scores)")
_BIC = ("Avalanche 0.6's BiC assigns experience.dataset, which its own DatasetExperience refuses: it fails "
        "before any checkpoint")
RESUME_NOT_TESTED: Dict[str, str] = {
    # -- strategies
    "strategy:ae_training": "trains an autoencoder: needs a model with feature_module and a decoder",
    "strategy:ar1": "downloads a pretrained MobileNet (no network in tests)",
    "strategy:bic": _BIC,
    "strategy:er_aml": f"{_PYTHON_OBJECT} (feature_extractor)",
    "strategy:expert_gate": "needs an ExpertGate model",
    "strategy:feature_replay": ("keeps replayed trunk features as plain tensors (no sample ids), which checkpoints "
                                "do not store: a resume stops with a CheckpointError"),
    "strategy:gem": "needs the quadprog QP solver, which is not installed",
    "strategy:gss_greedy": _GSS,
    "strategy:generative_replay": "needs a generator for 28x28 images (its default VAE), not 32x32 RGB",
    "strategy:icarl": f"{_PYTHON_OBJECT} (feature_extractor, classifier, buffer_transform)",
    "strategy:joint_training": "trains once on the whole stream, not experience by experience",
    "strategy:l2p": "downloads a pretrained ViT from timm (no network in tests)",
    "strategy:lfl": "needs a model with get_features() (Avalanche's BaseModel)",
    "strategy:pack_net": "needs a PackNet model (PackNetModule)",
    "strategy:pnn": "needs a PNN model",
    "strategy:scr": "needs an SCRModel (projection head)",
    "strategy:streaming_lda": f"{_PYTHON_OBJECT} (slda_model)",
    "strategy:vae_training": "trains a VAE: needs a generative model and spatial targets",
    # -- plugins
    "plugin:bic": _BIC,
    "plugin:current_data_fe_cam_update": _NCM_MODEL,
    "plugin:current_data_ncm_update": _NCM_MODEL,
    "plugin:fe_cam_oracle": _NCM_MODEL,
    "plugin:feature_distillation": "needs a model with features/classifier modules (Avalanche's FeatureExtractorModel)",
    "plugin:gem": "needs the quadprog QP solver, which is not installed",
    "plugin:generative_replay": f"{_PYTHON_OBJECT} (generator_strategy)",
    "plugin:gss_greedy": _GSS,
    "plugin:lfl": "needs a model with get_features() (Avalanche's BaseModel)",
    "plugin:memory_fe_cam_update": _NCM_MODEL,
    "plugin:memory_ncm_update": _NCM_MODEL,
    "plugin:ncm_oracle": _NCM_MODEL,
    "plugin:rar": ("Avalanche's RAR keeps drawing from a half-consumed loader iterator over the previous "
                   "experience's buffer, which no checkpoint can hold: a resumed run differs from the next "
                   "experience on"),
    "plugin:train_generator_after_exp": "trains a generative replay generator: needs a generator model",
}


def warn_unverified(strategy: Any) -> None:
    """Warn (one line each) when resuming a strategy or plugin whose resume streamcl's tests do not cover."""
    from streamcl.registry import PLUGINS, STRATEGIES

    s_name = STRATEGIES.name_of(type(strategy))
    parts = [("strategy", s_name, type(strategy))]
    for p in _stateful_plugins(strategy):
        name = PLUGINS.name_of(type(p))
        if name is not None:  # unregistered plugins are a strategy's own (judged with it) or the user's
            parts.append(("plugin", name, type(p)))
    for kind, name, cls in parts:
        reason = RESUME_NOT_TESTED.get(f"{kind}:{name}") if name is not None else "not a registered component"
        if reason is not None:
            warnings.warn(f"resuming {kind} {name or cls.__qualname__}: its resume is not covered by streamcl's "
                          f"tests ({reason}); the rest of the run may differ from an uninterrupted one",
                          stacklevel=2)
