"""Vectorised NaN-aware order statistics.

`numpy.nanmedian` along an axis of a 2-D array loops over the rows in
Python (``apply_along_axis``) when NaNs are present: per source on a
crowded tile that was 1.5 s of a 15 s fit (512x512, 0.1 stars/px, ten
passes).  Sorting the rows once (NaNs sort last) gives the same medians
in one call.
"""

from __future__ import annotations

import numpy as np

__all__ = ["nanmedian_rows"]


def nanmedian_rows(values: np.ndarray) -> np.ndarray:
    """Median of each row of ``values`` (along the last axis), ignoring NaNs.

    Rows with no finite value give NaN, as `numpy.nanmedian` does (without
    its warning).  Infinite values count as values.
    """
    a = np.asarray(values, dtype=np.float64)
    if a.shape[-1] == 0:
        return np.full(a.shape[:-1], np.nan)
    s = np.sort(a, axis=-1)
    n = np.count_nonzero(~np.isnan(a), axis=-1)
    lo = np.clip((n - 1) // 2, 0, a.shape[-1] - 1)
    hi = np.clip(n // 2, 0, a.shape[-1] - 1)
    v_lo = np.take_along_axis(s, lo[..., None], axis=-1)[..., 0]
    v_hi = np.take_along_axis(s, hi[..., None], axis=-1)[..., 0]
    with np.errstate(invalid="ignore"):
        med = np.where(lo == hi, v_lo, 0.5 * (v_lo + v_hi))
    return np.where(n > 0, med, np.nan)
