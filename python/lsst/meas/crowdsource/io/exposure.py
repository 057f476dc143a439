"""Dispatch: any supported exposure type -> `~.inputs.ExposureInputs`.

`exposure_inputs` takes an afw ``Exposure``, an ``lsst.images.VisitImage``
or an `astropy.nddata.CCDData` (the pure-Python path), importing the afw
and lsst.images adapters only when such an object is given.
"""

from __future__ import annotations

from .inputs import ExposureInputs

__all__ = ["exposure_inputs"]


def _is_afw_exposure(obj) -> bool:
    return type(obj).__module__.startswith("lsst.afw.image") and hasattr(obj, "getMaskedImage")


def _is_images_visit_image(obj) -> bool:
    return type(obj).__module__.startswith("lsst.images")


def exposure_inputs(exposure) -> ExposureInputs:
    """Build `ExposureInputs` from any supported exposure type.

    Raises
    ------
    TypeError
        For an object that is none of the supported types.
    """
    from astropy.nddata import CCDData

    if isinstance(exposure, ExposureInputs):
        return exposure
    if isinstance(exposure, CCDData):
        from .ccddata import ccddata_inputs

        return ccddata_inputs(exposure)
    if _is_afw_exposure(exposure):
        from .afw import afw_exposure_inputs

        return afw_exposure_inputs(exposure)
    if _is_images_visit_image(exposure):
        from .images import visit_image_inputs

        return visit_image_inputs(exposure)
    raise TypeError(
        f"Cannot fit a {type(exposure).__module__}.{type(exposure).__qualname__}: expected an "
        "lsst.afw.image.Exposure, an lsst.images.VisitImage or an astropy.nddata.CCDData."
    )
