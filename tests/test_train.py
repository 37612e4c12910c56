"""The training loop: controlled experiments, determinism, and located divergences."""

import numpy as np
import pytest

from gradlab.config import ExperimentConfig
from gradlab.divergence import locate_step
from gradlab.losses import mse
from gradlab.models import MLP, stack
from gradlab.train import train_seed


def make(clipping, **over):
    base = dict(name="t", model=dict(depth=6, width=16, activation="tanh", init=dict(scheme="normal", gain=1.5)),
                task=dict(batch_size=16, input_dim=4), train=dict(steps=25, optimizer=dict(lr=0.05, momentum=0.9)),
                clipping=clipping)
    for k, v in over.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return ExperimentConfig.model_validate(base)


NONE = {"method": "none"}


def rows(result):
    return np.array(result.metrics_rows, dtype=float), np.array(result.layer_rows, dtype=float)


def test_same_config_and_seed_give_identical_numbers():
    cfg = make([NONE, {"method": "norm", "max_norm": 1.0}, {"method": "value", "clip_value": 0.05}])
    a, b = train_seed(cfg, 3), train_seed(cfg, 3)
    for ra, rb in zip(a, b):
        assert np.array_equal(rows(ra)[0], rows(rb)[0], equal_nan=True)
        assert np.array_equal(rows(ra)[1], rows(rb)[1], equal_nan=True)
    assert not np.array_equal(rows(a[0])[0], rows(train_seed(cfg, 4)[0])[0])  # the seed matters


def test_variants_share_initial_weights_and_batches():
    """A threshold that never bites must reproduce the baseline exactly: same start, same data."""
    cfg = make([NONE, {"method": "norm", "max_norm": 1e30}, {"method": "value", "clip_value": 1e30},
                {"method": "norm", "max_norm": 0.1}])
    res = train_seed(cfg, 0)
    base = rows(res[0])
    for r in res[1:3]:
        m, layer = rows(r)
        assert np.array_equal(m[:, 1:3], base[0][:, 1:3])  # loss and grad_norm, bit for bit
        assert np.array_equal(layer, base[1])
    # the one that clips differs after the first update but not at step 0
    m = rows(res[3])[0]
    assert m[0, 1] == base[0][0, 1] and m[5, 1] != base[0][5, 1]


def test_stacked_training_equals_one_variant_at_a_time():
    clips = [NONE, {"method": "norm", "max_norm": 0.5}, {"method": "value", "clip_value": 0.02},
             {"method": "norm", "max_norm": 2.0, "norm_type": "inf"}]
    cfg = make(clips, train=dict(steps=40, optimizer=dict(lr=0.2, momentum=0.9)))
    together = train_seed(cfg, 1)
    for i, c in enumerate(cfg.clipping):
        alone = train_seed(cfg, 1, [c], [i])[0]
        assert alone.run_id == together[i].run_id
        assert np.array_equal(rows(alone)[0], rows(together[i])[0], equal_nan=True)
        assert alone.first_nonfinite == together[i].first_nonfinite


def test_norm_clipping_hits_the_threshold_at_every_clipped_step():
    cfg = make([{"method": "norm", "max_norm": 0.5}], model=dict(init=dict(scheme="normal", gain=3.0)))
    m = rows(train_seed(cfg, 0)[0])[0]
    clipped = m[:, 5] == 1
    assert clipped.sum() > 5
    np.testing.assert_allclose(m[clipped, 3], 0.5, rtol=1e-5)  # clipped_norm
    np.testing.assert_array_equal(m[~clipped, 3], m[~clipped, 2])  # untouched below
    np.testing.assert_allclose(m[clipped, 4], 0.5 / (m[clipped, 2] + 1e-6), rtol=1e-6)  # clip_coef


def test_divergence_in_forward_pass_is_located_and_others_go_on():
    cfg = make([NONE, {"method": "norm", "max_norm": 1.0}],
               model=dict(depth=16, width=64, activation="relu", init=dict(scheme="he", gain=1.0)),
               task=dict(batch_size=64, input_dim=16), train=dict(steps=60, optimizer=dict(lr=0.03, momentum=0.9)))
    none, clipped = train_seed(cfg, 0)
    fn = none.first_nonfinite
    assert fn is not None and fn.phase == "forward" and fn.where.startswith("layer")
    m = rows(none)[0]
    assert len(m) == fn.step + 1 and m[-1, 7] == 1 and (m[:-1, 7] == 0).all()
    rep = none.report()
    assert rep["diverged"] and rep["divergence_step"] == fn.step and rep["steps_completed"] == fn.step
    assert clipped.first_nonfinite is None and len(rows(clipped)[0]) == 60


def test_divergence_at_init_when_activations_overflow():
    cfg = make([NONE], model=dict(depth=80, width=32, activation="relu", init=dict(scheme="he", gain=8.0)))
    fn = train_seed(cfg, 0)[0].first_nonfinite
    assert (fn.step, fn.phase) == (0, "forward") and fn.kind in ("inf", "nan")
    assert fn.where.startswith("layer") and fn.where.endswith(".linear")


def test_divergence_in_update_phase():
    cfg = make([NONE, {"method": "norm", "max_norm": 1e-30}], train=dict(optimizer=dict(lr=3e38, momentum=0.0)),
               model=dict(init=dict(scheme="normal", gain=3.0)))
    none, tiny = train_seed(cfg, 0)
    fn = none.first_nonfinite
    assert (fn.step, fn.phase, fn.kind) == (0, "update", "inf") and fn.where in none.param_names
    m = rows(none)[0]
    assert len(m) == 1 and m[0, 7] == 1 and np.isfinite(m[0, 1])  # the loss was fine; the update was not
    assert tiny.first_nonfinite is None  # lr x clipped norm stays finite


def test_nan_in_the_data_is_reported_as_data():
    model = MLP(3, 8, 4, 1, "tanh", "xavier", 1.0, "float32")
    params = stack(model.init(np.random.default_rng(0)), 2)
    x = np.ones((5, 4), np.float32)
    x[2, 1] = np.nan

    class Task:
        loss = staticmethod(lambda out, y, **_: mse(out, y))

    found = locate_step(model, Task, params, x, np.zeros((5, 1), np.float32), [0, 1])
    assert found[0] == ("forward", "data.x", "nan") and found[1] == found[0]


def test_gradient_overflow_with_finite_loss_is_located_in_backward():
    model = MLP(3, 8, 4, 1, "identity", "xavier", 1.0, "float32")
    params = stack(model.init(np.random.default_rng(0)), 1)
    params["layer1.W"] *= np.float32(1e20)  # hidden activations ~1e20
    params["layer2.W"][:] = np.float32(1e-2)
    x = np.random.default_rng(1).standard_normal((64, 4)).astype(np.float32)
    y = np.zeros((64, 1), np.float32)
    with np.errstate(all="ignore"):
        out, cache = model.forward(params, x)
        loss, dout = mse(out, y)
        assert np.isfinite(loss).all()
        found = locate_step(model, type("T", (), {"loss": staticmethod(lambda out, y, **_: mse(out, y))}), params, x, y, [0])
    assert found[0] == ("backward", "layer2.W", "inf")


def test_float64_runs_reach_inf_later_than_float32():
    """The same exploding setup overflows float32 (max 3e38) long before float64 (max 2e308)."""
    over = dict(model=dict(depth=60, width=32, activation="relu", init=dict(scheme="he", gain=4.0)),
                train=dict(steps=3))
    fn32 = train_seed(make([NONE], **over), 0)[0].first_nonfinite
    r64 = train_seed(make([NONE], **{**over, "train": dict(steps=3, dtype="float64")}), 0)[0]
    assert fn32 is not None and fn32.step == 0
    assert r64.first_nonfinite is None or r64.first_nonfinite.step > 0


# ----------------------------------------------------------------------------- recurrent
from gradlab.models.recurrent import Recurrent  # noqa: E402


def rnn_cfg(kind="rnn", clipping=(NONE,), **over):
    base = dict(name="r", model=dict(kind=kind, depth=2, width=16, init=dict(scheme="orthogonal", gain=1.0)),
                task=dict(kind="adding", seq_len=12, batch_size=8), train=dict(steps=20, optimizer=dict(lr=0.05)),
                clipping=list(clipping))
    for k, v in over.items():
        base[k] = {**base.get(k, {}), **v}
    return ExperimentConfig.model_validate(base)


def test_forward_overflow_in_a_recurrence_is_located_in_time():
    cfg = rnn_cfg(model=dict(activation="relu", depth=1, width=32, init=dict(scheme="orthogonal", gain=30.0)),
                  task=dict(kind="adding", seq_len=60, batch_size=8))
    fn = train_seed(cfg, 0)[0].first_nonfinite
    assert fn.step == 0 and fn.phase == "forward"
    assert fn.where.startswith("rnn.0.") and " @ t=" in fn.where and fn.t is not None and 10 < fn.t < 60
    assert fn.where.endswith(f"@ t={fn.t}")


def test_backward_overflow_is_located_in_time():
    """A zero input keeps the forward pass at exactly 0 (finite); a recurrent gain of 50 then
    grows dL/dh_t by 50x per step back in time until it overflows float32."""
    model = Recurrent("rnn", 1, 8, 2, 1, gain=50.0, dtype="float32")
    params = stack(model.init(np.random.default_rng(0)), 1)
    x = np.zeros((40, 4, 2), np.float32)

    class Task:
        @staticmethod
        def loss(out, y, **_):
            return np.ones(1, np.float32), np.full(out.shape, 1e10, np.float32)

    with np.errstate(all="ignore"):
        found = locate_step(model, Task, params, x, np.zeros((4, 1), np.float32), [0])
    phase, where, kind = found[0]
    assert phase == "backward" and where.startswith("rnn.0.h @ t=") and kind == "inf"
    t = int(where.split("=")[1])
    assert 20 < t < 39  # about (38 - 10) / log10(50) = 16 steps back from t = 39


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_recurrent_runs_record_gradient_flow_and_are_deterministic(kind):
    cfg = rnn_cfg(kind, clipping=[NONE, {"method": "norm", "max_norm": 0.5}])
    a, b = train_seed(cfg, 1), train_seed(cfg, 1)
    for ra, rb in zip(a, b):
        assert np.array_equal(rows(ra)[0], rows(rb)[0])
        steps = sorted({r[0] for r in ra.flow_rows})
        assert steps == [0, 19]
        layers = sorted({r[1] for r in ra.flow_rows})
        assert layers == [f"{kind}.0", f"{kind}.1"]
        assert len(ra.flow_rows) == 2 * 2 * 12 and all(r[3] >= 0 for r in ra.flow_rows)


def test_classification_tasks_log_accuracy():
    cfg = rnn_cfg("gru", task=dict(kind="temporal_order", seq_len=12, batch_size=8))
    r = train_seed(cfg, 0)[0]
    # accuracy, the held-out columns, then the loss's log Z (gradlab.records.DIAGNOSTIC_COLUMNS)
    assert r.columns[-4:] == ("accuracy", "val_loss", "val_accuracy", "logit_z")
    acc = np.array(r.metrics_rows)[:, r.columns.index("accuracy")]
    assert ((acc >= 0) & (acc <= 1)).all() and r.summary["final_accuracy"] == acc[-1]


def test_truncated_bptt_runs_and_changes_the_gradients():
    full = train_seed(rnn_cfg(), 0)[0]
    cut = train_seed(rnn_cfg(train=dict(tbptt=3)), 0)[0]
    assert rows(full)[0][0, 1] == rows(cut)[0][0, 1]  # same loss at step 0 (same forward)
    assert rows(full)[0][0, 2] != rows(cut)[0][0, 2]  # different gradient norm
    flow = np.array([r[3] for r in cut.flow_rows if r[0] == 0 and r[1] == "rnn.1"])
    assert (flow[:-3] == 0).all() and (flow[-3:] > 0).all()


@pytest.mark.parametrize("kind", ["mlp", "lstm", "gru"])
def test_a_workspace_reuses_buffers_and_changes_no_number(kind):
    """The loop's buffers are reused from step to step, give the numbers fresh arrays give,
    and without a workspace two calls never share memory."""
    from gradlab.models.workspace import Workspace

    if kind == "mlp":
        model = MLP(3, 8, 4, 2, "tanh", "xavier", 1.0, "float64")
        x = np.random.default_rng(1).standard_normal((5, 4))
        dout = np.random.default_rng(2).standard_normal((2, 5, 2))
    else:
        from gradlab.models.recurrent import Recurrent

        model = Recurrent(kind, 2, 6, 3, 2, dtype="float64")
        x = np.random.default_rng(1).standard_normal((7, 5, 3))
        dout = np.random.default_rng(2).standard_normal((2, 5, 2))
    params = stack(model.init(np.random.default_rng(0)), 2)
    ws = Workspace()
    runs = []
    for _ in range(2):
        out, cache = model.forward(params, x, ws=ws)
        grads = model.backward(params, cache, dout, ws=ws)
        runs.append((out.copy(), {k: g.copy() for k, g in grads.items()}, {k: id(g) for k, g in grads.items()}))
    fresh_out, fresh_cache = model.forward(params, x)
    fresh = model.backward(params, fresh_cache, dout)
    again = model.backward(params, model.forward(params, x)[1], dout)
    assert np.array_equal(runs[0][0], fresh_out) and np.array_equal(runs[1][0], fresh_out)
    for k in fresh:
        assert np.array_equal(runs[0][1][k], fresh[k]) and np.array_equal(runs[1][1][k], fresh[k])
        assert not np.shares_memory(fresh[k], again[k])
    if kind == "mlp":  # every gradient buffer is the same object on the second step
        assert runs[0][2] == runs[1][2]
    assert ws.nbytes > 0


def test_numbers_do_not_depend_on_the_blas_thread_count():
    """OpenBLAS sums in another order on one thread than on two (float32 products differ by
    1e-5 here): train_seed pins one thread, so `--workers`, the machine's core count and a
    notebook's BLAS settings cannot change a run's numbers."""
    from threadpoolctl import threadpool_limits

    cfg = ExperimentConfig.model_validate(dict(
        name="threads", seeds=[0],
        model=dict(kind="mlp", depth=4, width=64, activation="tanh"),
        task=dict(kind="spirals", batch_size=128),
        train=dict(steps=30, optimizer=dict(kind="sgd", lr=0.1, momentum=0.9)),
        clipping=[dict(method="none"), dict(method="norm", max_norm=1.0)]))
    runs = {}
    for n in (1, 2):
        with threadpool_limits(n, user_api="blas"):
            runs[n] = [r.metrics_rows for r in train_seed(cfg, 0)]
    assert runs[1] == runs[2]
