"""llm-compressor's SparseGPT steps on the encoder of benchmarks/pruning_methods.py (a child).

Runs in llm-compressor's own virtual environment (it pins its own torch), started by
``pruning_methods.py``: loads the encoder's weights and the calibration ids that the
parent saved, registers forward hooks that call llm-compressor's ``accumulate_hessian``
for every encoder linear layer during one calibration pass over the dense model, then
calls its ``sparsify_weight`` for each layer (50% unstructured, or 2:4 as prune_n=2,
prune_m=4; block size 128, dampening 0.01: its defaults) and writes the weight back.
Prints one JSON line: seconds (best of --repeats), peak RSS before and after.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
import warnings

import torch
from llmcompressor.modifiers.pruning.sparsegpt.sgpt_sparsify import (
    accumulate_hessian,
    make_empty_hessian,
    sparsify_weight,
)
from transformers import BertConfig, BertModel


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def prune(model, ids, n_m):
    import copy

    model = copy.deepcopy(model)  # as xprune.prune does: the dense model stays
    linears = {m: n for n, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and n.startswith("encoder.")}
    hessians, counts = {}, {}

    def hook(module, args):
        h = hessians.get(module)
        if h is None:
            h, counts[module] = make_empty_hessian(module), 0
        hessians[module], counts[module] = accumulate_hessian(args[0], module, h, counts[module])

    handles = [m.register_forward_pre_hook(hook) for m in linears]
    with torch.no_grad():
        for start in range(0, ids.shape[0], 16):
            batch = ids[start:start + 16]
            model(input_ids=batch, attention_mask=torch.ones_like(batch))
    for h in handles:
        h.remove()
    for module in linears:
        _, weight = sparsify_weight(module, hessians, 0.5, 0 if n_m is None else n_m[0],
                                    0 if n_m is None else n_m[1], 128, 0.01, False)
        with torch.no_grad():
            module.weight.copy_(weight)
    return model


def main() -> None:
    warnings.filterwarnings("ignore")
    parser = argparse.ArgumentParser()
    parser.add_argument("--state", required=True)
    parser.add_argument("--pattern", default="unstructured")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    saved = torch.load(args.state + ".inputs.pt")
    config = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6,
                        num_attention_heads=6, intermediate_size=1536,
                        max_position_embeddings=512)
    model = BertModel(config).eval()
    model.load_state_dict(saved["model"])
    ids = saved["ids"]
    n_m = (2, 4) if args.pattern == "2:4" else None
    before = _peak_mib()
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        out = prune(model, ids, n_m)
        times.append(time.perf_counter() - start)
    torch.save(out.get_submodule("encoder.layer.0.attention.self.query").weight.detach(),
               f"{args.state}.{args.pattern}.llmcompressor.pt")
    print(json.dumps({"task": f"llmcompressor_sparsegpt:{args.pattern}",
                      "seconds": min(times), "all_seconds": times, "setup_peak_mib": before,
                      "peak_mib": _peak_mib(), "torch": torch.__version__}))


if __name__ == "__main__":
    main()
