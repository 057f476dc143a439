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

import numpy as np
from scipy import optimize

from .interpolation import shift_stamps
from .psf import (PixelPsf, central_crop, moffat_stamp, n_poly_terms, normalise_coeffs,
                  polynomial_terms, stamp_fwhm)

__all__ = ["fit_psf", "initial_psf", "fit_moffat", "extend_with_wings"]

_log = logging.getLogger(__name__)


def fit_moffat(stamp: np.ndarray) -> tuple[float, float, float]:
    """Fit a circular Moffat ``amp * (1 + r^2/alpha^2)^-beta`` to a centred stamp.

    Returns ``(amp, alpha, beta)``.
    """
    s = stamp.shape[0]
    c = s // 2
    yy, xx = np.mgrid[0:s, 0:s] - c
    r2 = (xx * xx + yy * yy).ravel().astype(float)
    data = stamp.ravel()
    fwhm = max(stamp_fwhm(stamp), 1.0)
    p0 = [max(stamp.max(), 1e-6), fwhm / 1.2, 3.0]

    def resid(p):
        amp, alpha, beta = p
        return amp * (1 + r2 / alpha ** 2) ** (-beta) - data

    try:
        res = optimize.least_squares(resid, p0, bounds=([0, 0.3, 1.05], [np.inf, 50.0, 20.0]))
        return tuple(float(v) for v in res.x)
    except (ValueError, RuntimeError):
        return (p0[0], p0[1], p0[2])


def extend_with_wings(coeffs: np.ndarray, large: int, blend: int = 3) -> np.ndarray:
    """Extend core coefficient stamps to ``large`` with a Moffat wing.

    The constant term is blended into a Moffat fit of itself over the outer
    ``blend`` pixels of the core; the varying terms fade to zero there.
    """
    core = coeffs.shape[-1]
    if large <= core:
        return normalise_coeffs(central_crop(coeffs, large))
    amp, alpha, beta = fit_moffat(coeffs[0])
    c = large // 2
    yy, xx = np.mgrid[0:large, 0:large] - c
    r = np.sqrt(xx * xx + yy * yy)
    wing = amp * (1 + r * r / alpha ** 2) ** (-beta)
    half = core // 2
    # Weight 1 inside radius (half - blend), 0 from radius half outwards.
    t = np.clip((half - r) / max(blend, 1), 0.0, 1.0)
    padded = central_crop(coeffs, large)
    out = padded * t[None]
    out[0] += (1 - t) * wing
    return normalise_coeffs(out)


def initial_psf(image: np.ndarray, weight: np.ndarray, saturated: np.ndarray, large: int,
                fwhm: float = 0.0) -> PixelPsf:
    """A Moffat PSF whose FWHM is measured from bright isolated peaks.

    With ``fwhm > 0`` that FWHM is used instead of a measurement.
    """
    if fwhm <= 0:
        fwhm = _measure_fwhm(image, weight, saturated)
        if not np.isfinite(fwhm):
            fwhm = 3.0
            _log.warning("Could not measure the FWHM from the image; starting from a "
                         "%.1f px Moffat PSF.", fwhm)
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
    stamps = (image - sky)[iy[:, None, None] + off[None, :, None], ix[:, None, None] + off[None, None, :]]
    stamps = stamps / stamps[:, half, half][:, None, None]
    return stamp_fwhm(np.median(stamps, axis=0))


def fit_psf(image_minus_others: np.ndarray, dx: np.ndarray, dy: np.ndarray, x: np.ndarray,
            y: np.ndarray, flux: np.ndarray, current: PixelPsf, order: int, core: int,
            min_stars: int, bbox: tuple[float, float, float, float]
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
        too few stars: at least 4 stars per coefficient).
    core : `int`
        Size of the stamps.
    min_stars : `int`
        Fewer good stars than this returns `None` (keep the old PSF).
    bbox : `tuple`
        ``(x_min, y_min, x_max, y_max)`` the polynomial is normalised to.

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
    while order > 0 and n < 4 * n_poly_terms(order):
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
        use = np.ones(flat.shape, dtype=bool)
        for _ in range(3):
            coeffs = _masked_lstsq(terms, flat, use)
            res = flat - terms @ coeffs
            mad = np.median(np.abs(res), axis=0) * 1.4826 + 1e-12
            use = np.abs(res) < 4 * mad[None, :]
        used = use.mean(axis=1) > 0.9
    coeffs = coeffs.reshape(-1, core, core)
    if not coeffs[0].sum() > 0 or not np.all(np.isfinite(coeffs)):
        return None, n
    coeffs = extend_with_wings(coeffs, max(current.size, core))
    new = PixelPsf(coeffs, order, center, scale, core)
    return new, int(used.sum())


def _masked_lstsq(terms: np.ndarray, values: np.ndarray, use: np.ndarray) -> np.ndarray:
    """Per-column least squares of ``values ~ terms @ c`` using only ``use``.

    All columns share ``terms``; each column has its own mask, so the normal
    equations are assembled per column in one einsum.
    """
    w = use.astype(float)
    ata = np.einsum("nk,nl,np->pkl", terms, terms, w)
    atb = np.einsum("nk,np->pk", terms, values * w)
    ridge = 1e-10 * np.trace(ata, axis1=1, axis2=2)[:, None, None] * np.eye(terms.shape[1])
    sol = np.linalg.solve(ata + ridge, atb[..., None])[..., 0]
    return sol.T
