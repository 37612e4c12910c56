"""Where training runs: units of work, and the one seam every executor fits.

A unit is a pure call, `train_unit(cfg, seed, todo) -> list[RunResult]`: some variants of one
seed, trained and returned, nothing written. The `gradlab` process hands units to an executor
and writes every result itself, as it arrives (experiment.run_units), atomically and under the
experiment's lock: it is the only writer. A worker may so be a forked process on this machine
or a Dask worker on another one without a shared filesystem, and Ctrl-C, kill -9 and resume
keep every guarantee of the run store (a run on disk is complete or absent).

The seam is concurrent.futures' shape, reduced to what the writer needs:
`submit(fn, *args) -> future` (`future.result()` gives fn's return or raises its error),
`start()` (once all is submitted), `as_completed(futures)` (each as it finishes),
`shutdown(cancel)`, and `unreported(future, steps)`: of a finished unit's steps, those its
progress has not told yet (fn's `advance(n)` calls reach the executor's `advance` as it runs).
Three fit it:

- `InlineExecutor` (`--workers 1`): this process, one unit after another, each when the
  writer asks for the next result.
- `ForkPool` (`--workers N`): N forked processes, one BLAS thread each, step-level progress
  and results over a pipe each. Hand-made rather than concurrent.futures.ProcessPoolExecutor, which cannot keep
  three guarantees: it reports a worker killed from outside as BrokenProcessPool for every
  future, without the unit or the signal (exit 3 names both, at once); its idle workers wait
  on a pipe the parent's death does not close (they inherit its write end), so they outlive a
  `kill -9` of the parent; and it offers no way to stop the busy workers on Ctrl-C short of its
  private process table.
- `DaskExecutor` (`--cluster`, in `cluster.py`): a Dask scheduler's workers.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import threading
import time
import traceback
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Sequence

from .errors import UserError

_FLUSH_EVERY = 25  # steps between progress messages: one pipe write per 25 steps is cheap


@dataclass(frozen=True)
class Unit:
    """Variants `todo` of one seed, trained by one call to train_unit: indices into cfg.clipping,
    or in a grid experiment (point index, variant index) pairs (experiment.SeedPlan)."""

    seed: int
    todo: tuple
    steps: int  # the progress it is worth: train.steps per stack it trains


def stacks(cfg, todo: Sequence, lockstep: bool = True) -> list[list]:
    """The variants of `todo` that train together, as one stack each: with lockstep all of
    them, without it each alone (the same numbers, slower). Any subset of one stack is a stack
    too (units() splits stacks across workers, and train_unit groups each part again)."""
    return [list(todo)] if lockstep else [[i] for i in todo]


def units(cfg, plans, lockstep: bool = True, workers: int = 1) -> list[Unit]:
    """The work of `plans` (a seed and the variants to compute, each) as units: one per stack,
    and while there are fewer units than workers, the largest stack split in two. One seed with
    four variants on two cores so trains as two stacks of two, one per core: a step's cost
    grows about linearly with the variants stacked, so each core's half takes about half the
    time, and the numbers are the same (a variant's numbers do not depend on its stack)."""
    parts = [(p.seed, group) for p in plans for group in stacks(cfg, p.todo, lockstep) if group]
    while len(parts) < workers:
        big = max(range(len(parts)), key=lambda k: len(parts[k][1]), default=None)
        if big is None or len(parts[big][1]) < 2:
            break
        seed, group = parts.pop(big)
        half = (len(group) + 1) // 2
        parts[big:big] = [(seed, group[:half]), (seed, group[half:])]
    return [Unit(seed, tuple(group), sum(steps_of(cfg, g) for g in stacks(cfg, group, lockstep)))
            for seed, group in parts]


def steps_of(cfg, group: Sequence) -> int:
    """The steps of a stack: the config's, or in a grid those of its points (a stack's points
    share their number of steps: train.steps is no hyperparameter)."""
    if cfg.grid is None:
        return cfg.train.steps
    from .config.grid import grid_points

    return grid_points(cfg)[group[0][0]][1].train.steps


def train_unit(cfg, seed: int, todo: Sequence, lockstep: bool = True,
               advance: Callable[[int], None] = lambda n: None) -> list:
    """Train the variants `todo` of one seed and return their RunResults (config order within
    each stack); writes nothing. `advance(n)` is told of every step, and of the steps a stack
    skipped because all its variants diverged, so that it adds up to the unit's `steps`."""
    from .train import train_seed  # the engine is needed only here, not by `validate`

    results = []
    for group in stacks(cfg, todo, lockstep):
        done = 0

        def step(_: int) -> None:
            nonlocal done
            done += 1
            advance(1)

        if cfg.grid is not None:  # (point, variant) pairs, trained and named by their points
            from .gridtrain import train_points

            results += train_points(cfg, seed, group, on_step=step)
        else:
            results += train_seed(cfg, seed, [cfg.clipping[i] for i in group], group, on_step=step)
        advance(steps_of(cfg, group) - done)
    return results


def encoded_unit(cfg, config: str, seed: int, todo: Sequence, lockstep: bool = True,
                 advance: Callable[[int], None] = lambda n: None) -> list[tuple[str, list[tuple[str, bytes]]]]:
    """train_unit, its runs encoded as the files the store writes: (run id, [(file name, bytes)])
    each. What an executor runs: the formatting of every number is done where the run was
    trained, in parallel, and the one writer only puts bytes on disk (store.write_files)."""
    from .store import run_files

    return [(r.run_id, run_files(r, config)) for r in train_unit(cfg, seed, todo, lockstep, advance)]


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


class InlineExecutor:
    """Units in this process, one at a time, each run when its result is asked for: the writer
    writes a unit's runs before the next starts, so Ctrl-C keeps all but the one in progress."""

    def __init__(self, advance: Callable[[int], None] = lambda n: None) -> None:
        self._advance = advance
        self._calls: dict[Future, tuple] = {}

    def submit(self, fn: Callable, *args: Any) -> Future:
        fut: Future = Future()
        self._calls[fut] = (fn, args)
        return fut

    def start(self) -> None:
        pass  # each unit starts when its result is asked for

    def as_completed(self, futures: Iterable[Future]) -> Iterator[Future]:
        pending = list(futures)[::-1]
        del futures  # the caller's list: each result is to be freed once written
        while pending:
            fut = pending.pop()
            fn, args = self._calls.pop(fut)
            if fut.set_running_or_notify_cancel():
                try:
                    fut.set_result(fn(*args, advance=self._advance))
                except Exception as exc:
                    fut.set_exception(exc)
            yield fut

    def unreported(self, fut: Future, steps: int) -> int:
        return 0  # train_unit tells every step, and the ones a diverged stack skipped

    def shutdown(self, cancel: bool = False) -> None:
        for fut in self._calls:
            fut.cancel()
        self._calls.clear()


class Lost(Exception):
    """A worker process died without reporting (kill -9, the OOM killer) while running
    `future`'s unit (None: between units)."""

    def __init__(self, future: Future | None, exitcode: int) -> None:
        super().__init__(f"a worker process died (exit code {exitcode})")
        self.future, self.exitcode = future, exitcode


def _worker(tasks, conn, inherited, parent: int) -> None:
    # Ctrl-C reaches the whole process group; the parent decides and sends SIGTERM, which
    # ends a worker at once: it writes nothing, so there is no write to finish.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for c in inherited:  # the parent's ends and the other workers' pipes, copied by the fork:
        c.close()  # only then does a worker's death close its pipe for the parent (EOF)

    def watch() -> None:
        """Exit once the parent is gone (kill -9, the OOM killer), wherever this process waits:
        between steps, for a task, or sending a result nobody reads. Such a worker would hold
        the experiment's lock, inherited at fork, from the `gradlab` that resumes it."""
        while os.getppid() == parent:
            time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, name="gradlab-parent-watch", daemon=True).start()
    limit_blas_threads()
    pending = 0  # `parent` is the pid the parent passed: it may die before this runs

    def advance(n: int) -> None:
        nonlocal pending
        if os.getppid() != parent:  # the parent was killed (kill -9, the OOM killer): stop too
            os._exit(1)  # nobody is left to take the result
        pending += n
        if pending >= _FLUSH_EVERY:
            conn.send(("steps", pending))
            pending = 0

    def next_task():
        """The next (key, fn, args), or None: no more, or the parent is gone. The parent's queue
        feeder thread may die before it has flushed every task: never wait for one forever."""
        while os.getppid() == parent:
            try:
                return tasks.get(timeout=0.5)
            except queue.Empty:
                continue
        return None

    while (item := next_task()) is not None:
        key, fn, args = item
        conn.send(("start", key))  # so that the parent can name a lost unit
        try:
            result = fn(*args, advance=advance)
        except UserError as exc:  # whole across the pipe (UserError pickles itself)
            conn.send(("error", (key, exc)))
            continue
        except Exception as exc:  # a bug: the parent raises it with this traceback
            conn.send(("error", (key, RuntimeError(f"a worker failed: {exc!r}\n{traceback.format_exc()}"))))
            continue
        if pending:
            conn.send(("steps", pending))
            pending = 0
        conn.send(("done", (key, result)))


class ForkPool:
    """`workers` forked processes taking units from a queue; each sends its progress and results
    back over a pipe of its own. Its own, not a queue shared by all: a result is large (a unit's
    files), and a worker killed in the middle of sending one leaves half a message, which on a
    shared queue would stop the parent mid-read for good, and the other workers at its lock.
    On its own pipe the parent reads the cut as the end of that worker. A worker that dies is
    noticed within 0.2 s, even while the others keep reporting, and raised as Lost naming its
    unit; a parent that dies is noticed by its workers within 0.2 s, and they exit."""

    def __init__(self, workers: int, advance: Callable[[int], None] = lambda n: None) -> None:
        ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
        self._ctx, self._workers, self._advance = ctx, workers, advance
        self._tasks = ctx.Queue()
        self._futures: dict[int, Future] = {}  # key -> the future of a unit not yet done
        self._submitted = 0
        self._procs: list = []
        self._conns: dict = {}  # the open end of each worker's pipe -> the worker's index
        self._working: dict[int, int] = {}  # worker index -> the key of the unit it runs

    def submit(self, fn: Callable, *args: Any) -> Future:
        fut: Future = Future()
        key = self._submitted
        self._submitted += 1
        self._futures[key] = fut
        self._tasks.put((key, fn, args))
        return fut

    def start(self) -> None:
        """Fork the workers (once every unit is submitted: each stops at the end of the queue)."""
        for _ in range(self._workers):
            self._tasks.put(None)
        pipes = [self._ctx.Pipe(duplex=False) for _ in range(self._workers)]  # (parent's end, worker's)
        ends = [c for pair in pipes for c in pair]
        for _, mine in pipes:
            proc = self._ctx.Process(target=_worker, args=(self._tasks, mine, [c for c in ends if c is not mine],
                                                           os.getpid()), daemon=True)
            proc.start()
            self._procs.append(proc)
        for i, (theirs, mine) in enumerate(pipes):
            mine.close()
            self._conns[theirs] = i

    def _take(self, who: int, kind: str, payload) -> Future | None:
        if kind == "steps":
            self._advance(payload)
            return None
        if kind == "start":
            self._working[who] = payload
            return None
        key, value = payload
        self._working.pop(who, None)
        fut = self._futures.pop(key)  # done: its result is the writer's alone, freed once written
        fut.set_running_or_notify_cancel()
        if kind == "done":
            fut.set_result(value)
        else:
            fut.set_exception(value)
        return fut

    def _read(self, conns, waiting: set) -> list[Future]:
        """One message from each of `conns` (ready to read); the futures of `waiting` it finished."""
        done = []
        for conn in conns:
            try:
                msg = conn.recv()
            except (EOFError, OSError):  # the worker ended, or died (mid-message: OSError)
                who = self._conns.pop(conn)
                conn.close()
                self._procs[who].join(5)  # its pipe closes a moment before its exit code is there
                continue
            fut = self._take(self._conns[conn], *msg)
            if fut is not None and fut in waiting:
                waiting.discard(fut)
                done.append(fut)
        return done

    def as_completed(self, futures: Iterable[Future]) -> Iterator[Future]:
        from multiprocessing.connection import wait

        if not self._procs:
            self.start()
        waiting = set(futures)
        del futures  # the caller's list: each result is to be freed once written
        while waiting:
            yield from self._read(wait(list(self._conns), timeout=0.2), waiting)
            # Looked at every time, not only when the pipes are quiet: the other workers'
            # progress would otherwise hide a dead one until they had finished.
            dead = [i for i, p in enumerate(self._procs) if p.exitcode not in (None, 0)]
            if dead:
                while True:  # what the dead worker said last may still be in its pipe
                    ready = [c for c in list(self._conns) if c.poll(0)]
                    if not ready:
                        break
                    yield from self._read(ready, waiting)  # finished before the loss: kept
                key = self._working.get(dead[0])
                raise Lost(self._futures.get(key) if key is not None else None, self._procs[dead[0]].exitcode)
            if not self._conns and waiting:
                raise RuntimeError(f"the worker processes ended with {len(waiting)} unit(s) not done")

    def unreported(self, fut: Future, steps: int) -> int:
        return 0  # a worker flushes its count before it sends the result

    def shutdown(self, cancel: bool = False) -> None:
        for proc in self._procs:
            if cancel and proc.is_alive():
                proc.terminate()  # SIGTERM: a worker writes nothing, so it may stop anywhere
        for proc in self._procs:
            proc.join()
        for conn in self._conns:
            conn.close()
        self._conns = {}
        for fut in self._futures.values():
            fut.cancel()
