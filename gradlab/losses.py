"""Losses over a stack of variants: each returns the per-variant loss (V,) and dL/d(out)."""

from __future__ import annotations

import numpy as np


def mse(out: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean squared error over batch and outputs; out is (V, B, O), y is (B, O)."""
    diff = out - y
    n = diff.shape[1] * diff.shape[2]
    loss = np.vecdot(diff.reshape(diff.shape[0], -1), diff.reshape(diff.shape[0], -1)) / n
    diff *= 2.0 / n  # reuse the buffer: dL/d(out) = 2 (out - y) / n
    return loss, diff


LOSSES = {"mse": mse}
