"""One table of xprune's metric costs: against Quantus / Captum, against each metric's floor,
and peak memory, at three sizes. Refreshed by one command:

    python benchmarks/table.py                     # all three sizes; prints markdown
    python benchmarks/table.py --sizes digits --reps 3 --run-seconds 50 --suite-seconds 540
    python benchmarks/table.py --sizes tokens --only AOPC,tau-LOO   # some rows only

Sizes: ``digits`` (1x8x8, the digits CNN trained 5 epochs, N = 64), ``images``
(3x32x32, a small CNN with random weights, N = 32) and ``tokens`` (sequences of
128 ids through a 6-layer, 384-wide BERT built from a local config with random
weights, N = 4; nothing is downloaded). Maps: Integrated Gradients, 16 steps,
zero baseline, the model's predicted classes.

What the table claims are ratios measured in the same run: each row's calls
(xprune, its floor, the peers) run one after the other, ``--reps`` times,
interleaved, and the median of each is kept, so a busy machine slows all of a
row alike. The *floor* is the bare model work the definition needs, and nothing
else: for forward-bound metrics the forward passes of the rows the metric
scores (the perturbed inputs, in batches of 4,096 rows, target gathered), for
explainer-bound ones the explainer's calls on the N x n_samples perturbed
inputs alone (the unperturbed maps are given). Peak memory: the growth of the
process's peak resident set during xprune's first call (VmHWM after resetting
it through /proc/self/clear_refs), in MiB. The default run's and the test
suite's wall times are read from ``--run-seconds`` / ``--suite-seconds``
(measured apart: ``time xprune run``, ``time pytest``), not re-run.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
from metrics_vs_references import _proc_status_kib, _reset_peak_rss  # this folder (a script)

import xprune
from xprune.attribution import DEFAULT_MAX_ROWS
from xprune.metrics import erasure, faithfulness, stability

S = 10                # stability perturbations per sample
RUNS = 100            # faithfulness-correlation subsets
IG = {"n_steps": 16}
MASK_ID = 4           # tokens: the ids are drawn from [5, 1000); removed tokens become id 4


def peak_growth(fn: Callable[[], object]) -> float:
    """MiB the process's peak resident set grows above its resident set during ``fn()``."""
    _reset_peak_rss()
    before = _proc_status_kib("VmRSS")
    fn()
    return (_proc_status_kib("VmHWM") - before) / 1024


def timed(fns: dict[str, Callable[[], object]], reps: int) -> dict[str, float]:
    """Median seconds of each function over ``reps`` interleaved rounds."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def forward_floor(model, x: torch.Tensor, t: torch.Tensor, rows: int) -> Callable[[], None]:
    """``rows`` bare forward passes of the model (tiled inputs), target gathered."""
    block = x.repeat(math.ceil(min(rows, DEFAULT_MAX_ROWS) / x.shape[0]),
                     *[1] * (x.dim() - 1))[:min(rows, DEFAULT_MAX_ROWS)]
    tb = t.repeat(math.ceil(block.shape[0] / t.shape[0]))[:block.shape[0], None]

    def run() -> None:
        with torch.no_grad():
            for start in range(0, rows, DEFAULT_MAX_ROWS):
                n = min(DEFAULT_MAX_ROWS, rows - start)
                out = model(block[:n])
                out = getattr(out, "logits", out)
                out.softmax(dim=1).gather(1, tb[:n])
    return run


# --- the three sizes -------------------------------------------------------------------------

def digits_setup():
    from xprune.data import load_digits_split
    from xprune.models import DigitsCNN, train

    data = load_digits_split(seed=0)
    torch.manual_seed(0)
    model = DigitsCNN()
    train(model, data.x_train, data.y_train, epochs=5, lr=0.003, seed=0)
    return model.eval(), data.x_test[:64].clone()


def images_setup():
    from xprune.models import DigitsCNN

    torch.manual_seed(0)
    model = DigitsCNN(in_channels=3, image_shape=(32, 32)).eval()
    return model, torch.rand(32, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def tokens_setup():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=1000, hidden_size=384, num_hidden_layers=6,
                        num_attention_heads=6, intermediate_size=1536, num_labels=2)
    model = BertForSequenceClassification(config).eval()
    ids = torch.randint(5, 1000, (4, 128), generator=torch.Generator().manual_seed(0))
    return model, ids


SIZES = {"digits": digits_setup, "images": images_setup, "tokens": tokens_setup}
ROWS = ("deletion AUC", "insertion AUC", "AOPC", "faithfulness correlation", "comprehensiveness",
        "sufficiency", "tau-LOO", "infidelity", "ROAD (MoRF)", "max-sensitivity (IG)")


# --- the rows --------------------------------------------------------------------------------

def rows_for(size: str, model, x: torch.Tensor, reps: int,
             only: set[str] | None = None) -> list[dict]:
    """The table's rows at one size; ``only``: the metric names to run (default all)."""
    import quantus

    tokens = size == "tokens"
    a = xprune.attribute(model, x, "predicted", "integrated_gradients", params=IG)
    t = a.targets
    n = x.shape[0]
    d = faithfulness.feature_map(a.values).shape[1]
    steps = min(d, faithfulness.DEFAULT_MAX_STEPS)
    subset = faithfulness.default_subset_size(d)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    out = []

    def row(metric, ours, floor, floor_what, peers=None):
        if only is not None and metric not in only:
            return
        fns = {"xprune": ours, "floor": floor, **(peers or {})}
        memory = peak_growth(ours)
        secs = timed(fns, reps)
        for peer in (peers or {None: None}):
            out.append({"size": size, "metric": metric, "peer": peer or "",
                        "xprune_s": secs["xprune"], "floor_s": secs["floor"],
                        "floor_what": floor_what,
                        "peer_s": secs.get(peer) if peer else None, "memory_mib": memory})

    def qkw(**extra):
        kw = dict(model=model, x_batch=x.numpy().copy(), y_batch=t.numpy().copy(),
                  a_batch=a.values.detach().numpy().copy(), channel_first=True, device="cpu",
                  batch_size=n)
        kw.update(extra)
        return kw

    row("deletion AUC", lambda: faithfulness.deletion_auc(model, x, a, t),
        forward_floor(model, x, t, n * (steps + 1)), f"{n * (steps + 1):,} fwd",
        None if tokens or size == "images" else {"Quantus PixelFlipping": lambda: quantus.PixelFlipping(
            features_in_step=1, perturb_baseline=0.0, abs=False, normalise=False,
            return_aggregate=False, disable_warnings=True)(**qkw(), softmax=True)})
    row("insertion AUC", lambda: faithfulness.insertion_auc(model, x, a, t),
        forward_floor(model, x, t, n * (steps + 1)), f"{n * (steps + 1):,} fwd")
    row("AOPC", lambda: faithfulness.aopc(model, x, a, t),
        forward_floor(model, x, t, n * (steps + 1)), f"{n * (steps + 1):,} fwd")
    row("faithfulness correlation",
        lambda: faithfulness.faithfulness_correlation(model, x, a, t, n_runs=RUNS,
                                                      subset_size=subset, generator=gen()),
        forward_floor(model, x, t, n * (RUNS + 1)), f"{n * (RUNS + 1):,} fwd",
        None if tokens else {"Quantus FaithfulnessCorrelation": lambda: quantus.FaithfulnessCorrelation(
            subset_size=subset, nr_runs=RUNS, perturb_baseline=0.0, abs=False,
            normalise=False, return_aggregate=False, disable_warnings=True)(
            **qkw(), softmax=False)})
    if tokens:  # ERASER's five bins: the unperturbed row and one row per bin; LOO: one per token
        bins = len(erasure.DEFAULT_FRACTIONS)
        counted = int(a.feature_mask.sum()) if a.feature_mask is not None else x.numel()
        mask = {"baseline": MASK_ID}  # the local config has no [MASK]: an id never drawn
        row("comprehensiveness", lambda: erasure.comprehensiveness(model, x, a, t, **mask),
            forward_floor(model, x, t, n * (bins + 1)), f"{n * (bins + 1):,} fwd")
        row("sufficiency", lambda: erasure.sufficiency(model, x, a, t, **mask),
            forward_floor(model, x, t, n * (bins + 1)), f"{n * (bins + 1):,} fwd")
        row("tau-LOO", lambda: erasure.tau_loo(model, x, a, t, **mask),
            forward_floor(model, x, t, n + counted), f"{n + counted:,} fwd")
    if not tokens:
        row("infidelity", lambda: faithfulness.infidelity(model, x, a, t, generator=gen()),
            forward_floor(model, x, t, n * (S + 1)), f"{n * (S + 1):,} fwd")
        row("ROAD (MoRF)", lambda: faithfulness.road(model, x, a, t, generator=gen()),
            forward_floor(model, x, t, n * 9), f"{n * 9:,} fwd")
        explain = xprune.explainer(model, "integrated_gradients", params=IG)
        flat = x.repeat_interleave(S, dim=0) + 0.01
        ft = t.repeat_interleave(S)
        box = torch.stack([(torch.rand(S, *x.shape[1:], generator=g) * 2 - 1) * 0.1
                           for g in [torch.Generator().manual_seed(0)] for _ in range(n)])
        q_inputs = (x[:, None] + box).reshape(n, S, -1).numpy()

        class Injected:
            def __init__(self):
                self.calls = 0

            def __call__(self, arr, indices=None, **kw):
                self.calls += 1
                return q_inputs[:, (self.calls - 1) % S].reshape(arr.shape).copy()

        def quantus_ms():
            return quantus.MaxSensitivity(nr_samples=S, lower_bound=0.1, perturb_func=Injected(),
                                          abs=False, normalise=False, return_aggregate=False,
                                          disable_warnings=True)(
                **qkw(a_batch=None, batch_size=64),
                explain_func=lambda model, inputs, targets, **_: explain(
                    torch.as_tensor(inputs), torch.as_tensor(targets)).numpy())

        row("max-sensitivity (IG)",
            lambda: stability.max_sensitivity(explain, x, t, n_samples=S, generator=gen(),
                                              attributions=a),
            lambda: explain(flat, ft), f"IG on {n * S:,} rows",
            {"Quantus MaxSensitivity bs=64": quantus_ms})
    return out


def render(rows: list[dict], args) -> str:
    lines = ["| size | metric | floor (bare work) | xprune / floor | peer | xprune / peer | "
             "peak memory growth MiB |", "|---|---|---|---:|---|---:|---:|"]
    for r in rows:
        ratio = f"{r['xprune_s'] / r['peer_s']:.2f}" if r["peer_s"] else ""
        lines.append(f"| {r['size']} | {r['metric']} | {r['floor_what']} | "
                     f"{r['xprune_s'] / r['floor_s']:.2f} | {r['peer'] or '-'} | {ratio or '-'} | "
                     f"{r['memory_mib']:.0f} |")
    lines.append("")
    lines.append(f"Default `xprune run`: {args.run_seconds or 'not measured'} s; test suite: "
                 f"{args.suite_seconds or 'not measured'} s. {args.reps} interleaved rounds, "
                 f"medians; {torch.get_num_threads()} torch threads; load average at the end "
                 f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="digits,images,tokens")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--run-seconds", type=float)
    parser.add_argument("--suite-seconds", type=float)
    parser.add_argument("--only", metavar="NAME[,NAME]",
                        help="run only these rows, by the table's metric names "
                             "(e.g. 'AOPC,tau-LOO'); default: all")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    np.random.seed(0)  # noqa: NPY002  Quantus draws from the global NumPy RNG
    only = None if args.only is None else {m.strip() for m in args.only.split(",")}
    if only is not None and not only <= set(ROWS):
        parser.error(f"--only: unknown row(s) {sorted(only - set(ROWS))}; the rows are "
                     f"{', '.join(ROWS)}")
    rows = []
    for size in args.sizes.split(","):
        model, x = SIZES[size]()
        rows += rows_for(size, model, x, args.reps, only)
    print(render(rows, args))


if __name__ == "__main__":
    main()
