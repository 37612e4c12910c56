"""Lockstep across hyperparameters against separate stacks, measured in one run.

A grid of 5 learning rates x 4 clipping variants (none, norm at 0.1, 1 and 10), one seed,
trained three ways by `train_seed` (no files): the 20 variants as one stack whose variants
hold their own lr (`configs=`, gradlab.optim's per-variant hyperparameters); one stack per
learning rate (5 stacks of 4, what training without hyperparameter lockstep does); and the 20
variants one at a time. Shapes: a small MLP (depth 4, width 64, batch 32, teacher task, SGD
with momentum, 200 steps) and a small RNN (hidden 32, adding T = 50, batch 16, Adam, 100
steps). The three ways' numbers are checked equal, bit for bit, before anything is timed.

Timing: `--repeats` rounds, each running every way once in turn (interleaved, so that drift
hits all alike); the median seconds are shown, with the ratio to the separate stacks. Every
way trains on one BLAS thread (train_seed pins it). Not a test: pytest never imports it.

    python benchmarks/hyperstack_bench.py [--repeats 3] [--only mlp,rnn]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gradlab.config import ExperimentConfig, stack_key  # noqa: E402
from gradlab.train import train_seed  # noqa: E402

LRS = (0.001, 0.003, 0.01, 0.03, 0.1)
CLIPPING = [{"method": "none"}] + [{"method": "norm", "max_norm": t} for t in (0.1, 1.0, 10.0)]
SHAPES = {
    "mlp": dict(model=dict(kind="mlp", depth=4, width=64), task=dict(kind="teacher", batch_size=32, input_dim=8),
                train=dict(steps=200, optimizer=dict(kind="sgd", momentum=0.9))),
    "rnn": dict(model=dict(kind="rnn", depth=1, width=32), task=dict(kind="adding", batch_size=16, seq_len=50),
                train=dict(steps=100, optimizer=dict(kind="adam"))),
}


def points(shape: str) -> list[ExperimentConfig]:
    base = SHAPES[shape]
    out = []
    for lr in LRS:
        train = {**base["train"], "optimizer": {**base["train"]["optimizer"], "lr": lr}}
        out.append(ExperimentConfig.model_validate({**base, "name": "hb", "train": train, "clipping": CLIPPING}))
    assert len({stack_key(p) for p in out}) == 1
    return out


def one_stack(pts):
    clips = [c for p in pts for c in p.clipping]
    configs = [p for p in pts for _ in p.clipping]
    return train_seed(pts[0], 0, clips, list(range(len(clips))), configs=configs)


def separate_stacks(pts):
    return [r for p in pts for r in train_seed(p, 0)]


def single_runs(pts):
    return [train_seed(p, 0, [c], [0])[0] for p in pts for c in p.clipping]


WAYS = {"one stack of 20 (hyperparameter lockstep)": one_stack,
        "5 stacks of 4 (one per lr)": separate_stacks,
        "20 single runs": single_runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--only", default="mlp,rnn")
    args = ap.parse_args()
    for shape in args.only.split(","):
        pts = points(shape)
        rows = {name: way(pts) for name, way in WAYS.items()}
        first = [r.metrics_rows for r in rows[next(iter(WAYS))]]
        for name, results in rows.items():
            # NaNs are one object in the rows (gradlab.metrics), so == is bit for bit.
            assert [r.metrics_rows for r in results] == first, f"{shape}: {name} differs"
        times: dict[str, list[float]] = {name: [] for name in WAYS}
        for _ in range(args.repeats):
            for name, way in WAYS.items():
                t = time.perf_counter()
                way(pts)
                times[name].append(time.perf_counter() - t)
        ref = statistics.median(times["5 stacks of 4 (one per lr)"])
        print(f"\n{shape}: {SHAPES[shape]['model']} {SHAPES[shape]['task']} {SHAPES[shape]['train']}; "
              f"median of {args.repeats}, numbers equal bit for bit")
        print(f"{'way':45s} {'seconds':>8s} {'x separate stacks':>18s}")
        for name, ts in times.items():
            m = statistics.median(ts)
            print(f"{name:45s} {m:8.2f} {m / ref:18.3f}")


if __name__ == "__main__":
    main()
