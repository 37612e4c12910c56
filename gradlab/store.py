"""The run store: an experiment directory's layout, what makes a run complete, and the files
derived from the runs. It imports nothing above it (no training, no report, no plots), so that
every command, the one writer and the plots read and check runs the same way.

Layout (the README's "The experiment directory"): outputs/<name>-<hash8>/{config.yaml,
summary.json, report.md, runs/<run_id>/{metrics.csv, layer_norms.csv, report.json}, plots/*.png}.
A run is complete when its report.json exists (written last) and its files agree with it and
with each other; a run folder without report.json is redone, one whose files are damaged is
named in a warning and redone. summary.json is derived from the complete runs and rebuilt
from them, never trusted.
"""

from __future__ import annotations

import json
import math
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

from . import environment, io
from .errors import UserError, clip_path
from .records import METRIC_COLUMNS, summarize, underflow_worst


# The transformer's per-block attention statistics, in layer_norms.csv's wide layout (step,
# block.0.max_attn_logit, block.1.max_attn_logit, ..., block.0.attn_entropy, ...). Optional:
# other models have none, and runs written before it existed have none either.
ATTENTION_CSV = "attention.csv"
_BLOCK_COLUMN = re.compile(r"block\.\d+\.[a-z_]+")
# Runs that measure underflow (train.precision.measure_underflow): step, then each parameter
# tensor's fraction of gradient entries lost, in layer_norms.csv's columns; NaN on the steps
# not measured. Optional: other runs have none.
UNDERFLOW_CSV = "underflow.csv"


def run_dir(exp: Path, rid: str) -> Path:
    """A run's folder; a grid run's id `lr=0.1/norm-1-s0` nests it under its point's folder."""
    return exp / "runs" / rid


def run_reports(exp: Path) -> list[Path]:
    """Every report.json under runs/: runs/<run_id>/ and, in a grid experiment, runs/<point>/<run_id>/."""
    runs = exp / "runs"
    return sorted([*runs.glob("*/report.json"), *runs.glob("*/*/report.json")])


def _rid_of(exp: Path, report: Path) -> str:
    return report.parent.relative_to(exp / "runs").as_posix()


def check_run(exp: Path, rid: str, config: Optional[str] = None) -> tuple[str, str]:
    """(state, what is wrong). The state is `complete`, `missing` (never finished: no
    report.json) or `damaged` (its files do not agree: an unreadable report.json, a
    metrics.csv cut short, from a disk or a hand); for a damaged run, the file and its fault,
    e.g. `metrics.csv: 11 rows where report.json says 12`. `config`: the experiment's hash8;
    a run that records another was computed from another config (a folder copied in)."""
    state, why, _ = _check_run(exp, rid, config)
    return state, why


def config_hash_of(exp: Path) -> Optional[str]:
    """The hash of the experiment's config.yaml as it is on disk (None when unreadable): the
    directory's hash8 unless someone edited the file."""
    import yaml

    try:
        return io.data_hash(io.read_yaml(exp / "config.yaml"))
    except (OSError, ValueError, TypeError, yaml.YAMLError):
        return None


def check_config(exp: Path) -> None:
    """Refuse an experiment whose config.yaml is not the config its runs came from (edited by
    hand): its report and plots would describe another experiment. The directory's hash8
    names the config, and so does every run since runs record it (a renamed directory)."""
    h = config_hash_of(exp)
    named = re.fullmatch(r".+-([0-9a-f]{8})", exp.name)
    if named and named.group(1) != h:
        was = f"the directory's name says {named.group(1)}"
    else:
        recorded = set()
        for path in run_reports(exp):
            try:
                recorded.add(io.read_json(path).get("config_hash"))
            except (OSError, ValueError, AttributeError):
                continue
        recorded.discard(None)
        if not recorded or h in recorded:
            return
        was = f"its runs say {', '.join(sorted(recorded)[:3])}"
    raise UserError(f"edited after its runs were computed (its hash is {h}; {was}), so the report would describe "
                    "another experiment; restore it, or run the edited config to compute its own runs",
                    file=str(exp / "config.yaml"))


def _check_run(exp: Path, rid: str, config: Optional[str] = None) -> tuple[str, str, Optional[dict]]:
    d = run_dir(exp, rid)
    if not (d / "report.json").is_file():
        return "missing", "", None
    try:
        rep = io.read_json(d / "report.json")
    except (OSError, ValueError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return "damaged", "report.json: not readable JSON (cut short or overwritten)", None
    why = _report_problem(rep, rid)
    if not why and config is not None and rep.get("config_hash", config) != config:
        why = f"it was computed from another config ({rep['config_hash']}, not this experiment's {config})"
    if why:
        return "damaged", f"report.json: {why}", None
    rows = rep["steps_completed"] + (1 if rep["diverged"] else 0)
    metrics: list = []
    for name, required in (("metrics.csv", METRIC_COLUMNS), ("layer_norms.csv", ("step",))):
        why = _csv_problem(d / name, rows, required, metrics if name == "metrics.csv" else None)
        if why:
            return "damaged", f"{name}: {why}", None
    why = _outcome_problem(rep, *metrics)
    if why:
        return "damaged", why, None
    if (d / "bptt_norms.csv").exists():  # recurrent models only
        why = _csv_problem(d / "bptt_norms.csv", None, ("step", "layer", "t", "grad_norm"))
        if why:
            return "damaged", f"bptt_norms.csv: {why}", None
    why = _attention_problem(d, rows, *metrics)
    if why:
        return "damaged", f"{ATTENTION_CSV}: {why}", None
    why = _underflow_problem(d, rows, rep, *metrics)
    if why:
        return "damaged", f"{UNDERFLOW_CSV}: {why}", None
    why = _smoothness_problem(*metrics)
    if why:
        return "damaged", f"metrics.csv: {why}", None
    return "complete", "", rep


def _smoothness_problem(metric_columns: list[str], metric_rows: list[list[float]]) -> str:
    """What is wrong with metrics.csv's `smoothness` (train.measure_smoothness), or "": a ratio
    of two norms, so NaN (not measured, or a step that moved nothing) or finite and >= 0; and
    a measured step has a finite gradient norm (the estimate's first gradient is that step's)."""
    if "smoothness" not in metric_columns:
        return ""
    col, norm = metric_columns.index("smoothness"), metric_columns.index("grad_norm")
    for step, m in enumerate(metric_rows):
        s = m[col]
        if math.isnan(s):
            continue
        if not (math.isfinite(s) and s >= 0):
            return f"step {step}: smoothness {s} is not a finite number >= 0 (a ratio of two norms)"
        if not math.isfinite(m[norm]):
            return f"step {step}: smoothness measured where the gradient norm is {m[norm]}"
    return ""


def _underflow_problem(d: Path, rows: int, rep: dict, metric_columns: list[str], metric_rows: list[list[float]]) -> str:
    """What is wrong with a run's underflow.csv, or "". It comes with a metrics.csv that has
    `underflow`, one row per step, a column per parameter tensor (layer_norms.csv's); on each
    step metrics.csv's overall fraction is a mean of the tensors' weighted by their counts, so
    it lies between their least and their largest (NaN, not measured, where they all are);
    report.json's worst tensor is the one the file has."""
    path = d / UNDERFLOW_CSV
    if not path.exists():
        return "missing" if "underflow" in metric_columns else ""
    if "underflow" not in metric_columns:
        return "metrics.csv has no `underflow` column to go with it"
    parsed: list = []
    why = _csv_problem(path, rows, ("step",), parsed)
    if why:
        return why
    header, table = parsed
    with open(d / "layer_norms.csv", encoding="utf-8") as fh:  # checked above: readable text
        layer_columns = fh.readline().rstrip("\n").split(",")
    if header != layer_columns:
        return "its first line is not the header gradlab writes (layer_norms.csv's columns)"
    col = metric_columns.index("underflow")
    for step, (u, m) in enumerate(zip(table, metric_rows)):
        values = [x for x in u[1:] if not math.isnan(x)]
        overall = m[col]
        if math.isnan(overall) != (not values) or (values and not min(values) <= overall <= max(values)):
            return (f"step {step}: metrics.csv's underflow {overall} is not within its tensors' "
                    f"({min(values, default=math.nan)} to {max(values, default=math.nan)})")
    derived = underflow_worst(header[1:], table, metric_columns, metric_rows)
    for key, value in derived.items():
        if io.json_safe(value) != rep.get(key):
            return f"report.json and underflow.csv disagree (`{key}`: {rep.get(key)} in report.json, {value} here)"
    return ""


def _attention_problem(d: Path, rows: int, metric_columns: list[str], metric_rows: list[list[float]]) -> str:
    """What is wrong with a run's attention.csv, or "". A metrics.csv with attention columns
    (a gradlab that writes both) must come with it, one row per step like metrics.csv, and its
    blocks' largest logit must be metrics.csv's `max_attn_logit` (the files of one run)."""
    path = d / ATTENTION_CSV
    if not path.exists():
        return "missing" if "max_attn_logit" in metric_columns else ""
    parsed: list = []
    why = _csv_problem(path, rows, ("step",), parsed)
    if why:
        return why
    header, table = parsed
    if len(header) < 2 or not all(_BLOCK_COLUMN.fullmatch(c) for c in header[1:]):
        return "its first line is not the header gradlab writes"
    if "max_attn_logit" in metric_columns:
        blocks = [i for i, c in enumerate(header) if c.endswith(".max_attn_logit")]
        col = metric_columns.index("max_attn_logit")
        for step, (a, m) in enumerate(zip(table, metric_rows)):
            values = [a[i] for i in blocks]
            # NumPy's max, which the recorder took: NaN when any block's is NaN.
            top = math.nan if any(math.isnan(v) for v in values) else max(values, default=math.nan)
            if not (top == m[col] or (math.isnan(top) and math.isnan(m[col]))):
                return (f"step {step}: its blocks' largest attention logit is {top}, "
                        f"metrics.csv's max_attn_logit {m[col]}")
    return ""


def _outcome_problem(rep: dict, columns: list[str], rows: list[list[float]]) -> str:
    """Where report.json's outcome disagrees with its own metrics.csv (an edited number, or
    files of two different runs), or "". The report was derived from these rows by the same
    `summarize`, so any difference is damage, however small."""
    derived = summarize(columns, rows)
    if rep["diverged"] and rep["divergence_step"] != len(rows) - 1:
        return (f"report.json and metrics.csv disagree (`divergence_step` {rep['divergence_step']}, "
                f"last step {len(rows) - 1})")
    for key, value in derived.items():
        if io.json_safe(value) != rep.get(key):
            return (f"report.json and metrics.csv disagree (`{key}`: {rep.get(key)} in report.json, "
                    f"{io.json_safe(value)} from metrics.csv)")
    return ""


_NUMBERS = re.compile(r"[-+0-9.eEinfa,\n]*")  # digits, nan, inf, separators: what write_csv writes


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    """A number as report.json holds one: JSON's own, or nan / inf spelled as a string."""
    return (isinstance(x, (int, float)) and not isinstance(x, bool)) or x in ("nan", "inf", "-inf")


# What the report and the plots read, and of what type: a report.json that passes is safe to
# show (a wrong type there would otherwise fail `gradlab report` far from its cause).
_REPORT_FIELDS = (
    ("run_id", lambda x: isinstance(x, str), "a string"), ("seed", _is_int, "an integer"),
    ("variant", lambda x: isinstance(x, str), "a string"), ("variant_index", _is_int, "an integer"),
    ("method", lambda x: isinstance(x, str), "a string"),
    ("threshold", lambda x: x is None or _is_number(x), "a number or null"),
    ("diverged", lambda x: isinstance(x, bool), "true or false"),
    ("divergence_step", lambda x: x is None or _is_int(x), "an integer or null"),
    ("first_nonfinite", lambda x: x is None or (isinstance(x, dict) and _is_int(x.get("step"))
                                                and isinstance(x.get("phase"), str) and isinstance(x.get("where"), str)),
     "null or an object with step, phase and where"),
    ("max_grad_norm", lambda x: x is None or _is_number(x), "a number or null"),
    ("final_loss", lambda x: x is None or _is_number(x), "a number or null"),
    ("steps_completed", lambda x: _is_int(x) and x >= 0, "a non-negative integer"),
    ("clip_fraction", lambda x: _is_number(x) and not isinstance(x, str), "a number"),
    ("steps", lambda x: _is_int(x) and x >= 1, "a positive integer"),
)


def rule_problem(rule, rep: Optional[dict] = None) -> str:
    """What is wrong with report.json's `rule` descriptor (the README's report.json section),
    or "". With `rep`, it must agree with the report's own method and threshold."""
    if not isinstance(rule, dict):
        return "not an object"
    if not isinstance(rule.get("method"), str) or not isinstance(rule.get("label"), str):
        return "no method or label string"
    if not isinstance(rule.get("knobs"), dict):
        return "`knobs` is not an object"
    swept = rule.get("swept", "absent")
    if swept is not None and not (isinstance(swept, dict) and isinstance(swept.get("knob"), str)
                                  and (swept.get("value") is None or _is_number(swept.get("value")))):
        return "`swept` is neither null nor an object with a knob name and a number"
    if swept is not None and rule["knobs"].get(swept["knob"], swept.get("value")) != swept.get("value"):
        return f"`swept` says {swept['knob']} {swept.get('value')}, its knobs {rule['knobs'].get(swept['knob'])}"
    if rep is not None:
        if rule["method"] != rep.get("method"):
            return f"its method {rule['method']} is not the run's {rep.get('method')}"
        value = swept.get("value") if swept else None
        if value != rep.get("threshold"):
            return f"its swept value {value} is not the run's threshold {rep.get('threshold')}"
    return ""


def _report_problem(rep, rid: str) -> str:
    """What is wrong with a run's report.json, or ""."""
    if not isinstance(rep, dict):
        return f"a JSON {type(rep).__name__}, not an object"
    for key, ok, what in _REPORT_FIELDS:
        if key not in rep:
            return f"no `{key}`"
        if not ok(rep[key]):
            return f"`{key}` is not {what}"
    if rep["run_id"] != rid:
        return f"it is the report of run {rep['run_id']}"
    own = f"{rep['variant']}-s{rep['seed']}"
    if "grid" in rep:
        why = _grid_problem(rep["grid"])
        if why:
            return f"`grid` {why}"
        from .points import grid_run_id

        own = grid_run_id(rep["grid"], own)
    if rid != own:
        return f"its variant{', grid point' if 'grid' in rep else ''} and seed make run {own}"
    if not rep["diverged"] == (rep["divergence_step"] is not None) == (rep["first_nonfinite"] is not None):
        return "`diverged`, `divergence_step` and `first_nonfinite` disagree"
    # Optional: runs of a gradlab before rules described themselves are whole; the report
    # reads their rule from config.yaml.
    if "rule" in rep and rule_problem(rep["rule"], rep):
        return f"`rule`: {rule_problem(rep['rule'], rep)}"
    # Optional: runs of a gradlab that did not record it are whole, of an unknown environment.
    if "environment" in rep and environment.problem(rep["environment"]):
        return f"`environment`: {environment.problem(rep['environment'])}"
    return ""


def _grid_problem(point) -> str:
    """What is wrong with report.json's `grid` (the run's grid point), or ""."""
    if not isinstance(point, dict) or not point:
        return "is not an object of key paths and values"
    for key in point:
        if not key or not all(key.split(".")):
            return f"has {key!r}, not a key path"
    return ""


def _grid_order(grid) -> Callable[[dict], tuple]:
    """Sort key of a report by its grid point: the position of each value on its axis, in the
    config's order (the first axis slowest); a run without a point first."""
    axes = {k: [json.dumps(v, sort_keys=True) for v in vs] for k, vs in grid.items()} \
        if isinstance(grid, dict) and all(isinstance(v, list) for v in grid.values()) else {}

    def key(rep: dict) -> tuple:
        point = rep.get("grid") or {}
        return tuple(vs.index(j) if (j := json.dumps(point.get(k), sort_keys=True)) in vs else len(vs)
                     for k, vs in axes.items())

    return key


def _csv_problem(path: Path, rows: Optional[int], required: tuple[str, ...],
                 parsed: Optional[list] = None) -> str:
    """What is wrong with a CSV that write_csv wrote, or "": its header, the number of its
    rows (when known), the values in each row, steps counting 0, 1, 2, ... (numeric files).
    With `parsed` (a numeric file), its header and rows of floats are appended to it."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError):
        return "not readable text"
    if not text:
        return "empty"
    if not text.endswith("\n"):
        return "cut short (its last line is incomplete)"
    header, *lines = text[:-1].split("\n")
    columns = header.split(",")
    if columns[0] != "step" or not set(required) <= set(columns) or (rows is None and columns != list(required)):
        return "its first line is not the header gradlab writes"
    if rows is not None and len(lines) != rows:
        return f"{len(lines)} rows where report.json says {rows}"
    for i, line in enumerate(lines):
        if line.count(",") != len(columns) - 1:
            return f"row {i + 1} has {line.count(',') + 1} values, not {len(columns)}"
        if rows is not None and not line.startswith(f"{i},"):
            return f"row {i + 1} is not step {i}"
    if rows is not None and not _NUMBERS.fullmatch(text, len(header) + 1):
        return "a value is not a number"
    if parsed is not None:
        try:
            parsed += [columns, [[float(v) for v in line.split(",")] for line in lines]]
        except ValueError:  # characters of numbers in an order that is not one (`1e.-`)
            return "a value is not a number"
    return ""


def check_writable(out: Path) -> None:
    """Refuse an --out that cannot hold results, before anything is written."""
    out = Path(out)
    why = io.path_problem(out)
    if why:
        raise UserError(f"{clip_path(out)}: {why}", key="--out")
    probe = out
    while not probe.exists():
        if probe.is_symlink():  # lexists but not exists: a dangling link or a loop
            raise UserError(f"{clip_path(probe)} is a symbolic link that leads nowhere (dangling or a loop)",
                            key="--out")
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UserError(f"{probe} is a file, not a directory", key="--out")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"cannot write into {probe} (permission denied)", key="--out")


def write_run(exp: Path, result, config: str) -> None:
    """A run's files (run_files); report.json last, since its presence marks the run complete.
    `config`: the experiment's hash8, recorded so that a run always names its config."""
    write_files(exp, result.run_id, run_files(result, config))


def run_files(result, config: str) -> list[tuple[str, bytes]]:
    """A run's files as (name, bytes), in the order they are written, report.json last. Pure:
    a worker encodes its runs, and the one writer (write_files) only puts bytes on disk."""
    files = [("metrics.csv", io.csv_text(result.columns, result.metrics_rows)),
             ("layer_norms.csv", io.csv_text(["step", *result.param_names], result.layer_rows))]
    if result.flow_rows:
        files.append(("bptt_norms.csv", io.csv_text(["step", "layer", "t", "grad_norm"], result.flow_rows)))
    if getattr(result, "attention_rows", None):
        files.append((ATTENTION_CSV, io.csv_text(result.attention_columns, result.attention_rows)))
    if getattr(result, "underflow_rows", None):
        files.append((UNDERFLOW_CSV, io.csv_text(["step", *result.param_names], result.underflow_rows)))
    files.append(("report.json", io.dumps_json({**result.report(), "config_hash": config})))
    return [(name, text.encode("utf-8")) for name, text in files]


def write_files(exp: Path, rid: str, files: Iterable[tuple[str, bytes]]) -> None:
    """Write the files of run `rid` (from run_files), each atomically, in their order."""
    d = run_dir(exp, rid)
    for leftover in d.glob(".*.tmp"):  # from a process killed mid-write
        leftover.unlink(missing_ok=True)
    for name, data in files:
        io.write_bytes(d / name, data)


def collect_reports(exp: Path, damaged: Optional[list[tuple[str, str]]] = None) -> list[dict]:
    """Every complete run's report, in config order (seed, then variant). Damaged runs are
    left out (and redone by the next run); with `damaged`, (run id, what is wrong) of each
    is appended to it."""
    reports, h = [], config_hash_of(exp)
    grid = _config_grid(exp)
    for path in run_reports(exp):
        rid = _rid_of(exp, path)
        state, why, rep = _check_run(exp, rid, h)
        if state == "complete" and (grid is None) != ("grid" not in rep or rep["grid"] is None):
            state, why = "damaged", ("report.json: it has a `grid` point, its config has no grid" if grid is None
                                     else "report.json: no `grid` point in an experiment with a grid")
        elif state == "complete" and grid is not None and list(rep["grid"]) != list(grid):
            state, why = "damaged", f"report.json: its `grid` has the keys {', '.join(rep['grid'])}, not the config's"
        if state == "complete":
            reports.append(rep)
        elif damaged is not None:
            damaged.append((rid, why))
    order = _grid_order(grid)
    return sorted(reports, key=lambda r: (order(r), r["seed"], r["variant_index"]))


def _config_grid(exp: Path) -> Optional[dict]:
    """config.yaml's `grid` (None without one, or when the file is unreadable)."""
    import yaml

    try:
        data = io.read_yaml(exp / "config.yaml")
    except (OSError, ValueError, TypeError, yaml.YAMLError):
        return None
    grid = data.get("grid") if isinstance(data, dict) else None
    return grid if isinstance(grid, dict) else None


def planned_runs(exp: Path) -> Optional[list[str]]:
    """The run ids config.yaml plans, in config order; None when config.yaml is unreadable."""
    import yaml

    from .config import ExperimentConfig
    from .config.grid import planned
    from .io import read_yaml

    try:
        cfg = ExperimentConfig.model_validate(read_yaml(exp / "config.yaml"))
        return [r.run_id for r in planned(cfg)]
    except (OSError, ValueError, yaml.YAMLError, UserError):  # pydantic's ValidationError is a ValueError
        return None


def write_summary(exp: Path, reports: Optional[list[dict]] = None,
                  warn: Callable[[str], None] = lambda text: None, fresh: Iterable[str] = ()) -> list[dict]:
    """(Re)write summary.json from the complete runs: it is derived from them, never trusted.

    An old summary.json that contradicts them (unreadable, not a list of reports, a run
    twice or one the config lacks, an entry unlike its run's report.json) is named in a
    warning; one that only lags behind (runs finished since, e.g. after kill -9, or runs no
    longer complete) is rebuilt quietly. `fresh`: runs just computed, whose old entries may
    differ (--force). Returns the reports.
    """
    reports = collect_reports(exp) if reports is None else reports
    path = exp / "summary.json"
    text = io.dumps_json(reports)
    try:
        old: Optional[bytes] = path.read_bytes()
    except FileNotFoundError:
        old = None
    except OSError:
        old = b""
    if old != text.encode("utf-8"):
        why = "" if old is None else _summary_problem(old, reports, planned_runs(exp), set(fresh))
        if why:
            warn(f"summary.json: {why}; rebuilt from the runs")
        io.write_text(path, text)
    return reports


def complete_runs(exp: Path, doing: str, warn: Callable[[str], None]) -> list[dict]:
    """For `plot` and `report`: the complete runs' reports. Each damaged run is named in a
    warning and left out; summary.json is rebuilt from the rest. None complete: a UserError
    (one line, nothing written)."""
    damaged: list[tuple[str, str]] = []
    reports = collect_reports(exp, damaged)
    if not reports:
        of = f", {len(damaged)} of them damaged" if damaged else ""
        raise UserError(f"no complete run to {doing} yet ({len(planned_runs(exp) or damaged)} not finished{of})",
                        file=str(exp))
    for rid, why in damaged:
        warn(f"run {rid}: its files are damaged ({why}); left out until `gradlab run` computes it again")
    write_summary(exp, reports, warn)
    return reports


def _summary_problem(old: bytes, reports: list[dict], planned: Optional[list[str]], fresh: set[str]) -> str:
    """What makes an old summary.json contradict the runs, or "" when it merely lags behind."""
    try:
        entries = json.loads(old.decode("utf-8"))
    except ValueError:
        return "not readable JSON (cut short or overwritten)"
    if not isinstance(entries, list):
        return f"a JSON {type(entries).__name__}, not a list of runs"
    by_id = {r["run_id"]: r for r in reports}
    seen: set[str] = set()
    for entry in entries:
        rid = entry.get("run_id") if isinstance(entry, dict) else None
        if not isinstance(rid, str):
            return "an entry is not a run's report"
        if rid in seen:
            return f"run {rid} appears twice"
        seen.add(rid)
        if planned is not None and rid not in planned:
            return f"it lists run {rid}, which the config does not have"
        if rid in by_id and rid not in fresh and io.dumps_json(entry) != io.dumps_json(by_id[rid]):
            return f"its entry for run {rid} differs from runs/{rid}/report.json"
    return ""


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
        for leftover in [*exp.glob(".*.tmp"), *exp.glob("*/.*.tmp"), *exp.glob("runs/*/.*.tmp"),
                         *exp.glob("runs/*/*/.*.tmp")]:
            leftover.unlink(missing_ok=True)  # from a process killed mid-write
        yield
    finally:
        try:
            owner.unlink(missing_ok=True)
        except OSError:  # a folder turned read-only: the write that failed first is the news
            pass
        lock.release()


def find_experiment(path: Optional[Path], out: Path | str = "outputs") -> Path:
    """An experiment directory given on the command line, or the one under `out` whose last
    run was written most recently (config.yaml is written once, so its time says nothing of
    a rerun or --force)."""
    for given, what in ((path, None), (out, "--out")):
        why = io.path_problem(given) if given is not None else None
        if why:
            raise UserError(f"{clip_path(given)}: {why}" if what else why, key=what,
                            file=None if what else clip_path(given))
    if path is None:
        root = Path(out)
        cands = [d.parent for d in root.glob("*/config.yaml")] if root.is_dir() else []
        if not cands:
            raise UserError(f"no experiment found under {root}/; run `gradlab run CONFIG` first",
                            file=str(root))
        return max(cands, key=last_written)
    path = Path(path)
    if not path.exists():
        raise UserError("no such experiment directory", file=str(path))
    if not path.is_dir():
        raise UserError("is a file; expected an experiment directory (outputs/<name>-<hash8>/)", file=str(path))
    if not (path / "config.yaml").is_file():
        raise UserError("not a gradlab experiment directory (no config.yaml)", file=str(path))
    return path


def last_written(exp: Path) -> float:
    """When the experiment's newest run (or, before any, its config.yaml) was written."""
    times = []
    for path in [exp / "config.yaml", *run_reports(exp)]:
        try:
            times.append(path.stat().st_mtime)
        except OSError:
            continue
    return max(times, default=0.0)
