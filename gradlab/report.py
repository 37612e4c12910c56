"""The NaN-divergence report: a table of runs, a sentence of findings, the plots embedded.

Built from the experiment directory alone (summary.json or the runs' report.json files and
config.yaml), so `gradlab report` can rewrite it at any time.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import yaml

from . import io

COLUMNS = ("run", "method", "threshold", "seed", "diverged", "step", "phase", "where",
           "max grad norm", "final loss", "clip fraction")


def _num(x, fmt: str = ".3g") -> str:
    if x is None:
        return "-"
    if isinstance(x, str):  # JSON's spelling of nan / inf
        return x
    return format(x, fmt) if math.isfinite(x) else str(x)


def columns(reports: list[dict]) -> tuple[str, ...]:
    """The table's columns: accuracy only for classification tasks."""
    return COLUMNS + (("final accuracy",) if any("final_accuracy" in r for r in reports) else ())


def table_rows(reports: list[dict]) -> list[list[str]]:
    """One row of strings per run, in columns() order (shared by report.md and the CLI table)."""
    with_acc = len(columns(reports)) > len(COLUMNS)
    rows = []
    for r in reports:
        f = r.get("first_nonfinite") or {}
        rows.append([
            r["run_id"], r["method"], _num(r.get("threshold"), "g"), str(r["seed"]),
            "yes" if r["diverged"] else "no", _num(r.get("divergence_step"), "d"),
            f.get("phase", "-"), f.get("where", "-"), _num(r.get("max_grad_norm")),
            _num(r.get("final_loss")), f"{r.get('clip_fraction', 0.0):.0%}",
        ] + ([_pct(r.get("final_accuracy"))] if with_acc else []))
    return rows


def _pct(x) -> str:
    return f"{x:.1%}" if isinstance(x, (int, float)) and math.isfinite(x) else "-"


def findings(reports: list[dict]) -> str:
    """A few sentences a reader can take away, one per clipping variant across seeds."""
    if not reports:
        return "No run has finished yet."
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
            places = sorted({f"{r['first_nonfinite']['phase']} at {r['first_nonfinite']['where']}" for r in div})
            sentences.append(f"`{variant}` diverged in {len(div)} of {seeds} at step {span} "
                             f"(first non-finite value: {'; '.join(places)}).")
        ok = [r for r in rs if not r["diverged"]]
        if ok:
            losses = [r["final_loss"] for r in ok if isinstance(r.get("final_loss"), (int, float))]
            clip = sum(r["clip_fraction"] for r in ok) / len(ok)
            loss_txt = f", final loss {min(losses):.3g}" + (f"-{max(losses):.3g}" if len(losses) > 1 else "") if losses else ""
            accs = [r["final_accuracy"] for r in ok if isinstance(r.get("final_accuracy"), (int, float))]
            if accs:
                loss_txt += f", accuracy {_pct(min(accs))}" + (f"-{_pct(max(accs))}" if len(accs) > 1 else "")
            sentences.append(f"`{variant}` trained {ok[0]['steps']} steps in {len(ok)} of {seeds}"
                             f"{loss_txt}, clipping {clip:.0%} of steps.")
    return " ".join(sentences)


def load_reports(exp: Path) -> list[dict]:
    from .experiment import collect_reports

    return collect_reports(exp)


def missing_runs(exp: Path, reports: list[dict]) -> list[str]:
    """Run ids the config plans that have no complete run on disk."""
    from .config import run_id, ExperimentConfig

    raw = yaml.safe_load((exp / "config.yaml").read_text(encoding="utf-8"))
    cfg = ExperimentConfig.model_validate(raw)
    have = {r["run_id"] for r in reports}
    return [run_id(c, s) for s in cfg.seeds for c in cfg.clipping if run_id(c, s) not in have]


def render(exp: Path, reports: list[dict]) -> str:
    cfg = yaml.safe_load((exp / "config.yaml").read_text(encoding="utf-8"))
    m, t, o, task = cfg["model"], cfg["train"], cfg["train"]["optimizer"], cfg["task"]
    seq = f", T={task['seq_len']}" if "seq_len" in task else ""
    tbptt = f", truncated BPTT every {t['tbptt']} steps" if t.get("tbptt") else ""
    lines = [
        f"# NaN-divergence report: {cfg['name']}",
        "",
        f"{m['kind']} depth {m['depth']} width {m['width']} {m['activation']}, init {m['init']['scheme']} "
        f"x {m['init']['gain']:g}; task {task['kind']}{seq}, batch {task['batch_size']}{tbptt}; "
        f"{o['kind']} lr {o['lr']:g}" + (f" momentum {o['momentum']:g}" if o.get("momentum") else "")
        + f", {t['steps']} steps, {t['dtype']}; seeds {cfg['seeds']}.",
        "",
        "## Findings",
        "",
        findings(reports),
        "",
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
    # The overview plots first, then one heatmap per run.
    plots = sorted((exp / "plots").glob("*.png"), key=lambda p: (p.name.startswith("heatmap_"), p.name)) \
        if (exp / "plots").is_dir() else []
    if plots:
        lines += ["## Plots", ""]
        lines += [f"![{p.stem}](plots/{p.name})" for p in plots]
        lines.append("")
    return "\n".join(lines)


def write_report(exp: Path) -> Path:
    reports = load_reports(exp)
    path = exp / "report.md"
    io.write_text(path, render(exp, reports))
    return path
