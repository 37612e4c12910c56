"""The plots of one experiment, drawn from its directory alone (never from a live process).

`draw_experiment` is the entry point. The package, by concern:

    load        the complete runs, as gradlab.experiment validated them, and the config
    describe    the words: a config's one-line description, a run's outcome, chance levels
    style       what every figure shares: colours, labels, axes helpers, saving a PNG
    over_steps  metrics over training steps, one panel per seed (grad_norm, loss, accuracy)
    heatmaps    one run's per-parameter gradient norms, parameter x step
    flow        one recurrent run's gradient through time
    multiples   a sweep's per-run figures as small multiples: one figure per seed, a panel per variant
    sweep       a threshold sweep: its clipping families and their runs by threshold
    sweep_plots a sweep's figures against the threshold
    grid        a grid experiment's figures: which stability maps and sensitivity figures
    grid_plots  drawing them (the numbers are gradlab.stability's, as in report.md's table)
    figures     which figures an experiment has, what each reads, which are out of date

NumPy and matplotlib are imported by the drawing modules only: deciding that nothing is to
be redrawn (a rerun of a complete experiment) must not load them.
"""

from __future__ import annotations

import multiprocessing as mp
import signal
from pathlib import Path
from typing import Optional

from gradlab.io import make_dir

from . import figures
from .load import Experiment, Run, load_experiment

__all__ = ["draw_experiment", "load_experiment", "Experiment", "Run"]

_WORK: Optional[tuple[figures.Plan, list[figures.Figure]]] = None  # inherited by the forked processes


def draw_experiment(exp_dir: Path, only_stale: bool = False, only: Optional[set[str]] = None,
                    reports: Optional[list[dict]] = None, workers: int = 1) -> list[Path]:
    """(Re)draw the plots of the experiment in `exp_dir` into `exp_dir/plots/`.

    The complete runs are drawn (those `experiment.collect_reports` accepts; `reports`: its
    answer, when the caller has it, saves validating every run again); with `only`, only the
    runs of those ids. With `only_stale`, a figure whose inputs are unchanged since it was
    drawn is kept (figures.py says what its inputs are). `workers` > 1 draws in that many
    forked processes. Returns the paths written; [] when no run is complete yet.
    """
    exp = load_experiment(Path(exp_dir), only, reports)
    if not exp.runs:
        return []
    p = figures.plan(exp)
    out = exp.path / "plots"
    stamps = figures.read_stamps(out) if out.is_dir() else {}
    wanted = figures.fingerprints(p)
    todo = [f for f in p.figures if not (only_stale and _fresh(out / f.name, stamps.get(f.name), wanted[f.name]))]
    if not todo:
        return []
    # Where the figures go, before any is drawn: a folder that cannot be made (a read-only
    # file system) is reported at once, not after importing matplotlib and drawing a figure.
    make_dir(out)
    # One combined sweep.png was drawn by older versions; a redraw should not leave it behind.
    (out / "sweep.png").unlink(missing_ok=True)
    if only is None and out.is_dir():
        # Nor the per-run figures of a sweep drawn before its small multiples (or the other way
        # round): report.md embeds every PNG it finds, and both layouts at once is what the
        # small multiples are there to avoid.
        planned = {f.name for f in p.figures}
        for old in out.glob("*.png"):
            if figures.is_per_run_or_seed(old.name) and old.name not in planned:
                old.unlink(missing_ok=True)
    drawn = _draw_all(p, todo, workers)
    kept = {f.name: stamps[f.name] for f in p.figures if f not in todo and f.name in stamps}
    for f, path in zip(todo, drawn):
        if path is None:  # its run has nothing to show: not tried again until its inputs change
            kept[f.name] = _EMPTY + wanted[f.name]
        elif path.is_file():  # (a test's stand-in may draw nothing)
            kept[f.name] = wanted[f.name]
    if kept or out.is_dir():
        figures.write_stamps(out, kept)
    return [path for path in drawn if path is not None]


_EMPTY = "empty:"


def _fresh(path: Path, stamp: Optional[str], wanted: str) -> bool:
    """Drawn (or found to have nothing to show) from the inputs it has now."""
    return stamp == _EMPTY + wanted or (stamp == wanted and path.is_file())


def _draw_all(p: figures.Plan, todo: list[figures.Figure], workers: int) -> list[Optional[Path]]:
    """Each figure of `todo`, in that order, serially or in `workers` forked processes.

    Forked, not spawned: the processes inherit matplotlib already imported (0.4 s or more a
    process otherwise) and the experiment already read, so that a task is only an index.
    A drawing process that dies (the out-of-memory killer) costs no figure: what it left
    undone is drawn here.
    """
    global _WORK
    workers = min(workers, len(todo))
    if workers <= 1 or "fork" not in mp.get_all_start_methods():
        return [figures.draw(p, f) for f in todo]
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    import matplotlib.figure  # noqa: F401  (loaded once, inherited by every process)

    p.exp.colors  # noqa: B018  (computed once, inherited)
    if any(f.run_id is None and f.seed is None for f in todo):
        for run in p.exp.runs:
            run.metrics  # noqa: B018  (every overview figure reads every run)
    _WORK = p, todo
    # The longest first, so that no process is left drawing a long one while the other has
    # finished (ties in the plan's order).
    order = sorted(range(len(todo)), key=lambda i: -figures.expected_cost(todo[i]))
    result: dict[int, Optional[Path]] = {}
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("fork"), initializer=_quiet_signals)
    try:
        futures = {pool.submit(_draw_index, i): i for i in order}
        for future, i in futures.items():
            try:
                result[i] = future.result()
            except BrokenProcessPool:
                break
    finally:
        pool.shutdown(wait=True, cancel_futures=True)  # on Ctrl-C: each finishes its figure, no more
        _WORK = None
    return [result[i] if i in result else figures.draw(p, todo[i]) for i in range(len(todo))]


def _quiet_signals() -> None:
    # The parent decides on Ctrl-C and ends the pool; a drawing process must not run the
    # CLI's own handlers (they would report a termination the parent already reports).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _draw_index(i: int) -> Optional[Path]:
    assert _WORK is not None
    p, todo = _WORK
    return figures.draw(p, todo[i])
