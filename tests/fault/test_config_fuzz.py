"""Seeded config fuzzer: mutated copies of every shipped experiment YAML through ``streamcl run --dry-run``.

Each case copies ``experiments/`` into a fresh folder, mutates one file (or adds one
``-o`` override) with ``random.Random(seed)``, and runs ``streamcl.cli.main`` in-process
(a subprocess would pay Avalanche's import every time). Whatever the mutation, the
command must exit 0 (a valid experiment) or 2 with exactly one stderr line starting
``streamcl: error: `` and no traceback, write nothing (no output folder, no dataset, no
file anywhere under the case folder), and finish within seconds.

Mutations: delete a key, rename a key (typo), replace a value by a wrong-typed,
out-of-range, huge, NaN, negative, empty or null one (in the file or as ``-o``),
duplicate a key, deep nesting, alias bombs, self-referencing aliases, binary garbage,
truncation, stray unicode, unset/empty ``${VAR}``.

Reproduce one case: ``python tests/fault/test_config_fuzz.py SEED`` writes it to a
temporary folder and prints the command line.
"""

from __future__ import annotations

import math
import random
import shutil
import signal
import sys
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
EXPERIMENTS = ROOT / "experiments"
FILES = sorted(str(p.relative_to(EXPERIMENTS)) for p in EXPERIMENTS.rglob("*.yaml"))

# The paper files name the user's local copies; STREAMCL_DATA is pointed into the case folder.
PLACEHOLDERS = {v: "/data/placeholder" for v in
                ("SQUEEZENET_WEIGHTS", "TOYBOX_ROOT", "CORE50_ROOT", "ILAB_ROOT", "ICUB_ROOT")}
UNSET_VAR, EMPTY_VAR = "STREAMCL_FUZZ_UNSET", "STREAMCL_FUZZ_EMPTY"

CASE_SECONDS = 5.0  # each case must finish within this (a hang is cut at 3x by SIGALRM)
DEFAULT_SEEDS = range(150)
SLOW_SEEDS = range(1000, 1400)


def _includes(rel: str) -> List[str]:
    doc = yaml.safe_load((EXPERIMENTS / rel).read_text()) or {}
    inc = doc.get("include", []) if isinstance(doc, dict) else []
    inc = [inc] if isinstance(inc, str) else inc
    return [str(Path(rel).parent / i) for i in inc]


INCLUDED_BY = {f: [g for g in FILES if f in _includes(g)] for f in FILES}
ENTRY_FILES = [f for f in FILES if not INCLUDED_BY[f]]  # files one runs (the others are pulled in)


# --------------------------------------------------------------------------- mutations


def _bad_values(rng: random.Random) -> Any:
    """A wrong-typed, out-of-range, huge, NaN, negative, empty or null value."""
    pool: List[Callable[[], Any]] = [
        lambda: -1, lambda: 0, lambda: -0.5, lambda: -(10**9), lambda: 10**20, lambda: 99999999999999999999,
        lambda: 2**63, lambda: 1e308, lambda: math.nan, lambda: math.inf, lambda: -math.inf, lambda: "",
        lambda: None, lambda: True, lambda: False, lambda: [], lambda: {}, lambda: "x" * 5000,
        lambda: [1, "a", None], lambda: {"a": {"b": 1}}, lambda: 1.5, lambda: "🙂\u2028x", lambda: "nan",
        lambda: "-1", lambda: "1e999", lambda: f"${{{UNSET_VAR}}}", lambda: f"${{{EMPTY_VAR}}}",
        lambda: list(range(3000)), lambda: "../../../../etc", lambda: "\x00", lambda: {"bytes": math.inf},
        lambda: {"items": -3}, lambda: [[[[[]]]]], lambda: rng.randint(-(2**40), 2**40),
        lambda: rng.uniform(-1e6, 1e6),
    ]
    return rng.choice(pool)()


BAD_TEXTS = [
    "-1", "0", ".nan", ".inf", "-.inf", "1e999", "99999999999999999999", "null", "''", "[]", "{}", "true",
    "[" * 300 + "]" * 300, "&x [*x]", "{a: 1, a: 2}", "!!python/object/apply:os.system [ls]", "[1, 2",
    "${" + UNSET_VAR + "}", "${" + EMPTY_VAR + "}", "x" * 3000, "🙂", "{bytes: .inf}", "[-1]",
]


def _paths(doc: Any) -> List[Tuple[Any, ...]]:
    """Every key path of a parsed document (iterative: documents may be deep)."""
    out: List[Tuple[Any, ...]] = []
    todo: List[Tuple[Tuple[Any, ...], Any]] = [((), doc)]
    while todo:
        path, node = todo.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for k, v in items:
            out.append(path + (k,))
            todo.append((path + (k,), v))
    return sorted(out, key=repr)


def _parent(doc: Any, path: Tuple[Any, ...]) -> Any:
    for p in path[:-1]:
        doc = doc[p]
    return doc


def _typo(rng: random.Random, key: str) -> str:
    if not key:
        return "x"
    i = rng.randrange(len(key))
    op = rng.randrange(4)
    if op == 0:
        return key[:i] + key[i + 1:] or "x"
    if op == 1:
        return key[:i] + rng.choice("abcdefghijklmnopqrstuvwxyz_") + key[i:]
    if op == 2 and len(key) > 1:
        j = min(i + 1, len(key) - 1)
        return key[:i] + key[j] + key[i] + key[j + 1:]
    return key.upper() if op == 3 else key + "s"


def _dotted(path: Tuple[Any, ...]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out


def _mutate_doc(rng: random.Random, text: str, kind: str) -> Tuple[Optional[str], str]:
    """A structural mutation of a parsed file: (new text or None when not applicable, description)."""
    doc = yaml.safe_load(text)
    paths = _paths(doc)
    if not paths:
        return None, "empty document"
    path = rng.choice(paths)
    parent = _parent(doc, path)
    if kind == "delete_key":
        del parent[path[-1]]
        what = f"delete {_dotted(path)}"
    elif kind == "rename_key":
        if not isinstance(path[-1], str):
            return None, "not a key"
        new = _typo(rng, path[-1])
        parent[new] = parent.pop(path[-1])
        what = f"rename {_dotted(path)} -> {new!r}"
    else:  # bad_value
        value = _bad_values(rng)
        parent[path[-1]] = value
        what = f"set {_dotted(path)} = {repr(value)[:60]}"
    return yaml.safe_dump(doc, allow_unicode=True, sort_keys=False), what


def _alias_bomb(rng: random.Random) -> str:
    width, levels = rng.randint(3, 12), rng.randint(6, 40)
    lines = [f"lol0: &lol0 [{', '.join(['lol'] * width)}]"]
    lines += [f"lol{i}: &lol{i} [{', '.join([f'*lol{i - 1}'] * width)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


def _mutate_text(rng: random.Random, text: str, kind: str) -> Tuple[Optional[bytes], str]:
    """A textual mutation: (new bytes or None when not applicable, description)."""
    lines = text.splitlines(keepends=True)
    if kind == "duplicate_key":
        keyed = [i for i, ln in enumerate(lines) if ":" in ln and not ln.lstrip().startswith(("#", "-"))]
        if not keyed:
            return None, "no key line"
        i = rng.choice(keyed)
        lines.insert(i + 1, lines[i] if lines[i].endswith("\n") else lines[i] + "\n")
        return "".join(lines).encode(), f"duplicate line {i + 1}: {lines[i].strip()[:50]!r}"
    if kind == "deep_nesting":
        n = rng.choice([63, 64, 65, 100, 999, 1000, 5000])
        if rng.random() < 0.5:
            extra = "deep: " + "[" * n + "]" * n + "\n"
        else:
            extra = "".join(" " * i + f"d{i}:\n" for i in range(n)) + " " * n + "x: 1\n"
        return (text.rstrip("\n") + "\n" + extra).encode(), f"append {n}-level nesting"
    if kind == "alias_bomb":
        return (text.rstrip("\n") + "\n" + _alias_bomb(rng)).encode(), "append an alias bomb"
    if kind == "self_alias":
        extra = rng.choice(["loop: &x [*x]\n", "loop: &x {a: [1, *x]}\n", "loop: &x\n  a: *x\n"])
        return (text.rstrip("\n") + "\n" + extra).encode(), f"append {extra.strip()!r}"
    raw = text.encode()
    if kind == "binary_garbage":
        start = rng.randrange(len(raw) + 1)
        junk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
        if rng.random() < 0.3:
            junk = b"\xed\xa0\x80" + junk  # an encoded surrogate: never valid UTF-8
        return raw[:start] + junk + raw[start + rng.randint(0, 32):], f"garbage at byte {start}"
    if kind == "truncate":
        cut = rng.randrange(len(raw) + 1)
        return raw[:cut], f"truncate at byte {cut}"
    if kind == "unicode":
        chars = ["\u2028", "\x85", "\ufeff", "é", "🙂", "\u202e", "\t", "\x00", "а", "\r", "\x1b[31m", "\u0301",
                 "\uffff", "\U0010ffff"]
        out = text
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(len(out) + 1)
            out = out[:i] + rng.choice(chars) + out[i:]
        return out.encode("utf-8", "surrogatepass"), "insert unicode"
    if kind == "env":
        ref = rng.choice([f"${{{UNSET_VAR}}}", f"${{{EMPTY_VAR}}}", f"${{{EMPTY_VAR}:-}}", "${", "${1BAD}"])
        doc = yaml.safe_load(text)
        paths = [p for p in _paths(doc) if not isinstance(_parent(doc, p)[p[-1]], (dict, list))]
        if not paths:
            return None, "no scalar"
        path = rng.choice(paths)
        _parent(doc, path)[path[-1]] = ref
        return yaml.safe_dump(doc, allow_unicode=True).encode(), f"set {_dotted(path)} = {ref}"
    raise AssertionError(kind)


DOC_KINDS = ("delete_key", "rename_key", "bad_value")
TEXT_KINDS = ("duplicate_key", "deep_nesting", "alias_bomb", "self_alias", "binary_garbage", "truncate", "unicode",
              "env")
KINDS = DOC_KINDS * 3 + ("override", "override") + TEXT_KINDS  # value mutations are the most common mistake


@dataclass
class Case:
    seed: int
    target: str  # the mutated file (relative to experiments/)
    entry: str  # the file `streamcl run` is given
    kind: str
    what: str
    overrides: List[str] = field(default_factory=list)

    def __str__(self) -> str:
        extra = "".join(f" -o {o!r}" for o in self.overrides[1:])
        return f"seed {self.seed}: {self.kind} in {self.target} ({self.what}); run {self.entry}{extra}"


def make_case(seed: int, folder: Path) -> Case:
    """Copy experiments/ under ``folder`` and mutate it as ``seed`` says (deterministic)."""
    rng = random.Random(seed)
    shutil.copytree(EXPERIMENTS, folder / "experiments")
    target = rng.choice(FILES)
    entry = target if target in ENTRY_FILES else rng.choice(INCLUDED_BY[target])
    overrides = [f"output_dir={folder / 'out'}"]
    path = folder / "experiments" / target
    text = path.read_text()
    for _ in range(10):  # a few mutations do not apply to every file: draw again
        kind = rng.choice(KINDS)
        if kind == "override":
            doc = yaml.safe_load((folder / "experiments" / entry).read_text())
            paths = _paths(doc) or [("name",)]
            key = _dotted(rng.choice(paths)) if rng.random() < 0.8 else rng.choice(
                ["nope.deeper", "a..b", "[0]", "strategy.optimizer.lr[3]", "runs[9]", "x" * 200, "é"])
            value = rng.choice(BAD_TEXTS) if rng.random() < 0.8 else repr(_bad_values(rng))
            overrides.append(f"{key}={value}")
            return Case(seed, entry, entry, kind, f"-o {key}={value[:40]}", overrides)
        if kind in DOC_KINDS:
            new, what = _mutate_doc(rng, text, kind)
            if new is not None:
                path.write_text(new, encoding="utf-8")
                return Case(seed, target, entry, kind, what, overrides)
        else:
            data, what = _mutate_text(rng, text, kind)
            if data is not None:
                path.write_bytes(data)
                return Case(seed, target, entry, kind, what, overrides)
    raise AssertionError(f"seed {seed}: no mutation applied")


# --------------------------------------------------------------------------- running


class _Hang(Exception):
    pass


def _snapshot(folder: Path) -> Dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime for p in folder.rglob("*")}


def run_case(seed: int, folder: Path, capsys) -> Tuple[Case, str, Optional[str]]:
    """(case, outcome "exit 0" | "exit 2", failure description or None)."""
    from streamcl import cli

    case = make_case(seed, folder)
    before = _snapshot(folder)
    args = ["run", str(folder / "experiments" / case.entry), "--dry-run"]
    for o in case.overrides:
        args += ["-o", o]
    capsys.readouterr()

    def on_alarm(signum, frame):
        raise _Hang()

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(int(3 * CASE_SECONDS))
    start = time.perf_counter()
    try:
        rc: Any = cli.main(args)
    except _Hang:
        rc = "hang"
    except BaseException as e:  # noqa: B036 - a crash of any kind is what the fuzzer looks for
        tb = traceback.extract_tb(e.__traceback__)[-1]
        rc = f"crash {type(e).__name__}: {str(e)[:120]} at {Path(tb.filename).name}:{tb.lineno}"
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    elapsed = time.perf_counter() - start
    out = capsys.readouterr()
    # (Lines of Python warnings, e.g. qpsolvers' on Avalanche's import, are issue 8 item 9's: ignored here.)
    lines = [ln for ln in out.err.splitlines()
             if ln.strip() and "Warning" not in ln and not ln.strip().startswith("warnings.warn(")]
    outcome = f"exit {rc}" if rc in (0, 2) else "failure"
    problems = []
    if rc not in (0, 2):
        problems.append(str(rc))
    if rc == 2 and (len(lines) != 1 or not lines[0].startswith("streamcl: error: ")):
        problems.append(f"stderr is not one 'streamcl: error:' line: {out.err[-300:]!r}")
    if rc == 0 and lines:
        problems.append(f"exit 0 with stderr {out.err[-300:]!r}")
    if "Traceback" in out.err:
        problems.append("traceback on stderr")
    if elapsed > CASE_SECONDS:
        problems.append(f"took {elapsed:.1f} s")
    after = _snapshot(folder)
    if after != before or (folder / "out").exists():
        changed = sorted(set(after) ^ set(before)) + [k for k in before if k in after and after[k] != before[k]]
        problems.append(f"wrote {changed[:5]}")
    return case, outcome, ("; ".join(problems) if problems else None)


def fuzz(seeds, tmp_path: Path, capsys, monkeypatch) -> None:
    from streamcl.registry import load_all

    load_all()  # Avalanche's import (seconds) is not part of any case's time
    for var, value in PLACEHOLDERS.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setenv(EMPTY_VAR, "")
    monkeypatch.delenv(UNSET_VAR, raising=False)
    monkeypatch.delenv("CRUMB_PRETRAINED", raising=False)
    counts: Counter = Counter()
    by_kind: Dict[str, Counter] = {}
    failures = []
    for seed in seeds:
        folder = tmp_path / f"case{seed}"
        folder.mkdir()
        monkeypatch.setenv("STREAMCL_DATA", str(folder / "data"))
        monkeypatch.chdir(folder)  # (relative defaults like runs/ or .cache/ would land in the case folder)
        case, outcome, problem = run_case(seed, folder, capsys)
        monkeypatch.chdir(tmp_path)
        counts[outcome] += 1
        by_kind.setdefault(case.kind, Counter())[outcome] += 1
        if problem:
            failures.append(f"{case}: {problem}")
        shutil.rmtree(folder, ignore_errors=True)
    with capsys.disabled():
        kinds = ", ".join(f"{k} {dict(c)}" for k, c in sorted(by_kind.items()))
        print(f"\nconfig fuzz: {sum(counts.values())} cases: {dict(sorted(counts.items()))}; by mutation: {kinds}")
    assert not failures, f"{len(failures)} of {len(seeds)} fuzz cases failed:\n" + "\n".join(failures)


def test_unmutated_files_pass(tmp_path, capsys, monkeypatch):
    """The baseline: every shipped entry file passes --dry-run in the fuzz environment, writing nothing."""
    from streamcl import cli

    for var, value in PLACEHOLDERS.items():
        monkeypatch.setenv(var, value)
    monkeypatch.setenv("STREAMCL_DATA", str(tmp_path / "data"))
    monkeypatch.chdir(tmp_path)
    shutil.copytree(EXPERIMENTS, tmp_path / "experiments")
    before = _snapshot(tmp_path)
    for entry in ENTRY_FILES:
        capsys.readouterr()
        rc = cli.main(["run", str(tmp_path / "experiments" / entry), "--dry-run", "-o", f"output_dir={tmp_path}/out"])
        assert rc == 0, (entry, capsys.readouterr().err)
    assert _snapshot(tmp_path) == before


def test_config_fuzz(tmp_path, capsys, monkeypatch):
    fuzz(DEFAULT_SEEDS, tmp_path, capsys, monkeypatch)


@pytest.mark.slow
def test_config_fuzz_more(tmp_path, capsys, monkeypatch):
    fuzz(SLOW_SEEDS, tmp_path, capsys, monkeypatch)


def test_mutations_are_seeded(tmp_path):
    a, b = make_case(7, tmp_path / "a"), make_case(7, tmp_path / "b")
    assert (a.kind, a.what, a.target, a.overrides[1:]) == (b.kind, b.what, b.target, b.overrides[1:])
    assert (tmp_path / "a/experiments" / a.target).read_bytes() == (tmp_path / "b/experiments" / b.target).read_bytes()
    assert (tmp_path / "a/experiments" / a.target).read_bytes() != (EXPERIMENTS / a.target).read_bytes() \
        or a.kind == "override"


if __name__ == "__main__":  # python tests/fault/test_config_fuzz.py SEED: write one case and show its command
    import tempfile

    seed = int(sys.argv[1])
    folder = Path(tempfile.mkdtemp(prefix=f"streamcl-fuzz-{seed}-"))
    case = make_case(seed, folder)
    env = " ".join(f"{k}={v}" for k, v in {**PLACEHOLDERS, EMPTY_VAR: "''"}.items())
    print(case)
    print(f"{env} streamcl run {folder / 'experiments' / case.entry} --dry-run"
          + "".join(f" -o '{o}'" for o in case.overrides))
    sys.exit(0)
