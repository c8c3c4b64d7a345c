"""Magnitude, Wanda and SparseGPT on a tiny causal language model, 50% per layer, no fine-tuning.

Usage: python benchmarks/llm_pruning.py [--seed 0] [--steps 300] [--outlier-scale 20]

A 2-layer Llama (64 wide, 4 heads, MLP 128; Hugging Face ``transformers``,
built from a config, nothing downloaded) is trained for a few seconds on
generated text: sequences of 32 tokens from a random second-order Markov
source over 16 tokens (each pair of previous tokens allows 4 next tokens,
with random probabilities, so the model must attend to the token before the
last), whose entropy rate bounds the loss any model can reach.

Wanda's paper (Sun et al. 2023, section 2) explains its advantage over
magnitude pruning by the few input features of very large magnitude that
LLMs develop. The tiny model gets them the way a real one carries them: in 4
of the 64 hidden dimensions, the gain of every RMSNorm that feeds a linear
layer (``input_layernorm``, ``post_attention_layernorm``) is multiplied by
``--outlier-scale`` (20) and the weight columns that read those dimensions
(q, k, v; gate, up) divided by it. The model computes the same function
(the dense loss is unchanged, checked), but those 4 input features are now
20x larger than the rest and the weights that read them 20x smaller. The
table shows the trained model with and without them.

Every linear layer of the two blocks is pruned to 50% (q, k, v, o, gate,
up, down; the embeddings and ``lm_head`` stay dense): magnitude per layer,
Wanda per output row (the paper's comparison group), SparseGPT per layer
(blocks of 128 columns, 1% dampening), unstructured and 2:4. Calibration:
64 sequences of 32 tokens streamed as a DataLoader of tokenizer-style
mappings (``{"input_ids": ...}``). Loss: mean next-token cross-entropy
(nats) on 256 held-out sequences; perplexity = exp(loss).
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch.utils.data import DataLoader, Dataset

import xprune

VOCAB, SEQ, HIDDEN = 16, 32, 64
OUTLIER_DIMS = (3, 17, 40, 58)
METHODS = ("l1_unstructured", "wanda", "sparsegpt")
LABELS = {"l1_unstructured": "magnitude", "wanda": "Wanda", "sparsegpt": "SparseGPT"}


def markov_source(seed: int) -> torch.Tensor:
    """Next-token probabilities (VOCAB, VOCAB, VOCAB) given the two previous tokens: 4 allowed
    next tokens per pair, Dirichlet(1) probabilities."""
    gen = torch.Generator().manual_seed(seed)
    probs = torch.zeros(VOCAB, VOCAB, VOCAB)
    allowed = torch.rand(VOCAB, VOCAB, VOCAB, generator=gen).argsort(dim=-1)[..., :4]
    weights = -torch.log(torch.rand(VOCAB, VOCAB, 4, generator=gen))  # Dirichlet(1, 1, 1, 1)
    probs.scatter_(-1, allowed, weights / weights.sum(-1, keepdim=True))
    return probs


def generate_text(source: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Token ids (n, SEQ) sampled from ``source`` (the first two tokens uniform)."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.zeros(n, SEQ, dtype=torch.long)
    ids[:, :2] = torch.randint(0, VOCAB, (n, 2), generator=gen)
    for t in range(2, SEQ):
        ids[:, t] = torch.multinomial(source[ids[:, t - 2], ids[:, t - 1]], 1,
                                      generator=gen).squeeze(1)
    return ids


def entropy_rate(source: torch.Tensor) -> float:
    """Mean conditional entropy (nats) of the next token over uniform contexts: about the
    lowest loss a model can reach on this text (the stationary weights differ a little)."""
    return float(-(source * source.clamp_min(1e-30).log()).sum(-1).mean())


class TokenizedText(Dataset):
    """Rows of token ids as a tokenizer hands them out: ``{"input_ids": (SEQ,)}``."""

    def __init__(self, ids: torch.Tensor) -> None:
        self.ids = ids

    def __len__(self) -> int:
        return self.ids.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[i]}


def build_lm(seed: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=128,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=SEQ, tie_word_embeddings=False)
    return LlamaForCausalLM(config)


def train_lm(model: torch.nn.Module, ids: torch.Tensor, *, steps: int, seed: int,
             batch_size: int = 32, lr: float = 1e-2) -> float:
    """Adam on the model's own next-token loss; returns the wall seconds."""
    gen = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    start = time.perf_counter()
    for _ in range(steps):
        batch = ids[torch.randint(0, ids.shape[0], (batch_size,), generator=gen)]
        optimiser.zero_grad(set_to_none=True)
        model(input_ids=batch, labels=batch).loss.backward()
        optimiser.step()
    model.eval()
    return time.perf_counter() - start


@torch.no_grad()
def lm_loss(model: torch.nn.Module, ids: torch.Tensor, batch_size: int = 64) -> float:
    """Mean next-token cross-entropy (nats) over all predicted tokens of ``ids``."""
    total, count = 0.0, 0
    model.eval()
    for start in range(0, ids.shape[0], batch_size):
        batch = ids[start:start + batch_size]
        tokens = batch.shape[0] * (batch.shape[1] - 1)
        total += float(model(input_ids=batch, labels=batch).loss) * tokens
        count += tokens
    return total / count


@torch.no_grad()
def add_outlier_features(model: torch.nn.Module, scale: float) -> None:
    """Scale the RMSNorm gains of OUTLIER_DIMS by ``scale`` and the weight columns that read
    them by 1 / ``scale``, in place: the same function, with outlier input features."""
    dims = list(OUTLIER_DIMS)
    for layer in model.model.layers:
        layer.input_layernorm.weight[dims] *= scale
        for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
            proj.weight[:, dims] /= scale
        layer.post_attention_layernorm.weight[dims] *= scale
        for proj in (layer.mlp.gate_proj, layer.mlp.up_proj):
            proj.weight[:, dims] /= scale


def prune_all(model: torch.nn.Module, calibration, test_ids: torch.Tensor) -> dict:
    """``{(method, pattern): (loss, measured sparsity)}`` at 50% of every linear layer."""
    losses = {}
    for method in METHODS:
        for pattern, n_m in (("unstructured", None), ("2:4", (2, 4))):
            kwargs = {"scope": "layer"} if method == "l1_unstructured" else {"data": calibration}
            pair = xprune.prune(model, 0.5, method=method, n_m=n_m, **kwargs)
            losses[method, pattern] = (lm_loss(pair.sparse, test_ids), pair.sparsity)
    return losses


def experiment(seed: int = 0, steps: int = 300, outlier_scales=(20.0, 1.0)) -> dict:
    """Train once; per outlier scale, reparametrise a copy and prune it with each method."""
    import copy

    torch.set_num_threads(1)  # tiny matrices: more threads only add overhead
    source = markov_source(seed)
    train_ids = generate_text(source, 2048, seed + 1)
    calib_ids = generate_text(source, 64, seed + 2)
    test_ids = generate_text(source, 256, seed + 3)
    model = build_lm(seed)
    seconds = train_lm(model, train_ids, steps=steps, seed=seed)
    calibration = DataLoader(TokenizedText(calib_ids), batch_size=16)
    result = {"train_seconds": seconds, "dense_loss": lm_loss(model, test_ids),
              "entropy_rate": entropy_rate(source), "scales": {}}
    for scale in outlier_scales:
        copy_ = copy.deepcopy(model)
        add_outlier_features(copy_, scale)
        result["scales"][scale] = {"dense_loss": lm_loss(copy_, test_ids),
                                   "losses": prune_all(copy_, calibration, test_ids)}
    return result


def table(result: dict) -> str:
    """Markdown: one row per method; loss (perplexity) per sparsity pattern and outlier scale."""
    scales = list(result["scales"])
    head = " | ".join(f"{p}, {'outliers x' + format(s, 'g') if s != 1 else 'no outliers'}"
                      for s in scales for p in ("unstructured", "2:4"))
    lines = [f"| method (50% of every linear layer) | {head} |",
             "|---|" + "---|" * (2 * len(scales))]
    dense = [result["scales"][s]["dense_loss"] for s in scales for _ in range(2)]
    lines.append("| dense | " + " | ".join(f"{v:.3f} ({math.exp(v):.2f})" for v in dense)
                 + " |")
    for method in METHODS:
        cells = [result["scales"][s]["losses"][method, p][0] for s in scales
                 for p in ("unstructured", "2:4")]
        lines.append(f"| {LABELS[method]} | "
                     + " | ".join(f"{v:.3f} ({math.exp(v):.2f})" for v in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--outlier-scale", type=float, default=20.0)
    args = parser.parse_args()
    start = time.perf_counter()
    result = experiment(args.seed, args.steps, (args.outlier_scale, 1.0))
    print(f"trained {args.steps} steps in {result['train_seconds']:.1f} s (1 thread); dense "
          f"loss {result['dense_loss']:.4f} nats, entropy rate of the text "
          f"{result['entropy_rate']:.3f}; total {time.perf_counter() - start:.1f} s\n")
    print("Loss: mean next-token cross-entropy in nats on 256 held-out sequences "
          "(perplexity in brackets); lower is better.\n")
    print(table(result))


if __name__ == "__main__":
    main()
