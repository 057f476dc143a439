"""FFT correlations and convolutions (`engine.correlate`) and the wing image built on them."""

import numpy as np

from lsst.meas.crowdsource.engine.correlate import Correlator
from lsst.meas.crowdsource.engine.psf import PixelPsf, moffat_stamp
from lsst.meas.crowdsource.engine.scene import wing_image


def _direct(array: np.ndarray, kernel: np.ndarray, flip: bool) -> np.ndarray:
    """Correlation (or, with ``flip``, convolution) with zeros beyond the edges, by loops."""
    k = kernel[::-1, ::-1] if flip else kernel
    h = k.shape[0] // 2
    padded = np.pad(array, h)
    out = np.zeros_like(array)
    for dy in range(k.shape[0]):
        for dx in range(k.shape[1]):
            out += k[dy, dx] * padded[dy : dy + array.shape[0], dx : dx + array.shape[1]]
    return out


def test_correlation_and_convolution_match_direct_sums():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(2, 37, 52))
    k1, k2 = rng.normal(size=(2, 7, 7))
    fft = Correlator(a.shape, k1.shape)
    fa, fb = fft.transform(a), fft.transform(b)
    scale = np.abs(_direct(a, k1, False)).max()
    np.testing.assert_allclose(
        fft.correlate(fa, fft.kernel_transform(k1)), _direct(a, k1, False), atol=1e-12 * scale
    )
    # A sum of convolutions through one inverse transform.
    both = fft.inverse(fa * fft.convolution_transform(k1) + fb * fft.convolution_transform(k2))
    np.testing.assert_allclose(
        both, _direct(a, k1, True) + _direct(b, k2, True), atol=1e-12 * scale
    )


def test_wing_image_is_the_light_outside_each_stamp():
    """Each source's full PSF, less its fitting stamp, at its rounded position."""
    psf = PixelPsf.from_stamp(moffat_stamp(41, 3.5, beta=2.5))
    shape = (60, 70)
    x = np.array([10.2, 35.0, 66.7, 30.4])
    y = np.array([5.0, 30.3, 50.1, 31.0])
    flux = np.array([1000.0, 5000.0, 300.0, np.nan])  # the NaN flux adds nothing
    sizes = [9, 15]
    size_index = np.array([0, 1, 0, 1])
    got = wing_image(x, y, flux, size_index, sizes, psf, shape)

    full = psf.stamp(*psf.center)
    c = full.shape[0] // 2
    want = np.zeros((shape[0] + 2 * c, shape[1] + 2 * c))
    for xi, yi, fi, k in zip(x, y, flux, size_index):
        if not np.isfinite(fi):
            continue
        wing = full.copy()
        h = sizes[k] // 2
        wing[c - h : c + h + 1, c - h : c + h + 1] = 0.0
        iy, ix = int(round(yi)), int(round(xi))
        want[iy : iy + full.shape[0], ix : ix + full.shape[1]] += fi * wing
    want = want[c:-c, c:-c]
    assert want.max() > 0.1  # the wings are there to compare
    np.testing.assert_allclose(got, want, atol=1e-10 * want.max())
