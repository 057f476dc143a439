"""CrowdsourcePhotometryTask: crowded-field photometry of one detector.

Runs in place of detection + deblending + measurement: the engine finds and
fits every star simultaneously and the task writes the catalogue.
"""

from __future__ import annotations

import dataclasses

import numpy as np

import lsst.pex.config as pexConfig
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT
from lsst.utils.timer import timeMethod

from .catalog import build_table, source_columns
from .config import CrowdsourceBaseConfig, calibrate_errors, check_before_fit, engine_arguments
from .engine import FitResult, fit_image
from .engine.psf_io import psf_to_dict
from .errors import pipeline_errors
from .io.exposure import exposure_inputs
from .io.outputs import task_outputs

__all__ = [
    "CrowdsourcePhotometryConnections",
    "CrowdsourcePhotometryConfig",
    "CrowdsourcePhotometryTask",
]


class CrowdsourcePhotometryConnections(
    pipeBase.PipelineTaskConnections, dimensions=("instrument", "visit", "detector")
):
    calexp = cT.Input(
        doc="Calibrated exposure to fit (image, mask, variance, PSF, WCS).",
        name="calexp",
        storageClass="ExposureF",
        dimensions=("instrument", "visit", "detector"),
    )
    calexpBackground = cT.Input(
        doc="Background subtracted from the calexp; added back before the fit when "
        "doAddBackground is set, so that crowdsource models the sky itself.",
        name="calexpBackground",
        storageClass="Background",
        dimensions=("instrument", "visit", "detector"),
    )
    sourceTable = cT.Output(
        doc="Crowdsource catalogue (Rubin DP1 Source column names).",
        name="crowdsource_source",
        storageClass="ArrowAstropy",
        dimensions=("instrument", "visit", "detector"),
    )
    sourceCat = cT.Output(
        doc="Crowdsource catalogue as an afw SourceCatalog with slot aliases.",
        name="crowdsource_src",
        storageClass="SourceCatalog",
        dimensions=("instrument", "visit", "detector"),
    )
    model = cT.Output(
        doc="Model of the image: every source plus the sky.",
        name="crowdsource_model",
        storageClass="ImageF",
        dimensions=("instrument", "visit", "detector"),
    )
    background = cT.Output(
        doc="The sky part of the model.",
        name="crowdsource_background",
        storageClass="ImageF",
        dimensions=("instrument", "visit", "detector"),
    )
    psf = cT.Output(
        doc="Final PSF model (plain data; lsst.meas.crowdsource.engine.psf_io.psf_from_dict).",
        name="crowdsource_psf",
        storageClass="StructuredDataDict",
        dimensions=("instrument", "visit", "detector"),
    )

    def __init__(self, *, config=None):
        super().__init__(config=config)
        self.calexp = dataclasses.replace(self.calexp, storageClass=config.calexpStorageClass)
        self.model = dataclasses.replace(self.model, storageClass=config.imageStorageClass)
        self.background = dataclasses.replace(
            self.background, storageClass=config.imageStorageClass
        )
        if not config.doAddBackground:
            del self.calexpBackground
        if not config.doWriteAfwCatalog:
            del self.sourceCat


class CrowdsourcePhotometryConfig(
    CrowdsourceBaseConfig,
    pipeBase.PipelineTaskConfig,
    pipelineConnections=CrowdsourcePhotometryConnections,
):
    """Configuration of `CrowdsourcePhotometryTask`."""

    doAddBackground = pexConfig.Field(
        dtype=bool,
        default=False,
        doc="Add calexpBackground back to the image before fitting (the fit models the "
        "sky itself, so this is only needed when the subtracted background should be "
        "replaced by crowdsource's).",
    )

    def validate(self):
        super().validate()
        if self.doAddBackground and self.calexpStorageClass != "ExposureF":
            raise pexConfig.FieldValidationError(
                type(self).doAddBackground,
                self,
                "doAddBackground needs an afw Background and so the ExposureF storage class.",
            )


class CrowdsourcePhotometryTask(pipeBase.PipelineTask):
    """Find and measure every star of a crowded exposure with crowdsource's fit.

    The main loop (sky, peaks, simultaneous fit, centroids, PSF; repeat,
    then forced photometry at the final positions) is in
    `lsst.meas.crowdsource.engine`; this task adapts the exposure, runs it
    and writes the catalogue, the model image, the sky and the PSF.
    """

    ConfigClass = CrowdsourcePhotometryConfig
    _DefaultName = "crowdsourcePhotometry"

    def runQuantum(self, butlerQC, inputRefs, outputRefs):
        inputs = butlerQC.get(inputRefs)
        data_id = butlerQC.quantum.dataId
        with pipeline_errors(self.getName(), dict(data_id.required)):
            outputs = self.run(
                exposure=inputs["calexp"],
                background=inputs.get("calexpBackground"),
                visit=data_id["visit"],
                detector=data_id["detector"],
                idGenerator=self.config.idGenerator.apply(data_id),
            )
        butlerQC.put(outputs, outputRefs)

    @timeMethod
    def run(self, exposure, background=None, visit=None, detector=None, idGenerator=None):
        """Fit every star in ``exposure``.

        Parameters
        ----------
        exposure : `lsst.afw.image.Exposure`, `lsst.images.VisitImage` or `astropy.nddata.CCDData`
            The calibrated exposure (see `lsst.meas.crowdsource.io.inputs`).
        background : `lsst.afw.math.BackgroundList`, optional
            Background to add back first (with ``doAddBackground``).
        visit, detector : `int`, optional
            Data ID of the ``visit`` and ``detector`` columns; without
            ``idGenerator`` also packed into the source IDs (see
            `lsst.meas.crowdsource.ids.notebook_id_generator`).
        idGenerator : `lsst.meas.base.IdGenerator`, optional
            Source IDs, from ``config.idGenerator.apply(dataId)`` (what
            ``runQuantum`` passes; ``visit``/``detector`` default to its data
            ID).  Without it or a data ID the IDs are 1..N.

        Returns
        -------
        result : `lsst.pipe.base.Struct`
            ``sourceTable`` (`astropy.table.Table`), ``sourceCat``
            (`lsst.afw.table.SourceCatalog` or `None` without afw or with
            ``doWriteAfwCatalog=False``), ``model``, ``background`` (images
            in ``imageStorageClass``), ``psf`` (`dict`, see
            `~lsst.meas.crowdsource.engine.psf_io.psf_from_dict`) and
            ``fit`` (the engine's `~lsst.meas.crowdsource.engine.FitResult`).
        """
        ids = check_before_fit(self.config, idGenerator, visit, detector)
        visit, detector = ids.visit, ids.detector
        inputs = exposure_inputs(
            exposure, background=background if self.config.doAddBackground else None
        )
        image = inputs.image
        ny, nx = image.shape
        self.log.info(
            "Fitting a %dx%d exposure%s.",
            nx,
            ny,
            "" if visit is None else f" (visit {visit}, detector {detector})",
        )
        fit_kwargs = engine_arguments(inputs, self.config)
        result = fit_image(image, log=self.log, **fit_kwargs)
        calibrate_errors(self.config, result, image, fit_kwargs, self.metadata, self.log)
        columns = source_columns(inputs.unit)
        table = build_table(
            result,
            columns,
            pixel_to_sky=inputs.pixel_to_sky,
            njy_per_count=inputs.njy_per_count,
            ids=ids.arange(len(result)),
            visit=visit,
            detector=detector,
        )
        table.meta["crowdsource_psf_fwhm"] = float(result.psf.fwhm())
        history_metadata(self.metadata, result)
        n_good = int(np.sum(~table["psfFlux_flag"]))
        self.log.info("Measured %d sources (%d with a usable PSF flux).", len(table), n_good)
        out = task_outputs(
            table,
            columns,
            {"model": result.model, "background": result.sky},
            inputs.xy0,
            self.config,
            self.log,
        )
        return pipeBase.Struct(
            sourceTable=table,
            sourceCat=out["afwCatalog"],
            model=out["model"],
            background=out["background"],
            psf=psf_to_dict(result.psf, result.xy0),
            fit=result,
        )


def history_metadata(metadata, result: FitResult) -> None:
    """Record per-pass source counts and timings, caps reached and defects in task metadata."""
    passes = [h for h in result.history if not h.get("final")]
    metadata["nSources"] = len(result)
    metadata["nTiles"] = result.n_tiles
    metadata["sourcesPerPass"] = [int(h["n_sources"]) for h in passes]
    metadata["newPeaksPerPass"] = [int(h["n_new"]) for h in passes]
    metadata["secondsPerPass"] = [float(h["seconds"]) for h in passes]
    tiles = [int(h.get("tile", 0)) for h in passes]
    metadata["passesPerTile"] = [tiles.count(t) for t in sorted(set(tiles))]
    metadata["sourceCapReached"] = any(h.get("capped", False) for h in passes)
    defects = result.defects
    metadata["nPlateaus"] = defects.n_plateaus if defects else 0
    metadata["nSteps"] = defects.n_steps if defects else 0
    metadata["nUnfittablePixels"] = int(defects.mask.sum()) if defects else 0
    metadata["noiseRatio"] = float(result.noise_ratio)
