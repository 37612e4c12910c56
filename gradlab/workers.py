"""Seeds in parallel: one worker process per core, each training whole seeds and writing their
runs itself (atomically, as always), BLAS limited to one thread per worker.

The parent only hands out seeds and draws progress. On Ctrl-C or SIGTERM it stops the
workers with SIGTERM, which each holds until a write in flight has finished
(io.deferred_interrupt), so every run on disk is complete or absent: a run folder without
report.json is redone by the next run. A worker whose parent is gone (killed with SIGKILL
alone, which no handler sees) stops at its next step instead of training on unwatched, beside
the `gradlab` that resumes the experiment.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import traceback
from pathlib import Path
from typing import Callable

from .config import ExperimentConfig
from .errors import UserError, WorkerLost

_FLUSH_EVERY = 25  # steps between progress messages: one pipe write per 25 steps is cheap


def limit_blas_threads() -> int:
    """One BLAS thread in this process; returns the largest thread count left in any pool.

    Several processes on few cores: more BLAS threads would only fight over them (and
    OpenBLAS threads spin while they wait: oversubscribed, a sweep once ran 70x slower).
    NumPy must be loaded first, or there is no BLAS yet for the limit to reach.
    """
    from threadpoolctl import threadpool_info, threadpool_limits

    from . import train  # noqa: F401  (loads NumPy and its BLAS)

    threadpool_limits(1)
    return max((p["num_threads"] for p in threadpool_info()), default=1)


def _worker(cfg: ExperimentConfig, exp: Path, lockstep: bool, tasks, events, parent: int) -> None:
    # Ctrl-C reaches the whole process group; the parent decides and sends SIGTERM, which
    # ends a worker at once (the parent's own SIGTERM handler is not for workers).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)

    limit_blas_threads()
    pending = 0  # `parent` is the pid the parent passed: it may die before this runs

    def advance(n: int) -> None:
        nonlocal pending
        if os.getppid() != parent:  # the parent was killed (kill -9, the OOM killer): stop too
            os._exit(1)  # between steps, so no write is in flight; nobody is left to report to
        pending += n
        if pending >= _FLUSH_EVERY:
            events.put(("steps", pending))
            pending = 0

    def next_task():
        """The next (seed, todo), or None: no more, or the parent is gone. The parent's queue
        feeder thread may die before it has flushed every task: never wait for one forever."""
        while os.getppid() == parent:
            try:
                return tasks.get(timeout=0.5)
            except queue.Empty:
                continue
        return None

    while (item := next_task()) is not None:
        k, seed, todo = item  # the plan's number: a grid has several plans of a seed
        events.put(("start", (os.getpid(), k)))  # so that the parent can name a lost seed
        try:
            train_plan(cfg, exp, seed, todo, lockstep, advance)
        except UserError as exc:  # a full disk, a read-only folder: the user's to fix, exit 2
            events.put(("user_error", exc))
            return
        except Exception as exc:  # a bug: the parent raises it with this traceback
            events.put(("error", f"seed {seed}: {exc!r}\n{traceback.format_exc()}"))
            return
        events.put(("steps", pending))
        pending = 0
        events.put(("done", k))


def train_plan(cfg: ExperimentConfig, exp: Path, seed: int, todo: list, lockstep: bool = True,
               advance: Callable[[int], None] = lambda n: None) -> None:
    """Train the variants `todo` of one seed and write their runs. With lockstep (the
    default) they train as one stack; without, one after another (same numbers, slower).

    In a grid experiment `todo` holds (point, variant) pairs (experiment.SeedPlan), which
    gridtrain.train_points trains and names by their points."""
    from .config import config_hash
    from .store import write_run
    from .train import train_seed  # the engine is needed only here, not by `validate`

    groups = [todo] if lockstep else [[i] for i in todo]
    h = config_hash(cfg)
    for group in groups:
        done = 0

        def step(_: int) -> None:
            nonlocal done
            done += 1
            advance(1)

        if cfg.grid is not None:  # (point, variant) pairs
            from .gridtrain import train_points

            results = train_points(cfg, seed, group, on_step=step)
        else:
            results = train_seed(cfg, seed, [cfg.clipping[i] for i in group], group, on_step=step)
        for r in results:
            write_run(exp, r, h)
        # Every variant diverged early: the rest is skipped (a stack's points share their steps).
        advance(steps_of(cfg, group) - done)


def steps_of(cfg: ExperimentConfig, group: list) -> int:
    """The steps of a stack: the config's, or in a grid those of its points."""
    if cfg.grid is None:
        return cfg.train.steps
    from .config.grid import grid_points

    return grid_points(cfg)[group[0][0]][1].train.steps


def train_in_workers(cfg: ExperimentConfig, exp: Path, plans, workers: int, lockstep: bool, progress,
                     while_training=None) -> None:
    """Train every plan (a seed and its variants to compute) in `workers` processes.
    `while_training()` runs once they are forked: the parent mostly waits from then on."""
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    tasks, events = ctx.Queue(), ctx.Queue()
    for k, p in enumerate(plans):
        tasks.put((k, p.seed, p.todo))
    procs = [ctx.Process(target=_worker, args=(cfg, exp, lockstep, tasks, events, os.getpid()), daemon=True)
             for _ in range(workers)]
    for _ in procs:
        tasks.put(None)
    for proc in procs:
        proc.start()
    if while_training is not None:
        while_training()
    what = "seed(s)" if cfg.grid is None else "stack(s) (grid points of a seed)"
    progress.note(f"{len(plans)} {what} on {workers} worker processes")
    remaining = len(plans)
    ok = False
    working: dict[int, int] = {}  # pid -> the plan it is training

    def take(kind: str, payload) -> None:
        nonlocal remaining
        if kind == "start":
            working[payload[0]] = payload[1]
        elif kind == "steps":
            progress.advance(payload)
        elif kind == "done":
            remaining -= 1
            for pid in [pid for pid, s in working.items() if s == payload]:
                del working[pid]
        elif kind == "user_error":
            raise payload
        else:
            raise RuntimeError(f"a worker failed on {payload}")

    try:
        while remaining:
            try:
                take(*events.get(timeout=0.2))
            except queue.Empty:
                pass
            # Looked at every time, not only when the queue is quiet: the other workers'
            # progress would otherwise hide a dead one until they had finished.
            dead = [p for p in procs if p.exitcode not in (None, 0)]
            if dead:
                while True:  # what the dead worker said last may still be in the queue
                    try:
                        take(*events.get_nowait())
                    except queue.Empty:
                        break
                lost = working.get(dead[0].pid)
                raise WorkerLost(plans[lost].seed if lost is not None else None, dead[0].exitcode)
        ok = True
    finally:
        for proc in procs:
            if not ok and proc.is_alive():
                proc.terminate()  # SIGTERM: held until a write in flight has finished
        for proc in procs:
            proc.join()
