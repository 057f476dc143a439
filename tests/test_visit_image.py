"""DP1-style runs: `pipetask run` on a butler repo of `lsst.images.VisitImage` ``visit_image``s.

The repository holds what a DP1 user has: ``visit_image`` datasets of
storage class ``VisitImage`` (pixels in nJy, lsst.images mask planes, a sky
projection, a photometric scaling), for an LSSTCam-like visit ID (13 digits)
and detectors up to 188.  Detector 5 carries lsst.images' Gaussian PSF,
detector 188 a Piff PSF fitted by piff to the simulated stars (a galsim
atmosphere-plus-optics PSF, so neither model is the truth), and detector 0
is entirely masked (``NO_DATA``).  Photometry and forced photometry run
through ``pipelines/*VisitImage.yaml``; outputs are checked against truth.
Skipped without lsst.images (Python < 3.12).
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("lsst.images")
pytest.importorskip("piff")
pytest.importorskip("galsim")

from astropy.table import Table  # noqa: E402
from scipy.spatial import cKDTree  # noqa: E402

from lsst.meas.crowdsource.ids import unpacker_from_config  # noqa: E402
from lsst.meas.crowdsource.io.butler import make_repo, put_calexp, put_forced_targets  # noqa: E402
from lsst.meas.crowdsource.io.images import visit_image_inputs  # noqa: E402
from lsst.meas.crowdsource.testing.butler import register_visit  # noqa: E402
from lsst.meas.crowdsource.testing.evaluation import robust_scatter  # noqa: E402
from lsst.meas.crowdsource.testing.simulate import measure_fwhm, simulate_field  # noqa: E402
from lsst.meas.crowdsource.testing.visit_image import (  # noqa: E402
    camera_frames,
    fit_piff_psf,
    gaussian_psf,
    make_visit_image,
)

SIZE = (160, 192)  # rows, columns
VISIT = 2025120100123
DETECTORS = {5: "gaussian", 188: "piff"}
DEAD = 0
NJY_PER_COUNT = 2.5
LSSTCAM = dict(visit_max=7050123199999, detector_max=1000)  # obs_lsst's LSSTCam limits


def _field(det: int, kind: str):
    if kind == "gaussian":
        return simulate_field(SIZE, density=0.01, seed=60 + det, psf="gaussian", bad_columns=1)
    return simulate_field(SIZE, density=0.006, seed=60 + det, psf="galsim", bad_columns=1)


@pytest.fixture(scope="module")
def repo(tmp_path_factory, run_pipetask):
    """Photometry and forced photometry of three LSSTCam-like visit_images via pipetask."""
    from lsst.daf.butler import Butler

    root = tmp_path_factory.mktemp("visit_image_repo")
    butler = make_repo(root)
    every = [DEAD, *DETECTORS]
    wcs = register_visit(
        butler,
        "LSSTCam",
        visit=VISIT,
        detectors=every,
        day_obs=20251201,
        ra=150.0,
        dec=2.0,
        detector_size=(SIZE[1], SIZE[0]),
        **LSSTCAM,
    )
    frames = camera_frames("LSSTCam", {d: (SIZE[1], SIZE[0]) for d in every})
    fields, images, targets = {}, {}, []
    rng = np.random.default_rng(8)
    for det, kind in DETECTORS.items():
        field = _field(det, kind)
        psf = gaussian_psf(field) if kind == "gaussian" else fit_piff_psf(field, snr_min=30.0)
        image = make_visit_image(
            field,
            wcs[det],
            instrument="LSSTCam",
            visit=VISIT,
            detector=det,
            psf=psf,
            njy_per_count=NJY_PER_COUNT,
            frames=frames,
        )
        put_calexp(butler, image, "dp1/visit_image", "LSSTCam", VISIT, det, "visit_image")
        fields[det], images[det] = field, image
        t = field.truth
        pick = rng.choice(np.flatnonzero(t["in_image"] & (t["snr"] > 20)), 12, replace=False)
        ra, dec = wcs[det].all_pix2world(t["x"][pick], t["y"][pick], 0)
        targets.append(
            Table(
                {
                    "coord_ra": ra,
                    "coord_dec": dec,
                    "true_flux": np.asarray(t["flux"][pick]) * NJY_PER_COUNT,
                    "detector": np.full(len(pick), det),
                }
            )
        )
    # The dead detector: every pixel NO_DATA.
    field = _field(DEAD, "gaussian")
    field.mask[:] = 1 << field.mask_planes["NO_DATA"]
    dead = make_visit_image(
        field,
        wcs[DEAD],
        instrument="LSSTCam",
        visit=VISIT,
        detector=DEAD,
        psf=gaussian_psf(field),
        frames=frames,
    )
    put_calexp(butler, dead, "dp1/visit_image", "LSSTCam", VISIT, DEAD, "visit_image")
    targets = Table(np.concatenate([np.asarray(t.as_array()) for t in targets]))
    targets["objectId"] = rng.choice(10**12, len(targets), replace=False).astype(np.int64)
    put_forced_targets(butler, targets, "targets")
    del butler
    logs = {
        "photometry": run_pipetask(
            root, "dp1/visit_image", "out", "CrowdsourcePhotometryVisitImage.yaml", "LSSTCam"
        ),
        "forced": run_pipetask(
            root,
            "dp1/visit_image,targets",
            "forced",
            "CrowdsourceForcedPhotometryVisitImage.yaml",
            "LSSTCam",
        ),
    }
    return Butler.from_config(str(root)), wcs, fields, images, targets, logs


def test_visit_images_round_trip_through_the_butler(repo):
    """What pipetask reads: the stored VisitImage keeps its nJy pixels, planes and PSF."""
    from lsst.images import VisitImage
    from lsst.images.psfs import GaussianPointSpreadFunction, PiffWrapper

    butler, wcs, fields, images, _, _ = repo
    for det, kind in DETECTORS.items():
        stored = butler.get("visit_image", instrument="LSSTCam", visit=VISIT, detector=det,
                            collections="dp1/visit_image")  # fmt: skip
        assert isinstance(stored, VisitImage) and str(stored.unit) == "nJy"
        assert isinstance(
            stored.psf, PiffWrapper if kind == "piff" else GaussianPointSpreadFunction
        )
        inputs = visit_image_inputs(stored)
        np.testing.assert_allclose(inputs.image, fields[det].image * NJY_PER_COUNT, rtol=1e-6)
        bad = fields[det].mask & fields[det].mask_bits("BAD") != 0
        np.testing.assert_array_equal(inputs.mask_planes["BAD"], bad)
        ra, dec = inputs.pixel_to_sky(np.array([10.0, 150.0]), np.array([20.0, 100.0]))
        np.testing.assert_allclose(
            np.column_stack([ra, dec]),
            wcs[det].all_pix2world([[10.0, 20.0], [150.0, 100.0]], 0),
            atol=1e-10,
        )
        # The stored PSF draws what the in-memory one does.
        np.testing.assert_allclose(
            inputs.psf(90.0, 70.0), visit_image_inputs(images[det]).psf(90.0, 70.0)
        )


def test_piff_psf_is_piffs_fit_to_the_stars(repo):
    """The Piff model is fitted, not the truth: close to the true PSF's width, not equal."""
    _, _, fields, images, _, _ = repo
    field = fields[188]
    piff_stamp = visit_image_inputs(images[188]).psf(96.0, 80.0)
    true_stamp = field.psf_at(96.0, 80.0, size=piff_stamp.shape[0])
    assert piff_stamp.sum() == pytest.approx(1.0, abs=1e-6)
    ratio = measure_fwhm(piff_stamp) / measure_fwhm(true_stamp / true_stamp.sum())
    assert abs(ratio - 1) < 0.08, ratio
    assert not np.allclose(piff_stamp, true_stamp / true_stamp.sum(), atol=1e-4)


def test_photometry_outputs_match_truth_in_njy(repo):
    butler, wcs, fields, _, _, _ = repo
    config = butler.get("crowdsourcePhotometry_config", collections="out")
    unpack = unpacker_from_config(
        config.idGenerator, butler.registry.expandDataId(instrument="LSSTCam")
    )
    every = []
    for det, field in fields.items():
        table = butler.get(
            "crowdsource_source", instrument="LSSTCam", visit=VISIT, detector=det, collections="out"
        )
        assert len(table) > 100
        assert str(table["psfFlux"].unit) == "nJy"
        truth = field.truth
        tx, ty = np.asarray(truth["x"]), np.asarray(truth["y"])
        inside = (tx > 3) & (tx < SIZE[1] - 4) & (ty > 3) & (ty < SIZE[0] - 4)
        bright = inside & (np.asarray(truth["snr"]) > 20) & ~np.asarray(truth["saturated"])
        d, j = cKDTree(np.column_stack([table["x"], table["y"]])).query(
            np.column_stack([tx[bright], ty[bright]])
        )
        assert np.mean(d < 1) > 0.9, (det, np.mean(d < 1))
        ok = d < 1
        ratio = np.asarray(table["psfFlux"])[j[ok]] / (
            NJY_PER_COUNT * np.asarray(truth["flux"])[bright][ok]
        )
        # Measured (median, scatter): Gaussian 0.980, 0.058; Piff on the galsim PSF 0.947,
        # 0.040 -- the same as the CCDData path given the true PSF stamp (0.980, 0.054 and
        # 0.939, 0.038), so this is the engine's accuracy on these PSFs (issue 15), not
        # the VisitImage plumbing; a unit or PSF mix-up would be off by far more.
        assert abs(np.median(ratio) - 1) < 0.07, (det, np.median(ratio))
        assert robust_scatter(ratio) < 0.07, (det, robust_scatter(ratio))
        # nJy pixels: instrumental flux is already nJy.
        np.testing.assert_allclose(table["psfFlux"], table["psfInstFlux"])
        ra, dec = wcs[det].all_pix2world(table["x"], table["y"], 0)
        np.testing.assert_allclose(table["coord_ra"], ra, atol=1e-9)
        np.testing.assert_allclose(table["coord_dec"], dec, atol=1e-9)
        unpacked = [unpack(int(v)) for v in table["sourceId"]]
        assert {(u["visit"], u["detector"]) for _, u, _ in unpacked} == {(VISIT, det)}
        assert (table["visit"] == VISIT).all() and (table["detector"] == det).all()
        every.append(np.asarray(table["sourceId"]))
    every = np.concatenate(every)
    assert len(np.unique(every)) == len(every)


def test_entirely_masked_visit_image_is_no_work(repo):
    butler, _, fields, _, _, logs = repo
    for name, dataset, collection in (
        ("photometry", "crowdsource_source", "out"),
        ("forced", "crowdsource_forced_source", "forced"),
    ):
        found = {
            r.dataId["detector"] for r in butler.query_datasets(dataset, collections=collection)
        }
        assert found == set(fields), name
        assert "No usable pixels" in logs[name].stdout + logs[name].stderr


def test_forced_photometry_on_visit_images(repo):
    butler, _, fields, _, targets, _ = repo
    config = butler.get("crowdsourceForcedPhotometry_config", collections="forced")
    unpack = unpacker_from_config(
        config.idGenerator, butler.registry.expandDataId(instrument="LSSTCam")
    )
    every = []
    for det in fields:
        table = butler.get(
            "crowdsource_forced_source",
            instrument="LSSTCam",
            visit=VISIT,
            detector=det,
            collections="forced",
        )
        assert len(table) == len(targets)
        np.testing.assert_array_equal(table["objectId"], targets["objectId"])
        here = np.asarray(targets["detector"]) == det
        assert not table["psfFlux_flag"][here].any()
        ratio = np.asarray(table["psfFlux"][here]) / np.asarray(targets["true_flux"][here])
        assert abs(np.median(ratio) - 1) < 0.07, (det, ratio)
        assert robust_scatter(ratio) < 0.07, (det, ratio)
        assert table["psfFlux_flag"][~here].all()
        unpacked = [unpack(int(v)) for v in table["forcedSourceId"]]
        assert {(u["visit"], u["detector"]) for _, u, _ in unpacked} == {(VISIT, det)}
        every.append(np.asarray(table["forcedSourceId"]))
    every = np.concatenate(every)
    assert len(np.unique(every)) == len(every)


def test_notebook_run_on_a_visit_image_with_the_default_config(repo):
    """``CrowdsourcePhotometryTask().run(visit_image)`` without afw: astropy/numpy outputs."""
    from lsst.meas.crowdsource import CrowdsourcePhotometryTask
    from lsst.meas.crowdsource.io.outputs import afw_available

    if afw_available():
        pytest.skip("with afw the default config gives afw outputs (tests/test_adapters_afw.py)")
    _, _, _, images, _, _ = repo
    result = CrowdsourcePhotometryTask().run(images[5], visit=VISIT, detector=5)
    assert result.sourceCat is None
    assert isinstance(result.model, np.ndarray) and result.model.shape == SIZE
    table = result.sourceTable
    assert str(table["psfFlux"].unit) == "nJy" and len(table) > 100
    assert (table["visit"] == VISIT).all() and (table["detector"] == 5).all()
    # The same fit as the pipetask run of this image.
    stored = repo[0].get(
        "crowdsource_source", instrument="LSSTCam", visit=VISIT, detector=5, collections="out"
    )
    np.testing.assert_allclose(np.sort(table["psfFlux"]), np.sort(stored["psfFlux"]), rtol=1e-5)
