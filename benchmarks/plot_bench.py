"""What the plots cost against the training they show, measured in one run.

- the time to draw one figure of each kind (in this process, matplotlib loaded, one at a
  time), on the quickstart (MLP) and on the sweep benchmark's 18 runs (RNN);
- drawing every figure of the 18-run sweep (10: the overview, then one heatmap and one
  gradient-through-time figure per seed, a panel per variant) serially and in 2 forked processes;
- `gradlab run configs/quickstart.yaml` end to end, with and without --no-plots (goal: the
  plots add at most what the --no-plots command takes, or 1.5 s);
- the 18-run sweep of benchmarks/sweep_bench.py as `gradlab run`, with and without --no-plots
  (goal: plots included, at most 3x without);
- a rerun of the complete quickstart, nothing to compute (goal: under 0.5 s);
- with --before DIR, the end-to-end cases of another gradlab tree too (a commit before).

Every end-to-end case is a fresh `python -m gradlab.cli` process (start-up counted alike),
timed wall-clock, the cases interleaved so that load from other processes hits them alike;
the median of --repeats is reported, and ratios are between cases of this same run.

    python benchmarks/plot_bench.py [--repeats 3] [--before DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import yaml  # noqa: E402

from sweep_bench import config as sweep_config  # noqa: E402

QUICKSTART = ROOT / "configs" / "quickstart.yaml"
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def cli(*args: str, tree: Path = ROOT) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "gradlab.cli", *args, "--quiet"], check=True, cwd=tree,
                   env={**ENV, "PYTHONPATH": str(tree)}, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def fresh(work: Path, config: Path, plots: bool, tree: Path = ROOT) -> float:
    out = work / ("plots" if plots else "noplots")
    shutil.rmtree(out, ignore_errors=True)
    return cli("run", str(config), "--out", str(out), *([] if plots else ["--no-plots"]), tree=tree)


def plan_of(exp: Path):
    from gradlab.store import collect_reports
    from gradlab.plots import figures, load_experiment

    return figures.plan(load_experiment(exp, reports=collect_reports(exp)))


def per_kind(exp: Path, repeats: int) -> dict[str, list[float]]:
    """Seconds per figure, by kind: each figure of the experiment drawn alone, `repeats` times."""
    from gradlab.plots import figures

    p = plan_of(exp)
    import matplotlib.figure  # noqa: F401  (its import is not a figure's cost)

    p.exp.colors  # noqa: B018
    for run in p.exp.runs:
        run.metrics  # noqa: B018
    times: dict[str, list[float]] = {}
    for _ in range(repeats):
        for fig in p.figures:
            t = time.perf_counter()
            figures.draw(p, fig)
            times.setdefault(fig.kind, []).append(time.perf_counter() - t)
    return times


def draw_all(exp: Path, workers: int) -> float:
    from gradlab.plots import draw_experiment

    t = time.perf_counter()
    draw_experiment(exp, workers=workers)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3, help="repeats of each measurement (median reported)")
    ap.add_argument("--before", type=Path, help="another gradlab tree (e.g. `git archive COMMIT | tar -x -C DIR`): "
                    "its end-to-end cases are timed in the same run, interleaved")
    args = ap.parse_args()
    n = args.repeats
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sweep_yaml = work / "sweep_bench.yaml"
        sweep_yaml.write_text(yaml.safe_dump(sweep_config().resolved()))
        # The experiments the figures are drawn from (and the warm-up of every cache).
        cli("run", str(QUICKSTART), "--out", str(work / "qs"), "--no-plots")
        cli("run", str(sweep_yaml), "--out", str(work / "sw"), "--no-plots")
        qs_exp, sw_exp = next((work / "qs").iterdir()), next((work / "sw").iterdir())

        n_sweep = len(plan_of(sw_exp).figures)
        kinds: dict[str, list[float]] = {}
        for label, exp in (("quickstart", qs_exp), ("sweep", sw_exp)):
            for kind, ts in per_kind(exp, n).items():
                kinds[f"{label}: {kind}"] = ts

        cases = {
            "quickstart, --no-plots": lambda: fresh(work / "e2e_qs", QUICKSTART, False),
            "quickstart, plots": lambda: fresh(work / "e2e_qs", QUICKSTART, True),
            "quickstart rerun, nothing to do": lambda: cli("run", str(QUICKSTART), "--out", str(work / "e2e_qs" / "plots")),
            "18-run sweep, --no-plots": lambda: fresh(work / "e2e_sw", sweep_yaml, False),
            "18-run sweep, plots": lambda: fresh(work / "e2e_sw", sweep_yaml, True),
            f"18-run sweep: {n_sweep} figures, 1 process": lambda: draw_all(sw_exp, 1),
            f"18-run sweep: {n_sweep} figures, 2 processes": lambda: draw_all(sw_exp, 2),
        }
        if args.before:
            before = args.before.resolve()
            cases.update({
                "before: quickstart, plots": lambda: fresh(work / "b_qs", QUICKSTART, True, before),
                "before: quickstart rerun, nothing to do": lambda: cli("run", str(QUICKSTART), "--out",
                                                                       str(work / "b_qs" / "plots"), tree=before),
                "before: 18-run sweep, plots": lambda: fresh(work / "b_sw", sweep_yaml, True, before),
            })
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(n):  # interleaved, so that drift hits every case alike
            for name, fn in cases.items():
                times[name].append(fn())

    med = {name: statistics.median(ts) for name, ts in {**kinds, **times}.items()}
    print(f"gradlab plot benchmark: {os.cpu_count()} cores; median of {n}; wall-clock seconds")
    print(f"{'figure kind (one figure, in process)':<48} {'seconds':>8}")
    for name in kinds:
        print(f"{name:<48} {med[name]:8.3f}")
    print(f"\n{'case':<48} {'seconds':>8}")
    for name in times:
        print(f"{name:<48} {med[name]:8.2f}")
    qs = med["quickstart, plots"] / med["quickstart, --no-plots"]
    sw = med["18-run sweep, plots"] / med["18-run sweep, --no-plots"]
    par = med[f"18-run sweep: {n_sweep} figures, 1 process"] / med[f"18-run sweep: {n_sweep} figures, 2 processes"]
    noop = med["quickstart rerun, nothing to do"]
    print(f"\nquickstart: plots add {med['quickstart, plots'] - med['quickstart, --no-plots']:.2f} s ({qs:.2f}x)")
    print(f"2 drawing processes against 1: {par:.2f}x faster")
    added = med["quickstart, plots"] - med["quickstart, --no-plots"]
    budget = max(med["quickstart, --no-plots"], 1.5)  # the whole --no-plots command stands for its training
    print(f"goal: quickstart plots within its training time or 1.5 s: {'met' if added <= budget else 'MISSED'} "
          f"({added:.2f} s against {budget:.2f} s)")
    print(f"goal: sweep with plots <= 3x --no-plots: {'met' if sw <= 3 else 'MISSED'} ({sw:.2f}x)")
    print(f"goal: rerun with nothing to do < 0.5 s: {'met' if noop < 0.5 else 'MISSED'} ({noop:.2f} s)")


if __name__ == "__main__":
    main()
