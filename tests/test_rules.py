"""The transform rules: one contract over every registered rule, each rule against a direct
transcription of its reference on recorded gradient sequences (float64), the properties
each must keep, spike skipping in the training loop, and the CLI end to end."""

import csv
import json
import math
import statistics
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import cli
from gradlab import config as C
from gradlab.config import ExperimentConfig, variant_id
from gradlab.norms import param_norms
from gradlab.optim import Adam, SGD
from gradlab.train import _Stack, train_seed
from gradlab.transforms import Clipper, registered, rule_of

ROOT = Path(__file__).resolve().parents[1]

# An MLP's parameters (x @ W: (in, out)) and a recurrent weight in torch's (G*H, in) layout.
SHAPES = {"layer0.W": (3, 4), "layer0.b": (4,), "rnn.0.W_ih": (8, 3), "head.W": (4, 2), "head.b": (2,)}
FAN_IN = {"layer0.W": 0, "layer0.b": None, "rnn.0.W_ih": 1, "head.W": 0, "head.b": None}
SCALING = ("none", "norm", "autoclip", "zclip", "skip")


def recorded(seed: int, steps: int, V: int = 1, spikes: bool = True):
    """A sequence of gradients whose global norm wanders over orders of magnitude, with spikes."""
    r = np.random.default_rng(seed)
    out = []
    for t in range(steps):
        scale = math.exp(r.normal(0, 0.3)) * (30.0 if spikes and t % 11 == 10 else 1.0)
        out.append({k: scale * r.standard_normal((V,) + s) for k, s in SHAPES.items()})
    return out


def params_for(seed: int, V: int = 1):
    r = np.random.default_rng(1000 + seed)
    return {k: r.standard_normal((V,) + s) * 0.5 for k, s in SHAPES.items()}


def rule(**kw):
    return pydantic_rule(kw)


def pydantic_rule(kw):
    from pydantic import TypeAdapter

    return TypeAdapter(C.ClipConfig).validate_python(kw)


# Three variants of each method that share one rule instance (their group keys agree).
VARIANTS = {
    "none": [{"method": "none"}] * 3,
    "norm": [{"method": "norm", "max_norm": m} for m in (0.5, 2.0, 8.0)],
    "value": [{"method": "value", "clip_value": c} for c in (0.1, 0.5, 3.0)],
    "per_tensor": [{"method": "per_tensor", "max_norm": m} for m in (0.3, 1.0, 4.0)],
    "agc": [{"method": "agc", "clipping": c, "eps": e} for c, e in ((0.01, 0.001), (0.1, 0.01), (1.0, 0.001))],
    "autoclip": [{"method": "autoclip", "percentile": 10}, {"method": "autoclip", "percentile": 50, "history": 5},
                 {"method": "autoclip", "percentile": 100}],
    "zclip": [{"method": "zclip", "warmup": 5, "z_thresh": z, "max_norm": m} for z, m in ((1.0, None), (2.5, 1.0), (2.0, 40.0))],
    "skip": [{"method": "skip", "window": 24, "sigma": s} for s in (0.5, 2.0, 6.0)],
    "chain": [{"method": "chain", "rules": [{"method": "agc", "clipping": c}, {"method": "norm", "max_norm": m}]}
              for c, m in ((0.01, 1.0), (0.1, 3.0), (1.0, 0.5))],
}


def drive(configs, grads_seq, params, clipper=None, start=0, stop=None):
    """Run a Clipper over recorded gradients; returns (clipper, [grads after], [stats])."""
    if clipper is None:
        clipper = Clipper(configs, FAN_IN)
        clipper.init(params)
    outs, stats = [], []
    for g in grads_seq[start:stop]:
        g = {k: v.copy() for k, v in g.items()}
        stats.append(clipper(g, param_norms(g), params))
        outs.append(g)
    return clipper, outs, stats


def test_every_registered_rule_is_covered():
    assert set(registered()) == set(VARIANTS)


@pytest.mark.parametrize("method", list(VARIANTS))
def test_rule_contract(method):
    """init/update shapes, stacked == single bit for bit, state carried over a drop bit for
    bit (a stateful rule does not restart), grad_cosine in [0, 1] (1 for scaling rules)."""
    configs = [pydantic_rule(c) for c in VARIANTS[method]]
    steps, V = 24, len(configs)
    seq = recorded(1, steps, V)
    params = params_for(1, V)
    together, outs, stats = drive(configs, seq, params)
    for (sl, r), state in zip(together.groups, together.states):
        for a in _arrays(state):
            assert a.shape[0] == sl.stop - sl.start  # every state array has the variant axis first
    for s in stats:
        for name in ("grad_norm", "clipped_norm", "clip_coef", "clipped", "grad_cosine"):
            assert s[name].shape == (V,)
        cos = s["grad_cosine"]
        assert ((cos >= 0) & (cos <= 1)).all()
        if method in SCALING:
            np.testing.assert_allclose(cos, 1.0, atol=1e-6)
    for v in range(V):
        one = {k: a[v:v + 1] for k, a in params.items()}
        alone = drive([configs[v]], [{k: a[v:v + 1] for k, a in g.items()} for g in seq], one)
        for t in range(steps):
            for k in SHAPES:
                assert np.array_equal(alone[1][t][k][0], outs[t][k][v])
            for name, a in alone[2][t].items():
                assert np.array_equal(a[0], stats[t][name][v]), (t, name)
    # Drop the middle variant after half the steps: the others go on as if nothing happened.
    half = steps // 2
    part, _, _ = drive(configs, seq, params, stop=half)
    part = part.select([0, 2])
    kept = {k: a[[0, 2]] for k, a in params.items()}
    _, outs2, stats2 = drive(None, [{k: a[[0, 2]] for k, a in g.items()} for g in seq], kept, clipper=part, start=half)
    for t in range(steps - half):
        for pos, v in enumerate((0, 2)):
            for name in stats2[t]:
                assert np.array_equal(stats2[t][name][pos], stats[half + t][name][v]), (t, name)
            for k in SHAPES:
                assert np.array_equal(outs2[t][k][pos], outs[half + t][k][v])


def _arrays(node):
    if isinstance(node, dict):
        return [a for v in node.values() for a in _arrays(v)]
    return [node] if isinstance(node, np.ndarray) else []


# ----------------------------------------------------------------------------- references
def one(g):
    return {k: v[0] for k, v in g.items()}


def ref_per_tensor(g, max_norm):
    """Keras clip_by_norm per tensor: t * clip_norm / max(||t||, clip_norm)."""
    return {k: v * max_norm / max(np.linalg.norm(v), max_norm) for k, v in g.items()}


def ref_unitwise_norm(x, axis):
    """optax.unitwise_norm: vectors whole; a weight per output unit over its input axis."""
    if x.ndim <= 1 or axis is None:
        return np.broadcast_to(np.sqrt(np.sum(x * x)), x.shape)
    return np.broadcast_to(np.sqrt(np.sum(x * x, axis=axis, keepdims=True)), x.shape)


def ref_agc(g, p, clipping, eps):
    """optax.adaptive_grad_clip (transcribed; the fan-in axis given per parameter)."""
    out = {}
    for k, x in g.items():
        g_norm, p_norm = ref_unitwise_norm(x, FAN_IN[k]), ref_unitwise_norm(p[k], FAN_IN[k])
        max_norm = clipping * np.maximum(p_norm, eps)
        clipped = x * (max_norm / np.maximum(g_norm, 1e-6))
        out[k] = np.where(g_norm < max_norm, x, clipped)
    return out


def global_norm(g):
    return math.sqrt(sum(float(np.sum(v * v)) for v in g.values()))


def torch_clip(g, max_norm):
    """torch.nn.utils.clip_grad_norm_ (L2): coef = max_norm / (total + 1e-6), clamped to 1."""
    coef = min(max_norm / (global_norm(g) + 1e-6), 1.0)
    return {k: v * coef for k, v in g.items()}


def ref_autoclip(seq, percentile, history=None):
    """AutoClip's reference: append the norm, clip at np.percentile of the history."""
    hist, out = [], []
    for g in seq:
        hist.append(global_norm(g))
        h = hist if history is None else hist[-history:]
        out.append(torch_clip(g, np.percentile(h, percentile)))
    return out


class RefZClip:
    """bluorion-com/ZClip's ZClip (zscore, adaptive_scaling, clip_factor 1), on one model."""

    def __init__(self, alpha, z_thresh, max_grad_norm, warmup_steps, eps=1e-6):
        self.alpha, self.z_thresh, self.max_grad_norm = alpha, z_thresh, max_grad_norm
        self.warmup_steps, self.eps = warmup_steps, eps
        self.buffer, self.initialized, self.mean, self.var = [], False, None, None

    def step(self, g):
        total = global_norm(g)
        if not self.initialized:
            self.buffer.append(total)
            if len(self.buffer) >= self.warmup_steps:
                self.mean = sum(self.buffer) / len(self.buffer)
                self.var = sum((x - self.mean) ** 2 for x in self.buffer) / len(self.buffer)
                self.initialized, self.buffer = True, []
            return torch_clip(g, self.max_grad_norm) if self.max_grad_norm is not None else g
        std = self.var ** 0.5
        z = (total - self.mean) / (std + self.eps)
        clip_val = None
        if z > self.z_thresh:
            clip_val = self.mean + (self.z_thresh * std) / (z / self.z_thresh)
        effective = clip_val if clip_val is not None else total
        if self.max_grad_norm is not None:
            effective = min(effective, self.max_grad_norm)
        coef = effective / (total + 1e-6) if total > effective else 1.0
        x = clip_val if clip_val is not None else total
        self.mean = self.alpha * self.mean + (1 - self.alpha) * x
        self.var = self.alpha * self.var + (1 - self.alpha) * (x - self.mean) ** 2
        return {k: v * coef for k, v in g.items()}


def ref_skip(norms, sigma, window):
    """OLMo-core SkipStepOptimizer.get_step_factor on the grad norm: the last window + 1
    norms; once there are max(20, window // 2), skip unless |x - mean| / std <= sigma over
    the ones before the current (std with Bessel's correction, as torch.std_mean)."""
    hist, out = [], []
    for x in norms:
        hist.append(x)
        hist = hist[-(window + 1):]
        if len(hist) < max(20, window // 2):
            out.append(False)
            continue
        prev = hist[:-1]
        z = abs(x - statistics.fmean(prev)) / statistics.stdev(prev)
        out.append(not z <= sigma)
    return out


def close(a, b):
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-12, atol=1e-300)


@pytest.mark.parametrize("max_norm", [0.3, 1.0, 5.0])
def test_per_tensor_matches_keras_clipnorm(max_norm):
    seq = recorded(2, 20)
    _, outs, _ = drive([rule(method="per_tensor", max_norm=max_norm)], seq, params_for(2))
    for g, out in zip(seq, outs):
        close(one(out), ref_per_tensor(one(g), max_norm))


@pytest.mark.parametrize("clipping, eps", [(0.01, 0.001), (0.1, 0.001), (0.5, 0.1)])
def test_agc_matches_optax_adaptive_grad_clip(clipping, eps):
    seq, p = recorded(3, 20), params_for(3)
    _, outs, _ = drive([rule(method="agc", clipping=clipping, eps=eps)], seq, p)
    for g, out in zip(seq, outs):
        close(one(out), ref_agc(one(g), one(p), clipping, eps))


def test_agc_exclude_leaves_the_layer_alone():
    seq, p = recorded(4, 5), params_for(4)
    _, outs, _ = drive([rule(method="agc", clipping=0.001, exclude=["head"])], seq, p)
    for g, out in zip(seq, outs):
        assert np.array_equal(out["head.W"], g["head.W"]) and np.array_equal(out["head.b"], g["head.b"])
        assert not np.array_equal(out["layer0.W"], g["layer0.W"])


@pytest.mark.parametrize("percentile, history", [(10, None), (50, None), (90, 7), (100, None)])
def test_autoclip_matches_its_reference(percentile, history):
    seq = recorded(5, 40)
    _, outs, _ = drive([rule(method="autoclip", percentile=percentile, history=history)], seq, params_for(5))
    for out, ref in zip(outs, ref_autoclip([one(g) for g in seq], percentile, history)):
        close(one(out), ref)


@pytest.mark.parametrize("alpha, z_thresh, max_norm, warmup", [(0.97, 2.5, 1.0, 25), (0.9, 1.0, None, 5),
                                                                (0.5, 2.0, 30.0, 3)])
def test_zclip_matches_its_reference(alpha, z_thresh, max_norm, warmup):
    seq = recorded(6, 80)
    _, outs, _ = drive([rule(method="zclip", alpha=alpha, z_thresh=z_thresh, max_norm=max_norm, warmup=warmup)],
                       seq, params_for(6))
    ref = RefZClip(alpha, z_thresh, max_norm, warmup)
    for g, out in zip(seq, outs):
        close(one(out), ref.step(one(g)))


@pytest.mark.parametrize("sigma, window", [(2.5, 128), (2.0, 24), (0.5, 40), (1.0, 2)])
def test_skip_matches_olmo_core(sigma, window):
    seq = recorded(7, 160)
    _, outs, stats = drive([rule(method="skip", sigma=sigma, window=window)], seq, params_for(7))
    want = ref_skip([global_norm(one(g)) for g in seq], sigma, window)
    assert [bool(s["skipped"][0]) for s in stats] == want
    # The sequences have spikes to skip, once the window can hold max(20, window // 2) norms.
    assert any(want) == (window + 1 >= 20)
    for g, out in zip(seq, outs):  # the rule itself never touches the gradient
        for k in g:
            assert np.array_equal(g[k], out[k])


def test_skip_nonfinite_up_to_max_consecutive():
    """optax.apply_if_finite: a non-finite gradient is skipped unless more than
    max_consecutive came in a row; a finite one resets the count."""
    seq = recorded(8, 12, spikes=False)
    for t in (2, 3, 5, 6, 7, 8):
        seq[t]["layer0.b"][0, 0] = np.nan
    configs = [rule(method="skip", nonfinite=True, max_consecutive=3), rule(method="skip")]
    stacked = [{k: np.concatenate([v, v]) for k, v in g.items()} for g in seq]
    _, _, stats = drive(configs, stacked, params_for(8, 2))
    assert [bool(s["skipped"][0]) for s in stats] == [t in (2, 3, 5, 6, 7) for t in range(12)]
    assert not any(s["skipped"][1] for s in stats)  # without nonfinite: it diverges instead


# ----------------------------------------------------------------------------- properties
@st.composite
def grads_and_params(draw):
    seed = draw(st.integers(0, 2**32 - 1))
    scale = draw(st.sampled_from([1e-6, 1e-2, 1.0, 1e3, 1e8]))
    r = np.random.default_rng(seed)
    g = {k: scale * r.standard_normal((2,) + s) for k, s in SHAPES.items()}
    p = {k: r.standard_normal((2,) + s) * draw(st.sampled_from([1e-3, 1.0, 10.0])) for k, s in SHAPES.items()}
    return g, p


@settings(max_examples=60, deadline=None)
@given(grads_and_params(), st.floats(1e-3, 1e3))
def test_per_tensor_never_increases_a_tensors_norm(gp, max_norm):
    g, p = gp
    before = param_norms(g)
    _, (out,), _ = drive([rule(method="per_tensor", max_norm=max_norm)] * 2, [g], p)
    after = param_norms(out)
    assert (after <= before * (1 + 1e-12)).all()
    assert (after <= max_norm * (1 + 1e-12)).all()


@settings(max_examples=60, deadline=None)
@given(grads_and_params(), st.floats(1e-3, 1.0), st.booleans())
def test_agc_never_leaves_a_unit_above_clipping(gp, clipping, exclude_head):
    g, p = gp
    cfg = rule(method="agc", clipping=clipping, exclude=["head"] if exclude_head else [])
    _, (out,), _ = drive([cfg, cfg], [g], p)
    for k, x in out.items():
        if exclude_head and k.startswith("head."):
            continue
        for v in range(2):
            gn, pn = ref_unitwise_norm(x[v], FAN_IN[k]), ref_unitwise_norm(p[k][v], FAN_IN[k])
            assert (gn <= clipping * np.maximum(pn, cfg.eps) * (1 + 1e-9)).all()


@settings(max_examples=40, deadline=None)
@given(grads_and_params(), st.sampled_from(["norm", "autoclip", "zclip", "none", "value", "per_tensor", "agc"]))
def test_grad_cosine_is_the_cosine(gp, method):
    g, p = gp
    cfg = pydantic_rule(VARIANTS[method][0])
    raw = {k: v.copy() for k, v in g.items()}
    _, (out,), (stats,) = drive([cfg, cfg], [g], p)
    for v in range(2):
        a = np.concatenate([x[v].ravel() for x in raw.values()])
        b = np.concatenate([x[v].ravel() for x in out.values()])
        want = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
        assert stats["grad_cosine"][v] == pytest.approx(want, abs=1e-6)
        if method in SCALING:
            assert abs(stats["grad_cosine"][v] - 1.0) <= 1e-6


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 2**32 - 1), st.lists(st.booleans(), min_size=3, max_size=3),
       st.sampled_from(["sgd", "adam"]))
def test_skipped_steps_leave_parameters_and_optimizer_state_bit_identical(seed, mask, kind):
    r = np.random.default_rng(seed)
    p0 = {k: r.standard_normal(s) for k, s in SHAPES.items()}
    opt = SGD(0.1, momentum=0.9) if kind == "sgd" else Adam(0.01)
    run = _Stack(p0, [rule(method="none")] * 3, opt, "float64", FAN_IN)
    ref = _Stack(p0, [rule(method="none")] * 3, opt, "float64", FAN_IN)
    for t in range(3):
        g = {k: r.standard_normal((3,) + s) for k, s in SHAPES.items()}
        if t == 2:
            g["layer0.b"][0, 0] = np.nan  # a skipped non-finite gradient leaves no trace either
        skip = np.array(mask) if t == 2 else np.zeros(3, bool)
        before, state = _copy(run.params), _copy(run.state)
        run.update({k: v.copy() for k, v in g.items()}, skip)
        ref.update({k: v.copy() for k, v in g.items()})
    for v in range(3):
        now, then = (_arrays(run.params) + _arrays(run.state)), (_arrays(before) + _arrays(state))
        other = _arrays(ref.params) + _arrays(ref.state)
        for a, b, c in zip(now, then, other):
            assert np.array_equal(a[v], b[v] if mask[v] else c[v], equal_nan=True)


def _copy(node):
    if isinstance(node, dict):
        return {k: _copy(v) for k, v in node.items()}
    return node.copy() if isinstance(node, np.ndarray) else node


def test_a_skipped_adam_step_keeps_its_bias_correction():
    """After a skip, Adam's step count is per variant: the skipped one computes as if the
    skipped step never happened (as a run on its own that never saw that gradient)."""
    r = np.random.default_rng(3)
    p0 = {k: r.standard_normal(s) for k, s in SHAPES.items()}
    seq = [{k: r.standard_normal((2,) + s) for k, s in SHAPES.items()} for _ in range(5)]
    run = _Stack(p0, [rule(method="none")] * 2, Adam(0.01), "float64", FAN_IN)
    alone = _Stack(p0, [rule(method="none")], Adam(0.01), "float64", FAN_IN)
    for t, g in enumerate(seq):
        run.update({k: v.copy() for k, v in g.items()}, np.array([t == 1, False]))
        if t != 1:
            alone.update({k: v[:1].copy() for k, v in g.items()})
    assert run.state["step"].tolist() == [4, 5]
    for k in SHAPES:
        assert np.array_equal(run.params[k][0], alone.params[k][0])


# ----------------------------------------------------------------------------- the training loop
def make(clipping, steps=60, optimizer=None, **over):
    return ExperimentConfig.model_validate(dict(
        name="t", model=dict(depth=6, width=16, activation="tanh", init=dict(scheme="normal", gain=1.8)),
        task=dict(batch_size=16, input_dim=4),
        train=dict(steps=steps, optimizer=optimizer or dict(lr=0.05, momentum=0.9)), clipping=clipping, **over))


ALL = [{"method": "none"}, {"method": "per_tensor", "max_norm": 0.5}, {"method": "agc", "clipping": 0.02},
       {"method": "agc", "clipping": 0.05, "exclude": ["head"]}, {"method": "autoclip", "percentile": 20},
       {"method": "autoclip", "percentile": 50, "history": 10}, {"method": "zclip", "warmup": 10, "max_norm": None},
       {"method": "skip", "sigma": 1.0, "window": 30},
       {"method": "chain", "rules": [{"method": "agc", "clipping": 0.02}, {"method": "norm", "max_norm": 1.0}]},
       {"method": "chain", "rules": [{"method": "skip", "sigma": 1.0, "window": 30}, {"method": "zclip", "warmup": 8}]}]


@pytest.mark.parametrize("optimizer", [dict(kind="sgd", lr=0.05, momentum=0.9), dict(kind="adam", lr=0.01)],
                         ids=["sgd", "adam"])
def test_stacked_training_equals_one_variant_at_a_time(optimizer):
    cfg = make(ALL, optimizer=optimizer)
    together = train_seed(cfg, 1)
    assert any(r.summary.get("skip_fraction") for r in together)  # the skip rules did skip
    for i, c in enumerate(cfg.clipping):
        alone = train_seed(cfg, 1, [c], [i])[0]
        assert alone.run_id == together[i].run_id and alone.columns == together[i].columns
        assert np.array_equal(np.array(alone.metrics_rows, float), np.array(together[i].metrics_rows, float),
                              equal_nan=True)


def test_skipped_steps_apply_no_update_and_only_skip_rules_have_the_column():
    res = train_seed(make(ALL[:1] + ALL[7:8]), 0)
    none, skip = res
    assert "skipped" not in none.columns and "skipped" in skip.columns
    rows = [dict(zip(skip.columns, r)) for r in skip.metrics_rows]
    skipped = [r for r in rows if r["skipped"] == 1]
    assert skipped and all(r["update_norm"] == 0.0 for r in skipped)
    assert all(r["skipped"] == 0 for r in rows[:19])  # active after max(20, window // 2) norms
    assert skip.summary["skip_fraction"] == len(skipped) / len(rows)


def test_autoclip_and_zclip_thresholds_follow_from_metrics_alone():
    """From metrics.csv's grad_norm column alone, each step's threshold is recomputed and gives
    its clipped_norm."""
    cfg = make([{"method": "autoclip", "percentile": 25}, {"method": "zclip", "warmup": 10, "z_thresh": 1.5,
                                                          "max_norm": 5.0}], steps=80)
    auto, z = train_seed(cfg, 2)
    norms = [r[auto.columns.index("grad_norm")] for r in auto.metrics_rows]
    clipped = [r[auto.columns.index("clipped_norm")] for r in auto.metrics_rows]
    for t, (g, c) in enumerate(zip(norms, clipped)):
        thr = np.percentile(norms[:t + 1], 25)
        assert c == pytest.approx(g * min(thr / (g + 1e-6), 1.0), rel=1e-12)
    ref = RefZClip(0.97, 1.5, 5.0, 10)
    norms = [r[z.columns.index("grad_norm")] for r in z.metrics_rows]
    clipped = [r[z.columns.index("clipped_norm")] for r in z.metrics_rows]
    assert any(r[z.columns.index("clipped")] for r in z.metrics_rows)
    for g, c in zip(norms, clipped):
        out = ref.step({"g": np.array([g])})
        assert c == pytest.approx(float(out["g"][0]), rel=1e-12)


def test_variant_ids():
    ids = [variant_id(pydantic_rule(c)) for c in (
        {"method": "none"}, {"method": "norm", "max_norm": 1.0}, {"method": "value", "clip_value": 0.1},
        {"method": "per_tensor", "max_norm": 1.0}, {"method": "agc"}, {"method": "agc", "exclude": ["head"]},
        {"method": "autoclip"}, {"method": "autoclip", "history": 100}, {"method": "zclip"},
        {"method": "zclip", "max_norm": None}, {"method": "skip"}, {"method": "skip", "nonfinite": True},
        {"method": "chain", "rules": [{"method": "agc"}, {"method": "norm", "max_norm": 1.0}]})]
    assert ids == ["none", "norm-1", "value-0.1", "per_tensor-1", "agc-0.01", "agc-0.01-xhead", "autoclip-p10",
                   "autoclip-p10-h100", "zclip-2.5", "zclip-2.5-nocap", "skip-6", "skip-6-nonfinite",
                   "chain-agc-0.01+norm-1"]


def test_the_engine_does_not_import_the_schema():
    import subprocess
    import sys

    code = ("import sys; import gradlab.transforms, gradlab.clipping, gradlab.skipping, gradlab.optim; "
            "sys.exit('pydantic' in sys.modules or 'gradlab.config' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT).returncode == 0


def test_a_chain_cannot_hold_two_rules_that_turn_the_gradient():
    with pytest.raises(ValueError, match="at most one"):
        rule_of("chain")([type("C", (), {"rules": [pydantic_rule({"method": "agc"}),
                                                   pydantic_rule({"method": "value", "clip_value": 1.0})]})()])


# ----------------------------------------------------------------------------- the CLI
def test_adaptive_rules_config_runs_from_the_cli(tmp_path, capsys):
    out = tmp_path / "out"
    assert cli("run", ROOT / "configs" / "adaptive_rules.yaml", "--set", "train.steps=40", "--seeds", "0", "--out", out,
               "--quiet", "--no-plots") == 0
    (exp,) = [d for d in out.iterdir() if d.is_dir()]
    summary = {r["run_id"]: r for r in json.loads((exp / "summary.json").read_text())}
    assert {"agc-0.01-xhead-s0", "autoclip-p10-s0", "zclip-2.5-s0", "skip-6-w32-nonfinite-s0",
            "chain-agc-0.01+norm-1-s0", "per_tensor-0.25-s0"} <= set(summary)
    for rid, rep in summary.items():
        with open(exp / "runs" / rid / "metrics.csv") as fh:
            header = next(csv.reader(fh))
        assert "grad_cosine" in header and ("skipped" in header) == rid.startswith("skip-")
        assert ("skip_fraction" in rep) == rid.startswith("skip-")
        assert "mean_grad_cosine" in rep
    assert summary["autoclip-p10-s0"]["mean_grad_cosine"] == pytest.approx(1.0, abs=1e-12)
    assert summary["agc-0.01-xhead-s0"]["mean_grad_cosine"] < 1.0
    assert "| clip fraction | grad cosine |" in (exp / "report.md").read_text()
    # The run store checks report.json against its metrics.csv, the new fields too: a second
    # run finds every run complete but the one whose mean_grad_cosine was edited.
    edited = json.loads((exp / "runs" / "autoclip-p10-s0" / "report.json").read_text())
    edited["mean_grad_cosine"] = 0.5
    (exp / "runs" / "autoclip-p10-s0" / "report.json").write_text(json.dumps(edited))
    capsys.readouterr()
    assert cli("run", ROOT / "configs" / "adaptive_rules.yaml", "--set", "train.steps=40", "--seeds", "0", "--out", out,
               "--quiet", "--no-plots") == 0
    err = capsys.readouterr().err
    assert "run autoclip-p10-s0: its files are damaged" in err and "`mean_grad_cosine`" in err
    assert err.count("its files are damaged") == 1


def test_sweep_varies_each_rules_main_knob(tmp_path):
    out = tmp_path / "out"
    assert cli("sweep", ROOT / "configs" / "quickstart.yaml", "--method", "agc", "--thresholds", "0.1,0.01",
               "--set", "train.steps=5", "--seeds", "0", "--out", out, "--quiet", "--no-plots") == 0
    (exp,) = [d for d in out.iterdir() if d.is_dir()]
    summary = json.loads((exp / "summary.json").read_text())
    assert [(r["run_id"], r["threshold"]) for r in summary] == [("none-s0", None), ("agc-0.01-s0", 0.01),
                                                                ("agc-0.1-s0", 0.1)]
    report = (exp / "report.md").read_text()
    assert "| 0.01 | ok " in report and "| 0.1 | ok " in report  # the threshold x seed table
    cfg = ExperimentConfig.model_validate(dict(name="s", sweep=dict(method="zclip", thresholds=[3, 1.5])))
    assert [variant_id(c) for c in cfg.clipping] == ["none", "zclip-1.5", "zclip-3"]


def test_a_sweep_threshold_outside_the_knobs_range_names_the_option(tmp_path, capsys):
    assert cli("sweep", ROOT / "configs" / "quickstart.yaml", "--method", "autoclip", "--thresholds", "5,150",
               "--out", tmp_path / "out") == 2
    assert "--thresholds: clipping.2.percentile: must be <= 100, got 150.0" in capsys.readouterr().err


def test_stateful_rules_go_on_bit_for_bit_after_a_neighbour_diverges():
    """The quickstart's unclipped run diverges within 8 steps and is dropped from the stack;
    the stateful rules beside it keep their history (sliced, not rebuilt): each equals its run
    alone."""
    from gradlab.config import load_config

    cfg = load_config(ROOT / "configs" / "quickstart.yaml", overrides=[
        "train.steps=40", "clipping=[{method: none}, {method: autoclip, percentile: 20}, {method: zclip, warmup: 3},"
        " {method: skip, window: 24, sigma: 1.0}, {method: chain, rules: [{method: skip, window: 24},"
        " {method: autoclip}]}]"], seeds=[0])
    together = train_seed(cfg, 0)
    assert together[0].first_nonfinite is not None and together[0].first_nonfinite.step < 20
    assert together[1].first_nonfinite is None and together[1].steps == 40
    for i, c in enumerate(cfg.clipping[1:], start=1):
        alone = train_seed(cfg, 0, [c], [i])[0]
        assert alone.first_nonfinite == together[i].first_nonfinite
        assert np.array_equal(np.array(alone.metrics_rows, float), np.array(together[i].metrics_rows, float),
                              equal_nan=True), alone.run_id


def test_findings_name_the_skipped_fraction():
    from gradlab.report import findings

    rep = {"variant": "skip-6", "diverged": False, "steps": 100, "final_loss": 0.5, "clip_fraction": 0.0,
           "skip_fraction": 0.04, "run_id": "skip-6-s0", "seed": 0}
    assert findings([rep]) == "`skip-6` trained 100 steps in 1 of 1 seed, final loss 0.5, clipping 0% of steps, skipping 4%."
