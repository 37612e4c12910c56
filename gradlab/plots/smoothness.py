"""Local smoothness against gradient norm (smoothness.png), Zhang et al. 2020's Figure 1 for a
run: each measured step a point (its gradient norm before clipping, its smoothness along the
step taken), both axes logarithmic, coloured by step; one panel per variant, its seeds
together, with the least-squares line L0 + L1 ||grad|| over them and the correlations in the
title. For experiments that measure it (train.measure_smoothness) only."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from gradlab.smoothness import correlations, fit_affine

from . import style
from .load import Experiment

HEADING = "Local smoothness against gradient norm, per measured step (Zhang et al. 2020)"
FIT_COLOR = "black"


def measured(run) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(steps, gradient norms, smoothness) of a run's measured healthy steps."""
    m = run.metrics
    s = m.get("smoothness")
    if s is None:
        return np.zeros(0), np.zeros(0), np.zeros(0)
    ok = np.isfinite(s) & np.isfinite(m["grad_norm"]) & (m["grad_norm"] > 0) & (s > 0) & (m["nonfinite"] == 0)
    return m["step"][ok], m["grad_norm"][ok], s[ok]


def draw_panel(ax, steps: np.ndarray, norms: np.ndarray, smooth: np.ndarray, last_step: float, title: str):
    """One panel: the points coloured by step (0 to `last_step`), the fitted line, the
    numbers in the title; returns the scatter (for a colour bar)."""
    dots = ax.scatter(norms, smooth, c=steps, cmap="viridis", vmin=0, vmax=max(last_step, 1.0), s=14,
                      edgecolors="none", alpha=0.85, zorder=3)
    ax.set_xscale("log")
    ax.set_yscale("log")
    if norms.size:
        # 1, 2, 5 x each power of ten: the norms often span less than a decade.
        style.few_decade_ticks(ax.xaxis, float(norms.min()), float(norms.max()))
        style.few_decade_ticks(ax.yaxis, float(smooth.min()), float(smooth.max()))
    ax.grid(True, which="major", alpha=0.3)
    l0, l1 = fit_affine(norms, smooth)
    c = correlations(norms, smooth)
    if math.isfinite(l1) and norms.size:
        g = np.geomspace(float(norms.min()), float(norms.max()), 50)
        line = l0 + l1 * g
        ok = line > 0
        ax.plot(g[ok], line[ok], color=FIT_COLOR, linestyle="--", linewidth=1.3, zorder=4)
    numbers = (f"L0 {l0:.3g}, L1 {l1:.3g}; r(log) {c['pearson_log']:.2f}, "
               f"rho {c['spearman']:.2f}, n={c['n']}") if c["n"] >= 3 else f"n={c['n']}"
    ax.set_title(f"{title}\n{numbers}", fontsize=10, **style.TITLE)
    return dots


def draw_smoothness(exp: Experiment, path: Path) -> Path | None:
    """The figure; None when no run has a measured step."""
    from matplotlib.lines import Line2D

    from .over_steps import key_and_save
    from .scale import _variant_grid

    data = {r.run_id: measured(r) for r in exp.runs}
    runs = [r for r in exp.runs if data[r.run_id][0].size]
    if not runs:
        return None
    variants = [v for v in exp.variants if any(r.variant == v for r in runs)]
    fig, panels = _variant_grid(exp, variants, HEADING)
    last = float(max(float(data[r.run_id][0].max()) for r in runs))
    dots = None
    for i, variant in enumerate(variants):
        mine = [data[r.run_id] for r in runs if r.variant == variant]
        steps, norms, smooth = (np.concatenate([d[k] for d in mine]) for k in range(3))
        ax = panels[variant]
        dots = draw_panel(ax, steps, norms, smooth, last, style.variant_label(exp, variant))
        ax.set_xlabel("gradient norm (before clipping)")
        ax.xaxis.set_tick_params(labelbottom=True)
        if i % style.MAX_PANEL_COLUMNS == 0:
            ax.set_ylabel("smoothness ||Δgrad|| / ||Δx||")
    # The colour key under the legend, beside the first row's last panel (lay_out leaves
    # that column to the key).
    corner = list(panels.values())[min(len(panels), style.MAX_PANEL_COLUMNS) - 1]
    bar = fig.colorbar(dots, cax=corner.inset_axes([1.06, 0.0, 0.05, 0.55]))
    bar.set_label("step", fontsize=9)
    handles = [Line2D([], [], color=FIT_COLOR, linestyle="--", linewidth=1.3, label="L0 + L1 ||grad||, least squares")]
    n = max(sum(1 for r in runs if r.variant == v) for v in variants)
    if n > 1:
        what = "grid point and seed" if isinstance(exp.config.get("grid"), dict) else "seed"
        handles.append(Line2D([], [], linestyle="none", label=f"a panel holds every {what}'s points ({n} runs)"))
    return key_and_save(fig, panels, handles, HEADING, exp.summary, path)
