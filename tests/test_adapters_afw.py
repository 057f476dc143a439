"""Tests of the afw adapter (need the Rubin stack: skipped without lsst.afw)."""

from __future__ import annotations

import numpy as np
import pytest

afwImage = pytest.importorskip("lsst.afw.image")

import lsst.afw.detection as afwDetection  # noqa: E402
import lsst.afw.geom as afwGeom  # noqa: E402
import lsst.afw.table as afwTable  # noqa: E402
import lsst.geom  # noqa: E402
from astropy.table import Table  # noqa: E402

from lsst.meas.crowdsource.catalog import (  # noqa: E402
    SLOT_ALIASES,
    forced_source_columns,
    source_columns,
)
from lsst.meas.crowdsource.io.afw import (  # noqa: E402
    afw_exposure_inputs,
    afw_schema,
    numpy_to_afw_image,
    source_catalog_from_table,
)
from lsst.meas.crowdsource.io.exposure import exposure_inputs  # noqa: E402

X0, Y0, NX, NY = 100, 200, 64, 48
PSF_SIGMA = 2.0
CALIB = 2.5


def _make_wcs():
    crval = lsst.geom.SpherePoint(150.0, 2.0, lsst.geom.degrees)
    cd = afwGeom.makeCdMatrix(scale=0.2 * lsst.geom.arcseconds)
    return afwGeom.makeSkyWcs(
        crpix=lsst.geom.Point2D(X0 + NX / 2, Y0 + NY / 2), crval=crval, cdMatrix=cd
    )


def _make_exposure(with_components: bool = True):
    bbox = lsst.geom.Box2I(lsst.geom.Point2I(X0, Y0), lsst.geom.Extent2I(NX, NY))
    exposure = afwImage.ExposureF(bbox)
    rng = np.random.default_rng(3)
    exposure.image.array[:, :] = rng.normal(100.0, 2.0, size=(NY, NX))
    exposure.variance.array[:, :] = 4.0
    mask = exposure.mask
    mask.array[5, 7] |= mask.getPlaneBitMask("SAT")
    mask.array[10, 3] |= mask.getPlaneBitMask("BAD")
    mask.array[10, 4] |= mask.getPlaneBitMask(["BAD", "CR"])
    if with_components:
        exposure.setPsf(afwDetection.GaussianPsf(21, 21, PSF_SIGMA))
        exposure.setWcs(_make_wcs())
        exposure.setPhotoCalib(afwImage.PhotoCalib(CALIB))
    return exposure


def test_arrays_xy0_and_mask_planes():
    exposure = _make_exposure()
    inputs = afw_exposure_inputs(exposure)
    assert inputs.image.shape == (NY, NX)
    assert np.shares_memory(inputs.image, exposure.image.array)
    np.testing.assert_array_equal(inputs.variance, exposure.variance.array)
    assert inputs.xy0 == (X0, Y0)
    assert all(isinstance(v, int) for v in inputs.xy0)
    assert set(inputs.mask_planes) == set(exposure.mask.getMaskPlaneDict())
    for name in exposure.mask.getMaskPlaneDict():
        np.testing.assert_array_equal(
            inputs.mask_planes[name],
            (exposure.mask.array & exposure.mask.getPlaneBitMask(name)) != 0,
            err_msg=name,
        )
    sat = inputs.plane(["SAT"])
    assert sat[5, 7] and sat.sum() == 1
    bad = inputs.plane(["BAD"])
    assert bad[10, 3] and bad[10, 4] and bad.sum() == 2
    assert inputs.plane(["CR"]).sum() == 1
    assert inputs.plane(["NOT_A_PLANE"]).sum() == 0


def test_psf_stamp_centred_and_normalised():
    exposure = _make_exposure()
    inputs = afw_exposure_inputs(exposure)
    x, y = X0 + 10.3, Y0 + 20.7
    stamp = inputs.psf(x, y)
    assert stamp.ndim == 2 and stamp.shape[0] == stamp.shape[1] and stamp.shape[0] % 2 == 1
    assert stamp.shape == (21, 21)
    assert stamp.sum() == pytest.approx(1.0, abs=1e-10)
    half = stamp.shape[0] // 2
    assert np.unravel_index(np.argmax(stamp), stamp.shape) == (half, half)
    np.testing.assert_allclose(stamp, stamp[::-1, ::-1], atol=1e-12)
    expected = exposure.getPsf().computeKernelImage(lsst.geom.Point2D(x, y)).array
    np.testing.assert_allclose(stamp, expected)
    # second moment of a GaussianPsf kernel is sigma^2
    yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
    assert np.sum(stamp * xx**2) == pytest.approx(PSF_SIGMA**2, rel=1e-2)


def test_wcs_round_trip():
    exposure = _make_exposure()
    wcs = exposure.getWcs()
    inputs = afw_exposure_inputs(exposure)
    x = X0 + np.array([0.0, 10.5, NX - 1.0, 31.25])
    y = Y0 + np.array([0.0, 3.5, NY - 1.0, 40.0])
    ra, dec = inputs.pixel_to_sky(x, y)
    assert ra.shape == x.shape and dec.shape == x.shape
    for xi, yi, r, d in zip(x, y, ra, dec):
        sp = wcs.pixelToSky(lsst.geom.Point2D(xi, yi))
        assert r == pytest.approx(sp.getRa().asDegrees(), abs=1e-10)
        assert d == pytest.approx(sp.getDec().asDegrees(), abs=1e-10)
    x2, y2 = inputs.sky_to_pixel(ra, dec)
    np.testing.assert_allclose(x2, x, atol=1e-6)
    np.testing.assert_allclose(y2, y, atol=1e-6)
    # the reference pixel maps to crval
    r0, d0 = inputs.pixel_to_sky(X0 + NX / 2, Y0 + NY / 2)
    assert float(r0) == pytest.approx(150.0, abs=1e-9)
    assert float(d0) == pytest.approx(2.0, abs=1e-9)
    # 2-D input keeps its shape; empty input gives empty output
    r2, d2 = inputs.pixel_to_sky(x.reshape(2, 2), y.reshape(2, 2))
    assert r2.shape == (2, 2)
    assert inputs.pixel_to_sky(np.array([]), np.array([]))[0].shape == (0,)


def test_photometric_calibration():
    inputs = afw_exposure_inputs(_make_exposure())
    assert inputs.njy_per_count == pytest.approx(CALIB)


def test_missing_components_are_none():
    inputs = afw_exposure_inputs(_make_exposure(with_components=False))
    assert inputs.psf is None
    assert inputs.pixel_to_sky is None and inputs.sky_to_pixel is None
    assert inputs.njy_per_count is None


def test_unit_is_count():
    assert afw_exposure_inputs(_make_exposure()).unit == "count"


def test_background_list_is_added_back():
    import lsst.afw.math as afwMath

    exposure = _make_exposure()
    background = afwMath.BackgroundList(
        afwMath.makeBackground(exposure.getMaskedImage(), afwMath.BackgroundControl(4, 4))
    )
    inputs = exposure_inputs(exposure, background=background)
    np.testing.assert_array_equal(inputs.image, exposure.image.array + background.getImage().array)
    assert inputs.image.dtype == exposure.image.array.dtype
    empty = exposure_inputs(exposure, background=afwMath.BackgroundList())
    np.testing.assert_array_equal(empty.image, exposure.image.array)


def test_exposure_inputs_dispatches_to_afw():
    exposure = _make_exposure()
    inputs = exposure_inputs(exposure)
    assert inputs.xy0 == (X0, Y0)
    assert inputs.njy_per_count == pytest.approx(CALIB)
    assert callable(inputs.psf)


def test_numpy_to_afw_image():
    arr = np.arange(12, dtype=float).reshape(3, 4)
    img = numpy_to_afw_image(arr, (5, 7))
    assert isinstance(img, afwImage.ImageF)
    assert (img.getX0(), img.getY0()) == (5, 7)
    np.testing.assert_array_equal(img.array, arr.astype(np.float32))


def _table(columns, n=3):
    """An astropy table with every column of ``columns`` (as build_table makes)."""
    rng = np.random.default_rng(7)
    t = Table()
    for i, c in enumerate(columns):
        if c.dtype == "?":
            values = (np.arange(n) + i) % 2 == 0
        elif c.dtype.startswith("i"):
            values = np.arange(n) + 10 * i
        else:
            values = rng.normal(size=n)
        t[c.name] = np.asarray(values).astype(c.dtype)
        t[c.name].unit = c.unit or None
        t[c.name].description = c.doc
    t["x"] = [110.5, 120.25, 130.0]
    t["y"] = [210.0, 220.5, 230.75]
    t["psfInstFlux"] = [1000.0, 2000.0, 3000.0]
    t["psfInstFluxErr"] = [10.0, 20.0, 30.0]
    t["coord_ra"] = [150.0, 150.001, 359.9]
    t["coord_dec"] = [2.0, -2.0, 45.0]
    t["psfFlux_flag"] = [False, True, False]
    return t


def test_schema_fields_and_aliases():
    schema = afw_schema(source_columns())
    names = set(schema.getNames())
    for c in source_columns():
        if c.afw_name is not None:
            assert c.afw_name in names
    aliases = schema.getAliasMap()
    for alias, target in SLOT_ALIASES.items():
        assert aliases.get(alias) == target
    item = schema.find("crowdsource_centroid_x")
    assert item.field.getUnits() == "pixel"
    assert item.field.getDoc()
    assert schema.find("crowdsource_centroid_xErr").key.getTypeString() == "F"
    assert schema.find("crowdsource_psfFlux_instFlux").key.getTypeString() == "D"
    assert schema.find("crowdsource_psfFlux_flag").key.getTypeString() == "Flag"
    assert schema.find("crowdsource_passFound").key.getTypeString() == "I"


def test_source_catalog_from_table():
    table = _table(source_columns())
    table["sourceId"] = [11, 12, 13]
    cat = source_catalog_from_table(table, source_columns())
    assert isinstance(cat, afwTable.SourceCatalog)
    assert len(cat) == 3
    assert cat.isContiguous()
    np.testing.assert_array_equal(cat["id"], [11, 12, 13])
    np.testing.assert_array_equal(cat["parent"], [0, 0, 0])
    np.testing.assert_allclose(cat.getX(), table["x"])
    np.testing.assert_allclose(cat.getY(), table["y"])
    assert cat[0].getPsfInstFlux() == pytest.approx(1000.0)
    assert cat[2].getPsfInstFluxErr() == pytest.approx(30.0)
    assert cat[0].getX() == pytest.approx(110.5)
    assert [r.getPsfFluxFlag() for r in cat] == [False, True, False]
    assert [r.getCentroidFlag() for r in cat] == list(table["centroid_flag"])
    err = cat[1].getCentroidErr()
    assert np.sqrt(err[0, 0]) == pytest.approx(table["xErr"][1], rel=1e-6)
    # coord fields are afw Angles, stored in radians
    np.testing.assert_allclose(cat["coord_ra"], np.deg2rad(table["coord_ra"]))
    np.testing.assert_allclose(cat["coord_dec"], np.deg2rad(table["coord_dec"]))
    assert cat[2].getCoord().getRa().asDegrees() == pytest.approx(359.9)
    assert cat[1].getCoord().getDec().asDegrees() == pytest.approx(-2.0)
    for c in source_columns():
        if c.afw_name is None or c.afw_name in ("id", "coord_ra", "coord_dec"):
            continue
        if c.dtype == "?":
            assert list(cat[c.afw_name]) == list(table[c.name]), c.name
        else:
            np.testing.assert_allclose(cat[c.afw_name], table[c.name], rtol=1e-6, err_msg=c.name)
    assert cat.getCentroidSlot().getMeasKey().isValid()
    assert cat.getPsfFluxSlot().getErrKey().isValid()
    assert cat.getPsfFluxSlot().getFlagKey().isValid()
    astropy_view = cat.asAstropy()
    assert len(astropy_view) == 3
    assert "crowdsource_psfFlux_instFlux" in astropy_view.colnames
    assert str(astropy_view["crowdsource_centroid_x"].unit) == "pix"
    assert list(astropy_view["crowdsource_psfFlux_flag"]) == [False, True, False]


def test_catalog_fits_round_trip_keeps_slots(tmp_path):
    table = _table(source_columns())
    cat = source_catalog_from_table(table, source_columns())
    path = str(tmp_path / "src.fits")
    cat.writeFits(path)
    back = afwTable.SourceCatalog.readFits(path)
    np.testing.assert_allclose(back.getX(), table["x"])
    assert back[0].getPsfInstFlux() == pytest.approx(1000.0)


def test_forced_catalog_ids():
    columns = forced_source_columns()
    table = _table(columns)
    table["forcedSourceId"] = [101, 102, 103]
    table["objectId"] = [7, 8, 9]
    cat = source_catalog_from_table(table, columns)
    np.testing.assert_array_equal(cat["id"], [101, 102, 103])
    np.testing.assert_array_equal(cat["objectId"], [7, 8, 9])
    np.testing.assert_allclose(cat.getX(), table["x"])
    # forced catalogues have no centroid flag: the slot has no flag key
    assert not cat.getCentroidSlot().getFlagKey().isValid()


def test_empty_table_gives_empty_catalog_with_schema():
    table = _table(source_columns())[:0]
    cat = source_catalog_from_table(table, source_columns())
    assert len(cat) == 0
    assert "crowdsource_psfFlux_instFlux" in cat.schema.getNames()


def test_missing_column_is_reported():
    table = _table(source_columns())
    del table["sky"]
    with pytest.raises(ValueError, match="sky"):
        source_catalog_from_table(table, source_columns())
