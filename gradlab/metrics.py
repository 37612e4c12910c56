"""What a run records per step, kept in preallocated arrays and turned into its files' rows.

One Recorder serves the whole stack of a seed; columns are indexed by the variant's place
in the stack at the start, so dropping a diverged variant never shifts another's record.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Optional, Sequence

import numpy as np

from .records import DIAGNOSTIC_COLUMNS, INTEGER_COLUMNS, METRIC_COLUMNS, summarize, underflow_worst


# Columns a run adds when it measures something (train.precision.measure_underflow,
# train.measure_smoothness), after every rule's own.
MEASURED = ("underflow", "smoothness")


@dataclass
class StepValues:
    """Per-variant values of one step, arrays over the current stack."""

    loss: np.ndarray
    stats: dict[str, np.ndarray]  # the transforms' per-variant statistics, by metrics.csv column
    norms: np.ndarray  # (n_tensors, V): each tensor's gradient L2 norm before clipping
    accuracy: Optional[np.ndarray] = None
    flow: Optional[dict[str, np.ndarray]] = None  # layer -> (V, T): norm of dL/dh_t
    update_norm: Optional[np.ndarray] = None
    # The step's learning rate (gradlab.schedules): one for the stack, or (V,) when the
    # variants' hyperparameters differ.
    lr: Optional[float | np.ndarray] = None
    # model.diagnostics and the loss's stats by name: (V,) or per block (V, depth); {} or None
    # for a model without them.
    diag: Optional[dict[str, np.ndarray]] = None

    def take(self, idx) -> "StepValues":
        """The values of a subset of the variants."""
        def part(f, v):
            if v is None or (f == "lr" and not isinstance(v, np.ndarray)):
                return v
            if f == "stats":
                return {k: a[idx] for k, a in v.items()}
            if f == "norms":
                return v[:, idx]
            if f in ("flow", "diag"):
                return {k: a[idx] for k, a in v.items()}
            return v[idx]
        return replace(self, **{f.name: part(f.name, getattr(self, f.name)) for f in fields(self)})


def _number(x) -> float:
    """A float, every NaN the one `math.nan`: lists compare their items by identity first, so
    two runs' rows with a NaN in the same place (a step not evaluated) compare equal."""
    return math.nan if x != x else float(x)


class Recorder:
    def __init__(self, steps: int, n_variants: int, param_names: Sequence[str], accuracy: bool = False,
                 extra: Sequence[Sequence[str]] = ()) -> None:
        """`extra`: per variant, the metrics.csv columns its rule adds (`skipped`)."""
        extra = [tuple(e) for e in extra] or [()] * n_variants
        union = tuple(dict.fromkeys(c for e in extra for c in e))
        # The measurements last, whichever variant comes first: a variant's columns are in the
        # same order in a stack as alone (a skip rule's `skipped` before `smoothness`).
        union = tuple(c for c in union if c not in MEASURED) + tuple(c for c in MEASURED if c in union)
        # `lr` after grad_cosine: the store requires METRIC_COLUMNS only, so runs written before
        # schedules existed (without `lr`) stay readable.
        # The held-out columns last: runs written before they existed lack them and still load.
        self.all_columns = (METRIC_COLUMNS + ("grad_cosine", "lr") + union + (("accuracy",) if accuracy else ())
                            + ("val_loss",) + (("val_accuracy",) if accuracy else ()))
        # Each variant's file has the columns of its own rule only.
        self._columns = [tuple(c for c in self.all_columns if c not in union or c in e) for e in extra]
        self.param_names = list(param_names)
        self.values = np.full((steps, n_variants, len(self.all_columns) - 1), np.nan)
        self.layer = np.full((steps, n_variants, len(self.param_names)), np.nan)
        self.rows = np.zeros(n_variants, dtype=np.int64)
        # Gradient flow through time: the first healthy step and the latest healthy one.
        self.flow_first: dict[int, tuple[int, dict]] = {}
        self.flow_last: dict[int, tuple[int, dict]] = {}
        # The diagnostics, (steps, n_variants, blocks or 1) by name: allocated at the first
        # step that has any, since which ones a model and its loss produce shows only then.
        self.steps, self.n_variants = steps, n_variants
        self.diag: dict[str, np.ndarray] = {}
        self.per_block: list[str] = []  # those given per block, (V, depth): attention.csv's
        # underflow.csv's table, each tensor's fraction lost (steps, n_variants, tensors), for
        # runs that measure it (their rule columns name `underflow`).
        self.underflow = (np.full((steps, n_variants, len(self.param_names)), np.nan)
                          if "underflow" in union else None)

    @property
    def variant_columns(self) -> list[tuple[str, ...]]:
        """Each variant's metrics.csv header: its rule's columns, then the diagnostics."""
        return [c + tuple(self.diag) for c in self._columns]

    @property
    def columns(self) -> tuple[str, ...]:
        """The columns of a stack whose variants all have the same ones (the first variant's)."""
        return self.variant_columns[0] if self.variant_columns else self.all_columns

    def log(self, step: int, ids: np.ndarray, v: StepValues, nonfinite=None) -> None:
        """One row for each variant in `ids` (their places in the initial stack)."""
        row = self.values[step]
        own = {"loss": v.loss, "update_norm": np.nan if v.update_norm is None else v.update_norm,
               "nonfinite": 0.0 if nonfinite is None else nonfinite,
               "accuracy": np.nan if v.accuracy is None else v.accuracy,
               "lr": np.nan if v.lr is None else v.lr,
               # NaN on the steps not evaluated; log_eval fills the others. The same for the
               # steps whose underflow or smoothness is not measured.
               "val_loss": np.nan, "val_accuracy": np.nan, "underflow": v.stats.get("underflow", np.nan),
               "smoothness": v.stats.get("smoothness", np.nan)}
        s = v.stats
        for k, name in enumerate(self.all_columns[1:]):
            # The rules' stats by name; a column a rule does not report (skipped) is 0 there.
            row[ids, k] = own[name] if name in own else s.get(name, 0.0)
        self.layer[step, ids] = v.norms.T
        if self.underflow is not None and "underflow_tensors" in s:
            self.underflow[step, ids] = s["underflow_tensors"]
        self.rows[ids] = step + 1
        if v.diag:
            self._log_diag(step, ids, v.diag)

    def _log_diag(self, step: int, ids: np.ndarray, diag: dict[str, np.ndarray]) -> None:
        if not self.diag:
            # Known names only, in DIAGNOSTIC_COLUMNS' order: a model's new statistic gets a
            # column (and a summary) when it is given one there, not by accident.
            for name in (n for n in DIAGNOSTIC_COLUMNS if n in diag):
                if diag[name].ndim == 2:
                    self.per_block.append(name)
                width = diag[name].shape[1] if diag[name].ndim == 2 else 1
                self.diag[name] = np.full((self.steps, self.n_variants, width), np.nan)
        for name, a in self.diag.items():
            a[step, ids] = np.asarray(diag[name], dtype=np.float64).reshape(len(ids), -1)

    def _diag_scalar(self, name: str, v: int) -> np.ndarray:
        """metrics.csv's value of a diagnostic per step: over the blocks, the largest attention
        logit and the mean entropy."""
        a = self.diag[name][: int(self.rows[v]), v]
        if name not in self.per_block:
            return a[:, 0]
        return a.max(axis=1) if name == "max_attn_logit" else a.mean(axis=1)

    def log_eval(self, step: int, ids: np.ndarray, loss: np.ndarray, acc: Optional[np.ndarray]) -> None:
        """The held-out loss (and accuracy) of the variants in `ids` after this step's update."""
        row = self.values[step]
        names = self.all_columns[1:]
        row[ids, names.index("val_loss")] = loss
        if acc is not None and "val_accuracy" in names:
            row[ids, names.index("val_accuracy")] = acc

    def log_flow(self, step: int, ids: np.ndarray, flow: Optional[dict[str, np.ndarray]]) -> None:
        """Keep dL/dh_t norms of a healthy step: the first one seen and the latest."""
        if flow is None:
            return
        for pos, i in enumerate(ids):
            snap = (step, {layer: a[pos].copy() for layer, a in flow.items()})
            self.flow_first.setdefault(int(i), snap)
            self.flow_last[int(i)] = snap

    def metrics_rows(self, v: int) -> list[list]:
        names = self.all_columns[1:]
        mine = [k for k, name in enumerate(names) if name in self._columns[v]]
        diag = [self._diag_scalar(name, v) for name in self.diag]
        return [[s] + [int(x) if names[k] in INTEGER_COLUMNS and math.isfinite(x) else _number(x)
                       for k, x in ((k, self.values[s, v, k]) for k in mine)]
                + [float(d[s]) for d in diag]
                for s in range(int(self.rows[v]))]

    def attention_columns(self) -> list[str]:
        """attention.csv's header: step, then each per-block diagnostic block by block
        (block.0.max_attn_logit, block.1.max_attn_logit, ..., block.0.attn_entropy, ...);
        [] for a model without per-block diagnostics."""
        names = [f"block.{i}.{name}" for name in self.per_block for i in range(self.diag[name].shape[2])]
        return ["step", *names] if names else []

    def attention_rows(self, v: int) -> list[list]:
        if not self.per_block:
            return []
        table = np.concatenate([self.diag[name][:, v] for name in self.per_block], axis=1)
        return [[s, *map(float, table[s])] for s in range(int(self.rows[v]))]

    def underflow_rows(self, v: int) -> list[list]:
        """underflow.csv's rows (step, then each tensor's fraction), one per step like
        metrics.csv; [] for a run that does not measure it."""
        if self.underflow is None:
            return []
        return [[s, *map(_number, self.underflow[s, v])] for s in range(int(self.rows[v]))]

    def layer_rows(self, v: int) -> list[list]:
        return [[s, *map(float, self.layer[s, v])] for s in range(int(self.rows[v]))]

    def flow_rows(self, v: int) -> list[list]:
        """Rows of bptt_norms.csv: step, layer, t, norm of dL/dh_t (first and last healthy step)."""
        snaps = [self.flow_first[v]] if v in self.flow_first else []
        if v in self.flow_last and self.flow_last[v][0] != snaps[0][0]:
            snaps.append(self.flow_last[v])
        return [[step, layer, t, float(x)] for step, flows in snaps for layer, a in flows.items()
                for t, x in enumerate(a)]

    def summary(self, v: int) -> dict:
        """max_grad_norm, final_loss, steps_completed, clip_fraction (and final_accuracy),
        from the rows metrics.csv gets, by the rule the run store checks them with."""
        columns, rows = self.variant_columns[v], self.metrics_rows(v)
        out = summarize(columns, rows)
        if self.underflow is not None:
            out.update(underflow_worst(self.param_names, self.underflow_rows(v), columns, rows))
        return out
