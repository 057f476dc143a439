#!/usr/bin/env python
"""Parallelism across quanta (pipetask -j, BPS/Parsl workers) against inside a detector.

    python benchmarks/scale_out.py              # 8 detectors of 1024x1024, tileSize 512
    python benchmarks/scale_out.py --quick      # 3 of 256x256, tileSize 128; ~3 min

One local butler repository holds N detectors of one visit (the benchmark
field of ``benchlib.simulated_field``, seeds 1..N, cached), and
CrowdsourcePhotometryNoAfw runs on all of them, in one go, three ways on
``--workers`` (2) cores:

- ``pipetask run -j 2``: two quanta at a time, each fitting its tiles serially;
- ``bps submit`` of ``bps/CrowdsourcePhotometry.yaml`` with the Parsl local
  site (``cores: 2``): the same, each quantum a ``pipetask run-qbb`` job;
- ``pipetask run -j 1`` with ``fit.nProcesses=2``: one quantum at a time, its
  tiles fit in two processes.

Every run uses ``fit.tileSize`` = ``--tile-size`` (default 512, so that a
1024x1024 detector has four tiles for ``fit.nProcesses`` to share; with the
default 1024 it would be one tile and nothing to parallelise) and writes its
own output collection of the same repository.  Measured per run: wall time
of the whole command (graph building, start-up, execution and, for BPS, the
final job), the CPU time and the peak of the summed RSS of every process the
command started (`lsst.meas.crowdsource.testing.bps.SessionMonitor`: the
command leads a session, which also holds the Parsl worker pool that leaves
the process tree), and the largest RSS of one process.  The catalogues of
the three runs are compared with the first.

Writes results/scale_out.json and results/scale_out.md (``--quick``: in the
cache directory, as the other benchmarks do).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from lsst.meas.crowdsource.testing.bps import (
    bps_dir,
    bps_executable,
    bps_submit_command,
    run_in_session,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl  # noqa: E402

INSTRUMENT = "BenchCam"
VISIT = 1
CALEXP_RUN = "bench/calexp"
LABEL = "crowdsourcePhotometry"
PIPELINE = "CrowdsourcePhotometryNoAfw.yaml"
MIB = 2**20


def build_repo(repo: Path, n_detectors: int, size: int, density: float, cache: Path) -> int:
    """A fresh repository with ``n_detectors`` benchmark fields; returns the star count."""
    from lsst.meas.crowdsource.io.butler import make_repo, put_calexp
    from lsst.meas.crowdsource.io.ccddata import make_ccddata
    from lsst.meas.crowdsource.testing.butler import register_visit

    if repo.exists():
        shutil.rmtree(repo)
    butler = make_repo(repo)
    wcs = register_visit(
        butler,
        INSTRUMENT,
        visit=VISIT,
        detectors=range(n_detectors),
        ra=270.9,
        dec=-30.0,
        detector_size=(size, size),
    )
    n_stars = 0
    for det in range(n_detectors):
        cached = bl.simulated_field(size, density, seed=det + 1, cache_dir=cache)
        fld = cached.field
        ny, nx = fld.shape
        cx, cy = fld.xy0[0] + (nx - 1) // 2, fld.xy0[1] + (ny - 1) // 2
        psf = np.asarray(fld.psf_at(float(cx), float(cy), size=bl.PSF_STAMP_SIZE), float)
        ccd = make_ccddata(
            fld.image,
            fld.variance,
            mask=fld.mask,
            mask_planes=fld.mask_planes,
            wcs=wcs[det],
            psf=psf,
            xy0=fld.xy0,
            photcalib=1.0,
        )
        put_calexp(butler, ccd, CALEXP_RUN, INSTRUMENT, VISIT, det)
        n_stars += len(fld.truth)
    return n_stars


def run_config(name: str, cmd: list[str], workdir: Path, log: Path) -> dict[str, Any]:
    """Run one configuration, measuring its session; fail loudly if it fails."""
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"[{name}] $ {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    code, monitor, leftovers = run_in_session(cmd, workdir, log, interval=0.5)
    wall = time.perf_counter() - t0
    if code != 0:
        raise RuntimeError(f"{name} failed ({code}); the end of {log}:\n{log.read_text()[-3000:]}")
    row = {
        "name": name,
        "command": cmd,
        "wall_seconds": wall,
        "cpu_seconds": monitor.cpu_seconds,
        "peak_total_rss_mib": monitor.peak_total_rss / MIB,
        "peak_process_rss_mib": monitor.peak_single_rss(lambda cmd: True) / MIB,
        "n_processes_seen": len(monitor.commands),
        "leftover_processes": list(leftovers.values()),
        "loadavg_end": os.getloadavg(),
    }
    print(
        f"[{name}] {wall:.1f} s wall, {row['cpu_seconds']:.0f} s CPU, peak "
        f"{row['peak_total_rss_mib']:.0f} MiB total, {row['peak_process_rss_mib']:.0f} MiB "
        "largest process",
        flush=True,
    )
    return row


def catalogs(repo: Path, output: str, n_detectors: int) -> dict[int, Any]:
    from lsst.daf.butler import Butler

    butler = Butler.from_config(str(repo), collections=output)
    return {
        det: butler.get("crowdsource_source", instrument=INSTRUMENT, visit=VISIT, detector=det)
        for det in range(n_detectors)
    }


def same_catalogs(a: dict[int, Any], b: dict[int, Any]) -> bool:
    """Whether two runs' catalogues are identical (every column, every detector)."""
    for det, ta in a.items():
        tb = b[det]
        if ta.colnames != tb.colnames or len(ta) != len(tb):
            return False
        for col in ta.colnames:
            va, vb = np.asarray(ta[col]), np.asarray(tb[col])
            if not np.array_equal(va, vb, equal_nan=va.dtype.kind == "f"):
                return False
    return True


def markdown(res: dict[str, Any]) -> str:
    m, s = res["machine"], res["settings"]
    lines = [
        "# Scaling out: across quanta or inside a detector",
        "",
        f"{m['date']}; {m['cpu']}, {m['n_cpu']} cores, {m['memory_gib']} GiB; "
        f"package at {m['git_commit']}; load average at the start "
        f"{', '.join(f'{v:.1f}' for v in m['loadavg_start'])}.",
        f"{s['n_detectors']} detectors of {s['size']}x{s['size']} px (benchmark fields, "
        f"{s['density']:g} stars/px, seeds 1-{s['n_detectors']}: {res['n_stars']} stars), "
        f"CrowdsourcePhotometryNoAfw with fit.tileSize={s['tile_size']} "
        f"({res['tiles_per_detector']} tiles per detector), {s['workers']} cores.",
        "",
        "| run | wall (s) | detectors / min | CPU (s) | peak RSS, all processes (MiB) "
        "| largest process (MiB) | sources | same catalogue as the first | load avg at end |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["runs"]:
        lines.append(
            f"| {r['name']} | {r['wall_seconds']:.1f} "
            f"| {60 * s['n_detectors'] / r['wall_seconds']:.2f} | {r['cpu_seconds']:.0f} "
            f"| {r['peak_total_rss_mib']:.0f} | {r['peak_process_rss_mib']:.0f} "
            f"| {r['n_sources']} | {'yes' if r['same_as_first'] else 'NO'} "
            f"| {r['loadavg_end'][0]:.1f} |"
        )
    lines += [
        "",
        "Wall: the whole command (quantum graph, start-up, execution; for BPS also the "
        "pipetaskInit and final aggregate-graph jobs). CPU: user + system of every process "
        "the command started, sampled every 0.5 s. Peak RSS: the largest sum over those "
        "processes in one sample (pages shared by forked workers count once per process); "
        "largest process: the largest RSS of any one of them. Load avg: the 1-minute load "
        f"average when the run ended ({s['workers']} of it is the run itself; the rest is other "
        "work on the machine, which slows every run).",
    ]
    if res.get("busy"):
        lines += ["", "Other processes using CPU at the start: " + "; ".join(res["busy"])]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--detectors", type=int, default=8)
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--tile-size", type=int, default=512)
    ap.add_argument("--density", type=float, default=0.02)
    ap.add_argument("--workers", type=int, default=2, help="pipetask -j, BPS cores, nProcesses")
    ap.add_argument("--quick", action="store_true", help="3 detectors of 256x256, tileSize 128")
    ap.add_argument("--cache-dir", type=Path, default=bl.DEFAULT_CACHE)
    ap.add_argument("--out-dir", type=Path, default=None)
    ap.add_argument(
        "--report-only", action="store_true", help="rebuild the .md from the existing results json"
    )
    args = ap.parse_args(argv)
    if args.quick:
        args.detectors, args.size, args.tile_size = 3, 256, 128
    out_dir = bl.output_dir(args.out_dir, args.cache_dir, args.quick)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / ("scale_out_quick" if args.quick else "scale_out")
    if args.report_only:
        res = json.loads(Path(f"{stem}.json").read_text())
        Path(f"{stem}.md").write_text(markdown(res))
        print(Path(f"{stem}.md").read_text())
        return 0
    work = args.cache_dir / ("scale_out_quick" if args.quick else "scale_out")
    work.mkdir(parents=True, exist_ok=True)
    repo = work / "repo"

    machine = bl.machine_info()
    busy = bl.other_load()
    n_stars = build_repo(repo, args.detectors, args.size, args.density, args.cache_dir)
    print(f"repository {repo}: {args.detectors} detectors, {n_stars} stars", flush=True)

    pipeline = bps_dir().parent / "pipelines" / PIPELINE
    query = f"instrument='{INSTRUMENT}' AND visit={VISIT}"
    tile = f"{LABEL}:fit.tileSize={args.tile_size}"
    n = args.workers

    def pipetask(output: str, jobs: int, *config: str) -> list[str]:
        cmd = [bps_executable("pipetask"), "run", "-b", str(repo), "-i", CALEXP_RUN]
        cmd += ["-o", output, "-p", str(pipeline), "-d", query, "-j", str(jobs)]
        for c in (tile, *config):
            cmd += ["-c", c]
        return cmd + ["--register-dataset-types"]

    if n != 2:
        raise SystemExit("the local site of bps/parsl.yaml has cores: 2; --workers must be 2")
    configs = [
        (f"pipetask run -j {n}", "bench/pipetask_j", pipetask("bench/pipetask_j", n)),
        (
            f"bps submit, Parsl local site, {n} workers",
            "bench/bps",
            bps_submit_command(
                bps_dir() / "CrowdsourcePhotometry.yaml",
                repo=repo,
                inputs=CALEXP_RUN,
                output="bench/bps",
                data_query=query,
                pipeline=pipeline,
                config_overrides=[tile],
            ),
        ),
        (
            f"pipetask run -j 1, fit.nProcesses={n}",
            "bench/pipetask_tiles",
            pipetask("bench/pipetask_tiles", 1, f"{LABEL}:fit.nProcesses={n}"),
        ),
    ]
    runs = []
    first = None
    for i, (name, output, cmd) in enumerate(configs):
        row = run_config(name, cmd, work / f"run{i}", work / f"run{i}.log")
        cats = catalogs(repo, output, args.detectors)
        first = first or cats
        row["n_sources"] = int(sum(len(t) for t in cats.values()))
        row["same_as_first"] = same_catalogs(first, cats)
        runs.append(row)

    from lsst.meas.crowdsource.config import CrowdsourceFitConfig
    from lsst.meas.crowdsource.engine.tiling import make_tiles

    overlap = CrowdsourceFitConfig().tileOverlap
    tiles = len(make_tiles((args.size, args.size), args.tile_size, overlap))
    res = {
        "machine": machine,
        "busy": busy,
        "settings": {
            "n_detectors": args.detectors,
            "size": args.size,
            "tile_size": args.tile_size,
            "density": args.density,
            "workers": n,
        },
        "n_stars": n_stars,
        "tiles_per_detector": tiles,
        "runs": runs,
    }
    Path(f"{stem}.json").write_text(json.dumps(res, indent=2, default=float))
    Path(f"{stem}.md").write_text(markdown(res))
    print(Path(f"{stem}.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
