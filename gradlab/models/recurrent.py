"""Stacked recurrent networks: Elman RNN, LSTM and GRU, as torch.nn.RNN / LSTM / GRU define
them, with a linear head on the last hidden state or on every step.

Parameters per layer l use torch's names, shapes and gate order, so weights map one to one:
`<kind>.<l>.W_ih` (G*H, in), `W_hh` (G*H, H), `b_ih`, `b_hh` (G*H,), with G = 1 (rnn),
4 (lstm: i, f, g, o) or 3 (gru: r, z, n); then `head.W` (H, O) and `head.b` (O,). Like every
gradlab model they carry the variant axis V first.

Inputs are time-major, (T, B, in), shared by all variants. The input projections of all
steps are one matmul per layer; only the recurrence runs step by step. Backpropagation
through time collects the per-step gate gradients and turns them into weight gradients with
one matmul per weight, again outside the time loop.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from .activations import activation
from ..norms import row_norms
from .init import init_weight, orthogonal
from .workspace import Workspace, buffer, zeros

Probe = Optional[Callable[[str, np.ndarray], None]]

GATES = {"rnn": 1, "lstm": 4, "gru": 3}


def _t(a: np.ndarray) -> np.ndarray:
    return a.swapaxes(-1, -2)


def _gates(a: np.ndarray, n: int) -> list[np.ndarray]:
    """The n gate blocks of the last axis, as views (np.split costs more Python per call)."""
    H = a.shape[-1] // n
    return [a[..., k * H:(k + 1) * H] for k in range(n)]


def _sigmoid(a: np.ndarray) -> np.ndarray:
    """In place: 1 / (1 + exp(-a)). NumPy vectorises float32 exp but not tanh, so this is about
    twice as fast as the tanh form. exp(-a) overflows to inf below a = -88 (float32), which
    gives the right 0: that warning is not news."""
    np.negative(a, out=a)
    with np.errstate(over="ignore"):
        np.exp(a, out=a)
    a += 1.0
    return np.divide(1.0, a, out=a)


class Recurrent:
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
    def param_names(self) -> list[str]:
        return list(self.shapes)

    def layer_names(self) -> list[str]:
        return [f"{self.kind}.{l}" for l in range(self.depth)]

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
        caches = []
        seq = x
        for l in range(self.depth):
            p = f"{self.kind}.{l}"
            cache = self._layer_forward(params, p, seq, probe, ws)
            caches.append(cache)
            seq = cache["H"]
        W, b = params["head.W"], params["head.b"]
        top = seq if self.per_step else seq[:, -1]
        out = np.matmul(top, W[:, None] if self.per_step else W)
        out += b[:, None, None, :] if self.per_step else b[:, None, :]
        if probe:
            probe("head.linear", out)
        return out, {"x": x, "layers": caches}

    def _layer_forward(self, params, p: str, seq: np.ndarray, probe: Probe, ws: Optional[Workspace]) -> dict:
        W_ih, W_hh, b_ih, b_hh = (params[f"{p}.{n}"] for n in ("W_ih", "W_hh", "b_ih", "b_hh"))
        if self.kind == "lstm":
            # Gates reordered to (i, f, o, g): the three sigmoids become one call on one block.
            P = self._lstm_order(W_hh.shape[-2])
            W_ih, W_hh = W_ih[:, P], W_hh[:, P]
            b_ih, b_hh = b_ih[:, P], b_hh[:, P]
        V, H = W_hh.shape[0], self.width
        T, B = seq.shape[-3], seq.shape[-2]
        # Input projections of every step at once: (V, T, B, G*H).
        GH, dt = W_ih.shape[-2], self.dtype
        A = buffer(ws, f"{p}.A", (V, T, B, GH), dt)
        np.matmul(seq.reshape(*seq.shape[:-3], T * B, seq.shape[-1]), _t(W_ih), out=A.reshape(V, T * B, GH))
        A += b_ih[:, None, None, :]
        Hs = buffer(ws, f"{p}.H", (V, T, B, H), dt)
        at = (lambda name, t: f"{p}.{name} @ t={t}") if probe else None
        W_hhT = np.ascontiguousarray(_t(W_hh))  # BLAS is ~15% faster on it than on the transposed view
        c = {"seq": seq, "A": A, "H": Hs, "gates": None, "extra": None, "cells": None,
             "W_ih": W_ih, "W_hh": W_hh}
        if self.kind == "rnn":
            self._rnn_forward(A, b_hh, W_hhT, Hs, probe, at)
            return c
        c["gates"] = buffer(ws, f"{p}.gates", A.shape, dt)  # the gates after their nonlinearities, for the backward pass
        if self.kind == "lstm":
            c["extra"] = buffer(ws, f"{p}.tanh_c", (V, T, B, H), dt)  # tanh(c_t)
            c["cells"] = buffer(ws, f"{p}.c", (V, T, B, H), dt)
            self._lstm_forward(A, b_hh, W_hhT, Hs, c["gates"], c["extra"], c["cells"], probe, at)
        else:
            c["extra"] = buffer(ws, f"{p}.hh", (V, T, B, 3 * H), dt)  # h W_hh^T + b_hh per step
            self._gru_forward(A, b_hh, W_hhT, Hs, c["gates"], c["extra"], probe, at)
        return c

    @staticmethod
    def _lstm_order(GH: int) -> np.ndarray:
        """Rows of torch's (i, f, g, o) layout in gradlab's internal (i, f, o, g) order."""
        H = GH // 4
        return np.r_[0:2 * H, 3 * H:4 * H, 2 * H:3 * H]

    def _lstm_forward(self, A, b_hh, W_hhT, Hs, gates, tanh_c, cells, probe, at) -> None:
        """c_t = f c_{t-1} + i g, h_t = o tanh(c_t), written into the preallocated buffers
        (gates in the internal order i, f, o, g)."""
        H = Hs.shape[-1]
        A += b_hh[:, None, None, :]  # both biases add to the same pre-activation
        scratch = np.empty(Hs.shape[:1] + Hs.shape[2:], dtype=self.dtype)
        for t in range(Hs.shape[1]):
            pre = gates[:, t]
            if t:
                np.matmul(Hs[:, t - 1], W_hhT, out=pre)
                pre += A[:, t]
            else:
                pre[...] = A[:, 0]  # h_{-1} = 0
            if probe:
                probe(at("gates", t), pre)
            sig, g = pre[..., :3 * H], pre[..., 3 * H:]
            _sigmoid(sig)
            np.tanh(g, out=g)
            c = cells[:, t]
            if t:
                np.multiply(pre[..., H:2 * H], cells[:, t - 1], out=c)
                c += np.multiply(pre[..., :H], g, out=scratch)
            else:
                np.multiply(pre[..., :H], g, out=c)
            if probe:
                probe(at("c", t), c)
            np.multiply(pre[..., 2 * H:3 * H], np.tanh(c, out=tanh_c[:, t]), out=Hs[:, t])
            if probe:
                probe(at("h", t), Hs[:, t])

    def _gru_forward(self, A, b_hh, W_hhT, Hs, gates, HH, probe, at) -> None:
        """r, z = sigmoid(.), n = tanh(A_n + r (W_hn h + b_hn)), h_t = n + z (h_{t-1} - n).
        HH[:, t] keeps h_{t-1} W_hh^T (+ b_hn on the n block): the backward pass needs its n part."""
        H = Hs.shape[-1]
        A[..., :2 * H] += b_hh[:, None, None, :2 * H]  # b_hr, b_hz add like the input biases
        b_hn = b_hh[:, None, 2 * H:]  # b_hn sits inside r's product: kept apart
        for t in range(Hs.shape[1]):
            hh = HH[:, t]
            if t:
                np.matmul(Hs[:, t - 1], W_hhT, out=hh)
            else:
                hh[...] = 0.0  # h_{-1} = 0
            hn = hh[..., 2 * H:]
            hn += b_hn
            if probe:
                probe(at("gates", t), hh)
            gt = gates[:, t]
            rz, n = gt[..., :2 * H], gt[..., 2 * H:]
            np.add(A[:, t, :, :2 * H], hh[..., :2 * H], out=rz)
            _sigmoid(rz)  # r and z together
            np.multiply(gt[..., :H], hn, out=n)
            n += A[:, t, :, 2 * H:]
            np.tanh(n, out=n)
            h = Hs[:, t]
            if t:
                np.subtract(Hs[:, t - 1], n, out=h)
                h *= gt[..., H:2 * H]
                h += n
            else:
                np.multiply(gt[..., H:2 * H], n, out=h)
                np.subtract(n, h, out=h)
            if probe:
                probe(at("h", t), h)

    def _rnn_forward(self, A, b_hh, W_hhT, Hs, probe, at) -> None:
        """The Elman recurrence, written into preallocated buffers: h_t = act(A_t + h_{t-1} W_hh^T)."""
        A += b_hh[:, None, None, :]  # both biases add to the same pre-activation
        buf = np.empty(Hs.shape[:1] + Hs.shape[2:], dtype=self.dtype)
        relu = self._act is activation("relu")[0]
        for t in range(Hs.shape[1]):
            if t:
                np.matmul(Hs[:, t - 1], W_hhT, out=buf)
                buf += A[:, t]
                pre = buf
            else:
                pre = A[:, 0]  # h_{-1} = 0
            if probe:
                probe(at("pre", t), pre)
            if relu:
                np.maximum(pre, 0.0, out=Hs[:, t])
            else:
                np.tanh(pre, out=Hs[:, t])
            if probe:
                probe(at("h", t), Hs[:, t])

    # ------------------------------------------------------------------ backward
    def backward(self, params: dict[str, np.ndarray], cache: dict, dout: np.ndarray,
                 probe: Probe = None, dh_norms: Optional[dict] = None,
                 ws: Optional[Workspace] = None) -> dict[str, np.ndarray]:
        """Gradients of every parameter by backpropagation through time (truncated every
        `tbptt` steps when set). With `dh_norms` (a dict), stores for each layer the per-step
        norm of dL/dh_t, (V, T) float64: the gradient flowing back through time."""
        layers = cache["layers"]
        top = layers[-1]["H"]
        V, T, B, H = top.shape
        W = params["head.W"]
        grads: dict[str, np.ndarray] = {}
        name = f"{self.kind}.{self.depth - 1}.dH"
        dH = (buffer if self.per_step else zeros)(ws, name, (V, T, B, H), self.dtype)
        if self.per_step:
            flat = top.reshape(V, T * B, H)
            grads["head.W"] = np.matmul(_t(flat), dout.reshape(V, T * B, -1))
            grads["head.b"] = dout.sum(axis=(1, 2))
            np.matmul(dout, _t(W)[:, None], out=dH)
        else:
            grads["head.W"] = np.matmul(_t(top[:, -1]), dout)
            grads["head.b"] = dout.sum(axis=1)
            dH[:, -1] = np.matmul(dout, _t(W))
        if probe:
            probe("head.W", grads["head.W"])
            probe("head.b", grads["head.b"])
        for l in range(self.depth - 1, -1, -1):
            p = f"{self.kind}.{l}"
            dH_below = self._layer_backward(params, p, layers[l], dH, grads, probe, need_dx=l > 0, ws=ws)
            if dh_norms is not None:  # dH now holds the total dL/dh_t of every step
                dh_norms[p] = row_norms(dH.reshape(V, T, B * H))
            dH = dH_below
        return {name: grads[name] for name in self.shapes}

    def _layer_backward(self, params, p: str, c: dict, dH: np.ndarray, grads: dict,
                        probe: Probe, need_dx: bool, ws: Optional[Workspace] = None) -> Optional[np.ndarray]:
        """One layer's BPTT. `dH` (V, T, B, H) holds dL/dh_t from above and is overwritten
        with the total dL/dh_t; the weight gradients go into `grads`; returns dL/d(input).
        Every per-step product goes into a preallocated buffer: no temporaries in the loop."""
        W_ih, W_hh = c["W_ih"], c["W_hh"]  # as the forward pass used them (lstm: reordered)
        Hs, gates, extra, cells, seq = c["H"], c["gates"], c["extra"], c["cells"], c["seq"]
        V, T, B, Hd = Hs.shape
        dA = buffer(ws, f"{p}.dA", c["A"].shape, self.dtype)  # d(loss)/d(input projection) at every step
        dGh = buffer(ws, f"{p}.dGh", dA.shape, self.dtype) if self.kind == "gru" else dA  # the recurrent part's (differs for gru)
        dh_next = np.zeros((V, B, Hd), dtype=self.dtype)
        dc_next = np.zeros((V, B, Hd), dtype=self.dtype) if self.kind == "lstm" else None
        s1 = np.empty((V, B, Hd), dtype=self.dtype)
        s3 = np.empty((V, B, 3 * Hd), dtype=self.dtype) if self.kind != "rnn" else None
        relu = self._act is activation("relu")[0]
        at = (lambda name, t: f"{p}.{name} @ t={t}") if probe else None
        K = self.tbptt
        H2, H3 = 2 * Hd, 3 * Hd
        for t in range(T - 1, -1, -1):
            if K is not None and (T - 1 - t) % K == 0 and t != T - 1:
                # A truncation boundary between t and t + 1: no gradient crosses it.
                dh_next[...] = 0.0
                if dc_next is not None:
                    dc_next[...] = 0.0
            dh = dH[:, t]
            dh += dh_next  # dL/dh_t, total: from above (or the head) and from step t + 1
            if probe:
                probe(at("h", t), dh)
            h_prev = Hs[:, t - 1] if t > 0 else None
            da = dA[:, t]
            if self.kind == "rnn":  # the derivative from the saved output, fused into dA
                h = Hs[:, t]
                if relu:
                    np.multiply(dh, h > 0.0, out=da)
                else:
                    np.multiply(h, h, out=s1)
                    np.subtract(1.0, s1, out=s1)
                    np.multiply(dh, s1, out=da)
            elif self.kind == "lstm":  # gates in the internal order i, f, o, g
                gt, tc = gates[:, t], extra[:, t]
                sig, g = gt[..., :H3], gt[..., H3:]
                dsig, dg = da[..., :H3], da[..., H3:]
                np.multiply(dh, tc, out=da[..., H2:H3])  # do
                dc = np.multiply(tc, tc, out=s1)  # dc = dc_next + dh o (1 - tanh(c)^2)
                np.subtract(1.0, dc, out=dc)
                dc *= gt[..., H2:H3]
                dc *= dh
                dc += dc_next
                np.multiply(dc, g, out=da[..., :Hd])  # di
                if t > 0:
                    np.multiply(dc, cells[:, t - 1], out=da[..., Hd:H2])  # df
                else:
                    da[..., Hd:H2] = 0.0
                np.multiply(dc, gt[..., :Hd], out=dg)
                np.multiply(dc, gt[..., Hd:H2], out=dc_next)
                # Through the nonlinearities: sigmoid' = s (1 - s) for i, f, o at once, tanh' = 1 - g^2.
                np.subtract(1.0, sig, out=s3)
                s3 *= sig
                dsig *= s3
                np.multiply(g, g, out=s1)
                np.subtract(1.0, s1, out=s1)
                dg *= s1
            else:  # gru: dn = dh (1 - z) (1 - n^2), dz = dh (h_prev - n) z (1 - z), dr = dn hn r (1 - r)
                gt, hn = gates[:, t], extra[:, t, :, H2:]
                rz, n, z = gt[..., :H2], gt[..., H2:], gt[..., Hd:H2]
                dn = da[..., H2:]
                np.subtract(1.0, z, out=s1)
                np.multiply(dh, s1, out=dn)
                np.multiply(n, n, out=s1)
                np.subtract(1.0, s1, out=s1)
                dn *= s1
                # sigmoid' of r and z first: a huge hn times dn could overflow before the
                # factor r (1 - r) = 0 of a saturated gate, and inf * 0 is NaN.
                s2 = s3[..., :H2]
                np.subtract(1.0, rz, out=s2)
                s2 *= rz
                if h_prev is not None:
                    np.subtract(h_prev, n, out=da[..., Hd:H2])
                else:
                    np.negative(n, out=da[..., Hd:H2])
                np.multiply(hn, s2[..., :Hd], out=da[..., :Hd])
                da[..., :Hd] *= dn
                da[..., Hd:H2] *= s2[..., Hd:]
                da[..., Hd:H2] *= dh
                dgh = dGh[:, t]
                dgh[..., :H2] = da[..., :H2]
                np.multiply(dn, gt[..., :Hd], out=dgh[..., H2:])
            if probe:
                probe(at("gates", t), da)
                self._probe_step(p, t, probe, da, dGh[:, t], h_prev, seq[..., t, :, :])
            # dL/dh_{t-1} through the recurrence
            if t:
                np.matmul(dGh[:, t], W_hh, out=dh_next)
                if self.kind == "gru":
                    dh_next += np.multiply(dh, gt[..., Hd:H2], out=s1)
        # Weight gradients: one matmul each over all steps (h_{-1} = 0 adds nothing).
        TB = T * B
        G = dA.shape[-1]
        dGh_f = dGh.reshape(V, TB, G)
        dA_f = dA.reshape(V, TB, G)
        x_f = seq.reshape(*seq.shape[:-3], TB, seq.shape[-1])
        g_hh = np.matmul(_t(dGh[:, 1:].reshape(V, (T - 1) * B, G)),
                         Hs[:, :-1].reshape(V, (T - 1) * B, Hd)) if T > 1 else np.zeros_like(W_hh)
        layer = {"W_ih": np.matmul(_t(dA_f), x_f), "W_hh": g_hh,
                 "b_ih": dA_f.sum(axis=1), "b_hh": dGh_f.sum(axis=1)}
        if self.kind == "lstm":  # back to torch's (i, f, g, o) rows
            back = np.argsort(self._lstm_order(G))
            layer = {k: v[:, back] for k, v in layer.items()}
        for k, v in layer.items():
            grads[f"{p}.{k}"] = v
        if need_dx:  # the layer below's dL/dh, from above
            dx = buffer(ws, f"{self.kind}.{int(p.split('.')[-1]) - 1}.dH", (V, T, B, W_ih.shape[-1]), self.dtype)
            np.matmul(dA_f, W_ih, out=dx.reshape(V, TB, -1))
            return dx
        return None

    def _probe_step(self, p, t, probe, dA_t, dGh_t, h_prev, x_t) -> None:
        """Locate mode only: each step's contribution to the weight gradients."""
        if h_prev is not None:
            probe(f"{p}.W_hh @ t={t}", np.matmul(_t(dGh_t), h_prev))
        probe(f"{p}.b_hh @ t={t}", dGh_t.sum(axis=1))
        probe(f"{p}.W_ih @ t={t}", np.matmul(_t(dA_t), x_t))
        probe(f"{p}.b_ih @ t={t}", dA_t.sum(axis=1))
