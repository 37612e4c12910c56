"""The schema of the clipping and skip rules (one `clipping:` entry each), beside the engine's
rules in gradlab.clipping and gradlab.skipping, which read these fields as plain attributes
and never import this module."""

from __future__ import annotations

import math
from typing import Annotated, Any, Callable, ClassVar, Literal, Optional, Union

from pydantic import Field, TypeAdapter, field_validator, model_validator

from .base import NonNegative, Positive, _Conflict, _Strict


def format_threshold(x: float) -> str:
    """1.0 -> '1', 0.1 -> '0.1', 1e-05 -> '1e-05': short, stable, file-name safe."""
    return f"{x:g}" if math.isfinite(x) else ("inf" if x > 0 else "nan")


def _text(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v).lower() if v is not None else "none"
    if isinstance(v, float):
        return format_threshold(v)
    if isinstance(v, (list, tuple)):
        return ", ".join(_text(x) for x in v)
    return str(v)


class Rule(_Strict):
    """A rule describes itself, so that nothing downstream has to know it: its run id part
    (`variant_id`), a label for tables and legends, and the descriptor report.json records
    (`describe`), from which the report and plots read method, knobs and swept value.

    `knob` is the main knob: report.json's `threshold`, what `gradlab sweep` varies. The
    defaults name only the knobs off their defaults, so that adding a knob keeps old ids.
    """

    knob: ClassVar[Optional[str]] = None
    # Whether the rule can change the gradient's direction (not only scale it): a chain holds
    # at most one such rule, whose cosine is then the chain's, with no copy of the gradient.
    turns: ClassVar[bool] = False

    def off_default(self) -> dict[str, Any]:
        """The knobs other than the main one whose value is not their default."""
        out = {}
        for name, f in type(self).model_fields.items():
            if name in ("method", self.knob):
                continue
            v = getattr(self, name)
            if f.is_required() or v != f.get_default(call_default_factory=True):
                out[name] = v
        return out

    def variant_id(self) -> str:
        parts = [self.method] + ([_text(getattr(self, self.knob))] if self.knob else [])
        parts += [f"{k}{_text(v).replace(', ', '-')}" for k, v in self.off_default().items()]
        return "-".join(parts)

    def label(self) -> str:
        """'agc clipping 0.01 (exclude head)': the method, its main knob, the other knobs set."""
        main = f" {self.knob} {_text(getattr(self, self.knob))}" if self.knob else ""
        rest = ", ".join(f"{k} {_text(v)}" for k, v in self.off_default().items())
        return f"{self.method}{main}" + (f" ({rest})" if rest else "")

    def describe(self) -> dict:
        """report.json's `rule` (the README's report.json section)."""
        return {"method": self.method, "knobs": self.model_dump(mode="json", exclude={"method"}),
                "label": self.label(),
                "swept": {"knob": self.knob, "value": getattr(self, self.knob)} if self.knob else None}


class ClipNone(Rule):
    """The baseline: gradients go to the optimizer untouched."""

    method: Literal["none"]

    def label(self) -> str:
        return "none (no clipping)"


class ClipNorm(Rule):
    """Clip by global norm, as torch.nn.utils.clip_grad_norm_: scale every gradient by
    max_norm / (total_norm + eps) when that is below 1."""

    knob: ClassVar[Optional[str]] = "max_norm"
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

    def variant_id(self) -> str:
        f = format_threshold
        p = "" if self.norm_type == 2.0 else f"p{f(self.norm_type)}-"
        e = "" if self.eps == 1e-6 else f"-eps{f(self.eps)}"
        return f"norm-{p}{f(self.max_norm)}{e}"


class ClipValue(Rule):
    """Clip every gradient element to [-clip_value, clip_value] (torch's clip_grad_value_)."""

    knob: ClassVar[Optional[str]] = "clip_value"
    turns: ClassVar[bool] = True

    method: Literal["value"]
    clip_value: Positive


class ClipPerTensor(Rule):
    """Clip every parameter tensor to its own L2 norm, as Keras `clipnorm`."""

    knob: ClassVar[Optional[str]] = "max_norm"
    turns: ClassVar[bool] = True

    method: Literal["per_tensor"]
    max_norm: Positive


class ClipAGC(Rule):
    """Adaptive gradient clipping (Brock et al. 2021) as optax.adaptive_grad_clip: each unit's
    gradient norm at most `clipping` times its weight norm (at least eps); `exclude` names
    layers left alone (`head`: the output layer)."""

    knob: ClassVar[Optional[str]] = "clipping"
    turns: ClassVar[bool] = True
    method: Literal["agc"]
    clipping: Positive = 0.01
    eps: Positive = 0.001
    exclude: Annotated[list[Annotated[str, Field(min_length=1, max_length=64)]], Field(max_length=10_000)] = []

    def variant_id(self) -> str:
        f = format_threshold
        return (f"agc-{f(self.clipping)}" + ("" if self.eps == 0.001 else f"-eps{f(self.eps)}")
                + "".join(f"-x{layer}" for layer in self.exclude))


class ClipAutoClip(Rule):
    """AutoClip (Seetharaman et al. 2020): clip to the `percentile` of the pre-clip norms so
    far (the last `history` of them, if given), the current one included."""

    knob: ClassVar[Optional[str]] = "percentile"
    method: Literal["autoclip"]
    percentile: Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)] = 10.0
    history: Optional[Annotated[int, Field(ge=1, le=10_000_000)]] = None

    def variant_id(self) -> str:
        return f"autoclip-p{format_threshold(self.percentile)}" + ("" if self.history is None else f"-h{self.history}")


class ClipZClip(Rule):
    """ZClip (Kumar et al. 2025): an EMA of the norm's mean and variance; a z-score above
    z_thresh clips adaptively; max_norm caps every step (null: no cap)."""

    knob: ClassVar[Optional[str]] = "z_thresh"
    method: Literal["zclip"]
    alpha: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)] = 0.97
    z_thresh: Positive = 2.5
    warmup: Annotated[int, Field(ge=1, le=100_000)] = 25
    max_norm: Optional[Positive] = 1.0

    def variant_id(self) -> str:
        f = format_threshold
        cap = "" if self.max_norm == 1.0 else ("-nocap" if self.max_norm is None else f"-max{f(self.max_norm)}")
        return (f"zclip-{f(self.z_thresh)}" + ("" if self.alpha == 0.97 else f"-a{f(self.alpha)}")
                + ("" if self.warmup == 25 else f"-w{self.warmup}") + cap)


class SkipSpikes(Rule):
    """Skip the optimizer step of a spike (OLMo-core's SkipStepOptimizer on the gradient
    norm); with `nonfinite`, of a NaN/inf gradient too (optax apply_if_finite)."""

    knob: ClassVar[Optional[str]] = "sigma"
    method: Literal["skip"]
    sigma: Positive = 6.0
    window: Annotated[int, Field(ge=2, le=100_000)] = 128
    nonfinite: bool = False
    max_consecutive: Annotated[int, Field(ge=0, le=1_000_000)] = 5

    def variant_id(self) -> str:
        return (f"skip-{format_threshold(self.sigma)}" + ("" if self.window == 128 else f"-w{self.window}")
                + ("-nonfinite" if self.nonfinite else "")
                + ("" if self.max_consecutive == 5 else f"-c{self.max_consecutive}"))


# The registry: method -> its config class. Adding a rule is its own file (a Rule subclass
# here, a Transform registered under the same method for the engine) and one line below.
RULES: dict[str, type[Rule]] = {}
for _rule in (ClipNone, ClipNorm, ClipValue, ClipPerTensor, ClipAGC, ClipAutoClip, ClipZClip, SkipSpikes):
    RULES[_rule.model_fields["method"].annotation.__args__[0]] = _rule


def _union(classes) -> Any:
    return Annotated[Union[tuple(classes)], Field(discriminator="method")]


RuleConfig = _union(RULES.values())


def direction_rules() -> tuple[str, ...]:
    """The registered rules that can change the gradient's direction (`Rule.turns`)."""
    return tuple(m for m, cls in RULES.items() if cls.turns)


DIRECTION_RULES = direction_rules()  # the built-in ones; direction_rules() includes registered rules


class ClipChain(Rule):
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
        turning = [i for i, r in enumerate(self.rules) if type(r).turns]
        if len(turning) > 1:
            raise _Conflict(f"a chain holds at most one rule that changes the gradient's direction "
                            f"({', '.join(direction_rules())}), got {self.rules[turning[0]].method} and "
                            f"{self.rules[turning[1]].method}", ("rules", turning[1], "method"))
        return self

    def variant_id(self) -> str:
        return "chain-" + "+".join(r.variant_id() for r in self.rules)

    def label(self) -> str:
        return " then ".join(r.label() for r in self.rules)

    def describe(self) -> dict:
        return {"method": "chain", "knobs": {"rules": [r.describe() for r in self.rules]}, "label": self.label(),
                "swept": None}


ClipConfig = _union([*RULES.values(), ClipChain])

# One clipping entry, validated on its own (the report names the variants of a config.yaml).
RULE_ADAPTER = TypeAdapter(ClipConfig)
# What must be rebuilt when a rule is added (the schema's models that hold a clipping list).
_REBUILD: list[Callable[[], None]] = []


def register_rule(cls: type[Rule]) -> type[Rule]:
    """Add a rule from outside this module (a plugin, a test): the schema's discriminated
    unions are rebuilt from RULES, so a config names it like a built-in one. Its engine half
    registers itself with gradlab.transforms.register under the same method."""
    RULES[cls.model_fields["method"].annotation.__args__[0]] = cls
    _rebuild()
    return cls


def unregister_rule(method: str) -> None:
    RULES.pop(method, None)
    _rebuild()


def _rebuild() -> None:
    global RuleConfig, ClipConfig, RULE_ADAPTER
    RuleConfig = _union(RULES.values())
    ClipConfig = _union([*RULES.values(), ClipChain])
    ClipChain.model_fields["rules"].annotation = list[RuleConfig]
    ClipChain.model_rebuild(force=True)
    RULE_ADAPTER = TypeAdapter(ClipConfig)
    for hook in _REBUILD:
        hook()


def parse_rule(data: Any) -> Rule:
    """One clipping entry as its config object (raises pydantic's ValidationError)."""
    return RULE_ADAPTER.validate_python(data)
