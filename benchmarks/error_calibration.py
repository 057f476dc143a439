#!/usr/bin/env python
"""Flux errors calibrated with artificial stars, against the truth.

    .venv/bin/python benchmarks/error_calibration.py                 # 4 fields, ~12 min
    .venv/bin/python benchmarks/error_calibration.py --psf constant --densities 0.02 --stars 600

The fields of ``error_budget.py`` (512², GalSim Kolmogorov ⊗ obscured
optics of FWHM 4 px, constant or varying across the image, stars down to
S/N 1.5, sky 1000; the true PSF is given to the fit, which refits it).  Each
is fit twice: free (stars found) and forced at the true positions of the
stars of true S/N ≥ 5 (no new sources).  Each fit's errors are then
calibrated with ``--stars`` artificial stars
(`lsst.meas.crowdsource.error_calibration.calibrate_flux_errors`).

Reported per fit, in bins of true S/N, for the true stars matched one to one
within 1 px (forced: the forced rows): the robust width (1.4826 MAD) of the
pulls ``(f - t) / flux_err_stat`` and ``(f - t) / flux_err`` (``t``: the
true flux inside the fit's 59-px PSF stamp), the number of stars, the
calibration's factor at S/N 10 / 30 / 100 / 300 / 1000 and its cost.
Results: ``benchmarks/results/error_calibration.md``, ``.json`` and
``.png`` (pull width against S/N, before and after).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from error_budget import PSF_KINDS, PSF_SIZE, make_field, stamp_fraction
from lsst.meas.crowdsource.engine import FitParams, fit_image
from lsst.meas.crowdsource.error_calibration import calibrate_flux_errors
from lsst.meas.crowdsource.matching import robust_scatter
from lsst.meas.crowdsource.testing.evaluation import score_catalog

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
#: True-S/N bins of the table.
BINS = ((5.0, 10.0), (10.0, 30.0), (30.0, 100.0), (100.0, 300.0), (300.0, 1000.0))
#: S/N at which the calibration factor is reported.
FACTOR_AT = np.array([10.0, 30.0, 100.0, 300.0, 1000.0])
#: Fewest stars for a bin's width to be reported.
MIN_BIN = 15


def run(fld, mode: str, n_stars: int, seed: int) -> dict:
    """Fit, calibrate, score: one row of the report."""
    t = fld.truth
    kw: dict = dict(
        variance=fld.variance,
        params=FitParams(),
        xy0=fld.xy0,
        psf=lambda x, y: fld.psf_at(x, y, size=PSF_SIZE),
    )
    rows = None
    if mode == "forced":
        rows = np.flatnonzero(np.asarray(t["snr"]) >= 5.0)
        kw.update(forced_x=np.asarray(t["x"])[rows], forced_y=np.asarray(t["y"])[rows])
        kw["find_new"] = False
    image = fld.image.astype(float)
    t0 = time.perf_counter()
    res = fit_image(image, **kw)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    cal = calibrate_flux_errors(res, image, n_stars=n_stars, seed=seed, **kw)
    cal_s = time.perf_counter() - t0
    cat = {k: np.asarray(v) for k, v in res.columns.items()}
    if rows is None:
        det = score_catalog(cat["x"], cat["y"], cat["flux"], cat["flux_err"], t, radius=1.0)[
            "match"
        ].truth_to_det
    else:
        det = np.full(len(t), -1)
        fi = cat["forced_index"]
        det[rows[fi[fi >= 0]]] = np.flatnonzero(fi >= 0)
    ok = det >= 0
    truth = (np.asarray(t["flux"]) * stamp_fraction(fld))[ok]
    snr = np.asarray(t["snr"])[ok]
    f = cat["flux"][det[ok]]
    out = dict(
        mode=mode,
        fit_seconds=fit_s,
        calibration_seconds=cal_s,
        rounds=cal.rounds,
        injected=cal.n_injected,
        recovered=cal.n_recovered,
        factor=[float(v) for v in cal.factor(FACTOR_AT)],
    )
    for name in ("flux_err_stat", "flux_err"):
        pull = (f - truth) / cat[name][det[ok]]
        widths, counts = [], []
        for lo, hi in BINS:
            b = (snr >= lo) & (snr < hi) & np.isfinite(pull)
            counts.append(int(b.sum()))
            widths.append(robust_scatter(pull[b]) if b.sum() >= MIN_BIN else float("nan"))
        out[name] = widths
        out["n"] = counts
    return out


def table(rows: list[dict]) -> str:
    head = (
        "| fit | "
        + " | ".join(f"S/N {lo:g}–{hi:g}" for lo, hi in BINS)
        + " | factor at S/N 10/30/100/300/1000 | fit s | calibration s (rounds) |"
    )
    lines = [head, "|" + "---|" * (len(BINS) + 4)]
    for r in rows:
        cells = [
            f"{a:.2f} → **{b:.2f}** ({n})" if np.isfinite(a) else f"— ({n})"
            for a, b, n in zip(r["flux_err_stat"], r["flux_err"], r["n"])
        ]
        lines.append(
            f"| {r['mode']} | "
            + " | ".join(cells)
            + f" | {' / '.join(f'{v:.2f}' for v in r['factor'])} | {r['fit_seconds']:.1f} | "
            f"{r['calibration_seconds']:.1f} ({r['rounds']}) |"
        )
    return "\n".join(lines)


def figure(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fields = sorted({(r["psf"], r["density"]) for r in records})
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    centre = [np.sqrt(lo * hi) for lo, hi in BINS]
    for ax, mode in zip(axes, ("free", "forced")):
        for k, (psf, dens) in enumerate(fields):
            r = next(
                q for q in records if q["mode"] == mode and (q["psf"], q["density"]) == (psf, dens)
            )
            colour = f"C{k}"
            ax.plot(centre, r["flux_err_stat"], "o--", color=colour, alpha=0.6)
            ax.plot(
                centre, r["flux_err"], "s-", color=colour, label=f"{psf} PSF, {dens:g} stars/px"
            )
        ax.axhspan(0.9, 1.2, color="0.85", zorder=0)
        ax.set_xscale("log")
        ax.set_xlabel("true S/N")
        ax.set_title("free fit" if mode == "free" else "forced at the true S/N ≥ 5 stars")
    axes[0].set_ylabel("pull width: dashed flux_err_stat, solid flux_err")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--densities", type=float, nargs="+", default=[0.02, 0.05])
    ap.add_argument("--psf", nargs="+", default=list(PSF_KINDS), choices=list(PSF_KINDS))
    ap.add_argument("--modes", nargs="+", default=["free", "forced"], choices=["free", "forced"])
    ap.add_argument("--stars", type=int, default=1600, help="artificial stars per fit")
    ap.add_argument("--seed", type=int, default=1, help="seed of the field")
    ap.add_argument("--calibration-seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS / "error_calibration")
    ap.add_argument("--plot-only", action="store_true", help="redraw the figure from --out's .json")
    args = ap.parse_args(argv)
    if args.plot_only:
        figure(json.loads(args.out.with_suffix(".json").read_text()), args.out.with_suffix(".png"))
        return 0
    command = " ".join(
        ["benchmarks/error_calibration.py", *(argv if argv is not None else sys.argv[1:])]
    )
    report = [
        f"# Flux errors calibrated with artificial stars ({args.size}², field seed {args.seed}, "
        f"{args.stars} artificial stars)",
        "",
        f"Command: `{command}`",
        "",
        "Pull width (1.4826 MAD of (f − t)/σ) by true S/N: `flux_err_stat` → **calibrated "
        "`flux_err`** (stars in the bin); the target is 0.9–1.2.",
        "",
    ]
    records = []
    for kind in args.psf:
        for density in args.densities:
            fld = make_field(kind, args.size, density, args.seed)
            rows = []
            for mode in args.modes:
                row = dict(
                    psf=kind, density=density, **run(fld, mode, args.stars, args.calibration_seed)
                )
                rows.append(row)
                print(f"[{kind} {density:g} {mode}] {row}", flush=True)
            records.extend(rows)
            report += [f"## {kind} PSF, {density:g} stars/px", "", table(rows), ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text("\n".join(report) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(records, indent=1, default=float))
    if set(args.modes) == {"free", "forced"}:
        figure(records, args.out.with_suffix(".png"))
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
