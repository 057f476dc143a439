"""Structured backgrounds for simulated fields: nebulosity, dust lanes, halos, scattered light.

The Galactic plane and bulge are full of diffuse light that is neither flat
nor smooth on the scale of a sky box: filamentary nebulosity, clouds with
sharp edges, dark lanes that dim everything behind them, the halo of a very
bright star just off the detector and scattered light.  `structured_background`
makes each kind as an additive image (counts per pixel) to pass to
`~lsst.meas.crowdsource.testing.simulate.simulate_field` as ``background=``,
with its amplitude given in units of the sky noise so fields of different
depths are comparable.  The simulated field then stores the true sky,
background included, in ``field.sky`` for scoring.

All random structure comes from `gaussian_random_field`: a Gaussian field
with a power-law spectrum band-limited to the wavelengths given, so the
scales of the structure are under control.
"""

from __future__ import annotations

__all__ = [
    "BACKGROUND_KINDS",
    "gaussian_random_field",
    "sky_noise",
    "structured_background",
]

import math

import numpy as np

BACKGROUND_KINDS = ("flat", "filaments", "clipped", "lane", "nebula", "halo", "gradient")
"""Kinds of background `structured_background` makes.

- ``flat``: none (zeros), the reference.
- ``filaments``: bright filaments, the ridges of a power-law random field.
- ``clipped``: clouds with sharp edges: a random field clipped at a level,
  its inside still structured.
- ``lane``: a dark lane across the image that dims the sky behind it (to 30 %
  at its centre), with edges a few pixels wide.
- ``nebula``: filaments plus clipped clouds plus the lane, the hardest case
  (the "Galactic-plane-like" field of issue 11).
- ``halo``: the halo of a very bright star centred off the image.
- ``gradient``: a scattered-light gradient, linear plus quadratic.
"""


def sky_noise(sky: float, gain: float = 1.0, read_noise: float = 5.0) -> float:
    """Noise of one pixel of sky (counts): ``sqrt(sky / gain + read_noise**2)``."""
    return math.sqrt(sky / gain + read_noise**2)


def gaussian_random_field(
    shape: tuple[int, int],
    rng: np.random.Generator,
    *,
    slope: float = 3.0,
    scales: tuple[float, float] = (20.0, 80.0),
) -> np.ndarray:
    """A zero-mean, unit-rms Gaussian random field with a band-limited power-law spectrum.

    Parameters
    ----------
    shape : `tuple` [`int`, `int`]
        Image shape (rows, columns).
    rng : `numpy.random.Generator`
        Random numbers.
    slope : `float`
        Power spectrum ``P(k) ∝ k**-slope`` (3: much more power on large
        scales, like interstellar clouds).
    scales : `tuple` [`float`, `float`]
        Shortest and longest wavelengths (pixels) kept; the band edges are
        tapered over a factor of 1.3 in wavelength so there is no ringing.

    Returns
    -------
    field : `numpy.ndarray`, shape ``shape``
    """
    ny, nx = shape
    noise = rng.standard_normal((ny, nx))
    ky = np.fft.fftfreq(ny)[:, None]
    kx = np.fft.rfftfreq(nx)[None, :]
    k = np.hypot(kx, ky)
    lo, hi = 1.0 / scales[1], 1.0 / scales[0]
    with np.errstate(divide="ignore"):
        amp = np.where(k > 0, k ** (-slope / 2.0), 0.0)
        # Smooth band: 1 inside [lo, hi], cosine tapers over a factor 1.3 outside.
        t_lo = np.clip(np.log(k / (lo / 1.3)) / np.log(1.3), 0.0, 1.0) if lo > 0 else 1.0
        t_hi = np.clip(np.log((hi * 1.3) / np.where(k > 0, k, 1e-30)) / np.log(1.3), 0.0, 1.0)
    taper = np.sin(0.5 * np.pi * t_lo) ** 2 * np.sin(0.5 * np.pi * t_hi) ** 2
    field = np.fft.irfft2(np.fft.rfft2(noise) * amp * taper, s=(ny, nx))
    field -= field.mean()
    rms = field.std()
    return field / rms if rms > 0 else field


def _filaments(shape, rng, scales) -> np.ndarray:
    """Ridges of a random field: bright where it crosses zero, 5-10 px (1-2 PSF FWHM) wide."""
    g = gaussian_random_field(shape, rng, slope=2.5, scales=scales)
    ridge = np.exp(-((g / 0.8) ** 2))  # where |g| < 0.8 of its rms
    modulation = 0.5 + 0.5 * gaussian_random_field(shape, rng, slope=3.0, scales=(60.0, 400.0))
    return ridge * np.clip(modulation, 0.0, None)


def _clipped(shape, rng, scales) -> np.ndarray:
    """Clouds with sharp edges (about 1 px wide): a field above a level, structured inside."""
    g = gaussian_random_field(shape, rng, slope=3.0, scales=scales)
    # The field changes by ~0.15 rms per pixel: a logistic of width 0.15 is a ~1 px edge.
    inside = 1.0 / (1.0 + np.exp(-(g - 0.5) / 0.15))
    texture = 0.6 + 0.4 * gaussian_random_field(shape, rng, slope=2.0, scales=(8.0, 40.0))
    return inside * np.clip(texture, 0.0, None)


def _lane_transmission(shape, rng, depth: float = 0.7, width: float = 25.0) -> np.ndarray:
    """Transmission (1 outside, ``1 - depth`` at the centre) of a wavy dark lane."""
    ny, nx = shape
    yy, xx = np.mgrid[0:ny, 0:nx].astype(float)
    angle = rng.uniform(0.2, 0.5) * np.pi
    # Distance from a line through the centre, with a gentle wave along it.
    along = (xx - nx / 2) * np.cos(angle) + (yy - ny / 2) * np.sin(angle)
    across = -(xx - nx / 2) * np.sin(angle) + (yy - ny / 2) * np.cos(angle)
    across = across - 0.08 * max(nx, ny) * np.sin(2 * np.pi * along / max(nx, ny))
    # Flat bottom with edges ~4 px wide.
    profile = 1.0 / (1.0 + np.exp((np.abs(across) - width / 2) / 2.0))
    return 1.0 - depth * profile


def structured_background(
    shape: tuple[int, int],
    kind: str,
    *,
    amplitude: float = 20.0,
    sky: float = 1000.0,
    gain: float = 1.0,
    read_noise: float = 5.0,
    seed: int = 0,
    scales: tuple[float, float] = (20.0, 80.0),
) -> np.ndarray:
    """An additive background of one of the `BACKGROUND_KINDS` (counts per pixel).

    Parameters
    ----------
    shape : `tuple` [`int`, `int`]
        Image shape (rows, columns).
    kind : `str`
        One of `BACKGROUND_KINDS`.
    amplitude : `float`
        Peak of the structure in units of the sky noise (`sky_noise`): the
        brightest filament, cloud or halo pixel is about ``amplitude`` sigma
        above the flat sky; the lane removes up to 70 % of the sky (and of
        the structure under it, for ``nebula``), whatever ``amplitude``.
    sky, gain, read_noise : `float`
        The flat sky the background sits on (as given to ``simulate_field``)
        and the noise model, which set the unit of ``amplitude``.
    seed : `int`
        Random seed (deterministic output).
    scales : `tuple` [`float`, `float`]
        Wavelengths (pixels) of the random structure.

    Returns
    -------
    background : `numpy.ndarray`, float64
        To add to the flat sky.  For kinds with a lane it is negative where
        the lane dims the sky.

    Raises
    ------
    ValueError
        Raised for an unknown kind or a negative amplitude.
    """
    if kind not in BACKGROUND_KINDS:
        raise ValueError(f"unknown background kind {kind!r}; expected one of {BACKGROUND_KINDS}")
    if not amplitude >= 0:
        raise ValueError(f"amplitude must be >= 0; got {amplitude}")
    ny, nx = shape
    rng = np.random.default_rng(np.random.SeedSequence([seed, BACKGROUND_KINDS.index(kind)]))
    peak = amplitude * sky_noise(sky, gain, read_noise)
    if kind == "flat":
        return np.zeros(shape)
    if kind in ("filaments", "clipped"):
        light = (
            _filaments(shape, rng, scales) if kind == "filaments" else _clipped(shape, rng, scales)
        )
        return peak * light / max(light.max(), 1e-12)
    if kind == "lane":
        return sky * (_lane_transmission(shape, rng) - 1.0)
    if kind == "nebula":
        light = 0.6 * _filaments(shape, rng, scales) + 0.6 * _clipped(shape, rng, scales)
        light = peak * light / max(light.max(), 1e-12)
        transmission = _lane_transmission(shape, rng)
        return (sky + light) * transmission - sky
    yy, xx = np.mgrid[0:ny, 0:nx].astype(float)
    if kind == "halo":
        # A star 30 px beyond a random corner; Moffat-like wings (beta 1.5).
        cx = -30.0 if rng.uniform() < 0.5 else nx + 30.0
        cy = -30.0 if rng.uniform() < 0.5 else ny + 30.0
        r0 = 20.0
        profile = (1.0 + ((xx - cx) ** 2 + (yy - cy) ** 2) / r0**2) ** -1.5
        return peak * profile / profile.max()
    # gradient: linear plus quadratic, 0 at the faint corner, ``peak`` at the bright one.
    u, v = xx / max(nx - 1, 1), yy / max(ny - 1, 1)
    g = 0.6 * u + 0.2 * v + 0.2 * u * u
    return peak * g / g.max()
