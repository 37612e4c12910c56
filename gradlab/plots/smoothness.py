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
    ax.set_title(title, fontsize=10, **style.TITLE)
    # The numbers inside the panel, top left: a second title line would run into the row above.
    ax.text(0.02, 0.98, numbers, transform=ax.transAxes, va="top", ha="left", fontsize=8, zorder=6,
            bbox=dict(facecolor="white", edgecolor="none", alpha=0.8, pad=1.5))
    return dots


# A grid's panels are its (point, variant) pairs: more than this many, and the first ones only.
MAX_PANELS = 24


def draw_smoothness(exp: Experiment, path: Path) -> Path | None:
    """The figure; None when no run has a measured step. A panel per variant, or in a grid
    experiment per grid point and variant (the learning rate sets the step, and with it the
    smoothness measured along it: the points do not share one cloud)."""
    from matplotlib.lines import Line2D

    from gradlab.points import point_label

    from .over_steps import lay_out
    from .style import legend_width

    data = {r.run_id: measured(r) for r in exp.runs}
    runs = [r for r in exp.runs if data[r.run_id][0].size]
    if not runs:
        return None
    gridded = isinstance(exp.config.get("grid"), dict)

    def key(r) -> tuple:
        return (point_label(r.report.get("grid") or {}) if gridded else "", r.variant)

    keys = list(dict.fromkeys(key(r) for r in sorted(
        runs, key=lambda r: (exp.runs.index(r) if gridded else 0, exp.variants.index(r.variant)))))
    if gridded:  # the grid's order: its points as listed, each point's variants in their order
        points = list(dict.fromkeys(k[0] for k in keys))
        keys.sort(key=lambda k: (points.index(k[0]), exp.variants.index(k[1])))
    shown = keys[:MAX_PANELS]
    fig, panels = style.panel_grid(len(shown), share=not gridded)
    last = float(max(float(data[r.run_id][0].max()) for r in runs))
    dots = None
    for i, (k, ax) in enumerate(zip(shown, panels)):
        mine = [data[r.run_id] for r in runs if key(r) == k]
        steps, norms, smooth = (np.concatenate([d[j] for d in mine]) for j in range(3))
        label = style.variant_label(exp, k[1])
        dots = draw_panel(ax, steps, norms, smooth, last, f"{k[0]}: {label}" if k[0] else label)
        if i + min(len(shown), style.MAX_PANEL_COLUMNS) >= len(shown):
            ax.set_xlabel("gradient norm (before clipping)")
            ax.xaxis.set_tick_params(labelbottom=True)
        if i % style.MAX_PANEL_COLUMNS == 0:
            ax.set_ylabel("smoothness ||Δgrad|| / ||Δx||")
    named = dict(zip(range(len(panels)), panels))
    # The colour key under the legend, beside the first row's last panel (lay_out leaves
    # that column to the key).
    corner = panels[min(len(panels), style.MAX_PANEL_COLUMNS) - 1]
    bar = fig.colorbar(dots, cax=corner.inset_axes([1.06, 0.0, 0.05, 0.55]))
    bar.set_label("step", fontsize=9)
    handles = [Line2D([], [], color=FIT_COLOR, linestyle="--", linewidth=1.3, label="L0 + L1 ||grad||, least squares")]
    if len(exp.seeds) > 1:
        handles.append(Line2D([], [], linestyle="none", label=f"a panel holds every seed's points ({len(exp.seeds)})"))
    if len(keys) > len(shown):
        handles.append(Line2D([], [], linestyle="none", label=f"the first {len(shown)} of {len(keys)} panels"))
    corner.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.03, 1.0), borderaxespad=0.0,
                  fontsize=9, frameon=False)
    lay_out(fig, named, legend_width(handles, 9), HEADING, exp.summary)
    # lay_out keeps 0.1 inch above the heading; matplotlib puts it 2% of the height down,
    # which in a tall grid of panels runs it into the first row's titles.
    fig.suptitle(fig.get_suptitle(), y=1 - 0.1 / fig.get_size_inches()[1], va="top")
    if gridded:  # each panel's own y tick labels need room beside the panel to its left
        fig.subplots_adjust(wspace=fig.subplotpars.wspace * 2.5)
    return style.save(fig, path)
