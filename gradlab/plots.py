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

from gradlab.io import as_float as _num, read_csv, read_json, write_bytes

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
    clip_fraction: Optional[float] = None


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


def draw_experiment(exp_dir: Path, only_stale: bool = False, only: Optional[set[str]] = None) -> list[Path]:
    """(Re)draw every plot of the experiment in `exp_dir` into `exp_dir/plots/`.

    Only runs with a report.json (complete, diverged or not) are drawn; with `only`, only the
    runs of those ids (the ones the experiment found complete, not damaged). With `only_stale`,
    a run's own plots (heatmap, gradient through time) are kept when newer than the run's
    report.json (a resumed experiment redraws what changed; those are the slow part).
    Returns the paths written; [] when no run is complete yet.
    """
    exp = load_experiment(Path(exp_dir), only)
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
    written += _draw_sweep(exp, out)
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
        from .io import read_yaml

        cfg = read_yaml(exp_dir / "config.yaml")
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


def load_experiment(exp_dir: Path, only: Optional[set[str]] = None) -> Experiment:
    """Read config.yaml and every complete run (one with report.json; with `only`, of those
    run ids) of an experiment."""
    cfg = _read_config(exp_dir)
    summary = _describe_config(cfg, exp_dir.name)
    runs: list[Run] = []
    runs_dir = exp_dir / "runs"
    folders = sorted(p for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []
    for folder in folders:
        if only is not None and folder.name not in only:
            continue
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
    clip_fraction = _num(rep.get("clip_fraction"))
    if clip_fraction is None and "clipped" in metrics:  # an older report: from the metrics
        flags = metrics["clipped"][np.isfinite(metrics["clipped"])]
        clip_fraction = float(np.mean(flags > 0)) if len(flags) else None
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
        clip_fraction=clip_fraction,
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

SWEEP_PLOTS = ("sweep_final_loss.png", "sweep_divergence.png", "sweep_clip_fraction.png")
MAX_THRESHOLD_TICKS = 12  # more thresholds than this: the log axis's own ticks
MAX_BASELINE_LINES = 10  # the baseline's divergence steps drawn one by one up to this many
# The per-seed and mean lines of each clipping family on the threshold plots. Its runs keep
# their own colours (the mean's markers, the grad-norm plot's lines and colour bar).
FAMILY_LINE_COLORS = {"norm": ("viridis", 0.3), "value": ("YlOrRd", 0.85)}
OTHER_LINE_COLOR = ("cool", 0.75)
SEED_LINE = dict(linewidth=0.9, alpha=0.5)
MEAN_LINE = dict(linewidth=2.6)


@dataclass
class Family:
    """The runs of one clipping method at several thresholds: (seed, threshold) -> run."""

    method: str
    norm_type: Optional[float]
    suffix: str  # a variant id's '-eps...' part: another eps is another family
    thresholds: list[float]
    runs: dict[tuple[Optional[int], float], Run]
    variants: dict[float, str]
    color: Any

    @property
    def quantity(self) -> str:
        """What the threshold is: 'max_norm', 'max_norm (L1 norm)', 'clip_value'."""
        if self.method == "norm":
            p = "" if self.norm_type in (None, 2.0) else f" (L{_fmt(self.norm_type)} norm)"
            return f"max_norm{p}" + (f" {self.suffix.lstrip('-')}" if self.suffix else "")
        return "clip_value" if self.method == "value" else f"{self.method} threshold"

    @property
    def name(self) -> str:
        plain = {"norm": "max_norm", "value": "clip_value"}.get(self.method)
        return f"{self.method} clipping" + (f" {self.quantity}" if self.quantity != plain else "")

    def at(self, threshold: float) -> list[Run]:
        """The complete runs at one threshold, one per seed."""
        return [r for (_, t), r in self.runs.items() if t == threshold]


@dataclass
class Sweep:
    families: list[Family]
    baseline: list[Run]
    seeds: list[Optional[int]]
    total: Optional[int]  # the steps of a run that trains to the end

    @property
    def thresholds(self) -> list[float]:
        return sorted({t for f in self.families for t in f.thresholds})


def _find_sweep(exp: Experiment) -> Optional[Sweep]:
    """The threshold sweep of an experiment: every clipping family with two or more
    thresholds among the complete runs, and the family a `sweep:` config entry names (even
    with one threshold); None when there is none (a plain run with one threshold each)."""
    import matplotlib

    spec = exp.config.get("sweep") if isinstance(exp.config.get("sweep"), dict) else None
    swept = spec.get("method") if spec else None
    groups: dict[tuple, list[Run]] = {}
    for r in exp.runs:
        if r.method != "none" and _finite(r.threshold) and r.threshold > 0:
            m = re.search(r"-eps.*$", r.variant) if r.method == "norm" else None
            key = (r.method, r.norm_type if r.method == "norm" else None, m.group(0) if m else "")
            groups.setdefault(key, []).append(r)
    families = []
    for key in sorted(groups, key=lambda k: _variant_order(k[2], (k[0], 0.0, k[1]))):
        runs = groups[key]
        thresholds = sorted({r.threshold for r in runs})
        plain = key[1] in (None, 2.0) and not key[2]  # what `gradlab sweep` makes
        if len(thresholds) < 2 and not (swept == key[0] and plain):
            continue
        name, pos = FAMILY_LINE_COLORS.get(key[0], OTHER_LINE_COLOR)
        families.append(Family(
            method=key[0], norm_type=key[1], suffix=key[2], thresholds=thresholds,
            runs={(r.seed, r.threshold): r for r in runs}, variants={r.threshold: r.variant for r in runs},
            color=matplotlib.colormaps[name](pos),
        ))
    if not families:
        return None
    total = exp.steps or max((r.steps or 0 for r in exp.runs), default=0) or None
    return Sweep(families=families, baseline=[r for r in exp.runs if r.method == "none"], seeds=exp.seeds, total=total)


def _draw_sweep(exp: Experiment, out: Path) -> list[Path]:
    """The sweep's plots (none for an experiment that is not a sweep): final loss, divergence
    step and clip fraction against the threshold, and the first seed's gradient norms."""
    sweep = _find_sweep(exp)
    if sweep is None:
        return []
    # One combined sweep.png was drawn before these; a redraw should not leave it behind.
    (out / "sweep.png").unlink(missing_ok=True)
    written = [
        _draw_sweep_final_loss(exp, sweep, out / SWEEP_PLOTS[0]),
        _draw_sweep_divergence(exp, sweep, out / SWEEP_PLOTS[1]),
        _draw_sweep_clip_fraction(exp, sweep, out / SWEEP_PLOTS[2]),
    ]
    seed = _first_seed(exp, sweep)
    name = f"sweep_grad_norm_s{seed if seed is not None else 'x'}.png"
    written.append(_draw_sweep_grad_norm(exp, sweep, seed, out / name))
    return written


def _first_seed(exp: Experiment, sweep: Sweep) -> Optional[int]:
    """The config's first seed with a complete clipped run (else the smallest such seed)."""
    have = {s for f in sweep.families for (s, _) in f.runs}
    listed = exp.config.get("seeds") if isinstance(exp.config.get("seeds"), list) else []
    for s in [_int(x) for x in listed] + sorted(s for s in have if s is not None):
        if s in have:
            return s
    return None


def _finite(x: Optional[float]) -> bool:
    return x is not None and math.isfinite(x)


def _survivor_loss(r: Optional[Run]) -> Optional[float]:
    """A final loss to compare: a diverged run's report keeps its last finite loss, which is none."""
    return r.final_loss if r is not None and not r.diverged and _finite(r.final_loss) else None


def _span(steps: list[int]) -> str:
    """'7' or '4-7'."""
    lo, hi = min(steps), max(steps)
    return f"{lo}" if lo == hi else f"{lo}-{hi}"


def _at_steps(steps: list[int]) -> str:
    """'step 7' or 'steps 4-7'."""
    return f"step{'s' if min(steps) != max(steps) else ''} {_span(steps)}"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' if n != 1 else ''}"


def _sweep_figure(exp: Experiment, sweep: Sweep, heading: str, width: float = 10.5, height: float = 5.2):
    fig = _new_figure(width, height)
    ax = fig.subplots()
    ax.grid(True, which="major", alpha=0.3)
    seeds = ", ".join("?" if s is None else str(s) for s in sweep.seeds)
    text = f"{exp.summary}, {_plural(len(sweep.seeds), 'seed')} ({seeds})"
    fig.suptitle(f"{heading}\n{_wrap(text, int(width * 10))}")
    return fig, ax


def _threshold_axis(ax, sweep: Sweep) -> None:
    """Log x over the thresholds, each of them a labelled tick when there are few."""
    from matplotlib.ticker import NullLocator

    thresholds = sweep.thresholds
    lo, hi = min(thresholds), max(thresholds)
    span = math.log10(hi / lo)
    pad = 0.5 if span == 0 else max(0.12, 0.07 * span)
    ax.set_xscale("log")
    ax.set_xlim(lo / 10 ** pad, hi * 10 ** pad)
    if len(thresholds) <= MAX_THRESHOLD_TICKS:
        ax.set_xticks(thresholds, [_fmt(t) for t in thresholds])
        ax.xaxis.set_minor_locator(NullLocator())
    else:
        _spare_minor_ticks(ax.xaxis, *ax.get_xlim())
    quantity = " / ".join(dict.fromkeys(f.quantity for f in sweep.families))
    ax.set_xlabel(f"clipping threshold: {quantity} (log scale)")


def _legend_right(ax, entries: list[tuple[Any, str]]) -> None:
    """The key to the right of the axes; a handle may be a tuple of artists drawn as one."""
    from matplotlib.legend_handler import HandlerTuple

    if entries:
        ax.legend([h for h, _ in entries], [label for _, label in entries], loc="upper left",
                  bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=9, frameon=False, labelspacing=0.9,
                  handler_map={tuple: HandlerTuple(ndivide=None, pad=0.0)})


def _prefix(sweep: Sweep, fam: Family) -> str:
    return f"{fam.name}: " if len(sweep.families) > 1 else ""


def _family_entries(exp: Experiment, sweep: Sweep, fam: Family, mean: str) -> list[tuple[Any, str]]:
    from matplotlib.lines import Line2D

    prefix = _prefix(sweep, fam)
    face = exp.colors.get(fam.variants[fam.thresholds[len(fam.thresholds) // 2]], fam.color)
    return [
        (Line2D([], [], color=fam.color, marker=".", markersize=6, **SEED_LINE), f"{prefix}one seed"),
        (Line2D([], [], color=fam.color, marker="o", markerfacecolor=face, markeredgecolor="black", **MEAN_LINE),
         f"{prefix}{mean}"),
    ]


def _draw_sweep_final_loss(exp: Experiment, sweep: Sweep, path: Path) -> Path:
    """Final loss against threshold: a thin line per seed, a thick one for the mean over the
    seeds that did not diverge, the baseline as a band, diverged runs as x on the top edge."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    fig, ax = _sweep_figure(exp, sweep, "Final training loss against the clipping threshold")
    edge = ax.get_xaxis_transform()  # x in data, y in axes fractions
    shown: list[float] = []
    entries: list[tuple[Any, str]] = []
    partial = diverged = False
    for fam in sweep.families:
        for seed in sweep.seeds:
            ys = [_survivor_loss(fam.runs.get((seed, t))) for t in fam.thresholds]
            ax.plot(fam.thresholds, [np.nan if y is None else y for y in ys], color=fam.color, marker=".",
                    markersize=6, zorder=2, **SEED_LINE)
            shown += [y for y in ys if y is not None]
        xs, means, fills = [], [], []
        for t in fam.thresholds:
            runs = fam.at(t)
            ok = [y for y in map(_survivor_loss, runs) if y is not None]
            bad = sum(r.diverged for r in runs)
            if ok:
                xs.append(t)
                means.append(float(np.mean(ok)))
                full = len(ok) == len(runs)
                fills.append(exp.colors.get(fam.variants[t], fam.color) if full else "white")
                partial |= not full
            if bad:
                diverged = True
                ax.plot([t], [0.955], transform=edge, marker="x", color=fam.color, markersize=9, markeredgewidth=2.2,
                        linestyle="none", clip_on=False, zorder=5)
                ax.annotate(f"{bad}/{len(runs)} div", (t, 0.955), xycoords=edge, xytext=(0, -8),
                            textcoords="offset points", ha="center", va="top", fontsize=8, color=fam.color)
        shown += means
        ax.plot(xs, means, color=fam.color, zorder=4, **MEAN_LINE)
        ax.scatter(xs, means, c=fills, edgecolors="black", linewidths=0.8, s=55, zorder=5)
        entries += _family_entries(exp, sweep, fam, "mean over the seeds\nthat did not diverge")
    if partial:
        entries.append((Line2D([], [], marker="o", markerfacecolor="white", markeredgecolor="black", linestyle="none"),
                        "hollow: some seeds diverged there\n(the mean of the others)"))
    if diverged:
        entries.append((Line2D([], [], marker="x", color="black", markeredgewidth=2, linestyle="none"),
                        "top edge: diverged, so no final loss\n(k/n: seeds at that threshold)"))

    base = sweep.baseline
    if base:
        ok = [y for y in map(_survivor_loss, base) if y is not None]
        steps = [r.divergence_step for r in base if r.diverged and r.divergence_step is not None]
        gone = sum(r.diverged for r in base)
        at = f" at {_at_steps(steps)}" if steps else ""
        if ok:
            lo, hi = min(ok), max(ok)
            line = Line2D([], [], color=BASELINE_COLOR, linestyle="--", linewidth=1.4)
            ax.axhline(float(np.mean(ok)), color=BASELINE_COLOR, linestyle="--", linewidth=1.4, zorder=3)
            if hi > lo:
                ax.axhspan(lo, hi, facecolor=BASELINE_COLOR, alpha=0.15, edgecolor="none", zorder=1)
                handle: Any = (Patch(facecolor=BASELINE_COLOR, alpha=0.15, edgecolor="none"), line)
                what = f"band: {_fmt_loss(lo)}-{_fmt_loss(hi)} (min-max),\ndashed: mean"
            else:
                handle, what = line, f"final loss {_fmt_loss(lo)}"
            label = f"no clipping (none), {len(ok)} of {_plural(len(base), 'seed')}:\n{what}"
            if gone:
                label += f"; diverged in\n{_plural(gone, 'seed')}{at}"
            entries.append((handle, label))
            shown += ok
        else:
            entries.append((Line2D([], [], marker="x", color=BASELINE_COLOR, markeredgewidth=2, linestyle="none"),
                            f"no clipping (none): diverged in\nevery seed{at}: no final loss"))
            # Above the axes, where no mark can sit under it.
            every = {1: "its one seed", 2: "both seeds"}.get(len(base), f"all {len(base)} seeds")
            ax.set_title(f"no clipping: diverged in {every}{at}", loc="left", fontsize=9, color=BASELINE_COLOR)

    log = bool(shown) and min(shown) > 0
    if log:
        ax.set_yscale("log")
        lo, hi = math.log10(min(shown)), math.log10(max(shown))
        span = max(hi - lo, 0.5)
        ax.set_ylim(10 ** (lo - 0.06 * span), 10 ** (hi + 0.22 * span))  # the top strip: divergence marks
        _few_decade_ticks(ax.yaxis, *ax.get_ylim())
    elif shown:
        lo, hi = min(shown), max(shown)
        span = max(hi - lo, 0.1 * abs(hi), 1e-12)
        ax.set_ylim(lo - 0.06 * span, hi + 0.22 * span)
    else:
        ax.set_yticks([])
        ax.text(0.5, 0.5, "no run trained to the end: no final loss to show", transform=ax.transAxes,
                ha="center", va="center", fontsize=11, color="0.35")
    _threshold_axis(ax, sweep)
    ax.set_ylabel("final training loss" + (" (log scale)" if log else ""))
    _legend_right(ax, entries)
    return _save(fig, path)


def _fmt_loss(x: float) -> str:
    return f"{x:.3g}"


def _few_decade_ticks(axis, lo: float, hi: float) -> None:
    """Labelled ticks at 1, 2 and 5 times each power of ten when a log axis spans less
    than three decades (matplotlib would label one or two powers of ten only)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    if math.log10(hi / lo) > 3:
        _spare_minor_ticks(axis, lo, hi)
        return
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_locator(NullLocator())


def _draw_sweep_divergence(exp: Experiment, sweep: Sweep, path: Path) -> Path:
    """Divergence step against threshold: x where a seed diverged, a circle on the
    end-of-training line where it did not; the baseline's steps as a band."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import MaxNLocator

    fig, ax = _sweep_figure(exp, sweep, "Divergence step against the clipping threshold")
    steps_seen = [r.divergence_step for f in sweep.families for r in f.runs.values() if r.diverged and r.divergence_step is not None]
    steps_seen += [r.divergence_step for r in sweep.baseline if r.diverged and r.divergence_step is not None]
    end = sweep.total if sweep.total else max(steps_seen, default=0) + 1
    entries: list[tuple[Any, str]] = []
    any_diverged = False
    for fam in sweep.families:
        for seed in sweep.seeds:
            ys = []
            for t in fam.thresholds:
                r = fam.runs.get((seed, t))
                ys.append(np.nan if r is None or (r.diverged and r.divergence_step is None)
                          else (r.divergence_step if r.diverged else end))
            ax.plot(fam.thresholds, ys, color=fam.color, zorder=2, **SEED_LINE)
        div = [(t, r.divergence_step) for t in fam.thresholds for r in fam.at(t) if r.diverged and r.divergence_step is not None]
        if div:
            any_diverged = True
            ax.plot([t for t, _ in div], [s for _, s in div], marker="x", color=fam.color, markersize=9,
                    markeredgewidth=2.2, linestyle="none", zorder=5)
        for t in fam.thresholds:
            runs = fam.at(t)
            ok = sum(not r.diverged for r in runs)
            if ok:
                ax.plot([t], [end], marker="o", markerfacecolor="white", markeredgecolor=fam.color, markeredgewidth=1.8,
                        markersize=8, linestyle="none", zorder=5, clip_on=False)
            ax.annotate(f"{ok}/{len(runs)} ok", (t, end), xytext=(0, 8), textcoords="offset points", ha="center",
                        va="bottom", fontsize=8, color=fam.color)
        prefix = _prefix(sweep, fam)
        entries.append((Line2D([], [], color=fam.color, **SEED_LINE), f"{prefix}one seed"))
        if div:
            entries.append((Line2D([], [], marker="x", color=fam.color, markeredgewidth=2.2, markersize=9, linestyle="none"),
                            f"{prefix}diverged: first NaN/inf at that step"))
        entries.append((Line2D([], [], marker="o", markerfacecolor="white", markeredgecolor=fam.color, markeredgewidth=1.8,
                               markersize=8, linestyle="none"), f"{prefix}did not diverge\n(k/n ok: seeds that trained to the end)"))
    ax.axhline(end, color="0.45", linestyle=":", linewidth=1.3, zorder=1)
    entries.append((Line2D([], [], color="0.45", linestyle=":", linewidth=1.3),
                    f"end of training ({_plural(end, 'step')})" if sweep.total else "end of the longest run"))
    if not any_diverged:
        ax.text(0.5, 0.45, "no clipped run diverged", transform=ax.transAxes, ha="center", va="center",
                fontsize=12, color="0.4")

    base = sweep.baseline
    if base:
        steps = sorted(r.divergence_step for r in base if r.diverged and r.divergence_step is not None)
        ok = sum(not r.diverged for r in base)
        if steps:
            lo, hi = steps[0], steps[-1]
            ax.axhspan(lo - 0.5, hi + 0.5, facecolor=BASELINE_COLOR, alpha=0.15, edgecolor="none", zorder=1)
            line = Line2D([], [], color=BASELINE_COLOR, linestyle="--", linewidth=1.2)
            if len(steps) <= MAX_BASELINE_LINES:
                for s in sorted(set(steps)):
                    ax.axhline(s, color=BASELINE_COLOR, linestyle="--", linewidth=1.2, zorder=1)
                handle: Any = (Patch(facecolor=BASELINE_COLOR, alpha=0.15, edgecolor="none"), line)
                what = "band: range;\ndashed: each seed"
            else:
                handle, what = Patch(facecolor=BASELINE_COLOR, alpha=0.15, edgecolor="none"), "band: its range"
            label = f"no clipping (none): diverged at {_at_steps(steps)}\nin {len(steps)} of {_plural(len(base), 'seed')} ({what})"
            ax.annotate(f"no clipping: diverged at {_at_steps(steps)}", (0.01, hi + 0.5),
                        xycoords=ax.get_yaxis_transform(), xytext=(0, 3), textcoords="offset points",
                        ha="left", va="bottom", fontsize=9, color=BASELINE_COLOR)
            if ok:
                label += f";\ndid not diverge in {_plural(ok, 'seed')}"
            entries.append((handle, label))
        else:
            entries.append((Line2D([], [], marker="o", markerfacecolor="white", markeredgecolor=BASELINE_COLOR, linestyle="none"),
                            f"no clipping (none): did not diverge\nin any of {_plural(len(base), 'seed')}"))

    _threshold_axis(ax, sweep)
    ax.set_ylim(-0.02 * end, end * 1.12)  # room above the end line for the counts
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("divergence step (first NaN/inf)")
    _legend_right(ax, entries)
    return _save(fig, path)


def _draw_sweep_clip_fraction(exp: Experiment, sweep: Sweep, path: Path) -> Path:
    """Fraction of steps clipped against threshold, a thin line per seed and the mean."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import PercentFormatter

    fig, ax = _sweep_figure(exp, sweep, "Fraction of steps clipped against the clipping threshold")
    entries: list[tuple[Any, str]] = []
    any_diverged = False
    for fam in sweep.families:
        for seed in sweep.seeds:
            runs = [fam.runs.get((seed, t)) for t in fam.thresholds]
            ys = [r.clip_fraction if r is not None and _finite(r.clip_fraction) else np.nan for r in runs]
            ax.plot(fam.thresholds, ys, color=fam.color, marker=".", markersize=6, zorder=2, **SEED_LINE)
            bad = [(t, y) for t, r, y in zip(fam.thresholds, runs, ys) if r is not None and r.diverged and np.isfinite(y)]
            if bad:
                any_diverged = True
                ax.plot([t for t, _ in bad], [y for _, y in bad], marker="x", color=fam.color, markersize=8,
                        markeredgewidth=2, linestyle="none", zorder=6, clip_on=False)
        xs, means = [], []
        for t in fam.thresholds:
            values = [r.clip_fraction for r in fam.at(t) if _finite(r.clip_fraction)]
            if values:
                xs.append(t)
                means.append(float(np.mean(values)))
        ax.plot(xs, means, color=fam.color, zorder=4, **MEAN_LINE)
        ax.scatter(xs, means, c=[exp.colors.get(fam.variants[t], fam.color) for t in xs], edgecolors="black",
                   linewidths=0.8, s=55, zorder=5, clip_on=False)
        entries += _family_entries(exp, sweep, fam, "mean over the seeds")
    if any_diverged:
        entries.append((Line2D([], [], marker="x", color="black", markeredgewidth=2, linestyle="none"),
                        "diverged: the fraction of the steps\nbefore its divergence"))
    if sweep.baseline:
        entries.append((Line2D([], [], linestyle="none"), "(the baseline, none, never clips:\nnot drawn)"))
    _threshold_axis(ax, sweep)
    ax.set_ylim(-0.03, 1.03)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=1.0))
    ax.set_ylabel("steps on which the gradient was clipped")
    _legend_right(ax, entries)
    return _save(fig, path)


def _draw_sweep_grad_norm(exp: Experiment, sweep: Sweep, seed: Optional[int], path: Path) -> Path:
    """The global gradient norm over steps of every threshold of one seed (and its baseline),
    coloured by threshold on the sweep's sequential colormap, with a colour bar per family."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.lines import Line2D

    fig = _new_figure(11.0, 5.8)
    ax = fig.subplots()
    ax.grid(True, which="major", alpha=0.3)
    runs = [r for r in sweep.baseline if r.seed == seed]
    runs += [r for f in sweep.families for t in f.thresholds for r in [f.runs.get((seed, t))] if r is not None]
    drawn: list[float] = []
    diverged = False
    thresholds_drawn = False
    few = max((len(r.metrics.get("step", ())) for r in runs), default=0) <= 20
    for r in runs:
        color = BASELINE_COLOR if r.method == "none" else exp.colors.get(r.variant, "0.5")
        steps, values = r.metrics.get("step"), r.metrics.get("grad_norm")
        if steps is not None and values is not None and len(steps):
            y = _plottable(values, log=True)
            idx = _downsample(y)
            # The baseline first and under the clipped runs: where it does not explode it
            # would otherwise hide the lines being compared.
            ax.plot(steps[idx], y[idx], color=color, linewidth=1.7 if r.method == "none" else 1.3,
                    marker="." if few else None, zorder=2)
            if (~np.isnan(y)).any():
                drawn += [float(np.nanmin(y)), float(np.nanmax(y))]
        # Only an L2 max_norm is on the scale of grad_norm (always the L2 norm).
        if r.method == "norm" and r.norm_type in (None, 2.0) and _finite(r.threshold):
            ax.axhline(r.threshold, color=color, linestyle=":", linewidth=1.2, zorder=1)
            thresholds_drawn = True
            drawn.append(r.threshold)
        if r.diverged:
            diverged = True
            _mark_divergence(ax, r, "grad_norm", True, color)

    ax.set_yscale("log")
    if drawn:
        lo, hi = math.log10(min(drawn)), math.log10(max(drawn))
        pad = max(0.15, 0.05 * (hi - lo), (1.0 - (hi - lo)) / 2)
        ax.set_ylim(10 ** max(lo - pad, -300.0), 10 ** min(hi + pad, 300.0))
    lo, hi = ax.get_ylim()
    (_few_decade_ticks if math.log10(hi / lo) <= 3 else _decade_ticks)(ax.yaxis, lo, hi)
    firsts = [r.metrics["step"][0] for r in runs if len(r.metrics.get("step", ()))]
    lasts = [r.metrics["step"][-1] for r in runs if len(r.metrics.get("step", ()))]
    first = float(min(firsts, default=0.0))
    _step_axis(ax, first, max(float(max(lasts, default=first)), (sweep.total or 0) - 1.0))
    ax.set_xlabel("step")
    ax.set_ylabel("global gradient L2 norm, before clipping (log scale)")
    ax.set_title(f"Gradient norm per step, seed {seed if seed is not None else '?'}: one line per threshold\n"
                 f"{_wrap(exp.summary, TITLE_CHARS)}", fontsize=11)

    for fam in reversed(sweep.families):  # the last colour bar made sits next to the axes
        colors = [exp.colors.get(fam.variants[t], fam.color) for t in fam.thresholds]
        n = len(colors)
        mappable = ScalarMappable(norm=BoundaryNorm(np.arange(n + 1), n), cmap=ListedColormap(colors))
        bar = fig.colorbar(mappable, ax=ax, pad=0.015, fraction=0.05, aspect=30)
        every = max(1, math.ceil(n / MAX_THRESHOLD_TICKS))
        ticks = np.arange(0, n, every)
        bar.set_ticks(ticks + 0.5, labels=[_fmt(fam.thresholds[i]) for i in ticks])
        bar.ax.tick_params(length=0)
        bar.set_label(f"{fam.quantity}: the colour of its line")

    entries: list[tuple[Any, str]] = []
    if any(r.method == "none" for r in runs):
        entries.append((Line2D([], [], color=BASELINE_COLOR, linewidth=1.7), "no clipping (none)"))
    entries.append((Line2D([], [], color="0.4", linewidth=1.3),
                    f"one threshold (colour bar{'s' if len(sweep.families) > 1 else ''})"))
    if thresholds_drawn:
        entries.append((Line2D([], [], color="0.4", linestyle=":", linewidth=1.2), "its max_norm, same colour"))
    if any(f.method == "value" or (f.method == "norm" and f.norm_type not in (None, 2.0)) for f in sweep.families):
        entries.append((Line2D([], [], linestyle="none"), "(clip_value and non-L2 thresholds are\nnot L2 norms: not drawn)"))
    if diverged:
        entries.append((Line2D([], [], color="black", marker="x", markeredgewidth=2, markersize=9, linestyle="none"),
                        "diverged (NaN/inf)"))
    fig.legend([h for h, _ in entries], [label for _, label in entries], loc="outside lower center",
               ncol=len(entries), fontsize=9, frameon=False)
    return _save(fig, path)
