"""Gradient clipping rules, Optax-style: each method is one small rule with init/update.

A rule acts on a *stack* of variants: every gradient array has a leading variant axis V, and
the rule's thresholds are (V,) arrays, so one call clips all variants of a seed at once.
Rules work in place on the arrays they are given (the training loop owns its buffers); the
public `clip_grad_norm` / `clip_grad_value` copy first, so their inputs are never touched.

Norms (gradlab.norms) never overflow. A non-finite gradient gives a non-finite norm (NaN if
any NaN, else inf) and is left unscaled: the caller reports the divergence; no exception.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping, Sequence

import numpy as np

from .config import ClipNorm, ClipValue
from .norms import param_norms, total_norm

Grads = dict[str, np.ndarray]


def _scale(grads: Grads, coef: np.ndarray) -> None:
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


# --------------------------------------------------------------------------- rules
@dataclass
class ClipStats:
    """Per-variant statistics of one clipping step, each a (V,) array."""

    grad_norm: np.ndarray  # global L2 norm before clipping
    clipped_norm: np.ndarray  # global L2 norm after clipping
    clip_coef: np.ndarray  # factor applied (norm) or clipped/unclipped L2 ratio (value)
    clipped: np.ndarray  # bool: did the rule change anything

    def take(self, idx) -> "ClipStats":
        """The statistics of a subset of the variants."""
        return ClipStats(*(getattr(self, f)[idx] for f in _STAT_FIELDS))

    @staticmethod
    def concat(parts: Sequence["ClipStats"]) -> "ClipStats":
        return ClipStats(*(np.concatenate([getattr(s, f) for s in parts]) for f in _STAT_FIELDS))


_STAT_FIELDS = ("grad_norm", "clipped_norm", "clip_coef", "clipped")


class ClipRule:
    """One clipping method over a stack of variants that share it.

    `update(grads, state, norms)` clips `grads` in place; `norms` are the per-tensor L2 norms
    (n, V) the loop has measured already, so that no rule measures them twice.
    """

    def __init__(self, configs: Sequence[Any]) -> None:
        self.configs = list(configs)

    @staticmethod
    def group_key(config: Any) -> tuple:
        """Variants with equal keys can share one rule instance (one stacked call)."""
        return ()

    def init(self, params: Mapping[str, np.ndarray]) -> Any:
        return None

    def update(self, grads: Grads, state: Any, norms: np.ndarray) -> tuple[Grads, Any, ClipStats]:
        raise NotImplementedError


class NoClip(ClipRule):
    def update(self, grads, state, norms):
        n = total_norm(norms, 2.0)
        return grads, state, ClipStats(n, n.copy(), np.ones_like(n), np.zeros(n.shape, bool))


class ClipByGlobalNorm(ClipRule):
    """torch.nn.utils.clip_grad_norm_: coef = max_norm / (total + eps), applied when < 1."""

    def __init__(self, configs: Sequence[ClipNorm]) -> None:
        super().__init__(configs)
        self.max_norm = np.array([c.max_norm for c in configs], dtype=np.float64)
        self.eps = np.array([c.eps for c in configs], dtype=np.float64)
        self.norm_type = configs[0].norm_type

    @staticmethod
    def group_key(config: ClipNorm) -> tuple:
        return (config.norm_type,)

    def update(self, grads, state, norms):
        l2 = total_norm(norms, 2.0)
        measured = l2 if self.norm_type == 2.0 else total_norm(param_norms(grads, self.norm_type), self.norm_type)
        with np.errstate(all="ignore"):
            coef = np.minimum(self.max_norm / (measured + self.eps), 1.0)
        # Non-finite gradients stay as they are: scaling by 0 or NaN would erase where they came from.
        coef = np.where(np.isfinite(measured), coef, 1.0)
        _scale(grads, coef)
        # The norm is homogeneous: the L2 norm after scaling is coef times the one before.
        return grads, state, ClipStats(l2, l2 * coef, coef, coef < 1.0)


class ClipByValue(ClipRule):
    """torch.nn.utils.clip_grad_value_: every element clipped to [-clip_value, clip_value]."""

    def __init__(self, configs: Sequence[ClipValue]) -> None:
        super().__init__(configs)
        self.clip_value = np.array([c.clip_value for c in configs], dtype=np.float64)

    def update(self, grads, state, norms):
        l2 = total_norm(norms, 2.0)
        largest = total_norm(param_norms(grads, math.inf), math.inf)
        clipped = largest > self.clip_value
        if (~(largest <= self.clip_value)).any():  # NaN too: its finite neighbours are clipped
            for g in grads.values():
                c = self.clip_value.astype(g.dtype).reshape((-1,) + (1,) * (g.ndim - 1))
                np.clip(g, -c, c, out=g)
            after = np.where(clipped, total_norm(param_norms(grads, 2.0), 2.0), l2)
        else:
            after = l2.copy()
        with np.errstate(all="ignore"):
            coef = np.where(clipped & (l2 > 0), after / l2, 1.0)
        return grads, state, ClipStats(l2, after, coef, clipped)


RULES: dict[str, type[ClipRule]] = {"none": NoClip, "norm": ClipByGlobalNorm, "value": ClipByValue}


def group_order(configs: Sequence[Any]) -> list[int]:
    """A stack order in which variants sharing a rule sit next to each other.

    Contiguous groups let each rule work on views (g[a:b]) of the stacked arrays: no copies.
    """
    keys = [(c.method, RULES[c.method].group_key(c)) for c in configs]
    first = {}
    for i, k in enumerate(keys):
        first.setdefault(k, i)
    return sorted(range(len(configs)), key=lambda i: (first[keys[i]], i))


class Clipper:
    """All clipping variants of one stack: one rule per contiguous group of variants."""

    def __init__(self, configs: Sequence[Any]) -> None:
        self.configs = list(configs)
        self.groups: list[tuple[slice, ClipRule]] = []
        start = 0
        keys = [(c.method, RULES[c.method].group_key(c)) for c in self.configs]
        for i in range(1, len(keys) + 1):
            if i == len(keys) or keys[i] != keys[start]:
                self.groups.append((slice(start, i), RULES[keys[start][0]](self.configs[start:i])))
                start = i
        if len(set(keys)) != len(self.groups):
            raise ValueError("variants sharing a clipping rule must be contiguous; use group_order()")
        self.states: list[Any] = [None] * len(self.groups)

    def init(self, params: Mapping[str, np.ndarray]) -> None:
        self.states = [rule.init({k: v[sl] for k, v in params.items()}) for sl, rule in self.groups]

    def __call__(self, grads: Grads, norms: np.ndarray) -> ClipStats:
        parts = []
        for j, (sl, rule) in enumerate(self.groups):
            view = {k: g[sl] for k, g in grads.items()}
            _, self.states[j], stats = rule.update(view, self.states[j], norms[:, sl])
            parts.append(stats)
        return parts[0] if len(parts) == 1 else ClipStats.concat(parts)

    def select(self, keep: Sequence[int]) -> "Clipper":
        """The clipper of a smaller stack (after variants diverged and were dropped)."""
        return Clipper([self.configs[i] for i in keep])


# --------------------------------------------------------------------------- public API
def _stacked_copy(grads: Mapping[str, Any]) -> Grads:
    out = {}
    for name, g in grads.items():
        a = np.array(g, copy=True)
        if not np.issubdtype(a.dtype, np.floating):
            raise TypeError(f"gradient {name!r} has dtype {a.dtype}; clipping needs floating point")
        out[name] = a[None]
    return out


def clip_grad_norm(
    grads: Mapping[str, Any], max_norm: float, norm_type: float = 2.0, eps: float = 1e-6
) -> tuple[dict[str, np.ndarray], float]:
    """Clip gradients by their global norm, like torch.nn.utils.clip_grad_norm_.

    Returns a new mapping (inputs untouched, dtypes kept) and the total norm before clipping,
    as a float. The norm of finite gradients never overflows (a float32 gradient of 1e20
    has norm 1e20 and is scaled to `max_norm`); non-finite gradients give a non-finite norm
    and are returned unscaled.
    """
    cfg = ClipNorm(method="norm", max_norm=float(max_norm), norm_type=norm_type, eps=float(eps))
    g = _stacked_copy(grads)
    if not g:
        return {}, 0.0
    total = total_norm(param_norms(g, cfg.norm_type), cfg.norm_type)
    ClipByGlobalNorm([cfg]).update(g, None, param_norms(g, 2.0))
    return {k: v[0] for k, v in g.items()}, float(total[0])


def clip_grad_value(grads: Mapping[str, Any], clip_value: float) -> dict[str, np.ndarray]:
    """Clip every gradient element to [-clip_value, clip_value], like clip_grad_value_."""
    cfg = ClipValue(method="value", clip_value=float(clip_value))
    g = _stacked_copy(grads)
    if g:
        ClipByValue([cfg]).update(g, None, param_norms(g, 2.0))
    return {k: v[0] for k, v in g.items()}
