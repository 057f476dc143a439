#!/usr/bin/env python
"""Structured backgrounds: completeness, spurious rate, flux scatter and sky error per kind.

    .venv/bin/python benchmarks/structured_sky.py                       # 768², 20 sigma, all kinds
    .venv/bin/python benchmarks/structured_sky.py --size 512 --kinds flat nebula \\
        --set sky_box=10 --set sky_smooth=1 --label "box 10"            # an ablation row
    .venv/bin/python benchmarks/structured_sky.py --true-sky            # the oracle: sky given

Each field: ``--size``² pixels, ``--density`` stars per pixel down to S/N 1.5, a
constant PSF (Moffat, FWHM 4 px; none given to the engine: it is estimated), a
flat sky of 1000 counts plus one `~lsst.meas.crowdsource.testing.backgrounds`
kind at ``--amplitude`` times the sky noise.  The same stars (same seed) on
every kind, so the ``flat`` row is the reference.  Reported per kind:

- ``compl_10_30``: completeness at true S/N 10-30 (1 px match);
- ``spurious``: detections with no true star within 1 px / detections;
- ``scat/crb``: robust scatter of (flux - true) / (true / S/N) for true
  S/N > 5, i.e. the flux scatter over the isolated-star Cramér-Rao bound;
- ``sky_rms``: rms of fitted minus true sky over the good pixels, in units
  of the sky noise (and its median, ``sky_bias``);
- ``seconds``: wall time of `fit_image`.

``--set name=value`` overrides a `~lsst.meas.crowdsource.engine.FitParams`
field; ``--true-sky`` subtracts the true sky first and fits with the sky held
at zero (``n_coarse_sky`` and boxes still run on the residual, which is then
flat): the bound on what a sky model can give.  ``--json`` appends the rows
to a file (JSON lines).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np

from lsst.meas.crowdsource.engine import FitParams, fit_image
from lsst.meas.crowdsource.testing.backgrounds import (
    BACKGROUND_KINDS,
    sky_noise,
    structured_background,
)
from lsst.meas.crowdsource.testing.evaluation import robust_scatter, score_catalog
from lsst.meas.crowdsource.testing.simulate import simulate_field

SKY = 1000.0


def make_field(kind: str, size: int, density: float, amplitude: float, seed: int):
    """The benchmark field of one background kind (same stars for every kind)."""
    background = structured_background((size, size), kind, amplitude=amplitude, sky=SKY, seed=seed)
    return simulate_field(
        (size, size),
        density=density,
        seed=seed,
        psf="moffat",
        fwhm=4.0,
        psf_variation=0.0,
        ellipticity=0.0,
        sky=SKY,
        sky_gradient=(0.0, 0.0),
        snr_min=1.5,
        bad_columns=0,
        background=background,
    )


def parse_overrides(items: list[str]) -> dict:
    """``name=value`` pairs -> FitParams keyword arguments, typed like the defaults."""
    types = {f.name: type(getattr(FitParams(), f.name)) for f in fields(FitParams)}
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in types:
            raise SystemExit(f"--set: FitParams has no field {name!r}")
        kind = types[name]
        out[name] = (value.lower() in ("1", "true", "yes")) if kind is bool else kind(value)
    return out


def empty_positions(field, x, y, n: int, min_distance: float, seed: int = 0):
    """``n`` random positions at least ``min_distance`` from every ``(x, y)`` and the edges."""
    from scipy.spatial import cKDTree

    rng = np.random.default_rng(seed)
    ny, nx = field.shape
    tree = cKDTree(np.column_stack([x, y])) if len(x) else None
    px, py = [], []
    for _ in range(100):
        cx = rng.uniform(min_distance, nx - 1 - min_distance, 4 * n)
        cy = rng.uniform(min_distance, ny - 1 - min_distance, 4 * n)
        if tree is not None:
            d, _ = tree.query(np.column_stack([cx, cy]))
            keep = d >= min_distance
            cx, cy = cx[keep], cy[keep]
        px.extend(cx)
        py.extend(cy)
        if len(px) >= n:
            break
    return np.asarray(px[:n]), np.asarray(py[:n])


def forced_at_empty(field, params: FitParams, found_x, found_y, n: int) -> dict:
    """Forced photometry at ``n`` positions >= 2 FWHM (8 px) from every detected source."""
    image = field.image
    fx, fy = empty_positions(field, found_x, found_y, n, 8.0)
    res = fit_image(image, field.variance, bad=field.mask != 0, params=params,
                    forced_x=fx, forced_y=fy)  # fmt: skip
    c = res.columns
    rows = np.asarray(c["forced_index"]) >= 0
    z = np.asarray(c["flux"])[rows] / np.asarray(c["flux_err"])[rows]
    z = z[np.isfinite(z)]
    return {"forced_n": int(z.size), "forced_median_z": float(np.median(z)) if z.size else np.nan}


def run_one(
    field, params: FitParams, true_sky: bool, keep: dict | None = None, n_forced: int = 0
) -> dict:
    """Fit one field and score it (``keep``: gets the images for the figure; ``n_forced``:
    also force-fit that many empty positions and report the median flux / error)."""
    image = field.image - field.sky if true_sky else field.image
    t0 = time.perf_counter()
    res = fit_image(image, field.variance, bad=field.mask != 0, params=params)
    seconds = time.perf_counter() - t0
    c = res.columns
    truth = field.truth
    scored = score_catalog(c["x"], c["y"], c["flux"], c["flux_err"], truth, radius=1.0)
    mid = score_catalog(
        c["x"], c["y"], c["flux"], c["flux_err"], truth, radius=1.0, snr_bins=(10.0, 30.0)
    )["bins"][0]
    match = scored["match"]
    tsnr = np.asarray(truth["snr"])
    tflux = np.asarray(truth["flux"])
    inside = np.asarray(truth["in_image"], bool) & ~np.asarray(truth["saturated"], bool)
    det = match.truth_to_det
    sel = inside & (tsnr > 5) & (det >= 0)
    z = (np.asarray(c["flux"])[det[sel]] - tflux[sel]) / (tflux[sel] / tsnr[sel])
    noise = sky_noise(SKY)
    good = field.mask == 0
    fitted_sky = res.sky if not true_sky else res.sky + field.sky
    dsky = (fitted_sky - field.sky)[good] / noise
    if keep is not None:
        keep.update(
            image=field.image,
            sky=fitted_sky,
            dsky=(fitted_sky - field.sky) / noise,
            resid=(image - res.model) / np.sqrt(field.variance),  # the model includes the sky
        )
    forced = forced_at_empty(field, params, c["x"], c["y"], n_forced) if n_forced else {}
    return {
        **forced,
        "n_det": int(len(c["x"])),
        "compl_10_30": float(mid["completeness"]),
        "spurious": float(scored["summary"]["spurious_fraction"]),
        "scat_crb": robust_scatter(z),
        "sky_rms": float(np.sqrt(np.mean(dsky**2))),
        "sky_bias": float(np.median(dsky)),
        "seconds": seconds,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=768)
    ap.add_argument("--density", type=float, default=0.02)
    ap.add_argument("--amplitude", type=float, default=20.0)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--kinds", nargs="+", default=list(BACKGROUND_KINDS), choices=BACKGROUND_KINDS)
    ap.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("--true-sky", action="store_true")
    ap.add_argument("--label", default="")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--figure", type=Path, help="PNG: image, sky, sky error, residual per kind")
    ap.add_argument(
        "--forced",
        type=int,
        default=0,
        metavar="N",
        help="also force-fit N empty positions (>= 2 FWHM from every detection): median flux/err",
    )
    args = ap.parse_args(argv)
    params = FitParams(**parse_overrides(args.set))
    label = args.label or (",".join(args.set) or "default") + (" true-sky" if args.true_sky else "")
    cols = ("n_det", "compl_10_30", "spurious", "scat_crb", "sky_rms", "sky_bias", "seconds")
    if args.forced:
        cols = (*cols, "forced_n", "forced_median_z")
    print(f"# {label}: {args.size}² density {args.density} amplitude {args.amplitude}σ")
    print(f"{'kind':10s} " + " ".join(f"{c:>11s}" for c in cols))
    panels = {}
    for kind in args.kinds:
        field = make_field(kind, args.size, args.density, args.amplitude, args.seed)
        panels[kind] = {} if args.figure else None
        row = run_one(field, params, args.true_sky, panels[kind], args.forced)
        print(
            f"{kind:10s} "
            + " ".join(
                f"{row[c]:11d}" if isinstance(row[c], int) else f"{row[c]:11.3f}" for c in cols
            ),
            flush=True,
        )
        if args.json:
            rec = dict(
                label=label,
                kind=kind,
                size=args.size,
                density=args.density,
                amplitude=args.amplitude,
                seed=args.seed,
                overrides=args.set,
                true_sky=args.true_sky,
                **row,
            )
            with open(args.json, "a") as fh:
                fh.write(json.dumps(rec) + "\n")
    if args.figure:
        plot_panels(panels, f"{label}: {args.size}² at {args.amplitude:g}σ", args.figure)
    return 0


def plot_panels(panels: dict[str, dict], title: str, path: Path) -> None:
    """One row per kind: image, fitted sky, (fitted - true sky) / noise, residual / noise."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(panels), 4, figsize=(12, 3 * len(panels)), squeeze=False)
    for row, (kind, p) in zip(axes, panels.items()):
        lo, hi = np.percentile(p["sky"], [1, 99])
        shows = (
            ("image", np.arcsinh((p["image"] - lo) / 30.0), "gray", (0.0, 5.0)),
            ("fitted sky", p["sky"], "gray", (lo, hi)),
            ("(fitted - true sky) / noise", p["dsky"], "RdBu_r", (-3, 3)),
            ("residual / noise", p["resid"], "RdBu_r", (-5, 5)),
        )
        for ax, (name, img, cmap, lim) in zip(row, shows):
            kw = {} if lim is None else dict(vmin=lim[0], vmax=lim[1])
            im = ax.imshow(img, origin="lower", cmap=cmap, interpolation="nearest", **kw)
            ax.set_title(f"{kind}: {name}", fontsize=9)
            ax.set_xticks([])
            ax.set_yticks([])
            if lim is not None:
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=60)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
