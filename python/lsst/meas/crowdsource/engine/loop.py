"""The crowdsource pass loop on one array (an image, or one tile of it).

Each pass runs the same named steps on a `TileState`, the state the loop
carries: measure the sky under the current model, find new peaks in the
residual, solve for every flux and position derivative at once, recentre
each source on its neighbour-subtracted stamp, refit the PSF, move the
sources, cull the insignificant and merge the converged.  A final pass
then does pure forced photometry (fluxes only) at the final positions and
measures every source.

Contract
--------
- `fit_tile` reads an `ImageData` and returns a `TileFit` in that array's
  pixel coordinates; the PSF model is in the frame around the array
  (``data.to_parent`` maps positions into it).
- Forced positions keep their index in the caller's list
  (``forced_index``); a forced position whose PSF core has (almost) no
  usable pixel is not fit and gets a NaN row (`pad_rows`).
- The steps only append to, move or drop sources (`Sources`); given the
  same input, the output is the same to the bit.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from .image import ImageData, pixel_values
from .linear import LinearFit, solve_scene
from .measure import (
    StampMeasurements,
    crowding_mag,
    measure_sources,
    stamp_flags,
    usable_fraction,
)
from .params import FitParams
from .peaks import MatchedFilter, Peaks, find_peaks, saturated_sources, saturated_wings
from .psf import PixelPsf
from .psf_fit import TilePsf, refit_psf
from .scene import (
    StampGroup,
    add_derivatives,
    choose_stamp_sizes,
    render_scene,
    scene_image,
    wing_image,
)
from .sky import (
    AdaptiveSky,
    SplineSky,
    model_under_sky,
    pixel_noise,
    sky_basis,
    sky_under_model,
)
from .sources import ForcedPositions, Sources, pad_rows

__all__ = ["TileFit", "TileState", "fit_tile"]

_log = logging.getLogger(__name__)


@dataclass
class TileFit:
    """Result of `fit_tile`, in the pixel coordinates of the fitted array.

    Attributes
    ----------
    columns : `dict` [`str`, `numpy.ndarray`]
        Per-source columns (`ENGINE_COLUMNS`).
    model : `numpy.ndarray`
        Model of the sources (no sky).
    sky : `numpy.ndarray`
        The sky.
    psf : `PixelPsf`
        The final PSF (in the frame around the array).
    history : `list` [`dict`]
        Per pass: sources, new peaks, culls, merges, sky, PSF, timing.
    """

    columns: dict[str, np.ndarray]
    model: np.ndarray
    sky: np.ndarray
    psf: PixelPsf
    history: list[dict] = field(default_factory=list)


@dataclass
class _Scene:
    """The current model of the array: sources in their stamps, their wings, the sky."""

    model: np.ndarray
    wings: np.ndarray
    sky: np.ndarray
    under_sky: np.ndarray  # the model the sky is measured under

    @classmethod
    def empty(cls, shape: tuple[int, int]) -> _Scene:
        return cls(np.zeros(shape), np.zeros(shape), np.zeros(shape), np.zeros(shape))


@dataclass
class _Solution:
    """This pass's simultaneous fit and the measurements on its stamps."""

    size_idx: np.ndarray
    groups: list[StampGroup]
    lin: LinearFit
    meas: StampMeasurements | None = None
    snr: np.ndarray | None = None
    resid: np.ndarray | None = None


class TileState:
    """What the pass loop carries from one step to the next on one array.

    Parameters
    ----------
    data : `ImageData`
        The array; the PSF is evaluated at ``data.to_parent(x, y)``.
    psf : `PixelPsf` or `None`
        Starting PSF; estimated from the image when `None`.
    params : `FitParams`
        Parameters of the fit.
    refine_forced : `float`
        Largest distance (pixels) forced positions may move (0: fixed).
    log : `logging.Logger`
        Where progress goes.
    label : `str`
        Prefix of log lines (e.g. the tile).
    """

    def __init__(
        self,
        data: ImageData,
        psf: PixelPsf | None,
        params: FitParams,
        refine_forced: float,
        log: logging.Logger,
        label: str,
    ):
        self.t_start = time.perf_counter()
        self.params = params
        self.refine_forced = refine_forced
        self.log = log
        self.label = label
        self.frame = data.frame
        self.shape = data.shape
        self.weight = np.where(data.saturated, 0.0, data.weight)
        self.good = self.weight > 0
        self.image = np.where(self.good, data.image, 0.0)
        self.saturated = data.saturated
        self.any_saturated = bool(self.saturated.any())
        ny, nx = self.shape
        # The region (PSF frame) the PSF polynomial is normalised to.
        self.psf_bbox = (*data.to_parent(0, 0), *data.to_parent(nx - 1, ny - 1))
        self.psf = TilePsf.start(psf, params, self.image, self.weight, self.saturated)
        self.psf_estimated = psf is None  # no PSF given: the start is a guess
        self.noise = pixel_noise(self.weight)
        self.sky_basis = sky_basis(self.shape) if params.fit_sky_terms else None
        self.forced_coverage = 0.0  # share of the usable pixels in forced PSF cores
        self.spline_sky: SplineSky | AdaptiveSky | None = None
        if params.sky_method == "spline":
            self.spline_sky = SplineSky(
                self.shape, params.sky_spline_spacing, params.sky_spline_smoothing
            )
        elif params.sky_method == "adaptive":
            self.spline_sky = AdaptiveSky(
                self.shape,
                params.sky_spline_spacing,
                params.sky_spline_smoothing,
                params.sky_adaptive_threshold,
            )
        self.sat_wings, self.sat_margin = None, None  # saturated stars' wings (for a FWHM)
        self.sources = Sources()
        self.unfit: tuple[ForcedPositions, np.ndarray] | None = None
        self.scene = _Scene.empty(self.shape)
        self.sky_regions = data.sky_regions
        # The first sky: one median (per sky region) of the image alone.
        self.scene.sky = sky_under_model(
            self.image,
            self.scene.under_sky,
            self.good,
            self.weight,
            params,
            coarse=True,
            regions=self.sky_regions,
        )
        self.solution: _Solution | None = None
        self.history: list[dict] = []
        self.capped = False  # a cap on the number of sources was reached
        self.n_settled = 0  # free sources solved without derivative terms in the last pass
        self.psf_settle_rounds = 0  # extra solve-and-refit rounds of the first pass
        self.psf_change = np.inf  # how much the last PSF refit changed the PSF

    # --- the steps -----------------------------------------------------------

    def add_forced(self, forced: ForcedPositions) -> None:
        """Add the forced positions that have usable pixels; keep the others apart.

        A forced position whose PSF core has (almost) no usable pixel has an
        unconstrained flux that can run away and wreck the whole fit: it is
        not fit and gets a NaN row instead.
        """
        sizes = self.psf.sizes
        qf = usable_fraction(
            forced.x,
            forced.y,
            self.psf.model,
            sizes[min(1, len(sizes) - 1)],
            self.weight,
            self.frame,
        )
        fit_ok = qf >= self.params.forced_min_qf
        unfit = np.nonzero(~fit_ok)[0]
        self.unfit = (forced.subset(unfit), qf[unfit])
        self.sources.add_forced(forced.subset(np.nonzero(fit_ok)[0]))
        self.forced_coverage = forced_coverage(
            forced.x[fit_ok], forced.y[fit_ok], self.psf.fwhm, self.good
        )
        if self.sky_basis is None and self.dense_forced:
            # The boxed sky is a median of image - model, and forced targets
            # that cover the image absorb a sky offset into their fluxes before
            # the median sees it: with every S/N >= 2 star of a 0.2 stars/px
            # field forced the sky ran from 1000 to -1241 in four passes; at 0.1
            # stars/px, with the true PSF and sky, every forced flux came out
            # +0.6 sigma high.  Fit jointly, the sky's constant and gradient
            # cannot drift (benchmarks/README.md, "Forced photometry and the sky").
            self.sky_basis = sky_basis(self.shape)

    @property
    def dense_forced(self) -> bool:
        """Whether forced targets' PSF cores cover ``forced_sky_coverage`` of the tile."""
        has_forced = bool(np.any(self.sources.forced))
        return has_forced and self.forced_coverage >= self.params.forced_sky_coverage

    def measure_sky(self, coarse: bool) -> None:
        """Sky from the image minus the model of the sources it is measured under."""
        s = self.scene
        s.sky = sky_under_model(
            self.image,
            s.under_sky,
            self.good,
            self.weight,
            self.params,
            coarse,
            self.spline_sky,
            self.sky_regions,
        )

    def find_sources(self, it: int) -> int:
        """Add the peaks of the residual as new sources; return how many."""
        p, s, psf = self.params, self.scene, self.psf
        if p.saturated_exclusion > 0 and self.any_saturated and self.sat_margin != psf.sized_for:
            self.sat_margin = psf.sized_for
            self.sat_wings = saturated_wings(self.saturated, p.saturated_exclusion * psf.sized_for)
        kernel = psf.kernel()
        resid = self.image - s.sky - s.model - s.wings
        peaks = find_peaks(
            resid,
            self.weight,
            self.saturated,
            s.model,
            kernel,
            self.sources.x,
            self.sources.y,
            p,
            first_pass=(it == 0),
            fwhm=psf.fwhm,
            wings_of_saturated=self.sat_wings,
        )
        if it == 0 and self.any_saturated:
            mf = MatchedFilter.compute(resid, self.weight, kernel, with_coverage=False)
            peaks = peaks.concatenate(saturated_sources(self.saturated, mf.flux))
        peaks = self._cap(peaks, it)
        self.sources.add(peaks.x, peaks.y, peaks.flux, it)
        return len(peaks)

    def _cap(self, peaks: Peaks, it: int) -> Peaks:
        """The most significant of ``peaks`` that fit under the caps on new and found sources.

        Only pathological inputs (a variance far too small, a defect that
        was not recognised) reach them; the tile is then marked ``capped``.
        """
        p = self.params
        area = self.shape[0] * self.shape[1]
        n_found = int(np.count_nonzero(self.sources.forced_index < 0))
        room = min(
            int(p.max_new_peak_density * area),
            max(int(p.max_source_density * area) - n_found, 0),
        )
        if len(peaks) <= room:
            return peaks
        self.capped = True
        self.log.warning(
            "%spass %d: %d new peaks, but the caps (max_new_peak_density=%g, "
            "max_source_density=%g per pixel) leave room for %d: keeping the most "
            "significant; is the variance right, or is a defect unmasked?",
            self.label,
            it,
            len(peaks),
            p.max_new_peak_density,
            p.max_source_density,
            room,
        )
        keep = np.sort(np.argsort(-peaks.significance, kind="stable")[:room])
        return peaks.subset(keep)

    def solve(self) -> None:
        """Fit every flux and position derivative at once; update the model."""
        p, s, src, psf = self.params, self.scene, self.sources, self.psf
        self.solution = None  # the last pass's stamps are not needed any more
        # Held forced positions need no derivative columns (issue 16: they made
        # up most of the normal matrix of a crowded forced scene), nor stamps.
        held = self._held()
        size_idx, groups = self._render(None if held is None else ~held)
        # Settled sources keep their derivative stamps (`recentre` measures
        # their next step on them) but have no derivative columns.
        settled = src.last_step < p.settled_step
        self.n_settled = int(np.count_nonzero(settled & ~src.forced))
        if held is not None:
            settled |= held
        lin = solve_scene(
            groups,
            len(src),
            self.image - s.sky - s.wings,
            self.weight,
            True,
            src.flux,
            src.gx,
            src.gy,
            self.sky_basis,
            p.cg_rtol,
            p.cg_maxiter,
            p.derivative_ridge,
            solver=p.solver,
            held=settled if settled.any() else None,
        )
        src.flux, src.gx, src.gy = lin.flux, lin.gx, lin.gy
        s.model = scene_image(
            groups,
            np.nan_to_num(src.flux),
            self.shape,
            np.nan_to_num(src.gx),
            np.nan_to_num(src.gy),
        )
        if lin.sky_terms is not None:
            s.sky = s.sky + (self.sky_basis @ lin.sky_terms).reshape(self.shape)
        s.wings = wing_image(src.x, src.y, src.flux, size_idx, psf.sizes, psf.model, self.shape)
        s.under_sky = model_under_sky(
            s.model, s.wings, src, groups, size_idx, psf.sizes, psf.model, self.shape
        )
        self.solution = _Solution(size_idx, groups, lin)

    def _render(self, need_d: np.ndarray | None = None) -> tuple[np.ndarray, list[StampGroup]]:
        """Every source's stamp size and its stamps with position derivatives
        (only for ``need_d``, if given; on the core square, `TilePsf.derivative_size`)."""
        p, src, psf = self.params, self.sources, self.psf
        size_idx = choose_stamp_sizes(
            src.flux, psf.model, psf.sizes, self.noise, p.stamp_noise_fraction
        )
        groups = render_scene(
            src.x,
            src.y,
            size_idx,
            psf.sizes,
            psf.model,
            self.shape,
            True,
            self.frame,
            need_d=need_d,
            derivative_size=psf.derivative_size(p),
        )
        return size_idx, groups

    def recentre(self) -> tuple[np.ndarray, np.ndarray]:
        """Measure every source on its neighbour-subtracted stamp; return the position steps.

        Steps are bounded by ``max_shift``, zero below ``centroid_min_snr``
        and for forced sources held within ``refine_forced`` of their start.
        """
        p, s, src, sol = self.params, self.scene, self.sources, self.solution
        sol.resid = self.image - s.sky - s.model - s.wings
        with np.errstate(invalid="ignore", divide="ignore"):
            sol.snr = src.flux / sol.lin.flux_err
        sol.meas = measure_sources(
            self._measured_groups(),
            len(src),
            np.nan_to_num(src.flux),
            np.nan_to_num(src.gx),
            np.nan_to_num(src.gy),
            sol.resid,
            self.weight,
            s.model,
            full=False,
        )
        sx = np.clip(np.nan_to_num(sol.meas.shift_x), -p.max_shift, p.max_shift)
        sy = np.clip(np.nan_to_num(sol.meas.shift_y), -p.max_shift, p.max_shift)
        still = ~(sol.snr >= p.centroid_min_snr)
        sx[still] = 0.0
        sy[still] = 0.0
        return self.sources.restrain_forced(sx, sy, self.refine_forced)

    def _held(self) -> np.ndarray | None:
        """The sources whose positions are held fixed (`None`: none are)."""
        return self.sources.forced if self.refine_forced == 0 else None

    def _measured_groups(self) -> list[StampGroup]:
        """The stamps of the sources `recentre` measures.

        A held forced position takes no step; its measurements only matter
        to `refit_psf`, which takes its stars above ``psf_min_snr`` (and
        cuts on their steps, which need the derivative stamps `solve` left
        out).  The other held sources, most of a forced scene, are not
        measured (NaN).
        """
        p, src, sol = self.params, self.sources, self.solution
        held = self._held()
        if held is None or not held.any():
            return sol.groups
        keep = ~held
        if p.refit_psf:
            with np.errstate(invalid="ignore"):
                keep |= sol.snr > p.psf_min_snr
        return add_derivatives(sol.groups, keep, src.x, src.y, self.psf.model, self.frame)

    def refit_psf(self, it: int) -> float:
        """A new PSF from neighbour-subtracted stamps of good stars, if plausible.

        From the first pass on, as in the seed: the first fit of the bright
        stars already gives a better PSF than the start (an analytic guess,
        or a stamp from the centre of the field).  Waiting a pass let the
        next peak search add false companions around every bright star the
        starting PSF did not fit (1024x1024, 0.02 stars/px, centre-stamp
        start: 112 false sources within 8 px of S/N > 300 stars, 37 with
        the refit from the first pass).
        """
        sol, psf = self.solution, self.psf
        new, psf.n_stars = refit_psf(
            self.sources,
            sol.meas,
            sol.snr,
            sol.resid,
            self.weight,
            psf.model,
            self.params,
            psf.core,
            self.frame,
            self.psf_bbox,
            psf.wing,
        )
        if new is None:
            return 0.0
        new_fwhm = new.fwhm()
        if psf.accepts(new_fwhm):
            old = psf.model.stamp(*psf.model.center)
            psf.adopt(new, new_fwhm, self.params)
            return _stamp_change(old, psf.model.stamp(*psf.model.center))
        else:
            self.log.warning(
                "%spass %d: rejected a PSF refit with FWHM %.2f (was %.2f)",
                self.label,
                it,
                new_fwhm,
                psf.fwhm,
            )
            return 0.0

    def sparse(self) -> bool:
        """Whether the sources found so far are fewer than ``psf_settle_max_density`` per pixel."""
        area = self.shape[0] * self.shape[1]
        return len(self.sources) < self.params.psf_settle_max_density * area

    def settle_psf(
        self, it: int, change: float, sx: np.ndarray, sy: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Solve and refit again while the PSF still moves; return the last position steps.

        For a PSF estimated from the image (none given).  The first pass's
        sources are few and bright, but their model is made with the
        starting guess, whose wings the next passes' sky and peaks inherit:
        refit once per pass, the PSF approached the image's geometrically (a
        Moffat start on Gaussian stars kept 3.8 % of its light beyond 6 px
        against 1.2 % after four passes) while the sky it had lowered and
        the false peaks it left stayed (89 false of 303 detections on a
        512x512 field of 214 isolated stars).  Up to ``psf_settle_max``
        rounds, until a refit changes the PSF by less than
        ``psf_settle_tol``.  Only where the first pass found fewer than
        ``psf_settle_max_density`` sources per pixel, and not for a PSF
        given by the caller: on crowded fields settling moved the PSF to
        the refit's crowded fixed point (1024x1024 benchmark, true PSF
        given: median bright-star flux bias +1.5 % -> +2.6 %, S/N 100-300
        scatter over the crowded bound 1.92 -> 1.99; no PSF given: bias
        +2.0 % -> +2.5 %) at 1.4-3x the time, and found no fewer false
        sources.
        """
        p = self.params
        rounds = 0
        changes = [change]
        while rounds < p.psf_settle_max and change > p.psf_settle_tol:
            self.sources.move(sx, sy, self.shape)
            self.measure_sky(coarse=it + 1 < p.n_coarse_sky)
            self.solve()
            sx, sy = self.recentre()
            change = self.refit_psf(it)
            changes.append(change)
            rounds += 1
        self.psf_settle_rounds = rounds
        self.psf_change = change
        if rounds:
            self.log.info(
                "%spass %d: %d more PSF refits (changes %s)",
                self.label,
                it,
                rounds,
                ", ".join(f"{c:.3g}" for c in changes),
            )
        return sx, sy

    def another_pass(self, it: int) -> bool:
        """Whether pass ``it`` is run.

        The first ``n_iter`` passes always are; after them another (up to
        ``max_iter`` in all) while the last pass added more than
        ``more_pass_fraction`` of the sources it ended with.  In crowded
        fields every pass reveals stars that the light of their unmodelled
        neighbours hid (1024x1024, 0.1 stars/px: 3180 new sources in the
        fourth pass); on sparse ones the extra passes are not run.  Nor are
        they with a dense forced list (`dense_forced`): the catalogue is
        given, and the sources found among its targets churn without end
        (384x384, 0.2 stars/px, every S/N >= 2 star forced: ~1 % new per
        pass, the median sky 1066 -> 973 and 1302 in the final pass, the
        forced pulls 17 wide against 4.6 with four passes).
        """
        p = self.params
        if it < p.n_iter:
            return True
        if it >= p.max_iter or not self.history or self.dense_forced:
            return False
        last = self.history[-1]
        n = last.get("n_sources", 0)
        return n > 0 and last.get("n_new", 0) > p.more_pass_fraction * n

    def psf_still_moving(self, it: int) -> bool:
        """Whether pass ``it`` refits the PSF: always in the first ``n_iter``
        passes, after them only while the last refit changed it by more than
        ``psf_settle_tol``."""
        return it < self.params.n_iter or self.psf_change > self.params.psf_settle_tol

    def cull_and_merge(self) -> tuple[int, int]:
        """Drop insignificant free sources, merge converged duplicates; return the counts."""
        p = self.params
        n_culled = self.sources.cull(self.solution.snr, p.cull_snr)
        n_merged = self.sources.merge_close(p.merge_radius, p.min_separation)
        return n_culled, n_merged

    # --- bookkeeping -----------------------------------------------------------

    def record_pass(self, it: int, t0: float, counts: tuple[int, int, int] | None) -> None:
        """History entry and log line of pass ``it`` (``counts``: new, culled, merged)."""
        sky = float(np.median(self.scene.sky))
        dt = time.perf_counter() - t0
        if counts is None:
            self.history.append(dict(iteration=it, n_sources=0, n_new=0, sky=sky, seconds=dt))
            self.log.info("%spass %d: no sources; sky %.3g", self.label, it, sky)
            return
        n_new, n_culled, n_merged = counts
        self.history.append(
            dict(
                iteration=it,
                n_sources=len(self.sources),
                n_new=n_new,
                n_culled=n_culled,
                n_merged=n_merged,
                sky=sky,
                psf_fwhm=float(self.psf.fwhm),
                psf_stars=int(self.psf.n_stars),
                solver_iterations=self.solution.lin.iterations,
                n_settled=self.n_settled,
                capped=self.capped,
                psf_settle_rounds=self.psf_settle_rounds if it == 0 else 0,
                psf_change=float(self.psf_change),
                seconds=dt,
            )
        )
        self.log.info(
            "%spass %d: %d sources (%d new, %d culled, %d merged), sky %.4g, "
            "PSF FWHM %.2f px from %d stars, %.1f s",
            self.label,
            it,
            len(self.sources),
            n_new,
            n_culled,
            n_merged,
            sky,
            self.psf.fwhm,
            self.psf.n_stars,
            dt,
        )

    # --- the final pass ----------------------------------------------------------

    def final_pass(self) -> TileFit:
        """Forced photometry of every source at its final position; the result."""
        t0 = time.perf_counter()
        p, n = self.params, len(self.sources)
        n_passes = sum(1 for h in self.history if not h.get("final"))
        # The sky as the last pass measured it.
        self.measure_sky(coarse=n_passes - 1 < p.n_coarse_sky)
        self.solution = None  # the last pass's stamps are not needed any more
        if n:
            columns, model = self._final_fit()
        else:
            model = np.zeros(self.shape)
            columns = self._columns(StampMeasurements.allocate(0), *([np.zeros(0)] * 4))
            columns.update(flag_edge=np.zeros(0, bool), flag_saturated_center=np.zeros(0, bool))
        columns = self._pad_unfit(columns)
        sky = self.scene.sky
        self.history.append(
            dict(
                iteration=n_passes,
                n_sources=n,
                n_new=0,
                final=True,
                sky=float(np.median(sky)),
                forced_coverage=self.forced_coverage,
                joint_sky_terms=self.sky_basis is not None,
                psf_fwhm=float(self.psf.fwhm),
                seconds=time.perf_counter() - t0,
            )
        )
        self.log.info(
            "%sfinal forced pass: %d sources, %.1f s (tile total %.1f s)",
            self.label,
            n,
            time.perf_counter() - t0,
            time.perf_counter() - self.t_start,
        )
        return TileFit(columns, model, sky, self.psf.model, self.history)

    def _final_fit(self) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Fluxes (and position errors) at fixed positions, and the measurements."""
        p, s, src, psf = self.params, self.scene, self.sources, self.psf
        n, shape, frame = len(src), self.shape, self.frame
        size_idx, groups = self._render()
        fit = dict(sky_basis=self.sky_basis, rtol=p.cg_rtol, maxiter=p.cg_maxiter, solver=p.solver)
        data = self.image - s.sky - s.wings
        # One flux-only solve: every position is held, so the design has no
        # derivative columns, but each source's own 3x3 block of flux and
        # position derivatives is still formed from its stamps (with the
        # derivative ridge) for its position errors.  Solving for the
        # positions as well, only to read those blocks off the normal
        # matrix, doubled the final pass's cost.
        lin = solve_scene(
            groups,
            n,
            data,
            self.weight,
            True,
            src.flux,
            ridge=p.derivative_ridge,
            held=np.ones(n, bool),
            **fit,
        )
        if lin.sky_terms is not None:
            s.sky = s.sky + (self.sky_basis @ lin.sky_terms).reshape(shape)
        model = scene_image(groups, np.nan_to_num(lin.flux), shape)
        wings = wing_image(src.x, src.y, lin.flux, size_idx, psf.sizes, psf.model, shape)
        model = model + wings
        resid = self.image - s.sky - model
        broad = psf.model.broadened(psf.fwhm)
        broad_groups = render_scene(src.x, src.y, size_idx, psf.sizes, broad, shape, False, frame)
        meas = measure_sources(
            groups, n, np.nan_to_num(lin.flux), None, None, resid, self.weight, model, broad_groups
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            f = np.where(np.abs(lin.flux) > 0, lin.flux, np.nan)
            x_err = np.sqrt(lin.block_inv[:, 1, 1]) / np.abs(f)
            y_err = np.sqrt(lin.block_inv[:, 2, 2]) / np.abs(f)
        columns = self._columns(meas, lin.flux, lin.flux_err, x_err, y_err)
        edge, sat_center = stamp_flags(groups, n, self.saturated, psf.fwhm)
        columns.update(flag_edge=edge, flag_saturated_center=sat_center)
        return columns, model

    def _columns(self, meas, flux, flux_err, x_err, y_err) -> dict[str, np.ndarray]:
        """The per-source columns (`ENGINE_COLUMNS` order; flags set by the caller)."""
        src = self.sources
        return dict(
            x=src.x.copy(),
            y=src.y.copy(),
            x_err=x_err,
            y_err=y_err,
            flux=flux,
            flux_err=flux_err,
            flux_err_stat=flux_err.copy(),
            sky=pixel_values(self.scene.sky, src.x, src.y),
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
            crowding=crowding_mag(meas.flux_alone, flux),
            pass_found=src.pass_found.copy(),
            forced_index=src.forced_index.copy(),
            flag_edge=None,
            flag_no_good_pixels=meas.n_good == 0,
            flag_fit_failed=~np.isfinite(flux),
            flag_saturated_center=None,
            off_image=np.zeros(len(src), dtype=bool),
            flag_unfittable=np.zeros(len(src), dtype=bool),
            flag_source_cap=np.full(len(src), self.capped),
        )

    def _pad_unfit(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """NaN rows (flag_no_good_pixels) for the forced positions that were not fit."""
        if self.unfit is None or not len(self.unfit[0]):
            return columns
        unfit, qf = self.unfit
        self.log.info(
            "%s%d forced position(s) have no usable pixels in their PSF core; their "
            "fluxes are NaN.",
            self.label,
            len(unfit),
        )
        return pad_rows(
            columns,
            len(unfit),
            x=unfit.x,
            y=unfit.y,
            forced_index=unfit.index,
            qf=qf,
            sky=pixel_values(self.scene.sky, unfit.x, unfit.y),
            flag_no_good_pixels=np.ones(len(unfit), bool),
        )


def _stamp_change(old: np.ndarray, new: np.ndarray) -> float:
    """Sum of the absolute differences of two PSF stamps, each scaled to unit sum."""
    return float(np.abs(new / new.sum() - old / old.sum()).sum())


def forced_coverage(x: np.ndarray, y: np.ndarray, fwhm: float, good: np.ndarray) -> float:
    """Share of the ``good`` pixels within ``fwhm`` of a position ``(x, y)`` (array coordinates)."""
    n_good = int(good.sum())
    if not len(x) or not n_good:
        return 0.0
    ny, nx = good.shape
    hits = np.zeros(good.shape, dtype=bool)
    ix = np.clip(np.rint(x).astype(np.int64), 0, nx - 1)
    iy = np.clip(np.rint(y).astype(np.int64), 0, ny - 1)
    hits[iy, ix] = True
    r = max(float(fwhm), 0.5)
    k = int(np.ceil(r))
    oy, ox = np.mgrid[-k : k + 1, -k : k + 1]
    disc = ox**2 + oy**2 <= r * r
    covered = ndimage.binary_dilation(hits, structure=disc)
    return float((covered & good).sum() / n_good)


def fit_tile(
    data: ImageData,
    psf: PixelPsf | None,
    params: FitParams,
    forced: ForcedPositions | None = None,
    find_new: bool = True,
    refine_forced: float = 0.0,
    log: logging.Logger | None = None,
    label: str = "",
) -> TileFit:
    """Run the crowdsource loop on one array.

    Parameters
    ----------
    data : `ImageData`
        The array (an image or a tile of one); the PSF model is evaluated
        at ``data.to_parent(x, y)``.
    psf : `PixelPsf` or `None`
        Starting PSF; estimated from the image when `None`.
    params : `FitParams`
        Parameters of the fit.
    forced : `ForcedPositions`, optional
        Positions (array coordinates) to fit, held in place (or within
        ``refine_forced``), along with everything else.
    find_new : `bool`
        Look for sources in the image (off: fit only the forced positions,
        and keep the PSF).
    refine_forced : `float`
        Largest distance (pixels) forced positions may move (0: fixed).
    log : `logging.Logger`, optional
        Where progress goes.
    label : `str`
        Prefix for log lines (e.g. the tile).

    Returns
    -------
    fit : `TileFit`
    """
    state = TileState(data, psf, params, refine_forced, log or _log, label)
    if forced is not None and len(forced):
        state.add_forced(forced)
    it = 0
    while state.another_pass(it):
        t0 = time.perf_counter()
        state.measure_sky(coarse=it < params.n_coarse_sky)
        n_new = state.find_sources(it) if find_new else 0
        if not len(state.sources):
            state.record_pass(it, t0, None)
            it += 1
            continue
        state.solve()
        sx, sy = state.recentre()
        if params.refit_psf and find_new and state.psf_still_moving(it):
            state.psf_change = state.refit_psf(it)
            if it == 0 and state.psf_estimated and state.sparse():
                sx, sy = state.settle_psf(it, state.psf_change, sx, sy)
        state.sources.move(sx, sy, state.shape)
        n_culled, n_merged = state.cull_and_merge()
        state.record_pass(it, t0, (n_new, n_culled, n_merged))
        it += 1
    return state.final_pass()
