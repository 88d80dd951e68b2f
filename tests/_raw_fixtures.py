"""Shared helpers for the raw-dataset tests (indexers, synthetic trees, prepare)."""

from __future__ import annotations

import importlib
from types import ModuleType

import pandas as pd


def mod(name: str) -> ModuleType:
    """A dataset module by file name (importlib: the package exports functions with the same names)."""
    return importlib.import_module(f"streamcl.benchmarks.{name}")


toybox = mod("toybox")
ilab = mod("ilab")
core50 = mod("core50")
icub = mod("icubworld")
synthetic = mod("synthetic")
prepare = mod("prepare")

#: Small synthetic sizes: the real balancing rules still apply to them.
SMALL = {
    "toybox": dict(n_classes=2, n_objects=2, image_size=32),
    "ilab2mlight": dict(n_classes=2, n_objects=2, image_size=32),
    "core50": dict(n_classes=2, n_objects=2, n_sessions=4, image_size=32),
    "icubworld": dict(n_classes=3, n_objects=2, n_frames=21, image_size=32),
}


def per(df: pd.DataFrame, *keys: str) -> set:
    """Set of group sizes of ``df`` grouped by ``keys`` (a balanced table gives one value)."""
    return set(df.groupby(list(keys)).size().tolist())


def check_balanced(df: pd.DataFrame, *, classes: int, objects: int, sessions: int, frames: int) -> None:
    """Assert the exact balanced shape classes x objects x sessions x frames, with dense ids."""
    assert len(df) == classes * objects * sessions * frames
    assert df["class"].nunique() == classes
    assert set(df.groupby("class")["object"].nunique()) == {objects}
    assert set(df.groupby(["class", "object"])["session"].nunique()) == {sessions}
    assert per(df, "class", "object", "session") == {frames}
    assert set(df.groupby("class")["object"].agg(lambda s: tuple(sorted(set(s))))) == {tuple(range(1, objects + 1))}
    assert list(df.columns[:5]) == ["class", "object", "session", "im_num", "im_path"]
    assert df.equals(df.sort_values(["class", "object", "session", "im_num"]).reset_index(drop=True))
