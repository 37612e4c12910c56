"""The compute-dtype policy: float16 and bfloat16 training emulated exactly on float32 arrays.

Mixed precision as torch.autocast does it: the master weights, the optimizer state and the
clipping stay float32; the values that flow between ops are rounded to the compute dtype.
NumPy has no BLAS path for float16 (its float16 matmul is about 4x slower) and none at all
for bfloat16, so every array stays float32 and is *rounded* at each op boundary: a matmul
computes in float32 (accumulating in float32, as tensor cores and autocast's kernels do)
and its output is rounded once. Rounding is round-to-nearest-even: the cast to float16 or
to ml_dtypes.bfloat16 into a scratch buffer and back (bfloat16's cast is the faster of the
two, about 2x an add, faster than a bit-mask rounding through a uint32 view, measured;
float16's is about 15x an add, NumPy's cast having no SIMD path here); a value beyond the dtype's range
becomes inf (float16's largest is 65504), which is what the lab is for: fp16 overflow is
born where it would be born on a GPU, and the divergence locator names that tensor.

The boundaries (every model applies all that it has):
  forward:  the per-step compute copy of every parameter (weights and biases, rounded once
            per step from the float32 master); every matmul's output (after its bias add, one
            rounding as in a fused addmm); every activation's output (tanh, relu, sigmoid,
            gelu, the recurrent gates, an LSTM's cell c_t and tanh(c_t), every h_t); the
            transformer's LayerNorm outputs, attention logits, softmax probabilities, attention
            outputs, residual sums and the embeddings; the logits (the model's output).
  loss:     computed in float32 from the rounded logits, as autocast runs losses in float32;
            its gradient dL/dlogits is rounded on entering the backward pass.
  backward: every gradient flowing between ops (dL/dx of a matmul, through an activation,
            through time in a recurrence) and every parameter's gradient, which is the
            gradient of its compute copy (a float16 tensor under autocast) and then becomes
            the float32 master gradient unchanged.

float32 compute is the identity: `round_` returns its argument untouched and `weights`
returns the master parameters themselves, so float32 runs are bit for bit (and at the speed
of) runs made before this module existed.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

COMPUTE_DTYPES = ("float32", "float16", "bfloat16")

from ml_dtypes import bfloat16 as _BFLOAT16  # NumPy has no bfloat16


class Policy:
    """Where the compute dtype reaches the model: `round_(a)` rounds a float32 array in place
    (the identity for float32, which costs one attribute test), `weights(params)` gives the
    step's compute copy of the parameters. A model holds one from build time (`model.compute`)."""

    def __init__(self, compute: str = "float32") -> None:
        if compute not in COMPUTE_DTYPES:
            raise ValueError(f"compute must be one of {COMPUTE_DTYPES}, got {compute!r}")
        self.name = compute
        self.active = compute != "float32"
        self._dtype = np.dtype(np.float16 if compute == "float16" else _BFLOAT16 if compute == "bfloat16" else np.float32)
        self._scratch: np.ndarray | None = None

    def __repr__(self) -> str:
        return f"Policy({self.name!r})"

    def _buf(self, a: np.ndarray, dtype) -> np.ndarray:
        """A scratch array of a's shape: grown, never shrunk, so a step's rounding allocates
        nothing once the largest tensor has been seen."""
        n = a.size * dtype.itemsize
        if self._scratch is None or self._scratch.size < n:
            self._scratch = np.empty(max(n, 4096), dtype=np.uint8)
        return self._scratch[:n].view(dtype).reshape(a.shape)

    def round_(self, a: np.ndarray) -> np.ndarray:
        """`a` (float32) rounded to the compute dtype, in place; returned for chaining."""
        if not self.active or a.dtype != np.float32:
            return a
        h = self._buf(a, self._dtype)
        with np.errstate(all="ignore"):  # beyond the range is inf, NaN stays NaN: results, not news
            np.copyto(h, a, casting="unsafe")
            np.copyto(a, h, casting="unsafe")
        return a

    def rounded(self, a: np.ndarray) -> np.ndarray:
        """A rounded copy of `a` (`a` itself for float32 compute): for values the caller does
        not own."""
        return self.round_(a.copy()) if self.active and a.dtype == np.float32 else a

    def weights(self, params: Mapping[str, np.ndarray], ws=None) -> Mapping[str, np.ndarray]:
        """The step's compute copy of the float32 master parameters: rounded once per call,
        into the workspace's buffers when one is given. float32: `params` itself, no copy."""
        if not self.active:
            return params
        out = {}
        for k, p in params.items():
            c = np.empty_like(p) if ws is None else ws.get(f"compute.{k}", p.shape, p.dtype)
            np.copyto(c, p)
            out[k] = self.round_(c)
        return out


FLOAT32 = Policy("float32")
