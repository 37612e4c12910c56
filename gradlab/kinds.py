"""The model registry: what each model kind declares, so that the schema, the memory
estimate, the training loop and the plots ask the kind instead of naming it.

Imports neither NumPy nor pydantic: the schema reads it at import time and `gradlab
validate` must stay light, so a kind's builder imports its model class only when called.
A new model is one `ModelKind` in `MODEL_KINDS` (plus its model class, which gives its
`param_specs`) and one small case in `tests/test_model_contract.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Optional


class ParamSpec(NamedTuple):
    """What a parameter is, for the rules and the plots that group or scale by it: its layer
    (AGC's `exclude` and the heatmap's rows name it; always the name's part before the last
    dot), its role within the layer, and its input axis without the variant axis (None for a
    vector): unit-wise clipping (AGC) takes one norm per output unit along it."""

    layer: str
    role: str
    fan_in: Optional[int]


@dataclass(frozen=True)
class ModelKind:
    name: str
    # Whether it reads (T, B, in) sequences: it learns exactly the sequence tasks then, and
    # only those (the schema refuses the other pairings).
    sequence: bool
    # Whether its backward pass records dL/dh_t per step (bptt_flow.csv, the flow figure).
    flow: bool
    build: Callable[[Any, Any, str, Optional[int]], Any]  # (ModelConfig, task, dtype, tbptt) -> model
    layers: Callable[[Any], list[str]]  # ModelConfig -> its layers' names, head excluded
    parameter_count: Callable[[Any, int, int], int]  # (ModelConfig, inputs, outputs)
    # Values of the activations the backward pass keeps, per example (task: for seq_len).
    saved_per_example: Callable[[Any, Any], int]
    init_scheme: str = "xavier"  # `init`'s scheme when the config names none
    input_init: bool = False  # whether input weights have an init of their own (`input_init`)
    activations: Optional[tuple[str, ...]] = None  # those it accepts; None: any
    activation_error: str = ""  # the message when it does not, formatted with kind and activation
    # The name of its config class in gradlab.config.schema (the `model` union is made of them).
    config: str = "ModelConfig"
    # Whether it reads token ids, (T, B) int64, rather than one-hot vectors from discrete tasks.
    tokens: bool = False
    # What a title or report adds after depth and width, from the resolved model config.
    details: Callable[[dict], list[str]] = lambda m: []
    # The only tasks it learns, and that only it learns (scalar_rnn: scalar_target); None: any
    # task of its kind (sequence or not) that no other kind claims.
    tasks: Optional[tuple[str, ...]] = None

    @property
    def fixed_activation(self) -> bool:
        """A single allowed activation is the kind's own (gates), not a choice worth naming."""
        return self.activations is not None and len(self.activations) == 1


def _build_mlp(cfg, task, dtype: str, tbptt: Optional[int] = None):
    from .models.mlp import MLP

    return MLP(cfg.depth, cfg.width, task.input_dim, task.output_dim, cfg.activation,
               cfg.init.scheme, cfg.init.gain, dtype)


def _build_recurrent(cfg, task, dtype: str, tbptt: Optional[int] = None):
    from .models.recurrent import Recurrent

    return Recurrent(cfg.kind, cfg.depth, cfg.width, task.input_dim, task.output_dim,
                     per_step=task.per_step, activation_name=cfg.activation,
                     init_scheme=cfg.init.scheme, gain=cfg.init.gain,
                     input_scheme=cfg.input_init.scheme, input_gain=cfg.input_init.gain,
                     dtype=dtype, tbptt=tbptt)


def _build_transformer(cfg, task, dtype: str, tbptt: Optional[int] = None):
    from .models.transformer import Transformer

    return Transformer(cfg, task.input_dim, task.output_dim, per_step=task.per_step,
                       max_len=cfg.max_len, dtype=dtype)


def _build_scalar_rnn(cfg, task, dtype: str, tbptt: Optional[int] = None):
    from .models.scalar_rnn import ScalarRNN

    return ScalarRNN(task.seq_len, cfg.w, cfg.b, dtype)


def _transformer_layers(m) -> list[str]:
    """The parameter layers in forward order (the head excluded), as the model names them."""
    names = ["tok", "pos"]
    for i in range(m.depth):
        b = f"block.{i}"
        attn = [f"{b}.attn.qkv"] + ([f"{b}.attn.q_ln", f"{b}.attn.k_ln"] if m.qk_norm else []) + [f"{b}.attn.proj"]
        mlp = [f"{b}.mlp.fc", f"{b}.mlp.proj"]
        names += ([f"{b}.ln1", *attn, f"{b}.ln2", *mlp] if m.norm == "pre"
                  else [*attn, f"{b}.ln1", *mlp, f"{b}.ln2"])
    return names + (["ln_f"] if m.norm == "pre" else [])


def _transformer_parameters(m, n_in: int, n_out: int) -> int:
    d, r, bias = m.width, m.mlp_ratio, int(m.bias)
    dh = d // m.heads
    block = (d * 3 * d + bias * 3 * d + d * d + bias * d + d * r * d + bias * r * d + r * d * d + bias * d
             + 2 * (d + bias * d) + (2 * (dh + bias * dh) if m.qk_norm else 0))
    head = (0 if m.tie_embeddings else d * n_out) + bias * n_out
    final = d + bias * d if m.norm == "pre" else 0
    return n_in * d + m.max_len * d + m.depth * block + final + head


def _transformer_saved(m, task) -> int:
    """Per example and block: per token the LayerNorms' normalised inputs, q, k, v, the
    attention output, the MLP's hidden pre-activation and GELU, the residual stream; per head
    and query the T attention probabilities."""
    T, d, r = task.seq_len, m.width, m.mlp_ratio
    per_token = d * (2 + 3 + (2 if m.qk_norm else 0) + 1 + 2 * r + 2)
    return m.depth * T * (per_token + m.heads * T)


def _transformer_details(m: dict) -> list[str]:
    z = m.get("z_loss") or 0
    return [f"{m.get('heads')} heads", f"{m.get('norm')}-LN"] + (["qk-norm"] if m.get("qk_norm") else []) + (
        [f"z-loss {z:g}"] if isinstance(z, (int, float)) and z else []) + (
        ["tied"] if m.get("tie_embeddings") else []) + ([] if m.get("bias", True) else ["no bias"])


def describe(m: dict) -> str:
    """'mlp depth 24 width 64 tanh', 'lstm depth 1 width 64', 'transformer depth 4 width 128
    4 heads pre-LN qk-norm': a resolved model config (as config.yaml holds it) in words."""
    k = MODEL_KINDS.get(m.get("kind")) if isinstance(m.get("kind"), str) else None
    words = [str(m.get("kind"))] + [f"{key} {m[key]}" for key in ("depth", "width") if m.get(key) is not None]
    if m.get("activation") is not None and not (k is not None and k.fixed_activation):
        words.append(str(m["activation"]))
    return " ".join(words + (k.details(m) if k is not None else []))


def _mlp_parameters(m, n_in: int, n_out: int) -> int:
    dims = [n_in] + [m.width] * (m.depth - 1) + [n_out]
    return sum(a * b + b for a, b in zip(dims, dims[1:]))


def _recurrent_kind(name: str, gates: int, step_buffers: int, activations: tuple[str, ...],
                    activation_error: str) -> ModelKind:
    """A stack of torch-style recurrent layers with `gates` gate blocks, keeping
    `step_buffers` arrays of width H per time step and example (models/recurrent.py)."""

    def parameters(m, n_in: int, n_out: int) -> int:
        h = m.width
        layers = sum(gates * h * (fan_in + h + 2) for fan_in in [n_in] + [h] * (m.depth - 1))
        return layers + h * n_out + n_out

    return ModelKind(
        name=name, sequence=True, flow=True, build=_build_recurrent,
        layers=lambda m: [f"{name}.{i}" for i in range(m.depth)],
        parameter_count=parameters,
        saved_per_example=lambda m, task: task.seq_len * m.width * m.depth * step_buffers,
        init_scheme="orthogonal", input_init=True,
        activations=activations, activation_error=activation_error)


_GATES_FIXED = ("an {kind}'s gates are fixed (sigmoid and tanh), so activation must be left out "
                "(or tanh), got {activation}")

# Registration order is the order `model.kind` lists its choices in messages. The recurrent
# kinds' step buffers: G each for the input projection, the gates (not rnn), their gradients
# and those laid side by side (gru: twice, and W_hh h per step); then h, dL/dh, h laid side
# by side (lstm: c, tanh c too).
MODEL_KINDS: dict[str, ModelKind] = {k.name: k for k in (
    ModelKind(name="mlp", sequence=False, flow=False, build=_build_mlp,
              layers=lambda m: [f"layer{i}" for i in range(m.depth)],
              parameter_count=_mlp_parameters,
              saved_per_example=lambda m, task: 3 * m.width * m.depth),  # three per layer
    _recurrent_kind("rnn", 1, 3 * 1 + 3, ("tanh", "relu"),
                    "an rnn takes activation tanh or relu (as torch.nn.RNN), got {activation}"),
    _recurrent_kind("lstm", 4, 4 * 4 + 5, ("tanh",), _GATES_FIXED),
    _recurrent_kind("gru", 3, 7 * 3 + 3, ("tanh",), _GATES_FIXED),
    ModelKind(name="transformer", sequence=True, flow=False, build=_build_transformer,
              layers=_transformer_layers, parameter_count=_transformer_parameters,
              saved_per_example=_transformer_saved, init_scheme="xavier", activations=("gelu",),
              config="TransformerConfig", tokens=True, details=_transformer_details),
    # Pascanu et al. 2013's one-unit recurrence, unrolled over the scalar_target task's T
    # steps inside one forward pass: no sequence input, so not a sequence kind.
    ModelKind(name="scalar_rnn", sequence=False, flow=False, build=_build_scalar_rnn,
              layers=lambda m: ["rnn"], parameter_count=lambda m, n_in, n_out: 2,
              saved_per_example=lambda m, task: task.seq_len + 1, config="ScalarRNNConfig", tasks=("scalar_target",),
              details=lambda m: [f"w0 {m.get('w')}", f"b0 {m.get('b')}"]),
)}
