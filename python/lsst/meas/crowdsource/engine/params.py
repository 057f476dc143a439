"""Tunable parameters of the crowded-field fit."""

from __future__ import annotations

from dataclasses import dataclass, field, fields

from .errors import InputError

__all__ = ["FitParams", "FitParamsError"]


class FitParamsError(InputError):
    """`FitParams` values that cannot work.

    Parameters
    ----------
    problems : `dict` [`str`, `str`]
        What is wrong, by the name of the offending `FitParams` field, in the
        order the fields are checked.

    Attributes
    ----------
    problems : `dict` [`str`, `str`]
        As given; `fields` lists its keys.
    """

    def __init__(self, problems: dict[str, str]):
        self.problems = dict(problems)
        super().__init__("Invalid fit parameters: " + "; ".join(self.problems.values()) + ".")

    @property
    def fields(self) -> tuple[str, ...]:
        """Names of the offending fields (`tuple` [`str`])."""
        return tuple(self.problems)

    def __reduce__(self):
        # Rebuild from ``problems``, not from the message (worker processes).
        return type(self), (self.problems,)


@dataclass
class FitParams:
    """Every knob of the fit, with defaults that suit well-sampled images.

    Each field's description lives in its metadata (`docs`): a sentence or
    two on what the knob does.  Why a default has its value, with the
    measurements behind it, is in ``benchmarks/README.md`` ("Why the defaults
    are what they are").  The task layer's
    `~lsst.meas.crowdsource.config.CrowdsourceFitConfig` has one field per
    parameter here (``n_iter`` -> ``nIter``), with the same default and
    description; ``tests/test_config.py`` keeps the two in step, so a new
    parameter is added in both places (and to its ``toParams``).
    """

    # --- main loop
    n_iter: int = field(
        default=4,
        metadata={
            "doc": "Least number of find/fit/centroid/PSF passes before the final forced pass."
        },
    )
    max_iter: int = field(
        default=10,
        metadata={
            "doc": "Most passes: after n_iter, another pass follows while the last one "
            "added more than more_pass_fraction of the sources (crowded fields keep "
            "revealing stars as their neighbours are modelled)."
        },
    )
    more_pass_fraction: float = field(
        default=0.01,
        metadata={
            "doc": "A pass after the n_iter-th is run when the pass before added more than "
            "this fraction of the sources it ended with (1: never)."
        },
    )
    n_coarse_sky: int = field(
        default=1,
        metadata={
            "doc": "Number of first passes that subtract a single median sky, before the "
            "boxed sky is used."
        },
    )
    sky_box: int = field(
        default=20, metadata={"doc": "Size (pixels) of the boxes in which the sky median is taken."}
    )
    sky_smooth: int = field(
        default=3,
        metadata={"doc": "Median filter width (in boxes) applied to the grid of box medians."},
    )
    sky_mask_nsigma: float = field(
        default=0.0,
        metadata={
            "doc": "Pixels where the model of the sources exceeds this many sigma are left "
            "out of the boxed sky (0: use every pixel)."
        },
    )
    sky_method: str = field(
        default="boxed",
        metadata={
            "doc": "How the sky is measured: 'boxed' (medians in sky_box boxes, as "
            "crowdsource), 'spline' (a robust, penalised cubic B-spline, knots every "
            "sky_spline_spacing pixels) or 'adaptive' (that spline, refined where the data "
            "demand it)."
        },
    )
    sky_spline_spacing: float = field(
        default=12.0,
        metadata={"doc": "Knot spacing (pixels) of the spline sky."},
    )
    sky_spline_smoothing: float = field(
        default=0.1,
        metadata={
            "doc": "Roughness penalty of the spline sky (squared second differences of its "
            "coefficients, relative to the data weight per coefficient)."
        },
    )
    sky_adaptive_threshold: float = field(
        default=1.5,
        metadata={
            "doc": "Adaptive sky: the fine spline replaces the coarse one where they differ by "
            "more than this many pixel sigma (blended from half of it)."
        },
    )
    sky_clip: float = field(
        default=3.0,
        metadata={
            "doc": "Spline sky: pixels this many sigma above the fit (dilated by 2 pixels) "
            "are left out, iteratively, so unmodelled stars do not raise the sky."
        },
    )
    fit_sky_terms: bool = field(
        default=False,
        metadata={
            "doc": "Also fit a constant and linear sky gradient simultaneously with the stars."
        },
    )
    forced_sky_coverage: float = field(
        default=0.5,
        metadata={
            "doc": "With forced positions whose PSF cores (FWHM radius) cover at least this "
            "fraction of a tile's usable pixels, the sky's constant and gradient are fit "
            "simultaneously with the fluxes (as fit_sky_terms does): such a list can absorb a "
            "sky offset into its fluxes (0: always; above 1: never)."
        },
    )

    # --- peaks
    threshold: float = field(
        default=5.0, metadata={"doc": "PSF-convolved significance needed to add a source (sigma)."}
    )
    bright_factor: float = field(
        default=0.3,
        metadata={
            "doc": "A pixel whose S/N exceeds the detection threshold divided by this is a "
            "bright peak."
        },
    )
    local_background_factor: float = field(
        default=0.5,
        metadata={
            "doc": "A peak must also reach this times the detection threshold in the "
            "significance image computed with a local-background (compensated) filter."
        },
    )
    model_significance_factor: float = field(
        default=0.2,
        metadata={"doc": "Residual significance must exceed this times the model's significance."},
    )
    model_flux_factor: float = field(
        default=0.1,
        metadata={
            "doc": "The residual's PSF-matched flux at a peak must exceed this times the model's."
        },
    )
    model_pixel_factor: float = field(
        default=0.0,
        metadata={
            "doc": "Residual pixel S/N must exceed this times the model's PSF-convolved S/N "
            "there (0: no such cut)."
        },
    )
    min_separation: float = field(
        default=1.5, metadata={"doc": "No new source within this many pixels of an existing one."}
    )
    saturated_exclusion: float = field(
        default=1.0,
        metadata={
            "doc": "No new source within this many PSF FWHMs of the core of a saturated star: "
            "a disc of radius half the narrower extent of its saturated region (so not "
            "along a bleed trail), plus this margin."
        },
    )
    first_pass_separation: float = field(
        default=0.0,
        metadata={
            "doc": "Minimum separation of peaks in the first pass (0 means the PSF FWHM): "
            "early passes do not split blends."
        },
    )

    # --- fit
    stamp_sizes: tuple[int, ...] = field(
        default=(0, 0, 59),
        metadata={
            "doc": "Stamp sizes (odd) from faint to bright; 0 means derived from the FWHM "
            "(small: ~2x FWHM radius, core: ~3x FWHM radius)."
        },
    )
    stamp_noise_fraction: float = field(
        default=0.3,
        metadata={
            "doc": "A source gets the smallest stamp whose edge PSF value times its flux is "
            "below this fraction of the pixel noise."
        },
    )
    derivative_stamp_size: int = field(
        default=0,
        metadata={
            "doc": "Size (odd) of the central square of a stamp on which the position "
            "derivatives are fit; larger stamps fit the flux only beyond it (0: the core "
            "stamp size, ~2.5 FWHM in radius)."
        },
    )
    solver: str = field(
        default="direct",
        metadata={
            "doc": 'Solver of the normal equations: "direct" (sparse Cholesky by CHOLMOD '
            "when cvxopt is installed, else SuperLU; conjugate gradients if singular), "
            '"superlu" (always SuperLU) or "cg" (block-preconditioned conjugate '
            "gradients)."
        },
    )
    cg_rtol: float = field(
        default=1e-6, metadata={"doc": "Relative tolerance of the conjugate-gradient solve."}
    )
    cg_maxiter: int = field(
        default=500, metadata={"doc": "Maximum conjugate-gradient iterations per solve."}
    )
    derivative_ridge: float = field(
        default=1e-4,
        metadata={"doc": "Ridge (fraction of the diagonal) on position-derivative columns."},
    )
    settled_step: float = field(
        default=0.01,
        metadata={
            "doc": "A source whose last position step was shorter than this (pixels) is "
            "solved for its flux alone in the next pass, without position-derivative "
            "terms; it still takes the step its stamp measures (0: every free source "
            "gets derivative terms in every pass)."
        },
    )
    cull_snr: float = field(
        default=2.5,
        metadata={"doc": "Drop sources whose fitted flux S/N falls below this between passes."},
    )
    merge_radius: float = field(
        default=0.5, metadata={"doc": "Sources that converge closer than this (pixels) are merged."}
    )
    forced_min_qf: float = field(
        default=0.05,
        metadata={
            "doc": "Forced positions whose PSF core has less than this PSF-weighted fraction "
            "of usable pixels are not fit (NaN flux, flag_no_good_pixels)."
        },
    )

    # --- centroids
    max_shift: float = field(
        default=1.0, metadata={"doc": "Largest position step per pass (pixels)."}
    )
    centroid_min_snr: float = field(
        default=3.0,
        metadata={"doc": "Sources fainter than this keep their position (no centroid step)."},
    )

    # --- PSF
    refit_psf: bool = field(
        default=True,
        metadata={"doc": "Re-estimate the PSF from the image in every pass, the first included."},
    )
    psf_order: int = field(
        default=2, metadata={"doc": "Polynomial order of the PSF's variation across the image."}
    )
    psf_core_size: int = field(
        default=0,
        metadata={
            "doc": "Size of the PSF core estimated from stars (0: about 5 FWHM, at least 19)."
        },
    )
    psf_min_snr: float = field(
        default=30.0, metadata={"doc": "Minimum S/N of stars used to estimate the PSF."}
    )
    psf_snr_floor: float = field(
        default=0.005,
        metadata={
            "doc": "With a spatially varying PSF (PSF order > 0) each PSF star is weighted by "
            "1 / (1 / (S/N)^2 + floor^2), floor being this value, so that stars much "
            "brighter than S/N 1 / floor do not dominate (0: by (S/N)^2 alone). Order 0 "
            "takes the unweighted median stamp."
        },
    )
    psf_wing_min_snr: float = field(
        default=100.0,
        metadata={
            "doc": "Stars brighter than this S/N (among the PSF stars) measure the PSF wings "
            "beyond the core; with fewer than 10 such stars a Moffat fit to the core "
            "extends it."
        },
    )
    psf_keep_given_wing: bool = field(
        default=True,
        metadata={
            "doc": "When a PSF is given, every refit keeps its wing beyond the refit core "
            "instead of measuring one from the bright stars (or fitting a Moffat to the core)."
        },
    )
    psf_max_stars: int = field(
        default=2000, metadata={"doc": "Use at most this many (the brightest) PSF stars."}
    )
    psf_min_stars: int = field(
        default=5, metadata={"doc": "Keep the previous PSF when fewer good stars are available."}
    )
    psf_max_shift: float = field(
        default=0.5,
        metadata={
            "doc": "Stars whose centroid moved more than this (pixels) in the last pass are "
            "not used."
        },
    )
    psf_min_fracflux: float = field(
        default=0.5,
        metadata={
            "doc": "PSF stars must contribute at least this fraction of the light in their stamp."
        },
    )
    psf_max_median_loss: float = field(
        default=0.8,
        metadata={
            "doc": "Reject PSF stars whose flux drops by more than this when a local median is "
            "subtracted (a diffuse, not a point, source)."
        },
    )
    psf_settle_max: int = field(
        default=4,
        metadata={
            "doc": "When no PSF is given: extra solve-and-refit rounds of the first pass, while "
            "the PSF still changes by more than psf_settle_tol, before later passes look "
            "for fainter sources (0: none, as crowdsource)."
        },
    )
    psf_settle_max_density: float = field(
        default=0.002,
        metadata={
            "doc": "The first pass's PSF is settled only where it found fewer sources than this "
            "per pixel (on crowded fields settling biased the PSF and cost time)."
        },
    )
    psf_settle_tol: float = field(
        default=0.005,
        metadata={
            "doc": "The first pass's PSF has settled when a refit changes its unit-sum stamp by "
            "less than this (sum of absolute differences)."
        },
    )
    initial_fwhm: float = field(
        default=0.0,
        metadata={"doc": "FWHM (pixels) of the Moffat used when no PSF is given; 0 estimates it."},
    )

    # --- bounds on the work (hostile inputs)
    max_source_density: float = field(
        default=0.25,
        metadata={
            "doc": "Most sources found per pixel of a tile (forced positions not counted): "
            "one per 4 pixels, more than any PSF of FWHM >= 2 px can separate.  A tile that "
            "reaches it keeps its most significant peaks, warns and sets flag_source_cap."
        },
    )
    max_new_peak_density: float = field(
        default=0.1,
        metadata={
            "doc": "Most new peaks per pixel of a tile in one pass; beyond it the most "
            "significant are kept (with a warning and flag_source_cap)."
        },
    )
    mask_defects: bool = field(
        default=True,
        metadata={
            "doc": "Leave out the plateaus and steps no PSF can fit (unmasked dead or "
            "runaway amplifiers, offset jumps, hot columns), with a warning; sources whose "
            "PSF core touches them get flag_unfittable."
        },
    )
    plateau_min_pixels: int = field(
        default=25,
        metadata={
            "doc": "A plateau is a connected region of at least this many pixels whose 3x3 "
            "neighbourhoods span less than plateau_tolerance sigma (0: never)."
        },
    )
    plateau_max_saturated: int = field(
        default=1000,
        metadata={
            "doc": "A plateau of at most this many pixels that nothing around it exceeds is "
            "taken for the clipped core of an unflagged saturated star: saturated, not bad."
        },
    )
    plateau_tolerance: float = field(
        default=1e-3,
        metadata={"doc": "Largest 3x3 spread (in pixel sigma) of the pixels of a plateau."},
    )
    step_threshold: float = field(
        default=30.0,
        metadata={
            "doc": "A step is a straight row or column edge, at least step_min_length pixels "
            "long, across which neighbouring pixels differ by more than this many sigma, all "
            "with one sign."
        },
    )
    step_min_length: int = field(
        default=32,
        metadata={"doc": "Shortest edge (pixels) taken for a step (0: never)."},
    )
    step_margin: int = field(
        default=6,
        metadata={"doc": "Pixels left out on each side of a step (where the sky cannot follow)."},
    )

    # --- tiling
    tile_size: int = field(
        default=1024,
        metadata={"doc": "Core size of the tiles that are fit independently (pixels)."},
    )
    tile_overlap: int = field(
        default=48,
        metadata={
            "doc": "Margin fit around each tile core, so that sources near the seams see all "
            "their neighbours (pixels)."
        },
    )
    max_tile_targets: int = field(
        default=120_000,
        metadata={
            "doc": "Most forced targets on one tile core: a core holding more is halved "
            "across its longer side until none does (down to 128 pixels); 0 = never split."
        },
    )
    n_processes: int = field(
        default=1, metadata={"doc": "Tiles fit in parallel processes (1 = serial)."}
    )

    def problems(self) -> dict[str, str]:
        """What is wrong with these values, by field name (empty if nothing).

        When one field has several problems (several bad stamp sizes) they are
        joined with ``"; "``.
        """
        found: dict[str, list[str]] = {}

        def bad(name: str, message: str) -> None:
            found.setdefault(name, []).append(message)

        if self.n_iter < 1:
            bad("n_iter", "n_iter must be >= 1")
        if self.max_iter < self.n_iter:
            bad("max_iter", "max_iter must be >= n_iter")
        if not self.more_pass_fraction >= 0:
            bad("more_pass_fraction", "more_pass_fraction must be >= 0")
        if self.threshold <= 0:
            bad("threshold", "threshold must be positive")
        if not 0 < self.bright_factor <= 1:
            bad("bright_factor", "bright_factor must be in (0, 1]")
        if self.sky_method not in ("boxed", "spline", "adaptive"):
            bad(
                "sky_method",
                f"sky_method must be 'boxed', 'spline' or 'adaptive'; got {self.sky_method!r}",
            )
        if not self.sky_spline_spacing >= 3:
            bad("sky_spline_spacing", "sky_spline_spacing must be at least 3 pixels")
        if not self.sky_spline_smoothing >= 0:
            bad("sky_spline_smoothing", "sky_spline_smoothing must be >= 0")
        if not self.sky_clip > 0:
            bad("sky_clip", "sky_clip must be > 0")
        if self.sky_box < 3:
            bad("sky_box", "sky_box must be at least 3 pixels")
        for s in self.stamp_sizes:
            if s != 0 and (s < 3 or s % 2 == 0):
                bad("stamp_sizes", f"stamp size {s} must be 0 or an odd number >= 3")
        if self.derivative_stamp_size != 0 and (
            self.derivative_stamp_size < 3 or self.derivative_stamp_size % 2 == 0
        ):
            bad(
                "derivative_stamp_size",
                "derivative_stamp_size must be 0 or an odd number >= 3",
            )
        if len(self.stamp_sizes) == 0:
            bad("stamp_sizes", "stamp_sizes must not be empty")
        if self.psf_order < 0 or self.psf_order > 4:
            bad("psf_order", "psf_order must be in 0..4")
        if self.psf_core_size and (self.psf_core_size % 2 == 0 or self.psf_core_size < 5):
            bad("psf_core_size", "psf_core_size must be 0 or an odd number >= 5")
        if not self.settled_step >= 0:
            bad("settled_step", "settled_step must be >= 0")
        if self.tile_size < 64:
            bad("tile_size", "tile_size must be at least 64")
        if self.tile_overlap < 0:
            bad("tile_overlap", "tile_overlap must be >= 0")
        if self.max_tile_targets < 0:
            bad("max_tile_targets", "max_tile_targets must be >= 0")
        if self.solver not in ("direct", "superlu", "cg"):
            bad("solver", f"solver must be 'direct', 'superlu' or 'cg', not {self.solver!r}")
        if self.n_processes < 1:
            bad("n_processes", "n_processes must be >= 1")
        if self.max_shift <= 0:
            bad("max_shift", "max_shift must be positive")
        if not self.psf_snr_floor >= 0:
            bad("psf_snr_floor", "psf_snr_floor must be >= 0")
        if not self.saturated_exclusion >= 0:
            bad("saturated_exclusion", "saturated_exclusion must be >= 0")
        if self.min_separation < 0:
            bad("min_separation", "min_separation must be >= 0")
        if self.merge_radius < 0:
            bad("merge_radius", "merge_radius must be >= 0")
        self._work_bound_problems(bad)
        if not 0 <= self.forced_min_qf <= 1:
            bad("forced_min_qf", "forced_min_qf must be in [0, 1]")
        return {name: "; ".join(messages) for name, messages in found.items()}

    def _work_bound_problems(self, bad) -> None:
        """The checks of the caps and of the defect settings (part of `problems`)."""
        if self.psf_settle_max < 0:
            bad("psf_settle_max", "psf_settle_max must be >= 0")
        if not self.psf_settle_max_density >= 0:
            bad("psf_settle_max_density", "psf_settle_max_density must be >= 0")
        if not self.psf_settle_tol >= 0:
            bad("psf_settle_tol", "psf_settle_tol must be >= 0")
        if not self.max_source_density > 0:
            bad("max_source_density", "max_source_density must be positive")
        if not self.max_new_peak_density > 0:
            bad("max_new_peak_density", "max_new_peak_density must be positive")
        if self.plateau_min_pixels < 0:
            bad("plateau_min_pixels", "plateau_min_pixels must be >= 0")
        if self.plateau_max_saturated < 0:
            bad("plateau_max_saturated", "plateau_max_saturated must be >= 0")
        if not self.plateau_tolerance >= 0:
            bad("plateau_tolerance", "plateau_tolerance must be >= 0")
        if not self.step_threshold > 0:
            bad("step_threshold", "step_threshold must be positive")
        if self.step_min_length < 0:
            bad("step_min_length", "step_min_length must be >= 0")
        if self.step_margin < 0:
            bad("step_margin", "step_margin must be >= 0")

    def validate(self) -> None:
        """Check that these values can work.

        Raises
        ------
        FitParamsError
            Some values cannot work; its ``problems`` say which fields and why
            (an `InputError`, hence a `ValueError`).
        """
        problems = self.problems()
        if problems:
            raise FitParamsError(problems)

    @classmethod
    def docs(cls) -> dict[str, str]:
        """Description of every parameter, by name."""
        return {f.name: f.metadata["doc"] for f in fields(cls)}
