"""The compute-dtype policy: float16 and bfloat16 training emulated exactly on float32 arrays.

Mixed precision as torch.autocast does it: the master weights, the optimizer state and the
clipping stay float32; the values that flow between ops are rounded to the compute dtype.
NumPy has no BLAS path for float16 (its float16 matmul is about 4x slower) and none at all
for bfloat16, so every array stays float32 and is *rounded* at each op boundary: a matmul
computes in float32 (accumulating in float32, as tensor cores and autocast's kernels do)
and its output is rounded once. Rounding is round-to-nearest-even, bit-identical to the casts
`a.astype(float16)` and `a.astype(ml_dtypes.bfloat16)` and back: bfloat16 by that cast into a
scratch buffer (ml_dtypes' cast costs about two adds, less than a bit-mask rounding through a
uint32 view, measured), float16 in float32 arithmetic (`_round_float16_`: NumPy's cast is
15-40x an add here); a signalling NaN alone may come out quiet. A value beyond the dtype's
range becomes inf (float16's largest is 65504), which is what the lab is for: fp16 overflow
is born where it would be born on a GPU, and the divergence locator names that tensor.

The boundaries (every model applies all that it has):
  forward:  the per-step compute copy of every parameter (weights and biases, rounded once
            per step from the float32 master) and the inputs; every matmul's output (after its
            bias add, one rounding as in a fused addmm); every activation's output (tanh,
            relu, sigmoid, gelu); a recurrent layer's h_t (and an LSTM's c_t) at every step:
            the cell is one fused op, as torch's nn.RNN / LSTM / GRU are (cuDNN), so its
            input projection, gate pre-activations and gates stay float32 inside it; the
            transformer's embeddings (and their sum with the positions), LayerNorm outputs,
            inside the attention the scaled q, the logits, the probabilities and the output
            (gradlab.models.ops.causal_attention's `round_`), and each residual sum; the
            logits (the model's output).
  loss:     computed in float32 from the rounded logits, as autocast runs losses in float32;
            its gradient dL/dlogits is rounded on entering the backward pass.
  backward: every gradient flowing between ops (dL/dx of a matmul, through an activation;
            in a recurrence dL/dh_t, the sum of the gradient from above and the one through
            time, and dL/d(input); in the transformer each LayerNorm's, the attention's
            dv, d(logits), dq and dk, each residual sum of gradients) and every parameter's
            gradient, which is the gradient of its compute copy (a float16 tensor under
            autocast) and then becomes the float32 master gradient unchanged.

float32 compute is the identity: `round_` returns its argument untouched and `weights`
returns the master parameters themselves, so float32 runs are bit for bit (and at the speed
of) runs made before this module existed.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from ml_dtypes import bfloat16 as _BFLOAT16  # NumPy has no bfloat16

COMPUTE_DTYPES = ("float32", "float16", "bfloat16")

# float16 rounding in float32 arithmetic (see _round_float16_).
_EXP = np.uint32(0x7F800000)
_SIGN = np.uint32(0x80000000)
_LOW = np.uint32(113 << 23)  # 2^-14, float16's smallest normal: below it its grid is fixed, 2^-24
_HIGH = np.uint32(142 << 23)  # 2^15, float16's top binade (a larger c would overflow)
_MAGIC = np.uint32((13 << 23) + 0x00400000)  # the exponent's power of two, times 1.5 * 2^13
_UP, _DOWN = np.float32(2.0**112), np.float32(2.0**-112)
_KEEP = np.uint32(0xFFFFE000)
_CHUNK = 1 << 16  # elements per pass: the ten passes of a chunk stay in the L2 cache


def _round_float16_(a: np.ndarray, s: np.ndarray, sign: np.ndarray) -> None:
    """float16 round-to-nearest-even of float32 `a` in place, in float32 arithmetic: 3-5x
    faster than NumPy's float32 -> float16 cast here (which has no SIMD path and a slower one
    still for tiny values), bit-identical to it for every float32 but a signalling NaN. With c = 1.5 * 2^(e + 13), e the exponent of x clamped to [-14, 15], x + c
    lands in c's binade, whose spacing is float16's at x (2^(e - 10), or 2^-24 below 2^-14),
    so the addition rounds x to float16's grid, ties to even (c is an even multiple of the
    spacing), and subtracting c is exact. The sign bit is put back for a negative x that
    rounded to zero (-0, as the cast gives). Scaling by 2^112 and back is exact below 2^16 and
    overflows to inf from there: past 65504 float16 has nothing but inf. The last mask keeps a
    NaN's top 10 payload bits, as the cast does; a signalling NaN (never the result of
    arithmetic) comes out quiet, where the cast keeps it signalling. `s` and `sign` are uint32
    scratch of a's shape."""
    u = a.view(np.uint32)
    np.bitwise_and(u, _SIGN, out=sign)
    np.bitwise_and(u, _EXP, out=s)
    np.clip(s, _LOW, _HIGH, out=s)
    s += _MAGIC
    c = s.view(np.float32)
    a += c
    a -= c
    u |= sign
    a *= _UP
    a *= _DOWN
    u &= _KEEP  # a no-op on every number; a NaN keeps its top 10 payload bits, as in the cast


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

    def _buf(self, shape: tuple, dtype) -> np.ndarray:
        """A scratch array: grown, never shrunk, so a step's rounding allocates nothing once
        the largest tensor has been seen."""
        n = math.prod(shape) * np.dtype(dtype).itemsize
        if self._scratch is None or self._scratch.size < n:
            self._scratch = np.empty(max(n, 4096), dtype=np.uint8)
        return self._scratch[:n].view(dtype).reshape(shape)

    def round_(self, a: np.ndarray) -> np.ndarray:
        """`a` (float32) rounded to the compute dtype, in place; returned for chaining."""
        if not self.active or a.dtype != np.float32:
            return a
        with np.errstate(all="ignore"):  # beyond the range is inf, NaN stays NaN: results, not news
            if self.name == "bfloat16":  # ml_dtypes' cast is fast: two passes
                h = self._buf(a.shape, self._dtype)
                np.copyto(h, a, casting="unsafe")
                np.copyto(a, h, casting="unsafe")
                return a
            if a.flags.c_contiguous and a.size > _CHUNK:
                flat, s = a.reshape(-1), self._buf((2, _CHUNK), np.uint32)
                for i in range(0, flat.size, _CHUNK):
                    part = flat[i:i + _CHUNK]
                    _round_float16_(part, s[0, :part.size], s[1, :part.size])
            else:
                s = self._buf((2,) + a.shape, np.uint32)
                _round_float16_(a, s[0], s[1])
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
