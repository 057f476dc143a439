"""The sources a fit carries from pass to pass, and rows for positions not fit.

`Sources` is the state of the pass loop that outlives a pass: per source its
position, its fit coefficients (flux and the two position-derivative terms),
the pass it was found in, its row in the caller's list of forced positions
(-1 for a source found in the image) and the position it started from.
Sources are appended (`Sources.add`), moved (`Sources.move`) and dropped
(`Sources.keep`, `Sources.cull`, `Sources.merge_close`); nothing else
reorders them, so a fit is reproducible to the bit.

`ForcedPositions` are the positions a caller asks to be measured, with their
row in the caller's list.

`pad_rows` is the one way to add catalogue rows for positions that were not
fit (off the image, no usable pixel): NaN for floats, -1 for integers,
`False` for flags, except the values given.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial import cKDTree

__all__ = ["ForcedPositions", "Sources", "pad_rows"]

_PER_SOURCE = (
    "x",
    "y",
    "flux",
    "gx",
    "gy",
    "pass_found",
    "forced_index",
    "x_start",
    "y_start",
    "last_step",
)


@dataclass
class ForcedPositions:
    """Positions to measure, and the row of each in the caller's list.

    Attributes
    ----------
    x, y : `numpy.ndarray`
        Positions (pixel coordinates of the array they are given for).
    index : `numpy.ndarray` [`int`]
        Row of each position in the caller's list.
    """

    x: np.ndarray
    y: np.ndarray
    index: np.ndarray

    def __len__(self) -> int:
        return len(self.x)

    def subset(self, rows: np.ndarray) -> ForcedPositions:
        """The positions at ``rows`` (indices into this list)."""
        return ForcedPositions(self.x[rows], self.y[rows], self.index[rows])


@dataclass
class Sources:
    """Per-source state carried between the passes of the fit.

    Attributes
    ----------
    x, y : `numpy.ndarray`
        Current positions (pixel coordinates of the fitted array).
    flux, gx, gy : `numpy.ndarray`
        Last fit: flux and the coefficients of the PSF's x and y derivatives
        (relative to the current positions; zero after a move).
    pass_found : `numpy.ndarray` [`int16`]
        Pass in which the source was added (-1: a forced position).
    forced_index : `numpy.ndarray` [`int64`]
        Row in the caller's list of forced positions, -1 for a source found
        in the image.
    x_start, y_start : `numpy.ndarray`
        Where the source was added.
    last_step : `numpy.ndarray`
        Length of the source's last position step (pixels; infinite before
        its first, and after it absorbed a merged neighbour).
    """

    x: np.ndarray = field(default_factory=lambda: np.zeros(0))
    y: np.ndarray = field(default_factory=lambda: np.zeros(0))
    flux: np.ndarray = field(default_factory=lambda: np.zeros(0))
    gx: np.ndarray = field(default_factory=lambda: np.zeros(0))
    gy: np.ndarray = field(default_factory=lambda: np.zeros(0))
    pass_found: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int16))
    forced_index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    x_start: np.ndarray = field(default_factory=lambda: np.zeros(0))
    y_start: np.ndarray = field(default_factory=lambda: np.zeros(0))
    last_step: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __len__(self) -> int:
        return len(self.x)

    @property
    def forced(self) -> np.ndarray:
        """Sources at forced positions (never culled)."""
        return self.forced_index >= 0

    def add(
        self,
        x: np.ndarray,
        y: np.ndarray,
        flux: np.ndarray,
        pass_found: int,
        forced_index: np.ndarray | None = None,
    ) -> None:
        """Append sources at ``(x, y)`` with starting fluxes ``flux``."""
        n = len(x)
        self.x = np.concatenate([self.x, x])
        self.y = np.concatenate([self.y, y])
        self.flux = np.concatenate([self.flux, flux])
        self.gx = np.concatenate([self.gx, np.zeros(n)])
        self.gy = np.concatenate([self.gy, np.zeros(n)])
        self.pass_found = np.concatenate([self.pass_found, np.full(n, pass_found, np.int16)])
        fi = np.full(n, -1, np.int64) if forced_index is None else forced_index
        self.forced_index = np.concatenate([self.forced_index, fi])
        self.x_start = np.concatenate([self.x_start, x])
        self.y_start = np.concatenate([self.y_start, y])
        self.last_step = np.concatenate([self.last_step, np.full(n, np.inf)])

    def add_forced(self, forced: ForcedPositions) -> None:
        """Append forced positions (found in "pass" -1, starting flux 0)."""
        self.add(forced.x, forced.y, np.zeros(len(forced)), -1, forced.index)

    def keep(self, mask: np.ndarray) -> None:
        """Keep only the sources selected by ``mask`` (boolean or indices)."""
        for name in _PER_SOURCE:
            setattr(self, name, getattr(self, name)[mask])

    def restrain_forced(
        self, sx: np.ndarray, sy: np.ndarray, refine: float
    ) -> tuple[np.ndarray, np.ndarray]:
        """Position steps with forced sources held within ``refine`` of their start.

        ``refine == 0`` holds forced sources fixed.  ``sx``, ``sy`` may be
        modified in place.
        """
        forced = self.forced
        if refine > 0:
            nx_ = self.x + sx
            ny_ = self.y + sy
            dx, dy = nx_ - self.x_start, ny_ - self.y_start
            r = np.hypot(dx, dy)
            scale = np.where(r > refine, refine / np.maximum(r, 1e-12), 1.0)
            sx = np.where(forced, self.x_start + dx * scale - self.x, sx)
            sy = np.where(forced, self.y_start + dy * scale - self.y, sy)
        else:
            sx[forced] = 0.0
            sy[forced] = 0.0
        return sx, sy

    def move(self, sx: np.ndarray, sy: np.ndarray, shape: tuple[int, int]) -> None:
        """Step every source by ``(sx, sy)``, staying on the array of ``shape``.

        The derivative coefficients were relative to the old positions and
        are reset.
        """
        ny, nx = shape
        self.x = np.clip(self.x + sx, -0.5, nx - 0.5)
        self.y = np.clip(self.y + sy, -0.5, ny - 0.5)
        self.gx[:] = 0.0
        self.gy[:] = 0.0
        self.last_step = np.hypot(sx, sy)

    def cull(self, snr: np.ndarray, min_snr: float) -> int:
        """Drop free sources whose S/N is below ``min_snr`` (or NaN); return how many."""
        with np.errstate(invalid="ignore"):
            weak = ~self.forced & ~(snr >= min_snr)
        self.keep(~weak)
        return int(weak.sum())

    def merge_close(self, radius: float, forced_radius: float = 0.0) -> int:
        """Merge sources that converged onto each other; return how many were dropped.

        Free sources closer than ``radius``: the fainter joins the brighter.
        A free source within ``forced_radius`` of a forced position joins
        the forced source: otherwise the two share the star's light
        arbitrarily and the forced flux comes out wrong.  Forced sources are
        never merged with each other.
        """
        reach = max(radius, forced_radius)
        if len(self) < 2 or reach <= 0:
            return 0
        pairs = cKDTree(np.column_stack([self.x, self.y])).query_pairs(reach, output_type="ndarray")
        if len(pairs) == 0:
            return 0
        dist = np.hypot(
            self.x[pairs[:, 0]] - self.x[pairs[:, 1]], self.y[pairs[:, 0]] - self.y[pairs[:, 1]]
        )
        forced = self.forced
        with_forced = forced[pairs[:, 0]] | forced[pairs[:, 1]]
        pairs = pairs[np.where(with_forced, dist <= forced_radius, dist <= radius)]
        if len(pairs) == 0:
            return 0
        drop = np.zeros(len(self), dtype=bool)
        # Process brightest pairs first; a source already dropped is skipped.
        order = np.argsort(-np.maximum(self.flux[pairs[:, 0]], self.flux[pairs[:, 1]]))
        for i, j in pairs[order]:
            if drop[i] or drop[j]:
                continue
            if forced[i] and forced[j]:
                continue
            if forced[j] or (not forced[i] and self.flux[j] > self.flux[i]):
                i, j = j, i
            # i survives.
            self.flux[i] += max(self.flux[j], 0.0)
            self.last_step[i] = np.inf
            drop[j] = True
        self.keep(~drop)
        return int(drop.sum())


def pad_rows(columns: dict[str, np.ndarray], n: int, **values) -> dict[str, np.ndarray]:
    """``columns`` with ``n`` rows appended for positions that were not fit.

    Parameters
    ----------
    columns : `dict` [`str`, `numpy.ndarray`]
        Catalogue columns (all of one length).
    n : `int`
        Number of rows to append.
    **values
        Column values of the new rows (length ``n``, cast to the column's
        dtype).  Every other column gets NaN (floats), -1 (integers) or
        `False` (flags).

    Returns
    -------
    columns : `dict` [`str`, `numpy.ndarray`]
        New arrays, in the same column order.
    """
    out = {}
    for name, arr in columns.items():
        if name in values:
            rows = np.asarray(values[name], dtype=arr.dtype)
        else:
            kind = arr.dtype.kind
            fill = np.nan if kind == "f" else (-1 if kind == "i" else False)
            rows = np.full(n, fill, dtype=arr.dtype)
        out[name] = np.concatenate([arr, rows])
    return out
