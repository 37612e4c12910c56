"""The one-unit recurrence of Pascanu, Mikolov & Bengio 2013 (section 3.2, Figure 6):
x_t = w sigmoid(x_{t-1}) + b, from the task's x_0, read out as sigmoid(x_T).

Two scalar parameters, `rnn.w` and `rnn.b` (each of shape (1,), so that every norm, rule and
plot treats them as the vectors they already handle), so its whole loss surface is a plane:
the paper draws its wall there. For b near -w/2 and w above 4 the map has two stable fixed
points; where the iterate switches basin (a saddle-node bifurcation), sigmoid(x_T) jumps,
and T steps of that map make the jump as steep as a cliff.

The input x (B, 1) holds x_0 for every example (the scalar_target task); the output
(V, B, 1) is sigmoid(x_T), scored by the task's squared error against its target.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from ..kinds import ParamSpec
from .base import Model
from .workspace import Workspace, buffer

Probe = Optional[Callable[[str, np.ndarray], None]]


def _sigmoid_(a: np.ndarray) -> np.ndarray:
    """sigmoid in place, without overflow warnings for large |a| (exp(-a) -> inf gives 0)."""
    np.negative(a, out=a)
    np.exp(a, out=a)
    a += 1.0
    return np.reciprocal(a, out=a)


class ScalarRNN(Model):
    kind = "scalar_rnn"

    def __init__(self, steps: int, w: float, b: float, dtype: str = "float32") -> None:
        self.T = steps
        self.w0, self.b0 = w, b
        self.dtype = np.dtype(dtype)
        self.shapes = {"rnn.w": (1,), "rnn.b": (1,)}

    @property
    def param_specs(self) -> dict[str, ParamSpec]:
        return {"rnn.w": ParamSpec("rnn", "weight", None), "rnn.b": ParamSpec("rnn", "bias", None)}

    def init(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """The configured (w, b): the paper's trajectories start from chosen points, so the
        model draws nothing (the init stream is left as it is)."""
        return {"rnn.w": np.array([self.w0], dtype=self.dtype), "rnn.b": np.array([self.b0], dtype=self.dtype)}

    def forward(self, params: dict[str, np.ndarray], x: np.ndarray, probe: Probe = None,
                ws: Optional[Workspace] = None):
        """x: (B, 1) of x_0 (or (V, B, 1)). Returns sigmoid(x_T) (V, B, 1) and a cache
        holding sigmoid(x_t) for t = 0..T."""
        c = self.compute
        params = c.weights(params, ws)
        w, b = params["rnn.w"][:, None, :], params["rnn.b"][:, None, :]  # (V, 1, 1)
        V, B = w.shape[0], x.shape[-2]
        dt = np.result_type(x, w)
        s = buffer(ws, "scalar_rnn.s", (self.T + 1, V, B, 1), dt)
        s[0] = x
        c.round_(_sigmoid_(s[0]))
        for t in range(1, self.T + 1):
            xt = s[t]
            np.multiply(w, s[t - 1], out=xt)
            xt += b
            c.round_(xt)
            if probe:
                probe(f"rnn.x @ t={t}", xt)
            c.round_(_sigmoid_(xt))
        out = s[self.T].copy()
        if probe:
            probe("rnn.out", out)
        return out, {"weights": params, "s": s}

    def backward(self, params: dict[str, np.ndarray], cache: dict, dout: np.ndarray,
                 probe: Probe = None, dh_norms: Optional[dict] = None,
                 ws: Optional[Workspace] = None) -> dict[str, np.ndarray]:
        """dL/dw = sum_t dL/dx_t sigmoid(x_{t-1}), dL/db = sum_t dL/dx_t, going back from
        dL/dx_T = dout sigmoid'(x_T) through dx_{t-1} = dx_t w sigmoid'(x_{t-1}). The
        gradient through time is not recorded (`flow`: a one-unit state has no layer profile
        worth the figure)."""
        c = self.compute
        s = cache["s"]
        w = cache["weights"]["rnn.w"][:, None, :]
        V = w.shape[0]
        dw = np.zeros((V, 1), dtype=s.dtype)
        db = np.zeros((V, 1), dtype=s.dtype)
        dx = c.rounded(dout) * (s[self.T] * (1.0 - s[self.T]))
        c.round_(dx)
        for t in range(self.T, 0, -1):
            if probe:
                probe(f"rnn.x @ t={t}", dx)
            dw += np.sum(dx * s[t - 1], axis=1)
            db += np.sum(dx, axis=1)
            if t > 1:
                dx = dx * w
                dx *= s[t - 1] * (1.0 - s[t - 1])
                c.round_(dx)
        c.round_(dw)
        c.round_(db)
        if probe:
            probe("rnn.w", dw)
            probe("rnn.b", db)
        return {"rnn.w": dw, "rnn.b": db}
