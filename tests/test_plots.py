"""gradlab.plots on small synthetic experiment directories (no training involved)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gradlab.io import write_bytes, write_csv, write_json, write_text
from gradlab.store import collect_reports, config_hash_of
from gradlab.plots import describe, figures, flow, multiples, over_steps, style
from gradlab.plots import heatmaps as heatmap_mod
from gradlab.plots import sweep as sweep_mod
from gradlab.plots import sweep_plots as sweep_mod_plots
from gradlab.plots import draw_experiment, load_experiment
from gradlab.plots.heatmaps import aggregate_columns as _aggregate_columns
from gradlab.plots.over_steps import downsample as _downsample
from gradlab.records import summarize

ROOT = Path(__file__).resolve().parents[1]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
METRICS = ["step", "loss", "grad_norm", "clipped_norm", "clip_coef", "clipped", "update_norm", "nonfinite"]
PARAMS = ["layer0.W", "layer0.b", "layer1.W", "layer1.b", "layer2.W", "layer2.b"]


def _clip_entry(variant: str) -> str:
    method, _, thr = variant.partition("-")
    if method == "none":
        return "  - {method: none}\n"
    if method == "norm":
        return f"  - {{method: norm, max_norm: {thr}, norm_type: 2.0, eps: 1.0e-06}}\n"
    return f"  - {{method: value, clip_value: {thr}}}\n"


def write_run(exp: Path, variant: str, seed: int, steps: int, *, diverge_at: int | None = None,
              report: bool = True, layer_nan: bool = False, layer_zero: bool = False,
              metrics_nan: bool = False, accuracy: bool = False, first_nonfinite: dict | None = None,
              clip_fraction: float = 0.5, loss_scale: float = 1.0, variant_index: int = 0) -> dict:
    """One run folder as gradlab writes it (experiment.collect_reports accepts it); a diverged
    run stops at `diverge_at` with a NaN/inf last row. The outcome fields of report.json are
    derived from metrics.csv as gradlab derives them; `clip_fraction` of the healthy steps
    are flagged clipped. With `accuracy`, metrics.csv gets the classification tasks' extra
    last column."""
    rng = np.random.default_rng(seed)
    method, _, thr = variant.partition("-")
    threshold = float(thr) if thr else None
    n = steps if diverge_at is None else diverge_at + 1
    t = np.arange(n)
    grad = (np.exp(t / 3.0) if diverge_at is not None else 5 * np.exp(-t / 10) + 0.5) * (1 + 0.1 * rng.random(n))
    clipped = np.minimum(grad, threshold) if method == "norm" else grad * (0.5 if method == "value" else 1.0)
    loss = loss_scale * (1.0 / (1 + t) + 0.01 * rng.random(n))
    nonfinite = np.zeros(n)
    if diverge_at is not None:
        grad[-1], clipped[-1], loss[-1], nonfinite[-1] = math.inf, math.nan, math.nan, 1
    if metrics_nan:
        grad[:], clipped[:], loss[:] = math.nan, math.nan, math.nan
    healthy = n - int(nonfinite.sum())
    flags = np.arange(n) < round(clip_fraction * healthy)
    rows = [[int(t[i]), loss[i], grad[i], clipped[i], min(1.0, clipped[i] / grad[i]) if np.isfinite(grad[i]) else math.nan,
             int(flags[i]), 0.01 * clipped[i], int(nonfinite[i])] for i in range(n)]
    if accuracy:  # from chance (1/4) up; the diverged row has none
        acc = np.clip(0.25 + 0.7 * (1 - np.exp(-t / 5.0)) + 0.05 * rng.random(n), 0, 1)
        if diverge_at is not None:
            acc[-1] = math.nan
        rows = [row + [acc[i]] for i, row in enumerate(rows)]
    d = exp / "runs" / f"{variant}-s{seed}"
    write_csv(d / "metrics.csv", METRICS + ["accuracy"] * accuracy, rows)
    layers = grad[None, :] * np.linspace(1, 0.01, len(PARAMS))[:, None]
    if layer_nan:
        layers[2] = math.nan  # a whole column of the CSV without one finite value
    if layer_zero:
        layers[5] = 0.0
    if diverge_at is not None:
        layers[:, -1] = math.nan
    write_csv(d / "layer_norms.csv", ["step", *PARAMS], [[i, *layers[:, i]] for i in range(n)])
    rep = {
        "run_id": f"{variant}-s{seed}", "seed": seed, "variant": variant, "variant_index": variant_index,
        "method": method, "threshold": threshold, "norm_type": 2.0 if method == "norm" else None,
        "diverged": diverge_at is not None, "divergence_step": diverge_at,
        "first_nonfinite": None if diverge_at is None else
        first_nonfinite or {"step": diverge_at, "phase": "backward", "where": "layer1.W", "kind": "inf"},
        **summarize(METRICS + ["accuracy"] * accuracy, [[float(v) for v in row] for row in rows]),
        "steps": steps, "config_hash": config_hash_of(exp),
    }
    if report:
        write_json(d / "report.json", rep)
    return rep


def make_experiment(exp: Path, variants=("none", "norm-1", "value-0.1"), seeds=(0, 1), steps=30,
                    summary: bool = True, skip_report=(), **run_options) -> Path:
    write_text(exp / "config.yaml", (
        f"name: {exp.name}\nseeds: {list(seeds)}\n"
        "model: {kind: mlp, depth: 3, width: 8, activation: tanh, init: {scheme: normal, gain: 2.0}}\n"
        f"train: {{steps: {steps}, optimizer: {{kind: sgd, lr: 0.05}}, dtype: float32}}\n"
        "clipping:\n" + "".join(_clip_entry(v) for v in variants)))
    reports = []
    for seed in seeds:
        for i, v in enumerate(variants):
            rid = f"{v}-s{seed}"
            rep = write_run(exp, v, seed, steps, diverge_at=steps // 2 if v == "none" else None,
                            report=rid not in skip_report, variant_index=i, **run_options.get(rid, {}))
            if rid not in skip_report:
                reports.append(rep)
    if summary:
        write_json(exp / "summary.json", reports)
    return exp


def assert_png(path: Path) -> None:
    import matplotlib.image

    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_MAGIC
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 300 and image.shape[2] in (3, 4)


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> tuple[Path, list[Path]]:
    exp = make_experiment(tmp_path_factory.mktemp("exp") / "full")
    return exp, draw_experiment(exp)


def test_draws_every_plot_as_png(full):
    exp, written = full
    names = {"grad_norm.png", "loss.png"} | {f"heatmap_{v}-s{s}.png" for v in ("none", "norm-1", "value-0.1") for s in (0, 1)}
    assert {p.name for p in written} == names
    assert all(p.parent == exp / "plots" for p in written)
    for p in written:
        assert_png(p)
    # One threshold per clipping method is not a sweep.
    assert not list((exp / "plots").glob("sweep*.png"))
    assert not list((exp / "plots").glob(".*.tmp"))


def test_reads_the_directory_alone(full):
    exp, _ = full
    e = load_experiment(exp)
    assert e.seeds == [0, 1]
    assert e.variants == ["none", "norm-1", "value-0.1"]
    assert "mlp depth 3 width 8 tanh" in e.summary and "sgd lr 0.05" in e.summary
    none = next(r for r in e.runs if r.run_id == "none-s0")
    assert none.diverged and none.divergence_step == 15
    assert len(e.runs) == 6


def test_partial_experiment_draws_complete_runs_only(tmp_path, monkeypatch):
    exp = make_experiment(tmp_path / "partial", summary=False, skip_report={"value-0.1-s1"})
    assert (exp / "runs" / "value-0.1-s1" / "metrics.csv").is_file()
    # Heatmaps are drawn for real in test_draws_every_plot_as_png; here only which ones.
    heatmaps = []
    monkeypatch.setattr(heatmap_mod, "draw_heatmap", lambda exp, run, path: heatmaps.append(run.run_id))
    written = draw_experiment(exp)
    assert sorted(heatmaps) == ["none-s0", "none-s1", "norm-1-s0", "norm-1-s1", "value-0.1-s0"]
    assert {p.name for p in written} == {"grad_norm.png", "loss.png"}
    for p in written:
        assert_png(p)
    e = load_experiment(exp)
    assert len(e.runs) == 5 and e.seeds == [0, 1]
    # The config still lists value-0.1: it keeps its colour while its last run is missing.
    assert e.variants == ["none", "norm-1", "value-0.1"]


def test_no_complete_run_draws_nothing(tmp_path):
    exp = make_experiment(tmp_path / "empty", variants=("none",), seeds=(0,), skip_report={"none-s0"})
    assert draw_experiment(exp) == []
    assert not (exp / "plots").exists()
    assert draw_experiment(tmp_path / "missing") == []


def test_degenerate_runs_do_not_raise(tmp_path):
    """One-step runs: the baseline diverged at step 0, so its only row is NaN/inf in every
    column (nothing finite to mark it on, no finite layer norm); norm-1 has an all-NaN and
    an all-zero layer column and NaN metrics throughout."""
    exp = make_experiment(tmp_path / "odd", variants=("none", "norm-1"), seeds=(0,), steps=1,
                          **{"norm-1-s0": {"layer_nan": True, "layer_zero": True, "metrics_nan": True}})
    # A gradient through time with one step, one time step and nothing a log scale can show.
    write_text(exp / "runs" / "norm-1-s0" / "bptt_norms.csv", "step,layer,t,grad_norm\n0,gru.0,0,nan\n0,gru.1,0,0\n")
    written = draw_experiment(exp)
    assert {p.name for p in written} == {"grad_norm.png", "loss.png", "heatmap_none-s0.png", "heatmap_norm-1-s0.png",
                                         "bptt_norm-1-s0.png"}
    for p in written:
        assert_png(p)


def make_sweep(exp: Path, thresholds=(0.1, 1.0, 10.0), seeds=(0, 1, 2), steps=12, method="norm",
               baseline=True, sweep_key=True, diverge=None) -> Path:
    """What `gradlab sweep` writes: config.yaml with `sweep:` (unless sweep_key is False: a
    hand-written clipping list), one run per variant x seed; `diverge` maps run ids to steps.
    The loss grows with the threshold and the clip fraction shrinks, as in a real sweep."""
    diverge = diverge or {}
    variants = (["none"] if baseline else []) + [f"{method}-{t:g}" for t in thresholds]
    sweep = (f"sweep: {{method: {method}, thresholds: {list(thresholds)}, baseline: {str(baseline).lower()}}}\n"
             if sweep_key else "")
    write_text(exp / "config.yaml", (
        f"name: {exp.name}\nseeds: {list(seeds)}\n"
        "model: {kind: mlp, depth: 3, width: 8, activation: tanh, init: {scheme: normal, gain: 2.0}}\n"
        f"train: {{steps: {steps}, optimizer: {{kind: sgd, lr: 0.05}}, dtype: float32}}\n"
        "clipping:\n" + "".join(_clip_entry(v) for v in variants) + sweep))
    reports = []
    for seed in seeds:
        for i, v in enumerate(variants):
            rank = i / max(1, len(variants) - 1)
            reports.append(write_run(exp, v, seed, steps, diverge_at=diverge.get(f"{v}-s{seed}"), variant_index=i,
                                     clip_fraction=0.0 if v == "none" else 1.0 - 0.9 * rank,
                                     loss_scale=1.0 + 3 * rank + 0.5 * seed))
    write_json(exp / "summary.json", reports)
    return exp


class Facts(dict):
    """What each figure shows, by file name; with `render` False the figures are not
    rendered at all (a PNG costs half a second): for tests that only read the facts."""

    render = True


@pytest.fixture
def sweep_only(monkeypatch) -> Facts:
    """Draw only the sweep's plots (the others are covered above and would only cost time)."""
    facts = Facts()
    real_save = style.save

    def save(fig, path):
        facts[path.name] = figure_facts(fig)
        if facts.render:
            return real_save(fig, path)
        fig.clear()
        return path

    monkeypatch.setattr(style, "save", save)
    monkeypatch.setattr(heatmap_mod, "draw_heatmap", lambda *args: None)
    monkeypatch.setattr(multiples, "draw_heatmaps", lambda *args: None)
    monkeypatch.setattr(over_steps, "draw_over_steps", lambda exp, columns, **kw: kw["path"])
    return facts


SWEEP_FILES = {"sweep_final_loss.png", "sweep_divergence.png", "sweep_clip_fraction.png"}


def test_sweep_plots_for_a_sweep_with_divergences(tmp_path, sweep_only):
    # The baseline diverges in every seed; 10 in seed 1 only; 100 in every seed.
    diverge = {"none-s0": 4, "none-s1": 6, "none-s2": 5, "norm-10-s1": 8,
               "norm-100-s0": 3, "norm-100-s1": 2, "norm-100-s2": 3}
    exp = make_sweep(tmp_path / "sweep", thresholds=(0.1, 1.0, 10.0, 100.0), seeds=(2, 0, 1), diverge=diverge)
    write_bytes(exp / "plots" / "sweep.png", b"old")  # the combined plot of an older version
    written = {p.name for p in draw_experiment(exp)}
    # The first seed is the config's first, not the smallest.
    assert SWEEP_FILES | {"sweep_grad_norm_s2.png"} <= written
    assert not (exp / "plots" / "sweep.png").exists()
    for name in SWEEP_FILES | {"sweep_grad_norm_s2.png"}:
        assert_png(exp / "plots" / name)

    loss = sweep_only["sweep_final_loss.png"]
    assert loss["yscale"] == "log" and "final training loss" in loss["ylabel"]
    assert "max_norm (log scale)" in loss["xlabel"]
    assert {"one seed", "mean over the seeds\nthat did not diverge", "hollow: some seeds diverged there\n(the mean of the others)",
            "no clipping (none): diverged in\nevery seed at steps 4-6: no final loss"} <= set(loss["legend"])
    assert any(t.startswith("top edge: diverged") for t in loss["legend"])
    assert {"1/3 div", "3/3 div"} <= set(loss["texts"])
    assert loss["left_title"] == "no clipping: diverged in all 3 seeds at steps 4-6"
    assert "3 seeds (0, 1, 2)" in loss["suptitle"].replace("\n", " ")

    div = sweep_only["sweep_divergence.png"]
    assert div["ylim"][1] > 12 and "divergence step" in div["ylabel"]
    assert {"3/3 ok", "2/3 ok", "0/3 ok"} <= set(div["texts"])
    assert "end of training (12 steps)" in div["legend"]
    assert any(t.startswith("no clipping (none): diverged at steps 4-6\nin 3 of 3 seeds") for t in div["legend"])

    clip = sweep_only["sweep_clip_fraction.png"]
    assert clip["ylim"] == pytest.approx((-0.03, 1.03))
    assert "diverged: the fraction of the steps\nbefore its divergence" in clip["legend"]

    grad = sweep_only["sweep_grad_norm_s2.png"]
    assert grad["yscale"] == "log" and grad["title"].startswith("Gradient norm per step, seed 2")
    assert grad["colorbar_ticks"] == ["0.1", "1", "10", "100"]
    assert {"no clipping (none)", "diverged (NaN/inf)", "its max_norm, same colour"} <= set(grad["legend"])


def test_sweep_plots_for_a_hand_written_clipping_list(tmp_path, sweep_only):
    """No `sweep:` in the config, but one method at several thresholds: a sweep all the same.
    Nothing diverges, the baseline included."""
    sweep_only.render = False
    exp = make_sweep(tmp_path / "hand", thresholds=(0.5, 2.0), seeds=(0,), sweep_key=False)
    assert SWEEP_FILES | {"sweep_grad_norm_s0.png"} <= {p.name for p in draw_experiment(exp)}
    div = sweep_only["sweep_divergence.png"]
    assert "no clipped run diverged" in div["texts"]
    assert "no clipping (none): did not diverge\nin any of 1 seed" in div["legend"]
    assert not any("diverged" in t for t in sweep_only["sweep_final_loss.png"]["legend"])


def test_sweep_plots_value_method_without_baseline(tmp_path, sweep_only):
    sweep_only.render = False
    exp = make_sweep(tmp_path / "value", thresholds=(0.01, 0.1, 1.0), seeds=(0, 1), method="value",
                     baseline=False, diverge={"value-1-s0": 5})
    assert SWEEP_FILES | {"sweep_grad_norm_s0.png"} <= {p.name for p in draw_experiment(exp)}
    loss = sweep_only["sweep_final_loss.png"]
    assert "clip_value (log scale)" in loss["xlabel"]
    assert not any("no clipping" in t for t in loss["legend"])
    grad = sweep_only["sweep_grad_norm_s0.png"]
    assert "(clip_value and non-L2 thresholds are\nnot L2 norms: not drawn)" in grad["legend"]
    assert "no clipping (none)" not in grad["legend"]


def test_sweep_plots_survive_degenerate_sweeps(tmp_path, sweep_only):
    """Every run diverged (no final loss anywhere); a `sweep:` of one threshold."""
    every = {f"{v}-s0": 2 for v in ("none", "norm-1", "norm-10")}
    exp = make_sweep(tmp_path / "all_diverged", thresholds=(1.0, 10.0), seeds=(0,), diverge=every)
    assert SWEEP_FILES <= {p.name for p in draw_experiment(exp)}
    for name in SWEEP_FILES | {"sweep_grad_norm_s0.png"}:
        assert_png(exp / "plots" / name)
    assert "no run trained to the end: no final loss to show" in sweep_only["sweep_final_loss.png"]["texts"]
    sweep_only.render = False
    exp = make_sweep(tmp_path / "one", thresholds=(1.0,), seeds=(0,))
    assert SWEEP_FILES <= {p.name for p in draw_experiment(exp)}
    assert sweep_only["sweep_final_loss.png"]["xlim"] == pytest.approx((10 ** -0.5, 10 ** 0.5))


def test_sweep_colors_follow_the_threshold(tmp_path):
    e = load_experiment(make_sweep(tmp_path / "colors", seeds=(0,)))
    # The baseline is neutral; every clipped variant has a colour of its own.
    assert e.colors["none"] == "#303030"
    assert len({e.colors[v] for v in e.variants}) == 4
    sweep = sweep_mod.find_sweep(e)
    assert [f.thresholds for f in sweep.families] == [[0.1, 1.0, 10.0]] and len(sweep.baseline) == 1


def test_plain_run_is_no_sweep(tmp_path):
    """One threshold per method and no `sweep:` in the config: no sweep plots."""
    exp = make_experiment(tmp_path / "plain", variants=("none", "norm-1"), seeds=(0,), steps=6)
    assert sweep_mod.find_sweep(load_experiment(exp)) is None
    plan = figures.plan(load_experiment(exp))
    assert plan.sweep is None and not [f for f in plan.figures if f.name.startswith("sweep")]


def test_downsample_keeps_extremes_and_gaps():
    v = np.sin(np.arange(100_000) / 50.0)
    v[12_345] = 50.0
    v[54_321] = -50.0
    v[70_000:71_000] = np.nan
    idx = _downsample(v)
    assert len(idx) <= 2002
    assert {0, 12_345, 54_321, 99_999} <= set(idx.tolist())
    assert np.isnan(v[idx]).any()  # the gap stays a gap
    assert np.array_equal(_downsample(v[:50]), np.arange(50))


def test_heatmap_columns_aggregate_to_block_maxima():
    m = np.ones((2, 2500))
    m[0, 1234] = 1e6
    m[1, 9:12] = 0.0  # exactly block 3
    m[1, 2000] = np.inf
    values, bad, block = _aggregate_columns(m, 1000)
    assert block == 3 and values.shape == (2, 834)
    assert values[0, 1234 // 3] == 1e6  # a one-step spike survives
    assert np.isnan(values[1, 3]) and not bad[1, 3]  # all zero: no norm, but not NaN/inf
    assert bad[1, 2000 // 3] and bad.sum() == 1
    assert values[1, 2000 // 3] == 1.0


def test_import_does_not_load_matplotlib():
    code = "import gradlab.plots, sys; assert 'matplotlib' not in sys.modules, 'matplotlib imported'"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


# ----------------------------------------------------------------------------- recurrent models

LAYERS = ["lstm.0", "lstm.1"]


def write_flow(run_dir: Path, T: int, steps: list[int], *, layers=LAYERS, explode_last: bool = False,
               tbptt: int | None = None) -> None:
    """bptt_norms.csv: dL/dh_t shrinking as t goes back (vanishing); with `explode_last`, the
    last step grows instead and holds an inf and a NaN near t = 0. With `tbptt`, no gradient
    reaches the steps before the last truncation boundary from a last-step head: zeros."""
    rows = []
    t = np.arange(T)
    for k, step in enumerate(steps):
        for i, layer in enumerate(layers):
            back = T - 1 - t  # how far the gradient has travelled
            if explode_last and k == len(steps) - 1:
                v = 0.1 * min(1.6, 1e12 ** (1 / T)) ** back / (1 + i)
            else:
                v = 2.0 * 0.8 ** back / (1 + i)
            if tbptt:
                v = np.where(back >= tbptt, 0.0, v)
            if explode_last and k == len(steps) - 1:  # as far back as the gradient goes
                far = T - max(tbptt, 2) if tbptt else 0
                v[far], v[far + 1] = math.inf, math.nan
            rows += [f"{step},{layer},{tt},{x!r}\n" for tt, x in enumerate(v.tolist())]
    # The text write_csv would give (repr of each float), without its per-value cost.
    write_text(run_dir / "bptt_norms.csv", "step,layer,t,grad_norm\n" + "".join(rows))


def make_recurrent(exp: Path, T: int = 24, steps: int = 12, tbptt: int | None = None) -> Path:
    """An LSTM on temporal_order (classification: an accuracy column), one seed: the
    baseline explodes and diverges inside the recurrence, norm-1 trains to the end."""
    write_text(exp / "config.yaml", (
        f"name: {exp.name}\nseeds: [0]\n"
        "model: {kind: lstm, depth: 2, width: 8, activation: tanh, init: {scheme: orthogonal, gain: 1.2}}\n"
        f"task: {{kind: temporal_order, batch_size: 16, seq_len: {T}}}\n"
        f"train: {{steps: {steps}, optimizer: {{kind: sgd, lr: 0.05, momentum: 0.9}}, dtype: float32"
        + (f", tbptt: {tbptt}" if tbptt else "") + "}\n"
        "clipping:\n" + _clip_entry("none") + _clip_entry("norm-1")))
    div = steps // 2
    where = {"step": div, "phase": "backward", "where": f"lstm.1.h @ t={T - 6}", "kind": "inf", "t": T - 6}
    reports = [write_run(exp, "none", 0, steps, diverge_at=div, accuracy=True, first_nonfinite=where),
               write_run(exp, "norm-1", 0, steps, accuracy=True, variant_index=1)]
    write_flow(exp / "runs" / "none-s0", T, [0, div - 1], explode_last=True, tbptt=tbptt)
    write_flow(exp / "runs" / "norm-1-s0", T, [0, steps - 1], tbptt=tbptt)
    write_json(exp / "summary.json", reports)
    return exp


def figure_facts(fig) -> dict:
    """What a reader of a figure sees: title, axis labels and scales, legend entries,
    caption, and every line's point count; vertical lines (axvline) by x."""
    axes = [ax for ax in fig.axes if ax.get_visible() and ax.get_label() != "<colorbar>"]
    ax = axes[0]
    lines = [line for a in axes for line in a.get_lines()]
    bars = [a for a in fig.axes if a.get_label() == "<colorbar>"]
    return {
        "texts": [t.get_text() for a in axes for t in a.texts],
        "colorbar_ticks": [t.get_text() for t in bars[0].get_yticklabels()] if bars else [],
        "title": ax.get_title(), "left_title": ax.get_title(loc="left"),
        "suptitle": fig._suptitle.get_text() if fig._suptitle else "",
        "caption": fig._supxlabel.get_text() if fig._supxlabel else "",
        "xlabel": ax.get_xlabel(), "xlim": ax.get_xlim(),
        "ylabel": ax.get_ylabel(), "yscale": ax.get_yscale(), "ylim": ax.get_ylim(),
        "legend": [t.get_text() for leg in [*(x for a in axes for x in [a.get_legend(), *a.artists]), *fig.legends]
                   if leg is not None and hasattr(leg, "get_texts") for t in leg.get_texts()],
        "points": [len(line.get_xdata()) for line in lines],
        "vlines": sorted(float(line.get_xdata()[0]) for line in lines
                         if len(line.get_xdata()) == 2 and line.get_xdata()[0] == line.get_xdata()[1]
                         and list(line.get_ydata()) == [0, 1]),
    }


@pytest.fixture(scope="module")
def recurrent(tmp_path_factory) -> tuple[Path, list[Path], dict]:
    """The recurrent experiment drawn, with what each new figure shows. norm-1-s0's file is
    long and deep (T = 2400, 10 layers): more truncation boundaries than are drawn, 8 layers
    shown, lines downsampled. The grad-norm and loss plots and the heatmaps are covered by
    the MLP tests; here they are only listed (drawing them would cost seconds)."""
    exp = make_recurrent(tmp_path_factory.mktemp("rec") / "lstm_order", tbptt=8)
    write_flow(exp / "runs" / "norm-1-s0", 2400, [0, 11], layers=[f"lstm.{i}" for i in range(10)])
    facts: dict[str, dict] = {}
    real_save, real_over_steps = style.save, over_steps.draw_over_steps

    def save(fig, path):
        facts[path.name] = figure_facts(fig)
        return real_save(fig, path)

    def accuracy_only(exp, columns, **kw):
        return real_over_steps(exp, columns, **kw) if kw["path"].name == "accuracy.png" else kw["path"]

    with pytest.MonkeyPatch.context() as m:
        m.setattr(style, "save", save)
        m.setattr(over_steps, "draw_over_steps", accuracy_only)
        m.setattr(heatmap_mod, "draw_heatmap", lambda exp, run, path: path)
        written = draw_experiment(exp)
    return exp, written, facts


def test_recurrent_experiment_draws_bptt_and_accuracy(recurrent):
    exp, written, facts = recurrent
    runs = ("none-s0", "norm-1-s0")
    assert {p.name for p in written} == {"grad_norm.png", "loss.png", "accuracy.png"} | \
        {f"{kind}_{r}.png" for kind in ("heatmap", "bptt") for r in runs}
    assert set(facts) == {"accuracy.png", "bptt_none-s0.png", "bptt_norm-1-s0.png"}
    for name in facts:
        assert_png(exp / "plots" / name)
    e = load_experiment(exp)
    # LSTM gates are fixed: no activation in the subtitle; the task and the truncation are named.
    assert e.summary == ("lstm_order — lstm depth 2 width 8 (orthogonal init ×1.2), temporal_order T=24, "
                         "sgd lr 0.05 momentum 0.9, truncated BPTT every 8 steps")
    # Accuracy: linear in [0, 1] (a margin keeps 0 and 1 visible), chance drawn, divergence marked.
    acc = facts["accuracy.png"]
    assert acc["yscale"] == "linear" and acc["ylim"] == pytest.approx((-0.02, 1.02))
    assert {"chance (1/4)", "none: diverged at step 6", "norm-1: max_norm 1"} <= set(acc["legend"])
    # The title is wrapped to the figure rather than cut at both ends.
    assert all(len(line) <= 90 for line in acc["suptitle"].splitlines())


def test_bptt_plot_of_a_diverged_run(recurrent):
    f = recurrent[2]["bptt_none-s0.png"]
    assert f["title"].startswith("Gradient through time — none-s0 — diverged at step 6 in backward at lstm.1.h @ t=18")
    assert f["yscale"] == "log" and "dL/dh_t" in f["ylabel"]
    assert "from t = 23 back to t = 0" in f["xlabel"]
    assert {"lstm.0 (bottom)", "lstm.1 (top)", "step 0", "step 5 (last before divergence at step 6)",
            "top edge: NaN/inf at that t", "bottom edge: zero at that t"} <= set(f["legend"])
    assert any(t.startswith("first NaN/inf, step 6 (backward)") for t in f["legend"])
    # tbptt 8 over T = 24: boundaries after t = 7 and t = 15, counted from the end.
    assert f["vlines"] == [7.5, 15.5]
    # Zeros (before the last boundary) and the inf/NaN of the late step are masked and counted.
    assert "64 zeros" in f["caption"] and "4 NaN/inf values" in f["caption"]


def test_bptt_plot_stays_readable_when_long_and_deep(recurrent):
    f = recurrent[2]["bptt_norm-1-s0.png"]
    assert f["title"].startswith("Gradient through time — norm-1-s0 — trained 12 steps")
    layers = [t for t in f["legend"] if t.startswith("lstm.")]
    assert len(layers) == 8 and layers[0] == "lstm.0 (bottom)" and layers[-1] == "lstm.9 (top)"
    assert "step 11 (final)" in f["legend"]
    assert "8 of 10 layers shown" in f["caption"]
    assert "299 boundaries, too many to draw" in f["caption"] and f["vlines"] == []
    assert max(f["points"]) <= style.MAX_LINE_POINTS + 2
    assert "masked" not in f["caption"]


def test_mlp_experiment_has_no_bptt_or_accuracy_plot(full):
    exp, written = full
    assert not list((exp / "plots").glob("bptt_*.png"))
    assert not (exp / "plots" / "accuracy.png").exists()


def test_describe_recurrent_configs():
    cfg = {"name": "rnn_adding",
           "model": {"kind": "rnn", "depth": 1, "width": 64, "activation": "tanh",
                     "init": {"scheme": "orthogonal", "gain": 1.2}, "input_init": {"scheme": "xavier", "gain": 1.0}},
           "task": {"kind": "adding", "batch_size": 64, "seq_len": 30},
           "train": {"steps": 300, "optimizer": {"kind": "sgd", "lr": 0.05, "momentum": 0.9, "dampening": 0.0,
                                                 "nesterov": False, "weight_decay": 0.0}, "tbptt": None}}
    assert describe.describe_config(cfg, "x") == \
        "rnn_adding — rnn depth 1 width 64 tanh (orthogonal init ×1.2), adding T=30, sgd lr 0.05 momentum 0.9"
    cfg["model"] = {"kind": "gru", "depth": 3, "width": 32, "activation": "tanh", "init": {"scheme": "orthogonal", "gain": 1.0}}
    cfg["task"] = {"kind": "copy", "seq_len": 40, "copy_len": 5, "n_symbols": 8}
    cfg["train"] = {"optimizer": {"kind": "adamw", "lr": 0.001, "betas": [0.9, 0.999], "weight_decay": 0.01, "amsgrad": False},
                    "tbptt": 10}
    assert describe.describe_config(cfg, "x") == ("rnn_adding — gru depth 3 width 32 (orthogonal init ×1), "
                                                "copy T=40 (5 of 8 symbols), adamw lr 0.001 wd 0.01, truncated BPTT every 10 steps")
    assert describe.chance_accuracy(cfg) == (0.125, "1/8")
    # The MLP's default teacher task is not named (titles stay as they were); spirals is.
    assert describe.describe_config({"name": "m", "model": {"kind": "mlp"}, "task": {"kind": "teacher"}}, "x") == "m — mlp"
    assert describe.describe_config({"name": "m", "task": {"kind": "spirals"}}, "x") == "m — spirals"


def test_flow_step_labels_and_truncation_boundaries(tmp_path):
    e = load_experiment(make_recurrent(tmp_path / "labels", steps=12))
    none, norm = (next(r for r in e.runs if r.run_id == rid) for rid in ("none-s0", "norm-1-s0"))
    assert flow.flow_step_label(none, 0, last=False) == "step 0"
    assert flow.flow_step_label(none, 5, last=True) == "step 5 (last before divergence at step 6)"
    assert flow.flow_step_label(norm, 11, last=True) == "step 11 (final)"
    assert flow.flow_step_label(norm, 7, last=True) == "step 7 (last recorded)"
    none.first_nonfinite = {"step": 6, "phase": "update", "where": "lstm.0.W_hh", "kind": "inf"}
    assert flow.flow_step_label(none, 6, last=True) == "step 6 (gradients finite; its update diverged)"
    # The recurrent backward pass's rule: boundary between t and t + 1 when (T - 1 - t) % K == 0.
    for T, K in ((10, 3), (12, 4), (5, 1), (7, 10)):
        assert flow.tbptt_boundaries(T, K) == [t for t in range(T - 1) if (T - 1 - t) % K == 0]
    assert flow.tbptt_boundaries(10, 3) == [0, 3, 6]
    assert flow.tbptt_boundaries(10, None) == []


def test_read_flow_is_lenient(tmp_path):
    path = tmp_path / "bptt_norms.csv"
    # Columns found by name; a damaged row, a missing value and a missing t are skipped or gaps.
    path.write_text("layer,t,grad_norm,step\nrnn.10,0,1.0,3\nrnn.2,0,inf,3\nrnn.2,2,nan,3\n"
                    "rnn.2,x,1,3\nrnn.2,1\n\nrnn.10,2,0,7\n")
    read = flow.read_flow(path)
    assert read.T == 3 and read.steps == [3, 7] and read.layers == ["rnn.2", "rnn.10"]
    assert np.isinf(read.norms[3]["rnn.2"][0]) and np.isnan(read.norms[3]["rnn.2"][1])
    assert read.present[3]["rnn.2"].tolist() == [True, False, True]
    assert flow.read_flow(tmp_path / "missing.csv") is None
    path.write_text("step,layer,t,grad_norm\n")
    assert flow.read_flow(path) is None
    assert flow.pick_layers([f"gru.{i}" for i in range(20)], 8)[::7] == ["gru.0", "gru.19"]


def test_unchanged_plots_are_not_redrawn(tmp_path):
    """A rerun (only_stale) keeps every figure whose inputs are unchanged, file untouched; a
    run computed again redraws its own figures and those that show every run; `gradlab
    plot` (not only_stale) redraws everything."""
    exp = make_experiment(tmp_path / "rerun", variants=("none", "norm-1"), seeds=(0,), steps=6)
    names = {"grad_norm.png", "loss.png", "heatmap_none-s0.png", "heatmap_norm-1-s0.png"}
    assert {p.name for p in draw_experiment(exp, only_stale=True)} == names

    def mtimes() -> dict[str, int]:
        return {p.name: p.stat().st_mtime_ns for p in (exp / "plots").glob("*.png")}

    before = mtimes()
    assert draw_experiment(exp, only_stale=True) == []
    assert mtimes() == before
    write_run(exp, "norm-1", 0, 6, variant_index=1)  # the run computed again: its files written anew
    assert {p.name for p in draw_experiment(exp, only_stale=True)} == {"grad_norm.png", "loss.png",
                                                                        "heatmap_norm-1-s0.png"}
    after = mtimes()
    assert after["heatmap_none-s0.png"] == before["heatmap_none-s0.png"]
    assert after["heatmap_norm-1-s0.png"] != before["heatmap_norm-1-s0.png"]
    # A figure deleted by hand is drawn again; so is everything when asked for explicitly.
    (exp / "plots" / "loss.png").unlink()
    assert {p.name for p in draw_experiment(exp, only_stale=True)} == {"loss.png"}
    assert {p.name for p in draw_experiment(exp)} == names


def test_only_stale_redraws_a_recurrent_run_that_changed(recurrent, monkeypatch):
    exp = recurrent[0]
    drawn = []
    monkeypatch.setattr(over_steps, "draw_over_steps", lambda exp, columns, **kw: drawn.append(kw["path"].name))
    monkeypatch.setattr(heatmap_mod, "draw_heatmap", lambda exp, run, path: drawn.append(path.name))
    monkeypatch.setattr(flow, "draw_bptt", lambda exp, run, path: drawn.append(path.name))
    draw_experiment(exp, only_stale=True)
    # The bptt plots and accuracy.png were drawn with these inputs: kept. The fixture never
    # wrote the others.
    assert sorted(drawn) == ["grad_norm.png", "heatmap_none-s0.png", "heatmap_norm-1-s0.png", "loss.png"]
    drawn.clear()
    # The stand-ins returned None (nothing to show): with unchanged inputs, not tried again.
    draw_experiment(exp, only_stale=True)
    assert drawn == []
    report = exp / "runs" / "norm-1-s0" / "report.json"
    report.write_bytes(report.read_bytes())  # the run was redone
    draw_experiment(exp, only_stale=True)
    assert sorted(drawn) == ["accuracy.png", "bptt_norm-1-s0.png", "grad_norm.png", "heatmap_norm-1-s0.png", "loss.png"]


def test_parallel_drawing_gives_the_serial_files(tmp_path):
    """Two processes draw byte for byte what one draws (Agg renders deterministically and
    the PNGs carry no time stamp), and the same set of files."""
    serial, parallel = (make_experiment(tmp_path / d / "exp", variants=("none", "norm-1"), seeds=(0, 1), steps=6)
                        for d in ("serial", "parallel"))
    a = sorted(p.name for p in draw_experiment(serial, workers=1))
    b = sorted(p.name for p in draw_experiment(parallel, workers=2))
    assert a == b and len(a) == 6
    assert sorted(p.name for p in (serial / "plots").iterdir()) == sorted(p.name for p in (parallel / "plots").iterdir())
    for name in a:
        assert (serial / "plots" / name).read_bytes() == (parallel / "plots" / name).read_bytes(), name


def test_draws_exactly_the_runs_gradlab_validated(tmp_path):
    """A run whose report.json disagrees with its metrics.csv is damaged: `gradlab report`
    leaves it out, and so do the plots. Reports passed in are drawn as given."""
    exp = make_experiment(tmp_path / "strict", variants=("none", "norm-1"), seeds=(0,), steps=6)
    assert len(collect_reports(exp)) == 2
    path = exp / "runs" / "norm-1-s0" / "report.json"
    path.write_text(path.read_text().replace('"steps_completed": 6', '"steps_completed": 5'))
    assert [r["run_id"] for r in collect_reports(exp)] == ["none-s0"]
    assert [r.run_id for r in load_experiment(exp).runs] == ["none-s0"]
    reports = collect_reports(exp)
    assert [r.run_id for r in load_experiment(exp, reports=reports).runs] == ["none-s0"]


def test_every_plot_module_imports_without_matplotlib():
    code = ("import importlib, pkgutil, sys, gradlab.plots as p\n"
            "names = [m.name for m in pkgutil.iter_modules(p.__path__)]\n"
            "assert {'load', 'describe', 'style', 'over_steps', 'heatmaps', 'flow', 'multiples', 'sweep', 'sweep_plots', 'figures'} <= set(names), names\n"
            "for name in names: importlib.import_module('gradlab.plots.' + name)\n"
            "assert 'matplotlib' not in sys.modules, 'matplotlib imported'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=60)


def test_a_drawing_process_that_dies_costs_no_figure(tmp_path, monkeypatch):
    """The out-of-memory killer takes a drawing process: the figures it left are drawn by
    the parent, and the call returns (a pool of processes can otherwise wait forever)."""
    import os

    exp = make_experiment(tmp_path / "killed", variants=("none", "norm-1"), seeds=(0,), steps=6)
    parent, real = os.getpid(), heatmap_mod.draw_heatmap

    def die_in_a_child(exp, run, path):
        if os.getpid() != parent:
            os._exit(9)
        return real(exp, run, path)

    monkeypatch.setattr(heatmap_mod, "draw_heatmap", die_in_a_child)
    drawn = {p.name for p in draw_experiment(exp, workers=2)}
    assert drawn == {"grad_norm.png", "loss.png", "heatmap_none-s0.png", "heatmap_norm-1-s0.png"}
    for name in drawn:
        assert_png(exp / "plots" / name)


def _over_steps_facts(exp: Path, monkeypatch, name: str = "grad_norm.png") -> dict:
    """What grad_norm.png (or another over-steps figure) shows, without drawing the rest."""
    facts: dict[str, dict] = {}
    real_save = style.save

    def save(fig, path):
        facts[path.name] = {**figure_facts(fig), "ylims": [a.get_ylim() for a in fig.axes if a.get_visible()]}
        return real_save(fig, path)

    monkeypatch.setattr(style, "save", save)
    monkeypatch.setattr(heatmap_mod, "draw_heatmap", lambda *args: None)
    draw_experiment(exp)
    return facts[name]


def test_an_explosion_leaves_through_the_top_and_the_clipped_runs_keep_the_scale(tmp_path, monkeypatch):
    """The baseline reaching 1e10 would squash the clipped runs into one flat band: the y
    range follows the runs that stay finite (and the thresholds), the explosion is marked at
    the top edge with its peak value and step, every threshold is labelled, and the key has
    no two entries that look alike."""
    exp = make_experiment(tmp_path / "exp", variants=("none", "norm-1", "norm-10"), seeds=(0,), steps=80)
    write_run(exp, "none", 0, 80, diverge_at=69)  # exp(69/3) ~ 1e10 at its peak
    facts = _over_steps_facts(exp, monkeypatch)
    (bottom, top), = facts["ylims"][:1]
    assert top < 100 and bottom > 0.01, facts["ylims"]  # healthy runs: 0.5-5.5, thresholds 1 and 10
    peak = next(t for t in facts["texts"] if t.startswith("none: "))
    assert peak.endswith("at step 68") and float(peak.split()[1]) > 1e9, peak
    assert {"1", "10"} <= set(facts["texts"])  # each threshold named at its line
    entries = [e for e in facts["legend"] if e]
    assert len(entries) == len(set(entries)), entries
    assert "off the scale: peak value, step" in entries and "before clipping" in entries


def test_runs_that_stay_within_reach_are_all_on_the_scale(tmp_path, monkeypatch):
    exp = make_experiment(tmp_path / "exp", variants=("none", "norm-1"), seeds=(0,), steps=30)
    write_run(exp, "none", 0, 30, diverge_at=8)  # peaks at exp(7/3) ~ 10: close to the others
    facts = _over_steps_facts(exp, monkeypatch)
    assert not any(t.startswith("none: ") for t in facts["texts"])
    assert facts["ylims"][0][1] > 10


def test_a_run_non_finite_from_step_0_is_marked_on_the_top_edge_as_such(tmp_path, monkeypatch):
    exp = make_experiment(tmp_path / "exp", variants=("none", "norm-1"), seeds=(0,), steps=30)
    write_run(exp, "none", 0, 30, diverge_at=0)
    facts = _over_steps_facts(exp, monkeypatch)
    assert "none: diverged at step 0 (no finite value)" in facts["legend"], facts["legend"]


def test_thresholds_near_the_ends_of_float64_plot_without_a_warning(tmp_path):
    """A float64 sweep may use thresholds from 1e-300 to 1e300: matplotlib's own log
    autoscaling and tick location overflow there (RuntimeWarnings from matplotlib, which no
    user should see); gradlab sets the limits and the ticks itself."""
    import warnings

    exp = make_sweep(tmp_path / "wide", thresholds=(1e-300, 1.0, 1e300), seeds=(0,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        written = draw_experiment(exp, workers=1)
    assert {"grad_norm.png", "sweep_final_loss.png"} <= {p.name for p in written}


# ----------------------------------------------------------------------------- small multiples


@pytest.fixture
def drawn_figures(monkeypatch) -> dict:
    """Every figure saved, as the figure object (by file name); the PNGs are written too."""
    figs: dict = {}
    real_save = style.save

    def save(fig, path):
        figs[path.name] = fig
        return real_save(fig, path)

    monkeypatch.setattr(style, "save", save)
    monkeypatch.setattr(over_steps, "draw_over_steps", lambda exp, columns, **kw: kw["path"])
    return figs


def heatmap_canvas(fig):
    """The one axes a small-multiples heatmap figure draws its panels into."""
    return next(ax for ax in fig.axes if ax.get_label() == "<canvas>")


def panel_frames(canvas) -> dict:
    """run id -> the frame of its panel."""
    return {p.get_gid(): p for p in canvas.patches if p.get_gid()}


def divergence_panels(canvas) -> list[str]:
    """The runs whose panel holds a divergence line."""
    lines = [c for c in canvas.collections if c.get_gid() == "divergence"]
    points = [seg.mean(axis=0) for c in lines for seg in c.get_segments()]
    return [rid for rid, f in panel_frames(canvas).items()
            if any(f.get_x() <= x <= f.get_x() + f.get_width() and f.get_y() <= y <= f.get_y() + f.get_height()
                   for x, y in points)]


def test_a_sweep_draws_one_heatmap_figure_per_seed_with_a_panel_per_variant(tmp_path, drawn_figures):
    diverge = {"none-s0": 4, "norm-10-s1": 7}
    exp = make_sweep(tmp_path / "sweep", thresholds=(10.0, 0.1, 1.0), seeds=(0, 1), diverge=diverge)
    (exp / "plots").mkdir()
    write_bytes(exp / "plots" / "heatmap_none-s0.png", b"old")  # drawn per run by an older version
    written = {p.name for p in draw_experiment(exp)}
    assert {"heatmaps_s0.png", "heatmaps_s1.png"} <= written
    # No per-run figure of a sweep: neither drawn nor left behind.
    assert not [n for n in written if n.startswith("heatmap_")]
    assert not list((exp / "plots").glob("heatmap_*.png"))
    for name in ("heatmaps_s0.png", "heatmaps_s1.png"):
        assert_png(exp / "plots" / name)
        canvas = heatmap_canvas(drawn_figures[name])
        # Threshold order whatever the config's order: the baseline first.
        assert [t.get_text().split("\n")[0] for t in canvas.texts if t.get_gid() == "title"] == [
            "none (no clipping)", "norm-0.1: max_norm 0.1", "norm-1: max_norm 1", "norm-10: max_norm 10"]
        # One colour scale: every panel's image has the same limits, and one colour bar shows them.
        assert len(canvas.images) == 4 and len({(im.norm.vmin, im.norm.vmax) for im in canvas.images}) == 1
        assert len([ax for ax in drawn_figures[name].axes if ax.get_label() == "<colorbar>"]) == 1
        # Shared axes: panels of one size, a run of every step fills its panel; the parameter
        # names on the first column only (2 x 2: two rows of six).
        frames = panel_frames(canvas)
        assert len({(f.get_width(), f.get_height()) for f in frames.values()}) == 1
        names = [t.get_text() for t in canvas.texts if t.get_gid() == "parameter"]
        assert names == PARAMS * 2
    fig0, fig1 = (heatmap_canvas(drawn_figures[f"heatmaps_s{s}.png"]) for s in (0, 1))
    frame = panel_frames(fig1)["norm-1-s1"]
    left, right, _, _ = fig1.images[2].get_extent()
    assert (left, right) == pytest.approx((frame.get_x(), frame.get_x() + frame.get_width()))
    # The divergence is marked in its own panel: the baseline in seed 0, norm-10 in seed 1.
    assert divergence_panels(fig0) == ["none-s0"] and divergence_panels(fig1) == ["norm-10-s1"]
    assert any(t.get_text().endswith("diverged at step 7: backward, layer1.W") for t in fig1.texts)
    # The limits are those of every panel's norms together.
    e = load_experiment(exp)
    vmin, vmax = fig0.images[0].norm.vmin, fig0.images[0].norm.vmax
    norms = []
    for run in figures.seed_runs(e, 0):
        header, table = heatmap_mod.read_table(run.path / "layer_norms.csv")
        norms.append(table[:, 1:].ravel())
    allnorms = np.concatenate(norms)
    allnorms = allnorms[np.isfinite(allnorms) & (allnorms > 0)]
    assert (vmin, vmax) == (allnorms.min(), allnorms.max())


def test_a_recurrent_sweep_draws_one_bptt_figure_per_seed(tmp_path, drawn_figures, monkeypatch):
    monkeypatch.setattr(multiples, "draw_heatmaps", lambda *args: None)
    exp = make_sweep(tmp_path / "rsweep", thresholds=(1.0, 0.1), seeds=(3,), diverge={"none-s3": 5})
    for i, rid in enumerate(("none-s3", "norm-0.1-s3", "norm-1-s3")):
        write_flow(exp / "runs" / rid, 20, [0, 4 if rid == "none-s3" else 11], explode_last=rid == "none-s3")
    written = {p.name for p in draw_experiment(exp)}
    assert "bptt_s3.png" in written and not [n for n in written if n.startswith("bptt_none")]
    assert_png(exp / "plots" / "bptt_s3.png")
    fig = drawn_figures["bptt_s3.png"]
    canvas = heatmap_canvas(fig)
    assert [t.get_text().split("\n")[0] for t in canvas.texts if t.get_gid() == "title"] == [
        "none (no clipping)", "norm-0.1: max_norm 0.1", "norm-1: max_norm 1"]
    # One y scale (log) and one t axis for every panel: panels of one size, one row of them
    # with the norm's ticks on the first only (the exploding baseline sets the top).
    frames = panel_frames(canvas)
    assert list(frames) == ["none-s3", "norm-0.1-s3", "norm-1-s3"]
    assert len({(f.get_width(), f.get_height()) for f in frames.values()}) == 1
    powers = [t.get_text() for t in canvas.texts if t.get_text().startswith("10")]
    assert powers and len(set(powers)) == len(powers)
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert {"lstm.0 (bottom)", "lstm.1 (top)", "step 0", "top edge: NaN/inf at that t"} <= set(legend)


def test_grid_shapes_for_2_to_12_panels():
    shapes = {n: multiples.grid_shape(n) for n in range(1, 13)}
    assert shapes == {1: (1, 1), 2: (1, 2), 3: (1, 3), 4: (2, 2), 5: (2, 3), 6: (2, 3), 7: (2, 4), 8: (2, 4),
                      9: (3, 3), 10: (3, 4), 11: (3, 4), 12: (3, 4)}
    assert all(r * c >= n and c <= style.MAX_MULTIPLE_COLUMNS for n, (r, c) in shapes.items())


def test_which_experiments_get_small_multiples(tmp_path, monkeypatch):
    """A sweep does, whatever its size; a run of a few variants that is no sweep keeps one
    figure per run; more than three variants get small multiples anyway."""
    def names(exp):
        return {f.name for f in figures.plan(load_experiment(exp)).figures}

    small = names(make_experiment(tmp_path / "small", variants=("none", "norm-1", "value-0.1"), seeds=(0, 1), steps=4))
    assert {"heatmap_none-s0.png", "heatmap_value-0.1-s1.png"} <= small
    assert not [n for n in small if n.startswith("heatmaps_")]
    two = names(make_sweep(tmp_path / "two", thresholds=(1.0, 10.0), seeds=(0,), baseline=False, sweep_key=False))
    assert "heatmaps_s0.png" in two and not [n for n in two if n.startswith("heatmap_")]
    # (The fixtures write no fourth variant that is not a sweep: the same rule, one lower.)
    monkeypatch.setattr(figures, "MAX_OWN_FIGURE_VARIANTS", 2)
    many = names(tmp_path / "small")
    assert "heatmaps_s1.png" in many and not [n for n in many if n.startswith("heatmap_")]


def test_a_redone_run_redraws_its_seeds_small_multiples_only(tmp_path, monkeypatch):
    exp = make_sweep(tmp_path / "incr", thresholds=(0.1, 1.0), seeds=(0, 1), steps=6)
    drawn = []
    monkeypatch.setattr(over_steps, "draw_over_steps", lambda exp, columns, **kw: drawn.append(kw["path"].name))
    monkeypatch.setattr(multiples, "draw_heatmaps", lambda exp, seed, runs, path: drawn.append(
        (path.name, [r.run_id for r in runs])))
    for name in ("final_loss", "divergence", "clip_fraction", "grad_norm"):
        monkeypatch.setattr(sweep_mod_plots, f"draw_{name}", lambda *args: drawn.append(args[-1].name))
    draw_experiment(exp, only_stale=True)
    assert ("heatmaps_s1.png", ["none-s1", "norm-0.1-s1", "norm-1-s1"]) in drawn
    drawn.clear()
    draw_experiment(exp, only_stale=True)
    assert drawn == []  # a rerun with nothing new draws nothing
    report = exp / "runs" / "norm-1-s1" / "report.json"
    report.write_bytes(report.read_bytes())  # the run was redone
    draw_experiment(exp, only_stale=True)
    assert ("heatmaps_s1.png", ["none-s1", "norm-0.1-s1", "norm-1-s1"]) in drawn
    assert not [d for d in drawn if isinstance(d, tuple) and d[0] == "heatmaps_s0.png"]



def test_small_multiples_drawn_in_parallel_give_the_serial_files(tmp_path, monkeypatch):
    monkeypatch.setattr(over_steps, "draw_over_steps", lambda exp, columns, **kw: kw["path"])
    serial, parallel = (make_sweep(tmp_path / d / "exp", thresholds=(0.1, 1.0), seeds=(0, 1), steps=6,
                                   diverge={"none-s1": 3}) for d in ("serial", "parallel"))
    for exp in (serial, parallel):
        for rid in ("none-s0", "norm-0.1-s0", "norm-1-s0"):
            write_flow(exp / "runs" / rid, 8, [0, 5])
    a = sorted(p.name for p in draw_experiment(serial, workers=1))
    b = sorted(p.name for p in draw_experiment(parallel, workers=2))
    assert a == b and {"heatmaps_s0.png", "heatmaps_s1.png", "bptt_s0.png"} <= set(a)
    files = sorted(p.name for p in (serial / "plots").glob("*.png"))  # (the overview's stand-in writes none)
    assert files == sorted(p.name for p in (parallel / "plots").glob("*.png")) and "bptt_s0.png" in files
    for name in files:
        assert (serial / "plots" / name).read_bytes() == (parallel / "plots" / name).read_bytes(), name
