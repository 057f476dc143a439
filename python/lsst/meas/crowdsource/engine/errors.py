"""Exceptions raised by the engine."""

__all__ = ["InputError"]


class InputError(ValueError):
    """The input image, variance, mask, PSF or positions cannot be fit.

    The message names the problem (shape mismatch, no usable pixels,
    invalid PSF, ...) so that a caller can act on it.
    """
