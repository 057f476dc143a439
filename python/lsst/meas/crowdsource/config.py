"""Configuration shared by the tasks, and how it maps onto the engine's arguments.

`CrowdsourceFitConfig` is the pex_config view of the engine's
`~lsst.meas.crowdsource.engine.FitParams` (``n_iter`` -> ``nIter``);
`CrowdsourceBaseConfig` holds what both tasks share; `engine_arguments` is
the one place where config values become `~lsst.meas.crowdsource.engine.fit_image`
arguments.
"""

from __future__ import annotations

import dataclasses
import typing

import lsst.pex.config as pexConfig

from .catalog import PIXEL_FLAG_PLANES
from .engine import FitParams, InputError
from .ids import make_ids
from .io.inputs import ExposureInputs
from .io.outputs import afw_available

__all__ = [
    "CrowdsourceBaseConfig",
    "CrowdsourceFitConfig",
    "camel_case",
    "check_before_fit",
    "engine_arguments",
]


def camel_case(name: str) -> str:
    """``snake_case`` -> ``camelCase``."""
    head, *rest = name.split("_")
    return head + "".join(w[:1].upper() + w[1:] for w in rest)


def _make_fields() -> dict[str, pexConfig.Field]:
    hints = typing.get_type_hints(FitParams)
    out = {}
    for f in dataclasses.fields(FitParams):
        doc = f.metadata["doc"]
        hint = hints[f.name]
        if typing.get_origin(hint) is tuple:
            out[camel_case(f.name)] = pexConfig.ListField(
                dtype=int, default=list(f.default), doc=doc
            )
        else:
            out[camel_case(f.name)] = pexConfig.Field(dtype=hint, default=f.default, doc=doc)
    return out


def _to_params(self) -> FitParams:
    """The engine parameters these config values stand for."""
    kw = {}
    for f in dataclasses.fields(FitParams):
        value = getattr(self, camel_case(f.name))
        kw[f.name] = tuple(value) if isinstance(f.default, tuple) else value
    return FitParams(**kw)


def _validate(self):
    pexConfig.Config.validate(self)
    try:
        self.toParams().validate()
    except InputError as err:
        raise pexConfig.FieldValidationError(CrowdsourceFitConfig.nIter, self, str(err)) from None


CrowdsourceFitConfig = type(
    "CrowdsourceFitConfig",
    (pexConfig.Config,),
    dict(
        _make_fields(),
        toParams=_to_params,
        validate=_validate,
        __module__=__name__,
        __doc__="Parameters of crowdsource's iterative simultaneous fit "
        "(see `lsst.meas.crowdsource.engine.FitParams`).",
    ),
)


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
        doc="Also produce an lsst.afw.table.SourceCatalog (needs lsst.afw; turn off on "
        "plain PyPI installs).",
    )
    calexpStorageClass = pexConfig.ChoiceField(
        dtype=str,
        default="ExposureF",
        allowed={
            "ExposureF": "lsst.afw.image.ExposureF (the Rubin stack's calexp)",
            "CrowdsourceCCDData": "astropy CCDData in the afw FITS layout (no afw)",
        },
        doc="Storage class of the input exposure.",
    )
    imageStorageClass = pexConfig.ChoiceField(
        dtype=str,
        default="ImageF",
        allowed={"ImageF": "lsst.afw.image.ImageF", "NumpyArray": "numpy array (no afw)"},
        doc="Storage class of the model and background image outputs.",
    )
    maxDetectors = pexConfig.Field(
        dtype=int,
        default=1000,
        doc="Detector IDs are below this; used to pack (visit, detector, index) into "
        "unique source IDs.",
    )
    sourceIdBits = pexConfig.Field(
        dtype=int, default=22, doc="Bits of the source ID that count sources within one detector."
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
        if self.calexpStorageClass == "CrowdsourceCCDData" and self.imageStorageClass == "ImageF":
            raise pexConfig.FieldValidationError(
                type(self).imageStorageClass,
                self,
                "imageStorageClass=ImageF needs afw; with calexpStorageClass="
                "CrowdsourceCCDData use NumpyArray.",
            )
        if not 8 <= self.sourceIdBits <= 40:
            raise pexConfig.FieldValidationError(
                type(self).sourceIdBits, self, "sourceIdBits must be in 8..40"
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
        raise ImportError(
            "imageStorageClass='ImageF' needs lsst.afw, which cannot be "
            "imported here; set config.imageStorageClass='NumpyArray' (and "
            "doWriteAfwCatalog=False) to run without afw."
        )
    make_ids(0, visit, detector, config)
