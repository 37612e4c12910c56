"""Lockstep across hyperparameters: variants of one stack that differ in optimizer and
schedule hyperparameters have, bit for bit, the numbers each has trained alone with its own
config (metrics, per-tensor norms, the divergence record and the final parameters), for every
optimizer and schedule kind, with a skip rule and with a variant dropped mid-run; and which
configs may share a stack at all (gradlab.config.stack_key)."""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import gradlab.train as train_module
from gradlab.config import ExperimentConfig, is_hyperparameter, load_config, stack_differences, stack_key
from gradlab.optim import SGD, Adam, AdamW, RMSprop
from gradlab.schedules import Schedule
from gradlab.transforms import apply_updates, take
from gradlab.train import train_seed

NONE, NORM = {"method": "none"}, {"method": "norm", "max_norm": 1.0}


def make(optimizer, schedule=None, clipping=(NONE, NORM), steps=16, dtype="float32", **model):
    t = dict(steps=steps, optimizer=optimizer, dtype=dtype)
    if schedule is not None:
        t["schedule"] = schedule
    return ExperimentConfig.model_validate(dict(
        name="h", model={**dict(depth=3, width=8, init=dict(scheme="normal", gain=1.5)), **model},
        task=dict(batch_size=8, input_dim=4), train=t, clipping=list(clipping)))


def train_capturing(monkeypatch, cfg, seed, clips, indices, configs=None):
    """train_seed's results and each variant's final parameters (by index; the diverged ones
    have none): the stack is looked at where the loop left it."""
    seen = {}
    order_of, stack_of = train_module.group_order, train_module._Stack

    def group_order(*a):
        seen["order"] = order_of(*a)
        return seen["order"]

    class Stack(stack_of):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            seen["stack"] = self

    monkeypatch.setattr(train_module, "group_order", group_order)
    monkeypatch.setattr(train_module, "_Stack", Stack)
    results = train_seed(cfg, seed, clips, indices, configs=configs)
    monkeypatch.undo()
    run, order = seen["stack"], seen["order"]
    final = {indices[order[int(pos)]]: {k: v[j].copy() for k, v in run.params.items()}
             for j, pos in enumerate(run.alive)}
    return results, final


def bits(rows):
    """The rows' numbers as bytes: equal bit for bit, NaNs included."""
    return np.array(rows, dtype=np.float64).tobytes()


def check_stack_equals_alone(monkeypatch, points, seed=0):
    """Every clipping variant of every point in one stack, against each trained alone."""
    clips, configs = [], []
    for p in points:
        clips += list(p.clipping)
        configs += [p] * len(p.clipping)
    indices = list(range(len(clips)))
    together, final = train_capturing(monkeypatch, points[0], seed, clips, indices, configs)
    for i, (c, p) in enumerate(zip(clips, configs)):
        (alone,), alone_final = train_capturing(monkeypatch, p, seed, [c], [0])
        r = together[i]
        assert r.variant_index == i
        assert bits(r.metrics_rows) == bits(alone.metrics_rows), i
        assert bits(r.layer_rows) == bits(alone.layer_rows), i
        assert str(r.summary) == str(alone.summary), i
        assert (r.first_nonfinite is None) == (alone.first_nonfinite is None), i
        if r.first_nonfinite is not None:
            assert r.first_nonfinite.to_dict() == alone.first_nonfinite.to_dict(), i
            assert i not in final and not alone_final
        else:
            for k, a in alone_final[0].items():
                assert a.tobytes() == final[i][k].tobytes(), (i, k)
    return together


OPTIMIZERS = {
    "sgd": [dict(kind="sgd", lr=0.05), dict(kind="sgd", lr=0.1, weight_decay=0.01),
            dict(kind="sgd", lr=0.02, weight_decay=0.001)],
    "sgd-momentum": [dict(kind="sgd", lr=0.05, momentum=0.9), dict(kind="sgd", lr=0.02),
                     dict(kind="sgd", lr=0.03, momentum=0.5, dampening=0.2, weight_decay=0.01)],
    "sgd-nesterov": [dict(kind="sgd", lr=0.05, momentum=0.9, nesterov=True),
                     dict(kind="sgd", lr=0.02, momentum=0.7, nesterov=True, weight_decay=1e-3)],
    "adam": [dict(kind="adam", lr=0.01), dict(kind="adam", lr=0.003, betas=[0.8, 0.99], eps=1e-6),
             dict(kind="adam", lr=0.02, betas=[0.95, 0.9], weight_decay=0.1)],
    "adamw-amsgrad": [dict(kind="adamw", lr=0.01, amsgrad=True),
                      dict(kind="adamw", lr=0.005, amsgrad=True, weight_decay=0.0, betas=[0.7, 0.95]),
                      dict(kind="adamw", lr=0.02, amsgrad=True, weight_decay=0.3)],
    "rmsprop": [dict(kind="rmsprop", lr=0.01), dict(kind="rmsprop", lr=0.003, alpha=0.9, momentum=0.5),
                dict(kind="rmsprop", lr=0.005, alpha=0.95, eps=1e-5, weight_decay=0.01)],
    "rmsprop-centered": [dict(kind="rmsprop", lr=0.01, centered=True, momentum=0.9),
                         dict(kind="rmsprop", lr=0.002, centered=True, alpha=0.8)],
}
SCHEDULES = {
    "constant": [None],
    "linear_warmup": [dict(kind="linear_warmup", warmup_steps=w) for w in (4, 9, 1)],
    "cosine": [dict(kind="cosine", min_lr=m) for m in (0.0, 0.001, 0.002)],
    "warmup_cosine": [dict(kind="warmup_cosine", warmup_steps=w, min_lr=m)
                      for w, m in ((3, 0.0), (6, 0.001), (0, 0.001))],
}


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("optimizer", OPTIMIZERS)
def test_a_stack_of_hyperparameters_equals_each_variant_alone(monkeypatch, optimizer, schedule):
    opts, scheds = OPTIMIZERS[optimizer], SCHEDULES[schedule]
    points = [make(o, scheds[i % len(scheds)]) for i, o in enumerate(opts)]
    together = check_stack_equals_alone(monkeypatch, points)
    # The recorded lr is each variant's own: its point's schedule from its point's lr.
    for r, p in zip(together, [p for p in points for _ in p.clipping]):
        expected = [Schedule(p.train.schedule, p.train.optimizer.lr, p.train.steps).lr(t) for t in range(p.train.steps)]
        assert [row[r.columns.index("lr")] for row in r.metrics_rows] == expected
    losses = {r.metrics_rows[-1][r.columns.index("loss")] for r in together}
    assert len(losses) == len(together)  # the hyperparameters did change the runs


def test_float64_and_a_stack_of_one_point():
    """float64 parameters, and `configs` all equal to cfg: the numbers of plain train_seed."""
    cfg = make(dict(kind="adam", lr=0.01, weight_decay=0.1), dtype="float64")
    plain = train_seed(cfg, 3)
    given_configs = train_seed(cfg, 3, configs=[cfg] * len(cfg.clipping))
    assert [r.metrics_rows for r in plain] == [r.metrics_rows for r in given_configs]


def test_with_a_skip_rule_the_stack_equals_each_alone(monkeypatch):
    """A skip leaves the variants with different step counts: the optimizer's groups then cut
    by step count as well as by hyperparameter."""
    skip = {"method": "skip", "sigma": 0.5, "window": 24}
    points = [make(dict(kind="adam", lr=lr, betas=[b, 0.999], weight_decay=wd), dict(kind="cosine", min_lr=lr / 10),
                   clipping=(NONE, skip), steps=40)
              for lr, b, wd in ((0.01, 0.9, 0.0), (0.03, 0.8, 0.01), (0.02, 0.9, 0.0))]
    together = check_stack_equals_alone(monkeypatch, points, seed=2)
    skipped = [sum(row[r.columns.index("skipped")] for row in r.metrics_rows)
               for r in together if "skipped" in r.columns]
    assert len(skipped) == 3 and all(s > 0 for s in skipped) and len(set(skipped)) > 1


@pytest.mark.parametrize("optimizer", [dict(kind="sgd", momentum=0.9), dict(kind="adam"), dict(kind="rmsprop")],
                         ids=lambda o: o["kind"])
def test_a_diverging_variant_is_dropped_with_its_hyperparameters(monkeypatch, optimizer):
    """The largest lr diverges mid-run and leaves the stack (its state and its hyperparameter
    values with it); the others go on with theirs, as alone."""
    big = 5e3 if optimizer["kind"] == "sgd" else 1e36  # an adaptive step moves each weight by about lr
    lrs = (0.01, big, 0.02) if optimizer["kind"] == "sgd" else (0.001, big, 0.003)
    points = [make({**optimizer, "lr": lr}, clipping=(NONE,), steps=30, activation="relu") for lr in lrs]
    together = check_stack_equals_alone(monkeypatch, points)
    assert [r.first_nonfinite is not None for r in together] == [False, True, False]
    assert together[1].first_nonfinite.step > 0  # mid-run, not at the first step


@settings(max_examples=15, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_any_hyperparameter_set_stacked_equals_alone(monkeypatch, data):
    kind = data.draw(st.sampled_from(["sgd", "adam", "adamw", "rmsprop"]))
    n = data.draw(st.integers(2, 4))
    lr = st.sampled_from([1e-3, 3e-3, 0.01, 0.03, 0.1])
    zero_or = lambda s: st.one_of(st.just(0.0), s)  # noqa: E731
    flags = {"sgd": {}, "adam": dict(amsgrad=data.draw(st.booleans())), "adamw": dict(amsgrad=data.draw(st.booleans())),
             "rmsprop": dict(centered=data.draw(st.booleans()))}[kind]
    nesterov = kind == "sgd" and data.draw(st.booleans())
    sched_kind = data.draw(st.sampled_from(["constant", "linear_warmup", "cosine", "warmup_cosine"]))
    steps = 16
    points = []
    for _ in range(n):
        o = dict(kind=kind, lr=data.draw(lr), **flags)
        if kind == "sgd":
            o["momentum"] = data.draw(st.floats(0.1, 0.99) if nesterov else zero_or(st.floats(0.1, 0.99)))
            o["dampening"] = 0.0 if nesterov else data.draw(zero_or(st.floats(0.01, 0.9)))
            o["nesterov"] = nesterov
        elif kind in ("adam", "adamw"):
            o["betas"] = [data.draw(st.floats(0.0, 0.99)), data.draw(st.floats(0.5, 0.9999))]
            o["eps"] = data.draw(st.sampled_from([1e-8, 1e-6, 1e-3]))
        else:
            o["alpha"] = data.draw(st.floats(0.5, 0.999))
            o["momentum"] = data.draw(zero_or(st.floats(0.1, 0.95)))
            o["eps"] = data.draw(st.sampled_from([1e-8, 1e-5]))
        o["weight_decay"] = data.draw(zero_or(st.floats(1e-4, 0.1)))
        s = dict(kind=sched_kind)
        if "warmup" in sched_kind:
            s["warmup_steps"] = data.draw(st.integers(0, steps))
        if "cosine" in sched_kind:
            s["min_lr"] = data.draw(st.sampled_from([0.0, o["lr"] / 10, o["lr"]]))
        points.append(make(o, s, steps=steps))
    check_stack_equals_alone(monkeypatch, points, seed=data.draw(st.integers(0, 3)))


def test_a_point_equals_a_plain_run_with_set(monkeypatch, tmp_path):
    """Points made as `gradlab run --set KEY=VALUE` makes its config, stacked, have the
    numbers of that run."""
    path = tmp_path / "base.yaml"
    path.write_text("name: base\nmodel: {depth: 3, width: 8}\ntask: {batch_size: 8, input_dim: 4}\n"
                    "train: {steps: 20, optimizer: {kind: sgd, lr: 0.05, momentum: 0.9}, schedule: {kind: cosine}}\n")
    sets = [["train.optimizer.lr=0.05"], ["train.optimizer.lr=0.2", "train.optimizer.momentum=0"],
            ["train.optimizer.weight_decay=0.01", "train.schedule.min_lr=0.01"]]
    points = [load_config(path, s) for s in sets]
    assert len({stack_key(p) for p in points}) == 1
    assert stack_key(load_config(path, ["train.schedule.kind=constant"])) != stack_key(points[0])
    check_stack_equals_alone(monkeypatch, points)


# ----------------------------------------------------------------------------- the optimizers
OPTIMIZER_OBJECTS = [
    (SGD, [dict(lr=0.1), dict(lr=0.01, momentum=0.9), dict(lr=0.05, momentum=0.9, dampening=0.5, weight_decay=0.1)]),
    (Adam, [dict(lr=0.01), dict(lr=0.001, betas=(0.5, 0.9), weight_decay=0.1), dict(lr=0.1, eps=1e-3)]),
    (AdamW, [dict(lr=0.01, amsgrad=True), dict(lr=0.1, weight_decay=0.0, amsgrad=True),
             dict(lr=0.003, betas=(0.0, 0.5), weight_decay=0.5, amsgrad=True)]),
    (RMSprop, [dict(lr=0.01, momentum=0.5), dict(lr=0.02, alpha=0.5), dict(lr=0.001, weight_decay=0.1, momentum=0.1)]),
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("cls, hps", OPTIMIZER_OBJECTS, ids=lambda x: getattr(x, "__name__", ""))
def test_vary_equals_each_optimizer_alone_with_per_variant_step_counts_and_a_drop(cls, hps, dtype):
    """The optimizer alone: per-variant hyperparameters, a per-variant lr, different step
    counts (after a skip) and a variant taken out of the state mid-run."""
    r = np.random.default_rng(7)
    V = len(hps)
    p0 = {"w": r.standard_normal((V, 3, 4)).astype(dtype), "b": r.standard_normal((V, 4)).astype(dtype)}
    grads = [{k: r.standard_normal(v.shape).astype(dtype) for k, v in p0.items()} for _ in range(6)]
    lrs = [r.uniform(0.001, 0.1, V) for _ in grads]
    stacked = cls(**hps[0]).vary([cls(**h) for h in hps])
    params = {k: v.copy() for k, v in p0.items()}
    state = stacked.init(params)
    assert state["hyper"]["lr"].dtype == np.float64 and state["hyper"]["lr"].shape == (V,)
    alive = np.arange(V)
    skip_at = {2: 0}  # step -> the variant whose step is skipped (no update, count kept)
    for t, g in enumerate(grads):
        if t == 4:  # variant 1 leaves the stack
            alive = np.array([0, 2])
            params, state = {k: v[[0, 2]] for k, v in params.items()}, take(state, np.array([0, 2]))
            assert state["hyper"]["lr"].shape == (2,)
        lr = lrs[t][alive] if t % 2 else None  # the optimizers' own lr on even steps
        if t in skip_at:
            state["step"][skip_at[t]] -= 1
        updates, state, stats = stacked.update({k: x[alive].copy() for k, x in g.items()}, state, params, lr=lr)
        apply_updates(params, updates)
    for j, v in enumerate(alive):
        alone = cls(**hps[v])
        one = {k: x[v:v + 1].copy() for k, x in p0.items()}
        s = alone.init(one)
        for t, g in enumerate(grads):
            if skip_at.get(t) == v:
                s["step"][0] -= 1
            u, s, _ = alone.update({k: x[v:v + 1].copy() for k, x in g.items()}, s, one,
                                   lr=float(lrs[t][v]) if t % 2 else None)
            apply_updates(one, u)
        for k in one:
            assert one[k].dtype == params[k].dtype == np.dtype(dtype)
            assert one[k][0].tobytes() == params[k][j].tobytes(), (v, k)


def test_vary_refuses_another_structure_and_keeps_shared_values_scalar():
    with pytest.raises(ValueError, match="nesterov"):
        SGD(0.1, momentum=0.9).vary([SGD(0.1, momentum=0.9), SGD(0.1, momentum=0.9, nesterov=True)])
    with pytest.raises(ValueError, match="variant 1"):
        Adam().vary([Adam(), AdamW()])
    opt = Adam(lr=0.5).vary([Adam(lr=0.01, betas=(0.8, 0.999)), Adam(lr=0.01, betas=(0.9, 0.999))])
    assert opt.lr == 0.01 and opt.beta2 == 0.999 and set(opt.varying) == {"beta1"}
    assert set(opt.init({"w": np.zeros((2, 3))})["hyper"]) == {"beta1"}
    with pytest.raises(ValueError, match="for 2 variants"):
        opt.init({"w": np.zeros((3, 3))})
    # -0.0 and 0.0 are different operands: held apart.
    assert "weight_decay" in SGD(0.1).vary([SGD(0.1, weight_decay=0.0), SGD(0.1, weight_decay=-0.0)]).varying


# ----------------------------------------------------------------------------- stack_key
def test_stack_key_groups_what_may_share_a_stack():
    base = make(dict(kind="adam", lr=0.01), dict(kind="warmup_cosine", warmup_steps=3, min_lr=0.001))
    same = [make(dict(kind="adam", lr=0.1, betas=[0.8, 0.9], eps=1e-6, weight_decay=0.1),
                 dict(kind="warmup_cosine", warmup_steps=0, min_lr=0.0)),
            make(dict(kind="adam", lr=0.01), dict(kind="warmup_cosine"), clipping=(NONE,)),
            base.model_copy(update={"name": "other", "seeds": [4, 5]})]
    other = {"model.depth": make(dict(kind="adam"), dict(kind="warmup_cosine"), depth=4),
             "task.batch_size": ExperimentConfig.model_validate({**base.model_dump(),
                                                                 "task": dict(batch_size=16, input_dim=4)}),
             "train.optimizer.kind": make(dict(kind="adamw"), dict(kind="warmup_cosine")),
             "train.optimizer.amsgrad": make(dict(kind="adam", amsgrad=True), dict(kind="warmup_cosine")),
             "train.schedule.kind": make(dict(kind="adam"), dict(kind="cosine")),
             "train.dtype": make(dict(kind="adam"), dict(kind="warmup_cosine"), dtype="float64"),
             "train.steps": make(dict(kind="adam"), dict(kind="warmup_cosine"), steps=25)}
    for c in same:
        assert stack_key(c) == stack_key(base) and hash(stack_key(c)) == hash(stack_key(base))
        assert stack_differences(base, c) == []
    for path, c in other.items():
        assert stack_key(c) != stack_key(base), path
        assert path in stack_differences(base, c), (path, stack_differences(base, c))
    assert make(dict(kind="sgd")).train.schedule.kind == "constant"  # the default schedule, left out of a dump
    assert stack_key(make(dict(kind="sgd"))) == stack_key(make(dict(kind="sgd", lr=0.3), dict(kind="constant")))


@pytest.mark.parametrize("path, yes", [
    ("train.optimizer.lr", True), ("train.optimizer.betas", True), ("train.optimizer.betas.1", True),
    ("train.optimizer.alpha", True),
    ("train.schedule.min_lr", True), ("train.schedule.warmup_steps", True), ("clipping.1.max_norm", True),
    ("train.optimizer.kind", False), ("train.optimizer.nesterov", False), ("train.schedule.kind", False),
    ("model.depth", False), ("task.batch_size", False), ("train.steps", False), ("train.lr", False),
])
def test_is_hyperparameter(path, yes):
    assert is_hyperparameter(path) is yes


def test_train_seed_refuses_configs_that_cannot_share_the_stack():
    cfg = make(dict(kind="sgd", lr=0.05))
    with pytest.raises(ValueError, match=r"configs\[1\] cannot share this stack: it differs in model.depth"):
        train_seed(cfg, 0, configs=[cfg, make(dict(kind="sgd", lr=0.05), depth=2)])
    with pytest.raises(ValueError, match="train.optimizer.kind"):
        train_seed(cfg, 0, configs=[cfg, make(dict(kind="adam"))])
    with pytest.raises(ValueError, match="1 configs for 2 clipping variants"):
        train_seed(cfg, 0, configs=[cfg])


def test_lr_is_recorded_per_variant_and_nan_free():
    a, b = (make(dict(kind="sgd", lr=lr), dict(kind="linear_warmup", warmup_steps=w))
            for lr, w in ((0.05, 0), (0.2, 5)))
    results = train_seed(a, 0, [a.clipping[0], b.clipping[0]], [0, 1], configs=[a, b])
    col = [[row[r.columns.index("lr")] for row in r.metrics_rows] for r in results]
    assert col[0] == [0.05] * 16 and col[1][:5] == [0.2 * ((t + 1) / 5) for t in range(5)] and col[1][5:] == [0.2] * 11
    assert not any(math.isnan(x) for c in col for x in c)


def test_with_loss_scaling_in_float16_the_stack_equals_each_alone(monkeypatch):
    """configs/fp16_dynamic_scaling.yaml at two learning rates and momenta: the loss scale's
    overflow skips (per variant, restored after a stacked step) keep each variant's numbers."""
    sets = [["train.optimizer.lr=0.2"], ["train.optimizer.lr=0.05", "train.optimizer.momentum=0"]]
    points = [load_config("configs/fp16_dynamic_scaling.yaml", ["train.steps=30", *s], seeds=[0]) for s in sets]
    together = check_stack_equals_alone(monkeypatch, points)
    skipped = [sum(row[r.columns.index("skipped")] for row in r.metrics_rows) for r in together]
    assert any(skipped) and len(set(skipped)) > 1


def test_loss_scale_knobs_may_differ_in_a_stack(monkeypatch):
    """The dynamic loss scale's knobs per variant: a scale that starts elsewhere, backs off
    and grows by other factors, at another interval, and collapses below another floor (1e-5,
    compared in float32 as a single run compares it: float32(1e-5) is below 1e-5)."""
    sets = [[], ["train.precision.init_scale=1024", "train.precision.growth_interval=7"],
            ["train.precision.backoff_factor=0.25", "train.precision.growth_factor=4",
             "train.precision.min_scale=1e-5"]]
    points = [load_config("configs/fp16_dynamic_scaling.yaml", ["train.steps=30", *s], seeds=[0]) for s in sets]
    assert len({stack_key(p) for p in points}) == 1
    assert stack_key(load_config("configs/fp16_dynamic_scaling.yaml", ["train.precision.clip=before_unscale"])) \
        != stack_key(points[0])
    together = check_stack_equals_alone(monkeypatch, points)
    first = [r.metrics_rows[0][r.columns.index("loss_scale")] for r in together]
    assert first == [65536.0] * 3 + [1024.0] * 3 + [65536.0] * 3  # each point's own scale


def test_a_per_variant_min_scale_is_compared_as_a_single_run_compares_it():
    """A scale of exactly float32(1e-5) has not collapsed below min_scale 1e-5 alone (NumPy
    compares a Python float with a float32 array in float32); nor in a stack whose variants'
    floors differ."""
    from gradlab.config import PrecisionConfig
    from gradlab.precision import LossScaler

    f32 = float(np.float32(1e-5))
    a = PrecisionConfig(compute="float16", loss_scale="dynamic", init_scale=2 * f32, backoff_factor=0.5,
                        min_scale=1e-5)
    b = PrecisionConfig(compute="float16", loss_scale="dynamic", init_scale=2 * f32, backoff_factor=0.5)
    alone = LossScaler(a, 1)
    stacked = LossScaler(a, 2, [a, b])
    collapsed_alone = alone.update(np.array([True]))
    collapsed = stacked.update(np.array([True, True]))
    assert alone.scale[0] == np.float32(1e-5) and stacked.scale.tolist() == [alone.scale[0]] * 2
    assert collapsed_alone.tolist() == [False] and collapsed.tolist() == [False, False]
    stacked.select(np.array([1]))
    assert stacked.min_scale.tolist() == [np.float32(2.0 ** -24)]
