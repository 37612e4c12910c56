"""Losses over a stack of variants: each returns the per-variant loss (V,) and dL/d(out).

`out` has the variant axis first; targets are shared by every variant and broadcast over it.
Everything stays in out's dtype: constants are Python scalars, which never promote.
"""

from __future__ import annotations

import math

import numpy as np


def one_hot(labels: np.ndarray, n: int, dtype) -> np.ndarray:
    """labels (...) int in [0, n) -> (..., n) of 0/1 in `dtype`."""
    return np.eye(n, dtype=dtype)[labels]


def mse(out: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean squared error over every non-variant entry; out is (V, ..., O), y is (..., O)."""
    diff = out - y
    n = math.prod(diff.shape[1:])
    flat = diff.reshape(diff.shape[0], -1)
    loss = np.vecdot(flat, flat) / n
    diff *= 2.0 / n  # reuse the buffer: dL/d(out) = 2 (out - y) / n
    return loss, diff


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray, z_loss: float = 0.0,
                          stats: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Softmax cross-entropy, mean over every position; logits (V, ..., C), labels int (...).

    Returns the loss (V,) and dL/dlogits = (softmax - onehot) / N, N = labels.size.
    With `z_loss` > 0 adds PaLM's z-loss, z_loss * mean (log Z)^2 with log Z the logsumexp
    of a row: it pulls log Z towards 0 and so keeps the output logits from drifting. A dict
    `stats` receives "logit_z", the (V,) float64 mean log Z, that drift's diagnostic.
    """
    if logits.shape[1:-1] != labels.shape:
        raise ValueError(f"logits {logits.shape} need labels of shape {logits.shape[1:-1]}, got {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise TypeError(f"labels must be integers, got {labels.dtype}")
    n = labels.size
    z_loss = float(z_loss)
    idx = np.broadcast_to(labels[None, ..., None], logits.shape[:-1] + (1,))
    axes = tuple(range(1, logits.ndim - 1))
    # Overflow and NaN are results here (a diverging run), to be reported, not warned about.
    with np.errstate(all="ignore"):
        # Subtracting the max keeps exp <= 1: huge finite logits give a finite loss.
        mx = logits.max(axis=-1, keepdims=True)
        p = logits - mx
        picked = np.take_along_axis(p, idx, axis=-1)[..., 0]
        np.exp(p, out=p)
        total = p.sum(axis=-1)
        log_total = np.log(total)
        # A -inf logit outside the label has probability 0 and leaves the loss finite, but it
        # is a diverged network all the same: 0 * min turns it (and any NaN) into NaN.
        nll = log_total - picked + 0.0 * logits.min(axis=-1)
        loss = nll.sum(axis=axes) / n
        if z_loss or stats is not None:
            log_z = log_total
            log_z += mx[..., 0]
            if stats is not None:
                stats["logit_z"] = log_z.mean(axis=axes, dtype=np.float64)
        if z_loss:
            loss += z_loss * np.vecdot(log_z.reshape(len(log_z), -1), log_z.reshape(len(log_z), -1)) / n
            # d(z log Z^2)/dlogits = 2 z log Z softmax: one per-row factor on the same pass
            # that normalises the softmax.
            log_z *= 2.0 * z_loss
            log_z += 1.0
            log_z /= total
            p *= log_z[..., None]
        else:
            p /= total[..., None]
        # Subtracting 1 at the label alone is bit for bit the one-hot subtraction (x - 0 is x)
        # without building the (..., C) one-hot array.
        at_label = np.take_along_axis(p, idx, axis=-1)
        at_label -= 1.0
        np.put_along_axis(p, idx, at_label, axis=-1)
        p *= 1.0 / n
    return loss, p


def accuracy(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-variant fraction (V,) float64 of positions whose argmax logit is the label."""
    hit = logits.argmax(axis=-1) == labels
    return hit.mean(axis=tuple(range(1, hit.ndim)), dtype=np.float64)


LOSSES = {"mse": mse, "cross_entropy": softmax_cross_entropy}
