"""Which experiment configs may train in one stack (gradlab.train.train_seed's `configs`).

A stack shares its initial weights, its batches and its shapes: one forward and backward
pass advance every variant. So configs may share a stack when they differ only in numbers
that the clipping rules and the optimizer apply per variant, the hyperparameters: the
clipping list, the optimizer's lr, momentum, dampening, betas, eps, weight_decay and alpha,
the schedule's warmup_steps and min_lr, and the loss scale's knobs (init_scale,
growth_factor, backoff_factor, growth_interval, min_scale): gradlab.optim, gradlab.schedules
and gradlab.precision hold those as (V,) values. Everything else (model, task, batch, steps,
dtype, the optimizer and schedule kinds and their flags such as nesterov, the compute dtype,
the loss_scale kind and clip order) makes a stack of its own.
Names and seeds are no part of it: a stack trains one seed, given to train_seed apart.
"""

from __future__ import annotations

from typing import Any

# The hyperparameters by the config section holding them (key paths as `--set` takes them).
HYPERPARAMETERS: dict[tuple[str, ...], tuple[str, ...]] = {
    ("train", "optimizer"): ("lr", "momentum", "dampening", "betas", "eps", "weight_decay", "alpha"),
    ("train", "schedule"): ("warmup_steps", "min_lr"),
    ("train", "precision"): ("init_scale", "growth_factor", "backoff_factor", "growth_interval", "min_scale"),
}
# The top-level keys that name or multiply runs rather than shape a stack.
_PER_RUN = ("name", "seed", "seeds", "clipping", "sweep", "grid")


def is_hyperparameter(path: str) -> bool:
    """Whether a dotted key path (`train.optimizer.lr`, `train.optimizer.betas.0`,
    `clipping.1.max_norm`) is one that configs of one stack may hold apart."""
    parts = tuple(path.split("."))
    return parts[0] == "clipping" or any(parts[i] in HYPERPARAMETERS.get(parts[:i], ()) for i in range(1, len(parts)))


def _freeze(x: Any) -> Any:
    if isinstance(x, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in x.items()))
    if isinstance(x, list):
        return tuple(_freeze(v) for v in x)
    return x


def _shape(cfg: Any) -> dict:
    data = cfg.model_dump(mode="json")
    for key in _PER_RUN:
        data.pop(key, None)
    train = data["train"]
    for (_, section), names in HYPERPARAMETERS.items():
        train[section] = {k: v for k, v in (train.get(section) or {}).items() if k not in names}
    # The default schedule is left out of a dump; its kind is part of the stack's shape.
    train["schedule"]["kind"] = cfg.train.schedule.kind
    return data


def stack_key(cfg: Any) -> tuple:
    """A hashable key of an ExperimentConfig: equal keys <=> the configs may train in one stack."""
    return _freeze(_shape(cfg))


def stack_differences(a: Any, b: Any) -> list[str]:
    """The dotted key paths in which two configs differ beyond the hyperparameters (empty when
    they may share a stack)."""
    def flat(x: Any, prefix: str = "") -> dict[str, Any]:
        if isinstance(x, dict):
            return {k: v for key, val in x.items() for k, v in flat(val, f"{prefix}{key}.").items()}
        return {prefix.rstrip("."): x}
    fa, fb = flat(_shape(a)), flat(_shape(b))
    return sorted(k for k in fa.keys() | fb.keys() if fa.get(k, object()) != fb.get(k, object()))
