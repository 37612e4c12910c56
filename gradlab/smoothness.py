"""Local smoothness along the training trajectory (`train.measure_smoothness: {every: N}`), as
Zhang, He, Sra & Jadbabaie 2020 ("Why gradient clipping accelerates training", ICLR 2020)
estimate it, and the fits their Figure 1 is read by.

At a measured step, with x_prev the weights before the step and x_new after it,

    smoothness = ||grad f(x_mid) - grad f(x_prev)|| / ||x_mid - x_prev||,   x_mid = x_prev + (x_new - x_prev) / 2,

both gradients of the loss on the step's own batch (the paper's code evaluates both points
on the same data). The step is the update the variant actually took (clipped, with momentum
or Adam's scaling, whatever its rule and optimizer did): clipped and unclipped runs are each
measured along their own trajectory, as in the paper, where the measurement follows the
clipped SGD run. A step that moved nothing (a skip rule's, or the loss scale's) has no
direction to measure along: NaN there, as on the steps not measured.

The two gradients come from a model of their own, with float32 compute and no loss scale,
in a workspace of their own, from copies of the weights: the step's gradients, cache and
buffers are never touched, so a measured run trains exactly as an unmeasured one. A run in
float16 compute is measured on the float32 loss along its trajectory (the loss the paper's
smoothness is a property of, not its rounding).

Pure NumPy, no plotting: the fits (`fit_affine`, `correlations`) serve the reproduction and
the plot alike.
"""

from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np


def estimate(grad: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]],
             x_prev: Mapping[str, np.ndarray], x_new: Mapping[str, np.ndarray]) -> np.ndarray:
    """The estimator per variant (the leading axis of every array): ||g(x_mid) - g(x_prev)||
    / ||x_mid - x_prev||, norms over all tensors together, in float64. `grad` maps weights to
    their gradients (a dict of the same keys; what it returns may be overwritten by its next
    call, so the first is copied). NaN where the step is zero or anything is non-finite."""
    names = list(x_prev)
    mid = {k: x_prev[k] + (x_new[k] - x_prev[k]) * np.asarray(0.5, dtype=x_prev[k].dtype) for k in names}
    g0 = {k: np.array(g, dtype=np.float64) for k, g in grad(dict(x_prev)).items()}
    g1 = grad(mid)
    n = next(iter(x_prev.values())).shape[0]
    num, den = np.zeros(n), np.zeros(n)
    for k in names:
        # The step as the weights hold it: x_mid - x_prev in their dtype, not (x_new - x_prev) / 2.
        d = (mid[k].astype(np.float64) - x_prev[k].astype(np.float64)).reshape(n, -1)
        dg = (np.asarray(g1[k], dtype=np.float64) - g0[k]).reshape(n, -1)
        den += np.einsum("ij,ij->i", d, d)
        num += np.einsum("ij,ij->i", dg, dg)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        out = np.sqrt(num) / np.sqrt(den)
    return np.where(np.isfinite(out) & (den > 0), out, np.nan)


class SmoothnessMeter:
    """`train.measure_smoothness`: on steps 0, N, 2N, ... and the last (a run that trains to
    the end ends measured), the estimator along the step each variant took.

    `model` is the run's model built again with float32 compute (its own instance: the
    training model's compute copy and caches stay the step's), `task` the run's task (its
    loss, with the model's z-loss)."""

    def __init__(self, model, task, every: int, steps: int) -> None:
        from .models.workspace import Workspace

        self.model, self.task = model, task
        self.every, self.last = int(every), int(steps) - 1
        self.ws = Workspace()

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.last

    def gradient(self, params: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
        """The loss's gradient at `params` on the batch (x, y), per variant."""
        out, cache = self.model.forward(params, x, ws=self.ws)
        _, dout = self.task.loss(out, y, z_loss=self.model.z_loss)
        return self.model.backward(params, cache, dout, ws=self.ws)

    def measure(self, x_prev: Mapping[str, np.ndarray], x_new: Mapping[str, np.ndarray],
                x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """metrics.csv's `smoothness` (V,) for the step from `x_prev` (a copy taken before the
        update) to `x_new` (the weights after it) on its batch (x, y)."""
        return estimate(lambda p: self.gradient(p, x, y), x_prev, x_new)


# ------------------------------------------------------------------------------- the fits

def fit_affine(grad_norm: Sequence[float], smoothness: Sequence[float]) -> tuple[float, float]:
    """(L0, L1) of the least-squares line smoothness = L0 + L1 * ||grad||, the paper's
    (L0, L1)-smoothness bound read as a fit: NaN, NaN with fewer than two distinct norms."""
    g, s = np.asarray(grad_norm, dtype=np.float64), np.asarray(smoothness, dtype=np.float64)
    if g.size < 2 or np.ptp(g) == 0:
        return math.nan, math.nan
    a = np.stack([np.ones_like(g), g], axis=1)
    (l0, l1), *_ = np.linalg.lstsq(a, s, rcond=None)
    return float(l0), float(l1)


def _ranks(v: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their mean rank (what Spearman's coefficient correlates)."""
    order = np.argsort(v, kind="stable")
    ranks = np.empty(v.size)
    ranks[order] = np.arange(1, v.size + 1)
    sorted_v = v[order]
    i = 0
    while i < v.size:
        j = i
        while j + 1 < v.size and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j + 2) / 2
        i = j + 1
    return ranks


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    den = math.sqrt(float(a @ a) * float(b @ b))
    return float(a @ b) / den if den > 0 else math.nan


def correlations(grad_norm: Sequence[float], smoothness: Sequence[float]) -> dict[str, float]:
    """Pearson's r of log ||grad|| and log smoothness, and Spearman's rho (ranks: no log
    needed), over the pairs where both are finite and positive; NaN with fewer than 3."""
    g, s = np.asarray(grad_norm, dtype=np.float64), np.asarray(smoothness, dtype=np.float64)
    ok = np.isfinite(g) & np.isfinite(s) & (g > 0) & (s > 0)
    g, s = g[ok], s[ok]
    if g.size < 3:
        return {"pearson_log": math.nan, "spearman": math.nan, "n": int(g.size)}
    return {"pearson_log": _pearson(np.log(g), np.log(s)), "spearman": _pearson(_ranks(g), _ranks(s)),
            "n": int(g.size)}


def measured_pairs(columns: Sequence[str], rows: Sequence[Sequence[float]]) -> tuple[list[int], list[float], list[float]]:
    """(steps, grad norms, smoothness) of a run's measured healthy steps, from metrics.csv's
    columns and rows (pure Python, as the run store reads them)."""
    at = {c: i for i, c in enumerate(columns)}
    steps, norms, smooth = [], [], []
    for r in rows:
        s = r[at["smoothness"]]
        if r[at["nonfinite"]] == 0 and not math.isnan(s):
            steps.append(int(r[at["step"]]))
            norms.append(float(r[at["grad_norm"]]))
            smooth.append(float(s))
    return steps, norms, smooth
