"""The simultaneous linear fit of all sources.

The design matrix has one column per source for its flux and, while
positions are still being refined, two more for the derivatives of its PSF
with respect to x and y.  Rows are pixels, weighted by the square root of
the inverse variance; pixels with zero weight are left out.  Rather than
running LSQR on this tall matrix (as crowdsource does), we form the normal
equations ``H = A^T A``: each source couples only to the neighbours its
stamp overlaps, so ``H`` is small and very sparse (tens of non-zeros per
row).  Sources whose positions are held (forced positions that may not
move) get no derivative columns.

``H`` is solved directly (`_solve_direct`): scaled to unit diagonal, then
factorised by CHOLMOD's supernodal Cholesky (SuiteSparse, through cvxopt;
3-5x faster on crowded scenes), or, without cvxopt (or with
``solver="superlu"``), by SuperLU with a minimum-degree ordering of
``H + H^T`` and **no pivoting** (``diag_pivot_thresh=0``, ``SymmetricMode``).  ``H`` is
symmetric positive definite, so this is Cholesky in LU form and stable.
SuperLU's default partial pivoting is not: it swaps rows wherever an
off-diagonal exceeds its diagonal, which destroys the fill-reducing
ordering, and crowded systems hit a cliff (issue 16).  Measured on the
512x512 benchmark field (0.02 stars/px) forced at its 5098 true stars,
15 000-16 000 unknowns per pass: pivoted, the factor had 14-25x the
non-zeros of ``H`` and took 2.6-5.2 s per pass; unpivoted, 3.5x and
0.12-0.22 s (the fit: 27.9 s -> 6.1 s).  On 1024x1024 with all 20 293 true
stars forced the fit now takes 22 s, the free fit of the same image 13 s
(one run each, shared machine; issue 16 had stopped the pivoted solve of a
similar scene after 28 minutes).  Other orderings, all
pivoted / unpivoted, on one of those systems: COLAMD 12.7x / 11.7x, 1.06 /
0.93 s; MMD on ``A^T A`` 9.4x / 8.3x, 0.88 / 0.74 s; MMD on ``H + H^T``
21.5x / 3.5x, 5.0 / 0.27 s (0.18 s scaled to unit diagonal).  On the free
fit the factor was already near 2x ``H``; the free catalogue of the
1024x1024 benchmark field is the same to rounding (8259 sources, fluxes
within 5.4e-8 relative, positions within 4e-8 px).

Unit diagonal makes each pivot the fraction of its column that the columns
eliminated before it do not explain.  A pivot below `PIVOT_TOL` means the
system is numerically rank-deficient -- two forced positions on the same
spot; note that a target on empty sky is *not* a problem, ``H`` does not
depend on the data -- and then `DEGENERATE_RIDGE` times the diagonal is
added to every column and the matrix factorised again: a coincident pair
then shares its light equally, with an error that says it is unconstrained.
Before, such systems were exactly singular and went to conjugate gradients.

Conjugate gradients preconditioned with each source's own block
(``solver="cg"``, and the fallback when the factorisation fails) needed
hundreds of iterations on a 512x512 field at 0.02 stars/px (close pairs
make ``H`` ill-conditioned) where the direct solve of 6000 unknowns took
0.04 s.

What the free fit costs in dense fields is mostly not the factorisation:
at 0.1 stars/px on 1024x1024 (15 800 sources), forming ``A`` took ~1.8 s
per pass, ``A^T A`` ~1.9 s and the factorisation ~1 s.  Bright stars get
59x59 stamps, and a dense field detects a larger share of them (12 % of
the sources at 0.1 stars/px, 3 % at 0.02), so ``A`` has twice the non-zeros
per source (570 against 290); a block-sparse (BSR, 3x3) product was only
30 % faster than the CSR one and not kept.  Since then (issue 16), on the
same field's 19 100-source scene: the derivative columns cover only the
core square of a stamp (``derivative_stamp_size``, 19x19 here, instead of
all 59x59 of a bright star's; 15.5 million non-zeros in ``A``), ``A`` is
built from whole blocks (0.3-0.6 s instead of 1.1-1.4 s), ``A^T A`` takes
0.8-1.0 s and the CHOLMOD factorisation 0.4-0.5 s (SuperLU: 1.7 s).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator, cg, splu

from .scene import StampGroup

__all__ = ["LinearFit", "solve_scene", "local_inverse_diagonal"]

_log = logging.getLogger(__name__)


@dataclass
class LinearFit:
    """Solution of the simultaneous fit.

    ``flux``, ``gx``, ``gy`` are per source (``gx = flux * shift_x`` to first
    order); ``sky_terms`` the constant and gradient terms when fit;
    ``flux_err`` the flux uncertainty including the covariance with the
    direct neighbours; ``block_inv`` the inverse of each source's own
    parameter block (for position errors).
    """

    flux: np.ndarray
    gx: np.ndarray | None
    gy: np.ndarray | None
    sky_terms: np.ndarray | None
    flux_err: np.ndarray
    block_inv: np.ndarray
    iterations: int
    converged: bool
    #: How the system was solved: ``"direct"``, ``"direct+ridge"`` (degenerate
    #: columns, see `_solve_direct`), ``"cg"`` (asked for, or the fallback).
    solver_path: str = "direct"
    #: Non-zeros of the normal matrix and of its factor (L + U, or L + L^T; 0: no
    #: factor, or a CHOLMOD factor, whose fill is not counted in a fit).
    normal_nnz: int = 0
    factor_nnz: int = 0
    #: What factorised the normal matrix: ``"cholmod"``, ``"superlu"`` ("" for CG).
    factorizer: str = ""


def _design(
    groups: list[StampGroup],
    n_src: int,
    sqrt_w: np.ndarray,
    derivatives: bool,
    with_d: np.ndarray,
    sky_basis: np.ndarray | None,
):
    """Weighted design matrix; ``with_d``: the sources that get x and y derivative columns.

    A source's columns are contiguous (flux, then d/dx and d/dy when it has
    them); ``col_of_src`` is its flux column.  A flux column covers the
    source's whole stamp, its derivative columns only the stamp's
    derivative square (`StampGroup.d_size`; the derivatives are zero
    outside it).  With ``derivatives``, the sources without derivative
    columns get their own 3x3 block of the normal matrix (the products of
    their flux and derivative stamps) in ``held_blocks`` (NaN for the
    others), for their position errors.
    """

    # One CSC matrix built from its arrays, in one buffer filled group by group
    # (an upper bound on the entries: off-image pixels are left out); stacking
    # per-group matrices, and then concatenating per-group parts, each cost as
    # much as building them.  A column holds every pixel of its stamp that is
    # on the image (masked pixels carry a zero weight, hence zero values), so
    # that the entries of a group's sources whose stamps lie inside the image
    # form one ``(n, s*s + 2 d*d)`` block: selecting the usable pixels with
    # boolean masks took as long as the factorisation on 1024x1024 at 0.1
    # stars/px.  Within a group, the sources with derivative columns come
    # first and, in each kind, those inside the image; ``col_of_src`` says
    # where each source's columns are.
    sky = None if sky_basis is None else sp.csc_matrix(sky_basis * sqrt_w[:, None])
    upper = sum(
        len(g.index)
        * (g.size**2 + (2 * (g.size if g.d_size is None else g.d_size) ** 2 if derivatives else 0))
        for g in groups
    ) + (0 if sky is None else sky.nnz)
    data = np.empty(upper)
    rows = np.empty(upper, np.int32)
    count_parts = []
    cur = 0
    col_of_src = np.zeros(n_src, dtype=np.int64)
    held_blocks = np.full((n_src, 3, 3), np.nan) if derivatives and not with_d.all() else None
    col = 0
    npix = sqrt_w.size
    for g in groups:
        n = len(g.index)
        gd = with_d[g.index] if derivatives else np.zeros(n, bool)
        comps = _group_columns(g, sqrt_w, derivatives, gd, held_blocks)
        inside = comps[0][2].all(axis=1)
        for kinds, rows_of in ((3, gd), (1, ~gd)):
            for whole in (True, False):
                sel = np.flatnonzero(rows_of & (inside == whole))
                if not sel.size:
                    continue
                parts = comps[:kinds]
                if whole:
                    every = sel.size == n
                    widths = [v.shape[1] for v, _, _ in parts]
                    m = sel.size * sum(widths)
                    out_d = data[cur : cur + m].reshape(sel.size, -1)
                    out_r = rows[cur : cur + m].reshape(sel.size, -1)
                    a = 0
                    for (v, r, _), w in zip(parts, widths):
                        out_d[:, a : a + w] = v if every else v[sel]
                        out_r[:, a : a + w] = r if every else r[sel]
                        a += w
                    count_parts.append(np.tile(np.array(widths, np.int64), sel.size))
                else:
                    vals, idx, counts = _masked_columns(
                        [(v[sel], r[sel], k[sel]) for v, r, k in parts]
                    )
                    m = len(vals)
                    data[cur : cur + m] = vals
                    rows[cur : cur + m] = idx
                    count_parts.append(counts)
                cur += m
                col_of_src[g.index[sel]] = col + kinds * np.arange(sel.size)
                col += kinds * sel.size
    nsrc_cols = col
    if sky is not None:
        m = sky.nnz
        data[cur : cur + m] = sky.data
        rows[cur : cur + m] = sky.indices
        count_parts.append(np.diff(sky.indptr))
        cur += m
        col += sky.shape[1]
    if not count_parts:
        return sp.csc_matrix((npix, 0)), col_of_src, nsrc_cols, held_blocks
    counts = np.concatenate(count_parts)
    indptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    A = sp.csc_matrix((data[:cur], rows[:cur], indptr), shape=(npix, col))
    return A, col_of_src, nsrc_cols, held_blocks


def _group_columns(
    g: StampGroup,
    sqrt_w: np.ndarray,
    derivatives: bool,
    gd: np.ndarray,
    held_blocks: np.ndarray | None,
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """A group's weighted flux (and derivative) stamps: per component, the values,
    pixel indices and on-image mask, ``(n, pixels)`` each; the derivatives on
    their square only (`StampGroup.core`).  Fills the held sources' rows of
    ``held_blocks`` (``~gd``, where their derivative stamps were rendered)."""
    n, s = len(g.index), g.size
    pix = g.pix.reshape(n, s * s)
    on = pix >= 0
    sw = np.where(on, sqrt_w[np.maximum(pix, 0)], 0.0)
    comps = [(g.psf.reshape(n, s * s) * sw, pix, on)]
    if not derivatives:
        return comps
    core = g.core()
    d = core[1].stop - core[1].start

    def cut(a):
        return a.reshape(n, s, s)[core].reshape(n, d * d)

    csw, cpix, con = cut(sw), cut(pix), cut(on)
    dx = cut(g.dpsf_dx) * csw
    dy = cut(g.dpsf_dy) * csw
    comps += [(dx, cpix, con), (dy, cpix, con)]
    if held_blocks is not None and not gd.all():
        hb = ~gd if g.with_d is None else ~gd & g.with_d
        if hb.any():
            fvals = comps[0][0]
            stack = np.stack([cut(fvals)[hb], dx[hb], dy[hb]], axis=1)
            blocks = np.einsum("nap,nbp->nab", stack, stack)
            blocks[:, 0, 0] = np.einsum("np,np->n", fvals[hb], fvals[hb])
            held_blocks[g.index[hb]] = blocks
    return comps


def _masked_columns(parts):
    """Entries of the columns ``parts`` (per source: values, pixel rows, which to keep),
    interleaved source by source (its first part's column, then the next's)."""
    counts = np.stack([m.sum(axis=1) for _, _, m in parts], axis=1)  # (n, n_parts)
    length = counts.sum(axis=1)
    total = int(length.sum())
    data = np.empty(total)
    rows = np.empty(total, np.int32)
    offset = np.cumsum(length) - length
    for k, (vals, idx, keep) in enumerate(parts):
        c = counts[:, k]
        first = np.cumsum(c) - c
        dest = np.repeat(offset - first, c) + np.arange(int(c.sum()))
        data[dest] = vals[keep]
        rows[dest] = idx[keep]
        offset = offset + c
    return data, rows, counts.ravel()


def _block_inverse(
    H: sp.csr_matrix,
    starts: np.ndarray,
    ncomp: int,
    with_d: np.ndarray,
    held_blocks: np.ndarray | None = None,
    ridge: float = 0.0,
) -> np.ndarray:
    """Inverse of the diagonal ``ncomp`` x ``ncomp`` block of each source.

    Sources without derivative columns (``~with_d``) take their block from
    ``held_blocks`` (with the derivative ``ridge`` that `_regularise` gives
    the others) or, without it (or where it is NaN: no derivative stamps
    rendered), have only their flux entry (the rest NaN).
    """
    n = len(starts)
    blocks = np.zeros((n, ncomp, ncomp))
    blocks[:, 0, 0] = H.diagonal()[starts]
    idx = np.nonzero(with_d)[0]
    for a in range(ncomp):
        for b in range(ncomp):
            if a or b:
                blocks[idx, a, b] = np.asarray(H[starts[idx] + a, starts[idx] + b]).ravel()
    held = ~with_d
    flux_only = held.copy()
    if ncomp > 1:
        blocks[held, 1, 1] = blocks[held, 2, 2] = 1.0
        if held_blocks is not None:
            known = held & np.isfinite(held_blocks).all(axis=(1, 2))
            flux_only &= ~known
            hb = held_blocks[known]
            for a in (1, 2):
                hb[:, a, a] += ridge * np.maximum(hb[:, a, a], 1e-300)
            blocks[known] = hb
    # Guard against singular blocks (no usable pixels).
    diag = np.einsum("naa->na", blocks)
    bad = ~(diag > 0).all(axis=1)
    blocks[bad] = np.eye(ncomp)
    inv = np.linalg.inv(blocks)
    inv[bad] = np.nan
    if ncomp > 1:
        inv[flux_only, 1:, :] = np.nan
        inv[flux_only, :, 1:] = np.nan
    return inv


def local_inverse_diagonal(H: sp.csr_matrix, idx: np.ndarray, n_neighbours: int = 8) -> np.ndarray:
    """Approximate ``diag(H^-1)`` at rows ``idx`` from local sub-matrices.

    For each row, the sub-matrix of ``H`` on the row and its
    ``n_neighbours`` most strongly coupled rows is inverted exactly.  This
    captures the covariance with direct neighbours (what matters in a
    crowded field) and ignores couplings at second remove.
    """
    H = H.tocsr()
    n = H.shape[0]
    d = H.diagonal()
    sub = H[idx][:, idx].tocsr()
    m = len(idx)
    if m == 0:
        return np.zeros(0)
    rows = np.repeat(np.arange(m), np.diff(sub.indptr))
    cols = sub.indices
    dd = d[idx]
    with np.errstate(invalid="ignore", divide="ignore"):
        strength = np.abs(sub.data) / np.sqrt(dd[rows] * dd[cols])
    strength[(rows == cols) | ~np.isfinite(strength)] = -1.0
    order = np.lexsort((-strength, rows))
    rows_o, cols_o, str_o = rows[order], cols[order], strength[order]
    rank = np.arange(len(order)) - sub.indptr[rows_o]
    k = n_neighbours
    nb = np.full((m, k), -1, dtype=np.int64)
    take = (rank < k) & (str_o > 0)
    nb[rows_o[take], rank[take]] = cols_o[take]
    members = np.concatenate([np.arange(m)[:, None], nb], axis=1)
    present = members >= 0
    safe = np.where(present, members, 0)
    kk = k + 1
    ra = np.repeat(safe, kk, axis=1).ravel()
    cb = np.tile(safe, (1, kk)).ravel()
    vals = np.asarray(sub[ra, cb]).reshape(m, kk, kk)
    both = present[:, :, None] & present[:, None, :]
    vals = np.where(both, vals, 0.0)
    eye = np.broadcast_to(np.eye(kk), vals.shape)
    vals = np.where(present[:, :, None] | present[:, None, :], vals, eye)
    good = dd > 0
    vals[~good] = np.eye(kk)
    e0 = np.zeros((m, kk))
    e0[:, 0] = 1.0
    try:
        sol = np.linalg.solve(vals, e0[..., None])[..., 0]
        var = sol[:, 0]
    except np.linalg.LinAlgError:
        var = np.full(m, np.nan)
        for i in range(m):
            try:
                var[i] = np.linalg.solve(vals[i], e0[i])[0]
            except np.linalg.LinAlgError:
                pass
    var = np.where(good & (var > 0), var, np.nan)
    del n
    return var


def solve_scene(
    groups: list[StampGroup],
    n_src: int,
    data: np.ndarray,
    weight: np.ndarray,
    derivatives: bool,
    flux0: np.ndarray,
    gx0: np.ndarray | None = None,
    gy0: np.ndarray | None = None,
    sky_basis: np.ndarray | None = None,
    rtol: float = 1e-6,
    maxiter: int = 500,
    ridge: float = 1e-4,
    n_neighbours: int = 8,
    solver: str = "direct",
    held: np.ndarray | None = None,
) -> LinearFit:
    """Fit all sources (and optional sky terms) simultaneously.

    Parameters
    ----------
    groups : `list` [`StampGroup`]
        Rendered stamps (with derivatives when ``derivatives``).
    n_src : `int`
        Number of sources.
    data : `numpy.ndarray`
        Image minus the sky that is not being fit.
    weight : `numpy.ndarray`
        Inverse variance (0 = unusable pixel).
    derivatives : `bool`
        Fit position-derivative terms as well as fluxes.
    flux0, gx0, gy0 : `numpy.ndarray`
        Warm start.
    sky_basis : `numpy.ndarray`, shape (npix, K), optional
        Sky terms fit simultaneously (e.g. constant, x, y).
    solver : `str`
        ``"direct"`` (sparse Cholesky of the normal matrix by CHOLMOD when
        cvxopt is installed, else SuperLU's symmetric LU; conjugate
        gradients if it fails), ``"superlu"`` (always SuperLU) or ``"cg"``.
    held : `numpy.ndarray` [`bool`], optional
        Sources whose positions are held fixed: with ``derivatives`` they get
        no derivative columns (their ``gx``, ``gy`` are 0; their
        ``block_inv`` is the inverse of their own 3x3 block, as for the
        others).  A crowded forced scene is mostly such sources; leaving
        their derivatives out divides the normal matrix's size by up to 9.
    """
    ncomp = 3 if derivatives else 1
    sqrt_w = np.sqrt(np.maximum(weight, 0.0)).ravel()
    with_d = np.full(n_src, derivatives)
    if derivatives and held is not None:
        with_d &= ~np.asarray(held, bool)
    A, col_of_src, nsrc_cols, held_blocks = _design(
        groups, n_src, sqrt_w, derivatives, with_d, sky_basis
    )
    ntot = A.shape[1]
    nsky = 0 if sky_basis is None else sky_basis.shape[1]
    empty = np.zeros(n_src)
    if ntot == 0:
        return LinearFit(
            empty,
            empty.copy() if derivatives else None,
            empty.copy() if derivatives else None,
            None,
            empty.copy(),
            np.zeros((0, ncomp, ncomp)),
            0,
            True,
        )
    b = A.T @ (sqrt_w * data.ravel())
    H = (A.T @ A).tocsr()
    del A
    dcol = col_of_src[with_d]  # flux columns of the sources with derivatives
    ridged = dcol if with_d.any() and ridge > 0 else None
    H, dead = _regularise(H, b, ridged, ridge)

    block_inv = (
        _block_inverse(H, col_of_src, ncomp, with_d, held_blocks, ridge)
        if n_src
        else np.zeros((0, ncomp, ncomp))
    )
    x0 = np.zeros(ntot)
    x0[col_of_src] = flux0
    if with_d.any() and gx0 is not None:
        x0[dcol + 1] = gx0[with_d]
        x0[dcol + 2] = gy0[with_d]
    sol, path, factor_nnz, factorizer = None, "cg", 0, ""
    if solver in ("direct", "superlu"):
        direct = _solve_direct(H, b, "auto" if solver == "direct" else "superlu")
        H, sol, factor_nnz = direct.H, direct.sol, direct.factor_nnz
        factorizer = direct.factorizer
        if sol is not None:
            path = "direct+ridge" if direct.ridged else "direct"
        else:
            _log.debug("Direct solve failed; using conjugate gradients.")
    iterations, converged = 0, True
    if sol is None:
        sol, iterations, converged = _solve_cg(
            H, b, x0, block_inv, col_of_src, with_d, nsrc_cols, ntot, rtol, maxiter
        )
    sol[dead] = np.nan
    flux = sol[col_of_src]
    gx = gy = None
    if derivatives:
        gx, gy = np.zeros(n_src), np.zeros(n_src)
        gx[with_d], gy[with_d] = sol[dcol + 1], sol[dcol + 2]
    sky_terms = sol[nsrc_cols:] if nsky else None
    if n_src:
        var = local_inverse_diagonal(H, col_of_src, n_neighbours)
    else:
        var = np.zeros(0)
    return LinearFit(
        flux,
        gx,
        gy,
        sky_terms,
        np.sqrt(var),
        block_inv,
        iterations,
        converged,
        path,
        H.nnz,
        factor_nnz,
        factorizer,
    )


def _regularise(
    H: sp.csr_matrix, b: np.ndarray, ridged: np.ndarray | None, ridge: float
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Damp the derivative terms and pin unconstrained columns; ``b`` is zeroed there.

    ``ridged``: the flux columns whose two derivative columns (the next
    two) get ``ridge`` times their diagonal added (`None`: no ridge).
    Unconstrained columns (a source entirely on zero-weight pixels) get a
    unit diagonal so that the system stays positive definite; they are
    returned as ``dead``.
    """
    ntot = H.shape[0]
    diag = H.diagonal()
    if ridged is not None:
        dcols = np.concatenate([ridged + 1, ridged + 2])
        bump = np.zeros(ntot)
        bump[dcols] = ridge * np.maximum(diag[dcols], 1e-300)
        H = (H + sp.diags(bump)).tocsr()
    dead = ~(H.diagonal() > 0)
    if dead.any():
        fix = np.zeros(ntot)
        fix[dead] = 1.0
        H = (H + sp.diags(fix)).tocsr()
        b[dead] = 0.0
    return H, dead


#: Pivots of the unit-diagonal normal matrix below this mark a column that is,
#: to within rounding, a combination of the columns eliminated before it (two
#: forced positions on the same spot, a stamp on masked pixels); see `_solve_direct`.
PIVOT_TOL = 1e-10
#: Ridge, relative to each column's diagonal, added to the whole system when a
#: pivot falls below `PIVOT_TOL`.
DEGENERATE_RIDGE = 1e-8


@dataclass
class DirectSolve:
    """What the direct solve did (for callers and tests; see `_solve_direct`)."""

    sol: np.ndarray | None  # `None`: factorisation failed; use conjugate gradients
    H: sp.csr_matrix  # the matrix solved (``H`` plus the degeneracy ridge, if any)
    factor_nnz: int  # non-zeros of L + U (0 when it failed)
    min_pivot: float  # smallest pivot of the unit-diagonal matrix
    ridged: bool  # the degeneracy ridge was needed
    factorizer: str = ""  # "cholmod" or "superlu"


def cholmod_available() -> bool:
    """Whether CHOLMOD (through cvxopt) can factorise the normal matrix."""
    return _cholmod() is not None


def _cholmod():
    try:
        from cvxopt import cholmod, matrix, spmatrix
    except ImportError:  # pragma: no cover - cvxopt is a dependency; the stack may lack it
        return None
    return cholmod, matrix, spmatrix


class _SuperLU:
    """LU of a symmetric positive definite, unit-diagonal matrix without pivoting."""

    name = "superlu"

    def __init__(self, Hs: sp.csc_matrix):
        # Minimum-degree ordering of H + H^T suits these 2-D neighbour graphs.
        # diag_pivot_thresh=0 with SymmetricMode keeps that ordering: SuperLU's
        # default partial pivoting (threshold 1) swaps rows whenever an
        # off-diagonal exceeds the diagonal, which the symmetric ordering does
        # not foresee; on crowded forced scenes that multiplied the factor's
        # fill by 6 and its time by 20 (module docstring).  H is positive
        # definite, so elimination without pivoting is stable (it is Cholesky
        # in LU form).  An exactly zero pivot raises RuntimeError.
        self.lu = splu(
            Hs,
            permc_spec="MMD_AT_PLUS_A",
            diag_pivot_thresh=0.0,
            options=dict(SymmetricMode=True),
        )
        self.pivots = self.lu.U.diagonal()

    def solve(self, b: np.ndarray) -> np.ndarray:
        return self.lu.solve(b)

    def nnz(self) -> int:
        return int(self.lu.L.nnz + self.lu.U.nnz)


class _Cholmod:
    """Supernodal Cholesky ``L L^T`` of a unit-diagonal matrix by CHOLMOD (cvxopt).

    3-5x faster than `_SuperLU` on the normal matrices of crowded scenes
    (1024x1024 at 0.1 stars/px, 57 000 unknowns, 3.0 million non-zeros:
    0.37 s against 1.71 s, the solutions equal to 1e-12).  A matrix that is
    not numerically positive definite raises RuntimeError, as a zero pivot
    of `_SuperLU` does.
    """

    name = "cholmod"

    def __init__(self, Hs: sp.csc_matrix):
        cholmod, _, spmatrix = _cholmod()
        self._n = Hs.shape[0]
        cols = np.repeat(np.arange(self._n), np.diff(Hs.indptr))
        lower = Hs.indices >= cols
        m = spmatrix(
            Hs.data[lower],
            Hs.indices[lower].astype(np.int64),
            cols[lower].astype(np.int64),
            size=Hs.shape,
        )
        saved = cholmod.options.get("supernodal")
        cholmod.options["supernodal"] = 2  # L L^T, whose diagonal `diag` reads
        try:
            self.factor = cholmod.symbolic(m, uplo="L")
            cholmod.numeric(m, self.factor)
        except ArithmeticError as err:
            raise RuntimeError(f"CHOLMOD: {err}") from err
        finally:
            if saved is None:
                cholmod.options.pop("supernodal", None)
            else:
                cholmod.options["supernodal"] = saved
        self.pivots = np.asarray(cholmod.diag(self.factor)).ravel() ** 2

    def solve(self, b: np.ndarray) -> np.ndarray:
        cholmod, matrix, _ = _cholmod()
        x = matrix(np.ascontiguousarray(b, dtype=np.float64))
        cholmod.solve(self.factor, x)
        return np.asarray(x).ravel()

    def nnz(self) -> int:
        """Non-zeros of ``L + L^T`` (as `_SuperLU`'s ``L + U``); converts the factor, so
        it is only computed when asked for."""
        cholmod, _, _ = _cholmod()
        return 2 * len(cholmod.getfactor(self.factor).V) - self._n


def _factor(Hs: sp.csc_matrix, factorizer: str = "auto"):
    """Factorisation of a symmetric positive definite, unit-diagonal matrix.

    ``factorizer``: ``"cholmod"``, ``"superlu"`` or ``"auto"`` (CHOLMOD when
    cvxopt is installed).
    """
    if factorizer == "cholmod" or (factorizer == "auto" and cholmod_available()):
        return _Cholmod(Hs)
    return _SuperLU(Hs)


def _solve_direct(
    H: sp.csr_matrix, b: np.ndarray, factorizer: str = "auto", count_fill: bool = False
) -> DirectSolve:
    """Sparse direct solution of ``H x = b`` on the diagonally scaled system.

    ``H`` is scaled to unit diagonal (``D H D``, ``D = diag(H)^-1/2``; every
    diagonal is positive after `_regularise`), which makes each pivot the
    fraction of its column's norm that the columns eliminated before it do
    not explain.  It is factorised by `_factor` (CHOLMOD's Cholesky, or
    SuperLU's unpivoted symmetric LU).  A pivot below `PIVOT_TOL` (or a
    failed factorisation) means the system is numerically rank-deficient;
    then `DEGENERATE_RIDGE` times the diagonal is added to every column and
    the matrix is factorised again (an exact duplicate pair then shares its
    flux equally, with a very large error).  Returns ``sol = None`` when
    that fails too or the solution is not finite.  The factor's non-zeros
    are counted for SuperLU, and for CHOLMOD only with ``count_fill``.
    """
    d = H.diagonal()
    s = 1.0 / np.sqrt(d)
    # D H D on H's own arrays; H is symmetric, so its CSR arrays are also those of
    # its CSC form.
    H = H.tocsr()
    rows = np.repeat(np.arange(H.shape[0]), np.diff(H.indptr))
    # (Copies of the index arrays: SuperLU sorts its input's indices in place.)
    Hs = sp.csc_matrix(
        (H.data * s[rows] * s[H.indices], H.indices.copy(), H.indptr.copy()), shape=H.shape
    )
    ridged = False
    min_pivot = float("nan")
    for attempt in range(2):
        try:
            lu = _factor(Hs, factorizer)
        except RuntimeError as err:  # an exactly zero pivot / not positive definite
            _log.debug("Direct solve: %s.", err)
            lu = None
        if lu is not None:
            piv = lu.pivots
            min_pivot = float(piv.min()) if piv.size else 1.0
            if min_pivot > PIVOT_TOL and np.all(np.isfinite(piv)):
                break
        if attempt == 0:
            _log.debug("Direct solve: degenerate columns (smallest pivot %g); ridging.", min_pivot)
            ridged = True
            Hs = (Hs + DEGENERATE_RIDGE * sp.identity(Hs.shape[0], format="csc")).tocsc()
            H = (H + sp.diags(DEGENERATE_RIDGE * d)).tocsr()
        lu = None
    if lu is None:
        return DirectSolve(None, H, 0, min_pivot, ridged)
    sol = s * lu.solve(s * b)
    nnz = lu.nnz() if (count_fill or lu.name == "superlu") else 0
    if not np.all(np.isfinite(sol)):
        return DirectSolve(None, H, nnz, min_pivot, ridged, lu.name)
    return DirectSolve(sol, H, nnz, min_pivot, ridged, lu.name)


def _solve_cg(H, b, x0, block_inv, col_of_src, with_d, nsrc_cols, ntot, rtol, maxiter):
    """Conjugate gradients preconditioned with each source's own block."""
    n_src = len(col_of_src)
    nsky = ntot - nsrc_cols
    sky_inv = None
    if nsky:
        sidx = np.arange(nsrc_cols, ntot)
        sky_inv = np.linalg.inv(H[sidx][:, sidx].toarray())
    ncomp = block_inv.shape[1] if n_src else 1
    moving = np.nonzero(with_d)[0]
    fixed = np.nonzero(~with_d)[0]
    cols = col_of_src[moving, None] + np.arange(ncomp)[None, :]
    safe_inv = np.nan_to_num(block_inv[moving])
    fixed_cols = col_of_src[fixed]
    fixed_inv = np.nan_to_num(block_inv[fixed, 0, 0])

    def precondition(v):
        out = np.empty_like(v)
        if len(moving):
            out[cols] = np.einsum("nab,nb->na", safe_inv, v[cols])
        if len(fixed):
            out[fixed_cols] = fixed_inv * v[fixed_cols]
        if nsky:
            out[nsrc_cols:] = sky_inv @ v[nsrc_cols:]
        return out

    iterations = [0]

    def count(_):
        iterations[0] += 1

    M = LinearOperator(H.shape, matvec=precondition, dtype=float)
    sol, info = cg(H, b, x0=x0, rtol=rtol, maxiter=maxiter, M=M, callback=count)
    if info != 0:
        _log.warning("Conjugate gradient did not reach rtol=%g in %d iterations.", rtol, maxiter)
    return sol, iterations[0], info == 0
