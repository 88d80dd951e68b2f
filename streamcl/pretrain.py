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
      cache_features: false  # true (frozen trunk only): run the trunk once, train every epoch on its features

The runner trains once per experiment (``<output_dir>/<name>/pretrain/crumb.pt``,
reused while its config is unchanged), and every cell whose model takes
``weights`` and whose ``crumb`` plugin takes ``pretrained`` starts from that file
unless the cell sets them itself.
"""

from __future__ import annotations

import json
from pathlib import Path

# The section's keys and checks live with the config (streamcl.config.pretrain); re-exported here.
from streamcl.config.pretrain import (
    DEFAULTS,
    PRETRAIN_KEYS,
    _digest,
    attach_pretrained,
    check_pretrain,
    pretrained_path,
)
from streamcl.errors import StreamclError
from streamcl.registry import PLUGINS
from streamcl.utils import atomic_write_text


def run_pretrain(exp, *, restart: bool = False, progress: bool = True) -> Path:
    """Pretrain once (or reuse an up-to-date file) and return the path of the pretrained file."""
    from avalanche.benchmarks.utils import concat_datasets

    from streamcl.build import build_model, build_scenario, n_classes_of, resolve_device
    from streamcl.utils import seed_everything

    cfg = exp.pretrain
    assert cfg is not None
    model_cfg = cfg["model"]
    out = pretrained_path(exp)
    meta = out.with_suffix(".json")
    digest = _digest(cfg, model_cfg)
    if out.exists() and meta.exists() and not restart:
        try:
            saved = json.loads(meta.read_text(encoding="utf-8"))
            saved_digest = saved.get("digest") if isinstance(saved, dict) else None
        except (ValueError, UnicodeDecodeError):
            raise StreamclError(f"{meta}: unreadable (damaged); delete it to pretrain again, or rerun with "
                                "--restart") from None
        if saved_digest == digest:
            print(f"[pretrain] reusing {out}", flush=True)
            return out
    from streamcl import tensorboard_events

    tensorboard_events.reset(out.parent / "tb")  # the events of an earlier or interrupted pretraining
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
        device=device, max_steps=cfg["max_steps"], cache_features=cfg.get("cache_features", False),
        log_dir=out.parent / "tb", progress=progress, input_transform=_input_transform(scenario),
    )
    plugin.save_pretrained(out, model.cpu())
    atomic_write_text(meta, json.dumps({"digest": digest, "final_loss": float(losses[-1]) if losses else None,
                                        "images": len(data)}, indent=2))
    print(f"[pretrain] wrote {out} (final loss {losses[-1]:.4f})" if losses else f"[pretrain] wrote {out}", flush=True)
    return out


def _input_transform(scenario):
    """The device-side normalisation a frame-cache scenario's uint8 batches need (None for decoded images)."""
    stats = getattr(getattr(scenario, "streamcl_info", None), "device_normalize", None)
    if stats is None:
        return None
    from streamcl.benchmarks.device_transforms import DeviceNormalize

    return DeviceNormalize(*stats)


__all__ = ["PRETRAIN_KEYS", "DEFAULTS", "check_pretrain", "run_pretrain", "attach_pretrained", "pretrained_path"]
