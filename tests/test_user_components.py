"""A researcher's own code from YAML: ``package.module:Name`` for any component, and ``imports:``.

A tiny user package is written into ``tmp_path`` and put on ``sys.path``; its modules,
registrations and path entries are removed again after each test (``user_code``), so
that no other test sees them. The worked example (tests/custom_example) is run exactly
as docs/python.md shows it.
"""

from __future__ import annotations

import json
import re
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

from streamcl import cli, registry
from streamcl.config import load_experiment
from streamcl.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "tests" / "custom_example"

PARTS = '''
"""Components named by their import path (nothing registered)."""
import torch
from avalanche.core import SupervisedPlugin
from avalanche.training import Naive

from streamcl.benchmarks.scenarios import synthetic
from streamcl.models import small_cnn_cut

CALLS = []  # (what, details): what streamcl built from the YAML
NOT_CALLABLE = 3


def tiny_stream(root: str, run: int = 0, n_classes: int = 4):
    """The shared tiny synthetic Toybox stream."""
    CALLS.append(("benchmark", run, n_classes))
    return synthetic(root, layout="toybox", n_classes=n_classes, n_objects=2, image_size=32, run=run)


def tiny_model(num_classes: int, width: int = 8):
    CALLS.append(("model", num_classes, width))
    return small_cnn_cut(num_classes, width=width)


class MyNaive(Naive):
    """Naive with one argument of its own."""

    def __init__(self, model, optimizer, criterion, *, boost: float = 1.0, **kwargs):
        CALLS.append(("strategy", boost, kwargs["train_mb_size"]))
        super().__init__(model=model, optimizer=optimizer, criterion=criterion, **kwargs)


class Recorder(SupervisedPlugin):
    def __init__(self, tag: str = "r"):
        super().__init__()
        self.tag = tag

    def after_training_exp(self, strategy, **kwargs):
        CALLS.append(("plugin", self.tag, strategy.experience.current_experience))


def my_sgd(params, lr: float = 0.1):
    CALLS.append(("optimizer", lr))
    return torch.optim.SGD(params, lr=lr)


def halving(optimizer, every: int = 1):
    CALLS.append(("scheduler", every))
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=every, gamma=0.5)
'''

REGISTERED = '''
"""Components registered by name, as streamcl's own are."""
from avalanche.core import SupervisedPlugin

from streamcl.registry import register_plugin


@register_plugin("uc_recorder")
class UCRecorder(SupervisedPlugin):
    """Records nothing; takes a tag."""

    def __init__(self, tag: str = "r", n_items: int = 1):
        super().__init__()
        self.tag = tag
'''

BROKEN = {
    "missing_dep": "import uc_not_installed_dependency\n",
    "syntax": "def broken(:\n    pass\n",
    "raises": "raise ImportError('first line of the problem\\nsecond line that must not show')\n",
    "clash": "from streamcl.registry import register_plugin\n\n\n@register_plugin('crumb')\ndef crumb():\n    pass\n",
}


@pytest.fixture
def user_code(tmp_path, monkeypatch):
    """Writes package ``uc_pkg`` under tmp_path/pkgs onto sys.path; forgets it (and what it registered) after."""
    registry.load_all()
    for reg in registry.REGISTRIES.values():
        monkeypatch.setattr(reg, "_entries", dict(reg._entries))
    pkg = tmp_path / "pkgs" / "uc_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "parts.py").write_text(textwrap.dedent(PARTS))
    (pkg / "registered.py").write_text(textwrap.dedent(REGISTERED))
    for name, text in BROKEN.items():
        (pkg / f"{name}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    path_before = list(sys.path)
    yield pkg
    sys.path[:] = path_before
    for name, mod in list(sys.modules.items()):
        file = str(getattr(mod, "__file__", None) or "")
        if file.startswith((str(tmp_path), str(EXAMPLE))):
            del sys.modules[name]


def write(tmp_path: Path, doc: dict, name: str = "exp.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def base(tmp_path: Path, root: Path, **over) -> dict:
    doc = {
        "name": "uc",
        "output_dir": str(tmp_path / "runs"),
        "benchmark": {"name": "synthetic", "root": str(root), "layout": "toybox", "n_classes": 4,
                      "n_objects": 2, "image_size": 32},
        "model": {"name": "small_cnn_cut", "width": 8},
        "strategy": {"name": "naive", "train_mb_size": 16, "optimizer": {"name": "sgd", "lr": 0.05}},
        "evaluation": {"metrics": ["accuracy"], "loggers": ["csv"]},
    }
    doc.update(over)
    return doc


def error_of(path: Path) -> ConfigError:
    with pytest.raises(ConfigError) as ei:
        load_experiment(path)
    assert "\n" not in str(ei.value)
    return ei.value


def test_dotted_paths_for_every_component_run_end_to_end(tmp_path, synthetic_root, user_code):
    from streamcl.runner import run_experiment

    doc = base(tmp_path, synthetic_root,
               benchmark={"name": "uc_pkg.parts:tiny_stream", "root": str(synthetic_root), "n_classes": 4},
               model={"name": "uc_pkg.parts:tiny_model", "width": 4},
               strategy={"name": "uc_pkg.parts:MyNaive", "boost": 2.5, "train_mb_size": 16,
                         "optimizer": {"name": "uc_pkg.parts:my_sgd", "lr": 0.02},
                         "scheduler": {"name": "uc_pkg.parts:halving", "every": 2}},
               plugins=[{"name": "uc_pkg.parts:Recorder", "tag": "t1"}])
    exp = load_experiment(write(tmp_path, doc))
    cfg = exp.cells[0].config
    assert exp.cells[0].name == "MyNaive+Recorder"
    assert cfg["plugins"][0]["name"] == "uc_pkg.parts:Recorder"  # as written (import paths keep their case)
    assert cfg["strategy"]["optimizer"] == {"name": "uc_pkg.parts:my_sgd", "lr": 0.02}

    parts = sys.modules["uc_pkg.parts"]
    parts.CALLS.clear()
    root = run_experiment(exp, progress=False)
    summary = json.loads((root / "MyNaive+Recorder" / "run0" / "summary.json").read_text())
    assert summary["n_experiences"] == 2 and 0.0 <= summary["final_accuracy"] <= 1.0
    calls = parts.CALLS
    assert ("benchmark", 0, 4) in calls
    assert ("model", 4, 4) in calls  # num_classes injected by the runner, width from the YAML
    assert ("strategy", 2.5, 16) in calls
    assert ("optimizer", 0.02) in calls and ("scheduler", 2) in calls
    assert [c for c in calls if c[0] == "plugin"] == [("plugin", "t1", 0), ("plugin", "t1", 1)]


def test_values_of_a_dotted_component_are_checked_like_ours(tmp_path, synthetic_root, user_code):
    doc = base(tmp_path, synthetic_root, plugins=[{"name": "uc_pkg.parts:Recorder", "tga": "x"}])
    e = error_of(write(tmp_path, doc))
    assert e.key == "plugins[0].tga" and "did you mean 'tag'" in str(e)
    doc = base(tmp_path, synthetic_root, model={"name": "uc_pkg.parts:tiny_model", "width": "wide"})
    e = error_of(write(tmp_path, doc))
    assert e.key == "model.width" and "must be int" in str(e)
    doc = base(tmp_path, synthetic_root, model={"name": "uc_pkg.parts:tiny_model", "num_classes": 3})
    assert "set by streamcl's runner" in str(error_of(write(tmp_path, doc)))


def test_imports_register_names_that_validate_like_ours(tmp_path, synthetic_root, user_code):
    doc = base(tmp_path, synthetic_root, imports=["uc_pkg.registered"],
               plugins=[{"name": "uc_recorder", "tag": "a", "n_items": 2}])
    exp = load_experiment(write(tmp_path, doc))
    cfg = exp.cells[0].config
    assert cfg["plugins"] == [{"name": "uc_recorder", "tag": "a", "n_items": 2}]
    assert cfg["imports"] == ["uc_pkg.registered"]
    entry = registry.PLUGINS.get("uc_recorder")
    assert entry.origin == "uc_pkg" and entry.description == "Records nothing; takes a tag."

    for plugin, key, needle in (({"name": "uc_recorder", "tga": "a"}, "plugins[0].tga", "did you mean 'tag'"),
                                ({"name": "uc_recorder", "n_items": 0}, "plugins[0].n_items", ">= 1"),
                                ({"name": "uc_recorder", "tag": 3}, "plugins[0].tag", "must be str"),
                                ({"name": "uc_recordr"}, "plugins[0].name", "did you mean 'uc_recorder'")):
        e = error_of(write(tmp_path, {**doc, "plugins": [plugin]}))
        assert e.key == key and needle in str(e), str(e)

    # A single module may be given as a string; without the import the name is unknown.
    assert load_experiment(write(tmp_path, {**doc, "imports": "uc_pkg.registered"})).cells[0].config["imports"] == [
        "uc_pkg.registered"]
    no_import = {k: v for k, v in doc.items() if k != "imports"}
    del registry.PLUGINS._entries["uc_recorder"]  # (the fixture restores the registries)
    assert error_of(write(tmp_path, no_import)).key == "plugins[0].name"


@pytest.mark.parametrize("module, needles", [
    ("uc_missing_pkg", ["cannot import module 'uc_missing_pkg'", "No module named 'uc_missing_pkg'", "PYTHONPATH"]),
    ("uc_pkg.missing_dep", ["cannot import module 'uc_pkg.missing_dep'",
                            "ModuleNotFoundError: No module named 'uc_not_installed_dependency'", "fix the module"]),
    ("uc_pkg.syntax", ["cannot import module 'uc_pkg.syntax'", "SyntaxError"]),
    ("uc_pkg.raises", ["ImportError: first line of the problem"]),
    ("uc_pkg.clash", ["plugin 'crumb' is registered twice", "uc_pkg.clash.crumb"]),
    ("not a module", ["is not a module path"]),
    (3, ["must be a module path", "3"]),
])
def test_an_import_that_fails_names_the_key_the_module_and_the_error(tmp_path, synthetic_root, user_code, module,
                                                                      needles):
    e = error_of(write(tmp_path, base(tmp_path, synthetic_root, imports=["uc_pkg.registered", module])))
    assert e.key == "imports[1]" and Path(e.file) == tmp_path / "exp.yaml"
    for needle in needles:
        assert needle in str(e), str(e)
    assert "second line" not in str(e)


@pytest.mark.parametrize("where, name, needles", [
    ("plugins", "uc_pkg.parts:NOT_CALLABLE", ["is a int, not a class or function"]),
    ("plugins", "uc_pkg.parts:Recordr", ["has no attribute 'Recordr'", "did you mean 'Recorder'"]),
    ("plugins", "uc_pkg.parts.Recorder", ["unknown plugin", "'uc_pkg.parts:Recorder'"]),
    ("plugins", "torch.nn:Linear", ["does not subclass avalanche.core.BasePlugin"]),
    ("plugins", "uc_pkg.parts:", ["unknown plugin", "package.module:ClassName"]),
    ("model", "uc_missing_pkg.models:Net", ["cannot import module 'uc_missing_pkg.models'", "No module named"]),
    ("model", "uc_pkg.parts:Recorder", ["does not subclass torch.nn.modules.module.Module"]),
    ("benchmark", "uc_pkg.raises:anything", ["ImportError: first line of the problem"]),
])
def test_a_bad_dotted_path_names_the_key(tmp_path, synthetic_root, user_code, where, name, needles):
    value = [{"name": name}] if where == "plugins" else {"name": name}
    e = error_of(write(tmp_path, base(tmp_path, synthetic_root, **{where: value})))
    assert e.key == ("plugins[0].name" if where == "plugins" else f"{where}.name")
    for needle in needles:
        assert needle in str(e), str(e)
    assert "second line" not in str(e)


def test_torch_classes_by_path_get_torchs_own_value_checks(tmp_path, synthetic_root, user_code):
    opt = {"name": "torch.optim:NAdam", "lr": 0.01}
    doc = base(tmp_path, synthetic_root, strategy={"name": "naive", "optimizer": opt})
    assert load_experiment(write(tmp_path, doc)).cells[0].config["strategy"]["optimizer"] == opt
    doc["strategy"]["optimizer"] = {"name": "torch.optim:NAdam", "lr": -1.0}
    e = error_of(write(tmp_path, doc))
    assert e.key == "strategy.optimizer.lr" and "Invalid learning rate" in str(e)


def test_cli_reports_a_failing_import_on_one_line_with_exit_2(tmp_path, synthetic_root, user_code, capsys):
    path = write(tmp_path, base(tmp_path, synthetic_root, imports=["uc_pkg.missing_dep"]))
    assert cli.main(["run", str(path), "--dry-run"]) == 2
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip() and "Warning" not in ln
           and "warnings.warn" not in ln]
    assert len(err) == 1 and err[0].startswith("streamcl: error: ") and "imports[0]" in err[0]
    assert "uc_not_installed_dependency" in err[0]
    assert not (tmp_path / "runs").exists()


def test_a_module_next_to_the_experiment_file_imports_without_pythonpath(tmp_path, synthetic_root, user_code):
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "uc_local.py").write_text(textwrap.dedent(REGISTERED).replace("uc_recorder", "uc_local_recorder"))
    doc = base(tmp_path, synthetic_root, imports=["uc_local"], plugins=[{"name": "uc_local_recorder"}])
    assert load_experiment(write(folder, doc)).cells[0].config["plugins"][0]["name"] == "uc_local_recorder"


# -- the docs' worked example ----------------------------------------------------------------------------------


def test_readme_example_runs_as_shown(tmp_path, user_code, monkeypatch, capsys):
    """``streamcl run tests/custom_example/custom.yaml`` from another folder: both cells, both runs finish."""
    from streamcl import checkpoint

    monkeypatch.chdir(tmp_path)  # (not the example's folder: its modules are found next to the YAML)
    assert cli.main(["run", str(EXAMPLE / "custom.yaml"), "-q"]) == 0
    root = tmp_path / "runs" / "custom_example"
    for cell in ("naive", "l2_anchor"):
        for run in (0, 1):
            summary = json.loads((root / cell / f"run{run}" / "summary.json").read_text())
            assert summary["n_experiences"] == 2
    assert "l2_anchor" in (root / "summary.md").read_text()

    # The plugin ran: after the first experience it anchors, so the weights part from plain naive's.
    ckpt = {c: checkpoint.load(root / c / "run0" / "checkpoint.pt")["strategy"] for c in ("naive", "l2_anchor")}
    assert ckpt["l2_anchor"]["plugins"][0]["cls"] == "my_methods:L2Anchor"
    head = [k for k in ckpt["naive"]["model"] if k.startswith("head") and k.endswith("weight")]
    assert head and any(not torch.equal(ckpt["naive"]["model"][k], ckpt["l2_anchor"]["model"][k]) for k in head)


def _readme_section() -> str:
    """docs/python.md's "Add your own method or benchmark" section (headings inside code blocks do not end it)."""
    out, level, fenced = [], None, False
    for line in (ROOT / "docs" / "python.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("```"):
            fenced = not fenced
        heading = None if fenced else re.match(r"^(#+) ", line)
        if heading and level is not None and len(heading.group(1)) <= level:
            break
        if heading and "Add your own method or benchmark" in line:
            level = len(heading.group(1))
        elif level is not None:
            out.append(line)
    return "\n".join(out)


def test_readme_shows_the_files_this_test_runs():
    section = _readme_section()
    if not section:
        pytest.skip("docs/python.md has no 'Add your own method or benchmark' section yet")
    blocks = re.findall(r"`([\w./-]+)`:?\s*\n+```\w*\n(.*?)```", section, re.S)
    shown = {Path(name).name: body for name, body in blocks}
    for name in ("custom.yaml", "my_methods.py", "my_benchmark.py"):
        assert name in shown, f"the docs section does not show {name}"
        assert shown[name].strip() == (EXAMPLE / name).read_text().strip(), f"docs/python.md's {name} differs from the file"
    assert "streamcl run tests/custom_example/custom.yaml" in section
