"""``bps submit`` through Parsl (local site, 2 workers) gives what ``pipetask run`` gives.

A local repository of three small detectors and one target list; photometry
then forced photometry, each once with ``pipetask run`` and once with
``bps submit`` of the package's ``bps/`` submit files (the NoAfw pipelines
given with ``-p``); the catalogues and models must be identical.  Skipped
where lsst-ctrl-bps-parsl is not installed (Python 3.11).
"""

import sys
from pathlib import Path

import numpy as np
import pytest
from astropy.table import Table

from lsst.meas.crowdsource.io.butler import make_repo, put_calexp, put_forced_targets
from lsst.meas.crowdsource.io.ccddata import make_ccddata
from lsst.meas.crowdsource.testing.bps import (
    bps_dir,
    bps_submit_command,
    output_run,
    run_in_session,
)
from lsst.meas.crowdsource.testing.butler import register_visit
from lsst.meas.crowdsource.testing.simulate import simulate_field

pytest.importorskip("lsst.ctrl.bps.parsl")
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc"),
]

ROOT = Path(__file__).resolve().parents[1]
SIZE = (128, 160)  # rows, columns
DETECTORS = (0, 1, 2)
VISIT = 7
QUERY = "instrument='SimCam'"
STEPS = {
    # step: (submit file, pipeline, input collections, dataset types to compare)
    "photometry": (
        "CrowdsourcePhotometry.yaml",
        "CrowdsourcePhotometryNoAfw.yaml",
        "sim/calexp",
        ("crowdsource_source", "crowdsource_model", "crowdsource_background"),
    ),
    "forced": (
        "CrowdsourceForcedPhotometry.yaml",
        "CrowdsourceForcedPhotometryNoAfw.yaml",
        "sim/calexp,sim/targets",
        ("crowdsource_forced_source", "crowdsource_forced_model"),
    ),
}


def is_quantum(cmd: str) -> bool:
    """A ``pipetask run-qbb`` process (not the shell that Parsl's bash app runs it in)."""
    argv = cmd.split()
    return bool(argv) and "python" in Path(argv[0]).name and "run-qbb" in argv


def build_repo(repo: Path) -> None:
    """Three detectors of a crowded field and a target list in sky coordinates."""
    butler = make_repo(repo)
    wcs = register_visit(
        butler,
        "SimCam",
        visit=VISIT,
        detectors=DETECTORS,
        ra=270.0,
        dec=-30.0,
        detector_size=(SIZE[1], SIZE[0]),
    )
    rng = np.random.default_rng(3)
    ra, dec = [], []
    for det in DETECTORS:
        field = simulate_field(SIZE, density=0.01, seed=60 + det, psf="moffat", bad_columns=1)
        ccd = make_ccddata(
            field.image,
            field.variance,
            mask=field.mask,
            mask_planes=field.mask_planes,
            wcs=wcs[det],
            psf=field.psf_stamp,
            photcalib=2.5,
        )
        put_calexp(butler, ccd, "sim/calexp", "SimCam", VISIT, det)
        # Ten true stars and five random positions per detector.
        truth = field.truth
        inside = np.flatnonzero(np.asarray(truth["in_image"]) & (np.asarray(truth["snr"]) > 10))
        pick = rng.choice(inside, 10, replace=False)
        x = np.concatenate([np.asarray(truth["x"])[pick], rng.uniform(10, SIZE[1] - 10, 5)])
        y = np.concatenate([np.asarray(truth["y"])[pick], rng.uniform(10, SIZE[0] - 10, 5)])
        r, d = wcs[det].all_pix2world(x, y, 0)
        ra.append(r)
        dec.append(d)
    targets = Table(
        {"coord_ra": np.concatenate(ra), "coord_dec": np.concatenate(dec)}, units=("deg", "deg")
    )
    targets["objectId"] = np.arange(len(targets), dtype=np.int64) + 100
    put_forced_targets(butler, targets, "sim/targets")


def submit(repo: Path, workdir: Path, step: str) -> dict:
    """``bps submit`` one step in ``workdir``, watching the processes it starts."""
    submit_file, pipeline, inputs, _ = STEPS[step]
    workdir.mkdir()
    cmd = bps_submit_command(
        bps_dir() / submit_file,
        repo=repo,
        inputs=inputs,
        output=f"bps/{step}",
        data_query=QUERY,
        pipeline=ROOT / "pipelines" / pipeline,
    )
    log = workdir / "bps_submit.log"
    code, monitor, leftovers = run_in_session(cmd, workdir, log, interval=0.25, timeout=900)
    text = log.read_text()
    assert code == 0, text[-5000:]
    return {"log": text, "monitor": monitor, "leftovers": leftovers, "workdir": workdir}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, run_pipetask):
    from lsst.daf.butler import Butler

    base = tmp_path_factory.mktemp("bps")
    repo = base / "repo"
    build_repo(repo)
    submissions = {}
    for step, (_, pipeline, inputs, _) in STEPS.items():
        run_pipetask(repo, inputs, f"pipetask/{step}", pipeline)
        submissions[step] = submit(repo, base / f"work_{step}", step)
    return Butler.from_config(str(repo)), submissions


@pytest.mark.parametrize("step", list(STEPS))
def test_bps_outputs_equal_pipetask(runs, step):
    """Same sources, same fluxes, same model and sky images, on every detector."""
    butler, _ = runs
    dataset_types = STEPS[step][3]
    n_rows = 0
    for det in DETECTORS:
        data_id = dict(instrument="SimCam", visit=VISIT, detector=det)
        for name in dataset_types:
            ours = butler.get(name, data_id, collections=f"bps/{step}")
            ref = butler.get(name, data_id, collections=f"pipetask/{step}")
            if isinstance(ref, Table):
                assert ours.colnames == ref.colnames
                assert len(ours) == len(ref) > 0
                for col in ref.colnames:
                    np.testing.assert_array_equal(ours[col], ref[col], err_msg=f"{name}.{col}")
                n_rows += len(ref)
            else:
                assert ours.shape == SIZE
                np.testing.assert_array_equal(ours, ref, err_msg=name)
    if step == "photometry":
        assert n_rows > 150  # crowded: each detector has dozens of sources
    else:
        assert n_rows == 3 * 45  # every target, on every detector


@pytest.mark.parametrize("step", list(STEPS))
def test_bps_results_are_where_the_readme_says(runs, step):
    """Outputs in the RUN collection <output>/<timestamp> chained into <output> with the
    inputs; the quantum graph, config and one log per quantum in the submit directory
    under the working directory; Parsl's run directory there too."""
    butler, submissions = runs
    run = output_run(butler, f"bps/{step}")
    chain = butler.collections.get_info(f"bps/{step}").children
    assert list(chain[1:]) == STEPS[step][2].split(",")
    refs = butler.query_datasets(STEPS[step][3][0], collections=run)
    assert sorted(ref.dataId["detector"] for ref in refs) == list(DETECTORS)
    submit_dir = submissions[step]["workdir"] / "submit" / run
    assert len(list(submit_dir.glob("*.qg"))) == 1
    label = "crowdsourcePhotometry" if step == "photometry" else "crowdsourceForcedPhotometry"
    logs = sorted((submit_dir / "logs" / label).rglob("*.stdout"))
    assert len(logs) == len(DETECTORS)
    assert (submit_dir / "logs" / "finalJob").is_dir()
    assert list((submissions[step]["workdir"] / "runinfo").glob("*/parsl.log"))


@pytest.mark.parametrize("step", list(STEPS))
def test_bps_ran_on_two_parsl_workers_and_cleaned_up(runs, step):
    """The quanta ran as separate ``pipetask run-qbb`` processes, two at a time, under a
    Parsl worker pool; when ``bps submit`` returned, nothing it started was still running."""
    _, submissions = runs
    monitor = submissions[step]["monitor"]
    assert len(monitor.matching(is_quantum)) == len(DETECTORS)
    assert monitor.max_concurrent(is_quantum) == 2
    assert monitor.matching(lambda cmd: "process_worker_pool" in cmd)
    assert monitor.matching(lambda cmd: "interchange" in cmd)
    assert submissions[step]["leftovers"] == {}


def test_shipped_site_configurations():
    """The local, Slurm and USDF sites of bps/parsl.yaml build the Parsl executors they
    document (no job is submitted)."""
    from lsst.ctrl.bps import BPS_DEFAULTS, BPS_SEARCH_ORDER, BpsConfig
    from lsst.ctrl.bps.parsl.site import SiteConfig
    from parsl.providers import LocalProvider, SlurmProvider

    def executors(site):
        config = BpsConfig(
            str(bps_dir() / "CrowdsourcePhotometry.yaml"),
            search_order=BPS_SEARCH_ORDER,
            defaults=BPS_DEFAULTS,
        )
        assert config["wmsServiceClass"] == "lsst.ctrl.bps.parsl.ParslService"
        assert config["computeSite"] == "local"
        config[".bps_cmdline.computeSite"] = site
        config[".bps_defined.uniqProcName"] = "crowdsource_test"
        return SiteConfig.from_config(config).get_parsl_config().executors

    (local,) = executors("local")
    assert isinstance(local.provider, LocalProvider) and local.max_workers_per_node == 2
    (slurm,) = executors("slurm")
    assert isinstance(slurm.provider, SlurmProvider)
    assert slurm.provider.nodes_per_block == 1 and slurm.provider.cores_per_node == 32
    assert slurm.provider.walltime == "04:00:00"
    (sdf,) = executors("slac")
    assert isinstance(sdf.provider, SlurmProvider) and sdf.label == "sdf"
    assert "#SBATCH --partition=rubin" in sdf.provider.scheduler_options
    assert sdf.provider.max_blocks == 2


def test_demo_submit_file_overrides_the_local_cores(tmp_path):
    """``examples/demo.py --bps`` writes a submit file of the user's own that includes the
    package's and changes the local site's worker count, as the README shows."""
    import importlib.util

    from lsst.ctrl.bps import BPS_DEFAULTS, BPS_SEARCH_ORDER, BpsConfig

    spec = importlib.util.spec_from_file_location(
        "crowdsource_demo_bps", ROOT / "examples" / "demo.py"
    )
    demo = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = demo  # dataclasses look their module up there
    spec.loader.exec_module(demo)
    path = demo.write_bps_submit_file(tmp_path, "CrowdsourceForcedPhotometry.yaml", 3)
    config = BpsConfig(str(path), search_order=BPS_SEARCH_ORDER, defaults=BPS_DEFAULTS)
    assert config[".site.local.cores"] == 3
    assert config[".site.local.class"] == "lsst.ctrl.bps.parsl.sites.Local"
    assert config["pipelineYaml"].endswith("pipelines/CrowdsourceForcedPhotometry.yaml")
    assert config[".payload.payloadName"] == "crowdsource_forced"
