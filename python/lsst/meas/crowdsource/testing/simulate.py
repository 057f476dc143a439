"""Simulated crowded stellar fields with known truth.

`simulate_field` draws a calexp-like image (image, variance and mask planes)
of a crowded stellar field: stars uniform in position, fluxes from a power-law
luminosity function reaching well below the detection limit, a spatially
varying and deliberately non-analytic PSF, a sky with a gradient, Poisson and
read noise, saturated stars with bleed trails and bad columns.  The result,
a `SimulatedField`, carries the truth catalog and the true PSF everywhere in
the field (`SimulatedField.psf_at`), so that tests, benchmarks and the demo
can score a catalog against the truth and against the Cramér-Rao bound (see
`lsst.meas.crowdsource.testing.evaluation`).

Only numpy, scipy and astropy are needed.  galsim, when installed, is used to
draw the realistic PSF (a Kolmogorov atmosphere convolved with an aberrated,
obscured optical PSF); it is imported only when ``psf="galsim"`` is asked
for, and without it the simulator falls back to the analytic Moffat PSF with
a warning.

How the PSF is represented and rendered
---------------------------------------
Calling galsim for every star would be far too slow for 10^5-10^6 stars, so
the PSF is tabulated once and every star is drawn from the tables
(`GridPSF`):

* On a ``psf_grid`` x ``psf_grid`` grid of field positions the PSF convolved
  with the square native pixel is sampled every ``1 / oversampling`` pixel.
  Sampling the pixel-convolved PSF at offsets ``i - d`` gives the exact
  pixel-integrated image of a star at sub-pixel offset ``d``.
* Each tabulated PSF is split with a smooth radial taper into a *core*
  (radius < ``core_radius``) and a *halo* (the rest, out to ``psf_radius``).
* A star's core is drawn from the core tables: bilinear interpolation
  between the four surrounding grid PSFs, and bilinear interpolation between
  the four nearest tabulated sub-pixel phases.  Interpolating between phases
  keeps the flux and the centroid of the stamp exact (both are linear in the
  phase) and broadens the core by at most ``1 / (4 oversampling^2)`` px^2
  in variance.  Stars are drawn in chunks with one small matrix product per
  chunk and field cell, and added with `numpy.bincount`.
* The halo carries the PSF wings (a few per cent of the light for the
  Kolmogorov PSF) that reach far from bright stars.  Its variation across
  the field is compressed by an SVD of the grid halos into a few
  eigen-halos; the halo image is the sum of a few FFT convolutions of
  flux-weighted delta images (deposited with cloud-in-cell weights, i.e.
  linear interpolation of the halo in the sub-pixel phase) with the
  eigen-halos.

The *true PSF* of the simulation is exactly this model (core interpolation
plus truncated SVD halo), and `GridPSF.stamps` returns it for any position,
so a fit that uses `SimulatedField.psf_at` uses the same PSF that drew the
image.  The PSF is normalised to unit sum over its full
``(2 psf_radius + 1)^2`` support (the galsim profile is truncated there) and
every grid PSF is shifted so that its centre of light (unweighted first
moment over that support) sits at the star position: the truth ``x, y`` are
centres of light.  With coma the core of the PSF is slightly offset from the
centre of light (a few hundredths of a pixel in the corners with the
defaults); ``meta["psf_core_offset_max"]`` reports the largest distance
between the centroid within ``r <= fwhm / 2`` and the centre of light over
the PSF grid.
"""

from __future__ import annotations

__all__ = [
    "MASK_PLANES",
    "GridPSF",
    "SimulatedField",
    "simulate_field",
    "clean_field",
    "king_fraction",
    "measure_fwhm",
    "snr_for_flux",
    "flux_for_snr",
]

import importlib
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from astropy.table import Table
from scipy import fft as sfft
from scipy import ndimage, optimize

from ..io.planes import DEFAULT_MASK_PLANES

#: Mask plane name -> bit number, as in a default afw ``Mask``.
MASK_PLANES: dict[str, int] = dict(DEFAULT_MASK_PLANES)

_MOFFAT_BETA = 3.0
_FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


# --------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------


def measure_fwhm(stamp: np.ndarray, scale: float = 1.0, upsample: int = 8) -> float:
    """Area-equivalent FWHM of a PSF image.

    The FWHM is the diameter of the circle whose area equals the area above
    half the maximum: ``2 sqrt(A_half / pi)``; for a non-round PSF this is
    the geometric mean of the major and minor FWHM.

    Parameters
    ----------
    stamp : `numpy.ndarray`
        2-D PSF image.
    scale : `float`, optional
        Pixel size of ``stamp`` in the units wanted for the answer.
    upsample : `int`, optional
        The stamp is first interpolated onto a grid ``upsample`` times finer
        (cubic spline) so that the half-maximum area is not quantised by the
        pixels; use 1 for an image that is already finely sampled.

    Returns
    -------
    fwhm : `float`
        FWHM in units of ``scale``.
    """
    img = np.asarray(stamp, dtype=float)
    if img.ndim != 2:
        raise ValueError(f"measure_fwhm needs a 2-D stamp, got shape {img.shape}")
    if upsample > 1:
        img = ndimage.zoom(img, upsample, order=3, mode="grid-constant", grid_mode=True)
        scale = scale / upsample
    peak = img.max()
    if not np.isfinite(peak) or peak <= 0:
        raise ValueError("measure_fwhm: the stamp has no positive maximum")
    area = np.count_nonzero(img >= 0.5 * peak) * scale**2
    return 2.0 * math.sqrt(area / math.pi)


def snr_for_flux(
    flux: np.ndarray | float,
    psf: np.ndarray,
    sky: np.ndarray | float,
    gain: float = 1.0,
    read_noise: float = 0.0,
) -> np.ndarray:
    """Isolated-star Cramér-Rao S/N of a PSF flux measurement.

    ``snr = flux / sigma`` with ``sigma^-2 = sum_pix psf^2 / var`` and
    ``var = (sky + flux psf) / gain + read_noise^2`` (image units), i.e. the
    bound for fitting the amplitude of a known PSF at a known position on a
    known sky, the star's own Poisson noise included.

    Parameters
    ----------
    flux : `float` or `numpy.ndarray`, shape (N,)
        Total star flux (image units).
    psf : `numpy.ndarray`, shape (S, S) or (N, S, S)
        Unit-sum pixel-integrated PSF stamp(s).
    sky : `float` or `numpy.ndarray`, shape (N,)
        Sky level under the star (image units).
    gain : `float`, optional
        Electrons per image unit.
    read_noise : `float`, optional
        Read noise in image units.

    Returns
    -------
    snr : `numpy.ndarray`
        S/N of each flux.
    """
    flux = np.asarray(flux, dtype=float)
    psf = np.asarray(psf, dtype=float)
    sky = np.asarray(sky, dtype=float)
    if psf.ndim == 2:
        psf = psf[None]
    p = psf.reshape(psf.shape[0], -1)
    f = np.atleast_1d(flux)[:, None]
    s = np.atleast_1d(sky)[:, None]
    var = (s + f * p) / gain + read_noise**2
    info = np.sum(p * p / var, axis=1)
    out = np.atleast_1d(flux) * np.sqrt(info)
    return out.reshape(np.shape(flux)) if np.ndim(flux) else out


def flux_for_snr(
    snr: float, psf: np.ndarray, sky: float, gain: float = 1.0, read_noise: float = 0.0
) -> float:
    """Flux whose isolated-star S/N (`snr_for_flux`) equals ``snr``.

    Parameters
    ----------
    snr : `float`
        Target S/N (> 0).
    psf, sky, gain, read_noise
        As for `snr_for_flux` (a single stamp and sky).

    Returns
    -------
    flux : `float`
        The flux, found by root finding in log flux.
    """
    if snr <= 0:
        raise ValueError(f"snr must be positive, got {snr}")

    def resid(logf: float) -> float:
        return math.log(
            float(snr_for_flux(math.exp(logf), psf, sky, gain, read_noise)[0])
        ) - math.log(snr)

    lo, hi = math.log(1e-6), math.log(1e18)
    return math.exp(optimize.brentq(resid, lo, hi, xtol=1e-10))


def _taper(r: np.ndarray, r_in: float, r_out: float) -> np.ndarray:
    """Smooth radial window: 1 inside ``r_in``, cos^2 roll-off to 0 at ``r_out``."""
    t = np.clip((r - r_in) / (r_out - r_in), 0.0, 1.0)
    return np.cos(0.5 * np.pi * t) ** 2


def _inverse_shear(g1: float, g2: float) -> np.ndarray:
    """Matrix mapping sheared coordinates back to the round profile (galsim convention)."""
    g2sum = g1 * g1 + g2 * g2
    if g2sum >= 1:
        raise ValueError("shear magnitude must be < 1")
    return np.array([[1 - g1, -g2], [-g2, 1 + g1]]) / math.sqrt(1 - g2sum)


# --------------------------------------------------------------------------
# The tabulated, spatially varying PSF
# --------------------------------------------------------------------------


class GridPSF:
    """Pixel-integrated PSF tabulated on a grid of field positions.

    Parameters
    ----------
    fine : `numpy.ndarray`, shape (Gy, Gx, Nf, Nf)
        For each grid position, the PSF convolved with the native (unit)
        pixel, sampled every ``1 / oversampling`` native pixels, centred on
        the middle sample.  ``Nf = 2 (psf_radius + 1) oversampling + 1``.
        Each is renormalised here so that its native-pixel samples over the
        ``(2 psf_radius + 1)^2`` support sum to 1.
    grid_x, grid_y : `numpy.ndarray`
        Field positions (PARENT pixel coordinates, increasing, uniformly
        spaced, at least two each) of the grid columns and rows.
    oversampling : `int`
        Odd sampling factor of ``fine``.
    core_radius : `int`
        Half-size of the core stamps; the core is tapered to zero by
        ``core_radius - 0.5`` so that it fits whatever the sub-pixel phase.
    psf_radius : `int`
        Half-size of the full PSF support.
    halo_tolerance : `float`, optional
        Frobenius-norm error allowed when compressing the grid halos into
        eigen-halos, relative to the norm of the grid PSFs themselves.  The
        cores are rescaled afterwards so that every PSF still sums to 1.

    Notes
    -----
    The model PSF at position ``(x, y)`` is the bilinear interpolation of the
    grid cores plus the truncated-SVD halo with bilinearly interpolated
    coefficients; sub-pixel phases are interpolated bilinearly (between the
    tabulated phases for the core, between whole pixels for the smooth
    halo).  Positions outside the grid use the nearest grid cell edge
    (constant extrapolation).
    """

    def __init__(
        self,
        fine: np.ndarray,
        grid_x: np.ndarray,
        grid_y: np.ndarray,
        oversampling: int,
        core_radius: int,
        psf_radius: int,
        halo_tolerance: float = 1e-4,
    ) -> None:
        fine = np.array(fine, dtype=float)
        if fine.ndim != 4 or fine.shape[0] != len(grid_y) or fine.shape[1] != len(grid_x):
            raise ValueError(
                f"fine has shape {fine.shape}, expected (Gy, Gx, Nf, Nf) matching the grid"
            )
        if oversampling < 1 or oversampling % 2 == 0:
            raise ValueError(f"oversampling must be a positive odd integer, got {oversampling}")
        if core_radius < 3 or psf_radius < core_radius:
            raise ValueError(
                f"need 3 <= core_radius <= psf_radius, got {core_radius}, {psf_radius}"
            )
        nf_expected = 2 * (psf_radius + 1) * oversampling + 1
        if fine.shape[2:] != (nf_expected, nf_expected):
            raise ValueError(
                f"fine images must be {nf_expected}x{nf_expected}, got {fine.shape[2:]}"
            )
        if len(grid_x) < 2 or len(grid_y) < 2:
            raise ValueError("the PSF grid needs at least two positions along each axis")

        self.grid_x = np.asarray(grid_x, dtype=float)
        self.grid_y = np.asarray(grid_y, dtype=float)
        self.oversampling = int(oversampling)
        self.core_radius = int(core_radius)
        self.psf_radius = int(psf_radius)
        gy, gx = fine.shape[:2]
        self._gx, self._gy = gx, gy
        os_ = self.oversampling
        hf = (psf_radius + 1) * os_
        ng = gy * gx
        fine = fine.reshape(ng, nf_expected, nf_expected)

        # Normalise over the native-pixel support.
        sl = slice(hf - psf_radius * os_, hf + psf_radius * os_ + 1, os_)
        norm = fine[:, sl, sl].sum(axis=(1, 2))
        if np.any(~np.isfinite(norm)) or np.any(norm <= 0):
            raise ValueError("invalid PSF: a grid PSF has non-positive or non-finite sum")
        fine = fine / norm[:, None, None]

        # Core / halo split.
        u = (np.arange(nf_expected) - hf) / os_
        r_fine = np.hypot(u[:, None], u[None, :])
        r_out = core_radius - 0.5
        r_in = max(r_out - 4.0, 1.0)
        self._taper_radii = (r_in, r_out)
        core_fine = fine * _taper(r_fine, r_in, r_out)

        # Core templates for the tabulated phases k = -h..h (offset k / os).
        h = (os_ + 1) // 2
        self._h = h
        nph = 2 * h + 1
        i = np.arange(-core_radius, core_radius + 1)
        k = np.arange(-h, h + 1)
        idx = hf + i[None, :] * os_ - k[:, None]  # (nph, Sc)
        sc = 2 * core_radius + 1
        templates = core_fine[
            :, idx[:, None, :, None], idx[None, :, None, :]
        ]  # (G, py, px, Sc, Sc)
        self._core = templates.reshape(ng, nph * nph, sc * sc).astype(np.float32)
        self._nph = nph

        # Halo (native phase 0) and its SVD compression.
        native = fine[:, sl, sl]  # (G, L, L)
        i_h = np.arange(-psf_radius, psf_radius + 1)
        r_nat = np.hypot(i_h[:, None], i_h[None, :])
        halo = native * (1.0 - _taper(r_nat, r_in, r_out))
        lh = 2 * psf_radius + 1
        u_, s_, vt = np.linalg.svd(halo.reshape(ng, lh * lh), full_matrices=False)
        # Keep eigen-halos until the dropped part is below halo_tolerance of the
        # whole PSF (Frobenius norm over the grid); a negligible halo gets rank 0.
        scale2 = float(np.sum(native**2)) * halo_tolerance**2
        tail = np.concatenate([np.cumsum((s_**2)[::-1])[::-1], [0.0]])  # tail[k] = sum_{j>=k} s_j^2
        rank = int(np.argmax(tail <= scale2))
        self._halo_basis = vt[:rank].reshape(rank, lh, lh)
        self._halo_coeff = u_[:, :rank] * s_[:rank]  # (G, K)
        # Restore unit sums lost to the truncation by rescaling the cores.
        halo_sum = self._halo_coeff @ self._halo_basis.reshape(rank, lh * lh).sum(axis=1)
        core_sum = self._core[:, h * nph + h].sum(axis=1, dtype=float)  # phase 0
        self._core *= ((1.0 - halo_sum) / core_sum).astype(np.float32)[:, None, None]
        self._native_grid = native  # exact grid PSFs (before SVD), for diagnostics

    # ------------------------------------------------------------------
    @property
    def core_size(self) -> int:
        """Side of the core stamps (``2 core_radius + 1``)."""
        return 2 * self.core_radius + 1

    @property
    def support(self) -> int:
        """Side of the full PSF support (``2 psf_radius + 1``)."""
        return 2 * self.psf_radius + 1

    @property
    def halo_rank(self) -> int:
        """Number of eigen-halos kept."""
        return self._halo_basis.shape[0]

    # ------------------------------------------------------------------
    def _field_weights(
        self, x: np.ndarray, y: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Bilinear field weights: cell index, 4 corner grid indices, 4 weights."""
        gx, gy = self.grid_x, self.grid_y
        cx = np.clip(np.floor((x - gx[0]) / (gx[1] - gx[0])).astype(np.int64), 0, len(gx) - 2)
        cy = np.clip(np.floor((y - gy[0]) / (gy[1] - gy[0])).astype(np.int64), 0, len(gy) - 2)
        tx = np.clip((x - gx[cx]) / (gx[1] - gx[0]), 0.0, 1.0)
        ty = np.clip((y - gy[cy]) / (gy[1] - gy[0]), 0.0, 1.0)
        nx = self._gx
        g00 = cy * nx + cx
        corners = np.stack([g00, g00 + 1, g00 + nx, g00 + nx + 1], axis=1)
        weights = np.stack([(1 - tx) * (1 - ty), tx * (1 - ty), (1 - tx) * ty, tx * ty], axis=1)
        cell = cy * (len(gx) - 1) + cx
        return cell, corners, weights

    def _phase(self, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Lower tabulated phase index and interpolation weight for offsets ``d`` in [-0.5, 0.5)."""
        u = d * self.oversampling
        k0 = np.floor(u)
        t = u - k0
        return k0.astype(np.int64) + self._h, t

    def core_stamps(
        self, x: np.ndarray, y: np.ndarray, subpixel: bool = True
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Core stamps of stars at ``(x, y)``.

        Parameters
        ----------
        x, y : `numpy.ndarray`
            Star positions (PARENT pixel coordinates).
        subpixel : `bool`, optional
            If `False` the stars are placed at the centre of their nearest
            pixel (the shape still follows ``(x, y)``).

        Returns
        -------
        ax, ay : `numpy.ndarray` of `int`
            Pixel on which each stamp is centred, ``round(x), round(y)``.
        stamps : `numpy.ndarray`, shape (N, Sc, Sc), float32
            Core stamps (flux 1 minus the halo share).
        """
        x = np.atleast_1d(np.asarray(x, dtype=float))
        y = np.atleast_1d(np.asarray(y, dtype=float))
        ax = np.floor(x + 0.5)
        ay = np.floor(y + 0.5)
        dx = x - ax if subpixel else np.zeros_like(x)
        dy = y - ay if subpixel else np.zeros_like(y)
        px0, tx = self._phase(dx)
        py0, ty = self._phase(dy)
        cell, corners, wfield = self._field_weights(x, y)
        n = len(x)
        nph = self._nph
        ncol = 4 * nph * nph
        sc2 = self.core_size**2
        out = np.empty((n, sc2), dtype=np.float32)
        for c in np.unique(cell):
            sel = np.flatnonzero(cell == c)
            m = len(sel)
            w = np.zeros((m, ncol), dtype=np.float32)
            rows = np.arange(m)
            for a in range(4):
                wa = wfield[sel, a]
                for py, wy in ((py0[sel], 1 - ty[sel]), (py0[sel] + 1, ty[sel])):
                    for px, wx in ((px0[sel], 1 - tx[sel]), (px0[sel] + 1, tx[sel])):
                        w[rows, a * nph * nph + py * nph + px] = wa * wy * wx
            tmpl = self._core[corners[sel[0]]].reshape(ncol, sc2)
            out[sel] = w @ tmpl
        sc = self.core_size
        return ax.astype(np.int64), ay.astype(np.int64), out.reshape(n, sc, sc)

    def halo_coefficients(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Eigen-halo coefficients (N, K) of stars at ``(x, y)``."""
        _, corners, wfield = self._field_weights(np.atleast_1d(x), np.atleast_1d(y))
        return np.einsum("na,nak->nk", wfield, self._halo_coeff[corners])

    def stamps(
        self,
        x: np.ndarray | float,
        y: np.ndarray | float,
        size: int | None = None,
        subpixel: bool = False,
    ) -> np.ndarray:
        """The true PSF (core plus halo) of stars at ``(x, y)``.

        Parameters
        ----------
        x, y : `float` or `numpy.ndarray`
            Positions (PARENT pixel coordinates).
        size : `int`, optional
            Odd stamp side; defaults to the core size.  Sizes beyond the PSF
            support are zero-padded.
        subpixel : `bool`, optional
            If `False` (default) the star sits at the centre of the central
            pixel (the PSF *shape* is that at ``(x, y)``); if `True` it sits at
            ``(x - round(x), y - round(y))`` from that centre, exactly as the
            simulator drew it.

        Returns
        -------
        stamps : `numpy.ndarray`, shape (S, S) for scalar input else (N, S, S)
            Pixel-integrated PSF, unit sum over the full support.
        """
        scalar = np.ndim(x) == 0 and np.ndim(y) == 0
        xa = np.atleast_1d(np.asarray(x, dtype=float))
        ya = np.atleast_1d(np.asarray(y, dtype=float))
        xa, ya = np.broadcast_arrays(xa, ya)
        size = self.core_size if size is None else int(size)
        if size < 1 or size % 2 == 0:
            raise ValueError(f"stamp size must be a positive odd integer, got {size}")
        n = len(xa)
        s = size // 2
        out = np.zeros((n, size, size), dtype=float)
        chunk = 4096
        for start in range(0, n, chunk):
            sl = slice(start, start + chunk)
            out[sl] = self._stamps_chunk(xa[sl], ya[sl], s, subpixel)
        return out[0] if scalar else out

    def _stamps_chunk(self, x: np.ndarray, y: np.ndarray, s: int, subpixel: bool) -> np.ndarray:
        n = len(x)
        size = 2 * s + 1
        out = np.zeros((n, size, size), dtype=float)
        # Core, cropped or padded into the stamp.
        _, _, core = self.core_stamps(x, y, subpixel=subpixel)
        rc = self.core_radius
        m = min(s, rc)
        out[:, s - m : s + m + 1, s - m : s + m + 1] = core[
            :, rc - m : rc + m + 1, rc - m : rc + m + 1
        ]
        # Halo: linear interpolation between whole-pixel shifts, offsets e in {-1, 0, 1}.
        coeff = self.halo_coefficients(x, y)  # (n, K)
        k = coeff.shape[1]
        if k == 0:
            return out
        if subpixel:
            dx = x - np.floor(x + 0.5)
            dy = y - np.floor(y + 0.5)
        else:
            dx = np.zeros(n)
            dy = np.zeros(n)

        def axis_weights(d: np.ndarray) -> np.ndarray:
            d0 = np.floor(d)
            t = d - d0
            w = np.zeros((len(d), 3))  # columns: shift e = -1, 0, +1 (value at i - e)
            rows = np.arange(len(d))
            # value(i) = (1 - t) H(i - d0) + t H(i - d0 - 1)
            w[rows, (d0 + 1).astype(int)] += 1 - t  # e = d0
            w[rows, (d0 + 2).astype(int)] += t  # e = d0 + 1
            return w

        wy = axis_weights(dy)
        wx = axis_weights(dx)
        r = self.psf_radius
        pad = max(s - r, 0) + 1
        basis = np.pad(self._halo_basis, ((0, 0), (pad, pad), (pad, pad)))
        c = r + pad
        shifted = np.empty((3, 3, k, size, size))
        for iey, ey in enumerate((-1, 0, 1)):
            for iex, ex in enumerate((-1, 0, 1)):
                shifted[iey, iex] = basis[
                    :, c - s - ey : c + s + 1 - ey, c - s - ex : c + s + 1 - ex
                ]
        wfull = (wy[:, :, None, None] * wx[:, None, :, None] * coeff[:, None, None, :]).reshape(
            n, 9 * k
        )
        out += (wfull @ shifted.reshape(9 * k, size * size)).reshape(n, size, size)
        return out

    def render(
        self,
        x: np.ndarray,
        y: np.ndarray,
        flux: np.ndarray,
        shape: tuple[int, int],
        xy0: tuple[int, int] = (0, 0),
        chunk: int = 16384,
        with_halo: bool = True,
        sky: np.ndarray | None = None,
        gain: float = 1.0,
        read_noise: float = 0.0,
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Noiseless image of point sources.

        Parameters
        ----------
        x, y : `numpy.ndarray`
            Positions (PARENT pixel coordinates); stars off the image still
            contribute their wings.
        flux : `numpy.ndarray`
            Total fluxes (image units).
        shape : `tuple` [`int`, `int`]
            Image shape (rows, columns).
        xy0 : `tuple` [`int`, `int`], optional
            PARENT coordinates of pixel ``[0, 0]``.
        chunk : `int`, optional
            Stars per block (memory ~ ``chunk * core_size^2 * 16`` bytes).
        with_halo : `bool`, optional
            Draw the PSF halo (wings beyond the core).
        sky : `numpy.ndarray`, optional
            Sky under each star; if given, the isolated-star S/N of each star
            (`snr_for_flux` summed over its core stamp) is returned as well.
        gain, read_noise : `float`, optional
            Used with ``sky`` for the S/N.

        Returns
        -------
        image : `numpy.ndarray`, float64
            Sum of the stars.
        stats : `dict`
            Per-star by-products computed from the core stamps, in input
            order: ``peak`` (largest pixel value of the star alone) and, with
            ``sky``, ``snr``.
        """
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        flux = np.asarray(flux, dtype=float)
        ny, nx = shape
        x0, y0 = xy0
        n = len(x)
        peak = np.zeros(n)
        snr = np.zeros(n)
        rc = self.core_radius
        reach = self.psf_radius if with_halo else rc
        # Stars that cannot touch the image are not drawn.
        keep = (
            (x > x0 - 1 - reach)
            & (x < x0 + nx + reach)
            & (y > y0 - 1 - reach)
            & (y < y0 + ny + reach)
        )
        pad = 2 * reach + 4
        hc, wc = ny + 2 * pad, nx + 2 * pad
        canvas = np.zeros(hc * wc)
        idx_keep = np.flatnonzero(keep)
        order = idx_keep[np.argsort(y[idx_keep], kind="stable")]
        sc = 2 * rc + 1
        off = np.arange(-rc, rc + 1)
        off_flat = (off[:, None] * wc + off[None, :]).ravel()

        def per_star(sel: np.ndarray, st2: np.ndarray) -> None:
            peak[sel] = flux[sel] * st2.max(axis=1)
            if sky is not None:
                # var = a + b p per pixel; float32 arithmetic, float64 sums.
                a = (sky[sel] / gain + read_noise**2).astype(np.float32)[:, None]
                b = (flux[sel] / gain).astype(np.float32)[:, None]
                var = b * st2
                var += a
                q = st2 * st2
                q /= var
                snr[sel] = flux[sel] * np.sqrt(q.sum(axis=1, dtype=np.float64))

        far = np.flatnonzero(~keep)
        for start in range(0, len(far), chunk):
            sel = far[start : start + chunk]
            per_star(sel, self.core_stamps(x[sel], y[sel])[2].reshape(len(sel), sc * sc))
        for start in range(0, len(order), chunk):
            sel = order[start : start + chunk]
            ax, ay, st = self.core_stamps(x[sel], y[sel])
            st2 = st.reshape(len(sel), sc * sc)
            per_star(sel, st2)
            cx = ax - x0 + pad
            cy = ay - y0 + pad
            base = cy * wc + cx
            lo = int((cy.min() - rc) * wc)
            hi = int((cy.max() + rc + 1) * wc)
            flat = (base - lo)[:, None] + off_flat[None, :]
            vals = st2 * flux[sel, None].astype(np.float32)
            canvas[lo:hi] += np.bincount(flat.ravel(), weights=vals.ravel(), minlength=hi - lo)
        canvas = canvas.reshape(hc, wc)
        if with_halo and len(order) and self.halo_rank:
            canvas += self._render_halo(
                x[order], y[order], flux[order], (hc, wc), x0 - pad, y0 - pad
            )
        stats = {"peak": peak}
        if sky is not None:
            stats["snr"] = snr
        return canvas[pad : pad + ny, pad : pad + nx].copy(), stats

    def _render_halo(
        self,
        x: np.ndarray,
        y: np.ndarray,
        flux: np.ndarray,
        shape: tuple[int, int],
        cx0: int,
        cy0: int,
    ) -> np.ndarray:
        """Halo image on a canvas whose pixel [0, 0] has PARENT coordinates (cx0, cy0)."""
        hc, wc = shape
        coeff = self.halo_coefficients(x, y) * flux[:, None]  # (n, K)
        xc = x - cx0
        yc = y - cy0
        ix = np.floor(xc).astype(np.int64)
        iy = np.floor(yc).astype(np.int64)
        tx = xc - ix
        ty = yc - iy
        r = self.psf_radius
        lh = 2 * r + 1
        fshape = (
            sfft.next_fast_len(hc + lh - 1, real=True),
            sfft.next_fast_len(wc + lh - 1, real=True),
        )
        acc = None
        flat = np.concatenate(
            [iy * wc + ix, iy * wc + ix + 1, (iy + 1) * wc + ix, (iy + 1) * wc + ix + 1]
        )
        wcic = np.concatenate([(1 - tx) * (1 - ty), tx * (1 - ty), (1 - tx) * ty, tx * ty])
        buf = np.zeros(fshape)  # zero-padded FFT input, reused
        for k in range(coeff.shape[1]):
            dep = np.bincount(flat, weights=wcic * np.tile(coeff[:, k], 4), minlength=hc * wc)
            buf[:hc, :wc] = dep.reshape(hc, wc)
            del dep
            spec = sfft.rfft2(buf, workers=-1)
            buf[:hc, :wc] = 0.0
            buf[:lh, :lh] = self._halo_basis[k]
            spec *= sfft.rfft2(buf, workers=-1)
            buf[:lh, :lh] = 0.0
            if acc is None:
                acc = spec
            else:
                acc += spec
            del spec
        del flat, wcic, buf
        full = sfft.irfft2(acc, s=fshape, workers=-1)
        del acc
        return full[r : r + hc, r : r + wc]


# --------------------------------------------------------------------------
# PSF tables: galsim and analytic
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class _PSFPlan:
    """Per grid point PSF parameters (normalised field position xh, yh in [-1, 1])."""

    fwhm: float
    g1: float
    g2: float
    coma1: float
    coma2: float
    astig1: float
    astig2: float
    defocus: float


def _psf_plan(
    xh: float, yh: float, fwhm: float, psf_variation: float, coma: float, ellipticity: float
) -> _PSFPlan:
    """Smooth field pattern of the PSF parameters.

    ``rho^2 = (xh^2 + yh^2) / 2`` is 0 at the field centre and 1 in the
    corners.  FWHM grows quadratically by the factor ``1 + psf_variation``
    to the corners; the atmospheric shear has a quadratic pattern reaching
    ``ellipticity`` in the corners on top of a small constant shear;
    coma grows linearly (radially oriented) to ``coma`` waves in the
    corners, astigmatism quadratically to ``coma`` waves, defocus is
    constant.
    """
    rho2 = 0.5 * (xh * xh + yh * yh)
    return _PSFPlan(
        fwhm=fwhm * (1.0 + psf_variation * rho2),
        g1=0.2 * ellipticity + 0.8 * ellipticity * 0.5 * (xh * xh - yh * yh),
        g2=0.8 * ellipticity * xh * yh,
        coma1=coma * xh / math.sqrt(2.0),
        coma2=coma * yh / math.sqrt(2.0),
        astig1=0.5 * coma * 0.5 * (xh * xh - yh * yh),
        astig2=0.5 * coma * xh * yh,
        defocus=0.5 * coma,
    )


def _galsim_fine(
    plans: list[_PSFPlan], oversampling: int, psf_radius: int, lam_over_diam: float
) -> tuple[np.ndarray, list[float]]:
    """Oversampled pixel-convolved galsim PSFs, recentred on their centre of light.

    Returns the fine images and, per grid point, the distance between the
    core (r <= FWHM / 2) centroid and the centre of light.
    """
    import galsim

    nf = 2 * (psf_radius + 1) * oversampling + 1
    hf = (psf_radius + 1) * oversampling
    sl = slice(hf - psf_radius * oversampling, hf + psf_radius * oversampling + 1, oversampling)
    i_nat = np.arange(-psf_radius, psf_radius + 1)
    out = np.empty((len(plans), nf, nf))
    offsets = []
    pixel = galsim.Pixel(1.0)
    gsparams = galsim.GSParams(maximum_fft_size=16384)
    ratio: float | None = None
    for n, p in enumerate(plans):
        optics = galsim.OpticalPSF(
            lam_over_diam=lam_over_diam,
            obscuration=0.3,
            coma1=p.coma1,
            coma2=p.coma2,
            astig1=p.astig1,
            astig2=p.astig2,
            defocus=p.defocus,
            gsparams=gsparams,
        )

        def profile(kfwhm: float) -> Any:
            atm = galsim.Kolmogorov(fwhm=kfwhm, gsparams=gsparams).shear(g1=p.g1, g2=p.g2)
            return galsim.Convolve(atm, optics, gsparams=gsparams)

        def fwhm_of(prof: Any) -> float:
            scale = p.fwhm / 25.0
            npix = 2 * int(2.5 * p.fwhm / scale) + 1
            img = prof.drawImage(nx=npix, ny=npix, scale=scale, method="no_pixel").array
            return measure_fwhm(img, scale=scale, upsample=1)

        # Calibrate the Kolmogorov FWHM so that the total profile has the target
        # FWHM (start from the ratio found at the previous grid point).
        if ratio is None:
            kf = math.sqrt(max(p.fwhm**2 - (1.03 * lam_over_diam) ** 2, (0.5 * p.fwhm) ** 2))
        else:
            kf = ratio * p.fwhm
        for _ in range(4):
            f = fwhm_of(profile(kf))
            if abs(f / p.fwhm - 1) < 3e-3:
                break
            kf *= p.fwhm / f
        ratio = kf / p.fwhm
        prof = profile(kf)
        shift = np.zeros(2)
        for _ in range(3):
            img = (
                galsim.Convolve(prof.shift(-shift[0], -shift[1]), pixel, gsparams=gsparams)
                .drawImage(nx=nf, ny=nf, scale=1.0 / oversampling, method="no_pixel")
                .array
            )
            nat = img[sl, sl]
            tot = nat.sum()
            cx = float((nat.sum(axis=0) * i_nat).sum() / tot)
            cy = float((nat.sum(axis=1) * i_nat).sum() / tot)
            if abs(cx) < 1e-4 and abs(cy) < 1e-4:
                break
            shift += (cx, cy)
        out[n] = img
        r = np.hypot(i_nat[:, None], i_nat[None, :])
        w = nat * (r <= 0.5 * p.fwhm)
        wx = float((w.sum(axis=0) * i_nat).sum() / w.sum())
        wy = float((w.sum(axis=1) * i_nat).sum() / w.sum())
        offsets.append(math.hypot(wx - cx, wy - cy))
    return out, offsets


def _analytic_fine(
    plans: list[_PSFPlan], kind: str, oversampling: int, psf_radius: int
) -> np.ndarray:
    """Oversampled pixel-convolved elliptical Moffat (beta = 3) or Gaussian PSFs."""
    sup = 3  # sub-samples per fine sample for the pixel integral
    nf = 2 * (psf_radius + 1) * oversampling + 1
    hf = (psf_radius + 1) * oversampling
    # Super-sampled grid covering the fine grid plus half a native pixel each side.
    step = 1.0 / (oversampling * sup)
    hs = hf * sup + (oversampling * sup) // 2
    u = np.arange(-hs, hs + 1) * step
    box = oversampling * sup  # samples per native pixel (odd)
    out = np.empty((len(plans), nf, nf))
    for n, p in enumerate(plans):
        minv = _inverse_shear(p.g1, p.g2)
        xs = minv[0, 0] * u[None, :] + minv[0, 1] * u[:, None]
        ys = minv[1, 0] * u[None, :] + minv[1, 1] * u[:, None]
        r2 = xs * xs + ys * ys
        if kind == "moffat":
            alpha = p.fwhm / (2.0 * math.sqrt(2.0 ** (1.0 / _MOFFAT_BETA) - 1.0))
            prof = (1.0 + r2 / alpha**2) ** (-_MOFFAT_BETA)
        elif kind == "gaussian":
            sigma = p.fwhm / _FWHM_PER_SIGMA
            prof = np.exp(-0.5 * r2 / sigma**2)
        else:  # pragma: no cover - checked by the caller
            raise ValueError(kind)
        pix = ndimage.uniform_filter(prof, size=box, mode="constant")
        c = hs
        idx = c + (np.arange(nf) - hf) * sup
        out[n] = pix[np.ix_(idx, idx)]
    return out


def _build_psf(
    kind: str,
    shape: tuple[int, int],
    xy0: tuple[int, int],
    fwhm: float,
    psf_variation: float,
    coma: float,
    ellipticity: float,
    psf_grid: int,
    oversampling: int,
    core_radius: int,
    psf_radius: int,
    lam_over_diam: float,
) -> tuple[GridPSF, dict[str, Any]]:
    ny, nx = shape
    x0, y0 = xy0
    varies = psf_variation != 0 or ellipticity != 0 or (kind == "galsim" and coma != 0)
    ngrid = max(int(psf_grid), 2) if varies else 2
    xh = np.linspace(-1.0, 1.0, ngrid)
    plans = [
        _psf_plan(a, b, fwhm, psf_variation, coma, ellipticity) for b in xh for a in xh
    ]  # row-major: y outer, x inner
    info: dict[str, Any] = {}
    if kind == "galsim":
        fine, offsets = _galsim_fine(plans, oversampling, psf_radius, lam_over_diam)
        info["psf_core_offset_max"] = float(max(offsets))
    else:
        fine = _analytic_fine(plans, kind, oversampling, psf_radius)
        info["psf_core_offset_max"] = 0.0
    nf = fine.shape[-1]
    grid_x = x0 + 0.5 * (nx - 1) * (xh + 1.0)
    grid_y = y0 + 0.5 * (ny - 1) * (xh + 1.0)
    if nx == 1:
        grid_x = x0 + np.arange(ngrid, dtype=float)
    if ny == 1:
        grid_y = y0 + np.arange(ngrid, dtype=float)
    model = GridPSF(
        fine.reshape(ngrid, ngrid, nf, nf), grid_x, grid_y, oversampling, core_radius, psf_radius
    )
    info["psf_grid_fwhm"] = [pl.fwhm for pl in plans]
    return model, info


# --------------------------------------------------------------------------
# The simulated field
# --------------------------------------------------------------------------


@dataclass
class SimulatedField:
    """A simulated exposure and its truth.

    All pixel coordinates follow afw: ``x`` is the column, ``y`` the row,
    pixel centres are at integers, and coordinates are PARENT coordinates
    (pixel ``[j, i]`` of the arrays is at ``x = xy0[0] + i``,
    ``y = xy0[1] + j``).  Image units are "counts" (ADU); ``gain``
    converts them to electrons.

    Attributes
    ----------
    image : `numpy.ndarray`, float32, shape (ny, nx)
        The exposure, sky included, with noise, saturation and defects.
    variance : `numpy.ndarray`, float32
        Expected variance: ``(sky + noiseless stars) / gain + read_noise^2``.
    mask : `numpy.ndarray`, int32
        afw-style bit mask (see ``mask_planes``).
    mask_planes : `dict` [`str`, `int`]
        Plane name -> bit number (``BAD``=0, ``SAT``=1, ``INTRP``=2, ``CR``=3,
        ``EDGE``=4, ``DETECTED``=5, ``DETECTED_NEGATIVE``=6, ``SUSPECT``=7,
        ``NO_DATA``=8).
    truth : `astropy.table.Table`
        One row per simulated star, including stars centred up to
        ``edge_margin`` pixels outside the image.  Columns: ``id`` (int64,
        from 1), ``x``, ``y`` (centre of light, PARENT pixels), ``flux``
        (total counts over the full PSF support), ``snr`` (isolated-star
        Cramér-Rao S/N, see `snr_for_flux`; the sum runs over the core
        stamp), ``saturated`` (expected peak, sky included, at or above the
        saturation level), ``in_image`` (centre inside the pixel bounds),
        ``peak`` (largest expected pixel value of the star alone, counts),
        ``sky`` (true sky at the star, counts).
    sky : `numpy.ndarray`, float32
        True sky (counts per pixel).
    noiseless : `numpy.ndarray`, float32
        The stars alone, noiseless, before saturation and defects.
    psf_stamp : `numpy.ndarray`, float64
        True PSF at the field centre, ``stamp_size`` square, star at the
        centre of the central pixel; unit sum over the full PSF support (so
        slightly less over the stamp).
    psf_model : `GridPSF`
        The true PSF everywhere (used by `psf_at`).
    xy0 : `tuple` [`int`, `int`]
        PARENT coordinates of pixel ``[0, 0]``.
    gain : `float`
        Electrons per count.
    read_noise : `float`
        Read noise (counts).
    saturation : `float` or `None`
        Saturation level (counts), `None` if unsaturated.
    meta : `dict`
        Every simulation parameter plus derived numbers (flux range of the
        luminosity function, PSF grid FWHMs, halo rank, ...).
    """

    image: np.ndarray
    variance: np.ndarray
    mask: np.ndarray
    mask_planes: dict[str, int]
    truth: Table
    sky: np.ndarray
    noiseless: np.ndarray
    psf_stamp: np.ndarray
    psf_model: GridPSF
    xy0: tuple[int, int]
    gain: float
    read_noise: float
    saturation: float | None
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, int]:
        """Image shape (rows, columns)."""
        return self.image.shape  # type: ignore[return-value]

    def psf_at(
        self,
        x: float | np.ndarray,
        y: float | np.ndarray,
        *,
        size: int | None = None,
        subpixel: bool = False,
    ) -> np.ndarray:
        """True PSF at PARENT position(s) ``(x, y)``.

        Parameters
        ----------
        x, y : `float` or `numpy.ndarray`
            Position(s).
        size : `int`, optional
            Odd stamp side, default ``psf_stamp`` size; up to the full
            support ``2 psf_radius + 1`` holds all of the light.
        subpixel : `bool`, optional
            `False`: the star is at the centre of the central pixel.  `True`:
            the stamp is centred on pixel ``(round(x), round(y))`` and the
            star sits at its exact sub-pixel position, as in the image.

        Returns
        -------
        stamp : `numpy.ndarray`, shape (S, S) or (N, S, S)
            Pixel-integrated PSF (unit sum over the full support).
        """
        return self.psf_model.stamps(x, y, size=size or self.psf_stamp.shape[0], subpixel=subpixel)

    def mask_bits(self, *names: str) -> int:
        """OR of the bit values of the named mask planes."""
        bits = 0
        for n in names:
            bits |= 1 << self.mask_planes[n]
        return bits


def _as_stars(stars: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if stars is None:
        return np.empty(0), np.empty(0), np.empty(0)
    try:
        sx = np.atleast_1d(np.asarray(stars["x"], dtype=float))
        sy = np.atleast_1d(np.asarray(stars["y"], dtype=float))
        sf = np.atleast_1d(np.asarray(stars["flux"], dtype=float))
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise ValueError(
            "stars must be a table or mapping with 'x', 'y' and 'flux' columns"
        ) from err
    if not (sx.shape == sy.shape == sf.shape) or sx.ndim != 1:
        raise ValueError("stars: 'x', 'y' and 'flux' must be 1-D and of equal length")
    if not (np.all(np.isfinite(sx)) and np.all(np.isfinite(sy)) and np.all(np.isfinite(sf))):
        raise ValueError("stars: positions and fluxes must be finite")
    if np.any(sf < 0):
        raise ValueError("stars: fluxes must be non-negative")
    return sx, sy, sf


def king_fraction(
    dx: np.ndarray,
    dy: np.ndarray,
    density: float,
    core_radius: float,
    tidal_radius: float,
    floor: float = 0.0,
) -> np.ndarray:
    """Surface density over its central value ``density`` at offsets ``(dx, dy)``
    from the centre of a King (1962) profile on a uniform ``floor``.

    King's profile ``[(1 + r^2/r_c^2)^-1/2 - (1 + r_t^2/r_c^2)^-1/2]^2``,
    scaled to ``density - floor`` at the centre and zero beyond the tidal
    radius ``r_t``, plus ``floor``.
    """
    if not (core_radius > 0 and tidal_radius > core_radius and 0 <= floor <= density):
        raise ValueError(
            "king needs 0 < core_radius < tidal_radius and 0 <= floor <= density; got "
            f"{core_radius}, {tidal_radius}, {floor} (density {density})"
        )
    r2 = (np.asarray(dx, float) ** 2 + np.asarray(dy, float) ** 2) / core_radius**2
    edge = 1.0 / math.sqrt(1.0 + (tidal_radius / core_radius) ** 2)
    shape = np.clip(1.0 / np.sqrt(1.0 + r2) - edge, 0.0, None) ** 2 / (1.0 - edge) ** 2
    return (floor + (density - floor) * shape) / density


def simulate_field(
    shape: tuple[int, int] = (512, 512),
    density: float = 0.02,
    seed: int = 0,
    *,
    psf: str = "galsim",
    fwhm: float = 3.5,
    psf_variation: float = 0.15,
    coma: float = 0.15,
    ellipticity: float = 0.04,
    sky: float = 1000.0,
    sky_gradient: tuple[float, float] = (0.05, -0.03),
    gain: float = 1.0,
    read_noise: float = 5.0,
    snr_min: float = 2.0,
    snr_max: float = 3000.0,
    luminosity_slope: float = 0.75,
    saturation: float | None = None,
    n_saturated: int = 5,
    bleed: bool = True,
    bad_columns: int | Sequence[int] = 1,
    xy0: tuple[int, int] = (0, 0),
    edge_margin: float = 10.0,
    stars: Mapping[str, Any] | Table | None = None,
    stamp_size: int = 25,
    psf_radius: int | None = None,
    psf_grid: int = 5,
    oversampling: int = 5,
    lam_over_diam: float | None = None,
    background: np.ndarray | None = None,
    king: tuple[float, float, float] | None = None,
) -> SimulatedField:
    """Simulate a crowded stellar field with truth.

    Parameters
    ----------
    shape : `tuple` [`int`, `int`]
        Image shape (rows, columns).
    density : `float`
        Mean number of random stars per pixel (the number is Poisson
        distributed), over the image enlarged by ``edge_margin`` on each
        side.
    seed : `int`
        Random seed; the output is a deterministic function of all the
        arguments.  Independent streams (spawned from
        ``numpy.random.SeedSequence(seed)``, PCG64) draw the stars, the
        noise and the defects.
    psf : {"galsim", "moffat", "gaussian"}
        PSF family.  ``"galsim"``: a Kolmogorov atmosphere (sheared)
        convolved with an obscured (0.3) optical PSF with coma, astigmatism
        and defocus -- deliberately neither Moffat nor Gaussian; if galsim
        is not importable a `UserWarning` is issued and ``"moffat"`` is used.
        ``"moffat"``: elliptical Moffat with beta = 3.  ``"gaussian"``:
        elliptical Gaussian.  All are pixel-integrated and vary across the
        field as described in ``psf_variation``, ``ellipticity``, ``coma``.
    fwhm : `float`
        FWHM (pixels) at the field centre of the PSF before pixel
        integration (area-equivalent, see `measure_fwhm`).
    psf_variation : `float`
        Fractional change of the FWHM from the field centre to the corners
        (quadratic in position).
    coma : `float`
        galsim only: coma (waves) reached in the corners, growing linearly
        and radially from zero at the centre; astigmatism reaches
        ``coma / 2`` waves (quadratic pattern) and defocus is ``coma / 2``.
    ellipticity : `float`
        Reduced shear of the atmospheric part in the corners (quadratic
        pattern plus a constant ``0.2 * ellipticity`` in g1).
    sky : `float`
        Mean sky level (counts per pixel).
    sky_gradient : `tuple` [`float`, `float`]
        Fractional change of the sky across the full width in x and height
        in y (linear).
    gain : `float`
        Electrons per count.
    read_noise : `float`
        Read noise, counts.
    snr_min, snr_max : `float`
        S/N range (isolated-star Cramér-Rao S/N of a star at the field
        centre on the mean sky) spanned by the luminosity function.
    luminosity_slope : `float`
        ``dN / dln(flux) ∝ flux^-luminosity_slope`` (0.75 is the common
        ``dlog10 N / dm = 0.3``; 0 is log-uniform).  With the defaults about
        half the stars have S/N < 5.
    saturation : `float` or `None`
        Saturation level (counts).  Pixels at or above it are clipped to it
        and flagged SAT; `None` disables saturation.
    n_saturated : `int`
        With ``saturation`` set, this many extra stars whose expected peak
        is 2-50 times the saturation level are added inside the image.
    bleed : `bool`
        With ``saturation`` set, the excess charge of saturated pixels
        bleeds up and down the column (flagged SAT).
    bad_columns : `int` or sequence of `int`
        An int: that many bad columns at random positions; a sequence:
        their PARENT x.  Bad columns hold garbage (uniform in 0 to 5x the
        sky) and are flagged BAD.
    xy0 : `tuple` [`int`, `int`]
        PARENT coordinates of pixel ``[0, 0]``.
    edge_margin : `float`
        Random stars are also placed up to this many pixels outside the
        image so that their wings enter it; they are in the truth with
        ``in_image`` False.
    stars : table or mapping with ``x``, ``y``, ``flux``, optional
        Extra stars at given PARENT positions and fluxes (added after the
        random ones; pass ``density=0`` for these alone).
    stamp_size : `int`
        Odd side of ``psf_stamp`` and the default of `SimulatedField.psf_at`.
    psf_radius : `int`, optional
        Half-size of the PSF support; light beyond it is dropped and the
        PSF renormalised.  Default ``ceil(12 fwhm)``.
    psf_grid : `int`
        Number of PSF grid positions along each axis.
    oversampling : `int`
        Odd number of tabulated sub-pixel phases per pixel and axis.
    lam_over_diam : `float`, optional
        galsim only: diffraction scale of the optical PSF (pixels); default
        ``fwhm / 10`` (the atmosphere dominates, the aberrations still show).
    background : `numpy.ndarray`, optional
        Extra sky (counts per pixel, shape ``shape``) added to the flat sky
        and its gradient: nebulosity, a dust lane (negative where it dims the
        sky), a halo (`~lsst.meas.crowdsource.testing.backgrounds`).  It is
        part of the true ``sky``, of the variance and of the truth ``sky``
        and ``snr`` of each star.
    king : `tuple` [`float`, `float`, `float`], optional
        ``(core_radius, tidal_radius, floor)``: the random stars' surface
        density follows a King (1962) profile centred on the image,
        ``density`` at the centre falling to ``floor`` (stars per pixel, a
        uniform field population) beyond the tidal radius (pixels), as in
        a globular cluster seen against the Galactic field.  `None`: uniform
        at ``density``.

    Returns
    -------
    field : `SimulatedField`
        The image planes, the truth and the true PSF.

    Raises
    ------
    ValueError
        On a non-positive shape, negative density, non-positive fwhm, gain,
        sky, an unknown PSF family or an invalid S/N range.

    Notes
    -----
    Speed: the cost is dominated by drawing the star cores (a matrix
    product and a `numpy.bincount` per block of stars), the few halo FFTs
    and the Poisson draw; see the module docstring.
    """
    ny, nx = (int(shape[0]), int(shape[1]))
    if ny < 1 or nx < 1:
        raise ValueError(f"shape must be positive, got {shape}")
    if density < 0:
        raise ValueError(f"density must be >= 0, got {density}")
    if fwhm <= 0 or gain <= 0 or sky < 0 or read_noise < 0:
        raise ValueError("fwhm and gain must be > 0, sky and read_noise >= 0")
    if not 0 < snr_min < snr_max:
        raise ValueError(f"need 0 < snr_min < snr_max, got {snr_min}, {snr_max}")
    if stamp_size < 1 or stamp_size % 2 == 0:
        raise ValueError(f"stamp_size must be a positive odd integer, got {stamp_size}")
    if psf not in ("galsim", "moffat", "gaussian"):
        raise ValueError(f"psf must be 'galsim', 'moffat' or 'gaussian', got {psf!r}")
    if saturation is not None and saturation <= 0:
        raise ValueError(f"saturation must be positive or None, got {saturation}")
    if psf == "galsim":
        try:
            importlib.import_module("galsim")
        except ImportError:
            warnings.warn(
                "galsim is not installed: simulate_field falls back to psf='moffat'",
                UserWarning,
                stacklevel=2,
            )
            psf = "moffat"

    x0, y0 = int(xy0[0]), int(xy0[1])
    fwhm_max = fwhm * (1.0 + max(psf_variation, 0.0))
    core_radius = max(stamp_size // 2, 12, int(math.ceil(3.0 * fwhm_max)))
    if psf_radius is None:
        psf_radius = int(math.ceil(12.0 * fwhm))
    psf_radius = max(int(psf_radius), core_radius)
    if lam_over_diam is None:
        lam_over_diam = fwhm / 10.0

    ss_stars, ss_noise, ss_defects = np.random.SeedSequence(seed).spawn(3)
    rng_stars = np.random.Generator(np.random.PCG64(ss_stars))
    rng_noise = np.random.Generator(np.random.PCG64(ss_noise))
    rng_defects = np.random.Generator(np.random.PCG64(ss_defects))

    if isinstance(bad_columns, (int, np.integer)):
        ncols = min(int(bad_columns), nx)
        picks = rng_defects.choice(nx, size=ncols, replace=False) if ncols > 0 else np.empty(0, int)
        cols = [int(c) + x0 for c in np.sort(picks)]
    else:
        cols = [int(c) for c in bad_columns]
        for c in cols:
            if not 0 <= c - x0 < nx:
                raise ValueError(f"bad column x={c} is outside the image (x0={x0}, width {nx})")

    model, psf_info = _build_psf(
        psf,
        (ny, nx),
        (x0, y0),
        fwhm,
        psf_variation,
        coma,
        ellipticity,
        psf_grid,
        oversampling,
        core_radius,
        psf_radius,
        lam_over_diam,
    )
    xc = x0 + 0.5 * (nx - 1)
    yc = y0 + 0.5 * (ny - 1)
    psf_center = model.stamps(np.floor(xc + 0.5), np.floor(yc + 0.5), size=model.core_size)

    # Sky.
    jj = np.arange(ny, dtype=float)
    ii = np.arange(nx, dtype=float)
    fx = ii / (nx - 1) - 0.5 if nx > 1 else np.zeros(1)
    fy = jj / (ny - 1) - 0.5 if ny > 1 else np.zeros(1)
    gx, gy = sky_gradient

    if background is not None:
        background = np.asarray(background, dtype=float)
        if background.shape != (ny, nx):
            raise ValueError(f"background has shape {background.shape}; the image is {(ny, nx)}")
        if not np.all(np.isfinite(background)):
            raise ValueError("background must be finite")

    def sky_at(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        ux = np.clip((x - x0) / max(nx - 1, 1), 0, 1) - 0.5
        uy = np.clip((y - y0) / max(ny - 1, 1), 0, 1) - 0.5
        level = sky * (1.0 + gx * ux + gy * uy)
        if background is not None:
            ix = np.clip(np.round(x - x0).astype(int), 0, nx - 1)
            iy = np.clip(np.round(y - y0).astype(int), 0, ny - 1)
            level = level + background[iy, ix]
        return level

    # Luminosity function.
    f_lo = flux_for_snr(snr_min, psf_center, sky, gain, read_noise)
    f_hi = flux_for_snr(snr_max, psf_center, sky, gain, read_noise)
    area = (nx + 2 * edge_margin) * (ny + 2 * edge_margin)
    n_rand = int(rng_stars.poisson(density * area)) if density > 0 else 0
    xs = rng_stars.uniform(x0 - 0.5 - edge_margin, x0 + nx - 0.5 + edge_margin, n_rand)
    ys = rng_stars.uniform(y0 - 0.5 - edge_margin, y0 + ny - 0.5 + edge_margin, n_rand)
    if king is not None:
        keep = rng_stars.uniform(0.0, 1.0, n_rand) < king_fraction(
            xs - (x0 + (nx - 1) / 2), ys - (y0 + (ny - 1) / 2), density, *king
        )
        xs, ys = xs[keep], ys[keep]
        n_rand = len(xs)
    u = rng_stars.uniform(0.0, 1.0, n_rand)
    if luminosity_slope == 0:
        fl = f_lo * (f_hi / f_lo) ** u
    else:
        b = luminosity_slope
        fl = (f_lo**-b - u * (f_lo**-b - f_hi**-b)) ** (-1.0 / b)
    parts_x, parts_y, parts_f = [xs], [ys], [fl]
    if saturation is not None and n_saturated > 0:
        peak_frac = float(psf_center.max())
        nsat = int(n_saturated)
        sxs = rng_stars.uniform(x0 - 0.5, x0 + nx - 0.5, nsat)
        sys_ = rng_stars.uniform(y0 - 0.5, y0 + ny - 0.5, nsat)
        ratio = np.exp(rng_stars.uniform(math.log(2.0), math.log(50.0), nsat))
        parts_x.append(sxs)
        parts_y.append(sys_)
        parts_f.append(ratio * saturation / peak_frac)
    ex, ey, ef = _as_stars(stars)
    parts_x.append(ex)
    parts_y.append(ey)
    parts_f.append(ef)
    sx = np.concatenate(parts_x)
    sy = np.concatenate(parts_y)
    sf = np.concatenate(parts_f)

    # Render.
    star_sky = sky_at(sx, sy)
    stars_img, stats = model.render(
        sx, sy, sf, (ny, nx), (x0, y0), sky=star_sky, gain=gain, read_noise=read_noise
    )
    np.maximum(stars_img, 0.0, out=stars_img)  # FFT round-off can leave -1e-12
    sky_img = sky * (1.0 + gx * fx[None, :] + gy * fy[:, None])
    if background is not None:
        sky_img = sky_img + background
        if np.any(sky_img < 0):
            raise ValueError("sky + background must be >= 0 everywhere")
    expected = sky_img + stars_img
    sky_img = sky_img.astype(np.float32)
    stars_img = stars_img.astype(np.float32)

    # Noise.
    variance = (expected / gain + read_noise**2).astype(np.float32)
    expected *= gain
    electrons = rng_noise.poisson(expected)
    del expected
    image = electrons / gain
    del electrons
    if read_noise > 0:
        image += rng_noise.normal(0.0, read_noise, size=image.shape)
    mask = np.zeros((ny, nx), dtype=np.int32)
    sat_bit = 1 << MASK_PLANES["SAT"]
    bad_bit = 1 << MASK_PLANES["BAD"]

    # Saturation and bleed trails.
    if saturation is not None:
        over = image >= saturation
        if bleed and over.any():
            _bleed(image, over, saturation)
        image[over] = saturation
        mask[over] |= sat_bit

    # Bad columns.
    for c in cols:
        ci = c - x0
        image[:, ci] = rng_defects.uniform(0.0, 5.0 * max(sky, 1.0), ny)
        mask[:, ci] |= bad_bit

    # Truth.
    truth = Table()
    truth["id"] = np.arange(1, len(sx) + 1, dtype=np.int64)
    truth["x"] = sx
    truth["y"] = sy
    truth["flux"] = sf
    truth["snr"] = stats["snr"]
    truth["saturated"] = (
        (stats["peak"] + star_sky >= saturation)
        if saturation is not None
        else np.zeros(len(sx), dtype=bool)
    )
    truth["in_image"] = (
        (sx >= x0 - 0.5) & (sx < x0 + nx - 0.5) & (sy >= y0 - 0.5) & (sy < y0 + ny - 0.5)
    )
    truth["peak"] = stats["peak"]
    truth["sky"] = star_sky
    for name, unit, desc in (
        ("x", "pix", "true column, centre of light (PARENT)"),
        ("y", "pix", "true row, centre of light (PARENT)"),
        ("flux", "count", "true total flux"),
        ("snr", "", "isolated-star Cramér-Rao S/N"),
        ("saturated", "", "expected peak + sky >= saturation"),
        ("in_image", "", "centre inside the image"),
        ("peak", "count", "largest expected pixel value of the star alone"),
        ("sky", "count", "true sky at the star"),
    ):
        truth[name].unit = unit or None
        truth[name].description = desc

    meta: dict[str, Any] = {
        "shape": (ny, nx),
        "density": density,
        "seed": seed,
        "psf": psf,
        "fwhm": fwhm,
        "psf_variation": psf_variation,
        "coma": coma,
        "ellipticity": ellipticity,
        "sky": sky,
        "sky_gradient": tuple(sky_gradient),
        "gain": gain,
        "read_noise": read_noise,
        "snr_min": snr_min,
        "snr_max": snr_max,
        "luminosity_slope": luminosity_slope,
        "saturation": saturation,
        "n_saturated": n_saturated if saturation is not None else 0,
        "bleed": bleed,
        "bad_columns": cols,
        "xy0": (x0, y0),
        "edge_margin": edge_margin,
        "stamp_size": stamp_size,
        "psf_radius": psf_radius,
        "core_radius": core_radius,
        "psf_grid": psf_grid,
        "oversampling": oversampling,
        "lam_over_diam": lam_over_diam if psf == "galsim" else None,
        "flux_min": f_lo,
        "flux_max": f_hi,
        "n_stars": len(sx),
        "halo_rank": model.halo_rank,
        **psf_info,
    }
    truth.meta.update({k: v for k, v in meta.items() if np.isscalar(v) or v is None})
    psf_stamp = model.stamps(np.floor(xc + 0.5), np.floor(yc + 0.5), size=stamp_size)
    return SimulatedField(
        image=image.astype(np.float32),
        variance=variance,
        mask=mask,
        mask_planes=dict(MASK_PLANES),
        truth=truth,
        sky=sky_img,
        noiseless=stars_img,
        psf_stamp=psf_stamp,
        psf_model=model,
        xy0=(x0, y0),
        gain=float(gain),
        read_noise=float(read_noise),
        saturation=None if saturation is None else float(saturation),
        meta=meta,
    )


def clean_field(
    shape: tuple[int, int],
    density: float,
    seed: int,
    psf: str = "moffat",
    fwhm: float = 3.5,
    **kwargs,
) -> SimulatedField:
    """A field with nothing but stars: the same PSF everywhere (no variation, no
    ellipticity; the simulator's default coma), no saturation, bad columns or stars beyond
    the edges (`simulate_field`; ``kwargs`` override or add to those)."""
    settings = dict(
        psf_variation=0.0,
        ellipticity=0.0,
        saturation=None,
        bad_columns=0,
        edge_margin=0.0,
    )
    settings.update(kwargs)
    return simulate_field(shape, density=density, seed=seed, psf=psf, fwhm=fwhm, **settings)


def _bleed(image: np.ndarray, over: np.ndarray, saturation: float) -> None:
    """Spread the excess charge of saturated column runs up and down the column.

    Each vertical run of saturated pixels holds ``excess = sum(value -
    saturation)``; ``excess / saturation`` further pixels, split evenly
    above and below, are saturated (``over`` is extended in place).
    """
    labels, nlab = ndimage.label(over, structure=np.array([[0, 1, 0], [0, 1, 0], [0, 1, 0]]))
    if nlab == 0:
        return
    excess = ndimage.sum(image - saturation, labels, index=np.arange(1, nlab + 1))
    extra = np.floor(np.maximum(excess, 0.0) / saturation).astype(int)
    ny = image.shape[0]
    for lab, sl in enumerate(ndimage.find_objects(labels)):
        n = extra[lab]
        if sl is None or n <= 0:
            continue
        col = sl[1].start
        up = n // 2
        down = n - up
        over[max(sl[0].start - down, 0) : sl[0].start, col] = True
        over[sl[0].stop : min(sl[0].stop + up, ny), col] = True
