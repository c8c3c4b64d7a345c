"""Wall time of one 24-cell digits sweep run three ways: local with 1 and 2 processes, and
as Ray tasks on a local 2-CPU Ray instance. Prints a table and the SHA-256 of each
results.csv (identical by design).

    python benchmarks/executors.py [--out /tmp/xprune-executors]

Cells: (dense + 10 sparsities + the other-seed control) x (Saliency, Integrated Gradients).
Training, pruning and attribution run in the driver in every mode and are cached before
the timed runs, so the times compare the scoring of the cells.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import time
from pathlib import Path

from xprune.analysis import run_analysis
from xprune.config import AnalysisConfig

SWEEP = {
    "name": "executors",
    "pruning": {"sparsities": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95],
                "finetune_epochs": 2},
    "controls": {"other_seed": True, "finetune": False},
    "attribution": {"methods": ["saliency", "integrated_gradients"], "n_samples": 256},
    "metrics": {"names": ["gini_index", "deletion_auc", "insertion_auc",
                          "faithfulness_correlation", "max_sensitivity", "avg_sensitivity",
                          "spearman", "kendall_tau", "ssim"]},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/xprune-executors")
    args = parser.parse_args()
    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    config = AnalysisConfig.from_dict(SWEEP)
    # models and maps once (cached); each timed run then scores all 24 cells afresh
    warm = out / "warm"
    run_analysis(config, out_dir=warm, progress=False, render=False)
    cache = next((warm / ".cache").iterdir())

    def fresh(name: str) -> Path:
        run = out / name
        (run / ".cache" / cache.name).mkdir(parents=True)
        for f in cache.iterdir():
            if not f.name.startswith(("cell-", "curve-")):
                shutil.copy2(f, run / ".cache" / cache.name / f.name)
        return run

    rows = []
    modes = [("local, --jobs 1", {"jobs": 1}), ("local, --jobs 2", {"jobs": 2}),
             ("Ray, 2 workers", {"executor": "ray"})]
    for label, kwargs in modes:
        if kwargs.get("executor") == "ray":
            import ray

            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        run = fresh(label.split(",")[0].lower().replace(" ", "") + str(len(rows)))
        t0 = time.perf_counter()
        run_analysis(config, out_dir=run, progress=False, render=False, **kwargs)
        seconds = time.perf_counter() - t0
        digest = hashlib.sha256((run / "results.csv").read_bytes()).hexdigest()[:16]
        rows.append((label, seconds, digest))
        if kwargs.get("executor") == "ray":
            ray.shutdown()
    print("| executor | wall s (24 cells) | results.csv SHA-256 (first 16) |")
    print("|---|---|---|")
    for label, seconds, digest in rows:
        print(f"| {label} | {seconds:.1f} | `{digest}` |")
    print(f"\nidentical results: {len({d for _, _, d in rows}) == 1}")


if __name__ == "__main__":
    main()
