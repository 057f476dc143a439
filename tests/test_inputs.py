"""Tests of `lsst.meas.crowdsource.io.inputs` (the pure-Python exposure path; runs anywhere)."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.nddata import CCDData, InverseVariance, StdDevUncertainty, VarianceUncertainty
from astropy.wcs import WCS

from lsst.meas.crowdsource.engine import InputError
from lsst.meas.crowdsource.io.ccddata import BitMaskCCDData, ccddata_inputs
from lsst.meas.crowdsource.io.exposure import exposure_inputs
from lsst.meas.crowdsource.io.inputs import ExposureInputs
from lsst.meas.crowdsource.io.psf import centred_odd_stamp

SHAPE = (20, 30)  # (ny, nx)
X0, Y0 = 100, 200


def _variance() -> np.ndarray:
    rng = np.random.default_rng(2)
    return rng.uniform(1.0, 9.0, size=SHAPE)


def _ccd(uncertainty=None, mask=None, meta=None, wcs=None, cls=CCDData) -> CCDData:
    """A CCDData; ``cls=BitMaskCCDData`` keeps an integer mask (CCDData makes it boolean)."""
    image = np.random.default_rng(4).normal(10.0, 1.0, size=SHAPE)
    if uncertainty is None:
        uncertainty = VarianceUncertainty(_variance())
    return cls(image, unit="adu", uncertainty=uncertainty, mask=mask, meta=meta or {}, wcs=wcs)


def _wcs() -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crpix = [15.5, 10.5]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    return wcs


@pytest.mark.parametrize("bad", [np.zeros(SHAPE), {"image": np.zeros(SHAPE)}, [1, 2, 3], None])
def test_exposure_inputs_rejects_other_types(bad):
    with pytest.raises(TypeError) as info:
        exposure_inputs(bad)
    message = str(info.value)
    for accepted in ("lsst.afw.image.Exposure", "lsst.images.VisitImage", "astropy.nddata.CCDData"):
        assert accepted in message
    assert type(bad).__qualname__ in message


def test_exposure_inputs_passes_inputs_through_and_reads_ccddata():
    ei = ExposureInputs(np.zeros(SHAPE), np.ones(SHAPE))
    assert exposure_inputs(ei) is ei
    inputs = exposure_inputs(_ccd())
    assert isinstance(inputs, ExposureInputs)
    np.testing.assert_allclose(inputs.variance, _variance())


def test_uncertainty_types_give_the_same_variance():
    var = _variance()
    results = [
        ccddata_inputs(_ccd(uncertainty=u)).variance
        for u in (
            VarianceUncertainty(var),
            InverseVariance(1.0 / var),
            StdDevUncertainty(np.sqrt(var)),
        )
    ]
    for r in results:
        np.testing.assert_allclose(r, var, rtol=1e-12)


def test_zero_inverse_variance_is_infinite_variance():
    ivar = 1.0 / _variance()
    ivar[3, 4] = 0.0
    variance = ccddata_inputs(_ccd(uncertainty=InverseVariance(ivar))).variance
    assert np.isinf(variance[3, 4])
    assert np.isfinite(np.delete(variance.ravel(), 3 * SHAPE[1] + 4)).all()


def test_missing_uncertainty_is_an_input_error():
    ccd = _ccd()
    ccd.uncertainty = None
    with pytest.raises(InputError, match="VarianceUncertainty"):
        ccddata_inputs(ccd)


def test_uncertainty_shape_mismatch_is_an_input_error():
    ccd = _ccd(uncertainty=VarianceUncertainty(np.ones((SHAPE[0] - 1, SHAPE[1]))))
    with pytest.raises(InputError, match="shape"):
        ccddata_inputs(ccd)


def test_non_2d_image_is_an_input_error():
    ccd = CCDData(
        np.zeros((2, 3, 4)), unit="adu", uncertainty=VarianceUncertainty(np.ones((2, 3, 4)))
    )
    with pytest.raises(InputError, match="2-D"):
        ccddata_inputs(ccd)


def test_mask_planes_from_mp_keywords():
    mask = np.zeros(SHAPE, np.int32)
    mask[1, 2] = 1 << 1  # SAT
    mask[3, 4] = (1 << 0) | (1 << 3)  # BAD | CR
    ccd = _ccd(
        mask=mask, meta={"MP_BAD": 0, "MP_SAT": 1, "MP_CR": 3, "OTHER": 7}, cls=BitMaskCCDData
    )
    inputs = ccddata_inputs(ccd)
    assert list(inputs.mask_planes) == ["BAD", "SAT", "CR"]  # the MP_ planes, by bit
    sat = inputs.plane(["SAT"])
    assert sat[1, 2] and sat.sum() == 1
    assert inputs.plane(["BAD"])[3, 4] and inputs.plane(["CR"])[3, 4]
    assert inputs.plane(["BAD", "SAT"]).sum() == 2
    assert inputs.plane(["NO_DATA"]).sum() == 0  # unknown names are ignored


def test_boolean_mask_means_bad():
    mask = np.zeros(SHAPE, bool)
    mask[5, 6] = mask[7, 8] = True
    inputs = ccddata_inputs(_ccd(mask=mask))
    assert list(inputs.mask_planes) == ["BAD"]
    np.testing.assert_array_equal(inputs.plane(["BAD"]), mask)


def test_integer_mask_without_plane_names_is_an_input_error():
    mask = np.zeros(SHAPE, np.int32)
    mask[0, 0] = 4
    with pytest.raises(InputError, match="MP_"):
        ccddata_inputs(_ccd(mask=mask, cls=BitMaskCCDData))


def test_plain_ccddata_with_named_planes_is_an_input_error():
    # CCDData turns an integer mask into booleans: the named planes would be lost
    mask = np.zeros(SHAPE, np.int32)
    mask[1, 2] = 2
    ccd = _ccd(mask=mask, meta={"MP_BAD": 0, "MP_SAT": 1})
    assert ccd.mask.dtype == bool
    with pytest.raises(InputError, match="boolean"):
        ccddata_inputs(ccd)


def test_xy0_and_calibration_from_meta():
    inputs = ccddata_inputs(_ccd(meta={"LTV1": -X0, "LTV2": -Y0, "PHOTCALIB": 0.5}))
    assert inputs.xy0 == (X0, Y0)
    assert inputs.njy_per_count == pytest.approx(0.5)
    plain = ccddata_inputs(_ccd())
    assert plain.xy0 == (0, 0)
    assert plain.njy_per_count is None
    assert plain.pixel_to_sky is None and plain.sky_to_pixel is None


def test_wcs_round_trip_with_xy0():
    wcs = _wcs()
    inputs = ccddata_inputs(_ccd(meta={"LTV1": -X0, "LTV2": -Y0}, wcs=wcs))
    x = X0 + np.array([0.0, 14.5, 29.0, 7.25])
    y = Y0 + np.array([0.0, 9.5, 19.0, 12.0])
    ra, dec = inputs.pixel_to_sky(x, y)
    ra_ref, dec_ref = wcs.all_pix2world(x - X0, y - Y0, 0)
    np.testing.assert_allclose(ra, ra_ref, atol=1e-12)
    np.testing.assert_allclose(dec, dec_ref, atol=1e-12)
    # array pixel (14.5, 9.5) is FITS CRPIX: PARENT (X0 + 14.5, Y0 + 9.5) maps to CRVAL
    assert ra[1] == pytest.approx(150.0, abs=1e-10)
    assert dec[1] == pytest.approx(2.0, abs=1e-10)
    x2, y2 = inputs.sky_to_pixel(ra, dec)
    np.testing.assert_allclose(x2, x, atol=1e-8)
    np.testing.assert_allclose(y2, y, atol=1e-8)


def test_centred_odd_stamp():
    # an odd, square, centred kernel image is returned as it is
    square = np.arange(25, dtype=float).reshape(5, 5)
    np.testing.assert_array_equal(centred_odd_stamp(square, -2, -2), square)
    # an asymmetric box (as lsst.images pads legacy kernels) is cut around (0, 0)
    arr = np.zeros((7, 9))
    arr[3, 5] = 2.0  # pixel (0, 0) when xy0 = (-5, -3)
    arr[2:5, 4:7] += 0.5
    stamp = centred_odd_stamp(arr, -5, -3)
    assert stamp.shape == (7, 7)
    assert np.unravel_index(np.argmax(stamp), stamp.shape) == (3, 3)
    assert stamp.sum() == pytest.approx(1.0)
    with pytest.raises(InputError, match="centre pixel"):
        centred_odd_stamp(arr, 1, 0)
