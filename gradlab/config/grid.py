"""Grid sweeps: an experiment's `grid:` (key path -> two or more values), its points, their
configs, labels and run ids, and which points can share a stack.

A grid point sets its keys exactly as `--set KEY=VALUE` would, on the config as the file (and
the options) wrote it, not on the resolved form: defaults that depend on other values (a
transformer's max_len from the task's seq_len, the init scheme of a model kind, the defaults
of an optimizer kind) are then those a plain `gradlab run --set KEY=VALUE` gets. Every point
is validated and size-checked when the config is loaded, so that a bad value is refused
before anything runs, naming the option (or the file's line), the key and the value.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

from gradlab.errors import UserError, clip

from gradlab.points import grid_run_id, label_value, point_label, points_of, short_names  # noqa: F401

from .base import KeyPath
from .messages import _show

GRID_OPTION = "--grid"
# Keys a grid cannot vary: the seeds are the experiment's own axis, the name and the grid
# are the experiment's identity.
RESERVED = ("name", "seed", "seeds", "grid", "grid_sha256")
# A bound on typos (three axes of a hundred values): every point is built and checked when the
# config is loaded, about 1.5 ms each, so 10,000 points take 15 s before anything trains.
MAX_GRID_POINTS = 10_000


@dataclass(frozen=True)
class Axis:
    """One grid axis as given: its key path, its values (parsed as `--set` parses), and
    where it came from (`--grid KEY=...`, or the config file's line)."""

    key: str
    values: tuple
    option: bool  # given as --grid (else written in the file's grid:)
    line: Optional[int] = None  # the file's line of the key (file axes)

    @property
    def parts(self) -> list[str]:
        return self.key.split(".")


def parse_option(text: str) -> Axis:
    """`--grid KEY=V1,V2,...`: the values are read as the items of a YAML flow list, each as
    `--set` reads a value (`0.1`, `1e-3`, `true`, `[0.9, 0.99]`, a quoted string)."""
    from .loading import _parse_yaml

    key, eq, raw = text.partition("=")
    parts = [p.strip() for p in key.split(".")]
    if not eq or not all(parts):
        raise UserError("expected KEY.PATH=V1,V2,..., e.g. --grid train.optimizer.lr=0.01,0.1",
                        file=GRID_OPTION, key=clip(text))
    key = ".".join(parts)
    if not raw.strip():
        raise UserError("an empty list of values; a grid axis takes two or more, e.g. 0.01,0.1",
                        file=GRID_OPTION, key=key)
    try:
        values, _ = _parse_yaml(f"[{raw}]", f"{GRID_OPTION} {clip(text)}")
    except UserError as e:
        raise UserError(f"cannot read {_show(raw)} as values separated by commas ({e.message})",
                        file=GRID_OPTION, key=key) from None
    if not isinstance(values, list):  # `1] + [2`: the brackets closed inside the text
        raise UserError(f"cannot read {_show(raw)} as values separated by commas", file=GRID_OPTION, key=key)
    return Axis(key, tuple(values), option=True)


def file_axes(grid: Any, file: str, lines: dict[KeyPath, int]) -> list[Axis]:
    """The file's `grid:` mapping as axes, each problem naming the file, `grid.KEY` and its line."""
    if grid is None:
        return []
    if not isinstance(grid, dict):
        raise UserError("must be a mapping of key paths to lists of values, e.g. `train.optimizer.lr: [0.01, 0.1]`",
                        file=file, key="grid", line=lines.get(("grid",)))
    axes = []
    for key, values in grid.items():
        line = lines.get(("grid", key))
        parts = [p.strip() for p in str(key).split(".")]
        if not all(parts):
            raise UserError("expected a key path such as train.optimizer.lr", file=file, key=f"grid.{clip(key)}",
                            line=line)
        if not isinstance(values, list):
            raise UserError(f"must be a list of two or more values, got {_show(values)}", file=file,
                            key=f"grid.{clip(key)}", line=line)
        axes.append(Axis(".".join(parts), tuple(values), option=False, line=line))
    return axes


def merge_axes(from_file: list[Axis], options: list[Axis], overrides: Sequence[str], file: str) -> list[Axis]:
    """The file's axes, each `--grid` replacing the file's axis of its key (in the file's
    order) or added after them. Refused: an axis given twice on the command line, one inside
    another, a reserved key, one value, duplicates, a key that `--set` sets too."""
    axes = list(from_file)
    seen: set[str] = set()
    for a in options:
        if a.key in seen:
            raise UserError("given twice; give each axis once, with all its values", file=GRID_OPTION, key=a.key)
        seen.add(a.key)
        at = next((i for i, b in enumerate(axes) if b.key == a.key), None)
        if at is None:
            axes.append(a)
        else:
            axes[at] = a
    set_keys = {".".join(p.strip() for p in o.partition("=")[0].split(".")): o for o in overrides}
    for i, a in enumerate(axes):
        where = _where(a, file)
        if a.parts[0] in RESERVED:
            what = "--seeds" if a.parts[0] in ("seed", "seeds") else None
            raise UserError(f"a grid cannot vary `{a.parts[0]}`" + (f"; seeds are an axis of their own ({what})"
                                                                   if what else ""), **where)
        inner = next((b for b in axes[:i] + axes[i + 1:] if _inside(a.key, b.key)), None)
        if inner is not None:
            raise UserError(f"overlaps axis {inner.key}; an axis cannot hold another", **where)
        for k, o in set_keys.items():
            if _inside(a.key, k) or _inside(k, a.key) or k == a.key:
                raise UserError(f"--set {clip(o)} sets it too; give the key either to --set or to the grid", **where)
        if not a.values:
            raise UserError("an empty list of values; a grid axis takes two or more", **where)
        if len(a.values) == 1:
            raise UserError(f"one value ({_show(a.values[0])}); a grid axis takes two or more "
                            f"(--set {a.key}=... sets one)", **where)
        twice = _first_repeat([_canonical(v) for v in a.values])
        if twice is not None:
            raise UserError(f"{value_text(a.values[twice])} appears twice; each value once", **where)
    n = math.prod(len(a.values) for a in axes)
    if n > MAX_GRID_POINTS:
        raise UserError(f"{n:,} grid points; at most {MAX_GRID_POINTS:,} (each is built and checked before "
                        "anything runs)", **_where(axes[-1], file))
    return axes


def _where(a: Axis, file: str) -> dict:
    return {"file": GRID_OPTION, "key": a.key} if a.option else {"file": file, "key": f"grid.{a.key}", "line": a.line}


def _inside(a: str, b: str) -> bool:
    """Whether key path `a` lies strictly below `b`."""
    return a.startswith(b + ".")


def _canonical(v: Any) -> str:
    return json.dumps(v, sort_keys=True)


def _first_repeat(items: list) -> Optional[int]:
    return next((j for j, x in enumerate(items) if x in items[:j]), None)


def value_text(v: Any) -> str:
    """A grid value as a user writes it on the command line."""
    if isinstance(v, bool) or v is None:
        return "null" if v is None else str(v).lower()
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, list):
        return "[" + ",".join(value_text(x) for x in v) + "]"
    if isinstance(v, dict):
        return json.dumps(v, separators=(",", ":"))
    return clip(v, 40)


def source(a: Axis, value: Any) -> str:
    """What a point's value is called in the errors of its config: the option, with the value."""
    return f"{GRID_OPTION} {a.key}={value_text(value)}" if a.option else f"grid {a.key}={value_text(value)}"


def expand(axes: list[Axis], build: Callable[[list[tuple[Axis, Any]]], Any], size_check: Callable[[Any], None],
           file: str) -> tuple[dict[str, list], list[tuple[dict, Any]]]:
    """Every point's config, checked. `build([(axis, value), ...])` makes (and validates) the
    config of a point (or of some of its values), raising UserError; `size_check(cfg)` raises
    the memory check's UserError (naming no place) when it would not fit. A refusal names
    the value at fault and, when it is wrong only with the point's other values, those.

    Returns the grid in its canonical form (each value as the points' resolved configs hold
    it: `1` for a float key is 1.0) and the points, (point, config), first axis slowest."""
    def check(given: list[tuple[Axis, Any]]) -> Any:
        cfg = build(given)
        size_check(cfg)
        return cfg

    def alone_ok(a: Axis, v: Any) -> bool:
        try:
            check([(a, v)])
        except UserError:
            return False
        return True

    canonical: dict[str, list] = {a.key: [None] * len(a.values) for a in axes}
    built = []
    for combo in itertools.product(*(range(len(a.values)) for a in axes)):
        given = [(a, a.values[i]) for a, i in zip(axes, combo)]
        try:
            cfg = check(given)
        except UserError as e:
            # The axis that set the key the error is about, else one whose value alone fails.
            named = [(a, v) for a, v in given if e.file == source(a, v)]
            a, v = (named or [(a, v) for a, v in given if not alone_ok(a, v)] or given[-1:])[0]
            others = _with(given, a) if len(given) > 1 and alone_ok(a, v) else ""
            raise _refuse(e, a, v, others, file) from None
        for a, i in zip(axes, combo):
            if canonical[a.key][i] is None:
                canonical[a.key][i] = [resolved_value(cfg, a.parts, a.values[i])]
        built.append((combo, cfg))
    for a in axes:
        vals = canonical[a.key] = [c[0] for c in canonical[a.key]]
        keys = [_canonical(v) for v in vals]
        twice = _first_repeat(keys)
        if twice is not None:
            first = keys.index(keys[twice])
            raise UserError(f"{value_text(a.values[first])} and {value_text(a.values[twice])} are the same value "
                            f"({value_text(vals[twice])}) in the config; each value once", **_where(a, file))
        labels = [label_value(v) for v in vals]
        twice = _first_repeat(labels)
        if twice is not None:
            raise UserError(f"{value_text(a.values[labels.index(labels[twice])])} and {value_text(a.values[twice])} "
                            f"would name the same run folder ({labels[twice]}); choose values apart",
                            **_where(a, file))
    points = [({a.key: canonical[a.key][i] for a, i in zip(axes, combo)}, cfg) for combo, cfg in built]
    return canonical, points


def _refuse(e: UserError, a: Axis, value: Any, others: str, file: str) -> UserError:
    """A point's error, naming the axis' option (or the file's grid line), its key and the value."""
    if a.option:
        if e.file is None:  # not about a key of the config (the memory check)
            e.file, e.key = source(a, value), a.key
        e.message = e.message + others
        return e
    what = f"{e.key}: " if e.key and e.key != a.key else ""
    return UserError(f"{value_text(value)}{others}: {what}{e.message}", file=file, key=f"grid.{a.key}", line=a.line)


def _with(given: list[tuple[Axis, Any]], a: Axis) -> str:
    others = [f"{b.key}={value_text(v)}" for b, v in given if b is not a]
    return f" (with {', '.join(others)})" if others else ""


def resolved_value(cfg: Any, parts: Sequence[str], given: Any) -> Any:
    """The value at the key path in a point's resolved config (what config.yaml records), or
    the value as given when the resolved form leaves that key out (a default it omits)."""
    node: Any = cfg.resolved()
    for p in parts:
        if isinstance(node, list) and p.isdigit() and int(p) < len(node):
            node = node[int(p)]
        elif isinstance(node, dict) and p in node:
            node = node[p]
        else:
            return given
    return node


def points_digest(points: list[tuple[dict, Any]]) -> str:
    """16 hex digits of the sha256 of the points' resolved configs, in order: the resolved
    config's `grid_sha256`, so that its hash covers the points themselves."""
    import hashlib

    text = json.dumps([cfg.resolved() for _, cfg in points], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# ----------------------------------------------------------------------------- stacks


def stack_key(cfg: Any) -> tuple:
    """What must be equal for configs to train in one stack: everything but the seeds, the
    clipping list and the hyperparameters. Two configs with equal keys differ only in
    hyperparameters. The engine's own rule (gradlab.config.stacking), which train_seed's
    `configs` checks, so that a grid never groups what the engine would refuse."""
    from .stacking import stack_key as engine_key

    return engine_key(cfg)


# ----------------------------------------------------------------------------- points


def grid_points(cfg: Any) -> list[tuple[Optional[dict], Any]]:
    """(point, its config) of every point, first axis slowest; [(None, cfg)] without a grid.

    The loader built them from what the file and the options wrote (as `--set` does). A config
    read back from an experiment's config.yaml has only the resolved form: its points are built
    from that, which gives the same configs for every key whose defaults do not depend on others
    (enough for run ids; training always starts from load_config)."""
    if cfg.grid is None:
        return [(None, cfg)]
    if cfg._points is None:
        cfg._points = _points_from_resolved(cfg)
    return cfg._points


def _points_from_resolved(cfg: Any) -> list[tuple[dict, Any]]:
    import copy

    from pydantic import ValidationError

    from .loading import _Origins, _set_value
    from .messages import _user_error
    from .schema import ExperimentConfig

    base = cfg.resolved()
    base.pop("grid")
    base.pop("grid_sha256", None)
    out = []
    for point in points_of(cfg.grid):
        data, sources = copy.deepcopy(base), {}
        for key, value in point.items():
            _set_value(data, key.split("."), copy.deepcopy(value), f"grid {key}={value_text(value)}", sources, set())
        try:
            out.append((point, ExperimentConfig.model_validate(data)))
        except ValidationError as e:
            raise _user_error(e, data, _Origins("config.yaml", {}, sources)) from None
    return out


@dataclass(frozen=True)
class PlannedRun:
    """One run of an experiment: its point (None without a grid) and the point's index, the
    point's config, the seed and the variant's index in that config's clipping list."""

    point_index: int
    point: Optional[dict]
    cfg: Any
    seed: int
    variant_index: int

    @property
    def run_id(self) -> str:
        from .schema import run_id

        return grid_run_id(self.point, run_id(self.cfg.clipping[self.variant_index], self.seed))


def planned(cfg: Any) -> list[PlannedRun]:
    """Every run of the experiment in its order: point, then seed, then variant."""
    return [PlannedRun(k, point, pcfg, seed, i) for k, (point, pcfg) in enumerate(grid_points(cfg))
            for seed in pcfg.seeds for i in range(len(pcfg.clipping))]
