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
from scipy import ndimage

from .params import FitParams
from .psf import PixelPsf
from .scene import StampGroup, scene_image, wing_image

if TYPE_CHECKING:
    from .sources import Sources

__all__ = [
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
            np.nanmedian(np.where(count[..., None] > 0, blocks, 0.0), axis=2),
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
) -> np.ndarray:
    """The sky of ``image`` under the sources' ``model``, per pixel.

    ``coarse``: one median over the good pixels; otherwise `boxed_sky` on
    the `sky_pixels` (``params.sky_box``, ``sky_smooth``, ``sky_mask_nsigma``).
    """
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
