"""A first clipping threshold for a user with no idea where to start, from the unclipped
baseline's own gradient norms.

Two readings of the same history, the baseline's healthy steps (every step before it
diverged, the whole run if it did not):

- Pascanu, Mikolov & Bengio 2013 ("On the difficulty of training recurrent neural networks",
  ICML, section 3.2): look at the average norm over many updates; "values from half to ten
  times this average can still yield convergence";
- AutoClip (Seetharaman, Wichern, Pardo & Le Roux 2020, arXiv:2007.14469): clip at a
  percentile of the norms seen so far; the percentiles of the whole history say where such a
  rule would have ended up.

Computed on the fly from the baseline runs' metrics.csv, never stored apart from them, so it
cannot contradict the runs; `suggestion.json` is a derived copy, rewritten with report.md.
Pure Python, like records.py: `gradlab report` needs no NumPy for it.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Optional, Sequence

PERCENTILES = (10, 25, 50, 90)
LOW, HIGH = 0.5, 10.0  # Pascanu et al.'s "half to ten times this average"

NO_BASELINE_HINT = ("no unclipped baseline in this experiment, so no suggested threshold: run the config "
                    "with one, `gradlab run CONFIG.yaml --set 'clipping=[{method: none}]'`, or "
                    "`gradlab sweep CONFIG.yaml --thresholds ...`, which adds it")


def percentile(values: Sequence[float], q: float) -> float:
    """numpy.percentile's default (linear interpolation between the closest ranks)."""
    s = sorted(values)
    h = (len(s) - 1) * q / 100.0
    lo = math.floor(h)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (h - lo) * (s[hi] - s[lo])


def healthy_norms(metrics_csv: Path) -> list[float]:
    """The pre-clip gradient norms of the steps before the run diverged (nonfinite == 0)."""
    with open(metrics_csv, newline="") as fh:
        rows = csv.reader(fh)
        header = next(rows)
        g, bad = header.index("grad_norm"), header.index("nonfinite")
        out = []
        for r in rows:
            x = float(r[g])
            if float(r[bad]) != 0:
                break
            if math.isfinite(x):
                out.append(x)
    return out


def statistics(norms: Sequence[float]) -> dict:
    """The heuristic and the percentiles of one history; None where there is no step."""
    if not norms:
        return {"healthy_steps": 0, "mean_grad_norm": None, "low": None, "high": None,
                "percentiles": {str(q): None for q in PERCENTILES}, "max_grad_norm": None}
    mean = math.fsum(norms) / len(norms)
    return {"healthy_steps": len(norms), "mean_grad_norm": mean, "low": LOW * mean, "high": HIGH * mean,
            "percentiles": {str(q): percentile(norms, q) for q in PERCENTILES}, "max_grad_norm": max(norms)}


def suggest(exp: Path, reports: Sequence[dict]) -> Optional[dict]:
    """Per baseline seed and pooled over the seeds; `baseline` False (with a hint) when the
    experiment has no unclipped run; None when a baseline's metrics.csv is not there to read
    (reports handed in without their runs' files): nothing is suggested from hearsay."""
    base = sorted((r for r in reports if r.get("method") == "none"), key=lambda r: r["seed"])
    if not base:
        return {"baseline": False, "hint": NO_BASELINE_HINT}
    point = None
    if any(isinstance(r.get("grid"), dict) for r in base):
        point, base = grid_point(base)
    per_seed, pooled = [], []
    for r in base:
        try:
            norms = healthy_norms(Path(exp) / "runs" / r["run_id"] / "metrics.csv")
        except OSError:
            return None
        pooled += norms
        per_seed.append({"run_id": r["run_id"], "seed": r["seed"], "diverged": bool(r.get("diverged")),
                         "divergence_step": r.get("divergence_step"), **statistics(norms)})
    out = {"baseline": True, "percentiles_of": list(PERCENTILES), "low_factor": LOW, "high_factor": HIGH,
           "pooled": {"seeds": len(base), **statistics(pooled)}, "per_seed": per_seed}
    if point is not None:
        out["grid_point"] = point
    return out


def grid_point(base: Sequence[dict]) -> tuple[str, list[dict]]:
    """In a grid experiment, the baseline at one grid point: the norms at one learning rate say
    where to clip at that learning rate, pooled over several they say nothing. The point where
    the baseline trained best (the most seeds that trained, then the lowest mean final loss),
    as its label (`lr=0.03`) and its runs."""
    from .points import point_label

    groups: dict[str, list[dict]] = {}
    for r in base:
        groups.setdefault(json.dumps(r.get("grid") or {}, sort_keys=True), []).append(r)

    def rank(rs: list[dict]) -> tuple:
        ok = [float(r["final_loss"]) for r in rs if not r.get("diverged") and isinstance(r.get("final_loss"), (int, float))]
        return (-len(ok) / len(rs), math.fsum(ok) / len(ok) if ok else math.inf)

    runs = min(groups.values(), key=rank)
    return point_label(runs[0].get("grid") or {}), runs


def _g(x: Optional[float]) -> str:
    return "-" if x is None else format(x, ".3g")


def caveat(sug: dict) -> Optional[str]:
    """What to keep in mind when the history is not a healthy run's: a baseline that diverged
    left its climb to the divergence in it (the norms of rnn_adding.yaml's baseline reach 1e19
    before it overflows, where clipping at 1.0 trains), and a mean above the 90th percentile
    is carried by a few huge norms."""
    p = sug["pooled"]
    if not p["healthy_steps"]:
        return None
    diverged = sum(1 for s in sug["per_seed"] if s["diverged"])
    if diverged:
        return (f"The baseline diverged in {diverged} of {len(sug['per_seed'])} seed(s): its norms before that "
                f"include the climb to the divergence (up to {_g(p['max_grad_norm'])}), so the mean and the upper "
                "percentiles describe the explosion more than a threshold to train with; start from the lower "
                "percentiles, or measure a baseline that trains (a lower learning rate).")
    p90 = p["percentiles"]["90"]
    if p["mean_grad_norm"] > p90:
        return "The mean lies above the 90th percentile: a few huge norms carry it; the percentiles are the steadier guide."
    return None


def _pcts(s: dict) -> str:
    return ", ".join(f"p{q} {_g(s['percentiles'][str(q)])}" for q in PERCENTILES)


def lines(sug: Optional[dict]) -> list[str]:
    """What `gradlab report` prints after the findings."""
    if sug is None:
        return []
    if not sug["baseline"]:
        return [f"Suggested threshold: {sug['hint']}."]
    p = sug["pooled"]
    at = f" at {sug['grid_point']}, the grid point where it trained best" if sug.get("grid_point") else ""
    out = [f"Suggested threshold, from the unclipped baseline's healthy steps{at} (every step before it diverged):"]
    if not p["healthy_steps"]:
        out.append("  none: the baseline diverged at step 0 in every seed, so it has no healthy step to "
                   "measure; lower the learning rate or the init gain, or start from a clipped run.")
        return out
    out.append(f"  all {p['seeds']} seed(s), {p['healthy_steps']} steps: mean gradient norm {_g(p['mean_grad_norm'])}, "
               f"so clip by norm at {_g(p['low'])} to {_g(p['high'])} (half to ten times the mean, Pascanu et al. "
               f"2013); AutoClip percentiles {_pcts(p)}")
    for s in sug["per_seed"]:
        if not s["healthy_steps"]:
            out.append(f"  {s['run_id']}: diverged at step 0, no healthy step")
            continue
        out.append(f"  {s['run_id']} ({s['healthy_steps']} steps): mean {_g(s['mean_grad_norm'])}, "
                   f"{_g(s['low'])} to {_g(s['high'])}; {_pcts(s)}")
    note = caveat(sug)
    if note:
        out.append("  " + note)
    return out


def section(sug: Optional[dict]) -> list[str]:
    """report.md's short section."""
    if sug is None:
        return []
    out = ["## Suggested threshold", ""]
    if not sug["baseline"]:
        return out + [sug["hint"][0].upper() + sug["hint"][1:] + ".", ""]
    at = f" at {sug['grid_point']}, the grid point where it trained best" if sug.get("grid_point") else ""
    out += [f"From the unclipped baseline's healthy steps{at} (every step before it diverged): the mean "
            "pre-clip gradient norm and half to ten times it, the range Pascanu, Mikolov & Bengio (2013, "
            "section 3.2) found to still converge; and the percentiles of the same norms, where AutoClip "
            "(Seetharaman et al. 2020) would put its threshold.", "",
            "| baseline | healthy steps | mean grad norm | half to ten times | "
            + " | ".join(f"p{q}" for q in PERCENTILES) + " |",
            "|" + "---|" * (4 + len(PERCENTILES))]

    def row(name: str, s: dict) -> str:
        rng = "-" if s["low"] is None else f"{_g(s['low'])} to {_g(s['high'])}"
        return (f"| {name} | {s['healthy_steps']} | {_g(s['mean_grad_norm'])} | {rng} | "
                + " | ".join(_g(s["percentiles"][str(q)]) for q in PERCENTILES) + " |")

    out += [row(s["run_id"], s) for s in sug["per_seed"]]
    if len(sug["per_seed"]) > 1:
        out.append(row("all seeds", sug["pooled"]))
    out.append("")
    if not sug["pooled"]["healthy_steps"]:
        out += ["The baseline diverged at step 0 in every seed: no healthy step to measure.", ""]
    elif caveat(sug):
        out += [caveat(sug), ""]
    return out
