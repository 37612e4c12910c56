"""Models: functional forward/backward over a flat, named parameter mapping with a leading
variant axis. `build_model` maps a config to a model (its kind, registered in `gradlab.kinds`,
builds it); `stack` gives every variant a copy."""

from __future__ import annotations

from typing import Optional

import numpy as np

from ..kinds import MODEL_KINDS
from .mlp import MLP
from .recurrent import Recurrent


def build_model(cfg, task, dtype: str, tbptt: Optional[int] = None):
    """The model a ModelConfig describes, sized for the task's inputs and outputs, built by
    its registered kind (gradlab.kinds.MODEL_KINDS)."""
    return MODEL_KINDS[cfg.kind].build(cfg, task, dtype, tbptt)


def stack(params: dict[str, np.ndarray], V: int) -> dict[str, np.ndarray]:
    """V identical copies of one parameter set, stacked on a new leading axis."""
    return {k: np.repeat(v[None], V, axis=0) for k, v in params.items()}


__all__ = ["MLP", "Recurrent", "build_model", "stack"]
