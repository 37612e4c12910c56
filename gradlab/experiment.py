"""An experiment: plan its runs, skip the complete ones, train the rest, write it all.

Above the run store (`store.py`: the directory's layout, what makes a run complete, the
files derived from the runs) and the training (`train.py`), below the CLI. Its names from
the store are re-exported here, where notebooks and older scripts found them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from . import environment, io
from .config import ExperimentConfig, config_hash, dump_yaml, experiment_dir, run_id  # noqa: F401
from .config.grid import grid_points, planned
from .errors import UserError, clip_path
from .store import (_check_run, check_config, check_run, check_writable, collect_reports, complete_runs,  # noqa: F401
                    config_hash_of, experiment_lock, find_experiment, last_written, planned_runs, rule_problem,
                    run_dir, write_run, write_summary)


@dataclass
class SeedPlan:
    """The runs of one seed that train as one stack: indices into cfg.clipping; in a grid
    experiment (point index, index into that point's clipping list) pairs, of the points
    that share the stack (gradlab.config.grid.stack_key)."""

    seed: int
    todo: list  # still to compute
    done: list = field(default_factory=list)


class Progress:
    """What the experiment tells its caller while it runs; the CLI draws it, the API ignores it."""

    def start(self, total_steps: int, n_runs: int, n_skipped: int) -> None: ...
    def advance(self, steps: int) -> None: ...
    def note(self, text: str) -> None: ...
    def warn(self, text: str) -> None: ...


def plan(cfg: ExperimentConfig, exp: Path, force: bool = False,
         warn: Callable[[str], None] = lambda text: None) -> list[SeedPlan]:
    """Which runs of each seed are complete and which are to compute; damaged runs are redone.
    Complete runs computed in another numerical environment are kept, with one warning that
    names them: their digits are not this machine's, and only --force makes them so."""
    plans, kept, h = {}, [], config_hash(cfg)
    stacks = _stacks(cfg)
    for r in planned(cfg):
        p = plans.setdefault((stacks[r.point_index], r.seed), SeedPlan(r.seed, []))
        rid = r.run_id
        state, why, rep = ("missing", "", None) if force else _check_run(exp, rid, h)
        if state == "damaged":
            warn(f"run {rid}: its files are damaged ({why}); computing it again")
        (p.done if state == "complete" else p.todo).append(
            r.variant_index if cfg.grid is None else (r.point_index, r.variant_index))
        if rep is not None:
            kept.append(rep)
    if kept:
        text = environment.foreign_warning(kept, environment.for_training())
        if text:
            warn(text)
    return _split(cfg, list(plans.values()))


def _stacks(cfg: ExperimentConfig) -> list:
    """Each grid point's stack: points differing only in hyperparameters share one (train_seed's
    `configs` gives each variant its own)."""
    if cfg.grid is None:
        return [0]
    from .config.grid import stack_key

    return [stack_key(p) for _, p in grid_points(cfg)]


def _split(cfg: ExperimentConfig, plans: list[SeedPlan]) -> list[SeedPlan]:
    """A grid's stacks cut between points: into at least as many stacks as there are cores
    (one large stack on one core would leave the others idle), and none larger than a core's
    share of 80% of the memory available (a worker per core trains one at a time)."""
    if cfg.grid is None:
        return plans
    from .config import available_memory_bytes, estimate_memory_bytes

    points = grid_points(cfg)
    cores = os.cpu_count() or 1
    budget = 0.8 * available_memory_bytes() / cores
    pieces = -(-cores // max(1, len(plans)))
    out = []
    for p in plans:
        ids = sorted({k for k, _ in p.todo + p.done})
        size = -(-len(ids) // pieces)
        chunks, chunk, need = [], [], 0.0
        for k in ids:
            each = estimate_memory_bytes(points[k][1])
            if chunk and (len(chunk) >= size or need + each > budget):
                chunks.append(chunk)
                chunk, need = [], 0.0
            chunk.append(k)
            need += each
        chunks.append(chunk)
        for chunk in chunks:
            out.append(SeedPlan(p.seed, [t for t in p.todo if t[0] in chunk], [t for t in p.done if t[0] in chunk]))
    return out


def prepare(cfg: ExperimentConfig, out: Path | str) -> Path:
    """Create (or reuse) the experiment directory and write its resolved config."""
    check_writable(Path(out))
    exp = experiment_dir(cfg, out)
    # The deepest file the experiment will write: a path too long is refused now, not mid-run.
    longest = max((r.run_id for r in planned(cfg)), key=len)
    why = io.path_problem(run_dir(exp, longest) / ".layer_norms.csv.12345678.tmp")
    if why:
        raise UserError(f"{clip_path(out)}: too deep for this experiment's files ({why})", key="--out")
    text = dump_yaml(cfg)
    cfg_path = exp / "config.yaml"
    if not cfg_path.is_file() or cfg_path.read_text(encoding="utf-8") != text:
        io.write_text(cfg_path, text)
    return exp


def default_workers(cfg: ExperimentConfig, n_units: int) -> int:
    """One process per core, but no more than the units to compute or than memory holds."""
    from .config import available_memory_bytes, estimate_memory_bytes

    fits = max(1, int(0.8 * available_memory_bytes() // max(1, estimate_memory_bytes(cfg))))
    return max(1, min(os.cpu_count() or 1, n_units, fits))


def run_experiment(cfg: ExperimentConfig, out: Path | str = "outputs", *, force: bool = False,
                   progress: Optional[Progress] = None, plots: bool = True,
                   workers: Optional[int] = None, lockstep: bool = True, cluster: Optional[str] = None) -> Path:
    """Train every run of `cfg` not yet complete under `out`; write summary, report, plots.

    The runs train as units (executors.units: a seed's variants, stacked) in `workers`
    processes (default: one per core, fewer when memory says so), or on the Dask cluster
    `cluster` (`local:N` or a scheduler's address); this process writes every result.
    Returns the experiment directory. Ctrl-C (KeyboardInterrupt) propagates after the runs
    finished so far are on disk.
    """
    from .executors import units

    progress = progress or Progress()
    remote = None
    if cluster is not None:
        from .cluster import DaskExecutor

        check_writable(Path(out))  # a bad --out is refused before a cluster is started for it
        remote = DaskExecutor(cluster, progress.advance)  # first: an unreachable scheduler writes nothing
    try:
        exp = prepare(cfg, out)
        with experiment_lock(exp):
            plans = [p for p in plan(cfg, exp, force, progress.warn) if p.todo]
            todo_runs = sum(len(p.todo) for p in plans)
            if remote is not None:
                if not remote.workers and plans:
                    progress.warn(f"the Dask scheduler at {remote.name} has no workers yet: the runs wait for some")
                work = units(cfg, plans, lockstep, max(1, remote.workers))
                executor, note = remote, f"{len(work)} unit(s) on the Dask cluster {remote.name}"
            else:
                n = workers or default_workers(cfg, len(units(cfg, plans, lockstep, os.cpu_count() or 1)))
                work = units(cfg, plans, lockstep, n)
                n = min(n, max(1, len(work)))
                executor = _local_executor(n, progress.advance)
                note = f"{len(work)} unit(s) on {n} worker processes" if n > 1 else ""
            progress.start(sum(u.steps for u in work), todo_runs, len(planned(cfg)) - todo_runs)
            try:
                run_units(cfg, exp, work, executor, progress, lockstep, note,
                          while_training=preload_plotting if plots else None)
            finally:
                todo = {(p.seed, t) for p in plans for t in p.todo}
                fresh = {r.run_id for r in planned(cfg)
                         if (r.seed, r.variant_index if cfg.grid is None else (r.point_index, r.variant_index)) in todo}
                reports = write_summary(exp, warn=progress.warn, fresh=fresh)
            finish(exp, plots=plots, only_stale=not force, reports=reports)
    finally:
        if remote is not None:
            remote.shutdown(cancel=True)  # closed already unless something failed before the units ran
    return exp


def _local_executor(n: int, advance: Callable[[int], None]):
    from .executors import ForkPool, InlineExecutor

    return ForkPool(n, advance) if n > 1 else InlineExecutor(advance)


def run_units(cfg: ExperimentConfig, exp: Path, work: list, executor, progress: Progress, lockstep: bool = True,
              note: str = "", while_training: Optional[Callable[[], None]] = None) -> None:
    """Hand every unit to `executor` and write each unit's runs as its result arrives: this
    process is the only writer (atomic writes, under the experiment's lock, taken by the
    caller). On any way out but success (Ctrl-C, SIGTERM, a lost worker, an error) the
    executor's pending units are cancelled and its workers stopped; what was written stays."""
    from .errors import WorkerLost
    from .executors import Lost, encoded_unit
    from .store import write_files

    h = config_hash(cfg)
    ok = False
    try:
        futures = {executor.submit(encoded_unit, cfg, h, u.seed, u.todo, lockstep): u for u in work}
        executor.start()
        if while_training is not None and futures:
            while_training()  # the workers are forked (or elsewhere): the parent mostly waits now
        if note:
            progress.note(note)
        try:
            for fut in executor.as_completed(list(futures)):
                unit = futures.pop(fut)  # its result, once written, is nobody's to keep
                for rid, files in fut.result():
                    write_files(exp, rid, files)
                rest = executor.unreported(fut, unit.steps)
                if rest:
                    progress.advance(rest)
        except Lost as e:
            unit = futures.get(e.future)  # not yet yielded, so still there
            raise WorkerLost(unit.seed if unit else None, e.exitcode) from None
        ok = True
    finally:
        executor.shutdown(cancel=not ok)


def preload_plotting() -> None:
    """Import matplotlib in a thread of this process while the worker processes train: the
    parent only waits on their queue then, and the import (0.4 s or more) is otherwise the
    first thing the plots wait for. Started after the workers are forked, so that no child
    inherits a half-done import; the drawing processes are forked later, from a parent whose
    imports are done or under way under Python's import locks."""
    import threading

    def load() -> None:
        import matplotlib.backends.backend_agg  # noqa: F401
        import matplotlib.figure  # noqa: F401
        import matplotlib.font_manager  # noqa: F401  (reads the font cache)

    global _PRELOAD
    _PRELOAD = threading.Thread(target=load, name="gradlab-preload-matplotlib", daemon=True)
    _PRELOAD.start()


_PRELOAD = None  # the thread of preload_plotting; joined before the drawing processes are forked


def finish(exp: Path, plots: bool = True, only_stale: bool = False,
           reports: Optional[list[dict]] = None) -> list[Path]:
    """report.md and (unless plots=False) the plots, from the directory alone."""
    from .report import write_report

    drawn: list[Path] = []
    if plots:
        from .plots import draw_experiment

        if _PRELOAD is not None:  # a fork amid its import would leave a child a held import lock
            _PRELOAD.join()

        # One process per core: the training that may have run before has finished with them.
        drawn = draw_experiment(exp, only_stale=only_stale, reports=reports, workers=os.cpu_count() or 1)
    write_report(exp, reports)
    return drawn

