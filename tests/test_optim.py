"""The optimizers as torch.optim defines them, per variant; and against torch itself when installed."""

import inspect
from types import SimpleNamespace

import numpy as np
import pytest

from gradlab.config import AdamConfig, AdamWConfig, RMSpropConfig, SGDConfig
from gradlab.optim import SGD, Adam, AdamW, RMSprop, build_optimizer
from gradlab.transforms import apply_updates, take


def step(opt, params, grads, state):
    """One step through the transform protocol: the updates, then the generic write."""
    updates, new_state, stats = opt.update(grads, state, params)
    assert new_state is state  # updated in place, as the rules' state is
    apply_updates(params, updates)
    return stats["update_norm"]


def reference_sgd(p, grads, lr, momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0):
    """torch.optim.SGD's documented algorithm, one variant, written out plainly."""
    p = p.copy()
    buf = None
    for g in grads:
        g = g + weight_decay * p
        if momentum:
            buf = g.copy() if buf is None else momentum * buf + (1 - dampening) * g
            g = g + momentum * buf if nesterov else buf
        p = p - lr * g
    return p


CASES = [
    dict(lr=0.1),
    dict(lr=0.05, momentum=0.9),
    dict(lr=0.05, momentum=0.9, dampening=0.3),
    dict(lr=0.05, momentum=0.9, nesterov=True),
    dict(lr=0.05, momentum=0.5, weight_decay=0.01),
]


@pytest.mark.parametrize("hp", CASES)
def test_sgd_matches_definition_per_variant(hp):
    r = np.random.default_rng(0)
    V, steps = 3, 6
    p0 = r.standard_normal((V, 4, 2))
    grads = [r.standard_normal((V, 4, 2)) for _ in range(steps)]
    opt = SGD(**hp)
    params = {"w": p0.copy()}
    state = opt.init(params)
    for t, g in enumerate(grads):
        before = params["w"].copy()
        norm = step(opt, params, {"w": g.copy()}, state)
        np.testing.assert_allclose(norm, np.linalg.norm((before - params["w"]).reshape(V, -1), axis=1), rtol=1e-10)
    for v in range(V):
        ref = reference_sgd(p0[v], [g[v] for g in grads], **hp)
        np.testing.assert_allclose(params["w"][v], ref, rtol=1e-12)


def test_take_keeps_the_remaining_variants_state():
    opt = SGD(lr=0.1, momentum=0.9)
    params = {"w": np.arange(6.0).reshape(3, 2)}
    state = opt.init(params)
    step(opt, params, {"w": np.ones((3, 2)) * [[1], [2], [3]]}, state)
    sub = take(state, np.array([0, 2]))
    assert sub["step"].tolist() == [1, 1]
    np.testing.assert_array_equal(sub["buf"]["w"], [[1, 1], [3, 3]])


@pytest.mark.parametrize("hp", CASES)
def test_sgd_matches_torch(hp):
    torch = pytest.importorskip("torch")
    r = np.random.default_rng(1)
    p0 = r.standard_normal((5, 3))
    grads = [r.standard_normal((5, 3)) for _ in range(5)]
    tp = torch.nn.Parameter(torch.tensor(p0))
    topt = torch.optim.SGD([tp], **hp)
    for g in grads:
        tp.grad = torch.tensor(g)
        topt.step()
    opt = SGD(**hp)
    params = {"w": p0[None].copy()}
    state = opt.init(params)
    for g in grads:
        step(opt, params, {"w": g[None].copy()}, state)
    np.testing.assert_allclose(params["w"][0], tp.detach().numpy(), rtol=1e-12)


# --- Adam, AdamW, RMSprop -------------------------------------------------------------

def reference_adam(p, grads, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
                   decoupled=False):
    """torch.optim.Adam's (AdamW's, if decoupled) documented algorithm, one variant, plainly."""
    b1, b2 = betas
    p, m, v, v_max = p.copy(), np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    for t, g in enumerate(grads, start=1):
        if decoupled:
            p = p - lr * weight_decay * p
        else:
            g = g + weight_decay * p
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g**2
        v_max = np.maximum(v_max, v)
        m_hat = m / (1 - b1**t)
        v_hat = (v_max if amsgrad else v) / (1 - b2**t)
        p = p - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


def reference_adamw(p, grads, weight_decay=1e-2, **hp):
    return reference_adam(p, grads, weight_decay=weight_decay, decoupled=True, **hp)


def reference_rmsprop(p, grads, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False):
    """torch.optim.RMSprop's documented algorithm, one variant, plainly."""
    p, v, b, g_ave = p.copy(), np.zeros_like(p), np.zeros_like(p), np.zeros_like(p)
    for g in grads:
        g = g + weight_decay * p
        v = alpha * v + (1 - alpha) * g**2
        v_tilde = v
        if centered:
            g_ave = alpha * g_ave + (1 - alpha) * g
            v_tilde = v - g_ave**2
        if momentum > 0:
            b = momentum * b + g / (np.sqrt(v_tilde) + eps)
            p = p - lr * b
        else:
            p = p - lr * g / (np.sqrt(v_tilde) + eps)
    return p


ADAPTIVE_CASES = [
    (Adam, reference_adam, {}),
    (Adam, reference_adam, dict(lr=0.01, betas=(0.8, 0.99), eps=1e-3)),
    (Adam, reference_adam, dict(lr=0.01, betas=(0.3, 0.9))),
    (Adam, reference_adam, dict(lr=0.01, betas=(0.0, 0.9))),
    (Adam, reference_adam, dict(lr=0.01, weight_decay=0.1)),
    (Adam, reference_adam, dict(lr=0.01, amsgrad=True)),
    (Adam, reference_adam, dict(lr=0.01, weight_decay=0.1, amsgrad=True)),
    (AdamW, reference_adamw, {}),
    (AdamW, reference_adamw, dict(lr=0.01, weight_decay=0.5)),
    (AdamW, reference_adamw, dict(lr=0.01, weight_decay=0.1, amsgrad=True, betas=(0.3, 0.9))),
    (RMSprop, reference_rmsprop, {}),
    (RMSprop, reference_rmsprop, dict(alpha=0.9, weight_decay=0.1)),
    (RMSprop, reference_rmsprop, dict(centered=True)),
    (RMSprop, reference_rmsprop, dict(momentum=0.9)),
    (RMSprop, reference_rmsprop, dict(lr=0.001, alpha=0.3, eps=1e-4, weight_decay=0.05, momentum=0.5, centered=True)),
]
IDS = [f"{cls.__name__}-{hp}" for cls, _, hp in ADAPTIVE_CASES]


def gradient_steps(r, shape, steps):
    """Gradients whose scale jumps around, so that amsgrad's maximum matters."""
    scales = [3.0, 0.2, 1.0, 0.05, 2.0, 0.1, 0.5, 4.0, 0.3, 1.0]
    return [scales[t % len(scales)] * r.standard_normal(shape) for t in range(steps)]


@pytest.mark.parametrize("cls, reference, hp", ADAPTIVE_CASES, ids=IDS)
def test_adaptive_matches_definition_per_variant(cls, reference, hp):
    r = np.random.default_rng(0)
    V, steps = 3, 6
    p0 = {"w": r.standard_normal((V, 4, 2)), "b": r.standard_normal((V, 3))}
    grads = [dict(zip(p0, gs)) for gs in zip(*(gradient_steps(r, v.shape, steps) for v in p0.values()))]
    opt = cls(**hp)
    params = {k: v.copy() for k, v in p0.items()}
    state = opt.init(params)
    for g in grads:
        before = {k: v.copy() for k, v in params.items()}
        norm = step(opt, params, {k: v.copy() for k, v in g.items()}, state)
        change = np.concatenate([(before[k] - params[k]).reshape(V, -1) for k in params], axis=1)
        assert norm.shape == (V,) and norm.dtype == np.float64
        np.testing.assert_allclose(norm, np.linalg.norm(change, axis=1), rtol=1e-10)
    assert (state["step"] == steps).all()
    for k in p0:
        for v in range(V):
            ref = reference(p0[k][v], [g[k][v] for g in grads], **hp)
            np.testing.assert_allclose(params[k][v], ref, rtol=1e-12)


def test_amsgrad_makes_a_difference_in_these_tests():
    r = np.random.default_rng(0)
    p0, grads = r.standard_normal(5), gradient_steps(r, 5, 6)
    assert not np.allclose(reference_adam(p0, grads, amsgrad=True), reference_adam(p0, grads), rtol=1e-6)


@pytest.mark.parametrize("cls, reference, hp", ADAPTIVE_CASES, ids=IDS)
def test_adaptive_matches_torch(cls, reference, hp):
    torch = pytest.importorskip("torch")
    r = np.random.default_rng(1)
    V, steps = 3, 10
    p0 = r.standard_normal((V, 5, 3))
    grads = gradient_steps(r, p0.shape, steps)
    # Each variant is its own torch parameter: torch keeps state per parameter, as we do per variant.
    tps = [torch.nn.Parameter(torch.tensor(p0[v])) for v in range(V)]
    topt = getattr(torch.optim, cls.__name__)(tps, foreach=False, **hp)
    for g in grads:
        for v, tp in enumerate(tps):
            tp.grad = torch.tensor(g[v])
        topt.step()
    opt = cls(**hp)
    params = {"w": p0.copy()}
    state = opt.init(params)
    for g in grads:
        step(opt, params, {"w": g.copy()}, state)
    for v, tp in enumerate(tps):
        np.testing.assert_allclose(params["w"][v], tp.detach().numpy(), rtol=1e-10)


@pytest.mark.parametrize("cls", [Adam, AdamW, RMSprop])
def test_defaults_are_torchs(cls):
    torch = pytest.importorskip("torch")
    ours = inspect.signature(cls).parameters
    theirs = inspect.signature(getattr(torch.optim, cls.__name__)).parameters
    for name, p in ours.items():
        assert p.default == theirs[name].default, name


FULL = [Adam(lr=0.01, weight_decay=0.1, amsgrad=True), AdamW(lr=0.01, amsgrad=True),
        RMSprop(weight_decay=0.1, momentum=0.9, centered=True)]


def arrays(node):
    if isinstance(node, dict):
        return [a for v in node.values() for a in arrays(v)]
    return [node] if isinstance(node, np.ndarray) else []


@pytest.mark.parametrize("opt", FULL, ids=lambda o: type(o).__name__)
def test_float32_stays_float32(opt):
    r = np.random.default_rng(2)
    params = {"w": r.standard_normal((3, 4, 2)).astype(np.float32), "b": r.standard_normal((3, 2)).astype(np.float32)}
    state = opt.init(params)
    for g in gradient_steps(r, (3, 4, 2), 3):
        norm = step(opt, params, {"w": g.astype(np.float32), "b": g[:, 0].astype(np.float32)}, state)
        assert norm.shape == (3,) and norm.dtype == np.float64
    assert all(p.dtype == np.float32 for p in params.values())
    # The buffers keep the parameters' dtype; the step count is an integer per variant.
    buffers = arrays({k: v for k, v in state.items() if k != "step"})
    assert buffers and all(a.dtype == np.float32 for a in buffers) and state["step"].dtype == np.int64


@pytest.mark.parametrize("opt", FULL, ids=lambda o: type(o).__name__)
def test_numpy_float64_hyperparameters_do_not_promote(opt):
    """A float64 numpy scalar would compute a float32 update in float64 (different bits)."""
    as_numpy = type(opt)(**{k: (np.float64(v) if type(v) is float else v) for k, v in hyperparameters(opt).items()})
    r = np.random.default_rng(3)
    grads = [g.astype(np.float32) for g in gradient_steps(r, (3, 50), 4)]
    p0 = r.standard_normal((3, 50)).astype(np.float32)
    results = []
    for o in (opt, as_numpy):
        params = {"w": p0.copy()}
        state = o.init(params)
        for g in grads:
            step(o, params, {"w": g.copy()}, state)
        results.append(params["w"])
    np.testing.assert_array_equal(results[0], results[1])


def hyperparameters(opt):
    names = inspect.signature(type(opt)).parameters
    return {k: (opt.beta1, opt.beta2) if k == "betas" else getattr(opt, k) for k in names}


@pytest.mark.parametrize("opt", FULL, ids=lambda o: type(o).__name__)
def test_take_keeps_the_remaining_variants_state_adaptive(opt):
    r = np.random.default_rng(4)
    p0 = r.standard_normal((4, 6))
    grads = gradient_steps(r, p0.shape, 5)
    keep = [0, 2, 3]
    stacked = {"w": p0.copy()}
    state = opt.init(stacked)
    for g in grads[:2]:
        step(opt, stacked, {"w": g.copy()}, state)
    stacked, state = {"w": stacked["w"][keep]}, take(state, np.array(keep))
    assert state["step"].tolist() == [2, 2, 2]
    for g in grads[2:]:
        step(opt, stacked, {"w": g[keep].copy()}, state)
    # The same variants, never stacked with the dropped one: bit for bit the same.
    alone = {"w": p0[keep].copy()}
    state_alone = opt.init(alone)
    for g in grads:
        step(opt, alone, {"w": g[keep].copy()}, state_alone)
    np.testing.assert_array_equal(stacked["w"], alone["w"])
    for a, b in zip(arrays(state), arrays(state_alone)):
        assert a.shape == b.shape


def test_take_of_no_variants():
    opt = Adam(amsgrad=True)
    state = opt.init({"w": np.zeros((2, 3), dtype=np.float32)})
    sub = take(state, np.zeros(0, np.intp))
    assert sub["step"].shape == (0,)
    assert all(a.shape == (0, 3) and a.dtype == np.float32 for a in arrays({k: v for k, v in sub.items() if k != "step"}))


@pytest.mark.parametrize("cfg, cls", [
    (SGDConfig(kind="sgd"), SGD),
    (SGDConfig(kind="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4), SGD),
    (AdamConfig(kind="adam"), Adam),
    (AdamConfig(kind="adam", lr=0.01, betas=[0.8, 0.9], eps=1e-6, weight_decay=0.1, amsgrad=True), Adam),
    (AdamWConfig(kind="adamw"), AdamW),
    (AdamWConfig(kind="adamw", weight_decay=0.2, amsgrad=True), AdamW),
    (RMSpropConfig(kind="rmsprop"), RMSprop),
    (RMSpropConfig(kind="rmsprop", alpha=0.9, eps=1e-6, weight_decay=0.1, momentum=0.5, centered=True), RMSprop),
], ids=lambda x: getattr(x, "kind", "") or getattr(x, "__name__", ""))
def test_build_optimizer(cfg, cls):
    opt = build_optimizer(cfg)
    assert type(opt) is cls
    for name, value in cfg:
        if name == "betas":
            assert (opt.beta1, opt.beta2) == tuple(value)
        elif name != "kind":
            assert getattr(opt, name) == value, name
    if cfg == type(cfg)(kind=cfg.kind):  # the config's defaults are the optimizer's (torch's)
        assert vars(opt) == vars(cls(**({"lr": cfg.lr} if cls is SGD else {})))


def test_build_optimizer_refuses_an_unknown_kind():
    with pytest.raises(ValueError, match="lion"):
        build_optimizer(SimpleNamespace(kind="lion"))


@pytest.mark.parametrize("opt", [SGD(0.1, momentum=0.9, nesterov=True, weight_decay=0.1)] + FULL,
                         ids=lambda o: type(o).__name__)
def test_the_updates_live_in_buffers_the_step_already_has(opt):
    """No parameter-sized array per step: the updates are the gradients' buffers (SGD) or the
    state's scratch (the adaptive ones), also on the per-variant path after a skip; and
    apply_updates adds them, bit for bit the step torch's definition subtracts."""
    r = np.random.default_rng(5)
    params = {"w": r.standard_normal((3, 4, 2)), "b": r.standard_normal((3, 2))}
    state = opt.init(params)
    for t in range(3):
        if t == 2:
            state["step"][1] -= 1  # as after a skipped step: the per-variant path
        grads = {k: r.standard_normal(v.shape) for k, v in params.items()}
        home = grads if isinstance(opt, SGD) else state["scratch"]
        before = {k: v.copy() for k, v in params.items()}
        updates, _, stats = opt.update(grads, state, params)
        assert all(updates[k] is home[k] for k in params)
        apply_updates(params, updates)
        for k in params:
            assert np.array_equal(params[k], before[k] + updates[k])
        change = np.concatenate([(params[k] - before[k]).reshape(3, -1) for k in params], axis=1)
        np.testing.assert_allclose(stats["update_norm"], np.linalg.norm(change, axis=1), rtol=1e-10)


@pytest.mark.parametrize("make", [lambda lr: SGD(lr, momentum=0.9), lambda lr: Adam(lr), lambda lr: AdamW(lr),
                                  lambda lr: RMSprop(lr, momentum=0.5)], ids=["sgd", "adam", "adamw", "rmsprop"])
def test_a_steps_lr_is_the_optimizers_own_at_that_lr(make):
    """update(..., lr=) (a schedule's lr) steps exactly as an optimizer built with that lr."""
    r = np.random.default_rng(5)
    p0, grads = r.standard_normal((2, 3, 4)).astype(np.float32), [r.standard_normal((2, 3, 4)).astype(np.float32)
                                                                   for _ in range(4)]
    lrs = [0.01, 0.03, 0.02, 0.005]
    scheduled, a = make(0.1), {"w": p0.copy()}
    sa = scheduled.init(a)
    for g, lr in zip(grads, lrs):
        updates, sa, _ = scheduled.update({"w": g.copy()}, sa, a, lr=lr)
        assert updates["w"].dtype == np.float32
        apply_updates(a, updates)
    b = {"w": p0.copy()}
    sb = make(lrs[0]).init(b)
    for g, lr in zip(grads, lrs):
        updates, sb, _ = make(lr).update({"w": g.copy()}, sb, b)
        apply_updates(b, updates)
    assert np.array_equal(a["w"], b["w"])
