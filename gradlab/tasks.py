"""Tasks: where batches come from and which loss scores them.

Each task draws from the seed's own data stream, so every variant of a seed sees identical
batches in the same order, and a variant added to the experiment shifts nobody's numbers.
"""

from __future__ import annotations

import numpy as np

from .losses import mse
from .models import MLP, stack


class TeacherTask:
    """Regression onto a fixed random teacher network.

    The teacher (a small tanh MLP, Glorot init) is drawn once per seed from its own stream;
    every step labels fresh standard-normal inputs with it (plus optional Gaussian noise).
    """

    kind = "teacher"
    loss_name = "mse"

    def __init__(self, cfg, dtype: str, teacher_rng: np.random.Generator) -> None:
        self.batch_size = cfg.batch_size
        self.input_dim = cfg.input_dim
        self.output_dim = cfg.output_dim
        self.noise = cfg.noise
        self.dtype = np.dtype(dtype)
        self.teacher = MLP(cfg.teacher_depth, cfg.teacher_width, cfg.input_dim, cfg.output_dim,
                           "tanh", "xavier", 1.0, dtype)
        self.teacher_params = stack(self.teacher.init(teacher_rng), 1)

    def batch(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        x = rng.standard_normal((self.batch_size, self.input_dim), dtype=self.dtype)
        y, _ = self.teacher.forward(self.teacher_params, x)
        y = y[0]
        if self.noise:
            y += self.noise * rng.standard_normal(y.shape, dtype=self.dtype)
        return x, y

    def loss(self, out: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return mse(out, y)


def build_task(cfg, dtype: str, teacher_rng: np.random.Generator):
    if cfg.kind == "teacher":
        return TeacherTask(cfg, dtype, teacher_rng)
    raise ValueError(f"unknown task kind {cfg.kind!r}")
