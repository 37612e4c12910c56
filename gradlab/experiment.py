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
from .config.grid import grid_points, planned, point_label
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


def steps_to_compute(cfg: ExperimentConfig, plans: list[SeedPlan], lockstep: bool) -> int:
    points = grid_points(cfg)  # a stack's points share their number of steps
    return sum(points[p.todo[0][0] if cfg.grid is not None else 0][1].train.steps * (1 if lockstep else len(p.todo))
               for p in plans if p.todo)


def default_workers(cfg: ExperimentConfig, n_seeds: int) -> int:
    """One process per core, but no more than the seeds to compute or than memory holds."""
    from .config import available_memory_bytes, estimate_memory_bytes

    fits = max(1, int(0.8 * available_memory_bytes() // max(1, estimate_memory_bytes(cfg))))
    return max(1, min(os.cpu_count() or 1, n_seeds, fits))


def run_experiment(cfg: ExperimentConfig, out: Path | str = "outputs", *, force: bool = False,
                   progress: Optional[Progress] = None, plots: bool = True,
                   workers: Optional[int] = None, lockstep: bool = True) -> Path:
    """Train every run of `cfg` not yet complete under `out`; write summary, report, plots.

    Seeds run in `workers` processes (default: one per core, fewer when memory says so);
    all variants of a seed advance in lockstep. Returns the experiment directory.
    Ctrl-C (KeyboardInterrupt) propagates after the runs finished so far are on disk.
    """
    progress = progress or Progress()
    exp = prepare(cfg, out)
    with experiment_lock(exp):
        plans = [p for p in plan(cfg, exp, force, progress.warn) if p.todo]
        todo_runs = sum(len(p.todo) for p in plans)
        progress.start(steps_to_compute(cfg, plans, lockstep), todo_runs, len(planned(cfg)) - todo_runs)
        n = min(workers or default_workers(cfg, len(plans)), max(1, len(plans)))
        try:
            if n > 1:
                from .workers import train_in_workers

                train_in_workers(cfg, exp, plans, n, lockstep, progress,
                                 while_training=preload_plotting if plots else None)
            else:
                from .workers import train_plan

                for p in plans:
                    progress.note(f"{_where(cfg, p)}seed {p.seed}: {len(p.todo)} run(s)")
                    train_plan(cfg, exp, p.seed, p.todo, lockstep, progress.advance)
        finally:
            todo = {(p.seed, t) for p in plans for t in p.todo}
            fresh = {r.run_id for r in planned(cfg)
                     if (r.seed, r.variant_index if cfg.grid is None else (r.point_index, r.variant_index)) in todo}
            reports = write_summary(exp, warn=progress.warn, fresh=fresh)
        finish(exp, plots=plots, only_stale=not force, reports=reports)
    return exp


def _where(cfg: ExperimentConfig, p: SeedPlan) -> str:
    """A stack's grid point(s), for the progress bar: `lr=0.1 `, `3 grid points `."""
    if cfg.grid is None:
        return ""
    ks = list(dict.fromkeys(k for k, _ in p.todo))
    return f"{point_label(grid_points(cfg)[ks[0]][0])} " if len(ks) == 1 else f"{len(ks)} grid points, "


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

