"""Finding new sources in the residual image.

Peaks are local maxima of the PSF-convolved significance of the residual
(image - sky - model of the known sources).  The rules follow crowdsource's
(see the seed README): bright peaks come from single-pixel S/N and are
refused at the edge of a mask; faint peaks come from the matched filter;
both must stand out against the residuals of the sources already modelled;
no new peak lands next to a known source or in the wings of a saturated
star; the first pass does not split blends; saturated cores get one
source each in the first pass.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from .correlate import Correlator
from .params import FitParams

__all__ = [
    "MatchedFilter",
    "Peaks",
    "find_peaks",
    "saturated_cores",
    "saturated_sources",
    "saturated_wings",
]


@dataclass
class MatchedFilter:
    """PSF-matched filtering of a weighted image.

    ``significance`` is the S/N of the PSF flux of a point source centred
    on each pixel, ``flux`` that flux; ``coverage`` the PSF^2-weighted
    fraction of the filter that sees good pixels.
    """

    significance: np.ndarray
    flux: np.ndarray
    coverage: np.ndarray | None

    @classmethod
    def from_sums(
        cls, numerator: np.ndarray, denominator: np.ndarray, coverage: np.ndarray | None = None
    ) -> MatchedFilter:
        """From ``numerator`` = (data * weight) correlated with the kernel and
        ``denominator`` = weight correlated with its square."""
        den = np.maximum(denominator, 1e-300)
        with np.errstate(invalid="ignore", divide="ignore"):
            sig = np.where(denominator > 0, numerator / np.sqrt(den), 0.0)
            flux = np.where(denominator > 0, numerator / den, 0.0)
        return cls(sig, flux, coverage)

    @classmethod
    def compute(
        cls,
        data: np.ndarray,
        weight: np.ndarray,
        kernel: np.ndarray,
        with_coverage: bool = True,
    ) -> MatchedFilter:
        """The matched filter of ``data`` (inverse variance ``weight``) with ``kernel``."""
        bank = _FilterBank(weight, kernel)
        return bank.matched(bank.fft.transform(data * weight), with_coverage)


class _FilterBank:
    """The transforms a peak search shares: the weight's, the PSF kernel's, its
    square's, and those of the compensated kernel (`_stands_out`)."""

    def __init__(self, weight: np.ndarray, kernel: np.ndarray):
        self.weight = weight
        self.kernel = kernel
        self.fft = Correlator(weight.shape, kernel.shape)
        self.f_weight = self.fft.transform(weight)
        self.f_kernel = self.fft.kernel_transform(kernel)
        self.f_kernel2 = self.fft.kernel_transform(kernel * kernel)
        self.denominator = self.fft.correlate(self.f_weight, self.f_kernel2)

    def matched(self, f_data_weight: np.ndarray, with_coverage: bool = False) -> MatchedFilter:
        """The matched filter of the data whose (data * weight) transform is given."""
        coverage = None
        if with_coverage:
            good = self.fft.transform((self.weight > 0).astype(float))
            coverage = self.fft.correlate(good, self.f_kernel2) / float((self.kernel**2).sum())
        num = self.fft.correlate(f_data_weight, self.f_kernel)
        return MatchedFilter.from_sums(num, self.denominator, coverage)

    def compensated(self, f_data_weight: np.ndarray) -> np.ndarray:
        """Significance in the matched filter of the zero-sum kernel (kernel - its mean)."""
        comp = self.kernel - self.kernel.mean()
        num = self.fft.correlate(f_data_weight, self.fft.kernel_transform(comp))
        den = self.fft.correlate(self.f_weight, self.fft.kernel_transform(comp * comp))
        return MatchedFilter.from_sums(num, den).significance


@dataclass
class Peaks:
    """New source candidates, in pixel coordinates of the fitted array."""

    x: np.ndarray
    y: np.ndarray
    flux: np.ndarray
    significance: np.ndarray

    @classmethod
    def empty(cls) -> Peaks:
        z = np.zeros(0)
        return cls(z, z.copy(), z.copy(), z.copy())

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, index: np.ndarray) -> Peaks:
        """The candidates at ``index``."""
        return Peaks(self.x[index], self.y[index], self.flux[index], self.significance[index])

    def concatenate(self, other: Peaks) -> Peaks:
        """These candidates followed by ``other``'s."""
        return Peaks(
            *(
                np.concatenate([a, b])
                for a, b in zip(
                    (self.x, self.y, self.flux, self.significance),
                    (other.x, other.y, other.flux, other.significance),
                )
            )
        )


def saturated_cores(saturated: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Centre, core radius and size of each connected saturated region.

    The centre is that of the region's deepest part (the pixels farthest
    from any unsaturated pixel), so that a bleed trail, even one cut off by
    the edge of the image on one side, does not pull it off the star; the
    core radius is that largest distance.

    Returns
    -------
    yc, xc, radius, n_pixels : `numpy.ndarray`
        One entry per region.
    """
    labels, n = ndimage.label(saturated)
    if n == 0:
        z = np.zeros(0)
        return z, z.copy(), z.copy(), z.copy()
    index = np.arange(1, n + 1)
    depth = ndimage.distance_transform_edt(saturated)
    radius = np.asarray(ndimage.maximum(depth, labels, index), dtype=float).reshape(-1)
    deepest = saturated & (depth >= np.concatenate([[np.inf], radius])[labels] - 0.5)
    centre = np.array(ndimage.center_of_mass(deepest, labels, index)).reshape(-1, 2)
    n_pixels = np.asarray(ndimage.sum_labels(saturated, labels, index), dtype=float)
    return centre[:, 0], centre[:, 1], radius, n_pixels.reshape(-1)


def saturated_sources(saturated: np.ndarray, flux_image: np.ndarray, min_pixels: int = 1) -> Peaks:
    """One source at the centre of each connected saturated region (`saturated_cores`).

    The flux guess is the matched-filter flux from the unsaturated wings
    (saturated pixels carry zero weight in ``flux_image``).
    """
    yc, xc, _, n_pixels = saturated_cores(saturated)
    keep = n_pixels >= min_pixels
    yc, xc = yc[keep], xc[keep]
    iy = np.clip(np.round(yc).astype(int), 0, saturated.shape[0] - 1)
    ix = np.clip(np.round(xc).astype(int), 0, saturated.shape[1] - 1)
    flux = np.maximum(flux_image[iy, ix], 0.0)
    # Saturated stars are at least as bright as what saturates a pixel;
    # the fit sorts out the real value from the wings.
    return Peaks(xc, yc, flux, np.full(len(xc), np.inf))


def saturated_wings(saturated: np.ndarray, margin: float) -> np.ndarray:
    """Discs around saturated stars in which no new source is added.

    Each connected saturated region gets a disc of radius (core radius +
    ``margin``) around the centre of its core (`saturated_cores`), so a
    bleed trail is not excluded beyond that: on a 1024x1024 field,
    excluding everything within ``margin`` of any saturated pixel lost 3%
    of the unsaturated S/N > 100 stars, most of them beside trails.
    """
    out = np.zeros(saturated.shape, dtype=bool)
    ny, nx = saturated.shape
    for yc, xc, core in zip(*saturated_cores(saturated)[:3]):
        r = core + margin
        y0, y1 = max(int(np.floor(yc - r)), 0), min(int(np.ceil(yc + r)) + 1, ny)
        x0, x1 = max(int(np.floor(xc - r)), 0), min(int(np.ceil(xc + r)) + 1, nx)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        out[y0:y1, x0:x1] |= (xx - xc) ** 2 + (yy - yc) ** 2 <= r * r
    return out


def find_peaks(
    resid: np.ndarray,
    weight: np.ndarray,
    saturated: np.ndarray,
    model: np.ndarray,
    kernel: np.ndarray,
    known_x: np.ndarray,
    known_y: np.ndarray,
    params: FitParams,
    first_pass: bool,
    fwhm: float,
    wings_of_saturated: np.ndarray | None = None,
) -> Peaks:
    """New source candidates in ``resid``.

    Parameters
    ----------
    resid : `numpy.ndarray`
        Image minus sky minus the model of the known sources.
    weight : `numpy.ndarray`
        Inverse variance, zero for unusable pixels.
    saturated : `numpy.ndarray` [`bool`]
        Saturated pixels.
    model : `numpy.ndarray`
        Model image of the known sources (no sky).
    kernel : `numpy.ndarray`
        PSF stamp (odd, unit sum) for the matched filter.
    known_x, known_y : `numpy.ndarray`
        Positions of the sources already in the model.
    params : `FitParams`
        Thresholds and factors.
    first_pass : `bool`
        In the first pass peaks closer than about a FWHM are not split.
    fwhm : `float`
        PSF FWHM in pixels.
    wings_of_saturated : `numpy.ndarray` [`bool`], optional
        Where no new source may be added (`saturated_wings`; computed from
        ``saturated`` when not given).
    """
    bank = _FilterBank(weight, kernel)
    f_resid = bank.fft.transform(resid * weight)
    mf = bank.matched(f_resid, with_coverage=True)
    sig = mf.significance
    thr = params.threshold
    pix_sn = resid * np.sqrt(weight)

    sep = params.first_pass_separation or fwhm
    size = max(3, 2 * int(np.ceil(sep)) + 1) if first_pass else 3
    is_max = sig == ndimage.maximum_filter(sig, size=size, mode="constant", cval=-np.inf)
    faint = _one_per_tie(is_max & (sig > thr))
    bright_thr = thr / params.bright_factor
    pix_max = pix_sn == ndimage.maximum_filter(pix_sn, size=size, mode="constant", cval=-np.inf)
    bright = _one_per_tie(pix_max & (pix_sn > bright_thr)) & (sig > thr)

    masked = (weight <= 0) | saturated
    edge_of_mask = ndimage.binary_dilation(masked, iterations=1) & ~masked
    bright &= ~edge_of_mask & ~masked
    # A faint peak whose peak pixel is bright is handled as a bright peak,
    # unless it sits on the edge of a mask, where bright peaks are refused
    # (a star next to a bad column or bleed trail is still found this way).
    faint &= ~(pix_sn > bright_thr) | edge_of_mask
    faint &= ~saturated
    cand = bright | faint
    if params.saturated_exclusion > 0 and saturated.any():
        # The wings of a saturated star: its own light, not new sources.
        if wings_of_saturated is None:
            wings_of_saturated = saturated_wings(saturated, params.saturated_exclusion * fwhm)
        cand &= ~wings_of_saturated
    cand &= mf.coverage > 0.3
    cand &= _stands_out(bank, f_resid, model, mf, pix_sn, params)

    iy, ix = np.nonzero(cand)
    if iy.size == 0:
        return Peaks.empty()
    x = ix.astype(float)
    y = iy.astype(float)
    if len(known_x):
        dist, _ = cKDTree(np.column_stack([known_x, known_y])).query(np.column_stack([x, y]))
        keep = dist > params.min_separation
        x, y, iy, ix = x[keep], y[keep], iy[keep], ix[keep]
    flux = np.maximum(mf.flux[iy, ix], 0.0)
    return Peaks(x, y, flux, sig[iy, ix])


def _one_per_tie(is_max: np.ndarray) -> np.ndarray:
    """``is_max`` with one pixel (the first in raster order) per group of touching maxima.

    Touching maxima have equal values: a flat top (a plateau, a clipped
    core) would otherwise give a source on every one of its pixels.
    """
    labels, n = ndimage.label(is_max, structure=np.ones((3, 3), bool))
    if n == int(np.count_nonzero(is_max)):
        return is_max
    flat = labels.ravel()
    where = np.flatnonzero(flat)
    _, first = np.unique(flat[where], return_index=True)
    out = np.zeros(is_max.size, bool)
    out[where[first]] = True
    return out.reshape(is_max.shape)


def _stands_out(
    bank: _FilterBank,
    f_resid: np.ndarray,
    model: np.ndarray,
    mf: MatchedFilter,
    pix_sn: np.ndarray,
    params: FitParams,
) -> np.ndarray | bool:
    """Pixels whose residual stands out against the model and the local background.

    Against the residuals of the sources already modelled (significance,
    matched-filter flux and pixel S/N compared with the model's), and in a
    matched filter with a local background (a compensated kernel).  `True`
    when every test is off.  ``f_resid``: the transform of residual * weight.
    """
    ok: np.ndarray | bool = True
    if (
        params.model_significance_factor > 0
        or params.model_flux_factor > 0
        or params.model_pixel_factor > 0
    ):
        mmf = bank.matched(bank.fft.transform(model * bank.weight))
        msig = mmf.significance
        ok = mf.significance > params.model_significance_factor * msig
        # Compared as matched-filter fluxes rather than single pixels, so that
        # a peak on a masked pixel (a star centred on a bad column) is judged
        # by its unmasked surroundings.
        ok &= mf.flux > params.model_flux_factor * mmf.flux
        if params.model_pixel_factor > 0:
            ok &= pix_sn > params.model_pixel_factor * msig
    if params.local_background_factor > 0:
        lbs = bank.compensated(f_resid)
        ok = ok & (lbs > params.threshold * params.local_background_factor)
    return ok
