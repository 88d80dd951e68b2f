"""Checkpoints that streamcl owns: tensors and plain values only.

Avalanche's ``save_checkpoint`` pickles the whole strategy with dill, which
breaks with torch 2.14 and can only be read back with ``weights_only=False``
(arbitrary code on load). Instead we walk the objects that carry training state
(model, optimiser, plugins, evaluator metrics, clock, RNGs) and encode them as
nested containers of tensors and primitives, readable with
``torch.load(weights_only=True)``:

* ``nn.Module`` / optimiser / LR scheduler -> their ``state_dict()``;
* Avalanche datasets (replay buffers) -> the ``sample_id`` of each item, rebuilt
  on load from the benchmark (streamcl's benchmarks attach that attribute);
* plugins with their own ``state_dict()`` (CRUMB, REMIND) -> that;
* other Avalanche/streamcl objects -> their ``__dict__``, recursively (class
  names are stored as strings and re-imported only from those packages);
* anything else (threads, loggers, functions, iterators) is not saved: a fresh
  object built from the same config already holds it.
"""

from __future__ import annotations

import collections
import copy
import importlib
import os
import random
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from streamcl.errors import CheckpointError

FORMAT = 1
_ALLOWED_MODULES = ("avalanche.", "streamcl.", "collections")
_SKIP = object()  # marker: value not saved


def _qualname(obj_or_cls: Any) -> str:
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    return f"{cls.__module__}:{cls.__qualname__}"


def _import_class(path: str) -> type:
    module, _, qual = path.partition(":")
    if not module.startswith(_ALLOWED_MODULES):
        raise CheckpointError(f"checkpoint names class {path}, outside avalanche/streamcl; refusing to load it")
    obj: Any = importlib.import_module(module)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj


def _is_dataset(obj: Any) -> bool:
    try:
        from avalanche.benchmarks.utils import AvalancheDataset
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, AvalancheDataset)


def _skippable(obj: Any) -> bool:
    """Objects that never hold training state worth saving (back references, loggers, loaders)."""
    from avalanche.logging import BaseLogger
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.templates import BaseTemplate

    return isinstance(obj, (BaseTemplate, BaseLogger, EvaluationPlugin, torch.utils.data.DataLoader))


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
        return {"__type__": "dtype", "v": str(value).replace("torch.", "")}
    if isinstance(value, torch.Size):
        return {"__type__": "size", "v": list(value)}
    if isinstance(value, torch.Generator):
        return {"__type__": "generator", "state": value.get_state()}
    if isinstance(value, nn.Module):
        return {"__type__": "module", "state": {k: v.detach().cpu().clone() for k, v in value.state_dict().items()}}
    if isinstance(value, torch.optim.Optimizer):
        return {"__type__": "optimizer", "state": value.state_dict()}
    if isinstance(value, torch.optim.lr_scheduler.LRScheduler):
        return {"__type__": "scheduler", "state": value.state_dict()}
    if isinstance(value, collections.defaultdict):
        factory = value.default_factory
        fname = None
        if factory in (list, dict, set, int, float):
            fname = factory.__name__
        elif isinstance(factory, type) and factory.__module__.startswith(_ALLOWED_MODULES):
            fname = _qualname(factory)
        return {"__type__": "defaultdict", "factory": fname, "items": _encode_items(value.items(), seen)}
    if isinstance(value, dict):
        return {"__type__": "dict", "items": _encode_items(value.items(), seen)}
    if isinstance(value, (list, tuple, set, frozenset)):
        items = [encode(v, seen) for v in value]
        if any(i is _SKIP for i in items):
            return _SKIP
        return items if isinstance(value, list) else {"__type__": type(value).__name__, "items": items}
    if _is_dataset(value):
        ids = _sample_ids(value)
        if ids is None:
            return _SKIP
        return {"__type__": "dataset", "ids": ids, "group": _transform_group(value)}
    if hasattr(value, "state_dict") and hasattr(value, "load_state_dict") and not isinstance(value, type):
        return {"__type__": "custom", "cls": _qualname(value), "state": value.state_dict()}
    if type(value).__module__.startswith(("avalanche.", "streamcl.")) and hasattr(value, "__dict__"):
        if id(value) in seen or _skippable(value):
            return _SKIP
        seen.add(id(value))
        attrs = {}
        for k, v in vars(value).items():
            enc = encode(v, seen)
            if enc is not _SKIP:
                attrs[k] = enc
        return {"__type__": "object", "cls": _qualname(value), "attrs": attrs}
    return _SKIP


def _encode_items(items, seen) -> List[List[Any]]:
    out = []
    for k, v in items:
        ek, ev = encode(k, seen), encode(v, seen)
        if ek is not _SKIP and ev is not _SKIP:
            out.append([ek, ev])
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


@dataclass
class RestoreContext:
    """What decoding needs from the live run: fresh module copies and datasets by sample id."""

    module_factory: Optional[Callable[[], nn.Module]] = None
    dataset_from_ids: Optional[Callable[[torch.Tensor], Any]] = None


def restore(current: Any, enc: Any, ctx: RestoreContext) -> Any:
    """Return the value ``enc`` decodes to, loading into ``current`` in place where it is an object."""
    if not isinstance(enc, dict) or "__type__" not in enc:
        if isinstance(enc, list):
            cur = current if isinstance(current, list) else []
            return [restore(cur[i] if i < len(cur) else None, e, ctx) for i, e in enumerate(enc)]
        if isinstance(enc, torch.Tensor) and isinstance(current, torch.Tensor):
            return enc.to(current.device)
        return enc
    kind = enc["__type__"]
    if kind == "ndarray":
        return enc["data"].numpy()
    if kind == "device":
        return torch.device(enc["v"])
    if kind == "dtype":
        return getattr(torch, enc["v"])
    if kind == "size":
        return torch.Size(enc["v"])
    if kind == "generator":
        g = current if isinstance(current, torch.Generator) else torch.Generator()
        g.set_state(enc["state"])
        return g
    if kind == "module":
        module = current
        if not isinstance(module, nn.Module):
            if ctx.module_factory is None:
                raise CheckpointError("checkpoint holds a model copy but no model is available to rebuild it")
            module = ctx.module_factory()
        module.load_state_dict(enc["state"])
        return module
    if kind in ("optimizer", "scheduler"):
        if current is None:
            return None
        current.load_state_dict(enc["state"])
        return current
    if kind == "custom":
        if current is None:
            current = _import_class(enc["cls"]).__new__(_import_class(enc["cls"]))
        current.load_state_dict(enc["state"])
        return current
    if kind in ("dict", "defaultdict"):
        cur = current if isinstance(current, dict) else {}
        if kind == "defaultdict":
            f = enc["factory"]
            if f is None:  # a lambda or local factory: keep the live object's
                factory = current.default_factory if isinstance(current, collections.defaultdict) else None
            else:
                factory = {"list": list, "dict": dict, "set": set, "int": int, "float": float}.get(f) or _import_class(f)
            out: Dict[Any, Any] = collections.defaultdict(factory)
        else:
            out = type(cur)() if isinstance(cur, collections.OrderedDict) else {}
        for ek, ev in enc["items"]:
            key = restore(None, ek, ctx)
            out[key] = restore(cur.get(key) if _hashable(key) else None, ev, ctx)
        return out
    if kind in ("tuple", "set", "frozenset"):
        items = [restore(None, e, ctx) for e in enc["items"]]
        return {"tuple": tuple, "set": set, "frozenset": frozenset}[kind](items)
    if kind == "dataset":
        if ctx.dataset_from_ids is None:
            raise CheckpointError("checkpoint holds a replay buffer but the benchmark cannot rebuild samples by id")
        ds = ctx.dataset_from_ids(enc["ids"])
        return ds.eval() if enc.get("group") == "eval" else ds.train()
    if kind == "object":
        cls = _import_class(enc["cls"])
        obj = current if type(current) is cls else cls.__new__(cls)
        for k, v in enc["attrs"].items():
            setattr(obj, k, restore(getattr(obj, k, None), v, ctx))
        return obj
    raise CheckpointError(f"unknown entry type {kind!r} in checkpoint")


def _hashable(x: Any) -> bool:
    try:
        hash(x)
    except TypeError:
        return False
    return True


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


def set_rng_state(state: Dict[str, Any]) -> None:
    ctx = RestoreContext()
    py = restore(None, state["python"], ctx)
    random.setstate((py[0], tuple(py[1]), py[2]))
    np_state = restore(None, state["numpy"], ctx)
    np.random.set_state(tuple(np_state))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- files


def save(path: Path, payload: Dict[str, Any]) -> None:
    """Write atomically: a crash mid-write leaves the previous checkpoint intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save({"format": FORMAT, **payload}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load(path: Path) -> Dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; any problem -> CheckpointError naming the file."""
    path = Path(path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint not found") from None
    except Exception as e:  # unpickling errors come in many types
        raise CheckpointError(
            f"{path}: not a readable streamcl checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
            "delete it or rerun with --restart"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a streamcl checkpoint of format {FORMAT}; delete it or rerun with --restart")
    return payload


# --------------------------------------------------------------------------- strategy state


def _stateful_plugins(strategy) -> List[Any]:
    from avalanche.training.plugins import EvaluationPlugin

    return [p for p in strategy.plugins if not isinstance(p, EvaluationPlugin) and p is not strategy.clock]


def capture_strategy(strategy) -> Dict[str, Any]:
    """Everything that makes the rest of a run continue as if uninterrupted."""
    plugins = []
    for p in _stateful_plugins(strategy):
        enc = encode(p) if hasattr(p, "state_dict") else encode_object(p)
        plugins.append({"cls": _qualname(p), "state": enc})
    evaluator = strategy.evaluator
    return {
        "model": encode(strategy.model)["state"],
        "optimizer": strategy.optimizer.state_dict(),
        "clock": encode_object(strategy.clock),
        "plugins": plugins,
        "metrics": [encode_object(m) for m in evaluator.metrics],
        "metric_results": encode(evaluator.all_metric_results),
        "last_metric_results": encode(evaluator.last_metric_results),
    }


def encode_object(obj: Any) -> Any:
    """Encode any object's ``__dict__`` (used at top level, where the class need not be avalanche's)."""
    seen = {id(obj)}
    attrs = {}
    for k, v in vars(obj).items():
        enc = encode(v, seen)
        if enc is not _SKIP:
            attrs[k] = enc
    return {"__type__": "object", "cls": _qualname(obj), "attrs": attrs}


def _restore_object(obj: Any, enc: Dict[str, Any], ctx: RestoreContext) -> None:
    for k, v in enc["attrs"].items():
        setattr(obj, k, restore(getattr(obj, k, None), v, ctx))


def restore_strategy(strategy, state: Dict[str, Any], ctx: RestoreContext, where: Path) -> None:
    """Load ``capture_strategy``'s output into a freshly built strategy of the same config."""
    if ctx.module_factory is None:
        model = strategy.model
        ctx.module_factory = lambda: copy.deepcopy(model)
    try:
        strategy.model.load_state_dict(state["model"])
        # Avalanche adds every model parameter to the optimiser on its first experience;
        # do that now so the saved optimiser state lines up parameter by parameter.
        strategy.make_optimizer(reset_optimizer_state=True)
        strategy.optimizer.load_state_dict(state["optimizer"])
        _restore_object(strategy.clock, state["clock"], ctx)
        live = _stateful_plugins(strategy)
        saved = state["plugins"]
        if [_qualname(p) for p in live] != [s["cls"] for s in saved]:
            raise CheckpointError(
                f"{where}: the plugins in the checkpoint ({[s['cls'] for s in saved]}) differ from the "
                f"experiment's ({[_qualname(p) for p in live]}); rerun with --restart"
            )
        for plugin, s in zip(live, saved):
            enc = s["state"]
            if enc.get("__type__") == "custom":
                plugin.load_state_dict(enc["state"])
            else:
                _restore_object(plugin, enc, ctx)
        for metric, enc in zip(strategy.evaluator.metrics, state["metrics"]):
            _restore_object(metric, enc, ctx)
        ev = strategy.evaluator
        ev.all_metric_results = restore(ev.all_metric_results, state["metric_results"], ctx)
        ev.last_metric_results = restore(ev.last_metric_results, state["last_metric_results"], ctx)
    except CheckpointError:
        raise
    except (RuntimeError, KeyError, ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(
            f"{where}: checkpoint does not match this experiment ({type(e).__name__}: {str(e).splitlines()[0][:300]}); "
            "rerun with --restart to discard it"
        ) from None


def warn_unverified(strategy) -> None:
    """Warn when a plugin's resume has not been checked by streamcl's tests."""
    verified = {"ReplayPlugin", "RawReplayPlugin", "EWCPlugin", "MASPlugin", "LwFPlugin", "GDumbPlugin", "LRSchedulerPlugin",
                "SynapticIntelligencePlugin", "CRUMBPlugin", "REMINDPlugin"}
    for p in _stateful_plugins(strategy):
        if type(p).__name__ not in verified and not hasattr(p, "state_dict"):
            warnings.warn(f"resuming {type(p).__name__}: its state is restored generically (best effort)", stacklevel=2)
