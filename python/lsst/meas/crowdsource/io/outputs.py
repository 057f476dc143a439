"""Task outputs in the configured storage classes: the afw catalogue and the images.

`task_outputs` is the one way out of the package for both tasks; it imports
``lsst.afw`` (through `.afw`) only when an afw output is asked for.
"""

from __future__ import annotations

import numpy as np

__all__ = ["afw_available", "afw_catalog", "image_output", "task_outputs"]


def afw_available() -> bool:
    """Whether lsst.afw can be imported here."""
    try:
        import lsst.afw.table  # noqa: F401
    except ImportError:
        return False
    return True


def afw_catalog(table, columns, config, log):
    """The afw SourceCatalog of ``table``, or `None` when it is not wanted or afw is absent."""
    if not config.doWriteAfwCatalog:
        return None
    if not afw_available():
        log.info("lsst.afw cannot be imported here: no SourceCatalog is made.")
        return None
    from .afw import source_catalog_from_table

    return source_catalog_from_table(table, columns)


def image_output(array: np.ndarray, xy0: tuple[int, int], storage_class: str):
    """An image output in the configured storage class (numpy where afw is not available)."""
    if storage_class == "NumpyArray" or not afw_available():
        return np.asarray(array, dtype=np.float32)
    from .afw import numpy_to_afw_image

    return numpy_to_afw_image(array, xy0)


def task_outputs(table, columns, images: dict[str, np.ndarray], xy0: tuple[int, int], config, log):
    """Everything a task writes, in the configured storage classes.

    Parameters
    ----------
    table : `astropy.table.Table`
        The catalogue (`lsst.meas.crowdsource.catalog.build_table`).
    columns : `list` [`lsst.meas.crowdsource.catalog.Column`]
        Its column definitions (for the afw schema).
    images : `dict` [`str`, `numpy.ndarray`]
        Image outputs by name (e.g. ``model``, ``background``), in the
        pixel grid of the exposure.
    xy0 : `tuple` [`int`, `int`]
        PARENT coordinates of the images' first pixel.
    config : `lsst.meas.crowdsource.config.CrowdsourceBaseConfig`
        Gives ``doWriteAfwCatalog`` and ``imageStorageClass``.
    log : `logging.Logger`
        Where a missing afw is reported.

    Returns
    -------
    outputs : `dict`
        ``afwCatalog`` (`lsst.afw.table.SourceCatalog` or `None`) and one
        entry per image.
    """
    out = {"afwCatalog": afw_catalog(table, columns, config, log)}
    for name, array in images.items():
        out[name] = image_output(array, xy0, config.imageStorageClass)
    return out
