"""The transform protocol: what happens to a stack of gradients between the backward pass
and the parameter write (clipping rules, skip rules, and last the optimizer, gradlab.optim),
Optax-style.

A transform is built once for the variants that share it and is a pair

    init(params) -> state
    update(grads, state, params, ctx) -> (grads, state, stats)

over stacked arrays: every gradient, parameter and state array has the variant axis V
first, and every statistic is a (V,) array. The state being nothing but such arrays (in
nested dicts) is what lets `take` drop a diverged variant from any rule, stateful or not,
without the rule knowing: the survivors keep their history bit for bit. Stats are an open
mapping; each rule's `columns` name the ones it adds to metrics.csv beyond the common five
(grad_norm, clipped_norm, clip_coef, clipped, grad_cosine).

Rules work in place on the arrays they are given (the training loop owns its buffers) and
read their hyperparameters as plain attributes of the config objects they are given, so
this engine never imports the pydantic schema.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from .norms import total_norm

Grads = dict[str, np.ndarray]
Stats = dict[str, np.ndarray]

# What every rule reports, in metrics.csv's order.
COMMON_STATS = ("grad_norm", "clipped_norm", "clip_coef", "clipped", "grad_cosine")


@dataclass(frozen=True)
class Context:
    """What a rule may read besides its gradients and parameters, measured once a step.

    `norms` and `grad_norm` describe the gradients as this rule receives them (after the
    rules before it in a chain); `raw_norm` is the global norm before any rule.
    """

    norms: np.ndarray  # (n_tensors, V): per-tensor L2 norms
    grad_norm: np.ndarray  # (V,): global L2 norm
    raw_norm: np.ndarray  # (V,)
    fan_in: Mapping[str, Optional[int]]  # each parameter's input axis (no variant axis), None: whole

    def take(self, sl) -> "Context":
        return replace(self, norms=self.norms[:, sl], grad_norm=self.grad_norm[sl], raw_norm=self.raw_norm[sl])


class Transform:
    """One rule over the stack of variants that share it (see the module docstring)."""

    columns: tuple[str, ...] = ()  # metrics.csv columns beyond COMMON_STATS
    scaling = True  # multiplies each variant's gradient by one positive factor: keeps its direction

    def __init__(self, configs: Sequence[Any]) -> None:
        self.configs = list(configs)

    @staticmethod
    def group_key(config: Any) -> tuple:
        """Variants with equal keys can share one instance (one stacked call)."""
        return ()

    @classmethod
    def columns_of(cls, config: Any) -> tuple[str, ...]:
        return cls.columns

    def init(self, params: Mapping[str, np.ndarray]) -> dict:
        return {}

    def update(self, grads: Grads, state: dict, params: Mapping[str, np.ndarray],
               ctx: Context) -> tuple[Grads, dict, Stats]:
        raise NotImplementedError


RULES: dict[str, type[Transform]] = {}


def register(method: str):
    def add(cls: type[Transform]) -> type[Transform]:
        RULES[method] = cls
        return cls
    return add


def take(state: Any, keep: np.ndarray) -> Any:
    """The state of a smaller stack: every array sliced along its first (variant) axis."""
    if isinstance(state, dict):
        return {k: take(v, keep) for k, v in state.items()}
    return state[keep] if isinstance(state, np.ndarray) else state


def apply_updates(params: Mapping[str, np.ndarray], updates: Mapping[str, np.ndarray]) -> None:
    """p += u for every parameter, in place (optax.apply_updates without the new arrays): the
    one write of the parameters a step makes, after the optimizer's transform."""
    for k, p in params.items():
        p += updates[k]


def finish(l2: np.ndarray, after: np.ndarray, clipped: np.ndarray, cosine: Optional[np.ndarray] = None,
           coef: Optional[np.ndarray] = None) -> Stats:
    """The common five stats. Without `cosine` the rule scaled (cosine 1 where finite); without
    `coef` it is the ratio of the norms after and before (1 for a zero gradient)."""
    finite = np.isfinite(l2)
    if coef is None:
        with np.errstate(all="ignore"):
            coef = np.where(clipped & (l2 > 0), after / l2, 1.0)
    if cosine is None:
        cosine = np.where(finite, 1.0, np.nan)
    return {"grad_norm": l2, "clipped_norm": after, "clip_coef": coef, "clipped": clipped, "grad_cosine": cosine}


def cosine_of_factors(norms: Sequence[np.ndarray], factors: Sequence[np.ndarray], l2: np.ndarray) -> np.ndarray:
    """The cosine between g and the gradient whose blocks (tensors, or units of a tensor) are
    g's times non-negative factors, from the blocks' norms alone (no copy of g):
    sum f n^2 / (||g|| sqrt(sum f^2 n^2)). Each block is (V, ...); norms are taken relative to
    ||g|| so nothing overflows."""
    with np.errstate(all="ignore"):
        dot = np.zeros(l2.shape)
        sq = np.zeros(l2.shape)
        safe = np.where((l2 > 0) & np.isfinite(l2), l2, 1.0)
        for n, f in zip(norms, factors):
            a = (n.reshape(n.shape[0], -1) / safe[:, None]) ** 2
            f = f.reshape(f.shape[0], -1)
            dot += np.sum(f * a, axis=1)
            sq += np.sum(f * f * a, axis=1)
        cos = np.minimum(dot / np.sqrt(sq), 1.0)
    cos = np.where(l2 == 0, 1.0, cos)
    return np.where(np.isfinite(l2), cos, np.nan)


def scale_(grads: Grads, coef: np.ndarray) -> None:
    """Multiply each variant's gradients by its coefficient, in place, in their own dtype."""
    if np.all(coef == 1.0):
        return
    shaped: dict[tuple, list[np.ndarray]] = {}  # the factors per (dtype, ndim): made once a step
    for g in grads.values():
        factors = shaped.get((g.dtype, g.ndim))
        if factors is None:
            factors = [coef]
            if coef.min() < _smallest_normal(g.dtype):
                # A subnormal factor has few significant bits (a 1e20 gradient clipped to 0.03
                # in float32): apply its square root twice instead.
                factors = [np.sqrt(coef)] * 2
            factors = shaped[(g.dtype, g.ndim)] = [
                f.astype(g.dtype).reshape((-1,) + (1,) * (g.ndim - 1)) for f in factors]
        for f in factors:
            np.multiply(g, f, out=g)


@lru_cache(maxsize=None)
def _smallest_normal(dtype: np.dtype) -> float:
    return float(np.finfo(dtype).tiny)


def rule_of(method: str) -> type[Transform]:
    """The rule class of a method; the rule modules register themselves when imported."""
    if method not in RULES:
        from . import clipping, skipping  # noqa: F401
    return RULES[method]


def registered() -> dict[str, type[Transform]]:
    """Every rule by method name."""
    from . import clipping, skipping  # noqa: F401
    return dict(RULES)


def _key(config: Any) -> tuple:
    return (config.method, rule_of(config.method).group_key(config))


def group_order(configs: Sequence[Any], within: Optional[Sequence[Any]] = None) -> list[int]:
    """A stack order in which variants sharing a rule sit next to each other, and within a
    rule those with equal `within` keys (the optimizer's branches, gradlab.optim.branches).

    Contiguous groups let each rule work on views (g[a:b]) of the stacked arrays: no copies;
    and the optimizer step the variants that take the same branches in one call.
    """
    keys = [_key(c) for c in configs]
    first: dict = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    inner: dict = {}
    for i, k in enumerate(within or ()):
        inner.setdefault(k, i)
    return sorted(range(len(configs)), key=lambda i: (first[keys[i]], inner[within[i]] if within else 0, i))


def columns_of(config: Any) -> tuple[str, ...]:
    """The metrics.csv columns a variant adds beyond COMMON_STATS."""
    return rule_of(config.method).columns_of(config)


class Clipper:
    """All transform variants of one stack: one rule instance per contiguous group, and each
    group's state. `select` keeps the survivors' state (sliced), never a fresh one."""

    def __init__(self, configs: Sequence[Any], fan_in: Optional[Mapping[str, Optional[int]]] = None) -> None:
        self.configs = list(configs)
        self.fan_in = dict(fan_in or {})
        self.groups: list[tuple[slice, Transform]] = []
        keys = [_key(c) for c in self.configs]
        start = 0
        for i in range(1, len(keys) + 1):
            if i == len(keys) or keys[i] != keys[start]:
                self.groups.append((slice(start, i), rule_of(keys[start][0])(self.configs[start:i])))
                start = i
        if len(set(keys)) != len(self.groups):
            raise ValueError("variants sharing a clipping rule must be contiguous; use group_order()")
        self.states: list[dict] = [{} for _ in self.groups]
        self.columns = tuple(dict.fromkeys(c for cfg in self.configs for c in columns_of(cfg)))

    def init(self, params: Mapping[str, np.ndarray]) -> None:
        self.states = [rule.init({k: v[sl] for k, v in params.items()}) for sl, rule in self.groups]

    def __call__(self, grads: Grads, norms: np.ndarray, params: Optional[Mapping[str, np.ndarray]] = None) -> Stats:
        l2 = total_norm(norms, 2.0)
        ctx = Context(norms, l2, l2, self.fan_in)
        params = params if params is not None else {}
        if len(self.groups) == 1:  # the common case, on the hot path: no views to make
            _, self.states[0], stats = self.groups[0][1].update(grads, self.states[0], params, ctx)
            parts = [stats]
        else:
            parts = []
            for j, (sl, rule) in enumerate(self.groups):
                view = {k: g[sl] for k, g in grads.items()}
                pview = {k: p[sl] for k, p in params.items()}
                _, self.states[j], stats = rule.update(view, self.states[j], pview, ctx.take(sl))
                parts.append(stats)
        if len(parts) == 1 and set(parts[0]) >= set(self.columns):
            return parts[0]
        n = len(self.configs)
        out = {}
        for name in COMMON_STATS + self.columns:
            # A column a group does not have (skipped, for a rule that never skips) is 0 there.
            out[name] = np.concatenate([s.get(name, np.zeros(sl.stop - sl.start, bool))
                                        for (sl, _), s in zip(self.groups, parts)]) if n else np.zeros(0)
        return out

    def select(self, keep: Sequence[int]) -> "Clipper":
        """The transforms of a smaller stack (after variants diverged and were dropped), with
        the survivors' state carried over bit for bit."""
        keep = np.asarray(keep, dtype=np.intp)
        new = Clipper([self.configs[i] for i in keep], self.fan_in)
        states = []
        for (sl, _), state in zip(self.groups, self.states):
            local = keep[(keep >= sl.start) & (keep < sl.stop)] - sl.start
            if local.size:
                states.append(take(state, local))
        new.states = states
        return new
