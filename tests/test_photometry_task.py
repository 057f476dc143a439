"""CrowdsourcePhotometryTask on the pure-Python (astropy CCDData) path.

A small simulated field (Moffat PSF, explicit stars so that every source is
known) is wrapped with `make_ccddata` -- mask planes, a WCS, a photometric
calibration, a PSF stamp, a non-zero PARENT origin -- and run through
``task.run``.  Checked: the output Struct and catalogue schema, positions,
fluxes, sky coordinates and IDs against the truth, pixel flags, task
metadata, the empty-field and missing-WCS/calibration cases, clear errors
for bad input and bad configuration, and how the config shapes the
connections.
"""

from __future__ import annotations

import dataclasses
import json
import logging

import lsst.pex.config as pexConfig
import numpy as np
import pytest
from astropy.nddata import CCDData
from astropy.table import Table
from astropy.wcs import WCS
from scipy.spatial import cKDTree

from lsst.meas.crowdsource import (
    CrowdsourcePhotometryConfig,
    CrowdsourcePhotometryConnections,
    CrowdsourcePhotometryTask,
)
from lsst.meas.crowdsource.catalog import source_columns
from lsst.meas.crowdsource.engine import InputError
from lsst.meas.crowdsource.engine.psf_io import psf_from_dict
from lsst.meas.crowdsource.ids import unpacker_from_config
from lsst.meas.crowdsource.io.ccddata import make_ccddata
from lsst.meas.crowdsource.io.outputs import afw_available
from lsst.meas.crowdsource.testing.simulate import simulate_field

SHAPE = (128, 128)  # rows, columns
XY0 = (100, 200)  # PARENT origin
SKY = 1000.0
SATURATION = 30000.0
PHOTCALIB = 2.5  # nJy per count
VISIT, DETECTOR = 12, 3
BAD_COLUMN = 86  # array column of the bad column

# Array (column, row) positions; PARENT positions add XY0.
CLEAN = [
    (20.2, 20.7),
    (20.6, 64.1),
    (20.4, 107.8),
    (64.3, 20.5),
    (64.8, 107.3),
    (107.5, 20.2),
    (107.9, 64.6),
    (107.1, 107.4),
]
CLEAN_FLUX = [2e4, 4e4, 8e4, 3e4, 6e4, 2.5e4, 5e4, 1e5]
SATURATED = (42.4, 64.3)  # a bright star whose core saturates (and bleeds along its column)
NEAR_BAD = (BAD_COLUMN + 2.4, 40.6)  # a star whose PSF core covers the bad column
NO_DATA_COLUMNS = 18  # test_edge_flag_is_meas_base_s: columns 0-17 have no data


def _config(**overrides) -> CrowdsourcePhotometryConfig:
    """A config for the no-afw path (what pipelines/CrowdsourcePhotometryNoAfw.yaml sets)."""
    config = CrowdsourcePhotometryConfig()
    config.setNoAfwStorage()
    for name, value in overrides.items():
        setattr(config, name, value)
    return config


def _wcs() -> WCS:
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [270.0, -30.0]
    w.wcs.crpix = [64.5, 64.5]
    w.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    return w


@pytest.fixture(scope="module")
def field():
    stars = CLEAN + [SATURATED, NEAR_BAD]
    fluxes = CLEAN_FLUX + [3e6, 5e4]
    return simulate_field(
        SHAPE,
        density=0.0,
        seed=7,
        psf="moffat",
        fwhm=3.5,
        psf_variation=0.0,
        ellipticity=0.0,
        sky=SKY,
        saturation=SATURATION,
        n_saturated=0,
        bad_columns=[BAD_COLUMN + XY0[0]],
        xy0=XY0,
        stars={
            "x": [x + XY0[0] for x, _ in stars],
            "y": [y + XY0[1] for _, y in stars],
            "flux": fluxes,
        },
    )


def _ccd(field, **kwargs):
    args = {
        "mask": field.mask,
        "mask_planes": field.mask_planes,
        "psf": field.psf_stamp,
        "xy0": field.xy0,
    }
    args.update(kwargs)
    return make_ccddata(field.image, field.variance, **args)


@pytest.fixture(scope="module")
def run(field):
    """The task run on the full field (WCS, calibration, data ID)."""
    task = CrowdsourcePhotometryTask(config=_config())
    result = task.run(_ccd(field, wcs=_wcs(), photcalib=PHOTCALIB), visit=VISIT, detector=DETECTOR)
    return task, result


def _match(table, field, index):
    """Row of ``table`` nearest to truth star ``index`` and its distance."""
    truth = field.truth[index]
    d, j = cKDTree(np.column_stack([table["x"], table["y"]])).query([truth["x"], truth["y"]])
    return table[j], d


@pytest.fixture(scope="module")
def noise_ccd():
    rng = np.random.default_rng(5)
    image = rng.normal(SKY, np.sqrt(SKY), (64, 64)).astype(np.float32)
    return make_ccddata(image, np.full(image.shape, SKY, np.float32))


# --- the output Struct --------------------------------------------------------------------


def test_run_returns_every_output(run):
    result = run[1]
    table = result.sourceTable
    assert isinstance(table, Table)
    assert result.sourceCat is None  # doWriteAfwCatalog=False
    for name in ("model", "background"):
        image = getattr(result, name)
        assert isinstance(image, np.ndarray) and image.dtype == np.float32
        assert image.shape == SHAPE
        assert np.isfinite(image).all()
    # The PSF is plain data (StructuredDataDict) and reads back as a model.
    psf = psf_from_dict(json.loads(json.dumps(result.psf)))
    centre = (XY0[0] + 64, XY0[1] + 64)
    stamp = psf.stamp(*centre, 25)
    assert stamp.shape == (25, 25)
    assert abs(stamp.sum() - 1) < 0.05
    assert abs(psf.fwhm(*centre) - 3.5) < 0.5
    assert len(result.fit) == len(table)


def test_catalogue_schema(run, field):
    table = run[1].sourceTable
    image_unit = str(_ccd(field).unit)  # instrumental fluxes and sky follow the image
    columns = source_columns(image_unit)
    assert table.colnames == [c.name for c in columns]
    for c in columns:
        col = table[c.name]
        assert col.dtype == np.dtype(c.dtype), c.name
        assert col.description == c.doc and c.doc, c.name
        if c.unit:
            assert col.unit is not None and col.unit.is_equivalent(c.unit), c.name
        else:
            assert col.unit is None, c.name
    assert str(table["psfFlux"].unit) == "nJy"
    assert str(table["coord_ra"].unit) == "deg"
    assert table["x"].unit.is_equivalent("pixel")
    for name in ("psfInstFlux", "psfInstFluxErr", "sky", "crowdsource_fluxiso"):
        assert table[name].unit == image_unit, name


def test_positions_fluxes_and_sky_coordinates(run, field):
    table = run[1].sourceTable
    assert len(table) >= len(CLEAN) + 1
    wcs = _wcs()
    for i, flux in enumerate(CLEAN_FLUX):
        row, d = _match(table, field, i)
        truth = field.truth[i]
        assert d < 0.1, (i, d)  # PARENT coordinates: xy0 is included
        assert abs(row["psfInstFlux"] / flux - 1) < 0.03, (i, row["psfInstFlux"], flux)
        assert row["psfInstFluxErr"] > 0
        assert abs(row["psfInstFlux"] - flux) < 5 * row["psfInstFluxErr"] + 0.01 * flux
        assert row["xErr"] < 0.1 and row["yErr"] < 0.1
        assert abs(row["sky"] / truth["sky"] - 1) < 0.01
    np.testing.assert_allclose(table["psfFlux"], PHOTCALIB * table["psfInstFlux"])
    np.testing.assert_allclose(table["psfFluxErr"], PHOTCALIB * table["psfInstFluxErr"])
    # The WCS maps array pixels: PARENT minus xy0.
    ra, dec = wcs.all_pix2world(table["x"] - XY0[0], table["y"] - XY0[1], 0)
    np.testing.assert_allclose(table["coord_ra"], ra, rtol=0, atol=1e-10)
    np.testing.assert_allclose(table["coord_dec"], dec, rtol=0, atol=1e-10)


def test_model_and_background_describe_the_image(run, field):
    result = run[1]
    assert np.median(np.abs(result.background / field.sky - 1)) < 0.01
    resid = (field.image - result.model) / np.sqrt(field.variance)
    # Clean pixels away from the saturated star (its trail and wings).
    rows, cols = np.indices(SHAPE)
    far = np.hypot(cols - SATURATED[0], rows - SATURATED[1]) > 20
    r = resid[(field.mask == 0) & far & (np.abs(cols - SATURATED[0]) > 3)]
    assert 1.4826 * np.median(np.abs(r - np.median(r))) < 1.15
    assert abs(np.median(r)) < 0.1
    # The stars are in the model, not in the background.
    x, y = (round(v) for v in CLEAN[-1])
    assert result.model[y, x] - result.background[y, x] > 0.5 * (field.image[y, x] - SKY)


def test_metadata_per_pass(run):
    task, result = run
    md = task.metadata
    per_pass = list(md.getArray("sourcesPerPass"))
    new = list(md.getArray("newPeaksPerPass"))
    n_iter = len(per_pass)
    assert task.config.fit.nIter <= n_iter <= task.config.fit.maxIter
    assert list(md.getArray("passesPerTile")) == [n_iter]
    assert len(new) == len(md.getArray("secondsPerPass")) == n_iter
    assert md.getScalar("nTiles") == 1
    assert md.getScalar("nSources") == len(result.sourceTable) == per_pass[-1]
    # Sources only appear as new peaks: a pass holds at most the previous ones plus its new.
    assert per_pass[0] <= new[0]
    for i in range(1, n_iter):
        assert per_pass[i] <= per_pass[i - 1] + new[i]
    found = np.asarray(result.sourceTable["crowdsource_passFound"])
    for i in range(n_iter):
        assert np.sum(found == i) <= new[i]


# --- pixel flags ---------------------------------------------------------------------------


def test_pixel_flags(run, field):
    table = run[1].sourceTable
    flag_names = [c for c in table.colnames if c.startswith("pixelFlags_")]
    assert len(flag_names) == 13
    for i in range(len(CLEAN)):
        row, _ = _match(table, field, i)
        assert not any(row[c] for c in flag_names), (i, [c for c in flag_names if row[c]])
        assert not row["psfFlux_flag"] and not row["centroid_flag"]
    sat, d = _match(table, field, len(CLEAN))
    assert d < 1.5
    assert sat["pixelFlags_saturated"] and sat["pixelFlags_saturatedCenter"]
    assert sat["psfFlux_flag"]  # a saturated centre
    assert not sat["pixelFlags_bad"]
    near_bad, d = _match(table, field, len(CLEAN) + 1)
    assert d < 0.3
    assert near_bad["pixelFlags_bad"]
    assert not near_bad["pixelFlags_saturated"] and not near_bad["pixelFlags_saturatedCenter"]
    # Only sources touching the bad column carry the flag.
    bad_x = BAD_COLUMN + XY0[0]
    far = np.abs(np.asarray(table["x"]) - bad_x) > 15
    assert not np.asarray(table["pixelFlags_bad"])[far].any()
    # The star 2.4 columns from the bad column: in its core, not in its central 3x3.
    assert not near_bad["pixelFlags_badCenter"]
    # badCenter (as meas_base's flag_badCenter) is exactly "the bad column in the 3x3".
    centre_on_bad = np.abs(np.round(np.asarray(table["x"])) - bad_x) <= 1
    np.testing.assert_array_equal(table["pixelFlags_badCenter"], centre_on_bad)


def test_edge_flag_is_meas_base_s(field):
    """pixelFlags_edge as base_PixelFlags_flag_edge: EDGE or NO_DATA in the core (or off image)."""
    masked = dataclasses.replace(field, mask=field.mask.copy())
    masked.mask[:, :NO_DATA_COLUMNS] |= 1 << field.mask_planes["NO_DATA"]
    table = CrowdsourcePhotometryTask(config=_config()).run(_ccd(masked)).sourceTable
    np.testing.assert_array_equal(table["pixelFlags_edge"], table["pixelFlags_nodata"])
    # The three clean stars at x ~ 20 have NO_DATA within their PSF cores (ceil(FWHM) pixels).
    for i in range(3):
        row, d = _match(table, masked, i)
        assert d < 0.3 and row["pixelFlags_edge"] and row["pixelFlags_nodata"]
        assert not row["pixelFlags_bad"] and not row["psfFlux_flag"]
    x = np.asarray(table["x"]) - XY0[0]
    assert not np.asarray(table["pixelFlags_edge"])[x > NO_DATA_COLUMNS + 5].any()


# --- IDs --------------------------------------------------------------------------------------


def test_source_ids_pack_visit_and_detector(run):
    task, result = run
    table = result.sourceTable
    ids = np.asarray(table["sourceId"])
    assert ids.dtype == np.int64
    assert len(np.unique(ids)) == len(ids)
    unpack = unpacker_from_config(task.config.idGenerator)
    unpacked = [unpack(int(i)) for i in ids]
    assert {(d["visit"], d["detector"]) for _, d, _ in unpacked} == {(VISIT, DETECTOR)}
    assert {release for release, _, _ in unpacked} == {0}
    assert sorted(c for _, _, c in unpacked) == list(range(1, len(ids) + 1))
    assert (table["visit"] == VISIT).all() and (table["detector"] == DETECTOR).all()


def test_id_packing_limits(noise_ccd):
    # Through the task: an unpackable data ID is an error before the fit, not a
    # wrapped-around ID.
    task = CrowdsourcePhotometryTask(config=_config())
    with pytest.raises(ValueError, match="cannot be packed"):
        task.run(noise_ccd, visit=2**50, detector=0)
    with pytest.raises(ValueError, match="cannot be packed"):
        task.run(noise_ccd, visit=1, detector=1000)


# --- missing metadata, empty fields ----------------------------------------------------------


@pytest.fixture(scope="module")
def bare_run(field):
    """Same pixels, no WCS, no calibration, no data ID."""
    return CrowdsourcePhotometryTask(config=_config()).run(_ccd(field))


def test_without_wcs_or_photcalib(run, bare_run):
    table, full = bare_run.sourceTable, run[1].sourceTable
    assert len(table) == len(full)
    assert np.isnan(table["coord_ra"]).all() and np.isnan(table["coord_dec"]).all()
    assert np.isnan(table["psfFlux"]).all() and np.isnan(table["psfFluxErr"]).all()
    # ... as the column descriptions say.
    assert "NaN without a WCS" in table["coord_ra"].description
    assert "NaN without a photometric calibration" in table["psfFlux"].description
    # Nothing else changes.
    np.testing.assert_allclose(table["psfInstFlux"], full["psfInstFlux"])
    np.testing.assert_allclose(table["x"], full["x"])
    # Without a data ID the IDs are 1..N and visit/detector are -1.
    np.testing.assert_array_equal(table["sourceId"], np.arange(1, len(table) + 1))
    assert (table["visit"] == -1).all() and (table["detector"] == -1).all()


@pytest.mark.parametrize("with_psf", [False, True])
def test_empty_field_gives_an_empty_catalogue(noise_ccd, field, with_psf):
    ccd = noise_ccd
    if with_psf:
        ccd = make_ccddata(noise_ccd.data, noise_ccd.uncertainty, psf=field.psf_stamp)
    task = CrowdsourcePhotometryTask(config=_config())
    result = task.run(ccd, visit=VISIT, detector=DETECTOR)
    table = result.sourceTable
    assert len(table) == 0
    columns = source_columns()
    assert table.colnames == [c.name for c in columns]
    for c in columns:
        assert table[c.name].dtype == np.dtype(c.dtype) and table[c.name].description == c.doc
    assert result.model.shape == result.background.shape == (64, 64)
    assert abs(np.median(result.background) - SKY) < 5
    assert task.metadata.getScalar("nSources") == 0
    assert "tiles" in result.psf


def test_sourcecat_is_none_without_afw(field, caplog):
    if afw_available():
        pytest.skip("lsst.afw is importable: a SourceCatalog is made")
    task = CrowdsourcePhotometryTask(config=_config(doWriteAfwCatalog=True))
    with caplog.at_level(logging.INFO):
        result = task.run(_ccd(field))
    assert result.sourceCat is None
    assert len(result.sourceTable) > 0
    assert any("lsst.afw cannot be imported" in r.getMessage() for r in caplog.records)


def test_sourcecat_with_afw(field):
    pytest.importorskip("lsst.afw.table")
    result = CrowdsourcePhotometryTask(config=_config(doWriteAfwCatalog=True)).run(_ccd(field))
    cat = result.sourceCat
    assert len(cat) == len(result.sourceTable)
    assert [r.getId() for r in cat] == list(result.sourceTable["sourceId"])


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exposure",
    [np.zeros((32, 32)), {"image": np.zeros((32, 32))}, None],
    ids=["ndarray", "dict", "None"],
)
def test_not_an_exposure_is_a_type_error(exposure):
    task = CrowdsourcePhotometryTask(config=_config())
    with pytest.raises(TypeError) as err:
        task.run(exposure)
    message = str(err.value)
    assert type(exposure).__name__ in message
    for accepted in ("lsst.afw.image.Exposure", "lsst.images.VisitImage", "astropy.nddata.CCDData"):
        assert accepted in message


def test_all_pixels_masked(noise_ccd):
    ccd = make_ccddata(
        noise_ccd.data,
        noise_ccd.uncertainty,
        mask=np.ones(noise_ccd.shape, np.int32),
        mask_planes={"BAD": 0},
    )
    with pytest.raises(InputError, match="No usable pixels"):
        CrowdsourcePhotometryTask(config=_config()).run(ccd)


def test_no_uncertainty(noise_ccd):
    with pytest.raises(InputError, match="no uncertainty"):
        CrowdsourcePhotometryTask(config=_config()).run(CCDData(noise_ccd.data, unit="adu"))


@pytest.mark.parametrize(
    "stamp, message",
    [
        (np.ones((4, 4)), "odd size"),
        (np.full((5, 5), np.nan), "NaN"),
    ],
    ids=["even", "nan"],
)
def test_bad_psf_stamp(noise_ccd, stamp, message):
    ccd = make_ccddata(noise_ccd.data, noise_ccd.uncertainty)
    ccd.psf = stamp  # make_ccddata itself refuses such stamps
    with pytest.raises(InputError, match=message):
        CrowdsourcePhotometryTask(config=_config()).run(ccd)
    # With usePsfFromExposure=False the stamp is not used, so it is no error.
    CrowdsourcePhotometryTask(config=_config(usePsfFromExposure=False)).run(ccd)


def test_default_config_runs_in_a_notebook_without_afw(field):
    """``CrowdsourcePhotometryTask().run(ccd)``: the default config (ImageF outputs, an afw
    catalogue, as on the stack) gives numpy images and the astropy table where afw is absent;
    storage classes only matter to butler connections."""
    if afw_available():
        pytest.skip("lsst.afw is importable: run() gives afw types")
    result = CrowdsourcePhotometryTask().run(_ccd(field))
    assert result.sourceCat is None
    assert isinstance(result.model, np.ndarray) and result.model.dtype == np.float32
    assert isinstance(result.background, np.ndarray)
    assert result.model.shape == field.image.shape
    assert len(result.sourceTable) > 0.5 * np.sum(field.truth["snr"] > 30)


# --- configuration ------------------------------------------------------------------------------


def _set_fit_niter(config):
    config.fit.nIter = 0


def _visit_image_with_imagef(config):
    config.calexpStorageClass = "VisitImage"
    config.imageStorageClass = "ImageF"


def _visit_image_with_background(config):
    config.calexpStorageClass = "VisitImage"
    config.doAddBackground = True


@pytest.mark.parametrize(
    "change, match",
    [
        (_set_fit_niter, "n_iter must be >= 1"),
        (lambda c: setattr(c, "calexpStorageClass", "ImageF"), "not allowed"),
        (lambda c: setattr(c, "imageStorageClass", "ImageF"), "NumpyArray"),
        (lambda c: setattr(c, "doAddBackground", True), "ExposureF"),
        (_visit_image_with_imagef, "VisitImage use NumpyArray"),
        (_visit_image_with_background, "ExposureF"),
        (lambda c: setattr(c.idGenerator, "n_releases", 0), "n_releases"),
    ],
    ids=[
        "nIter",
        "calexpStorageClass",
        "ccddata-imagef",
        "background-ccddata",
        "visitimage-imagef",
        "background-visitimage",
        "n_releases",
    ],
)
def test_config_validation(change, match):
    config = _config()
    config.validate()
    with pytest.raises(pexConfig.FieldValidationError, match=match):
        change(config)
        config.validate()


def test_default_config_is_valid_and_targets_the_stack():
    config = CrowdsourcePhotometryConfig()
    config.validate()
    assert config.calexpStorageClass == "ExposureF" and config.imageStorageClass == "ImageF"


def test_connections_follow_the_config():
    default = CrowdsourcePhotometryConnections(config=CrowdsourcePhotometryConfig())
    assert default.calexp.name == "calexp" and default.calexp.storageClass == "ExposureF"
    assert default.model.storageClass == default.background.storageClass == "ImageF"
    assert set(default.inputs) == {"calexp"}
    assert set(default.outputs) == {"sourceTable", "sourceCat", "model", "background", "psf"}
    assert set(default.dimensions) == {"instrument", "visit", "detector"}

    config = _config()
    config.connections.calexp = "visit_image"
    conn = CrowdsourcePhotometryConnections(config=config)
    assert conn.calexp.name == "visit_image"
    assert conn.calexp.storageClass == "CrowdsourceCCDData"
    assert conn.model.storageClass == conn.background.storageClass == "NumpyArray"
    assert "sourceCat" not in conn.outputs
    assert set(conn.outputs) == {"sourceTable", "model", "background", "psf"}
    # The class attribute is untouched: the swap is per instance.
    assert CrowdsourcePhotometryConnections.calexp.storageClass == "ExposureF"

    config = CrowdsourcePhotometryConfig()
    config.doAddBackground = True
    conn = CrowdsourcePhotometryConnections(config=config)
    assert set(conn.inputs) == {"calexp", "calexpBackground"}
    assert conn.calexpBackground.name == "calexpBackground"
    assert conn.calexpBackground.storageClass == "Background"
