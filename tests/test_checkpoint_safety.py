"""Checkpoints can never run code, and every damaged checkpoint is one CheckpointError line.

A checkpoint is read with ``torch.load(weights_only=True)``, which only guards the
unpickling: the restore step itself must not create or call anything a file names.
These tests craft checkpoints (valid format, valid digest) that name dangerous
classes, factories and attributes, and check that each is refused before anything
is imported or executed. They also feed ``load``/``set_rng_state``/``restore_strategy``
every kind of damaged content and check for one line naming the file, never a
traceback, and RNGs left untouched.
"""

from __future__ import annotations

import copy
import gc
import json
import random
import re
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from streamcl import checkpoint
from streamcl.checkpoint import RestoreContext
from streamcl.errors import CheckpointError

# ---------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def scenario(synthetic_root):
    from streamcl.benchmarks.scenarios import synthetic

    return synthetic(synthetic_root, layout="toybox", n_classes=4, n_objects=2, image_size=32)


def make_strategy(memory=None):
    """A Naive strategy with raw replay (byte budget: a frozen MemoryBudget) and EWC, built as the runner would."""
    from avalanche.evaluation.metrics import accuracy_metrics, forgetting_metrics
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin
    from avalanche.training.plugins.ewc import EWCPlugin

    from streamcl.plugins.raw_replay import RawReplayPlugin
    from streamcl.registry import MODELS, load_all

    load_all()
    torch.manual_seed(0)
    model = MODELS.get("small_cnn_cut").factory(num_classes=4, width=8)
    evaluator = EvaluationPlugin(accuracy_metrics(experience=True, stream=True),
                                 forgetting_metrics(experience=True, stream=True), loggers=[])
    plugins = [RawReplayPlugin(memory=memory or {"bytes": 12 * 3 * 32 * 32}), EWCPlugin(ewc_lambda=1.0)]
    return Naive(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                 train_mb_size=16, train_epochs=1, eval_mb_size=64, device="cpu", plugins=plugins,
                 evaluator=evaluator)


@pytest.fixture(scope="module")
def trained_state(scenario):
    """``capture_strategy`` of a strategy trained on the first experience (a genuine checkpoint's strategy part)."""
    strategy = make_strategy()
    strategy.train(scenario.train_stream[0], num_workers=0)
    strategy.eval(scenario.test_stream[:1], num_workers=0)
    return checkpoint.capture_strategy(strategy)


def context(scenario) -> RestoreContext:
    from streamcl.benchmarks.scenarios import subset_by_sample_id

    return RestoreContext(dataset_from_ids=lambda ids: subset_by_sample_id(scenario, ids.tolist()))


@pytest.fixture
def canary(tmp_path, monkeypatch):
    """An importable module that, if anything ever imports it, creates a file; plus a file to keep alive."""
    (tmp_path / "streamcl_canary_mod.py").write_text(textwrap.dedent(f"""
        open({str(tmp_path / "IMPORTED")!r}, "w").close()

        class Thing:
            def __init__(self, *a, **k):
                open({str(tmp_path / "CALLED")!r}, "w").close()
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    sentinel = tmp_path / "sentinel.txt"
    sentinel.write_text("must survive")
    yield tmp_path, sentinel
    sys.modules.pop("streamcl_canary_mod", None)


def assert_nothing_ran(tmp_path: Path, sentinel: Path) -> None:
    gc.collect()  # a crafted object with a __del__ would act now
    assert sentinel.exists() and sentinel.read_text() == "must survive"
    assert not (tmp_path / "IMPORTED").exists() and "streamcl_canary_mod" not in sys.modules
    assert not (tmp_path / "CALLED").exists()
    assert not (tmp_path / "TOUCHED").exists()


def one_line(e: BaseException, path: Path) -> str:
    msg = str(e)
    assert "\n" not in msg and msg.strip(), msg
    assert str(path) in msg and "--restart" in msg, msg
    return msg


# ---------------------------------------------------------------------------------- crafted checkpoints


def plugin_attrs(state, i=0):
    return state["plugins"][i]["state"]["attrs"]


def buffer_groups(state):
    return plugin_attrs(state, 0)["storage_policy"]["attrs"]["buffer_groups"]["items"]


def _obj(cls, **attrs):
    return {"__type__": "object", "cls": cls, "attrs": attrs}


def crafted_cases(tmp_path: Path, sentinel: Path, model_state):
    """(description, function that plants an attack into a copy of a genuine strategy state)."""
    # The payload that deleted a file through the old restore: its __del__ unlinks `name` once `file` is set.
    closer = _obj("streamcl.checkpoint:tempfile._TemporaryFileCloser", name=str(sentinel), delete=True,
                  close_called=False, file=1)
    touch = ["touch", str(tmp_path / "TOUCHED")]

    def new_sub_buffer(enc):  # where the fresh strategy has nothing yet: creation, allow-list only
        return lambda s: buffer_groups(s).__setitem__(0, [0, enc])

    def replace(path, enc):  # where a live object exists: only its exact class is accepted
        def plant(s):
            d = s
            for k in path[:-1]:
                d = d[k]
            d[path[-1]] = enc
        return plant

    storage = ("plugins", 0, "state", "attrs", "storage_policy")
    return [
        ("a streamcl module attribute path (tempfile's file closer, deletes on GC)", new_sub_buffer(closer)),
        ("os.system through a streamcl module", new_sub_buffer(_obj("streamcl.config:os.system"))),
        ("a module that runs code on import", new_sub_buffer(_obj("streamcl_canary_mod:Thing"))),
        ("builtins.eval", new_sub_buffer(_obj("builtins:eval", source="1"))),
        ("subprocess.Popen as a state_dict owner",
         new_sub_buffer({"__type__": "custom", "cls": "subprocess:Popen", "state": {"args": touch}})),
        ("an avalanche class that is not a state container",
         new_sub_buffer(_obj("avalanche.training.templates.base:BaseTemplate"))),
        ("a live object replaced by another class", replace(storage, {**closer})),
        ("a live object's class renamed to a canary",
         replace(storage + ("cls",), "streamcl_canary_mod:Thing")),
        ("a defaultdict factory pointing at os.system (live defaultdict)",
         replace(("plugins", 1, "state", "attrs", "importances", "factory"), "streamcl.config:os.system")),
        ("a defaultdict factory pointing at os.system (new attribute)",
         replace(("plugins", 1, "state", "attrs", "extra"),
                 {"__type__": "defaultdict", "factory": "os:system", "items": [[1, 2]]})),
        ("a defaultdict factory naming the canary",
         replace(("plugins", 1, "state", "attrs", "extra"),
                 {"__type__": "defaultdict", "factory": "streamcl_canary_mod:Thing", "items": []})),
        ("a dtype naming torch.load", replace(("plugins", 1, "state", "attrs", "extra"),
                                             {"__type__": "dtype", "v": "load"})),
        ("an unknown entry type", replace(("plugins", 1, "state", "attrs", "extra"),
                                          {"__type__": "pickle", "v": "cos\nsystem\n"})),
        ("a plain mapping where an entry belongs", replace(("plugins", 1, "state", "attrs", "extra"), {"a": 1})),
        ("the __class__ attribute", replace(("plugins", 1, "state", "attrs", "__class__"), 1)),
        ("the __dict__ attribute", replace(("plugins", 1, "state", "attrs", "__dict__"),
                                           {"__type__": "dict", "items": []})),
        ("a method shadowed by data", replace(("plugins", 1, "state", "attrs", "before_training_exp"), 1)),
        ("a plugin class swapped", replace(("plugins", 1, "cls"), "streamcl_canary_mod:Thing")),
        ("a canary in the strategy's own attributes", replace(("attrs", "evil"), _obj("streamcl_canary_mod:Thing"))),
        ("a canary in a metric", replace(("metrics", 0, "attrs", "_metric"), _obj("streamcl_canary_mod:Thing"))),
        ("a canary in the metric results",
         replace(("metric_results", "items"), [["k", _obj("streamcl_canary_mod:Thing")]])),
        ("the strategy class swapped", replace(("cls",), "streamcl_canary_mod:Thing")),
        ("a model copy whose attributes reach module internals",
         replace(("plugins", 1, "state", "attrs", "extra"),
                 {"__type__": "module", "state": model_state, "attrs": {"_forward_hooks": {"__type__": "dict",
                                                                                            "items": []}}})),
        ("a model copy whose attributes shadow forward",
         replace(("plugins", 1, "state", "attrs", "extra"),
                 {"__type__": "module", "state": model_state, "attrs": {"forward": 1}})),
        ("a replay loader naming another generator function",
         replace(("plugins", 1, "state", "attrs", "extra"),
                 {"__type__": "cycle_loader", "fn": "os:walk", "batch_size": 1, "shuffle": False,
                  "drop_last": False, "dataset": {"__type__": "dict", "items": []}})),
    ]


def test_genuine_state_restores_into_a_fresh_strategy(scenario, trained_state, tmp_path):
    """Positive control for the refusals below: the untouched state loads, buffers and importances included."""
    fresh = make_strategy()
    checkpoint.restore_strategy(fresh, copy.deepcopy(trained_state), context(scenario), tmp_path / "checkpoint.pt")
    replay, ewc = fresh.plugins[0], fresh.plugins[1]
    assert len(replay.storage_policy.buffer) == replay.mem_size == 12
    assert set(replay.storage_policy.buffer.targets) <= {0, 1, 2, 3}
    assert ewc.importances and all(v._data.abs().sum() >= 0 for v in ewc.importances[0].values())
    again = checkpoint.capture_strategy(fresh)
    assert torch.equal(again["plugins"][0]["state"]["attrs"]["storage_policy"]["attrs"]["buffer_groups"]["items"]
                       [0][1]["attrs"]["_buffer"]["ids"],
                       buffer_groups(trained_state)[0][1]["attrs"]["_buffer"]["ids"])


def test_crafted_checkpoints_are_refused_and_nothing_runs(scenario, trained_state, canary):
    tmp_path, sentinel = canary
    where = tmp_path / "checkpoint.pt"
    cases = crafted_cases(tmp_path, sentinel, trained_state["model"])
    assert len(cases) >= 25
    for what, plant in cases:
        state = copy.deepcopy(trained_state)
        plant(state)
        with pytest.raises(CheckpointError) as err:
            checkpoint.restore_strategy(make_strategy(), state, context(scenario), where)
        msg = one_line(err.value, where)
        # refused by the restore rules (the message names the entry), not by some later accident
        assert "strategy" in msg and "Error:" not in msg, (what, msg)
        assert_nothing_ran(tmp_path, sentinel)


def test_frozen_budget_is_compared_not_set(scenario, trained_state, tmp_path):
    """A replay plugin's MemoryBudget is config: equal -> kept (item 1's FrozenInstanceError), different -> refused."""
    fresh = make_strategy()
    budget = fresh.plugins[0].memory
    checkpoint.restore_strategy(fresh, copy.deepcopy(trained_state), context(scenario), tmp_path / "c.pt")
    assert fresh.plugins[0].memory is budget
    with pytest.raises(CheckpointError, match="memory|bytes") as err:
        checkpoint.restore_strategy(make_strategy(memory={"bytes": 99999}), copy.deepcopy(trained_state),
                                    context(scenario), tmp_path / "c.pt")
    one_line(err.value, tmp_path / "c.pt")


@pytest.mark.parametrize("damage", [
    "model_shape", "optimizer_garbage", "plugin_not_entry", "plugin_attr_kind", "dataset_ids_float",
    "dataset_unknown_ids", "clock_wrong_class", "metrics_count", "tuple_items", "unhashable_key",
])
def test_damaged_strategy_state_is_one_line(scenario, trained_state, tmp_path, damage):
    state = copy.deepcopy(trained_state)
    groups = buffer_groups(state)
    if damage == "model_shape":
        key = next(iter(state["model"]))
        state["model"][key] = torch.zeros(7, 7, 7)
    elif damage == "optimizer_garbage":
        state["optimizer"] = {"state": "x", "param_groups": 5}
    elif damage == "plugin_not_entry":
        state["plugins"][0] = ["replay"]
    elif damage == "plugin_attr_kind":
        plugin_attrs(state)["mem_size"] = {"__type__": 3}
    elif damage == "dataset_ids_float":
        groups[0][1]["attrs"]["_buffer"]["ids"] = torch.rand(5)
    elif damage == "dataset_unknown_ids":
        groups[0][1]["attrs"]["_buffer"]["ids"] = torch.tensor([10 ** 9], dtype=torch.int64)
    elif damage == "clock_wrong_class":
        state["clock"]["cls"] = "avalanche.training.templates.base:Clock2"
    elif damage == "metrics_count":
        state["metrics"] = state["metrics"][:1]
    elif damage == "tuple_items":
        state["metric_results"] = {"__type__": "tuple", "items": 5}
    elif damage == "unhashable_key":
        state["last_metric_results"] = {"__type__": "dict", "items": [[[1, 2], 3]]}
    where = tmp_path / "checkpoint.pt"
    with pytest.raises(CheckpointError) as err:
        checkpoint.restore_strategy(make_strategy(), state, context(scenario), where)
    one_line(err.value, where)


# ---------------------------------------------------------------------------------- files


def genuine_payload(trained_state):
    return {"run": 0, "cell": "c", "digest": "d", "next_experience": 1, "wall_time": 1.0, "step": 3,
            "metrics": [], "strategy": trained_state, "rng": checkpoint.rng_state()}


class NotPlain:
    pass


@pytest.mark.parametrize("content", [
    "empty", "truncated", "random", "global", "list", "no_format", "bool_format", "other_format",
    "no_strategy", "strategy_list", "strategy_no_plugins", "no_rng", "rng_not_dict", "rng_python_short",
    "rng_python_types", "rng_numpy_short", "rng_numpy_string", "rng_torch_size", "rng_torch_dtype",
    "rng_cuda_junk", "rng_missing_torch",
])
def test_damaged_file_is_one_line(tmp_path, trained_state, content):
    path = tmp_path / "checkpoint.pt"
    good = genuine_payload(trained_state)
    payload: object = {"format": checkpoint.FORMAT, **good}
    rng = payload["rng"]
    if content == "empty":
        path.write_bytes(b"")
    elif content == "truncated":
        checkpoint.save(path, good)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif content == "random":
        path.write_bytes(np.random.default_rng(0).bytes(4096))
    elif content == "global":
        torch.save({"format": checkpoint.FORMAT, "x": NotPlain()}, path)
    elif content == "list":
        torch.save([1, 2, 3], path)
    elif content == "no_format":
        payload.pop("format")
    elif content == "bool_format":
        payload["format"] = True
    elif content == "other_format":
        payload["format"] = 99
    elif content == "no_strategy":
        payload.pop("strategy")
    elif content == "strategy_list":
        payload["strategy"] = [1]
    elif content == "strategy_no_plugins":
        payload["strategy"] = {k: v for k, v in payload["strategy"].items() if k != "plugins"}
    elif content == "no_rng":
        payload.pop("rng")
    elif content == "rng_not_dict":
        payload["rng"] = torch.zeros(3)
    elif content == "rng_python_short":
        rng["python"]["items"][1]["items"] = rng["python"]["items"][1]["items"][:100]
    elif content == "rng_python_types":
        rng["python"]["items"][1]["items"][5] = "five"
    elif content == "rng_numpy_short":
        rng["numpy"]["items"][1]["data"] = rng["numpy"]["items"][1]["data"][:10]
    elif content == "rng_numpy_string":
        rng["numpy"]["items"][0] = "PCG64-or-whatever"
    elif content == "rng_torch_size":
        rng["torch"] = rng["torch"][:100]
    elif content == "rng_torch_dtype":
        rng["torch"] = rng["torch"].float()
    elif content == "rng_cuda_junk":
        rng["cuda"] = [1, 2]
    elif content == "rng_missing_torch":
        rng.pop("torch")
    if not path.exists():
        torch.save(payload, path)
    with pytest.raises(CheckpointError) as err:
        checkpoint.load(path)
    msg = one_line(err.value, path)
    assert "weights_only=False" not in msg  # never advise unpickling an untrusted file


def test_genuine_file_loads(tmp_path, trained_state):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, genuine_payload(trained_state))
    payload = checkpoint.load(path)
    assert payload["format"] == checkpoint.FORMAT and payload["next_experience"] == 1


def test_bad_rng_state_leaves_every_rng_untouched():
    good = checkpoint.rng_state()
    random.random(), np.random.rand(), torch.rand(1)  # move away from `good`
    before = (random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state().clone())
    for damage in ("numpy", "torch", "python"):
        bad = copy.deepcopy(good)
        if damage == "numpy":  # python part valid (it comes first): still nothing may be set
            bad["numpy"]["items"][1]["data"] = bad["numpy"]["items"][1]["data"][:-1]
        elif damage == "torch":
            bad["torch"] = bad["torch"][1:]
        else:
            bad["python"]["items"][1]["items"][-1] = 10 ** 6  # index past the state
        with pytest.raises(CheckpointError, match="rng"):
            checkpoint.set_rng_state(bad, "ck.pt")
        assert random.getstate() == before[0]
        assert np.array_equal(np.random.get_state()[1], before[1])
        assert torch.equal(torch.get_rng_state(), before[2])
    checkpoint.set_rng_state(good)  # and a valid state does set them all
    a = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    checkpoint.set_rng_state(good)
    assert a == (random.random(), float(np.random.rand()), float(torch.rand(1)))


# ---------------------------------------------------------------------------------- temp files (item 3)


def test_stale_temp_files_are_removed(tmp_path):
    path = tmp_path / "checkpoint.pt"
    stale = [tmp_path / "checkpoint.pt.k2j_9x3a.tmp", tmp_path / "checkpoint.pt.abc.tmp"]
    keep = [tmp_path / "other.pt.abc.tmp", tmp_path / "checkpoint.pt.tmp", tmp_path / "checkpoint.pt.a.b.tmp",
            tmp_path / "xcheckpoint.pt.abc.tmp", tmp_path / "metrics.csv"]
    for p in stale + keep:
        p.write_bytes(b"x")
    (tmp_path / "checkpoint.pt.dir.tmp").mkdir()  # not a file: left alone
    assert sorted(checkpoint.remove_stale_temp(path)) == sorted(stale)
    assert all(p.exists() for p in keep) and not any(p.exists() for p in stale)
    # save() clears them too, and leaves none of its own
    stale[0].write_bytes(b"x")
    checkpoint.save(path, {"strategy": {}, "rng": {}})
    assert sorted(p.name for p in tmp_path.glob("checkpoint.pt*")) == ["checkpoint.pt", "checkpoint.pt.a.b.tmp",
                                                                         "checkpoint.pt.dir.tmp",
                                                                         "checkpoint.pt.tmp"]
    assert checkpoint.remove_stale_temp(tmp_path / "missing" / "checkpoint.pt") == []


def test_kill_during_save_leaves_old_checkpoint_and_a_temp_the_next_save_removes(tmp_path):
    path = tmp_path / "checkpoint.pt"
    checkpoint.save(path, {"marker": 1})
    script = textwrap.dedent(f"""
        import os, signal, torch
        from streamcl import checkpoint
        real = torch.save
        def dying_save(obj, f):
            real(obj, f)  # the temp file is complete, the rename has not happened: SIGKILL now
            os.kill(os.getpid(), signal.SIGKILL)
        torch.save = dying_save
        checkpoint.save({str(path)!r}, {{"marker": 2}})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1
    assert torch.load(path, weights_only=True)["marker"] == 1  # the previous checkpoint is intact
    assert checkpoint.remove_stale_temp(path) == leftovers and not leftovers[0].exists()


# ---------------------------------------------------------------------------------- through the CLI


def tiny_yaml(tmp_path: Path, synthetic_root: Path) -> Path:
    doc = {
        "name": "tiny", "runs": [0], "output_dir": str(tmp_path / "runs"),
        "benchmark": {"name": "synthetic", "root": str(synthetic_root), "layout": "toybox", "n_classes": 4,
                      "n_objects": 2, "image_size": 32},
        "model": {"name": "small_cnn_cut", "width": 8},
        "strategy": {"name": "naive", "train_mb_size": 16, "train_epochs": 1, "first_experience_epochs": 1,
                     "optimizer": {"name": "sgd", "lr": 0.05}},
        "evaluation": {"loggers": [], "metrics": ["accuracy"]},
        "methods": {"replay": {"plugins": [{"name": "replay", "memory": {"bytes": 12 * 3 * 32 * 32}}]}},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_cli_refuses_crafted_and_damaged_checkpoints(tmp_path, synthetic_root, canary, capsys):
    from streamcl.cli import main
    from streamcl.config import load_experiment
    from streamcl.runner import run_experiment

    _, sentinel = canary
    path = tiny_yaml(tmp_path, synthetic_root)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(load_experiment(path), progress=False, stop_after=1, threads=1)
    ckpt = tmp_path / "runs" / "tiny" / "replay" / "run0" / "checkpoint.pt"
    genuine = ckpt.read_bytes()
    payload = torch.load(ckpt, weights_only=True)
    buffer_groups(payload["strategy"])[0][1] = _obj("streamcl_canary_mod:Thing", name=str(sentinel))
    torch.save(payload, ckpt)  # same digest, run and format: only the planted entry is wrong
    capsys.readouterr()

    for damage in ("crafted", "empty"):
        if damage == "empty":
            ckpt.write_bytes(b"")
        before = sorted((p.name, p.stat().st_size) for p in ckpt.parent.rglob("*"))
        assert main(["run", str(path), "-q"]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert str(ckpt) in err and "--restart" in err, err
        assert_nothing_ran(tmp_path, sentinel)
        assert sorted((p.name, p.stat().st_size) for p in ckpt.parent.rglob("*")) == before  # nothing written

    # the genuine checkpoint still resumes and finishes the run
    ckpt.write_bytes(genuine)
    run_experiment(load_experiment(path), progress=False, threads=1)
    summary = json.loads((ckpt.parent / "summary.json").read_text())
    assert summary["n_experiences"] == 2 and len(summary["accuracy_per_experience"]) == 2


def test_restore_has_no_dynamic_import():
    """Guard against reintroducing an import or attribute walk driven by checkpoint content."""
    src = "".join(p.read_text() for p in sorted(Path(checkpoint.__file__).parent.glob("*.py")))  # the package
    assert "importlib" not in src and "import_module" not in src and "__import__" not in src
    assert "getattr(torch," not in src and not re.search(r"(?<![.\w])(eval|exec)\(", src)
