"""Spike skipping: a rule that leaves the gradient alone and tells the optimizer to skip a step.

A skipped step leaves the parameters and the optimizer state untouched (the training loop
restores the skipped variants' slices after the stacked optimizer call). Zeroing the
gradient instead would not be a skip: momentum and Adam's moments would still move, and
Adam's step count would advance.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from .transforms import Transform, finish, register


@register("skip")
class SkipSpikes(Transform):
    """OLMo-core's SkipStepOptimizer (allenai/OLMo-core, olmo_core/optim/skip_step_optimizer.py)
    on the gradient norm, with optax.apply_if_finite for non-finite gradients:

    - the history holds the global pre-clip gradient norm of the last `window` steps before
      this one (every finite one, skipped or not);
    - once the history and this step together hold max(20, window // 2) norms, the step is
      skipped unless |g - mean| / std <= sigma, with mean and std (Bessel-corrected, as
      torch.std_mean) of the history;
    - with `nonfinite`, a NaN or inf gradient is skipped instead of diverging, unless it is
      the (max_consecutive + 1)-th in a row: then it goes through and the run diverges
      (optax apply_if_finite's max_consecutive_errors). A non-finite norm never enters
      the history.

    The rule judges the norm before any rule (ctx.raw_norm), as OLMo-core's clipping
    callback hands the skipping optimizer the pre-clip norm, wherever it sits in a chain.
    """

    columns = ("skipped",)

    def __init__(self, configs: Sequence[Any]) -> None:
        super().__init__(configs)
        self.sigma = [float(c.sigma) for c in configs]
        self.nonfinite = [bool(c.nonfinite) for c in configs]
        self.max_consecutive = [int(c.max_consecutive) for c in configs]

    @staticmethod
    def group_key(config) -> tuple:
        return (config.window,)  # the history's width

    def init(self, params):
        V, w = len(self.configs), (self.configs[0].window if self.configs else 1)
        return {"norms": np.zeros((V, w)), "count": np.zeros(V, np.int64), "bad_run": np.zeros(V, np.int64)}

    def update(self, grads, state, params, ctx):
        l2 = ctx.grad_norm
        skipped = np.zeros(l2.shape, bool)
        hist, count, bad_run = state["norms"], state["count"], state["bad_run"]
        window = hist.shape[1]
        for v, g in enumerate(ctx.raw_norm.tolist()):
            if not math.isfinite(g):
                bad_run[v] += 1
                skipped[v] = self.nonfinite[v] and bad_run[v] <= self.max_consecutive[v]
                continue
            bad_run[v] = 0
            n = int(min(count[v], window))
            if n + 1 >= max(20, window // 2):
                prev = hist[v, window - n:]
                mean, std = float(np.mean(prev)), float(np.std(prev, ddof=1))
                # torch divides by a zero std too: inf, or NaN for g == mean; both skip.
                z = abs(g - mean) / std if std else (math.inf if g != mean else math.nan)
                skipped[v] = not z <= self.sigma[v]
            hist[v, :-1] = hist[v, 1:]  # oldest out, newest in: the history in step order
            hist[v, -1] = g
            count[v] += 1
        out = finish(l2, l2.copy(), np.zeros(l2.shape, bool), coef=np.ones(l2.shape))
        out["skipped"] = skipped
        return grads, state, out
