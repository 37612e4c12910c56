"""What the plots draw: the complete runs of an experiment, as gradlab.experiment validated them.

There is one reader of runs in gradlab, `experiment.collect_reports`: a run is drawn only when
its report.json agrees with its metrics.csv and with the experiment's config (a run that
`gradlab report` would leave out is never plotted either). Here only the numbers the figures
need are added to those reports: metrics.csv as arrays, the config as plain data, the variants
in the order and colours every figure shares.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from gradlab.io import as_float as _num
from gradlab.io import read_csv

from .describe import as_int, describe_config
from .style import variant_colors, variant_order

if TYPE_CHECKING:
    import numpy as np


@dataclass
class Run:
    """One complete run: its validated report.json and its metrics as arrays."""

    run_id: str
    path: Path
    seed: int
    variant: str
    method: str
    threshold: Optional[float]
    norm_type: Optional[float]
    diverged: bool
    divergence_step: Optional[int]
    first_nonfinite: Optional[dict]
    final_loss: Optional[float]
    steps: int
    steps_completed: int
    clip_fraction: Optional[float] = None
    report: dict = field(default_factory=dict)
    _metrics: Optional[dict[str, np.ndarray]] = field(default=None, repr=False)

    # Read when a figure needs them, not when the run is listed: deciding that nothing is to
    # be redrawn (a rerun of a complete experiment) must not cost a read of every run.
    @property
    def metrics(self) -> dict[str, np.ndarray]:
        if self._metrics is None:
            header, table = read_table(self.path / "metrics.csv")
            self._metrics = {col: table[:, i] for i, col in enumerate(header)}
        return self._metrics

    @property
    def columns(self) -> list[str]:
        """metrics.csv's header, without reading its rows."""
        if self._metrics is not None:
            return list(self._metrics)
        with open(self.path / "metrics.csv", encoding="utf-8") as fh:
            return fh.readline().rstrip("\n").split(",")


@dataclass
class Experiment:
    path: Path
    summary: str
    steps: Optional[int]
    runs: list[Run]
    seeds: list[int]
    variants: list[str]
    variant_info: dict[str, tuple[str, Optional[float], Optional[float]]]
    config: dict = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)  # variant -> its descriptor's label
    _colors: Optional[dict[str, Any]] = field(default=None, repr=False)

    @property
    def colors(self) -> dict[str, Any]:
        """variant -> colour: the colormaps need matplotlib, loaded only when drawing."""
        if self._colors is None:
            self._colors = variant_colors(self.variants, self.variant_info)
        return self._colors


def read_table(path: Path) -> tuple[list[str], np.ndarray]:
    """A numeric CSV as (header, 2-D float array); empty when the file is unreadable (a
    layer_norms.csv is checked for its rows and header only, not for every value)."""
    import numpy as np

    try:
        header, rows = read_csv(path)
    except (OSError, StopIteration, ValueError):
        return [], np.zeros((0, 0))
    width = len(header)
    rows = [r for r in rows if len(r) == width]
    return header, np.array(rows, dtype=float).reshape(len(rows), width)


def read_config(exp_dir: Path) -> dict:
    """config.yaml as plain data ({} when unreadable: the runs were validated without it, and
    a figure without its subtitle is better than none)."""
    import yaml

    from gradlab.io import read_yaml

    try:
        cfg = read_yaml(exp_dir / "config.yaml")
    except (OSError, ValueError, yaml.YAMLError):  # missing, not text, not YAML
        return {}
    return cfg if isinstance(cfg, dict) else {}


def load_experiment(exp_dir: Path, only: Optional[set[str]] = None, reports: Optional[list[dict]] = None,
                    config: Optional[dict] = None) -> Experiment:
    """The experiment's complete runs (with `only`, of those run ids) and its config.

    `reports`: the runs' reports as `collect_reports` returned them, when the caller has them
    already (`gradlab run` and `plot` do): validating every run twice per command would cost
    as much as drawing a figure."""
    from gradlab.sweeps import sweep_rows

    if reports is None:
        from gradlab.store import collect_reports

        reports = collect_reports(exp_dir)
    if only is not None:
        reports = [r for r in reports if r["run_id"] in only]
    cfg = read_config(exp_dir) if config is None else config
    runs = [make_run(exp_dir / "runs" / r["run_id"], r) for r in reports]
    train = cfg.get("train") if isinstance(cfg.get("train"), dict) else {}
    steps = as_int(train.get("steps")) or max((r.steps for r in runs), default=0) or None

    # The config's variants are there before their runs finish: a variant keeps its colour
    # while the rest of the experiment is still running. sweeps.sweep_rows reads them for
    # the sweep table too, so that table and figures never name a variant differently.
    _, rows = sweep_rows(reports, cfg)
    info = {row.variant: (row.method, row.threshold, row.norm_type if row.method == "norm" else None) for row in rows}
    variants = sorted(info, key=lambda v: variant_order(v, info[v]))
    return Experiment(
        path=exp_dir,
        summary=describe_config(cfg, exp_dir.name),
        steps=steps,
        runs=runs,
        seeds=sorted({r.seed for r in runs}),
        variants=variants,
        variant_info=info,
        config=cfg,
        labels={row.variant: row.label for row in rows},
    )


def make_run(folder: Path, rep: dict) -> Run:
    method = rep["method"]
    norm_type = _num(rep.get("norm_type")) if method == "norm" else None
    return Run(
        run_id=rep["run_id"],
        path=folder,
        seed=rep["seed"],
        variant=rep["variant"],
        method=method,
        threshold=_num(rep["threshold"]),
        norm_type=2.0 if method == "norm" and norm_type is None else norm_type,
        diverged=rep["diverged"],
        divergence_step=rep["divergence_step"],
        first_nonfinite=rep["first_nonfinite"],
        final_loss=_num(rep["final_loss"]),
        steps=rep["steps"],
        steps_completed=rep["steps_completed"],
        clip_fraction=_num(rep["clip_fraction"]),
        report=rep,
    )
