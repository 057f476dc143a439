"""The one definition of the output catalogues.

Each `Column` carries its Rubin DP1 ``Source`` / ``ForcedSource`` name (the
astropy / Arrow table), the meas_base-style field name it gets in an afw
`~lsst.afw.table.SourceCatalog` (``None``: not in the afw catalogue), its
dtype, unit and description.  `build_table` fills an astropy table from an
engine `~lsst.meas.crowdsource.engine.FitResult`; the afw adapter builds the
`SourceCatalog` schema from the same list, with slot aliases
``slot_Centroid -> crowdsource_centroid`` and
``slot_PsfFlux -> crowdsource_psfFlux``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .engine.columns import ENGINE_COLUMNS

__all__ = [
    "Column",
    "DEFAULT_IMAGE_UNIT",
    "PIXEL_FLAG_PLANES",
    "source_columns",
    "forced_source_columns",
    "SLOT_ALIASES",
    "build_table",
    "empty_table",
    "fill_table",
]


@dataclass(frozen=True)
class Column:
    """One output column.

    Attributes
    ----------
    name : `str`
        Name in the astropy / Arrow table (Rubin DP1 schema names).
    dtype : `str`
        numpy dtype.
    unit : `str`
        astropy unit string ("" for dimensionless).
    doc : `str`
        Description.
    afw_name : `str` or `None`
        Field name in the afw SourceCatalog.
    engine : `str` or `None`
        Engine column it is copied from, when it is a plain copy.
    """

    name: str
    dtype: str
    unit: str
    doc: str
    afw_name: str | None = None
    engine: str | None = None


#: afw mask plane -> DP1 ``pixelFlags_`` suffix; planes with a ``Center`` flag too.
#: The flags follow lsst.meas.base's ``PixelFlagsAlgorithm`` (``base_PixelFlags``), with
#: the PSF core (the pixels within ceil(FWHM) of the fitted position) in place of
#: the detection footprint a crowded field does not have: ``<plane>`` is "set on some
#: pixel of the PSF core", ``<plane>Center`` "set on some pixel of the central 3x3", and
#: ``edge`` is also set for NO_DATA in the core or a centre off the image, as meas_base
#: sets ``flag_edge``.
PIXEL_FLAG_PLANES: dict[str, tuple[str, bool]] = {
    "BAD": ("bad", True),
    "CR": ("cr", True),
    "EDGE": ("edge", False),
    "INTRP": ("interpolated", True),
    "NO_DATA": ("nodata", False),
    "SAT": ("saturated", True),
    "SUSPECT": ("suspect", True),
}

_EDGE_DOC = (
    "The source is outside the usable region: a pixel within the PSF core has mask plane "
    "EDGE or NO_DATA set, or the centre is off the image."
)

SLOT_ALIASES = {"slot_Centroid": "crowdsource_centroid", "slot_PsfFlux": "crowdsource_psfFlux"}

DEFAULT_IMAGE_UNIT = "count"
"""Unit of the image pixels when the exposure does not say (an afw calexp)."""

#: Output name -> engine column, for the ``crowdsource_*`` diagnostics (plain copies).
_DIAGNOSTICS = {
    "crowdsource_psfInstFluxErrStat": "flux_err_stat",
    "crowdsource_qf": "qf",
    "crowdsource_rchi2": "rchi2",
    "crowdsource_fracflux": "fracflux",
    "crowdsource_fluxlbs": "flux_lbs",
    "crowdsource_fluxlbsErr": "flux_lbs_err",
    "crowdsource_fluxiso": "flux_iso",
    "crowdsource_xiso": "x_iso",
    "crowdsource_yiso": "y_iso",
    "crowdsource_fwhm": "fwhm",
    "crowdsource_spreadModel": "spread_model",
    "crowdsource_spreadModelErr": "spread_model_err",
    "crowdsource_crowding": "crowding",
    "crowdsource_passFound": "pass_found",
    "crowdsource_flag_edge": "flag_edge",
    "crowdsource_flag_noGoodPixels": "flag_no_good_pixels",
    "crowdsource_flag_fitFailed": "flag_fit_failed",
    "crowdsource_flag_unfittable": "flag_unfittable",
    "crowdsource_flag_sourceCap": "flag_source_cap",
}


def _unit(engine_unit: str, image_unit: str) -> str:
    """Output unit of an engine unit: ``pix`` -> ``pixel``, ``image`` -> the image's unit."""
    return {"pix": "pixel", "image": image_unit}.get(engine_unit, engine_unit)


def _copy(name: str, engine: str, image_unit: str, afw_name: str | None = None) -> Column:
    """A column copied from the engine: dtype, unit and doc come from `ENGINE_COLUMNS`."""
    dtype, unit, doc = ENGINE_COLUMNS[engine]
    return Column(name, dtype, _unit(unit, image_unit), doc, afw_name, engine)


def _common_columns(image_unit: str) -> list[Column]:
    u = image_unit
    cols = [
        Column(
            "coord_ra",
            "f8",
            "deg",
            "ICRS right ascension of the fitted position (NaN without a WCS).",
            "coord_ra",
        ),
        Column(
            "coord_dec",
            "f8",
            "deg",
            "ICRS declination of the fitted position (NaN without a WCS).",
            "coord_dec",
        ),
        _copy("x", "x", u, "crowdsource_centroid_x"),
        _copy("y", "y", u, "crowdsource_centroid_y"),
        _copy("xErr", "x_err", u, "crowdsource_centroid_xErr"),
        _copy("yErr", "y_err", u, "crowdsource_centroid_yErr"),
        _copy("psfInstFlux", "flux", u, "crowdsource_psfFlux_instFlux"),
        _copy("psfInstFluxErr", "flux_err", u, "crowdsource_psfFlux_instFluxErr"),
        Column(
            "psfFlux", "f8", "nJy", "Calibrated PSF flux (NaN without a photometric calibration)."
        ),
        Column("psfFluxErr", "f8", "nJy", "1-sigma uncertainty of psfFlux."),
        Column(
            "psfFlux_flag",
            "?",
            "",
            "The PSF flux is unusable: fit failed, no usable "
            "pixels, or centre off the image or saturated.",
            "crowdsource_psfFlux_flag",
        ),
        _copy("sky", "sky", u, "crowdsource_sky"),
    ]
    for plane, (suffix, center) in PIXEL_FLAG_PLANES.items():
        cols.append(
            Column(
                f"pixelFlags_{suffix}",
                "?",
                "",
                _EDGE_DOC
                if plane == "EDGE"
                else f"A pixel within the PSF core has mask plane {plane} set.",
                f"base_PixelFlags_flag_{suffix}",
            )
        )
        if center:
            cols.append(
                Column(
                    f"pixelFlags_{suffix}Center",
                    "?",
                    "",
                    f"A pixel of the central 3x3 has mask plane {plane} set.",
                    f"base_PixelFlags_flag_{suffix}Center",
                )
            )
    cols.append(
        Column(
            "pixelFlags_offimage",
            "?",
            "",
            "The source centre is off the image.",
            "base_PixelFlags_flag_offimage",
        )
    )
    cols += [_copy(name, engine, u, name) for name, engine in _DIAGNOSTICS.items()]
    return cols


def source_columns(image_unit: str = DEFAULT_IMAGE_UNIT) -> list[Column]:
    """Columns of ``crowdsource_source`` (DP1 ``Source`` names).

    Parameters
    ----------
    image_unit : `str`
        Unit of the image pixels (``nJy`` for a DP1 ``visit_image``): the
        unit of the instrumental fluxes and of the sky.
    """
    return (
        [
            Column(
                "sourceId",
                "i8",
                "",
                "Unique source ID (visit and detector packed in when a data ID is known).",
                "id",
            ),
            Column("visit", "i8", "", "Visit ID (-1 when unknown)."),
            Column("detector", "i4", "", "Detector ID (-1 when unknown)."),
        ]
        + _common_columns(image_unit)
        + [
            Column(
                "centroid_flag",
                "?",
                "",
                "The position is unreliable (did not converge, or no usable pixels).",
                "crowdsource_centroid_flag",
            )
        ]
    )


def forced_source_columns(image_unit: str = DEFAULT_IMAGE_UNIT) -> list[Column]:
    """Columns of ``crowdsource_forced_source`` (DP1 ``ForcedSource`` names).

    Parameters
    ----------
    image_unit : `str`
        Unit of the image pixels, as for `source_columns`.
    """
    return [
        Column(
            "objectId",
            "i8",
            "",
            "ID of the reference object (row index when the reference table has none).",
            "objectId",
        ),
        Column("forcedSourceId", "i8", "", "Unique ID of this measurement.", "id"),
        Column("visit", "i8", "", "Visit ID (-1 when unknown)."),
        Column("detector", "i4", "", "Detector ID (-1 when unknown)."),
    ] + _common_columns(image_unit)


def empty_table(columns: list[Column]):
    """An astropy table with every column and no rows."""
    from astropy.table import Table

    t = Table()
    for c in columns:
        t[c.name] = np.zeros(0, dtype=c.dtype)
        t[c.name].unit = c.unit or None
        t[c.name].description = c.doc
    return t


def build_table(
    result,
    columns: list[Column],
    *,
    pixel_to_sky: Callable | None = None,
    njy_per_count: float | None = None,
    ids: np.ndarray | None = None,
    visit: int | None = None,
    detector: int | None = None,
    extra: dict[str, np.ndarray] | None = None,
):
    """Fill an astropy table from an engine result.

    Parameters
    ----------
    result : `lsst.meas.crowdsource.engine.FitResult`
        The fit.
    columns : `list` [`Column`]
        `source_columns()` or `forced_source_columns()`.
    pixel_to_sky : callable, optional
        ``pixel_to_sky(x, y) -> (ra_deg, dec_deg)`` for PARENT pixel
        positions; without it ``coord_ra``/``coord_dec`` are NaN.
    njy_per_count : `float`, optional
        Calibration; without it ``psfFlux``/``psfFluxErr`` are NaN.
    ids : `numpy.ndarray`, optional
        Source IDs (default: 1..N).
    visit, detector : `int`, optional
        Data ID values stored in every row.
    extra : `dict`, optional
        Values for columns not computed here (e.g. ``objectId``).
    """
    eng = result.columns
    n = len(eng["x"])
    values: dict[str, np.ndarray] = {}
    for c in columns:
        if c.engine is not None:
            values[c.name] = np.asarray(eng[c.engine])
    if pixel_to_sky is not None and n:
        ra, dec = pixel_to_sky(eng["x"], eng["y"])
    else:
        ra = dec = np.full(n, np.nan)
    values["coord_ra"], values["coord_dec"] = np.asarray(ra, float), np.asarray(dec, float)
    scale = np.nan if njy_per_count is None else float(njy_per_count)
    values["psfFlux"] = eng["flux"] * scale
    values["psfFluxErr"] = eng["flux_err"] * scale
    values["sourceId"] = values["forcedSourceId"] = (
        np.arange(1, n + 1, dtype=np.int64) if ids is None else ids
    )
    values["visit"] = np.full(n, -1 if visit is None else visit, dtype=np.int64)
    values["detector"] = np.full(n, -1 if detector is None else detector, dtype=np.int32)
    for plane, (suffix, center) in PIXEL_FLAG_PLANES.items():
        values[f"pixelFlags_{suffix}"] = eng.get(f"mask_{plane}_any", np.zeros(n, bool))
        if center:
            values[f"pixelFlags_{suffix}Center"] = eng.get(
                f"mask_{plane}_center", np.zeros(n, bool)
            )
    off = eng.get("off_image", np.zeros(n, bool))
    values["pixelFlags_offimage"] = off
    values["pixelFlags_edge"] = values["pixelFlags_edge"] | values["pixelFlags_nodata"] | off
    no_pix = eng["flag_no_good_pixels"]
    values["psfFlux_flag"] = eng["flag_fit_failed"] | no_pix | off | eng["flag_saturated_center"]
    values["centroid_flag"] = no_pix | ~np.isfinite(eng["x_err"]) | eng["flag_fit_failed"]
    if extra:
        values.update(extra)
    return fill_table(columns, values)


def fill_table(columns: list[Column], values: dict[str, np.ndarray]):
    """An astropy table of ``columns``, in their order, dtype, unit and description.

    Parameters
    ----------
    columns : `list` [`Column`]
        The column definitions.
    values : `dict` [`str`, array_like]
        Values of every column, by name (extra entries are ignored).
    """
    from astropy.table import Table

    t = Table()
    for c in columns:
        t[c.name] = np.asarray(values[c.name]).astype(c.dtype)
        t[c.name].unit = c.unit or None
        t[c.name].description = c.doc
    return t
