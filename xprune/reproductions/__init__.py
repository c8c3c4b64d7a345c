"""Reproductions of published results: each paper's numbers beside xprune's, rerunnable.

A reproduction is a registered experiment with its own parameters (a frozen
dataclass whose defaults are the full run) and a function that computes the
results and returns a :class:`~xprune.reproductions._report.ReproductionReport`.
Its config is a TOML file under ``analyses/`` naming it::

    reproduction = "yeom2021_toy"
    seed = 0
    device = "cpu"

    [params]            # the reproduction's own parameters; unknown keys are errors
    n_seeds = 20

``xprune run <that file>`` runs it into ``reports/<name>/`` and writes
``report.md``, ``report.html``, one CSV per table and the figures. Finished
work is stored under ``<run>/.cache/``, so a killed run resumes where it
stopped.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._cache import RunCache
from .._io import read_toml
from .._validation import check_device, check_positive_int, closest_name
from ..analysis import _versions, check_writable
from ..config import _build
from ._report import ReproductionReport, Section

__all__ = [
    "REPRODUCTIONS",
    "Context",
    "Reproduction",
    "ReproductionConfig",
    "ReproductionReport",
    "Section",
    "is_reproduction",
    "load_reproduction",
    "register",
    "run_reproduction",
    "torch_threads",
]


@dataclass(frozen=True)
class Reproduction:
    """A registered reproduction: ``run(params, context)`` returns its report."""

    name: str
    title: str
    citation: str
    params: type
    run: Callable[[Any, Context], ReproductionReport]


REPRODUCTIONS: dict[str, Reproduction] = {}


def register(name: str, *, title: str, citation: str, params: type):
    """Decorator registering ``run(params, context) -> ReproductionReport`` under ``name``."""
    def wrap(fn):
        if name in REPRODUCTIONS:
            raise ValueError(f"Reproduction {name!r} is already registered.")
        REPRODUCTIONS[name] = Reproduction(name, title, citation, params, fn)
        return fn
    return wrap


@dataclass
class Context:
    """What a reproduction's ``run`` gets besides its parameters.

    ``seed`` seeds every random draw (the same seed gives the same numbers);
    ``cache`` stores finished work (models as safetensors, tables as CSV) so a
    killed run resumes; ``say`` prints progress unless the run is quiet.
    """

    out_dir: Path
    seed: int
    device: str
    cache: RunCache
    progress: bool = True
    started: float = field(default_factory=time.perf_counter)

    def say(self, message: str) -> None:
        if self.progress:
            print(f"[{time.perf_counter() - self.started:6.1f}s] {message}", flush=True)


@dataclass(frozen=True)
class ReproductionConfig:
    """A reproduction's config: which one, its output name, seed, device, CPU threads and
    parameters.

    ``threads``: torch's intra-op CPU threads during the run (restored after).
    The networks are tiny, so one thread loses little, and on a machine shared
    with other busy processes more threads mostly wait for each other (training
    the digits CNN ran 20-60x slower with 2 threads than with 1 at a load of 5).
    The thread count changes the order of floating-point sums, hence the last
    bits of trained weights, so it is part of what determines the numbers.
    """

    reproduction: str
    name: str
    seed: int = 0
    device: str = "cpu"
    threads: int = 1
    params: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.reproduction, str):
            raise ValueError(f"Expected `reproduction` to be the name of a reproduction, got "
                             f"{self.reproduction!r}.")
        if self.reproduction not in REPRODUCTIONS:
            raise ValueError(f"Unknown reproduction {self.reproduction!r}; expected one of "
                             f"{sorted(REPRODUCTIONS)}."
                             + closest_name(self.reproduction, REPRODUCTIONS))
        if not self.name or any(c in self.name for c in "/\\") or self.name.startswith("."):
            raise ValueError(f"Expected `name` to be a plain directory name, got {self.name!r}.")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"Expected `seed` to be a non-negative integer, got {self.seed!r}.")
        check_device(self.device)
        check_positive_int(self.threads, "threads")
        cls = REPRODUCTIONS[self.reproduction].params
        if self.params is None:
            object.__setattr__(self, "params", cls())
        elif isinstance(self.params, dict):
            object.__setattr__(self, "params", _build(cls, self.params, "[params]"))
        elif not isinstance(self.params, cls):
            raise ValueError(f"Expected `params` to be a {cls.__name__} or a table, got "
                             f"{type(self.params).__name__}.")

    def to_dict(self) -> dict[str, Any]:
        return {"reproduction": self.reproduction, "name": self.name, "seed": self.seed,
                "device": self.device, "threads": self.threads,
                "params": dataclasses.asdict(self.params)}

    def store_key(self) -> dict[str, Any]:
        """The key of the run's store of finished work: everything that determines the
        numbers, not the name (the store adds a digest of xprune's source code)."""
        return {k: v for k, v in self.to_dict().items() if k != "name"}

    def replace(self, **changes: Any) -> ReproductionConfig:
        return dataclasses.replace(self, **changes)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` inside, restored afterwards (also on error)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def is_reproduction(path: str | Path | None) -> bool:
    """Whether the TOML file at ``path`` is a reproduction config (has ``reproduction``)."""
    if path is None:
        return False
    return "reproduction" in read_toml(Path(path))


def load_reproduction(path: str | Path) -> ReproductionConfig:
    """Read a reproduction config; ``name`` defaults to the file's stem.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        On malformed TOML, an unknown reproduction, unknown keys or invalid values.
    """
    path = Path(path)
    data = read_toml(path)
    data.setdefault("name", path.stem)
    _load_all()
    return _build(ReproductionConfig, data, "the config's top level")


_MODULES = ("yeom2021", "adebayo2018", "hooker2019", "drift")  # the modules under xprune/reproductions/ that register reproductions


def _load_all() -> None:
    """Import the modules that register the reproductions."""
    import importlib

    for module in _MODULES:
        importlib.import_module(f"{__name__}.{module}")


def run_reproduction(config: ReproductionConfig | str | Path, *,
                     out_dir: str | Path | None = None, progress: bool = True,
                     use_cache: bool = True) -> Path:
    """Run a reproduction and write its report; returns the path of ``report.html``.

    ``out_dir`` defaults to ``reports/<config.name>``. With ``use_cache`` the
    finished parts are stored under ``<out_dir>/.cache/`` and reused by a rerun
    of the same config.
    """
    _load_all()
    if not isinstance(config, ReproductionConfig):
        config = load_reproduction(config)
    out = Path(out_dir) if out_dir is not None else Path("reports") / config.name
    check_writable(out)
    cache = RunCache(out if use_cache else None, config.store_key())
    context = Context(out_dir=out, seed=config.seed, device=config.device, cache=cache,
                      progress=progress)
    repro = REPRODUCTIONS[config.reproduction]
    context.say(f"{repro.title}: running into {out}")
    with torch_threads(config.threads):
        report = repro.run(config.params, context)
    path = report.write(out, config=config.to_dict(),
                        versions=_versions())
    context.say(f"report written to {path}")
    return path
