"""The engine's entry point: validate inputs, fit tiles, stitch the result."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from .columns import ENGINE_COLUMNS, empty_columns, pixel_flag_columns
from .errors import InputError
from .fit import fit_tile
from .params import FitParams
from .psf import PixelPsf, check_psf_stamp, psf_from_callable
from .psf_io import ParentFramePsf
from .tiling import Tile, TiledPsf, make_tiles, select_tile_sources

__all__ = ["FitResult", "fit_image", "prepare_weight"]

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
    """

    columns: dict[str, np.ndarray]
    column_info: dict[str, tuple[str, str, str]]
    model: np.ndarray
    sky: np.ndarray
    psf: PixelPsf | TiledPsf
    history: list[dict] = field(default_factory=list)
    xy0: tuple[int, int] = (0, 0)
    n_tiles: int = 1

    def __len__(self) -> int:
        return len(self.columns["x"])

    @property
    def parent_psf(self) -> ParentFramePsf:
        """The final PSF, evaluated at PARENT positions."""
        return ParentFramePsf(self.psf, self.xy0)


def prepare_weight(
    image: np.ndarray,
    variance: np.ndarray | None,
    weight: np.ndarray | None,
    bad: np.ndarray | None,
    saturated: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validate the planes and build the inverse-variance weight.

    Handling of unusable pixels (documented behaviour, not errors):
    pixels whose image value is NaN/inf, whose variance is NaN, inf, zero
    or negative (or weight NaN/inf/negative), or that are flagged ``bad``
    or ``saturated`` get zero weight; their image values are never used.

    Raises
    ------
    InputError
        Not a 2-D image, mismatched shapes, neither or both of variance
        and weight, or no usable pixel at all.
    """
    image = np.asarray(image)
    if image.ndim != 2:
        raise InputError(f"The image must be a 2-D array; got {image.ndim} dimension(s).")
    if image.size == 0:
        raise InputError("The image is empty (zero pixels).")
    if not np.issubdtype(image.dtype, np.number) or np.iscomplexobj(image):
        raise InputError(f"The image must hold real numbers; got dtype {image.dtype}.")
    if (variance is None) == (weight is None):
        raise InputError("Give exactly one of variance or weight (inverse variance).")

    def check(name, arr, kind=None):
        arr = np.asarray(arr, dtype=kind) if kind else np.asarray(arr)
        if arr.shape != image.shape:
            raise InputError(
                f"The {name} plane has shape {arr.shape} but the image has shape {image.shape}."
            )
        return arr

    image = image.astype(np.float64, copy=False)
    with np.errstate(divide="ignore", invalid="ignore"):
        if variance is not None:
            var = check("variance", variance).astype(np.float64)
            w = np.where(np.isfinite(var) & (var > 0), 1.0 / var, 0.0)
        else:
            w = check("weight", weight).astype(np.float64)
            w = np.where(np.isfinite(w) & (w > 0), w, 0.0)
    w[~np.isfinite(image)] = 0.0
    if bad is not None:
        w[check("bad mask", bad, bool)] = 0.0
    sat = (
        np.zeros(image.shape, bool)
        if saturated is None
        else check("saturated mask", saturated, bool)
    )
    w[sat] = 0.0
    if not (w > 0).any():
        raise InputError(
            f"No usable pixels: all {image.size} pixels are masked, saturated, "
            "non-finite, or have non-positive variance."
        )
    image = np.where(np.isfinite(image), image, 0.0)
    return image, w, sat


def _as_psf(
    psf: PsfInput, shape: tuple[int, int], xy0: tuple[int, int], order: int
) -> PixelPsf | None:
    """Turn the caller's PSF into a `PixelPsf` in array coordinates."""
    if psf is None or isinstance(psf, PixelPsf):
        return psf
    if callable(psf):
        ny, nx = shape
        x0, y0 = xy0

        def local(x, y):
            return np.asarray(psf(x + x0, y + y0), dtype=float)

        return psf_from_callable(local, (0, 0, nx - 1, ny - 1), order=order)
    return PixelPsf.from_stamp(check_psf_stamp(psf))


def _fit_one(args):
    (tile, image, weight, sat, psf, params, fx, fy, fidx, find_new, refine) = args
    x0, y0, x1, y1 = tile.outer
    logger = logging.getLogger(__name__)
    res = fit_tile(
        image,
        weight,
        sat,
        psf,
        params,
        origin=(x0, y0),
        forced_x=None if fx is None else fx - x0,
        forced_y=None if fy is None else fy - y0,
        find_new=find_new,
        refine_forced=refine,
        psf_bbox=(x0, y0, x1 - 1, y1 - 1),
        log=logger,
        label=tile.label,
    )
    cols = res.columns
    for name in ("x", "y", "x_iso", "y_iso"):
        cols[name] = cols[name] + (x0 if name.startswith("x") else y0)
    fi = cols["forced_index"]
    if fidx is not None and len(fidx) and len(fi):  # a tile may hold no forced position
        cols["forced_index"] = np.where(fi >= 0, fidx[np.maximum(fi, 0)], -1)
    return tile, res


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
        For inputs that cannot be fit (see `prepare_weight` and
        `~lsst.meas.crowdsource.engine.psf.check_psf_stamp`).
    """
    log = log or _log
    params = params or FitParams()
    params.validate()
    t0 = time.perf_counter()
    image, w, sat = prepare_weight(image, variance, weight, bad, saturated)
    flag_planes = dict(flag_planes or {})
    for name, plane in flag_planes.items():
        if np.shape(plane) != image.shape:
            raise InputError(
                f"Mask plane {name!r} has shape {np.shape(plane)} but the image "
                f"has shape {image.shape}."
            )
    x0, y0 = int(xy0[0]), int(xy0[1])
    model_psf = _as_psf(psf, image.shape, (x0, y0), params.psf_order)

    fx = fy = None
    if forced_x is not None or forced_y is not None:
        if forced_x is None or forced_y is None:
            raise InputError("forced_x and forced_y must be given together.")
        fx = np.asarray(forced_x, dtype=float) - x0
        fy = np.asarray(forced_y, dtype=float) - y0
        if fx.shape != fy.shape or fx.ndim != 1:
            raise InputError("forced_x and forced_y must be 1-D arrays of equal length.")
        if not (np.all(np.isfinite(fx)) and np.all(np.isfinite(fy))):
            raise InputError("Forced positions must be finite.")

    tiles = make_tiles(image.shape, params.tile_size, params.tile_overlap)
    jobs = []
    forced_home = None
    if fx is not None:
        forced_home = np.full(len(fx), -1)
        for t in tiles:
            forced_home[t.in_core(fx, fy)] = t.index
    for t in tiles:
        tfx = tfy = tidx = None
        if fx is not None:
            ox0, oy0, ox1, oy1 = t.outer
            inside = (fx >= ox0 - 0.5) & (fx < ox1 - 0.5) & (fy >= oy0 - 0.5) & (fy < oy1 - 0.5)
            tidx = np.nonzero(inside)[0]
            tfx, tfy = fx[tidx], fy[tidx]
        # Only the tile's pixels go into the job (views in this process; a
        # worker process receives just those), so memory follows the tile.
        sub = (slice(t.outer[1], t.outer[3]), slice(t.outer[0], t.outer[2]))
        jobs.append(
            (
                t,
                image[sub],
                w[sub],
                sat[sub],
                model_psf,
                params,
                tfx,
                tfy,
                tidx,
                find_new,
                refine_forced,
            )
        )
    log.info(
        "Fitting %dx%d image in %d tile(s)%s.",
        image.shape[1],
        image.shape[0],
        len(tiles),
        f" with {params.n_processes} processes" if params.n_processes > 1 else "",
    )
    results: list[tuple[Tile, object]] = []
    if params.n_processes > 1 and len(tiles) > 1:
        with ProcessPoolExecutor(max_workers=params.n_processes) as pool:
            for k, (tile, res) in enumerate(pool.map(_fit_one, jobs)):
                results.append((tile, res))
                log.info(
                    "Finished %s(%d/%d): %d sources.",
                    tile.label,
                    k + 1,
                    len(tiles),
                    len(res.columns["x"]),
                )
    else:
        for k, job in enumerate(jobs):
            tile, res = _fit_one(job)
            results.append((tile, res))
            if len(tiles) > 1:
                log.info(
                    "Finished %s(%d/%d): %d sources.",
                    tile.label,
                    k + 1,
                    len(tiles),
                    len(res.columns["x"]),
                )

    columns, model, sky, psf_out, history = _stitch(
        results, image.shape, forced_home, params.merge_radius
    )
    column_info = dict(ENGINE_COLUMNS)
    _add_pixel_flags(columns, column_info, flag_planes, psf_out)
    if fx is not None:
        # Forced positions off the image are not fit but keep their row.
        off = np.nonzero(forced_home < 0)[0]
        if off.size:
            log.info("%d forced position(s) are off the image; their fluxes are NaN.", off.size)
            rows = empty_columns()
            for name, arr in rows.items():
                fill = np.nan if arr.dtype.kind == "f" else (-1 if arr.dtype.kind == "i" else False)
                rows[name] = np.full(off.size, fill, dtype=arr.dtype)
            rows["x"], rows["y"] = fx[off], fy[off]
            rows["forced_index"] = off.astype(np.int64)
            rows["off_image"] = np.ones(off.size, bool)
            for name in columns:
                if name not in rows:
                    rows[name] = np.zeros(off.size, dtype=columns[name].dtype)
            columns = {k: np.concatenate([v, rows[k]]) for k, v in columns.items()}
        # One row per input position, in input order.
        order = np.argsort(
            np.where(columns["forced_index"] >= 0, columns["forced_index"], np.iinfo(np.int64).max),
            kind="stable",
        )
        columns = {k: v[order] for k, v in columns.items()}
    for name in ("x", "y", "x_iso", "y_iso"):
        columns[name] = columns[name] + (x0 if name.startswith("x") else y0)
    log.info("Fit %d sources in %.1f s.", len(columns["x"]), time.perf_counter() - t0)
    return FitResult(columns, column_info, model + sky, sky, psf_out, history, (x0, y0), len(tiles))


def _stitch(results, shape, forced_home, merge_radius):
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


def _add_pixel_flags(columns, info, flag_planes, psf):
    if not flag_planes:
        return
    x = columns["x"]
    y = columns["y"]
    fwhm = psf.fwhm()
    r = max(1, int(np.ceil(fwhm if np.isfinite(fwhm) else 2.0)))
    off = np.arange(-r, r + 1)
    oy, ox = np.meshgrid(off, off, indexing="ij")
    disc = (ox**2 + oy**2) <= r * r
    center = (np.abs(ox) <= 1) & (np.abs(oy) <= 1)
    for name, plane in flag_planes.items():
        plane = np.asarray(plane, bool)
        ny, nx = plane.shape
        ix = np.round(x).astype(np.int64)[:, None, None] + ox[None]
        iy = np.round(y).astype(np.int64)[:, None, None] + oy[None]
        inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
        vals = np.where(inside, plane[np.clip(iy, 0, ny - 1), np.clip(ix, 0, nx - 1)], False)
        cols = pixel_flag_columns(name)
        any_name, center_name = list(cols)
        columns[any_name] = (vals & disc[None]).any(axis=(1, 2))
        columns[center_name] = (vals & center[None]).any(axis=(1, 2))
        info.update(cols)
