"""Tests of the lsst.images adapter (skipped without lsst.images, which needs Python 3.12)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import numpy as np
import pytest

lsst_images = pytest.importorskip("lsst.images")

import astropy.units as u  # noqa: E402
import astropy.wcs  # noqa: E402
from lsst.images import (  # noqa: E402
    Box,
    DetectorFrame,
    Image,
    MaskedImage,
    MaskSchema,
    SkyProjection,
    get_legacy_visit_image_mask_planes,
)
from lsst.images.fields import ChebyshevField  # noqa: E402
from lsst.images.psfs import GaussianPointSpreadFunction  # noqa: E402

from lsst.meas.crowdsource.io.exposure import exposure_inputs  # noqa: E402
from lsst.meas.crowdsource.io.images import (  # noqa: E402
    _njy_per_unit,
    _psf_callable,
    visit_image_inputs,
)
from lsst.meas.crowdsource.io.planes import LEGACY_PLANE_NAMES  # noqa: E402

X0, Y0, NX, NY = 100, 200, 64, 48
BBOX = Box.factory[Y0 : Y0 + NY, X0 : X0 + NX]


def _fits_wcs() -> astropy.wcs.WCS:
    wcs = astropy.wcs.WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crpix = [NX / 2 + 1, NY / 2 + 1]  # FITS 1-based array coordinates
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    return wcs


def _projection() -> SkyProjection:
    frame = DetectorFrame(instrument="Test", visit=1, detector=1, bbox=BBOX)
    return SkyProjection.from_fits_wcs(_fits_wcs(), frame, pixel_bounds=BBOX, x0=X0, y0=Y0)


def _masked_image(unit=u.nJy) -> MaskedImage:
    rng = np.random.default_rng(5)
    image = Image(
        rng.normal(100.0, 2.0, size=(NY, NX)).astype(np.float32),
        bbox=BBOX,
        unit=unit,
        sky_projection=_projection(),
    )
    variance = Image(
        np.full((NY, NX), 4.0, dtype=np.float32), bbox=BBOX, unit=None if unit is None else unit**2
    )
    schema = MaskSchema(list(get_legacy_visit_image_mask_planes().values()))
    mi = MaskedImage(image, variance=variance, mask_schema=schema)
    sat = np.zeros((NY, NX), bool)
    sat[5, 7] = True
    mi.mask.set("SATURATED", sat)
    bad = np.zeros((NY, NX), bool)
    bad[10, 3:5] = True
    mi.mask.set("BAD", bad)
    return mi


def test_arrays_xy0_and_mask_planes():
    mi = _masked_image()
    inputs = visit_image_inputs(mi)
    assert inputs.image.shape == (NY, NX)
    assert np.shares_memory(inputs.image, mi.image.array)
    np.testing.assert_array_equal(inputs.variance, mi.variance.array)
    assert inputs.xy0 == (X0, Y0)
    # lsst.images names and the afw names they replace share a bit
    assert inputs.mask_planes["SATURATED"] is inputs.mask_planes["SAT"]
    assert inputs.mask_planes["COSMIC_RAY"] is inputs.mask_planes["CR"]
    assert inputs.mask_planes["INTERPOLATED"] is inputs.mask_planes["INTRP"]
    assert inputs.mask_planes["DETECTION_EDGE"] is inputs.mask_planes["EDGE"]
    sat = inputs.plane(["SAT"])
    assert sat[5, 7] and sat.sum() == 1
    np.testing.assert_array_equal(inputs.plane(["SATURATED"]), mi.mask.get("SATURATED"))
    np.testing.assert_array_equal(inputs.plane(["BAD"]), mi.mask.get("BAD"))
    assert inputs.plane(["CR"]).sum() == 0
    assert inputs.psf is None  # a plain MaskedImage has no PSF


def test_every_plane_read_as_boolean():
    mi = _masked_image()
    rng = np.random.default_rng(1)
    for plane in mi.mask.schema:
        if plane is not None:
            mi.mask.set(plane.name, rng.random((NY, NX)) < 0.1)
    planes = visit_image_inputs(mi).mask_planes
    for plane in mi.mask.schema:
        if plane is not None:
            assert planes[plane.name].dtype == bool and planes[plane.name].shape == (NY, NX)
            np.testing.assert_array_equal(planes[plane.name], mi.mask.get(plane.name))
            for legacy in LEGACY_PLANE_NAMES.get(plane.name, ()):
                assert planes[legacy] is planes[plane.name]


def test_afw_plane_names_in_configs_work():
    mi = _masked_image()
    inputs = visit_image_inputs(mi)
    for name in ("BAD", "SAT", "CR", "INTRP", "EDGE", "NO_DATA", "SUSPECT"):
        assert name in inputs.mask_planes, name
    np.testing.assert_array_equal(
        inputs.plane(["BAD", "SAT"]), mi.mask.get("BAD") | mi.mask.get("SATURATED")
    )


def test_legacy_plane_names_cover_every_lsst_images_rename():
    from lsst.images import (
        get_legacy_deep_coadd_mask_planes,
        get_legacy_difference_image_mask_planes,
        get_legacy_non_cell_coadd_mask_planes,
    )

    renames: dict[str, set[str]] = {}
    for table in (
        get_legacy_visit_image_mask_planes(),
        get_legacy_difference_image_mask_planes(),
        get_legacy_deep_coadd_mask_planes(),
        get_legacy_non_cell_coadd_mask_planes(),
    ):
        for legacy_name, plane in table.items():
            if legacy_name != plane.name:
                renames.setdefault(plane.name, set()).add(legacy_name)
    assert {name: set(old) for name, old in LEGACY_PLANE_NAMES.items()} == renames


def test_unit_follows_the_image():
    assert visit_image_inputs(_masked_image(u.nJy)).unit == "nJy"
    assert visit_image_inputs(_masked_image(u.electron)).unit == "electron"
    assert visit_image_inputs(_masked_image(None)).unit == "count"


def test_sky_projection_round_trip():
    inputs = visit_image_inputs(_masked_image())
    fits_wcs = _fits_wcs()
    x = X0 + np.array([0.0, 10.5, NX - 1.0, 31.25])
    y = Y0 + np.array([0.0, 3.5, NY - 1.0, 40.0])
    ra, dec = inputs.pixel_to_sky(x, y)
    ra_ref, dec_ref = fits_wcs.all_pix2world(x - X0, y - Y0, 0)
    np.testing.assert_allclose(ra, ra_ref, atol=1e-9)
    np.testing.assert_allclose(dec, dec_ref, atol=1e-9)
    r0, d0 = inputs.pixel_to_sky(X0 + NX / 2, Y0 + NY / 2)
    assert float(r0) == pytest.approx(150.0, abs=1e-9)
    assert float(d0) == pytest.approx(2.0, abs=1e-9)
    x2, y2 = inputs.sky_to_pixel(ra, dec)
    np.testing.assert_allclose(x2, x, atol=1e-6)
    np.testing.assert_allclose(y2, y, atol=1e-6)


def test_calibration_from_units():
    assert visit_image_inputs(_masked_image(u.nJy)).njy_per_count == pytest.approx(1.0)
    assert visit_image_inputs(_masked_image(u.uJy)).njy_per_count == pytest.approx(1000.0)
    assert visit_image_inputs(_masked_image(u.electron)).njy_per_count is None
    assert visit_image_inputs(_masked_image(None)).njy_per_count is None


def test_calibration_from_photometric_scaling():
    scaling = ChebyshevField(BBOX, np.array([[0.8]]), unit=u.nJy / u.electron)
    obj = SimpleNamespace(unit=u.electron, photometric_scaling=scaling, bbox=BBOX)
    assert _njy_per_unit(obj) == pytest.approx(0.8)
    obj = SimpleNamespace(unit=u.electron, photometric_scaling=None, bbox=BBOX)
    assert _njy_per_unit(obj) is None


def test_psf_stamp_centred_and_normalised():
    model = GaussianPointSpreadFunction(2.0, bounds=BBOX, stamp_size=21)
    psf = _psf_callable(SimpleNamespace(psf=model))
    stamp = psf(X0 + 10.3, Y0 + 20.7)
    assert stamp.shape == (21, 21)
    assert stamp.sum() == pytest.approx(1.0)
    assert np.unravel_index(np.argmax(stamp), stamp.shape) == (10, 10)
    np.testing.assert_allclose(stamp, model.compute_kernel_image(x=0.0, y=0.0).array)


def test_non_masked_image_is_rejected():
    with pytest.raises(TypeError, match="lsst.images.VisitImage"):
        visit_image_inputs(Image(0.0, shape=(3, 4)))


EXTERNAL_DATA_DIR = os.environ.get("TESTDATA_IMAGES_DIR")


@pytest.mark.skipif(EXTERNAL_DATA_DIR is None, reason="TESTDATA_IMAGES_DIR is not set.")
def test_real_visit_image():
    """A DP2 visit_image from testdata_images, and (with afw) the same file via afw."""
    from lsst.images import VisitImage

    filename = os.path.join(EXTERNAL_DATA_DIR, "dp2", "legacy", "visit_image.fits")
    visit = VisitImage.read_legacy(filename)
    inputs = exposure_inputs(visit)
    assert inputs.image.shape == tuple(visit.bbox.shape)
    assert inputs.xy0 == (visit.bbox.start.x, visit.bbox.start.y)
    assert inputs.njy_per_count == pytest.approx(1.0)  # DP2 visit images are in nJy
    cx, cy = visit.bbox.x.center, visit.bbox.y.center
    ra, dec = inputs.pixel_to_sky(np.array([cx]), np.array([cy]))
    x, y = inputs.sky_to_pixel(ra, dec)
    assert x[0] == pytest.approx(cx, abs=1e-4) and y[0] == pytest.approx(cy, abs=1e-4)
    try:
        from lsst.afw.image import ExposureFitsReader
    except ImportError:
        ExposureFitsReader = None
    if ExposureFitsReader is not None:
        from lsst.meas.crowdsource.io.afw import afw_exposure_inputs

        legacy = afw_exposure_inputs(ExposureFitsReader(filename).read())
        assert legacy.xy0 == inputs.xy0
        np.testing.assert_array_equal(legacy.image, inputs.image)
        for name in ("BAD", "SAT", "CR", "INTRP", "EDGE", "NO_DATA", "SUSPECT"):
            if name in legacy.mask_planes:
                np.testing.assert_array_equal(
                    legacy.plane([name]), inputs.plane([name]), err_msg=name
                )
        ra2, dec2 = legacy.pixel_to_sky(np.array([cx]), np.array([cy]))
        assert ra2[0] == pytest.approx(ra[0], abs=1e-7)
        assert dec2[0] == pytest.approx(dec[0], abs=1e-7)
        assert legacy.njy_per_count == pytest.approx(inputs.njy_per_count, rel=1e-6)
    # last, as lsst.images cannot yet evaluate chromatic Piff PSFs
    try:
        stamp = inputs.psf(cx, cy)
    except NotImplementedError as err:
        pytest.skip(f"lsst.images cannot evaluate this PSF: {err}")
    assert stamp.shape[0] == stamp.shape[1] and stamp.shape[0] % 2 == 1
    assert stamp.sum() == pytest.approx(1.0, rel=1e-3)
