"""The ``reference:`` section: a paper's published numbers for an experiment, and its protocol.

::

    reference:
      source: "Yan et al., DER, CVPR 2021, Table 1 (WA row)"   # where the values come from (default)
      setting:                                  # the paper's protocol: dotted cell-config keys -> values
        strategy.train_epochs: 170
        model.name: resnet18
      values:
        - {cell: wa, metric: average_incremental_accuracy, value: 69.46, tolerance: 1.5}
        - {cell: wa, metric: final_accuracy, value: 53.78, tolerance: 2.0, source: "an override"}

``metric`` is a name of :data:`streamcl.paper_metrics.METRICS`; ``value`` is in that
metric's unit (``%`` points, ``ratio`` for ``omega_all``); ``tolerance`` (> 0, same unit)
is how far a run's mean may sit from ``value`` and still reproduce it; ``cell`` names a
cell of the experiment (it may be left out when there is one cell); every value needs a
``source``, its own or the section's. A ``setting`` key is a key path of the cell config
(``strategy.memory``, ``plugins[0].lambda_reg``); a run whose cell config differs from the
paper's value at any of them is reported as *reduced* (``-o strategy.train_epochs=1``).

The section is not part of any cell config (so that it changes no digest): it is kept as
:attr:`Experiment.reference <streamcl.config.experiment.Experiment.reference>` and the
runner writes it to ``<output_dir>/<name>/reference.yaml`` for ``streamcl report``.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple, Union

from streamcl.config.text import KeyPath, short
from streamcl.errors import ConfigError

if TYPE_CHECKING:
    from streamcl.config.cell import Cell
    from streamcl.config.schema import Checker

REFERENCE_FILE = "reference.yaml"  # <output_dir>/<name>/reference.yaml: the section, for `streamcl report`
REFERENCE_KEYS = ("source", "setting", "values")
VALUE_KEYS = ("cell", "metric", "value", "tolerance", "source")


def metric_names() -> Sequence[str]:
    """The metrics a reference may name: the keys of :data:`streamcl.paper_metrics.METRICS`."""
    from streamcl.paper_metrics import METRICS  # (imported when a file has a reference section)

    return list(METRICS)


def split_key_path(key: str) -> List[Union[str, int]]:
    """``plugins[0].lambda_reg`` -> ``["plugins", 0, "lambda_reg"]`` (the ``-o`` syntax); ValueError if malformed."""
    from streamcl.config.compose import _split_key

    try:
        return _split_key(key)
    except ConfigError as e:
        raise ValueError(e.detail) from None


def lookup(config: Any, parts: Sequence[Union[str, int]]) -> Tuple[bool, Any]:
    """(found, value) of the key path ``parts`` in a cell config."""
    node = config
    for p in parts:
        if isinstance(node, dict) and isinstance(p, str) and p in node:
            node = node[p]
        elif isinstance(node, list) and isinstance(p, int) and p < len(node):
            node = node[p]
        else:
            return False, None
    return True, node


def _text(c: Checker, path: KeyPath, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        c.fail(path, f"must be a non-empty text (where the number comes from: paper, table, row), got {short(value)}")
    return value.strip()


def _number(c: Checker, path: KeyPath, value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        c.fail(path, f"must be a number ({what}), got {type(value).__name__} {short(value)}")
    if not math.isfinite(value):
        c.fail(path, f"must be a finite number ({what}), got {value}")
    return float(value)


def check_reference(c: Checker, path: KeyPath, value: Any, cells: Sequence[Cell]) -> Dict[str, Any]:
    """Validate the ``reference:`` section against the experiment's cells; returns it normalised.

    The result: ``{source: str | None, setting: {key: value}, values: [{cell, metric, value, tolerance,
    source}]}``, every value with its cell named and its source filled in.
    """
    value = c.mapping(path, value)
    c.keys(path, value, REFERENCE_KEYS, required=("values",))
    source = _text(c, path + ("source",), value["source"]) if value.get("source") is not None else None
    names = [cell.name for cell in cells]

    raw_values = value["values"]
    if not isinstance(raw_values, list) or not raw_values:
        c.fail(path + ("values",), "must be a non-empty list of {cell, metric, value, tolerance, source} items")
    known = metric_names()
    out_values: List[Dict[str, Any]] = []
    seen: Dict[Tuple[str, str], int] = {}
    for i, item in enumerate(raw_values):
        ipath = path + ("values", i)
        item = c.mapping(ipath, item)
        c.keys(ipath, item, VALUE_KEYS, required=("metric", "value", "tolerance"))
        if item.get("cell") is None:
            if len(names) != 1:
                c.fail(ipath, f"missing key 'cell': the experiment has {len(names)} cells ({', '.join(names[:20])}"
                              f"{', ...' if len(names) > 20 else ''}); name the one this value is for")
            cell = names[0]
        else:
            cell = item["cell"]
            if cell not in names:
                c.unknown(ipath + ("cell",), cell, names, what="cell")
        metric = item["metric"]
        if metric not in known:
            c.unknown(ipath + ("metric",), metric, known, what="metric")
        number = _number(c, ipath + ("value",), item["value"], "the published value, in the metric's unit")
        tolerance = _number(c, ipath + ("tolerance",), item["tolerance"],
                            "how far a run may sit from the value, in the metric's unit")
        if tolerance <= 0:
            c.fail(ipath + ("tolerance",), f"must be > 0 (how far a reproduction may sit from the published value, "
                                           f"in the metric's unit), got {item['tolerance']}")
        own = item.get("source")
        item_source = _text(c, ipath + ("source",), own) if own is not None else source
        if item_source is None:
            c.fail(ipath, "has no source: give the value its own 'source' or the section one (reference.source)")
        if (cell, metric) in seen:
            c.fail(ipath, f"repeats cell '{cell}' metric '{metric}' (already at values[{seen[(cell, metric)]}])")
        seen[(cell, metric)] = i
        out_values.append({"cell": cell, "metric": metric, "value": number, "tolerance": tolerance,
                           "source": item_source})

    setting = value.get("setting")
    setting = {} if setting is None else dict(c.mapping(path + ("setting",), setting))
    # The keys are checked against the config of the first cell the values name (every cell shares the
    # protocol keys: benchmark, model, strategy; a method's plugin keys exist in its own cells only).
    first = next(cell for cell in cells if cell.name == out_values[0]["cell"])
    for key in setting:
        kpath = path + ("setting", key)
        try:
            parts = split_key_path(key) if isinstance(key, str) else None
        except ValueError:
            parts = None
        if not parts:
            c.fail(kpath, f"setting key {short(key)} must be a key path of the cell config, such as "
                          "strategy.train_epochs or plugins[0].lambda_reg")
        found, _ = lookup(first.config, parts)
        if not found:
            tops = sorted(k for k in first.config if isinstance(k, str))
            c.fail(kpath, f"no key '{key}' in the config of cell '{first.name}' (it starts with: {', '.join(tops)}); "
                          "name a key the experiment sets, as in -o key.path=value")
    return {"source": source, "setting": setting, "values": out_values}


def reference_yaml(reference: Optional[Dict[str, Any]]) -> Optional[str]:
    """The text of ``reference.yaml`` (None: the experiment has no reference section)."""
    if reference is None:
        return None
    import yaml

    return yaml.safe_dump(reference, sort_keys=False, allow_unicode=True)
