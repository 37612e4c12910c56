"""Metrics over training steps: one panel per seed, one colour per variant (grad_norm.png,
loss.png, accuracy.png)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, NamedTuple, Optional

import numpy as np

from . import style
from .describe import chance_accuracy
from .load import Experiment, Run
from .style import (MAX_LINE_POINTS, MAX_PANEL_COLUMNS, TITLE, decade_ticks, legend_width, new_figure, power_ticks,
                    step_axis, text_height, text_width, variant_label, wrap)

def downsample(values: np.ndarray, max_points: int = MAX_LINE_POINTS) -> np.ndarray:
    """Indices of at most ~max_points samples keeping each stride's min and max (spikes
    survive); NaN gaps survive too, because an all-NaN stride contributes a NaN sample."""
    n = len(values)
    if n <= max_points:
        return np.arange(n)
    stride = math.ceil(n / (max_points // 2))
    buckets = math.ceil(n / stride)
    padded = np.full(buckets * stride, np.nan)
    padded[:n] = values
    grid = padded.reshape(buckets, stride)
    nan = np.isnan(grid)
    base = np.arange(buckets) * stride
    lo = base + np.argmin(np.where(nan, np.inf, grid), axis=1)
    hi = base + np.argmax(np.where(nan, -np.inf, grid), axis=1)
    idx = np.unique(np.concatenate([[0, n - 1], lo, hi]))
    return idx[idx < n]


def plottable(values: np.ndarray, log: bool) -> np.ndarray:
    """Values with what cannot be drawn (non-finite; <= 0 on a log axis) as NaN gaps."""
    ok = np.isfinite(values)
    if log:
        ok &= values > 0
    return np.where(ok, values, np.nan)


def use_log(exp: Experiment, columns: list[str], force: bool) -> bool:
    finite = [
        r.metrics[c][np.isfinite(r.metrics[c])] for r in exp.runs for c in columns if c in r.metrics
    ]
    finite = np.concatenate(finite) if finite else np.zeros(0)
    if not np.any(finite > 0):
        return False  # nothing a log axis could show
    return True if force else bool(np.all(finite > 0))


def panel_grid(exp: Experiment, heading: str, legend_width: float = 3.6):
    """One panel per seed (shared axes), titled `seed N`; returns (fig, {seed: ax})."""
    n = len(exp.seeds)
    ncols = min(n, MAX_PANEL_COLUMNS)
    nrows = math.ceil(n / ncols)
    fig = new_figure(4.6 * ncols + legend_width, 3.6 * nrows + 1.1)  # see `lay_out`
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    panels = {}
    for i, (seed, ax) in enumerate(zip(exp.seeds, axes)):
        # A grid experiment's panels are its points (figures.point_panels), titled by their label.
        ax.set_title(seed if isinstance(seed, str) else f"seed {seed if seed is not None else '?'}", **TITLE)
        ax.grid(True, which="major", alpha=0.3)
        # With hidden spare panels the bottom visible one in each column carries the label.
        if i + ncols >= n:
            ax.set_xlabel("step")
            ax.xaxis.set_tick_params(labelbottom=True)
        panels[seed] = ax
    fig.suptitle(f"{heading}\n{wrap(exp.summary, int(fig.get_figwidth() * 10))}")
    return fig, panels


def lay_out(fig, panels: dict, key_width: float, heading: str, summary: str) -> None:
    """Margins from the texts' lengths (constrained layout measured every text, doubling the
    figure's cost): the axis labels left, the suptitle and panel titles above, the key to the
    right (the figure is as wide as the panels and the key)."""
    ncols = min(len(panels), MAX_PANEL_COLUMNS)
    nrows = math.ceil(len(panels) / ncols)
    h = fig.get_size_inches()[1]
    right = key_width + 0.35
    w = 4.6 * ncols + right
    fig.set_size_inches(w, h)
    suptitle = f"{heading}\n{wrap(summary, int(w * 10))}"  # wrapped to the final width
    fig.suptitle(suptitle)
    left = 0.2 + text_height(1, 10) + text_width(["10⁻¹⁰⁰"], 10)
    top = 0.1 + text_height(suptitle.count("\n") + 1, 12) + 0.1 + text_height(1, 12)
    bottom = 0.1 + text_height(2, 10) + 0.1
    panel_w = (w - left - right - 0.3 * (ncols - 1)) / ncols
    panel_h = (h - top - bottom - (text_height(1, 12) + 0.3) * (nrows - 1)) / nrows
    fig.subplots_adjust(left=left / w, right=1 - right / w, top=1 - top / h, bottom=bottom / h,
                        wspace=0.3 / panel_w, hspace=(text_height(1, 12) + 0.3) / panel_h)


# A run that stays finite sets the y range; a diverging one is let in only while it stays
# within this much of that range (decades on a log axis, spans on a linear one). Beyond it,
# the explosion would squash every other line into a flat band: it leaves through the top
# edge instead, marked there with its peak value and step.
KEY_COLOR = "0.5"
ROOM = 1.0
TOP_PAD = 0.08  # of the range: room above the highest healthy line for the edge labels


class View(NamedTuple):
    bottom: float
    top: float
    clipped: bool  # some diverging run goes above `top`: mark it on the edge


def y_view(runs: list[Run], names: list[str], log: bool, thresholds: list[float]) -> Optional[View]:
    """The y range of the panels. When some diverging run would swamp the rest: the range of
    the runs that never diverged and of the drawn thresholds, with a margin (`clipped`).
    Otherwise, on a log axis, every value's range with a margin, computed here because
    matplotlib's own margins overflow for values near 1e±300; on a linear axis None
    (matplotlib's own limits)."""
    def values(runs) -> np.ndarray:
        parts = [plottable(r.metrics[c], log) for r in runs for c in names if c in r.metrics]
        v = np.concatenate(parts) if parts else np.zeros(0)
        return v[~np.isnan(v)]

    healthy = np.concatenate([values([r for r in runs if not r.diverged]), np.asarray(thresholds, float)])
    wild = values([r for r in runs if r.diverged])
    f = np.log10 if log else (lambda x: x)

    def view(bottom: float, top: float, clipped: bool) -> View:
        # Within float64's normal range: 10 ** 309 overflows, 10 ** -330 is 0 on a log axis.
        return View(10 ** max(bottom, -307.0), 10 ** min(top, 307.0), clipped) if log else View(bottom, top, clipped)

    if healthy.size and wild.size:
        lo, hi = float(f(healthy.min())), float(f(healthy.max()))
        span = max(hi - lo, 1.0 if log else abs(hi) * 0.1 or 1.0)
        if float(f(wild.max())) > hi + ROOM * span:
            bottom = min(lo, float(f(wild.min())))
            top = hi + TOP_PAD * 2 * span
            return view(bottom - TOP_PAD * (top - bottom) / 2, top, True)
    every = np.concatenate([healthy, wild])
    if not log or not every.size:
        return None
    lo, hi = float(f(every.min())), float(f(every.max()))
    pad = max(0.05 * (hi - lo), 0.15)
    return view(lo - pad, hi + pad, False)


def mark_off_scale(ax, run: Run, names: list[str], top: float, color: Any, slot: int) -> bool:
    """A triangle on the top edge at the step of the run's peak, labelled with the peak's
    value and step, when the run leaves the panel through the top. `slot` staggers the
    labels of several such runs in one panel. Returns whether it did."""
    steps = run.metrics.get("step")
    peak_value, peak_step = -math.inf, None
    for c in names:
        v = run.metrics.get(c)
        if steps is None or v is None:
            continue
        finite = np.isfinite(v)
        if finite.any():
            i = int(np.argmax(np.where(finite, v, -np.inf)))
            if v[i] > peak_value:
                peak_value, peak_step = float(v[i]), int(steps[i])
    if peak_step is None or peak_value <= top:
        return False
    edge = ax.get_xaxis_transform()  # x in steps, y in axes fractions
    ax.plot([peak_step], [1.0], transform=edge, clip_on=False, marker="^", markersize=8, color=color,
            linestyle="none", zorder=6)
    ax.annotate(f"{run.variant}: {peak_value:.3g} at step {peak_step}", (peak_step, 1.0), xycoords=edge,
                xytext=(6, -12 - 11 * slot), textcoords="offset points", fontsize=7.5, color=color,
                ha="left", va="center", zorder=6)
    return True


def mark_divergence(ax, run: Run, column: str, log: bool, color: Any, top: Optional[float] = None):
    """An x at the divergence step, on the last drawable value before it (or at the top)."""
    from matplotlib.lines import Line2D

    step = run.divergence_step
    label = f"{run.variant}: diverged at step {step if step is not None else '?'}"
    steps, values = run.metrics.get("step"), run.metrics.get(column)
    if step is None and steps is not None and len(steps):
        step = int(steps[-1])
    mark = dict(marker="x", color=color, markersize=10, markeredgewidth=2.2, linestyle="none", zorder=5)
    y = None
    if steps is not None and values is not None and step is not None:
        ok = np.flatnonzero((steps <= step) & ~np.isnan(plottable(values, log)))
        y = float(values[ok[-1]]) if len(ok) else None
    if step is not None:
        if y is not None and (top is None or y <= top):
            ax.plot([step], [y], **mark)
        else:
            # Off the top (an explosion the view leaves out), or nothing finite to sit on (a
            # run non-finite from its first step): on the top edge, where its values went.
            ax.plot([step], [1.0], transform=ax.get_xaxis_transform(), clip_on=False, **mark)
            if y is None:
                label += " (no finite value)"
    return Line2D([], [], label=label, **mark)


def draw_over_steps(
    exp: Experiment,
    columns: list[tuple[str, str, str]],
    *,
    ylabel: str,
    heading: str,
    path: Path,
    force_log: bool,
    thresholds: bool,
    ylim: Optional[tuple[float, float]] = None,
    reference: Optional[tuple[float, str]] = None,
) -> Path:
    """Metric column(s) over steps, one panel per seed, one colour per variant.

    `columns` are (csv column, linestyle, meaning); the first one carries the divergence
    marks. Norm-clipping thresholds are drawn when `thresholds` is set. `ylim` fixes a
    linear y range (accuracy: [0, 1]); `reference` is a (value, fraction) chance level.
    """
    from matplotlib.lines import Line2D

    names = [c for c, _, _ in columns]
    log = False if ylim is not None else use_log(exp, names, force_log)
    # Only an L2 max_norm is on the scale of grad_norm (always the L2 norm); a value or
    # L-inf threshold drawn there would look violated when it is not.
    drawn = {r.variant: r.threshold for r in exp.runs
             if thresholds and r.method == "norm" and r.threshold and r.norm_type in (None, 2.0)}
    view = None if ylim is not None else y_view(exp.runs, names, log, list(drawn.values()))
    top = view.top if view and view.clipped else None
    fig, panels = panel_grid(exp, heading)
    few = max((len(r.metrics.get("step", ())) for r in exp.runs), default=0) <= 20
    diverged_handles: dict[Any, list] = {s: [] for s in exp.seeds}
    off = {s: 0 for s in exp.seeds}  # runs marked off the top of each panel so far
    for run in sorted(exp.runs, key=lambda r: exp.variants.index(r.variant)):
        ax, color = panels[run.seed], exp.colors[run.variant]
        steps = run.metrics.get("step")
        for col, dash, _ in columns:
            values = run.metrics.get(col)
            if steps is None or values is None:
                continue
            if col != names[0] and run.method == "none" and col not in MEASURED_SOMETIMES:
                continue  # the baseline is never clipped: its second line would hide the first
            if col in MEASURED_SOMETIMES:  # a line through the steps measured, not NaN gaps between them
                measured = ~np.isnan(values)
                steps_drawn, values = steps[measured], values[measured]
            else:
                steps_drawn = steps
            y = plottable(values, log)
            idx = downsample(y)
            ax.plot(
                steps_drawn[idx], y[idx], linestyle=dash, color=color, linewidth=1.4,
                marker="." if few else None, alpha=0.95 if col == names[0] else 0.85,
            )
        if run.variant in drawn:
            ax.axhline(drawn[run.variant], color=color, linestyle=":", linewidth=1.5, zorder=4)
            # Named at its right end, so that two thresholds of one colour family are told apart.
            ax.annotate(f"{style.fmt(drawn[run.variant])}", (1.0, drawn[run.variant]),
                        xycoords=ax.get_yaxis_transform(), xytext=(-3, 2), textcoords="offset points",
                        fontsize=7.5, color=color, ha="right", va="bottom", zorder=4)
        if run.diverged:
            diverged_handles[run.seed].append(mark_divergence(ax, run, names[0], log, color, top))
            if top is not None:
                off[run.seed] += mark_off_scale(ax, run, names, top, color, off[run.seed])

    # The whole configured training horizon, so that an early divergence looks early.
    firsts = [r.metrics["step"][0] for r in exp.runs if len(r.metrics.get("step", ()))]
    lasts = [r.metrics["step"][-1] for r in exp.runs if len(r.metrics.get("step", ()))]
    first = float(min(firsts, default=0.0))
    step_axis(next(iter(panels.values())), first, max(float(max(lasts, default=first)), (exp.steps or 0) - 1.0))
    for seed, ax in panels.items():
        if view is not None and ylim is None:
            ax.set_ylim(view.bottom, view.top)  # before the log scale, whose autoscale would overflow
        if log:
            ax.set_yscale("log")
            lo, hi = ax.get_ylim()
            decade_ticks(ax.yaxis, lo, hi)  # over 12 decades, matplotlib's locator picks odd ones (or overflows)
            if math.log10(hi) - math.log10(lo) >= 2:  # decades among the ticks: labelled without mathtext
                power_ticks(ax.yaxis)
        if ylim is not None:
            margin = 0.02 * (ylim[1] - ylim[0])  # a line at exactly 0 or 1 stays visible
            ax.set_ylim(ylim[0] - margin, ylim[1] + margin)
        if reference is not None:
            ax.axhline(reference[0], color="0.55", linestyle=":", linewidth=1.3, zorder=1)
        if diverged_handles[seed]:
            ax.legend(handles=diverged_handles[seed], loc="best", fontsize=8, framealpha=0.85)
    for i, ax in enumerate(panels.values()):
        if i % MAX_PANEL_COLUMNS == 0:
            ax.set_ylabel(ylabel + (" (log scale)" if log else ""))

    # One key for the whole figure: which colour is which variant, which line style is what.
    present = [v for v in exp.variants if any(r.variant == v for r in exp.runs)]
    handles = [Line2D([], [], color=exp.colors[v], linewidth=2, label=variant_label(exp, v)) for v in present]
    # The line-style key in grey under its own heading: a black "before clipping" line would
    # read as a second entry for the (black) baseline.
    key = [Line2D([], [], color=KEY_COLOR, linestyle=s, label=m) for _, s, m in columns] if len(columns) > 1 else []
    if drawn:
        key.append(Line2D([], [], color=KEY_COLOR, linestyle=":", linewidth=1.5, label="max_norm threshold"))
    if any(off.values()):
        key.append(Line2D([], [], color=KEY_COLOR, marker="^", markersize=8, linestyle="none",
                          label="off the scale: peak value, step"))
    if key:
        handles += [Line2D([], [], linestyle="none", label="")] + key
    if thresholds and any(r.method == "value" or (r.method == "norm" and r.norm_type not in (None, 2.0)) for r in exp.runs):
        handles.append(Line2D([], [], linestyle="none", label="(value-clipping and non-L2 thresholds\nare not L2 norms: not drawn)"))
    if reference is not None:
        handles.append(Line2D([], [], color="0.55", linestyle=":", linewidth=1.3, label=f"chance ({reference[1]})"))
    if any(r.diverged for r in exp.runs):
        handles.append(Line2D([], [], color=KEY_COLOR, marker="x", markeredgewidth=2, linestyle="none",
                              label="diverged (NaN/inf)"))
    return key_and_save(fig, panels, handles, heading, exp.summary, path)


def key_and_save(fig, panels: dict, handles: list, heading: str, summary: str, path):
    """The key to the right of the first row's last panel, the margins, the PNG.

    Hung off that panel rather than the figure: a figure legend starts at the very top, where
    a narrow (one-seed) figure's title runs into it. Only an axes' own legend counts for the
    layout, so that panel's divergence legend becomes an artist."""
    corner = list(panels.values())[min(len(panels), MAX_PANEL_COLUMNS) - 1]
    if corner.get_legend() is not None:
        corner.add_artist(corner.get_legend())
    corner.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.03, 1.0), borderaxespad=0.0,
                  fontsize=9, frameon=False)
    lay_out(fig, panels, legend_width(handles, 9), heading, summary)
    return style.save(fig, path)




def draw_grad_norm(exp: Experiment, path: Path) -> Path:
    return draw_over_steps(
        exp, [("grad_norm", "-", "before clipping"), ("clipped_norm", "--", "after clipping")],
        ylabel="global gradient L2 norm", heading="Gradient norm per step", path=path, force_log=True, thresholds=True)


# Columns measured on some steps only (NaN on the others): the held-out loss and accuracy.
MEASURED_SOMETIMES = ("val_loss", "val_accuracy")


def draw_loss(exp: Experiment, path: Path) -> Path:
    """The training loss, and the held-out loss dashed in the run's colour where the runs
    measured one (runs written before it existed draw as they did)."""
    if any("val_loss" in r.metrics for r in exp.runs):
        return draw_over_steps(exp, [("loss", "-", "training (batch)"), ("val_loss", "--", "held-out")],
                               ylabel="loss", heading="Training and held-out loss per step",
                               path=path, force_log=False, thresholds=False)
    return draw_over_steps(exp, [("loss", "-", "loss")], ylabel="training loss", heading="Training loss per step",
                           path=path, force_log=False, thresholds=False)


def draw_accuracy(exp: Experiment, path: Path) -> Path:
    """Classification tasks only: linear in [0, 1], with the chance level; the held-out
    accuracy dashed where the runs measured one."""
    if any("val_accuracy" in r.metrics for r in exp.runs):
        return draw_over_steps(exp, [("accuracy", "-", "training (batch)"), ("val_accuracy", "--", "held-out")],
                               ylabel="accuracy", heading="Training and held-out accuracy per step", path=path,
                               force_log=False, thresholds=False, ylim=(0.0, 1.0),
                               reference=chance_accuracy(exp.config))
    return draw_over_steps(exp, [("accuracy", "-", "accuracy")], ylabel="training accuracy (batch)",
                           heading="Training accuracy per step", path=path, force_log=False, thresholds=False,
                           ylim=(0.0, 1.0), reference=chance_accuracy(exp.config))
