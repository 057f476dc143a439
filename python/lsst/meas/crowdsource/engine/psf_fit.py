"""Estimating the PSF from the image.

Stars are cut out of the neighbour-subtracted image, shifted onto the
pixel grid with the same Lanczos kernel that renders the model, and
normalised by their fitted flux.  A polynomial in position is then fit to
every pixel of the core stamp with outlier rejection (order 0 is the
seed's median stamp).  The core is extended to the large stamp with a
measured wing profile of the bright stars, or a Moffat profile fit to the
core, blended over the outer few pixels of the core, so that bright stars
are modelled out to their far wings.

`refit_psf` is the pass loop's PSF step: it selects the PSF stars among
the sources with the seed's cuts, corrects each for its local sky and
fits the new PSF (`fit_psf`).  `TilePsf` is the PSF a tile's fit is using,
with the stamp and core sizes derived from its FWHM; `initial_psf` is the
start when the caller gives no PSF.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import ndimage, optimize

from .image import PixelFrame
from .interpolation import shift_stamps
from .nanstats import nanmedian_rows
from .params import FitParams
from .psf import (
    PixelPsf,
    central_crop,
    moffat_stamp,
    n_poly_terms,
    normalise_coeffs,
    odd_size,
    polynomial_terms,
    stamp_fwhm,
)
from .scene import gather, render_scene, resolve_stamp_sizes

if TYPE_CHECKING:
    from .measure import StampMeasurements
    from .sources import Sources

__all__ = [
    "TilePsf",
    "core_size",
    "extend_with_wings",
    "fit_moffat",
    "fit_psf",
    "initial_psf",
    "local_sky",
    "refit_psf",
    "wing_profile",
]

_log = logging.getLogger(__name__)


def fit_moffat(stamp: np.ndarray) -> tuple[float, float, float]:
    """Fit a circular Moffat ``amp * (1 + r^2/alpha^2)^-beta`` to a centred stamp.

    The fit is to *relative* residuals outside the central pixels, because
    the Moffat only serves to extend the wings: an ordinary least-squares
    fit is dominated by the core and gives far too steep wings.

    Returns ``(amp, alpha, beta)``.
    """
    s = stamp.shape[0]
    c = s // 2
    yy, xx = np.mgrid[0:s, 0:s] - c
    r2 = (xx * xx + yy * yy).ravel().astype(float)
    data = stamp.ravel()
    peak = max(float(stamp.max()), 1e-12)
    use = r2 >= 2.0
    r2, data = r2[use], data[use]
    scale = 0.05 * np.maximum(data, 0.0) + 1e-3 * peak
    fwhm = max(stamp_fwhm(stamp), 1.0)
    p0 = [peak, fwhm / 1.2, 3.0]

    def resid(p):
        amp, alpha, beta = p
        return (amp * (1 + r2 / alpha**2) ** (-beta) - data) / scale

    try:
        res = optimize.least_squares(resid, p0, bounds=([0, 0.3, 1.05], [np.inf, 50.0, 20.0]))
        return tuple(float(v) for v in res.x)
    except (ValueError, RuntimeError):
        return (p0[0], p0[1], p0[2])


def wing_profile(
    stamps: np.ndarray,
    usable: np.ndarray,
    dx: np.ndarray,
    dy: np.ndarray,
    flux: np.ndarray,
    r_min: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Azimuthally averaged PSF profile of bright stars beyond ``r_min``.

    Parameters
    ----------
    stamps : `numpy.ndarray`, shape (N, L, L)
        Neighbour-subtracted, sky-subtracted large stamps of bright stars.
    usable : `numpy.ndarray` [`bool`], shape (N, L, L)
        Pixels with data (not masked, on the image).
    dx, dy : `numpy.ndarray`
        Star positions relative to the stamp centres.
    flux : `numpy.ndarray`
        Fluxes the stamps are normalised by.
    r_min : `float`
        Inner radius of the profile.

    Returns
    -------
    radius, profile, error : `numpy.ndarray`
        Bin centres (1 px wide), flux-normalised surface brightness and its
        uncertainty, from the flux^2-weighted mean over stars after
        rejecting star profiles more than 5 MADs off the median in a bin.
    """
    n, size, _ = stamps.shape
    c = size // 2
    yy, xx = np.mgrid[0:size, 0:size] - c
    r = np.hypot(xx[None] - dx[:, None, None], yy[None] - dy[:, None, None])
    nb = int(np.ceil(r.max())) + 1
    rb = np.floor(r).astype(np.int64)
    keep = usable & (r >= r_min)
    norm = stamps / flux[:, None, None]
    star = np.repeat(np.arange(n), size * size).reshape(n, size, size)
    idx = (star * nb + rb)[keep]
    sums = np.bincount(idx, weights=norm[keep], minlength=n * nb).reshape(n, nb)
    cnt = np.bincount(idx, minlength=n * nb).reshape(n, nb)
    with np.errstate(invalid="ignore", divide="ignore"):
        prof = sums / cnt
    valid = cnt > 0
    w = np.broadcast_to((flux**2)[:, None], prof.shape) * valid
    with warnings.catch_warnings():
        # Bins no star reaches are all-NaN; they are dropped below.
        warnings.simplefilter("ignore", RuntimeWarning)
        med = np.nanmedian(np.where(valid, prof, np.nan), axis=0)
        mad = np.nanmedian(np.abs(np.where(valid, prof, np.nan) - med), axis=0) * 1.4826
    with np.errstate(invalid="ignore"):
        w = np.where(np.abs(prof - med) <= 5 * mad + 1e-30, w, 0.0)
    wsum = w.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(wsum > 0, (np.nan_to_num(prof) * w).sum(axis=0) / wsum, np.nan)
        var = (w * (np.nan_to_num(prof) - np.nan_to_num(mean)) ** 2).sum(axis=0) / wsum
        nstar = (w > 0).sum(axis=0)
        err = np.sqrt(var / np.maximum(nstar - 1, 1))
    radius = np.arange(nb) + 0.5
    ok = np.isfinite(mean) & (nstar >= 3) & (radius >= r_min)
    return radius[ok], mean[ok], err[ok]


def _wing_model(
    radius: np.ndarray, profile: np.ndarray, error: np.ndarray, r: np.ndarray
) -> np.ndarray | None:
    """Surface brightness at radii ``r`` from a measured wing profile.

    Over the unbroken run of bins measured with S/N > 3 from the inner edge
    the profile is used (interpolated); further out a power law fit to the
    outer half of that run takes over.
    Light beyond the large stamp is not modelled: extrapolating the power
    law further proved unstable (tail fractions of 1-6% from pass to pass on
    the same image), so the PSF is normalised within the large stamp (a
    Kolmogorov PSF has ~0.3% beyond 29 px at 3.5 px FWHM).
    Returns `None` when the profile is too poor to use.
    """
    good = (profile > 0) & (profile > 3 * error)
    # Only the contiguous run of well-measured bins from the inner edge: further
    # out, isolated "good" bins are sky and neighbour residuals (measured at
    # 512x512, 0.02 stars/px: bins beyond ~16 px at 2-4x the true profile,
    # which flattened the power law to a positive slope, so the wing fell back
    # to the Moffat and lost two thirds of the light beyond the core).
    first_bad = np.nonzero(~good)[0]
    if first_bad.size:
        good[first_bad[0] :] = False
    if good.sum() < 4:
        return None
    rg, pg = radius[good], profile[good]
    # Power law through the outer half of the well-measured bins, weighted
    # by their S/N.
    outer = rg >= np.median(rg)
    snr = (pg / error[good])[outer]
    slope, intercept = np.polyfit(np.log(rg[outer]), np.log(pg[outer]), 1, w=snr)
    if not slope < -1.0:
        return None
    r_last = rg.max()
    inner = np.interp(r, rg, pg)
    tail = np.exp(intercept) * np.maximum(r, 1e-3) ** slope
    return np.where(r <= r_last, inner, tail)


def extend_with_wings(
    coeffs: np.ndarray,
    large: int,
    blend: int = 3,
    profile: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    template: np.ndarray | None = None,
) -> np.ndarray:
    """Extend core coefficient stamps to ``large`` with a wing model.

    The wing is ``template`` when given (the unit-sum stamp of the PSF the
    caller gave, whose wing the refit keeps), else the measured bright-star
    ``profile`` (see `wing_profile`) when it is good enough, otherwise a
    Moffat fit to the constant term.  The constant term is blended into the
    wing over the outer ``blend`` pixels of the core; the varying terms fade
    to zero there.
    """
    core = coeffs.shape[-1]
    if large <= core:
        return normalise_coeffs(central_crop(coeffs, large))
    c = large // 2
    yy, xx = np.mgrid[0:large, 0:large] - c
    r = np.sqrt(xx * xx + yy * yy)
    wing = None
    if template is not None or profile is not None:
        wing = (
            central_crop(np.asarray(template, float), large)
            if template is not None
            else _wing_model(*profile, r)
        )
        if wing is not None:
            # Put the measured wing on the scale of the core stamp, matching
            # the two over the blend annulus.
            half = core // 2
            ring = (r >= half - blend) & (r <= half)
            padded0 = central_crop(coeffs[:1], large)[0]
            scale = padded0[ring].sum() / max(wing[ring].sum(), 1e-300)
            if not 0.5 < scale < 2.0:
                _log.debug("PSF wing disagrees with the core by %.2f; using a Moffat wing.", scale)
                wing = None
    if wing is None:
        amp, alpha, beta = fit_moffat(coeffs[0])
        wing = amp * (1 + r * r / alpha**2) ** (-beta)
    half = core // 2
    # Weight 1 inside radius (half - blend), 0 from radius half outwards.
    t = np.clip((half - r) / max(blend, 1), 0.0, 1.0)
    padded = central_crop(coeffs, large)
    out = padded * t[None]
    out[0] += (1 - t) * wing
    return normalise_coeffs(out)


def initial_psf(
    image: np.ndarray, weight: np.ndarray, saturated: np.ndarray, large: int, fwhm: float = 0.0
) -> PixelPsf:
    """A Moffat PSF whose FWHM is measured from bright isolated peaks.

    With ``fwhm > 0`` that FWHM is used instead of a measurement.
    """
    if fwhm <= 0:
        fwhm = _bright_star_fwhm(image, weight, saturated)
        if not np.isfinite(fwhm):
            fwhm = 3.0
            _log.warning(
                "Could not measure the FWHM from the image; starting from a %.1f px Moffat PSF.",
                fwhm,
            )
    return PixelPsf(moffat_stamp(large, fwhm, beta=3.0)[None], order=0)


def _bright_star_fwhm(
    image: np.ndarray, weight: np.ndarray, saturated: np.ndarray, half: int = 7, n_max: int = 100
) -> float:
    """`stamp_fwhm` of the median peak-normalised stamp of the brightest isolated peaks.

    Peaks above S/N 20 with no unusable pixel within ``half``; NaN when
    there are none (or fewer than 100 usable pixels).
    """
    good = (weight > 0) & ~saturated
    if good.sum() < 100:
        return float("nan")
    sky = np.median(image[good])
    sn = (image - sky) * np.sqrt(weight)
    peak = (sn == ndimage.maximum_filter(sn, size=2 * half + 1)) & (sn > 20) & good
    bad_near = ndimage.maximum_filter((~good).astype(np.uint8), size=2 * half + 1) > 0
    peak &= ~bad_near
    ny, nx = image.shape
    iy, ix = np.nonzero(peak)
    inside = (iy >= half) & (iy < ny - half) & (ix >= half) & (ix < nx - half)
    iy, ix = iy[inside], ix[inside]
    if iy.size == 0:
        return float("nan")
    order = np.argsort(-sn[iy, ix])[:n_max]
    iy, ix = iy[order], ix[order]
    off = np.arange(-half, half + 1)
    stamps = (image - sky)[
        iy[:, None, None] + off[None, :, None], ix[:, None, None] + off[None, None, :]
    ]
    stamps = stamps / stamps[:, half, half][:, None, None]
    return stamp_fwhm(np.median(stamps, axis=0))


def fit_psf(
    image_minus_others: np.ndarray,
    dx: np.ndarray,
    dy: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    current: PixelPsf,
    order: int,
    core: int,
    min_stars: int,
    bbox: tuple[float, float, float, float],
    profile: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    snr: np.ndarray | None = None,
    floor: float = 0.0,
    wing: np.ndarray | None = None,
) -> tuple[PixelPsf | None, int]:
    """Fit a new PSF to neighbour-subtracted stamps of selected stars.

    Parameters
    ----------
    image_minus_others : `numpy.ndarray`, shape (N, core, core)
        Stamps of the selected stars with their neighbours (and the sky)
        subtracted.
    dx, dy : `numpy.ndarray`
        Position of each star relative to its stamp's central pixel.
    x, y : `numpy.ndarray`
        Positions of the stars in the PSF model's coordinates.
    flux : `numpy.ndarray`
        Fitted fluxes of the stars.
    current : `PixelPsf`
        The PSF in use (gives the large stamp size).
    order : `int`
        Polynomial order of the spatial variation (reduced if there are
        too few stars: at least 10 stars per coefficient).
    core : `int`
        Size of the stamps.
    min_stars : `int`
        Fewer good stars than this returns `None` (keep the old PSF).
    bbox : `tuple`
        ``(x_min, y_min, x_max, y_max)`` the polynomial is normalised to.
    profile : `tuple`, optional
        Measured wing profile (`wing_profile`) to extend the core with.
    snr : `numpy.ndarray`, optional
        S/N of each star.  With a spatially varying PSF each star's stamp
        is weighted by ``1 / (1/snr^2 + floor^2)``: its normalised stamp
        is that much noisier, up to a ``floor`` for the neighbour and
        model errors every star shares.  Without, all stars weigh the same.
    floor : `float`
        Relative error floor of a normalised stamp (see ``snr``).
    wing : `numpy.ndarray`, optional
        Unit-sum stamp whose wing extends the core (`extend_with_wings`'s
        ``template``); it takes precedence over ``profile``.

    Returns
    -------
    psf : `PixelPsf` or `None`
        The new PSF.
    n_used : `int`
        Number of stars used.
    """
    n = len(x)
    if n < min_stars:
        return None, n
    centred = shift_stamps(image_minus_others, -dx, -dy) / flux[:, None, None]
    while order > 0 and n < 10 * n_poly_terms(order):
        order -= 1
    x0, y0, x1, y1 = bbox
    center = (0.5 * (x0 + x1), 0.5 * (y0 + y1))
    scale = max(0.5 * (x1 - x0), 0.5 * (y1 - y0), 1.0)
    flat = centred.reshape(n, -1)
    if order == 0:
        coeffs = np.median(flat, axis=0)[None]
        used = np.ones(n, dtype=bool)
    else:
        terms = polynomial_terms((x - center[0]) / scale, (y - center[1]) / scale, order)
        if snr is None:
            star_w = np.ones(n)
        else:
            s2 = np.clip(np.nan_to_num(np.asarray(snr, float), nan=0.0), 1e-3, 1e8) ** 2
            star_w = 1.0 / (1.0 / s2 + floor**2)
            star_w = star_w / star_w.max()
        coeffs, used = _robust_polynomial_fit(
            terms, flat, star_w, max(min_stars, 2 * n_poly_terms(order))
        )
    coeffs = coeffs.reshape(-1, core, core)
    if not coeffs[0].sum() > 0 or not np.all(np.isfinite(coeffs)):
        return None, n
    coeffs = extend_with_wings(coeffs, max(current.size, core), profile=profile, template=wing)
    new = PixelPsf(coeffs, order, center, scale, core)
    return new, int(used.sum())


def _robust_polynomial_fit(
    terms: np.ndarray, flat: np.ndarray, star_w: np.ndarray, min_kept: int
) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel polynomial fit of normalised stamps, with outlier rejection, median-centred.

    Order 0 does not come here: `fit_psf` takes the plain median stamp.

    A weighted least-squares fit with two rounds of outlier rejection gives
    the variation across the field; the constant term (``terms[:, 0]`` is
    1) is then moved by the weighted median residual of the stars (weights
    ``star_w``), pixel by pixel and smoothed over 3x3 pixels, so that once
    the variation is taken out the PSF is a median stamp.  The mean, even
    clipped at 4 MADs, takes in the light of the stars' unresolved
    neighbours: it broadened the core and made bright stars 0.7-2.4 % too
    bright on crowded fields (galsim PSF of FWHM 4 px given and refit,
    0.02-0.05 stars/px; median-centred, the bias over the Cramer-Rao bound
    of S/N >= 30 stars fell by 37-60 % at 0.05 stars/px: benchmarks/README,
    "The PSF refit, centred on a weighted median").  The median must
    be weighted: with equal weights the faint PSF stars of a nebulous field
    (their sky errors large against their flux) broadened the PSF further
    (what it measures of a true star: 1.09 -> 1.19; weighted: 0.99).  The
    shift is a smooth halo while the median of each pixel is noisier than
    the mean, hence the smoothing (unsmoothed: scatter over the CRB of
    S/N >= 30 stars 0.02-0.04 higher).  Iteratively reweighted least
    absolute deviations did as well as the median at 5-15 times the cost.

    Parameters
    ----------
    terms : `numpy.ndarray`, shape (N, K)
        Polynomial terms at each star's position.
    flat : `numpy.ndarray`, shape (N, npix)
        The stars' normalised, centred stamps, flattened.
    star_w : `numpy.ndarray`, shape (N,)
        Weight of each star (relative).
    min_kept : `int`
        Stars with many outlying pixels are left out only while at least
        this many remain.

    Returns
    -------
    coeffs : `numpy.ndarray`, shape (K, npix)
        Coefficients of the polynomial per pixel.
    used : `numpy.ndarray` [`bool`]
        Stars the final fit used.
    """
    n = len(flat)
    sw = np.sqrt(star_w)[:, None]
    use = np.ones(flat.shape, dtype=bool)
    used = np.ones(n, dtype=bool)
    for it in range(3):
        coeffs = _masked_lstsq(terms, flat, use & used[:, None], star_w)
        if it == 2:
            break
        # Outliers judged on residuals scaled to each star's noise.
        res = (flat - terms @ coeffs) * sw
        mad = np.median(np.abs(res[used]), axis=0) * 1.4826 + 1e-12
        use = np.abs(res) < 4 * mad[None, :]
        # A star with many outlying pixels (a blend, a misplaced centre:
        # 13% of PSF stars were more than 0.2 px off on a 384x384 field)
        # is left out entirely, not just those pixels.
        keep = use.mean(axis=1) > 0.9
        if keep.sum() >= min_kept:
            used = keep
    side = math.isqrt(flat.shape[1])
    shift = _weighted_median((flat - terms @ coeffs)[used], star_w[used]).reshape(side, side)
    coeffs[0] += ndimage.uniform_filter(shift, 3, mode="nearest").ravel()
    return coeffs, used


def _weighted_median(values: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted median of each column of ``values`` (rows weighted by ``weights``)."""
    order = np.argsort(values, axis=0)
    v = np.take_along_axis(values, order, axis=0)
    w = np.asarray(weights, float)[order]
    cum = np.cumsum(w, axis=0)
    half = 0.5 * cum[-1]
    k = np.argmax(cum >= half[None, :], axis=0)
    return v[k, np.arange(values.shape[1])]


def _masked_lstsq(
    terms: np.ndarray, values: np.ndarray, use: np.ndarray, row_weight: np.ndarray | None = None
) -> np.ndarray:
    """Per-column weighted least squares of ``values ~ terms @ c`` using only ``use``.

    All columns share ``terms``; each column has its own mask, so the normal
    equations are assembled per column in one einsum.  ``row_weight`` weighs
    the rows (stars).
    """
    w = use.astype(float)
    if row_weight is not None:
        w = w * row_weight[:, None]
    k = terms.shape[1]
    outer = (terms[:, :, None] * terms[:, None, :]).reshape(len(terms), k * k)
    ata = (w.T @ outer).reshape(-1, k, k)
    atb = (values * w).T @ terms
    ridge = 1e-10 * np.trace(ata, axis1=1, axis2=2)[:, None, None] * np.eye(terms.shape[1])
    sol = np.linalg.solve(ata + ridge, atb[..., None])[..., 0]
    return sol.T


def core_size(requested: int, fwhm: float, psf_size: int) -> int:
    """Size of the PSF core that varies over the field and is refit.

    ``requested`` is ``FitParams.psf_core_size``; 0 derives it from the
    FWHM (~2.5 FWHM in radius, at least 19 px).  Never larger than the PSF.
    """
    core = requested or max(odd_size(2 * 2.5 * fwhm + 1), 19)
    return min(core, psf_size)


@dataclass
class TilePsf:
    """The PSF a tile's fit is using, and the stamp sizes derived from its FWHM.

    Stamp and core sizes follow the FWHM they were derived from
    (``sized_for``); a refit PSF whose FWHM differs from it by more than
    10% re-derives them (sizes from a poor starting PSF would stay wrong: a
    5 px start on a 3.5 px field kept a 27 px core and came out 5% bright).

    Attributes
    ----------
    model : `PixelPsf`
        The PSF, at least as large as the largest stamp.
    fwhm : `float`
        Its FWHM (3 px when it cannot be measured).
    sizes : `list` [`int`]
        Stamp sizes, ascending (`resolve_stamp_sizes`).
    core : `int`
        Size of the core that is refit (`core_size`).
    sized_for : `float`
        The FWHM ``sizes`` and ``core`` were derived from.
    n_stars : `int`
        Stars used by the last refit (0 before any).
    wing : `numpy.ndarray` or `None`
        The given PSF's unit-sum stamp at its centre, whose wing every refit
        keeps beyond the core (``psf_keep_given_wing``); `None`: the refit
        measures the wing (no PSF given, or the option off).
    """

    model: PixelPsf
    fwhm: float
    sizes: list[int]
    core: int
    sized_for: float
    n_stars: int = 0
    wing: np.ndarray | None = None

    @classmethod
    def start(
        cls,
        psf: PixelPsf | None,
        params: FitParams,
        image: np.ndarray,
        weight: np.ndarray,
        saturated: np.ndarray,
    ) -> TilePsf:
        """The starting PSF: ``psf``, or a Moffat of the image's FWHM when `None`."""
        large = max(params.stamp_sizes) if max(params.stamp_sizes) > 0 else 59
        # The wing of a given PSF is kept; the starting Moffat's is only a guess.
        given = psf is not None and params.psf_keep_given_wing
        if psf is None:
            psf = initial_psf(image, weight, saturated, large, params.initial_fwhm)
        fwhm = psf.fwhm()
        if not np.isfinite(fwhm) or fwhm <= 0:
            fwhm = 3.0
        state = cls(psf, fwhm, [], 0, fwhm)
        state._size_for(fwhm, params)
        if given:
            state.wing = state.model.stamp(*state.model.center)
        return state

    def _size_for(self, fwhm: float, params: FitParams) -> None:
        self.sizes = resolve_stamp_sizes(params.stamp_sizes, fwhm)
        large = max(self.sizes)
        if self.model.size < large:
            m = self.model
            self.model = PixelPsf(
                extend_with_wings(m.coeffs, large), m.order, m.center, m.scale, m.core
            )
        self.core = core_size(params.psf_core_size, fwhm, self.model.size)
        self.sized_for = fwhm

    def derivative_size(self, params: FitParams) -> int:
        """Size of the central square of a stamp that carries position derivatives
        (``derivative_stamp_size``; 0: the core stamp size, ``sizes[1]``)."""
        if params.derivative_stamp_size > 0:
            return int(params.derivative_stamp_size)
        return self.sizes[1] if len(self.sizes) > 1 else self.sizes[0]

    def kernel(self) -> np.ndarray:
        """The matched filter's PSF stamp: at the model centre, the second stamp size."""
        size = self.sizes[1] if len(self.sizes) > 1 else self.sizes[0]
        return self.model.stamp(*self.model.center, size=size)

    def accepts(self, fwhm: float) -> bool:
        """Whether a refit PSF of this FWHM is plausible (within a factor 2)."""
        return 0.5 * self.fwhm < fwhm < 2.0 * self.fwhm

    def adopt(self, new: PixelPsf, fwhm: float, params: FitParams) -> None:
        """Use ``new`` (of FWHM ``fwhm``) from now on, resizing the stamps if needed."""
        self.model, self.fwhm = new, fwhm
        if abs(self.fwhm / self.sized_for - 1) > 0.1:
            self._size_for(self.fwhm, params)


def _psf_star_candidates(
    src: Sources,
    meas: StampMeasurements,
    snr: np.ndarray,
    params: FitParams,
    core: int,
    shape: tuple[int, int],
) -> np.ndarray:
    """Indices of the sources that pass the seed's PSF-star cuts, brightest kept."""
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
    return idx


@dataclass
class _PsfStars:
    """The PSF-star candidates with complete core stamps, one entry per star.

    ``dx``, ``dy``: the star's position relative to its stamp's central
    pixel; ``sky``: its local sky (`local_sky`); ``complete``: every pixel
    of its core stamp is usable.
    """

    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    snr: np.ndarray
    dx: np.ndarray
    dy: np.ndarray
    sky: np.ndarray
    complete: np.ndarray


def _bright_star_profile(
    stars: _PsfStars,
    resid: np.ndarray,
    weight: np.ndarray,
    psf: PixelPsf,
    params: FitParams,
    core: int,
    frame: PixelFrame,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """`wing_profile` of the (up to 200) brightest PSF stars on the large stamp.

    `None` when the PSF has no wing beyond the core or fewer than 10 stars
    are bright enough (``params.psf_wing_min_snr``).
    """
    if psf.size <= core:
        return None
    bright = np.nonzero(stars.complete & (stars.snr > params.psf_wing_min_snr))[0]
    bright = bright[np.argsort(-stars.snr[bright])][:200]
    if bright.size < 10:
        return None
    x, y, flux = stars.x[bright], stars.y[bright], stars.flux[bright]
    big = render_scene(
        x, y, np.zeros(bright.size, int), [psf.size], psf, resid.shape, False, frame
    )[0]
    big_stamps = gather(resid, big) + flux[:, None, None] * big.psf - stars.sky[bright, None, None]
    usable = big.valid & (gather(weight, big) > 0)
    return wing_profile(big_stamps, usable, stars.dx[bright], stars.dy[bright], flux, core // 2 - 3)


def _neighbour_subtracted(
    src: Sources,
    idx: np.ndarray,
    resid: np.ndarray,
    weight: np.ndarray,
    psf: PixelPsf,
    core: int,
    frame: PixelFrame,
) -> tuple[np.ndarray, np.ndarray]:
    """Core stamps of sources ``idx`` with their neighbours subtracted, and which are complete.

    The residual plus the source's own model (flux and derivative terms);
    a stamp is complete when every pixel is usable.
    """
    xs, ys = src.x[idx], src.y[idx]
    groups = render_scene(xs, ys, np.zeros(idx.size, int), [core], psf, resid.shape, True, frame)
    g = groups[0]
    own = (
        src.flux[idx, None, None] * g.psf
        + src.gx[idx, None, None] * g.dpsf_dx
        + src.gy[idx, None, None] * g.dpsf_dy
    )
    stamps = gather(resid, g) + own
    wst = gather(weight, g)
    return stamps, (wst > 0).all(axis=(1, 2))


def refit_psf(
    src: Sources,
    meas: StampMeasurements,
    snr: np.ndarray,
    resid: np.ndarray,
    weight: np.ndarray,
    psf: PixelPsf,
    params: FitParams,
    core: int,
    frame: PixelFrame,
    bbox: tuple[float, float, float, float],
    wing: np.ndarray | None = None,
) -> tuple[PixelPsf | None, int]:
    """Select PSF stars with the seed's cuts and fit a new PSF.

    Forced sources qualify too: a reference list (an object table) often
    holds every bright star, and leaving them out left no PSF star at all
    (0 instead of 18 on a 160x192 px, 0.01 stars/px field with every
    S/N > 20 star forced), so forced mode never refit the PSF.  Their
    stamps are aligned on the measured offsets like any other, and a wrong
    reference position fails the ``psf_max_shift`` cut.

    Parameters
    ----------
    src : `Sources`
        The sources, with the fit of this pass.
    meas : `StampMeasurements`
        Their measurements on neighbour-subtracted stamps.
    snr : `numpy.ndarray`
        Their S/N.
    resid : `numpy.ndarray`
        Image minus sky minus the model of every source.
    weight : `numpy.ndarray`
        Inverse variance.
    psf : `PixelPsf`
        The PSF in use.
    params : `FitParams`
        The PSF-star cuts and the polynomial order.
    core : `int`
        Size of the core to refit.
    frame : `PixelFrame`
        Where the array sits in the PSF model's frame.
    bbox : `tuple`
        ``(x_min, y_min, x_max, y_max)`` (PSF frame) the polynomial is
        normalised to.
    wing : `numpy.ndarray`, optional
        The given PSF's stamp, whose wing is kept (`TilePsf.wing`); the
        bright stars' wing is then not measured.

    Returns
    -------
    psf : `PixelPsf` or `None`
        The new PSF (`None`: too few stars, keep the old one).
    n_stars : `int`
        Number of stars used (or found, when too few).
    """
    idx = _psf_star_candidates(src, meas, snr, params, core, resid.shape)
    if idx.size < params.psf_min_stars:
        return None, int(idx.size)
    stamps, full = _neighbour_subtracted(src, idx, resid, weight, psf, core, frame)
    if full.sum() < params.psf_min_stars:
        return None, int(full.sum())
    xs, ys, flux = src.x[idx], src.y[idx], src.flux[idx]
    stars = _PsfStars(
        xs,
        ys,
        flux,
        snr[idx],
        # The star sits at its isolated-fit position relative to the stamp centre.
        (xs - np.round(xs)) + np.nan_to_num(meas.shift_x[idx]),
        (ys - np.round(ys)) + np.nan_to_num(meas.shift_y[idx]),
        # Each star's own local sky, from the median of its neighbour-subtracted
        # light in an outer annulus of the large stamp, where the PSF itself is
        # faint.  This removes the sky's response to bright stars' wings, which
        # would otherwise eat the wings of the new PSF pass after pass.
        local_sky(xs, ys, flux, resid, weight, psf),
        full,
    )
    stamps = stamps - stars.sky[:, None, None]
    profile = (
        None
        if wing is not None
        else _bright_star_profile(stars, resid, weight, psf, params, core, frame)
    )
    sel = stars.complete
    px, py = frame.to_parent(xs[sel], ys[sel])
    return fit_psf(
        stamps[sel],
        stars.dx[sel],
        stars.dy[sel],
        px,
        py,
        flux[sel],
        psf,
        params.psf_order,
        core,
        params.psf_min_stars,
        bbox,
        profile,
        stars.snr[sel],
        params.psf_snr_floor,
        wing,
    )


def local_sky(
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    resid: np.ndarray,
    weight: np.ndarray,
    psf: PixelPsf,
    width: int = 5,
) -> np.ndarray:
    """Median neighbour-subtracted level in the outer annulus of each star's large stamp.

    The annulus is the outer ``width`` pixels (in radius) of the PSF's
    full stamp.  The star's own light there (from the constant PSF, no
    sub-pixel shift: it is tiny) is added back to the residual before
    taking the median; a star with no usable pixel there gets 0.
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
    return np.nan_to_num(nanmedian_rows(vals))
