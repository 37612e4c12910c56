"""A threshold sweep in an experiment: its clipping families and their runs by threshold.

The sweep is found by `sweeps.sweep_rows`, the grouping the report's threshold x seed table
uses: table and figures cannot disagree on which variants make a family or in what order.
Pure Python: deciding which figures an experiment has needs no NumPy or matplotlib.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from .describe import as_int
from .load import Experiment, Run

SWEEP_PLOTS = ("sweep_final_loss.png", "sweep_divergence.png", "sweep_clip_fraction.png")
MAX_THRESHOLD_TICKS = 12  # more thresholds than this: the log axis's own ticks
MAX_BASELINE_LINES = 10  # the baseline's divergence steps drawn one by one up to this many
# The per-seed and mean lines of each clipping family on the threshold plots. Its runs keep
# their own colours (the mean's markers, the grad-norm plot's lines and colour bar).
FAMILY_LINE_COLORS = {"norm": ("viridis", 0.3), "value": ("YlOrRd", 0.85)}
OTHER_LINE_COLOR = ("cool", 0.75)
SEED_LINE = dict(linewidth=0.9, alpha=0.5)
MEAN_LINE = dict(linewidth=2.6)


@dataclass
class Family:
    """The runs of one clipping method at several thresholds: (seed, threshold) -> run."""

    method: str
    knob: str  # the swept knob, from the variants' descriptors
    title: str  # sweeps.family_names: the method, the knob, the fixed knobs telling it apart
    thresholds: list[float]
    runs: dict[tuple[Optional[int], float], Run]
    variants: dict[float, str]
    rows: dict[float, Any]  # threshold -> its sweeps.SweepRow (the table's row)

    @property
    def color(self) -> Any:
        import matplotlib

        name, pos = FAMILY_LINE_COLORS.get(self.method, OTHER_LINE_COLOR)
        return matplotlib.colormaps[name](pos)

    @property
    def norm_type(self) -> Optional[float]:
        """The norm a norm family clips (2 unless its runs say otherwise)."""
        return next(iter(self.rows.values())).norm_type if self.rows else None

    @property
    def quantity(self) -> str:
        """What the threshold is: 'max_norm', 'max_norm (norm_type 1)', 'clipping', 'z_thresh'."""
        return self.title[len(self.method) + 1:] if self.title.startswith(self.method + " ") else self.title

    @property
    def name(self) -> str:
        plain = {"norm": "max_norm", "value": "clip_value"}.get(self.method)
        return f"{self.method} clipping" + (f" {self.quantity}" if self.quantity != plain else "")

    def at(self, threshold: float) -> list[Run]:
        """The complete runs at one threshold, one per seed."""
        return [r for (_, t), r in self.runs.items() if t == threshold]


@dataclass
class Sweep:
    families: list[Family]
    baseline: list[Run]
    seeds: list[Optional[int]]
    total: Optional[int]  # the steps of a run that trains to the end

    @property
    def thresholds(self) -> list[float]:
        return sorted({t for f in self.families for t in f.thresholds})


def find_sweep(exp: Experiment) -> Optional[Sweep]:
    """The threshold sweep of an experiment: every clipping family with two or more
    thresholds among the complete runs, and the family a `sweep:` config entry names (even
    with one threshold); None when there is none (a plain run with one threshold each)."""
    from gradlab.sweeps import family_names, sweep_rows

    spec = exp.config.get("sweep") if isinstance(exp.config.get("sweep"), dict) else None
    swept = spec.get("method") if spec else None
    by_id = {r.run_id: r for r in exp.runs}
    groups: dict[tuple, list] = {}
    # In the table's order: by family, then by threshold.
    all_rows = sweep_rows([r.report for r in exp.runs], exp.config)[1]
    for row in all_rows:
        if row.method != "none" and row.runs and _finite(row.threshold) and row.threshold > 0:
            groups.setdefault(row.family, []).append(row)
    titles = family_names(all_rows)
    families = []
    for fam, rows in groups.items():
        # A `sweep:` entry makes its clipping list (the schema refuses any other): each of
        # its families is a sweep even at one threshold.
        if len(rows) < 2 and swept != fam[0]:
            continue
        families.append(Family(
            method=fam[0], knob=str(fam[1]), title=titles[fam],
            thresholds=[row.threshold for row in rows],
            runs={(seed, row.threshold): by_id[rep["run_id"]] for row in rows for seed, rep in row.runs.items()},
            variants={row.threshold: row.variant for row in rows}, rows={row.threshold: row for row in rows},
        ))
    if not families:
        return None
    total = exp.steps or max((r.steps or 0 for r in exp.runs), default=0) or None
    return Sweep(families=families, baseline=[r for r in exp.runs if r.method == "none"], seeds=exp.seeds, total=total)


def first_seed(exp: Experiment, sweep: Sweep) -> Optional[int]:
    """The config's first seed with a complete clipped run (else the smallest such seed)."""
    have = {s for f in sweep.families for (s, _) in f.runs}
    listed = exp.config.get("seeds") if isinstance(exp.config.get("seeds"), list) else []
    for s in [as_int(x) for x in listed] + sorted(s for s in have if s is not None):
        if s in have:
            return s
    return None


def _finite(x: Optional[float]) -> bool:
    return x is not None and math.isfinite(x)


