"""A whole strategy's state: captured from a trained strategy, restored into a fresh one of the same config."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Dict, List

import torch

from streamcl.checkpoint.base import _RESTART, _first_line, _Malformed, _need, _qualname
from streamcl.checkpoint.decode import (
    RestoreContext,
    _check_attr_name,
    _load_module,
    _load_own_state,
    _restore,
)
from streamcl.checkpoint.encode import _encode_attrs, encode, live_tensors
from streamcl.errors import CheckpointError

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
    """Everything that makes the rest of a run continue as if uninterrupted.

    The result references the strategy's live CPU tensors (model weights, replay buffers; the
    optimiser's ``state_dict()`` always did) instead of copying them, so a GB buffer is never
    held twice: write it (:func:`~streamcl.checkpoint.save`) before the strategy trains again,
    as the runner does (capture and save run one after the other in the main thread, nothing
    in between touches the strategy). ``copy.deepcopy`` it to keep a snapshot.
    """
    with live_tensors():
        return _capture(strategy)


def _capture(strategy: Any) -> Dict[str, Any]:
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

    Every value goes into the live objects of ``strategy`` (see :mod:`streamcl.checkpoint.decode`); any
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
