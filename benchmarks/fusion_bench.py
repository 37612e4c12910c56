"""What fusing the LSTM cell's elementwise work would give: NumPy ufuncs against numba and numexpr.

The LSTM's step runs about 10 NumPy calls per time step forward and 17 backward on (H, B)
to (4H, B) blocks, outside its matrix products; torch's nn.LSTM fuses them into one kernel.
This times the forward cell alone, T steps of it, with the products left out (the same
pre-activations every round): the three sigmoids, tanh(g), c = f c + i g, h = o tanh(c),

- numpy:   gradlab's engine's calls (`out=` into preallocated buffers; sigmoid as
           1 / (1 + exp(-a)), which NumPy vectorises);
- numba:   one compiled loop per step over the block (float32 scalars, fastmath);
- numba-arith: the arithmetic alone compiled (three loops per step, no fastmath), NumPy
           keeping exp and tanh;
- numexpr: one expression per quantity, on one thread.

CPU time of this process (1 thread), median of rounds; also whether each gives NumPy's bits
(the engine's goldens are pinned bit for bit). numba and numexpr are not gradlab
dependencies: `pip install numba numexpr` to run this; without them it says which is
missing. Not a test: pytest never imports it.

    python benchmarks/fusion_bench.py [--hidden 128] [--batch 32] [--seq-len 100] [--rounds 7]
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()

    import numpy as np
    from threadpoolctl import threadpool_limits

    threadpool_limits(1)
    H, B, T = args.hidden, args.batch, args.seq_len
    rng = np.random.default_rng(0)
    pre_all = rng.standard_normal((T, 4 * H, B)).astype(np.float32)  # i, f, o, g, as the engine orders them
    gates = np.empty_like(pre_all)
    cells, tc, hs = (np.empty((T, H, B), np.float32) for _ in range(3))

    def numpy_cell() -> None:
        scratch = np.empty((H, B), np.float32)
        with np.errstate(over="ignore"):
            for t in range(T):
                pre = gates[t]
                pre[...] = pre_all[t]
                a, g = pre[:3 * H], pre[3 * H:]
                np.negative(a, out=a)
                np.exp(a, out=a)
                a += 1.0
                np.divide(1.0, a, out=a)
                np.tanh(g, out=g)
                c = cells[t]
                if t:
                    np.multiply(pre[H:2 * H], cells[t - 1], out=c)
                    c += np.multiply(pre[:H], g, out=scratch)
                else:
                    np.multiply(pre[:H], g, out=c)
                np.multiply(pre[2 * H:3 * H], np.tanh(c, out=tc[t]), out=hs[t])

    engines = {"numpy": numpy_cell}
    notes = []
    try:
        t0 = time.perf_counter()
        import numba

        t_import = time.perf_counter() - t0

        @numba.njit(fastmath=True)
        def kernel(pre, c_prev, c, tcv, h, first):  # pragma: no cover - compiled
            n = c.shape[0]
            one = np.float32(1.0)
            for j in range(n):
                for b in range(pre.shape[1]):
                    i = one / (one + np.exp(-pre[j, b]))
                    f = one / (one + np.exp(-pre[n + j, b]))
                    o = one / (one + np.exp(-pre[2 * n + j, b]))
                    g = np.tanh(pre[3 * n + j, b])
                    pre[j, b], pre[n + j, b], pre[2 * n + j, b], pre[3 * n + j, b] = i, f, o, g
                    cc = i * g if first else f * c_prev[j, b] + i * g
                    c[j, b] = cc
                    tcv[j, b] = np.tanh(cc)
                    h[j, b] = o * tcv[j, b]

        def numba_cell() -> None:
            for t in range(T):
                pre = gates[t]
                pre[...] = pre_all[t]
                kernel(pre, cells[t - 1] if t else cells[0], cells[t], tc[t], hs[t], t == 0)

        # The arithmetic alone fused, NumPy keeping exp and tanh (its vector loops): per step
        # a negation, then 1 / (1 + e) for the three sigmoids with c = f c + i g in one loop,
        # then h = o tanh(c), each a flat loop over contiguous rows. No fastmath: every
        # operation rounds to float32 as NumPy's do and no multiply-add is contracted, so the
        # bits can be NumPy's; error_model="numpy" drops the division-by-zero check that
        # otherwise keeps LLVM from vectorising the loop.
        N = H * B
        jit = numba.njit(error_model="numpy")

        @jit
        def neg(a):  # pragma: no cover - compiled
            for k in range(a.size):
                a[k] = -a[k]

        @jit
        def gates_cell(p, c_prev, c):  # pragma: no cover - compiled; p: i, f, o (exp'd), g (tanh'd)
            one = np.float32(1.0)
            for k in range(N):
                i = one / (one + p[k])
                f = one / (one + p[N + k])
                p[k], p[N + k] = i, f
                p[2 * N + k] = one / (one + p[2 * N + k])
                c[k] = f * c_prev[k] + i * p[3 * N + k]

        @jit
        def out_cell(o, tcv, h):  # pragma: no cover - compiled
            for k in range(h.size):
                h[k] = o[k] * tcv[k]

        zero = np.zeros(N, np.float32)  # c_{-1}: 0 * f + i g gives i g's bits

        def numba_arith_cell() -> None:
            with np.errstate(over="ignore"):
                for t in range(T):
                    pre = gates[t]
                    pre[...] = pre_all[t]
                    flat, a, g = pre.reshape(-1), pre[:3 * H], pre[3 * H:]
                    neg(flat[:3 * N])
                    np.exp(a, out=a)
                    np.tanh(g, out=g)
                    gates_cell(flat, cells[t - 1].reshape(-1) if t else zero, cells[t].reshape(-1))
                    out_cell(flat[2 * N:3 * N], np.tanh(cells[t], out=tc[t]).reshape(-1), hs[t].reshape(-1))

        t0 = time.perf_counter()
        numba_cell()
        numba_arith_cell()
        notes.append(f"numba {numba.__version__}: import {t_import:.2f} s, compiling the cell {time.perf_counter() - t0:.2f} s "
                     "(in every worker process, or a cache on disk)")
        engines["numba"] = numba_cell
        engines["numba-arith"] = numba_arith_cell
    except ImportError:
        notes.append("numba: not installed (pip install numba)")
    try:
        import numexpr as ne

        ne.set_num_threads(1)

        def numexpr_cell() -> None:
            for t in range(T):
                pre = gates[t]
                pre[...] = pre_all[t]
                a, g = pre[:3 * H], pre[3 * H:]  # noqa: F841  (named in the expressions)
                ne.evaluate("1 / (1 + exp(-a))", out=a)
                ne.evaluate("tanh(g)", out=g)
                i, f, o, c = pre[:H], pre[H:2 * H], pre[2 * H:3 * H], cells[t]  # noqa: F841
                if t:
                    cp = cells[t - 1]  # noqa: F841
                    ne.evaluate("f * cp + i * g", out=c)
                else:
                    ne.evaluate("i * g", out=c)
                tt = tc[t]
                ne.evaluate("tanh(c)", out=tt)
                ne.evaluate("o * tt", out=hs[t])

        notes.append(f"numexpr {ne.__version__} (VML: {ne.use_vml})")
        engines["numexpr"] = numexpr_cell
    except ImportError:
        notes.append("numexpr: not installed (pip install numexpr)")

    numpy_cell()
    ref = hs.copy()
    ms = {k: [] for k in engines}
    same = {}
    for k, fn in engines.items():
        fn()
        same[k] = bool(np.array_equal(hs, ref))
        diff = float(np.abs(hs - ref).max())
        same[k] = (same[k], diff)
    for _ in range(args.rounds):  # interleaved rounds
        for k, fn in engines.items():
            t = time.process_time()
            for _ in range(5):
                fn()
            ms[k].append((time.process_time() - t) / 5 * 1e3)
    base = statistics.median(ms["numpy"])
    print(f"LSTM cell forward, elementwise only, H {H}, B {B}, T {T}, 1 thread, CPU ms per pass of T steps "
          f"(median of {args.rounds} interleaved rounds):")
    for k, v in ms.items():
        m = statistics.median(v)
        bits, diff = same[k]
        print(f"  {k:8s} {m:7.2f} ms  {m / base:5.2f}x numpy  "
              + ("same bits as numpy" if bits else f"differs from numpy (max |diff| {diff:.1e})"))
    for line in notes:
        print(line)


if __name__ == "__main__":
    main()
