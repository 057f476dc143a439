"""Overlapping tiles: fit independently, stitch without duplicates or losses.

The image is cut into tile *cores* that partition it; each tile is fit on
its core plus a margin (``tile_overlap``) so that sources near a seam are
fit with all their neighbours.  A source belongs to the tile whose core
contains its final position.  Because two tiles fit a seam source
independently their positions can differ by a hair, so sources within a
small band just outside a core are kept when no tile claimed a source
there, and pairs claimed by two tiles are reduced to one.  Memory is
bounded by the tile size; tiles can run in parallel processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from .psf import PixelPsf

__all__ = ["Tile", "make_tiles", "home_tiles", "TiledPsf", "select_tile_sources"]


@dataclass(frozen=True)
class Tile:
    """One tile: its core and its extended (fitted) region, array coordinates.

    Ranges are half-open: ``[x0, x1)`` columns and ``[y0, y1)`` rows.
    """

    index: int
    core: tuple[int, int, int, int]
    outer: tuple[int, int, int, int]

    @property
    def label(self) -> str:
        x0, y0, x1, y1 = self.core
        return f"tile {self.index} [x {x0}:{x1}, y {y0}:{y1}] "

    def in_core(self, x: np.ndarray, y: np.ndarray, pad: float = 0.0) -> np.ndarray:
        """Positions (array coordinates) inside the core, grown by ``pad``."""
        return _inside(self.core, x, y, pad)

    def in_outer(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Positions (array coordinates) inside the fitted region."""
        return _inside(self.outer, x, y, 0.0)


def _inside(box: tuple[int, int, int, int], x: np.ndarray, y: np.ndarray, pad: float) -> np.ndarray:
    """Positions whose pixel is in the half-open ``box``, grown by ``pad``; NaN is outside."""
    x0, y0, x1, y1 = box
    return (
        (x >= x0 - 0.5 - pad) & (x < x1 - 0.5 + pad) & (y >= y0 - 0.5 - pad) & (y < y1 - 0.5 + pad)
    )


#: Cores are not split below this size (pixels) to bound their forced targets.
MIN_SPLIT_CORE = 128


def make_tiles(
    shape: tuple[int, int],
    size: int,
    overlap: int,
    targets: tuple[np.ndarray, np.ndarray] | None = None,
    max_targets: int = 0,
) -> list[Tile]:
    """Tiles of core size about ``size`` (evenly split) covering ``shape``.

    With ``targets`` (forced positions, array coordinates) and
    ``max_targets`` > 0, a core holding more targets than that is halved
    across its longer side, again and again, down to `MIN_SPLIT_CORE`
    pixels: the work and memory of a tile grow faster than its number of
    unknowns, and a deep forced list can put hundreds of thousands of them
    on one core.
    """
    ny, nx = shape
    nty = max(1, int(round(ny / size)))
    ntx = max(1, int(round(nx / size)))
    ey = np.linspace(0, ny, nty + 1).round().astype(int)
    ex = np.linspace(0, nx, ntx + 1).round().astype(int)
    cores = [
        (int(ex[i]), int(ey[j]), int(ex[i + 1]), int(ey[j + 1]))
        for j in range(nty)
        for i in range(ntx)
    ]
    if targets is not None and max_targets > 0:
        tx, ty = (np.asarray(v, float) for v in targets)
        cores = [c for core in cores for c in _split(core, tx, ty, max_targets)]
    tiles = []
    for core in cores:
        outer = (
            max(0, core[0] - overlap),
            max(0, core[1] - overlap),
            min(nx, core[2] + overlap),
            min(ny, core[3] + overlap),
        )
        tiles.append(Tile(len(tiles), core, outer))
    return tiles


def _split(
    core: tuple[int, int, int, int], x: np.ndarray, y: np.ndarray, max_targets: int
) -> list[tuple[int, int, int, int]]:
    """``core``, halved across its longer side until each part holds at most
    ``max_targets`` of the positions (or is `MIN_SPLIT_CORE` pixels across)."""
    inside = _inside(core, x, y, 0.0)
    x0, y0, x1, y1 = core
    if np.count_nonzero(inside) <= max_targets or max(x1 - x0, y1 - y0) < 2 * MIN_SPLIT_CORE:
        return [core]
    x, y = x[inside], y[inside]
    if x1 - x0 >= y1 - y0:
        m = (x0 + x1) // 2
        halves = [(x0, y0, m, y1), (m, y0, x1, y1)]
    else:
        m = (y0 + y1) // 2
        halves = [(x0, y0, x1, m), (x0, m, x1, y1)]
    return [c for h in halves for c in _split(h, x, y, max_targets)]


def home_tiles(tiles: list[Tile], x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """For each position (array coordinates), the tile whose core holds it; -1 for none.

    Positions off the image, and non-finite ones, have no home tile.
    """
    home = np.full(len(x), -1)
    for t in tiles:
        home[t.in_core(x, y)] = t.index
    return home


class TiledPsf:
    """The final PSF of a tiled fit: each tile's model on its core.

    Evaluate with `stamp` at any position (array coordinates of the full
    image plus the offset the models were built with).
    """

    def __init__(self, tiles: list[Tile], models: list[PixelPsf]):
        self.tiles = tiles
        self.models = models

    def model_at(self, x: float, y: float) -> PixelPsf:
        for t, m in zip(self.tiles, self.models):
            if t.in_core(np.array([x]), np.array([y]))[0]:
                return m
        # Outside every core (off the image): the nearest tile.
        d = [
            np.hypot(x - 0.5 * (t.core[0] + t.core[2]), y - 0.5 * (t.core[1] + t.core[3]))
            for t in self.tiles
        ]
        return self.models[int(np.argmin(d))]

    def stamp(self, x: float, y: float, size: int | None = None) -> np.ndarray:
        return self.model_at(x, y).stamp(x, y, size)

    def fwhm(self, x: float | None = None, y: float | None = None) -> float:
        if x is None:
            return float(np.median([m.fwhm() for m in self.models]))
        return self.model_at(x, y).fwhm(x, y)

    @property
    def size(self) -> int:
        return self.models[0].size


def select_tile_sources(
    tiles: list[Tile],
    xs: list[np.ndarray],
    ys: list[np.ndarray],
    forced: list[np.ndarray],
    forced_home: np.ndarray | None,
    tol: float,
) -> list[np.ndarray]:
    """Which sources of each tile's fit go into the stitched catalogue.

    Parameters
    ----------
    tiles : `list` [`Tile`]
    xs, ys : `list` [`numpy.ndarray`]
        Final positions (full-image array coordinates) from each tile's fit.
    forced : `list` [`numpy.ndarray`]
        Per tile, the index of each source in the forced input list (-1 for
        sources the tile found itself).
    forced_home : `numpy.ndarray`, optional
        For each forced input, the tile whose core holds its input position.
    tol : `float`
        Seam tolerance (pixels).

    Returns
    -------
    keep : `list` [`numpy.ndarray` [`bool`]]
    """
    keep = []
    band = []
    for t, x, y, f in zip(tiles, xs, ys, forced):
        free = f < 0
        k = free & t.in_core(x, y)
        if forced_home is not None and len(forced_home) and len(f):
            k |= (~free) & (forced_home[np.maximum(f, 0)] == t.index)
        keep.append(k)
        band.append(free & ~k & t.in_core(x, y, pad=tol))
    if len(tiles) == 1:
        return keep
    # Claimed by two tiles: keep the copy deepest inside its own core.
    pts, owner, pos, depth = [], [], [], []
    for ti, (t, x, y, k) in enumerate(zip(tiles, xs, ys, keep)):
        idx = np.nonzero(k & (forced[ti] < 0))[0]
        x0, y0, x1, y1 = t.core
        d = np.minimum.reduce(
            [x[idx] - (x0 - 0.5), (x1 - 0.5) - x[idx], y[idx] - (y0 - 0.5), (y1 - 0.5) - y[idx]]
        )
        pts.append(np.column_stack([x[idx], y[idx]]))
        owner.append(np.full(idx.size, ti))
        pos.append(idx)
        depth.append(d)
    pts = np.concatenate(pts)
    owner = np.concatenate(owner)
    pos = np.concatenate(pos)
    depth = np.concatenate(depth)
    if len(pts) > 1:
        pairs = cKDTree(pts).query_pairs(tol, output_type="ndarray")
        for a, b in pairs:
            if owner[a] == owner[b]:
                continue
            loser = a if depth[a] < depth[b] else b
            keep[owner[loser]][pos[loser]] = False
    # Just outside a core and no other tile claimed a source there: keep it.
    tree = cKDTree(pts) if len(pts) else None
    for ti, (x, y, bnd) in enumerate(zip(xs, ys, band)):
        for i in np.nonzero(bnd)[0]:
            near = [] if tree is None else tree.query_ball_point([x[i], y[i]], tol)
            if not any(owner[j] != ti for j in near):
                keep[ti][i] = True
    return keep
