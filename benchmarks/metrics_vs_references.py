"""Time xprune's metrics against Quantus 0.6 and Captum on the same model, inputs and maps.

Usage: python benchmarks/metrics_vs_references.py [--n 256] [--scaling] [--device cpu] [--quick]
       [--threads T] [--only metric,metric]

One run, one model (the digits CNN, 20 epochs), the first N test images (the 360
test images tiled for N > 360), targets = the model's predictions, and for each of
Saliency (signed gradient) and Integrated Gradients (16 steps, zero baseline) the
same maps and the same explainer for every library. For every metric the table
gives the seconds of one call (best of the repeats shown), samples per second, the
ratio xprune / peer, whether the values agree, and each time divided by the
*floor*: the model forward (and, for explainers, backward) passes the metric
cannot avoid, timed alone in batches of 4,096 rows. ``--scaling`` times three
metrics at N = 256, 1,024 and 4,096 (fresh subprocesses: one for the time, one for
the peak memory).
A summary of the targets of issue 8 closes the output.

On a machine shared with other busy processes, torch's intra-op threads wait for
each other at every parallel op; ``--threads 1`` then gives steadier numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

import xprune
from xprune.attribution import DEFAULT_MAX_ROWS
from xprune.data import load_digits_split
from xprune.metrics import complexity, faithfulness, stability
from xprune.models import DigitsCNN, train

METHODS = {"saliency": {"abs": False}, "integrated_gradients": {"n_steps": 16}}
LABEL = {"saliency": "Saliency", "integrated_gradients": "IG"}
FAST = 3.0          # seconds: a row whose slowest first call is under this runs >= 3 times,
SLOW = 10.0         # ... under this twice, else once
SCALING_N = (256, 1024, 4096)
SCALING_METRICS = ("faithfulness_correlation", "deletion_curve", "max_sensitivity")


@dataclass(frozen=True)
class Params:
    """The metric parameters, identical for xprune, Quantus and Captum."""

    n_runs: int = 100               # faithfulness correlation: random subsets per sample
    subset_size: int = 16           # ... features per subset (a quarter of the 64 pixels)
    radius: float = 0.1             # max/avg-sensitivity: uniform noise in [-r, r]
    n_samples: int = 10             # ... and local Lipschitz: perturbations per sample
    lipschitz_std: float = 0.1      # local Lipschitz: Gaussian noise sigma
    infidelity_std: float = 0.1     # infidelity: Gaussian perturbation sigma
    infidelity_samples: int = 10
    road_percent: tuple[int, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90)
    quantus_default_batch: bool = True  # also time Quantus with its own batch_size=64
    repeats: int = 3                # at least this many runs of each call of a fast row ...
    row_budget: float = 3.0         # ... and more (up to MAX_REPEATS) while a row's runs fit here

    def caption(self) -> str:
        return (f"faithfulness correlation: {self.n_runs} subsets of {self.subset_size} pixels, "
                f"baseline 0, logits; pixel flipping / deletion: 1 pixel per step (64 steps), "
                f"baseline 0, softmax probability; max-/avg-sensitivity: {self.n_samples} "
                f"perturbations uniform in [-{self.radius}, {self.radius}], relative "
                f"(Frobenius); local Lipschitz: {self.n_samples} Gaussian perturbations "
                f"sigma {self.lipschitz_std} (for these three Quantus's default is 200 "
                f"perturbations: with IG, about 70 s per metric here); sparseness: Gini of |a|; ROAD: MoRF, "
                f"{list(self.road_percent)} % removed, imputation noise 0, accuracy; "
                f"infidelity: {self.infidelity_samples} Gaussian perturbations sigma "
                f"{self.infidelity_std}, logits, not normalised. Quantus: normalise=False, "
                f"abs=False (abs=True for Sparseness), one batch of N (batch_size=N"
                + ("; rows 'Quantus bs=64' keep its default batch_size=64)."
                   if self.quantus_default_batch else ")."))


QUICK = Params(n_runs=20, n_samples=3, infidelity_samples=3, road_percent=(10, 50, 90),
               quantus_default_batch=False, repeats=2, row_budget=0.5)
MAX_REPEATS = 15
TIE = 1.05          # "not slower": xprune / peer up to this counts as a tie (timing noise)


# --- timing -------------------------------------------------------------------------------

def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _once(fn: Callable[[], object], device: torch.device) -> tuple[float, object]:
    _sync(device)
    start = time.perf_counter()
    value = fn()
    _sync(device)
    return time.perf_counter() - start, value


def measure(fns: dict[str, Callable[[], object]], device: torch.device, p: Params
            ) -> tuple[dict[str, float], dict[str, object], int]:
    """Best seconds of each function over interleaved runs, and the first call's value.

    A row (xprune, its peers and the floor, run one after the other, so that they
    share the machine's load) runs ``p.repeats`` times, or more (up to
    ``MAX_REPEATS``) while all its runs fit in ``p.row_budget`` seconds, when its
    slowest first call takes under ``FAST`` seconds; twice under ``SLOW``
    seconds; else once. Every function of a row runs the same number of times.
    """
    best, values = {}, {}
    for name, fn in fns.items():
        best[name], values[name] = _once(fn, device)
    reps = 2 if max(best.values()) < SLOW else 1
    if max(best.values()) < FAST:
        fit = math.floor(p.row_budget / max(sum(best.values()), 1e-9))
        reps = min(MAX_REPEATS, max(p.repeats, fit))
    for _ in range(reps - 1):
        for name, fn in fns.items():
            best[name] = min(best[name], _once(fn, device)[0])
    return best, values, reps


# --- the floor: only the passes a metric needs --------------------------------------------

class Floor:
    """Times ``rows`` model passes in batches of ``max_rows`` rows, nothing else.

    The rows are a pre-built block of (tiled) inputs on the model's device, so the
    time is that of the forward passes (with ``backward=True`` also the input
    gradient of the target logit, which is what an explainer call costs at least).
    """

    def __init__(self, model: torch.nn.Module, x: torch.Tensor, t: torch.Tensor,
                 device: torch.device, max_rows: int = DEFAULT_MAX_ROWS) -> None:
        reps = math.ceil(max_rows / x.shape[0])
        self.model, self.device, self.max_rows = model, device, max_rows
        self.block = x.repeat(reps, *[1] * (x.dim() - 1))[:max_rows].to(device)
        self.targets = t.repeat(reps)[:max_rows, None].to(device)

    def run(self, rows: int, *, backward: bool) -> None:
        for start in range(0, rows, self.max_rows):
            n = min(self.max_rows, rows - start)
            if backward:
                xb = self.block[:n].detach().requires_grad_()
                out = self.model(xb).gather(1, self.targets[:n]).sum()
                torch.autograd.grad(out, xb)
            else:
                with torch.no_grad():
                    self.model(self.block[:n]).gather(1, self.targets[:n])


def floor_rows(metric: str, method: str, n: int, p: Params) -> tuple[int, bool]:
    """(rows, backward) of the model passes ``metric`` needs on n samples."""
    steps = METHODS["integrated_gradients"]["n_steps"] if method == "integrated_gradients" else 1
    d = 64
    return {
        "faithfulness_correlation": (n * (p.n_runs + 1), False),
        "deletion_curve": (n * (d + 1), False),
        "road_curve": (n * len(p.road_percent), False),
        "infidelity": (n * (p.infidelity_samples + 1), False),
        "gini_index": (0, False),
        "max_sensitivity": (n * (p.n_samples + 1) * steps, True),
        "avg_sensitivity": (n * (p.n_samples + 1) * steps, True),
        "local_lipschitz_estimate": (n * (p.n_samples + 1) * steps, True),
    }[metric]


# --- value comparisons --------------------------------------------------------------------

def as_array(values: object) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().double().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def exact(ours: object, theirs: object) -> tuple[bool, str]:
    """Per-sample values equal: max |diff| <= 1e-5 * max(1, |value|)."""
    a, b = as_array(ours), as_array(theirs)
    diff = np.abs(a - b)
    ok = bool(np.all(diff <= 1e-5 * np.maximum(1.0, np.abs(b))))
    return ok, f"exact: max abs diff {diff.max():.1e}"


def in_distribution(ours: object, theirs: object) -> tuple[bool, str]:
    """Means within 3 standard errors (of the difference of two independent means)."""
    a, b = as_array(ours), as_array(theirs)
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    se = math.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)
    gap = abs(a.mean() - b.mean())
    return gap < 3 * se, (f"means {a.mean():.4f} vs {b.mean():.4f}, |diff| = "
                          f"{gap / se:.1f} SE (< 3 SE)")


# --- the setup ----------------------------------------------------------------------------

@dataclass
class Setup:
    model: torch.nn.Module
    x: torch.Tensor                     # (N, 1, 8, 8), CPU
    t: torch.Tensor                     # (N,), the model's predictions
    maps: dict[str, torch.Tensor]       # method -> (N, 1, 8, 8), CPU
    explainers: dict[str, Callable]     # method -> explain_fn(inputs, target)
    device: torch.device


def tiled(x: torch.Tensor, n: int) -> torch.Tensor:
    return x.repeat(math.ceil(n / x.shape[0]), 1, 1, 1)[:n].clone()


def trained_model(device: torch.device) -> tuple[DigitsCNN, object, float]:
    data = load_digits_split(seed=0)
    torch.manual_seed(0)
    model = DigitsCNN()
    start = time.perf_counter()
    train(model, data.x_train, data.y_train, epochs=20, lr=0.003, seed=0)
    return model.to(device).eval(), data, time.perf_counter() - start


def make_setup(model: DigitsCNN, x: torch.Tensor, device: torch.device) -> Setup:
    with torch.no_grad():
        t = model(x.to(device)).argmax(dim=1).cpu()
    maps, explainers = {}, {}
    for method, params in METHODS.items():
        maps[method] = xprune.attribute(model, x, t, method, params=params).values
        explainers[method] = xprune.explainer(model, method, params=params)
    return Setup(model, x, t, maps, explainers, device)


def uniform_noise(x: torch.Tensor, s: int, scale: float, seed: int, *, gaussian: bool
                  ) -> torch.Tensor:
    """The (N, s, *F) noise xprune's stability metrics draw for ``Generator().manual_seed(seed)``:
    sample by sample in batch order, float32 (as documented in xprune.metrics.stability)."""
    gen = torch.Generator().manual_seed(seed)
    draws = [torch.randn(s, *x.shape[1:], generator=gen) * scale if gaussian
             else (torch.rand(s, *x.shape[1:], generator=gen) * 2 - 1) * scale
             for _ in range(x.shape[0])]
    return torch.stack(draws).to(x.dtype)


def infidelity_noise(x: torch.Tensor, s: int, std: float, seed: int) -> torch.Tensor:
    """The (N, s, *F) perturbations I of xprune's infidelity: one draw per pass of
    ``max_rows // s`` samples' rows (sample-major, as Captum repeat-interleaves), in float32
    (float64 for float64 inputs)."""
    gen = torch.Generator().manual_seed(seed)
    chunk, parts = max(1, DEFAULT_MAX_ROWS // s), []
    draw = torch.float64 if x.dtype == torch.float64 else torch.float32
    for start in range(0, x.shape[0], chunk):
        c = min(chunk, x.shape[0] - start)
        parts.append(torch.empty((c * s, *x.shape[1:]), dtype=draw).normal_(0.0, std,
                                                                          generator=gen))
    return torch.cat(parts).to(x.dtype).reshape(x.shape[0], s, *x.shape[1:])


class Injected:
    """A Quantus ``perturb_func`` handing out pre-drawn perturbed inputs, draw j on call j."""

    def __init__(self, perturbed: np.ndarray) -> None:  # (N, S, d)
        self.perturbed, self.calls = perturbed, 0

    def __call__(self, arr: np.ndarray, indices=None, **kwargs) -> np.ndarray:
        out = self.perturbed[:, self.calls % self.perturbed.shape[1]].reshape(arr.shape).copy()
        self.calls += 1
        return out


# --- the benchmark rows -------------------------------------------------------------------

@dataclass
class Row:
    metric: str
    method: str
    peer: str
    ours_s: float
    peer_s: float | None
    floor_s: float | None
    floor_what: str
    reps: int
    agree: bool | None
    comparison: str
    n: int


def run_table(s: Setup, p: Params, only: set[str] | None = None) -> list[Row]:
    import captum.metrics
    import quantus

    n, dev = s.x.shape[0], str(s.device)
    rows: list[Row] = []

    def qkw(method: str, *, a: bool = True, explain: bool = False, **extra) -> dict:
        kw = dict(model=s.model, x_batch=s.x.numpy().copy(), y_batch=s.t.numpy().copy(),
                  a_batch=s.maps[method].numpy().copy() if a else None, channel_first=True,
                  device=dev, batch_size=n)
        kw.update(extra)
        if explain:
            fn = s.explainers[method]
            kw["explain_func"] = lambda model, inputs, targets, **_: fn(
                torch.as_tensor(inputs), torch.as_tensor(targets)).numpy()
        return kw

    floor = Floor(s.model, s.x, s.t, s.device)

    def add(metric: str, method: str, ours: Callable, peers: dict[str, tuple[Callable, Callable]]
            ) -> None:
        """Time ``ours`` and each peer together; ``peers[name] = (call, compare(ours, theirs))``."""
        if only is not None and metric not in only:
            return
        np.random.seed(0)  # noqa: NPY002  Quantus draws from the global NumPy RNG
        count, backward = floor_rows(metric, method, n, p)
        fns = {"xprune": ours, **{name: call for name, (call, _) in peers.items()}}
        if count:
            fns["floor"] = lambda: floor.run(count, backward=backward)
        secs, values, reps = measure(fns, s.device, p)
        floor_what = f"{count:,} {'fwd+bwd' if backward else 'fwd'}" if count else "none"
        for name, (_, compare) in peers.items():
            ok, text = compare(values["xprune"], values[name])
            rows.append(Row(metric, method, name, secs["xprune"], secs[name],
                            secs.get("floor"), floor_what, reps, ok, text, n))

    def seeded(fn: Callable) -> Callable:
        def call():
            np.random.seed(0)  # noqa: NPY002
            return fn()
        return call

    def gen() -> torch.Generator:
        return torch.Generator().manual_seed(0)

    xm = s.x.to(s.device)
    for method in METHODS:
        a, explain = s.maps[method], s.explainers[method]

        # faithfulness correlation: Quantus draws its subsets from np.random. Also with
        # Quantus's default batch_size=64 (more, smaller forward passes)
        def faith_quantus(bs, method=method):
            return seeded(lambda: np.asarray(quantus.FaithfulnessCorrelation(
                subset_size=p.subset_size, nr_runs=p.n_runs, perturb_baseline=0.0, abs=False,
                normalise=False, return_aggregate=False, disable_warnings=True)(
                **qkw(method, batch_size=bs), softmax=False)))

        add("faithfulness_correlation", method,
            lambda a=a: faithfulness.faithfulness_correlation(
                s.model, s.x, a, s.t, subset_size=p.subset_size, n_runs=p.n_runs,
                generator=gen()),
            {"Quantus": (faith_quantus(n), in_distribution),
             **({"Quantus bs=64": (faith_quantus(64), in_distribution)}
                if p.quantus_default_batch else {})})

        # pixel flipping / deletion curve (Quantus drops the unperturbed first point)
        def flip_quantus(bs, method=method):
            return lambda: np.asarray(quantus.PixelFlipping(
                features_in_step=1, perturb_baseline=0.0, abs=False, normalise=False,
                return_aggregate=False, disable_warnings=True)(
                **qkw(method, batch_size=bs), softmax=True))

        def flip_compare(ours, theirs):
            return exact(as_array(ours)[:, 1:], theirs)

        add("deletion_curve", method,
            lambda a=a: faithfulness.deletion_curve(s.model, s.x, a, s.t).values,
            {"Quantus": (flip_quantus(n), flip_compare),
             **({"Quantus bs=64": (flip_quantus(64), flip_compare)}
                if p.quantus_default_batch else {})})

        # stability: the same perturbations injected into Quantus and Captum
        box = uniform_noise(s.x, p.n_samples, p.radius, 0, gaussian=False)
        box_q = (s.x[:, None] + box).reshape(n, p.n_samples, -1).numpy()

        def captum_explain(inputs, target, explain=explain):
            return (explain(inputs[0], target),)

        def captum_box(inputs, radius, box=box):
            return (inputs + box.reshape(inputs.shape).to(inputs.device),)

        for name, cls in (("max_sensitivity", quantus.MaxSensitivity),
                          ("avg_sensitivity", quantus.AvgSensitivity)):
            fn = getattr(stability, name)
            peers = {"Quantus": (lambda cls=cls, method=method, box_q=box_q: np.asarray(cls(
                nr_samples=p.n_samples, lower_bound=p.radius, perturb_func=Injected(box_q),
                abs=False, normalise=False, return_aggregate=False, disable_warnings=True)(
                **qkw(method, a=False, explain=True))), exact)}
            if name == "max_sensitivity":
                peers["Captum"] = (lambda captum_explain=captum_explain, captum_box=captum_box:
                                   captum.metrics.sensitivity_max(
                                       captum_explain, s.x.clone(), perturb_func=captum_box,
                                       perturb_radius=p.radius, n_perturb_samples=p.n_samples,
                                       target=s.t), exact)
            add(name, method,
                lambda fn=fn, explain=explain: fn(explain, s.x, s.t, radius=p.radius,
                                                  n_samples=p.n_samples, generator=gen()),
                peers)

        gauss = uniform_noise(s.x, p.n_samples, p.lipschitz_std, 0, gaussian=True)
        gauss_q = (s.x[:, None] + gauss).reshape(n, p.n_samples, -1).numpy()
        add("local_lipschitz_estimate", method,
            lambda explain=explain: stability.local_lipschitz_estimate(
                explain, s.x, s.t, noise_std=p.lipschitz_std, n_samples=p.n_samples,
                generator=gen()),
            {"Quantus": (lambda method=method, gauss_q=gauss_q: np.asarray(
                quantus.LocalLipschitzEstimate(
                    nr_samples=p.n_samples, perturb_func=Injected(gauss_q), abs=False,
                    normalise=False, return_aggregate=False, disable_warnings=True)(
                    **qkw(method, a=False, explain=True))), exact)})

        # sparseness: Quantus adds 1e-7 to every |a_i|
        add("gini_index", method, lambda a=a: complexity.gini_index(a),
            {"Quantus": (lambda method=method: np.asarray(quantus.Sparseness(
                abs=True, normalise=False, return_aggregate=False, disable_warnings=True)(
                **qkw(method))), exact)})

        # ROAD without imputation noise: Quantus returns the batch accuracy per percentage
        def road_ours(a=a):
            return faithfulness.road_curve(
                s.model, s.x, a, s.t, percentages=tuple(q / 100 for q in p.road_percent),
                noise_std=0.0, output="accuracy")

        def road_quantus(a=a, method=method):
            return quantus.ROAD(noise=0.0, percentages=list(p.road_percent), abs=False,
                                normalise=False, return_aggregate=False,
                                disable_warnings=True)(**{**qkw(method),
                                                          "a_batch": a.numpy().copy()})

        def road_compare(ours, theirs, a=a):
            ok, text = exact(as_array(ours).mean(axis=0), list(theirs.values()))
            flat = a.reshape(n, -1)
            tied = float(np.mean([flat.shape[1] - len(torch.unique(r)) for r in flat]))
            if ok or tied == 0:
                return ok, text
            # Quantus ranks with np.argsort(-a) (quicksort: tied pixels in no set order),
            # xprune by a stable sort (ties by index). Break the ties the same way for both,
            # untimed, to see whether the ranking of ties is the whole difference.
            eps = torch.arange(flat.shape[1], 0, -1, dtype=a.dtype).reshape(a.shape[1:]) * 1e-12
            again, _ = exact(as_array(road_ours(a + eps)).mean(axis=0),
                             list(road_quantus(a + eps).values()))
            return ok, (f"{text}; {tied:.0f} of 64 map values tied per sample (mean), ordered "
                        f"differently by Quantus's unstable argsort; with ties broken by "
                        f"index for both: {'exact' if again else 'still differs'}")

        add("road_curve", method, road_ours, {"Quantus": (road_quantus, road_compare)})

        # infidelity (Yeh et al.): the same Gaussian perturbations for all three
        noise = infidelity_noise(s.x, p.infidelity_samples, p.infidelity_std, 0)
        pert_q = (s.x[:, None] - noise).reshape(n, p.infidelity_samples, -1).numpy()

        def captum_perturb(batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            gen_c = torch.Generator().manual_seed(0)
            draw = torch.float64 if batch.dtype == torch.float64 else torch.float32
            i = torch.empty(batch.shape, dtype=draw).normal_(
                0.0, p.infidelity_std, generator=gen_c).to(device=batch.device, dtype=batch.dtype)
            return i, batch - i

        add("infidelity", method,
            lambda a=a: faithfulness.infidelity(
                s.model, s.x, a, s.t, noise_std=p.infidelity_std,
                n_samples=p.infidelity_samples, generator=gen()),
            {"Quantus": (lambda method=method, pert_q=pert_q: np.asarray(quantus.Infidelity(
                perturb_patch_sizes=[8], n_perturb_samples=p.infidelity_samples,
                perturb_func=Injected(pert_q), loss_func="mse", abs=False, normalise=False,
                return_aggregate=False, disable_warnings=True)(**qkw(method), softmax=False)),
                exact),
             "Captum": (lambda a=a: captum.metrics.infidelity(
                 s.model, captum_perturb, xm, a.to(s.device), target=s.t.to(s.device),
                 n_perturb_samples=p.infidelity_samples, normalize=False),
                 # one Captum call draws all N * S perturbations; xprune draws per chunk
                 exact if n <= DEFAULT_MAX_ROWS // p.infidelity_samples else in_distribution)})
    return rows


LONG = {"faithfulness_correlation": "faithfulness correlation",
        "deletion_curve": "pixel flipping / deletion curve",
        "max_sensitivity": "max-sensitivity", "avg_sensitivity": "avg-sensitivity",
        "local_lipschitz_estimate": "local Lipschitz estimate",
        "gini_index": "sparseness (Gini)", "road_curve": "ROAD (MoRF curve)",
        "infidelity": "infidelity"}


def fmt(v: float | None, spec: str = ".3f") -> str:
    return "—" if v is None else format(v, spec)


def print_table(rows: list[Row]) -> None:
    print("| metric | map | peer | xprune s | xprune samples/s | peer s | xprune / peer | "
          "floor passes (rows) | floor s | xprune / floor | peer / floor | reps | agree | "
          "comparison |")
    print("|---|---|---|---:|---:|---:|---:|---|---:|---:|---:|---:|---|---|")
    for r in rows:
        ratio = r.ours_s / r.peer_s if r.peer_s else None
        of = r.ours_s / r.floor_s if r.floor_s else None
        pf = r.peer_s / r.floor_s if r.floor_s and r.peer_s else None
        print(f"| {LONG[r.metric]} | {LABEL[r.method]} | {r.peer} | {r.ours_s:.3f} | "
              f"{r.n / r.ours_s:,.0f} | {fmt(r.peer_s)} | {fmt(ratio, '.2f')} | {r.floor_what} | "
              f"{fmt(r.floor_s)} | {fmt(of, '.2f')} | {fmt(pf, '.2f')} | {r.reps} | "
              f"{'yes' if r.agree else 'NO'} | {r.comparison} |")


# --- scaling: one subprocess per (metric, N), for time and peak memory ---------------------

def child(path: str, metric: str, *, memory_only: bool = False) -> None:
    """Run in a fresh process: time ``metric`` once (after a warm-up on 8 samples), report its
    peak-RSS growth, then (unless ``memory_only``) time it again and its floor. Prints one
    JSON line."""
    blob = torch.load(path, weights_only=True)
    device = torch.device(blob["device"])
    model = DigitsCNN()
    model.load_state_dict(blob["state"])
    model.to(device).eval()
    p = Params(**json.loads(blob["params"]))
    x, t, a = blob["x"], blob["t"], blob["a"]
    explain = xprune.explainer(model, "saliency", params=METHODS["saliency"])
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    call = {
        "faithfulness_correlation": lambda m: faithfulness.faithfulness_correlation(
            model, x[:m], a[:m], t[:m], subset_size=p.subset_size, n_runs=p.n_runs,
            generator=gen()),
        "deletion_curve": lambda m: faithfulness.deletion_curve(model, x[:m], a[:m], t[:m]),
        "max_sensitivity": lambda m: stability.max_sensitivity(
            explain, x[:m], t[:m], radius=p.radius, n_samples=p.n_samples, generator=gen()),
    }[metric]
    n = x.shape[0]
    call(8)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        cuda_before = torch.cuda.memory_allocated(device)
    reset = _reset_peak_rss()
    if reset:  # Linux: this process's own peak (VmHWM), reset to its current RSS just now
        before = _proc_status_kib("VmRSS")
        first, _ = _once(lambda: call(n), device)
        after, scale = _proc_status_kib("VmHWM"), 1024
    else:  # elsewhere: ru_maxrss, the peak since the process started (bytes on macOS)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        first, _ = _once(lambda: call(n), device)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        scale = 1 if platform.system() == "Darwin" else 1024
    out = {"metric": metric, "n": n, "peak_rss_growth_mb": (after - before) * scale / 2 ** 20,
           "peak_rss_mb": after * scale / 2 ** 20, "reset": reset}
    if device.type == "cuda":
        out["cuda_peak_growth_mb"] = (torch.cuda.max_memory_allocated(device)
                                      - cuda_before) / 2 ** 20
    if memory_only:
        print(json.dumps(out))
        return
    again, _ = _once(lambda: call(n), device)
    out["seconds"] = min(first, again)
    rows, backward = floor_rows(metric, "saliency", n, p)
    floor = Floor(model, x, t, device)
    floor.run(min(rows, DEFAULT_MAX_ROWS), backward=backward)
    out["floor_seconds"] = min(_once(lambda: floor.run(rows, backward=backward), device)[0]
                               for _ in range(2))
    print(json.dumps(out))


def _reset_peak_rss() -> bool:
    """Reset the process's peak RSS to its current RSS (Linux: ``echo 5 > clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _proc_status_kib(key: str) -> int:
    """``VmRSS`` (current) or ``VmHWM`` (peak) resident set of this process, in KiB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {key} in /proc/self/status")


def slope(ns: list[int], ys: list[float]) -> float:
    """Least-squares slope of log(y) against log(N)."""
    return float(np.polyfit(np.log(ns), np.log(ys), 1)[0])


def run_scaling(model: DigitsCNN, x_test: torch.Tensor, device: torch.device, p: Params
                ) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in SCALING_N:
            x = tiled(x_test, n)
            with torch.no_grad():
                t = model(x.to(device)).argmax(dim=1).cpu()
            a = xprune.attribute(model, x, t, "saliency", params=METHODS["saliency"]).values
            path = os.path.join(tmp, f"n{n}.pt")
            torch.save({"state": {k: v.cpu() for k, v in model.state_dict().items()},
                        "x": x, "t": t, "a": a, "device": str(device),
                        "params": json.dumps({k: getattr(p, k) for k in (
                            "n_runs", "subset_size", "radius", "n_samples")})}, path)
            for metric in SCALING_METRICS:
                timed = _run_child(metric, n, path)
                memory = _run_child(metric, n, path, env={**os.environ, **MALLOC_ENV})
                timed.update({k: v for k, v in memory.items() if k not in ("seconds",
                                                                           "floor_seconds")})
                results.append(timed)
    return results


# glibc's malloc raises its mmap threshold (up to 32 MiB) each time a large block is freed;
# blocks below it then come from the heap, whose freed holes stay resident. The peak RSS of
# a chunked loop then varies from run to run by tens of MB (a deletion curve on N = 1,024:
# 101 to 148 MB in three runs of the same call) and can look like growth in N. A fixed
# threshold returns every block of 64 KiB or more to the system when freed, so the peak is
# that of the memory actually held (the same call: 83.0 to 83.2 MB). It also slows large
# allocations, so the memory is measured in a child of its own and the times in another.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}


def _run_child(metric: str, n: int, path: str, env: dict[str, str] | None = None) -> dict:
    """One scaling child; with ``env`` (the memory run) only its first call is timed."""
    command = [sys.executable, __file__, "--child", metric, "--child-data", path,
               "--threads", str(torch.get_num_threads())]
    if env is not None:
        command.append("--child-memory-only")
    proc = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
    if proc.returncode:
        raise RuntimeError(f"scaling child {metric} N={n} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def print_scaling(results: list[dict], device: torch.device) -> dict[str, dict]:
    print("| metric (Saliency map) | N | xprune s | samples/s | floor s | xprune / floor | "
          "peak RSS growth MB | " + ("CUDA peak growth MB | " if device.type == "cuda" else "")
          + "process peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if device.type == "cuda" else "")
          + "---:|")
    summary = {}
    for metric in SCALING_METRICS:
        mine = [r for r in results if r["metric"] == metric]
        for r in mine:
            cuda = f"{r['cuda_peak_growth_mb']:.1f} | " if device.type == "cuda" else ""
            print(f"| {LONG[metric]} | {r['n']:,} | {r['seconds']:.3f} | "
                  f"{r['n'] / r['seconds']:,.0f} | {r['floor_seconds']:.3f} | "
                  f"{r['seconds'] / r['floor_seconds']:.2f} | {r['peak_rss_growth_mb']:.1f} | "
                  f"{cuda}{r['peak_rss_mb']:.0f} |")
        ns = [r["n"] for r in mine]
        summary[metric] = {"exponent": slope(ns, [r["seconds"] for r in mine]),
                           "floor_exponent": slope(ns, [r["floor_seconds"] for r in mine]),
                           "memory": [r["peak_rss_growth_mb"] for r in mine]}
    if not all(r["reset"] for r in results):
        print("\n(/proc/self/clear_refs was not writable: growth is over the process's earlier "
              "peak and reads 0 when the call stays below it.)")
    print()
    print("| metric | time exponent (log-log slope) | floor exponent | peak RSS growth "
          "MB at N = " + " / ".join(f"{n:,}" for n in SCALING_N)
          + f" | KB per extra sample, N = {SCALING_N[-2]:,} to {SCALING_N[-1]:,} |")
    print("|---|---:|---:|---|---:|")
    for metric, v in summary.items():
        per = (v["memory"][-1] - v["memory"][-2]) * 1024 / (SCALING_N[-1] - SCALING_N[-2])
        print(f"| {LONG[metric]} | {v['exponent']:.2f} | {v['floor_exponent']:.2f} | "
              + " / ".join(f"{m:.1f}" for m in v["memory"]) + f" | {per:.1f} |")
    return summary


# --- summary ------------------------------------------------------------------------------

def _table_targets(rows: list[Row], line: Callable[[bool, str], None]) -> None:
    mine = {(r.metric, r.method): r for r in rows}
    over = [(k, r.ours_s / r.floor_s) for k, r in mine.items() if r.floor_s]
    bad = [f"{LONG[m]} / {LABEL[meth]} {v:.2f}x" for (m, meth), v in over if v > 1.25]
    if over:
        line(not bad, "each xprune metric within 1.25x of its floor"
             + (f"; over: {', '.join(bad)}" if bad else "")
             + " (sparseness has no model pass, so no floor)")
    for metric in ("faithfulness_correlation", "deletion_curve"):
        speed = [(f"{LABEL[r.method]} vs {r.peer}", r.peer_s / r.ours_s) for r in rows
                 if r.metric == metric and r.peer.startswith("Quantus")]
        if not speed:
            continue
        line(all(v >= 5 for _, v in speed), f">= 5x faster than Quantus on {LONG[metric]}: "
             + ", ".join(f"{m} {v:.1f}x" for m, v in speed))
    for peer, what in (("Quantus", "any shared metric"),
                       ("Captum", "infidelity and sensitivity_max")):
        mine = [r for r in rows if r.peer.startswith(peer)]
        if not mine:
            continue
        slower = [f"{LONG[r.metric]} / {LABEL[r.method]} ({r.peer}) {r.ours_s / r.peer_s:.2f}x"
                  for r in mine if r.ours_s > TIE * r.peer_s]
        ties = [f"{LONG[r.metric]} / {LABEL[r.method]} {r.ours_s / r.peer_s:.2f}x"
                for r in mine if r.peer_s < r.ours_s <= TIE * r.peer_s]
        line(not slower, f"never slower than {peer} on {what} (slower = xprune / {peer} > "
             f"{TIE})" + (f"; slower: {', '.join(slower)}" if slower else "")
             + (f"; within {TIE} (timing noise): {', '.join(ties)}" if ties else ""))
    disagree = [f"{LONG[r.metric]} / {LABEL[r.method]} vs {r.peer}" for r in rows if not r.agree]
    line(not disagree, "values agree with the peers"
         + (f"; disagree: {', '.join(disagree)}" if disagree else ""))


def print_summary(rows: list[Row], scaling: dict[str, dict] | None) -> None:
    def line(ok: bool, text: str) -> None:
        print(f"- [{'met' if ok else 'NOT met'}] {text}")

    print("## Targets of issue 8\n")
    if not rows:
        print("- [not measured] the comparison table (no metric selected)")
    else:
        _table_targets(rows, line)
    if scaling is None:
        print("- [not measured] time linear in N (exponent <= 1.1): run with --scaling")
        return
    exps = ", ".join(f"{LONG[m]} {v['exponent']:.2f}" for m, v in scaling.items())
    line(all(v["exponent"] <= 1.1 for v in scaling.values()),
         f"time linear in N (exponent <= 1.1): {exps}")
    grows = [f"{LONG[m]} ({v['memory'][-2]:.0f} -> {v['memory'][-1]:.0f} MB)"
             for m, v in scaling.items() if v["memory"][-1] > 1.25 * v["memory"][-2] + 16]
    line(not grows, "peak memory bounded by the chunk size, not N (peak RSS growth at N = "
         "4,096 at most 1.25x that at 1,024, plus 16 MB)"
         + (f"; grows with N: {', '.join(grows)}" if grows else ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--scaling", action="store_true",
                        help="time 3 metrics at N = 256, 1,024, 4,096 (xprune and floor)")
    parser.add_argument("--quick", action="store_true",
                        help="fewer subsets, perturbations and percentages, fewer repeats")
    parser.add_argument("--only", help="comma-separated metric names (default: all)")
    parser.add_argument("--threads", type=int,
                        help="torch intra-op threads (default: torch's default)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-data", help=argparse.SUPPRESS)
    parser.add_argument("--child-memory-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # Quantus warns on every call; IG's coarse-integral warning
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        child(args.child_data, args.child, memory_only=args.child_memory_only)
        return
    import captum
    import quantus

    start = time.perf_counter()
    device = torch.device(args.device)
    p = QUICK if args.quick else Params()
    model, data, train_s = trained_model(device)
    s = make_setup(model, tiled(data.x_test, args.n), device)
    ig = xprune.attribute(model, s.x, s.t, "integrated_gradients",
                          params=METHODS["integrated_gradients"])
    total = ig.values.reshape(args.n, -1).double().sum(1)
    rel = (ig.delta.double().abs() / (total - ig.delta.double()).abs().clamp_min(1e-12))
    load = os.getloadavg()
    print(f"# xprune vs Quantus {quantus.__version__} and Captum {captum.__version__}\n")
    print(f"N = {args.n} digits test images{' (360 tiled)' if args.n > 360 else ''}, device "
          f"{device}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
          f"numpy {np.__version__}; load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} "
          f"on {os.cpu_count()} CPUs at start; model trained in {train_s:.1f} s; targets = "
          f"predictions. Maps: Saliency signed (abs=False); IG n_steps=16, zero baseline, "
          f"Gauss-Legendre (median relative completeness error {float(rel.median()):.3f}).\n")
    if load[0] >= (os.cpu_count() or 1) and torch.get_num_threads() > 1:
        print(f"Warning: the load average ({load[0]:.1f}) is at or above the {os.cpu_count()} "
              f"CPUs. Other processes then hold the cores torch's {torch.get_num_threads()} "
              f"intra-op threads wait for at every parallel op, which adds milliseconds per "
              f"op and most to code made of many small calls; --threads 1 gives numbers that "
              f"depend less on the load.\n")
    print(f"Parameters{' (--quick)' if args.quick else ''}: {p.caption()}\n")
    print(f"Timing: time.perf_counter around one call. The calls of a row (xprune, its peers, "
          f"the floor) run one after the other, so that they share the machine's load; a row "
          f"whose slowest first call is under {FAST:.0f} s runs {p.repeats} times or more (as "
          f"many as fit in {p.row_budget:g} s, at most {MAX_REPEATS}), interleaved, best time "
          f"kept; rows under {SLOW:.0f} s run twice, slower ones once (column reps). "
          f"Stability metrics start from the explainer (Quantus computes the unperturbed "
          f"maps itself, as xprune and Captum do). Floor: the forward (+ backward for "
          f"explainers) passes the metric needs, in batches of {DEFAULT_MAX_ROWS} rows, and "
          f"nothing else. Agreement: 'exact' = per-sample values with the same perturbations "
          f"injected, max |diff| <= 1e-5 * max(1, |value|); 'means' = Quantus's own np.random "
          f"draws (seeded 0), batch means within 3 standard errors. Deletion vs PixelFlipping "
          f"compares the curves without our unperturbed first point; ROAD compares batch-mean "
          f"accuracy per percentage (Quantus returns only that); Quantus Infidelity is given "
          f"one 8x8 patch and our perturbations (perturb_func = x - I), which makes it Yeh et "
          f"al.'s infidelity.\n")
    only = set(args.only.split(",")) if args.only else None
    rows = run_table(s, p, only)
    print_table(rows)
    print()
    scaling = None
    if args.scaling:
        print("## Scaling (xprune only, Saliency map, parameters as above; one fresh process "
              "per metric and N)\n")
        print("Time: best of 2 calls after a warm-up on 8 samples. Memory: peak RSS growth = "
              "the process's peak resident set during the first call (VmHWM of "
              "/proc/self/status, after resetting it to the current RSS through "
              "/proc/self/clear_refs) minus its RSS just before the call (model, data and "
              "maps loaded). It counts every page the call touches, torch tensors included, "
              "but not memory the allocator reuses from before the call. (resource.getrusage's "
              "ru_maxrss is no use here: in a child started by fork + exec it starts at the "
              "parent's size.) Memory is measured in a second child started with "
              "MALLOC_MMAP_THRESHOLD_=65536, so that glibc returns every freed block of 64 KiB "
              "or more at once; with its default, adaptive threshold freed chunk buffers stay "
              "resident and the same call's peak varies by tens of MB from run to run.\n")
        scaling = print_scaling(run_scaling(model, data.x_test, device, p), device)
        print()
    print_summary(rows, scaling)
    print(f"\nTotal wall time {time.perf_counter() - start:.0f} s; load average at end "
          f"{os.getloadavg()[0]:.2f}.")


if __name__ == "__main__":
    main()
