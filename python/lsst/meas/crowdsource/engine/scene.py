"""PSF stamps of all sources at their current positions.

Sources are grouped by stamp size (faint sources get small stamps, bright
ones large stamps) so that every operation on stamps is a vectorised
operation on a ``(n, s, s)`` array per group.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .correlate import Correlator
from .image import PixelFrame
from .psf import PixelPsf, odd_size

__all__ = [
    "StampGroup",
    "render_scene",
    "add_derivatives",
    "resolve_stamp_sizes",
    "choose_stamp_sizes",
    "scene_image",
    "wing_image",
    "gather",
]


@dataclass
class StampGroup:
    """Stamps of the sources that share one stamp size.

    Attributes
    ----------
    index : `numpy.ndarray` [`int`]
        Indices of the sources (into the per-source arrays).
    size : `int`
        Stamp size (odd).
    pix : `numpy.ndarray` [`int`], shape (n, s, s)
        Flat pixel index of each stamp pixel in the image, -1 off the image.
    psf : `numpy.ndarray`, shape (n, s, s)
        PSF of each source at its position.
    dpsf_dx, dpsf_dy : `numpy.ndarray` or `None`
        Derivatives of ``psf`` with respect to the source position.
    with_d : `numpy.ndarray` [`bool`] or `None`
        Which stamps have their derivatives rendered (`None`: all of them,
        when there are derivatives); the others' are zero.
    d_size : `int` or `None`
        The derivatives are zero outside the central ``d_size`` square of
        the stamp (`None`: the whole stamp).
    """

    index: np.ndarray
    size: int
    pix: np.ndarray
    psf: np.ndarray
    dpsf_dx: np.ndarray | None = None
    dpsf_dy: np.ndarray | None = None
    with_d: np.ndarray | None = None
    d_size: int | None = None

    @property
    def valid(self) -> np.ndarray:
        return self.pix >= 0

    def subset(self, rows: np.ndarray | slice) -> StampGroup:
        """The group of the stamps ``rows`` (a slice, a mask or indices into the group)."""

        def take(a):
            return None if a is None else a[rows]

        return StampGroup(
            self.index[rows],
            self.size,
            self.pix[rows],
            self.psf[rows],
            take(self.dpsf_dx),
            take(self.dpsf_dy),
            take(self.with_d),
            self.d_size,
        )

    def core(self) -> tuple[slice, slice, slice]:
        """Index of the derivatives' square in a ``(n, size, size)`` array."""
        return _central_square(self.size, self.size if self.d_size is None else self.d_size)


def _central_square(size: int, d: int) -> tuple[slice, slice, slice]:
    """Index of the central ``d`` x ``d`` square of ``(n, size, size)`` stamps."""
    lo = (size - d) // 2
    return slice(None), slice(lo, lo + d), slice(lo, lo + d)


def resolve_stamp_sizes(requested: tuple[int, ...], fwhm: float) -> list[int]:
    """Stamp sizes (small, core, ..., large), ascending, for a PSF of this FWHM.

    Each 0 in ``requested`` (``FitParams.stamp_sizes``) is derived from the
    FWHM: the first ~1.5 FWHM in radius, the others ~2.5 FWHM (at least 15).
    """
    defaults = [odd_size(2 * 1.5 * fwhm + 1), max(odd_size(2 * 2.5 * fwhm + 1), 15)]
    sizes = []
    for k, s in enumerate(requested):
        if s == 0:
            s = defaults[min(k, len(defaults) - 1)]
        sizes.append(int(s))
    sizes = sorted(set(sizes))
    return sizes


def choose_stamp_sizes(
    flux: np.ndarray, psf: PixelPsf, sizes: list[int], pixel_noise: float, noise_fraction: float
) -> np.ndarray:
    """Index into ``sizes`` of the stamp each source needs.

    A source gets the smallest stamp whose edge, where the PSF times the
    flux is highest, is below ``noise_fraction`` of the pixel noise.
    """
    stamp = psf.stamp(*psf.center)
    choice = np.full(len(flux), len(sizes) - 1, dtype=int)
    undecided = np.ones(len(flux), dtype=bool)
    for k, s in enumerate(sizes[:-1]):
        half = s // 2
        c = stamp.shape[0] // 2
        if half + 1 > c:
            edge = 0.0
        else:
            ring = stamp[c - half - 1 : c + half + 2, c - half - 1 : c + half + 2].copy()
            ring[1:-1, 1:-1] = 0.0
            edge = ring.max()
        ok = undecided & (np.abs(flux) * edge < noise_fraction * pixel_noise)
        choice[ok] = k
        undecided &= ~ok
    return choice


def render_scene(
    x: np.ndarray,
    y: np.ndarray,
    size_index: np.ndarray,
    sizes: list[int],
    psf: PixelPsf,
    shape: tuple[int, int],
    derivatives: bool,
    frame: PixelFrame | None = None,
    need_d: np.ndarray | None = None,
    derivative_size: int | None = None,
) -> list[StampGroup]:
    """Render the PSF of every source, grouped by stamp size.

    Positions are in the pixel coordinates of the array of ``shape``
    (column ``x``, row ``y``, pixel centres at integers); the PSF model is
    evaluated at ``frame.to_parent(x, y)``, the positions in the frame the
    model was built for (by default the array's own).  With
    ``derivatives``, ``need_d`` (per source) limits the derivative stamps
    to the sources that use them (held forced positions do not); the
    others' are zero (`StampGroup.with_d`), and `add_derivatives` renders
    them later if needed.  ``derivative_size`` (odd) limits the derivative
    stamps of larger stamps to their central ``derivative_size`` square
    (zero outside; `None`: the whole stamp).
    """
    frame = PixelFrame() if frame is None else frame
    ny, nx = shape
    groups = []
    for k, s in enumerate(sizes):
        idx = np.nonzero(size_index == k)[0]
        if idx.size == 0:
            continue
        xs, ys = x[idx], y[idx]
        px, py = frame.to_parent(xs, ys)
        with_d = None
        if derivatives and need_d is not None and not need_d[idx].all():
            with_d = np.asarray(need_d[idx], bool).copy()
        if derivatives:
            p, ddx, ddy = _render_with_derivatives(psf, px, py, s, derivative_size, with_d)
        else:
            p, ddx, ddy = psf.render(px, py, s), None, None
        c = s // 2
        off = np.arange(s) - c
        iy = np.round(ys).astype(np.int64)[:, None, None] + off[None, :, None]
        ix = np.round(xs).astype(np.int64)[:, None, None] + off[None, None, :]
        inside = (iy >= 0) & (iy < ny) & (ix >= 0) & (ix < nx)
        pix = np.where(inside, iy * nx + ix, -1)
        d_size = None
        if derivatives and derivative_size is not None and derivative_size < s:
            d_size = int(derivative_size)
        groups.append(StampGroup(idx, s, pix, p, ddx, ddy, with_d, d_size))
    return groups


def _render_with_derivatives(
    psf: PixelPsf,
    px: np.ndarray,
    py: np.ndarray,
    size: int,
    derivative_size: int | None,
    with_d: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stamps of ``size`` and their derivatives (only where ``with_d``; zero
    outside the central ``derivative_size`` square)."""
    n = len(px)
    d = size if derivative_size is None else min(int(derivative_size), size)
    rows = np.ones(n, bool) if with_d is None else with_d
    if d == size and rows.all():
        return psf.render(px, py, size, derivatives=True)
    p = np.empty((n, size, size))
    ddx, ddy = np.zeros((n, size, size)), np.zeros((n, size, size))
    core = _central_square(size, d)
    if d == size:
        if rows.any():
            p[rows], ddx[rows], ddy[rows] = psf.render(px[rows], py[rows], size, derivatives=True)
        if not rows.all():
            p[~rows] = psf.render(px[~rows], py[~rows], size)
        return p, ddx, ddy
    p[:] = psf.render(px, py, size)
    if rows.any():
        _, cdx, cdy = psf.render(px[rows], py[rows], d, derivatives=True)
        ddx_r, ddy_r = np.zeros((cdx.shape[0], size, size)), np.zeros((cdx.shape[0], size, size))
        ddx_r[core], ddy_r[core] = cdx, cdy
        ddx[rows], ddy[rows] = ddx_r, ddy_r
    return p, ddx, ddy


def add_derivatives(
    groups: list[StampGroup],
    rows: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    psf: PixelPsf,
    frame: PixelFrame | None = None,
) -> list[StampGroup]:
    """Groups of the sources ``rows`` (a per-source mask), with all their derivatives.

    The sources whose derivatives `render_scene` left out (``need_d``)
    get them rendered here; the others keep theirs.  The groups returned
    hold only those sources (the same stamps, ``with_d`` all true).
    """
    frame = PixelFrame() if frame is None else frame
    out = []
    for g in groups:
        sel = rows[g.index]
        if g.dpsf_dx is None or not sel.any():
            continue
        ddx, ddy = g.dpsf_dx[sel], g.dpsf_dy[sel]
        if g.with_d is not None:
            missing = ~g.with_d[sel]
            if missing.any():
                i = g.index[sel][missing]
                _, ddx[missing], ddy[missing] = _render_with_derivatives(
                    psf, *frame.to_parent(x[i], y[i]), g.size, g.d_size, None
                )
        sub = g.subset(sel)
        sub.dpsf_dx, sub.dpsf_dy, sub.with_d = ddx, ddy, None
        out.append(sub)
    return out


def gather(image: np.ndarray, group: StampGroup) -> np.ndarray:
    """Values of ``image`` at a group's stamp pixels (0 off the image)."""
    flat = image.ravel()
    return np.where(group.valid, flat[np.maximum(group.pix, 0)], 0.0)


def scene_image(
    groups: list[StampGroup],
    flux: np.ndarray,
    shape: tuple[int, int],
    gx: np.ndarray | None = None,
    gy: np.ndarray | None = None,
) -> np.ndarray:
    """Sum of all sources: ``flux * psf (+ gx * dpsf/dx + gy * dpsf/dy)``."""
    total = np.zeros(shape[0] * shape[1])
    for g in groups:
        stamps = flux[g.index, None, None] * g.psf
        if gx is not None and g.dpsf_dx is not None and g.with_d is None:
            stamps = (
                stamps + gx[g.index, None, None] * g.dpsf_dx + gy[g.index, None, None] * g.dpsf_dy
            )
        elif gx is not None and g.dpsf_dx is not None and g.with_d.any():
            # Only the stamps with derivatives (the others' are zero).
            r, i = g.with_d, g.index[g.with_d]
            stamps[r] = (
                stamps[r] + gx[i, None, None] * g.dpsf_dx[r] + gy[i, None, None] * g.dpsf_dy[r]
            )
        v = g.valid
        total += np.bincount(g.pix[v], weights=stamps[v], minlength=total.size)
    return total.reshape(shape)


def wing_image(
    x: np.ndarray,
    y: np.ndarray,
    flux: np.ndarray,
    size_index: np.ndarray,
    sizes: list[int],
    psf: PixelPsf,
    shape: tuple[int, int],
) -> np.ndarray:
    """Light of every source outside its fitting stamp, out to the full PSF.

    Faint sources are fit with small stamps, but the PSF is normalised to
    unit *total* flux; the part of each source outside its stamp (its
    far wings) is added here, with the constant PSF at the model centre,
    by FFT convolution (one inverse transform for all stamp sizes).
    Subtracting it before the sky and the fit keeps the wings out of the
    sky and the fluxes total.
    """
    ny, nx = shape
    full = psf.stamp(*psf.center)
    c = full.shape[0] // 2
    fft = Correlator(shape, full.shape)
    total = None
    ix = np.clip(np.round(x).astype(np.int64), 0, nx - 1)
    iy = np.clip(np.round(y).astype(np.int64), 0, ny - 1)
    for k, s in enumerate(sizes):
        sel = (size_index == k) & np.isfinite(flux)
        if not sel.any() or s >= full.shape[0]:
            continue
        kernel = full.copy()
        h = s // 2
        kernel[c - h : c + h + 1, c - h : c + h + 1] = 0.0
        delta = np.bincount(iy[sel] * nx + ix[sel], weights=flux[sel], minlength=nx * ny).reshape(
            shape
        )
        term = fft.transform(delta) * fft.convolution_transform(kernel)
        total = term if total is None else total + term
    return np.zeros(shape) if total is None else fft.inverse(total)
