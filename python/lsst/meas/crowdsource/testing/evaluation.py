"""Score a source catalog against simulation truth and the Cramér-Rao bound.

Used by the tests, the benchmarks and the demo:

* `match_to_truth` -- one-to-one matching of detections to true stars
  (defined in `lsst.meas.crowdsource.matching`, which the library's
  artificial-star tests use too; re-exported here with `Match` and
  `robust_scatter`).
* `score_catalog` -- completeness, spurious fraction, photometric and
  astrometric accuracy in bins of true S/N, and a summary for S/N > 5.
* `isolated_crb_flux_error` -- the flux-error bound of an isolated star.
* `crowded_crb_flux_error` -- the flux-error bound of each star in a joint
  fit of all stars (fluxes only, or fluxes and positions).

Pure numpy / scipy / astropy.  Positions are afw-style pixel coordinates
(x = column, y = row, pixel centres at integers, PARENT coordinates).
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_SNR_BINS",
    "Match",
    "match_to_truth",
    "score_catalog",
    "truth_recovery",
    "robust_scatter",
    "isolated_crb_flux_error",
    "crowded_crb_flux_error",
]

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from astropy.table import Table
from scipy import sparse
from scipy.sparse import linalg as splinalg
from scipy.spatial import cKDTree

from ..matching import Match, _as_1d, match_to_truth, robust_scatter

#: Default edges of the true-S/N bins used by `score_catalog`.
DEFAULT_SNR_BINS: tuple[float, ...] = (
    0.0,
    3.0,
    5.0,
    10.0,
    20.0,
    50.0,
    100.0,
    300.0,
    1000.0,
    np.inf,
)

# --------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------


def _median(values: np.ndarray) -> float:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return float(np.median(v)) if len(v) else float("nan")


def _stats(
    sel_truth: np.ndarray,
    match: Match,
    cat_x: np.ndarray,
    cat_y: np.ndarray,
    cat_flux: np.ndarray,
    cat_err: np.ndarray | None,
    tx: np.ndarray,
    ty: np.ndarray,
    tf: np.ndarray,
) -> dict[str, float]:
    """Statistics over the true stars selected by the boolean ``sel_truth``."""
    n_truth = int(np.count_nonzero(sel_truth))
    det = match.truth_to_det[sel_truth]
    idx_t = np.flatnonzero(sel_truth)[det >= 0]
    idx_d = det[det >= 0]
    n_m = len(idx_t)
    frac = (cat_flux[idx_d] - tf[idx_t]) / tf[idx_t]
    if cat_err is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            pull = (cat_flux[idx_d] - tf[idx_t]) / cat_err[idx_d]
        pull[~(cat_err[idx_d] > 0)] = np.nan
    else:
        pull = np.full(n_m, np.nan)
    dx = cat_x[idx_d] - tx[idx_t]
    dy = cat_y[idx_d] - ty[idx_t]
    return {
        "n_truth": n_truth,
        "n_matched": n_m,
        "completeness": n_m / n_truth if n_truth else float("nan"),
        "flux_frac_median": _median(frac),
        "flux_frac_scatter": robust_scatter(frac),
        "pull_median": _median(pull),
        "pull_scatter": robust_scatter(pull),
        "pos_rms": float(np.sqrt(np.mean(dx * dx + dy * dy))) if n_m else float("nan"),
        "dx_median": _median(dx),
        "dy_median": _median(dy),
    }


def score_catalog(
    cat_x: np.ndarray,
    cat_y: np.ndarray,
    cat_flux: np.ndarray,
    cat_flux_err: np.ndarray | None,
    truth: Table,
    radius: float = 1.0,
    snr_bins: Sequence[float] = DEFAULT_SNR_BINS,
    *,
    match_by_flux: bool = True,
    summary_snr: float = 5.0,
) -> dict[str, Any]:
    """Score a catalog against the truth.

    Parameters
    ----------
    cat_x, cat_y : `numpy.ndarray`
        Measured positions (pixels, same convention as the truth).
    cat_flux : `numpy.ndarray`
        Measured fluxes (same units as ``truth["flux"]``).
    cat_flux_err : `numpy.ndarray` or `None`
        Flux errors, for the pulls (NaN without).
    truth : `astropy.table.Table`
        Needs ``x``, ``y``, ``flux`` and ``snr``; if it has ``in_image``,
        only those rows count towards completeness and the per-bin
        statistics (all rows are still available for matching, so a
        detection of a star centred just off the image is not spurious).
    radius : `float`, optional
        Match radius (pixels).
    snr_bins : sequence of `float`, optional
        Edges of the true-S/N bins, ``[lo, hi)``.
    match_by_flux : `bool`, optional
        Rank match candidates by flux agreement (see `match_to_truth`).
    summary_snr : `float`, optional
        True-S/N threshold of the summary (and measured-S/N threshold of
        the second spurious fraction).

    Returns
    -------
    result : `dict`
        ``"bins"``: `astropy.table.Table`, one row per S/N bin with
        ``snr_lo``, ``snr_hi``, ``n_truth``, ``n_matched``,
        ``completeness``, ``flux_frac_median`` and ``flux_frac_scatter``
        (median and 1.4826 MAD of ``(flux - true) / true``),
        ``pull_median`` and ``pull_scatter`` (same for
        ``(flux - true) / err``), ``pos_rms`` (root mean square matched
        separation, pixels), ``dx_median``, ``dy_median``.
        ``"summary"``: `dict` with the same statistics for true S/N >=
        ``summary_snr``, plus ``n_det``, ``n_spurious``,
        ``spurious_fraction`` (unmatched detections / detections),
        ``n_det_snr``, ``spurious_fraction_snr`` (the same among detections
        whose measured ``flux / err`` >= ``summary_snr``; NaN without
        errors) and ``radius``.
        ``"match"``: the `Match`.
    """
    cx = _as_1d("cat_x", cat_x)
    cy = _as_1d("cat_y", cat_y)
    cf = _as_1d("cat_flux", cat_flux)
    if not (cx.shape == cy.shape == cf.shape):
        raise ValueError("cat_x, cat_y and cat_flux must have the same length")
    ce = None
    if cat_flux_err is not None:
        ce = _as_1d("cat_flux_err", cat_flux_err)
        if ce.shape != cx.shape:
            raise ValueError("cat_flux_err must have the same length as cat_flux")
    for col in ("x", "y", "flux", "snr"):
        if col not in truth.colnames:
            raise ValueError(f"truth table has no {col!r} column")
    edges = np.asarray(snr_bins, dtype=float)
    if edges.ndim != 1 or len(edges) < 2 or np.any(np.diff(edges) <= 0):
        raise ValueError("snr_bins must be at least two increasing edges")
    tx = np.asarray(truth["x"], dtype=float)
    ty = np.asarray(truth["y"], dtype=float)
    tf = np.asarray(truth["flux"], dtype=float)
    tsnr = np.asarray(truth["snr"], dtype=float)
    counted = (
        np.asarray(truth["in_image"], dtype=bool)
        if "in_image" in truth.colnames
        else np.ones(len(tx), bool)
    )

    match = match_to_truth(
        cx,
        cy,
        tx,
        ty,
        radius,
        flux=cf if match_by_flux else None,
        truth_flux=tf if match_by_flux else None,
    )

    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        sel = counted & (tsnr >= lo) & (tsnr < hi)
        rows.append({"snr_lo": lo, "snr_hi": hi, **_stats(sel, match, cx, cy, cf, ce, tx, ty, tf)})
    bins = Table(rows=rows)
    for name, unit, desc in (
        ("snr_lo", None, "lower edge of the true-S/N bin"),
        ("snr_hi", None, "upper edge of the true-S/N bin"),
        ("n_truth", None, "true stars in the bin (inside the image)"),
        ("n_matched", None, "of which matched"),
        ("completeness", None, "n_matched / n_truth"),
        ("flux_frac_median", None, "median of (flux - true) / true"),
        ("flux_frac_scatter", None, "1.4826 MAD of (flux - true) / true"),
        ("pull_median", None, "median of (flux - true) / err"),
        ("pull_scatter", None, "1.4826 MAD of (flux - true) / err"),
        ("pos_rms", "pix", "rms matched separation"),
        ("dx_median", "pix", "median x offset, measured - true"),
        ("dy_median", "pix", "median y offset, measured - true"),
    ):
        bins[name].unit = unit
        bins[name].description = desc

    summary = _stats(counted & (tsnr >= summary_snr), match, cx, cy, cf, ce, tx, ty, tf)
    nd = len(cx)
    n_spur = int(np.count_nonzero(~match.det_matched))
    summary.update(
        {
            "snr_min": float(summary_snr),
            "n_det": nd,
            "n_spurious": n_spur,
            "spurious_fraction": n_spur / nd if nd else float("nan"),
            "radius": float(radius),
        }
    )
    if ce is not None:
        with np.errstate(divide="ignore", invalid="ignore"):
            bright = (ce > 0) & (cf / ce >= summary_snr)
        nb = int(np.count_nonzero(bright))
        summary["n_det_snr"] = nb
        summary["spurious_fraction_snr"] = (
            int(np.count_nonzero(bright & ~match.det_matched)) / nb if nb else float("nan")
        )
    else:
        summary["n_det_snr"] = 0
        summary["spurious_fraction_snr"] = float("nan")
    return {"bins": bins, "summary": summary, "match": match}


def truth_recovery(
    truth: Table, catalog, zero_point: float, radius: float = 1.0
) -> dict[str, np.ndarray]:
    """The true stars inside the image, scored as artificial stars are.

    Matches ``catalog`` (``x``, ``y``, ``psfInstFlux``, ``psfInstFluxErr``)
    to ``truth`` one to one (`match_to_truth`, ranked by flux agreement) and
    returns, for each true star with ``in_image``, the arrays that
    `lsst.meas.crowdsource.artificial_stars.summarize` takes: ``mag``
    (``zero_point - 2.5 log10(flux)``), ``rec`` (matched), ``true`` (true
    flux), ``flux`` and ``err`` (the matched source's, NaN when not found).
    """
    match = match_to_truth(
        catalog["x"],
        catalog["y"],
        truth["x"],
        truth["y"],
        radius,
        flux=catalog["psfInstFlux"],
        truth_flux=truth["flux"],
    )
    inside = np.asarray(truth["in_image"], bool)
    det = match.truth_to_det[inside]
    found = det >= 0
    pick = np.where(found, det, 0)
    flux = np.where(found, np.asarray(catalog["psfInstFlux"], float)[pick], np.nan)
    err = np.where(found, np.asarray(catalog["psfInstFluxErr"], float)[pick], np.nan)
    true_flux = np.asarray(truth["flux"], float)[inside]
    return {
        "mag": zero_point - 2.5 * np.log10(true_flux),
        "rec": found,
        "true": true_flux,
        "flux": flux,
        "err": err,
    }


# --------------------------------------------------------------------------
# Cramér-Rao bounds
# --------------------------------------------------------------------------


def isolated_crb_flux_error(
    psf_stamp: np.ndarray,
    variance: np.ndarray | float,
    flux: np.ndarray | float | None = None,
    gain: float = 1.0,
) -> np.ndarray | float:
    """Cramér-Rao bound on the flux of isolated stars.

    ``sigma_f = 1 / sqrt(sum_pix psf^2 / var)``.

    Assumptions: a single star, alone; its PSF (``psf_stamp``, unit total
    flux) and position are known exactly, the sky is known exactly; only
    the amplitude is fitted; pixels are independent and Gaussian with
    variance ``var``.  This is also the error of the optimal
    (inverse-variance weighted PSF) linear estimator.

    Parameters
    ----------
    psf_stamp : `numpy.ndarray`, shape (S, S) or (N, S, S)
        Pixel-integrated PSF at each star's position (unit sum over the
        full PSF; the stamp should hold nearly all of ``sum psf^2``).
    variance : `float` or `numpy.ndarray`
        Per-pixel variance without the star's own Poisson noise (sky, read
        noise, ...): a scalar, one per star ``(N,)``, a stamp ``(S, S)`` or
        ``(N, S, S)``.
    flux : `float` or `numpy.ndarray`, optional
        Star flux(es); if given the star's Poisson variance
        ``flux * psf / gain`` is added to ``variance``.
    gain : `float`, optional
        Electrons per image unit (for the star's Poisson term).

    Returns
    -------
    sigma : `float` or `numpy.ndarray`, shape (N,)
        Flux error bound(s), in the units of ``flux``.
    """
    p = np.asarray(psf_stamp, dtype=float)
    single = p.ndim == 2
    if p.ndim == 2:
        p = p[None]
    if p.ndim != 3:
        raise ValueError(f"psf_stamp must be (S, S) or (N, S, S), got shape {np.shape(psf_stamp)}")
    v = np.asarray(variance, dtype=float)
    if v.ndim == 1:
        v = v[:, None, None]
    elif v.ndim == 2 and v.shape == p.shape[1:]:
        v = v[None]
    var = np.broadcast_to(v, np.broadcast_shapes(v.shape, p.shape)).astype(float)
    if flux is not None:
        f = np.asarray(flux, dtype=float).reshape(-1, 1, 1)
        var = var + f * p / gain
    if np.any(~(var > 0)):
        raise ValueError("variance must be positive and finite on every pixel")
    info = np.sum(p * p / var, axis=(1, 2))
    sigma = 1.0 / np.sqrt(info)
    if single and sigma.shape == (1,):
        return float(sigma[0])
    return sigma


def crowded_crb_flux_error(
    truth: Table,
    psf_at: Callable[[np.ndarray, np.ndarray], np.ndarray],
    variance: np.ndarray,
    sample: int | Sequence[int] | np.ndarray | None = 500,
    *,
    xy0: tuple[int, int] = (0, 0),
    mask: np.ndarray | None = None,
    free_positions: bool = False,
    free_position_min_snr: float = 5.0,
    fd_step: float = 0.05,
    neighbourhood: float | None = None,
    seed: int = 0,
) -> Table:
    """Cramér-Rao bound on stellar fluxes in a joint fit of all stars.

    Assumptions (fluxes only, column ``sigma_flux``): every star in
    ``truth`` whose PSF stamp touches the image is a parameter; positions,
    PSFs and sky are known exactly; all the fluxes are fitted jointly
    (linear model); pixels are independent Gaussian with the given
    ``variance`` (which should already contain the Poisson noise of sky and
    all stars, as `SimulatedField.variance` does); pixels outside the
    image or in ``mask`` carry no information.  The Fisher matrix is
    ``F_ij = sum_pix psf_i psf_j / var`` (sparse: stars couple only where
    their stamps overlap) and the bound on star ``i`` is
    ``sqrt((F^-1)_ii)``.

    With ``free_positions`` (column ``sigma_flux_free``), the stars with
    ``snr >= free_position_min_snr`` also have x and y as parameters; their
    Fisher columns use ``flux * d psf / dx`` from central finite
    differences of ``psf_at`` with step ``fd_step`` pixels.  Stars below the
    threshold keep fixed positions.  For an isolated symmetric PSF flux and
    position are orthogonal and the bound does not change; for blends it
    grows.

    Also returned, ``sigma_flux_fixed = 1 / sqrt(F_ii)``: the bound if every
    other star were known exactly (the isolated-star bound at the local,
    crowded variance).

    How ``(F^-1)_ii`` is computed: ``neighbourhood=None`` (default) solves
    ``F_N z = e_i`` on the sub-matrix of the stars within two stamp widths
    of star ``i`` (dense, one small solve per reported star).  Leaving out
    the stars further away amounts to treating them as known; their
    influence on star ``i`` passes through chains of overlapping stamps and
    is negligible (checked against the exact solve in the tests).  A number
    sets that radius in pixels; ``neighbourhood=numpy.inf`` solves the
    whole system exactly with a sparse LU factorisation
    (`scipy.sparse.linalg.splu`), which is fine for a few thousand stars but
    fills in badly beyond.

    Parameters
    ----------
    truth : `astropy.table.Table`
        ``x``, ``y``, ``flux`` (and ``snr`` for ``free_position_min_snr``).
    psf_at : callable
        ``psf_at(x, y) -> (N, S, S)`` stamps for arrays of positions; the
        stamp of a star at ``(x, y)`` is placed centred on pixel
        ``(round(x), round(y))``.  Pass
        ``functools.partial(field.psf_at, subpixel=True)`` to use the exact
        sub-pixel rendering of a `SimulatedField`; a pixel-centred PSF
        ignores sub-pixel phases (a small change of the overlaps).
    variance : `numpy.ndarray`
        Variance image (PARENT origin ``xy0``).
    sample : `int`, sequence of `int`, or `None`, optional
        Which stars to report: an int draws that many (without
        replacement, seeded by ``seed``) among the stars centred inside the
        image; indices select truth rows; `None` reports all stars inside
        the image.
    xy0 : `tuple` [`int`, `int`], optional
        PARENT coordinates of ``variance[0, 0]``.
    mask : `numpy.ndarray` of `bool`, optional
        Pixels to leave out (True = excluded), e.g. BAD or SAT pixels.
    free_positions : `bool`, optional
        Also compute the bound with positions free.
    free_position_min_snr : `float`, optional
        Only stars with ``truth["snr"]`` at least this get free positions.
    fd_step : `float`, optional
        Finite-difference step (pixels).
    neighbourhood : `float`, optional
        Radius (pixels) of the local solve, see above.
    seed : `int`, optional
        Seed for drawing the sample.

    Returns
    -------
    bounds : `astropy.table.Table`
        One row per reported star: ``index`` (truth row), ``x``, ``y``,
        ``flux``, ``sigma_flux``, ``sigma_flux_fixed`` and with
        ``free_positions`` also ``sigma_flux_free``, ``sigma_x``,
        ``sigma_y`` (pixels; NaN for fixed-position stars).  Stars with no
        usable pixel get NaN.

    Notes
    -----
    Building the Fisher matrix costs one PSF stamp per star (three with
    free positions) and a sparse product; a 1024x1024 field with 20 000
    stars takes a few seconds.  For much larger fields pass a cutout of the
    variance image (with its ``xy0``) and the truth rows around it.
    """
    var_img = np.asarray(variance, dtype=float)
    if var_img.ndim != 2:
        raise ValueError(f"variance must be a 2-D image, got shape {var_img.shape}")
    ny, nx = var_img.shape
    x0, y0 = xy0
    good_pix = np.isfinite(var_img) & (var_img > 0)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != var_img.shape:
            raise ValueError(f"mask shape {mask.shape} differs from variance shape {var_img.shape}")
        good_pix &= ~mask
    if not good_pix.any():
        raise ValueError("no usable pixels (variance not positive, or everything masked)")
    for col in ("x", "y", "flux"):
        if col not in truth.colnames:
            raise ValueError(f"truth table has no {col!r} column")
    tx = np.asarray(truth["x"], dtype=float)
    ty = np.asarray(truth["y"], dtype=float)
    tf = np.asarray(truth["flux"], dtype=float)

    probe = np.asarray(psf_at(np.array([x0 + 0.5 * (nx - 1)]), np.array([y0 + 0.5 * (ny - 1)])))
    if probe.ndim == 2:
        probe = probe[None]
    size = probe.shape[-1]
    if probe.ndim != 3 or probe.shape[-2] != size or size % 2 == 0:
        raise ValueError(f"psf_at must return odd square stamps, got shape {probe.shape}")
    half = size // 2
    if neighbourhood is None:
        neighbourhood = 2.0 * size
    if not neighbourhood > 0:
        raise ValueError(f"neighbourhood must be > 0, got {neighbourhood}")

    touches = (
        (tx > x0 - 1 - half) & (tx < x0 + nx + half) & (ty > y0 - 1 - half) & (ty < y0 + ny + half)
    )
    inside = (tx >= x0 - 0.5) & (tx < x0 + nx - 0.5) & (ty >= y0 - 0.5) & (ty < y0 + ny - 0.5)
    if sample is None:
        report = np.flatnonzero(inside)
    elif np.ndim(sample) == 0:
        cand = np.flatnonzero(inside)
        n = min(int(sample), len(cand))
        report = np.sort(np.random.default_rng(seed).choice(cand, size=n, replace=False))
    else:
        report = np.asarray(sample, dtype=np.int64).ravel()
        if np.any(~touches[report]):
            raise ValueError("some sampled stars do not touch the image")

    sigma_pix = np.sqrt(np.where(good_pix, var_img, 1.0))
    off = np.arange(-half, half + 1)

    def columns(
        xs: np.ndarray, ys: np.ndarray, scale: np.ndarray, chunk: int = 4096
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Sparse-column pieces (pixel rows, values, counts) of ``scale * psf / sigma``."""
        rows_l, vals_l, cnt_l = [np.empty(0, np.int64)], [np.empty(0)], [np.empty(0, np.int64)]
        for s in range(0, len(xs), chunk):
            xx, yy, sc = xs[s : s + chunk], ys[s : s + chunk], scale[s : s + chunk]
            st = np.asarray(psf_at(xx, yy), dtype=float).reshape(len(xx), size, size)
            ax = np.floor(xx + 0.5).astype(np.int64) - x0
            ay = np.floor(yy + 0.5).astype(np.int64) - y0
            px = np.broadcast_to(ax[:, None, None] + off[None, None, :], st.shape)
            py = np.broadcast_to(ay[:, None, None] + off[None, :, None], st.shape)
            inb = (px >= 0) & (px < nx) & (py >= 0) & (py < ny)
            pxc = np.clip(px, 0, nx - 1)
            pyc = np.clip(py, 0, ny - 1)
            vals = st * sc[:, None, None] / sigma_pix[pyc, pxc]
            ok = inb & good_pix[pyc, pxc] & (vals != 0)
            rows_l.append((pyc * nx + pxc)[ok])
            vals_l.append(vals[ok])
            cnt_l.append(ok.reshape(len(xx), -1).sum(axis=1))
        return np.concatenate(rows_l), np.concatenate(vals_l), np.concatenate(cnt_l)

    def build(
        rows: np.ndarray, vals: np.ndarray, counts: np.ndarray, keep: np.ndarray
    ) -> sparse.csc_matrix:
        seg = np.repeat(keep, counts)
        indptr = np.concatenate([[0], np.cumsum(counts[keep])])
        return sparse.csc_matrix((vals[seg], rows[seg], indptr), shape=(ny * nx, int(keep.sum())))

    # Flux columns, one per star with at least one usable pixel.
    cand_stars = np.flatnonzero(touches)
    r_f, v_f, c_f = columns(tx[cand_stars], ty[cand_stars], np.ones(len(cand_stars)))
    has_pix = c_f > 0
    stars = cand_stars[has_pix]
    n_flux = len(stars)
    col_of = np.full(len(tx), -1, dtype=np.int64)
    col_of[stars] = np.arange(n_flux)
    a_flux = build(r_f, v_f, c_f, has_pix)
    del r_f, v_f

    # Position columns.
    move_col = np.full(len(tx), -1, dtype=np.int64)
    a_all = a_flux
    if free_positions:
        snr = (
            np.asarray(truth["snr"], dtype=float)
            if "snr" in truth.colnames
            else np.full(len(tx), np.inf)
        )
        movers = stars[snr[stars] >= free_position_min_snr]
        move_col[movers] = np.arange(len(movers))
        pieces = [a_flux]
        h = float(fd_step)
        ones = np.ones(len(movers), bool)
        for dxs, dys in ((h, 0.0), (0.0, h)):
            a_p = build(*columns(tx[movers] + dxs, ty[movers] + dys, tf[movers] / (2 * h)), ones)
            a_m = build(*columns(tx[movers] - dxs, ty[movers] - dys, -tf[movers] / (2 * h)), ones)
            pieces.append((a_p + a_m).tocsc())
        a_all = sparse.hstack(pieces, format="csc")
    n_move = int(np.count_nonzero(move_col >= 0))

    def param_cols(star_idx: np.ndarray, with_positions: bool) -> np.ndarray:
        """Fisher columns of the given truth rows: fluxes, then x, then y of the movers."""
        if not with_positions:
            return col_of[star_idx]
        mc = move_col[star_idx]
        mc = mc[mc >= 0]
        return np.concatenate([col_of[star_idx], n_flux + mc, n_flux + n_move + mc])

    def inverse_diagonal(
        fisher: sparse.csr_matrix, wanted: list[np.ndarray], with_positions: bool
    ) -> list[np.ndarray]:
        """``(F^-1)_cc`` for the column lists in ``wanted`` (one list per reported star)."""
        out = [np.full(len(w), np.nan) for w in wanted]
        rep_ok = [k for k in range(len(report)) if col_of[report[k]] >= 0]
        if not rep_ok:
            return out
        if np.isinf(neighbourhood):
            try:
                lu = splinalg.splu(fisher.tocsc(), permc_spec="MMD_AT_PLUS_A")
            except RuntimeError as err:
                raise ValueError(
                    f"the Fisher matrix is singular ({err}); two stars at one position?"
                ) from err
            allc = np.concatenate([wanted[k] for k in rep_ok])
            diag = np.empty(len(allc))
            for s in range(0, len(allc), 256):
                cc = allc[s : s + 256]
                rhs = np.zeros((fisher.shape[0], len(cc)))
                rhs[cc, np.arange(len(cc))] = 1.0
                diag[s : s + 256] = lu.solve(rhs)[cc, np.arange(len(cc))]
            pos = 0
            for k in rep_ok:
                out[k] = diag[pos : pos + len(wanted[k])]
                pos += len(wanted[k])
            return out
        tree = cKDTree(np.column_stack([tx[stars], ty[stars]]))
        for k in rep_ok:
            i = report[k]
            near = stars[tree.query_ball_point([tx[i], ty[i]], neighbourhood)]
            near = np.concatenate([[i], near[near != i]])
            cols = param_cols(near, with_positions)
            sub = fisher[cols][:, cols].toarray()
            where = np.searchsorted(np.sort(cols), wanted[k])
            order = np.argsort(cols)
            loc = order[where]
            rhs = np.zeros((len(cols), len(loc)))
            rhs[loc, np.arange(len(loc))] = 1.0
            try:
                z = np.linalg.solve(sub, rhs)
            except np.linalg.LinAlgError:
                continue
            out[k] = z[loc, np.arange(len(loc))]
        return out

    sigma = np.full(len(report), np.nan)
    sigma_fixed = np.full(len(report), np.nan)
    fisher = (a_flux.T @ a_flux).tocsr()
    rep_cols = col_of[report]
    valid = rep_cols >= 0
    sigma_fixed[valid] = 1.0 / np.sqrt(fisher.diagonal()[rep_cols[valid]])
    res = inverse_diagonal(fisher, [np.array([c]) for c in rep_cols], False)
    sigma[:] = np.sqrt(np.array([r[0] for r in res]))

    result = Table()
    result["index"] = report
    result["x"] = tx[report]
    result["y"] = ty[report]
    result["flux"] = tf[report]
    result["sigma_flux"] = sigma
    result["sigma_flux"].description = "CRB, all fluxes fitted jointly, positions known"
    result["sigma_flux_fixed"] = sigma_fixed
    result["sigma_flux_fixed"].description = "CRB with all other stars known: 1/sqrt(F_ii)"

    if free_positions:
        fisher_all = (a_all.T @ a_all).tocsr()
        wanted = []
        for i in report:
            mc = move_col[i]
            extra = [n_flux + mc, n_flux + n_move + mc] if mc >= 0 else []
            wanted.append(np.array([col_of[i], *extra], dtype=np.int64))
        res = inverse_diagonal(fisher_all, wanted, True)
        s_free = np.array([np.sqrt(r[0]) if len(r) else np.nan for r in res])
        s_x = np.array([np.sqrt(r[1]) if len(r) == 3 else np.nan for r in res])
        s_y = np.array([np.sqrt(r[2]) if len(r) == 3 else np.nan for r in res])
        result["sigma_flux_free"] = s_free
        result["sigma_flux_free"].description = "CRB, fluxes and positions fitted jointly"
        result["sigma_x"] = s_x
        result["sigma_y"] = s_y
        result["sigma_x"].unit = "pix"
        result["sigma_y"].unit = "pix"
    return result
