"""Simulated fields as `lsst.images.VisitImage` objects: DP1-style ``visit_image`` inputs.

A DP1 ``visit_image`` is an `lsst.images.VisitImage`: pixels in nJy, a
variance plane in nJy², a mask with lsst.images' plane names, a sky
projection, a photometric scaling (nJy per electron), a PSF model (Piff for
DP1), a detector and an observation summary.  `make_visit_image` builds one
from a `~lsst.meas.crowdsource.testing.simulate.SimulatedField`, so the
pipelines can be run on what Rubin users hold without downloading data.

- `camera_frames` and `simulated_detector` make the camera geometry a
  `VisitImage` requires.  lsst.images reads camera geometry only from
  storage or from afw, so the frame set is written in the AST native
  encoding with `starlink.Ast` (which lsst.images itself uses when
  astshim is absent) and read back through lsst.images' public
  ``CameraFrameSetSerializationModel``.
- `gaussian_psf` is lsst.images' ``GaussianPointSpreadFunction`` with the
  field's nominal FWHM; `fit_piff_psf` fits a real ``piff.SimplePSF`` (a
  pixel-grid model with a polynomial interpolation across the image) to the
  field's bright isolated stars, so the model is Piff's estimate, not the
  simulator's PSF, and wraps it as lsst.images' ``PiffWrapper`` (what DP1
  ``visit_image`` PSFs are read as).

Needs lsst.images, starlink-pyast, astro_metadata_translator (Python 3.12+
installs) and, for `fit_piff_psf`, piff and galsim.
"""

from __future__ import annotations

__all__ = [
    "PIXEL_SIZE_MM",
    "PLATE_SCALE",
    "camera_frames",
    "fit_piff_psf",
    "gaussian_psf",
    "make_visit_image",
    "simulated_detector",
]

from collections.abc import Mapping

import astropy.units as u
import numpy as np
from astropy.wcs import WCS

from .simulate import SimulatedField

PIXEL_SIZE_MM = 0.01
"""Pixel size of the simulated detectors in mm (LSSTCam's 10 µm)."""

PLATE_SCALE = 20.0
"""Plate scale of the simulated camera in arcsec per mm (0.2 arcsec per 10 µm pixel)."""

_FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))


def camera_frames(instrument: str, detectors: Mapping[int, tuple[int, int]]):
    """The coordinate systems of a simple camera, as lsst.images sees them.

    Parameters
    ----------
    instrument : `str`
        Instrument (butler dimension) name.
    detectors : mapping [`int`, `tuple` [`int`, `int`]]
        Detector ID -> ``(width, height)`` in pixels.  Detectors sit side by
        side along the focal plane's x axis, in ID order, 10 pixels apart.

    Returns
    -------
    frames : `lsst.images.cameras.CameraFrameSet`
        Frames ``FOCAL_PLANE`` (mm), ``FIELD_ANGLE`` (rad, `PLATE_SCALE`) and
        one ``DETECTOR_<id>`` per detector, whose bounds are its pixels.
    """
    import starlink.Ast as Ast

    from lsst.images.cameras import CameraFrameSetSerializationModel

    focal_plane = Ast.Frame(2, "Ident=FOCAL_PLANE,Domain=FOCAL_PLANE,Unit(1)=mm,Unit(2)=mm")
    frame_set = Ast.FrameSet(focal_plane)
    radians_per_mm = float((PLATE_SCALE * u.arcsec).to_value(u.rad))
    field_angle = Ast.Frame(2, "Ident=FIELD_ANGLE,Domain=FIELD_ANGLE,Unit(1)=rad,Unit(2)=rad")
    frame_set.addframe(Ast.BASE, Ast.ZoomMap(2, radians_per_mm), field_angle)
    start = 0.0
    for detector in sorted(detectors):
        width, height = (int(n) for n in detectors[detector])
        pixels = Ast.Frame(
            2,
            f"Ident=DETECTOR_{detector},Domain=DETECTOR_{detector},"
            f"Bottom(1)=0,Top(1)={width},Bottom(2)=0,Top(2)={height}",
        )
        # focal plane (mm) -> pixels: scale to pixels, then shift this detector's origin.
        to_pixels = Ast.CmpMap(Ast.ZoomMap(2, 1.0 / PIXEL_SIZE_MM), Ast.ShiftMap([-start, 0.0]))
        frame_set.addframe(Ast.BASE, to_pixels, pixels)
        start += width + 10
    lines: list[str] = []

    class _Sink:
        def astsink(self, line: str) -> None:
            lines.append(line)

    Ast.Channel(None, _Sink()).write(frame_set)
    return CameraFrameSetSerializationModel(
        instrument=instrument, ast="\n".join(lines)
    ).deserialize(None)


def simulated_detector(frames, detector: int, visit: int | None = None):
    """An `lsst.images.cameras.Detector` of the camera made by `camera_frames`.

    Parameters
    ----------
    frames : `lsst.images.cameras.CameraFrameSet`
        The camera's frames.
    detector : `int`
        Detector ID (one of ``frames``' detectors).
    visit : `int`, optional
        Visit whose geometry this is.

    Returns
    -------
    detector : `lsst.images.cameras.Detector`
        A science detector named ``"SIM_<id>"`` without amplifiers.
    """
    from lsst.images.cameras import Detector, DetectorAttributes, DetectorType, Orientation

    bbox = frames.detector(detector).bbox
    attributes = DetectorAttributes(
        name=f"SIM_{detector}",
        id=int(detector),
        type=DetectorType.SCIENCE,
        serial=f"SIM-{detector:04d}",
        bbox=bbox,
        orientation=Orientation(focal_plane_x=0.0, focal_plane_y=0.0, focal_plane_z=0.0),
        pixel_size=PIXEL_SIZE_MM,
        physical_type="SIM",
    )
    return Detector(attributes, [], frames, visit=visit)


def _bbox(field: SimulatedField):
    from lsst.images import Box

    ny, nx = field.shape
    x0, y0 = field.xy0
    return Box.factory[y0 : y0 + ny, x0 : x0 + nx]


def gaussian_psf(field: SimulatedField, stamp_size: int = 25):
    """lsst.images' Gaussian PSF with the field's nominal FWHM (``meta["fwhm"]``).

    Returns
    -------
    psf : `lsst.images.psfs.GaussianPointSpreadFunction`
    """
    from lsst.images.psfs import GaussianPointSpreadFunction

    sigma = float(field.meta["fwhm"]) / _FWHM_PER_SIGMA
    return GaussianPointSpreadFunction(sigma, bounds=_bbox(field), stamp_size=stamp_size)


def _isolated_bright_stars(field: SimulatedField, snr_min: float, radius: int) -> np.ndarray:
    """Indices of truth stars fit for a PSF model: bright, unsaturated, isolated, inside."""
    truth = field.truth
    x, y = np.asarray(truth["x"], float), np.asarray(truth["y"], float)
    flux = np.asarray(truth["flux"], float)
    ny, nx = field.shape
    x0, y0 = field.xy0
    inside = (
        (x - radius >= x0) & (x + radius < x0 + nx) & (y - radius >= y0) & (y + radius < y0 + ny)
    )
    candidates = np.flatnonzero(
        inside & (np.asarray(truth["snr"]) >= snr_min) & ~np.asarray(truth["saturated"], bool)
    )
    keep = []
    for i in candidates:
        near = np.hypot(x - x[i], y - y[i]) < radius
        near[i] = False
        if not np.any(flux[near] > 0.1 * flux[i]):
            keep.append(i)
    return np.asarray(keep, dtype=int)


def fit_piff_psf(
    field: SimulatedField,
    *,
    snr_min: float = 50.0,
    stamp_radius: int = 9,
    model_size: int = 17,
    order: int = 1,
    stamp_size: int = 25,
    min_stars: int = 10,
):
    """Fit a Piff PSF to the field's bright isolated stars; wrap it for lsst.images.

    The stars are the truth stars with S/N of at least ``snr_min``,
    unsaturated, with no neighbour brighter than 10% of them within
    ``stamp_radius`` pixels; their ``2 stamp_radius + 1`` stamps of the
    image minus the true sky, weighted by the inverse variance (masked pixels
    get zero weight), are fit by a ``piff.SimplePSF`` of a ``PixelGrid``
    model (``model_size`` pixels at the pixel scale) and a ``BasisPolynomial``
    of ``order`` across the image.  Piff's image coordinates are the field's
    PARENT pixel coordinates.

    Returns
    -------
    psf : `lsst.images.psfs.PiffWrapper`
        The fitted model, drawing ``stamp_size`` stamps.

    Raises
    ------
    ValueError
        If fewer than ``min_stars`` stars qualify.
    """
    import galsim
    import piff

    from lsst.images.psfs import PiffWrapper

    chosen = _isolated_bright_stars(field, snr_min, stamp_radius)
    if len(chosen) < min_stars:
        raise ValueError(
            f"only {len(chosen)} isolated stars with S/N >= {snr_min} to fit a Piff PSF; "
            f"need {min_stars} (simulate a denser or deeper field)"
        )
    x0, y0 = field.xy0
    signal = galsim.Image(
        np.ascontiguousarray(field.image - field.sky, dtype=float), xmin=x0, ymin=y0, scale=1.0
    )
    weight = np.where(field.mask == 0, 1.0 / np.asarray(field.variance, dtype=float), 0.0)
    weight = galsim.Image(np.ascontiguousarray(weight), xmin=x0, ymin=y0, scale=1.0)
    wcs = galsim.PixelScale(1.0)
    stars = []
    for x, y in zip(field.truth["x"][chosen], field.truth["y"][chosen]):
        ix, iy = int(round(x)), int(round(y))
        bounds = galsim.BoundsI(
            ix - stamp_radius, ix + stamp_radius, iy - stamp_radius, iy + stamp_radius
        )
        stars.append(
            piff.Star.makeTarget(
                x=float(x),
                y=float(y),
                wcs=wcs,
                image=signal[bounds].copy(),
                weight=weight[bounds].copy(),
            )
        )
    psf = piff.SimplePSF(piff.PixelGrid(scale=1.0, size=model_size), piff.BasisPolynomial(order))
    psf.fit(stars, {0: wcs}, None)
    return PiffWrapper(psf, bounds=_bbox(field), stamp_size=stamp_size)


def make_visit_image(
    field: SimulatedField,
    wcs: WCS,
    *,
    instrument: str,
    visit: int,
    detector: int,
    psf,
    njy_per_count: float = 2.5,
    band: str = "r",
    physical_filter: str | None = None,
    frames=None,
):
    """A `lsst.images.VisitImage` holding a simulated field, DP1-style.

    Parameters
    ----------
    field : `~lsst.meas.crowdsource.testing.simulate.SimulatedField`
        The simulation (image in counts).
    wcs : `astropy.wcs.WCS`
        Celestial WCS of the field's array pixels (0-based, as
        `~lsst.meas.crowdsource.testing.butler.register_visit` returns).
    instrument : `str`
        Instrument name.
    visit, detector : `int`
        The data ID.
    psf : `lsst.images.psfs.PointSpreadFunction`
        The PSF model (`gaussian_psf`, `fit_piff_psf`).
    njy_per_count : `float`, optional
        Calibration: the pixels are ``field.image * njy_per_count`` nJy (the
        variance scaled by its square), and the photometric scaling is
        ``njy_per_count / field.gain`` nJy per electron.
    band, physical_filter : `str`, optional
        Filter names (``physical_filter`` defaults to
        ``"<instrument>-<band>"``, as ``register_visit`` names it).
    frames : `lsst.images.cameras.CameraFrameSet`, optional
        Camera geometry holding ``detector``; by default a one-detector
        camera of the field's size (`camera_frames`).

    Returns
    -------
    visit_image : `lsst.images.VisitImage`
        Image, variance and mask (the field's planes under lsst.images'
        names: ``SAT`` -> ``SATURATED``, ...; planes lsst.images' visit-image
        schema lacks are dropped), sky projection, photometric scaling, PSF,
        detector and observation info.
    """
    from astro_metadata_translator import ObservationInfo

    from lsst.images import (
        Image,
        MaskSchema,
        SkyProjection,
        VisitImage,
        get_legacy_visit_image_mask_planes,
    )
    from lsst.images.fields import ChebyshevField

    bbox = _bbox(field)
    ny, nx = field.shape
    if frames is None:
        frames = camera_frames(instrument, {detector: (nx, ny)})
    x0, y0 = field.xy0
    projection = SkyProjection.from_fits_wcs(
        wcs, frames.detector(detector, visit=visit), pixel_bounds=bbox, x0=x0, y0=y0
    )
    scale = float(njy_per_count)
    image = Image(
        (field.image * scale).astype(np.float32), bbox=bbox, unit=u.nJy, sky_projection=projection
    )
    variance = Image((field.variance * scale**2).astype(np.float32), bbox=bbox, unit=u.nJy**2)
    planes = get_legacy_visit_image_mask_planes()
    physical_filter = physical_filter or f"{instrument}-{band}"
    visit_image = VisitImage(
        image,
        variance=variance,
        mask_schema=MaskSchema(list(planes.values())),
        obs_info=ObservationInfo.makeObservationInfo(
            instrument=instrument, physical_filter=physical_filter, detector_num=int(detector)
        ),
        photometric_scaling=ChebyshevField(
            bbox, np.array([[scale / field.gain]]), unit=u.nJy / u.electron
        ),
        psf=psf,
        detector=simulated_detector(frames, detector, visit),
        band=band,
    )
    for name, bit in field.mask_planes.items():
        if name in planes:
            visit_image.mask.set(planes[name].name, (field.mask & (1 << bit)) != 0)
    return visit_image
