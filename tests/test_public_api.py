"""streamcl's public names and signatures against the committed list ``tests/public_api.txt``.

Removing or renaming a public name (or changing a public signature) must be a deliberate
change, noted in CHANGELOG.md: this test fails on any difference from the snapshot, listing
removals (breaking), signature changes and additions separately. After a deliberate change::

    python tests/test_public_api.py --update

Public modules: every package under ``streamcl`` (each must define ``__all__``) and every
module that defines ``__all__``, leaving out private ones (a path part with a leading
underscore). ``DOCUMENTED`` lists the modules the README tells users to import from: they
must define ``__all__``. Each line of the snapshot is ``module:name signature``: for a class
its ``__init__`` parameters (names, kinds, defaults; no annotations), for a function its
parameters, for a typing alias its repr, for anything else its type name (so a constant's
value may change, its kind may not). A module line (``module (module)``) records the module
itself, so an emptied or deleted module shows too.

The snapshot is computed in a subprocess in which the optional extras (``EXTRAS``) cannot be
imported: every public module must import without them. A module that needs one at import
time goes into ``EXCLUDED`` with the reason.
"""

from __future__ import annotations

import ast
import enum
import importlib
import inspect
import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Tuple

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "streamcl"
SNAPSHOT = Path(__file__).resolve().with_name("public_api.txt")
UPDATE_HINT = (
    "a public name changed: if deliberate, regenerate with "
    "`python tests/test_public_api.py --update` and note it in CHANGELOG.md"
)

# Optional extras (setup.cfg extras_require): importing a public module must not need them.
# Not `wandb`: avalanche-lib requires it (the `wandb` extra only names it for a --no-deps
# install), so Avalanche itself imports it; streamcl.wandb_logger imports it on first use.
EXTRAS = ("ray", "submitit", "faiss")

# Public modules that need an extra at import time: module -> reason. None today (the
# launchers, the wandb logger and the PQ codec import their extra on first use).
EXCLUDED: Dict[str, str] = {}

# Packages that hold implementation, not API: left out with everything under them, with the reason.
INTERNAL: Dict[str, str] = {
    "streamcl.checkpoint": "the runner's checkpoint format (save/load, allow-listed encoding), and the Avalanche "
                           "checkpoint helpers docs/python.md shows (their signatures are Avalanche's own)",
}

# Modules the README and the docs tell users to import from: each must define __all__.
DOCUMENTED = (
    "streamcl.benchmarks",
    "streamcl.benchmarks.continuum_bridge",
    "streamcl.benchmarks.synthetic",
    "streamcl.build",
    "streamcl.errors",
    "streamcl.models",
    "streamcl.paper_metrics",
    "streamcl.plugins",
    "streamcl.plugins.crumb",
    "streamcl.plugins.crumb_pretraining",
    "streamcl.plugins.mas_paper",
    "streamcl.registry",
    "streamcl.report",
    "streamcl.results",
    "streamcl.stats",
    "streamcl.strategies",
)


# ----------------------------------------------------------------------------- discovery


def _defines_all(path: Path) -> bool:
    """True when the module's source assigns ``__all__`` at top level (read, not imported)."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign):
            targets = [node.target]
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            return True
    return False


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def discover() -> Tuple[List[str], List[str]]:
    """(public modules, public packages), sorted; EXCLUDED ones left in (callers skip them)."""
    modules, packages = set(), set()
    for path in sorted(PACKAGE.rglob("*.py")):
        name = _module_name(path)
        if any(part.startswith("_") for part in name.split(".")):
            continue  # private (streamcl.benchmarks.raw._video, streamcl.__main__)
        if any(name == p or name.startswith(p + ".") for p in INTERNAL):
            continue  # implementation (INTERNAL)
        if path.name == "__init__.py":
            packages.add(name)
            modules.add(name)
        elif _defines_all(path):
            modules.add(name)
    return sorted(modules), sorted(packages)


# ----------------------------------------------------------------------------- rendering

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _stable(value: Any) -> Any:
    """Sets sorted (their order depends on hash randomisation), recursively."""
    if isinstance(value, (set, frozenset)):
        items = sorted((_stable(v) for v in value), key=repr)
        return _SortedSet(type(value).__name__, items)
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(_stable(v) for v in value)
    if isinstance(value, list):
        return [_stable(v) for v in value]
    if isinstance(value, dict):
        return {k: _stable(v) for k, v in value.items()}
    return value


class _SortedSet:
    def __init__(self, kind: str, items: List[Any]):
        self.text = f"{kind}({{{', '.join(repr(i) for i in items)}}})" if items else f"{kind}()"

    def __repr__(self) -> str:
        return self.text


def _default(value: Any) -> str:
    if isinstance(value, enum.Enum):
        text = f"{type(value).__name__}.{value.name}"
    elif inspect.isclass(value) or inspect.isroutine(value):
        text = f"{getattr(value, '__module__', '?')}.{getattr(value, '__qualname__', value.__name__)}"
    else:
        text = repr(_stable(value))
    return _ADDRESS.sub("", text)


class _Raw:
    """A default rendered once, so ``Signature.__str__`` prints it as is."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        return self.text


def _params(sig: inspect.Signature, drop_first: bool = False) -> str:
    params = list(sig.parameters.values())
    if drop_first and params:
        params = params[1:]
    clean = [
        p.replace(
            annotation=inspect.Parameter.empty,
            default=p.default if p.default is inspect.Parameter.empty else _Raw(_default(p.default)),
        )
        for p in params
    ]
    return str(sig.replace(parameters=clean, return_annotation=inspect.Signature.empty))


def _class_signature(cls: type) -> str:
    """Parameters of ``__init__`` (of ``__new__`` when only that is defined), without self/cls.

    An ``__init__`` inherited from outside streamcl (``nn.Module``, ``Exception``, timm's
    ``Attention`` ...) is named, not expanded: its parameters are the other library's and
    change with its version.
    """
    for attr, base in (("__init__", object.__init__), ("__new__", object.__new__)):
        method = getattr(cls, attr, None)
        if method is None or method is base:
            continue
        owner = next(k for k in cls.__mro__ if attr in vars(k))
        if owner.__module__.split(".")[0] != cls.__module__.split(".")[0]:
            return f"(<inherited from {owner.__module__.split('.')[0]}: {owner.__qualname__}.{attr}>)"
        try:
            sig = inspect.signature(method)
        except (TypeError, ValueError):
            return "(?)"
        # __new__ is a staticmethod (cls stays a parameter); a plain __init__ keeps self.
        return _params(sig, drop_first=bool(sig.parameters))
    return "()"


def describe(obj: Any) -> str:
    """The snapshot's signature text for one public object."""
    if inspect.isclass(obj) and issubclass(obj, enum.Enum):
        return "enum(" + ", ".join(obj.__members__) + ")"  # how Python builds an enum varies by version
    if inspect.isclass(obj):
        return "class" + _class_signature(obj)
    if inspect.isroutine(obj) or isinstance(obj, types.MethodType):
        try:
            return "def" + _params(inspect.signature(obj))
        except (TypeError, ValueError):
            return "def(?)"
    if type(obj).__module__ in ("typing", "typing_extensions") or isinstance(obj, getattr(types, "UnionType", ())):
        return "alias " + _ADDRESS.sub("", repr(obj))
    if isinstance(obj, types.ModuleType):
        return "module"
    return type(obj).__name__


# ----------------------------------------------------------------------------- snapshot


def collect() -> Dict[str, Any]:
    """Import every public module with the extras blocked; its snapshot lines and problems."""
    # As in an install without the extras: `import ray` raises ModuleNotFoundError and
    # importlib.util.find_spec("faiss") returns None (what a None entry in sys.modules does).
    for name in [m for m in sys.modules if m.split(".")[0] in EXTRAS]:
        del sys.modules[name]  # imported before the block (by sitecustomize, a .pth file ...)
    for name in EXTRAS:
        sys.modules[name] = None  # type: ignore[assignment]
    modules, packages = discover()
    lines: List[str] = []
    problems: List[str] = []
    for module in modules:
        if module in EXCLUDED:
            continue
        try:
            mod = importlib.import_module(module)
        except Exception as e:  # noqa: BLE001 - reported, with the module
            problems.append(f"{module}: cannot be imported without the optional extras: {type(e).__name__}: {e}")
            continue
        names = getattr(mod, "__all__", None)
        if names is None:
            problems.append(f"{module}: public package without __all__")
            continue
        names = list(names)
        dups = sorted({n for n in names if names.count(n) > 1})
        if dups:
            problems.append(f"{module}: __all__ lists {', '.join(dups)} more than once")
        lines.append(f"{module} (module)")
        for name in sorted(set(names)):
            if not isinstance(name, str):
                problems.append(f"{module}: __all__ holds a non-string {name!r}")
                continue
            try:
                obj = getattr(mod, name)
            except Exception as e:  # noqa: BLE001
                problems.append(f"{module}: __all__ names {name!r}, which does not exist ({type(e).__name__}: {e})")
                continue
            lines.append(f"{module}:{name} {describe(obj)}")
    for module in DOCUMENTED:
        if module not in modules:
            problems.append(f"{module}: documented as public but defines no __all__ (or is missing)")
    for module in EXCLUDED:
        if module not in modules:
            problems.append(f"{module}: in EXCLUDED but not a public module (remove it from EXCLUDED)")
    return {"lines": sorted(lines, key=_sort_key), "problems": problems, "modules": modules, "packages": packages}


def _sort_key(line: str) -> Tuple[str, str]:
    head = line.split(" ", 1)[0]
    module, _, name = head.partition(":")
    return module, name


def render_snapshot(lines: List[str]) -> str:
    header = [
        "# streamcl's public API: `module:name signature`, one line per name in each public module's __all__.",
        "# Generated by `python tests/test_public_api.py --update`; checked by tests/test_public_api.py.",
        "# Removing or renaming a name, or changing a signature, is a deliberate change: note it in CHANGELOG.md.",
    ]
    return "\n".join(header + lines) + "\n"


def read_snapshot() -> List[str]:
    if not SNAPSHOT.exists():
        return []
    text = SNAPSHOT.read_text(encoding="utf-8").splitlines()
    return [line for line in text if line.strip() and not line.startswith("#")]


def _split(lines: List[str]) -> Dict[str, str]:
    out = {}
    for line in lines:
        key, _, sig = line.partition(" ")
        out[key] = sig
    return out


def difference(expected: List[str], actual: List[str]) -> str:
    """'' when equal; else the removed / changed / added lines, breaking ones first."""
    old, new = _split(expected), _split(actual)
    removed = [f"  - {k} {old[k]}" for k in old if k not in new]
    changed = [f"  - {k} {old[k]}\n  + {k} {new[k]}" for k in old if k in new and old[k] != new[k]]
    added = [f"  + {k} {new[k]}" for k in new if k not in old]
    if not (removed or changed or added):
        return ""
    parts = [UPDATE_HINT + "."]
    if not SNAPSHOT.exists():
        parts.append(f"{SNAPSHOT.name} is missing.")
    if removed:
        parts.append(f"Removed ({len(removed)}; breaking for users who import them):\n" + "\n".join(removed))
    if changed:
        parts.append(f"Signature changed ({len(changed)}; may break callers):\n" + "\n".join(changed))
    if added:
        parts.append(f"Added ({len(added)}):\n" + "\n".join(added))
    return "\n".join(parts)


# ----------------------------------------------------------------------------- tests


def _current() -> Dict[str, Any]:
    """``collect()`` run in a fresh interpreter (the extras blocked there only)."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"collecting the public API failed:\n{proc.stderr[-4000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


try:
    import pytest
except ImportError:  # the --update entry point runs without pytest
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="module")
    def current():
        return _current()

    def test_public_modules_import_and_all_is_sound(current):
        """Each public module imports without extras; its __all__ exists, names real objects, once each."""
        assert not current["problems"], "\n".join(current["problems"])

    def test_every_public_package_is_covered(current):
        assert current["packages"], "no packages found under streamcl/"
        missing = [p for p in current["packages"] if p not in current["modules"] or p in EXCLUDED]
        assert not missing, f"public packages not checked: {missing}"

    def test_public_api_matches_snapshot(current):
        diff = difference(read_snapshot(), current["lines"])
        assert not diff, diff

    def test_difference_separates_removals_from_additions():
        old = ["m (module)", "m:a def(x)", "m:b def()", "m:c class()"]
        new = ["m (module)", "m:a def(x, y=1)", "m:c class()", "m:d def()"]
        text = difference(old, new)
        assert UPDATE_HINT in text
        assert text.index("Removed") < text.index("Signature changed") < text.index("Added")
        assert "  - m:b def()" in text and "  + m:d def()" in text and "  + m:a def(x, y=1)" in text
        assert difference(old, old) == ""

    def test_describe_is_stable():
        def f(a, b: int = 2, *args, c=frozenset({"z", "y"}), d=object, **kw) -> int:
            return 0

        class C:
            def __init__(self, x, *, y=None):
                pass

        class E(Exception):
            pass

        assert describe(f) == "def(a, b=2, *args, c=frozenset({'y', 'z'}), d=builtins.object, **kw)"
        assert describe(C) == "class(x, *, y=None)"
        assert describe(E) == "class(<inherited from builtins: Exception.__init__>)"
        class Colour(enum.Enum):
            RED = 1
            BLUE = 2

        class Pair(NamedTuple):
            x: int
            y: str = "a"

        assert describe(Colour) == "enum(RED, BLUE)"
        assert describe(Pair) == "class(x, y='a')"
        assert describe((1, 2)) == "tuple"
        assert describe(Dict[str, int]) == "alias typing.Dict[str, int]"


if __name__ == "__main__":
    if "--json" in sys.argv[1:]:
        print(json.dumps(collect()))
    elif "--update" in sys.argv[1:]:
        result = collect()
        if result["problems"]:
            sys.exit("not updated, fix these first:\n" + "\n".join(result["problems"]))
        before = read_snapshot()
        SNAPSHOT.write_text(render_snapshot(result["lines"]), encoding="utf-8")
        diff = difference(before, result["lines"])
        print(diff.split("\n", 1)[1] if diff else "no change", file=sys.stderr)
        print(f"wrote {SNAPSHOT} ({len(result['lines'])} lines, {len(result['modules'])} modules)", file=sys.stderr)
    else:
        sys.exit("usage: python tests/test_public_api.py --update   (or run it with pytest)")
