"""Stacked recurrent networks: Elman RNN, LSTM and GRU, as torch.nn.RNN / LSTM / GRU define
them, with a linear head on the last hidden state or on every step.

Parameters per layer l use torch's names, shapes and gate order, so weights map one to one:
`<kind>.<l>.W_ih` (G*H, in), `W_hh` (G*H, H), `b_ih`, `b_hh` (G*H,), with G = 1 (rnn),
4 (lstm: i, f, g, o) or 3 (gru: r, z, n); then `head.W` (H, O) and `head.b` (O,). Like every
gradlab model they carry the variant axis V first.

Inputs are time-major, (T, B, in), shared by all variants. Inside, every state and gate
tensor is feature-major, (V, T, features, B), so that a step's gate block is contiguous.
Each step's input projection is computed inside the time loop, into one cache-resident block
(see `_inputs`). Backpropagation through time collects the per-step gate gradients and turns
them into weight gradients with one matmul per weight, again outside the time loop.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from ..kinds import ParamSpec
from .base import Model
from .activations import activation
from ..norms import row_norms
from .init import init_weight, orthogonal
from .workspace import Workspace, buffer

Probe = Optional[Callable[[str, np.ndarray], None]]

GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def _t(a: np.ndarray) -> np.ndarray:
    return a.swapaxes(-1, -2)


def _sigmoid(a: np.ndarray) -> np.ndarray:
    """In place: 1 / (1 + exp(-a)). exp(-a) overflows to inf below a = -88 (float32), which
    gives the right 0: the callers run their time loops under np.errstate(over="ignore") (one
    context for the loop: entering one costs about 1 us, a tenth of a step's recurrent product)."""
    np.negative(a, out=a)
    np.exp(a, out=a)
    a += 1.0
    return np.divide(1.0, a, out=a)


def _steps(ws: Optional[Workspace], key: str, base: np.ndarray, block: Optional[tuple[int, int]] = None) -> list:
    """[base[:, t, a:b] for every t]: a time loop's per-step views of a (V, T, ...) buffer, made
    in one pass (the list of the time-major view) rather than by indexing in the loop, which
    costs 0.15-0.2 us a view, and a recurrent step takes 10-25 of them. With a workspace they
    are kept while `base` is the same buffer: made once, not every training step."""
    def make() -> list:
        a = base if block is None else base[:, :, block[0]:block[1]]
        return list(a.swapaxes(0, 1))
    return make() if ws is None else ws.derived(f"{key}[{block}]", base, make)


def _columns(b: np.ndarray, B: int) -> np.ndarray:
    """A bias (V, n) as a contiguous (V, 1, n, B) block, every column b: added to a
    (V, T, n, B) tensor it broadcasts over T only, with a contiguous inner loop. The
    (V, 1, n, 1) view's stride-0 inner loop over B made the same additions (the same bits)
    2.5x slower."""
    out = np.empty(b.shape + (B,), dtype=b.dtype)
    out[...] = b[..., None]
    return out[:, None]


class Recurrent(Model):
    def __init__(self, kind: str, depth: int, width: int, input_dim: int, output_dim: int,
                 per_step: bool = False, activation_name: str = "tanh",
                 init_scheme: str = "orthogonal", gain: float = 1.0,
                 input_scheme: str = "xavier", input_gain: float = 1.0,
                 dtype: str = "float32", tbptt: Optional[int] = None) -> None:
        self.kind, self.depth, self.width = kind, depth, width
        self.per_step, self.tbptt = per_step, tbptt
        self.init_scheme, self.gain = init_scheme, gain
        self.input_scheme, self.input_gain = input_scheme, input_gain
        self.dtype = np.dtype(dtype)
        self.G = GATES[kind]
        self._act, self._act_back = activation(activation_name if kind == "rnn" else "tanh")
        gh = self.G * width
        self.shapes: dict[str, tuple[int, ...]] = {}
        for l in range(depth):
            p = f"{kind}.{l}"
            self.shapes[f"{p}.W_ih"] = (gh, input_dim if l == 0 else width)
            self.shapes[f"{p}.W_hh"] = (gh, width)
            self.shapes[f"{p}.b_ih"] = (gh,)
            self.shapes[f"{p}.b_hh"] = (gh,)
        self.shapes["head.W"] = (width, output_dim)
        self.shapes["head.b"] = (output_dim,)

    @property
    def param_specs(self) -> dict[str, ParamSpec]:
        """Layer, role and input axis of each parameter. The recurrent weights have torch's
        (G*H, in) layout; the head is x @ W, (H, O)."""
        roles = {"W_ih": "input weight", "W_hh": "recurrent weight", "b_ih": "input bias",
                 "b_hh": "recurrent bias", "W": "weight", "b": "bias"}
        specs = {}
        for name, shape in self.shapes.items():
            layer, short = name.rsplit(".", 1)
            specs[name] = ParamSpec(layer, roles[short],
                                    (0 if name == "head.W" else 1) if len(shape) == 2 else None)
        return specs

    # ------------------------------------------------------------------ init
    def init(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Recurrent weights: each gate's (H, H) block orthogonal (or `init_scheme`) x gain, so
        the gain is the block's spectral radius; input weights per gate block by
        `input_scheme`; biases zero; head Glorot."""
        H = self.width
        params = {}
        for name, shape in self.shapes.items():
            if name.endswith(".W_hh") or name.endswith(".W_ih"):
                recurrent = name.endswith(".W_hh")
                scheme = self.init_scheme if recurrent else self.input_scheme
                gain = self.gain if recurrent else self.input_gain
                fan_in = shape[1]
                blocks = [self._block(rng, (fan_in, H), scheme, gain) for _ in range(self.G)]
                w = np.concatenate(blocks, axis=0)
            elif name == "head.W":
                w = init_weight(rng, shape, "xavier", 1.0)
            else:
                w = np.zeros(shape)
            params[name] = w.astype(self.dtype)
        return params

    @staticmethod
    def _block(rng, shape: tuple[int, int], scheme: str, gain: float) -> np.ndarray:
        """One gate's (H, fan_in) block in torch's layout."""
        if scheme == "orthogonal":
            return gain * orthogonal(rng, (shape[1], shape[0]))
        return init_weight(rng, shape, scheme, gain).T

    # ------------------------------------------------------------------ forward
    def forward(self, params: dict[str, np.ndarray], x: np.ndarray, probe: Probe = None,
                ws: Optional[Workspace] = None):
        """x: (T, B, in). Returns (V, B, O), or (V, T, B, O) with per_step, and a cache."""
        cr = self.compute
        params = cr.weights(params, ws)
        caches = []
        seq = cr.rounded(np.ascontiguousarray(_t(x)))  # (T, in, B): feature-major, like every layer's states
        for l in range(self.depth):
            cache = self._layer_forward(params, f"{self.kind}.{l}", seq, probe, ws)
            caches.append(cache)
            seq = cache["H"]
        W, b = params["head.W"], params["head.b"]
        if self.per_step:
            out = np.matmul(_t(seq), W[:, None])  # (V, T, B, H) @ (V, 1, H, O)
            out += b[:, None, None, :]
        else:
            out = np.matmul(_t(seq[:, -1]), W)
            out += b[:, None, :]
        cr.round_(out)
        if probe:
            probe("head.linear", out)
        return out, {"x": x, "layers": caches}

    def _layer_forward(self, params, p: str, seq: np.ndarray, probe: Probe, ws: Optional[Workspace]) -> dict:
        """seq: (T, in, B), shared, or (V, T, in, B). Every tensor of the recurrence is
        feature-major, (..., features, B): a step's gate block is then a contiguous run of
        rows, and NumPy's ufuncs run about 1.5x faster on it than on the strided columns of
        a (B, 4H) row-major step."""
        W_ih, W_hh, b_ih, b_hh = (params[f"{p}.{n}"] for n in ("W_ih", "W_hh", "b_ih", "b_hh"))
        if self.kind == "lstm":
            # Gates reordered to (i, f, o, g): the three sigmoids become one call on one block.
            P = self._lstm_order(W_hh.shape[-2])
            W_ih, W_hh = W_ih[:, P], W_hh[:, P]
            b_ih, b_hh = b_ih[:, P], b_hh[:, P]
        V, GH, H = W_hh.shape
        T, B = seq.shape[-3], seq.shape[-1]
        dt = self.dtype
        Hs = buffer(ws, f"{p}.H", (V, T, H, B), dt)
        at = (lambda name, t: f"{p}.{name} @ t={t}") if probe else None
        c = {"seq": seq, "H": Hs, "gates": None, "extra": None, "cells": None, "W_ih": W_ih, "W_hh": W_hh}
        sv = lambda name, base, block=None: _steps(ws, f"{p}.{name}", base, block)  # noqa: E731
        # b_hh adds to the input projection, as a second bias, on every row but a GRU's n rows
        # (b_hn sits inside r's product there).
        inp = self._inputs(W_ih, b_ih, b_hh, seq, 2 * H if self.kind == "gru" else GH, ws, p)
        if self.kind == "rnn":
            self._rnn_forward(inp, W_hh, Hs, probe, at, sv)
            return c
        c["gates"] = buffer(ws, f"{p}.gates", (V, T, GH, B), dt)  # the gates after their nonlinearities, for the backward pass
        if self.kind == "lstm":
            c["extra"] = buffer(ws, f"{p}.tanh_c", (V, T, H, B), dt)  # tanh(c_t)
            c["cells"] = buffer(ws, f"{p}.c", (V, T, H, B), dt)
            self._lstm_forward(inp, W_hh, Hs, c["gates"], c["extra"], c["cells"], probe, at, sv)
        else:
            c["extra"] = buffer(ws, f"{p}.hh", (V, T, 3 * H, B), dt)  # W_hh h + b_hh per step
            self._gru_forward(inp, b_hh, W_hh, Hs, c["gates"], c["extra"], probe, at, sv)
        return c

    def _inputs(self, W_ih, b_ih, b_hh, seq, hh_rows: int, ws: Optional[Workspace], p: str):
        """inp(t): step t's input projection W_ih x_t + b_ih, plus b_hh on its first `hh_rows`
        rows, (V, G*H, B), in one scratch block that the next call overwrites.

        Computed step by step inside the time loop, where the block stays in cache, rather than
        for all steps at once before it: the same products and additions (a batched matmul is
        one product per step anyway), so the same bits, without writing a (V, T, G*H, B)
        tensor and streaming it through memory twice more for the biases (an LSTM's is 6.5 MB
        at hidden 128, T 100, batch 32)."""
        B = seq.shape[-1]
        V, GH = W_ih.shape[:2]
        a = np.empty((V, GH, B), dtype=self.dtype)
        bi = _columns(b_ih, B)[:, 0]
        bh = _columns(b_hh[:, :hh_rows], B)[:, 0]
        ah = a[:, :hh_rows]
        xs = list(seq) if seq.ndim == 3 else _steps(ws, f"{p}.x", seq)

        def inp(t: int) -> np.ndarray:
            np.matmul(W_ih, xs[t], out=a)
            np.add(a, bi, out=a)
            np.add(ah, bh, out=ah)
            return a
        return inp

    @staticmethod
    def _lstm_order(GH: int) -> np.ndarray:
        """Rows of torch's (i, f, g, o) layout in gradlab's internal (i, f, o, g) order."""
        H = GH // 4
        return np.r_[0:2 * H, 3 * H:4 * H, 2 * H:3 * H]

    def _lstm_forward(self, inp, W_hh, Hs, gates, tanh_c, cells, probe, at, sv) -> None:
        """c_t = f c_{t-1} + i g, h_t = o tanh(c_t), written into the preallocated buffers
        (gates in the internal order i, f, o, g)."""
        H = Hs.shape[-2]
        r = self.compute.round_
        scratch = np.empty(Hs.shape[:1] + Hs.shape[2:], dtype=self.dtype)
        pre_t, h_t, c_t, tc_t = sv("gates", gates), sv("H", Hs), sv("c", cells), sv("tanh_c", tanh_c)
        sig_t, g_t = sv("gates", gates, (0, 3 * H)), sv("gates", gates, (3 * H, 4 * H))
        i_t, f_t, o_t = (sv("gates", gates, (k * H, (k + 1) * H)) for k in range(3))
        with np.errstate(over="ignore"):  # the sigmoids' exp (_sigmoid)
            for t in range(Hs.shape[1]):
                pre = pre_t[t]
                if t:
                    np.matmul(W_hh, h_t[t - 1], out=pre)
                    pre += inp(t)
                else:
                    pre[...] = inp(0)  # h_{-1} = 0
                if probe:
                    probe(at("gates", t), pre)
                g = g_t[t]
                _sigmoid(sig_t[t])
                np.tanh(g, out=g)
                c = c_t[t]
                if t:
                    np.multiply(f_t[t], c_t[t - 1], out=c)
                    c += np.multiply(i_t[t], g, out=scratch)
                else:
                    np.multiply(i_t[t], g, out=c)
                r(c)
                if probe:
                    probe(at("c", t), c)
                r(np.multiply(o_t[t], np.tanh(c, out=tc_t[t]), out=h_t[t]))
                if probe:
                    probe(at("h", t), h_t[t])

    def _gru_forward(self, inp, b_hh, W_hh, Hs, gates, HH, probe, at, sv) -> None:
        """r, z = sigmoid(.), n = tanh(A_n + r (W_hn h + b_hn)), h_t = n + z (h_{t-1} - n).
        HH[:, t] keeps W_hh h_{t-1} (+ b_hn on the n block): the backward pass needs its n part."""
        H = Hs.shape[-2]
        r = self.compute.round_
        b_hn = _columns(b_hh[:, 2 * H:], HH.shape[-1])[:, 0]  # inside r's product: not in inp(t)
        hh_t, hrz_t, hn_t = sv("hh", HH), sv("hh", HH, (0, 2 * H)), sv("hh", HH, (2 * H, 3 * H))
        rz_t, n_t = sv("gates", gates, (0, 2 * H)), sv("gates", gates, (2 * H, 3 * H))
        r_t, z_t = sv("gates", gates, (0, H)), sv("gates", gates, (H, 2 * H))
        h_t = sv("H", Hs)
        with np.errstate(over="ignore"):  # the sigmoids' exp (_sigmoid)
            for t in range(Hs.shape[1]):
                hh = hh_t[t]
                if t:
                    np.matmul(W_hh, h_t[t - 1], out=hh)
                else:
                    hh[...] = 0.0  # h_{-1} = 0
                hn = hn_t[t]
                hn += b_hn
                if probe:
                    probe(at("gates", t), hh)
                rz, n = rz_t[t], n_t[t]
                a = inp(t)
                np.add(a[:, :2 * H], hrz_t[t], out=rz)
                _sigmoid(rz)  # r and z together
                np.multiply(r_t[t], hn, out=n)
                n += a[:, 2 * H:]
                np.tanh(n, out=n)
                h = h_t[t]
                if t:
                    np.subtract(h_t[t - 1], n, out=h)
                    h *= z_t[t]
                    h += n
                else:
                    np.multiply(z_t[t], n, out=h)
                    np.subtract(n, h, out=h)
                r(h)
                if probe:
                    probe(at("h", t), h)

    def _rnn_forward(self, inp, W_hh, Hs, probe, at, sv) -> None:
        """The Elman recurrence, written into preallocated buffers: h_t = act(inp(t) + W_hh h_{t-1})."""
        r = self.compute.round_
        buf = np.empty(Hs.shape[:1] + Hs.shape[2:], dtype=self.dtype)
        relu = self._act is activation("relu")[0]
        h_t = sv("H", Hs)
        for t in range(Hs.shape[1]):
            if t:
                np.matmul(W_hh, h_t[t - 1], out=buf)
                buf += inp(t)
                pre = buf
            else:
                pre = inp(0)  # h_{-1} = 0
            if probe:
                probe(at("pre", t), pre)
            if relu:
                r(np.maximum(pre, 0.0, out=h_t[t]))
            else:
                r(np.tanh(pre, out=h_t[t]))
            if probe:
                probe(at("h", t), h_t[t])

    # ------------------------------------------------------------------ backward
    def backward(self, params: dict[str, np.ndarray], cache: dict, dout: np.ndarray,
                 probe: Probe = None, dh_norms: Optional[dict] = None,
                 ws: Optional[Workspace] = None) -> dict[str, np.ndarray]:
        """Gradients of every parameter by backpropagation through time (truncated every
        `tbptt` steps when set). With `dh_norms` (a dict), stores for each layer the per-step
        norm of dL/dh_t, (V, T) float64: the gradient flowing back through time."""
        layers = cache["layers"]
        top = layers[-1]["H"]  # (V, T, H, B)
        V, T, H, B = top.shape
        cr = self.compute
        W = cr.rounded(params["head.W"])  # the forward pass's compute copy
        dout = cr.rounded(dout)
        grads: dict[str, np.ndarray] = {}
        name = f"{self.kind}.{self.depth - 1}.dH"
        # Without per_step only the last step's dL/dh comes from the head: the other steps of
        # the top layer's dH are never read before the time loop writes them (head_only).
        dH = buffer(ws, name, (V, T, H, B), self.dtype)
        if self.per_step:  # dout: (V, T, B, O)
            grads["head.W"] = np.matmul(top, dout).sum(axis=1)
            grads["head.b"] = dout.sum(axis=(1, 2))
            np.matmul(W[:, None], _t(dout), out=dH)
        else:
            grads["head.W"] = np.matmul(top[:, -1], dout)
            grads["head.b"] = dout.sum(axis=1)
            np.matmul(W, _t(dout), out=dH[:, -1])
        cr.round_(grads["head.W"])
        cr.round_(grads["head.b"])
        cr.round_(dH if self.per_step else dH[:, -1])
        if probe:
            probe("head.W", grads["head.W"])
            probe("head.b", grads["head.b"])
        for l in range(self.depth - 1, -1, -1):
            p = f"{self.kind}.{l}"
            dH_below = self._layer_backward(params, p, layers[l], dH, grads, probe, need_dx=l > 0, ws=ws,
                                            head_only=l == self.depth - 1 and not self.per_step)
            if dh_norms is not None:  # dH now holds the total dL/dh_t of every step
                dh_norms[p] = row_norms(dH.reshape(V, T, H * B))
            dH = dH_below
        return {name: grads[name] for name in self.shapes}

    def _layer_backward(self, params, p: str, c: dict, dH: np.ndarray, grads: dict,
                        probe: Probe, need_dx: bool, ws: Optional[Workspace] = None,
                        head_only: bool = False) -> Optional[np.ndarray]:
        """One layer's BPTT, feature-major like the forward pass. `dH` (V, T, H, B) holds
        dL/dh_t from above and is overwritten with the total dL/dh_t; the weight gradients go
        into `grads`; returns dL/d(input), (V, T, in, B). Every per-step product goes into a
        preallocated buffer: no temporaries in the loop. `head_only`: dH holds the last step's
        alone (the rest, zero from above, is not even initialised: step t + 1 writes dL/dh_t
        there itself; adding it to zeros would give the same bits but for a -0's sign)."""
        W_ih, W_hh = c["W_ih"], c["W_hh"]  # as the forward pass used them (lstm: reordered)
        Hs, gates, extra, cells, seq = c["H"], c["gates"], c["extra"], c["cells"], c["seq"]
        V, T, Hd, B = Hs.shape
        GH = W_hh.shape[-2]
        dt = self.dtype
        dA = buffer(ws, f"{p}.dA", (V, T, GH, B), dt)  # d(loss)/d(input projection) at every step
        dGh = buffer(ws, f"{p}.dGh", dA.shape, dt) if self.kind == "gru" else dA  # the recurrent part's (differs for gru)
        dh_next = np.zeros((V, Hd, B), dtype=dt)
        dc_next = np.zeros((V, Hd, B), dtype=dt) if self.kind == "lstm" else None
        s1 = np.empty((V, Hd, B), dtype=dt)
        s3 = np.empty((V, 3 * Hd, B), dtype=dt) if self.kind != "rnn" else None
        W_hhT = np.ascontiguousarray(_t(W_hh))
        relu = self._act is activation("relu")[0]
        at = (lambda name, t: f"{p}.{name} @ t={t}") if probe else None
        K = self.tbptt
        H2, H3 = 2 * Hd, 3 * Hd
        r = self.compute.round_
        if self.kind == "rnn" and not relu:
            # tanh' = 1 - h^2 of every step in two calls, not three small ones per step: the
            # same ufuncs on the same values (bit for bit), 8% less CPU time for the RNN step.
            # (The same for the LSTM's and GRU's gate derivatives cost 6% more: their extra
            # buffers' memory traffic outweighs the calls saved.)
            np.multiply(Hs, Hs, out=dA)
            np.subtract(1.0, dA, out=dA)
        sv = lambda name, base, block=None: _steps(ws, f"{p}.{name}", base, block)  # noqa: E731
        dh_t, h_t, da_t = sv("dH", dH), sv("H", Hs), sv("dA", dA)
        dgh_t = sv("dGh", dGh) if dGh is not dA else da_t
        if self.kind == "lstm":  # gates in the internal order i, f, o, g
            sig_t, g_t, tc_t, c_t = sv("gates", gates, (0, H3)), sv("gates", gates, (H3, 4 * Hd)), sv("tanh_c", extra), sv("c", cells)
            i_t, f_t, o_t = (sv("gates", gates, (k * Hd, (k + 1) * Hd)) for k in range(3))
            dsig_t, dg_t = sv("dA", dA, (0, H3)), sv("dA", dA, (H3, 4 * Hd))
            di_t, df_t, do_t = (sv("dA", dA, (k * Hd, (k + 1) * Hd)) for k in range(3))
        elif self.kind == "gru":
            rz_t, n_t = sv("gates", gates, (0, H2)), sv("gates", gates, (H2, H3))
            r_t, z_t = sv("gates", gates, (0, Hd)), sv("gates", gates, (Hd, H2))
            hn_t, dn_t = sv("hh", extra, (H2, H3)), sv("dA", dA, (H2, H3))
            dr_t, dz_t, dghn_t = (sv("dGh", dGh, (k * Hd, (k + 1) * Hd)) for k in range(3))
            s2 = s3[:, :H2]  # sigmoid' of r and z
            s2r, s2z = s2[:, :Hd], s2[:, Hd:]
        for t in range(T - 1, -1, -1):
            direct = head_only and t != T - 1  # dh_t[t] already holds dL/dh_t, written by step t + 1
            if K is not None and (T - 1 - t) % K == 0 and t != T - 1:
                # A truncation boundary between t and t + 1: no gradient crosses it.
                (dh_t[t] if direct else dh_next)[...] = 0.0
                if dc_next is not None:
                    dc_next[...] = 0.0
            dh = dh_t[t]
            if not direct:
                dh += dh_next  # dL/dh_t, total: from above (or the head) and from step t + 1
            r(dh)  # the gradient reaching the cell's output h_t (from above and through time)
            if probe:
                probe(at("h", t), dh)
            h_prev = h_t[t - 1] if t > 0 else None
            da = da_t[t]
            if self.kind == "rnn":  # the derivative from the saved output, fused into dA
                if relu:
                    np.multiply(dh, h_t[t] > 0.0, out=da)
                else:
                    da *= dh  # da holds tanh' = 1 - h^2 (before the loop)
            elif self.kind == "lstm":
                sig, g, tc = sig_t[t], g_t[t], tc_t[t]
                dsig, dg = dsig_t[t], dg_t[t]
                np.multiply(dh, tc, out=do_t[t])  # do
                dc = np.multiply(tc, tc, out=s1)  # dc = dc_next + dh o (1 - tanh(c)^2)
                np.subtract(1.0, dc, out=dc)
                dc *= o_t[t]
                dc *= dh
                dc += dc_next
                np.multiply(dc, g, out=di_t[t])  # di
                if t > 0:
                    np.multiply(dc, c_t[t - 1], out=df_t[t])  # df
                else:
                    df_t[t][...] = 0.0
                np.multiply(dc, i_t[t], out=dg)
                np.multiply(dc, f_t[t], out=dc_next)
                # Through the nonlinearities: sigmoid' = s (1 - s) for i, f, o at once, tanh' = 1 - g^2.
                np.subtract(1.0, sig, out=s3)
                s3 *= sig
                dsig *= s3
                np.multiply(g, g, out=s1)
                np.subtract(1.0, s1, out=s1)
                dg *= s1
            else:  # gru: dn = dh (1 - z) (1 - n^2), dz = dh (h_prev - n) z (1 - z), dr = dn hn r (1 - r)
                rz, n, z, hn = rz_t[t], n_t[t], z_t[t], hn_t[t]
                dn = dn_t[t]
                np.subtract(1.0, z, out=s1)
                np.multiply(dh, s1, out=dn)
                np.multiply(n, n, out=s1)
                np.subtract(1.0, s1, out=s1)
                dn *= s1
                # sigmoid' of r and z first: a huge hn times dn could overflow before the
                # factor r (1 - r) = 0 of a saturated gate, and inf * 0 is NaN.
                np.subtract(1.0, rz, out=s2)
                s2 *= rz
                # dr and dz go straight into dGh: dA's r and z rows are the same, laid out
                # from dGh's after the loop (copied here where a probe reads them).
                dr, dz = dr_t[t], dz_t[t]
                if h_prev is not None:
                    np.subtract(h_prev, n, out=dz)
                else:
                    np.negative(n, out=dz)
                np.multiply(hn, s2r, out=dr)
                dr *= dn
                dz *= s2z
                dz *= dh
                np.multiply(dn, r_t[t], out=dghn_t[t])
                if probe:
                    da[:, :H2] = dgh_t[t][:, :H2]
            if probe:
                probe(at("gates", t), da)
                self._probe_step(p, t, probe, da, dgh_t[t], h_prev, seq[..., t, :, :])
            # dL/dh_{t-1} through the recurrence. Under `head_only` nothing comes from above,
            # so it goes straight into dH's row for t - 1, the total there: no pass adding it
            # to zeros (3-7% of an RNN's step).
            if t:
                dh_prev = dh_t[t - 1] if head_only else dh_next
                np.matmul(W_hhT, dgh_t[t], out=dh_prev)
                if self.kind == "gru":
                    dh_prev += np.multiply(dh, z, out=s1)
        if self.kind == "gru" and need_dx and not probe:
            dA[:, :, :H2] = dGh[:, :, :H2]  # the input product below reads dA whole
        # Weight gradients: one matmul each over all steps, the steps laid side by side
        # (h_{-1} = 0 adds nothing).
        def side_by_side(name: str, a: np.ndarray, axes: tuple, shape: Optional[tuple],
                         out: Optional[np.ndarray] = None) -> np.ndarray:
            if out is None:
                out = buffer(ws, f"{p}.{name}", tuple(a.shape[i] for i in axes), dt)
            if axes[-1] == a.ndim - 1 and a.strides[-1] == a.itemsize:
                # Whole rows move: copied as one opaque item each (a void dtype of the row's
                # bytes), 2.5x faster than float by float along rows of B.
                row = np.dtype((np.void, a.shape[-1] * a.itemsize))
                np.copyto(out.view(row)[..., 0], a.view(row)[..., 0].transpose(axes[:-1]))
            else:
                np.copyto(out, a.transpose(axes))  # into a reused buffer: a fresh one costs page faults
            return out if shape is None else out.reshape(shape)

        if self.kind == "gru":
            # dA's r and z rows are dGh's. Laid side by side once, as rows (dGh's n, r, z, then
            # dA's n): dGh's three blocks and dA's (r, z, n) are both 3H contiguous rows, so each
            # weight product reads its operand in place, with the shape (3H rows) it always had:
            # a product split into 2H and H rows may take another BLAS path and round otherwise.
            X = buffer(ws, f"{p}.dGA_r", (V, 4 * Hd, T, B), dt)
            side_by_side("", dGh[:, :, H2:], (0, 2, 1, 3), None, out=X[:, :Hd])
            side_by_side("", dGh[:, :, :H2], (0, 2, 1, 3), None, out=X[:, Hd:H3])
            side_by_side("", dA[:, :, H2:], (0, 2, 1, 3), None, out=X[:, H3:])
            X = X.reshape(V, 4 * Hd, T * B)
            dGh_r, dA_r = X[:, :H3], X[:, Hd:]  # dGh's rows in the order (n, r, z); dA's (r, z, n)
        else:
            dA_r = dGh_r = side_by_side("dA_r", dA, (0, 2, 1, 3), (V, GH, T * B))
        H_r = side_by_side("H_r", Hs[:, :-1], (0, 1, 3, 2), (V, (T - 1) * B, Hd))
        lead = tuple(range(seq.ndim - 3))
        x_r = side_by_side("x_r", seq, (*lead, *(i + len(lead) for i in (0, 2, 1))),
                           (*seq.shape[:-3], T * B, seq.shape[-2]))
        g_hh = np.matmul(dGh_r[:, :, B:], H_r) if T > 1 else np.zeros_like(W_hh)
        if self.kind != "gru":  # one sum when both biases see dA
            g_ih = np.matmul(dA_r, x_r)
            b_ih = dA_r.sum(axis=-1)
            b_hh = b_ih.copy()
        else:
            g_ih = np.matmul(dA_r, x_r)
            g_hh = np.roll(g_hh, -Hd, axis=1)  # rows (n, r, z) back to (r, z, n)
            b_hh = np.roll(dGh_r.sum(axis=-1), -Hd, axis=1)
            # The r and z rows' sums are b_ih's too (the same rows, summed alike).
            b_ih = np.concatenate([b_hh[:, :H2], dA_r[:, H2:].sum(axis=-1)], axis=1)
        layer = {"W_ih": g_ih, "W_hh": g_hh, "b_ih": b_ih, "b_hh": b_hh}
        if self.kind == "lstm":  # back to torch's (i, f, g, o) rows
            back = np.argsort(self._lstm_order(GH))
            layer = {k: v[:, back] for k, v in layer.items()}
        for k, v in layer.items():
            grads[f"{p}.{k}"] = r(v)
        if need_dx:  # the layer below's dL/dh, from above
            dx = buffer(ws, f"{self.kind}.{int(p.split('.')[-1]) - 1}.dH", (V, T, W_ih.shape[-1], B), dt)
            np.matmul(_t(W_ih)[:, None], dA, out=dx)
            return r(dx)
        return None

    def _probe_step(self, p, t, probe, dA_t, dGh_t, h_prev, x_t) -> None:
        """Locate mode only: each step's contribution to the weight gradients (feature-major
        (V, G*H, B) gate gradients, (V, H, B) states, (in, B) or (V, in, B) inputs)."""
        if h_prev is not None:
            probe(f"{p}.W_hh @ t={t}", np.matmul(dGh_t, _t(h_prev)))
        probe(f"{p}.b_hh @ t={t}", dGh_t.sum(axis=-1))
        probe(f"{p}.W_ih @ t={t}", np.matmul(dA_t, _t(x_t)))
        probe(f"{p}.b_ih @ t={t}", dA_t.sum(axis=-1))
