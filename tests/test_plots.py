"""gradlab.plots on small synthetic experiment directories (no training involved)."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gradlab.io import write_csv, write_json, write_text
from gradlab import plots
from gradlab.plots import _aggregate_columns, _downsample, draw_experiment, load_experiment

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
              metrics_nan: bool = False) -> dict:
    """One run folder; a diverged run stops at `diverge_at` with a NaN/inf last row."""
    rng = np.random.default_rng(seed)
    method, _, thr = variant.partition("-")
    threshold = float(thr) if thr else None
    n = steps if diverge_at is None else diverge_at + 1
    t = np.arange(n)
    grad = (np.exp(t / 3.0) if diverge_at is not None else 5 * np.exp(-t / 10) + 0.5) * (1 + 0.1 * rng.random(n))
    clipped = np.minimum(grad, threshold) if method == "norm" else grad * (0.5 if method == "value" else 1.0)
    loss = 1.0 / (1 + t) + 0.01 * rng.random(n)
    nonfinite = np.zeros(n)
    if diverge_at is not None:
        grad[-1], clipped[-1], loss[-1], nonfinite[-1] = math.inf, math.nan, math.nan, 1
    if metrics_nan:
        grad[:], clipped[:], loss[:] = math.nan, math.nan, math.nan
    rows = [[int(t[i]), loss[i], grad[i], clipped[i], min(1.0, clipped[i] / grad[i]) if np.isfinite(grad[i]) else math.nan,
             int(clipped[i] < grad[i]), 0.01 * clipped[i], int(nonfinite[i])] for i in range(n)]
    d = exp / "runs" / f"{variant}-s{seed}"
    write_csv(d / "metrics.csv", METRICS, rows)
    layers = grad[None, :] * np.linspace(1, 0.01, len(PARAMS))[:, None]
    if layer_nan:
        layers[2] = math.nan  # a whole column of the CSV without one finite value
    if layer_zero:
        layers[5] = 0.0
    if diverge_at is not None:
        layers[:, -1] = math.nan
    write_csv(d / "layer_norms.csv", ["step", *PARAMS], [[i, *layers[:, i]] for i in range(n)])
    rep = {
        "run_id": f"{variant}-s{seed}", "seed": seed, "variant": variant, "method": method,
        "threshold": threshold, "norm_type": 2.0 if method == "norm" else None,
        "diverged": diverge_at is not None, "divergence_step": diverge_at,
        "first_nonfinite": None if diverge_at is None else
        {"step": diverge_at, "phase": "backward", "where": "layer1.W", "kind": "inf"},
        "max_grad_norm": float(np.nanmax(np.where(np.isfinite(grad), grad, np.nan))) if np.isfinite(grad).any() else "nan",
        "final_loss": None if diverge_at is not None else float(loss[-1]),
        "steps_completed": n if diverge_at is None else diverge_at, "clip_fraction": 0.5, "steps": steps,
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
        for v in variants:
            rid = f"{v}-s{seed}"
            rep = write_run(exp, v, seed, steps, diverge_at=steps // 2 if v == "none" else None,
                            report=rid not in skip_report, **run_options.get(rid, {}))
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
    assert not (exp / "plots" / "sweep.png").exists()
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
    monkeypatch.setattr(plots, "_draw_heatmap", lambda exp, run, path: heatmaps.append(run.run_id))
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
    written = draw_experiment(exp)
    assert {p.name for p in written} == {"grad_norm.png", "loss.png", "heatmap_none-s0.png", "heatmap_norm-1-s0.png"}
    for p in written:
        assert_png(p)


def test_sweep_plot_for_several_thresholds(tmp_path, monkeypatch):
    exp = make_experiment(tmp_path / "sweep", variants=("none", "norm-0.1", "norm-1", "norm-10"), seeds=(0,), steps=12)
    write_run(exp, "norm-10", 1, 12, diverge_at=5)  # a clipped run without a final loss
    # The other plots are covered above; drawing them again would only cost time.
    monkeypatch.setattr(plots, "_draw_heatmap", lambda *args: None)
    monkeypatch.setattr(plots, "_draw_over_steps", lambda exp, columns, **kw: kw["path"])
    written = draw_experiment(exp)
    assert exp / "plots" / "sweep.png" in written
    assert_png(exp / "plots" / "sweep.png")
    e = load_experiment(exp)
    # The baseline is neutral; every clipped variant has a colour of its own.
    assert e.colors["none"] == "#303030"
    assert len({e.colors[v] for v in e.variants}) == 4


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
