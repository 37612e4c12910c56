"""The transformer's paired ops (gradlab.models.ops) and the softmax cross-entropy's z-loss:
gradients against finite differences, a stack of variants against each variant alone, the
causal softmax's edge cases, and the divergence locator's view of the causal mask."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from gradlab.divergence import Locator
from gradlab.gradcheck import check_gradients
from gradlab.losses import softmax_cross_entropy
from gradlab.models.ops import (causal_attention, causal_attention_backward, causal_masks, embedding,
                                embedding_backward, layer_norm, layer_norm_backward)
from gradlab.models.workspace import Workspace


def rng(seed):
    return np.random.default_rng(seed)


def gsum(G, out):
    return float(np.sum(G * out))


# ----------------------------------------------------------------------------- finite differences

@pytest.mark.parametrize("V", [1, 3])
@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_gradient(V, bias):
    r = rng(V)
    arrays = {"x": 2 * r.standard_normal((V, 3, 4, 5)) + 1, "g": 1 + r.standard_normal((V, 5))}
    if bias:
        arrays["b"] = r.standard_normal((V, 5))
    G = r.standard_normal((V, 3, 4, 5))

    def run():
        return layer_norm(arrays["x"], arrays["g"], arrays.get("b"))

    y, cache = run()
    dx, dg, db = layer_norm_backward(G.copy(), cache)
    grads = {"x": dx, "g": dg}
    if bias:
        grads["b"] = db
    else:
        assert db is None
    check_gradients(lambda: gsum(G, run()[0]), arrays, grads, samples=30)


def attention_arrays(r, V, B, H, T, dh):
    return {n: r.standard_normal((V, B, H, T, dh)) for n in "qkv"}


@pytest.mark.parametrize("V", [1, 3])
@pytest.mark.parametrize("T", [1, 5])
def test_attention_gradient(V, T):
    r = rng(10 + V + T)
    arrays = attention_arrays(r, V, 2, 2, T, 3)
    G = r.standard_normal((V, 2, 2, T, 3))

    def run():
        return causal_attention(arrays["q"], arrays["k"], arrays["v"])

    out, cache, _ = run()
    dq, dk, dv = causal_attention_backward(G.copy(), cache)
    check_gradients(lambda: gsum(G, run()[0]), arrays, {"q": dq, "k": dk, "v": dv}, samples=30)


@pytest.mark.parametrize("V", [1, 3])
@pytest.mark.parametrize("ids", [True, False])
def test_embedding_gradient(V, ids):
    r = rng(20 + V)
    n, D = 6, 4
    x = r.integers(0, n - 1, (3, 5)) if ids else r.standard_normal((3, 5, n))  # ids leave a row unused
    arrays = {"E": r.standard_normal((V, n, D))}
    G = r.standard_normal((V, 3, 5, D))
    dE = embedding_backward(G.copy(), x, n)
    check_gradients(lambda: gsum(G, embedding(x, arrays["E"])), arrays, {"E": dE}, samples=40)


@pytest.mark.parametrize("V", [1, 3])
@pytest.mark.parametrize("z_loss", [0.0, 0.3])
def test_cross_entropy_gradient_with_and_without_z_loss(V, z_loss):
    r = rng(30 + V)
    arrays = {"logits": 3 * r.standard_normal((V, 4, 3, 5)) + 2}  # per position: (V, T, B, C)
    labels = r.integers(0, 5, (4, 3))
    w = r.standard_normal(V)

    def run():
        loss, grad = softmax_cross_entropy(arrays["logits"], labels, z_loss=z_loss)
        return float(w @ loss), grad * w[:, None, None, None]

    check_gradients(lambda: run()[0], arrays, {"logits": run()[1]}, samples=40)


def test_z_loss_value_and_logit_z_stat():
    r = rng(3)
    logits = r.standard_normal((2, 4, 3, 5)) + 1.5
    labels = r.integers(0, 5, (4, 3))
    stats = {}
    loss, _ = softmax_cross_entropy(logits, labels, z_loss=0.1, stats=stats)
    base, _ = softmax_cross_entropy(logits, labels)
    log_z = np.log(np.exp(logits).sum(-1))
    np.testing.assert_allclose(loss, base + 0.1 * (log_z ** 2).mean(axis=(1, 2)), rtol=1e-12)
    assert stats["logit_z"].dtype == np.float64
    np.testing.assert_allclose(stats["logit_z"], log_z.mean(axis=(1, 2)), rtol=1e-12)


def test_z_loss_zero_is_bit_for_bit_the_plain_loss_and_stats_change_nothing():
    r = rng(4)
    logits = r.standard_normal((3, 6, 7)).astype(np.float32)
    labels = r.integers(0, 7, 6)
    stats = {}
    a = softmax_cross_entropy(logits, labels)
    b = softmax_cross_entropy(logits, labels, z_loss=0.0, stats=stats)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert stats["logit_z"].shape == (3,)
    # the one-hot form the loss had before: (softmax - onehot) / N
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    p -= np.eye(7, dtype=np.float32)[labels]
    p *= np.float32(1 / 6)
    np.testing.assert_array_equal(a[1], p)


def test_z_loss_keeps_float32():
    logits = rng(5).standard_normal((2, 3, 4)).astype(np.float32)
    loss, grad = softmax_cross_entropy(logits, np.zeros(3, dtype=np.int64), z_loss=1e-4)
    assert loss.dtype == np.float32 and grad.dtype == np.float32


# ----------------------------------------------------------------------------- stacked == single

def check_stacked(run, inputs, shared=()):
    """run(**inputs) on a V=3 stack equals run on each variant alone, bit for bit, for every
    output; and a Workspace reused from a call on other numbers changes none of them."""
    stacked = run(**inputs)
    for v in range(3):
        alone = run(**{k: (a if k in shared else a[v:v + 1]) for k, a in inputs.items()})
        for s, a in zip(stacked, alone):
            if s is not None:
                np.testing.assert_array_equal(s[v:v + 1], a)
    ws = Workspace()
    run(**{k: (a if k in shared else a[::-1].copy()) for k, a in inputs.items()}, ws=ws)
    again = run(**inputs, ws=ws)
    for s, a in zip(stacked, again):
        if s is not None:
            np.testing.assert_array_equal(s, a)


def f32(r, *shape):
    return r.standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("bias", [True, False])
def test_layer_norm_stacked_equals_single(bias):
    r = rng(40)

    def run(x, g, G, b=None, ws=None):
        y, cache = layer_norm(x, g, b, ws=ws)
        y = y.copy()
        dx, dg, db = layer_norm_backward(G.copy(), cache, ws=ws)
        assert y.dtype == dx.dtype == dg.dtype == np.float32
        return y, dx.copy(), dg.copy(), None if db is None else db.copy()

    inputs = {"x": f32(r, 3, 4, 6, 16), "g": f32(r, 3, 16), "G": f32(r, 3, 4, 6, 16)}
    if bias:
        inputs["b"] = f32(r, 3, 16)
    check_stacked(run, inputs)


def test_attention_stacked_equals_single():
    r = rng(41)

    def run(q, k, v, G, ws=None):
        out, cache, stats = causal_attention(q, k, v, ws=ws)
        out = out.copy()
        dq, dk, dv = causal_attention_backward(G.copy(), cache, ws=ws)
        assert out.dtype == dq.dtype == np.float32
        return out, dq.copy(), dk.copy(), dv.copy(), stats["max_logit"], stats["entropy"]

    check_stacked(run, {n: f32(r, 3, 2, 4, 7, 8) for n in ("q", "k", "v", "G")})


@pytest.mark.parametrize("ids", [True, False])
def test_embedding_stacked_equals_single(ids):
    r = rng(42)
    x = r.integers(0, 9, (4, 6)) if ids else f32(r, 4, 6, 10)

    def run(E, G, x, ws=None):
        y = embedding(x, E, ws=ws).copy()
        return y, embedding_backward(G.copy(), x, 10, ws=ws).copy()

    check_stacked(run, {"E": f32(r, 3, 10, 8), "G": f32(r, 3, 4, 6, 8), "x": x}, shared=("x",))


@pytest.mark.parametrize("z_loss", [0.0, 1e-3])
def test_cross_entropy_stacked_equals_single(z_loss):
    r = rng(43)
    labels = r.integers(0, 11, (5, 4))

    def run(logits, ws=None):
        stats = {}
        loss, grad = softmax_cross_entropy(logits, labels, z_loss=z_loss, stats=stats)
        return loss, grad, stats["logit_z"]

    check_stacked(run, {"logits": 3 * f32(r, 3, 5, 4, 11)})


def test_embedding_backward_is_repeatable_and_sums_repeated_ids():
    r = rng(44)
    x = np.array([[3, 1, 3], [3, 0, 1]])
    G = f32(r, 2, 2, 3, 5)
    dE = embedding_backward(G.copy(), x, 6)
    np.testing.assert_array_equal(dE, embedding_backward(G.copy(), x, 6))
    np.testing.assert_allclose(dE[:, 3], G[:, 0, 0] + G[:, 0, 2] + G[:, 1, 0], rtol=1e-6)
    np.testing.assert_array_equal(dE[:, [2, 4, 5]], 0.0)


def test_embedding_rejects_out_of_range_ids():
    with pytest.raises(IndexError, match="token ids"):
        embedding(np.array([[0, 4]]), np.zeros((1, 4, 2)))


def test_attention_reads_strided_views_of_a_packed_qkv():
    """q, k, v as views of one (V, B, T, 3, H, dh) tensor, as a fused projection gives them."""
    r = rng(45)
    qkv = f32(r, 2, 3, 6, 3, 4, 5)
    q, k, v = (qkv[:, :, :, i].transpose(0, 1, 3, 2, 4) for i in range(3))
    G = f32(r, 2, 3, 4, 6, 5)
    out, cache, _ = causal_attention(q, k, v)
    grads = causal_attention_backward(G.copy(), cache)
    c_out, c_cache, _ = causal_attention(*(np.ascontiguousarray(a) for a in (q, k, v)))
    np.testing.assert_allclose(out, c_out, rtol=1e-6, atol=1e-6)
    for a, b in zip(grads, causal_attention_backward(G.copy(), c_cache)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_attention_copies_inputs_matmul_cannot_read_in_place():
    """k and v with a non-unit stride on their last axis go through reused contiguous copies:
    the same numbers as from contiguous inputs, with or without a workspace."""
    r = rng(46)
    q, k, v = (f32(r, 2, 3, 4, 6, 5) for _ in range(3))
    G = f32(r, 2, 3, 4, 6, 5)
    ks, vs = (np.ascontiguousarray(a.swapaxes(-1, -2)).swapaxes(-1, -2) for a in (k, v))
    assert ks.strides[-1] != ks.itemsize
    out, cache, _ = causal_attention(q, k, v)
    grads = causal_attention_backward(G.copy(), cache)
    ws = Workspace()
    for _ in range(2):
        s_out, s_cache, _ = causal_attention(q, ks, vs, ws=ws)
        np.testing.assert_array_equal(s_out, out)
        for a, b in zip(causal_attention_backward(G.copy(), s_cache, ws=ws), grads):
            np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------- the causal softmax

def reference_softmax(q, k):
    s = q @ k.swapaxes(-1, -2) / np.sqrt(q.shape[-1])
    allowed = np.tri(q.shape[-2], dtype=bool)
    s = np.where(allowed, s, -np.inf)
    p = np.exp(s - s.max(-1, keepdims=True))
    return s, p / p.sum(-1, keepdims=True), allowed


def test_masked_entries_get_zero_probability_and_rows_sum_to_one():
    r = rng(50)
    q, k, v = (r.standard_normal((2, 3, 2, 6, 4)) for _ in range(3))
    probes = {}
    causal_attention(q, k, v, probe=lambda name, a, where=None: probes.setdefault(name, (a.copy(), where)))
    p = probes["attn.softmax"][0]
    assert (p[..., ~np.tri(6, dtype=bool)] == 0.0).all()
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-12)
    np.testing.assert_allclose(p, reference_softmax(q, k)[1], rtol=1e-12)
    s, allowed = probes["attn.logits"]
    assert (s[..., ~allowed] == -np.inf).all() and np.isfinite(s[..., allowed]).all()
    assert list(probes) == ["attn.logits", "attn.softmax", "attn.out"]


def test_stats_match_a_direct_computation():
    r = rng(51)
    q, k, v = (r.standard_normal((3, 2, 2, 7, 4)) for _ in range(3))
    q[1] *= 10.0  # one variant sharper than the others
    _, _, stats = causal_attention(q, k, v)
    s, p, allowed = reference_softmax(q, k)
    max_logit = np.abs(np.where(allowed, s, 0.0)).max(axis=(1, 2, 3, 4))
    with np.errstate(divide="ignore", invalid="ignore"):
        plogp = np.where(p > 0, p * np.log(p), 0.0)
    entropy = -plogp.sum(-1).mean(axis=(1, 2, 3))
    assert stats["max_logit"].dtype == stats["entropy"].dtype == np.float64
    np.testing.assert_allclose(stats["max_logit"], max_logit, rtol=1e-12)
    np.testing.assert_allclose(stats["entropy"], entropy, rtol=1e-10)
    assert stats["entropy"][1] < stats["entropy"][0]


def test_a_uniform_row_has_log_n_entropy():
    q = np.zeros((1, 1, 1, 4, 2))
    k = np.ones((1, 1, 1, 4, 2))
    _, _, stats = causal_attention(q, k, k)
    np.testing.assert_allclose(stats["entropy"], np.mean(np.log([1, 2, 3, 4])), rtol=1e-12)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_huge_finite_logits_give_a_finite_softmax(dtype):
    r = rng(52)
    q, k, v = (r.standard_normal((1, 1, 2, 5, 3)).astype(dtype) for _ in range(3))
    scale = 1e30 if dtype == "float64" else 1e18  # logits ~1e30 / ~1e18: far beyond exp's range
    with np.errstate(all="raise"):
        out, cache, stats = causal_attention(q * scale, k, v)
        dq, dk, dv = causal_attention_backward(np.ones_like(out), cache)
    for a in (out, dq, dk, dv, stats["max_logit"], stats["entropy"]):
        assert np.isfinite(a).all()
    assert stats["max_logit"][0] > 1e17
    p = cache["p"]
    assert ((p == 0.0) | (p == 1.0)).all() and (p.sum(-1) == 1.0).all()  # one-hot rows: the argmax


def test_logits_past_the_float32_range_keep_the_softmax_and_the_stats_finite():
    """s - max overflows to -inf at an unmasked entry: p is 0 there, as torch's, and so is its
    share of the entropy."""
    q = np.full((1, 1, 1, 2, 1), 2e38, dtype=np.float32)
    k = np.array([-1.0, 1.0], dtype=np.float32).reshape(1, 1, 1, 2, 1)  # query 1's logits: -2e38, 2e38
    out, cache, stats = causal_attention(q, k, k)
    assert np.isfinite(out).all() and np.isfinite(stats["entropy"]).all()
    assert stats["entropy"][0] == 0.0


@settings(max_examples=25, deadline=None, derandomize=True)
@given(V=st.integers(1, 3), B=st.integers(1, 3), H=st.integers(1, 3), T=st.integers(1, 9),
       dh=st.integers(1, 6), spread=st.floats(0.0, 30.0), seed=st.integers(0, 2 ** 16))
def test_attention_rows_are_causal_distributions(V, B, H, T, dh, spread, seed):
    r = rng(seed)
    q, k, v = (spread * r.standard_normal((V, B, H, T, dh)).astype(np.float32) for _ in range(3))
    _, cache, stats = causal_attention(q, k, v)
    p = cache["p"]
    assert (p[..., ~causal_masks(T)[0]] == 0.0).all()
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-5)
    assert (stats["entropy"] >= -1e-5).all() and (stats["entropy"] <= np.log(T) + 1e-5).all()


@settings(max_examples=25, deadline=None, derandomize=True)
@given(shape=st.lists(st.integers(1, 4), min_size=1, max_size=3), D=st.integers(2, 40),
       shift=st.floats(-100.0, 100.0), seed=st.integers(0, 2 ** 16))
def test_layer_norm_rows_have_mean_zero_and_unit_variance(shape, D, shift, seed):
    r = rng(seed)
    x = shift + r.standard_normal((2, *shape, D))
    y, _ = layer_norm(x, np.ones((2, D)), np.zeros((2, D)), eps=0.0)
    np.testing.assert_allclose(y.mean(-1), 0.0, atol=1e-9)
    np.testing.assert_allclose(y.var(-1), 1.0, rtol=1e-9)


# ----------------------------------------------------------------------------- the locator

def test_locator_ignores_masked_entries_but_reports_unmasked_ones():
    loc = Locator([0, 1, 2])
    allowed = np.tri(3, dtype=bool)
    s = np.where(allowed, 1.0, -np.inf)[None].repeat(3, 0)
    loc.see("forward", "attn.logits", s, where=allowed)
    assert loc.found == {}
    s[1, 0, 0] = np.inf
    s[2, 2, 1] = np.nan
    loc.see("forward", "attn.logits", s, where=allowed)
    assert loc.found == {1: ("forward", "attn.logits", "inf"), 2: ("forward", "attn.logits", "nan")}
    loc.see("forward", "later", s)  # unmasked: variant 0's -inf counts now
    assert loc.found[0] == ("forward", "later", "inf")


def test_locator_takes_a_mask_with_the_variant_axis():
    loc = Locator([0, 1])
    a = np.array([[np.inf, 1.0], [np.inf, 1.0]])
    loc.see("forward", "x", a, where=np.array([[False, True], [True, True]]))
    assert loc.found == {1: ("forward", "x", "inf")}


def test_the_attention_probe_names_the_logits_of_the_diverged_variant():
    r = rng(60)
    q, k, v = (r.standard_normal((3, 2, 2, 4, 3)).astype(np.float32) for _ in range(3))
    q[1, 0, 1, 2] = 1e38  # overflows q k^T in float32 at an unmasked entry
    k[1] = np.abs(k[1]) + 10.0
    q[2, 1, 0, 3, 0] = np.nan
    loc = Locator([0, 1, 2])
    with np.errstate(all="ignore"):
        causal_attention(q, k, v, probe=loc.probe("forward"), name="block0.attn")
    assert loc.found == {1: ("forward", "block0.attn.logits", "inf"),
                         2: ("forward", "block0.attn.logits", "nan")}


def test_two_argument_probes_still_work():
    loc = Locator([0])
    loc.probe("backward")("x", np.array([[np.nan]]))
    assert loc.found == {0: ("backward", "x", "nan")}
