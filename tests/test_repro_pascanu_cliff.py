"""The pascanu-cliff reproduction end to end, shortened to 40 steps (both unclipped runs hit
the wall before step 20): its page, its figures, and numbers that are the runs' own."""

import csv
import re

import numpy as np
import pytest

from gradlab.reproductions import get
from gradlab.reproductions.runner import run_reproduction


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    return run_reproduction(get("pascanu-cliff"), out, sets=("train.steps=40",), plots=False)


def test_the_page_has_the_figures_the_rule_and_a_verdict(root):
    page = (root / "reproduction.md").read_text()
    for fig in ("pascanu_cliff_surface.png", "pascanu_cliff_thresholds.png"):
        assert f"plots/{fig}" in page and (root / "plots" / fig).read_bytes()[:4] == b"\x89PNG"
    assert re.search(r"## Verdict: (reproduced|partly|not)", page)
    assert "Rule: **reproduced** when" in page


def test_the_numbers_are_the_runs(root):
    page = (root / "reproduction.md").read_text()
    for exp in root.glob("pascanu_cliff*-*"):
        with open(exp / "runs" / "none-s0" / "metrics.csv") as fh:
            norms = np.array([float(r["grad_norm"]) for r in csv.DictReader(fh)])
        peak = int(np.argmax(norms))
        # The baseline's peak, where it sits, and its average (the heuristic's unit) are on the page.
        assert f"peaks at {norms.max():.3g} at step {peak}" in page
        assert f"its average norm is {norms.mean():.3g}" in page
        # The cliff at 40 steps already: an order of magnitude above the steps before it.
        assert norms.max() > 10 * np.median(norms[:peak])


def test_the_surface_shows_both_starts(root):
    # The figure's data: the analysis draws the two starts' trajectories on one surface.
    from gradlab import landscape as L

    exp = next(root.glob("pascanu_cliff-*"))
    ls = L.compute(exp, "none-s0", params=("w", "b"), box=(-1, 11, -7, 3), resolution=5, variants=["norm-0.1"])
    assert set(ls.paths) == {"none", "norm-0.1"}
    _, xy, _ = ls.paths["none"]
    assert tuple(xy[0]) == (6.0, -2.5) and np.hypot(*np.diff(xy, axis=0).T).max() > 10
