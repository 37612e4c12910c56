"""gradlab.report's threshold x seed table and sweep finding, from synthetic reports (no training)."""

from __future__ import annotations

import yaml

from gradlab.config import ExperimentConfig
from gradlab.io import write_json, write_text
from gradlab.report import render, sweep_finding, sweep_table
from gradlab.sweeps import is_sweep, sweep_rows

STEPS = 50


def rep(variant: str, seed: int, *, div: int | None = None, loss: float = 0.05, clip: float = 0.5) -> dict:
    """One run's report.json as the experiment writes it."""
    method, _, thr = variant.partition("-")
    return {
        "run_id": f"{variant}-s{seed}", "seed": seed, "variant": variant, "method": method,
        "threshold": float(thr) if thr else None, "norm_type": 2.0 if method == "norm" else None,
        "diverged": div is not None, "divergence_step": div,
        "first_nonfinite": None if div is None else {"step": div, "phase": "forward", "where": "loss", "kind": "inf", "t": None},
        "max_grad_norm": 10.0, "final_loss": 1e6 if div is not None else loss,  # a diverged run keeps its last finite loss
        "steps_completed": div if div is not None else STEPS, "steps": STEPS,
        "clip_fraction": 0.0 if method == "none" else clip,
    }


def sweep_cfg(thresholds=(0.1, 1.0, 10.0), seeds=(0, 1, 2), method="norm", baseline=True, key=True) -> dict:
    """config.yaml of `gradlab sweep` (or, without `key`, a hand-written clipping list)."""
    name = "max_norm" if method == "norm" else "clip_value"
    clipping = ([{"method": "none"}] if baseline else []) + [{"method": method, name: t} for t in thresholds]
    cfg = {"name": "s", "seeds": list(seeds), "model": {"kind": "mlp", "depth": 4, "width": 8},
           "train": {"steps": STEPS}, "clipping": clipping}
    if key:
        cfg["sweep"] = {"method": method, "thresholds": list(thresholds), "baseline": baseline}
    return ExperimentConfig.model_validate(cfg).resolved()


def test_all_survive():
    cfg = sweep_cfg()
    reports = [rep(v, s, loss=loss + 0.01 * s, clip=clip)
               for s in (0, 1, 2)
               for v, loss, clip in (("none", 0.030, 0.0), ("norm-0.1", 0.080, 1.0), ("norm-1", 0.041, 0.62),
                                     ("norm-10", 0.035, 0.004))]
    assert is_sweep(reports, cfg)
    assert sweep_table(reports, cfg) == [
        "| max_norm | seed 0 | seed 1 | seed 2 | trained | mean final loss (trained seeds) | clip fraction |",
        "|---|---|---|---|---|---|---|",
        "| none (no clipping) | ok 0.03 | ok 0.04 | ok 0.05 | 3/3 | 0.04 | - |",
        "| 0.1 | ok 0.08 | ok 0.09 | ok 0.1 | 3/3 | 0.09 | 100% |",
        "| 1 | ok 0.041 | ok 0.051 | ok 0.061 | 3/3 | 0.051 | 62% |",
        "| 10 | ok 0.035 | ok 0.045 | ok 0.055 | 3/3 | 0.045 | <1% |",
    ]
    # Without clipping was best: the finding says so, and what the best threshold would cost.
    assert sweep_finding(reports, cfg) == (
        "Sweep of max_norm over 3 seeds: every threshold (0.1-10) trained in 3 of 3 seeds; no run diverged, "
        "not even without clipping; the best mean final loss was without clipping (0.04), the best with "
        "clipping at 10 (0.045, clipping <1% of steps).")


def test_some_diverge():
    cfg = sweep_cfg(thresholds=(0.1, 0.3, 1.0, 10.0, 30.0))
    div = {("none", 0): 12, ("none", 1): 15, ("none", 2): 19, ("norm-10", 0): 14, ("norm-10", 1): 13,
           ("norm-10", 2): 16, ("norm-30", 1): 40}
    losses = {"norm-0.1": 0.09, "norm-0.3": 0.041, "norm-1": 0.05, "norm-30": 0.2}
    reports = [rep(v, s, div=div.get((v, s)), loss=losses.get(v, 0.1))
               for s in (0, 1, 2) for v in ("none", "norm-0.1", "norm-0.3", "norm-1", "norm-10", "norm-30")]
    table = sweep_table(reports, cfg)
    assert table[2] == "| none (no clipping) | div @ 12 | div @ 15 | div @ 19 | 0/3 | - | - |"
    assert table[3] == "| 0.1 | ok 0.09 | ok 0.09 | ok 0.09 | 3/3 | 0.09 | 50% |"
    assert table[6] == "| 10 | div @ 14 | div @ 13 | div @ 16 | 0/3 | - | 50% |"
    # The mean final loss is over the seeds that trained; a diverged run's last loss is no result.
    assert table[7] == "| 30 | ok 0.2 | div @ 40 | ok 0.2 | 2/3 | 0.2 | 50% |"
    assert sweep_finding(reports, cfg) == (
        "Sweep of max_norm over 3 seeds: thresholds <= 1 trained in 3 of 3 seeds; the unclipped baseline and threshold 10 "
        "diverged in all 3 seeds (steps 12-19), threshold 30 in 1 of 3 seeds (step 40); the best mean final "
        "loss was at 0.3 (0.041, clipping 50% of steps).")


def test_baseline_absent():
    cfg = sweep_cfg(thresholds=(1.0, 10.0, 100.0), seeds=(4, 7), baseline=False)
    reports = [rep("norm-1", 4, loss=0.2), rep("norm-10", 4, loss=0.1), rep("norm-100", 4, div=3),
               rep("norm-1", 7, loss=0.3), rep("norm-10", 7, div=30)]  # norm-100-s7 not finished
    table = sweep_table(reports, cfg)
    assert table[0].startswith("| max_norm | seed 4 | seed 7 | trained |")
    assert table[2:] == ["| 1 | ok 0.2 | ok 0.3 | 2/2 | 0.25 | 50% |",
                         "| 10 | ok 0.1 | div @ 30 | 1/2 | 0.1 | 50% |",
                         "| 100 | div @ 3 | - | 0/1 | - | 50% |"]
    assert not any("none" in line for line in table)
    assert sweep_finding(reports, cfg) == (
        "Sweep of max_norm over 2 seeds: only threshold 1 trained in 2 of 2 seeds; threshold 100 diverged in the "
        "one seed (step 3), threshold 10 in 1 of 2 seeds (step 30); the best mean final loss was at 1 "
        "(0.25, clipping 50% of steps).")


def test_value_method():
    cfg = sweep_cfg(thresholds=(0.01, 0.1, 1.0), seeds=(0, 1), method="value")
    reports = [rep(v, s, div=div, loss=0.07, clip=0.9)
               for s in (0, 1) for v, div in (("none", 5 + s), ("value-0.01", None), ("value-0.1", None), ("value-1", 9))]
    table = sweep_table(reports, cfg)
    assert table[0].startswith("| clip_value | seed 0 | seed 1 |")
    assert [row.split(" | ")[0] for row in table[2:]] == ["| none (no clipping)", "| 0.01", "| 0.1", "| 1"]
    assert sweep_finding(reports, cfg) == (
        "Sweep of clip_value over 2 seeds: thresholds <= 0.1 trained in 2 of 2 seeds; the unclipped baseline and threshold 1 "
        "diverged in both seeds (steps 5-9); the best mean final loss was at 0.01 (0.07, clipping 90% of steps).")


def test_what_counts_as_a_sweep():
    plain = {"seeds": [0], "clipping": [{"method": "none"}, {"method": "norm", "max_norm": 1.0},
                                        {"method": "value", "clip_value": 1.0}]}
    reports = [rep("none", 0), rep("norm-1", 0), rep("value-1", 0)]
    assert not is_sweep(reports, plain) and sweep_finding(reports, plain) == ""
    # A hand-written list with one method at two thresholds is one; so is a sweep of one threshold.
    hand = sweep_cfg(thresholds=(0.5, 2.0), seeds=(0,), key=False)
    assert "sweep" not in hand and is_sweep([], hand)
    assert is_sweep([], sweep_cfg(thresholds=(1.0,)))
    # The CLI passes its ExperimentConfig; nothing finished yet is said so.
    model = ExperimentConfig.model_validate(sweep_cfg())
    assert sweep_finding([], model) == "Sweep of clipping thresholds over 3 seeds: no run has finished yet."
    seeds, rows = sweep_rows([], model)
    assert seeds == [0, 1, 2] and [r.variant for r in rows] == ["none", "norm-0.1", "norm-1", "norm-10"]


def test_two_methods_are_named_by_variant():
    cfg = {"seeds": [0], "clipping": [{"method": "none"}, {"method": "norm", "max_norm": 1.0}, {"method": "norm", "max_norm": 5.0},
                                      {"method": "value", "clip_value": 0.1}]}
    reports = [rep("none", 0, div=3), rep("norm-1", 0, loss=0.1), rep("norm-5", 0, div=8), rep("value-0.1", 0, loss=0.2)]
    table = sweep_table(reports, cfg)
    assert table[0].startswith("| variant |")
    assert [row.split(" | ")[0] for row in table[2:]] == ["| none (no clipping)", "| norm-1", "| norm-5", "| value-0.1"]
    assert sweep_finding(reports, cfg) == (
        "Sweep of max_norm and clip_value over 1 seed: only max_norm 1 and clip_value 0.1 trained in 1 of 1 "
        "seed; the unclipped baseline and norm-5 diverged in the one seed (steps 3-8); the best mean final loss was at norm-1 "
        "(0.1, clipping 50% of steps).")


def write_experiment(exp, cfg: dict, reports: list[dict], plots=()) -> None:
    full = ExperimentConfig.model_validate(cfg).resolved()
    write_text(exp / "config.yaml", yaml.safe_dump(full, sort_keys=False))
    for r in reports:
        write_json(exp / "runs" / r["run_id"] / "report.json", r)
    for name in plots:
        write_text(exp / "plots" / name, "png")


def test_report_md_shows_a_sweeps_small_multiples_under_plots(tmp_path):
    cfg = sweep_cfg(thresholds=(0.1, 1.0), seeds=(0, 1))
    reports = [rep(v, s) for s in (0, 1) for v in ("none", "norm-0.1", "norm-1")]
    exp = tmp_path / "multiples"
    write_experiment(exp, cfg, reports, plots=("grad_norm.png", "loss.png", "bptt_s1.png", "heatmaps_s1.png",
                                               "heatmaps_s0.png", "bptt_s0.png", "sweep_final_loss.png"))
    plots = render(exp, reports).split("## Plots")[1]
    assert "one panel per clipping variant" in plots
    # The overview first, then seed by seed: the heatmaps, then the gradient through time.
    assert [line for line in plots.splitlines() if line.startswith("![")] == [
        "![grad_norm](plots/grad_norm.png)", "![loss](plots/loss.png)", "![heatmaps_s0](plots/heatmaps_s0.png)",
        "![bptt_s0](plots/bptt_s0.png)", "![heatmaps_s1](plots/heatmaps_s1.png)", "![bptt_s1](plots/bptt_s1.png)"]


def test_report_md_has_the_section_for_a_sweep_only(tmp_path):
    cfg = sweep_cfg(thresholds=(0.1, 1.0), seeds=(0, 1))
    reports = [rep(v, s, div=12 + s if v == "none" else None) for s in (0, 1) for v in ("none", "norm-0.1", "norm-1")]
    exp = tmp_path / "sweep"
    write_experiment(exp, cfg, reports, plots=("grad_norm.png", "heatmap_none-s0.png", "sweep_clip_fraction.png",
                                               "sweep_divergence.png", "sweep_final_loss.png", "sweep_grad_norm_s0.png"))
    text = render(exp, reports)
    # The existing findings and run table stay; the sweep's section comes between them.
    findings, section, runs = text.index("## Findings"), text.index("## Threshold x seed"), text.index("## Runs")
    assert findings < section < runs
    assert "| none-s0 | none | - | 0 | yes |" in text and "`none` diverged in 2 of 2 seeds" in text
    assert sweep_finding(reports, cfg) in text[section:runs]
    assert "| none (no clipping) | div @ 12 | div @ 13 | 0/2 | - | - |" in text[section:runs]
    # The sweep's plots go with its table, in reading order; the others stay under ## Plots.
    assert text[section:runs].split("![")[1:] == [
        "sweep_final_loss](plots/sweep_final_loss.png)\n", "sweep_divergence](plots/sweep_divergence.png)\n",
        "sweep_clip_fraction](plots/sweep_clip_fraction.png)\n", "sweep_grad_norm_s0](plots/sweep_grad_norm_s0.png)\n\n"]
    assert "![grad_norm](plots/grad_norm.png)\n![heatmap_none-s0]" in text[text.index("## Plots"):]
    assert "sweep_" not in text[text.index("## Plots"):]

    plain = {"name": "p", "seeds": [0], "clipping": [{"method": "none"}, {"method": "norm", "max_norm": 1.0}]}
    exp = tmp_path / "plain"
    reports = [rep("none", 0), rep("norm-1", 0)]
    write_experiment(exp, plain, reports)
    text = render(exp, reports)
    assert "## Threshold x seed" not in text and "## Runs" in text


def test_the_baseline_alone_diverging_reads_as_the_baseline():
    """'no clipping diverged in all 3 seeds' read as 'no clipped run diverged': the finding
    names the unclipped baseline."""
    cfg = sweep_cfg(thresholds=(1.0, 10.0))
    reports = [rep(v, s, div=7 if v == "none" else None) for s in (0, 1, 2) for v in ("none", "norm-1", "norm-10")]
    finding = sweep_finding(reports, cfg)
    assert "the unclipped baseline diverged in all 3 seeds (step 7)" in finding, finding
    assert "no clipping" not in finding


def test_findings_group_where_runs_diverged_by_phase_naming_each_place_once():
    from gradlab.report import findings

    def run(seed: int, phase: str, where: str) -> dict:
        return {"variant": "none", "seed": seed, "diverged": True, "divergence_step": 4 + seed,
                "first_nonfinite": {"step": 4 + seed, "phase": phase, "where": where, "kind": "inf", "t": None}}

    text = findings([run(0, "forward", "layer10.linear"), run(1, "forward", "layer1.linear"),
                     run(2, "forward", "layer1.linear"), run(3, "backward", "layer0.W")])
    assert text == ("`none` diverged in 4 of 4 seeds at step 4-7 (first non-finite value: backward at "
                    "layer0.W; forward at layer1.linear (2 seeds) and layer10.linear).")
    assert text.count("first non-finite value") == 1
