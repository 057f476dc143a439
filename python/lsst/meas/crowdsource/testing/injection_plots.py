"""Figures of an artificial-star test (`lsst.meas.crowdsource.injection`).

- `plot_injection_summary`: completeness and median flux bias (with the
  robust scatter as a band) against magnitude, the 50 % completeness
  magnitude marked; optionally the same measured against a simulation's
  truth, for comparison;
- `plot_completeness_density`: completeness against the local density of
  real sources, in a few magnitude ranges.

Like `lsst.meas.crowdsource.testing.plotting` (whose canvas helpers these
use), they draw on a new Agg figure and save a PNG without touching
``matplotlib.pyplot``; matplotlib is the ``[plot]`` extra and is only
imported with this module.
"""

from __future__ import annotations

__all__ = ["plot_completeness_density", "plot_injection_summary"]

import os

import numpy as np

from ..artificial_stars import completeness_magnitude
from .plotting import _binomial_interval, _figure, _save


def _centres(summary) -> np.ndarray:
    return 0.5 * (np.asarray(summary["magMin"], float) + np.asarray(summary["magMax"], float))


def _completeness_panel(ax, summary, label, color, marker, shift=0.0):
    n = np.asarray(summary["nInjected"], float)
    k = np.asarray(summary["nRecovered"], float)
    ok = n > 0
    lo, hi = _binomial_interval(k[ok], n[ok])
    frac = k[ok] / n[ok]
    yerr = np.clip([frac - lo, hi - frac], 0.0, None)
    ax.errorbar(
        _centres(summary)[ok] + shift,
        frac,
        yerr=yerr,
        fmt=marker + "-",
        color=color,
        ms=4,
        capsize=2,
        label=label,
    )
    mag50 = completeness_magnitude(summary)
    if np.isfinite(mag50):
        ax.axvline(mag50, color=color, ls="--", lw=1)
        ax.annotate(
            f"50 %: {mag50:.2f}",
            (mag50, 0.5),
            xytext=(4, 4 + 14 * (shift > 0)),
            textcoords="offset points",
            color=color,
            fontsize=8,
        )


def _bias_panel(ax, summary, label, color, marker, shift=0.0):
    m = _centres(summary) + shift
    bias = np.asarray(summary["fluxBias"], float)
    err = np.asarray(summary["fluxBiasErr"], float)
    scatter = np.asarray(summary["fluxScatter"], float)
    ok = np.isfinite(bias)
    ax.fill_between(
        m[ok], (bias - scatter)[ok], (bias + scatter)[ok], color=color, alpha=0.15, lw=0
    )
    ax.errorbar(
        m[ok],
        bias[ok],
        yerr=np.nan_to_num(err[ok]),
        fmt=marker + "-",
        color=color,
        ms=4,
        capsize=2,
        label=f"{label}: median ± robust scatter",
    )


def plot_injection_summary(
    path: str | os.PathLike[str],
    summary,
    *,
    truth_summary=None,
    title: str = "",
    mag_label: str = "magnitude",
) -> str:
    """Completeness and flux bias against magnitude, 50 % completeness marked.

    Parameters
    ----------
    path : path-like
        PNG to write.
    summary : `astropy.table.Table`
        The artificial stars' summary (`~lsst.meas.crowdsource.artificial_stars.summarize`).
    truth_summary : `astropy.table.Table`, optional
        The same statistics of the true stars of a simulation, drawn beside it.
    title : `str`, optional
        Figure title.
    mag_label : `str`, optional
        Label of the magnitude axis (e.g. "AB magnitude").

    Returns
    -------
    path : `str`
        The file written.
    """
    fig = _figure(7.5, 7.0)
    top = fig.add_axes((0.11, 0.50, 0.85, 0.40))
    bottom = fig.add_axes((0.11, 0.08, 0.85, 0.38), sharex=top)
    curves = [(summary, "artificial stars", "tab:blue", "o", 0.0)]
    if truth_summary is not None:
        curves.append((truth_summary, "true stars", "tab:orange", "s", 0.06))
    for table, label, color, marker, shift in curves:
        n = int(np.sum(table["nInjected"]))
        _completeness_panel(top, table, f"{label} ({n})", color, marker, shift)
        _bias_panel(bottom, table, label, color, marker, shift)
    top.set_ylim(-0.02, 1.08)
    top.set_ylabel("completeness (fraction recovered)")
    top.grid(True, alpha=0.3)
    top.legend(loc="lower left", fontsize=9)
    top.tick_params(labelbottom=False)
    bottom.axhline(0.0, color="0.4", lw=1)
    bottom.set_ylabel("(recovered − injected) / injected flux")
    bottom.set_xlabel(mag_label)
    bottom.grid(True, alpha=0.3)
    bottom.legend(loc="upper left", fontsize=8)
    scatter = np.asarray(summary["fluxScatter"], float)
    if np.isfinite(scatter).any():
        lim = min(1.0, max(0.05, 2.5 * float(np.nanmax(scatter))))
        bottom.set_ylim(-lim, lim)
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)


def plot_completeness_density(
    path: str | os.PathLike[str],
    injected,
    *,
    n_density_bins: int = 5,
    mag_edges=None,
    title: str = "",
) -> str:
    """Completeness against the local density of real sources, in magnitude ranges.

    Parameters
    ----------
    path : path-like
        PNG to write.
    injected : `astropy.table.Table`
        The per-star table (``injectedMag``, ``localDensity``, ``recovered``).
    n_density_bins : `int`, optional
        Number of density bins (quantiles of the stars' densities).
    mag_edges : sequence of `float`, optional
        Magnitude ranges, one curve each (default: three equal ranges).
    title : `str`, optional
        Figure title.

    Returns
    -------
    path : `str`
        The file written.
    """
    mag = np.asarray(injected["injectedMag"], float)
    dens = np.asarray(injected["localDensity"], float)
    rec = np.asarray(injected["recovered"], bool)
    if mag_edges is None:
        mag_edges = np.linspace(mag.min(), np.nextafter(mag.max(), np.inf), 4) if len(mag) else []
    edges = np.unique(np.quantile(dens, np.linspace(0, 1, n_density_bins + 1))) if len(dens) else []
    fig = _figure(7.5, 5.2)
    ax = fig.add_axes((0.11, 0.12, 0.84, 0.76))
    colors = ["tab:blue", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    for i, (lo, hi) in enumerate(zip(mag_edges[:-1], mag_edges[1:])):
        in_mag = (mag >= lo) & (mag < hi)
        centre, frac, err_lo, err_hi = [], [], [], []
        for dlo, dhi in zip(edges[:-1], edges[1:]):
            sel = in_mag & (dens >= dlo) & ((dens < dhi) | (dhi == edges[-1]) & (dens <= dhi))
            if sel.sum() < 3:
                continue
            k, n = np.sum(rec[sel]), np.sum(sel)
            low, high = _binomial_interval(np.array([k]), np.array([n]))
            centre.append(np.median(dens[sel]))
            frac.append(k / n)
            err_lo.append(max(k / n - low[0], 0.0))
            err_hi.append(max(high[0] - k / n, 0.0))
        if centre:
            ax.errorbar(
                centre,
                frac,
                yerr=[err_lo, err_hi],
                fmt="o-",
                ms=4,
                capsize=2,
                color=colors[i % len(colors)],
                label=f"magnitude {lo:.2f}–{hi:.2f}",
            )
    ax.set_ylim(-0.02, 1.08)
    ax.set_xlabel("local density of real sources (per pixel², within the density radius)")
    ax.set_ylabel("completeness (fraction recovered)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower left", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=11)
    return _save(fig, path)
