"""Source IDs the stack's way: lsst.meas.crowdsource.ids.

Checked: LSSTCam-like data IDs (13-digit visit IDs, detectors up to 188)
give unique int64 IDs that unpack to the data ID; visits and detectors never
collide; release IDs; no data ID gives 1..N; the fallback has the API of
lsst/meas_base ``_id_generator.py``; the tasks' ``sourceId`` /
``forcedSourceId`` unpack to the data ID, in memory and through
``pipetask run`` (``runQuantum`` -> ``config.idGenerator.apply(dataId)``).
"""

from __future__ import annotations

import ast
import datetime
import inspect
import subprocess
from pathlib import Path

import lsst.pex.config as pexConfig
import numpy as np
import pytest
from astropy.table import Table
from astropy.wcs import WCS
from lsst.daf.butler import DataCoordinate, DimensionUniverse

from lsst.meas.crowdsource import (
    CrowdsourceForcedPhotometryConfig,
    CrowdsourceForcedPhotometryTask,
    CrowdsourcePhotometryConfig,
    CrowdsourcePhotometryTask,
    ids,
)
from lsst.meas.crowdsource.io.ccddata import make_ccddata
from lsst.meas.crowdsource.testing.simulate import simulate_field

ROOT = Path(__file__).resolve().parents[1]
UNIVERSE = DimensionUniverse()
LSSTCAM_VISIT = 2025120100123
LSSTCAM_DETECTORS = (0, 5, 188)
#: What lsst/obs_lsst registers for LSSTCam (``_instrument.py``: the
#: translator's ``max_exposure_id()`` and ``DETECTOR_MAX``).
LSSTCAM_RECORD = dict(
    name="LSSTCam", visit_max=7050123199999, detector_max=1000, class_name="lsst.obs.lsst.LsstCam"
)
SIMCAM_RECORD = dict(name="SimCam", visit_max=2**31 - 1, detector_max=1000)
MEAS_BASE_MIRROR = Path("/work/.mirror/lsst+meas_base/repo")


def _fixed(record: dict) -> DataCoordinate:
    """The instrument's data ID, expanded with its record (as the butler gives it)."""
    rec = UNIVERSE["instrument"].RecordClass(**record)
    data_id = DataCoordinate.standardize(instrument=record["name"], universe=UNIVERSE)
    return data_id.expanded({"instrument": rec})


def _data_id(instrument: str, visit: int, detector: int) -> DataCoordinate:
    return DataCoordinate.standardize(
        instrument=instrument, visit=visit, detector=detector, universe=UNIVERSE
    )


def _config(**fields) -> ids.DetectorVisitIdGeneratorConfig:
    config = ids.DetectorVisitIdGeneratorConfig()
    for name, value in fields.items():
        setattr(config, name, value)
    config.validate()
    return config


# --- LSSTCam: unique, int64, unpacking ---------------------------------------------------------


def test_lsstcam_ids_are_unique_int64_and_unpack_to_the_data_id():
    config = _config()
    unpack = ids.unpacker_from_config(config, _fixed(LSSTCAM_RECORD))
    all_ids = []
    for detector in LSSTCAM_DETECTORS:
        generator = config.apply(_data_id("LSSTCam", LSSTCAM_VISIT, detector))
        # obs_lsst's default for LSSTCam is its "rubin" packer, not the
        # visit_max * detector_max one (53 bits, leaving 4 counter bits).
        assert isinstance(generator._bits.packer, ids.RubinVisitPacker)
        assert generator._bits.counter_bits == 63 - 6 - 38
        values = ids.CatalogIds(generator).arange(1000)
        assert values.dtype == np.int64 and (values > 0).all()
        for counter in (0, 1, 999):
            release, data_id, count = unpack(int(values[counter]))
            assert (release, count) == (0, counter + 1)
            assert data_id["visit"] == LSSTCAM_VISIT and data_id["detector"] == detector
            assert data_id["instrument"] == "LSSTCam"
        all_ids.append(values)
    all_ids = np.concatenate(all_ids)
    assert len(np.unique(all_ids)) == len(all_ids)


def test_rubin_packing_is_obs_lsst_s():
    """obs_lsst's documented, stable packing (RubinDimensionPacker, default config)."""
    packer = ids.RubinVisitPacker(_fixed(LSSTCAM_RECORD))
    day = (datetime.date(2025, 12, 1) - datetime.date(2010, 1, 1)).days
    assert packer.maxBits == 38
    assert packer.pack(_data_id("LSSTCam", LSSTCAM_VISIT, 188)) == 188 + 256 * (123 + 32768 * day)
    # A leading 9: the one-snap reinterpretation of the exposure, a distinct visit.
    again = packer.pack(_data_id("LSSTCam", 9 * 10**13 + LSSTCAM_VISIT, 188))
    assert again == 188 + 256 * (123 + 32768 * (day + 16384))
    assert packer.unpack(again)["visit"] == 9 * 10**13 + LSSTCAM_VISIT
    for visit, detector in [(2024112000208, 256), (2009123100001, 0), (2025133100001, 0), (123, 0)]:
        with pytest.raises(ValueError):
            packer.pack(_data_id("LSSTCam", visit, detector))


def test_two_visits_or_two_detectors_never_collide():
    """Whole counter ranges of neighbouring data IDs are disjoint (and in int64)."""
    config = _config()
    visits = [LSSTCAM_VISIT, LSSTCAM_VISIT + 1, 2025120200123, 9 * 10**13 + LSSTCAM_VISIT]
    ranges = []
    for visit in visits:
        for detector in (0, 1, 188):
            generator = config.apply(_data_id("LSSTCam", visit, detector))
            n = generator._bits.n_counters
            first, last = generator.arange(1, n, dtype=np.int64)[[0, -1]]
            ranges.append((int(first), int(last)))
            with pytest.raises(ValueError, match="not below"):
                generator.arange(n - 1, n + 1)
    ranges.sort()
    assert all(a[1] < b[0] for a, b in zip(ranges[:-1], ranges[1:], strict=True))
    assert ranges[-1][1] < 2**63


def test_instrument_without_known_packer_uses_its_visit_and_detector_max():
    """The observation packer of pipe_base, bounded by the instrument record."""
    config = _config()
    fixed = _fixed(SIMCAM_RECORD)
    packer = config._make_dimension_packer(fixed)
    assert type(packer).__name__ == "ObservationDimensionPacker"
    assert packer.maxBits == ((2**31 - 1) * 1000 - 1).bit_length()
    unpack = ids.unpacker_from_config(config, fixed)
    seen = set()
    for visit, detector in [(7, 0), (7, 1), (8, 0), (2**31 - 2, 999)]:
        # apply()'s keyword arguments: dimension values beside the expanded data ID.
        generator = config.apply(fixed, visit=visit, detector=detector)
        value = int(generator.arange(1, 2)[0])
        assert value not in seen
        seen.add(value)
        assert unpack(value)[1:] == (_data_id("SimCam", visit, detector), 1)
    # Its bounds come from the record: without one, a clear error.
    with pytest.raises(ValueError, match="expandDataId"):
        config.apply(_data_id("SimCam", 7, 0))


def test_configured_observation_packer_needs_no_records():
    """The stack's recipe for tests: packer "observation" with explicit bounds."""
    config = ids.DetectorVisitIdGeneratorConfig()
    config.packer.name = "observation"
    config.packer["observation"].n_detectors = 200
    config.packer["observation"].n_observations = 1000
    generator = config.apply(_data_id("Anything", 999, 199))
    assert generator._bits.packer.maxBits == (200 * 1000 - 1).bit_length()
    assert generator.catalog_id == 199 + 200 * 999
    unpack = ids.unpacker_from_config(config, _data_id("Anything", 0, 0).subset(["instrument"]))
    assert unpack(int(generator.arange(1, 2)[0]))[1]["visit"] == 999
    # The notebook path honours it too.
    notebook = ids.notebook_id_generator(config, 999, 199)
    assert notebook.catalog_id == generator.catalog_id
    assert ids.unpacker_from_config(config)(int(notebook.arange(5, 6)[0]))[2] == 5


# --- release IDs -----------------------------------------------------------------------------


def test_release_ids_are_embedded_and_bounded():
    data_id = _data_id("LSSTCam", LSSTCAM_VISIT, 5)
    fixed = _fixed(LSSTCAM_RECORD)
    plain = _config().apply(data_id)
    for release in (1, 63):
        config = _config(release_id=release)
        generator = config.apply(data_id)
        assert generator.release_id == release
        value = int(generator.arange(1, 2)[0])
        assert value != int(plain.arange(1, 2)[0]) and 0 < value < 2**63
        assert ids.unpacker_from_config(config, fixed)(value) == (release, data_id, 1)
    # No release bits: 6 more counter bits, and only release 0.
    single = _config(n_releases=1)
    assert single.apply(data_id)._bits.counter_bits == plain._bits.counter_bits + 6
    for bad in (dict(release_id=64), dict(n_releases=1, release_id=1), dict(n_releases=0)):
        with pytest.raises(pexConfig.FieldValidationError):
            _config(**bad)


# --- no data ID, and the notebook data ID --------------------------------------------------------


def test_no_data_id_gives_1_to_n():
    catalog = ids.catalog_ids(_config())
    np.testing.assert_array_equal(catalog.arange(5), [1, 2, 3, 4, 5])
    assert catalog.visit is None and catalog.detector is None
    assert catalog.arange(0).dtype == np.int64 and len(catalog.arange(0)) == 0
    assert str(catalog.generator) == "[no data ID]" and catalog.generator.catalog_id == 0


def test_visit_and_detector_without_an_instrument():
    config = _config()
    unpack = ids.unpacker_from_config(config)
    values = {}
    for visit, detector in [(3, 1), (3, 2), (4, 1), (LSSTCAM_VISIT, 1), (LSSTCAM_VISIT, 188)]:
        catalog = ids.catalog_ids(config, visit=visit, detector=detector)
        assert (catalog.visit, catalog.detector) == (visit, detector)
        ten = catalog.arange(10)
        assert all(unpack(int(v))[1]["visit"] == visit for v in ten[[0, -1]])
        assert all(unpack(int(v))[1]["detector"] == detector for v in ten[[0, -1]])
        values[visit, detector] = ten
    every = np.concatenate(list(values.values()))
    assert len(np.unique(every)) == len(every)
    for visit, detector in [(2**27, 0), (1, 1000), (10**12, 0), (LSSTCAM_VISIT, 256), (-1, 0)]:
        with pytest.raises(ValueError, match="cannot be packed"):
            ids.catalog_ids(config, visit=visit, detector=detector)


def test_visit_and_detector_must_agree_with_the_generator():
    generator = _config().apply(_data_id("LSSTCam", LSSTCAM_VISIT, 5))
    catalog = ids.catalog_ids(_config(), generator)
    assert (catalog.visit, catalog.detector) == (LSSTCAM_VISIT, 5)
    assert ids.catalog_ids(_config(), generator, visit=LSSTCAM_VISIT, detector=5) == catalog
    with pytest.raises(ValueError, match="contradicts"):
        ids.catalog_ids(_config(), generator, visit=LSSTCAM_VISIT, detector=6)
    # A generator without a data ID leaves the columns to visit/detector.
    bare = ids.catalog_ids(_config(), ids.active.IdGenerator(), visit=3, detector=1)
    assert (bare.visit, bare.detector) == (3, 1)
    np.testing.assert_array_equal(bare.arange(3), [1, 2, 3])


# --- the fallback's API is lsst.meas.base's ----------------------------------------------------

#: Members and signatures of lsst/meas_base python/lsst/meas/base/_id_generator.py
#: (commit 3e17d70); "property" and "field" for those.
MEAS_BASE_API = {
    "BaseIdGeneratorConfig": {
        "release_id": "field",
        "n_releases": "field",
        "make_field": "(cls, doc='Configuration for how to generate catalog IDs from data IDs.')",
        "apply": "(self, data_id, **kwargs)",
        "_make_dimension_packer": "(self, data_id)",
    },
    "DetectorExposureIdGeneratorConfig": {
        "packer": "field",
        "_make_dimension_packer": "(self, data_id)",
    },
    "DetectorVisitIdGeneratorConfig": {
        "packer": "field",
        "_make_dimension_packer": "(self, data_id)",
    },
    "IdGenerator": {
        "catalog_id": "property",
        "__str__": "(self)",
        "make_table_id_factory": "(self)",
        "make_source_catalog": "(self, schema)",
        "arange": "(self, *args, **kwargs)",
        "unpacker_from_config": "(cls, config, fixed)",
        "unpacker_from_dimension_packer": "(cls, dimension_packer, n_releases=64)",
    },
    "FullIdGenerator": {
        "__init__": "(self, dimension_packer, data_id, release_id=0, n_releases=64)",
        "data_id": "property",
        "release_id": "property",
        "catalog_id": "property",
        "__str__": "(self)",
        "make_table_id_factory": "(self)",
        "arange": "(self, *args, **kwargs)",
    },
}


def _signature(func) -> str:
    """``(a, b=1, *args, **kwargs)`` of a function, without annotations."""
    sig = inspect.signature(func)
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    return str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))


def _our_member(cls, name: str) -> str:
    member = inspect.getattr_static(cls, name)
    if isinstance(member, property):
        return "property"
    if isinstance(member, pexConfig.Field):
        return "field"
    if isinstance(member, classmethod | staticmethod):
        member = member.__func__
    return _signature(member)


def _api_from_source(text: str) -> dict:
    """`MEAS_BASE_API`'s form, read from the source of ``_id_generator.py``."""
    names = {"DEFAULT_RELEASE_ID": 0, "DEFAULT_N_RELEASES": 64}
    api = {}
    for node in ast.parse(text).body:
        if not isinstance(node, ast.ClassDef) or node.name not in MEAS_BASE_API:
            continue
        members = {}
        for item in node.body:
            if isinstance(item, ast.Assign):
                members[item.targets[0].id] = "field"
            elif isinstance(item, ast.FunctionDef):
                decorators = {ast.unparse(d) for d in item.decorator_list}
                if "property" in decorators:
                    members[item.name] = "property"
                    continue
                func = ast.FunctionDef(
                    name="f", args=item.args, body=[ast.Pass()], decorator_list=[], lineno=0
                )
                for arg in [*func.args.args, *func.args.kwonlyargs]:
                    arg.annotation = None
                for extra in (func.args.vararg, func.args.kwarg):
                    if extra is not None:
                        extra.annotation = None
                code = ast.unparse(ast.fix_missing_locations(ast.Module([func], [])))
                scope = dict(names)
                exec(code, scope)  # noqa: S102 (a signature-only stub of the source)
                members[item.name] = _signature(scope["f"])
        api[node.name] = members
    return api


@pytest.mark.parametrize("cls_name", sorted(MEAS_BASE_API))
def test_fallback_has_meas_base_api(cls_name):
    cls = getattr(ids, cls_name)
    assert cls.__name__ == cls_name
    for name, expected in MEAS_BASE_API[cls_name].items():
        assert _our_member(cls, name) == expected, (cls_name, name)
    assert (ids.DEFAULT_RELEASE_ID, ids.DEFAULT_N_RELEASES) == (0, 64)
    if cls_name.endswith("Config"):
        assert issubclass(cls, ids.BaseIdGeneratorConfig)
        assert isinstance(cls.make_field(), pexConfig.ConfigField)
    if not ids.USING_MEAS_BASE:
        assert getattr(ids.active, cls_name) is cls


def test_expected_api_is_meas_base_s():
    """`MEAS_BASE_API` against the real source (where the meas_base mirror is here)."""
    try:
        text = subprocess.run(
            [
                "git",
                "-C",
                str(MEAS_BASE_MIRROR),
                "show",
                "HEAD:python/lsst/meas/base/_id_generator.py",
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("no lsst/meas_base mirror here")
    assert _api_from_source(text) == MEAS_BASE_API


def test_config_default_values_are_meas_base_s():
    config = ids.DetectorVisitIdGeneratorConfig()
    assert (config.release_id, config.n_releases, config.packer.name) == (0, 64, None)
    assert isinstance(
        CrowdsourcePhotometryConfig().idGenerator, ids.active.DetectorVisitIdGeneratorConfig
    )
    assert isinstance(
        CrowdsourceForcedPhotometryConfig().idGenerator, ids.active.DetectorVisitIdGeneratorConfig
    )


# --- through the tasks -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_ccd():
    field = simulate_field((64, 64), density=0.01, seed=3, psf="moffat", xy0=(10, 20))
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [150.0, 2.0]
    wcs.wcs.crpix = [40.0, 50.0]
    wcs.wcs.cdelt = [-0.2 / 3600, 0.2 / 3600]
    return make_ccddata(
        field.image,
        field.variance,
        mask=field.mask,
        mask_planes=field.mask_planes,
        wcs=wcs,
        psf=field.psf_stamp,
        xy0=field.xy0,
        photcalib=2.0,
    )


def _task_config(cls):
    config = cls()
    config.setNoAfwStorage()
    return config


def test_photometry_with_lsstcam_visit_and_detector(small_ccd):
    task = CrowdsourcePhotometryTask(config=_task_config(CrowdsourcePhotometryConfig))
    table = task.run(small_ccd, visit=LSSTCAM_VISIT, detector=188).sourceTable
    source_id = np.asarray(table["sourceId"])
    assert len(table) > 3 and source_id.dtype == np.int64
    assert len(np.unique(source_id)) == len(source_id)
    unpack = ids.unpacker_from_config(task.config.idGenerator)
    unpacked = [unpack(int(v)) for v in source_id]
    assert {(d["visit"], d["detector"]) for _, d, _ in unpacked} == {(LSSTCAM_VISIT, 188)}
    assert sorted(c for _, _, c in unpacked) == list(range(1, len(table) + 1))
    assert (table["visit"] == LSSTCAM_VISIT).all() and (table["detector"] == 188).all()
    # Without a data ID: 1..N, as before.
    bare = task.run(small_ccd).sourceTable
    np.testing.assert_array_equal(bare["sourceId"], np.arange(1, len(bare) + 1))


def test_forced_with_an_id_generator(small_ccd):
    config = _task_config(CrowdsourceForcedPhotometryConfig)
    config.findNewSources = False
    task = CrowdsourceForcedPhotometryTask(config=config)
    data_id = _data_id("LSSTCam", LSSTCAM_VISIT, 188)
    refs = Table(
        {"objectId": np.array([11, 22, 33]), "x": [30.0, 40.0, 50.0], "y": [40.0, 50.0, 60.0]}
    )
    table = task.run(
        small_ccd, refs, idGenerator=config.idGenerator.apply(data_id)
    ).forcedSourceTable
    np.testing.assert_array_equal(table["objectId"], [11, 22, 33])
    assert (table["visit"] == LSSTCAM_VISIT).all() and (table["detector"] == 188).all()
    unpack = ids.unpacker_from_config(config.idGenerator, _fixed(LSSTCAM_RECORD))
    assert [unpack(int(v)) for v in table["forcedSourceId"]] == [(0, data_id, c) for c in (1, 2, 3)]
    with pytest.raises(ValueError, match="contradicts"):
        task.run(small_ccd, refs, visit=1, idGenerator=config.idGenerator.apply(data_id))


def test_pipetask_source_ids_unpack_to_the_quantum_data_id(tmp_path, run_pipetask):
    """runQuantum: config.idGenerator.apply(quantum data ID), LSSTCam-like IDs."""
    from lsst.daf.butler import Butler

    from lsst.meas.crowdsource.io.butler import make_repo, put_calexp
    from lsst.meas.crowdsource.testing.butler import register_visit

    butler = make_repo(tmp_path)
    size = (80, 96)
    detectors = (5, 188)
    wcs = register_visit(
        butler,
        "LSSTCam",
        visit=LSSTCAM_VISIT,
        detectors=detectors,
        day_obs=20251201,
        ra=150.0,
        dec=2.0,
        detector_size=(size[1], size[0]),
        visit_max=LSSTCAM_RECORD["visit_max"],
        detector_max=LSSTCAM_RECORD["detector_max"],
    )
    for det in detectors:
        f = simulate_field(size, density=0.01, seed=50 + det, psf="moffat")
        ccd = make_ccddata(
            f.image,
            f.variance,
            mask=f.mask,
            mask_planes=f.mask_planes,
            wcs=wcs[det],
            psf=f.psf_stamp,
            photcalib=2.0,
        )
        put_calexp(butler, ccd, "sim/calexp", "LSSTCam", LSSTCAM_VISIT, det)
    del butler
    run_pipetask(tmp_path, "sim/calexp", "out", "CrowdsourcePhotometryNoAfw.yaml", "LSSTCam")
    butler = Butler.from_config(str(tmp_path), collections="out")
    config = butler.get("crowdsourcePhotometry_config")
    unpack = ids.unpacker_from_config(
        config.idGenerator, butler.registry.expandDataId(instrument="LSSTCam")
    )
    every = []
    for det in detectors:
        table = butler.get(
            "crowdsource_source", instrument="LSSTCam", visit=LSSTCAM_VISIT, detector=det
        )
        assert len(table) > 3
        unpacked = [unpack(int(v)) for v in table["sourceId"]]
        assert {(d["visit"], d["detector"]) for _, d, _ in unpacked} == {(LSSTCAM_VISIT, det)}
        assert sorted(c for _, _, c in unpacked) == list(range(1, len(table) + 1))
        every.append(np.asarray(table["sourceId"]))
    every = np.concatenate(every)
    assert len(np.unique(every)) == len(every)
