#!/usr/bin/env python
"""Our engine against crowdsourcephoto 0.5.9 on the same simulated field.

    /tmp/venv/bin/python benchmarks/compare_crowdsource.py              # 1024x1024
    /tmp/venv/bin/python benchmarks/compare_crowdsource.py --quick      # 256x256, < 1 min
    /tmp/venv/bin/python benchmarks/compare_crowdsource.py --size 2048 --repeat 1

The field (`benchlib.simulated_field`): galsim PSF (Kolmogorov x obscured
optics with coma, FWHM 3.5 px varying by 15 % to the corners), sky 1000
counts with a gradient, 0.02 stars / px from S/N 2 to 3000, saturation at
60000 counts with bleed trails, one bad column; cached as npz + pickle.

Each code runs in its own fresh process (ours with this interpreter,
crowdsourcephoto with ``--cs-python``, default /tmp/csvenv/bin/python), both
starting from the same PSF information (``--psf true``: the true PSF stamp at
the field centre, 59x59; our engine can also run with ``--engine-psf none``).
Measured: wall time of the fit call alone (min over ``--repeat`` runs), peak
RSS of the process, and against the truth: completeness per S/N bin,
spurious fraction, flux bias and robust scatter of (f - t)/t and of the
pulls, bright-star position rms, and the flux scatter over the crowded and
isolated Cramér-Rao bounds.

Writes results/compare_<size>.json, .md and .png.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl  # noqa: E402


def run_code(name, runner, repeat, work, key, **kw):
    runs = []
    for k in range(repeat):
        out = work / f"{key}_{name}_{k}.npz"
        log = work / f"{key}_{name}_{k}.log"
        t = time.strftime("%H:%M:%S")
        print(f"[{t}] {name}: run {k + 1}/{repeat} ...", flush=True)
        info = runner(out=out, log_path=log, **kw)
        info["load_at_end"] = list(np.round(__import__("os").getloadavg(), 2))
        if name.startswith("engine"):
            info["git"] = bl.git_state()
        print(
            f"    fit {info['fit_seconds']:.1f} s, process {info['process_wall_seconds']:.1f}"
            f" s, peak RSS {info['peak_rss_mib']:.0f} MiB (VmHWM "
            f"{info['vmhwm_mib']:.0f}, before fit {info['vmhwm_before_fit_mib']:.0f} MiB), "
            f"{info['n_sources']} sources, load {info['load_at_end']}",
            flush=True,
        )
        runs.append((info, out))
    best = min(range(len(runs)), key=lambda i: runs[i][0]["fit_seconds"])
    info = dict(runs[best][0])
    info["fit_seconds_all"] = [r[0]["fit_seconds"] for r in runs]
    info["process_wall_seconds_all"] = [r[0]["process_wall_seconds"] for r in runs]
    info["peak_rss_mib_all"] = [r[0]["peak_rss_mib"] for r in runs]
    # Identical input -> identical catalogue (checked for every repeat).
    cats = [bl.load_catalog(r[1]) for r in runs]
    info["repeats_identical"] = all(
        len(c["x"]) == len(cats[0]["x"])
        and all(np.array_equal(c[k], cats[0][k], equal_nan=True) for k in ("x", "y", "flux"))
        for c in cats[1:]
    )
    return info, cats[best]


def markdown(res) -> str:
    codes = list(res["codes"])
    L = []
    m = res["machine"]
    f = res["field"]
    L.append(f"# crowdsourcephoto vs lsst.meas.crowdsource engine: {f['size']}x{f['size']}")
    L.append("")
    L.append(
        f"{m['date']}; {m['cpu']}, {m['n_cpu']} cores, {m['memory_gib']} GiB; "
        f"python {m['python']}, numpy {m['numpy']}. Package at {m['git_commit']} "
        f"({m['git_subject'][:70]})"
        + (
            "; uncommitted engine changes: " + ", ".join(m["engine_uncommitted"])
            if m["engine_uncommitted"]
            else ""
        )
        + "."
    )
    L.append(
        f"Field: {f['n_truth_in_image']} stars in the image ({f['density']} / px, "
        f"seed {f['seed']}), galsim PSF FWHM ~{f['fwhm']} px, saturation "
        f"{f['saturation']:g} ({f['n_saturated']} saturated stars), one bad column. "
        f"Starting PSF for both: {res['psf_start']}."
    )
    L.append("")
    L.append("## Speed and memory")
    L.append("")
    L.append("| code | fit wall time (s), min | all runs (s) | peak RSS (MiB) | sources |")
    L.append("|---|---|---|---|---|")
    for c in codes:
        r = res["codes"][c]["run"]
        L.append(
            f"| {c} | {r['fit_seconds']:.1f} | "
            f"{', '.join(f'{v:.1f}' for v in r['fit_seconds_all'])} | "
            f"{max(r['peak_rss_mib_all']):.0f} | {r['n_sources']} |"
        )
    if "speedup" in res:
        L.append("")
        L.append(
            f"Speed-up of the engine over crowdsourcephoto (fit time): **{res['speedup']:.1f}x**."
        )
    L.append("")
    L.append("## Summary (true S/N >= 5 unless stated)")
    L.append("")
    L.append("| metric | " + " | ".join(codes) + " |")
    L.append("|---|" + "---|" * len(codes))

    def row(label, getter, nd=3):
        L.append(
            f"| {label} | "
            + " | ".join(bl.fmt(getter(res["codes"][c]["score"]), nd) for c in codes)
            + " |"
        )

    row("detections", lambda s: s["n_det"], 0)
    row("completeness, S/N >= 5", lambda s: s["summary"]["completeness"])
    row("completeness, 5 <= S/N < 30", lambda s: s["completeness_5_30"])
    row("spurious fraction (all detections)", lambda s: s["summary"]["spurious_fraction"])
    row("spurious fraction (measured S/N >= 5)", lambda s: s["summary"]["spurious_fraction_snr"])
    row("median (f-t)/t", lambda s: s["summary"]["flux_frac_median"], 4)
    row("robust scatter (f-t)/t", lambda s: s["summary"]["flux_frac_scatter"], 4)
    row("median pull", lambda s: s["summary"]["pull_median"])
    row("pull robust scatter", lambda s: s["summary"]["pull_scatter"])
    row(
        "bright (S/N >= 100, unsaturated) position rms x (px)",
        lambda s: s["bright_positions"]["rms_x"],
        4,
    )
    row("bright position rms y (px)", lambda s: s["bright_positions"]["rms_y"], 4)
    row("bright position robust scatter x (px)", lambda s: s["bright_positions"]["robust_x"], 4)
    row("bright median dx (px)", lambda s: s["bright_positions"]["median_dx"], 4)
    row("bright median dy (px)", lambda s: s["bright_positions"]["median_dy"], 4)
    L.append("")
    L.append("## Per true-S/N bin")
    L.append("")
    L.append(
        "Completeness; median and robust (1.4826 MAD) scatter of (f - t)/t; the same for "
        "the pulls (f - t)/err; rms matched separation. Match radius 1 px."
    )
    L.append("")
    L.append(
        "| S/N bin | n true | code | completeness | median (f-t)/t | scatter (f-t)/t "
        "| median pull | pull scatter | pos rms (px) |"
    )
    L.append("|---|---|---|---|---|---|---|---|---|")
    nb = len(res["codes"][codes[0]]["score"]["bins"])
    for i in range(nb):
        for j, c in enumerate(codes):
            b = res["codes"][c]["score"]["bins"][i]
            head = f"{b['snr_lo']:g}–{b['snr_hi']:g} | {int(b['n_truth'])}" if j == 0 else " | "
            L.append(
                f"| {head} | {c} | {bl.fmt(b['completeness'])} | "
                f"{bl.fmt(b['flux_frac_median'], 4)} | {bl.fmt(b['flux_frac_scatter'], 4)} | "
                f"{bl.fmt(b['pull_median'], 2)} | {bl.fmt(b['pull_scatter'], 2)} | "
                f"{bl.fmt(b['pos_rms'], 3)} |"
            )
    L.append("")
    L.append("## Flux scatter over the Cramér-Rao bound")
    L.append("")
    L.append(
        "Robust scatter of (f - t)/sigma_CRB over matched, unsaturated stars: "
        "crowded = joint fit of all fluxes at known positions and PSF "
        "(`crowded_crb_flux_error`); isolated = the same star alone on the sky "
        "(`isolated_crb_flux_error`). 1 = at the bound."
    )
    L.append("")
    L.append(
        "Last columns: median of the code's own flux error over the crowded bound "
        "(below 1 is optimistic: no unbiased estimator beats the bound, although the "
        "bound counts every true star as a parameter, also the undetected ones)."
    )
    L.append("")
    L.append(
        "| S/N bin | crowded/isolated bound | "
        + " | ".join(f"{c}: n, /crowded, /isolated" for c in codes)
        + " | "
        + " | ".join(f"{c}: err/crowded" for c in codes)
        + " |"
    )
    L.append("|---|---|" + "---|" * (2 * len(codes)))
    for i in range(len(res["codes"][codes[0]]["score"]["crb_bins"])):
        b0 = res["codes"][codes[0]]["score"]["crb_bins"][i]
        cells = []
        for c in codes:
            b = res["codes"][c]["score"]["crb_bins"][i]
            cells.append(
                f"{b['n']}, {bl.fmt(b['scatter_over_crowded_crb'], 2)}, "
                f"{bl.fmt(b['scatter_over_isolated_crb'], 2)}"
            )
        for c in codes:
            b = res["codes"][c]["score"]["crb_bins"][i]
            cells.append(bl.fmt(b.get("median_reported_err_over_crowded_crb"), 2))
        L.append(
            f"| {b0['snr_lo']:g}–{b0['snr_hi']:g} | "
            f"{bl.fmt(b0['median_crowded_over_isolated_crb'], 2)} | " + " | ".join(cells) + " |"
        )
    L.append("")
    L.append("## Notes")
    L.append("")
    for c in codes:
        r = res["codes"][c]["run"]
        w = r.get("logged_warnings")
        line = f"- {c}: {r.get('n_tiles', 1)} fit region(s)"
        if w is not None:
            line += f"; {len(w)} warning(s) logged" + (f", e.g. {w[:2]}" if w else "")
        if len(r.get("fit_seconds_all", [])) < 2:
            line += "; 1 run"
        else:
            line += (
                "; repeated runs gave identical catalogues"
                if r.get("repeats_identical")
                else "; repeated runs DIFFER"
            )
        if "git" in r:
            line += f"; package at {r['git'].get('git_commit')}"
            if r["git"].get("engine_uncommitted"):
                line += f" + uncommitted {r['git']['engine_uncommitted']}"
        L.append(line + ".")
    for n in res.get("notes", []):
        if "warning(s) logged" in n or "DIFFERENT" in n:
            continue
        L.append(f"- {n}")
    return "\n".join(L) + "\n"


def figure(res, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 3, figsize=(15, 4.5))
    styles = ("o-", "s--", "^:", "v-.", "d-")
    for c, sty, col in zip(res["codes"], styles, [f"C{k}" for k in range(len(styles))]):
        s = res["codes"][c]["score"]["fig"]
        comp = s["completeness"]
        mid = [
            np.sqrt(
                max(b["snr_lo"], 1) * (b["snr_hi"] if np.isfinite(b["snr_hi"]) else 2 * b["snr_lo"])
            )
            for b in comp
        ]
        ax[0].plot(mid, [b["completeness"] for b in comp], sty, color=col, label=c)
        ax[1].plot(mid, [b["flux_frac_median"] for b in comp], sty, color=col, label=c)
        crb = s["crb"]
        ax[2].plot(
            mid,
            [b["scatter_over_crowded_crb"] for b in crb],
            sty,
            color=col,
            label=f"{c} / crowded CRB",
        )
        ax[2].plot(
            mid,
            [b["scatter_over_isolated_crb"] for b in crb],
            sty,
            color=col,
            alpha=0.35,
            label=f"{c} / isolated CRB",
        )
    for a in ax:
        a.set_xscale("log")
        a.set_xlabel("true S/N (isolated CRB)")
        a.grid(alpha=0.3)
    ax[0].set_ylabel("completeness (match radius 1 px)")
    ax[0].set_ylim(0, 1.02)
    ax[1].set_ylabel("median (f - t) / t")
    ax[1].axhline(0, color="k", lw=0.5)
    ax[1].set_ylim(-0.3, 0.3)
    ax[2].set_ylabel("robust scatter of (f - t) / sigma_CRB")
    ax[2].axhline(1, color="k", lw=0.5)
    ax[2].set_yscale("log")
    ax[0].legend()
    ax[2].legend(fontsize=7)
    f = res["field"]
    fig.suptitle(
        f"{f['size']}x{f['size']}, {f['density']} stars/px, galsim PSF; "
        f"starting PSF: {res['psf_start']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--density", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2, help="timed runs per code (min reported)")
    ap.add_argument("--quick", action="store_true", help="256x256, one run each")
    ap.add_argument("--cache-dir", type=Path, default=bl.DEFAULT_CACHE)
    ap.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="default: results/ (with --quick: .cache/quick/, so that a smoke "
        "test does not overwrite the recorded results)",
    )
    ap.add_argument("--cs-python", default=bl.DEFAULT_CS_PYTHON)
    ap.add_argument("--skip-crowdsource", action="store_true")
    ap.add_argument(
        "--engine-psf",
        choices=("true", "none", "both"),
        default="both",
        help="starting PSF of our engine: the true central stamp (same as "
        "crowdsource), none, or both (the 'none' run is timed once)",
    )
    ap.add_argument(
        "--fixed-psf",
        action="store_true",
        help="also run both codes with the starting PSF held fixed (no refit; one run each)",
    )
    ap.add_argument(
        "--crb-random",
        type=int,
        default=3000,
        help="the crowded CRB is computed for every star with true S/N >= 30 "
        "and this many random fainter ones (cached)",
    )
    ap.add_argument(
        "--rescore",
        action="store_true",
        help="score the saved catalogues of the last run again, rebuild the report",
    )
    ap.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild the .md and .png from an existing results json",
    )
    args = ap.parse_args(argv)
    args.out_dir = bl.output_dir(args.out_dir, args.cache_dir, args.quick)
    if args.quick:
        args.size, args.repeat = 256, 1
    if args.rescore:
        # Score the saved catalogues again (after a change of the scoring code).
        stem = args.out_dir / f"compare_{args.size}"
        with open(f"{stem}.json") as fh:
            res = json.load(fh)
        cf = bl.simulated_field(
            args.size, res["field"]["density"], res["field"]["seed"], args.cache_dir
        )
        crb = bl.crb_table_cached(cf.field, cf.key, args.cache_dir, n_random=args.crb_random)
        names = {
            "engine": "engine",
            "engine (no PSF given)": "engine_psf_none",
            "crowdsourcephoto": "crowdsource",
            "engine (PSF held fixed)": "engine_fixed",
            "crowdsourcephoto (PSF held fixed)": "crowdsource_fixed",
        }
        for c, v in res["codes"].items():
            k = int(np.argmin(v["run"]["fit_seconds_all"]))
            cat = bl.load_catalog(args.cache_dir / "runs" / f"{cf.key}_{names[c]}_{k}.npz")
            v["score"] = bl.score(cat, cf.field, crb)
        with open(f"{stem}.json", "w") as fh:
            json.dump(
                res, fh, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)
            )
        args.report_only = True
    if args.report_only:
        stem = args.out_dir / f"compare_{args.size}"
        with open(f"{stem}.json") as fh:
            res = json.load(fh)
        Path(f"{stem}.md").write_text(markdown(res))
        figure(res, f"{stem}.png")
        print(Path(f"{stem}.md").read_text())
        return
    work = args.cache_dir / "runs"
    work.mkdir(parents=True, exist_ok=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)

    machine = bl.machine_info()
    busy = bl.other_load()
    cf = bl.simulated_field(args.size, args.density, args.seed, args.cache_dir)
    fld = cf.field
    t = fld.truth
    print("[crb] computing Cramér-Rao bounds ...", flush=True)
    crb = bl.crb_table_cached(fld, cf.key, args.cache_dir, n_random=args.crb_random)
    print(f"[crb] {len(crb)} stars in {crb.meta['seconds']:.1f} s", flush=True)

    codes = {}
    notes = []
    if args.engine_psf in ("true", "both"):
        info, cat = run_code(
            "engine", bl.run_engine, args.repeat, work, cf.key, npz=cf.npz, psf="true"
        )
        codes["engine"] = {"run": info, "score": bl.score(cat, fld, crb)}
    if args.engine_psf in ("none", "both"):
        rep = 1 if args.engine_psf == "both" else args.repeat
        info, cat = run_code(
            "engine_psf_none", bl.run_engine, rep, work, cf.key, npz=cf.npz, psf="none"
        )
        codes["engine (no PSF given)"] = {"run": info, "score": bl.score(cat, fld, crb)}
    if not args.skip_crowdsource:
        info, cat = run_code(
            "crowdsource",
            bl.run_crowdsource,
            args.repeat,
            work,
            cf.key,
            npz=cf.npz,
            python=args.cs_python,
            psf="true",
        )
        codes["crowdsourcephoto"] = {"run": info, "score": bl.score(cat, fld, crb)}
    if args.fixed_psf:
        info, cat = run_code(
            "engine_fixed",
            bl.run_engine,
            1,
            work,
            cf.key,
            npz=cf.npz,
            psf="true",
            extra=["--param", "refit_psf=False"],
        )
        codes["engine (PSF held fixed)"] = {"run": info, "score": bl.score(cat, fld, crb)}
        if not args.skip_crowdsource:
            info, cat = run_code(
                "crowdsource_fixed",
                bl.run_crowdsource,
                1,
                work,
                cf.key,
                npz=cf.npz,
                python=args.cs_python,
                psf="true",
                extra=["--fixed-psf"],
            )
            codes["crowdsourcephoto (PSF held fixed)"] = {
                "run": info,
                "score": bl.score(cat, fld, crb),
            }

    for c, v in codes.items():
        w = v["run"].get("logged_warnings", [])
        if w:
            notes.append(f"{c}: {len(w)} warning(s) logged, e.g. {w[:3]}")
        if not v["run"].get("repeats_identical", True):
            notes.append(f"{c}: repeated runs gave DIFFERENT catalogues")
    notes.append(
        "Wall time is the fit call only (no I/O, no interpreter start); the minimum "
        "over the repeats is reported, all runs are listed. Peak RSS: the runner "
        "process's VmHWM (its input planes included) or the sampled sum over its "
        "process tree, whichever is larger; the largest over the repeats."
    )
    if busy:
        notes.append("Other processes busy at the start: " + "; ".join(busy[:5]))
    res = {
        "machine": machine,
        "field": {
            "size": args.size,
            "density": args.density,
            "seed": args.seed,
            "n_truth": len(t),
            "n_truth_in_image": int(np.sum(t["in_image"])),
            "n_saturated": int(np.sum(t["saturated"] & t["in_image"])),
            "fwhm": fld.meta.get("fwhm", 3.5),
            "saturation": bl.SATURATION,
            "simulate_seconds": cf.simulate_seconds,
            "key": cf.key,
        },
        "psf_start": "true PSF stamp at the field centre (59x59), refit in the loop",
        "crb": {"n": len(crb), "seconds": crb.meta["seconds"]},
        "codes": codes,
        "notes": notes,
        "load_end": list(__import__("os").getloadavg()),
    }
    if "engine" in codes and "crowdsourcephoto" in codes:
        res["speedup"] = (
            codes["crowdsourcephoto"]["run"]["fit_seconds"] / codes["engine"]["run"]["fit_seconds"]
        )
    stem = args.out_dir / f"compare_{args.size}"
    with open(f"{stem}.json", "w") as fh:
        json.dump(
            res, fh, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)
        )
    Path(f"{stem}.md").write_text(markdown(res))
    figure(res, f"{stem}.png")
    print(Path(f"{stem}.md").read_text())


if __name__ == "__main__":
    main()
