#!/usr/bin/env python
"""Artificial-star tests against the truth, and what a round costs.

    .venv/bin/python benchmarks/injection.py                # 512x512, seeds 1-3, 20 rounds
    .venv/bin/python benchmarks/injection.py --quick        # 256x256, one seed, 4 rounds

On the benchmark fields (`benchlib.simulated_field`: galsim PSF varying
across the field, 0.02 stars/px from S/N 2 to 3000, saturated stars with
bleed trails, a bad column), wrapped as CCDData calexps with the true PSF
stamp at the centre (59x59) and 0.5 nJy per count, as the demo does:

1. the photometry of the real image (timed: the reference cost), scored
   against the truth per AB-magnitude bin with
   `lsst.meas.crowdsource.artificial_stars.summarize` (true stars in the
   image, one-to-one match within 1 px);
2. `CrowdsourceInjectionTask` on the same exposure and real catalogue, in
   two set-ups: ``true`` -- the exposure's PSF model is the true PSF
   everywhere, over its whole support (what a calexp with a good PSF model
   gives), and ``fitted``
   -- the task's default for a CCDData, whose single PSF stamp is not a
   model of the varying PSF: the stars are drawn with the PSF the photometry
   fitted;
3. per bin the completeness difference as a two-proportion binomial z, the
   median-bias and robust-scatter differences over their sampling errors
   (`compare_summaries`), the 50 % completeness magnitudes (errors from 300
   bootstrap resamplings of the stars), per seed and pooled over the seeds;
4. the wall and CPU time of a round (draw, photometry, match) over one
   photometry run of the same image.

Writes results/injection.json, .md and .png (the pooled ``true`` set-up
against the truth) and results/injection_density.png.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl  # noqa: E402
from lsst.meas.crowdsource import (  # noqa: E402
    CrowdsourceInjectionConfig,
    CrowdsourceInjectionTask,
    CrowdsourcePhotometryConfig,
    CrowdsourcePhotometryTask,
)
from lsst.meas.crowdsource import artificial_stars as art  # noqa: E402
from lsst.meas.crowdsource.engine.psf_io import psf_to_dict  # noqa: E402
from lsst.meas.crowdsource.io.ccddata import make_ccddata  # noqa: E402
from lsst.meas.crowdsource.io.exposure import exposure_inputs  # noqa: E402
from lsst.meas.crowdsource.testing.evaluation import truth_recovery  # noqa: E402

NJY_PER_COUNT = 0.5
MATCH_RADIUS = 1.0
SETUPS = ("true", "fitted")
BOOTSTRAP = 300


def _clock():
    return time.perf_counter(), time.process_time()


def _since(t):
    wall, cpu = _clock()
    return wall - t[0], cpu - t[1]


def injected_arrays(table):
    return {
        "mag": np.asarray(table["injectedMag"], float),
        "rec": np.asarray(table["recovered"], bool),
        "true": np.asarray(table["injectedFlux"], float),
        "flux": np.asarray(table["recoveredFlux"], float),
        "err": np.asarray(table["recoveredFluxErr"], float),
    }


def summary_of(a, edges):
    return art.summarize(a["mag"], a["rec"], a["true"], a["flux"], a["err"], edges)


def mag50_error(a, edges, rng):
    """Bootstrap error of the 50 % completeness magnitude."""
    n = len(a["mag"])
    values = []
    for _ in range(BOOTSTRAP):
        i = rng.integers(0, n, n)
        values.append(
            art.completeness_magnitude(summary_of({k: v[i] for k, v in a.items()}, edges))
        )
    values = np.asarray(values)
    return float(np.nanstd(values))


def compare(inj, tru, edges, rng):
    si, st = summary_of(inj, edges), summary_of(tru, edges)
    cmp = art.compare_summaries(si, st, min_stars=20)
    z = {k: np.asarray(cmp[k], float) for k in ("completenessZ", "fluxBiasZ", "fluxScatterZ")}
    m50 = (art.completeness_magnitude(si), art.completeness_magnitude(st))
    e50 = (mag50_error(inj, edges, rng), mag50_error(tru, edges, rng))
    return (
        {
            "injected": bl._table_to_rows(si),
            "truth": bl._table_to_rows(st),
            "comparison": bl._table_to_rows(cmp),
            "mag50": {
                "injected": m50[0],
                "truth": m50[1],
                "injected_err": e50[0],
                "truth_err": e50[1],
            },
            "stats": {
                k: {
                    "n_bins": int(np.isfinite(v).sum()),
                    "chi2_per_bin": float(np.nanmean(v**2)) if np.isfinite(v).any() else None,
                    "max_abs": float(np.nanmax(np.abs(v))) if np.isfinite(v).any() else None,
                }
                for k, v in z.items()
            },
        },
        si,
        st,
    )


def run_seed(seed, args, edges):
    cached = bl.simulated_field(args.size, 0.02, seed, cache_dir=args.cache_dir)
    fld = cached.field
    ny, nx = fld.shape
    stamp = np.asarray(
        fld.psf_at(float((nx - 1) // 2), float((ny - 1) // 2), size=bl.PSF_STAMP_SIZE)
    )
    ccd = make_ccddata(
        fld.image,
        fld.variance,
        mask=fld.mask,
        mask_planes=fld.mask_planes,
        psf=stamp,
        photcalib=NJY_PER_COUNT,
    )
    pconf = CrowdsourcePhotometryConfig()
    pconf.setNoAfwStorage()
    t = _clock()
    real = CrowdsourcePhotometryTask(config=pconf).run(ccd)
    phot_wall, phot_cpu = _since(t)
    print(
        f"[seed {seed}] photometry: {len(real.sourceTable)} sources, {phot_wall:.1f} s "
        f"wall, {phot_cpu:.1f} s CPU",
        flush=True,
    )
    zp = art.zero_point(NJY_PER_COUNT, 25.0)
    out = {
        "seed": seed,
        "n_real": len(real.sourceTable),
        "photometry_wall": phot_wall,
        "photometry_cpu": phot_cpu,
        "setups": {},
    }
    tru = truth_recovery(fld.truth, real.sourceTable, zp, MATCH_RADIUS)
    arrays = {"truth": tru}
    for setup in args.setups:
        config = CrowdsourceInjectionConfig()
        config.setNoAfwStorage()
        config.nRounds, config.seed = args.rounds, seed
        config.magMin, config.magMax = float(edges[0]), float(edges[-1])
        config.magBinWidth = args.bin_width
        exposure = ccd
        if setup == "true":
            # The whole PSF support: a stamp that cuts the wings would make the artificial
            # stars more compact than the real ones.
            full = 2 * int(fld.meta["psf_radius"]) + 1
            exposure = dataclasses.replace(
                exposure_inputs(ccd), psf=functools.partial(fld.psf_at, size=full)
            )
        task = CrowdsourceInjectionTask(config=config)
        t = _clock()
        res = task.run(exposure, sourceTable=real.sourceTable, psf=psf_to_dict(real.fit.psf))
        wall, cpu = _since(t)
        rounds = res.roundTable
        inj = injected_arrays(res.injectedTable)
        arrays[setup] = inj
        result, _, _ = compare(inj, tru, edges, np.random.default_rng(seed))
        result.update(
            n_injected=len(res.injectedTable),
            stars_per_round=int(np.median(rounds["nInjected"])),
            seconds_per_round=float(np.mean(rounds["seconds"])),
            cpu_per_round=cpu / args.rounds,
            wall_total=wall,
            round_over_photometry_wall=float(np.mean(rounds["seconds"])) / phot_wall,
            round_over_photometry_cpu=cpu / args.rounds / phot_cpu,
            real_pull_median=[float(v) for v in rounds["realPullMedian"]],
            real_pull_scatter=[float(v) for v in rounds["realPullScatter"]],
            real_matched_fraction=[float(v) for v in rounds["realMatchedFraction"]],
        )
        out["setups"][setup] = result
        st = result["stats"]
        print(
            f"[seed {seed}] {setup}: {len(res.injectedTable)} stars, mag50 "
            f"{result['mag50']['injected']:.3f} (truth {result['mag50']['truth']:.3f}), "
            f"completeness chi2/bin {st['completenessZ']['chi2_per_bin']:.2f}, "
            f"{result['seconds_per_round']:.1f} s per round "
            f"({result['round_over_photometry_wall']:.2f} x photometry)",
            flush=True,
        )
        if setup == "true":
            out["density_table"] = res.injectedTable
    return out, arrays


def write_report(report, out_dir: Path, pooled_summaries, density_table):
    from lsst.meas.crowdsource.testing.injection_plots import (
        plot_completeness_density,
        plot_injection_summary,
    )

    (out_dir / "injection.json").write_text(json.dumps(bl_jsonable(report), indent=1))
    si, st = pooled_summaries["true"]
    plot_injection_summary(
        out_dir / "injection.png",
        si,
        truth_summary=st,
        mag_label="AB magnitude",
        title=f"artificial stars (true PSF model) against the truth, {len(report['seeds'])} "
        f"fields of {report['size']}² px",
    )
    plot_completeness_density(
        out_dir / "injection_density.png",
        density_table,
        title="artificial-star completeness against the local density of real sources",
    )
    (out_dir / "injection.md").write_text(markdown(report))


def bl_jsonable(obj):
    if isinstance(obj, dict):
        return {k: bl_jsonable(v) for k, v in obj.items() if k != "density_table"}
    if isinstance(obj, (list, tuple)):
        return [bl_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if np.isfinite(obj) else None
    return obj


def _row_table(rows_i, rows_t, rows_c):
    lines = [
        "| mag | n inj | n true | compl. inj | compl. true | z | bias inj | bias true | z "
        "| scatter inj | scatter true | z |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    f = bl.fmt
    for a, b, c in zip(rows_i, rows_t, rows_c):
        lines.append(
            f"| {a['magMin']:.1f}–{a['magMax']:.1f} | {a['nInjected']} | {b['nInjected']} | "
            f"{f(a['completeness'], 3)} ± {f(a['completenessErr'], 3)} | "
            f"{f(b['completeness'], 3)} ± {f(b['completenessErr'], 3)} | "
            f"{f(c['completenessZ'], 1)} | "
            f"{f(a['fluxBias'], 3)} ± {f(a['fluxBiasErr'], 3)} | "
            f"{f(b['fluxBias'], 3)} ± {f(b['fluxBiasErr'], 3)} | {f(c['fluxBiasZ'], 1)} | "
            f"{f(a['fluxScatter'], 3)} ± {f(a['fluxScatterErr'], 3)} | "
            f"{f(b['fluxScatter'], 3)} ± {f(b['fluxScatterErr'], 3)} | {f(c['fluxScatterZ'], 1)} |"
        )
    return lines


def markdown(report) -> str:
    m = report["machine"]
    lines = [
        "# Artificial-star tests against the truth",
        "",
        f"{m['date']}; {m['cpu']}, {m['n_cpu']} cores; package at {m['git_commit']}; "
        f"load average at the start {', '.join(f'{v:.1f}' for v in m['loadavg_start'])} "
        "(the machine was shared: times are noisy, their ratios less so).",
        f"Fields: `benchlib.simulated_field({report['size']}, 0.02, seed)` for seeds "
        f"{report['seeds']} (galsim PSF, FWHM 3.5 px varying by 15 % to the corners, saturation, "
        f"a bad column); CCDData calexps with the true PSF stamp at the centre and "
        f"{NJY_PER_COUNT} nJy per count (AB magnitudes).  {report['rounds']} rounds per set-up "
        f"and seed; magnitude bins of {report['bin_width']} mag; completeness z: two-proportion "
        "binomial test (pooled p); bias and scatter z: difference over the two sampling errors "
        "(median: 1.253 σ/√n, 1.4826 MAD: 1.166 σ/√n); bins with ≥ 20 stars (recovered stars "
        "for bias and scatter) in both.",
        "",
        "Set-ups: **true** -- the exposure's PSF model is the true PSF at every position (as a "
        "calexp with a good PSF model); **fitted** -- the task's default for a CCDData, whose "
        "single stamp is no model of the varying PSF: the stars are drawn with the PSF the "
        "photometry fitted.",
        "",
        "## Pooled over the seeds",
        "",
        "| set-up | stars | mag50 injected | mag50 truth | completeness χ²/bin (bins) | max |z| "
        "| bias χ²/bin (bins) | max |z| | scatter χ²/bin (bins) | max |z| |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    f = bl.fmt
    for setup, p in report["pooled"].items():
        s = p["stats"]
        lines.append(
            f"| {setup} | {p['n_injected']} | {f(p['mag50']['injected'], 3)} ± "
            f"{f(p['mag50']['injected_err'], 3)} | {f(p['mag50']['truth'], 3)} ± "
            f"{f(p['mag50']['truth_err'], 3)} | "
            + " | ".join(
                f"{f(s[k]['chi2_per_bin'], 2)} ({s[k]['n_bins']}) | {f(s[k]['max_abs'], 1)}"
                for k in ("completenessZ", "fluxBiasZ", "fluxScatterZ")
            )
            + " |"
        )
    lines += [
        "",
        "## Time per round",
        "",
        "| seed | photometry (s wall / CPU) | set-up | stars per round | round (s wall) "
        "| round / photometry (wall) | round / photometry (CPU) | real-source pulls: "
        "median, scatter (worst round) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in report["per_seed"]:
        for setup, s in r["setups"].items():
            worst = int(np.argmax(np.abs(s["real_pull_median"])))
            lines.append(
                f"| {r['seed']} | {r['photometry_wall']:.1f} / {r['photometry_cpu']:.1f} | "
                f"{setup} | {s['stars_per_round']} | {s['seconds_per_round']:.1f} | "
                f"{s['round_over_photometry_wall']:.2f} | {s['round_over_photometry_cpu']:.2f} | "
                f"{s['real_pull_median'][worst]:+.3f}, {s['real_pull_scatter'][worst]:.3f} |"
            )
    for setup, p in report["pooled"].items():
        lines += ["", f"## Per bin, pooled, set-up {setup}", ""]
        lines += _row_table(p["injected"], p["truth"], p["comparison"])
    lines += ["", "Per seed: see injection.json.", ""]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--bin-width", type=float, default=0.5)
    parser.add_argument("--mag-range", type=float, nargs=2, default=[20.0, 25.5])
    parser.add_argument("--setups", nargs="+", default=list(SETUPS), choices=SETUPS)
    parser.add_argument("--quick", action="store_true", help="256x256, one seed, 4 rounds")
    parser.add_argument("--cache-dir", type=Path, default=bl.DEFAULT_CACHE)
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.seeds, args.rounds, args.bin_width = 256, [1], 4, 1.0
    logging.getLogger("lsst").setLevel(logging.WARNING)
    out_dir = bl.output_dir(args.out_dir, args.cache_dir, args.quick)
    out_dir.mkdir(parents=True, exist_ok=True)
    lo, hi = args.mag_range
    edges = np.linspace(lo, hi, int(round((hi - lo) / args.bin_width)) + 1)
    report = {
        "machine": bl.machine_info(),
        "size": args.size,
        "seeds": args.seeds,
        "rounds": args.rounds,
        "bin_width": args.bin_width,
        "per_seed": [],
        "pooled": {},
    }
    pooled = {}
    density_table = None
    for seed in args.seeds:
        r, arrays = run_seed(seed, args, edges)
        density_table = r.pop("density_table", density_table)
        report["per_seed"].append(r)
        for name, a in arrays.items():
            pooled.setdefault(name, []).append(a)
    cat = {name: {k: np.concatenate([a[k] for a in v]) for k in v[0]} for name, v in pooled.items()}
    summaries = {}
    for setup in args.setups:
        result, si, st = compare(cat[setup], cat["truth"], edges, np.random.default_rng(0))
        result["n_injected"] = int(len(cat[setup]["mag"]))
        report["pooled"][setup] = result
        summaries[setup] = (si, st)
    report["machine"]["loadavg_end"] = list(np.round(__import__("os").getloadavg(), 2))
    if "true" in summaries:
        write_report(report, out_dir, summaries, density_table)
    else:
        (out_dir / "injection.json").write_text(json.dumps(bl_jsonable(report), indent=1))
    print((out_dir / "injection.md").read_text() if (out_dir / "injection.md").exists() else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
