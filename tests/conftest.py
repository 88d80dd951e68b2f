"""Shared test setup: single-threaded torch, a private HOME, and small synthetic streams."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


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
