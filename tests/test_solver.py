"""The simultaneous linear solve (`engine.linear.solve_scene`) and its behaviour on
crowded and degenerate systems (issue 16, "Crowding without a cliff").

The solver's result is checked against a dense least-squares reference built
here from the stamps; the structural checks (which path solved the system,
the fill of the factor) are the ones that separate today's unpivoted
symmetric factorisation from SuperLU's default partial pivoting, which on
crowded systems multiplies the factor's non-zeros (8.4x the normal matrix
against 3.0x on the 200x200 scene below, 21x against 3.5x on a 512x512
forced scene) and its time.
"""

import numpy as np
import pytest
import scipy.sparse as sp

from lsst.meas.crowdsource.engine import fit_image, loop
from lsst.meas.crowdsource.engine.linear import _design, _solve_direct, solve_scene
from lsst.meas.crowdsource.engine.psf import PixelPsf, moffat_stamp
from lsst.meas.crowdsource.engine.scene import add_derivatives, render_scene, scene_image
from lsst.meas.crowdsource.testing.simulate import simulate_field

PSF = PixelPsf.from_stamp(moffat_stamp(25, 3.5))


def scene(shape, x, y, derivatives=True, size=13, derivative_size=None):
    return render_scene(
        np.asarray(x, float),
        np.asarray(y, float),
        np.zeros(len(x), int),
        [size],
        PSF,
        shape,
        derivatives,
        derivative_size=derivative_size,
    )


def dense_design(groups, n_src, shape, weight, derivatives, held, sky_basis):
    """The weighted design matrix, built densely and independently of `linear._design`."""
    npix = shape[0] * shape[1]
    sw = np.sqrt(weight).ravel()
    cols, kinds = {}, {}
    for g in groups:
        comps = [g.psf] + ([g.dpsf_dx, g.dpsf_dy] if derivatives else [])
        for row, src in enumerate(g.index):
            pix = g.pix[row].ravel()
            inside = pix >= 0
            for k, c in enumerate(comps):
                if k and held[src]:
                    continue
                col = np.zeros(npix)
                col[pix[inside]] = c[row].ravel()[inside]
                cols[(src, k)] = col * sw
                kinds[(src, k)] = k
    keys = sorted(cols)
    A = np.column_stack([cols[k] for k in keys])
    if sky_basis is not None:
        A = np.column_stack([A, sky_basis * sw[:, None]])
    return A, keys


def dense_solution(A, keys, data, weight, ridge):
    b = A.T @ (np.sqrt(weight).ravel() * data.ravel())
    H = A.T @ A
    d = np.diag(H).copy()
    for i, (_, k) in enumerate(keys):
        if k:
            H[i, i] += ridge * d[i]
    return np.linalg.solve(H, b)


@pytest.mark.parametrize("derivatives", [True, False])
@pytest.mark.parametrize("with_held", [False, True])
@pytest.mark.parametrize("derivative_size", [None, 7])
@pytest.mark.parametrize("solver", ["direct", "superlu"])
def test_solve_matches_dense_reference(derivatives, with_held, derivative_size, solver):
    """Fluxes, derivative terms and sky terms equal a dense solve to rounding
    (also with derivative stamps cut to a 7x7 core of the 13x13 stamps, whose
    zeros `linear._design` leaves out of the sparse matrix)."""
    rng = np.random.default_rng(4)
    shape = (48, 56)
    n = 40
    x = np.concatenate([rng.uniform(3, shape[1] - 4, n - 2), [20.0, 20.5]])  # a close pair
    y = np.concatenate([rng.uniform(3, shape[0] - 4, n - 2), [24.0, 24.3]])
    weight = rng.uniform(0.5, 1.5, shape) * 1e-3
    weight[30:36, 8:14] = 0.0  # a masked block
    weight[:, 40] = 0.0  # a bad column
    flux = rng.uniform(200, 5000, n)
    groups = scene(shape, x, y, derivatives, derivative_size=derivative_size)
    model = np.zeros(shape[0] * shape[1])
    for g in groups:
        inside = g.pix >= 0
        np.add.at(model, g.pix[inside], (g.psf * flux[g.index][:, None, None])[inside])
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    sky_basis = np.column_stack([np.ones(xx.size), xx.ravel() / 50.0, yy.ravel() / 50.0])
    data = model.reshape(shape) + 3.0 + rng.normal(size=shape) * 30.0
    held = np.zeros(n, bool)
    if with_held:
        held[::3] = True
    ridge = 1e-4
    fit = solve_scene(
        groups,
        n,
        data,
        weight,
        derivatives,
        np.zeros(n),
        sky_basis=sky_basis,
        ridge=ridge,
        held=held if with_held else None,
        solver=solver,
    )
    assert fit.solver_path == "direct" and fit.converged
    assert fit.factorizer == ("cholmod" if solver == "direct" else "superlu")

    A, keys = dense_design(groups, n, shape, weight, derivatives, held & derivatives, sky_basis)
    ref = dense_solution(A, keys, data, weight, ridge)
    at = {k: i for i, k in enumerate(keys)}
    ref_flux = np.array([ref[at[(i, 0)]] for i in range(n)])
    scale = np.abs(ref_flux).max()
    np.testing.assert_allclose(fit.flux, ref_flux, rtol=0, atol=1e-9 * scale)
    np.testing.assert_allclose(fit.sky_terms, ref[len(keys) :], rtol=0, atol=1e-9 * scale)
    if derivatives:
        for k, got in ((1, fit.gx), (2, fit.gy)):
            want = np.array([ref[at[(i, k)]] if (i, k) in at else 0.0 for i in range(n)])
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-9 * scale)
        # Held sources' position errors come from their own 3x3 block all the same.
        assert np.isfinite(fit.block_inv).all()
    else:
        assert fit.gx is None


def test_derivative_stamps_cut_to_their_core():
    """``derivative_size``: the flux stamps are whole, the derivative stamps are
    the core-sized render inside the central square and zero outside it, for
    the sources that have derivatives."""
    rng = np.random.default_rng(7)
    shape = (60, 60)
    x, y = rng.uniform(10, 50, 6), rng.uniform(10, 50, 6)
    need = np.array([True, False, True, True, False, True])
    full = render_scene(x, y, np.zeros(6, int), [21], PSF, shape, True, need_d=need)
    cut = render_scene(
        x, y, np.zeros(6, int), [21], PSF, shape, True, need_d=need, derivative_size=9
    )
    (f,), (c,) = full, cut
    np.testing.assert_array_equal(c.psf, f.psf)
    np.testing.assert_array_equal(c.pix, f.pix)
    _, cdx, cdy = PSF.render(x[need], y[need], 9, derivatives=True)
    core = (slice(None), slice(6, 15), slice(6, 15))
    for got, want in ((c.dpsf_dx, cdx), (c.dpsf_dy, cdy)):
        np.testing.assert_array_equal(got[need][core], want)
        outside = got.copy()
        outside[core] = 0.0
        assert not outside.any()
        assert not got[~need].any()
    # Larger derivative sizes than the stamp keep the whole stamp.
    (same,) = render_scene(x, y, np.zeros(6, int), [21], PSF, shape, True, derivative_size=31)
    np.testing.assert_array_equal(
        same.dpsf_dx, render_scene(x, y, np.zeros(6, int), [21], PSF, shape, True)[0].dpsf_dx
    )


def test_held_sources_without_derivative_stamps():
    """``need_d`` leaves the held sources' derivative stamps out, and nothing else changes.

    Same PSF stamps; the solve, the model and (for the sources with
    derivatives) the blocks are the same to the bit; held sources'
    blocks are flux-only; `add_derivatives` renders the missing stamps as
    a full render does.
    """
    rng = np.random.default_rng(5)
    shape = (40, 44)
    n = 30
    x, y = rng.uniform(2, shape[1] - 3, n), rng.uniform(2, shape[0] - 3, n)
    sizes = [9, 13]
    size_idx = rng.integers(0, 2, n)
    held = np.zeros(n, bool)
    held[::2] = True
    weight = rng.uniform(0.5, 1.5, shape) * 1e-3
    data = rng.normal(size=shape) * 30.0 + 100.0
    full = render_scene(x, y, size_idx, sizes, PSF, shape, True)
    part = render_scene(x, y, size_idx, sizes, PSF, shape, True, need_d=~held)
    for f, p in zip(full, part):
        np.testing.assert_array_equal(p.psf, f.psf)
        np.testing.assert_array_equal(p.with_d, ~held[p.index])
        np.testing.assert_array_equal(p.dpsf_dx[p.with_d], f.dpsf_dx[p.with_d])
        assert not p.dpsf_dy[~p.with_d].any()
    fits = [solve_scene(g, n, data, weight, True, np.zeros(n), held=held) for g in (full, part)]
    for name in ("flux", "gx", "gy", "flux_err"):
        np.testing.assert_array_equal(getattr(fits[1], name), getattr(fits[0], name))
    np.testing.assert_array_equal(fits[1].block_inv[~held], fits[0].block_inv[~held])
    assert np.isfinite(fits[1].block_inv[held, 0, 0]).all()
    assert np.isnan(fits[1].block_inv[held, 1:]).all()
    models = [scene_image(g, fits[0].flux, shape, fits[0].gx, fits[0].gy) for g in (full, part)]
    np.testing.assert_array_equal(models[1], models[0])
    rows = held | (rng.uniform(size=n) < 0.5)
    added = add_derivatives(part, rows, x, y, PSF)
    assert sorted(np.concatenate([g.index for g in added])) == list(np.nonzero(rows)[0])
    for a in added:
        f = next(g for g in full if g.size == a.size)
        at = np.searchsorted(f.index, a.index)
        np.testing.assert_array_equal(a.dpsf_dx, f.dpsf_dx[at])
        np.testing.assert_array_equal(a.dpsf_dy, f.dpsf_dy[at])
        np.testing.assert_array_equal(a.psf, f.psf[at])


@pytest.mark.parametrize("solver", ["direct", "superlu"])
def test_duplicate_columns_are_ridged(solver):
    """Two sources on the same spot make the system singular: it is ridged, not sent to CG
    (by CHOLMOD and by SuperLU)."""
    rng = np.random.default_rng(7)
    shape = (40, 40)
    x = np.array([10.0, 25.2, 30.0, 25.2])
    y = np.array([12.0, 20.7, 31.0, 20.7])  # sources 1 and 3 coincide
    weight = np.full(shape, 1e-3)
    one = scene(shape, x[:3], y[:3])
    truth = np.zeros(shape[0] * shape[1])
    for g in one:
        np.add.at(
            truth, g.pix.ravel(), (g.psf * np.array([900.0, 3000.0, 1500.0])[:, None, None]).ravel()
        )
    data = truth.reshape(shape) + rng.normal(size=shape) * 30.0
    single = solve_scene(one, 3, data, weight, True, np.zeros(3), solver=solver)
    dup = solve_scene(scene(shape, x, y), 4, data, weight, True, np.zeros(4), solver=solver)
    assert single.solver_path == "direct"
    assert dup.solver_path == "direct+ridge" and dup.converged
    # The pair shares the star's flux equally; the other sources do not notice.
    np.testing.assert_allclose(dup.flux[1], dup.flux[3], rtol=1e-6)
    np.testing.assert_allclose(dup.flux[1] + dup.flux[3], single.flux[1], rtol=1e-6)
    np.testing.assert_allclose(dup.flux[[0, 2]], single.flux[[0, 2]], rtol=1e-6)
    # Individually the pair is unconstrained, and its errors say so.
    assert np.isfinite(dup.flux_err).all()
    assert dup.flux_err[1] > 100 * single.flux_err[1]


def test_crowded_factor_fill_is_bounded():
    """1200 sources with derivatives on 200x200 px: the factor stays near 3x the normal matrix.

    (SuperLU's default partial pivoting gives 8.4x here and the fill grows with the scene:
    21x on the 512x512 forced benchmark scene.)
    """
    rng = np.random.default_rng(1)
    shape, n = (200, 200), 1200
    x, y = rng.uniform(2, 197, n), rng.uniform(2, 197, n)
    data = rng.normal(size=shape) * 30.0
    groups = scene(shape, x, y)
    weight = np.full(shape, 1e-3)
    fit = solve_scene(groups, n, data, weight, True, np.zeros(n), solver="superlu")
    assert fit.solver_path == "direct" and fit.converged and fit.factorizer == "superlu"
    assert 0 < fit.factor_nnz <= 5 * fit.normal_nnz
    assert np.isfinite(fit.flux).all() and np.isfinite(fit.flux_err).all()
    # CHOLMOD's Cholesky of the same normal matrix: about the same fill, the same solution.
    sqrt_w = np.sqrt(weight).ravel()
    A = _design(groups, n, sqrt_w, True, np.ones(n, bool), None)[0]
    H = (A.T @ A).tocsr()
    H = (H + sp.diags(1e-4 * H.diagonal())).tocsr()
    b = A.T @ (sqrt_w * data.ravel())
    lu = _solve_direct(H, b, "superlu")
    chol = _solve_direct(H, b, "cholmod", count_fill=True)
    assert (lu.factorizer, chol.factorizer) == ("superlu", "cholmod")
    assert not lu.ridged and not chol.ridged
    # (Supernodes store some explicit zeros: 678 222 against SuperLU's 638 244 here.)
    assert 0 < chol.factor_nnz <= min(1.5 * lu.factor_nnz, 5 * H.nnz)
    np.testing.assert_allclose(chol.sol, lu.sol, rtol=0, atol=1e-9 * np.abs(lu.sol).max())


def test_forced_many_faint_targets_converge(monkeypatch):
    """300 forced targets on a 128x128 field, most on empty sky, some sharing a pixel,
    a few exactly coincident, a few on masked pixels: every solve is direct, converged
    and bounded; every constrained target has a finite flux and error."""
    fld = simulate_field((128, 128), density=0.01, seed=3, psf="moffat", fwhm=3.5)
    rng = np.random.default_rng(5)
    x, y = rng.uniform(5, 122, 240), rng.uniform(5, 122, 240)
    px, py = np.round(rng.uniform(5, 122, 25)), np.round(rng.uniform(5, 122, 25))
    same = ([60.0, 60.0, 30.5, 30.5, 90.1, 90.1, 90.1], [61.0, 61.0, 40.0, 40.0, 20.0, 20.0, 20.0])
    masked = ([100.0, 101.5, 103.0], [100.0, 101.0, 102.0])
    x = np.concatenate([x, px - 0.2, px + 0.2, same[0], masked[0]])
    y = np.concatenate([y, py, py + 0.1, same[1], masked[1]])
    bad = np.zeros(fld.image.shape, bool)
    bad[92:112, 92:112] = True
    fits = []
    solve = loop.solve_scene

    def spy(*args, **kwargs):
        fits.append(solve(*args, **kwargs))
        return fits[-1]

    monkeypatch.setattr(loop, "solve_scene", spy)
    res = fit_image(
        fld.image, fld.variance, bad=bad, psf=fld.psf_stamp, forced_x=x, forced_y=y, xy0=fld.xy0
    )
    assert len(fits) >= 5
    for f in fits:
        assert f.converged and f.solver_path in ("direct", "direct+ridge")
        assert f.factorizer == "cholmod"
    c = res.columns
    rows = np.argsort(np.where(c["forced_index"] >= 0, c["forced_index"], len(c["x"])))[: len(x)]
    assert (c["forced_index"][rows] == np.arange(len(x))).all()
    flux, err = c["flux"][rows], c["flux_err"][rows]
    constrained = ~((x >= 92) & (x < 112) & (y >= 92) & (y < 112))  # outside the masked block
    assert constrained.sum() > 250
    assert np.isfinite(flux[constrained]).all() and np.isfinite(err[constrained]).all()
    assert (err[constrained] > 0).all()
    # The targets deep inside the masked block have no usable pixels: not fit, NaN.
    assert np.isnan(flux[-len(masked[0]) :]).all()
    # Coincident targets share their light equally; each is individually unconstrained.
    k = 290
    np.testing.assert_allclose(flux[k], flux[k + 1], rtol=1e-5)
    random = constrained & (np.arange(len(x)) < 240)
    assert err[k] > 100 * np.median(err[random])
    # Empty-sky targets scatter about zero at their errors (no runaway fluxes).
    z = flux[random] / err[random]
    assert np.median(np.abs(z)) < 5
