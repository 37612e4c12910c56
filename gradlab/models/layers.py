"""Layers with a leading variant axis: forward returns a cache, backward(dout, cache).

Parameters carry the variant axis V first: W is (V, fan_in, fan_out), b is (V, fan_out).
Inputs are either shared by all variants, (B, fan_in) (the batch), or per variant,
(V, B, fan_in). np.matmul treats the leading axis as a stack of independent matrix
products, so each variant's numbers are exactly those of a run on its own.
"""

from __future__ import annotations

import numpy as np


def linear_forward(x: np.ndarray, W: np.ndarray, b: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    z = np.matmul(x, W, out=out)
    z += b[:, None, :]
    return z


def linear_backward(dz: np.ndarray, x: np.ndarray, W: np.ndarray, need_dx: bool = True,
                    out: tuple = (None, None, None)):
    """Gradients of a linear layer: (dx, dW, db), into `out` = (dx, dW, db) buffers where given.
    dx is None when the input needs none."""
    dx_out, dW_out, db_out = out
    dW = np.matmul(x.swapaxes(-1, -2), dz, out=dW_out)  # a shared x (B, in) broadcasts over the variants
    # np.sum's own reduction, called directly: np.sum's Python wrapper costs 1-2 us a layer.
    db = np.add.reduce(dz, axis=1, out=db_out)
    dx = np.matmul(dz, W.swapaxes(-1, -2), out=dx_out) if need_dx else None
    return dx, dW, db
