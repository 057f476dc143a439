"""The per-source columns the engine produces: dtype, unit and meaning.

Units: ``pix`` for pixel positions and lengths, ``image`` for the units of
the image pixels (counts, electrons, or whatever the caller's image holds).
The task layer maps these onto Rubin ``Source`` / ``ForcedSource`` names.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ENGINE_COLUMNS", "empty_columns", "pixel_flag_columns"]

ENGINE_COLUMNS: dict[str, tuple[str, str, str]] = {
    "x": ("f8", "pix", "Column position (PARENT coordinates, pixel centres at integers)."),
    "y": ("f8", "pix", "Row position (PARENT coordinates, pixel centres at integers)."),
    "x_err": ("f4", "pix", "1-sigma uncertainty of x from the last position fit."),
    "y_err": ("f4", "pix", "1-sigma uncertainty of y from the last position fit."),
    "flux": (
        "f8",
        "image",
        "PSF flux from the simultaneous fit of all sources at the "
        "final positions (the PSF is normalised to unit total flux).",
    ),
    "flux_err": (
        "f8",
        "image",
        "1-sigma flux uncertainty: when the errors are calibrated (errorCalibrationStars > 0), "
        "the statistical error times the factor artificial stars show at the source's S/N, "
        "which takes in the crowding by stars not found and the PSF's error; else the "
        "statistical error.",
    ),
    "flux_err_stat": (
        "f8",
        "image",
        "Statistical 1-sigma flux uncertainty of the simultaneous fit, including the "
        "covariance with the fluxes of the direct neighbours; it leaves out the sources "
        "that were not found, and understates the scatter in crowded fields.",
    ),
    "sky": ("f8", "image", "Sky level per pixel at the source position."),
    "qf": ("f4", "", "PSF-weighted fraction of the source's pixels that are usable."),
    "rchi2": ("f4", "", "PSF-weighted mean chi^2 of the residual around the source."),
    "fracflux": (
        "f4",
        "",
        "PSF-weighted fraction of the modelled light around the "
        "source that comes from the source itself.",
    ),
    "flux_lbs": (
        "f8",
        "image",
        "Flux fit together with a local constant background on the neighbour-subtracted stamp.",
    ),
    "flux_lbs_err": ("f8", "image", "1-sigma uncertainty of flux_lbs."),
    "flux_iso": (
        "f8",
        "image",
        "Flux fit on the neighbour-subtracted stamp, with the position free.",
    ),
    "x_iso": ("f8", "pix", "Column position from the fit on the neighbour-subtracted stamp."),
    "y_iso": ("f8", "pix", "Row position from the fit on the neighbour-subtracted stamp."),
    "fwhm": (
        "f4",
        "pix",
        "FWHM of the source from PSF-weighted second moments of the neighbour-subtracted stamp.",
    ),
    "spread_model": (
        "f4",
        "",
        "SExtractor-style spread_model (0 for point sources, positive for extended).",
    ),
    "spread_model_err": ("f4", "", "1-sigma uncertainty of spread_model."),
    "crowding": (
        "f4",
        "mag",
        "How much brighter the source would have been measured had its neighbours not been "
        "fit with it (DOLPHOT's crowding): 2.5 log10 of the PSF-weighted flux of the image "
        "minus sky at its position over the simultaneous flux; 0 when isolated.",
    ),
    "pass_found": (
        "i2",
        "",
        "Pass of the main loop in which the source was found (-1 for positions given as input).",
    ),
    "forced_index": ("i8", "", "Row of the input position list for forced sources, else -1."),
    "flag_edge": ("?", "", "The PSF core of the source runs off the image."),
    "flag_no_good_pixels": (
        "?",
        "",
        "No usable pixel in the source's stamp (for a forced "
        "position: usable fraction of the PSF core below "
        "forced_min_qf; not fit, flux NaN).",
    ),
    "flag_fit_failed": ("?", "", "The fit gave no finite flux."),
    "flag_saturated_center": ("?", "", "The central pixel is saturated."),
    "off_image": ("?", "", "A forced position off the image: not fit, flux NaN."),
    "flag_unfittable": (
        "?",
        "",
        "The PSF core of the source touches pixels left out as a plateau or step no PSF "
        "can fit (an unmasked dead amplifier, offset jump, hot column; see mask_defects).",
    ),
    "flag_source_cap": (
        "?",
        "",
        "The source's tile reached max_source_density or max_new_peak_density: only its "
        "most significant peaks were kept, so the catalogue there is incomplete.",
    ),
}


def empty_columns() -> dict[str, np.ndarray]:
    """All engine columns, with no rows."""
    return {name: np.zeros(0, dtype=spec[0]) for name, spec in ENGINE_COLUMNS.items()}


def pixel_flag_columns(plane: str) -> dict[str, tuple[str, str, str]]:
    """The two columns produced for one mask plane."""
    return {
        f"mask_{plane}_any": (
            "?",
            "",
            f"A pixel within the PSF core of the source has mask plane {plane} set.",
        ),
        f"mask_{plane}_center": (
            "?",
            "",
            f"A pixel of the central 3x3 of the source has mask plane {plane} set.",
        ),
    }
