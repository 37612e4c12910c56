"""The training loop: every clipping variant of one seed, in lockstep.

All variants start from the same weights and see the same batches; they are stacked on a
leading axis, so one forward, one backward and one optimizer call advance them all (V = 1
is the ordinary single run). A variant that diverges is recorded where its first
non-finite value was born and dropped from the stack; the others go on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .clipping import Clipper, group_order
from .config import ExperimentConfig, run_id, threshold_of, variant_id
from .divergence import FirstNonfinite, locate_step, locate_update
from .metrics import Recorder
from .models import build_model, stack
from .norms import param_norms
from .optim import build_optimizer
from .tasks import build_task


@dataclass
class RunResult:
    """One finished run (a variant of a seed): its records and its outcome."""

    run_id: str
    seed: int
    variant_index: int
    clip: Any
    param_names: list[str]
    metrics_rows: list[list]
    layer_rows: list[list]
    first_nonfinite: Optional[FirstNonfinite]
    summary: dict
    steps: int

    def report(self) -> dict:
        """The run's report.json (and its summary.json entry)."""
        c = self.clip
        return {
            "run_id": self.run_id,
            "seed": self.seed,
            "variant": variant_id(c),
            "variant_index": self.variant_index,
            "method": c.method,
            "threshold": threshold_of(c),
            "norm_type": getattr(c, "norm_type", None),
            "diverged": self.first_nonfinite is not None,
            "divergence_step": self.first_nonfinite.step if self.first_nonfinite else None,
            "first_nonfinite": self.first_nonfinite.to_dict() if self.first_nonfinite else None,
            **self.summary,
            "steps": self.steps,
        }


def seed_streams(seed: int) -> dict[str, np.random.Generator]:
    """Independent generators for init, data and the task's fixed parts, from one seed."""
    init, data, task = np.random.SeedSequence(seed).spawn(3)
    return {"init": np.random.default_rng(init), "data": np.random.default_rng(data),
            "task": np.random.default_rng(task)}


def train_seed(cfg: ExperimentConfig, seed: int, clips: Sequence[Any] | None = None,
               indices: Sequence[int] | None = None,
               on_step: Callable[[int], None] | None = None) -> list[RunResult]:
    """Train the given clipping variants (default: all of the config) of one seed together.

    Returns one RunResult per variant, in the order given. `indices` are the variants'
    positions in the config's clipping list (they only label the results).
    """
    clips = list(cfg.clipping) if clips is None else list(clips)
    indices = list(range(len(clips))) if indices is None else list(indices)
    order = group_order(clips)  # variants sharing a rule sit together: views, not copies
    dtype = cfg.train.dtype
    rng = seed_streams(seed)
    task = build_task(cfg.task, dtype, rng["task"])
    model = build_model(cfg.model, task.input_dim, task.output_dim, dtype)
    p0 = model.init(rng["init"])
    steps = cfg.train.steps

    params = stack(p0, len(order))
    clipper = Clipper([clips[i] for i in order])
    clipper.init(params)
    opt = build_optimizer(cfg.train.optimizer)
    state = opt.init(params)
    rec = Recorder(steps, len(order), model.param_names)
    alive = np.arange(len(order))  # positions in the initial stack still training
    failures: dict[int, FirstNonfinite] = {}
    # Parameters cannot overflow while max|p0| plus the sum of update norms stays below half
    # the dtype's range: only past that is a finiteness scan of the parameters needed.
    limit = float(np.finfo(dtype).max) / 2
    reach = np.full(len(order), max(float(np.abs(p).max()) for p in p0.values()))

    def drop(found: dict[int, tuple[str, str, str]], step: int) -> np.ndarray:
        nonlocal params, state, clipper, alive
        for pos, (phase, where, kind) in found.items():
            failures[int(alive[pos])] = FirstNonfinite(step, phase, where, kind)
        keep = [i for i in range(len(alive)) if i not in found]
        params = {k: v[keep] for k, v in params.items()}
        state = opt.select(state, keep)
        clipper = clipper.select(keep)
        alive = alive[keep]
        return np.asarray(keep, dtype=np.int64)

    data = rng["data"]
    with np.errstate(all="ignore"):  # overflow is a result here; the checks below catch it
        for step in range(steps):
            x, y = task.batch(data)
            out, cache = model.forward(params, x)
            loss, dout = task.loss(out, y)
            grads = model.backward(params, cache, dout)
            norms = param_norms(grads)
            stats = clipper(grads, norms)
            bad = ~(np.isfinite(loss) & np.isfinite(stats.grad_norm))
            if bad.any():
                found = locate_step(model, task, params, x, y, np.flatnonzero(bad))
                rec.log(step, alive[bad], loss[bad], stats.take(bad), np.nan, norms[:, bad], 1.0)
                keep = drop(found, step)
                if not len(alive):
                    break
                grads = {k: g[keep] for k, g in grads.items()}
                loss, stats, norms = loss[keep], stats.take(keep), norms[:, keep]
            update_norm = opt.update(params, grads, state)
            reach[alive] += update_norm
            nonfinite = None
            risky = np.flatnonzero(~(reach[alive] < limit))
            if risky.size:
                found = locate_update(params, risky)
                if found:
                    nonfinite = np.zeros(len(alive))
                    nonfinite[list(found)] = 1.0
            rec.log(step, alive, loss, stats, update_norm, norms, nonfinite)
            if nonfinite is not None:
                drop(found, step)
                if not len(alive):
                    break
            if on_step:
                on_step(len(alive))

    results = []
    for pos, i in enumerate(order):
        fn = failures.get(pos)
        results.append(RunResult(
            run_id=run_id(clips[i], seed), seed=seed, variant_index=indices[i], clip=clips[i],
            param_names=model.param_names, metrics_rows=rec.metrics_rows(pos),
            layer_rows=rec.layer_rows(pos), first_nonfinite=fn,
            summary=rec.summary(pos), steps=steps))
    results.sort(key=lambda r: r.variant_index)
    return results
