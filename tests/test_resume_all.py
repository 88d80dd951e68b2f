"""Every registered strategy and plugin resumes exactly: interrupted after each experience = uninterrupted.

The parameter list is built FROM the registry (``streamcl.registry``), so a new
component is covered as soon as it is registered; the only ones left out are in
``streamcl.checkpoint.RESUME_NOT_TESTED``, each with the reason (it needs a Python
object, a task-aware model, a solver or a download ...). The runner warns when a
run of one of those resumes; :func:`test_every_registered_component_is_covered_or_excluded`
keeps both lists in step.

Each case runs a tiny synthetic stream (small_cnn_cut, naive strategy unless the
case is a strategy, 3 experiences) once straight through, then again with
``run_experiment(stop_after=1)`` until done (3 interruptions and 3 resumes), and
compares ``metrics.csv`` (clock-dependent metrics left out) and ``summary.json``.
A fast subset runs by default; the rest is marked slow.
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, Dict, List

import pytest
import yaml

from streamcl.checkpoint import RESUME_NOT_TESTED
from streamcl.config import load_experiment
from streamcl.registry import PLUGINS, STRATEGIES, load_all
from streamcl.runner import read_metrics, run_experiment

load_all()

# Metrics whose values depend on the machine's clock or memory, not on the computation.
NONDETERMINISTIC = ("Time", "RAM", "CPU")

# Small settings per component: the keys its factory requires, small buffers. "strategy:X" /
# "plugin:X" -> keyword arguments of that entry. Components not listed need none.
SETTINGS: Dict[str, Dict[str, Any]] = {
    "strategy:agem": {"patterns_per_exp": 16, "sample_size": 8},
    "strategy:cope": {"mem_size": 16, "n_classes": 6, "p_size": 6},  # prototypes live in the 6 logits
    "strategy:dytox": {"memory": 16, "warmup_epochs": 1, "finetune_epochs": 1, "finetune_lr": 0.005},
    "strategy:wa": {"memory": 16},
    "strategy:cwr_star": {"cwr_layer_name": "head.fc"},
    "strategy:der": {"mem_size": 16, "batch_size_mem": 8},
    "strategy:er_ace": {"mem_size": 16, "batch_size_mem": 8},
    "strategy:ewc": {"ewc_lambda": 1.0},
    "strategy:gdumb": {"mem_size": 16},
    "strategy:lwf": {"alpha": 1.0, "temperature": 2.0},
    "strategy:mer": {"mem_size": 16, "batch_size_mem": 4, "n_inner_steps": 2},
    "strategy:mir": {"mem_size": 16, "subsample": 8, "batch_size_mem": 4},
    "strategy:replay": {"mem_size": 16},
    "strategy:synaptic_intelligence": {"si_lambda": 0.5},
    "strategy:crumb": {"memory": 40, "n_blocks": 32, "block_dim": 8},
    "strategy:remind": {"memory": 40, "num_codebooks": 8, "pq_train_vectors": 512, "n_replay": 4,
                        "lr_schedule": "constant"},
    "plugin:agem": {"patterns_per_experience": 16, "sample_size": 8},
    "plugin:ewc": {"ewc_lambda": 1.0, "mode": "online", "decay_factor": 0.5},
    "plugin:cope": {"mem_size": 16, "n_classes": 6, "p_size": 6},
    "plugin:gdumb": {"mem_size": 16},
    "plugin:lwf": {"alpha": 1.0, "temperature": 2.0},
    "plugin:mas": {"lambda_reg": 0.5},
    "plugin:mir": {"batch_size_mem": 4, "mem_size": 16, "subsample": 8},
    "plugin:rwalk": {"ewc_lambda": 1.0},
    "plugin:early_stopping": {"patience": 1, "val_stream_name": "test_stream"},
    "plugin:synaptic_intelligence": {"si_lambda": 0.5},
    # A byte budget: RawReplayPlugin.memory is a frozen MemoryBudget (issue 8, item 1).
    "plugin:replay": {"memory": {"bytes": 16 * 3 * 32 * 32}},
    "plugin:crumb": {"memory": 40, "n_blocks": 32, "block_dim": 8, "plus_direct_loss": True},
    "plugin:remind": {"memory": 40, "num_codebooks": 8, "pq_train_vectors": 512, "n_replay": 4,
                      "lr_schedule": "constant"},
}

# Extra parts of a case's method beyond its entry: MIR differentiates through the trunk, which
# small_cnn_cut freezes by default. A model with a "name" replaces the experiment's model.
EXTRA: Dict[str, Dict[str, Any]] = {
    "strategy:mir": {"model": {"freeze_trunk": False}},
    "plugin:mir": {"model": {"freeze_trunk": False}},
    # DyTox needs its own transformer: a tiny one
    "strategy:dytox": {"model": {"name": "dytox", "embed_dim": 16, "depth": 2, "num_heads": 2, "patch_size": 8,
                                  "drop_path_rate": 0.0}},
}

# Components that cannot be named in `plugins:` alone, covered through the key that builds them.
BUILT_BY: Dict[str, Dict[str, Any]] = {
    # LRSchedulerPlugin takes a scheduler object: the runner builds it from `strategy.scheduler`.
    "plugin:lr_scheduler": {"strategy": {"scheduler": {"name": "step", "step_size": 1, "gamma": 0.5}}},
}

# Components that come with a strategy and are exercised by that strategy's case.
COVERED_BY: Dict[str, str] = {
    "plugin:cwr_star": "strategy:cwr_star",  # the plugin needs the model object; the strategy builds it
}

# Run by default (the methods of the paper grids and the demo); everything else is marked slow.
FAST = ("plugin:replay", "plugin:ewc", "plugin:mas", "plugin:lwf", "plugin:synaptic_intelligence",
        "plugin:gdumb", "plugin:crumb", "plugin:remind")


def registered() -> List[str]:
    return [f"strategy:{n}" for n in STRATEGIES.names()] + [f"plugin:{n}" for n in PLUGINS.names()]


def covered() -> List[str]:
    """Components whose resume is checked (by their own case or through ``COVERED_BY``)."""
    return [k for k in registered() if k not in RESUME_NOT_TESTED]


def cases() -> List[str]:
    return [k for k in covered() if k not in COVERED_BY]


def method_config(key: str) -> Dict[str, Any]:
    """The ``methods:`` entry that runs component ``key`` on the base experiment."""
    if key in BUILT_BY:
        return BUILT_BY[key]
    kind, name = key.split(":")
    entry = {"name": name, **SETTINGS.get(key, {})}
    method: Dict[str, Any] = {"plugins": [entry]} if kind == "plugin" else {"strategy": entry}
    for part, values in EXTRA.get(key, {}).items():
        method[part] = {**method.get(part, {}), **values}
    return method


def write_experiment(folder: Path, synthetic_root: Path, key: str) -> Path:
    doc = {
        "name": "resume",
        "runs": [0],
        "output_dir": str(folder / "runs"),
        "benchmark": {"name": "synthetic", "root": str(synthetic_root), "layout": "toybox", "n_classes": 6,
                      "n_objects": 2, "image_size": 32, "test_subsample": 8},
        "model": {"name": "small_cnn_cut", "width": 8},
        "strategy": {"name": "naive", "train_mb_size": 16, "train_epochs": 1, "first_experience_epochs": 2,
                     "optimizer": {"name": "sgd", "lr": 0.05, "momentum": 0.9}},
        # forgetting/bwt keep state in the evaluator's metrics: their resume is checked too
        "evaluation": {"loggers": [], "metrics": ["accuracy", "loss", "forgetting", "bwt", "replay_bytes"]},
        "methods": {"m": method_config(key)},
    }
    if "name" in doc["methods"]["m"].get("model", {}):  # another architecture: not merged into small_cnn_cut
        doc["model"] = doc["methods"]["m"].pop("model")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "resume.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def deterministic_rows(run_dir: Path):
    """``metrics.csv`` rows without clock-dependent metrics; NaN (CoPE's eval loss) as a string so it compares."""
    return [(r["experience"], r["step"], r["metric"], "nan" if math.isnan(r["value"]) else r["value"])
            for r in read_metrics(run_dir / "metrics.csv") if not any(k in r["metric"] for k in NONDETERMINISTIC)]


def run_interrupted(path: Path) -> int:
    """Run ``path`` one experience per call, as if killed after every checkpoint; returns the interruptions."""
    interruptions = 0
    while True:
        try:
            run_experiment(load_experiment(path), progress=False, stop_after=1, threads=1)
            return interruptions
        except KeyboardInterrupt:
            interruptions += 1
            assert interruptions <= 3, "more interruptions than experiences: the run does not advance"


def params() -> List[Any]:
    return [pytest.param(k, marks=() if k in FAST else pytest.mark.slow, id=k) for k in cases()]


@pytest.mark.parametrize("key", params())
def test_resume_matches_uninterrupted_run(key, tmp_path, synthetic_root):
    straight = run_experiment(load_experiment(write_experiment(tmp_path / "a", synthetic_root, key)),
                              progress=False, threads=1) / "m" / "run0"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert run_interrupted(write_experiment(tmp_path / "b", synthetic_root, key)) == 3
    resumed = tmp_path / "b" / "runs" / "resume" / "m" / "run0"
    unverified = [str(w.message) for w in caught if "resum" in str(w.message)]
    assert not unverified, unverified  # a covered component resumes without a "not covered" warning

    a, b = deterministic_rows(straight), deterministic_rows(resumed)
    assert len(a) > 0 and {r[0] for r in a} == {0, 1, 2}
    assert a == b
    sa = json.loads((straight / "summary.json").read_text())
    sb = json.loads((resumed / "summary.json").read_text())
    assert sa["final_accuracy"] is not None and sa["final_accuracy"] == sb["final_accuracy"]
    assert sa["accuracy_per_experience"] == sb["accuracy_per_experience"]
    assert sa["stored_bytes"] == sb["stored_bytes"]


def test_every_registered_component_is_covered_or_excluded():
    names = set(registered())
    assert "plugin:replay" in names and "strategy:naive" in names  # the registry is loaded
    excluded = set(RESUME_NOT_TESTED)
    assert excluded <= names, f"exclusions of components that are not registered: {sorted(excluded - names)}"
    assert all(isinstance(r, str) and len(r) > 10 for r in RESUME_NOT_TESTED.values()), "every exclusion says why"
    assert set(covered()) | excluded == names and not set(covered()) & excluded
    for table in (SETTINGS, EXTRA, BUILT_BY, COVERED_BY):
        stale = set(table) - set(covered())
        assert not stale, f"settings for components that are not run: {sorted(stale)}"
    assert set(COVERED_BY.values()) <= set(cases()) and set(FAST) <= set(cases())


def test_resuming_an_excluded_component_warns_once():
    """The other side of the coverage list: resuming a component the tests do not run says so, in one line."""
    import torch
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin

    from streamcl import checkpoint

    def strategy(plugin):
        model = torch.nn.Linear(2, 2)
        return Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), plugins=[plugin],
                     evaluator=EvaluationPlugin(loggers=[]))

    assert "plugin:gem" in RESUME_NOT_TESTED
    with pytest.warns(UserWarning) as record:
        checkpoint.warn_unverified(strategy(PLUGINS.get("gem").factory(patterns_per_experience=1,
                                                                        memory_strength=0.5)))
    messages = [str(w.message) for w in record if "resuming" in str(w.message)]
    assert len(messages) == 1 and "plugin gem" in messages[0] and RESUME_NOT_TESTED["plugin:gem"] in messages[0]
    assert "\n" not in messages[0]
    covered_one = strategy(PLUGINS.get("ewc").factory(ewc_lambda=1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a covered one: silent
        checkpoint.warn_unverified(covered_one)
