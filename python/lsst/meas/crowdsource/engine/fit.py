"""The crowdsource loop on one image (or one tile of a large image).

sky -> peaks -> new sources -> simultaneous fit (flux and position
derivatives) -> centroids on neighbour-subtracted stamps -> new PSF ->
repeat; then a final pass that is pure forced photometry (fluxes only) at
the final positions.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

from .linear import solve_scene
from .measure import StampMeasurements, measure_sources
from .params import FitParams
from .peaks import MatchedFilter, Peaks, find_peaks, saturated_sources, saturated_wings
from .psf import PixelPsf, gaussian_stamp
from .psf_fit import extend_with_wings, fit_psf, initial_psf, wing_profile
from .scene import choose_stamp_sizes, gather, render_scene, scene_image, wing_image
from .sky import boxed_sky, global_sky

__all__ = ["TileFit", "fit_tile", "resolve_stamp_sizes"]

_log = logging.getLogger(__name__)


def _odd(v: float) -> int:
    n = int(np.ceil(v))
    return n if n % 2 == 1 else n + 1


def resolve_stamp_sizes(params: FitParams, fwhm: float) -> list[int]:
    """Stamp sizes (small, core, ..., large) for a PSF of this FWHM."""
    defaults = [_odd(2 * 1.5 * fwhm + 1), max(_odd(2 * 2.5 * fwhm + 1), 15)]
    sizes = []
    for k, s in enumerate(params.stamp_sizes):
        if s == 0:
            s = defaults[min(k, len(defaults) - 1)]
        sizes.append(int(s))
    sizes = sorted(set(sizes))
    return sizes


def _core_size(params: FitParams, fwhm: float, psf_size: int) -> int:
    """Size of the PSF core that varies over the field and is refit."""
    core = params.psf_core_size or max(_odd(2 * 2.5 * fwhm + 1), 19)
    return min(core, psf_size)


@dataclass
class TileFit:
    """Result of `fit_tile`, in the pixel coordinates of the fitted array."""

    columns: dict[str, np.ndarray]
    model: np.ndarray
    sky: np.ndarray
    psf: PixelPsf
    history: list[dict] = field(default_factory=list)


class _Sources:
    """Per-source state carried between passes."""

    def __init__(self):
        self.x = np.zeros(0)
        self.y = np.zeros(0)
        self.flux = np.zeros(0)
        self.gx = np.zeros(0)
        self.gy = np.zeros(0)
        self.pass_found = np.zeros(0, dtype=np.int16)
        self.forced_index = np.zeros(0, dtype=np.int64)
        self.x_start = np.zeros(0)
        self.y_start = np.zeros(0)

    def __len__(self):
        return len(self.x)

    def add(self, x, y, flux, pass_found, forced_index=None):
        n = len(x)
        self.x = np.concatenate([self.x, x])
        self.y = np.concatenate([self.y, y])
        self.flux = np.concatenate([self.flux, flux])
        self.gx = np.concatenate([self.gx, np.zeros(n)])
        self.gy = np.concatenate([self.gy, np.zeros(n)])
        self.pass_found = np.concatenate([self.pass_found, np.full(n, pass_found, np.int16)])
        fi = np.full(n, -1, np.int64) if forced_index is None else forced_index
        self.forced_index = np.concatenate([self.forced_index, fi])
        self.x_start = np.concatenate([self.x_start, x])
        self.y_start = np.concatenate([self.y_start, y])

    def keep(self, mask):
        for name in (
            "x",
            "y",
            "flux",
            "gx",
            "gy",
            "pass_found",
            "forced_index",
            "x_start",
            "y_start",
        ):
            setattr(self, name, getattr(self, name)[mask])

    @property
    def forced(self):
        return self.forced_index >= 0


def _merge_close(src: _Sources, radius: float, forced_radius: float = 0.0) -> int:
    """Merge sources that converged onto each other.

    Free sources closer than ``radius``: the fainter joins the brighter.  A
    free source within ``forced_radius`` of a forced position joins the
    forced source: otherwise the two share the star's light arbitrarily and
    the forced flux comes out wrong.  Forced sources are never merged with
    each other.
    """
    reach = max(radius, forced_radius)
    if len(src) < 2 or reach <= 0:
        return 0
    pairs = cKDTree(np.column_stack([src.x, src.y])).query_pairs(reach, output_type="ndarray")
    if len(pairs) == 0:
        return 0
    dist = np.hypot(
        src.x[pairs[:, 0]] - src.x[pairs[:, 1]], src.y[pairs[:, 0]] - src.y[pairs[:, 1]]
    )
    with_forced = src.forced[pairs[:, 0]] | src.forced[pairs[:, 1]]
    pairs = pairs[np.where(with_forced, dist <= forced_radius, dist <= radius)]
    if len(pairs) == 0:
        return 0
    drop = np.zeros(len(src), dtype=bool)
    # Process brightest pairs first; a source already dropped is skipped.
    order = np.argsort(-np.maximum(src.flux[pairs[:, 0]], src.flux[pairs[:, 1]]))
    for i, j in pairs[order]:
        if drop[i] or drop[j]:
            continue
        if src.forced[i] and src.forced[j]:
            continue
        if src.forced[j] or (not src.forced[i] and src.flux[j] > src.flux[i]):
            i, j = j, i
        # i survives.
        src.flux[i] += max(src.flux[j], 0.0)
        drop[j] = True
    src.keep(~drop)
    return int(drop.sum())


def _sky_pixels(
    good: np.ndarray, model: np.ndarray, weight: np.ndarray, params: FitParams
) -> np.ndarray:
    """Pixels the boxed sky is measured on: usable and not under a bright model.

    Leaving out pixels where the model of the sources is brighter than
    ``sky_mask_nsigma`` times the pixel noise keeps imperfectly modelled
    wings of bright stars out of the sky (boxes with too few such pixels
    take their neighbours' value).
    """
    if params.sky_mask_nsigma <= 0:
        return good
    return good & (model * np.sqrt(weight) < params.sky_mask_nsigma)


def _sky_model(model, wings, src, groups, size_idx, sizes, psf, shape):
    """The model the sky is measured under: without forced sources of negative flux.

    Forced sources are never culled; at empty positions half of them fit
    negative fluxes.  Subtracting those from the image before the sky
    median raises the sky, which lowers every forced flux further (measured
    on 256x256, 0.02 stars/px with 200 forced positions on empty sky: the
    sky went up by 5 counts/px and their median flux from -1.1 to -2.1
    sigma).  Free sources with negative fluxes are culled anyway.
    """
    neg = src.forced & (np.nan_to_num(src.flux) < 0)
    if not neg.any():
        return model + wings
    nf = np.where(neg, np.nan_to_num(src.flux), 0.0)
    gx = np.where(neg, np.nan_to_num(src.gx), 0.0)
    gy = np.where(neg, np.nan_to_num(src.gy), 0.0)
    return (
        model
        + wings
        - scene_image(groups, nf, shape, gx, gy)
        - wing_image(src.x, src.y, nf, size_idx, sizes, psf, shape)
    )


def _pixel_noise(weight: np.ndarray) -> float:
    w = weight[weight > 0]
    return float(np.median(1.0 / np.sqrt(w))) if w.size else 1.0


def _sky_basis(shape) -> np.ndarray:
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    u = (xx.ravel() - 0.5 * (nx - 1)) / max(nx, 1)
    v = (yy.ravel() - 0.5 * (ny - 1)) / max(ny, 1)
    return np.column_stack([np.ones(nx * ny), u, v])


def _broadened(psf: PixelPsf, fwhm: float) -> PixelPsf:
    """The PSF convolved with a small Gaussian (spread_model's galaxy model)."""
    from scipy import signal

    kern = gaussian_stamp(_odd(2 * fwhm + 1), max(fwhm / 4.0, 0.3))
    coeffs = np.array([signal.fftconvolve(c, kern, mode="same") for c in psf.coeffs])
    return PixelPsf(coeffs, psf.order, psf.center, psf.scale, psf.core)


def fit_tile(
    image: np.ndarray,
    weight: np.ndarray,
    saturated: np.ndarray,
    psf: PixelPsf | None,
    params: FitParams,
    origin: tuple[int, int] = (0, 0),
    forced_x: np.ndarray | None = None,
    forced_y: np.ndarray | None = None,
    find_new: bool = True,
    refine_forced: float = 0.0,
    psf_bbox: tuple[float, float, float, float] | None = None,
    log: logging.Logger | None = None,
    label: str = "",
) -> TileFit:
    """Run the crowdsource loop on one array.

    Parameters
    ----------
    image : `numpy.ndarray`
        Image (sky included), finite wherever ``weight > 0``.
    weight : `numpy.ndarray`
        Inverse variance; 0 marks unusable pixels (bad or saturated).
    saturated : `numpy.ndarray` [`bool`]
        Saturated pixels (also given zero weight).
    psf : `PixelPsf` or `None`
        Initial PSF (in coordinates ``array + origin``); estimated from the
        image when `None`.
    params : `FitParams`
        Parameters of the fit.
    origin : `tuple` [`int`, `int`]
        Offset of this array in the PSF model's coordinates.
    forced_x, forced_y : `numpy.ndarray`, optional
        Positions (array coordinates) to fit at fixed positions along with
        everything else.
    find_new : `bool`
        Look for sources in the image (off: fit only the forced positions).
    refine_forced : `float`
        Largest distance (pixels) forced positions may move (0: fixed).
    psf_bbox : `tuple`, optional
        Region ``(x0, y0, x1, y1)`` (PSF coordinates) the PSF polynomial is
        normalised to; defaults to this array.
    log : `logging.Logger`, optional
        Where progress goes.
    label : `str`
        Prefix for log lines (e.g. the tile).
    """
    log = log or _log
    t_start = time.perf_counter()
    ny, nx = image.shape
    weight = np.where(saturated, 0.0, weight)
    good = weight > 0
    image = np.where(good, image, 0.0)
    if psf_bbox is None:
        psf_bbox = (origin[0], origin[1], origin[0] + nx - 1, origin[1] + ny - 1)

    large = max(params.stamp_sizes) if max(params.stamp_sizes) > 0 else 59
    if psf is None:
        psf = initial_psf(image, weight, saturated, large, params.initial_fwhm)
    fwhm = psf.fwhm()
    if not np.isfinite(fwhm) or fwhm <= 0:
        fwhm = 3.0
    sizes = resolve_stamp_sizes(params, fwhm)
    large = max(sizes)
    if psf.size < large:
        psf = PixelPsf(
            extend_with_wings(psf.coeffs, large), psf.order, psf.center, psf.scale, psf.core
        )
    core = _core_size(params, fwhm, psf.size)
    sized_for = fwhm  # the FWHM the stamp and core sizes were derived from
    noise = _pixel_noise(weight)
    sat_wings, sat_margin = None, None  # where saturated stars' wings are (for this FWHM)
    sky_basis = _sky_basis(image.shape) if params.fit_sky_terms else None

    src = _Sources()
    unfit = np.zeros(0, dtype=np.int64)
    if forced_x is not None and len(forced_x):
        fx_all, fy_all = np.asarray(forced_x, float), np.asarray(forced_y, float)
        # A forced position whose PSF core has (almost) no usable pixel has an
        # unconstrained flux that can run away and wreck the whole fit: it
        # is not fit and gets a NaN row instead.
        qf0 = _usable_fraction(fx_all, fy_all, psf, sizes[min(1, len(sizes) - 1)], weight, origin)
        fit_ok = qf0 >= params.forced_min_qf
        unfit = np.nonzero(~fit_ok)[0]
        keep = np.nonzero(fit_ok)[0]
        src.add(fx_all[keep], fy_all[keep], np.zeros(keep.size), -1, keep)
    model = np.zeros(image.shape)
    wings = np.zeros(image.shape)
    sky_model = np.zeros(image.shape)  # the sources the sky is measured under
    sky = np.full(image.shape, global_sky(image, good))
    history = []
    meas = StampMeasurements.allocate(0)
    psf_stars = 0

    for it in range(params.n_iter):
        t0 = time.perf_counter()
        # --- sky from the image minus the current model of the sources
        if it < params.n_coarse_sky:
            sky = np.full(image.shape, global_sky(image - sky_model, good))
        else:
            sky = boxed_sky(
                image - sky_model,
                _sky_pixels(good, sky_model, weight, params),
                params.sky_box,
                params.sky_smooth,
            )
        # --- new peaks in the residual
        n_new = 0
        if find_new:
            if params.saturated_exclusion > 0 and saturated.any() and sat_margin != sized_for:
                sat_margin = sized_for
                sat_wings = saturated_wings(saturated, params.saturated_exclusion * sized_for)
            kernel = psf.stamp(*psf.center, size=sizes[1] if len(sizes) > 1 else sizes[0])
            resid = image - sky - model - wings
            peaks = find_peaks(
                resid,
                weight,
                saturated,
                model,
                kernel,
                src.x,
                src.y,
                params,
                first_pass=(it == 0),
                fwhm=fwhm,
                wings_of_saturated=sat_wings,
            )
            if it == 0 and saturated.any():
                mf = MatchedFilter.compute(resid, weight, kernel, with_coverage=False)
                sat = saturated_sources(saturated, mf.flux)
                peaks = Peaks(
                    *(
                        np.concatenate([a, b])
                        for a, b in zip(
                            (peaks.x, peaks.y, peaks.flux, peaks.significance),
                            (sat.x, sat.y, sat.flux, sat.significance),
                        )
                    )
                )
            src.add(peaks.x, peaks.y, peaks.flux, it)
            n_new = len(peaks)
        n = len(src)
        if n == 0:
            history.append(
                dict(
                    iteration=it,
                    n_sources=0,
                    n_new=0,
                    sky=float(np.median(sky)),
                    seconds=time.perf_counter() - t0,
                )
            )
            log.info("%spass %d: no sources; sky %.3g", label, it, float(np.median(sky)))
            continue

        # --- simultaneous fit of fluxes and position derivatives
        size_idx = choose_stamp_sizes(src.flux, psf, sizes, noise, params.stamp_noise_fraction)
        groups = render_scene(src.x, src.y, size_idx, sizes, psf, image.shape, True, origin)
        lin = solve_scene(
            groups,
            n,
            image - sky - wings,
            weight,
            True,
            src.flux,
            src.gx,
            src.gy,
            sky_basis,
            params.cg_rtol,
            params.cg_maxiter,
            params.derivative_ridge,
            solver=params.solver,
        )
        src.flux, src.gx, src.gy = lin.flux, lin.gx, lin.gy
        model = scene_image(
            groups,
            np.nan_to_num(src.flux),
            image.shape,
            np.nan_to_num(src.gx),
            np.nan_to_num(src.gy),
        )
        if lin.sky_terms is not None:
            sky = sky + (sky_basis @ lin.sky_terms).reshape(image.shape)
        wings = wing_image(src.x, src.y, src.flux, size_idx, sizes, psf, image.shape)
        sky_model = _sky_model(model, wings, src, groups, size_idx, sizes, psf, image.shape)

        # --- centroids on neighbour-subtracted stamps
        resid = image - sky - model - wings
        meas = measure_sources(
            groups,
            n,
            np.nan_to_num(src.flux),
            np.nan_to_num(src.gx),
            np.nan_to_num(src.gy),
            resid,
            weight,
            model,
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            snr = src.flux / lin.flux_err
        sx = np.clip(np.nan_to_num(meas.shift_x), -params.max_shift, params.max_shift)
        sy = np.clip(np.nan_to_num(meas.shift_y), -params.max_shift, params.max_shift)
        still = ~(snr >= params.centroid_min_snr)
        sx[still] = 0.0
        sy[still] = 0.0
        forced = src.forced
        if refine_forced > 0:
            nx_ = src.x + sx
            ny_ = src.y + sy
            dx, dy = nx_ - src.x_start, ny_ - src.y_start
            r = np.hypot(dx, dy)
            scale = np.where(r > refine_forced, refine_forced / np.maximum(r, 1e-12), 1.0)
            sx = np.where(forced, src.x_start + dx * scale - src.x, sx)
            sy = np.where(forced, src.y_start + dy * scale - src.y, sy)
        else:
            sx[forced] = 0.0
            sy[forced] = 0.0

        # --- PSF from neighbour-subtracted stamps of good stars
        # From the first pass on, as in the seed: the first fit of the bright
        # stars already gives a better PSF than the start (an analytic guess,
        # or a stamp from the centre of the field).  Waiting a pass let the
        # next peak search add false companions around every bright star the
        # starting PSF did not fit (1024x1024, 0.02 stars/px, centre-stamp
        # start: 112 false sources within 8 px of S/N > 300 stars, 37 with
        # the refit from the first pass).
        if params.refit_psf and find_new:
            new_psf, psf_stars = _refit_psf(
                src,
                meas,
                snr,
                resid,
                weight,
                psf,
                params,
                core,
                image.shape,
                origin,
                psf_bbox,
                sx,
                sy,
            )
            if new_psf is not None:
                new_fwhm = new_psf.fwhm()
                if 0.5 * fwhm < new_fwhm < 2.0 * fwhm:
                    psf, fwhm = new_psf, new_fwhm
                    if abs(fwhm / sized_for - 1) > 0.1:
                        # Sizes derived from a poor starting PSF would stay
                        # wrong: a 5 px start on a 3.5 px field kept a 27 px
                        # core and came out 5% bright.
                        sizes = resolve_stamp_sizes(params, fwhm)
                        if psf.size < max(sizes):
                            psf = PixelPsf(
                                extend_with_wings(psf.coeffs, max(sizes)),
                                psf.order,
                                psf.center,
                                psf.scale,
                                psf.core,
                            )
                        core = _core_size(params, fwhm, psf.size)
                        sized_for = fwhm
                else:
                    log.warning(
                        "%spass %d: rejected a PSF refit with FWHM %.2f (was %.2f)",
                        label,
                        it,
                        new_fwhm,
                        fwhm,
                    )
        src.x = np.clip(src.x + sx, -0.5, nx - 0.5)
        src.y = np.clip(src.y + sy, -0.5, ny - 0.5)
        # The derivative terms were relative to the old positions.
        src.gx[:] = 0.0
        src.gy[:] = 0.0

        # --- cull insignificant free sources, merge converged duplicates
        with np.errstate(invalid="ignore"):
            weak = ~forced & ~(snr >= params.cull_snr)
        src.keep(~weak)
        n_merged = _merge_close(src, params.merge_radius, params.min_separation)
        dt = time.perf_counter() - t0
        history.append(
            dict(
                iteration=it,
                n_sources=len(src),
                n_new=n_new,
                n_culled=int(weak.sum()),
                n_merged=n_merged,
                sky=float(np.median(sky)),
                psf_fwhm=float(fwhm),
                psf_stars=int(psf_stars),
                solver_iterations=lin.iterations,
                seconds=dt,
            )
        )
        log.info(
            "%spass %d: %d sources (%d new, %d culled, %d merged), sky %.4g, "
            "PSF FWHM %.2f px from %d stars, %.1f s",
            label,
            it,
            len(src),
            n_new,
            int(weak.sum()),
            n_merged,
            float(np.median(sky)),
            fwhm,
            psf_stars,
            dt,
        )

    # --- final pass: forced photometry at the final positions
    t0 = time.perf_counter()
    n = len(src)
    if params.n_iter > params.n_coarse_sky:
        sky = boxed_sky(
            image - sky_model,
            _sky_pixels(good, sky_model, weight, params),
            params.sky_box,
            params.sky_smooth,
        )
    else:
        sky = np.full(image.shape, global_sky(image - sky_model, good))
    if n:
        size_idx = choose_stamp_sizes(src.flux, psf, sizes, noise, params.stamp_noise_fraction)
        groups = render_scene(src.x, src.y, size_idx, sizes, psf, image.shape, True, origin)
        lin_pos = solve_scene(
            groups,
            n,
            image - sky - wings,
            weight,
            True,
            src.flux,
            sky_basis=sky_basis,
            rtol=params.cg_rtol,
            maxiter=params.cg_maxiter,
            ridge=params.derivative_ridge,
            solver=params.solver,
        )
        lin = solve_scene(
            groups,
            n,
            image - sky - wings,
            weight,
            False,
            np.nan_to_num(lin_pos.flux),
            sky_basis=sky_basis,
            rtol=params.cg_rtol,
            maxiter=params.cg_maxiter,
            solver=params.solver,
        )
        if lin.sky_terms is not None:
            sky = sky + (sky_basis @ lin.sky_terms).reshape(image.shape)
        model = scene_image(groups, np.nan_to_num(lin.flux), image.shape)
        wings = wing_image(src.x, src.y, lin.flux, size_idx, sizes, psf, image.shape)
        model = model + wings
        resid = image - sky - model
        broad = _broadened(psf, fwhm)
        broad_groups = render_scene(
            src.x, src.y, size_idx, sizes, broad, image.shape, False, origin
        )
        meas = measure_sources(
            groups, n, np.nan_to_num(lin.flux), None, None, resid, weight, model, broad_groups
        )
        flux, flux_err = lin.flux, lin.flux_err
        with np.errstate(invalid="ignore", divide="ignore"):
            f = np.where(np.abs(lin_pos.flux) > 0, lin_pos.flux, np.nan)
            x_err = np.sqrt(lin_pos.block_inv[:, 1, 1]) / np.abs(f)
            y_err = np.sqrt(lin_pos.block_inv[:, 2, 2]) / np.abs(f)
        edge = np.zeros(n, dtype=bool)
        sat_center = np.zeros(n, dtype=bool)
        for g in groups:
            c = g.size // 2
            h = min(c, int(np.ceil(fwhm)))
            edge[g.index] = (g.pix[:, c - h : c + h + 1, c - h : c + h + 1] < 0).any(axis=(1, 2))
            sat_center[g.index] = gather(saturated.astype(float), g)[:, c, c] > 0
        psf_final_fwhm = fwhm
    else:
        model = np.zeros(image.shape)
        meas = StampMeasurements.allocate(0)
        flux = flux_err = x_err = y_err = np.zeros(0)
        edge = sat_center = np.zeros(0, dtype=bool)
        psf_final_fwhm = fwhm
    ix = np.clip(np.round(src.x).astype(int), 0, nx - 1)
    iy = np.clip(np.round(src.y).astype(int), 0, ny - 1)
    columns = dict(
        x=src.x.copy(),
        y=src.y.copy(),
        x_err=x_err,
        y_err=y_err,
        flux=flux,
        flux_err=flux_err,
        sky=sky[iy, ix] if n else np.zeros(0),
        qf=meas.qf,
        rchi2=meas.rchi2,
        fracflux=meas.fracflux,
        flux_lbs=meas.flux_lbs,
        flux_lbs_err=meas.flux_lbs_err,
        flux_iso=meas.flux_iso,
        x_iso=src.x + meas.shift_x,
        y_iso=src.y + meas.shift_y,
        fwhm=meas.fwhm,
        spread_model=meas.spread_model,
        spread_model_err=meas.spread_model_err,
        pass_found=src.pass_found.copy(),
        forced_index=src.forced_index.copy(),
        flag_edge=edge,
        flag_no_good_pixels=(meas.n_good == 0) if n else np.zeros(0, bool),
        flag_fit_failed=~np.isfinite(flux) if n else np.zeros(0, bool),
        flag_saturated_center=sat_center,
        off_image=np.zeros(n, dtype=bool),
    )
    if unfit.size:
        log.info(
            "%s%d forced position(s) have no usable pixels in their PSF core; their "
            "fluxes are NaN.",
            label,
            unfit.size,
        )
        columns = _append_unfit(columns, fx_all[unfit], fy_all[unfit], unfit, qf0[unfit], sky)
    history.append(
        dict(
            iteration=params.n_iter,
            n_sources=n,
            n_new=0,
            final=True,
            sky=float(np.median(sky)),
            psf_fwhm=float(psf_final_fwhm),
            seconds=time.perf_counter() - t0,
        )
    )
    log.info(
        "%sfinal forced pass: %d sources, %.1f s (tile total %.1f s)",
        label,
        n,
        time.perf_counter() - t0,
        time.perf_counter() - t_start,
    )
    return TileFit(columns, model, sky, psf, history)


def _usable_fraction(x, y, psf, size, weight, origin, chunk=4096):
    """PSF-weighted fraction of usable pixels (weight > 0, on the image) in a stamp."""
    out = np.zeros(len(x))
    for s in range(0, len(x), chunk):
        sl = slice(s, s + chunk)
        g = render_scene(
            x[sl], y[sl], np.zeros(len(x[sl]), int), [size], psf, weight.shape, False, origin
        )[0]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[sl] = (g.psf * (gather(weight, g) > 0)).sum(axis=(1, 2)) / g.psf.sum(axis=(1, 2))
    return np.nan_to_num(out)


def _append_unfit(columns, x, y, forced_index, qf, sky):
    """Rows (NaN fluxes, flag_no_good_pixels) for forced positions that were not fit."""
    n = len(x)
    rows = {}
    for name, arr in columns.items():
        kind = arr.dtype.kind
        fill = np.nan if kind == "f" else (-1 if kind == "i" else False)
        rows[name] = np.full(n, fill, dtype=arr.dtype)
    ny, nx = sky.shape
    ix = np.clip(np.round(x).astype(int), 0, nx - 1)
    iy = np.clip(np.round(y).astype(int), 0, ny - 1)
    rows.update(
        x=x,
        y=y,
        forced_index=forced_index,
        qf=qf,
        sky=sky[iy, ix],
        flag_no_good_pixels=np.ones(n, bool),
    )
    return {
        name: np.concatenate([arr, np.asarray(rows[name], dtype=arr.dtype)])
        for name, arr in columns.items()
    }


def _refit_psf(src, meas, snr, resid, weight, psf, params, core, shape, origin, bbox, sx, sy):
    """Select PSF stars with the seed's cuts and fit a new PSF.

    Forced sources qualify too: a reference list (an object table) often
    holds every bright star, and leaving them out left no PSF star at all
    (0 instead of 18 on a 160x192 px, 0.01 stars/px field with every
    S/N > 20 star forced), so forced mode never refit the PSF.  Their
    stamps are aligned on the measured offsets like any other, and a wrong
    reference position fails the ``psf_max_shift`` cut.
    """
    with np.errstate(invalid="ignore"):
        ok = (
            (snr > params.psf_min_snr)
            & (meas.qf > 0.999)
            & (np.hypot(meas.shift_x, meas.shift_y) < params.psf_max_shift)
            & (meas.fracflux > params.psf_min_fracflux)
            & (meas.median_loss < params.psf_max_median_loss)
            & (src.flux > 0)
        )
    ny, nx = shape
    h = core // 2
    ok &= (src.x >= h) & (src.x < nx - 1 - h) & (src.y >= h) & (src.y < ny - 1 - h)
    idx = np.nonzero(ok)[0]
    if idx.size > params.psf_max_stars:
        idx = idx[np.argsort(-snr[idx])[: params.psf_max_stars]]
    if idx.size < params.psf_min_stars:
        return None, int(idx.size)
    xs, ys = src.x[idx], src.y[idx]
    groups = render_scene(xs, ys, np.zeros(idx.size, int), [core], psf, shape, True, origin)
    g = groups[0]
    own = (
        src.flux[idx, None, None] * g.psf
        + src.gx[idx, None, None] * g.dpsf_dx
        + src.gy[idx, None, None] * g.dpsf_dy
    )
    stamps = gather(resid, g) + own
    wst = gather(weight, g)
    full = (wst > 0).all(axis=(1, 2))
    if full.sum() < params.psf_min_stars:
        return None, int(full.sum())
    # The star sits at its isolated-fit position relative to the stamp centre.
    dx = (xs - np.round(xs)) + np.nan_to_num(meas.shift_x[idx])
    dy = (ys - np.round(ys)) + np.nan_to_num(meas.shift_y[idx])
    sel = full
    # Each star's own local sky, from the median of its neighbour-subtracted
    # light in an outer annulus of the large stamp, where the PSF itself is
    # faint.  This removes the sky's response to bright stars' wings, which
    # would otherwise eat the wings of the new PSF pass after pass.
    local_sky = _local_sky(xs, ys, src.flux[idx], resid, weight, psf)
    stamps = stamps - local_sky[:, None, None]
    profile = None
    if psf.size > core:
        bright = np.nonzero(sel & (snr[idx] > params.psf_wing_min_snr))[0]
        bright = bright[np.argsort(-snr[idx][bright])][:200]
        if bright.size >= 10:
            b = idx[bright]
            big = render_scene(
                src.x[b], src.y[b], np.zeros(b.size, int), [psf.size], psf, shape, False, origin
            )[0]
            big_stamps = (
                gather(resid, big)
                + src.flux[b, None, None] * big.psf
                - local_sky[bright, None, None]
            )
            usable = big.valid & (gather(weight, big) > 0)
            profile = wing_profile(
                big_stamps, usable, dx[bright], dy[bright], src.flux[b], core // 2 - 3
            )
    new, used = fit_psf(
        stamps[sel],
        dx[sel],
        dy[sel],
        xs[sel] + origin[0],
        ys[sel] + origin[1],
        src.flux[idx][sel],
        psf,
        params.psf_order,
        core,
        params.psf_min_stars,
        bbox,
        profile,
        snr[idx][sel],
        params.psf_snr_floor,
    )
    return new, used


def _local_sky(x, y, flux, resid, weight, psf, width: int = 5) -> np.ndarray:
    """Median neighbour-subtracted level in the outer annulus of each star's large stamp.

    The star's own light there (from the constant PSF, no sub-pixel shift:
    it is tiny) is added back to the residual before taking the median.
    """
    size = psf.size
    c = size // 2
    yy, xx = np.mgrid[0:size, 0:size] - c
    r = np.hypot(xx, yy)
    ring = (r >= c - width) & (r <= c)
    dy, dx = yy[ring], xx[ring]
    own = psf.stamp(*psf.center)[ring]
    ny, nx = resid.shape
    iy = np.round(y).astype(np.int64)[:, None] + dy[None]
    ix = np.round(x).astype(np.int64)[:, None] + dx[None]
    inside = (iy >= 0) & (iy < ny) & (ix >= 0) & (ix < nx)
    iyc, ixc = np.clip(iy, 0, ny - 1), np.clip(ix, 0, nx - 1)
    usable = inside & (weight[iyc, ixc] > 0)
    vals = np.where(usable, resid[iyc, ixc] + flux[:, None] * own[None], np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # stars with no usable ring
        return np.nan_to_num(np.nanmedian(vals, axis=1))
