"""Time and peak memory of magnitude, Wanda and SparseGPT on a 6-layer, 384-wide encoder.

Usage: python benchmarks/pruning_methods.py [--threads 1] [--repeats 3]
           [--llmcompressor-python /tmp/llmc/bin/python] [--out benchmarks/pruning_methods.md]

The encoder is a BERT-style ``BertModel`` built from a config (6 layers, hidden
384, 6 heads, MLP 1536, BERT's 30,522-token vocabulary; nothing downloaded),
with 128 calibration sequences of 128 tokens, streamed as a DataLoader of
tokenizer-style mappings (``input_ids``, ``attention_mask``) in batches of
16. The 36 linear layers of the encoder (q, k, v, attention output,
intermediate, output of each block) are pruned to 50%, unstructured and
2:4; the embeddings and the pooler stay dense.

Each measurement runs in a fresh Python process (so one method's memory
cannot be counted against another): it builds the model and the data, then
times the pruning call (wall clock, best of ``--repeats``) and reads the
process's peak resident memory (``ru_maxrss``) before and after; "peak
above setup" is what the method added on top of the model and data.

References, on the same model, weights and calibration data:

* Wanda: ``torchao.sparsity.WandaSparsifier`` (prepare, the calibration
  pass, ``step``, ``squash_mask``) against ``xprune.prune(method="wanda")``.
  torchao compares scores across the whole layer, xprune per output row (the
  paper's choice); the work is the same (one calibration pass, a sort).
* SparseGPT: llm-compressor's own SparseGPT steps
  (``accumulate_hessian`` and ``sparsify_weight`` of
  ``llmcompressor.modifiers.pruning.sparsegpt.sgpt_sparsify``), called for
  every linear layer from hooks on one calibration pass over the dense
  model, exactly as xprune's pass; llm-compressor pins its own torch, so it
  runs in a separate virtual environment (``--llmcompressor-python``;
  ``pip install llmcompressor`` there). Its ``oneshot`` pipeline adds
  model tracing and layer-by-layer propagation that xprune does not do, so
  the comparison is of the algorithm's work. The child also returns one
  layer's pruned weight, compared with xprune's.

The results markdown goes to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

LAYERS, HIDDEN, HEADS, MLP, VOCAB = 6, 384, 6, 1536, 30522
N_SEQ, SEQ_LEN, BATCH = 128, 128, 16
HERE = Path(__file__).resolve().parent


def build_encoder(seed: int = 0):
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                        num_attention_heads=HEADS, intermediate_size=MLP,
                        max_position_embeddings=512)
    return BertModel(config).eval()


def calibration_ids(seed: int = 1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(1000, VOCAB, (N_SEQ, SEQ_LEN), generator=gen)


def loader(ids: torch.Tensor):
    from torch.utils.data import DataLoader, Dataset

    class Tokenized(Dataset):
        def __len__(self):
            return ids.shape[0]

        def __getitem__(self, i):
            return {"input_ids": ids[i], "attention_mask": torch.ones_like(ids[i])}

    return DataLoader(Tokenized(), batch_size=BATCH)


def linear_names(model) -> list[str]:
    return [n for n, m in model.named_modules()
            if isinstance(m, torch.nn.Linear) and n.startswith("encoder.")]


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def run_xprune(model, ids, method: str, n_m):
    import xprune

    kwargs = {"scope": "layer"} if method == "l1_unstructured" else {"data": loader(ids)}
    return xprune.prune(model, 0.5, method=method, n_m=n_m, layers="encoder.*",
                        exclude=["*pooler*"], **kwargs)


def run_torchao_wanda(model, ids, n_m):
    import copy

    from torchao.sparsity import WandaSparsifier

    model = copy.deepcopy(model)  # as xprune.prune does: the dense model stays
    sparsifier = WandaSparsifier(sparsity_level=0.5,
                                 semi_structured_block_size=None if n_m is None else n_m[1])
    sparsifier.prepare(model, config=[{"tensor_fqn": f"{n}.weight"}
                                      for n in linear_names(model)])
    with torch.no_grad():
        for batch in loader(ids):
            model(**batch)
    sparsifier.step()
    sparsifier.squash_mask()
    return model


def child(task: str, threads: int, repeats: int, state: str) -> dict:
    """One measurement in this (fresh) process."""
    import warnings

    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    import torchao.sparsity  # noqa: F401  imports before the clock and the memory baseline

    import xprune  # noqa: F401
    model = build_encoder()
    ids = calibration_ids()
    before = _peak_mib()
    method, _, pattern = task.partition(":")
    n_m = (2, 4) if pattern == "2:4" else None
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        if method == "torchao_wanda":
            out = run_torchao_wanda(model, ids, n_m)
        else:
            out = run_xprune(model, ids, method, n_m).sparse
        times.append(time.perf_counter() - start)
    result = {"task": task, "seconds": min(times), "all_seconds": times,
              "setup_peak_mib": before, "peak_mib": _peak_mib()}
    if state and method == "sparsegpt":
        weight = out.get_submodule("encoder.layer.0.attention.self.query").weight.detach()
        torch.save(weight if n_m is None else weight, state + f".{pattern}.xprune.pt")
    return result


def _spawn(args: list[str], python: str = sys.executable) -> dict:
    env = {**os.environ, "PYTHONPATH": str(HERE.parent)}
    out = subprocess.run([python, *args], capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fmt(r: dict) -> str:
    return (f"{r['seconds']:.2f} s | {r['peak_mib']:.0f} MiB | "
            f"{max(0.0, r['peak_mib'] - r['setup_peak_mib']):.0f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--llmcompressor-python", default="/tmp/llmc/bin/python")
    parser.add_argument("--out", default=str(HERE / "pruning_methods.md"))
    parser.add_argument("--only", default="", help="comma-separated tasks to rerun, e.g. "
                        "wanda:unstructured,torchao_wanda:unstructured (no markdown written)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--state", default="", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.threads, args.repeats, args.state)))
        return
    common = ["--threads", str(args.threads), "--repeats", str(args.repeats)]
    tmp = tempfile.mkdtemp(prefix="xprune-bench-")
    state = os.path.join(tmp, "state")
    torch.save({"model": build_encoder().state_dict(), "ids": calibration_ids()},
               state + ".inputs.pt")
    results = {}
    for task in ("l1_unstructured:unstructured", "l1_unstructured:2:4",
                 "wanda:unstructured", "wanda:2:4", "torchao_wanda:unstructured",
                 "torchao_wanda:2:4", "sparsegpt:unstructured", "sparsegpt:2:4"):
        if args.only and task not in args.only.split(","):
            continue
        results[task] = _spawn([__file__, "--child", task, "--state", state, *common])
        print(task, _fmt(results[task]), flush=True)
    if args.only:
        return
    llmc_error = None
    if Path(args.llmcompressor_python).exists():
        for pattern in ("unstructured", "2:4"):
            try:
                results[f"llmcompressor_sparsegpt:{pattern}"] = _spawn(
                    [str(HERE / "llmcompressor_sparsegpt.py"), "--state", state,
                     "--pattern", pattern, *common], python=args.llmcompressor_python)
                print(pattern, _fmt(results[f"llmcompressor_sparsegpt:{pattern}"]), flush=True)
            except RuntimeError as err:
                llmc_error = str(err)
    else:
        llmc_error = f"no llm-compressor environment at {args.llmcompressor_python}"
    agreement = {}
    for pattern in ("unstructured", "2:4"):
        theirs_path = Path(state + f".{pattern}.llmcompressor.pt")
        if theirs_path.exists():
            ours = torch.load(state + f".{pattern}.xprune.pt")
            theirs = torch.load(theirs_path)
            agreement[pattern] = float(((ours != 0) == (theirs != 0)).float().mean())
    write_markdown(args, results, agreement, llmc_error)


def write_markdown(args, results: dict, agreement: dict, llmc_error: str | None) -> None:
    from xprune._io import atomic_write_text

    labels = {"l1_unstructured": "magnitude (per layer)", "wanda": "Wanda (xprune)",
              "torchao_wanda": "Wanda (torchao WandaSparsifier)",
              "sparsegpt": "SparseGPT (xprune)",
              "llmcompressor_sparsegpt": "SparseGPT (llm-compressor steps)"}
    lines = ["# Pruning methods: time and peak memory\n",
             f"`python benchmarks/pruning_methods.py --threads {args.threads} --repeats "
             f"{args.repeats}`; {platform.processor() or platform.machine()}, "
             f"torch {torch.__version__}, {args.threads} threads, CPU, "
             f"{time.strftime('%Y-%m-%d')}. BERT-style encoder, {LAYERS} layers x {HIDDEN}, "
             f"36 linear layers pruned to 50%; {N_SEQ} calibration sequences of {SEQ_LEN} "
             f"tokens in batches of {BATCH}. Time: best of {args.repeats}; memory: the "
             "process's peak resident set (ru_maxrss), and its rise over the setup (model "
             "and data built).\n",
             "| method | pattern | time | peak RSS | peak above setup |",
             "|---|---|---|---|---|"]
    for task, r in results.items():
        method, _, pattern = task.partition(":")
        lines.append(f"| {labels[method]} | {pattern} | {_fmt(r)} |")
    lines.append("\n| comparison | unstructured | 2:4 | issue's bound |\n|---|---|---|---|")
    for ours, ref, bound in (("wanda", "torchao_wanda", "<= 1.25"),
                             ("sparsegpt", "llmcompressor_sparsegpt", "<= 2")):
        cells = []
        for pattern in ("unstructured", "2:4"):
            a, b = results.get(f"{ours}:{pattern}"), results.get(f"{ref}:{pattern}")
            cells.append(f"{a['seconds'] / b['seconds']:.2f}x" if a and b else "not run")
        lines.append(f"| {labels[ours]} / {labels[ref]} time | {cells[0]} | {cells[1]} | "
                     f"{bound} |")
    if agreement:
        lines.append("\nSparseGPT masks of `encoder.layer.0.attention.self.query`, xprune "
                     "(float64) vs llm-compressor (float32), same weights and calibration: "
                     + ", ".join(f"{p} {v:.4f} of entries agree" for p, v in agreement.items())
                     + ".")
    if llmc_error:
        lines.append(f"\nllm-compressor: {llmc_error.splitlines()[0]}")
    text = "\n".join(lines) + "\n"
    atomic_write_text(Path(args.out), text)
    print("\n" + text)


if __name__ == "__main__":
    main()
