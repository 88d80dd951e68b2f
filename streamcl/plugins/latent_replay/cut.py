"""Where a model is cut for latent replay: a SplitNet's trunk and head, or any ``nn.Module`` at a named layer.

A latent-replay plugin needs four things from the model, which :class:`ModelCut` gives it:

- :meth:`~ModelCut.features`: the frozen part's output for an image batch (what the codec encodes);
- :meth:`~ModelCut.head`: the layers after the cut applied to a feature map (what replayed,
  decoded items go through: they have no image, so they never touch the frozen part);
- :meth:`~ModelCut.set_hook`: a hook on the model's *own* forward that replaces the cut layer's
  output by ``hook(f)`` (new data: ``f -> decode(encode(f))``), so Avalanche's iteration and every
  other plugin see an ordinary ``model(x)``;
- :meth:`~ModelCut.freeze`: no gradients and eval-mode BatchNorm for everything before the cut.

:class:`SplitNetCut` reads them off a :class:`~streamcl.models.SplitNet` (``trunk``, ``head``,
``feature_hook``). :class:`LayerCut` takes any model and the name of the layer to cut at
(``latent_layer="layer4.0"`` for a torchvision or timm ResNet-18, ``"features.11"`` for
SqueezeNet), as Avalanche's AR1 takes ``latent_layer_num``.

How the layers after the cut are run for a model that is not a SplitNet
-----------------------------------------------------------------------
A model's forward is Python code: which layers follow ``layer4.0``, in which order and with which
functional calls in between (torchvision's ResNet: ``layer4.1 -> avgpool -> torch.flatten -> fc``)
is only known by running or tracing it. Two ways were weighed:

1. run the model's whole forward with a hook that swaps the cut layer's output for the replayed
   features: it needs a dummy input of the right batch size and runs the whole frozen part (most
   of the compute) for nothing at every replay step;
2. trace the forward once with ``torch.fx`` (what torchvision's ``create_feature_extractor`` and
   timm's feature extractors do) and keep the graph nodes that depend on the cut layer's output:
   a ``GraphModule`` over the model's own sub-modules (same parameter objects) mapping features to
   logits.

We use 2: a replay step costs the head only, and the same trace tells which modules lie before
the cut (to freeze them) and whether the cut is clean (a residual branch that skips over the cut
layer would need tensors computed before it: such a cut is refused with a message). The graph is
split here by hand rather than with ``torch.fx.passes.split_module`` because that pass silently
hands every value crossing the boundary to the second half as an extra input, which is exactly
the unclean cut we must refuse. A model that ``torch.fx`` cannot trace (data-dependent control
flow in ``forward``) gets an error naming the model and the layer, with the advice to wrap it as
``SplitNet(trunk, head)``. Functional calls that read ``self.training`` in a traced forward are
fixed at trace time, so each mode (train / eval) gets its own trace. The traced head calls the
model's leaf modules (convolutions, norms, linear layers ...): a forward hook you register on a
container after the cut (``layer4.1``) sees new items only, one on a leaf (``fc``) sees replayed
items too.

Mixed precision and memory layout of the frozen part
----------------------------------------------------
:meth:`ModelCut.set_precision` (the plugins' ``amp`` and ``channels_last`` switches) makes the
part before the cut run under ``torch.autocast`` (bf16 / fp16) and/or in ``channels_last``
layout, while it is frozen: the autocast region is entered just before the first frozen layer
(a forward pre-hook) and left at the cut (the cut's forward hook), and the feature map leaves
the cut as a contiguous float32 tensor, so the head, the codec and the buffer see what they see
without the switches. The hooks live only as long as a feature hook is set (one forward) or a
:meth:`~ModelCut.features` call; with both switches off nothing is installed, so results stay
bit-identical to a cut without them. A trunk that is not frozen (REMIND's ``base_train_trunk``)
runs in float32.
"""

from __future__ import annotations

import difflib
import weakref
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

import torch
from torch import Tensor, nn

from streamcl.errors import ConfigError, StreamclError

__all__ = ["ModelCut", "SplitNetCut", "LayerCut", "resolve_cut", "refuse_task_aware", "AMP_DTYPES", "amp_dtype"]

FeatureHook = Callable[[Tensor], Tensor]

#: ``amp`` values and the autocast dtype each selects (``None``: float32, no autocast).
AMP_DTYPES: Dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16}


def amp_dtype(amp: Optional[str], who: str = "latent replay") -> Optional[torch.dtype]:
    """The autocast dtype an ``amp`` setting names (``None`` -> no autocast).

    :raises ConfigError: an unknown value (the message names the key ``amp`` and the valid values).
    """
    if amp is None:
        return None
    if not isinstance(amp, str) or amp not in AMP_DTYPES:
        raise ConfigError(f"{who}: invalid value {amp!r}; valid: bf16, fp16 or null (float32)", key="amp")
    return AMP_DTYPES[amp]


class ModelCut:
    """A model seen as ``head(trunk(x))`` around a cut (interface; see the module docstring)."""

    model: nn.Module
    # set_precision's settings and the autocast region the frozen part is running in (if any)
    _amp: Optional[torch.dtype] = None
    _channels_last: bool = False
    _amp_ctx: Optional[torch.autocast] = None

    @property
    def frozen(self) -> bool:
        """True while everything before the cut is frozen (no gradients, eval mode)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ precision / layout
    def set_precision(self, amp: Optional[torch.dtype] = None, channels_last: bool = False) -> None:
        """Run the frozen part under ``torch.autocast(dtype=amp)`` and/or in ``channels_last`` layout.

        The frozen modules' 4-D weights are converted to ``channels_last`` now (same parameter
        objects, so optimisers and state dicts are unaffected); inputs are converted at each
        forward. See the module docstring.
        """
        self._amp = amp
        self._channels_last = bool(channels_last)
        if self._channels_last:
            for m in self._frozen_modules():
                m.to(memory_format=torch.channels_last)

    @property
    def precision_active(self) -> bool:
        """True when :meth:`set_precision` asked for autocast or channels_last."""
        return self._amp is not None or self._channels_last

    def _frozen_modules(self) -> List[nn.Module]:
        raise NotImplementedError

    def _enter_trunk(self, x: Any) -> Any:
        """Before the frozen part: enter autocast, make ``x`` channels_last (returns the new input)."""
        if not self.frozen or not isinstance(x, Tensor):
            return x
        if self._channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self._amp is not None and self._amp_ctx is None:
            try:
                ctx = torch.autocast(device_type=x.device.type, dtype=self._amp)
            except RuntimeError as e:  # e.g. a CUDA device without bfloat16
                name = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(self._amp, str(self._amp))
                raise ConfigError(
                    f"amp={name} is not supported on {x.device} ({_clip(e, 100)}); use another amp value or null",
                    key="amp",
                ) from None
            ctx.__enter__()
            self._amp_ctx = ctx
        return x

    def _leave_trunk(self, f: Any) -> Any:
        """At the cut: leave autocast, hand on a contiguous float32 feature map."""
        ctx, self._amp_ctx = self._amp_ctx, None
        if ctx is not None:
            ctx.__exit__(None, None, None)
        if self.frozen and isinstance(f, Tensor) and f.is_floating_point():
            if self._amp is not None:
                f = f.float()
            if self._channels_last:
                f = f.contiguous()
        return f

    def _abandon_trunk(self) -> None:
        """Leave an autocast region a failed forward left open."""
        ctx, self._amp_ctx = self._amp_ctx, None
        if ctx is not None:
            ctx.__exit__(None, None, None)

    def features(self, x: Tensor) -> Tensor:
        """Output of the part before the cut for ``x``: eval mode, no gradient (what the codec encodes)."""
        raise NotImplementedError

    def trunk(self, x: Tensor) -> Tensor:
        """Output of the part before the cut in the current module modes (with gradients once unfrozen)."""
        raise NotImplementedError

    def head(self, f: Tensor) -> Tensor:
        """The layers after the cut applied to a feature map ``f`` (replayed items go through these only)."""
        raise NotImplementedError

    def set_hook(self, hook: Optional[FeatureHook]) -> None:
        """During ``model(x)`` replace the cut layer's output ``f`` by ``hook(f)`` (``None`` removes it)."""
        raise NotImplementedError

    def freeze(self) -> None:
        """Freeze what lies before the cut: ``requires_grad=False`` and eval mode."""
        raise NotImplementedError

    def unfreeze(self) -> None:
        """Let the part before the cut train (e.g. REMIND's base initialisation with ``base_train_trunk``)."""
        raise NotImplementedError

    def trunk_parameters(self) -> List[nn.Parameter]:
        """Parameters of the part before the cut."""
        raise NotImplementedError


class SplitNetCut(ModelCut):
    """The cut of a :class:`~streamcl.models.SplitNet`: its ``trunk``, ``head`` and ``feature_hook``."""

    def __init__(self, model: nn.Module):
        self.model = model
        self._handles: List[Any] = []

    @property
    def frozen(self) -> bool:
        return bool(self.model.freeze_trunk)

    def _frozen_modules(self) -> List[nn.Module]:
        return [self.model.trunk]

    def _install_precision(self) -> bool:
        """Hooks around ``model.trunk`` applying :meth:`set_precision` (True if installed now)."""
        if self._handles or not self.precision_active:
            return False
        trunk = self.model.trunk
        self._handles = [
            trunk.register_forward_pre_hook(lambda m, args: (self._enter_trunk(args[0]), *args[1:])),
            trunk.register_forward_hook(lambda m, args, out: self._leave_trunk(out), always_call=True),
        ]
        return True

    def _remove_precision(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._abandon_trunk()

    def features(self, x: Tensor) -> Tensor:
        model = self.model
        installed = self._install_precision()
        try:
            with torch.no_grad():
                was = model.trunk.training
                model.trunk.eval()
                f = model.trunk(x)
                model.trunk.train(was)
        finally:
            if installed:
                self._remove_precision()
        return f

    def trunk(self, x: Tensor) -> Tensor:
        return self.model.features(x)

    def head(self, f: Tensor) -> Tensor:
        return self.model.head(f)

    def set_hook(self, hook: Optional[FeatureHook]) -> None:
        self.model.feature_hook = hook
        if hook is None:
            self._remove_precision()
        else:
            self._install_precision()

    def freeze(self) -> None:
        self.model.freeze_trunk = True
        for p in self.model.trunk.parameters():
            p.requires_grad_(False)
        self.model.trunk.eval()

    def unfreeze(self) -> None:
        self.model.freeze_trunk = False
        for p in self.model.trunk.parameters():
            p.requires_grad_(True)

    def trunk_parameters(self) -> List[nn.Parameter]:
        return list(self.model.trunk.parameters())

    def __repr__(self) -> str:
        return f"SplitNetCut({type(self.model).__name__})"


# =====================================================================================
# Any model, cut at a named layer (torch.fx)
# =====================================================================================
class _CutTracer(torch.fx.Tracer):
    """Traces into every container of the cut layer and keeps the cut layer itself as one call."""

    def __init__(self, layer: str, leaf_types: Tuple[type, ...] = (), autowrap: Tuple[Any, ...] = ()):
        super().__init__(autowrap_functions=autowrap)
        self.layer = layer
        self.leaf_types = leaf_types

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if module_qualified_name == self.layer:
            return True
        if self.layer.startswith(module_qualified_name + "."):
            return False  # a container of the cut layer: trace into it to reach the cut
        if self.leaf_types and isinstance(m, self.leaf_types):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _timm_fx_registrations() -> Tuple[Tuple[type, ...], Tuple[Any, ...]]:
    """timm's registered no-trace modules and functions (its own feature extractors trace with them)."""
    try:
        from timm.layers import get_notrace_functions, get_notrace_modules
    except Exception:  # timm missing or older: plain torch.fx
        return (), ()
    return tuple(get_notrace_modules()), tuple(get_notrace_functions())


def _get_layer(model: nn.Module, layer: str, who: str) -> nn.Module:
    try:
        return model.get_submodule(layer)
    except (AttributeError, TypeError):
        names = [n for n, _ in model.named_modules() if n]
        close = difflib.get_close_matches(layer, names, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}?" if close else f"its layers include {', '.join(names[:6])} ..."
        raise ConfigError(
            f"{who}: {type(model).__name__} has no layer '{layer}' ({hint}); name a sub-module as printed by "
            "model.named_modules(), e.g. 'layer4.0'",
            key="latent_layer",
        ) from None


def _clip(text: str, limit: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(node: torch.fx.Node) -> str:
    if node.op in ("call_module", "get_attr"):
        return f"'{node.target}'"
    if node.op == "placeholder":
        return f"the input '{node.target}'"
    return f"'{getattr(node.target, '__name__', node.target)}' ({node.name})"


class LayerCut(ModelCut):
    """Any ``nn.Module`` cut at the sub-module named ``layer`` (e.g. ``"layer4.0"``).

    The model's forward is traced with ``torch.fx`` (see the module docstring): the nodes the cut
    layer's output depends on form the part before the cut (frozen by :meth:`freeze`, which the
    constructor calls), the nodes that depend on it form :meth:`head`. New data keeps going
    through the model's own forward with a forward hook on the cut layer.

    :raises ConfigError: no such layer.
    :raises StreamclError: the model cannot be traced, or the layer does not cut it in two.
    """

    def __init__(self, model: nn.Module, layer: str, *, who: str = "latent replay"):
        if not isinstance(layer, str) or not layer:
            raise ConfigError(f"{who}: latent_layer must be a layer name such as 'layer4.0', got {layer!r}",
                              key="latent_layer")
        self.model = model
        self.layer = layer
        self.who = who
        self.module = _get_layer(model, layer, who)
        self._graphs: Dict[Tuple[bool, str], Tuple[torch.fx.GraphModule, torch.fx.GraphModule]] = {}
        self._handle: Any = None
        self._root_handles: List[Any] = []
        self._frozen = False
        pre_targets, pre_attrs = self._graphs_for(model.training, analyse=True)
        # Everything the cut layer's output is computed from (the cut layer included) is frozen.
        self._pre_modules: List[nn.Module] = [model.get_submodule(t) for t in sorted(pre_targets)]
        params: Dict[int, nn.Parameter] = {}
        for m in self._pre_modules:
            for p in m.parameters():
                params[id(p)] = p
        for name in pre_attrs:
            obj = _get_attr(model, name)
            if isinstance(obj, nn.Parameter):
                params[id(obj)] = obj
        self._pre_params = list(params.values())
        self.freeze()

    # ------------------------------------------------------------------ tracing
    def _trace(self, training: bool) -> torch.fx.Graph:
        modes = {m: m.training for m in self.model.modules()}
        leaf_types, autowrap = _timm_fx_registrations()
        try:
            self.model.train(training)
            return _CutTracer(self.layer, leaf_types, autowrap).trace(self.model)
        except Exception as e:  # torch.fx raises TraceError, TypeError, NotImplementedError ...
            raise StreamclError(
                f"{self.who}: cannot trace {type(self.model).__name__} with torch.fx to find the layers after "
                f"'{self.layer}' ({type(e).__name__}: {_clip(e)}); wrap the model as "
                "streamcl.models.SplitNet(trunk, head) instead"
            ) from None
        finally:
            for m, t in modes.items():
                m.training = t

    def _graphs_for(self, training: bool, analyse: bool = False) -> Any:
        """(pre, post) GraphModules for a mode; with ``analyse`` the names the pre part calls / reads.

        Keyed by device too: a GraphModule holds the model's sub-modules (which move with the
        model) but also direct references to tensors the forward reads as attributes, which
        ``model.to(device)`` replaces.
        """
        key = (bool(training), _device_of(self.model))
        if key in self._graphs and not analyse:
            return self._graphs[key]
        graph = self._trace(training)
        pre_g, post_g, pre_targets, pre_attrs = self._split(graph)
        pre = torch.fx.GraphModule(self.model, pre_g, class_name=f"{type(self.model).__name__}BeforeCut")
        post = torch.fx.GraphModule(self.model, post_g, class_name=f"{type(self.model).__name__}AfterCut")
        self._graphs[key] = (pre, post)
        return (pre_targets, pre_attrs) if analyse else (pre, post)

    def _fail(self, why: str) -> StreamclError:
        return StreamclError(
            f"{self.who}: latent_layer '{self.layer}' does not cut {type(self.model).__name__} in two: {why}; "
            "cut between two blocks (e.g. 'layer4.0', not a layer inside a residual block) or wrap the model "
            "as streamcl.models.SplitNet(trunk, head)"
        )

    def _split(self, graph: torch.fx.Graph) -> Tuple[torch.fx.Graph, torch.fx.Graph, Set[str], Set[str]]:
        nodes = list(graph.nodes)
        cuts = [n for n in nodes if n.op == "call_module" and n.target == self.layer]
        if len(cuts) != 1:
            raise self._fail("the forward never calls it" if not cuts else f"the forward calls it {len(cuts)} times")
        cut = cuts[0]
        dynamic: Set[torch.fx.Node] = set()  # computed from the input
        post: Set[torch.fx.Node] = set()  # computed from the cut layer's output
        for n in nodes:
            ins = n.all_input_nodes
            if n.op == "placeholder" or any(i in dynamic for i in ins):
                dynamic.add(n)
            if n is not cut and any(i is cut or i in post for i in ins):
                post.add(n)
        output = nodes[-1]
        if output not in post:
            raise self._fail("the model's output does not depend on it")
        for n in [x for x in nodes if x in post]:
            for i in n.all_input_nodes:
                if i in dynamic and i is not cut and i not in post:
                    raise self._fail(f"after it, {_describe(n)} also reads {_describe(i)}, computed before it")
        pre_set = _ancestors([cut]) | {cut}
        pre_targets = {str(n.target) for n in pre_set if n.op == "call_module"}
        pre_attrs = {str(n.target) for n in pre_set if n.op == "get_attr"}
        post_targets = {str(n.target) for n in post if n.op == "call_module"}
        for a in pre_targets:
            for b in post_targets:
                if a == b or b.startswith(a + ".") or a.startswith(b + "."):
                    raise self._fail(f"'{b}' runs both before and after it")

        pre_g = torch.fx.Graph()
        env: Dict[torch.fx.Node, torch.fx.Node] = {}
        for n in nodes:
            if n.op == "placeholder" or n in pre_set:
                env[n] = pre_g.node_copy(n, lambda a: env[a])
        pre_g.output(env[cut])

        keep = post | {i for i in _ancestors(list(post)) if i not in dynamic}
        post_g = torch.fx.Graph()
        env = {cut: post_g.placeholder("features")}
        for n in nodes:
            if n in keep:
                env[n] = post_g.node_copy(n, lambda a: env[a])
        pre_g.lint()
        post_g.lint()
        return pre_g, post_g, pre_targets, pre_attrs

    def _current(self) -> Tuple[torch.fx.GraphModule, torch.fx.GraphModule]:
        return self._graphs_for(self.model.training)

    # ------------------------------------------------------------------ ModelCut
    @property
    def frozen(self) -> bool:
        return self._frozen

    def _frozen_modules(self) -> List[nn.Module]:
        return list(self._pre_modules)

    def features(self, x: Tensor) -> Tensor:
        pre, _ = self._graphs_for(False)
        modes = [(m, m.training) for mod in self._pre_modules for m in mod.modules()]
        precision = self.precision_active
        try:
            for m, _ in modes:
                m.training = False
            with torch.no_grad():
                if not precision:
                    return pre(x)
                # the traced part before the cut is not the model: no root pre-hook runs, enter here
                return self._leave_trunk(pre(self._enter_trunk(x)))
        finally:
            if precision:
                self._abandon_trunk()
            for m, t in modes:
                m.training = t

    def trunk(self, x: Tensor) -> Tensor:
        pre, _ = self._current()
        if self._frozen:
            with torch.no_grad():
                return pre(x)
        return pre(x)

    def head(self, f: Tensor) -> Tensor:
        return self._current()[1](f)

    def set_hook(self, hook: Optional[FeatureHook]) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        for h in self._root_handles:
            h.remove()
        self._root_handles = []
        self._abandon_trunk()
        if hook is None:
            return
        if not self.precision_active:
            self._handle = self.module.register_forward_hook(lambda module, inputs, output: hook(output))
            return
        # autocast / channels_last from the model's input to the cut (the module docstring)
        self._handle = self.module.register_forward_hook(
            lambda module, inputs, output: hook(self._leave_trunk(output)))
        self._root_handles = [
            self.model.register_forward_pre_hook(lambda m, args: (self._enter_trunk(args[0]), *args[1:])
                                                 if args else None),
            # a forward that fails before the cut must not leave autocast on
            self.model.register_forward_hook(lambda m, args, out: self._abandon_trunk(), always_call=True),
        ]

    def freeze(self) -> None:
        """No gradients before the cut, and eval mode there whoever calls ``model.train()``.

        A model that is not a SplitNet has no ``train()`` override keeping its frozen part in
        eval mode, and strategies and plugins call ``model.train()`` (MAS even runs its
        importance pass in train mode): a forward pre-hook on each frozen module puts it back
        in eval mode before it runs, so BatchNorm statistics before the cut never move.
        """
        for p in self._pre_params:
            p.requires_grad_(False)
        self._frozen = True
        for m in self._pre_modules:
            if m not in _EVAL_HOOKS:
                _EVAL_HOOKS[m] = m.register_forward_pre_hook(_stay_in_eval)
        for m in self._pre_modules:
            m.eval()

    def unfreeze(self) -> None:
        for p in self._pre_params:
            p.requires_grad_(True)
        for m in self._pre_modules:
            handle = _EVAL_HOOKS.pop(m, None)
            if handle is not None:
                handle.remove()
        self._frozen = False

    def trunk_parameters(self) -> List[nn.Parameter]:
        return list(self._pre_params)

    def __repr__(self) -> str:
        return f"LayerCut({type(self.model).__name__}, {self.layer!r})"


# Frozen module -> handle of its _stay_in_eval pre-hook (one per module, however many cuts see it).
_EVAL_HOOKS: weakref.WeakKeyDictionary[nn.Module, Any] = weakref.WeakKeyDictionary()


def _stay_in_eval(module: nn.Module, inputs: Any) -> None:
    """Forward pre-hook of a frozen module: run in eval mode (a plain function, so models stay picklable)."""
    if module.training:
        module.eval()


def _device_of(model: nn.Module) -> str:
    for t in model.parameters():
        return str(t.device)
    for t in model.buffers():
        return str(t.device)
    return "cpu"


def _ancestors(nodes: Sequence[torch.fx.Node]) -> Set[torch.fx.Node]:
    seen: Set[torch.fx.Node] = set()
    stack = list(nodes)
    while stack:
        for i in stack.pop().all_input_nodes:
            if i not in seen:
                seen.add(i)
                stack.append(i)
    return seen


def _get_attr(model: nn.Module, name: str) -> Any:
    obj: Any = model
    for part in name.split("."):
        obj = getattr(obj, part)
    return obj


def refuse_task_aware(model: Any, who: str) -> None:
    """Refuse a multi-head (task-aware) model: an Avalanche ``MultiTaskModule`` anywhere in it.

    Latent replay runs the layers after the cut on decoded feature maps alone: a multi-head
    classifier there would need each item's task label, which neither the cut's head nor the
    code buffer carries, and seen-class masking is per stream, not per task. Such a model used
    to train a whole experience and then fail with a raw ``TypeError`` at the first replay step.

    :raises StreamclError: naming the fix (the single-head model; the logits are masked to the
        classes seen so far, which needs no task label).
    """
    if not isinstance(model, nn.Module):
        return
    from avalanche.models.dynamic_modules import MultiTaskModule

    found = next((name or "the model" for name, m in model.named_modules() if isinstance(m, MultiTaskModule)), None)
    if found is None:
        return
    raise StreamclError(
        f"{who}: {type(model).__name__} is a multi-head, task-aware model ({found} is an Avalanche "
        "MultiTaskModule, e.g. from as_multitask): latent replay runs the layers after the cut on replayed "
        "feature maps that carry no task label, so multi-head models are not supported. Use the single-head "
        "model (the SplitNet or cut model before as_multitask, e.g. small_cnn_cut(num_classes), or "
        "latent_layer= on a single-head network): its logits are masked to the classes seen so far, which "
        "needs no task label; task-labelled benchmarks still work and are evaluated per task by the metrics"
    )


def resolve_cut(model: Any, latent_layer: Optional[str], who: str) -> ModelCut:
    """The :class:`ModelCut` of ``model``: at ``latent_layer`` when given, else a SplitNet's own cut.

    :raises StreamclError: ``model`` is no SplitNet and no ``latent_layer`` was given, or it is a
        multi-head (task-aware) model (:func:`refuse_task_aware`).
    """
    from streamcl.models.splitnet import is_splitnet

    refuse_task_aware(model, who)
    if latent_layer is not None:
        if not isinstance(model, nn.Module):
            raise StreamclError(f"{who} needs an nn.Module, got {type(model).__name__}")
        return LayerCut(model, latent_layer, who=who)
    if is_splitnet(model):
        return SplitNetCut(model)
    raise StreamclError(
        f"{who} needs a streamcl.models.SplitNet (a frozen trunk + a trainable head) or the name of the layer "
        f"to cut {type(model).__name__} at: pass latent_layer='layer4.0' (any sub-module name), build the model "
        "with a cut factory (squeezenet_cut, resnet18_cut, mobilenetv2_cut, small_cnn_cut) or wrap yours as "
        "SplitNet(trunk, head)"
    )
