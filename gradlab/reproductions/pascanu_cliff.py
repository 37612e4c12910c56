"""Pascanu, Mikolov & Bengio 2013, Figure 6 and section 3.5: the cliff of a one-unit
recurrence, and the threshold heuristic of gradient norm clipping.

Two configs (gradient descent from either side of the valley), each a sweep of norm
thresholds with the unclipped baseline. The analysis reads each baseline's gradient norms
(its average sets the heuristic's window, half to ten times it), every run's final error, and
draws the error surface over (w, b) with the trajectories (gradlab.landscape, replaying the
runs), and the final error against the threshold.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from .base import Context, Outcome, Reproduction, table

# An unclipped run is "thrown off" when it ends at an error of at least THROWN (the plateaus
# beyond the wall lie at 0.07-0.09 and 0.45-0.49; the valley floor is 0); a run "converged"
# when its final error is below CONVERGED.
THROWN, CONVERGED = 0.05, 1e-3
# The wall: the baseline's largest gradient norm at least this many times the median of its
# norms before it (an order of magnitude: a spike, not a trend).
WALL = 10.0
LOW, HIGH = 0.5, 10.0  # the heuristic's window, in multiples of the baseline's average norm
BOX = (-1.0, 11.0, -7.0, 3.0)  # the figure's (w, b) range


def _runs(exp: Path) -> list[dict]:
    from ..store import collect_reports

    return collect_reports(exp)


def _norms(exp: Path, run_id: str) -> np.ndarray:
    from ..landscape import _metrics

    return _metrics(exp, run_id)["grad_norm"]


def _measure(stem: str, exp: Path, cfg) -> dict:
    reports = _runs(exp)
    base = next(r for r in reports if r["method"] == "none")
    norms = _norms(exp, base["run_id"])
    avg = float(np.mean(norms))
    peak = int(np.argmax(norms))
    rows = []
    for r in sorted((r for r in reports if r["method"] == "norm"), key=lambda r: r["threshold"]):
        t = float(r["threshold"])
        steps = _norms(exp, r["run_id"])
        rows.append(dict(threshold=t, ratio=t / avg, inside=LOW * avg <= t <= HIGH * avg,
                         final=float(r["final_loss"]), clip=float(r.get("clip_fraction") or 0.0),
                         max_norm_seen=float(np.max(steps)), run=r["run_id"], variant=r["variant"]))
    lr = cfg.train.optimizer.lr
    return dict(stem=stem, exp=exp, cfg=cfg, start=(cfg.model.w, cfg.model.b), lr=lr, avg=avg,
                base_final=float(base["final_loss"]), base_max=float(np.max(norms)),
                base_median=float(np.median(norms[:peak])) if peak else float("nan"), base_peak=peak,
                base_step=float(lr * np.max(norms)), base_zero=int(np.sum(norms[peak + 1:] == 0)),
                base_after=len(norms) - peak - 1,
                base_run=base["run_id"], rows=rows)


def _figure_surface(ctx: Context, ms: list[dict]) -> str:
    """The error surface over (w, b) with each start's unclipped trajectory and its clipped
    one at the window's threshold nearest the average norm, in one figure."""
    from .. import landscape as L
    from ..plots.landscape import draw_landscape

    merged = None
    for m in ms:
        inside = [r for r in m["rows"] if r["inside"]] or m["rows"]
        pick = min(inside, key=lambda r: abs(math.log(r["threshold"] / m["avg"])))
        ls = L.compute(m["exp"], m["base_run"], params=("w", "b"), box=BOX, resolution=241,
                       variants=[pick["variant"]])
        tag = f"from ({m['start'][0]:g}, {m['start'][1]:g})"
        paths = {f"{tag}: {v}": p for v, p in ls.paths.items()}
        if merged is None:
            merged, merged.paths = ls, {}
            merged.description = "Pascanu et al. 2013's one-unit recurrence, T 50"
            merged.centre_reason = "the unclipped run's largest gradient norm"
            merged.run_id = f"{m['stem']}/{m['base_run']}"
        merged.paths.update(paths)
    name = "pascanu_cliff_surface.png"
    draw_landscape(merged, ctx.plots / name)
    return name


def _figure_thresholds(ctx: Context, ms: list[dict]) -> str:
    from ..plots.style import new_figure, save

    fig = new_figure(7.5, 4.6)
    ax = fig.add_axes((0.11, 0.13, 0.62, 0.75))
    for m, c in zip(ms, ("#377eb8", "#e41a1c")):
        r = [x["ratio"] for x in m["rows"]]
        f = [max(x["final"], 1e-20) for x in m["rows"]]
        label = f"from ({m['start'][0]:g}, {m['start'][1]:g})"
        ax.plot(r, f, "o-", color=c, label=f"{label}: clipped")
        ax.axhline(max(m["base_final"], 1e-20), color=c, ls="--", label=f"{label}: unclipped")
    ax.axvspan(LOW, HIGH, color="#dddddd", zorder=0, label=f"{LOW:g}x-{HIGH:g}x the average norm")
    ax.axhline(CONVERGED, color="black", lw=0.8, ls=":", label=f"converged (< {CONVERGED:g})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("threshold / the unclipped run's average gradient norm")
    ax.set_ylabel("final error (sigmoid(x_50) - 0.7)^2")
    ax.set_title("Pascanu et al.'s threshold heuristic: final error by norm threshold", fontsize=10)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7, frameon=False)
    name = "pascanu_cliff_thresholds.png"
    save(fig, ctx.plots / name)
    return name


def analyse(ctx: Context) -> Outcome:
    ms = [_measure(stem, ctx.experiments[stem], ctx.configs[stem]) for stem in ctx.experiments]
    surface = _figure_surface(ctx, ms)
    thresholds = _figure_thresholds(ctx, ms)

    cliff, heuristic, lines = [], [], []
    summary = []
    for m in ms:
        thrown = m["base_final"] >= THROWN and m["base_max"] >= WALL * m["base_median"]  # NaN median: False
        inside = [r for r in m["rows"] if r["inside"]]
        ok = [r for r in inside if r["final"] < CONVERGED]
        cliff.append(thrown)
        heuristic.append((len(ok), len(inside)))
        start = f"({m['start'][0]:g}, {m['start'][1]:g})"
        summary.append([start, m["lr"], m["base_max"], m["base_peak"], m["base_median"], m["base_step"],
                        m["base_final"], m["avg"], f"{LOW * m['avg']:.3g}-{HIGH * m['avg']:.3g}",
                        f"{len(ok)} of {len(inside)}"])
        zeros = (f"{m['base_zero']} of its {m['base_after']} gradients are exactly 0 (the sigmoid saturated)"
                 if m["base_zero"] else "none of its gradients is exactly 0")
        lines.append(f"**From {start}** (`{m['stem']}.yaml`): the unclipped run's gradient norm peaks at "
                     f"{m['base_max']:.3g} at step {m['base_peak']} ({m['base_max'] / m['base_median']:.3g} times the "
                     f"median of its steps before), a step of {m['base_step']:.3g} in (w, b); after it, {zeros}, and "
                     f"it ends at error {m['base_final']:.3g}; its average norm is {m['avg']:.3g}.\n\n" + table(
                         ["max_norm", "x average", "in the window", "final error", "clipped steps",
                          "largest norm seen"],
                         [[r["threshold"], r["ratio"], "yes" if r["inside"] else "no", r["final"],
                           f"{100 * r['clip']:.0f}%", r["max_norm_seen"]] for r in m["rows"]]))
    n_ok = sum(a for a, _ in heuristic)
    n_in = sum(b for _, b in heuristic)
    if all(cliff) and n_in and n_ok == n_in:
        verdict = "reproduced"
        finals = ", ".join(f"{m['base_final']:.2g}" for m in ms)
        why = (f"From both starts the unclipped step off the wall throws gradient descent onto a plateau (final "
               f"error {finals}), and every norm threshold from half to ten "
               f"times the baseline's average gradient norm converges ({n_ok} of {n_in} runs below {CONVERGED:g})")
    elif n_in and n_ok >= n_in / 2 and any(cliff):
        verdict = "partly"
        why = (f"The cliff throws {sum(cliff)} of {len(ms)} unclipped runs off, and {n_ok} of {n_in} thresholds "
               f"in the heuristic's window converge")
    else:
        verdict = "not"
        why = (f"Only {sum(cliff)} of {len(ms)} unclipped runs are thrown off the wall and {n_ok} of {n_in} thresholds "
               f"in the heuristic's window converge")
    body = "\n\n".join([
        f"![error surface with trajectories](plots/{surface})",
        "The error (sigmoid(x_50) - 0.7)^2 over (w, b) on a log colour scale, evaluated on a "
        f"241 x 241 grid (`gradlab landscape --params w,b --box {','.join(f'{v:g}' for v in BOX)}`). "
        "Each start's unclipped trajectory (circles every step, an arrow on its longest step) and its "
        "clipped one at the window's threshold nearest the average norm; a path that leaves the frame "
        "is labelled with where it went.",
        table(["start (w, b)", "lr", "max grad norm (unclipped)", "at step", "median before it", "largest step",
               "final error",
               "average norm", "window (0.5x-10x)", "converged in the window"], summary),
        *lines,
        f"![final error by threshold](plots/{thresholds})",
        f"Rule: **reproduced** when, from every start, the unclipped run's largest gradient norm is at least "
        f"{WALL:g} times the median of its norms before it (the wall) and it ends at an error of at least "
        f"{THROWN:g} (thrown onto a plateau), and every threshold from {LOW:g} to {HIGH:g} times its average "
        f"gradient norm ends below "
        f"{CONVERGED:g}; **partly** when at least one start shows the cliff and at least half of the window's "
        f"thresholds converge; **not** otherwise.",
    ])
    return Outcome(verdict, why, body)


REPRODUCTION = Reproduction(
    name="pascanu-cliff",
    title="Pascanu, Mikolov & Bengio 2013, Figure 6: the cliff and the clipping threshold",
    paper="R. Pascanu, T. Mikolov, Y. Bengio, \"On the difficulty of training recurrent neural networks\", "
          "ICML 2013 ([arXiv:1211.5063](https://arxiv.org/abs/1211.5063))",
    claim=("The error surface of the one-unit recurrence x_t = w sigmoid(x_{t-1}) + b (x_0 = 0.5, error "
           "(sigmoid(x_50) - 0.7)^2) has a high-curvature wall; gradient descent that reaches it takes a huge "
           "step and is thrown away from the region it was converging to, while rescaling the gradient when its "
           "norm exceeds a threshold keeps the step small (section 3.2, **Figure 6**). Section 3.5: a threshold "
           "from half to ten times the average gradient norm over many updates still converges."),
    configs=("pascanu_cliff.yaml", "pascanu_cliff_plateau.yaml"),
    analyse=analyse,
    minutes=0.1,
)
