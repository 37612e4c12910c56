"""Optimizers over a stack of variants, applied after clipping.

Each keeps its state per variant (the same leading axis as the parameters), updates the
parameters in place and returns the per-variant L2 norm of the update it applied.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .norms import param_norms, total_norm


class SGD:
    """torch.optim.SGD, exactly: with g the (clipped) gradient,

        g = g + weight_decay * p
        buf = g (first step) | momentum * buf + (1 - dampening) * g
        d = g + momentum * buf (nesterov) | buf (momentum) | g
        p = p - lr * d
    """

    def __init__(self, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0) -> None:
        self.lr, self.momentum, self.dampening = lr, momentum, dampening
        self.nesterov, self.weight_decay = nesterov, weight_decay

    def init(self, params: dict[str, np.ndarray]) -> dict[str, Any]:
        return {"step": 0, "buf": {k: np.zeros_like(v) for k, v in params.items()} if self.momentum else {}}

    def update(self, params: dict[str, np.ndarray], grads: dict[str, np.ndarray], state: dict[str, Any]) -> np.ndarray:
        """Apply one step in place; `grads` may be overwritten. Returns ||lr * d|| per variant."""
        first = state["step"] == 0
        directions = {}
        for name, p in params.items():
            g = grads[name]
            if self.weight_decay:
                g += self.weight_decay * p
            if self.momentum:
                buf = state["buf"][name]
                if first:
                    buf[...] = g
                else:
                    buf *= self.momentum
                    buf += (1.0 - self.dampening) * g if self.dampening else g
                if self.nesterov:
                    g += self.momentum * buf
                else:
                    g = buf
            p -= self.lr * g
            directions[name] = g
        state["step"] += 1
        return self.lr * total_norm(param_norms(directions))

    @staticmethod
    def select(state: dict[str, Any], keep: Sequence[int]) -> dict[str, Any]:
        """The state of a smaller stack (after variants were dropped)."""
        return {"step": state["step"], "buf": {k: v[list(keep)] for k, v in state["buf"].items()}}


def build_optimizer(cfg) -> SGD:
    if cfg.kind == "sgd":
        return SGD(cfg.lr, cfg.momentum, cfg.dampening, cfg.nesterov, cfg.weight_decay)
    raise ValueError(f"unknown optimizer {cfg.kind!r}")
