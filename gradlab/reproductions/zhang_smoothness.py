"""Zhang, He, Sra & Jadbabaie 2020: local smoothness grows with the gradient norm along the
trajectory (their Figure 1), and clipped descent reaches a given loss in fewer steps than
fixed-step descent at its best learning rate.

One grid experiment (configs/papers/zhang_smoothness.yaml): an LSTM language model trained
by plain SGD with and without norm clipping, over learning rates, the smoothness measured
along the way (train.measure_smoothness). The analysis reads the runs only:

- The speed. A run's loss curve is the training loss averaged over a trailing window of
  `window(steps)` steps (one batch's loss is noisy), averaged over the seeds. The unclipped
  baseline's best stable learning rate is the one whose seeds all stay finite and whose curve
  ends lowest; the target is that curve's value at 80% of the steps. Each (variant, lr) needs
  the first step where its curve is at or below the target; each variant is credited with
  its fastest learning rate.
- The correlation, on the two trajectories compared (the fastest clipped one, the unclipped
  one at its best stable lr): Spearman's rho and Pearson's r of the logs between the gradient
  norm and the smoothness at the measured steps, every seed's together, and the least-squares
  L0 + L1 ||grad||.
- The verdict: the correlation is strong when rho >= 0.6 on both trajectories, moderate when
  rho >= 0.4 on both (the usual reading of a correlation's size); clipping is faster when its
  step count is below the baseline's. Reproduced: strong and faster; not: neither faster nor
  at least moderate; partly otherwise.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

from .base import Context, Outcome, Reproduction, table

CONFIG = "zhang_smoothness"
LR = "train.optimizer.lr"
TARGET_FRACTION = 0.8
STRONG, MODERATE = 0.6, 0.4


def window(steps: int) -> int:
    """The trailing window a loss curve is averaged over: 1/24 of the run (25 of 600 steps)."""
    return max(1, steps // 24)


def smoothed(loss: np.ndarray, steps: int, w: int) -> np.ndarray:
    """The trailing mean of the last `w` losses at each step (fewer at the start), inf from a
    divergence (a missing or non-finite loss) on, over `steps` steps."""
    out = np.full(steps, np.inf)
    n = len(loss)
    bad = np.flatnonzero(~np.isfinite(loss))
    n = min(n, int(bad[0]) if bad.size else n)
    c = np.concatenate([[0.0], np.cumsum(loss[:n].astype(np.float64))])
    idx = np.arange(n)
    lo = np.maximum(0, idx + 1 - w)
    out[:n] = (c[idx + 1] - c[lo]) / (idx + 1 - lo)
    return out


def first_at_or_below(curve: np.ndarray, target: float, w: int = 1) -> Optional[int]:
    """The first step whose curve is at or below `target`, from the first full window on (a
    mean of fewer losses is one batch's luck more than the model's progress)."""
    hit = np.flatnonzero(curve[w - 1:] <= target)
    return int(hit[0]) + w - 1 if hit.size else None


class Group:
    """The runs of one (variant, learning rate), every seed."""

    def __init__(self, variant: str, lr: float, runs: list, steps: int, w: int) -> None:
        self.variant, self.lr, self.runs = variant, lr, runs
        self.diverged = sum(1 for r in runs if r.diverged)
        self.curve = np.mean([smoothed(r.metrics["loss"], steps, w) for r in runs], axis=0)
        self.final = float(self.curve[-1])
        self.reached: Optional[int] = None

    def pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from ..plots.smoothness import measured

        parts = [measured(r) for r in self.runs]
        return tuple(np.concatenate([p[k] for p in parts]) for k in range(3))


def _groups(exp, steps: int, w: int) -> list[Group]:
    by: dict = {}
    for r in exp.runs:
        lr = float((r.report.get("grid") or {}).get(LR, math.nan))
        by.setdefault((r.variant, lr), []).append(r)
    return [Group(v, lr, runs, steps, w) for (v, lr), runs in sorted(by.items(), key=lambda kv: (kv[0][0] != "none", kv[0][1]))]


def _fmt_steps(s: Optional[int]) -> str:
    return "not reached" if s is None else str(s)


def analyse(ctx: Context) -> Outcome:
    from ..plots.load import load_experiment
    from ..smoothness import correlations, fit_affine

    cfg = ctx.configs[CONFIG]
    steps = cfg.train.steps
    w = window(steps)
    exp = load_experiment(ctx.experiments[CONFIG])
    groups = _groups(exp, steps, w)
    base = [g for g in groups if g.variant == "none"]
    clipped = [g for g in groups if g.variant != "none"]
    stable = [g for g in base if g.diverged == 0 and math.isfinite(g.final)]
    if not stable or not clipped:
        return Outcome("not", "no unclipped learning rate trained stably (or no clipped run): nothing to compare "
                              "against", _table(groups, None, w, steps))
    best = min(stable, key=lambda g: g.final)
    at = max(0, int(round(TARGET_FRACTION * steps)) - 1)
    target = float(best.curve[at])
    for g in groups:
        g.reached = first_at_or_below(g.curve, target, w)
    never = steps + 1  # a learning rate that never reaches it ranks after every one that does

    def fastest(gs: list[Group]) -> Group:
        return min(gs, key=lambda g: (never if g.reached is None else g.reached, g.final))

    fast_base, fast_clip = fastest(base), fastest(clipped)
    faster = fast_clip.reached is not None and (fast_base.reached is None or fast_clip.reached < fast_base.reached)

    heads = {"clipped": fast_clip, "unclipped": best}
    stats = {}
    for name, g in heads.items():
        _, norms, smooth = g.pairs()
        stats[name] = {**correlations(norms, smooth), "fit": fit_affine(norms, smooth)}
    rhos = [s["spearman"] for s in stats.values()]
    strong = all(math.isfinite(r) and r >= STRONG for r in rhos)
    moderate = all(math.isfinite(r) and r >= MODERATE for r in rhos)

    _draw_smoothness(ctx, heads, steps)
    _draw_speed(ctx, groups, best, fast_base, fast_clip, target, at, w)

    corr_word = "strong" if strong else ("moderate" if moderate else "weak or absent")
    ratio = (fast_base.reached / fast_clip.reached if faster and fast_base.reached is not None and fast_clip.reached
             else None)
    speed_text = (f"clipped SGD (`{fast_clip.variant}`, lr {fast_clip.lr:g}) reached the target loss {target:.3f} at "
                  f"step {_fmt_steps(fast_clip.reached)}, fixed-step SGD at best at step {_fmt_steps(fast_base.reached)} "
                  f"(lr {fast_base.lr:g})" + (f", {ratio:.2f}x as many" if ratio else ""))
    corr_text = (f"the smoothness's rank correlation with the gradient norm is {corr_word} "
                 f"(Spearman rho {rhos[0]:.2f} clipped, {rhos[1]:.2f} unclipped)")
    if strong and faster:
        verdict = "reproduced"
    elif not faster and not moderate:
        verdict = "not"
    else:
        verdict = "partly"
    why = f"{speed_text[0].upper()}{speed_text[1:]}; {corr_text}."

    rows = []
    for name, g in heads.items():
        s = stats[name]
        l0, l1 = s["fit"]
        rows.append([f"{name}: `{g.variant}`, lr {g.lr:g}", s["n"], s["spearman"], s["pearson_log"], l0, l1])
    body = (
        f"An LSTM language model (`{cfg.model.kind}`, {cfg.model.depth} layer, width {cfg.model.width}) on the `lm` "
        f"task (seq_len {cfg.task.seq_len}, batch {cfg.task.batch_size}), plain SGD for {steps} steps, "
        f"{len(cfg.seeds)} seed(s), learning rates {', '.join(f'{g:g}' for g in sorted({g.lr for g in groups}))}; "
        f"smoothness measured every {cfg.train.measure_smoothness.every} steps along the step taken.\n\n"
        f"### Smoothness against gradient norm\n\n![smoothness](plots/smoothness.png)\n\n"
        + table(["trajectory", "points", "Spearman rho", "Pearson r (logs)", "L0", "L1"], rows)
        + f"\n\nThe correlation counts as strong at rho >= {STRONG}, moderate at rho >= {MODERATE}, on both "
        f"trajectories: here {corr_word}.\n\n"
        f"### Steps to the target loss\n\nThe loss curve is the training loss averaged over the last {w} steps and "
        f"over the seeds. Fixed-step SGD's best stable learning rate (every seed finite, lowest final loss) is "
        f"{best.lr:g}; the target is its loss at step {at} ({TARGET_FRACTION:.0%} of the run): {target:.4f}.\n\n"
        f"![speed](plots/speed.png)\n\n" + _table(groups, target, w, steps)
        + f"\n\n{speed_text[0].upper()}{speed_text[1:]}.\n\n"
        f"Verdict rule: reproduced when the correlation is strong and clipping reaches the target in fewer steps; "
        f"not when it is neither faster nor at least moderately correlated; partly otherwise."
    )
    return Outcome(verdict, why, body)


def _table(groups: list[Group], target: Optional[float], w: int, steps: int) -> str:
    from ..smoothness import correlations

    rows = []
    for g in groups:
        _, norms, smooth = g.pairs()
        c = correlations(norms, smooth)
        rows.append([f"`{g.variant}`", g.lr, f"{g.diverged}/{len(g.runs)}",
                     g.final if math.isfinite(g.final) else "diverged",
                     _fmt_steps(g.reached) if target is not None else "-", c["spearman"]])
    return table(["variant", "lr", "diverged seeds", f"final loss (last {w} steps)", "steps to target",
                  "Spearman rho"], rows)


def _draw_smoothness(ctx: Context, heads: dict, steps: int) -> None:
    from ..plots import style
    from ..plots.smoothness import draw_panel

    fig = style.new_figure(11.0, 4.6)
    axes = fig.subplots(1, 2, sharex=False, sharey=True)
    dots = None
    for ax, (name, g) in zip(axes, heads.items()):
        st, norms, smooth = g.pairs()
        dots = draw_panel(ax, st, norms, smooth, steps - 1, f"{name}: {g.variant}, lr {g.lr:g}")
        ax.set_xlabel("gradient norm (before clipping)")
    axes[0].set_ylabel("smoothness ||Δgrad|| / ||Δx||")
    fig.suptitle("Local smoothness against gradient norm along the trajectory (dashed: L0 + L1 ||grad||)")
    fig.subplots_adjust(left=0.08, right=0.88, top=0.8, bottom=0.13, wspace=0.12)
    bar = fig.colorbar(dots, cax=fig.add_axes([0.9, 0.13, 0.015, 0.67]))
    bar.set_label("step")
    style.save(fig, ctx.plots / "smoothness.png")


def _draw_speed(ctx: Context, groups: list[Group], best: Group, fast_base: Group, fast_clip: Group,
                target: float, at: int, w: int) -> None:
    from ..plots import style

    fig = style.new_figure(12.0, 4.6)
    left, right = fig.subplots(1, 2)
    finite = [g.curve[np.isfinite(g.curve)] for g in groups]
    top = max(float(best.curve[w:].max()) * 1.15, target * 1.3)
    for g in groups:
        x = np.arange(len(g.curve))
        shown = g in (best, fast_base, fast_clip)
        color = "#1f77b4" if g.variant == "none" else "#d62728"
        role = ("unclipped, best stable lr" if g is best else "unclipped, fastest lr" if g is fast_base
                else "clipped, fastest lr")
        left.plot(x, np.minimum(g.curve, top * 2), color=color, alpha=0.9 if shown else 0.18,
                  linewidth=1.8 if shown else 0.8, linestyle="--" if g is fast_base and g is not best else "-",
                  label=f"{role} ({g.lr:g})" if shown else None)
        if shown and g.reached is not None:
            left.plot([g.reached], [target], marker="o", color=color, markersize=6, zorder=5)
    left.axhline(target, color="black", linestyle="--", linewidth=1.0, label=f"target {target:.3f}")
    left.axvline(at, color="0.6", linestyle=":", linewidth=1.0)
    lo = min(float(c.min()) for c in finite if c.size)
    left.set_ylim(lo - 0.05 * (top - lo), top)
    left.set_xlabel("step")
    left.set_ylabel(f"training loss (mean of the last {w} steps, over seeds)")
    left.set_title("Loss curves (faint: the other learning rates)", fontsize=10)
    left.legend(fontsize=8, frameon=False)
    never = len(best.curve)
    for variant, color in (("none", "#1f77b4"), (fast_clip.variant, "#d62728")):
        gs = sorted((g for g in groups if g.variant == variant), key=lambda g: g.lr)
        xs = [g.lr for g in gs]
        ys = [g.reached if g.reached is not None else never for g in gs]
        right.plot(xs, ys, marker="o", color=color, label="unclipped" if variant == "none" else f"clipped ({variant})")
        for g, y in zip(gs, ys):
            if g.reached is None:
                right.plot([g.lr], [y], marker="x", color=color, markersize=9, linestyle="none")
    right.axhline(never, color="0.6", linestyle=":", linewidth=1.0)
    right.text(max(g.lr for g in groups), never, "x: not reached ", ha="right", va="top", fontsize=8, color="0.4")
    right.set_xscale("log")
    right.set_xlabel("learning rate")
    right.set_ylabel("steps to reach the target loss")
    right.set_title("Steps to the target, per learning rate", fontsize=10)
    right.legend(fontsize=8, frameon=False)
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
    fig.suptitle("Clipped against fixed-step SGD: steps to reach the best fixed-step run's loss at 80% of the run")
    fig.subplots_adjust(left=0.07, right=0.98, top=0.84, bottom=0.13, wspace=0.25)
    style.save(fig, ctx.plots / "speed.png")


REPRODUCTION = Reproduction(
    name="zhang-smoothness",
    title="Zhang, He, Sra & Jadbabaie 2020, Figure 1: smoothness grows with the gradient norm; clipping accelerates",
    paper=("Jingzhao Zhang, Tianxing He, Suvrit Sra, Ali Jadbabaie. Why gradient clipping accelerates training: "
           "a theoretical justification for adaptivity. ICLR 2020. https://arxiv.org/abs/1905.11881"),
    claim=("Along the training trajectory of an LSTM language model (AWD-LSTM on PTB, clipped SGD), the local "
           "smoothness, estimated as ||grad f(x_mid) - grad f(x_t)|| / ||x_mid - x_t|| halfway along each step, "
           "correlates strongly with the gradient norm on a log-log scale (Figure 1), which motivates their "
           "(L0, L1)-smoothness, ||Hessian|| <= L0 + L1 ||grad||. Under it, clipped gradient descent converges "
           "arbitrarily faster than gradient descent with a fixed step size (Theorems 3-4), which their LSTM "
           "experiments show as clipped SGD reaching a given loss in fewer iterations."),
    configs=(f"{CONFIG}.yaml",),
    analyse=analyse,
    minutes=0.9,
)
