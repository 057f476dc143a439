"""Sub-pixel shifting of pixelised stamps with a normalised Lanczos kernel.

A stamp ``p[a, b]`` samples a smooth profile at integer offsets from the
stamp centre.  Shifting it by ``(dx, dy)`` evaluates the profile at
``(b - dx, a - dy)``; the separable Lanczos-3 kernel does this with seven
taps per axis, and its analytic derivative gives the derivative of the
shifted stamp with respect to the shift.  Kernel weights are normalised to
sum to one for every shift so that flux is conserved exactly.
"""

from __future__ import annotations

import numpy as np

__all__ = ["LANCZOS_ORDER", "lanczos_weights", "shift_stamps"]

LANCZOS_ORDER = 3
_TAPS = np.arange(-LANCZOS_ORDER, LANCZOS_ORDER + 1)


def _lanczos(t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Lanczos kernel and its derivative at ``t``."""
    a = LANCZOS_ORDER
    inside = np.abs(t) < a
    s1 = np.sinc(t)
    s2 = np.sinc(t / a)
    value = np.where(inside, s1 * s2, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ds1 = np.where(t == 0, 0.0, (np.cos(np.pi * t) - s1) / t)
        ds2 = np.where(t == 0, 0.0, (np.cos(np.pi * t / a) - s2) / t)
    deriv = np.where(inside, ds1 * s2 + s1 * ds2, 0.0)
    return value, deriv


def lanczos_weights(shift: np.ndarray, derivative: bool = False):
    """Normalised tap weights for shifting by ``shift`` pixels.

    Parameters
    ----------
    shift : `numpy.ndarray`, shape (N,)
        Shift of each stamp, in pixels; best kept within [-0.5, 0.5].
    derivative : `bool`
        Also return the derivative of the weights with respect to the shift.

    Returns
    -------
    weights : `numpy.ndarray`, shape (N, 7)
        Weight of tap ``m`` (offsets -3..3): ``out[j] = sum_m w[m] p[j + m]``.
    dweights : `numpy.ndarray`, shape (N, 7)
        Only with ``derivative``: d weights / d shift.
    """
    shift = np.asarray(shift, dtype=float)
    t = -shift[:, None] - _TAPS[None, :]
    k, dk_dt = _lanczos(t)
    total = k.sum(axis=1, keepdims=True)
    w = k / total
    if not derivative:
        return w
    # d t / d shift = -1
    dk = -dk_dt
    dtotal = dk.sum(axis=1, keepdims=True)
    dw = (dk - w * dtotal) / total
    return w, dw


def _band(weights: np.ndarray, size: int) -> np.ndarray:
    """Per-stamp banded matrices ``B[n, j, j + m] = weights[n, m]`` (taps inside the stamp)."""
    band = np.zeros((len(weights), size, size))
    j = np.arange(size)
    for i, m in enumerate(_TAPS):
        ok = (j + m >= 0) & (j + m < size)
        band[:, j[ok], j[ok] + m] = weights[:, i, None]
    return band


def _apply_taps(stamps: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """Apply per-stamp tap weights along ``axis`` (1 = rows, 2 = columns).

    Outside the stamp the profile is zero: output pixel ``j`` sums
    ``weights[m] * stamp[j + m]`` over the taps whose source pixel is
    inside.  Done as a product with a banded matrix per stamp (batched
    BLAS), 4-7x faster than one shifted slice per tap.
    """
    band = _band(weights, stamps.shape[axis])
    if axis == 2:
        return np.matmul(stamps, band.transpose(0, 2, 1))
    return np.matmul(band, stamps)


def shift_stamps(stamps: np.ndarray, dx: np.ndarray, dy: np.ndarray, derivatives: bool = False):
    """Shift stamps by sub-pixel offsets.

    Parameters
    ----------
    stamps : `numpy.ndarray`, shape (N, S, S)
        Profiles sampled at integer offsets from each stamp centre.
    dx, dy : `numpy.ndarray`, shape (N,)
        Shift along columns (x) and rows (y).
    derivatives : `bool`
        Also return derivatives with respect to ``dx`` and ``dy``.

    Returns
    -------
    shifted : `numpy.ndarray`, shape (N, S, S)
        ``shifted[n, a, b] = profile_n(b - c - dx_n, a - c - dy_n)``.
    d_dx, d_dy : `numpy.ndarray`, shape (N, S, S)
        Only with ``derivatives``.
    """
    if not derivatives:
        wx = lanczos_weights(dx)
        wy = lanczos_weights(dy)
        return _apply_taps(_apply_taps(stamps, wx, 2), wy, 1)
    wx, dwx = lanczos_weights(dx, derivative=True)
    wy, dwy = lanczos_weights(dy, derivative=True)
    tx = _apply_taps(stamps, wx, 2)
    tdx = _apply_taps(stamps, dwx, 2)
    shifted = _apply_taps(tx, wy, 1)
    d_dx = _apply_taps(tdx, wy, 1)
    d_dy = _apply_taps(tx, dwy, 1)
    return shifted, d_dx, d_dy
