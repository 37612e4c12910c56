"""A deep multilayer perceptron: `depth` linear layers, a bias on each, an activation
between them (none after the last).

Functional: parameters live in a flat, ordered mapping (`layer0.W`, `layer0.b`, ...), each
with the variant axis first. `forward` returns the output and a cache; `backward` returns
gradients with the same names. An optional `probe(name, array)` sees every intermediate in
the order it is computed; the divergence locator uses it to find where a NaN was born, and
healthy steps pass no probe, so they pay nothing for it. The training loop passes a
Workspace: then activations and gradients go into buffers reused every step.
"""

from __future__ import annotations

from typing import Callable, Optional

import numpy as np

from ..kinds import ParamSpec
from .base import Model
from .activations import activation
from .init import init_weight
from .layers import linear_backward, linear_forward
from .workspace import Workspace, buffer

Probe = Optional[Callable[[str, np.ndarray], None]]


class MLP(Model):
    kind = "mlp"

    def __init__(self, depth: int, width: int, input_dim: int, output_dim: int,
                 activation_name: str = "tanh", init_scheme: str = "xavier", gain: float = 1.0,
                 dtype: str = "float32") -> None:
        self.depth = depth
        self.activation = activation_name
        self.init_scheme = init_scheme
        self.gain = gain
        self.dtype = np.dtype(dtype)
        dims = [input_dim] + [width] * (depth - 1) + [output_dim]
        self.shapes: dict[str, tuple[int, ...]] = {}
        for i in range(depth):
            self.shapes[f"layer{i}.W"] = (dims[i], dims[i + 1])
            self.shapes[f"layer{i}.b"] = (dims[i + 1],)
        self._act, self._act_back = activation(activation_name)
        # Per layer: its parameters' and buffers' names, made once (the step's loops would
        # otherwise format six strings a layer).
        self._names = [(f"layer{i}.W", f"layer{i}.b", f"mlp.z{i}", f"mlp.dx{i}", f"mlp.dW{i}", f"mlp.db{i}")
                       for i in range(depth)]

    @property
    def param_specs(self) -> dict[str, ParamSpec]:
        """Layer, role and input axis of each parameter: x @ W, so W is (in, out)."""
        return {name: ParamSpec(name.rsplit(".", 1)[0], "weight" if name.endswith(".W") else "bias",
                                0 if name.endswith(".W") else None) for name in self.shapes}

    def init(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One set of initial parameters, without the variant axis; biases start at zero."""
        params = {}
        for name, shape in self.shapes.items():
            if name.endswith(".W"):
                w = init_weight(rng, shape, self.init_scheme, self.gain)
            else:
                w = np.zeros(shape)
            params[name] = w.astype(self.dtype)
        return params

    def forward(self, params: dict[str, np.ndarray], x: np.ndarray, probe: Probe = None,
                ws: Optional[Workspace] = None):
        """x: (B, in) shared by all variants, or (V, B, in). Returns (V, B, out) and a cache."""
        c = self.compute
        params = c.weights(params, ws)
        # The backward multiplies by the same compute copy: kept, not rounded again.
        cache = {"weights": params, "layers": []}
        layers = cache["layers"]
        h = c.rounded(x)
        last = self.depth - 1
        V, B = params["layer0.W"].shape[0], x.shape[-2]
        for i, (w_name, b_name, z_name, *_) in enumerate(self._names):
            W, b = params[w_name], params[b_name]
            z = buffer(ws, z_name, (V, B, W.shape[-1]), np.result_type(h, W))
            c.round_(linear_forward(h, W, b, out=z))
            if probe:
                probe(f"layer{i}.linear", z)
            if i == last:
                layers.append((h, None))
                return z, cache
            h_next, saved = self._act(z)
            c.round_(h_next)
            if probe:
                probe(f"layer{i}.{self.activation}", h_next)
            layers.append((h, saved))
            h = h_next
        raise AssertionError("unreachable")

    def backward(self, params: dict[str, np.ndarray], cache: dict, dout: np.ndarray,
                 probe: Probe = None, dh_norms: Optional[dict] = None,
                 ws: Optional[Workspace] = None) -> dict[str, np.ndarray]:
        """Gradients of the loss for every parameter, given dL/d(output) (V, B, out).
        (`dh_norms` is the recurrent models' gradient-through-time record: an MLP has none.)"""
        c = self.compute
        params = cache["weights"]  # the copy the forward pass multiplied by
        layers = cache["layers"]
        grads: dict[str, np.ndarray] = {}
        dz = c.rounded(dout)
        V, B = dout.shape[0], dout.shape[-2]
        for i in range(self.depth - 1, -1, -1):
            x_in, _ = layers[i]
            w_name, b_name, _, dx_name, dW_name, db_name = self._names[i]
            W = params[w_name]
            dt = np.result_type(x_in, dz)
            out = (buffer(ws, dx_name, (V, B, W.shape[-2]), dt) if i > 0 else None,
                   buffer(ws, dW_name, W.shape, dt), buffer(ws, db_name, (V, W.shape[-1]), dt))
            dx, dW, db = linear_backward(dz, x_in, W, need_dx=i > 0, out=out)
            c.round_(dW)
            c.round_(db)
            grads[w_name], grads[b_name] = dW, db
            if probe:
                probe(w_name, dW)
                probe(b_name, db)
            if i > 0:
                c.round_(dx)
                if probe:
                    probe(f"layer{i - 1}.{self.activation}", dx)
                dz = c.round_(self._act_back(dx, layers[i - 1][1]))
                if probe:
                    probe(f"layer{i - 1}.linear", dz)
        return {name: grads[name] for name in self.shapes}  # forward order, as everywhere else
