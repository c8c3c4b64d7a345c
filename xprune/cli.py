"""The ``xprune`` command line.

Exit codes: 0 success, 2 usage or input error (one line on stderr; the
traceback only with ``--debug``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

# Each command imports what it needs inside its function, for start-up speed
# only: `xprune list` or `--help` need not load pandas, matplotlib or the
# reproductions. The cli is the top layer, so these hide no import cycle
# (tests/test_architecture.py walks function-level imports too).

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
  xprune run --seeds 0,1,2            three training seeds, mean ± std across them
  xprune run --executor ray --address ray://head:10001   cells as tasks on a Ray cluster
  xprune run --dense dense.safetensors --sparse pruned.safetensors \
             --factory xprune.models:DigitsCNN   compare a pair pruned elsewhere
"""

COMPARE_EXAMPLES = """examples:
  xprune compare dense.safetensors sparse.safetensors
  xprune compare dense.safetensors sparse.safetensors --metrics spearman,ssim --out /tmp/cmp
"""

SCORE_EXAMPLES = """examples:
  xprune score maps.safetensors --checkpoint model.safetensors \
               --factory xprune.models:DigitsCNN
  xprune score maps.safetensors --checkpoint model.safetensors \
               --factory xprune.models:DigitsCNN --metrics deletion_auc,max_sensitivity
"""


def _parser() -> argparse.ArgumentParser:
    from ._version import __version__

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
    run.add_argument("--seeds", metavar="S1,S2,...",
                     help="run once per training seed and summarise across seeds")
    run.add_argument("--jobs", type=int, default=1, metavar="N",
                     help="score grid cells in N processes (same results for any N)")
    run.add_argument("--executor", choices=("local", "ray"), default="local",
                     help="where grid cells run: this machine (default) or a Ray cluster")
    run.add_argument("--address", help="Ray cluster address (default: start a local Ray, or "
                                       "use RAY_ADDRESS)")
    report = sub.add_parser("report", help="re-render a run folder's report", parents=[common])
    report.add_argument("run_dir", nargs="+",
                        help="a folder written by `xprune run`; several: one report that puts "
                             "their architectures side by side (--out)")
    report.add_argument("--out", help="folder of the side-by-side report (several runs)")
    sub.add_parser("list", help="list registered methods and metrics", parents=[common])
    compare = sub.add_parser(
        "compare", help="agreement metrics of two saved attribution files", parents=[common],
        epilog=COMPARE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    compare.add_argument("a", help="reference attribution file (xprune.save_attributions)")
    compare.add_argument("b", help="attribution file of the same inputs")
    compare.add_argument("--metrics", help="comma-separated agreement metrics (default: all)")
    compare.add_argument("--no-foreground", action="store_true",
                         help="skip the scores over the features where the input is nonzero")
    compare.add_argument("--out", default="reports/compare",
                         help="folder for compare.csv and compare.png (default: %(default)s)")
    score = sub.add_parser(
        "score", help="faithfulness/complexity/stability scores of a model's saved maps",
        parents=[common], epilog=SCORE_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    score.add_argument("attributions", help="attribution file (xprune.save_attributions)")
    score.add_argument("--checkpoint", required=True, help="the model's weights")
    score.add_argument("--factory", required=True,
                       help="model factory 'package.module:function' building the architecture")
    score.add_argument("--kwargs", default="{}", metavar="JSON",
                       help='keyword arguments of the factory, e.g. \'{"n_features": 30}\'')
    score.add_argument("--metrics", help="comma-separated metrics (default: every complexity "
                                         "and faithfulness metric that applies; the ERASER "
                                         "ones for token ids only)")
    score.add_argument("--seed", type=int, default=0, help="seed of the metrics' random draws")
    score.add_argument("--out", default="reports/score",
                       help="folder for score.csv (default: %(default)s)")
    return parser


def _run(args) -> int:
    import dataclasses
    from pathlib import Path

    from .analysis import run_analysis
    from .config import load_config
    from .reproductions import is_reproduction

    if is_reproduction(args.config):
        return _run_reproduction(args)
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
    seeds = config.seeds
    if args.seeds:
        try:
            seeds = [int(s) for s in args.seeds.split(",")]
        except ValueError:
            raise ValueError(f"Expected --seeds as comma-separated integers, got "
                             f"{args.seeds!r}.") from None
    if seeds:
        from .analysis import run_seeds

        report = run_seeds(config, seeds, out_dir=args.out, progress=not args.quiet,
                           use_cache=not args.no_cache, jobs=args.jobs,
                           executor=args.executor, address=args.address)
        print(f"Report written to {report}")
        return 0
    result = run_analysis(config, out_dir=args.out, progress=not args.quiet,
                          use_cache=not args.no_cache, jobs=args.jobs,
                          executor=args.executor, address=args.address)
    print(f"Report written to {result.report}")
    return 0


def _run_reproduction(args) -> int:
    from .reproductions import load_reproduction, run_reproduction

    unused = [flag for flag, value in (("--factory", args.factory), ("--dense", args.dense),
                                       ("--sparse", args.sparse), ("--seeds", args.seeds),
                                       ("--jobs", args.jobs != 1),
                                       ("--executor", args.executor != "local"),
                                       ("--address", args.address)) if value]
    if unused:
        raise ValueError(f"{args.config} is a reproduction config: it takes --out, --seed, "
                         f"--device, --no-cache and --quiet, not {', '.join(unused)}.")
    config = load_reproduction(args.config)
    changes = {k: v for k, v in (("seed", args.seed), ("device", args.device)) if v is not None}
    config = config.replace(**changes) if changes else config
    report = run_reproduction(config, out_dir=args.out, progress=not args.quiet,
                              use_cache=not args.no_cache)
    print(f"Report written to {report}")
    return 0


def _list(_args) -> int:
    from . import ATTRIBUTION_METHODS, PRUNING_METHODS
    from .metrics import ALIASES, METRICS

    print("pruning methods:")
    for name, m in PRUNING_METHODS.items():
        needs = " [needs data]" if m.needs_data else ""
        print(f"  {name:24s} {m.description}{needs}")
    print("attribution methods:")
    for name, m in ATTRIBUTION_METHODS.items():
        print(f"  {name:24s} {m.description}")
    print("metrics:")
    for name, m in METRICS.items():
        better = "higher" if m.higher_is_better else "lower"
        print(f"  {name:24s} {m.category}, {better} is better; {m.reference}")
    print("metric aliases (names from Quantus, Captum and the papers; accepted wherever a "
          "metric is named):")
    for alias, name in sorted(ALIASES.items()):
        print(f"  {alias:32s} -> {name}")
    from .reproductions import REPRODUCTIONS, _load_all

    _load_all()
    print("reproductions (configs under analyses/repro-*.toml):")
    for name, r in REPRODUCTIONS.items():
        print(f"  {name:24s} {r.citation}")
    return 0


def _report(args) -> int:
    from .report import render_report

    if len(args.run_dir) == 1:
        print(f"Report written to {render_report(args.run_dir[0])}")
        return 0
    from pathlib import Path

    from .report.side_by_side import architecture_label, render_side_by_side

    if not args.out:
        raise ValueError("Expected --out, the folder of the side-by-side report of several "
                         "runs.")
    runs = {}
    for run in args.run_dir:
        label = architecture_label(Path(run))
        runs[label if label not in runs else f"{label} ({run})"] = Path(run)
    for run in runs.values():
        if not (run / "summary.csv").exists():
            render_report(run)
    print(f"Report written to {render_side_by_side(args.out, runs)}")
    return 0


def _print_summary(summary) -> None:
    from .report.tables import fmt_ci

    width = max(len(m) for m in summary["metric"])
    for row in summary.itertuples(index=False):
        print(f"  {row.metric:{width}s}  {fmt_ci(row.mean, row.ci_low, row.ci_high)}"
              f"  (n={row.n}, {row.better or '-'} is better)")


def _metric_list(text: str | None) -> list[str] | None:
    return None if text is None else [m.strip() for m in text.split(",") if m.strip()]


def _compare(args) -> int:
    from pathlib import Path

    from ._io import atomic_write_text
    from .checkpoint import load_attributions
    from .compare import compare_attributions, summarise
    from .report.figures import figure_png, plot_score_distributions

    a, b = load_attributions(args.a), load_attributions(args.b)
    if a.method != b.method:
        print(f"xprune: warning: comparing {a.method} maps with {b.method} maps",
              file=sys.stderr)
    scores = compare_attributions(a, b, metrics=_metric_list(args.metrics),
                                  foreground=not args.no_foreground)
    out = Path(args.out)
    atomic_write_text(out / "compare.csv", scores.to_csv(index=False, na_rep="NaN"))
    from ._io import atomic_write_bytes

    atomic_write_bytes(out / "compare.png", figure_png(plot_score_distributions(
        scores, title=f"{a.model_tag or Path(args.a).stem} vs {b.model_tag or Path(args.b).stem}"
    ).figure))
    print(f"{a.method} maps of {len(a)} inputs, {Path(args.a).name} vs {Path(args.b).name}: "
          "mean [95% CI]")
    _print_summary(summarise(scores))
    print(f"Per-sample scores: {out / 'compare.csv'}; figure: {out / 'compare.png'}")
    return 0


def _score(args) -> int:
    import json
    from pathlib import Path

    from ._io import atomic_write_text
    from .checkpoint import load_attributions, load_model
    from .compare import score_attributions, summarise
    from .config import ModelConfig
    from .models import predict

    a = load_attributions(args.attributions)
    try:
        kwargs = json.loads(args.kwargs)
    except json.JSONDecodeError as exc:
        raise ValueError(f"Expected --kwargs as a JSON object, got {args.kwargs!r}: {exc}"
                         ) from None
    config = ModelConfig(factory=args.factory, kwargs=kwargs)
    factory = config.resolve()
    model = load_model(args.checkpoint, lambda: factory(**config.kwargs))
    if a.predictions is not None:
        agree = predict(model, a.inputs).argmax(dim=1) == a.predictions
        if not bool(agree.all()):
            print(f"xprune: warning: this model's predictions differ from those stored with the "
                  f"maps on {int((~agree).sum())} of {len(a)} inputs: were the maps made by "
                  f"another model (tag {a.model_tag!r})?", file=sys.stderr)
    scores = score_attributions(model, a, metrics=_metric_list(args.metrics), seed=args.seed)
    out = Path(args.out)
    atomic_write_text(out / "score.csv", scores.to_csv(index=False, na_rep="NaN"))
    print(f"{a.method} maps of {len(a)} inputs scored on {Path(args.checkpoint).name}: "
          "mean [95% CI]")
    _print_summary(summarise(scores))
    print(f"Per-sample scores: {out / 'score.csv'}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``xprune`` console script; returns the exit code."""
    args = _parser().parse_args(argv)
    handler = {"run": _run, "list": _list, "report": _report, "compare": _compare,
               "score": _score}[args.command]
    try:
        return handler(args)
    except KeyboardInterrupt:
        if getattr(args, "debug", False):
            raise
        print("xprune: interrupted; run the same command again to resume from the finished "
              "work", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, KeyError, RuntimeError) as exc:
        if getattr(args, "debug", False):
            raise
        print(f"xprune: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
