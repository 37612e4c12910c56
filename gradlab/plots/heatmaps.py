"""One run's per-parameter gradient norms, parameter x step, on a log colour scale."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np

from . import style
from .describe import outcome
from .load import Experiment, Run, read_table
from .style import (DIVERGENCE_LINE_COLOR, MAX_HEATMAP_COLUMNS, MAX_YTICK_LABELS, NONFINITE_COLOR, TITLE, TITLE_CHARS,
                    ZERO_COLOR, new_figure, place_axes, power_ticks, spare_minor_ticks, step_axis, text_height,
                    text_width, wrap)

# ----------------------------------------------------------------------------- heatmap


def aggregate_columns(matrix: np.ndarray, max_columns: int,
                      block: Optional[int] = None) -> tuple[np.ndarray, np.ndarray, int]:
    """Shrink a (params, steps) matrix to <= max_columns by taking each block's largest
    positive finite norm, so a spike is never averaged away. Returns (values, bad, block):
    values is NaN where a block has no positive finite norm, bad marks blocks holding a
    non-finite norm. `block` imposes the block size: panels that share a step axis must
    share their column width, whatever each run's length."""
    n = matrix.shape[1]
    bad = ~np.isfinite(matrix)
    block = block or max(1, math.ceil(n / max_columns))
    usable = np.where(np.isfinite(matrix) & (matrix > 0), matrix, np.nan)
    if block == 1:
        return usable, bad, 1
    starts = np.arange(0, n, block)
    return np.fmax.reduceat(usable, starts, axis=1), np.logical_or.reduceat(bad, starts, axis=1), block


def heatmap_limits(panels: list[np.ndarray]) -> tuple[float, float]:
    """The one (vmin, vmax) of every panel: the smallest and largest positive finite norm
    of them all (a decade around a single value; 1e-3..1 when there is none)."""
    positive = [v[~np.isnan(v) & (v > 0)] for v in panels]
    positive = np.concatenate(positive) if positive else np.zeros(0)
    if not positive.size:
        return 1e-3, 1.0
    vmin, vmax = float(positive.min()), float(positive.max())
    if vmax <= vmin:
        vmin, vmax = vmin / math.sqrt(10), vmax * math.sqrt(10)
    return vmin, vmax


def heatmap_cmap():
    """viridis, with zeros in the 'under' colour and non-finite norms in the 'bad' one."""
    import matplotlib

    return matplotlib.colormaps["viridis"].with_extremes(under=ZERO_COLOR, bad=NONFINITE_COLOR)


def parameter_ticks(names: list[str], most: int) -> tuple[int, np.ndarray, list[str]]:
    """(stride, rows, names) of the labelled parameter rows: at most about `most` labels."""
    every = max(1, math.ceil(len(names) / most))
    if every > 1 and every % 2:
        every += 1  # parameters come in W/b pairs: an even stride labels the same kind each time
    ticks = np.arange(0, len(names), every)
    return every, ticks, [names[i] for i in ticks]


def draw_heatmap(exp: Experiment, run: Run, path: Path) -> Optional[Path]:
    """Per-parameter gradient norm, layer x step, log colour scale; None without data."""
    from matplotlib.colors import LogNorm
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    # Read here, not in load_experiment: only one run's (possibly large) table in memory.
    header, table = read_table(run.path / "layer_norms.csv")
    if len(header) < 2 or "step" not in header or table.shape[0] == 0:
        return None
    step_col = header.index("step")
    names = [h for i, h in enumerate(header) if i != step_col]
    steps = table[:, step_col]
    matrix = np.delete(table, step_col, axis=1).T
    values, bad, block = aggregate_columns(matrix, MAX_HEATMAP_COLUMNS)
    zero = np.isnan(values) & ~bad

    vmin, vmax = heatmap_limits([values])
    # Zeros go below vmin (the 'under' colour), non-finite norms are masked (the 'bad' one).
    shown = np.where(zero, vmin / 10, values)
    shown = np.ma.masked_where(bad | np.isnan(shown), shown)
    cmap = heatmap_cmap()

    rows = len(names)
    every, ticks, labels = parameter_ticks(names, MAX_YTICK_LABELS)
    tick_points = 8 if rows > 16 else 9
    ylabel = "parameter, in forward order" + (f"\n(one name in {every} shown)" if every > 1 else "")
    title = f"{run.run_id} — {outcome(run)}\n{wrap(exp.summary, TITLE_CHARS)}"

    handles = []
    if run.diverged and run.divergence_step is not None:
        handles.append(Line2D([], [], color=DIVERGENCE_LINE_COLOR, linestyle="--", label=f"diverged at step {run.divergence_step}"))
    if zero.any():
        handles.append(Patch(facecolor=ZERO_COLOR, label="zero gradient"))
    if bad.any():
        handles.append(Patch(facecolor=NONFINITE_COLOR, label="NaN / inf gradient"))
    if np.isnan(values).all():
        handles.append(Patch(facecolor="white", edgecolor="none", label="(no finite non-zero norm: scale is arbitrary)"))

    # A fixed layout, from the lengths of the texts: the parameter names on the left, the
    # colour bar and its label on the right, the title above, the key below.
    fig = new_figure(10.0, min(8.0, max(3.6, 2.2 + 0.12 * min(rows, MAX_YTICK_LABELS))))
    left = 0.15 + text_height(ylabel.count("\n") + 1, 10) + text_width(labels, tick_points) + 0.1
    top = 0.12 + text_height(title.count("\n") + 1, 11)
    bottom = 0.1 + 2 * text_height(1, 10) + 0.1 + (text_height(1, 9) + 0.1 if handles else 0.0)
    ax = place_axes(fig, left, 1.35, top, bottom)
    box = ax.get_position()
    cax = fig.add_axes((box.x1 + 0.1 / 10.0, box.y0, 0.22 / 10.0, box.height))
    first = float(steps[0])
    width = shown.shape[1] * block
    image = ax.imshow(
        shown, aspect="auto", interpolation="nearest", cmap=cmap,
        norm=LogNorm(vmin=vmin, vmax=vmax, clip=False),
        extent=(first - 0.5, first + width - 0.5, rows - 0.5, -0.5),
    )
    bar = fig.colorbar(image, cax=cax)
    bar.set_label("gradient L2 norm (before clipping)")
    spare_minor_ticks(bar.ax.yaxis, vmin, vmax)
    if math.log10(vmax / vmin) >= 1:  # decades among the ticks: labelled without mathtext
        power_ticks(bar.ax.yaxis)

    ax.set_yticks(ticks, labels, fontsize=tick_points)
    ax.set_ylabel(ylabel)
    ax.set_xlabel("step" + (f" (each column: max over {block} steps)" if block > 1 else ""))
    ax.set_title(title, fontsize=11, **TITLE)
    step_axis(ax, first, float(steps[-1]), pad=0.5)  # exactly the image: no blank margin
    if run.diverged and run.divergence_step is not None:
        # On the left edge of the divergence step's column: the column itself stays visible.
        ax.axvline(run.divergence_step - 0.5, color=DIVERGENCE_LINE_COLOR, linestyle="--", linewidth=1.6)
    if handles:
        fig.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.0), ncol=len(handles), fontsize=9,
                   frameon=False)
    return style.save(fig, path)


