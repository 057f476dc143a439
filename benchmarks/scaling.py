#!/usr/bin/env python
"""Time and peak memory of the engine against image size (and of crowdsourcephoto).

    /tmp/venv/bin/python benchmarks/scaling.py                       # 1k, 2k, 4k (engine)
    /tmp/venv/bin/python benchmarks/scaling.py --cs-sizes 1024 2048  # + crowdsourcephoto
    /tmp/venv/bin/python benchmarks/scaling.py --quick               # 256, 512; < 1 min

Fields as in compare_crowdsource.py (0.02 stars / px, galsim PSF,
saturation, one bad column; cached).  Every fit runs in a fresh process so
that its peak memory is its own: the engine serially (``n_processes=1``) and,
for the sizes that are cut into several tiles (tile_size 1024), also with
``n_processes=2``; crowdsourcephoto (its defaults, one fit region, true
starting PSF) on ``--cs-sizes``.  Each configuration is timed ``--repeat``
times and the minimum fit time is kept.  The growth exponent is the slope of
log(time) against log(area) (least squares over the sizes).

Writes results/scaling.json and results/scaling.md (``--quick``:
scaling_quick.*).
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


def exponent(sizes, seconds):
    """Slope of log(time) vs log(area), or NaN with fewer than two sizes."""
    s = np.asarray(sizes, float)
    t = np.asarray(seconds, float)
    ok = np.isfinite(t) & (t > 0)
    if ok.sum() < 2:
        return float("nan")
    return float(np.polyfit(np.log(s[ok] ** 2), np.log(t[ok]), 1)[0])


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--sizes",
        type=int,
        nargs="*",
        default=[1024, 2048, 4096],
        help="engine sizes (none: only --cs-sizes)",
    )
    ap.add_argument(
        "--cs-sizes",
        type=int,
        nargs="*",
        default=[],
        help="sizes to run crowdsourcephoto on too (e.g. 1024 2048)",
    )
    ap.add_argument("--density", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument(
        "--cs-repeat",
        type=int,
        default=None,
        help="repeats for crowdsourcephoto (default: --repeat)",
    )
    ap.add_argument(
        "--parallel", type=int, default=2, help="n_processes of the parallel engine runs (0: none)"
    )
    ap.add_argument(
        "--tile-size",
        type=int,
        default=1024,
        help="engine tile_size (also decides which sizes are 'tiled')",
    )
    ap.add_argument(
        "--quick",
        action="store_true",
        help="256 and 512 (tile_size 256 so that 512 is tiled), one run each",
    )
    ap.add_argument(
        "--keep-from",
        "--keep-cs-from",
        dest="keep_from",
        type=Path,
        default=None,
        help="keep the rows of this earlier scaling.json that this run does not "
        "measure again (e.g. crowdsourcephoto, which does not change, or the "
        "engine when only --cs-sizes are run)",
    )
    ap.add_argument("--cache-dir", type=Path, default=bl.DEFAULT_CACHE)
    ap.add_argument(
        "--out-dir",
        type=Path,
        default=None,
        help="default: results/ (with --quick: .cache/quick/, so that a smoke "
        "test does not overwrite the recorded results)",
    )
    ap.add_argument("--cs-python", default=bl.DEFAULT_CS_PYTHON)
    ap.add_argument(
        "--report-only", action="store_true", help="rebuild the .md from the existing results json"
    )
    args = ap.parse_args(argv)
    args.out_dir = bl.output_dir(args.out_dir, args.cache_dir, args.quick)
    if args.report_only:
        stem = args.out_dir / "scaling"
        with open(f"{stem}.json") as fh:
            res = json.load(fh)
        Path(f"{stem}.md").write_text(markdown(res))
        print(Path(f"{stem}.md").read_text())
        return
    if args.quick:
        args.sizes, args.repeat, args.tile_size = [256, 512], 1, 256
        args.cs_sizes = [s for s in args.cs_sizes if s <= 512]
    cs_repeat = args.cs_repeat or args.repeat
    work = args.cache_dir / "runs"
    work.mkdir(parents=True, exist_ok=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    machine = bl.machine_info()
    busy = bl.other_load()

    rows = []
    for size in sorted(set(args.sizes) | set(args.cs_sizes)):
        cf = bl.simulated_field(size, args.density, args.seed, args.cache_dir)
        n_in = int(np.sum(cf.field.truth["in_image"]))
        configs = []
        if size in args.sizes:
            configs.append(("engine", 1))
            n_tiles = max(1, round(size / args.tile_size)) ** 2
            if args.parallel > 1 and n_tiles > 1:
                configs.append(("engine", args.parallel))
        if size in args.cs_sizes:
            configs.append(("crowdsourcephoto", 1))
        del cf.field  # the parent's memory does not matter, but keep it small
        for code, nproc in configs:
            runs = []
            rep = cs_repeat if code == "crowdsourcephoto" else args.repeat
            for k in range(rep):
                tag = f"{cf.key}_scaling_{code}_p{nproc}_{k}"
                out = work / f"{tag}.npz"
                log = work / f"{tag}.log"
                print(
                    f"[{time.strftime('%H:%M:%S')}] {size}^2 {code} n_processes={nproc} "
                    f"run {k + 1}/{rep} ...",
                    flush=True,
                )
                if code == "engine":
                    info = bl.run_engine(
                        cf.npz,
                        out,
                        psf="true",
                        n_processes=nproc,
                        log_path=log,
                        extra=["--param", f"tile_size={args.tile_size}"],
                    )
                else:
                    info = bl.run_crowdsource(
                        cf.npz, out, python=args.cs_python, psf="true", log_path=log
                    )
                info["loadavg_end"] = list(np.round(__import__("os").getloadavg(), 2))
                print(
                    f"    fit {info['fit_seconds']:.1f} s, peak RSS {info['peak_rss_mib']:.0f}"
                    f" MiB (VmHWM main {info['vmhwm_mib']:.0f}, tree "
                    f"{info['tree_peak_rss_mib']:.0f}), {info['n_sources']} sources, load "
                    f"{info['loadavg_end']}",
                    flush=True,
                )
                runs.append(info)
                out.unlink(missing_ok=True)
            best = min(runs, key=lambda r: r["fit_seconds"])
            rows.append(
                {
                    "code": code,
                    "size": size,
                    "n_processes": nproc,
                    "n_truth_in_image": n_in,
                    "n_tiles": best.get("n_tiles", 1),
                    "fit_seconds": best["fit_seconds"],
                    "fit_seconds_all": [r["fit_seconds"] for r in runs],
                    "cpu_seconds": best["user_seconds"] + best["system_seconds"],
                    "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
                    "vmhwm_main_mib": max(r["vmhwm_mib"] for r in runs),
                    "tree_peak_rss_mib": max(r["tree_peak_rss_mib"] for r in runs),
                    "input_mib": best["vmhwm_before_fit_mib"],
                    "n_sources": best["n_sources"],
                    "loadavg_end": [r["loadavg_end"] for r in runs],
                    "warnings": sorted(set(best.get("logged_warnings", []))),
                    "measured": time.strftime("%Y-%m-%d %H:%M"),
                    "git": bl.git_state() if code == "engine" else {},
                }
            )

    if args.keep_from:
        with open(args.keep_from) as fh:
            old = json.load(fh)
        for r in old["rows"]:
            if not any(
                q["code"] == r["code"]
                and q["size"] == r["size"]
                and q["n_processes"] == r["n_processes"]
                for q in rows
            ):
                r.setdefault("measured", old["machine"]["date"])
                rows.append(r)
        rows.sort(key=lambda r: (r["size"], r["code"] != "engine", r["n_processes"]))

    fits = {}
    for code, nproc in sorted({(r["code"], r["n_processes"]) for r in rows}):
        sel = [r for r in rows if r["code"] == code and r["n_processes"] == nproc]
        fits[f"{code} n_processes={nproc}"] = {
            "sizes": [r["size"] for r in sel],
            "exponent_time_vs_area": exponent(
                [r["size"] for r in sel], [r["fit_seconds"] for r in sel]
            ),
            "exponent_cpu_vs_area": exponent(
                [r["size"] for r in sel], [r["cpu_seconds"] for r in sel]
            ),
            "exponent_memory_vs_area": exponent(
                [r["size"] for r in sel], [r["peak_rss_mib"] for r in sel]
            ),
        }
    res = {
        "machine": machine,
        "density": args.density,
        "seed": args.seed,
        "tile_size": args.tile_size,
        "rows": rows,
        "fits": fits,
        "busy_at_start": busy,
        "loadavg_end": list(__import__("os").getloadavg()),
    }
    stem = args.out_dir / ("scaling_quick" if args.quick else "scaling")
    with open(f"{stem}.json", "w") as fh:
        json.dump(res, fh, indent=1)
    Path(f"{stem}.md").write_text(markdown(res))
    print(Path(f"{stem}.md").read_text())


def markdown(res):
    m = res["machine"]
    commits = sorted(
        {
            (r["git"].get("git_commit", "?"), ", ".join(r["git"].get("engine_uncommitted", [])))
            for r in res["rows"]
            if r["code"] == "engine" and r.get("git")
        }
    )
    if not commits:
        commits = [(m["git_commit"], ", ".join(m["engine_uncommitted"]))]
    pkg = "; ".join(c + (f" (uncommitted engine changes: {u})" if u else "") for c, u in commits)
    L = [
        "# Scaling with image size",
        "",
        f"{m['date']}; {m['cpu']}, {m['n_cpu']} cores, {m['memory_gib']} GiB. Engine rows "
        f"measured with the package at {pkg}.",
        f"Density {res['density']} stars/px, galsim PSF, saturation, one bad column; engine "
        f"tile_size {res['tile_size']}, true starting PSF for both codes.",
        "",
        "| code | size | n_processes | tiles | stars in image | sources | fit time (s), min "
        "| all runs (s) | CPU (s) | peak RSS (MiB) | runner before fit (MiB) | measured |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        L.append(
            f"| {r['code']} | {r['size']}² | {r['n_processes']} | {r['n_tiles']} | "
            f"{r['n_truth_in_image']} | {r['n_sources']} | {r['fit_seconds']:.1f} | "
            f"{', '.join(f'{v:.1f}' for v in r['fit_seconds_all'])} | "
            f"{r['cpu_seconds']:.0f} | {r['peak_rss_mib']:.0f} | {r['input_mib']:.0f} | "
            f"{r.get('measured', '')} |"
        )
    L += [
        "",
        "Growth exponents (time ∝ area^k, least squares over the sizes):",
        "",
        "| configuration | sizes | k (wall) | k (CPU) | k (peak RSS) |",
        "|---|---|---|---|---|",
    ]
    for name, f in res["fits"].items():
        L.append(
            f"| {name} | {', '.join(map(str, f['sizes']))} | "
            f"{bl.fmt(f['exponent_time_vs_area'], 2)} | "
            f"{bl.fmt(f['exponent_cpu_vs_area'], 2)} | "
            f"{bl.fmt(f['exponent_memory_vs_area'], 2)} |"
        )
    L += [
        "",
        "Fit time: the fit call only (no I/O, no interpreter start), minimum over the "
        "repeats. CPU: user + system of the whole runner process and its workers (best run). "
        "Peak RSS: the larger of the runner's VmHWM and the sampled sum of RSS over its "
        "process tree (workers included), largest over the repeats; 'runner before fit' is "
        "the runner's peak before the fit (interpreter, imports, input planes).",
        "",
    ]
    warn = {
        r["code"] + f" {r['size']}² p{r['n_processes']}": r["warnings"]
        for r in res["rows"]
        if r["warnings"]
    }
    if warn:
        L.append("Warnings logged by the engine:")
        L.append("")
        for k, v in warn.items():
            L.append(f"- {k}: {'; '.join(v)}")
        L.append("")
    if res["busy_at_start"]:
        L.append("Other processes busy at the start: " + "; ".join(res["busy_at_start"][:6]))
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    main()
