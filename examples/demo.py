"""``make demo``: a simulated crowded visit through a local butler and ``pipetask run``.

Run it as::

    python examples/demo.py [--output demo_output] [--quick] [-j 2] [--bps]

What it does, step by step (each step logs a line; pipetask's own output is
streamed, prefixed with ``pipetask |``):

1. **Simulate** a visit of a few detectors (default 4 of 512x512 pixels) of a
   crowded stellar field with `lsst.meas.crowdsource.testing.simulate.simulate_field`:
   one field covering the focal plane, cut into detectors (`simulate_visit`).
   It is the field of the benchmarks (``benchmarks/benchlib.py``; with the
   defaults the 1024x1024 focal plane holds the same random stars as the
   1024x1024 benchmark field, plus more saturated ones): 0.02 stars per pixel from S/N 2 to 3000, a
   galsim PSF (Kolmogorov x obscured optics with coma, varying across the
   field, FWHM 3.5 px), a sky of 1000 counts with a gradient, saturated
   stars with bleed trails (saturation 60000 counts) and one bad column per
   detector.  The truth is written to ``<output>/truth.ecsv``.
2. **Create a butler repository** ``<output>/repo`` (SQLite registry, file
   datastore; `lsst.meas.crowdsource.io.butler.make_repo`).  It is
   *deleted and re-created on every run*, so a run never sees outputs of an
   earlier one (the whole demo takes about a minute, and re-using outputs
   made with other arguments would silently mix two fields).  Register the
   instrument, detector, visit and region records (`register_visit`) and
   put the exposures as ``calexp`` (`astropy.nddata.CCDData` in the afw
   calexp FITS layout, storage class ``CrowdsourceCCDData``) in the run
   ``demo/calexp``.
3. **pipetask run** of ``pipelines/CrowdsourcePhotometryNoAfw.yaml`` with
   ``-j`` processes: output collection ``demo/photometry``
   (``crowdsource_source`` tables, ``crowdsource_model``,
   ``crowdsource_background``, ``crowdsource_psf``).
4. **Forced photometry** (when ``pipelines/CrowdsourceForcedPhotometryNoAfw.yaml``
   exists; otherwise the step is skipped with a log line): a target list
   in sky coordinates -- the true positions of sub-threshold stars
   (3 <= S/N < 5) and random "off-source" positions at least 7 px from
   every detected source, as in the DP0.2 forced-photometry tutorial -- is
   stored as the pipeline's reference dataset (``crowdsource_forced_targets``,
   no dimensions: one list for the whole visit; the name and dimensions are
   read from the pipeline's connections) in the run ``demo/targets``, and
   ``pipetask run`` writes ``crowdsource_forced_source`` to ``demo/forced``.
5. **Artificial stars** on the first detector (`CrowdsourceInjectionTask.run`
   in this process, on the calexp, catalogue and fitted PSF read back from
   the repository; ``--injection-rounds``, 0 to skip): completeness and flux
   bias per AB-magnitude bin, compared bin by bin with the completeness of
   the detector's true stars; ``injection.png`` and ``injection_density.png``.
6. **Score** the catalogues against the truth
   (`lsst.meas.crowdsource.testing.evaluation`, 1 px one-to-one match as in the
   benchmarks and tests), compute the crowded Cramér-Rao bound on a sample
   of stars, print a summary and write it to ``<output>/summary.json``, and
   draw the figures (`lsst.meas.crowdsource.testing.plotting`):
   ``detections.png``, ``residual.png``, ``completeness.png``,
   ``flux_error.png`` and ``forced.png``.

``--quick`` (2 detectors of 192x192, smaller samples) is what
``tests/test_demo.py`` runs.

``--bps`` runs steps 3 and 4 with ``bps submit`` (lsst-ctrl-bps through
lsst-ctrl-bps-parsl, the Parsl local site with ``-j`` workers) of the
package's ``bps/`` submit files instead of ``pipetask run``, into the same
collections; bps's output is streamed, prefixed with ``bps |``.  It writes
a submit file of its own to ``<output>/bps/`` for each step (the package's
file with ``site.local.cores`` set to ``-j``: how to change a site's
numbers), and bps writes its submit directories (quantum graph, one log per
quantum) to ``<output>/bps/submit/`` and Parsl's logs to
``<output>/bps/runinfo/``.
"""

from __future__ import annotations

__all__ = ["DemoSettings", "main", "run_demo"]

import argparse
import functools
import importlib.util
import json
import logging
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from astropy.table import Table, vstack

#: Instrument name, visit ID, collections.
INSTRUMENT = "DemoCam"
VISIT = 1
CALEXP_RUN = "demo/calexp"
TARGET_RUN = "demo/targets"
PHOT_OUTPUT = "demo/photometry"
FORCED_OUTPUT = "demo/forced"

#: Saturation level (counts; the sky is 1000), as in the benchmarks.
SATURATION = 60000.0
#: Side of the PSF stamp stored with each calexp (the true PSF at the
#: detector centre; the fit refines it), as in the benchmarks.
PSF_STAMP_SIZE = 59
#: Photometric calibration written to every calexp (nJy per count): S/N 5
#: is then about AB 24.6, like a single LSST visit.
NJY_PER_COUNT = 0.5
#: AB magnitude of 1 nJy.
AB_ZERO_NJY = 31.4
#: Boresight (a Baade's-window-like pointing) and pixel scale.
RA, DEC, PIXEL_SCALE = 270.9, -30.0, 0.2
#: True-S/N bins of the summary.
SUMMARY_BINS = ((5.0, 10.0), (10.0, 30.0), (30.0, math.inf))
#: One-to-one match radius (pixels), as in the benchmarks and tests.
MATCH_RADIUS = 1.0
#: Forced-photometry targets: the true positions of stars in this S/N range
#: (below the 5 sigma detection threshold), and random "off-source" positions
#: at least ``OFF_SOURCE_CLEARANCE`` pixels (2 FWHM) from every detected
#: source, as in the DP0.2 forced-photometry tutorial.
FAINT_SNR = (3.0, 5.0)
OFF_SOURCE_CLEARANCE = 7.0


@dataclass(frozen=True)
class DemoSettings:
    """Size of the demo run, and whether it runs through BPS (`bps`) or pipetask."""

    n_detectors: int = 4
    size: int = 512
    density: float = 0.02
    seed: int = 1
    jobs: int = 2
    bps: bool = False
    n_saturated: int = 5
    crb_sample: int = 250
    n_faint_targets: int = 150
    n_off_targets: int = 150
    injection_rounds: int = 8

    @classmethod
    def quick(cls) -> DemoSettings:
        """The reduced run of ``--quick`` (and of the tests)."""
        return cls(
            n_detectors=2,
            size=192,
            n_saturated=2,
            crb_sample=80,
            n_faint_targets=60,
            n_off_targets=60,
            injection_rounds=3,
        )


class _Progress:
    """Step log lines with the elapsed time, flushed at once."""

    def __init__(self, stream=None):
        self.t0 = time.perf_counter()
        self.stream = stream or sys.stdout
        self.timings: dict[str, float] = {}
        self._step_t0 = self.t0
        self._step: str | None = None

    def __call__(self, message: str) -> None:
        print(
            f"[demo {time.perf_counter() - self.t0:6.1f}s] {message}", file=self.stream, flush=True
        )

    def step(self, name: str, message: str) -> None:
        self.end_step()
        self._step, self._step_t0 = name, time.perf_counter()
        self(f"== {message}")

    def end_step(self) -> None:
        if self._step is not None:
            self.timings[self._step] = time.perf_counter() - self._step_t0
            self._step = None

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def package_root() -> Path:
    """The package's top directory (holding ``pipelines/`` and ``config/``)."""
    from lsst.meas.crowdsource.io.butler import config_dir

    return config_dir().parent


def _display(path: str | os.PathLike[str]) -> str:
    """``path`` relative to the working directory when it is inside it, else as is."""
    path = os.fspath(path)
    try:
        rel = os.path.relpath(path)
    except ValueError:  # another drive (Windows)
        return path
    return path if rel.startswith(os.pardir) else rel


def _shell_quote(arg: str) -> str:
    """Quote for a POSIX shell, preferring double quotes around single-quoted SQL strings."""
    quoted = shlex.quote(arg)
    if quoted != arg and not any(c in arg for c in '"$`\\!'):
        return f'"{arg}"'
    return quoted


def _pipetask_executable() -> str:
    exe = Path(sys.executable).parent / "pipetask"
    if exe.exists():
        return str(exe)
    found = shutil.which("pipetask")
    if found is None:
        raise FileNotFoundError("cannot find the pipetask command (install lsst-ctrl-mpexec)")
    return found


def run_pipetask(
    args: list[str], log_path: Path, progress: _Progress, prefix: str = "pipetask | "
) -> None:
    """Run ``pipetask`` with ``args``, streaming its output and saving it to ``log_path``.

    Raises
    ------
    RuntimeError
        If pipetask exits with a non-zero status (the last lines are in the
        message; the whole output is in ``log_path``).
    """
    _run_streamed(
        [_pipetask_executable(), *args], log_path, progress, prefix, dict(os.environ), None
    )


def _run_streamed(
    cmd: list[str],
    log_path: Path,
    progress: _Progress,
    prefix: str,
    env: dict[str, str],
    cwd: Path | None,
    new_session: bool = False,
) -> None:
    """Run ``cmd``, streaming its output to the progress stream and ``log_path``.

    With ``new_session`` the command leads a session of its own, and whatever
    is left of that session when it ends (Parsl's worker pool leaves the
    process tree but not the session) is terminated.  Raises `RuntimeError`
    with the last lines if the command fails.
    """
    progress("$ " + " ".join(_shell_quote(a) for a in cmd))
    env = dict(env, PYTHONUNBUFFERED="1")
    log_path.parent.mkdir(parents=True, exist_ok=True)
    tail: list[str] = []
    with (
        open(log_path, "w") as log,
        subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            cwd=cwd,
            bufsize=1,
            start_new_session=new_session,
        ) as proc,
    ):
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                print(prefix + line.rstrip("\n"), file=progress.stream, flush=True)
                tail = (tail + [line.rstrip("\n")])[-40:]
            code = proc.wait()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            if new_session:
                from lsst.meas.crowdsource.testing.bps import terminate_session

                left = terminate_session(proc.pid)
                if left:
                    progress(f"terminated {len(left)} process(es) left running: {left}")
    if code != 0:
        raise RuntimeError(
            f"{Path(cmd[0]).name} failed with exit code {code} (full output in {log_path}):\n"
            + "\n".join(tail)
        )


def write_bps_submit_file(workdir: Path, submit_file: str, cores: int) -> Path:
    """Write a submit file of the user's own: the package's ``bps/<submit_file>`` with the
    Parsl local site's ``cores`` changed (what README.md, "Scaling out", shows)."""
    from lsst.meas.crowdsource.testing.bps import bps_dir

    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / submit_file
    path.write_text(
        f"# Written by examples/demo.py --bps: the package's submit file, {cores} local workers.\n"
        f"includeConfigs:\n  - {bps_dir() / submit_file}\n"
        f"site:\n  local:\n    cores: {int(cores)}\n"
    )
    return path


def run_pipeline(
    step: str,
    pipeline: Path,
    inputs: str,
    collection: str,
    settings: DemoSettings,
    output: Path,
    progress: _Progress,
) -> None:
    """Run one of the package's pipelines on the demo visit: ``pipetask run -j``, or with
    ``settings.bps`` ``bps submit`` (Parsl local site, ``settings.jobs`` workers).

    ``step`` is ``"photometry"`` or ``"forced"``; the log goes to
    ``<output>/logs/{pipetask,bps}_<step>.log``.
    """
    repo = output / "repo"
    query = f"instrument='{INSTRUMENT}' AND visit={VISIT}"
    if not settings.bps:
        run_pipetask(
            [
                "run",
                "-b",
                str(repo),
                "-i",
                inputs,
                "-o",
                collection,
                "-p",
                str(pipeline),
                "-d",
                query,
                "-j",
                str(settings.jobs),
                "--register-dataset-types",
            ],
            output / "logs" / f"pipetask_{step}.log",
            progress,
        )
        return
    from lsst.meas.crowdsource.testing.bps import bps_environment, bps_submit_command

    workdir = output / "bps"
    name = (
        "CrowdsourcePhotometry.yaml" if step == "photometry" else "CrowdsourceForcedPhotometry.yaml"
    )
    submit_file = write_bps_submit_file(workdir, name, settings.jobs)
    cmd = bps_submit_command(
        submit_file,
        repo=repo,
        inputs=inputs,
        output=collection,
        data_query=query,
        pipeline=pipeline,
    )
    _run_streamed(
        cmd,
        output / "logs" / f"bps_{step}.log",
        progress,
        "bps | ",
        bps_environment(workdir),
        workdir,
        new_session=True,
    )
    progress(
        f"bps submit done: outputs in {collection!r}, job logs in "
        f"{_display(workdir / 'submit' / collection)}/<timestamp>/logs"
    )


# --------------------------------------------------------------------------
# Steps
# --------------------------------------------------------------------------


@dataclass
class DetectorField:
    """One detector of the simulated visit: a cutout of the simulated focal plane.

    Pixel coordinates are the detector's own (``xy0 = (0, 0)``), as in a
    calexp; ``offset`` is the detector's corner in the focal-plane mosaic.
    Has what the demo uses of a `~lsst.meas.crowdsource.testing.simulate.SimulatedField`.
    """

    detector: int
    image: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    sky: np.ndarray
    truth: Table
    offset: tuple[int, int]
    mosaic: Any  # the SimulatedField of the whole focal plane
    bad_column: int
    psf_stamp: np.ndarray
    xy0: tuple[int, int] = (0, 0)

    @property
    def shape(self) -> tuple[int, int]:
        return self.image.shape  # type: ignore[return-value]

    @property
    def mask_planes(self) -> dict[str, int]:
        return self.mosaic.mask_planes

    @property
    def gain(self) -> float:
        return self.mosaic.gain

    @property
    def read_noise(self) -> float:
        return self.mosaic.read_noise

    @property
    def sky_level(self) -> float:
        return float(self.mosaic.meta["sky"])

    def mask_bits(self, *names: str) -> int:
        return self.mosaic.mask_bits(*names)

    def psf_at(self, x, y, *, size: int | None = None, subpixel: bool = False) -> np.ndarray:
        """True PSF at detector pixel position(s) ``(x, y)`` (see `SimulatedField.psf_at`)."""
        return self.mosaic.psf_at(
            np.asarray(x, float) + self.offset[0],
            np.asarray(y, float) + self.offset[1],
            size=size,
            subpixel=subpixel,
        )


def simulate_visit(settings: DemoSettings, progress: _Progress) -> dict[int, DetectorField]:
    """Simulate the focal plane and cut it into detectors (see the module docstring).

    One field covering the whole mosaic is simulated (so the PSF tables are
    built once, the PSF and the sky vary smoothly across the focal plane,
    and stars near a detector edge spill onto its neighbour), then cut into
    ``n_detectors`` detectors laid out as `register_visit` lays them out
    (index ``i`` at column ``i % n_col``, row ``i // n_col`` of a near-square
    grid), so that the detectors' WCSs agree with the mosaic.  Each detector
    then gets one bad column of its own (garbage values, flagged BAD, as
    `simulate_field` makes them).
    """
    from lsst.meas.crowdsource.testing.simulate import simulate_field

    n = settings.n_detectors
    w = h = settings.size
    n_col = math.ceil(math.sqrt(n))
    n_row = math.ceil(n / n_col)
    t0 = time.perf_counter()
    mosaic = simulate_field(
        (n_row * h, n_col * w),
        density=settings.density,
        seed=settings.seed,
        psf="galsim",
        saturation=SATURATION,
        n_saturated=settings.n_saturated * n,
        bad_columns=0,
    )
    progress(
        f"simulated a {n_col * w}x{n_row * h} px focal plane: {len(mosaic.truth)} stars, "
        f"galsim PSF FWHM {mosaic.meta['fwhm']:g} px at the centre "
        f"[{time.perf_counter() - t0:.1f} s]"
    )
    rng = np.random.default_rng(settings.seed + 12345)
    bad_bit = 1 << mosaic.mask_planes["BAD"]
    t = mosaic.truth
    tx, ty = np.asarray(t["x"]), np.asarray(t["y"])
    margin = float(mosaic.meta["edge_margin"])
    fields = {}
    for det in range(n):
        ox, oy = (det % n_col) * w, (det // n_col) * h
        sl = (slice(oy, oy + h), slice(ox, ox + w))
        image = mosaic.image[sl].copy()
        mask = mosaic.mask[sl].copy()
        bad_col = int(rng.integers(10, w - 10))
        image[:, bad_col] = rng.uniform(0.0, 5.0 * max(mosaic.meta["sky"], 1.0), h)
        mask[:, bad_col] |= bad_bit
        near = (
            (tx >= ox - 0.5 - margin)
            & (tx < ox + w - 0.5 + margin)
            & (ty >= oy - 0.5 - margin)
            & (ty < oy + h - 0.5 + margin)
        )
        truth = t[near]
        truth["x"] = truth["x"] - ox
        truth["y"] = truth["y"] - oy
        x, y = np.asarray(truth["x"]), np.asarray(truth["y"])
        truth["in_image"] = (x >= -0.5) & (x < w - 0.5) & (y >= -0.5) & (y < h - 0.5)
        truth.meta.clear()
        f = DetectorField(
            detector=det,
            image=image,
            variance=mosaic.variance[sl].copy(),
            mask=mask,
            sky=mosaic.sky[sl].copy(),
            truth=truth,
            offset=(ox, oy),
            mosaic=mosaic,
            bad_column=bad_col,
            psf_stamp=np.empty(0),
        )
        f.psf_stamp = np.asarray(
            f.psf_at(float((w - 1) // 2), float((h - 1) // 2), size=PSF_STAMP_SIZE),
            dtype=np.float64,
        )
        inside = np.asarray(truth["in_image"], bool)
        progress(
            f"detector {det}: {w}x{h} px, {int(inside.sum())} stars "
            f"({int(np.sum(inside & (np.asarray(truth['snr']) >= 5)))} with S/N >= 5, "
            f"{int(np.sum(inside & np.asarray(truth['saturated'])))} saturated), "
            f"bad column x={bad_col}"
        )
        fields[det] = f
    return fields


def truth_table(fields: dict[int, DetectorField], wcs: dict[int, Any]) -> Table:
    """The truth of every star centred on a detector, with detector, sky position and AB mag."""
    tables = []
    for det, f in fields.items():
        t = f.truth[np.asarray(f.truth["in_image"], bool)]
        t.add_column(np.full(len(t), det, dtype=np.int32), name="detector", index=1)
        ra, dec = wcs[det].all_pix2world(np.asarray(t["x"]), np.asarray(t["y"]), 0)
        t["coord_ra"] = ra
        t["coord_ra"].unit = "deg"
        t["coord_dec"] = dec
        t["coord_dec"].unit = "deg"
        with np.errstate(divide="ignore"):
            t["mag"] = AB_ZERO_NJY - 2.5 * np.log10(np.asarray(t["flux"]) * NJY_PER_COUNT)
        t["mag"].unit = "mag"
        t["mag"].description = "true AB magnitude"
        tables.append(t)
    out = vstack(tables, metadata_conflicts="silent")
    out["x"].description = "true column, centre of light (detector pixels)"
    out["y"].description = "true row, centre of light (detector pixels)"
    out["in_image"].description = "centre inside its detector"
    out.meta.update({"instrument": INSTRUMENT, "visit": VISIT, "njy_per_count": NJY_PER_COUNT})
    return out


def make_demo_repo(repo: Path, fields: dict[int, Any], settings: DemoSettings, progress: _Progress):
    """Create the repository (deleting an earlier demo repo) and put the calexps."""
    from lsst.meas.crowdsource.io.butler import make_repo, put_calexp
    from lsst.meas.crowdsource.io.ccddata import make_ccddata
    from lsst.meas.crowdsource.testing.butler import register_visit

    if repo.exists():
        if not ((repo / "butler.yaml").exists() or not any(repo.iterdir())):
            raise FileExistsError(
                f"{repo} exists and is not a butler repository; "
                "refusing to delete it (choose another --output)"
            )
        progress(f"deleting the previous demo repository {_display(repo)}")
        shutil.rmtree(repo)
    butler = make_repo(repo)
    wcs = register_visit(
        butler,
        INSTRUMENT,
        visit=VISIT,
        detectors=sorted(fields),
        band="r",
        ra=RA,
        dec=DEC,
        detector_size=(settings.size, settings.size),
        pixel_scale=PIXEL_SCALE,
    )
    progress(f"registered instrument {INSTRUMENT!r}, visit {VISIT}, detectors {sorted(fields)}")
    for det, f in fields.items():
        ccd = make_ccddata(
            f.image,
            f.variance,
            mask=f.mask,
            mask_planes=f.mask_planes,
            wcs=wcs[det],
            psf=f.psf_stamp,
            xy0=f.xy0,
            photcalib=NJY_PER_COUNT,
        )
        put_calexp(butler, ccd, CALEXP_RUN, INSTRUMENT, VISIT, det)
    progress(f"put {len(fields)} calexps (CrowdsourceCCDData) in run {CALEXP_RUN!r}")
    return butler, wcs


def _reference_dataset(pipeline: Path, butler) -> tuple[str, str, tuple[str, ...]] | None:
    """Name, storage class and dimensions of the forced pipeline's reference input.

    Read from the pipeline's own connections (resolved against the
    repository), so that whatever the config calls them this follows.
    Returns `None` if the pipeline has no such input.
    """
    from lsst.pipe.base import Pipeline

    graph = Pipeline.from_uri(str(pipeline)).to_graph()
    graph.resolve(butler.registry)
    for task_node in graph.tasks.values():
        for edge in task_node.inputs.values():
            node = graph.dataset_types[edge.parent_dataset_type_name]
            if node.storage_class_name in ("ArrowAstropy", "ArrowTable", "DataFrame", "ArrowNumpy"):
                return node.name, node.storage_class_name, tuple(node.dimensions.names)
    return None


def forced_targets(
    fields: dict[int, DetectorField],
    wcs: dict[int, Any],
    catalogs: dict[int, Table],
    settings: DemoSettings,
) -> Table:
    """Target list: true positions of sub-threshold stars and random off-source positions.

    Parameters
    ----------
    fields : `dict` [`int`, `DetectorField`]
        The simulated detectors.
    wcs : `dict` [`int`, `astropy.wcs.WCS`]
        Their WCSs.
    catalogs : `dict` [`int`, `astropy.table.Table`]
        The photometry catalogues (off-source positions avoid their sources).
    settings : `DemoSettings`
        Numbers of targets.

    Returns
    -------
    targets : `astropy.table.Table`
        ``objectId``, ``coord_ra``, ``coord_dec`` (what the forced task
        reads) plus the demo's bookkeeping: ``detector``, ``x``, ``y``
        (detector pixels), ``kind`` (``"star"`` / ``"off"``), ``true_flux``
        and ``true_snr`` (0 for off-source positions).  Every target is at
        least 12 px inside its detector and away from the bad column and
        saturated pixels.
    """
    from scipy.spatial import cKDTree

    rows = []
    next_id = 1
    rng = np.random.default_rng(settings.seed + 7)
    edge = 12.0
    for det, f in fields.items():
        t = f.truth
        ny, nx = f.shape
        tx, ty = np.asarray(t["x"]), np.asarray(t["y"])
        snr = np.asarray(t["snr"])
        sat_near = _dilate((f.mask & f.mask_bits("SAT")) != 0, 6)

        def usable(x: np.ndarray, y: np.ndarray) -> np.ndarray:
            ok = (x > edge) & (x < nx - 1 - edge) & (y > edge) & (y < ny - 1 - edge)
            ok &= np.abs(x - f.bad_column) > 4
            ix = np.clip(np.round(x).astype(int), 0, nx - 1)
            iy = np.clip(np.round(y).astype(int), 0, ny - 1)
            return ok & ~sat_near[iy, ix]

        faint = np.flatnonzero(usable(tx, ty) & (snr >= FAINT_SNR[0]) & (snr < FAINT_SNR[1]))
        faint = np.sort(
            rng.choice(faint, size=min(settings.n_faint_targets, len(faint)), replace=False)
        )
        for i in faint:
            rows.append((next_id, det, tx[i], ty[i], "star", float(t["flux"][i]), float(snr[i])))
            next_id += 1
        cat = catalogs[det]
        cand = np.column_stack(
            [rng.uniform(edge, nx - 1 - edge, 20000), rng.uniform(edge, ny - 1 - edge, 20000)]
        )
        ok = usable(cand[:, 0], cand[:, 1])
        if len(cat):
            tree = cKDTree(
                np.column_stack([np.asarray(cat["x"], float), np.asarray(cat["y"], float)])
            )
            d, _ = tree.query(cand)
            ok &= d >= OFF_SOURCE_CLEARANCE
        for bx, by in cand[ok][: settings.n_off_targets]:
            rows.append((next_id, det, bx, by, "off", 0.0, 0.0))
            next_id += 1
    tab = Table(
        rows=rows,
        names=("objectId", "detector", "x", "y", "kind", "true_flux", "true_snr"),
        dtype=("i8", "i4", "f8", "f8", "U4", "f8", "f8"),
    )
    ra = np.empty(len(tab))
    dec = np.empty(len(tab))
    for det in fields:
        sel = np.asarray(tab["detector"]) == det
        ra[sel], dec[sel] = wcs[det].all_pix2world(
            np.asarray(tab["x"])[sel], np.asarray(tab["y"])[sel], 0
        )
    tab["coord_ra"] = ra
    tab["coord_ra"].unit = "deg"
    tab["coord_dec"] = dec
    tab["coord_dec"].unit = "deg"
    return tab


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Boolean dilation by a square of half-size ``radius``."""
    from scipy import ndimage

    if not mask.any():
        return mask
    return ndimage.binary_dilation(mask, structure=np.ones((2 * radius + 1, 2 * radius + 1), bool))


def run_forced(
    repo: Path,
    butler,
    fields,
    wcs,
    catalogs,
    settings: DemoSettings,
    output: Path,
    progress: _Progress,
) -> tuple[Table | None, str | None]:
    """Store the target list and run the forced pipeline.

    Returns the targets, or `None` and the reason when the forced pipeline
    is not available (then the step is skipped, not failed).
    """
    pipeline = package_root() / "pipelines" / "CrowdsourceForcedPhotometryNoAfw.yaml"
    if not pipeline.exists():
        why = f"{pipeline.name} is not in {pipeline.parent}"
        progress(f"skipping forced photometry: {why}")
        return None, why
    try:
        ref = _reference_dataset(pipeline, butler)
    except Exception as err:  # e.g. the task cannot be imported
        why = f"cannot read {pipeline.name} ({type(err).__name__}: {err})"
        progress(f"skipping forced photometry: {why}")
        return None, why
    if ref is None:
        why = f"{pipeline.name} has no table input"
        progress(f"skipping forced photometry: {why}")
        return None, why
    name, storage_class, dims = ref
    if not set(dims) <= {"instrument"}:
        why = (
            f"its reference dataset {name!r} has dimensions {list(dims)}, "
            "which the demo does not fill"
        )
        progress(f"skipping forced photometry: {why}")
        return None, why
    from lsst.daf.butler import DatasetType

    targets = forced_targets(fields, wcs, catalogs, settings)
    dtype = DatasetType(name, dims, storage_class, universe=butler.dimensions)
    butler.registry.registerDatasetType(dtype)
    butler.registry.registerRun(TARGET_RUN)
    data_id = {"instrument": INSTRUMENT} if "instrument" in dims else {}
    # One target list for the whole visit, in sky coordinates: each detector's
    # quantum measures the targets that fall on it (the others get NaN fluxes
    # and pixelFlags_offimage).
    butler.put(targets[["objectId", "coord_ra", "coord_dec"]], dtype, run=TARGET_RUN, **data_id)
    n_star = int(np.sum(targets["kind"] == "star"))
    progress(
        f"stored {len(targets)} targets ({n_star} true stars with {FAINT_SNR[0]:g} <= S/N < "
        f"{FAINT_SNR[1]:g}, {len(targets) - n_star} random positions "
        f">= {OFF_SOURCE_CLEARANCE:g} px "
        f"from every detected source) as {name!r} (dimensions {list(dims)}) in run {TARGET_RUN!r}"
    )
    targets.write(output / "targets.ecsv", overwrite=True)
    run_pipeline(
        "forced", pipeline, f"{CALEXP_RUN},{TARGET_RUN}", FORCED_OUTPUT, settings, output, progress
    )
    return targets, None


# --------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------


def _snr_mag_functions(field: DetectorField) -> tuple[Callable, Callable]:
    """S/N <-> AB mag of an isolated star on the mean sky with the PSF at the detector centre."""
    from lsst.meas.crowdsource.testing.simulate import snr_for_flux

    flux = np.geomspace(1.0, 1e9, 400)
    snr = snr_for_flux(flux, field.psf_stamp, field.sky_level, field.gain, field.read_noise)
    mag = AB_ZERO_NJY - 2.5 * np.log10(flux * NJY_PER_COUNT)
    log_snr = np.log10(snr)

    def snr_to_mag(s):
        s = np.clip(np.asarray(s, float), 1e-3, None)
        return np.interp(np.log10(s), log_snr, mag)

    def mag_to_snr(m):
        return 10 ** np.interp(np.asarray(m, float), mag[::-1], log_snr[::-1])

    return snr_to_mag, mag_to_snr


def read_outputs(butler, fields) -> dict[int, dict[str, Any]]:
    """The photometry outputs of every detector: catalogue, model, sky, PSF FWHM."""
    from lsst.meas.crowdsource.engine.psf_io import psf_from_dict

    out = {}
    for det, f in fields.items():
        data_id = dict(instrument=INSTRUMENT, visit=VISIT, detector=det)
        ny, nx = f.shape
        try:  # a diagnostic only
            psf = psf_from_dict(butler.get("crowdsource_psf", data_id, collections=PHOT_OUTPUT))
            fwhm = float(psf.fwhm((nx - 1) / 2.0, (ny - 1) / 2.0))
        except Exception:
            fwhm = float("nan")
        out[det] = {
            "catalog": butler.get("crowdsource_source", data_id, collections=PHOT_OUTPUT),
            "model": np.asarray(butler.get("crowdsource_model", data_id, collections=PHOT_OUTPUT)),
            "background": np.asarray(
                butler.get("crowdsource_background", data_id, collections=PHOT_OUTPUT)
            ),
            "psf_fwhm": fwhm,
        }
    return out


def evaluate(
    outputs: dict[int, dict[str, Any]],
    fields: dict[int, DetectorField],
    settings: DemoSettings,
    progress: _Progress,
) -> dict[str, Any]:
    """Score the photometry outputs against the truth and the Cramér-Rao bound."""
    from lsst.meas.crowdsource.testing.evaluation import (
        crowded_crb_flux_error,
        robust_scatter,
        score_catalog,
    )

    per_det = []
    agg: dict[str, list[np.ndarray]] = {
        k: [] for k in ("snr", "detected", "frac", "rep", "msnr", "crb_snr", "crb_frac", "crb_z")
    }
    n_det_total = n_spur_total = 0
    for det, f in fields.items():
        t0 = time.perf_counter()
        cat = outputs[det]["catalog"]
        x, y = np.asarray(cat["x"], float), np.asarray(cat["y"], float)
        flux = np.asarray(cat["psfInstFlux"], float)
        err = np.asarray(cat["psfInstFluxErr"], float)
        res = score_catalog(x, y, flux, err, f.truth, radius=MATCH_RADIUS)
        match = res["match"]
        t = f.truth
        inside = np.asarray(t["in_image"], bool)
        tsnr = np.asarray(t["snr"], float)
        tflux = np.asarray(t["flux"], float)
        sat = np.asarray(t["saturated"], bool)
        d = match.truth_to_det
        agg["snr"].append(tsnr[inside])
        agg["detected"].append(d[inside] >= 0)
        m = inside & (d >= 0)
        agg["msnr"].append(tsnr[m])
        agg["frac"].append((flux[d[m]] - tflux[m]) / tflux[m])
        agg["rep"].append(err[d[m]] / tflux[m])
        n_spur = int(np.count_nonzero(~match.det_matched))
        n_det_total += len(x)
        n_spur_total += n_spur
        good = (f.mask & f.mask_bits("BAD", "SAT")) == 0
        sky_offset = float(np.median((outputs[det]["background"] - f.sky)[good]))
        per_det.append(
            {
                "detector": det,
                "n_sources": len(x),
                "n_good_flux": int(np.sum(~np.asarray(cat["psfFlux_flag"], bool))),
                "n_true": int(inside.sum()),
                "n_true_snr5": int(np.sum(inside & (tsnr >= 5))),
                "n_matched": int(np.sum(m)),
                "n_spurious": n_spur,
                "completeness_snr5": res["summary"]["completeness"],
                "sky_offset": sky_offset,
                "psf_fwhm": outputs[det]["psf_fwhm"],
            }
        )
        # Crowded Cramér-Rao bound on a sample of stars (BAD and SAT pixels
        # excluded), as benchmarks/benchlib.py computes it.
        crb = crowded_crb_flux_error(
            t,
            functools.partial(f.psf_at, subpixel=True),
            f.variance,
            sample=settings.crb_sample,
            xy0=f.xy0,
            mask=~good,
            seed=det,
        )
        ci = np.asarray(crb["index"])
        sig = np.asarray(crb["sigma_flux"], float)
        agg["crb_snr"].append(tsnr[ci])
        agg["crb_frac"].append(sig / tflux[ci])
        cd = d[ci]
        z = np.full(len(ci), np.nan)
        ok = (cd >= 0) & np.isfinite(sig) & ~sat[ci]
        z[ok] = (flux[cd[ok]] - tflux[ci[ok]]) / sig[ok]
        agg["crb_z"].append(z)
        progress(
            f"detector {det}: {len(x)} sources, {int(np.sum(m))} matched to true stars, "
            f"{n_spur} unmatched; crowded Cramér-Rao bound of {len(ci)} stars "
            f"[{time.perf_counter() - t0:.1f} s]"
        )
    a = {k: np.concatenate(v) for k, v in agg.items()}

    bins = []
    for lo, hi in SUMMARY_BINS:
        s_all = (a["snr"] >= lo) & (a["snr"] < hi)
        s_m = (a["msnr"] >= lo) & (a["msnr"] < hi)
        s_c = (a["crb_snr"] >= lo) & (a["crb_snr"] < hi)
        n = int(s_all.sum())
        bins.append(
            {
                "snr_lo": lo,
                "snr_hi": hi,
                "n_true": n,
                "n_matched": int(s_m.sum()),
                "completeness": float(np.sum(a["detected"][s_all]) / n) if n else float("nan"),
                "flux_scatter": robust_scatter(a["frac"][s_m]),
                "flux_bias": float(np.median(a["frac"][s_m])) if s_m.any() else float("nan"),
                "crb_crowded": float(np.nanmedian(a["crb_frac"][s_c]))
                if s_c.any()
                else float("nan"),
                "crb_isolated": float(np.median(1.0 / a["snr"][s_all])) if n else float("nan"),
                "scatter_over_crb": robust_scatter(a["crb_z"][s_c]),
                "n_crb": int(np.sum(s_c & np.isfinite(a["crb_z"]))),
            }
        )
    return {
        "detectors": per_det,
        "bins": bins,
        "n_sources": n_det_total,
        "n_spurious": n_spur_total,
        "spurious_fraction": n_spur_total / n_det_total if n_det_total else float("nan"),
        "sky_offset": float(np.median([d["sky_offset"] for d in per_det])),
        "arrays": a,
    }


def evaluate_forced(butler, targets: Table, fields) -> dict[str, Any]:
    """Forced fluxes at off-source positions (pulls) and at faint stars (vs truth)."""
    from lsst.meas.crowdsource.testing.evaluation import robust_scatter

    by_id = {int(o): i for i, o in enumerate(targets["objectId"])}
    flux = np.full(len(targets), np.nan)
    err = np.full(len(targets), np.nan)
    for det in fields:
        tab = butler.get(
            "crowdsource_forced_source",
            dict(instrument=INSTRUMENT, visit=VISIT, detector=det),
            collections=FORCED_OUTPUT,
        )
        for oid, fl, er in zip(
            np.asarray(tab["objectId"]),
            np.asarray(tab["psfInstFlux"], float),
            np.asarray(tab["psfInstFluxErr"], float),
        ):
            i = by_id.get(int(oid))
            # Every detector reports every target; keep the measurement on its own detector.
            if i is not None and int(targets["detector"][i]) == det and np.isfinite(fl):
                flux[i], err[i] = fl, er
    off = np.asarray(targets["kind"]) == "off"
    star = ~off
    t = np.asarray(targets["true_flux"], float)
    with np.errstate(invalid="ignore", divide="ignore"):
        pull = (flux - t) / err
    fin = np.isfinite(pull)

    def med(v: np.ndarray) -> float:
        return float(np.median(v)) if len(v) else float("nan")

    return {
        "n_off": int(off.sum()),
        "n_off_measured": int(np.sum(off & fin)),
        "off_pull_median": med(pull[off & fin]),
        "off_pull_scatter": robust_scatter(pull[off & fin]),
        "n_star": int(star.sum()),
        "n_star_measured": int(np.sum(star & fin)),
        "star_pull_median": med(pull[star & fin]),
        "star_pull_scatter": robust_scatter(pull[star & fin]),
        "star_flux_ratio_median": med(flux[star & fin] / t[star & fin]),
        "arrays": {"pull": pull, "off": off},
    }


# --------------------------------------------------------------------------
# Figures and summary
# --------------------------------------------------------------------------


def make_figures(
    output: Path,
    fields: dict[int, DetectorField],
    outputs: dict[int, dict[str, Any]],
    score: dict[str, Any],
    forced: dict[str, Any] | None,
    progress: _Progress,
) -> dict[str, str]:
    """Write the PNGs; return ``{name: path}``."""
    from lsst.meas.crowdsource.testing import plotting
    from lsst.meas.crowdsource.testing.evaluation import match_to_truth

    det = min(fields)
    f = fields[det]
    cat, model = outputs[det]["catalog"], outputs[det]["model"]
    x, y = np.asarray(cat["x"], float), np.asarray(cat["y"], float)
    flux = np.asarray(cat["psfInstFlux"], float)
    t = f.truth
    tx, ty = np.asarray(t["x"]), np.asarray(t["y"])
    match = match_to_truth(x, y, tx, ty, MATCH_RADIUS, flux=flux, truth_flux=np.asarray(t["flux"]))
    missed = (
        (match.truth_to_det < 0) & np.asarray(t["in_image"], bool) & (np.asarray(t["snr"]) >= 5)
    )
    # Zoom on the brightest saturated star clear of the edges and of the bad
    # column (saturation, a bleed trail and crowding in one cutout), placed
    # off-centre so that more of the crowd is in view; else the centre.
    ny, nx = f.shape
    half = min(48, nx // 2, ny // 2)
    cand = np.flatnonzero(
        np.asarray(t["saturated"], bool)
        & (tx > half)
        & (tx < nx - 1 - half)
        & (ty > half)
        & (ty < ny - 1 - half)
        & (np.abs(tx - f.bad_column) > 15)
    )
    prefer = []
    if len(cand):
        j = cand[np.argmax(np.asarray(t["flux"])[cand])]
        prefer = [(tx[j] + 0.25 * half, ty[j] + 0.25 * half)]
    box = plotting.choose_cutout(f.shape, 2 * half, f.xy0, prefer)
    paths = {}
    paths["detections"] = plotting.plot_detections(
        output / "detections.png",
        f.image,
        x,
        y,
        det_matched=match.det_matched,
        missed_x=tx[missed],
        missed_y=ty[missed],
        box=box,
        xy0=f.xy0,
        title=f"detector {det}: crowdsource sources on the simulated image (asinh stretch)",
    )
    bad = (f.mask & f.mask_bits("BAD", "SAT")) != 0
    rbox = plotting.choose_cutout(f.shape, min(160, nx, ny), f.xy0, prefer)
    paths["residual"] = plotting.plot_residual(
        output / "residual.png",
        f.image,
        model,
        f.variance,
        bad=bad,
        box=rbox,
        xy0=f.xy0,
        title=f"detector {det}: image, crowdsource model and normalised residual",
    )
    a = score["arrays"]
    snr_to_mag, mag_to_snr = _snr_mag_functions(f)
    n_det = len(fields)
    paths["completeness"] = plotting.plot_completeness(
        output / "completeness.png",
        a["snr"],
        a["detected"],
        snr_to_mag=snr_to_mag,
        mag_to_snr=mag_to_snr,
        threshold=5.0,
        title=f"completeness, {n_det} detectors ({len(a['snr'])} true stars inside the images)",
    )
    paths["flux_error"] = plotting.plot_flux_error(
        output / "flux_error.png",
        a["msnr"],
        a["frac"],
        reported_frac_err=a["rep"],
        crb_snr=a["crb_snr"],
        crb_frac=a["crb_frac"],
        snr_to_mag=snr_to_mag,
        mag_to_snr=mag_to_snr,
        title=f"photometric error against the truth, {n_det} detectors",
    )
    if forced is not None:
        fa = forced["arrays"]
        off = fa["off"]
        paths["forced"] = plotting.plot_forced(
            output / "forced.png",
            fa["pull"][off],
            fa["pull"][~off],
            blank_label=f"random positions ≥ {OFF_SOURCE_CLEARANCE:g} px from detections",
            star_label=f"true stars, {FAINT_SNR[0]:g} ≤ S/N < {FAINT_SNR[1]:g}",
            star_ratio=forced["star_flux_ratio_median"],
            title="forced photometry (targets fit together with every detected source)",
        )
    paths = {name: _display(p) for name, p in paths.items()}
    for p in paths.values():
        progress(f"wrote {p}")
    return paths


def run_injection(butler, fields, outputs, settings: DemoSettings, progress: _Progress):
    """Artificial stars on the first detector, scored against its truth the same way.

    `CrowdsourceInjectionTask.run` in this process (the notebook way), on the
    calexp, catalogue and fitted PSF read back from the repository; then the
    true stars of that detector are summarised in the same magnitude bins
    (`lsst.meas.crowdsource.artificial_stars.summarize`, one-to-one match
    within 1 px) and the two compared bin by bin (`compare_summaries`).
    Returns `None` when ``settings.injection_rounds`` is 0.
    """
    if settings.injection_rounds <= 0:
        progress("skipping the artificial stars (--injection-rounds 0)")
        return None
    from lsst.meas.crowdsource import CrowdsourceInjectionConfig, CrowdsourceInjectionTask
    from lsst.meas.crowdsource import artificial_stars as art
    from lsst.meas.crowdsource.testing.evaluation import match_to_truth

    det = min(fields)
    data_id = dict(instrument=INSTRUMENT, visit=VISIT, detector=det)
    config = CrowdsourceInjectionConfig()
    config.setNoAfwStorage()
    config.nRounds = settings.injection_rounds
    config.magBinWidth = 1.0
    t0 = time.perf_counter()
    result = CrowdsourceInjectionTask(config=config).run(
        butler.get("calexp", data_id, collections=CALEXP_RUN),
        sourceTable=outputs[det]["catalog"],
        psf=butler.get("crowdsource_psf", data_id, collections=PHOT_OUTPUT),
        visit=VISIT,
        detector=det,
    )
    seconds = time.perf_counter() - t0
    inj = result.summaryTable
    cat, t = outputs[det]["catalog"], fields[det].truth
    inside = np.asarray(t["in_image"], bool)
    match = match_to_truth(
        cat["x"],
        cat["y"],
        t["x"],
        t["y"],
        MATCH_RADIUS,
        flux=cat["psfInstFlux"],
        truth_flux=t["flux"],
    )
    d = match.truth_to_det[inside]
    pick = np.where(d >= 0, d, 0)
    tflux = np.asarray(t["flux"], float)[inside]
    flux = np.where(d >= 0, np.asarray(cat["psfInstFlux"], float)[pick], np.nan)
    err = np.where(d >= 0, np.asarray(cat["psfInstFluxErr"], float)[pick], np.nan)
    mag = inj.meta["zeroPoint"] - 2.5 * np.log10(tflux)
    edges = np.append(inj["magMin"], inj["magMax"][-1])
    tru = art.summarize(mag, d >= 0, tflux, flux, err, edges)
    cmp = art.compare_summaries(inj, tru, min_stars=10)
    stars = result.injectedTable
    progress(
        f"detector {det}: {len(stars)} artificial stars in {config.nRounds} rounds of "
        f"{int(np.median(result.roundTable['nInjected']))}, {int(stars['recovered'].sum())} "
        f"recovered [{seconds:.1f} s, {np.mean(result.roundTable['seconds']):.1f} s per round]"
    )
    rows = []
    for a, b, c in zip(inj, tru, cmp):
        rows.append(
            {
                k: float(v)
                for k, v in (
                    ("mag_lo", a["magMin"]),
                    ("mag_hi", a["magMax"]),
                    ("n_injected", a["nInjected"]),
                    ("completeness_injected", a["completeness"]),
                    ("err_injected", a["completenessErr"]),
                    ("n_true", b["nInjected"]),
                    ("completeness_true", b["completeness"]),
                    ("err_true", b["completenessErr"]),
                    ("z", c["completenessZ"]),
                    ("bias_injected", a["fluxBias"]),
                    ("bias_true", b["fluxBias"]),
                )
            }
        )
    return {
        "detector": det,
        "rounds": config.nRounds,
        "n_injected": len(stars),
        "n_recovered": int(stars["recovered"].sum()),
        "mag50_injected": inj.meta["mag50"],
        "mag50_true": art.completeness_magnitude(tru),
        "seconds": seconds,
        "seconds_per_round": float(np.mean(result.roundTable["seconds"])),
        "real_pull_median": [float(v) for v in result.roundTable["realPullMedian"]],
        "bins": rows,
        "tables": {"summary": inj, "truth": tru, "stars": stars},
    }


def injection_figures(output: Path, injection: dict[str, Any], progress: _Progress):
    """``injection.png`` (completeness and bias against magnitude, with the truth's) and
    ``injection_density.png`` (completeness against the local density)."""
    from lsst.meas.crowdsource.testing.injection_plots import (
        plot_completeness_density,
        plot_injection_summary,
    )

    tables, det = injection["tables"], injection["detector"]
    paths = {
        "injection": plot_injection_summary(
            output / "injection.png",
            tables["summary"],
            truth_summary=tables["truth"],
            mag_label="AB magnitude",
            title=f"detector {det}: artificial stars against the simulation's true stars",
        ),
        "injection_density": plot_completeness_density(
            output / "injection_density.png",
            tables["stars"],
            title=f"detector {det}: artificial-star completeness against local density",
        ),
    }
    paths = {name: _display(p) for name, p in paths.items()}
    for p in paths.values():
        progress(f"wrote {p}")
    return paths


def format_injection(injection: dict[str, Any]) -> list[str]:
    """The summary lines of the artificial-star step."""
    lines = [
        f"artificial stars (detector {injection['detector']}: {injection['n_injected']} stars in "
        f"{injection['rounds']} rounds, {injection['seconds_per_round']:.1f} s per round)",
        f"  {'AB mag':>11} {'injected':>8} {'complete':>13} {'true':>6} {'complete':>13} {'z':>5}",
    ]
    for b in injection["bins"]:
        lines.append(
            f"  {b['mag_lo']:5.2f}-{b['mag_hi']:5.2f} {int(b['n_injected']):>8d} "
            f"{_fmt(b['completeness_injected'], 2):>6} ± {_fmt(b['err_injected'], 2):<4} "
            f"{int(b['n_true']):>6d} {_fmt(b['completeness_true'], 2):>6} ± "
            f"{_fmt(b['err_true'], 2):<4} {_fmt_signed(b['z'], 1):>5}"
        )
    lines.append(
        f"  50 % completeness: AB {_fmt(injection['mag50_injected'], 2)} from the artificial "
        f"stars, {_fmt(injection['mag50_true'], 2)} against the truth"
    )
    lines.append(
        "  (z: two-proportion binomial z of the difference, bins with >= 10 stars of each)"
    )
    lines.append("")
    return lines


def _fmt(v: float, nd: int = 3) -> str:
    return "—" if v is None or not np.isfinite(v) else f"{v:.{nd}f}"


def _fmt_signed(v: float, nd: int = 3) -> str:
    return "—" if v is None or not np.isfinite(v) else f"{v:+.{nd}f}"


def format_summary(
    settings: DemoSettings,
    score: dict[str, Any],
    forced: dict[str, Any] | None,
    timings: dict[str, float],
    total: float,
    figures: dict[str, str],
    forced_note: str | None,
) -> str:
    """The text summary printed at the end."""
    lines = ["", "=" * 86, "meas_crowdsource demo: summary", "=" * 86]
    n_true = sum(d["n_true"] for d in score["detectors"])
    lines.append(
        f"field: {settings.n_detectors} detectors of {settings.size}x{settings.size} px, "
        f"{settings.density:g} stars/px down to S/N 2, galsim PSF (FWHM 3.5 px), sky gradient,"
    )
    lines.append(
        f"       saturated stars with bleed trails, 1 bad column per detector; {n_true} true "
        "stars on the detectors"
    )
    lines.append("")
    lines.append("sources per detector")
    lines.append(
        f"  {'detector':>8} {'sources':>8} {'good flux':>9} {'true':>6} {'true S/N>=5':>11} "
        f"{'matched':>8} {'unmatched':>9} {'PSF FWHM':>9} {'sky-true':>8}"
    )
    for d in score["detectors"]:
        lines.append(
            f"  {d['detector']:>8d} {d['n_sources']:>8d} {d['n_good_flux']:>9d} {d['n_true']:>6d} "
            f"{d['n_true_snr5']:>11d} {d['n_matched']:>8d} {d['n_spurious']:>9d} "
            f"{_fmt(d['psf_fwhm'], 2):>9} {d['sky_offset']:>+8.1f}"
        )
    lines.append(
        "  (good flux: psfFlux_flag not set; PSF FWHM: fitted, pixels, at the detector centre;"
    )
    lines.append(
        "   sky-true: median fitted sky minus true sky, counts/px, of a sky of 1000 -- the light of"
    )
    lines.append("   stars below the detection limit ends up in the sky)")
    lines.append("")
    lines.append(
        f"against the truth (one-to-one match within {MATCH_RADIUS:g} px; "
        "S/N = true isolated-star S/N)"
    )
    lines.append(
        f"  {'true S/N':>9} {'stars':>6} {'complete':>8} {'scatter (f-t)/t':>15} "
        f"{'median (f-t)/t':>14} {'crowded CRB':>11} {'scatter/CRB':>11}"
    )
    for b in score["bins"]:
        label = (
            f"{b['snr_lo']:g}-{b['snr_hi']:g}" if np.isfinite(b["snr_hi"]) else f">{b['snr_lo']:g}"
        )
        lines.append(
            f"  {label:>9} {b['n_true']:>6d} {_fmt(b['completeness']):>8} "
            f"{_fmt(b['flux_scatter']):>15} {_fmt_signed(b['flux_bias']):>14} "
            f"{_fmt(b['crb_crowded']):>11} {_fmt(b['scatter_over_crb'], 2):>11}"
        )
    lines.append("  (scatter: 1.4826 MAD of (f-t)/t of the matched stars; crowded CRB: median")
    lines.append("   sigma/flux of the Cramér-Rao bound of a joint fit of all stars, on a sample;")
    lines.append("   scatter/CRB: robust scatter of (f-t)/sigma_CRB of the unsaturated sampled")
    lines.append("   stars, 1 = at the bound)")
    lines.append(
        f"spurious fraction: {_fmt(score['spurious_fraction'])} "
        f"({score['n_spurious']} of {score['n_sources']} sources have no true star within "
        f"{MATCH_RADIUS:g} px)"
    )
    lines.append("")
    if forced is not None:
        lines.append("forced photometry (targets fit together with every detected source)")
        lines.append(
            f"  {forced['n_off_measured']}/{forced['n_off']} random positions >= "
            f"{OFF_SOURCE_CLEARANCE:g} px from any detection: flux/error median "
            f"{forced['off_pull_median']:+.2f}, robust sigma {_fmt(forced['off_pull_scatter'], 2)}"
        )
        lines.append(
            f"  {forced['n_star_measured']}/{forced['n_star']} true stars with "
            f"{FAINT_SNR[0]:g} <= S/N < {FAINT_SNR[1]:g}: (f-t)/error median "
            f"{forced['star_pull_median']:+.2f}, robust sigma "
            f"{_fmt(forced['star_pull_scatter'], 2)}; median f/t "
            f"{_fmt(forced['star_flux_ratio_median'], 2)}"
        )
    else:
        lines.append(f"forced photometry: skipped ({forced_note})")
    lines.append("")
    lines.append(
        "run time: "
        + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
        + f"; total {total:.0f} s"
    )
    lines.append("figures: " + ", ".join(figures.values()))
    lines.append("=" * 86)
    return "\n".join(lines)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items() if k not in ("arrays", "outputs", "tables")}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        v = float(obj)
        return v if math.isfinite(v) else None
    return obj


def run_demo(
    output: str | os.PathLike[str] = "demo_output",
    settings: DemoSettings | None = None,
    stream=None,
) -> dict[str, Any]:
    """Run the whole demo; return the summary (also written to ``<output>/summary.json``).

    Parameters
    ----------
    output : path-like, optional
        Output directory; ``<output>/repo`` is deleted and re-created.
    settings : `DemoSettings`, optional
        Sizes; default the full demo.
    stream : file-like, optional
        Where progress and the summary are printed (default stdout).
    """
    settings = settings or DemoSettings()
    # Without pandas installed, daf_butler warns about the ArrowAstropy -> DataFrame
    # converter it cannot import on every read; nothing here uses pandas.
    logging.getLogger("lsst.daf.butler._storage_class").setLevel(logging.ERROR)
    output = Path(output).resolve()
    output.mkdir(parents=True, exist_ok=True)
    repo = output / "repo"
    progress = _Progress(stream)
    progress(
        f"meas_crowdsource demo into {_display(output)} ({settings.n_detectors} detectors of "
        f"{settings.size}x{settings.size} px, {settings.density:g} stars/px, "
        + (
            f"bps submit, Parsl local site, {settings.jobs} workers)"
            if settings.bps
            else f"pipetask -j {settings.jobs})"
        )
    )

    progress.step(
        "simulate", "1/6 simulating the visit (galsim PSF; this builds the PSF tables first)"
    )
    fields = simulate_visit(settings, progress)

    progress.step("butler", f"2/6 creating the butler repository {_display(repo)}")
    butler, wcs = make_demo_repo(repo, fields, settings, progress)
    truth = truth_table(fields, wcs)
    truth.write(output / "truth.ecsv", overwrite=True)
    progress(f"wrote the truth ({len(truth)} stars) to {_display(output / 'truth.ecsv')}")

    runner = "bps submit (Parsl)" if settings.bps else "pipetask run"
    progress.step("photometry", f"3/6 {runner}: CrowdsourcePhotometryTask on every detector")
    pipeline = package_root() / "pipelines" / "CrowdsourcePhotometryNoAfw.yaml"
    run_pipeline("photometry", pipeline, CALEXP_RUN, PHOT_OUTPUT, settings, output, progress)

    progress.step("forced", "4/6 forced photometry at a target list")
    from lsst.daf.butler import Butler

    butler = Butler.from_config(str(repo), writeable=True)
    outputs = read_outputs(butler, fields)
    progress(
        "read back the catalogues: "
        + ", ".join(f"detector {d}: {len(o['catalog'])} sources" for d, o in outputs.items())
    )
    catalogs = {d: o["catalog"] for d, o in outputs.items()}
    targets, forced_note = run_forced(
        repo, butler, fields, wcs, catalogs, settings, output, progress
    )

    progress.step("injection", "5/6 artificial stars: CrowdsourceInjectionTask on one detector")
    injection = run_injection(butler, fields, outputs, settings, progress)

    progress.step("evaluate", "6/6 scoring against the truth and drawing the figures")
    score = evaluate(outputs, fields, settings, progress)
    forced = evaluate_forced(butler, targets, fields) if targets is not None else None
    figures = make_figures(output, fields, outputs, score, forced, progress)
    if injection is not None:
        figures.update(injection_figures(output, injection, progress))
    progress.end_step()

    total = progress.elapsed
    text = format_summary(settings, score, forced, progress.timings, total, figures, forced_note)
    if injection is not None:
        marker = "\nrun time: "
        head, tail = text.split(marker, 1)
        text = head + "\n".join(format_injection(injection)) + "\n" + marker + tail
    print(text, file=progress.stream, flush=True)
    summary = {
        "settings": asdict(settings),
        "output": str(output),
        "repo": str(repo),
        "collections": {
            "calexp": CALEXP_RUN,
            "photometry": PHOT_OUTPUT,
            "forced": FORCED_OUTPUT if forced is not None else None,
        },
        "detectors": score["detectors"],
        "bins": score["bins"],
        "n_sources": score["n_sources"],
        "n_spurious": score["n_spurious"],
        "spurious_fraction": score["spurious_fraction"],
        "sky_offset": score["sky_offset"],
        "forced": forced,
        "forced_note": forced_note,
        "injection": injection,
        "timings": progress.timings,
        "total_seconds": total,
        "figures": figures,
    }
    summary = _jsonable(summary)
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
    (output / "summary.txt").write_text(text.strip() + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point (``python examples/demo.py``)."""
    parser = argparse.ArgumentParser(
        prog="python examples/demo.py",
        description="Simulate a crowded visit, run the crowdsource pipelines on a local butler "
        "repository with pipetask, and score the outputs against the truth.",
    )
    parser.add_argument(
        "--output",
        "-o",
        default="demo_output",
        help="output directory (its repo/ is re-created on every run); default %(default)s",
    )
    parser.add_argument(
        "--quick", action="store_true", help="2 detectors of 192x192 px (what the tests run)"
    )
    parser.add_argument("--detectors", type=int, help="number of detectors (default 4; quick 2)")
    parser.add_argument("--size", type=int, help="detector side in pixels (default 512; quick 192)")
    parser.add_argument("--density", type=float, help="stars per pixel (default 0.02)")
    parser.add_argument("--seed", type=int, help="random seed (default 1)")
    parser.add_argument(
        "-j", "--jobs", type=int, help="pipetask processes, or Parsl workers with --bps (default 2)"
    )
    parser.add_argument(
        "--injection-rounds",
        type=int,
        help="rounds of artificial stars on detector 0 (default 8; quick 3; 0 skips the step)",
    )
    parser.add_argument(
        "--bps",
        action="store_true",
        help="run the pipelines with bps submit through Parsl (lsst-ctrl-bps-parsl) on this "
        "machine instead of pipetask run",
    )
    args = parser.parse_args(argv)
    settings = DemoSettings.quick() if args.quick else DemoSettings()
    overrides = {
        k: v
        for k, v in (
            ("n_detectors", args.detectors),
            ("size", args.size),
            ("density", args.density),
            ("seed", args.seed),
            ("jobs", args.jobs),
            ("injection_rounds", args.injection_rounds),
        )
        if v is not None
    }
    settings = replace(settings, **overrides, bps=args.bps)
    if args.bps and importlib.util.find_spec("lsst.ctrl.bps.parsl") is None:
        parser.error("--bps needs lsst-ctrl-bps-parsl (on Python >= 3.12; see pyproject.toml)")
    if settings.n_detectors < 1 or settings.size < 64 or settings.jobs < 1 or settings.density <= 0:
        parser.error("need --detectors >= 1, --size >= 64, --jobs >= 1 and --density > 0")
    try:
        run_demo(args.output, settings)
    except (RuntimeError, FileExistsError, FileNotFoundError) as err:
        print(f"demo failed: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
