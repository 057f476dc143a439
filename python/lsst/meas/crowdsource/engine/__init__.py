"""The crowded-field fit: numpy/scipy only, nothing from ``lsst``.

Entry point: `fit_image`.  See `FitParams` for every tunable parameter
and `ENGINE_COLUMNS` for what is measured per source.
"""

from .columns import ENGINE_COLUMNS, empty_columns
from .errors import InputError
from .fit_image import FitResult, fit_image
from .params import FitParams
from .psf import PixelPsf, gaussian_stamp, moffat_stamp

__all__ = [
    "ENGINE_COLUMNS",
    "FitParams",
    "FitResult",
    "InputError",
    "PixelPsf",
    "empty_columns",
    "fit_image",
    "gaussian_stamp",
    "moffat_stamp",
]
