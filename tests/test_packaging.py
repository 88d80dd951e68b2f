"""Packaging: the wheel and sdist build, hold every file the package needs, and carry one version;
the reuse example runs and uses public names only.

The build runs offline (``python -m build --no-isolation``: the installed setuptools, no
download), sdist first and the wheel from the unpacked sdist, so a file missing from either
shows here. ``.ci/run`` does the same with build isolation, then installs the wheel into a fresh
environment and runs the example outside the checkout.
"""

from __future__ import annotations

import ast
import configparser
import importlib
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

import streamcl

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "reuse_with_avalanche.py"


def _package_files() -> set:
    """Files under streamcl/ that a wheel must hold (git's view: tracked + untracked, not ignored)."""
    try:
        out = subprocess.run(
            ["git", "ls-files", "--cached", "--others", "--exclude-standard", "streamcl"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout.split()
        files = {f for f in out if (ROOT / f).is_file()}  # a tracked file deleted in the work tree is not shipped
    except (OSError, subprocess.CalledProcessError):  # no git (an unpacked sdist): what lies on disk
        files = {p.relative_to(ROOT).as_posix() for p in (ROOT / "streamcl").rglob("*") if p.is_file()}
    return {f for f in files if "__pycache__" not in f and not f.endswith((".pyc", ".pyo"))}


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(ROOT)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, f"python -m build failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    wheels, sdists = sorted(out.glob("*.whl")), sorted(out.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1, os.listdir(out)
    return wheels[0], sdists[0]


def test_version_is_defined_once():
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["metadata"]["version"].strip() == "attr: streamcl.__version__"
    assert re.fullmatch(r"\d+\.\d+\.\d+(?:[.-]?(?:a|b|rc|dev|post)\d*)?", streamcl.__version__)


def test_wheel_holds_the_package_and_its_data(dist):
    wheel, _ = dist
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = next(n for n in names if n.endswith(".dist-info/METADATA"))
        meta = Parser().parsestr(z.read(info).decode())
        entry_points = z.read(info.replace("METADATA", "entry_points.txt")).decode()
    packaged = {n for n in names if n.startswith("streamcl/")}
    expected = _package_files()
    assert any(not f.endswith(".py") for f in expected), "no package data found: is streamcl/py.typed gone?"
    missing = sorted(expected - packaged)
    assert not missing, f"files of the package missing from the wheel (setup.cfg [options.package_data]?): {missing}"
    extra = sorted(packaged - expected)
    assert not extra, f"files in the wheel that the checkout does not have (stale build/ folder?): {extra}"
    assert meta["Name"] == "streamcl"
    assert meta["Version"] == streamcl.__version__
    assert wheel.name.startswith(f"streamcl-{streamcl.__version__}-")
    assert re.search(r"^streamcl = streamcl\.cli:main$", entry_points, re.M)


def test_sdist_holds_the_example_and_the_changelog(dist):
    _, sdist = dist
    top = f"streamcl-{streamcl.__version__}"
    assert sdist.name == f"{top}.tar.gz"
    with tarfile.open(sdist) as t:
        names = set(t.getnames())
    for f in ("pyproject.toml", "setup.cfg", "README.md", "LICENSE", "CHANGELOG.md", "constraints.txt",
              "examples/reuse_with_avalanche.py", "streamcl/__init__.py", "streamcl/py.typed"):
        assert f"{top}/{f}" in names, f
    assert not any(n.startswith(f"{top}/tests/") for n in names), "a partial test suite in the sdist"


def test_example_uses_public_names_only():
    """Every ``from streamcl... import name`` of the example is in that module's ``__all__``."""
    tree = ast.parse(EXAMPLE.read_text())
    imported = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "streamcl":
            imported += [(node.module, a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            assert not any(a.name.split(".")[0] == "streamcl" for a in node.names), "use from-imports of public names"
    assert imported
    for module, name in imported:
        public = getattr(importlib.import_module(module), "__all__", None)
        assert public is not None, f"{module} defines no __all__: {name} is not public"
        assert name in public, f"{module}.{name} is not in {module}.__all__"


@pytest.mark.slow  # .ci/run runs the example too, from the installed wheel
def test_example_runs_and_prints_an_accuracy(tmp_path):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLE), "--workdir", str(tmp_path / "work")],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = re.search(r"^final accuracy: (\d\.\d+)$", proc.stdout, re.M)
    assert m, proc.stdout
    assert 0.0 <= float(m.group(1)) <= 1.0
    assert list(cwd.iterdir()) == [], "the example wrote into its working directory"
    assert (tmp_path / "work" / "toybox" / "dirmap.csv").is_file()


def test_ci_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(ROOT / ".ci" / "run")], check=True)
