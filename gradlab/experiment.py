"""An experiment on disk: plan its runs, skip the complete ones, train the rest, write it all.

Layout (SPEC.md): outputs/<name>-<hash8>/{config.yaml, summary.json, report.md,
runs/<run_id>/{metrics.csv, layer_norms.csv, report.json}, plots/*.png}. A run is complete
when its report.json exists (written last); anything else in a run folder is redone.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

from . import io
from .config import ExperimentConfig, dump_yaml, experiment_dir, run_id
from .errors import UserError


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


def run_dir(exp: Path, rid: str) -> Path:
    return exp / "runs" / rid


def run_state(exp: Path, rid: str) -> str:
    """`complete`, `missing` (never finished: no report.json) or `damaged` (its files do not
    agree: an unreadable report.json, a metrics.csv cut short, from a disk or a hand)."""
    d = run_dir(exp, rid)
    if not (d / "report.json").is_file():
        return "missing"
    try:
        rep = io.read_json(d / "report.json")
        rows = int(rep["steps_completed"]) + (1 if rep["diverged"] else 0)
        ok = rep["run_id"] == rid and all(
            _data_lines(d / name) == rows for name in ("metrics.csv", "layer_norms.csv"))
    except (OSError, ValueError, KeyError, TypeError):
        ok = False
    return "complete" if ok else "damaged"


def _data_lines(path: Path) -> int:
    """Complete data lines of a CSV (a last line without its newline was cut short)."""
    text = path.read_text(encoding="utf-8")
    return max(0, text.count("\n") - 1)


def is_complete(exp: Path, rid: str) -> bool:
    return run_state(exp, rid) == "complete"


def plan(cfg: ExperimentConfig, exp: Path, force: bool = False,
         warn: Callable[[str], None] = lambda text: None) -> list[SeedPlan]:
    """Which runs of each seed are complete and which are to compute; damaged runs are redone."""
    plans = []
    for seed in cfg.seeds:
        p = SeedPlan(seed, [])
        for i, c in enumerate(cfg.clipping):
            state = "missing" if force else run_state(exp, run_id(c, seed))
            if state == "damaged":
                warn(f"run {run_id(c, seed)}: its files are damaged (unreadable or cut short); computing it again")
            (p.done if state == "complete" else p.todo).append(i)
        plans.append(p)
    return plans


def check_writable(out: Path) -> None:
    """Refuse an --out that cannot hold results, before anything is written."""
    out = Path(out)
    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UserError(f"{probe} is a file, not a directory", key="--out")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"cannot write into {probe} (permission denied)", key="--out")


def prepare(cfg: ExperimentConfig, out: Path | str) -> Path:
    """Create (or reuse) the experiment directory and write its resolved config."""
    check_writable(Path(out))
    exp = experiment_dir(cfg, out)
    text = dump_yaml(cfg)
    cfg_path = exp / "config.yaml"
    if not cfg_path.is_file() or cfg_path.read_text(encoding="utf-8") != text:
        io.write_text(cfg_path, text)
    return exp


def write_run(exp: Path, result) -> None:
    """A run's three files; report.json last, since its presence marks the run complete."""
    d = run_dir(exp, result.run_id)
    for leftover in d.glob(".*.tmp"):  # from a process killed mid-write
        leftover.unlink(missing_ok=True)
    io.write_csv(d / "metrics.csv", result.columns, result.metrics_rows)
    io.write_csv(d / "layer_norms.csv", ["step", *result.param_names], result.layer_rows)
    if result.flow_rows:
        io.write_csv(d / "bptt_norms.csv", ["step", "layer", "t", "grad_norm"], result.flow_rows)
    io.write_json(d / "report.json", result.report())


def collect_reports(exp: Path) -> list[dict]:
    """Every complete run's report, in config order (seed, then variant)."""
    reports = []
    for path in sorted((exp / "runs").glob("*/report.json")):
        if run_state(exp, path.parent.name) == "complete":  # damaged ones are redone, not shown
            reports.append(io.read_json(path))
    return sorted(reports, key=lambda r: (r.get("seed", 0), r.get("variant_index", 0)))


def write_summary(exp: Path) -> list[dict]:
    reports = collect_reports(exp)
    io.write_json(exp / "summary.json", reports)
    return reports


def train_plan(cfg: ExperimentConfig, exp: Path, seed: int, todo: list[int], lockstep: bool = True,
               advance: Callable[[int], None] = lambda n: None) -> None:
    """Train the variants `todo` of one seed and write their runs. With lockstep (the
    default) they train as one stack; without, one after another (same numbers, slower)."""
    from .train import train_seed  # the engine is needed only here, not by `validate`

    groups = [todo] if lockstep else [[i] for i in todo]
    for group in groups:
        done = 0

        def step(_: int) -> None:
            nonlocal done
            done += 1
            advance(1)

        for r in train_seed(cfg, seed, [cfg.clipping[i] for i in group], group, on_step=step):
            write_run(exp, r)
        advance(cfg.train.steps - done)  # every variant diverged early: the rest is skipped


def steps_to_compute(cfg: ExperimentConfig, plans: list[SeedPlan], lockstep: bool) -> int:
    return sum(cfg.train.steps * (1 if lockstep else len(p.todo)) for p in plans if p.todo)


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
        progress.start(steps_to_compute(cfg, plans, lockstep), todo_runs,
                       len(cfg.clipping) * len(cfg.seeds) - todo_runs)
        n = min(workers or default_workers(cfg, len(plans)), max(1, len(plans)))
        try:
            if n > 1:
                from .workers import train_in_workers

                train_in_workers(cfg, exp, plans, n, lockstep, progress)
            else:
                for p in plans:
                    progress.note(f"seed {p.seed}: {len(p.todo)} run(s)")
                    train_plan(cfg, exp, p.seed, p.todo, lockstep, progress.advance)
        finally:
            reports = write_summary(exp)
        finish(exp, plots=plots, only_stale=not force, reports=reports)
    return exp


@contextmanager
def experiment_lock(exp: Path) -> Iterator[None]:
    """One gradlab process per experiment directory: a second one is refused, naming the first."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(exp / ".lock"))
    owner = exp / ".lock.owner"
    try:
        lock.acquire(timeout=0)
    except Timeout:
        try:
            pid = owner.read_text().strip()
        except OSError:
            pid = "unknown"
        raise UserError(f"in use by another gradlab process (pid {pid}); wait for it to finish or stop it",
                        file=str(exp)) from None
    try:
        io.write_text(owner, f"{os.getpid()}\n")
        for leftover in [*exp.glob(".*.tmp"), *exp.glob("*/.*.tmp"), *exp.glob("runs/*/.*.tmp")]:
            leftover.unlink(missing_ok=True)  # from a process killed mid-write
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()


def finish(exp: Path, plots: bool = True, only_stale: bool = False,
           reports: Optional[list[dict]] = None) -> list[Path]:
    """report.md and (unless plots=False) the plots, from the directory alone."""
    from .report import write_report

    drawn: list[Path] = []
    if plots:
        from .plots import draw_experiment

        drawn = draw_experiment(exp, only_stale=only_stale)
    write_report(exp, reports)
    return drawn


def find_experiment(path: Optional[Path], out: Path | str = "outputs") -> Path:
    """An experiment directory given on the command line, or the most recent under `out`."""
    if path is None:
        root = Path(out)
        cands = [d for d in root.glob("*/config.yaml")] if root.is_dir() else []
        if not cands:
            raise UserError(f"no experiment found under {root}/; run `gradlab run CONFIG` first",
                            file=str(root))
        return max(cands, key=lambda p: p.stat().st_mtime).parent
    path = Path(path)
    if not path.exists():
        raise UserError("no such experiment directory", file=str(path))
    if not path.is_dir():
        raise UserError("is a file; expected an experiment directory (outputs/<name>-<hash8>/)", file=str(path))
    if not (path / "config.yaml").is_file():
        raise UserError("not a gradlab experiment directory (no config.yaml)", file=str(path))
    return path
