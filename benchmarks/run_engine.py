#!/usr/bin/env python
"""Fit one cached benchmark field with ``lsst.meas.crowdsource.engine``.

Usage (normally called by compare_crowdsource.py / scaling.py)::

    python run_engine.py FIELD.npz OUT.npz [--psf true|none] [--n-processes N]
                         [--forced POSITIONS.npz]

Reads the planes written by ``benchlib.simulated_field``; BAD pixels are
passed as ``bad``, SAT pixels as ``saturated``.  ``--psf true`` starts from
the true PSF at the field centre (a single stamp, the same one
crowdsourcephoto gets), ``--psf none`` lets the engine estimate it from the
image.  The PSF is refit in the loop either way (``refit_psf=True``, the
default).  Writes the catalog columns plus an ``info`` JSON string: fit wall
time (the `fit_image` call only), the per-pass history, the warnings
logged, the RSS before the fit.  ``--forced`` reads ``x`` and ``y`` (PARENT
pixels) from an npz and fits them as forced positions (`fit_image`'s
``forced_x``, ``forced_y``; every other source is found as usual).
"""

import argparse
import json
import logging
import time
import warnings

import numpy as np


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.warnings = []
        self.lines = []

    def emit(self, record):
        msg = record.getMessage()
        self.lines.append(f"{record.levelname} {record.name}: {msg}")
        if record.levelno >= logging.WARNING:
            self.warnings.append(msg)


def _vmhwm_mib():
    """Peak resident set of this process (VmHWM; reset at exec, unlike ru_maxrss,
    which on Linux carries over the RSS of the forked parent)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return float("nan")


def main():
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("field")
    ap.add_argument("out")
    ap.add_argument("--psf", choices=("true", "none"), default="true")
    ap.add_argument("--n-processes", type=int, default=1)
    ap.add_argument(
        "--param",
        action="append",
        default=[],
        help="extra FitParams override NAME=VALUE (python literal)",
    )
    ap.add_argument("--forced", default=None, help="npz with forced positions x, y")
    args = ap.parse_args()

    from lsst.meas.crowdsource.engine import FitParams, fit_image

    handler = _Collect()
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    stream = logging.StreamHandler()
    stream.setLevel(logging.INFO)
    root.addHandler(stream)

    with np.load(args.field) as d:
        image = d["image"]
        variance = d["variance"]
        mask = d["mask"]
        psf = d["psf"] if args.psf == "true" else None
        bad = (mask & (1 << int(d["bad_bit"]))) != 0
        sat = (mask & (1 << int(d["sat_bit"]))) != 0
        xy0 = tuple(int(v) for v in d["xy0"])
    del mask
    import ast

    overrides = {}
    for item in args.param:
        k, v = item.split("=", 1)
        overrides[k] = ast.literal_eval(v)
    params = FitParams(n_processes=args.n_processes, **overrides)
    forced = {}
    if args.forced:
        with np.load(args.forced) as d:
            forced = dict(forced_x=d["x"], forced_y=d["y"])
    rss_before = _vmhwm_mib()

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        result = fit_image(
            image, variance, bad=bad, saturated=sat, psf=psf, params=params, xy0=xy0, **forced
        )
        fit_seconds = time.perf_counter() - t0
        cpu_seconds = time.process_time() - cpu0
    cols = {k: np.asarray(v) for k, v in result.columns.items()}
    info = {
        "code": "lsst.meas.crowdsource.engine",
        "psf": args.psf,
        "n_processes": args.n_processes,
        "params": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(params).items()},
        "fit_seconds": fit_seconds,
        "fit_cpu_seconds_main": cpu_seconds,
        "n_sources": int(len(cols["x"])),
        "n_forced": int(len(forced.get("forced_x", []))),
        "n_tiles": int(result.n_tiles),
        "vmhwm_before_fit_mib": rss_before,
        "vmhwm_mib": _vmhwm_mib(),
        "history": [
            {k: (float(v) if isinstance(v, (np.floating, float)) else v) for k, v in h.items()}
            for h in result.history
        ],
        "logged_warnings": handler.warnings,
        "python_warnings": [f"{w.category.__name__}: {w.message}" for w in caught],
        "final_psf_fwhm": float(result.psf.fwhm()),
    }
    np.savez(args.out, info=json.dumps(info, default=str), **cols)


if __name__ == "__main__":
    main()
