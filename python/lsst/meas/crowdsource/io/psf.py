"""PSF stamps as the io layer takes them in: one set of rules for every source.

`centred_odd_stamp` is the one check of a PSF stamp in `lsst.meas.crowdsource.io`.
It serves two kinds of input:

- a stamp that is centred on its central pixel by convention (``ccd.psf``
  of a CCDData, the ``CROWDSOURCE_PSF`` HDU of a calexp FITS file): it must
  be a 2-D, numeric, finite array with odd dimensions, and is returned as a
  ``float64`` copy with its values unchanged (stored stamps round-trip);
- a kernel image with an origin (afw ``Psf.computeKernelImage``, lsst.images
  ``PointSpreadFunction.compute_kernel_image``), centred on its pixel
  ``(0, 0)``: it must be 2-D, numeric and finite and contain that pixel;
  the largest square centred on it is returned.

The engine applies its own, stricter check when it builds its PSF model
(`lsst.meas.crowdsource.engine.psf.check_psf_stamp`: square, at least 3x3,
positive sum, normalised to unit sum); a stamp that passes here may still be
refused there.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..engine import InputError
from ..engine.psf import check_stamp_array

__all__ = ["centred_odd_stamp"]


def centred_odd_stamp(
    array: Any, x0: int | None = None, y0: int | None = None, *, name: str | None = None
) -> np.ndarray:
    """Check a PSF stamp, or cut the centred odd square out of a kernel image.

    Parameters
    ----------
    array : array_like
        A stamp centred on its central pixel (``x0``, ``y0`` not given), or
        the pixels of a kernel image whose pixel ``(0, 0)`` -- array index
        ``(-y0, -x0)`` -- holds the PSF centre.
    x0, y0 : `int`, optional
        Coordinates of ``array[0, 0]`` in the kernel image's own coordinate
        system (``getX0()`` / ``getY0()``, or ``bbox.start``).
    name : `str`, optional
        What the array is, for error messages; ``"PSF stamp"`` or
        ``"PSF kernel image"`` by default.

    Returns
    -------
    stamp : `numpy.ndarray`
        ``float64``.  Without an origin: a copy of the stamp.  With one: the
        ``(2 h + 1, 2 h + 1)`` square with the PSF centre at ``stamp[h, h]``;
        an array that already is that square is returned as it is, a cut-out
        (lsst.images pads legacy kernels to the largest kernel bounding box,
        which need not be symmetric) is renormalised to unit sum.

    Raises
    ------
    TypeError
        If the array is not numeric (booleans included).
    lsst.meas.crowdsource.engine.InputError
        If the array is missing, not 2-D or not finite; a stamp without an
        origin whose dimensions are not odd; a kernel image that does not
        contain its pixel ``(0, 0)``.
    """
    kernel = x0 is not None or y0 is not None
    if name is None:
        name = "PSF kernel image" if kernel else "PSF stamp"
    # A stamp must have a central pixel; a kernel image may be padded unevenly.
    arr = check_stamp_array(array, name, odd=not kernel)
    if not kernel:
        return arr
    ny, nx = arr.shape
    cx, cy = -int(x0 or 0), -int(y0 or 0)
    if not (0 <= cx < nx and 0 <= cy < ny):
        raise InputError(
            f"The {name} (xy0=({x0}, {y0}), shape {arr.shape}) does not "
            "contain its centre pixel (0, 0)."
        )
    half = min(cx, nx - 1 - cx, cy, ny - 1 - cy)
    if nx == ny == 2 * half + 1:
        return arr
    stamp = np.array(arr[cy - half : cy + half + 1, cx - half : cx + half + 1])
    total = stamp.sum()
    if total > 0:
        stamp /= total
    return stamp
