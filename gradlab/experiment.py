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
from .config import ExperimentConfig, config_hash, dump_yaml, experiment_dir, run_id
from .errors import UserError, clip_path
from .store import (_check_run, check_config, check_run, check_writable, collect_reports, complete_runs,  # noqa: F401
                    config_hash_of, experiment_lock, find_experiment, last_written, planned_runs, rule_problem,
                    run_dir, write_run, write_summary)


@dataclass
class SeedPlan:
    seed: int
    todo: list[int]  # indices into cfg.clipping still to compute
    done: list[int] = field(default_factory=list)


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
    plans, kept, h = [], [], config_hash(cfg)
    for seed in cfg.seeds:
        p = SeedPlan(seed, [])
        for i, c in enumerate(cfg.clipping):
            state, why, rep = ("missing", "", None) if force else _check_run(exp, run_id(c, seed), h)
            if state == "damaged":
                warn(f"run {run_id(c, seed)}: its files are damaged ({why}); computing it again")
            (p.done if state == "complete" else p.todo).append(i)
            if rep is not None:
                kept.append(rep)
        plans.append(p)
    if kept:
        text = environment.foreign_warning(kept, environment.for_training())
        if text:
            warn(text)
    return plans


def prepare(cfg: ExperimentConfig, out: Path | str) -> Path:
    """Create (or reuse) the experiment directory and write its resolved config."""
    check_writable(Path(out))
    exp = experiment_dir(cfg, out)
    # The deepest file the experiment will write: a path too long is refused now, not mid-run.
    longest = max((run_id(c, s) for c in cfg.clipping for s in cfg.seeds), key=len)
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
            progress.start(sum(u.steps for u in work), todo_runs, len(cfg.clipping) * len(cfg.seeds) - todo_runs)
            try:
                run_units(cfg, exp, work, executor, progress, lockstep, note,
                          while_training=preload_plotting if plots else None)
            finally:
                fresh = {run_id(cfg.clipping[i], p.seed) for p in plans for i in p.todo}
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

