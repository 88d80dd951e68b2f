"""One-line error text: key paths (``plugins[0].lr``), line breaks escaped, long values cut.

Every :class:`~streamcl.errors.ConfigError` message is one line (the CLI prints it as it
is); these helpers keep user text (keys, values, file names) from breaking that.
"""

from __future__ import annotations

import re
from typing import Any, Tuple, Union

KeyPath = Tuple[Union[str, int], ...]
_LINE_BREAKS = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")


def one_line(text: str) -> str:
    """``text`` with every line break escaped, so that an error message stays one line."""
    return _LINE_BREAKS.sub(lambda m: repr(m.group(0))[1:-1], str(text))


def fmt_path(path: KeyPath) -> str:
    """``("plugins", 0, "lr")`` -> ``plugins[0].lr``."""
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return one_line(out) or "<top level>"


def clip(text: str, limit: int = 160) -> str:
    """``text`` on one line, cut to ``limit`` characters (a library's message inside ours)."""
    text = one_line(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters, on one line (for error messages)."""
    text = repr(value)
    return one_line(text if len(text) <= limit else text[: limit - 3] + "...")
