#!/usr/bin/env python
"""Free and forced fits against stellar density (issue 16, "Crowding without a cliff").

    .venv/bin/python benchmarks/density.py                        # 1024², 0.02-0.2 stars/px
    .venv/bin/python benchmarks/density.py --densities 0.02 0.05  # some densities only
    .venv/bin/python benchmarks/density.py --cs-densities 0.02    # + crowdsourcephoto
    .venv/bin/python benchmarks/density.py --quick                # 256², 0.02 and 0.1; < 2 min

Fields as in compare_crowdsource.py (`benchlib.simulated_field`: galsim PSF,
saturation, one bad column, seed 1), at each density.  Per density, each in
a fresh process (`benchlib.run_engine`): the **free fit** (true starting
PSF, every source found by the engine) and the **forced fit** of every
in-image true star above each ``--forced-snr`` threshold (true S/N of the
simulation; positions held fixed, every other source found as usual,
i.e. the forced task's defaults).  Scored with `benchlib.score` (free:
completeness, spurious fraction, scatter over the Cramér-Rao bounds) and
`benchlib.score_forced` (forced: scatter of (f - t) / t, pulls, scatter
over the crowded CRB).  The crowded CRB costs a dense solve per star that
grows with the density (0.25 s per star at 0.1 stars/px), so it is computed
for ``--crb-per-bin`` random stars per true-S/N bin, the same stars for the
free and the forced fits.  Runs longer than ``--timeout`` are stopped and
reported as such.

Results accumulate in results/density.json (a run replaces the rows it
measures and keeps the others) and results/density.md (``--quick``: in
the cache directory).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl  # noqa: E402


def crb_for(cf, per_bin: int, cache_dir: Path, seed: int = 0):
    """Crowded and isolated CRB of ``per_bin`` random in-image stars per `benchlib.SNR_BINS`
    bin (cached as ECSV next to the field)."""
    from astropy.table import Table

    path = Path(cache_dir) / f"crb_{cf.key}_perbin{per_bin}.ecsv"
    if path.exists():
        return Table.read(path)
    t = cf.field.truth
    snr = np.asarray(t["snr"])
    inside = np.asarray(t["in_image"], bool)
    rng = np.random.default_rng(seed)
    pick = []
    for lo, hi in zip(bl.SNR_BINS[:-1], bl.SNR_BINS[1:]):
        rows = np.flatnonzero(inside & (snr >= lo) & (snr < hi))
        pick.append(rng.choice(rows, size=min(per_bin, len(rows)), replace=False))
    tab = bl.crb_table(cf.field, sample=np.sort(np.concatenate(pick)))
    tab.write(path, overwrite=True)
    return tab


def _bin(rows, lo):
    return next((b for b in rows if b["snr_lo"] == lo), {})


def free_row(cf, crb, work: Path, timeout: float, code: str, cs_python: str) -> dict:
    tag = f"{cf.key}_density_{code}_free"
    out, log = work / f"{tag}.npz", work / f"{tag}.log"
    print(f"[{time.strftime('%H:%M:%S')}] {cf.key} {code} free fit ...", flush=True)
    if code == "engine":
        info = bl.run_engine(cf.npz, out, log_path=log, timeout=timeout)
    else:
        info = bl.run_crowdsource(cf.npz, out, python=cs_python, log_path=log, timeout=timeout)
    row = {"code": code, "mode": "free"}

    def score(cat):
        sc = bl.score(cat, cf.field, crb)
        return {k: sc[k] for k in ("bins", "summary", "completeness_5_30", "crb_bins", "n_det")}

    return _measured_row(row, info, out, score, "sources")


def forced_row(cf, crb, snr_min: float, work: Path, timeout: float) -> dict:
    t = cf.field.truth
    rows = np.flatnonzero(np.asarray(t["in_image"], bool) & (np.asarray(t["snr"]) >= snr_min))
    tag = f"{cf.key}_density_forced_snr{snr_min:g}"
    pos, out, log = work / f"{tag}_pos.npz", work / f"{tag}.npz", work / f"{tag}.log"
    np.savez(pos, x=np.asarray(t["x"])[rows], y=np.asarray(t["y"])[rows])
    print(
        f"[{time.strftime('%H:%M:%S')}] {cf.key} forced fit of {len(rows)} true stars "
        f"(S/N >= {snr_min:g}) ...",
        flush=True,
    )
    info = bl.run_engine(cf.npz, out, log_path=log, extra=["--forced", str(pos)], timeout=timeout)
    row = {
        "code": "engine",
        "mode": "forced",
        "forced_snr_min": snr_min,
        "n_forced": int(len(rows)),
    }

    def score(cat):
        return bl.score_forced(cat, cf.field, rows, crb)

    return _measured_row(row, info, out, score, "rows")


def _measured_row(row: dict, info: dict, out: Path, score, what: str) -> dict:
    """``row`` with the run's figures (or its time-out) and ``score(catalogue)``.

    The catalogue is deleted afterwards (it can be large).
    """
    row["timed_out"] = bool(info.get("timed_out"))
    if row["timed_out"]:
        row["process_wall_seconds"] = info["process_wall_seconds"]
        print(f"    stopped after {info['process_wall_seconds']:.0f} s", flush=True)
        return row
    row.update(
        fit_seconds=info["fit_seconds"],
        fit_cpu_seconds=info.get("fit_cpu_seconds_main"),
        peak_rss_mib=info["peak_rss_mib"],
        n_sources=info["n_sources"],
        score=score(bl.load_catalog(out)),
        warnings=sorted(set(info.get("logged_warnings", [])))[:10],
    )
    print(
        f"    {info['fit_seconds']:.1f} s, {info['n_sources']} {what}, "
        f"{info['peak_rss_mib']:.0f} MiB",
        flush=True,
    )
    out.unlink(missing_ok=True)
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--densities", type=float, nargs="*", default=[0.02, 0.05, 0.1, 0.2])
    ap.add_argument(
        "--forced-snr",
        type=float,
        nargs="*",
        default=[2.0],
        help="forced fits of the true stars above these true S/N (none: no forced fits)",
    )
    ap.add_argument(
        "--cs-densities",
        type=float,
        nargs="*",
        default=[],
        help="densities to fit with crowdsourcephoto too",
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--crb-per-bin", type=int, default=60)
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per fit")
    ap.add_argument("--quick", action="store_true", help="256², 0.02 and 0.1, 20 CRB stars/bin")
    ap.add_argument("--cache-dir", type=Path, default=bl.DEFAULT_CACHE)
    ap.add_argument("--out-dir", type=Path, default=None)
    ap.add_argument("--cs-python", default=bl.DEFAULT_CS_PYTHON)
    ap.add_argument("--report-only", action="store_true")
    args = ap.parse_args(argv)
    args.out_dir = bl.output_dir(args.out_dir, args.cache_dir, args.quick)
    stem = args.out_dir / ("density_quick" if args.quick else "density")
    if args.report_only:
        res = json.loads(Path(f"{stem}.json").read_text())
        Path(f"{stem}.md").write_text(markdown(res))
        print(Path(f"{stem}.md").read_text())
        return
    if args.quick:
        args.size, args.densities, args.crb_per_bin = 256, [0.02, 0.1], 20
        args.cs_densities = [d for d in args.cs_densities if d in args.densities]
    work = args.cache_dir / "runs"
    work.mkdir(parents=True, exist_ok=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    machine = bl.machine_info()
    busy = bl.other_load()

    measured = []
    for density in args.densities:
        cf = bl.simulated_field(args.size, density, args.seed, args.cache_dir)
        n_in = int(np.sum(cf.field.truth["in_image"]))
        t0 = time.perf_counter()
        crb = crb_for(cf, args.crb_per_bin, args.cache_dir)
        print(f"    CRB of {len(crb)} stars ({time.perf_counter() - t0:.0f} s)", flush=True)
        common = dict(
            size=args.size,
            density=density,
            n_truth_in_image=n_in,
            n_crb=len(crb),
            measured=time.strftime("%Y-%m-%d %H:%M"),
            git=bl.git_state(),
        )
        rows = [free_row(cf, crb, work, args.timeout, "engine", args.cs_python)]
        if density in args.cs_densities:
            rows.append(free_row(cf, crb, work, args.timeout, "crowdsourcephoto", args.cs_python))
        for snr in args.forced_snr:
            rows.append(forced_row(cf, crb, snr, work, args.timeout))
        for r in rows:
            r.update(common, loadavg_end=list(np.round(os.getloadavg(), 2)))
        measured += rows

    old = json.loads(Path(f"{stem}.json").read_text()) if Path(f"{stem}.json").exists() else {}

    def key(r):
        return (r["size"], r["density"], r["code"], r["mode"], r.get("forced_snr_min"))

    new_keys = {key(r) for r in measured}
    rows = [r for r in old.get("rows", []) if key(r) not in new_keys] + measured
    rows.sort(key=lambda r: (r["size"], r["density"], r["mode"] != "free", r["code"]))
    res = {"machine": machine, "seed": args.seed, "rows": rows, "busy_at_start": busy}
    Path(f"{stem}.json").write_text(json.dumps(res, indent=1, default=str))
    Path(f"{stem}.md").write_text(markdown(res))
    print(Path(f"{stem}.md").read_text())


def markdown(res) -> str:
    m = res["machine"]
    rows = res["rows"]
    commits = sorted({r["git"].get("git_commit", "?") for r in rows if r.get("git")})
    L = [
        "# Free and forced fits against stellar density",
        "",
        f"Last run {m['date']}; {m['cpu']}, {m['n_cpu']} cores (shared: timings are noisy), "
        f"{m['memory_gib']} GiB. Package at {', '.join(commits)}. Fields: "
        "`benchlib.simulated_field` (galsim PSF, FWHM 3.5 px, saturation, one bad column), "
        f"seed {res['seed']}; true starting PSF. Time: the fit call only.",
        "",
        "## Free fit",
        "",
        "| code | size | stars/px | stars in image | sources | fit (s) | ms / source "
        "| × 0.02 | CPU ms / source | × 0.02 | peak RSS (MiB) | completeness 5–10 / 10–30 "
        "| spurious (all) | scatter / crowded CRB 10–30 / 30–100 / 100–300 (n) | measured |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    base, base_cpu = {}, {}
    for r in rows:
        if r["mode"] == "free" and not r["timed_out"] and r["density"] == 0.02:
            base[(r["code"], r["size"])] = r["fit_seconds"] / r["n_sources"]
            if r.get("fit_cpu_seconds"):
                base_cpu[(r["code"], r["size"])] = r["fit_cpu_seconds"] / r["n_sources"]
    for r in rows:
        if r["mode"] != "free":
            continue
        head = f"| {r['code']} | {r['size']}² | {r['density']:g} | {r['n_truth_in_image']} |"
        if r["timed_out"]:
            L.append(head + f" — | stopped after {r['process_wall_seconds']:.0f} s |" + " |" * 8)
            continue
        sc = r["score"]
        per = r["fit_seconds"] / r["n_sources"]
        b0 = base.get((r["code"], r["size"]))
        cpu = r.get("fit_cpu_seconds")
        per_cpu = cpu / r["n_sources"] if cpu else None
        c0 = base_cpu.get((r["code"], r["size"]))
        comp = [_bin(sc["bins"], lo).get("completeness") for lo in (5.0, 10.0)]
        crbs = [_bin(sc["crb_bins"], lo) for lo in (10.0, 30.0, 100.0)]
        L.append(
            head + f" {r['n_sources']} | {r['fit_seconds']:.1f} | {1000 * per:.2f} | "
            f"{bl.fmt(per / b0 if b0 else None, 2)} | "
            f"{bl.fmt(1000 * per_cpu if per_cpu else None, 2)} | "
            f"{bl.fmt(per_cpu / c0 if per_cpu and c0 else None, 2)} | {r['peak_rss_mib']:.0f} | "
            f"{bl.fmt(comp[0])} / {bl.fmt(comp[1])} | "
            f"{bl.fmt(sc['summary']['spurious_fraction'])} | "
            + " / ".join(
                f"{bl.fmt(c.get('scatter_over_crowded_crb'), 2)} ({c.get('n', 0)})" for c in crbs
            )
            + f" | {r.get('measured', '')} |"
        )
    L += [
        "",
        "## Forced fit of the true stars",
        "",
        "Every in-image true star above the true-S/N threshold, positions held, other "
        "sources found as usual. × free: forced fit time over the free fit time at the same "
        "density. Per true-S/N bin (unsaturated stars): robust scatter of (f − t)/t, median "
        "(f − t)/t, and robust scatter of (f − t)/σ_CRB (crowded bound, the CRB stars).",
        "",
        "| size | stars/px | S/N ≥ | forced | fit (s) | × free | CPU × free | peak RSS (MiB) "
        "| finite "
        "| scatter (f−t)/t <3 / 5–10 / 10–30 / 100–300 | median (f−t)/t <3 / 5–10 / 30–100 "
        "| scatter / crowded CRB <3 / 5–10 / 10–30 / 30–100 / 100–300 | measured |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    free = {
        (r["size"], r["density"]): r
        for r in rows
        if r["mode"] == "free" and r["code"] == "engine" and not r["timed_out"]
    }
    for r in rows:
        if r["mode"] != "forced":
            continue
        head = f"| {r['size']}² | {r['density']:g} | {r['forced_snr_min']:g} | {r['n_forced']} |"
        if r["timed_out"]:
            L.append(head + f" stopped after {r['process_wall_seconds']:.0f} s |" + " |" * 8)
            continue
        b = r["score"]["bins"]
        fr = free.get((r["size"], r["density"]), {})
        fs, fc, cpu = fr.get("fit_seconds"), fr.get("fit_cpu_seconds"), r.get("fit_cpu_seconds")
        L.append(
            head + f" {r['fit_seconds']:.1f} | {bl.fmt(r['fit_seconds'] / fs if fs else None, 2)}"
            f" | {bl.fmt(cpu / fc if cpu and fc else None, 2)}"
            f" | {r['peak_rss_mib']:.0f} | {r['score']['n_finite']}/{r['score']['n_forced']} | "
            + " / ".join(
                bl.fmt(_bin(b, lo).get("scatter_rel"), 3) for lo in (0.0, 5.0, 10.0, 100.0)
            )
            + " | "
            + " / ".join(
                f"{_bin(b, lo).get('median_rel', float('nan')):+.3f}" for lo in (0.0, 5.0, 30.0)
            )
            + " | "
            + " / ".join(
                bl.fmt(_bin(b, lo).get("scatter_over_crowded_crb"), 2)
                for lo in (0.0, 5.0, 10.0, 30.0, 100.0)
            )
            + f" | {r.get('measured', '')} |"
        )
    warn = {
        f"{r['code']} {r['mode']} {r['density']:g}": r["warnings"]
        for r in rows
        if r.get("warnings")
    }
    if warn:
        L += ["", "Warnings logged by the fits:", ""]
        L += [f"- {k}: {'; '.join(v)}" for k, v in warn.items()]
    if res.get("busy_at_start"):
        L += ["", "Other processes busy at the start: " + "; ".join(res["busy_at_start"][:6])]
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
