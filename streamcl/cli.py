"""``streamcl`` command line: run | status | prepare | list | report.

User mistakes (bad YAML, missing dataset, unreadable checkpoint) raise
:class:`~streamcl.errors.StreamclError`; they are printed as one line on stderr
with exit code 2 and no traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import List, Optional

from streamcl.errors import StreamclError


def _cmd_run(args: argparse.Namespace) -> int:
    from streamcl.config import load_experiment
    from streamcl.units import parse_selectors, select_units

    exp = load_experiment(args.file, args.override, launcher=args.launcher)
    units = select_units(exp, parse_selectors(args.only)) if args.only else None
    if args.dry_run:
        print(f"{exp.name}: {len(exp.cells)} cell(s) x {len(exp.runs)} run(s) -> {exp.root}")
        for cell in exp.cells:
            print(f"  {cell.name}")
        if units is not None:
            print(f"selected {len(units)} unit(s): " + ", ".join(f"{u.cell} run{u.run}" for u in units))
        return 0
    from streamcl.distributed import is_main_process
    from streamcl.launchers import returns_before_done
    from streamcl.runner import run_experiment

    root = run_experiment(exp, restart=args.restart, progress=not args.quiet, verbose=args.verbose, units=units)
    if not is_main_process():  # under torchrun: rank 0 prints the results
        return 0
    if returns_before_done(exp):  # submitted: the last unit to finish writes the summary
        print(f"\nSubmitted; follow it with: streamcl status {root}")
        return 0
    print(f"\nResults: {root}\n")
    print((root / "summary.md").read_text())
    hint = _tensorboard_hint(exp, root)
    if hint:
        print(hint)
    return 0


def _tensorboard_hint(exp, root) -> Optional[str]:
    """``tensorboard --logdir ROOT``, when a cell logs to TensorBoard and event files are there to show."""
    cells = [c.name for c in exp.cells if "tensorboard" in c.config["evaluation"]["loggers"]]
    if any(next((root / name).rglob("*tfevents*"), None) is not None for name in cells):
        return f"TensorBoard: tensorboard --logdir {root}"
    return None


def _cmd_list(args: argparse.Namespace) -> int:
    from streamcl.registry import REGISTRIES, load_all

    load_all()
    kinds = [args.kind] if args.kind else list(REGISTRIES)
    for kind in kinds:
        reg = REGISTRIES[kind]
        print("strategies:" if kind == "strategy" else f"{kind}s:")
        for e in reg:
            origin = "" if e.origin == "streamcl" else f" [{e.origin}]"
            print(f"  {e.name:<28}{e.description.replace('``', '`')}{origin}")
        print()
    from streamcl.metrics import LOGGER_NAMES, METRIC_NAMES

    if not args.kind:
        print("evaluation metrics: " + ", ".join(METRIC_NAMES))
        print("evaluation loggers: " + ", ".join(LOGGER_NAMES))
    return 0


def _cmd_prepare(args: argparse.Namespace) -> int:
    from streamcl.benchmarks.prepare import prepare

    out = prepare(args.name, args.raw_root, args.out, workers=args.workers, progress=not args.quiet, seed=args.seed,
                  verbose=True)
    print(f"index written to {out}")
    if args.cache is not None:  # then every indexed frame, decoded once at the network's size
        from streamcl.benchmarks.frame_cache import cache_nbytes, write_frame_cache

        res = write_frame_cache(out, args.cache, workers=args.workers, progress=not args.quiet)
        what = "already complete" if res.decoded == 0 else (
            f"resumed at frame {res.resumed_from}" if res.resumed_from else "written")
        print(f"frame cache {res.path} ({res.n} frames at {res.size} px, "
              f"{cache_nbytes(res.n, res.size) / 1e9:.2f} GB) {what}")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    if args.published and args.run_dirs:
        raise StreamclError(f"report: --published lists YAML files' references and takes no run folders; drop "
                            f"{' '.join(args.run_dirs)} or --published")
    if args.published:
        from streamcl.references import published_references, published_table
        from streamcl.tables import render, to_csv

        table = published_table(published_references(args.published))
        print(to_csv(table) if args.format == "csv" else render([table], args.format), end="")
        return 0
    if not args.run_dirs:
        raise StreamclError("report: pass run folders (e.g. runs/demo), or --published YAML files or folders")
    from streamcl.report import make_report

    out = make_report(args.run_dirs, args.out, fmt=args.format, baseline=args.baseline)
    if args.format != "csv":
        print((out / ("report.tex" if args.format == "latex" else "report.md")).read_text(encoding="utf-8"))
    print(f"report written to {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from streamcl import __version__
    from streamcl.registry import REGISTRIES

    p = argparse.ArgumentParser(prog="streamcl", description="Stream-learning benchmarks for Avalanche.")
    p.add_argument("--version", action="version", version=f"streamcl {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="run an experiment YAML (resumes interrupted runs)")
    r.add_argument("file", help="experiment YAML, e.g. experiments/demo.yaml")
    r.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key, e.g. -o strategy.optimizer.lr=0.01 -o runs=[0]")
    r.add_argument("--restart", action="store_true", help="discard earlier results of these cells and start over")
    r.add_argument("--dry-run", action="store_true", help="validate the file and list its cells, run nothing")
    r.add_argument("--only", action="append", default=[], metavar="SELECTOR",
                   help="only these units, e.g. --only cell=crumb*,run=0-2 (globs; several flags: OR)")
    r.add_argument("--launcher", default=None, choices=("local", "ray", "slurm"),
                   help="where the units run (default: the file's `launcher:`, else local); see docs/cluster.md")
    r.add_argument("-q", "--quiet", action="store_true", help="print only the final table (and errors)")
    r.add_argument("-v", "--verbose", action="store_true",
                   help="Avalanche's interactive logger: every metric after every evaluation")
    r.set_defaults(func=_cmd_run)

    pr = sub.add_parser("prepare", help="index a raw dataset download (Toybox: extract frames)")
    pr.add_argument("name", help="toybox | ilab2mlight | core50 | icubworld")
    pr.add_argument("raw_root", help="folder of the raw download")
    pr.add_argument("--out", default=None, help="where to write the index (and Toybox frames)")
    pr.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2)), help="parallel workers")
    pr.add_argument("--seed", type=int, default=0, help="seed of the balancing (iLab's random runs)")
    pr.add_argument("-q", "--quiet", action="store_true", help="no progress bars (the counts are still printed)")
    pr.add_argument("--cache", type=int, default=None, metavar="SIZE",
                    help="also decode every frame once at SIZE px into a uint8 frame cache (e.g. 224; "
                         "N*SIZE*SIZE*3 bytes) read by benchmarks with `cache: true`")
    pr.set_defaults(func=_cmd_prepare)

    ls = sub.add_parser("list", help="list benchmarks, models, strategies, plugins, optimizers, schedulers")
    ls.add_argument("kind", nargs="?", choices=list(REGISTRIES), help="only this kind")
    ls.set_defaults(func=_cmd_list)

    from streamcl.status import add_status_parser

    add_status_parser(sub)

    rp = sub.add_parser("report", help="plots and tables from finished runs")
    rp.add_argument("run_dirs", nargs="*", help="experiment, cell or run folders (e.g. runs/demo)")
    rp.add_argument("--out", default=None, help="output folder (default: FIRST_RUN_DIR/report)")
    rp.add_argument("--format", default="md", choices=("md", "latex", "csv"),
                    help="tables as Markdown (report.md), LaTeX booktabs (report.tex) or CSV (report_*.csv)")
    rp.add_argument("--baseline", default=None, metavar="CELL",
                    help="paired differences of every cell against this one (default: every pair)")
    rp.add_argument("--published", nargs="+", default=None, metavar="YAML",
                    help="print the published targets of these experiment YAMLs (or folders of them); no runs needed")
    rp.set_defaults(func=_cmd_report)
    return p


def _quiet_library_warnings() -> None:
    """Hide the DeprecationWarnings that Avalanche raises from its own code paths (not actionable by a user).

    Avalanche's ``@deprecated`` decorator re-installs a "once" filter on every call, so a
    filter cannot silence it; the CLI drops those warnings where they are shown instead.
    """
    shown = warnings.showwarning
    if getattr(shown, "streamcl_filter", False):  # already installed (main() called again in-process)
        return
    marker = f"{os.sep}avalanche{os.sep}"

    def showwarning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, DeprecationWarning) and marker in str(filename):
            return
        shown(message, category, filename, lineno, file, line)

    showwarning.streamcl_filter = True  # type: ignore[attr-defined]
    warnings.showwarning = showwarning


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_library_warnings()
    try:
        return int(args.func(args) or 0)
    except StreamclError as e:
        print(f"streamcl: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # output piped into `head` & co.: stop quietly, like other CLI tools
        sys.stderr.close()
        return 0
    except OSError as e:  # unwritable output folder, full disk ...: the path and the reason, no traceback
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"streamcl: error: {where}{e.strerror or e}; check the path and its permissions "
              "(or choose another output_dir / --out)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("streamcl: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
