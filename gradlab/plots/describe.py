"""Words for the figures: a config's one-line description and a run's outcome.

The only place in the plots that knows models (through their registered kinds: an LSTM's
gates), tasks and optimizers (the teacher task nobody names); the drawing modules take the
text as it is.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional

from gradlab.io import as_float as _num
from gradlab.kinds import describe as describe_model

if TYPE_CHECKING:
    from .load import Run


def as_int(x: Any) -> Optional[int]:
    v = _num(x)
    return int(v) if v is not None and math.isfinite(v) else None


def describe_config(cfg: dict, fallback_name: str) -> str:
    """'name — mlp depth 24 width 64 tanh (normal init ×2), sgd lr 0.05' for figure titles;
    for a recurrent model also the task ('rnn depth 1 width 64 tanh (orthogonal init ×1.2),
    adding T=30, sgd lr 0.05 momentum 0.9, truncated BPTT every 10 steps')."""

    def get(*keys: str) -> Any:
        node: Any = cfg
        for k in keys:
            if not isinstance(node, dict) or k not in node:
                return None
            node = node[k]
        return node

    def number(x: Any) -> Optional[str]:
        return f"{x:g}" if isinstance(x, (int, float)) and not isinstance(x, bool) else None

    name = str(get("name") or fallback_name)
    model = [describe_model(cfg["model"])] if isinstance(get("model"), dict) else []
    scheme, gain = get("model", "init", "scheme"), get("model", "init", "gain")
    if scheme is not None:
        model.append(f"({scheme} init" + (f" ×{number(gain)})" if number(gain) else ")"))
    parts = [" ".join(model)] if model else []

    # The teacher regression is the MLP default and was never named; every other task is.
    task = get("task", "kind")
    if task is not None and task != "teacher":
        text = str(task)
        if number(get("task", "seq_len")):
            text += f" T={number(get('task', 'seq_len'))}"
        if task == "copy" and number(get("task", "copy_len")):
            text += f" ({number(get('task', 'copy_len'))} of {number(get('task', 'n_symbols')) or '?'} symbols)"
        parts.append(text)

    opt, lr = get("train", "optimizer", "kind"), get("train", "optimizer", "lr")
    if opt is not None:
        text = f"{opt} lr {number(lr)}" if number(lr) else str(opt)
        for key, label in (("momentum", "momentum"), ("weight_decay", "wd")):
            value = get("train", "optimizer", key)
            if number(value) and value:
                text += f" {label} {number(value)}"
        for flag in ("nesterov", "amsgrad", "centered"):
            if get("train", "optimizer", flag) is True:
                text += f" {flag}"
        parts.append(text)
    scale = get("train", "precision", "loss_scale")
    if isinstance(scale, str) and scale != "none":
        parts.append(f"{scale} loss scale" + (" (clipped before the unscale)"
                                              if get("train", "precision", "clip") == "before_unscale" else ""))
    tbptt = get("train", "tbptt")
    if number(tbptt):
        parts.append("truncated BPTT every " + ("step" if tbptt == 1 else f"{number(tbptt)} steps"))
    text = f"{name} — {', '.join(parts)}" if parts else name
    grid = get("grid")
    if isinstance(grid, dict) and grid:
        from gradlab.points import label_value, short_names

        names = short_names(list(grid))
        text += "; grid " + " x ".join(f"{names[k]} {', '.join(label_value(v) for v in vs)}"
                                      for k, vs in grid.items() if isinstance(vs, list))
    return text


def point_config(cfg: dict, point: dict) -> dict:
    """The config dict with a grid point's values in place of the base's (for a figure's
    subtitle: what that point trained), without its grid."""
    import copy

    out = copy.deepcopy(cfg)
    out.pop("grid", None)
    for key, value in point.items():
        node: Any = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) and part.isdigit() else node.setdefault(part, {}) \
                if isinstance(node, dict) else {}
        if isinstance(node, list) and parts[-1].isdigit() and int(parts[-1]) < len(node):
            node[int(parts[-1])] = value
        elif isinstance(node, dict):
            node[parts[-1]] = value
    return out


def chance_accuracy(cfg: dict) -> Optional[tuple[float, str]]:
    """(accuracy of a uniform guess, its fraction as text) for the classification tasks."""
    task = cfg.get("task") if isinstance(cfg.get("task"), dict) else {}
    kind = task.get("kind")
    if kind == "spirals":
        return 0.5, "1/2"
    if kind == "temporal_order":
        return 0.25, "1/4"
    if kind == "copy":  # accuracy counts the recall window, where only the symbols make sense
        n = as_int(task.get("n_symbols")) or 8
        return 1.0 / n, f"1/{n}"
    if kind == "associative_recall":  # the answer is one of the values
        n = as_int(task.get("n_values")) or 10
        return 1.0 / n, f"1/{n}"
    if kind == "dyck":  # brackets and END; a text's characters (lm) have no uniform chance worth drawing
        n = 2 * (as_int(task.get("n_types")) or 2) + 1
        return 1.0 / n, f"1/{n}"
    return None


def outcome(run: Run) -> str:
    if not run.diverged:
        done = run.steps_completed if run.steps_completed is not None else run.steps
        return f"trained {done} step{'s' if done != 1 else ''}" if done is not None else "trained"
    text = f"diverged at step {run.divergence_step if run.divergence_step is not None else '?'}"
    first = run.first_nonfinite or {}
    if first.get("phase"):
        text += f" in {first['phase']}"
    if first.get("where"):
        text += f" at {first['where']}"
    if first.get("kind"):
        text += f" ({first['kind']})"
    return text


