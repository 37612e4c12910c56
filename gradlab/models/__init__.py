"""Models: functional forward/backward over a flat, named parameter mapping with a leading
variant axis. `build_model` maps a config to a model (its kind, registered in `gradlab.kinds`,
builds it); `stack` gives every variant a copy."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..compute import Policy
from ..kinds import MODEL_KINDS
from .mlp import MLP
from .recurrent import Recurrent


def build_model(cfg, task, dtype: str, tbptt: Optional[int] = None, compute: str = "float32"):
    """The model a ModelConfig describes, sized for the task's inputs and outputs, built by
    its registered kind (gradlab.kinds.MODEL_KINDS), rounding its values to `compute` at
    every op boundary (gradlab.compute; float16 and bfloat16 need float32 master weights)."""
    if compute != "float32" and np.dtype(dtype) != np.float32:
        raise ValueError(f"compute {compute} needs float32 master weights, got dtype {dtype}")
    model = MODEL_KINDS[cfg.kind].build(cfg, task, dtype, tbptt)
    model.compute = Policy(compute)
    return model


def stack(params: dict[str, np.ndarray], V: int) -> dict[str, np.ndarray]:
    """V identical copies of one parameter set, stacked on a new leading axis."""
    return {k: np.repeat(v[None], V, axis=0) for k, v in params.items()}


__all__ = ["MLP", "Recurrent", "build_model", "stack"]
