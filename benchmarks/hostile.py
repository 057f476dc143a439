"""Hostile inputs: time and outcome of the fit on defects nobody masked, against the clean image.

    .venv/bin/python benchmarks/hostile.py                      # 128^2 and 512^2 (~2 min)
    .venv/bin/python benchmarks/hostile.py --sizes 128 --repeat 3
    # an older checkout, for the "before" column (each run is cut at --timeout)
    .venv/bin/python benchmarks/hostile.py --pythonpath /path/to/old/python --out before.json

Each case is the benchmark field (`benchlib.simulated_field`: GalSim PSF,
saturated stars, a bad column; the true PSF stamp given), at 0.02 and
0.0015 stars/px, and the field of issue 14's report (``--densities 0``:
20 Gaussian stars on a flat sky, `report_planes`), with one defect painted
in and left unmasked:

- ``clean``: nothing;
- ``plateau-1e9``: the left half reads 1e9 (a runaway amplifier), variance unchanged;
- ``step``: the left half offset by 100 sky sigma (an amplifier jump);
- ``hot-column``: one column at 1e9;
- ``variance-100x-small``: the variance divided by 100.

Each run is a fresh process (`run_case`), cut at ``--timeout`` seconds;
reported: wall time (min of ``--repeat``), sources, the most new peaks in
one pass, passes, the defects found and the noise ratio.  Writes
``results/hostile.{json,md}``.  Nothing here is asserted: the tests
(``tests/test_bad_inputs.py``) check the outcomes, this measures the cost.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

import benchlib as bl

HERE = Path(__file__).resolve().parent
SEED = 1
CASES = ("clean", "plateau-1e9", "step", "hot-column", "variance-100x-small")


def painted(planes, case: str) -> tuple[np.ndarray, np.ndarray]:
    """Image and variance of the field's ``planes`` (its npz) with the defect of ``case``."""
    image = planes["image"].astype(float)
    variance = planes["variance"].astype(float)
    nx = image.shape[1]
    if case == "plateau-1e9":
        image[:, : nx // 2] = 1e9
    elif case == "step":
        image[:, : nx // 2] += 100 * np.sqrt(np.median(variance))
    elif case == "hot-column":
        image[:, nx // 3] = 1e9
    elif case == "variance-100x-small":
        variance = variance / 100
    elif case != "clean":
        raise ValueError(f"unknown case {case!r}")
    return image, variance


def report_planes(size: int) -> dict:
    """The field of issue 14's report: 20 Gaussian stars (FWHM 4.7 px, 1e3-1e5 counts) on a
    flat sky of 1000 with noise 30, no mask, the true PSF (a 25x25 stamp); as the npz planes."""
    rng = np.random.default_rng(0)
    image = 1000 + rng.normal(0, 30, (size, size))
    yy, xx = np.mgrid[:size, :size]
    for _ in range(20):
        x0, y0 = rng.uniform(0, size, 2)
        flux = rng.uniform(1e3, 1e5)
        image += flux / (8 * np.pi) * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / 8)
    g = np.exp(-((np.mgrid[:25, :25] - 12) ** 2).sum(0) / 8)
    return dict(
        image=image,
        variance=np.full((size, size), 900.0),
        mask=np.zeros((size, size), np.int32),
        psf=g / g.sum(),
        bad_bit=0,
        sat_bit=1,
    )


def run_case(size: int, density: float, case: str, cache: Path) -> dict:
    """One fit (in this process): the measurements of one row (density 0: `report_planes`)."""
    from lsst.meas.crowdsource.engine import fit_image

    if density == 0:
        planes = report_planes(size)
    else:
        planes = np.load(bl.simulated_field(size, density, SEED, cache, verbose=False).npz)
    image, variance = painted(planes, case)
    mask = planes["mask"]
    bad = (mask & (1 << int(planes["bad_bit"]))) != 0
    sat = (mask & (1 << int(planes["sat_bit"]))) != 0
    t0 = time.perf_counter()
    r = fit_image(image, variance, bad=bad, saturated=sat, psf=planes["psf"])
    seconds = time.perf_counter() - t0
    passes = [h for h in r.history if not h.get("final")]
    defects = getattr(r, "defects", None)
    return dict(
        seconds=seconds,
        n_sources=len(r),
        max_new_peaks=max((int(h["n_new"]) for h in passes), default=0),
        passes=len(passes),
        defects=defects.describe() if defects else "none",
        noise_ratio=float(getattr(r, "noise_ratio", float("nan"))),
        capped=bool(np.any(r.columns.get("flag_source_cap", [False]))),
    )


def measure(size: int, density: float, case: str, args) -> dict:
    """``run_case`` in a fresh process, ``args.repeat`` times, each cut at ``args.timeout``."""
    env = dict(os.environ)
    if args.pythonpath:
        env["PYTHONPATH"] = args.pythonpath
    cmd = [sys.executable, __file__, "--one", str(size), str(density), case]
    cmd += ["--cache-dir", str(args.cache_dir)]
    runs = []
    for _ in range(args.repeat):
        try:
            out = subprocess.run(
                cmd, capture_output=True, text=True, env=env, timeout=args.timeout, check=True
            )
        except subprocess.TimeoutExpired:
            return dict(size=size, density=density, case=case, timed_out=True, seconds=args.timeout)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = min(runs, key=lambda r: r["seconds"])
    return dict(best, size=size, density=density, case=case, timed_out=False)


def markdown(rows: list[dict], args) -> str:
    lines = [
        "# Hostile inputs",
        "",
        f"`benchmarks/hostile.py` (min of {args.repeat} runs, each cut at {args.timeout:.0f} s; "
        "true PSF given).",
        "",
        "| size | stars/px | case | time (s) | sources | most new peaks in a pass | "
        "defects found | noise ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r["timed_out"]:
            lines.append(
                f"| {r['size']}² | {r['density']:g} | {r['case']} | > {r['seconds']:.0f} "
                "(stopped) | | | | |"
            )
            continue
        lines.append(
            f"| {r['size']}² | {r['density']:g} | {r['case']} | {r['seconds']:.2f} | "
            f"{r['n_sources']} | "
            f"{r['max_new_peaks']} | {r['defects']}{' (capped)' if r['capped'] else ''} | "
            f"{r['noise_ratio']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 512])
    ap.add_argument(
        "--densities",
        type=float,
        nargs="+",
        default=[0.0, 0.0015, 0.02],
        help="stars per pixel of the benchmark field; 0: the field of issue 14's report",
    )
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=300.0)
    ap.add_argument("--pythonpath", help="PYTHONPATH of the runs (another checkout)")
    ap.add_argument("--cache-dir", type=Path, default=bl.DEFAULT_CACHE)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "hostile.json")
    ap.add_argument("--one", nargs=3, metavar=("SIZE", "DENSITY", "CASE"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        size, density, case = args.one
        print(json.dumps(run_case(int(size), float(density), case, args.cache_dir)))
        return
    rows = []
    for size in args.sizes:
        for density in args.densities:
            if density > 0:
                bl.simulated_field(size, density, SEED, args.cache_dir)  # outside the timing
            for case in args.cases:
                rows.append(measure(size, density, case, args))
                print(json.dumps(rows[-1]), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=1))
    args.out.with_suffix(".md").write_text(markdown(rows, args))
    print(markdown(rows, args))


if __name__ == "__main__":
    main()
