"""Engine input errors become the pipeline's exceptions in runQuantum."""

import lsst.pipe.base as pipeBase
import pytest

from lsst.meas.crowdsource.engine import InputError, NoUsablePixelsError, fit_image
from lsst.meas.crowdsource.errors import CrowdsourceInputError, pipeline_errors


def test_all_masked_image_raises_no_usable_pixels():
    import numpy as np

    with pytest.raises(NoUsablePixelsError, match="No usable pixels"):
        fit_image(np.ones((20, 20)), np.ones((20, 20)), bad=np.ones((20, 20), bool))


def test_no_usable_pixels_is_no_work():
    with pytest.raises(pipeBase.NoWorkFound, match=r"nothing here \(visit=5, detector=188\)"):
        with pipeline_errors("crowdsourcePhotometry", {"visit": 5, "detector": 188}):
            raise NoUsablePixelsError("nothing here")


def test_other_input_errors_are_algorithm_errors_with_metadata():
    with pytest.raises(CrowdsourceInputError) as info:
        with pipeline_errors("crowdsourcePhotometry", {"instrument": "LSSTCam", "visit": 5}):
            raise InputError("PSF stamp contains NaN or inf")
    err = info.value
    assert isinstance(err, pipeBase.AlgorithmError)
    assert err.metadata["problem"].startswith("PSF stamp contains NaN")
    assert err.metadata["task"] == "crowdsourcePhotometry"
    assert err.metadata["dataId_instrument"] == "LSSTCam" and err.metadata["dataId_visit"] == 5
    assert isinstance(err.__cause__, InputError)


def test_other_exceptions_pass_through():
    with pytest.raises(ZeroDivisionError):
        with pipeline_errors("t"):
            raise ZeroDivisionError
