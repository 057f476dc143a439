"""Artificial stars: where they go, how they are drawn into an image, how they are scored.

The pieces of an artificial-star test that need no task and no butler, used
by `lsst.meas.crowdsource.injection` (and by the benchmarks, to score the
true stars of a simulation the same way):

- `draw_positions`: uniform positions over the image, no two closer than a
  given distance (dart throwing);
- `psf_stamps`, `render_stars`: unit-flux PSF stamps at pixel centres and
  the image of stars at sub-pixel positions, shifted with the engine's
  Lanczos kernel (`lsst.meas.crowdsource.engine.interpolation`), the same
  way the fit renders its model;
- `estimate_gain`, `add_stars`: the exposure's gain read off its variance
  plane, and the stars added with their photon noise (Gaussian of variance
  ``signal / gain`` per pixel) and their variance;
- `local_density`, `crowding`, `isolated_snr`, `flux_for_snr`: what
  describes each artificial star's surroundings;
- `summarize`, `completeness_magnitude`: completeness, flux bias, robust
  scatter and pull width per magnitude bin, with their binomial and sampling
  errors, and the magnitude of 50 % completeness;
- `compare_summaries`: two summaries bin by bin (artificial stars against
  the truth of a simulation), each difference in units of its error.

Positions follow afw (x column, y row, pixel centres at integers, PARENT
coordinates with origin ``xy0``).  Fluxes are in image units.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.spatial import cKDTree

from .catalog import Column, fill_table
from .engine.interpolation import shift_stamps
from .matching import median_error, robust_scatter, robust_scatter_error

__all__ = [
    "AB_ZERO_NJY",
    "SUMMARY_COLUMNS",
    "add_stars",
    "compare_summaries",
    "completeness_magnitude",
    "crowding",
    "draw_positions",
    "estimate_gain",
    "flux_for_snr",
    "isolated_snr",
    "local_density",
    "psf_at_centre",
    "psf_stamps",
    "render_stars",
    "summarize",
    "zero_point",
]

#: AB magnitude of 1 nJy: ``m = 31.4 - 2.5 log10(f / nJy)``.
AB_ZERO_NJY = 31.4

SUMMARY_COLUMNS = [
    Column("magMin", "f8", "mag", "Bright edge of the magnitude bin (injected magnitude)."),
    Column("magMax", "f8", "mag", "Faint edge of the magnitude bin."),
    Column("nInjected", "i8", "", "Artificial stars injected in the bin."),
    Column("nRecovered", "i8", "", "Of which recovered (matched one to one)."),
    Column("completeness", "f8", "", "nRecovered / nInjected."),
    Column(
        "completenessErr",
        "f8",
        "",
        "Binomial error of completeness, sqrt(p (1 - p) / n) with p kept half a star from 0 and 1.",
    ),
    Column("nFlux", "i8", "", "Recovered stars with a finite flux and a positive error."),
    Column("fluxBias", "f8", "", "Median of (recovered - injected) / injected flux."),
    Column(
        "fluxBiasErr", "f8", "", "Sampling error of fluxBias: sqrt(pi / 2) fluxScatter / sqrt(n)."
    ),
    Column("fluxScatter", "f8", "", "1.4826 MAD of (recovered - injected) / injected flux."),
    Column(
        "fluxScatterErr", "f8", "", "Sampling error of fluxScatter: 1.166 fluxScatter / sqrt(n)."
    ),
    Column("pullMedian", "f8", "", "Median of (recovered - injected) / reported flux error."),
    Column("pullScatter", "f8", "", "1.4826 MAD of the pulls: 1 when the errors are right."),
    Column("pullScatterErr", "f8", "", "Sampling error of pullScatter."),
]


# --------------------------------------------------------------------------
# Positions and magnitudes
# --------------------------------------------------------------------------


def draw_positions(
    rng: np.random.Generator,
    n: int,
    shape: tuple[int, int],
    xy0: tuple[int, int] = (0, 0),
    min_separation: float = 0.0,
    max_batches: int = 50,
) -> tuple[np.ndarray, np.ndarray]:
    """Uniform positions over the image, no two closer than ``min_separation``.

    Candidates are drawn in batches and accepted in the order drawn when no
    accepted position lies within ``min_separation`` (dart throwing), until
    ``n`` are accepted or ``max_batches`` batches are used up (a packed image
    gets fewer than ``n``).

    Parameters
    ----------
    rng : `numpy.random.Generator`
        Random numbers (the result is a deterministic function of its state).
    n : `int`
        Number of positions wanted.
    shape : `tuple` [`int`, `int`]
        Image shape (rows, columns); positions cover the pixels' full extent,
        ``x0 - 0.5 <= x < x0 + nx - 0.5``.
    xy0 : `tuple` [`int`, `int`]
        PARENT coordinates of the first pixel.
    min_separation : `float`
        Smallest distance (pixels) between two positions.
    max_batches : `int`
        Batches of ``2 n`` candidates to try at most.

    Returns
    -------
    x, y : `numpy.ndarray`
        At most ``n`` positions (PARENT pixels).
    """
    ny, nx = shape
    lo = np.array([xy0[0] - 0.5, xy0[1] - 0.5])
    hi = lo + np.array([nx, ny])
    accepted = np.empty((0, 2))
    for _ in range(max_batches if n > 0 else 0):
        cand = rng.uniform(lo, hi, size=(2 * n, 2))
        if min_separation > 0:
            if len(accepted):
                dist, _ = cKDTree(accepted).query(cand)
                cand = cand[dist >= min_separation]
            keep = np.ones(len(cand), bool)
            for i, j in sorted(cKDTree(cand).query_pairs(min_separation)):
                if keep[i]:
                    keep[j] = False  # j was drawn after i, which stays
            cand = cand[keep]
        accepted = np.concatenate([accepted, cand[: n - len(accepted)]])
        if len(accepted) >= n:
            break
    return accepted[:, 0].copy(), accepted[:, 1].copy()


def zero_point(njy_per_count: float | None, uncalibrated: float) -> float:
    """Magnitude zero point: ``m = zero_point - 2.5 log10(flux in image units)``.

    AB (`AB_ZERO_NJY` - 2.5 log10 ``njy_per_count``) when the image has a
    photometric calibration, else ``uncalibrated``.
    """
    if njy_per_count is not None and np.isfinite(njy_per_count) and njy_per_count > 0:
        return AB_ZERO_NJY - 2.5 * float(np.log10(njy_per_count))
    return float(uncalibrated)


# --------------------------------------------------------------------------
# Drawing stars
# --------------------------------------------------------------------------


def psf_stamps(
    psf, x: np.ndarray, y: np.ndarray, size: int | None = None, cell: float | None = None
) -> np.ndarray:
    """Unit-sum PSF stamps centred on their central pixel, one per position.

    Parameters
    ----------
    psf : callable, array_like or object with ``stamp(x, y)``
        ``psf(x, y)`` -> stamp (`lsst.meas.crowdsource.io.inputs.ExposureInputs.psf`),
        one stamp for every position, or a fitted PSF
        (`~lsst.meas.crowdsource.engine.psf_io.ParentFramePsf`).
    x, y : `numpy.ndarray`
        PARENT positions.
    size : `int`, optional
        Odd size to crop the stamps to (default: the smallest stamp's).
    cell : `float`, optional
        Evaluate the PSF once per square cell of this side (pixels), at the
        centre of the cell's positions, and give every position its cell's
        stamp (for many positions, where the PSF varies slowly).

    Returns
    -------
    stamps : `numpy.ndarray`, shape (N, S, S)
    """
    x = np.atleast_1d(np.asarray(x, float))
    y = np.atleast_1d(np.asarray(y, float))
    if not (hasattr(psf, "stamp") or callable(psf)):
        stamps = [np.asarray(psf, float)] * len(x)
    elif cell is not None and len(x):
        keys = np.column_stack([np.floor(x / cell), np.floor(y / cell)])
        _, which = np.unique(keys, axis=0, return_inverse=True)
        which = np.asarray(which).ravel()
        cx = np.bincount(which, weights=x) / np.bincount(which)
        cy = np.bincount(which, weights=y) / np.bincount(which)
        return psf_stamps(psf, cx, cy, size)[which]
    else:
        at = psf.stamp if hasattr(psf, "stamp") else psf
        stamps = [np.asarray(at(float(xi), float(yi)), float) for xi, yi in zip(x, y)]
    smallest = min((s.shape[0] for s in stamps), default=1)
    size = smallest if size is None else min(int(size), smallest)
    out = np.empty((len(stamps), size, size))
    for k, s in enumerate(stamps):
        c, h = s.shape[0] // 2, size // 2
        out[k] = s[c - h : c + h + 1, c - h : c + h + 1]
    total = out.sum(axis=(1, 2))
    out /= np.where(total > 0, total, 1.0)[:, None, None]
    return out


def _stamp_pixels(shape, xy0, x, y, size):
    """Array indices of each stamp's pixels (centred on the nearest pixel) and which are inside."""
    ny, nx = shape
    half = size // 2
    off = np.arange(-half, half + 1)
    cx = np.floor(x + 0.5).astype(np.int64) - xy0[0]
    cy = np.floor(y + 0.5).astype(np.int64) - xy0[1]
    ix = np.broadcast_to(cx[:, None, None] + off[None, None, :], (len(x), size, size))
    iy = np.broadcast_to(cy[:, None, None] + off[None, :, None], (len(x), size, size))
    inside = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny)
    return iy, ix, inside


def _shifted(stamps: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Stamps of stars at ``x, y``, on pixels centred on the nearest pixel."""
    if len(x) == 0:
        return stamps
    return shift_stamps(stamps, x - np.floor(x + 0.5), y - np.floor(y + 0.5))


def render_stars(
    shape: tuple[int, int],
    xy0: tuple[int, int],
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    stamps: np.ndarray,
) -> np.ndarray:
    """The image of stars: each stamp shifted to its sub-pixel position, times its flux.

    Parameters
    ----------
    shape, xy0
        Image shape (rows, columns) and PARENT origin.
    x, y, flux : `numpy.ndarray`
        PARENT positions and total fluxes.
    stamps : `numpy.ndarray`, shape (N, S, S)
        Unit-sum PSF stamps centred on their central pixel (`psf_stamps`).

    Returns
    -------
    image : `numpy.ndarray`
        ``float64``, of ``shape``; the parts of stamps off the image are lost.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    image = np.zeros(shape)
    if len(x) == 0:
        return image
    shifted = _shifted(stamps, x, y) * np.asarray(flux, float)[:, None, None]
    iy, ix, inside = _stamp_pixels(shape, xy0, x, y, stamps.shape[-1])
    flat = iy[inside] * shape[1] + ix[inside]
    image += np.bincount(flat, weights=shifted[inside], minlength=image.size).reshape(shape)
    return image


def estimate_gain(image: np.ndarray, variance: np.ndarray, good: np.ndarray) -> float:
    """Gain (electrons per image unit) from the variance plane: ``image ~ gain * variance + c``.

    The median image value in 40 quantile bins of the variance of the good
    pixels, fit by a straight line.  Binned by the variance (not by the
    noisy image) so that a variance plane computed from the expected signal
    (a simulation) and one computed from the image itself (ISR) both give
    the slope without the bias of a regression on a noisy variable.

    Returns
    -------
    gain : `float`
        `numpy.inf` when the variance does not grow with the signal (no
        photon-noise term can be inferred).
    """
    ok = good & np.isfinite(image) & np.isfinite(variance) & (variance > 0)
    v = np.asarray(variance, float)[ok]
    im = np.asarray(image, float)[ok]
    if v.size < 100:
        return float("inf")
    edges = np.unique(np.quantile(v, np.linspace(0.001, 0.999, 41)))
    if len(edges) < 3:
        return float("inf")
    which = np.clip(np.searchsorted(edges, v, side="right") - 1, 0, len(edges) - 2)
    keep = (v >= edges[0]) & (v <= edges[-1])
    which, v, im = which[keep], v[keep], im[keep]
    order = np.argsort(which, kind="stable")
    splits = np.flatnonzero(np.diff(which[order])) + 1
    vb = np.array([np.median(p) for p in np.split(v[order], splits)])
    ib = np.array([np.median(p) for p in np.split(im[order], splits)])
    if len(vb) < 3 or np.ptp(vb) <= 0:
        return float("inf")
    slope = np.polyfit(vb, ib, 1)[0]
    return float(slope) if np.isfinite(slope) and slope > 0 else float("inf")


def add_stars(
    image: np.ndarray,
    variance: np.ndarray,
    signal: np.ndarray,
    gain: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """The image and variance with stars added, with their photon noise.

    Each pixel gets ``signal`` plus Gaussian noise of variance
    ``signal / gain`` (the Poisson noise of the stars' electrons; the noise
    of the sky and of the real stars is already in the image), and its
    variance grows by the same amount, as the variance plane of an image
    with those stars would.

    Returns
    -------
    image, variance : `numpy.ndarray`
        New arrays, in the input dtypes.
    """
    extra = np.clip(signal, 0.0, None) / gain if np.isfinite(gain) and gain > 0 else 0.0
    noise = rng.standard_normal(np.shape(image)) * np.sqrt(extra)
    new_image = (image + signal + noise).astype(np.asarray(image).dtype)
    new_var = (variance + extra).astype(np.asarray(variance).dtype)
    return new_image, new_var


# --------------------------------------------------------------------------
# Surroundings
# --------------------------------------------------------------------------


def local_density(
    x: np.ndarray, y: np.ndarray, ref_x: np.ndarray, ref_y: np.ndarray, radius: float
) -> np.ndarray:
    """Reference positions within ``radius`` of each position, per square pixel."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(ref_x) & np.isfinite(ref_y)
    if not ok.any() or len(x) == 0:
        return np.zeros(len(x))
    tree = cKDTree(np.column_stack([np.asarray(ref_x)[ok], np.asarray(ref_y)[ok]]))
    counts = tree.query_ball_point(np.column_stack([x, y]), radius, return_length=True)
    return np.asarray(counts, float) / (np.pi * radius**2)


def crowding(
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    stamps: np.ndarray,
    others: np.ndarray,
    xy0: tuple[int, int] = (0, 0),
) -> np.ndarray:
    """PSF-weighted fraction of the light at each star that comes from other sources.

    ``sum(p R) / (sum(p R) + flux sum(p^2))`` over the star's stamp ``p``,
    ``R`` being the image of the other sources (no sky): 0 for an isolated
    star, towards 1 for a star drowned in its neighbours' light (one minus
    crowdsource's ``fracflux`` with the true flux).
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) == 0:
        return np.zeros(0)
    p = _shifted(stamps, x, y)
    iy, ix, inside = _stamp_pixels(others.shape, xy0, x, y, stamps.shape[-1])
    neighbour = np.where(inside, others[np.where(inside, iy, 0), np.where(inside, ix, 0)], 0.0)
    light = np.sum(p * neighbour, axis=(1, 2))
    own = np.asarray(flux, float) * np.sum(p * p * inside, axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.clip(light / (light + own), 0.0, 1.0)


def isolated_snr(
    flux: np.ndarray, stamps: np.ndarray, variance: np.ndarray | float, gain: float
) -> np.ndarray:
    """S/N of a PSF fit of each star alone: ``flux sqrt(sum p^2 / (v + flux p / gain))``.

    Parameters
    ----------
    flux : `numpy.ndarray`
        Fluxes (image units).
    stamps : `numpy.ndarray`, shape (N, S, S) or (S, S)
        Unit-sum PSF stamps.
    variance : `float` or `numpy.ndarray`
        Pixel variance without the star: a number, one per star, or stamps.
    gain : `float`
        Electrons per image unit (`numpy.inf`: no photon noise of the star).
    """
    flux = np.atleast_1d(np.asarray(flux, float))
    p = np.asarray(stamps, float)
    p = p[None] if p.ndim == 2 else p
    v = np.asarray(variance, float)
    v = v.reshape(-1, 1, 1) if v.ndim == 1 else v
    own = flux[:, None, None] * p / gain if np.isfinite(gain) and gain > 0 else 0.0
    return flux * np.sqrt(np.sum(p * p / (v + own), axis=(1, 2)))


def flux_for_snr(snr, stamp: np.ndarray, variance, gain: float):
    """The flux whose `isolated_snr` is ``snr`` (fixed-point iteration, converges fast).

    ``snr`` a number with one ``stamp`` (S, S) and one ``variance``: a `float`;
    ``snr`` an array with one stamp and one variance per star: an array.
    """
    scalar = np.ndim(snr) == 0
    snr = np.atleast_1d(np.asarray(snr, float))
    p = np.asarray(stamp, float)
    p = np.broadcast_to(p, (len(snr),) + p.shape) if p.ndim == 2 else p
    v = np.broadcast_to(np.asarray(variance, float), snr.shape)
    flux = snr / np.sqrt(np.sum(p * p, axis=(1, 2)) / v)
    for _ in range(50):
        new = flux * snr / isolated_snr(flux, p, v, gain)
        done = np.all(np.abs(new - flux) <= 1e-9 * np.abs(flux))
        flux = new
        if done:
            break
    return float(flux[0]) if scalar else flux


# --------------------------------------------------------------------------
# Scores
# --------------------------------------------------------------------------


def summarize(
    mag: np.ndarray,
    recovered: np.ndarray,
    true_flux: np.ndarray,
    flux: np.ndarray,
    flux_err: np.ndarray,
    edges: np.ndarray,
):
    """Completeness, flux bias, robust scatter and pull width per magnitude bin.

    The same statistics serve the artificial stars (binned by injected
    magnitude) and the true stars of a simulation (by true magnitude), so
    that the two can be compared bin by bin.

    Parameters
    ----------
    mag : `numpy.ndarray`
        Injected (or true) magnitude of every star.
    recovered : `numpy.ndarray` [`bool`]
        Whether each was matched.
    true_flux, flux, flux_err : `numpy.ndarray`
        Injected flux, recovered flux and its reported error (NaN where not
        recovered).
    edges : `numpy.ndarray`
        Bin edges, increasing; a star belongs to ``[edges[i], edges[i+1])``.

    Returns
    -------
    summary : `astropy.table.Table`
        One row per bin, `SUMMARY_COLUMNS`.
    """
    mag = np.asarray(mag, float)
    recovered = np.asarray(recovered, bool)
    t, f, e = (np.asarray(a, float) for a in (true_flux, flux, flux_err))
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = (f - t) / t
        pull = np.where(e > 0, (f - t) / e, np.nan)
    usable = recovered & np.isfinite(frac) & np.isfinite(pull)
    rows: dict[str, list] = {c.name: [] for c in SUMMARY_COLUMNS}
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = (mag >= lo) & (mag < hi)
        n, k = int(sel.sum()), int(np.sum(sel & recovered))
        p = k / n if n else np.nan
        q = np.clip(p, 0.5 / n, 1 - 0.5 / n) if n else np.nan
        m = sel & usable
        nf = int(m.sum())
        scatter, pscatter = robust_scatter(frac[m]), robust_scatter(pull[m])
        values = (lo, hi, n, k, p, np.sqrt(q * (1 - q) / n) if n else np.nan, nf)
        values += (np.median(frac[m]) if nf else np.nan, median_error(scatter, nf))
        values += (scatter, robust_scatter_error(scatter, nf))
        values += (np.median(pull[m]) if nf else np.nan, pscatter)
        values += (robust_scatter_error(pscatter, nf),)
        for c, value in zip(SUMMARY_COLUMNS, values):
            rows[c.name].append(value)
    return fill_table(SUMMARY_COLUMNS, rows)


def completeness_magnitude(summary, level: float = 0.5) -> float:
    """Magnitude at which the completeness falls through ``level``.

    Going from bright to faint bins, the first bin below ``level`` after a
    bin at or above it; linear interpolation between the two bin centres.
    NaN when the completeness never reaches ``level`` or never falls below.

    Parameters
    ----------
    summary : `astropy.table.Table`
        `summarize` output (``magMin``, ``magMax``, ``completeness``).
    level : `float`
        Completeness level (0.5: the 50 % completeness magnitude).
    """
    centre = 0.5 * (np.asarray(summary["magMin"], float) + np.asarray(summary["magMax"], float))
    comp = np.asarray(summary["completeness"], float)
    ok = np.isfinite(comp)
    centre, comp = centre[ok], comp[ok]
    above = np.flatnonzero(comp >= level)
    if not len(above):
        return float("nan")
    below = np.flatnonzero((comp < level) & (np.arange(len(comp)) > above[0]))
    if not len(below):
        return float("nan")
    i = below[0]
    c0, c1 = comp[i - 1], comp[i]
    return float(centre[i - 1] + (c0 - level) / (c0 - c1) * (centre[i] - centre[i - 1]))


def compare_summaries(a, b, min_stars: int = 15):
    """Two summaries of the same bins compared, each difference in units of its error.

    Completeness: the two-proportion z of a binomial test, ``(p_a - p_b) /
    sqrt(p (1 - p) (1 / n_a + 1 / n_b))`` with the pooled ``p``; flux bias
    and scatter: the difference over the two sampling errors added in
    quadrature.  Bins where either summary has fewer than ``min_stars`` stars
    (recovered stars, for the bias and scatter) get NaN.

    Parameters
    ----------
    a, b : `astropy.table.Table`
        `summarize` outputs with the same bins.
    min_stars : `int`
        Fewest stars per bin and summary for a comparison.

    Returns
    -------
    comparison : `astropy.table.Table`
        ``magMin``, ``magMax``, ``completenessDiff``, ``completenessZ``,
        ``fluxBiasDiff``, ``fluxBiasZ``, ``fluxScatterDiff``, ``fluxScatterZ``.
    """
    from astropy.table import Table

    na, nb = np.asarray(a["nInjected"], float), np.asarray(b["nInjected"], float)
    ka, kb = np.asarray(a["nRecovered"], float), np.asarray(b["nRecovered"], float)
    enough = (na >= min_stars) & (nb >= min_stars)
    flux_ok = enough & (np.asarray(a["nFlux"]) >= min_stars) & (np.asarray(b["nFlux"]) >= min_stars)
    out = Table({"magMin": a["magMin"], "magMax": a["magMax"]})
    with np.errstate(invalid="ignore", divide="ignore"):
        pooled = (ka + kb) / (na + nb)
        diff = ka / na - kb / nb
        sigma = np.sqrt(pooled * (1 - pooled) * (1 / na + 1 / nb))
        out["completenessDiff"] = np.where(enough, diff, np.nan)
        out["completenessZ"] = np.where(enough, np.where(sigma > 0, diff / sigma, 0.0), np.nan)
        for name in ("fluxBias", "fluxScatter"):
            d = np.asarray(a[name], float) - np.asarray(b[name], float)
            e = np.hypot(np.asarray(a[name + "Err"], float), np.asarray(b[name + "Err"], float))
            out[name + "Diff"] = np.where(flux_ok, d, np.nan)
            out[name + "Z"] = np.where(flux_ok, d / e, np.nan)
    return out


def psf_at_centre(psf: Callable | np.ndarray, shape, xy0) -> np.ndarray:
    """The unit-sum PSF stamp at the image centre."""
    ny, nx = shape
    return psf_stamps(psf, [xy0[0] + (nx - 1) / 2.0], [xy0[1] + (ny - 1) / 2.0])[0]
