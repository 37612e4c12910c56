"""The numerical environment a run was computed in: what, besides the config and the seed,
decides its float32 digits.

OpenBLAS picks a kernel for the CPU at load time (Haswell, SkylakeX, ...), and each kernel
adds up a matrix product in its own order; NumPy picks SIMD loops for exp and tanh the same
way. So the same config and seed give the same numbers, bit for bit, only in the same
environment; elsewhere the runs tell the same story in other digits, and an experiment
resumed on two machines would silently mix the two. Each run records its environment so
that this can be seen and said.

Nothing here is a timestamp, a host name or a pid: within one machine the environment must
be the same bytes every time (a killed experiment resumes to the bytes of an uninterrupted
one). Python's version is left out: it does not touch the arithmetic, NumPy does.
"""

from __future__ import annotations

import json
import os
import platform
from functools import lru_cache
from typing import Optional

# The keys a run's `environment` holds, their types and how a message names them (None where
# a BLAS does not say).
_STR, _STR_OR_NULL, _INT_OR_NULL = ((str,), "a string"), ((str, type(None)), "a string or null"), \
    ((int, type(None)), "an integer or null")
FIELDS = (("machine", _STR), ("numpy", _STR), ("numpy_simd", _STR_OR_NULL), ("blas", _STR),
          ("blas_library", _STR_OR_NULL), ("blas_version", _STR_OR_NULL), ("blas_kernel", _STR_OR_NULL),
          ("blas_threads", _INT_OR_NULL))


@lru_cache(maxsize=None)
def _numpy_part() -> tuple[tuple[str, object], ...]:
    """What cannot change while a process lives: the CPU, NumPy and the SIMD loops it picked."""
    import numpy

    try:  # NumPy 2's place; 1.x kept the same attributes under numpy.core
        from numpy._core import _multiarray_umath as umath
    except ImportError:  # pragma: no cover
        from numpy.core import _multiarray_umath as umath
    features = getattr(umath, "__cpu_features__", {})
    targets = [*getattr(umath, "__cpu_baseline__", []), *getattr(umath, "__cpu_dispatch__", [])]
    simd = " ".join(t for t in targets if features.get(t)) or None
    return (("machine", platform.machine()), ("numpy", numpy.__version__), ("numpy_simd", simd))


def _numpy_blas(pools: list[dict]) -> Optional[dict]:
    """NumPy's own BLAS among the loaded ones (torch, in the same process, brings its own):
    the one shipped in NumPy's wheel, else the first."""
    blas = [p for p in pools if p.get("user_api") == "blas"]
    ours = [p for p in blas
            if any(part.startswith("numpy") for part in os.path.normpath(p.get("filepath", "")).split(os.sep))]
    return (ours or blas or [None])[0]


def current() -> dict:
    """The environment of this process as it is now, BLAS thread count included (train_seed
    calls it with its one-thread limit in place, so a run records the threads it ran on)."""
    from threadpoolctl import threadpool_info

    env = dict(_numpy_part())  # NumPy first: threadpoolctl sees only the libraries loaded
    pool = _numpy_blas(threadpool_info())
    if pool is None:
        env.update(blas="none", blas_library=None, blas_version=None, blas_kernel=None, blas_threads=None)
    else:
        env.update(blas=str(pool.get("internal_api")), blas_library=pool.get("prefix"),
                   blas_version=pool.get("version"), blas_kernel=pool.get("architecture"),
                   blas_threads=pool.get("num_threads"))
    return env


def for_training() -> dict:
    """The environment a run computed now would record: the current one on the single BLAS
    thread train_seed trains on."""
    from threadpoolctl import threadpool_limits

    import numpy  # noqa: F401  (loads the BLAS threadpoolctl looks for)

    with threadpool_limits(1, user_api="blas"):
        return current()


def problem(env) -> str:
    """What is wrong with a run's recorded `environment`, or "". Keys a later gradlab may add
    are allowed when they hold plain values."""
    if not isinstance(env, dict):
        return "not an object"
    for key, (types, what) in FIELDS:
        if key not in env:
            return f"no `{key}`"
        if isinstance(env[key], bool) or not isinstance(env[key], types):
            return f"`{key}` is not {what}"
    for key, value in env.items():
        if not isinstance(key, str) or not (value is None or isinstance(value, (str, int, float))):
            return f"`{key}` is not a plain value"
    return ""


def describe(env: Optional[dict]) -> str:
    """One line a reader can compare: `NumPy 2.4.6 (AVX512_ICL loops), OpenBLAS 0.3.31.188.0
    SkylakeX kernel, 1 BLAS thread, x86_64` (the best SIMD target NumPy found; any field in
    which two environments differ is named by `differences`). None: a run written before
    gradlab recorded environments."""
    if env is None:
        return "an unrecorded environment (written by a gradlab that did not record it)"
    blas = "no BLAS" if env.get("blas") == "none" else " ".join(
        str(x) for x in (_BLAS_NAMES.get(env.get("blas"), env.get("blas")), env.get("blas_version")) if x)
    if env.get("blas_kernel"):
        blas += f" {env['blas_kernel']} kernel"
    threads = env.get("blas_threads")
    if threads is not None:
        blas += f", {threads} BLAS thread{'s' if threads != 1 else ''}"
    simd = env.get("numpy_simd")
    numpy = f"NumPy {env.get('numpy')}" + (f" ({simd.split()[-1]} loops)" if simd else "")
    return f"{numpy}, {blas}, {env.get('machine')}"


_BLAS_NAMES = {"openblas": "OpenBLAS", "mkl": "MKL", "blis": "BLIS", "flexiblas": "FlexiBLAS"}

# How the fields read in a sentence, for saying in what two environments differ.
_LABELS = {"machine": "machine", "numpy": "NumPy version", "numpy_simd": "NumPy SIMD loops", "blas": "BLAS library",
           "blas_library": "BLAS build", "blas_version": "BLAS version", "blas_kernel": "BLAS kernel",
           "blas_threads": "BLAS thread count"}


def differences(a: Optional[dict], b: Optional[dict]) -> list[str]:
    """In what environment `a` differs from `b`: `BLAS kernel: Haswell, not SkylakeX`."""
    if a is None or b is None:
        return []
    return [f"{_LABELS.get(k, k)}: {a.get(k)}, not {b.get(k)}"
            for k in dict.fromkeys([*a, *b]) if a.get(k) != b.get(k)]


def key(env: Optional[dict]) -> str:
    """A hashable, order-free identity of an environment (None: unrecorded)."""
    return "" if env is None else json.dumps(env, sort_keys=True)


def of(report: dict) -> Optional[dict]:
    """The environment a run's report records; None for a run from before they were recorded."""
    return report.get("environment")


def groups(reports: list[dict]) -> list[tuple[Optional[dict], list[str]]]:
    """The runs by the environment they were computed in: (environment, run ids), the
    largest group first, then in the order the runs come."""
    by: dict[str, tuple[Optional[dict], list[str]]] = {}
    for r in reports:
        env = of(r)
        by.setdefault(key(env), (env, []))[1].append(r["run_id"])
    return sorted(by.values(), key=lambda g: -len(g[1]))


def some(ids: list[str], shown: int = 3) -> str:
    """`none-s0, norm-1-s0 and norm-10-s0`, or `none-s0, norm-1-s0, norm-10-s0 and 297 more`:
    a few examples, never three hundred ids."""
    if len(ids) <= shown + 1:
        return ids[0] if len(ids) == 1 else ", ".join(ids[:-1]) + " and " + ids[-1]
    return ", ".join(ids[:shown]) + f" and {len(ids) - shown} more"


def _runs(ids: list[str]) -> str:
    return f"{len(ids)} run{'s' if len(ids) != 1 else ''} ({some(ids)})"


def foreign_warning(kept: list[dict], here: dict) -> str:
    """The warning of a resume that finds complete runs computed in another environment than
    this one ("" when there are none): which runs, from where, and what to do about it."""
    other = [(env, ids) for env, ids in groups(kept) if env != here]
    if not other:
        return ""
    parts = []
    for env, ids in other:
        diff = differences(env, here)
        parts.append(f"{_runs(ids)} in {describe(env)}" + (f" (another {'; '.join(diff)})" if diff else ""))
    unrecorded = any(env is None for env, _ in other)
    return (f"complete runs computed in another{' or an unrecorded' if unrecorded else ''} numerical environment: "
            f"{'; '.join(parts)}. "
            f"This process computes in {describe(here)}. Kept as they are: their numbers reproduce bit for bit "
            "only in their own environment, and runs computed here may differ from them in the digits, so the "
            "experiment mixes environments; --force recomputes every run here")


def statement(reports: list[dict]) -> str:
    """report.md's sentence on where the runs were computed, flagging a mixed experiment."""
    gs = groups(reports)
    if not gs:
        return ""
    if len(gs) == 1:
        env, ids = gs[0]
        runs = "the one run" if len(ids) == 1 else f"all {len(ids)} runs"
        return (f"Numerical environment: {describe(env)} ({runs}). Runs reproduce bit for bit "
                "in the same environment (NumPy, BLAS library, kernel and thread count), statistically elsewhere.")
    parts = "; ".join(f"{_runs(ids)} in {describe(env)}" for env, ids in gs)
    return (f"**Mixed numerical environments**: {parts}. Each run reproduces bit for bit only in its own "
            "environment, so digits may differ between these groups for reasons other than clipping; "
            "`gradlab run --force` in one environment recomputes them all.")
