"""The loss scale over steps (loss_scale.png): one panel per seed, one colour per variant, on
a log axis, with each skipped step marked on the line. For experiments with loss scaling
(train.precision.loss_scale static or dynamic) only."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from . import style
from .load import Experiment
from .over_steps import KEY_COLOR, key_and_save, mark_divergence, panel_grid
from .style import decade_ticks, power_ticks, step_axis, variant_label

HEADING = "Loss scale per step (skipped steps marked)"


def draw_loss_scale(exp: Experiment, path: Path) -> Path | None:
    """The scale each step used, as a staircase (it holds between updates); a skipped step is a
    down-pointing triangle on the line at that step: with a dynamic scale, the step where it
    backs off. None when no run has the column (runs of a gradlab before loss scaling)."""
    from matplotlib.lines import Line2D

    runs = [r for r in exp.runs if "loss_scale" in r.columns]
    if not runs:
        return None
    fig, panels = panel_grid(exp, HEADING)
    values = np.concatenate([r.metrics["loss_scale"] for r in runs])
    values = values[np.isfinite(values) & (values > 0)]
    diverged: dict = {s: [] for s in exp.seeds}
    skipped_any = False
    for run in sorted(runs, key=lambda r: exp.variants.index(r.variant)):
        ax, color = panels[run.seed], exp.colors[run.variant]
        steps, scale = run.metrics["step"], run.metrics["loss_scale"]
        ax.plot(steps, scale, drawstyle="steps-post", color=color, linewidth=1.5, alpha=0.9)
        skipped = run.metrics.get("skipped")
        if skipped is not None:
            at = skipped == 1
            skipped_any |= bool(at.any())
            ax.plot(steps[at], scale[at], linestyle="none", marker="v", markersize=5, color=color,
                    markeredgecolor="white", markeredgewidth=0.4, zorder=5)
        if run.diverged:
            mark = mark_divergence(ax, run, "loss_scale", True, color)
            if (run.first_nonfinite or {}).get("kind") == "loss_scale_collapse":
                mark.set_label(f"{run.variant}: scale below min_scale after step {run.divergence_step}")
            diverged[run.seed].append(mark)
    steps_all = [r.metrics["step"] for r in runs if len(r.metrics["step"])]
    last = max((float(s[-1]) for s in steps_all), default=0.0)
    step_axis(next(iter(panels.values())), 0.0, max(last, (exp.steps or 0) - 1.0))
    lo, hi = (float(values.min()), float(values.max())) if values.size else (1.0, 1.0)
    floor = _min_scale(exp.config)
    if floor is not None and any((r.first_nonfinite or {}).get("kind") == "loss_scale_collapse" for r in runs):
        lo = min(lo, floor)  # the floor a collapse went through is drawn, so it is in range
    else:
        floor = None
    # A scale that never moves would give a zero-height range: half a decade either side.
    bottom, top = 10 ** (math.log10(lo) - 0.5), 10 ** (math.log10(hi) + 0.5)
    for seed, ax in panels.items():
        ax.set_ylim(bottom, top)
        ax.set_yscale("log")
        decade_ticks(ax.yaxis, bottom, top)
        if math.log10(top) - math.log10(bottom) >= 2:
            power_ticks(ax.yaxis)
        if floor is not None:
            ax.axhline(floor, color=KEY_COLOR, linestyle=":", linewidth=1.3, zorder=1)
        if diverged[seed]:
            ax.legend(handles=diverged[seed], loc="best", fontsize=8, framealpha=0.85)
    for i, ax in enumerate(panels.values()):
        if i % style.MAX_PANEL_COLUMNS == 0:
            ax.set_ylabel("loss scale (log scale)")
    present = [v for v in exp.variants if any(r.variant == v for r in runs)]
    handles = [Line2D([], [], color=exp.colors[v], linewidth=2, label=variant_label(exp, v)) for v in present]
    key = []
    if skipped_any:
        key.append(Line2D([], [], color=KEY_COLOR, marker="v", markersize=6, linestyle="none",
                          label="step skipped (inf/NaN gradient)"))
    if floor is not None:
        key.append(Line2D([], [], color=KEY_COLOR, linestyle=":", linewidth=1.3, label=f"min_scale {floor:g}"))
    if any(r.diverged for r in runs):
        key.append(Line2D([], [], color=KEY_COLOR, marker="x", markeredgewidth=2, linestyle="none",
                          label="ended (scale below min_scale,\nor a non-finite value)"))
    if key:
        handles += [Line2D([], [], linestyle="none", label="")] + key
    return key_and_save(fig, panels, handles, HEADING, exp.summary, path)


def _min_scale(config: dict) -> float | None:
    """train.precision.min_scale of a dynamic scale (its default where the config leaves it out)."""
    p = ((config or {}).get("train") or {}).get("precision") or {}
    if p.get("loss_scale") != "dynamic":
        return None
    value = p.get("min_scale", 2.0 ** -24)
    return float(value) if isinstance(value, (int, float)) and value > 0 else None
