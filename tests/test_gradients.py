"""Every layer and the whole model against central finite differences, in float64,
with one variant and with a stack of several (one checker for all: gradlab.gradcheck)."""

import numpy as np
import pytest

from gradlab.gradcheck import check_gradients
from gradlab.losses import mse
from gradlab.models import MLP, stack
from gradlab.models.activations import ACTIVATIONS
from gradlab.models.layers import linear_backward, linear_forward


def rng(seed=0):
    return np.random.default_rng(seed)


@pytest.mark.parametrize("V", [1, 3])
@pytest.mark.parametrize("shared_input", [True, False])
def test_linear_layer(V, shared_input):
    r = rng(V)
    x = r.standard_normal((5, 4) if shared_input else (V, 5, 4))
    arrays = {"x": x, "W": r.standard_normal((V, 4, 3)), "b": r.standard_normal((V, 3))}
    G = r.standard_normal((V, 5, 3))  # upstream gradient: loss = sum(G * z)

    def loss():
        return float(np.sum(G * linear_forward(arrays["x"], arrays["W"], arrays["b"])))

    dx, dW, db = linear_backward(G, arrays["x"], arrays["W"])
    if shared_input:  # a shared input's gradient sums over the variants that read it
        dx = dx.sum(axis=0)
    check_gradients(loss, arrays, {"x": dx, "W": dW, "b": db})


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
@pytest.mark.parametrize("V", [1, 2])
def test_activation(name, V):
    r = rng(1)
    z = r.standard_normal((V, 6, 5)) * 2
    if name == "relu":  # keep away from the kink, where the derivative is not defined
        z = np.where(np.abs(z) < 1e-3, 0.5, z)
    fwd, back = ACTIVATIONS[name]
    G = r.standard_normal(z.shape)
    arrays = {"z": z}

    def loss():  # forward may work in place: give it a copy
        return float(np.sum(G * fwd(arrays["z"].copy())[0]))

    _, saved = fwd(z.copy())
    check_gradients(loss, arrays, {"z": back(G.copy(), saved)})


def test_activations_work_in_place_and_keep_the_dtype():
    for name, (fwd, back) in ACTIVATIONS.items():
        z = np.linspace(-3, 3, 12, dtype=np.float32).reshape(1, 3, 4)
        h, saved = fwd(z.copy())
        dz = back(np.ones_like(z), saved)
        assert h.dtype == dz.dtype == np.float32, name


def test_gelu_matches_tanh_approximation_formula():
    z = np.linspace(-5, 5, 101)
    h, _ = ACTIVATIONS["gelu"][0](z)
    ref = 0.5 * z * (1 + np.tanh(np.sqrt(2 / np.pi) * (z + 0.044715 * z**3)))
    np.testing.assert_allclose(h, ref, rtol=1e-12)


def test_sigmoid_does_not_overflow():
    h, _ = ACTIVATIONS["sigmoid"][0](np.array([-1000.0, 0.0, 1000.0], dtype=np.float32))
    np.testing.assert_allclose(h, [0.0, 0.5, 1.0])


@pytest.mark.parametrize("V", [1, 2])
def test_mse_loss(V):
    r = rng(2)
    arrays = {"out": r.standard_normal((V, 4, 3))}
    y = r.standard_normal((4, 3))

    def loss():
        return float(mse(arrays["out"].copy(), y)[0].sum())

    _, dout = mse(arrays["out"].copy(), y)
    check_gradients(loss, arrays, {"out": dout})


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("V", [1, 3])
def test_mlp_model(activation, V):
    model = MLP(depth=4, width=6, input_dim=3, output_dim=2, activation_name=activation,
                init_scheme="xavier", gain=1.0, dtype="float64")
    params = stack(model.init(rng(3)), V)
    r = rng(4)
    for k in params:  # make the variants differ, and the biases nonzero
        params[k] += 0.1 * r.standard_normal(params[k].shape)
    x, y = r.standard_normal((5, 3)), r.standard_normal((5, 2))

    def loss():
        out, _ = model.forward(params, x)
        return float(mse(out, y)[0].sum())

    out, cache = model.forward(params, x)
    grads = model.backward(params, cache, mse(out, y)[1])
    assert list(grads) == model.param_names
    check_gradients(loss, params, grads, samples=8)


def test_checker_catches_a_wrong_gradient():
    arrays = {"w": np.array([1.0, 2.0])}
    with pytest.raises(AssertionError, match=r"w\[1\]: analytic 3"):
        check_gradients(lambda: float(np.sum(arrays["w"] ** 2)), arrays, {"w": np.array([2.0, 3.0])})


@pytest.mark.parametrize("scheme", ["normal", "xavier", "he", "orthogonal"])
def test_init_scales_with_gain(scheme):
    m1 = MLP(3, 64, 64, 64, "tanh", scheme, 1.0, "float64")
    m2 = MLP(3, 64, 64, 64, "tanh", scheme, 2.5, "float64")
    w1, w2 = m1.init(rng(5))["layer1.W"], m2.init(rng(5))["layer1.W"]
    np.testing.assert_allclose(w2, 2.5 * w1)
    if scheme == "orthogonal":
        np.testing.assert_allclose(w1.T @ w1, np.eye(64), atol=1e-10)
    else:
        expected = {"normal": 1 / 8, "xavier": (2 / 128) ** 0.5, "he": (2 / 64) ** 0.5}[scheme]
        assert abs(w1.std() - expected) < 0.1 * expected


def test_stacked_variants_match_single_runs_bit_for_bit():
    """The lockstep axis is exact: variant v of a stack computes what a V=1 run computes."""
    model = MLP(5, 16, 8, 2, "tanh", "normal", 1.5, "float32")
    base = model.init(rng(6))
    params = stack(base, 3)
    r = rng(7)
    for k in params:
        params[k][1:] += np.float32(0.01) * r.standard_normal(params[k][1:].shape, dtype=np.float32)
    x = r.standard_normal((32, 8), dtype=np.float32)
    y = r.standard_normal((32, 2), dtype=np.float32)
    out, cache = model.forward(params, x)
    grads = model.backward(params, cache, mse(out, y)[1])
    for v in range(3):
        single = {k: p[v:v + 1].copy() for k, p in params.items()}
        o1, c1 = model.forward(single, x)
        g1 = model.backward(single, c1, mse(o1, y)[1])
        assert np.array_equal(o1[0], out[v])
        for k in grads:
            assert np.array_equal(g1[k][0], grads[k][v]), k


# ----------------------------------------------------------------------------- recurrent
from gradlab.models.recurrent import Recurrent  # noqa: E402


def _recurrent_check(kind, V, per_step=False, depth=2, activation="tanh", tbptt=None, T=5):
    model = Recurrent(kind, depth, 4, 3, 2, per_step=per_step, activation_name=activation,
                      gain=1.1, dtype="float64", tbptt=tbptt)
    params = stack(model.init(rng(8)), V)
    r = rng(9)
    for k in params:  # variants differ; biases nonzero
        params[k] += 0.2 * r.standard_normal(params[k].shape)
    x = r.standard_normal((T, 3, 3))
    y = r.standard_normal((V, T, 3, 2) if per_step else (V, 3, 2))
    if activation == "relu":
        x *= 3.0

    def loss():
        out, _ = model.forward(params, x)
        return float(np.sum(out * y))

    out, cache = model.forward(params, x)
    grads = model.backward(params, cache, y.copy())
    assert list(grads) == model.param_names
    return model, params, x, y, loss, grads


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("V", [1, 3])
@pytest.mark.parametrize("per_step", [False, True])
def test_recurrent_models(kind, V, per_step):
    _, params, _, _, loss, grads = _recurrent_check(kind, V, per_step)
    check_gradients(loss, params, grads, samples=10)


def test_relu_rnn():
    _, params, _, _, loss, grads = _recurrent_check("rnn", 2, activation="relu")
    check_gradients(loss, params, grads, samples=10)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_truncated_bptt_stops_gradients_at_the_boundary(kind):
    """With tbptt = K and a head on the last step, gradient reaches only the last K steps."""
    _, params, x, y, _, full = _recurrent_check(kind, 1, depth=1, T=6)
    trunc_model = Recurrent(kind, 1, 4, 3, 2, gain=1.1, dtype="float64", tbptt=2)
    out, cache = trunc_model.forward(params, x)
    trunc = trunc_model.backward(params, cache, y.copy())
    # head gradients are untouched by truncation; recurrent ones change
    np.testing.assert_allclose(trunc["head.W"], full["head.W"])
    assert not np.allclose(trunc[f"{kind}.0.W_hh"], full[f"{kind}.0.W_hh"])
    # K >= T is full BPTT
    long_model = Recurrent(kind, 1, 4, 3, 2, gain=1.1, dtype="float64", tbptt=6)
    out, cache = long_model.forward(params, x)
    np.testing.assert_allclose(long_model.backward(params, cache, y.copy())[f"{kind}.0.W_hh"], full[f"{kind}.0.W_hh"])
    norms = {}  # dL/dh_t is zero before the boundary, nonzero after it
    trunc_model.backward(params, cache, y.copy(), dh_norms=norms)
    assert norms[f"{kind}.0"].shape == (1, 6)
    assert np.all(norms[f"{kind}.0"][0, :4] == 0) and np.all(norms[f"{kind}.0"][0, 4:] > 0)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_recurrent_stacked_equals_single_bit_for_bit(kind):
    model = Recurrent(kind, 2, 8, 3, 2, dtype="float32", gain=1.2)
    params = stack(model.init(rng(10)), 3)
    r = rng(11)
    for k in params:
        params[k][1:] += np.float32(0.05) * r.standard_normal(params[k][1:].shape, dtype=np.float32)
    x = r.standard_normal((7, 4, 3), dtype=np.float32)
    dout = r.standard_normal((3, 4, 2), dtype=np.float32)
    out, cache = model.forward(params, x)
    grads = model.backward(params, cache, dout)
    for v in range(3):
        single = {k: p[v:v + 1].copy() for k, p in params.items()}
        o1, c1 = model.forward(single, x)
        g1 = model.backward(single, c1, dout[v:v + 1].copy())
        assert np.array_equal(o1[0], out[v])
        for k in grads:
            assert np.array_equal(g1[k][0], grads[k][v]), k


def test_recurrent_init_spectral_radius_is_the_gain():
    model = Recurrent("rnn", 1, 32, 3, 1, gain=1.3, dtype="float64")
    W = model.init(rng(12))["rnn.0.W_hh"]
    assert np.max(np.abs(np.linalg.eigvals(W))) == pytest.approx(1.3, rel=1e-9)
    np.testing.assert_allclose(W @ W.T, 1.69 * np.eye(32), atol=1e-10)
