"""Sky estimation from the image minus the current model of the sources."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["global_sky", "boxed_sky"]


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
