"""The engine's input: the pixel planes of an image, carrying their frame.

An `ImageData` holds everything the fit reads from an image: the image,
its inverse-variance weight, boolean planes (bad, saturated, and the planes
reported per source) and ``xy0``, the position of pixel ``[0, 0]`` in the
frame of the image it belongs to.  `fit_image` builds one, once, from the
caller's arrays (`ImageData.from_arrays`), with ``xy0`` in PARENT
coordinates; the tiles it fits are `ImageData.cutout` s of it, whose
``xy0`` is their offset in its array.  The engine works in the array frame
of the full image (the PSF model, the tiles and their stitching live there).

Contract
--------
- Positions are pixel centres at integers, ``x`` the column, ``y`` the row.
- `PixelFrame.to_array` and `PixelFrame.to_parent` are the only
  conversions between an array and the frame around it; `fit_image` calls
  them once on the way in (forced positions) and once on the way out (the
  catalogue), and once per tile in each direction.  A position is never
  shifted by hand.
- ``image`` is finite everywhere (0 where the input was not); ``weight`` is
  0 on every unusable pixel (bad, saturated, non-finite image, non-finite
  or non-positive variance) and positive elsewhere.
- Mask planes are boolean arrays of the image's shape, end to end.
- `ImageData.cutout` returns views: no pixel is copied.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError, NoUsablePixelsError

__all__ = ["ImageData", "PixelFrame", "pixel_values"]

Coordinate = float | np.ndarray
"""A position coordinate: one value or an array of them."""


@dataclass(frozen=True)
class PixelFrame:
    """Where an array's pixel ``[0, 0]`` sits in the frame around it.

    Parameters
    ----------
    x0, y0 : `int`
        Column and row of the array's first pixel in the outer frame.
    """

    x0: int = 0
    y0: int = 0

    def to_array(self, x: Coordinate, y: Coordinate) -> tuple[Coordinate, Coordinate]:
        """Outer-frame positions ``(x, y)`` in the array's pixel coordinates."""
        return x - self.x0, y - self.y0

    def to_parent(self, x: Coordinate, y: Coordinate) -> tuple[Coordinate, Coordinate]:
        """Array positions ``(x, y)`` in the outer frame's coordinates."""
        return x + self.x0, y + self.y0


def _checked_plane(
    name: str, plane: np.ndarray, shape: tuple[int, ...], dtype: type | None = None
) -> np.ndarray:
    arr = np.asarray(plane, dtype=dtype) if dtype else np.asarray(plane)
    if arr.shape != shape:
        raise InputError(f"The {name} plane has shape {arr.shape} but the image has shape {shape}.")
    return arr


def _checked_image(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 2:
        raise InputError(f"The image must be a 2-D array; got {image.ndim} dimension(s).")
    if image.size == 0:
        raise InputError("The image is empty (zero pixels).")
    if not np.issubdtype(image.dtype, np.number) or np.iscomplexobj(image):
        raise InputError(f"The image must hold real numbers; got dtype {image.dtype}.")
    return image


def _weight_plane(
    image: np.ndarray, variance: np.ndarray | None, weight: np.ndarray | None
) -> np.ndarray:
    """Inverse variance, 0 where the variance or weight is unusable."""
    if (variance is None) == (weight is None):
        raise InputError("Give exactly one of variance or weight (inverse variance).")
    with np.errstate(divide="ignore", invalid="ignore"):
        if variance is not None:
            var = _checked_plane("variance", variance, image.shape).astype(np.float64)
            return np.where(np.isfinite(var) & (var > 0), 1.0 / var, 0.0)
        w = _checked_plane("weight", weight, image.shape).astype(np.float64)
        return np.where(np.isfinite(w) & (w > 0), w, 0.0)


@dataclass
class ImageData:
    """Pixel planes of one image (or one cutout of it) and their frame.

    Build with `from_arrays`, which validates the caller's arrays; cut with
    `cutout`.

    Attributes
    ----------
    image : `numpy.ndarray`
        The image, sky included, finite everywhere.
    weight : `numpy.ndarray`
        Inverse variance; 0 on every unusable pixel.
    bad : `numpy.ndarray` [`bool`]
        Pixels the caller flagged as bad (their weight is 0).
    saturated : `numpy.ndarray` [`bool`]
        Saturated pixels (their weight is 0; their stars are fit from the
        wings).
    flags : `dict` [`str`, `numpy.ndarray` [`bool`]]
        Planes reported per source (``mask_<name>_any``/``_center``).
    frame : `PixelFrame`
        Where pixel ``[0, 0]`` sits in the frame around this array: PARENT
        for the image given to `fit_image`, that image's array for a tile.
    sky_regions : `numpy.ndarray` [`int`] or `None`
        Parts of the image that each get a sky of their own (labels, 0 in
        none), e.g. the two sides of an amplifier step; `None`: one sky.
    """

    image: np.ndarray
    weight: np.ndarray
    bad: np.ndarray
    saturated: np.ndarray
    flags: dict[str, np.ndarray] = field(default_factory=dict)
    frame: PixelFrame = PixelFrame()
    sky_regions: np.ndarray | None = None

    @classmethod
    def from_arrays(
        cls,
        image: np.ndarray,
        variance: np.ndarray | None = None,
        weight: np.ndarray | None = None,
        bad: np.ndarray | None = None,
        saturated: np.ndarray | None = None,
        flags: Mapping[str, np.ndarray] | None = None,
        xy0: tuple[int, int] = (0, 0),
    ) -> ImageData:
        """Validate the caller's planes and build the weight.

        Unusable pixels are not errors: pixels whose image value is NaN or
        infinite, whose variance is NaN, infinite, zero or negative (or
        weight NaN, infinite or negative), or that are flagged ``bad`` or
        ``saturated`` get zero weight, and their image values are never used.

        Parameters
        ----------
        image : `numpy.ndarray`
            2-D image of real numbers.
        variance, weight : `numpy.ndarray`, optional
            Exactly one: per-pixel variance or inverse variance.
        bad, saturated : `numpy.ndarray` [`bool`], optional
            Pixels to ignore; saturated pixels.
        flags : `dict` [`str`, `numpy.ndarray` [`bool`]], optional
            Planes reported per source.
        xy0 : `tuple` [`int`, `int`]
            PARENT position of ``image[0, 0]``.

        Raises
        ------
        InputError
            Not a 2-D image of real numbers, mismatched shapes, neither or
            both of variance and weight, or no usable pixel at all.
        """
        image = _checked_image(image)
        w = _weight_plane(image, variance, weight)
        image = image.astype(np.float64, copy=False)
        w[~np.isfinite(image)] = 0.0
        bad = (
            np.zeros(image.shape, bool)
            if bad is None
            else _checked_plane("bad mask", bad, image.shape, bool)
        )
        w[bad] = 0.0
        sat = (
            np.zeros(image.shape, bool)
            if saturated is None
            else _checked_plane("saturated mask", saturated, image.shape, bool)
        )
        w[sat] = 0.0
        if not (w > 0).any():
            raise NoUsablePixelsError(
                f"No usable pixels: all {image.size} pixels are masked, saturated, "
                "non-finite, or have non-positive variance."
            )
        planes = {}
        for name, plane in (flags or {}).items():
            if np.shape(plane) != image.shape:
                raise InputError(
                    f"Mask plane {name!r} has shape {np.shape(plane)} but the image "
                    f"has shape {image.shape}."
                )
            planes[name] = np.asarray(plane, bool)
        image = np.where(np.isfinite(image), image, 0.0)
        return cls(image, w, bad, sat, planes, PixelFrame(int(xy0[0]), int(xy0[1])))

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, columns)`` of the planes."""
        return self.image.shape

    @property
    def xy0(self) -> tuple[int, int]:
        """Position of pixel ``[0, 0]`` in the frame around this array."""
        return (self.frame.x0, self.frame.y0)

    def to_array(self, x: Coordinate, y: Coordinate) -> tuple[Coordinate, Coordinate]:
        """Positions in the frame around this array, in its pixel coordinates."""
        return self.frame.to_array(x, y)

    def to_parent(self, x: Coordinate, y: Coordinate) -> tuple[Coordinate, Coordinate]:
        """Positions in this array, in the coordinates of the frame around it."""
        return self.frame.to_parent(x, y)

    def cutout(self, bbox: tuple[int, int, int, int]) -> ImageData:
        """The part ``[x0, x1) x [y0, y1)`` (this array's pixels), as views.

        The cutout's frame is this array: its ``xy0`` is ``(x0, y0)``.
        """
        x0, y0, x1, y1 = bbox
        sub = (slice(y0, y1), slice(x0, x1))
        return ImageData(
            self.image[sub],
            self.weight[sub],
            self.bad[sub],
            self.saturated[sub],
            {name: plane[sub] for name, plane in self.flags.items()},
            PixelFrame(int(x0), int(y0)),
            None if self.sky_regions is None else self.sky_regions[sub],
        )


def pixel_values(plane: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Values of ``plane`` at the pixels nearest to ``(x, y)``, clamped to the array."""
    ny, nx = plane.shape
    ix = np.clip(np.round(x).astype(int), 0, nx - 1)
    iy = np.clip(np.round(y).astype(int), 0, ny - 1)
    return plane[iy, ix]
