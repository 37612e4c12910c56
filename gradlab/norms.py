"""Norms of stacked tensors that neither overflow nor underflow.

The fast path reduces in the tensors' own dtype (no float64 copy of big arrays); only a
tensor whose sum of powers is not finite, or so small it may have underflowed, is measured
again with scaling, in float64. So a float32 gradient of 1e20 has norm 1e20, not inf.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Mapping

import numpy as np


def _slow_norm(g: np.ndarray, p: float) -> float:
    """p-norm of one tensor without overflow or underflow, in float64 (the rare path)."""
    g = np.abs(np.asarray(g, dtype=np.float64)).ravel()
    if g.size == 0:
        return 0.0
    if not np.isfinite(g).all():
        return math.nan if np.isnan(g).any() else math.inf
    m = float(g.max())
    if m == 0.0 or math.isinf(p):
        return m
    return m * float(np.sum((g / m) ** p)) ** (1.0 / p)


def param_norms(grads: Mapping[str, np.ndarray], p: float = 2.0) -> np.ndarray:
    """Per-tensor, per-variant p-norms, shape (n_tensors, V), float64.

    The fast path is one reduction per tensor in the tensors' own dtype (no float64 copy of
    big arrays); the checks and roots run once on the small (n, V) result.
    """
    arrays = list(grads.values())
    V = arrays[0].shape[0] if arrays else 0
    # Each variant's row reduced in contiguous memory: a strided row (a gradient stored with
    # the variant axis inner, as an LSTM's bias gradients are) takes another summation path
    # in NumPy and rounds otherwise than the same row alone, so a stacked run's norm would
    # differ from its single run's in the last bits.
    flats = [_contiguous_rows(g.reshape(V, -1)) for g in arrays]
    with np.errstate(all="ignore"):  # overflow here is expected and handled below
        if math.isinf(p):  # a max cannot overflow, and it propagates NaN
            return np.array([np.maximum(f.max(axis=1), -f.min(axis=1)) if f.shape[1] else np.zeros(V)
                             for f in flats], dtype=np.float64).reshape(len(flats), V)
        return _finish([np.vecdot(f, f) if p == 2.0 else np.sum(np.abs(f) ** p, axis=1) for f in flats],
                       flats, V, p)


def squares(g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, sums): the per-variant rows of a stacked tensor as param_norms reduces them, and
    their sums of squares, its fast path's one reduction. For a caller that has just written
    `g` and measures it while it is still in cache (l2_norms finishes the norms)."""
    f = _contiguous_rows(g.reshape(g.shape[0], -1))
    return f, np.vecdot(f, f)


def l2_norms(measured: list[tuple[np.ndarray, np.ndarray]], V: int) -> np.ndarray:
    """param_norms(tensors) (p = 2), bit for bit, from `measured`, each tensor's squares(),
    in the tensors' order."""
    with np.errstate(all="ignore"):
        return _finish([m[1] for m in measured], [m[0] for m in measured], V, 2.0)


def _finish(parts: list, flats: list, V: int, p: float) -> np.ndarray:
    """The norms from each tensor's (V,) sum of powers (`parts`), re-measuring in float64
    where the fast path overflowed or may have underflowed."""
    # Each tensor's sums in its dtype, cast to float64 once (exactly) as one array.
    sums = np.array(parts, dtype=np.float64).reshape(len(flats), V)
    out = np.sqrt(sums) if p == 2.0 else sums ** (1.0 / p)
    # Overflowed, non-finite, or so small that the powers may have underflowed: re-measure.
    dtypes = {f.dtype for f in flats}
    tiny = _tiny_of(dtypes.pop()) if len(dtypes) == 1 else _tiny(tuple(f.dtype for f in flats))[:, None]
    redo = ~np.isfinite(sums) | (sums < tiny)
    if redo.any():
        for i, v in zip(*np.nonzero(redo)):
            f = flats[i][v]
            out[i, v] = _slow_norm(f, p) if f.any() else 0.0
    return out


def _contiguous_rows(f: np.ndarray) -> np.ndarray:
    return f if f.shape[1] <= 1 or f.strides[1] == f.itemsize else np.ascontiguousarray(f)


@lru_cache(maxsize=None)
def _tiny_of(dtype: np.dtype) -> float:
    return float(np.finfo(dtype).tiny) * 1e4


@lru_cache(maxsize=64)
def _tiny(dtypes: tuple) -> np.ndarray:
    """Below these sums of powers an underflow may have happened (np.finfo is slow per call;
    one array per tuple of dtypes, made once: read-only)."""
    a = np.array([_tiny_of(d) for d in dtypes])
    a.flags.writeable = False
    return a


def row_norms(a: np.ndarray) -> np.ndarray:
    """L2 norms along the last axis, float64, same shape as a[..., 0]; without overflow."""
    flat = a.reshape(-1, a.shape[-1])
    return param_norms({"rows": flat}).reshape(a.shape[:-1])


def total_norm(norms: np.ndarray, p: float = 2.0) -> np.ndarray:
    """Combine per-tensor norms (n, V) into the global norm (V,), as if all were concatenated.

    Each variant is reduced along a contiguous row, so its result does not depend on how
    many other variants share the stack (bit-identical stacked and single runs).
    """
    rows = np.ascontiguousarray(norms.T)
    if rows.shape[1] == 0:
        return np.zeros(rows.shape[0])
    with np.errstate(all="ignore"):
        if math.isinf(p):
            t = rows.max(axis=1)
        else:
            m = rows.max(axis=1, keepdims=True)
            safe = np.where((m > 0) & np.isfinite(m), m, 1.0)
            t = safe[:, 0] * np.sum((rows / safe) ** p, axis=1) ** (1.0 / p)
            t = np.where(m[:, 0] == 0, 0.0, t)
        if not np.isfinite(rows).all():  # (the usual all-finite step skips the four passes)
            # NaN wins over inf, as in torch.
            t = np.where(np.isnan(rows).any(axis=1), np.nan, t)
            t = np.where(np.isinf(rows).any(axis=1) & ~np.isnan(t), np.inf, t)
    return t
