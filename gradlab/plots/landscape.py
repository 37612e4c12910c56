"""The loss over a 2-D slice of parameter space (gradlab.landscape), with the seed's
trajectories projected on it: a heat map (log colour scale when the surface spans more than
two decades, as a cliff's does), each variant's path with a marker per recorded step, an
arrow on its longest step (the jump off a cliff, when there is one), its start and end, and
the centre step starred. A path that leaves the frame is cut at its edge and labelled with
where it went."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .style import BASELINE_COLOR, new_figure, save

def _outline():
    from matplotlib import patheffects

    return [patheffects.Stroke(linewidth=3.2, foreground="black"), patheffects.Normal()]


_PATH_COLORS = ("#e41a1c", "#377eb8", "#4daf4a", "#984ea3", "#ff7f00", "#a65628", "#f781bf", "#17becf")


def _colors(variants: list[str]) -> dict[str, str]:
    out, i = {}, 0
    for v in variants:
        if v == "none":
            out[v] = "white"
        else:
            out[v] = _PATH_COLORS[i % len(_PATH_COLORS)]
            i += 1
    return out


def draw_landscape(ls, path: Path) -> Path:
    from matplotlib.colors import LogNorm, Normalize

    outline = _outline()
    rows = (len(ls.paths) + 2) // 2  # legend rows: the paths and the centre, two columns
    legend = 0.17 * rows + 0.5  # inches below the axes for the x label and the legend
    height = 4.6 + legend
    fig = new_figure(8.6, height)
    bottom, top = (legend + 0.45) / height, 0.55 / height
    ax = fig.add_axes((0.1, bottom, 0.64, 1 - bottom - top))
    cax = fig.add_axes((0.76, bottom, 0.022, 1 - bottom - top))
    loss = np.array(ls.loss, dtype=float)
    finite = loss[np.isfinite(loss)]
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    positive = finite[finite > 0]
    log = positive.size > 0 and lo >= 0 and hi / max(float(positive.min()), 1e-300) > 100
    if log:
        floor = float(positive.min())
        norm = LogNorm(vmin=floor, vmax=max(hi, floor * 10))
        shown = np.where(np.isfinite(loss), np.maximum(loss, floor), np.nan)
    else:
        norm = Normalize(vmin=lo, vmax=hi if hi > lo else lo + 1)
        shown = loss
    masked = np.ma.masked_invalid(shown)
    mesh = ax.pcolormesh(ls.alphas, ls.betas, masked, shading="nearest", cmap="viridis", norm=norm, rasterized=True)
    if (~np.isfinite(loss)).any():
        ax.set_facecolor("#d0d0d0")  # non-finite losses: grey
    fig.colorbar(mesh, cax=cax, label="loss on the centre step's batch" + (" (log)" if log else ""))
    a0, a1, b0, b1 = ls.alphas[0], ls.alphas[-1], ls.betas[0], ls.betas[-1]

    colors = _colors(list(ls.paths))
    handles = []
    exits = 0  # labels of paths that leave the frame, stacked so that none hides another
    for v, (steps, coords, losses) in ls.paths.items():
        if not len(steps):
            continue
        c = colors[v]
        edge = BASELINE_COLOR if c == "white" else "white"
        mine = v == next(iter(ls.paths))
        (h,) = ax.plot(coords[:, 0], coords[:, 1], "-", color=c, lw=2.0 if mine else 1.4, zorder=3,
                       marker="o", ms=2.5, mec=edge, mew=0.3, path_effects=outline)
        div = ls.diverged.get(v)
        label = f"{v}" + (" (this run)" if mine else "") + (f", diverged at step {div}" if div is not None else "")
        label += f": loss {losses[-1]:.3g} after step {int(steps[-1]) - 1}" if np.isfinite(losses[-1]) else ""
        h.set_label(label)
        handles.append(h)
        ax.plot(*coords[0], "o", color=c, ms=8, mec=edge, zorder=4)
        ax.plot(*coords[-1], "s", color=c, ms=8, mec=edge, zorder=4)
        if len(coords) > 1:
            jumps = np.hypot(*np.diff(coords, axis=0).T)
            k = int(np.argmax(jumps))
            start, end = coords[k], coords[k + 1]
            inside = a0 <= end[0] <= a1 and b0 <= end[1] <= b1
            tip = end if inside else _edge_point(start, end, (a0, a1, b0, b1))
            ax.annotate("", xy=tip, xytext=start, zorder=5,
                        arrowprops=dict(arrowstyle="-|>", color=c, lw=1.8, mutation_scale=16,
                                        shrinkA=0, shrinkB=0))
            if not inside:
                at_x = (tip[0] - a0) / (a1 - a0)
                ha = "left" if at_x < 0.25 else "right" if at_x > 0.75 else "center"
                dy = (-14 - 14 * exits) if tip[1] >= b0 + 0.5 * (b1 - b0) else (8 + 14 * exits)
                exits += 1
                ax.annotate(f"{v}: step {int(steps[k])} -> ({end[0]:.3g}, {end[1]:.3g})", xy=tip,
                            xytext=(0, dy), textcoords="offset points", fontsize=8,
                            color="black", ha=ha, zorder=6,
                            bbox=dict(boxstyle="round,pad=0.2", fc="white", ec=BASELINE_COLOR, alpha=0.9))
    ax.plot(*ls.centre, "*", color="gold", ms=16, mec="black", zorder=6, label=f"centre: step {ls.step}")
    ax.set_xlim(a0, a1)
    ax.set_ylim(b0, b1)
    ax.set_xlabel(ls.axes[0])
    ax.set_ylabel(ls.axes[1])
    ax.set_title(f"loss landscape of {ls.run_id} ({ls.description})\ncentre: step {ls.step}, {ls.centre_reason}",
                 fontsize=10)
    star = ax.lines[-1]
    below = -0.5 / (ax.get_position().height * height)  # half an inch under the axes, past the x label
    ax.legend(handles=handles + [star], loc="upper left", bbox_to_anchor=(-0.05, below), fontsize=8, ncol=2,
              frameon=False)
    return save(fig, path)


def _edge_point(start: np.ndarray, end: np.ndarray, box: tuple[float, float, float, float]) -> np.ndarray:
    """Where the segment from `start` (inside) to `end` (outside) leaves the box."""
    a0, a1, b0, b1 = box
    d = end - start
    ts = [1.0]
    for lo_, hi_, s, dd in ((a0, a1, start[0], d[0]), (b0, b1, start[1], d[1])):
        if dd > 0:
            ts.append((hi_ - s) / dd)
        elif dd < 0:
            ts.append((lo_ - s) / dd)
    t = max(0.0, min(ts))
    return start + t * d
