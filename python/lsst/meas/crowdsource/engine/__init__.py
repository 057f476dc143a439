"""The crowded-field fit: numpy/scipy only, nothing from ``lsst``.

Entry point: `fit_image`.  See `FitParams` for every tunable parameter
and `ENGINE_COLUMNS` for what is measured per source.

Modules, from the outside in:

- ``fit_image``: validate the inputs, fit the tiles, stitch the result.
- ``image``: `ImageData`, the pixel planes with their frame, and the one
  PARENT <-> array conversion (`PixelFrame`).
- ``tiling``: overlapping tiles, their stitching, the tiled PSF.
- ``loop``: the pass loop on one array, a short loop of named steps on a
  `TileState`.
- ``sources``: the source list the loop carries, forced positions, rows
  for positions that were not fit.
- ``sky``, ``peaks``, ``linear``, ``measure``: the steps' algorithms
  (sky under the model, new peaks, the simultaneous fit, measurements on
  neighbour-subtracted stamps).
- ``scene``: PSF stamps of all sources, stamp sizes, model images.
- ``psf``, ``psf_fit``, ``psf_io``: the PSF model, fitting it to the
  image (PSF stars, wings), serialising it.
- ``interpolation``, ``params``, ``columns``, ``errors``: the Lanczos
  shift, the parameters, the output columns, the exception.
"""

from .columns import ENGINE_COLUMNS, empty_columns
from .errors import InputError, NoUsablePixelsError
from .fit_image import FitResult, fit_image
from .params import FitParams
from .psf import PixelPsf, gaussian_stamp, moffat_stamp

__all__ = [
    "ENGINE_COLUMNS",
    "FitParams",
    "FitResult",
    "InputError",
    "NoUsablePixelsError",
    "PixelPsf",
    "empty_columns",
    "fit_image",
    "gaussian_stamp",
    "moffat_stamp",
]
