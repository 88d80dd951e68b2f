"""What a fresh clone needs to pass: every installed package pinned, no test able to hang, CI bounded."""

from __future__ import annotations

import configparser
import importlib.metadata as md
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("cpu", "test", "ray", "slurm")  # what the README's test command installs


def _pins() -> dict:
    pins = {}
    for n, line in enumerate((ROOT / "constraints.txt").read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9._-]+)==([^\s;]+)", line)
        assert m, f"constraints.txt:{n}: {line!r} is not NAME==VERSION"
        name = canonicalize_name(m.group(1))
        assert name not in pins, f"constraints.txt:{n}: {m.group(1)} pinned twice"
        pins[name] = m.group(2)
    return pins


def _setup_cfg_requirements() -> list:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options"]["install_requires"].splitlines()
    for extra in cfg["options.extras_require"]:
        lines += cfg["options.extras_require"][extra].splitlines()
    return [Requirement(s.split("#", 1)[0].strip()) for s in lines if s.split("#", 1)[0].strip()]


def test_every_dependency_in_setup_cfg_is_pinned():
    pins, reqs = _pins(), _setup_cfg_requirements()
    missing = sorted({r.name for r in reqs if canonicalize_name(r.name) not in pins})
    assert not missing, f"setup.cfg names {missing} but constraints.txt has no NAME==VERSION line for them"
    for r in reqs:  # and each pin satisfies setup.cfg's range
        v = pins[canonicalize_name(r.name)]
        assert r.specifier.contains(v, prereleases=True), f"constraints.txt pins {r.name}=={v}, outside setup.cfg's {r}"


def _closure() -> dict:
    """Installed distributions reachable from streamcl[EXTRAS] through their metadata: name -> version."""
    seen, todo = {}, [(Requirement(f"streamcl[{','.join(EXTRAS)}]"), ())]
    while todo:
        req, extras = todo.pop()
        name = canonicalize_name(req.name)
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            continue  # a marker-free requirement not installed fails elsewhere (import errors)
        new_extras = set(req.extras) - set(seen.get(name, (None, set()))[1])
        if name in seen and not new_extras:
            continue
        seen[name] = (dist.version, set(req.extras) | seen.get(name, (None, set()))[1])
        for s in dist.requires or ():
            sub = Requirement(s)
            envs = [dict(default_environment(), extra=e) for e in (seen[name][1] or {""})]
            if sub.marker is None or any(sub.marker.evaluate(env) for env in envs):
                todo.append((sub, ()))
    return {n: v for n, (v, _) in seen.items()}


def test_everything_the_install_pulls_in_is_pinned_at_the_installed_version():
    try:
        md.distribution("streamcl")
    except md.PackageNotFoundError:
        pytest.skip("streamcl is not installed (run from an installed checkout)")
    pins, closure = _pins(), _closure()
    closure.pop("streamcl", None)
    unpinned = sorted(n for n in closure if n not in pins)
    assert not unpinned, (
        f"installed with streamcl[{','.join(EXTRAS)}] but not in constraints.txt: {unpinned}; "
        "add them as NAME==VERSION (see the header of constraints.txt)")
    differ = sorted(f"{n} {closure[n]} (pinned {pins[n]})" for n in closure if closure[n] != pins[n])
    assert not differ, f"installed versions differ from constraints.txt: {differ}"


def test_a_hanging_test_fails_with_a_stack_dump(tmp_path):
    """pytest-timeout is active with this project's settings: a stuck test ends as a failure, fast."""
    (tmp_path / "test_hang.py").write_text(textwrap.dedent("""
        import threading, pytest

        @pytest.mark.timeout(2)
        def test_deadlock():
            lock = threading.Lock()
            lock.acquire()
            lock.acquire()  # deadlock
    """))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-c", str(ROOT / "pyproject.toml"),
         "--rootdir", str(tmp_path), str(tmp_path / "test_hang.py")],
        capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Timeout" in out and "test_deadlock" in out, out


def test_ci_bounds_its_steps():
    """.ci/run puts a time limit on the README's test command and on the wheel check, and logs pip freeze."""
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"timeout\b[^\n]*bash -euo pipefail -c \"\$cmd\"", ci), "the README command runs unbounded"
    assert "pip freeze" in ci
