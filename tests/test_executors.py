"""The executor seam: units (a seed's variants, split when workers would idle), the local
executors, and the one writer. What a unit computes does not depend on how the work was cut."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradlab.config import load_config
from gradlab.executors import ForkPool, InlineExecutor, units
from gradlab.experiment import Progress, SeedPlan, run_experiment

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"


def one_seed(steps: int = 20):
    return load_config(QUICKSTART, [f"train.steps={steps}", "model.depth=6"], [0],
                       sweep={"method": "norm", "thresholds": [0.5, 1.0, 5.0], "baseline": True})


plans_st = st.lists(st.tuples(st.integers(0, 50), st.lists(st.integers(0, 9), min_size=1, max_size=8, unique=True)),
                    min_size=1, max_size=5, unique_by=lambda p: p[0])


CFG = one_seed()


@settings(max_examples=200, deadline=None)
@given(plans=plans_st, workers=st.integers(1, 12), lockstep=st.booleans())
def test_units_cover_every_variant_once_and_fill_the_workers(plans, workers, lockstep):
    cfg = CFG
    seed_plans = [SeedPlan(seed, todo) for seed, todo in plans]
    work = units(cfg, seed_plans, lockstep, workers)
    for p in seed_plans:  # each variant of each seed in exactly one unit of that seed
        got = sorted(i for u in work if u.seed == p.seed for i in u.todo)
        assert got == sorted(p.todo)
    stacks = len(seed_plans) if lockstep else sum(len(p.todo) for p in seed_plans)
    total = sum(len(p.todo) for p in seed_plans)
    # split only while workers would idle, and then as far as there are variants to split
    assert len(work) == max(stacks, min(workers, total))
    assert all(u.steps == cfg.train.steps * (1 if lockstep else len(u.todo)) for u in work)


def test_one_seed_on_two_workers_is_two_units_with_the_bytes_of_one(tmp_path):
    cfg = one_seed()
    notes = []

    class Notes(Progress):
        def note(self, text):
            notes.append(text)

    outs = {}
    for name, workers in (("one", 1), ("two", 2)):
        exp = run_experiment(cfg, tmp_path / name, plots=False, workers=workers, progress=Notes())
        outs[name] = {str(p.relative_to(exp)): p.read_bytes() for p in sorted((exp / "runs").rglob("*")) if p.is_file()}
    assert notes == ["2 unit(s) on 2 worker processes"]
    assert len(outs["one"]) == 4 * 3 and outs["two"] == outs["one"]


def _twice(x, advance=lambda n: None):
    advance(3)
    return 2 * x


def _fail(x, advance=lambda n: None):
    raise ValueError(f"no {x}")


def test_inline_runs_each_unit_only_when_its_result_is_asked_for():
    """So that the writer writes a unit's runs before the next unit starts: Ctrl-C then loses
    at most the unit in progress."""
    ran, steps = [], []

    def record(x, advance):
        ran.append(x)
        advance(1)
        return x

    ex = InlineExecutor(steps.append)
    futures = [ex.submit(record, k) for k in range(3)]
    assert ran == []
    for k, fut in enumerate(ex.as_completed(futures)):
        assert fut.result() == k and ran == list(range(k + 1))
    assert steps == [1, 1, 1]


def test_the_fork_pool_returns_results_progress_and_errors():
    steps = []
    pool = ForkPool(2, steps.append)
    futures = [pool.submit(_twice, k) for k in range(5)] + [pool.submit(_fail, 7)]
    pool.start()
    try:
        done = {futures.index(f): f for f in pool.as_completed(futures)}
    finally:
        pool.shutdown()
    assert sorted(done) == list(range(6))
    assert [done[k].result() for k in range(5)] == [0, 2, 4, 6, 8]
    with pytest.raises(RuntimeError, match="a worker failed: ValueError\\('no 7'\\)"):
        done[5].result()
    assert sum(steps) == 5 * 3 + 0  # flushed when each unit ends



def _big(n, advance=lambda n: None):
    return b"x" * n


def test_a_worker_killed_in_the_middle_of_sending_its_result_is_lost_not_a_hang():
    """A result is large; a worker killed while it is sent leaves half a message in its pipe.
    The parent must read that as the worker's end and say which unit was lost, not wait for
    the rest forever."""
    import os
    import signal
    import time

    from gradlab.executors import Lost

    pool = ForkPool(1)
    fut = pool.submit(_big, 64 * 2**20)  # far beyond a pipe's buffer: the send blocks half-way
    pool.start()
    (proc,) = pool._procs
    (conn,) = pool._conns
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not conn.poll(0):
        time.sleep(0.01)  # the "start" message is in the pipe; the result is being made
    time.sleep(0.5)  # and sent: its first bytes fill the pipe, the rest waits
    os.kill(proc.pid, signal.SIGKILL)
    old = signal.signal(signal.SIGALRM, lambda *a: (_ for _ in ()).throw(TimeoutError("the parent hung")))
    signal.alarm(20)
    try:
        with pytest.raises(Lost) as lost:
            for _ in pool.as_completed([fut]):
                pass
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        pool.shutdown(cancel=True)
    assert lost.value.future is fut and lost.value.exitcode == -signal.SIGKILL
