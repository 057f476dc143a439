"""Unique source IDs for the catalogues."""

from __future__ import annotations

import numpy as np

__all__ = ["make_ids"]


def make_ids(n: int, visit: int | None, detector: int | None, config) -> np.ndarray:
    """Source IDs: ``((visit * maxDetectors + detector) << sourceIdBits) + i + 1``.

    Without a data ID the IDs are 1..n.

    Raises
    ------
    ValueError
        If the IDs do not fit in 63 bits or a detector has too many sources.
    """
    index = np.arange(1, n + 1, dtype=np.int64)
    if n >= 2**config.sourceIdBits:
        raise ValueError(f"{n} sources do not fit in sourceIdBits={config.sourceIdBits}.")
    if visit is None or detector is None:
        return index
    if not 0 <= detector < config.maxDetectors:
        raise ValueError(f"Detector {detector} is not below maxDetectors={config.maxDetectors}.")
    exposure = int(visit) * config.maxDetectors + int(detector)
    if exposure.bit_length() + config.sourceIdBits > 63:
        raise ValueError(
            f"Visit {visit} and detector {detector} do not fit in a 64-bit "
            f"source ID with sourceIdBits={config.sourceIdBits}; lower it or "
            "maxDetectors."
        )
    return (np.int64(exposure) << np.int64(config.sourceIdBits)) + index
