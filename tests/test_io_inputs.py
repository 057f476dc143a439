"""Tests of the io input contract: `ExposureInputs`, its unit, the background, and the shared
variance and PSF-stamp rules (pure Python; runs anywhere)."""

from __future__ import annotations

import astropy.units as u
import numpy as np
import pytest
from astropy.nddata import (
    CCDData,
    InverseVariance,
    StdDevUncertainty,
    UnknownUncertainty,
    VarianceUncertainty,
)
from lsst.daf.butler import StorageClass

from lsst.meas.crowdsource.engine import InputError
from lsst.meas.crowdsource.io.ccddata import (
    ccddata_inputs,
    make_ccddata,
    validate_ccddata,
    variance_from_uncertainty,
)
from lsst.meas.crowdsource.io.exposure import exposure_inputs
from lsst.meas.crowdsource.io.formatters import CCDDataDelegate
from lsst.meas.crowdsource.io.inputs import COUNT_UNIT, ExposureInputs, unit_string
from lsst.meas.crowdsource.io.planes import DEFAULT_MASK_PLANES
from lsst.meas.crowdsource.io.psf import centred_odd_stamp

SHAPE = (12, 15)


def _ccd(**kwargs) -> CCDData:
    rng = np.random.default_rng(8)
    image = rng.normal(50.0, 2.0, SHAPE).astype(np.float32)
    mask = np.zeros(SHAPE, dtype=np.int32)
    mask[2, 3] = 1 << DEFAULT_MASK_PLANES["SAT"]
    mask[4, :] |= 1 << DEFAULT_MASK_PLANES["NO_DATA"]
    return make_ccddata(image, np.full(SHAPE, 4.0, np.float32), mask=mask, **kwargs)


# ---------------------------------------------------------------------------
# ExposureInputs
# ---------------------------------------------------------------------------


def test_ccddata_planes_are_the_declared_bits():
    ccd = _ccd()
    inputs = ccddata_inputs(ccd)
    assert list(inputs.mask_planes) == list(DEFAULT_MASK_PLANES)
    for name, bit in DEFAULT_MASK_PLANES.items():
        np.testing.assert_array_equal(inputs.mask_planes[name], (ccd.mask & (1 << bit)) != 0)
    assert not any(plane.flags.writeable for plane in inputs.mask_planes.values())


def test_plane_is_a_new_writeable_array():
    inputs = ccddata_inputs(_ccd())
    sat = inputs.plane(["SAT"])
    assert sat.flags.writeable and sat[2, 3] and sat.sum() == 1
    sat[:] = True
    assert inputs.plane(["SAT"]).sum() == 1
    np.testing.assert_array_equal(inputs.plane("SAT"), inputs.plane(["SAT"]))  # one name
    np.testing.assert_array_equal(inputs.plane([]), np.zeros(SHAPE, bool))


def test_mask_planes_must_be_boolean_images_of_the_image_shape():
    ExposureInputs(np.zeros(SHAPE), np.ones(SHAPE), {"BAD": np.zeros(SHAPE, bool)})
    with pytest.raises(InputError, match="'BAD' must be a boolean image"):
        ExposureInputs(np.zeros(SHAPE), np.ones(SHAPE), {"BAD": np.zeros(SHAPE, np.int32)})
    with pytest.raises(InputError, match="shape"):
        ExposureInputs(np.zeros(SHAPE), np.ones(SHAPE), {"BAD": np.zeros((3, 3), bool)})


def test_boolean_ccddata_mask_is_copied():
    mask = np.zeros(SHAPE, bool)
    mask[1, 1] = True
    ccd = CCDData(np.zeros(SHAPE), unit="adu", uncertainty=VarianceUncertainty(np.ones(SHAPE)))
    ccd.mask = mask
    inputs = ccddata_inputs(ccd)
    assert mask.flags.writeable  # the caller's array is left alone
    assert inputs.mask_planes["BAD"] is not mask
    np.testing.assert_array_equal(inputs.mask_planes["BAD"], mask)


# ---------------------------------------------------------------------------
# Unit
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "unit, expected",
    [
        ("adu", "adu"),
        (u.nJy, "nJy"),
        ("electron", "electron"),
        (u.electron / u.s, "electron / s"),
        (u.count, COUNT_UNIT),
        (u.dimensionless_unscaled, COUNT_UNIT),
    ],
)
def test_unit_follows_the_ccddata(unit, expected):
    assert ccddata_inputs(_ccd(unit=unit)).unit == expected
    assert u.Unit(expected)  # an astropy unit string


def test_unit_defaults():
    assert ccddata_inputs(_ccd()).unit == "adu"  # make_ccddata's default unit
    assert ExposureInputs(np.zeros(SHAPE), np.ones(SHAPE)).unit == COUNT_UNIT
    assert unit_string(None) == COUNT_UNIT


# ---------------------------------------------------------------------------
# Background
# ---------------------------------------------------------------------------


def test_background_array_is_added_in_the_image_dtype():
    ccd = _ccd()
    background = np.linspace(0.0, 1.0, SHAPE[0] * SHAPE[1]).reshape(SHAPE)
    inputs = exposure_inputs(ccd, background=background)
    assert inputs.image.dtype == np.float32
    np.testing.assert_array_equal(inputs.image, ccd.data + background.astype(np.float32))
    assert not np.shares_memory(inputs.image, ccd.data)
    plain = exposure_inputs(ccd)
    np.testing.assert_array_equal(plain.image, ccd.data)  # the exposure is not changed
    np.testing.assert_array_equal(inputs.variance, plain.variance)
    assert inputs.xy0 == plain.xy0 and list(inputs.mask_planes) == list(plain.mask_planes)


def test_background_to_an_exposure_inputs():
    ei = ExposureInputs(np.zeros(SHAPE, np.float32), np.ones(SHAPE))
    assert exposure_inputs(ei, background=None) is ei
    np.testing.assert_array_equal(exposure_inputs(ei, np.ones(SHAPE)).image, np.ones(SHAPE))


class _ForeignBackground:
    """Stands for a background type from elsewhere (not an afw BackgroundList)."""

    def getImage(self):  # noqa: N802 - the afw name
        return None


@pytest.mark.parametrize(
    "background, match",
    [
        (np.zeros((3, 3)), r"background array has shape \(3, 3\)"),
        (_ForeignBackground(), "Cannot add a background of type"),
        (1.5, "Cannot add a background of type builtins.float"),
    ],
)
def test_background_that_cannot_go_with_the_exposure(background, match):
    with pytest.raises(InputError, match=match):
        exposure_inputs(_ccd(), background=background)


# ---------------------------------------------------------------------------
# Variance from an uncertainty: one rule everywhere
# ---------------------------------------------------------------------------


def test_variance_from_each_uncertainty_type():
    var = np.array([[1.0, 4.0], [0.25, 9.0]], dtype=np.float32)
    for unc in (VarianceUncertainty(var), InverseVariance(1 / var), StdDevUncertainty(var**0.5)):
        out = variance_from_uncertainty(unc)
        assert out.dtype == np.float32
        np.testing.assert_allclose(out, var, rtol=1e-6)
        assert variance_from_uncertainty(unc, dtype=np.float64).dtype == np.float64
    same = VarianceUncertainty(var)
    assert variance_from_uncertainty(same) is same.array
    assert variance_from_uncertainty(VarianceUncertainty(np.ones(3, int))).dtype == np.float64


def test_inverse_variance_without_information_is_infinite_variance():
    ivar = InverseVariance(np.array([0.0, -1.0, np.nan, 0.5]))
    np.testing.assert_array_equal(variance_from_uncertainty(ivar), [np.inf, np.inf, np.inf, 2.0])


def test_unsupported_uncertainty_is_an_input_error():
    with pytest.raises(InputError, match="Unsupported uncertainty type UnknownUncertainty"):
        variance_from_uncertainty(UnknownUncertainty(np.ones(SHAPE)))


def test_every_reader_uses_the_same_variance():
    rng = np.random.default_rng(2)
    var = rng.uniform(1.0, 9.0, SHAPE).astype(np.float32)
    var[0, 0] = np.inf
    image = np.zeros(SHAPE, np.float32)
    ivar = InverseVariance(np.where(np.isfinite(var), 1 / var, 0.0).astype(np.float32))
    made = make_ccddata(image, ivar)
    ccd = CCDData(image, unit="adu", uncertainty=ivar)
    expected = variance_from_uncertainty(ivar)
    np.testing.assert_array_equal(made.uncertainty.array, expected)
    # the engine's inputs are computed in float64, as they always were
    np.testing.assert_array_equal(
        ccddata_inputs(ccd).variance, variance_from_uncertainty(ivar, dtype=np.float64)
    )
    delegate = CCDDataDelegate(StorageClass("CrowdsourceCCDData"))
    np.testing.assert_array_equal(delegate.getComponent(ccd, "variance"), expected)
    validate_ccddata(made)


# ---------------------------------------------------------------------------
# PSF stamps: the io rules (the engine's check_psf_stamp is stricter)
# ---------------------------------------------------------------------------


def test_stamp_rules_without_an_origin():
    stamp = np.arange(35, dtype=np.float32).reshape(5, 7)
    out = centred_odd_stamp(stamp)
    assert out.dtype == np.float64 and not np.shares_memory(out, stamp)
    np.testing.assert_array_equal(out, stamp)  # values kept, not normalised, not squared
    with pytest.raises(InputError, match="odd dimensions"):
        centred_odd_stamp(np.ones((4, 5)))
    with pytest.raises(InputError, match="PSF stamp must be 2-D"):
        centred_odd_stamp(np.ones(5))
    with pytest.raises(InputError, match="NaN or inf"):
        centred_odd_stamp(np.full((3, 3), np.inf))
    with pytest.raises(TypeError, match="numeric"):
        centred_odd_stamp(np.ones((3, 3), bool))
    with pytest.raises(InputError, match="missing"):
        centred_odd_stamp(None)


def test_kernel_image_rules():
    kernel = np.zeros((5, 5))
    kernel[2, 2] = 1.0
    assert centred_odd_stamp(kernel, -2, -2) is not None
    kernel[0, 0] = np.nan
    with pytest.raises(InputError, match="PSF kernel image contains NaN"):
        centred_odd_stamp(kernel, -2, -2)
    with pytest.raises(InputError, match="PSF kernel image must be 2-D"):
        centred_odd_stamp(np.ones(5), -2, 0)
