"""Loss scaling as torch.amp.GradScaler (torch/amp/grad_scaler.py and its `_amp_update_scale_`
and `_amp_foreach_non_finite_check_and_unscale_` CPU kernels), per variant of a stack.

Each variant has its own scale, a float32 number as GradScaler keeps it, and its own growth
tracker (int32): one variant's overflow never moves another's scale, so a variant trained in
a stack has the numbers it has alone.

A step: the loss's gradient is multiplied by the scale (dL/dout * scale, which is what
scaling the loss does to every gradient below it), the backward runs, the gradients are
multiplied by inv_scale (the reciprocal taken in float64 and rounded to float32, as
GradScaler.unscale_ does), and a variant with an inf or NaN among its scaled gradients has
its step skipped. Then the scale moves: times backoff_factor on a skipped step (tracker to 0);
after growth_interval consecutive clean steps, times growth_factor unless that is inf in
float32 (tracker to 0 either way). A static scale never moves. A dynamic scale that falls
below min_scale ends the variant: no finite gradient was to be had at any scale worth using.

What underflow costs (`train.precision.measure_underflow`): UnderflowMeter replays a step's
backward in float32 and counts the gradient entries that float32 has as non-zero and the compute dtype as
zero or subnormal, per parameter tensor.

Hyperparameters are read as attributes of the config object (gradlab.config.PrecisionConfig),
so this engine never imports the schema.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

# float32 throughout: the scale and its products are GradScaler's float32 tensors.
_F32 = np.float32


# The knobs the variants of a stack may hold apart: (V,) arrays when they differ.
KNOBS = ("growth_factor", "backoff_factor", "growth_interval", "min_scale")


class LossScaler:
    """The scales of a stack of variants, with the knobs of one `train.precision`, or of one
    per variant (`configs`, in stack order: their kind and clip order must be `config`'s)."""

    def __init__(self, config: Any, n_variants: int, configs: Any = None) -> None:
        self.kind = config.loss_scale
        self.clip_first = config.clip == "before_unscale"
        own = list(configs) if configs is not None else [config]
        for name, cast in zip(KNOBS, (float, float, int, float)):
            values = [cast(getattr(c, name)) for c in own]
            # One Python number when the variants agree (as before); else a (V,) array whose
            # elements combine with the float64 scale as that number does, bit for bit.
            setattr(self, name, values[0] if len(set(values)) == 1 else np.array(values))
        if isinstance(self.min_scale, np.ndarray):
            # Compared with the float32 scale: a Python float is rounded to float32 there
            # (NumPy's weak scalar), a float64 array would not be (1e-5 is not float32(1e-5)).
            self.min_scale = self.min_scale.astype(_F32)
        inits = [c.init_scale for c in own]
        self.scale = (np.full(n_variants, inits[0], dtype=_F32) if len(set(inits)) == 1
                      else np.array(inits, dtype=np.float64).astype(_F32))
        self.tracker = np.zeros(n_variants, dtype=np.int32)

    def select(self, keep: np.ndarray) -> None:
        """Keep the scales (and the knobs held per variant) of the surviving variants, after
        others were dropped."""
        self.scale, self.tracker = self.scale[keep], self.tracker[keep]
        for name in KNOBS:
            if isinstance(getattr(self, name), np.ndarray):
                setattr(self, name, getattr(self, name)[keep])

    def scale_output_grad(self, dout: np.ndarray) -> np.ndarray:
        """dL/dout times each variant's scale, in dout's dtype (a new array: the task's own
        gradient stays as the locator's replay would compute it)."""
        return dout * self.scale.astype(dout.dtype).reshape((-1,) + (1,) * (dout.ndim - 1))

    def unscale_(self, grads: Mapping[str, np.ndarray]) -> np.ndarray:
        """Multiply each variant's gradients by its inv_scale, in place; return found_inf (V,),
        whether any of its scaled gradients was inf or NaN (looked at before the multiply,
        as the kernel does)."""
        inv = (1.0 / self.scale.astype(np.float64)).astype(_F32)
        found = np.zeros(self.scale.shape, dtype=bool)
        for g in grads.values():
            flat = g.reshape(g.shape[0], -1)
            found |= ~np.isfinite(flat).all(axis=1)
            np.multiply(g, inv.astype(g.dtype).reshape((-1,) + (1,) * (g.ndim - 1)), out=g)
        return found

    def update(self, found_inf: np.ndarray) -> np.ndarray:
        """Move the scales after a step (dynamic only); return the variants whose scale
        collapsed below min_scale."""
        if self.kind != "dynamic":
            return np.zeros(self.scale.shape, dtype=bool)
        # The products are taken in float64 (the kernel multiplies a float by a double) and
        # stored as float32.
        s = self.scale.astype(np.float64)
        grown_tracker = self.tracker + 1
        grow = ~found_inf & (grown_tracker == self.growth_interval)
        with np.errstate(over="ignore"):
            grown = (s * self.growth_factor).astype(_F32)
        backed = (s * self.backoff_factor).astype(_F32)
        self.scale = np.where(found_inf, backed, np.where(grow & np.isfinite(grown), grown, self.scale))
        self.tracker = np.where(found_inf | grow, 0, grown_tracker).astype(np.int32)
        return self.scale < self.min_scale


# ------------------------------------------------------------------------------- underflow

def smallest_normal(compute: str) -> float:
    """The compute dtype's smallest normal number: a gradient below it in magnitude is zero
    or subnormal there (float16: 2^-14 = 6.1e-5; bfloat16: 2^-126, float32's)."""
    import ml_dtypes  # NumPy's finfo knows no bfloat16

    return float(ml_dtypes.finfo(ml_dtypes.bfloat16 if compute == "bfloat16" else np.dtype(compute)).tiny)


def lost_entries(grad: np.ndarray, reference: np.ndarray, tiny: float) -> tuple[np.ndarray, np.ndarray]:
    """Per variant (the leading axis): how many entries the float32 `reference` has that are
    finite and non-zero, and how many of those `grad` (the compute dtype's, held in float32)
    has as 0 or subnormal, |g| < `tiny`. A NaN or inf in `grad` is no underflow (overflow is
    the loss scale's business), and an entry float32 itself has as 0 cannot be lost."""
    n = grad.shape[0]
    ref = reference.reshape(n, -1)
    counted = np.isfinite(ref) & (ref != 0)
    lost = counted & (np.abs(grad.reshape(n, -1)) < tiny)
    return lost.sum(axis=1), counted.sum(axis=1)


def fraction(lost: np.ndarray, counted: np.ndarray) -> np.ndarray:
    """lost / counted as float64, NaN where nothing was counted (no non-zero float32 entry)."""
    lost, counted = np.asarray(lost, dtype=np.float64), np.asarray(counted, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counted > 0, lost / np.where(counted > 0, counted, 1.0), np.nan)


class UnderflowMeter:
    """`train.precision.measure_underflow`: on every N-th step (and the last, so that a run
    that trains to the end ends measured) the step's gradients are compared with the same
    backward pass in float32.

    The reference is the step's backward run again by `reference`, the same model built with
    float32 compute, from the step's own forward pass (its cache: the compute copy of the
    weights and the activations the compute dtype gave) and the same unscaled dL/dout: the two
    differ only by the backward's rounding, which is where underflow loses gradients and
    what a loss scale is for. A replay of the forward pass in float32 as well would count
    more: a ReLU unit that the forward's rounding switched off has a zero gradient in the
    compute dtype and not in float32, which is no underflow (measured, the quickstart in
    bfloat16, float32's range: 0.1-0.6% of the entries "lost" that way, 0% from the same
    forward pass). The step's own gradients are taken as its backward produced them, before
    any unscale or clipping touches them: with loss scaling, the scaled ones (the scale is
    there to lift them out of the subnormals).

    The replay has its own workspace and writes nothing the step reads afterwards (the cache
    is spent once the step's backward has run), so a measured run trains exactly as an
    unmeasured one."""

    def __init__(self, reference, compute: str, every: int, steps: int) -> None:
        from .models.workspace import Workspace

        self.reference = reference
        self.every, self.last = int(every), int(steps) - 1
        self.tiny = smallest_normal(compute)
        self.ws = Workspace()

    def due(self, step: int) -> bool:
        return step % self.every == 0 or step == self.last

    def measure(self, params, cache, dout: np.ndarray, grads) -> dict[str, np.ndarray]:
        """metrics.csv's `underflow` (V,), the fraction over every parameter's entries, and
        `underflow_tensors` (V, n_tensors), each tensor's, in the model's parameter order.
        Call it after the step's backward (the cache is the step's forward's) and before its
        gradients change."""
        # The model may write into what it is given; the step's dL/dout stays as it was.
        ref = self.reference.backward(params, cache, dout.copy(), ws=self.ws)
        counts = [lost_entries(grads[k], ref[k], self.tiny) for k in self.reference.param_names]
        lost = np.stack([c[0] for c in counts], axis=1)
        counted = np.stack([c[1] for c in counts], axis=1)
        return {"underflow": fraction(lost.sum(axis=1), counted.sum(axis=1)),
                "underflow_tensors": fraction(lost, counted)}
