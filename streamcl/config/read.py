"""Reading YAML: one bounded, safe document per file or ``-o`` value.

Safe tags only; duplicate keys refused (PyYAML keeps the last silently); ``1e-3`` read
as a float; ``${VAR}`` references protected as tokens so that they parse anywhere (they
are expanded by :mod:`streamcl.config.compose`, where their key path is known). Bounds
(file size, nesting depth, expanded size) are checked on the parser's flat event stream
before anything recursive runs, so a hostile file (a YAML alias bomb, 1 000-level
nesting, a self-referencing alias) fails fast with one line, never with a
``RecursionError`` or by filling memory.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Dict, List, Tuple

import yaml

from streamcl.config.text import one_line
from streamcl.errors import ConfigError

ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
ENV_TOKEN = re.compile(r"__streamcl_env_([0-9a-f]+)__")


def _env_token(ref: str) -> str:
    """``${VAR}`` as a plain-scalar-safe token that carries the reference itself (hex)."""
    return f"__streamcl_env_{ref.encode().hex()}__"


# Bounds of an experiment document, checked on the parser's event stream before anything
# recursive (composer, constructor, merge, origins) runs. Real files are a few kB, a few
# levels deep and a few hundred values; these leave ample room and stop hostile ones
# (1 000-level nesting, self-referencing aliases, "billion laughs" alias bombs) in a
# fraction of a second with bounded memory.
MAX_FILE_BYTES = 1 << 20
MAX_DEPTH = 64
MAX_NODES = 100_000

try:  # libyaml's parser: ~30x faster than the pure-Python one
    from yaml._yaml import CParser as _CParser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    _CParser = None
_EventLoader = yaml.CSafeLoader if _CParser is not None else yaml.SafeLoader


class _Hostile(yaml.MarkedYAMLError):
    """A document beyond :data:`MAX_DEPTH` / :data:`MAX_NODES`, a self-referencing alias or a duplicate key."""


def check_shape(text: str) -> None:
    """Raise :class:`_Hostile` when ``text`` nests deeper than MAX_DEPTH or expands to more than MAX_NODES.

    Works on the flat event stream (no recursion): every scalar, sequence and mapping
    counts one node and an alias counts the whole expanded size (and depth) of the
    node it points to, so an alias bomb is refused at the alias that crosses the bound,
    before PyYAML composes or constructs anything. An alias to a node that is still
    open (``a: &x [*x]``) can never be expanded and is refused too.
    """
    stack: List[List[Any]] = []  # open collections: [anchor, expanded size, depth of deepest child]
    done: Dict[str, Tuple[int, int]] = {}  # anchor -> (expanded size, depth) of a finished node
    total = 0

    def count(size: int, depth: int, event: Any) -> None:
        """Account for a node of ``size`` values and ``depth`` levels placed in the innermost open collection."""
        nonlocal total
        total += size
        if total > MAX_NODES:
            raise _Hostile(problem=f"the document expands to more than {MAX_NODES} values (an alias counts as a "
                                   "full copy of what it points to: a YAML alias bomb?); write the values out or "
                                   "use fewer aliases", problem_mark=event.start_mark)
        if len(stack) + depth > MAX_DEPTH:
            raise _Hostile(problem=f"nested more than {MAX_DEPTH} levels deep; an experiment needs a handful, "
                                   "flatten the document", problem_mark=event.start_mark)
        if stack:
            stack[-1][1] += size
            stack[-1][2] = max(stack[-1][2], depth)

    for event in yaml.parse(text, Loader=_EventLoader):
        if isinstance(event, yaml.DocumentStartEvent):
            done.clear()
        elif isinstance(event, yaml.CollectionStartEvent):
            count(1, 1, event)
            stack.append([event.anchor, 1, 0])
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, size, child_depth = stack.pop()
            if anchor is not None:
                done[anchor] = (size, child_depth + 1)
            if stack:  # (its values were counted as they came; only the parent's tallies grow)
                stack[-1][1] += size - 1
                stack[-1][2] = max(stack[-1][2], child_depth + 1)
        elif isinstance(event, yaml.ScalarEvent):
            if event.anchor is not None:
                done[event.anchor] = (1, 0)
            count(1, 0, event)
        elif isinstance(event, yaml.AliasEvent):
            if any(frame[0] == event.anchor for frame in stack):
                raise _Hostile(problem=f"alias *{event.anchor} points into the node that contains it (a "
                                       "self-referencing alias never ends); point it at a finished node",
                               problem_mark=event.start_mark)
            if event.anchor in done:  # (an undefined alias is left to the composer's own error)
                count(*done[event.anchor], event)


class _Constructor(yaml.constructor.SafeConstructor):
    """SafeConstructor that refuses duplicate keys (PyYAML keeps the last one silently)."""

    def flatten_mapping(self, node: yaml.MappingNode) -> None:
        # Called on every mapping before its merge keys (<<) are spliced into node.value, so the
        # mapping's own keys are checked here exactly once; keys a merge brings in may be overridden.
        if not getattr(node, "_streamcl_checked", False):
            node._streamcl_checked = True  # type: ignore[attr-defined]
            seen: Dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)
                try:
                    first = seen.setdefault(key, key_node)
                except TypeError:
                    continue
                if first is not key_node:
                    raise _Hostile(problem=f"duplicate key {one_line(repr(key))} (first at line "
                                           f"{first.start_mark.line + 1}); keep only one",
                                   problem_mark=key_node.start_mark)
        super().flatten_mapping(node)


class _Resolver(yaml.resolver.Resolver):
    """YAML 1.1 tags, plus ``1e-3`` read as a float (YAML 1.1 wants ``1.0e-3``)."""


_Resolver.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)

if _CParser is not None:

    class _Loader(_CParser, _Constructor, _Resolver):  # type: ignore[misc,valid-type]
        """Safe loader on libyaml (composition bounded by :func:`check_shape` beforehand)."""

        def __init__(self, stream: str) -> None:
            _CParser.__init__(self, stream)
            _Constructor.__init__(self)
            _Resolver.__init__(self)

else:  # pragma: no cover - PyYAML built without libyaml

    class _Loader(  # type: ignore[no-redef]
        yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser, yaml.composer.Composer, _Constructor, _Resolver
    ):
        """Safe loader in pure Python (composition bounded by :func:`check_shape` beforehand)."""

        def __init__(self, stream: str) -> None:
            yaml.reader.Reader.__init__(self, stream)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)
            yaml.composer.Composer.__init__(self)
            _Constructor.__init__(self)
            _Resolver.__init__(self)


def load_yaml_text(text: str) -> Any:
    """Safe-load one YAML document within the bounds above (raises ``yaml.YAMLError``).

    Aliases come back as copies, not shared objects, so that an override of one place
    never changes another (the bounds keep the copies small).
    """
    check_shape(text)
    return _unshare(yaml.load(text, Loader=_Loader))


def _unshare(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _unshare(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_unshare(v) for v in value]
    return value


def yaml_problem(e: yaml.YAMLError) -> str:
    """``at line 3, column 5: <problem>`` of a YAML error, on one line."""
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(e, "problem", None) or (str(e).splitlines() or ["unreadable"])[0]
    return one_line(f"{where}: {problem}")


def parse_value(text: str, source: str = "-o") -> Any:
    """A ``-o`` value as YAML (``0.01`` -> float, ``[0, 1]`` -> list, ``null`` -> None).

    Text that is not valid YAML stays a string; a value beyond the document bounds, a
    self-referencing alias or a duplicate key is an error naming ``source``.
    """
    try:
        return load_yaml_text(text)
    except _Hostile as e:
        raise ConfigError(f"invalid YAML value{yaml_problem(e)}", file=one_line(source)) from None
    except yaml.YAMLError:
        return text


def read_yaml(path: Path, key_hint: str = "") -> Dict[str, Any]:
    """One experiment file as a mapping (``${VAR}`` kept as tokens); ConfigError names the file on any problem."""
    try:
        found = path.is_file()
    except (OSError, ValueError):  # (a NUL byte in the name)
        found = False
    if not found:
        raise ConfigError(
            f"file not found{' (' + key_hint + ')' if key_hint else ''}; check the path", file=path
        )
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_FILE_BYTES + 1)
        if len(data) > MAX_FILE_BYTES:
            raise ConfigError(f"too large for an experiment file (more than {MAX_FILE_BYTES} bytes); "
                              "is this the right file?", file=path)
        text = data.decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(one_line(f"cannot read the file as UTF-8 text ({e}); is this the right file?"),
                          file=path) from None
    # `${VAR}` is not a valid plain scalar inside flow mappings ({root: ${X}}): protect it
    # as a token, parse, and expand it later (expand_env) where its key path is known.
    text = ENV_REF.sub(lambda m: _env_token(m.group(0)), text)
    try:
        doc = load_yaml_text(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"invalid YAML{yaml_problem(e)}", file=path) from None
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"the file must hold a mapping of keys, not a {type(doc).__name__}", file=path)
    return doc
