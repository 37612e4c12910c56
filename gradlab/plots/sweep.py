"""A threshold sweep in an experiment: its clipping families and their runs by threshold.

The sweep is found by `report.sweep_rows`, the grouping the report's threshold x seed table
uses: table and figures cannot disagree on which variants make a family or in what order.
Pure Python: deciding which figures an experiment has needs no NumPy or matplotlib.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

from .describe import as_int
from .load import Experiment, Run
from .style import fmt

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
    norm_type: Optional[float]
    suffix: str  # a variant id's '-eps...' part: another eps is another family
    thresholds: list[float]
    runs: dict[tuple[Optional[int], float], Run]
    variants: dict[float, str]
    rows: dict[float, Any]  # threshold -> its report.SweepRow (the table's row)

    @property
    def color(self) -> Any:
        import matplotlib

        name, pos = FAMILY_LINE_COLORS.get(self.method, OTHER_LINE_COLOR)
        return matplotlib.colormaps[name](pos)

    @property
    def quantity(self) -> str:
        """What the threshold is: 'max_norm', 'max_norm (L1 norm)', 'clip_value'."""
        if self.method == "norm":
            p = "" if self.norm_type in (None, 2.0) else f" (L{fmt(self.norm_type)} norm)"
            return f"max_norm{p}" + (f" {self.suffix.lstrip('-')}" if self.suffix else "")
        return "clip_value" if self.method == "value" else f"{self.method} threshold"

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
    from gradlab.report import sweep_rows

    spec = exp.config.get("sweep") if isinstance(exp.config.get("sweep"), dict) else None
    swept = spec.get("method") if spec else None
    by_id = {r.run_id: r for r in exp.runs}
    groups: dict[tuple, list] = {}
    # In the table's order: by family, then by threshold.
    for row in sweep_rows([r.report for r in exp.runs], exp.config)[1]:
        if row.method != "none" and row.runs and _finite(row.threshold) and row.threshold > 0:
            groups.setdefault(row.family, []).append(row)
    families = []
    for (method, norm_type, eps), rows in groups.items():
        plain = norm_type in (None, 2.0) and not eps  # what `gradlab sweep` makes
        if len(rows) < 2 and not (swept == method and plain):
            continue
        families.append(Family(
            method=method, norm_type=norm_type, suffix=f"-eps{eps}" if eps else "",
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


