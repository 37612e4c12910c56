"""Experiment configuration: the schema (pydantic), the loader and the resolved form.

Every value is range-checked here, once, so that the engine can trust what it is given.
Types are strict: YAML `true` is not an integer and `"3"` is not a number.
"""

from __future__ import annotations

import codecs
import difflib
import math
import os
import re
import stat
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Sequence, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from gradlab.errors import UserError, clip
from gradlab.io import data_hash

Activation = Literal["tanh", "relu", "sigmoid", "gelu", "identity"]
InitScheme = Literal["normal", "xavier", "he", "orthogonal"]
DType = Literal["float32", "float64"]

# Upper bounds keep a typo (an extra zero or three) from becoming an hour of swapping; the
# memory estimate below is the real guard.
Size = Annotated[int, Field(ge=1, le=1_000_000)]
Positive = Annotated[float, Field(gt=0, allow_inf_nan=False)]
NonNegative = Annotated[float, Field(ge=0, allow_inf_nan=False)]


KeyPath = tuple[Union[str, int], ...]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class _Conflict(ValueError):
    """A model-level check: the message, and the keys (relative to the model) it is about,
    the first one first. The error names the one an option set, if any (the option made the
    conflict), else the first one the file writes."""

    def __init__(self, message: str, *keys: Union[str, KeyPath]) -> None:
        super().__init__(message)
        self.keys = [(k,) if isinstance(k, str) else tuple(k) for k in keys]


class InitConfig(_Strict):
    """Weight initialisation: `scheme` sets the base std (or orthogonality), `gain` scales it."""

    scheme: InitScheme = "xavier"
    gain: Positive = 1.0


RECURRENT = ("rnn", "lstm", "gru")


class ModelConfig(_Strict):
    """An MLP, or a stack of recurrent layers (torch's RNN/LSTM/GRU) with a linear head.

    For recurrent models `init` is the recurrent weights' (W_hh) init, orthogonal by default
    (its gain sets the spectral radius: the classic explosion knob), and `input_init` the
    input weights' (W_ih), Glorot by default. `activation` of an Elman RNN is tanh or relu.
    """

    kind: Literal["mlp", "rnn", "lstm", "gru"] = "mlp"
    depth: Annotated[int, Field(ge=1, le=10_000)] = 8
    width: Size = 64
    activation: Activation = "tanh"
    init: Optional[InitConfig] = None
    input_init: Optional[InitConfig] = None

    @model_validator(mode="before")
    @classmethod
    def _scheme_by_kind(cls, data: Any) -> Any:
        # `init: {gain: 1.1}` on a recurrent model keeps the recurrent default, orthogonal: a
        # missing scheme is the model kind's, not InitConfig's (which is the mlp's).
        if isinstance(data, dict) and isinstance(data.get("init"), dict) and "scheme" not in data["init"]:
            if data.get("kind") in RECURRENT:
                return {**data, "init": {"scheme": "orthogonal", **data["init"]}}
        return data

    @model_validator(mode="after")
    def _defaults_by_kind(self) -> "ModelConfig":
        recurrent = self.kind in RECURRENT
        if self.kind == "rnn" and self.activation not in ("tanh", "relu"):
            raise _Conflict(f"an rnn takes activation tanh or relu (as torch.nn.RNN), got {self.activation}",
                            "activation", "kind")
        if self.kind in ("lstm", "gru") and self.activation != "tanh":
            raise _Conflict(f"an {self.kind}'s gates are fixed (sigmoid and tanh), so activation must be left out "
                            f"(or tanh), got {self.activation}", "activation", "kind")
        if not recurrent and self.input_init is not None:
            raise _Conflict("input_init applies to recurrent models only; an mlp has one init", "input_init", "kind")
        if self.init is None:
            object.__setattr__(self, "init", InitConfig(scheme="orthogonal" if recurrent else "xavier"))
        if recurrent and self.input_init is None:
            object.__setattr__(self, "input_init", InitConfig(scheme="xavier"))
        return self


class _Task(_Strict):
    batch_size: Size = 64


class TeacherTask(_Task):
    """Regress the output of a fixed random teacher network on Gaussian inputs."""

    kind: Literal["teacher"]
    input_dim: Size = 16
    output_dim: Size = 1
    teacher_depth: Annotated[int, Field(ge=1, le=100)] = 2
    teacher_width: Size = 32
    noise: NonNegative = 0.0


class SpiralsTask(_Task):
    """Two interleaved spirals in the plane: two-class classification (for MLPs)."""

    kind: Literal["spirals"]
    turns: Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)] = 1.5
    noise: NonNegative = 0.05


SeqLen = Annotated[int, Field(ge=2, le=100_000)]


class AddingTask(_Task):
    """Sum the two marked values of a sequence (Hochreiter & Schmidhuber 1997)."""

    kind: Literal["adding"]
    seq_len: SeqLen = 50


class CopyTask(_Task):
    """Read `copy_len` symbols, wait, then reproduce them after a delimiter (copying memory)."""

    kind: Literal["copy"]
    seq_len: SeqLen = 30
    copy_len: Annotated[int, Field(ge=1, le=10_000)] = 5
    n_symbols: Annotated[int, Field(ge=2, le=1000)] = 8

    @model_validator(mode="after")
    def _room(self) -> "CopyTask":
        if self.seq_len < 2 * self.copy_len + 1:
            raise _Conflict(f"seq_len must be at least 2 x copy_len + 1 = {2 * self.copy_len + 1} "
                            f"(the symbols, a delimiter, the recall), got {self.seq_len}", "seq_len", "copy_len")
        return self


class TemporalOrderTask(_Task):
    """Classify the order of two marked symbols among distractors (Pascanu et al. 2013)."""

    kind: Literal["temporal_order"]
    seq_len: Annotated[int, Field(ge=10, le=100_000)] = 50


TaskConfig = Annotated[Union[TeacherTask, SpiralsTask, AddingTask, CopyTask, TemporalOrderTask],
                       Field(discriminator="kind")]
SEQUENCE_TASKS = ("adding", "copy", "temporal_order")

Beta = Annotated[float, Field(ge=0, lt=1, allow_inf_nan=False)]
Eps = Annotated[float, Field(ge=0, allow_inf_nan=False)]


class SGDConfig(_Strict):
    """SGD exactly as torch.optim.SGD defines momentum, dampening, nesterov, weight decay."""

    kind: Literal["sgd"]
    lr: Positive = 0.01
    momentum: NonNegative = 0.0
    dampening: NonNegative = 0.0
    nesterov: bool = False
    weight_decay: NonNegative = 0.0

    @model_validator(mode="after")
    def _nesterov(self) -> "SGDConfig":
        if self.nesterov and (self.momentum <= 0 or self.dampening != 0):
            raise _Conflict(f"nesterov needs momentum > 0 and dampening = 0 (as torch.optim.SGD), got momentum "
                            f"{self.momentum:g} and dampening {self.dampening:g}", "nesterov", "momentum", "dampening")
        return self


class AdamConfig(_Strict):
    """Adam as torch.optim.Adam (L2 weight decay added to the gradient)."""

    kind: Literal["adam"]
    lr: Positive = 0.001
    betas: Annotated[list[Beta], Field(min_length=2, max_length=2)] = [0.9, 0.999]
    eps: Eps = 1e-8
    weight_decay: NonNegative = 0.0
    amsgrad: bool = False


class AdamWConfig(AdamConfig):
    """AdamW as torch.optim.AdamW (decoupled weight decay)."""

    kind: Literal["adamw"]  # type: ignore[assignment]
    weight_decay: NonNegative = 0.01


class RMSpropConfig(_Strict):
    """RMSprop as torch.optim.RMSprop (alpha, eps outside the root, centered, momentum)."""

    kind: Literal["rmsprop"]
    lr: Positive = 0.01
    alpha: Beta = 0.99
    eps: Eps = 1e-8
    weight_decay: NonNegative = 0.0
    momentum: NonNegative = 0.0
    centered: bool = False


OptimizerConfig = Annotated[Union[SGDConfig, AdamConfig, AdamWConfig, RMSpropConfig], Field(discriminator="kind")]


def _default_kind(data: Any, key: str, kind: str) -> Any:
    """A mapping under `key` without `kind` gets the default kind: `task: {batch_size: 8}`
    means the teacher task, `optimizer: {lr: 0.1}` SGD."""
    if isinstance(data, dict) and isinstance(data.get(key), dict) and "kind" not in data[key]:
        return {**data, key: {"kind": kind, **data[key]}}
    return data


class TrainConfig(_Strict):
    @model_validator(mode="before")
    @classmethod
    def _sgd_by_default(cls, data: Any) -> Any:
        return _default_kind(data, "optimizer", "sgd")

    steps: Annotated[int, Field(ge=1, le=10_000_000)] = 200
    optimizer: OptimizerConfig = SGDConfig(kind="sgd")
    dtype: DType = "float32"
    # Truncated BPTT: the hidden state is detached every `tbptt` steps (counted from the
    # end of the sequence), so no gradient flows back further than that. Recurrent only.
    tbptt: Optional[Annotated[int, Field(ge=1, le=100_000)]] = None


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

NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


def _default_clipping() -> list:
    return [ClipNone(method="none"), ClipNorm(method="norm", max_norm=1.0)]


class SweepConfig(_Strict):
    """A threshold sweep (what `gradlab sweep` sets): the clipping list is the baseline `none`
    (unless baseline is false) plus `method` at each threshold, in ascending order."""

    method: Literal["norm", "value"] = "norm"
    thresholds: Annotated[list[Positive], Field(min_length=1, max_length=1000)]
    baseline: bool = True

    @field_validator("thresholds")
    @classmethod
    def _distinct(cls, v: list[float]) -> list[float]:
        if len(set(v)) != len(v):
            raise ValueError(f"thresholds must be distinct, got {', '.join(map(format_threshold, v))}")
        return sorted(v)

    def clipping(self) -> list[dict]:
        key = "max_norm" if self.method == "norm" else "clip_value"
        return ([{"method": "none"}] if self.baseline else []) + [
            {"method": self.method, key: t} for t in self.thresholds]


class ExperimentConfig(_Strict):
    """One experiment: every clipping variant x every seed."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    seed: Optional[Annotated[int, Field(ge=0, le=2**32 - 1)]] = None
    seeds: Optional[Annotated[list[Annotated[int, Field(ge=0, le=2**32 - 1)]], Field(min_length=1, max_length=10_000)]] = None
    model: ModelConfig = ModelConfig()
    task: TaskConfig = TeacherTask(kind="teacher")
    train: TrainConfig = TrainConfig()
    clipping: Annotated[list[ClipConfig], Field(min_length=1, max_length=1000)] = Field(
        default_factory=_default_clipping
    )
    sweep: Optional[SweepConfig] = None

    @model_validator(mode="before")
    @classmethod
    def _teacher_by_default(cls, data: Any) -> Any:
        data = _default_kind(data, "task", "teacher")
        # A sweep's clipping list is derived from it (and kept in the resolved config).
        if isinstance(data, dict) and isinstance(data.get("sweep"), dict) and "clipping" not in data:
            try:
                data = {**data, "clipping": SweepConfig.model_validate(data["sweep"]).clipping()}
            except ValidationError:
                pass  # reported where it belongs, by the field's own validation
        return data

    @model_validator(mode="after")
    def _resolve_seeds(self) -> "ExperimentConfig":
        if self.seed is not None and self.seeds is not None:
            raise _Conflict("give either `seed` or `seeds`, not both", "seed", "seeds")
        seeds = self.seeds if self.seeds is not None else [self.seed if self.seed is not None else 0]
        if len(set(seeds)) != len(seeds):
            raise _Conflict(f"seeds must be distinct, got {clip(', '.join(map(str, seeds)))}",
                            "seeds" if self.seeds is not None else "seed")
        object.__setattr__(self, "seeds", list(seeds))
        object.__setattr__(self, "seed", None)
        sequence = self.task.kind in SEQUENCE_TASKS
        if sequence != (self.model.kind in RECURRENT):
            need = "a recurrent kind (rnn, lstm, gru)" if sequence else "kind mlp"
            raise _Conflict(f"model {self.model.kind} cannot learn task {self.task.kind}: it needs {need}",
                            ("model", "kind"), ("task", "kind"))
        if self.train.tbptt is not None and not sequence:
            raise _Conflict(f"truncated backprop through time applies to recurrent models on sequence tasks only, "
                            f"not to model {self.model.kind} on task {self.task.kind}",
                            ("train", "tbptt"), ("task", "kind"), ("model", "kind"))
        self._check_thresholds()
        if self.sweep is not None:
            want = [{"none": ClipNone, "norm": ClipNorm, "value": ClipValue}[c["method"]](**c)
                    for c in self.sweep.clipping()]
            if list(self.clipping) != want:
                raise _Conflict("a sweep sets the clipping list (the baseline and method at each threshold); "
                                "give either sweep or clipping", "clipping", "sweep")
        ids = [variant_id(c) for c in self.clipping]
        twice = next((j for j, i in enumerate(ids) if i in ids[:j]), None)
        if twice is not None:
            raise _Conflict(f"the same variant as clipping.{ids.index(ids[twice])} ({ids[twice]}); "
                            "each variant once", ("clipping", twice))
        return self

    def _check_thresholds(self) -> None:
        """A threshold outside the normal numbers of the training dtype means nothing there:
        below the smallest one the clipped gradient is subnormal or zero (and 1e-320 is not
        even a normal float64), above the largest one the threshold is inf in that dtype and
        never clips."""
        tiny, big = _DTYPE_RANGE[self.train.dtype]
        for i, c in enumerate(self.clipping):
            t = threshold_of(c) if c.method in _GRADIENT_THRESHOLDS else None
            if t is None or tiny <= t <= big:
                continue
            bound = f">= {tiny:g}, about the smallest normal" if t < tiny else f"<= {big:g}, about the largest"
            field = THRESHOLD_KEYS[c.method]
            where = (("sweep", "thresholds"),) if self.sweep is not None else (("clipping", i, field),)
            raise _Conflict(f"{'a threshold' if self.sweep is not None else field} must be {bound} "
                            f"{self.train.dtype} (train.dtype), got {t!r}", *where, ("train", "dtype"))

    def resolved(self) -> dict:
        """The resolved config as plain data (what config.yaml holds and the hash covers)."""
        return self.model_dump(mode="json", exclude={"seed"} | ({"sweep"} if self.sweep is None else set()))


# The thresholds each training dtype holds as normal numbers: numpy.finfo's tiny and max,
# rounded inward to two digits so that the bound a message names is itself allowed.
_DTYPE_RANGE = {"float32": (1.2e-38, 3.4e38), "float64": (2.3e-308, 1.7e308)}


def format_threshold(x: float) -> str:
    """1.0 -> '1', 0.1 -> '0.1', 1e-05 -> '1e-05': short, stable, file-name safe."""
    return f"{x:g}" if math.isfinite(x) else ("inf" if x > 0 else "nan")


def variant_id(c: Any) -> str:
    """Stable name of one clipping variant, used in run ids: none, norm-1, norm-p1-1, value-0.1,
    per_tensor-1, agc-0.01, autoclip-p10, zclip-2.5, skip-6, chain-agc-0.01+norm-1. A value
    other than its default is named; the defaults are not, so that the short ids stay."""
    f = format_threshold
    m = c.method
    if m == "norm":
        p = "" if c.norm_type == 2.0 else f"p{f(c.norm_type)}-"
        e = "" if c.eps == 1e-6 else f"-eps{f(c.eps)}"
        return f"norm-{p}{f(c.max_norm)}{e}"
    if m == "value":
        return f"value-{f(c.clip_value)}"
    if m == "per_tensor":
        return f"per_tensor-{f(c.max_norm)}"
    if m == "agc":
        return (f"agc-{f(c.clipping)}" + ("" if c.eps == 0.001 else f"-eps{f(c.eps)}")
                + ("".join(f"-x{layer}" for layer in c.exclude)))
    if m == "autoclip":
        return f"autoclip-p{f(c.percentile)}" + ("" if c.history is None else f"-h{c.history}")
    if m == "zclip":
        cap = "" if c.max_norm == 1.0 else ("-nocap" if c.max_norm is None else f"-max{f(c.max_norm)}")
        return (f"zclip-{f(c.z_thresh)}" + ("" if c.alpha == 0.97 else f"-a{f(c.alpha)}")
                + ("" if c.warmup == 25 else f"-w{c.warmup}") + cap)
    if m == "skip":
        return (f"skip-{f(c.sigma)}" + ("" if c.window == 128 else f"-w{c.window}")
                + ("-nonfinite" if c.nonfinite else "") + ("" if c.max_consecutive == 5 else f"-c{c.max_consecutive}"))
    if m == "chain":
        return "chain-" + "+".join(variant_id(r) for r in c.rules)
    return "none"


# Each method's main knob: report.json's `threshold` and what a sweep varies.
THRESHOLD_KEYS = {"norm": "max_norm", "value": "clip_value", "per_tensor": "max_norm", "agc": "clipping",
                  "autoclip": "percentile", "zclip": "z_thresh", "skip": "sigma"}
# The knobs compared with gradient values, which must be normal numbers of the training dtype.
_GRADIENT_THRESHOLDS = ("norm", "value", "per_tensor")


def threshold_of(c: Any) -> float | None:
    key = THRESHOLD_KEYS.get(c.method)
    return None if key is None else getattr(c, key)


def run_id(c: Any, seed: int) -> str:
    return f"{variant_id(c)}-s{seed}"


# ----------------------------------------------------------------------------- loading

MAX_CONFIG_BYTES = 1_000_000
MAX_ALIASES = 100
# A config has a few dozen values; 10_000 seeds is the largest legitimate list. The budget
# bounds what aliases can expand to (billion laughs) and recursive anchors.
MAX_VALUES = 100_000
MAX_NESTING = 32
_TOO_DEEP = f"nested more than {MAX_NESTING} levels deep; a config needs 3"

_YAML = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_YAML + t for t in ("null", "bool", "int", "float", "str", "timestamp")}


def _tag_of(model: type) -> str:
    """The discriminator field of a union member: clipping variants by method, the rest by kind."""
    return "method" if "method" in model.model_fields else "kind"


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses alias bombs and deep nesting while composing, before any
    value is constructed."""

    def __init__(self, stream: str, file: str) -> None:
        super().__init__(stream)
        self.file, self.aliases, self.depth = file, 0, 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        line = self.peek_event().start_mark.line + 1
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
            if self.aliases > MAX_ALIASES:
                raise UserError(f"more than {MAX_ALIASES} aliases (*name); a config needs none",
                                file=self.file, line=line)
        self.depth += 1
        try:
            if self.depth > MAX_NESTING:
                raise UserError(_TOO_DEEP, file=self.file, line=line)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


class _Dumper(yaml.SafeDumper):
    pass


# PyYAML follows YAML 1.1, where `1e-3` is a string; users mean a number (as YAML 1.2 does).
# The dumper learns the same rule so that a string such as "1e3" gets quoted.
for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver(
        _YAML + "float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"), list("-+0123456789")
    )


def _one_line(text: str) -> str:
    """User text echoed in a message: newlines and control characters escaped, cut short."""
    return clip(text)


def _dotted(path: Sequence[Union[str, int]]) -> str:
    return _one_line(".".join(map(str, path)))


def _show(v: Any) -> str:
    """A value as the user wrote it in YAML, short."""
    if isinstance(v, bool) or v is None:
        return "null" if v is None else str(v).lower()
    if isinstance(v, (list, tuple)):
        return "a list"
    if isinstance(v, dict):
        return "a mapping"
    if isinstance(v, str):
        v = _one_line(v)
        return f"`{v if len(v) <= 40 else v[:37] + '...'}`"
    return str(v)


def _show_typed(v: Any) -> str:
    s = _show(v)
    return s if v is None or isinstance(v, (list, tuple, dict)) else f"{s} ({type(v).__name__})"


_BASES = {"x": ("a hexadecimal", 16), "o": ("an octal", 8), "b": ("a binary", 2)}
_PREFIXED = re.compile(r"^[-+]?0([xXoObB])[0-9a-fA-F_]+$")
_LEADING_ZERO = re.compile(r"^[-+]?0[0-9_]+$")
_SEXAGESIMAL = re.compile(r"^[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?$")
_WORD_BOOLS = {"yes": True, "on": True, "no": False, "off": False}


def _yaml11_surprise(node: yaml.ScalarNode, loader: yaml.SafeLoader) -> Optional[str]:
    """Why an unquoted scalar is refused: a form that YAML 1.1 (PyYAML) and YAML 1.2 read
    differently, or that reads as something other than it looks (`1:30` is 90, `017` is 15,
    `no` is false). A quoted scalar is a string, and an explicit tag says what it means."""
    if node.style is not None or node.tag != loader.resolve(yaml.ScalarNode, node.value, (True, False)):
        return None
    text = node.value
    shown = _show(text)
    quote = f"or quote it (\"{text}\") for a string" if len(text) <= 30 else "or quote it for a string"
    sign = -1 if text.startswith("-") else 1
    digits = text.lstrip("+-").replace("_", "")
    short = len(digits) <= 30  # the number is worth spelling out (and int() of 100 KB of digits is slow)
    m = _PREFIXED.match(text)
    if m:
        base, radix = _BASES[m.group(1).lower()]
        try:
            n = sign * int(digits[2:], radix) if short else None
        except ValueError:  # `0b12`: a string in YAML 1.1 and 1.2 alike
            return None
        write = f"write {n}" if n is not None else "write it in decimal"
        return f"{shown} is {base} number; gradlab reads decimal numbers only: {write}, {quote}"
    if _LEADING_ZERO.match(text):
        decimal = f"{sign * int(digits)}" if short else "it without the leading zero"
        if set(digits) <= set("01234567"):
            octal = sign * int(digits, 8) if short else None
            write = decimal if octal is None or str(octal) == decimal else f"{octal} (octal) or {decimal} (decimal)"
            return (f"{shown} is octal{f' {octal}' if octal is not None else ''} in YAML 1.1, decimal in YAML 1.2; "
                    f"write {write}, {quote}")
        return f"{shown} has a leading zero (a string in YAML 1.1, a number in YAML 1.2); write {decimal}, {quote}"
    if _SEXAGESIMAL.match(text):
        if not short:
            return f"{shown} is a base-60 number in YAML 1.1 (as in times), a string in YAML 1.2; {quote}"
        head, _, frac = digits.partition(".")
        n = 0
        for part in head.split(":"):
            n = n * 60 + int(part)
        value = f"{sign * (n + float('0.' + (frac or '0'))):g}" if "." in digits else f"{sign * n}"
        return f"{shown} is {value} in YAML 1.1 (base 60, as in times), a string in YAML 1.2; write {value}, {quote}"
    if text.lower() in _WORD_BOOLS:
        flag = str(_WORD_BOOLS[text.lower()]).lower()
        return f"{shown} is {flag} in YAML 1.1, a string in YAML 1.2; write {flag}, {quote}"
    return None


class _Tree:
    """Plain data from a composed YAML node tree, with the 1-based line of every key path."""

    def __init__(self, loader: _Loader) -> None:
        self.loader, self.lines, self.count = loader, {}, 0

    def fail(self, message: str, node: yaml.Node, path: KeyPath) -> UserError:
        return UserError(message, file=self.loader.file, key=_dotted(path) or None, line=node.start_mark.line + 1)

    def check_tag(self, node: yaml.Node, path: KeyPath) -> None:
        allowed = _SCALAR_TAGS if isinstance(node, yaml.ScalarNode) else {
            _YAML + ("seq" if isinstance(node, yaml.SequenceNode) else "map")}
        if node.tag not in allowed:
            what = "merge keys (<<)" if node.tag == _YAML + "merge" else "YAML tag " + clip(node.tag.replace(_YAML, "!!"))
            raise self.fail(f"unsupported {what}; a config holds only plain values, lists and mappings", node, path)

    def build(self, node: yaml.Node, path: KeyPath = ()) -> Any:
        self.count += 1
        # Name only the top-level key: the full path of an expanded alias means nothing.
        if self.count > MAX_VALUES:
            raise self.fail(f"the document holds more than {MAX_VALUES} values (through aliases?)", node, path[:1])
        if len(path) > MAX_NESTING:  # only reachable through a recursive anchor
            raise self.fail(_TOO_DEEP, node, path[:1])
        self.check_tag(node, path)
        if isinstance(node, yaml.SequenceNode):
            items = []
            for i, item in enumerate(node.value):
                self.lines[path + (i,)] = item.start_mark.line + 1
                items.append(self.build(item, path + (i,)))
            return items
        if isinstance(node, yaml.MappingNode):
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                self.check_tag(key_node, path)
                if not isinstance(key_node, yaml.ScalarNode):
                    raise self.fail("a key must be a plain name, not a list or mapping", key_node, path)
                # The key as written: `on:` or `1:` are names here, not YAML 1.1 booleans/ints.
                key, line = key_node.value, key_node.start_mark.line + 1
                if key in out:
                    first = self.lines[path + (key,)]
                    raise self.fail(f"duplicate key `{_dotted(path + (key,))}` (lines {first} and {line})",
                                    key_node, path + (key,))
                self.lines[path + (key,)] = line
                out[key] = self.build(value_node, path + (key,))
            return out
        surprise = _yaml11_surprise(node, self.loader)
        if surprise:
            raise self.fail(surprise, node, path)
        try:
            return self.loader.construct_object(node)
        except (yaml.YAMLError, ValueError, LookupError, AttributeError):  # e.g. `!!int abc`
            raise self.fail(f"cannot read {_show(node.value)} as {node.tag.replace(_YAML, '!!')}", node, path) from None


def _yaml_error(e: yaml.YAMLError, text: str, file: str) -> UserError:
    """One line, no YAML context dump."""
    if isinstance(e, yaml.reader.ReaderError):
        line = text[: e.position].count("\n") + 1
        return UserError(f"character U+{e.character:04X} is not allowed in YAML", file=file, line=line)
    mark = getattr(e, "problem_mark", None)
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    context = getattr(e, "context", None)
    start = getattr(e, "context_mark", None)
    if "\\t" in problem or "tab" in problem:
        message = "tab character in indentation; YAML indents with spaces only"
    elif problem.startswith("expected <block end>"):
        message = f"YAML syntax error: the indentation of this line does not match the lines above ({problem})"
    elif "another document" in problem:
        message = "a second YAML document starts here (---); a config is one document"
    else:
        if context and start is not None and mark is not None and start.line != mark.line:
            context += f" started on line {start.line + 1}"  # the unclosed bracket is there
        message = f"YAML syntax error: {problem}" + (f" ({context})" if context else "")
    return UserError(message, file=file, line=mark.line + 1 if mark else None)


def _parse_yaml(text: str, file: str) -> tuple[Any, dict[KeyPath, int]]:
    try:
        loader = _Loader(text, file)
        node = loader.get_single_node()
    except yaml.YAMLError as e:
        raise _yaml_error(e, text, file) from None
    if node is None:
        return None, {}
    tree = _Tree(loader)
    return tree.build(node), tree.lines


def _open_nonblocking(path: str, flags: int) -> int:
    return os.open(path, flags | os.O_NONBLOCK)


_FILE_KINDS = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _regular_file(st: os.stat_result, file: str) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(file)
    if not stat.S_ISREG(st.st_mode):
        what = next((name for test, name in _FILE_KINDS if test(st.st_mode)), "not a regular file")
        raise UserError(f"is {what}, not a regular file; a config must be a file", file=file)


def _read_text(path: Path) -> str:
    file = str(path)
    try:
        # A FIFO, a terminal or a device would block the read (or never end): only a regular
        # file (or a symlink to one) is a config. Checked before opening, so that opening has
        # no side effect, and again on what was opened, without blocking, should it change.
        _regular_file(os.stat(path), file)
        with open(path, "rb", opener=_open_nonblocking) as fh:
            _regular_file(os.fstat(fh.fileno()), file)
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise UserError("no such file", file=file) from None
    except IsADirectoryError:
        raise UserError("is a directory, expected a YAML file", file=file) from None
    except PermissionError:
        raise UserError("permission denied: cannot read this file", file=file) from None
    except OSError as e:
        why = e.strerror or str(e)
        raise UserError(f"cannot read: {why[:1].lower()}{why[1:]}", file=file) from None
    if len(raw) > MAX_CONFIG_BYTES:
        size = path.stat().st_size  # smaller than what was read if the file is growing
        what = f"{size / 1e6:.1f} MB" if size > MAX_CONFIG_BYTES else f"more than {MAX_CONFIG_BYTES / 1e6:.0f} MB"
        raise UserError(f"config is {what}; a config is a few hundred bytes", file=file)
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise UserError("is UTF-16 text; save it as UTF-8", file=file)
    if b"\0" in raw:
        raise UserError("is not a text file (it contains NUL bytes: binary or UTF-16?); save the config as UTF-8",
                        file=file)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise UserError(f"is not UTF-8 text (byte 0x{raw[e.start]:02x})", file=file, line=line) from None


def _field_default(data: dict, path: Sequence[Union[str, int]]) -> Any:
    """The schema default of the field at `path`, for the kinds the data names (or their
    defaults): what `--set clipping.1.max_norm=2` edits when the file has no clipping."""
    tp: Any = ExperimentConfig
    cur: Any = data
    default: Any = None
    for part in path:
        tp = _unwrap(tp)
        if get_origin(tp) is Union:  # a discriminated union: the member the data (or the default) names
            members = get_args(tp)
            tag = _tag_of(members[0])
            kind = cur.get(tag) if isinstance(cur, dict) else None
            if kind is None and isinstance(default, BaseModel):
                kind = getattr(default, tag)
            tp = next((m for m in members if kind in get_args(m.model_fields[tag].annotation)), None)
        if isinstance(tp, type) and issubclass(tp, BaseModel) and isinstance(part, str) and part in tp.model_fields:
            field = tp.model_fields[part]
            tp, default = field.annotation, field.get_default(call_default_factory=True)
        elif get_origin(tp) is list and isinstance(part, int):
            tp, default = get_args(tp)[0], None
        else:
            return None
        try:
            cur = cur[part]
        except (KeyError, IndexError, TypeError):
            cur = None
    return default


def _as_written(value: Any) -> Any:
    """A default as a user would write it: only what differs from the defaults below it, so
    that its kind's own defaults (orthogonal for a recurrent init) still apply."""
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_defaults=True)
    return [_as_written(v) for v in value] if isinstance(value, list) else value


def _apply_override(data: dict, text: str, sources: dict[KeyPath, str], made: set[KeyPath]) -> None:
    """`--set key.path=value`, applied to what the file says, before any default: digit parts
    index lists, missing mappings are created empty (a missing list the indexes go into is
    its default, as a user would write it)."""
    key, eq, raw = text.partition("=")
    parts = [p.strip() for p in key.split(".")]
    if not eq or not all(parts):
        raise UserError("expected key.path=value, e.g. --set model.depth=64", file="--set", key=clip(text))
    source = f"--set {clip(text)}"
    try:
        value, _ = _parse_yaml(raw, source)
    except UserError as e:
        e.line, e.key = None, e.key or _dotted(parts)  # the line of a one-line option says nothing
        raise
    node: Any = data
    path: list[Union[str, int]] = []
    for i, part in enumerate(parts):
        if isinstance(node, list):
            if not (part.isascii() and part.isdigit() and int(part) < len(node)):
                raise UserError(f"`{_dotted(path)}` is a list of {len(node)}; {_show(part)} is not an index in it",
                                file=source, key=_dotted(path + [part]))
            part = int(part)
        elif not isinstance(node, dict):
            raise UserError(f"`{_dotted(path)}` is {_show_typed(node)}, not a mapping or a list",
                            file=source, key=_dotted(path + [part]))
        path.append(part)
        if i == len(parts) - 1:
            if part in ("kind", "method") and isinstance(node, dict) and node.get(part) != value:
                # A default belongs to its kind: another kind does not inherit it. What the file
                # wrote stays, and is refused if the new kind has no such key (see _user_error).
                for k in [k for k in node if tuple(path[:-1]) + (k,) in made]:
                    del node[k]
            node[part] = value
            break
        if isinstance(node, dict) and part not in node:
            below = parts[i + 1]
            if below.isascii() and below.isdigit():
                default = _field_default(data, path)
                if not isinstance(default, list):
                    raise UserError(f"`{_dotted(path)}` is not in the config and has no default list to index; "
                                    f"set it whole, e.g. --set {_dotted(path)}=[...]", file=source, key=_dotted(path))
                node[part] = _as_written(default)
                made.update(_paths(node[part], tuple(path)))
            else:
                node[part] = {}
        node = node[part]
    sources[tuple(path)] = source
    made.difference_update([p for p in made if p[: len(path)] == tuple(path)])


def _paths(value: Any, path: KeyPath) -> list[KeyPath]:
    """Every key path in `value` (placed at `path`), itself included."""
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    return [path] + [p for k, v in items for p in _paths(v, path + (k,))]


class _Origins:
    """Where each value came from: an option (`--set ...`, `--seeds`, `--thresholds`) or the
    file, with the line of every key path the file writes."""

    def __init__(self, file: str, lines: dict[KeyPath, int], sources: Optional[dict[KeyPath, str]] = None) -> None:
        self.file, self.lines, self.sources = file, lines, sources or {}

    def option(self, path: KeyPath) -> Optional[str]:
        """The option that set `path` (it or an ancestor) or changed it (something below it);
        for a key the file does not write, the option that set the kind of its mapping
        (`--set clipping.0.method=norm` makes max_norm required)."""
        for n in range(len(path), -1, -1):
            if path[:n] in self.sources:
                return self.sources[path[:n]]
        below = [s for k, s in self.sources.items() if k[: len(path)] == path]
        if below:
            return below[0]
        return self.tag_option(path) if path and path not in self.lines else None

    def tag_option(self, path: KeyPath) -> Optional[str]:
        """The option that changed the kind (or method) of the mapping holding `path`."""
        return next((self.sources[path[:-1] + (t,)] for t in ("kind", "method") if path[:-1] + (t,) in self.sources),
                    None)

    def locate(self, path: KeyPath) -> dict:
        option = self.option(path)
        if option is not None:
            return {"file": option, "line": None}
        prefixes = [path[:n] for n in range(len(path), -1, -1)]
        return {"file": self.file, "line": next((self.lines[p] for p in prefixes if p in self.lines), None)}


# ----------------------------------------------------------------------------- validation errors

_TYPE_WORDS = {
    "int_type": "an integer", "float_type": "a number", "string_type": "a string", "bool_type": "true or false",
    "list_type": "a list", "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
}
_BOUNDS = {"greater_than": (">", "gt"), "greater_than_equal": (">=", "ge"),
           "less_than": ("<", "lt"), "less_than_equal": ("<=", "le")}


def _unwrap(tp: Any) -> Any:
    """Annotated[X, ...] and Optional[X] -> X."""
    while True:
        args = get_args(tp)
        if get_origin(tp) is Annotated:
            tp = args[0]
        elif get_origin(tp) is Union and type(None) in args:
            tp = next(a for a in args if a is not type(None))
        else:
            return tp


def _schema_at(loc: tuple) -> Any:
    """The schema type a pydantic loc points at; a union tag in the loc selects its member."""
    tp: Any = ExperimentConfig
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            tp = tp.model_fields[part].annotation if part in tp.model_fields else None
        elif get_origin(tp) is list:
            tp = get_args(tp)[0]
        elif get_origin(tp) is Union:  # a discriminated union: `part` is the tag
            tp = next((m for m in get_args(tp) if part in get_args(m.model_fields[_tag_of(m)].annotation)), None)
        else:
            return None
    return _unwrap(tp)


def _fields_at(loc: tuple) -> list[str]:
    """Field names of the schema model that a pydantic loc (with union tags) points at."""
    tp = _schema_at(loc)
    return list(tp.model_fields) if isinstance(tp, type) and issubclass(tp, BaseModel) else []


def _tags(loc: tuple, tag: str) -> list[str]:
    """The allowed values of the discriminator `tag` of the union at `loc`."""
    return [get_args(m.model_fields[tag].annotation)[0] for m in get_args(_schema_at(loc))]


def _data_path(loc: tuple, data: Any) -> KeyPath:
    """The pydantic loc as a key path of the data: without the union tags pydantic inserts."""
    path: list[Union[str, int]] = []
    cur = data
    for i, part in enumerate(loc):
        if get_origin(_schema_at(loc[:i])) is Union:
            continue
        path.append(part)
        try:
            cur = cur[part]
        except (KeyError, IndexError, TypeError):
            cur = None
    return tuple(path)


def _one_of(allowed: Sequence[str], got: Any) -> str:
    close = difflib.get_close_matches(got, allowed, n=1) if isinstance(got, str) else []
    hint = f" (did you mean `{close[0]}`?)" if close else ""
    return f"must be one of {', '.join(allowed)}; got {_show(got)}{hint}"


def _unknown_key(key: Any, fields: list[str]) -> str:
    close = difflib.get_close_matches(str(key), fields, n=1)
    hint = f"did you mean `{close[0]}`?" if close else f"allowed keys: {', '.join(fields)}"
    return f"unknown key {_show(str(key))}; {hint}"


def _describe(err: dict) -> tuple[str, list[KeyPath]]:
    """A short message for one pydantic error, and the sub-keys (if any) it is really about."""
    kind, v, ctx, loc = err["type"], err.get("input"), err.get("ctx") or {}, err["loc"]
    if kind in _TYPE_WORDS:
        return f"must be {_TYPE_WORDS[kind]}, got {_show_typed(v)}", []
    if kind in _BOUNDS:
        op, bound = _BOUNDS[kind][0], ctx[_BOUNDS[kind][1]]
        bound = int(bound) if isinstance(bound, float) and bound.is_integer() else bound
        return f"must be {op} {bound}, got {_show(v)}", []
    if kind == "finite_number":
        return f"must be finite, got {_show(v)}", []
    if kind == "missing":
        return "required key is missing", []
    if kind == "extra_forbidden":
        return _unknown_key(loc[-1], _fields_at(loc[:-1])), []
    if kind == "literal_error":
        return _one_of(re.findall(r"'([^']*)'", ctx["expected"]), v), []
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tag = ctx["discriminator"].strip("'")
        allowed = re.findall(r"'([^']*)'", ctx.get("expected_tags", "")) or _tags(loc, tag)
        if kind == "union_tag_invalid":
            return _one_of(allowed, ctx["tag"]), [(tag,)]
        return f"required key is missing; must be one of {', '.join(allowed)}", [(tag,)]
    if kind == "string_pattern_mismatch":  # NAME_PATTERN is the only pattern
        return f"must be 1-64 letters, digits, - or _; got {_show(v)}", []
    if kind in ("too_short", "too_long"):
        n = ctx["min_length"] if kind == "too_short" else ctx["max_length"]
        bound = "at least" if kind == "too_short" else "at most"
        return f"must have {bound} {n} item{'s' * (n != 1)}, got {ctx['actual_length']}", []
    if kind == "value_error":  # a check of ours: a field's own, or a model's (_Conflict) with its keys
        return str(ctx["error"]), getattr(ctx["error"], "keys", [])
    return err["msg"][:1].lower() + err["msg"][1:], []


def _about(base: KeyPath, subs: Sequence[KeyPath], origins: _Origins) -> KeyPath:
    """The key a model-level check is about: of the keys it names, the first one an option
    set (the option made the conflict), else the first one the file writes, else the first."""
    paths = [base + sub for sub in subs] or [base]
    return next((p for p in paths if origins.option(p) is not None),
                next((p for p in paths if p in origins.lines), paths[0]))


def _user_error(exc: ValidationError, data: dict, origins: _Origins) -> UserError:
    errors = exc.errors()
    message, subs = _describe(errors[0])
    path = _about(_data_path(errors[0]["loc"], data), subs, origins)
    where = origins.locate(path)
    option = origins.tag_option(path)
    if errors[0]["type"] == "extra_forbidden" and path in origins.lines and option:
        # The file wrote the key for the kind (or method) it named; an option changed that. Not
        # dropped: the user's value would vanish silently (a max_norm meant as the threshold).
        tag = next(t for t in ("kind", "method") if path[:-1] + (t,) in origins.sources)
        message = (f"{_show(str(path[-1]))} ({origins.file} line {origins.lines[path]}) does not apply to "
                   f"{tag} {_show(_get(data, path[:-1] + (tag,)))}, which {option} chose; remove it "
                   f"from the file or leave the {tag} as it is")
        where = {"file": option, "line": None}
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more problem{'s' * (len(errors) > 2)})"
    return UserError(message, key=_dotted(path) or None, **where)


def _get(data: Any, path: KeyPath) -> Any:
    for part in path:
        try:
            data = data[part]
        except (KeyError, IndexError, TypeError):
            return None
    return data


# ----------------------------------------------------------------------------- memory

_ITEMSIZE = {"float32": 4, "float64": 8}


def task_dims(task: Any) -> tuple[int, int]:
    """(features per example or time step, outputs or classes) of a task: the model's size."""
    if task.kind == "teacher":
        return task.input_dim, task.output_dim
    if task.kind == "copy":  # one-hot of blank, the symbols, the delimiter; classes: blank + symbols
        return task.n_symbols + 2, task.n_symbols + 1
    return {"spirals": (2, 2), "adding": (2, 1), "temporal_order": (8, 4)}[task.kind]


_GATES = {"rnn": 1, "lstm": 4, "gru": 3}
# Arrays of width H that a recurrent layer keeps per time step and example (models/recurrent.py):
# G each for the input projection, the gates (not rnn), their gradients and those laid side by
# side (gru: twice, and W_hh h per step); then h, dL/dh, h laid side by side (lstm: c, tanh c too).
_STEP_BUFFERS = {"rnn": 3 * 1 + 3, "lstm": 4 * 4 + 5, "gru": 7 * 3 + 3}


def _parameter_count(cfg: ExperimentConfig) -> int:
    m = cfg.model
    n_in, n_out = task_dims(cfg.task)
    if m.kind == "mlp":
        dims = [n_in] + [m.width] * (m.depth - 1) + [n_out]
        return sum(a * b + b for a, b in zip(dims, dims[1:]))
    g, h = _GATES[m.kind], m.width
    layers = sum(g * h * (fan_in + h + 2) for fan_in in [n_in] + [h] * (m.depth - 1))
    return layers + h * n_out + n_out


def estimate_memory_bytes(cfg: ExperimentConfig) -> int:
    """What one seed's lockstep training holds: per variant, parameters, gradients and two
    optimizer buffers (4P), the activations the backward pass keeps (three per layer for an
    MLP; gates, states and their gradients at every time step for recurrent layers), and
    the metrics."""
    v, m = len(cfg.clipping), cfg.model
    if m.kind == "mlp":
        saved = 3 * m.width * m.depth
    else:
        saved = cfg.task.seq_len * m.width * m.depth * _STEP_BUFFERS[m.kind]
    arrays = 4 * _parameter_count(cfg) + cfg.task.batch_size * saved
    metrics = 8 * cfg.train.steps * v * (m.depth * 4 + 10)
    return _ITEMSIZE[cfg.train.dtype] * v * arrays + metrics


def available_memory_bytes() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def _check_memory(cfg: ExperimentConfig, blame: Any) -> None:
    """Refuse what would not fit, naming what made it too big: blame() -> file, key, line."""
    need, have = estimate_memory_bytes(cfg), available_memory_bytes()
    if need <= 0.8 * have:
        return
    file, key, line = blame()
    v, p = len(cfg.clipping), _parameter_count(cfg)
    params = f"{p:,}" if p < 10**6 else f"{p:.2g}".replace("e+", "e")
    raise UserError(
        f"this experiment needs about {need / 2**30:.1f} GiB ({v} variant{'s' * (v != 1)} x {params} parameters "
        f"with gradients, optimizer state and activations), more than 80% of the {have / 2**30:.1f} GiB available; "
        "reduce model.width, model.depth, task.batch_size, train.steps or the clipping list",
        file=file, key=key, line=line,
    )


# ----------------------------------------------------------------------------- public API


def load_config(path: Union[str, os.PathLike], overrides: Sequence[str] = (), seeds: Optional[Sequence[int]] = None,
                sweep: Optional[dict] = None) -> ExperimentConfig:
    """Read, override (`--set`, `--seeds`), validate and size-check a config; every problem
    is one UserError naming the file (or option), the key path and the line.

    `sweep` ({method, thresholds, baseline}, from `gradlab sweep`) replaces the config's
    clipping list by the baseline plus `method` at each threshold."""
    return _load_config(path, overrides, seeds, sweep, explain=True)


def _load_config(path: Union[str, os.PathLike], overrides: Sequence[str], seeds: Optional[Sequence[int]],
                 sweep: Optional[dict], explain: bool) -> ExperimentConfig:
    """load_config; without `explain`, a memory refusal does not look for the option to
    blame (that search loads the config again, in this way)."""
    path = Path(path)
    file = str(path)
    data, lines = _parse_yaml(_read_text(path), file)
    if data is None:
        raise UserError("empty config", file=file)
    if not isinstance(data, dict):
        raise UserError(f"the top level must be a mapping of keys, got {_show_typed(data)}", file=file)
    sources: dict[KeyPath, str] = {}
    made: set[KeyPath] = set()
    for item in overrides:
        _apply_override(data, item, sources, made)
    if seeds is not None:
        data.pop("seed", None)
        data["seeds"] = list(seeds)
        sources[("seeds",)] = "--seeds " + clip(",".join(map(str, seeds)))
    if sweep is not None:
        data.pop("clipping", None)
        data["sweep"] = dict(sweep)
        sources[("sweep",)] = sources[("clipping",)] = "--thresholds"  # the clipping list is made from it
    elif "clipping" not in data and isinstance(data.get("sweep"), dict) and ("sweep",) in lines:
        lines[("clipping",)] = lines[("sweep",)]  # made from the file's sweep
    if "name" not in data:
        if not re.match(NAME_PATTERN, path.stem):
            raise UserError(f"the config has no `name` and its file name {_show(path.stem)} is not a valid one "
                            "(1-64 letters, digits, - or _); add `name: ...` to the file or pass --set name=...",
                            file=file, key="name")
        data["name"] = path.stem

    origins = _Origins(file, lines, sources)
    try:
        cfg = ExperimentConfig.model_validate(data)
    except ValidationError as e:
        raise _user_error(e, data, origins) from None

    def fits(overrides: Sequence[str] = (), seeds: Optional[Sequence[int]] = None, sweep: Optional[dict] = None) -> bool:
        try:
            _load_config(path, overrides, seeds, sweep, explain=False)
        except UserError:
            return False
        return True

    def blame() -> tuple[str, str, Optional[int]]:
        """The size is a product of several sections: the file's model, unless the file alone
        fits; then the first option that alone makes it too big, else the last one (with
        those before it). Only computed when refusing."""
        options = [(f"--set {clip(o)}", _dotted(o.partition("=")[0].split(".")), {"overrides": [o]})
                   for o in overrides]
        if seeds is not None:
            options.append((sources[("seeds",)], "seeds", {"seeds": seeds}))
        if sweep is not None:
            options.append(("--thresholds", "clipping", {"sweep": sweep}))
        if not explain or not options or not fits():
            return file, "model", lines.get(("model",))
        option, key, _ = next((o for o in options if not fits(**o[2])), options[-1])
        return option, key, None

    _check_memory(cfg, blame)
    return cfg


def load_resolved(path: Union[str, os.PathLike]) -> ExperimentConfig:
    """An experiment directory's config.yaml, as gradlab wrote it: the resolved form, every
    key present. No memory check: the experiment may come from a larger machine."""
    path = Path(path)
    file = str(path)
    data, lines = _parse_yaml(_read_text(path), file)
    if not isinstance(data, dict):
        raise UserError(f"expected the resolved config of an experiment, got {_show_typed(data)}", file=file)
    try:
        cfg = ExperimentConfig.model_validate(data)
    except ValidationError as e:
        raise _user_error(e, data, _Origins(file, lines)) from None
    missing = [k for k in cfg.resolved() if k not in data]
    if missing:
        raise UserError(f"`{missing[0]}` is missing; gradlab writes every key of the resolved config here",
                        file=file)
    return cfg


def config_hash(cfg: ExperimentConfig) -> str:
    """First 8 hex digits of the sha256 of the canonical JSON of the resolved config."""
    return data_hash(cfg.resolved())


def experiment_dir(cfg: ExperimentConfig, out: Union[str, os.PathLike] = "outputs") -> Path:
    return Path(out) / f"{cfg.name}-{config_hash(cfg)}"


def dump_yaml(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML; load_config reads it back to an equal config."""
    return yaml.dump(cfg.resolved(), Dumper=_Dumper, sort_keys=False)
