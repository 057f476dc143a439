"""Configuration shared by the tasks, and how it maps onto the engine's arguments.

`CrowdsourceFitConfig` is the pex_config view of the engine's
`~lsst.meas.crowdsource.engine.FitParams` (``n_iter`` -> ``nIter``);
`CrowdsourceBaseConfig` holds what both tasks share; `engine_arguments` is
the one place where config values become `~lsst.meas.crowdsource.engine.fit_image`
arguments.
"""

from __future__ import annotations

import lsst.pex.config as pexConfig

from .catalog import PIXEL_FLAG_PLANES
from .engine import FitParams
from .engine.params import FitParamsError
from .error_calibration import calibrate_flux_errors
from .ids import CatalogIds, active, catalog_ids
from .io.inputs import ExposureInputs

__all__ = [
    "CALEXP_STORAGE_CLASSES",
    "CrowdsourceBaseConfig",
    "CrowdsourceFitConfig",
    "camel_case",
    "check_before_fit",
    "engine_arguments",
]


#: Storage classes of the exposure input the tasks' connections can take (run() takes them all).
CALEXP_STORAGE_CLASSES = {
    "ExposureF": "lsst.afw.image.ExposureF (the Rubin stack's calexp)",
    "CrowdsourceCCDData": "astropy CCDData in the afw FITS layout (no afw)",
    "VisitImage": "lsst.images.VisitImage (the DP1 visit_image; Python >= 3.12)",
}


def camel_case(name: str) -> str:
    """``snake_case`` -> ``camelCase``."""
    head, *rest = name.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


class CrowdsourceFitConfig(pexConfig.Config):
    """Parameters of crowdsource's iterative simultaneous fit.

    One field per `~lsst.meas.crowdsource.engine.FitParams` parameter, in
    camelCase (``n_iter`` -> ``nIter``), with the same default and
    description; `toParams` hands them to the engine.  Why the defaults are
    what they are is in ``benchmarks/README.md``.
    """

    # Main loop and sky
    nIter = pexConfig.Field[int](
        dtype=int,
        default=4,
        doc="Least number of find/fit/centroid/PSF passes before the final forced pass.",
    )
    maxIter = pexConfig.Field[int](
        dtype=int,
        default=10,
        doc=(
            "Most passes: after n_iter, another pass follows while the last one added more "
            "than more_pass_fraction of the sources (crowded fields keep revealing stars as "
            "their neighbours are modelled)."
        ),
    )
    morePassFraction = pexConfig.Field[float](
        dtype=float,
        default=0.01,
        doc=(
            "A pass after the n_iter-th is run when the pass before added more than this "
            "fraction of the sources it ended with (1: never)."
        ),
    )
    nCoarseSky = pexConfig.Field[int](
        dtype=int,
        default=1,
        doc=(
            "Number of first passes that subtract a single median sky, before the boxed sky "
            "is used."
        ),
    )
    skyBox = pexConfig.Field[int](
        dtype=int,
        default=20,
        doc="Size (pixels) of the boxes in which the sky median is taken.",
    )
    skySmooth = pexConfig.Field[int](
        dtype=int,
        default=3,
        doc="Median filter width (in boxes) applied to the grid of box medians.",
    )
    skyMaskNsigma = pexConfig.Field[float](
        dtype=float,
        default=0.0,
        doc=(
            "Pixels where the model of the sources exceeds this many sigma are left out of "
            "the boxed sky (0: use every pixel)."
        ),
    )
    skyMethod = pexConfig.Field[str](
        dtype=str,
        default="boxed",
        doc=(
            "How the sky is measured: 'boxed' (medians in sky_box boxes, as crowdsource), "
            "'spline' (a robust, penalised cubic B-spline, knots every sky_spline_spacing "
            "pixels) or 'adaptive' (that spline, refined where the data demand it)."
        ),
    )
    skySplineSpacing = pexConfig.Field[float](
        dtype=float,
        default=12.0,
        doc="Knot spacing (pixels) of the spline sky.",
    )
    skySplineSmoothing = pexConfig.Field[float](
        dtype=float,
        default=0.1,
        doc=(
            "Roughness penalty of the spline sky (squared second differences of its "
            "coefficients, relative to the data weight per coefficient)."
        ),
    )
    skyAdaptiveThreshold = pexConfig.Field[float](
        dtype=float,
        default=1.5,
        doc=(
            "Adaptive sky: the fine spline replaces the coarse one where they differ by more "
            "than this many pixel sigma (blended from half of it)."
        ),
    )
    skyClip = pexConfig.Field[float](
        dtype=float,
        default=3.0,
        doc=(
            "Spline sky: pixels this many sigma above the fit (dilated by 2 pixels) are left "
            "out, iteratively, so unmodelled stars do not raise the sky."
        ),
    )
    fitSkyTerms = pexConfig.Field[bool](
        dtype=bool,
        default=False,
        doc="Also fit a constant and linear sky gradient simultaneously with the stars.",
    )
    forcedSkyCoverage = pexConfig.Field[float](
        dtype=float,
        default=0.5,
        doc="With forced positions whose PSF cores (FWHM radius) cover at least this "
        "fraction of a tile's usable pixels, the sky's constant and gradient are fit "
        "simultaneously with the fluxes (as fit_sky_terms does): such a list can absorb a "
        "sky offset into its fluxes (0: always; above 1: never).",
    )

    # Peaks
    threshold = pexConfig.Field[float](
        dtype=float,
        default=5.0,
        doc="PSF-convolved significance needed to add a source (sigma).",
    )
    brightFactor = pexConfig.Field[float](
        dtype=float,
        default=0.3,
        doc="A pixel whose S/N exceeds the detection threshold divided by this is a bright peak.",
    )
    localBackgroundFactor = pexConfig.Field[float](
        dtype=float,
        default=0.5,
        doc=(
            "A peak must also reach this times the detection threshold in the significance "
            "image computed with a local-background (compensated) filter."
        ),
    )
    modelSignificanceFactor = pexConfig.Field[float](
        dtype=float,
        default=0.2,
        doc="Residual significance must exceed this times the model's significance.",
    )
    modelFluxFactor = pexConfig.Field[float](
        dtype=float,
        default=0.1,
        doc="The residual's PSF-matched flux at a peak must exceed this times the model's.",
    )
    modelPixelFactor = pexConfig.Field[float](
        dtype=float,
        default=0.0,
        doc=(
            "Residual pixel S/N must exceed this times the model's PSF-convolved S/N there "
            "(0: no such cut)."
        ),
    )
    minSeparation = pexConfig.Field[float](
        dtype=float,
        default=1.5,
        doc="No new source within this many pixels of an existing one.",
    )
    saturatedExclusion = pexConfig.Field[float](
        dtype=float,
        default=1.0,
        doc=(
            "No new source within this many PSF FWHMs of the core of a saturated star: a disc "
            "of radius half the narrower extent of its saturated region (so not along a bleed "
            "trail), plus this margin."
        ),
    )
    firstPassSeparation = pexConfig.Field[float](
        dtype=float,
        default=0.0,
        doc=(
            "Minimum separation of peaks in the first pass (0 means the PSF FWHM): early "
            "passes do not split blends."
        ),
    )

    # Fit
    stampSizes = pexConfig.ListField[int](
        dtype=int,
        default=[0, 0, 59],
        doc=(
            "Stamp sizes (odd) from faint to bright; 0 means derived from the FWHM (small: "
            "~2x FWHM radius, core: ~3x FWHM radius)."
        ),
    )
    stampNoiseFraction = pexConfig.Field[float](
        dtype=float,
        default=0.3,
        doc=(
            "A source gets the smallest stamp whose edge PSF value times its flux is below "
            "this fraction of the pixel noise."
        ),
    )
    derivativeStampSize = pexConfig.Field[int](
        dtype=int,
        default=0,
        doc=(
            "Size (odd) of the central square of a stamp on which the position derivatives "
            "are fit; larger stamps fit the flux only beyond it (0: the core stamp size, "
            "~2.5 FWHM in radius)."
        ),
    )
    solver = pexConfig.Field[str](
        dtype=str,
        default="direct",
        doc=(
            'Solver of the normal equations: "direct" (sparse Cholesky by CHOLMOD when '
            'cvxopt is installed, else SuperLU; conjugate gradients if singular), "superlu" '
            '(always SuperLU) or "cg" (block-preconditioned conjugate gradients).'
        ),
    )
    cgRtol = pexConfig.Field[float](
        dtype=float,
        default=1e-06,
        doc="Relative tolerance of the conjugate-gradient solve.",
    )
    cgMaxiter = pexConfig.Field[int](
        dtype=int,
        default=500,
        doc="Maximum conjugate-gradient iterations per solve.",
    )
    derivativeRidge = pexConfig.Field[float](
        dtype=float,
        default=0.0001,
        doc="Ridge (fraction of the diagonal) on position-derivative columns.",
    )
    settledStep = pexConfig.Field[float](
        dtype=float,
        default=0.01,
        doc="A source whose last position step was shorter than this (pixels) is "
        "solved for its flux alone in the next pass, without position-derivative "
        "terms; it still takes the step its stamp measures (0: every free source "
        "gets derivative terms in every pass).",
    )
    cullSnr = pexConfig.Field[float](
        dtype=float,
        default=2.5,
        doc="Drop sources whose fitted flux S/N falls below this between passes.",
    )
    mergeRadius = pexConfig.Field[float](
        dtype=float,
        default=0.5,
        doc="Sources that converge closer than this (pixels) are merged.",
    )
    forcedMinQf = pexConfig.Field[float](
        dtype=float,
        default=0.05,
        doc=(
            "Forced positions whose PSF core has less than this PSF-weighted fraction of "
            "usable pixels are not fit (NaN flux, flag_no_good_pixels)."
        ),
    )

    # Centroids
    maxShift = pexConfig.Field[float](
        dtype=float,
        default=1.0,
        doc="Largest position step per pass (pixels).",
    )
    centroidMinSnr = pexConfig.Field[float](
        dtype=float,
        default=3.0,
        doc="Sources fainter than this keep their position (no centroid step).",
    )

    # PSF
    refitPsf = pexConfig.Field[bool](
        dtype=bool,
        default=True,
        doc="Re-estimate the PSF from the image in every pass, the first included.",
    )
    psfOrder = pexConfig.Field[int](
        dtype=int,
        default=2,
        doc="Polynomial order of the PSF's variation across the image.",
    )
    psfCoreSize = pexConfig.Field[int](
        dtype=int,
        default=0,
        doc="Size of the PSF core estimated from stars (0: about 5 FWHM, at least 19).",
    )
    psfMinSnr = pexConfig.Field[float](
        dtype=float,
        default=30.0,
        doc="Minimum S/N of stars used to estimate the PSF.",
    )
    psfSnrFloor = pexConfig.Field[float](
        dtype=float,
        default=0.005,
        doc=(
            "With a spatially varying PSF (PSF order > 0) each PSF star is weighted by 1 / (1 "
            "/ (S/N)^2 + floor^2), floor being this value, so that stars much brighter than "
            "S/N 1 / floor do not dominate (0: by (S/N)^2 alone). Order 0 takes the "
            "unweighted median stamp."
        ),
    )
    psfWingMinSnr = pexConfig.Field[float](
        dtype=float,
        default=100.0,
        doc=(
            "Stars brighter than this S/N (among the PSF stars) measure the PSF wings beyond "
            "the core; with fewer than 10 such stars a Moffat fit to the core extends it."
        ),
    )
    psfKeepGivenWing = pexConfig.Field[bool](
        dtype=bool,
        default=True,
        doc=(
            "When a PSF is given, every refit keeps its wing beyond the refit core instead "
            "of measuring one from the bright stars (or fitting a Moffat to the core)."
        ),
    )
    psfMaxStars = pexConfig.Field[int](
        dtype=int,
        default=2000,
        doc="Use at most this many (the brightest) PSF stars.",
    )
    psfMinStars = pexConfig.Field[int](
        dtype=int,
        default=5,
        doc="Keep the previous PSF when fewer good stars are available.",
    )
    psfMaxShift = pexConfig.Field[float](
        dtype=float,
        default=0.5,
        doc="Stars whose centroid moved more than this (pixels) in the last pass are not used.",
    )
    psfMinFracflux = pexConfig.Field[float](
        dtype=float,
        default=0.5,
        doc="PSF stars must contribute at least this fraction of the light in their stamp.",
    )
    psfMaxMedianLoss = pexConfig.Field[float](
        dtype=float,
        default=0.8,
        doc=(
            "Reject PSF stars whose flux drops by more than this when a local median is "
            "subtracted (a diffuse, not a point, source)."
        ),
    )
    psfSettleMax = pexConfig.Field[int](
        dtype=int,
        default=4,
        doc=(
            "When no PSF is given: extra solve-and-refit rounds of the first pass, while the "
            "PSF still changes by more than psf_settle_tol, before later passes look for "
            "fainter sources (0: none, as crowdsource)."
        ),
    )
    psfSettleMaxDensity = pexConfig.Field[float](
        dtype=float,
        default=0.002,
        doc=(
            "The first pass's PSF is settled only where it found fewer sources than this per "
            "pixel (on crowded fields settling biased the PSF and cost time)."
        ),
    )
    psfSettleTol = pexConfig.Field[float](
        dtype=float,
        default=0.005,
        doc=(
            "The first pass's PSF has settled when a refit changes its unit-sum stamp by less "
            "than this (sum of absolute differences)."
        ),
    )
    initialFwhm = pexConfig.Field[float](
        dtype=float,
        default=0.0,
        doc="FWHM (pixels) of the Moffat used when no PSF is given; 0 estimates it.",
    )

    # Bounds on the work (hostile inputs)
    maxSourceDensity = pexConfig.Field[float](
        dtype=float,
        default=0.25,
        doc=(
            "Most sources found per pixel of a tile (forced positions not counted): one per 4 "
            "pixels, more than any PSF of FWHM >= 2 px can separate.  A tile that reaches it "
            "keeps its most significant peaks, warns and sets flag_source_cap."
        ),
    )
    maxNewPeakDensity = pexConfig.Field[float](
        dtype=float,
        default=0.1,
        doc=(
            "Most new peaks per pixel of a tile in one pass; beyond it the most significant are "
            "kept (with a warning and flag_source_cap)."
        ),
    )
    maskDefects = pexConfig.Field[bool](
        dtype=bool,
        default=True,
        doc=(
            "Leave out the plateaus and steps no PSF can fit (unmasked dead or runaway "
            "amplifiers, offset jumps, hot columns), with a warning; sources whose PSF core "
            "touches them get flag_unfittable."
        ),
    )
    plateauMinPixels = pexConfig.Field[int](
        dtype=int,
        default=25,
        doc=(
            "A plateau is a connected region of at least this many pixels whose 3x3 "
            "neighbourhoods span less than plateau_tolerance sigma (0: never)."
        ),
    )
    plateauMaxSaturated = pexConfig.Field[int](
        dtype=int,
        default=1000,
        doc="A plateau of at most this many pixels that nothing around it exceeds is taken "
        "for the clipped core of an unflagged saturated star: saturated, not bad.",
    )
    plateauTolerance = pexConfig.Field[float](
        dtype=float,
        default=0.001,
        doc="Largest 3x3 spread (in pixel sigma) of the pixels of a plateau.",
    )
    stepThreshold = pexConfig.Field[float](
        dtype=float,
        default=30.0,
        doc=(
            "A step is a straight row or column edge, at least step_min_length pixels long, "
            "across which neighbouring pixels differ by more than this many sigma, all with one "
            "sign."
        ),
    )
    stepMinLength = pexConfig.Field[int](
        dtype=int,
        default=32,
        doc="Shortest edge (pixels) taken for a step (0: never).",
    )
    stepMargin = pexConfig.Field[int](
        dtype=int,
        default=6,
        doc="Pixels left out on each side of a step (where the sky cannot follow).",
    )

    # Tiling
    tileSize = pexConfig.Field[int](
        dtype=int,
        default=1024,
        doc="Core size of the tiles that are fit independently (pixels).",
    )
    tileOverlap = pexConfig.Field[int](
        dtype=int,
        default=48,
        doc=(
            "Margin fit around each tile core, so that sources near the seams see all their "
            "neighbours (pixels)."
        ),
    )
    maxTileTargets = pexConfig.Field[int](
        dtype=int,
        default=120_000,
        doc=(
            "Most forced targets on one tile core: a core holding more is halved across its "
            "longer side until none does (down to 128 pixels); 0 = never split."
        ),
    )
    nProcesses = pexConfig.Field[int](
        dtype=int,
        default=1,
        doc="Tiles fit in parallel processes (1 = serial).",
    )

    def toParams(self) -> FitParams:
        """Return the engine parameters these values stand for.

        Returns
        -------
        params : `~lsst.meas.crowdsource.engine.FitParams`
            The engine's parameters, one keyword per field of this config.
        """
        return FitParams(
            n_iter=self.nIter,
            max_iter=self.maxIter,
            more_pass_fraction=self.morePassFraction,
            n_coarse_sky=self.nCoarseSky,
            sky_box=self.skyBox,
            sky_smooth=self.skySmooth,
            sky_mask_nsigma=self.skyMaskNsigma,
            sky_method=self.skyMethod,
            sky_spline_spacing=self.skySplineSpacing,
            sky_spline_smoothing=self.skySplineSmoothing,
            sky_adaptive_threshold=self.skyAdaptiveThreshold,
            sky_clip=self.skyClip,
            fit_sky_terms=self.fitSkyTerms,
            forced_sky_coverage=self.forcedSkyCoverage,
            threshold=self.threshold,
            bright_factor=self.brightFactor,
            local_background_factor=self.localBackgroundFactor,
            model_significance_factor=self.modelSignificanceFactor,
            model_flux_factor=self.modelFluxFactor,
            model_pixel_factor=self.modelPixelFactor,
            min_separation=self.minSeparation,
            saturated_exclusion=self.saturatedExclusion,
            first_pass_separation=self.firstPassSeparation,
            stamp_sizes=tuple(self.stampSizes),
            stamp_noise_fraction=self.stampNoiseFraction,
            derivative_stamp_size=self.derivativeStampSize,
            solver=self.solver,
            cg_rtol=self.cgRtol,
            cg_maxiter=self.cgMaxiter,
            derivative_ridge=self.derivativeRidge,
            settled_step=self.settledStep,
            cull_snr=self.cullSnr,
            merge_radius=self.mergeRadius,
            forced_min_qf=self.forcedMinQf,
            max_shift=self.maxShift,
            centroid_min_snr=self.centroidMinSnr,
            refit_psf=self.refitPsf,
            psf_order=self.psfOrder,
            psf_core_size=self.psfCoreSize,
            psf_min_snr=self.psfMinSnr,
            psf_snr_floor=self.psfSnrFloor,
            psf_wing_min_snr=self.psfWingMinSnr,
            psf_keep_given_wing=self.psfKeepGivenWing,
            psf_max_stars=self.psfMaxStars,
            psf_min_stars=self.psfMinStars,
            psf_max_shift=self.psfMaxShift,
            psf_min_fracflux=self.psfMinFracflux,
            psf_max_median_loss=self.psfMaxMedianLoss,
            psf_settle_max=self.psfSettleMax,
            psf_settle_max_density=self.psfSettleMaxDensity,
            psf_settle_tol=self.psfSettleTol,
            initial_fwhm=self.initialFwhm,
            max_source_density=self.maxSourceDensity,
            max_new_peak_density=self.maxNewPeakDensity,
            mask_defects=self.maskDefects,
            plateau_min_pixels=self.plateauMinPixels,
            plateau_max_saturated=self.plateauMaxSaturated,
            plateau_tolerance=self.plateauTolerance,
            step_threshold=self.stepThreshold,
            step_min_length=self.stepMinLength,
            step_margin=self.stepMargin,
            tile_size=self.tileSize,
            tile_overlap=self.tileOverlap,
            max_tile_targets=self.maxTileTargets,
            n_processes=self.nProcesses,
        )

    def validate(self):
        """Validate the fields, then the engine's rules for them.

        Raises
        ------
        lsst.pex.config.FieldValidationError
            Naming the first field that breaks a rule of
            `~lsst.meas.crowdsource.engine.FitParams.validate` (the message
            lists every problem).
        """
        super().validate()
        try:
            self.toParams().validate()
        except FitParamsError as err:
            field = getattr(type(self), camel_case(err.fields[0]))
            raise pexConfig.FieldValidationError(field, self, str(err)) from None


class CrowdsourceBaseConfig(pexConfig.Config):
    """Configuration shared by the crowdsource tasks (mixed into their configs)."""

    fit = pexConfig.ConfigField(
        dtype=CrowdsourceFitConfig, doc="Parameters of the iterative simultaneous fit."
    )
    badMaskPlanes = pexConfig.ListField(
        dtype=str,
        default=["BAD", "CR", "INTRP", "NO_DATA"],
        doc="Mask planes whose pixels are ignored by the fit (interpolated pixels "
        "carry no independent data).",
    )
    saturatedMaskPlanes = pexConfig.ListField(
        dtype=str,
        default=["SAT"],
        doc="Mask planes marking saturated pixels: ignored in the fit, and each saturated "
        "core becomes a source fit from its unsaturated wings.",
    )
    flagMaskPlanes = pexConfig.ListField(
        dtype=str,
        default=list(PIXEL_FLAG_PLANES),
        doc="Mask planes reported per source as pixelFlags_* (within the PSF core, and in "
        "the central 3x3 for the *Center flags).",
    )
    usePsfFromExposure = pexConfig.Field(
        dtype=bool,
        default=True,
        doc="Start from the exposure's PSF model when it has one (otherwise the PSF is "
        "estimated from the image); the fit refines it when fit.refitPsf is set.",
    )
    doWriteAfwCatalog = pexConfig.Field(
        dtype=bool,
        default=True,
        doc="Also produce an lsst.afw.table.SourceCatalog (where lsst.afw can be imported; "
        "without it run() gives none; turn off for pipelines on plain PyPI installs).",
    )
    calexpStorageClass = pexConfig.ChoiceField(
        dtype=str,
        default="ExposureF",
        allowed=dict(CALEXP_STORAGE_CLASSES),
        doc="Storage class of the input exposure (a butler-connection matter: run() takes "
        "any of these types whatever this says).",
    )
    imageStorageClass = pexConfig.ChoiceField(
        dtype=str,
        default="ImageF",
        allowed={"ImageF": "lsst.afw.image.ImageF", "NumpyArray": "numpy array (no afw)"},
        doc="Storage class of the model and background image outputs.  run() returns afw "
        "images only when this is ImageF and lsst.afw can be imported, numpy arrays "
        "otherwise.",
    )
    errorCalibrationStars = pexConfig.RangeField(
        dtype=int,
        default=0,
        min=0,
        doc="Artificial stars that calibrate the flux errors (0: off).  The image is fit "
        "again with them added, in as many rounds as keep them errorCalibrationSeparation "
        "apart, and psfInstFluxErr becomes the statistical error "
        "(crowdsource_psfInstFluxErrStat) times the pull width they show at its S/N; "
        "each round costs one more fit.  A few hundred stars suffice "
        "(lsst.meas.crowdsource.error_calibration).",
    )
    errorCalibrationSeparation = pexConfig.RangeField(
        dtype=float,
        default=6.0,
        min=1.0,
        doc="Smallest distance between two of the error-calibration stars, in PSF FWHM.",
    )
    errorCalibrationSeed = pexConfig.Field(
        dtype=int,
        default=0,
        doc="Seed of the error-calibration stars' positions, fluxes and photon noise.",
    )
    idGenerator = active.DetectorVisitIdGeneratorConfig.make_field(
        doc="How source IDs are made from the data ID (visit, detector; release_id "
        "bits): lsst.meas.base's DetectorVisitIdGeneratorConfig where it can be imported, "
        "else lsst.meas.crowdsource.ids' fallback with the same fields and ID layout."
    )

    def setNoAfwStorage(self):
        """Set the storage classes of a run without lsst.afw.

        CCDData in, numpy model and background out, no afw catalogue: what
        ``pipelines/*NoAfw.yaml`` set, for notebooks and tests.
        """
        self.calexpStorageClass = "CrowdsourceCCDData"
        self.imageStorageClass = "NumpyArray"
        self.doWriteAfwCatalog = False

    def validate(self):
        super().validate()
        if self.calexpStorageClass != "ExposureF" and self.imageStorageClass == "ImageF":
            raise pexConfig.FieldValidationError(
                type(self).imageStorageClass,
                self,
                f"imageStorageClass=ImageF needs afw; with calexpStorageClass="
                f"{self.calexpStorageClass} use NumpyArray.",
            )


def engine_arguments(inputs: ExposureInputs, config: CrowdsourceBaseConfig) -> dict:
    """Keyword arguments of `~lsst.meas.crowdsource.engine.fit_image` for an exposure."""
    planes = {
        name: inputs.plane([name]) for name in config.flagMaskPlanes if name in inputs.mask_planes
    }
    return dict(
        variance=inputs.variance,
        bad=inputs.plane(config.badMaskPlanes),
        saturated=inputs.plane(config.saturatedMaskPlanes),
        flag_planes=planes,
        psf=inputs.psf if config.usePsfFromExposure else None,
        params=config.fit.toParams(),
        xy0=inputs.xy0,
    )


def calibrate_errors(config: CrowdsourceBaseConfig, result, image, fit_kwargs, metadata, log):
    """Calibrate the flux errors of ``result`` with ``config.errorCalibrationStars`` stars.

    ``fit_kwargs`` are the arguments the fit was run with; the calibration
    (`~lsst.meas.crowdsource.error_calibration.ErrorCalibration`, `None` when
    off) is returned and recorded in ``metadata``.
    """
    if config.errorCalibrationStars <= 0:
        return None
    cal = calibrate_flux_errors(
        result,
        image,
        n_stars=config.errorCalibrationStars,
        separation_fwhm=config.errorCalibrationSeparation,
        seed=config.errorCalibrationSeed,
        log=log,
        **fit_kwargs,
    )
    for key, value in cal.as_metadata().items():
        metadata[key] = value
    return cal


def check_before_fit(
    config, id_generator=None, visit: int | None = None, detector: int | None = None
) -> CatalogIds:
    """Report configuration problems before the (long) fit, not after it.

    Returns
    -------
    ids : `lsst.meas.crowdsource.ids.CatalogIds`
        The catalogue's ID generator and the visit and detector of its rows
        (`lsst.meas.crowdsource.ids.catalog_ids` of ``config.idGenerator``).

    Raises
    ------
    ValueError
        A data ID that cannot be packed into source IDs, or ``visit`` /
        ``detector`` that contradict ``id_generator``.
    """
    return catalog_ids(config.idGenerator, id_generator, visit, detector)
