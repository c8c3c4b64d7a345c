"""One table of xprune's metric costs: against Quantus / Captum, against each metric's floor,
and peak memory, at three sizes. Refreshed by one command:

    python benchmarks/table.py                     # all three sizes; prints markdown
    python benchmarks/table.py --sizes digits --reps 3 --run-seconds 50 --suite-seconds 540
    python benchmarks/table.py --sizes digits,images --metrics ROAD,infidelity --reps 7
    python benchmarks/table.py --sizes digits,images --metrics deletion,correlation  # some rows
    python benchmarks/table.py --sizes tokens --metrics AOPC,tau-LOO    # some rows
    python benchmarks/table.py --sizes digits,images --metrics deletion --eager-forwards
    python benchmarks/table.py --sizes digits,images --metrics deletion --compare-eager

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
scores (the inputs tiled, target gathered, in batches of the size and layout that
were fastest for that model among 16, 32, ..., 4,096 rows, each as the model is and,
for 4-D inputs, as a channels-last copy fed channels-last inputs, timed once per
size and layout; "channels-last" after the batch says that layout won), for
explainer-bound ones the explainer's calls on the N x n_samples perturbed
inputs alone, in one call or in calls of 256, 64 or 16 rows, whichever was fastest
(timed once per size; "in calls of" after the rows says a chunking won) (the unperturbed
maps are given; relative stability adds the
forwards of the N x (n_samples + 1) inputs whose logits it reads; the
randomisation test the maps of the N inputs on each re-initialised model and the
re-initialisation; random logit the maps of the N inputs for the drawn classes). The
curves (deletion, insertion, AOPC) forward a step's row only where it differs from the
step before (removing pixels already at the baseline's value changes nothing): their
second line is the floor of the rows they forwarded, counted by a forward hook. ROAD also needs its imputation, a
sparse linear system per image and percentage that no forward pass includes, so it
gets a second line against the forwards plus one bare ``scipy.sparse.linalg.spsolve``
per system (systems built beforehand, untimed), a third against the forwards plus the
bare LAPACK banded Cholesky factorisation and solve (``dpbsv``) of every system, in the
pixels' row-major order, the systems of one half-bandwidth stacked into one call (band
storage built beforehand, untimed): the cheapest direct solution per system we found for
these widths, and a fourth adding the imputation's Gaussian noise draws (one value per
imputed pixel and channel, float64, which the definition needs too). xprune itself
solves ROAD's nested systems of up to 192 unknowns with one dense Cholesky factor per
image for all percentages, and larger ones (images up to 48 wide) as these banded
systems, built for all images and percentages at once. Peak memory: the growth of the
process's peak resident set during xprune's first call (VmHWM after resetting
it through /proc/self/clear_refs), in MiB. The default run's and the test
suite's wall times are read from ``--run-seconds`` / ``--suite-seconds``
(measured apart: ``time xprune run``, ``time pytest``), not re-run.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
from metrics_vs_references import (  # this folder (a script)
    _proc_status_kib,
    _reset_peak_rss,
    exact,
    in_distribution,
)

import xprune
from xprune.attribution import DEFAULT_MAX_ROWS
from xprune.metrics import erasure, faithfulness, fast_forwards, stability

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
    """Median seconds of each function over ``reps`` interleaved rounds.

    Odd rounds run the functions in reverse order: a call made right after a heavy one was
    measured up to 1.7x slower (cascading MPRT on digits right after Quantus's MPRT: 172 ms,
    against 105 ms for the floor; with the two swapped, the floor took 194 ms and xprune
    107 ms), so no function may always follow the same one (a rotation would keep the cycle)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    names = list(fns)
    for r in range(reps):
        for name in (names if r % 2 == 0 else names[::-1]):
            fn = fns[name]
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


FLOOR_BATCHES = (16, 32, 64, 128, 256, 512, 1024, 2048, DEFAULT_MAX_ROWS)
#: Layouts the floor tries: the model as given, and (conv models on 4-D/5-D inputs) a
#: channels-last copy fed channels-last inputs, the fastest bare forwards PyTorch offers
#: without compiling (xprune's metrics run that view, xprune.metrics._forward).
FLOOR_LAYOUTS = ("eager", "channels-last")


def channels_last(model, x: torch.Tensor):
    """A channels-last copy of ``model`` and ``x`` in that layout, or None for other inputs."""
    fmt = {4: torch.channels_last, 5: torch.channels_last_3d}.get(x.dim())
    if fmt is None or not x.is_floating_point():
        return None
    return copy.deepcopy(model).to(memory_format=fmt), x.contiguous(memory_format=fmt)


def forward_floor(model, x: torch.Tensor, t: torch.Tensor, rows: int,
                  batch: int = DEFAULT_MAX_ROWS, layout: str = "eager") -> Callable[[], None]:
    """``rows`` bare forward passes of the model (tiled inputs), ``batch`` rows a pass,
    target gathered; ``layout="channels-last"`` runs a channels-last copy on channels-last
    inputs."""
    block = x.repeat(math.ceil(min(rows, batch) / x.shape[0]),
                     *[1] * (x.dim() - 1))[:min(rows, batch)].contiguous()
    tb = t.repeat(math.ceil(block.shape[0] / t.shape[0]))[:block.shape[0], None]
    if layout == "channels-last":
        model, block = channels_last(model, block)

    def run() -> None:
        with torch.no_grad():
            for start in range(0, rows, batch):
                n = min(batch, rows - start)
                out = model(block[:n])
                out = getattr(out, "logits", out)
                out.softmax(dim=1).gather(1, tb[:n])
    return run


#: Rows per call the explainer-bound floors try (None: all rows in one call).
EXPLAIN_CHUNKS = (None, 256, 64, 16)


def explain_chunk(explain, rows: torch.Tensor, targets: torch.Tensor) -> int | None:
    """The chunking of :data:`EXPLAIN_CHUNKS` whose bare explainer calls on ``rows`` (M, *F)
    for ``targets`` (M,) are fastest (best of 2): the explainer-bound floors of this size
    use it, so a floor is never the slower of two honest ways of making the same calls."""
    m = rows.shape[0]
    best = {}
    for chunk in EXPLAIN_CHUNKS:
        if chunk is None or chunk < m:
            run = explain_calls(explain, rows, targets, chunk)
            best[chunk] = min(timed({"c": run}, 1)["c"] for _ in range(2))
    return min(best, key=best.get)


def explain_calls(explain, rows: torch.Tensor, targets: torch.Tensor,
                  chunk: int | None) -> Callable[[], None]:
    """The explainer's maps of ``rows`` for ``targets``, ``chunk`` rows a call (None: one)."""
    step = chunk or rows.shape[0]

    def run() -> None:
        for i in range(0, rows.shape[0], step):
            explain(rows[i:i + step], targets[i:i + step])
    return run


def floor_batch(model, x: torch.Tensor, t: torch.Tensor) -> tuple[int, str]:
    """The batch of :data:`FLOOR_BATCHES` and layout of :data:`FLOOR_LAYOUTS` whose bare
    forwards of 2,048 rows (best of 2) are fastest: bare forwards so are the floor of every
    forward-bound row of this size."""
    rows = min(2048, max(256, 64 * x.shape[0]))
    layouts = [lay for lay in FLOOR_LAYOUTS
               if lay == "eager" or channels_last(model, x[:1]) is not None]
    best = {}
    for layout in layouts:
        for batch in FLOOR_BATCHES:
            run = forward_floor(model, x, t, rows, batch, layout)
            best[batch, layout] = min(timed({"b": run}, 1)["b"] for _ in range(2))
    return min(best, key=best.get)


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
# --- the rows --------------------------------------------------------------------------------

def imputation_floor(x: torch.Tensor, scores: torch.Tensor, counts: list[int]
                     ) -> tuple[Callable[[], None], int]:
    """One bare scipy sparse solve per ROAD system (image x percentage), systems prebuilt.

    The systems are ROAD's noisy linear imputation (``D - W_RR`` and ``W_RK x_K`` of
    :func:`xprune.metrics._imputation._impute`) for the MoRF removal of the map's
    ``counts`` top pixels; building them is not timed, only ``spsolve``. Returns the
    timed function and the systems, (sparse system, right-hand side) pairs.
    """
    from scipy import sparse
    from scipy.sparse.linalg import spsolve

    from xprune.metrics._imputation import _neighbour_matrix

    n, c = x.shape[:2]
    weights = _neighbour_matrix(*x.shape[2:])
    ranked = scores.argsort(dim=1, descending=True, stable=True).numpy()
    systems = []
    for i in range(n):
        image = x[i].reshape(c, -1).double().numpy()
        for k in counts:
            if k == 0:
                continue
            idx, keep = np.sort(ranked[i, :k]), np.sort(ranked[i, k:])
            w_r = weights[idx]
            degree = np.asarray(w_r.sum(axis=1)).ravel()
            systems.append(((sparse.diags(degree) - w_r[:, idx]).tocsc(),
                            w_r[:, keep] @ image[:, keep].T))

    def run() -> None:
        for system, rhs in systems:
            spsolve(system, rhs)
    return run, systems


def banded_imputation_floor(systems: list) -> Callable[[], None]:
    """Bare LAPACK banded Cholesky factorisations and solves (``dpbsv``) of ROAD's systems.

    ``systems``: the (sparse system, right-hand side) pairs of :func:`imputation_floor`,
    unknowns in row-major order, so each system is banded (half-bandwidth kd at most the
    image width + 1). Systems of one kd are stacked into one block-diagonal band, as
    xprune solves them (one call per kd instead of one per system; the same
    factorisations). The band storage is built here, untimed; each call copies it and
    factorises and solves the copy.
    """
    from scipy import sparse
    from scipy.linalg.lapack import dpbsv

    by_kd: dict[int, list] = {}
    for system, rhs in systems:
        lower = sparse.tril(system).tocoo()
        kd = int((lower.row - lower.col).max(initial=0))
        band = np.zeros((kd + 1, system.shape[0]), order="F")
        band[lower.row - lower.col, lower.col] = lower.data
        by_kd.setdefault(kd, []).append((band, rhs))
    stacked = [(np.asfortranarray(np.concatenate([b for b, _ in group], axis=1)),
                np.asfortranarray(np.concatenate([r for _, r in group], axis=0)))
               for group in by_kd.values()]

    def run() -> None:
        for band, rhs in stacked:
            dpbsv(band, rhs, lower=1)
    return run


def noise_draws(counts: list[int], n: int, c: int) -> Callable[[], None]:
    """ROAD's noise draws: (C, k) float64 Gaussian values per image and percentage, from a
    seeded generator, as :class:`~xprune.metrics._imputation.NoisyLinearImputation` draws
    them (the noisy imputation's other bare work)."""
    def run() -> None:
        gen = torch.Generator().manual_seed(0)
        for _ in range(n):
            for k in counts:
                if k:
                    torch.randn(c, k, generator=gen, dtype=torch.float64)
    return run


def eager(fn: Callable[[], object]) -> object:
    """``fn()`` with xprune's metrics sending rows through the model as it is."""
    with fast_forwards(False):
        return fn()


def rows_for(size: str, model, x: torch.Tensor, reps: int,
             metrics: list[str] | None = None, compare_eager: bool = False) -> list[dict]:
    """The rows of one size; with ``metrics``, only those whose name contains one of them;
    ``compare_eager`` adds the peer "xprune, eager forwards" to every row."""
    import quantus

    tokens = size == "tokens"
    a = xprune.attribute(model, x, "predicted", "integrated_gradients", params=IG)
    t = a.targets
    n = x.shape[0]
    d = faithfulness.feature_map(a.values).shape[1]
    steps = min(d, faithfulness.DEFAULT_MAX_STEPS)
    subset = faithfulness.default_subset_size(d)
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    batch, layout = floor_batch(model, x, t)
    out = []

    def floor(rows):
        what = f"{rows:,} fwd @ {batch}" + (" channels-last" if layout != "eager" else "")
        return forward_floor(model, x, t, rows, batch, layout), what

    def row(metric, ours, floor_and_what, peers=None, floor2=()):
        """``floor2``: (function, what) pairs of further floors, timed in the same rounds
        and each given its own line (ROAD: the forwards plus the imputation's bare solves)."""
        if metrics and not any(m.lower() in metric.lower() for m in metrics):
            return
        floor, floor_what = floor_and_what
        if compare_eager:   # the same call without the channels-last view, in the same rounds
            peers = {**(peers or {}), "xprune, eager forwards": lambda: eager(ours)}
        fns = {"xprune": ours, "floor": floor, **(peers or {})}
        for i, (fn, _) in enumerate(floor2):
            fns[f"floor{i + 2}"] = fn
        memory = peak_growth(ours)
        secs = timed(fns, reps)
        for peer in (peers or {None: None}):
            out.append({"size": size, "metric": metric, "peer": peer or "",
                        "xprune_s": secs["xprune"], "floor_s": secs["floor"],
                        "floor_what": floor_what,
                        "peer_s": secs.get(peer) if peer else None, "memory_mib": memory})
        first = out[-1]
        for i, (_, what) in enumerate(floor2):
            out.append({**first, "floor_s": secs[f"floor{i + 2}"], "floor_what": what})

    def qkw(**extra):
        kw = dict(model=model, x_batch=x.numpy().copy(), y_batch=t.numpy().copy(),
                  a_batch=a.values.detach().numpy().copy(), channel_first=True, device="cpu",
                  batch_size=n)
        kw.update(extra)
        return kw

    # Quantus does the same work: the same removed features per step (a pixel's channels
    # together: its map is the pixel sum, repeated over the channels, ranked in groups of
    # C elements), the same baseline, a forward of the N rows per step; the curves must agree.
    # Quantus wants features_in_step to divide H*W, so it sees each image as one channel of
    # C*H rows (the same elements in the same order; the model reshapes them back).
    class Unfold(torch.nn.Module):
        def forward(self, z):
            return model(z.reshape(z.shape[0], *x.shape[1:]))

    one = (n, 1, x.shape[1] * x.shape[2], *x.shape[3:]) if not tokens else None
    pixel_map = faithfulness.feature_map(a.values).reshape(n, 1, *x.shape[2:]) \
        .expand(x.shape).reshape(one) if not tokens else None

    def quantus_flipping():
        return np.asarray(quantus.PixelFlipping(
            features_in_step=x.shape[1] * d // steps, perturb_baseline=0.0, abs=False,
            normalise=False, return_aggregate=False, disable_warnings=True)(
            **qkw(model=Unfold().eval(), x_batch=x.reshape(one).numpy().copy(),
                  a_batch=pixel_map.detach().numpy().copy()), softmax=True))

    flip_peers = None
    if not tokens and d % steps == 0 and (not metrics or any(m.lower() in "deletion auc"
                                                             for m in metrics)):
        ok, why = exact(faithfulness.deletion_curve(model, x, a, t).values[:, 1:],
                        quantus_flipping())
        assert ok, f"deletion curve vs Quantus PixelFlipping on {size}: {why}"
        flip_peers = {"Quantus PixelFlipping": quantus_flipping}
    def distinct_floor(name, call):
        """The curves forward only the rows that differ from their step's predecessor (a step
        removing pixels already at the baseline's value reuses its score): a second floor
        line, the bare forwards of the rows the call forwarded (counted by a forward hook on
        a warm call), beside the first line's floor of all N x (steps + 1) rows."""
        if metrics and not any(m.lower() in name.lower() for m in metrics):
            return ()
        seen = []
        hook = model.register_forward_hook(
            lambda m, args, out: seen.append(getattr(out, "logits", out).shape[0]))
        try:
            call()
            seen.clear()
            call()
        finally:
            hook.remove()
        rows = sum(seen) - 1      # less the one row model_targets reads the outputs from
        fwd, what = floor(rows)
        return [(fwd, f"{what}: the rows forwarded, {rows:,} of {n * (steps + 1):,} "
                      f"(repeated rows reuse their predecessor's score)")]

    deletion = lambda: faithfulness.deletion_auc(model, x, a, t)  # noqa: E731
    insertion = lambda: faithfulness.insertion_auc(model, x, a, t)  # noqa: E731
    aopc = lambda: faithfulness.aopc(model, x, a, t)  # noqa: E731
    row("deletion AUC", deletion, floor(n * (steps + 1)), flip_peers,
        floor2=distinct_floor("deletion AUC", deletion))
    row("insertion AUC", insertion, floor(n * (steps + 1)),
        floor2=distinct_floor("insertion AUC", insertion))
    # Quantus draws its subsets over the map's elements: on images with C > 1 channels
    # xprune does the same work on the elements, the images flattened to rows of C*H*W
    # columns (the model unflattens them); means must agree within 3 standard errors.
    flat = not tokens and x.shape[1] > 1
    fc_model = torch.nn.Sequential(torch.nn.Unflatten(1, x.shape[1:]), model) if flat else model
    fc_x, fc_a = (x.reshape(n, -1), a.values.reshape(n, -1)) if flat else (x, a)

    def ours_fc():
        return faithfulness.faithfulness_correlation(fc_model, fc_x, fc_a, t, n_runs=RUNS,
                                                     subset_size=subset, generator=gen())

    def quantus_fc():
        np.random.seed(0)  # noqa: NPY002  Quantus draws from the global NumPy RNG
        return np.asarray(quantus.FaithfulnessCorrelation(
            subset_size=subset, nr_runs=RUNS, perturb_baseline=0.0, abs=False,
            normalise=False, return_aggregate=False, disable_warnings=True)(
            **qkw(), softmax=False))

    fc_peers = None
    if not tokens and (not metrics or any(m.lower() in "faithfulness correlation" for m in metrics)):
        ok, why = in_distribution(ours_fc(), quantus_fc())
        assert ok, f"faithfulness correlation vs Quantus on {size}: {why}"
        fc_peers = {"Quantus FaithfulnessCorrelation": quantus_fc}
    row("faithfulness correlation" + (" (elements)" if flat else ""), ours_fc,
        floor(n * (RUNS + 1)), fc_peers)
    row("AOPC", aopc, floor(n * (steps + 1)), floor2=distinct_floor("AOPC", aopc))
    if tokens:  # ERASER's five bins: the unperturbed row and one row per bin; LOO: one per token
        bins = len(erasure.DEFAULT_FRACTIONS)
        counted = int(a.feature_mask.sum()) if a.feature_mask is not None else x.numel()
        mask = {"baseline": MASK_ID}  # the local config has no [MASK]: an id never drawn
        row("comprehensiveness", lambda: erasure.comprehensiveness(model, x, a, t, **mask),
            floor(n * (bins + 1)))
        row("sufficiency", lambda: erasure.sufficiency(model, x, a, t, **mask),
            floor(n * (bins + 1)))
        row("tau-LOO", lambda: erasure.tau_loo(model, x, a, t, **mask), floor(n + counted))
    if not tokens:
        inf_fwd, inf_what = floor(n * (S + 1))
        feat = "x".join(map(str, x.shape[1:]))

        def infidelity_draws() -> None:  # infidelity's perturbations, bare: N x S float32 normals
            torch.empty((n * S, *x.shape[1:])).normal_(0.0, 0.1, generator=gen())
        row("infidelity", lambda: faithfulness.infidelity(model, x, a, t, generator=gen()),
            (inf_fwd, inf_what),
            floor2=[(lambda: (inf_fwd(), infidelity_draws()),
                     f"{inf_what} + {n * S:,} x {feat} bare float32 normals")])
        road_counts = [min(d - 1, int(math.floor(p * d + 1e-9)))
                       for p in faithfulness.ROAD_PERCENTAGES]
        fwd, fwd_what = floor(n * 9)
        solves, systems = imputation_floor(x, faithfulness.feature_map(a.values).double(),
                                           road_counts)
        n_systems = len(systems)
        banded = banded_imputation_floor(systems)
        road_draws = noise_draws(road_counts, n, x.shape[1])
        row("ROAD (MoRF)", lambda: faithfulness.road(model, x, a, t, generator=gen()),
            (fwd, fwd_what),
            floor2=[(lambda: (fwd(), solves()), f"{fwd_what} + {n_systems:,} bare scipy solves"),
                    (lambda: (fwd(), banded()),
                     f"{fwd_what} + {n_systems:,} bare banded LAPACK solves"),
                    (lambda: (fwd(), banded(), road_draws()),
                     f"{fwd_what} + {n_systems:,} bare banded LAPACK solves + noise draws")])
        explain = xprune.explainer(model, "integrated_gradients", params=IG)
        flat_rows = x.repeat_interleave(S, dim=0) + 0.01
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

        wanted = lambda name: not metrics or any(m.lower() in name.lower()  # noqa: E731
                                                 for m in metrics)
        stable = ("max-sensitivity (IG)", "avg-sensitivity (IG)",
                  "local Lipschitz estimate (IG)", "relative input stability (IG)",
                  "relative output stability (IG, absolute logits)")
        chunk = explain_chunk(explain, flat_rows, ft) if any(map(wanted, stable)) else None

        def ig_floor(rows, targets):
            what = f"IG on {rows.shape[0]:,} rows" + (f" in calls of {chunk}" if chunk else "")
            return explain_calls(explain, rows, targets, chunk), what

        row("max-sensitivity (IG)",
            lambda: stability.max_sensitivity(explain, x, t, n_samples=S, generator=gen(),
                                              attributions=a),
            ig_floor(flat_rows, ft), {"Quantus MaxSensitivity bs=64": quantus_ms})
        explainer_rows(row, wanted, model, x, a, explain, floor, qkw, ig_floor)
    return out


def explainer_rows(row, wanted, model, x, a, explain, floor, qkw, ig_floor) -> None:
    """The explainer-bound rows after max-sensitivity: avg-sensitivity, local Lipschitz,
    relative input / output stability and the randomisation sanity checks (IG maps).

    Floors: the explainer's calls on the rows the definition needs and nothing else (the
    unperturbed maps ``a`` are given): the N x S perturbed inputs for the stability metrics
    (plus the forwards of the N x (S + 1) inputs whose logits relative stability reads),
    the N inputs on each of the L re-initialised models for the randomisation test (with the
    re-initialisation itself and, independent order, the restore of the other layers), the
    N inputs for the drawn other classes for random logit. Every Quantus peer is given the
    same maps and the same perturbations (classes, random weights), untimed checks assert
    that the values agree, and then its call is timed as the user makes it. ``ig_floor(rows,
    targets)`` gives the stability floors' explainer calls, (function, description), in the
    fastest chunking of :func:`explain_chunk`.
    """
    import copy
    from unittest import mock

    import quantus
    from metrics_vs_references import Injected, uniform_noise
    from quantus.functions.similarity_func import correlation_spearman

    from xprune.metrics import agreement, sanity

    n, t = x.shape[0], a.targets
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731

    def q_explain(model, inputs, targets, **_):
        return explain(torch.as_tensor(inputs), torch.as_tensor(targets)).numpy()

    def check(name, ours, theirs):
        theirs = np.asarray(theirs, dtype=np.float64)
        keep = np.isfinite(theirs)
        assert keep.sum() >= max(1, n // 4), f"{name} on {x.shape}: too few finite values"
        ok, why = exact(np.asarray(ours)[keep], theirs[keep])
        assert ok, f"{name} vs Quantus on {x.shape}: {why}"

    def perturbed_rows(noise):
        rows = (x[:, None] + noise).reshape(n * S, *x.shape[1:])
        return rows, (x[:, None] + noise).reshape(n, S, -1).numpy()

    ft = t.repeat_interleave(S)
    box, q_box = perturbed_rows(uniform_noise(x, S, 0.1, 0, gaussian=False))
    ig_box = ig_floor(box, ft)

    # avg-sensitivity: the draws of max-sensitivity (uniform, radius 0.1), the mean of them
    def quantus_avg():
        return quantus.AvgSensitivity(
            nr_samples=S, lower_bound=0.1, perturb_func=Injected(q_box), abs=False,
            normalise=False, return_aggregate=False, disable_warnings=True)(
            **qkw(), explain_func=q_explain)

    def ours_avg():
        return stability.avg_sensitivity(explain, x, t, n_samples=S, generator=gen(),
                                         attributions=a)

    if wanted("avg-sensitivity (IG)"):
        check("avg-sensitivity", ours_avg(), quantus_avg())
    row("avg-sensitivity (IG)", ours_avg, ig_box, {"Quantus AvgSensitivity": quantus_avg})

    # local Lipschitz: Gaussian neighbours, sigma 0.1
    gauss, q_gauss = perturbed_rows(uniform_noise(x, S, 0.1, 0, gaussian=True))

    def quantus_lle():
        return quantus.LocalLipschitzEstimate(
            nr_samples=S, perturb_func=Injected(q_gauss), abs=False, normalise=False,
            return_aggregate=False, disable_warnings=True)(**qkw(), explain_func=q_explain)

    def ours_lle():
        return stability.local_lipschitz_estimate(explain, x, t, noise_std=0.1, n_samples=S,
                                                  generator=gen(), attributions=a)

    if wanted("local Lipschitz estimate (IG)"):
        check("local Lipschitz estimate", ours_lle(), quantus_lle())
    row("local Lipschitz estimate (IG)", ours_lle, ig_floor(gauss, ft),
        {"Quantus LocalLipschitzEstimate": quantus_lle})

    # relative input / output stability: uniform radius 0.2, the logits of the N x (S + 1)
    # inputs; Quantus divides ROS by the absolute change of the logits (relative_logits=False)
    wide, q_wide = perturbed_rows(uniform_noise(x, S, 0.2, 0, gaussian=False))
    fwd, fwd_what = floor(n * (S + 1))
    for name, ours_fn, cls, kw in (
            ("relative input stability (IG)", stability.relative_input_stability,
             quantus.RelativeInputStability, {}),
            ("relative output stability (IG, absolute logits)",
             stability.relative_output_stability, quantus.RelativeOutputStability,
             {"relative_logits": False})):
        def quantus_rel(cls=cls):
            return cls(nr_samples=S, perturb_func=Injected(q_wide), return_aggregate=False,
                       disable_warnings=True)(**qkw(), explain_func=q_explain)

        def ours_rel(ours_fn=ours_fn, kw=kw):
            return ours_fn(model, explain, x, t, radius=0.2, n_samples=S, generator=gen(),
                           attributions=a, **kw)

        if wanted(name):  # Quantus is NaN where any draw changed the class, ours maxes the rest
            check(name, ours_rel(), quantus_rel())
        ig_wide, ig_what = ig_floor(wide, ft)
        row(name, ours_rel, (lambda ig_wide=ig_wide: (ig_wide(), fwd()), f"{ig_what} + {fwd_what}"),
            {f"Quantus {cls.__name__}": quantus_rel})

    # randomisation sanity checks: IG through xprune.attribute, as `xprune run` passes it;
    # Spearman of the maps' elements (Quantus's; on one channel the same as per pixel)
    def attribute_fn(m, inputs, targets):
        return xprune.attribute(m, inputs, targets, "integrated_gradients", params=IG).values

    similarity = agreement.spearman if x.shape[1] == 1 else \
        (lambda p, q: agreement.spearman(p.reshape(len(p), -1), q.reshape(len(q), -1)))
    suffix = "" if x.shape[1] == 1 else ", elements"
    work = copy.deepcopy(model).eval()
    saved = {k: v.detach().clone() for k, v in work.state_dict().items()}
    modules = dict(work.named_modules())

    def q_attribute(model, inputs, targets, **_):
        return attribute_fn(model, torch.as_tensor(inputs), torch.as_tensor(targets)).numpy()

    for order, q_order in (("cascading", "top_down"), ("independent", "independent")):
        name = f"model parameter randomisation ({order}, IG{suffix})"

        def ours_mprt(order=order):
            return sanity.model_parameter_randomisation(model, x, t, attribute_fn, order=order,
                                                        similarity=similarity,
                                                        generator=gen(), attributions=a)

        def quantus_mprt(q_order=q_order):
            with torch.random.fork_rng(devices=[]):  # Quantus reseeds torch's global RNG
                return quantus.MPRT(similarity_func=correlation_spearman, layer_order=q_order,
                                    seed=42, abs=False, normalise=False,
                                    return_average_correlation=True, disable_warnings=True)(
                    **qkw(), explain_func=q_attribute)

        layers = sanity.parameter_randomisation(model, x, t, attribute_fn, order=order,
                                                similarity=similarity, attributions=a).layers

        def mprt_floor(order=order, layers=layers):
            work.load_state_dict(saved)
            for i, layer in enumerate(layers):
                if order == "independent" and i:
                    work.load_state_dict(saved)
                with torch.no_grad():
                    modules[layer].reset_parameters()
                attribute_fn(work, x, t)

        if wanted(name):  # Quantus seeds every layer with seed + 1: inject that seed
            with mock.patch.object(sanity, "_draw_seed", lambda generator: 43):
                ours = ours_mprt()
            # Quantus also averages in the original model's similarity with itself, 1
            check(name, (1 + len(layers) * ours.numpy()) / (len(layers) + 1), quantus_mprt())
        row(name, ours_mprt,
            (mprt_floor, f"IG on {n:,} rows x {len(layers)} models + their re-initialisation"),
            {"Quantus MPRT": quantus_mprt})

    # random logit: the maps of one drawn other class per sample
    with torch.no_grad():
        classes = int(model(x[:1]).shape[1])
    other = sanity._other_classes(t, classes, gen())  # what the metric draws for this seed

    def ours_logit():
        return sanity.random_logit(model, x, t, attribute_fn, similarity=similarity,
                                   generator=gen(), attributions=a)

    def quantus_logit():
        return quantus.RandomLogit(num_classes=classes, similarity_func=correlation_spearman,
                                   seed=42, abs=False, normalise=False,
                                   disable_warnings=True)(**qkw(), explain_func=q_attribute)

    name = f"random logit (IG{suffix})"
    if wanted(name):  # Quantus draws an index among the other classes with np.random, seed 42
        state = np.random.get_state()  # noqa: NPY002
        np.random.seed(42)  # noqa: NPY002
        index = torch.as_tensor(np.random.randint(0, classes - 1, n))  # noqa: NPY002
        np.random.set_state(state)  # noqa: NPY002
        with mock.patch.object(sanity, "_other_classes", lambda *_: index + (index >= t)):
            ours = ours_logit()
        check(name, ours, quantus_logit())
    row(name, ours_logit, (lambda: attribute_fn(model, x, other), f"IG on {n:,} rows"),
        {"Quantus RandomLogit": quantus_logit})


def render(rows: list[dict], args) -> str:
    lines = ["| size | metric | floor (bare work) | xprune / floor | peer | xprune / peer | "
             "peak memory growth MiB |", "|---|---|---|---:|---|---:|---:|"]
    for r in rows:
        ratio = f"{r['xprune_s'] / r['peer_s']:.2f}" if r["peer_s"] else ""
        lines.append(f"| {r['size']} | {r['metric']} | {r['floor_what']} | "
                     f"{r['xprune_s'] / r['floor_s']:.2f} | {r['peer'] or '-'} | {ratio or '-'} | "
                     f"{r['memory_mib']:.0f} |")
    lines.append("")
    forwards = ("eager (--eager-forwards)" if args.eager_forwards
                else "through its channels-last view of conv models")
    lines.append(f"Default `xprune run`: {args.run_seconds or 'not measured'} s; test suite: "
                 f"{args.suite_seconds or 'not measured'} s. {args.reps} interleaved rounds, "
                 f"medians; {torch.get_num_threads()} torch threads; xprune's forwards "
                 f"{forwards}; load average at the end {os.getloadavg()[0]:.1f} on "
                 f"{os.cpu_count()} CPUs.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="digits,images,tokens")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--metrics", help="comma-separated: only rows whose metric name "
                                          "contains one of these (e.g. deletion,correlation)")
    parser.add_argument("--eager-forwards", action="store_true",
                        help="run xprune's metrics without their channels-last view of conv "
                             "models (xprune.metrics.fast_forwards(False)), for a before/after")
    parser.add_argument("--compare-eager", action="store_true",
                        help="add to every row the same xprune call without the view, timed "
                             "in the same rounds (peer 'xprune, eager forwards')")
    parser.add_argument("--run-seconds", type=float)
    parser.add_argument("--suite-seconds", type=float)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    np.random.seed(0)  # noqa: NPY002  Quantus draws from the global NumPy RNG
    rows = []
    with fast_forwards(not args.eager_forwards):
        for size in args.sizes.split(","):
            model, x = SIZES[size]()
            rows += rows_for(size, model, x, args.reps,
                             args.metrics.split(",") if args.metrics else None,
                             args.compare_eager)
    print(render(rows, args))


if __name__ == "__main__":
    main()
