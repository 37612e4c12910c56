"""SGD as torch.optim.SGD defines it, per variant; and against torch itself when installed."""

import numpy as np
import pytest

from gradlab.optim import SGD


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
        norm = opt.update(params, {"w": g.copy()}, state)
        np.testing.assert_allclose(norm, np.linalg.norm((before - params["w"]).reshape(V, -1), axis=1), rtol=1e-10)
    for v in range(V):
        ref = reference_sgd(p0[v], [g[v] for g in grads], **hp)
        np.testing.assert_allclose(params["w"][v], ref, rtol=1e-12)


def test_select_keeps_the_remaining_variants_state():
    opt = SGD(lr=0.1, momentum=0.9)
    params = {"w": np.arange(6.0).reshape(3, 2)}
    state = opt.init(params)
    opt.update(params, {"w": np.ones((3, 2)) * [[1], [2], [3]]}, state)
    sub = SGD.select(state, [0, 2])
    assert sub["step"] == 1
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
        opt.update(params, {"w": g[None].copy()}, state)
    np.testing.assert_allclose(params["w"][0], tp.detach().numpy(), rtol=1e-12)
