"""Tests of the numpy/scipy engine: building blocks, bad input, accuracy."""

import numpy as np
import pytest
from scipy.spatial import cKDTree

from lsst.meas.crowdsource.engine import (
    ENGINE_COLUMNS,
    FitParams,
    InputError,
    fit_image,
    moffat_stamp,
)
from lsst.meas.crowdsource.engine.interpolation import shift_stamps
from lsst.meas.crowdsource.engine.linear import local_inverse_diagonal
from lsst.meas.crowdsource.engine.psf import psf_from_callable
from lsst.meas.crowdsource.engine.psf_io import psf_from_dict, psf_to_dict
from lsst.meas.crowdsource.engine.tiling import make_tiles
from lsst.meas.crowdsource.testing.simulate import simulate_field


def _planes(field):
    bad = (field.mask & (1 << field.mask_planes["BAD"])) != 0
    sat = (field.mask & (1 << field.mask_planes["SAT"])) != 0
    return bad, sat


def _score(result, truth, shape, radius=1.0):
    """Completeness per S/N bin, matched pairs and the spurious count."""
    c = result.columns
    x, y = np.asarray(truth["x"]), np.asarray(truth["y"])
    d, j = cKDTree(np.column_stack([x, y])).query(np.column_stack([c["x"], c["y"]]))
    matched = d < radius
    found = np.zeros(len(x), bool)
    found[j[matched]] = True
    inside = (x > 2) & (x < shape[1] - 3) & (y > 2) & (y < shape[0] - 3)
    return found, inside, matched, j


def _bright_flux_ratio(result, truth, shape):
    """Fitted over true flux of the matched, unsaturated S/N > 100 stars."""
    found, inside, matched, j = _score(result, truth, shape)
    bright = matched & (np.asarray(truth["snr"])[j] > 100) & ~np.asarray(truth["saturated"])[j]
    return result.columns["flux"][bright] / np.asarray(truth["flux"])[j[bright]]


def _crowded_field():
    """384x384, 0.02 stars/px, varying galsim PSF, saturated stars, a bad column."""
    return simulate_field(
        (384, 384), density=0.02, seed=3, psf="galsim", saturation=60000.0, bad_columns=1
    )


# --- building blocks -------------------------------------------------------


def test_shift_conserves_flux_and_derivative_matches_finite_difference():
    # A profile that is zero near the stamp edge, so no light leaves the stamp.
    stamp = np.pad(moffat_stamp(25, 3.5), 8)[None].repeat(3, axis=0)
    dx = np.array([0.0, 0.3, -0.45])
    dy = np.array([0.1, -0.2, 0.4])
    shifted, ddx, ddy = shift_stamps(stamp, dx, dy, derivatives=True)
    np.testing.assert_allclose(shifted.sum(axis=(1, 2)), stamp.sum(axis=(1, 2)), rtol=1e-6)
    # The centroid moves by the shift.
    off = np.arange(41) - 20
    cx = (shifted.sum(axis=1) * off).sum(axis=1) / shifted.sum(axis=(1, 2))
    # Lanczos interpolation of a pixel-sampled profile moves the centre of
    # light by the shift to within a few hundredths of a pixel.
    np.testing.assert_allclose(cx, dx, atol=0.025)
    eps = 1e-5
    plus = shift_stamps(stamp, dx + eps, dy)
    minus = shift_stamps(stamp, dx - eps, dy)
    np.testing.assert_allclose(ddx, (plus - minus) / (2 * eps), atol=1e-7)
    plus = shift_stamps(stamp, dx, dy + eps)
    minus = shift_stamps(stamp, dx, dy - eps)
    np.testing.assert_allclose(ddy, (plus - minus) / (2 * eps), atol=1e-7)


def test_local_inverse_diagonal_is_exact_for_small_blocks():
    import scipy.sparse as sp

    rng = np.random.default_rng(2)
    a = rng.normal(size=(6, 6))
    dense = a @ a.T + 6 * np.eye(6)
    H = sp.csr_matrix(np.kron(np.eye(3), dense))  # three independent groups of 6
    var = local_inverse_diagonal(H, np.arange(18), n_neighbours=8)
    np.testing.assert_allclose(var, np.diag(np.linalg.inv(H.toarray())), rtol=1e-10)


def test_psf_from_callable_reproduces_varying_psf():
    def psf(x, y):
        return moffat_stamp(21, 3.0 + 0.5 * x / 100.0 + 0.2 * (y / 100.0) ** 2)

    model = psf_from_callable(psf, (0, 0, 100, 100), order=2)
    for x, y in [(0, 0), (50, 70), (100, 100)]:
        np.testing.assert_allclose(model.stamp(x, y), psf(x, y), atol=2e-4)
    back = psf_from_dict(psf_to_dict(model, (10, 20)))
    np.testing.assert_allclose(back.stamp(60, 90), model.stamp(50, 70))


def test_psf_wing_ignores_sky_dominated_outer_bins():
    """A measured wing profile whose outer bins are sky residuals (isolated
    "significant" bins far above the profile) is still extended with the
    power law of its well-measured part, not replaced by the Moffat fallback."""
    from lsst.meas.crowdsource.engine.psf_fit import extend_with_wings

    large, core = 59, 19
    c = large // 2
    yy, xx = np.mgrid[0:large, 0:large] - c
    r = np.hypot(xx, yy)
    true = (1 + (r / 1.2) ** 2) ** -1.9  # a shallow, Kolmogorov-like wing
    true /= true.sum()
    core_stamp = true[c - 9 : c + 10, c - 9 : c + 10][None]
    radius = np.arange(6, 42) + 0.5
    profile = (1 + (radius / 1.2) ** 2) ** -1.9 / ((1 + (r / 1.2) ** 2) ** -1.9).sum()
    error = 0.05 * profile
    # Beyond 16 px: every other bin lost in the noise, the rest 3x too bright.
    far = radius > 16
    error[far] = profile[far] * np.where(np.arange(far.sum()) % 2, 0.3, 2.0)
    profile[far] *= 3.0
    out = extend_with_wings(core_stamp, large, profile=(radius, profile, error))[0]
    outside = r > core // 2
    assert out[outside].sum() == pytest.approx(true[outside].sum(), rel=0.1)


def test_psf_fit_weights_stars_by_their_noise():
    """A few bright stars among many faint ones: weighting the normalised
    stamps by S/N recovers the varying PSF better than equal weights."""
    from lsst.meas.crowdsource.engine.psf import PixelPsf
    from lsst.meas.crowdsource.engine.psf_fit import fit_psf

    rng = np.random.default_rng(4)
    core, n = 19, 300
    x = rng.uniform(0, 500, n)
    y = rng.uniform(0, 500, n)
    fwhm = 3.0 + 0.6 * x / 500  # varies linearly across the field
    truth = np.array([moffat_stamp(core, f) for f in fwhm])
    snr = np.where(np.arange(n) < 30, 1000.0, 30.0)
    flux = np.full(n, 1e4)
    # Per-pixel noise such that each star has the given S/N.
    sigma = flux / snr / np.sqrt(1.0 / (truth**2).sum(axis=(1, 2)))
    stamps = flux[:, None, None] * truth + sigma[:, None, None] * rng.normal(size=truth.shape)
    zeros = np.zeros(n)
    current = PixelPsf.from_stamp(moffat_stamp(core, 3.3))
    errors = {}
    for label, weights in (("equal", None), ("by S/N", snr)):
        psf, used = fit_psf(
            stamps,
            zeros,
            zeros,
            x,
            y,
            flux,
            current,
            1,
            core,
            5,
            (0, 0, 500, 500),
            snr=weights,
            floor=0.0,
        )
        model = np.array([psf.stamp(xi, yi) for xi, yi in zip(x, y)])
        errors[label] = np.sqrt(np.mean((model - truth) ** 2))
    assert errors["by S/N"] < 0.5 * errors["equal"]
    # A NaN or infinite S/N (a star with no error estimate) does not void the fit.
    odd = snr.copy()
    odd[0], odd[1] = np.nan, np.inf
    psf, used = fit_psf(
        stamps, zeros, zeros, x, y, flux, current, 1, core, 5, (0, 0, 500, 500), snr=odd, floor=0.0
    )
    assert psf is not None and np.all(np.isfinite(psf.coeffs))


def test_tiles_partition_the_image():
    tiles = make_tiles((1000, 700), 256, 32)
    cover = np.zeros((1000, 700), int)
    for t in tiles:
        x0, y0, x1, y1 = t.core
        cover[y0:y1, x0:x1] += 1
        assert t.outer[0] == max(0, x0 - 32) and t.outer[3] == min(1000, y1 + 32)
    assert (cover == 1).all()


def test_tiles_split_where_the_forced_targets_crowd():
    """A core holding more than ``max_targets`` forced targets is halved until none
    does; the cores still partition the image; a sparse core, and any core
    without targets, stays whole; no core is split below `MIN_SPLIT_CORE`."""
    from lsst.meas.crowdsource.engine.tiling import MIN_SPLIT_CORE

    rng = np.random.default_rng(3)
    shape = (1000, 700)
    # A dense clump in the lower left (3000 targets) and a sparse rest (500).
    x = np.concatenate([rng.uniform(0, 300, 3000), rng.uniform(0, 699, 500)])
    y = np.concatenate([rng.uniform(0, 300, 3000), rng.uniform(0, 999, 500)])
    plain = make_tiles(shape, 512, 32)
    assert make_tiles(shape, 512, 32, (x, y), 0) == plain
    tiles = make_tiles(shape, 512, 32, (x, y), 400)
    cover = np.zeros(shape, int)
    for t in tiles:
        x0, y0, x1, y1 = t.core
        cover[y0:y1, x0:x1] += 1
        n = np.count_nonzero(t.in_core(x, y))
        assert n <= 400 or max(x1 - x0, y1 - y0) < 2 * MIN_SPLIT_CORE
        assert t.outer == (max(0, x0 - 32), max(0, y0 - 32), min(700, x1 + 32), min(1000, y1 + 32))
    assert (cover == 1).all()
    assert [t.index for t in tiles] == list(range(len(tiles)))
    assert len(tiles) > len(plain)
    # The core away from the clump (the upper half, ~250 targets) stays whole.
    far = [t for t in tiles if t.core[1] >= 500]
    assert [t.core for t in far] == [plain[1].core]


# --- bad input -------------------------------------------------------------


@pytest.fixture(scope="module")
def small_field():
    return simulate_field((96, 96), density=0.01, seed=5, psf="moffat", bad_columns=0)


def test_shape_mismatch_is_an_error(small_field):
    f = small_field
    with pytest.raises(InputError, match="variance plane has shape"):
        fit_image(f.image, f.variance[:-1])
    with pytest.raises(InputError, match="bad mask"):
        fit_image(f.image, f.variance, bad=np.zeros((3, 3), bool))
    with pytest.raises(InputError, match="2-D"):
        fit_image(f.image[0], f.variance[0])


def test_all_masked_is_an_error(small_field):
    f = small_field
    with pytest.raises(InputError, match="No usable pixels"):
        fit_image(f.image, f.variance, bad=np.ones(f.image.shape, bool))
    with pytest.raises(InputError, match="No usable pixels"):
        fit_image(f.image, -np.abs(f.variance))


@pytest.mark.parametrize(
    "stamp, message",
    [
        (np.full((5, 5), np.nan), "NaN"),
        (np.zeros((5, 5)), "positive sum"),
        (np.ones((4, 4)), "odd size"),
        (np.ones((5, 7)), "square"),
    ],
)
def test_invalid_psf_is_an_error(small_field, stamp, message):
    f = small_field
    with pytest.raises(InputError, match=message):
        fit_image(f.image, f.variance, psf=stamp)


def test_nan_and_nonpositive_variance_pixels_are_ignored(small_field):
    f = small_field
    image = f.image.astype(float).copy()
    var = f.variance.astype(float).copy()
    # The true PSF, kept fixed: this test is about the damaged pixels.
    fixed = FitParams(refit_psf=False)
    clean = fit_image(image, var, psf=f.psf_stamp, params=fixed)
    image[10:12, :] = np.nan
    var[40, :] = 0.0
    var[41, :] = -5.0
    image[60, 30] = np.inf
    dirty = fit_image(image, var, psf=f.psf_stamp, params=fixed)
    assert np.all(np.isfinite(dirty.model))
    # Bright stars are measured the same way with or without the damage.
    bright = clean.columns["flux"] > 50 * clean.columns["flux_err"]
    tree = cKDTree(np.column_stack([dirty.columns["x"], dirty.columns["y"]]))
    d, j = tree.query(np.column_stack([clean.columns["x"][bright], clean.columns["y"][bright]]))
    assert np.mean(d < 0.5) > 0.8
    ok = d < 0.5
    ratio = dirty.columns["flux"][j[ok]] / clean.columns["flux"][bright][ok]
    assert np.median(np.abs(ratio - 1)) < 0.02


def test_empty_field_gives_empty_columns():
    rng = np.random.default_rng(0)
    image = 100 + rng.normal(0, 10, (80, 80))
    result = fit_image(
        image,
        np.full(image.shape, 100.0),
        psf=moffat_stamp(15, 3.0),
        flag_planes={"SAT": np.zeros(image.shape, bool)},
    )
    assert len(result) == 0
    for name, (dtype, _, _) in ENGINE_COLUMNS.items():
        assert result.columns[name].dtype == np.dtype(dtype)
        assert len(result.columns[name]) == 0
    assert "mask_SAT_any" in result.columns and "mask_SAT_center" in result.columns
    assert abs(np.median(result.sky) - 100) < 2


def test_same_input_gives_identical_output(small_field):
    f = small_field
    a = fit_image(f.image, f.variance)
    b = fit_image(f.image, f.variance)
    assert len(a) == len(b) > 0
    for name in a.columns:
        np.testing.assert_array_equal(a.columns[name], b.columns[name])
    np.testing.assert_array_equal(a.model, b.model)


def test_bad_parameters_are_rejected(small_field):
    with pytest.raises(InputError, match="n_iter"):
        fit_image(small_field.image, small_field.variance, params=FitParams(n_iter=0))
    with pytest.raises(InputError, match="stamp size"):
        fit_image(small_field.image, small_field.variance, params=FitParams(stamp_sizes=(0, 0, 40)))


# --- accuracy on simulated fields -------------------------------------------


def test_isolated_stars_reach_the_cramer_rao_bound():
    """Sparse field, true PSF: unbiased fluxes with unit-width pulls."""
    f = simulate_field(
        (256, 256),
        density=0.002,
        seed=11,
        psf="moffat",
        psf_variation=0.0,
        bad_columns=0,
        snr_min=20.0,
        snr_max=500.0,
    )
    result = fit_image(f.image, f.variance, psf=f.psf_stamp, params=FitParams(refit_psf=False))
    found, inside, matched, j = _score(result, f.truth, f.image.shape)
    assert found[inside].mean() > 0.97
    significant = result.columns["flux"] > 5 * result.columns["flux_err"]
    # The few unmatched significant detections sit at the image edges.
    assert (~matched[significant]).sum() <= 0.03 * significant.sum()
    c = result.columns
    t = f.truth
    fl = np.asarray(t["flux"])[j[matched]]
    pull = (c["flux"][matched] - fl) / c["flux_err"][matched]
    # The reported error is the Cramer-Rao bound for an isolated star...
    crb = 1.0 / np.sqrt((f.psf_stamp**2).sum() / np.median(f.variance))
    assert np.median(c["flux_err"][matched] / crb) == pytest.approx(1.0, rel=0.25)
    # ...and the scatter matches it.
    assert 0.8 < 1.4826 * np.median(np.abs(pull - np.median(pull))) < 1.25
    assert abs(np.median(pull)) < 0.3
    dx = c["x"][matched] - np.asarray(t["x"])[j[matched]]
    bright = np.asarray(t["snr"])[j[matched]] > 100
    assert np.sqrt(np.mean(dx[bright] ** 2)) < 0.03


@pytest.fixture(scope="module")
def crowded():
    f = _crowded_field()
    bad, sat = _planes(f)
    result = fit_image(f.image, f.variance, bad=bad, saturated=sat)
    return f, result


def test_crowded_field_completeness_and_spurious_rate(crowded):
    """Non-Moffat varying PSF estimated from the image, gradient sky, bad column,
    saturated stars, 0.02 stars/px down to S/N 2."""
    f, result = crowded
    found, inside, matched, j = _score(result, f.truth, f.image.shape)
    snr = np.asarray(f.truth["snr"])
    assert found[inside & (snr > 30)].mean() > 0.9
    assert found[inside & (snr > 10) & (snr < 30)].mean() > 0.7
    assert found[inside & (snr > 5) & (snr < 10)].mean() > 0.3
    c = result.columns
    significant = c["flux"] > 5 * c["flux_err"]
    # Measured 0.096 (matching radius 1 px; many unmatched detections are
    # blends of the S/N 2-5 stars below the threshold). Guard against worse.
    assert np.mean(~matched[significant]) < 0.13


def test_crowded_field_positions_and_fluxes(crowded):
    f, result = crowded
    found, inside, matched, j = _score(result, f.truth, f.image.shape)
    c = result.columns
    t = f.truth
    snr = np.asarray(t["snr"])[j]
    bright = matched & (snr > 100) & ~np.asarray(t["saturated"])[j]
    dx = c["x"][bright] - np.asarray(t["x"])[j[bright]]
    dy = c["y"][bright] - np.asarray(t["y"])[j[bright]]
    assert np.sqrt(np.median(dx**2 + dy**2)) < 0.06
    frac = c["flux"][bright] / np.asarray(t["flux"])[j[bright]] - 1
    # The PSF (core, variation and wings) is estimated from the image; the
    # model is normalised within its 59 px stamp, which holds ~99.7% of the
    # true PSF's light.
    assert abs(np.median(frac)) < 0.02
    assert 1.4826 * np.median(np.abs(frac - np.median(frac))) < 0.02


def test_saturated_stars_are_found_and_flagged(crowded):
    f, result = crowded
    t = f.truth
    x, y = np.asarray(t["x"]), np.asarray(t["y"])
    sat = np.asarray(t["saturated"]) & (x > 5) & (x < 378) & (y > 5) & (y < 378)
    assert sat.sum() > 0
    c = result.columns
    d, j = cKDTree(np.column_stack([c["x"], c["y"]])).query(
        np.column_stack([np.asarray(t["x"])[sat], np.asarray(t["y"])[sat]])
    )
    assert np.all(d < 1.5)
    assert np.all(c["flag_saturated_center"][j])
    ratio = c["flux"][j] / np.asarray(t["flux"])[sat]
    # Saturated stars are fit from their wings only: measured 0.94-1.02
    # (0.50-1.00 when false sources in their wings took part of the light).
    assert np.all((ratio > 0.85) & (ratio < 1.1))
    assert np.median(ratio) > 0.95


def test_stamp_and_core_sizes_follow_the_refit_psf():
    """A starting PSF 45% too broad: once the refit has found the real FWHM the
    varying core is sized for it (a 27 px core was kept before)."""
    f = _crowded_field()
    bad, sat = _planes(f)
    result = fit_image(
        f.image, f.variance, bad=bad, saturated=sat, psf=moffat_stamp(59, 5.0, beta=3.0)
    )
    assert result.psf.fwhm() == pytest.approx(3.4, abs=0.3)
    assert result.psf.core == 19
    ratio = _bright_flux_ratio(result, f.truth, f.image.shape)
    # Measured 1.036: four passes do not fully undo so poor a start (six: 1.01).
    assert np.median(ratio) == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("trail", [slice(10, 51), slice(30, 100), slice(0, 31)])
def test_saturated_wings_cover_the_core_not_the_bleed_trail(trail):
    """The disc sits on the star, whatever the trail: both ways, one way
    only, or cut off by the image edge."""
    from lsst.meas.crowdsource.engine.peaks import saturated_cores, saturated_wings

    sat = np.zeros((120, 60), bool)
    yy, xx = np.mgrid[0:120, 0:60]
    sat[(xx - 30) ** 2 + (yy - 30) ** 2 <= 16] = True  # core: 9 px across
    sat[trail, 30] = True  # bleed trail along the column
    yc, xc, radius, _ = saturated_cores(sat)
    assert (yc[0], xc[0]) == pytest.approx((30.0, 30.0), abs=0.5)
    wings = saturated_wings(sat, 3.5)
    r = np.hypot(xx - 30, yy - 30)
    assert wings[r <= radius[0] + 3.0].all() and not wings[r > radius[0] + 4.0].any()
    # Beside the far part of the trail nothing is excluded.
    far = np.zeros_like(sat)
    far[trail, 27:34] = True
    far &= r > radius[0] + 4.0
    assert not (wings & far).any()


def test_no_false_sources_in_the_wings_of_saturated_stars(crowded):
    """The residual of a star fit from its wings is not a new source (measured:
    1 unmatched detection within 1 FWHM of the saturated cores, 3 without
    the exclusion, 0 with 2 FWHM)."""
    from lsst.meas.crowdsource.engine.peaks import saturated_wings

    f, result = crowded
    _, sat = _planes(f)
    c = result.columns
    found, inside, matched, j = _score(result, f.truth, f.image.shape)
    wings = saturated_wings(sat, 3.5)
    ix = np.clip(np.round(c["x"]).astype(int), 0, sat.shape[1] - 1)
    iy = np.clip(np.round(c["y"]).astype(int), 0, sat.shape[0] - 1)
    in_wings = wings[iy, ix] & ~c["flag_saturated_center"]
    assert (in_wings & ~matched).sum() <= 1


@pytest.mark.parametrize("start", ["centre stamp", "none"])
def test_psf_refit_converges_to_the_true_psf(start):
    """Whatever the start, the refit PSF's encircled energy and the bright-star
    flux scale come out right: a truncated or eaten wing shows up as too much
    light inside the core (measured at the centre: r <= 9 px holds 0.971 /
    0.974 of the model's light against 0.972 true; 0.988 before the outer,
    sky-dominated bins of the wing profile were left out of its power law)."""
    f = _crowded_field()
    bad, sat = _planes(f)
    psf = f.psf_at(192, 192, size=59) if start == "centre stamp" else None
    result = fit_image(f.image, f.variance, bad=bad, saturated=sat, psf=psf)
    yy, xx = np.mgrid[0:59, 0:59] - 29
    r = np.hypot(xx, yy)
    true = f.psf_at(192, 192, size=59)
    true = true / true.sum()
    model = result.psf.stamp(192, 192)
    for radius, tol in ((4, 0.015), (9, 0.006)):
        assert model[r <= radius].sum() == pytest.approx(true[r <= radius].sum(), abs=tol)
    ratio = _bright_flux_ratio(result, f.truth, f.image.shape)
    # Measured 1.007 (centre stamp) and 1.005 (none).
    assert np.median(ratio) == pytest.approx(1.0, abs=0.015)


def test_tiled_fit_matches_single_tile_without_duplicates(small_field):
    f = simulate_field((200, 200), density=0.01, seed=7, psf="moffat", bad_columns=0)
    single = fit_image(f.image, f.variance, psf=f.psf_stamp, params=FitParams(refit_psf=False))
    tiled = fit_image(
        f.image,
        f.variance,
        psf=f.psf_stamp,
        params=FitParams(refit_psf=False, tile_size=100, tile_overlap=40),
    )
    assert tiled.n_tiles == 4
    parallel = fit_image(
        f.image,
        f.variance,
        psf=f.psf_stamp,
        params=FitParams(refit_psf=False, tile_size=100, tile_overlap=40, n_processes=2),
    )
    for name in ("x", "y", "flux", "flux_err"):
        np.testing.assert_array_equal(parallel.columns[name], tiled.columns[name])
    xy_t = np.column_stack([tiled.columns["x"], tiled.columns["y"]])
    # No duplicates at the seams.
    assert len(cKDTree(xy_t).query_pairs(0.5)) == 0
    d, _ = cKDTree(xy_t).query(np.column_stack([single.columns["x"], single.columns["y"]]))
    bright = single.columns["flux"] > 10 * single.columns["flux_err"]
    assert np.mean(d[bright] < 0.3) > 0.97
    assert abs(len(tiled) - len(single)) <= 0.05 * len(single)


def test_forced_positions_keep_order_and_off_image_rows(small_field):
    f = small_field
    t = f.truth
    x, y = np.asarray(t["x"]), np.asarray(t["y"])
    inside = (x > 0) & (x < 95) & (y > 0) & (y < 95)
    fx = np.concatenate([x[inside][:5], [-50.0, 500.0]]) + 10
    fy = np.concatenate([y[inside][:5], [10.0, 10.0]]) + 20
    res = fit_image(f.image, f.variance, psf=f.psf_stamp, forced_x=fx, forced_y=fy, xy0=(10, 20))
    c = res.columns
    np.testing.assert_array_equal(c["forced_index"][:7], np.arange(7))
    np.testing.assert_allclose(c["x"][:7], fx)
    assert c["off_image"][5] and c["off_image"][6] and not c["off_image"][:5].any()
    assert np.isnan(c["flux"][5:7]).all() and np.isfinite(c["flux"][:5]).all()


def test_non_finite_forced_positions_get_the_off_image_row(small_field):
    """A forced position without a finite coordinate is not fit: its row is the
    one a position far off the image gets, with x and y NaN, and the other
    rows do not change."""
    f = small_field
    t = f.truth
    x, y = np.asarray(t["x"]), np.asarray(t["y"])
    inside = (x > 0) & (x < 95) & (y > 0) & (y < 95)
    fx = np.concatenate([x[inside][:4], [np.nan, 30.0, np.inf, np.nan]]) + 10
    fy = np.concatenate([y[inside][:4], [40.0, np.nan, 50.0, -np.inf]]) + 20
    far = ~(np.isfinite(fx) & np.isfinite(fy))
    kw = dict(psf=f.psf_stamp, xy0=(10, 20), params=FitParams(refit_psf=False))
    res = fit_image(f.image, f.variance, forced_x=fx, forced_y=fy, **kw)
    ref = fit_image(
        f.image,
        f.variance,
        forced_x=np.where(far, -1e6, fx),
        forced_y=np.where(far, -1e6, fy),
        **kw,
    )
    c, r = res.columns, ref.columns
    assert list(c) == list(r) and len(res) == len(ref)
    np.testing.assert_array_equal(c["forced_index"][: len(fx)], np.arange(len(fx)))
    assert np.isnan(c["x"][: len(fx)][far]).all() and np.isnan(c["y"][: len(fx)][far]).all()
    assert c["off_image"][: len(fx)][far].all() and not c["off_image"][: len(fx)][~far].any()
    assert np.isnan(c["flux"][: len(fx)][far]).all()
    assert np.isfinite(c["flux"][: len(fx)][~far]).all()
    for name in c:
        a, b = c[name], r[name]
        if name in ("x", "y"):
            a, b = np.delete(a, np.nonzero(far)[0]), np.delete(b, np.nonzero(far)[0])
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_bright_star_touching_a_bad_column_is_found():
    f = simulate_field(
        (64, 64),
        density=0,
        psf="moffat",
        fwhm=3.5,
        psf_variation=0,
        sky_gradient=(0, 0),
        bad_columns=[30],
        stars={"x": [31.4], "y": [32.3], "flux": [5e4]},
    )
    bad, sat = _planes(f)
    res = fit_image(f.image, f.variance, bad=bad, saturated=sat, psf=f.psf_stamp)
    d = np.hypot(res.columns["x"] - 31.4, res.columns["y"] - 32.3)
    assert d.min() < 0.2
    assert res.columns["flux"][np.argmin(d)] == pytest.approx(5e4, rel=0.03)


@pytest.mark.parametrize("x0", [30.0, 30.4])
def test_bright_star_centred_on_a_bad_column_is_found(x0):
    f = simulate_field(
        (64, 64),
        density=0,
        psf="moffat",
        fwhm=3.5,
        psf_variation=0,
        sky_gradient=(0, 0),
        bad_columns=[30],
        stars={"x": [x0], "y": [32.3], "flux": [5e4]},
    )
    bad, sat = _planes(f)
    res = fit_image(f.image, f.variance, bad=bad, saturated=sat, psf=f.psf_stamp)
    assert len(res) == 1
    assert abs(res.columns["x"][0] - x0) < 0.2
    assert res.columns["flux"][0] == pytest.approx(5e4, rel=0.03)


def test_detection_next_to_a_forced_position_merges_into_it():
    """A star given as a forced position is not split with a detection of itself."""
    f = simulate_field(
        (96, 96),
        density=0,
        psf="moffat",
        fwhm=3.5,
        psf_variation=0,
        sky_gradient=(0, 0),
        bad_columns=0,
        stars={"x": [40.3, 60.0], "y": [50.6, 30.0], "flux": [2e4, 3e4]},
    )
    # The forced position is 0.7 px off the star (within min_separation): no
    # second source may take part of the star's light.
    res = fit_image(
        f.image,
        f.variance,
        psf=f.psf_stamp,
        forced_x=np.array([41.0]),
        forced_y=np.array([50.6]),
        params=FitParams(refit_psf=False),
    )
    c = res.columns
    assert c["forced_index"][0] == 0
    others = np.hypot(c["x"][1:] - 40.3, c["y"][1:] - 50.6)
    assert np.all(others > 1.5)
    # The forced flux takes the star (less what a 0.7 px offset loses).
    assert 0.85 * 2e4 < c["flux"][0] < 1.02 * 2e4
