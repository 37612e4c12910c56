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
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import numpy as np

from .norms import param_norms, total_norm

Grads = dict[str, np.ndarray]


class Optimizer:
    """What all optimizers share: the per-variant step count and the call on views after a skip."""

    def init(self, params: dict[str, np.ndarray]) -> dict[str, Any]:
        raise NotImplementedError

    def update(self, grads: Grads, state: dict[str, Any], params: dict[str, np.ndarray],
               ctx: Optional[Any] = None,
               lr: Optional[float] = None) -> tuple[Grads, dict[str, Any], dict[str, np.ndarray]]:
        """`lr`: this step's learning rate in place of the optimizer's own (a schedule's, from
        gradlab.schedules), a Python float so that a float32 step stays float32."""
        lr = self.lr if lr is None else lr
        t = state["step"]
        if t.size == 0 or t.min() == t.max():  # the usual case: one step count, one stacked call
            updates = self._updates(params, grads, state, int(t[0]) if t.size else 0, lr)
            norm = total_norm(param_norms(updates))
        else:  # after a skip: each variant with its own count, on views of its slices
            norm = np.empty(t.size)
            for v in range(t.size):
                one = lambda d: {k: a[v:v + 1] for k, a in d.items()}  # noqa: E731
                sub = {k: (one(x) if isinstance(x, dict) else x) for k, x in state.items() if k != "step"}
                # Each variant's norm from its own slice, as a stack of one would measure it.
                norm[v] = total_norm(param_norms(self._updates(one(params), one(grads), sub, int(t[v]), lr)))[0]
            updates = self._buffer(grads, state)  # the views above wrote into these
        state["step"] = t + 1
        return updates, state, {"update_norm": norm}

    def _updates(self, params, grads, state, t: int, lr: float) -> Grads:
        """The updates, at learning rate lr, of variants that have all taken t steps before
        this one, written into `_buffer(grads, state)`."""
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

    def __init__(self, lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 nesterov: bool = False, weight_decay: float = 0.0) -> None:
        self.lr, self.momentum, self.dampening = lr, momentum, dampening
        self.nesterov, self.weight_decay = nesterov, weight_decay

    def init(self, params: dict[str, np.ndarray]) -> dict[str, Any]:
        return {"step": np.zeros(_variants(params), np.int64),
                "buf": {k: np.zeros_like(v) for k, v in params.items()} if self.momentum else {}}

    def _buffer(self, grads, state):
        return grads

    def _updates(self, params, grads, state, t, lr):
        first = t == 0
        for name, p in params.items():
            g = grads[name]
            if self.weight_decay:
                g += self.weight_decay * p
            d = g
            if self.momentum:
                buf = state["buf"][name]
                if first:
                    buf[...] = g
                else:
                    buf *= self.momentum
                    buf += (1.0 - self.dampening) * g if self.dampening else g
                if self.nesterov:
                    g += self.momentum * buf
                else:
                    d = buf
            # The update -lr * d goes into the gradient's buffer (ours to overwrite): no
            # temporary. p + (-lr * d) is p - lr * d bit for bit: negation is exact.
            np.multiply(d, -lr, out=g)
        return grads


def _lerp_(avg: np.ndarray, x: np.ndarray, weight: float, scratch: np.ndarray) -> None:
    """avg += weight * (x - avg) in place: torch's lerp_ (one multiply fewer than the EMA form)."""
    avg += np.multiply(np.subtract(x, avg, out=scratch), weight, out=scratch)


class _Adaptive(Optimizer):
    """Optimizers whose update -d is built in a per-parameter scratch buffer of the state.

    Subclasses name their buffers and compute -d; no parameter-sized array is allocated after
    `init`. All scalars are Python floats, which never promote a float32 array (a float64
    numpy scalar would). Each sign is folded into a multiplication (exact), so the update
    added is bit for bit the step torch subtracts.
    """

    def _buffers(self) -> tuple[str, ...]:
        raise NotImplementedError

    def _step(self, p: np.ndarray, g: np.ndarray, b: dict[str, np.ndarray], t: int, lr: float) -> np.ndarray:
        """The update -d for one parameter at step t (from 1) and learning rate lr, written into b["scratch"].
        It reads p before any parameter is changed (the updates are applied after)."""
        raise NotImplementedError

    def init(self, params: dict[str, np.ndarray]) -> dict[str, Any]:
        return {"step": np.zeros(_variants(params), np.int64), **{b: {k: np.zeros_like(v) for k, v in params.items()}
                                                                  for b in ("scratch", *self._buffers())}}

    def _buffer(self, grads, state):
        return state["scratch"]

    def _updates(self, params, grads, state, t, lr):
        t += 1
        names = ("scratch", *self._buffers())
        for k, p in params.items():
            self._step(p, grads[k], {b: state[b][k] for b in names}, t, lr)
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

    decoupled = False

    def __init__(self, lr: float = 1e-3, betas: Sequence[float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False) -> None:
        self.lr, self.eps, self.weight_decay, self.amsgrad = float(lr), float(eps), float(weight_decay), amsgrad
        self.beta1, self.beta2 = (float(b) for b in betas)

    def _buffers(self) -> tuple[str, ...]:
        return ("exp_avg", "exp_avg_sq") + (("max_exp_avg_sq",) if self.amsgrad else ())

    def _step(self, p, g, b, t, lr):
        s, m, v = b["scratch"], b["exp_avg"], b["exp_avg_sq"]
        if self.weight_decay and not self.decoupled:
            g += np.multiply(p, self.weight_decay, out=s)
        _lerp_(m, g, 1.0 - self.beta1, s)
        v *= self.beta2
        v += np.multiply(np.square(g, out=s), 1.0 - self.beta2, out=s)
        if self.amsgrad:
            v = np.maximum(b["max_exp_avg_sq"], v, out=b["max_exp_avg_sq"])
        bias_correction1, bias_correction2 = 1.0 - self.beta1 ** t, 1.0 - self.beta2 ** t
        np.sqrt(v, out=s)
        s /= bias_correction2 ** 0.5
        s += self.eps
        np.divide(m, s, out=s)
        s *= -(lr / bias_correction1)
        if self.weight_decay and self.decoupled:
            # p * (1 - lr * wd) - d, as one update so that its norm is the whole change;
            # g is spent, so it holds the decay.
            s -= np.multiply(p, lr * self.weight_decay, out=g)
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

    def __init__(self, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
                 momentum: float = 0.0, centered: bool = False) -> None:
        self.lr, self.alpha, self.eps = float(lr), float(alpha), float(eps)
        self.weight_decay, self.momentum, self.centered = float(weight_decay), float(momentum), centered

    def _buffers(self) -> tuple[str, ...]:
        return (("square_avg",) + (("grad_avg",) if self.centered else ())
                + (("momentum_buffer",) if self.momentum > 0 else ()))

    def _step(self, p, g, b, t, lr):
        s, v = b["scratch"], b["square_avg"]
        if self.weight_decay:
            g += np.multiply(p, self.weight_decay, out=s)
        v *= self.alpha
        v += np.multiply(np.square(g, out=s), 1.0 - self.alpha, out=s)
        if self.centered:
            a = b["grad_avg"]
            _lerp_(a, g, 1.0 - self.alpha, s)
            np.sqrt(np.subtract(v, np.square(a, out=s), out=s), out=s)
        else:
            np.sqrt(v, out=s)
        s += self.eps
        np.divide(g, s, out=s)
        if self.momentum > 0:
            buf = b["momentum_buffer"]
            buf *= self.momentum
            buf += s
            return np.multiply(buf, -lr, out=s)
        s *= -lr
        return s


_KINDS: dict[str, type[Optimizer]] = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSprop}


def build_optimizer(cfg) -> Optimizer:
    """The optimizer `cfg.kind` names, given the config's other fields (named as the arguments)."""
    if cfg.kind not in _KINDS:
        raise ValueError(f"unknown optimizer {cfg.kind!r}")
    return _KINDS[cfg.kind](**{k: v for k, v in cfg if k != "kind"})
