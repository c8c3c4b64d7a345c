"""Peak memory and time of data-driven structured pruning on a small ResNet (issue 23).

A ResNet for 3x32x32 images (three stages of two basic blocks, 16/32/64
channels, 175k parameters, random weights: the criterion's cost does not depend
on training), structured pruning to 50% weight sparsity with a data-driven
criterion over N reference images. Each run is its own process, so its peak
resident memory (``ru_maxrss``) is its own; the peak above the process's memory
before the call is printed with the wall time.

    python benchmarks/pruning_memory.py                       # IG criterion, N = 256
    python benchmarks/pruning_memory.py --criterion taylor --n 512

Not run by the tests.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from torch import nn


class Block(nn.Module):
    """A basic residual block: conv-BN-ReLU-conv-BN plus the (projected) input, ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.short = (nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False),
                                    nn.BatchNorm2d(c_out))
                      if stride != 1 or c_in != c_out else nn.Identity())
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu1(self.bn1(self.conv1(x)))))
        return self.relu2(out + self.short(x))


class SmallResNet(nn.Module):
    """ResNet-14 for (N, 3, 32, 32) images: 16/32/64 channels, two blocks a stage."""

    def __init__(self, n_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.relu = nn.ReLU()
        self.layers = nn.Sequential(Block(16, 16, 1), Block(16, 16, 1), Block(16, 32, 2),
                                    Block(32, 32, 1), Block(32, 64, 2), Block(64, 64, 1))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.relu(self.bn(self.stem(x))))
        return self.fc(self.pool(x).flatten(1))


def child(args: argparse.Namespace) -> None:
    import xprune

    torch.manual_seed(0)
    model = SmallResNet().eval()
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(args.n, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (args.n,), generator=gen)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    pair = xprune.prune(model, 0.5, method="structured", data=(x, y),
                        options={"criterion": args.criterion})
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"criterion": args.criterion, "n": args.n,
                      "parameters": sum(p.numel() for p in model.parameters()),
                      "sparsity": round(pair.sparsity, 3), "seconds": round(seconds, 1),
                      "peak_rss_mib": round(peak), "peak_above_start_mib": round(peak - before)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--criterion", default="integrated_gradients")
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    out = subprocess.run([sys.executable, __file__, "--child", "--criterion", args.criterion,
                          "--n", str(args.n)], check=True, capture_output=True, text=True)
    print(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
