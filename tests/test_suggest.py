"""The suggested threshold: Pascanu et al.'s mean and AutoClip's percentiles of the unclipped
baseline's healthy gradient norms, printed by `gradlab report` and written into report.md and
suggestion.json, each equal to a direct computation from the baseline's metrics.csv."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import cli
from gradlab.suggest import PERCENTILES, percentile

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "configs" / "quickstart.yaml"


def experiment(out: Path) -> Path:
    (exp,) = [d for d in out.iterdir() if d.is_dir()]
    return exp


def direct(exp: Path, run_id: str) -> np.ndarray:
    """The baseline's pre-clip norms before the step it diverged at, read plainly."""
    with open(exp / "runs" / run_id / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    norms = []
    for r in rows:
        if int(r["nonfinite"]):
            break
        norms.append(float(r["grad_norm"]))
    return np.array(norms)


def g(x: float) -> str:
    return format(x, ".3g")


def test_the_numbers_are_the_baselines_metrics(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli("run", QUICK, "--set", "train.steps=30", "--seeds", "0,1", "--out", out, "--quiet", "--no-plots") == 0
    exp = experiment(out)
    capsys.readouterr()
    assert cli("report", exp) == 0
    printed = " ".join(capsys.readouterr().out.split())  # wrapped to the width: compared as words
    sug = json.loads((exp / "suggestion.json").read_text())
    report_md = (exp / "report.md").read_text()
    assert sug["baseline"] is True and sug["percentiles_of"] == list(PERCENTILES)
    pooled = []
    for s, run_id in zip(sug["per_seed"], ("none-s0", "none-s1")):
        norms = direct(exp, run_id)
        summary = json.loads((exp / "runs" / run_id / "report.json").read_text())
        assert summary["diverged"] and len(norms) == summary["divergence_step"]  # every step before it
        pooled.append(norms)
        assert s["run_id"] == run_id and s["healthy_steps"] == len(norms)
        assert s["mean_grad_norm"] == pytest.approx(norms.mean(), rel=1e-12)
        assert (s["low"], s["high"]) == pytest.approx((0.5 * norms.mean(), 10 * norms.mean()), rel=1e-12)
        for q in PERCENTILES:
            assert s["percentiles"][str(q)] == pytest.approx(np.percentile(norms, q), rel=1e-12)
        assert f"{run_id} ({len(norms)} steps): mean {g(norms.mean())}" in printed
        assert f"| {run_id} | {len(norms)} | {g(norms.mean())} | {g(0.5 * norms.mean())} to {g(10 * norms.mean())} |" \
            in report_md
    allnorms = np.concatenate(pooled)
    p = sug["pooled"]
    assert p["seeds"] == 2 and p["healthy_steps"] == allnorms.size
    assert p["mean_grad_norm"] == pytest.approx(allnorms.mean(), rel=1e-12)
    assert [p["percentiles"][str(q)] for q in PERCENTILES] == pytest.approx(np.percentile(allnorms, PERCENTILES),
                                                                            rel=1e-12)
    line = (f"all 2 seed(s), {allnorms.size} steps: mean gradient norm {g(allnorms.mean())}, so clip by norm at "
            f"{g(0.5 * allnorms.mean())} to {g(10 * allnorms.mean())}")
    assert line in printed
    assert "AutoClip percentiles " + ", ".join(f"p{q} {g(np.percentile(allnorms, q))}" for q in PERCENTILES) in printed
    # After the findings, and in report.md as its own section.
    assert printed.index("Suggested threshold") > printed.index("`none` diverged")
    assert "## Suggested threshold" in report_md and "| all seeds |" in report_md
    # The quickstart's baseline explodes: its history is the climb, and both outputs say so.
    caveat = f"The baseline diverged in 2 of 2 seed(s): its norms before that include the climb to the divergence " \
             f"(up to {g(allnorms.max())})"
    assert caveat in printed and caveat in report_md


def test_the_percentiles_are_numpys():
    r = np.random.default_rng(0)
    for n in (1, 2, 7, 100):
        x = r.lognormal(size=n).tolist()
        for q in (0, 10, 25, 50, 90, 100):
            assert percentile(x, q) == pytest.approx(np.percentile(x, q), rel=1e-14)


def test_no_baseline_says_so_and_what_to_run(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli("run", QUICK, "--set", "train.steps=5", "--seeds", "0", "--set", "clipping=[{method: norm, max_norm: 1.0}]",
               "--out", out, "--quiet", "--no-plots") == 0
    exp = experiment(out)
    capsys.readouterr()
    assert cli("report", exp) == 0
    printed = " ".join(capsys.readouterr().out.split())  # wrapped to the width: compared as words
    assert "no unclipped baseline in this experiment" in printed
    assert "--set 'clipping=[{method: none}]'" in printed and "gradlab sweep" in printed
    assert json.loads((exp / "suggestion.json").read_text())["baseline"] is False
    assert "No unclipped baseline in this experiment" in (exp / "report.md").read_text()


def test_a_baseline_that_diverged_at_step_0_has_no_healthy_steps(tmp_path, capsys):
    out = tmp_path / "out"
    # A gain beyond float32's range: the weights are inf, every run diverges at step 0.
    assert cli("run", QUICK, "--set", "train.steps=3", "--set", "model.init.gain=1e39", "--seeds", "0",
               "--out", out, "--quiet", "--no-plots") == 0
    exp = experiment(out)
    capsys.readouterr()
    assert cli("report", exp) == 0
    printed = " ".join(capsys.readouterr().out.split())  # wrapped to the width: compared as words
    assert "the baseline diverged at step 0 in every seed, so it has no healthy step" in printed
    sug = json.loads((exp / "suggestion.json").read_text())
    assert sug["pooled"]["healthy_steps"] == 0 and sug["pooled"]["mean_grad_norm"] is None
    assert sug["per_seed"][0]["healthy_steps"] == 0 and sug["per_seed"][0]["divergence_step"] == 0
    assert "no healthy step to measure" in (exp / "report.md").read_text()
