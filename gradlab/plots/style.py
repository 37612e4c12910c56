"""What every figure shares: sizes, colours, labels, axes helpers, and how a figure is saved.

Matplotlib is imported inside the functions: `import gradlab.plots` must not load it (the
CLI imports the package on every start-up). Figures are built with the object API
(`matplotlib.figure.Figure`), not pyplot: no global figure registry to leak into, no
process-wide backend switch for a notebook that calls us, and the Agg renderer is used for
PNG whatever backend is active.
"""

from __future__ import annotations

import math
import re
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Optional

from gradlab.io import write_bytes

if TYPE_CHECKING:
    from .load import Experiment


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
# The other methods' colormaps, one per method in order of appearance: with one shared map,
# per_tensor, agc, zclip, ... of one threshold each all took its middle colour.
OTHER_CMAPS = (OTHER_CMAP, ("Greens", 0.5, 0.9), ("Purples", 0.5, 0.9), ("Oranges", 0.5, 0.9),
               ("RdPu", 0.5, 0.9), ("copper", 0.3, 0.8), ("pink", 0.2, 0.5), ("Greys", 0.45, 0.75))
# Recurrent layers bottom (dark) to top (light), short of the yellow that vanishes on white.
BPTT_CMAP = ("plasma", 0.0, 0.82)
# Titles at a fixed height above their axes: matplotlib's automatic placement measures every
# tick label of the axes first, about 20 ms an axes (no figure has ticks on top to avoid).
TITLE = dict(y=1.0)
# zlib level 3 rather than PIL's 6: a third less encoding time for a tenth more bytes.
PNG_OPTIONS = dict(compress_level=3)

# ----------------------------------------------------------------------------- style


def variant_order(variant: str, info: tuple) -> tuple:
    method, threshold, norm_type = info
    rank = {"none": 0, "norm": 1, "value": 2}.get(method, 3)
    return (rank, threshold if threshold is not None else 0.0, norm_type or 0.0, variant)


def variant_colors(variants: list[str], info: dict) -> dict[str, Any]:
    import matplotlib

    colors: dict[str, Any] = {}
    families: dict[str, list[str]] = {}
    for v in variants:  # already ordered by threshold within a family
        method = info[v][0]
        if method == "none":
            colors[v] = BASELINE_COLOR
        else:
            families.setdefault(method, []).append(v)
    others = [m for m in families if m not in FAMILY_CMAPS]
    for method, members in families.items():
        name, lo, hi = FAMILY_CMAPS.get(method) or OTHER_CMAPS[others.index(method) % len(OTHER_CMAPS)]
        cmap = matplotlib.colormaps[name]
        n = len(members)
        pos = [lo + (hi - lo) * i / (n - 1) for i in range(n)] if n > 1 else [(lo + hi) / 2]
        for v, x in zip(members, pos):
            colors[v] = cmap(float(x))
    return colors


def fmt(x: Optional[float]) -> str:
    if x is None:
        return "?"
    return f"{x:g}" if math.isfinite(x) else ("∞" if x > 0 else "nan")


def variant_label(exp: Experiment, variant: str) -> str:
    method, threshold, norm_type = exp.variant_info[variant]
    if method == "none":
        return "none (no clipping)"
    if method == "norm":
        p = "" if norm_type in (None, 2.0) else f"L{fmt(norm_type)} "
        return f"{variant}: {p}max_norm {fmt(threshold)}"
    if method == "value":
        return f"{variant}: each element to ±{fmt(threshold)}"
    label = exp.labels.get(variant)
    return f"{variant}: {label}" if label and label != variant else variant


def wrap(text: str, width: int) -> str:
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


def new_figure(width: float, height: float):
    """A figure its drawing function lays out itself, with `margins` computed from the texts'
    lengths: matplotlib's constrained layout measured every text by rendering it, which was
    half of a figure's cost (benchmarks/plot_bench.py)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI)


# Text measured without rendering it: DejaVu Sans' widest common advances are about 0.6 em.
# Measuring with the renderer is what makes constrained layout cost half of a figure's time.
EM_WIDTH = 0.6
LINE_HEIGHT = 1.3  # of the font size, with the leading


def text_width(lines: Iterable[str], points: float) -> float:
    """Inches taken by the longest of `lines` at `points`: a slight overestimate."""
    return max((len(line) for line in lines), default=0) * EM_WIDTH * points / 72


def text_height(n_lines: int, points: float) -> float:
    return n_lines * LINE_HEIGHT * points / 72


def margins(fig, left: float, right: float, top: float, bottom: float) -> tuple[float, float, float, float]:
    """The rectangle (figure fractions) inside these margins in inches: a fixed layout,
    from sizes known in advance, so that nothing needs measuring."""
    w, h = fig.get_size_inches()
    return (left / w, bottom / h, max(0.05, 1 - (left + right) / w), max(0.05, 1 - (top + bottom) / h))


def place_axes(fig, left: float, right: float, top: float, bottom: float):
    return fig.add_axes(margins(fig, left, right, top, bottom))


def legend_width(handles, points: float) -> float:
    """Inches of a one-column legend of these handles: the key, the gap, the longest line."""
    return key_width([str(h.get_label()) for h in handles], points)


def key_width(labels: Iterable[str], points: float) -> float:
    lines = [line for label in labels for line in label.split("\n")]
    return (2.0 + 0.8) * points / 72 + text_width(lines, points)


_SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def power_label(value: float, _pos: Any = None) -> str:
    """'10⁶' for a power of ten, in plain text: matplotlib's own '$10^{6}$' goes through
    mathtext, a parser that cost a tenth of a heatmap's time."""
    if value <= 0 or not math.isfinite(value):
        return ""
    e = math.log10(value)
    if abs(e - round(e)) < 1e-9:
        return "10" + str(round(e)).translate(_SUPERSCRIPT)
    return f"{value:g}"


def power_ticks(axis) -> None:
    """Plain-text labels on a log axis whose major ticks are powers of ten."""
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(power_label))


def spare_minor_ticks(axis, lo: float, hi: float) -> None:
    """Drop a log axis's minor ticks when it spans more than 1.5 decades: there they carry
    no label, yet laying them out is most of the drawing time."""
    from matplotlib.ticker import NullLocator

    if lo > 0 and hi > 0 and math.log10(hi) - math.log10(lo) > math.log10(30):
        axis.set_minor_locator(NullLocator())


def decade_ticks(axis, lo: float, hi: float) -> None:
    """Log ticks at a round number of decades (1, 2, 5, 10, ... apart) when the axis spans
    more than a dozen: matplotlib's own choice there lands on 1e-32, 1e-69, ..."""
    from matplotlib.ticker import FixedLocator

    spare_minor_ticks(axis, lo, hi)
    if not (lo > 0 and hi > 0) or math.log10(hi) - math.log10(lo) <= 12:
        return
    first, last = math.ceil(math.log10(lo)), math.floor(math.log10(hi))
    stride = next((s for s in (2, 5, 10, 20, 25, 50, 100) if (last - first) / s <= 8), 100)
    decades = range(math.ceil(first / stride) * stride, last + 1, stride)
    axis.set_major_locator(FixedLocator([10.0 ** float(d) for d in decades]))
    power_ticks(axis)


def step_axis(ax, first: float, last: float, pad: Optional[float] = None) -> None:
    """Whole-number step ticks over [first, last], padded so that a one-step run is visible."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    pad = max(0.5, 0.01 * (last - first)) if pad is None else pad
    ax.set_xlim(first - pad, last + pad)


def save(fig, path: Path) -> Path:
    """Render to memory, then write atomically: a reader never sees half a PNG."""
    buf = BytesIO()
    # Not cleared afterwards (13 ms a figure): no pyplot registry holds it, so it is freed
    # with its last reference.
    fig.savefig(buf, format="png", dpi=DPI, pil_kwargs=PNG_OPTIONS)
    write_bytes(path, buf.getvalue())
    return path


def few_decade_ticks(axis, lo: float, hi: float) -> None:
    """Labelled ticks at 1, 2 and 5 times each power of ten when a log axis spans less
    than three decades (matplotlib would label one or two powers of ten only)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    if math.log10(hi) - math.log10(lo) > 3:  # a ratio of 1e300 and 1e-300 would overflow
        spare_minor_ticks(axis, lo, hi)
        return
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_locator(NullLocator())



# Small multiples (multiples.py): a sweep's per-run figures, one figure per seed.
MAX_MULTIPLE_COLUMNS = 4
MULTIPLE_PANEL_WIDTH = 3.3  # inches: four panels, the key and the colour bar stay under 17
MULTIPLE_HEATMAP_COLUMNS = 400  # per panel: about its width in pixels, so no column is lost
MAX_PANEL_YTICK_LABELS = 12


def panel_grid(n: int, share: bool = True):
    """n panels, MAX_PANEL_COLUMNS to a row, the unused ones hidden; `share`: one pair of axes
    for all (the variants of one experiment), else each its own (a grid's learning rates can
    put panels decades apart). (fig, [ax] * n)."""
    import numpy as np

    ncols = min(n, MAX_PANEL_COLUMNS)
    nrows = math.ceil(n / ncols)
    fig = new_figure(4.6 * ncols + 3.6, 3.6 * nrows + 1.1)
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharex=share, sharey=share, squeeze=False)).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, list(axes[:n])
