"""The ``pretrain:`` section of an experiment: its keys, checks, and how cells take its output.

Config-time only (the pretraining itself runs in :mod:`streamcl.pretrain`, above the config).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Dict, Optional

from streamcl.config.schema import check_optimizer
from streamcl.errors import ConfigError
from streamcl.registry import BENCHMARKS, MODELS, PLUGINS
from streamcl.utils import config_digest

# Bumped when what a pretrained file holds for the same section changes (2: the default recipe's
# k-means codebook and the base-set error), so an up-to-date file is not mistaken for an old one.
PRETRAIN_VERSION = 2
CODEBOOK_DEFAULTS = {"n_blocks": 256, "block_dim": 16}  # CRUMBPlugin's shape when neither says
# Model keys that do not change what the weights file holds: not compared with the pretraining model.
MODEL_KEYS_FREE = ("weights", "seed", "freeze_trunk", "bn_momentum")

PRETRAIN_KEYS: Dict[str, Any] = {
    "benchmark": dict,
    "model": Optional[dict],
    "plugin": Optional[dict],
    "epochs": int,
    "mb_size": int,
    "lr": float,
    "momentum": float,
    "weight_decay": float,
    "direct_loss": bool,
    "train_trunk": bool,
    "max_steps": Optional[int],
    "cache_features": bool,
}
DEFAULTS = {"epochs": 10, "mb_size": 128, "lr": 1e-3, "momentum": 0.9, "weight_decay": 1e-4, "direct_loss": True,
            "train_trunk": False, "max_steps": None, "cache_features": False}


def check_pretrain(c, path, value) -> Dict[str, Any]:
    """Validate a ``pretrain:`` section (``c`` is the config checker, which names file and key on error)."""
    value = dict(c.mapping(path, value))
    c.keys(path, value, list(PRETRAIN_KEYS), required=("benchmark",))
    out: Dict[str, Any] = {}
    for k, tp in PRETRAIN_KEYS.items():
        if k in ("benchmark", "model", "plugin"):
            continue
        out[k] = c.typed(path + (k,), value.get(k, DEFAULTS[k]), tp)  # (typed: floats are finite)
    if out["cache_features"] and out["train_trunk"]:
        c.fail(path + ("cache_features",), "needs a frozen trunk: it runs the trunk once and reuses its "
                                           "features, which train_trunk: true changes every step; drop one")
    for k in ("epochs", "mb_size", "max_steps"):
        if out[k] is not None and out[k] < 1:
            c.fail(path + (k,), f"must be >= 1, got {out[k]}")
    # The pretraining optimiser is SGD (CRUMBPlugin.pretrain): let torch check lr, momentum, weight decay.
    check_optimizer(c, path, {"name": "sgd", "lr": out["lr"], "momentum": out["momentum"],
                              "weight_decay": out["weight_decay"]})
    out["benchmark"] = c.component(path + ("benchmark",), value["benchmark"], BENCHMARKS)
    if value.get("model") is not None:
        out["model"] = c.component(path + ("model",), value["model"], MODELS)
    plugin = c.component(path + ("plugin",), value.get("plugin") or {"name": "crumb"}, PLUGINS)
    if plugin["name"] != "crumb":
        c.fail(path + ("plugin", "name"), f"only 'crumb' has an offline pretraining phase, got '{plugin['name']}'")
    out["plugin"] = plugin
    out["model"] = out.get("model")
    return out


def pretrained_path(exp) -> Path:
    return exp.root / "pretrain" / "crumb.pt"


def attach_pretrained(exp) -> None:
    """Point each cell's model ``weights`` and ``crumb.pretrained`` at the pretraining output (if unset).

    The pretraining model defaults to the first cell's model, taken before this change. A
    cell that takes anything from the pretraining also records the pretraining's digest
    (``pretrained: {file, digest}``), so its config, and thus its checkpoints and finished
    runs, change when the ``pretrain:`` section does: the runner then refuses the stale
    results instead of reporting them as finished.

    A cell whose codebook (``n_blocks``, ``block_dim``) or model settings (width, channels, cut ...)
    disagree with what the pretraining writes is a :class:`ConfigError` naming both values, raised
    here, before anything runs: the file's values would otherwise replace the cell's silently.
    """
    assert exp.pretrain is not None
    if exp.pretrain.get("model") is None:
        exp.pretrain["model"] = copy.deepcopy(exp.cells[0].config["model"])
    target = str(pretrained_path(exp))
    digest = _digest(exp.pretrain, exp.pretrain["model"])
    for cell in exp.cells:
        cfg = cell.config
        used = False
        if MODELS.get(cfg["model"]["name"]).wants("weights") and cfg["model"].get("weights") is None:
            cfg["model"]["weights"] = target
            used = True
        if cfg["model"].get("weights") == target:
            _check_model(exp, cell.name, cfg["model"])
        for i, p in enumerate(cfg["plugins"]):  # (the raw-features ablation has no codebook to take)
            if p["name"] == "crumb" and p.get("pretrained") is None and p.get("storage") != "raw_features":
                p["pretrained"] = target
                used = True
            if p["name"] == "crumb" and p.get("pretrained") == target:
                _check_codebook(exp, cell.name, f"plugins[{i}]", p)
        if cfg["strategy"]["name"] == "crumb" and cfg["strategy"].get("pretrained") is None:
            cfg["strategy"]["pretrained"] = target
            used = True
        if cfg["strategy"]["name"] == "crumb" and cfg["strategy"].get("pretrained") == target:
            _check_codebook(exp, cell.name, "strategy", cfg["strategy"])
        if used:
            cfg["pretrained"] = {"file": target, "digest": digest}


def _check_codebook(exp, cell: str, where: str, cfg: Dict[str, Any]) -> None:
    """A cell's codebook shape must be the one the ``pretrain:`` section writes."""
    pre = exp.pretrain["plugin"]
    for key, default in CODEBOOK_DEFAULTS.items():
        mine, theirs = cfg.get(key), pre.get(key)
        theirs = default if theirs is None else theirs
        if mine is not None and int(mine) != int(theirs):
            raise ConfigError(
                f"{mine} in cell '{cell}', but the experiment's pretrain: section writes a codebook with "
                f"{key} {theirs} (pretrain.plugin.{key}), which this cell loads; set the same value in both, "
                f"or drop the cell's {key}", file=exp.file, key=f"{where}.{key}")


def _check_model(exp, cell: str, model: Dict[str, Any]) -> None:
    """A cell's model must have the shape of the ``pretrain:`` model whose weights it loads."""
    pre = exp.pretrain["model"]
    if model["name"] != pre["name"]:
        raise ConfigError(f"'{model['name']}' in cell '{cell}', but the pretrain: section trains '{pre['name']}', "
                          "whose weights this cell loads; use the same model, or set the cell's model.weights",
                          file=exp.file, key="model.name")
    defaults = {n: p.default for n, p in MODELS.get(model["name"]).parameters().items()
                if p.default is not p.empty}
    for key in sorted(set(model) | set(pre)):
        if key in MODEL_KEYS_FREE or key == "name":
            continue
        mine, theirs = model.get(key, defaults.get(key)), pre.get(key, defaults.get(key))
        if mine != theirs:
            raise ConfigError(
                f"{mine!r} in cell '{cell}', but the pretrain: section trains the model with {key}: {theirs!r}, "
                f"whose weights this cell loads; set the same {key} in both (pretrain.model.{key}), or set the "
                "cell's model.weights", file=exp.file, key=f"model.{key}")


def _digest(cfg: Dict[str, Any], model_cfg: Dict[str, Any]) -> str:
    return config_digest({"pretrain": cfg, "model": model_cfg, "version": PRETRAIN_VERSION})


__all__ = ["PRETRAIN_KEYS", "DEFAULTS", "check_pretrain", "attach_pretrained", "pretrained_path"]
