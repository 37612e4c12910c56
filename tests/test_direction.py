"""The direction kept: direction.png (grad_cosine per step) and sweep_direction.png (its mean
over the clipped steps against the threshold), from real runs through the CLI."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from conftest import cli
from gradlab.store import collect_reports
from gradlab.plots import figures, style
from gradlab.plots.load import load_experiment
from gradlab.sweeps import sweep_rows

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
SMALL = ["--set", "train.steps=20", "--set", "model.depth=4", "--seeds", "0,1"]


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """An agc sweep (agc turns the gradient) drawn, each figure as the reader sees it."""
    out = tmp_path_factory.mktemp("dir")
    figs: dict[str, object] = {}
    real = style.save

    def save(fig, path):
        figs[path.name] = fig
        return real(fig, path)

    assert cli("sweep", QUICKSTART, *SMALL, "--method", "agc", "--thresholds", "0.01,0.04", "--out", out,
               "--quiet") == 0
    (exp,) = out.iterdir()
    plan = figures.plan(load_experiment(exp))  # drawn again here: `sweep` drew them in worker processes
    with pytest.MonkeyPatch.context() as m:
        m.setattr(style, "save", save)
        for fig in plan.figures:
            if fig.name in ("direction.png", "sweep_direction.png"):
                figures.draw(plan, fig)
    return exp, figs


def test_direction_per_step_has_a_panel_per_seed_and_a_line_per_variant(drawn):
    exp, figs = drawn
    fig = figs["direction.png"]
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["seed 0", "seed 1"]
    reports = collect_reports(exp)
    for seed, ax in zip((0, 1), axes):
        lo, hi = ax.get_ylim()
        assert 1.0 < hi < 1.05 and lo >= -0.05 and ax.get_yscale() == "linear"
        lines = [line for line in ax.get_lines() if len(line.get_xdata()) > 1]
        runs = [r for r in reports if r["seed"] == seed]
        assert len(lines) == len(runs) == 3  # none, agc-0.01, agc-0.04
        for line, rep in zip(lines, runs):
            header, *rows = (exp / "runs" / rep["run_id"] / "metrics.csv").read_text().split("\n")[:-1]
            col = header.split(",").index("grad_cosine")
            want = [float(r.split(",")[col]) for r in rows]
            np.testing.assert_allclose(line.get_ydata(), want)
            assert min(w for w in want if math.isfinite(w)) >= lo  # every cosine inside the view
    assert "Direction kept per step" in fig._suptitle.get_text()


def test_sweep_direction_shows_the_reports_means(drawn):
    exp, figs = drawn
    ax = figs["sweep_direction.png"].axes[0]
    ((xs, ys),) = [tuple(np.asarray(c.get_offsets()).T) for c in ax.collections]
    reports = collect_reports(exp)
    rows = [r for r in sweep_rows(reports, load_experiment(exp).config)[1]
            if r.method == "agc"]
    assert list(xs) == [r.threshold for r in rows] == [0.01, 0.04]
    assert list(ys) == pytest.approx([r.grad_cosine for r in rows])
    assert all(0 < y < 1 for y in ys)  # agc turned the gradient
    lo, hi = ax.get_ylim()
    assert lo <= min(ys) and hi > 1.0
    assert ax.get_xlabel() == "clipping threshold: clipping (log scale)"
    md = (exp / "report.md").read_text()
    assert "![sweep_direction](plots/sweep_direction.png)" in md and "![direction](plots/direction.png)" in md
    assert "| clipping | seed 0 | seed 1 | trained | mean final loss (trained seeds) | clip fraction | " \
           "grad cosine (clipped steps) |" in md


def test_only_a_rule_that_turns_the_gradient_gets_the_direction_figures(tmp_path, drawn):
    exp, _ = drawn
    assert {"direction.png", "sweep_direction.png"} <= {f.name for f in figures.plan(load_experiment(exp)).figures}
    assert cli("sweep", QUICKSTART, *SMALL, "--thresholds", "1,10", "--out", tmp_path, "--quiet", "--no-plots") == 0
    (norm,) = tmp_path.iterdir()
    names = {f.name for f in figures.plan(load_experiment(norm)).figures}
    assert "sweep_clip_fraction.png" in names and not names & {"direction.png", "sweep_direction.png"}
