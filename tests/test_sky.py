"""The sky models: the spline sky's algebra and robustness, and the structured backgrounds."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from lsst.meas.crowdsource.engine import FitParams
from lsst.meas.crowdsource.engine.params import FitParamsError
from lsst.meas.crowdsource.engine.sky import SplineSky, boxed_sky
from lsst.meas.crowdsource.testing.backgrounds import (
    BACKGROUND_KINDS,
    gaussian_random_field,
    sky_noise,
    structured_background,
)
from lsst.meas.crowdsource.testing.simulate import simulate_field


def _design(spline: SplineSky) -> sp.csr_matrix:
    """The full design matrix (pixels x coefficients), built the slow way."""
    return sp.kron(spline._y.matrix, spline._x.matrix, format="csr")


def test_spline_normal_equations_are_exact():
    """The separable assembly equals B^T W B and B^T W r of the full design matrix."""
    rng = np.random.default_rng(1)
    shape = (61, 47)  # not multiples of the spacing
    spline = SplineSky(shape, 7.0, 0.1)
    w = rng.uniform(0.5, 2.0, shape)
    w[rng.uniform(size=shape) < 0.2] = 0.0
    r = rng.normal(size=shape)
    H, rhs = spline._normal_equations(w, r)
    B = _design(spline)
    np.testing.assert_allclose(H.toarray(), (B.T @ sp.diags(w.ravel()) @ B).toarray(), atol=1e-12)
    np.testing.assert_allclose(rhs, B.T @ (w * r).ravel(), atol=1e-12)
    coef = rng.normal(size=spline.n_coef)
    np.testing.assert_allclose(spline.evaluate(coef).ravel(), B @ coef, atol=1e-12)
    # The B-splines sum to one at every pixel: a constant is represented exactly.
    np.testing.assert_allclose(np.asarray(B.sum(axis=1)).ravel(), 1.0)


def _smooth_sky_with_stars(seed: int = 2, shape=(160, 192)):
    rng = np.random.default_rng(seed)
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    sky = (
        1000.0
        + 0.3 * xx
        - 0.2 * yy
        + 60.0 * np.sin(2 * np.pi * xx / 70.0) * np.cos(2 * np.pi * yy / 90.0)
    )
    stars = np.zeros(shape)
    n = 120
    sx, sy = rng.uniform(0, nx, n), rng.uniform(0, ny, n)
    flux = 10 ** rng.uniform(3, 5, n)
    for x, y, f in zip(sx, sy, flux):
        stars += f * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 1.7**2)) / (2 * np.pi * 1.7**2)
    variance = sky + stars + 25.0
    image = sky + stars + rng.normal(size=shape) * np.sqrt(variance)
    return image, sky, 1.0 / variance


def test_spline_sky_follows_structure_and_ignores_stars():
    """Structure on 70-90 px scales is followed; unmodelled stars are clipped, not fit."""
    image, sky, weight = _smooth_sky_with_stars()
    good = np.ones(image.shape, bool)
    noise = np.sqrt(1025.0)
    fit = SplineSky(image.shape, 12.0, 0.1).fit(image, good, weight)
    err = (fit - sky) / noise
    assert np.sqrt(np.mean(err**2)) < 0.15
    assert abs(np.median(err)) < 0.05
    # Without clipping the stars pull it up; boxed medians (20 px) do worse on this structure.
    unclipped = SplineSky(image.shape, 12.0, 0.1).fit(
        image, good, weight, clip_high=np.inf, clip_low=np.inf
    )
    assert np.median((unclipped - sky) / noise) > 3 * abs(np.median(err)) + 0.1
    boxed = boxed_sky(image, good, 20, 3)
    assert np.sqrt(np.mean(((boxed - sky) / noise) ** 2)) > np.sqrt(np.mean(err**2))


def test_spline_sky_with_a_masked_region_and_a_plane():
    """A plane is in the penalty's null space: fit exactly, and extended over masked pixels."""
    ny, nx = 96, 128
    yy, xx = np.mgrid[0:ny, 0:nx]
    sky = 500.0 + 2.0 * xx - 1.5 * yy
    good = np.ones((ny, nx), bool)
    good[20:60, 30:90] = False  # no data in a 40 x 60 hole
    fit = SplineSky((ny, nx), 10.0, 1.0).fit(sky, good, np.ones((ny, nx)))
    assert np.all(np.isfinite(fit))
    np.testing.assert_allclose(fit, sky, rtol=1e-5)  # the tiny ridge and the CG tolerance


def test_spline_parameters_are_validated():
    with pytest.raises(FitParamsError, match="sky_method must be 'boxed', 'spline' or"):
        FitParams(sky_method="mesh").validate()
    with pytest.raises(FitParamsError, match="sky_spline_smoothing must be >= 0"):
        FitParams(sky_spline_smoothing=-1.0).validate()
    with pytest.raises(FitParamsError, match="sky_clip must be > 0"):
        FitParams(sky_clip=0.0).validate()


# --- structured backgrounds ---------------------------------------------------------------------


def test_gaussian_random_field_is_band_limited():
    rng = np.random.default_rng(3)
    g = gaussian_random_field((256, 256), rng, scales=(20.0, 80.0))
    assert abs(g.mean()) < 1e-12 and g.std() == pytest.approx(1.0)
    power = np.abs(np.fft.rfft2(g)) ** 2
    k = np.hypot(np.fft.fftfreq(256)[:, None], np.fft.rfftfreq(256)[None, :])
    # Nothing on scales shorter than 20 / 1.3 px (the taper), everything on 20-80 px.
    assert power[k > 1.3 / 20].sum() < 1e-20 * power.sum()
    assert power[(k >= 1 / 80) & (k <= 1 / 20)].sum() > 0.5 * power.sum()


@pytest.mark.parametrize("kind", BACKGROUND_KINDS)
def test_structured_backgrounds(kind):
    shape = (128, 160)
    bg = structured_background(shape, kind, amplitude=20.0, sky=1000.0, seed=4)
    assert bg.shape == shape and np.all(np.isfinite(bg))
    np.testing.assert_array_equal(
        bg, structured_background(shape, kind, amplitude=20.0, sky=1000.0, seed=4)
    )
    peak = 20.0 * sky_noise(1000.0)
    if kind == "flat":
        assert not bg.any()
    elif kind == "lane":
        assert bg.max() <= 0 and bg.min() == pytest.approx(-700.0, rel=0.05)  # to 30 % of the sky
    elif kind == "nebula":
        assert bg.max() > 0.3 * peak and (1000.0 + bg).min() < 0.5 * 1000.0
    else:
        assert bg.min() >= 0 and bg.max() == pytest.approx(peak, rel=0.35)
    assert np.all(1000.0 + bg >= 0)


def test_structured_background_checks():
    with pytest.raises(ValueError, match="unknown background kind"):
        structured_background((32, 32), "aurora")
    with pytest.raises(ValueError, match="amplitude must be >= 0"):
        structured_background((32, 32), "halo", amplitude=-1.0)


def test_simulated_field_carries_the_background():
    shape = (96, 112)
    bg = structured_background(shape, "clipped", amplitude=20.0, sky=1000.0, seed=5)
    f = simulate_field(shape, density=0.005, seed=5, psf="gaussian", sky_gradient=(0, 0),
                       background=bg, bad_columns=0)  # fmt: skip
    np.testing.assert_allclose(f.sky, 1000.0 + bg, rtol=1e-6)
    inside = np.asarray(f.truth["in_image"], bool)
    ix = np.round(np.asarray(f.truth["x"])[inside]).astype(int)
    iy = np.round(np.asarray(f.truth["y"])[inside]).astype(int)
    np.testing.assert_allclose(np.asarray(f.truth["sky"])[inside], f.sky[iy, ix], rtol=1e-5)
    # The noise follows the background: the variance is higher under the clouds.
    assert np.median(f.variance[bg > 300]) > np.median(f.variance[bg == 0]) + 200
    with pytest.raises(ValueError, match="background has shape"):
        simulate_field(shape, density=0.005, seed=5, background=bg[:, :-1])


# --- the engine on structured backgrounds -------------------------------------------------------


def _field(kind: str):
    """256², 0.015 stars/px, Moffat FWHM 4 px (not given), sky 1000 + a 20-sigma background."""
    shape = (256, 256)
    background = structured_background(shape, kind, amplitude=20.0, sky=1000.0, seed=3)
    return simulate_field(shape, density=0.015, seed=3, psf="moffat", fwhm=4.0,
                          psf_variation=0.0, ellipticity=0.0, sky_gradient=(0.0, 0.0),
                          snr_min=1.5, bad_columns=0, background=background)  # fmt: skip


def _score(field, method: str) -> dict[str, float]:
    from lsst.meas.crowdsource.engine import fit_image
    from lsst.meas.crowdsource.testing.evaluation import score_catalog

    res = fit_image(field.image, field.variance, bad=field.mask != 0,
                    params=FitParams(sky_method=method))  # fmt: skip
    c = res.columns
    scored = score_catalog(c["x"], c["y"], c["flux"], c["flux_err"], field.truth, radius=1.0,
                           snr_bins=(10.0, 30.0))  # fmt: skip
    err = (res.sky - field.sky)[field.mask == 0] / sky_noise(1000.0)
    return {
        "completeness": float(scored["bins"]["completeness"][0]),
        "spurious": float(scored["summary"]["spurious_fraction"]),
        "sky_rms": float(np.sqrt(np.mean(err**2))),
    }


@pytest.fixture(scope="module")
def scores():
    fields = {kind: _field(kind) for kind in ("flat", "nebula")}
    return {
        (kind, method): _score(field, method)
        for kind, field in fields.items()
        for method in ("boxed", "adaptive")
    }


def test_adaptive_sky_follows_a_nebula_better_than_boxes(scores):
    """Measured (boxed -> adaptive): sky rms 5.9 -> 4.5 sigma, completeness at S/N 10-30
    0.42 -> 0.53, spurious 0.81 -> 0.80 (false detections on the nebula are issue 11's
    open part).  Fails if the adaptive sky stops beating the boxed one or degrades."""
    boxed, adaptive = scores["nebula", "boxed"], scores["nebula", "adaptive"]
    assert adaptive["sky_rms"] < 0.8 * boxed["sky_rms"]
    assert adaptive["completeness"] > boxed["completeness"] + 0.08
    assert adaptive["completeness"] > 0.40
    assert adaptive["spurious"] < 0.82


def test_adaptive_sky_keeps_a_flat_field_as_it_was(scores):
    """Measured: completeness 0.876 -> 0.869, spurious 0.159 -> 0.117, sky rms 0.21 -> 0.29."""
    boxed, adaptive = scores["flat", "boxed"], scores["flat", "adaptive"]
    assert adaptive["completeness"] > boxed["completeness"] - 0.03
    assert adaptive["spurious"] < boxed["spurious"] + 0.02
    assert adaptive["sky_rms"] < 0.5


def test_refit_psf_on_a_nebula_stays_right():
    """The nebula field with the true PSF given, boxed sky: the PSF stars' sky errors must
    not broaden the refit PSF (flux factor -- what it measures of a true star -- 1.058
    with the clipped mean of the PSF stamps, 1.199 with their unweighted median, 0.999
    with the weighted median; tests/test_psf_refit.py has the crowded cases)."""
    from lsst.meas.crowdsource.engine import fit_image

    field = _field("nebula")
    true = field.psf_at(128.0, 128.0, size=59)
    res = fit_image(field.image, field.variance, bad=field.mask != 0, psf=true,
                    params=FitParams(sky_method="boxed"))  # fmt: skip
    true = true / true.sum()
    stamp = res.psf.stamp(128.0, 128.0, true.shape[0])
    factor = float((true * stamp).sum() / (stamp * stamp).sum())
    assert abs(factor - 1) < 0.02, factor
