"""Learning-rate schedules: the lr a training step uses, as torch's LambdaLR gives it.

The lr of step t (from 0) is `base_lr * factor(t)`, which is what
`torch.optim.lr_scheduler.LambdaLR(opt, factor)` sets when `scheduler.step()` is called after
each `optimizer.step()`: step 0 uses factor(0). The product is taken in that order, as one
Python float, so that it is torch's group["lr"] bit for bit, and so that it never promotes
a float32 array (a float64 NumPy scalar would).

The schedule follows the loop's step count, not an optimizer's per-variant one: a variant
whose step was skipped still moves along the schedule, as a torch scheduler stepped each
iteration does.

The variants of a stack may have schedules of their own (their lr, warmup_steps, min_lr
differ: `Schedules`); each variant's lr is then the Python float its schedule alone gives.

Reads its config as plain attributes (kind, warmup_steps, min_lr), so the engine never
imports the pydantic schema.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence

import numpy as np

KINDS = ("constant", "linear_warmup", "cosine", "warmup_cosine")


class Schedule:
    """factor(t) of one config, for a run of `steps` steps from an optimizer lr `base_lr`."""

    def __init__(self, cfg: Any, base_lr: float, steps: int) -> None:
        if cfg.kind not in KINDS:
            raise ValueError(f"unknown schedule {cfg.kind!r}")
        self.kind, self.base_lr, self.steps = cfg.kind, float(base_lr), int(steps)
        self.warmup = int(cfg.warmup_steps) if cfg.kind in ("linear_warmup", "warmup_cosine") else 0
        # The cosine's floor as a factor, so that the whole schedule is one LambdaLR lambda.
        self.floor = float(cfg.min_lr) / self.base_lr if cfg.kind in ("cosine", "warmup_cosine") else 0.0

    def factor(self, t: int) -> float:
        if t < self.warmup:
            # (t + 1) / W, not t / W: no step is spent at lr 0, and step W - 1 is the first at
            # the full lr.
            return (t + 1) / self.warmup
        if self.kind in ("constant", "linear_warmup"):
            return 1.0
        # CosineAnnealingLR(T_max=steps - W, eta_min=min_lr) in closed form, from step W.
        span = self.steps - self.warmup
        return self.floor + (1.0 - self.floor) * (1.0 + math.cos(math.pi * (t - self.warmup) / span)) / 2.0

    def lr(self, t: int) -> float:
        """The lr of step t; the optimizer's own lr exactly when the schedule is constant."""
        if self.kind == "constant":
            return self.base_lr
        return self.base_lr * self.factor(t)


    def key(self) -> tuple:
        """Equal keys, equal lr at every step."""
        return (self.kind, self.base_lr, self.steps, self.warmup, self.floor)


class Schedules:
    """The lr of each variant of a stack: one Python float when they all share a schedule (the
    usual case, no per-step cost), else a (V,) float64 array of each variant's own schedule's
    floats (exact: a float64 holds a Python float), over the initial stack."""

    def __init__(self, schedules: Sequence[Schedule]) -> None:
        self.schedules = list(schedules)
        keys = [s.key() for s in self.schedules]
        self.one: Optional[Schedule] = self.schedules[0] if len(set(keys)) <= 1 and self.schedules else None
        # Each distinct schedule once a step, then spread to its variants.
        distinct = list(dict.fromkeys(keys))
        self._distinct = [self.schedules[keys.index(k)] for k in distinct]
        self._where = np.array([distinct.index(k) for k in keys], dtype=np.intp)

    def lr(self, t: int) -> float | np.ndarray:
        if self.one is not None:
            return self.one.lr(t)
        return np.array([s.lr(t) for s in self._distinct], dtype=np.float64)[self._where]


def build_schedule(cfg: Any, optimizer_cfg: Any, steps: int) -> Schedule:
    return Schedule(cfg, optimizer_cfg.lr, steps)


def build_schedules(cfgs: Sequence[Any], optimizer_cfgs: Sequence[Any], steps: int) -> Schedules:
    """The schedules of a stack's variants: variant v's schedule config and optimizer config."""
    return Schedules([build_schedule(c, o, steps) for c, o in zip(cfgs, optimizer_cfgs)])
