"""The injection pipeline end to end on plain PyPI: a local butler repo and `pipetask run`.

One detector of a simulated field (CCDData calexp with a WCS and a
photometric calibration) goes through pipelines/CrowdsourceInjectionNoAfw.yaml
(photometry, then the artificial-star rounds reading its catalogue and PSF);
the per-star and summary tables are read back from the butler and checked
against what the rounds should have produced, and against a notebook run of
the task on the same inputs (the seed and the data ID fix the result).
"""

import logging

import numpy as np
import pytest

from lsst.meas.crowdsource import CrowdsourceInjectionConfig, CrowdsourceInjectionTask
from lsst.meas.crowdsource.io.butler import make_repo, put_calexp
from lsst.meas.crowdsource.io.ccddata import make_ccddata
from lsst.meas.crowdsource.testing.butler import register_visit
from lsst.meas.crowdsource.testing.simulate import simulate_field

SIZE = (160, 192)  # rows, columns
VISIT, DETECTOR = 9, 0
ROUNDS = 2


@pytest.fixture(scope="module")
def injection_run(tmp_path_factory, run_pipetask):
    repo = tmp_path_factory.mktemp("repo")
    butler = make_repo(repo)
    wcs = register_visit(
        butler,
        "SimCam",
        visit=VISIT,
        detectors=[DETECTOR],
        ra=270.0,
        dec=-30.0,
        detector_size=(SIZE[1], SIZE[0]),
    )
    f = simulate_field(SIZE, density=0.015, seed=31, psf="moffat", bad_columns=1)
    ccd = make_ccddata(
        f.image,
        f.variance,
        mask=f.mask,
        mask_planes=f.mask_planes,
        wcs=wcs[DETECTOR],
        psf=f.psf_stamp,
        photcalib=2.0,
    )
    put_calexp(butler, ccd, "sim/calexp", "SimCam", VISIT, DETECTOR)
    del butler
    run_pipetask(
        repo,
        "sim/calexp",
        "crowdsource/injection",
        "CrowdsourceInjectionNoAfw.yaml",
        extra=["-c", f"crowdsourceInjection:nRounds={ROUNDS}"],
    )
    from lsst.daf.butler import Butler

    return Butler.from_config(str(repo), collections="crowdsource/injection"), ccd


def test_pipetask_writes_the_injection_tables(injection_run):
    butler, ccd = injection_run
    data_id = dict(instrument="SimCam", visit=VISIT, detector=DETECTOR)
    stars = butler.get("crowdsource_injected", data_id)
    summary = butler.get(
        "crowdsource_injection_summary", data_id, parameters={"strip_astropy_meta_yaml": False}
    )
    metadata = butler.get("crowdsourceInjection_metadata", data_id)["crowdsourceInjection"]
    real = butler.get("crowdsource_source", data_id)
    assert set(stars["round"]) == set(range(ROUNDS))
    assert len(stars) == ROUNDS * max(20, int(0.05 * len(real)))
    assert (stars["visit"] == VISIT).all() and (stars["detector"] == DETECTOR).all()
    assert np.isfinite(stars["coord_ra"]).all() and np.isfinite(stars["coord_dec"]).all()
    ra, dec = ccd.wcs.all_pix2world(stars["x"], stars["y"], 0)
    np.testing.assert_allclose(stars["coord_ra"], ra, atol=1e-9)
    # AB magnitudes from the calexp's calibration (2 nJy per count).
    np.testing.assert_allclose(
        stars["injectedMag"], 31.4 - 2.5 * np.log10(2.0 * stars["injectedFlux"]), atol=1e-9
    )
    assert int(summary["nInjected"].sum()) == len(stars)
    assert int(summary["nRecovered"].sum()) == int(stars["recovered"].sum())
    # The bright half is found; the faint end (S/N 2.5) is not.
    assert summary["completeness"][0] > 0.8 and summary["completeness"][-1] < 0.5
    assert summary.meta["gain"] == pytest.approx(1.0, rel=0.05)
    assert summary["magMin"][0] < summary.meta["mag50"] < summary["magMax"][-1]
    assert metadata["mag50"] == summary.meta["mag50"]
    assert (
        metadata["nInjected"] == len(stars) and len(metadata.getArray("secondsPerRound")) == ROUNDS
    )
    # The matched sources are those of the round's catalogue: IDs carry the data ID.
    rec = stars["recovered"]
    assert (stars["sourceId"][rec] > 2**20).all()


def test_pipetask_result_is_the_notebook_result(injection_run):
    """Same inputs, seed and data ID: the quantum and task.run give the same stars."""
    butler, _ = injection_run
    data_id = dict(instrument="SimCam", visit=VISIT, detector=DETECTOR)
    config = CrowdsourceInjectionConfig()
    config.setNoAfwStorage()
    config.nRounds = 1
    logging.getLogger("lsst.crowdsourceInjection").setLevel(logging.WARNING)
    result = CrowdsourceInjectionTask(config=config).run(
        butler.get("calexp", data_id),
        sourceTable=butler.get("crowdsource_source", data_id),
        psf=butler.get("crowdsource_psf", data_id),
        visit=VISIT,
        detector=DETECTOR,
    )
    stars = butler.get("crowdsource_injected", data_id)
    first = stars[stars["round"] == 0]
    for name in ("x", "y", "injectedMag", "recovered", "recoveredFlux"):
        np.testing.assert_allclose(result.injectedTable[name], first[name])
