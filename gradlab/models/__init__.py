"""Models: functional forward/backward over a flat, named parameter mapping with a leading
variant axis. `build_model` maps a config to a model; `stack` gives every variant a copy."""

from __future__ import annotations

from typing import Optional

import numpy as np

from .mlp import MLP
from .recurrent import Recurrent


def build_model(cfg, task, dtype: str, tbptt: Optional[int] = None):
    """The model a ModelConfig describes, sized for the task's inputs and outputs."""
    if cfg.kind == "mlp":
        return MLP(cfg.depth, cfg.width, task.input_dim, task.output_dim, cfg.activation,
                   cfg.init.scheme, cfg.init.gain, dtype)
    return Recurrent(cfg.kind, cfg.depth, cfg.width, task.input_dim, task.output_dim,
                     per_step=task.per_step, activation_name=cfg.activation,
                     init_scheme=cfg.init.scheme, gain=cfg.init.gain,
                     input_scheme=cfg.input_init.scheme, input_gain=cfg.input_init.gain,
                     dtype=dtype, tbptt=tbptt)


def stack(params: dict[str, np.ndarray], V: int) -> dict[str, np.ndarray]:
    """V identical copies of one parameter set, stacked on a new leading axis."""
    return {k: np.repeat(v[None], V, axis=0) for k, v in params.items()}


__all__ = ["MLP", "Recurrent", "build_model", "stack"]
