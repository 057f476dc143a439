#!/usr/bin/env python
"""Error budget of the fit: a ladder from the Cramér-Rao limit to the full pipeline.

    .venv/bin/python benchmarks/error_budget.py                    # both PSFs, 0.02 and 0.05
    .venv/bin/python benchmarks/error_budget.py --psf constant --densities 0.02 --size 256

Each rung gives the fit one unknown more than the rung above it, so the
difference between two rows is what that unknown costs:

============================  ================================================
``forced-all``                every true star forced at its true position, the
                              true PSF held fixed, the true sky subtracted (the
                              fit still measures a sky, of the flat residual):
                              the linear model is right
``+sky``                      the image with its sky: the sky is measured
``forced S/N>=K``             only the true stars of S/N >= K are forced (at
                              their true positions): what the stars a detector
                              would miss cost
``forced S/N>=5 +positions``  their positions are fit too (``refine_forced``
                              1 px), from the truth
``detect-fixed-psf``          nothing is given but the true PSF, held fixed:
                              the stars are found
``+detect``                   the PSF is refit, from the true one (the default
                              when a PSF model is given)
``+psf-image``                no PSF given: the full pipeline
============================  ================================================

A rung whose name holds ``true-sky`` subtracts the true sky (``--rungs
"forced S/N>=10 true-sky"``).  A PSF refit of forced positions alone is not a
rung: the loop refits the PSF only when it also finds sources.

Fields (``--size``², default 512): GalSim Kolmogorov ⊗ obscured optics, FWHM
4 px, sky 1000 with a gradient, stars down to S/N 1.5, no saturation, no bad
columns, no stars outside the image (so that ``forced-all`` really holds every
star); ``constant`` has no PSF variation, ``varying`` the simulator's defaults
(15 % FWHM change to the corners, coma, ellipticity).  The true PSF is given
as a callable (`SimulatedField.psf_at`).

Reported per rung, for unsaturated true stars matched one to one within 1 px
(forced rungs: the forced rows), against the true flux inside the engine's
59-px PSF stamp (the galsim PSF puts 0.5 % of its light beyond it, which no
fit can see): the robust scatter of (f - t) / σ over the
crowded Cramér-Rao bound with positions known (``σ_crb``) and with the
positions of S/N ≥ 3 stars free (``σ_free``, the honest limit of a fit that
must find positions), in S/N bins; the median of (f - t) / σ_crb (bias);
the pull scatter (f - t) / flux_err; bright-star (S/N ≥ 100) position scatter
over its bound; completeness at S/N 5-10 and 10-30 and the spurious fraction.
Results: ``benchmarks/results/error_budget.md`` and ``.json``.
"""

from __future__ import annotations

import argparse
import ast
import json
import pickle
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

from lsst.meas.crowdsource.engine import FitParams, fit_image
from lsst.meas.crowdsource.matching import robust_scatter
from lsst.meas.crowdsource.testing.evaluation import crowded_crb_flux_error, score_catalog
from lsst.meas.crowdsource.testing.simulate import simulate_field

HERE = Path(__file__).resolve().parent
CACHE = HERE / ".cache"
RESULTS = HERE / "results"
#: PSF stamp side the true PSF is rendered at for the engine.
PSF_SIZE = 59
#: S/N bins of the table.
BINS = ((5.0, 30.0), (30.0, 100.0), (100.0, 1000.0), (30.0, np.inf))
#: Rungs, in order; each is (name, what the fit is given).
RUNGS = (
    "forced-all",
    "+sky",
    "forced S/N>=3",
    "forced S/N>=5",
    "forced S/N>=10",
    "forced S/N>=5 +positions",
    "detect-fixed-psf",
    "+detect",
    "+psf-image",
)
PSF_KINDS = {
    "constant": dict(psf_variation=0.0, coma=0.0, ellipticity=0.0),
    "varying": dict(),
}


def make_field(kind: str, size: int, density: float, seed: int):
    """The ladder's field (cached as a pickle under ``benchmarks/.cache``)."""
    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"budget_{kind}_{size}_d{density:g}_s{seed}.pkl"
    if path.exists():
        with open(path, "rb") as fh:
            return pickle.load(fh)
    fld = simulate_field(
        (size, size),
        density=density,
        seed=seed,
        psf="galsim",
        fwhm=4.0,
        snr_min=1.5,
        saturation=None,
        bad_columns=0,
        edge_margin=0.0,
        **PSF_KINDS[kind],
    )
    with open(path, "wb") as fh:
        pickle.dump(fld, fh, protocol=pickle.HIGHEST_PROTOCOL)
    return fld


def bounds(fld, min_snr: float = 5.0):
    """Crowded CRB of every in-image star with S/N >= ``min_snr``: positions known and free."""
    t = fld.truth
    sample = np.flatnonzero(np.asarray(t["in_image"], bool) & (np.asarray(t["snr"]) >= min_snr))
    return crowded_crb_flux_error(
        t,
        partial(fld.psf_at, subpixel=True),
        fld.variance,
        sample=sample,
        xy0=fld.xy0,
        free_positions=True,
        free_position_min_snr=3.0,
        neighbourhood=16.0,
    )


def run_rung(rung: str, fld, overrides: dict | None = None):
    """Fit the field as the rung says (``overrides``: `FitParams` fields for every rung);
    returns (catalogue columns, seconds, forced truth rows or `None`)."""
    t = fld.truth

    def true_psf(x, y):
        return fld.psf_at(x, y, size=PSF_SIZE)

    image = fld.image.astype(float)
    kw: dict = dict(psf=true_psf)
    p = dict(overrides or {}, refit_psf=False)
    rows = None
    if rung == "forced-all" or "true-sky" in rung:
        image = image - fld.sky
    if rung.startswith("forced") or rung == "+sky":
        floor = float(rung.split(">=")[1].split()[0]) if ">=" in rung else -np.inf
        rows = np.flatnonzero(np.asarray(t["snr"]) >= floor)
        kw.update(forced_x=np.asarray(t["x"])[rows], forced_y=np.asarray(t["y"])[rows])
        kw["find_new"] = False
    if rung.endswith("+positions"):
        kw["refine_forced"] = 1.0
    if rung in ("+detect", "+psf-image"):
        p["refit_psf"] = True
    if rung == "+psf-image":
        kw["psf"] = None
    t0 = time.perf_counter()
    res = fit_image(image, fld.variance, params=FitParams(**p), xy0=fld.xy0, **kw)
    return {k: np.asarray(v) for k, v in res.columns.items()}, time.perf_counter() - t0, rows


def stamp_fraction(fld, chunk: int = 2000) -> np.ndarray:
    """Fraction of each true star's light inside a `PSF_SIZE` stamp of the true PSF."""
    x, y = np.asarray(fld.truth["x"]), np.asarray(fld.truth["y"])
    out = np.empty(len(x))
    for s in range(0, len(x), chunk):
        st = fld.psf_at(x[s : s + chunk], y[s : s + chunk], size=PSF_SIZE)
        out[s : s + chunk] = st.reshape(len(st), -1).sum(axis=1)
    return out


def score(cat, forced: np.ndarray | None, fld, crb) -> dict:
    """The ladder's figures for one catalogue (see the module docstring)."""
    t = fld.truth
    tf = np.asarray(t["flux"]) * stamp_fraction(fld)
    tsnr = np.asarray(t["snr"])
    out: dict = {"n_det": int(len(cat["x"]))}
    if forced is not None:
        det = np.full(len(t), -1)
        fi = cat["forced_index"]
        det[forced[fi[fi >= 0]]] = np.flatnonzero(fi >= 0)
        out.update(compl_5_10=np.nan, compl_10_30=np.nan, spurious=np.nan)
    else:
        res = score_catalog(cat["x"], cat["y"], cat["flux"], cat["flux_err"], t, radius=1.0)
        det = res["match"].truth_to_det
        mid = score_catalog(
            cat["x"], cat["y"], cat["flux"], cat["flux_err"], t, snr_bins=(5, 10, 30)
        )["bins"]
        out.update(
            compl_5_10=float(mid["completeness"][0]),
            compl_10_30=float(mid["completeness"][1]),
            spurious=float(res["summary"]["spurious_fraction"]),
        )
    ci = np.asarray(crb["index"])
    d = det[ci]
    ok = d >= 0
    f = np.where(ok, cat["flux"][np.maximum(d, 0)], np.nan)
    err = np.where(ok, cat["flux_err"][np.maximum(d, 0)], np.nan)
    diff = f - tf[ci]
    z = diff / np.asarray(crb["sigma_flux"])
    z_free = diff / np.asarray(crb["sigma_flux_free"])
    pull = diff / err
    s = tsnr[ci]
    for lo, hi in BINS:
        b = ok & (s >= lo) & (s < hi)
        tag = f"{lo:g}_{hi:g}"
        out[f"n_{tag}"] = int(b.sum())
        out[f"crb_{tag}"] = robust_scatter(z[b])
        out[f"free_{tag}"] = robust_scatter(z_free[b])
        out[f"bias_{tag}"] = float(np.median(z[b])) if b.any() else np.nan
        out[f"pull_{tag}"] = robust_scatter(pull[b])
    # Bright-star positions over their bound (x and y together).
    b = ok & (s >= 100)
    sx = np.asarray(crb["sigma_x"])[b]
    sy = np.asarray(crb["sigma_y"])[b]
    dx = (cat["x"][d[b]] - np.asarray(t["x"])[ci[b]]) / sx
    dy = (cat["y"][d[b]] - np.asarray(t["y"])[ci[b]]) / sy
    out["pos_over_bound"] = robust_scatter(np.concatenate([dx, dy]))
    out["pos_rms_px"] = (
        float(np.sqrt(np.mean((cat["x"][d[b]] - np.asarray(t["x"])[ci[b]]) ** 2)))
        if b.any()
        else np.nan
    )
    return out


COLUMNS = (
    ("crb_30_inf", "scat/CRB ≥30"),
    ("free_30_inf", "scat/CRB_free ≥30"),
    ("crb_5_30", "scat/CRB 5–30"),
    ("crb_100_1000", "scat/CRB 100–1000"),
    ("bias_30_inf", "bias/CRB ≥30"),
    ("pull_5_30", "pull 5–30"),
    ("pull_30_inf", "pull ≥30"),
    ("pos_over_bound", "pos/bound ≥100"),
    ("compl_5_10", "compl 5–10"),
    ("compl_10_30", "compl 10–30"),
    ("spurious", "spurious"),
    ("seconds", "s"),
)


def table(rows: list[dict]) -> str:
    """Markdown table of the ladder rows of one field."""
    head = "| rung | " + " | ".join(c[1] for c in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 1)]
    for r in rows:
        vals = []
        for key, _ in COLUMNS:
            v = r[key]
            vals.append(
                "—" if not np.isfinite(v) else f"{v:.1f}" if key == "seconds" else f"{v:.2f}"
            )
        lines.append(f"| {r['rung']} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--densities", type=float, nargs="+", default=[0.02, 0.05])
    ap.add_argument("--psf", nargs="+", default=list(PSF_KINDS), choices=list(PSF_KINDS))
    ap.add_argument("--rungs", nargs="+", default=list(RUNGS), help="rungs (default: all)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--set", action="append", default=[], metavar="NAME=VALUE", help="FitParams override"
    )
    ap.add_argument("--out", type=Path, default=RESULTS / "error_budget")
    args = ap.parse_args(argv)
    overrides = {k: ast.literal_eval(v) for k, v in (item.split("=", 1) for item in args.set)}
    report = [
        f"# Error budget ({args.size}², seed {args.seed})",
        "",
        "Command: `"
        + " ".join(["benchmarks/error_budget.py", *(argv if argv is not None else sys.argv[1:])])
        + "`",
        "",
    ]
    records = []
    for kind in args.psf:
        for density in args.densities:
            fld = make_field(kind, args.size, density, args.seed)
            t0 = time.perf_counter()
            crb = bounds(fld)
            print(
                f"[{kind} {density:g}] {len(fld.truth)} stars; CRB of {len(crb)} in "
                f"{time.perf_counter() - t0:.1f} s",
                flush=True,
            )
            ratio = np.asarray(crb["sigma_flux_free"]) / np.asarray(crb["sigma_flux"])
            rows = []
            for rung in args.rungs:
                cat, seconds, forced = run_rung(rung, fld, overrides)
                row = dict(rung=rung, psf=kind, density=density, seconds=seconds)
                row.update(score(cat, forced, fld, crb))
                rows.append(row)
                print(
                    f"  {rung:18s} "
                    + " ".join(f"{k}={row[k]:.3g}" for k, _ in COLUMNS if k in row),
                    flush=True,
                )
            records.extend(rows)
            snr = np.asarray(fld.truth["snr"])[np.asarray(crb["index"])]
            report += [
                f"## {kind} PSF, {density:g} stars/px ({len(fld.truth)} stars)",
                "",
                "Honest limit: median σ_free / σ_crb (positions free over known) "
                + ", ".join(
                    f"S/N {lo:g}–{hi:g} {np.nanmedian(ratio[(snr >= lo) & (snr < hi)]):.3f}"
                    for lo, hi in BINS[:3]
                )
                + ".",
                "",
                table(rows),
                "",
            ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text("\n".join(report) + "\n")
    args.out.with_suffix(".json").write_text(json.dumps(records, indent=1, default=float))
    print("\n".join(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
