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

__all__ = [
    "Column",
    "PIXEL_FLAG_PLANES",
    "source_columns",
    "forced_source_columns",
    "SLOT_ALIASES",
    "build_table",
    "empty_table",
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
PIXEL_FLAG_PLANES: dict[str, tuple[str, bool]] = {
    "BAD": ("bad", False),
    "CR": ("cr", True),
    "EDGE": ("edge", False),
    "INTRP": ("interpolated", True),
    "NO_DATA": ("nodata", False),
    "SAT": ("saturated", True),
    "SUSPECT": ("suspect", True),
}

SLOT_ALIASES = {"slot_Centroid": "crowdsource_centroid", "slot_PsfFlux": "crowdsource_psfFlux"}

_DIAGNOSTICS = [
    ("crowdsource_qf", "f4", "", "qf"),
    ("crowdsource_rchi2", "f4", "", "rchi2"),
    ("crowdsource_fracflux", "f4", "", "fracflux"),
    ("crowdsource_fluxlbs", "f8", "count", "flux_lbs"),
    ("crowdsource_fluxlbsErr", "f8", "count", "flux_lbs_err"),
    ("crowdsource_fluxiso", "f8", "count", "flux_iso"),
    ("crowdsource_xiso", "f8", "pixel", "x_iso"),
    ("crowdsource_yiso", "f8", "pixel", "y_iso"),
    ("crowdsource_fwhm", "f4", "pixel", "fwhm"),
    ("crowdsource_spreadModel", "f4", "", "spread_model"),
    ("crowdsource_spreadModelErr", "f4", "", "spread_model_err"),
    ("crowdsource_passFound", "i2", "", "pass_found"),
    ("crowdsource_flag_edge", "?", "", "flag_edge"),
    ("crowdsource_flag_noGoodPixels", "?", "", "flag_no_good_pixels"),
    ("crowdsource_flag_fitFailed", "?", "", "flag_fit_failed"),
]


def _engine_doc(engine_name: str) -> str:
    from .engine.columns import ENGINE_COLUMNS

    return ENGINE_COLUMNS[engine_name][2]


def _common_columns(with_position_errors: bool) -> list[Column]:
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
        Column("x", "f8", "pixel", _engine_doc("x"), "crowdsource_centroid_x", "x"),
        Column("y", "f8", "pixel", _engine_doc("y"), "crowdsource_centroid_y", "y"),
    ]
    if with_position_errors:
        cols += [
            Column(
                "xErr", "f4", "pixel", _engine_doc("x_err"), "crowdsource_centroid_xErr", "x_err"
            ),
            Column(
                "yErr", "f4", "pixel", _engine_doc("y_err"), "crowdsource_centroid_yErr", "y_err"
            ),
        ]
    cols += [
        Column(
            "psfInstFlux",
            "f8",
            "count",
            _engine_doc("flux"),
            "crowdsource_psfFlux_instFlux",
            "flux",
        ),
        Column(
            "psfInstFluxErr",
            "f8",
            "count",
            _engine_doc("flux_err"),
            "crowdsource_psfFlux_instFluxErr",
            "flux_err",
        ),
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
        Column("sky", "f8", "count", _engine_doc("sky"), "crowdsource_sky", "sky"),
    ]
    for plane, (suffix, center) in PIXEL_FLAG_PLANES.items():
        cols.append(
            Column(
                f"pixelFlags_{suffix}",
                "?",
                "",
                f"A pixel within the PSF core has mask plane {plane} set.",
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
    for name, dtype, unit, engine in _DIAGNOSTICS:
        cols.append(Column(name, dtype, unit, _engine_doc(engine), name, engine))
    return cols


def source_columns() -> list[Column]:
    """Columns of ``crowdsource_source`` (DP1 ``Source`` names)."""
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
        + _common_columns(True)
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


def forced_source_columns() -> list[Column]:
    """Columns of ``crowdsource_forced_source`` (DP1 ``ForcedSource`` names)."""
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
    ] + _common_columns(True)


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
    from astropy.table import Table

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
    no_pix = eng["flag_no_good_pixels"]
    values["psfFlux_flag"] = eng["flag_fit_failed"] | no_pix | off | eng["flag_saturated_center"]
    values["centroid_flag"] = no_pix | ~np.isfinite(eng["x_err"]) | eng["flag_fit_failed"]
    if extra:
        values.update(extra)
    t = Table()
    for c in columns:
        t[c.name] = np.asarray(values[c.name]).astype(c.dtype)
        t[c.name].unit = c.unit or None
        t[c.name].description = c.doc
    return t
