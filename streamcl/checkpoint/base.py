"""What every part of the checkpoint package shares: the format number, markers, error helpers."""

from __future__ import annotations

from typing import Any

FORMAT = 1
# Objects of these packages are saved through their ``__dict__``. Encoding only: restoring never imports.
_ENCODED_PACKAGES = ("avalanche.", "streamcl.")
_SKIP = object()  # marker: value not saved
_RESTART = "rerun with --restart to discard it"


class _Malformed(Exception):
    """Checkpoint content that cannot be restored; the message names the entry (the caller adds the file)."""


def _qualname(obj_or_cls: Any) -> str:
    cls = obj_or_cls if isinstance(obj_or_cls, type) else type(obj_or_cls)
    return f"{cls.__module__}:{cls.__qualname__}"


def _first_line(e: BaseException, limit: int = 200) -> str:
    """``Type: first line`` of an exception, on one line (some, like EOFError from an empty file, have no message).

    A first line ending in ':' (torch's "Error(s) in loading state_dict for X:") gets the next one too.
    """
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    text = " ".join(lines[:2]) if len(lines) > 1 and lines[0].endswith(":") else (lines[0] if lines else "")
    return f"{type(e).__name__}: {text[:limit]}" if text else type(e).__name__


def _need(cond: bool, at: str, what: str) -> None:
    if not cond:
        raise _Malformed(f"{at}: {what}")
