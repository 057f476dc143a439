"""Artificial-star tests: the helpers, and CrowdsourceInjectionTask against the truth.

Small simulated fields (Moffat PSF) wrapped as CCDData.  Checked: positions
keep apart and are reproducible, stars are drawn with the right flux,
centroid and noise, the gain is read off the variance plane; on an empty
field the recovered fluxes are unbiased with the right errors; on a crowded
field the real sources are left as they were and the artificial-star
completeness, bias and scatter agree with those measured against the truth
within their binomial and sampling errors.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import logging

import astropy.units as u
import numpy as np
import pytest

from lsst.meas.crowdsource import (
    CrowdsourceInjectionConfig,
    CrowdsourceInjectionConnections,
    CrowdsourceInjectionTask,
)
from lsst.meas.crowdsource import artificial_stars as art
from lsst.meas.crowdsource.engine import moffat_stamp
from lsst.meas.crowdsource.io.ccddata import make_ccddata
from lsst.meas.crowdsource.io.exposure import exposure_inputs
from lsst.meas.crowdsource.matching import match_to_truth
from lsst.meas.crowdsource.testing.evaluation import truth_recovery
from lsst.meas.crowdsource.testing.simulate import simulate_field

PHOTCALIB = 0.5  # nJy per count: AB magnitudes


@pytest.fixture(autouse=True)
def _quiet_photometry():
    """The photometry subtask logs every pass of every round."""
    logger = logging.getLogger("lsst.crowdsourceInjection")
    level = logger.level
    logger.setLevel(logging.WARNING)
    yield
    logger.setLevel(level)


def _ccd(field):
    return make_ccddata(
        field.image,
        field.variance,
        mask=field.mask,
        mask_planes=field.mask_planes,
        psf=field.psf_stamp,
        photcalib=PHOTCALIB,
    )


def _config(**overrides) -> CrowdsourceInjectionConfig:
    config = CrowdsourceInjectionConfig()
    config.setNoAfwStorage()
    for name, value in overrides.items():
        setattr(config, name, value)
    return config


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def test_positions_keep_apart_cover_the_image_and_repeat_with_the_seed():
    shape, xy0 = (100, 120), (50, -20)
    x, y = art.draw_positions(np.random.default_rng(4), 40, shape, xy0, min_separation=9.0)
    assert len(x) == 40
    assert (x >= 49.5).all() and (x < 169.5).all() and (y >= -20.5).all() and (y < 79.5).all()
    d = np.hypot(x[:, None] - x[None], y[:, None] - y[None])
    assert d[np.triu_indices(len(x), 1)].min() >= 9.0
    x2, y2 = art.draw_positions(np.random.default_rng(4), 40, shape, xy0, min_separation=9.0)
    np.testing.assert_array_equal(x, x2)
    x3, _ = art.draw_positions(np.random.default_rng(5), 40, shape, xy0, min_separation=9.0)
    assert not np.allclose(x, x3)
    # A packed image holds fewer than asked for, still apart.
    xp, yp = art.draw_positions(np.random.default_rng(4), 500, (40, 40), min_separation=10.0)
    assert 4 <= len(xp) < 30
    dp = np.hypot(xp[:, None] - xp[None], yp[:, None] - yp[None])
    assert dp[np.triu_indices(len(xp), 1)].min() >= 10.0


def test_rendered_stars_have_their_flux_and_centroid():
    stamp = moffat_stamp(31, 3.5)
    x, y, flux = np.array([30.3, 61.8]), np.array([40.7, 20.45]), np.array([1000.0, 250.0])
    stamps = art.psf_stamps(stamp, x, y)
    image = art.render_stars((80, 90), (0, 0), x, y, flux, stamps)
    for xi, yi, fi in zip(x, y, flux):
        cut = image[int(yi) - 14 : int(yi) + 16, int(xi) - 14 : int(xi) + 16]
        yy, xx = np.mgrid[int(yi) - 14 : int(yi) + 16, int(xi) - 14 : int(xi) + 16]
        assert cut.sum() == pytest.approx(fi, rel=2e-3)
        assert np.sum(xx * cut) / cut.sum() == pytest.approx(xi, abs=0.02)
        assert np.sum(yy * cut) / cut.sum() == pytest.approx(yi, abs=0.02)
    # A star centred on the first column loses the part of its stamp left of it.
    edge = art.render_stars((80, 90), (0, 0), [0.0], [40.0], [1000.0], stamps[:1])
    assert edge.sum() == pytest.approx(1000.0 * stamps[0][:, 15:].sum())


def test_gain_is_read_off_the_variance_plane():
    rng = np.random.default_rng(2)
    x, y = rng.uniform(0, 120, 60), rng.uniform(0, 100, 60)
    stars = art.render_stars(
        (100, 120),
        (0, 0),
        x,
        y,
        rng.uniform(1e3, 1e5, 60),
        art.psf_stamps(moffat_stamp(25, 3.5), x, y),
    )
    expected = 800.0 + np.linspace(0, 80, 120)[None, :] + stars
    variance = expected / 2.5 + 5.0**2
    image = expected + rng.standard_normal(expected.shape) * np.sqrt(variance)
    good = np.ones(image.shape, bool)
    assert art.estimate_gain(image, variance, good) == pytest.approx(2.5, rel=0.03)
    # A variance plane computed from the noisy image itself (ISR), less a background.
    from_image = np.clip(image, 0, None) / 2.5 + 5.0**2
    assert art.estimate_gain(image - 800.0, from_image, good) == pytest.approx(2.5, rel=0.03)
    flat = np.full_like(variance, 400.0)
    assert art.estimate_gain(image, flat, good) == np.inf


def test_added_stars_carry_their_photon_noise_and_variance():
    rng = np.random.default_rng(1)
    image, variance = np.zeros((200, 200), np.float32), np.full((200, 200), 10.0, np.float32)
    signal = np.full((200, 200), 100.0)
    new, var = art.add_stars(image, variance, signal, 2.0, rng)
    assert new.dtype == np.float32 and var.dtype == np.float32
    assert np.mean(new) == pytest.approx(100.0, abs=0.1)
    assert np.var(new - signal) == pytest.approx(50.0, rel=0.03)
    np.testing.assert_allclose(var, 60.0)
    same, _ = art.add_stars(image, variance, signal, np.inf, rng)
    np.testing.assert_allclose(same, 100.0)


def test_summary_statistics_and_the_50_percent_magnitude():
    mag = np.repeat([20.25, 20.75, 21.25, 21.75], 100)
    recovered = np.concatenate(
        [np.ones(100, bool), np.arange(100) < 80, np.arange(100) < 40, np.zeros(100, bool)]
    )
    true = np.full(400, 100.0)
    rng = np.random.default_rng(3)
    flux = np.where(recovered, true * (1.02 + 0.1 * rng.standard_normal(400)), np.nan)
    err = np.full(400, 5.0)
    s = art.summarize(mag, recovered, true, flux, err, np.array([20.0, 20.5, 21.0, 21.5, 22.0]))
    np.testing.assert_array_equal(s["nInjected"], 100)
    np.testing.assert_allclose(s["completeness"], [1.0, 0.8, 0.4, 0.0])
    assert s["completenessErr"][1] == pytest.approx(0.04)
    assert 0 < s["completenessErr"][0] < 0.01  # half a star from 1
    assert s["fluxBias"][0] == pytest.approx(0.02, abs=3 * s["fluxBiasErr"][0])
    assert s["fluxScatter"][0] == pytest.approx(0.1, abs=3 * s["fluxScatterErr"][0])
    assert s["pullScatter"][0] == pytest.approx(2.0, rel=0.2)  # 10 % scatter, 5 % errors
    assert s["nFlux"][3] == 0 and np.isnan(s["fluxBias"][3])
    # 0.8 at 20.75, 0.4 at 21.25: 0.5 is reached three quarters of the way.
    assert art.completeness_magnitude(s) == pytest.approx(21.125)
    assert np.isnan(art.completeness_magnitude(s, level=0.0))


def test_config_checks_and_connections():
    with pytest.raises(Exception, match="fainter"):
        _config(magMin=24.0, magMax=22.0).validate()
    with pytest.raises(Exception, match="snrRange"):
        _config(snrRange=[10.0, 5.0]).validate()
    config = _config()
    config.validate()
    conn = CrowdsourceInjectionConnections(config=config)
    assert conn.calexp.storageClass == "CrowdsourceCCDData"
    assert {"sourceTable", "psf"} <= set(conn.inputs)
    assert not config.photometry.doWriteAfwCatalog
    conn = CrowdsourceInjectionConnections(config=_config(doUseMeasuredCatalog=False))
    assert set(conn.inputs) == {"calexp"}
    assert set(conn.outputs) == {"injectedTable", "summaryTable"}


# --------------------------------------------------------------------------
# An empty field: fluxes unbiased, errors right, runs reproducible
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def empty_field():
    # A flat sky: with the default gradient the first pass's single median sky leaves
    # spurious sources along the bright side, which are not what this test is about.  The
    # PSF stamp holds the wings (59 px: 99.98 % of the light): with no real star to fit
    # the PSF from, it is what the artificial stars are drawn with, and the fit extends
    # the PSF it measures with a Moffat wing.
    f = simulate_field(
        (128, 160),
        density=0.0,
        seed=8,
        psf="moffat",
        bad_columns=0,
        sky_gradient=(0.0, 0.0),
        stamp_size=59,
    )
    config = _config(nRounds=3, minStarsPerRound=30, snrRange=[20.0, 200.0], minSeparation=4.0)
    # The exposure's PSF is the true one: the photometry keeps it, so that what is tested
    # is how the stars are drawn, noised and matched.  (With the PSF refit from a few
    # dozen isolated stars, the Moffat wing the fit adds makes every flux 3.6 % low on
    # this field: a property of the photometry that an artificial-star test shows.)
    config.photometry.fit.refitPsf = False
    # A flat, empty field's variance plane is flat: nothing to read the gain off.
    config.gain = 1.0
    return f, config, CrowdsourceInjectionTask(config=config).run(_ccd(f), visit=3, detector=1)


def test_empty_field_fluxes_are_unbiased(empty_field):
    f, config, result = empty_field
    stars, summary = result.injectedTable, result.summaryTable
    assert len(result.realTable) == 0  # nothing real: every source is an artificial star
    assert len(stars) >= 80 and set(stars["round"]) == {0, 1, 2}
    assert stars["recovered"].all()  # S/N >= 20, alone
    frac = (stars["recoveredFlux"] - stars["injectedFlux"]) / stars["injectedFlux"]
    pull = (stars["recoveredFlux"] - stars["injectedFlux"]) / stars["recoveredFluxErr"]
    err = np.median(stars["recoveredFluxErr"] / stars["injectedFlux"]) / np.sqrt(len(stars))
    assert abs(np.median(frac)) < max(3 * 1.25 * err, 0.004)
    assert abs(np.median(pull)) < 0.3
    assert 0.8 < 1.4826 * np.median(np.abs(pull - np.median(pull))) < 1.3
    assert np.all(
        np.hypot(stars["recoveredX"] - stars["x"], stars["recoveredY"] - stars["y"]) < 0.5
    )
    np.testing.assert_array_equal(summary["completeness"][summary["nInjected"] > 0], 1.0)
    assert np.isnan(summary.meta["mag50"])  # never below 50 %
    assert summary.meta["gain"] == pytest.approx(1.0, rel=0.05)
    assert (stars["visit"] == 3).all() and (stars["detector"] == 1).all()
    # S/N of the faintest and brightest as asked for (snrRange).
    assert stars["injectedSnr"].min() == pytest.approx(20.0, rel=0.15)
    assert stars["injectedSnr"].max() == pytest.approx(200.0, rel=0.15)
    assert (result.roundTable["realCompared"] == 0).all()


def test_runs_repeat_with_the_seed_and_change_with_it(empty_field):
    f, config, result = empty_field
    one = copy.deepcopy(config)
    one.nRounds = 1
    again = CrowdsourceInjectionTask(config=one).run(_ccd(f), visit=3, detector=1)
    first = result.injectedTable[result.injectedTable["round"] == 0]
    for name in ("x", "y", "injectedMag", "recoveredFlux"):
        np.testing.assert_array_equal(again.injectedTable[name], first[name])
    one.seed = 1
    other = CrowdsourceInjectionTask(config=one).run(_ccd(f), visit=3, detector=1)
    assert not np.allclose(other.injectedTable["x"][:10], first["x"][:10])


# --------------------------------------------------------------------------
# A crowded field, against its truth
# --------------------------------------------------------------------------

MATCH_RADIUS = 1.0


@pytest.fixture(scope="module")
def crowded_field():
    """A crowded field whose exposure carries the true PSF as its (varying) PSF model, as a
    calexp carries its PSF model: the artificial stars are then drawn like the real ones."""
    f = simulate_field((256, 256), density=0.02, seed=11, psf="moffat", bad_columns=1)
    ccd = _ccd(f)
    before = (np.array(ccd.data), np.array(ccd.uncertainty.array), np.array(ccd.mask))
    full = 2 * f.meta["psf_radius"] + 1  # the whole support: the wings included
    inputs = dataclasses.replace(exposure_inputs(ccd), psf=functools.partial(f.psf_at, size=full))
    config = _config(nRounds=8, magBinWidth=1.0)
    result = CrowdsourceInjectionTask(config=config).run(inputs)
    after = (ccd.data, ccd.uncertainty.array, ccd.mask)
    return f, result, before, after


def _truth_summary(f, real, summary):
    """The true stars of the field scored like the artificial ones, in the same bins."""
    a = truth_recovery(f.truth, real, summary.meta["zeroPoint"], MATCH_RADIUS)
    edges = np.append(summary["magMin"], summary["magMax"][-1])
    return art.summarize(a["mag"], a["rec"], a["true"], a["flux"], a["err"], edges)


def test_injection_leaves_the_real_field_unchanged(crowded_field):
    f, result, before, after = crowded_field
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)  # the exposure is not modified
    rounds = result.roundTable
    assert (rounds["realCompared"] > 200).all()
    # Real sources away from the artificial stars come back with the same fluxes,
    # to a small fraction of their errors (1 would be the noise itself).
    assert (rounds["realMatchedFraction"] > 0.93).all()
    assert np.all(np.abs(rounds["realPullMedian"]) < 0.2)
    assert np.all(rounds["realPullScatter"] < 0.5)
    # The same, recomputed here for one round from its catalogue.
    real, cat = result.realTable, result.roundCatalogs[0]
    stars = result.injectedTable[result.injectedTable["round"] == 0]
    fwhm = result.summaryTable.meta["psfFwhm"]
    d = np.hypot(real["x"][:, None] - stars["x"][None], real["y"][:, None] - stars["y"][None])
    far = (d.min(axis=1) > 3 * fwhm) & ~real["psfFlux_flag"]
    m = match_to_truth(
        cat["x"],
        cat["y"],
        real["x"][far],
        real["y"][far],
        MATCH_RADIUS,
        flux=cat["psfInstFlux"],
        truth_flux=real["psfInstFlux"][far],
    )
    ok = m.truth_to_det >= 0
    pull = (cat["psfInstFlux"][m.truth_to_det[ok]] - real["psfInstFlux"][far][ok]) / (
        real["psfInstFluxErr"][far][ok]
    )
    assert abs(np.median(pull)) < 0.2 and np.percentile(np.abs(pull), 68) < 0.6


def test_artificial_stars_agree_with_the_truth(crowded_field):
    """Completeness, bias and scatter per magnitude bin agree with the truth's.

    Compared (`compare_summaries`) in 1-mag bins where both have at least 15
    stars: the completeness difference as a two-proportion binomial z, the
    median bias and robust scatter differences over their sampling errors.
    A bias or scatter doubled by a bug would be many sigma off at the bright
    end (errors of 0.3-0.5 %); a flux scale error of 0.3 mag would move the
    50 % completeness magnitude by as much.
    """
    f, result, _, _ = crowded_field
    inj = result.summaryTable
    tru = _truth_summary(f, result.realTable, inj)
    cmp = art.compare_summaries(inj, tru, min_stars=15)
    z = np.asarray(cmp["completenessZ"])
    z = z[np.isfinite(z)]
    assert len(z) >= 5
    assert np.mean(z**2) < 3.0 and np.all(np.abs(z) < 3.0), z
    mag50_inj, mag50_tru = inj.meta["mag50"], art.completeness_magnitude(tru)
    assert abs(mag50_inj - mag50_tru) < 0.3, (mag50_inj, mag50_tru)
    for name in ("fluxBiasZ", "fluxScatterZ"):
        zf = np.asarray(cmp[name])
        zf = zf[np.isfinite(zf)]
        assert len(zf) >= 4 and np.all(np.abs(zf) < 3.0), (name, zf)
    # The brightest bins: both biased by the same small amount (the fit's PSF model).
    assert abs(inj["fluxBias"][0] - tru["fluxBias"][0]) < 0.015


def test_per_star_table_describes_each_star(crowded_field):
    f, result, _, _ = crowded_field
    stars = result.injectedTable
    assert stars.colnames[:4] == ["injectionId", "visit", "detector", "round"]
    assert stars["injectedFlux"].unit == u.adu and stars["x"].unit == u.pix
    # AB magnitudes: the exposure is calibrated (PHOTCALIB nJy per count).
    np.testing.assert_allclose(
        stars["injectedMag"], 31.4 - 2.5 * np.log10(PHOTCALIB * stars["injectedFlux"])
    )
    assert all(stars[c].description for c in stars.colnames)
    np.testing.assert_array_equal(stars["injectionId"], np.arange(1, len(stars) + 1))
    # Round size: 5 % of the real sources.
    per_round = np.bincount(stars["round"])
    assert (per_round == int(0.05 * len(result.realTable))).all()
    assert (result.roundTable["nInjected"] == per_round).all()
    # Stars of one round keep apart (5 FWHM).
    fwhm = result.summaryTable.meta["psfFwhm"]
    r0 = stars[stars["round"] == 0]
    d = np.hypot(r0["x"][:, None] - r0["x"][None], r0["y"][:, None] - r0["y"][None])
    assert d[np.triu_indices(len(r0), 1)].min() >= 5 * fwhm
    # Density and crowding describe the surroundings; crowded stars are found less often.
    assert stars["localDensity"].mean() == pytest.approx(len(result.realTable) / 256**2, rel=0.3)
    assert ((stars["crowding"] >= 0) & (stars["crowding"] <= 1)).all()
    faint = stars["injectedMag"] > result.summaryTable.meta["mag50"] - 0.5
    crowded = faint & (stars["crowding"] > np.median(stars["crowding"][faint]))
    assert stars["recovered"][faint & ~crowded].mean() > stars["recovered"][crowded].mean()
    rec = stars["recovered"]
    assert (stars["sourceId"][rec] > 0).all() and (stars["sourceId"][~rec] == -1).all()
    assert np.isnan(stars["recoveredFlux"][~rec]).all()


def test_figures(crowded_field, tmp_path):
    pytest.importorskip("matplotlib")
    from matplotlib.image import imread

    from lsst.meas.crowdsource.testing.injection_plots import (
        plot_completeness_density,
        plot_injection_summary,
    )

    f, result, _, _ = crowded_field
    truth = _truth_summary(f, result.realTable, result.summaryTable)
    paths = [
        plot_injection_summary(tmp_path / "s.png", result.summaryTable, truth_summary=truth),
        plot_completeness_density(tmp_path / "d.png", result.injectedTable),
    ]
    for path in paths:
        img = imread(path)
        assert img.shape[0] >= 400 and np.std(img[..., :3]) > 0.05
