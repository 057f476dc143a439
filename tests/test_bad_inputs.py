"""The bad-input suite: one case per kind of hostile input a detector or a user produces.

Each case asserts its outcome: a clear error naming the problem, or
documented handling with a bounded amount of work (counted in sources,
peaks or passes, never in seconds).  The README's "Bad input" section lists
every case here with its outcome (`test_readme_lists_every_case`); the
forced-photometry reference-catalogue cases live in ``tests/test_forced.py``
and the pipetask case in ``tests/test_pipetask.py``.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest
from astropy.nddata import CCDData, VarianceUncertainty
from astropy.table import Table
from astropy.wcs import WCS

from lsst.meas.crowdsource import CrowdsourceForcedPhotometryConfig, CrowdsourceForcedPhotometryTask
from lsst.meas.crowdsource.engine import FitParams, InputError, NoUsablePixelsError, fit_image
from lsst.meas.crowdsource.engine.columns import ENGINE_COLUMNS
from lsst.meas.crowdsource.io.ccddata import BitMaskCCDData, ccddata_inputs
from lsst.meas.crowdsource.io.exposure import exposure_inputs
from lsst.meas.crowdsource.testing.simulate import simulate_field

ROOT = Path(__file__).resolve().parents[1]
SHAPE = (128, 128)
CASES: list[str] = []  # filled by `case`


def case(name: str):
    """Register a test as the case ``name`` of the suite."""

    def wrap(fn):
        CASES.append(name)
        fn.case = name
        return fn

    return wrap


@pytest.fixture(scope="module")
def field():
    """A sparse field (20-odd stars, Moffat PSF) with no defects, and its clean fit."""
    f = simulate_field(SHAPE, density=0.0015, seed=3, psf="moffat", bad_columns=0)
    clean = fit_image(f.image, f.variance, psf=f.psf_stamp)
    return f, clean


def _fit(f, image=None, variance=None, **kw):
    kw.setdefault("psf", f.psf_stamp)
    return fit_image(
        f.image if image is None else image, f.variance if variance is None else variance, **kw
    )


def _truth_score(f, result, region) -> tuple[float, int]:
    """Fraction of the true S/N > 8 stars in ``region`` (x, y -> bool) found within 1.5 px,
    and the number of detections with no true star (any S/N) within 1.5 px."""
    t = f.truth
    tx, ty, snr = (np.asarray(t[c], float) for c in ("x", "y", "snr"))
    x, y = result.columns["x"], result.columns["y"]
    want = region(tx, ty) & (snr > 8) & np.asarray(t["in_image"])
    d_true = np.hypot(tx[want, None] - x[None], ty[want, None] - y[None])
    found = (d_true.min(axis=1) < 1.5).mean() if len(x) else 0.0
    d_det = np.hypot(x[:, None] - tx[None], y[:, None] - ty[None])
    spurious = int((d_det.min(axis=1) >= 1.5).sum())
    return float(found), spurious


def _new_peaks(result) -> list[int]:
    return [h["n_new"] for h in result.history if not h.get("final")]


# --- defects the detector makes -----------------------------------------------------


@case("plateau-1e9")
def test_plateau_1e9(field, caplog):
    """An unmasked half-image plateau at 1e9 (a runaway amplifier): left out, with a
    warning; the other half is measured as without it.  Without the fix this took
    more than five minutes (4300 sources in the first pass)."""
    f, clean = field
    img = f.image.copy()
    img[:, :64] = 1e9
    with caplog.at_level(logging.WARNING):
        r = _fit(f, img)
    assert r.defects.n_plateaus == 1 and r.defects.plateau[:, :64].all()
    assert "no PSF can fit" in caplog.text
    assert (r.columns["x"] > 63).all()
    found, spurious = _truth_score(f, r, lambda x, y: x > 64 + 8)
    assert found >= 0.9 and spurious <= 2
    assert max(_new_peaks(r)) <= len(clean)


@case("plateau-without-masking")
def test_plateau_bounded_without_defect_masking(field):
    """With mask_defects off, a flat top still gives one peak, not one per pixel
    (one per pixel was 4316 in the first pass).  Each pass does find peaks along the
    plateau's unmasked edge (3-70 per pass; the passes after the fourth run on while
    they keep coming, up to max_iter)."""
    f, clean = field
    img = f.image.copy()
    img[:, :64] = 1e9
    r = _fit(f, img, params=FitParams(mask_defects=False))
    assert r.defects is None
    assert _new_peaks(r)[0] <= len(clean)
    assert max(_new_peaks(r)) < 5 * len(clean)
    assert len(_new_peaks(r)) <= FitParams().max_iter


@case("step")
def test_amplifier_offset_step(field):
    """The left half offset by +5000 counts (~170 sigma; an amplifier jump): the edge is
    left out and each side gets a sky of its own; no false sources along the step."""
    f, clean = field
    img = f.image.copy()
    img[:, :64] += 5000
    r = _fit(f, img)
    assert r.defects.n_steps >= 1 and r.defects.n_plateaus == 0
    assert r.defects.step[:, 60:68].all()
    away = lambda x, y: np.abs(x - 64) > 10  # noqa: E731
    found, spurious = _truth_score(f, r, away)
    # Each side has a sky of its own: as complete and as clean as without the step.
    clean_found, clean_spurious = _truth_score(f, clean, away)
    assert found >= clean_found - 0.05
    assert spurious <= clean_spurious + 1
    assert len(r) <= len(clean)


@case("hot-column")
def test_hot_column(field):
    """A column at 1e9: both of its edges are steps; no source is made of it."""
    f, clean = field
    img = f.image.copy()
    img[:, 40] = 1e9
    r = _fit(f, img)
    assert r.defects.n_steps == 2
    assert len(r) <= len(clean) + 1


@case("inf-column")
def test_column_of_inf(field):
    """A column of +inf is unusable like any non-finite pixel: no defect needed."""
    f, clean = field
    img = f.image.copy()
    img[:, 40] = np.inf
    r = _fit(f, img)
    assert not r.defects
    assert abs(len(r) - len(clean)) <= 1
    assert np.isfinite(r.columns["flux"]).all()


@case("clipped-core")
def test_unflagged_saturated_core(field):
    """A bright star clipped at 60000 with no SAT flag is fit as a flagged one is."""
    f, _ = field
    star = np.zeros(SHAPE)
    h = f.psf_stamp.shape[0] // 2
    star[64 - h : 64 + h + 1, 64 - h : 64 + h + 1] = 3e7 * f.psf_stamp
    img = np.minimum(f.image + star, 60000.0)
    flagged = _fit(f, img, saturated=img >= 60000)
    unflagged = _fit(f, img)
    assert unflagged.defects.clipped.sum() == (img >= 60000).sum()
    assert len(unflagged) == len(flagged)
    near = np.hypot(unflagged.columns["x"] - 64, unflagged.columns["y"] - 64) < 2
    assert near.sum() == 1
    assert unflagged.columns["flag_saturated_center"][near].all()


# --- a wrong variance ----------------------------------------------------------------


@case("variance-100x-small")
def test_variance_far_too_small(field, caplog):
    """Variance 100x too small: a warning names it (noise_ratio ~10); every noise bump
    passes the threshold, and the caps bound the work."""
    f, clean = field
    with caplog.at_level(logging.WARNING):
        r = _fit(f, variance=f.variance / 100)
    assert r.noise_ratio == pytest.approx(10, rel=0.25)
    assert "variance is probably wrong" in caplog.text
    assert len(r) > 2 * len(clean)
    area = SHAPE[0] * SHAPE[1]
    assert len(r) <= FitParams().max_source_density * area
    assert max(_new_peaks(r)) <= FitParams().max_new_peak_density * area


def test_noise_ratio_is_not_fooled_by_crowding():
    """A right variance on a field packed with stars (0.2 stars/px, Moffat FWHM
    3.5): `noise_ratio` stays near 1 (the differences of adjacent pixels, used
    before, gave 3.8 here and warned of a wrong variance); the same image with
    a variance 100x too small still reads ~10x as much."""
    from lsst.meas.crowdsource.engine.defects import NOISE_RATIO_WARN, noise_ratio

    f = simulate_field((256, 256), density=0.2, seed=4, psf="moffat", fwhm=3.5, bad_columns=0)
    weight = 1.0 / f.variance
    crowded = noise_ratio(f.image, weight)
    assert 1.0 < crowded < 2.0 < NOISE_RATIO_WARN
    assert noise_ratio(f.image, weight * 100) == pytest.approx(10 * crowded, rel=1e-6)
    # The noise alone (the image minus its noiseless sky and stars) reads 1.
    noise = f.image - f.sky - f.noiseless
    assert noise_ratio(noise, weight) == pytest.approx(1.0, abs=0.05)


@case("variance-100x-large")
def test_variance_far_too_large(field, caplog):
    """Variance 100x too large: the warning, and only the brightest stars."""
    f, clean = field
    with caplog.at_level(logging.WARNING):
        r = _fit(f, variance=f.variance * 100)
    assert r.noise_ratio == pytest.approx(0.1, rel=0.25)
    assert "variance is probably wrong" in caplog.text
    assert 0 < len(r) < len(clean)


@case("source-cap")
def test_source_cap_flags_and_keeps_the_most_significant(field, caplog):
    """A tile that reaches the caps keeps its most significant peaks, warns, sets
    flag_source_cap and records it per pass."""
    f, clean = field
    params = FitParams(max_new_peak_density=5 / (SHAPE[0] * SHAPE[1]))
    with caplog.at_level(logging.WARNING):
        r = _fit(f, params=params)
    assert max(_new_peaks(r)) <= 5
    assert r.columns["flag_source_cap"].all()
    assert any(h.get("capped") for h in r.history)
    assert "caps" in caplog.text
    # The five kept first are the brightest of the clean fit's sources.
    first = r.columns["pass_found"] == 0
    bright = np.sort(clean.columns["flux"])[-5:]
    assert np.min(r.columns["flux"][first]) > 0.5 * bright[0]
    assert not clean.columns["flag_source_cap"].any()


# --- odd arrays ------------------------------------------------------------------------


@case("big-endian")
def test_big_endian_and_integer_images(field):
    f, clean = field
    for image in (f.image.astype(">f4"), np.round(f.image).astype(">i2")):
        r = _fit(f, image, f.variance.astype(">f4"))
        assert abs(len(r) - len(clean)) <= 1


@pytest.mark.parametrize("shape", [(12, 12), (1, 128)])
@case("tiny-image")
def test_tiny_images_give_empty_catalogues(shape):
    rng = np.random.default_rng(1)
    r = fit_image(1000 + rng.normal(0, 30, shape), np.full(shape, 900.0))
    assert len(r) == 0
    assert set(ENGINE_COLUMNS) <= set(r.columns)


@case("no-usable-variance")
def test_zero_and_infinite_variance():
    for variance in (np.zeros(SHAPE), np.full(SHAPE, np.inf)):
        with pytest.raises(NoUsablePixelsError, match="No usable pixels"):
            fit_image(np.ones(SHAPE), variance)


@case("constant-image")
def test_constant_image_gives_an_empty_catalogue():
    r = fit_image(np.full(SHAPE, 1000.0), np.full(SHAPE, 900.0))
    assert len(r) == 0
    assert r.defects.n_plateaus == 1


@case("half-nan")
def test_half_nan(field):
    f, clean = field
    img = f.image.copy()
    img[:, :64] = np.nan
    r = _fit(f, img)
    assert (r.columns["x"] > 60).all()
    assert 0.7 * (clean.columns["x"] > 68).sum() <= len(r) <= (clean.columns["x"] > 60).sum() + 2


@pytest.mark.parametrize("scale", [1e26, 1e-26])
@case("scaled-values")
def test_values_scaled_by_1e26(field, scale):
    f, clean = field
    r = _fit(f, f.image * scale, f.variance.astype(float) * scale**2)
    assert len(r) == len(clean)
    np.testing.assert_allclose(
        np.sort(r.columns["flux"]) / scale, np.sort(clean.columns["flux"]), rtol=1e-5
    )


# --- the PSF -----------------------------------------------------------------------------


@case("negative-psf")
def test_negative_psf(field):
    f, _ = field
    with pytest.raises(InputError, match="positive sum"):
        _fit(f, psf=-f.psf_stamp)


@case("off-centre-psf")
def test_off_centre_psf(field):
    f, _ = field
    with pytest.raises(InputError, match=r"off-centre.*\(\+[23]\.\d\d, [+-]0\.00\)"):
        _fit(f, psf=np.roll(f.psf_stamp, 3, axis=1))


@case("psf-nan-wings")
def test_psf_with_nan_wings(field):
    f, _ = field
    stamp = f.psf_stamp.copy()
    stamp[0, :] = np.nan
    with pytest.raises(InputError, match="NaN or inf"):
        _fit(f, psf=stamp)


@pytest.mark.parametrize("size", [3, 201])
@case("psf-stamp-size")
def test_tiny_and_huge_psf_stamps(field, size):
    f, clean = field
    stamp = f.psf_at(64.0, 64.0, size=size)
    r = _fit(f, psf=stamp)
    # A 3x3 stamp misses the wings: false companions of the bright stars, bounded.
    assert 0.7 * len(clean) <= len(r) <= 2 * len(clean)


# --- exposures and catalogues --------------------------------------------------------------


def _ccd_with_mask_bit(bit: int, cls=CCDData) -> CCDData:
    """A flat CCDData whose integer mask has ``bit`` set on one pixel; planes BAD=0, SAT=1."""
    mask = np.zeros(SHAPE, np.int32)
    mask[3, 4] = 1 << bit
    return cls(
        np.ones(SHAPE),
        unit="adu",
        uncertainty=VarianceUncertainty(np.ones(SHAPE)),
        mask=mask,
        meta={"MP_BAD": 0, "MP_SAT": 1},
    )


@case("undeclared-mask-bits")
def test_mask_bits_not_declared():
    with pytest.raises(InputError, match=r"bit\(s\) 12 .*declared planes"):
        ccddata_inputs(_ccd_with_mask_bit(12, BitMaskCCDData))


@case("ccddata-bool-mask-with-planes")
def test_boolean_ccddata_mask_with_plane_names():
    # A plain CCDData turns the integer mask into booleans: the planes are lost.
    with pytest.raises(InputError, match="boolean"):
        ccddata_inputs(_ccd_with_mask_bit(1))


@case("background-shape")
def test_background_of_another_shape(field):
    f, _ = field
    ccd = CCDData(f.image, unit="adu", uncertainty=VarianceUncertainty(f.variance))
    with pytest.raises(InputError, match="shape"):
        exposure_inputs(ccd, background=np.zeros((10, 10)))


@case("singular-wcs")
def test_wcs_that_cannot_be_inverted(field):
    """Forced photometry from sky positions through a WCS with a singular matrix."""
    f, _ = field
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crpix = [64.0, 64.0]
    wcs.wcs.crval = [30.0, -40.0]
    wcs.wcs.cd = [[1e-4, 1e-4], [1e-4, 1e-4]]  # rank 1
    from lsst.meas.crowdsource.io.ccddata import make_ccddata

    ccd = make_ccddata(f.image, f.variance, wcs=wcs, psf=f.psf_stamp)
    config = CrowdsourceForcedPhotometryConfig()
    config.setNoAfwStorage()
    task = CrowdsourceForcedPhotometryTask(config=config)
    with pytest.raises(InputError, match="WCS"):
        task.run(ccd, Table({"coord_ra": [30.0], "coord_dec": [-40.0]}))


# --- the README ------------------------------------------------------------------------------


def test_readme_lists_every_case():
    """The README's "Bad input" table has one row per case of this suite, and no other."""
    text = (ROOT / "README.md").read_text()
    section = re.search(r"^## Bad input\n(.*?)(?=^## )", text, re.S | re.M)
    assert section, "README.md has no '## Bad input' section"
    listed = re.findall(r"^\| `([a-z0-9-]+)` \|", section.group(1), re.M)
    assert sorted(listed) == sorted(CASES)
