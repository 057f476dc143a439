"""Tests of the crowded-field simulator and of the truth-evaluation tools."""

from __future__ import annotations

import functools
import importlib.util
import math
import sys

import numpy as np
import pytest
from astropy.table import Table
from scipy.spatial import cKDTree
from scipy.special import ndtr

from lsst.meas.crowdsource.testing.evaluation import (
    crowded_crb_flux_error,
    isolated_crb_flux_error,
    match_to_truth,
    robust_scatter,
    score_catalog,
)
from lsst.meas.crowdsource.testing.simulate import MASK_PLANES, measure_fwhm, simulate_field

HAVE_GALSIM = importlib.util.find_spec("galsim") is not None
PSF = "galsim" if HAVE_GALSIM else "moffat"

SATURATION = 20000.0


@pytest.fixture(scope="module")
def field():
    """A realistic (galsim if available) field with saturation and a bad column."""
    return simulate_field(
        (192, 192),
        density=0.02,
        seed=3,
        psf=PSF,
        saturation=SATURATION,
        n_saturated=3,
        bad_columns=(1040,),
        xy0=(1000, 2000),
    )


def gaussian_psf_at(sigma: float, size: int = 41):
    """Exact pixel-integrated circular Gaussian ``psf_at`` (star at its sub-pixel position)."""
    half = size // 2
    i = np.arange(-half, half + 1)

    def psf_at(x, y):
        x = np.atleast_1d(np.asarray(x, dtype=float))
        y = np.atleast_1d(np.asarray(y, dtype=float))
        dx = x - np.floor(x + 0.5)
        dy = y - np.floor(y + 0.5)
        px = ndtr((i[None, :] - dx[:, None] + 0.5) / sigma) - ndtr(
            (i[None, :] - dx[:, None] - 0.5) / sigma
        )
        py = ndtr((i[None, :] - dy[:, None] + 0.5) / sigma) - ndtr(
            (i[None, :] - dy[:, None] - 0.5) / sigma
        )
        return py[:, :, None] * px[:, None, :]

    return psf_at


def centroid(img: np.ndarray, xy0=(0, 0)) -> tuple[float, float]:
    yy, xx = np.indices(img.shape)
    tot = img.sum()
    return float((img * xx).sum() / tot + xy0[0]), float((img * yy).sum() / tot + xy0[1])


# --------------------------------------------------------------------------
# Simulator
# --------------------------------------------------------------------------


def test_deterministic_for_a_seed():
    kw = dict(density=0.03, psf="moffat", saturation=15000.0, n_saturated=2, bad_columns=1)
    a = simulate_field((80, 96), seed=7, **kw)
    b = simulate_field((80, 96), seed=7, **kw)
    c = simulate_field((80, 96), seed=8, **kw)
    assert a.image.shape == (80, 96) and a.image.dtype == np.float32
    assert a.variance.dtype == np.float32 and a.mask.dtype == np.int32
    for name in ("image", "variance", "mask", "sky", "noiseless", "psf_stamp"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    for col in a.truth.colnames:
        np.testing.assert_array_equal(a.truth[col], b.truth[col])
    assert len(a.truth) != len(c.truth) or not np.array_equal(a.truth["x"], c.truth["x"])
    assert not np.array_equal(a.image, c.image)


def test_psf_normalisation_and_fwhm(field):
    stamp = field.psf_stamp
    assert stamp.shape == (25, 25)
    assert 0.95 < stamp.sum() < 1.0
    assert np.unravel_index(np.argmax(stamp), stamp.shape) == (12, 12)
    support = field.psf_model.support
    x0, y0 = field.xy0
    for x, y in ((x0 + 96, y0 + 96), (x0, y0), (x0 + 191, y0 + 50)):
        assert field.psf_at(x, y, size=support).sum() == pytest.approx(1.0, abs=1e-5)
    # FWHM at the centre within 10% of the request (pixel integration adds a little).
    fwhm_c = measure_fwhm(stamp)
    assert fwhm_c == pytest.approx(3.5, rel=0.10)
    # Varies by ~psf_variation from the centre to the corners.
    corners = [
        measure_fwhm(field.psf_at(x, y))
        for x, y in ((x0, y0), (x0 + 191, y0 + 191), (x0, y0 + 191))
    ]
    for fc in corners:
        assert fc / fwhm_c - 1 == pytest.approx(field.meta["psf_variation"], abs=0.04)
    if HAVE_GALSIM:
        # Not a Moffat or Gaussian: the galsim PSF in a corner is not symmetric.
        corner = field.psf_at(x0, y0, size=support)
        assert np.abs(corner - corner[::-1, ::-1]).max() > 1e-3 * corner.max()


@pytest.mark.parametrize("psf", ["moffat", "gaussian"])
def test_analytic_psf_fwhm_and_variation(psf):
    f = simulate_field((64, 64), density=0.0, psf=psf, fwhm=4.0, psf_variation=0.2, bad_columns=0)
    fc = measure_fwhm(f.psf_stamp)
    assert fc == pytest.approx(4.0, rel=0.06)
    assert measure_fwhm(f.psf_at(0, 0)) / fc - 1 == pytest.approx(0.2, abs=0.04)
    assert f.psf_at(32, 32, size=f.psf_model.support).sum() == pytest.approx(1.0, abs=1e-5)


def test_total_flux_of_bright_star():
    flux = 1e7
    f = simulate_field(
        (200, 200),
        density=0.0,
        seed=1,
        psf=PSF,
        psf_grid=3,
        bad_columns=0,
        stars={"x": [100.3], "y": [95.6], "flux": [flux]},
    )
    assert f.noiseless.sum(dtype=float) == pytest.approx(flux, rel=1e-4)
    assert (f.image.astype(float) - f.sky).sum() == pytest.approx(flux, rel=0.01)
    assert f.truth["flux"][0] == flux and f.truth["in_image"][0]


def test_pixel_centre_convention():
    xy0 = (1000, 2000)
    stars = {"x": [1050.0, 1180.37], "y": [2190.0, 2060.79], "flux": [1e6, 1e6]}
    f = simulate_field(
        (240, 240), density=0.0, psf=PSF, psf_grid=3, xy0=xy0, bad_columns=0, stars=stars
    )
    r = f.psf_model.psf_radius
    for x, y in zip(stars["x"], stars["y"]):
        ix, iy = int(round(x)) - xy0[0], int(round(y)) - xy0[1]
        cut = f.noiseless[iy - r : iy + r + 1, ix - r : ix + r + 1].astype(float)
        cx, cy = centroid(cut, (ix - r + xy0[0], iy - r + xy0[1]))
        assert cx == pytest.approx(x, abs=0.02)
        assert cy == pytest.approx(y, abs=0.02)
    # The brightest pixel of the integer-position star is the pixel at (x, y).
    iy, ix = np.unravel_index(np.argmax(f.noiseless[:, :120]), (240, 120))
    assert (ix + xy0[0], iy + xy0[1]) == (1050, 2190)


def test_psf_at_reproduces_rendering():
    x, y, flux = 40.27, 33.61, 1e5
    f = simulate_field(
        (80, 80),
        density=0.0,
        psf="moffat",
        psf_radius=20,
        bad_columns=0,
        stars={"x": [x], "y": [y], "flux": [flux]},
    )
    size = f.psf_model.support
    stamp = f.psf_at(x, y, size=size, subpixel=True)
    cut = f.noiseless[34 - 20 : 34 + 21, 40 - 20 : 40 + 21]
    np.testing.assert_allclose(cut, flux * stamp, atol=2e-6 * flux * stamp.max())
    # subpixel=False puts the star at the centre of the central pixel.
    cx, cy = centroid(f.psf_at(x, y, size=size))
    assert abs(cx - 20) < 1e-3 and abs(cy - 20) < 1e-3


def test_noise_and_variance(field):
    good = field.mask == 0
    resid = (field.image.astype(float) - field.sky - field.noiseless) / np.sqrt(field.variance)
    assert abs(resid[good].mean()) < 0.02
    assert resid[good].std() == pytest.approx(1.0, abs=0.02)
    expected = (field.sky + field.noiseless) / field.gain + field.read_noise**2
    np.testing.assert_allclose(field.variance, expected, rtol=1e-5)


def test_saturation_flagged_and_clipped(field):
    sat = 1 << MASK_PLANES["SAT"]
    t = field.truth
    assert np.count_nonzero(t["saturated"] & t["in_image"]) >= 3
    assert field.image.max() <= SATURATION
    at_level = field.image >= SATURATION
    assert np.all(field.mask[at_level] & sat)
    x0, y0 = field.xy0
    for row in t[t["saturated"] & t["in_image"]]:
        ix, iy = int(round(row["x"])) - x0, int(round(row["y"])) - y0
        assert field.mask[iy, ix] & sat
        assert field.image[iy, ix] == SATURATION
    # Bleeding makes saturated runs taller than the region above the level.
    over_expected = (field.sky + field.noiseless) >= SATURATION
    assert np.count_nonzero(field.mask & sat) > np.count_nonzero(over_expected)
    # Faint stars away from saturated ones are not flagged.
    faint = t[(t["peak"] + t["sky"] < 0.3 * SATURATION) & t["in_image"]]
    ix = np.round(faint["x"]).astype(int) - x0
    iy = np.round(faint["y"]).astype(int) - y0
    assert np.mean((field.mask[iy, ix] & sat) == 0) > 0.8


def test_bad_column_and_mask_planes(field):
    assert field.mask_planes == MASK_PLANES
    assert field.mask_planes["BAD"] == 0 and field.mask_planes["NO_DATA"] == 8
    bad = (field.mask & field.mask_bits("BAD")) != 0
    assert np.all(bad[:, 40])
    assert np.count_nonzero(bad) == field.image.shape[0]
    assert field.meta["bad_columns"] == [1040]


def test_truth_catalog(field):
    t = field.truth
    for col in ("id", "x", "y", "flux", "snr", "saturated", "in_image", "peak", "sky"):
        assert col in t.colnames
    assert len(np.unique(t["id"])) == len(t)
    x0, y0 = field.xy0
    # Uniform positions, including just outside the image.
    assert np.any(~t["in_image"])
    inside = t[t["in_image"]]
    assert inside["x"].min() < x0 + 5 and inside["x"].max() > x0 + 186
    # Luminosity function: mostly faint stars, many below S/N 5, down to snr_min.
    rand = inside[inside["flux"] < field.meta["flux_max"] * 1.0001]
    assert np.mean(rand["snr"] < 5) > 0.3
    assert rand["snr"].min() == pytest.approx(field.meta["snr_min"], rel=0.25)
    assert rand["snr"].max() < 1.2 * field.meta["snr_max"]
    # The truth S/N is the isolated-star Cramér-Rao S/N.
    pick = np.argsort(inside["snr"])[:: max(len(inside) // 15, 1)]
    sub = inside[pick]
    stamps = field.psf_at(sub["x"], sub["y"], size=field.psf_model.core_size, subpixel=True)
    bg = sub["sky"] / field.gain + field.read_noise**2
    sig = isolated_crb_flux_error(
        stamps, np.asarray(bg), flux=np.asarray(sub["flux"]), gain=field.gain
    )
    np.testing.assert_allclose(sub["flux"] / sig, sub["snr"], rtol=2e-3)


def test_galsim_fallback(monkeypatch):
    monkeypatch.setitem(sys.modules, "galsim", None)  # makes "import galsim" fail
    with pytest.warns(UserWarning, match="falls back"):
        f = simulate_field((48, 48), density=0.01, psf="galsim", psf_variation=0.0, ellipticity=0.0)
    assert f.meta["psf"] == "moffat"


def test_invalid_arguments():
    with pytest.raises(ValueError, match="psf"):
        simulate_field((32, 32), psf="airy")
    with pytest.raises(ValueError, match="shape"):
        simulate_field((0, 32))
    with pytest.raises(ValueError, match="snr_min"):
        simulate_field((32, 32), psf="gaussian", snr_min=10, snr_max=5)
    with pytest.raises(ValueError, match="bad column"):
        simulate_field((32, 32), psf="gaussian", bad_columns=(40,))


# --------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------


def test_perfect_catalog_scores(field):
    t = field.truth
    err = np.asarray(t["flux"] / t["snr"])
    res = score_catalog(t["x"], t["y"], t["flux"], err, t)
    bins = res["bins"]
    filled = bins["n_truth"] > 0
    assert np.all(bins["completeness"][filled] == 1.0)
    assert np.all(bins["flux_frac_scatter"][filled] == 0.0)
    assert np.all(bins["pos_rms"][filled] == 0.0)
    s = res["summary"]
    assert (
        s["completeness"] == 1.0
        and s["spurious_fraction"] == 0.0
        and s["spurious_fraction_snr"] == 0.0
    )
    assert s["flux_frac_scatter"] == 0.0 and s["pull_scatter"] == 0.0 and s["pos_rms"] == 0.0
    assert s["n_truth"] == np.count_nonzero(t["in_image"] & (t["snr"] >= 5))
    assert res["match"].n_matched == len(t)


def test_perturbed_catalog_scores(field):
    rng = np.random.default_rng(1)
    t = field.truth
    n = len(t)
    keep = np.ones(n, bool)
    faint = np.flatnonzero(t["snr"] < 5)
    keep[faint[::2]] = False  # lose every other faint star
    rel = 0.03
    flux = np.asarray(t["flux"]) * (1 + rel * rng.standard_normal(n))
    err = rel * np.asarray(t["flux"])
    x = np.asarray(t["x"]) + 0.1
    y = np.asarray(t["y"]).copy()
    # Spurious detections far from every true star.
    tree = cKDTree(np.column_stack([t["x"], t["y"]]))
    cand = np.column_stack([rng.uniform(1000, 1191, 4000), rng.uniform(2000, 2191, 4000)])
    far = cand[tree.query(cand)[0] > 2.0][:40]
    assert len(far) == 40
    cx = np.concatenate([x[keep], far[:, 0]])
    cy = np.concatenate([y[keep], far[:, 1]])
    cf = np.concatenate([flux[keep], np.full(40, 1e3)])
    ce = np.concatenate([err[keep], np.full(40, 1e3)])  # measured S/N 1
    res = score_catalog(cx, cy, cf, ce, t, radius=1.0)
    s = res["summary"]
    assert s["n_spurious"] == 40
    assert s["spurious_fraction"] == pytest.approx(40 / len(cx))
    assert s["spurious_fraction_snr"] == 0.0
    assert s["completeness"] == 1.0
    assert s["flux_frac_scatter"] == pytest.approx(rel, rel=0.15)
    assert s["pull_scatter"] == pytest.approx(1.0, rel=0.15)
    assert s["pos_rms"] == pytest.approx(0.1, abs=1e-9)
    assert s["dx_median"] == pytest.approx(0.1, abs=1e-9) and s["dy_median"] == 0.0
    bins = res["bins"]
    for row in bins[(bins["snr_hi"] <= 5) & (bins["n_truth"] > 0)]:
        sel = t["in_image"] & (t["snr"] >= row["snr_lo"]) & (t["snr"] < row["snr_hi"])
        expect = np.count_nonzero(keep[sel]) / np.count_nonzero(sel)
        assert row["completeness"] == pytest.approx(expect)
        assert 0.4 < row["completeness"] < 0.6


def test_match_one_to_one_and_flux_priority():
    tx, ty = np.array([10.0, 10.8, 30.0]), np.array([10.0, 10.0, 30.0])
    tf = np.array([1e5, 100.0, 500.0])
    # A faint detection between a bright and a faint star.
    m = match_to_truth([10.3], [10.0], tx, ty, radius=1.0)
    assert m.det_to_truth[0] == 0  # nearest
    m = match_to_truth([10.3], [10.0], tx, ty, radius=1.0, flux=[95.0], truth_flux=tf)
    assert m.det_to_truth[0] == 1  # closest in flux
    # Two detections on one star: only one matched, the nearer.
    m = match_to_truth([30.1, 29.7], [30.0, 30.0], tx, ty, radius=1.0)
    assert list(m.det_to_truth) == [2, -1] and m.truth_to_det[2] == 0
    assert m.n_matched == 1 and m.distance[0] == pytest.approx(0.1)
    # Greedy, not first come: the second detection is the better one.
    m = match_to_truth([30.5, 30.05, np.nan], [30.0, 30.0, 0.0], tx, ty, radius=1.0)
    assert list(m.det_to_truth) == [-1, 2, -1]
    with pytest.raises(ValueError):
        match_to_truth([1.0], [1.0], tx, ty, radius=1.0, flux=[1.0])


def test_robust_scatter():
    rng = np.random.default_rng(0)
    v = rng.normal(0, 2.0, 200000)
    v[:1000] = 1e6  # outliers barely matter
    assert robust_scatter(v) == pytest.approx(2.0, rel=0.02)


def test_isolated_crb_gaussian_analytic():
    s, v = 4.0, 100.0
    stamp = gaussian_psf_at(s, size=61)(30.0, 30.0)[0]
    sigma = isolated_crb_flux_error(stamp, v)
    assert sigma**2 == pytest.approx(4 * math.pi * s**2 * v, rel=0.01)
    # Pixel integration adds 1/12 px^2 to the Gaussian variance.
    assert sigma**2 == pytest.approx(4 * math.pi * (s**2 + 1 / 12) * v, rel=1e-3)
    # Vectorised over stars, with the star's own Poisson noise.
    stamps = np.stack([stamp, stamp])
    out = isolated_crb_flux_error(stamps, np.array([v, 4 * v]), flux=np.array([0.0, 0.0]))
    np.testing.assert_allclose(out, [sigma, 2 * sigma])
    assert isolated_crb_flux_error(stamp, v, flux=1e5) > sigma


def test_crowded_crb_two_stars_and_isolated():
    s, v, size = 2.0, 50.0, 41
    psf_at = gaussian_psf_at(s, size)
    var = np.full((120, 120), v)
    truth = Table({"x": [30.2, 32.4, 90.0], "y": [40.0, 40.3, 90.0], "flux": [1e3, 1e3, 1e3]})
    out = crowded_crb_flux_error(truth, psf_at, var, sample=None)
    p = psf_at(truth["x"], truth["y"])
    # Direct 2x2 Fisher of the blended pair (both stamps fit in the image, same anchors shifted).
    a = np.zeros((2, 120, 120))
    for k in range(2):
        ix, iy = int(np.floor(truth["x"][k] + 0.5)), int(np.floor(truth["y"][k] + 0.5))
        a[k, iy - 20 : iy + 21, ix - 20 : ix + 21] = p[k]
    fisher = np.einsum("iyx,jyx->ij", a, a) / v
    cov = np.linalg.inv(fisher)
    np.testing.assert_allclose(out["sigma_flux"][:2], np.sqrt(np.diag(cov)), rtol=1e-8)
    np.testing.assert_allclose(out["sigma_flux_fixed"][:2], 1 / np.sqrt(np.diag(fisher)), rtol=1e-8)
    iso = isolated_crb_flux_error(p[2], v)
    assert out["sigma_flux"][0] > 1.1 * iso
    assert out["sigma_flux"][2] == pytest.approx(iso, rel=1e-8)
    # Free positions: the isolated star's flux bound is unchanged and its
    # position bound is the Gaussian one, sqrt(8 pi) s^2 sqrt(v) / F.
    free = crowded_crb_flux_error(
        truth, psf_at, var, sample=[2], free_positions=True, free_position_min_snr=0
    )
    assert free["sigma_flux_free"][0] == pytest.approx(iso, rel=1e-3)
    s_eff2 = s**2 + 1 / 12
    expect = math.sqrt(8 * math.pi) * s_eff2 * math.sqrt(v) / 1e3
    assert free["sigma_x"][0] == pytest.approx(expect, rel=0.02)
    assert free["sigma_y"][0] == pytest.approx(expect, rel=0.02)


def test_crowded_crb_local_matches_exact():
    f = simulate_field((96, 96), density=0.04, seed=4, psf="moffat", bad_columns=0)
    psf_at = functools.partial(f.psf_at, subpixel=True)
    local = crowded_crb_flux_error(f.truth, psf_at, f.variance, sample=60, seed=2)
    exact = crowded_crb_flux_error(
        f.truth, psf_at, f.variance, sample=60, seed=2, neighbourhood=np.inf
    )
    np.testing.assert_array_equal(local["index"], exact["index"])
    np.testing.assert_allclose(local["sigma_flux"], exact["sigma_flux"], rtol=1e-3)
    # Crowding only ever increases the bound.
    assert np.all(exact["sigma_flux"] >= exact["sigma_flux_fixed"] * (1 - 1e-9))
    assert np.median(exact["sigma_flux"] / exact["sigma_flux_fixed"]) > 1.0


def test_king_profile_density_falls_from_the_core_to_the_floor():
    """``king``: star counts in annuli follow the profile (Poisson), from ``density``
    at the centre to ``floor`` beyond the tidal radius."""
    from lsst.meas.crowdsource.testing.simulate import king_fraction

    shape, rc, rt, floor, central = (300, 300), 20.0, 120.0, 0.005, 0.2
    f = simulate_field(
        shape, density=central, seed=2, psf="gaussian", king=(rc, rt, floor), bad_columns=0
    )
    t = f.truth
    r = np.hypot(np.asarray(t["x"]) - 149.5, np.asarray(t["y"]) - 149.5)
    for lo, hi in ((0, 10), (20, 40), (60, 100), (125, 145)):
        n = int(((r >= lo) & (r < hi)).sum())
        # Expected count: the profile integrated over the annulus.
        rr = np.linspace(lo, hi, 400)
        expected = np.trapezoid(
            central * king_fraction(rr, 0 * rr, central, rc, rt, floor) * 2 * np.pi * rr, rr
        )
        assert abs(n - expected) < 4 * np.sqrt(expected) + 2, (lo, hi, n, expected)
    assert king_fraction(np.array([0.0]), np.array([0.0]), central, rc, rt, floor)[0] == 1.0
    assert (
        king_fraction(np.array([130.0]), np.array([0.0]), central, rc, rt, floor)[0]
        == floor / central
    )
    with pytest.raises(ValueError, match="core_radius < tidal_radius"):
        simulate_field((50, 50), density=0.1, king=(30.0, 10.0, 0.0))
