"""The ``sweep:`` section: hyper-parameter axes whose cartesian product multiplies every grid cell.

::

    sweep:
      strategy.optimizer.lr: [0.01, 0.1]
      plugins[0].n_blocks: [128, 256]

Each key is a path inside one cell's configuration, written exactly like a ``-o``
override (the path is parsed and set by :mod:`streamcl.config.compose`, so there is one
path syntax to learn); it must start with ``benchmark``, ``model``, ``strategy`` or
``plugins``. Each value is a non-empty list of scalars. Every cell of ``benchmarks:`` x
``methods:`` is expanded into one cell per combination, named
``<cell>-<short><value>-...`` (``crumb-lr0.01-n_blocks128``): ``short`` is the key's last
component, or its last few when two keys end alike (``optimizer.lr``, ``plugins0.lr``).

A swept value replaces whatever the file or a method sets at that path (the sweep is the
more specific statement), and is then validated like a hand-written value; an error
names ``sweep.<key>[i]`` and the file it came from. On the command line,
``-o sweep.<key>=[...]`` replaces one axis (``-o sweep.<key>=null`` drops it), and ``-o
<key>=value`` on a swept key is refused (the sweep would silently replace it in every
cell): see :func:`apply_sweep_override` and :func:`check_overrides_against_sweep`.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import math
import re
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from streamcl.config.compose import Origins, _split_key, apply_override
from streamcl.config.read import parse_value
from streamcl.config.schema import Checker
from streamcl.config.text import KeyPath, fmt_path, one_line, short
from streamcl.errors import ConfigError

SWEEP_ROOTS = ("benchmark", "model", "strategy", "plugins")  # the parts of a cell config a sweep may change
MAX_CELL_NAME = 200  # a cell name is a folder name and, with "-run<k>.lock", a lock file name (255 bytes)
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9_.+-]+$")  # the characters check_label allows in a folder name
_EXPONENT = re.compile(r"e([+-])0*(\d)")


@dataclass(frozen=True)
class Axis:
    """One ``sweep:`` key: its path inside a cell config, its values and their cell-name labels."""

    key: str  # as written, e.g. "strategy.optimizer.lr"
    parts: Tuple[Union[str, int], ...]  # ("strategy", "optimizer", "lr")
    values: Tuple[Any, ...]
    labels: Tuple[str, ...]  # folder-safe label of each value ("0.01", "true", "class_iid")
    short: str = ""  # the key's part of a cell name ("lr"), set once all keys are known

    @property
    def root(self) -> str:
        """The part of a cell config the axis changes: benchmark, model, strategy or plugins."""
        return str(self.parts[0])


def axis_parts(key: str) -> Tuple[Union[str, int], ...]:
    """A sweep key's path, parsed with the ``-o`` override parser (raises its ConfigError)."""
    return tuple(_split_key(key.strip()))


def value_label(value: Any) -> Optional[str]:
    """A swept value as a compact, folder-safe label (``0.01``, ``1e-5``, ``true``, ``adam``), or None.

    Floats use Python's shortest round-trip form (``repr``), so two different values never
    share a label; strings must already be made of folder-safe characters.
    """
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return _EXPONENT.sub(r"e\1\2", repr(value)) if math.isfinite(value) else None
    if isinstance(value, str) and _SAFE_VALUE.match(value):
        return value
    return None


def _chunks(parts: Sequence[Union[str, int]]) -> List[str]:
    """``plugins[0].lr`` -> ``["plugins0", "lr"]``: a list index joins the name before it."""
    out: List[str] = []
    for p in parts:
        if isinstance(p, int) and out:
            out[-1] += str(p)
        else:
            out.append(str(p))
    return out


def check_sweep(c: Checker, value: Any) -> List[Axis]:
    """The ``sweep:`` mapping as axes in file order, each key and value checked (null or {}: no sweep)."""
    if value is None:
        return []
    c.mapping(("sweep",), value)
    axes: List[Axis] = []
    for key, values in value.items():
        path: KeyPath = ("sweep", key)
        if not isinstance(key, str):
            c.fail(path, f"sweep key {short(key)} must be a config path such as strategy.optimizer.lr")
        try:
            parts = axis_parts(key)
        except ConfigError as e:
            c.fail(path, e.detail)
        if parts[0] not in SWEEP_ROOTS:
            close = difflib.get_close_matches(str(parts[0])[:60], SWEEP_ROOTS, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            c.fail(path, f"a sweep key is a path inside a cell's config and starts with {', '.join(SWEEP_ROOTS)}"
                         f"{hint}, got {short(key)}; top-level keys (runs, seed, device ...) cannot be swept")
        if isinstance(values, dict):
            c.fail(path, "must be a list of values; write the whole path as one key "
                         "(sweep: {strategy.optimizer.lr: [0.01, 0.1]})")
        if not isinstance(values, list):
            c.fail(path, f"must be a list of the values to sweep, got {type(values).__name__} {short(values)}; "
                         f"write it in brackets, e.g. [{short(values, 40)}]")
        if not values:
            c.fail(path, "must list at least one value (or remove the key)")
        labels: List[str] = []
        seen: Dict[str, int] = {}
        for i, v in enumerate(values):
            label = value_label(v)
            if label is None:
                c.fail(path + (i,), f"value {short(v)} cannot be part of a cell (folder) name: sweep numbers, "
                                    "booleans or strings made of letters, digits, '_', '-', '.', '+' (use "
                                    "methods: for alternatives that are not single values)")
            if label in seen:
                c.fail(path + (i,), f"value {short(v)} gives the cell-name label '{label}' that value "
                                    f"{short(values[seen[label]])} already gives; list each value once")
            seen[label] = i
            labels.append(label)
        for other in axes:
            n = min(len(other.parts), len(parts))
            if other.parts[:n] == parts[:n]:
                c.fail(path, f"overlaps sweep key '{other.key}' (one path contains the other); keep one of them")
        axes.append(Axis(key, parts, tuple(values), tuple(labels)))
    return _with_shorts(c, axes)


def _with_shorts(c: Checker, axes: List[Axis]) -> List[Axis]:
    """Give each axis the shortest tail of its path that no other axis shares (``lr`` / ``optimizer.lr``)."""
    chunks = [_chunks(a.parts) for a in axes]
    depth = [1] * len(axes)
    while True:
        names = [".".join(ch[-k:]) for ch, k in zip(chunks, depth)]
        clash = [i for i, n in enumerate(names) if names.count(n) > 1]
        if not clash:
            break
        grown = False
        for i in clash:
            if depth[i] < len(chunks[i]):
                depth[i] += 1
                grown = True
        if not grown:
            i, j = clash[0], next(j for j in clash[1:] if names[j] == names[clash[0]])
            c.fail(("sweep", axes[j].key), f"gives the same cell-name label '{names[j]}' as sweep key "
                                           f"'{axes[i].key}'; write the two paths alike (e.g. both with [N])")
    out = []
    for a, name in zip(axes, names):
        if not _SAFE_VALUE.match(name):
            c.fail(("sweep", a.key), f"the key cannot be part of a cell (folder) name ('{one_line(name)}'); "
                                     "use keys made of letters, digits and '_'")
        out.append(Axis(a.key, a.parts, a.values, a.labels, name))
    return out


def n_combinations(axes: Sequence[Axis]) -> int:
    """How many cells each (benchmark, method) cell becomes (1 without a sweep)."""
    return math.prod(len(a.values) for a in axes)


def combinations(axes: Sequence[Axis]) -> Iterator[Tuple[int, ...]]:
    """Index tuples of the cartesian product, the last key varying fastest (1 empty tuple without a sweep)."""
    return itertools.product(*(range(len(a.values)) for a in axes))


def cell_suffix(axes: Sequence[Axis], choice: Sequence[int]) -> str:
    """``-lr0.01-n_blocks128``: what a combination adds to a cell's name."""
    return "".join(f"-{a.short}{a.labels[i]}" for a, i in zip(axes, choice))


def swept_values(axes: Sequence[Axis], choice: Sequence[int]) -> Dict[str, Any]:
    """``{"strategy.optimizer.lr": 0.01, ...}``: a combination's values by sweep key."""
    return {a.key: a.values[i] for a, i in zip(axes, choice)}


class SweptOrigins(Origins):
    """Origins where the paths a sweep set answer with their ``sweep.<key>[i]`` entry, the rest as ``base``.

    So that a bad swept value is reported at the sweep key and file that gave it, not at the
    method or base key it replaced.
    """

    def __init__(self, base: Origins, swept: Dict[KeyPath, Tuple[str, KeyPath]]):
        super().__init__()
        self._map = base._map
        self._base = base
        self._swept = swept

    def locate(self, path: KeyPath) -> Tuple[Optional[str], str]:
        for n in range(len(path), 0, -1):
            hit = self._swept.get(tuple(path[:n]))
            if hit is not None:
                source, shown = hit
                return source, fmt_path(shown + tuple(path[n:]))
        return self._base.locate(path)


def apply_axes(
    c: Checker, cfg: Dict[str, Any], axes: Sequence[Axis], choice: Sequence[int], at: KeyPath = (),
    drop: int = 0,
) -> Tuple[Dict[str, Any], Dict[KeyPath, Tuple[str, KeyPath]]]:
    """A copy of ``cfg`` with the chosen value of each axis set, and where each set value came from.

    ``cfg`` holds the axes' roots (``{"model": ..., "strategy": ..., "plugins": ...}`` or
    ``{"benchmark": ...}``); the returned origins map the path a Checker will use (``at`` +
    the axis path less its first ``drop`` parts) to the axis's ``sweep.<key>[i]`` entry.
    """
    out = copy.deepcopy(cfg)
    for root in {a.root for a in axes}:
        if isinstance(out.get(root), str):  # `model: resnet18` is short for `model: {name: resnet18}`
            out[root] = {"name": out[root]}
    swept: Dict[KeyPath, Tuple[str, KeyPath]] = {}
    for a, i in zip(axes, choice):
        # Creating the missing mappings (or appending a list item) is the -o override's own rule:
        # set the path to null with it, then put the already-parsed value there.
        try:
            apply_override(out, Origins(), f"{a.key}=null")
        except ConfigError as e:
            c.fail(("sweep", a.key), e.detail)
        node: Any = out
        for p in a.parts[:-1]:
            node = node[p]
        node[a.parts[-1]] = copy.deepcopy(a.values[i])
        source, _ = c.origins.locate(("sweep", a.key, i))
        swept[tuple(at) + a.parts[drop:]] = (source or "sweep", ("sweep", a.key, i))
    return out, swept


def apply_sweep_override(doc: Dict[str, Any], origins: Origins, item: str) -> bool:
    """Apply ``-o sweep.<key>=[values]`` (replace that axis; ``=null`` drops it); False for any other override.

    Handled here because a sweep key holds dots: the generic override would build nested
    mappings (``sweep: {strategy: {optimizer: {lr: ...}}}``) instead of replacing the key
    ``strategy.optimizer.lr`` of the ``sweep:`` mapping.
    """
    key, eq, text = item.partition("=")
    key = key.strip()
    if not eq or not key.startswith("sweep."):
        return False
    axis_key = key[len("sweep."):]
    parts = axis_parts(axis_key)
    value = parse_value(text, f"-o {one_line(item)}")
    section = doc.get("sweep")
    if section is None:
        section = doc["sweep"] = {}
    if not isinstance(section, dict):
        raise ConfigError(f"cannot set '{one_line(key)}': sweep is not a mapping", file="-o")
    same = [k for k in section if isinstance(k, str) and _parts_or_none(k) == parts]  # plugins.0.lr = plugins[0].lr
    for old in same:
        origins.forget(("sweep", old))
    # The axis keeps its place (the order of the name parts); a new one goes last.
    items = [(k, v) for k, v in section.items() if k not in same[1:]]
    if not same:
        items.append((axis_key, value))
    section.clear()
    section.update((axis_key, value) if same and k == same[0] else (k, v) for k, v in items)
    if value is None:
        del section[axis_key]
    else:
        origins.record(value, f"-o {one_line(item)}", ("sweep", axis_key))
    return True


def _parts_or_none(key: str) -> Optional[Tuple[Union[str, int], ...]]:
    try:
        return axis_parts(key)
    except ConfigError:
        return None


def check_overrides_against_sweep(doc: Dict[str, Any], overrides: Sequence[str]) -> None:
    """Refuse ``-o <key>=value`` on a key the final ``sweep:`` sweeps: the sweep would replace it in every cell.

    Also for ``-o methods.<label>.<key>`` and, for benchmark keys, ``-o benchmarks.<label>.<key>``.
    """
    section = doc.get("sweep")
    if not isinstance(section, dict) or not section:
        return
    axes = {p: k for k in section if isinstance(k, str) for p in [_parts_or_none(k)] if p}
    for item in overrides:
        key, eq, text = item.partition("=")
        key = key.strip()
        if not eq or key == "sweep" or key.startswith("sweep."):
            continue
        parts = _parts_or_none(key)
        if not parts:
            continue
        candidates = [parts]
        if len(parts) > 2 and parts[0] == "methods":
            candidates.append(parts[2:])
        if len(parts) > 2 and parts[0] == "benchmarks":
            candidates.append(("benchmark",) + parts[2:])
        for cand in candidates:
            for ap, ak in axes.items():
                if cand[: len(ap)] == ap:
                    raise ConfigError(
                        f"'{one_line(key)}' is swept by sweep.{one_line(ak)}, which sets it in every cell; change "
                        f"the sweep instead, e.g. -o sweep.{one_line(ak)}=[{one_line(text.strip())[:40]}]", file="-o")
