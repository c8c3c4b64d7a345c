"""Time every registered attribution method on 256 digits images, dense vs 90% sparse.

Usage: python benchmarks/attribution_methods.py [--device cpu] [--n 256]

Prints a Markdown table: seconds per method for the dense and the sparse model
(wall time of one ``xprune.attribute`` call after one warm-up call), and their ratio.
Unstructured sparsity keeps dense kernels, so the ratio is expected near 1.
"""

from __future__ import annotations

import argparse
import time

import torch

import xprune
from xprune.attribution import ATTRIBUTION_METHODS
from xprune.data import load_digits_split
from xprune.models import DigitsCNN, train

PARAMS = {"integrated_gradients": {"n_steps": 50}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n", type=int, default=256)
    args = parser.parse_args()
    data = load_digits_split(seed=0)
    torch.manual_seed(0)
    dense = DigitsCNN()
    train(dense, data.x_train, data.y_train, epochs=20, seed=0)
    pair = xprune.prune(dense, 0.9)
    dense, sparse = pair.dense.to(args.device), pair.sparse.to(args.device)
    x = data.x_test[: args.n]
    targets = xprune.attribution.resolve_targets(dense, x, "predicted")
    print(f"{args.n} digits images, device {args.device}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}\n")
    print("| method | parameters | dense s | sparse s | sparse / dense |")
    print("|---|---|---:|---:|---:|")
    for name, info in ATTRIBUTION_METHODS.items():
        if info.integer_inputs:
            continue
        params = PARAMS.get(name)
        times = []
        for model in (dense, sparse):
            xprune.attribute(model, x[:8], targets[:8], name, params=params)  # warm-up
            start = time.perf_counter()
            xprune.attribute(model, x, targets, name, params=params)
            times.append(time.perf_counter() - start)
        spec = xprune.attribution._methods.describe(
            xprune.attribution._methods.resolve_spec(name, params))
        shown = ", ".join(f"{k}={v}" for k, v in spec.items() if k in (
            "n_steps", "nt_samples", "n_samples", "window", "stride"))
        print(f"| {name} | {shown} | {times[0]:.3f} | {times[1]:.3f} | "
              f"{times[1] / times[0]:.2f} |")


if __name__ == "__main__":
    main()
