"""Pieces shared by the photometry and forced-photometry tasks."""

from __future__ import annotations

import numpy as np

import lsst.pex.config as pexConfig

from .engine import FitResult
from .fit_config import CrowdsourceFitConfig
from .inputs import ExposureInputs
from .schema import PIXEL_FLAG_PLANES

__all__ = ["CrowdsourceBaseConfig", "engine_arguments", "image_output", "make_ids",
           "afw_available", "afw_catalog", "check_before_fit", "history_metadata"]


def afw_available() -> bool:
    """Whether lsst.afw can be imported here."""
    try:
        import lsst.afw.table  # noqa: F401
    except ImportError:
        return False
    return True


class CrowdsourceBaseConfig(pexConfig.Config):
    """Configuration shared by the crowdsource tasks (mixed into their configs)."""

    fit = pexConfig.ConfigField(dtype=CrowdsourceFitConfig,
                                doc="Parameters of the iterative simultaneous fit.")
    badMaskPlanes = pexConfig.ListField(
        dtype=str, default=["BAD", "CR", "INTRP", "NO_DATA"],
        doc="Mask planes whose pixels are ignored by the fit (interpolated pixels "
            "carry no independent data).")
    saturatedMaskPlanes = pexConfig.ListField(
        dtype=str, default=["SAT"],
        doc="Mask planes marking saturated pixels: ignored in the fit, and each saturated "
            "core becomes a source fit from its unsaturated wings.")
    flagMaskPlanes = pexConfig.ListField(
        dtype=str, default=list(PIXEL_FLAG_PLANES),
        doc="Mask planes reported per source as pixelFlags_* (within the PSF core, and in "
            "the central 3x3 for the *Center flags).")
    usePsfFromExposure = pexConfig.Field(
        dtype=bool, default=True,
        doc="Start from the exposure's PSF model when it has one (otherwise the PSF is "
            "estimated from the image); the fit refines it when fit.refitPsf is set.")
    doWriteAfwCatalog = pexConfig.Field(
        dtype=bool, default=True,
        doc="Also produce an lsst.afw.table.SourceCatalog (needs lsst.afw; turn off on "
            "plain PyPI installs).")
    calexpStorageClass = pexConfig.ChoiceField(
        dtype=str, default="ExposureF",
        allowed={"ExposureF": "lsst.afw.image.ExposureF (the Rubin stack's calexp)",
                 "CrowdsourceCCDData": "astropy CCDData in the afw FITS layout (no afw)"},
        doc="Storage class of the input exposure.")
    imageStorageClass = pexConfig.ChoiceField(
        dtype=str, default="ImageF",
        allowed={"ImageF": "lsst.afw.image.ImageF", "NumpyArray": "numpy array (no afw)"},
        doc="Storage class of the model and background image outputs.")
    maxDetectors = pexConfig.Field(
        dtype=int, default=1000,
        doc="Detector IDs are below this; used to pack (visit, detector, index) into "
            "unique source IDs.")
    sourceIdBits = pexConfig.Field(
        dtype=int, default=22,
        doc="Bits of the source ID that count sources within one detector.")

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
        if self.calexpStorageClass == "CrowdsourceCCDData" and self.imageStorageClass == "ImageF":
            raise pexConfig.FieldValidationError(
                type(self).imageStorageClass, self,
                "imageStorageClass=ImageF needs afw; with calexpStorageClass="
                "CrowdsourceCCDData use NumpyArray.")
        if not 8 <= self.sourceIdBits <= 40:
            raise pexConfig.FieldValidationError(type(self).sourceIdBits, self,
                                                 "sourceIdBits must be in 8..40")


def engine_arguments(inputs: ExposureInputs, config: CrowdsourceBaseConfig) -> dict:
    """Keyword arguments of `~lsst.meas.crowdsource.engine.fit_image` for an exposure."""
    planes = {name: inputs.plane([name]) for name in config.flagMaskPlanes
              if name in inputs.mask_planes}
    return dict(variance=inputs.variance, bad=inputs.plane(config.badMaskPlanes),
                saturated=inputs.plane(config.saturatedMaskPlanes), flag_planes=planes,
                psf=inputs.psf if config.usePsfFromExposure else None,
                params=config.fit.toParams(), xy0=inputs.xy0)


def make_ids(n: int, visit: int | None, detector: int | None, config) -> np.ndarray:
    """Source IDs: ``((visit * maxDetectors + detector) << sourceIdBits) + i + 1``.

    Without a data ID the IDs are 1..n.

    Raises
    ------
    ValueError
        If the IDs do not fit in 63 bits or a detector has too many sources.
    """
    index = np.arange(1, n + 1, dtype=np.int64)
    if n >= 2 ** config.sourceIdBits:
        raise ValueError(f"{n} sources do not fit in sourceIdBits={config.sourceIdBits}.")
    if visit is None or detector is None:
        return index
    if not 0 <= detector < config.maxDetectors:
        raise ValueError(f"Detector {detector} is not below maxDetectors={config.maxDetectors}.")
    exposure = int(visit) * config.maxDetectors + int(detector)
    if exposure.bit_length() + config.sourceIdBits > 63:
        raise ValueError(f"Visit {visit} and detector {detector} do not fit in a 64-bit "
                         f"source ID with sourceIdBits={config.sourceIdBits}; lower it or "
                         "maxDetectors.")
    return (np.int64(exposure) << np.int64(config.sourceIdBits)) + index


def check_before_fit(config, visit: int | None, detector: int | None) -> None:
    """Report configuration problems before the (long) fit, not after it.

    Raises
    ------
    ImportError
        ``imageStorageClass='ImageF'`` without lsst.afw.
    ValueError
        A data ID that cannot be packed into source IDs.
    """
    if config.imageStorageClass == "ImageF" and not afw_available():
        raise ImportError("imageStorageClass='ImageF' needs lsst.afw, which cannot be "
                          "imported here; set config.imageStorageClass='NumpyArray' (and "
                          "doWriteAfwCatalog=False) to run without afw.")
    make_ids(0, visit, detector, config)


def afw_catalog(table, columns, config, log):
    """The afw SourceCatalog of ``table``, or `None` when it is not wanted or afw is absent."""
    if not config.doWriteAfwCatalog:
        return None
    if not afw_available():
        log.warning("lsst.afw is not available: no SourceCatalog is made "
                    "(set doWriteAfwCatalog=False to silence this).")
        return None
    from .adapters.afw import source_catalog_from_table

    return source_catalog_from_table(table, columns)


def image_output(array: np.ndarray, xy0: tuple[int, int], storage_class: str):
    """An image output in the configured storage class."""
    if storage_class == "NumpyArray":
        return np.asarray(array, dtype=np.float32)
    from .adapters.afw import numpy_to_afw_image

    return numpy_to_afw_image(array, xy0)


def history_metadata(metadata, result: FitResult) -> None:
    """Record per-pass source counts and timings in task metadata."""
    passes = [h for h in result.history if not h.get("final")]
    metadata["nSources"] = len(result)
    metadata["nTiles"] = result.n_tiles
    metadata["sourcesPerPass"] = [int(h["n_sources"]) for h in passes]
    metadata["newPeaksPerPass"] = [int(h["n_new"]) for h in passes]
    metadata["secondsPerPass"] = [float(h["seconds"]) for h in passes]
