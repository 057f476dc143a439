"""CrowdsourceInjectionTask: artificial-star tests of the crowdsource catalogue of one exposure.

Stars of known flux are added to the real image with its own PSF and noise,
the photometry is run again on the image with them, and the injected stars
are looked for in the new catalogue (as DAOPHOT's ADDSTAR, DOLPHOT's
FakeStars and crowdsource's ``decam_inject.py`` do).  What comes out --
completeness, flux bias, robust scatter and pull width per magnitude and
local density -- is how well the catalogue does *on this image*, where
there is no truth to compare with.

How one round goes (`CrowdsourceInjectionTask.run`):

1. The real catalogue: the one given (``crowdsource_source`` of the same
   exposure, with the PSF the photometry fitted, ``crowdsource_psf``), or
   the photometry run here on the exposure as it is.
2. Positions uniform over the image, no two injected stars closer than
   ``minSeparation`` PSF FWHMs, at most ``maxDensityFraction`` of the real
   sources' number per round (at least ``minStarsPerRound``, at most
   ``starsPerRound``): the artificial stars add little crowding of their own.
   Magnitudes uniform between ``magMin`` and ``magMax``.
3. Each star drawn with the exposure's PSF model at its position (the PSF
   the photometry fitted when the exposure has only a single stamp, as a
   CCDData, or none; ``psfSource``), shifted to its sub-pixel position with the fit's own
   Lanczos kernel, and added with its photon noise (variance ``signal /
   gain``; the gain read off the variance plane unless ``gain`` is set); the
   variance plane grows accordingly.
4. The photometry (the ``photometry`` subtask: give it the config of the
   real run) on the image with the stars.
5. The new catalogue matched one to one (`lsst.meas.crowdsource.matching`)
   against the real catalogue and the injected stars together, so that a
   real star next to an artificial one is not taken for it; an injected
   star is recovered when it gets a detection within ``matchRadius``.

The real sources far from every injected star are also compared with the
real catalogue in every round (``roundTable``: ``realPullMedian``,
``realPullScatter`` of ``(f_round - f_real) / err``): adding the stars must
leave them as they were, within a small fraction of their errors.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT
from lsst.utils.timer import timeMethod

from .artificial_stars import (
    add_stars,
    completeness_magnitude,
    crowding,
    draw_positions,
    estimate_gain,
    flux_for_snr,
    isolated_snr,
    local_density,
    psf_at_centre,
    psf_stamps,
    render_stars,
    summarize,
    zero_point,
)
from .catalog import Column, fill_table
from .config import CALEXP_STORAGE_CLASSES
from .engine import InputError
from .engine.psf import stamp_fwhm
from .engine.psf_io import psf_from_dict
from .errors import pipeline_errors
from .io.exposure import exposure_inputs
from .matching import match_to_truth, robust_scatter
from .photometry import CrowdsourcePhotometryTask

__all__ = [
    "CrowdsourceInjectionConfig",
    "CrowdsourceInjectionConnections",
    "CrowdsourceInjectionTask",
    "injected_columns",
]

#: Real sources farther than this many PSF FWHMs from every injected star are
#: compared with the real catalogue in each round.
UNDISTURBED_RADIUS_FWHM = 3.0

#: The real sources are drawn for the crowding column with the PSF evaluated
#: once per cell of this side (pixels).
CROWDING_PSF_CELL = 64.0


def injected_columns(image_unit: str = "count") -> list[Column]:
    """Columns of the per-star table (``crowdsource_injected``)."""
    u = image_unit
    return [
        Column("injectionId", "i8", "", "Artificial star number, 1..N over all rounds."),
        Column("visit", "i8", "", "Visit ID (-1 when unknown)."),
        Column("detector", "i4", "", "Detector ID (-1 when unknown)."),
        Column("round", "i4", "", "Round (0..nRounds-1) in which the star was injected."),
        Column("x", "f8", "pixel", "Injected column position (PARENT coordinates)."),
        Column("y", "f8", "pixel", "Injected row position (PARENT coordinates)."),
        Column("coord_ra", "f8", "deg", "ICRS right ascension of the injected position."),
        Column("coord_dec", "f8", "deg", "ICRS declination of the injected position."),
        Column(
            "injectedMag",
            "f8",
            "mag",
            "Injected magnitude: AB with a photometric calibration, else zeroPoint - 2.5 "
            "log10(injectedFlux).",
        ),
        Column("injectedFlux", "f8", u, "Injected total flux."),
        Column(
            "injectedSnr",
            "f8",
            "",
            "S/N of a PSF fit of the star alone on the exposure's variance at its position.",
        ),
        Column(
            "localDensity",
            "f8",
            "pix-2",
            "Real sources (the real catalogue) within densityRadius PSF FWHMs, per square pixel.",
        ),
        Column(
            "crowding",
            "f8",
            "",
            "PSF-weighted fraction of the light at the star that comes from the real sources "
            "(0: isolated).",
        ),
        Column(
            "badCenter",
            "?",
            "",
            "The centre pixel is in a mask plane the fit ignores (bad or saturated).",
        ),
        Column("recovered", "?", "", "A source of the round's catalogue was matched to the star."),
        Column("sourceId", "i8", "", "sourceId of the matched source in the round (-1 if none)."),
        Column("recoveredX", "f8", "pixel", "Column position of the matched source."),
        Column("recoveredY", "f8", "pixel", "Row position of the matched source."),
        Column("recoveredFlux", "f8", u, "psfInstFlux of the matched source."),
        Column("recoveredFluxErr", "f8", u, "psfInstFluxErr of the matched source."),
        Column("recoveredMag", "f8", "mag", "Magnitude of recoveredFlux (same zero point)."),
        Column("recoveredFlag", "?", "", "psfFlux_flag of the matched source."),
    ]


ROUND_COLUMNS = [
    Column("round", "i4", "", "Round."),
    Column("nInjected", "i8", "", "Artificial stars injected."),
    Column("nRecovered", "i8", "", "Of which recovered."),
    Column("seconds", "f8", "s", "Wall time of the round (drawing, photometry, matching)."),
    Column(
        "realCompared",
        "i8",
        "",
        f"Real sources with a usable flux farther than {UNDISTURBED_RADIUS_FWHM:g} FWHM "
        "from every injected star.",
    ),
    Column("realMatchedFraction", "f8", "", "Of which found again in the round's catalogue."),
    Column("realPullMedian", "f8", "", "Median of (f_round - f_real) / err_real of those found."),
    Column("realPullScatter", "f8", "", "1.4826 MAD of the same."),
]


class CrowdsourceInjectionConnections(
    pipeBase.PipelineTaskConnections, dimensions=("instrument", "visit", "detector")
):
    calexp = cT.Input(
        doc="The exposure to add artificial stars to (image, mask, variance, PSF, WCS).",
        name="calexp",
        storageClass="ExposureF",
        dimensions=("instrument", "visit", "detector"),
    )
    sourceTable = cT.Input(
        doc="The crowdsource catalogue already measured on the exposure (the real sources).",
        name="crowdsource_source",
        storageClass="ArrowAstropy",
        dimensions=("instrument", "visit", "detector"),
    )
    psf = cT.Input(
        doc="The PSF that photometry fitted (used when the exposure has no PSF model that "
        "varies across the image; see psfSource).",
        name="crowdsource_psf",
        storageClass="StructuredDataDict",
        dimensions=("instrument", "visit", "detector"),
    )
    injectedTable = cT.Output(
        doc="One row per artificial star: injected position and flux, recovered or not, "
        "recovered flux and error, local density, crowding.",
        name="crowdsource_injected",
        storageClass="ArrowAstropy",
        dimensions=("instrument", "visit", "detector"),
    )
    summaryTable = cT.Output(
        doc="Per magnitude bin: completeness, median flux bias, robust scatter and pull width, "
        "with their errors; the 50 % completeness magnitude in the metadata (mag50).",
        name="crowdsource_injection_summary",
        storageClass="ArrowAstropy",
        dimensions=("instrument", "visit", "detector"),
    )

    def __init__(self, *, config=None):
        super().__init__(config=config)
        self.calexp = dataclasses.replace(self.calexp, storageClass=config.calexpStorageClass)
        if not config.doUseMeasuredCatalog:
            del self.sourceTable
            del self.psf


class CrowdsourceInjectionConfig(
    pipeBase.PipelineTaskConfig, pipelineConnections=CrowdsourceInjectionConnections
):
    """Configuration of `CrowdsourceInjectionTask`."""

    photometry = pexConfig.ConfigurableField(
        target=CrowdsourcePhotometryTask,
        doc="The photometry run on every round: give it the configuration of the real run "
        "(in a pipeline, the same overrides as crowdsourcePhotometry, under photometry.).",
    )
    doUseMeasuredCatalog = pexConfig.Field[bool](
        dtype=bool,
        default=True,
        doc="Read the real catalogue (crowdsource_source) and fitted PSF (crowdsource_psf) "
        "from the butler; off: run the photometry on the exposure first.",
    )
    nRounds = pexConfig.Field[int](
        dtype=int,
        default=10,
        doc="Rounds of injection, each a photometry run.",
        check=lambda n: n > 0,
    )
    starsPerRound = pexConfig.Field[int](
        dtype=int,
        default=200,
        doc="Largest number of artificial stars per round.",
        check=lambda n: n > 0,
    )
    maxDensityFraction = pexConfig.Field[float](
        dtype=float,
        default=0.05,
        doc="At most this fraction of the number of real sources is injected per round, so "
        "that the artificial stars add little crowding.",
        check=lambda f: f > 0,
    )
    minStarsPerRound = pexConfig.Field[int](
        dtype=int,
        default=20,
        doc="But at least this many (a sparse or empty field has no crowding to preserve).",
        check=lambda n: n > 0,
    )
    minSeparation = pexConfig.Field[float](
        dtype=float,
        default=5.0,
        doc="No two artificial stars of a round closer than this many PSF FWHMs.",
        check=lambda s: s >= 0,
    )
    magMin = pexConfig.Field[float](
        dtype=float,
        default=None,
        optional=True,
        doc="Brightest injected magnitude (None: that of an isolated star of S/N snrRange[1]).",
    )
    magMax = pexConfig.Field[float](
        dtype=float,
        default=None,
        optional=True,
        doc="Faintest injected magnitude (None: that of an isolated star of S/N snrRange[0]).",
    )
    snrRange = pexConfig.ListField[float](
        dtype=float,
        default=[2.5, 300.0],
        doc="Faint and bright S/N of an isolated star (PSF at the image centre, median "
        "variance) giving magMax and magMin when they are not set.",
        length=2,
    )
    magBinWidth = pexConfig.Field[float](
        dtype=float,
        default=0.5,
        doc="Width of the summary's magnitude bins.",
        check=lambda w: w > 0,
    )
    zeroPoint = pexConfig.Field[float](
        dtype=float,
        default=25.0,
        doc="Magnitude zero point of exposures without a photometric calibration: m = "
        "zeroPoint - 2.5 log10(flux in image units) (AB magnitudes otherwise).",
    )
    gain = pexConfig.Field[float](
        dtype=float,
        default=0.0,
        doc="Electrons per image unit for the photon noise of the artificial stars; 0: "
        "estimated from the variance plane.",
        check=lambda g: g >= 0,
    )
    psfSource = pexConfig.ChoiceField[str](
        dtype=str,
        default="auto",
        allowed={
            "auto": "the exposure's PSF model when it varies across the image (an afw or "
            "lsst.images PSF), else the PSF the photometry fitted",
            "exposure": "the exposure's PSF, even a single stamp (a CCDData's); the fitted PSF "
            "when it has none",
            "fitted": "the PSF the photometry fitted to the real image",
        },
        doc="PSF the artificial stars are drawn with.  A single stamp (a CCDData's PSF) is only "
        "where the photometry starts: it refits the PSF, varying across the image, and the "
        "artificial stars should look like the real stars, which that fit describes.",
    )
    matchRadius = pexConfig.Field[float](
        dtype=float,
        default=1.0,
        doc="An artificial star is recovered by a source within this many pixels.",
        check=lambda r: r > 0,
    )
    densityRadius = pexConfig.Field[float](
        dtype=float,
        default=5.0,
        doc="Radius (PSF FWHMs) within which the real sources count towards localDensity.",
        check=lambda r: r > 0,
    )
    seed = pexConfig.Field[int](
        dtype=int,
        default=0,
        doc="Random seed; with the visit and detector (when known) it fixes every position, "
        "magnitude and noise value.",
        check=lambda s: s >= 0,
    )
    calexpStorageClass = pexConfig.ChoiceField[str](
        dtype=str,
        default="ExposureF",
        allowed=dict(CALEXP_STORAGE_CLASSES),
        doc="Storage class of the input exposure (run() takes any of these types).",
    )

    def setDefaults(self):
        super().setDefaults()
        # The rounds' catalogues are matched, not written: no afw outputs per round.
        self.photometry.doWriteAfwCatalog = False
        self.photometry.imageStorageClass = "NumpyArray"

    def setNoAfwStorage(self):
        """Storage classes of a run without lsst.afw (what pipelines/*NoAfw.yaml set)."""
        self.calexpStorageClass = "CrowdsourceCCDData"

    def validate(self):
        super().validate()
        if self.magMin is not None and self.magMax is not None and not self.magMin < self.magMax:
            raise pexConfig.FieldValidationError(
                type(self).magMax, self, "magMax must be fainter (larger) than magMin."
            )
        if not 0 < self.snrRange[0] < self.snrRange[1]:
            raise pexConfig.FieldValidationError(
                type(self).snrRange, self, "snrRange must be [faint, bright] with 0 < faint."
            )


@dataclasses.dataclass
class _Setting:
    """What every round shares: the image, the real catalogue, PSF, gain, magnitudes."""

    inputs: object  # ExposureInputs
    real: object  # astropy Table of the real sources
    psf: object
    fwhm: float
    gain: float
    zero_point: float
    mag_range: tuple[float, float]
    n_per_round: int
    others: np.ndarray  # image of the real sources (no sky), for the crowding
    ignored: np.ndarray  # pixels the fit ignores
    ids: dict  # visit, detector and idGenerator of the rounds' catalogues


class CrowdsourceInjectionTask(pipeBase.PipelineTask):
    """Artificial-star tests: completeness, bias and errors of the catalogue of an exposure.

    See the module documentation for what a round does.  ``run`` returns
    the per-star table, the per-bin summary, a per-round table (with the
    check that the real sources are unchanged) and the rounds' catalogues.
    """

    ConfigClass = CrowdsourceInjectionConfig
    _DefaultName = "crowdsourceInjection"

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.makeSubtask("photometry")

    def runQuantum(self, butlerQC, inputRefs, outputRefs):
        inputs = butlerQC.get(inputRefs)
        data_id = butlerQC.quantum.dataId
        with pipeline_errors(self.getName(), dict(data_id.required)):
            outputs = self.run(
                exposure=inputs["calexp"],
                sourceTable=inputs.get("sourceTable"),
                psf=inputs.get("psf"),
                visit=data_id["visit"],
                detector=data_id["detector"],
                idGenerator=self.config.photometry.idGenerator.apply(data_id),
            )
        butlerQC.put(outputs, outputRefs)

    @timeMethod
    def run(
        self, exposure, sourceTable=None, psf=None, visit=None, detector=None, idGenerator=None
    ):
        """Inject artificial stars in rounds, re-run the photometry and score the catalogue.

        Parameters
        ----------
        exposure : `lsst.afw.image.Exposure`, `lsst.images.VisitImage` or `astropy.nddata.CCDData`
            The exposure (see `lsst.meas.crowdsource.io.inputs`); not modified.
        sourceTable : `astropy.table.Table`, optional
            The catalogue already measured on it (``crowdsource_source``);
            without it the ``photometry`` subtask is run on the exposure first.
        psf : `dict`, optional
            The PSF that photometry fitted (``crowdsource_psf``), for
            exposures without a PSF model varying across the image (see
            ``psfSource``).
        visit, detector : `int`, optional
            Data ID: stored in the rows and mixed into the random seed.
        idGenerator : `lsst.meas.base.IdGenerator`, optional
            Source IDs of the rounds' catalogues (as for the photometry).

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``injectedTable`` (`astropy.table.Table`, `injected_columns`),
            ``summaryTable`` (per magnitude bin,
            `~lsst.meas.crowdsource.artificial_stars.SUMMARY_COLUMNS`; meta
            ``mag50``, ``gain``, ``zeroPoint``, ``psfFwhm``, also in the task
            metadata: the butler strips table metadata on reading unless
            asked ``parameters={"strip_astropy_meta_yaml": False}``),
            ``roundTable`` (per round, `ROUND_COLUMNS`), ``roundCatalogs``
            (`list` of the rounds' ``sourceTable``) and ``realTable`` (the
            real catalogue used).

        Raises
        ------
        lsst.meas.crowdsource.engine.InputError
            If there is no PSF to draw the stars with, or the exposure
            cannot be fit.
        """
        t0 = time.perf_counter()
        setting = self._prepare(exposure, sourceTable, psf, visit, detector, idGenerator)
        self.metadata["realSeconds"] = time.perf_counter() - t0
        entropy = [self.config.seed] + ([int(visit), int(detector)] if visit is not None else [])
        seeds = np.random.SeedSequence(entropy).spawn(self.config.nRounds)
        rows, rounds, catalogs = [], [], []
        for k, seq in enumerate(seeds):
            t1 = time.perf_counter()
            star, cat, check = self._round(setting, k, np.random.default_rng(seq))
            seconds = time.perf_counter() - t1
            rows.append(star)
            catalogs.append(cat)
            rounds.append(
                dict(round=k, nInjected=len(star["x"]), nRecovered=int(star["recovered"].sum()))
                | dict(seconds=seconds, **check)
            )
            self.log.info(
                "Round %d/%d: %d of %d artificial stars recovered; real sources unchanged to "
                "a median pull of %.3f (scatter %.3f) [%.1f s].",
                k + 1,
                self.config.nRounds,
                rounds[-1]["nRecovered"],
                rounds[-1]["nInjected"],
                check["realPullMedian"],
                check["realPullScatter"],
                seconds,
            )
        return self._assemble(setting, rows, rounds, catalogs, visit, detector)

    def _prepare(self, exposure, sourceTable, psf, visit, detector, idGenerator) -> _Setting:
        """The real catalogue, the PSF, gain, zero point, magnitudes and round size."""
        inputs = exposure_inputs(exposure)
        fitted = None if psf is None else psf_from_dict(psf)
        if sourceTable is None:
            self.log.info("Measuring the real sources first (no catalogue given).")
            real = self.photometry.run(
                inputs, visit=visit, detector=detector, idGenerator=idGenerator
            )
            sourceTable, fitted = real.sourceTable, real.fit.parent_psf
        model = self._psf_model(inputs.psf, fitted)
        if model is None:
            raise InputError(
                "No PSF to draw artificial stars with: the exposure has none and no fitted PSF "
                "(crowdsource_psf) was given."
            )
        shape, xy0 = inputs.image.shape, inputs.xy0
        centre = psf_at_centre(model, shape, xy0)
        fwhm = stamp_fwhm(centre)
        pconf = self.config.photometry
        ignored = inputs.plane(list(pconf.badMaskPlanes) + list(pconf.saturatedMaskPlanes))
        good = ~ignored & np.isfinite(inputs.variance) & (inputs.variance > 0)
        if not good.any():
            from .engine import NoUsablePixelsError

            raise NoUsablePixelsError("No usable pixels to inject artificial stars into.")
        gain = self.config.gain or estimate_gain(inputs.image, inputs.variance, good)
        if not np.isfinite(gain):
            self.log.warning(
                "The variance plane does not grow with the signal, so the gain cannot be read "
                "off it: the artificial stars get no photon noise (set the gain config field)."
            )
        zp = zero_point(inputs.njy_per_count, self.config.zeroPoint)
        mag_range = self._magnitudes(centre, float(np.median(inputs.variance[good])), gain, zp)
        n_real = len(sourceTable)
        n = max(self.config.minStarsPerRound, int(self.config.maxDensityFraction * n_real))
        n = min(self.config.starsPerRound, n)
        others = self._real_image(sourceTable, model, shape, xy0, fwhm)
        self.log.info(
            "Artificial stars: %d rounds of up to %d stars (%d real sources), magnitudes "
            "%.2f to %.2f (zero point %.3f), PSF FWHM %.2f px, gain %.3g.",
            self.config.nRounds,
            n,
            n_real,
            *mag_range,
            zp,
            fwhm,
            gain,
        )
        ids = dict(visit=visit, detector=detector, idGenerator=idGenerator)
        return _Setting(
            inputs, sourceTable, model, fwhm, gain, zp, mag_range, n, others, ignored, ids
        )

    def _psf_model(self, exposure_psf, fitted):
        """The PSF to draw the stars with, as ``psfSource`` says."""
        source = self.config.psfSource
        varies = callable(exposure_psf)
        if exposure_psf is not None and (source == "exposure" or (source == "auto" and varies)):
            return exposure_psf
        return fitted

    def _magnitudes(self, stamp, variance, gain, zp) -> tuple[float, float]:
        """The configured magnitude range, or the one from ``snrRange``."""
        faint, bright = self.config.snrRange
        mag_min, mag_max = self.config.magMin, self.config.magMax
        if mag_min is None:
            mag_min = zp - 2.5 * np.log10(flux_for_snr(bright, stamp, variance, gain))
        if mag_max is None:
            mag_max = zp - 2.5 * np.log10(flux_for_snr(faint, stamp, variance, gain))
        if not mag_min < mag_max:
            raise InputError(f"Empty magnitude range [{mag_min:.3f}, {mag_max:.3f}].")
        return float(mag_min), float(mag_max)

    @staticmethod
    def _real_image(table, psf, shape, xy0, fwhm) -> np.ndarray:
        """The real sources drawn with the PSF core (no sky), for the crowding column."""
        x, y = np.asarray(table["x"], float), np.asarray(table["y"], float)
        f = np.asarray(table["psfInstFlux"], float)
        ok = np.isfinite(x) & np.isfinite(y) & np.isfinite(f) & (f > 0)
        size = 2 * int(np.ceil(3.0 * fwhm)) + 1
        stamps = psf_stamps(psf, x[ok], y[ok], size=size, cell=CROWDING_PSF_CELL)
        return render_stars(shape, xy0, x[ok], y[ok], f[ok], stamps)

    def _round(self, s: _Setting, k: int, rng: np.random.Generator):
        """One round: draw, inject, measure, match.  Returns the star columns, the
        catalogue and the check of the real sources."""
        inputs = s.inputs
        shape, xy0 = inputs.image.shape, inputs.xy0
        x, y = draw_positions(rng, s.n_per_round, shape, xy0, self.config.minSeparation * s.fwhm)
        mag = rng.uniform(*s.mag_range, size=len(x))
        flux = 10.0 ** (-0.4 * (mag - s.zero_point))
        stamps = psf_stamps(s.psf, x, y)
        signal = render_stars(shape, xy0, x, y, flux, stamps)
        image, variance = add_stars(inputs.image, inputs.variance, signal, s.gain, rng)
        injected = dataclasses.replace(inputs, image=image, variance=variance)
        cat = self.photometry.run(injected, **s.ids).sourceTable
        star = self._star_columns(s, x, y, flux, stamps)
        star.update(self._recovered(s, cat, x, y, flux))
        star["mag"], star["round"] = mag, np.full(len(x), k)
        return star, cat, self._real_check(s, cat, x, y)

    def _star_columns(self, s: _Setting, x, y, flux, stamps) -> dict:
        """Per-star columns that do not depend on the measurement."""
        inputs = s.inputs
        # Positions lie within the pixels' extent, so their nearest pixels are on the image.
        ix = np.floor(x + 0.5).astype(int) - inputs.xy0[0]
        iy = np.floor(y + 0.5).astype(int) - inputs.xy0[1]
        var = inputs.variance[iy, ix].astype(float)
        real = s.real
        density = local_density(x, y, real["x"], real["y"], self.config.densityRadius * s.fwhm)
        return {
            "x": x,
            "y": y,
            "flux": flux,
            "snr": isolated_snr(flux, stamps, var, s.gain),
            "density": density,
            "crowding": crowding(x, y, flux, stamps, s.others, inputs.xy0),
            "bad": s.ignored[iy, ix],
        }

    def _recovered(self, s: _Setting, cat, x, y, flux) -> dict:
        """Match the round's catalogue against the real sources and the injected stars."""
        n_real = len(s.real)
        ref_x = np.concatenate([np.asarray(s.real["x"], float), x])
        ref_y = np.concatenate([np.asarray(s.real["y"], float), y])
        ref_f = np.concatenate([np.asarray(s.real["psfInstFlux"], float), flux])
        match = match_to_truth(
            cat["x"],
            cat["y"],
            ref_x,
            ref_y,
            self.config.matchRadius,
            flux=np.asarray(cat["psfInstFlux"], float),
            truth_flux=ref_f,
        )
        det = match.truth_to_det[n_real:]
        found = det >= 0
        pick = np.where(found, det, 0)

        def column(name, fill):
            values = np.asarray(cat[name])[pick] if len(cat) else np.full(len(x), fill)
            return np.where(found, values, fill)

        return {
            "recovered": found,
            "sourceId": column("sourceId", -1),
            "rx": column("x", np.nan),
            "ry": column("y", np.nan),
            "rflux": column("psfInstFlux", np.nan),
            "rerr": column("psfInstFluxErr", np.nan),
            "rflag": column("psfFlux_flag", False),
        }

    def _real_check(self, s: _Setting, cat, x, y) -> dict:
        """How the real sources far from the injected stars changed in this round."""
        real = s.real
        rx, ry = np.asarray(real["x"], float), np.asarray(real["y"], float)
        rf, re = np.asarray(real["psfInstFlux"], float), np.asarray(real["psfInstFluxErr"], float)
        far = local_density(rx, ry, x, y, UNDISTURBED_RADIUS_FWHM * s.fwhm) == 0
        use = far & np.isfinite(rf) & (re > 0) & ~np.asarray(real["psfFlux_flag"], bool)
        cf = np.asarray(cat["psfInstFlux"], float)
        rx, ry, rf, re = rx[use], ry[use], rf[use], re[use]
        match = match_to_truth(cat["x"], cat["y"], rx, ry, self.config.matchRadius, cf, rf)
        det = match.truth_to_det
        ok = det >= 0
        pull = (cf[det[ok]] - rf[ok]) / re[ok]
        return dict(
            realCompared=int(use.sum()),
            realMatchedFraction=float(ok.mean()) if use.any() else float("nan"),
            realPullMedian=float(np.median(pull)) if ok.any() else float("nan"),
            realPullScatter=robust_scatter(pull),
        )

    def _assemble(self, s: _Setting, rows, rounds, catalogs, visit, detector):
        """The output tables and the task metadata."""
        inputs = s.inputs
        col = {key: np.concatenate([r[key] for r in rows]) for key in rows[0]}
        n = len(col["x"])
        with np.errstate(invalid="ignore", divide="ignore"):
            rmag = s.zero_point - 2.5 * np.log10(col["rflux"])
        if inputs.pixel_to_sky is not None and n:
            ra, dec = inputs.pixel_to_sky(col["x"], col["y"])
        else:
            ra = dec = np.full(n, np.nan)
        values = {
            "injectionId": np.arange(1, n + 1),
            "visit": np.full(n, -1 if visit is None else visit),
            "detector": np.full(n, -1 if detector is None else detector),
            "round": col["round"],
            "x": col["x"],
            "y": col["y"],
            "coord_ra": ra,
            "coord_dec": dec,
            "injectedMag": col["mag"],
            "injectedFlux": col["flux"],
            "injectedSnr": col["snr"],
            "localDensity": col["density"],
            "crowding": col["crowding"],
            "badCenter": col["bad"],
            "recovered": col["recovered"],
            "sourceId": col["sourceId"],
            "recoveredX": col["rx"],
            "recoveredY": col["ry"],
            "recoveredFlux": col["rflux"],
            "recoveredFluxErr": col["rerr"],
            "recoveredMag": rmag,
            "recoveredFlag": col["rflag"],
        }
        table = fill_table(injected_columns(inputs.unit), values)
        n_bins = max(1, int(round((s.mag_range[1] - s.mag_range[0]) / self.config.magBinWidth)))
        edges = np.linspace(*s.mag_range, n_bins + 1)
        edges[-1] = np.nextafter(edges[-1], np.inf)  # the faintest star is in the last bin
        summary = summarize(
            col["mag"], col["recovered"], col["flux"], col["rflux"], col["rerr"], edges
        )
        mag50 = completeness_magnitude(summary)
        meta = dict(mag50=mag50, gain=s.gain, zeroPoint=s.zero_point, psfFwhm=s.fwhm)
        summary.meta.update(meta)
        table.meta.update(meta)
        round_table = fill_table(
            ROUND_COLUMNS, {c.name: [r[c.name] for r in rounds] for c in ROUND_COLUMNS}
        )
        self.metadata["nInjected"] = n
        self.metadata["nRecovered"] = int(col["recovered"].sum())
        for key, value in meta.items():
            self.metadata[key] = float(value)
        self.metadata["secondsPerRound"] = [float(r["seconds"]) for r in rounds]
        self.metadata["realPullMedianPerRound"] = [float(r["realPullMedian"]) for r in rounds]
        self.log.info(
            "%d artificial stars, %d recovered; 50%% completeness at magnitude %.2f.",
            n,
            self.metadata["nRecovered"],
            mag50,
        )
        return pipeBase.Struct(
            injectedTable=table,
            summaryTable=summary,
            roundTable=round_table,
            roundCatalogs=catalogs,
            realTable=s.real,
        )
