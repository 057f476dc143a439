"""The engine's entry point: validate the inputs, fit tiles, stitch the result.

`fit_image` turns the caller's arrays into one `ImageData` (validated
once), cuts it into overlapping tiles (`make_tiles`) that are
`ImageData.cutout` s of it, fits each with `fit_tile` (in this process or
in worker processes) and stitches their catalogues, models and PSFs
(`select_tile_sources`).

Contract
--------
- Positions enter (forced positions, a callable PSF's arguments) and leave
  (the catalogue) in PARENT coordinates; in between everything is in the
  image's array coordinates.  The conversion is `ImageData.to_array` /
  `ImageData.to_parent`, nowhere else.
- With forced positions the catalogue starts with one row per position,
  in input order (``forced_index`` = the row), followed by the sources
  found in the image.  A position off the image, or with a non-finite
  coordinate, is not fit: its row has ``off_image`` set and NaN fluxes,
  and for a non-finite position NaN ``x`` and ``y``.
- The result depends only on the inputs (and not on the number of
  processes).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .columns import ENGINE_COLUMNS, empty_columns, pixel_flag_columns
from .defects import NOISE_RATIO_WARN, Defects, find_defects, noise_ratio
from .errors import InputError
from .image import ImageData
from .loop import TileFit, fit_tile
from .params import FitParams
from .psf import PixelPsf, check_psf_stamp, psf_from_callable
from .psf_io import ParentFramePsf
from .sources import ForcedPositions, pad_rows
from .tiling import Tile, TiledPsf, home_tiles, make_tiles, select_tile_sources

__all__ = ["FitResult", "fit_image"]

_log = logging.getLogger(__name__)

PsfInput = PixelPsf | np.ndarray | Callable[[float, float], np.ndarray] | None


@dataclass
class FitResult:
    """Everything the fit produces.

    Attributes
    ----------
    columns : `dict` [`str`, `numpy.ndarray`]
        Per-source columns (see `ENGINE_COLUMNS`, plus ``mask_<PLANE>_any``
        and ``mask_<PLANE>_center`` for each flag plane); positions in
        PARENT coordinates.
    column_info : `dict` [`str`, `tuple`]
        ``(dtype, unit, description)`` of every column.
    model : `numpy.ndarray`
        Model of the image: all sources plus the sky.
    sky : `numpy.ndarray`
        The sky part of ``model``.
    psf : `PixelPsf` or `TiledPsf`
        Final PSF in array coordinates; `parent_psf` evaluates it at
        PARENT positions.
    history : `list` [`dict`]
        Per tile and pass: sources, new peaks, sky level, PSF, timing.
    xy0 : `tuple` [`int`, `int`]
        PARENT coordinates of the array's first pixel.
    n_tiles : `int`
        Number of tiles fit.
    defects : `Defects` or `None`
        The plateaus and steps left out of the fit (`None`: not looked for).
    noise_ratio : `float`
        The image's pixel-to-pixel scatter over what its variance says
        (`~lsst.meas.crowdsource.engine.defects.noise_ratio`; ~1 when the
        variance is right).
    """

    columns: dict[str, np.ndarray]
    column_info: dict[str, tuple[str, str, str]]
    model: np.ndarray
    sky: np.ndarray
    psf: PixelPsf | TiledPsf
    history: list[dict] = field(default_factory=list)
    xy0: tuple[int, int] = (0, 0)
    n_tiles: int = 1
    defects: Defects | None = None
    noise_ratio: float = float("nan")

    def __len__(self) -> int:
        return len(self.columns["x"])

    @property
    def parent_psf(self) -> ParentFramePsf:
        """The final PSF, evaluated at PARENT positions."""
        return ParentFramePsf(self.psf, self.xy0)


def _as_psf(psf: PsfInput, data: ImageData, order: int) -> PixelPsf | None:
    """Turn the caller's PSF into a `PixelPsf` in array coordinates."""
    if psf is None or isinstance(psf, PixelPsf):
        return psf
    if callable(psf):
        ny, nx = data.shape

        def local(x, y):
            return np.asarray(psf(*data.to_parent(x, y)), dtype=float)

        return psf_from_callable(local, (0, 0, nx - 1, ny - 1), order=order)
    return PixelPsf.from_stamp(check_psf_stamp(psf))


def _forced_positions(
    data: ImageData, forced_x: np.ndarray | None, forced_y: np.ndarray | None
) -> ForcedPositions | None:
    """The caller's PARENT forced positions in array coordinates (may be non-finite)."""
    if forced_x is None and forced_y is None:
        return None
    if forced_x is None or forced_y is None:
        raise InputError("forced_x and forced_y must be given together.")
    fx, fy = data.to_array(np.asarray(forced_x, dtype=float), np.asarray(forced_y, dtype=float))
    if fx.shape != fy.shape or fx.ndim != 1:
        raise InputError("forced_x and forced_y must be 1-D arrays of equal length.")
    return ForcedPositions(fx, fy, np.arange(len(fx)))


@dataclass
class _TileJob:
    """One tile's fit: everything a worker process needs."""

    tile: Tile
    data: ImageData  # the tile's cutout of the image
    psf: PixelPsf | None
    params: FitParams
    forced: ForcedPositions | None  # in the tile's array coordinates
    find_new: bool
    refine_forced: float

    @classmethod
    def make(cls, tile: Tile, image: ImageData, forced: ForcedPositions | None, **kw) -> _TileJob:
        """The job of ``tile`` of ``image``, with the forced positions in its region."""
        cut = image.cutout(tile.outer)
        if forced is not None:
            forced = forced.subset(np.nonzero(tile.in_outer(forced.x, forced.y))[0])
            forced = ForcedPositions(*cut.to_array(forced.x, forced.y), forced.index)
        return cls(tile, cut, forced=forced, **kw)

    def run(self) -> tuple[Tile, TileFit]:
        """Fit the tile; positions come back in the image's array coordinates."""
        res = fit_tile(
            self.data,
            self.psf,
            self.params,
            self.forced,
            self.find_new,
            self.refine_forced,
            log=logging.getLogger(__name__),
            label=self.tile.label,
        )
        cols = res.columns
        cols["x"], cols["y"] = self.data.to_parent(cols["x"], cols["y"])
        cols["x_iso"], cols["y_iso"] = self.data.to_parent(cols["x_iso"], cols["y_iso"])
        return self.tile, res


def _run_job(job: _TileJob) -> tuple[Tile, TileFit]:
    return job.run()


def _fit_tiles(
    jobs: list[_TileJob], n_processes: int, log: logging.Logger
) -> list[tuple[Tile, TileFit]]:
    """Run the jobs, in ``n_processes`` worker processes when there are several tiles."""
    results = []
    with contextlib.ExitStack() as stack:
        fits: Iterable[tuple[Tile, TileFit]]
        if n_processes > 1 and len(jobs) > 1:
            pool = stack.enter_context(ProcessPoolExecutor(max_workers=n_processes))
            fits = pool.map(_run_job, jobs)
        else:
            fits = map(_run_job, jobs)
        for k, (tile, res) in enumerate(fits):
            results.append((tile, res))
            if len(jobs) > 1:
                log.info(
                    "Finished %s(%d/%d): %d sources.",
                    tile.label,
                    k + 1,
                    len(jobs),
                    len(res.columns["x"]),
                )
    return results


def fit_image(
    image: np.ndarray,
    variance: np.ndarray | None = None,
    *,
    weight: np.ndarray | None = None,
    bad: np.ndarray | None = None,
    saturated: np.ndarray | None = None,
    flag_planes: Mapping[str, np.ndarray] | None = None,
    psf: PsfInput = None,
    params: FitParams | None = None,
    forced_x: np.ndarray | None = None,
    forced_y: np.ndarray | None = None,
    find_new: bool = True,
    refine_forced: float = 0.0,
    xy0: tuple[int, int] = (0, 0),
    log: logging.Logger | None = None,
) -> FitResult:
    """Crowded-field photometry of one image.

    Parameters
    ----------
    image : `numpy.ndarray`
        2-D image with its sky (do not subtract a background first; the
        fit models its own).  ``x`` is the column, ``y`` the row.
    variance, weight : `numpy.ndarray`
        Exactly one: per-pixel variance or inverse variance.
    bad : `numpy.ndarray` [`bool`], optional
        Pixels to ignore.
    saturated : `numpy.ndarray` [`bool`], optional
        Saturated pixels: ignored in the fit; saturated cores are found as
        sources and fit from their wings.
    flag_planes : `dict` [`str`, `numpy.ndarray` [`bool`]], optional
        Planes reported per source as ``mask_<name>_any`` (within the PSF
        core) and ``mask_<name>_center`` (central 3x3).
    psf : `PixelPsf`, `numpy.ndarray`, callable or `None`
        Initial PSF: a model, a centred odd stamp, or ``psf(x, y)``
        returning the stamp at PARENT position ``(x, y)``; `None` estimates
        it from the image.
    params : `FitParams`, optional
        Parameters of the fit.
    forced_x, forced_y : `numpy.ndarray`, optional
        PARENT positions to fit along with every source in the image.
        Positions off the image or not finite are not fit; they keep their
        row (``off_image``, NaN fluxes; NaN ``x``, ``y`` when not finite).
    find_new : `bool`
        Find sources in the image (forced mode may turn this off).
    refine_forced : `float`
        Largest distance forced positions may move (0: fixed).
    xy0 : `tuple` [`int`, `int`]
        PARENT coordinates of ``image[0, 0]``.
    log : `logging.Logger`, optional
        Progress messages.

    Returns
    -------
    result : `FitResult`

    Raises
    ------
    InputError
        For inputs that cannot be fit (see `ImageData.from_arrays` and
        `~lsst.meas.crowdsource.engine.psf.check_psf_stamp`), or forced
        positions that are not two 1-D arrays of equal length.
    """
    log = log or _log
    params = params or FitParams()
    params.validate()
    t0 = time.perf_counter()
    data = ImageData.from_arrays(image, variance, weight, bad, saturated, flag_planes, xy0)
    defects = _mask_defects(data, params, log)
    scatter = _check_noise(data, log)
    model_psf = _as_psf(psf, data, params.psf_order)
    forced = _forced_positions(data, forced_x, forced_y)
    tiles = make_tiles(
        data.shape,
        params.tile_size,
        params.tile_overlap,
        None if forced is None else (forced.x, forced.y),
        params.max_tile_targets,
    )
    home = None if forced is None else home_tiles(tiles, forced.x, forced.y)
    settings = dict(psf=model_psf, params=params, find_new=find_new, refine_forced=refine_forced)
    jobs = [_TileJob.make(t, data, forced, **settings) for t in tiles]
    n_plain = len(make_tiles(data.shape, params.tile_size, params.tile_overlap))
    log.info(
        "Fitting %dx%d image in %d tile(s)%s%s.",
        data.shape[1],
        data.shape[0],
        len(tiles),
        f" (cores with more than {params.max_tile_targets} forced targets split)"
        if len(tiles) > n_plain
        else "",
        f" with {params.n_processes} processes" if params.n_processes > 1 else "",
    )
    results = _fit_tiles(jobs, params.n_processes, log)
    columns, model, sky, psf_out, history = _stitch(results, data.shape, home, params.merge_radius)
    column_info = dict(ENGINE_COLUMNS)
    _add_pixel_flags(columns, column_info, data.flags, psf_out)
    if defects:
        touching, _ = _core_hits(defects.mask, columns["x"], columns["y"], psf_out)
        columns["flag_unfittable"] = touching
    if forced is not None:
        columns = _one_row_per_forced_position(columns, forced, home, log)
    columns["x"], columns["y"] = data.to_parent(columns["x"], columns["y"])
    columns["x_iso"], columns["y_iso"] = data.to_parent(columns["x_iso"], columns["y_iso"])
    log.info("Fit %d sources in %.1f s.", len(columns["x"]), time.perf_counter() - t0)
    return FitResult(
        columns,
        column_info,
        model + sky,
        sky,
        psf_out,
        history,
        data.xy0,
        len(tiles),
        defects,
        scatter,
    )


def _check_noise(data: ImageData, log: logging.Logger) -> float:
    """`noise_ratio`, with a warning when the variance and the pixel scatter disagree."""
    ratio = noise_ratio(data.image, data.weight)
    if np.isfinite(ratio) and not 1 / NOISE_RATIO_WARN <= ratio <= NOISE_RATIO_WARN:
        log.warning(
            "The image scatters %.3g times as much as its variance says: the variance "
            "is probably wrong (thresholds and errors assume it is right).",
            ratio,
        )
    return ratio


def _mask_defects(data: ImageData, params: FitParams, log: logging.Logger) -> Defects | None:
    """Find the plateaus and steps (`find_defects`) and give them zero weight, with a warning."""
    if not params.mask_defects:
        return None
    defects = find_defects(data.image, data.weight, params)
    if defects:
        data.weight[defects.mask | defects.clipped] = 0.0
        data.saturated = data.saturated | defects.clipped
        data.sky_regions = defects.sky_regions()
        log.warning(
            "Left out %s that no PSF can fit (an unmasked bad amplifier, offset or column?).",
            defects.describe(),
        )
    return defects


def _one_row_per_forced_position(
    columns: dict[str, np.ndarray],
    forced: ForcedPositions,
    home: np.ndarray,
    log: logging.Logger,
) -> dict[str, np.ndarray]:
    """Rows for the forced positions no tile fit (off the image, non-finite), then input order.

    Forced rows come first, ordered by ``forced_index``; the sources found
    in the image follow in their stitched order.
    """
    off = np.nonzero(home < 0)[0]
    if off.size:
        log.info(
            "%d forced position(s) are off the image or not finite; their fluxes are NaN.",
            off.size,
        )
        x, y = forced.x[off], forced.y[off]
        finite = np.isfinite(x) & np.isfinite(y)
        columns = pad_rows(
            columns,
            off.size,
            x=np.where(finite, x, np.nan),
            y=np.where(finite, y, np.nan),
            forced_index=forced.index[off],
            off_image=np.ones(off.size, bool),
        )
    order = np.argsort(
        np.where(columns["forced_index"] >= 0, columns["forced_index"], np.iinfo(np.int64).max),
        kind="stable",
    )
    return {k: v[order] for k, v in columns.items()}


def _stitch(
    results: list[tuple[Tile, TileFit]],
    shape: tuple[int, int],
    forced_home: np.ndarray | None,
    merge_radius: float,
) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray, PixelPsf | TiledPsf, list[dict]]:
    """One catalogue, model, sky and PSF from the tiles' fits (image array coordinates)."""
    tiles = [t for t, _ in results]
    fits = [r for _, r in results]
    model = np.zeros(shape)
    sky = np.zeros(shape)
    history = []
    for t, r in results:
        x0, y0, x1, y1 = t.core
        ox, oy = t.outer[0], t.outer[1]
        model[y0:y1, x0:x1] = r.model[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
        sky[y0:y1, x0:x1] = r.sky[y0 - oy : y1 - oy, x0 - ox : x1 - ox]
        history.extend(dict(h, tile=t.index) for h in r.history)
    keep = select_tile_sources(
        tiles,
        [r.columns["x"] for r in fits],
        [r.columns["y"] for r in fits],
        [r.columns["forced_index"] for r in fits],
        forced_home,
        max(merge_radius, 1.0),
    )
    columns = empty_columns()
    for name in columns:
        parts = [r.columns[name][k] for r, k in zip(fits, keep)]
        columns[name] = (
            np.concatenate(parts).astype(columns[name].dtype) if parts else columns[name]
        )
    psf = fits[0].psf if len(fits) == 1 else TiledPsf(tiles, [r.psf for r in fits])
    return columns, model, sky, psf, history


def _add_pixel_flags(
    columns: dict[str, np.ndarray],
    info: dict[str, tuple[str, str, str]],
    flag_planes: Mapping[str, np.ndarray],
    psf: PixelPsf | TiledPsf,
) -> None:
    """Add ``mask_<plane>_any`` (PSF-core disc) and ``_center`` (3x3) per flag plane."""
    if not flag_planes:
        return
    x = columns["x"]
    y = columns["y"]
    for name, plane in flag_planes.items():
        cols = pixel_flag_columns(name)
        any_name, center_name = list(cols)
        columns[any_name], columns[center_name] = _core_hits(plane, x, y, psf)
        info.update(cols)


def _core_hits(
    plane: np.ndarray, x: np.ndarray, y: np.ndarray, psf: PixelPsf | TiledPsf
) -> tuple[np.ndarray, np.ndarray]:
    """Per source: is ``plane`` set within its PSF core (ceil(FWHM) disc), in its central 3x3."""
    fwhm = psf.fwhm()
    r = max(1, int(np.ceil(fwhm if np.isfinite(fwhm) else 2.0)))
    off = np.arange(-r, r + 1)
    oy, ox = np.meshgrid(off, off, indexing="ij")
    disc = (ox**2 + oy**2) <= r * r
    center = (np.abs(ox) <= 1) & (np.abs(oy) <= 1)
    plane = np.asarray(plane, bool)
    ny, nx = plane.shape
    ix = np.round(x).astype(np.int64)[:, None, None] + ox[None]
    iy = np.round(y).astype(np.int64)[:, None, None] + oy[None]
    inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
    vals = np.where(inside, plane[np.clip(iy, 0, ny - 1), np.clip(ix, 0, nx - 1)], False)
    return (vals & disc[None]).any(axis=(1, 2)), (vals & center[None]).any(axis=(1, 2))
