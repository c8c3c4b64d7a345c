"""The ``xprune`` command line.

Exit codes: 0 success, 2 usage or input error (one line on stderr; the
traceback only with ``--debug``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]

EXAMPLES = """examples:
  xprune run                          the default digits analysis -> reports/digits/
  xprune run analyses/digits-full.toml
  xprune report reports/digits        re-render a run's report from its stored results
  xprune list                         registered pruning methods, attribution methods, metrics
"""

RUN_EXAMPLES = """examples:
  xprune run                          the embedded digits analysis (analyses/digits.toml)
  xprune run analyses/digits-full.toml
  xprune run --out /tmp/run --seed 1  another folder and seed
  xprune run --jobs 2                 score grid cells in two processes
  xprune run --dense dense.safetensors --sparse pruned.safetensors \
             --factory xprune.models:DigitsCNN   compare a pair pruned elsewhere
"""


def _parser() -> argparse.ArgumentParser:
    from . import __version__

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of an error (exit code 1)")
    parser = argparse.ArgumentParser(
        prog="xprune", description="Measure how pruning changes a model's explanations.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[common])
    parser.add_argument("--version", action="version", version=f"xprune {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run an analysis and write its report", parents=[common],
                         epilog=RUN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("config", nargs="?",
                     help="analysis config file (TOML); default: the embedded digits analysis, "
                          "as spelled out in analyses/digits.toml")
    run.add_argument("--out", help="run folder (default: reports/<analysis name>)")
    run.add_argument("--seed", type=int, help="override the config's seed")
    run.add_argument("--device", help="override the config's device, e.g. cuda")
    run.add_argument("--factory", help="model factory 'package.module:function' for checkpoints")
    run.add_argument("--dense", metavar="PATH",
                     help="load the dense model from this checkpoint instead of training it")
    run.add_argument("--sparse", metavar="PATH", action="append",
                     help="compare this pruned checkpoint (repeatable); nothing is pruned")
    run.add_argument("--no-cache", action="store_true",
                     help="recompute everything instead of reusing finished work")
    run.add_argument("--quiet", action="store_true", help="no progress output")
    run.add_argument("--jobs", type=int, default=1, metavar="N",
                     help="score grid cells in N processes (same results for any N)")
    report = sub.add_parser("report", help="re-render a run folder's report", parents=[common])
    report.add_argument("run_dir", help="a folder written by `xprune run`")
    sub.add_parser("list", help="list registered methods and metrics", parents=[common])
    return parser


def _run(args) -> int:
    import dataclasses
    from pathlib import Path

    from .analysis import run_analysis
    from .config import load_config

    config = load_config(args.config)
    changes = {k: v for k, v in (("seed", args.seed), ("device", args.device)) if v is not None}
    if args.factory or args.dense:
        model = config.model
        changes["model"] = dataclasses.replace(
            model, factory=args.factory or model.factory,
            checkpoint=str(Path(args.dense).resolve()) if args.dense else model.checkpoint)
    if args.sparse:
        changes["pruning"] = dataclasses.replace(
            config.pruning, checkpoints=tuple(str(Path(p).resolve()) for p in args.sparse))
    config = config.replace(**changes) if changes else config
    result = run_analysis(config, out_dir=args.out, progress=not args.quiet,
                          use_cache=not args.no_cache, jobs=args.jobs)
    print(f"Report written to {result.report}")
    return 0


def _list(_args) -> int:
    from . import ATTRIBUTION_METHODS, PRUNING_METHODS
    from .metrics import METRICS

    print("pruning methods:")
    for name, m in PRUNING_METHODS.items():
        print(f"  {name:24s} {m.description}")
    print("attribution methods:")
    for name, m in ATTRIBUTION_METHODS.items():
        print(f"  {name:24s} {m.description}")
    print("metrics:")
    for name, m in METRICS.items():
        better = "higher" if m.higher_is_better else "lower"
        print(f"  {name:24s} {m.category}, {better} is better; {m.reference}")
    return 0


def _report(args) -> int:
    from .report import render_report

    print(f"Report written to {render_report(args.run_dir)}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``xprune`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    handler = {"run": _run, "list": _list, "report": _report}[args.command]
    try:
        return handler(args)
    except (ValueError, TypeError, OSError, KeyError, RuntimeError) as exc:
        if getattr(args, "debug", False):
            raise
        print(f"xprune: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
