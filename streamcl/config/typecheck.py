"""Type checking: a YAML value against a factory parameter's type hint.

A factory's signature is its YAML schema (:mod:`streamcl.registry`): :func:`param_type`
reads a parameter's hint (else its default's type, else what its name implies, for
Avalanche's hint-less plugins) and :func:`check_type` checks and coerces a value
(``int`` -> ``float``, lists -> tuples) against ``Optional``/``Union``/``Literal``/
``List[...]``/``Tuple[...]``/``Dict``. Hints YAML can never satisfy (a module, a
callable, a tensor) are recognised by :func:`is_yaml_type` so that the error can say
"takes a Python object" instead of "must be Tensor".
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
import re
import types
import typing
from typing import Any, Dict, Tuple, Union

_UNIONS = (Union, types.UnionType)


def type_name(tp: Any) -> str:
    """A type hint as an error message shows it (``int or null``, ``'epoch' | 'iteration'``)."""
    origin = typing.get_origin(tp)
    if origin in _UNIONS:
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin is not None:
        return getattr(origin, "__name__", str(origin))
    if tp is type(None):
        return "null"
    return getattr(tp, "__name__", str(tp))


_YAML_TYPES = (bool, int, float, str, list, dict, type(None))


def is_yaml_type(tp: Any) -> bool:
    """True when a YAML value can ever be of type ``tp`` (False for modules, callables, objects)."""
    if tp is Any or tp is inspect.Parameter.empty or isinstance(tp, (str, typing.TypeVar)):
        return True
    origin = typing.get_origin(tp)
    if origin in _UNIONS:
        return any(is_yaml_type(a) for a in typing.get_args(tp))
    if origin is typing.Literal:
        return True
    if origin is not None:
        tp = origin
    if tp in (typing.Sequence, typing.Mapping, collections.abc.Sequence, collections.abc.Mapping):
        return True
    try:
        return any(issubclass(t, tp) for t in _YAML_TYPES) or issubclass(tp, (list, tuple, dict))
    except TypeError:
        return True


def check_type(value: Any, tp: Any) -> Tuple[bool, Any]:
    """(ok, value coerced to ``tp``) for a YAML value against a type hint; unknown hints accept anything."""
    if tp is Any or tp is inspect.Parameter.empty or isinstance(tp, (str, typing.TypeVar)):
        return True, value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in _UNIONS:
        # A Python-object member (Path, Tensor) takes only null, and only when no YAML member
        # exists: `root: Union[str, Path]` refuses null, `lr: float | Tensor` too.
        if any(is_yaml_type(a) and a is not type(None) for a in args):
            args = tuple(a for a in args if is_yaml_type(a))
        for a in sorted(args, key=lambda a: a is float):  # prefer exact matches (int before float)
            ok, v = check_type(value, a)
            if ok:
                return True, v
        return False, value
    if origin is typing.Literal:
        return value in args, value
    if tp is type(None):
        return value is None, value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok, float(value) if ok else value
    if tp is str:
        return isinstance(value, str), value
    base = origin or tp
    is_seq = base in (list, tuple, typing.Sequence, collections.abc.Sequence) or (
        inspect.isclass(base) and issubclass(base, (list, tuple)) and base is not str
    )
    if is_seq:
        if not isinstance(value, list):
            return False, value
        item_tp = args[0] if len(args) == 1 or (len(args) == 2 and args[1] is Ellipsis) else Any
        out = []
        for v in value:
            ok, v2 = check_type(v, item_tp)
            if not ok:
                return False, value
            out.append(v2)
        return True, tuple(out) if base is tuple else out
    if base in (dict, typing.Mapping, collections.abc.Mapping) or (inspect.isclass(base) and issubclass(base, dict)):
        return isinstance(value, dict), value
    if not is_yaml_type(tp):
        return value is None, value
    return True, value


@functools.cache
def signature_of(entry: Any) -> Tuple[Dict[str, inspect.Parameter], Dict[str, Any]]:
    """(parameters, type hints) of a registry entry, computed once (a grid checks the same factories per cell)."""
    return entry.parameters(), hints_of(entry.factory)


def hints_of(factory: Any) -> Dict[str, Any]:
    """Resolved type hints of a factory (a class: of its ``__init__``)."""
    target = factory.__init__ if inspect.isclass(factory) else factory
    try:
        return typing.get_type_hints(target)
    except Exception:  # unresolvable forward references: fall back to raw annotations
        return {k: v for k, v in getattr(target, "__annotations__", {}).items() if not isinstance(v, str)}


# Many Avalanche plugins carry no type hints (``EWCPlugin(ewc_lambda, ...)``); for a
# hint-less parameter without a default, its name says what it holds.
_NAME_TYPES = (
    (re.compile(r"(^|_)(lambda|lamb|alpha|beta|temperature|temp|lr|gamma|eps|epsilon|margin|decay)(_|$)"), float),
    (re.compile(r"(_size|_sizes)$|^(n|num|nb)_|^patterns_per_|_per_(exp|experience|class)$|_epochs$"), int),
)


def param_type(param: inspect.Parameter, hints: Dict[str, Any]) -> Any:
    """The hint for a parameter, else the type of its default, else a type its name implies."""
    tp = hints.get(param.name, inspect.Parameter.empty)
    if tp is inspect.Parameter.empty and param.default is inspect.Parameter.empty:
        for pattern, guess in _NAME_TYPES:
            if pattern.search(param.name):
                return guess
    if tp is inspect.Parameter.empty and param.default is not inspect.Parameter.empty:
        d = param.default
        if isinstance(d, bool):
            return bool
        if isinstance(d, float):
            return float
        if isinstance(d, int):  # unannotated `alpha=1` may well be given 0.5
            return Union[int, float]
        if isinstance(d, str):
            return str
    return tp
