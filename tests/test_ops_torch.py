"""The transformer's ops against torch in float64: F.layer_norm, F.scaled_dot_product_attention
(is_causal=True), F.embedding, a linear input embedding, and F.cross_entropy plus a z-loss
written in torch. Forward values and every gradient (by autograd) to 1e-6 relative.

Needs torch (`pip install torch==2.13.0`); without it the module is skipped."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

from gradlab.losses import softmax_cross_entropy  # noqa: E402
from gradlab.models.ops import (causal_attention, causal_attention_backward, embedding,  # noqa: E402
                                embedding_backward, layer_norm, layer_norm_backward)

RTOL, ATOL = 1e-6, 1e-12


def leaf(a):
    return torch.tensor(a, requires_grad=True)


def close(ours, theirs, name):
    np.testing.assert_allclose(ours, theirs.detach().numpy(), rtol=RTOL, atol=ATOL, err_msg=name)


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("V", [1, 3])
def test_layer_norm_matches_torch(V, bias):
    r = np.random.default_rng(V)
    x = 3 * r.standard_normal((V, 4, 5, 16)) + 2
    g = 1 + 0.5 * r.standard_normal((V, 16))
    b = r.standard_normal((V, 16)) if bias else None
    G = r.standard_normal(x.shape)
    y, cache = layer_norm(x, g, b)
    dx, dg, db = layer_norm_backward(G.copy(), cache)
    tx, tg = leaf(x), leaf(g)
    tb = leaf(b) if bias else None
    ty = torch.stack([F.layer_norm(tx[v], (16,), tg[v], None if tb is None else tb[v], eps=1e-5) for v in range(V)])
    (ty * torch.tensor(G)).sum().backward()
    close(y, ty, "y")
    close(dx, tx.grad, "dx")
    close(dg, tg.grad, "dg")
    if bias:
        close(db, tb.grad, "db")


def torch_attention(tq, tk, tv):
    """A manual masked softmax, for the probabilities and the stats SDPA does not expose."""
    T, dh = tq.shape[-2], tq.shape[-1]
    s = tq @ tk.transpose(-1, -2) / dh ** 0.5
    allowed = torch.ones(T, T, dtype=torch.bool).tril()
    p = torch.softmax(s.masked_fill(~allowed, float("-inf")), dim=-1)
    return s, p, allowed


@pytest.mark.parametrize("T", [1, 9])
@pytest.mark.parametrize("V", [1, 3])
def test_attention_matches_torch_sdpa(V, T):
    r = np.random.default_rng(10 + V + T)
    q, k, v = (2 * r.standard_normal((V, 2, 3, T, 8)) for _ in range(3))
    G = r.standard_normal(q.shape)
    out, cache, stats = causal_attention(q, k, v)
    dq, dk, dv = causal_attention_backward(G.copy(), cache)
    tq, tk, tv = leaf(q), leaf(k), leaf(v)
    # SDPA takes (N, H, T, dh): the variant and batch axes folded into one.
    fold = lambda a: a.reshape(V * 2, 3, T, 8)  # noqa: E731
    tout = F.scaled_dot_product_attention(fold(tq), fold(tk), fold(tv), is_causal=True).reshape(q.shape)
    (tout * torch.tensor(G)).sum().backward()
    close(out, tout, "out")
    close(dq, tq.grad, "dq")
    close(dk, tk.grad, "dk")
    close(dv, tv.grad, "dv")
    with torch.no_grad():
        s, p, allowed = torch_attention(tq, tk, tv)
        max_logit = s.abs().masked_fill(~allowed, 0.0).amax(dim=(1, 2, 3, 4))
        entropy = -(torch.special.xlogy(p, p)).sum(-1).mean(dim=(1, 2, 3))
    close(stats["max_logit"], max_logit, "max_logit")
    close(stats["entropy"], entropy, "entropy")


def test_attention_of_huge_logits_matches_torch():
    r = np.random.default_rng(5)
    q, k, v = (r.standard_normal((1, 1, 2, 6, 4)) for _ in range(3))
    q *= 1e30
    out, _, _ = causal_attention(q, k, v)
    tout = F.scaled_dot_product_attention(*(torch.tensor(a[0]) for a in (q, k, v)), is_causal=True)
    assert torch.isfinite(tout).all()
    close(out[0], tout, "out")


@pytest.mark.parametrize("V", [1, 3])
def test_token_embedding_matches_torch(V):
    r = np.random.default_rng(20 + V)
    x = r.integers(0, 11, (4, 7))
    E = r.standard_normal((V, 13, 6))
    G = r.standard_normal((V, 4, 7, 6))
    y = embedding(x, E)
    dE = embedding_backward(G.copy(), x, 13)
    tE = leaf(E)
    ty = torch.stack([F.embedding(torch.tensor(x), tE[v]) for v in range(V)])
    (ty * torch.tensor(G)).sum().backward()
    close(y, ty, "y")
    close(dE, tE.grad, "dE")


@pytest.mark.parametrize("V", [1, 3])
def test_linear_input_embedding_matches_torch(V):
    r = np.random.default_rng(30 + V)
    x = r.standard_normal((4, 7, 3))
    E = r.standard_normal((V, 3, 6))
    G = r.standard_normal((V, 4, 7, 6))
    y = embedding(x, E)
    dE = embedding_backward(G.copy(), x, 3)
    tE = leaf(E)
    ty = torch.stack([torch.tensor(x) @ tE[v] for v in range(V)])
    (ty * torch.tensor(G)).sum().backward()
    close(y, ty, "y")
    close(dE, tE.grad, "dE")


@pytest.mark.parametrize("z_loss", [0.0, 1e-2])
@pytest.mark.parametrize("V", [1, 3])
def test_cross_entropy_with_z_loss_matches_torch(V, z_loss):
    r = np.random.default_rng(40 + V)
    logits = 3 * r.standard_normal((V, 5, 4, 10)) + 4  # (V, T, B, C): log Z well away from 0
    labels = r.integers(0, 10, (5, 4))
    stats = {}
    loss, grad = softmax_cross_entropy(logits, labels, z_loss=z_loss, stats=stats)
    tl = leaf(logits)
    flat = tl.reshape(V, -1, 10)
    log_z = torch.logsumexp(flat, dim=-1)
    t_loss = torch.stack([F.cross_entropy(flat[v], torch.tensor(labels.reshape(-1))) for v in range(V)])
    t_loss = t_loss + z_loss * (log_z ** 2).mean(dim=1)
    t_loss.sum().backward()
    close(loss, t_loss, "loss")
    close(grad, tl.grad, "dlogits")
    close(stats["logit_z"], log_z.mean(dim=1), "logit_z")
