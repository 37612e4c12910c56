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
from typing import List, NoReturn, Optional

from .entry import ignore_ctrl_c_if_spawned

ignore_ctrl_c_if_spawned()  # `python -m gradlab.cli` spawning Dask workers: they import this as their main

import typer  # noqa: E402

from .errors import UserError, clip, one_line

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="A lab for exploding gradients and gradient clipping: train deep networks with and "
    "without clipping, locate where NaNs are born, plot gradient norms over time.",
)


@app.callback()
def _global(
    debug: bool = typer.Option(False, "--debug", help="Show the Python traceback of an internal error "
                               "(also GRADLAB_DEBUG=1); accepted before or after the command."),
) -> None:
    # Only for --help: main() takes --debug out of the arguments wherever it stands.
    pass


SetOpt = typer.Option(None, "--set", metavar="KEY.PATH=VALUE",
                      help="Override one config value (repeatable), e.g. --set model.depth=64.")
SeedsOpt = typer.Option(None, "--seeds", metavar="0,1,2", help="Replace the config's seeds.")
GridOpt = typer.Option(None, "--grid", metavar="KEY.PATH=V1,V2",
                       help="A grid axis (repeatable): every run for each value, values read as --set reads "
                            "them, e.g. --grid train.optimizer.lr=0.01,0.1; run ids become lr=0.1/norm-1-s0.")
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
            what = "an empty item" if not p else f"`{clip(p)}`"
            raise UserError(f"expected non-negative integers separated by commas (e.g. 0,1,2), got {what}",
                            key="--seeds")
        seeds.append(int(p))
    if len(set(seeds)) != len(seeds):
        twice = next(s for i, s in enumerate(seeds) if s in seeds[:i])
        raise UserError(f"seeds must be distinct, got {twice} twice", key="--seeds")
    return seeds


def _load(config: Path, sets: Optional[List[str]], seeds: Optional[str], grid: Optional[List[str]] = None):
    from .config import load_config

    return load_config(config, sets or (), parse_seeds(seeds), grid=grid or ())


def _console(stderr: bool = False):
    from rich.console import Console

    con = Console(stderr=stderr, highlight=False)
    con.on_broken_pipe = _broken_pipe  # Rich would exit 1 on its own; main() knows better
    if not con.is_terminal and "COLUMNS" not in os.environ:
        con.width = 160  # a log file or pipe: do not squeeze the table to 80 columns
    return con


WorkersOpt = typer.Option(None, "--workers", min=1, metavar="N",
                          help="Worker processes on this machine, one unit (a seed's variants, or some of them) each at a time "
                               "(default: the cores, fewer when memory says so).")
ClusterOpt = typer.Option(None, "--cluster", envvar="GRADLAB_CLUSTER", metavar="local:N|tcp://HOST:8786",
                          help="Train on a Dask cluster: local:N starts N single-threaded worker processes, an address "
                               "uses a running scheduler's workers (needs pip install -e \".[cluster]\").")
ForceOpt = typer.Option(False, "--force", help="Recompute runs that are already complete.")
NoPlotsOpt = typer.Option(False, "--no-plots", help="Skip drawing the plots (`gradlab plot` draws them later).")
WideOpt = typer.Option(False, "--wide", help="Every column of the table, however wide the terminal (report.md has them all).")


@app.command()
def run(
    config: Path = typer.Argument(..., help="Experiment config (YAML)."),
    set_: Optional[List[str]] = SetOpt,
    seeds: Optional[str] = SeedsOpt,
    grid: Optional[List[str]] = GridOpt,
    out: Path = OutOpt,
    workers: Optional[int] = WorkersOpt,
    cluster: Optional[str] = ClusterOpt,
    force: bool = ForceOpt,
    quiet: bool = QuietOpt,
    no_plots: bool = NoPlotsOpt,
    wide: bool = WideOpt,
) -> None:
    """Train every run of CONFIG (each clipping variant x each seed, at each grid point) and write the
    experiment directory."""
    where = _where(workers, cluster)
    _execute(_load(config, set_, seeds, grid), out, force, quiet, where, not no_plots, wide)


@app.command()
def sweep(
    config: Path = typer.Argument(..., help="Experiment config (YAML); --thresholds replaces its clipping list."),
    thresholds: Optional[str] = typer.Option(None, "--thresholds", metavar="0.1,1,10",
                                             help="Clipping thresholds, comma-separated. Required unless --grid is "
                                                  "given; without it a grid keeps the config's clipping list."),
    method: str = typer.Option("norm", "--method", metavar="METHOD",
                               help="The rule whose main knob the thresholds set: norm (max_norm), value (clip_value), "
                                    "per_tensor (max_norm), agc (clipping), autoclip (percentile), zclip (z_thresh), "
                                    "skip (sigma)."),
    no_baseline: bool = typer.Option(False, "--no-baseline", help="Leave out the unclipped baseline."),
    grid: Optional[List[str]] = GridOpt,
    set_: Optional[List[str]] = SetOpt,
    seeds: Optional[str] = SeedsOpt,
    out: Path = OutOpt,
    workers: Optional[int] = WorkersOpt,
    cluster: Optional[str] = ClusterOpt,
    force: bool = ForceOpt,
    quiet: bool = QuietOpt,
    no_plots: bool = NoPlotsOpt,
    wide: bool = WideOpt,
) -> None:
    """Run CONFIG with the baseline plus METHOD at each threshold (and at each point of the --grid
    axes); plots and report answer which threshold keeps the model stable and what it costs."""
    if thresholds is None and not grid:
        raise UserError("missing: give the clipping thresholds (e.g. --thresholds 0.1,1,10), or a --grid axis "
                        "to sweep the config's own clipping list over", key="--thresholds")
    if method not in SWEEP_METHODS:
        import difflib

        from .config import THRESHOLD_KEYS  # and the rules registered from outside gradlab

        if method not in THRESHOLD_KEYS:
            close = difflib.get_close_matches(method, list(THRESHOLD_KEYS), n=1)
            raise UserError(f"must be one of {', '.join(THRESHOLD_KEYS)}; got `{clip(method)}`"
                            + (f" (did you mean `{close[0]}`?)" if close else ""), key="--method")
    spec = None if thresholds is None else {"method": method, "thresholds": parse_thresholds(thresholds),
                                            "baseline": not no_baseline}
    where = _where(workers, cluster)
    from .config import load_config

    _execute(load_config(config, set_ or (), parse_seeds(seeds), sweep=spec, grid=grid or ()), out, force, quiet,
             where, not no_plots, wide)


def _where(workers: Optional[int], cluster: Optional[str]) -> dict:
    """run_experiment's `workers` and `cluster`, from --workers and --cluster (or GRADLAB_CLUSTER)."""
    from .cluster import parse_cluster

    cluster = parse_cluster(cluster)
    if cluster is not None and workers is not None:
        raise UserError("counts this machine's worker processes; with --cluster (or GRADLAB_CLUSTER) the cluster's "
                        "workers train (local:N starts N of them)", key="--workers")
    return {"workers": workers, "cluster": cluster}


# What `gradlab sweep --method` takes without loading the schema (gradlab.config.SweepConfig's
# built-in methods, spelt out so that a bad option is refused before pydantic is imported; a
# rule registered with gradlab.config.register_rule is looked up in the registry).
SWEEP_METHODS = ("norm", "value", "per_tensor", "agc", "autoclip", "zclip", "skip")


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
            raise bad(f"`{clip(item)}` is not a number") from None
        if not math.isfinite(x) or x <= 0:
            raise bad(f"`{clip(item)}` is not a positive finite number")
        if x in values:
            raise bad(f"`{clip(item)}` appears twice")
        values.append(x)
    return values


def _execute(cfg, out: Path, force: bool, quiet: bool, where: dict, plots: bool = True,
             wide: bool = False) -> None:
    """Run an experiment with a progress bar; Ctrl-C -> 130, SIGTERM -> 143, finished runs kept."""
    from .config import experiment_dir
    from .errors import WorkerLost
    from .experiment import collect_reports, run_experiment

    progress = _QuietProgress() if quiet else _RichProgress()
    try:
        with progress:
            exp = run_experiment(cfg, out, force=force, progress=progress, plots=plots, **where)
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
    except WorkerLost as e:
        exp = experiment_dir(cfg, out)
        n = len(collect_reports(exp)) if exp.is_dir() else 0
        _fail(f"{e}; {n} complete run(s) kept in {exp}; run the same command to resume", 3)
    except KeyboardInterrupt as e:
        exp = experiment_dir(cfg, out)
        _stopped(e, f"{len(collect_reports(exp)) if exp.is_dir() else 0} complete run(s) kept in {exp}")
    _print_outcome(exp, quiet, wide=wide)


@app.command()
def validate(
    config: Path = typer.Argument(..., help="Experiment config (YAML)."),
    set_: Optional[List[str]] = SetOpt,
    seeds: Optional[str] = SeedsOpt,
    grid: Optional[List[str]] = GridOpt,
    out: Path = OutOpt,
) -> None:
    """Check CONFIG and print its resolved form; trains nothing, writes nothing."""
    cfg = _load(config, set_, seeds, grid)
    from .config import dump_yaml, estimate_memory_bytes, experiment_dir
    from .config.grid import grid_points, planned
    from .experiment import check_writable

    check_writable(out)  # "would write" must be a promise
    runs = len(planned(cfg))
    points = grid_points(cfg)
    per_seed = max(estimate_memory_bytes(p) for _, p in points)
    grid_ = f"{len(points)} grid point(s) x " if cfg.grid is not None else ""
    variants = {len(p.clipping) for _, p in points}  # a grid over the clipping list changes it
    variants_ = f"{variants.pop()} variant(s)" if len(variants) == 1 else "their variants"
    sys.stdout.write(dump_yaml(cfg))
    print(f"# valid: {runs} run(s) ({grid_}{variants_} x {len(cfg.seeds)} seed(s)), "
          f"about {per_seed / 2**20:.1f} MiB per seed{' at most' if grid_ else ''}; "
          f"would write {experiment_dir(cfg, out)}/")


ExperimentArg = typer.Argument(None, help="Experiment directory (default: the most recent under --out).")


def _experiment(experiment: Optional[Path], out: Path, doing: str) -> tuple[Path, list]:
    """The experiment directory to plot or report on and its complete runs' reports. Refused
    (before anything is written into it) unless its config.yaml is the resolved config gradlab
    wrote; damaged runs are named in warnings and summary.json is rebuilt."""
    from .experiment import complete_runs

    exp = _checked_experiment(experiment, out)
    return exp, complete_runs(exp, doing, _QuietProgress().warn)


def _checked_experiment(experiment: Optional[Path], out: Path) -> Path:
    """The experiment directory named (default: the most recent under `out`), refused unless
    its config.yaml is the resolved config gradlab wrote and its hash matches."""
    from .config import load_resolved
    from .experiment import check_config, find_experiment

    exp = find_experiment(experiment, out)
    try:
        load_resolved(exp / "config.yaml")
    except UserError as e:
        e.message += f" (is {exp} a gradlab experiment directory?)"
        raise
    check_config(exp)
    return exp


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
    wide: bool = WideOpt,
) -> None:
    """Print the NaN-divergence table of an experiment and (re)write its report.md."""
    from .environment import groups, statement
    from .report import write_report

    exp, reports = _experiment(experiment, out, "report")
    write_report(exp, reports)
    if len(groups(reports)) > 1:
        _QuietProgress().warn(statement(reports).replace("**", ""))
    _print_outcome(exp, quiet=False, reports=reports, wide=wide, suggestion=True)


@app.command()
def landscape(
    experiment: Optional[Path] = ExperimentArg,
    run_: str = typer.Option(..., "--run", metavar="RUN_ID", help="The run whose weights centre the slice, e.g. none-s0."),
    step: Optional[int] = typer.Option(None, "--step", metavar="N",
                                       help="The centre step (default: the last healthy step before the run's "
                                            "divergence, else the step of its largest gradient norm)."),
    params: Optional[str] = typer.Option(None, "--params", metavar="A,B",
                                         help="Two parameter entries as axes: rnn.w,rnn.b (or w,b: a unique last "
                                              "part), layer0.W[3,4],layer0.b[1]. Default for a model of two scalars."),
    directions: Optional[str] = typer.Option(None, "--directions", metavar="grad,random",
                                             help="Two directions as axes: grad (the gradient at the centre) and/or "
                                                  "random, filter-normalised as Li et al. 2018 (the default)."),
    span: float = typer.Option(1.0, "--span", metavar="S",
                               help="Half-width of each axis around the centre (parameter units for --params, "
                                    "multiples of the direction for --directions)."),
    box: Optional[str] = typer.Option(None, "--box", metavar="A0,A1,B0,B1",
                                      help="The axes' ranges instead of --span, e.g. -2,12,-8,4."),
    resolution: int = typer.Option(41, "--resolution", metavar="R", help="Grid points per axis (3-401)."),
    seed: int = typer.Option(0, "--seed", min=0, metavar="K", help="Seed of the random direction."),
    out: Path = OutOpt,
) -> None:
    """Draw RUN's loss over a 2-D slice of parameter space, with its seed's clipping variants'
    trajectories projected on it: plots/landscape_RUN.png and landscape_RUN.csv."""
    from . import landscape as L

    exp = _checked_experiment(experiment, out)
    ls = L.compute(exp, run_, step=step, params=L.parse_pair(params, "--params"),
                   directions=L.parse_pair(directions, "--directions"), span=span, box=L.parse_box(box),
                   resolution=resolution, random_seed=seed)
    png, csv = L.write(exp, ls)
    print(f"centre: step {ls.step} of {ls.run_id} ({ls.centre_reason}); {len(ls.alphas)}x{len(ls.betas)} grid "
          f"evaluated in {ls.seconds:.2f} s ({ls.cpu_seconds:.2f} s CPU)")
    if not L.replay_matches(ls):
        print(f"gradlab: the replay's loss at step {ls.step} ({ls.replayed_loss:.6g}) is not metrics.csv's "
              f"({ls.recorded_loss:.6g}): another machine or BLAS kernel trained this run", file=sys.stderr)
    print(png)
    print(csv)


@app.command()
def reproduce(
    name: Optional[str] = typer.Argument(None, metavar="NAME",
                                         help="The reproduction to run; without it (and without --all), the list."),
    all_: bool = typer.Option(False, "--all", help="Run every reproduction, one after another."),
    set_: Optional[List[str]] = typer.Option(None, "--set", metavar="KEY.PATH=VALUE",
                                             help="Override a value in every config of the reproduction (repeatable), "
                                                  "e.g. --set train.steps=50 for a quick look; the page says so."),
    out: Path = OutOpt,
    workers: Optional[int] = WorkersOpt,
    cluster: Optional[str] = ClusterOpt,
    force: bool = ForceOpt,
    quiet: bool = QuietOpt,
    no_plots: bool = typer.Option(False, "--no-plots", help="Skip each experiment's own plots (the reproduction's "
                                                            "figures are drawn all the same)."),
) -> None:
    """Reproduce a paper's result from the shipped configs (configs/papers/): train them, put the
    paper's claim beside the measured numbers, and write OUT/reproductions/NAME/reproduction.md with
    a verdict (reproduced, partly, not)."""
    from .reproductions import get, reproductions

    if name is not None and all_:
        raise UserError("give a NAME or --all, not both", key="--all")
    if name is None and not all_:
        _list_reproductions(reproductions())
        return
    chosen = list(reproductions().values()) if all_ else [get(name)]
    where = _where(workers, cluster)
    from .reproductions.runner import load_configs, run_reproduction

    for rep in chosen:  # every config of every chosen reproduction checked before anything trains
        load_configs(rep, set_ or ())
    done = []
    for rep in chosen:
        if not quiet:
            _console(stderr=True).print(f"{rep.name}: {rep.title}", highlight=False)
        try:
            root = run_reproduction(rep, out, sets=set_ or (), force=force, plots=not no_plots,
                                    progress=(lambda stem: _QuietProgress() if quiet else _RichProgress()), **where)
        except KeyboardInterrupt as e:
            from .reproductions.runner import reproduction_root

            _stopped(e, f"complete runs kept in {reproduction_root(rep, out)}")
        done.append((rep, root))
        if quiet:
            print(root / "reproduction.md")
        else:
            from .io import read_json

            rec = read_json(root / "reproduction.json")
            _console().print(f"{rep.name}: {rec['verdict']}: {rec['why']}\n  {root / 'reproduction.md'}",
                             highlight=False, soft_wrap=False)
    if len(done) > 1 and not quiet:
        from .io import read_json

        con = _console()
        for rep, root in done:
            rec = read_json(root / "reproduction.json")
            con.print(f"{rep.name:<28} {rec['verdict']:<11} {rec['seconds'] / 60:5.1f} min", highlight=False)


def _list_reproductions(known: dict) -> None:
    from rich.table import Table

    if not known:
        print("no reproductions are registered")
        return
    table = Table(title="Reproductions (gradlab reproduce NAME runs one, --all every one)", title_justify="left")
    # The names whole (a user copies them); the paper's title and the configs take the
    # wrapping, in one column, so that an 80-column terminal still has room for a sentence.
    table.add_column("name", no_wrap=True)
    table.add_column("paper and result; its configs in configs/papers/")
    table.add_column("min", justify="right", no_wrap=True)
    for rep in known.values():
        table.add_row(rep.name, f"{rep.title}\n[dim]{', '.join(rep.configs)}[/dim]", f"{rep.minutes:g}")
    _console().print(table)
    total = sum(rep.minutes for rep in known.values())
    print(f"all of them: about {total:g} min on 2 cores")


def _print_outcome(exp: Path, quiet: bool, reports: Optional[list] = None, wide: bool = False,
                   suggestion: bool = False) -> None:
    if quiet:
        print(exp)
        return
    from rich.table import Table

    from .experiment import collect_reports
    from .report import findings, missing_runs, sweep_finding, table_rows, terminal_columns

    reports = collect_reports(exp) if reports is None else reports
    con = _console()
    shown = terminal_columns(reports, con.width, wide)
    table = Table(title="NaN-divergence report", title_justify="left")
    for _, header in shown:
        table.add_column(header, no_wrap=True, justify="right" if header not in _LEFT else "left")
    for row in table_rows(reports):
        table.add_row(*(row[i] for i, _ in shown), style="red" if row[4] == "yes" else None)
    # Never cut a value: a table wider than the terminal (--wide, or a run id longer than the
    # screen) is printed whole and the terminal wraps its lines.
    screen = con.width
    con.width = max(screen, table.__rich_measure__(con, con.options.update(max_width=10**4)).maximum)
    con.print(table)
    con.width = screen
    con.print(findings(reports, exp))
    from .io import read_yaml

    config = read_yaml(exp / "config.yaml")
    # A grid's runs would be mixed across its points in the threshold x seed finding.
    swept = sweep_finding(reports, config) if not isinstance(config.get("grid"), dict) else ""
    if swept:
        con.print(swept)
    if suggestion and reports:
        from .suggest import lines, suggest

        from rich.text import Text

        for line in lines(suggest(exp, reports)):
            # Wrapped at words like the findings, an indented line's continuation indented too;
            # a Text, not markup: the hint's `[{method: none}]` is text.
            indent = len(line) - len(line.lstrip(" "))
            text = Text(line.lstrip(" "))
            if indent:
                from rich.padding import Padding

                con.print(Padding(text, (0, 0, 0, indent)), highlight=False)
            else:
                con.print(text, highlight=False)
    missing = missing_runs(exp, reports)
    if missing:
        con.print(f"not finished: {', '.join(missing)}")
    con.print(f"experiment: {exp}  (report: {exp / 'report.md'})", soft_wrap=True)


_LEFT = ("run", "method", "diverged", "div", "phase", "where")


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
    """Console entry point: maps every outcome to the exit codes the README documents."""
    args = sys.argv[1:] if argv is None else list(argv)
    debug = os.environ.get("GRADLAB_DEBUG") == "1" or "--debug" in args
    args = [a for a in args if a != "--debug"]
    _last_signal[0] = None
    signal.signal(signal.SIGTERM, _terminated)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _interrupt)
    _standard_streams()
    try:
        code = app(args=args or ["--help"], prog_name="gradlab", standalone_mode=False)
        if code:
            # Typer catches a KeyboardInterrupt (Ctrl-C, or SIGTERM's Terminated) that no
            # command caught itself and, outside standalone mode, hands back its exit code 130
            # instead of raising: it would leave as exit 0.
            _fail(*_STOPPED.get(_last_signal[0], ("interrupted", 130)))
        sys.stdout.flush()  # here, where a closed pipe can still be told apart from a bug
    except BrokenPipeError:
        _pipe_closed()
    except SystemExit:
        # click turns a closed pipe into exit 1 after swapping in its PacifyFlushWrapper.
        if type(sys.stdout).__name__ == "PacifyFlushWrapper":
            _pipe_closed()
        raise
    except UserError as e:
        _fail(str(e), 2)
    except OSError as e:
        from .io import ENVIRONMENT_ERRNOS, os_reason

        if e.errno not in ENVIRONMENT_ERRNOS:  # disk full, read-only, a bad path: not a bug
            if debug:
                raise
            _bug(e)
        import errno

        doing = "use this path" if e.errno in (errno.ENAMETOOLONG, errno.ELOOP, errno.ENOTDIR, errno.EISDIR) else "write"
        _fail(str(UserError(f"cannot {doing} ({os_reason(e)})", file=e.filename)), 2)
    except (KeyboardInterrupt, typer.Abort) as e:
        from .errors import Terminated

        _fail("terminated" if isinstance(e, Terminated) else "interrupted", 143 if isinstance(e, Terminated) else 130)
    except Exception as e:
        # Usage errors of Typer's (vendored) click: duck-typed, the class is not public.
        if callable(getattr(e, "format_message", None)) and isinstance(getattr(e, "exit_code", None), int):
            ctx = getattr(e, "ctx", None)
            cmd = f" {ctx.info_name}" if ctx is not None and ctx.info_name != "gradlab" else ""
            _fail(one_line(_usage_message(e)), e.exit_code, f"gradlab{cmd}")
        if _signal_inside(e) or _last_signal[0] is not None:
            # A library wrapped the interrupt (pydantic's SchemaError, built in Rust, keeps
            # no cause): after Ctrl-C or SIGTERM, that is what the error is.
            _fail(*_STOPPED.get(_last_signal[0], ("interrupted", 130)))
        if debug:
            raise
        _bug(e)


def _broken_pipe() -> None:
    raise BrokenPipeError()


def _standard_streams() -> None:
    """Started with stdout or stderr closed (`>&-`): the output goes nowhere, as if to
    /dev/null, and the command does its job. Without this a file gradlab opens would take
    descriptor 1, and print() would fail on Python's None stream."""
    import fcntl

    for fd, want in ((0, (os.O_RDONLY, os.O_RDWR)), (1, (os.O_WRONLY, os.O_RDWR)), (2, (os.O_WRONLY, os.O_RDWR))):
        try:
            usable = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE in want
        except OSError:
            usable = False
        if not usable:  # closed, or (after `2>&-`) a file the launcher opened read-only took its place
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w"))


def _pipe_closed() -> None:
    """The reader of stdout went away (`gradlab report | head -1`): not an error of ours.
    Exit quietly with 141, the status a shell shows for a program ended by SIGPIPE, as
    `cat` and `git` do; stdout goes to /dev/null so that the exit's flush cannot fail again."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    sys.exit(141)


def _usage_message(e: Exception) -> str:
    """A usage error of Typer's click, with "did you mean" drawn from the command's own
    options only, and, for an option of other commands, which ones take it."""
    name, ctx = getattr(e, "option_name", None), getattr(e, "ctx", None)
    if not isinstance(name, str) or ctx is None or not hasattr(e, "possibilities"):
        return e.format_message()
    help_option = ctx.command.get_help_option(ctx)
    params = [*ctx.command.params, *([help_option] if help_option else [])]
    own = {o for p in params for o in (*p.opts, *p.secondary_opts)}
    e.possibilities = [p for p in e.possibilities or () if p in own]
    group = ctx.find_root().command
    others = [n for n, c in getattr(group, "commands", {}).items() if c is not ctx.command and
              any(name in (*p.opts, *p.secondary_opts) for p in c.params)]
    if others:  # a right option in the wrong place: say where it goes, not what it looks like here
        where = " and ".join(others) if len(others) <= 2 else ", ".join(others[:-1]) + " and " + others[-1]
        if ctx.command is group:
            return f"{e.message} (an option of {where}: give it after the command name)"
        return f"{e.message} ({name} is an option of {where}, not of {ctx.info_name})"
    return e.format_message()


# The last stopping signal received: what a KeyboardInterrupt that Typer or a library turned
# into something else was.
_last_signal: list[Optional[int]] = [None]
_STOPPED = {signal.SIGINT: ("interrupted", 130), signal.SIGTERM: ("terminated", 143)}


def _interrupt(signum, frame) -> None:
    _last_signal[0] = signum
    signal.default_int_handler(signum, frame)


def _terminated(signum, frame) -> None:
    from .errors import Terminated

    _last_signal[0] = signum
    raise Terminated()


def _signal_inside(e: BaseException) -> bool:
    """Whether a KeyboardInterrupt (or Terminated) is among the causes of `e`."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, KeyboardInterrupt):
            return True
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return False


def _stopped(e: KeyboardInterrupt, kept: str) -> NoReturn:
    """Ctrl-C (130) or SIGTERM (143, `Terminated`) mid-work: one line saying what is kept, and
    that the same command resumes."""
    from .errors import Terminated

    what = "terminated" if isinstance(e, Terminated) else "interrupted"
    print(f"gradlab: {what}; {kept} (run the same command to resume)", file=sys.stderr)
    raise SystemExit(143 if isinstance(e, Terminated) else 130)


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
