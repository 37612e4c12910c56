"""What an experiment will hold in memory, estimated before anything is allocated: it
mirrors the models' parameter counts and the recurrent layers' per-step buffers."""

from __future__ import annotations

import os
from typing import Any

from gradlab.errors import UserError

from .schema import ExperimentConfig

_ITEMSIZE = {"float32": 4, "float64": 8}


def task_dims(task: Any) -> tuple[int, int]:
    """(features per example or time step, outputs or classes) of a task: the model's size."""
    if task.kind == "teacher":
        return task.input_dim, task.output_dim
    if task.kind == "copy":  # one-hot of blank, the symbols, the delimiter; classes: blank + symbols
        return task.n_symbols + 2, task.n_symbols + 1
    return {"spirals": (2, 2), "adding": (2, 1), "temporal_order": (8, 4)}[task.kind]


_GATES = {"rnn": 1, "lstm": 4, "gru": 3}
# Arrays of width H that a recurrent layer keeps per time step and example (models/recurrent.py):
# G each for the input projection, the gates (not rnn), their gradients and those laid side by
# side (gru: twice, and W_hh h per step); then h, dL/dh, h laid side by side (lstm: c, tanh c too).
_STEP_BUFFERS = {"rnn": 3 * 1 + 3, "lstm": 4 * 4 + 5, "gru": 7 * 3 + 3}


def _parameter_count(cfg: ExperimentConfig) -> int:
    m = cfg.model
    n_in, n_out = task_dims(cfg.task)
    if m.kind == "mlp":
        dims = [n_in] + [m.width] * (m.depth - 1) + [n_out]
        return sum(a * b + b for a, b in zip(dims, dims[1:]))
    g, h = _GATES[m.kind], m.width
    layers = sum(g * h * (fan_in + h + 2) for fan_in in [n_in] + [h] * (m.depth - 1))
    return layers + h * n_out + n_out


def estimate_memory_bytes(cfg: ExperimentConfig) -> int:
    """What one seed's lockstep training holds: per variant, parameters, gradients and two
    optimizer buffers (4P), the activations the backward pass keeps (three per layer for an
    MLP; gates, states and their gradients at every time step for recurrent layers), and
    the metrics."""
    v, m = len(cfg.clipping), cfg.model
    if m.kind == "mlp":
        saved = 3 * m.width * m.depth
    else:
        saved = cfg.task.seq_len * m.width * m.depth * _STEP_BUFFERS[m.kind]
    arrays = 4 * _parameter_count(cfg) + cfg.task.batch_size * saved
    metrics = 8 * cfg.train.steps * v * (m.depth * 4 + 10)
    return _ITEMSIZE[cfg.train.dtype] * v * arrays + metrics


def available_memory_bytes() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


def _check_memory(cfg: ExperimentConfig, blame: Any) -> None:
    """Refuse what would not fit, naming what made it too big: blame() -> file, key, line."""
    need, have = estimate_memory_bytes(cfg), available_memory_bytes()
    if need <= 0.8 * have:
        return
    file, key, line = blame()
    v, p = len(cfg.clipping), _parameter_count(cfg)
    params = f"{p:,}" if p < 10**6 else f"{p:.2g}".replace("e+", "e")
    raise UserError(
        f"this experiment needs about {need / 2**30:.1f} GiB ({v} variant{'s' * (v != 1)} x {params} parameters "
        f"with gradients, optimizer state and activations), more than 80% of the {have / 2**30:.1f} GiB available; "
        "reduce model.width, model.depth, task.batch_size, train.steps or the clipping list",
        file=file, key=key, line=line,
    )
