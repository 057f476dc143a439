"""How the tasks report inputs they cannot measure, in the pipeline's terms.

In `runQuantum`, an exposure with nothing to measure (every pixel masked,
non-finite or without a positive variance: the engine's
`~lsst.meas.crowdsource.engine.NoUsablePixelsError`) becomes
`lsst.pipe.base.NoWorkFound`, so that pipetask skips that quantum and runs
the others; any other `~lsst.meas.crowdsource.engine.InputError` (an
exposure whose PSF, planes or reference positions cannot be fit) becomes a
`CrowdsourceInputError`, an `lsst.pipe.base.AlgorithmError` carrying the
problem in its metadata.  ``run()`` itself raises the engine's exceptions
unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import lsst.pipe.base as pipeBase

from .engine import InputError, NoUsablePixelsError

__all__ = ["CrowdsourceInputError", "pipeline_errors"]


class CrowdsourceInputError(pipeBase.AlgorithmError):
    """The exposure cannot be fit: the message and metadata say why.

    Parameters
    ----------
    message : `str`
        What is wrong (the engine's message).
    task : `str`
        The task's label or name.
    data_id : `dict`, optional
        The quantum's data ID.
    """

    def __init__(self, message: str, task: str, data_id: dict | None = None):
        super().__init__(message)
        self._metadata = {"problem": message, "task": task}
        for key, value in (data_id or {}).items():
            if isinstance(value, (str, int, float, bool)):
                self._metadata[f"dataId_{key}"] = value

    @property
    def metadata(self) -> dict:
        return self._metadata


@contextlib.contextmanager
def pipeline_errors(task: str, data_id: dict | None = None) -> Iterator[None]:
    """Turn the engine's input errors into the pipeline's exceptions (see the module doc).

    Parameters
    ----------
    task : `str`
        The task's label or name, for the metadata.
    data_id : `dict`, optional
        The quantum's data ID, for the message and the metadata.
    """
    where = "" if not data_id else " (" + ", ".join(f"{k}={v}" for k, v in data_id.items()) + ")"
    try:
        yield
    except NoUsablePixelsError as err:
        raise pipeBase.NoWorkFound(f"{err}{where}") from err
    except InputError as err:
        raise CrowdsourceInputError(f"{err}{where}", task, data_id) from err
