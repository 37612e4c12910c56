"""Gradient clipping rules, each a transform (gradlab.transforms) with its reference's semantics.

A rule acts on a *stack* of variants: every gradient array has a leading variant axis V, and
the rule's thresholds are (V,) arrays, so one call clips all variants of a seed at once.
Rules work in place on the arrays they are given (the training loop owns its buffers); the
public `clip_grad_norm` / `clip_grad_value` copy first, so their inputs are never touched.

Norms (gradlab.norms) never overflow. A non-finite gradient gives a non-finite norm (NaN if
any NaN, else inf) and is left unscaled, and it never enters a rule's state: the variant
either diverges (and its state is dropped) or its step is skipped (and nothing learns from
it). The caller reports the divergence; no exception.

Stateful rules (autoclip, zclip) keep their history per variant and compute each variant's
threshold with Python floats, one variant at a time: the reference implementations are
scalar code, and a variant's numbers must not depend on its neighbours in the stack.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any, Mapping, Sequence

import numpy as np

from .norms import param_norms, row_norms, total_norm
# Clipper and group_order are re-exported: callers found the stack of rules here before.
from .transforms import (Clipper, Context, Transform, cosine_of_factors, finish, group_order,  # noqa: F401
                         register, rule_of, scale_)

Grads = dict[str, np.ndarray]

# torch.nn.utils.clip_grad_norm_'s eps: AutoClip's and ZClip's references clip through it.
TORCH_EPS = 1e-6


def _hyper(configs: Sequence[Any], name: str) -> np.ndarray:
    return np.array([getattr(c, name) for c in configs], dtype=np.float64)


@register("none")
class NoClip(Transform):
    def update(self, grads, state, params, ctx):
        l2 = ctx.grad_norm
        return grads, state, finish(l2, l2.copy(), np.zeros(l2.shape, bool), coef=np.ones(l2.shape))


@register("norm")
class ClipByGlobalNorm(Transform):
    """torch.nn.utils.clip_grad_norm_: coef = max_norm / (total + eps), applied when < 1."""

    def __init__(self, configs: Sequence[Any]) -> None:
        super().__init__(configs)
        self.max_norm, self.eps = _hyper(configs, "max_norm"), _hyper(configs, "eps")
        self.norm_type = configs[0].norm_type

    @staticmethod
    def group_key(config) -> tuple:
        return (config.norm_type,)

    def update(self, grads, state, params, ctx):
        l2 = ctx.grad_norm
        measured = l2 if self.norm_type == 2.0 else total_norm(param_norms(grads, self.norm_type), self.norm_type)
        with np.errstate(all="ignore"):
            coef = np.minimum(self.max_norm / (measured + self.eps), 1.0)
        # Non-finite gradients stay as they are: scaling by 0 or NaN would erase where they came from.
        coef = np.where(np.isfinite(measured), coef, 1.0)
        scale_(grads, coef)
        # The norm is homogeneous: the L2 norm after scaling is coef times the one before.
        return grads, state, finish(l2, l2 * coef, coef < 1.0, coef=coef)


@register("value")
class ClipByValue(Transform):
    """torch.nn.utils.clip_grad_value_: every element clipped to [-clip_value, clip_value].

    The cosine needs no copy of the gradient: with c the bound, <g, clip(g)> is
    ||clip(g)||^2 + c * sum(max(|g| - c, 0)), and that sum is taken before clipping.
    """

    scaling = False

    def __init__(self, configs: Sequence[Any]) -> None:
        super().__init__(configs)
        self.clip_value = _hyper(configs, "clip_value")

    def update(self, grads, state, params, ctx):
        l2 = ctx.grad_norm
        largest = total_norm(param_norms(grads, math.inf), math.inf)
        clipped = largest > self.clip_value
        cosine = np.where(np.isfinite(l2), 1.0, np.nan)
        if (~(largest <= self.clip_value)).any():  # NaN too: its finite neighbours are clipped
            excess = np.zeros(l2.shape)
            for g in grads.values():
                c = self.clip_value.astype(g.dtype).reshape((-1,) + (1,) * (g.ndim - 1))
                for v in np.flatnonzero(clipped):  # one variant at a time: its sum is its own
                    over = np.subtract(np.abs(g[v]), c[v])
                    excess[v] += float(np.sum(np.maximum(over, 0, out=over), dtype=np.float64))
                np.clip(g, -c, c, out=g)
            after = np.where(clipped, total_norm(param_norms(grads, 2.0), 2.0), l2)
            with np.errstate(all="ignore"):
                cos = np.minimum((after * after + self.clip_value * excess) / (l2 * after), 1.0)
            cosine = np.where(clipped, cos, cosine)
        else:
            after = l2.copy()
        return grads, state, finish(l2, after, clipped, cosine)


@register("per_tensor")
class ClipPerTensor(Transform):
    """Keras `clipnorm` (keras.optimizers.Optimizer, through `clip_by_norm`): every parameter
    tensor whose L2 norm n exceeds max_norm is multiplied by max_norm / n, each on its own.
    Keras writes g * max_norm / max(n, max_norm); below the threshold gradlab leaves the
    tensor untouched bit for bit instead of multiplying and dividing it by max_norm."""

    scaling = False

    def __init__(self, configs: Sequence[Any]) -> None:
        super().__init__(configs)
        self.max_norm = _hyper(configs, "max_norm")

    def update(self, grads, state, params, ctx):
        l2, n = ctx.grad_norm, ctx.norms
        with np.errstate(all="ignore"):
            f = np.where(n > self.max_norm, self.max_norm / n, 1.0)
        f = np.where(np.isfinite(l2), f, 1.0)  # a non-finite gradient stays visible
        for g, fk in zip(grads.values(), f):
            scale_({"g": g}, fk)
        after = total_norm(n * f, 2.0)
        cos = cosine_of_factors(list(n), list(f), l2)
        return grads, state, finish(l2, np.where(np.isfinite(l2), after, l2), (f < 1.0).any(axis=0), cos)


def unit_norms(a: np.ndarray, axis: int | None, whole: np.ndarray | None = None) -> np.ndarray:
    """(V, units) L2 norms of a stacked tensor's units: one per output unit, over its input
    axis `axis` (of the unstacked tensor); a vector (axis None) is one unit, `whole` if given."""
    if axis is None:
        return (whole if whole is not None else param_norms({"a": a})[0])[:, None]
    if not a.shape[0]:
        return np.zeros((0, a.shape[2 - axis]))
    # One variant at a time, the reduced axis last: row_norms never overflows, and a variant's
    # norms do not depend on its neighbours in the stack.
    return np.stack([row_norms(a[v] if axis == 1 else a[v].T) for v in range(a.shape[0])])


@register("agc")
class AdaptiveGradClip(Transform):
    """Adaptive gradient clipping (Brock, De, Smith, Simonyan 2021, "High-Performance
    Large-Scale Image Recognition Without Normalization"), as optax.adaptive_grad_clip:
    for each unit u (an output unit of a weight, measured over its fan-in axis; a bias or
    vector whole), with ||.|| the unit's L2 norm,

        max_u = clipping * max(||W_u||, eps)
        g_u = g_u                                 if ||g_u|| < max_u
              g_u * max_u / max(||g_u||, 1e-6)    otherwise

    Layers in `exclude` are left alone (the paper does not clip the classifier); `head` on
    an MLP names its last layer.
    """

    scaling = False

    def __init__(self, configs: Sequence[Any]) -> None:
        super().__init__(configs)
        self.clipping, self.eps = _hyper(configs, "clipping"), _hyper(configs, "eps")
        self.exclude = set(configs[0].exclude or ())

    @staticmethod
    def group_key(config) -> tuple:
        return (tuple(sorted(config.exclude or ())),)

    def _excluded(self, names: Sequence[str]) -> set[str]:
        layers = {k: k.rsplit(".", 1)[0] for k in names}
        out = {k for k, layer in layers.items() if layer in self.exclude}
        if "head" in self.exclude and "head" not in layers.values() and names:
            last = layers[list(names)[-1]]
            out |= {k for k, layer in layers.items() if layer == last}
        return out

    def update(self, grads, state, params, ctx):
        l2 = ctx.grad_norm
        finite = np.isfinite(l2)
        skip = self._excluded(list(grads))
        norms, factors, after = [], [], []
        whole_p = param_norms({k: p for k, p in params.items()})  # cheap: one reduction per tensor
        for t, (k, g) in enumerate(grads.items()):
            axis = ctx.fan_in.get(k) if g.ndim == 3 else None
            gn = unit_norms(g, axis, ctx.norms[t])
            if k in skip:
                f = np.ones(gn.shape)
            else:
                pn = unit_norms(params[k], axis, whole_p[t])
                mx = self.clipping[:, None] * np.maximum(pn, self.eps[:, None])
                with np.errstate(all="ignore"):
                    f = np.where(gn < mx, 1.0, mx / np.maximum(gn, 1e-6))
                f = np.where(finite[:, None], f, 1.0)
                if (f != 1.0).any():
                    shape = (f.shape[0],) + ((1, -1) if axis == 0 else (-1, 1) if axis == 1 else (1,) * (g.ndim - 1))
                    np.multiply(g, f.astype(g.dtype).reshape(shape), out=g)
            norms.append(gn)
            factors.append(f)
            after.append(total_norm((gn * f).T, 2.0))
        post = total_norm(np.array(after).reshape(len(after), -1), 2.0) if after else np.zeros(l2.shape)
        clipped = np.array([(f < 1.0).any(axis=1) for f in factors]).any(axis=0) if factors else np.zeros(l2.shape, bool)
        cos = cosine_of_factors(norms, factors, l2)
        return grads, state, finish(l2, np.where(finite, post, l2), clipped, cos)


def _torch_coef(threshold: float, norm: float) -> float:
    """torch.nn.utils.clip_grad_norm_'s factor: threshold / (norm + 1e-6), at most 1."""
    return min(threshold / (norm + TORCH_EPS), 1.0)


@register("autoclip")
class AutoClip(Transform):
    """AutoClip (Seetharaman, Wichern, Pardo, Le Roux 2020, "AutoClip: Adaptive Gradient
    Clipping for Source Separation Networks"), as its reference implementation: each step the
    global norm is appended to the history, the threshold is np.percentile(history,
    percentile) (linear interpolation), the current norm included, and the gradient is
    clipped by torch's clip_grad_norm_ at that threshold. `history: N` keeps the last N norms."""

    def __init__(self, configs: Sequence[Any]) -> None:
        super().__init__(configs)
        self.percentile = [float(c.percentile) for c in configs]
        self.history = [c.history for c in configs]

    def init(self, params):
        V = len(self.configs)
        return {"norms": np.zeros((V, 64)), "count": np.zeros(V, np.int64)}

    def update(self, grads, state, params, ctx):
        l2 = ctx.grad_norm
        buf, count = state["norms"], state["count"]
        if count.size and count.max() >= buf.shape[1]:  # room for the whole run's history, grown by doubling
            buf = state["norms"] = np.concatenate([buf, np.zeros(buf.shape)], axis=1)
        coef = np.ones(l2.shape)
        for v, x in enumerate(l2.tolist()):
            if not math.isfinite(x):
                continue
            buf[v, count[v]] = x
            count[v] += 1
            n = int(count[v])
            keep = n if self.history[v] is None else min(n, self.history[v])
            threshold = float(np.percentile(buf[v, n - keep:n], self.percentile[v]))
            coef[v] = _torch_coef(threshold, x)
        scale_(grads, coef)
        return grads, state, finish(l2, l2 * coef, coef < 1.0, coef=coef)


@register("zclip")
class ZClip(Transform):
    """ZClip (Kumar, Owen, Ashraf, Ahmed, Haider, Bhasker 2025, "ZClip: Adaptive Spike
    Mitigation for LLM Pre-Training"), as its reference implementation (bluorion-com/ZClip,
    mode zscore, clip_option adaptive_scaling, clip_factor 1, eps 1e-6), with g the global norm:

    - warm-up: the first `warmup` norms are collected; the gradient is clipped to max_norm
      by torch's clip_grad_norm_. At the warmup-th, mean and (population) variance of the
      collected norms start the EMA.
    - after: z = (g - mean) / (std + eps). If z > z_thresh, clip_val = mean + z_thresh * std
      / (z / z_thresh), else none. The gradient is clipped to min(clip_val or g, max_norm)
      with factor threshold / (g + 1e-6) when g exceeds it. Then the EMA takes clip_val (the
      clipped norm) if there was one, else g: mean = alpha mean + (1 - alpha) x, then
      var = alpha var + (1 - alpha) (x - mean)^2 with the new mean.

    max_norm null leaves out the cap (as max_grad_norm=None in the reference).
    """

    EPS = 1e-6

    def __init__(self, configs: Sequence[Any]) -> None:
        super().__init__(configs)
        self.alpha = [float(c.alpha) for c in configs]
        self.z_thresh = [float(c.z_thresh) for c in configs]
        self.max_norm = [None if c.max_norm is None else float(c.max_norm) for c in configs]

    @staticmethod
    def group_key(config) -> tuple:
        return (config.warmup,)  # the warm-up buffer's width

    def init(self, params):
        V, w = len(self.configs), (self.configs[0].warmup if self.configs else 1)
        return {"warmup": np.zeros((V, w)), "count": np.zeros(V, np.int64), "mean": np.zeros(V),
                "var": np.zeros(V), "ready": np.zeros(V, bool)}

    def update(self, grads, state, params, ctx):
        l2 = ctx.grad_norm
        coef = np.ones(l2.shape)
        for v, g in enumerate(l2.tolist()):
            if math.isfinite(g):
                coef[v] = self._step(state, v, g)
        scale_(grads, coef)
        return grads, state, finish(l2, l2 * coef, coef < 1.0, coef=coef)

    def _step(self, s: dict, v: int, g: float) -> float:
        cap = self.max_norm[v]
        if not s["ready"][v]:
            s["warmup"][v, s["count"][v]] = g
            s["count"][v] += 1
            n = int(s["count"][v])
            if n >= s["warmup"].shape[1]:
                seen = s["warmup"][v, :n].tolist()
                mean = sum(seen) / n
                s["mean"][v], s["var"][v] = mean, sum((x - mean) ** 2 for x in seen) / n
                s["ready"][v] = True
            return 1.0 if cap is None else _torch_coef(cap, g)
        mean, var = float(s["mean"][v]), float(s["var"][v])
        a, zt = self.alpha[v], self.z_thresh[v]
        std = var ** 0.5
        z = (g - mean) / (std + self.EPS)
        clip_val = mean + (zt * std) / (z / zt) if z > zt else None
        threshold = g if clip_val is None else clip_val
        if cap is not None:
            threshold = min(threshold, cap)
        x = g if clip_val is None else clip_val
        mean = a * mean + (1 - a) * x
        s["mean"][v], s["var"][v] = mean, a * var + (1 - a) * (x - mean) ** 2
        return threshold / (g + TORCH_EPS) if g > threshold else 1.0


@register("chain")
class Chain(Transform):
    """Rules applied one after the other, each to what the one before it left (optax.chain).

    Each rule keeps its own state; the chain's stats are the first rule's norm before, the
    last one's after, and its cosine that of the one rule that may change the direction
    (positive scalings before or after it change no angle): a chain holds at most one such
    rule, so the cosine needs no copy of the gradient."""

    def __init__(self, configs: Sequence[Any]) -> None:
        super().__init__(configs)
        parts = list(zip(*(c.rules for c in configs))) if configs else []
        self.rules = [rule_of(p[0].method)(list(p)) for p in parts]
        if sum(not r.scaling for r in self.rules) > 1:
            raise ValueError("a chain holds at most one rule that changes the direction (value, per_tensor, agc)")
        self.scaling = all(r.scaling for r in self.rules)

    @staticmethod
    def group_key(config) -> tuple:
        return tuple((r.method, rule_of(r.method).group_key(r)) for r in config.rules)

    @classmethod
    def columns_of(cls, config) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c for r in config.rules for c in rule_of(r.method).columns_of(r)))

    def init(self, params):
        return {str(j): r.init(params) for j, r in enumerate(self.rules)}

    def update(self, grads, state, params, ctx):
        first = stats = None
        cosine, skipped, clipped = None, None, None
        for j, rule in enumerate(self.rules):
            grads, state[str(j)], stats = rule.update(grads, state[str(j)], params, ctx)
            first = first or stats
            clipped = stats["clipped"] if clipped is None else clipped | stats["clipped"]
            if not rule.scaling:
                cosine = stats["grad_cosine"]
            if "skipped" in stats:
                skipped = stats["skipped"] if skipped is None else skipped | stats["skipped"]
            if j + 1 < len(self.rules):  # what the next rule receives
                norms = ctx.norms * stats["clip_coef"] if rule.scaling else param_norms(grads)
                ctx = Context(norms, stats["clipped_norm"], ctx.raw_norm, ctx.fan_in)
        l2 = first["grad_norm"]
        out = finish(l2, stats["clipped_norm"], clipped, cosine)
        if skipped is not None:
            out["skipped"] = skipped
        return grads, state, out


# --------------------------------------------------------------------------- public API
def _stacked_copy(grads: Mapping[str, Any]) -> tuple[Grads, dict[str, np.dtype]]:
    """A stack of one copy of each gradient, and the dtype to give each back. ml_dtypes'
    bfloat16 is no NumPy floating type (no finfo, no vecdot): it is clipped in float32, which
    holds every bfloat16 exactly, and the result is rounded back once."""
    out, dtypes = {}, {}
    for name, g in grads.items():
        a = np.array(g, copy=True)
        dtypes[name] = a.dtype
        if a.dtype.name == "bfloat16":
            a = a.astype(np.float32)
        elif not np.issubdtype(a.dtype, np.floating):
            raise TypeError(f"gradient {name!r} has dtype {a.dtype}; clipping needs floating point")
        out[name] = a[None]
    return out, dtypes


def _unstacked(g: Grads, dtypes: dict[str, np.dtype]) -> dict[str, np.ndarray]:
    return {k: v[0].astype(dtypes[k], copy=False) for k, v in g.items()}


def apply_rule(rule: Transform, g: Grads) -> dict:
    """One call of a rule on a stack of one, with the context the training loop gives it."""
    norms = param_norms(g, 2.0)
    l2 = total_norm(norms, 2.0)
    return rule.update(g, rule.init(g), {}, Context(norms, l2, l2, {}))[2]


def clip_grad_norm(
    grads: Mapping[str, Any], max_norm: float, norm_type: float = 2.0, eps: float = 1e-6
) -> tuple[dict[str, np.ndarray], float]:
    """Clip gradients by their global norm, like torch.nn.utils.clip_grad_norm_.

    Returns a new mapping (inputs untouched, dtypes kept) and the total norm before clipping,
    as a float. The norm of finite gradients never overflows (a float32 gradient of 1e20
    has norm 1e20 and is scaled to `max_norm`); non-finite gradients give a non-finite norm
    and are returned unscaled.
    """
    norm_type = float(norm_type)
    if math.isnan(norm_type) or norm_type < 1:
        raise ValueError("norm_type must be a number >= 1 or inf")
    cfg = SimpleNamespace(method="norm", max_norm=float(max_norm), norm_type=norm_type, eps=float(eps))
    g, dtypes = _stacked_copy(grads)
    if not g:
        return {}, 0.0
    total = total_norm(param_norms(g, cfg.norm_type), cfg.norm_type)
    apply_rule(ClipByGlobalNorm([cfg]), g)
    return _unstacked(g, dtypes), float(total[0])


def clip_grad_value(grads: Mapping[str, Any], clip_value: float) -> dict[str, np.ndarray]:
    """Clip every gradient element to [-clip_value, clip_value], like clip_grad_value_."""
    cfg = SimpleNamespace(method="value", clip_value=float(clip_value))
    g, dtypes = _stacked_copy(grads)
    if g:
        apply_rule(ClipByValue([cfg]), g)
    return _unstacked(g, dtypes)
