"""Weight initialisation schemes, each times `gain` (the explosion knob).

Weights are drawn in float64 from the seed's init stream and cast to the run dtype, so a
float32 and a float64 run of the same seed start from the same (rounded) weights.
Shapes are (fan_in, fan_out): layers compute x @ W.
"""

from __future__ import annotations

import math

import numpy as np


def orthogonal(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A (semi-)orthogonal matrix, as torch.nn.init.orthogonal_ draws it (QR of a Gaussian)."""
    rows, cols = shape
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))  # makes the distribution uniform (Haar)
    return q if rows >= cols else q.T


def init_weight(rng: np.random.Generator, shape: tuple[int, int], scheme: str, gain: float) -> np.ndarray:
    fan_in, fan_out = shape
    if scheme == "orthogonal":
        return gain * orthogonal(rng, shape)
    std = {
        "normal": 1.0 / math.sqrt(fan_in),  # LeCun: variance-preserving for linear layers
        "xavier": math.sqrt(2.0 / (fan_in + fan_out)),  # Glorot normal
        "he": math.sqrt(2.0 / fan_in),  # Kaiming normal, for ReLU
    }[scheme]
    return gain * std * rng.standard_normal(shape)
