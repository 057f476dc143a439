"""The sky under the sources: measured on the image minus their model.

The sky is the median of the residual (image minus the model of the
sources), either over the whole array (`global_sky`, the first, coarse
passes) or in boxes, median filtered and interpolated (`boxed_sky`).
`sky_under_model` is the one place the loop chooses between them.  Which
model the sky is measured under (`model_under_sky`), which pixels it is
measured on (`sky_pixels`), the typical pixel noise (`pixel_noise`) and
the basis of sky terms fit with the sources (`sky_basis`) are here too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import scipy.sparse as sp
from scipy import ndimage
from scipy.sparse.linalg import cg, splu

from .nanstats import nanmedian_rows
from .params import FitParams
from .psf import PixelPsf
from .scene import StampGroup, scene_image, wing_image

if TYPE_CHECKING:
    from .sources import Sources

__all__ = [
    "AdaptiveSky",
    "SplineSky",
    "boxed_sky",
    "global_sky",
    "model_under_sky",
    "pixel_noise",
    "sky_basis",
    "sky_pixels",
    "sky_under_model",
]


def global_sky(resid: np.ndarray, good: np.ndarray) -> float:
    """Median of the good pixels of ``resid`` (0 when there are none)."""
    values = resid[good]
    return float(np.median(values)) if values.size else 0.0


def boxed_sky(resid: np.ndarray, good: np.ndarray, box: int, smooth: int = 3) -> np.ndarray:
    """Smooth sky from medians of ``resid`` in ``box`` x ``box`` regions.

    The grid of box medians is median filtered over ``smooth`` boxes (this
    rejects boxes dominated by a bright star's residual) and interpolated
    bilinearly to every pixel.  Boxes without good pixels take the value
    of their nearest neighbour box.

    Parameters
    ----------
    resid : `numpy.ndarray`
        Image minus the model of the sources.
    good : `numpy.ndarray` [`bool`]
        Pixels that can be used.
    box : `int`
        Box size in pixels.
    smooth : `int`
        Median filter width in boxes (1 = none).
    """
    ny, nx = resid.shape
    nby = -(-ny // box)
    nbx = -(-nx // box)
    padded = np.full((nby * box, nbx * box), np.nan)
    padded[:ny, :nx] = np.where(good, resid, np.nan)
    blocks = padded.reshape(nby, box, nbx, box).transpose(0, 2, 1, 3).reshape(nby, nbx, -1)
    count = np.sum(np.isfinite(blocks), axis=2)
    with np.errstate(all="ignore"):
        grid = np.where(
            count >= max(3, box * box // 10),
            nanmedian_rows(np.where(count[..., None] > 0, blocks, 0.0)),
            np.nan,
        )
    if np.all(np.isnan(grid)):
        return np.full(resid.shape, global_sky(resid, good))
    missing = np.isnan(grid)
    if missing.any():
        _, (iy, ix) = ndimage.distance_transform_edt(missing, return_indices=True)
        grid = grid[iy, ix]
    if smooth > 1:
        grid = ndimage.median_filter(grid, size=smooth, mode="nearest")
    # Box centres are at (i + 0.5) * box - 0.5 in pixel coordinates.
    yc = (np.arange(ny) + 0.5) / box - 0.5
    xc = (np.arange(nx) + 0.5) / box - 0.5
    # Separable bilinear interpolation, clamped at the edges.
    return _interp_axis(_interp_axis(grid, yc, 0), xc, 1)


def _interp_axis(grid: np.ndarray, coords: np.ndarray, axis: int) -> np.ndarray:
    n = grid.shape[axis]
    c = np.clip(coords, 0, n - 1)
    i0 = np.clip(np.floor(c).astype(int), 0, max(n - 2, 0))
    i1 = np.minimum(i0 + 1, n - 1)
    t = c - i0
    a = np.take(grid, i0, axis=axis)
    b = np.take(grid, i1, axis=axis)
    shape = [1, 1]
    shape[axis] = -1
    t = t.reshape(shape)
    return a * (1 - t) + b * t


class SplineSky:
    """A smooth sky on a tensor-product cubic B-spline grid, fit robustly with a roughness penalty.

    The sky is a sum of cubic B-splines with knots about every ``spacing``
    pixels in x and y (each pixel depends on 4 x 4 coefficients).  The
    coefficients minimise the weighted squared residual of the pixels that
    are not clipped plus ``smoothing`` (relative to the mean data weight
    per coefficient) times the squared second differences of the
    coefficient grid, so the sky follows structure down to about
    ``spacing`` where the pixels demand it and stays smooth where they do
    not (a flat sky costs nothing; a plane neither).  Pixels more than
    ``clip_high`` sigma above the current fit, dilated by ``dilate``
    pixels, and more than ``clip_low`` below it are left out and the fit
    repeated ``n_iter`` times: stars not yet in the model do not pull the
    sky up, while the unresolved light of the faintest stars stays in it as
    a pedestal.

    The basis is separable, so the normal matrix is assembled from sums
    over the pixels of each knot interval (about 50 operations per pixel)
    rather than from the full design matrix.

    Parameters
    ----------
    shape : `tuple` [`int`, `int`]
        Array shape.
    spacing : `float`
        Knot spacing (pixels).
    smoothing : `float`
        Roughness penalty, relative to the data weight per coefficient.
    """

    def __init__(self, shape: tuple[int, int], spacing: float, smoothing: float):
        ny, nx = shape
        self.shape = shape
        self._y = _Bspline1d(ny, spacing)
        self._x = _Bspline1d(nx, spacing)
        ky, kx = self._y.n_coef, self._x.n_coef
        dx = sp.kron(sp.identity(ky), _second_difference(kx))
        dy = sp.kron(_second_difference(ky), sp.identity(kx))
        self.penalty = (dx.T @ dx + dy.T @ dy).tocsc()
        self.smoothing = float(smoothing)
        self.n_coef = ky * kx
        self._last: np.ndarray | None = None
        # Index pattern of the normal matrix: interval (jy, jx), offsets (a, b) x (c, d).
        jy, jx = np.meshgrid(np.arange(self._y.n_int), np.arange(self._x.n_int), indexing="ij")
        off = np.arange(4)
        a, b, c, d = np.meshgrid(off, off, off, off, indexing="ij")
        self._rows = (
            (jy[None] + a.reshape(-1, 1, 1)) * kx + jx[None] + b.reshape(-1, 1, 1)
        ).ravel()
        self._cols = (
            (jy[None] + c.reshape(-1, 1, 1)) * kx + jx[None] + d.reshape(-1, 1, 1)
        ).ravel()
        self._abcd = (a.ravel(), b.ravel(), c.ravel(), d.ravel())
        self._rhs_index = (
            (jy[None] + off[:, None, None, None]) * kx + jx[None] + off[None, :, None, None]
        )

    def _normal_equations(self, w: np.ndarray, r: np.ndarray) -> tuple[sp.csc_matrix, np.ndarray]:
        """``B^T W B`` and ``B^T W r`` for pixel weights ``w`` and data ``r`` (2-D)."""
        y, x = self._y, self._x
        # Row sums per y-interval of w * wy_a * wy_c, for every (a, c).
        t = {}
        for a in range(4):
            for c in range(a, 4):
                t[a, c] = y.reduce(w * (y.w[:, a] * y.w[:, c])[:, None], axis=0)
        vals = np.empty((16, 16, y.n_int, x.n_int))
        ab = self._abcd
        for k in range(256):
            a, b, c, d = ab[0][k], ab[1][k], ab[2][k], ab[3][k]
            tac = t[min(a, c), max(a, c)]
            vals.reshape(256, y.n_int, x.n_int)[k] = x.reduce(
                tac * (x.w[:, b] * x.w[:, d])[None, :], axis=1
            )
        H = sp.csc_matrix(
            (vals.ravel(), (self._rows, self._cols)), shape=(self.n_coef, self.n_coef)
        )
        wr = w * r
        rhs = np.zeros(self.n_coef)
        for a in range(4):
            ra = y.reduce(wr * y.w[:, a][:, None], axis=0)
            for b in range(4):
                np.add.at(
                    rhs, self._rhs_index[a, b].ravel(), x.reduce(ra * x.w[:, b], axis=1).ravel()
                )
        return H, rhs

    def evaluate(self, coef: np.ndarray) -> np.ndarray:
        """The sky image of coefficients ``coef`` (flat, ``n_coef``)."""
        grid = coef.reshape(self._y.n_coef, self._x.n_coef)
        return np.asarray(self._x.matrix @ (self._y.matrix @ grid).T).T

    def fit(
        self,
        resid: np.ndarray,
        good: np.ndarray,
        weight: np.ndarray,
        *,
        clip_high: float = 3.0,
        clip_low: float = 4.0,
        dilate: int = 2,
        n_iter: int = 3,
    ) -> np.ndarray:
        """The robust penalised fit of ``resid`` on the ``good`` pixels, per pixel."""
        w = np.where(good, weight, 0.0)
        r = np.where(good, resid, 0.0)
        use = good.copy()
        sqrt_w = np.sqrt(w)
        sky = np.zeros(self.shape)
        coef = self._last  # warm start from the previous pass's sky
        eye = sp.identity(self.n_coef, format="csr")
        for _ in range(max(1, n_iter)):
            wu = np.where(use, w, 0.0)
            if not np.any(wu > 0):
                break
            H, rhs = self._normal_equations(wu, r)
            scale = float(np.mean(H.diagonal()))
            A = (H + (self.smoothing * scale) * self.penalty + (1e-6 * scale) * eye).tocsr()
            coef = _solve_spd(A, rhs, coef)
            sky = self.evaluate(coef)
            z = (r - sky) * sqrt_w
            high = z > clip_high
            if dilate > 0:
                high = ndimage.binary_dilation(high, iterations=dilate)
            use = good & ~high & (z > -clip_low)
        self._last = coef
        return sky


class AdaptiveSky:
    """A coarse spline sky, refined by a fine one only where the data demand it.

    Both `SplineSky` fits run on the same pixels: ``coarse`` (knots every
    ``spacing`` pixels, ``smoothing``) and ``fine`` (knots every
    ``2 spacing / 3``, a tenth of the smoothing).  Where they differ by more
    than ``threshold`` times the pixel noise the fine sky is taken, below
    half of it the coarse one, with a linear blend between and the blend
    weight smoothed over a knot spacing.  On a flat or smoothly varying sky
    the fine spline only follows the lumps of unresolved stars (a fraction
    of the noise), so the coarse sky is kept; on nebulosity it follows
    structure the coarse one cannot, by several sigma.
    """

    def __init__(self, shape: tuple[int, int], spacing: float, smoothing: float, threshold: float):
        self.coarse = SplineSky(shape, spacing, smoothing)
        self.fine = SplineSky(shape, max(3.0, 2.0 * spacing / 3.0), smoothing / 10.0)
        self.threshold = float(threshold)
        self.spacing = float(spacing)

    def fit(self, resid, good, weight, **kwargs) -> np.ndarray:
        coarse = self.coarse.fit(resid, good, weight, **kwargs)
        fine = self.fine.fit(resid, good, weight, **kwargs)
        noise = np.where(weight > 0, 1.0 / np.sqrt(np.where(weight > 0, weight, 1.0)), np.inf)
        excess = np.abs(fine - coarse) / np.where(np.isfinite(noise), noise, pixel_noise(weight))
        t = np.clip(2.0 * excess / self.threshold - 1.0, 0.0, 1.0)
        t = ndimage.gaussian_filter(t, self.spacing / 2.0, mode="nearest")
        return coarse + np.clip(t, 0.0, 1.0) * (fine - coarse)


def _solve_spd(A: sp.csr_matrix, b: np.ndarray, x0: np.ndarray | None) -> np.ndarray:
    """``A x = b`` for the spline's normal matrix: Jacobi-preconditioned CG, else sparse LU.

    The penalised normal matrix is well conditioned where there are data,
    so CG from the previous solution takes a few tens of iterations (0.05 s
    for 5000 coefficients, where the LU factorisation takes 0.25 s).
    """
    diag = A.diagonal()
    precond = sp.diags(np.where(diag > 0, 1.0 / np.where(diag > 0, diag, 1.0), 1.0))
    x, info = cg(A, b, x0=x0, rtol=1e-7, maxiter=500, M=precond)
    if info == 0 and np.all(np.isfinite(x)):
        return x
    return splu(A.tocsc(), permc_spec="MMD_AT_PLUS_A").solve(b)


class _Bspline1d:
    """Uniform cubic B-splines at the pixel centres ``0..n-1`` of one axis.

    ``w[i, k]`` is the weight of coefficient ``first[i] + k`` (k = 0..3) at
    pixel ``i``; pixels are grouped by knot interval (``first``).
    """

    def __init__(self, n: int, spacing: float):
        self.n_int = max(1, int(np.ceil(n / spacing)))
        h = n / self.n_int  # spacing adjusted so the knots span the array exactly
        t = (np.arange(n) + 0.5) / h
        first = np.minimum(np.floor(t).astype(np.int64), self.n_int - 1)
        u = t - first
        self.w = np.stack(
            [
                (1 - u) ** 3 / 6,
                (3 * u**3 - 6 * u**2 + 4) / 6,
                (-3 * u**3 + 3 * u**2 + 3 * u + 1) / 6,
                u**3 / 6,
            ],
            axis=1,
        )
        self.n_coef = self.n_int + 3
        self._starts = np.flatnonzero(np.diff(first, prepend=-1))
        rows = np.repeat(np.arange(n), 4)
        cols = (first[:, None] + np.arange(4)[None, :]).ravel()
        self.matrix = sp.csr_matrix((self.w.ravel(), (rows, cols)), shape=(n, self.n_coef))

    def reduce(self, values: np.ndarray, axis: int) -> np.ndarray:
        """Sums of ``values`` over the pixels of each knot interval along ``axis``."""
        return np.add.reduceat(values, self._starts, axis=axis)


def _second_difference(k: int) -> sp.csr_matrix:
    """The ``(k - 2, k)`` second-difference operator (empty for k < 3)."""
    if k < 3:
        return sp.csr_matrix((0, k))
    return sp.diags([1.0, -2.0, 1.0], [0, 1, 2], shape=(k - 2, k), format="csr")


def sky_pixels(
    good: np.ndarray, model: np.ndarray, weight: np.ndarray, nsigma: float
) -> np.ndarray:
    """Pixels the boxed sky is measured on: usable and not under a bright model.

    Leaving out pixels where the model of the sources is brighter than
    ``nsigma`` times the pixel noise keeps imperfectly modelled wings of
    bright stars out of the sky (boxes with too few such pixels take their
    neighbours' value); ``nsigma <= 0`` uses every good pixel.
    """
    if nsigma <= 0:
        return good
    return good & (model * np.sqrt(weight) < nsigma)


def sky_under_model(
    image: np.ndarray,
    model: np.ndarray,
    good: np.ndarray,
    weight: np.ndarray,
    params: FitParams,
    coarse: bool,
    spline: SplineSky | AdaptiveSky | None = None,
    regions: np.ndarray | None = None,
) -> np.ndarray:
    """The sky of ``image`` under the sources' ``model``, per pixel.

    With a ``spline`` (``params.sky_method == "spline"``): its robust fit,
    in every pass.  Otherwise, ``coarse``: one median over the good pixels;
    else `boxed_sky` on the `sky_pixels` (``params.sky_box``,
    ``sky_smooth``, ``sky_mask_nsigma``).  With ``regions`` (labels, 0
    outside every region), each region gets a sky of its own, measured on
    its pixels alone, so that a level jump between them (an amplifier
    offset) is not smeared over a sky box; unlabelled pixels take the sky
    of the nearest region.
    """
    if regions is None:
        return _sky_of(image, model, good, weight, params, coarse, spline)
    sky = np.zeros(image.shape)
    labels = np.unique(regions[good & (regions > 0)])
    for label in labels:
        inside = regions == label
        region_sky = _sky_of(image, model, good & inside, weight, params, coarse, spline)
        sky[inside] = region_sky[inside]
    outside = ~np.isin(regions, labels)
    if outside.any() and len(labels):
        _, (iy, ix) = ndimage.distance_transform_edt(outside, return_indices=True)
        sky[outside] = sky[iy[outside], ix[outside]]
    return sky


def _sky_of(image, model, good, weight, params, coarse, spline) -> np.ndarray:
    """`sky_under_model` over one region (``good``)."""
    if spline is not None:
        return spline.fit(image - model, good, weight, clip_high=params.sky_clip)
    if coarse:
        return np.full(image.shape, global_sky(image - model, good))
    return boxed_sky(
        image - model,
        sky_pixels(good, model, weight, params.sky_mask_nsigma),
        params.sky_box,
        params.sky_smooth,
    )


def model_under_sky(
    model: np.ndarray,
    wings: np.ndarray,
    src: Sources,
    groups: list[StampGroup],
    size_idx: np.ndarray,
    sizes: list[int],
    psf: PixelPsf,
    shape: tuple[int, int],
) -> np.ndarray:
    """The model the sky is measured under: without forced sources of negative flux.

    Forced sources are never culled; at empty positions half of them fit
    negative fluxes.  Subtracting those from the image before the sky
    median raises the sky, which lowers every forced flux further (measured
    on 256x256, 0.02 stars/px with 200 forced positions on empty sky: the
    sky went up by 5 counts/px and their median flux from -1.1 to -2.1
    sigma).  Free sources with negative fluxes are culled anyway.

    Parameters
    ----------
    model, wings : `numpy.ndarray`
        The sources within their stamps and their wings beyond.
    src : `Sources`
        The sources (fluxes and derivative terms of the last fit).
    groups, size_idx, sizes, psf
        How the sources were rendered (`render_scene`).
    shape : `tuple` [`int`, `int`]
        Shape of the array.
    """
    neg = src.forced & (np.nan_to_num(src.flux) < 0)
    if not neg.any():
        return model + wings
    nf = np.where(neg, np.nan_to_num(src.flux), 0.0)
    gx = np.where(neg, np.nan_to_num(src.gx), 0.0)
    gy = np.where(neg, np.nan_to_num(src.gy), 0.0)
    return (
        model
        + wings
        - scene_image(groups, nf, shape, gx, gy)
        - wing_image(src.x, src.y, nf, size_idx, sizes, psf, shape)
    )


def pixel_noise(weight: np.ndarray) -> float:
    """Median noise (1 / sqrt(weight)) of the usable pixels; 1 when there are none."""
    w = weight[weight > 0]
    return float(np.median(1.0 / np.sqrt(w))) if w.size else 1.0


def sky_basis(shape: tuple[int, int]) -> np.ndarray:
    """Constant, x and y terms over the array (shape ``(npix, 3)``), centred and scaled."""
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    u = (xx.ravel() - 0.5 * (nx - 1)) / max(nx, 1)
    v = (yy.ravel() - 0.5 * (ny - 1)) / max(ny, 1)
    return np.column_stack([np.ones(nx * ny), u, v])
