"""Dispatch: any supported exposure (and its background) -> `~.inputs.ExposureInputs`.

`exposure_inputs` is the one way into the package for both tasks.  It takes
an afw ``Exposure``, an ``lsst.images.VisitImage`` (or another
``lsst.images.MaskedImage``) or an `astropy.nddata.CCDData` (the
pure-Python path), importing the afw and lsst.images adapters only when
such an object is given, and adds a subtracted background back when one is
given.  This module imports the adapters; none of them imports it.

Backgrounds
-----------
``background`` may be

- an ``lsst.afw.math.BackgroundList`` (the ``calexpBackground`` dataset),
  with an afw ``Exposure`` only: its ``getImage()`` is added (an empty list
  adds nothing);
- a 2-D `numpy.ndarray` of the image's shape, with any exposure type: the
  background in image units, on the same pixel grid (element ``[0, 0]`` is
  the exposure's first pixel), added in the image's dtype.

Anything else (an afw BackgroundList with a CCDData or VisitImage, whose
types hold no afw background; an ``lsst.images`` ``BackgroundMap``; an array
of another shape) raises `~lsst.meas.crowdsource.engine.InputError`.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..engine import InputError
from .inputs import ExposureInputs

__all__ = ["exposure_inputs"]


def _is_afw_exposure(obj) -> bool:
    return type(obj).__module__.startswith("lsst.afw.image") and hasattr(obj, "getMaskedImage")


def _is_afw_background(obj) -> bool:
    return type(obj).__module__.startswith("lsst.afw.math") and hasattr(obj, "getImage")


def _is_images_visit_image(obj) -> bool:
    return type(obj).__module__.startswith("lsst.images")


def _type_name(obj) -> str:
    return f"{type(obj).__module__}.{type(obj).__qualname__}"


def exposure_inputs(exposure, background=None) -> ExposureInputs:
    """Build `ExposureInputs` from any supported exposure type.

    Parameters
    ----------
    exposure : `lsst.afw.image.Exposure`, `lsst.images.VisitImage`, `astropy.nddata.CCDData` \
or `ExposureInputs`
        The exposure (an `ExposureInputs` is passed through).
    background : `lsst.afw.math.BackgroundList` or `numpy.ndarray`, optional
        Background to add back to the image (see the module docstring);
        `None` adds nothing.

    Returns
    -------
    inputs : `ExposureInputs`
        The exposure's inputs; with a background, ``image`` is a new array
        (the image plus the background), everything else as without.

    Raises
    ------
    TypeError
        For an exposure that is none of the supported types.
    lsst.meas.crowdsource.engine.InputError
        For a background that cannot go with this exposure, or that does
        not have the image's shape.
    """
    inputs = _adapt(exposure)
    if background is None:
        return inputs
    image = inputs.image
    return dataclasses.replace(
        inputs, image=image + _background_array(background, exposure, image.shape, image.dtype)
    )


def _adapt(exposure) -> ExposureInputs:
    """`ExposureInputs` of ``exposure``, through its type's adapter."""
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
        f"Cannot fit a {_type_name(exposure)}: expected an "
        "lsst.afw.image.Exposure, an lsst.images.VisitImage or an astropy.nddata.CCDData."
    )


def _background_array(background, exposure, shape: tuple[int, ...], dtype) -> np.ndarray:
    """The background as an array of the image's shape and dtype."""
    if isinstance(background, np.ndarray):
        if background.shape != tuple(shape):
            raise InputError(
                f"The background array has shape {background.shape} but the exposure has "
                f"shape {tuple(shape)}."
            )
        return background.astype(dtype, copy=False)
    if _is_afw_background(background):
        if not _is_afw_exposure(exposure):
            raise InputError(
                f"An afw background ({_type_name(background)}) goes with an afw Exposure, not "
                f"a {_type_name(exposure)}; give the background as a numpy array of the "
                "image's shape (e.g. background.getImage().array) instead."
            )
        from .afw import background_image

        return background_image(background, shape).astype(dtype, copy=False)
    raise InputError(
        f"Cannot add a background of type {_type_name(background)}: give an "
        "lsst.afw.math.BackgroundList (with an afw Exposure) or a numpy array of the image's shape."
    )
