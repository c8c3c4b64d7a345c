"""CPU latency of structurally pruned digits CNNs against the dense model, on the same batch.

Usage: python benchmarks/structured_latency.py [--batch 256] [--device cpu]

For each weight sparsity, prunes whole channels (xprune's "structured" method, physical
removal through Torch-Pruning) and reports the median forward latency
(torch.utils.benchmark, after warm-up) as a ratio to the dense model's, with the MAC
ratio beside it. An unstructured (masked) model at the same sparsity is timed too: its
zeros do not make dense kernels faster.
"""

from __future__ import annotations

import argparse

import torch

import xprune
from xprune.data import load_digits_split
from xprune.models import DigitsCNN, train
from xprune.profiling import count_macs, measure_latency


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    data = load_digits_split(seed=0)
    torch.manual_seed(0)
    dense = DigitsCNN()
    train(dense, data.x_train, data.y_train, epochs=20, seed=0)
    dense.to(args.device)
    x = data.x_test[: args.batch].repeat(1 + args.batch // len(data.x_test), 1, 1, 1)
    x = x[: args.batch].to(args.device)
    reference = (data.x_train[:256], data.y_train[:256])
    base = measure_latency(dense, x, min_run_time=1.0)
    base_macs = count_macs(dense, x)["dense"]
    print(f"batch {base['batch_size']}, {base['threads']} threads, {base['dtype']}, "
          f"{base['device']}; dense median {base['latency_ms']:.3f} ms, {base_macs:,} MACs\n")
    print("| sparsity | model | measured sparsity | latency ms | latency ratio | MAC ratio |")
    print("|---:|---|---:|---:|---:|---:|")
    for amount in (0.5, 0.8, 0.9, 0.95):
        for method in ("structured", "l1_unstructured"):
            pair = xprune.prune(dense, amount, method=method, data=reference)
            lat = measure_latency(pair.sparse, x, min_run_time=1.0)
            macs = count_macs(pair.sparse, x)["nonzero"]
            print(f"| {amount} | {method} | {pair.sparsity:.3f} | {lat['latency_ms']:.3f} | "
                  f"{lat['latency_ms'] / base['latency_ms']:.2f} | {macs / base_macs:.2f} |")


if __name__ == "__main__":
    main()
