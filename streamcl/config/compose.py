"""Composing a document: ``include:`` files, ``-o key.path=value`` overrides, ``${VAR}`` references.

Every step records in :class:`Origins` which file (or which ``-o``) each key path came
from, so that a validation error three includes away still names the file to fix.

* ``include: [base.yaml, ...]`` files are deep-merged underneath the file that
  includes them (paths relative to it; cycles and more than MAX_INCLUDE_DEPTH levels
  refused); mappings merge key by key, lists and scalars replace.
* ``-o plugins[0].memory=417`` sets one key path (missing mappings are created, a list
  may grow by one item at its end); the value is parsed as bounded YAML.
* ``${VAR}`` / ``${VAR:-default}`` (bash semantics: an empty variable takes the default;
  an empty one without a default is an error) are expanded last; a value that is a whole
  reference is parsed as YAML (``${N}`` with N=3 is an int).

Why not OmegaConf (measured with omegaconf 2.4.0 on this code, 2026-11):

* It does not know where a key came from: merged configs carry no file, so the
  error messages would lose the file name. ``Origins`` would stay either way.
* ``${VAR}`` means a reference to another key in OmegaConf (``${X_ROOT}`` ->
  ``InterpolationKeyError: Interpolation key 'X_ROOT' not found``) and ``${VAR:-default}``
  is ``UnsupportedInterpolationType``: every experiment file and README example would
  have to change to ``${oc.env:VAR,default}``, whose empty-variable rule differs (an
  empty variable silently gives ``''``). A plain string holding ``${`` (``"cost ${x"``)
  becomes a ``GrammarParseError``.
* ``OmegaConf.merge(cfg, OmegaConf.from_dotlist(["plugins[0].memory=417"]))`` fails with
  ``TypeError: Cannot merge incompatible container types`` (the dotlist builds a mapping
  where the document has a list); ``OmegaConf.update`` handles it but parses no YAML
  values and cannot append ``plugins[1]``. Its own YAML reader stops at PyYAML's
  1 000-level flow limit with a multi-line ``ScannerError``, not at our bounds.
* Its errors are several lines (``full_key: ... object_type=dict``); ours must be one.
* Speed: ``create + merge + to_container`` of ``experiments/demo.yaml`` takes 34 ms
  (``deep_merge``: 0.04 ms); a document at the MAX_NODES bound (100 000 values) takes
  7 s to create and 4 s to merge (``deep_merge``: 0.04 s), which the hostile-input tests
  forbid (a fraction of a second).

So composition stays these ~200 lines of plain dict code; the strict "unknown key, did
you mean" checks live in :mod:`streamcl.config.schema` and would be needed either way.
"""

from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from streamcl.config.read import ENV_REF, ENV_TOKEN, MAX_DEPTH, parse_value, read_yaml
from streamcl.config.text import KeyPath, fmt_path, one_line
from streamcl.errors import ConfigError

MAX_INCLUDE_DEPTH = 16


def deep_merge(base: Any, over: Any) -> Any:
    """Mappings merge key by key; lists and scalars in ``over`` replace those in ``base``."""
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = deep_merge(base[k], v) if k in base else copy.deepcopy(v)
        return out
    return copy.deepcopy(over)


class Origins:
    """Which file (and which displayed key) every key path of a merged document came from."""

    def __init__(self) -> None:
        self._map: Dict[KeyPath, Tuple[str, KeyPath]] = {}

    def record(self, doc: Any, source: str, prefix: KeyPath = (), shown: Optional[KeyPath] = None) -> None:
        """Note ``source`` for ``prefix`` and every key path below it (iterative: no recursion on deep input)."""
        todo = [(doc, prefix, prefix if shown is None else shown)]
        while todo:
            node, at, as_shown = todo.pop()
            self._map[at] = (source, as_shown)
            items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
            todo.extend((v, at + (k,), as_shown + (k,)) for k, v in items)

    def forget(self, prefix: KeyPath) -> None:
        """Drop every key path under ``prefix`` (a value replaced by an override)."""
        n = len(prefix)
        for k in [k for k in self._map if len(k) > n and k[:n] == prefix]:
            del self._map[k]

    def locate(self, path: KeyPath) -> Tuple[Optional[str], str]:
        """(file, displayed key path) for ``path``: the longest recorded prefix decides."""
        for n in range(len(path), -1, -1):
            hit = self._map.get(tuple(path[:n]))
            if hit is not None:
                source, shown = hit
                return source, fmt_path(shown + tuple(path[n:]))
        return None, fmt_path(path)

    def copy(self) -> Origins:
        o = Origins()
        o._map = dict(self._map)
        return o

    def rebase(self, src_prefix: KeyPath, dst_prefix: KeyPath) -> None:
        """Make keys recorded under ``src_prefix`` also answer for ``dst_prefix`` (grid cells)."""
        for k, v in list(self._map.items()):
            if k[: len(src_prefix)] == src_prefix:
                self._map[dst_prefix + k[len(src_prefix) :]] = v

    def rebased(self, src_prefix: KeyPath) -> Origins:
        """A view where keys under ``src_prefix`` also answer at the top level (a method's own keys).

        Same answers as ``copy()`` + ``rebase(src_prefix, ())``, without copying the whole map for
        every method of a grid (which made a file with thousands of methods take minutes).
        """
        return _RebasedOrigins(self, src_prefix)


class _RebasedOrigins(Origins):
    def __init__(self, base: Origins, src_prefix: KeyPath) -> None:
        super().__init__()
        self._map = base._map
        self._src = src_prefix

    def locate(self, path: KeyPath) -> Tuple[Optional[str], str]:
        for n in range(len(path), -1, -1):
            hit = self._map.get(self._src + tuple(path[:n])) or self._map.get(tuple(path[:n]))
            if hit is not None:
                source, shown = hit
                return source, fmt_path(shown + tuple(path[n:]))
        return None, fmt_path(path)


def load_document(path: Union[str, Path], _stack: Sequence[Path] = ()) -> Tuple[Dict[str, Any], Origins]:
    """Read ``path`` with its ``include:`` files merged underneath, recording where each key came from."""
    path = Path(path)
    doc = read_yaml(path)
    real = path.resolve()
    if real in _stack:
        chain = " -> ".join(str(p) for p in (*_stack, real))
        raise ConfigError(f"include cycle: {chain}", file=_stack[-1], key="include")
    if len(_stack) >= MAX_INCLUDE_DEPTH:
        raise ConfigError(f"includes nest more than {MAX_INCLUDE_DEPTH} files deep", file=_stack[-1], key="include")
    includes = doc.pop("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError("must be a file path or a list of file paths", file=path, key="include")
    merged: Dict[str, Any] = {}
    origins = Origins()
    for inc in includes:
        try:
            inc_path = (path.parent / os.path.expandvars(inc)).resolve()
            found = inc_path.is_file()
        except (OSError, ValueError) as e:  # a NUL byte, a symlink loop ...
            raise ConfigError(one_line(f"cannot use included path {inc!r} ({e})"), file=path, key="include") from None
        if not found:
            raise ConfigError(one_line(f"included file not found: {inc_path}; paths are relative to {path.parent}"),
                              file=path, key="include")
        sub, sub_origins = load_document(inc_path, (*_stack, real))
        merged = deep_merge(merged, sub)
        origins._map.update(sub_origins._map)
    merged = deep_merge(merged, doc)
    origins.record(doc, str(path))
    return merged, origins


_INDEX = re.compile(r"^(\w[\w-]*)((?:\[\d+\])*)$")


def _split_key(key: str) -> List[Union[str, int]]:
    parts: List[Union[str, int]] = []
    for chunk in key.split("."):
        if chunk.isdigit():
            parts.append(int(chunk))
            continue
        m = _INDEX.match(chunk)
        if not m:
            raise ConfigError(f"bad key path '{one_line(key)}' (write e.g. strategy.optimizer.lr or plugins[0].mem_size)",
                              file="-o")
        parts.append(m.group(1))
        parts.extend(int(i) for i in re.findall(r"\[(\d+)\]", m.group(2)))
    return parts


def _depth(value: Any) -> int:
    """Levels of nesting of a parsed value (bounded by MAX_DEPTH: values come from :func:`load_yaml_text`)."""
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def apply_override(doc: Dict[str, Any], origins: Origins, item: str) -> None:
    """Apply one ``key.path=value`` override in place."""
    if "=" not in item:
        raise ConfigError(f"override '{one_line(item)}' must look like key.path=value", file="-o")
    key, _, text = item.partition("=")
    parts = _split_key(key.strip())
    node: Any = doc
    for i, p in enumerate(parts[:-1]):
        nxt = parts[i + 1]
        if isinstance(node, dict):
            if p not in node or node[p] is None:
                node[p] = [] if isinstance(nxt, int) else {}
            node = node[p]
        elif isinstance(node, list) and isinstance(p, int) and p < len(node):
            node = node[p]
        else:
            raise ConfigError(f"cannot set '{one_line(key)}': {fmt_path(tuple(parts[: i + 1]))} is not a mapping or "
                              "an existing list item", file="-o")
    last = parts[-1]
    value = parse_value(text, f"-o {one_line(item)}")
    if len(parts) + _depth(value) > MAX_DEPTH:
        raise ConfigError(f"override '{one_line(key)}' nests more than {MAX_DEPTH} levels deep; flatten it", file="-o")
    if isinstance(node, dict):
        node[last] = value
    elif isinstance(node, list) and isinstance(last, int) and last <= len(node):
        node[last:last + 1] = [value]
    else:
        raise ConfigError(f"cannot set '{one_line(key)}'", file="-o")
    origins.forget(tuple(parts))  # what the file had under this key is gone: its paths must not answer
    origins.record(value, f"-o {one_line(item)}", tuple(parts))


def expand_env(doc: Any, origins: Origins, path: KeyPath = ()) -> Any:
    """Replace ``${VAR}`` / ``${VAR:-default}`` in every string value."""
    if isinstance(doc, dict):
        return {k: expand_env(v, origins, path + (k,)) for k, v in doc.items()}
    if isinstance(doc, list):
        return [expand_env(v, origins, path + (i,)) for i, v in enumerate(doc)]
    if isinstance(doc, str) and "__streamcl_env_" in doc:
        doc = ENV_TOKEN.sub(lambda m: bytes.fromhex(m.group(1)).decode(), doc)
    if isinstance(doc, str) and "${" in doc:

        def sub(m: re.Match[str]) -> str:
            # Bash semantics: ${VAR:-default} takes the default when VAR is unset *or empty*;
            # a bare ${VAR} that is empty is an error (an empty path or number is never meant).
            var, default = m.group(1), m.group(2)
            value = os.environ.get(var)
            if value:
                return value
            if default is not None:
                return default
            file, key = origins.locate(path)
            state = "is set to an empty string" if value == "" else "is not set"
            raise ConfigError(f"environment variable {var} {state}; export it with a value or write "
                              f"${{{var}:-default}}", file=file, key=key)

        text = ENV_REF.sub(sub, doc)
        if text != doc and ENV_REF.fullmatch(doc):
            file, key = origins.locate(path)
            value = parse_value(text, f"{file}: {key}" if file else key)
            if len(path) + _depth(value) > MAX_DEPTH:
                raise ConfigError(f"the value of {one_line(doc)} nests more than {MAX_DEPTH} levels deep", file=file, key=key)
            return value
        return text
    return doc
