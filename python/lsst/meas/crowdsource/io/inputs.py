"""The one input object: an exposure reduced to what the engine and the catalogues use.

Every adapter (`.afw`, `.images`, `.ccddata`) builds an `ExposureInputs`;
this module imports none of them, so they can all import it.  Masks arrive
here as boolean planes keyed by name (see `.planes`), never as an integer
mask: each adapter reads its own mask format once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from ..engine import InputError

__all__ = ["COUNT_UNIT", "ExposureInputs", "unit_string"]

COUNT_UNIT = "count"
"""Unit of images whose pixels carry no unit of their own (an afw calexp)."""


@dataclass
class ExposureInputs:
    """An exposure reduced to what the engine and the catalogues use.

    Attributes
    ----------
    image, variance : `numpy.ndarray`
        Pixel values and their variance (image units), 2-D.  Adapters hand
        over views of the exposure's arrays where they can; nobody writes
        to them.
    mask_planes : `dict` [`str`, `numpy.ndarray` [`bool`]]
        Mask plane name -> boolean image of ``image``'s shape (read-only;
        see `.planes`).  afw names (``BAD``, ``SAT``, ``CR``, ``INTRP``,
        ``EDGE``, ``NO_DATA``, ``SUSPECT``, ...) are always present for the
        planes an exposure has: an lsst.images mask lists each renamed
        plane under both names (``SATURATED`` and ``SAT`` are one array).
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
    unit : `str`
        Unit of the image pixels, as an astropy unit string: ``"nJy"`` for
        a DP1 ``visit_image`` read with lsst.images (whose pixels are nJy),
        the unit of a CCDData that has one (``"adu"`` for `make_ccddata`'s
        default), and `COUNT_UNIT` for an afw calexp (afw images carry no
        unit) or a CCDData without one (dimensionless).  Catalogue columns
        in image units can take it; the variance is in ``unit`` squared.

    Raises
    ------
    lsst.meas.crowdsource.engine.InputError
        On construction, if a mask plane is not a boolean image of the
        image's shape.
    """

    image: np.ndarray
    variance: np.ndarray
    mask_planes: dict[str, np.ndarray] = field(default_factory=dict)
    xy0: tuple[int, int] = (0, 0)
    psf: Callable | np.ndarray | None = None
    pixel_to_sky: Callable | None = None
    sky_to_pixel: Callable | None = None
    njy_per_count: float | None = None
    unit: str = COUNT_UNIT

    def __post_init__(self):
        shape = np.shape(self.image)
        for name, plane in self.mask_planes.items():
            if np.shape(plane) != shape or np.asarray(plane).dtype != np.bool_:
                raise InputError(
                    f"Mask plane {name!r} must be a boolean image of shape {shape}; got "
                    f"{np.asarray(plane).dtype} of shape {np.shape(plane)}."
                )

    def plane(self, names: Iterable[str]) -> np.ndarray:
        """Boolean image: any of the named planes set (unknown names ignored).

        Parameters
        ----------
        names : iterable of `str`
            Plane names (a single name may be given as a `str`).

        Returns
        -------
        mask : `numpy.ndarray` [`bool`]
            A new, writeable array of the image's shape.
        """
        if isinstance(names, str):
            names = [names]
        out = np.zeros(np.shape(self.image), dtype=bool)
        for name in names:
            plane = self.mask_planes.get(name)
            if plane is not None:
                out |= plane
        return out


def unit_string(unit) -> str:
    """The astropy unit string of an image unit, `COUNT_UNIT` for none.

    Parameters
    ----------
    unit : `astropy.units.UnitBase`, `str` or `None`
        The unit; `None` and the dimensionless unit mean "no unit".

    Returns
    -------
    unit : `str`
        ``unit.to_string()`` (``"nJy"``, ``"adu"``, ``"electron"``, ...),
        with astropy's count (``"ct"``) spelled `COUNT_UNIT`.
    """
    import astropy.units as u

    if unit is None:
        return COUNT_UNIT
    unit = u.Unit(unit)
    if unit == u.dimensionless_unscaled or unit == u.count:
        return COUNT_UNIT
    return unit.to_string()
