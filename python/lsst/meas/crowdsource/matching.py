"""One-to-one matching of positions and robust statistics, shared by the library and its tests.

`match_to_truth` pairs detections with reference positions (true stars of a
simulation, or the artificial stars of `lsst.meas.crowdsource.injection`
together with the sources already measured on the image); `robust_scatter`
and `median_error` / `robust_scatter_error` are the statistics every report
of the package quotes.  Pure numpy / scipy; positions in afw pixel
conventions (x = column, y = row, pixel centres at integers, PARENT
coordinates).
"""

from __future__ import annotations

__all__ = [
    "MAD_TO_SIGMA",
    "Match",
    "match_to_truth",
    "median_error",
    "robust_scatter",
    "robust_scatter_error",
]

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.spatial import cKDTree

#: 1.4826: the median absolute deviation of a Gaussian times this is its sigma.
MAD_TO_SIGMA = 1.4826


# --------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------


@dataclass
class Match:
    """Result of a one-to-one match of detections to truth.

    Attributes
    ----------
    det_index : `numpy.ndarray` of `int`, shape (M,)
        Index of each matched detection.
    truth_index : `numpy.ndarray` of `int`, shape (M,)
        Index of the true star it is matched to.
    distance : `numpy.ndarray`, shape (M,)
        Separation of each pair (pixels).
    det_to_truth : `numpy.ndarray` of `int`, shape (n_det,)
        For every detection, its true star or -1.
    truth_to_det : `numpy.ndarray` of `int`, shape (n_truth,)
        For every true star, its detection or -1.
    radius : `float`
        Match radius used (pixels).
    """

    det_index: np.ndarray
    truth_index: np.ndarray
    distance: np.ndarray
    det_to_truth: np.ndarray
    truth_to_det: np.ndarray
    radius: float

    @property
    def n_matched(self) -> int:
        """Number of matched pairs."""
        return len(self.det_index)

    @property
    def det_matched(self) -> np.ndarray:
        """Boolean mask over detections: matched."""
        return self.det_to_truth >= 0

    @property
    def truth_matched(self) -> np.ndarray:
        """Boolean mask over true stars: matched."""
        return self.truth_to_det >= 0


def _as_1d(name: str, a: Any) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(a, dtype=float))
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    return arr


def match_to_truth(
    x: np.ndarray,
    y: np.ndarray,
    truth_x: np.ndarray,
    truth_y: np.ndarray,
    radius: float = 1.0,
    flux: np.ndarray | None = None,
    truth_flux: np.ndarray | None = None,
) -> Match:
    """Match detections to true stars, one to one.

    Every (detection, true star) pair closer than ``radius`` is a
    candidate.  Candidates are ranked and accepted greedily, best first,
    each detection and each true star being used at most once:

    * without fluxes, by distance;
    * with both ``flux`` and ``truth_flux``, by ``|ln(flux / truth_flux)|``
      first and distance second.  Among the stars within the radius a
      detection therefore takes the one whose flux it reproduces best: a
      faint detection next to a bright star matches a faint star it sits on
      rather than the bright star 0.8 px away, and the bright star stays
      free for its own detection.  Pairs where either flux is not positive
      and finite rank after all others, by distance.

    Ties are broken by detection then truth index, so the result is
    deterministic.  The greedy pass is done in vectorised rounds: all
    pairs that are the best remaining choice of both their detection and
    their true star are accepted together, which gives exactly the
    sequential greedy result.  Detections with non-finite positions are
    never matched.

    Parameters
    ----------
    x, y : `numpy.ndarray`
        Detection positions (pixels).
    truth_x, truth_y : `numpy.ndarray`
        True positions (pixels).
    radius : `float`, optional
        Match radius (pixels), > 0.
    flux, truth_flux : `numpy.ndarray`, optional
        Measured and true fluxes, to rank candidates by flux agreement.

    Returns
    -------
    match : `Match`
        The pairs and the index maps.

    Raises
    ------
    ValueError
        On mismatched lengths, a non-positive radius, or only one of the
        two flux arrays.
    """
    x = _as_1d("x", x)
    y = _as_1d("y", y)
    tx = _as_1d("truth_x", truth_x)
    ty = _as_1d("truth_y", truth_y)
    if x.shape != y.shape:
        raise ValueError(f"x and y differ in length: {x.shape} vs {y.shape}")
    if tx.shape != ty.shape:
        raise ValueError(f"truth_x and truth_y differ in length: {tx.shape} vs {ty.shape}")
    if not radius > 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    if (flux is None) != (truth_flux is None):
        raise ValueError("give both flux and truth_flux, or neither")
    nd, nt = len(x), len(tx)
    det_to_truth = np.full(nd, -1, dtype=np.int64)
    truth_to_det = np.full(nt, -1, dtype=np.int64)
    empty = Match(
        np.empty(0, np.int64),
        np.empty(0, np.int64),
        np.empty(0),
        det_to_truth,
        truth_to_det,
        float(radius),
    )
    if nd == 0 or nt == 0:
        return empty
    good_d = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    good_t = np.flatnonzero(np.isfinite(tx) & np.isfinite(ty))
    if len(good_d) == 0 or len(good_t) == 0:
        return empty
    tree_d = cKDTree(np.column_stack([x[good_d], y[good_d]]))
    tree_t = cKDTree(np.column_stack([tx[good_t], ty[good_t]]))
    pairs = tree_d.sparse_distance_matrix(tree_t, radius, output_type="ndarray")
    if len(pairs) == 0:
        return empty
    di = good_d[pairs["i"]]
    ti = good_t[pairs["j"]]
    dist = pairs["v"].astype(float)

    if flux is not None:
        f = _as_1d("flux", flux)
        tf = _as_1d("truth_flux", truth_flux)
        if f.shape != x.shape or tf.shape != tx.shape:
            raise ValueError("flux / truth_flux must match the lengths of the positions")
        fd, ft = f[di], tf[ti]
        ok = (fd > 0) & (ft > 0) & np.isfinite(fd) & np.isfinite(ft)
        dlog = np.full(len(di), np.inf)
        dlog[ok] = np.abs(np.log(fd[ok] / ft[ok]))
        order = np.lexsort((ti, di, dist, dlog))
    else:
        order = np.lexsort((ti, di, dist))
    md, mt = _greedy_pairs(di[order], ti[order], nd, nt)
    det_to_truth[md] = mt
    truth_to_det[mt] = md
    mdist = np.hypot(x[md] - tx[mt], y[md] - ty[mt])
    return Match(md, mt, mdist, det_to_truth, truth_to_det, float(radius))


def _greedy_pairs(
    di: np.ndarray, ti: np.ndarray, nd: int, nt: int
) -> tuple[np.ndarray, np.ndarray]:
    """Accept candidate pairs ranked best first, each index used once (see `match_to_truth`).

    Done in vectorised rounds: every pair that is the best remaining choice
    of both its detection and its true star is accepted at once, which gives
    exactly the sequential greedy result.  Returns the accepted detection and
    truth indices, in rank order.
    """
    rank = np.arange(len(di))
    acc_d, acc_t, acc_r = [], [], []
    big = len(di) + 1
    while len(rank):
        best_d = np.full(nd, big, dtype=np.int64)
        best_t = np.full(nt, big, dtype=np.int64)
        np.minimum.at(best_d, di, rank)
        np.minimum.at(best_t, ti, rank)
        take = (best_d[di] == rank) & (best_t[ti] == rank)
        acc_d.append(di[take])
        acc_t.append(ti[take])
        acc_r.append(rank[take])
        used_d = np.zeros(nd, dtype=bool)
        used_t = np.zeros(nt, dtype=bool)
        used_d[di[take]] = True
        used_t[ti[take]] = True
        keep = ~(used_d[di] | used_t[ti])
        di, ti, rank = di[keep], ti[keep], rank[keep]
    srt = np.argsort(np.concatenate(acc_r))
    return np.concatenate(acc_d)[srt], np.concatenate(acc_t)[srt]


def robust_scatter(values: np.ndarray) -> float:
    """``1.4826 * median(|v - median(v)|)`` of the finite values (NaN if none)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if len(v) == 0:
        return float("nan")
    return float(MAD_TO_SIGMA * np.median(np.abs(v - np.median(v))))


def median_error(scatter: float, n: int) -> float:
    """Sampling error of the median of ``n`` Gaussian values of spread ``scatter``.

    ``sqrt(pi / 2) * scatter / sqrt(n)`` (NaN for ``n < 1``).
    """
    return float(np.sqrt(np.pi / 2.0) * scatter / np.sqrt(n)) if n >= 1 else float("nan")


def robust_scatter_error(scatter: float, n: int) -> float:
    """Sampling error of `robust_scatter` of ``n`` Gaussian values of spread ``scatter``.

    The 1.4826 MAD is 37 % as efficient as the standard deviation, whose
    error is ``sigma / sqrt(2 n)``: ``1.166 * scatter / sqrt(n)`` (NaN for
    ``n < 2``).
    """
    return float(1.166 * scatter / np.sqrt(n)) if n >= 2 else float("nan")
