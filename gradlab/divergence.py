"""Where a non-finite value was born.

Healthy steps pay one `isfinite` on the per-variant loss and gradient norm (and, only when
parameters could have grown large enough to overflow, on the parameters). When that check
fails, the step is replayed with probes that look at every intermediate in the order it
was computed (data, forward layer by layer and step by step, loss, backward in backprop
order: through time from the last step to the first), and the first non-finite one is
named for each failing variant.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
import re
from typing import Callable, Optional, Sequence

import numpy as np


@dataclass(frozen=True)
class FirstNonfinite:
    step: int
    phase: str  # forward | backward | update
    where: str  # a parameter (`layer3.W`), an activation (`layer3.tanh`, `lstm.1.h @ t=37`), `loss`, `data.x`
    kind: str  # nan | inf
    t: Optional[int] = None  # the time step, for values inside a recurrence

    @classmethod
    def at(cls, step: int, phase: str, where: str, kind: str) -> "FirstNonfinite":
        m = re.search(r" @ t=(\d+)$", where)
        return cls(step, phase, where, kind, int(m.group(1)) if m else None)

    def to_dict(self) -> dict:
        return asdict(self)


def _kind(a: np.ndarray) -> str:
    return "nan" if np.isnan(a).any() else "inf"


def _bad(a: np.ndarray, where: Optional[np.ndarray]) -> Optional[np.ndarray]:
    """The non-finite entries of `a` that count (all of them without `where`); None when
    there are none."""
    bad = ~np.isfinite(a)
    if where is not None:
        bad &= where
    return bad if bad.any() else None


class Locator:
    """Collects, per stacked variant, the first non-finite array a probe is shown."""

    def __init__(self, positions: Sequence[int]) -> None:
        self.pending = set(positions)
        self.found: dict[int, tuple[str, str, str]] = {}

    def see(self, phase: str, name: str, a: np.ndarray, shared: bool = False,
            where: Optional[np.ndarray] = None) -> None:
        """`a` has the variant axis first, unless `shared` (the same data for every variant).

        `where` (bool, broadcastable to `a` with or without its variant axis) marks the
        entries that count: the causal mask's -inf logits are by design, not a divergence."""
        if not self.pending:
            return
        per_variant = where is not None and not shared and where.ndim == a.ndim
        for v in sorted(self.pending):
            part = a if shared else a[v]
            w = where[v if where.shape[0] > 1 else 0] if per_variant else where
            bad = _bad(part, w)
            if bad is not None:
                self.found[v] = (phase, name, _kind(part[bad]))
                self.pending.discard(v)

    def probe(self, phase: str) -> Callable[..., None]:
        """A probe for models: `probe(name, a)`, or `probe(name, a, where=mask)`."""
        return lambda name, a, where=None: self.see(phase, name, a, where=where)


def locate_step(model, task, params, x, y, positions: Sequence[int],
                dout_scale: Optional[np.ndarray] = None) -> dict[int, tuple[str, str, str]]:
    """Replay a step's forward and backward with probes; (phase, where, kind) per position.

    Deterministic replay gives the same values as the step that failed, so this finds the
    birthplace without the healthy steps keeping anything extra. `dout_scale` (V,) replays a
    loss-scaled backward (each variant's dL/dout times its scale, as the step took it): where
    a scaled gradient overflowed, which is why the loss scale backed off.
    """
    loc = Locator(positions)
    loc.see("forward", "data.x", x, shared=True)
    loc.see("forward", "data.y", y, shared=True)
    # Parameters enter the forward pass next. The update check keeps them finite, so only an
    # initial weight beyond the dtype's range (a gain of 1e100 in float32) is caught here.
    # Under float16 compute a finite master weight beyond 65504 has an inf compute copy
    # (gradlab.compute): the copy is what the forward pass reads, so it is what is checked.
    compute = getattr(model, "compute", None)  # a model of one's own may have none
    for name, p in (compute.weights(params) if compute is not None else params).items():
        loc.see("forward", name, p)
    out, cache = model.forward(params, x, probe=loc.probe("forward"))
    loss, dout = task.loss(out, y, z_loss=model.z_loss)
    if dout_scale is not None:
        dout = dout * dout_scale.astype(dout.dtype).reshape((-1,) + (1,) * (dout.ndim - 1))
    loc.see("forward", "loss", loss)
    loc.see("backward", "loss", dout)
    model.backward(params, cache, dout, probe=loc.probe("backward"))
    # A failing check with every value finite: the global norm itself overflowed (finite
    # float64 gradients near 1e308, whose norm exceeds the float64 range; float32 norms are
    # taken in float64 and cannot) or a probe is missing; name it rather than guess a layer.
    for v in loc.pending:
        loc.found[v] = ("backward", "gradient norm", "inf")
    return loc.found


def locate_update(params: dict[str, np.ndarray], positions: Sequence[int]) -> dict[int, tuple[str, str, str]]:
    """The first parameter (in update order) that the step made non-finite, per position."""
    loc = Locator(positions)
    for name, p in params.items():
        loc.see("update", name, p)
    return loc.found
