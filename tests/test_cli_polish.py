"""What a new user meets first: ``--version``, the TensorBoard hint, links to the docs, a quiet test summary."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import yaml

import streamcl
from streamcl import cli

ROOT = Path(__file__).resolve().parents[1]


# -- --version ----------------------------------------------------------------------------------------


def test_version_flag_in_process(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"streamcl {streamcl.__version__}"


def test_version_flag_through_the_entry_point(tmp_path):
    """``python -m streamcl --version`` (what the ``streamcl`` console script runs); no subcommand needed."""
    env = dict(os.environ, OMP_NUM_THREADS="1", HOME=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "streamcl", "--version"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"streamcl {streamcl.__version__}"
    assert "streamcl --version" in (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")


# -- the TensorBoard hint -----------------------------------------------------------------------------


def _tiny(tmp_path: Path, synthetic_root: Path, loggers: list) -> Path:
    doc = {
        "name": "tiny", "runs": [0], "threads": 1, "output_dir": str(tmp_path / "runs"),
        "benchmark": {"name": "synthetic", "root": str(synthetic_root), "layout": "toybox", "n_classes": 4,
                      "n_objects": 2, "image_size": 32},
        "model": {"name": "small_cnn_cut", "width": 8},
        "strategy": {"name": "naive", "train_mb_size": 16, "optimizer": {"name": "sgd", "lr": 0.05}},
        "evaluation": {"metrics": ["accuracy"], "loggers": loggers},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize("loggers, hint", [(["csv"], False), (["tensorboard", "csv"], True)])
def test_run_prints_the_tensorboard_hint_only_when_there_are_events(tmp_path, synthetic_root, capsys, loggers,
                                                                     hint):
    path = _tiny(tmp_path, synthetic_root, loggers)
    assert cli.main(["run", str(path), "-q"]) == 0
    out = capsys.readouterr().out
    root = tmp_path / "runs" / "tiny"
    events = list(root.rglob("*tfevents*"))
    assert bool(events) is hint
    assert ("tensorboard --logdir" in out) is hint, out
    if hint:
        assert f"TensorBoard: tensorboard --logdir {root}" in out


def test_tensorboard_hint_needs_the_logger_and_event_files(tmp_path, synthetic_root):
    from streamcl.config import load_experiment

    with_tb = load_experiment(_tiny(tmp_path, synthetic_root, ["tensorboard", "csv"]))
    root = with_tb.root
    assert cli._tensorboard_hint(with_tb, root) is None  # the logger, but no events (yet)
    tb = root / with_tb.cells[0].name / "run0" / "tb"
    tb.mkdir(parents=True)
    (tb / "events.out.tfevents.0.host").write_bytes(b"")
    assert cli._tensorboard_hint(with_tb, root) == f"TensorBoard: tensorboard --logdir {root}"
    without = load_experiment(_tiny(tmp_path, synthetic_root, ["csv"]))
    assert cli._tensorboard_hint(without, root) is None  # stray events, but no cell logs there


# -- references to README sections and docs pages -----------------------------------------------------

# README, README.md or docs/<page>.md, then optionally #anchor or a quoted section name ('Running on a cluster').
REFERENCE = re.compile(r"\b(README(?:\.md)?|docs/[\w./-]+?\.md)\b(?:#([\w-]+)|\s*(?:section\s*)?['\"]([^'\"]+)['\"])?")


def _slug(heading: str) -> str:
    """GitHub's (and MyST's) anchor of a heading."""
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", heading.strip().lower()))


def _headings(path: Path) -> set:
    text = re.sub(r"^ *```.*?^ *```", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)
    return {m.group(1).strip() for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M)}


def broken_references(text: str) -> list:
    """The references to README/docs pages in ``text`` whose file, anchor or section does not exist."""
    bad = []
    for m in REFERENCE.finditer(text):
        page, anchor, section = m.groups()
        path = ROOT / ("README.md" if page.startswith("README") else page)
        if not path.is_file():
            bad.append(f"{m.group(0)!r}: no file {page}")
            continue
        heads = _headings(path)
        if anchor and anchor not in {_slug(h) for h in heads}:
            bad.append(f"{m.group(0)!r}: {page} has no heading #{anchor}")
        if section and section.strip().lower() not in {h.lower() for h in heads}:
            bad.append(f"{m.group(0)!r}: {page} has no section {section!r}")
    return bad


def _strings(path: Path):
    """Every string constant of a module, adjacent literals joined, f-strings' literal parts included."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            yield node.lineno, node.value


def test_reference_checker_finds_moved_sections():
    assert broken_references("see README 'Running on a cluster'")  # the section moved to docs/cluster.md
    assert broken_references("see docs/nowhere.md")
    assert broken_references("see docs/cli.md#no-such-heading")
    assert not broken_references("see docs/cluster.md, docs/cli.md#resume or docs/cluster.md 'Running on a cluster'")
    assert not broken_references("the README's table")


def test_streamcl_strings_point_at_existing_docs():
    """Help texts and messages that send the user to README/docs/*.md name a file and heading that exist."""
    bad = [f"{path.relative_to(ROOT)}:{line}: {problem}"
           for path in sorted((ROOT / "streamcl").rglob("*.py"))
           for line, text in _strings(path)
           for problem in broken_references(text)]
    assert not bad, "\n".join(bad)


def test_launcher_help_points_at_the_cluster_page():
    help_text = " ".join(cli.build_parser()._subparsers._group_actions[0].choices["run"].format_help().split())
    assert "docs/cluster.md" in help_text and "README" not in help_text


# -- warnings in the test summary ---------------------------------------------------------------------


def _function_of(module: str, source: str):
    """A function compiled as if it were defined in ``module`` (what warning filters match by module)."""
    ns: dict = {"__name__": module}
    exec(compile(source, f"<{module}>", "exec"), ns)
    return ns["f"]


def test_avalanche_deprecations_obey_the_configured_filters():
    """Avalanche's ``@deprecated`` re-installs a "once" filter per call (tests/conftest.py stops that):
    called from Avalanche's code, its warning is ignored by pyproject.toml's filters, which stay as they were."""
    from avalanche._annotations import deprecated

    old = deprecated(0.7, "gone")(lambda: 1)
    call = _function_of("avalanche.training.plugins.somewhere", "def f(g):\n    return g()\n")
    with warnings.catch_warnings(record=True) as caught:  # the filters pytest installed for this test
        before = list(warnings.filters)
        assert call(old) == 1
        assert warnings.filters == before
    assert caught == []


@pytest.mark.parametrize("category", [DeprecationWarning, UserWarning])
def test_streamcl_warnings_stay_visible(category):
    warn = _function_of("streamcl.somewhere", f"import warnings\ndef f():\n    warnings.warn('x', {category.__name__})\n")
    with warnings.catch_warnings(record=True) as caught:
        warn()
    assert [w.category for w in caught] == [category]
