"""Models: functional forward/backward over a flat, named parameter mapping with a leading
variant axis. `build_model` maps a config to a model; `stack` gives every variant a copy."""

from __future__ import annotations

import numpy as np

from .mlp import MLP


def build_model(cfg, input_dim: int, output_dim: int, dtype: str):
    """The model a ModelConfig describes, sized for the task's input and output."""
    if cfg.kind == "mlp":
        return MLP(cfg.depth, cfg.width, input_dim, output_dim, cfg.activation,
                   cfg.init.scheme, cfg.init.gain, dtype)
    raise ValueError(f"unknown model kind {cfg.kind!r}")


def stack(params: dict[str, np.ndarray], V: int) -> dict[str, np.ndarray]:
    """V identical copies of one parameter set, stacked on a new leading axis."""
    return {k: np.repeat(v[None], V, axis=0) for k, v in params.items()}


__all__ = ["MLP", "build_model", "stack"]
