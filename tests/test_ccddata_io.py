"""Tests of the astropy exposure path: CCDData conventions, afw-layout FITS I/O, butler plumbing."""

from __future__ import annotations

import os
from pathlib import Path

import astropy.units as u
import lsst.pipe.base as pipeBase
import lsst.pipe.base.connectionTypes as cT
import numpy as np
import pytest
from astropy.io import fits
from astropy.nddata import CCDData, StdDevUncertainty, VarianceUncertainty
from astropy.wcs import WCS
from lsst.pipe.base.simple_pipeline_executor import SimplePipelineExecutor
from lsst.sphgeom import LonLat, UnitVector3d

from lsst.meas.crowdsource.io import butler as butler_utils
from lsst.meas.crowdsource.io.calexp_fits import (
    AB_REFERENCE_FLUX_NJY,
    PSF_EXTNAME,
    read_calexp_fits,
    write_calexp_fits,
)
from lsst.meas.crowdsource.io.ccddata import (
    BitMaskCCDData,
    get_bit_mask,
    get_photcalib,
    get_xy0,
    make_ccddata,
    mask_planes,
    set_xy0,
    validate_ccddata,
)
from lsst.meas.crowdsource.io.planes import DEFAULT_MASK_PLANES
from lsst.meas.crowdsource.testing.butler import register_visit

SHAPE = (23, 31)  # (ny, nx): deliberately not square


def _tan_wcs() -> WCS:
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [270.25, -29.5]
    wcs.wcs.crpix = [12.5, 9.0]
    wcs.wcs.cd = [[-5.5e-5, 1.0e-6], [2.0e-6, 5.5e-5]]
    return wcs


def _psf(size: int = 7) -> np.ndarray:
    y, x = np.mgrid[:size, :size] - size // 2
    psf = np.exp(-(x**2 + y**2) / (2 * 1.3**2))
    return psf / psf.sum()


def _sample(seed: int = 7, **kwargs) -> CCDData:
    rng = np.random.default_rng(seed)
    image = rng.normal(100.0, 5.0, SHAPE).astype(np.float32)
    variance = rng.uniform(20.0, 30.0, SHAPE).astype(np.float32)
    mask = np.zeros(SHAPE, dtype=np.int32)
    mask[3, 4] = 1 << DEFAULT_MASK_PLANES["SAT"]
    mask[5, :] |= 1 << DEFAULT_MASK_PLANES["NO_DATA"]
    mask[:, 7] |= 1 << DEFAULT_MASK_PLANES["BAD"]
    defaults = dict(
        mask=mask,
        wcs=_tan_wcs(),
        psf=_psf(),
        xy0=(1017, -42),
        photcalib=57.25,
        meta={"EXPTIME": 30.0, "DETNAME": "R22_S11", "LSST RUN": "sim"},
        unit="electron",
    )
    defaults.update(kwargs)
    return make_ccddata(image, variance, **defaults)


# ---------------------------------------------------------------------------
# Round trip and layout
# ---------------------------------------------------------------------------


def test_round_trip_preserves_everything(tmp_path):
    ccd = _sample()
    path = tmp_path / "calexp.fits"
    write_calexp_fits(ccd, path)
    back = read_calexp_fits(path)

    assert isinstance(back, CCDData) and isinstance(back, BitMaskCCDData)
    np.testing.assert_array_equal(back.data, ccd.data)
    assert back.data.dtype == np.float32
    assert isinstance(back.uncertainty, VarianceUncertainty)
    np.testing.assert_array_equal(back.uncertainty.array, ccd.uncertainty.array)
    assert back.mask.dtype == np.int32
    np.testing.assert_array_equal(back.mask, ccd.mask)
    assert mask_planes(back) == DEFAULT_MASK_PLANES
    assert get_xy0(back) == (1017, -42)
    assert get_photcalib(back) == 57.25
    np.testing.assert_array_equal(back.psf, ccd.psf)
    assert back.unit == u.electron
    assert back.meta["EXPTIME"] == 30.0
    assert back.meta["DETNAME"] == "R22_S11"
    assert back.meta["LSST RUN"] == "sim"
    # The WCS maps the same array pixels to the same sky positions.
    x, y = np.meshgrid(np.arange(0, SHAPE[1], 5), np.arange(0, SHAPE[0], 5))
    ra0, dec0 = ccd.wcs.pixel_to_world_values(x, y)
    ra1, dec1 = back.wcs.pixel_to_world_values(x, y)
    np.testing.assert_allclose(ra1, ra0, rtol=0, atol=1e-10)
    np.testing.assert_allclose(dec1, dec0, rtol=0, atol=1e-10)


def test_round_trip_minimal_exposure(tmp_path):
    image = np.arange(12, dtype=np.float32).reshape(3, 4)
    ccd = make_ccddata(image, np.ones_like(image))
    path = tmp_path / "minimal.fits"
    write_calexp_fits(ccd, path)
    back = read_calexp_fits(path)
    assert back.wcs is None
    assert back.psf is None
    assert get_photcalib(back) is None
    assert get_xy0(back) == (0, 0)
    assert back.unit == u.adu
    np.testing.assert_array_equal(back.mask, np.zeros((3, 4), np.int32))
    np.testing.assert_array_equal(back.data, image)
    with fits.open(path) as hdul:
        assert PSF_EXTNAME not in [hdu.name for hdu in hdul]
        assert "FLUXMAG0" not in hdul[0].header


def test_written_file_has_afw_layout(tmp_path):
    ccd = _sample()
    path = tmp_path / "calexp.fits"
    write_calexp_fits(ccd, path)
    with fits.open(path) as hdul:
        assert [hdu.name for hdu in hdul] == ["PRIMARY", "IMAGE", "MASK", "VARIANCE", PSF_EXTNAME]
        assert hdul[0].data is None
        assert [hdul[name].header["BITPIX"] for name in ("IMAGE", "MASK", "VARIANCE")] == [
            -32,
            32,
            -32,
        ]
        for name in ("IMAGE", "MASK", "VARIANCE"):
            header = hdul[name].header
            assert header["EXTTYPE"] == name
            assert header["INHERIT"] is True
            # afw's xy0 encoding: trivial alternate WCS 'A' plus LTV for ds9.
            assert header["CTYPE1A"] == "LINEAR" and header["CTYPE2A"] == "LINEAR"
            assert header["CRPIX1A"] == 1.0 and header["CRPIX2A"] == 1.0
            assert (header["CRVAL1A"], header["CRVAL2A"]) == (1017.0, -42.0)
            assert (header["LTV1"], header["LTV2"]) == (-1017.0, 42.0)
            assert header["CTYPE1"] == "RA---TAN"
        mask_header = hdul["MASK"].header
        found = {key[3:]: mask_header[key] for key in mask_header if key.startswith("MP_")}
        assert found == DEFAULT_MASK_PLANES
        assert mask_header["MP_BAD"] == 0 and mask_header["MP_NO_DATA"] == 8
        assert hdul["IMAGE"].header["BUNIT"] == "electron"
        assert hdul["VARIANCE"].header["BUNIT"] == "electron**2"
        primary = hdul[0].header
        assert primary["PHOTCALIB"] == 57.25
        # afw (EXPINFO_V absent = version 0) turns FLUXMAG0 into its PhotoCalib.
        assert primary["FLUXMAG0"] == pytest.approx(AB_REFERENCE_FLUX_NJY / 57.25, rel=1e-12)
        assert "AR_HDU" not in primary and "EXPINFO_V" not in primary
        assert primary["DETNAME"] == "R22_S11"
        np.testing.assert_array_equal(hdul["MASK"].data, ccd.mask)
        np.testing.assert_allclose(hdul[PSF_EXTNAME].data.sum(), 1.0)


def _afw_like_file(path: Path) -> None:
    """Write, with astropy only, a file shaped like an afw v3 calexp."""
    primary = fits.PrimaryHDU()
    primary.header["HIERARCH EXPINFO_V"] = 3
    primary.header["AR_HDU"] = 5
    primary.header["HIERARCH ARCHIVE_ID_PHOTOCALIB"] = 2
    primary.header["HIERARCH PHOTOCALIB_ID"] = 2
    primary.header["HIERARCH ARCHIVE_ID_PSF"] = 1
    primary.header["PSF_ID"] = 1
    primary.header["EXPTIME"] = 15.0
    primary.header["FILTER"] = "r"
    image_header = fits.Header()
    image_header["INHERIT"] = True
    image_header["EXTTYPE"] = "IMAGE"
    image_header.update(_tan_wcs().to_header())
    for key, value in {
        "CTYPE1A": "LINEAR",
        "CTYPE2A": "LINEAR",
        "CRPIX1A": 1.0,
        "CRPIX2A": 1.0,
        "CRVAL1A": 200.0,
        "CRVAL2A": 300.0,
        "CUNIT1A": "PIXEL",
        "CUNIT2A": "PIXEL",
        "LTV1": -200.0,
        "LTV2": -300.0,
    }.items():
        image_header[key] = value
    mask_header = image_header.copy()
    mask_header["EXTTYPE"] = "MASK"
    for name, bit in {"BAD": 0, "SAT": 1, "CROSSTALK": 9, "STREAK": 10}.items():
        mask_header[("HIERARCH " if len(name) > 5 else "") + "MP_" + name] = bit
    variance_header = image_header.copy()
    variance_header["EXTTYPE"] = "VARIANCE"
    image = np.arange(SHAPE[0] * SHAPE[1], dtype=">f4").reshape(SHAPE)
    mask = np.zeros(SHAPE, dtype=">i4")
    mask[0, 0] = 1 << 10
    variance = np.full(SHAPE, 4.0, dtype=">f4")
    index = fits.BinTableHDU.from_columns(
        [
            fits.Column("id", "J", array=[1, 2]),
            fits.Column("cat.archive", "J", array=[1, 2]),
            fits.Column("cat.persistable", "J", array=[0, 0]),
            fits.Column("row0", "J", array=[0, 0]),
            fits.Column("nrows", "J", array=[1, 1]),
            fits.Column("name", "64A", array=["SomePsf", "PhotoCalib"]),
            fits.Column("module", "64A", array=["lsst.x", "lsst.afw.image"]),
        ],
        name="ARCHIVE_INDEX",
    )
    index.header["EXTTYPE"] = "ARCHIVE_INDEX"
    index.header["AR_CATN"] = 0
    psf_table = fits.BinTableHDU.from_columns(
        [fits.Column("sigma", "D", array=[1.5])], name="SomePsf"
    )
    psf_table.header["EXTTYPE"] = "ARCHIVE_DATA"
    psf_table.header["AR_CATN"] = 1
    calib = fits.BinTableHDU.from_columns(
        [
            fits.Column("calibrationMean", "D", array=[0.875]),
            fits.Column("calibrationErr", "D", array=[0.01]),
            fits.Column("field", "J", array=[0]),
            fits.Column("version", "J", array=[1]),
        ],
        name="PhotoCalib",
    )
    calib.header["EXTTYPE"] = "ARCHIVE_DATA"
    calib.header["AR_CATN"] = 2
    fits.HDUList(
        [
            primary,
            fits.ImageHDU(image, image_header, name="IMAGE"),
            fits.ImageHDU(mask, mask_header, name="MASK"),
            fits.ImageHDU(variance, variance_header, name="VARIANCE"),
            index,
            psf_table,
            calib,
        ]
    ).writeto(path)


def test_reads_afw_style_calexp(tmp_path):
    path = tmp_path / "afw.fits"
    _afw_like_file(path)
    ccd = read_calexp_fits(path)
    assert get_xy0(ccd) == (200, 300)
    assert mask_planes(ccd) == {"BAD": 0, "SAT": 1, "CROSSTALK": 9, "STREAK": 10}
    assert ccd.mask.dtype == np.int32 and ccd.mask.dtype.isnative
    assert ccd.mask[0, 0] == 1 << 10
    assert ccd.data.dtype.isnative and ccd.data[1, 0] == SHAPE[1]
    assert get_photcalib(ccd) == 0.875  # from the archived PhotoCalib
    assert ccd.wcs is not None and ccd.wcs.wcs.ctype[0] == "RA---TAN"
    assert ccd.meta["EXPTIME"] == 15.0
    # Archive bookkeeping is dropped: it would point at HDUs we do not write.
    for key in (
        "AR_HDU",
        "EXPINFO_V",
        "ARCHIVE_ID_PHOTOCALIB",
        "PHOTOCALIB_ID",
        "PSF_ID",
        "ARCHIVE_ID_PSF",
    ):
        assert key not in ccd.meta
    out = tmp_path / "rewritten.fits"
    write_calexp_fits(ccd, out)
    with fits.open(out) as hdul:
        assert len(hdul) == 4
        assert "AR_HDU" not in hdul[0].header
        assert hdul[0].header["FLUXMAG0"] == pytest.approx(AB_REFERENCE_FLUX_NJY / 0.875)


def test_fluxmag0_only_file_gives_photcalib(tmp_path):
    ccd = _sample(photcalib=None)
    path = tmp_path / "c.fits"
    write_calexp_fits(ccd, path)
    with fits.open(path, mode="update") as hdul:
        hdul[0].header["FLUXMAG0"] = 1.0e11
    back = read_calexp_fits(path)
    assert get_photcalib(back) == pytest.approx(AB_REFERENCE_FLUX_NJY / 1.0e11)
    assert "FLUXMAG0" not in back.meta


def test_stddev_uncertainty_is_written_as_variance(tmp_path):
    image = np.ones((5, 6), np.float32)
    ccd = CCDData(image, unit="adu", uncertainty=StdDevUncertainty(np.full((5, 6), 3.0)))
    path = tmp_path / "c.fits"
    write_calexp_fits(ccd, path)
    back = read_calexp_fits(path)
    np.testing.assert_array_equal(back.uncertainty.array, np.full((5, 6), 9.0, np.float32))
    assert mask_planes(back) == {}


# ---------------------------------------------------------------------------
# Accessors and the CCDData subclass
# ---------------------------------------------------------------------------


def test_xy0_helpers():
    ccd = _sample(xy0=(0, 0))
    assert get_xy0(ccd) == (0, 0)
    set_xy0(ccd, 12, -3)
    assert get_xy0(ccd) == (12, -3)
    assert ccd.meta["LTV1"] == -12.0 and ccd.meta["LTV2"] == 3.0
    with pytest.raises(ValueError, match="x0 must be an integer"):
        set_xy0(ccd, 1.5, 0)
    plain = CCDData(np.zeros((2, 2)), unit="adu")
    assert get_xy0(plain) == (0, 0)


def test_bit_mask_survives_ccddata_operations():
    ccd = _sample()
    bits = ccd.mask.copy()
    assert bits.max() >= 1 << 8  # NO_DATA is above uint8/bool range
    assert ccd[2:9, 1:6].mask.dtype == np.int32
    np.testing.assert_array_equal(ccd[2:9, 1:6].mask, bits[2:9, 1:6])
    np.testing.assert_array_equal(ccd.copy().mask, bits)
    other = make_ccddata(
        np.zeros(SHAPE, np.float32), np.ones(SHAPE), mask=np.full(SHAPE, 1 << 4), unit="electron"
    )
    total = _sample(psf=None).add(other)  # astropy arithmetic does not carry a PSF
    assert isinstance(total, BitMaskCCDData)
    np.testing.assert_array_equal(total.mask, bits | (1 << 4))
    assert get_bit_mask(ccd) is ccd.mask


def test_plain_ccddata_bool_mask_is_refused(tmp_path):
    # astropy turns the mask of a plain CCDData into booleans: refuse it
    # rather than write a mask whose planes are lost.
    ccd = CCDData(
        np.zeros((4, 4), np.float32),
        unit="adu",
        uncertainty=VarianceUncertainty(np.ones((4, 4))),
        mask=np.full((4, 4), 4, dtype=np.int32),
    )
    assert ccd.mask.dtype == np.bool_
    with pytest.raises(TypeError, match="mask is boolean"):
        get_bit_mask(ccd)
    with pytest.raises(TypeError, match="mask is boolean"):
        validate_ccddata(ccd)
    with pytest.raises(TypeError, match="mask is boolean"):
        write_calexp_fits(ccd, tmp_path / "c.fits")
    assert not (tmp_path / "c.fits").exists()


# ---------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (
            dict(variance=np.ones((3, 3))),
            ValueError,
            r"variance shape \(3, 3\) does not match image shape",
        ),
        (dict(mask=np.zeros((3, 3), int)), ValueError, r"mask shape \(3, 3\) does not match"),
        (dict(mask=np.zeros(SHAPE, bool)), TypeError, "mask is boolean"),
        (dict(mask=np.zeros(SHAPE, float)), TypeError, "mask must be an integer array"),
        (dict(mask=np.full(SHAPE, 1 << 20)), ValueError, "belong to no declared mask plane"),
        (dict(psf=np.ones((6, 7))), ValueError, "odd dimensions"),
        (dict(psf=np.ones(7)), ValueError, "PSF stamp must be 2-D"),
        (dict(psf=np.full((3, 3), np.nan)), ValueError, "NaN or inf"),
        (dict(mask_planes={"BAD": 0, "SAT": 0}), ValueError, "share bit 0"),
        (dict(mask_planes={"BAD": 32}), ValueError, r"must be in \[0, 31\]"),
        (dict(xy0=(0.5, 0)), ValueError, "x0 must be an integer"),
        (dict(photcalib=-1.0), ValueError, "must be finite and > 0"),
        (dict(meta={"PHOTCALIB": float("nan")}), ValueError, "must be finite and > 0"),
        (dict(meta={"KEYS": [1, 2]}), TypeError, r"meta\['KEYS'\] has type list"),
        (dict(wcs="not a wcs"), TypeError, "astropy.wcs.WCS"),
        (dict(variance=-np.ones(SHAPE)), ValueError, "negative pixel"),
    ],
)
def test_make_ccddata_rejects_bad_input(kwargs, error, match):
    args = dict(image=np.zeros(SHAPE, np.float32), variance=np.ones(SHAPE, np.float32))
    args.update(kwargs)
    with pytest.raises(error, match=match):
        make_ccddata(**args)


def test_make_ccddata_rejects_non_2d_image():
    with pytest.raises(ValueError, match=r"image must be 2-D; got shape \(5,\)"):
        make_ccddata(np.zeros(5), np.zeros(5))


def test_write_rejects_missing_variance(tmp_path):
    ccd = CCDData(np.zeros((3, 3), np.float32), unit="adu")
    with pytest.raises(ValueError, match="no uncertainty"):
        write_calexp_fits(ccd, tmp_path / "c.fits")
    assert list(tmp_path.iterdir()) == []


def test_write_rejects_psf_changed_to_even(tmp_path):
    ccd = _sample()
    ccd.psf = np.ones((4, 4))
    with pytest.raises(ValueError, match="odd dimensions"):
        write_calexp_fits(ccd, tmp_path / "c.fits")
    assert list(tmp_path.iterdir()) == []


def test_read_missing_image_hdu(tmp_path):
    path = tmp_path / "plain.fits"
    fits.HDUList(
        [fits.PrimaryHDU(), fits.ImageHDU(np.zeros((3, 3), np.float32), name="SCI")]
    ).writeto(path)
    with pytest.raises(
        ValueError, match=r"no HDU with EXTNAME 'IMAGE' \(found \['PRIMARY', 'SCI'\]\)"
    ):
        read_calexp_fits(path)


def test_read_plane_shape_mismatch(tmp_path):
    path = tmp_path / "bad.fits"
    write_calexp_fits(_sample(), path)
    with fits.open(path, mode="update") as hdul:
        hdul["VARIANCE"].data = np.zeros((4, 4), np.float32)
    with pytest.raises(ValueError, match="image planes differ in shape"):
        read_calexp_fits(path)


def test_read_even_psf_hdu(tmp_path):
    path = tmp_path / "bad_psf.fits"
    write_calexp_fits(_sample(), path)
    with fits.open(path, mode="update") as hdul:
        hdul[PSF_EXTNAME].data = np.ones((4, 4))
    with pytest.raises(ValueError, match=f"{PSF_EXTNAME}.*odd dimensions"):
        read_calexp_fits(path)


def test_read_conflicting_mask_planes(tmp_path):
    path = tmp_path / "bad_mask.fits"
    write_calexp_fits(_sample(), path)
    with fits.open(path, mode="update") as hdul:
        hdul["MASK"].header["MP_CR"] = 0  # same bit as MP_BAD
    with pytest.raises(ValueError, match="share bit 0"):
        read_calexp_fits(path)


# ---------------------------------------------------------------------------
# Atomic writes
# ---------------------------------------------------------------------------


def test_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    original = fits.HDUList.writeto

    def write_then_fail(self, fileobj, *args, **kwargs):
        original(self, fileobj, *args, **kwargs)  # the temporary file now has content
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(fits.HDUList, "writeto", write_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_calexp_fits(_sample(), tmp_path / "calexp.fits")
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_old_file(tmp_path, monkeypatch):
    path = tmp_path / "calexp.fits"
    write_calexp_fits(_sample(seed=1), path)
    before = path.read_bytes()

    def fail(self, fileobj, *args, **kwargs):
        fileobj.write(b"SIMPLE  = half a file")
        raise OSError("interrupted (simulated)")

    monkeypatch.setattr(fits.HDUList, "writeto", fail)
    with pytest.raises(OSError, match="interrupted"):
        write_calexp_fits(_sample(seed=2), path, overwrite=True)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["calexp.fits"]


def test_overwrite_flag(tmp_path):
    path = tmp_path / "calexp.fits"
    write_calexp_fits(_sample(seed=1), path)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_calexp_fits(_sample(seed=2), path)
    assert path.read_bytes() == before
    write_calexp_fits(_sample(seed=2), path, overwrite=True)
    np.testing.assert_array_equal(read_calexp_fits(path).data, _sample(seed=2).data)
    assert [p.name for p in tmp_path.iterdir()] == ["calexp.fits"]
    mode = os.stat(path).st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # not mkstemp's 0600


# ---------------------------------------------------------------------------
# Butler
# ---------------------------------------------------------------------------


def test_config_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("MEAS_CROWDSOURCE_DIR", raising=False)
    path = butler_utils.config_dir()
    assert (path / "butler" / "seed.yaml").is_file()
    assert butler_utils.seed_config_path() == path / "butler" / "seed.yaml"
    (tmp_path / "config").mkdir()
    monkeypatch.setenv("MEAS_CROWDSOURCE_DIR", str(tmp_path))
    assert butler_utils.config_dir() == tmp_path / "config"
    with pytest.raises(FileNotFoundError, match="seed.yaml"):
        butler_utils.seed_config_path()
    monkeypatch.setenv("MEAS_CROWDSOURCE_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="MEAS_CROWDSOURCE_DIR"):
        butler_utils.config_dir()


@pytest.fixture
def repo(tmp_path):
    butler = butler_utils.make_repo(tmp_path / "repo")
    yield butler
    butler.close()


def test_make_repo_refuses_existing(tmp_path, repo):
    with pytest.raises(FileExistsError, match="overwrite=True"):
        butler_utils.make_repo(tmp_path / "repo")
    fresh = butler_utils.make_repo(tmp_path / "repo", overwrite=True)
    try:
        assert "CrowdsourceCCDData" in fresh.storageClasses
    finally:
        fresh.close()


def test_register_visit_regions_and_idempotence(repo):
    wcs = register_visit(
        repo, "SimCam", visit=5, detectors=[0, 1, 2, 3], ra=270.0, dec=-30.0, detector_size=(40, 30)
    )
    # Same call again: no error, nothing duplicated.
    register_visit(
        repo, "SimCam", visit=5, detectors=[0, 1, 2, 3], ra=270.0, dec=-30.0, detector_size=(40, 30)
    )
    records = list(
        repo.registry.queryDimensionRecords("visit_detector_region", instrument="SimCam", visit=5)
    )
    assert sorted(r.detector for r in records) == [0, 1, 2, 3]
    (visit,) = repo.registry.queryDimensionRecords("visit", instrument="SimCam", visit=5)
    assert visit.physical_filter == "SimCam-r"
    assert visit.day_obs == 20250101
    for record in records:
        ra, dec = wcs[record.detector].pixel_to_world_values(19.5, 14.5)
        centre = UnitVector3d(LonLat.fromDegrees(float(ra), float(dec)))
        assert record.region.contains(centre)
        assert visit.region.contains(centre)
        # Each detector contains only its own centre (edge-to-edge layout).
        others = [r for r in records if r.detector != record.detector]
        assert not any(o.region.contains(centre) for o in others)
    # The whole layout is centred on the boresight.
    assert visit.region.contains(UnitVector3d(LonLat.fromDegrees(270.0, -30.0)))
    with pytest.raises(ValueError, match="day_obs"):
        register_visit(repo, "SimCam", visit=6, day_obs=20251399)


def test_butler_round_trip(repo):
    size = (SHAPE[1], SHAPE[0])
    wcs = register_visit(repo, "SimCam", visit=7, detectors=[3], detector_size=size)
    ccd = _sample(wcs=wcs[3])
    ref = butler_utils.put_calexp(repo, ccd, "sim/calexp", "SimCam", 7, 3)
    assert ref.datasetType.storageClass_name == "CrowdsourceCCDData"
    assert repo.getURI(ref).getExtension() == ".fits"
    back = repo.get("calexp", instrument="SimCam", visit=7, detector=3, collections="sim/calexp")
    np.testing.assert_array_equal(back.data, ccd.data)
    np.testing.assert_array_equal(back.mask, ccd.mask)
    np.testing.assert_array_equal(back.uncertainty.array, ccd.uncertainty.array)
    np.testing.assert_array_equal(back.psf, ccd.psf)
    assert get_xy0(back) == get_xy0(ccd)
    assert get_photcalib(back) == get_photcalib(ccd)
    # The stored file is the afw layout.
    with fits.open(repo.getURI(ref).ospath) as hdul:
        assert [hdu.name for hdu in hdul][:4] == ["PRIMARY", "IMAGE", "MASK", "VARIANCE"]
    # Read-only components.
    data_id = dict(instrument="SimCam", visit=7, detector=3)
    variance = repo.get("calexp.variance", data_id, collections="sim/calexp")
    np.testing.assert_array_equal(variance, ccd.uncertainty.array)
    np.testing.assert_array_equal(
        repo.get("calexp.mask", data_id, collections="sim/calexp"), ccd.mask
    )
    assert repo.get("calexp.metadata", data_id, collections="sim/calexp")["MP_SAT"] == 1
    assert isinstance(repo.get("calexp.wcs", data_id, collections="sim/calexp"), WCS)


# A minimal PipelineTask, to check that a quantum graph sees the datasets and
# that an executed quantum reads them through the formatter.
class _ReadCalexpConnections(
    pipeBase.PipelineTaskConnections, dimensions=("instrument", "visit", "detector")
):
    calexp = cT.Input(
        doc="Exposure",
        name="calexp",
        storageClass="CrowdsourceCCDData",
        dimensions=("instrument", "visit", "detector"),
    )
    summary = cT.Output(
        doc="Summary of the exposure",
        name="calexpSummary",
        storageClass="StructuredDataDict",
        dimensions=("instrument", "visit", "detector"),
    )


class _ReadCalexpConfig(pipeBase.PipelineTaskConfig, pipelineConnections=_ReadCalexpConnections):
    pass


class _ReadCalexpTask(pipeBase.PipelineTask):
    ConfigClass = _ReadCalexpConfig
    _DefaultName = "readCalexp"

    def run(self, calexp):
        return pipeBase.Struct(
            summary={
                "sum": float(np.sum(calexp.data, dtype=np.float64)),
                "n_no_data": int(
                    np.count_nonzero(calexp.mask & (1 << mask_planes(calexp)["NO_DATA"]))
                ),
                "xy0": list(get_xy0(calexp)),
            }
        )


def test_quantum_graph_sees_and_reads_calexps(repo):
    size = (SHAPE[1], SHAPE[0])
    wcs = register_visit(repo, "SimCam", visit=9, detectors=[0, 1], detector_size=size)
    # Another visit without a calexp: must not produce a quantum.
    register_visit(repo, "SimCam", visit=10, detectors=[0])
    inputs = {}
    for det in (0, 1):
        inputs[det] = _sample(seed=det, wcs=wcs[det])
        butler_utils.put_calexp(repo, inputs[det], "sim/calexp", "SimCam", 9, det)
    butler = repo.clone(collections=["sim/calexp"], run="sim/out")
    executor = SimplePipelineExecutor.from_task_class(
        _ReadCalexpTask, butler=butler, output_run="sim/out"
    )
    graph = executor.quantum_graph
    assert len(graph) == 2
    quanta = executor.run(register_dataset_types=True, save_versions=False)
    assert len(quanta) == 2
    for det, ccd in inputs.items():
        summary = butler.get(
            "calexpSummary", instrument="SimCam", visit=9, detector=det, collections="sim/out"
        )
        assert summary["sum"] == pytest.approx(float(np.sum(ccd.data, dtype=np.float64)))
        assert summary["n_no_data"] == SHAPE[1]
        assert summary["xy0"] == [1017, -42]
