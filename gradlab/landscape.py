"""A run's loss over a 2-D slice of parameter space, with its seed's trajectories on it.

The slice is centred on the run's weights at one step, theta_c, and spanned by two
directions d1, d2: theta(alpha, beta) = theta_c + alpha d1 + beta d2. Either

- two named entries (`--params w,b`, `layer0.W[3,4]`): d1, d2 are unit vectors, and alpha,
  beta are those entries' values themselves; or
- `grad` (the gradient of the loss at theta_c on the centre step's batch) and `random`
  (a Gaussian draw), each filter-normalised as Li et al. 2018 ("Visualizing the Loss
  Landscape of Neural Nets", section 4): every filter of the direction (here every output
  unit's weights: one slice along the tensor's fan-in axis, or the whole of a vector) is
  rescaled to the norm of the same filter of theta_c, so that a unit of alpha means the same
  relative change in every layer whatever its scale. A vector (a bias, a LayerNorm gain) is
  one filter here, so a vector of zeros, as biases at initialisation, gets a zero direction;
  Li et al. may leave biases unperturbed altogether.

The weights of a step come from replaying the seed: training is deterministic (same config,
seed and batches), so `train_seed` with an observer records every variant's parameters at
every step (every k-th when they would not fit in memory) in one pass. The loss surface is
evaluated on one fixed batch, the centre step's training batch, with the grid points stacked
on the model's variant axis (V copies of the parameters, in chunks that fit in memory): a
41 x 41 slice of a small model is one or a few forward passes. Each trajectory is projected
on the slice by least squares (the exact coordinates for named entries) and scored on the
same batch, so that a step that leaves the slice's plane still shows its loss.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .errors import UserError, clip

MIN_RESOLUTION, MAX_RESOLUTION = 3, 401
MAX_SPAN = 1e6
# What the recorded trajectories and a chunk of stacked grid points may hold in memory.
TRAJECTORY_BYTES = 256 * 2**20
CHUNK_BYTES = 128 * 2**20
DIRECTIONS = ("grad", "random")


@dataclass
class Landscape:
    run_id: str
    step: int  # the centre step
    centre_reason: str  # why that step: "given", "last healthy step before the divergence at step N", ...
    mode: str  # "params" or "directions"
    axes: tuple[str, str]  # axis labels: "rnn.w[0]" or "grad (filter-normalised)"
    alphas: np.ndarray  # (R,)
    betas: np.ndarray  # (R,)
    loss: np.ndarray  # (R_beta, R_alpha): loss[j, i] at (alphas[i], betas[j])
    centre: tuple[float, float]  # theta_c's coordinates (0, 0 for directions)
    # variant id -> (steps, coords (n, 2), loss on the fixed batch (n,)); the run's own first.
    paths: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    diverged: dict[str, Optional[int]] = field(default_factory=dict)  # variant id -> divergence step
    recorded_loss: Optional[float] = None  # metrics.csv's loss at the centre step
    replayed_loss: Optional[float] = None  # the replay's, on the same batch
    stride: int = 1  # every k-th step recorded
    seconds: float = 0.0  # the grid's evaluation time (wall)
    cpu_seconds: float = 0.0  # and its CPU time (one BLAS thread: the fair figure on a busy machine)
    description: str = ""


def _bad(message: str, key: str) -> UserError:
    return UserError(message, key=key)


def parse_pair(text: Optional[str], key: str) -> Optional[tuple[str, str]]:
    if text is None:
        return None
    # Split on commas outside brackets: `layer0.W[3,4],layer0.b[1]`.
    parts, depth, cur = [], 0, ""
    for ch in text:
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(cur.strip())
            cur = ""
        else:
            cur += ch
    parts.append(cur.strip())
    if len(parts) != 2 or not all(parts):
        raise _bad(f"expected two names separated by a comma, got `{clip(text)}`", key)
    return parts[0], parts[1]


def parse_box(text: Optional[str]) -> Optional[tuple[float, float, float, float]]:
    if text is None:
        return None
    try:
        vals = [float(p) for p in text.split(",")]
    except ValueError:
        vals = []
    if len(vals) != 4 or not all(math.isfinite(v) for v in vals):
        raise _bad(f"expected four finite numbers ALPHA_MIN,ALPHA_MAX,BETA_MIN,BETA_MAX, got `{clip(text)}`", "--box")
    if not (vals[0] < vals[1] and vals[2] < vals[3]):
        raise _bad(f"each axis's minimum must be below its maximum, got `{clip(text)}`", "--box")
    return vals[0], vals[1], vals[2], vals[3]


def resolve_entry(name: str, shapes: dict[str, tuple[int, ...]],
                  key: str = "--params") -> tuple[str, tuple[int, ...], str]:
    """`rnn.w`, `w` (a unique last part), `layer0.W[3,4]` -> (tensor, index, label). A tensor
    of one entry needs no index."""
    m = re.fullmatch(r"([^\[\]]+?)(?:\[([0-9,\s]*)\])?", name.strip())
    if not m:
        raise _bad(f"cannot read parameter `{clip(name)}`: expected NAME or NAME[i,j]", key)
    base, idx = m.group(1), m.group(2)
    cands = [n for n in shapes if n == base] or [n for n in shapes if n.rsplit(".", 1)[-1] == base]
    if len(cands) != 1:
        names = list(shapes)
        listed = ", ".join(names[:8]) + (" ..." if len(names) > 8 else "")
        what = "ambiguous" if cands else "unknown"
        raise _bad(f"{what} parameter `{clip(base)}`; this model's are {listed}", key)
    tensor, shape = cands[0], shapes[cands[0]]
    if idx is None:
        if math.prod(shape) != 1:
            first = ",".join("0" * len(shape))
            raise _bad(f"`{tensor}` has shape {tuple(shape)}: name one entry, e.g. {tensor}[{first}]", key)
        index = (0,) * len(shape)
    else:
        try:
            index = tuple(int(p) for p in idx.split(","))
        except ValueError:
            raise _bad(f"cannot read the index of `{clip(name)}`", key) from None
        if len(index) != len(shape) or any(not 0 <= i < s for i, s in zip(index, shape)):
            raise _bad(f"index {list(index)} is outside `{tensor}` of shape {tuple(shape)}", key)
    label = tensor + (f"[{','.join(map(str, index))}]" if shape else "")
    return tensor, index, label


def _run_report(exp: Path, run_id: str) -> tuple[dict, list[dict]]:
    from .store import collect_reports

    reports = collect_reports(exp)
    if not reports:
        raise UserError("no complete run in this experiment yet", file=str(exp))
    by_id = {r["run_id"]: r for r in reports}
    if run_id not in by_id:
        ids = sorted(by_id)
        listed = ", ".join(ids[:8]) + (" ..." if len(ids) > 8 else "")
        raise _bad(f"no complete run `{clip(run_id)}` in {exp.name}; its runs are {listed}", "--run")
    return by_id[run_id], reports


def _metrics(exp: Path, run_id: str) -> dict[str, np.ndarray]:
    from .plots.load import read_table

    from .store import run_dir

    header, table = read_table(run_dir(exp, run_id) / "metrics.csv")
    return {c: table[:, i] for i, c in enumerate(header)}


def choose_centre(report: dict, metrics: dict[str, np.ndarray], step: Optional[int]) -> tuple[int, str]:
    steps = metrics["step"].astype(int)
    loss, norm = metrics["loss"], metrics["grad_norm"]
    healthy = np.isfinite(loss) & np.isfinite(norm)
    if "nonfinite" in metrics:
        healthy &= metrics["nonfinite"] == 0
    div = report.get("divergence_step")
    if step is not None:
        if step < 0 or step >= len(steps):
            raise _bad(f"step {step} is beyond the run: it has steps 0 to {len(steps) - 1}", "--step")
        if not healthy[step] or (div is not None and step >= div):
            raise _bad(f"step {step} is at or after the run's divergence (step {div}): its loss or gradient is not "
                       f"finite; give a step before {div}", "--step")
        return step, "given"
    if div is not None:
        if div == 0:
            raise _bad("the run diverged at step 0: it has no healthy step to centre on", "--run")
        return int(div) - 1, f"the last healthy step before the divergence at step {div}"
    s = int(steps[healthy][np.argmax(norm[healthy])])
    return s, f"the step of the largest gradient norm ({norm[s]:.3g})"


def filter_normalise(d: dict[str, np.ndarray], theta: dict[str, np.ndarray], fan_in: dict[str, Optional[int]]) -> None:
    """Li et al. 2018's filter normalisation, in place: each filter of d (one output unit's
    weights: the slice along every axis but the fan-in one; a vector as a whole) rescaled to
    the norm of theta's same filter."""
    for name, a in d.items():
        t = theta[name]
        ax = fan_in.get(name)
        if ax is None or t.ndim < 2:
            tn, an = np.linalg.norm(t), np.linalg.norm(a)
            a *= tn / an if an > 0 else 0.0
            continue
        tn = np.sqrt(np.sum(t * t, axis=ax, keepdims=True))
        an = np.sqrt(np.sum(a * a, axis=ax, keepdims=True))
        with np.errstate(divide="ignore", invalid="ignore"):
            a *= np.where(an > 0, tn / an, 0.0)


class _Recorder:
    """The observer: every variant's parameters (flattened, float64) at every `stride`-th
    step, the last step and the final weights; the centre step's batch."""

    def __init__(self, centre: int, stride: int, names: Sequence[str]) -> None:
        self.centre, self.stride, self.names = centre, stride, list(names)
        self.points: dict[int, list[tuple[int, np.ndarray]]] = {}
        self.batch = None
        self.theta_c: Optional[dict[int, dict[str, np.ndarray]]] = None

    def __call__(self, step, variants, params, x, y) -> None:
        if step == self.centre:
            self.batch = (x.copy(), y.copy())
            self.theta_c = {int(v): {k: params[k][r].copy() for k in self.names} for r, v in enumerate(variants)}
        if step % self.stride and x is not None:
            return
        flat = np.concatenate([params[k].reshape(len(variants), -1) for k in self.names], axis=1).astype(np.float64)
        for r, v in enumerate(variants):
            self.points.setdefault(int(v), []).append((int(step), flat[r]))


def _flatten(theta: dict[str, np.ndarray], names: Sequence[str]) -> np.ndarray:
    return np.concatenate([theta[k].reshape(-1) for k in names]).astype(np.float64)


def _losses(model, task, points, shapes: dict[str, tuple[int, ...]], dtype, x, y) -> np.ndarray:
    """The loss (n,) of n parameter sets on one batch, stacked on the variant axis in chunks
    of at most CHUNK_BYTES of parameters and activations. `points` is an (n, P) array of
    flattened sets, or (n, make) with make(lo, hi) giving rows lo..hi-1 (a grid is built one
    chunk at a time: 1681 copies of a 60k-parameter MLP would be 800 MB at once)."""
    n, make = (len(points), lambda lo, hi: points[lo:hi]) if isinstance(points, np.ndarray) else points
    P = sum(math.prod(s) for s in shapes.values())
    item = max(np.dtype(dtype).itemsize, 8)
    act = max(1, int(np.asarray(x).size)) * 16  # a rough bound on the activations a copy keeps
    chunk = max(1, min(n, CHUNK_BYTES // max(1, (P + act) * item)))
    out = np.empty(n)
    sizes = [math.prod(s) for s in shapes.values()]
    with np.errstate(all="ignore"):
        for lo in range(0, n, chunk):
            part = make(lo, min(n, lo + chunk)).astype(dtype)
            params, at = {}, 0
            for (name, shape), size in zip(shapes.items(), sizes):
                params[name] = np.ascontiguousarray(part[:, at:at + size]).reshape((len(part),) + tuple(shape))
                at += size
            o, _ = model.forward(params, x)
            loss, _ = task.loss(o, y, z_loss=model.z_loss)
            out[lo:lo + len(part)] = loss
    return out


def compute(exp: Path, run_id: str, *, step: Optional[int] = None, params: Optional[tuple[str, str]] = None,
            directions: Optional[tuple[str, str]] = None, span: float = 1.0,
            box: Optional[tuple[float, float, float, float]] = None, resolution: int = 41,
            random_seed: int = 0, variants: Optional[Sequence[str]] = None) -> Landscape:
    """The slice, its losses and the seed's projected trajectories (see the module's doc):
    every variant's, or with `variants` those (by variant id) and the run's own. Bad input is
    a UserError before anything is computed."""
    from threadpoolctl import threadpool_limits

    from .config import load_resolved
    from .config.schema import variant_id
    from .kinds import MODEL_KINDS
    from .models import build_model
    from .tasks import build_task
    from .train import seed_streams, train_seed

    if not MIN_RESOLUTION <= resolution <= MAX_RESOLUTION:
        raise _bad(f"must be between {MIN_RESOLUTION} and {MAX_RESOLUTION}, got {resolution}", "--resolution")
    if not (math.isfinite(span) and 0 < span <= MAX_SPAN):
        raise _bad(f"must be a number in (0, {MAX_SPAN:g}], got {span!r}", "--span")
    if params is not None and directions is not None:
        raise _bad("give either --params or --directions, not both", "--params")
    if directions is not None:
        for d in directions:
            if d not in DIRECTIONS:
                raise _bad(f"unknown direction `{clip(d)}`: expected grad or random", "--directions")
        if directions[0] == directions[1] == "grad":
            raise _bad("grad,grad spans a line, not a plane: give grad,random or random,random", "--directions")
    cfg = load_resolved(exp / "config.yaml")
    report, reports = _run_report(exp, run_id)
    point = report.get("grid")
    if point is not None:  # a grid run: its point's config, trained alone (as a stack, bit for bit)
        from .config.grid import grid_points

        cfg = next(c for p, c in grid_points(cfg) if p == point)
    metrics = _metrics(exp, run_id)
    centre, reason = choose_centre(report, metrics, step)

    seed, mine = int(report["seed"]), int(report["variant_index"])
    dtype = cfg.train.dtype
    task = build_task(cfg.task, dtype, seed_streams(seed)["task"], tokens=MODEL_KINDS[cfg.model.kind].tokens)
    model = build_model(cfg.model, task, dtype, cfg.train.tbptt, compute=cfg.train.precision.compute)
    shapes = {k: tuple(v) for k, v in model.shapes.items()}
    names = list(shapes)
    if params is None and directions is None:
        sizes = [math.prod(s) for s in shapes.values()]
        if sum(sizes) == 2:  # two scalars (the scalar_rnn): the slice is the whole space
            params = tuple(names) if len(names) == 2 else (names[0] + "[0]", names[0] + "[1]")
        else:
            directions = ("grad", "random")
    entries = None
    if params is not None:
        entries = [resolve_entry(p, shapes) for p in params]
        if entries[0][:2] == entries[1][:2]:
            raise _bad(f"the two parameters are the same entry, {entries[0][2]}", "--params")

    P = sum(math.prod(s) for s in shapes.values())
    steps = int(report.get("steps_completed") or len(metrics["step"]))
    n_var = len(cfg.clipping)
    stride = max(1, math.ceil(n_var * (steps + 1) * P * 8 / TRAJECTORY_BYTES))
    rec = _Recorder(centre, stride, names)
    train_seed(cfg, seed, observe=rec)
    if rec.theta_c is None or mine not in rec.theta_c:
        raise _bad(f"the replay did not reach step {centre} of {run_id}", "--step")
    theta_c = rec.theta_c[mine]
    x, y = rec.batch
    c_flat = _flatten(theta_c, names)

    offsets, at = {}, 0
    for k in names:
        offsets[k] = at
        at += math.prod(shapes[k])
    if entries is not None:
        D = np.zeros((2, P))
        for r, (tensor, index, _) in enumerate(entries):
            D[r, offsets[tensor] + int(np.ravel_multi_index(index, shapes[tensor]))] = 1.0
        coords_c = np.array([c_flat[D[0] > 0][0], c_flat[D[1] > 0][0]])
        axes = (entries[0][2], entries[1][2])
    else:
        fan_in = model.fan_in_axes
        dirs = []
        rng = np.random.default_rng(random_seed)
        for kind in directions:
            if kind == "grad":
                with threadpool_limits(1, user_api="blas"), np.errstate(all="ignore"):
                    stacked = {k: v[None].astype(dtype) for k, v in theta_c.items()}
                    out, cache = model.forward(stacked, x)
                    _, dout = task.loss(out, y, z_loss=model.z_loss)
                    g = model.backward(stacked, cache, dout)
                d = {k: g[k][0].astype(np.float64) for k in names}
            else:
                d = {k: rng.standard_normal(shapes[k]) for k in names}
            filter_normalise(d, {k: theta_c[k].astype(np.float64) for k in names}, fan_in)
            dirs.append(_flatten(d, names))
        D = np.stack(dirs)
        if not np.all(np.isfinite(D)) or np.linalg.matrix_rank(D) < 2:
            raise _bad(f"the directions {','.join(directions)} at step {centre} do not span a plane (a zero or "
                       "non-finite gradient?)", "--directions")
        coords_c = np.zeros(2)
        axes = tuple(f"{d} (filter-normalised)" for d in directions)

    if box is not None:
        a_rng, b_rng = (box[0], box[1]), (box[2], box[3])
    else:
        a_rng = (coords_c[0] - span, coords_c[0] + span)
        b_rng = (coords_c[1] - span, coords_c[1] + span)
    alphas = np.linspace(*a_rng, resolution)
    betas = np.linspace(*b_rng, resolution)
    A, B = (g.reshape(-1, 1) for g in np.meshgrid(alphas - coords_c[0], betas - coords_c[1]))

    def grid(lo: int, hi: int) -> np.ndarray:
        return c_flat[None] + A[lo:hi] * D[0][None] + B[lo:hi] * D[1][None]

    t0, c0 = time.perf_counter(), time.process_time()
    with threadpool_limits(1, user_api="blas"):
        loss = _losses(model, task, (len(A), grid), shapes, dtype, x, y).reshape(resolution, resolution)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        replayed = float(_losses(model, task, c_flat[None], shapes, dtype, x, y)[0])

        # The trajectories: least-squares coordinates in the (d1, d2) plane, through theta_c.
        gram = D @ D.T
        paths, diverged = {}, {}
        order = [mine] + [v for v in sorted(rec.points) if v != mine]
        for v in order:
            if variants is not None and v != mine and variant_id(cfg.clipping[v]) not in variants:
                continue
            pts = rec.points[v]
            st = np.array([s for s, _ in pts])
            flat = np.stack([p for _, p in pts])
            ok = np.all(np.isfinite(flat), axis=1)
            st, flat = st[ok], flat[ok]
            coords = np.linalg.solve(gram, D @ (flat - c_flat[None]).T).T + coords_c[None]
            paths[variant_id(cfg.clipping[v])] = (st, coords, _losses(model, task, flat, shapes, dtype, x, y))
    for r in reports:
        if r["seed"] == seed and r.get("grid") == point:
            diverged[r["variant"]] = r.get("divergence_step")
    recorded = float(metrics["loss"][centre])
    return Landscape(
        run_id=run_id, step=centre, centre_reason=reason, mode="params" if entries is not None else "directions",
        axes=axes, alphas=alphas, betas=betas, loss=loss, centre=(float(coords_c[0]), float(coords_c[1])),
        paths=paths, diverged=diverged, recorded_loss=recorded, replayed_loss=replayed, stride=stride,
        seconds=seconds, cpu_seconds=cpu, description=f"{cfg.name}, seed {seed}")


def replay_matches(ls: Landscape) -> bool:
    """Whether the replay reproduced the recorded loss at the centre step (it does on the
    machine and kernel that trained the run; another BLAS kernel may differ in the last bits)."""
    a, b = ls.recorded_loss, ls.replayed_loss
    if a is None or b is None or not (math.isfinite(a) and math.isfinite(b)):
        return False
    return abs(a - b) <= 1e-5 * max(abs(a), abs(b), 1e-30)


def csv_rows(ls: Landscape) -> tuple[list[str], list[list]]:
    """landscape_<run>.csv (a grid run's `/` as `_`): the grid (series `grid`) and each variant's projected trajectory
    (series = its variant id, with its step), alpha and beta in the slice's coordinates."""
    header = ["series", "step", "alpha", "beta", "loss"]
    rows: list[list] = []
    for j, b in enumerate(ls.betas):
        for i, a in enumerate(ls.alphas):
            rows.append(["grid", "", float(a), float(b), float(ls.loss[j, i])])
    for v, (st, coords, losses) in ls.paths.items():
        for s, (a, b), l in zip(st, coords, losses):
            rows.append([v, int(s), float(a), float(b), float(l)])
    return header, rows


def write(exp: Path, ls: Landscape) -> tuple[Path, Path]:
    """plots/landscape_<run>.png and landscape_<run>.csv, each written atomically."""
    from .io import make_dir, write_csv
    from .plots.landscape import draw_landscape

    name = ls.run_id.replace("/", "_")  # a grid run's id `lr=0.1/norm-1-s0`
    csv_path = exp / f"landscape_{name}.csv"
    png = exp / "plots" / f"landscape_{name}.png"
    make_dir(png.parent)
    draw_landscape(ls, png)
    write_csv(csv_path, *csv_rows(ls))
    return png, csv_path
