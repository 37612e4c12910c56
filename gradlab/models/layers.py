"""Layers with a leading variant axis: forward returns a cache, backward(dout, cache).

Parameters carry the variant axis V first: W is (V, fan_in, fan_out), b is (V, fan_out).
Inputs are either shared by all variants, (B, fan_in) (the batch), or per variant,
(V, B, fan_in). np.matmul treats the leading axis as a stack of independent matrix
products, so each variant's numbers are exactly those of a run on its own.
"""

from __future__ import annotations

import numpy as np


def _t(a: np.ndarray) -> np.ndarray:
    """Transpose the last two axes (a view)."""
    return a.swapaxes(-1, -2)


def linear_forward(x: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    z = np.matmul(x, W)
    z += b[:, None, :]
    return z


def linear_backward(dz: np.ndarray, x: np.ndarray, W: np.ndarray, need_dx: bool = True):
    """Gradients of a linear layer: (dx, dW, db). dx is None when the input needs none."""
    dW = np.matmul(_t(x), dz)  # a shared x (B, in) broadcasts over the variants
    db = dz.sum(axis=1)
    dx = np.matmul(dz, _t(W)) if need_dx else None
    return dx, dW, db
