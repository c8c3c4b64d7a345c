"""Deletion AUC with default settings on 32 images of 3x32x32 through a small ResNet (case 025).

../shared/cases/025-deletion-default-steps.md: a new user's `deletion_auc` with default
settings took 190 s on this work when it removed one feature per step. The default now
takes at most 64 steps (``DEFAULT_MAX_STEPS``); this script times it beside the exact
one-pixel-per-step curve (``steps=1024``) on the same model, images and Saliency maps,
in one run, and prints both AUCs' largest difference.

    python benchmarks/deletion_steps.py            # 32 images, best of 3

Not run by the tests (which check the default's steps and values: tests/
test_metrics_faithfulness_more.py::test_case_025_...).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pruning_memory import SmallResNet  # noqa: E402


def best_of(reps: int, fn) -> tuple[float, torch.Tensor]:
    times, out = [], None
    for _ in range(reps):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    import xprune
    from xprune import metrics as M
    from xprune.metrics.faithfulness import DEFAULT_MAX_STEPS

    torch.manual_seed(0)
    model = SmallResNet().eval()
    x = torch.rand(args.n, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    maps = xprune.attribute(model, x, "predicted", "saliency")
    default_s, default = best_of(args.reps, lambda: M.deletion_auc(model, x, maps, maps.targets))
    exact_s, exact = best_of(1, lambda: M.deletion_auc(model, x, maps, maps.targets,
                                                       steps=32 * 32))
    print(json.dumps({"images": args.n, "threads": torch.get_num_threads(),
                      "default_seconds": round(default_s, 2),
                      "default_steps": DEFAULT_MAX_STEPS,
                      "exact_seconds": round(exact_s, 2), "exact_steps": 1024,
                      "max_auc_difference": float((default - exact).abs().max())}))


if __name__ == "__main__":
    main()
