"""The contract every registered model kind keeps, checked on one small case per kind (and
per variant of a kind that computes differently): a new model is added to gradlab.kinds
and gets its case here, and nothing else needs to know it.

What the rest of gradlab relies on: gradients right (finite differences, float64); variant
v of a stack computes bit for bit what a V = 1 run computes (the lockstep); the probes come
in layer order, forward and back, and name every parameter (where a divergence is located);
a reused workspace changes no number; the parameter specs cover every parameter with a
valid fan-in axis and the layer AGC groups by; the kind's memory estimate counts the
parameters the model has; gradient flow is recorded exactly when the kind says so.
"""

import numpy as np

from gradlab.norms import param_norms
import pytest

from gradlab.config import ExperimentConfig
from gradlab.config.memory import _parameter_count
from gradlab.gradcheck import check_gradients
from gradlab.kinds import MODEL_KINDS
from gradlab.models import build_model, stack
from gradlab.models.workspace import Workspace
from gradlab.tasks import build_task

CASES = {
    "mlp": (dict(kind="mlp", depth=3, width=6), dict(kind="teacher", input_dim=4, output_dim=2)),
    "rnn-tanh": (dict(kind="rnn", depth=2, width=5), dict(kind="adding", seq_len=6)),
    "rnn-relu": (dict(kind="rnn", depth=2, width=5, activation="relu"), dict(kind="adding", seq_len=6)),
    "lstm": (dict(kind="lstm", depth=2, width=4), dict(kind="copy", seq_len=7, copy_len=2, n_symbols=3)),
    "gru": (dict(kind="gru", depth=2, width=4), dict(kind="temporal_order", seq_len=10)),
    "transformer-pre": (dict(kind="transformer", depth=2, width=8, heads=2, max_len=9),
                        dict(kind="copy", seq_len=7, copy_len=2, n_symbols=3)),
    "transformer-post-qk": (dict(kind="transformer", depth=2, width=8, heads=2, norm="post", qk_norm=True,
                                 bias=False, mlp_ratio=2), dict(kind="temporal_order", seq_len=10)),
    "transformer-adding": (dict(kind="transformer", depth=1, width=6, heads=3, z_loss=0.0),
                           dict(kind="adding", seq_len=5)),
    "scalar_rnn": (dict(kind="scalar_rnn", w=5.0, b=-2.5), dict(kind="scalar_target", seq_len=6)),
}


def test_every_registered_kind_has_a_case():
    missing = set(MODEL_KINDS) - {m["kind"] for m, _ in CASES.values()}
    assert not missing, f"add a small case for {sorted(missing)} to CASES"


def build(case, dtype, V=1, tbptt=None, compute="float32"):
    """The case's config, task, model, a stack of V variants that differ (biases nonzero),
    a batch and an upstream gradient G (the loss is sum(G * out): no kink of its own)."""
    model_cfg, task_cfg = CASES[case]
    cfg = ExperimentConfig.model_validate(dict(name="c", model=model_cfg, task={**task_cfg, "batch_size": 3},
                                               train=dict(dtype=dtype, tbptt=tbptt)))
    task = build_task(cfg.task, dtype, np.random.default_rng(0), tokens=MODEL_KINDS[cfg.model.kind].tokens)
    model = build_model(cfg.model, task, dtype, cfg.train.tbptt, compute=compute)
    params = stack(model.init(np.random.default_rng(1)), V)
    r = np.random.default_rng(2)
    for k in params:
        params[k] += (0.2 * r.standard_normal(params[k].shape)).astype(dtype)
    x, _ = task.batch(np.random.default_rng(3))
    out, _ = model.forward(params, x)
    G = r.standard_normal(out.shape).astype(dtype)
    return cfg, task, model, params, x, G


@pytest.mark.parametrize("case", CASES)
def test_gradients_match_finite_differences(case):
    _, _, model, params, x, G = build(case, "float64", V=2)

    def loss():
        return float(np.sum(G * model.forward(params, x)[0]))

    grads = model.backward(params, model.forward(params, x)[1], G.copy())
    assert list(grads) == model.param_names
    check_gradients(loss, params, grads, samples=8)


@pytest.mark.parametrize("compute", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("case", CASES)
def test_stacked_variants_equal_single_runs_bit_for_bit(case, compute):
    _, _, model, params, x, G = build(case, "float32", V=3, compute=compute)
    out, cache = model.forward(params, x)
    grads = model.backward(params, cache, G.copy())
    for v in range(3):
        single = {k: p[v:v + 1].copy() for k, p in params.items()}
        o1, c1 = model.forward(single, x)
        g1 = model.backward(single, c1, G[v:v + 1].copy())
        assert np.array_equal(o1[0], out[v])
        for k in grads:
            assert np.array_equal(g1[k][0], grads[k][v]), k
        # Their norms too: a gradient laid out with the variant axis inner (an LSTM's biases)
        # once reduced along a strided row, rounded otherwise than alone.
        assert np.array_equal(param_norms(g1)[:, 0], param_norms(grads)[:, v])


def _layer_of(name, layers):
    """The layer a probe belongs to (the longest one naming it), or None for a value between
    layers (a transformer's attention logits, a residual sum), which may come in any order."""
    mine = [i for i, l in enumerate(layers) if name == l or name.startswith(l + ".")]
    return max(mine, key=lambda i: len(layers[i])) if mine else None


@pytest.mark.parametrize("case", CASES)
def test_probes_come_in_layer_order_and_name_every_parameter(case):
    """divergence.locate_step takes the first non-finite probe as the birthplace: forward
    probes must go up the layers and backward ones down, and every parameter's gradient must
    be shown under its name (or `name @ t=..`)."""
    _, _, model, params, x, G = build(case, "float32", V=2)
    layers = list(dict.fromkeys(s.layer for s in model.param_specs.values()))
    seen = {"forward": [], "backward": []}
    out, cache = model.forward(params, x, probe=lambda name, a, where=None: seen["forward"].append(name))
    model.backward(params, cache, G.copy(), probe=lambda name, a, where=None: seen["backward"].append(name))
    up = [i for i in map(lambda n: _layer_of(n, layers), seen["forward"]) if i is not None]
    down = [i for i in map(lambda n: _layer_of(n, layers), seen["backward"]) if i is not None]
    assert up == sorted(up) and set(up) == set(range(len(layers))), seen["forward"]
    assert down == sorted(down, reverse=True), seen["backward"]
    shown = {n.split(" @ ")[0] for n in seen["backward"]}
    assert set(model.param_names) <= shown, set(model.param_names) - shown


@pytest.mark.parametrize("compute", ["float32", "bfloat16"])
@pytest.mark.parametrize("case", CASES)
def test_a_reused_workspace_changes_no_number(case, compute):
    _, _, model, params, x, G = build(case, "float32", V=2, compute=compute)
    fresh = [model.backward(params, model.forward(params, x)[1], G.copy()) for _ in range(2)]
    for k in fresh[0]:
        assert not np.shares_memory(fresh[0][k], fresh[1][k]), k  # no workspace: never aliased
    ws = Workspace()
    for step in range(3):
        out, cache = model.forward(params, x, ws=ws)
        grads = model.backward(params, cache, G.copy(), ws=ws)
        assert np.array_equal(out, model.forward(params, x)[0])
        for k in grads:
            assert np.array_equal(grads[k], fresh[0][k]), (step, k)
    assert ws.nbytes > 0


@pytest.mark.parametrize("case", CASES)
def test_parameter_specs_cover_every_parameter(case):
    cfg, _, model, params, _, _ = build(case, "float32")
    specs = model.param_specs
    assert list(specs) == model.param_names == list(params)
    for name, s in specs.items():
        ndim = params[name].ndim - 1  # without the variant axis
        assert s.fan_in is None if ndim == 1 else s.fan_in in range(ndim), (name, s)
        assert s.role, name
        assert s.layer == name.rsplit(".", 1)[0], (name, s)  # AGC's `exclude` groups by this
    assert model.fan_in_axes == {n: s.fan_in for n, s in specs.items()}
    declared = MODEL_KINDS[cfg.model.kind].layers(cfg.model)  # what the schema lets `exclude` name
    assert set(declared) <= {s.layer for s in specs.values()} <= set(declared) | {"head"}


@pytest.mark.parametrize("case", CASES)
def test_the_kind_declares_what_the_model_does(case):
    cfg, task, model, params, x, G = build(case, "float32")
    kind = MODEL_KINDS[cfg.model.kind]
    assert _parameter_count(cfg) == sum(p[0].size for p in params.values())
    assert kind.sequence == task.sequence
    flow = {}
    model.backward(params, model.forward(params, x)[1], G.copy(), dh_norms=flow)
    assert bool(flow) == kind.flow
