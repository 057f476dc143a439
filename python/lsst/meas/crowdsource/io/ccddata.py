"""Pure-Python exposures: `astropy.nddata.CCDData` in the afw calexp layout.

This module is the exposure path used wherever ``lsst.afw`` is not available.
It reads and writes an `~astropy.nddata.CCDData` as a FITS file laid out the
way ``lsst.afw.image.ExposureF.writeFits`` lays out a calexp (following
afw's ``ExposureInfo``/``MaskedImage``/``Mask`` writers), so that files can
move between the Rubin stack (``ExposureF(path)``) and plain astropy.  The
layout is tested here with astropy only; the round trip through afw itself
belongs in a test that runs where afw is installed.

File layout
-----------
HDU 0 (primary)
    No data.  Holds the exposure metadata (``ccd.meta``, see below), plus
    ``HIERARCH PHOTCALIB`` and the equivalent afw ``FLUXMAG0`` when a
    photometric calibration is known.
``EXTNAME = 'IMAGE'``
    32-bit float image.  Carries ``INHERIT = T``, ``EXTTYPE``, the sky WCS
    (FITS convention: it maps the pixels *of this array*), afw's trivial
    alternate WCS ``A`` encoding the image origin (``CTYPE1A = 'LINEAR'``,
    ``CRPIX1A = 1``, ``CRVAL1A = x0``, ...), ``LTV1 = -x0``, ``LTV2 = -y0``
    (for ds9) and ``BUNIT``.
``EXTNAME = 'MASK'``
    32-bit integer bit mask with one ``MP_<NAME> = <bit>`` keyword per mask
    plane (long names become ``HIERARCH`` cards, as cfitsio does for afw),
    plus the same WCS/origin keywords as ``IMAGE``.
``EXTNAME = 'VARIANCE'``
    32-bit float variance, with the same WCS/origin keywords and
    ``BUNIT = '<unit>**2'``.
``EXTNAME = 'CROWDSOURCE_PSF'`` (optional)
    A 2-D, odd-sized PSF stamp (64-bit float), centred on its central pixel.
    afw ignores this HDU: our files carry no ``AR_HDU`` keyword, so afw never
    looks past ``VARIANCE``.

Files written by afw may have further HDUs (the archive holding the PSF
model, PhotoCalib, ...).  When reading them the archive's PhotoCalib is
recovered (as a spatially-constant nJy-per-count factor) when possible; the
other archive contents are not read and are not written back.

The CCDData contract
--------------------
Every `~astropy.nddata.CCDData` produced by this module (and expected by the
rest of ``lsst.meas.crowdsource`` on the astropy path) follows these rules:

``ccd.data``
    2-D floating-point image (``float32`` after a read).  ``x`` is the
    column (second index), ``y`` the row.
``ccd.uncertainty``
    A `~astropy.nddata.VarianceUncertainty` of the same shape (any
    `~astropy.nddata.NDUncertainty` is converted to a variance on write).
``ccd.mask``
    2-D ``int32`` bit mask of the same shape (afw ``MaskPixel``), or `None`
    (written as zeros).  A plain `~astropy.nddata.CCDData` cannot hold this:
    its ``mask`` setter turns every mask into booleans, losing the planes.
    So this module builds `BitMaskCCDData`, a CCDData subclass that keeps
    integer masks (``isinstance(ccd, CCDData)`` still holds).  Create
    exposures with `make_ccddata` (or `read_calexp_fits`), read the mask
    with `get_bit_mask`, and expect a `TypeError` on write if a boolean
    mask slipped in.
``ccd.meta["MP_<NAME>"]``
    Bit index of each mask plane, e.g. ``MP_BAD = 0``, ``MP_SAT = 1``, ...
    (`mask_planes` turns them into a ``{name: bit}`` dict).
``ccd.meta["LTV1"]``, ``ccd.meta["LTV2"]``
    The image origin ``xy0`` as afw writes it: ``LTV1 = -x0``,
    ``LTV2 = -y0``.  PARENT pixel ``(x, y)`` is array element
    ``[y - y0, x - x0]``.  Use `get_xy0` / `set_xy0` rather than the keys.
``ccd.wcs``
    An `astropy.wcs.WCS` (celestial, 2 axes) or `None`.  Like every astropy
    WCS attached to an array it maps *array* pixel coordinates (0-based,
    origin at the first array element), not PARENT coordinates; subtract
    ``xy0`` from PARENT positions before using it.
``ccd.psf``
    Optional 2-D odd-sized `numpy.ndarray` PSF stamp centred on its
    central pixel, or `None`.
``ccd.meta["PHOTCALIB"]``
    Optional photometric calibration: nJy per image count (a positive
    float), i.e. afw's ``PhotoCalib.getCalibrationMean()``.  Use
    `get_photcalib`.
``ccd.unit``
    The image unit (CCDData requires one).  Written as ``BUNIT`` in the
    IMAGE HDU; a file without ``BUNIT`` reads as ``adu``.
other ``ccd.meta`` keys
    Written to, and read from, the primary header.  Keys are upper case FITS
    keywords; values must be `str`, `bool`, `int`, `float` or `None`.
    ``COMMENT``/``HISTORY`` cards, structural keywords, WCS keywords and
    afw archive bookkeeping (``AR_HDU``, ``ARCHIVE_ID_*``, ``*_ID``,
    ``EXPINFO_V``) are not carried in ``meta``.

Non-finite pixels are written and read unchanged; flagging them (e.g. with
``NO_DATA``) is left to the caller.
"""

from __future__ import annotations

__all__ = [
    "AB_REFERENCE_FLUX_NJY",
    "BitMaskCCDData",
    "ccddata_inputs",
    "DEFAULT_MASK_PLANES",
    "PHOTCALIB_KEY",
    "PSF_EXTNAME",
    "from_hdulist",
    "get_bit_mask",
    "get_photcalib",
    "get_xy0",
    "make_ccddata",
    "mask_planes",
    "read_calexp_fits",
    "set_xy0",
    "to_hdulist",
    "validate_ccddata",
    "write_calexp_fits",
]

import logging
import math
import numbers
import os
import re
import secrets
import warnings
from collections.abc import Mapping
from typing import Any

import astropy.units as u
import numpy as np
from astropy.io import fits
from astropy.nddata import (
    CCDData,
    InverseVariance,
    NDUncertainty,
    StdDevUncertainty,
    VarianceUncertainty,
)
from astropy.wcs import WCS, FITSFixedWarning

from ..engine import InputError
from .inputs import ExposureInputs

_LOG = logging.getLogger(__name__)

DEFAULT_MASK_PLANES: dict[str, int] = {
    "BAD": 0,
    "SAT": 1,
    "INTRP": 2,
    "CR": 3,
    "EDGE": 4,
    "DETECTED": 5,
    "DETECTED_NEGATIVE": 6,
    "SUSPECT": 7,
    "NO_DATA": 8,
}
"""afw's default mask planes and their bits (``Mask.getMaskPlaneDict()``)."""

MASK_PLANE_PREFIX = "MP_"
"""Prefix of the mask-plane keywords (afw ``Mask.maskPlanePrefix``)."""

PSF_EXTNAME = "CROWDSOURCE_PSF"
"""EXTNAME of the optional PSF-stamp HDU."""

PHOTCALIB_KEY = "PHOTCALIB"
"""``meta`` key of the photometric calibration, in nJy per image count."""

AB_REFERENCE_FLUX_NJY = 1e23 * 10 ** (48.6 / -2.5) * 1e9
"""AB zero-magnitude flux in nJy; afw's ``FLUXMAG0 = this / calibration``."""

_PLANE_EXTNAMES = ("IMAGE", "MASK", "VARIANCE")
_MAX_MASK_PLANES = 32

# Keywords that describe the file rather than the exposure.
_STRUCTURAL_KEYS = frozenset(
    {
        "SIMPLE",
        "BITPIX",
        "NAXIS",
        "EXTEND",
        "PCOUNT",
        "GCOUNT",
        "XTENSION",
        "BSCALE",
        "BZERO",
        "BLANK",
        "CHECKSUM",
        "DATASUM",
        "EXTNAME",
        "EXTTYPE",
        "EXTVER",
        "EXTLEVEL",
        "INHERIT",
        "COMMENT",
        "HISTORY",
        "",
        "BUNIT",
        "LTV1",
        "LTV2",
    }
)
# afw archive bookkeeping: meaningless once the archive HDUs are dropped.
_ARCHIVE_KEYS = frozenset(
    {
        "AR_HDU",
        "EXPINFO_V",
        "PSF_ID",
        "SKYWCS_ID",
        "COADD_INPUTS_ID",
        "AP_CORR_MAP_ID",
        "VALID_POLYGON_ID",
        "TRANSMISSION_CURVE_ID",
        "DETECTOR_ID",
        "PHOTOCALIB_ID",
        "FILTER_ID",
        "SUMMARY_STATS_ID",
    }
)
_WCS_KEY_RE = re.compile(
    r"^(NAXIS\d+|WCSAXES[A-Z]?|CTYPE\d[A-Z]?|CRPIX\d[A-Z]?|CRVAL\d[A-Z]?"
    r"|CDELT\d[A-Z]?|CUNIT\d[A-Z]?|CROTA\d|CD\d_\d[A-Z]?|PC\d_\d[A-Z]?"
    r"|PV\d_\d+[A-Z]?|PS\d_\d+[A-Z]?|LONPOLE[A-Z]?|LATPOLE[A-Z]?"
    r"|RADESYS[A-Z]?|RADECSYS|EQUINOX[A-Z]?|WCSNAME[A-Z]?"
    r"|[AB]P?_ORDER|[AB]P?_\d+_\d+|[AB]P?_DMAX)$"
)
_PLAIN_KEY_RE = re.compile(r"^[A-Z0-9_-]{1,8}$")


# ---------------------------------------------------------------------------
# The CCDData subclass
# ---------------------------------------------------------------------------


class BitMaskCCDData(CCDData):
    """A `~astropy.nddata.CCDData` whose ``mask`` is an integer bit mask.

    `~astropy.nddata.NDDataArray` (and so CCDData) converts any mask it is
    given to booleans, which would erase afw's mask planes.  This subclass
    stores the mask as a native ``int32`` array instead, with the plane
    meanings in ``meta["MP_<NAME>"]``.  Everything else is CCDData.

    Notes
    -----
    Arithmetic methods (``add``, ``multiply``, ...) combine masks with a
    bitwise OR (rather than CCDData's logical OR); as in astropy they do
    not carry ``meta`` over unless ``handle_meta`` is given.  astropy's own
    ``CCDData.write`` stores masks as ``uint8``; use `write_calexp_fits`.
    """

    @property
    def mask(self) -> np.ndarray | None:
        """Integer (``int32``) bit mask, or `None` (`numpy.ndarray`)."""
        value = self._mask
        if value is None or value is np.ma.nomask:
            return None
        return value

    @mask.setter
    def mask(self, value: Any) -> None:
        if value is None or value is np.ma.nomask:
            self._mask = np.ma.nomask
            return
        self._mask = _as_int32_mask(value, np.shape(self.data))

    def _arithmetic_mask(self, operation, operand, handle_mask, axis=None, **kwds):  # noqa: D102
        if handle_mask is np.logical_or:
            handle_mask = np.bitwise_or
        return super()._arithmetic_mask(operation, operand, handle_mask, axis=axis, **kwds)


# ---------------------------------------------------------------------------
# Small accessors
# ---------------------------------------------------------------------------


def get_bit_mask(ccd: CCDData) -> np.ndarray:
    """Return the integer bit mask of ``ccd`` (zeros if it has none).

    Parameters
    ----------
    ccd : `astropy.nddata.CCDData`
        Exposure following this module's conventions.

    Returns
    -------
    mask : `numpy.ndarray`
        ``int32`` array of the image's shape (the stored array itself when
        it already is one, not a copy).

    Raises
    ------
    TypeError
        Raised if the mask is boolean (a plain CCDData turned the bit mask
        into booleans; build the exposure with `make_ccddata`) or not
        integer.
    ValueError
        Raised if the mask shape differs from the image shape.
    """
    shape = np.shape(ccd.data)
    if ccd.mask is None:
        return np.zeros(shape, dtype=np.int32)
    mask = ccd.mask
    if (
        isinstance(mask, np.ndarray)
        and mask.dtype == np.int32
        and mask.dtype.isnative
        and mask.shape == shape
    ):
        return mask
    return _as_int32_mask(mask, shape)


def mask_planes(ccd: CCDData) -> dict[str, int]:
    """Return the mask planes declared in ``ccd.meta``.

    Parameters
    ----------
    ccd : `astropy.nddata.CCDData`
        Exposure following this module's conventions.

    Returns
    -------
    planes : `dict` [`str`, `int`]
        Plane name (without the ``MP_`` prefix) to bit index, ordered by
        bit.  Empty if no plane is declared.

    Raises
    ------
    ValueError
        Raised if a plane's bit is not an integer in [0, 31] or two planes
        share a bit.
    """
    return _planes_from_mapping(ccd.meta)


def get_xy0(ccd: CCDData) -> tuple[int, int]:
    """Return the image origin ``(x0, y0)`` (PARENT coordinates of pixel 0,0).

    Parameters
    ----------
    ccd : `astropy.nddata.CCDData`
        Exposure; ``meta["LTV1"]``/``meta["LTV2"]`` hold ``-x0``/``-y0``.

    Returns
    -------
    x0, y0 : `int`
        The origin; ``(0, 0)`` when the keys are absent.

    Raises
    ------
    ValueError
        Raised if the keys are not integral numbers.
    """
    return (
        -_integral(ccd.meta.get("LTV1", 0.0), "meta['LTV1']"),
        -_integral(ccd.meta.get("LTV2", 0.0), "meta['LTV2']"),
    )


def set_xy0(ccd: CCDData, x0: int, y0: int) -> None:
    """Set the image origin ``(x0, y0)`` in ``ccd.meta`` (as afw's LTV1/LTV2).

    Parameters
    ----------
    ccd : `astropy.nddata.CCDData`
        Exposure to modify in place.
    x0, y0 : `int`
        PARENT coordinates of array element ``[0, 0]``.

    Raises
    ------
    ValueError
        Raised if ``x0`` or ``y0`` is not an integer.
    """
    x0 = _integral(x0, "x0")
    y0 = _integral(y0, "y0")
    ccd.meta["LTV1"] = float(-x0)
    ccd.meta["LTV2"] = float(-y0)


def get_photcalib(ccd: CCDData) -> float | None:
    """Return the photometric calibration in nJy per count, or `None`.

    Parameters
    ----------
    ccd : `astropy.nddata.CCDData`
        Exposure; the value lives in ``meta["PHOTCALIB"]``.

    Returns
    -------
    photcalib : `float` or `None`
        nJy per image count, or `None` if unknown.

    Raises
    ------
    ValueError
        Raised if the stored value is not a finite positive number.
    """
    value = ccd.meta.get(PHOTCALIB_KEY)
    if value is None:
        return None
    return _check_photcalib(value)


# ---------------------------------------------------------------------------
# Construction and validation
# ---------------------------------------------------------------------------


def make_ccddata(
    image: Any,
    variance: Any,
    mask: Any = None,
    mask_planes: Mapping[str, int] | None = None,
    wcs: WCS | None = None,
    psf: Any = None,
    xy0: tuple[int, int] = (0, 0),
    photcalib: float | None = None,
    meta: Mapping[str, Any] | None = None,
    unit: str | u.UnitBase = "adu",
) -> CCDData:
    """Build a `~astropy.nddata.CCDData` that follows this module's contract.

    Parameters
    ----------
    image : array_like
        2-D image.  Floating-point input keeps its dtype; anything else is
        converted to ``float32``.
    variance : array_like or `~astropy.nddata.NDUncertainty`
        Per-pixel variance, same shape as ``image``; an uncertainty object
        is converted to a variance.  Finite values must be >= 0.
    mask : array_like, optional
        Integer bit mask, same shape as ``image``; `None` means all zero.
        Boolean masks are refused (their meaning is ambiguous).
    mask_planes : mapping [`str`, `int`], optional
        Plane name to bit.  Defaults to the ``MP_*`` keys of ``meta`` if it
        has any, else `DEFAULT_MASK_PLANES`.  Every bit set in ``mask`` must
        belong to a declared plane.
    wcs : `astropy.wcs.WCS`, optional
        Celestial WCS of the array pixels (not PARENT pixels).
    psf : array_like, optional
        2-D odd-sized PSF stamp centred on its central pixel.
    xy0 : `tuple` [`int`, `int`], optional
        Image origin in PARENT coordinates.
    photcalib : `float`, optional
        nJy per image count.
    meta : mapping, optional
        Further primary-header metadata (upper-case FITS keywords).
    unit : `str` or `astropy.units.UnitBase`, optional
        Image unit; ``"adu"`` by default.

    Returns
    -------
    ccd : `BitMaskCCDData`
        The new exposure (a `~astropy.nddata.CCDData`).

    Raises
    ------
    ValueError
        Raised for a non-2-D image, shape mismatches, negative variance,
        undeclared mask bits, an invalid PSF stamp, bad mask planes, a
        non-integer ``xy0`` or a non-positive ``photcalib``.
    TypeError
        Raised for a boolean or non-integer mask, a ``wcs`` that is not an
        `astropy.wcs.WCS`, or unsupported ``meta`` values.
    """
    image_arr = np.asarray(image)
    if image_arr.ndim != 2:
        raise ValueError(f"image must be 2-D; got shape {image_arr.shape}")
    if image_arr.dtype.kind != "f":
        image_arr = image_arr.astype(np.float32)
    shape = image_arr.shape

    if isinstance(variance, NDUncertainty):
        variance_arr = np.asarray(variance.represent_as(VarianceUncertainty).array)
    else:
        variance_arr = np.asarray(variance)
    if variance_arr.shape != shape:
        raise ValueError(f"variance shape {variance_arr.shape} does not match image shape {shape}")
    if variance_arr.dtype.kind != "f":
        variance_arr = variance_arr.astype(np.float32)
    with np.errstate(invalid="ignore"):
        n_negative = int(np.count_nonzero(variance_arr < 0))
    if n_negative:
        raise ValueError(
            f"variance has {n_negative} negative pixel(s); variances must be >= 0 (or NaN)"
        )

    new_meta: dict[str, Any] = {}
    if meta is not None:
        if not isinstance(meta, Mapping):
            raise TypeError(f"meta must be a mapping; got {type(meta).__name__}")
        new_meta.update({str(k): v for k, v in meta.items()})
    if mask_planes is None:
        planes = _planes_from_mapping(new_meta) or dict(DEFAULT_MASK_PLANES)
    else:
        planes = _validate_planes(mask_planes)
    for key in [k for k in new_meta if k.upper().startswith(MASK_PLANE_PREFIX)]:
        del new_meta[key]
    for name, bit in planes.items():
        new_meta[MASK_PLANE_PREFIX + name] = bit

    if mask is None:
        mask_arr = np.zeros(shape, dtype=np.int32)
    else:
        mask_arr = _as_int32_mask(mask, shape)
        declared = 0
        for bit in planes.values():
            declared |= 1 << bit
        used = (
            int(np.bitwise_or.reduce(mask_arr.view(np.uint32), axis=None)) if mask_arr.size else 0
        )
        stray = used & ~declared
        if stray:
            raise ValueError(
                f"mask has bits set (0x{stray:08x}) that belong to no declared mask plane; "
                f"declared planes: {planes}"
            )

    if wcs is not None:
        _check_wcs(wcs)
    psf_arr = None if psf is None else _check_psf(psf)
    if photcalib is not None:
        new_meta[PHOTCALIB_KEY] = _check_photcalib(photcalib)
    elif new_meta.get(PHOTCALIB_KEY) is not None:
        new_meta[PHOTCALIB_KEY] = _check_photcalib(new_meta[PHOTCALIB_KEY])
    for key, value in new_meta.items():
        _check_meta_value(key, value)

    try:
        xy0_x, xy0_y = xy0
    except (TypeError, ValueError):
        raise ValueError(f"xy0 must be a pair of integers; got {xy0!r}") from None

    ccd = BitMaskCCDData(
        image_arr,
        uncertainty=VarianceUncertainty(variance_arr),
        mask=mask_arr,
        wcs=wcs,
        meta=new_meta,
        unit=unit,
        psf=psf_arr,
    )
    set_xy0(ccd, xy0_x, xy0_y)
    return ccd


def validate_ccddata(ccd: CCDData) -> None:
    """Check that ``ccd`` follows this module's contract.

    Parameters
    ----------
    ccd : `astropy.nddata.CCDData`
        Exposure to check.

    Raises
    ------
    TypeError
        Raised if ``ccd`` is not a CCDData, if the mask is boolean or not
        integer, if the WCS is not an `astropy.wcs.WCS`, or if a ``meta``
        value cannot be written to a FITS header.
    ValueError
        Raised for a non-2-D image, a missing uncertainty, shape mismatches,
        bad mask planes, an invalid PSF stamp, a non-integral origin or an
        invalid photometric calibration.
    """
    _planes_for_write(ccd)


# ---------------------------------------------------------------------------
# FITS conversion
# ---------------------------------------------------------------------------


def to_hdulist(ccd: CCDData) -> fits.HDUList:
    """Convert ``ccd`` to an `~astropy.io.fits.HDUList` in the afw layout.

    Parameters
    ----------
    ccd : `astropy.nddata.CCDData`
        Exposure following this module's conventions.

    Returns
    -------
    hdul : `astropy.io.fits.HDUList`
        Primary, IMAGE, MASK, VARIANCE and (if ``ccd.psf`` is set)
        CROWDSOURCE_PSF HDUs.

    Raises
    ------
    TypeError, ValueError
        Raised if ``ccd`` breaks the contract (see `validate_ccddata`).
    """
    image, mask, variance, planes, psf = _planes_for_write(ccd)
    x0, y0 = get_xy0(ccd)

    primary = fits.PrimaryHDU()
    photcalib = get_photcalib(ccd)
    for key, value in ccd.meta.items():
        key = str(key)
        upper = key.upper()
        if (
            upper in _STRUCTURAL_KEYS
            or upper in _ARCHIVE_KEYS
            or upper.startswith("ARCHIVE_ID_")
            or upper.startswith(MASK_PLANE_PREFIX)
            or upper == PHOTCALIB_KEY
            or (photcalib is not None and upper in ("FLUXMAG0", "FLUXMAG0ERR"))
            or _WCS_KEY_RE.match(upper)
        ):
            continue
        _append_card(primary.header, key, value)
    if photcalib is not None:
        _append_card(
            primary.header, PHOTCALIB_KEY, photcalib, "nJy per image count (meas_crowdsource)"
        )
        _append_card(
            primary.header,
            "FLUXMAG0",
            AB_REFERENCE_FLUX_NJY / photcalib,
            "counts of a zero-magnitude (AB) source",
        )

    # Keywords shared by the three image planes, as afw shares imageMetadata.
    common = fits.Header()
    if ccd.wcs is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FITSFixedWarning)
            common.update(ccd.wcs.to_header(relax=True))
    common["CTYPE1A"] = ("LINEAR", "Type of projection")
    common["CTYPE2A"] = ("LINEAR", "Type of projection")
    common["CRPIX1A"] = (1.0, "Column Pixel Coordinate of Reference")
    common["CRPIX2A"] = (1.0, "Row Pixel Coordinate of Reference")
    common["CRVAL1A"] = (float(x0), "Column pixel of Reference Pixel")
    common["CRVAL2A"] = (float(y0), "Row pixel of Reference Pixel")
    common["CUNIT1A"] = ("PIXEL", "Column unit")
    common["CUNIT2A"] = ("PIXEL", "Row unit")
    common["LTV1"] = float(-x0)
    common["LTV2"] = float(-y0)

    unit_str = _unit_string(ccd.unit)
    hdus: list[fits.hdu.base.ExtensionHDU] = []
    for extname, data in zip(_PLANE_EXTNAMES, (image, mask, variance)):
        header = fits.Header()
        header["INHERIT"] = True
        header["EXTTYPE"] = extname
        header.extend(common)
        if extname == "MASK":
            for name, bit in planes.items():
                _append_card(header, MASK_PLANE_PREFIX + name, bit)
        elif unit_str is not None:
            header["BUNIT"] = unit_str if extname == "IMAGE" else f"{unit_str}**2"
        hdus.append(fits.ImageHDU(data=data, header=header, name=extname))
    if psf is not None:
        psf_header = fits.Header()
        psf_header["EXTTYPE"] = (PSF_EXTNAME, "PSF stamp centred on its central pixel")
        hdus.append(fits.ImageHDU(data=psf, header=psf_header, name=PSF_EXTNAME))
    return fits.HDUList([primary, *hdus])


def from_hdulist(hdul: fits.HDUList, source: str = "<HDUList>") -> CCDData:
    """Build a `~astropy.nddata.CCDData` from an afw-layout HDU list.

    Parameters
    ----------
    hdul : `astropy.io.fits.HDUList`
        Open FITS file with IMAGE, MASK and VARIANCE HDUs.
    source : `str`, optional
        Name of the file, used in error messages.

    Returns
    -------
    ccd : `BitMaskCCDData`
        The exposure (a `~astropy.nddata.CCDData`); arrays are native-endian
        copies, independent of ``hdul``.

    Raises
    ------
    ValueError
        Raised if an IMAGE, MASK or VARIANCE HDU is missing or empty, the
        planes are not 2-D or differ in shape, or the mask planes or PSF
        stamp are invalid.
    """
    names = [hdu.name for hdu in hdul]
    planes_hdu = {}
    for extname in _PLANE_EXTNAMES:
        if extname not in names:
            raise ValueError(
                f"{source}: no HDU with EXTNAME '{extname}' (found {names}); "
                "not an afw calexp/MaskedImage FITS file"
            )
        hdu = hdul[extname]
        if hdu.data is None:
            raise ValueError(f"{source}: HDU '{extname}' has no data")
        if hdu.data.ndim != 2:
            raise ValueError(
                f"{source}: HDU '{extname}' is {hdu.data.ndim}-D; expected a 2-D image"
            )
        planes_hdu[extname] = hdu
    shapes = {name: hdu.data.shape for name, hdu in planes_hdu.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"{source}: image planes differ in shape: {shapes}")

    primary_header = hdul[0].header
    image_header = planes_hdu["IMAGE"].header
    mask_header = planes_hdu["MASK"].header

    meta: dict[str, Any] = {}
    for card in primary_header.cards:
        key = card.keyword
        upper = key.upper()
        if (
            upper in _STRUCTURAL_KEYS
            or upper in _ARCHIVE_KEYS
            or upper.startswith("ARCHIVE_ID_")
            or upper.startswith(MASK_PLANE_PREFIX)
            or upper in ("FLUXMAG0", "FLUXMAG0ERR", PHOTCALIB_KEY)
            or _WCS_KEY_RE.match(upper)
        ):
            continue
        meta[key] = None if isinstance(card.value, fits.card.Undefined) else card.value

    photcalib = _read_photcalib(hdul, primary_header, source)
    if photcalib is not None:
        meta[PHOTCALIB_KEY] = photcalib

    planes = _planes_from_mapping(mask_header, source=f"{source} MASK header")
    for name, bit in planes.items():
        meta[MASK_PLANE_PREFIX + name] = bit

    image = _native(planes_hdu["IMAGE"].data, np.float32)
    mask = _native(planes_hdu["MASK"].data, np.int32)
    variance = _native(planes_hdu["VARIANCE"].data, np.float32)

    wcs = _read_wcs(image_header, source)
    unit = _read_unit(image_header, source, meta)

    psf = None
    if PSF_EXTNAME in names:
        psf_data = hdul[PSF_EXTNAME].data
        try:
            psf = _check_psf(psf_data)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: HDU '{PSF_EXTNAME}': {err}") from None

    ccd = BitMaskCCDData(
        image,
        uncertainty=VarianceUncertainty(variance),
        mask=mask,
        wcs=wcs,
        meta=meta,
        unit=unit,
        psf=psf,
    )
    x0, y0 = _read_xy0(image_header, source)
    set_xy0(ccd, x0, y0)
    return ccd


def read_calexp_fits(path: str | os.PathLike[str]) -> CCDData:
    """Read an afw calexp-layout FITS file into a `~astropy.nddata.CCDData`.

    Parameters
    ----------
    path : `str` or path-like
        FITS file written by this module or by ``lsst.afw`` (``calexp``,
        ``ExposureF``, ``MaskedImageF``).

    Returns
    -------
    ccd : `BitMaskCCDData`
        The exposure (a `~astropy.nddata.CCDData`), following the
        conventions in the module docstring.

    Raises
    ------
    FileNotFoundError
        Raised if ``path`` does not exist.
    ValueError
        Raised if the file lacks the IMAGE/MASK/VARIANCE HDUs or they are
        inconsistent (see `from_hdulist`).
    """
    path = os.fspath(path)
    with fits.open(path, memmap=False) as hdul:
        return from_hdulist(hdul, source=path)


def write_calexp_fits(ccd: CCDData, path: str | os.PathLike[str], overwrite: bool = False) -> None:
    """Write ``ccd`` as an afw calexp-layout FITS file, atomically.

    The file is written to a temporary name in the destination directory and
    renamed into place, so ``path`` is never left half-written: after a
    failure it is either absent or holds its previous content.

    Parameters
    ----------
    ccd : `astropy.nddata.CCDData`
        Exposure following this module's conventions.
    path : `str` or path-like
        Destination file.
    overwrite : `bool`, optional
        Replace an existing file.  If `False` (default) an existing file
        raises `FileExistsError`.

    Raises
    ------
    FileExistsError
        Raised if ``path`` exists and ``overwrite`` is `False`.
    TypeError, ValueError
        Raised if ``ccd`` breaks the contract (see `validate_ccddata`); no
        file is created.
    OSError
        Raised if writing fails; the temporary file is removed.
    """
    path = os.fspath(path)
    if not overwrite and os.path.lexists(path):
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it")
    hdul = to_hdulist(ccd)  # validates before anything touches the disk
    directory, basename = os.path.split(os.path.abspath(path))
    tmp_path = os.path.join(directory, f".{basename}.{secrets.token_hex(6)}.tmp")
    # os.open with O_EXCL: never clobber; the mode honours the umask, so the
    # final file gets ordinary permissions (unlike mkstemp's 0600).
    fd = os.open(tmp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as stream:
            hdul.writeto(stream)
        if overwrite:
            os.replace(tmp_path, path)
        else:
            _rename_no_clobber(tmp_path, path)
    except BaseException:
        try:
            os.unlink(tmp_path)
        except FileNotFoundError:
            pass
        raise


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _rename_no_clobber(src: str, dst: str) -> None:
    """Move ``src`` to ``dst``, failing if ``dst`` appeared in the meantime."""
    try:
        os.link(src, dst)
    except FileExistsError:
        raise FileExistsError(f"{dst} exists; pass overwrite=True to replace it") from None
    except OSError:
        # No hard links on this file system: best effort check, then rename.
        if os.path.lexists(dst):
            raise FileExistsError(f"{dst} exists; pass overwrite=True to replace it") from None
        os.replace(src, dst)
        return
    os.unlink(src)


def _integral(value: Any, what: str) -> int:
    """Return ``value`` as an `int`, refusing non-integral numbers."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what} must be an integer; got {value!r}")
    as_float = float(value)
    if not math.isfinite(as_float) or as_float != round(as_float):
        raise ValueError(f"{what} must be an integer; got {value!r}")
    return int(round(as_float))


def _check_photcalib(value: Any) -> float:
    """Validate a nJy-per-count calibration factor."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"{PHOTCALIB_KEY} (nJy per count) must be a positive number; got {value!r}"
        )
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{PHOTCALIB_KEY} (nJy per count) must be finite and > 0; got {value!r}")
    return value


def _validate_planes(planes: Mapping[str, Any], source: str = "mask_planes") -> dict[str, int]:
    """Check a ``{name: bit}`` mapping and return it ordered by bit."""
    if not isinstance(planes, Mapping):
        raise TypeError(
            f"{source} must be a mapping of plane name to bit; got {type(planes).__name__}"
        )
    result: dict[str, int] = {}
    owner: dict[int, str] = {}
    for name, bit in planes.items():
        if not isinstance(name, str) or not name or not name.strip() == name or " " in name:
            raise ValueError(f"{source}: invalid mask plane name {name!r}")
        if isinstance(bit, bool) or not isinstance(bit, numbers.Integral):
            raise ValueError(
                f"{source}: bit of mask plane {name!r} must be an integer; got {bit!r}"
            )
        bit = int(bit)
        if not 0 <= bit < _MAX_MASK_PLANES:
            raise ValueError(f"{source}: bit of mask plane {name!r} must be in [0, 31]; got {bit}")
        if bit in owner:
            raise ValueError(f"{source}: mask planes {owner[bit]!r} and {name!r} share bit {bit}")
        owner[bit] = name
        result[name] = bit
    return dict(sorted(result.items(), key=lambda item: item[1]))


def _planes_from_mapping(mapping: Mapping[str, Any], source: str = "meta") -> dict[str, int]:
    """Collect the ``MP_*`` keywords of a header or meta mapping."""
    found = {
        str(key)[len(MASK_PLANE_PREFIX) :]: value
        for key, value in mapping.items()
        if str(key).upper().startswith(MASK_PLANE_PREFIX)
    }
    return _validate_planes(found, source)


def _as_int32_mask(mask: Any, shape: tuple[int, ...]) -> np.ndarray:
    """Convert an integer bit mask to native ``int32``, keeping bit patterns."""
    mask_arr = np.asarray(mask)
    if mask_arr.dtype == np.bool_:
        raise TypeError(
            "mask is boolean, so it has no mask planes (a plain astropy CCDData turns every mask "
            "into booleans); build the exposure with make_ccddata() from an integer bit mask"
        )
    if mask_arr.dtype.kind not in "iu":
        raise TypeError(f"mask must be an integer array; got dtype {mask_arr.dtype}")
    if mask_arr.shape != shape:
        raise ValueError(f"mask shape {mask_arr.shape} does not match image shape {shape}")
    if mask_arr.size:
        lo, hi = int(mask_arr.min()), int(mask_arr.max())
        if lo < -(2**31) or hi >= 2**32:
            raise ValueError(f"mask values [{lo}, {hi}] do not fit in 32 bits")
    return mask_arr.astype(np.int64).astype(np.uint32).view(np.int32).copy()


def _check_psf(psf: Any) -> np.ndarray:
    """Validate a PSF stamp and return it as ``float64``."""
    if psf is None:
        raise ValueError("PSF stamp is missing")
    psf_arr = np.asarray(psf)
    if psf_arr.dtype.kind not in "fiu" or psf_arr.dtype == np.bool_:
        raise TypeError(f"PSF stamp must be numeric; got dtype {psf_arr.dtype}")
    if psf_arr.ndim != 2:
        raise ValueError(f"PSF stamp must be 2-D; got shape {psf_arr.shape}")
    if psf_arr.shape[0] % 2 == 0 or psf_arr.shape[1] % 2 == 0:
        raise ValueError(
            f"PSF stamp must have odd dimensions (centred on a pixel); got shape {psf_arr.shape}"
        )
    psf_arr = psf_arr.astype(np.float64)
    if not np.all(np.isfinite(psf_arr)):
        raise ValueError("PSF stamp contains NaN or inf")
    return psf_arr


def _check_wcs(wcs: Any) -> None:
    """Require a 2-axis celestial astropy WCS."""
    if not isinstance(wcs, WCS):
        raise TypeError(f"wcs must be an astropy.wcs.WCS or None; got {type(wcs).__name__}")
    if wcs.naxis != 2 or not wcs.has_celestial:
        raise ValueError(
            f"wcs must be a 2-axis celestial WCS; got naxis={wcs.naxis}, ctype={list(wcs.wcs.ctype)}"
        )


def _check_meta_value(key: str, value: Any) -> None:
    """Refuse ``meta`` values that do not fit in a FITS header card."""
    if value is None or isinstance(value, (str, bool, numbers.Real, np.bool_)):
        if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
            if not math.isfinite(float(value)):
                raise ValueError(f"meta[{key!r}] = {value!r} cannot be written to a FITS header")
        return
    raise TypeError(
        f"meta[{key!r}] has type {type(value).__name__}; FITS headers hold only str, bool, int, float or None"
    )


def _append_card(header: fits.Header, key: str, value: Any, comment: str | None = None) -> None:
    """Append a card, using the HIERARCH convention for non-standard keys."""
    _check_meta_value(key, value)
    if isinstance(value, np.generic):
        value = value.item()
    if value is None:
        value = fits.card.UNDEFINED
    keyword = key if _PLAIN_KEY_RE.match(key) else f"HIERARCH {key}"
    try:
        card = fits.Card(keyword, value, comment) if comment else fits.Card(keyword, value)
        with warnings.catch_warnings():
            warnings.simplefilter("error", fits.verify.VerifyWarning)
            card.verify("exception")
            str(card)  # formatting is where over-long HIERARCH cards fail
    except (ValueError, fits.verify.VerifyError, fits.verify.VerifyWarning) as err:
        raise ValueError(
            f"meta[{key!r}] = {value!r} cannot be written as a FITS card: {err}"
        ) from None
    header.append(card, end=True)


def _planes_for_write(
    ccd: CCDData,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, int], np.ndarray | None]:
    """Validate ``ccd`` and return its arrays in the on-disk dtypes."""
    if not isinstance(ccd, CCDData):
        raise TypeError(f"expected an astropy.nddata.CCDData; got {type(ccd).__name__}")
    image = np.asarray(ccd.data)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D; got shape {image.shape}")
    if image.dtype.kind not in "fiu" or image.dtype == np.bool_:
        raise TypeError(f"image must be numeric; got dtype {image.dtype}")
    shape = image.shape
    if ccd.uncertainty is None:
        raise ValueError("CCDData has no uncertainty; the afw layout needs a VARIANCE plane")
    try:
        variance = np.asarray(ccd.uncertainty.represent_as(VarianceUncertainty).array)
    except Exception as err:  # astropy raises several types here
        raise ValueError(f"cannot convert the uncertainty to a variance: {err}") from err
    if variance.shape != shape:
        raise ValueError(f"variance shape {variance.shape} does not match image shape {shape}")
    mask = get_bit_mask(ccd)
    planes = mask_planes(ccd)
    psf = getattr(ccd, "psf", None)
    if psf is not None:
        psf = _check_psf(psf)
    if ccd.wcs is not None:
        _check_wcs(ccd.wcs)
    get_xy0(ccd)
    get_photcalib(ccd)
    for key, value in ccd.meta.items():
        if not isinstance(key, str):
            raise TypeError(f"meta keys must be strings; got {key!r}")
        _check_meta_value(key, value)
    return image.astype(np.float32), mask, variance.astype(np.float32), planes, psf


def _unit_string(unit: u.UnitBase | None) -> str | None:
    """Return the BUNIT string of a unit (None for no/dimensionless unit)."""
    if unit is None or unit == u.dimensionless_unscaled:
        return None
    return unit.to_string()


def _native(data: np.ndarray, dtype: type) -> np.ndarray:
    """Return a native-endian copy of a FITS array in ``dtype``."""
    return np.array(data, dtype=np.dtype(dtype), copy=True)


def _read_xy0(header: fits.Header, source: str) -> tuple[int, int]:
    """Image origin from afw's alternate WCS ``A`` or, failing that, LTV."""
    try:
        if header.get("CRPIX1A") == 1.0 and header.get("CRPIX2A") == 1.0 and "CRVAL1A" in header:
            return int(round(float(header["CRVAL1A"]))), int(round(float(header["CRVAL2A"])))
        return -int(round(float(header.get("LTV1", 0.0)))), -int(
            round(float(header.get("LTV2", 0.0)))
        )
    except (TypeError, ValueError, KeyError) as err:
        raise ValueError(
            f"{source}: unreadable image origin (CRVAL1A/CRVAL2A or LTV1/LTV2): {err}"
        ) from None


def _read_wcs(header: fits.Header, source: str) -> WCS | None:
    """Celestial WCS of the IMAGE HDU, or None if it has none."""
    if not any(key in header for key in ("CTYPE1", "CTYPE2")):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header, relax=True)
        except Exception as err:  # astropy/wcslib raise a zoo of types
            _LOG.warning("%s: ignoring unreadable WCS in the IMAGE header: %s", source, err)
            return None
    if wcs.naxis != 2 or not wcs.has_celestial:
        return None
    return wcs


def _read_unit(header: fits.Header, source: str, meta: dict[str, Any]) -> u.UnitBase:
    """Image unit from BUNIT; ``adu`` when absent or unparseable."""
    bunit = header.get("BUNIT")
    if bunit is None or isinstance(bunit, fits.card.Undefined) or not str(bunit).strip():
        return u.adu
    try:
        return u.Unit(str(bunit).strip())
    except ValueError:
        _LOG.warning(
            "%s: cannot parse BUNIT=%r; using adu and keeping it in meta['BUNIT_RAW']",
            source,
            bunit,
        )
        meta["BUNIT_RAW"] = str(bunit)
        return u.adu


def _read_photcalib(hdul: fits.HDUList, header: fits.Header, source: str) -> float | None:
    """nJy per count from PHOTCALIB, FLUXMAG0 or afw's archived PhotoCalib."""
    if PHOTCALIB_KEY in header:
        try:
            return _check_photcalib(header[PHOTCALIB_KEY])
        except ValueError as err:
            raise ValueError(f"{source}: {err}") from None
    fluxmag0 = header.get("FLUXMAG0")
    if isinstance(fluxmag0, numbers.Real) and math.isfinite(fluxmag0) and fluxmag0 > 0:
        return AB_REFERENCE_FLUX_NJY / float(fluxmag0)
    return _photcalib_from_archive(hdul, header, source)


def _photcalib_from_archive(hdul: fits.HDUList, header: fits.Header, source: str) -> float | None:
    """Best-effort read of ``calibrationMean`` from an afw FITS archive.

    afw stores the PhotoCalib of an Exposure (EXPINFO_V >= 1) as a row of a
    binary table: the primary header names its archive id, the
    ARCHIVE_INDEX table maps the id to a catalog (``AR_CATN``) and row.
    """
    archive_id = header.get("ARCHIVE_ID_PHOTOCALIB", header.get("PHOTOCALIB_ID"))
    if not archive_id:
        return None
    try:
        index = hdul["ARCHIVE_INDEX"].data

        def column(table: Any, name: str) -> np.ndarray:
            wanted = name.replace(".", "_").lower()
            for col in table.columns.names:
                if col.replace(".", "_").lower() == wanted:
                    return np.asarray(table[col])
            raise KeyError(name)

        rows = np.flatnonzero(column(index, "id") == archive_id)
        if rows.size == 0:
            return None
        row = rows[0]
        cat_archive = int(column(index, "cat.archive")[row])
        row0 = int(column(index, "row0")[row])
        for hdu in hdul:
            if (
                hdu.header.get("EXTTYPE") == "ARCHIVE_DATA"
                and hdu.header.get("AR_CATN") == cat_archive
            ):
                value = float(column(hdu.data, "calibrationMean")[row0])
                return _check_photcalib(value)
    except Exception as err:  # best effort only: never fail a read over this
        _LOG.warning("%s: could not read the archived PhotoCalib: %s", source, err)
    return None


def ccddata_inputs(ccd) -> ExposureInputs:
    """`ExposureInputs` from a `~astropy.nddata.CCDData`.

    Conventions (shared with `make_ccddata` and `.calexp_fits`):

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
    image = np.asarray(ccd.data)
    if image.ndim != 2:
        raise InputError(f"CCDData must hold a 2-D image; got shape {image.shape}.")
    unc = ccd.uncertainty
    if unc is None:
        raise InputError(
            "CCDData has no uncertainty: give a VarianceUncertainty (or "
            "InverseVariance / StdDevUncertainty)."
        )
    arr = np.asarray(unc.array, dtype=float)
    if arr.shape != image.shape:
        raise InputError(
            f"The uncertainty has shape {arr.shape} but the image has shape {image.shape}."
        )
    with np.errstate(divide="ignore", invalid="ignore"):
        if isinstance(unc, VarianceUncertainty):
            variance = arr
        elif isinstance(unc, InverseVariance):
            variance = np.where(arr > 0, 1.0 / arr, np.inf)
        elif isinstance(unc, StdDevUncertainty):
            variance = arr * arr
        else:
            raise InputError(
                f"Unsupported uncertainty type {type(unc).__name__}; use "
                "VarianceUncertainty, InverseVariance or StdDevUncertainty."
            )
    planes = mask_planes(ccd)
    raw = None if ccd.mask is None else np.asarray(ccd.mask)
    if raw is not None and raw.shape != image.shape:
        raise InputError(f"The mask has shape {raw.shape} but the image has shape {image.shape}.")
    if raw is not None and raw.dtype == bool:
        if set(planes) - {"BAD"}:
            raise InputError(
                "The CCDData mask is boolean but its meta names mask planes "
                f"({', '.join(sorted(planes))}): a plain CCDData turns an integer mask "
                "into booleans. Build it with lsst.meas.crowdsource.io.ccddata.make_ccddata "
                "(or read_calexp_fits) to keep the planes, or drop the MP_ keys to mean BAD."
            )
        planes = {"BAD": 0}
        mask = raw.astype(np.int32)
    else:
        mask = get_bit_mask(ccd)
        if not planes and mask.any():
            raise InputError(
                "The integer mask has no plane names: add MP_<NAME> = bit "
                "entries to the meta (e.g. MP_BAD=0, MP_SAT=1), or pass a "
                "boolean mask meaning BAD."
            )
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

    return ExposureInputs(
        image, variance, mask, planes, (x0, y0), psf, pixel_to_sky, sky_to_pixel, get_photcalib(ccd)
    )
