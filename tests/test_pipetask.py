"""End to end on plain PyPI: a local butler repo, `pipetask run`, outputs vs truth."""

import numpy as np
import pytest
from scipy.spatial import cKDTree

from lsst.meas.crowdsource.engine.psf_io import psf_from_dict
from lsst.meas.crowdsource.io.butler import make_repo, put_calexp
from lsst.meas.crowdsource.io.ccddata import make_ccddata
from lsst.meas.crowdsource.testing.butler import register_visit
from lsst.meas.crowdsource.testing.simulate import simulate_field

SIZE = (160, 192)  # rows, columns


@pytest.fixture(scope="module")
def pipetask_run(tmp_path_factory, run_pipetask):
    repo = tmp_path_factory.mktemp("repo")
    butler = make_repo(repo)
    wcs = register_visit(
        butler,
        "SimCam",
        visit=7,
        detectors=[0, 1, 2, 3],
        ra=270.0,
        dec=-30.0,
        detector_size=(SIZE[1], SIZE[0]),
    )
    fields = {}
    for det in (0, 1):
        f = simulate_field(
            SIZE, density=0.01, seed=20 + det, psf="moffat", bad_columns=1, xy0=(0, 0)
        )
        ccd = make_ccddata(
            f.image,
            f.variance,
            mask=f.mask,
            mask_planes=f.mask_planes,
            wcs=wcs[det],
            psf=f.psf_stamp,
            photcalib=2.5,
        )
        put_calexp(butler, ccd, "sim/calexp", "SimCam", 7, det)
        fields[det] = (f, wcs[det])
    fields[3] = (f, wcs[3])  # the same field, with a runaway amplifier (below)
    # Detector 2 is entirely masked (a dead detector): no work, not a failure.
    dead = make_ccddata(
        f.image,
        f.variance,
        mask=np.full(f.image.shape, 1 << f.mask_planes["BAD"], np.int32),
        mask_planes=f.mask_planes,
        wcs=wcs[2],
        psf=f.psf_stamp,
        photcalib=2.5,
    )
    put_calexp(butler, dead, "sim/calexp", "SimCam", 7, 2)
    # Detector 3: the left half reads 1e9 (a runaway amplifier nobody masked).
    runaway = f.image.copy()
    runaway[:, : SIZE[1] // 2] = 1e9
    hostile = make_ccddata(
        runaway,
        f.variance,
        mask=f.mask,
        mask_planes=f.mask_planes,
        wcs=wcs[3],
        psf=f.psf_stamp,
        photcalib=2.5,
    )
    put_calexp(butler, hostile, "sim/calexp", "SimCam", 7, 3)
    del butler
    proc = run_pipetask(repo, "sim/calexp", "crowdsource/out", "CrowdsourcePhotometryNoAfw.yaml")
    from lsst.daf.butler import Butler

    return Butler.from_config(str(repo), collections="crowdsource/out"), fields, proc


def test_pipetask_outputs_match_truth(pipetask_run):
    butler, fields, proc = pipetask_run
    ids = []
    for det, (f, wcs) in fields.items():
        if det == 3:
            continue
        data_id = dict(instrument="SimCam", visit=7, detector=det)
        table = butler.get("crowdsource_source", data_id)
        assert len(table) > 100
        assert (table["detector"] == det).all() and (table["visit"] == 7).all()
        ids.append(np.asarray(table["sourceId"]))
        truth = f.truth
        snr = np.asarray(truth["snr"])
        tx, ty = np.asarray(truth["x"]), np.asarray(truth["y"])
        inside = (tx > 2) & (tx < SIZE[1] - 3) & (ty > 2) & (ty < SIZE[0] - 3) & (snr > 20)
        d, j = cKDTree(np.column_stack([table["x"], table["y"]])).query(
            np.column_stack([tx[inside], ty[inside]])
        )
        assert np.mean(d < 1) > 0.9
        ok = d < 1
        ratio = np.asarray(table["psfInstFlux"])[j[ok]] / np.asarray(truth["flux"])[inside][ok]
        assert abs(np.median(ratio) - 1) < 0.05
        # Calibrated flux and sky coordinates from the CCDData metadata and WCS.
        np.testing.assert_allclose(table["psfFlux"], 2.5 * table["psfInstFlux"])
        ra, dec = wcs.all_pix2world(table["x"], table["y"], 0)
        np.testing.assert_allclose(table["coord_ra"], ra, atol=1e-9)
        np.testing.assert_allclose(table["coord_dec"], dec, atol=1e-9)
        assert str(table["psfFlux"].unit) == "nJy" and table["x"].description
        model = butler.get("crowdsource_model", data_id)
        assert model.shape == SIZE
        resid = (f.image - model) / np.sqrt(f.variance)
        good = f.mask == 0
        r = resid[good]
        # Mostly noise; PSF residuals of the brightest stars are in the tails.
        assert 1.4826 * np.median(np.abs(r - np.median(r))) < 1.15
        assert abs(np.median(r)) < 0.1
        sky = butler.get("crowdsource_background", data_id)
        assert abs(np.median(sky) - np.median(f.sky)) < 0.02 * np.median(f.sky)
        psf = psf_from_dict(butler.get("crowdsource_psf", data_id))
        assert psf.stamp(90.0, 80.0).sum() == pytest.approx(1.0, abs=0.05)
    all_ids = np.concatenate(ids)
    assert len(np.unique(all_ids)) == len(all_ids)
    # No SourceCatalog output without afw.
    assert not butler.registry.queryDatasetTypes("crowdsource_src")


def test_entirely_masked_detector_is_no_work(pipetask_run):
    """The all-masked detector's quantum ends as NoWorkFound: pipetask succeeds, writes
    nothing for it, and the other detectors are measured."""
    butler, fields, proc = pipetask_run
    found = {
        ref.dataId["detector"]
        for ref in butler.query_datasets("crowdsource_source", collections="crowdsource/out")
    }
    assert found == set(fields) == {0, 1, 3}
    log = proc.stdout + proc.stderr
    assert "No usable pixels" in log


def test_runaway_amplifier_is_left_out_with_flags(pipetask_run):
    """An unmasked half-detector plateau at 1e9 ends as a catalogue of the other half,
    with the plateau in the metadata and the sources beside it flagged; no hang."""
    butler, fields, proc = pipetask_run
    f, _ = fields[3]
    data_id = dict(instrument="SimCam", visit=7, detector=3)
    table = butler.get("crowdsource_source", data_id)
    half = SIZE[1] // 2
    assert (table["x"] > half - 1).all()
    assert table["crowdsource_flag_unfittable"].any()
    assert not table["crowdsource_flag_sourceCap"].any()
    # About as many sources as on the good half of the same field (detector 1).
    good = butler.get("crowdsource_source", dict(data_id, detector=1))
    n_half = np.count_nonzero(good["x"] > half + 6)
    assert 0.8 * n_half <= len(table) <= 1.1 * n_half + 5, (len(table), n_half)
    metadata = butler.get("crowdsourcePhotometry_metadata", data_id)["crowdsourcePhotometry"]
    assert metadata["nPlateaus"] >= 1  # the masked bad column may cut it in two
    assert metadata["nUnfittablePixels"] >= SIZE[0] * half
    assert "no PSF can fit" in proc.stdout + proc.stderr
