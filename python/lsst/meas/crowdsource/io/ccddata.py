"""Pure-Python exposures: the `astropy.nddata.CCDData` conventions, and their adapter.

This module is the exposure path used wherever ``lsst.afw`` is not
available.  It says what a `~astropy.nddata.CCDData` must hold to stand in
for an afw calexp, builds and checks such exposures (`make_ccddata`,
`validate_ccddata`, `BitMaskCCDData`), and turns one into the engine's
`~.inputs.ExposureInputs` (`ccddata_inputs`).  Reading and writing them as
FITS files in the afw calexp layout is `.calexp_fits`, which imports this
module (never the other way round).

The CCDData contract
--------------------
Every `~astropy.nddata.CCDData` produced by `make_ccddata` or
`.calexp_fits.read_calexp_fits` (and expected by the rest of
``lsst.meas.crowdsource`` on the astropy path) follows these rules:

``ccd.data``
    2-D floating-point image (``float32`` after a read).  ``x`` is the
    column (second index), ``y`` the row.
``ccd.uncertainty``
    A `~astropy.nddata.VarianceUncertainty` of the same shape.
    `variance_from_uncertainty` reads any of VarianceUncertainty,
    InverseVariance and StdDevUncertainty as a variance, the one rule every
    reader here applies.
``ccd.mask``
    2-D ``int32`` bit mask of the same shape (afw ``MaskPixel``), or `None`
    (all zero).  A plain `~astropy.nddata.CCDData` cannot hold this:
    its ``mask`` setter turns every mask into booleans, losing the planes.
    So this module builds `BitMaskCCDData`, a CCDData subclass that keeps
    integer masks (``isinstance(ccd, CCDData)`` still holds).  Create
    exposures with `make_ccddata` (or read them), read the mask with
    `get_bit_mask`, and expect a `TypeError` from `validate_ccddata` (and
    so on write) if a boolean mask slipped in.
``ccd.meta["MP_<NAME>"]``
    Bit index of each mask plane, e.g. ``MP_BAD = 0``, ``MP_SAT = 1``, ...
    (`mask_planes` turns them into a ``{name: bit}`` dict; the defaults are
    `~.planes.DEFAULT_MASK_PLANES`).
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
    central pixel, or `None` (the rules of `~.psf.centred_odd_stamp`).
``ccd.meta["PHOTCALIB"]``
    Optional photometric calibration: nJy per image count (a positive
    float), i.e. afw's ``PhotoCalib.getCalibrationMean()``.  Use
    `get_photcalib`.
``ccd.unit``
    The image unit (CCDData requires one; ``adu`` from `make_ccddata` by
    default).  `ccddata_inputs` reports it as ``ExposureInputs.unit``.
other ``ccd.meta`` keys
    Written to, and read from, the primary header of a calexp file.  Keys
    are upper case FITS keywords; values must be `str`, `bool`, `int`,
    `float` or `None`.

`ccddata_inputs` is more lenient than this contract on what it reads: a
plain CCDData with a boolean mask (meaning BAD) and any of the three
uncertainty types are accepted.
"""

from __future__ import annotations

__all__ = [
    "BitMaskCCDData",
    "PHOTCALIB_KEY",
    "ccddata_inputs",
    "check_photcalib",
    "get_bit_mask",
    "get_photcalib",
    "get_xy0",
    "make_ccddata",
    "mask_planes",
    "set_xy0",
    "validate_ccddata",
    "variance_from_uncertainty",
]

import math
import numbers
from collections.abc import Mapping
from typing import Any

import astropy.units as u
import numpy as np
from astropy.nddata import (
    CCDData,
    InverseVariance,
    NDUncertainty,
    StdDevUncertainty,
    VarianceUncertainty,
)
from astropy.wcs import WCS

from ..engine import InputError
from .inputs import ExposureInputs, unit_string
from .planes import (
    DEFAULT_MASK_PLANES,
    MASK_PLANE_PREFIX,
    boolean_planes,
    check_plane_bits,
    plane_bits_from_keywords,
    readonly_plane,
)
from .psf import centred_odd_stamp

PHOTCALIB_KEY = "PHOTCALIB"
"""``meta`` key of the photometric calibration, in nJy per image count."""


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
    ``CCDData.write`` stores masks as ``uint8``; use `.calexp_fits.write_calexp_fits`.
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
        Exposure following the conventions of this module.

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
        Exposure following the conventions of this module.

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
    return plane_bits_from_keywords(ccd.meta)


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
    return check_photcalib(value)


def check_photcalib(value: Any) -> float:
    """Check a nJy-per-count calibration factor and return it as a `float`.

    Raises
    ------
    ValueError
        Raised if ``value`` is not a finite positive number.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(
            f"{PHOTCALIB_KEY} (nJy per count) must be a positive number; got {value!r}"
        )
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{PHOTCALIB_KEY} (nJy per count) must be finite and > 0; got {value!r}")
    return value


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
        variance_arr = variance_from_uncertainty(variance)
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
        planes = plane_bits_from_keywords(new_meta) or dict(DEFAULT_MASK_PLANES)
    else:
        planes = check_plane_bits(mask_planes)
    for key in [k for k in new_meta if k.upper().startswith(MASK_PLANE_PREFIX)]:
        del new_meta[key]
    for name, bit in planes.items():
        new_meta[MASK_PLANE_PREFIX + name] = bit

    if mask is None:
        mask_arr = np.zeros(shape, dtype=np.int32)
    else:
        mask_arr = _as_int32_mask(mask, shape)
        check_declared_bits(mask_arr, planes)

    if wcs is not None:
        _check_wcs(wcs)
    psf_arr = None if psf is None else centred_odd_stamp(psf)
    if photcalib is not None:
        new_meta[PHOTCALIB_KEY] = check_photcalib(photcalib)
    elif new_meta.get(PHOTCALIB_KEY) is not None:
        new_meta[PHOTCALIB_KEY] = check_photcalib(new_meta[PHOTCALIB_KEY])
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
    if not isinstance(ccd, CCDData):
        raise TypeError(f"expected an astropy.nddata.CCDData; got {type(ccd).__name__}")
    image = np.asarray(ccd.data)
    if image.ndim != 2:
        raise ValueError(f"image must be 2-D; got shape {image.shape}")
    if image.dtype.kind not in "fiu":
        raise TypeError(f"image must be numeric; got dtype {image.dtype}")
    shape = image.shape
    if ccd.uncertainty is None:
        raise ValueError("CCDData has no uncertainty; the afw layout needs a VARIANCE plane")
    try:
        variance = variance_from_uncertainty(ccd.uncertainty)
    except InputError as err:
        raise ValueError(f"cannot convert the uncertainty to a variance: {err}") from None
    if variance.shape != shape:
        raise ValueError(f"variance shape {variance.shape} does not match image shape {shape}")
    get_bit_mask(ccd)
    mask_planes(ccd)
    psf = getattr(ccd, "psf", None)
    if psf is not None:
        centred_odd_stamp(psf)
    if ccd.wcs is not None:
        _check_wcs(ccd.wcs)
    get_xy0(ccd)
    get_photcalib(ccd)
    for key, value in ccd.meta.items():
        if not isinstance(key, str):
            raise TypeError(f"meta keys must be strings; got {key!r}")
        _check_meta_value(key, value)


def variance_from_uncertainty(
    uncertainty: NDUncertainty, dtype: np.dtype | type | None = None
) -> np.ndarray:
    """The variance an astropy uncertainty stands for: the one conversion of the package.

    Parameters
    ----------
    uncertainty : `~astropy.nddata.NDUncertainty`
        A `~astropy.nddata.VarianceUncertainty` (its values as they are),
        `~astropy.nddata.InverseVariance` (``1 / ivar``; a zero, negative or
        NaN inverse variance is a pixel without information, an infinite
        variance) or `~astropy.nddata.StdDevUncertainty` (``std**2``).
        Another uncertainty class is converted with its own
        ``represent_as(VarianceUncertainty)`` if it has one.
    dtype : `numpy.dtype`, optional
        Floating-point type to compute and return the variance in; by
        default that of the uncertainty's array (``float64`` for integers).

    Returns
    -------
    variance : `numpy.ndarray`
        The variance; for a VarianceUncertainty already in ``dtype``, the
        uncertainty's own array (never written to by this package).

    Raises
    ------
    lsst.meas.crowdsource.engine.InputError
        For an uncertainty that has no array or no conversion to a variance.
    """
    if uncertainty is None or getattr(uncertainty, "array", None) is None:
        raise InputError("The uncertainty has no values (an array is needed).")
    arr = np.asarray(uncertainty.array)
    if dtype is None:
        dtype = arr.dtype if arr.dtype.kind == "f" else np.float64
    arr = np.asarray(arr, dtype=dtype)
    if isinstance(uncertainty, VarianceUncertainty):
        return arr
    if isinstance(uncertainty, InverseVariance):
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(arr > 0, 1 / arr, np.asarray(np.inf, dtype=arr.dtype))
    if isinstance(uncertainty, StdDevUncertainty):
        return arr * arr
    try:
        converted = uncertainty.represent_as(VarianceUncertainty)
    except Exception:  # astropy raises TypeError, NotImplementedError, ...
        raise InputError(
            f"Unsupported uncertainty type {type(uncertainty).__name__}; use "
            "VarianceUncertainty, InverseVariance or StdDevUncertainty."
        ) from None
    return np.asarray(converted.array, dtype=dtype)


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _integral(value: Any, what: str) -> int:
    """Return ``value`` as an `int`, refusing non-integral numbers."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{what} must be an integer; got {value!r}")
    as_float = float(value)
    if not math.isfinite(as_float) or as_float != round(as_float):
        raise ValueError(f"{what} must be an integer; got {value!r}")
    return int(round(as_float))


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


def check_declared_bits(mask: np.ndarray, planes: Mapping[str, int]) -> None:
    """Refuse an integer mask with bits that belong to no declared plane.

    Raises
    ------
    lsst.meas.crowdsource.engine.InputError
        Naming the stray bits and the declared planes.
    """
    declared = 0
    for bit in planes.values():
        declared |= 1 << bit
    mask = np.asarray(mask)
    unsigned = mask.astype(np.dtype(f"u{mask.dtype.itemsize}"))  # bit 31 of an int32 stays bit 31
    used = int(np.bitwise_or.reduce(unsigned.ravel())) if mask.size else 0
    stray = used & ~declared
    if stray:
        bits = [b for b in range(64) if stray >> b & 1]
        raise InputError(
            f"The mask has bit(s) {', '.join(map(str, bits))} (0x{stray:08x}) set that belong "
            f"to no declared mask plane; declared planes: {dict(planes)}."
        )


def _check_wcs(wcs: Any) -> None:
    """Require a 2-axis celestial astropy WCS."""
    if not isinstance(wcs, WCS):
        raise TypeError(f"wcs must be an astropy.wcs.WCS or None; got {type(wcs).__name__}")
    if wcs.naxis != 2 or not wcs.has_celestial:
        raise ValueError(
            f"wcs must be a 2-axis celestial WCS; got naxis={wcs.naxis}, "
            f"ctype={list(wcs.wcs.ctype)}"
        )


def _check_meta_value(key: str, value: Any) -> None:
    """Refuse ``meta`` values that do not fit in a FITS header card."""
    if value is None or isinstance(value, (str, bool, numbers.Real, np.bool_)):
        if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
            if not math.isfinite(float(value)):
                raise ValueError(f"meta[{key!r}] = {value!r} cannot be written to a FITS header")
        return
    raise TypeError(
        f"meta[{key!r}] has type {type(value).__name__}; "
        "FITS headers hold only str, bool, int, float or None"
    )


# ---------------------------------------------------------------------------
# The adapter
# ---------------------------------------------------------------------------


def ccddata_inputs(ccd: CCDData) -> ExposureInputs:
    """`ExposureInputs` from a `~astropy.nddata.CCDData`.

    Parameters
    ----------
    ccd : `astropy.nddata.CCDData`
        The exposure.  What is read, beyond the contract of this module:

        - ``ccd.uncertainty`` (required): any uncertainty
          `variance_from_uncertainty` reads;
        - ``ccd.mask``: an integer mask whose plane bits are given by
          ``ccd.meta["MP_<NAME>"]`` (as in afw FITS files), or a boolean
          mask meaning BAD (a plain CCDData without ``MP_`` keys);
        - ``ccd.psf``: passed on as it is (the engine checks it).

    Returns
    -------
    inputs : `~.inputs.ExposureInputs`
        - ``image``: ``ccd.data`` (a view);
        - ``variance``: ``float64``;
        - ``mask_planes``: one boolean plane per declared ``MP_`` plane
          (afw names), or ``{"BAD": mask}`` for a boolean mask;
        - ``xy0``: `get_xy0`;
        - ``pixel_to_sky`` / ``sky_to_pixel``: through ``ccd.wcs`` with the
          origin taken into account (`None` without a celestial WCS);
        - ``njy_per_count``: `get_photcalib`;
        - ``unit``: ``ccd.unit`` (`~.inputs.COUNT_UNIT` when dimensionless).

    Raises
    ------
    lsst.meas.crowdsource.engine.InputError
        For a non-2-D image, a missing or unreadable uncertainty, a mask or
        uncertainty of another shape than the image, a boolean mask with
        named planes (a plain CCDData lost them), or an integer mask without
        plane names.
    """
    image = np.asarray(ccd.data)
    if image.ndim != 2:
        raise InputError(f"CCDData must hold a 2-D image; got shape {image.shape}.")
    if ccd.uncertainty is None:
        raise InputError(
            "CCDData has no uncertainty: give a VarianceUncertainty (or "
            "InverseVariance / StdDevUncertainty)."
        )
    variance = variance_from_uncertainty(ccd.uncertainty, dtype=np.float64)
    if variance.shape != image.shape:
        raise InputError(
            f"The uncertainty has shape {variance.shape} but the image has shape {image.shape}."
        )
    bits = mask_planes(ccd)
    raw = None if ccd.mask is None else np.asarray(ccd.mask)
    if raw is not None and raw.shape != image.shape:
        raise InputError(f"The mask has shape {raw.shape} but the image has shape {image.shape}.")
    if raw is not None and raw.dtype == bool:
        if set(bits) - {"BAD"}:
            raise InputError(
                "The CCDData mask is boolean but its meta names mask planes "
                f"({', '.join(sorted(bits))}): a plain CCDData turns an integer mask "
                "into booleans. Build it with lsst.meas.crowdsource.io.ccddata.make_ccddata "
                "(or read_calexp_fits) to keep the planes, or drop the MP_ keys to mean BAD."
            )
        planes = {"BAD": readonly_plane(np.array(raw, dtype=bool))}
    else:
        mask = get_bit_mask(ccd)
        if not bits and mask.any():
            raise InputError(
                "The integer mask has no plane names: add MP_<NAME> = bit "
                "entries to the meta (e.g. MP_BAD=0, MP_SAT=1), or pass a "
                "boolean mask meaning BAD."
            )
        check_declared_bits(mask, bits)
        planes = boolean_planes(mask, bits)
    x0, y0 = get_xy0(ccd)
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
        image=image,
        variance=variance,
        mask_planes=planes,
        xy0=(x0, y0),
        psf=getattr(ccd, "psf", None),
        pixel_to_sky=pixel_to_sky,
        sky_to_pixel=sky_to_pixel,
        njy_per_count=get_photcalib(ccd),
        unit=unit_string(ccd.unit),
    )
