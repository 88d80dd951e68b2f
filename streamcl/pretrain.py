"""The ``pretrain:`` phase of an experiment: offline CRUMB pretraining before the streams.

CRUMB's paper pretrains the head and the codebook ("memory blocks") offline on a
base dataset (ImageNet) with ``CE(head(decode(encode(f)))) + CE(head(f))``, then
streams with the trunk frozen. An experiment states it once::

    pretrain:
      benchmark: {name: synthetic, layout: core50, root: .cache/streamcl, protocol: offline}
      plugin: {name: crumb, n_blocks: 256, block_dim: 16}
      epochs: 10
      mb_size: 128
      train_trunk: false   # true: also train the trunk (ImageNet-style pretraining on the base set)

The runner trains once per experiment (``<output_dir>/<name>/pretrain/crumb.pt``,
reused while its config is unchanged), and every cell whose model takes
``weights`` and whose ``crumb`` plugin takes ``pretrained`` starts from that file
unless the cell sets them itself.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Dict, Optional

from streamcl.registry import BENCHMARKS, MODELS, PLUGINS

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
}
DEFAULTS = {"epochs": 10, "mb_size": 128, "lr": 1e-3, "momentum": 0.9, "weight_decay": 1e-4, "direct_loss": True,
            "train_trunk": False, "max_steps": None}


def check_pretrain(c, path, value) -> Dict[str, Any]:
    """Validate a ``pretrain:`` section (``c`` is the config checker, which names file and key on error)."""
    value = dict(c.mapping(path, value))
    c.keys(path, value, list(PRETRAIN_KEYS), required=("benchmark",))
    out: Dict[str, Any] = {}
    for k, tp in PRETRAIN_KEYS.items():
        if k in ("benchmark", "model", "plugin"):
            continue
        out[k] = c.typed(path + (k,), value.get(k, DEFAULTS[k]), tp)
    for k in ("epochs", "mb_size"):
        if out[k] < 1:
            c.fail(path + (k,), f"must be >= 1, got {out[k]}")
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

    The pretraining model defaults to the first cell's model, taken before this change.
    """
    assert exp.pretrain is not None
    if exp.pretrain.get("model") is None:
        exp.pretrain["model"] = copy.deepcopy(exp.cells[0].config["model"])
    target = str(pretrained_path(exp))
    for cell in exp.cells:
        cfg = cell.config
        if MODELS.get(cfg["model"]["name"]).wants("weights") and cfg["model"].get("weights") is None:
            cfg["model"]["weights"] = target
        for p in cfg["plugins"]:  # (the raw-features ablation has no codebook to take)
            if p["name"] == "crumb" and p.get("pretrained") is None and p.get("storage") != "raw_features":
                p["pretrained"] = target
        if cfg["strategy"]["name"] == "crumb" and cfg["strategy"].get("pretrained") is None:
            cfg["strategy"]["pretrained"] = target


def _digest(cfg: Dict[str, Any], model_cfg: Dict[str, Any]) -> str:
    from streamcl.runner import config_digest

    return config_digest({"pretrain": cfg, "model": model_cfg})


def run_pretrain(exp, *, restart: bool = False, progress: bool = True) -> Path:
    """Pretrain once (or reuse an up-to-date file) and return the path of the pretrained file."""
    from avalanche.benchmarks.utils import concat_datasets

    from streamcl.runner import build_model, build_scenario, n_classes_of, resolve_device
    from streamcl.utils import seed_everything

    cfg = exp.pretrain
    assert cfg is not None
    model_cfg = cfg["model"]
    out = pretrained_path(exp)
    meta = out.with_suffix(".json")
    digest = _digest(cfg, model_cfg)
    if out.exists() and meta.exists() and not restart:
        if json.loads(meta.read_text()).get("digest") == digest:
            print(f"[pretrain] reusing {out}", flush=True)
            return out
    seed_everything(0)
    scenario = build_scenario(cfg["benchmark"], 0)
    data = concat_datasets([e.dataset for e in scenario.train_stream])
    model = build_model(model_cfg, n_classes_of(scenario))
    plugin_kwargs = {k: v for k, v in cfg["plugin"].items() if k != "name"}
    plugin = PLUGINS.get("crumb").factory(**plugin_kwargs)
    device = resolve_device(exp.cells[0].config["device"])
    print(f"[pretrain] CRUMB on {cfg['benchmark']['name']}: {len(data)} images, {cfg['epochs']} epochs", flush=True)
    losses = plugin.pretrain(
        model, data, epochs=cfg["epochs"], mb_size=cfg["mb_size"], lr=cfg["lr"], momentum=cfg["momentum"],
        weight_decay=cfg["weight_decay"], direct_loss=cfg["direct_loss"], train_trunk=cfg["train_trunk"],
        device=device, max_steps=cfg["max_steps"],
    )
    plugin.save_pretrained(out, model.cpu())
    tmp = meta.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"digest": digest, "final_loss": float(losses[-1]) if losses else None,
                               "images": len(data)}, indent=2))
    tmp.replace(meta)
    print(f"[pretrain] wrote {out} (final loss {losses[-1]:.4f})" if losses else f"[pretrain] wrote {out}", flush=True)
    return out


__all__ = ["check_pretrain", "run_pretrain", "attach_pretrained", "pretrained_path"]
