"""A grid experiment's stack: some (point, variant) pairs of one seed, trained and named.

Each point's config is the one the loader built (as `gradlab run --set KEY=VALUE` builds it);
the points of one stack differ only in hyperparameters (gradlab.config.grid.stack_key) and
reach train_seed as one config per variant. The results come back named by their points
(`lr=0.1/norm-1-s0`, report.json's `grid`); nothing is written here, so that whatever trains
them (a worker process, this one) hands them to the one writer as it would a plain run's.
"""

from __future__ import annotations

from typing import Callable, Sequence

from .config import ExperimentConfig


def train_points(cfg: ExperimentConfig, seed: int, group: Sequence[tuple[int, int]],
                 on_step: Callable[[int], None] | None = None) -> list:
    """Train the (point index, variant index) pairs `group` of seed `seed` as one stack and
    return their RunResults, in the order of `group`, each with its point's run id and `grid`."""
    from .config.grid import grid_points, grid_run_id
    from .train import train_seed  # the engine is needed only here, not by `validate`

    points = grid_points(cfg)
    configs = [points[k][1] for k, _ in group]
    clips = [c.clipping[i] for c, (_, i) in zip(configs, group)]
    # Labelled by their place in the group (train_seed returns them in that order); one
    # point's stack needs no per-variant configs, and gets none (the engine before them).
    more = {"configs": configs} if len({k for k, _ in group}) > 1 else {}
    results = train_seed(configs[0], seed, clips, list(range(len(group))), on_step=on_step, **more)
    for r in results:
        k, i = group[r.variant_index]
        r.variant_index, r.run_id, r.grid = i, grid_run_id(points[k][0], r.run_id), dict(points[k][0])
    return results
