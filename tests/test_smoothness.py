"""Local smoothness along the trajectory (train.measure_smoothness): the estimator on quadratics,
where it is exact; the step it measures along is the one taken (clipped, skipped); measuring
changes no training number, stacked or alone, with a skip rule and loss scaling; its records
(metrics.csv, report.json) and their damage check; the fits; its config errors and its plot."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradlab import io
from gradlab.config import ExperimentConfig, dump_yaml
from gradlab.models import build_model, stack
from gradlab.plots import figures
from gradlab.plots import smoothness as smoothness_plot
from gradlab.plots.load import load_experiment
from gradlab.smoothness import SmoothnessMeter, correlations, estimate, fit_affine, measured_pairs
from gradlab.store import check_run, write_run
from gradlab.tasks import build_task
from gradlab.train import seed_streams, train_seed

from conftest import cli

NONE, NORM = {"method": "none"}, {"method": "norm", "max_norm": 0.05}
SKIP = {"method": "skip", "sigma": 0.5, "window": 2}


def cfg_of(every=2, steps=7, clipping=(NONE, NORM), kind="mlp", precision=None, lr=0.05, momentum=0.9):
    model, task = {
        "mlp": (dict(kind="mlp", depth=3, width=12, activation="tanh"),
                dict(kind="teacher", input_dim=5, output_dim=1, batch_size=16)),
        "lstm": (dict(kind="lstm", depth=1, width=8), dict(kind="lm", seq_len=6, batch_size=4)),
        "transformer": (dict(kind="transformer", depth=1, width=8, heads=2),
                        dict(kind="copy", seq_len=7, copy_len=2, n_symbols=3, batch_size=4)),
    }[kind]
    train = dict(steps=steps, optimizer=dict(kind="sgd", lr=lr, momentum=momentum))
    if every is not None:
        train["measure_smoothness"] = {"every": every}
    if precision:
        train["precision"] = precision
    return ExperimentConfig.model_validate(dict(name="sm", model=model, task=task, clipping=list(clipping),
                                                train=train))


def column(r, name):
    at = r.columns.index(name)
    return [row[at] for row in r.metrics_rows]


# ----------------------------------------------------------------------------- the estimator

@settings(max_examples=80, deadline=None, derandomize=True, database=None)
@given(n=st.integers(1, 6), v=st.integers(1, 3), seed=st.integers(0, 2**32 - 1),
       scale=st.floats(1e-3, 1e3))
def test_on_a_quadratic_it_is_exactly_the_curvature_along_the_step(n, v, seed, scale):
    """f(x) = x^T A x / 2 has grad f = A x, so the estimate is ||A d|| / ||d||, d the step,
    whatever the point and the step's length; per variant, with the weights split in tensors."""
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(v, 2 * n, 2 * n))
    a = a + a.transpose(0, 2, 1)  # symmetric, as a Hessian

    def grad(p):
        x = np.concatenate([p["u"], p["w"].reshape(v, -1)], axis=1)
        g = np.einsum("vij,vj->vi", a, x)
        return {"u": g[:, :n], "w": g[:, n:].reshape(v, n, 1)}

    x0 = {"u": rng.normal(size=(v, n)), "w": rng.normal(size=(v, n, 1))}
    d = {"u": scale * rng.normal(size=(v, n)), "w": scale * rng.normal(size=(v, n, 1))}
    got = estimate(grad, x0, {k: x0[k] + d[k] for k in x0})
    flat = np.concatenate([d["u"], d["w"].reshape(v, -1)], axis=1)
    want = np.linalg.norm(np.einsum("vij,vj->vi", a, flat), axis=1) / np.linalg.norm(flat, axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_a_step_that_moved_nothing_or_a_nonfinite_one_has_no_estimate():
    def grad(p):
        return {"x": 3.0 * p["x"]}

    x0 = {"x": np.array([[1.0, 2.0], [1.0, 2.0], [1.0, 2.0]])}
    x1 = {"x": np.array([[1.0, 2.0], [0.0, 2.0], [np.inf, 2.0]])}
    got = estimate(grad, x0, x1)
    assert math.isnan(got[0]) and got[1] == pytest.approx(3.0) and math.isnan(got[2])


def test_the_gradient_at_the_first_point_is_kept_when_the_second_call_reuses_its_buffer():
    buf = {"x": np.zeros((1, 2))}

    def grad(p):  # as a model's backward into its workspace: one buffer, overwritten
        buf["x"][...] = 2.0 * p["x"]
        return buf

    got = estimate(grad, {"x": np.array([[1.0, 0.0]])}, {"x": np.array([[3.0, 0.0]])})
    assert got.tolist() == [2.0]


# ----------------------------------------------------------------------------- along the run

def test_the_measured_steps_and_the_step_measured_along_is_the_clipped_one():
    """Steps 0, N, 2N, ... and the last; at step 0 the estimate is along -lr x the clipped
    gradient for the clipped variant (plain SGD: that is the update), along -lr x g unclipped."""
    cfg = cfg_of(every=3, steps=8, momentum=0.0, lr=0.5)
    runs = train_seed(cfg, 0)
    for r in runs:
        s = column(r, "smoothness")
        assert [i for i, x in enumerate(s) if not math.isnan(x)] == [0, 3, 6, 7]
        assert r.summary["smoothness_measured"] == 4
        assert r.summary["max_smoothness"] == max(x for x in s if not math.isnan(x))
    rng = seed_streams(0)
    task = build_task(cfg.task, "float32", rng["task"])
    model = build_model(cfg.model, task, "float32")
    p0 = stack(model.init(rng["init"]), 1)
    x, y = task.batch(rng["data"])
    meter = SmoothnessMeter(model, task, 3, 8)
    g = meter.gradient(p0, x, y)
    g = {k: v.copy() for k, v in g.items()}
    norm = math.sqrt(sum(float((v.astype(np.float64) ** 2).sum()) for v in g.values()))
    assert norm > NORM["max_norm"]  # the clipped variant did clip at step 0
    for r, coef in zip(runs, (1.0, NORM["max_norm"] / norm)):
        x1 = {k: p0[k] - np.float32(0.5) * (np.float32(coef) * g[k]) for k in p0}
        want = meter.measure(p0, x1, x, y)[0]
        assert column(r, "smoothness")[0] == pytest.approx(want, rel=1e-4)
    assert column(runs[0], "smoothness")[0] != pytest.approx(column(runs[1], "smoothness")[0], rel=1e-3)


def test_a_skipped_step_is_not_measured():
    """A skipped step leaves the weights as they were: nothing to measure along (NaN), and
    the summary counts the steps that were. A static loss scale that overflows float16 on
    every step skips them all."""
    (r,) = train_seed(cfg_of(every=1, steps=6, clipping=(NONE,), precision=dict(
        compute="float16", loss_scale="static", init_scale=1e30)), 0)
    assert all(x == 1 for x in column(r, "skipped"))
    assert all(math.isnan(x) for x in column(r, "smoothness"))
    assert r.summary["smoothness_measured"] == 0 and r.summary["max_smoothness"] is None


@pytest.mark.parametrize("kind,clipping,precision", [
    ("mlp", (NONE, NORM, SKIP), None),
    ("lstm", (NONE, NORM), None),
    ("transformer", (NONE, NORM), None),
    ("mlp", (NONE, NORM, SKIP), dict(compute="float16", loss_scale="dynamic", init_scale=2.0 ** 20,
                                     growth_interval=2)),
])
def test_measuring_changes_no_training_number(kind, clipping, precision):
    """A measured run equals an unmeasured one in every shared column, its layer norms and
    its outcome: with a skip rule, and with loss scaling in float16 (skipped steps, the scale
    backing off)."""
    measured = train_seed(cfg_of(every=2, steps=7, clipping=clipping, kind=kind, precision=precision), 0)
    plain = train_seed(cfg_of(every=None, steps=7, clipping=clipping, kind=kind, precision=precision), 0)
    for a, b in zip(measured, plain):
        assert [c for c in a.columns if c != "smoothness"] == list(b.columns)
        keep = [i for i, c in enumerate(a.columns) if c != "smoothness"]
        assert [[row[i] for i in keep] for row in a.metrics_rows] == b.metrics_rows
        np.testing.assert_array_equal(a.layer_rows, b.layer_rows)
        assert a.flow_rows == b.flow_rows and a.first_nonfinite == b.first_nonfinite
        assert {k: v for k, v in a.summary.items() if "smoothness" not in k} == b.summary
        assert "smoothness" not in " ".join(b.summary)
        assert any(not math.isnan(x) for x in column(a, "smoothness"))


@pytest.mark.parametrize("kind,precision", [("mlp", None), ("lstm", None),
                                            ("mlp", dict(compute="float16", loss_scale="static", init_scale=256.0))])
def test_a_stack_measures_what_single_runs_measure(kind, precision):
    cfg = cfg_of(every=2, steps=5, clipping=(NONE, NORM, SKIP), kind=kind, precision=precision)
    stacked = train_seed(cfg, 1)
    for i, r in enumerate(stacked):
        (alone,) = train_seed(cfg, 1, clips=[cfg.clipping[i]], indices=[i])
        assert alone.metrics_rows == r.metrics_rows
        assert alone.summary == r.summary


def test_a_diverging_variant_is_measured_until_it_diverges():
    """The unclipped variant at a huge lr: its last rows' smoothness is NaN or finite, never
    inf, and the clipped one goes on being measured."""
    cfg = cfg_of(every=1, steps=12, lr=50.0, momentum=0.0, clipping=(NONE, {"method": "norm", "max_norm": 0.01}))
    none, clipped = train_seed(cfg, 0)
    assert none.first_nonfinite is not None and clipped.first_nonfinite is None
    assert all(math.isnan(x) or (math.isfinite(x) and x >= 0) for x in column(none, "smoothness"))
    assert clipped.summary["smoothness_measured"] == 12


# ----------------------------------------------------------------------------- the fits

def test_an_exact_line_gives_back_its_constants_and_perfect_correlations():
    g = np.array([0.1, 0.5, 1.0, 4.0, 20.0])
    l0, l1 = fit_affine(g, 0.3 + 2.5 * g)
    assert l0 == pytest.approx(0.3) and l1 == pytest.approx(2.5)
    c = correlations(g, 0.3 + 2.5 * g)
    assert c["spearman"] == pytest.approx(1.0) and c["pearson_log"] > 0.99 and c["n"] == 5
    assert correlations(g, 1 / g)["spearman"] == pytest.approx(-1.0)
    assert all(math.isnan(x) for x in fit_affine([1.0, 1.0], [2.0, 3.0]))
    assert math.isnan(correlations([1.0, 2.0], [1.0, 2.0])["spearman"])


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(st.lists(st.tuples(st.integers(1, 6), st.floats(0.01, 100)), min_size=3, max_size=30))
def test_correlations_agree_with_scipy_ties_and_nonpositive_values_included(pairs):
    stats = pytest.importorskip("scipy.stats")
    g = np.array([float(a) for a, _ in pairs])  # few distinct values: ties
    s = np.array([b for _, b in pairs])
    c = correlations(g, s)
    if np.ptp(g) == 0 or np.ptp(s) == 0:
        assert math.isnan(c["spearman"])
        return
    assert c["spearman"] == pytest.approx(stats.spearmanr(g, s).statistic, abs=1e-9)
    assert c["pearson_log"] == pytest.approx(stats.pearsonr(np.log(g), np.log(s)).statistic, abs=1e-9)
    assert correlations(np.append(g, [0.0, np.nan]), np.append(s, [1.0, 1.0]))["n"] == len(g)


def test_measured_pairs_are_the_healthy_measured_steps():
    columns = ["step", "loss", "grad_norm", "nonfinite", "smoothness"]
    rows = [[0, 1.0, 2.0, 0, 0.5], [1, 1.0, 3.0, 0, math.nan], [2, 1.0, 4.0, 1, 0.7], [3, 1.0, 5.0, 0, 0.9]]
    assert measured_pairs(columns, rows) == ([0, 3], [2.0, 5.0], [0.5, 0.9])


# ----------------------------------------------------------------------------- the run store

def test_runs_are_complete_and_their_damage_is_named(tmp_path):
    runs = train_seed(cfg_of(every=2, steps=6), 0)
    for r in runs:
        write_run(tmp_path, r, "cafe0123")
    rid = runs[0].run_id
    d = tmp_path / "runs" / rid
    assert check_run(tmp_path, rid) == ("complete", "")
    rep = io.read_json(d / "report.json")
    assert rep["smoothness_measured"] == 4 and rep["median_smoothness"] > 0
    text = (d / "metrics.csv").read_text()
    header = text.split("\n")[0].split(",")
    at = header.index("smoothness")
    lines = text.split("\n")
    row = lines[1].split(",")
    for bad, why in (("-1.0", "step 0: smoothness -1.0 is not a finite number >= 0"),
                     ("inf", "step 0: smoothness inf is not a finite number >= 0")):
        lines[1] = ",".join(row[:at] + [bad] + row[at + 1:])
        (d / "metrics.csv").write_text("\n".join(lines))
        state, got = check_run(tmp_path, rid)
        # The outcome check may see the edit first (the median moved): damage either way.
        assert state == "damaged" and (got == f"metrics.csv: {why}" or "smoothness" in got), got
    (d / "metrics.csv").write_text(text)
    assert check_run(tmp_path, rid) == ("complete", "")
    io.write_json(d / "report.json", {**rep, "max_smoothness": rep["max_smoothness"] * 2})
    state, why = check_run(tmp_path, rid)
    assert state == "damaged" and "`max_smoothness`" in why


def test_the_value_check_names_the_step():
    """The value check alone (in a whole run the outcome check may see an edit first)."""
    from gradlab.store import _smoothness_problem

    cols = ["step", "grad_norm", "smoothness"]
    assert _smoothness_problem(cols, [[0, 1.0, math.nan], [1, 1.0, 0.5]]) == ""
    assert _smoothness_problem(cols, [[0, 1.0, -0.5]]) == "step 0: smoothness -0.5 is not a finite number >= 0 (a ratio of two norms)"
    assert _smoothness_problem(cols, [[0, math.inf, 0.5]]) == "step 0: smoothness measured where the gradient norm is inf"
    assert _smoothness_problem(["step", "grad_norm"], [[0, 1.0]]) == ""


# ----------------------------------------------------------------------------- the config

def test_the_key_is_left_out_of_the_resolved_config_when_unset():
    assert "measure_smoothness" not in dump_yaml(cfg_of(every=None))
    assert "measure_smoothness:\n    every: 3" in dump_yaml(cfg_of(every=3))


@pytest.mark.parametrize("override,message", [
    ("train.measure_smoothness.every=0", "must be >= 1, got 0"),
    ("train.measure_smoothness.every=often", "must be an integer"),
    ("train.measure_smoothness=3", "train.measure_smoothness"),
    ("train.measure_smoothness={often: 3}", "often"),
])
def test_config_errors_are_one_line(tmp_path, capsys, override, message):
    path = tmp_path / "c.yaml"
    path.write_text(dump_yaml(cfg_of(every=2)))
    assert cli("run", path, "--set", override, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "train.measure_smoothness" in err and message in err, err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- the plot

def test_the_plot_is_drawn_when_measured_and_only_then(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(dump_yaml(cfg_of(every=1, steps=8)))
    assert cli("run", path, "--out", tmp_path / "out", "--quiet", "--workers", "1", "--no-plots") == 0
    (exp,) = (tmp_path / "out").iterdir()
    loaded = load_experiment(exp)
    assert "smoothness.png" in [f.name for f in figures.plan(loaded).figures]
    png = smoothness_plot.draw_smoothness(loaded, exp / "plots" / "smoothness.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    path.write_text(dump_yaml(cfg_of(every=None, steps=3)))
    assert cli("run", path, "--out", tmp_path / "plain", "--quiet", "--workers", "1", "--no-plots") == 0
    (exp,) = (tmp_path / "plain").iterdir()
    assert "smoothness.png" not in [f.name for f in figures.plan(load_experiment(exp)).figures]
