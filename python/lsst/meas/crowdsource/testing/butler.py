"""Fake-instrument butler records: what an obs package would register, for tests and the demo.

`register_visit` inserts the dimension records that a quantum graph over
``(instrument, visit, detector)`` needs when there is no ``lsst.obs.*``
package: instrument, physical_filter (hence band), detector, day_obs, visit
and visit_detector_region (with `lsst.sphgeom` regions).  `simple_detector_wcs`
and `detector_region` give each detector a TAN WCS on a grid and its sky
region.
"""

from __future__ import annotations

__all__ = ["detector_region", "register_visit", "simple_detector_wcs"]

import datetime
import math
from collections.abc import Mapping, Sequence

import astropy.units as u
import numpy as np
from astropy.time import Time
from astropy.wcs import WCS

from lsst.daf.butler import Butler, Timespan
from lsst.sphgeom import ConvexPolygon, LonLat, UnitVector3d


def simple_detector_wcs(
    ra: float,
    dec: float,
    detector_size: tuple[int, int],
    pixel_scale: float,
    offset: tuple[float, float] = (0.0, 0.0),
) -> WCS:
    """Return a TAN WCS for a detector of a simple, undistorted focal plane.

    Parameters
    ----------
    ra, dec : `float`
        Boresight (tangent point) in degrees.
    detector_size : `tuple` [`int`, `int`]
        Detector ``(width, height)`` in pixels (afw ``Extent2I`` order).
    pixel_scale : `float`
        Pixel scale in arcsec; north is up (+y) and east left (-x).
    offset : `tuple` [`float`, `float`], optional
        Position ``(x, y)`` of the boresight in this detector's pixel
        coordinates (0-based); the default puts it on pixel (0, 0).

    Returns
    -------
    wcs : `astropy.wcs.WCS`
        The WCS, with ``pixel_shape`` set to ``detector_size``.

    Raises
    ------
    ValueError
        Raised for a non-positive size or scale or a declination outside
        [-90, 90].
    """
    width, height = _check_size(detector_size)
    if not (math.isfinite(pixel_scale) and pixel_scale > 0):
        raise ValueError(f"pixel_scale must be > 0 arcsec; got {pixel_scale}")
    if not -90.0 <= dec <= 90.0:
        raise ValueError(f"dec must be in [-90, 90] degrees; got {dec}")
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.crval = [ra % 360.0, dec]
    wcs.wcs.crpix = [offset[0] + 1.0, offset[1] + 1.0]  # FITS pixels are 1-based
    scale = pixel_scale / 3600.0
    wcs.wcs.cd = [[-scale, 0.0], [0.0, scale]]
    wcs.wcs.radesys = "ICRS"
    wcs.pixel_shape = (width, height)
    return wcs


def detector_region(wcs: WCS, detector_size: tuple[int, int] | None = None) -> ConvexPolygon:
    """Return the sky polygon covered by a detector.

    Parameters
    ----------
    wcs : `astropy.wcs.WCS`
        Celestial WCS of the detector's array pixels.
    detector_size : `tuple` [`int`, `int`], optional
        ``(width, height)`` in pixels; defaults to ``wcs.pixel_shape``.

    Returns
    -------
    region : `lsst.sphgeom.ConvexPolygon`
        Convex hull of the four outer pixel corners.

    Raises
    ------
    ValueError
        Raised if the size is unknown or the corners do not map to the sky.
    """
    size = detector_size if detector_size is not None else wcs.pixel_shape
    if size is None:
        raise ValueError("detector size unknown: pass detector_size or set wcs.pixel_shape")
    return ConvexPolygon.convexHull(_corner_vectors(wcs, _check_size(size)))


def register_visit(
    butler: Butler,
    instrument: str = "SimCam",
    visit: int = 1,
    detectors: Sequence[int] = (0,),
    *,
    band: str = "r",
    physical_filter: str | None = None,
    day_obs: int = 20250101,
    ra: float = 0.0,
    dec: float = 0.0,
    detector_size: tuple[int, int] = (2048, 2048),
    pixel_scale: float = 0.2,
    detector_wcs: Mapping[int, WCS] | None = None,
    exposure_time: float = 30.0,
    detector_max: int = 1000,
    visit_max: int = 2**31 - 1,
) -> dict[int, WCS]:
    """Insert the dimension records of one visit, without an obs package.

    Parameters
    ----------
    butler : `lsst.daf.butler.Butler`
        Writeable butler.
    instrument : `str`, optional
        Instrument name.
    visit : `int`, optional
        Visit ID (also its ``seq_num``; its name is ``"<instrument>_<visit>"``).
    detectors : sequence of `int`, optional
        Detector IDs observed in this visit.
    band, physical_filter : `str`, optional
        Filter names; ``physical_filter`` defaults to
        ``"<instrument>-<band>"``.
    day_obs : `int`, optional
        Observing day as ``YYYYMMDD``.
    ra, dec : `float`, optional
        Boresight in degrees (used unless ``detector_wcs`` is given).
    detector_size : `tuple` [`int`, `int`], optional
        Detector ``(width, height)`` in pixels (for a ``detector_wcs``
        entry only when its ``pixel_shape`` is not set).
    pixel_scale : `float`, optional
        Pixel scale in arcsec (used unless ``detector_wcs`` is given).
    detector_wcs : mapping [`int`, `astropy.wcs.WCS`], optional
        WCS of each detector's array pixels (e.g. of the calexps to be
        stored).  Without it the detectors are laid out edge to edge in a
        near-square grid centred on ``(ra, dec)`` with
        `simple_detector_wcs`.
    exposure_time : `float`, optional
        Exposure time in seconds (sets the visit's timespan too).
    detector_max, visit_max : `int`, optional
        Instrument limits used to pack ``(visit, detector)`` into integer
        IDs; they must not change once data are written.

    Returns
    -------
    wcs : `dict` [`int`, `astropy.wcs.WCS`]
        The WCS used for each detector's region.

    Raises
    ------
    ValueError
        Raised for bad IDs, an invalid ``day_obs``, or a ``detector_wcs``
        that misses a detector.
    lsst.daf.butler.registry.ConflictingDefinitionError
        Raised if the instrument or physical filter exists with different
        values.

    Notes
    -----
    Calling it again with the same arguments changes nothing.  Detector,
    day_obs, visit and region records are updated in place if their values
    changed; the instrument and physical_filter records are never changed.
    """
    detectors = [int(d) for d in detectors]
    if not detectors:
        raise ValueError("detectors is empty")
    if len(set(detectors)) != len(detectors):
        raise ValueError(f"detectors has duplicates: {detectors}")
    if any(not 0 <= d < detector_max for d in detectors):
        raise ValueError(f"detector IDs must be in [0, {detector_max}); got {detectors}")
    if not 0 <= visit < visit_max:
        raise ValueError(f"visit must be in [0, {visit_max}); got {visit}")
    if not (math.isfinite(exposure_time) and exposure_time >= 0):
        raise ValueError(f"exposure_time must be >= 0 seconds; got {exposure_time}")
    physical_filter = physical_filter or f"{instrument}-{band}"
    try:
        date = datetime.datetime.strptime(str(day_obs), "%Y%m%d")
    except ValueError:
        raise ValueError(f"day_obs must be an integer YYYYMMDD; got {day_obs!r}") from None

    if detector_wcs is None:
        detector_wcs = _grid_layout(detectors, ra, dec, _check_size(detector_size), pixel_scale)
    else:
        missing = [d for d in detectors if d not in detector_wcs]
        if missing:
            raise ValueError(f"detector_wcs has no WCS for detector(s) {missing}")
        detector_wcs = {d: detector_wcs[d] for d in detectors}
    regions = {
        d: detector_region(w, w.pixel_shape if w.pixel_shape is not None else detector_size)
        for d, w in detector_wcs.items()
    }
    visit_region = ConvexPolygon.convexHull(
        [v for region in regions.values() for v in region.getVertices()]
    )

    # Rubin convention: day_obs D runs from D 12:00 UTC to D+1 12:00 UTC.
    day_start = Time(date + datetime.timedelta(hours=12), scale="utc")
    day_span = Timespan(day_start, day_start + 1 * u.day)
    visit_start = day_start + 12 * u.hour
    visit_span = Timespan(visit_start, visit_start + exposure_time * u.s)

    registry = butler.registry
    with butler.transaction():
        registry.syncDimensionData(
            "instrument",
            {
                "name": instrument,
                "detector_max": detector_max,
                "visit_max": visit_max,
                "exposure_max": visit_max,
            },
        )
        registry.syncDimensionData(
            "physical_filter", {"instrument": instrument, "name": physical_filter, "band": band}
        )
        for d in detectors:
            registry.syncDimensionData(
                "detector",
                {"instrument": instrument, "id": d, "full_name": f"D{d:03d}", "purpose": "SCIENCE"},
                update=True,
            )
        registry.syncDimensionData(
            "day_obs",
            {"instrument": instrument, "id": int(day_obs), "timespan": day_span},
            update=True,
        )
        registry.syncDimensionData(
            "visit",
            {
                "instrument": instrument,
                "id": visit,
                "name": f"{instrument}_{visit}",
                "physical_filter": physical_filter,
                "day_obs": int(day_obs),
                "seq_num": visit,
                "exposure_time": float(exposure_time),
                "observation_reason": "science",
                "region": visit_region,
                "timespan": visit_span,
            },
            update=True,
        )
        for d in detectors:
            registry.syncDimensionData(
                "visit_detector_region",
                {"instrument": instrument, "visit": visit, "detector": d, "region": regions[d]},
                update=True,
            )
    return dict(detector_wcs)


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    """Validate a ``(width, height)`` pair."""
    try:
        width, height = (int(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"detector size must be (width, height) integers; got {size!r}") from None
    if width <= 0 or height <= 0:
        raise ValueError(f"detector size must be positive; got {size!r}")
    return width, height


def _grid_layout(
    detectors: Sequence[int], ra: float, dec: float, size: tuple[int, int], pixel_scale: float
) -> dict[int, WCS]:
    """Lay detectors edge to edge in a near-square grid centred on (ra, dec)."""
    width, height = size
    n_col = math.ceil(math.sqrt(len(detectors)))
    n_row = math.ceil(len(detectors) / n_col)
    # Boresight at the centre of the mosaic, in mosaic pixel coordinates.
    centre_x = (n_col * width - 1) / 2.0
    centre_y = (n_row * height - 1) / 2.0
    result = {}
    for index, det in enumerate(detectors):
        col, row = index % n_col, index // n_col
        offset = (centre_x - col * width, centre_y - row * height)
        result[det] = simple_detector_wcs(ra, dec, size, pixel_scale, offset=offset)
    return result


def _corner_vectors(wcs: WCS, size: tuple[int, int]) -> list[UnitVector3d]:
    """Unit vectors of the outer corners of a detector's pixels."""
    width, height = size
    x = np.array([-0.5, width - 0.5, width - 0.5, -0.5])
    y = np.array([-0.5, -0.5, height - 0.5, height - 0.5])
    lon, lat = wcs.celestial.pixel_to_world_values(x, y)
    lon = np.asarray(lon, dtype=float)
    lat = np.asarray(lat, dtype=float)
    if not (np.all(np.isfinite(lon)) and np.all(np.isfinite(lat))):
        raise ValueError("detector corners do not map to the sky through this WCS")
    return [UnitVector3d(LonLat.fromDegrees(float(a), float(b))) for a, b in zip(lon, lat)]
