"""A grid experiment's views: the LR sensitivity, the finding and table of report.md, the stability
maps and sensitivity figures, from constructed experiments (no training)."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from gradlab import stability
from gradlab.config import ExperimentConfig
from gradlab.io import write_csv, write_json, write_text
from gradlab.points import grid_run_id
from gradlab.plots import draw_experiment, figures, load_experiment, over_steps, style
from gradlab.records import summarize
from gradlab.report import findings, render, sweep_finding
from gradlab.suggest import suggest

METRICS = ["step", "loss", "grad_norm", "clipped_norm", "clip_coef", "clipped", "update_norm", "nonfinite"]
LR = "train.optimizer.lr"
L0 = 2.0  # every constructed run's loss at step 0


def make_grid(exp: Path, grid: dict, variants, seeds, outcome, steps: int = 6) -> list[dict]:
    """What a grid sweep writes: config.yaml with `grid:`, a run per point x variant x seed
    (`lr=0.1/norm-1-s0`), each with metrics.csv from the loss at initialisation L0 down to its
    final loss. `outcome(point, variant, seed)` -> (divergence step or None, final loss)."""
    clipping = [{"method": "none"} if v == "none" else {"method": "norm", "max_norm": float(v.split("-", 1)[1])}
                for v in variants]
    cfg = ExperimentConfig.model_validate({
        "name": exp.name, "seeds": list(seeds), "model": {"kind": "mlp", "depth": 3, "width": 8},
        "train": {"steps": steps, "optimizer": {"kind": "sgd", "lr": 0.05}}, "clipping": clipping}).resolved()
    cfg["grid"] = grid
    write_text(exp / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
    reports = []
    for seed in seeds:
        for values in itertools.product(*grid.values()):
            point = dict(zip(grid, values))
            for i, v in enumerate(variants):
                div, final = outcome(point, v, seed)
                n = steps if div is None else div + 1
                losses = [L0 + (final - L0) * t / (steps - 1) for t in range(n)]
                rows = [[t, losses[t], 1.0, 1.0, 1.0, 0, 0.01, 0] for t in range(n)]
                if div is not None:
                    rows[-1][1:4], rows[-1][7] = [math.nan, math.inf, math.nan], 1
                rid = grid_run_id(point, f"{v}-s{seed}")
                write_csv(exp / "runs" / rid / "metrics.csv", METRICS, rows)
                method, _, thr = v.partition("-")
                rep = {"run_id": rid, "seed": seed, "variant": v, "variant_index": i, "method": method,
                       "threshold": float(thr) if thr else None, "norm_type": 2.0 if method == "norm" else None,
                       "diverged": div is not None, "divergence_step": div,
                       "first_nonfinite": None if div is None else
                       {"step": div, "phase": "backward", "where": "layer1.W", "kind": "inf"},
                       **summarize(METRICS, rows), "steps": steps, "grid": point}
                write_json(exp / "runs" / rid / "report.json", rep)
                reports.append(rep)
    write_json(exp / "summary.json", reports)
    return reports


def lr_outcome(limits: dict, extra: dict | None = None):
    """Each variant trains up to its largest lr (a loss falling with the lr), diverges above;
    `extra` diverges single (lr, variant, seed) runs too."""
    extra = extra or {}

    def outcome(point, v, seed):
        lr = point[LR]
        if lr > limits[v] or (lr, v, seed) in extra:
            return 3, 0.0
        return None, 0.5 / (1 + 10 * lr) + 0.01 * seed
    return outcome


def cfg_of(exp: Path) -> dict:
    return yaml.safe_load((exp / "config.yaml").read_text())


# ----------------------------------------------------------------------------- the summary number


def run(loss, diverged=False):
    return {"final_loss": loss, "diverged": diverged}


def test_lr_sensitivity_against_a_hand_computation():
    # Four learning rates, two seeds. The clamped means: 0.6; 0.4; (0.4 + 2) / 2 = 1.2 (a
    # diverged seed counts as its l0); a loss above l0 counts as l0: (2 + 1.5) / 2 = 1.75 (the
    # second seed's l0 is 1.5). l* = 0.4; the mean excess (0.2 + 0 + 0.8 + 1.35) / 4.
    curve = [[(run(0.5), 2.0), (run(0.7), 2.0)],
             [(run(0.3), 2.0), (run(0.5), 2.0)],
             [(run(0.4), 2.0), (run(1e6, diverged=True), 2.0)],
             [(run(3.0), 2.0), (run(1.9), 1.5)]]
    assert stability.lr_sensitivity(curve, "final_loss") == pytest.approx((0.2 + 0.0 + 0.8 + 1.35) / 4)
    # A flat curve has none; one that trains nowhere has none either (every value is l0).
    assert stability.lr_sensitivity([[(run(0.3), 2.0)]] * 3, "final_loss") == 0.0
    assert stability.lr_sensitivity([[(run(None, True), 2.0)]] * 3, "final_loss") == 0.0
    # No l0 to clamp at, or a value without a run: no number rather than a wrong one.
    assert stability.lr_sensitivity([[(run(0.3), None)], [(run(0.2), 2.0)]], "final_loss") is None
    assert stability.lr_sensitivity([[(run(0.3), 2.0)], []], "final_loss") is None


finite = st.floats(0.0, 1e6, allow_nan=False)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.lists(st.tuples(finite, st.booleans(), st.floats(1e-3, 1e6)), min_size=1, max_size=3),
                min_size=1, max_size=6), st.floats(0.0, 10.0))
def test_lr_sensitivity_properties(values, shift):
    curve = [[(run(loss, div), l0) for loss, div, l0 in seeds] for seeds in values]
    s = stability.lr_sensitivity(curve, "final_loss")
    means = [sum(l0 if div else min(loss, l0) for loss, div, l0 in seeds) / len(seeds) for seeds in values]
    # Never negative, zero for a flat curve, and never more than the worst value above the best.
    assert s >= 0 and s <= max(means) - min(means) + 1e-9 * max(1.0, max(means))
    if max(means) == min(means):
        assert s == 0
    # Where nothing is clamped, a loss higher by the same amount everywhere changes nothing.
    lifted = [[(run(loss + shift, div), l0 + 2 * shift + 1e7) for loss, div, l0 in seeds] for seeds in values]
    if not any(div for seeds in values for _, div, _ in seeds):
        assert stability.lr_sensitivity(lifted, "final_loss") == pytest.approx(
            stability.lr_sensitivity([[(run(loss, False), 1e9) for loss, _, _ in seeds] for seeds in values],
                                     "final_loss"), rel=1e-9, abs=1e-6)


def test_the_sensitivity_of_an_experiment_reads_l0_from_metrics_csv(tmp_path):
    exp = tmp_path / "g"
    reports = make_grid(exp, {LR: [0.01, 0.1, 1.0]}, ["none", "norm-1"], [0, 1], lr_outcome({"none": 0.01, "norm-1": 0.1}))
    grid = stability.build(reports, cfg_of(exp), exp)
    # none: 0.5/1.1 + 0.005 (the seeds' mean), then l0 twice.
    a = 0.5 / 1.1 + 0.005
    assert stability.sensitivity(grid, LR, "none") == pytest.approx((0 + (L0 - a) * 2) / 3)
    b, c = 0.5 / 1.1 + 0.005, 0.5 / 2 + 0.005
    assert stability.sensitivity(grid, LR, "norm-1") == pytest.approx(((b - c) + 0 + (L0 - c)) / 3)
    # Without the runs' files there is no l0: the table says "-".
    assert stability.sensitivity(stability.build(reports, cfg_of(exp)), LR, "none") is None


# ----------------------------------------------------------------------------- finding and table


def test_the_finding_when_clipping_widens_the_stable_range(tmp_path):
    exp = tmp_path / "g"
    reports = make_grid(exp, {LR: [0.01, 0.03, 0.1, 0.3, 1.0]}, ["none", "norm-1", "norm-10"], [0, 1, 2],
                        lr_outcome({"none": 0.03, "norm-1": 0.3, "norm-10": 0.3}, {(0.3, "norm-10", 1)}))
    assert stability.finding(reports, cfg_of(exp), exp) == (
        "Grid of 5 lr x 3 clipping over 3 seeds. Without clipping the largest lr that trained in every seed was "
        "0.03; with `norm-1` it was 0.3, with `norm-10` 0.1: clipping (`norm-1`) widened the stable range 10x. "
        "The best cell: lr 0.3, `norm-1` (mean final loss 0.135 over 3 seeds).")
    # report.md's Findings and the CLI say the same (from the reports alone); no threshold sweep sentence.
    assert findings(reports) == stability.finding(reports, cfg_of(exp), exp)
    assert sweep_finding(reports, cfg_of(exp)) == ""
    assert stability.table(reports, cfg_of(exp), exp)[:2] == [
        "| variant | stable cells | stable lr | LR sensitivity |", "|---|---|---|---|"]
    rows = stability.table(reports, cfg_of(exp), exp)[2:]
    assert [r.split(" | ")[:3] for r in rows] == [["| none", "2/5", "0.01-0.03"], ["| norm-1", "4/5", "0.01-0.3"],
                                                  ["| norm-10", "3/5", "0.01-0.1"]]
    assert all(len(line) <= 80 for line in stability.table(reports, cfg_of(exp), exp))


def test_the_finding_when_clipping_does_not_widen(tmp_path):
    exp = tmp_path / "g"
    reports = make_grid(exp, {LR: [0.01, 0.1, 1.0]}, ["none", "norm-1"], [0, 1],
                        lr_outcome({"none": 0.1, "norm-1": 0.1}))
    assert stability.finding(reports, cfg_of(exp)).split(". ")[1] == (
        "The largest lr that trained in every seed was 0.1 with and without clipping: clipping did not widen "
        "the stable range")


def test_the_finding_when_clipping_narrows_or_alone_trains(tmp_path):
    exp = tmp_path / "narrow"
    reports = make_grid(exp, {LR: [0.01, 0.1, 1.0]}, ["none", "norm-1"], [0], lr_outcome({"none": 1.0, "norm-1": 0.1}))
    assert "clipping narrowed the stable range (at best 0.1, 10x lower)" in stability.finding(reports, cfg_of(exp))
    exp = tmp_path / "alone"
    reports = make_grid(exp, {LR: [0.01, 0.1]}, ["none", "norm-1"], [0], lr_outcome({"none": 0.001, "norm-1": 0.1}))
    assert stability.finding(reports, cfg_of(exp)).split(". ")[1] == (
        "Without clipping no lr trained in every seed; with `norm-1` the largest was 0.1: clipping (`norm-1`) made it train up to 0.1")


def test_the_finding_when_nothing_trains(tmp_path):
    exp = tmp_path / "g"
    reports = make_grid(exp, {LR: [0.1, 1.0]}, ["none", "norm-1"], [0, 1], lr_outcome({"none": 0.0, "norm-1": 0.0}))
    assert stability.finding(reports, cfg_of(exp)) == (
        "Grid of 2 lr x 2 clipping over 2 seeds. No lr trained in every seed, with or without clipping. "
        "No cell trained in every seed.")
    rows = stability.table(reports, cfg_of(exp), exp)[2:]
    assert [r.split(" | ")[1:3] for r in rows] == [["0/2", "none"], ["0/2", "none"]]


def test_a_grid_without_baseline_and_of_two_axes(tmp_path):
    exp = tmp_path / "g"

    def outcome(point, v, seed):  # deeper diverges earlier in lr
        ok = point[LR] * point["model.depth"] <= 0.4
        return (None if ok else 2), 0.1 * point["model.depth"] + point[LR]
    reports = make_grid(exp, {LR: [0.01, 0.1], "model.depth": [2, 4, 8]}, ["norm-1"], [0], outcome)
    text = stability.finding(reports, cfg_of(exp))
    assert text.startswith("Grid of 2 lr x 3 depth x 1 clipping over 1 seed. With `norm-1` the largest lr that "
                           "trained in every seed was 0.1. With `norm-1` the largest depth that trained in every "
                           "seed was 8.")
    # The best over the other axis: depth 8 trained at lr 0.01.
    assert text.endswith("The best cell: lr 0.01, depth 2, `norm-1` (mean final loss 0.21 over 1 seed).")
    assert stability.table(reports, cfg_of(exp), exp)[2] == "| norm-1 | 5/6 | 0.01-0.1 | 2-8 | 0.045 |"  # (0 + 0.3 - 0.21) / 2


def test_an_axis_of_names_says_which_trained(tmp_path):
    exp = tmp_path / "g"

    def outcome(point, v, seed):
        return (2 if point["model.activation"] == "relu" and v == "none" else None), 0.3
    reports = make_grid(exp, {"model.activation": ["tanh", "gelu", "relu"]}, ["none", "norm-1"], [0], outcome)
    assert stability.finding(reports, cfg_of(exp)).split(". ")[1] == (
        "The activation values that trained in every seed: without clipping tanh, gelu; with `norm-1` tanh, gelu, relu")
    # No learning rate and no number to take ratios of: no sensitivity column.
    assert stability.table(reports, cfg_of(exp), exp)[0] == "| variant | stable cells | stable activation |"


def test_report_md_has_the_grid_section_instead_of_the_threshold_table(tmp_path):
    exp = tmp_path / "g"
    reports = make_grid(exp, {LR: [0.01, 0.1, 1.0]}, ["none", "norm-0.1", "norm-1"], [0, 1],
                        lr_outcome({"none": 0.01, "norm-0.1": 1.0, "norm-1": 0.1}))
    for name in ("stability_map.png", "sensitivity_lr.png", "loss.png"):
        write_text(exp / "plots" / name, "png")
    cfg = cfg_of(exp)
    cfg["sweep"] = {"method": "norm", "thresholds": [0.1, 1.0], "baseline": True}  # as `sweep --grid --thresholds`
    write_text(exp / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
    md = render(exp, reports)
    assert "## Grid" in md and "## Threshold x seed" not in md
    grid_part = md[md.index("## Grid"):md.index("## Runs")]
    assert grid_part.index("![stability_map]") < grid_part.index("![sensitivity_lr]")
    assert "| norm-0.1 | 3/3 | 0.01-1 |" in grid_part
    assert "clipping (`norm-0.1`) widened the stable range 100x" in md[md.index("## Findings"):md.index("## Grid")]
    assert md.count("![stability_map]") == 1 and "![loss](plots/loss.png)" in md[md.index("## Plots"):]
    # The suggested threshold from the baseline at one point, where it trained best.
    sug = suggest(exp, reports)
    assert sug["grid_point"] == "lr=0.01" and [s["run_id"] for s in sug["per_seed"]] == ["lr=0.01/none-s0",
                                                                                          "lr=0.01/none-s1"]
    assert "at lr=0.01, the grid point where it trained best" in md


# ----------------------------------------------------------------------------- figures


@pytest.fixture
def drawn(monkeypatch) -> dict:
    """The figures drawn, by file name (the over-steps figures skipped: covered elsewhere)."""
    figs: dict = {}
    real = style.save

    def save(fig, path):
        figs[path.name] = fig
        return real(fig, path)

    monkeypatch.setattr(style, "save", save)
    monkeypatch.setattr(over_steps, "draw_over_steps", lambda exp, columns, **kw: None)
    return figs


def _texts(fig) -> list[str]:
    return [t.get_text() for ax in fig.axes for t in ax.texts]


def test_one_axis_draws_one_map_and_one_sensitivity_figure(tmp_path, drawn):
    exp = tmp_path / "g"
    reports = make_grid(exp, {LR: [0.01, 0.1, 1.0]}, ["none", "norm-1"], [0, 1, 2],
                        lr_outcome({"none": 0.1, "norm-1": 1.0}, {(0.1, "none", 2)}))
    written = {p.name for p in draw_experiment(exp, reports=reports)}
    assert written == {"stability_map.png", "sensitivity_lr.png"}
    texts = _texts(drawn["stability_map.png"])
    # lr 0.1 without clipping: 1 of 3 diverged (the mean of the two left); lr 1: all 3.
    assert texts.count("div\n3/3") == 1 and texts.count(f"{0.5 / 2 + 0.005:.3g}\ndiv 1/3") == 1
    # The best cell outlined: norm-1 at lr 1 (row 1, column 2).
    ax = drawn["stability_map.png"].axes[0]
    best = [p for p in ax.patches if p.get_edgecolor()[:3] == (227 / 255, 26 / 255, 28 / 255)]
    assert len(best) == 1 and best[0].get_xy() == (1.5, 0.5)
    legend = [t.get_text() for t in drawn["sensitivity_lr.png"].axes[0].get_legend().get_texts()]
    grid = stability.build(reports, cfg_of(exp), exp)
    assert f"LR sensitivity {stability.sensitivity(grid, LR, 'norm-1'):.3g}" in legend[1]
    for name in written:
        _assert_png(exp / "plots" / name)
    # Drawn again in two forked processes: the same files.
    before = {name: (exp / "plots" / name).read_bytes() for name in written}
    for name in written:
        (exp / "plots" / name).unlink()
    assert {p.name for p in draw_experiment(exp, reports=reports, workers=2)} == written
    assert {name: (exp / "plots" / name).read_bytes() for name in written} == before


def test_one_axis_and_one_variant_draws_a_map_of_one_row(tmp_path, drawn):
    exp = tmp_path / "g"
    reports = make_grid(exp, {LR: [0.01, 0.1]}, ["norm-1"], [0], lr_outcome({"norm-1": 0.01}))
    assert {p.name for p in draw_experiment(exp, reports=reports)} == {"stability_map.png", "sensitivity_lr.png"}


def test_three_axes_draw_a_map_per_pair(tmp_path, drawn):
    exp = tmp_path / "g"

    def outcome(point, v, seed):
        limit = {"none": 0.1, "norm-1": 1.0}[v] * 4 / point["model.depth"]
        return (None if point[LR] <= limit else 3), 0.1 * point["model.depth"] / (1 + point[LR])
    reports = make_grid(exp, {LR: [0.01, 0.1, 1.0], "model.depth": [2, 4, 8]}, ["none", "norm-1"], [0], outcome)
    written = {p.name for p in draw_experiment(exp, reports=reports)}
    assert written == {"stability_map_lr_depth.png", "stability_map_lr_clipping.png",
                       "stability_map_depth_clipping.png", "sensitivity_lr.png", "sensitivity_depth.png"}
    # lr x clipping at each cell: the best over depth (lr 1 trains with norm-1 at depth 2 and 4).
    # Without clipping lr 1 diverges at every depth; with norm-1 it trains at depth 2 and 4.
    texts = _texts(drawn["stability_map_lr_clipping.png"])
    assert texts.count("div\n1/1") == 1
    assert "div\n1/1" in _texts(drawn["stability_map_lr_depth.png"])  # lr 1 at depth 8: no variant trains
    for name in written:
        _assert_png(exp / "plots" / name)


def _assert_png(path: Path) -> None:
    import matplotlib.image

    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 300 and image.shape[1] > 600


def test_non_grid_experiments_have_no_grid_figures(tmp_path):
    from tests.test_plots import make_sweep

    exp = make_sweep(tmp_path / "sweep", thresholds=(0.1, 1.0), seeds=(0,))
    plan = figures.plan(load_experiment(exp))
    assert plan.grid is None and plan.sweep is not None
    assert not any(f.name.startswith(("stability_map", "sensitivity_")) for f in plan.figures)
    assert not stability.is_grid([r.report for r in plan.exp.runs], plan.exp.config)
    from tests.test_report import rep, sweep_cfg, write_experiment

    reports = [rep(v, s) for s in (0, 1) for v in ("none", "norm-0.1", "norm-1")]
    write_experiment(tmp_path / "md", sweep_cfg(thresholds=(0.1, 1.0), seeds=(0, 1)), reports)
    md = render(tmp_path / "md", reports)
    assert "## Threshold x seed" in md and "## Grid" not in md


def test_grid_plot_modules_import_without_matplotlib():
    import subprocess
    import sys

    # Deciding which figures a grid has, and report.md's table and finding, need neither.
    code = ("import sys, gradlab.plots.grid, gradlab.plots.grid_plots, gradlab.stability\n"
            "assert 'matplotlib' not in sys.modules and 'numpy' not in sys.modules, sorted(sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, cwd=Path(__file__).resolve().parents[1])


# ----------------------------------------------------------------------------- end to end


def test_a_real_grid_sweep_draws_its_map_and_says_its_finding(tmp_path, capsys):
    """`gradlab sweep --grid ... --thresholds ...` on the quickstart's 16-layer ReLU MLP, short:
    without clipping lr 0.1 diverges in the seed, with max_norm 1 it trains."""
    from conftest import cli

    root = Path(__file__).resolve().parents[1]
    assert cli("sweep", root / "configs" / "quickstart.yaml", "--grid", "train.optimizer.lr=0.01,0.1",
               "--thresholds", "1", "--seeds", "0", "--set", "train.steps=20", "--set", "model.depth=8",
               "--out", tmp_path, "--workers", "1") == 0
    out = capsys.readouterr().out
    exp = next(tmp_path.glob("quickstart-*"))
    assert {"stability_map.png", "sensitivity_lr.png"} <= {p.name for p in (exp / "plots").glob("*.png")}
    md = (exp / "report.md").read_text()
    finding = ("Grid of 2 lr x 2 clipping over 1 seed. Without clipping the largest lr that trained in every seed "
               "was 0.01; with `norm-1` it was 0.1: clipping (`norm-1`) widened the stable range 10x.")
    assert finding in md and " ".join(out.split()).count(finding) == 1
    assert "| norm-1 | 2/2 | 0.01-0.1 |" in md and "![stability_map](plots/stability_map.png)" in md


def test_lr_stability_config_draws_its_map_and_says_that_clipping_widens_the_range(tmp_path, capsys):
    """configs/lr_stability.yaml's sweep, shortened (1 seed, 30 steps, 2 of its lrs, 2 of its
    thresholds; on both OpenBLAS kernels): unclipped, lr 0.3 overflows; clipped, it stays finite,
    but only the small threshold trains there (the longest step, lr x max_norm, decides), and the
    finding counts as trained only a run that ended below its loss at initialisation."""
    import json

    from conftest import cli

    root = Path(__file__).resolve().parents[1]
    assert cli("sweep", root / "configs" / "lr_stability.yaml", "--grid", "train.optimizer.lr=0.03,0.3",
               "--thresholds", "0.1,10", "--seeds", "0", "--set", "train.steps=30",
               "--out", tmp_path, "--workers", "1") == 0
    out = capsys.readouterr().out
    exp = next(tmp_path.glob("lr_stability-*"))
    assert {"stability_map.png", "sensitivity_lr.png"} <= {p.name for p in (exp / "plots").glob("*.png")}
    # norm-10 stays finite at lr 0.3 but ends above its loss at initialisation: not trained.
    finding = ("Grid of 2 lr x 3 clipping over 1 seed. Without clipping the largest lr that trained in every seed "
               "was 0.03; with `norm-0.1` it was 0.3, with `norm-10` 0.03: clipping (`norm-0.1`) "
               "widened the stable range 10x.")
    md = (exp / "report.md").read_text()
    assert finding in md and " ".join(out.split()).count(finding) == 1
    run = {p.parent.relative_to(exp / "runs").as_posix(): json.loads(p.read_text())
           for p in (exp / "runs").glob("*/*/report.json")}
    assert run["lr=0.3/none-s0"]["diverged"] and not run["lr=0.03/none-s0"]["diverged"]
    # Finite is not trained: at lr 0.3 max_norm 10 ends far above max_norm 0.1 (0.23 against 46-294).
    assert run["lr=0.3/norm-10-s0"]["final_val_loss"] > 50 * run["lr=0.3/norm-0.1-s0"]["final_val_loss"]
