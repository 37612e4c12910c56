"""Reliability (issue 7): every numerical fault is a located divergence, never a crash.

Each case runs the real training loop (`train_seed` on a shipped config loaded with
`load_config`, or `gradlab run`) and asserts the exact step, phase, where and kind. The
expected values are derived from weights built so that they are known exactly (`set_weights`
replaces the drawn initial weights; the data, loss, optimizer, clipping and loop are the real
ones), not copied from what gradlab prints.

The workhorse is the *ladder*: a depth-3 identity MLP on the teacher task with layer0 and
layer1.W zero, so h1 = layer1.b = c for every example and out = 4 c a + beta (width 4,
layer2.W = a, layer2.b = beta), whatever the data. W0, b0 and W1 never receive a gradient
(h0 = 0 and dz0 = dz1 W1^T = 0); only layer1.b, layer2.W and layer2.b move. At step 0 with
c = 0: out = beta, Delta := sum of dL/dout = 2 (beta - mean y), grad layer1.b = a Delta (each
entry), grad layer2.b = Delta, grad layer2.W = c Delta = 0. The teacher's outputs satisfy
|y| <= sum |teacher head| < 10 (checked below), so with beta = 100, Delta is in [180, 220].
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import cli

import gradlab.train
from gradlab.config import load_config, run_id
from gradlab.tasks import build_task
from gradlab.train import seed_streams, train_seed

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"


def config(name: str, *overrides: str, seeds=(0,)):
    return load_config(CONFIGS / name, list(overrides), seeds=list(seeds))


def set_weights(monkeypatch, values: dict) -> None:
    """Train from these initial weights: `values` maps a parameter name to a scalar (filled into
    its shape) or an array; every other parameter starts at 0."""
    real = gradlab.train.build_model

    def build(*args, **kwargs):
        model = real(*args, **kwargs)
        model.init = lambda rng: {
            name: np.broadcast_to(np.asarray(values.get(name, 0.0), np.float64), shape).astype(model.dtype)
            for name, shape in model.shapes.items()}
        return model

    monkeypatch.setattr(gradlab.train, "build_model", build)


def ladder(c: float, a: float, beta: float) -> dict:
    return {"layer1.b": c, "layer2.W": a, "layer2.b": beta}


LADDER = ("model.depth=3", "model.width=4", "model.activation=identity")


def ladder_config(*overrides: str, steps: int = 5):
    return config("quickstart.yaml", *LADDER, f"train.steps={steps}", *overrides)


def fault(result):
    fn = result.first_nonfinite
    return None if fn is None else (fn.step, fn.phase, fn.where, fn.kind)


def metrics(result) -> np.ndarray:
    return np.array(result.metrics_rows, dtype=float)


def assert_stopped_at(result, step: int) -> None:
    """The run's records end at the divergence step, which is flagged (and no other)."""
    m = metrics(result)
    assert len(m) == step + 1 and m[-1, 7] == 1 and (m[:-1, 7] == 0).all()
    rep = result.report()
    assert rep["diverged"] and rep["divergence_step"] == step and rep["steps_completed"] == step


def assert_finished(result, steps: int) -> None:
    m = metrics(result)
    assert result.first_nonfinite is None and len(m) == steps and (m[:, 7] == 0).all()
    assert np.isfinite(m[:, 1:5]).all()


def test_teacher_outputs_are_bounded_as_the_ladder_assumes():
    cfg = ladder_config()
    for dtype in ("float32", "float64"):
        task = build_task(cfg.task, dtype, seed_streams(0)["task"])
        assert np.abs(task.teacher_params["layer1.W"]).sum() + np.abs(task.teacher_params["layer1.b"]).sum() < 10


# ----------------------------------------------------------------------------- backward

DEEP = {"layer0.W": 1e-10, "layer1.W": 1e12, "layer2.W": 1e12, "layer3.W": 1.0}


@pytest.mark.parametrize("dtype, optimizer, weights, depth, where", [
    # h1 = c = 1e30, out = 4 c a = 4e17: loss ~ 1.6e35 is finite, but grad layer2.W = sum_b h1 dout_b
    # has terms 1e30 * 2 * 4e17 / 64 ~ 1e46: inf, the first gradient backprop computes.
    ("float32", "sgd", ladder(1e30, 1e-13, 0.0), 3, "layer2.W"),
    # Adam never sees it: the gradient is born non-finite in backward, before any optimizer.
    ("float32", "adam", ladder(1e30, 1e-13, 0.0), 3, "layer2.W"),
    # float64: out = 4e150 (64 out^2 ~ 1e303 finite), gradient terms 1e200 * 1.25e149: inf.
    ("float64", "sgd", ladder(1e200, 1e-50, 0.0), 3, "layer2.W"),
    # A bottleneck: layer0 (1e-10) then two layers of 1e12 (all entries, width 4), layer3 = 1.
    # With s_b = sum of example b's 16 inputs: h0 = 1e-10 s_b, out_b = 64 * 1e24 * 1e-10 s_b
    # = 6.4e15 s_b (loss ~ 1e34, finite); dout_b ~ 2e14 s_b; backprop multiplies by 4e12 per
    # layer: dL/dh1 = 4e12 dout_b ~ 8e26 s_b is finite, dL/dh0 = 16e24 dout_b ~ 3e39 s_b is not,
    # and dL/dh0 is the gradient of layer0's activation output: `layer0.identity`.
    ("float32", "sgd", DEEP, 4, "layer0.identity"),
])
def test_gradient_overflow_with_finite_loss_is_located_in_backward(monkeypatch, dtype, optimizer, weights,
                                                                   depth, where):
    """A finite loss, an inf gradient: born in backward at step 0. Every variant shares the step-0
    weights and batch, and clipping acts only after backward, so every variant diverges there,
    and no clipping rule hides it (value clipping would turn inf into 0.1; norm clipping leaves
    a non-finite gradient unscaled)."""
    set_weights(monkeypatch, weights)
    cfg = ladder_config(f"train.dtype={dtype}", f"model.depth={depth}", f"train.optimizer={{kind: {optimizer}}}",
                        "clipping=[{method: none}, {method: norm, max_norm: 1.0},"
                        " {method: norm, max_norm: 1.0, norm_type: inf}, {method: value, clip_value: 0.1}]")
    for r in train_seed(cfg, 0):
        assert fault(r) == (0, "backward", where, "inf"), r.run_id
        assert_stopped_at(r, 0)
        m = metrics(r)
        assert np.isfinite(m[0, 1]) and not np.isfinite(m[0, 2])  # the loss was fine; the gradient was not


def test_a_nonfinite_gradient_is_skipped_up_to_max_consecutive_then_located(monkeypatch):
    """The same inf gradient every step (h1 = c whatever the input, and a skipped step changes
    nothing): `skip` with nonfinite skips it max_consecutive times in a row, leaving the weights
    as they were, then lets the next through and the run diverges where it was born; alone in a chain too.
    Without nonfinite, or unclipped, it diverges at once."""
    set_weights(monkeypatch, ladder(1e30, 1e-13, 0.0))
    cfg = ladder_config("clipping=[{method: none}, {method: skip, nonfinite: true, max_consecutive: 3},"
                        " {method: chain, rules: [{method: skip, nonfinite: true, max_consecutive: 3},"
                        " {method: zclip, warmup: 2}]}, {method: skip}]", steps=10)
    none, skip, chain, plain = train_seed(cfg, 0)
    for r in (none, plain):
        assert fault(r) == (0, "backward", "layer2.W", "inf")
    for r in (skip, chain):
        assert fault(r) == (3, "backward", "layer2.W", "inf"), r.run_id  # the 4th in a row goes through
        rows = [dict(zip(r.columns, row)) for row in r.metrics_rows]
        assert [row["skipped"] for row in rows] == [1, 1, 1, 0]
        assert all(row["update_norm"] == 0.0 and row["nonfinite"] == 0 for row in rows[:3])
        assert all(row["grad_norm"] == math.inf for row in rows)
        assert r.summary["skip_fraction"] == 1.0 and r.summary["steps_completed"] == 3


def test_float64_gradient_norm_beyond_the_range_is_named_gradient_norm(monkeypatch):
    """Every value finite, but the global norm is not: grad layer2.W = 4 entries of c Delta in
    [1.08e308, 1.32e308] (c = 6e305, out = 4 c a = 100), whose L2 norm (>= 2.16e308) exceeds
    float64's 1.8e308. No non-finite value exists to name, and the norm cannot steer clipping:
    the step is reported as `gradient norm` (backward), in every variant, rather than a guessed layer."""
    set_weights(monkeypatch, ladder(6e305, 100 / (4 * 6e305), 0.0))
    cfg = ladder_config("train.dtype=float64", "train.optimizer={kind: sgd, lr: 1.0e-10}",
                        "clipping=[{method: none}, {method: norm, max_norm: 1.0}]")
    for r in train_seed(cfg, 0):
        assert fault(r) == (0, "backward", "gradient norm", "inf")
        assert_stopped_at(r, 0)
        assert np.isfinite(metrics(r)[0, 1]) and metrics(r)[0, 2] == math.inf


def test_gelu_of_a_huge_finite_preactivation_has_a_finite_gradient(monkeypatch):
    """gelu(1e20) = 1e20 and gelu'(1e20) = 1 (to every float's precision): the ladder with
    c = 1e20, a = 1e-20 has out = 4, a finite loss and finite gradients (grad layer2.W =
    1e20 Delta ~ 1e21), so no variant may diverge at that step (one step: any update of a = 1e-20
    moves the output by orders of magnitude)."""
    set_weights(monkeypatch, ladder(1e20, 1e-20, 0.0))
    cfg = ladder_config("model.activation=gelu", "train.optimizer={kind: sgd, lr: 1.0e-36}", steps=1)
    for r in train_seed(cfg, 0):
        assert_finished(r, cfg.train.steps)


# ----------------------------------------------------------------------------- after an update

# The unclipped variant takes one SGD step of lr L from the ladder with c = 0, beta = 100:
# c' = -L a Delta and beta' = 100 - L Delta, so at step 1 h1 = c' and out = 4 c' a + beta'.
# The clipped variant (max_norm = 1 / L) moves its parameters by at most 1 per step and trains
# on: its c stays O(1), out O(a).
CASES = {
    # c' = -2e34 finite, c' a = -2e44: layer2's affine map overflows at step 1.
    "forward-layer-f32": ("float32", 1e10, 1e22, (1, "forward", "layer2.linear", "inf")),
    # float64: c' = -2e212, c' a = -2e312.
    "forward-layer-f64": ("float64", 1e100, 1e110, (1, "forward", "layer2.linear", "inf")),
    # out = -L Delta (4 a^2 + 1) ~ -1e25 is finite, its square is not: the loss itself overflows.
    "forward-loss-f32": ("float32", 1.0, 1e22, (1, "forward", "loss", "inf")),
    "forward-loss-f64": ("float64", 1.0, 1e160, (1, "forward", "loss", "inf")),
    # lr 1e30 x grad layer1.b (1e7 Delta ~ 2e9) = 2e39 > float32 max: layer1.b becomes -inf in the
    # update; layer0.W, layer0.b, layer1.W have zero gradient and layer2.b moves by 2e32.
    "update-f32": ("float32", 1e7, 1e30, (0, "update", "layer1.b", "inf")),
    # float64: lr 1e300 x 2e12 = 2e312; layer2.b moves by 2e302 (finite).
    "update-f64": ("float64", 1e10, 1e300, (0, "update", "layer1.b", "inf")),
}


@pytest.mark.parametrize("case", CASES)
def test_unclipped_update_blows_up_located_and_the_clipped_variant_goes_on(monkeypatch, case):
    dtype, a, lr, expected = CASES[case]
    set_weights(monkeypatch, ladder(0.0, a, 100.0))
    cfg = ladder_config(f"train.dtype={dtype}", f"train.optimizer={{kind: sgd, lr: {lr!r}}}",
                        f"clipping=[{{method: none}}, {{method: norm, max_norm: {1 / lr!r}}}]")
    none, clipped = train_seed(cfg, 0)
    assert fault(none) == expected
    assert_stopped_at(none, expected[0])
    # Loss and gradient were finite up to the fault (at the faulty step too, for an update fault).
    assert np.isfinite(metrics(none)[:expected[0] + (expected[1] == "update"), 1:3]).all()
    assert_finished(clipped, cfg.train.steps)


def run_cli(tmp_path, name: str, overrides, plots: bool = True) -> tuple[list[dict], dict]:
    """`gradlab run` in-process (one worker, so the test's patches hold); returns each run's
    report.json in config order, checked equal to its summary.json entry."""
    args = [f"--set={o}" for o in overrides] + ([] if plots else ["--no-plots"])
    assert cli("run", CONFIGS / name, *args, "--seeds", "0", "--out", tmp_path, "--workers", "1", "--quiet") == 0
    (exp,) = [d for d in tmp_path.iterdir() if d.is_dir()]
    summary = {r["run_id"]: r for r in json.loads((exp / "summary.json").read_text())}
    cfg = load_config(exp / "config.yaml")
    reports = [json.loads((exp / "runs" / run_id(c, 0) / "report.json").read_text()) for c in cfg.clipping]
    assert reports == [summary[run_id(c, 0)] for c in cfg.clipping] and len(summary) == len(reports)
    return reports, cfg


def test_sgd_lr_1e30_through_the_cli_writes_the_located_divergence(monkeypatch, tmp_path):
    """The update case ("update-f32" above) end to end through `gradlab run`, plots included."""
    set_weights(monkeypatch, ladder(0.0, 1e7, 100.0))
    (none, clipped), _ = run_cli(tmp_path, "quickstart.yaml", (
        *LADDER, "train.steps=5", "train.optimizer={kind: sgd, lr: 1.0e30}",
        "clipping=[{method: none}, {method: norm, max_norm: 1.0e-30}]"))
    assert none["diverged"] and none["divergence_step"] == 0 and none["steps_completed"] == 0
    assert none["first_nonfinite"] == {"step": 0, "phase": "update", "where": "layer1.b", "kind": "inf", "t": None}
    assert not clipped["diverged"] and clipped["first_nonfinite"] is None and clipped["steps_completed"] == 5


def test_nan_in_a_sequence_batch_through_the_cli_is_data_in_every_run(monkeypatch, tmp_path):
    plant(monkeypatch, 2, "x", (5, 1, 0), math.nan)
    # (no plots: drawing a recurrent experiment's plots takes seconds; the MLP case draws them)
    reports, cfg = run_cli(tmp_path, "rnn_adding.yaml", ("model.width=8", "train.steps=6"), plots=False)
    assert len(reports) == len(cfg.clipping) == 3
    for r in reports:
        assert r["diverged"] and r["divergence_step"] == 2 and r["steps_completed"] == 2
        assert r["first_nonfinite"] == {"step": 2, "phase": "forward", "where": "data.x", "kind": "nan", "t": None}


# ----------------------------------------------------------------------------- recurrent forward

@pytest.mark.parametrize("dtype, s", [("float32", 1e10), ("float64", 1e100)])
def test_recurrent_forward_overflow_is_located_in_time(monkeypatch, dtype, s):
    """A ReLU RNN with W_ih = 0, b_ih = 1, W_hh = s I: pre_t = 1 + s h_{t-1}, so
    pre_t = 1 + s + ... + s^t whatever the data: pre_3 ~ s^3 is finite, pre_4 ~ s^4 overflows
    (1e40 > 3.4e38 in float32, 1e400 > 1.8e308 in float64)."""
    set_weights(monkeypatch, {"rnn.0.W_ih": 0.0, "rnn.0.b_ih": 1.0, "rnn.0.W_hh": s * np.eye(4), "head.W": 1.0})
    cfg = config("rnn_adding.yaml", "model.activation=relu", "model.width=4", "train.steps=3",
                 f"train.dtype={dtype}")
    for r in train_seed(cfg, 0):
        assert fault(r) == (0, "forward", "rnn.0.pre @ t=4", "inf") and r.first_nonfinite.t == 4
        assert_stopped_at(r, 0)


# ----------------------------------------------------------------------------- init

@pytest.mark.parametrize("name, overrides, where", [
    ("quickstart.yaml", ("model.init.gain=1.0e100",), "layer0.W"),
    ("rnn_adding.yaml", ("model.init.gain=1.0e100",), "rnn.0.W_hh"),
])
def test_initial_weights_beyond_the_dtype_are_located_not_a_warning(name, overrides, where):
    """A gain of 1e100 makes float32 weights inf when they are cast: the parameter is named
    (every variant, step 0, forward: where it first enters the computation), no RuntimeWarning."""
    cfg = config(name, *overrides, "train.steps=3")
    for r in train_seed(cfg, 0):
        assert fault(r) == (0, "forward", where, "inf"), r.run_id
        assert_stopped_at(r, 0)


# ----------------------------------------------------------------------------- data

def plant(monkeypatch, step: int, field: str, index: tuple, value: float) -> None:
    """Put `value` at `index` of the batch's x or y at `step`; every other batch is the real one."""
    real = gradlab.train.build_task

    def build(*args, **kwargs):
        task = real(*args, **kwargs)
        draw, calls = task.batch, itertools.count()

        def batch(rng):
            x, y = draw(rng)
            if next(calls) == step:
                (x if field == "x" else y)[index] = value
            return x, y

        task.batch = batch
        # The held-out set comes from a stream of its own: only the training batches count.
        task.heldout = lambda rng, n: [draw(rng) for _ in range(n)]
        return task

    monkeypatch.setattr(gradlab.train, "build_task", build)


def test_a_task_whose_own_targets_overflow_is_reported_as_data():
    """Teacher noise 1e39 is inf in float32: every target is +-inf from step 0 on, made by the
    real task (nothing patched). The batch is named, in every variant."""
    cfg = config("quickstart.yaml", "task.noise=1.0e39", "train.steps=3")
    for r in train_seed(cfg, 0):
        assert fault(r) == (0, "forward", "data.y", "inf")
        assert_stopped_at(r, 0)


@pytest.mark.parametrize("name, overrides, field, index, value", [
    ("quickstart.yaml", (), "x", (5, 3), math.nan),
    ("quickstart.yaml", (), "x", (0, 0), math.inf),
    ("quickstart.yaml", (), "y", (7, 0), math.nan),
    ("rnn_adding.yaml", ("model.width=8",), "x", (7, 2, 0), math.nan),
    ("rnn_adding.yaml", ("model.width=8",), "y", (3, 0), math.nan),
    ("lstm_copy.yaml", ("model.width=16",), "x", (4, 1, 2), math.nan),
    ("gru_temporal_order.yaml", ("model.width=16", "task.seq_len=20"), "x", (12, 0, 5), math.nan),
])
def test_nonfinite_data_is_reported_as_data_in_every_variant(monkeypatch, name, overrides, field, index, value):
    """A bad batch at step 3 of a real task: every variant stops at step 3 with `data.x` /
    `data.y` (phase forward, the batch comes first), not at a layer of the model."""
    k = 3
    plant(monkeypatch, k, field, index, value)
    cfg = config(name, *overrides, f"train.steps={k + 3}")
    results = train_seed(cfg, 0)
    assert len(results) == len(cfg.clipping) >= 2
    for r in results:
        assert fault(r) == (k, "forward", f"data.{field}", "nan" if math.isnan(value) else "inf"), r.run_id
        assert_stopped_at(r, k)
