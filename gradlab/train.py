"""The training loop: every clipping variant of one seed, in lockstep.

All variants start from the same weights and see the same batches; they are stacked on a
leading axis, so one forward, one backward and one optimizer call advance them all (V = 1
is the ordinary single run). A variant that diverges is recorded where its first
non-finite value was born and dropped from the stack; the others go on.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .config import ExperimentConfig, run_id, stack_differences, threshold_of, variant_id
from .divergence import FirstNonfinite, locate_step, locate_update
from .kinds import MODEL_KINDS
from .metrics import Recorder, StepValues
from .models import build_model, stack
from .models.workspace import Workspace
from .norms import param_norms
from .optim import branches, build_optimizer
from .precision import LossScaler, UnderflowMeter
from .schedules import build_schedules
from .smoothness import SmoothnessMeter
from .tasks import build_task
from .transforms import Clipper, apply_updates, columns_of, group_order, take


@dataclass
class RunResult:
    """One finished run (a variant of a seed): its records and its outcome."""

    run_id: str
    seed: int
    variant_index: int
    clip: Any
    param_names: list[str]
    columns: tuple[str, ...]
    metrics_rows: list[list]
    layer_rows: list[list]
    flow_rows: list[list]  # empty for models without recurrence
    first_nonfinite: Optional[FirstNonfinite]
    summary: dict
    steps: int
    # gradlab.environment.current() as it was while the run trained: its digits hold there.
    environment: Optional[dict] = field(default=None)
    # With loss scaling: "tensor (phase)" -> how many skipped steps' first overflow was born there.
    overflow_births: Optional[dict] = field(default=None)
    # attention.csv (the transformer's per-block diagnostics): its header and rows, or empty.
    attention_columns: list[str] = field(default_factory=list)
    attention_rows: list[list] = field(default_factory=list)
    # The run's grid point ({key path: value}, gradlab.config.grid), set by the caller; None
    # outside a grid, and then report.json has no `grid`.
    grid: Optional[dict] = field(default=None)
    # underflow.csv (train.precision.measure_underflow): step, then each parameter tensor's
    # fraction of gradient entries lost to underflow (NaN on the steps not measured); or empty.
    underflow_rows: list[list] = field(default_factory=list)

    def report(self) -> dict:
        """The run's report.json (and its summary.json entry)."""
        c = self.clip
        return {
            "run_id": self.run_id,
            "seed": self.seed,
            "variant": variant_id(c),
            "variant_index": self.variant_index,
            **({"grid": self.grid} if self.grid is not None else {}),
            "method": c.method,
            "threshold": threshold_of(c),
            "norm_type": getattr(c, "norm_type", None),
            "rule": c.describe(),
            "diverged": self.first_nonfinite is not None,
            "divergence_step": self.first_nonfinite.step if self.first_nonfinite else None,
            "first_nonfinite": self.first_nonfinite.to_dict() if self.first_nonfinite else None,
            **self.summary,
            "steps": self.steps,
            **({"environment": self.environment} if self.environment is not None else {}),
            **({"overflow_births": self.overflow_births} if self.overflow_births is not None else {}),
        }


def seed_streams(seed: int) -> dict[str, np.random.Generator]:
    """Independent generators for init, data, the task's fixed parts and the held-out set,
    from one seed. The held-out stream is the fourth child: spawn gives child i the same
    SeedSequence whatever the count, so the first three (and every run made before the
    held-out set existed) keep their numbers bit for bit."""
    init, data, task, heldout = np.random.SeedSequence(seed).spawn(4)
    return {"init": np.random.default_rng(init), "data": np.random.default_rng(data),
            "task": np.random.default_rng(task), "heldout": np.random.default_rng(heldout)}


def evaluate(model, task, params: dict[str, np.ndarray], batches,
             ws: Optional[Workspace] = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-variant held-out loss (V,) and accuracy (None for regression): the mean over the
    batches (of equal size, so the mean of their means is the mean over all examples).

    A forward pass alone, in a workspace of its own (`ws`), never the training one, whose
    buffers hold the step's activations: the training numbers cannot depend on whether a
    step was evaluated, and evaluating allocates nothing after the first time. A non-finite
    result is recorded as it is; it is no divergence, which only training decides."""
    losses, accs = [], []
    for x, y in batches:
        out, _ = model.forward(params, x, ws=ws)
        loss, _ = task.loss(out, y)
        losses.append(loss)
        acc = task.accuracy(out, y)
        if acc is not None:
            accs.append(acc)
    return np.mean(losses, axis=0), (np.mean(accs, axis=0) if accs else None)


class _Stack:
    """The variants still training: their parameters and the chain of transforms a step takes
    them through, each with its state: the clip and skip rules (`transforms`), then the
    optimizer (`opt`, its state `state`). The loop checks the gradients between the two, so
    that a non-finite one is located before any update.

    Positions in `alive` refer to the initial stack, so records never shift when a diverged
    variant is dropped.
    """

    def __init__(self, p0: dict[str, np.ndarray], clips: Sequence[Any], opt, dtype: str, fan_in: dict,
                 scaler: LossScaler | None = None) -> None:
        self.params = stack(p0, len(clips))
        self.scaler = scaler  # the variants' loss scales (train.precision), or None
        self.transforms = Clipper(clips, fan_in)
        self.transforms.init(self.params)
        self.opt = opt
        self.state = opt.init(self.params)
        self.alive = np.arange(len(clips))
        self.failures: dict[int, FirstNonfinite] = {}
        # Parameters cannot overflow while max|p0| plus the sum of update norms stays below
        # half the dtype's range: only past that is a finiteness scan of them needed.
        self.limit = float(np.finfo(dtype).max) / 2
        self.reach = np.full(len(clips), max(float(np.abs(p).max()) for p in p0.values()))

    def drop(self, found: dict[int, tuple[str, str, str]], step: int) -> np.ndarray:
        """Record where each failing variant's first non-finite value was born; drop them."""
        for pos, (phase, where, kind) in found.items():
            self.failures[int(self.alive[pos])] = FirstNonfinite.at(step, phase, where, kind)
        keep = np.asarray([i for i in range(len(self.alive)) if i not in found], dtype=np.int64)
        self.params = {k: v[keep] for k, v in self.params.items()}
        self.state = take(self.state, keep)
        self.transforms = self.transforms.select(keep)
        if self.scaler is not None:
            self.scaler.select(keep)
        self.alive = self.alive[keep]
        return keep

    def update(self, grads: dict[str, np.ndarray], skipped: np.ndarray | None = None,
               lr: float | np.ndarray | None = None) -> tuple[np.ndarray, dict]:
        """The optimizer's transform at this step's lr (one, or one per variant of the current
        stack), then the parameter write; returns the
        update norms and the variants it made non-finite.

        The variants whose step is skipped are stepped with the others (one stacked call)
        and then given back their parameters and optimizer state as they were: bit for bit,
        and at no cost on the steps that skip nothing."""
        skip = np.flatnonzero(skipped) if skipped is not None else np.zeros(0, np.intp)
        if skip.size:
            saved = take({"params": self.params, "state": self.state}, skip)
        updates, self.state, stats = self.opt.update(grads, self.state, self.params, lr=lr)
        apply_updates(self.params, updates)
        update_norm = stats["update_norm"]
        if skip.size:
            _put(self.params, saved["params"], skip)
            _put(self.state, saved["state"], skip)
            update_norm[skip] = 0.0
        self.reach[self.alive] += update_norm
        risky = np.flatnonzero(~(self.reach[self.alive] < self.limit))
        return update_norm, (locate_update(self.params, risky) if risky.size else {})


# The columns a run with loss scaling adds to metrics.csv: whether its step was skipped, and the
# scale the step used.
SCALER_COLUMNS = ("skipped", "loss_scale")


def _scaled_step(run: _Stack, model, cache, dout, flow, ws,
                 measure: Callable[[dict], dict] | None = None) -> tuple[dict, np.ndarray, dict]:
    """A step's backward under loss scaling, then the unscale and the clipping rules, in the
    configured order; the gradients (unscaled), their per-tensor norms and the step's stats.

    The recorded norms are those of the unscaled gradients in either order, so that runs with
    and without scaling compare: with `before_unscale` the rules saw norms `scale` times larger
    (that is the bug it reproduces), divided back for the record. A variant with a non-finite
    scaled gradient is skipped, whatever the rules decided. `measure` (a step whose underflow
    is measured) sees the scaled gradients, before the unscale multiplies them in place."""
    scaler = run.scaler
    used = scaler.scale.copy()  # the scale of this step, before update() moves it
    grads = model.backward(run.params, cache, scaler.scale_output_grad(dout), dh_norms=flow, ws=ws)
    measured = measure(grads) if measure is not None else {}
    if flow:
        # dL/dh_t as the unscaled loss has it: the gradient-through-time plot compares runs.
        for layer, a in flow.items():
            flow[layer] = a / used.astype(np.float64).reshape((-1,) + (1,) * (a.ndim - 1))
    if scaler.clip_first:
        norms = param_norms(grads)
        stats = dict(run.transforms(grads, norms, run.params))
        found_inf = scaler.unscale_(grads)
        inv = 1.0 / used.astype(np.float64)
        norms = norms * inv
        for key in ("grad_norm", "clipped_norm"):
            stats[key] = stats[key] * inv
    else:
        found_inf = scaler.unscale_(grads)
        norms = param_norms(grads)
        stats = dict(run.transforms(grads, norms, run.params))
    rule_skip = stats.get("skipped")
    stats["skipped"] = found_inf if rule_skip is None else (found_inf | rule_skip.astype(bool))
    stats["loss_scale"] = used.astype(np.float64)
    stats["found_inf"] = found_inf
    stats.update(measured)
    return grads, norms, stats


def _put(node: Any, saved: Any, idx: np.ndarray) -> None:
    """Write the slices `saved` (from transforms.take) back into the arrays of `node`."""
    for k, v in node.items():
        if isinstance(v, dict):
            _put(v, saved[k], idx)
        elif isinstance(v, np.ndarray):
            v[idx] = saved[k]


def train_seed(cfg: ExperimentConfig, seed: int, clips: Sequence[Any] | None = None,
               indices: Sequence[int] | None = None,
               on_step: Callable[[int], None] | None = None,
               configs: Sequence[ExperimentConfig] | None = None,
               observe: Callable[..., None] | None = None) -> list[RunResult]:
    """Train the given clipping variants (default: all of the config) of one seed together.

    Returns one RunResult per variant, in the order given. `indices` are the variants'
    positions in the config's clipping list (they only label the results).

    `configs`: one config per variant, each equal to `cfg` but in hyperparameters (optimizer,
    schedule and loss-scale numbers: gradlab.config.stack_key), which that variant trains with;
    each variant's numbers are those of its config trained alone, bit for bit. A config that
    differs elsewhere cannot share the stack (ValueError).

    `observe(step, variants, params, x, y)`: sees each step's parameters before its update
    and the step's batch, and after the last step (step = steps, x = y = None) the final
    ones; row r of every parameter is the variant clips[variants[r]] (those still training).
    It must not write to them (gradlab.landscape records trajectories with it).

    BLAS runs on one thread here, whatever the process asked for: OpenBLAS adds up a matrix
    product in another order on two threads than on one, so a run's numbers would otherwise
    depend on `--workers` and on the machine's core count. Seeds use the cores instead.
    """
    from threadpoolctl import threadpool_limits

    from .environment import current

    with threadpool_limits(1, user_api="blas"):
        results = _train_seed(cfg, seed, clips, indices, on_step, configs, observe)
        env = current()
    for r in results:
        r.environment = env
    return results


def _hyperparameters(cfg: ExperimentConfig, configs: Sequence[ExperimentConfig] | None, n: int) -> list:
    """Each variant's config for its optimizer, schedule and loss scale: `configs`, checked, or `cfg`'s."""
    if configs is None:
        return [cfg] * n
    configs = list(configs)
    if len(configs) != n:
        raise ValueError(f"{len(configs)} configs for {n} clipping variants: give one per variant")
    for i, c in enumerate(configs):
        differ = stack_differences(cfg, c)
        if differ:
            raise ValueError(f"configs[{i}] cannot share this stack: it differs in {', '.join(differ)}, "
                             f"not only in hyperparameters")
    return configs


def _train_seed(cfg: ExperimentConfig, seed: int, clips: Sequence[Any] | None,
                indices: Sequence[int] | None, on_step: Callable[[int], None] | None,
                configs: Sequence[ExperimentConfig] | None = None,
                observe: Callable[..., None] | None = None) -> list[RunResult]:
    clips = list(cfg.clipping) if clips is None else list(clips)
    indices = list(range(len(clips))) if indices is None else list(indices)
    own = _hyperparameters(cfg, configs, len(clips))
    # Variants sharing a rule sit together (views, not copies), and within it those taking the
    # same optimizer branches (one optimizer call).
    order = group_order(clips, [branches(c.train.optimizer) for c in own] if configs else None)
    dtype, steps = cfg.train.dtype, cfg.train.steps
    rng = seed_streams(seed)
    task = build_task(cfg.task, dtype, rng["task"], tokens=MODEL_KINDS[cfg.model.kind].tokens)
    # Every op's values rounded to the compute dtype (gradlab.compute); the masters stay `dtype`.
    model = build_model(cfg.model, task, dtype, cfg.train.tbptt, compute=cfg.train.precision.compute)
    # A gain beyond the dtype's range casts to inf: a result (located at step 0 by the replay,
    # which names the parameter), not a RuntimeWarning.
    with np.errstate(over="ignore"):
        p0 = model.init(rng["init"])
    precision = cfg.train.precision
    scaler = (LossScaler(precision, len(order), [own[i].train.precision for i in order] if configs else None)
              if precision.scaling else None)
    meter = (UnderflowMeter(build_model(cfg.model, task, dtype, cfg.train.tbptt), precision.compute,
                            precision.measure_underflow, steps) if precision.measures_underflow else None)
    smooth = cfg.train.measure_smoothness
    # Its own model (float32 compute) and workspace: the step's buffers stay the step's.
    smoothness = (SmoothnessMeter(build_model(cfg.model, task, dtype, cfg.train.tbptt), task, smooth.every, steps)
                  if smooth is not None else None)
    # Each variant's own optimizer numbers, in stack order (one optimizer when they all agree).
    optimizer = build_optimizer(cfg.train.optimizer, [own[i].train.optimizer for i in order] if configs else None)
    run = _Stack(p0, [clips[i] for i in order], optimizer, dtype, model.fan_in_axes, scaler)
    rec = Recorder(steps, len(order), model.param_names, accuracy=task.classification,
                   extra=[columns_of(clips[i]) + (SCALER_COLUMNS if scaler else ()) + (("underflow",) if meter else ())
                          + (("smoothness",) if smoothness else ()) for i in order])
    recurrent = MODEL_KINDS[cfg.model.kind].flow  # its backward records the gradient through time
    schedule = build_schedules([own[i].train.schedule for i in order], [own[i].train.optimizer for i in order], steps)

    data = rng["data"]
    # Per variant (its place in the initial stack): where the first overflow of each step the
    # loss scale skipped was born, counted (report.json's `overflow_births`).
    births: dict[int, Counter] = {pos: Counter() for pos in range(len(order))}
    ws = Workspace()  # the step's activations and gradients, reused every step
    eval_ws = Workspace()  # the held-out forward passes' own
    with np.errstate(all="ignore"):  # overflow is a result here; the checks below catch it
        heldout = task.heldout(rng["heldout"], cfg.train.evaluate_batches)  # drawn once, before any step
        for step in range(steps):
            x, y = task.batch(data)
            if observe is not None:
                observe(step, np.asarray(order)[run.alive], run.params, x, y)
            out, cache = model.forward(run.params, x, ws=ws)
            diag = model.diagnostics(cache)  # attention statistics (transformer); the loss adds logit_z
            loss, dout = task.loss(out, y, z_loss=model.z_loss, stats=diag)
            flow = {} if recurrent else None
            measure = ((lambda g: meter.measure(run.params, cache, dout, g))  # noqa: E731 (this step's)
                       if meter is not None and meter.due(step) else None)
            if run.scaler is None:
                grads = model.backward(run.params, cache, dout, dh_norms=flow, ws=ws)
                measured = measure(grads) if measure is not None else {}  # before the rules clip in place
                norms = param_norms(grads)
                stats = run.transforms(grads, norms, run.params)  # clip; decide skips
                if measured:
                    stats = {**stats, **measured}
            else:
                grads, norms, stats = _scaled_step(run, model, cache, dout, flow, ws, measure)
            lr = schedule.lr(step)  # once a step: one for the stack, or per variant of the initial stack
            if isinstance(lr, np.ndarray):
                lr = lr[run.alive]
            vals = StepValues(loss, stats, norms, task.accuracy(out, y), flow, lr=lr, diag=diag)
            skipped = stats.get("skipped")
            bad = ~(np.isfinite(loss) & np.isfinite(stats["grad_norm"]))
            if skipped is not None:
                bad &= ~skipped  # a non-finite step skipped on purpose is not a divergence
            if bad.any():
                found = locate_step(model, task, run.params, x, y, np.flatnonzero(bad))
                rec.log(step, run.alive[bad], vals.take(bad), nonfinite=1.0)
                keep = run.drop(found, step)
                if not run.alive.size:
                    break
                grads, vals = {k: g[keep] for k, g in grads.items()}, vals.take(keep)
                skipped = vals.stats.get("skipped")
            found_inf = vals.stats.get("found_inf")
            if found_inf is not None and found_inf.any() and vals.flow:
                # A step the loss scale skipped is no healthy step for the gradient-through-time record.
                ok = ~found_inf
                rec.log_flow(step, run.alive[ok], {k: a[ok] for k, a in vals.flow.items()})
            else:
                rec.log_flow(step, run.alive, vals.flow)
            if found_inf is not None and found_inf.any():
                # Why the scale backs off: the replay names the tensor whose scaled value
                # overflowed first, per skipped variant (a step's cost, on skipped steps only).
                born = locate_step(model, task, run.params, x, y, np.flatnonzero(found_inf),
                                   dout_scale=vals.stats["loss_scale"])
                for pos, (phase, where, _) in born.items():
                    births[int(run.alive[pos])][f"{where} ({phase})"] += 1
            # x_prev, for the smoothness along the step about to be taken (a copy: the update
            # writes the weights in place).
            before = ({k: p.copy() for k, p in run.params.items()}
                      if smoothness is not None and smoothness.due(step) else None)
            vals.update_norm, found = run.update(grads, skipped, vals.lr)
            if before is not None:
                vals.stats = {**vals.stats, "smoothness": smoothness.measure(before, run.params, x, y)}
            if run.scaler is not None:
                # The scale moves after the step, as GradScaler.update; a collapse ends the variant
                # there, unless its update already did.
                collapsed = run.scaler.update(vals.stats["found_inf"].astype(bool))
                for pos in np.flatnonzero(collapsed):
                    found.setdefault(int(pos), ("update", "loss_scale", "loss_scale_collapse"))
            rec.log(step, run.alive, vals,
                    nonfinite=np.isin(np.arange(len(run.alive)), list(found)) if found else None)
            if found:
                run.drop(found, step)
                if not run.alive.size:
                    break
            if cfg.train.evaluates(step):
                rec.log_eval(step, run.alive, *evaluate(model, task, run.params, heldout, eval_ws))
            if on_step:
                on_step(len(run.alive))
        if observe is not None and run.alive.size:
            observe(steps, np.asarray(order)[run.alive], run.params, None, None)

    results = []
    for pos, i in enumerate(order):
        fn = run.failures.get(pos)
        results.append(RunResult(
            run_id=run_id(clips[i], seed), seed=seed, variant_index=indices[i], clip=clips[i],
            overflow_births=dict(births[pos].most_common()) if scaler else None,
            param_names=model.param_names, columns=rec.variant_columns[pos], metrics_rows=rec.metrics_rows(pos),
            layer_rows=rec.layer_rows(pos), flow_rows=rec.flow_rows(pos), first_nonfinite=fn,
            summary=rec.summary(pos), steps=steps,
            attention_columns=rec.attention_columns(), attention_rows=rec.attention_rows(pos),
            underflow_rows=rec.underflow_rows(pos)))
    results.sort(key=lambda r: r.variant_index)
    return results
