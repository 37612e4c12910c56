"""Buffers that a training loop reuses from step to step.

A step's activations, gate values and gradients have the same shapes every step (until a
diverged variant leaves the stack), so the loop hands the model one Workspace and the model
asks it for named buffers instead of allocating: no allocation, no page faults from glibc
returning freed memory to the system between steps, the same addresses every step.

Only the training loop passes one. Without a workspace (a notebook, the gradient checks,
the divergence replay) every call returns fresh arrays, so results of two calls never alias.
"""

from __future__ import annotations

import numpy as np


class Workspace:
    def __init__(self) -> None:
        self._bufs: dict[str, np.ndarray] = {}
        self._derived: dict[str, tuple[np.ndarray, object]] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        """The buffer called `name`, uninitialised; a new one when its shape or dtype changed."""
        buf = self._bufs.get(name)
        if buf is None or buf.shape != shape or buf.dtype != dtype:
            buf = self._bufs[name] = np.empty(shape, dtype=dtype)
        return buf

    def zeros(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        buf = self.get(name, shape, dtype)
        buf.fill(0)
        return buf

    def derived(self, key: str, base: np.ndarray, make):
        """make(), kept while `base` is the same buffer (views of a buffer the loop reuses are
        made once, not every step); made again when `base` was replaced."""
        ent = self._derived.get(key)
        if ent is None or ent[0] is not base:
            ent = self._derived[key] = (base, make())
        return ent[1]

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self._bufs.values())


def buffer(ws: "Workspace | None", name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    """`ws.get(...)`, or a fresh array without a workspace."""
    return np.empty(shape, dtype=dtype) if ws is None else ws.get(name, shape, dtype)


def zeros(ws: "Workspace | None", name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
    return np.zeros(shape, dtype=dtype) if ws is None else ws.zeros(name, shape, dtype)
