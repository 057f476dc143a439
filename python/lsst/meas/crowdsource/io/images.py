"""Adapter from `lsst.images.VisitImage` (DP1+ ``visit_image``) to the engine.

``lsst.images`` is imported only inside functions.  The API used, and where
it is defined in github lsst/images (``python/lsst/images/``):

- ``MaskedImage.image`` / ``.variance`` (`~lsst.images.Image`, whose
  ``.array`` is the 2-D pixel array) and ``.mask`` (``_masked_image.py``,
  ``_image.py``); ``MaskedImage.bbox.start`` is a ``YX`` of the first
  pixel's coordinates (``_geom.py``); ``MaskedImage.unit`` is the image's
  `astropy.units.Unit` (or `None`; a `VisitImage` always has one, ``nJy``
  for a DP1 ``visit_image``).  `VisitImage` subclasses `MaskedImage`
  (``_visit_image.py``).
- `~lsst.images.Mask` is a 3-D ``(ny, nx, mask_size)`` bit-packed array
  described by a ``MaskSchema`` (``_mask.py``; iterating it gives
  ``MaskPlane`` or `None` placeholders); ``Mask.get(name)`` returns one
  plane as a new 2-D boolean array, which is what
  `~lsst.meas.crowdsource.io.inputs.ExposureInputs` carries.  lsst.images
  renames several afw planes (``SAT`` -> ``SATURATED``, ``CR`` ->
  ``COSMIC_RAY``, ``INTRP`` -> ``INTERPOLATED``, ``EDGE`` ->
  ``DETECTION_EDGE``, ...; see ``get_legacy_visit_image_mask_planes``), so
  each plane is also listed under its afw name
  (`~.planes.LEGACY_PLANE_NAMES`).
- ``VisitImage.psf`` (a ``psfs.PointSpreadFunction``; it raises the stored
  ``ArchiveReadError`` when the PSF could not be read) and
  ``PointSpreadFunction.compute_kernel_image(x=, y=)`` (``psfs/_base.py``):
  an `~lsst.images.Image` centred on its pixel ``(0, 0)`` in the image's own
  coordinates.
- ``MaskedImage.sky_projection`` (``_transforms/_sky_projection.py``):
  ``pixel_to_sky(x=, y=)`` -> `astropy.coordinates.SkyCoord` and
  ``sky_to_pixel(SkyCoord)`` -> ``XY``, in pixel coordinates that include the
  bounding-box start (the engine's PARENT convention).
- ``VisitImage.photometric_scaling`` (a ``fields.BaseField`` with units,
  called as ``field(x=, y=)``; ``fields/_base.py``): multiplies post-ISR
  image units into calibrated units.  Images already in flux-density units
  (DP1 ``visit_image`` pixels are nJy) need no scaling.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..engine import InputError
from .inputs import ExposureInputs, unit_string
from .planes import readonly_plane, with_legacy_names
from .psf import centred_odd_stamp

__all__ = ["read_mask_planes", "visit_image_inputs"]


def read_mask_planes(mask) -> dict[str, np.ndarray]:
    """The planes of an `lsst.images.Mask` as boolean images, under both names.

    Each plane of ``mask.schema`` (skipping `None` placeholders) is read
    once with ``Mask.get(name)``; where lsst.images renamed an afw plane the
    afw name refers to the same array (``SAT`` is ``SATURATED``), unless the
    schema itself has a plane of that name.

    Returns
    -------
    planes : `dict` [`str`, `numpy.ndarray` [`bool`]]
        Plane name -> read-only boolean image, in schema order, then the
        afw names.
    """
    planes = {
        plane.name: readonly_plane(mask.get(plane.name))
        for plane in mask.schema
        if plane is not None
    }
    return with_legacy_names(planes)


def _psf_callable(visit_image) -> Callable | None:
    """``psf(x, y)`` from ``visit_image.psf``, or `None` when there is none."""
    try:
        model = visit_image.psf
    except AttributeError:  # a plain MaskedImage has no PSF
        return None
    except Exception as err:  # VisitImage.psf re-raises the ArchiveReadError it stored
        message = f"The VisitImage's PSF could not be read: {err}"

        def unreadable(x, y, _message=message):
            raise InputError(_message)

        return unreadable
    if model is None:
        return None

    def psf_at(x, y, _model=model):
        kernel = _model.compute_kernel_image(x=float(x), y=float(y))
        start = kernel.bbox.start
        return centred_odd_stamp(kernel.array, start.x, start.y)

    return psf_at


def _projection_callables(projection) -> tuple[Callable, Callable]:
    """Vectorised PARENT pixel <-> ICRS degrees functions from a ``SkyProjection``."""

    def pixel_to_sky(x, y, _proj=projection):
        x, y = np.broadcast_arrays(np.asarray(x, dtype=float), np.asarray(y, dtype=float))
        if x.size == 0:
            return np.empty(x.shape), np.empty(x.shape)
        sky = _proj.pixel_to_sky(x=x, y=y)
        return np.asarray(sky.ra.deg, dtype=float), np.asarray(sky.dec.deg, dtype=float)

    def sky_to_pixel(ra, dec, _proj=projection):
        from astropy.coordinates import SkyCoord

        ra, dec = np.broadcast_arrays(np.asarray(ra, dtype=float), np.asarray(dec, dtype=float))
        if ra.size == 0:
            return np.empty(ra.shape), np.empty(ra.shape)
        xy = _proj.sky_to_pixel(SkyCoord(ra=ra, dec=dec, unit="deg", frame="icrs"))
        return np.asarray(xy.x, dtype=float), np.asarray(xy.y, dtype=float)

    return pixel_to_sky, sky_to_pixel


def _njy_per_unit(visit_image) -> float | None:
    """nJy per image unit, from the image unit and ``photometric_scaling``.

    - Image already in a flux-density unit (``nJy`` for a DP1
      ``visit_image``): the unit conversion factor to nJy.
    - Otherwise, with a ``photometric_scaling`` whose unit times the image
      unit is a flux density (e.g. ``electron`` x ``nJy / electron``): the
      scaling averaged over a 5 x 5 grid on the image (exactly its value
      when it is constant) times that unit conversion.  A spatially varying
      scaling is reduced to this mean, as afw's
      ``PhotoCalib.getCalibrationMean`` does.
    - Otherwise (no unit, or no path to nJy): `None`.
    """
    import astropy.units as u

    unit = visit_image.unit
    if unit is None:
        return None
    try:
        return float(unit.to(u.nJy))
    except u.UnitsError:
        pass
    scaling = getattr(visit_image, "photometric_scaling", None)
    if scaling is None or scaling.unit is None:
        return None
    try:
        factor = float((unit * scaling.unit).to(u.nJy))
    except u.UnitsError:
        return None
    bbox = visit_image.bbox
    n = 1 if scaling.is_constant else 5
    gx, gy = np.meshgrid(
        bbox.x.linspace(n) if n > 1 else np.array([bbox.x.center]),
        bbox.y.linspace(n) if n > 1 else np.array([bbox.y.center]),
    )
    values = np.asarray(scaling(x=gx.ravel(), y=gy.ravel()), dtype=float)
    return float(np.mean(values)) * factor


def visit_image_inputs(visit_image) -> ExposureInputs:
    """`ExposureInputs` from an `lsst.images.VisitImage`.

    Any `lsst.images.MaskedImage` is accepted (a `VisitImage`, a
    ``DifferenceImage``, or a plain masked image with a sky projection);
    the PSF and photometric scaling are used when the object has them.

    Parameters
    ----------
    visit_image : `lsst.images.VisitImage` or `lsst.images.MaskedImage`
        The image.

    Returns
    -------
    inputs : `~lsst.meas.crowdsource.io.inputs.ExposureInputs`
        - ``image``, ``variance``: ``visit_image.image.array``,
          ``visit_image.variance.array`` (views);
        - ``mask_planes``: `read_mask_planes` of ``visit_image.mask``
          (lsst.images and afw plane names);
        - ``xy0``: ``visit_image.bbox.start`` as ``(x, y)``;
        - ``psf``: ``psf(x, y)`` from
          ``visit_image.psf.compute_kernel_image(x=x, y=y)`` as a square,
          odd, centred stamp, or `None` without a PSF (an unreadable PSF
          raises `~lsst.meas.crowdsource.engine.InputError` when first
          evaluated);
        - ``pixel_to_sky`` / ``sky_to_pixel``: through
          ``visit_image.sky_projection`` (`None` without one);
        - ``njy_per_count``: see `_njy_per_unit`;
        - ``unit``: ``visit_image.unit`` as a string (``"nJy"`` for a DP1
          ``visit_image``; ``"count"`` for a masked image without a unit).

    Raises
    ------
    TypeError
        If ``visit_image`` is not an `lsst.images.MaskedImage`.
    """
    from lsst.images import MaskedImage

    if not isinstance(visit_image, MaskedImage):
        raise TypeError(
            f"Expected an lsst.images.VisitImage (or another lsst.images.MaskedImage); "
            f"got {type(visit_image).__module__}.{type(visit_image).__qualname__}."
        )
    image = visit_image.image.array
    variance = visit_image.variance.array
    start = visit_image.bbox.start
    projection = visit_image.sky_projection
    pixel_to_sky, sky_to_pixel = (
        (None, None) if projection is None else _projection_callables(projection)
    )
    return ExposureInputs(
        image=image,
        variance=variance,
        mask_planes=read_mask_planes(visit_image.mask),
        xy0=(int(start.x), int(start.y)),
        psf=_psf_callable(visit_image),
        pixel_to_sky=pixel_to_sky,
        sky_to_pixel=sky_to_pixel,
        njy_per_count=_njy_per_unit(visit_image),
        unit=unit_string(visit_image.unit),
    )
