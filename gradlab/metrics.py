"""What a run records per step, kept in preallocated arrays and turned into its files' rows.

One Recorder serves the whole stack of a seed; columns are indexed by the variant's place
in the stack at the start, so dropping a diverged variant never shifts another's record.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

METRIC_COLUMNS = ("step", "loss", "grad_norm", "clipped_norm", "clip_coef", "clipped", "update_norm", "nonfinite")
_VALUES = METRIC_COLUMNS[1:]


class Recorder:
    def __init__(self, steps: int, n_variants: int, param_names: Sequence[str]) -> None:
        self.param_names = list(param_names)
        self.values = np.full((steps, n_variants, len(_VALUES)), np.nan)
        self.layer = np.full((steps, n_variants, len(self.param_names)), np.nan)
        self.rows = np.zeros(n_variants, dtype=np.int64)

    def log(self, step: int, ids: np.ndarray, loss, stats, update_norm, norms: np.ndarray,
            nonfinite: np.ndarray | None = None) -> None:
        """One row for each variant in `ids` (their places in the initial stack)."""
        row = self.values[step]
        for k, col in enumerate((loss, stats.grad_norm, stats.clipped_norm, stats.clip_coef,
                                 stats.clipped, update_norm)):
            row[ids, k] = col
        row[ids, 6] = 0.0 if nonfinite is None else nonfinite
        self.layer[step, ids] = norms.T
        self.rows[ids] = step + 1

    def metrics_rows(self, v: int) -> list[list]:
        return [[s] + [self._cell(k, x) for k, x in enumerate(self.values[s, v])]
                for s in range(int(self.rows[v]))]

    @staticmethod
    def _cell(k: int, x: float):
        # 0/1 columns are integers in the CSV, the rest floats.
        return int(x) if _VALUES[k] in ("clipped", "nonfinite") and math.isfinite(x) else float(x)

    def layer_rows(self, v: int) -> list[list]:
        return [[s, *map(float, self.layer[s, v])] for s in range(int(self.rows[v]))]

    def summary(self, v: int) -> dict:
        """max_grad_norm, final_loss, steps_completed, clip_fraction of variant v."""
        n = int(self.rows[v])
        vals = self.values[:n, v]
        healthy = vals[vals[:, 6] == 0]
        g = vals[:, 1][np.isfinite(vals[:, 1])]
        loss = healthy[:, 0][np.isfinite(healthy[:, 0])]
        return {
            "max_grad_norm": float(g.max()) if g.size else math.nan,
            "final_loss": float(loss[-1]) if loss.size else None,
            "steps_completed": int(len(healthy)),
            "clip_fraction": float(healthy[:, 4].mean()) if len(healthy) else 0.0,
        }
