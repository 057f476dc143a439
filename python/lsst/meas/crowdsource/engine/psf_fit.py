"""Estimating the PSF from the image.

Stars are cut out of the neighbour-subtracted image, shifted onto the
pixel grid with the same Lanczos kernel that renders the model, and
normalised by their fitted flux.  A polynomial in position is then fit to
every pixel of the core stamp with outlier rejection (order 0 is the
seed's median stamp).  The core is extended to the large stamp with a
Moffat profile fit to it, blended over the outer few pixels of the core,
so that bright stars are modelled out to their far wings.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np
from scipy import optimize

from .interpolation import shift_stamps
from .psf import (
    PixelPsf,
    central_crop,
    moffat_stamp,
    n_poly_terms,
    normalise_coeffs,
    polynomial_terms,
    stamp_fwhm,
)

__all__ = ["fit_psf", "initial_psf", "fit_moffat", "extend_with_wings"]

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
) -> np.ndarray:
    """Extend core coefficient stamps to ``large`` with a wing model.

    The wing is the measured bright-star ``profile`` (see `wing_profile`)
    when it is good enough, otherwise a Moffat fit to the constant term.
    The constant term is blended into the wing over the outer ``blend``
    pixels of the core; the varying terms fade to zero there.
    """
    core = coeffs.shape[-1]
    if large <= core:
        return normalise_coeffs(central_crop(coeffs, large))
    c = large // 2
    yy, xx = np.mgrid[0:large, 0:large] - c
    r = np.sqrt(xx * xx + yy * yy)
    wing = None
    if profile is not None:
        wing = _wing_model(*profile, r)
        if wing is not None:
            # Put the measured wing on the scale of the core stamp, matching
            # the two over the blend annulus.
            half = core // 2
            ring = (r >= half - blend) & (r <= half)
            padded0 = central_crop(coeffs[:1], large)[0]
            scale = padded0[ring].sum() / max(wing[ring].sum(), 1e-300)
            if not 0.5 < scale < 2.0:
                _log.debug(
                    "Measured PSF wing disagrees with the core by %.2f; using a Moffat wing.", scale
                )
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
        fwhm = _measure_fwhm(image, weight, saturated)
        if not np.isfinite(fwhm):
            fwhm = 3.0
            _log.warning(
                "Could not measure the FWHM from the image; starting from a %.1f px Moffat PSF.",
                fwhm,
            )
    return PixelPsf(moffat_stamp(large, fwhm, beta=3.0)[None], order=0)


def _measure_fwhm(image, weight, saturated, half=7, n_max=100) -> float:
    from scipy import ndimage

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
            if keep.sum() >= max(min_stars, 2 * n_poly_terms(order)):
                used = keep
    coeffs = coeffs.reshape(-1, core, core)
    if not coeffs[0].sum() > 0 or not np.all(np.isfinite(coeffs)):
        return None, n
    coeffs = extend_with_wings(coeffs, max(current.size, core), profile=profile)
    new = PixelPsf(coeffs, order, center, scale, core)
    return new, int(used.sum())


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
