"""Shared helpers for the raw-dataset tests (indexers, synthetic trees, prepare)."""

from __future__ import annotations

import pandas as pd

from streamcl.benchmarks import prepare, synthetic  # noqa: F401  (re-exported to the tests)
from streamcl.benchmarks.raw import core50, ilab, toybox  # noqa: F401
from streamcl.benchmarks.raw import icubworld as icub  # noqa: F401

#: Small synthetic sizes: the real balancing rules still apply to them.
SMALL = {
    "toybox": dict(n_classes=2, n_objects=2, image_size=32),
    "ilab2mlight": dict(n_classes=2, n_objects=2, image_size=32),
    "core50": dict(n_classes=2, n_objects=2, n_sessions=4, image_size=32),
    "icubworld": dict(n_classes=2, n_objects=2, n_frames=12, image_size=32),
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
    assert set(df.groupby("class")["object"].agg(lambda s: tuple(sorted(set(s))))) == {
        tuple(range(1, objects + 1))
    }
    assert list(df.columns[:5]) == ["class", "object", "session", "im_num", "im_path"]
    assert df.equals(df.sort_values(["class", "object", "session", "im_num"]).reset_index(drop=True))
