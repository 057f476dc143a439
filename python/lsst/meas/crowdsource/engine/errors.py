"""Exceptions raised by the engine."""

__all__ = ["InputError", "NoUsablePixelsError"]


class InputError(ValueError):
    """The input image, variance, mask, PSF or positions cannot be fit.

    The message names the problem (shape mismatch, no usable pixels,
    invalid PSF, ...) so that a caller can act on it.
    """


class NoUsablePixelsError(InputError):
    """Every pixel is masked, saturated, non-finite or has no positive variance.

    Nothing is wrong with the call: there is nothing to measure (a pipeline
    reports this as no work, not as a failure).
    """
