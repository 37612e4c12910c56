"""Running a reproduction: its configs as ordinary experiments under one folder, then its
analysis, then `reproduction.md`, the page that puts the paper's claim beside the numbers.

Every config is loaded (with the `--set` overrides) before anything trains, so a bad one is
refused with nothing written. The experiments resume like any other: a second call trains only
what is missing and analyses again.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Optional, Sequence

from .. import io
from ..errors import UserError
from .base import Context, Outcome, Reproduction

REPRODUCTIONS_DIR = "reproductions"


def papers_dir() -> Path:
    """configs/papers/ of the checkout gradlab is installed from (pip install -e .), else of the
    working directory: the configs are files a user reads and edits, not package data."""
    here = Path(__file__).resolve().parents[2] / "configs" / "papers"
    if here.is_dir():
        return here
    cwd = Path("configs") / "papers"
    if cwd.is_dir():
        return cwd
    raise UserError("configs/papers/ not found: reproductions run from a gradlab checkout "
                    "(git clone, then pip install -e .), or from a directory that has configs/papers/")


def config_paths(rep: Reproduction, configs_dir: Optional[Path] = None) -> dict[str, Path]:
    """config file stem -> path, in the reproduction's order."""
    where = papers_dir() if configs_dir is None else Path(configs_dir)
    return {Path(name).stem: where / name for name in rep.configs}


def load_configs(rep: Reproduction, sets: Sequence[str] = (), configs_dir: Optional[Path] = None) -> dict:
    """Each config as it will run; every problem is the loader's one-line UserError."""
    from ..config import load_config

    return {stem: load_config(path, tuple(sets)) for stem, path in config_paths(rep, configs_dir).items()}


def reproduction_root(rep: Reproduction, out: Path | str = "outputs") -> Path:
    return Path(out) / REPRODUCTIONS_DIR / rep.name


class _Counting:
    """Passes an experiment's progress on and remembers how many runs it trained."""

    def __init__(self, inner) -> None:
        self.inner, self.trained, self.reused = inner, 0, 0

    def start(self, total_steps: int, n_runs: int, n_skipped: int) -> None:
        self.trained, self.reused = n_runs, n_skipped
        self.inner.start(total_steps, n_runs, n_skipped)

    def advance(self, steps: int) -> None:
        self.inner.advance(steps)

    def note(self, text: str) -> None:
        self.inner.note(text)

    def warn(self, text: str) -> None:
        self.inner.warn(text)


def run_reproduction(rep: Reproduction, out: Path | str = "outputs", *, sets: Sequence[str] = (),
                     workers: Optional[int] = None, cluster: Optional[str] = None, force: bool = False,
                     progress: Optional[Callable[[str], object]] = None, plots: bool = True,
                     configs_dir: Optional[Path] = None) -> Path:
    """Train `rep`'s configs (what is not yet complete), analyse them and write
    `<out>/reproductions/<name>/reproduction.md` (and .json). Returns that folder.

    `progress(stem)` gives each experiment's gradlab.experiment.Progress (a context manager
    when it has __enter__: the CLI's bars); `plots` draws each experiment's own plots too.
    """
    from ..experiment import Progress, check_writable, run_experiment

    configs = load_configs(rep, sets, configs_dir)
    check_writable(Path(out))
    root = reproduction_root(rep, out)
    start = time.perf_counter()
    experiments, trained, reused = {}, 0, 0
    for stem, cfg in configs.items():
        shown = progress(stem) if progress is not None else Progress()
        counting = _Counting(shown)
        if hasattr(shown, "__enter__"):
            with shown:
                experiments[stem] = run_experiment(cfg, root, force=force, progress=counting, plots=plots,
                                                   workers=workers, cluster=cluster)
        else:
            experiments[stem] = run_experiment(cfg, root, force=force, progress=counting, plots=plots,
                                               workers=workers, cluster=cluster)
        trained, reused = trained + counting.trained, reused + counting.reused
    training = time.perf_counter() - start
    plots_dir = root / "plots"
    io.make_dir(plots_dir)
    ctx = Context(root=root, experiments=experiments, configs=configs, plots=plots_dir, workers=workers,
                  sets=tuple(sets))
    outcome = rep.analyse(ctx)
    if not isinstance(outcome, Outcome):
        raise TypeError(f"{rep.name}: analyse returned {type(outcome).__name__}, not an Outcome")
    seconds = time.perf_counter() - start
    record = {"name": rep.name, "verdict": outcome.verdict, "why": outcome.why, "sets": list(sets),
              "experiments": {stem: exp.name for stem, exp in experiments.items()},
              "runs_trained": trained, "runs_reused": reused,
              "seconds": round(seconds, 1), "training_seconds": round(training, 1)}
    io.write_text(root / "reproduction.md", page(rep, outcome, record, configs_dir))
    io.write_json(root / "reproduction.json", record)
    return root


def command(rep: Reproduction, sets: Sequence[str] = ()) -> str:
    return " ".join(["gradlab reproduce", rep.name, *(f"--set {s}" for s in sets)])


def page(rep: Reproduction, outcome: Outcome, record: dict, configs_dir: Optional[Path] = None) -> str:
    """reproduction.md: the claim, what gradlab measured, the verdict, how it was run."""
    from ..environment import describe, for_training

    configs = ", ".join(f"`configs/papers/{name}` (experiment `{record['experiments'][Path(name).stem]}/`)"
                        for name in rep.configs)
    took = (f"{record['seconds']:.0f} s in this invocation ({record['runs_trained']} run(s) trained, "
            f"{record['runs_reused']} already complete)")
    overrides = (f"\n- Overrides: {', '.join('`--set ' + s + '`' for s in record['sets'])} (not the shipped "
                 f"setting: the paper comparison is for the configs as shipped)" if record["sets"] else "")
    return (f"# {rep.title}\n\n{rep.paper}\n\n## The paper's claim\n\n{rep.claim.strip()}\n\n"
            f"## What gradlab measured\n\n{outcome.body.strip()}\n\n"
            f"## Verdict: {outcome.verdict}\n\n{outcome.why.strip()}\n\n"
            f"## How it was run\n\n- Command: `{command(rep, record['sets'])}`\n- Configs: {configs}{overrides}\n"
            f"- Time: {took}; a fresh run takes about {rep.minutes:g} min on 2 cores\n"
            f"- Environment: {describe(for_training())}\n")
