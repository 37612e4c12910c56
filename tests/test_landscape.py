"""`gradlab landscape`: the loss over a 2-D slice, centred on a run's step, with its seed's
trajectories projected on it.

On the scalar_rnn (two parameters: the slice is the whole space) every number can be checked
against the paper's error written out; on the shortened quickstart (a 16-layer MLP whose
baseline diverges at step 7) the default centre, the filter-normalised directions and the
jump off the cliff.
"""

import csv
import math
from pathlib import Path

import numpy as np
import pytest

from conftest import cli
from gradlab import landscape as L
from gradlab.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"

SCALAR = """
name: cliff
model: {kind: scalar_rnn, w: 6.0, b: -2.5}
task: {kind: scalar_target}
train: {steps: 40, dtype: float64, optimizer: {kind: sgd, lr: 3.0}}
clipping: [{method: none}, {method: norm, max_norm: 0.1}]
"""


def _error(w, b, T=50):
    x = 0.5
    for _ in range(T):
        x = w / (1 + math.exp(-x)) + b
    return (1 / (1 + math.exp(-x)) - 0.7) ** 2


@pytest.fixture(scope="module")
def scalar(tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    cfg = out / "cliff.yaml"
    cfg.write_text(SCALAR)
    assert cli("run", cfg, "--out", out, "--quiet", "--no-plots") == 0
    (exp,) = [d for d in out.iterdir() if d.is_dir()]
    return exp


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    assert cli("run", QUICKSTART, "--set", "train.steps=10", "--seeds", "0", "--out", out, "--quiet",
               "--no-plots") == 0
    (exp,) = [d for d in out.iterdir() if d.is_dir()]
    return exp


def _metrics(exp, rid):
    with open(exp / "runs" / rid / "metrics.csv") as fh:
        return list(csv.DictReader(fh))


def test_the_scalar_slice_is_the_papers_error_and_the_trajectories_are_the_runs(scalar):
    ls = L.compute(scalar, "none-s0", box=(2.0, 10.0, -6.0, 0.0), resolution=9)
    assert ls.mode == "params" and ls.axes == ("rnn.w[0]", "rnn.b[0]")
    for j in (0, 4, 8):
        for i in (0, 3, 8):
            assert ls.loss[j, i] == pytest.approx(_error(ls.alphas[i], ls.betas[j]), rel=1e-10, abs=1e-14)
    # The centre: the unclipped run's largest gradient norm, where it jumps off the wall.
    rows = _metrics(scalar, "none-s0")
    norms = [float(r["grad_norm"]) for r in rows]
    assert ls.step == int(np.argmax(norms)) and "largest gradient norm" in ls.centre_reason
    assert L.replay_matches(ls)
    # Trajectories in parameter units: they start at the configured (w, b), every step.
    none_steps, none_xy, none_loss = ls.paths["none"]
    clip_steps, clip_xy, _ = ls.paths["norm-0.1"]
    assert list(ls.paths) == ["none", "norm-0.1"]
    assert tuple(none_xy[0]) == (6.0, -2.5) and list(none_steps) == list(range(41))
    assert none_loss[0] == pytest.approx(float(rows[0]["loss"]), rel=1e-12)
    # The unclipped step at the centre leaves the wall by lr x its gradient norm; no clipped
    # step is longer than lr x max_norm.
    jumps = np.hypot(*np.diff(none_xy, axis=0).T)
    assert jumps[ls.step] == pytest.approx(3.0 * norms[ls.step], rel=1e-9) and jumps[ls.step] > 10
    assert np.hypot(*np.diff(clip_xy, axis=0).T).max() <= 3.0 * 0.1 * (1 + 1e-9)


def test_the_command_writes_the_png_and_csv(scalar):
    assert cli("landscape", scalar, "--run", "norm-0.1-s0", "--params", "w,b", "--box", "2,10,-6,0",
               "--resolution", "7") == 0
    png, data = scalar / "plots" / "landscape_norm-0.1-s0.png", scalar / "landscape_norm-0.1-s0.csv"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = list(csv.DictReader(open(data)))
    grid = [r for r in rows if r["series"] == "grid"]
    assert len(grid) == 49 and {r["series"] for r in rows} == {"grid", "none", "norm-0.1"}
    r = grid[10]
    assert float(r["loss"]) == pytest.approx(_error(float(r["alpha"]), float(r["beta"])), rel=1e-10, abs=1e-14)


@pytest.mark.parametrize("args,key", [
    (["--run", "nope-s0"], "--run"),
    (["--run", "none-s0", "--step", "41"], "--step"),
    (["--run", "none-s0", "--params", "w,c"], "--params"),
    (["--run", "none-s0", "--params", "w"], "--params"),
    (["--run", "none-s0", "--params", "w,w"], "--params"),
    (["--run", "none-s0", "--directions", "grad,sideways"], "--directions"),
    (["--run", "none-s0", "--directions", "grad,grad"], "--directions"),
    (["--run", "none-s0", "--resolution", "2"], "--resolution"),
    (["--run", "none-s0", "--resolution", "1000"], "--resolution"),
    (["--run", "none-s0", "--span", "0"], "--span"),
    (["--run", "none-s0", "--span", "nan"], "--span"),
    (["--run", "none-s0", "--box", "1,0,2,3"], "--box"),
    (["--run", "none-s0", "--box", "1,2,3"], "--box"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(scalar, capsys, args, key):
    before = sorted(p.name for p in scalar.rglob("landscape_*"))
    assert cli("landscape", scalar, *args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and key in err, err
    assert sorted(p.name for p in scalar.rglob("landscape_*")) == before


def test_a_diverged_run_centres_on_its_last_healthy_step_and_refuses_a_diverged_one(mlp):
    rows = _metrics(mlp, "none-s0")
    div = next(int(r["step"]) for r in rows if r["nonfinite"] not in ("0", "0.0"))
    ls = L.compute(mlp, "none-s0", resolution=5, span=0.5)
    assert ls.step == div - 1 and "divergence" in ls.centre_reason
    assert ls.mode == "directions" and ls.axes[0].startswith("grad") and ls.axes[1].startswith("random")
    assert ls.loss[2, 2] == pytest.approx(ls.replayed_loss, rel=1e-6)  # the grid's centre is theta_c
    # The unclipped step off the cliff lands far outside the slice; every clipped one near it.
    _, xy, _ = ls.paths["none"]
    assert np.abs(xy[-1]).max() > 10
    for v in ("norm-1", "norm-10"):
        st, cxy, _ = ls.paths[v]
        assert np.abs(cxy[list(st).index(div)]).max() < 1
    with pytest.raises(UserError, match="divergence"):
        L.compute(mlp, "none-s0", step=div, resolution=3)


def test_filter_normalisation_gives_each_filter_its_weights_norm():
    rng = np.random.default_rng(0)
    theta = {"W": rng.standard_normal((4, 3)), "b": rng.standard_normal(3), "z": np.zeros(3)}
    d = {k: rng.standard_normal(v.shape) for k, v in theta.items()}
    L.filter_normalise(d, theta, {"W": 0, "b": None, "z": None})
    # W is (in, out): a filter is one output unit's column, along the fan-in axis 0.
    assert np.allclose(np.linalg.norm(d["W"], axis=0), np.linalg.norm(theta["W"], axis=0))
    assert np.linalg.norm(d["b"]) == pytest.approx(np.linalg.norm(theta["b"]))
    assert not d["z"].any()


def test_entries_are_named_by_tensor_or_last_part_with_an_index():
    shapes = {"layer0.W": (4, 3), "layer0.b": (3,), "rnn.w": (1,)}
    assert L.resolve_entry("layer0.W[3,2]", shapes)[:2] == ("layer0.W", (3, 2))
    assert L.resolve_entry("w", shapes)[:2] == ("rnn.w", (0,))
    with pytest.raises(UserError, match=r"shape \(4, 3\): name one entry, e.g. layer0.W\[0,0\]"):
        L.resolve_entry("layer0.W", shapes)
    with pytest.raises(UserError, match=r"shape \(100,\): name one entry, e.g. big\[0\]"):
        L.resolve_entry("big", {"big": (100,)})
    with pytest.raises(UserError, match="outside"):
        L.resolve_entry("layer0.b[3]", shapes)
    assert L.parse_pair("layer0.W[3,2],layer0.b[1]", "--params") == ("layer0.W[3,2]", "layer0.b[1]")


def test_a_grid_run_is_replayed_from_its_points_config(tmp_path):
    cfg = tmp_path / "cliff.yaml"
    cfg.write_text(SCALAR)
    assert cli("run", cfg, "--set", "train.steps=20", "--grid", "train.optimizer.lr=1,3", "--out", tmp_path,
               "--quiet", "--no-plots") == 0
    (exp,) = [d for d in tmp_path.iterdir() if d.is_dir()]
    ls = L.compute(exp, "lr=3/none-s0", resolution=5)
    assert L.replay_matches(ls) and set(ls.paths) == {"none", "norm-0.1"}
    rows = _metrics(exp, "lr=3/none-s0")
    assert ls.step == int(np.argmax([float(r["grad_norm"]) for r in rows]))
    assert cli("landscape", exp, "--run", "lr=1/norm-0.1-s0", "--resolution", "5") == 0
    assert (exp / "plots" / "landscape_lr=1_norm-0.1-s0.png").is_file()
    assert (exp / "landscape_lr=1_norm-0.1-s0.csv").is_file()
