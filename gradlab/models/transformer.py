"""A decoder-only transformer: token and learned positional embeddings, `depth` blocks of
causal multi-head self-attention and a GELU MLP with residual connections, and a linear head.

Built from the paired ops of `ops.py`; every tensor carries the variant axis V first, like
every gradlab model, so the variants of a seed train in one stack. The residual stream is
time-major, (V, T, B, D), flattened to (V, T*B, D) for the linear layers: the per-step
outputs are then already in the (V, T, B, O) layout the losses take, and the last position
of a sequence-to-one task is one contiguous (V, B, D) slice. Attention works on
(V, B, H, T, dh).

Parameters (x @ W, so W is (in, out)): `tok.E` (vocab, D) (a linear input embedding for
real-valued inputs), `pos.E` (max_len, D), per block `block.<i>.ln1.g/.b`,
`attn.qkv.W/.b` (D, 3D: q, k and v side by side, heads contiguous in each),
`attn.q_ln.g/.b` and `attn.k_ln.g/.b` (dh,) with qk_norm, `attn.proj.W/.b`, `ln2.g/.b`,
`mlp.fc.W/.b` (D, rD), `mlp.proj.W/.b` (rD, D); `ln_f.g/.b` (pre-LN only); `head.W/.b`
(head.W absent with tied embeddings: the logits are h @ tok.E^T). Without `bias`, no
linear layer and no LayerNorm has a bias (nanoGPT's bias=False).

Initialisation: every linear weight by the config's scheme x gain, q, k and v each as its own
(D, D) matrix; the residual projections (attn.proj, mlp.proj) further scaled by
1/sqrt(2 depth), as GPT-2 does, so that the residual stream's variance does not grow with
depth at init; embeddings N(0, 1/D) (the LayerNorms rescale them; tied logits start O(1));
LayerNorm gains 1 and every bias 0. `init_style: vaswani` drops both (no depth scaling,
embeddings N(0, 1)): the initialisation Xiong et al. 2020 analyse.

Probes, in computation order, name the tensor and the block: `tok.embedding`,
`pos.embedding`, `block.2.ln1`, `block.2.attn.qkv`, `block.2.attn.logits` (only the
unmasked entries count: the causal mask's -inf is not a divergence), `block.0.mlp.gelu`,
`ln_f`, `head.logits`; backward, the same names for their gradients and every parameter's
gradient under its own name.
"""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np

from ..kinds import ParamSpec
from .base import Model
from .init import init_weight
from .ops import (causal_attention, causal_attention_backward, embedding, embedding_backward, layer_norm,
                  layer_norm_backward)
from .workspace import Workspace, buffer

Probe = Optional[Callable[..., None]]

_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715


def _gelu(u: np.ndarray, ws, key: str, g_key: Optional[str] = None) -> tuple[np.ndarray, np.ndarray]:
    """GELU, tanh approximation (torch's approximate="tanh"), as u * sigmoid(2a) with
    a = c (u + 0.044715 u^3): the same function (0.5 (1 + tanh a) = sigmoid(2a)), but NumPy
    vectorises exp and not tanh. Returns gelu(u) and s = sigmoid(2a), which the backward
    needs with u. `g_key` names gelu(u)'s buffer when the caller shares it (it recomputes
    u s, bit for bit, when it needs gelu(u) again)."""
    s = buffer(ws, key + ".s", u.shape, u.dtype)
    np.multiply(u, u, out=s)
    s *= -2.0 * _GELU_C * _GELU_A
    s -= 2.0 * _GELU_C
    s *= u  # -2a
    with np.errstate(over="ignore"):  # exp(-2a) = inf gives the right s = 0
        np.exp(s, out=s)
    s += 1.0
    np.divide(1.0, s, out=s)
    g = buffer(ws, g_key or key + ".g", u.shape, u.dtype)
    np.multiply(u, s, out=g)
    return g, s


def _gelu_backward(dg: np.ndarray, u: np.ndarray, s: np.ndarray, ws, key: str) -> np.ndarray:
    """d/du [u s(u)] = s + u s (1 - s) 2a'(u), a' = c (1 + 3 0.044715 u^2); into dg."""
    t = buffer(ws, key + ".t", u.shape, u.dtype)
    uc = np.clip(u, -20.0, 20.0, out=t)  # past |u| = 20, s (1 - s) is 0 and u^3 may overflow
    w = buffer(ws, key + ".w", u.shape, u.dtype)
    np.multiply(uc, uc, out=w)
    w *= 2.0 * _GELU_C * 3.0 * _GELU_A
    w += 2.0 * _GELU_C
    w *= uc  # u 2a'(u)
    np.subtract(1.0, s, out=t)
    t *= s
    t *= w
    t += s
    dg *= t
    return dg


def _weight_grad(x: np.ndarray, dy: np.ndarray, out: np.ndarray, ws, key: str) -> np.ndarray:
    """x^T dy, (V, in, out), over the N rows of x (V, N, in) and dy (V, N, out).

    OpenBLAS (SkylakeX kernel, one thread) took 2-3x longer over a long N when the product
    has fewer rows than columns (128 x 2048 @ 2048 x 512: 20 ms against 7 ms for its
    transpose) on this 2-core machine while loaded (the whole step: 0.75x at load average 8;
    no difference at load 4): such a product is computed as (dy^T x), then copied transposed
    (a 64K-entry copy, well under a millisecond)."""
    n_in, n_out = x.shape[-1], dy.shape[-1]
    if n_in > n_out:
        return np.matmul(x.swapaxes(-1, -2), dy, out=out)
    tmp = buffer(ws, key, out.shape[:-2] + (n_out, n_in), out.dtype)
    np.matmul(dy.swapaxes(-1, -2), x, out=tmp)
    np.copyto(out, tmp.swapaxes(-1, -2))
    return out


def _linear(x: np.ndarray, W: np.ndarray, b: Optional[np.ndarray], out: np.ndarray) -> np.ndarray:
    np.matmul(x, W, out=out)
    if b is not None:
        out += b[:, None, :]
    return out


class Transformer(Model):
    kind = "transformer"

    def __init__(self, cfg, input_dim: int, output_dim: int, per_step: bool, max_len: int,
                 dtype: str = "float32") -> None:
        self.depth, self.D, self.H = cfg.depth, cfg.width, cfg.heads
        self.dh = self.D // self.H
        self.ratio, self.norm, self.qk_norm = cfg.mlp_ratio, cfg.norm, cfg.qk_norm
        self.bias, self.tied, self.z_loss = cfg.bias, cfg.tie_embeddings, float(cfg.z_loss)
        self.max_len, self.per_step = max_len, per_step
        self.init_scheme, self.gain = cfg.init.scheme, cfg.init.gain
        self.init_style = cfg.init_style
        self.dtype = np.dtype(dtype)
        self.input_dim, self.output_dim = input_dim, output_dim
        D, R = self.D, self.ratio * self.D
        shapes: dict[str, tuple[int, ...]] = {"tok.E": (input_dim, D), "pos.E": (max_len, D)}

        def ln(name: str, n: int) -> None:
            shapes[f"{name}.g"] = (n,)
            if self.bias:
                shapes[f"{name}.b"] = (n,)

        def linear(name: str, n_in: int, n_out: int) -> None:
            shapes[f"{name}.W"] = (n_in, n_out)
            if self.bias:
                shapes[f"{name}.b"] = (n_out,)

        for i in range(self.depth):
            b = f"block.{i}"
            if self.norm == "pre":
                ln(f"{b}.ln1", D)
            linear(f"{b}.attn.qkv", D, 3 * D)
            if self.qk_norm:
                ln(f"{b}.attn.q_ln", self.dh)
                ln(f"{b}.attn.k_ln", self.dh)
            linear(f"{b}.attn.proj", D, D)
            ln(f"{b}.ln1" if self.norm == "post" else f"{b}.ln2", D)
            linear(f"{b}.mlp.fc", D, R)
            linear(f"{b}.mlp.proj", R, D)
            if self.norm == "post":
                ln(f"{b}.ln2", D)
        if self.norm == "pre":
            ln("ln_f", D)
        if self.tied:
            if self.bias:
                shapes["head.b"] = (output_dim,)
        else:
            linear("head", D, output_dim)
        self.shapes = shapes

    # ------------------------------------------------------------------ what it is
    @property
    def param_specs(self) -> dict[str, ParamSpec]:
        """Linear weights are (in, out): fan-in axis 0. An embedding row is one token's (or
        one position's) vector: AGC takes one norm per row, along axis 1."""
        specs = {}
        for name, shape in self.shapes.items():
            layer, short = name.rsplit(".", 1)
            if short == "E":
                specs[name] = ParamSpec(layer, "embedding", 1)
            elif short == "W":
                specs[name] = ParamSpec(layer, "weight", 0)
            elif short == "g":
                specs[name] = ParamSpec(layer, "gain", None)
            else:
                specs[name] = ParamSpec(layer, "bias", None)
        return specs

    def init(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        D = self.D
        gpt2 = self.init_style == "gpt2"  # vaswani: no depth scaling, unit-variance embeddings
        resid = 1.0 / math.sqrt(2 * self.depth) if gpt2 else 1.0
        emb = math.sqrt(D) if gpt2 else 1.0
        params = {}
        for name, shape in self.shapes.items():
            short = name.rsplit(".", 1)[1]
            if short == "E":
                w = rng.standard_normal(shape) / emb
            elif name.endswith("attn.qkv.W"):
                w = np.concatenate([init_weight(rng, (D, D), self.init_scheme, self.gain) for _ in range(3)], axis=1)
            elif short == "W":
                w = init_weight(rng, shape, self.init_scheme, self.gain)
                if name.endswith(".proj.W"):
                    w = w * resid
            elif short == "g":
                w = np.ones(shape)
            else:
                w = np.zeros(shape)
            params[name] = w.astype(self.dtype)
        return params

    # ------------------------------------------------------------------ forward
    def forward(self, params: dict[str, np.ndarray], x: np.ndarray, probe: Probe = None,
                ws: Optional[Workspace] = None):
        """x: token ids (T, B) int, or real-valued inputs (T, B, n), shared by the variants.
        Returns (V, T, B, O) logits (per-step tasks) or (V, B, O) from the last position,
        and a cache holding what backward needs and the step's attention statistics."""
        cr = self.compute
        r = cr.round_
        p = cr.weights(params, ws)
        x = cr.rounded(x)  # real-valued inputs (token ids are no float32)
        T, B = x.shape[0], x.shape[1]
        if T > self.max_len:
            raise ValueError(f"a sequence of {T} tokens is longer than max_len {self.max_len}")
        V, D, N = p["tok.E"].shape[0], self.D, T * B
        dt = self.dtype
        h = embedding(x, p["tok.E"], ws=ws, key="tok")  # (V, T, B, D)
        h = r(h.reshape(V, T, B, D))
        if probe:
            probe("tok.embedding", h)
        h += p["pos.E"][:, :T, None, :]
        r(h)
        if probe:
            probe("pos.embedding", h)
        h = h.reshape(V, N, D)
        # The compute copy of the weights, which the backward multiplies by: kept, not rounded again.
        cache = {"x": x, "T": T, "B": B, "blocks": [], "stats": [], "weights": p}
        for i in range(self.depth):
            h = self._block_forward(p, i, h, T, B, cache, probe, ws)
        if not self.per_step:
            h = h.reshape(V, T, B, D)[:, T - 1]  # (V, B, D): only the last position is read
        if self.norm == "pre":
            h, cache["ln_f"] = layer_norm(h, p["ln_f.g"], p.get("ln_f.b"), ws=ws, key="ln_f")
            r(h)
            if probe:
                probe("ln_f", h)
        cache["h_head"] = h
        W = p["tok.E"].swapaxes(-1, -2) if self.tied else p["head.W"]
        hh = h.reshape(V, -1, D)
        logits = _linear(hh, W, p.get("head.b"), buffer(ws, "head.out", (V, hh.shape[1], self.output_dim), dt))
        logits = r(logits).reshape((V, T, B, self.output_dim) if self.per_step else (V, B, self.output_dim))
        if probe:
            probe("head.logits", logits)
        return logits, cache

    def _block_forward(self, p, i: int, h: np.ndarray, T: int, B: int, cache: dict, probe: Probe, ws) -> np.ndarray:
        b = f"block.{i}"
        V, N, D = h.shape
        H, dh, dt = self.H, self.dh, h.dtype
        rnd = self.compute.round_
        c: dict = {}

        def norm(x: np.ndarray, name: str, key: str) -> np.ndarray:
            """The LayerNorm `block.i.<name>` of x, rounded and shown; its cache in c[key]."""
            y, c[key] = layer_norm(x, p[f"{b}.{name}.g"], p.get(f"{b}.{name}.b"), ws=ws, key=f"{b}.{key}")
            rnd(y)
            if probe:
                probe(f"{b}.{name}", y)
            return y

        if self.norm == "pre":
            a = norm(h, "ln1", "ln1")
        else:
            a = h
        c["a_in"] = a
        qkv = rnd(_linear(a, p[f"{b}.attn.qkv.W"], p.get(f"{b}.attn.qkv.b"), buffer(ws, f"{b}.qkv", (V, N, 3 * D), dt)))
        if probe:
            probe(f"{b}.attn.qkv", qkv)
        # (V, T, B, 3, H, dh) -> three (V, B, H, T, dh) views
        q, k, v = qkv.reshape(V, T, B, 3, H, dh).transpose(3, 0, 2, 4, 1, 5)
        if self.qk_norm:
            q = norm(q, "attn.q_ln", "q_ln")
            k = norm(k, "attn.k_ln", "k_ln")
        # The attention writes its (V, B, H, T, dh) output straight into the (V, T, B, H, dh)
        # layout the projection reads as (V, N, D): no transposing copy.
        o2 = buffer(ws, f"{b}.o2", (V, T, B, H, dh), dt)
        _, c["attn"], stats = causal_attention(q, k, v, ws=ws, key=f"{b}.attn", probe=probe, name=f"{b}.attn",
                                               out=o2.transpose(0, 2, 3, 1, 4), scratch_key="attn",
                                               round_=rnd if self.compute.active else None)
        cache["stats"].append(stats)
        o2 = o2.reshape(V, N, D)
        c["o2"] = o2
        # The projection goes straight into the residual buffer, h added in place: (y + b) + h
        # is h + (y + b) bit for bit, one (V, N, D) buffer and one pass fewer.
        # Residual sums are not kept for the backward: the mid-block one is shared by all
        # blocks, the block outputs alternate between two buffers (a block reads its input
        # until it writes its output).
        r = rnd(_linear(o2, p[f"{b}.attn.proj.W"], p.get(f"{b}.attn.proj.b"), buffer(ws, "res.mid", (V, N, D), dt)))
        if probe:
            probe(f"{b}.attn.proj", r)
        r += h
        rnd(r)
        if self.norm == "post":
            if probe:
                probe(f"{b}.attn.residual", r)
            a2 = r = norm(r, "ln1", "ln1")
        else:
            if probe:
                probe(f"{b}.attn.residual", r)
            a2 = norm(r, "ln2", "ln2")
        c["a2"] = a2
        R = self.ratio * D
        u = rnd(_linear(a2, p[f"{b}.mlp.fc.W"], p.get(f"{b}.mlp.fc.b"), buffer(ws, f"{b}.u", (V, N, R), dt)))
        if probe:
            probe(f"{b}.mlp.fc", u)
        # gelu(u) is one buffer for all blocks: the backward recomputes it as u s (one multiply)
        # rather than every block keeping a (V, N, rD) array that u and s determine.
        g, s = _gelu(u, ws, f"{b}.gelu", g_key="gelu.g")
        c["u"], c["s"] = u, s
        rnd(g)  # s stays float32: it is inside the fused GELU (the backward rounds u s again)
        if probe:
            probe(f"{b}.mlp.gelu", g)
        out = rnd(_linear(g, p[f"{b}.mlp.proj.W"], p.get(f"{b}.mlp.proj.b"), buffer(ws, f"res.{i % 2}", (V, N, D), dt)))
        if probe:
            probe(f"{b}.mlp.proj", out)
        out += r
        rnd(out)
        if probe:
            probe(f"{b}.mlp.residual", out)
        if self.norm == "post":
            out = norm(out, "ln2", "ln2")
        cache["blocks"].append(c)
        return out

    def diagnostics(self, cache) -> dict[str, np.ndarray]:
        """The step's attention statistics per variant and block, (V, depth) float64:
        `max_attn_logit`, the largest |q.k|/sqrt(dh) (the signal of attention logit growth),
        and `attn_entropy`, the mean entropy of the attention rows."""
        return {"max_attn_logit": np.stack([s["max_logit"] for s in cache["stats"]], axis=1),
                "attn_entropy": np.stack([s["entropy"] for s in cache["stats"]], axis=1)}

    # ------------------------------------------------------------------ backward
    def backward(self, params: dict[str, np.ndarray], cache: dict, dout: np.ndarray,
                 probe: Probe = None, dh_norms: Optional[dict] = None,
                 ws: Optional[Workspace] = None) -> dict[str, np.ndarray]:
        """Gradients of every parameter given dL/dlogits; `dout` may be overwritten.
        (`dh_norms`, the recurrent models' record of the gradient through time, is not kept.)"""
        cr = self.compute
        r = cr.round_
        p = cache["weights"]  # the copy the forward pass multiplied by
        dout = cr.rounded(dout)
        T, B = cache["T"], cache["B"]
        V, D = p["tok.E"].shape[0], self.D
        N, dt = T * B, dout.dtype
        grads: dict[str, np.ndarray] = {}

        def show(name: str, a: np.ndarray) -> None:
            if probe:
                probe(name, a)

        hh = cache["h_head"].reshape(V, -1, D)
        dl = dout.reshape(V, -1, self.output_dim)
        if self.tied:
            dE_head = r(np.matmul(dl.swapaxes(-1, -2), hh))  # (V, O, D): added to tok.E's below
        else:
            grads["head.W"] = r(_weight_grad(hh, dl, buffer(ws, "d.head.W", p["head.W"].shape, dt), ws, "d.head.WT"))
            show("head.W", grads["head.W"])
        if self.bias:
            grads["head.b"] = r(np.sum(dl, axis=1, out=buffer(ws, "d.head.b", (V, self.output_dim), dt)))
            show("head.b", grads["head.b"])
        W = p["tok.E"] if self.tied else p["head.W"].swapaxes(-1, -2)
        dh = r(np.matmul(dl, W, out=buffer(ws, "d.h_head", hh.shape, dt)))
        if self.norm == "pre":
            show("ln_f", dh)
            dh, grads["ln_f.g"], db = layer_norm_backward(dh, cache["ln_f"], ws=ws, key="d.ln_f")
            r(dh)
            show("ln_f.g", r(grads["ln_f.g"]))
            if db is not None:
                grads["ln_f.b"] = r(db)
                show("ln_f.b", db)
        if not self.per_step:  # only the last position fed the head
            full = buffer(ws, "d.h_full", (V, T, B, D), dt)
            full[:, :T - 1] = 0.0
            full[:, T - 1] = dh.reshape(V, B, D)
            dh = full
        dh = dh.reshape(V, N, D)
        for i in range(self.depth - 1, -1, -1):
            dh = self._block_backward(p, i, dh, T, B, cache["blocks"][i], grads, show, ws)
        dh = dh.reshape(V, T, B, D)
        grads["pos.E"] = dpos = buffer(ws, "d.pos.E", p["pos.E"].shape, dt)
        dpos[:, T:] = 0.0
        r(np.sum(dh, axis=2, out=dpos[:, :T]))
        show("pos.embedding", dh)
        show("pos.E", dpos)
        dE = r(embedding_backward(dh, cache["x"], self.input_dim, ws=ws, key="d.tok"))
        if self.tied:
            dE += dE_head
            r(dE)
        grads["tok.E"] = dE
        show("tok.E", dE)
        return {name: grads[name] for name in self.shapes}

    def _block_backward(self, p, i: int, dh: np.ndarray, T: int, B: int, c: dict, grads: dict,
                        show: Callable, ws) -> np.ndarray:
        """dh: dL/d(block output), (V, N, D); returns dL/d(block input). May overwrite dh.

        Scratch buffers are keyed by role, not by block: a block's backward is done with them
        before the next block's starts, so one set serves every block (the parameters'
        gradients keep their own). The input dh may be the "d.a" buffer the previous block
        returned: it is last read (into dr) before this block writes "d.a" again."""
        b = f"block.{i}"
        V, N, D = dh.shape
        H, dh_, dt = self.H, self.dh, dh.dtype
        r = self.compute.round_

        def linear_back(name: str, dy: np.ndarray, x_in: np.ndarray, dx_key: str) -> np.ndarray:
            W = p[f"{name}.W"]
            gw = r(_weight_grad(x_in, dy, buffer(ws, f"d.{name}.W", W.shape, dt), ws, f"d.WT.{name[len(b) + 1:]}"))
            grads[f"{name}.W"] = gw
            show(f"{name}.W", gw)
            if self.bias:
                grads[f"{name}.b"] = gb = r(np.sum(dy, axis=1, out=buffer(ws, f"d.{name}.b", (V, W.shape[-1]), dt)))
                show(f"{name}.b", gb)
            return r(np.matmul(dy, W.swapaxes(-1, -2), out=buffer(ws, dx_key, (V, dy.shape[1], W.shape[-2]), dt)))

        def ln_back(name: str, dy: np.ndarray, key: str, scratch: str = "d.ln") -> np.ndarray:
            dx, grads[f"{name}.g"], db = layer_norm_backward(dy, c[key], ws=ws, key=f"d.{name}", scratch_key=scratch)
            r(dx)
            show(f"{name}.g", r(grads[f"{name}.g"]))
            if db is not None:
                grads[f"{name}.b"] = r(db)
                show(f"{name}.b", db)
            return dx

        if self.norm == "post":
            show(f"{b}.ln2", dh)
            dh = ln_back(f"{b}.ln2", dh, "ln2")
        # MLP: r2 = r + mlp(a2)
        show(f"{b}.mlp.residual", dh)
        # gelu(u) again, into the buffer _gelu_backward then takes as scratch ("d.gelu.t").
        g = r(np.multiply(c["u"], c["s"], out=buffer(ws, "d.gelu.t", c["u"].shape, dt)))
        dg = linear_back(f"{b}.mlp.proj", dh, g, "d.g")
        show(f"{b}.mlp.gelu", dg)
        du = r(_gelu_backward(dg, c["u"], c["s"], ws, "d.gelu"))
        show(f"{b}.mlp.fc", du)
        da2 = linear_back(f"{b}.mlp.fc", du, c["a2"], "d.a2")
        if self.norm == "pre":
            show(f"{b}.ln2", da2)
            dr = ln_back(f"{b}.ln2", da2, "ln2")
            dr += dh
            r(dr)
        else:
            da2 += dh  # a2 is the post-LN stream itself
            r(da2)
            show(f"{b}.ln1", da2)
            dr = ln_back(f"{b}.ln1", da2, "ln1")
        # attention: r = h + proj(attn(qkv(a)))
        show(f"{b}.attn.residual", dr)
        do2 = linear_back(f"{b}.attn.proj", dr, c["o2"], "d.o2")
        show(f"{b}.attn.proj", do2)
        do = do2.reshape(V, T, B, H, dh_).transpose(0, 2, 3, 1, 4)  # (V, B, H, T, dh)
        dqkv = buffer(ws, "d.qkv", (V, N, 3 * D), dt)
        parts = dqkv.reshape(V, T, B, 3, H, dh_).transpose(3, 0, 2, 4, 1, 5)  # views into dqkv
        # Without qk_norm the attention's gradients are dqkv's own parts, written in place.
        dq, dk, dv = causal_attention_backward(do, c["attn"], ws=ws, key="d.attn",
                                               out=None if self.qk_norm else tuple(parts),
                                               round_=r if self.compute.active else None)
        if self.qk_norm:
            # Their own scratch: per head, (V, B, H, T, dh), not the stream's (V, N, D) shape.
            dk = ln_back(f"{b}.attn.k_ln", dk, "k_ln", "d.qk_ln")
            dq = ln_back(f"{b}.attn.q_ln", dq, "q_ln", "d.qk_ln")
            np.copyto(parts[0], dq)
            np.copyto(parts[1], dk)
            np.copyto(parts[2], dv)
        show(f"{b}.attn.qkv", dqkv)
        da = linear_back(f"{b}.attn.qkv", dqkv, c["a_in"], "d.a")
        if self.norm == "pre":
            show(f"{b}.ln1", da)
            dx = ln_back(f"{b}.ln1", da, "ln1")
            dx += dr
        else:
            da += dr
            dx = da
        r(dx)
        return dx
