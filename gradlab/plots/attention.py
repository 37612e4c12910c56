"""A transformer's attention over training (attention.png): per seed, a row of three panels,
the largest attention logit of each block, the attention entropy of each block, and the
output's mean log Z, against the step.

Attention-logit growth is the transformer's own way to blow up (the softmax saturates, its
entropy collapses towards 0, its gradient explodes): the panels put the cause next to its
symptoms, for every clipping variant in the colour it has in every other figure. A block
has the same dash in every panel; a diverged run's lines end with the divergence x.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np

from gradlab.store import ATTENTION_CSV

from . import style
from .flow import pick_layers
from .load import Experiment, Run, read_table
from .over_steps import KEY_COLOR, ROOM, TOP_PAD, downsample, mark_off_scale, plottable
from .style import (TITLE, decade_ticks, key_width, new_figure, power_ticks, step_axis, text_height, text_width,
                    variant_label, wrap)

# Dashes for up to four blocks (the first, the last and two evenly between of a deeper model):
# more dashes on one panel are no longer told apart.
BLOCK_DASHES = ("-", (0, (5, 2)), (0, (1, 1.5)), (0, (6, 2, 1, 2)))
PANEL_W, PANEL_H = 4.2, 2.6
STATS = (("max_attn_logit", "largest |attention logit|", "max |q·k|/√dₕ"),
         ("attn_entropy", "attention entropy", "entropy (nats)"),
         ("logit_z", "output log Z", "mean log Z"))


def has_attention(run: Run) -> bool:
    return (run.path / ATTENTION_CSV).is_file()


def read_blocks(run: Run) -> Optional[tuple[np.ndarray, dict[str, dict[int, np.ndarray]]]]:
    """steps and {stat: {block: values}} from the run's attention.csv; None when unreadable."""
    header, table = read_table(run.path / ATTENTION_CSV)
    if not header or not len(table):
        return None
    out: dict[str, dict[int, np.ndarray]] = {}
    for i, col in enumerate(header[1:], start=1):
        _, block, stat = col.split(".", 2)
        out.setdefault(stat, {})[int(block)] = table[:, i]
    return table[:, 0], out


def _log_axis(values: list[np.ndarray]) -> bool:
    """A log y axis when the positive values span more than two decades (logits growing by
    orders of magnitude); linear otherwise, where small changes stay legible."""
    v = np.concatenate(values) if values else np.zeros(0)
    v = v[np.isfinite(v)]
    if not v.size or np.any(v <= 0):
        return False
    return math.log10(float(v.max())) - math.log10(float(v.min())) > 2


def _top(healthy: list[np.ndarray], wild: list[np.ndarray]) -> Optional[tuple[float, float]]:
    """A log panel's y range when a diverged run would swamp the rest (as over_steps.y_view
    does for the gradient norm): the healthy runs' decades and a margin, the explosion leaving
    through the top edge; None when everything fits."""
    def finite(parts):
        v = np.concatenate(parts) if parts else np.zeros(0)
        return v[np.isfinite(v) & (v > 0)]

    ok, bad = finite(healthy), finite(wild)
    if not ok.size or not bad.size:
        return None
    lo, hi = math.log10(float(ok.min())), math.log10(float(ok.max()))
    span = max(hi - lo, 1.0)
    if math.log10(float(bad.max())) <= hi + ROOM * span:
        return None
    bottom = min(lo, math.log10(float(bad.min())))
    top = hi + TOP_PAD * 2 * span
    return 10 ** (bottom - TOP_PAD * (top - bottom) / 2), 10 ** top


def _mark_end(ax, run: Run, steps: np.ndarray, y: np.ndarray, color, top: Optional[float]) -> None:
    """The divergence x at the run's divergence step, on the line's last drawable value
    before it, or on the top edge when there is none or it is off the scale."""
    step = run.divergence_step if run.divergence_step is not None else (int(steps[-1]) if len(steps) else None)
    if step is None:
        return
    mark = dict(marker="x", color=color, markersize=9, markeredgewidth=2.0, linestyle="none", zorder=5)
    ok = np.flatnonzero((steps <= step) & ~np.isnan(y))
    if len(ok) and (top is None or y[ok[-1]] <= top):
        ax.plot([step], [y[ok[-1]]], **mark)
    else:
        ax.plot([step], [1.0], transform=ax.get_xaxis_transform(), clip_on=False, **mark)


def draw_attention(exp: Experiment, path: Path) -> Optional[Path]:
    """None when no complete run has an attention.csv (figures.py plans it only when one does)."""
    from matplotlib.lines import Line2D

    data = {}
    for run in exp.runs:
        if has_attention(run) and (blocks := read_blocks(run)) is not None:
            data[run.run_id] = blocks
    runs = [r for r in sorted(exp.runs, key=lambda r: exp.variants.index(r.variant)) if r.run_id in data]
    if not runs:
        return None
    seeds = [s for s in exp.seeds if any(r.seed == s for r in runs)]
    n_blocks = max(len(b) for _, stats in data.values() for b in stats.values())
    shown = [int(b) for b in pick_layers([str(i) for i in range(n_blocks)], len(BLOCK_DASHES))]
    dash = dict(zip(shown, BLOCK_DASHES))
    stats = [s for s in STATS if s[0] == "logit_z" and any("logit_z" in r.metrics for r in runs)
             or s[0] != "logit_z" and any(s[0] in data[r.run_id][1] for r in runs)]

    def series(run: Run, stat: str) -> list[tuple[Optional[int], np.ndarray, np.ndarray]]:
        """(block or None, steps, values) of one run's lines in a panel."""
        if stat == "logit_z":
            return [(None, run.metrics["step"], run.metrics["logit_z"])] if "logit_z" in run.metrics else []
        steps, blocks = data[run.run_id]
        return [(b, steps, blocks[stat][b]) for b in shown if b in blocks.get(stat, {})]

    log = {s: _log_axis([v for r in runs for _, _, v in series(r, s)]) for s, _, _ in stats}
    limits = {s: _top([v for r in runs if not r.diverged for _, _, v in series(r, s)],
                      [v for r in runs if r.diverged for _, _, v in series(r, s)]) if log[s] else None
              for s, _, _ in stats}

    # The key: the variants in their colours, then the blocks' dashes, then the x.
    present = [v for v in exp.variants if any(r.variant == v for r in runs)]
    handles = [Line2D([], [], color=exp.colors[v], linewidth=2, label=variant_label(exp, v)) for v in present]
    handles.append(Line2D([], [], linestyle="none", label=""))
    for b in shown:
        handles.append(Line2D([], [], color=KEY_COLOR, linestyle=dash[b], linewidth=1.6,
                              label=f"block {b}" + (" (first)" if b == 0 and n_blocks > 1 else "")
                              + (" (last)" if b == n_blocks - 1 and n_blocks > 1 else "")))
    if len(shown) < n_blocks:
        handles.append(Line2D([], [], linestyle="none", label=f"({len(shown)} of {n_blocks} blocks shown)"))
    if any(r.diverged for r in runs):
        handles.append(Line2D([], [], color=KEY_COLOR, marker="x", markeredgewidth=2, linestyle="none",
                              label="diverged (NaN/inf)"))

    if any(limits.values()) and any(r.diverged for r in runs):
        handles.append(Line2D([], [], color=KEY_COLOR, marker="^", markersize=8, linestyle="none",
                              label="off the scale: peak value, step"))
    ncols, nrows = len(stats), len(seeds)
    heading = "Attention per step: each block's largest logit and entropy, the output's log Z"
    right = 0.35 + key_width([str(h.get_label()) for h in handles], 9)
    left = 0.2 + text_height(1, 10) + text_width(["10⁻¹⁰⁰"], 10)
    gap_w = 0.35 + text_height(1, 10) + text_width(["10⁻¹⁰⁰"], 10)  # each panel has its own y label
    w = left + ncols * PANEL_W + (ncols - 1) * gap_w + right
    suptitle = f"{heading}\n{wrap(exp.summary, int(w * 10))}"
    top = 0.1 + text_height(suptitle.count("\n") + 1, 12) + 0.1 + text_height(1, 11)
    gap_h = text_height(1, 11) + 0.45
    bottom = 0.1 + text_height(2, 10) + 0.1
    h = top + nrows * PANEL_H + (nrows - 1) * gap_h + bottom
    fig = new_figure(w, h)
    fig.suptitle(suptitle)
    # One y scale per statistic, so that two seeds' rows compare at a glance.
    axes = fig.subplots(nrows, ncols, sharex=True, sharey="col", squeeze=False)
    fig.subplots_adjust(left=left / w, right=1 - right / w, top=1 - top / h, bottom=bottom / h,
                        wspace=gap_w / PANEL_W, hspace=gap_h / PANEL_H)

    filled: set[int] = set()  # the columns (one shared y scale each) with something drawn
    for row, seed in enumerate(seeds):
        for col, (stat, title, ylabel) in enumerate(stats):
            ax = axes[row, col]
            ax.set_title(f"{title}, {seed}" if isinstance(seed, str) else f"{title}, seed {seed}", fontsize=11, **TITLE)
            ax.set_ylabel(ylabel + (" (log scale)" if log[stat] else ""))
            ax.grid(True, which="major", alpha=0.3)
            top = limits[stat][1] if limits[stat] else None
            slot = 0
            drawn = False
            for run in (r for r in runs if r.seed == seed):
                color = exp.colors[run.variant]
                for block, steps, values in series(run, stat):
                    y = plottable(values, log[stat])
                    drawn |= bool(np.any(~np.isnan(y)))
                    idx = downsample(y)
                    ax.plot(steps[idx], y[idx], color=color, linewidth=1.3, alpha=0.9,
                            linestyle=dash.get(block, "-") if block is not None else "-")
                    if run.diverged:
                        _mark_end(ax, run, steps, y, color, top)
                if run.diverged and top is not None:
                    # metrics.csv's column is the max over the blocks: the peak of every line.
                    slot += mark_off_scale(ax, run, [stat], top, color, slot)
            died = [r for r in runs if r.seed == seed and r.diverged]
            if col == 0 and died:
                # As in grad_norm.png: which run's x is which, and when (once a row).
                ax.legend(handles=[Line2D([], [], marker="x", color=exp.colors[r.variant], markersize=8,
                                          markeredgewidth=2.0, linestyle="none",
                                          label=f"{r.variant}: diverged at step {r.divergence_step}") for r in died],
                          loc="best", fontsize=8, framealpha=0.85)
            if not drawn:
                # Every run of the seed non-finite from its first step: say so.
                ax.text(0.5, 0.5, "no finite value to draw", transform=ax.transAxes, ha="center", va="center",
                        color="0.4", fontsize=10)
            else:
                filled.add(col)
            if limits[stat]:
                ax.set_ylim(*limits[stat])  # before the log scale, whose autoscale would overflow
            if log[stat]:
                ax.set_yscale("log")
                lo, hi = ax.get_ylim()
                decade_ticks(ax.yaxis, lo, hi)
                if math.log10(hi) - math.log10(lo) >= 2:
                    power_ticks(ax.yaxis)
            if row == nrows - 1:
                ax.set_xlabel("step")
    for col in set(range(ncols)) - filled:
        axes[0, col].set_yticks([])  # an empty scale rather than made-up ticks
    lasts = [float(r.metrics["step"][-1]) for r in runs if len(r.metrics.get("step", ()))]
    step_axis(axes[0, 0], 0.0, max(max(lasts, default=0.0), (exp.steps or 0) - 1.0))
    axes[0, -1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.04, 1.0), borderaxespad=0.0,
                       fontsize=9, frameon=False)
    return style.save(fig, path)
