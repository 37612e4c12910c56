"""A grid point's names: its label (`lr=0.1,depth=8`) and its runs' ids (`lr=0.1/norm-1-s0`).

Pure functions of the point ({key path: value}, as report.json's `grid` holds it), without
the schema: the run store checks a run's id by them and the plots title a point's figures."""

from __future__ import annotations

import itertools
import json
import math
from typing import Any, Optional, Sequence


def label_value(v: Any) -> str:
    """A value as it appears in a run id: numbers like the variant ids' thresholds (0.1, 1e-05),
    exactly when that short form would lose digits, a list's items joined by +; never a `/`."""
    if isinstance(v, bool) or v is None:
        text = "null" if v is None else str(v).lower()
    elif isinstance(v, float):
        short = f"{v:g}" if math.isfinite(v) else ("inf" if v > 0 else "nan")  # as config.format_threshold
        text = short if not math.isfinite(v) or float(short) == v else repr(v)
    elif isinstance(v, list):
        text = "+".join(label_value(x) for x in v)
    elif isinstance(v, dict):
        text = json.dumps(v, sort_keys=True, separators=(",", ":"))
    else:
        text = str(v)
    return text.replace("/", "_").replace("\0", "_") or "''"


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """Each axis' name in labels: its last key (with the list index after it: `betas.0`), the
    full path where two axes would share it."""
    def short(key: str) -> str:
        parts = key.split(".")
        i = len(parts) - 1
        while i > 0 and parts[i].isdigit():
            i -= 1
        return ".".join(parts[i:])

    names = [short(k) for k in keys]
    return {k: (k if names.count(n) > 1 else n) for k, n in zip(keys, names)}


def point_label(point: dict) -> str:
    """`lr=0.1,depth=8`: the point's values in axis order."""
    names = short_names(list(point))
    return ",".join(f"{names[k]}={label_value(v)}" for k, v in point.items())


def grid_run_id(point: Optional[dict], rid: str) -> str:
    """A run's id in a grid experiment: `<point label>/<variant id>-s<seed>`; unchanged without a grid."""
    return f"{point_label(point)}/{rid}" if point else rid


def points_of(grid: dict) -> list[dict]:
    """The grid's points, first axis slowest."""
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]
