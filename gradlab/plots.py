"""The plots of one experiment, drawn from its directory alone (never from a live process).

`draw_experiment` is the only entry point. Matplotlib is imported inside the drawing
functions: the CLI imports this module on every start-up and must not pay for it. Figures
are built with the object API (`matplotlib.figure.Figure`), not pyplot: no global figure
registry to leak into, no process-wide backend switch for a notebook that calls us, and the
Agg renderer is used for PNG whatever backend is active.
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from gradlab.io import read_csv, read_json, write_bytes

DPI = 120
MAX_LINE_POINTS = 2000
MAX_HEATMAP_COLUMNS = 1000
MAX_YTICK_LABELS = 40
MAX_PANEL_COLUMNS = 3
MAX_BPTT_LAYERS = 8
MAX_TBPTT_LINES = 120
TITLE_CHARS = 95  # an 11 pt axes title over a 10-11 inch figure's main panel

BASELINE_COLOR = "#303030"
ZERO_COLOR = "#c8c8c8"
NONFINITE_COLOR = "#e31a1c"
DIVERGENCE_LINE_COLOR = "black"
# One colormap per clipping family, so that norm and value variants never look alike; the
# ranges skip the ends that vanish on white.
FAMILY_CMAPS = {"norm": ("viridis", 0.0, 0.8), "value": ("YlOrRd", 0.45, 0.95)}
OTHER_CMAP = ("cool", 0.1, 0.9)
# Recurrent layers bottom (dark) to top (light), short of the yellow that vanishes on white.
BPTT_CMAP = ("plasma", 0.0, 0.82)


@dataclass
class Run:
    """One complete run: its report.json, read leniently, and its metrics as arrays."""

    run_id: str
    path: Path
    seed: Optional[int]
    variant: str
    method: str
    threshold: Optional[float]
    norm_type: Optional[float]
    diverged: bool
    divergence_step: Optional[int]
    first_nonfinite: Optional[dict]
    final_loss: Optional[float]
    steps: Optional[int]
    steps_completed: Optional[int]
    metrics: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Experiment:
    path: Path
    summary: str
    steps: Optional[int]
    runs: list[Run]
    seeds: list[Optional[int]]
    variants: list[str]
    colors: dict[str, Any]
    variant_info: dict[str, tuple[str, Optional[float], Optional[float]]]
    config: dict = field(default_factory=dict)


# ----------------------------------------------------------------------------- entry point


def draw_experiment(exp_dir: Path, only_stale: bool = False) -> list[Path]:
    """(Re)draw every plot of the experiment in `exp_dir` into `exp_dir/plots/`.

    Only runs with a report.json (complete, diverged or not) are drawn. With `only_stale`,
    a run's own plots (heatmap, gradient through time) are kept when newer than the run's
    report.json (a resumed experiment redraws what changed; those are the slow part).
    Returns the paths written; [] when no run is complete yet.
    """
    exp = load_experiment(Path(exp_dir))
    if not exp.runs:
        return []
    out = exp.path / "plots"
    written = [
        _draw_over_steps(
            exp,
            [("grad_norm", "-", "before clipping"), ("clipped_norm", "--", "after clipping")],
            ylabel="global gradient L2 norm",
            heading="Gradient norm per step",
            path=out / "grad_norm.png",
            force_log=True,
            thresholds=True,
        ),
        _draw_over_steps(
            exp,
            [("loss", "-", "loss")],
            ylabel="training loss",
            heading="Training loss per step",
            path=out / "loss.png",
            force_log=False,
            thresholds=False,
        ),
    ]
    if any("accuracy" in r.metrics for r in exp.runs):  # classification tasks only
        written.append(_draw_over_steps(
            exp,
            [("accuracy", "-", "accuracy")],
            ylabel="training accuracy (batch)",
            heading="Training accuracy per step",
            path=out / "accuracy.png",
            force_log=False,
            thresholds=False,
            ylim=(0.0, 1.0),
            reference=_chance_accuracy(exp.config),
        ))
    sweep = _draw_sweep(exp, out / "sweep.png")
    if sweep is not None:
        written.append(sweep)
    for run in exp.runs:
        for target, draw, source in (
            (out / f"heatmap_{run.run_id}.png", _draw_heatmap, "layer_norms.csv"),
            (out / f"bptt_{run.run_id}.png", _draw_bptt, "bptt_norms.csv"),
        ):
            if not (run.path / source).is_file():
                continue  # an MLP run has no gradient through time
            if only_stale and _newer(target, run.path / "report.json"):
                continue
            p = draw(exp, run, target)
            if p is not None:
                written.append(p)
    return written


def _newer(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_mtime_ns >= b.stat().st_mtime_ns
    except FileNotFoundError:
        return False


# ----------------------------------------------------------------------------- reading


def _num(x: Any) -> Optional[float]:
    """A report number: JSON floats, or the strings 'nan'/'inf' (JSON has neither)."""
    if x is None or isinstance(x, bool):
        return None
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def _int(x: Any) -> Optional[int]:
    v = _num(x)
    return int(v) if v is not None and math.isfinite(v) else None


def _read_table(path: Path) -> tuple[list[str], np.ndarray]:
    """A numeric CSV as (header, 2-D float array); empty array when the file is unreadable."""
    try:
        header, rows = read_csv(path)
    except (OSError, StopIteration, ValueError, csv.Error):
        return [], np.zeros((0, 0))
    width = len(header)
    # A ragged row would mean a damaged file; keep the rows that line up rather than fail.
    rows = [r for r in rows if len(r) == width]
    return header, np.array(rows, dtype=float).reshape(len(rows), width)


def _parse_variant(variant: str) -> tuple[str, Optional[float], Optional[float]]:
    """(method, threshold, norm_type) from a variant id such as norm-pinf-1 or value-0.1."""
    m = re.fullmatch(r"norm-(?:p([^-]+)-)?([^-]+)(?:-eps.*)?", variant)
    if m:
        return "norm", _num(m.group(2)), _num(m.group(1)) if m.group(1) else 2.0
    m = re.fullmatch(r"value-(.+)", variant)
    if m:
        return "value", _num(m.group(1)), None
    return variant, None, None


def _variant_of_clip(clip: Any) -> Optional[str]:
    """The variant id of one config.yaml clipping entry (the rule of gradlab.config.variant_id)."""
    if not isinstance(clip, dict):
        return None

    def fmt(x: Any) -> str:
        v = _num(x)
        if v is None:
            return str(x)
        return f"{v:g}" if math.isfinite(v) else ("inf" if v > 0 else "nan")

    method = clip.get("method")
    if method == "norm" and "max_norm" in clip:
        p = clip.get("norm_type", 2.0)
        p = "" if _num(p) == 2.0 else f"p{fmt(p)}-"
        eps = clip.get("eps", 1e-6)
        e = "" if _num(eps) == 1e-6 else f"-eps{fmt(eps)}"
        return f"norm-{p}{fmt(clip['max_norm'])}{e}"
    if method == "value" and "clip_value" in clip:
        return f"value-{fmt(clip['clip_value'])}"
    return "none" if method == "none" else None


def _read_config(exp_dir: Path) -> dict:
    try:
        import yaml

        with open(exp_dir / "config.yaml", encoding="utf-8") as fh:
            cfg = yaml.safe_load(fh)
    except Exception:  # a plot must still come out of a directory with a damaged config
        return {}
    return cfg if isinstance(cfg, dict) else {}


def _describe_config(cfg: dict, fallback_name: str) -> str:
    """'name — mlp depth 24 width 64 tanh (normal init ×2), sgd lr 0.05' for figure titles;
    for a recurrent model also the task ('rnn depth 1 width 64 tanh (orthogonal init ×1.2),
    adding T=30, sgd lr 0.05 momentum 0.9, truncated BPTT every 10 steps')."""

    def get(*keys: str) -> Any:
        node: Any = cfg
        for k in keys:
            if not isinstance(node, dict) or k not in node:
                return None
            node = node[k]
        return node

    def number(x: Any) -> Optional[str]:
        return f"{x:g}" if isinstance(x, (int, float)) and not isinstance(x, bool) else None

    name = str(get("name") or fallback_name)
    kind = get("model", "kind")
    model = [
        str(v)
        for v in (
            kind,
            f"depth {get('model', 'depth')}" if get("model", "depth") is not None else None,
            f"width {get('model', 'width')}" if get("model", "width") is not None else None,
            # An LSTM's or GRU's gates are fixed (sigmoid and tanh): its `activation` says nothing.
            get("model", "activation") if kind not in ("lstm", "gru") else None,
        )
        if v is not None
    ]
    scheme, gain = get("model", "init", "scheme"), get("model", "init", "gain")
    if scheme is not None:
        model.append(f"({scheme} init" + (f" ×{number(gain)})" if number(gain) else ")"))
    parts = [" ".join(model)] if model else []

    # The teacher regression is the MLP default and was never named; every other task is.
    task = get("task", "kind")
    if task is not None and task != "teacher":
        text = str(task)
        if number(get("task", "seq_len")):
            text += f" T={number(get('task', 'seq_len'))}"
        if task == "copy" and number(get("task", "copy_len")):
            text += f" ({number(get('task', 'copy_len'))} of {number(get('task', 'n_symbols')) or '?'} symbols)"
        parts.append(text)

    opt, lr = get("train", "optimizer", "kind"), get("train", "optimizer", "lr")
    if opt is not None:
        text = f"{opt} lr {number(lr)}" if number(lr) else str(opt)
        for key, label in (("momentum", "momentum"), ("weight_decay", "wd")):
            value = get("train", "optimizer", key)
            if number(value) and value:
                text += f" {label} {number(value)}"
        for flag in ("nesterov", "amsgrad", "centered"):
            if get("train", "optimizer", flag) is True:
                text += f" {flag}"
        parts.append(text)
    tbptt = get("train", "tbptt")
    if number(tbptt):
        parts.append("truncated BPTT every " + ("step" if tbptt == 1 else f"{number(tbptt)} steps"))
    return f"{name} — {', '.join(parts)}" if parts else name


def _chance_accuracy(cfg: dict) -> Optional[tuple[float, str]]:
    """(accuracy of a uniform guess, its fraction as text) for the classification tasks."""
    task = cfg.get("task") if isinstance(cfg.get("task"), dict) else {}
    kind = task.get("kind")
    if kind == "spirals":
        return 0.5, "1/2"
    if kind == "temporal_order":
        return 0.25, "1/4"
    if kind == "copy":  # accuracy counts the recall window, where only the symbols make sense
        n = _int(task.get("n_symbols")) or 8
        return 1.0 / n, f"1/{n}"
    return None


def load_experiment(exp_dir: Path) -> Experiment:
    """Read config.yaml and every complete run (one with report.json) of an experiment."""
    cfg = _read_config(exp_dir)
    summary = _describe_config(cfg, exp_dir.name)
    runs: list[Run] = []
    runs_dir = exp_dir / "runs"
    folders = sorted(p for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []
    for folder in folders:
        try:
            rep = read_json(folder / "report.json")
        except (OSError, ValueError):
            continue  # not finished (or being written): drawn once its report exists
        if not isinstance(rep, dict):
            continue
        runs.append(_make_run(folder, rep))

    config_steps = _int((cfg.get("train") or {}).get("steps")) if isinstance(cfg.get("train"), dict) else None
    steps = config_steps or max((r.steps or 0 for r in runs), default=0) or None

    # Colours follow the config's variant list when there is one, so that a variant keeps
    # its colour while the rest of the experiment is still running.
    info: dict[str, tuple[str, Optional[float], Optional[float]]] = {}
    clips = cfg.get("clipping") if isinstance(cfg.get("clipping"), list) else []
    for clip in clips:
        v = _variant_of_clip(clip)
        if v is not None:
            info.setdefault(v, _parse_variant(v))
    for r in runs:
        info[r.variant] = (r.method, r.threshold, r.norm_type)
    variants = sorted(info, key=lambda v: _variant_order(v, info[v]))
    seeds = sorted({r.seed for r in runs}, key=lambda s: (s is None, s if s is not None else 0))
    return Experiment(
        path=exp_dir,
        summary=summary,
        steps=steps,
        runs=runs,
        seeds=seeds,
        variants=variants,
        colors=_variant_colors(variants, info),
        variant_info=info,
        config=cfg,
    )


def _make_run(folder: Path, rep: dict) -> Run:
    run_id = str(rep.get("run_id") or folder.name)
    m = re.fullmatch(r"(.+)-s(\d+)", run_id)
    variant = str(rep.get("variant") or (m.group(1) if m else run_id))
    seed = _int(rep.get("seed"))
    if seed is None and m:
        seed = int(m.group(2))
    parsed = _parse_variant(variant)
    method = str(rep.get("method") or parsed[0])
    threshold = _num(rep.get("threshold")) if "threshold" in rep else parsed[1]
    norm_type = _num(rep.get("norm_type")) if "norm_type" in rep else parsed[2]
    if method == "norm" and norm_type is None:
        norm_type = 2.0

    header, table = _read_table(folder / "metrics.csv")
    metrics = {col: table[:, i] for i, col in enumerate(header)}
    first = rep.get("first_nonfinite") if isinstance(rep.get("first_nonfinite"), dict) else None
    diverged = bool(rep.get("diverged")) or first is not None
    div_step = _int(rep.get("divergence_step"))
    if diverged and div_step is None:
        div_step = _int(first.get("step")) if first else None
    if diverged and div_step is None and "step" in metrics and len(metrics["step"]):
        bad = np.flatnonzero(metrics.get("nonfinite", np.zeros(0)) > 0)
        div_step = int(metrics["step"][bad[0] if len(bad) else -1])
    return Run(
        run_id=run_id,
        path=folder,
        seed=seed,
        variant=variant,
        method=method,
        threshold=threshold,
        norm_type=norm_type,
        diverged=diverged,
        divergence_step=div_step,
        first_nonfinite=first,
        final_loss=_num(rep.get("final_loss")),
        steps=_int(rep.get("steps")),
        steps_completed=_int(rep.get("steps_completed")),
        metrics=metrics,
    )


# ----------------------------------------------------------------------------- style


def _variant_order(variant: str, info: tuple) -> tuple:
    method, threshold, norm_type = info
    rank = {"none": 0, "norm": 1, "value": 2}.get(method, 3)
    return (rank, threshold if threshold is not None else 0.0, norm_type or 0.0, variant)


def _variant_colors(variants: list[str], info: dict) -> dict[str, Any]:
    import matplotlib

    colors: dict[str, Any] = {}
    families: dict[str, list[str]] = {}
    for v in variants:  # already ordered by threshold within a family
        method = info[v][0]
        if method == "none":
            colors[v] = BASELINE_COLOR
        else:
            families.setdefault(method, []).append(v)
    for method, members in families.items():
        name, lo, hi = FAMILY_CMAPS.get(method, OTHER_CMAP)
        cmap = matplotlib.colormaps[name]
        pos = np.linspace(lo, hi, len(members)) if len(members) > 1 else [(lo + hi) / 2]
        for v, x in zip(members, pos):
            colors[v] = cmap(float(x))
    return colors


def _fmt(x: Optional[float]) -> str:
    if x is None:
        return "?"
    return f"{x:g}" if math.isfinite(x) else ("∞" if x > 0 else "nan")


def _variant_label(exp: Experiment, variant: str) -> str:
    method, threshold, norm_type = exp.variant_info[variant]
    if method == "none":
        return "none (no clipping)"
    if method == "norm":
        p = "" if norm_type in (None, 2.0) else f"L{_fmt(norm_type)} "
        return f"{variant}: {p}max_norm {_fmt(threshold)}"
    if method == "value":
        return f"{variant}: each element to ±{_fmt(threshold)}"
    return variant


def _wrap(text: str, width: int) -> str:
    """Break a config description into lines of at most ~`width` characters, only after
    its ' — ' and ', ' separators (a title wider than its figure is cut at both ends)."""
    pieces = re.split(r"(?<=, )|(?<= — )", text)
    lines = [""]
    for piece in pieces:
        if lines[-1] and len(lines[-1]) + len(piece.rstrip()) > width:
            lines[-1] = lines[-1].rstrip()
            lines.append("")
        lines[-1] += piece
    return "\n".join(line.rstrip() for line in lines)


def _new_figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def _spare_minor_ticks(axis, lo: float, hi: float) -> None:
    """Drop a log axis's minor ticks when it spans more than 1.5 decades: there they carry
    no label, yet laying them out is most of the drawing time."""
    from matplotlib.ticker import NullLocator

    if lo > 0 and hi > 0 and math.log10(hi) - math.log10(lo) > math.log10(30):
        axis.set_minor_locator(NullLocator())


def _decade_ticks(axis, lo: float, hi: float) -> None:
    """Log ticks at a round number of decades (1, 2, 5, 10, ... apart) when the axis spans
    more than a dozen: matplotlib's own choice there lands on 1e-32, 1e-69, ..."""
    from matplotlib.ticker import FixedLocator, LogFormatterSciNotation

    _spare_minor_ticks(axis, lo, hi)
    if not (lo > 0 and hi > 0) or math.log10(hi) - math.log10(lo) <= 12:
        return
    first, last = math.ceil(math.log10(lo)), math.floor(math.log10(hi))
    stride = next((s for s in (2, 5, 10, 20, 25, 50, 100) if (last - first) / s <= 8), 100)
    decades = np.arange(math.ceil(first / stride) * stride, last + 1, stride)
    axis.set_major_locator(FixedLocator([10.0 ** float(d) for d in decades]))
    axis.set_major_formatter(LogFormatterSciNotation())


def _step_axis(ax, first: float, last: float, pad: Optional[float] = None) -> None:
    """Whole-number step ticks over [first, last], padded so that a one-step run is visible."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    pad = max(0.5, 0.01 * (last - first)) if pad is None else pad
    ax.set_xlim(first - pad, last + pad)


def _save(fig, path: Path) -> Path:
    """Render to memory, then write atomically: a reader never sees half a PNG."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    fig.clear()  # no pyplot registry holds the figure; clearing frees artists at once
    write_bytes(path, buf.getvalue())
    return path


# ----------------------------------------------------------------------------- line plots


def _downsample(values: np.ndarray, max_points: int = MAX_LINE_POINTS) -> np.ndarray:
    """Indices of at most ~max_points samples keeping each stride's min and max (spikes
    survive); NaN gaps survive too, because an all-NaN stride contributes a NaN sample."""
    n = len(values)
    if n <= max_points:
        return np.arange(n)
    stride = math.ceil(n / (max_points // 2))
    buckets = math.ceil(n / stride)
    padded = np.full(buckets * stride, np.nan)
    padded[:n] = values
    grid = padded.reshape(buckets, stride)
    nan = np.isnan(grid)
    base = np.arange(buckets) * stride
    lo = base + np.argmin(np.where(nan, np.inf, grid), axis=1)
    hi = base + np.argmax(np.where(nan, -np.inf, grid), axis=1)
    idx = np.unique(np.concatenate([[0, n - 1], lo, hi]))
    return idx[idx < n]


def _plottable(values: np.ndarray, log: bool) -> np.ndarray:
    """Values with what cannot be drawn (non-finite; <= 0 on a log axis) as NaN gaps."""
    ok = np.isfinite(values)
    if log:
        ok &= values > 0
    return np.where(ok, values, np.nan)


def _use_log(exp: Experiment, columns: list[str], force: bool) -> bool:
    finite = [
        r.metrics[c][np.isfinite(r.metrics[c])] for r in exp.runs for c in columns if c in r.metrics
    ]
    finite = np.concatenate(finite) if finite else np.zeros(0)
    if not np.any(finite > 0):
        return False  # nothing a log axis could show
    return True if force else bool(np.all(finite > 0))


def _panel_grid(exp: Experiment, heading: str, legend_width: float = 3.6):
    """One panel per seed (shared axes), titled `seed N`; returns (fig, {seed: ax})."""
    n = len(exp.seeds)
    ncols = min(n, MAX_PANEL_COLUMNS)
    nrows = math.ceil(n / ncols)
    fig = _new_figure(4.6 * ncols + legend_width, 3.6 * nrows + 1.1)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    panels = {}
    for i, (seed, ax) in enumerate(zip(exp.seeds, axes)):
        ax.set_title(f"seed {seed if seed is not None else '?'}")
        ax.grid(True, which="major", alpha=0.3)
        # With hidden spare panels the bottom visible one in each column carries the label.
        if i + ncols >= n:
            ax.set_xlabel("step")
            ax.xaxis.set_tick_params(labelbottom=True)
        panels[seed] = ax
    fig.suptitle(f"{heading}\n{_wrap(exp.summary, int(fig.get_figwidth() * 10))}")
    return fig, panels


def _mark_divergence(ax, run: Run, column: str, log: bool, color: Any):
    """An x at the divergence step, on the last drawable value before it (or at the top)."""
    from matplotlib.lines import Line2D

    step = run.divergence_step
    label = f"{run.variant}: diverged at step {step if step is not None else '?'}"
    steps, values = run.metrics.get("step"), run.metrics.get(column)
    if step is None and steps is not None and len(steps):
        step = int(steps[-1])
    style = dict(marker="x", color=color, markersize=10, markeredgewidth=2.2, linestyle="none", zorder=5)
    y = None
    if steps is not None and values is not None and step is not None:
        ok = np.flatnonzero((steps <= step) & ~np.isnan(_plottable(values, log)))
        y = float(values[ok[-1]]) if len(ok) else None
    if step is not None:
        if y is not None:
            ax.plot([step], [y], **style)
        else:  # nothing finite to sit on (diverged at once): pin it to the top of the panel
            ax.plot([step], [0.97], transform=ax.get_xaxis_transform(), clip_on=False, **style)
    return Line2D([], [], label=label, **style)


def _draw_over_steps(
    exp: Experiment,
    columns: list[tuple[str, str, str]],
    *,
    ylabel: str,
    heading: str,
    path: Path,
    force_log: bool,
    thresholds: bool,
    ylim: Optional[tuple[float, float]] = None,
    reference: Optional[tuple[float, str]] = None,
) -> Path:
    """Metric column(s) over steps, one panel per seed, one colour per variant.

    `columns` are (csv column, linestyle, meaning); the first one carries the divergence
    marks. Norm-clipping thresholds are drawn when `thresholds` is set. `ylim` fixes a
    linear y range (accuracy: [0, 1]); `reference` is a (value, fraction) chance level.
    """
    from matplotlib.lines import Line2D

    names = [c for c, _, _ in columns]
    log = False if ylim is not None else _use_log(exp, names, force_log)
    fig, panels = _panel_grid(exp, heading)
    few = max((len(r.metrics.get("step", ())) for r in exp.runs), default=0) <= 20
    diverged_handles: dict[Any, list] = {s: [] for s in exp.seeds}
    for run in sorted(exp.runs, key=lambda r: exp.variants.index(r.variant)):
        ax, color = panels[run.seed], exp.colors[run.variant]
        steps = run.metrics.get("step")
        for col, style, _ in columns:
            values = run.metrics.get(col)
            if steps is None or values is None:
                continue
            if col != names[0] and run.method == "none":
                continue  # the baseline is never clipped: its second line would hide the first
            y = _plottable(values, log)
            idx = _downsample(y)
            ax.plot(
                steps[idx], y[idx], linestyle=style, color=color, linewidth=1.4,
                marker="." if few else None, alpha=0.95 if col == names[0] else 0.85,
            )
        # Only an L2 max_norm is on the scale of grad_norm (always the L2 norm); a value or
        # L-inf threshold drawn there would look violated when it is not.
        if thresholds and run.method == "norm" and run.threshold and run.norm_type in (None, 2.0):
            ax.axhline(run.threshold, color=color, linestyle=":", linewidth=1.3)
        if run.diverged:
            diverged_handles[run.seed].append(_mark_divergence(ax, run, names[0], log, color))

    # The whole configured training horizon, so that an early divergence looks early.
    firsts = [r.metrics["step"][0] for r in exp.runs if len(r.metrics.get("step", ()))]
    lasts = [r.metrics["step"][-1] for r in exp.runs if len(r.metrics.get("step", ()))]
    first = float(min(firsts, default=0.0))
    _step_axis(next(iter(panels.values())), first, max(float(max(lasts, default=first)), (exp.steps or 0) - 1.0))
    for seed, ax in panels.items():
        if log:
            ax.set_yscale("log")
            _spare_minor_ticks(ax.yaxis, *ax.get_ylim())
        if ylim is not None:
            margin = 0.02 * (ylim[1] - ylim[0])  # a line at exactly 0 or 1 stays visible
            ax.set_ylim(ylim[0] - margin, ylim[1] + margin)
        if reference is not None:
            ax.axhline(reference[0], color="0.55", linestyle=":", linewidth=1.3, zorder=1)
        if diverged_handles[seed]:
            ax.legend(handles=diverged_handles[seed], loc="best", fontsize=8, framealpha=0.85)
    for i, ax in enumerate(panels.values()):
        if i % MAX_PANEL_COLUMNS == 0:
            ax.set_ylabel(ylabel + (" (log scale)" if log else ""))

    # One key for the whole figure: which colour is which variant, which line style is what.
    present = [v for v in exp.variants if any(r.variant == v for r in exp.runs)]
    handles = [Line2D([], [], color=exp.colors[v], linewidth=2, label=_variant_label(exp, v)) for v in present]
    if len(columns) > 1:
        handles += [Line2D([], [], color="black", linestyle=s, label=m) for _, s, m in columns]
    if thresholds and any(r.method == "norm" for r in exp.runs):
        handles.append(Line2D([], [], color="black", linestyle=":", label="max_norm threshold"))
    if thresholds and any(r.method == "value" or (r.method == "norm" and r.norm_type not in (None, 2.0)) for r in exp.runs):
        handles.append(Line2D([], [], linestyle="none", label="(value-clipping and non-L2 thresholds\nare not L2 norms: not drawn)"))
    if reference is not None:
        handles.append(Line2D([], [], color="0.55", linestyle=":", linewidth=1.3, label=f"chance ({reference[1]})"))
    if any(r.diverged for r in exp.runs):
        handles.append(Line2D([], [], color="black", marker="x", markeredgewidth=2, linestyle="none", label="diverged (NaN/inf)"))
    # Hung off the first row's last panel rather than the figure: a figure legend starts at
    # the very top, where a narrow (one-seed) figure's title runs into it. Only an axes'
    # own legend counts for the layout, so that panel's divergence legend becomes an artist.
    corner = list(panels.values())[min(len(panels), MAX_PANEL_COLUMNS) - 1]
    if corner.get_legend() is not None:
        corner.add_artist(corner.get_legend())
    corner.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.03, 1.0), borderaxespad=0.0,
                  fontsize=9, frameon=False)
    return _save(fig, path)


# ----------------------------------------------------------------------------- heatmap


def _aggregate_columns(matrix: np.ndarray, max_columns: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Shrink a (params, steps) matrix to <= max_columns by taking each block's largest
    positive finite norm, so a spike is never averaged away. Returns (values, bad, block):
    values is NaN where a block has no positive finite norm, bad marks blocks holding a
    non-finite norm."""
    n = matrix.shape[1]
    bad = ~np.isfinite(matrix)
    block = max(1, math.ceil(n / max_columns))
    usable = np.where(np.isfinite(matrix) & (matrix > 0), matrix, np.nan)
    if block == 1:
        return usable, bad, 1
    starts = np.arange(0, n, block)
    return np.fmax.reduceat(usable, starts, axis=1), np.logical_or.reduceat(bad, starts, axis=1), block


def _outcome(run: Run) -> str:
    if not run.diverged:
        done = run.steps_completed if run.steps_completed is not None else run.steps
        return f"trained {done} step{'s' if done != 1 else ''}" if done is not None else "trained"
    text = f"diverged at step {run.divergence_step if run.divergence_step is not None else '?'}"
    first = run.first_nonfinite or {}
    if first.get("phase"):
        text += f" in {first['phase']}"
    if first.get("where"):
        text += f" at {first['where']}"
    if first.get("kind"):
        text += f" ({first['kind']})"
    return text


def _draw_heatmap(exp: Experiment, run: Run, path: Path) -> Optional[Path]:
    """Per-parameter gradient norm, layer x step, log colour scale; None without data."""
    import matplotlib
    from matplotlib.colors import LogNorm
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    # Read here, not in load_experiment: only one run's (possibly large) table in memory.
    header, table = _read_table(run.path / "layer_norms.csv")
    if len(header) < 2 or "step" not in header or table.shape[0] == 0:
        return None
    step_col = header.index("step")
    names = [h for i, h in enumerate(header) if i != step_col]
    steps = table[:, step_col]
    matrix = np.delete(table, step_col, axis=1).T
    values, bad, block = _aggregate_columns(matrix, MAX_HEATMAP_COLUMNS)
    zero = np.isnan(values) & ~bad

    positive = values[~np.isnan(values)]
    if positive.size:
        vmin, vmax = float(positive.min()), float(positive.max())
    else:
        vmin, vmax = 1e-3, 1.0
    if vmax <= vmin:  # a single value: give the scale a decade around it
        vmin, vmax = vmin / math.sqrt(10), vmax * math.sqrt(10)
    # Zeros go below vmin (the 'under' colour), non-finite norms are masked (the 'bad' one).
    shown = np.where(zero, vmin / 10, values)
    shown = np.ma.masked_where(bad | np.isnan(shown), shown)
    cmap = matplotlib.colormaps["viridis"].with_extremes(under=ZERO_COLOR, bad=NONFINITE_COLOR)

    rows = len(names)
    fig = _new_figure(10.0, min(8.0, max(3.6, 2.2 + 0.12 * min(rows, MAX_YTICK_LABELS))))
    ax = fig.subplots()
    first = float(steps[0])
    width = shown.shape[1] * block
    image = ax.imshow(
        shown, aspect="auto", interpolation="nearest", cmap=cmap,
        norm=LogNorm(vmin=vmin, vmax=vmax, clip=False),
        extent=(first - 0.5, first + width - 0.5, rows - 0.5, -0.5),
    )
    bar = fig.colorbar(image, ax=ax, pad=0.01)
    bar.set_label("gradient L2 norm (before clipping)")
    _spare_minor_ticks(bar.ax.yaxis, vmin, vmax)

    every = max(1, math.ceil(rows / MAX_YTICK_LABELS))
    if every > 1 and every % 2:
        every += 1  # parameters come in W/b pairs: an even stride labels the same kind each time
    ticks = np.arange(0, rows, every)
    ax.set_yticks(ticks, [names[i] for i in ticks], fontsize=8 if rows > 16 else 9)
    ax.set_ylabel("parameter, in forward order" + (f"\n(one name in {every} shown)" if every > 1 else ""))
    ax.set_xlabel("step" + (f" (each column: max over {block} steps)" if block > 1 else ""))
    ax.set_title(f"{run.run_id} — {_outcome(run)}\n{_wrap(exp.summary, TITLE_CHARS)}", fontsize=11)
    _step_axis(ax, first, float(steps[-1]), pad=0.5)  # exactly the image: no blank margin

    handles = []
    if run.diverged and run.divergence_step is not None:
        # On the left edge of the divergence step's column: the column itself stays visible.
        ax.axvline(run.divergence_step - 0.5, color=DIVERGENCE_LINE_COLOR, linestyle="--", linewidth=1.6)
        handles.append(Line2D([], [], color=DIVERGENCE_LINE_COLOR, linestyle="--", label=f"diverged at step {run.divergence_step}"))
    if zero.any():
        handles.append(Patch(facecolor=ZERO_COLOR, label="zero gradient"))
    if bad.any():
        handles.append(Patch(facecolor=NONFINITE_COLOR, label="NaN / inf gradient"))
    if not positive.size:
        handles.append(Patch(facecolor="white", edgecolor="none", label="(no finite non-zero norm: scale is arbitrary)"))
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=9, frameon=False)
    return _save(fig, path)


# ----------------------------------------------------------------------------- gradient through time


@dataclass
class Flow:
    """bptt_norms.csv of one run: for each recorded step, each layer's norm of dL/dh_t over t.

    `norms[step][layer]` has length T (the largest t + 1 in the file); a (step, layer, t)
    the file lacks is NaN there and False in `present[step][layer]`."""

    T: int
    steps: list[int]
    layers: list[str]
    norms: dict[int, dict[str, np.ndarray]]
    present: dict[int, dict[str, np.ndarray]]


def _layer_key(name: str) -> tuple:
    """rnn.0 < rnn.1 < ... < rnn.10: by kind, then by the layer number, bottom first."""
    m = re.fullmatch(r"(.*?)(\d+)", name)
    return (m.group(1), int(m.group(2)), name) if m else (name, -1, name)


def _read_flow(path: Path) -> Optional[Flow]:
    """Read bptt_norms.csv leniently: columns found by name, rows that do not parse skipped;
    None without data. Vectorised: the file has T x layers x 2 rows, easily 10^5."""
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            reader = csv.reader(fh)
            header = [h.strip() for h in next(reader)]
            cols = [header.index(c) for c in ("step", "layer", "t", "grad_norm")]
            width = max(cols) + 1
            raw = [row for row in reader if len(row) >= width]
    except (OSError, StopIteration, ValueError, csv.Error, UnicodeDecodeError):
        return None
    i_step, i_layer, i_t, i_norm = cols

    def floats(rows: list, i: int) -> np.ndarray:
        return np.array([r[i] for r in rows], dtype=float).reshape(len(rows))

    try:
        step, t, norm = (floats(raw, i) for i in (i_step, i_t, i_norm))
    except ValueError:  # a damaged row somewhere: find it (the slow way) and drop it
        def parses(row: list) -> bool:
            try:
                [float(row[i]) for i in (i_step, i_t, i_norm)]
                return True
            except ValueError:
                return False

        raw = [row for row in raw if parses(row)]
        step, t, norm = (floats(raw, i) for i in (i_step, i_t, i_norm))
    codes: dict[str, int] = {}
    layer = np.array([codes.setdefault(r[i_layer].strip(), len(codes)) for r in raw], dtype=np.int64).reshape(len(raw))
    names = list(codes)
    ok = np.isfinite(step) & np.isfinite(t) & (t >= 0) & (step == np.round(step)) & (t == np.round(t))
    ok &= np.array([n != "" for n in names], dtype=bool)[layer] if names else ok
    if not ok.any():
        return None
    step, t, norm, layer = step[ok].astype(np.int64), t[ok].astype(np.int64), norm[ok], layer[ok]
    T = int(t.max()) + 1
    steps = sorted(set(step.tolist()))
    used = sorted(set(layer.tolist()), key=lambda c: _layer_key(names[c]))
    grid = np.full((len(steps), len(used), T), np.nan)
    have = np.zeros(grid.shape, dtype=bool)
    s_idx = np.searchsorted(np.array(steps), step)
    row_of = np.zeros(len(names), dtype=np.int64)  # layer code -> its row, bottom layer first
    row_of[used] = np.arange(len(used))
    l_idx = row_of[layer]
    grid[s_idx, l_idx, t] = norm  # a repeated (step, layer, t) keeps its last row
    have[s_idx, l_idx, t] = True
    layers = [names[c] for c in used]
    return Flow(T=T, steps=steps, layers=layers,
                norms={s: {l: grid[i, j] for j, l in enumerate(layers)} for i, s in enumerate(steps)},
                present={s: {l: have[i, j] for j, l in enumerate(layers)} for i, s in enumerate(steps)})


def _tbptt_boundaries(T: int, K: Optional[int]) -> list[int]:
    """The t of every truncation boundary between t and t + 1, counted from the end as the
    recurrent backward pass does: (T - 1 - t) % K == 0, t < T - 1."""
    if not K or K < 1:
        return []
    return list(range(T - 1 - K, -1, -K))[::-1]


def _final_step(run: Run) -> Optional[int]:
    steps = run.metrics.get("step")
    if steps is not None and len(steps) and np.isfinite(steps[-1]):
        return int(steps[-1])
    if run.steps_completed:
        return run.steps_completed - 1
    return run.steps - 1 if run.steps else None


def _flow_step_label(run: Run, step: int, last: bool) -> str:
    """'step 0', 'step 41 (last before divergence at step 42)', 'step 299 (final)'."""
    label = f"step {step}"
    div = run.divergence_step
    if last and run.diverged and div is not None:
        if step < div:
            return f"{label} (last before divergence at step {div})"
        phase = (run.first_nonfinite or {}).get("phase")
        if step == div and phase == "update":
            return f"{label} (gradients finite; its update diverged)"
        return f"{label} (divergence at step {div})"
    if last and not run.diverged and step == _final_step(run):
        return f"{label} (final)"
    if last:
        return f"{label} (last recorded)"
    return label


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(first, last) index of every run of True in a 1-D mask."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), (np.flatnonzero(edges == -1) - 1).tolist()))


def _segments(mask: np.ndarray) -> np.ndarray:
    """x of a NaN-separated polyline covering each run of True, from t - 0.5 to t + 0.5."""
    runs = _runs(mask)
    xs = np.full(3 * len(runs), np.nan)
    xs[0::3] = [a - 0.5 for a, _ in runs]
    xs[1::3] = [b + 0.5 for _, b in runs]
    return xs


def _pick_layers(layers: list[str], most: int) -> list[str]:
    """At most `most` layers, evenly spread, always the bottom and the top one."""
    if len(layers) <= most:
        return list(layers)
    idx = np.unique(np.round(np.linspace(0, len(layers) - 1, most)).astype(int))
    return [layers[i] for i in idx]


def _draw_flow_line(ax, values: np.ndarray, present: np.ndarray, linestyle: str, linewidth: float,
                    **look) -> tuple[int, int]:
    """One layer's dL/dh_t norms of one step over t; returns (zeros, non-finite) counted.

    What a log scale cannot show is masked out of the line and drawn as bands on the edges
    instead: zeros along the bottom, NaN/inf along the top."""
    T = len(values)
    t_axis = np.arange(T)
    y = _plottable(values, log=True)
    idx = _downsample(y)
    ax.plot(t_axis[idx], y[idx], linestyle=linestyle, linewidth=linewidth,
            marker="." if T <= 40 else None, markersize=4, **look)
    ok = ~np.isnan(y)
    alone = ok & ~np.concatenate([[False], ok[:-1]]) & ~np.concatenate([ok[1:], [False]])
    if alone.any():  # a value between two gaps makes no line: a dot
        ax.plot(t_axis[alone], y[alone], linestyle="none", marker="o", markersize=5, **look)
    zero, bad = present & (values == 0), present & ~np.isfinite(values)
    edge = ax.get_xaxis_transform()  # x in data, y in axes fractions
    for mask, height in ((zero, 0.012), (bad, 0.988)):
        if mask.any():
            runs = _runs(mask)
            ax.plot(_segments(mask), np.full(3 * len(runs), height), transform=edge, clip_on=False,
                    linewidth=4, solid_capstyle="butt", zorder=5, **look)
            # A tick at each run's middle: over thousands of steps one t is under a pixel.
            ax.plot([(a + b) / 2 for a, b in runs], np.full(len(runs), height), transform=edge, clip_on=False,
                    linestyle="none", marker="|", markersize=8, markeredgewidth=2, zorder=5, **look)
    return int(zero.sum()), int(bad.sum())


def _draw_bptt(exp: Experiment, run: Run, path: Path) -> Optional[Path]:
    """Norm of dL/dh_t against t for each recurrent layer, the first recorded step solid and
    the last one dashed, log scale; None without data."""
    import matplotlib
    from matplotlib.lines import Line2D

    flow = _read_flow(run.path / "bptt_norms.csv")
    if flow is None:
        return None
    T = flow.T
    drawn_steps = [flow.steps[0]] + ([flow.steps[-1]] if len(flow.steps) > 1 else [])
    styles = dict(zip(drawn_steps, ("-", "--")))
    layers = _pick_layers(flow.layers, MAX_BPTT_LAYERS)
    cmap = matplotlib.colormaps[BPTT_CMAP[0]]
    positions = np.linspace(*BPTT_CMAP[1:], len(layers)) if len(layers) > 1 else [BPTT_CMAP[1]]
    colors = {layer: cmap(float(x)) for layer, x in zip(layers, positions)}

    fig = _new_figure(11.0, 5.6)
    ax = fig.subplots()
    zeros = nonfinite = 0
    for layer in layers:
        for step in drawn_steps:
            # The early line wide and pale under the late dashed one: where the two steps
            # agree, the dashes still show on top of it.
            early = step == drawn_steps[0] and len(drawn_steps) > 1
            z, b = _draw_flow_line(ax, flow.norms[step][layer], flow.present[step][layer], styles[step],
                                   linewidth=2.4 if early else 1.6, color=colors[layer], alpha=0.55 if early else 1.0)
            zeros, nonfinite = zeros + z, nonfinite + b

    shown = np.concatenate([_plottable(flow.norms[s][l], log=True) for s in drawn_steps for l in layers])
    positive = shown[~np.isnan(shown)]
    ax.set_yscale("log")
    if positive.size:
        # In decades, so that a norm near the float64 limit (a float32 state summed over a
        # batch can get there) leaves a margin without overflowing.
        lo, hi = math.log10(float(positive.min())), math.log10(float(positive.max()))
        # A flat flow still gets about a decade; a margin keeps the lines off the edge bands.
        pad = max(0.15, 0.05 * (hi - lo), (1.0 - (hi - lo)) / 2)
        ax.set_ylim(10 ** max(lo - pad, -300.0), 10 ** min(hi + pad, 300.0))
    else:
        ax.set_ylim(1e-3, 1.0)
    _decade_ticks(ax.yaxis, *ax.get_ylim())
    _step_axis(ax, 0.0, float(T - 1), pad=max(0.5, 0.01 * (T - 1)))
    ax.grid(True, which="major", alpha=0.3)

    # The key: colour is the layer, line style the step; then the marks.
    handles = []
    for i, layer in enumerate(layers):
        role = "" if len(flow.layers) == 1 else (" (bottom)" if i == 0 else (" (top)" if i == len(layers) - 1 else ""))
        handles.append(Line2D([], [], color=colors[layer], linewidth=2.2, label=f"{layer}{role}"))
    for i, step in enumerate(drawn_steps):
        pale = i == 0 and len(drawn_steps) > 1
        handles.append(Line2D([], [], color="black", linestyle=styles[step], linewidth=2.4 if pale else 1.6,
                              alpha=0.55 if pale else 1.0, label=_flow_step_label(run, step, last=step == flow.steps[-1])))

    notes = []
    K = _int((exp.config.get("train") if isinstance(exp.config.get("train"), dict) else {}).get("tbptt"))
    boundaries = _tbptt_boundaries(T, K)
    if boundaries and len(boundaries) <= MAX_TBPTT_LINES:
        for t in boundaries:
            ax.axvline(t + 0.5, color="0.35", linestyle=":", linewidth=1.1, zorder=1)
        handles.append(Line2D([], [], color="0.35", linestyle=":", linewidth=1.1,
                              label=f"truncation boundary (tbptt {K}):\nno gradient crosses it"))
    elif boundaries:
        every = "step" if K == 1 else f"{K} steps"
        notes.append(f"truncated BPTT every {every}: {len(boundaries)} boundaries, too many to draw")

    # Where the first NaN/inf was born, when that was inside the recurrence.
    first = run.first_nonfinite or {}
    where = str(first.get("where") or "")
    t_bad = _int(first.get("t"))
    if t_bad is None:
        m = re.search(r"@ t=(\d+)$", where)
        t_bad = int(m.group(1)) if m else None
    if run.diverged and t_bad is not None and 0 <= t_bad < T:
        layer = next((l for l in flow.layers if where.startswith(l + ".")), None)
        style = dict(marker="v", markersize=11, color=colors.get(layer, NONFINITE_COLOR), markeredgecolor=NONFINITE_COLOR,
                     markeredgewidth=1.5, linestyle="none", clip_on=False, zorder=6)
        ax.plot([t_bad], [0.91], transform=ax.get_xaxis_transform(), **style)
        phase = f" ({first['phase']})" if first.get("phase") else ""
        handles.append(Line2D([], [], label=f"first NaN/inf, step {run.divergence_step}{phase}:\n{where}", **style))
    if nonfinite:
        handles.append(Line2D([], [], color="0.3", linewidth=4, label="top edge: NaN/inf at that t"))
    if zeros:
        handles.append(Line2D([], [], color="0.3", linewidth=4, label="bottom edge: zero at that t"))

    if len(layers) < len(flow.layers):
        notes.append(f"{len(layers)} of {len(flow.layers)} layers shown")
    if len(flow.steps) > 2:
        notes.append(f"{len(flow.steps) - 2} middle step(s) in the file not shown")
    masked = ([f"{zeros} zero{'s' if zeros > 1 else ''} (no gradient reaches h_t)"] if zeros else []) + \
             ([f"{nonfinite} NaN/inf value{'s' if nonfinite > 1 else ''}"] if nonfinite else [])
    if masked:
        notes.append(f"masked (gaps: not drawable on a log scale): {' and '.join(masked)}")
    if not positive.size:
        notes.append("no finite non-zero norm to draw: the scale is arbitrary")

    ax.set_xlabel(f"time step t        (backpropagation through time runs from t = {T - 1} back to t = 0  ←)")
    ax.set_ylabel("‖dL/dh_t‖: L2 norm over the batch (log scale)")
    ax.set_title(f"Gradient through time — {run.run_id} — {_outcome(run)}\n{_wrap(exp.summary, TITLE_CHARS)}", fontsize=11)
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=9, frameon=False)
    if notes:
        fig.supxlabel("\n".join(notes), fontsize=9, color="0.25")
    return _save(fig, path)


# ----------------------------------------------------------------------------- sweep


def _finite(x: Optional[float]) -> bool:
    return x is not None and math.isfinite(x)


def _median_line(ax, xs: list[float], ys: list[Optional[float]], linestyle: str) -> None:
    """Grey line through the median over seeds at each threshold (finite values only)."""
    by_x: dict[float, list[float]] = {}
    for x, y in zip(xs, ys):
        if _finite(y):
            by_x.setdefault(x, []).append(y)
    if by_x:
        xs_sorted = sorted(by_x)
        ax.plot(xs_sorted, [float(np.median(by_x[x])) for x in xs_sorted], color="0.5", linewidth=1, linestyle=linestyle, zorder=2)


def _draw_sweep(exp: Experiment, path: Path) -> Optional[Path]:
    """Threshold against final loss and against divergence step, for a sweep (a clipping
    family with at least two thresholds among the complete runs); None otherwise."""
    from matplotlib.lines import Line2D

    families: dict[tuple, list[Run]] = {}
    for r in exp.runs:
        if r.method != "none" and r.threshold is not None and r.threshold > 0:
            families.setdefault((r.method, r.norm_type), []).append(r)
    families = {k: v for k, v in families.items() if len({r.threshold for r in v}) >= 2}
    if not families:
        return None

    total = exp.steps or max((r.steps or 0 for r in exp.runs), default=0) or None

    # A diverged run's report keeps its last healthy loss; that is no final loss to compare.
    def final_loss(r: Run) -> Optional[float]:
        return r.final_loss if not r.diverged and _finite(r.final_loss) else None

    def divergence(r: Run) -> Optional[float]:
        # A run that never diverged sits on the end-of-training line.
        step = r.divergence_step if r.diverged else total
        return float(step) if step is not None else None

    fig = _new_figure(12.5, 4.8)
    ax_loss, ax_div = fig.subplots(1, 2, sharex=True)
    point = dict(s=36, zorder=3, edgecolors="black", linewidths=0.5)
    handles = []
    order = sorted(families, key=lambda k: _variant_order("", (k[0], 0.0, k[1])))
    # Marker and median-line style tell the families apart; colours are the variants'.
    for marker, line, key in zip("os^Dv" * len(order), ["-", "-.", ":", "--"] * len(order), order):
        runs = families[key]
        xs = [r.threshold for r in runs]
        losses, steps = [final_loss(r) for r in runs], [divergence(r) for r in runs]
        colors = [exp.colors[r.variant] for r in runs]
        ok = [i for i, y in enumerate(losses) if y is not None]
        ax_loss.scatter([xs[i] for i in ok], [losses[i] for i in ok], c=[colors[i] for i in ok], marker=marker, **point)
        gone = [i for i, y in enumerate(losses) if y is None]
        if gone:  # no final loss: an x pinned to the top of the panel
            ax_loss.scatter([xs[i] for i in gone], [0.97] * len(gone), c=[colors[i] for i in gone], marker="x",
                            s=60, linewidths=2, clip_on=False, zorder=3, transform=ax_loss.get_xaxis_transform())
        ax_div.scatter(xs, [np.nan if y is None else y for y in steps], c=colors, marker=marker, **point)
        _median_line(ax_loss, xs, losses, line)
        _median_line(ax_div, xs, steps, line)
        method, p = key
        family = f"{method} clipping" + (f" (L{_fmt(p)})" if method == "norm" and p not in (None, 2.0) else "")
        handles.append(Line2D([], [], marker=marker, linestyle=line, color="0.5", markerfacecolor="white", markeredgecolor="black",
                              label=f"{family} (one point per seed, line: median)"))

    base = [r for r in exp.runs if r.method == "none"]
    base_loss = [y for y in map(final_loss, base) if y is not None]
    base_div = [y for y in map(divergence, base) if y is not None]
    if base_loss:
        ax_loss.axhline(float(np.median(base_loss)), color=BASELINE_COLOR, linestyle="--", linewidth=1.2)
    if base_div:
        ax_div.axhline(float(np.median(base_div)), color=BASELINE_COLOR, linestyle="--", linewidth=1.2)
    if base:
        note = "" if base_loss else "; diverged in every seed, so no final loss"
        handles.append(Line2D([], [], color=BASELINE_COLOR, linestyle="--",
                              label=f"baseline none (median over seeds{note})"))
    if total:
        ax_div.axhline(total, color="0.6", linestyle=":", linewidth=1)
        ax_div.set_ylim(0, total * 1.05)
        handles.append(Line2D([], [], color="0.6", linestyle=":",
                              label=f"end of training ({total} steps): never diverged"))
    if any(r.diverged for rs in families.values() for r in rs):
        handles.append(Line2D([], [], color="black", marker="x", markeredgewidth=2, linestyle="none",
                              label="diverged: no final loss"))

    ax_loss.set_xscale("log")
    _spare_minor_ticks(ax_loss.xaxis, *ax_loss.get_xlim())
    plotted = [y for rs in families.values() for y in map(final_loss, rs) if y is not None] + base_loss
    log_loss = bool(plotted) and min(plotted) > 0
    if log_loss:
        ax_loss.set_yscale("log")
        _spare_minor_ticks(ax_loss.yaxis, *ax_loss.get_ylim())
    kinds = " / ".join(dict.fromkeys({"norm": "max_norm", "value": "clip_value"}.get(m, m) for m, _ in order))
    for ax in (ax_loss, ax_div):
        ax.set_xlabel(f"clipping threshold: {kinds} (log scale)")
        ax.grid(True, alpha=0.3)
    ax_loss.set_ylabel("final training loss" + (" (log scale)" if log_loss else ""))
    ax_div.set_ylabel("divergence step")
    ax_loss.set_title("final loss")
    ax_div.set_title("step of the first NaN/inf")
    fig.suptitle(f"Clipping threshold sweep\n{_wrap(exp.summary, int(fig.get_figwidth() * 10))}")
    fig.legend(handles=handles, loc="outside lower center", ncol=min(3, len(handles)), fontsize=9, frameon=False)
    return _save(fig, path)
