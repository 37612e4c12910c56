"""The experiment schema (pydantic): model, task, training, the clipping list and sweeps,
and the names a resolved config gives its variants and runs.

Every value is range-checked here, once, so that the engine can trust what it is given.
Types are strict: YAML `true` is not an integer and `"3"` is not a number.
"""

from __future__ import annotations

import difflib
import math
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Field, PrivateAttr, TypeAdapter, ValidationError, field_validator, model_serializer, model_validator

from gradlab.errors import clip
from gradlab.kinds import MODEL_KINDS

from .base import Activation, DType, InitScheme, NonNegative, Positive, Size, _Conflict, _Strict
from . import rules
from .rules import RULES, ClipConfig, ClipNone, ClipNorm, format_threshold

_CLIPPING_LIST = TypeAdapter(list[ClipConfig])

class InitConfig(_Strict):
    """Weight initialisation: `scheme` sets the base std (or orthogonality), `gain` scales it."""

    scheme: InitScheme = "xavier"
    gain: Positive = 1.0


# The kinds that read sequences (once called the recurrent ones; kept for scripts that import it).
RECURRENT = tuple(name for name, k in MODEL_KINDS.items() if k.sequence)


def _kind(name: Any):
    """The registered kind of that name, or None (a bad value is reported by `kind` itself)."""
    return MODEL_KINDS.get(name) if isinstance(name, str) else None


class ModelConfig(_Strict):
    """An MLP, or a stack of recurrent layers (torch's RNN/LSTM/GRU) with a linear head.

    For recurrent models `init` is the recurrent weights' (W_hh) init, orthogonal by default
    (its gain sets the spectral radius: the classic explosion knob), and `input_init` the
    input weights' (W_ih), Glorot by default. `activation` of an Elman RNN is tanh or relu.
    """

    kind: Literal[tuple(k for k, m in MODEL_KINDS.items() if m.config == "ModelConfig")] = "mlp"  # type: ignore[valid-type]
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
            k = _kind(data.get("kind"))
            if k is not None:
                return {**data, "init": {"scheme": k.init_scheme, **data["init"]}}
        return data

    def check_task(self, task: Any) -> None:
        """The pairing of kind and task is checked by the experiment; nothing else here."""

    @model_validator(mode="after")
    def _defaults_by_kind(self) -> "ModelConfig":
        k = MODEL_KINDS[self.kind]
        if k.activations is not None and self.activation not in k.activations:
            raise _Conflict(k.activation_error.format(kind=self.kind, activation=self.activation),
                            "activation", "kind")
        if not k.input_init and self.input_init is not None:
            raise _Conflict(f"input_init applies to recurrent models only; an {self.kind} has one init",
                            "input_init", "kind")
        if self.init is None:
            object.__setattr__(self, "init", InitConfig(scheme=k.init_scheme))
        if k.input_init and self.input_init is None:
            object.__setattr__(self, "input_init", InitConfig(scheme="xavier"))
        return self


class TransformerConfig(_Strict):
    """A decoder-only transformer: token (or linear, for real-valued inputs) and learned
    positional embeddings, `depth` blocks of causal multi-head self-attention and a GELU MLP
    with residual connections, and a linear head. `norm: post` is Vaswani et al.'s placement
    (LayerNorm after each residual sum), `pre` GPT-2's (before each sublayer, plus a final
    one). `max_len` is the positional table's length: the task's sequence length unless set."""

    kind: Literal["transformer"]
    depth: Annotated[int, Field(ge=1, le=1_000)] = 2
    width: Size = 64
    heads: Annotated[int, Field(ge=1, le=4096)] = 4
    mlp_ratio: Annotated[int, Field(ge=1, le=64)] = 4
    norm: Literal["pre", "post"] = "pre"
    qk_norm: bool = False
    z_loss: NonNegative = 0.0
    bias: bool = True
    tie_embeddings: bool = False
    max_len: Optional[Annotated[int, Field(ge=1, le=100_000)]] = None
    init: InitConfig = InitConfig()
    # gpt2: residual projections x 1/sqrt(2 depth), embeddings N(0, 1/width); vaswani: neither
    # (every weight by `init`, embeddings N(0, 1): the scale of Vaswani et al.'s sqrt(width)
    # multiplier), the initialisation Xiong et al. 2020 analyse.
    init_style: Literal["gpt2", "vaswani"] = "gpt2"

    @model_serializer(mode="wrap")
    def _init_style_when_set(self, handler):
        # The default is left out of the resolved config, so configs written before it keep their hash.
        data = handler(self)
        if self.init_style == "gpt2":
            data.pop("init_style", None)
        return data

    @model_validator(mode="after")
    def _heads_divide_width(self) -> "TransformerConfig":
        if self.width % self.heads:
            raise _Conflict(f"width must be divisible by heads: {self.width} does not split into "
                            f"{self.heads} heads", "heads", "width")
        return self

    def check_task(self, t: Any) -> None:
        """What a transformer config can only get wrong together with its task (keys relative
        to the experiment). Resolves max_len, so the config.yaml a run keeps says what it had."""
        from .memory import task_dims

        if self.max_len is None:
            object.__setattr__(self, "max_len", t.seq_len)
        elif t.seq_len > self.max_len:
            raise _Conflict(f"the task's sequences ({t.seq_len} tokens) are longer than the positional table "
                            f"(model.max_len {self.max_len}); raise max_len or leave it out", ("model", "max_len"),
                            ("task", "seq_len"))
        # An lm task reads and predicts the same characters; its text is not read here, where a
        # relative task.path is not yet resolved against the config's directory.
        n_in, n_out = (1, 1) if t.kind == "lm" else task_dims(t)
        if self.tie_embeddings and (t.kind == "adding" or n_in != n_out):
            raise _Conflict(f"tie_embeddings needs a task that predicts its own input tokens (as lm and dyck do); "
                            f"task {t.kind} reads {n_in} {'features' if t.kind == 'adding' else 'tokens'} and "
                            f"predicts {n_out} classes", ("model", "tie_embeddings"), ("task", "kind"))
        if self.z_loss and t.kind == "adding":
            raise _Conflict("z_loss applies to a softmax output; task adding is a regression (mse)",
                            ("model", "z_loss"), ("task", "kind"))


class ScalarRNNConfig(_Strict):
    """Pascanu et al. 2013's one-unit recurrence x_t = w sigmoid(x_{t-1}) + b (section 3.2,
    Figure 6), unrolled over the scalar_target task's seq_len steps; `w` and `b` are its
    initial parameters (the paper's trajectories start on either side of the wall)."""

    kind: Literal["scalar_rnn"]
    w: Annotated[float, Field(ge=-1e6, le=1e6, allow_inf_nan=False)] = 1.0
    b: Annotated[float, Field(ge=-1e6, le=1e6, allow_inf_nan=False)] = 0.0

    @property
    def depth(self) -> int:
        """One recurrent unit: what the memory estimate counts per layer."""
        return 1

    def check_task(self, t: Any) -> None:
        """Its task (scalar_target only) is checked by the experiment (ModelKind.tasks)."""


def _model_classes() -> tuple:
    """Each registered kind's config class, named by the kind (gradlab.kinds stays free of pydantic)."""
    return tuple(dict.fromkeys(globals()[k.config] for k in MODEL_KINDS.values()))


AnyModelConfig = Annotated[Union[_model_classes()], Field(discriminator="kind")]


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


class AssociativeRecallTask(_Task):
    """Recall the value stored with a queried key among `n_pairs` key-value pairs (Ba et al. 2016)."""

    kind: Literal["associative_recall"]
    n_pairs: Annotated[int, Field(ge=1, le=10_000)] = 4
    n_keys: Annotated[int, Field(ge=1, le=100_000)] = 26
    n_values: Annotated[int, Field(ge=2, le=100_000)] = 10

    @property
    def seq_len(self) -> int:
        """The pairs, the query marker, the query: a model sizes its positional table by it."""
        return 2 * self.n_pairs + 2

    @model_validator(mode="after")
    def _distinct_keys(self) -> "AssociativeRecallTask":
        if self.n_keys < self.n_pairs:
            raise _Conflict(f"n_keys must be at least n_pairs ({self.n_pairs}): the keys of a sequence are "
                            f"distinct, so that the query has one answer; got {self.n_keys}", "n_keys", "n_pairs")
        return self


class DyckTask(_Task):
    """Predict the next bracket of balanced strings of `n_types` bracket pairs (Dyck-k),
    nested at most `depth` deep."""

    kind: Literal["dyck"]
    seq_len: SeqLen = 32
    n_types: Annotated[int, Field(ge=1, le=1000)] = 2
    depth: Annotated[int, Field(ge=1, le=100_000)] = 4

    @field_validator("seq_len")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError(f"seq_len must be even (a balanced string has as many closing brackets as "
                             f"opening ones), got {v}")
        return v


class LMTask(_Task):
    """Next-character prediction on a UTF-8 text: `path`, relative to the config file, or by
    default gradlab's own source. The loader makes `path` absolute and pins the text's sha256."""

    kind: Literal["lm"]
    seq_len: SeqLen = 64
    path: Optional[Annotated[str, Field(min_length=1, max_length=4096)]] = None
    sha256: Optional[Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]] = None


class ScalarTargetTask(_Task):
    """Drive sigmoid(x_T) of the scalar_rnn, started at x_0, to `target` (Pascanu et al. 2013:
    T 50, x_0 0.5, target 0.7). Every example is the same, so one is the default batch."""

    kind: Literal["scalar_target"]
    batch_size: Size = 1
    seq_len: Annotated[int, Field(ge=1, le=100_000)] = 50
    x0: Annotated[float, Field(ge=-1e6, le=1e6, allow_inf_nan=False)] = 0.5
    target: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)] = 0.7


TaskConfig = Annotated[Union[TeacherTask, SpiralsTask, AddingTask, CopyTask, TemporalOrderTask,
                             AssociativeRecallTask, DyckTask, LMTask, ScalarTargetTask],
                       Field(discriminator="kind")]
SEQUENCE_TASKS = ("adding", "copy", "temporal_order", "associative_recall", "dyck", "lm")

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


class ScheduleConfig(_Strict):
    """The lr of step t (from 0) is the optimizer's lr times factor(t), as torch's LambdaLR
    (gradlab.schedules has the factors): linear warm-up to the lr over `warmup_steps`, cosine
    from the lr down to `min_lr` over the steps after the warm-up."""

    kind: Literal["constant", "linear_warmup", "cosine", "warmup_cosine"] = "constant"
    warmup_steps: Annotated[int, Field(ge=0, le=10_000_000)] = 0
    min_lr: NonNegative = 0.0

    @model_validator(mode="after")
    def _knobs_of_the_kind(self) -> "ScheduleConfig":
        # A knob the kind never reads would be silently ignored: refused instead.
        if self.warmup_steps and self.kind not in ("linear_warmup", "warmup_cosine"):
            raise _Conflict(f"warmup_steps applies to kinds linear_warmup and warmup_cosine, not {self.kind}",
                            "warmup_steps", "kind")
        if self.min_lr and self.kind not in ("cosine", "warmup_cosine"):
            raise _Conflict(f"min_lr applies to kinds cosine and warmup_cosine, not {self.kind}", "min_lr", "kind")
        return self


# The compute dtypes the engine implements (gradlab.compute rounds every op's values to them):
# a schema value outside them would be refused here, in one place, rather than run in float32
# under a label that says otherwise.
IMPLEMENTED_COMPUTE = ("float32", "float16", "bfloat16")
# What each loss_scale kind reads besides `compute`: a knob it never reads is refused.
_SCALE_KNOBS = {"none": (), "static": ("init_scale", "clip"),
                "dynamic": ("init_scale", "growth_factor", "backoff_factor", "growth_interval", "min_scale", "clip")}
_FLOAT32_MAX = 3.4028234663852886e38
_FLOAT32_TINY = 1.2e-38  # float32's smallest normal (1.1755e-38), rounded up as _DTYPE_RANGE's


class PrecisionConfig(_Strict):
    """Loss scaling exactly as torch.amp.GradScaler (gradlab.precision), and the compute dtype.

    `static` keeps `init_scale`; `dynamic` backs off on a non-finite gradient and grows after
    `growth_interval` clean steps; a scale below `min_scale` ends the run (a collapse).
    `clip` says whether the clipping rules see the unscaled gradients (the right order) or the
    scaled ones (the common bug: the threshold is then in effect divided by the scale)."""

    compute: Literal["float32", "float16", "bfloat16"] = "float32"
    loss_scale: Literal["none", "static", "dynamic"] = "none"
    init_scale: Annotated[float, Field(gt=0, le=_FLOAT32_MAX, allow_inf_nan=False)] = 65536.0
    growth_factor: Annotated[float, Field(gt=1, le=_FLOAT32_MAX, allow_inf_nan=False)] = 2.0
    backoff_factor: Annotated[float, Field(gt=0, lt=1, allow_inf_nan=False)] = 0.5
    growth_interval: Annotated[int, Field(ge=1, le=10_000_000)] = 2000
    min_scale: Annotated[float, Field(gt=0, le=_FLOAT32_MAX, allow_inf_nan=False)] = 2.0 ** -24
    clip: Literal["after_unscale", "before_unscale"] = "after_unscale"
    # Every N steps (and at the last), the step's gradients are compared with its backward
    # replayed in float32 (gradlab.precision.UnderflowMeter); None: never.
    measure_underflow: Optional[Annotated[int, Field(ge=1, le=10_000_000)]] = None

    @field_validator("init_scale", "min_scale")
    @classmethod
    def _a_float32(cls, v: float) -> float:
        # GradScaler holds the scale as a float32: below its smallest normal number it would be
        # subnormal or 0, and 1 / scale inf.
        if v < _FLOAT32_TINY:
            raise ValueError(f"must be >= 1.2e-38, float32's smallest normal number (the scale is a float32, "
                             f"as GradScaler's), got {v!r}")
        return v

    @model_validator(mode="after")
    def _knobs_of_the_kind(self) -> "PrecisionConfig":
        reads = _SCALE_KNOBS[self.loss_scale]
        for key in _SCALE_KNOBS["dynamic"]:
            if key in self.model_fields_set and key not in reads:
                users = [k for k, r in _SCALE_KNOBS.items() if key in r]
                raise _Conflict(f"{key} applies to loss_scale {' and '.join(users)}, not {self.loss_scale}",
                                key, "loss_scale")
        if self.loss_scale == "dynamic" and self.min_scale > self.init_scale:
            raise _Conflict(f"min_scale must be <= init_scale ({self.init_scale:g}), got {self.min_scale:g}",
                            "min_scale", "init_scale")
        return self

    @model_serializer(mode="wrap")
    def _read_knobs_only(self, handler):
        # The knobs the kind never reads are left out: the resolved config, loaded again,
        # must not set a knob that this kind refuses.
        data = handler(self)
        for key in _SCALE_KNOBS["dynamic"]:
            if key not in _SCALE_KNOBS[self.loss_scale]:
                data.pop(key, None)
        if self.measure_underflow is None:  # unset, as every config before it: the same hash
            data.pop("measure_underflow", None)
        return data

    @property
    def scaling(self) -> bool:
        return self.loss_scale != "none"

    @property
    def measures_underflow(self) -> bool:
        """Whether steps are measured: float32 compute is the reference itself, so with it the
        key is accepted and measures nothing (a grid over `compute` keeps one config)."""
        return self.measure_underflow is not None and self.compute != "float32"


class SmoothnessConfig(_Strict):
    """`train.measure_smoothness`: every `every` steps (and at the last), the local smoothness
    along the step taken, Zhang et al. 2020's estimator (gradlab.smoothness)."""

    every: Annotated[int, Field(ge=1, le=10_000_000)]


class TrainConfig(_Strict):
    @model_validator(mode="before")
    @classmethod
    def _sgd_by_default(cls, data: Any) -> Any:
        return _default_kind(data, "optimizer", "sgd")

    @model_validator(mode="after")
    def _schedule_fits(self) -> "TrainConfig":
        s = self.schedule
        if s.warmup_steps > self.steps:
            raise _Conflict(f"warmup_steps must be <= train.steps ({self.steps}), got {s.warmup_steps}",
                            ("schedule", "warmup_steps"), "steps")
        if self.precision.compute != "float32" and self.dtype == "float64":
            raise _Conflict(f"compute {self.precision.compute} needs train.dtype float32 (its parameters' master "
                            f"copy, as in torch.autocast); got float64", ("precision", "compute"), "dtype")
        if self.precision.compute not in IMPLEMENTED_COMPUTE:
            raise _Conflict(f"compute {self.precision.compute} is not implemented yet (its rounding lands in a later "
                            f"part); use float32, where loss_scale shows the mechanics", ("precision", "compute"))
        if s.min_lr > self.optimizer.lr:
            raise _Conflict(f"min_lr must be <= the optimizer's lr ({self.optimizer.lr:g}), got {s.min_lr:g}",
                            ("schedule", "min_lr"), ("optimizer", "lr"))
        return self

    @model_serializer(mode="wrap")
    def _schedule_when_set(self, handler):
        # The default schedule is left out of the resolved config, so that every config
        # written before schedules existed keeps its hash (and its experiment directory);
        # the same for the evaluation knobs at their defaults.
        data = handler(self)
        if self.schedule == ScheduleConfig():
            data.pop("schedule", None)
        if self.precision == PrecisionConfig():
            data.pop("precision", None)
        for key in ("eval_every", "eval_batches", "measure_smoothness"):
            if getattr(self, key) is None:
                data.pop(key, None)
        return data

    @property
    def evaluate_every(self) -> int:
        """`eval_every`, or about 20 evaluations in a run: every ceil(steps / 20) steps."""
        return self.eval_every if self.eval_every is not None else -(-self.steps // 20)

    @property
    def evaluate_batches(self) -> int:
        return self.eval_batches if self.eval_batches is not None else DEFAULT_EVAL_BATCHES

    def evaluates(self, step: int) -> bool:
        """Whether the loop measures the held-out loss after the update of `step` (from 0):
        every `evaluate_every` steps, and always the last, so the final model is measured."""
        return (step + 1) % self.evaluate_every == 0 or step == self.steps - 1

    steps: Annotated[int, Field(ge=1, le=10_000_000)] = 200
    optimizer: OptimizerConfig = SGDConfig(kind="sgd")
    dtype: DType = "float32"
    # Truncated BPTT: the hidden state is detached every `tbptt` steps (counted from the
    # end of the sequence), so no gradient flows back further than that. Recurrent only.
    tbptt: Optional[Annotated[int, Field(ge=1, le=100_000)]] = None
    schedule: ScheduleConfig = ScheduleConfig()
    # The held-out loss is measured every `eval_every` steps (None: about 20 times a run)
    # on `eval_batches` fixed batches (None: DEFAULT_EVAL_BATCHES).
    eval_every: Optional[Annotated[int, Field(ge=1, le=10_000_000)]] = None
    eval_batches: Optional[Annotated[int, Field(ge=1, le=10_000)]] = None
    precision: PrecisionConfig = PrecisionConfig()
    # None (unset, as every config before it: the same hash): never measured.
    measure_smoothness: Optional[SmoothnessConfig] = None


# Four batches: a held-out estimate steadier than one training batch's, for about a fifth of
# the forward passes of training at the default of 20 evaluations per run.
DEFAULT_EVAL_BATCHES = 4


NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


def _default_clipping() -> list:
    return [ClipNone(method="none"), ClipNorm(method="norm", max_norm=1.0)]


class SweepConfig(_Strict):
    """A threshold sweep (what `gradlab sweep` sets): the clipping list is the baseline `none`
    (unless baseline is false) plus `method` at each threshold, in ascending order."""

    method: Literal["norm", "value", "per_tensor", "agc", "autoclip", "zclip", "skip"] = "norm"  # see _rebuild
    thresholds: Annotated[list[Positive], Field(min_length=1, max_length=1000)]
    baseline: bool = True

    @field_validator("thresholds")
    @classmethod
    def _distinct(cls, v: list[float]) -> list[float]:
        if len(set(v)) != len(v):
            raise ValueError(f"thresholds must be distinct, got {', '.join(map(format_threshold, v))}")
        return sorted(v)

    def clipping(self) -> list[dict]:
        """The clipping list: `thresholds` are values of the method's main knob (THRESHOLD_KEYS),
        its other keys at their defaults."""
        key = THRESHOLD_KEYS[self.method]
        return ([{"method": "none"}] if self.baseline else []) + [
            {"method": self.method, key: t} for t in self.thresholds]


class ExperimentConfig(_Strict):
    """One experiment: every clipping variant x every seed."""

    name: Annotated[str, Field(pattern=NAME_PATTERN)]
    seed: Optional[Annotated[int, Field(ge=0, le=2**32 - 1)]] = None
    seeds: Optional[Annotated[list[Annotated[int, Field(ge=0, le=2**32 - 1)]], Field(min_length=1, max_length=10_000)]] = None
    model: AnyModelConfig = ModelConfig()
    task: TaskConfig = TeacherTask(kind="teacher")
    train: TrainConfig = TrainConfig()
    clipping: Annotated[list[ClipConfig], Field(min_length=1, max_length=1000)] = Field(
        default_factory=_default_clipping
    )
    sweep: Optional[SweepConfig] = None
    # Key path -> its values (gradlab.config.grid): the runs are the points x the clipping
    # variants x the seeds. The points' configs, built by the loader, are kept in _points.
    grid: Optional[dict[str, Annotated[list[Any], Field(min_length=2, max_length=100_000)]]] = None
    # The points' configs, hashed (gradlab.config.grid.points_digest): a point's config is
    # built from what the file wrote, so two files with one resolved form can make different
    # points (an optimizer kind's defaults); the pin keeps them in different directories.
    grid_sha256: Optional[Annotated[str, Field(pattern=r"^[0-9a-f]{16}$")]] = None
    _points: Optional[list] = PrivateAttr(default=None)

    @model_validator(mode="before")
    @classmethod
    def _teacher_by_default(cls, data: Any) -> Any:
        data = _default_kind(_default_kind(data, "task", "teacher"), "model", "mlp")
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
        if self.grid_sha256 is not None and self.grid is None:
            raise _Conflict("grid_sha256 pins the points of a grid, and this config has no grid", "grid_sha256")
        seeds = self.seeds if self.seeds is not None else [self.seed if self.seed is not None else 0]
        if len(set(seeds)) != len(seeds):
            raise _Conflict(f"seeds must be distinct, got {clip(', '.join(map(str, seeds)))}",
                            "seeds" if self.seeds is not None else "seed")
        object.__setattr__(self, "seeds", list(seeds))
        object.__setattr__(self, "seed", None)
        sequence = self.task.kind in SEQUENCE_TASKS
        kind, task = MODEL_KINDS[self.model.kind], self.task.kind
        # A kind with tasks of its own (ModelKind.tasks) and those tasks go together only.
        owner = next((name for name, k in MODEL_KINDS.items() if task in (k.tasks or ())), None)
        if kind.tasks is not None and task not in kind.tasks:
            raise _Conflict(f"model {self.model.kind} learns task {' or '.join(kind.tasks)} only, not {task}",
                            ("model", "kind"), ("task", "kind"))
        if owner is not None and owner != self.model.kind:
            raise _Conflict(f"model {self.model.kind} cannot learn task {task}: it needs kind {owner}",
                            ("model", "kind"), ("task", "kind"))
        if sequence != kind.sequence:
            fit = [name for name, k in MODEL_KINDS.items() if k.sequence == sequence and k.tasks is None]
            need = f"a sequence model ({', '.join(fit)})" if sequence else f"kind {' or '.join(fit)}"
            raise _Conflict(f"model {self.model.kind} cannot learn task {self.task.kind}: it needs {need}",
                            ("model", "kind"), ("task", "kind"))
        self.model.check_task(self.task)
        if self.train.tbptt is not None and not (sequence and MODEL_KINDS[self.model.kind].flow):
            raise _Conflict(f"truncated backprop through time applies to recurrent models on sequence tasks only, "
                            f"not to model {self.model.kind} on task {self.task.kind}",
                            ("train", "tbptt"), ("task", "kind"), ("model", "kind"))
        self._check_thresholds()
        self._check_excluded_layers()
        if self.sweep is not None:
            try:
                want = _CLIPPING_LIST.validate_python(self.sweep.clipping())
            except ValidationError:
                want = None
            if list(self.clipping) != want:
                raise _Conflict("a sweep sets the clipping list (the baseline and method at each threshold); "
                                "give either sweep or clipping", "clipping", "sweep")
        ids = [variant_id(c) for c in self.clipping]
        twice = next((j for j, i in enumerate(ids) if i in ids[:j]), None)
        if twice is not None:
            raise _Conflict(f"the same variant as clipping.{ids.index(ids[twice])} ({ids[twice]}); "
                            "each variant once", ("clipping", twice))
        return self

    def _check_excluded_layers(self) -> None:
        """agc's `exclude` names layers of this model: a misspelt one would clip the layer the
        user meant to keep, silently."""
        m = self.model
        layers = MODEL_KINDS[m.kind].layers(m) + ["head"]
        for i, c in enumerate(self.clipping):
            inner = [(("clipping", i, "rules", j), r) for j, r in enumerate(c.rules)] if c.method == "chain" \
                else [(("clipping", i), c)]
            for path, r in inner:
                for k, name in enumerate(r.exclude if r.method == "agc" else ()):
                    if name not in layers:
                        close = difflib.get_close_matches(name, layers, n=1)
                        hint = f" (did you mean `{close[0]}`?)" if close else ""
                        raise _Conflict(f"no layer `{clip(name)}` in this {m.kind} to exclude: its layers are "
                                        f"{layers[0]} ... {layers[-2]} and head{hint}", path + ("exclude", k))

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
        return self.model_dump(mode="json", exclude={"seed"} | ({"sweep"} if self.sweep is None else set())
                               | ({"grid", "grid_sha256"} if self.grid is None else set()))


# The thresholds each training dtype holds as normal numbers: numpy.finfo's tiny and max,
# rounded inward to two digits so that the bound a message names is itself allowed.
_DTYPE_RANGE = {"float32": (1.2e-38, 3.4e38), "float64": (2.3e-308, 1.7e308)}


def variant_id(c: Any) -> str:
    """Stable name of one clipping variant, used in run ids: none, norm-1, norm-p1-1, value-0.1,
    per_tensor-1, agc-0.01, autoclip-p10, zclip-2.5, skip-6, chain-agc-0.01+norm-1. Each rule
    names itself (gradlab.config.rules.Rule.variant_id)."""
    return c.variant_id()


# Each method's main knob: report.json's `threshold` and what a sweep varies (kept in step
# with the registry by _rebuild).
THRESHOLD_KEYS = {m: c.knob for m, c in RULES.items() if c.knob}
# The knobs compared with gradient values, which must be normal numbers of the training dtype.
_GRADIENT_THRESHOLDS = ("norm", "value", "per_tensor")


def threshold_of(c: Any) -> float | None:
    return getattr(c, c.knob) if getattr(c, "knob", None) else None


def _rebuild() -> None:
    """The models holding a clipping list (or naming the methods a sweep takes), rebuilt
    from the registry after a rule is added."""
    global _CLIPPING_LIST
    THRESHOLD_KEYS.clear()
    THRESHOLD_KEYS.update({m: c.knob for m, c in RULES.items() if c.knob})
    SweepConfig.model_fields["method"].annotation = Literal[tuple(THRESHOLD_KEYS)]
    SweepConfig.model_rebuild(force=True)
    ExperimentConfig.model_fields["clipping"].annotation = list[rules.ClipConfig]
    ExperimentConfig.model_rebuild(force=True)
    _CLIPPING_LIST = TypeAdapter(list[rules.ClipConfig])


rules._REBUILD.append(_rebuild)


def run_id(c: Any, seed: int) -> str:
    return f"{variant_id(c)}-s{seed}"



def _tag_of(model: type) -> str:
    """The discriminator field of a union member: clipping variants by method, the rest by kind."""
    return "method" if "method" in model.model_fields else "kind"
