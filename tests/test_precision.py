"""The compute-dtype policy (gradlab.compute): rounding bit-identical to the real casts, op
outputs equal to their float32 results rounded, float16 overflow born and located where it
would be on a GPU, and norms and clipping of low-precision gradients that stay right."""

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import gradlab
from gradlab import environment
from gradlab.compute import Policy
from gradlab.config import ExperimentConfig
from gradlab.divergence import locate_step
from gradlab.kinds import MODEL_KINDS
from gradlab.models import build_model, stack
from gradlab.models.activations import activation
from gradlab.models.layers import linear_forward
from gradlab.norms import param_norms, total_norm
from gradlab.tasks import build_task
from gradlab.train import train_seed

LOW = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}

# One of each class of float32: zeros, subnormals (smallest, largest), the normal extremes,
# values that round to each dtype's largest or overflow it, ties, infinities and NaNs of
# both signs and with payloads.
SPECIAL_BITS = np.array([
    0x00000000, 0x80000000, 0x00000001, 0x80000001, 0x007FFFFF, 0x00800000, 0x7F7FFFFF, 0xFF7FFFFF,
    0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00000, 0x7F800001, 0xFF800001, 0x7FFFFFFF, 0xFFFFFFFF,
    0x3F808000, 0x3F818000, 0x3F807FFF, 0x7F7F8000, 0x7F7F7FFF, 0x33800000, 0x33000000, 0x33000001,
    0x387FC000, 0x477FE000, 0x477FEFFF, 0x477FF000, 0xC77FF000, 0x38800000, 0x3F801000, 0x3F803000,
], dtype=np.uint32)


def _reference(a: np.ndarray, compute: str) -> np.ndarray:
    with np.errstate(all="ignore"):
        return a.astype(LOW[compute]).astype(np.float32)


def _same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return np.array_equal(a.view(np.uint32), b.view(np.uint32))


def _same_rounding(a: np.ndarray, got: np.ndarray, compute: str) -> bool:
    """Bit-identical to the cast, but that a signalling NaN (which arithmetic never makes)
    may come out quiet from the float16 rounding: there a NaN of the same sign is enough."""
    ref = _reference(a, compute)
    same = got.view(np.uint32) == ref.view(np.uint32)
    bits = a.view(np.uint32)
    signalling = np.isnan(a) & ((bits & np.uint32(0x00400000)) == 0)
    nan_alike = np.isnan(got) & np.isnan(ref) & (np.signbit(got) == np.signbit(ref))
    return bool(np.all(same | (signalling & nan_alike & (compute == "float16"))))


@pytest.mark.parametrize("compute", LOW)
def test_rounding_is_bit_identical_to_the_cast_on_every_class(compute):
    a = SPECIAL_BITS.view(np.float32)
    assert _same_rounding(a, Policy(compute).round_(a.copy()), compute)


@pytest.mark.parametrize("compute", LOW)
def test_rounding_is_bit_identical_on_a_sweep_of_all_exponents(compute):
    # Every 4099th bit pattern (a prime stride: every exponent, sign and low-bit residue).
    bits = np.arange(0, 2**32, 4099, dtype=np.uint64).astype(np.uint32)
    a = bits.view(np.float32)
    assert _same_rounding(a, Policy(compute).round_(a.copy()), compute)
    assert _same_rounding(a[::7], Policy(compute).round_(a[::7].copy()), compute)  # unchunked


@pytest.mark.slow
@pytest.mark.parametrize("compute", LOW)
def test_rounding_is_bit_identical_on_every_float32(compute):
    """All 2^32 bit patterns, in 2^24 blocks (about 10 minutes for both dtypes on 2 cores):
    no difference but the signalling NaNs' quieting in float16."""
    p = Policy(compute)
    for start in range(0, 2**32, 2**24):
        bits = np.arange(start, start + 2**24, dtype=np.uint64).astype(np.uint32)
        a = bits.view(np.float32)
        assert _same_rounding(a, p.round_(a.copy()), compute), hex(start)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=64), st.sampled_from(list(LOW)))
def test_rounding_matches_the_cast_for_any_bits(words, compute):
    a = np.array(words, dtype=np.uint32).view(np.float32)
    assert _same_rounding(a, Policy(compute).round_(a.copy()), compute)


def test_rounding_works_in_place_on_strided_views():
    a = np.random.default_rng(0).standard_normal((3, 5, 4)).astype(np.float32)
    ref = a.copy()
    ref[:, 1] = _reference(ref[:, 1], "float16")
    Policy("float16").round_(a[:, 1])
    assert _same_bits(a, ref)


def test_float32_compute_is_the_identity():
    p = Policy("float32")
    a = np.float32([1 + 2**-20, 1e30])
    params = {"w": a}
    assert p.round_(a) is a and _same_bits(a, np.float32([1 + 2**-20, 1e30]))
    assert p.weights(params) is params
    with pytest.raises(ValueError, match="compute must be one of"):
        Policy("float8")


def test_low_precision_compute_needs_float32_master_weights():
    with pytest.raises(ValueError, match="float32 master weights"):
        _model(*MODELS["mlp"], "bfloat16", dtype="float64")


def test_float16_overflow_is_inf():
    a = np.float32([65504, 65519.99, 65520, -70000, 1e-8, 3e-8])
    out = Policy("float16").round_(a.copy())
    assert out[0] == 65504 and out[1] == 65504 and np.isposinf(out[2]) and np.isneginf(out[3])
    assert out[4] == 0 and out[5] == np.float32(2**-24)  # below float16's subnormals: zero


# ------------------------------------------------------------------- ops: float32 result rounded
def _rng_f32(shape, seed=0, scale=1.0):
    return (scale * np.random.default_rng(seed).standard_normal(shape)).astype(np.float32)


@pytest.mark.parametrize("compute", LOW)
def test_linear_output_is_the_float32_product_of_rounded_inputs_rounded_once(compute):
    p = Policy(compute)
    x, W, b = _rng_f32((2, 5, 7), 0), _rng_f32((2, 7, 3), 1), _rng_f32((2, 3), 2)
    xr, Wr, br = (p.rounded(v) for v in (x, W, b))
    out = p.round_(linear_forward(xr, Wr, br))
    assert _same_bits(out, _reference(np.matmul(xr, Wr) + br[:, None, :], compute))
    assert not _same_bits(out, np.matmul(x, W) + b[:, None, :])  # the rounding did something


@pytest.mark.parametrize("name", ["tanh", "relu", "sigmoid", "gelu"])
@pytest.mark.parametrize("compute", LOW)
def test_activation_output_is_the_float32_result_rounded(name, compute):
    p = Policy(compute)
    z = p.rounded(_rng_f32((2, 4, 9), 3, 3.0))
    want = activation(name)[0](z.copy())[0].copy()
    assert _same_bits(p.round_(activation(name)[0](z.copy())[0]), _reference(want, compute))


def _model(kind_cfg, task_cfg, compute, dtype="float32", V=1, seed=1):
    cfg = ExperimentConfig.model_validate(dict(name="p", model=kind_cfg, task={**task_cfg, "batch_size": 4},
                                               train=dict(dtype=dtype)))
    task = build_task(cfg.task, dtype, np.random.default_rng(0), tokens=MODEL_KINDS[cfg.model.kind].tokens)
    model = build_model(cfg.model, task, dtype, compute=compute)
    return cfg, task, model, stack(model.init(np.random.default_rng(seed)), V)


MODELS = {
    "mlp": (dict(kind="mlp", depth=3, width=8, activation="gelu"), dict(kind="teacher", input_dim=4, output_dim=2)),
    "lstm": (dict(kind="lstm", depth=2, width=6), dict(kind="copy", seq_len=6, copy_len=2, n_symbols=3)),
    "gru": (dict(kind="gru", depth=1, width=6), dict(kind="temporal_order", seq_len=10)),
    "rnn": (dict(kind="rnn", depth=2, width=6), dict(kind="adding", seq_len=6)),
    "transformer-pre": (dict(kind="transformer", depth=2, width=8, heads=2, max_len=9),
                        dict(kind="copy", seq_len=7, copy_len=2, n_symbols=3)),
    "transformer-post-qk-tied": (dict(kind="transformer", depth=1, width=8, heads=2, norm="post", qk_norm=True,
                                      tie_embeddings=True, max_len=10), dict(kind="dyck", seq_len=10, n_types=2, depth=3)),
    "transformer-adding": (dict(kind="transformer", depth=1, width=6, heads=3), dict(kind="adding", seq_len=5)),
}


@pytest.mark.parametrize("kind", MODELS)
@pytest.mark.parametrize("compute", LOW)
def test_every_value_a_model_shows_is_in_the_compute_dtype(kind, compute):
    """Each probed value, forward and backward, and each gradient is representable in the
    compute dtype: no op boundary is missed. (Probes see every intermediate.)"""
    cfg, task, model, params = _model(*MODELS[kind], compute, V=2)
    x, y = task.batch(np.random.default_rng(5))
    seen = []
    probe = lambda name, a, where=None: seen.append((name, np.array(a)))  # noqa: E731  (a copy: buffers are reused)
    out, cache = model.forward(params, x, probe=probe)
    _, dout = task.loss(out, y)
    grads = model.backward(params, cache, dout, probe=probe)
    for name, a in seen + [("out", out)] + list(grads.items()):
        if " @ " in name and name.split(" @ ")[0] in grads:
            continue  # a locate-mode per-step contribution, summed before it is a gradient
        if name.split(" @ ")[0].rsplit(".", 1)[-1] in ("gates", "pre"):
            continue  # inside a recurrent cell, one fused op (gradlab.compute's docstring)
        assert _same_bits(a, _reference(a, compute)), name
    # ... and the numbers do differ from float32 compute.
    model32 = build_model(cfg.model, task, "float32")
    assert not np.array_equal(model32.forward(params, x)[0], out)


@pytest.mark.parametrize("model, task, steps, goldens", [
    (dict(kind="mlp", depth=4, width=16), dict(kind="teacher", input_dim=4, output_dim=2), 20,
     {"SkylakeX": [(0.09549097716808319, 1.0996633164098204), (0.09605876356363297, 1.0996633164098204)],
      "Haswell": [(0.09549097716808319, 1.0996632833800921), (0.09605877101421356, 1.0996632833800921)]}),
    (dict(kind="lstm", depth=1, width=8), dict(kind="adding", seq_len=6), 10,
     {"SkylakeX": [(0.8438870906829834, 3.344530912371206), (1.3024928569793701, 3.4317487570455456)],
      "Haswell": [(0.8438871502876282, 3.3445308143528116), (1.3024927377700806, 3.4317487679009164)]}),
    (dict(kind="transformer", depth=2, width=16, heads=2, max_len=12),
     dict(kind="copy", seq_len=10, copy_len=3, n_symbols=4), 10,
     {"SkylakeX": [(0.8669149279594421, 5.711776584918259), (1.1727311611175537, 5.711776584918259)],
      "Haswell": [(0.8669149279594421, 5.711776269655183), (1.1727311611175537, 5.711776269655183)]}),
])
def test_float32_compute_gives_todays_numbers_bit_for_bit(model, task, steps, goldens):
    """A float32-compute run is the run made before the compute policy existed: the SkylakeX
    golden final loss and largest gradient norm were measured on the commits before it
    (0a940a2; the transformer's on main at 7b00125, after its speed work). The LSTM's clipped
    norm is the one its single run gives: the golden's last digits (3.431748826519914) were a
    stacked run's, before param_norms reduced an LSTM bias gradient's strided rows as
    contiguous ones (the same gradient, summed in another order).

    The bits are the BLAS kernel's (its products sum in its own order), so each kernel has
    its goldens: the Haswell ones were recorded later (at 34945ec, under
    OPENBLAS_CORETYPE=Haswell), and guard against changes from then on. On a kernel with none
    recorded, the numbers must lie as close to every recorded kernel's as those lie to each
    other (within 1e-6 relative): the same computation, summed in another order."""
    kernel = environment.current()["blas_kernel"]
    cfg = ExperimentConfig.model_validate(dict(
        name="f32", model=model, task=task, train=dict(steps=steps), seeds=[0],
        clipping=[dict(method="none"), dict(method="norm", max_norm=1.0)]))
    runs = [(r.summary["final_loss"], r.summary["max_grad_norm"]) for r in train_seed(cfg, 0)]
    if kernel in goldens:
        assert runs == goldens[kernel]
    else:
        for golden in goldens.values():
            assert np.allclose(runs, golden, rtol=1e-6, atol=0), (kernel, runs, golden)


# ------------------------------------------------------------------- overflow, located
def test_float16_forward_overflow_is_inf_where_float32_stays_finite_and_is_located():
    big = (dict(kind="mlp", depth=3, width=8, activation="relu", init=dict(gain=100.0)),
           dict(kind="teacher", input_dim=4, output_dim=2))
    _, task, m32, params = _model(*big, "float32")
    _, _, m16, _ = _model(*big, "float16")
    x, y = task.batch(np.random.default_rng(5))
    out32, _ = m32.forward(params, x)
    out16, _ = m16.forward(params, x)
    assert np.isfinite(out32).all() and np.abs(out32).max() > 65504
    assert not np.isfinite(out16).all()
    with np.errstate(all="ignore"):  # as in the training loop, where the replay runs
        found = locate_step(m16, task, params, x, y, [0])
    assert found == {0: ("forward", "layer2.linear", "inf")}  # 4.07e5 in float32


def test_a_weight_beyond_float16s_range_is_located_by_name():
    _, task, m16, params = _model(*MODELS["mlp"], "float16")
    params["layer1.W"][0, 2, 3] = 7e4  # finite in float32, inf in the float16 copy
    x, y = task.batch(np.random.default_rng(5))
    with np.errstate(all="ignore"):
        found = locate_step(m16, task, params, x, y, [0])
    assert found == {0: ("forward", "layer1.W", "inf")}


def test_a_float16_config_trains_and_its_overflow_is_located_where_float32_trains_on():
    """train.precision.compute end to end: the same config, seed and batches diverge in
    float16 at the first step, born in the forward pass's layer2.linear, and do not in float32."""
    def run(compute):
        cfg = ExperimentConfig.model_validate(dict(
            name="f16", model=dict(kind="mlp", depth=3, width=8, activation="relu", init=dict(gain=100.0)),
            task=dict(kind="teacher", input_dim=4, output_dim=2, batch_size=4),
            train=dict(steps=2, optimizer=dict(kind="sgd", lr=1e-12), precision=dict(compute=compute)),
            seeds=[0], clipping=[dict(method="none")]))
        return train_seed(cfg, 0)[0]

    r16, r32, rbf = run("float16"), run("float32"), run("bfloat16")
    assert r32.first_nonfinite is None and rbf.first_nonfinite is None
    assert r16.first_nonfinite is not None and r16.first_nonfinite.step == 0
    assert (r16.first_nonfinite.phase, r16.first_nonfinite.where) == ("forward", "layer2.linear")
    assert rbf.summary["final_loss"] != r32.summary["final_loss"]  # bfloat16 rounds too


# ------------------------------------------------------------------- norms and clipping
@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_norms_of_low_precision_gradients_near_their_max_are_finite_and_right(dtype):
    """float16 arrays as they are; bfloat16 values as the engine holds them, in float32
    (NumPy reduces no bfloat16 array)."""
    top = float(ml_dtypes.finfo(dtype).max)
    g = np.full((1, 64), top, dtype=dtype)
    grads = {"a": g if dtype == np.float16 else g.astype(np.float32)}
    n = param_norms(grads)
    assert np.isfinite(n).all() and n[0, 0] == pytest.approx(8 * top, rel=1e-12)
    assert total_norm(n)[0] == pytest.approx(8 * top, rel=1e-12)


@pytest.mark.parametrize("dtype", [np.float16, ml_dtypes.bfloat16])
def test_clip_grad_norm_takes_and_returns_low_precision(dtype):
    grads = {"w": np.full((3, 4), 60000, dtype=dtype), "b": np.ones(5, dtype=dtype)}
    clipped, total = gradlab.clip_grad_norm(grads, 1.0)
    assert {k: v.dtype for k, v in clipped.items()} == {"w": np.dtype(dtype), "b": np.dtype(dtype)}
    want = np.sqrt(12 * float(np.asarray(grads["w"][0, 0], np.float64)) ** 2 + 5)
    assert total == pytest.approx(want, rel=1e-12)
    norm = np.sqrt(sum(float(np.sum(np.asarray(v, np.float64) ** 2)) for v in clipped.values()))
    assert norm == pytest.approx(1.0, rel=1e-2)  # within the dtype's rounding
    assert {k: v.dtype for k, v in gradlab.clip_grad_value(grads, 2.0).items()} == {"w": dtype, "b": dtype}


# ------------------------------------------------------------------- the transformer's paired ops
@pytest.mark.parametrize("compute", LOW)
def test_layer_norm_embedding_and_gelu_outputs_are_the_float32_results_rounded(compute):
    from gradlab.models.ops import embedding, layer_norm
    from gradlab.models.transformer import _gelu

    p = Policy(compute)
    x, g, b = p.rounded(_rng_f32((2, 6, 8), 1, 3.0)), p.rounded(_rng_f32((2, 8), 2)), p.rounded(_rng_f32((2, 8), 3))
    y32 = layer_norm(x, g, b)[0].copy()
    assert _same_bits(p.round_(layer_norm(x, g, b)[0]), _reference(y32, compute))
    E = p.rounded(_rng_f32((2, 5, 8), 4))
    ids = np.array([[0, 4, 2], [1, 1, 3]])
    assert _same_bits(p.round_(embedding(ids, E)), E[:, ids])  # a row of a rounded table: exact
    xs = p.rounded(_rng_f32((3, 2, 5), 5))
    e32 = embedding(xs, E).copy()
    assert _same_bits(p.round_(embedding(xs, E)), _reference(e32, compute))
    u = p.rounded(_rng_f32((2, 4, 16), 6, 4.0))
    want = _gelu(u, None, "gelu")[0].copy()
    assert _same_bits(p.round_(_gelu(u, None, "gelu")[0]), _reference(want, compute))


@pytest.mark.parametrize("compute", LOW)
def test_attention_rounds_its_logits_probabilities_and_output(compute):
    """causal_attention with the policy's rounding against the same attention written with
    casts: logits of the rounded scaled q, a float32 softmax of the rounded logits, rounded,
    times v, rounded."""
    from gradlab.models.ops import causal_attention

    p = Policy(compute)
    q, k, v = (p.rounded(_rng_f32((2, 1, 2, 5, 4), s, 2.0)) for s in (7, 8, 9))
    out = causal_attention(q, k, v, round_=p.round_)[0]
    cast = lambda a: _reference(np.asarray(a, np.float32), compute)  # noqa: E731
    qs = cast(q * np.float32(0.5))
    s = cast(qs @ k.swapaxes(-1, -2))
    s[..., ~np.tri(5, dtype=bool)] = -np.inf
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    probs = cast(e * (np.float32(1) / e.sum(axis=-1, keepdims=True, dtype=np.float32)))
    np.testing.assert_allclose(out, cast(probs @ v), rtol=2e-3 if compute == "float16" else 2e-2)
    assert _same_bits(out, cast(out))  # and in the compute dtype
