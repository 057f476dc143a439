"""Diagnostic figures of a crowdsource fit (used by the demo).

Every function draws on a new `matplotlib.figure.Figure` attached to the
Agg canvas and saves it to a PNG, without touching ``matplotlib.pyplot``
or the global backend, so it works on headless machines, in threads and in
notebooks alike.  Inputs are plain numpy arrays / astropy tables in afw
pixel conventions (x = column, y = row, pixel centres at integers, PARENT
coordinates with origin ``xy0``).

Figures:

- `plot_detections`: the image (asinh stretch) with the detected sources
  marked and classified against the truth (matched / spurious / missed),
  full detector plus a zoomed cutout;
- `plot_residual`: image, model and residual ``(image - model) / sigma``
  of a cutout;
- `plot_completeness`: completeness against true S/N (top axis: AB mag);
- `plot_flux_error`: robust scatter of ``(f - t) / t`` against true S/N,
  with the isolated and crowded Cramér-Rao bounds and the median reported
  error;
- `plot_forced`: forced photometry: pulls at off-source positions and at
  sub-threshold stars.
"""

from __future__ import annotations

__all__ = [
    "choose_cutout",
    "plot_completeness",
    "plot_detections",
    "plot_flux_error",
    "plot_forced",
    "plot_residual",
]

import math
import os
from collections.abc import Callable, Sequence

import numpy as np

try:
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle
except ImportError as err:  # the [plot] extra
    raise ImportError(
        "lsst.meas.crowdsource.testing.plotting needs matplotlib: "
        "pip install 'lsst-meas-crowdsource[plot]' (or matplotlib)."
    ) from err

_MAD_TO_SIGMA = 1.4826


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike[str], dpi: int = 100) -> str:
    fig.savefig(os.fspath(path), dpi=dpi)
    return os.fspath(path)


def _stretch_params(
    image: np.ndarray, n_sigma_low: float = 2.0, hi_pct: float = 99.8
) -> tuple[float, float, float]:
    """Black level, white level and softening of `_stretch` for ``image``.

    Black at ``median - n_sigma_low * sigma`` (median and 1.4826 MAD of the
    finite pixels), white at the ``hi_pct`` percentile (at least 20 sigma
    above the median), asinh softening of two sigma: faint stars stand out of
    the noise while the cores of bright stars are not burnt out.
    """
    finite = np.asarray(image, float)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return 0.0, 1.0, 0.1
    med = float(np.median(finite))
    sigma = float(_MAD_TO_SIGMA * np.median(np.abs(finite - med))) or 1.0
    lo = med - n_sigma_low * sigma
    hi = max(float(np.percentile(finite, hi_pct)), med + 20.0 * sigma)
    return lo, hi, 2.0 * sigma / (hi - lo)


def _stretch(image: np.ndarray, params: tuple[float, float, float] | None = None) -> np.ndarray:
    """Map an image to [0, 1] with an asinh stretch (see `_stretch_params`)."""
    image = np.asarray(image, float)
    lo, hi, soft = _stretch_params(image) if params is None else params
    x = np.clip((np.nan_to_num(image, nan=lo) - lo) / (hi - lo), 0.0, 1.0)
    return np.arcsinh(x / soft) / np.arcsinh(1.0 / soft)


def choose_cutout(
    shape: tuple[int, int],
    size: int,
    xy0: tuple[int, int] = (0, 0),
    prefer: Sequence[tuple[float, float]] = (),
) -> tuple[int, int, int, int]:
    """Pick a square cutout, centred on the first preferred position if any.

    Parameters
    ----------
    shape : `tuple` [`int`, `int`]
        Image shape (rows, columns).
    size : `int`
        Side of the cutout (clipped to the image).
    xy0 : `tuple` [`int`, `int`], optional
        PARENT coordinates of the image's first pixel.
    prefer : sequence of ``(x, y)``, optional
        PARENT positions to centre on (the first is used); the image centre
        otherwise.

    Returns
    -------
    box : `tuple` [`int`, `int`, `int`, `int`]
        ``(x_min, y_min, x_max, y_max)`` in PARENT pixels, max exclusive.
    """
    ny, nx = shape
    sx, sy = min(size, nx), min(size, ny)
    if len(prefer):
        cx, cy = prefer[0][0] - xy0[0], prefer[0][1] - xy0[1]
    else:
        cx, cy = (nx - 1) / 2.0, (ny - 1) / 2.0
    ix = int(np.clip(round(cx - sx / 2.0), 0, nx - sx))
    iy = int(np.clip(round(cy - sy / 2.0), 0, ny - sy))
    return ix + xy0[0], iy + xy0[1], ix + xy0[0] + sx, iy + xy0[1] + sy


def _cut(array: np.ndarray, box: tuple[int, int, int, int], xy0: tuple[int, int]) -> np.ndarray:
    x_min, y_min, x_max, y_max = box
    return array[y_min - xy0[1] : y_max - xy0[1], x_min - xy0[0] : x_max - xy0[0]]


def _extent(box: tuple[int, int, int, int]) -> tuple[float, float, float, float]:
    x_min, y_min, x_max, y_max = box
    return (x_min - 0.5, x_max - 0.5, y_min - 0.5, y_max - 0.5)


def _inside(x: np.ndarray, y: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    x_min, y_min, x_max, y_max = box
    return (x >= x_min - 0.5) & (x < x_max - 0.5) & (y >= y_min - 0.5) & (y < y_max - 0.5)


def plot_detections(
    path: str | os.PathLike[str],
    image: np.ndarray,
    det_x: np.ndarray,
    det_y: np.ndarray,
    *,
    det_matched: np.ndarray | None = None,
    missed_x: np.ndarray | None = None,
    missed_y: np.ndarray | None = None,
    missed_label: str = "missed true star (S/N ≥ 5)",
    box: tuple[int, int, int, int] | None = None,
    xy0: tuple[int, int] = (0, 0),
    title: str = "",
) -> str:
    """The image with detected sources marked: full frame and a zoomed cutout.

    Parameters
    ----------
    path : path-like
        PNG to write.
    image : `numpy.ndarray`
        The exposure's image.
    det_x, det_y : `numpy.ndarray`
        Detected positions (PARENT pixels).
    det_matched : `numpy.ndarray` of `bool`, optional
        Whether each detection matches a true star; unmatched ones are drawn
        as "spurious".  Without it all detections are drawn alike.
    missed_x, missed_y : `numpy.ndarray`, optional
        True stars that were not detected (drawn as crosses).
    missed_label : `str`, optional
        Legend text of the missed stars.
    box : `tuple`, optional
        Zoomed cutout ``(x_min, y_min, x_max, y_max)`` (PARENT, max
        exclusive); default a 96 px box at the centre (`choose_cutout`).
    xy0 : `tuple` [`int`, `int`], optional
        PARENT coordinates of ``image[0, 0]``.
    title : `str`, optional
        Figure title.

    Returns
    -------
    path : `str`
        The file written.
    """
    image = np.asarray(image, dtype=float)
    det_x = np.asarray(det_x, float)
    det_y = np.asarray(det_y, float)
    if box is None:
        box = choose_cutout(image.shape, 96, xy0)
    ny, nx = image.shape
    full_box = (xy0[0], xy0[1], xy0[0] + nx, xy0[1] + ny)
    fig = _figure(13.0, 6.6)
    ax_full = fig.add_axes((0.06, 0.09, 0.40, 0.79))
    ax_zoom = fig.add_axes((0.53, 0.09, 0.40, 0.79))
    ax_full.imshow(
        _stretch(image),
        origin="lower",
        cmap="gray_r",
        extent=_extent(full_box),
        interpolation="nearest",
    )
    ax_full.add_patch(
        Rectangle(
            (box[0] - 0.5, box[1] - 0.5),
            box[2] - box[0],
            box[3] - box[1],
            fill=False,
            edgecolor="tab:orange",
            linewidth=1.5,
        )
    )
    ax_full.set_title(f"full detector: {len(det_x)} sources (zoom box in orange)", fontsize=10)
    ax_full.set_xlabel("x (pixel)")
    ax_full.set_ylabel("y (pixel)")

    cut = _cut(image, box, xy0)
    ax_zoom.imshow(
        _stretch(cut), origin="lower", cmap="gray_r", extent=_extent(box), interpolation="nearest"
    )
    ins = _inside(det_x, det_y, box)
    matched = np.ones(len(det_x), bool) if det_matched is None else np.asarray(det_matched, bool)
    label = "detection matched to a true star" if det_matched is not None else "detection"
    ax_zoom.scatter(
        det_x[ins & matched],
        det_y[ins & matched],
        s=70,
        facecolors="none",
        edgecolors="tab:blue",
        linewidths=1.2,
        label=label,
    )
    if det_matched is not None:
        ax_zoom.scatter(
            det_x[ins & ~matched],
            det_y[ins & ~matched],
            s=80,
            marker="s",
            facecolors="none",
            edgecolors="tab:orange",
            linewidths=1.3,
            label="detection without a true star within 1 px",
        )
    if missed_x is not None and missed_y is not None:
        mx, my = np.asarray(missed_x, float), np.asarray(missed_y, float)
        mins = _inside(mx, my, box)
        ax_zoom.scatter(
            mx[mins],
            my[mins],
            s=50,
            marker="x",
            color="tab:red",
            linewidths=1.3,
            label=missed_label,
        )
    ax_zoom.set_xlim(box[0] - 0.5, box[2] - 0.5)
    ax_zoom.set_ylim(box[1] - 0.5, box[3] - 0.5)
    ax_zoom.set_title(
        f"zoom x {box[0]}-{box[2] - 1}, y {box[1]}-{box[3] - 1}: {int(ins.sum())} sources",
        fontsize=10,
    )
    ax_zoom.set_xlabel("x (pixel)")
    ax_zoom.legend(
        loc="upper center", bbox_to_anchor=(0.5, -0.07), ncol=3, fontsize=8, frameon=False
    )
    if title:
        fig.suptitle(title, fontsize=12)
    return _save(fig, path)


def plot_residual(
    path: str | os.PathLike[str],
    image: np.ndarray,
    model: np.ndarray,
    variance: np.ndarray,
    *,
    bad: np.ndarray | None = None,
    box: tuple[int, int, int, int] | None = None,
    xy0: tuple[int, int] = (0, 0),
    title: str = "",
) -> str:
    """Image, model and normalised residual ``(image - model) / sqrt(variance)``.

    Image and model share one asinh stretch; the residual is shown from -5
    to +5 sigma, with ``bad`` pixels (e.g. BAD/SAT mask planes, not fitted)
    grey.  A fourth panel is the histogram of the residual over the good
    pixels of the whole image, against a unit Gaussian.

    Parameters
    ----------
    path : path-like
        PNG to write.
    image, model, variance : `numpy.ndarray`
        Planes of the whole image (same shape).
    bad : `numpy.ndarray` of `bool`, optional
        Pixels the fit ignored.
    box : `tuple`, optional
        Cutout ``(x_min, y_min, x_max, y_max)`` (PARENT, max exclusive);
        default 128 px at the centre.
    xy0 : `tuple` [`int`, `int`], optional
        PARENT coordinates of ``image[0, 0]``.
    title : `str`, optional
        Figure title.

    Returns
    -------
    path : `str`
        The file written.
    """
    image = np.asarray(image, float)
    model = np.asarray(model, float)
    variance = np.asarray(variance, float)
    if not (image.shape == model.shape == variance.shape):
        raise ValueError(
            f"image {image.shape}, model {model.shape} and variance "
            f"{variance.shape} differ in shape"
        )
    if box is None:
        box = choose_cutout(image.shape, 128, xy0)
    bad = np.zeros(image.shape, bool) if bad is None else np.asarray(bad, bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        resid = (image - model) / np.sqrt(variance)
    good = ~bad & np.isfinite(resid)

    cut_img, cut_mod = _cut(image, box, xy0), _cut(model, box, xy0)
    cut_res = np.where(_cut(good, box, xy0), _cut(resid, box, xy0), np.nan)
    params = _stretch_params(cut_img)

    fig = _figure(16.5, 4.9)
    left, w, gap = 0.04, 0.195, 0.04
    axes = [fig.add_axes((left + i * (w + gap), 0.12, w, 0.72)) for i in range(3)]
    axes.append(fig.add_axes((left + 3 * (w + gap) + 0.03, 0.12, w - 0.03, 0.72)))
    axes[0].imshow(
        _stretch(cut_img, params),
        origin="lower",
        cmap="gray_r",
        extent=_extent(box),
        interpolation="nearest",
    )
    axes[0].set_title("image", fontsize=10)
    axes[1].imshow(
        _stretch(cut_mod, params),
        origin="lower",
        cmap="gray_r",
        extent=_extent(box),
        interpolation="nearest",
    )
    axes[1].set_title("model (all sources + sky), same stretch", fontsize=10)
    div = colormaps["RdBu_r"].copy()
    div.set_bad("0.55")
    im = axes[2].imshow(
        cut_res,
        origin="lower",
        cmap=div,
        vmin=-5,
        vmax=5,
        extent=_extent(box),
        interpolation="nearest",
    )
    axes[2].set_title("(image − model) / σ   [grey: masked, not fit]", fontsize=10)
    cax = fig.add_axes((left + 2 * (w + gap) + w + 0.004, 0.12, 0.008, 0.72))
    fig.colorbar(im, cax=cax)
    for ax in axes[:3]:
        ax.set_xlabel("x (pixel)")
    axes[0].set_ylabel("y (pixel)")

    r = resid[good]
    med = float(np.median(r)) if r.size else float("nan")
    rs = float(_MAD_TO_SIGMA * np.median(np.abs(r - med))) if r.size else float("nan")
    out5 = float(np.mean(np.abs(r) > 5)) if r.size else float("nan")
    bins = np.linspace(-6, 6, 97)
    axes[3].hist(
        r, bins=bins, density=True, histtype="step", color="k", label="all unmasked pixels"
    )
    g = np.exp(-0.5 * bins**2) / math.sqrt(2 * math.pi)
    axes[3].plot(bins, g, color="tab:red", lw=1, label="unit Gaussian")
    axes[3].set_yscale("log")
    axes[3].set_ylim(1e-5, 1)
    axes[3].set_xlabel("(image − model) / σ, whole detector")
    axes[3].set_title(
        f"median {med:+.2f}, robust σ {rs:.2f}, |r|>5: {100 * out5:.1f}%", fontsize=10
    )
    axes[3].legend(fontsize=8, loc="upper right")
    if title:
        fig.suptitle(title, fontsize=12)
    return _save(fig, path)


def _binomial_interval(k: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """68% Wilson interval of k/n."""
    k = np.asarray(k, float)
    n = np.asarray(n, float)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        z = 1.0
        denom = 1 + z * z / n
        centre = (p + z * z / (2 * n)) / denom
        half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return centre - half, centre + half


def _finish_snr_plot(
    fig: Figure,
    ax,
    path,
    ylabel: str,
    legend_loc: str,
    legend_size: int,
    snr_to_mag,
    mag_to_snr,
    title: str | None,
) -> str:
    """Labels, grid, legend and magnitude axis shared by the plots against true S/N."""
    ax.set_xlabel("true S/N (isolated-star Cramér–Rao)")
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc=legend_loc, fontsize=legend_size)
    _mag_axis(ax, snr_to_mag, mag_to_snr)
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def _mag_axis(
    ax,
    snr_to_mag: Callable[[np.ndarray], np.ndarray] | None,
    mag_to_snr: Callable[[np.ndarray], np.ndarray] | None,
) -> None:
    if snr_to_mag is None or mag_to_snr is None:
        return
    from matplotlib.ticker import FormatStrFormatter, MultipleLocator, NullLocator

    sec = ax.secondary_xaxis("top", functions=(snr_to_mag, mag_to_snr))
    sec.xaxis.set_major_locator(MultipleLocator(1.0))
    sec.xaxis.set_minor_locator(NullLocator())
    sec.xaxis.set_major_formatter(FormatStrFormatter("%d"))
    sec.set_xlabel(
        "≈ AB magnitude (isolated star on the mean sky, PSF at the detector centre)", fontsize=9
    )


def plot_completeness(
    path: str | os.PathLike[str],
    true_snr: np.ndarray,
    detected: np.ndarray,
    *,
    edges: Sequence[float] | None = None,
    snr_to_mag: Callable[[np.ndarray], np.ndarray] | None = None,
    mag_to_snr: Callable[[np.ndarray], np.ndarray] | None = None,
    threshold: float | None = None,
    title: str = "",
) -> str:
    """Fraction of true stars detected, against their true S/N.

    Parameters
    ----------
    path : path-like
        PNG to write.
    true_snr : `numpy.ndarray`
        True (isolated-star Cramér-Rao) S/N of every true star counted.
    detected : `numpy.ndarray` of `bool`
        Whether each was matched by a detection.
    edges : sequence of `float`, optional
        S/N bin edges (default logarithmic from 2 to 3000).
    snr_to_mag, mag_to_snr : callable, optional
        Monotonic conversions for a top magnitude axis.
    threshold : `float`, optional
        Detection threshold (sigma) to mark.
    title : `str`, optional
        Figure title.

    Returns
    -------
    path : `str`
        The file written.
    """
    snr = np.asarray(true_snr, float)
    det = np.asarray(detected, bool)
    if edges is None:
        edges = np.geomspace(2.0, 3000.0, 19)
    edges = np.asarray(edges, float)
    n = np.histogram(snr, edges)[0]
    k = np.histogram(snr[det], edges)[0]
    centre = np.sqrt(edges[:-1] * edges[1:])
    ok = n >= 5  # a fraction of fewer stars is noise
    with np.errstate(invalid="ignore", divide="ignore"):
        frac = k / n
    lo, hi = _binomial_interval(k, n)

    fig = _figure(7.5, 5.2)
    ax = fig.add_axes((0.11, 0.12, 0.84, 0.70))
    yerr = np.clip(
        [frac[ok] - lo[ok], hi[ok] - frac[ok]], 0.0, None
    )  # Wilson: round-off at 0 and 1
    ax.errorbar(
        centre[ok],
        frac[ok],
        yerr=yerr,
        fmt="o-",
        color="tab:blue",
        ms=4,
        capsize=2,
        label=f"completeness ({int(det.sum())} of {len(det)} true stars)",
    )
    if threshold is not None:
        ax.axvline(threshold, color="0.5", ls="--", lw=1, label=f"threshold ({threshold:g}σ)")
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.05)
    ax.set_xlim(edges[0], edges[-1])
    return _finish_snr_plot(
        fig,
        ax,
        path,
        "fraction detected (match within 1 px)",
        "lower right",
        9,
        snr_to_mag,
        mag_to_snr,
        title,
    )


def plot_flux_error(
    path: str | os.PathLike[str],
    true_snr: np.ndarray,
    frac_err: np.ndarray,
    *,
    reported_frac_err: np.ndarray | None = None,
    crb_snr: np.ndarray | None = None,
    crb_frac: np.ndarray | None = None,
    edges: Sequence[float] | None = None,
    snr_to_mag: Callable[[np.ndarray], np.ndarray] | None = None,
    mag_to_snr: Callable[[np.ndarray], np.ndarray] | None = None,
    title: str = "",
) -> str:
    """Photometric error against true S/N, with the Cramér-Rao bounds.

    Parameters
    ----------
    path : path-like
        PNG to write.
    true_snr : `numpy.ndarray`
        True S/N of each matched star.
    frac_err : `numpy.ndarray`
        ``(measured - true) / true`` flux of each matched star.
    reported_frac_err : `numpy.ndarray`, optional
        ``reported error / true flux`` of each matched star (median per bin
        is drawn).
    crb_snr, crb_frac : `numpy.ndarray`, optional
        True S/N and crowded Cramér-Rao bound ``sigma / flux`` of a sample
        of stars (median per bin is drawn).
    edges : sequence of `float`, optional
        S/N bin edges (default logarithmic from 3 to 3000).
    snr_to_mag, mag_to_snr : callable, optional
        Monotonic conversions for a top magnitude axis.
    title : `str`, optional
        Figure title.

    Returns
    -------
    path : `str`
        The file written.
    """
    snr = np.asarray(true_snr, float)
    frac = np.asarray(frac_err, float)
    if edges is None:
        edges = np.geomspace(3.0, 3000.0, 16)
    edges = np.asarray(edges, float)
    centre = np.sqrt(edges[:-1] * edges[1:])

    def per_bin(
        s: np.ndarray, v: np.ndarray, fn: Callable[[np.ndarray], float], min_n: int = 8
    ) -> np.ndarray:
        out = np.full(len(centre), np.nan)
        idx = np.digitize(s, edges) - 1
        for i in range(len(centre)):
            sel = (idx == i) & np.isfinite(v)
            if sel.sum() >= min_n:
                out[i] = fn(v[sel])
        return out

    def rscatter(v: np.ndarray) -> float:
        return float(_MAD_TO_SIGMA * np.median(np.abs(v - np.median(v))))

    fig = _figure(7.5, 5.6)
    ax = fig.add_axes((0.12, 0.11, 0.83, 0.70))
    ax.scatter(
        snr,
        np.abs(frac),
        s=2,
        color="0.75",
        alpha=0.6,
        rasterized=True,
        label="|f − t| / t, each matched star",
    )
    scat = per_bin(snr, frac, rscatter)
    ax.plot(
        centre,
        scat,
        "o-",
        color="tab:blue",
        ms=5,
        lw=2,
        label="measured: robust scatter of (f − t) / t",
    )
    xs = np.geomspace(edges[0], edges[-1], 100)
    ax.plot(
        xs, 1.0 / xs, "--", color="k", lw=1.2, label="Cramér–Rao bound, isolated star (1 / S/N)"
    )
    if crb_snr is not None and crb_frac is not None:
        crb = per_bin(np.asarray(crb_snr, float), np.asarray(crb_frac, float), np.median, min_n=5)
        ax.plot(
            centre,
            crb,
            "s:",
            color="tab:green",
            ms=4,
            lw=1.5,
            label="Cramér–Rao bound, crowded (joint fit of all stars)",
        )
    if reported_frac_err is not None:
        rep = per_bin(snr, np.asarray(reported_frac_err, float), np.median)
        ax.plot(
            centre, rep, "^-", color="tab:orange", ms=4, lw=1, label="median reported error / t"
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(edges[0], edges[-1])
    finite = scat[np.isfinite(scat)]
    ymax = max(1.0, float(np.nanmax(finite)) * 1.5) if finite.size else 1.0
    ax.set_ylim(3e-4, ymax)
    return _finish_snr_plot(
        fig, ax, path, "fractional flux error", "lower left", 8, snr_to_mag, mag_to_snr, title
    )


def plot_forced(
    path: str | os.PathLike[str],
    blank_pull: np.ndarray,
    star_pull: np.ndarray,
    *,
    blank_label: str = "random off-source positions",
    star_label: str = "faint true stars",
    star_ratio: float | None = None,
    title: str = "",
) -> str:
    """Forced photometry: pull histograms at off-source positions and at faint stars.

    Parameters
    ----------
    path : path-like
        PNG to write.
    blank_pull : `numpy.ndarray`
        ``flux / error`` at positions with no detected source (a unit
        Gaussian if the fit is unbiased and the errors right; light of
        undetected stars widens it).
    star_pull : `numpy.ndarray`
        ``(flux - true flux) / error`` at the true positions of faint stars.
    blank_label, star_label : `str`, optional
        Legend texts.
    star_ratio : `float`, optional
        Median measured / true flux of the stars, shown in the title.
    title : `str`, optional
        Figure title.

    Returns
    -------
    path : `str`
        The file written.
    """
    fig = _figure(13.0, 5.0)
    axes = (fig.add_axes((0.06, 0.12, 0.40, 0.72)), fig.add_axes((0.56, 0.12, 0.40, 0.72)))
    bins = np.linspace(-6, 6, 49)
    g = np.exp(-0.5 * bins**2) / math.sqrt(2 * math.pi)
    for ax, values, label, xlabel, colour in (
        (axes[0], blank_pull, blank_label, "forced flux / error", "tab:blue"),
        (axes[1], star_pull, star_label, "(forced flux − true flux) / error", "tab:orange"),
    ):
        v = np.asarray(values, float)
        v = v[np.isfinite(v)]
        n_out = int(np.sum(np.abs(v) > 6))
        ax.hist(
            v,
            bins=bins,
            density=True,
            histtype="stepfilled",
            alpha=0.55,
            color=colour,
            label=f"{len(v)} {label}" + (f" ({n_out} beyond ±6)" if n_out else ""),
        )
        ax.plot(bins, g, color="k", lw=1.2, label="unit Gaussian")
        ax.axvline(0.0, color="0.4", lw=0.8, ls=":")
        if v.size:
            med = float(np.median(v))
            rs = float(_MAD_TO_SIGMA * np.median(np.abs(v - med)))
            extra = (
                f", median f/t {star_ratio:.2f}"
                if (ax is axes[1] and star_ratio is not None and np.isfinite(star_ratio))
                else ""
            )
            ax.set_title(f"median {med:+.2f}, robust σ {rs:.2f}{extra}", fontsize=10)
        ax.set_xlabel(xlabel)
        ax.set_xlim(bins[0], bins[-1])
        ax.legend(fontsize=8, loc="upper left")
    axes[0].set_ylabel("density")
    if title:
        fig.suptitle(title, fontsize=12)
    return _save(fig, path)
