"""Peak memory of Integrated Gradients on a text encoder, with and without the byte budget.

Case ../shared/cases/013-embedding-ig-memory.md: IG with 50 steps on 256
sequences of 128 tokens through a 6-layer, 384-wide encoder. Each setting runs
in its own process (peak resident memory is per process), on a BERT built
from a local config with random weights (nothing is downloaded), and prints
the peak resident memory above the process's memory before the call, the wall
time and the largest difference between the maps of the two settings.

    python benchmarks/attribution_memory.py                  # the case's size (minutes)
    python benchmarks/attribution_memory.py --n 8 --tokens 64 --steps 20 --layers 2 \
        --hidden 128 --budget 16777216                       # seconds, a 16 MiB budget

Not run by the tests. Measured on 2 shared CPU cores (torch 2.13), ``--n 2 --tokens 128
--steps 50`` (100 sequences through the 6-layer, 384-wide encoder, 18.4 MiB of activations a
row, so 55 rows a pass under 1 GiB): peak 1,198 MiB above the start with the default budget
(29 s), 2,147 MiB with rows bounded only by ``max_rows`` (37 s); the maps agree to 1.3e-10.
The peak exceeds the budget by the backward pass's own temporaries; the budget bounds the
activations, and with them the peak, whatever N and ``n_steps`` are.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(args: argparse.Namespace) -> None:
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    from xprune.attribution import attribute

    torch.manual_seed(0)
    config = BertConfig(vocab_size=1000, hidden_size=args.hidden, num_hidden_layers=args.layers,
                        num_attention_heads=max(1, args.hidden // 64),
                        intermediate_size=4 * args.hidden, num_labels=2)
    model = BertForSequenceClassification(config).eval()
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 1000, (args.n, args.tokens), generator=gen)
    mask = torch.ones_like(ids)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    start = time.perf_counter()
    a = attribute(model, {"input_ids": ids, "attention_mask": mask}, 1, "integrated_gradients",
                  params={"n_steps": args.steps}, max_bytes=args.max_bytes,
                  max_rows=args.max_rows)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    torch.save(a.values, args.out)
    print(json.dumps({"max_bytes": args.max_bytes, "max_rows": args.max_rows,
                      "seconds": round(seconds, 1),
                      "peak_above_start_mib": round((peak - before) / 1024, 1)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--budget", type=int, default=2**30,
                        help="max_bytes of the budgeted run (default 1 GiB, xprune's default)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--max-bytes", type=int, default=2**30)
    parser.add_argument("--max-rows", type=int, default=4096)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    import torch

    size = ["--n", str(args.n), "--tokens", str(args.tokens), "--steps", str(args.steps),
            "--layers", str(args.layers), "--hidden", str(args.hidden)]
    settings = {f"budget {args.budget / 2**20:g} MiB": ["--max-bytes", str(args.budget)],
                "rows only (no byte budget)": ["--max-bytes", str(2**62)]}
    maps = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in settings.items():
            out = str(Path(tmp) / f"{len(maps)}.pt")
            result = subprocess.run([sys.executable, __file__, "--child", *size, *extra,
                                     "--out", out], capture_output=True, text=True, check=True)
            print(f"{name}: {result.stdout.strip()}")
            maps[name] = torch.load(out)
    first, second = maps.values()
    print(f"largest difference between the maps: {float((first - second).abs().max()):.3g}")


if __name__ == "__main__":
    main()
