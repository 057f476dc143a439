"""What the tasks need from an exposure, whatever kind of exposure it is.

`ExposureInputs` holds plain arrays and callables; `exposure_inputs`
builds one from an afw ``Exposure``, an ``lsst.images.VisitImage`` or an
`astropy.nddata.CCDData` (the pure-Python path), importing the afw and
lsst.images adapters only when such an object is given.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .engine import InputError

__all__ = ["ExposureInputs", "exposure_inputs", "ccddata_inputs", "planes_mask"]


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


def _is_afw_exposure(obj) -> bool:
    return type(obj).__module__.startswith("lsst.afw.image") and hasattr(obj, "getMaskedImage")


def _is_images_visit_image(obj) -> bool:
    return type(obj).__module__.startswith("lsst.images")


def exposure_inputs(exposure) -> ExposureInputs:
    """Build `ExposureInputs` from any supported exposure type.

    Raises
    ------
    TypeError
        For an object that is none of the supported types.
    """
    from astropy.nddata import CCDData

    if isinstance(exposure, ExposureInputs):
        return exposure
    if isinstance(exposure, CCDData):
        return ccddata_inputs(exposure)
    if _is_afw_exposure(exposure):
        from .adapters.afw import afw_exposure_inputs

        return afw_exposure_inputs(exposure)
    if _is_images_visit_image(exposure):
        from .adapters.images import visit_image_inputs

        return visit_image_inputs(exposure)
    raise TypeError(
        f"Cannot fit a {type(exposure).__module__}.{type(exposure).__qualname__}: expected an "
        "lsst.afw.image.Exposure, an lsst.images.VisitImage or an astropy.nddata.CCDData.")


def ccddata_inputs(ccd) -> ExposureInputs:
    """`ExposureInputs` from a `~astropy.nddata.CCDData`.

    Conventions (shared with `lsst.meas.crowdsource.ccddata_io`):

    - ``ccd.uncertainty``: `~astropy.nddata.VarianceUncertainty`,
      `~astropy.nddata.InverseVariance` or `~astropy.nddata.StdDevUncertainty`
      (required);
    - ``ccd.mask``: an integer mask whose plane bits are given by
      ``ccd.meta["MP_<NAME>"]`` (as in afw FITS files), or a boolean mask
      meaning BAD;
    - ``ccd.meta["LTV1"]``, ``["LTV2"]``: minus the PARENT origin (afw);
    - ``ccd.psf``: optional odd, centred PSF stamp;
    - ``ccd.wcs``: optional astropy WCS (0-based pixel coordinates of the
      array, so PARENT coordinates minus xy0);
    - ``ccd.meta["PHOTCALIB"]``: optional nJy per image unit.
    """
    from astropy.nddata import InverseVariance, StdDevUncertainty, VarianceUncertainty

    image = np.asarray(ccd.data)
    if image.ndim != 2:
        raise InputError(f"CCDData must hold a 2-D image; got shape {image.shape}.")
    unc = ccd.uncertainty
    if unc is None:
        raise InputError("CCDData has no uncertainty: give a VarianceUncertainty (or "
                         "InverseVariance / StdDevUncertainty).")
    arr = np.asarray(unc.array, dtype=float)
    if arr.shape != image.shape:
        raise InputError(f"The uncertainty has shape {arr.shape} but the image has shape "
                         f"{image.shape}.")
    with np.errstate(divide="ignore", invalid="ignore"):
        if isinstance(unc, VarianceUncertainty):
            variance = arr
        elif isinstance(unc, InverseVariance):
            variance = np.where(arr > 0, 1.0 / arr, np.inf)
        elif isinstance(unc, StdDevUncertainty):
            variance = arr * arr
        else:
            raise InputError(f"Unsupported uncertainty type {type(unc).__name__}; use "
                             "VarianceUncertainty, InverseVariance or StdDevUncertainty.")
    from .ccddata_io import get_bit_mask, get_photcalib, get_xy0, mask_planes

    planes = mask_planes(ccd)
    raw = None if ccd.mask is None else np.asarray(ccd.mask)
    if raw is not None and raw.shape != image.shape:
        raise InputError(f"The mask has shape {raw.shape} but the image has shape "
                         f"{image.shape}.")
    if raw is not None and raw.dtype == bool:
        if set(planes) - {"BAD"}:
            raise InputError(
                "The CCDData mask is boolean but its meta names mask planes "
                f"({', '.join(sorted(planes))}): a plain CCDData turns an integer mask "
                "into booleans. Build it with lsst.meas.crowdsource.ccddata_io.make_ccddata "
                "(or read_calexp_fits) to keep the planes, or drop the MP_ keys to mean BAD.")
        planes = {"BAD": 0}
        mask = raw.astype(np.int32)
    else:
        mask = get_bit_mask(ccd)
        if not planes and mask.any():
            raise InputError("The integer mask has no plane names: add MP_<NAME> = bit "
                             "entries to the meta (e.g. MP_BAD=0, MP_SAT=1), or pass a "
                             "boolean mask meaning BAD.")
    x0, y0 = get_xy0(ccd)
    psf = getattr(ccd, "psf", None)
    pixel_to_sky = sky_to_pixel = None
    wcs = ccd.wcs
    if wcs is not None and wcs.has_celestial:
        def pixel_to_sky(x, y, _w=wcs, _x0=x0, _y0=y0):
            ra, dec = _w.all_pix2world(np.asarray(x) - _x0, np.asarray(y) - _y0, 0)
            return np.asarray(ra), np.asarray(dec)

        def sky_to_pixel(ra, dec, _w=wcs, _x0=x0, _y0=y0):
            x, y = _w.all_world2pix(np.asarray(ra, float), np.asarray(dec, float), 0)
            return np.asarray(x) + _x0, np.asarray(y) + _y0
    return ExposureInputs(image, variance, mask, planes, (x0, y0), psf, pixel_to_sky,
                          sky_to_pixel, get_photcalib(ccd))
