"""Per-source measurements on neighbour-subtracted stamps.

For each source the residual image (image - sky - model of everything) is
cut out around it and its own model added back, which leaves the source
with its neighbours subtracted.  On that stamp we compute

* the position step: a weighted least-squares fit of flux and the PSF's x
  and y derivatives (one Gauss-Newton step).  Unlike the seed's
  light-weighted barycentre this is unbiased for any PSF and any weight
  image, so no empirical factor of two or additive bias table is needed;
  the step is bounded per pass;
* the isolated-fit flux and position (``fluxiso``, ``xiso``, ``yiso``);
* the flux fit together with a local constant background (``fluxlbs``);
* the quality figures of crowdsource: ``qf`` (PSF-weighted fraction of
  unmasked pixels), ``rchi2`` (PSF-weighted mean chi^2 of the residual),
  ``fracflux`` (PSF-weighted fraction of the model light that is this
  source's), the FWHM of the source from PSF-weighted second moments
  (`source_fwhm`), and SExtractor's ``spread_model`` with its uncertainty.

Also here: the usable fraction of a stamp before any fit
(`usable_fraction`, which decides whether a forced position is fit) and the
per-source pixel flags of the final pass (`stamp_flags`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .image import PixelFrame
from .psf import PixelPsf
from .scene import StampGroup, gather, render_scene

__all__ = [
    "StampMeasurements",
    "measure_sources",
    "source_fwhm",
    "stamp_flags",
    "usable_fraction",
]


@dataclass
class StampMeasurements:
    """Per-source results of `measure_sources` (arrays of length N)."""

    shift_x: np.ndarray
    shift_y: np.ndarray
    flux_iso: np.ndarray
    flux_lbs: np.ndarray
    flux_lbs_err: np.ndarray
    qf: np.ndarray
    rchi2: np.ndarray
    fracflux: np.ndarray
    fwhm: np.ndarray
    spread_model: np.ndarray
    spread_model_err: np.ndarray
    median_loss: np.ndarray
    n_good: np.ndarray

    @classmethod
    def allocate(cls, n: int) -> StampMeasurements:
        nan = np.full(n, np.nan)
        kw = {name: nan.copy() for name in cls.__dataclass_fields__}
        kw["n_good"] = np.zeros(n, dtype=np.int64)
        return cls(**kw)


def _solve_small(mat: np.ndarray, rhs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Batched solve; singular systems give NaN."""
    det_ok = np.abs(np.linalg.det(mat)) > 0
    safe = np.where(det_ok[:, None, None], mat, np.eye(mat.shape[-1]))
    sol = np.linalg.solve(safe, rhs[..., None])[..., 0]
    inv = np.linalg.inv(safe)
    sol[~det_ok] = np.nan
    inv[~det_ok] = np.nan
    return sol, inv


def measure_sources(
    groups: list[StampGroup],
    n_src: int,
    flux: np.ndarray,
    gx: np.ndarray | None,
    gy: np.ndarray | None,
    resid: np.ndarray,
    weight: np.ndarray,
    model: np.ndarray,
    broad_groups: list[StampGroup] | None = None,
) -> StampMeasurements:
    """Measure every source on its neighbour-subtracted stamp.

    Parameters
    ----------
    groups : `list` [`StampGroup`]
        Stamps with derivatives at the current positions.
    n_src : `int`
        Number of sources.
    flux, gx, gy : `numpy.ndarray`
        Current fit coefficients (``gx``/``gy`` may be `None`).
    resid : `numpy.ndarray`
        Image - sky - model of all sources.
    weight : `numpy.ndarray`
        Inverse variance.
    model : `numpy.ndarray`
        Model of all sources (no sky).
    broad_groups : `list` [`StampGroup`], optional
        Stamps of the PSF broadened for ``spread_model`` (same grouping).
    """
    out = StampMeasurements.allocate(n_src)
    for gi, g in enumerate(groups):
        i = g.index
        P = g.psf
        own = flux[i, None, None] * P
        if gx is not None and g.dpsf_dx is not None:
            own = own + gx[i, None, None] * g.dpsf_dx + gy[i, None, None] * g.dpsf_dy
        R = gather(resid, g)
        W = gather(weight, g)
        M = gather(model, g)
        D = R + own
        good = W > 0
        out.n_good[i] = good.sum(axis=(1, 2))

        def dot(a, b):
            return np.einsum("nab,nab->n", a * W, b)

        # Quality figures.
        psum = P.sum(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            pgood = (P * good).sum(axis=(1, 2))
            out.qf[i] = pgood / psum
            out.rchi2[i] = (P * R * R * W).sum(axis=(1, 2)) / pgood
            out.fracflux[i] = (P * own).sum(axis=(1, 2)) / (P * M).sum(axis=(1, 2))

        # Isolated fit of flux and derivatives: one Gauss-Newton step.
        if g.dpsf_dx is not None:
            basis = [P, g.dpsf_dx, g.dpsf_dy]
            mat = np.stack([np.stack([dot(a, b) for b in basis], -1) for a in basis], -2)
            rhs = np.stack([dot(a, D) for a in basis], -1)
            sol, _ = _solve_small(mat, rhs)
            with np.errstate(invalid="ignore", divide="ignore"):
                out.flux_iso[i] = sol[:, 0]
                out.shift_x[i] = sol[:, 1] / sol[:, 0]
                out.shift_y[i] = sol[:, 2] / sol[:, 0]
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                out.flux_iso[i] = dot(P, D) / dot(P, P)

        # Flux with a local constant background.
        one = np.ones_like(P)
        basis = [P, one]
        mat = np.stack([np.stack([dot(a, b) for b in basis], -1) for a in basis], -2)
        rhs = np.stack([dot(a, D) for a in basis], -1)
        sol, inv = _solve_small(mat, rhs)
        out.flux_lbs[i] = sol[:, 0]
        with np.errstate(invalid="ignore"):
            out.flux_lbs_err[i] = np.sqrt(inv[:, 0, 0])

        # Fraction of the flux that a local median would remove (diffuse
        # sources and residuals of bright neighbours lose most of it).
        med = (
            np.nanmedian(np.where(good, D, np.nan).reshape(len(i), -1), axis=1)
            if good.any()
            else np.zeros(len(i))
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            f_all = dot(P, D) / dot(P, P)
            f_med = dot(P, D - np.nan_to_num(med)[:, None, None]) / dot(P, P)
            out.median_loss[i] = 1.0 - f_med / f_all

        out.fwhm[i] = source_fwhm(P, D, good)

        # spread_model: how much better a slightly broadened PSF fits.
        if broad_groups is not None:
            G = broad_groups[gi].psf
            with np.errstate(invalid="ignore", divide="ignore"):
                a, bb = dot(G, D), dot(P, D)
                out.spread_model[i] = a / bb - dot(G, P) / dot(P, P)
                var = (dot(G, G) * bb**2 + dot(P, P) * a**2 - 2 * dot(G, P) * a * bb) / bb**4
                out.spread_model_err[i] = np.sqrt(np.maximum(var, 0.0))
    return out


def source_fwhm(P: np.ndarray, D: np.ndarray, good: np.ndarray) -> np.ndarray:
    """FWHM of each source from PSF-weighted second moments, the weighting deconvolved.

    Not the FWHM of a stamp (`~lsst.meas.crowdsource.engine.psf.stamp_fwhm`):
    the Gaussian-equivalent FWHM of the source itself, which for a point
    source is that of the PSF.  With ``P`` as the weight, the weighted
    second moment ``m`` of a Gaussian source of variance ``s^2`` under a
    Gaussian PSF of variance ``p^2`` gives ``1/s^2 = 2/m - 1/p^2``.

    Parameters
    ----------
    P : `numpy.ndarray`, shape (n, s, s)
        PSF stamps at the sources' positions.
    D : `numpy.ndarray`, shape (n, s, s)
        Neighbour-subtracted data stamps.
    good : `numpy.ndarray` [`bool`], shape (n, s, s)
        Usable pixels.

    Returns
    -------
    fwhm : `numpy.ndarray`
        NaN where the moments give no positive inverse variance.
    """
    s = P.shape[-1]
    off = np.arange(s) - s // 2
    # Positions relative to the source's sub-pixel centre.
    rx = off[None, None, :] - _subpixel(P, off, axis=2)[:, None, None]
    ry = off[None, :, None] - _subpixel(P, off, axis=1)[:, None, None]
    r2 = rx * rx + ry * ry
    with np.errstate(invalid="ignore", divide="ignore"):
        m_src = (P * D * good * r2).sum(axis=(1, 2)) / (P * D * good).sum(axis=(1, 2))
        m_psf = (P * P * r2).sum(axis=(1, 2)) / (P * P).sum(axis=(1, 2))
        inv_var = 2.0 / m_src - 1.0 / m_psf
        return np.where(inv_var > 0, 2.3548 / np.sqrt(inv_var), np.nan)


def usable_fraction(
    x: np.ndarray,
    y: np.ndarray,
    psf: PixelPsf,
    size: int,
    weight: np.ndarray,
    frame: PixelFrame,
    chunk: int = 4096,
) -> np.ndarray:
    """PSF-weighted fraction of usable pixels (weight > 0, on the image) in a stamp.

    The ``qf`` of positions before any fit: stamps of ``size`` at
    ``(x, y)`` (array coordinates; the PSF is evaluated at
    ``frame.to_parent(x, y)``), rendered ``chunk`` positions at a time.
    0 where the PSF sums to 0.
    """
    out = np.zeros(len(x))
    for s in range(0, len(x), chunk):
        sl = slice(s, s + chunk)
        g = render_scene(
            x[sl], y[sl], np.zeros(len(x[sl]), int), [size], psf, weight.shape, False, frame
        )[0]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[sl] = (g.psf * (gather(weight, g) > 0)).sum(axis=(1, 2)) / g.psf.sum(axis=(1, 2))
    return np.nan_to_num(out)


def stamp_flags(
    groups: list[StampGroup], n_src: int, saturated: np.ndarray, fwhm: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per source: whether its PSF core runs off the image, and whether its centre is saturated.

    The core is the central ``2 ceil(fwhm) + 1`` pixels of the stamp (at
    most the stamp).

    Returns
    -------
    edge, saturated_center : `numpy.ndarray` [`bool`]
    """
    edge = np.zeros(n_src, dtype=bool)
    sat_center = np.zeros(n_src, dtype=bool)
    for g in groups:
        c = g.size // 2
        h = min(c, int(np.ceil(fwhm)))
        edge[g.index] = (g.pix[:, c - h : c + h + 1, c - h : c + h + 1] < 0).any(axis=(1, 2))
        sat_center[g.index] = gather(saturated.astype(float), g)[:, c, c] > 0
    return edge, sat_center


def _subpixel(P: np.ndarray, off: np.ndarray, axis: int) -> np.ndarray:
    """Light-weighted centre of each stamp along an axis (for moments)."""
    other = 1 if axis == 2 else 2
    prof = P.sum(axis=other)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (prof * off[None, :]).sum(axis=1) / prof.sum(axis=1)
