"""A grid experiment's figures: stability maps (a heatmap per pair of axes) and the final loss
against each grid axis (gradlab.plots.grid says which there are and what they show)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

from gradlab import stability

from . import style
from .load import Experiment
from .style import BASELINE_COLOR, few_decade_ticks, margins, new_figure, text_height, text_width, wrap

DIVERGED_COLOR = "#bdbdbd"  # every seed of the cell diverged: no loss to colour it by
EMPTY_COLOR = "white"  # no run at that cell (not finished yet)
BEST_COLOR = "#e31a1c"
MAP_CMAP = "viridis_r"  # the lowest loss brightest: the eye goes to the good cells
CELL = 0.95  # inches a cell takes at most
MAX_CELL_TEXT = 14  # more cells than this on an axis: no number in each cell (the colour says it)
SEED_POINT = dict(marker=".", markersize=5, alpha=0.55, linestyle="none")
MEAN_LINE = dict(linewidth=2.4, marker="o", markersize=7, markeredgecolor="black", markeredgewidth=0.8)


def _loss_words(grid: stability.Grid) -> str:
    return "final held-out loss" if grid.key == "final_val_loss" else "final training loss"


def _others(grid: stability.Grid, keys: tuple[str, ...]) -> list[stability.Axis]:
    """The axes a view leaves out (best over them at each cell), of two or more values."""
    return [a for a in grid.axes if a.key not in keys and len(a.values) >= 2]


def _heading_lines(exp: Experiment, heading: str, grid: stability.Grid, keys: tuple[str, ...], width: float) -> str:
    others = _others(grid, keys)
    n = len(grid.seeds)
    seeds = f"{n} seed{'s' if n != 1 else ''} ({', '.join(str(s) for s in grid.seeds)})"
    chars = int(width * 10)
    summary = wrap(exp.summary, chars)
    # The seeds whole, on the summary's last line if they fit (wrap would break their list).
    fits = len(summary.rsplit("\n", 1)[-1]) + 2 + len(seeds) <= chars
    lines = [heading, summary + (", " if fits else ",\n") + seeds]
    if others:
        lines.append(_others_line(others))
    return "\n".join(lines)


def _others_line(others: list[stability.Axis]) -> str:
    return f"each cell: the best over {', '.join(a.name for a in others)} (most seeds trained, then lowest mean loss)"


def _value_label(axis: stability.Axis, v: Any) -> str:
    return "none (no clipping)" if axis.key == stability.CLIPPING and v == "none" else axis.label(v)


def _norm(values: list[float]):
    """A log colour scale where the losses span a decade or more (and are positive), else linear."""
    from matplotlib.colors import LogNorm, Normalize

    if not values:
        return Normalize(0.0, 1.0), False
    lo, hi = min(values), max(values)
    if lo > 0 and hi / lo >= 10:
        return LogNorm(lo, hi), True
    if hi <= lo:
        pad = abs(lo) * 0.1 or 1.0
        return Normalize(lo - pad, hi + pad), False
    return Normalize(lo, hi), False


def _text_color(rgba) -> str:
    r, g, b = rgba[:3]
    return "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"


def draw_stability_map(exp: Experiment, grid: stability.Grid, keys: tuple[str, str], path: Path) -> Path:
    """One pair of axes: x the first, y the second (the clipping variants, when they are one of
    them), a cell per pair of values coloured by the mean final loss over the seeds that
    trained; a cell where seeds diverged says how many ("div 1/3") and is hatched, grey when
    every seed diverged; the best cell that trained in every seed outlined."""
    import matplotlib
    from matplotlib.patches import Patch, Rectangle

    ax_x, ax_y = grid.axis(keys[0]), grid.axis(keys[1])
    view = grid.view(list(keys))
    nx, ny = len(ax_x.values), len(ax_y.values)
    means = [c.mean for c in view.values() if c.mean is not None]
    norm, log = _norm(means)
    cmap = matplotlib.colormaps[MAP_CMAP]
    ylabels = [_value_label(ax_y, v) for v in ax_y.values]
    xlabels = [_value_label(ax_x, v) for v in ax_x.values]
    cell = max(0.45, min(CELL, 9.0 / nx, 7.0 / ny))
    left = 0.35 + text_height(1, 11) + text_width(ylabels, 10)
    right = 1.6  # the colour bar and its label
    # The key below the axis label: what it will hold is known from the cells.
    cells = list(view.values())
    n_keys = (sum([any(c.stable for c in cells), any(c.diverged and c.mean is not None for c in cells),
                   any(c.n and c.mean is None for c in cells), any(not c.n for c in cells)]))
    key_rows = n_keys if n_keys <= 2 else math.ceil(n_keys / 2)
    bottom = 0.3 + text_height(1, 11) + text_height(1, 10) + 0.2 + text_height(key_rows, 9) + 0.1
    heading = (f"Stability map: {ax_x.name} x {ax_y.name}\n"
               f"colour: the mean {_loss_words(grid)} over the seeds that did not diverge")
    others = _others(grid, keys)
    width = max(7.5, left + nx * cell + right,
                0.4 + text_width(heading.split("\n") + ([_others_line(others)] if others else []), 12))
    suptitle = _heading_lines(exp, heading, grid, keys, width)
    top = 0.2 + text_height(suptitle.count("\n") + 1, 12)
    # Rows at least tall enough together for the colour bar's label (a map of one variant).
    cell_h = max(cell, 2.2 / ny)
    height = top + ny * cell_h + bottom
    fig = new_figure(width, height)
    fig.suptitle(suptitle, y=1 - 0.1 / height, va="top")
    plot_w = nx * cell
    extra = (width - left - right - plot_w) / 2  # centre the cells when the figure is wider
    ax = fig.add_axes(margins(fig, left + extra, right + extra, top, bottom))
    ax.set_xlim(-0.5, nx - 0.5)
    ax.set_ylim(ny - 0.5, -0.5)  # the first value on top
    best = grid.best()
    best_at = None
    text = nx <= MAX_CELL_TEXT and ny <= MAX_CELL_TEXT
    fontsize = 9 if cell >= 0.8 else 8
    hatched = grey = empty = False
    for (vx, vy), c in view.items():
        i, j = ax_x.values.index(vx), ax_y.values.index(vy)
        if not c.n:
            face, label = EMPTY_COLOR, "–"
            empty = True
        elif c.mean is None:
            face, label = DIVERGED_COLOR, f"div\n{c.diverged}/{c.n}"
            grey = True
        else:
            face = cmap(norm(c.mean))
            label = f"{c.mean:.3g}" + (f"\ndiv {c.diverged}/{c.n}" if c.diverged else "")
            # Finite, but ended no better than it started: did not train.
            label += f"\n≥ℓ₀ {c.stalled}/{c.n}" if c.stalled else ""
        ax.add_patch(Rectangle((i - 0.5, j - 0.5), 1, 1, facecolor=face, edgecolor="white", linewidth=1.0, zorder=1))
        if c.diverged and c.mean is not None:
            hatched = True
            ax.add_patch(Rectangle((i - 0.5, j - 0.5), 1, 1, facecolor="none", edgecolor=(1, 1, 1, 0.7),
                                   hatch="///", linewidth=0, zorder=2))
        if text:
            color = _text_color(matplotlib.colors.to_rgba(face)) if face != EMPTY_COLOR else "0.5"
            ax.text(i, j, label, ha="center", va="center", fontsize=fontsize, color=color, zorder=3,
                    fontweight="bold" if c.diverged else "normal")
        if best is not None and c.stable and c.mean == best.mean and best_at is None:
            if all(stability._canon(c.at.get(k)) == stability._canon(best.at.get(k)) for k in best.at):
                best_at = (i, j)
    if best_at is not None:
        ax.add_patch(Rectangle((best_at[0] - 0.5, best_at[1] - 0.5), 1, 1, facecolor="none", edgecolor=BEST_COLOR,
                               linewidth=3.0, zorder=4, clip_on=False))
    ax.set_xticks(range(nx), xlabels, fontsize=10)
    ax.set_yticks(range(ny), ylabels, fontsize=10)
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_xlabel(ax_x.name + (f" ({ax_x.key})" if ax_x.key != ax_x.name and ax_x.key != stability.CLIPPING else ""),
                  fontsize=11)
    ax.set_ylabel(ax_y.name + (f" ({ax_y.key})" if ax_y.key != ax_y.name and ax_y.key != stability.CLIPPING else ""),
                  fontsize=11)

    from matplotlib.cm import ScalarMappable

    bar_ax = fig.add_axes(margins(fig, width - right + 0.25, 1.05, top, bottom))
    if means:
        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=bar_ax)
        bar.set_label(f"mean {_loss_words(grid)}" + (" (log scale)" if log else ""), fontsize=10)
        if log:
            few_decade_ticks(bar.ax.yaxis, norm.vmin, norm.vmax)
    else:
        bar_ax.set_axis_off()
    handles = []
    if best_at is not None:
        handles.append((Patch(facecolor="white", edgecolor=BEST_COLOR, linewidth=2.5),
                        "the best cell (lowest mean loss of those that trained in every seed)"))
    if hatched:
        handles.append((Patch(facecolor="0.6", edgecolor="white", hatch="///"),
                        "div k/n: k of the n seeds diverged (colour: the mean of the others)"))
    if grey:
        handles.append((Patch(facecolor=DIVERGED_COLOR), "every seed diverged: no final loss"))
    if empty:
        handles.append((Patch(facecolor="white", edgecolor="0.6"), "–: no run finished there yet"))
    if handles:
        fig.legend([h for h, _ in handles], [t for _, t in handles], loc="lower left", fontsize=9, frameon=False,
                   bbox_to_anchor=(0.2 / width, 0.05 / height), ncols=1 if len(handles) <= 2 else 2)
    return style.save(fig, path)


def draw_sensitivity(exp: Experiment, grid: stability.Grid, key: str, path: Path) -> Path:
    """The final loss against one grid axis, a line per clipping variant: each seed a dot, the
    mean over the seeds that trained a line (a hollow marker where some diverged), a diverged
    seed an x on the top edge; the key gives each variant's LR sensitivity (Wortsman et al.
    2023), and a dotted line the loss at initialisation ℓ₀ at which it clamps."""
    import numpy as np
    from matplotlib.lines import Line2D
    from matplotlib.ticker import NullLocator

    axis = grid.axis(key)
    xs_of = {stability._canon(v): (stability._number(v) if axis.numeric else i) for i, v in enumerate(axis.values)}
    fig = new_figure(11.0, 5.6)
    ax = fig.add_axes((0.1, 0.1, 0.6, 0.7))
    ax.grid(True, which="major", alpha=0.3)
    edge = ax.get_xaxis_transform()
    shown: list[float] = []
    initial: list[float] = []
    entries: list[tuple[Any, str]] = []
    diverged_any = partial_any = False
    variants = grid.clipping.values
    n_var = len(variants)
    for k, v in enumerate(variants):
        color = exp.colors.get(v, BASELINE_COLOR)
        curve = grid.curve(key, v)
        if not any(c.n for _, c in curve):
            continue
        mx, my, faces = [], [], []
        # Diverged marks stacked down from the top edge, a row per variant, so that none hides another.
        row = 0.965 - 0.055 * k
        for value, cell in curve:
            x = xs_of[stability._canon(value)]
            ys = cell.losses
            ax.plot([x] * len(ys), ys, color=color, zorder=2, **SEED_POINT)
            shown += ys
            initial += [l0 for l0 in (grid.initial_loss(r) for r in cell.runs) if l0 is not None]
            if cell.mean is not None:
                mx.append(x)
                my.append(cell.mean)
                faces.append(color if not cell.diverged else "white")
                partial_any |= bool(cell.diverged)
            if cell.diverged:
                diverged_any = True
                ax.plot([x], [row], transform=edge, marker="x", color=color, markersize=8, markeredgewidth=2.2,
                        linestyle="none", clip_on=False, zorder=5)
                ax.annotate(f"{cell.diverged}/{cell.n}", (x, row), xycoords=edge, xytext=(6, 0),
                            textcoords="offset points", ha="left", va="center", fontsize=8, color=color)
        # The baseline dashed and on top: a clipped variant that never clips lies right on it.
        base = v == _baseline(grid)
        ax.plot(mx, my, color=color, zorder=3.5 if base else 3, linewidth=1.8 if base else MEAN_LINE["linewidth"],
                linestyle="--" if base else "-")
        ax.scatter(mx, my, c=faces, edgecolors=[color if f == "white" else "black" for f in faces], linewidths=1.2,
                   s=48, zorder=4)
        s = stability.sensitivity(grid, key, v)
        name = "none (no clipping)" if v == "none" else style.variant_label(exp, v) if v in exp.variant_info else v
        entries.append((Line2D([], [], color=color, marker="o", markeredgecolor="black", linewidth=1.8 if base else 2.4,
                               linestyle="--" if base else "-"),
                        f"{name}\n  {_sens_name(axis)} sensitivity {'-' if s is None else f'{s:.3g}'}"))
    if initial:
        l0 = float(np.mean(initial))
        ax.axhline(l0, color="0.4", linestyle=":", linewidth=1.3, zorder=1)
        entries.append((Line2D([], [], color="0.4", linestyle=":", linewidth=1.3),
                        f"loss at initialisation ℓ₀ ({l0:.3g}, mean)"))
        shown.append(l0)
    if partial_any:
        entries.append((Line2D([], [], marker="o", markerfacecolor="white", markeredgecolor="black", linestyle="none"),
                        "hollow: some seeds diverged there\n(the mean of the others)"))
    if diverged_any:
        entries.append((Line2D([], [], marker="x", color="black", markeredgewidth=2, linestyle="none"),
                        "top edge: k/n seeds diverged,\na row per variant"))
    entries.append((Line2D([], [], color="0.3", **SEED_POINT), "one seed"))

    top = 0.1 + 0.075 * n_var if diverged_any else 0.08  # room for the rows of diverged marks
    log_y = bool(shown) and min(shown) > 0 and max(shown) / min(shown) >= 10
    if shown:
        lo, hi = min(shown), max(shown)
        if log_y:
            ax.set_yscale("log")
            a, b = math.log10(lo), math.log10(hi)
            span = max(b - a, 0.5)
            ax.set_ylim(10 ** (a - 0.06 * span), 10 ** (b + top * span))
            few_decade_ticks(ax.yaxis, *ax.get_ylim())
        else:
            span = max(hi - lo, 0.1 * abs(hi), 1e-12)
            ax.set_ylim(lo - 0.06 * span, hi + top * span)
    else:
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no run trained to the end: no final loss to show", transform=ax.transAxes,
                ha="center", va="center", fontsize=11, color="0.35")
    labels = [axis.label(v) for v in axis.values]
    if axis.numeric:
        xs = [stability._number(v) for v in axis.values]
        if axis.logarithmic:
            a, b = math.log10(min(xs)), math.log10(max(xs))
            pad = max(0.12, 0.07 * (b - a))
            ax.set_xlim(10 ** (a - pad), 10 ** (b + pad))
            ax.set_xscale("log")
        else:
            span = (max(xs) - min(xs)) or 1.0
            ax.set_xlim(min(xs) - 0.07 * span, max(xs) + 0.07 * span)
        if len(xs) <= 12:
            ax.set_xticks(xs, labels)
            ax.xaxis.set_minor_locator(NullLocator())
    else:
        ax.set_xlim(-0.5, len(labels) - 0.5)
        ax.set_xticks(range(len(labels)), labels)
    where = f" ({axis.key})" if axis.key != axis.name else ""
    ax.set_xlabel(f"{axis.name}{where}" + (" (log scale)" if axis.logarithmic else ""), fontsize=11)
    ax.set_ylabel(_loss_words(grid) + (" (log scale)" if log_y else ""), fontsize=11)
    heading = (f"{_loss_words(grid).capitalize()} against {axis.name}, one line per clipping variant "
               f"(the {_sens_name(axis)}-sensitivity view of Wortsman et al. 2023)")
    suptitle = _heading_lines(exp, heading, grid, (key, stability.CLIPPING), 11.0)
    fig.suptitle(suptitle, y=1 - 0.1 / 5.6, va="top")
    ax.legend([h for h, _ in entries], [t for _, t in entries], loc="upper left", bbox_to_anchor=(1.02, 1.0),
              borderaxespad=0.0, fontsize=9, frameon=False, labelspacing=0.9)
    note = (f"{_sens_name(axis)} sensitivity = mean over the {axis.name} values of [min(ℓ, ℓ₀) − ℓ*], "
            "ℓ the mean over seeds (a diverged seed counts as ℓ₀), ℓ* its lowest value")
    fig.text(0.1 / 11.0, 0.08 / 5.6, note, fontsize=8.5, color="0.3", ha="left", va="bottom")
    ax.set_position(margins(fig, left=0.35 + text_height(1, 11) + text_width(["0.0001"], 10),
                            right=0.35 + style.key_width([t for _, t in entries], 9),
                            top=0.2 + text_height(suptitle.count("\n") + 1, 12) + 0.1,
                            bottom=0.3 + text_height(2, 10) + 0.1 + text_height(1, 9)))
    return style.save(fig, path)


def _baseline(grid: stability.Grid) -> Optional[str]:
    return stability._baseline(grid)


def _sens_name(axis: stability.Axis) -> str:
    return "LR" if axis.key.endswith(".lr") or axis.key == "lr" else axis.name
