"""A sweep's per-run figures as small multiples: one figure per seed, one panel per variant.

Comparison is the point of a sweep, and one PNG per run makes it impossible: here the
variants of a seed sit side by side in threshold order (the baseline first), on shared step
and parameter (or time) axes and one colour (or y) scale, so that a colour or a height means
the same in every panel. figures.py decides which experiments get these (`small_multiples`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np

from . import style
from .flow import _draw_flow_line, layer_key, pick_layers, read_flow, tbptt_boundaries
from .heatmaps import aggregate_columns, heatmap_cmap, heatmap_limits, parameter_ticks
from .load import Experiment, Run, as_int, read_table
from .over_steps import plottable
from .style import (BPTT_CMAP, DIVERGENCE_LINE_COLOR, EM_WIDTH, MAX_BPTT_LAYERS, MAX_MULTIPLE_COLUMNS,
                    MAX_PANEL_YTICK_LABELS, MAX_TBPTT_LINES, MULTIPLE_HEATMAP_COLUMNS, MULTIPLE_PANEL_WIDTH,
                    NONFINITE_COLOR, ZERO_COLOR, key_width, new_figure, power_label, power_ticks,
                    spare_minor_ticks, text_height, text_width, variant_label, wrap)

TITLE_POINTS = 9
TICK_POINTS = 8


def grid_shape(n: int) -> tuple[int, int]:
    """(rows, columns) for n panels: up to 3 in a row, 4 as 2 x 2, then 3 or 4 columns,
    whichever leaves fewer empty cells (4 on a tie: wide panels suit a step axis)."""
    if n <= 3:
        return 1, max(n, 1)
    if n == 4:
        return 2, 2
    cols = min(range(3, MAX_MULTIPLE_COLUMNS + 1), key=lambda c: (math.ceil(n / c) * c - n, -c))
    return math.ceil(n / cols), cols


def short_outcome(run: Run, chars: int) -> str:
    """A panel title's second line: 'trained 300 steps', 'diverged at step 7: forward, layer10.linear'."""
    if not run.diverged:
        done = run.steps_completed if run.steps_completed is not None else run.steps
        return f"trained {done} step{'s' if done != 1 else ''}"
    first = run.first_nonfinite or {}
    step = run.divergence_step if run.divergence_step is not None else "?"
    detail = ", ".join(str(first[k]) for k in ("phase", "where") if first.get(k))
    text = f"diverged at step {step}" + (f": {detail}" if detail else "")
    return text if len(text) <= chars else text[:chars - 1] + "…"


def panel_title(exp: Experiment, run: Run) -> str:
    chars = int(MULTIPLE_PANEL_WIDTH * 72 / (EM_WIDTH * TITLE_POINTS))
    return f"{variant_label(exp, run.variant)}\n{short_outcome(run, chars)}"


def step_ticks(lo: float, hi: float) -> list[float]:
    """About five whole-number ticks within [lo, hi]: a 3-inch panel has room for no more."""
    from matplotlib.ticker import MaxNLocator

    return [float(t) for t in MaxNLocator(nbins=5, integer=True, min_n_ticks=1).tick_values(lo, hi) if lo <= t <= hi]


def log_ticks(lo: float, hi: float) -> tuple[list[float], list[str]]:
    """Ticks of a log axis over [lo, hi]: powers of ten (every 2nd, 5th, ... decade when there
    are more than six), or 1, 2 and 5 times them when it spans less than a decade."""
    first, last = math.ceil(math.log10(lo) - 1e-9), math.floor(math.log10(hi) + 1e-9)
    if last - first < 1:
        ticks = [m * 10.0 ** e for e in range(first - 1, last + 1) for m in (1, 2, 5) if lo <= m * 10.0 ** e <= hi]
        return ticks, [f"{t:g}" for t in ticks]
    stride = next((s for s in (1, 2, 5, 10, 20, 25, 50, 100) if (last - first) / s <= 6), 100)
    ticks = [10.0 ** d for d in range(math.ceil(first / stride) * stride, last + 1, stride)]
    return ticks, [power_label(t) for t in ticks]


def _grid_figure(exp: Experiment, heading: str, n: int, left: float, right: float, bottom: float, panel_h: float,
                 title_h: float):
    """The figure of n panels with these margins (inches), its suptitle wrapped to the width
    it comes out at; returns (fig, top margin, gap between columns, gap between rows)."""
    gap_w, gap_h = 0.15, title_h + 0.1
    width, _ = figure_size(n, left, right, 0.0, bottom, panel_h, gap_w, gap_h)
    suptitle = f"{heading}\n{wrap(exp.summary, int(width * 10))}"
    top = 0.1 + text_height(suptitle.count("\n") + 1, 12) + 0.1 + title_h
    fig = new_figure(*figure_size(n, left, right, top, bottom, panel_h, gap_w, gap_h))
    fig.suptitle(suptitle, y=1 - 0.1 / fig.get_figheight(), va="top")
    return fig, top, gap_w, gap_h


def figure_size(n: int, left: float, right: float, top: float, bottom: float, panel_h: float, gap_w: float,
                gap_h: float) -> tuple[float, float]:
    nrows, ncols = grid_shape(n)
    return (left + ncols * MULTIPLE_PANEL_WIDTH + (ncols - 1) * gap_w + right,
            top + nrows * panel_h + (nrows - 1) * gap_h + bottom)


def _not_drawn(exp: Experiment, runs: list[Run], drawn: list[Run]) -> Optional[str]:
    """A caption naming the variants of the config that have no panel in this seed."""
    have = {r.variant for r in drawn}
    finished = {r.variant for r in runs}
    unfinished = [v for v in exp.variants if v not in finished]
    empty = [r.variant for r in runs if r.variant not in have]
    parts = ([f"not finished: {', '.join(unfinished)}"] if unfinished else []) + \
            ([f"nothing recorded: {', '.join(empty)}"] if empty else [])
    return f"no panel ({'; '.join(parts)})" if parts else None


# ----------------------------------------------------------------------------- heatmaps


def draw_heatmaps(exp: Experiment, seed: int, runs: list[Run], path: Path) -> Optional[Path]:
    """Per-parameter gradient norm, parameter x step, one panel per variant of one seed, one
    log colour scale for every panel; None when no run has a layer_norms.csv to show."""
    from matplotlib.collections import LineCollection
    from matplotlib.colors import LogNorm
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, Rectangle

    tables = []
    for run in runs:
        header, table = read_table(run.path / "layer_norms.csv")
        if len(header) < 2 or "step" not in header or table.shape[0] == 0:
            continue
        col = header.index("step")
        tables.append((run, [h for i, h in enumerate(header) if i != col], table[:, col], np.delete(table, col, axis=1).T))
    if not tables:
        return None
    names = tables[0][1]  # one model: the same parameters in every run
    first = min(float(steps[0]) for _, _, steps, _ in tables)
    last = max([float(steps[-1]) for _, _, steps, _ in tables] + [(exp.steps or 0) - 1.0])
    # One block size for every panel, from the shared axis: a column is the same steps in each.
    block = max(1, math.ceil((last - first + 1) / MULTIPLE_HEATMAP_COLUMNS))
    panels = []
    for run, own, steps, matrix in tables:
        if own != names:  # (not as gradlab writes them) taken by name; a missing one shows as no gradient
            index = {n: i for i, n in enumerate(own)}
            matrix = np.vstack([matrix[index[n]] if n in index else np.full(matrix.shape[1], -1.0) for n in names])
        values, bad, _ = aggregate_columns(matrix, MULTIPLE_HEATMAP_COLUMNS, block)
        panels.append((run, float(steps[0]), values, bad))

    limits = heatmap_limits([values for _, _, values, _ in panels])
    vmin, vmax = limits
    norm = LogNorm(vmin=vmin, vmax=vmax, clip=False)
    cmap = heatmap_cmap()

    rows = len(names)
    every, ticks, labels = parameter_ticks(names, MAX_PANEL_YTICK_LABELS)
    ylabel = "parameter" + (f"\n(one in {every} named)" if every > 1 else "")

    any_zero = any((np.isnan(v) & ~b).any() for _, _, v, b in panels)
    any_bad = any(b.any() for _, _, _, b in panels)
    diverged = [r for r, _, _, _ in panels if r.diverged and r.divergence_step is not None]
    handles = []
    if diverged:
        handles.append(Line2D([], [], color=DIVERGENCE_LINE_COLOR, linestyle="--", linewidth=1.6,
                              label="divergence (the step of the first NaN/inf)"))
    if any_zero:
        handles.append(Patch(facecolor=ZERO_COLOR, label="zero gradient"))
    if any_bad:
        handles.append(Patch(facecolor=NONFINITE_COLOR, label="NaN / inf gradient"))
    if not any((~np.isnan(v)).any() for _, _, v, _ in panels):
        handles.append(Patch(facecolor="white", edgecolor="none", label="(no finite non-zero norm: scale is arbitrary)"))
    caption = _not_drawn(exp, runs, [r for r, _, _, _ in panels])

    n = len(panels)
    heading = f"Per-parameter gradient norm, seed {seed}: one panel per clipping variant, one colour scale"
    panel_h = max(1.3, min(2.8, 0.45 + 0.17 * len(labels)))
    title_h = text_height(2, TITLE_POINTS) + 0.08
    left = 0.15 + text_height(ylabel.count("\n") + 1, 9) + text_width(labels, TICK_POINTS) + 0.1
    right = 0.12 + 0.2 + 0.08 + text_width(["10⁻¹⁰"], TICK_POINTS) + text_height(2, 9) + 0.15
    bottom = 0.1 + text_height(2, 10) + 0.1 + (text_height(1, 9) + 0.1 if handles else 0.0) + \
        (text_height(1, 9) + 0.05 if caption else 0.0)
    fig, top, gap_w, gap_h = _grid_figure(exp, heading, n, left, right, bottom, panel_h, title_h)
    w, h = fig.get_size_inches()
    # The panels are drawn into one axes that covers the figure, in inches, rather than being
    # axes of their own: an axes costs ~17 ms (its ticks, spines and titles), more than the
    # image it would hold, and a heatmap needs none of it.
    canvas = fig.add_axes((0, 0, 1, 1), label="<canvas>")
    canvas.set_axis_off()
    canvas.set_autoscale_on(False)
    nrows, ncols = grid_shape(n)
    span = last - first + 1
    xticks = step_ticks(first, last)
    marks, divergences = [], []
    image = None
    for i, (run, start, values, bad) in enumerate(panels):
        r, c = divmod(i, ncols)
        x0 = left + c * (MULTIPLE_PANEL_WIDTH + gap_w)
        y1 = h - top - r * (panel_h + gap_h)
        y0 = y1 - panel_h

        def at(step: float, x0: float = x0) -> float:  # a step's x, in inches
            return x0 + (step - (first - 0.5)) / span * MULTIPLE_PANEL_WIDTH

        zero = np.isnan(values) & ~bad
        shown = np.ma.masked_where(bad | (np.isnan(values) & ~zero), np.where(zero, vmin / 10, values))
        end = start + values.shape[1] * block - 0.5
        im = canvas.imshow(shown, aspect="auto", interpolation="nearest", cmap=cmap, norm=norm,
                           extent=(at(start - 0.5), at(end), y0, y1))
        frame = Rectangle((x0, y0), MULTIPLE_PANEL_WIDTH, panel_h, fill=False, edgecolor="black", linewidth=0.8,
                          zorder=3, gid=run.run_id)
        canvas.add_patch(frame)
        im.set_clip_path(frame)  # the last block of columns may reach past the axis' end
        image = image or im
        canvas.text(x0 + MULTIPLE_PANEL_WIDTH / 2, y1 + 0.05, panel_title(exp, run), ha="center", va="bottom",
                    fontsize=TITLE_POINTS, gid="title")
        if run in diverged:
            # On the left edge of the divergence step's column: the column itself stays visible.
            divergences.append([(at(run.divergence_step - 0.5), y0), (at(run.divergence_step - 0.5), y1)])
        why = f"diverged at step {run.divergence_step}:\nno step after it" if run in diverged else "no step recorded here"
        if x0 + MULTIPLE_PANEL_WIDTH - at(end) > text_width(why.split("\n"), 9) + 0.2:
            # A run that stopped early leaves its panel blank after that: say why, in the blank.
            canvas.text((at(end) + x0 + MULTIPLE_PANEL_WIDTH) / 2, (y0 + y1) / 2, why, ha="center", va="center",
                        fontsize=9, color="0.35")
        marks += [[(at(t), y0), (at(t), y0 - 0.05)] for t in xticks]
        if i + ncols >= n:  # the bottom panel of its column: the step axis
            for t in xticks:
                canvas.text(at(t), y0 - 0.08, f"{t:g}", ha="center", va="top", fontsize=TICK_POINTS)
            canvas.text(x0 + MULTIPLE_PANEL_WIDTH / 2, y0 - 0.1 - text_height(1, TICK_POINTS), "step" +
                        (f" (a column: max over {block} steps)" if block > 1 else ""), ha="center", va="top", fontsize=9)
        if c == 0:  # the first column: the parameter axis
            for k, label in zip(ticks, labels):
                y = y1 - (k + 0.5) / rows * panel_h
                marks.append([(x0 - 0.05, y), (x0, y)])
                canvas.text(x0 - 0.08, y, label, ha="right", va="center", fontsize=TICK_POINTS, gid="parameter")
            canvas.text(x0 - 0.1 - text_width(labels, TICK_POINTS) - 0.05, (y0 + y1) / 2, ylabel, rotation=90,
                        ha="right", va="center", fontsize=9, multialignment="center")
    canvas.add_collection(LineCollection(marks, colors="black", linewidths=0.8))
    if divergences:
        canvas.add_collection(LineCollection(divergences, colors=DIVERGENCE_LINE_COLOR, linestyles="--", linewidths=1.6,
                                             zorder=4, gid="divergence"))
    canvas.set_xlim(0, w)
    canvas.set_ylim(0, h)

    # One colour bar for every panel, the height of the grid.
    grid_top = h - top
    grid_bottom = h - top - nrows * panel_h - (nrows - 1) * gap_h
    x = left + ncols * MULTIPLE_PANEL_WIDTH + (ncols - 1) * gap_w + 0.12
    cax = fig.add_axes((x / w, grid_bottom / h, 0.2 / w, (grid_top - grid_bottom) / h), label="<colorbar>")
    bar = fig.colorbar(image, cax=cax)
    # On two lines: one would be taller than the bar of a single row of small panels.
    bar.set_label("gradient L2 norm\nbefore clipping", fontsize=9)
    bar.ax.tick_params(labelsize=TICK_POINTS)
    spare_minor_ticks(bar.ax.yaxis, vmin, vmax)
    if math.log10(vmax / vmin) >= 1:  # decades among the ticks: labelled without mathtext
        power_ticks(bar.ax.yaxis)
    _footer(fig, handles, caption)
    return style.save(fig, path)


def _footer(fig, handles: list, caption: Optional[str]) -> None:
    """The key in one row under the panels, and the caption under it."""
    h = fig.get_figheight()
    y = 0.05 + (text_height(1, 9) + 0.05 if caption else 0.0)
    if handles:
        fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, y / h), ncol=len(handles), fontsize=9,
                   frameon=False, borderaxespad=0.0)
    if caption:
        fig.text(0.5, 0.05 / h, caption, ha="center", va="bottom", fontsize=9, color="0.25")


# ----------------------------------------------------------------------------- gradient through time


def draw_bptts(exp: Experiment, seed: int, runs: list[Run], path: Path) -> Optional[Path]:
    """Norm of dL/dh_t against t, one panel per variant of one seed (the first recorded step
    pale, the last dashed, a colour per layer), one log y scale for every panel; None when
    no run has a bptt_norms.csv to show."""
    import matplotlib
    from matplotlib.lines import Line2D

    panels = [(run, f) for run in runs if (f := read_flow(run.path / "bptt_norms.csv")) is not None]
    if not panels:
        return None
    every_layer = sorted({layer for _, f in panels for layer in f.layers}, key=layer_key)
    layers = pick_layers(every_layer, MAX_BPTT_LAYERS)
    cmap = matplotlib.colormaps[BPTT_CMAP[0]]
    positions = np.linspace(*BPTT_CMAP[1:], len(layers)) if len(layers) > 1 else [BPTT_CMAP[1]]
    colors = {layer: cmap(float(x)) for layer, x in zip(layers, positions)}
    T = max(f.T for _, f in panels)
    K = as_int((exp.config.get("train") if isinstance(exp.config.get("train"), dict) else {}).get("tbptt"))
    boundaries = tbptt_boundaries(T, K)

    handles = []
    for i, layer in enumerate(layers):
        role = "" if len(every_layer) == 1 else (" (bottom)" if i == 0 else (" (top)" if i == len(layers) - 1 else ""))
        handles.append(Line2D([], [], color=colors[layer], linewidth=2.2, label=f"{layer}{role}"))
    firsts = {f.steps[0] for _, f in panels}
    early = f"step {firsts.pop()}" if len(firsts) == 1 else "first recorded step"
    handles.append(Line2D([], [], color="black", linewidth=2.4, alpha=0.55, label=early))
    handles.append(Line2D([], [], color="black", linestyle="--", linewidth=1.6,
                          label="last recorded step: the final one,\nor the last before a divergence"))
    notes = []
    if len(layers) < len(every_layer):
        notes.append(f"{len(layers)} of {len(every_layer)} layers shown")
    if boundaries and len(boundaries) <= MAX_TBPTT_LINES:
        handles.append(Line2D([], [], color="0.35", linestyle=":", linewidth=1.1,
                              label=f"truncation boundary (tbptt {K}):\nno gradient crosses it"))
    elif boundaries:
        notes.append(f"truncated BPTT every {'step' if K == 1 else f'{K} steps'}: {len(boundaries)} boundaries, "
                     "too many to draw")
    caption = _not_drawn(exp, runs, [r for r, _ in panels])

    n = len(panels)
    heading = f"Gradient through time, seed {seed}: one panel per clipping variant, one y scale"
    panel_h = 2.2
    title_h = text_height(2, TITLE_POINTS) + 0.08
    left = 0.2 + text_height(1, 9) + text_width(["10⁻¹⁰⁰"], TICK_POINTS)
    right = 0.35 + key_width([str(h.get_label()) for h in handles] + ["first NaN/inf (its t)", "top edge: NaN/inf at that t"], 9)
    lines = len(notes) + (1 if caption else 0)
    bottom = 0.1 + text_height(2, 10) + 0.1 + (text_height(lines, 9) + 0.05 if lines else 0.0)
    fig, top, gap_w, gap_h = _grid_figure(exp, heading, n, left, right, bottom, panel_h, title_h)
    w, h = fig.get_size_inches()

    # One y range for every panel, in decades, so that a norm near the float64 limit leaves a
    # margin without overflowing; a flat flow still gets about a decade, and the lines stay
    # off the edge bands.
    drawn = {id(f): [f.steps[0]] + ([f.steps[-1]] if len(f.steps) > 1 else []) for _, f in panels}
    values = [plottable(f.norms[s][layer], log=True) for _, f in panels for s in drawn[id(f)] for layer in layers
              if layer in f.layers]
    values = np.concatenate(values) if values else np.zeros(0)
    positive = values[~np.isnan(values)]
    if positive.size:
        lo, hi = math.log10(float(positive.min())), math.log10(float(positive.max()))
        pad = max(0.15, 0.05 * (hi - lo), (1.0 - (hi - lo)) / 2)
        ylim = (10 ** max(lo - pad, -300.0), 10 ** min(hi + pad, 300.0))
    else:
        ylim = (1e-3, 1.0)
        notes.append("no finite non-zero norm to draw: the scale is arbitrary")
    pad = max(0.5, 0.01 * (T - 1))
    xlim = (-pad, T - 1 + pad)
    xticks, (yticks, ylabels) = step_ticks(0, T - 1), log_ticks(*ylim)

    # As the heatmaps: the panels are drawn into one axes over the figure, each in a transform
    # of its own (t and a log norm onto its rectangle), not as axes of their own (~17 ms each).
    canvas = fig.add_axes((0, 0, 1, 1), label="<canvas>")
    canvas.set_axis_off()
    canvas.set_autoscale_on(False)
    nrows, ncols = grid_shape(n)
    zeros = nonfinite = 0
    born = False
    for i, (run, f) in enumerate(panels):
        r, c = divmod(i, ncols)
        x0 = left + c * (MULTIPLE_PANEL_WIDTH + gap_w)
        y1 = h - top - r * (panel_h + gap_h)
        y0 = y1 - panel_h
        panel = _Panel(canvas, fig, (x0 / w, y0 / h, MULTIPLE_PANEL_WIDTH / w, panel_h / h), xlim, ylim, run.run_id)
        for layer in layers:
            if layer not in f.layers:
                continue
            for step in drawn[id(f)]:
                pale = step == drawn[id(f)][0] and len(drawn[id(f)]) > 1
                z, b = _draw_flow_line(panel, f.norms[step][layer], f.present[step][layer],
                                       "-" if step == drawn[id(f)][0] else "--", linewidth=2.4 if pale else 1.6,
                                       color=colors[layer], alpha=0.55 if pale else 1.0)
                zeros, nonfinite = zeros + z, nonfinite + b
        if boundaries and len(boundaries) <= MAX_TBPTT_LINES:
            panel.lines([[(t + 0.5, 0.0), (t + 0.5, 1.0)] for t in boundaries], panel.xaxis, colors="0.35",
                        linestyles=":", linewidths=1.1, zorder=1)
        born |= _mark_birth(panel, run, f, colors)
        canvas.text(0.5, 1.0 + 0.05 / panel_h, panel_title(exp, run), transform=panel.box, ha="center", va="bottom",
                    fontsize=TITLE_POINTS, gid="title")
        panel.lines([[(t, 0.0), (t, 1.0)] for t in xticks], panel.xaxis, colors="#b0b0b0", alpha=0.3, linewidths=0.8,
                    zorder=0)
        panel.lines([[(0.0, y), (1.0, y)] for y in yticks], panel.yaxis, colors="#b0b0b0", alpha=0.3, linewidths=0.8,
                    zorder=0)
        panel.lines([[(t, 0.0), (t, -0.05 / panel_h)] for t in xticks], panel.xaxis, colors="black", linewidths=0.8,
                    clip=False)
        panel.lines([[(0.0, y), (-0.05 / MULTIPLE_PANEL_WIDTH, y)] for y in yticks], panel.yaxis, colors="black",
                    linewidths=0.8, clip=False)
        if i + ncols >= n:  # the bottom panel of its column: the t axis
            for t in xticks:
                canvas.text(t, -0.08 / panel_h, f"{t:g}", transform=panel.xaxis, ha="center", va="top", fontsize=TICK_POINTS)
            canvas.text(0.5, -(0.1 + text_height(1, TICK_POINTS)) / panel_h,
                        f"time step t  (BPTT runs from {T - 1} back to 0 ←)", transform=panel.box, ha="center", va="top",
                        fontsize=9)
        if c == 0:  # the first column: the norm axis
            for y, label in zip(yticks, ylabels):
                canvas.text(-0.08 / MULTIPLE_PANEL_WIDTH, y, label, transform=panel.yaxis, ha="right", va="center",
                            fontsize=TICK_POINTS)
            canvas.text(-(0.12 + text_width(ylabels, TICK_POINTS)) / MULTIPLE_PANEL_WIDTH, 0.5, "‖dL/dh_t‖ (log)",
                        transform=panel.box, rotation=90, ha="right", va="center", fontsize=9)
    if born:
        handles.append(Line2D([], [], marker="v", markersize=9, color="white", markeredgecolor=NONFINITE_COLOR,
                              markeredgewidth=1.5, linestyle="none", label="first NaN/inf (its t)"))
    if nonfinite:
        handles.append(Line2D([], [], color="0.3", linewidth=4, label="top edge: NaN/inf at that t"))
    if zeros:
        handles.append(Line2D([], [], color="0.3", linewidth=4, label="bottom edge: zero at that t"))
    canvas.set_xlim(0, 1)
    canvas.set_ylim(0, 1)
    # The key right of the first row's last panel.
    x = left + min(n, ncols) * (MULTIPLE_PANEL_WIDTH + gap_w) + 0.1
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(x / w, 1 - top / h), borderaxespad=0.0, fontsize=9,
               frameon=False)
    text = "\n".join(notes + ([caption] if caption else []))
    if text:
        fig.text(0.5, 0.05 / fig.get_figheight(), text, ha="center", va="bottom", fontsize=9, color="0.25")
    return style.save(fig, path)


class _Panel:
    """One panel of a figure drawn into a single axes: what flow's line drawing asks of an axes
    (`plot`, `get_xaxis_transform`), in the panel's own coordinates (t, and the norm on a log
    scale), clipped to the panel's rectangle."""

    def __init__(self, canvas, fig, rect: tuple, xlim: tuple, ylim: tuple, gid: str):
        from matplotlib.patches import Rectangle
        from matplotlib.scale import LogTransform
        from matplotlib.transforms import (Bbox, BboxTransformFrom, BboxTransformTo, IdentityTransform,
                                           TransformedBbox, blended_transform_factory)

        self.canvas = canvas
        self.box = BboxTransformTo(TransformedBbox(Bbox.from_bounds(*rect), fig.transFigure))
        log = blended_transform_factory(IdentityTransform(), LogTransform(10))
        limits = BboxTransformFrom(Bbox([[xlim[0], math.log10(ylim[0])], [xlim[1], math.log10(ylim[1])]]))
        self.data = log + limits + self.box
        self.xaxis = blended_transform_factory(self.data, self.box)  # t, and a fraction of the height
        self.yaxis = blended_transform_factory(self.box, self.data)  # a fraction of the width, and a norm
        self.frame = Rectangle((0, 0), 1, 1, transform=self.box, fill=False, edgecolor="black", linewidth=0.8,
                               zorder=3, gid=gid)
        canvas.add_artist(self.frame)

    def get_xaxis_transform(self):
        return self.xaxis

    def plot(self, *args, transform=None, clip_on: bool = True, **kw):
        lines = self.canvas.plot(*args, transform=transform or self.data, clip_on=clip_on, **kw)
        for line in lines if clip_on else []:
            line.set_clip_path(self.frame)
        return lines

    def lines(self, segments: list, transform, clip: bool = True, **kw) -> None:
        from matplotlib.collections import LineCollection

        if not segments:
            return
        collection = LineCollection(segments, transform=transform, **kw)
        if clip:
            collection.set_clip_path(self.frame)
        else:
            collection.set_clip_on(False)
        self.canvas.add_collection(collection, autolim=False)


def _mark_birth(ax, run: Run, f, colors: dict) -> bool:
    """A triangle at the t where the first NaN/inf was born, when that was in the recurrence."""
    from .flow import birth

    where, t_bad = birth(run)
    if not (run.diverged and t_bad is not None and 0 <= t_bad < f.T):
        return False
    layer = next((l for l in f.layers if where.startswith(l + ".")), None)
    ax.plot([t_bad], [0.91], transform=ax.get_xaxis_transform(), marker="v", markersize=9,
            color=colors.get(layer, NONFINITE_COLOR), markeredgecolor=NONFINITE_COLOR, markeredgewidth=1.5,
            linestyle="none", clip_on=False, zorder=6)
    return True
