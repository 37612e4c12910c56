"""Wortsman et al. 2023: attention logit growth at high learning rates, which qk-layernorm
removes, and the learning-rate sensitivity of a small transformer with and without qk_norm and
z-loss.

One grid experiment, `wortsman_stability`: model.qk_norm x model.z_loss x lr. Its four model
variants (none, qk_norm, z_loss, both) are the grid's first two axes, so the summary number is
computed here per variant along the lr axis with gradlab.stability's `lr_sensitivity` (the
grid's own table takes the best over the model axes at each lr, which would mix them).
Two checks, each computed from the runs by a rule stated in the body:

(a) at the highest learning rate, without qk_norm the largest attention logit grows to at least
    10x its step-0 value, the attention entropy falls to a tenth of its step-0 value or below and
    the final held-out loss ends above qk_norm's, in every seed; with qk_norm the logit's growth
    is at least 10x smaller than the least growth without it and the entropy does not collapse.
    (qk_norm bounds the logits by the LayerNorm gains, which learn: it does not freeze them.)
(b) the LR sensitivity is at least 10% lower with qk_norm, with z-loss and with both than with
    neither, in every seed (each seed's own curve); the table gives the mean-curve numbers too.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

from .. import stability
from ..io import read_csv
from ..store import collect_reports
from .base import Context, Outcome, Reproduction, table

EXP = "wortsman_stability"
QK, Z, LR = "model.qk_norm", "model.z_loss", "train.optimizer.lr"
GROWTH = 10.0  # "orders of magnitude": at least one
COLLAPSE = 0.1  # the entropy at a tenth of its start or below: the rows near one-hot
# A mitigation lowers the LR sensitivity when it is at least this much lower (relative) in every
# seed: z-loss's own term, z (log Z)^2, is a few thousandths of a nat here, and a difference of
# that size is the regulariser's cost, not a change in stability.
MARGIN = 0.1
COLORS = {"none": "#d62728", "z_loss": "#ff7f0e", "qk_norm": "#1f77b4", "qk_norm + z_loss": "#2ca02c"}


def variant_name(qk: Any, z: Any) -> str:
    zl = bool(stability._number(z))
    return {(False, False): "none", (False, True): "z_loss", (True, False): "qk_norm",
            (True, True): "qk_norm + z_loss"}[(bool(qk), zl)]


def metrics(exp: Path, run: dict) -> dict[str, list[float]]:
    header, rows = read_csv(exp / "runs" / run["run_id"] / "metrics.csv")
    return {h: [row[i] for row in rows] for i, h in enumerate(header)}


def _mean(xs: list[float]) -> float:
    return math.fsum(xs) / len(xs)


def collect(ctx: Context) -> dict:
    """Per model variant, its cells along lr (one per lr, each with one run per seed)."""
    exp, cfg = ctx.experiments[EXP], ctx.configs[EXP]
    reports = collect_reports(exp)
    grid = stability.build(reports, cfg, exp)
    full = grid.view([a.key for a in grid.axes])
    clip = grid.clipping.values[0]
    lrs = grid.axis(LR).values
    variants: dict[str, dict] = {}
    for qk in grid.axis(QK).values:
        for z in grid.axis(Z).values:
            variants[variant_name(qk, z)] = {"qk": bool(qk), "cells": [full[(qk, z, lr, clip)] for lr in lrs]}
    order = [v for v in COLORS if v in variants]
    return dict(exp=exp, grid=grid, lrs=lrs, variants={v: variants[v] for v in order}, key=grid.key,
                seeds=grid.seeds)


def sensitivities(d: dict) -> dict[str, dict]:
    """Per variant: the sensitivity of the mean curve (as gradlab's grid table computes it) and
    of each seed's own curve."""
    grid, key = d["grid"], d["key"]
    out = {}
    for v, info in d["variants"].items():
        curve = [[(r, grid.initial_loss(r)) for r in cell.runs] for cell in info["cells"]]
        per_seed = {}
        for s in d["seeds"]:
            one = [[(r, l0) for r, l0 in runs if r.get("seed") == s] for runs in curve]
            per_seed[s] = stability.lr_sensitivity(one, key)
        out[v] = {"mean": stability.lr_sensitivity(curve, key), "seeds": per_seed}
    return out


def logits_at_top(d: dict) -> dict[str, list[dict]]:
    """At the highest learning rate: per variant and seed, the attention logit and entropy
    over steps, their step-0 values and extremes, and the final held-out loss."""
    out: dict[str, list[dict]] = {}
    for v, info in d["variants"].items():
        for r in info["cells"][-1].runs:
            m = metrics(d["exp"], r)
            logit = [x for x in m["max_attn_logit"]]
            ent = [x for x in m["attn_entropy"]]
            finite_l = [x for x in logit if math.isfinite(x)]
            finite_e = [x for x in ent if math.isfinite(x)]
            out.setdefault(v, []).append(dict(
                seed=r["seed"], step=m["step"], logit=logit, entropy=ent, loss=m["loss"],
                logit0=logit[0], logit_max=max(finite_l), entropy0=ent[0], entropy_min=min(finite_e),
                final=r.get(d["key"]), diverged=bool(r.get("diverged")), logz=r.get("max_logit_z")))
    return out


def logit_check(top: dict) -> tuple[bool, str]:
    """(a): without qk_norm the logit grows GROWTH-fold or more, the entropy collapses and the
    final loss ends above qk_norm's; with qk_norm the growth is GROWTH-fold smaller than the
    smallest growth without it and the entropy does not collapse; in every seed."""
    growth = {v: [t["logit_max"] / t["logit0"] for t in ts] for v, ts in top.items()}
    fall = {v: [t["entropy_min"] / t["entropy0"] for t in ts] for v, ts in top.items()}
    qk_final = {t["seed"]: t["final"] for t in top.get("qk_norm", [])}
    plain = [v for v in top if not v.startswith("qk_norm")]
    normed = [v for v in top if v.startswith("qk_norm")]
    grew = bool(plain) and all(
        all(g >= GROWTH for g in growth[v]) and all(f <= COLLAPSE for f in fall[v])
        and all(t["diverged"] or (isinstance(t["final"], (int, float)) and isinstance(qk_final.get(t["seed"]), (int, float))
                                  and t["final"] > qk_final[t["seed"]]) for t in top[v])
        for v in plain)
    least = min((g for v in plain for g in growth[v]), default=math.inf)
    removed = bool(normed) and all(all(g * GROWTH <= least for g in growth[v]) and all(f > COLLAPSE for f in fall[v])
                                   for v in normed)
    parts = [f"{v}: the largest logit grew {min(growth[v]):.3g}-{max(growth[v]):.3g}x its step-0 value and the "
             f"entropy fell to {min(fall[v]):.2g}-{max(fall[v]):.2g} of its start" for v in top]
    return grew and removed, "; ".join(parts)


def sens_check(sens: dict) -> tuple[dict[str, bool], str]:
    base = sens["none"]["seeds"]
    lower = {}
    for v in sens:
        if v == "none":
            continue
        lower[v] = all(sens[v]["seeds"][s] is not None and base[s] is not None
                       and sens[v]["seeds"][s] <= (1 - MARGIN) * base[s] for s in base)
    fmt = lambda x: "-" if x is None else f"{x:.3g}"  # noqa: E731
    text = "; ".join(f"{v} {fmt(sens[v]['mean'])}" for v in sens)
    return lower, text


# ----------------------------------------------------------------------------- figures


def draw_logits(d: dict, top: dict, path: Path) -> Path:
    from ..plots.style import new_figure, save

    fig = new_figure(12.0, 4.2)
    axes = fig.subplots(1, 3)
    for v, ts in top.items():
        for i, t in enumerate(ts):
            kw = dict(color=COLORS[v], linewidth=1.6 if i == 0 else 0.9, alpha=1.0 if i == 0 else 0.6,
                      label=v if i == 0 else None)
            axes[0].plot(t["step"], t["logit"], **kw)
            axes[1].plot(t["step"], t["entropy"], **kw)
            axes[2].plot(t["step"], t["loss"], **kw)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("largest attention logit |q·k|/sqrt(d_h)")
    axes[1].set_ylabel("mean attention entropy (nats)")
    axes[2].set_ylabel("training loss")
    for ax in axes:
        ax.set_xlabel("step")
    axes[0].legend(fontsize=8)
    lr = stability.fmt_value(d["lrs"][-1])
    fig.suptitle(f"Wortsman et al. 2023 at NumPy scale: attention logit growth at lr {lr} (the sweep's highest), "
                 f"seeds {', '.join(map(str, d['seeds']))} (the first thick)", fontsize=10)
    fig.subplots_adjust(left=0.07, right=0.98, top=0.87, bottom=0.13, wspace=0.3)
    return save(fig, path)


def draw_sensitivity(d: dict, sens: dict, path: Path) -> Path:
    from ..plots.style import new_figure, save

    fig = new_figure(12.0, 4.6)
    ax1, ax2 = fig.subplots(1, 2)
    grid = d["grid"]
    lrs = [float(x) for x in d["lrs"]]
    l0s = []
    for v, info in d["variants"].items():
        s = sens[v]["mean"]
        means, maxl = [], []
        for lr, cell in zip(lrs, info["cells"]):
            for r in cell.runs:
                l0 = grid.initial_loss(r)
                if l0 is not None:
                    l0s.append(l0)
                x = r.get(d["key"])
                if isinstance(x, (int, float)) and math.isfinite(x) and not r.get("diverged"):
                    ax1.plot([lr], [x], color=COLORS[v], marker=".", alpha=0.5, linestyle="none")
                ml = r.get("max_attn_logit")
                if isinstance(ml, (int, float)):
                    ax2.plot([lr], [ml], color=COLORS[v], marker=".", alpha=0.5, linestyle="none")
            means.append(cell.mean if cell.mean is not None else math.nan)
            mls = [r.get("max_attn_logit") for r in cell.runs if isinstance(r.get("max_attn_logit"), (int, float))]
            maxl.append(_mean(mls) if mls else math.nan)
        label = f"{v} (LR sensitivity {'-' if s is None else f'{s:.3g}'})"
        ax1.plot(lrs, means, color=COLORS[v], marker="o", label=label)
        ax2.plot(lrs, maxl, color=COLORS[v], marker="o", label=v)
    if l0s:
        ax1.axhline(_mean(l0s), color="grey", linestyle=":", label=f"loss at initialisation ({_mean(l0s):.2f})")
    for ax in (ax1, ax2):
        ax.set_xscale("log")
        ax.set_xlabel("peak learning rate (AdamW)")
    ax2.set_yscale("log")
    ax1.set_ylabel("final held-out loss" if d["key"] == "final_val_loss" else "final loss")
    ax2.set_ylabel("largest attention logit over the run")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    ax1.set_title("final loss against learning rate (Figure 1's view)", fontsize=10)
    ax2.set_title("attention logit growth against learning rate", fontsize=10)
    fig.suptitle(f"Wortsman et al. 2023 at NumPy scale: mean over seeds {', '.join(map(str, d['seeds']))} "
                 "(dots: each seed)", fontsize=10)
    fig.subplots_adjust(left=0.07, right=0.98, top=0.87, bottom=0.12, wspace=0.22)
    return save(fig, path)


# ----------------------------------------------------------------------------- the analysis


def analyse(ctx: Context) -> Outcome:
    d = collect(ctx)
    sens = sensitivities(d)
    top = logits_at_top(d)
    a_ok, a_text = logit_check(top)
    lower, s_text = sens_check(sens)
    draw_logits(d, top, ctx.plots / "wortsman_logits.png")
    draw_sensitivity(d, sens, ctx.plots / "wortsman_sensitivity.png")
    f = stability.fmt_value
    seeds = d["seeds"]

    rows = []
    for v, info in d["variants"].items():
        row = [v]
        for cell in info["cells"]:
            row.append("-" if cell.mean is None else f"{cell.mean:.3f}" + (f" (div {cell.diverged})" if cell.diverged else ""))
        s = sens[v]
        row.append("-" if s["mean"] is None else f"{s['mean']:.3g}")
        row.append(", ".join("-" if s["seeds"][x] is None else f"{s['seeds'][x]:.3g}" for x in seeds))
        rows.append(row)
    loss_table = table(["variant"] + [f"lr {f(x)}" for x in d["lrs"]] + ["LR sensitivity", "per seed"], rows)
    lrows = []
    for v, info in d["variants"].items():
        lrows.append([v] + [
            "-" if not cell.runs else ", ".join(f"{r.get('max_attn_logit', math.nan):.3g}" for r in cell.runs)
            for cell in info["cells"]])
    logit_table = table(["variant"] + [f"lr {f(x)}" for x in d["lrs"]], lrows)
    trows = [[v, t["seed"], t["logit0"], t["logit_max"], t["logit_max"] / t["logit0"], t["entropy0"], t["entropy_min"],
              "-" if not isinstance(t["final"], (int, float)) else t["final"],
              "-" if not isinstance(t["logz"], (int, float)) else t["logz"], "yes" if t["diverged"] else "no"]
             for v, ts in top.items() for t in ts]
    top_table = table(["variant", "seed", "logit at step 0", "largest logit", "growth", "entropy at step 0",
                       "lowest entropy", "final held-out loss", "largest log Z", "diverged"], trows)
    b_ok = bool(lower) and all(lower.values())
    checks = [a_ok, b_ok]
    verdict = "reproduced" if all(checks) else ("partly" if a_ok or any(lower.values()) else "not")
    low = [v for v, ok in lower.items() if ok]
    not_low = [v for v, ok in lower.items() if not ok]
    why = (f"(a) logit growth without qk_norm and its removal with it {'held' if a_ok else 'did not hold'} at lr "
           f"{f(d['lrs'][-1])}; (b) the LR sensitivity (none / qk_norm / z_loss / both: {s_text}) was lower in every "
           f"seed with {', '.join(low) or 'no mitigation'}"
           + (f", not with {', '.join(not_low)}" if not_low else "") + ".")
    body = f"""### Attention logit growth at the highest learning rate (lr {f(d['lrs'][-1])})

![logit growth](plots/wortsman_logits.png)

{top_table}

{a_text}.

### LR sensitivity per variant

![sensitivity](plots/wortsman_sensitivity.png)

Final held-out loss (mean over seeds {', '.join(map(str, seeds))}) per peak learning rate, and the LR sensitivity
E_η[min(ℓ(η), ℓ₀) − ℓ*] along the lr axis (gradlab.stability.lr_sensitivity: the mean curve, and each seed's own):

{loss_table}

Largest attention logit over each run (per seed):

{logit_table}

### The rule

(a) at the highest learning rate, without qk_norm (none, z_loss) the largest attention logit grows to at least
{GROWTH:g}x its step-0 value, the mean attention entropy falls to {COLLAPSE:g} of its step-0 value or below, and the
final held-out loss ends above qk_norm's (or diverges), in every seed; with qk_norm (qk_norm, both) the logit's
growth is at least {GROWTH:g}x smaller than the least growth without it, and the entropy stays above
{COLLAPSE:g} of its start, in every seed: **{'holds' if a_ok else 'does not hold'}**. (b) each mitigation
(qk_norm, z_loss, both) has an LR sensitivity at least {MARGIN:.0%} below none's in every seed's own curve:
{'; '.join(f'{v} **{"lower" if ok else "not lower"}**' for v, ok in lower.items())}. Reproduced when (a) holds and
every mitigation is lower; partly when (a) holds or some mitigation is lower; not otherwise.
"""
    return Outcome(verdict, why, body)


REPRODUCTION = Reproduction(
    name="wortsman-stability",
    title="Wortsman et al. 2023: attention logit growth and LR sensitivity in small transformers",
    paper="Mitchell Wortsman, Peter J. Liu, Lechao Xiao et al., \"Small-scale proxies for large-scale Transformer "
          "training instabilities\", ICLR 2024, https://arxiv.org/abs/2309.14322",
    claim="At high learning rates a small transformer shows the instability seen at scale: the attention logits "
          "grow by orders of magnitude, the attention entropy collapses and the final loss rises (section 3.1.1, "
          "Figures 1 and 3); qk-layernorm removes the growth. Their summary number, the LR sensitivity "
          "E_η[min(ℓ(η), ℓ₀) − ℓ*] over learning rates 3e-4 to 3e-1 (section 2.2), is lower with qk-layernorm, "
          "and z-loss, which keeps the output logits from diverging from the log probabilities (section 3.2), "
          "lowers it too.",
    configs=("wortsman_stability.yaml",),
    analyse=analyse,
    minutes=2.9,
)
