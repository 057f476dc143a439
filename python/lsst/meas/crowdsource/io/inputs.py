"""The one input object: an exposure reduced to what the engine and the catalogues use.

Every adapter (`.afw`, `.images`, `.ccddata`) builds an `ExposureInputs`;
this module imports none of them, so they can all import it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

__all__ = ["ExposureInputs", "planes_mask"]


@dataclass
class ExposureInputs:
    """An exposure reduced to what the engine and the catalogues use.

    Attributes
    ----------
    image, variance : `numpy.ndarray`
        Pixel values and their variance (image units).
    mask : `numpy.ndarray` [`int`]
        Integer mask.
    mask_planes : `dict` [`str`, `int`]
        Plane name -> bit index (afw names: BAD, SAT, CR, EDGE, ...).
    xy0 : `tuple` [`int`, `int`]
        PARENT coordinates of the first pixel.
    psf : callable, `numpy.ndarray` or `None`
        ``psf(x, y)`` -> centred stamp at PARENT position, a constant stamp,
        or `None` (estimate from the image).
    pixel_to_sky : callable or `None`
        ``(x, y) -> (ra_deg, dec_deg)`` for PARENT pixel positions.
    sky_to_pixel : callable or `None`
        ``(ra_deg, dec_deg) -> (x, y)``.
    njy_per_count : `float` or `None`
        Photometric calibration (nJy per image unit).
    """

    image: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    mask_planes: dict[str, int] = field(default_factory=dict)
    xy0: tuple[int, int] = (0, 0)
    psf: Callable | np.ndarray | None = None
    pixel_to_sky: Callable | None = None
    sky_to_pixel: Callable | None = None
    njy_per_count: float | None = None

    def plane(self, names) -> np.ndarray:
        """Boolean image: any of the named planes set (unknown names ignored)."""
        return planes_mask(self.mask, self.mask_planes, names)


def planes_mask(mask: np.ndarray, planes: dict[str, int], names) -> np.ndarray:
    """Pixels where any of ``names`` is set in an integer mask."""
    bits = 0
    for name in names:
        if name in planes:
            bits |= 1 << int(planes[name])
    return (np.asarray(mask).astype(np.int64) & bits) != 0
