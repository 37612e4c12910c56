"""What a grid experiment says about stability: its cells, the stable range of each axis, the
learning-rate sensitivity of Wortsman et al. 2023, the report's grid table and finding.

A grid experiment (config.yaml's `grid:`, `gradlab sweep --grid`) runs every point of its
axes x every clipping variant x every seed. Everything here is read from the runs' reports
(`grid`, `variant`, `diverged`, `final_loss`, `final_val_loss`) and config.yaml's `grid:` (the
axes' order and values); the loss at initialisation, which the sensitivity needs, from the
first row of a run's metrics.csv. Pure Python: `gradlab report` needs no NumPy for it, and the
plots (gradlab.plots.grid) draw the very numbers the table prints.

Decisions, each documented where it is made:

- The clipping variants are one more axis, `clipping`, after the grid's own.
- A cell is one value per axis; its seeds are its runs. A diverged run has no final loss (its
  report keeps its last finite one, which is no result): a cell's mean loss is over the seeds
  that did not diverge, and the cell says how many diverged.
- A run trained when it did not diverge and ended below its loss at initialisation ℓ₀ (where
  ℓ₀ is known): a run that stays finite at a loss no better than its start learnt nothing, and
  "the largest learning rate that trained" must not count it (a clipped run at a huge
  learning rate often does just that: every step capped, never diverging, never learning).
- A view of fewer axes than the grid has (a stability map of two axes out of three, a
  sensitivity curve) shows, for each of its cells, the best cell over the other axes' values:
  the most seeds that trained, then the lowest mean loss.
- The loss is the held-out one (`final_val_loss`) where the task has one, else `final_loss`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from .io import as_float, json_safe
from .points import short_names  # the names of the run ids' point labels: `lr`, `betas.0`
from .sweeps import sweep_rows

CLIPPING = "clipping"  # the axis of the clipping variants


# ----------------------------------------------------------------------------- axes


@dataclass
class Axis:
    key: str  # the full key path (`train.optimizer.lr`), or CLIPPING
    name: str  # its short name: the last path component, the full path where two axes share it
    values: list  # in the config's order (variants: baseline first, then by threshold)

    @property
    def numeric(self) -> bool:
        return all(_number(v) is not None for v in self.values)

    @property
    def logarithmic(self) -> bool:
        """Positive values spanning a decade or more (a learning rate, a threshold): shown on a
        log scale, their ratios compared."""
        xs = [_number(v) for v in self.values]
        return self.numeric and all(x > 0 for x in xs) and max(xs) / min(xs) >= 10

    def label(self, value: Any) -> str:
        return fmt_value(value)


def _number(v: Any) -> Optional[float]:
    if isinstance(v, bool):
        return None
    x = as_float(v) if isinstance(v, (int, float)) else None
    return x if x is not None and math.isfinite(x) else None


def fmt_value(v: Any) -> str:
    """0.03, 8, tanh, true: as the point labels of the run ids write them."""
    if isinstance(v, bool):
        return str(v).lower()
    x = _number(v)
    if x is not None:
        return f"{x:g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, separators=(",", ":"))
    return str(v)


def _canon(v: Any) -> str:
    """A value as one comparable string: 8 and 8.0 alike (YAML and JSON may spell them apart)."""
    x = _number(v)
    return repr(x) if x is not None else json.dumps(json_safe(v), sort_keys=True)


def grid_spec(cfg: Any) -> dict[str, list]:
    """config.yaml's `grid:` (key path -> values, in order); {} for an experiment without one."""
    if hasattr(cfg, "resolved"):
        cfg = cfg.resolved()
    grid = cfg.get("grid") if isinstance(cfg, dict) else None
    if not isinstance(grid, dict):
        return {}
    return {str(k): list(v) for k, v in grid.items() if isinstance(v, (list, tuple))}


def is_grid(reports: Iterable[dict], cfg: Any = None) -> bool:
    """A grid experiment: the config has `grid:`, or its runs record a grid point."""
    return bool(grid_spec(cfg)) or any(isinstance(r.get("grid"), dict) for r in reports)


# ----------------------------------------------------------------------------- cells


def loss_key(reports: Iterable[dict]) -> str:
    """The loss every view shows: the held-out one where the task has one (a run of a task
    with held-out data records final_val_loss), else the training loss."""
    return "final_val_loss" if any("final_val_loss" in r for r in reports) else "final_loss"


@dataclass
class Cell:
    """The runs (one per seed) at one value of each axis of a view."""

    runs: list[dict] = field(default_factory=list)
    key: str = "final_loss"
    at: dict = field(default_factory=dict)  # axis key -> value: where the cell is in the full grid
    l0: Any = None  # run -> its loss at initialisation, or None (Grid.initial_loss)

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def diverged(self) -> int:
        return sum(1 for r in self.runs if r.get("diverged"))

    def learnt(self, run: dict) -> bool:
        """Did not diverge, and ended below its loss at initialisation (when that is known)."""
        if run.get("diverged"):
            return False
        l0 = self.l0(run) if self.l0 is not None else None
        x = as_float(run.get(self.key))
        return l0 is None or (x is not None and math.isfinite(x) and x < l0)

    @property
    def trained(self) -> int:
        return sum(1 for r in self.runs if self.learnt(r))

    @property
    def stalled(self) -> int:
        """Seeds that stayed finite but ended no better than at initialisation."""
        return self.n - self.diverged - self.trained

    @property
    def stable(self) -> bool:
        """Trained in every seed (and has a seed)."""
        return self.n > 0 and self.trained == self.n

    @property
    def losses(self) -> list[float]:
        """The final losses of the seeds that trained (a held-out loss that overflowed is none)."""
        out = []
        for r in self.runs:
            x = as_float(r.get(self.key))
            if not r.get("diverged") and x is not None and math.isfinite(x):
                out.append(x)
        return out

    @property
    def mean(self) -> Optional[float]:
        xs = self.losses
        return math.fsum(xs) / len(xs) if xs else None

    def rank(self) -> tuple:
        """Smaller is better: the larger share of seeds that trained, then the lower mean loss."""
        share = self.trained / self.n if self.n else -1.0
        mean = self.mean
        return (-share, mean if mean is not None else math.inf)


@dataclass
class Grid:
    """The runs of a grid experiment, by cell of every axis (the grid's, then clipping)."""

    axes: list[Axis]
    key: str  # the loss shown: final_val_loss or final_loss
    cells: dict[tuple, list[dict]]  # canonical values, one per axis -> the runs (one per seed)
    seeds: list
    exp_dir: Optional[Path] = None
    _l0: dict = field(default_factory=dict, repr=False)  # run id -> its loss at initialisation

    @property
    def grid_axes(self) -> list[Axis]:
        return [a for a in self.axes if a.key != CLIPPING]

    @property
    def clipping(self) -> Axis:
        return self.axes[-1]

    def axis(self, key: str) -> Axis:
        return next(a for a in self.axes if a.key == key)

    def view(self, keys: Sequence[str]) -> dict[tuple, Cell]:
        """The cells of a view of these axes (values in the axes' order): at each, the best cell
        over the other axes' values (the most seeds trained, then the lowest mean loss; the
        first in the grid's order on a tie). A combination no run has is an empty cell."""
        idx = [next(i for i, a in enumerate(self.axes) if a.key == k) for k in keys]
        order = [{_canon(v): j for j, v in enumerate(a.values)} for a in self.axes]
        best: dict[tuple, Cell] = {}
        # In the grid's order, so that the first of equal cells wins.
        for canon in sorted(self.cells, key=lambda c: [order[i].get(x, len(order[i])) for i, x in enumerate(c)]):
            full = [self.axes[i].values[order[i][x]] for i, x in enumerate(canon)]
            cell = Cell(self.cells[canon], self.key, {a.key: v for a, v in zip(self.axes, full)}, self.initial_loss)
            at = tuple(canon[i] for i in idx)
            if at not in best or cell.rank() < best[at].rank():
                best[at] = cell
        out: dict[tuple, Cell] = {}
        for values in product(*(self.axes[i].values for i in idx)):
            at = tuple(_canon(v) for v in values)
            out[values] = best.get(at) or Cell([], self.key, dict(zip(keys, values)), self.initial_loss)
        return out

    def curve(self, axis: str, variant: str) -> list[tuple[Any, Cell]]:
        """One variant along one grid axis: (value, cell) in the axis's order."""
        view = self.view([axis, CLIPPING])
        return [(v, view[(v, variant)]) for v in self.axis(axis).values]

    def best(self) -> Optional[Cell]:
        """The best cell of the whole grid among those that trained in every seed."""
        cells = [c for c in self.view([a.key for a in self.axes]).values() if c.stable and c.mean is not None]
        return min(cells, key=lambda c: c.mean) if cells else None

    def initial_loss(self, run: dict) -> Optional[float]:
        """ℓ₀ of a run, read once (every view of a variant asks for it again)."""
        rid = run.get("run_id")
        if rid not in self._l0:
            self._l0[rid] = initial_loss(run, self.exp_dir)
        return self._l0[rid]


def build(reports: Sequence[dict], cfg: Any = None, exp_dir: Optional[Path] = None) -> Optional[Grid]:
    """The grid of an experiment; None when it is not one. The axes and their values in
    config.yaml's order; values only the runs have (a config changed since) after them."""
    reports = [r for r in reports if isinstance(r.get("grid"), dict)]
    spec = grid_spec(cfg)
    if not spec and not reports:
        return None
    keys = list(spec)
    for r in reports:
        keys += [k for k in r["grid"] if k not in keys]
    values: dict[str, list] = {k: list(spec.get(k, [])) for k in keys}
    for k in keys:
        seen = {_canon(v) for v in values[k]}
        extra = [r["grid"][k] for r in reports if k in r["grid"] and _canon(r["grid"][k]) not in seen]
        extra = list({_canon(v): v for v in extra}.values())
        values[k] += sorted(extra, key=lambda v: (_number(v) is None, _number(v) or 0.0, fmt_value(v)))
    names = short_names(keys)
    seeds, rows = sweep_rows(reports, cfg if cfg is not None else {})
    variants = [row.variant for row in rows]
    axes = [Axis(k, names[k], values[k]) for k in keys] + [Axis(CLIPPING, CLIPPING, variants)]
    cells: dict[tuple, list[dict]] = {}
    for r in reports:
        point = tuple(_canon(r["grid"].get(k)) for k in keys) + (_canon(r["variant"]),)
        cells.setdefault(point, []).append(r)
    return Grid(axes=axes, key=loss_key(reports), cells=cells, seeds=seeds, exp_dir=exp_dir)


# ----------------------------------------------------------------------------- sensitivity


def initial_loss(run: dict, exp_dir: Optional[Path]) -> Optional[float]:
    """ℓ₀, the loss at initialisation: the loss of the run's step 0 (metrics.csv's first row:
    the initial weights' loss on the first batch, before any update). None when unreadable."""
    if exp_dir is None or not isinstance(run.get("run_id"), str):
        return None
    try:
        with open(Path(exp_dir) / "runs" / run["run_id"] / "metrics.csv", encoding="utf-8") as fh:
            header = fh.readline().rstrip("\n").split(",")
            first = fh.readline().rstrip("\n").split(",")
        x = float(first[header.index("loss")])
    except (OSError, ValueError, IndexError):
        return None
    return x if math.isfinite(x) else None


def clamped(run: dict, key: str, l0: float) -> float:
    """min(ℓ, ℓ₀): a run's final loss, no worse than at initialisation; a diverged run (no
    final loss) counts as ℓ₀, as it does in Wortsman et al.'s min."""
    x = as_float(run.get(key))
    if run.get("diverged") or x is None or not math.isfinite(x):
        return l0
    return min(x, l0)


def lr_sensitivity(curve: Sequence[Sequence[tuple[dict, float]]], key: str) -> Optional[float]:
    """The learning-rate sensitivity of Wortsman et al. 2023 ("Small-scale proxies for
    large-scale Transformer training instabilities", section 2.2), of one curve:

        LR sensitivity = E_η [ min(ℓ(η), ℓ₀) − ℓ* ],   ℓ* = min_η ℓ(η)

    ℓ(η) the final loss trained at learning rate η, ℓ₀ the loss at initialisation; the
    expectation is over the sweep's learning rates (the paper's are log-spaced), so it is the
    mean over the axis's values as given. The clamp at ℓ₀ makes a diverged run cost what no
    training at all would, and no more. Over seeds: ℓ(η) is the mean over the seeds of each
    seed's min(ℓ, ℓ₀) (ℓ₀ the seed's own), and ℓ* the least of those means.

    `curve`: per axis value, its (run, ℓ₀) pairs, one per seed. None when a value has no run
    or a run has no ℓ₀."""
    means = []
    for runs in curve:
        if not runs or any(l0 is None for _, l0 in runs):
            return None
        means.append(math.fsum(clamped(r, key, l0) for r, l0 in runs) / len(runs))
    if not means:
        return None
    best = min(means)
    return math.fsum(m - best for m in means) / len(means)


def sensitivity(grid: Grid, axis: str, variant: str) -> Optional[float]:
    """One variant's sensitivity along one grid axis (each value's best cell over the other axes)."""
    curve = [[(r, grid.initial_loss(r)) for r in cell.runs] for _, cell in grid.curve(axis, variant)]
    return lr_sensitivity(curve, grid.key)


def sensitivity_axis(grid: Grid) -> Optional[Axis]:
    """The axis the summary number is about: the learning rate's when the grid has one (the
    paper's), else the first logarithmic axis, else the first numeric one."""
    axes = grid.grid_axes
    return (next((a for a in axes if a.key.endswith(".lr") or a.key == "lr"), None)
            or next((a for a in axes if a.logarithmic), None) or next((a for a in axes if a.numeric), None))


# ----------------------------------------------------------------------------- stable ranges


def stable_values(grid: Grid, axis: str, variant: str) -> list:
    """The axis's values at which the variant trained in every seed (at the best value of the
    other axes)."""
    return [v for v, cell in grid.curve(axis, variant) if cell.stable]


def range_text(axis: Axis, good: list) -> str:
    """'0.001-0.03' (an unbroken run of a numeric axis's values), '0.01, 0.3' (broken; any
    run of names), 'none'."""
    if not good:
        return "none"
    ix = [i for i, v in enumerate(axis.values) if _canon(v) in {_canon(g) for g in good}]
    if len(ix) == 1:
        return axis.label(axis.values[ix[0]])
    if ix[-1] - ix[0] + 1 == len(ix) and axis.numeric:  # (a-b of names would read as one name)
        return f"{axis.label(axis.values[ix[0]])}-{axis.label(axis.values[ix[-1]])}"
    return ", ".join(axis.label(axis.values[i]) for i in ix)


def _largest(axis: Axis, good: list) -> Optional[float]:
    xs = [_number(v) for v in good]
    return max(xs) if xs else None


def _baseline(grid: Grid) -> Optional[str]:
    """The unclipped variant (the runs' method `none`)."""
    for (_, runs) in grid.cells.items():
        for r in runs:
            if r.get("method") == "none":
                return r["variant"]
    return None


def _factor(x: float) -> str:
    """10x, 3.3x, 1.5x: the widening factor, two significant digits at most."""
    return f"{float(f'{x:.2g}'):g}x"


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def axis_finding(grid: Grid, axis: Axis) -> str:
    """One sentence on one grid axis: per variant the largest value that trained in every seed
    (at the best value of the other axes), and how far clipping moved it against the unclipped
    baseline: "without clipping the largest lr that trained in every seed was 0.03; with
    `norm-1` it was 0.3, with `norm-10` 0.1: clipping (`norm-1`) widened the stable range 10x"."""
    variants = grid.clipping.values
    base = _baseline(grid)
    name = axis.name
    if not axis.numeric:  # no largest value to compare: which values trained
        parts = [f"{'without clipping' if v == base else f'with `{v}`'} {range_text(axis, stable_values(grid, axis.key, v))}"
                 for v in variants]
        return f"The {name} values that trained in every seed: " + "; ".join(parts) + "."
    largest = {v: _largest(axis, stable_values(grid, axis.key, v)) for v in variants}
    clipped = [v for v in variants if v != base]
    if all(x is None for x in largest.values()):
        what = "with or without clipping" if base is not None and clipped else "in any variant"
        return f"No {name} trained in every seed, {what}."
    g = lambda x: f"{x:g}"  # noqa: E731
    if base is not None and clipped and len(set(largest.values())) == 1:
        return (f"The largest {name} that trained in every seed was {g(largest[base])} with and without clipping: "
                "clipping did not widen the stable range.")
    words = []
    if base is not None:
        words.append(f"without clipping the largest {name} that trained in every seed was {g(largest[base])}"
                     if largest[base] is not None else f"without clipping no {name} trained in every seed")
    first = True
    for v in clipped:
        x = largest[v]
        if x is None:
            words.append(f"with `{v}` none")
        elif first and base is None:
            words.append(f"with `{v}` the largest {name} that trained in every seed was {g(x)}")
        elif first:
            words.append(f"with `{v}` {'it' if largest[base] is not None else 'the largest'} was {g(x)}")
        else:
            words.append(f"with `{v}` {g(x)}")
        first = first and x is None
    text = words[0] + ("; " + ", ".join(words[1:]) if len(words) > 1 else "")
    good = {v: x for v, x in largest.items() if v in clipped and x is not None}
    if base is None or not good:
        return text[0].upper() + text[1:] + ("; clipping did not make any of it train" if base is not None else "") + "."
    top = max(good.values())
    best = [v for v in clipped if good.get(v) == top]
    who = _join([f"`{v}`" for v in best])
    if largest[base] is None:
        tail = f"clipping ({who}) made it train up to {g(top)}"
    elif top > largest[base]:
        tail = f"clipping ({who}) widened the stable range {_factor(top / largest[base])}"
    elif top == largest[base]:
        tail = "clipping did not widen the stable range"
    else:
        tail = f"clipping narrowed the stable range (at best {g(top)}, {_factor(largest[base] / top)} lower)"
    return text[0].upper() + text[1:] + ": " + tail + "."


def finding(reports: Sequence[dict], cfg: Any = None, exp_dir: Optional[Path] = None) -> str:
    """report.md's grid finding: one sentence per numeric grid axis (the stable range and what
    clipping did to it), then the best cell. "" when not a grid."""
    grid = build(reports, cfg, exp_dir)
    if grid is None:
        return ""
    n = len(grid.seeds)
    shape = " x ".join(f"{len(a.values)} {a.name}" for a in grid.axes)
    head = f"Grid of {shape} over {n} seed{'s' if n != 1 else ''}"
    if not grid.cells:
        return head + ": no run has finished yet."
    sentences = [axis_finding(grid, a) for a in grid.grid_axes]
    best = grid.best()
    if best is not None:
        where = ", ".join(f"{a.name} {a.label(best.at[a.key])}" for a in grid.grid_axes)
        clip = best.at[CLIPPING]
        what = "no clipping" if clip == _baseline(grid) else f"`{clip}`"
        sentences.append(f"The best cell: {where}, {what} (mean {_loss_name(grid.key)} {best.mean:.3g} "
                         f"over {best.n} seed{'s' if best.n != 1 else ''}).")
    else:
        sentences.append("No cell trained in every seed.")
    return head + ". " + " ".join(sentences)


def _loss_name(key: str) -> str:
    return "final held-out loss" if key == "final_val_loss" else "final loss"


# ----------------------------------------------------------------------------- table


def table(reports: Sequence[dict], cfg: Any = None, exp_dir: Optional[Path] = None) -> list[str]:
    """report.md's grid table: per clipping variant, the cells that trained in every seed, the
    stable range of each grid axis, and the LR sensitivity (Wortsman et al. 2023) along the
    learning-rate axis (else the first numeric one)."""
    grid = build(reports, cfg, exp_dir)
    if grid is None or not grid.cells:
        return []
    sens = sensitivity_axis(grid)
    full = grid.view([a.key for a in grid.axes])
    header = ["variant", "stable cells"] + [f"stable {a.name}" for a in grid.grid_axes]
    header += [f"{'LR' if sens.key.endswith('lr') else sens.name} sensitivity"] if sens is not None else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for v in grid.clipping.values:
        cells = [c for values, c in full.items() if values[-1] == v and c.n]
        row = [v, f"{sum(c.stable for c in cells)}/{len(cells)}"]
        row += [range_text(a, stable_values(grid, a.key, v)) for a in grid.grid_axes]
        if sens is not None:
            s = sensitivity(grid, sens.key, v)
            row.append("-" if s is None else f"{s:.3g}")
        lines.append("| " + " | ".join(row) + " |")
    return lines


def table_note(grid_key: str) -> str:
    return ("`stable cells`: the cells (one value of each axis) that trained in every seed, of those "
            "that ran; `stable <axis>`: the values at which the variant trained in every seed at the best "
            "value of the other axes. The LR sensitivity is Wortsman et al.'s (2023) E_η[min(ℓ(η), ℓ₀) − ℓ*]: "
            f"the mean over the axis's values of the {_loss_name(grid_key)} (the mean over seeds, each clamped "
            "at its loss at initialisation ℓ₀; a diverged run counts as ℓ₀) above the best of them, ℓ*; "
            "0 is a loss that does not depend on the axis at all.")
