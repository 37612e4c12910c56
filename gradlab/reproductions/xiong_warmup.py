"""Xiong et al. 2020: a post-LN transformer needs a learning-rate warm-up where a pre-LN one
does not, because at initialisation the gradients of its last layers are large.

Two experiments: `xiong_warmup` (norm x warm-up x lr, trained) and `xiong_init` (norm x depth,
one step each: the gradient norms of the initial weights, layer_norms.csv's step 0). Three
checks, each computed from the runs by a rule stated in the body:

1. warm-up: at some learning rate pre-LN without warm-up learnt in every seed, post-LN without
   warm-up in none, and post-LN with a warm-up in every seed. "Learnt" is measured against the
   text, not against ℓ₀: a character model that has learnt no context still scores the text's
   unigram entropy H₁, far below ℓ₀, so a run learnt when its held-out loss is below the midpoint
   of H₁ and the grid's best cell mean ℓ* (closer to the best model than to no context at all).
2. Theorem 1: the last block's W² gradient at initialisation is larger for post-LN at every
   depth, and falls with depth for pre-LN (O(sqrt(1 / L))) while post-LN's does not: the ratio
   post / pre grows with depth.
3. Figure 3: per block at depth 6, post-LN's W¹ and W² gradient norms rise towards the output
   (last block above first) and pre-LN's are flatter than post-LN's (a smaller last/first ratio).
"""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path
from typing import Any, Optional

from .. import stability
from ..io import read_csv
from ..store import collect_reports
from .base import Context, Outcome, Reproduction, table

TRAIN, INIT = "xiong_warmup", "xiong_init"
NORMS = ("pre", "post")
W1, W2 = "mlp.fc.W", "mlp.proj.W"  # the FFN's two weights, W^1 and W^2 in the paper


# ----------------------------------------------------------------------------- reading


def unigram_entropy(cfg: Any) -> float:
    """The lm text's character entropy in nats: what a model that learnt no context scores."""
    from ..texts import lm_text

    text = lm_text(cfg.task.path, cfg.task.sha256)
    counts = Counter(text)
    n = len(text)
    return -math.fsum(c / n * math.log(c / n) for c in counts.values())


def step0_norms(exp: Path, run: dict) -> dict[str, float]:
    """Each parameter's gradient L2 norm at step 0 (the initial weights, the first batch)."""
    header, rows = read_csv(exp / "runs" / run["run_id"] / "layer_norms.csv")
    return dict(zip(header[1:], rows[0][1:]))


def _mean(xs: list[float]) -> float:
    return math.fsum(xs) / len(xs)


def _at(run: dict, key: str) -> Any:
    return run["grid"][key]


# ----------------------------------------------------------------------------- the warm-up grid


def warmup_table(ctx: Context) -> dict:
    """The training grid, cell by cell: mean held-out loss, per-seed losses, learnt counts."""
    exp, cfg = ctx.experiments[TRAIN], ctx.configs[TRAIN]
    reports = collect_reports(exp)
    grid = stability.build(reports, cfg, exp)
    key = grid.key
    lrs = grid.axis("train.optimizer.lr").values
    warmups = grid.axis("train.schedule.warmup_steps").values
    full = grid.view([a.key for a in grid.axes])
    variant = grid.clipping.values[0]
    cells = {(n, w, lr): full[(n, w, lr, variant)] for n in NORMS for w in warmups for lr in lrs}
    means = [c.mean for c in cells.values() if c.mean is not None]
    h1 = unigram_entropy(cfg)
    best = min(means) if means else math.nan
    bar = (h1 + best) / 2

    def learnt(run: dict) -> bool:
        x = run.get(key)
        return not run.get("diverged") and isinstance(x, (int, float)) and math.isfinite(x) and x < bar

    counts = {k: (sum(learnt(r) for r in c.runs), c.n) for k, c in cells.items()}
    return dict(grid=grid, key=key, lrs=lrs, warmups=warmups, cells=cells, h1=h1, best=best, bar=bar,
                counts=counts, seeds=grid.seeds)


def warmup_check(t: dict) -> tuple[list, str]:
    """The learning rates where the claim holds (pre-LN without warm-up learnt in every seed,
    post-LN without in none, post-LN with a warm-up in every seed), and a sentence."""
    every = lambda k: t["counts"][k][1] > 0 and t["counts"][k][0] == t["counts"][k][1]  # noqa: E731
    none = lambda k: t["counts"][k][1] > 0 and t["counts"][k][0] == 0  # noqa: E731
    w0, later = t["warmups"][0], t["warmups"][1:]
    holds, needs = [], []
    for lr in t["lrs"]:
        if every(("pre", w0, lr)) and none(("post", w0, lr)):
            needs.append(lr)
            if any(every(("post", w, lr)) for w in later):
                holds.append(lr)
    f = stability.fmt_value
    pre_ok = [lr for lr in t["lrs"] if every(("pre", w0, lr))]
    post_ok = [lr for lr in t["lrs"] if every(("post", w0, lr))]
    text = (f"Without warm-up pre-LN learnt in every seed at lr {', '.join(map(f, pre_ok)) or 'none'}, "
            f"post-LN at {', '.join(map(f, post_ok)) or 'none'}; ")
    if holds:
        text += f"at lr {', '.join(map(f, holds))} post-LN learnt in no seed without warm-up and in every seed with one."
    elif needs:
        text += (f"at lr {', '.join(map(f, needs))} post-LN learnt in no seed without warm-up, and no warm-up "
                 "made it learn in every seed there.")
    else:
        text += "there is no learning rate where pre-LN learnt in every seed and post-LN in none."
    return holds, text


# ----------------------------------------------------------------------------- initialisation


def init_depths(ctx: Context) -> dict:
    """The last block's W² (and W¹) gradient norm at step 0, per norm and depth, over seeds."""
    exp = ctx.experiments[INIT]
    reports = collect_reports(exp)
    out: dict = {}
    for r in reports:
        n, d = _at(r, "model.norm"), int(_at(r, "model.depth"))
        g = step0_norms(exp, r)
        out.setdefault((n, d), []).append((g[f"block.{d - 1}.{W2}"], g[f"block.{d - 1}.{W1}"]))
    depths = sorted({d for _, d in out})
    return dict(by=out, depths=depths)


def depth_check(t: dict) -> tuple[bool, str, list]:
    """Theorem 1: post-LN above pre-LN at every depth, and the ratio post / pre growing with it."""
    rows, ratios, above = [], [], True
    for d in t["depths"]:
        pre = [x[0] for x in t["by"].get(("pre", d), [])]
        post = [x[0] for x in t["by"].get(("post", d), [])]
        if not pre or not post:
            continue
        mp, mq = _mean(pre), _mean(post)
        ratios.append(mq / mp)
        above = above and mq > mp
        rows.append([d, mp, min(pre), max(pre), mq, min(post), max(post), mq / mp])
    grows = len(ratios) >= 2 and all(b > a for a, b in zip(ratios, ratios[1:]))
    ok = bool(rows) and above and grows
    if not rows:
        return False, "no depth has runs of both norms", rows
    first, last = rows[0], rows[-1]
    text = (f"the last block's W² gradient at initialisation is {'larger for post-LN at every depth' if above else 'not larger for post-LN at every depth'}; "
            f"from depth {first[0]} to {last[0]} pre-LN's mean goes {first[1]:.3g} -> {last[1]:.3g} "
            f"(x{last[1] / first[1]:.2f}; sqrt({first[0]}/{last[0]}) = {math.sqrt(first[0] / last[0]):.2f}), "
            f"post-LN's {first[4]:.3g} -> {last[4]:.3g} (x{last[4] / first[4]:.2f}), "
            f"the ratio post/pre {first[7]:.2f} -> {last[7]:.2f} ({'growing at every depth' if grows else 'not growing at every depth'})")
    return ok, text, rows


def layer_profile(ctx: Context, t: dict) -> dict:
    """Per block, W¹ and W² gradient norms at step 0 of the training grid's model (its first
    cell per seed: every cell of a seed starts from the same weights and batch)."""
    exp = ctx.experiments[TRAIN]
    depth = ctx.configs[TRAIN].model.depth
    w0, lr0 = t["warmups"][0], t["lrs"][0]
    prof: dict = {}
    for n in NORMS:
        for r in t["cells"][(n, w0, lr0)].runs:
            g = step0_norms(exp, r)
            for w in (W1, W2):
                prof.setdefault((n, w), []).append([g[f"block.{i}.{w}"] for i in range(depth)])
    return dict(prof=prof, depth=depth)


def profile_check(p: dict) -> tuple[bool, str, list]:
    """Figure 3: post-LN's gradient rises towards the output (last block above first, W¹ and
    W²), and pre-LN's profile is flatter (a last/first ratio nearer 1 than post-LN's)."""
    rows, ok = [], True
    ratio = {}
    for n in NORMS:
        for w in (W1, W2):
            seeds = p["prof"].get((n, w), [])
            if not seeds:
                return False, "no runs", []
            mean = [_mean([s[i] for s in seeds]) for i in range(p["depth"])]
            ratio[(n, w)] = mean[-1] / mean[0]
            rows.append([f"{n}-LN", "W¹" if w == W1 else "W²"] + mean + [ratio[(n, w)]])
    for w in (W1, W2):
        rises = ratio[("post", w)] > 1
        flatter = abs(math.log(ratio[("pre", w)])) < abs(math.log(ratio[("post", w)]))
        ok = ok and rises and flatter
    text = (f"per block at depth {p['depth']}, the last/first ratio of the gradient norms is "
            f"{ratio[('post', W1)]:.2f} (W¹) and {ratio[('post', W2)]:.2f} (W²) for post-LN, "
            f"{ratio[('pre', W1)]:.2f} and {ratio[('pre', W2)]:.2f} for pre-LN")
    return ok, text, rows


# ----------------------------------------------------------------------------- figures


def draw_map(t: dict, path: Path) -> Path:
    """Two panels (pre-LN, post-LN): warm-up down, lr across, each cell's mean held-out loss
    printed, cells where not every seed learnt hatched with k/n."""
    from matplotlib.colors import Normalize

    from ..plots.style import new_figure, save

    lrs, warmups = t["lrs"], t["warmups"]
    fig = new_figure(4.2 * 2 + 1.4, 1.0 + 0.7 * len(warmups) + 1.3)
    axes = fig.subplots(1, 2, sharey=True)
    means = [c.mean for c in t["cells"].values() if c.mean is not None]
    norm = Normalize(min(means + [t["best"]]), max(means + [t["h1"]]))
    import matplotlib

    cmap = matplotlib.colormaps["viridis_r"]
    for ax, n in zip(axes, NORMS):
        for i, w in enumerate(warmups):
            for j, lr in enumerate(lrs):
                c = t["cells"][(n, w, lr)]
                k, m = t["counts"][(n, w, lr)]
                col = cmap(norm(c.mean)) if c.mean is not None else "#bdbdbd"
                ax.add_patch(matplotlib.patches.Rectangle((j, i), 1, 1, facecolor=col, edgecolor="white",
                                                          hatch=None if k == m else "//"))
                r, g, b = matplotlib.colors.to_rgb(col)
                tc = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
                label = "-" if c.mean is None else f"{c.mean:.2f}"
                if k < m:
                    label += f"\nlearnt {k}/{m}"
                if c.diverged:
                    label += f"\ndiv {c.diverged}/{c.n}"
                ax.text(j + 0.5, i + 0.5, label, ha="center", va="center", fontsize=8, color=tc)
        ax.set_xlim(0, len(lrs))
        ax.set_ylim(len(warmups), 0)
        ax.set_xticks([j + 0.5 for j in range(len(lrs))], [stability.fmt_value(x) for x in lrs])
        ax.set_yticks([i + 0.5 for i in range(len(warmups))], [stability.fmt_value(w) for w in warmups])
        ax.set_xlabel("Adam learning rate")
        ax.set_title(f"{n}-LN", fontsize=11)
    axes[0].set_ylabel("warm-up steps")
    sm = matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap)
    fig.colorbar(sm, ax=list(axes), label="mean final held-out loss", fraction=0.04, pad=0.02)
    fig.suptitle(f"Xiong et al. 2020 at NumPy scale: final held-out loss, mean over seeds "
                 f"{', '.join(map(str, t['seeds']))}\n"
                 f"hatched: not every seed learnt (held-out loss below {t['bar']:.2f}, midway between the "
                 f"unigram entropy {t['h1']:.2f} and the best cell {t['best']:.2f})", fontsize=9)
    fig.subplots_adjust(left=0.09, right=0.86, top=0.78, bottom=0.16, wspace=0.08)
    return save(fig, path)


def draw_init(p: dict, d: dict, path: Path) -> Path:
    """Left: per block gradient norms at step 0 (depth of the training model), W¹ and W²,
    pre vs post, mean over seeds (dots per seed). Right: the last block's W² gradient against
    depth, with the slope -1/2 of Theorem 1's pre-LN bound."""
    from ..plots.style import new_figure, save

    fig = new_figure(11.0, 4.4)
    ax1, ax2 = fig.subplots(1, 2)
    colors = {"pre": "#1f77b4", "post": "#d62728"}
    style = {W1: dict(linestyle="--", marker="s"), W2: dict(linestyle="-", marker="o")}
    xs = list(range(p["depth"]))
    for (n, w), seeds in sorted(p["prof"].items()):
        mean = [_mean([s[i] for s in seeds]) for i in xs]
        ax1.plot(xs, mean, color=colors[n], label=f"{n}-LN, {'W¹ (mlp.fc)' if w == W1 else 'W² (mlp.proj)'}",
                 **style[w])
        for s in seeds:
            ax1.plot(xs, s, color=colors[n], alpha=0.35, linestyle="none", marker=".")
    ax1.set_yscale("log")
    ax1.set_xlabel("block (0 = nearest the input)")
    ax1.set_ylabel("gradient norm at initialisation")
    ax1.set_title(f"per block, depth {p['depth']} (Figure 3's view)", fontsize=10)
    ax1.set_xticks(xs)
    ax1.legend(fontsize=8)
    for n in NORMS:
        ds = [x for x in d["depths"] if (n, x) in d["by"]]
        mean = [_mean([v[0] for v in d["by"][(n, x)]]) for x in ds]
        ax2.plot(ds, mean, color=colors[n], marker="o", label=f"{n}-LN")
        for x in ds:
            ax2.plot([x] * len(d["by"][(n, x)]), [v[0] for v in d["by"][(n, x)]], color=colors[n], alpha=0.35,
                     linestyle="none", marker=".")
        if n == "pre" and ds:
            ax2.plot(ds, [mean[0] * math.sqrt(ds[0] / x) for x in ds], color="grey", linestyle=":",
                     label="∝ 1/sqrt(L) (Theorem 1, pre-LN)")
    ax2.set_xscale("log", base=2)
    ax2.set_yscale("log")
    ax2.set_xticks(d["depths"], [str(x) for x in d["depths"]])
    ax2.set_xlabel("depth L (blocks)")
    ax2.set_ylabel("last block's W² gradient norm")
    ax2.set_title("the last block against depth (Theorem 1's view)", fontsize=10)
    ax2.legend(fontsize=8)
    fig.suptitle("Xiong et al. 2020: gradient norms at initialisation (step 0 of each run, Xavier init without "
                 "depth scaling)", fontsize=10)
    fig.subplots_adjust(left=0.08, right=0.98, top=0.86, bottom=0.12, wspace=0.25)
    return save(fig, path)


# ----------------------------------------------------------------------------- the analysis


def analyse(ctx: Context) -> Outcome:
    t = warmup_table(ctx)
    holds, warm_text = warmup_check(t)
    d = init_depths(ctx)
    depth_ok, depth_text, depth_rows = depth_check(d)
    p = layer_profile(ctx, t)
    prof_ok, prof_text, prof_rows = profile_check(p)
    draw_map(t, ctx.plots / "xiong_warmup_map.png")
    draw_init(p, d, ctx.plots / "xiong_init.png")

    f = stability.fmt_value
    rows = []
    for n in NORMS:
        for w in t["warmups"]:
            row = [f"{n}-LN", f(w)]
            for lr in t["lrs"]:
                c = t["cells"][(n, w, lr)]
                k, m = t["counts"][(n, w, lr)]
                losses = ", ".join(f"{x:.2f}" for x in c.losses) or "-"
                row.append(f"{losses} ({k}/{m})" + (f" div {c.diverged}" if c.diverged else ""))
            rows.append(row)
    grid_table = table(["norm", "warm-up"] + [f"lr {f(lr)}" for lr in t["lrs"]], rows)
    depth_table = table(["depth", "pre-LN mean", "pre min", "pre max", "post-LN mean", "post min", "post max",
                         "post / pre"], depth_rows)
    prof_table = table(["norm", "weight"] + [f"block {i}" for i in range(p["depth"])] + ["last / first"], prof_rows)
    checks = [bool(holds), depth_ok, prof_ok]
    verdict = "reproduced" if all(checks) else ("partly" if any(checks) else "not")
    why = "; ".join([
        (f"warm-up held: at lr {', '.join(map(f, holds))} post-LN learnt in no seed without warm-up and in every "
         "seed with one, pre-LN in every seed without" if holds else
         "warm-up did not hold: no learning rate where pre-LN learnt without warm-up, post-LN did not and a warm-up "
         "made it learn, in every seed"),
        (f"Theorem 1 {'held' if depth_ok else 'did not hold'}: the last block's W² gradient at initialisation, "
         f"post-LN over pre-LN, {depth_rows[0][7]:.2f}x at depth {depth_rows[0][0]} and {depth_rows[-1][7]:.2f}x at "
         f"depth {depth_rows[-1][0]}" if depth_rows else "Theorem 1 did not hold: no runs"),
        (f"Figure 3 {'held' if prof_ok else 'did not hold'}: post-LN's per-block gradients, last block over first, "
         f"{prof_rows[2][-1]:.2f} (W¹) and {prof_rows[3][-1]:.2f} (W²), pre-LN's {prof_rows[0][-1]:.2f} and "
         f"{prof_rows[1][-1]:.2f}" if len(prof_rows) == 4 else "Figure 3 did not hold: no runs"),
    ]) + "."
    body = f"""### Warm-up x learning rate (`xiong_warmup`)

![warm-up x lr](plots/xiong_warmup_map.png)

Final held-out loss of each seed (seeds {', '.join(map(str, t['seeds']))}) and how many learnt, per norm, warm-up
and Adam learning rate. A run *learnt* when its held-out loss is below {t['bar']:.3f}, midway between the text's
unigram entropy H₁ = {t['h1']:.3f} nats (what a model that learnt no context scores) and the grid's best cell mean
ℓ* = {t['best']:.3f}: closer to the best model than to no context at all.

{grid_table}

{warm_text}

### Gradient norms at initialisation (`xiong_init`, and step 0 of `xiong_warmup`)

![gradients at initialisation](plots/xiong_init.png)

The last block's W² (`mlp.proj.W`) gradient norm at step 0, over {len(d['by'].get(('pre', d['depths'][0]), []))} seeds:

{depth_table}

Per block at depth {p['depth']} (W¹ = `mlp.fc.W`, W² = `mlp.proj.W`, mean over seeds):

{prof_table}

### The rule

Three checks, each from the numbers above: (1) warm-up: at some learning rate pre-LN without warm-up learnt in
every seed, post-LN without warm-up in none, post-LN with a warm-up in every seed: **{'holds' if holds else 'does not hold'}**;
(2) Theorem 1: the last block's W² gradient is larger for post-LN at every depth and the ratio post/pre grows with
depth: **{'holds' if depth_ok else 'does not hold'}**; (3) Figure 3: post-LN's per-block gradients rise towards the
output (last block above the first, W¹ and W²) and pre-LN's are flatter: **{'holds' if prof_ok else 'does not hold'}**.
Reproduced when all three hold, partly when some do, not when none does.
"""
    return Outcome(verdict, why, body)


REPRODUCTION = Reproduction(
    name="xiong-warmup",
    title="Xiong et al. 2020: post-LN transformers need warm-up, pre-LN ones do not",
    paper="Ruibin Xiong, Yunchang Yang, Di He et al., \"On Layer Normalization in the Transformer Architecture\", "
          "ICML 2020, https://arxiv.org/abs/2002.04745",
    claim="A post-LN transformer (LayerNorm after each residual sum) trained with Adam needs a learning-rate "
          "warm-up: without one, at a learning rate where it trains with warm-up, it ends far worse (section 3.2, "
          "Figure 2), while a pre-LN transformer trains without warm-up (section 4, Figure 4). The cause they prove "
          "(Theorem 1) and show (Figure 3): at initialisation the gradient of the last layers' weights is large "
          "for post-LN, O(d sqrt(ln d)) whatever the depth L, and rises towards the output layer; for pre-LN it "
          "is O(d sqrt(ln d / L)) and the same in every layer.",
    configs=("xiong_warmup.yaml", "xiong_init.yaml"),
    analyse=analyse,
    minutes=3.5,
)
