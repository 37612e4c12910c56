"""A grid experiment's figures: which there are and what each shows (the drawing is in grid_plots).

- `stability_map.png`: one heatmap per pair of axes (the clipping variants are an axis, after
  the grid's own), a cell per pair of values, colour the mean final loss over the seeds that
  trained; a cell where seeds diverged says how many ("div 2/3") and is hatched (grey when
  every seed diverged); the best cell is outlined. With several pairs, one file per pair,
  `stability_map_<a>_<b>.png`.
- `sensitivity_<axis>.png`: the final loss against one grid axis, one line per clipping variant
  (Wortsman et al. 2023's learning-rate sensitivity view), their summary number in the key.

A view of fewer axes than the grid has shows at each of its cells the best cell over the
other axes (gradlab.stability says how cells are compared). Pure Python: deciding which
figures an experiment has needs no NumPy or matplotlib.
"""

from __future__ import annotations

from typing import Optional

from gradlab import stability

from .load import Experiment

MAP = "stability_map"
SENSITIVITY = "sensitivity"


def find_grid(exp: Experiment) -> Optional[stability.Grid]:
    """The grid of the experiment's complete runs; None when it is not a grid experiment."""
    reports = [r.report for r in exp.runs]
    if not stability.is_grid(reports, exp.config):
        return None
    return stability.build(reports, exp.config, exp.path)


def _file_part(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)


def figures(grid: stability.Grid) -> dict[str, tuple[str, tuple[str, ...]]]:
    """file name -> (kind, the axes' keys): the stability maps, one per pair of axes of two or
    more values (stability_map.png when there is one pair; a grid of one axis and one variant
    has a map of one row), then a sensitivity figure per grid axis of two or more values."""
    axes = [a for a in grid.axes if len(a.values) >= 2]
    pairs = [(a, b) for i, a in enumerate(axes) for b in axes[i + 1:]]
    if not pairs and grid.grid_axes:  # one axis of several values: a map of one row, its variant's
        first = next((a for a in axes if a.key != stability.CLIPPING), grid.grid_axes[0])
        pairs = [(first, grid.clipping)]
    out: dict[str, tuple[str, tuple[str, ...]]] = {}
    for a, b in pairs:
        name = f"{MAP}.png" if len(pairs) == 1 else f"{MAP}_{_file_part(a.name)}_{_file_part(b.name)}.png"
        out[name] = (MAP, (a.key, b.key))
    for a in axes:
        if a.key != stability.CLIPPING:
            out[f"{SENSITIVITY}_{_file_part(a.name)}.png"] = (SENSITIVITY, (a.key,))
    return out


def is_grid_figure(name: str) -> bool:
    return name.endswith(".png") and name.startswith((MAP, SENSITIVITY + "_"))
