"""Flux errors calibrated with artificial stars (issue 15's error bars).

In a crowded field the statistical flux error of the simultaneous fit
understates the scatter (the model lacks the stars it did not find); the
calibration measures by how much, with artificial stars, and rescales
``flux_err``.  Checked against the truth of a simulated crowded field, free
and forced, through the task, and on an empty field (where the errors are
already right and must stay so); plus the binning and the rounds.
"""

from __future__ import annotations

import numpy as np
import pytest

from lsst.meas.crowdsource import CrowdsourcePhotometryConfig, CrowdsourcePhotometryTask
from lsst.meas.crowdsource.engine import FitParams, fit_image
from lsst.meas.crowdsource.error_calibration import (
    calibrate_flux_errors,
    calibration_rounds,
    fit_error_scale,
)
from lsst.meas.crowdsource.io.ccddata import make_ccddata
from lsst.meas.crowdsource.matching import match_to_truth, robust_scatter
from lsst.meas.crowdsource.testing.simulate import clean_field

#: The calibration of the tests: many small rounds on a small image.
N_STARS = 500
SEPARATION_FWHM = 4.0


def _field(density: float, shape=(192, 192), seed: int = 3):
    """Constant Moffat PSF (FWHM 3.5), stars down to S/N 1.5, no defects."""
    return clean_field(shape, density, seed, snr_min=1.5)


@pytest.fixture(scope="module")
def crowded():
    return _field(0.05)


def _kwargs(field, **extra):
    return dict(
        variance=field.variance,
        psf=field.psf_at(96.0, 96.0, size=31),
        params=FitParams(),
        **extra,
    )


def _pull_widths(columns, field, rows=None, bins=((5, 30), (30, 1000))):
    """Width of (f - t) / flux_err_stat and / flux_err of the true stars, by true S/N."""
    t = field.truth
    if rows is None:
        det = match_to_truth(columns["x"], columns["y"], t["x"], t["y"], 1.0).truth_to_det
    else:
        det = np.full(len(t), -1)
        fi = columns["forced_index"]
        det[rows[fi[fi >= 0]]] = np.flatnonzero(fi >= 0)
    ok = det >= 0
    f = columns["flux"][det[ok]]
    truth = np.asarray(t["flux"])[ok]
    snr = np.asarray(t["snr"])[ok]
    out = {}
    for name in ("flux_err_stat", "flux_err"):
        z = (f - truth) / columns[name][det[ok]]
        out[name] = [robust_scatter(z[(snr >= lo) & (snr < hi)]) for lo, hi in bins]
    return out


def test_free_fit_pulls_calibrated(crowded):
    """Stat pulls of the crowded field are > 1.5; calibrated ones 0.75-1.3; fluxes untouched."""
    kw = _kwargs(crowded)
    res = fit_image(crowded.image, **kw)
    flux_before = res.columns["flux"].copy()
    stat_before = res.columns["flux_err_stat"].copy()
    np.testing.assert_array_equal(res.columns["flux_err"], stat_before)
    cal = calibrate_flux_errors(
        res, crowded.image, n_stars=N_STARS, separation_fwhm=SEPARATION_FWHM, **kw
    )
    assert cal.valid and cal.n_recovered > 0.6 * N_STARS
    separation = SEPARATION_FWHM * res.psf.fwhm()
    assert cal.rounds == calibration_rounds(N_STARS, crowded.image.shape, separation)[0]
    cols = res.columns
    np.testing.assert_array_equal(cols["flux"], flux_before)
    np.testing.assert_array_equal(cols["flux_err_stat"], stat_before)
    assert np.all(
        cols["flux_err"][np.isfinite(stat_before)] >= stat_before[np.isfinite(stat_before)]
    )
    widths = _pull_widths(cols, crowded)
    assert min(widths["flux_err_stat"]) > 1.5, widths
    for w in widths["flux_err"]:
        assert 0.75 < w < 1.3, widths


def test_forced_fit_pulls_calibrated(crowded):
    """Forced at the true S/N >= 5 stars: the artificial stars are forced too."""
    t = crowded.truth
    rows = np.flatnonzero(np.asarray(t["snr"]) >= 5)
    kw = _kwargs(
        crowded,
        forced_x=np.asarray(t["x"])[rows],
        forced_y=np.asarray(t["y"])[rows],
        find_new=False,
    )
    res = fit_image(crowded.image, **kw)
    cal = calibrate_flux_errors(
        res, crowded.image, n_stars=N_STARS, separation_fwhm=SEPARATION_FWHM, **kw
    )
    # Forced at their true positions, every artificial star on a usable pixel is measured.
    assert cal.valid and cal.n_recovered >= 0.95 * cal.n_injected
    widths = _pull_widths(res.columns, crowded, rows)
    assert min(widths["flux_err_stat"]) > 1.3, widths
    for w in widths["flux_err"]:
        assert 0.75 < w < 1.3, widths


def test_sparse_field_errors_stay_statistical():
    """Isolated stars with the true PSF: their errors are right, and the calibration must not
    inflate them.  (With the PSF refit from this field's few faint stars the calibration
    rightly finds more: the refit PSF mismeasures bright stars by a few per cent.)"""
    field = _field(0.002, shape=(160, 160), seed=5)
    kw = _kwargs(field)
    kw["params"] = FitParams(refit_psf=False)
    res = fit_image(field.image, **kw)
    cal = calibrate_flux_errors(
        res, field.image, n_stars=N_STARS, separation_fwhm=SEPARATION_FWHM, **kw
    )
    assert cal.valid
    factor = cal.factor(np.array([10.0, 30.0, 100.0, 300.0]))
    assert np.all(factor < 1.3), factor


def test_fit_error_scale_recovers_a_known_width():
    """Pulls of width 1.5 + 0.4 ln(S/N / 5), floored at 1 below S/N 5."""
    rng = np.random.default_rng(2)
    snr = np.exp(rng.uniform(np.log(3.0), np.log(2000.0), 3000))
    width = np.maximum(1.5 + 0.4 * np.log(snr / 5.0), 1.0)
    cal = fit_error_scale(snr, rng.standard_normal(len(snr)) * width)
    at = np.array([5.0, 20.0, 100.0, 1000.0])
    np.testing.assert_allclose(cal.factor(at), 1.5 + 0.4 * np.log(at / 5.0), rtol=0.08)
    # Constant beyond the bins, and the faintest bin's factor for a negative S/N.
    assert cal.factor(np.array([1e6]))[0] == pytest.approx(cal.factor(cal.snr[-1:])[0])
    assert cal.factor(np.array([-3.0]))[0] == pytest.approx(cal.factor(cal.snr[:1])[0])


def test_fit_error_scale_never_shrinks_and_needs_stars():
    rng = np.random.default_rng(3)
    snr = np.exp(rng.uniform(np.log(5.0), np.log(500.0), 500))
    narrow = fit_error_scale(snr, 0.5 * rng.standard_normal(500))
    np.testing.assert_array_equal(narrow.factor(np.array([10.0, 100.0])), 1.0)
    few = fit_error_scale(snr[:10], rng.standard_normal(10))
    assert not few.valid
    np.testing.assert_array_equal(few.factor(np.array([10.0, 100.0])), 1.0)


def test_calibration_rounds():
    """At most one star per 2 separation^2 pixels in a round, the stars spread evenly."""
    assert calibration_rounds(120, (100, 100), 10.0) == (3, 40)
    assert calibration_rounds(10, (100, 100), 10.0) == (1, 10)
    assert calibration_rounds(5, (10, 10), 100.0) == (5, 1)


def test_task_calibrates_and_keeps_the_statistical_column(crowded):
    """errorCalibrationStars > 0: psfInstFluxErr calibrated, the statistical error kept."""
    config = CrowdsourcePhotometryConfig()
    config.setNoAfwStorage()
    config.errorCalibrationStars = N_STARS
    config.errorCalibrationSeparation = SEPARATION_FWHM
    ccd = make_ccddata(crowded.image, crowded.variance, psf=crowded.psf_at(96.0, 96.0, size=31))
    task = CrowdsourcePhotometryTask(config=config)
    table = task.run(ccd).sourceTable
    stat = np.asarray(table["crowdsource_psfInstFluxErrStat"])
    total = np.asarray(table["psfInstFluxErr"])
    good = np.isfinite(stat)
    assert np.all(total[good] >= stat[good])
    assert np.median(total[good] / stat[good]) > 1.5
    md = task.metadata.to_dict()
    assert md["errorCalibrationValid"] is True
    assert md["errorCalibrationRecovered"] > 0.6 * N_STARS
    assert len(md["errorCalibrationFactor"]) == len(md["errorCalibrationSnr"]) > 5

    # Off (the default): the two columns are equal.
    plain = CrowdsourcePhotometryConfig()
    plain.setNoAfwStorage()
    off = CrowdsourcePhotometryTask(config=plain)
    t_off = off.run(ccd).sourceTable
    np.testing.assert_array_equal(t_off["psfInstFluxErr"], t_off["crowdsource_psfInstFluxErrStat"])
    assert "errorCalibrationValid" not in off.metadata.to_dict()
