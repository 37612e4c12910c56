"""What a sweep costs against the single runs it replaces, measured in one run.

A sweep of 18 runs (the baseline plus 8 thresholds, x 2 seeds) of a small RNN on the adding
task (hidden 32, seq_len 50, batch 16, 100 steps) against the same 18 runs done one by one
(one variant, one seed each, in this process: no interpreter start-up is counted against
them; the ratios are against these). Also the sweep with lockstep off (variants one at a
time) and with one worker, so that the gain of each mechanism shows, and, for scale, the 18
runs as 18 `gradlab run` processes. Plots are left out of every timing.

    python benchmarks/sweep_bench.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gradlab.config import ExperimentConfig  # noqa: E402
from gradlab.experiment import run_experiment  # noqa: E402

THRESHOLDS = [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0]
SEEDS = [0, 1]


def config(**over) -> ExperimentConfig:
    base = dict(name="bench", model=dict(kind="rnn", depth=1, width=32, init=dict(scheme="orthogonal", gain=1.1)),
                task=dict(kind="adding", seq_len=50, batch_size=16),
                train=dict(steps=100, optimizer=dict(kind="sgd", lr=0.05, momentum=0.9)), seeds=SEEDS,
                sweep=dict(method="norm", thresholds=THRESHOLDS))
    base.update(over)
    return ExperimentConfig.model_validate(base)


def timed(fn) -> float:
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        fn(Path(out))
        return time.perf_counter() - t


def single_runs(out: Path) -> None:
    sweep = config()
    for seed in SEEDS:
        for clip in sweep.clipping:
            cfg = config(sweep=None, clipping=[clip.model_dump()], seeds=[seed])
            run_experiment(cfg, out, plots=False, workers=1)


def cli_runs(out: Path) -> None:
    """The same 18 runs as a user without `sweep` would do them: 18 `gradlab run` processes."""
    import subprocess
    import yaml

    sweep = config()
    for seed in SEEDS:
        for i, clip in enumerate(sweep.clipping):
            cfg = config(sweep=None, clipping=[clip.model_dump()], seeds=[seed], name=f"bench{i}")
            path = out / f"c{i}-{seed}.yaml"
            path.write_text(yaml.safe_dump(cfg.resolved()))
            subprocess.run([sys.executable, "-m", "gradlab.cli", "run", str(path), "--out", str(out / "o"),
                            "--quiet", "--no-plots", "--workers", "1"], check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="repeats of each measurement (median reported)")
    args = ap.parse_args()
    sweep = config()
    cores = os.cpu_count() or 1
    cases = {
        "18 single runs, one after another": single_runs,
        f"sweep: lockstep + {min(cores, len(SEEDS))} workers": lambda out: run_experiment(sweep, out, plots=False),
        "sweep: lockstep, 1 worker": lambda out: run_experiment(sweep, out, plots=False, workers=1),
        f"sweep: lockstep off, {min(cores, len(SEEDS))} workers": lambda out: run_experiment(sweep, out, plots=False, lockstep=False),
        "(18 `gradlab run` processes)": cli_runs,
    }
    timed(lambda out: run_experiment(config(train=dict(steps=5, optimizer=dict(kind="sgd", lr=0.05))), out,
                                     plots=False, workers=1))  # warm-up: imports, caches
    times = {name: [] for name in cases}
    for _ in range(args.repeats):  # interleaved, so that drift hits every case alike
        for name, fn in cases.items():
            times[name].append(timed(fn))
    base = statistics.median(times["18 single runs, one after another"])
    print(f"gradlab sweep benchmark: {len(sweep.clipping) * len(SEEDS)} runs of rnn hidden 32, adding T=50, "
          f"batch 16, 100 steps; {cores} cores; median of {args.repeats}")
    print(f"{'case':<40} {'seconds':>8} {'x single runs':>14}")
    for name, ts in times.items():
        m = statistics.median(ts)
        print(f"{name:<40} {m:8.2f} {m / base:14.3f}")
    ratio = statistics.median(times[next(k for k in cases if k.startswith("sweep: lockstep +"))]) / base
    print(f"goal: sweep <= 0.25x the single runs: {'met' if ratio <= 0.25 else 'MISSED'} ({ratio:.3f}x)")


if __name__ == "__main__":
    main()
