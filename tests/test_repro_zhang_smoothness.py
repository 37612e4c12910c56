"""The zhang-smoothness reproduction: its analysis end to end on a shrunk run (its figures, its
page, numbers that come from the runs), and the loss curve and target rules it rests on."""

import math
import re

import numpy as np
import pytest

from gradlab.io import read_json
from gradlab.plots.load import load_experiment
from gradlab.reproductions import VERDICTS, get
from gradlab.reproductions.runner import run_reproduction
from gradlab.reproductions.zhang_smoothness import CONFIG, first_at_or_below, smoothed, window

SHRUNK = ("train.steps=24", "seeds=[0]", "model.width=8", "task.seq_len=8", "task.batch_size=4",
          "train.measure_smoothness.every=2")


def test_the_loss_curve_is_a_trailing_mean_and_inf_from_a_divergence():
    loss = np.array([4.0, 2.0, 6.0, 1.0, np.nan])
    got = smoothed(loss, 6, 2)
    assert got[:4].tolist() == [4.0, 3.0, 4.0, 3.5]
    assert np.isinf(got[4:]).all()  # diverged at step 4, and no row at step 5
    assert smoothed(np.array([1.0, 3.0]), 2, 5).tolist() == [1.0, 2.0]  # fewer than the window at first
    assert window(600) == 25 and window(10) == 1


def test_the_first_step_at_or_below_the_target():
    assert first_at_or_below(np.array([3.0, 2.0, 1.0, 2.0]), 2.0) == 1
    assert first_at_or_below(np.array([3.0, np.inf]), 2.0) is None


@pytest.fixture(scope="module")
def shrunk(tmp_path_factory):
    out = tmp_path_factory.mktemp("repro")
    return run_reproduction(get("zhang-smoothness"), out, sets=SHRUNK, workers=1)


def test_the_shrunk_reproduction_runs_end_to_end(shrunk):
    record = read_json(shrunk / "reproduction.json")
    assert record["verdict"] in VERDICTS and record["runs_trained"] == 12
    for png in ("smoothness.png", "speed.png"):
        assert (shrunk / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The grid experiment's own figure: a panel per grid point and variant.
    exp = next(p for p in shrunk.iterdir() if p.name.startswith(CONFIG))
    assert (exp / "plots" / "smoothness.png").stat().st_size > 10_000
    page = (shrunk / "reproduction.md").read_text()
    assert f"## Verdict: {record['verdict']}" in page
    assert "![smoothness](plots/smoothness.png)" in page and "![speed](plots/speed.png)" in page
    # Every learning rate of the grid has a row per variant.
    for lr in ("1", "2", "4", "8", "16", "32"):
        assert re.search(rf"\| `none` \| {lr} \|", page) and re.search(rf"\| `norm-0.25` \| {lr} \|", page)


def test_the_target_and_the_best_rate_come_from_the_runs(shrunk):
    """The target printed is the best stable unclipped curve's value at 80% of the steps,
    recomputed here from the runs' metrics.csv."""
    exp = next(p for p in shrunk.iterdir() if p.name.startswith(CONFIG))
    loaded = load_experiment(exp)
    curves = {}
    for r in loaded.runs:
        if r.variant == "none" and not r.diverged:
            curves[r.report["grid"]["train.optimizer.lr"]] = smoothed(r.metrics["loss"], 24, window(24))
    best = min(curves, key=lambda lr: curves[lr][-1])
    target = curves[best][int(round(0.8 * 24)) - 1]
    page = (shrunk / "reproduction.md").read_text()
    assert f"is {best:g}; the target is its loss at step 18 (80% of the run): {target:.4f}" in page


def test_a_bad_override_is_refused_with_nothing_written(tmp_path):
    from gradlab.errors import UserError

    with pytest.raises(UserError, match="train.measure_smoothness.every"):
        run_reproduction(get("zhang-smoothness"), tmp_path / "out", sets=("train.measure_smoothness.every=0",))
    assert not (tmp_path / "out").exists()
    assert math.isfinite(get("zhang-smoothness").minutes)
