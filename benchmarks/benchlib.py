"""Shared helpers of the benchmarks: cached simulations, subprocess runs, scoring.

Runs in the package's own environment (numpy, scipy, astropy, psutil,
``lsst.meas.crowdsource``).  The runners (`run_engine.py`,
`run_crowdsource.py`) are executed as separate processes so that each fit
has its own peak memory and its own interpreter.
"""

from __future__ import annotations

import json
import os
import pickle
import platform
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_CACHE = HERE / ".cache"
RESULTS = HERE / "results"
DEFAULT_CS_PYTHON = "/tmp/csvenv/bin/python"

#: Saturation level of the benchmark fields (counts; the sky is 1000).
SATURATION = 60000.0
#: Size of the PSF stamp handed to both codes as their starting PSF.
PSF_STAMP_SIZE = 59

#: Edges of the true-S/N bins of the tables (the 5-10 and 10-30 bins are the
#: ones the targets talk about).
SNR_BINS = (0.0, 3.0, 5.0, 10.0, 30.0, 100.0, 300.0, 1000.0, np.inf)
#: Finer bins for the figure.
FIG_SNR_BINS = (
    2.0,
    3.0,
    4.0,
    5.0,
    6.5,
    8.0,
    10.0,
    14.0,
    20.0,
    30.0,
    50.0,
    100.0,
    200.0,
    500.0,
    1000.0,
    3000.0,
    np.inf,
)


# --------------------------------------------------------------------------
# Simulated fields, cached
# --------------------------------------------------------------------------


@dataclass
class CachedField:
    """A simulated field and the npz file the runners read."""

    field: Any  # lsst.meas.crowdsource.testing.simulate.SimulatedField
    npz: Path
    key: str
    simulate_seconds: float


def output_dir(out_dir: Path | None, cache_dir: Path, quick: bool) -> Path:
    """Where a script writes its report: ``out_dir`` if given, else results/
    (a ``--quick`` smoke test goes to the cache, not over the recorded results)."""
    if out_dir is not None:
        return out_dir
    return (cache_dir / "quick") if quick else RESULTS


def field_key(size: int, density: float, seed: int, king=None) -> str:
    tail = "" if king is None else "_king" + "-".join(f"{v:g}" for v in king)
    return f"n{size}_d{density:g}_s{seed}_galsim_sat{SATURATION:g}_bad1{tail}"


def simulated_field(
    size: int,
    density: float,
    seed: int,
    cache_dir: Path = DEFAULT_CACHE,
    verbose: bool = True,
    king: tuple[float, float, float] | None = None,
) -> CachedField:
    """The benchmark field of one size: galsim PSF (varying, with coma), sky
    gradient, saturated stars with bleed trails, one bad column (``king``: a
    King-profile cluster, ``density`` at its centre, `simulate_field`'s
    ``king``).

    The field is pickled and the planes the fits need are written to an npz
    (``image``, ``variance``, ``mask``, ``psf`` = the true PSF at the field
    centre, ``PSF_STAMP_SIZE`` square, and the mask bit numbers); both are
    reused when they exist.
    """
    from lsst.meas.crowdsource.testing.simulate import simulate_field

    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    key = field_key(size, density, seed, king)
    pkl = cache_dir / f"field_{key}.pkl"
    npz = cache_dir / f"field_{key}.npz"
    t0 = time.perf_counter()
    if pkl.exists() and npz.exists():
        with open(pkl, "rb") as fh:
            fld = pickle.load(fh)
        if verbose:
            print(f"[sim] loaded cached {key}", flush=True)
        return CachedField(fld, npz, key, float("nan"))
    fld = simulate_field(
        (size, size),
        density=density,
        seed=seed,
        psf="galsim",
        saturation=SATURATION,
        bad_columns=1,
        king=king,
    )
    dt = time.perf_counter() - t0
    ny, nx = fld.shape
    cx, cy = fld.xy0[0] + (nx - 1) // 2, fld.xy0[1] + (ny - 1) // 2
    psf = np.asarray(fld.psf_at(float(cx), float(cy), size=PSF_STAMP_SIZE), dtype=np.float64)
    np.savez(
        npz,
        image=fld.image,
        variance=fld.variance,
        mask=fld.mask,
        psf=psf,
        bad_bit=fld.mask_planes["BAD"],
        sat_bit=fld.mask_planes["SAT"],
        xy0=np.asarray(fld.xy0),
    )
    with open(pkl, "wb") as fh:
        pickle.dump(fld, fh, protocol=pickle.HIGHEST_PROTOCOL)
    if verbose:
        print(f"[sim] simulated {key}: {len(fld.truth)} stars in {dt:.1f} s", flush=True)
    return CachedField(fld, npz, key, dt)


# --------------------------------------------------------------------------
# Subprocess runs with time and memory
# --------------------------------------------------------------------------


def _tree_rss(proc) -> int:
    """Summed RSS (bytes) of a psutil process and all its descendants."""
    import psutil

    total = 0
    try:
        procs = [proc] + proc.children(recursive=True)
    except psutil.Error:
        return 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.Error:
            pass
    return total


def run_measured(
    cmd: list[str],
    log_path: Path | None = None,
    env: dict | None = None,
    poll: float = 0.1,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Run ``cmd``; return its exit code, wall time and peak memory.

    ``timeout``: seconds after which the child is killed (``timed_out`` is
    then true and the exit code negative).

    ``tree_peak_rss_mib``: the largest *sum* of RSS over the child and all
    its descendants, sampled every ``poll`` s with psutil (what a parallel
    run really occupies; can miss a short spike; pages shared between forked
    workers count once per process).  The runners also report their own
    exact peak, ``vmhwm_mib`` (VmHWM of /proc/self/status).  ``ru_maxrss``
    from ``wait4`` is NOT used: on Linux it carries over the RSS of this
    (large) parent at fork time, so it reports the parent's size for a small
    child.
    """
    import psutil

    out = open(log_path, "w") if log_path else subprocess.DEVNULL
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    ps = psutil.Process(proc.pid)
    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], _tree_rss(ps))
            stop.wait(poll)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    timed_out = threading.Event()
    if timeout is not None:

        def kill():
            if not stop.wait(timeout):
                timed_out.set()
                proc.kill()

        threading.Thread(target=kill, daemon=True).start()
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    stop.set()
    th.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if log_path:
        out.close()
    return {
        "returncode": proc.returncode,
        "process_wall_seconds": wall,
        "tree_peak_rss_mib": peak[0] / 2**20,
        "user_seconds": ru.ru_utime,
        "system_seconds": ru.ru_stime,
        "timed_out": timed_out.is_set(),
    }


def run_engine(
    npz: Path,
    out: Path,
    psf: str = "true",
    n_processes: int = 1,
    log_path: Path | None = None,
    extra: list[str] | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Fit with our engine in a fresh process (this interpreter).

    With ``timeout``, a run killed after that many seconds returns
    ``{"timed_out": True, ...}`` (no catalogue) instead of raising.
    """
    cmd = [
        sys.executable,
        str(HERE / "run_engine.py"),
        str(npz),
        str(out),
        "--psf",
        psf,
        "--n-processes",
        str(n_processes),
    ] + list(extra or [])
    meas = run_measured(cmd, log_path, timeout=timeout)
    if meas["timed_out"]:
        return meas
    return _merge_runner_info(meas, out, log_path)


def run_crowdsource(
    npz: Path,
    out: Path,
    python: str = DEFAULT_CS_PYTHON,
    psf: str = "true",
    log_path: Path | None = None,
    extra: list[str] | None = None,
    timeout: float | None = None,
) -> dict[str, Any]:
    """Fit with crowdsourcephoto in a fresh process of its own environment
    (``timeout`` as for `run_engine`)."""
    cmd = [python, str(HERE / "run_crowdsource.py"), str(npz), str(out), "--psf", psf] + list(
        extra or []
    )
    meas = run_measured(cmd, log_path, timeout=timeout)
    if meas["timed_out"]:
        return meas
    return _merge_runner_info(meas, out, log_path)


def _merge_runner_info(meas, out, log_path):
    if meas["returncode"] != 0:
        tail = Path(log_path).read_text()[-3000:] if log_path else ""
        raise RuntimeError(f"runner failed with exit code {meas['returncode']}:\n{tail}")
    with np.load(out, allow_pickle=False) as d:
        info = json.loads(str(d["info"]))
    info = {**meas, **info}
    info["peak_rss_mib"] = max(info["tree_peak_rss_mib"], info["vmhwm_mib"])
    return info


def load_catalog(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as d:
        return {k: d[k] for k in d.files if k != "info"}


# --------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------


def _table_to_rows(tab) -> list[dict[str, float]]:
    rows = []
    for r in tab:
        rows.append(
            {c: (float(r[c]) if np.ndim(r[c]) == 0 else r[c].tolist()) for c in tab.colnames}
        )
    return rows


def crb_sample(fld, n_random: int = 3000, snr_all: float = 30.0, seed: int = 0) -> np.ndarray:
    """Truth rows for the crowded CRB: every in-image star with S/N >= ``snr_all``
    plus ``n_random`` random fainter ones (the bound costs a small dense solve
    per star, ~10 ms on a loaded 2-core machine)."""
    t = fld.truth
    inside = np.asarray(t["in_image"], bool)
    snr = np.asarray(t["snr"])
    bright = np.flatnonzero(inside & (snr >= snr_all))
    faint = np.flatnonzero(inside & (snr < snr_all))
    rng = np.random.default_rng(seed)
    pick = rng.choice(faint, size=min(n_random, len(faint)), replace=False)
    return np.sort(np.concatenate([bright, pick]))


def crb_table_cached(
    fld, key: str, cache_dir: Path = DEFAULT_CACHE, n_random: int = 3000, snr_all: float = 30.0
):
    """`crb_table` on `crb_sample`, cached as ECSV next to the field."""
    from astropy.table import Table

    tail = "" if snr_all == 30.0 else f"_a{snr_all:g}"
    path = Path(cache_dir) / f"crb_{key}_r{n_random}{tail}.ecsv"
    if path.exists():
        tab = Table.read(path)
        tab.meta["seconds"] = float("nan")
        return tab
    tab = crb_table(fld, sample=crb_sample(fld, n_random, snr_all))
    tab.write(path, overwrite=True)
    return tab


def crb_table(fld, sample=None, seed: int = 0):
    """Crowded (joint fluxes, known positions) and isolated Cramér-Rao bounds.

    ``sigma_flux``: joint fit of all fluxes (`crowded_crb_flux_error`,
    exact sub-pixel PSF, BAD and SAT pixels excluded).
    ``sigma_iso``: the isolated-star bound (`isolated_crb_flux_error`) with
    the sky + read-noise variance and the star's own Poisson noise: what the
    star would reach alone on the sky.
    """
    from lsst.meas.crowdsource.testing.evaluation import (
        crowded_crb_flux_error,
        isolated_crb_flux_error,
    )

    t0 = time.perf_counter()
    bad = (fld.mask & fld.mask_bits("BAD", "SAT")) != 0
    tab = crowded_crb_flux_error(
        fld.truth,
        partial(fld.psf_at, subpixel=True),
        fld.variance,
        sample=sample,
        xy0=fld.xy0,
        mask=bad,
        seed=seed,
    )
    idx = np.asarray(tab["index"])
    t = fld.truth
    stamps = fld.psf_at(np.asarray(t["x"])[idx], np.asarray(t["y"])[idx])
    var0 = np.asarray(t["sky"])[idx] / fld.gain + fld.read_noise**2
    tab["sigma_iso"] = isolated_crb_flux_error(
        stamps, var0, np.asarray(t["flux"])[idx], gain=fld.gain
    )
    tab.meta["seconds"] = time.perf_counter() - t0
    return tab


def score(cat: dict[str, np.ndarray], fld, crb, radius: float = 1.0) -> dict[str, Any]:
    """Everything the comparison reports for one catalog.

    * ``bins``: `score_catalog` per true-S/N bin (`SNR_BINS`): completeness,
      median and robust scatter of (f - t) / t and of the pulls, position rms.
    * ``summary``: `score_catalog` summary (true S/N >= 5; spurious fractions).
    * ``completeness_5_30``: completeness for 5 <= true S/N < 30.
    * ``bright_positions``: unsaturated stars with true S/N >= 100: rms of
      the x and y offsets, robust scatter, median offset.
    * ``crb_bins``: per bin, the robust scatter of (f - t) / sigma_CRB for the
      crowded bound and for the isolated bound (1 = at the bound), and the
      median of the code's reported flux error over the crowded bound.
    * ``fig``: per `FIG_SNR_BINS` bin, completeness and scatter / CRB.
    """
    from lsst.meas.crowdsource.testing.evaluation import robust_scatter, score_catalog

    t = fld.truth
    x, y, f = cat["x"], cat["y"], cat["flux"]
    err = cat.get("flux_err")
    res = score_catalog(x, y, f, err, t, radius=radius, snr_bins=SNR_BINS)
    match = res["match"]
    mid = score_catalog(x, y, f, err, t, radius=radius, snr_bins=(5.0, 30.0))["bins"][0]
    tsnr = np.asarray(t["snr"])
    tf = np.asarray(t["flux"])
    inside = np.asarray(t["in_image"], bool)
    sat = np.asarray(t["saturated"], bool)
    det = match.truth_to_det

    # Bright-star positions.
    sel = inside & ~sat & (tsnr >= 100) & (det >= 0)
    dx = x[det[sel]] - np.asarray(t["x"])[sel]
    dy = y[det[sel]] - np.asarray(t["y"])[sel]
    bright = {
        "n": int(sel.sum()),
        "rms_x": float(np.sqrt(np.mean(dx**2))) if sel.any() else float("nan"),
        "rms_y": float(np.sqrt(np.mean(dy**2))) if sel.any() else float("nan"),
        "rms_r": float(np.sqrt(np.mean(dx**2 + dy**2))) if sel.any() else float("nan"),
        "robust_x": robust_scatter(dx),
        "robust_y": robust_scatter(dy),
        "median_dx": float(np.median(dx)) if sel.any() else float("nan"),
        "median_dy": float(np.median(dy)) if sel.any() else float("nan"),
    }

    # Flux scatter relative to the Cramér-Rao bounds.
    ci = np.asarray(crb["index"])
    cd = det[ci]
    ok = (cd >= 0) & np.isfinite(np.asarray(crb["sigma_flux"])) & ~sat[ci]
    diff = np.full(len(ci), np.nan)
    diff[ok] = f[cd[ok]] - tf[ci[ok]]
    ratio_err = np.full(len(ci), np.nan)
    if err is not None:
        ratio_err[ok] = err[cd[ok]] / np.asarray(crb["sigma_flux"])[ok]
    z_crowd = diff / np.asarray(crb["sigma_flux"])
    z_iso = diff / np.asarray(crb["sigma_iso"])
    csnr = tsnr[ci]

    def crb_rows(edges):
        rows = []
        for lo, hi in zip(edges[:-1], edges[1:]):
            s = ok & (csnr >= lo) & (csnr < hi)
            ins = (csnr >= lo) & (csnr < hi) & ~sat[ci]
            rows.append(
                {
                    "snr_lo": float(lo),
                    "snr_hi": float(hi),
                    "n": int(s.sum()),
                    "scatter_over_crowded_crb": robust_scatter(z_crowd[s]),
                    "scatter_over_isolated_crb": robust_scatter(z_iso[s]),
                    "median_reported_err_over_crowded_crb": float(np.nanmedian(ratio_err[s]))
                    if np.isfinite(ratio_err[s]).any()
                    else float("nan"),
                    "median_crowded_over_isolated_crb": float(
                        np.median(
                            np.asarray(crb["sigma_flux"])[ins] / np.asarray(crb["sigma_iso"])[ins]
                        )
                    )
                    if ins.any()
                    else float("nan"),
                }
            )
        return rows

    fig_comp = score_catalog(x, y, f, err, t, radius=radius, snr_bins=FIG_SNR_BINS)["bins"]
    return {
        "bins": _table_to_rows(res["bins"]),
        "summary": {
            k: (float(v) if isinstance(v, (int, float, np.floating, np.integer)) else v)
            for k, v in res["summary"].items()
        },
        "completeness_5_30": float(mid["completeness"]),
        "bright_positions": bright,
        "crb_bins": crb_rows(SNR_BINS),
        "fig": {"completeness": _table_to_rows(fig_comp), "crb": crb_rows(FIG_SNR_BINS)},
        "n_det": int(len(x)),
    }


def score_forced(
    cat: dict[str, np.ndarray], fld, truth_rows: np.ndarray, crb=None
) -> dict[str, Any]:
    """Forced photometry at true positions, scored against the truth.

    ``truth_rows``: the truth row of each forced position (``forced_index``
    of the catalogue indexes it).  Per true-S/N bin (`SNR_BINS`), for the
    unsaturated forced stars: how many, the fraction with a finite flux and
    error, the median and robust scatter of (f - t) / t, the robust scatter
    of the pulls (f - t) / sigma_reported, and, for the stars of the ``crb``
    table, the robust scatter of (f - t) / sigma_CRB (crowded bound).
    """
    from lsst.meas.crowdsource.testing.evaluation import robust_scatter

    t = fld.truth
    fi = np.asarray(cat["forced_index"])
    rows = fi >= 0
    ti = np.asarray(truth_rows)[fi[rows]]
    f = np.asarray(cat["flux"])[rows]
    err = np.asarray(cat["flux_err"])[rows]
    tf = np.asarray(t["flux"])[ti]
    tsnr = np.asarray(t["snr"])[ti]
    sat = np.asarray(t["saturated"], bool)[ti]
    ok = np.isfinite(f) & np.isfinite(err) & (err > 0)
    crb_sigma = np.full(len(ti), np.nan)
    if crb is not None:
        lookup = np.full(len(t), np.nan)
        lookup[np.asarray(crb["index"])] = np.asarray(crb["sigma_flux"])
        crb_sigma = lookup[ti]
    with np.errstate(invalid="ignore", divide="ignore"):
        rel = (f - tf) / tf
        pull = (f - tf) / err
        z_crb = (f - tf) / crb_sigma
    bins = []
    for lo, hi in zip(SNR_BINS[:-1], SNR_BINS[1:]):
        s = (tsnr >= lo) & (tsnr < hi) & ~sat
        g = s & ok
        c = g & np.isfinite(z_crb)
        bins.append(
            {
                "snr_lo": float(lo),
                "snr_hi": float(hi),
                "n": int(s.sum()),
                "finite_fraction": float(g.sum() / s.sum()) if s.any() else float("nan"),
                "median_rel": float(np.median(rel[g])) if g.any() else float("nan"),
                "scatter_rel": robust_scatter(rel[g]),
                "pull_scatter": robust_scatter(pull[g]),
                "n_crb": int(c.sum()),
                "scatter_over_crowded_crb": robust_scatter(z_crb[c]),
            }
        )
    return {
        "n_forced": int(rows.sum()),
        "n_finite": int(ok.sum()),
        "n_not_finite": int((~ok).sum()),
        "bins": bins,
    }


def machine_info() -> dict[str, Any]:
    import psutil

    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in open("/proc/cpuinfo")
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = platform.processor()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "cpu": model,
        "n_cpu": os.cpu_count(),
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "loadavg_start": os.getloadavg(),
        **git_state(),
    }


def git_state() -> dict[str, Any]:
    """Commit of the package and whether the engine files differ from it (the
    package is edited concurrently; results belong to this exact code)."""
    root = HERE.parent

    def git(*a):
        try:
            return subprocess.run(
                ["git", "-C", str(root), *a], capture_output=True, text=True, timeout=20
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = git(
        "status",
        "--short",
        "--",
        "python/lsst/meas/crowdsource/engine",
        "python/lsst/meas/crowdsource/testing/simulate.py",
        "python/lsst/meas/crowdsource/testing/evaluation.py",
    )
    diff_hash = ""
    if dirty:
        import hashlib

        diff_hash = hashlib.sha1(
            git("diff", "--", "python/lsst/meas/crowdsource").encode()
        ).hexdigest()[:10]
    return {
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "git_subject": git("log", "-1", "--format=%s"),
        "engine_uncommitted": dirty.splitlines(),
        "uncommitted_diff_sha1": diff_hash,
    }


def other_load() -> list[str]:
    """The busiest other processes right now (for the notes on timing noise)."""
    import psutil

    me = {os.getpid()}
    procs = []
    for p in psutil.process_iter(["pid", "name", "cmdline"]):
        try:
            p.cpu_percent(None)
            procs.append(p)
        except psutil.Error:
            pass
    time.sleep(1.0)
    rows = []
    for p in procs:
        if p.pid in me:
            continue
        try:
            c = p.cpu_percent(None)
            if c > 5:
                cmd = " ".join(p.info["cmdline"] or [p.info["name"] or ""])[:100]
                rows.append(f"{c:.0f}% {cmd}")
        except Exception:
            pass
    return rows


def fmt(v, nd=3):
    if v is None:
        return "—"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    try:
        v = float(v)
    except (TypeError, ValueError):
        return str(v)
    if not np.isfinite(v):
        return "—"
    return f"{v:.{nd}f}"
