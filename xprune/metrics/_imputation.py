"""ROAD's noisy linear imputation (Rong, Leemann et al. 2022) as a removal operator of images.

A removed pixel becomes the weighted mean of its 8 neighbours (removed
neighbours are unknowns too: one sparse linear system per image), plus small
Gaussian noise. :class:`NoisyLinearImputation` is the operator
(:mod:`xprune.metrics._removal`); :func:`noisy_linear_imputation` the
function on one mask per image. The solver batches images with the same
number of removed pixels into dense Cholesky solves and serves ROAD's nested
removals (the pixel prefixes of one ranking) with one factorisation per image
and one forward and back substitution for all of them; larger systems of
images up to 48 pixels wide are banded (LAPACK's banded Cholesky), built for
all images and removals at once and solved one call per half-bandwidth, those
of wider images are solved together as one block-diagonal scipy sparse system.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import numpy as np
import torch
from torch import Tensor

from .._validation import check_tensor
from ._removal import Removal, check_removed, prefix_masks

__all__ = ["NoisyLinearImputation", "noisy_linear_imputation"]


@dataclass(frozen=True)
class NoisyLinearImputation(Removal):
    """Removal of image pixels (all channels) by ROAD's noisy linear imputation; no baseline.

    Every removed pixel becomes the weighted mean of its 8 neighbours (1/6
    for the direct, 1/12 for the diagonal ones; at the border the in-image
    neighbours, renormalised), removed neighbours being unknowns of the same
    linear system, plus Gaussian noise of std ``noise_std`` (Rong, Leemann,
    Borisov, Kasneci & Kasneci 2022, "A consistent and efficient evaluation
    strategy for attribution methods", ICML). See
    :func:`noisy_linear_imputation` for the solver.

    Attributes
    ----------
    noise_std : float >= 0
        In input units; 0 gives the deterministic imputation.
    generator : torch.Generator, optional
        The noise source of every call, drawn row by row ((C, k) values for
        a row's k removed pixels, row-major); default a
        ``torch.Generator().manual_seed(0)`` made once, at construction.

    Raises
    ------
    ValueError
        On ``noise_std`` < 0; from :meth:`remove`, on inputs that are not
        (N, C, H, W) images, a mask of the wrong shape, a row with every pixel
        removed, or a baseline (the imputation computes the replacement).
    """

    kind: ClassVar[str] = "image"
    noise_std: float = 0.01
    generator: torch.Generator | None = None

    def __post_init__(self) -> None:
        _check_noise(self.noise_std)
        if self.generator is None:
            object.__setattr__(self, "generator", torch.Generator().manual_seed(0))

    def check_inputs(self, inputs: Tensor, metric: str) -> Tensor:
        return _check_images(inputs, metric)

    def remove(self, inputs: Tensor, removed: Tensor, baseline: Tensor | float | None = None
               ) -> Tensor:
        x = self._checked(inputs, baseline)
        n, feat = x.shape[0], x.shape[1:]
        removed = check_removed(removed, x, math.prod(feat[1:]))
        rows = removed.shape[1:-1]
        flat = removed.reshape(-1, removed.shape[-1]).cpu()
        _check_kept(flat)
        xs = x.reshape(n, *(1,) * len(rows), *feat).expand(n, *rows, *feat).reshape(-1, *feat)
        return _noisy_impute(xs, flat, self.noise_std, self.generator).reshape(n, *rows, *feat)

    def remove_prefixes(self, inputs: Tensor, order: Tensor, counts: Sequence[int],
                        baseline: Tensor | float | None = None) -> Tensor:
        """:meth:`Removal.remove_prefixes`, one Cholesky factorisation per image for all counts.

        The systems of nested removed sets are leading blocks of the largest
        one, in removal order, and so are their factors; the solutions equal
        :meth:`remove`'s to rounding (about 1e-15).
        """
        x = self._checked(inputs, baseline)
        n, c = x.shape[:2]
        d = math.prod(x.shape[2:])
        counts = list(counts)
        if not isinstance(order, Tensor) or tuple(order.shape) != (n, d):
            got = tuple(order.shape) if isinstance(order, Tensor) else type(order).__name__
            raise ValueError(f"Expected `order` of shape (N, d) = {(n, d)} for inputs of shape "
                             f"{tuple(x.shape)}, got {got}.")
        if any(not 0 <= k < d for k in counts):
            raise ValueError(f"Expected every count in [0, {d}): at least one kept pixel per "
                             f"image, got {counts}.")
        order = order.cpu()
        images = x.detach().reshape(n, c, d).double().cpu()
        with _one_thread():
            pixels = _prefix_pixels(order, counts)
            filled = _impute_prefixes(images, order, counts, *x.shape[2:])
            _add_prefix_noise(filled, pixels, self.noise_std, self.generator)
        return filled.reshape(n, len(counts), *x.shape[1:]).to(device=x.device, dtype=x.dtype)

    def _checked(self, inputs: Tensor, baseline: Tensor | float | None) -> Tensor:
        if baseline is not None:
            raise ValueError("Expected no `baseline` for NoisyLinearImputation, which imputes "
                             "removed pixels from their neighbours, got one.")
        return self.check_inputs(inputs, "noisy linear imputation")


def _check_kept(removed: Tensor) -> None:
    if bool(removed.all(dim=1).any()):
        raise ValueError("Expected at least one kept pixel per image: with every pixel "
                         "removed there is nothing to impute from.")


def noisy_linear_imputation(inputs: Tensor, removed: Tensor, *, noise_std: float = 0.01,
                            generator: torch.Generator | None = None) -> Tensor:
    """Fill removed pixels by ROAD's noisy linear imputation (Rong, Leemann et al. 2022).

    Every removed pixel becomes the weighted mean of its 8 neighbours (1/6 for
    the direct, 1/12 for the diagonal ones; at the border, the in-image
    neighbours renormalised), where removed neighbours are themselves unknowns:
    one linear system over all removed pixels of an image, for all channels.
    Images with the same number k <= 192 of removed pixels are solved together
    as one batch of dense systems (Cholesky, in blocks of at most 2^22 matrix
    elements); larger systems of images up to 48 pixels wide as banded systems
    (LAPACK ``dpbsv``, banded Cholesky: unknowns in row-major order couple within
    W + 1 of each other; the systems of one half-bandwidth stacked into one call),
    of wider images all together as one block-diagonal system for
    ``scipy.sparse.linalg.spsolve``. All give the same solution (to
    rounding, about 1e-15). Gaussian noise of std ``noise_std`` is
    then added to each imputed value. Kept pixels are unchanged.

    Parameters
    ----------
    inputs : Tensor of shape (N, C, H, W)
    removed : bool Tensor of shape (N, H, W)
        True where a pixel (all its channels) is removed. At least one pixel of
        each image must be kept.
    noise_std : float >= 0
        In input units (the authors' code defaults to 0.01, on images in [0, 1]
        before normalisation); 0 gives the deterministic imputation.
    generator : torch.Generator, optional
        Noise source, drawn image by image in batch order, ``(C, k)`` values for
        the k removed pixels in row-major order.

    Returns
    -------
    Tensor of shape (N, C, H, W)
        A new tensor in the inputs' dtype and device; the inputs are not modified.

    Raises
    ------
    ValueError
        If the inputs are not (N, C, H, W) images, ``removed`` has another
        shape, every pixel of an image is removed, or ``noise_std`` < 0.
    """
    x = _check_images(inputs, "noisy linear imputation")
    if not isinstance(removed, Tensor) or removed.shape != (x.shape[0], *x.shape[2:]):
        shape = tuple(removed.shape) if isinstance(removed, Tensor) else type(removed).__name__
        raise ValueError(f"Expected `removed` to be a bool tensor of shape "
                         f"{(x.shape[0], *x.shape[2:])}, got {shape}.")
    removed = removed.bool().reshape(x.shape[0], -1)
    _check_kept(removed.cpu())
    return NoisyLinearImputation(noise_std, generator).remove(x, removed)


# Weights of the 8 neighbours in ROAD's linear imputation (Rong, Leemann et al. 2022):
# 1/6 for the 4 direct neighbours, 1/12 for the 4 diagonal ones (they sum to 1).
_NEIGHBOURS = tuple(((dr, dc), 1 / 6 if dr == 0 or dc == 0 else 1 / 12)
                    for dr in (-1, 0, 1) for dc in (-1, 0, 1) if (dr, dc) != (0, 0))


def _neighbour_matrix(height: int, width: int):
    """Sparse (d, d) matrix of neighbour weights of an H x W grid (CSR), row-major pixels."""
    import numpy as np
    from scipy import sparse

    rows, cols, vals = [], [], []
    r, c = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    r, c = r.ravel(), c.ravel()
    for (dr, dc), weight in _NEIGHBOURS:
        rr, cc = r + dr, c + dc
        ok = (rr >= 0) & (rr < height) & (cc >= 0) & (cc < width)
        rows.append((r * width + c)[ok])
        cols.append((rr * width + cc)[ok])
        vals.append(np.full(int(ok.sum()), weight))
    d = height * width
    return sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                             shape=(d, d))


def _impute(image, removed, weights):
    """Linear imputation of one image: (C, d) float64 array, removed (d,) bool -> imputed copy.

    Each removed pixel equals the weighted mean of its in-image neighbours
    (weights renormalised at the border), solved jointly for all removed
    pixels: ``(D - W_RR) z = W_RK x_K`` per channel.
    """
    import numpy as np
    from scipy import sparse
    from scipy.sparse.linalg import spsolve

    out = image.copy()
    idx = np.flatnonzero(removed)
    if idx.size == 0:
        return out
    keep = np.flatnonzero(~removed)
    w_r = weights[idx]
    degree = np.asarray(w_r.sum(axis=1)).ravel()
    system = (sparse.diags(degree) - w_r[:, idx]).tocsc()
    rhs = w_r[:, keep] @ image[:, keep].T                     # (k, C)
    solution = spsolve(system, rhs)
    out[:, idx] = np.asarray(solution).reshape(idx.size, image.shape[0]).T
    return out


def _check_images(inputs: Tensor, what: str) -> Tensor:
    if isinstance(inputs, Tensor) and inputs.dim() != 4:
        raise ValueError(f"Expected `inputs` to be images of shape (N, C, H, W) for {what}, "
                         f"got shape {tuple(inputs.shape)}: it imputes a pixel from its "
                         f"neighbours, and tabular features have no neighbourhood.")
    return check_tensor(inputs, "inputs", min_dim=4)


def _check_noise(noise_std: float) -> None:
    if isinstance(noise_std, bool) or not isinstance(noise_std, (int, float)) \
            or not noise_std >= 0 or not math.isfinite(noise_std):
        raise ValueError(f"Expected `noise_std` >= 0, got {noise_std!r}.")


# Unknowns per image up to which the imputation is solved as a batch of dense systems
# (Cholesky, torch.linalg, many images per call); above it, one block-diagonal sparse scipy solve.
# Dense costs k^3 / 6 per image, the sparse solve far less for large k: on one CPU core
# they cross near k = 220 (k = 64: dense 8x faster per image; k = 384: 2x slower).
_DENSE_MAX_UNKNOWNS = 192
# Elements of the dense systems (images x k x k) solved in one call: 2^22 float64, 32 MiB.
_DENSE_MAX_ELEMENTS = 2 ** 22


@functools.lru_cache(maxsize=8)
def _grid_neighbours(height: int, width: int) -> tuple[Tensor, Tensor, Tensor]:
    """Neighbour table of an H x W grid, row-major pixels: for each pixel and each of the 8
    offsets of ``_NEIGHBOURS``, the neighbour's index (d, 8) (0 where it is outside the
    image), its weight (d, 8) float64 (0 outside), and the pixel's degree, the sum of its
    in-image weights (d,). Cached per grid: the tensors are shared, read and never written."""
    r, c = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    r, c = r.reshape(-1, 1), c.reshape(-1, 1)
    dr = torch.tensor([o[0] for o, _ in _NEIGHBOURS])
    dc = torch.tensor([o[1] for o, _ in _NEIGHBOURS])
    w = torch.tensor([wt for _, wt in _NEIGHBOURS], dtype=torch.float64)
    rr, cc = r + dr, c + dc
    inside = (rr >= 0) & (rr < height) & (cc >= 0) & (cc < width)
    index = torch.where(inside, rr * width + cc, 0)
    weight = torch.where(inside, w, 0.0)
    return index, weight, weight.sum(dim=1)


class _Unknowns(NamedTuple):
    """The neighbourhood of B images' unknown pixels ``idx`` (B, k), in the order of ``idx``.

    neighbour, weight : (B, k, 8) neighbour pixel and its weight (0 outside the image).
    unknown : (B, k, 8) the neighbour's position in ``idx``, k if it is not there.
    degree : (B, k) the sum of each unknown's in-image weights.
    """

    neighbour: Tensor
    weight: Tensor
    unknown: Tensor
    degree: Tensor


def _unknowns(idx: Tensor, grid: tuple[Tensor, Tensor, Tensor], d: int) -> _Unknowns:
    b, k = idx.shape
    table, table_weight, table_degree = grid
    position = torch.full((b, d), k, dtype=torch.long)
    position.scatter_(1, idx, torch.arange(k).expand(b, k))
    neighbour = table[idx]
    unknown = position.gather(1, neighbour.reshape(b, -1)).reshape(b, k, 8)
    return _Unknowns(neighbour, table_weight[idx], unknown, table_degree[idx])


def _system(u: _Unknowns) -> Tensor:
    """``D - W_RR`` of :func:`_impute` over all the unknowns of ``u``: (B, k, k) float64."""
    b, k = u.degree.shape
    coupled = u.unknown < k
    system = torch.zeros(b, k * k, dtype=torch.float64)
    column = torch.arange(k)[None, :, None] * k + u.unknown.clamp_max(k - 1)
    system.scatter_add_(1, column.reshape(b, -1),
                        torch.where(coupled, -u.weight, 0.0).reshape(b, -1))
    system = system.reshape(b, k, k)
    system.diagonal(dim1=1, dim2=2).add_(u.degree)
    return system


def _rhs(values: Tensor, u: _Unknowns, k: int) -> Tensor:
    """``W_RK x_K`` of :func:`_impute` when only the first k unknowns of ``u`` are removed:
    (B, k, C). ``values`` (B, C, k', 8) are the neighbours' pixel values, k' >= k."""
    known = torch.where(u.unknown[:, :k] < k, 0.0, u.weight[:, :k])      # (B, k, 8)
    return (values[:, :, :k] * known[:, None]).sum(dim=3).transpose(1, 2)


def _neighbour_values(images: Tensor, u: _Unknowns) -> Tensor:
    """Pixel values (B, C, k, 8) of the neighbours of ``u``'s unknowns; ``images`` (B, C, d)."""
    b, c = images.shape[:2]
    flat = u.neighbour.reshape(b, 1, -1).expand(b, c, -1)
    return images.gather(2, flat).reshape(b, c, *u.neighbour.shape[1:])


def _solve_spd(system: Tensor, rhs: Tensor) -> tuple[Tensor, Tensor]:
    """Cholesky factors (B, k, k) of the systems ``D - W_RR`` and the solutions (B, k, C).

    ``W`` is symmetric and every group of connected removed pixels borders a kept one, so
    each system is an irreducibly diagonally dominant symmetric M-matrix, hence positive
    definite; Cholesky is then about twice as fast as LU. A system it fails on (not
    expected) is solved by LU instead; its factor is then NaN.
    """
    factor, info = torch.linalg.cholesky_ex(system)
    solution = torch.cholesky_solve(rhs, factor)
    failed = info != 0
    if bool(failed.any()):
        solution[failed] = torch.linalg.solve(system[failed], rhs[failed])
        factor[failed] = math.nan
    return factor, solution


def _impute_rows(images: Tensor, removed: Tensor, height: int, width: int) -> Tensor:
    """Noise-free linear imputation of M images at once: the solution of :func:`_impute`.

    ``images`` (M, C, d) float64 on the CPU, ``removed`` (M, d) bool, at least one pixel
    of each image kept. Images with the same number k of removed pixels are solved
    together, as dense (B, k, k) systems in calls of at most ``_DENSE_MAX_ELEMENTS``
    elements, when k <= ``_DENSE_MAX_UNKNOWNS``; larger ones as banded systems
    (:func:`_impute_banded`) in images at most ``_BANDED_MAX_WIDTH`` wide, else all
    together as one block-diagonal sparse system (:func:`_impute_sparse`).
    Returns a new (M, C, d) tensor, kept pixels copied exactly.
    """
    out = images.clone()
    counts = removed.sum(dim=1)
    large = counts > _DENSE_MAX_UNKNOWNS
    if bool(large.any()) and width > _BANDED_MAX_WIDTH:
        rows = large.nonzero()[:, 0]
        out[rows] = _impute_sparse(images[rows], removed[rows], height, width)
    elif bool(large.any()):
        rows = large.nonzero()[:, 0]
        out[rows] = _impute_banded(images[rows], removed[rows], height, width)
    grid = None
    for k in counts[~large].unique().tolist():
        if k == 0:
            continue
        rows = (counts == k).nonzero()[:, 0]
        grid = _grid_neighbours(height, width) if grid is None else grid
        step = max(1, _DENSE_MAX_ELEMENTS // (k * k))
        for start in range(0, rows.numel(), step):
            sub = rows[start:start + step]
            idx = removed[sub].nonzero()[:, 1].reshape(-1, k)   # ascending within each row
            u = _unknowns(idx, grid, height * width)
            _, solution = _solve_spd(_system(u), _rhs(_neighbour_values(images[sub], u), u, k))
            out[sub] = images[sub].scatter(
                2, idx[:, None, :].expand(-1, images.shape[1], -1), solution.transpose(1, 2))
    return out


# Unknowns of all images together in one block-diagonal sparse solve (scipy), at most.
_SPARSE_MAX_UNKNOWNS = 2 ** 18
# Image widths up to which the systems too large for dense solves are banded (LAPACK's banded
# Cholesky, one call per system): unknowns in row-major order couple within W + 1 of each
# other, so a system of k unknowns costs about k (W + 1)^2 flops and no fill-reducing order;
# wider images go to scipy's sparse solver, whose fill-reducing order costs less there
# (4 images, 50% and 90% of their pixels removed, one core: 13 ms banded against 56 ms sparse
# at 48 x 48, 235 ms against 98 ms at 64 x 64).
_BANDED_MAX_WIDTH = 48


# The neighbours that come before a pixel in row-major order, with their weights: the
# entries left of the diagonal in a row of the system (and, by symmetry, its lower band).
_EARLIER = tuple(((dr, dc), weight) for (dr, dc), weight in _NEIGHBOURS if (dr, dc) < (0, 0))


@functools.lru_cache(maxsize=8)
def _bordered(height: int, width: int) -> Tensor:
    """Index (d,) of each pixel of an H x W grid, row-major, in the flat (H + 2) x (W + 2)
    grid that surrounds it with a border of one pixel: a neighbour (dr, dc) of a pixel is
    ``dr * (W + 2) + dc`` away there, for every pixel alike. Cached per grid, never written."""
    r, c = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return ((r + 1) * (width + 2) + c + 1).reshape(-1)


def _impute_banded(images: Tensor, removed: Tensor, height: int, width: int) -> Tensor:
    """:func:`_impute_rows` of M rows as banded systems, any number of removed pixels each.

    ``images`` (M, C, d) float64 on the CPU, ``removed`` (M, d) bool, at least one pixel
    of each row kept. With the unknowns in row-major order the system ``D - W_RR`` of a
    row couples unknowns at most W + 1 apart; its half-bandwidth kd is the largest
    distance, in unknowns, of a coupled pair. The rows are taken in chunks of about
    ``_BANDED_CHUNK_ELEMENTS`` bordered-grid pixels (and at most ``_DENSE_MAX_ELEMENTS``
    band elements); in each chunk :func:`_banded_chunk` builds every row's band and
    right-hand side at once and solves all rows of a kd with one LAPACK call
    (``dpbsv``, banded Cholesky, about k kd^2 flops per row) on the block-diagonal band
    that stacks them: no entry couples two rows, so each row's solution is its own (to
    rounding). The systems are positive definite (see :func:`_solve_spd`); the rows of a
    call on which the banded Cholesky fails anyway (not expected) are solved by
    :func:`_impute_sparse`. Returns a new (M, C, d) tensor, kept pixels copied exactly.
    """
    m, c, d = images.shape
    out = images.clone()
    size = (height + 2) * (width + 2)
    band = (removed.sum(dim=1) + 1) * (width + 2)          # band elements per row, at most
    ends = band.cumsum(0)
    most = max(1, _BANDED_CHUNK_ELEMENTS // size)
    failed = []
    start = 0
    while start < m:
        before = int(ends[start - 1]) if start else 0
        stop = start + max(1, int((ends[start:start + most] - before
                                   <= _DENSE_MAX_ELEMENTS).sum()))
        failed += [start + r for r in _banded_chunk(out[start:stop], removed[start:stop],
                                                    height, width)]
        start = stop
    if failed:
        rows = torch.tensor(failed)
        out[rows] = _impute_sparse(images[rows], removed[rows], height, width)
    return out


# Bordered-grid pixels (rows x (H + 2)(W + 2)) whose bands and right-hand sides are built
# in one pass: large enough that each tensor operation has work, small enough to stay in cache.
_BANDED_CHUNK_ELEMENTS = 2 ** 17


def _banded_chunk(out: Tensor, removed: Tensor, height: int, width: int) -> list[int]:
    """Solve :func:`_impute_banded`'s systems of the S rows of ``out`` (S, C, d), in place;
    returns the rows whose banded Cholesky failed (left as they were)."""
    from scipy.linalg.lapack import dpbsv

    s, c, d = out.shape
    wide = width + 2
    size = (height + 2) * wide
    first = wide + 1                          # the first grid pixel: all its neighbours >= 0
    at = _bordered(height, width)
    grid = torch.zeros(s, size, dtype=torch.bool)
    grid[:, at] = removed
    position = grid.cumsum(dim=1)             # 1-based among the row's unknowns
    pairs = []                                # per earlier neighbour: its position, distance
    spread = torch.zeros(s, dtype=torch.long)
    for (dr, dc), weight in _EARLIER:
        back = -(dr * wide + dc)
        there = position[:, first - back:size - back]
        coupled = grid[:, first:] & grid[:, first - back:size - back]
        distance = (position[:, first:] - there).mul_(coupled)           # 0 where uncoupled
        spread = torch.maximum(spread, distance.amax(dim=1))
        pairs.append((there, distance, weight))
    # Row r's system: a block of k_r + 1 columns of the stacked band, in rows of kd_r + 1
    # (band[q, i] = system[q + i, q], LAPACK's 'L' storage transposed), the rows sorted by
    # kd so that those of one kd are contiguous; its right-hand side a block of C x (k_r + 1)
    # values, the columns of one kd channel by channel (Fortran order). Column 0 of a
    # block is a spare unknown (diagonal 1, right-hand side 0) that the pairs of a pixel
    # with no unknown before it write into; every other uncoupled pair writes into a
    # diagonal slot (distance 0), which the degrees overwrite.
    k = removed.sum(dim=1)
    stride = spread + 1
    order = torch.argsort(spread, stable=True)
    sizes, columns = ((k + 1) * stride)[order], (k + 1)[order]
    kds, members = torch.unique_consecutive(spread[order], return_counts=True)
    group = torch.repeat_interleave(torch.arange(kds.numel()), members)   # of each sorted row
    ends = columns.cumsum(0)
    group_start = (ends - columns)[members.cumsum(0) - members]          # first column
    group_columns = ends[members.cumsum(0) - 1] - group_start
    base = torch.empty_like(k).index_copy_(0, order, sizes.cumsum(0) - sizes)
    column = torch.empty_like(k).index_copy_(0, order, ends - columns)
    first_column = torch.empty_like(k).index_copy_(0, order, group_start[group])
    n_columns = torch.empty_like(k).index_copy_(0, order, group_columns[group])
    band = np.zeros(int(sizes.sum()))
    for there, distance, weight in pairs:
        band[(there * stride[:, None]).add_(distance).add_(base[:, None]).numpy()] = -weight
    row, pixel = removed.nonzero(as_tuple=True)          # the unknowns, row by row, row-major
    local = position.view(-1)[row * size + at[pixel]]
    band[(base[row] + local * stride[row]).numpy()] = \
        _grid_neighbours(height, width)[2][pixel].numpy()
    band[base.numpy()] = 1.0
    padded = torch.zeros(c, s, height + 2, wide, dtype=torch.float64)
    padded[:, :, 1:-1, 1:-1] = out.view(s, c, height, width).transpose(0, 1)
    padded = padded.view(c, s * size)
    padded[:, row * size + at[pixel]] = 0.0              # the kept pixels' values only
    total = torch.zeros(c, s * size - 2 * first, dtype=torch.float64)
    for (dr, dc), weight in _NEIGHBOURS:
        shift = dr * wide + dc
        total.add_(padded[:, first + shift:s * size - first + shift], alpha=weight)
    # unknown u of row r, channel j: at (C - 1) * first_column + j * n_columns + column + local
    slot = ((c - 1) * first_column + column)[row] + local
    slot = slot + (torch.arange(c)[:, None] * n_columns[row])              # (C, unknowns)
    rhs = np.zeros(c * int(ends[-1]))
    rhs[slot.numpy()] = total[:, row * size + at[pixel] - first].numpy()
    failed = []
    a = b0 = c0 = 0
    for kd, z, n in zip(kds.tolist(), members.cumsum(0).tolist(), group_columns.tolist(),
                        strict=True):                  # one call per half-bandwidth kd
        b1 = b0 + n * (kd + 1)
        # Fortran-ordered (kd + 1, n) band and (n, C) right-hand side, solved in place
        b = rhs[c0:c0 + c * n].reshape(c, n).T
        x, info = dpbsv(band[b0:b1].reshape(n, kd + 1).T, b, lower=1, overwrite_ab=1,
                        overwrite_b=1)[1:]
        if info != 0:
            failed += order[a:z].tolist()
        elif not np.shares_memory(x, b):
            b[...] = x
        a, b0, c0 = z, b1, c0 + c * n
    solved = torch.ones(s, dtype=torch.bool)
    solved[failed] = False
    keep = solved[row]
    flat = (row * c * d + pixel)[keep] + (torch.arange(c) * d)[:, None]     # (C, unknowns)
    out.view(-1)[flat.reshape(-1)] = torch.from_numpy(rhs[slot[:, keep].reshape(-1).numpy()])
    return failed


def _impute_sparse(images: Tensor, removed: Tensor, height: int, width: int) -> Tensor:
    """:func:`_impute_rows` as block-diagonal sparse systems: one scipy solve per chunk of rows.

    The systems ``D - W_RR`` of all M rows (``images`` (M, C, d) float64, ``removed``
    (M, d) bool) are built at once from the neighbour table, without a loop over
    rows, and stacked on the diagonal of one sparse matrix of at most
    ``_SPARSE_MAX_UNKNOWNS`` unknowns (a single row may exceed it); the blocks share
    no entry, so its solution is each row's own. ``spsolve`` factorises it in its
    fill-reducing order. Returns a new (M, C, d) tensor.
    """
    import numpy as np
    from scipy import sparse
    from scipy.sparse.linalg import spsolve

    out = images.clone()
    m, c, d = images.shape
    table, table_weight, table_degree = _grid_neighbours(height, width)
    ends = removed.sum(dim=1).cumsum(0)
    start = 0
    while start < m:
        stop = start + 1 + int((ends[start + 1:] - (ends[start - 1] if start else 0)
                                <= _SPARSE_MAX_UNKNOWNS).sum())
        row, pixel = removed[start:stop].nonzero(as_tuple=True)   # unknowns, row-major
        t = row.numel()
        position = torch.full((stop - start, d), -1, dtype=torch.long)
        position[row, pixel] = torch.arange(t)
        neighbour, weight = table[pixel], table_weight[pixel]          # (t, 8)
        other = position[row[:, None], neighbour]                      # (t, 8), -1 if kept
        coupled = (other >= 0) & (weight > 0)
        diagonal = np.arange(t)
        system = sparse.csc_matrix(
            (np.concatenate([table_degree[pixel].numpy(), -weight[coupled].numpy()]),
             (np.concatenate([diagonal, coupled.nonzero()[:, 0].numpy()]),
              np.concatenate([diagonal, other[coupled].numpy()]))), shape=(t, t))
        known = torch.where(coupled, 0.0, weight)                      # (t, 8)
        values = images[start:stop].transpose(1, 2)[row[:, None], neighbour]   # (t, 8, C)
        rhs = (values * known[:, :, None]).sum(dim=1)                  # (t, C)
        solution = np.asarray(spsolve(system, rhs.numpy())).reshape(t, c)
        out[start:stop].transpose(1, 2)[row, pixel] = torch.from_numpy(solution)
        start = stop
    return out


def _impute_prefixes(images: Tensor, order: Tensor, counts: list[int], height: int,
                     width: int) -> Tensor:
    """Imputation of each image with the first ``counts[j]`` pixels of its ``order`` removed.

    ``images`` (B, C, d) float64 on the CPU, ``order`` (B, d) a permutation of the pixels
    per image (ROAD's removal order), every count < d. Returns (B, len(counts), C, d),
    the solutions of :func:`_impute`. Counts up to ``_DENSE_MAX_UNKNOWNS``: the systems
    of nested removed sets are leading blocks of the largest one, ordered by removal,
    and so are their Cholesky factors: one dense factorisation per image serves every
    such count (if one fails, :func:`_impute_rows` solves them). Larger counts, in
    images at most ``_BANDED_MAX_WIDTH`` wide: banded systems, all images and counts
    together (:func:`_impute_banded`, one LAPACK call per half-bandwidth and chunk); in
    wider images, one block-diagonal sparse solve for all images and counts
    (:func:`_impute_sparse`).
    """
    b, c, d = images.shape
    out = images[:, None].repeat(1, len(counts), 1, 1)
    large = [j for j, k in enumerate(counts) if k > _DENSE_MAX_UNKNOWNS]
    if large:
        masks = prefix_masks(order, [counts[j] for j in large]).reshape(-1, d)
        solve = _impute_banded if width <= _BANDED_MAX_WIDTH else _impute_sparse
        solved = solve(images.repeat_interleave(len(large), dim=0), masks, height, width)
        out[:, large] = solved.reshape(b, len(large), c, d)
    small = [j for j, k in enumerate(counts) if 0 < k <= _DENSE_MAX_UNKNOWNS]
    if not small:
        return out
    k_max = max(counts[j] for j in small)
    grid = _grid_neighbours(height, width)
    step = max(1, _DENSE_MAX_ELEMENTS // (k_max * k_max))
    for start in range(0, b, step):
        sl = slice(start, min(b, start + step))
        u = _unknowns(order[sl, :k_max], grid, d)
        values = _neighbour_values(images[sl], u)
        factor, info = torch.linalg.cholesky_ex(_system(u))
        if bool((info != 0).any()):                          # not expected: solve one by one
            masks = prefix_masks(order, [counts[j] for j in small]).reshape(-1, d)
            rows = _impute_rows(images.repeat_interleave(len(small), dim=0), masks, height,
                                width)
            out[:, small] = rows.reshape(b, len(small), c, d)
            return out
        _solve_prefixes(out[sl], images[sl], order[sl, :k_max], values, u, factor,
                        [(j, counts[j]) for j in small])
    return out


def _solve_prefixes(out: Tensor, images: Tensor, order: Tensor, values: Tensor, u: _Unknowns,
                    factor: Tensor, columns: list[tuple[int, int]]) -> None:
    """Write into ``out`` (B, J, C, d) the solutions of every prefix system of ``u``.

    ``order`` (B, k) the unknowns in removal order, ``factor`` (B, k, k) the Cholesky
    factor L of their system, ``columns`` the (j, k_j) pairs, k_j <= k: column j of
    ``out`` gets the first k_j unknowns removed. One forward and one back substitution
    serve all of them: L y = b leaves y's first k_j entries those of the leading block
    (L is lower triangular) for any padding of b; with y's entries from k_j on set to
    0, the back substitution with L^T returns 0 there and the leading block's solution
    above (L^T is upper triangular).
    """
    b, c = images.shape[:2]
    k = order.shape[1]
    ks = torch.tensor([kj for _, kj in columns])                           # (J,)
    inside = torch.arange(k)[None, :] < ks[:, None]                        # (J, k)
    known = torch.where(u.unknown[:, None] < ks[None, :, None, None], 0.0,
                        u.weight[:, None])                                 # (B, J, k, 8)
    rhs = torch.einsum("bcko,bjko->bkjc", values, known * inside[None, :, :, None])
    rhs = rhs.reshape(b, k, -1)                                            # (B, k, J * C)
    y = torch.linalg.solve_triangular(factor, rhs, upper=False)
    y = y.reshape(b, k, len(columns), c) * inside.T[None, :, :, None]
    z = torch.linalg.solve_triangular(factor.mT, y.reshape(b, k, -1), upper=True)
    z = z.reshape(b, k, len(columns), c).permute(0, 2, 3, 1)               # (B, J, C, k)
    kept = images.gather(2, order[:, None, :].expand(-1, c, -1))[:, None]  # (B, 1, C, k)
    z = torch.where(inside[None, :, None, :], z, kept)
    j = [jj for jj, _ in columns]
    out[:, j] = out[:, j].scatter(3, order[:, None, None, :].expand(-1, len(j), c, -1), z)


def _prefix_pixels(order: Tensor, counts: Sequence[int]) -> list[Tensor]:
    """For each count k, the first k pixels of each ``order`` row (B, d) in ascending
    (row-major) order: a list of (B, k) tensors."""
    masks = prefix_masks(order, counts)                                    # (B, J, d)
    return [masks[:, j].nonzero()[:, 1].reshape(order.shape[0], k)
            for j, k in enumerate(counts)]


def _add_prefix_noise(filled: Tensor, pixels: list[Tensor], noise_std: float,
                      generator: torch.Generator) -> Tensor:
    """:func:`_add_noise` on ``filled`` (B, J, C, d) float64 with column j's pixels
    ``pixels[j]`` (B, k_j) removed (ascending), in place: the same draws, in the same
    order (image by image, column by column, ``(C, k_j)`` values, none for k_j = 0),
    added with one scatter per column instead of a mask over all rows."""
    b, _, c, _ = filled.shape
    columns = [j for j, idx in enumerate(pixels) if idx.shape[1]]
    draws = [torch.randn(c, pixels[j].shape[1], generator=generator, dtype=torch.float64)
             for _ in range(b) for j in columns]
    for t, j in enumerate(columns):
        noise = torch.stack(draws[t::len(columns)]) * noise_std          # (B, C, k_j)
        filled[:, j].scatter_add_(2, pixels[j][:, None, :].expand(-1, c, -1), noise)
    return filled


def _add_noise(filled: Tensor, removed: Tensor, noise_std: float,
               generator: torch.Generator) -> Tensor:
    """Add noise to the ``removed`` (M, d) pixels of ``filled`` (M, C, d) float64, in place.

    Drawn image by image, ``(C, k)`` values for an image's k removed pixels in
    row-major order (nothing for k = 0), as one image at a time would.
    """
    c = filled.shape[1]
    noise = [torch.randn(c, k, generator=generator, dtype=torch.float64).T
             for k in removed.sum(dim=1).tolist() if k]
    if noise:
        imputed = filled.transpose(1, 2)                 # (M, d, C), a view of `filled`
        imputed[removed] += torch.cat(noise) * noise_std
    return filled


def _noisy_impute(x: Tensor, removed: Tensor, noise_std: float,
                  generator: torch.Generator) -> Tensor:
    """Images (M, C, H, W) with ``removed`` (M, d) pixels imputed, plus noise from ``generator``
    (see :func:`_add_noise`). Returns the inputs' dtype and device."""
    m, c = x.shape[:2]
    flat = x.detach().reshape(m, c, -1).double().cpu()
    with _one_thread():
        filled = _add_noise(_impute_rows(flat, removed, *x.shape[2:]), removed, noise_std,
                            generator)
    return filled.reshape(x.shape).to(device=x.device, dtype=x.dtype)


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """torch's intra-op threads set to 1 inside, restored afterwards (also on error).

    The imputation is many small tensor operations (and scipy, single-threaded); split
    over threads, each waits for the slowest, which on a busy machine costs more than
    it gains.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
