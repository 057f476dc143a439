#!/usr/bin/env python
"""Fit one cached benchmark field with crowdsourcephoto (the original code).

Run it with the interpreter of the separate crowdsource environment (it
needs only numpy and crowdsourcephoto 0.5.9, not this package)::

    /tmp/csvenv/bin/python run_crowdsource.py FIELD.npz OUT.npz [--psf true|moffat]

How crowdsource is called (``crowdsource.crowdsource_base.fit_im`` with its
defaults, as in the DECaPS driver ``decam_proc.process_one_ccd`` except for
the DECam-specific parts):

* ``weight``: crowdsource's "weight" is 1/sigma (the DECaPS driver takes
  the square root of the inverse-variance image, ``read_data``), zero on
  pixels flagged BAD or SAT (the driver zeroes every flagged DQ pixel) and
  on pixels with non-finite image or non-positive variance.
* ``dq``: the afw-style mask as int64.  crowdsource only looks at its bits
  2**30 (no-deblend) and 2**31 (sharp-peak cut), which are never set here,
  and reports the central-pixel value as ``flags``.  (int64 because with
  numpy 2 ``dq & 2**31`` overflows an int32 array.)
* PSF: ``--psf true``: ``crowdsource.psf.SimplePSF`` of the true PSF at the
  field centre (59x59; SimplePSF normalises it to unit sum over the central
  19x19); ``--psf moffat``: SimplePSF of a beta=2.5 Moffat with a 3.5 px
  FWHM.  ``refit_psf=True`` (as in DECaPS), and as SimplePSF has no
  ``fitfun`` the refit is crowdsource's default ``find_psf``: the median of
  the neighbour-subtracted stamps of good stars, extended to 59x59 with a
  fitted Moffat (a constant PSF over the image).  The DECaPS driver instead
  uses a DECam static-wing PSF (``decam_psf``, ``fit_linear_static_wing``)
  that needs DECam data files; it has no meaning on a simulated image.
* everything else at its default: ``psfderiv=True``, no sky terms
  (``nskyx=nskyy=0``), ``miniter=4``, ``maxiter=10``, ``threshold=5``,
  ``ntilex=ntiley=1`` (DECaPS cut a 4094x2046 CCD into 4x2 fit regions, i.e.
  ~1k regions; ``--ntile`` changes it).

Coordinates: crowdsource indexes the image as ``im[x, y]``: its ``x`` is
the ROW and its ``y`` the COLUMN, pixel centres at integers (checked on
single stars: a star at column 40.3, row 60.7 comes back as x=60.69,
y=40.29).  The output here is converted to the afw convention: ``x`` =
column = crowdsource ``y``, ``y`` = row = crowdsource ``x``, plus ``xy0``.
"""

import argparse
import contextlib
import io
import json
import sys
import time
import warnings

import numpy as np


class _Tee(io.TextIOBase):
    """Copy crowdsource's prints to the log and keep them for the summary."""

    def __init__(self, stream):
        self.stream = stream
        self.buf = []

    def write(self, s):
        self.stream.write(s)
        self.buf.append(s)
        return len(s)

    def flush(self):
        self.stream.flush()


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
    ap.add_argument("--psf", choices=("true", "moffat"), default="true")
    ap.add_argument("--moffat-fwhm", type=float, default=3.5)
    ap.add_argument("--ntile", type=int, default=1, help="ntilex = ntiley (fit_im default 1)")
    ap.add_argument(
        "--fixed-psf", action="store_true", help="hold the starting PSF fixed (refit_psf=False)"
    )
    args = ap.parse_args()

    warnings.simplefilter("ignore", DeprecationWarning)
    import crowdsource
    import crowdsource.crowdsource_base as cb
    import crowdsource.psf as psfmod

    with np.load(args.field) as d:
        image = d["image"].astype(np.float32)
        variance = d["variance"].astype(np.float64)
        mask = d["mask"].astype(np.int64)
        stamp = d["psf"].astype(np.float32)
        bad_bit, sat_bit = int(d["bad_bit"]), int(d["sat_bit"])
        x0, y0 = (int(v) for v in d["xy0"])
    flagged = (mask & ((1 << bad_bit) | (1 << sat_bit))) != 0
    with np.errstate(divide="ignore", invalid="ignore"):
        weight = np.where(
            np.isfinite(variance) & (variance > 0) & ~flagged & np.isfinite(image),
            1.0 / np.sqrt(variance),
            0.0,
        ).astype(np.float32)
    image = np.where(np.isfinite(image), image, 0.0).astype(np.float32)
    del variance, flagged
    if args.psf == "true":
        psf = psfmod.SimplePSF(stamp.copy())
    else:
        psf = psfmod.SimplePSF(
            psfmod.moffat_psf(args.moffat_fwhm, beta=2.5, stampsz=59, deriv=False)
        )
    rss_before = _vmhwm_mib()

    tee = _Tee(sys.stdout)
    with contextlib.redirect_stdout(tee), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        cat, model, sky, psf_out = cb.fit_im(
            image,
            psf,
            weight=weight,
            dq=mask,
            refit_psf=not args.fixed_psf,
            verbose=True,
            ntilex=args.ntile,
            ntiley=args.ntile,
        )
        fit_seconds = time.perf_counter() - t0
        cpu_seconds = time.process_time() - cpu0

    printed = "".join(tee.buf).splitlines()
    cols = {
        "x": cat["y"].astype(np.float64) + x0,  # column
        "y": cat["x"].astype(np.float64) + y0,  # row
        "flux": cat["flux"].astype(np.float64),
        "flux_err": cat["dflux"].astype(np.float64),
        "pass_found": cat["passno"].astype(np.int32),
    }
    for name in (
        "qf",
        "rchi2",
        "fracflux",
        "fluxlbs",
        "dfluxlbs",
        "fluxiso",
        "fwhm",
        "spread_model",
        "dspread_model",
        "sky",
        "flags",
    ):
        if name in cat.dtype.names:
            cols["cs_" + name] = np.asarray(cat[name])
    # Position errors: crowdsource's dx is along its x (= our y).
    cols["x_err"] = cat["dy"].astype(np.float64)
    cols["y_err"] = cat["dx"].astype(np.float64)
    psf_stamp = np.asarray(psf_out(image.shape[0] // 2, image.shape[1] // 2, stampsz=59))
    info = {
        "code": "crowdsourcephoto",
        "version": getattr(crowdsource, "__version__", "0.5.9"),
        "psf": args.psf,
        "ntile": args.ntile,
        "fit_seconds": fit_seconds,
        "fit_cpu_seconds_main": cpu_seconds,
        "n_sources": int(len(cat)),
        "n_passes": int(cat["passno"].max()) + 1 if len(cat) else 0,
        "vmhwm_before_fit_mib": rss_before,
        "vmhwm_mib": _vmhwm_mib(),
        "printed": printed[-60:],
        "python_warnings": sorted({f"{w.category.__name__}: {w.message}" for w in caught})[:20],
        "final_psf_neff_fwhm": float(psfmod.neff_fwhm(psf_stamp)),
        "final_psf_sum59": float(psf_stamp.sum()),
    }
    np.savez(args.out, info=json.dumps(info, default=str), **cols)


if __name__ == "__main__":
    main()
