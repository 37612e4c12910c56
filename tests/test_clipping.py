"""Clipping against its definition: property tests (hypothesis) and the edge cases."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from gradlab import clip_grad_norm, clip_grad_value
from gradlab.transforms import Clipper, group_order
from gradlab.config import ClipNone, ClipNorm, ClipValue
from gradlab.norms import param_norms, total_norm

finite = st.floats(-1e6, 1e6, allow_nan=False, width=64)
shapes = st.tuples(st.integers(1, 4), st.integers(1, 5))


@st.composite
def grad_dicts(draw, dtype=np.float64, elements=finite):
    n = draw(st.integers(1, 4))
    return {f"p{i}": draw(arrays(dtype, draw(shapes), elements=elements)) for i in range(n)}


def flat(g):
    return np.concatenate([np.asarray(v, np.float64).ravel() for v in g.values()])


def ref_norm(g, p):
    """The p-norm of everything concatenated, scaled by the largest entry so that the
    reference itself neither overflows nor underflows."""
    v = np.abs(flat(g))
    m = float(v.max()) if v.size else 0.0
    if m == 0.0 or math.isinf(p):
        return m
    return m * float(np.sum((v / m) ** p) ** (1 / p))


norm_types = st.sampled_from([1.0, 1.5, 2.0, 3.0, math.inf])


@settings(max_examples=200, deadline=None)
@given(grad_dicts(), st.floats(1e-2, 1e3), norm_types)
def test_norm_clipping_definition(g, max_norm, p):
    before = {k: v.copy() for k, v in g.items()}
    clipped, total = clip_grad_norm(g, max_norm, norm_type=p, eps=0.0)
    for k in g:  # inputs are never mutated, dtypes kept
        assert np.array_equal(g[k], before[k]) and clipped[k].dtype == g[k].dtype
    assert total == pytest.approx(ref_norm(g, p), rel=1e-9, abs=1e-300)
    a, b = flat(g), flat(clipped)
    if total > max_norm:
        assert ref_norm(clipped, p) == pytest.approx(max_norm, rel=1e-9)  # the threshold, exactly
        cos = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
        assert cos == pytest.approx(1.0, abs=1e-12)  # direction preserved
    else:
        assert np.array_equal(a, b)  # below the threshold: untouched, bit for bit
    assert np.all(b[a == 0] == 0)  # zeros stay zeros


@settings(max_examples=100, deadline=None)
@given(grad_dicts(np.float32, st.floats(float(np.float32(-3.4e38)), float(np.float32(3.4e38)), allow_nan=False, allow_infinity=False, width=32)), st.floats(1e-2, 1e3))
def test_float32_norm_never_overflows(g, max_norm):
    clipped, total = clip_grad_norm(g, max_norm)
    assert math.isfinite(total)
    assert total == pytest.approx(ref_norm(g, 2.0), rel=1e-5)
    if total > max_norm:
        assert ref_norm(clipped, 2.0) == pytest.approx(max_norm * total / (total + 1e-6), rel=1e-5)


def test_huge_float32_gradient_is_scaled_to_the_threshold():
    """torch reports inf here and zeroes the gradient; the norm of 1e20 is 1e20."""
    g = {"w": np.array([1e20, -1e20, 0.0], np.float32), "b": np.array([3e19], np.float32)}
    clipped, total = clip_grad_norm(g, 1.0)
    assert total == pytest.approx(math.sqrt(2e40 + 9e38), rel=1e-6)
    assert ref_norm(clipped, 2.0) == pytest.approx(1.0, rel=1e-5)
    assert clipped["w"][2] == 0 and clipped["w"][0] > 0 and clipped["w"].dtype == np.float32


def test_tiny_float32_gradient_norm_does_not_underflow():
    _, total = clip_grad_norm({"w": np.array([3e-30, 4e-30], np.float32)}, 1.0)
    assert total == pytest.approx(5e-30, rel=1e-6)


def test_torch_epsilon_is_the_default():
    """coef = max_norm / (total + 1e-6), as torch.nn.utils.clip_grad_norm_."""
    clipped, total = clip_grad_norm({"w": np.array([3.0, 4.0])}, 1.0)
    np.testing.assert_allclose(clipped["w"], np.array([3.0, 4.0]) * (1.0 / (5.0 + 1e-6)), rtol=1e-15)


@pytest.mark.parametrize("bad, expect", [(np.nan, "nan"), (np.inf, "inf"), (-np.inf, "inf")])
@pytest.mark.parametrize("p", [2.0, 1.0, math.inf])
def test_nonfinite_gradients_give_nonfinite_norm_no_exception(bad, expect, p):
    g = {"w": np.array([1.0, bad, 2.0], np.float32), "b": np.ones(2, np.float32)}
    clipped, total = clip_grad_norm(g, 1.0, norm_type=p)
    assert math.isnan(total) if expect == "nan" else total == math.inf
    # left unscaled: where the bad value was stays visible
    np.testing.assert_array_equal(clipped["b"], g["b"])


def test_nan_wins_over_inf():
    _, total = clip_grad_norm({"a": np.array([np.inf]), "b": np.array([np.nan])}, 1.0)
    assert math.isnan(total)


@settings(max_examples=150, deadline=None)
@given(grad_dicts(), st.floats(1e-3, 1e3))
def test_value_clipping_definition(g, c):
    before = {k: v.copy() for k, v in g.items()}
    out = clip_grad_value(g, c)
    for k in g:
        assert np.array_equal(g[k], before[k])
        np.testing.assert_array_equal(out[k], np.clip(g[k], -c, c))
        assert out[k].dtype == g[k].dtype


def test_value_clipping_keeps_nan():
    out = clip_grad_value({"w": np.array([np.nan, 5.0, -5.0])}, 1.0)
    assert np.isnan(out["w"][0]) and list(out["w"][1:]) == [1.0, -1.0]


def test_empty_and_zero_gradients():
    assert clip_grad_norm({}, 1.0) == ({}, 0.0)
    clipped, total = clip_grad_norm({"w": np.zeros(3)}, 1.0)
    assert total == 0.0 and not clipped["w"].any()


def test_integer_gradients_are_refused():
    with pytest.raises(TypeError):
        clip_grad_norm({"w": np.array([1, 2])}, 1.0)


def test_clipper_mixes_methods_in_one_stack():
    """One stacked call clips each variant with its own rule and threshold, and reports
    per-variant statistics that match the public functions."""
    configs = [ClipNorm(method="norm", max_norm=0.5), ClipNone(method="none"),
               ClipValue(method="value", clip_value=0.1), ClipNorm(method="norm", max_norm=100.0)]
    order = group_order(configs)
    assert [configs[i].method for i in order] == ["norm", "norm", "none", "value"]
    r = np.random.default_rng(0)
    base = {"W": r.standard_normal((3, 4)), "b": r.standard_normal(4)}
    stacked = {k: np.repeat(v[None], 4, axis=0) for k, v in base.items()}
    clipper = Clipper([configs[i] for i in order])
    stats = clipper(stacked, param_norms(stacked))
    n = ref_norm(base, 2.0)
    np.testing.assert_allclose(stats["grad_norm"], n)
    # stack order: norm 0.5, norm 100, none, value 0.1
    np.testing.assert_allclose(stats["clipped_norm"], [0.5 * n / (n + 1e-6), n, n, ref_norm(clip_grad_value(base, 0.1), 2)])
    assert stats["clipped"].tolist() == [True, False, False, True]
    expect = [clip_grad_norm(base, 0.5)[0], base, base, clip_grad_value(base, 0.1)]
    for v in range(4):
        for k in base:
            np.testing.assert_allclose(stacked[k][v], expect[v][k], rtol=1e-15)


def test_total_norm_combines_like_concatenation():
    r = np.random.default_rng(1)
    g = {"a": r.standard_normal((2, 5)), "b": r.standard_normal((2, 3, 3))}
    for p in (1.0, 2.0, 3.0, math.inf):
        t = total_norm(param_norms(g, p), p)
        for v in range(2):
            assert t[v] == pytest.approx(ref_norm({k: x[v] for k, x in g.items()}, p), rel=1e-12)


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0, math.inf])
@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_matches_torch_clip_grad_norm(p, max_norm):
    torch = pytest.importorskip("torch")
    r = np.random.default_rng(3)
    g = {"w": r.standard_normal((4, 3)), "b": r.standard_normal(3)}
    ts = [torch.nn.Parameter(torch.zeros(v.shape, dtype=torch.float64)) for v in g.values()]
    for t, v in zip(ts, g.values()):
        t.grad = torch.tensor(v)
    t_total = torch.nn.utils.clip_grad_norm_(ts, max_norm, norm_type=p)
    clipped, total = clip_grad_norm(g, max_norm, norm_type=p)
    assert total == pytest.approx(float(t_total), rel=1e-12)
    for t, k in zip(ts, g):
        np.testing.assert_allclose(clipped[k], t.grad.numpy(), rtol=1e-12)


def test_matches_torch_clip_grad_value():
    torch = pytest.importorskip("torch")
    g = np.random.default_rng(4).standard_normal((5, 5))
    t = torch.nn.Parameter(torch.zeros(5, 5, dtype=torch.float64))
    t.grad = torch.tensor(g)
    torch.nn.utils.clip_grad_value_([t], 0.3)
    np.testing.assert_array_equal(clip_grad_value({"g": g}, 0.3)["g"], t.grad.numpy())
