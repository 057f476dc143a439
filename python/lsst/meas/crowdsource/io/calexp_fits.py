"""The afw calexp FITS layout for `astropy.nddata.CCDData`: read and write without afw.

`write_calexp_fits` / `to_hdulist` write, and `read_calexp_fits` /
`from_hdulist` read, a `~astropy.nddata.CCDData` following the conventions
of `.ccddata` as a FITS file laid out the way
``lsst.afw.image.ExposureF.writeFits`` lays out a calexp (following afw's
``ExposureInfo``/``MaskedImage``/``Mask`` writers), so that files can move
between the Rubin stack (``ExposureF(path)``) and plain astropy.  The layout
is tested here with astropy only; the round trip through afw itself belongs
in a test that runs where afw is installed.  This module imports `.ccddata`
(the conventions), never the other way round.

File layout
-----------
HDU 0 (primary)
    No data.  Holds the exposure metadata (``ccd.meta``, less the keys the
    layout itself carries), plus ``HIERARCH PHOTCALIB`` and the equivalent
    afw ``FLUXMAG0`` when a photometric calibration is known.
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

What is carried where
---------------------
- ``ccd.unit`` is written as ``BUNIT`` in the IMAGE HDU; a file without
  ``BUNIT`` (or with one astropy cannot parse, kept in
  ``meta["BUNIT_RAW"]``) reads as ``adu``.
- Primary-header keywords become ``ccd.meta``, except ``COMMENT``/``HISTORY``
  cards, structural keywords, WCS keywords and afw archive bookkeeping
  (``AR_HDU``, ``ARCHIVE_ID_*``, ``*_ID``, ``EXPINFO_V``).
- Non-finite pixels are written and read unchanged; flagging them (e.g. with
  ``NO_DATA``) is left to the caller.
"""

from __future__ import annotations

__all__ = [
    "AB_REFERENCE_FLUX_NJY",
    "PSF_EXTNAME",
    "from_hdulist",
    "read_calexp_fits",
    "to_hdulist",
    "write_calexp_fits",
]

import logging
import math
import numbers
import os
import re
import secrets
import warnings
from typing import Any

import astropy.units as u
import numpy as np
from astropy.io import fits
from astropy.nddata import CCDData, VarianceUncertainty
from astropy.wcs import WCS, FITSFixedWarning

from .ccddata import (
    PHOTCALIB_KEY,
    BitMaskCCDData,
    check_photcalib,
    get_bit_mask,
    get_photcalib,
    get_xy0,
    mask_planes,
    set_xy0,
    validate_ccddata,
    variance_from_uncertainty,
)
from .planes import MASK_PLANE_PREFIX, plane_bits_from_keywords
from .psf import centred_odd_stamp

_LOG = logging.getLogger(__name__)

PSF_EXTNAME = "CROWDSOURCE_PSF"
"""EXTNAME of the optional PSF-stamp HDU."""

AB_REFERENCE_FLUX_NJY = 1e23 * 10 ** (48.6 / -2.5) * 1e9
"""AB zero-magnitude flux in nJy; afw's ``FLUXMAG0 = this / calibration``."""

_PLANE_EXTNAMES = ("IMAGE", "MASK", "VARIANCE")

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


def to_hdulist(ccd: CCDData) -> fits.HDUList:
    """Convert ``ccd`` to an `~astropy.io.fits.HDUList` in the afw layout.

    Parameters
    ----------
    ccd : `astropy.nddata.CCDData`
        Exposure following the conventions of `.ccddata`.

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
    validate_ccddata(ccd)  # before anything is converted
    image = np.asarray(ccd.data).astype(np.float32)
    mask = get_bit_mask(ccd)
    variance = variance_from_uncertainty(ccd.uncertainty).astype(np.float32)
    planes = mask_planes(ccd)
    psf = getattr(ccd, "psf", None)
    if psf is not None:
        psf = centred_odd_stamp(psf)
    x0, y0 = get_xy0(ccd)

    primary = fits.PrimaryHDU()
    photcalib = get_photcalib(ccd)
    for key, value in ccd.meta.items():
        key = str(key)
        upper = key.upper()
        if (
            _is_layout_keyword(upper)
            or upper == PHOTCALIB_KEY
            or (photcalib is not None and upper in ("FLUXMAG0", "FLUXMAG0ERR"))
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
        if _is_layout_keyword(upper) or upper in ("FLUXMAG0", "FLUXMAG0ERR", PHOTCALIB_KEY):
            continue
        meta[key] = None if isinstance(card.value, fits.card.Undefined) else card.value

    photcalib = _read_photcalib(hdul, primary_header, source)
    if photcalib is not None:
        meta[PHOTCALIB_KEY] = photcalib

    planes = plane_bits_from_keywords(mask_header, source=f"{source} MASK header")
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
            psf = centred_odd_stamp(psf_data)
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
        conventions of `.ccddata`.

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
        Exposure following the conventions of `.ccddata`.
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


def _is_layout_keyword(upper: str) -> bool:
    """Whether an (upper-case) keyword belongs to the file layout rather than to ``meta``."""
    return (
        upper in _STRUCTURAL_KEYS
        or upper in _ARCHIVE_KEYS
        or upper.startswith("ARCHIVE_ID_")
        or upper.startswith(MASK_PLANE_PREFIX)
        or _WCS_KEY_RE.match(upper) is not None
    )


def _append_card(header: fits.Header, key: str, value: Any, comment: str | None = None) -> None:
    """Append a card, using the HIERARCH convention for non-standard keys.

    ``value`` must already be a header value (`validate_ccddata` checks
    ``meta``); what cannot be formatted as a card raises `ValueError`.
    """
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
            return check_photcalib(header[PHOTCALIB_KEY])
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
                return check_photcalib(value)
    except Exception as err:  # best effort only: never fail a read over this
        _LOG.warning("%s: could not read the archived PhotoCalib: %s", source, err)
    return None
