"""A threshold sweep's figures: final loss, divergence step and clip fraction against the
threshold, and one seed's gradient norms coloured by threshold."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import numpy as np

from . import style
from .load import Experiment, Run
from .over_steps import downsample, mark_divergence, mark_off_scale, plottable, y_view
from .style import (BASELINE_COLOR, TITLE, TITLE_CHARS, decade_ticks, few_decade_ticks, fmt, key_width, margins, new_figure,
                    spare_minor_ticks, step_axis, text_height, text_width, wrap)
from .sweep import MAX_BASELINE_LINES, MAX_THRESHOLD_TICKS, MEAN_LINE, SEED_LINE, Family, Sweep, _finite


def _fmt_loss(x: float) -> str:
    return f"{x:.3g}"


def _survivor_loss(r: Optional[Run]) -> Optional[float]:
    """A final loss to compare: a diverged run's report keeps its last finite loss, which is none."""
    return r.final_loss if r is not None and not r.diverged and _finite(r.final_loss) else None


def _span(steps: list[int]) -> str:
    """'7' or '4-7'."""
    lo, hi = min(steps), max(steps)
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def _at_steps(steps: list[int]) -> str:
    """'step 7' or 'steps 4-7'."""
    return f"step{'s' if min(steps) != max(steps) else ''} {_span(steps)}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def _sweep_figure(exp: Experiment, sweep: Sweep, heading: str, width: float = 10.5, height: float = 5.2):
    fig = new_figure(width, height)  # laid out by `_legend_right`, the last call
    ax = fig.subplots()
    ax.grid(True, which="major", alpha=0.3)
    seeds = ", ".join("?" if s is None else str(s) for s in sweep.seeds)
    text = f"{exp.summary}, {_plural(len(sweep.seeds), 'seed')} ({seeds})"
    fig.suptitle(f"{heading}\n{wrap(text, int(width * 10))}")
    return fig, ax


def _threshold_axis(ax, sweep: Sweep) -> None:
    """Log x over the thresholds, each of them a labelled tick when there are few."""
    from matplotlib.ticker import NullLocator

    thresholds = sweep.thresholds
    lo, hi = min(thresholds), max(thresholds)
    span = math.log10(hi) - math.log10(lo)
    pad = 0.5 if span == 0 else max(0.12, 0.07 * span)
    # The limits before the log scale, whose autoscale overflows for thresholds near 1e±300.
    ax.set_xlim(10 ** max(math.log10(lo) - pad, -307.0), 10 ** min(math.log10(hi) + pad, 307.0))
    ax.set_xscale("log")
    if len(thresholds) <= MAX_THRESHOLD_TICKS:
        ax.set_xticks(thresholds, [fmt(t) for t in thresholds])
        ax.xaxis.set_minor_locator(NullLocator())
    else:
        spare_minor_ticks(ax.xaxis, *ax.get_xlim())
    quantity = " / ".join(dict.fromkeys(f.quantity for f in sweep.families))
    ax.set_xlabel(f"clipping threshold: {quantity} (log scale)")


def _legend_right(ax, entries: list[tuple[Any, str]]) -> None:
    """The key to the right of the axes; a handle may be a tuple of artists drawn as one."""
    from matplotlib.legend_handler import HandlerTuple

    if entries:
        ax.legend([h for h, _ in entries], [label for _, label in entries], loc="upper left",
                  bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=9, frameon=False, labelspacing=0.9,
                  handler_map={tuple: HandlerTuple(ndivide=None, pad=0.0)})
    # The margins from the texts' lengths (constrained layout measured every text: half the
    # figure's cost): the key right, the suptitle (and a left title) above, the axis labels.
    fig = ax.figure
    suptitle = fig._suptitle.get_text() if fig._suptitle is not None else ""
    left_title = 1 if ax.get_title(loc="left") else 0
    ax.set_position(margins(
        fig, left=0.2 + text_height(1, 10) + text_width(["0.0001"], 10),
        right=0.35 + key_width([label for _, label in entries], 9),
        top=0.15 + text_height(suptitle.count("\n") + 1, 12) + 0.1 + text_height(left_title, 9),
        bottom=0.15 + text_height(2, 10) + 0.1))


def _prefix(sweep: Sweep, fam: Family) -> str:
    return f"{fam.name}: " if len(sweep.families) > 1 else ""


def _family_entries(exp: Experiment, sweep: Sweep, fam: Family, mean: str) -> list[tuple[Any, str]]:
    from matplotlib.lines import Line2D

    prefix = _prefix(sweep, fam)
    face = exp.colors.get(fam.variants[fam.thresholds[len(fam.thresholds) // 2]], fam.color)
    return [
        (Line2D([], [], color=fam.color, marker=".", markersize=6, **SEED_LINE), f"{prefix}one seed"),
        (Line2D([], [], color=fam.color, marker="o", markerfacecolor=face, markeredgecolor="black", **MEAN_LINE),
         f"{prefix}{mean}"),
    ]


def draw_final_loss(exp: Experiment, sweep: Sweep, path: Path) -> Path:
    """Final loss against threshold: a thin line per seed, a thick one for the mean over the
    seeds that did not diverge, the baseline as a band, diverged runs as x on the top edge."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig, ax = _sweep_figure(exp, sweep, "Final training loss against the clipping threshold")
    edge = ax.get_xaxis_transform()  # x in data, y in axes fractions
    shown: list[float] = []
    entries: list[tuple[Any, str]] = []
    partial = diverged = False
    for fam in sweep.families:
        for seed in sweep.seeds:
            ys = [_survivor_loss(fam.runs.get((seed, t))) for t in fam.thresholds]
            ax.plot(fam.thresholds, [np.nan if y is None else y for y in ys], color=fam.color, marker=".",
                    markersize=6, zorder=2, **SEED_LINE)
            shown += [y for y in ys if y is not None]
        xs, means, fills = [], [], []
        for t in fam.thresholds:
            runs = fam.at(t)
            ok = [y for y in map(_survivor_loss, runs) if y is not None]
            bad = sum(r.diverged for r in runs)
            if ok:
                xs.append(t)
                means.append(fam.rows[t].mean_loss)  # the table's number
                full = len(ok) == len(runs)
                fills.append(exp.colors.get(fam.variants[t], fam.color) if full else "white")
                partial |= not full
            if bad:
                diverged = True
                ax.plot([t], [0.955], transform=edge, marker="x", color=fam.color, markersize=9, markeredgewidth=2.2,
                        linestyle="none", clip_on=False, zorder=5)
                ax.annotate(f"{bad}/{len(runs)} div", (t, 0.955), xycoords=edge, xytext=(0, -8),
                            textcoords="offset points", ha="center", va="top", fontsize=8, color=fam.color)
        shown += means
        ax.plot(xs, means, color=fam.color, zorder=4, **MEAN_LINE)
        ax.scatter(xs, means, c=fills, edgecolors="black", linewidths=0.8, s=55, zorder=5)
        entries += _family_entries(exp, sweep, fam, "mean over the seeds\nthat did not diverge")
    if partial:
        entries.append((Line2D([], [], marker="o", markerfacecolor="white", markeredgecolor="black", linestyle="none"),
                        "hollow: some seeds diverged there\n(the mean of the others)"))
    if diverged:
        entries.append((Line2D([], [], marker="x", color="black", markeredgewidth=2, linestyle="none"),
                        "top edge: diverged, so no final loss\n(k/n: seeds at that threshold)"))

    base = sweep.baseline
    if base:
        ok = [y for y in map(_survivor_loss, base) if y is not None]
        steps = [r.divergence_step for r in base if r.diverged and r.divergence_step is not None]
        gone = sum(r.diverged for r in base)
        at = f" at {_at_steps(steps)}" if steps else ""
        if ok:
            lo, hi = min(ok), max(ok)
            line = Line2D([], [], color=BASELINE_COLOR, linestyle="--", linewidth=1.4)
            ax.axhline(float(np.mean(ok)), color=BASELINE_COLOR, linestyle="--", linewidth=1.4, zorder=3)
            if hi > lo:
                ax.axhspan(lo, hi, facecolor=BASELINE_COLOR, alpha=0.15, edgecolor="none", zorder=1)
                handle: Any = (Patch(facecolor=BASELINE_COLOR, alpha=0.15, edgecolor="none"), line)
                what = f"band: {_fmt_loss(lo)}-{_fmt_loss(hi)} (min-max),\ndashed: mean"
            else:
                handle, what = line, f"final loss {_fmt_loss(lo)}"
            label = f"no clipping (none), {len(ok)} of {_plural(len(base), 'seed')}:\n{what}"
            if gone:
                label += f"; diverged in\n{_plural(gone, 'seed')}{at}"
            entries.append((handle, label))
            shown += ok
        else:
            entries.append((Line2D([], [], marker="x", color=BASELINE_COLOR, markeredgewidth=2, linestyle="none"),
                            f"no clipping (none): diverged in\nevery seed{at}: no final loss"))
            # Above the axes, where no mark can sit under it.
            every = {1: "its one seed", 2: "both seeds"}.get(len(base), f"all {len(base)} seeds")
            ax.set_title(f"no clipping: diverged in {every}{at}", loc="left", fontsize=9, color=BASELINE_COLOR, **TITLE)

    log = bool(shown) and min(shown) > 0
    if log:
        ax.set_yscale("log")
        lo, hi = math.log10(min(shown)), math.log10(max(shown))
        span = max(hi - lo, 0.5)
        ax.set_ylim(10 ** (lo - 0.06 * span), 10 ** (hi + 0.22 * span))  # the top strip: divergence marks
        few_decade_ticks(ax.yaxis, *ax.get_ylim())
    elif shown:
        lo, hi = min(shown), max(shown)
        span = max(hi - lo, 0.1 * abs(hi), 1e-12)
        ax.set_ylim(lo - 0.06 * span, hi + 0.22 * span)
    else:
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no run trained to the end: no final loss to show", transform=ax.transAxes,
                ha="center", va="center", fontsize=11, color="0.35")
    _threshold_axis(ax, sweep)
    ax.set_ylabel("final training loss" + (" (log scale)" if log else ""))
    _legend_right(ax, entries)
    return style.save(fig, path)


def draw_divergence(exp: Experiment, sweep: Sweep, path: Path) -> Path:
    """Divergence step against threshold: x where a seed diverged, a circle on the
    end-of-training line where it did not; the baseline's steps as a band."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    fig, ax = _sweep_figure(exp, sweep, "Divergence step against the clipping threshold")
    steps_seen = [r.divergence_step for f in sweep.families for r in f.runs.values() if r.diverged and r.divergence_step is not None]
    steps_seen += [r.divergence_step for r in sweep.baseline if r.diverged and r.divergence_step is not None]
    end = sweep.total if sweep.total else max(steps_seen, default=0) + 1
    entries: list[tuple[Any, str]] = []
    any_diverged = False
    for fam in sweep.families:
        for seed in sweep.seeds:
            ys = []
            for t in fam.thresholds:
                r = fam.runs.get((seed, t))
                ys.append(np.nan if r is None or (r.diverged and r.divergence_step is None)
                          else (r.divergence_step if r.diverged else end))
            ax.plot(fam.thresholds, ys, color=fam.color, zorder=2, **SEED_LINE)
        div = [(t, r.divergence_step) for t in fam.thresholds for r in fam.at(t) if r.diverged and r.divergence_step is not None]
        if div:
            any_diverged = True
            ax.plot([t for t, _ in div], [s for _, s in div], marker="x", color=fam.color, markersize=9,
                    markeredgewidth=2.2, linestyle="none", zorder=5)
        for t in fam.thresholds:
            runs = fam.at(t)
            ok = sum(not r.diverged for r in runs)
            if ok:
                ax.plot([t], [end], marker="o", markerfacecolor="white", markeredgecolor=fam.color, markeredgewidth=1.8,
                        markersize=8, linestyle="none", zorder=5, clip_on=False)
            ax.annotate(f"{ok}/{len(runs)} ok", (t, end), xytext=(0, 8), textcoords="offset points", ha="center",
                        va="bottom", fontsize=8, color=fam.color)
        prefix = _prefix(sweep, fam)
        entries.append((Line2D([], [], color=fam.color, **SEED_LINE), f"{prefix}one seed"))
        if div:
            entries.append((Line2D([], [], marker="x", color=fam.color, markeredgewidth=2.2, markersize=9, linestyle="none"),
                            f"{prefix}diverged: first NaN/inf at that step"))
        entries.append((Line2D([], [], marker="o", markerfacecolor="white", markeredgecolor=fam.color, markeredgewidth=1.8,
                               markersize=8, linestyle="none"), f"{prefix}did not diverge\n(k/n ok: seeds that trained to the end)"))
    ax.axhline(end, color="0.45", linestyle=":", linewidth=1.3, zorder=1)
    entries.append((Line2D([], [], color="0.45", linestyle=":", linewidth=1.3),
                    f"end of training ({_plural(end, 'step')})" if sweep.total else "end of the longest run"))
    if not any_diverged:
        ax.text(0.5, 0.45, "no clipped run diverged", transform=ax.transAxes, ha="center", va="center",
                fontsize=12, color="0.4")

    base = sweep.baseline
    if base:
        steps = sorted(r.divergence_step for r in base if r.diverged and r.divergence_step is not None)
        ok = sum(not r.diverged for r in base)
        if steps:
            lo, hi = steps[0], steps[-1]
            ax.axhspan(lo - 0.5, hi + 0.5, facecolor=BASELINE_COLOR, alpha=0.15, edgecolor="none", zorder=1)
            line = Line2D([], [], color=BASELINE_COLOR, linestyle="--", linewidth=1.2)
            if len(steps) <= MAX_BASELINE_LINES:
                for s in sorted(set(steps)):
                    ax.axhline(s, color=BASELINE_COLOR, linestyle="--", linewidth=1.2, zorder=1)
                handle: Any = (Patch(facecolor=BASELINE_COLOR, alpha=0.15, edgecolor="none"), line)
                what = "band: range;\ndashed: each seed"
            else:
                handle, what = Patch(facecolor=BASELINE_COLOR, alpha=0.15, edgecolor="none"), "band: its range"
            label = f"no clipping (none): diverged at {_at_steps(steps)}\nin {len(steps)} of {_plural(len(base), 'seed')} ({what})"
            ax.annotate(f"no clipping: diverged at {_at_steps(steps)}", (0.01, hi + 0.5),
                        xycoords=ax.get_yaxis_transform(), xytext=(0, 3), textcoords="offset points",
                        ha="left", va="bottom", fontsize=9, color=BASELINE_COLOR)
            if ok:
                label += f";\ndid not diverge in {_plural(ok, 'seed')}"
            entries.append((handle, label))
        else:
            entries.append((Line2D([], [], marker="o", markerfacecolor="white", markeredgecolor=BASELINE_COLOR, linestyle="none"),
                            f"no clipping (none): did not diverge\nin any of {_plural(len(base), 'seed')}"))

    _threshold_axis(ax, sweep)
    ax.set_ylim(-0.02 * end, end * 1.12)  # room above the end line for the counts
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("divergence step (first NaN/inf)")
    _legend_right(ax, entries)
    return style.save(fig, path)


def draw_clip_fraction(exp: Experiment, sweep: Sweep, path: Path) -> Path:
    """Fraction of steps clipped against threshold, a thin line per seed and the mean."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import PercentFormatter

    fig, ax = _sweep_figure(exp, sweep, "Fraction of steps clipped against the clipping threshold")
    entries: list[tuple[Any, str]] = []
    any_diverged = False
    for fam in sweep.families:
        for seed in sweep.seeds:
            runs = [fam.runs.get((seed, t)) for t in fam.thresholds]
            ys = [r.clip_fraction if r is not None and _finite(r.clip_fraction) else np.nan for r in runs]
            ax.plot(fam.thresholds, ys, color=fam.color, marker=".", markersize=6, zorder=2, **SEED_LINE)
            bad = [(t, y) for t, r, y in zip(fam.thresholds, runs, ys) if r is not None and r.diverged and np.isfinite(y)]
            if bad:
                any_diverged = True
                ax.plot([t for t, _ in bad], [y for _, y in bad], marker="x", color=fam.color, markersize=8,
                        markeredgewidth=2, linestyle="none", zorder=6, clip_on=False)
        xs, means = [], []
        for t in fam.thresholds:
            mean = fam.rows[t].clip_fraction  # the table's number
            if mean is not None:
                xs.append(t)
                means.append(mean)
        ax.plot(xs, means, color=fam.color, zorder=4, **MEAN_LINE)
        ax.scatter(xs, means, c=[exp.colors.get(fam.variants[t], fam.color) for t in xs], edgecolors="black",
                   linewidths=0.8, s=55, zorder=5, clip_on=False)
        entries += _family_entries(exp, sweep, fam, "mean over the seeds")
    if any_diverged:
        entries.append((Line2D([], [], marker="x", color="black", markeredgewidth=2, linestyle="none"),
                        "diverged: the fraction of the steps\nbefore its divergence"))
    if sweep.baseline:
        entries.append((Line2D([], [], linestyle="none"), "(the baseline, none, never clips:\nnot drawn)"))
    _threshold_axis(ax, sweep)
    ax.set_ylim(-0.03, 1.03)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.set_ylabel("steps on which the gradient was clipped")
    _legend_right(ax, entries)
    return style.save(fig, path)


def draw_grad_norm(exp: Experiment, sweep: Sweep, seed: Optional[int], path: Path) -> Path:
    """The global gradient norm over steps of every threshold of one seed (and its baseline),
    coloured by threshold on the sweep's sequential colormap, with a colour bar per family."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.lines import Line2D

    fig = new_figure(11.0, 5.8)  # laid out below, before the colour bars take their share
    ax = fig.subplots()
    ax.grid(True, which="major", alpha=0.3)
    runs = [r for r in sweep.baseline if r.seed == seed]
    runs += [r for f in sweep.families for t in f.thresholds for r in [f.runs.get((seed, t))] if r is not None]
    drawn: list[float] = []
    diverged = False
    thresholds_drawn = False
    few = max((len(r.metrics.get("step", ())) for r in runs), default=0) <= 20
    # An explosion far above the rest leaves through the top, marked with its peak (see
    # over_steps.y_view), instead of squashing the thresholds being compared.
    view = y_view(runs, ["grad_norm"], True, [r.threshold for r in runs if r.method == "norm"
                                               and r.norm_type in (None, 2.0) and _finite(r.threshold)])
    off = 0
    for r in runs:
        color = BASELINE_COLOR if r.method == "none" else exp.colors.get(r.variant, "0.5")
        steps, values = r.metrics.get("step"), r.metrics.get("grad_norm")
        if steps is not None and values is not None and len(steps):
            y = plottable(values, log=True)
            idx = downsample(y)
            # The baseline first and under the clipped runs: where it does not explode it
            # would otherwise hide the lines being compared.
            ax.plot(steps[idx], y[idx], color=color, linewidth=1.7 if r.method == "none" else 1.3,
                    marker="." if few else None, zorder=2)
            if (~np.isnan(y)).any():
                drawn += [float(np.nanmin(y)), float(np.nanmax(y))]
        # Only an L2 max_norm is on the scale of grad_norm (always the L2 norm).
        if r.method == "norm" and r.norm_type in (None, 2.0) and _finite(r.threshold):
            ax.axhline(r.threshold, color=color, linestyle=":", linewidth=1.2, zorder=1)
            thresholds_drawn = True
            drawn.append(r.threshold)
        if r.diverged:
            diverged = True
            mark_divergence(ax, r, "grad_norm", True, color, view.top if view and view.clipped else None)
            if view and view.clipped:
                off += mark_off_scale(ax, r, ["grad_norm"], view.top, color, off)

    if view and view.clipped:
        ax.set_ylim(view.bottom, view.top)  # before the log scale, whose autoscale would overflow
    elif drawn:
        lo, hi = math.log10(min(drawn)), math.log10(max(drawn))
        pad = max(0.15, 0.05 * (hi - lo), (1.0 - (hi - lo)) / 2)
        ax.set_ylim(10 ** max(lo - pad, -300.0), 10 ** min(hi + pad, 300.0))
    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    (few_decade_ticks if math.log10(hi) - math.log10(lo) <= 3 else decade_ticks)(ax.yaxis, lo, hi)
    firsts = [r.metrics["step"][0] for r in runs if len(r.metrics.get("step", ()))]
    lasts = [r.metrics["step"][-1] for r in runs if len(r.metrics.get("step", ()))]
    first = float(min(firsts, default=0.0))
    step_axis(ax, first, max(float(max(lasts, default=first)), (sweep.total or 0) - 1.0))
    ax.set_xlabel("step")
    ax.set_ylabel("global gradient L2 norm, before clipping (log scale)")
    title = (f"Gradient norm per step, seed {seed if seed is not None else '?'}: one line per threshold\n"
             f"{wrap(exp.summary, TITLE_CHARS)}")
    ax.set_title(title, fontsize=11, **TITLE)

    entries: list[tuple[Any, str]] = []
    if any(r.method == "none" for r in runs):
        entries.append((Line2D([], [], color=BASELINE_COLOR, linewidth=1.7), "no clipping (none)"))
    entries.append((Line2D([], [], color="0.4", linewidth=1.3),
                    f"one threshold (colour bar{'s' if len(sweep.families) > 1 else ''})"))
    if thresholds_drawn:
        entries.append((Line2D([], [], color="0.4", linestyle=":", linewidth=1.2), "its max_norm, same colour"))
    if any(f.method == "value" or (f.method == "norm" and f.norm_type not in (None, 2.0)) for f in sweep.families):
        entries.append((Line2D([], [], linestyle="none"), "(clip_value and non-L2 thresholds are\nnot L2 norms: not drawn)"))
    if off:
        entries.append((Line2D([], [], color="0.4", marker="^", markersize=8, linestyle="none"),
                        "off the scale: peak value, step"))
    if diverged:
        entries.append((Line2D([], [], color="black", marker="x", markeredgewidth=2, markersize=9, linestyle="none"),
                        "diverged (NaN/inf)"))

    # A fixed layout (see _legend_right): each colour bar takes its share of the axes' width;
    # the outermost one's labels need ~0.9 inch of margin, the others' fit in the gap that
    # separates the bars; the key goes below, in as many rows as it needs.
    bar_room = 0.9
    ncol = len(entries)  # as many to a row as the figure's width holds
    while ncol > 1 and ncol * max(key_width([label], 9) + 0.25 for _, label in entries) > fig.get_figwidth() - 0.3:
        ncol -= 1
    rows = math.ceil(len(entries) / ncol)
    ax.set_position(margins(
        fig, left=0.2 + text_height(1, 10) + text_width(["10⁻¹⁰⁰"], 10), right=0.15 + bar_room,
        top=0.15 + text_height(title.count("\n") + 1, 11),
        bottom=0.15 + text_height(2, 10) + 0.25 + rows * (text_height(max(l.count("\n") + 1 for _, l in entries), 9) + 0.1)))
    axes_width = ax.get_position().width * fig.get_figwidth()
    for i, fam in enumerate(reversed(sweep.families)):  # the last colour bar made sits next to the axes
        colors = [exp.colors.get(fam.variants[t], fam.color) for t in fam.thresholds]
        n = len(colors)
        mappable = ScalarMappable(norm=BoundaryNorm(np.arange(n + 1), n), cmap=ListedColormap(colors))
        # A bar made earlier sits further out: its gap holds the labels of the bar made after it.
        pad = bar_room / axes_width if i < len(sweep.families) - 1 else 0.015
        bar = fig.colorbar(mappable, ax=ax, pad=pad, fraction=0.05, aspect=30, use_gridspec=False)
        every = max(1, math.ceil(n / MAX_THRESHOLD_TICKS))
        ticks = np.arange(0, n, every)
        bar.set_ticks(ticks + 0.5, labels=[fmt(fam.thresholds[i]) for i in ticks])
        bar.ax.tick_params(length=0)
        bar.set_label(f"{fam.quantity}: the colour of its line")

    fig.legend([h for h, _ in entries], [label for _, label in entries], loc="lower center", bbox_to_anchor=(0.5, 0.0),
               ncol=ncol, fontsize=9, frameon=False)
    return style.save(fig, path)
