"""Shared test setup: single-threaded torch, a private HOME, and small synthetic streams."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import sys  # noqa: E402
import warnings  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

_simplefilter = warnings.simplefilter


def _simplefilter_except_avalanche_deprecated(action, category=Warning, lineno=0, append=False):
    """``warnings.simplefilter``, less the call that Avalanche's ``@deprecated`` makes on every use.

    Avalanche 0.6's ``avalanche._annotations.deprecated`` wrapper runs
    ``warnings.simplefilter("once", DeprecationWarning)`` before each warning it raises: that puts
    a catch-all "once" filter in front of the ``filterwarnings`` of pyproject.toml, so the
    ignore entries for Avalanche's deprecations never match and every call reaches the pytest
    summary. Dropping that one call lets the configured filters decide; any other caller
    (pytest, ``pytest.warns``, the tests) is unchanged.
    """
    if sys._getframe(1).f_globals.get("__name__") == "avalanche._annotations":
        return
    _simplefilter(action, category, lineno, append)


warnings.simplefilter = _simplefilter_except_avalanche_deprecated

# The limit for @pytest.mark.slow tests (the default suite's is `timeout` in pyproject.toml).
SLOW_TEST_TIMEOUT = 1800


def pytest_collection_modifyitems(config, items):
    """Slow tests (whole reduced-size experiments) get a longer limit, unless they set their own."""
    for item in items:
        if item.get_closest_marker("slow") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(SLOW_TEST_TIMEOUT))


@pytest.fixture(scope="session")
def perf_script():
    """Import a script of ``perf/`` as a module (the real-image tests run the benchmarks' own code)."""
    import importlib
    import sys
    from pathlib import Path

    perf = str(Path(__file__).resolve().parents[1] / "perf")
    sys.path.insert(0, perf)
    try:
        yield importlib.import_module
    finally:
        sys.path.remove(perf)


@pytest.fixture(scope="session", autouse=True)
def _avalanche_home(tmp_path_factory):
    """Avalanche writes ~/.avalanche/config.json on import: keep it out of the user's home."""
    home = tmp_path_factory.mktemp("home")
    old = os.environ.get("HOME")
    os.environ["HOME"] = str(home)
    yield
    if old is not None:
        os.environ["HOME"] = old


# Small synthetic Toybox stream shared by the runner tests: 4 classes -> 2 experiences.
TINY_STREAM = {
    "name": "synthetic",
    "layout": "toybox",
    "n_classes": 4,
    "n_objects": 2,
    "image_size": 32,
}


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory):
    """Folder holding the prepared synthetic Toybox tree (generated once per test session)."""
    return tmp_path_factory.mktemp("synthetic") / "toybox"
