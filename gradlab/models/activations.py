"""Elementwise activations with fused derivatives.

`forward(z)` returns the activation and what its backward needs; the derivative is taken
from the saved output where it can be (tanh' = 1 - h^2, sigmoid' = h(1 - h), relu' = [h > 0]),
so no pre-activation has to be kept. Both work in place where they can: `forward` may
overwrite `z` and `backward` may overwrite `dh` (the callers own both and need neither again),
which saves an allocation per layer and step. All arithmetic stays in the input's dtype: the
constants are Python floats, which NumPy 2 does not let promote a float32 array.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np

_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_A = 0.044715


def _tanh(z):
    h = np.tanh(z, out=z)
    return h, h


def _tanh_back(dh, h):
    d = np.multiply(h, h)
    np.subtract(1.0, d, out=d)
    return np.multiply(dh, d, out=dh)


def _relu(z):
    h = np.maximum(z, 0.0, out=z)
    return h, h


def _relu_back(dh, h):
    return np.multiply(dh, h > 0.0, out=dh)


def _sigmoid(z):
    # exp(-|z|) never overflows, whichever the sign of z.
    e = np.exp(-np.abs(z))
    h = np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(z.dtype, copy=False)
    return h, h


def _sigmoid_back(dh, h):
    return dh * h * (1.0 - h)


def _gelu(z):
    """GELU, tanh approximation (torch's approximate="tanh")."""
    t = np.tanh(_GELU_C * (z + _GELU_A * z * z * z))
    return 0.5 * z * (1.0 + t), (z, t)


def _gelu_back(dh, saved):
    z, t = saved
    # Past |z| = 20, 1 - t^2 is exactly 0 and z^2 may overflow: clipping keeps 0 * inf = NaN
    # out of a gradient that is really just dh (gelu' = 1 or 0 there).
    z = np.clip(z, -20.0, 20.0)
    du = _GELU_C * (1.0 + 3.0 * _GELU_A * z * z)
    return dh * (0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * du)


def _identity(z):
    return z, None


def _identity_back(dh, saved):
    return dh


ACTIVATIONS: dict[str, tuple[Callable[[np.ndarray], tuple[np.ndarray, Any]], Callable[[np.ndarray, Any], np.ndarray]]] = {
    "tanh": (_tanh, _tanh_back),
    "relu": (_relu, _relu_back),
    "sigmoid": (_sigmoid, _sigmoid_back),
    "gelu": (_gelu, _gelu_back),
    "identity": (_identity, _identity_back),
}


def activation(name: str):
    """(forward, backward) pair of the named activation."""
    return ACTIVATIONS[name]
