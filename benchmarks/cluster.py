#!/usr/bin/env python
"""A globular cluster on the Galactic field: the free fit across a King profile (issue 16).

    .venv/bin/python benchmarks/cluster.py                 # engine and crowdsourcephoto
    .venv/bin/python benchmarks/cluster.py --skip-crowdsource
    .venv/bin/python benchmarks/cluster.py --quick         # 256², engine only; < 1 min

One 1024² field (`benchlib.simulated_field` with ``king``: galsim PSF,
saturation, one bad column, seed 1) whose star density follows a King
(1962) profile, ``--central`` stars/px at the centre (core radius
``--core``, tidal radius ``--tidal`` pixels) on a uniform field population of
``--floor`` stars/px.  Each code fits it once in a fresh process (true
starting PSF, PSF refit; `benchlib.run_engine`, `benchlib.run_crowdsource`);
the catalogues are scored in annuli about the centre: the true density
there, completeness at true S/N 10-30 and 30-100 (1 px one-to-one match),
the spurious fraction of the detections there, and the robust scatter of
(f - t) / t of matched unsaturated stars at S/N 30-100 and >= 100.

Writes results/cluster.json and .md (``--quick``: in the cache directory).
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

EDGES = (0.0, 30.0, 60.0, 120.0, 250.0, 400.0, 800.0)


def annulus_rows(cat: dict[str, np.ndarray], fld, edges=EDGES) -> list[dict]:
    """Per annulus about the image centre: density, completeness, spurious, scatter."""
    from lsst.meas.crowdsource.testing.evaluation import robust_scatter, score_catalog

    t = fld.truth
    ny, nx = fld.image.shape
    cx, cy = fld.xy0[0] + (nx - 1) / 2, fld.xy0[1] + (ny - 1) / 2
    tx, ty = np.asarray(t["x"], float), np.asarray(t["y"], float)
    snr, tf = np.asarray(t["snr"]), np.asarray(t["flux"])
    inside = np.asarray(t["in_image"], bool) & ~np.asarray(t["saturated"], bool)
    match = score_catalog(cat["x"], cat["y"], cat["flux"], None, t, radius=1.0)["match"]
    r_true = np.hypot(tx - cx, ty - cy)
    r_det = np.hypot(cat["x"] - cx, cat["y"] - cy)
    yy, xx = np.mgrid[0:ny, 0:nx]
    r_pix = np.hypot(xx + fld.xy0[0] - cx, yy + fld.xy0[1] - cy)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        area = float(((r_pix >= lo) & (r_pix < hi)).sum())
        if area == 0:
            continue
        ring = (r_true >= lo) & (r_true < hi)
        row = {
            "r_lo": lo,
            "r_hi": hi,
            "true_density": float((ring & np.asarray(t["in_image"], bool)).sum() / area),
        }
        for a, b in ((10, 30), (30, 100)):
            sel = ring & inside & (snr >= a) & (snr < b)
            row[f"completeness_{a}_{b}"] = (
                float((match.truth_to_det[sel] >= 0).mean()) if sel.any() else float("nan")
            )
        dets = (r_det >= lo) & (r_det < hi)
        row["n_det"] = int(dets.sum())
        row["spurious"] = float((match.det_to_truth[dets] < 0).mean()) if dets.any() else np.nan
        for name, (a, b) in (("30_100", (30, 100)), ("100_up", (100, np.inf))):
            sel = ring & inside & (snr >= a) & (snr < b) & (match.truth_to_det >= 0)
            d = match.truth_to_det[sel]
            row[f"scatter_{name}"] = (
                robust_scatter((cat["flux"][d] - tf[sel]) / tf[sel]) if sel.sum() > 3 else np.nan
            )
        rows.append(row)
    return rows


def _machine() -> str:
    m = bl.machine_info()
    return f"{m['cpu']}, {m['n_cpu']} cores (shared), {m['memory_gib']} GiB"


def _git() -> str:
    g = bl.git_state()
    dirty = f" + uncommitted ({g['uncommitted_diff_sha1']})" if g["engine_uncommitted"] else ""
    return g["git_commit"] + dirty


def markdown(res: dict) -> str:
    f = bl.fmt
    out = [
        "# A King-profile cluster on a uniform field",
        "",
        f"Last run {res['when']}; {res['machine']}. Package at {res['git']}. Field: "
        f"`benchlib.simulated_field` {res['size']}², King profile {res['central']:g} stars/px "
        f"at the centre, core radius {res['core']:g} px, tidal radius {res['tidal']:g} px, "
        f"on {res['floor']:g} stars/px; {res['n_stars']} stars in the image; seed "
        f"{res['seed']}; true starting PSF, refit. One run per code; time: the fit call only.",
        "",
        "| code | fit (s) | sources | peak RSS (MiB) |",
        "|---|---|---|---|",
    ]
    for code, r in res["codes"].items():
        if r.get("timed_out"):
            out.append(f"| {code} | stopped after {r['timeout']:g} s | | |")
            continue
        out.append(f"| {code} | {f(r['fit_s'], 1)} | {r['n']} | {f(r['peak_mib'], 0)} |")
    out += [
        "",
        "Per annulus (pixels from the centre): true stars per pixel; completeness at true "
        "S/N 10–30 and 30–100; spurious fraction of the detections there; robust scatter "
        "of (f − t)/t at S/N 30–100 and ≥ 100 (unsaturated).",
        "",
        "| r (px) | true density | code | completeness 10–30 | 30–100 | detections | spurious "
        "| scatter 30–100 | ≥ 100 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    codes = [c for c, r in res["codes"].items() if "annuli" in r]
    for k in range(len(res["codes"][codes[0]]["annuli"]) if codes else 0):
        for j, code in enumerate(codes):
            a = res["codes"][code]["annuli"][k]
            head = (
                f"| {a['r_lo']:g}–{a['r_hi']:g} | {f(a['true_density'], 3)} "
                if j == 0
                else "|  |  "
            )
            out.append(
                head + f"| {code} | {f(a['completeness_10_30'])} | {f(a['completeness_30_100'])} "
                f"| {a['n_det']} | {f(a['spurious'])} | {f(a['scatter_30_100'])} "
                f"| {f(a['scatter_100_up'])} |"
            )
    return "\n".join(out) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--central", type=float, default=0.3, help="stars/px at the centre")
    ap.add_argument("--core", type=float, default=60.0, help="core radius (px)")
    ap.add_argument("--tidal", type=float, default=700.0, help="tidal radius (px)")
    ap.add_argument("--floor", type=float, default=0.01, help="field stars/px")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per fit")
    ap.add_argument("--skip-crowdsource", action="store_true")
    ap.add_argument("--quick", action="store_true", help="256², core 15 px, engine only")
    ap.add_argument("--cache-dir", type=Path, default=bl.DEFAULT_CACHE)
    ap.add_argument("--out-dir", type=Path, default=None)
    ap.add_argument("--cs-python", default=bl.DEFAULT_CS_PYTHON)
    args = ap.parse_args(argv)
    if args.quick:
        args.size, args.core, args.tidal, args.skip_crowdsource = 256, 15.0, 175.0, True
    out_dir = bl.output_dir(args.out_dir, args.cache_dir, args.quick)
    out_dir.mkdir(parents=True, exist_ok=True)
    king = (args.core, args.tidal, args.floor)
    cf = bl.simulated_field(args.size, args.central, args.seed, args.cache_dir, king=king)
    work = Path(args.cache_dir) / "runs"
    work.mkdir(parents=True, exist_ok=True)
    res = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": _machine(),
        "git": _git(),
        "size": args.size,
        "central": args.central,
        "core": args.core,
        "tidal": args.tidal,
        "floor": args.floor,
        "seed": args.seed,
        "n_stars": int(np.asarray(cf.field.truth["in_image"], bool).sum()),
        "codes": {},
    }
    codes = ["engine"] + ([] if args.skip_crowdsource else ["crowdsourcephoto"])
    for code in codes:
        out, log = work / f"{cf.key}_cluster_{code}.npz", work / f"{cf.key}_cluster_{code}.log"
        print(f"[{time.strftime('%H:%M:%S')}] {cf.key} {code} ...", flush=True)
        if code == "engine":
            info = bl.run_engine(cf.npz, out, log_path=log, timeout=args.timeout)
        else:
            info = bl.run_crowdsource(
                cf.npz, out, python=args.cs_python, log_path=log, timeout=args.timeout
            )
        if info.get("timed_out"):
            res["codes"][code] = {"timed_out": True, "timeout": args.timeout}
            continue
        cat = bl.load_catalog(out)
        res["codes"][code] = {
            "fit_s": info["fit_seconds"],
            "n": int(len(cat["x"])),
            "peak_mib": info["peak_rss_mib"],
            "annuli": annulus_rows(cat, cf.field),
        }
        print(f"    {info['fit_seconds']:.1f} s, {len(cat['x'])} sources", flush=True)
        out.unlink(missing_ok=True)
    (out_dir / "cluster.json").write_text(json.dumps(res, indent=1, default=float))
    (out_dir / "cluster.md").write_text(markdown(res))
    print((out_dir / "cluster.md").read_text())


if __name__ == "__main__":
    main()
