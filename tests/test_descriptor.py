"""A variant describes itself: report.json's `rule` comes from the rule's own definition, and a
rule defined here (not in gradlab) runs end to end through the real CLI once registered."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, ClassVar, Literal, Optional

import numpy as np
import pytest
from pydantic import Field

from conftest import cli
from gradlab.config import ExperimentConfig, Rule, parse_rule, register_rule, unregister_rule, variant_id
from gradlab.store import rule_problem
from gradlab.transforms import RULES as ENGINE_RULES
from gradlab.transforms import Transform, finish, scale_

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ a rule from outside gradlab

class ClipHalve(Rule):
    """Every gradient times 0.5: the smallest rule there is."""

    method: Literal["halve"]


class Halve(Transform):
    def update(self, grads, state, params, ctx):
        for g in grads.values():
            g *= 0.5
        l2 = ctx.grad_norm
        return grads, state, finish(l2, 0.5 * l2, np.isfinite(l2))


@pytest.fixture
def halve():
    ENGINE_RULES["halve"] = Halve  # what @gradlab.transforms.register("halve") does
    register_rule(ClipHalve)  # the one registry line
    yield
    unregister_rule("halve")
    ENGINE_RULES.pop("halve", None)


def test_a_rule_defined_in_a_test_runs_end_to_end(halve, tmp_path, capsys):
    cfg = tmp_path / "halve.yaml"
    cfg.write_text("name: halve\nseeds: [0]\nmodel: {depth: 3, width: 8}\ntrain: {steps: 20}\n"
                   "clipping:\n  - {method: none}\n  - {method: halve}\n"
                   "  - {method: chain, rules: [{method: halve}, {method: norm, max_norm: 1.0}]}\n")
    out = tmp_path / "out"
    assert cli("run", cfg, "--out", out, "--quiet") == 0
    (exp,) = out.iterdir()
    rep = json.loads((exp / "runs" / "halve-s0" / "report.json").read_text())
    assert rep["variant"] == "halve" and rep["method"] == "halve" and rep["threshold"] is None
    assert rep["rule"] == {"method": "halve", "knobs": {}, "label": "halve", "swept": None}
    chain = json.loads((exp / "runs" / "chain-halve+norm-1-s0" / "report.json").read_text())
    assert chain["rule"]["label"] == "halve then norm max_norm 1"
    # Halving every step: the clipped norm is half the raw one, and the run trained.
    import csv
    rows = list(csv.DictReader(open(exp / "runs" / "halve-s0" / "metrics.csv")))
    assert len(rows) == 20 and all(float(r["clipped_norm"]) == pytest.approx(float(r["grad_norm"]) / 2, rel=1e-6)
                                   for r in rows)
    capsys.readouterr()
    assert cli("report", exp) == 0
    assert "halve-s0" in capsys.readouterr().out
    assert "| halve-s0 | halve |" in (exp / "report.md").read_text()
    for p in (exp / "plots").glob("*.png"):
        p.unlink()
    assert cli("plot", exp) == 0
    assert (exp / "plots" / "grad_norm.png").is_file() and (exp / "plots" / "heatmap_halve-s0.png").is_file()


def test_unregistered_the_rule_is_unknown_again(halve):
    unregister_rule("halve")
    with pytest.raises(Exception):
        ExperimentConfig.model_validate({"name": "x", "clipping": [{"method": "halve"}]})


# ------------------------------------------------------------------ the built-in rules' descriptors

def test_every_builtin_rule_describes_itself():
    agc = parse_rule({"method": "agc", "exclude": ["head"]})
    assert agc.describe() == {"method": "agc", "knobs": {"clipping": 0.01, "eps": 0.001, "exclude": ["head"]},
                              "label": "agc clipping 0.01 (exclude head)",
                              "swept": {"knob": "clipping", "value": 0.01}}
    norm = parse_rule({"method": "norm", "max_norm": 0.5, "norm_type": "inf"})
    assert variant_id(norm) == "norm-pinf-0.5" and norm.label() == "norm max_norm 0.5 (norm_type inf)"
    assert norm.describe()["knobs"]["norm_type"] == float("inf")
    assert parse_rule({"method": "none"}).describe() == {"method": "none", "knobs": {},
                                                         "label": "none (no clipping)", "swept": None}
    assert parse_rule({"method": "value", "clip_value": 0.1}).describe()["swept"] == {"knob": "clip_value",
                                                                                      "value": 0.1}
    chain = parse_rule({"method": "chain", "rules": [{"method": "agc"}, {"method": "norm", "max_norm": 1.0}]})
    assert chain.describe()["knobs"]["rules"][1]["swept"] == {"knob": "max_norm", "value": 1.0}
    for d in (agc.describe(), norm.describe(), chain.describe()):
        assert rule_problem(json.loads(json.dumps(d).replace("Infinity", '"inf"'))) == ""


@pytest.mark.parametrize("bad, why", [
    ("x", "not an object"),
    ({"method": "agc", "knobs": {}, "swept": None}, "no method or label"),
    ({"method": "agc", "label": "a", "knobs": [], "swept": None}, "`knobs` is not an object"),
    ({"method": "agc", "label": "a", "knobs": {}}, "`swept` is neither"),
    ({"method": "agc", "label": "a", "knobs": {"clipping": 0.02}, "swept": {"knob": "clipping", "value": 0.01}},
     "`swept` says clipping 0.01"),
])
def test_a_malformed_descriptor_is_named(bad, why):
    assert rule_problem(bad).startswith(why)


def test_the_run_store_takes_a_missing_descriptor_and_refuses_a_malformed_one(tmp_path):
    from gradlab.store import collect_reports

    cfg = tmp_path / "s.yaml"
    cfg.write_text("name: s\nseeds: [0]\nmodel: {depth: 3, width: 8}\ntrain: {steps: 5}\n"
                   "clipping:\n  - {method: none}\n  - {method: agc, clipping: 0.02}\n")
    assert cli("run", cfg, "--out", tmp_path / "out", "--quiet", "--no-plots") == 0
    (exp,) = (tmp_path / "out").iterdir()
    path = exp / "runs" / "agc-0.02-s0" / "report.json"
    rep = json.loads(path.read_text())
    assert rep["rule"]["swept"] == {"knob": "clipping", "value": 0.02}
    older = {k: v for k, v in rep.items() if k != "rule"}  # a run of a gradlab before descriptors
    path.write_text(json.dumps(older))
    assert [r["run_id"] for r in collect_reports(exp)] == ["none-s0", "agc-0.02-s0"]
    path.write_text(json.dumps({**rep, "rule": {**rep["rule"], "method": "norm"}}))
    damaged = []
    assert [r["run_id"] for r in collect_reports(exp, damaged)] == ["none-s0"]
    assert damaged == [("agc-0.02-s0", "report.json: `rule`: its method norm is not the run's agc")]


# ------------------------------------------------------------------ the report reads descriptors

def _rep(rule: dict, seed: int, **kw) -> dict:
    variant = rule.variant_id()
    return {"run_id": f"{variant}-s{seed}", "seed": seed, "variant": variant, "method": rule.method,
            "threshold": getattr(rule, rule.knob) if rule.knob else None, "rule": rule.describe(),
            "diverged": False, "divergence_step": None, "first_nonfinite": None, "final_loss": 0.1,
            "clip_fraction": 0.5, "steps": 10, "steps_completed": 10, **kw}


def test_sweep_rows_come_from_the_descriptors_and_the_config():
    from gradlab.report import sweep_table
    from gradlab.sweeps import family_names, sweep_rows

    clips = [{"method": "none"}, {"method": "norm", "max_norm": 1.0}, {"method": "norm", "max_norm": 10.0},
             {"method": "norm", "max_norm": 1.0, "norm_type": 1.0}, {"method": "norm", "max_norm": 10.0, "norm_type": 1.0}]
    cfg = ExperimentConfig.model_validate({"name": "x", "seeds": [0], "clipping": clips}).resolved()
    done = [parse_rule(c) for c in clips[:4]]  # norm-p1-10 has not run yet
    seeds, rows = sweep_rows([_rep(r, 0) for r in done], cfg)
    assert [r.variant for r in rows] == ["none", "norm-p1-1", "norm-p1-10", "norm-1", "norm-10"]
    assert [len(r.runs) for r in rows] == [1, 1, 0, 1, 1]
    assert rows[2].threshold == 10.0 and rows[2].knob == "max_norm" and rows[2].norm_type == 1.0
    names = family_names(rows)
    assert sorted(names.values()) == ["norm max_norm (norm_type 1)", "norm max_norm (norm_type 2)"]
    agc = [parse_rule({"method": "agc", "clipping": t}) for t in (0.01, 0.04)]
    acfg = {"seeds": [0], "clipping": [{"method": "agc", "clipping": t, "eps": 0.001, "exclude": []}
                                       for t in (0.01, 0.04)]}
    table = sweep_table([_rep(r, 0, mean_grad_cosine=0.9) for r in agc], acfg)
    assert table[0].startswith("| clipping | seed 0 |") and table[2].startswith("| 0.01 | ok 0.1 |")
    assert sweep_rows([_rep(r, 0, mean_grad_cosine=0.9) for r in agc], acfg)[1][0].grad_cosine == 0.9


def test_a_complete_experiment_is_described_by_its_runs_alone(tmp_path, monkeypatch):
    """Every config entry is matched to its runs' descriptors by its knobs (inf, lists and a
    chain's rules included): no schema parse for a finished experiment."""
    import gradlab.sweeps as sweeps
    from gradlab.store import collect_reports
    from gradlab.io import read_yaml

    cfg = tmp_path / "c.yaml"
    cfg.write_text("name: c\nseeds: [0]\nmodel: {depth: 3, width: 8}\ntrain: {steps: 5}\nclipping:\n"
                   "  - {method: norm, max_norm: 0.5, norm_type: inf}\n  - {method: agc, exclude: [head]}\n"
                   "  - {method: chain, rules: [{method: agc}, {method: norm, max_norm: 1.0}]}\n")
    assert cli("run", cfg, "--out", tmp_path / "out", "--quiet", "--no-plots") == 0
    (exp,) = (tmp_path / "out").iterdir()

    def unmatched(clip):
        raise AssertionError(f"parsed {clip}")

    monkeypatch.setattr(sweeps, "_described", unmatched)
    _, rows = sweeps.sweep_rows(collect_reports(exp), read_yaml(exp / "config.yaml"))
    assert [(r.variant, r.label, len(r.runs)) for r in rows] == [
        ("norm-pinf-0.5", "norm max_norm 0.5 (norm_type inf)", 1),
        ("agc-0.01-xhead", "agc clipping 0.01 (exclude head)", 1),
        ("chain-agc-0.01+norm-1", "agc clipping 0.01 then norm max_norm 1", 1)]


class ClipScale(Rule):
    """Every gradient times `factor`: a registered rule with a main knob, to sweep."""

    knob: ClassVar[Optional[str]] = "factor"
    method: Literal["scale"]
    factor: Annotated[float, Field(gt=0, le=1)] = 0.5


class Scale(Transform):
    def __init__(self, configs):
        super().__init__(configs)
        self.factor = np.array([c.factor for c in configs])

    def update(self, grads, state, params, ctx):
        scale_(grads, self.factor)
        l2 = ctx.grad_norm
        return grads, state, finish(l2, self.factor * l2, np.isfinite(l2))


def test_a_registered_rule_with_a_knob_is_swept_through_the_cli(tmp_path, capsys):
    ENGINE_RULES["scale"] = Scale
    register_rule(ClipScale)
    try:
        assert cli("sweep", ROOT / "configs" / "quickstart.yaml", "--method", "scale", "--thresholds", "0.25,0.5",
                   "--seeds", "0", "--set", "train.steps=10", "--set", "model.depth=3", "--out", tmp_path,
                   "--quiet", "--workers", "1") == 0
    finally:
        unregister_rule("scale")
        ENGINE_RULES.pop("scale", None)
    (exp,) = tmp_path.iterdir()
    rep = json.loads((exp / "runs" / "scale-0.25-s0" / "report.json").read_text())
    assert rep["rule"] == {"method": "scale", "knobs": {"factor": 0.25}, "label": "scale factor 0.25",
                           "swept": {"knob": "factor", "value": 0.25}} and rep["threshold"] == 0.25
    md = (exp / "report.md").read_text()
    assert "| factor | seed 0 |" in md and "| 0.25 | ok" in md
    assert (exp / "plots" / "sweep_clip_fraction.png").is_file()
    # Unregistered, the option is refused again, naming what it takes.
    assert cli("sweep", ROOT / "configs" / "quickstart.yaml", "--method", "scale", "--thresholds", "1",
               "--out", tmp_path) != 0
    assert "must be one of norm, value" in capsys.readouterr().err
