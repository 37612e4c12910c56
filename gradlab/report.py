"""The NaN-divergence report: a table of runs, a sentence of findings, the plots embedded.

Built from the experiment directory alone (summary.json or the runs' report.json files and
config.yaml), so `gradlab report` can rewrite it at any time.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Optional


from . import environment, io
from .io import as_float as _float
from .io import read_yaml
from .kinds import describe as describe_model
from .sweeps import SweepRow, config_dict, family_names, is_sweep, sweep_rows

COLUMNS = ("run", "method", "threshold", "seed", "diverged", "step", "phase", "where",
           "max grad norm", "final loss", "clip fraction")


def _num(x, fmt: str = ".3g") -> str:
    if x is None:
        return "-"
    if isinstance(x, str):  # JSON's spelling of nan / inf
        return x
    return format(x, fmt) if math.isfinite(x) else str(x)


# For transformer runs (those recording max_attn_logit): the column and the report.json field
# it shows. The largest attention logit is the transformer's warning sign of a divergence (a
# terminal keeps it when there is room); log Z is for report.md. A recurrent classifier's log Z
# stays in its files: next to a gradient norm it says little.
DIAGNOSTIC_TABLE = (("max attn logit", "max_attn_logit"), ("max log Z", "max_logit_z"))


def columns(reports: list[dict]) -> tuple[str, ...]:
    """The table's columns: the cosine the rule kept for runs that record it, accuracy only
    for classification tasks, the diagnostics for the models and losses that have them."""
    return (COLUMNS + (("grad cosine",) if any("mean_grad_cosine" in r for r in reports) else ())
            + (("final accuracy",) if any("final_accuracy" in r for r in reports) else ())
            + (tuple(c for c, _ in DIAGNOSTIC_TABLE) if any("max_attn_logit" in r for r in reports) else ()))


def table_rows(reports: list[dict]) -> list[list[str]]:
    """One row of strings per run, in columns() order (shared by report.md and the CLI table)."""
    cols = columns(reports)
    rows = []
    for r in reports:
        f = r.get("first_nonfinite") or {}
        rows.append([
            r["run_id"], r["method"], _num(r.get("threshold"), "g"), str(r["seed"]),
            "yes" if r["diverged"] else "no", _num(r.get("divergence_step"), "d"),
            f.get("phase", "-"), f.get("where", "-"), _num(r.get("max_grad_norm")),
            _num(r.get("final_loss")), f"{r.get('clip_fraction', 0.0):.0%}",
        ] + ([_num(r.get("mean_grad_cosine"), ".4g")] if "grad cosine" in cols else [])
          + ([_pct(r.get("final_accuracy"))] if "final accuracy" in cols else [])
          + [_num(r.get(key)) for c, key in DIAGNOSTIC_TABLE if c in cols])
    return rows


# What a terminal table keeps when it is narrow, most important first: which run, whether
# and when it diverged, and where; then its numbers. method, threshold and seed are in the
# run id already. report.md has every column.
TERMINAL_PRIORITY = ("run", "diverged", "step", "where", "final loss", "final accuracy", "max grad norm",
                     "max attn logit", "clip fraction", "grad cosine", "phase")
SHORT_HEADERS = {"diverged": "div", "max grad norm": "max grad", "final loss": "loss", "clip fraction": "clip",
                 "final accuracy": "acc", "grad cosine": "cos", "max attn logit": "attn"}


def terminal_columns(reports: list[dict], width: int, wide: bool = False) -> list[tuple[int, str]]:
    """(index into columns(), header) of the columns a terminal table of `width` characters
    shows, in table order. Values are never cut: with too little room the headers shorten,
    then the least important columns go; with `wide` every column stays. A boxed table of
    column widths w_i takes sum(w_i) + 3n + 1 characters (a rule and a space each side)."""
    cols = columns(reports)
    rows = table_rows(reports)
    shown = [c for c in cols if wide or c in TERMINAL_PRIORITY]
    if wide:
        return [(cols.index(c), c) for c in shown]

    def need(names: list[str], short: bool) -> int:
        total = 1
        for c in names:
            i = cols.index(c)
            header = SHORT_HEADERS.get(c, c) if short else c
            total += max([len(header)] + [len(r[i]) for r in rows]) + 3
        return total

    order = sorted(shown, key=TERMINAL_PRIORITY.index)
    # The most columns that fit, with full headers if they fit, else short ones; run,
    # diverged and step always stay.
    k, short = next(((k, short) for k in range(len(order), 2, -1) for short in (False, True)
                     if need(order[:k], short) <= width), (3, True))
    return [(cols.index(c), SHORT_HEADERS.get(c, c) if short else c) for c in shown if c in order[:k]]


def _pct(x) -> str:
    return f"{x:.1%}" if isinstance(x, (int, float)) and math.isfinite(x) else "-"



def _places(firsts: list[dict]) -> str:
    """Why runs stopped, for the summary: where their first non-finite values were born,
    grouped by phase ("forward at layer1.linear (2 seeds) and loss"), or the loss scale's
    collapse (every step skipped until the scale fell below min_scale)."""
    by_phase: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for f in firsts:
        if f.get("kind") != "loss_scale_collapse":
            by_phase[f["phase"]][f["where"]] += 1
    located = []
    for phase in sorted(by_phase):
        wheres = [w + (f" ({n} seeds)" if n > 1 else "") for w, n in sorted(by_phase[phase].items())]
        located.append(f"{phase} at " + (wheres[0] if len(wheres) == 1 else ", ".join(wheres[:-1]) + " and " + wheres[-1]))
    parts = ["first non-finite value: " + "; ".join(located)] if located else []
    if any(f.get("kind") == "loss_scale_collapse" for f in firsts):
        parts.append("the loss scale fell below min_scale: non-finite gradients at every scale tried")
    return "; ".join(parts)


def findings(reports: list[dict], exp: Optional[Path] = None) -> str:
    """A few sentences a reader can take away, one per clipping variant across seeds. `exp`,
    the experiment directory, gives a grid's runs their loss at initialisation (a run that
    ended no better than it started did not train)."""
    if not reports:
        return "No run has finished yet."
    if any(isinstance(r.get("grid"), dict) for r in reports):
        # A variant's runs are at every grid point: counted together they would say nothing.
        from .stability import finding

        return finding(reports, exp_dir=exp)
    by_variant: dict[str, list[dict]] = defaultdict(list)
    for r in reports:
        by_variant[r["variant"]].append(r)
    sentences = []
    for variant, rs in by_variant.items():
        div = [r for r in rs if r["diverged"]]
        seeds = f"{len(rs)} seed" + ("s" if len(rs) > 1 else "")
        if div:
            steps = sorted(r["divergence_step"] for r in div)
            span = str(steps[0]) if steps[0] == steps[-1] else f"{steps[0]}-{steps[-1]}"
            places = _places([r["first_nonfinite"] for r in div])
            logits = [r["max_attn_logit"] for r in div if isinstance(r.get("max_attn_logit"), (int, float))]
            # A transformer's attention logits before it diverged: their growth is the usual cause.
            grown = f"; largest attention logit {max(logits):.3g}" if logits else ""
            sentences.append(f"`{variant}` diverged in {len(div)} of {seeds} at step {span} "
                             f"({places}{grown}).")
        ok = [r for r in rs if not r["diverged"]]
        if ok:
            losses = [r["final_loss"] for r in ok if isinstance(r.get("final_loss"), (int, float))]
            clip = sum(r["clip_fraction"] for r in ok) / len(ok)
            loss_txt = f", final loss {min(losses):.3g}" + (f"-{max(losses):.3g}" if len(losses) > 1 else "") if losses else ""
            accs = [r["final_accuracy"] for r in ok if isinstance(r.get("final_accuracy"), (int, float))]
            if accs:
                loss_txt += f", accuracy {_pct(min(accs))}" + (f"-{_pct(max(accs))}" if len(accs) > 1 else "")
            skips = [r["skip_fraction"] for r in ok if isinstance(r.get("skip_fraction"), (int, float))]
            skip_txt = f", skipping {sum(skips) / len(skips):.0%}" if skips else ""
            sentences.append(f"`{variant}` trained {ok[0]['steps']} steps in {len(ok)} of {seeds}"
                             f"{loss_txt}, clipping {clip:.0%} of steps{skip_txt}.")
        sentences += _backoffs(variant, rs)
    return " ".join(sentences)


def _backoffs(variant: str, rs: list[dict]) -> list[str]:
    """Why a variant's loss scale backed off: how often, where the first overflow of those
    steps was born most often, and how low the scale went."""
    births: dict[str, int] = defaultdict(int)
    for r in rs:
        for where, n in (r.get("overflow_births") or {}).items():
            births[where] += int(n)
    total = sum(births.values())
    if not total:
        return []
    top, n = max(births.items(), key=lambda kv: (kv[1], kv[0]))
    lows = [r["min_loss_scale"] for r in rs if isinstance(r.get("min_loss_scale"), (int, float))]
    low = f"; the scale fell to {min(lows):.3g}" if lows else ""
    return [f"`{variant}`'s loss scale backed off {total} time{'s' * (total > 1)}; {n} time{'s' * (n > 1)} "
            f"the first overflow was born in {top}{low}."]


def _percent(x: float) -> str:
    """A percentage in two significant digits, three from 10 up (never 1e+02); 100 only
    when it is all."""
    text = f"{x:.3g}" if x >= 10 else f"{x:.2g}"
    return "99.9" if text == "100" and x < 100 else text


def _span(xs: list[float]) -> str:
    """Percentages of the seeds: one, or the least and the largest."""
    lo, hi = _percent(min(xs)), _percent(max(xs))
    return f"{lo}%" if lo == hi else f"{lo}-{hi}%"


def underflow_finding(reports: list[dict], precision) -> str:
    """What underflow cost (train.precision.measure_underflow), per variant over its seeds:
    the fraction of the gradient entries non-zero in float32 that the compute dtype had as
    zero or subnormal at the last measured step, the tensor that lost the most there, and the
    most at any measured step. "" for runs that did not measure it."""
    measured = [r for r in reports if isinstance(r.get("final_underflow"), (int, float))]
    if not measured:
        return ""
    p = precision if isinstance(precision, dict) else {}
    compute = p.get("compute", "the compute dtype")
    scaling = "no loss scaling" if p.get("loss_scale", "none") == "none" else f"{p['loss_scale']} loss scaling"
    by_variant: dict[str, list[dict]] = defaultdict(list)
    for r in measured:
        by_variant[r["variant"]].append(r)
    parts = []
    for variant, rs in by_variant.items():
        final = [100 * r["final_underflow"] for r in rs]
        what = (f" of the gradient entries that were non-zero in float32 (zero or subnormal in {compute}"
                if not parts else " (")
        worst = [r for r in rs if r.get("underflow_tensor")]
        if worst:
            names = sorted({r["underflow_tensor"] for r in worst}, key=[r["underflow_tensor"] for r in worst].index)
            what += (f"{'; ' if not parts else ''}the most in {', '.join(names)}, "
                     f"{_span([100 * r['underflow_tensor_fraction'] for r in worst])} of theirs")
        text = f"`{variant}` lost {_span(final)}{what})" if what != " (" else f"`{variant}` lost {_span(final)}"
        peaks = [100 * r["max_underflow"] for r in rs if isinstance(r.get("max_underflow"), (int, float))]
        if peaks and _percent(max(peaks)) != _percent(max(final)):
            text += f", up to {_percent(max(peaks))}% at an earlier measured step"
        parts.append(text)
    return f"Gradient underflow in {compute} ({scaling}): at the last measured step " + "; ".join(parts) + "."


# ----------------------------------------------------------------------------- threshold sweep

SWEEP_PLOTS = ("sweep_final_loss", "sweep_divergence", "sweep_clip_fraction", "sweep_direction", "sweep_grad_norm_s")


def _one_family(rows: list[SweepRow]) -> bool:
    return len({r.family for r in rows if r.method != "none"}) <= 1


def _label(row: SweepRow, one_family: bool) -> str:
    if row.method == "none":
        return "none (no clipping)"
    return _num(row.threshold, "g") if one_family else row.variant


def _cell(r: dict | None) -> str:
    if r is None:
        return "-"
    if r.get("diverged"):
        step = _float(r.get("divergence_step"))
        return f"div @ {int(step) if step is not None else '?'}"
    loss = _float(r.get("final_loss"))
    return f"ok {_num(loss)}" if loss is not None else "ok"


def _fraction(x: float | None) -> str:
    if x is None:
        return "-"
    return "<1%" if 0 < x < 0.005 else f"{x:.0%}"


def sweep_table(reports: list[dict], cfg) -> list[str]:
    """The markdown table of a sweep: one row per threshold (the baseline first), one column
    per seed, each cell `ok <final loss>` or `div @ <step>`; then the seeds that trained, the
    mean final loss over them, the mean clip fraction, and the mean grad cosine (of the runs'
    means over their clipped steps)."""
    seeds, rows = sweep_rows(reports, cfg)
    one = _one_family(rows)
    families = list(dict.fromkeys(r.method for r in rows if r.method != "none"))
    knob = next((r.knob for r in rows if r.method != "none"), None)
    head = (knob or "threshold") if one and families else "variant"
    # The direction kept, for runs that record it (as the runs table's `grad cosine`).
    cosine = any("mean_grad_cosine" in r for r in reports)
    header = [head] + [f"seed {s}" for s in seeds] + ["trained", "mean final loss (trained seeds)", "clip fraction"] \
        + (["grad cosine (clipped steps)"] if cosine else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [_label(row, one)] + [_cell(row.runs.get(s)) for s in seeds]
        cells += [f"{len(row.ok)}/{len(row.runs)}", _num(row.mean_loss),
                  "-" if row.method == "none" else _fraction(row.clip_fraction)]
        cells += [_num(row.grad_cosine, ".4g")] if cosine else []
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _steps_text(steps: list[int]) -> str:
    if not steps:
        return "step ?"
    return f"step {steps[0]}" if steps[0] == steps[-1] else f"steps {steps[0]}-{steps[-1]}"


def _stable_text(rows: list[SweepRow], name: str) -> str | None:
    """'thresholds <= 1', 'thresholds >= 3', 'thresholds 0.3-3', 'every threshold (0.1-30)',
    'threshold 1', 'thresholds 0.1, 1 and 10' (one family's rows that trained in every seed)."""
    ts = [r.threshold for r in rows]
    good = [r.stable for r in rows]
    k = sum(good)
    if not k:
        return None
    plural = f"{name}s" if name == "threshold" else name
    g = lambda x: _num(x, "g")  # noqa: E731
    if k == len(rows):
        return f"{name} {g(ts[0])}" if k == 1 else f"every {name} ({g(ts[0])}-{g(ts[-1])})"
    first, last = good.index(True), len(good) - 1 - good[::-1].index(True)
    if k == 1:
        return f"only {name} {g(ts[first])}"
    if last - first + 1 == k:  # one unbroken range
        if first == 0:
            return f"{plural} <= {g(ts[last])}"
        if last == len(rows) - 1:
            return f"{plural} >= {g(ts[first])}"
        return f"{plural} {g(ts[first])}-{g(ts[last])}"
    return f"{plural} {_join([g(t) for t, ok in zip(ts, good) if ok])}"


def _seeds_of(rows: list[SweepRow], all_of: bool) -> str:
    """'in 3 of 3 seeds' ('in all 3 seeds', 'in both seeds' with all_of), or 'in every seed' when the rows
    have different numbers of finished seeds."""
    counts = {len(r.runs) for r in rows}
    if len(counts) != 1:
        return "in every seed"
    n = counts.pop()
    if all_of:
        return {1: "in the one seed", 2: "in both seeds"}.get(n, f"in all {n} seeds")
    return f"in {n} of {n} seed{'s' if n != 1 else ''}"


def _names(rows: list[SweepRow], one_family: bool) -> str:
    """'the unclipped baseline and thresholds 10 and 30' / 'the unclipped baseline, norm-10 and value-1'."""
    parts = ["the unclipped baseline"] if any(r.method == "none" for r in rows) else []
    clipped = [r for r in rows if r.method != "none"]
    if clipped and one_family:
        ts = [_num(r.threshold, "g") for r in clipped]
        parts.append(f"threshold{'s' if len(ts) > 1 else ''} {_join(ts)}")
    else:
        parts += [r.variant for r in clipped]
    return _join(parts)


def _where(row: SweepRow, one_family: bool) -> str:
    return _num(row.threshold, "g") if one_family else row.variant


def _clipping(row: SweepRow) -> str:
    return f"clipping {_fraction(row.clip_fraction)} of steps"


def sweep_finding(reports: list[dict], cfg) -> str:
    """One sentence on a threshold sweep, built from the numbers: which thresholds trained in
    every seed, which diverged and when, and where the mean final loss was best (with its clip
    fraction). `cfg` is config.yaml's data or an ExperimentConfig. "" when not a sweep."""
    if not is_sweep(reports, cfg) or _is_grid(reports, cfg):
        return ""
    seeds, rows = sweep_rows(reports, cfg)
    rows = [r for r in rows if r.runs]
    one = _one_family(rows)
    families = list(dict.fromkeys(r.family for r in rows if r.method != "none"))
    quantities = list(dict.fromkeys(f[1] or f[0] for f in families))
    what = _join(quantities) if quantities else "clipping thresholds"
    head = f"Sweep of {what} over {len(seeds)} seed{'s' if len(seeds) != 1 else ''}: "
    if not rows:
        return head + "no run has finished yet."

    clauses = []
    # Which thresholds kept every seed finite.
    stable = []
    for fam in families:
        members = [r for r in rows if r.family == fam]
        name = "threshold" if one else (fam[1] or fam[0] if len(quantities) == len(families)
                                        else family_names(rows)[fam])
        text = _stable_text(members, name)
        if text:
            stable.append((text, [r for r in members if r.stable]))
    if stable:
        clauses.append(f"{_join([t for t, _ in stable])} trained {_seeds_of([r for _, rs in stable for r in rs], False)}")
    elif families:
        clauses.append("no threshold trained in every seed")

    # Which diverged, and when.
    everywhere = [r for r in rows if r.diverged and not r.ok]
    some = [r for r in rows if r.diverged and r.ok]
    parts = []
    if everywhere:
        steps = sorted(s for r in everywhere for s in r.steps)
        parts.append(f"{_names(everywhere, one)} diverged {_seeds_of(everywhere, True)} ({_steps_text(steps)})")
    by_count: dict[tuple, list[SweepRow]] = defaultdict(list)  # the same k of n: one clause
    for r in some:
        by_count[(len(r.diverged), len(r.runs))].append(r)
    for (k, n), group in by_count.items():
        verb = "diverged " if not parts else ""
        steps = sorted(s for r in group for s in r.steps)
        parts.append(f"{_names(group, one)} {verb}in {k} of {n} seeds ({_steps_text(steps)})")
    if parts:
        clauses.append(", ".join(parts))
    else:
        clauses.append("no run diverged" + (", not even without clipping" if any(r.method == "none" for r in rows) else ""))

    # The best mean final loss, and what it cost.
    full = [r for r in rows if r.stable and r.mean_loss is not None]
    base = next((r for r in rows if r.method == "none"), None)
    if full:
        best = min(full, key=lambda r: r.mean_loss)
        clipped = [r for r in full if r.method != "none"]
        if best.method == "none":
            text = f"the best mean final loss was without clipping ({_num(best.mean_loss)})"
            if clipped:  # what clipping would cost
                runner = min(clipped, key=lambda r: r.mean_loss)
                text += f", the best with clipping at {_where(runner, one)} ({_num(runner.mean_loss)}, {_clipping(runner)})"
        else:
            text = f"the best mean final loss was at {_where(best, one)} ({_num(best.mean_loss)}, {_clipping(best)})"
            if base is not None and base.stable and base.mean_loss is not None:
                text += f", against {_num(base.mean_loss)} without clipping"
        clauses.append(text)
    else:
        partial = [r for r in rows if r.mean_loss is not None]
        if partial:
            best = min(partial, key=lambda r: r.mean_loss)
            where = "without clipping" if best.method == "none" else f"at {_where(best, one)}"
            clauses.append(f"the best mean final loss over the seeds that trained was {where} "
                           f"({_num(best.mean_loss)}, {len(best.ok)} of {len(best.runs)} seeds)")
        else:
            clauses.append("no run trained to the end")
    return head + "; ".join(clauses) + "."


def _is_grid(reports: list[dict], cfg) -> bool:
    """A grid experiment (`gradlab sweep --grid`): its section replaces the threshold x seed table,
    which has one cell per variant and seed where a grid has one per point too."""
    from .stability import is_grid

    return is_grid(reports, config_dict(cfg))


def grid_section(exp: Path, reports: list[dict], cfg: dict, plots: list[Path]) -> list[str]:
    """report.md's grid: the table per clipping variant, the stability maps and the sensitivity
    figures (the finding is the Findings section's)."""
    from .plots.grid import MAP, SENSITIVITY
    from .stability import build, table, table_note

    grid = build(reports, cfg, exp)
    lines = ["## Grid", ""]
    rows = table(reports, cfg, exp)
    if rows and grid is not None:
        lines += rows + ["", table_note(grid.key), ""]
    shown = [p for p in plots if p.stem.startswith(MAP)] + [p for p in plots if p.stem.startswith(SENSITIVITY + "_")]
    lines += [f"![{p.stem}](plots/{p.name})" for p in shown]
    return lines + ([""] if shown else [])


def load_reports(exp: Path) -> list[dict]:
    from .store import collect_reports

    return collect_reports(exp)


def missing_runs(exp: Path, reports: list[dict]) -> list[str]:
    """Run ids the config plans that have no complete run on disk (missing or damaged)."""
    from .store import planned_runs

    have = {r["run_id"] for r in reports}
    return [rid for rid in planned_runs(exp) or [] if rid not in have]


def _scaling(p) -> str:
    """The compute dtype and loss scaling of report.md's header line; nothing without them
    (every older config)."""
    if not isinstance(p, dict):
        return ""
    compute = f" masters, {p['compute']} compute" if p.get("compute", "float32") != "float32" else ""
    if p.get("loss_scale", "none") == "none":
        return compute
    how = "clipping the scaled gradients" if p.get("clip") == "before_unscale" else "clipping after the unscale"
    return f"{compute}, {p['loss_scale']} loss scale from {p.get('init_scale', 65536.0):g} ({how})"


def clip_order_finding(precision, reports: list[dict]) -> str:
    """With `clip: before_unscale`, what the thresholds meant: the rules compared norms `scale`
    times the true ones, so a threshold T capped the true norm at T / scale."""
    if not isinstance(precision, dict) or precision.get("clip") != "before_unscale" \
            or precision.get("loss_scale", "none") == "none":
        return ""
    clipped = [r for r in reports if r.get("method") != "none" and isinstance(r.get("clip_fraction"), (int, float))]
    if not clipped:
        return ""
    init = float(precision.get("init_scale", 65536.0))
    by_variant: dict[str, list[float]] = defaultdict(list)
    for r in clipped:
        by_variant[r["variant"]].append(r["clip_fraction"])
    fractions = "; ".join(f"`{v}` clipped {min(f):.0%}" + (f"-{max(f):.0%}" if max(f) > min(f) else "")
                          + " of its steps" for v, f in by_variant.items())
    return (f"The clipping rules saw the scaled gradients (`train.precision.clip: before_unscale`), "
            f"{init:g} times the true ones at the start: a threshold T acted on the true gradients as "
            f"T / {init:g} then, and as T / scale as the scale moved; {fractions}.")


def render(exp: Path, reports: list[dict]) -> str:
    cfg = read_yaml(exp / "config.yaml")
    m, t, o, task = cfg["model"], cfg["train"], cfg["train"]["optimizer"], cfg["task"]
    seq = f", T={task['seq_len']}" if "seq_len" in task else ""
    tbptt = f", truncated BPTT every {t['tbptt']} steps" if t.get("tbptt") else ""
    lines = [
        f"# NaN-divergence report: {cfg['name']}",
        "",
        f"{describe_model(m)}"
        + (f", init {m['init']['scheme']} x {m['init']['gain']:g}" if isinstance(m.get("init"), dict) else "")
        + f"; task {task['kind']}{seq}, batch {task['batch_size']}{tbptt}; "
        f"{o['kind']} lr {o['lr']:g}" + (f" momentum {o['momentum']:g}" if o.get("momentum") else "")
        + f", {t['steps']} steps, {t['dtype']}{_scaling(t.get('precision'))}; seeds {cfg['seeds']}.",
        "",
        *([grid_line(cfg["grid"]), ""] if isinstance(cfg.get("grid"), dict) else []),
        *([environment.statement(reports), ""] if reports else []),
        "## Findings",
        "",
        " ".join(filter(None, [findings(reports, exp), clip_order_finding(t.get("precision"), reports),
                               underflow_finding(reports, t.get("precision"))])),
        "",
    ]
    lines += suggestion_section(exp, reports)
    plots = sorted((exp / "plots").glob("*.png"), key=_plot_order) if (exp / "plots").is_dir() else []
    # A grid's threshold x seed table would mix its points: the grid's own table compares them.
    gridded = _is_grid(reports, cfg)
    sweep = is_sweep(reports, cfg) and not gridded
    # A sweep's own plots go with its table, in the order of SWEEP_PLOTS.
    sweep_plots = sorted((p for p in plots if p.stem.startswith(SWEEP_PLOTS)),
                         key=lambda p: next(i for i, s in enumerate(SWEEP_PLOTS) if p.stem.startswith(s))) \
        if sweep else []
    if sweep:
        lines += [
            "## Threshold x seed",
            "",
            sweep_finding(reports, cfg),
            "",
            *sweep_table(reports, cfg),
            "",
            "`ok L`: trained to the end with final loss L; `div @ S`: diverged at step S (the first NaN/inf); "
            "`-`: not finished yet. The mean final loss is over the seeds that did not diverge; the clip "
            "fraction is the mean over the finished seeds (for a diverged run, over its steps before the divergence)"
            + ("; the grad cosine (the direction kept, 1 for a rule that only scales) the mean over the finished "
               "seeds of each run's mean over its clipped steps." if any("mean_grad_cosine" in r for r in reports)
               else "."),
            "",
        ]
        lines += [f"![{p.stem}](plots/{p.name})" for p in sweep_plots]
        lines += [""] if sweep_plots else []
    if gridded:
        lines += grid_section(exp, reports, cfg, plots)
        plots = [p for p in plots if not p.stem.startswith(("stability_map", "sensitivity_"))]
    lines += [
        "## Runs",
        "",
        "| " + " | ".join(columns(reports)) + " |",
        "|" + "---|" * len(columns(reports)),
    ]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(reports)]
    missing = missing_runs(exp, reports)
    if missing:
        lines += ["", f"Not finished yet: {', '.join(missing)}."]
    lines += ["", "A run diverges at the first step where a NaN or inf appears in the forward pass, "
              "the loss, a gradient or a parameter after the update; `where` names the tensor in "
              "which it was born, in the order the values were computed. Steps count from 0; "
              "the final loss of a diverged run is its last finite loss.", ""]
    # The overview plots first, then a sweep's small multiples seed by seed, or one heatmap
    # per run (a sweep's own plots are above).
    plots = [p for p in plots if p not in sweep_plots]
    if plots:
        lines += ["## Plots", ""]
        first_multiple = next((p for p in plots if _plot_order(p)[0] == 1), None)
        for p in plots:
            if p == first_multiple and gridded:
                lines += [""] if lines[-1] else []
                lines.append("Each grid point's runs of the first seed side by side, one panel per clipping variant, on "
                             "shared axes and one colour scale: `heatmaps_<point>_s<seed>` (per-parameter gradient "
                             "norm) and, for recurrent models, `bptt_<point>_s<seed>` (gradient through time).")
                lines.append("")
            elif p == first_multiple:
                lines += [""] if lines[-1] else []
                lines.append("Each seed's runs side by side, one panel per clipping variant (the baseline first, then "
                             "by threshold), on shared axes and one colour scale: `heatmaps_s<seed>` (per-parameter "
                             "gradient norm) and, for recurrent models, `bptt_s<seed>` (gradient through time).")
                lines.append("")
            lines.append(f"![{p.stem}](plots/{p.name})")
        lines.append("")
    return "\n".join(lines)


def _plot_order(path: Path) -> tuple:
    """The overview figures, then the small multiples by seed (heatmaps, then gradient
    through time), then the figures of single runs (gradient through time, then heatmaps)."""
    name = path.name
    m = re.fullmatch(r"(heatmaps|bptt)_(?:([^/]*=[^/]*)_)?s(-?\d+)\.png", name)
    if m:  # (group 2: a grid point's label)
        return (1, int(m.group(3)), m.group(1) != "heatmaps", name)
    return (2 if name.startswith(("heatmap_", "bptt_")) else 0, 0, False, name)


def grid_line(grid: dict) -> str:
    """report.md's sentence on a grid: its axes and values, how many points."""
    from .points import label_value

    axes = [f"`{k}` ({', '.join(label_value(v) for v in vs)})" for k, vs in grid.items() if isinstance(vs, list)]
    n = 1
    for vs in grid.values():
        n *= len(vs) if isinstance(vs, list) else 1
    return (f"Grid over {_join(axes)}: {n} points, each with every clipping variant and seed; a run's id starts "
            f"with its point (`{next(iter(grid), 'key').rsplit('.', 1)[-1]}=...`).")


def suggestion_section(exp: Path, reports: list[dict]) -> list[str]:
    """report.md's suggested threshold, from the baseline runs' metrics.csv (gradlab.suggest)."""
    from .suggest import section, suggest

    return section(suggest(exp, reports)) if reports else []


def write_suggestion(exp: Path, reports: list[dict]) -> None:
    """suggestion.json: the same numbers as data, derived from the runs like report.md."""
    from .suggest import suggest

    sug = suggest(exp, reports)
    if sug is not None:
        io.write_json(exp / "suggestion.json", sug)


def write_report(exp: Path, reports: list[dict] | None = None) -> Path:
    """(Re)write report.md and suggestion.json; `reports` saves reading the runs again when the
    caller has them."""
    reports = load_reports(exp) if reports is None else reports
    path = exp / "report.md"
    io.write_text(path, render(exp, reports))
    if reports:
        write_suggestion(exp, reports)
    return path
