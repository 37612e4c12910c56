"""The schema of the clipping and skip rules (one `clipping:` entry each), beside the engine's
rules in gradlab.clipping and gradlab.skipping, which read these fields as plain attributes
and never import this module."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Field, TypeAdapter, field_validator, model_validator

from .base import NonNegative, Positive, _Conflict, _Strict

class ClipNone(_Strict):
    """The baseline: gradients go to the optimizer untouched."""

    method: Literal["none"]


class ClipNorm(_Strict):
    """Clip by global norm, as torch.nn.utils.clip_grad_norm_: scale every gradient by
    max_norm / (total_norm + eps) when that is below 1."""

    method: Literal["norm"]
    max_norm: Positive
    norm_type: float = 2.0
    eps: NonNegative = 1e-6

    @field_validator("norm_type", mode="before")
    @classmethod
    def _inf_string(cls, v: object) -> object:
        # YAML spells infinity `.inf`; users write `inf`. Accept both, nothing else textual.
        if isinstance(v, str) and v.strip().lower() in ("inf", "+inf", ".inf", "infinity"):
            return math.inf
        return v

    @field_validator("norm_type")
    @classmethod
    def _p(cls, v: float) -> float:
        if math.isnan(v) or v < 1:
            raise ValueError("norm_type must be a number >= 1 or inf")
        return v


class ClipValue(_Strict):
    """Clip every gradient element to [-clip_value, clip_value] (torch's clip_grad_value_)."""

    method: Literal["value"]
    clip_value: Positive


class ClipPerTensor(_Strict):
    """Clip every parameter tensor to its own L2 norm, as Keras `clipnorm`."""

    method: Literal["per_tensor"]
    max_norm: Positive


class ClipAGC(_Strict):
    """Adaptive gradient clipping (Brock et al. 2021) as optax.adaptive_grad_clip: each unit's
    gradient norm at most `clipping` times its weight norm (at least eps); `exclude` names
    layers left alone (`head`: the output layer)."""

    method: Literal["agc"]
    clipping: Positive = 0.01
    eps: Positive = 0.001
    exclude: Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]], Field(max_length=10_000)] = []


class ClipAutoClip(_Strict):
    """AutoClip (Seetharaman et al. 2020): clip to the `percentile` of the pre-clip norms so
    far (the last `history` of them, if given), the current one included."""

    method: Literal["autoclip"]
    percentile: Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)] = 10.0
    history: Optional[Annotated[int, Field(ge=1, le=10_000_000)]] = None


class ClipZClip(_Strict):
    """ZClip (Kumar et al. 2025): an EMA of the norm's mean and variance; a z-score above
    z_thresh clips adaptively; max_norm caps every step (null: no cap)."""

    method: Literal["zclip"]
    alpha: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)] = 0.97
    z_thresh: Positive = 2.5
    warmup: Annotated[int, Field(ge=1, le=100_000)] = 25
    max_norm: Optional[Positive] = 1.0


class SkipSpikes(_Strict):
    """Skip the optimizer step of a spike (OLMo-core's SkipStepOptimizer on the gradient
    norm); with `nonfinite`, of a NaN/inf gradient too (optax apply_if_finite)."""

    method: Literal["skip"]
    sigma: Positive = 6.0
    window: Annotated[int, Field(ge=2, le=100_000)] = 128
    nonfinite: bool = False
    max_consecutive: Annotated[int, Field(ge=0, le=1_000_000)] = 5


RuleConfig = Annotated[Union[ClipNone, ClipNorm, ClipValue, ClipPerTensor, ClipAGC, ClipAutoClip, ClipZClip,
                             SkipSpikes], Field(discriminator="method")]
# The rules that change the gradient's direction: a chain holds at most one (its cosine
# is then that rule's, with no copy of the gradient).
DIRECTION_RULES = ("value", "per_tensor", "agc")


class ClipChain(_Strict):
    """Rules applied in order, each to what the one before left."""

    method: Literal["chain"]
    rules: Annotated[list[RuleConfig], Field(min_length=1, max_length=100)]

    @model_validator(mode="before")
    @classmethod
    def _flat(cls, data: Any) -> Any:
        rules = data.get("rules") if isinstance(data, dict) else None
        for i, r in enumerate(rules if isinstance(rules, list) else []):
            if isinstance(r, dict) and r.get("method") == "chain":
                raise _Conflict("a chain cannot hold a chain; list all its rules in one chain", ("rules", i, "method"))
        return data

    @model_validator(mode="after")
    def _one_direction(self) -> "ClipChain":
        turning = [i for i, r in enumerate(self.rules) if r.method in DIRECTION_RULES]
        if len(turning) > 1:
            raise _Conflict(f"a chain holds at most one rule that changes the gradient's direction "
                            f"({', '.join(DIRECTION_RULES)}), got {self.rules[turning[0]].method} and "
                            f"{self.rules[turning[1]].method}", ("rules", turning[1], "method"))
        return self


ClipConfig = Annotated[Union[ClipNone, ClipNorm, ClipValue, ClipPerTensor, ClipAGC, ClipAutoClip, ClipZClip,
                             SkipSpikes, ClipChain], Field(discriminator="method")]

# One clipping entry, validated on its own (the report names the variants of a config.yaml).
RULE_ADAPTER = TypeAdapter(ClipConfig)
