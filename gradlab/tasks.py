"""Tasks: where batches come from and which loss scores them.

Each task draws from the seed's own data stream, so every variant of a seed sees identical
batches in the same order, and a variant added to the experiment shifts nobody's numbers.
Only a task's fixed parts (the teacher network) come from the separate task stream.

Sequence inputs are time-major, (T, B, features). Class labels are int64; regression
targets and inputs are in the run's dtype, drawn in it directly so that float32 runs
make no float64 batch-sized temporaries.
"""

from __future__ import annotations

import math

import numpy as np

from . import config as C
from .losses import LOSSES, accuracy, one_hot
from .models import MLP, stack


class Task:
    """The interface: dimensions, `batch(rng) -> (x, y)`, `loss`, `accuracy`."""

    kind: str
    sequence = False  # x is (T, B, input_dim) rather than (B, input_dim)
    per_step = False  # the model answers at every step: out (V, T, B, O), y (T, B)
    classification = False  # y holds int64 class labels, scored by softmax cross-entropy

    def __init__(self, cfg, dtype: str, task_rng: np.random.Generator) -> None:
        self.batch_size = cfg.batch_size
        self.dtype = np.dtype(dtype)
        self.input_dim, self.output_dim = C.task_dims(cfg)

    @property
    def loss_name(self) -> str:
        return "cross_entropy" if self.classification else "mse"

    def batch(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def loss(self, out: np.ndarray, y: np.ndarray, z_loss: float = 0.0,
             stats: dict | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Per-variant loss (V,) and dL/d(out); `out` is left untouched. A classification
        loss adds `z_loss` x (log Z)^2 and puts the mean log Z in `stats["logit_z"]`; the
        schema allows z_loss on classification tasks only."""
        if self.classification:
            return LOSSES["cross_entropy"](out, y, z_loss=z_loss, stats=stats)
        return LOSSES["mse"](out, y)

    def accuracy(self, out: np.ndarray, y: np.ndarray) -> np.ndarray | None:
        """Per-variant accuracy (V,) of a classification task; None for regression."""
        return accuracy(out, y) if self.classification else None


class TeacherTask(Task):
    """Regression onto a fixed random teacher network (the student-teacher setting).

    The teacher (a small tanh MLP, Glorot init) is drawn once per seed from its own stream;
    every step labels fresh standard-normal inputs with it (plus optional Gaussian noise).
    """

    kind = "teacher"

    def __init__(self, cfg, dtype: str, task_rng: np.random.Generator) -> None:
        super().__init__(cfg, dtype, task_rng)
        self.noise = cfg.noise
        self.teacher = MLP(cfg.teacher_depth, cfg.teacher_width, cfg.input_dim, cfg.output_dim,
                           "tanh", "xavier", 1.0, dtype)
        self.teacher_params = stack(self.teacher.init(task_rng), 1)

    def batch(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        x = rng.standard_normal((self.batch_size, self.input_dim), dtype=self.dtype)
        y, _ = self.teacher.forward(self.teacher_params, x)
        y = y[0]
        if self.noise:
            y += self.noise * rng.standard_normal(y.shape, dtype=self.dtype)
        return x, y


class SpiralsTask(Task):
    """Two interleaved spirals in the plane, two classes (after Lang & Witbrock 1988,
    "Learning to tell two spirals apart").

    Each point draws its class c (uniform), t ~ U(0, 1) and lies at radius t, angle
    `turns * 2 pi * t + c * pi`, plus isotropic Gaussian noise of std `noise`. The radius
    is at most 1 (plus noise), so the features are O(1) as they stand.
    """

    kind = "spirals"
    classification = True

    def __init__(self, cfg, dtype: str, task_rng: np.random.Generator) -> None:
        super().__init__(cfg, dtype, task_rng)
        self.turns = cfg.turns
        self.noise = cfg.noise

    def batch(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        B = self.batch_size
        y = rng.integers(0, 2, B)
        t = rng.random(B, dtype=self.dtype)
        angle = (self.turns * 2 * math.pi) * t + math.pi * y.astype(self.dtype)
        x = np.stack([t * np.cos(angle), t * np.sin(angle)], axis=1)
        if self.noise:
            x += self.noise * rng.standard_normal(x.shape, dtype=self.dtype)
        return x, y


class AddingTask(Task):
    """The adding problem (Hochreiter & Schmidhuber 1997, exp. 4; Pascanu et al. 2013;
    Le et al. 2015).

    Each step's input is (value ~ U(0, 1), marker in {0, 1}); exactly two steps are marked,
    one uniformly in the first half of the sequence (t < seq_len // 2) and one in the second.
    The target (B, 1) is the sum of the two marked values, scored by MSE. Predicting the
    constant 1.0 scores Var(U1 + U2) = 1/6 ~ 0.167: a model must beat that to have learnt
    anything.
    """

    kind = "adding"
    sequence = True

    def __init__(self, cfg, dtype: str, task_rng: np.random.Generator) -> None:
        super().__init__(cfg, dtype, task_rng)
        self.seq_len = cfg.seq_len

    def batch(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        T, B = self.seq_len, self.batch_size
        half = T // 2
        x = np.zeros((T, B, 2), dtype=self.dtype)
        values = rng.random((T, B), dtype=self.dtype)
        x[..., 0] = values
        first = rng.integers(0, half, B)
        second = rng.integers(half, T, B)
        cols = np.arange(B)
        x[first, cols, 1] = 1.0
        x[second, cols, 1] = 1.0
        y = (values[first, cols] + values[second, cols])[:, None]
        return x, y


class CopyTask(Task):
    """The copying memory problem (Hochreiter & Schmidhuber 1997; Arjovsky et al. 2016).

    Alphabet: 0 blank, 1..n_symbols symbols, n_symbols + 1 delimiter (one-hot inputs of
    n_symbols + 2). A sequence of T = seq_len steps holds copy_len random symbols, blanks,
    the delimiter at T - copy_len - 1 and copy_len closing blanks; the target is blank
    (class 0) at every step except the last copy_len, which must reproduce the symbols.
    Softmax cross-entropy over all steps and the batch. Baseline: blanks, then uniform
    guesses over the symbols, scores copy_len * log(n_symbols) / T. Accuracy counts the
    recall window only (the blanks elsewhere are trivial).
    """

    kind = "copy"
    sequence = True
    per_step = True
    classification = True

    def __init__(self, cfg, dtype: str, task_rng: np.random.Generator) -> None:
        super().__init__(cfg, dtype, task_rng)
        self.seq_len = cfg.seq_len
        self.copy_len = cfg.copy_len
        self.n_symbols = cfg.n_symbols

    def batch(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        T, K, B = self.seq_len, self.copy_len, self.batch_size
        symbols = rng.integers(1, self.n_symbols + 1, (K, B))
        seq = np.zeros((T, B), dtype=np.int64)
        seq[:K] = symbols
        seq[T - K - 1] = self.n_symbols + 1
        y = np.zeros((T, B), dtype=np.int64)
        y[T - K:] = symbols
        return one_hot(seq, self.input_dim, self.dtype), y

    def accuracy(self, out: np.ndarray, y: np.ndarray) -> np.ndarray:
        return accuracy(out[:, -self.copy_len:], y[-self.copy_len:])


class TemporalOrderTask(Task):
    """The temporal order problem (Hochreiter & Schmidhuber 1997, exp. 6a; Pascanu et al.
    2013).

    Symbols a, b, c, d (distractors), X, Y (relevant), B, E (start and end), one-hot in 8
    dimensions in that order. A sequence starts with B, ends with E and is otherwise random
    distractors, except one X or Y at t1 in [0.1 T, 0.2 T) and one at t2 in [0.5 T, 0.6 T).
    The class is the pair in order, XX, XY, YX, YY = 0..3, read from the last state.
    """

    kind = "temporal_order"
    sequence = True
    classification = True
    X, BEGIN, END = 4, 6, 7  # Y = X + 1

    def __init__(self, cfg, dtype: str, task_rng: np.random.Generator) -> None:
        super().__init__(cfg, dtype, task_rng)
        self.seq_len = T = cfg.seq_len
        # Integer ceilings: t in [a T / 10, b T / 10) without float rounding at the edges.
        self.windows = [(-(-a * T // 10), -(-b * T // 10)) for a, b in ((1, 2), (5, 6))]

    def batch(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        T, B = self.seq_len, self.batch_size
        seq = rng.integers(0, 4, (T, B))
        seq[0], seq[-1] = self.BEGIN, self.END
        y = rng.integers(0, 4, B)
        cols = np.arange(B)
        for (lo, hi), which in zip(self.windows, (y // 2, y % 2)):
            seq[rng.integers(lo, hi, B), cols] = self.X + which
        return one_hot(seq, self.input_dim, self.dtype), y


TASKS = {cls.kind: cls for cls in (TeacherTask, SpiralsTask, AddingTask, CopyTask, TemporalOrderTask)}


def build_task(cfg, dtype: str, task_rng: np.random.Generator) -> Task:
    """The task a task config describes; `task_rng` draws only its fixed parts."""
    if cfg.kind not in TASKS:
        raise ValueError(f"unknown task kind {cfg.kind!r}")
    return TASKS[cfg.kind](cfg, dtype, task_rng)
