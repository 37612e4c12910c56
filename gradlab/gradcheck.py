"""Central finite differences: the one gradient checker every layer and model test uses.

Checks a random sample of entries of each array (all of them when small), in float64.
"""

from __future__ import annotations

from typing import Callable, Mapping

import numpy as np


def check_gradients(
    loss_fn: Callable[[], float],
    arrays: Mapping[str, np.ndarray],
    grads: Mapping[str, np.ndarray],
    *,
    eps: float = 1e-6,
    rtol: float = 1e-5,
    atol: float = 1e-8,
    samples: int = 12,
    seed: int = 0,
) -> float:
    """Compare analytic `grads` with central differences of `loss_fn` wrt `arrays`.

    `loss_fn()` reads the arrays (perturbed in place here and restored). Returns the worst
    relative error; raises AssertionError naming the array and index of a mismatch.
    """
    rng = np.random.default_rng(seed)
    worst = 0.0
    for name, a in arrays.items():
        if a.dtype != np.float64:
            raise TypeError(f"gradient checks run in float64; {name} is {a.dtype}")
        g = grads[name]
        assert g.shape == a.shape, f"{name}: gradient shape {g.shape} != {a.shape}"
        flat = a.reshape(-1)  # a view: perturbing it perturbs the array loss_fn reads
        assert np.shares_memory(flat, a)
        idx = np.arange(flat.size) if flat.size <= samples else rng.choice(flat.size, samples, replace=False)
        for j in idx:
            old = flat[j]
            flat[j] = old + eps
            up = loss_fn()
            flat[j] = old - eps
            down = loss_fn()
            flat[j] = old
            num = (up - down) / (2 * eps)
            ana = g.reshape(-1)[j]
            err = abs(num - ana) / max(abs(num), abs(ana), 1e-12)
            if abs(num - ana) > atol + rtol * max(abs(num), abs(ana)):
                raise AssertionError(
                    f"{name}{list(map(int, np.unravel_index(j, a.shape)))}: analytic {ana:.10g} vs numeric {num:.10g}")
            worst = max(worst, err if abs(num - ana) > atol else 0.0)
    return worst
