"""What the executor seam costs and gives, measured in one run, interleaved, median of rounds.

1. Both cores for one seed: a one-seed, four-variant MLP (depth 32, width 256, batch 128,
   clipped by norm at 0.5, 1, 2 and 4; 100 steps) as one unit on one core (`--workers 1`,
   which is how every gradlab before units trained a single seed) against two units of two
   variants on two cores (the default on 2 cores). Goal (issue 17): at most 0.6x.
2. The single writer: how many finished 200-step runs (quickstart's network, eight variants
   of a seed) the `gradlab` process takes per second: unpickled as they arrive from a worker
   (already encoded there as the files' bytes), then written (three files each, atomically,
   fsync'd). Goal (issue 16): at least 50 runs/s.
3. With `--against DIR` (another checkout, e.g. one before the seam, where the workers wrote
   their runs themselves): the quickstart sweep (3 seeds x 3 variants, 300 steps) as
   `gradlab run --no-plots --quiet` processes of either checkout, so that the local pool's
   speed can be compared with the one it replaced.
4. With Dask installed: a grid sweep of 64 small runs (configs/lr_stability.yaml's network,
   4 lrs x baseline + 3 thresholds x 4 seeds, 200 steps) on the local pool of 2 workers against
   `--cluster local:2` (the cluster's start counted, and without it). Goal (issue 16): overhead
   at most 15%.

    python benchmarks/executor_bench.py [--rounds 3] [--against /path/to/other/checkout]
                                        [--only-units | --only-dask] [--steps 100]
"""

from __future__ import annotations

import argparse
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gradlab.config import ExperimentConfig, load_config  # noqa: E402
from gradlab.experiment import run_experiment  # noqa: E402


def one_seed_four_variants(steps: int = 100) -> ExperimentConfig:
    return ExperimentConfig.model_validate(dict(
        name="bench-units", seeds=[0],
        model=dict(kind="mlp", depth=32, width=256, activation="relu", init=dict(scheme="he", gain=1.0)),
        task=dict(kind="teacher", batch_size=128, input_dim=16, output_dim=1),
        train=dict(steps=steps, optimizer=dict(kind="sgd", lr=0.01, momentum=0.9)),
        clipping=[dict(method="norm", max_norm=t) for t in (0.5, 1.0, 2.0, 4.0)]))


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process and of the children it waited for)."""
    with tempfile.TemporaryDirectory() as out:
        c, t = os.times(), time.perf_counter()
        fn(Path(out))
        wall, c2 = time.perf_counter() - t, os.times()
        return wall, sum(c2[:4]) - sum(c[:4])


def writer_rate(n_runs: int = 96) -> float:
    """Runs per second through unpickle + store.write_run, in fresh run folders."""
    from gradlab.config import config_hash
    from gradlab.executors import encoded_unit
    from gradlab.store import write_files

    cfg = load_config(ROOT / "configs" / "quickstart.yaml", ["train.steps=200"], [0],
                      sweep={"method": "norm", "thresholds": [0.5, 1, 2, 3, 5, 10, 20], "baseline": True})
    blobs = [pickle.dumps(e) for e in encoded_unit(cfg, config_hash(cfg), 0, range(len(cfg.clipping)))]
    with tempfile.TemporaryDirectory() as out:
        t = time.perf_counter()
        for k in range(n_runs):
            rid, files = pickle.loads(blobs[k % len(blobs)])
            write_files(Path(out), f"{rid}-{k}", files)
        return n_runs / (time.perf_counter() - t)


def cli_run(tree: Path, out: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    subprocess.run([sys.executable, "-m", "gradlab.cli", "run", str(ROOT / "configs" / "quickstart.yaml"),
                    "--out", str(out), "--quiet", "--no-plots"], check=True, env=env, stdout=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3, help="rounds of every case (median reported)")
    ap.add_argument("--against", type=Path, help="another gradlab checkout to time the quickstart against")
    ap.add_argument("--only-units", action="store_true", help="only the one-seed cases and the writer")
    ap.add_argument("--only-dask", action="store_true", help="only the Dask cases and the writer")
    ap.add_argument("--steps", type=int, default=100, help="steps of the one-seed experiment")
    args = ap.parse_args()
    cfg = one_seed_four_variants(args.steps)
    one, two = "1 seed x 4 variants, 1 unit on 1 core", "1 seed x 4 variants, 2 units on 2 cores"
    cases = {} if args.only_dask else {
        one: lambda out: run_experiment(cfg, out, plots=False, workers=1),
        two: lambda out: run_experiment(cfg, out, plots=False, workers=2),
    }
    if args.against and not (args.only_units or args.only_dask):
        cases["quickstart, gradlab run (this checkout)"] = lambda out: cli_run(ROOT, out)
        cases[f"quickstart, gradlab run ({args.against})"] = lambda out: cli_run(args.against, out)
    if not args.only_units and _has_dask():
        # A grid, so that the units are (point, variant) stacks as a grid sweep cuts them.
        sweep = load_config(ROOT / "configs" / "lr_stability.yaml", ["train.steps=200"], list(range(4)),
                            sweep={"method": "norm", "thresholds": [0.1, 1, 10], "baseline": True},
                            grid=["train.optimizer.lr=0.01,0.03,0.1,0.3"])
        assert len(sweep.seeds) * len(sweep.clipping) * 4 == 64
        cases["64-run grid, local pool of 2"] = lambda out: run_experiment(sweep, out, plots=False, workers=2)
        cases["64-run grid, --cluster local:2"] = lambda out: run_experiment(sweep, out, plots=False, cluster="local:2")
        cases["(local:2's start and close alone)"] = lambda out: _cluster_alone()
    timed(lambda out: run_experiment(cfg.model_copy(update={"train": cfg.train.model_copy(update={"steps": 3})}),
                                     out, plots=False, workers=1))  # warm-up: imports, caches
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
    load = os.getloadavg()[0]
    for _ in range(args.rounds):
        for name, fn in cases.items():
            times[name].append(timed(fn))
    rates = [writer_rate() for _ in range(args.rounds)]
    med = {name: statistics.median(w for w, _ in ts) for name, ts in times.items()}
    cpu = {name: statistics.median(c for _, c in ts) for name, ts in times.items()}
    load = max(load, os.getloadavg()[0])
    # The CPU seconds say what the wall clock cannot on a busy machine: the work itself, so
    # that a split that only adds work shows, whatever the other processes took.
    print(f"gradlab executor benchmark: {os.cpu_count()} cores, median of {args.rounds} interleaved rounds, "
          f"load average up to {load:.1f}")
    print(f"{'case':<60} {'seconds':>8} {'CPU s':>8}")
    for name, m in med.items():
        print(f"{name:<60} {m:8.2f} {cpu[name]:8.2f}")
    if one in med:
        ratio = med[two] / med[one]
        print(f"both cores for one seed: {ratio:.2f}x one core (goal <= 0.6x: {'met' if ratio <= 0.6 else 'MISSED'}); "
              f"its CPU {cpu[two] / cpu[one]:.2f}x, so {cpu[two] / 2 / cpu[one]:.2f}x on two idle cores")
    rate = statistics.median(rates)
    print(f"the writer: {rate:.0f} runs/s of 200-step runs (goal >= 50: {'met' if rate >= 50 else 'MISSED'})")
    if "64-run grid, --cluster local:2" in med:
        local, dask, start = med["64-run grid, local pool of 2"], med["64-run grid, --cluster local:2"], \
            med["(local:2's start and close alone)"]
        print(f"Dask local:2 against the local pool: {dask / local:.2f}x with the cluster's start, "
              f"{(dask - start) / local:.2f}x without (goal <= 1.15x)")


def _has_dask() -> bool:
    try:
        import distributed  # noqa: F401
    except ImportError:
        print("(Dask not installed: pip install -e \".[cluster]\" for the cluster's figures)")
        return False
    return True


def _cluster_alone() -> None:
    from gradlab.cluster import DaskExecutor

    DaskExecutor("local:2").shutdown()


if __name__ == "__main__":
    main()
