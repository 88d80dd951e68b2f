"""Decoding: checkpoint entries loaded into the live objects of a freshly built strategy.

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
import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import torch
from torch import nn

from streamcl.checkpoint.allowlist import _DTYPES, _creatable, _factories, _factory_name
from streamcl.checkpoint.base import _SKIP, _Malformed, _need, _qualname
from streamcl.checkpoint.encode import _BENCHMARK_ATTRIBUTES, _cycle_functions, _is_dataset
from streamcl.errors import CheckpointError


@dataclass
class RestoreContext:
    """What decoding needs from the live run: fresh module copies and datasets by sample id."""

    module_factory: Optional[Callable[[], nn.Module]] = None
    dataset_from_ids: Optional[Callable[[torch.Tensor], Any]] = None


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
