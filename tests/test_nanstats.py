"""The engine's vectorised NaN-aware median against numpy's."""

import warnings

import numpy as np
import pytest

from lsst.meas.crowdsource.engine.nanstats import nanmedian_rows


@pytest.mark.parametrize("shape", [(500, 37), (4, 5, 8), (6, 1), (7, 2), (3, 0)])
def test_nanmedian_rows_is_numpys_nanmedian_along_the_last_axis(shape):
    rng = np.random.default_rng(3)
    a = rng.normal(size=shape)
    a[rng.random(shape) < 0.4] = np.nan
    if a.size:
        a.reshape(-1, shape[-1])[0] = np.nan  # an all-NaN row
        a.reshape(-1, shape[-1])[-1, :1] = np.inf  # infinities count as values
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        expected = np.nanmedian(a, axis=-1) if shape[-1] else np.full(shape[:-1], np.nan)
    got = nanmedian_rows(a)
    assert got.shape == shape[:-1]
    np.testing.assert_array_equal(got, expected)


def test_nanmedian_rows_even_and_odd_counts():
    a = np.array([[1.0, 5.0, np.nan, 3.0], [4.0, np.nan, 2.0, np.nan], [np.nan] * 4])
    np.testing.assert_array_equal(nanmedian_rows(a), [3.0, 3.0, np.nan])
