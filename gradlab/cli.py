"""The `gradlab` command: a thin Typer layer that parses, calls the library and prints.

Start-up stays light: NumPy, pydantic, Rich's progress and matplotlib are imported inside the
commands that need them. Every user error leaves as one line on stderr and exit code 2;
Ctrl-C as exit 130 after the finished runs are on disk; anything else is a bug (exit 1),
its traceback in a log file (or on screen with --debug / GRADLAB_DEBUG=1).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from typing import List, Optional

import typer

from .errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="A lab for exploding gradients and gradient clipping: train deep networks with and "
    "without clipping, locate where NaNs are born, plot gradient norms over time.",
)

SetOpt = typer.Option(None, "--set", metavar="KEY.PATH=VALUE",
                      help="Override one config value (repeatable), e.g. --set model.depth=64.")
SeedsOpt = typer.Option(None, "--seeds", metavar="0,1,2", help="Replace the config's seeds.")
OutOpt = typer.Option(Path("outputs"), "--out", help="Where experiment directories go.")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress bar or table; print only the experiment path.")


def parse_seeds(text: Optional[str]) -> Optional[list[int]]:
    """`0,1,2` -> [0, 1, 2]; anything else is a UserError naming --seeds."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    seeds = []
    for p in parts:
        if not p.isdigit():
            what = "an empty item" if not p else f"`{p}`"
            raise UserError(f"expected non-negative integers separated by commas (e.g. 0,1,2), got {what}",
                            key="--seeds")
        seeds.append(int(p))
    if len(set(seeds)) != len(seeds):
        raise UserError(f"seeds must be distinct, got {text}", key="--seeds")
    return seeds


def _load(config: Path, sets: Optional[List[str]], seeds: Optional[str]):
    from .config import load_config

    return load_config(config, sets or (), parse_seeds(seeds))


def _console(stderr: bool = False):
    from rich.console import Console

    con = Console(stderr=stderr, highlight=False)
    if not con.is_terminal and "COLUMNS" not in os.environ:
        con.width = 160  # a log file or pipe: do not squeeze the table to 80 columns
    return con


WorkersOpt = typer.Option(None, "--workers", min=1, metavar="N",
                          help="Worker processes, one seed each at a time (default: the cores, fewer when memory says so).")
ForceOpt = typer.Option(False, "--force", help="Recompute runs that are already complete.")
NoPlotsOpt = typer.Option(False, "--no-plots", help="Skip drawing the plots (`gradlab plot` draws them later).")


@app.command()
def run(
    config: Path = typer.Argument(..., help="Experiment config (YAML)."),
    set_: Optional[List[str]] = SetOpt,
    seeds: Optional[str] = SeedsOpt,
    out: Path = OutOpt,
    workers: Optional[int] = WorkersOpt,
    force: bool = ForceOpt,
    quiet: bool = QuietOpt,
    no_plots: bool = NoPlotsOpt,
) -> None:
    """Train every run of CONFIG (each clipping variant x each seed) and write the experiment directory."""
    _execute(_load(config, set_, seeds), out, force, quiet, workers, not no_plots)


@app.command()
def sweep(
    config: Path = typer.Argument(..., help="Experiment config (YAML); its clipping list is replaced."),
    thresholds: str = typer.Option(..., "--thresholds", metavar="0.1,1,10", help="Clipping thresholds, comma-separated."),
    method: str = typer.Option("norm", "--method", metavar="norm|value", help="Clip by global norm or by value."),
    no_baseline: bool = typer.Option(False, "--no-baseline", help="Leave out the unclipped baseline."),
    set_: Optional[List[str]] = SetOpt,
    seeds: Optional[str] = SeedsOpt,
    out: Path = OutOpt,
    workers: Optional[int] = WorkersOpt,
    force: bool = ForceOpt,
    quiet: bool = QuietOpt,
    no_plots: bool = NoPlotsOpt,
) -> None:
    """Run CONFIG with the baseline plus METHOD at each threshold; plots and report answer which
    threshold keeps the model stable and what it costs."""
    if method not in ("norm", "value"):
        raise UserError(f"must be norm or value, got `{method}`", key="--method")
    spec = {"method": method, "thresholds": parse_thresholds(thresholds), "baseline": not no_baseline}
    from .config import load_config

    _execute(load_config(config, set_ or (), parse_seeds(seeds), sweep=spec), out, force, quiet, workers, not no_plots)


def parse_thresholds(text: str) -> list[float]:
    """`0.1,1,10` -> [0.1, 1.0, 10.0]: positive, finite, distinct; else a UserError naming --thresholds."""
    import math

    def bad(why: str) -> UserError:
        return UserError(f"{why} (expected positive numbers separated by commas, e.g. 0.1,1,10)", key="--thresholds")

    if not text.strip():
        raise bad("an empty list")
    values = []
    for item in (p.strip() for p in text.split(",")):
        if not item:
            raise bad("an empty item")
        try:
            x = float(item)
        except ValueError:
            raise bad(f"`{item}` is not a number") from None
        if not math.isfinite(x) or x <= 0:
            raise bad(f"`{item}` is not a positive finite number")
        if x in values:
            raise bad(f"`{item}` appears twice")
        values.append(x)
    return values


def _execute(cfg, out: Path, force: bool, quiet: bool, workers: Optional[int], plots: bool = True) -> None:
    """Run an experiment with a progress bar; Ctrl-C -> 130, SIGTERM -> 143, finished runs kept."""
    from .config import experiment_dir
    from .errors import Terminated
    from .experiment import collect_reports, run_experiment

    progress = _QuietProgress() if quiet else _RichProgress()
    try:
        with progress:
            exp = run_experiment(cfg, out, force=force, progress=progress, workers=workers, plots=plots)
    except UserError as e:
        if not isinstance(e.__cause__, OSError):
            raise
        # A write failed (disk full, ...). Name the first write that failed (the summary written
        # on the way out fails too), and say what is kept: the next run computes only the rest.
        seen, c = set(), e.__context__
        while c is not None and id(c) not in seen:
            seen.add(id(c))
            if isinstance(c, UserError) and isinstance(c.__cause__, OSError):
                e = c
            c = c.__context__
        exp = experiment_dir(cfg, out)
        if exp.is_dir():
            e.message += f"; {len(collect_reports(exp))} complete run(s) kept in {exp}"
        raise e from None
    except KeyboardInterrupt as e:
        exp = experiment_dir(cfg, out)
        n = len(collect_reports(exp)) if exp.is_dir() else 0
        what = "terminated" if isinstance(e, Terminated) else "interrupted"
        print(f"gradlab: {what}; {n} complete run(s) kept in {exp} (run the same command to resume)",
              file=sys.stderr)
        raise SystemExit(143 if isinstance(e, Terminated) else 130)
    _print_outcome(exp, quiet)


@app.command()
def validate(
    config: Path = typer.Argument(..., help="Experiment config (YAML)."),
    set_: Optional[List[str]] = SetOpt,
    seeds: Optional[str] = SeedsOpt,
    out: Path = OutOpt,
) -> None:
    """Check CONFIG and print its resolved form; trains nothing, writes nothing."""
    cfg = _load(config, set_, seeds)
    from .config import dump_yaml, estimate_memory_bytes, experiment_dir

    runs = len(cfg.clipping) * len(cfg.seeds)
    sys.stdout.write(dump_yaml(cfg))
    print(f"# valid: {runs} run(s) ({len(cfg.clipping)} variant(s) x {len(cfg.seeds)} seed(s)), "
          f"about {estimate_memory_bytes(cfg) / 2**20:.1f} MiB per seed; would write {experiment_dir(cfg, out)}/")


ExperimentArg = typer.Argument(None, help="Experiment directory (default: the most recent under --out).")


def _experiment(experiment: Optional[Path], out: Path, doing: str) -> tuple[Path, list]:
    """The experiment directory to plot or report on and its complete runs' reports. Refused
    (before anything is written into it) unless its config.yaml is the resolved config gradlab
    wrote; damaged runs are named in warnings and summary.json is rebuilt."""
    from .config import load_resolved
    from .experiment import complete_runs, find_experiment

    exp = find_experiment(experiment, out)
    try:
        load_resolved(exp / "config.yaml")
    except UserError as e:
        e.message += f" (is {exp} a gradlab experiment directory?)"
        raise
    return exp, complete_runs(exp, doing, _QuietProgress().warn)


@app.command()
def plot(
    experiment: Optional[Path] = ExperimentArg,
    out: Path = OutOpt,
) -> None:
    """(Re)draw every plot of an experiment from its directory."""
    from .experiment import finish
    from .report import missing_runs

    exp, reports = _experiment(experiment, out, "plot")
    for p in finish(exp, reports=reports):
        print(p)
    missing = missing_runs(exp, reports)
    if missing:
        print(f"gradlab: not finished, so not drawn: {', '.join(missing)}", file=sys.stderr)


@app.command()
def report(
    experiment: Optional[Path] = ExperimentArg,
    out: Path = OutOpt,
) -> None:
    """Print the NaN-divergence table of an experiment and (re)write its report.md."""
    from .environment import groups, statement
    from .report import write_report

    exp, reports = _experiment(experiment, out, "report")
    write_report(exp, reports)
    if len(groups(reports)) > 1:
        _QuietProgress().warn(statement(reports).replace("**", ""))
    _print_outcome(exp, quiet=False, reports=reports)


def _print_outcome(exp: Path, quiet: bool, reports: Optional[list] = None) -> None:
    if quiet:
        print(exp)
        return
    from rich.table import Table

    from .experiment import collect_reports
    from .report import columns, findings, missing_runs, sweep_finding, table_rows

    reports = collect_reports(exp) if reports is None else reports
    # run id already says method, threshold and seed; report.md has every column.
    cols = columns(reports)
    keep = [c for c in cols if c not in ("method", "threshold", "seed")]
    idx = [cols.index(c) for c in keep]
    table = Table(title="NaN-divergence report", title_justify="left")
    for c in keep:
        table.add_column(c, no_wrap=True, justify="left" if c in ("run", "diverged", "phase", "where") else "right")
    for row in table_rows(reports):
        table.add_row(*(row[i] for i in idx), style="red" if row[4] == "yes" else None)
    con = _console()
    con.print(table)
    con.print(findings(reports), soft_wrap=True)
    from .io import read_yaml

    swept = sweep_finding(reports, read_yaml(exp / "config.yaml"))
    if swept:
        con.print(swept, soft_wrap=True)
    missing = missing_runs(exp, reports)
    if missing:
        con.print(f"not finished: {', '.join(missing)}")
    con.print(f"experiment: {exp}  (report: {exp / 'report.md'})", soft_wrap=True)


class _QuietProgress:
    """--quiet: no bar, but warnings still reach stderr."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def start(self, total_steps: int, n_runs: int, n_skipped: int) -> None: ...
    def advance(self, steps: int) -> None: ...
    def note(self, text: str) -> None: ...

    def warn(self, text: str) -> None:
        print(f"gradlab: warning: {text}", file=sys.stderr)


class _RichProgress:
    """experiment.Progress drawn as a Rich progress bar over all steps to compute."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self._bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                             TimeRemainingColumn(), console=_console(stderr=True), transient=False)
        self._task = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        # Drawn only once there is something to draw: an error before start() (an --out that
        # cannot be written) stays one line on stderr, without an empty bar before it.
        return self._bar.__exit__(*exc) if self._task is not None else False

    def start(self, total_steps: int, n_runs: int, n_skipped: int) -> None:
        self._bar.__enter__()
        if n_skipped:
            self._bar.console.print(f"{n_skipped} run(s) already complete: skipped (--force recomputes them)")
        self._task = self._bar.add_task(f"{n_runs} run(s)", total=total_steps)

    def advance(self, steps: int) -> None:
        self._bar.advance(self._task, steps)

    def note(self, text: str) -> None:
        self._bar.update(self._task, description=text)

    def warn(self, text: str) -> None:
        self._bar.console.print(f"warning: {text}", style="yellow", highlight=False)


def main(argv: Optional[list[str]] = None) -> None:
    """Console entry point: maps every outcome to SPEC.md's exit codes."""
    args = sys.argv[1:] if argv is None else list(argv)
    debug = os.environ.get("GRADLAB_DEBUG") == "1" or "--debug" in args
    args = [a for a in args if a != "--debug"]
    signal.signal(signal.SIGTERM, _terminated)
    try:
        app(args=args or ["--help"], prog_name="gradlab", standalone_mode=False)
    except UserError as e:
        _fail(str(e), 2)
    except OSError as e:
        from .io import ENVIRONMENT_ERRNOS, os_reason

        if e.errno not in ENVIRONMENT_ERRNOS:  # disk full, read-only, permissions: not a bug
            if debug:
                raise
            _bug(e)
        _fail(str(UserError(f"cannot write ({os_reason(e)})", file=e.filename)), 2)
    except (KeyboardInterrupt, typer.Abort) as e:
        from .errors import Terminated

        _fail("terminated" if isinstance(e, Terminated) else "interrupted", 143 if isinstance(e, Terminated) else 130)
    except Exception as e:
        # Usage errors of Typer's (vendored) click: duck-typed, the class is not public.
        if callable(getattr(e, "format_message", None)) and isinstance(getattr(e, "exit_code", None), int):
            ctx = getattr(e, "ctx", None)
            cmd = f" {ctx.info_name}" if ctx is not None and ctx.info_name != "gradlab" else ""
            _fail(f"{e.format_message()}", e.exit_code, f"gradlab{cmd}")
        if debug:
            raise
        _bug(e)


def _terminated(signum, frame) -> None:
    from .errors import Terminated

    raise Terminated()


def _fail(message: str, code: int, who: str = "gradlab") -> None:
    print(f"{who}: error: {message}" if code != 130 else f"{who}: {message}", file=sys.stderr)
    sys.exit(code)


def _bug(e: Exception) -> None:
    """A bug: keep the traceback for the report, not on the user's screen."""
    import tempfile
    import traceback

    fd, log = tempfile.mkstemp(prefix="gradlab-crash-", suffix=".log")
    with os.fdopen(fd, "w") as fh:
        traceback.print_exc(file=fh)
    what = " ".join(str(e).split())  # one line, whatever the exception's text
    what = what if len(what) <= 200 else what[:197] + "..."
    _fail(f"internal error ({type(e).__name__}: {what}); this is a bug. The traceback is in {log}; "
          "rerun with --debug to see it", 1)


if __name__ == "__main__":
    main()
