"""Gradient through time of a recurrent run: the norm of dL/dh_t against t, per layer."""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from . import style
from .describe import outcome
from .load import Experiment, Run, as_int
from .over_steps import downsample, plottable
from .style import (BPTT_CMAP, MAX_BPTT_LAYERS, MAX_TBPTT_LINES, NONFINITE_COLOR, TITLE, TITLE_CHARS, decade_ticks,
                    legend_width, margins, new_figure, power_ticks, step_axis, text_height, text_width, wrap)

# ----------------------------------------------------------------------------- gradient through time


@dataclass
class Flow:
    """bptt_norms.csv of one run: for each recorded step, each layer's norm of dL/dh_t over t.

    `norms[step][layer]` has length T (the largest t + 1 in the file); a (step, layer, t)
    the file lacks is NaN there and False in `present[step][layer]`."""

    T: int
    steps: list[int]
    layers: list[str]
    norms: dict[int, dict[str, np.ndarray]]
    present: dict[int, dict[str, np.ndarray]]


def layer_key(name: str) -> tuple:
    """rnn.0 < rnn.1 < ... < rnn.10: by kind, then by the layer number, bottom first."""
    m = re.fullmatch(r"(.*?)(\d+)", name)
    return (m.group(1), int(m.group(2)), name) if m else (name, -1, name)


def read_flow(path: Path) -> Optional[Flow]:
    """Read bptt_norms.csv leniently: columns found by name, rows that do not parse skipped;
    None without data. Vectorised: the file has T x layers x 2 rows, easily 10^5."""
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader)]
            cols = [header.index(c) for c in ("step", "layer", "t", "grad_norm")]
            width = max(cols) + 1
            raw = [row for row in reader if len(row) >= width]
    except (OSError, StopIteration, ValueError, csv.Error, UnicodeDecodeError):
        return None
    i_step, i_layer, i_t, i_norm = cols

    def floats(rows: list, i: int) -> np.ndarray:
        return np.array([r[i] for r in rows], dtype=float).reshape(len(rows))

    try:
        step, t, norm = (floats(raw, i) for i in (i_step, i_t, i_norm))
    except ValueError:  # a damaged row somewhere: find it (the slow way) and drop it
        def parses(row: list) -> bool:
            try:
                [float(row[i]) for i in (i_step, i_t, i_norm)]
                return True
            except ValueError:
                return False

        raw = [row for row in raw if parses(row)]
        step, t, norm = (floats(raw, i) for i in (i_step, i_t, i_norm))
    codes: dict[str, int] = {}
    layer = np.array([codes.setdefault(r[i_layer].strip(), len(codes)) for r in raw], dtype=np.int64).reshape(len(raw))
    names = list(codes)
    ok = np.isfinite(step) & np.isfinite(t) & (t >= 0) & (step == np.round(step)) & (t == np.round(t))
    ok &= np.array([n != "" for n in names], dtype=bool)[layer] if names else ok
    if not ok.any():
        return None
    step, t, norm, layer = step[ok].astype(np.int64), t[ok].astype(np.int64), norm[ok], layer[ok]
    T = int(t.max()) + 1
    steps = sorted(set(step.tolist()))
    used = sorted(set(layer.tolist()), key=lambda c: layer_key(names[c]))
    grid = np.full((len(steps), len(used), T), np.nan)
    have = np.zeros(grid.shape, dtype=bool)
    s_idx = np.searchsorted(np.array(steps), step)
    row_of = np.zeros(len(names), dtype=np.int64)  # layer code -> its row, bottom layer first
    row_of[used] = np.arange(len(used))
    l_idx = row_of[layer]
    grid[s_idx, l_idx, t] = norm  # a repeated (step, layer, t) keeps its last row
    have[s_idx, l_idx, t] = True
    layers = [names[c] for c in used]
    return Flow(T=T, steps=steps, layers=layers,
                norms={s: {l: grid[i, j] for j, l in enumerate(layers)} for i, s in enumerate(steps)},
                present={s: {l: have[i, j] for j, l in enumerate(layers)} for i, s in enumerate(steps)})


def tbptt_boundaries(T: int, K: Optional[int]) -> list[int]:
    """The t of every truncation boundary between t and t + 1, counted from the end as the
    recurrent backward pass does: (T - 1 - t) % K == 0, t < T - 1."""
    if not K or K < 1:
        return []
    return list(range(T - 1 - K, -1, -K))[::-1]


def final_step(run: Run) -> Optional[int]:
    steps = run.metrics.get("step")
    if steps is not None and len(steps) and np.isfinite(steps[-1]):
        return int(steps[-1])
    if run.steps_completed:
        return run.steps_completed - 1
    return run.steps - 1 if run.steps else None


def flow_step_label(run: Run, step: int, last: bool) -> str:
    """'step 0', 'step 41 (last before divergence at step 42)', 'step 299 (final)'."""
    label = f"step {step}"
    div = run.divergence_step
    if last and run.diverged and div is not None:
        if step < div:
            return f"{label} (last before divergence at step {div})"
        phase = (run.first_nonfinite or {}).get("phase")
        if step == div and phase == "update":
            return f"{label} (gradients finite; its update diverged)"
        return f"{label} (divergence at step {div})"
    if last and not run.diverged and step == final_step(run):
        return f"{label} (final)"
    if last:
        return f"{label} (last recorded)"
    return label


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) index of every run of True in a 1-D mask."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), (np.flatnonzero(edges == -1) - 1).tolist()))


def _segments(mask: np.ndarray) -> np.ndarray:
    """x of a NaN-separated polyline covering each run of True, from t - 0.5 to t + 0.5."""
    runs = _runs(mask)
    xs = np.full(3 * len(runs), np.nan)
    xs[0::3] = [a - 0.5 for a, _ in runs]
    xs[1::3] = [b + 0.5 for _, b in runs]
    return xs


def pick_layers(layers: list[str], most: int) -> list[str]:
    """At most `most` layers, evenly spread, always the bottom and the top one."""
    if len(layers) <= most:
        return list(layers)
    idx = np.unique(np.round(np.linspace(0, len(layers) - 1, most)).astype(int))
    return [layers[i] for i in idx]


def _draw_flow_line(ax, values: np.ndarray, present: np.ndarray, linestyle: str, linewidth: float,
                    **look) -> tuple[int, int]:
    """One layer's dL/dh_t norms of one step over t; returns (zeros, non-finite) counted.

    What a log scale cannot show is masked out of the line and drawn as bands on the edges
    instead: zeros along the bottom, NaN/inf along the top."""
    T = len(values)
    t_axis = np.arange(T)
    y = plottable(values, log=True)
    idx = downsample(y)
    ax.plot(t_axis[idx], y[idx], linestyle=linestyle, linewidth=linewidth,
            marker="." if T <= 40 else None, markersize=4, **look)
    ok = ~np.isnan(y)
    alone = ok & ~np.concatenate([[False], ok[:-1]]) & ~np.concatenate([ok[1:], [False]])
    if alone.any():  # a value between two gaps makes no line: a dot
        ax.plot(t_axis[alone], y[alone], linestyle="none", marker="o", markersize=5, **look)
    zero, bad = present & (values == 0), present & ~np.isfinite(values)
    edge = ax.get_xaxis_transform()  # x in data, y in axes fractions
    for mask, height in ((zero, 0.012), (bad, 0.988)):
        if mask.any():
            runs = _runs(mask)
            ax.plot(_segments(mask), np.full(3 * len(runs), height), transform=edge, clip_on=False,
                    linewidth=4, solid_capstyle="butt", zorder=5, **look)
            # A tick at each run's middle: over thousands of steps one t is under a pixel.
            ax.plot([(a + b) / 2 for a, b in runs], np.full(len(runs), height), transform=edge, clip_on=False,
                    linestyle="none", marker="|", markersize=8, markeredgewidth=2, zorder=5, **look)
    return int(zero.sum()), int(bad.sum())


def draw_bptt(exp: Experiment, run: Run, path: Path) -> Optional[Path]:
    """Norm of dL/dh_t against t for each recurrent layer, the first recorded step solid and
    the last one dashed, log scale; None without data."""
    import matplotlib
    from matplotlib.lines import Line2D

    flow = read_flow(run.path / "bptt_norms.csv")
    if flow is None:
        return None
    T = flow.T
    drawn_steps = [flow.steps[0]] + ([flow.steps[-1]] if len(flow.steps) > 1 else [])
    styles = dict(zip(drawn_steps, ("-", "--")))
    layers = pick_layers(flow.layers, MAX_BPTT_LAYERS)
    cmap = matplotlib.colormaps[BPTT_CMAP[0]]
    positions = np.linspace(*BPTT_CMAP[1:], len(layers)) if len(layers) > 1 else [BPTT_CMAP[1]]
    colors = {layer: cmap(float(x)) for layer, x in zip(layers, positions)}

    fig = new_figure(11.0, 5.6)  # laid out at the end, when the texts are known
    ax = fig.subplots()
    zeros = nonfinite = 0
    for layer in layers:
        for step in drawn_steps:
            # The early line wide and pale under the late dashed one: where the two steps
            # agree, the dashes still show on top of it.
            early = step == drawn_steps[0] and len(drawn_steps) > 1
            z, b = _draw_flow_line(ax, flow.norms[step][layer], flow.present[step][layer], styles[step],
                                   linewidth=2.4 if early else 1.6, color=colors[layer], alpha=0.55 if early else 1.0)
            zeros, nonfinite = zeros + z, nonfinite + b

    shown = np.concatenate([plottable(flow.norms[s][l], log=True) for s in drawn_steps for l in layers])
    positive = shown[~np.isnan(shown)]
    ax.set_yscale("log")
    if positive.size:
        # In decades, so that a norm near the float64 limit (a float32 state summed over a
        # batch can get there) leaves a margin without overflowing.
        lo, hi = math.log10(float(positive.min())), math.log10(float(positive.max()))
        # A flat flow still gets about a decade; a margin keeps the lines off the edge bands.
        pad = max(0.15, 0.05 * (hi - lo), (1.0 - (hi - lo)) / 2)
        ax.set_ylim(10 ** max(lo - pad, -300.0), 10 ** min(hi + pad, 300.0))
    else:
        ax.set_ylim(1e-3, 1.0)
    decade_ticks(ax.yaxis, *ax.get_ylim())
    if math.log10(ax.get_ylim()[1] / ax.get_ylim()[0]) >= 2:  # its major ticks are powers of ten
        power_ticks(ax.yaxis)
    step_axis(ax, 0.0, float(T - 1), pad=max(0.5, 0.01 * (T - 1)))
    ax.grid(True, which="major", alpha=0.3)

    # The key: colour is the layer, line style the step; then the marks.
    handles = []
    for i, layer in enumerate(layers):
        role = "" if len(flow.layers) == 1 else (" (bottom)" if i == 0 else (" (top)" if i == len(layers) - 1 else ""))
        handles.append(Line2D([], [], color=colors[layer], linewidth=2.2, label=f"{layer}{role}"))
    for i, step in enumerate(drawn_steps):
        pale = i == 0 and len(drawn_steps) > 1
        handles.append(Line2D([], [], color="black", linestyle=styles[step], linewidth=2.4 if pale else 1.6,
                              alpha=0.55 if pale else 1.0, label=flow_step_label(run, step, last=step == flow.steps[-1])))

    notes = []
    K = as_int((exp.config.get("train") if isinstance(exp.config.get("train"), dict) else {}).get("tbptt"))
    boundaries = tbptt_boundaries(T, K)
    if boundaries and len(boundaries) <= MAX_TBPTT_LINES:
        for t in boundaries:
            ax.axvline(t + 0.5, color="0.35", linestyle=":", linewidth=1.1, zorder=1)
        handles.append(Line2D([], [], color="0.35", linestyle=":", linewidth=1.1,
                              label=f"truncation boundary (tbptt {K}):\nno gradient crosses it"))
    elif boundaries:
        every = "step" if K == 1 else f"{K} steps"
        notes.append(f"truncated BPTT every {every}: {len(boundaries)} boundaries, too many to draw")

    # Where the first NaN/inf was born, when that was inside the recurrence.
    where, t_bad = birth(run)
    if run.diverged and t_bad is not None and 0 <= t_bad < T:
        layer = next((l for l in flow.layers if where.startswith(l + ".")), None)
        mark = dict(marker="v", markersize=11, color=colors.get(layer, NONFINITE_COLOR), markeredgecolor=NONFINITE_COLOR,
                     markeredgewidth=1.5, linestyle="none", clip_on=False, zorder=6)
        ax.plot([t_bad], [0.91], transform=ax.get_xaxis_transform(), **mark)
        phase = (run.first_nonfinite or {}).get("phase")
        phase = f" ({phase})" if phase else ""
        handles.append(Line2D([], [], label=f"first NaN/inf, step {run.divergence_step}{phase}:\n{where}", **mark))
    if nonfinite:
        handles.append(Line2D([], [], color="0.3", linewidth=4, label="top edge: NaN/inf at that t"))
    if zeros:
        handles.append(Line2D([], [], color="0.3", linewidth=4, label="bottom edge: zero at that t"))

    if len(layers) < len(flow.layers):
        notes.append(f"{len(layers)} of {len(flow.layers)} layers shown")
    if len(flow.steps) > 2:
        notes.append(f"{len(flow.steps) - 2} middle step(s) in the file not shown")
    masked = ([f"{zeros} zero{'s' if zeros > 1 else ''} (no gradient reaches h_t)"] if zeros else []) + \
             ([f"{nonfinite} NaN/inf value{'s' if nonfinite > 1 else ''}"] if nonfinite else [])
    if masked:
        notes.append(f"masked (gaps: not drawable on a log scale): {' and '.join(masked)}")
    if not positive.size:
        notes.append("no finite non-zero norm to draw: the scale is arbitrary")

    ax.set_xlabel(f"time step t        (backpropagation through time runs from t = {T - 1} back to t = 0  ←)")
    ax.set_ylabel("‖dL/dh_t‖: L2 norm over the batch (log scale)")
    title = f"Gradient through time — {run.run_id} — {outcome(run)}\n{wrap(exp.summary, TITLE_CHARS)}"
    ax.set_title(title, fontsize=11, **TITLE)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=9, frameon=False)
    if notes:
        fig.supxlabel("\n".join(notes), fontsize=9, color="0.25", y=0.02)
    ax.set_position(margins(
        fig, left=0.2 + text_height(1, 10) + text_width(["10⁻¹⁰⁰"], 10), right=0.35 + legend_width(handles, 9),
        top=0.15 + text_height(title.count("\n") + 1, 11),
        bottom=0.15 + text_height(2, 10) + 0.1 + (text_height(len(notes), 9) + 0.05 if notes else 0.0)))
    return style.save(fig, path)


def birth(run: Run) -> tuple[str, Optional[int]]:
    """(where, t) of a run's first NaN/inf: `t` is the time step inside a recurrence, from
    report.json's `t` or, in runs written before it was a field, from `... @ t=4`."""
    first = run.first_nonfinite or {}
    where = str(first.get("where") or "")
    t = as_int(first.get("t"))
    if t is None:
        m = re.search(r"@ t=(\d+)$", where)
        t = int(m.group(1)) if m else None
    return where, t
