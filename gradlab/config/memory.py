"""What an experiment will hold in memory, estimated before anything is allocated: it
mirrors the models' parameter counts and the buffers their backward passes keep, as each
model kind declares them (gradlab.kinds)."""

from __future__ import annotations

import os
from typing import Any

from gradlab.errors import UserError
from gradlab.kinds import MODEL_KINDS

from .schema import ExperimentConfig

_ITEMSIZE = {"float32": 4, "float64": 8}


def task_dims(task: Any) -> tuple[int, int]:
    """(features per example or time step, outputs or classes) of a task: the model's size."""
    if task.kind == "teacher":
        return task.input_dim, task.output_dim
    if task.kind == "copy":  # one-hot of blank, the symbols, the delimiter; classes: blank + symbols
        return task.n_symbols + 2, task.n_symbols + 1
    if task.kind == "associative_recall":  # keys, values, the query marker; classes: the values
        return task.n_keys + task.n_values + 1, task.n_values
    if task.kind == "dyck":  # opening and closing brackets and END, inputs and classes alike
        return 2 * task.n_types + 1, 2 * task.n_types + 1
    if task.kind == "lm":  # the text's distinct characters
        from gradlab.texts import lm_text

        n = len(set(lm_text(task.path, task.sha256)))
        return n, n
    return {"spirals": (2, 2), "adding": (2, 1), "temporal_order": (8, 4), "scalar_target": (1, 1)}[task.kind]


def _parameter_count(cfg: ExperimentConfig) -> int:
    return MODEL_KINDS[cfg.model.kind].parameter_count(cfg.model, *task_dims(cfg.task))


def estimate_memory_bytes(cfg: ExperimentConfig) -> int:
    """What one seed's lockstep training holds: per variant, parameters, gradients and two
    optimizer buffers (4P), the activations the backward pass keeps (three per layer for an
    MLP; gates, states and their gradients at every time step for recurrent layers), the
    held-out set and the metrics. float16 or bfloat16 compute adds the step's compute copy of
    the parameters (P; held in float32, see gradlab.compute); measuring underflow, the float32
    backward replay's gradients and buffers (at most P + the activations) and underflow.csv's
    table; measuring smoothness, three parameter sets and the activations."""
    v, m = len(cfg.clipping), cfg.model
    saved = MODEL_KINDS[m.kind].saved_per_example(m, cfg.task)
    copies = 5 if cfg.train.precision.compute != "float32" else 4
    arrays = copies * _parameter_count(cfg) + cfg.task.batch_size * saved
    metrics = 8 * cfg.train.steps * v * (m.depth * 4 + 12)  # + val_loss, val_accuracy
    if cfg.train.precision.measures_underflow:
        arrays += _parameter_count(cfg) + cfg.task.batch_size * saved
        metrics += 8 * cfg.train.steps * v * m.depth * 4
    if cfg.train.measure_smoothness is not None:
        # x_prev's copy, x_mid, the first gradient's copy and the float32 model's buffers.
        arrays += 3 * _parameter_count(cfg) + cfg.task.batch_size * saved
    # The held-out batches, kept for the whole run (inputs as vectors: the larger encoding).
    steps_per_example = getattr(cfg.task, "seq_len", 1)
    heldout = cfg.train.evaluate_batches * cfg.task.batch_size * steps_per_example * (task_dims(cfg.task)[0] + 1)
    return _ITEMSIZE[cfg.train.dtype] * (v * arrays + heldout) + metrics


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
