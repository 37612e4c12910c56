"""The direction a rule kept: grad_cosine, the cosine between the gradient and what the rule
passed on, per step (direction.png) and, for a sweep, its mean over the clipped steps against
the threshold (sweep_direction.png).

Both are drawn only when some run turned its gradient (a mean_grad_cosine below 1 in its
report.json): norm clipping, AutoClip, ZClip and skipping scale the gradient by one positive
factor, so their cosine is exactly 1 and a figure of flat lines at 1 would say nothing the
tables do not. Deciding reads the reports only (no NumPy, no matplotlib)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Optional

from gradlab.io import as_float

from .load import Experiment, Run
from .sweep import Sweep


def _cosine(run: Run) -> Optional[float]:
    x = as_float(run.report.get("mean_grad_cosine"))
    return x if x is not None and math.isfinite(x) else None


def turns(runs: Iterable[Run]) -> bool:
    """Whether some run's rule changed its gradient's direction on some step."""
    return any((c := _cosine(r)) is not None and c < 1.0 for r in runs)


def sweep_runs(sweep: Sweep) -> list[Run]:
    return [r for f in sweep.families for r in f.runs.values()]


def _bottom(values: Iterable[float]) -> float:
    """A round lower y limit below the lowest cosine, 1 the top: the cosines that matter are
    often 0.99-something, which a [0, 1] axis would flatten onto the top edge."""
    lo = min((v for v in values if math.isfinite(v)), default=1.0)
    span = max(1.0 - lo, 1e-4)
    unit = 10.0 ** math.floor(math.log10(span))
    return max(0.0, 1.0 - math.ceil(span * 1.05 / unit) * unit)


def y_range(exp: Experiment) -> tuple[float, float]:
    """[bottom, 1] over every finite per-step cosine of the runs."""
    import numpy as np

    parts = [r.metrics["grad_cosine"] for r in exp.runs if "grad_cosine" in r.metrics]
    values = np.concatenate(parts) if parts else np.zeros(0)
    values = values[np.isfinite(values)]
    return (_bottom([float(values.min())] if values.size else []), 1.0)


def draw_direction(exp: Experiment, path: Path) -> Path:
    """grad_cosine per step, one panel per seed (as grad_norm.png), one line per variant; the
    baseline and the scaling rules lie on 1."""
    from . import over_steps

    return over_steps.draw_over_steps(
        exp, [("grad_cosine", "-", "cosine")], ylabel="cosine(gradient, clipped gradient)",
        heading="Direction kept per step (1: unchanged, as by every rule that only scales)", path=path, force_log=False, thresholds=False, ylim=y_range(exp))


def draw_sweep_direction(exp: Experiment, sweep: Sweep, path: Path) -> Path:
    """The mean grad_cosine over the clipped steps against the threshold: a thin line per seed
    (report.json's mean_grad_cosine) and the mean over the seeds (the report's number)."""
    import numpy as np
    from matplotlib.lines import Line2D

    from . import style
    from .sweep import MEAN_LINE, SEED_LINE
    from .sweep_plots import _family_entries, _legend_right, _sweep_figure, _threshold_axis

    fig, ax = _sweep_figure(exp, sweep, "Direction kept against the clipping threshold: mean cosine over the "
                                        "clipped steps")
    entries: list[tuple[Any, str]] = []
    drawn: list[float] = []
    for fam in sweep.families:
        for seed in sweep.seeds:
            ys = [_cosine(r) if (r := fam.runs.get((seed, t))) is not None else None for t in fam.thresholds]
            drawn += [y for y in ys if y is not None]
            ax.plot(fam.thresholds, [np.nan if y is None else y for y in ys], color=fam.color, marker=".",
                    markersize=6, zorder=2, **SEED_LINE)
        points = [(t, fam.rows[t].grad_cosine) for t in fam.thresholds if fam.rows[t].grad_cosine is not None]
        xs, means = [t for t, _ in points], [m for _, m in points]
        ax.plot(xs, means, color=fam.color, zorder=4, **MEAN_LINE)
        ax.scatter(xs, means, c=[exp.colors.get(fam.variants[t], fam.color) for t in xs], edgecolors="black",
                   linewidths=0.8, s=55, zorder=5, clip_on=False)
        entries += _family_entries(exp, sweep, fam, "mean over the seeds")
    ax.axhline(1.0, color=style.BASELINE_COLOR, linestyle=":", linewidth=1.3, zorder=1)
    entries.append((Line2D([], [], color=style.BASELINE_COLOR, linestyle=":", linewidth=1.3),
                    "1: direction unchanged (no clipping,\nand every rule that only scales)"))
    entries.append((Line2D([], [], linestyle="none"), "(a threshold that clipped no step\nhas no point)"))
    _threshold_axis(ax, sweep)
    bottom = _bottom(drawn)
    margin = 0.03 * (1.0 - bottom)
    ax.set_ylim(bottom - margin, 1.0 + margin)
    ax.set_ylabel("mean cosine(gradient, clipped gradient)")
    _legend_right(ax, entries)
    return style.save(fig, path)
