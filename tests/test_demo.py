"""The `make demo` driver, in its reduced --quick mode, end to end.

Runs ``python examples/demo.py --quick`` (2 detectors of
192x192 px: simulation, local butler repository, ``pipetask run`` of the
photometry and forced-photometry pipelines, scoring, figures) into a
temporary directory and checks the summary against the truth and the
outputs on disk.  Takes well under a minute on 2 idle cores.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DEMO = Path(__file__).resolve().parents[1] / "examples" / "demo.py"
FIGURES = (
    "detections",
    "residual",
    "completeness",
    "flux_error",
    "injection",
    "injection_density",
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    proc = subprocess.run(
        [sys.executable, str(DEMO), "--quick", "--output", str(out)],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    return out, summary, proc


@pytest.mark.slow
def test_demo_progress_and_summary_printed(quick_demo):
    out, summary, proc = quick_demo
    text = proc.stdout
    for step in ("1/6", "2/6", "3/6", "4/6", "5/6", "6/6"):
        assert f"] == {step}" in text
    assert "pipetask | " in text  # pipetask's own output is streamed
    assert "meas_crowdsource demo: summary" in text
    assert "spurious fraction" in text
    assert (out / "summary.txt").read_text().strip() in text
    assert (out / "logs" / "pipetask_photometry.log").stat().st_size > 0


@pytest.mark.slow
def test_demo_numbers_sane_against_truth(quick_demo):
    _, summary, _ = quick_demo
    assert summary["settings"]["n_detectors"] == 2 and summary["settings"]["size"] == 192
    dets = summary["detectors"]
    assert [d["detector"] for d in dets] == [0, 1]
    for d in dets:
        # ~740 true stars per detector, ~330 of them with S/N >= 5.
        assert 500 < d["n_true"] < 1000
        assert 150 < d["n_sources"] < d["n_true"]
        assert d["n_matched"] > 0.6 * d["n_sources"]
        assert d["n_good_flux"] >= 0.9 * d["n_sources"]
        assert 2.8 < d["psf_fwhm"] < 4.5  # true FWHM 3.5 px
    bins = {(b["snr_lo"], b["snr_hi"]): b for b in summary["bins"]}
    faint, mid, bright = bins[(5.0, 10.0)], bins[(10.0, 30.0)], bins[(30.0, None)]
    assert bright["n_true"] > 100 and mid["n_true"] > 100
    # Bright stars are found; completeness grows with S/N.
    assert bright["completeness"] > 0.8
    assert mid["completeness"] > 0.55
    assert bright["completeness"] > mid["completeness"] > faint["completeness"]
    # Bright-star fluxes agree with the truth to a few per cent; the scatter
    # grows towards faint stars and cannot beat the Cramér-Rao bound.
    assert bright["flux_scatter"] < 0.12
    assert abs(bright["flux_bias"]) < 0.1
    assert faint["flux_scatter"] > bright["flux_scatter"]
    for b in (faint, mid, bright):
        assert b["crb_crowded"] > 0
        assert b["flux_scatter"] > 0.8 * b["crb_crowded"]
    assert 0.0 <= summary["spurious_fraction"] < 0.4
    assert summary["n_sources"] == sum(d["n_sources"] for d in dets)


@pytest.mark.slow
def test_demo_artificial_stars_against_the_truth(quick_demo):
    _, summary, proc = quick_demo
    inj = summary["injection"]
    assert inj["detector"] == 0 and inj["rounds"] == 3
    assert inj["n_injected"] >= 60 and 0 < inj["n_recovered"] < inj["n_injected"]
    # Few stars in --quick: the 50 % magnitudes agree to within the binomial noise.
    assert abs(inj["mag50_injected"] - inj["mag50_true"]) < 0.75
    bright = inj["bins"][0]
    assert bright["completeness_injected"] > 0.7 and bright["completeness_true"] > 0.7
    assert "artificial stars (detector 0" in proc.stdout


@pytest.mark.slow
def test_demo_forced_photometry(quick_demo):
    out, summary, _ = quick_demo
    if not (ROOT / "pipelines" / "CrowdsourceForcedPhotometryNoAfw.yaml").exists():
        assert summary["forced"] is None and summary["forced_note"]
        pytest.skip("no forced-photometry pipeline in this checkout")
    forced = summary["forced"]
    assert forced is not None, summary["forced_note"]
    assert forced["n_off"] > 50 and forced["n_star"] > 50
    # Every target on its detector is measured.
    assert forced["n_off_measured"] == forced["n_off"]
    assert forced["n_star_measured"] == forced["n_star"]
    # Off-source positions: fluxes near zero (the light of undetected stars and
    # the sky they raise widen and shift this a little); sub-threshold stars:
    # fluxes near the truth.
    assert abs(forced["off_pull_median"]) < 1.5
    assert 0.7 < forced["off_pull_scatter"] < 3.0
    assert 0.7 < forced["star_flux_ratio_median"] < 1.5
    from astropy.table import Table

    targets = Table.read(out / "targets.ecsv")
    assert len(targets) == forced["n_off"] + forced["n_star"]
    assert {"objectId", "coord_ra", "coord_dec"} <= set(targets.colnames)


@pytest.mark.slow
def test_demo_outputs_on_disk(quick_demo):
    out, summary, _ = quick_demo
    from astropy.table import Table
    from matplotlib.image import imread

    truth = Table.read(out / "truth.ecsv")
    assert set(truth["detector"]) == {0, 1}
    assert sum(d["n_true"] for d in summary["detectors"]) == len(truth)
    assert (out / "repo" / "butler.yaml").exists()
    names = list(FIGURES) + (["forced"] if summary["forced"] is not None else [])
    assert sorted(summary["figures"]) == sorted(names)
    for name in names:
        path = out / f"{name}.png"
        assert Path(summary["figures"][name]).resolve() == path.resolve()
        assert path.read_bytes()[:8] == PNG_MAGIC
        assert path.stat().st_size > 20_000
        img = imread(path)
        assert img.shape[0] >= 400 and img.shape[1] >= 600
        assert np.std(img[..., :3]) > 0.05  # not a blank canvas


def test_demo_refuses_to_delete_a_non_repository(tmp_path):
    spec = importlib.util.spec_from_file_location("crowdsource_demo", DEMO)
    demo = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = demo  # dataclasses look their module up there
    spec.loader.exec_module(demo)
    make_demo_repo = demo.make_demo_repo

    (tmp_path / "repo").mkdir()
    (tmp_path / "repo" / "precious.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="not a butler repository"):
        make_demo_repo(tmp_path / "repo", {}, None, print)
    assert (tmp_path / "repo" / "precious.txt").exists()
