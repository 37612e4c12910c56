"""The paired ops a decoder-only transformer is built from: layer norm, causal self-attention
and the token (or linear input) embedding, each forward next to its backward.

Like every gradlab layer they carry the variant axis V first and treat it as a stack of
independent problems: a reduction runs over a row of one variant, a matmul over one
variant's (or one head's) matrix, so variant v of a stack computes exactly what a run of v
alone computes. Arithmetic stays in the input's dtype (Python-float constants never promote
a float32 array). With a Workspace every per-step buffer is reused by name; without one
each call returns fresh arrays that alias nothing. A backward may overwrite the gradient it
is handed (callers own it and need it no more), as the activations' backwards do.
"""

from __future__ import annotations

from functools import lru_cache
import math
from typing import Callable, Optional

import numpy as np

from .workspace import Workspace, buffer, zeros

Probe = Optional[Callable[..., None]]


def _t(a: np.ndarray) -> np.ndarray:
    return a.swapaxes(-1, -2)


def _per_variant(p: np.ndarray, ndim: int) -> np.ndarray:
    """A (V, D) parameter as (V, 1, ..., 1, D): it broadcasts over the middle axes of an
    (V, ..., D) activation without a copy."""
    return p.reshape(p.shape[:1] + (1,) * (ndim - 2) + p.shape[1:])


# ----------------------------------------------------------------------------- layer norm

def layer_norm(x: np.ndarray, g: np.ndarray, b: Optional[np.ndarray], eps: float = 1e-5,
               ws: Optional[Workspace] = None, key: str = "ln"):
    """torch.nn.functional.layer_norm over the last axis (biased variance); x (V, ..., D),
    g (V, D), b (V, D) or None (bias-free, nanoGPT's bias=False). Returns (y, cache).

    The cache keeps xhat and 1/std rather than x: the backward needs nothing else, and xhat
    is computed on the way anyway."""
    D = x.shape[-1]
    rstd = buffer(ws, f"{key}.rstd", x.shape[:-1] + (1,), x.dtype)
    # rstd's buffer holds the mean first: one small buffer fewer. Row sums as a matmul with
    # ones: BLAS beats a reduction over many short rows.
    np.matmul(x, _ones(D, x.dtype), out=rstd)
    rstd *= 1.0 / D
    xhat = np.subtract(x, rstd, out=buffer(ws, f"{key}.xhat", x.shape, x.dtype))
    # Two passes (mean, then the centred sum of squares) rather than E[x^2] - E[x]^2, which
    # cancels catastrophically when |mean| >> std, as in a drifting residual stream.
    np.vecdot(xhat, xhat, out=rstd[..., 0])
    rstd *= 1.0 / D
    rstd += eps
    np.sqrt(rstd, out=rstd)
    np.divide(1.0, rstd, out=rstd)
    xhat *= rstd
    y = np.multiply(xhat, _per_variant(g, x.ndim), out=buffer(ws, f"{key}.y", x.shape, x.dtype))
    if b is not None:
        y += _per_variant(b, x.ndim)
    return y, {"xhat": xhat, "rstd": rstd, "g": g, "bias": b is not None}


def layer_norm_backward(dy: np.ndarray, cache: dict, ws: Optional[Workspace] = None, key: str = "ln",
                        scratch_key: Optional[str] = None):
    """(dx, dg, db), db None for a bias-free norm. dx is written over dy.

    dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat)), dxhat = dy g: the mean and
    variance depend on every entry of the row, hence the two row means. `scratch_key` names
    the buffers dead once this returns (key's otherwise), for callers sharing them across layers."""
    xhat, rstd, g = cache["xhat"], cache["rstd"], cache["g"]
    D = dy.shape[-1]
    middle = tuple(range(1, dy.ndim - 1))
    db = np.sum(dy, axis=middle, out=buffer(ws, f"{key}.db", g.shape, dy.dtype)) if cache["bias"] else None
    tmp = np.multiply(dy, xhat, out=buffer(ws, f"{scratch_key or key}.tmp", dy.shape, dy.dtype))
    dg = np.sum(tmp, axis=middle, out=buffer(ws, f"{key}.dg", g.shape, dy.dtype))
    dxhat = np.multiply(dy, _per_variant(g, dy.ndim), out=dy)
    m = buffer(ws, f"{scratch_key or key}.m", rstd.shape, dy.dtype)
    np.vecdot(dxhat, xhat, out=m[..., 0])
    m *= 1.0 / D
    np.multiply(xhat, m, out=tmp)
    np.matmul(dxhat, _ones(D, dy.dtype), out=m)
    m *= 1.0 / D
    dxhat -= m
    dxhat -= tmp
    dxhat *= rstd
    return dxhat, dg, db


# ----------------------------------------------------------------------------- attention

@lru_cache(maxsize=32)
def causal_masks(T: int, dtype=np.float64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(allowed, masked, keep), (T, T): query i sees keys j <= i; keep is +inf where allowed
    and 0 where masked, in `dtype`. Built once per T and shared by every call, hence
    read-only."""
    allowed = np.tri(T, dtype=bool)
    masked = ~allowed
    keep = np.where(allowed, np.inf, 0.0).astype(dtype)
    for a in (allowed, masked, keep):
        a.flags.writeable = False
    return allowed, masked, keep


@lru_cache(maxsize=32)
def _ones(n: int, dtype) -> np.ndarray:
    """(n, 1) ones, read-only: a row sum as a matmul."""
    a = np.ones((n, 1), dtype=dtype)
    a.flags.writeable = False
    return a


def _matmul_ready(a: np.ndarray, ws: Optional[Workspace], name: str) -> np.ndarray:
    """`a` itself when matmul reads it in place (a unit stride on the last axis, as views of
    a packed qkv tensor have); else a contiguous copy, into a reused buffer, as matmul would
    otherwise make on every call."""
    if a.strides[-1] == a.itemsize:
        return a
    out = buffer(ws, name, a.shape, a.dtype)
    np.copyto(out, a)
    return out


def causal_attention(q: np.ndarray, k: np.ndarray, v: np.ndarray, ws: Optional[Workspace] = None,
                     key: str = "attn", probe: Probe = None, name: str = "attn",
                     out: Optional[np.ndarray] = None, scratch_key: Optional[str] = None):
    """softmax(q k^T / sqrt(dh), causal) v for q, k, v (V, B, H, T, dh). Returns (out, cache,
    stats), stats = {"max_logit": (V,) float64 max |logit| over the unmasked entries,
    "entropy": (V,) float64 mean attention entropy (nats) over batch, heads and queries}.

    The cache keeps views of k and v: the caller must not overwrite them before the backward.
    `out`, if given, receives the result: a (V, B, H, T, dh) view of the caller's own layout
    (unit stride on the last axis) saves a transposing copy. `scratch_key` names the buffer of
    the scores, dead once this returns, so that callers can share one across layers.
    """
    V, B, H, T, dh = q.shape
    dt = q.dtype
    scale = 1.0 / math.sqrt(dh)
    # The scale goes into a copy of q (T*dh entries) rather than into the scores (T*T); the
    # copy is contiguous, which matmul wants anyway.
    qs = np.multiply(q, scale, out=buffer(ws, f"{key}.qs", q.shape, dt))
    k = _matmul_ready(k, ws, f"{key}.k")
    v = _matmul_ready(v, ws, f"{key}.v")
    allowed, masked, keep = causal_masks(T, dt)
    s = np.matmul(qs, _t(k), out=buffer(ws, f"{scratch_key or key}.s", (V, B, H, T, T), dt))
    np.copyto(s, -np.inf, where=masked)
    if probe:
        probe(name + ".logits", s, where=allowed)
    p = buffer(ws, f"{key}.p", s.shape, dt)
    # Non-finite values are results here (a diverging run), reported by the probes.
    with np.errstate(all="ignore"):
        # max |s| over the unmasked entries: |s| with the masked (now inf) set to 0 by a min
        # with `keep` (inf where allowed, 0 where masked; a NaN logit stays NaN), then one
        # reduction per variant over contiguous memory, far cheaper than a row-wise min.
        np.abs(s, out=p)
        np.minimum(p, keep, out=p)
        max_logit = np.max(p.reshape(V, -1), axis=1).astype(np.float64)
        # The row max is over at least the diagonal (unmasked), so it is finite for finite
        # logits and exp(s - max) <= 1: huge finite logits give a finite softmax, as torch's does.
        m = np.max(s, axis=-1, keepdims=True, out=buffer(ws, f"{key}.m", (V, B, H, T, 1), dt))
        z = np.subtract(s, m, out=s)
        np.exp(z, out=p)
        # Row sums as a matmul with ones, as in layer_norm.
        l = np.matmul(p, _ones(T, dt), out=buffer(ws, f"{key}.l", m.shape, dt))
        # entropy = log l - sum(e z) / l, without a log of p. Masked z are -inf (and z may
        # overflow to -inf beyond the float range) where e is 0: clamping z at -1e4, where exp
        # is 0 in every float dtype, makes their e z 0 rather than 0 * inf = NaN, and changes
        # no other term.
        np.maximum(z, -1e4, out=z)
        ent = np.vecdot(p, z, out=buffer(ws, f"{key}.ez", m.shape[:-1], dt))
        ent /= l[..., 0]
        np.subtract(np.log(l[..., 0]), ent, out=ent)
        np.divide(1.0, l, out=l)
        p *= l
    if probe:
        probe(name + ".softmax", p)
    out = np.matmul(p, v, out=buffer(ws, f"{key}.out", q.shape, dt) if out is None else out)
    if probe:
        probe(name + ".out", out)
    stats = {"max_logit": max_logit, "entropy": ent.mean(axis=(1, 2, 3), dtype=np.float64)}
    return out, {"qs": qs, "k": k, "v": v, "p": p, "scale": scale}, stats


def causal_attention_backward(dout: np.ndarray, cache: dict, ws: Optional[Workspace] = None,
                              key: str = "attn", out: Optional[tuple] = None):
    """(dq, dk, dv), each (V, B, H, T, dh).

    Through the softmax: ds = p (dp - sum_j p dp). Masked entries have p = 0, so their ds is
    0 and no gradient leaks to future keys. `out`, if given, is (dq, dk, dv) to write into:
    views of a packed dqkv save three copies."""
    qs, k, v, p, scale = cache["qs"], cache["k"], cache["v"], cache["p"], cache["scale"]
    dt = dout.dtype
    dq_out, dk_out, dv_out = out if out is not None else (
        buffer(ws, f"{key}.dq", qs.shape, dt), buffer(ws, f"{key}.dk", k.shape, dt), buffer(ws, f"{key}.dv", v.shape, dt))
    dv = np.matmul(_t(p), dout, out=dv_out)
    ds = np.matmul(dout, _t(v), out=buffer(ws, f"{key}.ds", p.shape, dt))
    c = np.vecdot(p, ds, out=buffer(ws, f"{key}.c", p.shape[:-1], dt))
    ds -= c[..., None]
    ds *= p
    dq = np.matmul(ds, k, out=dq_out)
    dq *= scale
    # s = qs k^T with qs = scale q already scaled: dk takes qs as it is.
    dk = np.matmul(_t(ds), qs, out=dk_out)
    return dq, dk, dv


# ----------------------------------------------------------------------------- embedding

def _is_ids(x: np.ndarray) -> bool:
    return np.issubdtype(x.dtype, np.integer)


def embedding(x: np.ndarray, E: np.ndarray, ws: Optional[Workspace] = None, key: str = "emb") -> np.ndarray:
    """Token ids x (B, T) -> E[:, x], (V, B, T, D); or real-valued inputs x (B, T, n), shared
    by the variants -> x @ E (a linear input embedding). E is (V, vocab or n, D)."""
    V, n, D = E.shape
    if _is_ids(x):
        # Checked here so that take's 'clip' mode (which, unlike 'raise', writes straight
        # into the buffer) never clips a bad id silently.
        if x.size and (x.min() < 0 or x.max() >= n):
            raise IndexError(f"token ids must lie in [0, {n}), got [{x.min()}, {x.max()}]")
        y = buffer(ws, f"{key}.y", (V,) + x.shape + (D,), E.dtype)
        return np.take(E, x, axis=1, out=y, mode="clip")
    if x.shape[-1] != n:
        raise ValueError(f"inputs {x.shape} need {n} features to match the embedding {E.shape}")
    lead = x.shape[:-1]
    y = buffer(ws, f"{key}.y", (V,) + lead + (D,), E.dtype)
    # All positions as one (B*T, n) matrix: one matmul per variant, not one per sequence.
    np.matmul(x.reshape(-1, n), E, out=y.reshape(V, -1, D))
    return y


def embedding_backward(dy: np.ndarray, x: np.ndarray, n_rows: int, ws: Optional[Workspace] = None,
                       key: str = "emb") -> np.ndarray:
    """dE, (V, n_rows, D).

    For ids, the rows of dy are sorted by id (stably) and each run summed by np.add.reduceat:
    in position order, so bit for bit repeatable and the same for a variant whatever V is.
    np.add.at gives the same sums 3 to 20 times slower (2048 positions, D 128, vocab 65 to
    1000); a one-hot matmul is as fast only for a small vocabulary and grows with it."""
    V, D = dy.shape[0], dy.shape[-1]
    dy2 = dy.reshape(V, -1, D)
    if not _is_ids(x):
        return np.matmul(_t(x.reshape(-1, n_rows)), dy2, out=buffer(ws, f"{key}.dE", (V, n_rows, D), dy.dtype))
    dE = zeros(ws, f"{key}.dE", (V, n_rows, D), dy.dtype)
    ids = x.reshape(-1)
    if not ids.size:
        return dE
    order = np.argsort(ids, kind="stable")
    sid = ids[order]
    starts = np.flatnonzero(np.r_[True, sid[1:] != sid[:-1]])
    rows = np.take(dy2, order, axis=1, out=buffer(ws, f"{key}.rows", dy2.shape, dy.dtype), mode="clip")
    dE[:, sid[starts]] = np.add.reduceat(rows, starts, axis=1)
    return dE
