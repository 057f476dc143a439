"""Mask planes: the one table of plane names, and integer masks as boolean planes.

The engine and the task configs speak afw's plane names (``BAD``, ``SAT``,
``CR``, ``INTRP``, ``EDGE``, ``NO_DATA``, ``SUSPECT``, ...).  Every adapter
hands its mask to `~.inputs.ExposureInputs` as boolean planes keyed by name,
made here:

- `DEFAULT_MASK_PLANES`: afw's default planes and their bits, the planes an
  exposure made by `~.ccddata.make_ccddata` declares unless told otherwise;
- `LEGACY_PLANE_NAMES`: the lsst.images planes that renamed an afw plane,
  with the afw (legacy) names, so that a config written with afw names
  works on an ``lsst.images.VisitImage``;
- `boolean_planes`: an integer bit mask and its ``{name: bit}`` table
  (afw's ``Mask.getMaskPlaneDict()``, or the ``MP_<NAME>`` keywords of a
  FITS header / CCDData ``meta``) -> ``{name: boolean image}``;
- `with_legacy_names`: the same planes also listed under their afw names;
- `plane_bits_from_keywords` / `check_plane_bits`: the ``MP_<NAME> = bit``
  keyword convention (afw's ``Mask.maskPlanePrefix``) and its rules.

Planes returned by `boolean_planes`, `readonly_plane` and
`with_legacy_names` are read-only arrays; a plane with no pixel set is a
zero-stride view of `False`, so empty planes cost no memory.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = [
    "DEFAULT_MASK_PLANES",
    "LEGACY_PLANE_NAMES",
    "MASK_PLANE_PREFIX",
    "MAX_MASK_PLANES",
    "boolean_planes",
    "check_plane_bits",
    "plane_bits_from_keywords",
    "readonly_plane",
    "with_legacy_names",
]

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

LEGACY_PLANE_NAMES: dict[str, tuple[str, ...]] = {
    "SATURATED": ("SAT",),
    "INTERPOLATED": ("INTRP",),
    "COSMIC_RAY": ("CR",),
    "DETECTION_EDGE": ("EDGE",),
    "UNMASKED_NAN": ("UNMASKEDNAN",),
}
"""lsst.images plane name -> the afw plane names it replaces.

Every rename made by lsst.images' ``get_legacy_visit_image_mask_planes``,
``get_legacy_difference_image_mask_planes``,
``get_legacy_deep_coadd_mask_planes`` and
``get_legacy_non_cell_coadd_mask_planes`` (``python/lsst/images/_mask.py``);
the planes those functions keep under their afw name (``BAD``, ``NO_DATA``,
``SUSPECT``, ``DETECTED``, ...) need no entry.
"""

MASK_PLANE_PREFIX = "MP_"
"""Prefix of the mask-plane keywords (afw ``Mask.maskPlanePrefix``)."""

MAX_MASK_PLANES = 32
"""Planes an afw (32-bit) mask can hold."""


def readonly_plane(values: Any) -> np.ndarray:
    """A read-only boolean plane; a zero-stride view of `False` when no pixel is set.

    Parameters
    ----------
    values : array_like
        The plane's values (any dtype; non-zero means set).  An array that
        is already boolean is marked read-only in place, so pass only arrays
        that are not shared with the caller's data.

    Returns
    -------
    plane : `numpy.ndarray` [`bool`]
        Read-only, of the shape of ``values``.
    """
    plane = np.asarray(values, dtype=bool)
    if not plane.any():
        return np.broadcast_to(np.False_, plane.shape)
    plane.setflags(write=False)
    return plane


def boolean_planes(mask: np.ndarray, bits: Mapping[str, int]) -> dict[str, np.ndarray]:
    """Split an integer bit mask into one boolean image per plane.

    Parameters
    ----------
    mask : `numpy.ndarray`
        Integer bit mask (afw ``MaskPixel`` is ``int32``; bit 31 is the sign
        bit, so the bits are tested on the unsigned view of the array).
    bits : mapping [`str`, `int`]
        Plane name -> bit index.

    Returns
    -------
    planes : `dict` [`str`, `numpy.ndarray`]
        Plane name -> read-only boolean image of ``mask``'s shape, in the
        order of ``bits``; bits set in ``mask`` that no plane names are
        dropped.

    Raises
    ------
    TypeError
        If ``mask`` is not an integer array.
    ValueError
        If a bit does not fit in the mask's dtype.
    """
    mask = np.asarray(mask)
    if mask.dtype.kind not in "iu":
        raise TypeError(f"A bit mask must be an integer array; got dtype {mask.dtype}.")
    unsigned = mask.view(np.dtype(f"u{mask.dtype.itemsize}").newbyteorder(mask.dtype.byteorder))
    n_bits = 8 * mask.dtype.itemsize
    planes: dict[str, np.ndarray] = {}
    for name, bit in bits.items():
        bit = int(bit)
        if not 0 <= bit < n_bits:
            raise ValueError(f"Mask plane {name!r} has bit {bit}, outside a {mask.dtype} mask.")
        planes[name] = readonly_plane(unsigned & unsigned.dtype.type(1 << bit))
    return planes


def with_legacy_names(planes: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``planes`` with each renamed lsst.images plane also under its afw name(s).

    The afw name refers to the same array (``planes["SAT"] is
    planes["SATURATED"]``); a name the planes already have is kept as it is.
    """
    result = dict(planes)
    for name, plane in planes.items():
        for legacy in LEGACY_PLANE_NAMES.get(name, ()):
            result.setdefault(legacy, plane)
    return result


def check_plane_bits(planes: Mapping[str, Any], source: str = "mask_planes") -> dict[str, int]:
    """Check a ``{name: bit}`` table as afw requires it and return it ordered by bit.

    Parameters
    ----------
    planes : mapping [`str`, `int`]
        Plane name -> bit index.
    source : `str`, optional
        Where the table comes from, for error messages.

    Returns
    -------
    planes : `dict` [`str`, `int`]
        The same table, ordered by bit.

    Raises
    ------
    TypeError
        If ``planes`` is not a mapping.
    ValueError
        For a name that is empty or holds spaces, a bit that is not an
        integer in [0, 31], or two planes sharing a bit.
    """
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
        if not 0 <= bit < MAX_MASK_PLANES:
            raise ValueError(f"{source}: bit of mask plane {name!r} must be in [0, 31]; got {bit}")
        if bit in owner:
            raise ValueError(f"{source}: mask planes {owner[bit]!r} and {name!r} share bit {bit}")
        owner[bit] = name
        result[name] = bit
    return dict(sorted(result.items(), key=lambda item: item[1]))


def plane_bits_from_keywords(keywords: Mapping[str, Any], source: str = "meta") -> dict[str, int]:
    """The ``{name: bit}`` table of the ``MP_<NAME> = bit`` keywords of a header or ``meta``.

    Parameters
    ----------
    keywords : mapping
        A FITS header or a CCDData ``meta``; keys not starting with
        `MASK_PLANE_PREFIX` (case-insensitive) are ignored.
    source : `str`, optional
        Where the keywords come from, for error messages.

    Returns
    -------
    planes : `dict` [`str`, `int`]
        Plane name (without the prefix) -> bit, ordered by bit; empty if no
        plane is declared.

    Raises
    ------
    ValueError
        As `check_plane_bits`.
    """
    found = {
        str(key)[len(MASK_PLANE_PREFIX) :]: value
        for key, value in keywords.items()
        if str(key).upper().startswith(MASK_PLANE_PREFIX)
    }
    return check_plane_bits(found, source)
