"""Optimizers over a stack of variants: the last transform of the chain, after the clip and
skip rules, with their protocol (gradlab.transforms):

    init(params) -> state
    update(grads, state, params, ctx) -> (updates, state, stats)

`updates` is what `transforms.apply_updates` adds to the parameters (the descent step with
its sign, as optax.apply_updates). No optimizer allocates it: it is written into a buffer
already there, the gradient's own (SGD) or a per-parameter scratch kept in the state (the
adaptive ones), so the step costs no parameter-sized array. `grads` may be overwritten.
`stats["update_norm"]` is each variant's L2 norm of the update.

The state is nested dicts of arrays with the variant axis first, so `transforms.take` drops
a diverged variant from it as from any rule's. The step count is per variant too: a variant
whose step was skipped has taken one step fewer, and Adam's bias correction must know it.

The variants of a stack may also differ in their hyperparameters (`vary`, Optax's
inject_hyperparams idea): those that differ are (V,) arrays in the state, `state["hyper"]`,
so that dropping a variant drops its values with it. A variant's numbers are those of its own
optimizer alone, bit for bit: every constant derived from a hyperparameter (1 - beta1, the bias
corrections, lr / bias_correction1) is computed per variant by the same Python float
expression as for a single run, and only then cast to the parameters' dtype, as NumPy casts
a Python float operand (a float32 array times 0.1 multiplies by float32(0.1)). The arrays keep
the configured values in float64 for that reason: float32(0.9) is not 0.9, and 1 - it is not
1 - 0.9 rounded. A hyperparameter that switches a branch (weight decay or momentum zero or
not) is never applied as a multiplication by 0 (which turns -0 into +0 and inf into NaN):
the variants are stepped in contiguous groups that agree on every branch and step count.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .norms import l2_norms, param_norms, squares, total_norm

Grads = dict[str, np.ndarray]
# A hyperparameter or a constant derived from one in one optimizer call: a scalar shared by
# the variants of the call, or a tuple of Python floats, one per variant.
Value = Any


def _same(a: float, b: float) -> bool:
    """Equal to the bit: -0.0 is not 0.0 here (it is not as an operand)."""
    return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)


def _collapse(values: Sequence[float]) -> Value:
    """One scalar when every variant has the same value (the stacked fast path), else a tuple."""
    values = tuple(values)
    return values[0] if all(_same(v, values[0]) for v in values) else values


def _map(fn: Callable[..., float], *values: Value) -> Value:
    """fn of the values, per variant where any is a tuple: each variant's constant is the
    Python expression a run of its own optimizer alone evaluates."""
    for v in values:
        if type(v) is tuple:
            n = len(v)
            break
    else:  # the usual case, on the hot path: no generator, no per-variant loop
        return fn(*values)
    return _collapse([fn(*(v[i] if isinstance(v, tuple) else v for v in values)) for i in range(n)])


def _on(value: Value) -> bool:
    """Whether a branch a hyperparameter switches is taken (the variants of a call agree)."""
    return any(value) if isinstance(value, tuple) else bool(value)


class _Operands:
    """Constants as operands of a parameter's arrays: a scalar as it is (NumPy rounds a Python
    float to the array's dtype), per-variant values as a (V, 1, ...) array of the array's dtype,
    rounded the same way, so that each variant's product is the scalar one bit for bit. The
    arrays are made once per call and dtype/rank, not per parameter; with no per-variant value
    (the usual case) `at` is the values themselves, at no cost."""

    def __init__(self, values: dict[str, Value]) -> None:
        self.values, self.memo = values, {}
        self.scalar = tuple not in set(map(type, values.values()))

    def at(self, like: np.ndarray) -> dict[str, Any]:
        """The operands for arrays of `like`'s dtype and rank."""
        if self.scalar:
            return self.values
        key = (like.dtype, like.ndim)
        ops = self.memo.get(key)
        if ops is None:
            shape = (-1,) + (1,) * (like.ndim - 1)
            ops = self.memo[key] = {k: np.asarray(x, np.float64).astype(like.dtype).reshape(shape)
                                    if isinstance(x, tuple) else x for k, x in self.values.items()}
        return ops


class Optimizer:
    """What all optimizers share: the per-variant step count and hyperparameters, and the
    call on contiguous groups of variants when they differ in a step count or a branch."""

    # The hyperparameters variants of a stack may hold apart (the numbers the update scales or
    # mixes by); `GATES` are those whose zero switches a branch off. Every other attribute
    # (nesterov, amsgrad, centered) chooses buffers or branches for the whole stack.
    HYPER: tuple[str, ...] = ()
    GATES: tuple[str, ...] = ()
    varying: dict[str, tuple[float, ...]] = {}  # name -> one value per variant (set by `vary`)

    def vary(self, variants: Sequence["Optimizer"]) -> "Optimizer":
        """Give each variant of the stack (in stack order) the hyperparameters of its own
        optimizer; the structure (class and flags) must be this one's. Values every variant
        shares become this optimizer's own; the others are held per variant from `init` on."""
        mine = self._flags(self)
        for i, o in enumerate(variants):
            if type(o) is not type(self) or self._flags(o) != mine:
                raise ValueError(f"variant {i} cannot share this stack: {type(o).__name__}{self._flags(o)} "
                                 f"is not {type(self).__name__}{mine} (only {', '.join(self.HYPER)} may differ)")
        self.varying = {}
        for name in self.HYPER:
            values = tuple(float(getattr(o, name)) for o in variants)
            if not values:
                continue
            one = _collapse(values)
            if isinstance(one, tuple):
                self.varying[name] = one
            else:
                setattr(self, name, getattr(variants[0], name))
        return self

    def _flags(self, o: "Optimizer") -> dict[str, Any]:
        return {k: v for k, v in vars(o).items() if k not in self.HYPER and k != "varying"}

    def _ever(self, name: str) -> bool:
        """Whether any variant takes the branch `name` switches (its buffers are then needed)."""
        return _on(self.varying.get(name, getattr(self, name)))

    def _hyper_state(self, params: dict[str, np.ndarray]) -> dict[str, Any]:
        if not self.varying:
            return {}
        V = _variants(params)
        if any(len(v) != V for v in self.varying.values()):
            raise ValueError(f"hyperparameters for {len(next(iter(self.varying.values())))} variants, "
                             f"parameters for {V}")
        return {"hyper": {k: np.array(v, np.float64) for k, v in self.varying.items()}}

    def init(self, params: dict[str, np.ndarray]) -> dict[str, Any]:
        raise NotImplementedError

    def update(self, grads: Grads, state: dict[str, Any], params: dict[str, np.ndarray],
               ctx: Optional[Any] = None,
               lr: Any = None) -> tuple[Grads, dict[str, Any], dict[str, np.ndarray]]:
        """`lr`: this step's learning rate in place of the optimizer's own (a schedule's, from
        gradlab.schedules): a Python float, so that a float32 step stays float32, or a (V,)
        float64 array, one per variant."""
        t = state["step"]
        hyper = state.get("hyper")
        per_variant_lr = isinstance(lr, np.ndarray)
        scalars = {name: getattr(self, name) for name in self.HYPER}
        if lr is not None and not per_variant_lr:
            scalars["lr"] = lr
        if hyper is None and not per_variant_lr and (t.size == 0 or t.min() == t.max()):
            # The usual case: one step count, shared hyperparameters, one stacked call. Each
            # update's squares are summed as soon as it is written, while it is in cache (on
            # the benchmark MLP's 2M parameters, 0.2 ms a step less than a pass after).
            measured: dict[str, tuple] = {}
            with np.errstate(all="ignore"):  # an overflowing update is a result: its norm says so
                updates = self._updates(params, grads, state, int(t[0]) if t.size else 0, scalars, measured)
            norm = total_norm(l2_norms([measured[k] for k in updates], _variants(params)))
        else:
            arrays = {k: a for k, a in (hyper or {}).items() if k != "lr" or lr is None}
            if per_variant_lr:
                arrays["lr"] = lr
            norm = np.empty(t.size)
            for a, b in self._groups(t, arrays):
                part = lambda d: {k: x[a:b] for k, x in d.items()}  # noqa: E731
                sub = {k: (part(x) if isinstance(x, dict) else x) for k, x in state.items()
                       if k not in ("step", "hyper")}
                h = {**scalars, **{k: _collapse(x[a:b].tolist()) for k, x in arrays.items()}}
                # Each group's norms from its own slices, as a stack of them alone would measure them.
                norm[a:b] = total_norm(param_norms(self._updates(part(params), part(grads), sub, int(t[a]), h)))
            updates = self._buffer(grads, state)  # the views above wrote into these
        state["step"] = t + 1
        return updates, state, {"update_norm": norm}

    def _groups(self, t: np.ndarray, arrays: dict[str, np.ndarray]) -> list[tuple[int, int]]:
        """The stack cut into contiguous groups whose variants have the same step count and
        take the same branches: one call, on views, per group (each variant alone at worst)."""
        if t.size == 0:
            return []
        cut = np.diff(t) != 0
        for name in self.GATES:
            if name in arrays:
                on = arrays[name] != 0
                cut |= on[1:] != on[:-1]
        bounds = [0, *(np.flatnonzero(cut) + 1).tolist(), t.size]
        return list(zip(bounds, bounds[1:]))

    def _updates(self, params, grads, state, t: int, h: dict[str, Value], measured: Optional[dict] = None) -> Grads:
        """The updates of variants that have all taken t steps before this one, with the
        hyperparameters h (each a scalar or one value per variant), written into
        `_buffer(grads, state)`; with `measured`, each update's norms.squares() by name."""
        raise NotImplementedError

    def _buffer(self, grads: Grads, state: dict[str, Any]) -> Grads:
        """Where `_updates` writes the updates."""
        raise NotImplementedError


def _variants(params: dict[str, np.ndarray]) -> int:
    return next(iter(params.values())).shape[0] if params else 0


class SGD(Optimizer):
    """torch.optim.SGD, exactly: with g the (clipped) gradient,

        g = g + weight_decay * p
        buf = g (first step) | momentum * buf + (1 - dampening) * g
        d = g + momentum * buf (nesterov) | buf (momentum) | g
        p = p - lr * d
    """

    HYPER = ("lr", "momentum", "dampening", "weight_decay")
    GATES = ("momentum", "dampening", "weight_decay")

    def __init__(self, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0) -> None:
        self.lr, self.momentum, self.dampening = lr, momentum, dampening
        self.nesterov, self.weight_decay = nesterov, weight_decay

    def init(self, params: dict[str, np.ndarray]) -> dict[str, Any]:
        return {"step": np.zeros(_variants(params), np.int64),
                "buf": {k: np.zeros_like(v) for k, v in params.items()} if self._ever("momentum") else {},
                **self._hyper_state(params)}

    def _buffer(self, grads, state):
        return grads

    def _updates(self, params, grads, state, t, h, measured=None):
        first = t == 0
        wd, momentum, dampening = h["weight_decay"], h["momentum"], h["dampening"]
        ops = _Operands({"wd": wd, "momentum": momentum, "damp": _map(lambda d: 1.0 - d, dampening),
                         "step": _map(lambda lr: -lr, h["lr"])})
        decay, heavy, damped = _on(wd), _on(momentum), _on(dampening)
        for name, p in params.items():
            g, c = grads[name], ops.at(p)
            if decay:
                g += c["wd"] * p
            d = g
            if heavy:
                buf = state["buf"][name]
                if first:
                    buf[...] = g
                else:
                    buf *= c["momentum"]
                    buf += c["damp"] * g if damped else g
                if self.nesterov:
                    g += c["momentum"] * buf
                else:
                    d = buf
            # The update -lr * d goes into the gradient's buffer (ours to overwrite): no
            # temporary. p + (-lr * d) is p - lr * d bit for bit: negation is exact.
            np.multiply(d, c["step"], out=g)
            if measured is not None:
                measured[name] = squares(g)
        return grads


def _lerp_(avg: np.ndarray, x: np.ndarray, weight: Any, scratch: np.ndarray) -> None:
    """avg += weight * (x - avg) in place: torch's lerp_ (one multiply fewer than the EMA form)."""
    avg += np.multiply(np.subtract(x, avg, out=scratch), weight, out=scratch)


class _Adaptive(Optimizer):
    """Optimizers whose update -d is built in a per-parameter scratch buffer of the state.

    Subclasses name their buffers, derive their constants once per call (`_constants`) and
    compute -d; no parameter-sized array is allocated after `init`. Shared scalars are Python
    floats, which never promote a float32 array (a float64 numpy scalar would). Each sign is
    folded into a multiplication (exact), so the update added is bit for bit the step torch
    subtracts.
    """

    def _buffers(self) -> tuple[str, ...]:
        raise NotImplementedError

    def _constants(self, h: dict[str, Value], t: int) -> dict[str, Value]:
        """The call's constants at step t (from 1), each a scalar or one value per variant."""
        raise NotImplementedError

    def _step(self, p: np.ndarray, g: np.ndarray, b: dict[str, np.ndarray], c: dict[str, Any]) -> np.ndarray:
        """The update -d for one parameter, written into b["scratch"], with the operands `c`
        (the constants as operands of p's arrays; booleans say which branches are taken). It
        reads p before any parameter is changed (the updates are applied after)."""
        raise NotImplementedError

    def init(self, params: dict[str, np.ndarray]) -> dict[str, Any]:
        return {"step": np.zeros(_variants(params), np.int64), **{b: {k: np.zeros_like(v) for k, v in params.items()}
                                                                  for b in ("scratch", *self._buffers())},
                **self._hyper_state(params)}

    def _buffer(self, grads, state):
        return state["scratch"]

    def _updates(self, params, grads, state, t, h, measured=None):
        ops = _Operands(self._constants(h, t + 1))
        names = ("scratch", *self._buffers())
        for k, p in params.items():
            u = self._step(p, grads[k], {b: state[b][k] for b in names}, ops.at(p))
            if measured is not None:
                measured[k] = squares(u)
        return state["scratch"]


class Adam(_Adaptive):
    """torch.optim.Adam, exactly: with g the (clipped) gradient and t the step from 1,

        g = g + weight_decay * p                          (L2, in the gradient)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g^2
        v_max = max(v_max, v) (amsgrad), used below in place of v
        d = lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
        p = p - d
    """

    HYPER = ("lr", "beta1", "beta2", "eps", "weight_decay")
    GATES = ("weight_decay",)
    decoupled = False

    def __init__(self, lr: float = 1e-3, betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False) -> None:
        self.lr, self.eps, self.weight_decay, self.amsgrad = float(lr), float(eps), float(weight_decay), amsgrad
        self.beta1, self.beta2 = (float(b) for b in betas)

    def _buffers(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if self.amsgrad else ())

    def _constants(self, h, t):
        lr, beta1, beta2, wd = h["lr"], h["beta1"], h["beta2"], h["weight_decay"]
        return {"wd": wd, "decay": _on(wd), "eps": h["eps"], "beta2": beta2,
                "w1": _map(lambda b: 1.0 - b, beta1), "w2": _map(lambda b: 1.0 - b, beta2),
                # sqrt(1 - beta2^t) and -lr / (1 - beta1^t), as torch's Python floats.
                "root2": _map(lambda b: (1.0 - b ** t) ** 0.5, beta2),
                "step": _map(lambda lr, b: -(lr / (1.0 - b ** t)), lr, beta1),
                "lr_wd": _map(lambda lr, wd: lr * wd, lr, wd)}

    def _step(self, p, g, b, c):
        s, m, v = b["scratch"], b["exp_avg"], b["exp_avg_sq"]
        if c["decay"] and not self.decoupled:
            g += np.multiply(p, c["wd"], out=s)
        _lerp_(m, g, c["w1"], s)
        v *= c["beta2"]
        v += np.multiply(np.square(g, out=s), c["w2"], out=s)
        if self.amsgrad:
            v = np.maximum(b["max_exp_avg_sq"], v, out=b["max_exp_avg_sq"])
        np.sqrt(v, out=s)
        s /= c["root2"]
        s += c["eps"]
        np.divide(m, s, out=s)
        s *= c["step"]
        if c["decay"] and self.decoupled:
            # p * (1 - lr * wd) - d, as one update so that its norm is the whole change;
            # g is spent, so it holds the decay.
            s -= np.multiply(p, c["lr_wd"], out=g)
        return s


class AdamW(Adam):
    """torch.optim.AdamW, exactly: Adam with decoupled weight decay, p = p * (1 - lr * weight_decay)
    before the Adam step (the gradient is not touched)."""

    decoupled = True

    def __init__(self, lr: float = 1e-3, betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False) -> None:
        super().__init__(lr, betas, eps, weight_decay, amsgrad)


class RMSprop(_Adaptive):
    """torch.optim.RMSprop, exactly: with g the (clipped) gradient,

        g = g + weight_decay * p
        v = alpha * v + (1 - alpha) * g^2
        a = alpha * a + (1 - alpha) * g;  avg = sqrt(v - a^2) + eps   (centered)
                                          avg = sqrt(v) + eps         (otherwise)
        buf = momentum * buf + g / avg;   d = lr * buf                (momentum > 0)
                                          d = lr * g / avg            (otherwise)
        p = p - d
    """

    HYPER = ("lr", "alpha", "eps", "weight_decay", "momentum")
    GATES = ("weight_decay", "momentum")

    def __init__(self, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
                 momentum: float = 0.0, centered: bool = False) -> None:
        self.lr, self.alpha, self.eps = float(lr), float(alpha), float(eps)
        self.weight_decay, self.momentum, self.centered = float(weight_decay), float(momentum), centered

    def _buffers(self) -> tuple[str, ...]:
        return (("square_avg",) + (("grad_avg",) if self.centered else ())
                + (("momentum_buffer",) if self._ever("momentum") else ()))

    def _constants(self, h, t):
        return {"wd": h["weight_decay"], "decay": _on(h["weight_decay"]), "alpha": h["alpha"],
                "w": _map(lambda a: 1.0 - a, h["alpha"]), "eps": h["eps"], "momentum": h["momentum"],
                # momentum > 0: the config refuses a negative one
                "heavy": _on(h["momentum"]), "step": _map(lambda lr: -lr, h["lr"])}

    def _step(self, p, g, b, c):
        s, v = b["scratch"], b["square_avg"]
        if c["decay"]:
            g += np.multiply(p, c["wd"], out=s)
        v *= c["alpha"]
        v += np.multiply(np.square(g, out=s), c["w"], out=s)
        if self.centered:
            a = b["grad_avg"]
            _lerp_(a, g, c["w"], s)
            np.sqrt(np.subtract(v, np.square(a, out=s), out=s), out=s)
        else:
            np.sqrt(v, out=s)
        s += c["eps"]
        np.divide(g, s, out=s)
        if c["heavy"]:
            buf = b["momentum_buffer"]
            buf *= c["momentum"]
            buf += s
            return np.multiply(buf, c["step"], out=s)
        s *= c["step"]
        return s


_KINDS: dict[str, type[Optimizer]] = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop}


def build_optimizer(cfg, variants: Optional[Sequence[Any]] = None) -> Optimizer:
    """The optimizer `cfg.kind` names, given the config's other fields (named as the arguments).

    `variants`: one optimizer config per variant of the stack, in stack order, differing from
    `cfg` in hyperparameters only (Optimizer.vary); without it every variant has `cfg`'s."""
    opt = _one(cfg)
    return opt.vary([_one(c) for c in variants]) if variants is not None else opt


def branches(cfg) -> tuple[bool, ...]:
    """Which branches an optimizer config's hyperparameters switch on: variants that agree
    are stepped in one call when they sit together in the stack."""
    opt = _one(cfg)
    return tuple(bool(getattr(opt, name)) for name in opt.GATES)


def _one(cfg) -> Optimizer:
    if cfg.kind not in _KINDS:
        raise ValueError(f"unknown optimizer {cfg.kind!r}")
    return _KINDS[cfg.kind](**{k: v for k, v in cfg if k != "kind"})
