"""Tasks: where batches come from and which loss scores them.

Each task draws from the seed's own data stream, so every variant of a seed sees identical
batches in the same order, and a variant added to the experiment shifts nobody's numbers.
Only a task's fixed parts (the teacher network) come from the separate task stream.

Sequence inputs are time-major, (T, B, features). Class labels are int64; regression
targets and inputs are in the run's dtype, drawn in it directly so that float32 runs
make no float64 batch-sized temporaries. A model that embeds tokens (`ModelKind.tokens`)
gets the discrete tasks' inputs as int64 token ids (T, B) instead of their one-hot vectors:
the same sequences, drawn by the same calls on the stream.

`heldout(rng, n)` is the validation set: n batches drawn once from the seed's own held-out
stream (the text's last tenth for `lm`), so no training batch is ever one of them.
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
    discrete = False  # the inputs are symbols: one-hot vectors, or token ids with `tokens`
    tokens = False  # set by build_task for a model that reads token ids

    def __init__(self, cfg, dtype: str, task_rng: np.random.Generator) -> None:
        self.batch_size = cfg.batch_size
        self.dtype = np.dtype(dtype)
        self.input_dim, self.output_dim = C.task_dims(cfg)

    @property
    def loss_name(self) -> str:
        return "cross_entropy" if self.classification else "mse"

    def batch(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def heldout(self, rng: np.random.Generator, n_batches: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """The validation batches, drawn from `rng` (a stream no training batch comes from)."""
        return [self.batch(rng) for _ in range(n_batches)]

    def inputs(self, seq: np.ndarray) -> np.ndarray:
        """A discrete task's (T, B) symbols as the model reads them: ids, or one-hot."""
        return seq if self.tokens else one_hot(seq, self.input_dim, self.dtype)

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
    discrete = True
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
        return self.inputs(seq), y

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
    discrete = True
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
        return self.inputs(seq), y


class AssociativeRecallTask(Task):
    """Associative recall (Ba et al. 2016, "Using Fast Weights to Attend to the Recent Past",
    there "associative retrieval"; one query of the multi-query form, MQAR, of Arora et al.
    2023, "Zoology").

    Tokens: keys 0..n_keys-1, values n_keys..n_keys+n_values-1, then the query marker. A
    sequence is n_pairs (key, value) pairs with distinct keys and values drawn with
    replacement, the marker, then one of the keys: T = 2 n_pairs + 2. The class (0..n_values-1)
    is the value that followed the queried key, read at the last position. Guessing scores
    log(n_values) and 1 / n_values accuracy: the answer is nowhere near the query, so a model
    must look back to the pair, which attention does in one step and a recurrence must carry.
    """

    kind = "associative_recall"
    sequence = True
    classification = True
    discrete = True

    def __init__(self, cfg, dtype: str, task_rng: np.random.Generator) -> None:
        super().__init__(cfg, dtype, task_rng)
        self.n_pairs, self.n_keys, self.n_values = cfg.n_pairs, cfg.n_keys, cfg.n_values
        self.seq_len = cfg.seq_len

    def batch(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        B, P = self.batch_size, self.n_pairs
        # Distinct keys per sequence: the first P of a random permutation (argsort of uniforms).
        keys = rng.random((self.n_keys, B)).argsort(axis=0)[:P]
        values = rng.integers(0, self.n_values, (P, B))
        which = rng.integers(0, P, B)
        cols = np.arange(B)
        seq = np.empty((self.seq_len, B), dtype=np.int64)
        seq[0:2 * P:2] = keys
        seq[1:2 * P:2] = self.n_keys + values
        seq[-2] = self.n_keys + self.n_values
        seq[-1] = keys[which, cols]
        return self.inputs(seq), values[which, cols]


class DyckTask(Task):
    """Next-token prediction on Dyck-k: balanced strings of `n_types` bracket pairs nested at
    most `depth` deep (the language a stack recognises; a standard probe of hierarchical
    structure in sequence models, e.g. Hewitt et al. 2020, Yao et al. 2021).

    Tokens: opening brackets 0..k-1, closing k..2k-1 (k + i closes i), END = 2k. Generation,
    one position at a time for the whole batch: open (a uniform type) or close the innermost
    open bracket with probability 1/2 each, except that it must open at depth 0 and close at
    `depth` or when the positions left are just enough to close everything; every string
    fills seq_len (even) exactly. The target at t is the token at t + 1, END at the last.
    A uniform guess scores log(2k + 1); knowing only where the string is (never its stack)
    still leaves the closing type to chance, while a model that tracks the stack predicts
    every forced step exactly and a closing bracket's type always: that gap is what it learnt.
    """

    kind = "dyck"
    sequence = True
    per_step = True
    classification = True
    discrete = True

    def __init__(self, cfg, dtype: str, task_rng: np.random.Generator) -> None:
        super().__init__(cfg, dtype, task_rng)
        self.seq_len, self.n_types, self.depth = cfg.seq_len, cfg.n_types, cfg.depth

    def batch(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        T, B, k = self.seq_len, self.batch_size, self.n_types
        coin = rng.random((T, B))
        types = rng.integers(0, k, (T, B))
        stack = np.zeros((self.depth + 1, B), dtype=np.int64)
        d = np.zeros(B, dtype=np.int64)
        cols = np.arange(B)
        seq = np.empty((T, B), dtype=np.int64)
        for t in range(T):
            can_open = (d < self.depth) & (d + 1 <= T - t - 1)
            opens = can_open & ((d == 0) | (coin[t] < 0.5))
            stack[d, cols] = np.where(opens, types[t], stack[d, cols])
            closing = stack[np.maximum(d - 1, 0), cols]
            seq[t] = np.where(opens, types[t], k + closing)
            d = d + np.where(opens, 1, -1)
        y = np.empty((T, B), dtype=np.int64)
        y[:-1] = seq[1:]
        y[-1] = 2 * k
        return self.inputs(seq), y


class LMTask(Task):
    """Character-level language modelling on a text (gradlab.texts): the classes are its
    sorted distinct characters; a batch is B windows of seq_len characters at uniform
    starts in the training part (all but the last tenth), the target at t the character at
    t + 1. The held-out batches are windows of the last tenth. A unigram model (the
    characters' frequencies) scores the text's character entropy; a model must beat it to
    have learnt any context.
    """

    kind = "lm"
    sequence = True
    per_step = True
    classification = True
    discrete = True

    def __init__(self, cfg, dtype: str, task_rng: np.random.Generator) -> None:
        super().__init__(cfg, dtype, task_rng)
        from .errors import UserError
        from .texts import TextError, held_out_start, lm_text

        self.seq_len = cfg.seq_len
        try:
            text = lm_text(cfg.path, cfg.sha256)
        except TextError as e:  # moved or edited since the config was resolved
            raise UserError(str(e), file=cfg.path or "gradlab's source", key="task.path") from None
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        vocab = np.unique(codes)
        ids = np.searchsorted(vocab, codes).astype(np.int64)
        cut = held_out_start(len(ids))
        self.train_ids, self.val_ids = ids[:cut], ids[cut:]

    def _windows(self, ids: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        T = self.seq_len
        starts = rng.integers(0, len(ids) - T, self.batch_size)  # each window needs T + 1 characters
        at = starts[None, :] + np.arange(T)[:, None]
        return self.inputs(ids[at]), ids[at + 1]

    def batch(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        return self._windows(self.train_ids, rng)

    def heldout(self, rng: np.random.Generator, n_batches: int) -> list[tuple[np.ndarray, np.ndarray]]:
        return [self._windows(self.val_ids, rng) for _ in range(n_batches)]


class ScalarTargetTask(Task):
    """The scalar_rnn's task (Pascanu et al. 2013, section 3.2): every example is x_0 as
    input and `target` as the value sigmoid(x_T) should take; the squared error is the
    paper's (sigmoid(x_50) - 0.7)^2. Deterministic: the data stream is never drawn from."""

    kind = "scalar_target"

    def __init__(self, cfg, dtype: str, task_rng: np.random.Generator) -> None:
        super().__init__(cfg, dtype, task_rng)
        self.seq_len, self.x0, self.target = cfg.seq_len, cfg.x0, cfg.target

    def batch(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        shape = (self.batch_size, 1)
        return np.full(shape, self.x0, dtype=self.dtype), np.full(shape, self.target, dtype=self.dtype)


TASKS = {cls.kind: cls for cls in (TeacherTask, SpiralsTask, AddingTask, CopyTask, TemporalOrderTask,
                                    AssociativeRecallTask, DyckTask, LMTask, ScalarTargetTask)}


def build_task(cfg, dtype: str, task_rng: np.random.Generator, tokens: bool = False) -> Task:
    """The task a task config describes; `task_rng` draws only its fixed parts. With
    `tokens`, a discrete task's inputs are token ids (T, B) int64; the continuous ones
    (adding's values) stay vectors, which a token model embeds linearly."""
    if cfg.kind not in TASKS:
        raise ValueError(f"unknown task kind {cfg.kind!r}")
    task = TASKS[cfg.kind](cfg, dtype, task_rng)
    task.tokens = tokens and task.discrete
    return task
