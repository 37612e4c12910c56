"""Which figures an experiment has, what each one reads, and whether it is out of date.

A figure is redrawn only when what it shows may have changed: the files of the runs it draws
(their size and modification time: a run computed again writes them anew), the set of those
runs, config.yaml, and the drawing code itself. That is its fingerprint, kept beside the
PNGs in plots/.inputs.json. Deciding needs neither matplotlib nor the runs' numbers, so that
a rerun of a complete experiment costs almost nothing (loading matplotlib alone costs more
than the 0.5 s such a rerun is allowed).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, Optional

from gradlab.io import write_text
from gradlab.store import ATTENTION_CSV, UNDERFLOW_CSV

from . import direction, sweep
from . import grid as grid_figures
from .load import Experiment, Run

STAMPS = ".inputs.json"


@dataclass(frozen=True)
class Figure:
    name: str  # its file under plots/
    kind: str  # what the benchmark times separately: grad_norm, heatmap, bptt, sweep_divergence, ...
    run_id: Optional[str]  # a run's own figure (heatmap, bptt); None: every run, or with `seed` that seed's
    inputs: tuple[Path, ...]
    seed: Optional[int] = None  # small multiples: the runs of this seed, one panel each
    point: Optional[str] = None  # a grid experiment's small multiples: the runs of this point (its label)


@dataclass
class Plan:
    exp: Experiment
    sweep: Optional[sweep.Sweep]
    figures: list[Figure]
    grid: Optional[Any] = None  # gradlab.stability.Grid of a grid experiment


def plan(exp: Experiment) -> Plan:
    """Every figure of the experiment, overview figures first, then those of each seed
    (small multiples) or of each run (`small_multiples` decides which)."""
    shared = tuple(p for r in exp.runs for p in (r.path / "report.json", r.path / "metrics.csv"))
    figures = [Figure("grad_norm.png", "grad_norm", None, shared), Figure("loss.png", "loss", None, shared)]
    if any("accuracy" in r.columns for r in exp.runs):  # classification tasks only
        figures.append(Figure("accuracy.png", "accuracy", None, shared))
    if direction.turns(exp.runs):
        figures.append(Figure("direction.png", "direction", None, shared))
    if uses_loss_scaling(exp.config):
        figures.append(Figure("loss_scale.png", "loss_scale", None, shared))
    if measures_underflow(exp.config):
        figures.append(Figure("underflow.png", "underflow", None,
                              shared + tuple(r.path / UNDERFLOW_CSV for r in exp.runs)))
    if measures_smoothness(exp.config):
        figures.append(Figure("smoothness.png", "smoothness", None, shared))
    attention = [r for r in exp.runs if (r.path / ATTENTION_CSV).is_file()]
    if attention:  # transformers only: a model without attention has nothing to draw
        figures.append(Figure("attention.png", "attention", None,
                              shared + tuple(r.path / ATTENTION_CSV for r in attention)))
    # A grid's stability maps and sensitivity figures; its clipping variants are an axis of
    # those, not a threshold sweep of their own (each variant has a run per grid point).
    grid = grid_figures.find_grid(exp) if exp.runs else None
    if grid is not None:
        for name in grid_figures.figures(grid):
            figures.append(Figure(name, grid_figures.figures(grid)[name][0], None, shared))
    gridded = isinstance(exp.config.get("grid"), dict)
    # A grid's runs are points x variants x seeds: the threshold x seed figures would mix the
    # points (the grid's own figures compare them), and its small multiples are drawn per point.
    found = sweep.find_sweep(exp) if exp.runs and not gridded and grid is None else None
    if found is not None:
        for name in sweep.SWEEP_PLOTS:
            figures.append(Figure(name, name[:-4], None, shared))
        seed = sweep.first_seed(exp, found)
        figures.append(Figure(f"sweep_grad_norm_s{seed if seed is not None else 'x'}.png", "sweep_grad_norm", None,
                              shared))
        if direction.turns(direction.sweep_runs(found)):
            figures.append(Figure("sweep_direction.png", "sweep_direction", None, shared))
    if gridded:
        figures += point_figures(exp)
        return Plan(exp, found, figures, grid)
    if small_multiples(exp):
        for seed in exp.seeds:
            runs = seed_runs(exp, seed)
            for name, kind, source in (("heatmaps", "seed_heatmaps", "layer_norms.csv"), ("bptt", "seed_bptt", "bptt_norms.csv")):
                if kind == "seed_heatmaps" or any((r.path / source).is_file() for r in runs):
                    inputs = tuple(p for r in runs for p in (r.path / "report.json", r.path / source))
                    figures.append(Figure(f"{name}_s{seed}.png", kind, None, inputs, seed))
        return Plan(exp, found, figures, grid)
    for run in exp.runs:
        report = run.path / "report.json"
        for kind, source in (("heatmap", "layer_norms.csv"), ("bptt", "bptt_norms.csv")):
            if kind == "heatmap" or (run.path / source).is_file():  # an MLP has no gradient through time
                figures.append(Figure(f"{kind}_{run.run_id}.png", kind, run.run_id, (report, run.path / source)))
    return Plan(exp, found, figures, grid)


def point_figures(exp: Experiment) -> list[Figure]:
    """A grid experiment's small multiples: one figure per grid point (a panel per clipping
    variant), of the first seed only, so that their number is the number of points, not of
    runs (a grid of 5 x 4 points with 6 variants and 5 seeds has 600 runs and 20 such figures)."""
    from gradlab.points import point_label

    first = next((s for s in (exp.config.get("seeds") or []) if any(r.seed == s for r in exp.runs)),
                 exp.seeds[0] if exp.seeds else None)
    figures = []
    labels = list(dict.fromkeys(point_label(r.report["grid"]) for r in exp.runs if r.report.get("grid")))
    for label in labels:
        runs = seed_runs(exp, first, label)
        for name, kind, source in (("heatmaps", "seed_heatmaps", "layer_norms.csv"), ("bptt", "seed_bptt", "bptt_norms.csv")):
            if runs and (kind == "seed_heatmaps" or any((r.path / source).is_file() for r in runs)):
                inputs = tuple(p for r in runs for p in (r.path / "report.json", r.path / source))
                figures.append(Figure(f"{name}_{label}_s{first}.png", kind, None, inputs, first, label))
    return figures


def point_panels(exp: Experiment) -> Experiment:
    """A grid experiment as the figures over steps draw it: the first seed's runs, a panel per
    grid point (in the grid's order) where a plain experiment has a panel per seed, so that a
    panel's lines are a point's variants, not every point's at once."""
    from dataclasses import replace

    from gradlab.points import point_label

    first = next((s for s in (exp.config.get("seeds") or []) if any(r.seed == s for r in exp.runs)),
                 exp.seeds[0] if exp.seeds else None)
    runs = [replace(r, seed=point_label(r.report.get("grid") or {})) for r in exp.runs if r.seed == first]
    which = f" (seed {first}, the first of {len(exp.seeds)})" if len(exp.seeds) > 1 else f" (seed {first})"
    return replace(exp, runs=runs, seeds=list(dict.fromkeys(r.seed for r in runs)), summary=exp.summary + which)


def uses_loss_scaling(config: dict) -> bool:
    """Whether the experiment scales its loss (loss_scale.png): from the config, not from which
    runs are complete, so that the figure's presence does not change as the runs fill in."""
    train = config.get("train") if isinstance(config, dict) else None
    precision = train.get("precision") if isinstance(train, dict) else None
    return isinstance(precision, dict) and precision.get("loss_scale", "none") != "none"


def measures_underflow(config: dict) -> bool:
    """Whether the experiment measures gradient underflow (underflow.png): from the config too."""
    train = config.get("train") if isinstance(config, dict) else None
    precision = train.get("precision") if isinstance(train, dict) else None
    return isinstance(precision, dict) and precision.get("measure_underflow") is not None


def measures_smoothness(config: dict) -> bool:
    """Whether the experiment measures local smoothness (smoothness.png): from the config too."""
    train = config.get("train") if isinstance(config, dict) else None
    return isinstance(train, dict) and isinstance(train.get("measure_smoothness"), dict)


MAX_OWN_FIGURE_VARIANTS = 3
# What a figure costs to draw, roughly, in units of ~60 ms (benchmarks/plot_bench.py): the
# drawing processes take the longest first, so that none is left with a long one at the end.
COST = {"grad_norm": 3.0, "loss": 2.5, "accuracy": 2.5, "sweep_grad_norm": 2.5, "attention": 3.0,
        "loss_scale": 2.0, "underflow": 2.0, "smoothness": 2.0}


def expected_cost(fig: Figure) -> float:
    if fig.seed is not None:  # a panel per run of the seed (two inputs each)
        return 1.5 + 0.2 * len(fig.inputs) / 2
    if fig.run_id is not None:
        return 1.0
    return COST.get(fig.kind, 1.5)


def small_multiples(exp: Experiment) -> bool:
    """Whether the per-run figures are drawn as small multiples (one figure per seed, one
    panel per variant) rather than one figure per run: for a sweep, where comparison is the
    point (`sweeps.is_sweep`: the config has `sweep:`, or its clipping list or its runs have
    one method at two or more thresholds), and for any experiment of more than
    MAX_OWN_FIGURE_VARIANTS variants. Decided from the config (and the runs), not from which
    runs are complete yet, so that the figures' names do not change as a sweep fills in."""
    from gradlab.sweeps import is_sweep

    return is_sweep([r.report for r in exp.runs], exp.config) or len(exp.variants) > MAX_OWN_FIGURE_VARIANTS


def seed_runs(exp: Experiment, seed: int, point: Optional[str] = None) -> list[Run]:
    """The complete runs of one seed (of one grid point, by its label), in the panels' order:
    the baseline, then each family by threshold."""
    from gradlab.points import point_label

    return sorted((r for r in exp.runs if r.seed == seed and (point is None or point_label(r.report.get("grid") or {})
                                                              == point)),
                  key=lambda r: exp.variants.index(r.variant))


def is_seed_figure(name: str) -> bool:
    """heatmaps_s<seed>.png, bptt_s<seed>.png, and a grid point's heatmaps_<point>_s<seed>.png
    (a run id always has a variant before its -s<seed>, and a point label an `=`)."""
    return re.fullmatch(r"(heatmaps|bptt)_([^/]*=[^/]*_)?s-?\d+\.png", name) is not None


def is_per_run_or_seed(name: str) -> bool:
    """A run's own figure or a seed's small multiples: what one layout draws and the other must not leave behind."""
    return name.endswith(".png") and (name.startswith(("heatmap_", "bptt_")) or is_seed_figure(name))


def draw(p: Plan, fig: Figure) -> Optional[Path]:
    """Draw one figure; None when its run has nothing to show. The drawing functions are
    looked up when called, so that a test can stand in for any of them."""
    from . import attention, flow, heatmaps, over_steps, sweep_plots  # NumPy and matplotlib: only to draw

    from . import multiples

    exp, path = p.exp, p.exp.path / "plots" / fig.name
    if fig.seed is not None:
        draw_seed = multiples.draw_heatmaps if fig.kind == "seed_heatmaps" else multiples.draw_bptts
        runs = seed_runs(exp, fig.seed, fig.point)
        if fig.point is not None:  # the subtitle says what this point trained
            from dataclasses import replace

            from .describe import describe_config, point_config

            exp = replace(exp, summary=describe_config(point_config(exp.config, runs[0].report["grid"]),
                                                       exp.path.name) + f" (grid point {fig.point})")
        return draw_seed(exp, fig.seed, runs, path)
    if p.grid is not None and fig.name in grid_figures.figures(p.grid):  # every seed of every point
        from . import grid_plots

        what, keys = grid_figures.figures(p.grid)[fig.name]
        if what == grid_figures.MAP:
            return grid_plots.draw_stability_map(exp, p.grid, keys, path)
        return grid_plots.draw_sensitivity(exp, p.grid, keys[0], path)
    if isinstance(exp.config.get("grid"), dict):
        exp = point_panels(exp)  # the figures over steps: a panel per grid point
    if fig.run_id is not None:
        run = next(r for r in exp.runs if r.run_id == fig.run_id)
        return (heatmaps.draw_heatmap if fig.kind == "heatmap" else flow.draw_bptt)(exp, run, path)
    if fig.kind == "direction":
        return direction.draw_direction(exp, path)
    if fig.kind == "attention":
        return attention.draw_attention(exp, path)
    if fig.kind == "loss_scale":
        from . import scale

        return scale.draw_loss_scale(exp, path)
    if fig.kind == "underflow":
        from . import scale

        return scale.draw_underflow(exp, path)
    if fig.kind == "smoothness":
        from . import smoothness

        return smoothness.draw_smoothness(exp, path)
    if fig.kind == "sweep_direction":
        return direction.draw_sweep_direction(exp, p.sweep, path)
    if fig.kind in ("grad_norm", "loss", "accuracy"):
        return getattr(over_steps, f"draw_{fig.kind}")(exp, path)
    if fig.kind == "sweep_grad_norm":
        return sweep_plots.draw_grad_norm(exp, p.sweep, sweep.first_seed(exp, p.sweep), path)
    return getattr(sweep_plots, "draw_" + fig.kind[len("sweep_"):])(exp, p.sweep, path)


@lru_cache(maxsize=1)
def code_version() -> str:
    """A hash of the drawing code: a gradlab that draws differently redraws every figure."""
    h = hashlib.sha256()
    # gradlab.stability computes what the grid figures show.
    for path in [*sorted(Path(__file__).parent.glob("*.py")), Path(__file__).parents[1] / "stability.py"]:
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def fingerprint(p: Plan, fig: Figure, config: str) -> str:
    h = hashlib.sha256(f"{code_version()}\n{config}\n".encode())
    for path in fig.inputs:
        try:
            st = os.stat(path)
            h.update(f"{path.relative_to(p.exp.path)} {st.st_size} {st.st_mtime_ns}\n".encode())
        except (OSError, ValueError):
            h.update(f"{path} missing\n".encode())
    return h.hexdigest()[:24]


def fingerprints(p: Plan) -> dict[str, str]:
    try:
        config = hashlib.sha256((p.exp.path / "config.yaml").read_bytes()).hexdigest()
    except OSError:
        config = "unreadable"
    return {fig.name: fingerprint(p, fig, config) for fig in p.figures}


def read_stamps(out: Path) -> dict[str, str]:
    try:
        stamps = json.loads((out / STAMPS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return stamps if isinstance(stamps, dict) else {}


def write_stamps(out: Path, stamps: dict[str, str]) -> None:
    write_text(out / STAMPS, json.dumps(stamps, indent=0, sort_keys=True) + "\n")
