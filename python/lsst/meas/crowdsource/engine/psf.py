"""Pixelised, spatially varying PSF model.

The model is a set of coefficient stamps ``C_k`` (shape ``(K, L, L)``, odd
``L``) multiplying low-order polynomials ``P_k(x, y)`` of the position, so
that the PSF centred on a source at ``(x, y)`` is ``sum_k P_k(x, y) C_k``
sampled at integer offsets and then shifted to the sub-pixel position with
a Lanczos kernel.  Only the central ``core`` pixels vary with position;
outside the core the wings are the same everywhere (usually a Moffat fit
to the core, see `lsst.meas.crowdsource.engine.psf_fit`).  The constant
term sums to one and the others to zero, so the PSF is normalised to unit
total flux everywhere on the large stamp.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .errors import InputError
from .interpolation import shift_stamps

__all__ = [
    "PixelPsf",
    "polynomial_terms",
    "n_poly_terms",
    "moffat_stamp",
    "gaussian_stamp",
    "central_crop",
    "psf_from_callable",
    "check_psf_stamp",
    "check_stamp_array",
    "odd_size",
    "stamp_fwhm",
]


def n_poly_terms(order: int) -> int:
    """Number of 2-D polynomial terms up to total degree ``order``."""
    return (order + 1) * (order + 2) // 2


def polynomial_terms(u: np.ndarray, v: np.ndarray, order: int) -> np.ndarray:
    """Monomials ``u**i v**j`` with ``i + j <= order``, shape (N, K).

    The constant term comes first.
    """
    u = np.atleast_1d(np.asarray(u, dtype=float))
    v = np.atleast_1d(np.asarray(v, dtype=float))
    cols = []
    for deg in range(order + 1):
        for j in range(deg + 1):
            cols.append(u ** (deg - j) * v**j)
    return np.stack(cols, axis=1)


def central_crop(stamps: np.ndarray, size: int) -> np.ndarray:
    """Central ``size`` x ``size`` part of square stamps (last two axes)."""
    full = stamps.shape[-1]
    if size > full:
        pad = (size - full) // 2
        widths = [(0, 0)] * (stamps.ndim - 2) + [(pad, pad), (pad, pad)]
        return np.pad(stamps, widths)
    lo = (full - size) // 2
    return stamps[..., lo : lo + size, lo : lo + size]


def odd_size(v: float) -> int:
    """The smallest odd integer not below ``v`` (stamp sizes have a central pixel)."""
    n = int(np.ceil(v))
    return n if n % 2 == 1 else n + 1


def _radius_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    c = size // 2
    yy, xx = np.mgrid[0:size, 0:size] - c
    return xx.astype(float), yy.astype(float)


def moffat_stamp(size: int, fwhm: float, beta: float = 3.0) -> np.ndarray:
    """Unit-sum circular Moffat profile, pixel-centre sampled."""
    alpha = fwhm / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))
    xx, yy = _radius_grid(size)
    prof = (1.0 + (xx**2 + yy**2) / alpha**2) ** (-beta)
    return prof / prof.sum()


def gaussian_stamp(size: int, fwhm: float) -> np.ndarray:
    """Unit-sum circular Gaussian, pixel-centre sampled."""
    sigma = fwhm / 2.3548
    xx, yy = _radius_grid(size)
    prof = np.exp(-0.5 * (xx**2 + yy**2) / sigma**2)
    return prof / prof.sum()


def check_stamp_array(
    array, name: str = "PSF stamp", *, odd: bool = True, square: bool = False, min_size: int = 1
) -> np.ndarray:
    """The one set of rules for a PSF stamp array, as a float64 copy.

    Used by the engine (`check_psf_stamp`) and by the io adapters, which
    check stamps and kernel images before they are stored or fit.

    Parameters
    ----------
    array : array_like
        The stamp.
    name : `str`
        What it is, for the error messages.
    odd : `bool`
        Both dimensions must be odd (a central pixel).
    square : `bool`
        The stamp must be square.
    min_size : `int`
        Smallest allowed side.

    Raises
    ------
    TypeError
        If the array is not numeric (booleans included).
    InputError
        If it is missing, not 2-D, not finite, or breaks ``odd``,
        ``square`` or ``min_size``.
    """
    if array is None:
        raise InputError(f"{name} is missing")
    arr = np.asarray(array)
    if arr.dtype.kind not in "fiu":
        raise TypeError(f"{name} must be numeric; got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise InputError(f"{name} must be 2-D; got shape {arr.shape}")
    if square and arr.shape[0] != arr.shape[1]:
        raise InputError(f"{name} must be square; got shape {arr.shape}")
    if odd and (arr.shape[0] % 2 == 0 or arr.shape[1] % 2 == 0):
        raise InputError(
            f"{name} must have odd dimensions (an odd size on each side, so that it has a "
            f"central pixel); got shape {arr.shape}"
        )
    if min(arr.shape) < min_size:
        raise InputError(
            f"{name} is too small ({min(arr.shape)} px); need at least {min_size}x{min_size}"
        )
    arr = arr.astype(np.float64, copy=True)
    if not np.all(np.isfinite(arr)):
        raise InputError(f"{name} contains NaN or inf")
    return arr


MAX_STAMP_OFFSET = 1.0
"""Largest distance (pixels) of a PSF stamp's centre of light from its central pixel."""


def check_psf_stamp(stamp: np.ndarray, name: str = "PSF stamp") -> np.ndarray:
    """Validate a PSF stamp the engine can fit with, and return it normalised to unit sum.

    Raises
    ------
    InputError
        If the stamp is not a square, odd-sized (at least 3x3) 2-D array of
        finite values with a positive sum (`check_stamp_array`), or its
        centre of light is more than `MAX_STAMP_OFFSET` pixels from the
        central pixel.
    """
    stamp = check_stamp_array(stamp, name, square=True, min_size=3)
    total = stamp.sum()
    if not total > 0:
        raise InputError(f"{name} must have a positive sum; got {total!r}.")
    stamp = stamp / total
    # The centre of light of the positive part: robust to negative noise in the wings.
    light = np.clip(stamp, 0.0, None)
    half = stamp.shape[0] // 2
    offsets = np.arange(stamp.shape[0]) - half
    dx = float(light.sum(axis=0) @ offsets / light.sum())
    dy = float(light.sum(axis=1) @ offsets / light.sum())
    if np.hypot(dx, dy) > MAX_STAMP_OFFSET:
        raise InputError(
            f"{name} is off-centre: its centre of light is ({dx:+.2f}, {dy:+.2f}) pixels from "
            f"the central pixel (at most {MAX_STAMP_OFFSET} allowed); positions would be "
            "biased by as much.  Give the PSF centred on the centre of the central pixel."
        )
    return stamp


@dataclass
class PixelPsf:
    """A pixelised PSF whose core varies polynomially over the image.

    Parameters
    ----------
    coeffs : `numpy.ndarray`, shape (K, L, L)
        Coefficient stamps; ``coeffs[0]`` is the constant term.
    order : `int`
        Polynomial order (``K == n_poly_terms(order)``).
    center, scale : `tuple` [`float`, `float`], `float`
        Positions are mapped to ``u = (x - center[0]) / scale``,
        ``v = (y - center[1]) / scale`` before evaluating the polynomials.
    core : `int`
        Size of the central region that varies with position.
    """

    coeffs: np.ndarray
    order: int = 0
    center: tuple[float, float] = (0.0, 0.0)
    scale: float = 1.0
    core: int = 0

    def __post_init__(self):
        self.coeffs = np.asarray(self.coeffs, dtype=float)
        if self.coeffs.ndim == 2:
            self.coeffs = self.coeffs[None]
        if self.coeffs.shape[0] != n_poly_terms(self.order):
            raise InputError(
                f"PSF with order {self.order} needs {n_poly_terms(self.order)} "
                f"coefficient stamps; got {self.coeffs.shape[0]}."
            )
        if self.core <= 0:
            self.core = self.size

    @classmethod
    def from_stamp(cls, stamp: np.ndarray) -> PixelPsf:
        """A constant PSF from one stamp (validated and normalised)."""
        return cls(check_psf_stamp(stamp)[None], order=0)

    @property
    def size(self) -> int:
        """Size of the largest stamp the model can render."""
        return self.coeffs.shape[-1]

    def terms(self, x, y) -> np.ndarray:
        u = (np.asarray(x, dtype=float) - self.center[0]) / self.scale
        v = (np.asarray(y, dtype=float) - self.center[1]) / self.scale
        return polynomial_terms(u, v, self.order)

    def centered_stamps(self, x, y, size: int | None = None) -> np.ndarray:
        """PSF at integer-centred positions, before the sub-pixel shift.

        Returns an array of shape (N, size, size).
        """
        size = self.size if size is None else size
        coeffs = central_crop(self.coeffs, size)
        if self.order == 0:
            return np.broadcast_to(coeffs[0], (np.size(x), size, size)).copy()
        return np.einsum("nk,kab->nab", self.terms(x, y), coeffs)

    def render(self, x, y, size: int | None = None, derivatives: bool = False):
        """PSF stamps centred on ``round(x), round(y)`` for sources at ``x, y``.

        Parameters
        ----------
        x, y : array-like
            Source positions in the coordinates the model was built for.
        size : `int`, optional
            Odd stamp size; defaults to the model's full size.
        derivatives : `bool`
            Also return derivatives with respect to ``x`` and ``y``.
        """
        x = np.atleast_1d(np.asarray(x, dtype=float))
        y = np.atleast_1d(np.asarray(y, dtype=float))
        dx = x - np.round(x)
        dy = y - np.round(y)
        return shift_stamps(self.centered_stamps(x, y, size), dx, dy, derivatives)

    def stamp(self, x: float, y: float, size: int | None = None) -> np.ndarray:
        """The PSF at one position, centred on the stamp's central pixel."""
        return self.centered_stamps(np.array([x]), np.array([y]), size)[0]

    def fwhm(self, x: float | None = None, y: float | None = None) -> float:
        """FWHM (pixels) from the area of the half-maximum region, interpolated."""
        x = self.center[0] if x is None else x
        y = self.center[1] if y is None else y
        return stamp_fwhm(self.stamp(x, y))

    def with_core_size(self, core: int) -> PixelPsf:
        """Copy with a different variable-core size (no resampling)."""
        return PixelPsf(self.coeffs.copy(), self.order, self.center, self.scale, core)

    def broadened(self, fwhm: float) -> PixelPsf:
        """The PSF convolved with a small Gaussian (``spread_model``'s galaxy model).

        The Gaussian has a quarter of ``fwhm`` (at least 0.3 px) as its FWHM.
        """
        from scipy import ndimage

        kern = gaussian_stamp(odd_size(2 * fwhm + 1), max(fwhm / 4.0, 0.3))
        coeffs = np.array([ndimage.convolve(c, kern, mode="constant") for c in self.coeffs])
        return PixelPsf(coeffs, self.order, self.center, self.scale, self.core)


def stamp_fwhm(stamp: np.ndarray) -> float:
    """FWHM of a (roughly round) stamp: diameter of a disc with the half-max area.

    The engine's one measurement of the FWHM of a stamp (`PixelPsf.fwhm`,
    the starting PSF, the Moffat wing fit).  Pixels count towards the area
    fractionally, linearly from 0 at 0.45 to 1 at 0.55 of the peak, on the
    stamp's own pixels: the estimate is coarse for small FWHMs (a
    pixel-centred Moffat of FWHM 3.0 / 3.5 / 4.0 px gives 3.28 / 3.39 /
    3.74 px).  NaN when the peak is not positive.
    """
    peak = stamp.max()
    if not peak > 0:
        return float("nan")
    # Sub-pixel estimate: linear fractional counting around the threshold.
    frac = np.clip((stamp - 0.5 * peak) / (0.1 * peak) + 0.5, 0.0, 1.0)
    area = frac.sum()
    return float(2.0 * np.sqrt(area / np.pi))


def psf_from_callable(
    func: Callable[[float, float], np.ndarray],
    bbox: tuple[int, int, int, int],
    order: int = 2,
    n_grid: int = 4,
) -> PixelPsf:
    """Sample a PSF function on a grid of positions and fit a `PixelPsf`.

    Parameters
    ----------
    func : callable
        ``func(x, y)`` returns an odd, square stamp of the PSF at ``(x, y)``
        centred on the stamp's central pixel (as afw's
        ``computeKernelImage`` does).
    bbox : `tuple`
        ``(x_min, y_min, x_max, y_max)`` of the region to cover.
    order : `int`
        Polynomial order of the fitted variation.
    n_grid : `int`
        Grid points per axis.
    """
    x0, y0, x1, y1 = bbox
    gx = np.linspace(x0, x1, n_grid)
    gy = np.linspace(y0, y1, n_grid)
    xs, ys = [a.ravel() for a in np.meshgrid(gx, gy)]
    stamps = []
    size = None
    for xi, yi in zip(xs, ys):
        st = check_psf_stamp(func(float(xi), float(yi)), name=f"PSF at ({xi:.1f}, {yi:.1f})")
        if size is None:
            size = st.shape[0]
        elif st.shape[0] != size:
            st = central_crop(st, size)
            st = st / st.sum()
        stamps.append(st)
    stamps = np.array(stamps)
    center = (0.5 * (x0 + x1), 0.5 * (y0 + y1))
    scale = max(0.5 * (x1 - x0), 0.5 * (y1 - y0), 1.0)
    order = min(order, n_grid - 1)
    terms = polynomial_terms((xs - center[0]) / scale, (ys - center[1]) / scale, order)
    flat = stamps.reshape(len(stamps), -1)
    coeffs, *_ = np.linalg.lstsq(terms, flat, rcond=None)
    coeffs = coeffs.reshape(-1, size, size)
    return PixelPsf(normalise_coeffs(coeffs), order, center, scale)


def normalise_coeffs(coeffs: np.ndarray) -> np.ndarray:
    """Make the constant stamp sum to one and the others to zero."""
    coeffs = np.array(coeffs, dtype=float)
    c0 = coeffs[0] / coeffs[0].sum()
    coeffs[0] = c0
    for k in range(1, len(coeffs)):
        coeffs[k] -= coeffs[k].sum() * c0
    return coeffs
