"""Pixels no PSF can fit: unmasked plateaus and steps.

Detectors produce regions that no sum of PSFs on a smooth sky can model: a
dead or runaway amplifier that reads one value everywhere, an amplifier
whose offset jumps, a hot column, a bleed trail nobody masked.  Fitting
them as stars is worse than slow: peak finding turns an edge or a flat top
into thousands of sources, each with a large stamp (a 128x128 image whose
left half read 1e9 gave 4300 sources with 59x59 stamps in the first pass,
and its normal equations were nearly dense).  Such regions are recognised
here, before the fit, by two shapes that photon noise never takes:

- a **plateau**: a connected region of at least ``plateau_min_pixels``
  pixels where every 3x3 neighbourhood spans less than
  ``plateau_tolerance`` times the pixel sigma (the variance says the pixels
  should scatter; they do not);
- a **step**: a straight edge along a row or a column, at least
  ``step_min_length`` pixels long, across which neighbouring pixels differ
  by more than ``step_threshold`` sigma, all with the same sign.  Stars,
  even saturated ones, do not make such edges: their profile changes
  direction within a few FWHM, and a curved nebular edge does not stay on
  one column.

Both are given zero weight, a step with a margin of ``step_margin`` pixels
on each side (where the sky model cannot follow the jump), and along the
whole row or column when it covers at least half of it; the catalogue
flags sources whose PSF core touches them (``flag_unfittable``).  A small
plateau that is a flat top (nothing around it higher) is the clipped core
of a bright star whose saturation was not flagged: it is handled as
saturated instead (one source, fit from its wings).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .params import FitParams

__all__ = ["NOISE_RATIO_WARN", "Defects", "find_defects", "noise_ratio"]

NOISE_RATIO_WARN = 3.0
"""`noise_ratio` beyond this factor (either way) gets a warning."""


@dataclass
class Defects:
    """Plateaus and steps found in an image.

    Attributes
    ----------
    plateau : `numpy.ndarray` [`bool`]
        Pixels of plateaus that are not `clipped` cores.
    clipped : `numpy.ndarray` [`bool`]
        Pixels of small flat tops (at most ``plateau_max_saturated`` pixels,
        nothing around them higher): unflagged saturated cores, handled as
        saturated pixels.
    step : `numpy.ndarray` [`bool`]
        Pixels on or within the margin of a step.
    n_plateaus, n_steps : `int`
        Number of plateaus (connected regions) and of step edges.
    """

    plateau: np.ndarray
    clipped: np.ndarray
    step: np.ndarray
    n_plateaus: int
    n_steps: int

    @property
    def mask(self) -> np.ndarray:
        """Every pixel to leave out of the fit as bad (not the `clipped` cores)."""
        return self.plateau | self.step

    def sky_regions(self) -> np.ndarray | None:
        """The parts of the image the steps separate, labelled from 1 (`None`: one part).

        Each gets a sky of its own (`~lsst.meas.crowdsource.engine.sky.sky_under_model`):
        a sky box straddling a step would smear its jump over the box.
        """
        if not self.n_steps:
            return None
        labels, n = ndimage.label(~self.step)
        return labels if n > 1 else None

    def __bool__(self) -> bool:
        return bool(self.n_plateaus or self.n_steps)

    def describe(self) -> str:
        """One line for the log: what was found and how many pixels it covers."""
        parts = []
        if self.n_plateaus:
            text = f"{self.n_plateaus} plateau(s) ({int(self.plateau.sum())} pixels"
            if self.clipped.any():
                text += f"; {int(self.clipped.sum())} in clipped cores, taken as saturated"
            parts.append(text + ")")
        if self.n_steps:
            extra = int((self.step & ~self.plateau).sum())
            parts.append(f"{self.n_steps} step edge(s) ({extra} pixels with their margins)")
        return " and ".join(parts) if parts else "nothing"


def find_defects(image: np.ndarray, weight: np.ndarray, params: FitParams) -> Defects:
    """Plateaus and steps of ``image`` among its usable pixels (``weight > 0``).

    Parameters
    ----------
    image : `numpy.ndarray`
        The image (finite where ``weight > 0``).
    weight : `numpy.ndarray`
        Inverse variance, 0 on unusable pixels.
    params : `FitParams`
        ``plateau_*`` and ``step_*`` settings.
    """
    good = weight > 0
    sigma = np.where(good, 1.0 / np.sqrt(np.where(good, weight, 1.0)), np.inf)
    plateau, clipped, n_plateaus = _plateaus(image, good, sigma, params)
    step = np.zeros(image.shape, bool)
    n_steps = 0
    for axis in (0, 1):
        edge, n = _steps(image, good, sigma, params, axis)
        step |= edge
        n_steps += n
    return Defects(plateau, clipped, step & good & ~clipped, n_plateaus, n_steps)


def _plateaus(
    image: np.ndarray, good: np.ndarray, sigma: np.ndarray, params: FitParams
) -> tuple[np.ndarray, np.ndarray, int]:
    """Dead plateaus, clipped cores (small flat tops), and how many plateaus in all."""
    if params.plateau_min_pixels <= 0:
        none = np.zeros(image.shape, bool)
        return none, none.copy(), 0
    hi = ndimage.maximum_filter(np.where(good, image, -np.inf), size=3, mode="nearest")
    lo = ndimage.minimum_filter(np.where(good, image, np.inf), size=3, mode="nearest")
    with np.errstate(invalid="ignore"):
        flat = good & ((hi - lo) <= params.plateau_tolerance * sigma)
    # The 3x3 windows of flat centres cover the plateau out to its border.
    flat = ndimage.binary_dilation(flat, structure=np.ones((3, 3), bool)) & good
    labels, n = ndimage.label(flat, structure=np.ones((3, 3), bool))
    none = np.zeros(image.shape, bool)
    if n == 0:
        return none, none.copy(), 0
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    big = sizes >= params.plateau_min_pixels
    big[0] = False
    # A small flat top (nothing around it is higher) is the clipped core of a
    # star whose saturation nobody flagged: saturated, fit from its wings.
    index = np.arange(1, n + 1)
    ring = ndimage.binary_dilation(flat, structure=np.ones((3, 3), bool)) & ~flat & good
    ring_labels = ndimage.grey_dilation(labels, size=3) * ring
    top = np.asarray(ndimage.minimum(image, labels, index))
    around = np.asarray(ndimage.maximum(image, ring_labels, index))
    core = np.zeros(n + 1, bool)
    core[1:] = big[1:] & (sizes[1:] <= params.plateau_max_saturated) & (top >= around)
    dead = big & ~core
    return dead[labels], core[labels], int(big.sum())


def _steps(
    image: np.ndarray, good: np.ndarray, sigma: np.ndarray, params: FitParams, axis: int
) -> tuple[np.ndarray, int]:
    """Edges between neighbouring rows (``axis=0``) or columns (``axis=1``)."""
    out = np.zeros(image.shape, bool)
    if params.step_min_length <= 0 or image.shape[axis] < 2:
        return out, 0
    # Work on columns: transpose so that the jump is across axis 1.
    img, ok, sig = (a.T if axis == 0 else a for a in (image, good, sigma))
    pair = ok[:, 1:] & ok[:, :-1]
    with np.errstate(invalid="ignore"):
        jump = np.where(pair, (img[:, 1:] - img[:, :-1]), 0.0) / np.hypot(sig[:, 1:], sig[:, :-1])
    along = np.array([[0, 1, 0], [0, 1, 0], [0, 1, 0]], bool)  # runs down one column boundary
    found = np.zeros(jump.shape, bool)
    n_steps = 0
    for strong in (jump > params.step_threshold, jump < -params.step_threshold):
        labels, n = ndimage.label(strong, structure=along)
        if n == 0:
            continue
        lengths = np.bincount(labels.ravel(), minlength=n + 1)
        long = lengths >= params.step_min_length
        long[0] = False
        found |= long[labels]
        n_steps += int(long.sum())
    if n_steps:
        # An edge along most of a boundary (an amplifier's) is taken along all of it:
        # stars and masked pixels on the edge break its runs, and through such gaps
        # the two sides would share one sky.
        found[:, found.mean(axis=0) >= 0.5] = True
        # Both pixels of each pair, then the margin on either side.
        band = np.zeros(img.shape, bool)
        band[:, 1:] |= found
        band[:, :-1] |= found
        if params.step_margin > 0:
            width = 2 * params.step_margin + 1
            band = ndimage.binary_dilation(band, structure=np.ones((1, width), bool))
        out = band.T if axis == 0 else band
    return out, n_steps


def noise_ratio(image: np.ndarray, weight: np.ndarray) -> float:
    """How many times the image's pixel-to-pixel scatter exceeds what its variance says.

    The robust (MAD) width of the mixed second difference of each 2x2
    block of usable pixels (``a - b - c + d``: top-left minus top-right
    minus bottom-left plus bottom-right), divided by the sigma the variance
    gives it: 1 for a right variance, 10 for a variance 100 times too
    small.  The mixed difference cancels any gradient in x and in y, so
    crowding barely moves it: on the 1024x1024 benchmark fields (galsim
    PSF, FWHM 3.5 px, right variance) it is 1.08 / 1.20 / 1.41 / 1.80 at
    0.02 / 0.05 / 0.1 / 0.2 stars/px, where the difference of adjacent
    pixels used before gave 1.21 / 1.55 / 2.22 / 3.66 and warned of a wrong
    variance at 0.2.  NaN with fewer than 100 usable blocks.
    """
    good = weight > 0
    block = good[1:, 1:] & good[1:, :-1] & good[:-1, 1:] & good[:-1, :-1]
    if np.count_nonzero(block) < 100:
        return float("nan")
    var = 1.0 / np.where(good, weight, 1.0)
    sig = np.sqrt(var[1:, 1:] + var[1:, :-1] + var[:-1, 1:] + var[:-1, :-1])[block]
    d = (image[:-1, :-1] - image[:-1, 1:] - image[1:, :-1] + image[1:, 1:])[block] / sig
    return float(1.4826 * np.median(np.abs(d - np.median(d))))
