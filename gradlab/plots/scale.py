"""The low-precision figures. The loss scale over steps (loss_scale.png): one panel per seed,
one colour per variant, on a log axis, with each skipped step marked on the line; for
experiments with loss scaling (train.precision.loss_scale static or dynamic) only. The
gradient entries lost to underflow (underflow.png): one panel per variant, per tensor; for
experiments that measure it (train.precision.measure_underflow) only."""

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


# ------------------------------------------------------------------------------- underflow

UNDERFLOW_HEADING = "Gradient entries lost to underflow, per tensor\n(non-zero in float32, zero or subnormal in {})"
# The tensors that lost the most get a colour each, the rest one grey: a transformer's dozens
# of tensors in as many colours would tell nothing apart.
MAX_NAMED_TENSORS = 8
OVERALL_COLOR = "black"
OTHER_TENSORS_COLOR = "0.72"


def read_underflow(run) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
    """The measured steps and each tensor's fractions there, from the run's underflow.csv;
    None when it has none (or no measured step)."""
    from gradlab.store import UNDERFLOW_CSV

    from .load import read_table

    header, table = read_table(run.path / UNDERFLOW_CSV)
    if len(header) < 2 or not len(table):
        return None
    measured = ~np.all(np.isnan(table[:, 1:]), axis=1)
    if not measured.any():
        return None
    return table[measured, 0], {name: table[measured, i] for i, name in enumerate(header) if i}


def draw_underflow(exp: Experiment, path: Path) -> Path | None:
    """One panel per variant (its seeds together), the measured steps on x and the fraction of
    each tensor's non-zero float32 gradient entries the compute dtype lost on y, in percent;
    the tensors that lost the most in colour, the others grey, metrics.csv's overall fraction
    in black. A line joins the measured steps, each marked. None when no run measured any."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import PercentFormatter

    tables = {r.run_id: t for r in exp.runs if (t := read_underflow(r)) is not None}
    runs = [r for r in exp.runs if r.run_id in tables]
    if not runs:
        return None
    # The tensors named are those that lost the most on average over the measured steps: a
    # bias of 32 entries jumps by 3% with one entry, a peak would name it for nothing.
    mean: dict[str, list] = {}
    for steps, tensors in tables.values():
        for name, v in tensors.items():
            mean.setdefault(name, []).extend(v[np.isfinite(v)].tolist())
    peak = {n: (sum(v) / len(v) if v else 0.0) for n, v in mean.items()}
    order = list(next(iter(tables.values()))[1])  # the model's parameter order
    named = sorted((n for n in order if peak[n] > 0), key=lambda n: (-peak[n], order.index(n)))[:MAX_NAMED_TENSORS]
    named.sort(key=order.index)
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    colors = {n: cmap(i % 10) for i, n in enumerate(named)}
    variants = [v for v in exp.variants if any(r.variant == v for r in runs)]
    compute = ((exp.config.get("train") or {}).get("precision") or {}).get("compute", "the compute dtype")
    heading = UNDERFLOW_HEADING.format(compute)
    fig, panels = _variant_grid(exp, variants, heading)
    top = 0.0
    for run in runs:
        ax = panels[run.variant]
        steps, tensors = tables[run.run_id]
        for name in order:  # grey first, so that the coloured lines stay on top
            if name in colors:
                continue
            ax.plot(steps, 100 * tensors[name], color=OTHER_TENSORS_COLOR, linewidth=0.8, zorder=2)
        for name in named:
            ax.plot(steps, 100 * tensors[name], color=colors[name], linewidth=1.4, marker="o", markersize=2.5,
                    zorder=3)
        overall = run.metrics.get("underflow")
        if overall is not None:
            at = ~np.isnan(overall)
            ax.plot(run.metrics["step"][at], 100 * overall[at], color=OVERALL_COLOR, linewidth=2.0, linestyle="--",
                    zorder=4)
        values = np.concatenate([v for v in tensors.values()])
        values = values[np.isfinite(values)]
        top = max(top, float(values.max()) if values.size else 0.0)
    last = max(float(tables[r.run_id][0][-1]) for r in runs)
    step_axis(next(iter(panels.values())), 0.0, max(last, (exp.steps or 0) - 1.0))
    # Percent on a linear axis from 0: a fraction of 0 is the news as much as one of 40%, so
    # the axis starts a little below it, where a line at 0 is not hidden by the frame.
    top = max(100 * top * 1.08, 1.0)
    for i, ax in enumerate(panels.values()):
        ax.set_ylim(-0.02 * top, top)
        ax.yaxis.set_major_formatter(PercentFormatter(decimals=None))
        if i % style.MAX_PANEL_COLUMNS == 0:
            ax.set_ylabel("entries lost to underflow")
    handles = [Line2D([], [], color=OVERALL_COLOR, linewidth=2.0, linestyle="--", label="all tensors")]
    handles += [Line2D([], [], color=colors[n], linewidth=1.4, marker="o", markersize=3, label=n) for n in named]
    if len(named) < len(order):
        handles.append(Line2D([], [], color=OTHER_TENSORS_COLOR, linewidth=0.8,
                              label=f"{len(order) - len(named)} other tensors"
                              + (" (none lost)" if not any(peak[n] > 0 for n in order if n not in colors) else "")))
    if len(exp.seeds) > 1:
        handles += [Line2D([], [], linestyle="none", label=""),
                    Line2D([], [], linestyle="none", label=f"one line per seed ({len(exp.seeds)})")]
    return key_and_save(fig, panels, handles, heading, exp.summary, path)


def _variant_grid(exp: Experiment, variants: list, heading: str):
    """One panel per variant (shared axes) titled with its label; (fig, {variant: ax})."""
    n = len(variants)
    ncols = min(n, style.MAX_PANEL_COLUMNS)
    fig, axes = style.panel_grid(n)
    panels = {}
    for i, (variant, ax) in enumerate(zip(variants, axes)):
        ax.set_title(variant_label(exp, variant), **style.TITLE)
        ax.grid(True, which="major", alpha=0.3)
        if i + ncols >= n:
            ax.set_xlabel("step")
            ax.xaxis.set_tick_params(labelbottom=True)
        panels[variant] = ax
    return fig, panels
