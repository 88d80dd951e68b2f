"""The experiment: a composed document validated into cells (the grid) and run ids.

:func:`load_experiment` is the whole pipeline: read the file and its includes
(:mod:`~streamcl.config.read`, :mod:`~streamcl.config.compose`), apply ``-o`` overrides,
expand ``${VAR}``, then :func:`validate`: import the user's ``imports:``, check every
key (:mod:`~streamcl.config.schema`) and expand ``benchmarks:`` x ``methods:`` into
:class:`Cell` s, each with a plain-dict config that :mod:`streamcl.build` turns into
Avalanche objects. A ``sweep:`` section (:mod:`~streamcl.config.sweep`) multiplies every
cell by the cartesian product of its values, naming the cells ``<cell>-lr0.01-...``.

A cell config holds ``name, benchmark, model, strategy, plugins, evaluation, device,
num_workers`` always, and ``seed``, ``class_order_seed``, ``imports`` only when the file
sets them (so that the digests of existing runs do not change; a sweep adds no key either:
its values sit where their paths point, and in :attr:`Cell.sweep`); see
:func:`~streamcl.config.schema.check_seeds` and :func:`~streamcl.config.schema.check_device`.
Likewise ``evaluation.offline`` is there only when the file sets it: the file names a method
label, each cell's config holds the name of the offline cell of its own benchmark
(:func:`resolve_offline`). The ``reference:`` section (a paper's published numbers,
:mod:`~streamcl.config.reference`) is in no cell config: it is :attr:`Experiment.reference`.
"""

from __future__ import annotations

import collections
import contextlib
import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from streamcl.config.cell import Cell
from streamcl.config.compose import Origins, apply_override, deep_merge, expand_env, load_document
from streamcl.config.reference import check_reference
from streamcl.config.schema import (
    MAX_CELLS,
    METHOD_KEYS,
    TOP_KEYS,
    Checker,
    check_device,
    check_evaluation,
    check_imports,
    check_label,
    check_plugins,
    check_runs,
    check_seeds,
    check_strategy,
)
from streamcl.config.sweep import (
    MAX_CELL_NAME,
    SweptOrigins,
    apply_axes,
    apply_sweep_override,
    cell_suffix,
    check_overrides_against_sweep,
    check_sweep,
    combinations,
    n_combinations,
    swept_values,
)
from streamcl.config.text import KeyPath
from streamcl.errors import ConfigError
from streamcl.registry import BENCHMARKS, MODELS


@dataclass
class Experiment:
    """A validated experiment file: its cells (grid) and run ids."""

    name: str
    file: Path
    runs: List[int]
    cells: List[Cell]
    output_dir: Path
    pretrain: Optional[Dict[str, Any]] = None
    threads: Optional[int] = None  # torch intra-op threads per run; None: the available cores
    launcher: Dict[str, Any] = field(default_factory=lambda: {"name": "local"})  # where units run
    # The validated ``reference:`` section (streamcl.config.reference); None when the file has none.
    reference: Optional[Dict[str, Any]] = None

    @property
    def root(self) -> Path:
        """``<output_dir>/<name>``: where the runs and summary tables go."""
        return self.output_dir / self.name


def _method_label(cfg: Dict[str, Any]) -> str:
    """``naive+crumb``: a cell's default name (a ``package.module:Name`` contributes ``Name``)."""
    parts = [cfg["strategy"]["name"]] + [p["name"] for p in cfg["plugins"]]
    return "+".join(p.rpartition(":")[2] for p in parts)


@contextlib.contextmanager
def _context(kind: str, label: Optional[str]) -> Iterator[None]:
    """Name the method (benchmark) a swept cell failed in: every sweep key applies to every one of them."""
    try:
        yield
    except ConfigError as e:
        if label is None:
            raise
        raise ConfigError(f"{e.detail} (in {kind} '{label}'; a sweep key applies to every {kind})",
                          file=e.file, key=e.key) from None


def validate(doc: Dict[str, Any], origins: Origins, file: Path, cli_launcher: Optional[str] = None) -> Experiment:
    """Check a merged document and expand its grid into cells."""
    from streamcl.registry import load_all

    load_all()
    home = file.resolve().parent if file.is_file() else None
    c = Checker(origins, home)
    doc = dict(c.mapping((), doc))
    c.keys((), doc, TOP_KEYS, required=("name", "model", "strategy"))
    imports = check_imports(c, doc.get("imports"))  # first: what they register is checked below
    name = check_label(c, ("name",), doc["name"])
    if "benchmark" in doc and "benchmarks" in doc:
        c.fail(("benchmarks",), "give either 'benchmark' (one) or 'benchmarks' (a grid axis), not both")
    if "benchmark" not in doc and "benchmarks" not in doc:
        c.fail((), "missing required key 'benchmark' (or 'benchmarks' for a grid)")
    runs = check_runs(c, doc.get("runs", [0]))
    seeds = check_seeds(c, doc, runs)
    device = check_device(c, doc.get("device", "cpu"))
    num_workers = c.typed(("num_workers",), doc.get("num_workers", 0), int)
    if num_workers < 0:
        c.fail(("num_workers",), f"must be >= 0 (data-loading worker processes; 0 loads in the main one), "
                                 f"got {num_workers}")
    output_dir = c.typed(("output_dir",), doc.get("output_dir", "runs"), str)
    threads = c.typed(("threads",), doc.get("threads"), Optional[int])
    if threads is not None and not 1 <= threads <= 1024:
        c.fail(("threads",), f"must be between 1 and 1024 (torch intra-op threads per run), got {threads}; "
                             "leave it out to use the cores available")
    c.typed(("description",), doc.get("description", ""), str)

    axes = check_sweep(c, doc.get("sweep"))
    bench_axes = [i for i, a in enumerate(axes) if a.root == "benchmark"]
    method_axes = [i for i, a in enumerate(axes) if a.root != "benchmark"]

    if "benchmarks" in doc:
        bench_axis = c.mapping(("benchmarks",), doc["benchmarks"])
        if not bench_axis:
            c.fail(("benchmarks",), "must name at least one benchmark")
        bench_raw = {}
        for label, b in bench_axis.items():
            check_label(c, ("benchmarks", label), label)
            bench_raw[label] = (("benchmarks", label), b)
    else:
        bench_raw = {None: (("benchmark",), doc["benchmark"])}
    n_methods = len(doc["methods"]) if isinstance(doc.get("methods"), dict) else 1
    n_cells = n_methods * len(bench_raw) * n_combinations(axes)
    if axes and n_cells > MAX_CELLS:  # before validating a benchmark per combination
        c.fail(("sweep",), f"the grid has {n_cells} cells (benchmarks x methods x every combination of the sweep "
                           f"values); at most {MAX_CELLS} (streamcl's limit): sweep fewer values or split the file")
    # Each benchmark once per combination of the benchmark axes (once without them).
    benches: Dict[Any, Dict[Tuple[int, ...], Dict[str, Any]]] = {}
    for label, (bpath, b) in bench_raw.items():
        benches[label] = {}
        for sub in combinations([axes[i] for i in bench_axes]):
            if not sub:
                benches[label][sub] = c.component(bpath, b, BENCHMARKS)
                continue
            with _context("benchmark", label):
                swept, where = apply_axes(c, {"benchmark": b}, [axes[i] for i in bench_axes], sub, bpath, drop=1)
                benches[label][sub] = Checker(SweptOrigins(origins, where), home).component(
                    bpath, swept["benchmark"], BENCHMARKS)

    methods_raw = c.mapping(("methods",), doc["methods"]) if "methods" in doc else {None: {}}
    if not methods_raw:
        c.fail(("methods",), "must name at least one method")
    base = {k: doc[k] for k in ("model", "strategy", "plugins") if k in doc}
    evaluation = check_evaluation(c, ("evaluation",), doc.get("evaluation"))
    if len(methods_raw) * len(benches) > MAX_CELLS:
        c.fail(("methods",), f"the grid has {len(methods_raw) * len(benches)} cells (benchmarks x methods); "
                             f"at most {MAX_CELLS} (streamcl's limit): split it into several files")

    cells: List[Cell] = []
    grid: Dict[Tuple[Any, Any, Tuple[int, ...]], Cell] = {}  # (method label, benchmark label, sweep choice) -> cell
    for m_label, override in methods_raw.items():
        mpath: KeyPath = ("methods", m_label)
        if m_label is not None:
            check_label(c, mpath, m_label)
            override = c.mapping(mpath, override or {})
            c.keys(mpath, override, METHOD_KEYS)
        merged = deep_merge(base, {k: v for k, v in override.items() if k != "description"})
        m_origins = origins.rebased(mpath) if m_label is not None else origins
        # The method's model, strategy and plugins once per combination of the other axes (once without them).
        variants: Dict[Tuple[int, ...], Tuple[Dict[str, Any], Dict[str, Any], List[Dict[str, Any]]]] = {}
        for sub in combinations([axes[i] for i in method_axes]):
            mc, part = Checker(m_origins, home), merged
            with _context("method", m_label if sub else None):
                if sub:
                    part, where = apply_axes(c, merged, [axes[i] for i in method_axes], sub)
                    mc = Checker(SweptOrigins(m_origins, where), home)
                model = mc.component(("model",), part["model"], MODELS)
                strategy = check_strategy(mc, ("strategy",), part["strategy"])
                plugins = check_plugins(mc, ("plugins",), part.get("plugins"))
            variants[sub] = (model, strategy, plugins)
        for b_label, bench_variants in benches.items():
            for choice in combinations(axes):
                model, strategy, plugins = variants[tuple(choice[i] for i in method_axes)]
                cfg = {
                    "name": name,
                    "benchmark": bench_variants[tuple(choice[i] for i in bench_axes)],
                    "model": model,
                    "strategy": strategy,
                    "plugins": plugins,
                    "evaluation": evaluation,
                    "device": device,
                    "num_workers": num_workers,
                    **seeds,
                }
                if imports:
                    cfg["imports"] = list(imports)
                label = m_label or _method_label(cfg)
                cell_name = (f"{b_label}-{label}" if b_label else label) + cell_suffix(axes, choice)
                if axes and len(cell_name) > MAX_CELL_NAME:
                    c.fail(("sweep",), f"cell name '{cell_name[:60]}...' is {len(cell_name)} characters long; at "
                                       f"most {MAX_CELL_NAME} (it names a folder): sweep shorter values or fewer keys")
                cells.append(Cell(cell_name, copy.deepcopy(cfg), swept_values(axes, choice)))
                grid[(m_label, b_label, tuple(choice))] = cells[-1]
    names = [cell.name for cell in cells]
    dup = {n for n, k in collections.Counter(names).items() if k > 1}
    if dup:
        c.fail(("methods",), f"two grid cells share the name {sorted(dup)}; give the methods distinct labels")
    if "offline" in evaluation:
        resolve_offline(c, ("evaluation", "offline"), evaluation["offline"], grid)
    reference = None
    if doc.get("reference") is not None:
        reference = check_reference(c, ("reference",), doc["reference"], cells)

    from streamcl.config.launcher import check_launcher

    launcher = check_launcher(c, ("launcher",), doc.get("launcher"), cli_launcher)
    exp = Experiment(name=name, file=file, runs=runs, cells=cells, output_dir=Path(output_dir), threads=threads,
                     launcher=launcher, reference=reference)
    if doc.get("pretrain") is not None:
        from streamcl.config.pretrain import attach_pretrained, check_pretrain

        exp.pretrain = check_pretrain(c, ("pretrain",), doc["pretrain"])
        attach_pretrained(exp)
    return exp


def first_difference(a: Any, b: Any, path: KeyPath = ()) -> Optional[KeyPath]:
    """The first key path (in ``a``'s key order) where two configs differ; None when equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in [*a, *(k for k in b if k not in a)]:
            if k not in a or k not in b:
                return path + (k,)
            d = first_difference(a[k], b[k], path + (k,))
            if d is not None:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list):
        for i, (x, y) in enumerate(zip(a, b)):
            d = first_difference(x, y, path + (i,))
            if d is not None:
                return d
        return None if len(a) == len(b) else path + (min(len(a), len(b)),)
    return None if type(a) is type(b) and a == b else path


def resolve_offline(c: Checker, path: KeyPath, label: str,
                    grid: Dict[Tuple[Any, Any, Tuple[int, ...]], Cell]) -> None:
    """Write ``evaluation.offline: <cell name>`` into every cell: the ``label`` method's cell of its benchmark.

    ``grid`` maps (method label, benchmark label, sweep choice) to the cells. Omega_all divides a
    cell's accuracy by the offline learner's on the same classes in the same order, so the offline
    cell is the one with the same benchmark (label and swept values) and the same method sweep
    values, and its benchmark config must equal the cell's.
    """
    labels = sorted({str(m) for m, _, _ in grid if m is not None})
    if label not in labels:
        if not labels:
            c.fail(path, f"names method '{label}', but the file has no 'methods:' section; add the offline learner "
                         "(e.g. a cell with strategy cumulative or joint_training) under methods: and name its label")
        c.unknown(path, label, labels, what="method")
    for (_, b_label, choice), cell in grid.items():
        offline = grid[(label, b_label, choice)]
        diff = first_difference(cell.config["benchmark"], offline.config["benchmark"], ("benchmark",))
        if diff is not None:
            from streamcl.config.text import fmt_path

            c.fail(path, f"offline cell '{offline.name}' has a different benchmark from cell '{cell.name}' at "
                         f"{fmt_path(diff)}; Omega_all needs the offline learner on the same classes in the same "
                         "order: give them the same benchmark")
        cell.config["evaluation"] = dict(cell.config["evaluation"], offline=offline.name)


def load_experiment(path: Union[str, Path], overrides: Sequence[str] = (), launcher: Optional[str] = None) -> Experiment:
    """Read, merge, override and validate an experiment file (raises ConfigError on any problem).

    ``launcher``: a ``--launcher`` name from the command line, replacing the file's ``launcher:``."""
    path = Path(path)
    doc, origins = load_document(path)
    for item in overrides:
        if not apply_sweep_override(doc, origins, item):  # -o sweep.<key>=[...] replaces one axis
            apply_override(doc, origins, item)
    check_overrides_against_sweep(doc, overrides)  # -o <key>=v on a swept key: refused, the sweep would win
    doc = expand_env(doc, origins)
    return validate(doc, origins, path, launcher)
