"""The Pascanu et al. 2013 temporal order reproduction: its configs are the paper's setup, its
score is the final model's error on the held-out sequences, and its verdict follows the rule
its page states."""

import math

import numpy as np
import pytest

from gradlab.io import read_csv
from gradlab.models import build_model
from gradlab.reproductions import reproductions
from gradlab.reproductions.pascanu_temporal_order import (REPRODUCTION, SUCCESS_ERROR, score_runs,
                                                          success_rates, verdict)
from gradlab.reproductions.runner import load_configs, run_reproduction
from gradlab.tasks import build_task

PAPER, SMART = "pascanu_temporal_order", "pascanu_temporal_order_smart"


def test_it_is_registered():
    assert reproductions()["pascanu-temporal-order"] is REPRODUCTION


def test_the_shipped_configs_are_the_papers_setup():
    """50 tanh units, plain SGD at lr 0.01, minibatches of 20, clipping at a global norm of 1.0
    against none, scored on 10,000 held-out sequences; the paper's initial weight scales."""
    cfgs = load_configs(REPRODUCTION)
    assert list(cfgs) == [PAPER, SMART]
    for cfg in cfgs.values():
        assert (cfg.model.kind, cfg.model.width, cfg.model.depth, cfg.model.activation) == ("rnn", 50, 1, "tanh")
        o = cfg.train.optimizer
        assert (o.kind, o.lr, o.momentum, cfg.task.batch_size) == ("sgd", 0.01, 0.0, 20)
        assert [c.method for c in cfg.clipping] == ["none", "norm"] and cfg.clipping[1].max_norm == 1.0
        assert cfg.train.evaluate_batches * cfg.task.batch_size == 10_000
        assert cfg.train.evaluates(cfg.train.steps - 1)  # the final weights are scored
        assert len(cfg.seeds) >= 5
    stds = {}
    for stem, cfg in cfgs.items():
        rng = np.random.default_rng(0)
        task = build_task(cfg.task, "float64", rng)
        p = build_model(cfg.model, task, "float64").init(rng)
        stds[stem] = (p["rnn.0.W_hh"].std(), p["rnn.0.W_ih"].std())
        radius = np.abs(np.linalg.eigvals(p["rnn.0.W_hh"].astype(np.float64))).max()
        stds[stem] += (radius,)
    # basic tanh: every weight ~ N(0, 0.1); smart tanh's scales: inputs N(0, 0.01), W_hh at radius ~0.95.
    assert stds[PAPER][0] == pytest.approx(0.1, rel=0.05) and stds[PAPER][1] == pytest.approx(0.1, rel=0.1)
    assert stds[SMART][1] == pytest.approx(0.01, rel=0.1) and stds[SMART][2] == pytest.approx(0.95, rel=0.15)
    assert stds[PAPER][2] < 0.85  # basic tanh starts well inside the unit circle


@pytest.fixture(scope="module")
def shrunk(tmp_path_factory):
    out = tmp_path_factory.mktemp("repro")
    sets = ("train.steps=30", "seeds=[0, 1]", "train.eval_batches=3", "train.eval_every=10")
    root = run_reproduction(REPRODUCTION, out, sets=sets, workers=1, plots=False)
    return root


def test_a_shrunk_run_writes_its_page_figure_and_scores(shrunk):
    page = (shrunk / "reproduction.md").read_text()
    assert "Held-out set of 60 sequences, not the paper's 10,000" in page
    assert "![held-out error over steps](plots/heldout_error.png)" in page
    assert (shrunk / "plots" / "heldout_error.png").stat().st_size > 10_000
    assert "Verdict rule:" in page
    for stem in (PAPER, SMART):
        assert f"| `{stem}` | SGD (unclipped) | " in page and f"| `{stem}` | SGD-C (`norm-1`) | " in page


def test_the_score_is_the_final_weights_error_on_the_heldout_set(shrunk):
    """Read back independently: 1 - val_accuracy of metrics.csv's last row, on every run."""
    for exp in shrunk.iterdir():
        if not (exp / "runs").is_dir():
            continue
        scores = score_runs(exp)
        assert len(scores) == 4
        for s in scores:
            header, rows = read_csv(exp / "runs" / f"{s.variant}-s{s.seed}" / "metrics.csv")
            last = rows[-1]
            assert last[0] == 29 and s.error == pytest.approx(1 - last[header.index("val_accuracy")], abs=1e-12)
            assert list(s.steps) == [10, 20, 30]
            assert s.success == (s.error < SUCCESS_ERROR)
            # 60 held-out sequences: an error rate is a count of them
            assert math.isclose(s.error * 60, round(s.error * 60), abs_tol=1e-9)
        rates = success_rates(scores)
        assert set(rates) == {"none", "norm-1"} and all(n == 2 for _, n in rates.values())


@pytest.mark.parametrize("paper_clipped, paper_none, smart_clipped, smart_none, want", [
    (0, 0, 0, 0, "not"),         # clipping changed nothing
    (5, 5, 5, 5, "not"),
    (2, 0, 0, 0, "reproduced"),  # more seeds solved at the paper's own initialisation
    (3, 1, 5, 0, "reproduced"),
    (5, 5, 2, 0, "partly"),      # ... only in the nearest setting
    (0, 0, 5, 0, "partly"),
    (5, 5, 2, 3, "not"),         # fewer somewhere
])
def test_the_verdict_follows_the_stated_rule(paper_clipped, paper_none, smart_clipped, smart_none, want):
    r = {PAPER: {"none": (paper_none, 5), "norm-1": (paper_clipped, 5)},
         SMART: {"none": (smart_none, 5), "norm-1": (smart_clipped, 5)}}
    word, why = verdict(r, PAPER)
    assert word == want
    assert f"{PAPER}: clipped {paper_clipped}/5, unclipped {paper_none}/5" in why


def test_clipping_solving_fewer_seeds_anywhere_is_not_a_reproduction():
    r = {PAPER: {"none": (0, 5), "norm-1": (3, 5)}, SMART: {"none": (4, 5), "norm-1": (3, 5)}}
    assert verdict(r, PAPER)[0] == "not"
    assert verdict({PAPER: {"norm-1": (3, 5)}}, PAPER)[0] == "not"  # nothing to compare with
