"""Flux errors calibrated with artificial stars.

The statistical error of the simultaneous fit (``flux_err_stat``) is the
Fisher error of a model that holds only the sources that were found, at
their fitted positions, with the fitted PSF.  In a crowded field that model
is incomplete: stars below the detection limit sit under every PSF, faint
neighbours wander while their positions are fit, close pairs merge, and the
PSF is not exactly right.  None of that is in the Fisher matrix, and on the
simulated fields of ``benchmarks/error_budget.py`` the real scatter of the
fluxes is 2 (0.02 stars/px) to 5 (0.05 stars/px) times ``flux_err_stat``.
The residuals do not show it (their chi^2 is ~1 in the PSF core): the light
that is missing from the model is absorbed by the fitted sources.

The calibration measures the missing term the way DOLPHOT's artificial-star
tests do, on the image itself: stars of known flux, drawn with the PSF,
are added at random positions (far from each other, anywhere among the real
sources), the image is fit again exactly as before, and the pull
``(f - f_true) / flux_err_stat`` of each recovered artificial star is
recorded against its measured S/N.  The robust width of the pulls in
equal-count bins of measured S/N, smoothed by a quadratic in ``ln S/N``, is
the factor by which ``flux_err_stat`` understates the error at that S/N;
``flux_err`` of every real source becomes ``flux_err_stat`` times the factor
at its own measured S/N (never less than ``flux_err_stat``).

What the calibration holds, and what it does not:

- it costs one fit of the image per round (`calibration_rounds`); the
  catalogue itself is the fit without artificial stars, untouched except for
  ``flux_err``;
- the artificial stars are drawn with the PSF the fit was given (the
  exposure's PSF model), or with the fitted PSF when none was given: in that
  case the error of the PSF model itself is not measured;
- the factor depends on S/N only; within one S/N bin a star in a denser part
  of the image gets the image's average.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import numpy as np

from .artificial_stars import (
    add_stars,
    draw_positions,
    estimate_gain,
    flux_for_snr,
    psf_stamps,
    render_stars,
)
from .engine import FitParams, FitResult, PixelPsf, fit_image
from .engine.psf_io import ParentFramePsf
from .matching import match_to_truth, robust_scatter, robust_scatter_error

__all__ = [
    "ErrorCalibration",
    "calibrate_flux_errors",
    "calibration_rounds",
    "fit_error_scale",
]

#: Match radius of an artificial star, in FWHM (at least 1 px).
MATCH_RADIUS_FWHM = 0.25
#: Fewest recovered artificial stars for a calibration; with fewer the errors stay statistical.
MIN_STARS = 20


@dataclass(frozen=True)
class ErrorCalibration:
    """How much the statistical flux errors understate the real scatter, by S/N.

    Attributes
    ----------
    snr : `numpy.ndarray`
        Geometric-mean measured S/N (``flux / flux_err_stat``) of each bin.
    width : `numpy.ndarray`
        Robust width (1.4826 MAD) of the artificial stars' pulls
        ``(f - f_true) / flux_err_stat`` in each bin.
    width_err : `numpy.ndarray`
        Sampling error of ``width``.
    n_per_bin : `numpy.ndarray`
        Recovered artificial stars in each bin.
    coeffs : `numpy.ndarray` or `None`
        Polynomial in ``ln S/N`` (highest power first) of ``ln width``, fit
        to the bins; `None` when there were too few stars (the factor is 1).
    n_injected, n_recovered, rounds : `int`
        Artificial stars drawn, matched, and the fits that measured them.
    star_snr, star_pull : `numpy.ndarray`
        Measured S/N and pull of every recovered artificial star.
    """

    snr: np.ndarray
    width: np.ndarray
    width_err: np.ndarray
    n_per_bin: np.ndarray
    coeffs: np.ndarray | None
    n_injected: int = 0
    n_recovered: int = 0
    rounds: int = 0
    star_snr: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))
    star_pull: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0))

    @property
    def valid(self) -> bool:
        """Whether there were enough artificial stars to calibrate the errors."""
        return self.coeffs is not None

    def factor(self, snr: np.ndarray) -> np.ndarray:
        """The factor on ``flux_err_stat`` at measured S/N ``snr`` (>= 1).

        Constant beyond the S/N range of the bins; a non-finite or
        non-positive S/N gets the factor of the faintest bin.
        """
        snr = np.asarray(snr, float)
        if self.coeffs is None:
            return np.ones(snr.shape)
        lo, hi = math.log(self.snr[0]), math.log(self.snr[-1])
        with np.errstate(divide="ignore", invalid="ignore"):
            ln = np.log(np.where(np.isfinite(snr) & (snr > 0), snr, self.snr[0]))
        return np.maximum(np.exp(np.polyval(self.coeffs, np.clip(ln, lo, hi))), 1.0)

    def as_metadata(self) -> dict:
        """Plain values for task metadata."""
        fitted = self.factor(self.snr) if len(self.snr) else np.zeros(0)
        return {
            "errorCalibrationValid": self.valid,
            "errorCalibrationInjected": int(self.n_injected),
            "errorCalibrationRecovered": int(self.n_recovered),
            "errorCalibrationRounds": int(self.rounds),
            "errorCalibrationSnr": [float(v) for v in self.snr],
            "errorCalibrationWidth": [float(v) for v in self.width],
            "errorCalibrationFactor": [float(v) for v in fitted],
        }


def fit_error_scale(
    snr: np.ndarray, pull: np.ndarray, stars_per_bin: int = 25, min_stars: int = MIN_STARS
) -> ErrorCalibration:
    """Pull widths in equal-count bins of measured S/N, and their smooth fit.

    Parameters
    ----------
    snr : `numpy.ndarray`
        Measured S/N of each recovered artificial star.
    pull : `numpy.ndarray`
        Its ``(f - f_true) / flux_err_stat``.
    stars_per_bin : `int`
        Stars in each bin (the last bin takes the remainder).
    min_stars : `int`
        Fewer usable stars than this give no calibration (``coeffs`` `None`).

    Returns
    -------
    calibration : `ErrorCalibration`
        ``n_injected``, ``n_recovered`` and ``rounds`` are left 0.

    Notes
    -----
    ``ln width`` is fit with a polynomial in ``ln S/N`` by weighted least
    squares (weights from the sampling error of each width): quadratic with
    at least five bins, a straight line with three or four, a constant
    below.
    """
    snr, pull = np.asarray(snr, float), np.asarray(pull, float)
    ok = np.isfinite(snr) & (snr > 0) & np.isfinite(pull)
    snr, pull = snr[ok], pull[ok]
    empty = np.zeros(0)
    if len(snr) < max(min_stars, 2):
        return ErrorCalibration(empty, empty, empty, np.zeros(0, np.int64), None)
    order = np.argsort(snr)
    n_bins = max(1, len(snr) // max(int(stars_per_bin), 2))
    groups = np.array_split(order, n_bins)
    centre = np.array([math.exp(np.mean(np.log(snr[g]))) for g in groups])
    width = np.array([robust_scatter(pull[g]) for g in groups])
    counts = np.array([len(g) for g in groups], np.int64)
    width_err = np.array([robust_scatter_error(w, n) for w, n in zip(width, counts)])
    # A bin whose pulls are all equal (MAD 0) says nothing about a width.
    usable = width > 0
    degree = 2 if usable.sum() >= 5 else 1 if usable.sum() >= 3 else 0
    ln_w = np.log(width[usable])
    # Error of ln(width) is width_err / width = 1.166 / sqrt(n).
    weights = np.sqrt(counts[usable]) / 1.166
    if usable.sum() == 0:
        coeffs = None
    elif degree == 0:
        coeffs = np.array([float(np.average(ln_w, weights=weights**2))])
    else:
        coeffs = np.polyfit(np.log(centre[usable]), ln_w, degree, w=weights)
    return ErrorCalibration(centre, width, width_err, counts, coeffs)


def calibration_rounds(n_stars: int, shape: tuple[int, int], separation: float) -> tuple[int, int]:
    """Rounds and stars per round for ``n_stars`` artificial stars ``separation`` px apart.

    A round holds at most one star per ``2 separation^2`` pixels (about
    half of what dart throwing can place), so that the artificial stars
    never crowd each other.
    """
    per_round_max = max(1, int(shape[0] * shape[1] / (2.0 * separation**2)))
    rounds = max(1, math.ceil(n_stars / per_round_max))
    return rounds, math.ceil(n_stars / rounds)


def _injection_psf(psf, result: FitResult):
    """What the artificial stars are drawn with: the PSF given to the fit, else the fitted one."""
    if psf is None:
        return result.parent_psf
    if isinstance(psf, PixelPsf):
        return ParentFramePsf(psf, result.xy0)
    return psf


class _Quiet(logging.LoggerAdapter):
    """The log of the calibration's own fits: their progress messages go to DEBUG."""

    def log(self, level, msg, *args, **kwargs):
        super().log(logging.DEBUG if level == logging.INFO else level, msg, *args, **kwargs)


@dataclass
class _Injection:
    """What every round shares: the image, where stars may go, how they are drawn."""

    image: np.ndarray
    variance: np.ndarray
    good: np.ndarray
    xy0: tuple[int, int]
    psf: object
    gain: float
    separation: float
    snr_range: tuple[float, float]
    fit_kwargs: dict
    #: Forced targets of the fit when the artificial stars are forced too (else `None`).
    forced: tuple[np.ndarray, np.ndarray] | None
    #: The real catalogue (x, y, flux) the artificial stars are matched beside.
    real: tuple[np.ndarray, np.ndarray, np.ndarray]
    radius: float

    @classmethod
    def prepare(cls, result: FitResult, image: np.ndarray, gain, fit_kwargs: dict, sep_fwhm):
        variance = fit_kwargs.get("variance")
        if variance is None:
            with np.errstate(divide="ignore"):
                variance = 1.0 / np.asarray(fit_kwargs["weight"], float)
        variance = np.asarray(variance, float)
        good = np.isfinite(variance) & (variance > 0) & np.isfinite(image)
        for name in ("bad", "saturated"):
            if fit_kwargs.get(name) is not None:
                good &= ~np.asarray(fit_kwargs[name], bool)
        kwargs = dict(fit_kwargs, weight=None, variance=variance)
        params = fit_kwargs.get("params") or FitParams()
        cols = result.columns
        snr = np.asarray(cols["flux"], float) / np.asarray(cols["flux_err_stat"], float)
        usable = np.isfinite(snr) & ~np.asarray(cols["flag_saturated_center"], bool)
        snr_hi = float(np.clip(np.max(snr[usable], initial=0.0), 50.0, 1e4))
        fx, fy = fit_kwargs.get("forced_x"), fit_kwargs.get("forced_y")
        forced = fx is not None and not fit_kwargs.get("find_new", True)
        fwhm = float(result.psf.fwhm())
        return cls(
            image=image,
            variance=variance,
            good=good,
            xy0=tuple(fit_kwargs.get("xy0", (0, 0))),
            psf=_injection_psf(fit_kwargs.get("psf"), result),
            gain=estimate_gain(image, variance, good) if gain is None else float(gain),
            separation=sep_fwhm * fwhm,
            snr_range=(max(2.0, 0.6 * params.threshold), snr_hi),
            fit_kwargs=kwargs,
            forced=(np.asarray(fx, float), np.asarray(fy, float)) if forced else None,
            real=tuple(np.asarray(cols[k], float) for k in ("x", "y", "flux")),
            radius=max(1.0, MATCH_RADIUS_FWHM * fwhm),
        )

    def draw(self, rng: np.random.Generator, n: int):
        """Positions, fluxes, and the image and variance with the stars added."""
        x, y = draw_positions(rng, n, self.image.shape, self.xy0, self.separation)
        ix = np.floor(x + 0.5).astype(int) - self.xy0[0]
        iy = np.floor(y + 0.5).astype(int) - self.xy0[1]
        keep = self.good[iy, ix]
        x, y, ix, iy = x[keep], y[keep], ix[keep], iy[keep]
        stamps = psf_stamps(self.psf, x, y)
        lo, hi = self.snr_range
        target = np.exp(rng.uniform(math.log(lo), math.log(hi), len(x)))
        flux = (
            flux_for_snr(target, stamps, self.variance[iy, ix], self.gain)
            if len(x)
            else np.zeros(0)
        )
        signal = render_stars(self.image.shape, self.xy0, x, y, flux, stamps)
        image, variance = add_stars(self.image, self.variance, signal, self.gain, rng)
        return x, y, flux, image, variance

    def measure(self, x, y, flux, image, variance, log) -> tuple[np.ndarray, np.ndarray]:
        """Fit the image with the stars; pulls and measured S/N of those recovered."""
        kw = dict(self.fit_kwargs, variance=variance, log=log)
        if self.forced is not None:
            n_forced = len(self.forced[0])
            kw.update(
                forced_x=np.concatenate([self.forced[0], x]),
                forced_y=np.concatenate([self.forced[1], y]),
            )
        fit = fit_image(image, **kw).columns
        if self.forced is not None:
            fi = np.asarray(fit["forced_index"])
            rows = np.full(len(x), -1)
            mine = fi >= n_forced
            rows[fi[mine] - n_forced] = np.flatnonzero(mine)
        else:
            rx, ry, rf = self.real
            match = match_to_truth(
                fit["x"],
                fit["y"],
                np.concatenate([rx, x]),
                np.concatenate([ry, y]),
                self.radius,
                flux=fit["flux"],
                truth_flux=np.concatenate([rf, flux]),
            )
            rows = match.truth_to_det[len(rx) :]
        found = rows >= 0
        f = np.asarray(fit["flux"], float)[rows[found]]
        e = np.asarray(fit["flux_err_stat"], float)[rows[found]]
        with np.errstate(divide="ignore", invalid="ignore"):
            return (f - flux[found]) / e, f / e


def calibrate_flux_errors(
    result: FitResult,
    image: np.ndarray,
    *,
    n_stars: int,
    separation_fwhm: float = 6.0,
    seed: int = 0,
    gain: float | None = None,
    log: logging.Logger | None = None,
    **fit_kwargs,
) -> ErrorCalibration:
    """Calibrate the flux errors of ``result`` with artificial stars; ``flux_err`` is rescaled.

    Parameters
    ----------
    result : `~lsst.meas.crowdsource.engine.FitResult`
        The fit of ``image``; its ``flux_err`` column is replaced by
        ``flux_err_stat`` times `ErrorCalibration.factor` (in place).
    image : `numpy.ndarray`
        The image that was fit.
    n_stars : `int`
        Artificial stars to measure, over as many rounds (fits) as
        `calibration_rounds` needs to keep them ``separation_fwhm`` apart.
    separation_fwhm : `float`
        Smallest distance between two artificial stars, in FWHM of the PSF.
    seed : `int`
        Seed of the positions, fluxes and photon noise.
    gain : `float`, optional
        Electrons per image unit, for the stars' photon noise (default: read
        off the variance plane, `~lsst.meas.crowdsource.artificial_stars.estimate_gain`).
    log : `logging.Logger`, optional
        Progress messages (the calibration's own fits log at DEBUG).
    **fit_kwargs
        Everything else that was passed to
        `~lsst.meas.crowdsource.engine.fit_image` for ``result``
        (``variance`` or ``weight``, ``psf``, ``params``, ``bad``, forced
        positions, ...).  In forced mode without ``find_new`` the artificial
        stars are forced at their true positions together with the targets.

    Returns
    -------
    calibration : `ErrorCalibration`
    """
    log = log or logging.getLogger(__name__)
    fit_kwargs.pop("log", None)
    setting = _Injection.prepare(result, image, gain, fit_kwargs, separation_fwhm)
    if n_stars <= 0 or not setting.good.any():
        return fit_error_scale(np.zeros(0), np.zeros(0))
    rounds, per_round = calibration_rounds(n_stars, image.shape, setting.separation)
    log.info(
        "Calibrating the flux errors with %d artificial stars (S/N %.0f-%.0f) in %d round(s).",
        rounds * per_round,
        *setting.snr_range,
        rounds,
    )
    rng = np.random.default_rng(seed)
    quiet = _Quiet(log, {})
    pulls, snrs, n_injected = [], [], 0
    for k in range(rounds):
        x, y, flux, im, var = setting.draw(rng, per_round)
        pull, snr = setting.measure(x, y, flux, im, var, quiet)
        pulls.append(pull)
        snrs.append(snr)
        n_injected += len(x)
        log.info(
            "Error calibration round %d/%d: %d of %d artificial stars recovered.",
            k + 1,
            rounds,
            len(pull),
            len(x),
        )
    pull, snr = np.concatenate(pulls), np.concatenate(snrs)
    cal = dataclasses.replace(
        fit_error_scale(snr, pull),
        n_injected=n_injected,
        n_recovered=int(np.isfinite(pull).sum()),
        rounds=rounds,
        star_snr=snr,
        star_pull=pull,
    )
    if not cal.valid:
        log.warning(
            "Only %d artificial stars recovered: too few to calibrate the flux errors, "
            "which stay statistical.",
            cal.n_recovered,
        )
        return cal
    cols = result.columns
    stat = np.asarray(cols["flux_err_stat"], float)
    with np.errstate(divide="ignore", invalid="ignore"):
        cols["flux_err"] = stat * cal.factor(np.asarray(cols["flux"], float) / stat)
    at = np.array([10.0, 30.0, 100.0, 300.0, 1000.0])
    log.info(
        "Flux errors calibrated from %d artificial stars: factor %s at S/N %s.",
        cal.n_recovered,
        ", ".join(f"{v:.2f}" for v in cal.factor(at)),
        ", ".join(f"{v:.0f}" for v in at),
    )
    return cal
