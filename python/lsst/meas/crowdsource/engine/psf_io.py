"""Serialising the final PSF to plain data (dicts of lists) and back.

`psf_to_dict` writes a fitted `PixelPsf` or `TiledPsf` with the PARENT
position of the image's pixel ``[0, 0]``; `psf_from_dict` reads it back as
a `ParentFramePsf`, which evaluates the model at PARENT positions.
"""

from __future__ import annotations

import numpy as np

from .image import PixelFrame
from .psf import PixelPsf
from .tiling import Tile, TiledPsf

__all__ = ["psf_to_dict", "psf_from_dict", "ParentFramePsf"]


def _pixel_to_dict(p: PixelPsf) -> dict:
    return {
        "order": int(p.order),
        "center": [float(c) for c in p.center],
        "scale": float(p.scale),
        "core": int(p.core),
        "coeffs": p.coeffs.tolist(),
    }


def _pixel_from_dict(d: dict) -> PixelPsf:
    return PixelPsf(
        np.asarray(d["coeffs"], float),
        int(d["order"]),
        tuple(d["center"]),
        float(d["scale"]),
        int(d["core"]),
    )


def psf_to_dict(psf: PixelPsf | TiledPsf, xy0: tuple[int, int] = (0, 0)) -> dict:
    """Plain-data form of a fitted PSF (YAML/JSON friendly)."""
    out = {"format": "meas_crowdsource.psf/1", "xy0": [int(xy0[0]), int(xy0[1])]}
    if isinstance(psf, TiledPsf):
        out["tiles"] = [
            {"core": list(t.core), "outer": list(t.outer), "psf": _pixel_to_dict(m)}
            for t, m in zip(psf.tiles, psf.models)
        ]
    else:
        out["tiles"] = [{"core": None, "outer": None, "psf": _pixel_to_dict(psf)}]
    return out


class ParentFramePsf:
    """A fitted PSF (array coordinates) evaluated at PARENT pixel positions.

    Parameters
    ----------
    model : `PixelPsf` or `TiledPsf`
        The PSF in the array coordinates of the fitted image.
    xy0 : `tuple` [`int`, `int`]
        PARENT position of the image's pixel ``[0, 0]``.
    """

    def __init__(self, model: PixelPsf | TiledPsf, xy0: tuple[int, int]):
        self.model = model
        self.frame = PixelFrame(int(xy0[0]), int(xy0[1]))

    @property
    def xy0(self) -> tuple[int, int]:
        """PARENT position of the image's pixel ``[0, 0]``."""
        return (self.frame.x0, self.frame.y0)

    def stamp(self, x: float, y: float, size: int | None = None) -> np.ndarray:
        """Unit-sum PSF at PARENT ``(x, y)``, centred on the stamp's middle pixel."""
        return self.model.stamp(*self.frame.to_array(x, y), size)

    def fwhm(self, x: float | None = None, y: float | None = None) -> float:
        """FWHM at PARENT ``(x, y)`` (`stamp_fwhm`); at the model centre when not given."""
        if x is None:
            return self.model.fwhm()
        return self.model.fwhm(*self.frame.to_array(x, y))


def psf_from_dict(d: dict) -> ParentFramePsf:
    """Inverse of `psf_to_dict`."""
    if d.get("format") != "meas_crowdsource.psf/1":
        raise ValueError(f"Not a meas_crowdsource PSF: format {d.get('format')!r}.")
    tiles = d["tiles"]
    if len(tiles) == 1 and tiles[0]["core"] is None:
        model = _pixel_from_dict(tiles[0]["psf"])
    else:
        model = TiledPsf(
            [Tile(i, tuple(t["core"]), tuple(t["outer"])) for i, t in enumerate(tiles)],
            [_pixel_from_dict(t["psf"]) for t in tiles],
        )
    return ParentFramePsf(model, tuple(d["xy0"]))
