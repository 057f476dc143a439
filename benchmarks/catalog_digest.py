#!/usr/bin/env python
"""Fingerprints of the engine's output on the benchmark field: is a change behaviour-neutral?

    .venv/bin/python benchmarks/catalog_digest.py            # 1024x1024, true PSF (~10 s)
    .venv/bin/python benchmarks/catalog_digest.py --size 384 --psf none

Runs `fit_image` on the cached benchmark field (`benchlib.simulated_field`,
seed 1) and prints the sha256 (first 16 hex digits) of every output column
(rows sorted by y, then x; name, dtype and bytes of each column), of the
model and of the sky image.  Run it before and after a restructuring: equal
digests mean an identical catalogue.  The digest depends on the BLAS thread
count (a multi-threaded reduction sums in another order), so compare runs
made with the same environment.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib as bl  # noqa: E402


def digest_columns(cols: dict[str, np.ndarray]) -> str:
    """sha256 of the columns, rows in (y, x) order."""
    order = np.lexsort((np.asarray(cols["x"]), np.asarray(cols["y"])))
    h = hashlib.sha256()
    for name in sorted(cols):
        a = np.ascontiguousarray(np.asarray(cols[name])[order])
        h.update(name.encode())
        h.update(str(a.dtype).encode())
        h.update(a.tobytes())
    return h.hexdigest()[:16]


def digest_array(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--psf", choices=("true", "none"), default="true")
    args = ap.parse_args()

    from lsst.meas.crowdsource.engine import FitParams, fit_image

    fld = bl.simulated_field(args.size, 0.02, 1)
    with np.load(fld.npz) as d:
        mask = d["mask"]
        t0 = time.perf_counter()
        result = fit_image(
            d["image"],
            d["variance"],
            bad=(mask & (1 << int(d["bad_bit"]))) != 0,
            saturated=(mask & (1 << int(d["sat_bit"]))) != 0,
            psf=d["psf"] if args.psf == "true" else None,
            params=FitParams(),
            xy0=tuple(int(v) for v in d["xy0"]),
        )
        seconds = time.perf_counter() - t0
    out = {
        "field": fld.key,
        "psf": args.psf,
        "n_sources": len(result),
        "columns": digest_columns(result.columns),
        "model": digest_array(result.model),
        "sky": digest_array(result.sky),
        "fit_seconds": round(seconds, 2),
        "git": bl.git_state()["git_commit"],
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
