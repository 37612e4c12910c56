"""What underflow costs (train.precision.measure_underflow): the fraction of gradient entries
non-zero in float32 that the compute dtype has as zero or subnormal, counted on hand-made
gradients and on a run's step against an independent float32 replay; its records (metrics.csv,
underflow.csv, report.json) and their damage check; that measuring changes no training number;
its config errors, plot and finding."""

import math

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradlab import io
from gradlab.config import ExperimentConfig, dump_yaml
from gradlab.kinds import MODEL_KINDS
from gradlab.models import build_model, stack
from gradlab.plots import figures, scale
from gradlab.plots.load import load_experiment
from gradlab.models.workspace import Workspace
from gradlab.precision import UnderflowMeter, fraction, lost_entries, smallest_normal
from gradlab.report import underflow_finding, write_report
from gradlab.store import check_run, write_run
from gradlab.tasks import build_task
from gradlab.train import seed_streams, train_seed

from conftest import cli

LOW = {"float16": np.float16, "bfloat16": ml_dtypes.bfloat16}
NONE, NORM = {"method": "none"}, {"method": "norm", "max_norm": 0.5}


def cfg_of(compute="float16", every=3, steps=7, clipping=(NONE, NORM), kind="mlp", **precision):
    model, task = {
        "mlp": (dict(kind="mlp", depth=4, width=16, activation="tanh", init=dict(gain=0.5)),
                dict(kind="teacher", input_dim=6, output_dim=1, batch_size=16)),
        "gru": (dict(kind="gru", depth=1, width=6), dict(kind="adding", seq_len=6, batch_size=8)),
        "transformer": (dict(kind="transformer", depth=2, width=8, heads=2),
                        dict(kind="copy", seq_len=7, copy_len=2, n_symbols=3, batch_size=4)),
    }[kind]
    p = dict(compute=compute, **precision)
    if every is not None:
        p["measure_underflow"] = every
    return ExperimentConfig.model_validate(dict(
        name="uf", model=model, task=task, clipping=list(clipping),
        train=dict(steps=steps, optimizer=dict(kind="sgd", lr=0.05, momentum=0.9), precision=p)))


# ----------------------------------------------------------------------------- the count

def test_smallest_normals():
    assert smallest_normal("float16") == 2.0 ** -14
    assert smallest_normal("bfloat16") == 2.0 ** -126


@pytest.mark.parametrize("compute", LOW)
def test_lost_entries_on_hand_made_gradients(compute):
    """Per variant: zeros of float32 are not counted, nor its NaN or inf; an entry the
    compute dtype has as 0 or subnormal is lost, its smallest normal is kept, and an inf or NaN
    there (an overflow) is no underflow."""
    tiny = float(ml_dtypes.finfo(LOW[compute]).tiny)
    sub = float(ml_dtypes.finfo(LOW[compute]).smallest_subnormal)
    ref = np.array([[1.0, 1e-3, 0.0, np.nan, np.inf, 0.5, -0.25, 2.0],
                    [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]], dtype=np.float32)
    got = np.array([[1.0, 0.0, 0.0, 0.0, 0.0, -sub, tiny, np.inf],
                    [tiny, -tiny, sub, 0.0, -0.0, np.nan, 1.0, tiny / 2]], dtype=np.float32)
    lost, counted = lost_entries(got, ref, tiny)
    assert counted.tolist() == [5, 8]
    assert lost.tolist() == [2, 4]  # 1e-3 -> 0 and 0.5 -> -subnormal; the second: sub, 0, -0, tiny/2
    assert fraction(lost, counted).tolist() == [2 / 5, 4 / 8]


def test_a_tensor_without_a_nonzero_float32_entry_has_no_fraction():
    f = fraction(np.array([0, 0, 3]), np.array([0, 4, 4]))
    assert math.isnan(f[0]) and f[1:].tolist() == [0.0, 0.75]


@pytest.mark.parametrize("compute", LOW)
@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(exponents=st.lists(st.integers(-140, 10), min_size=1, max_size=40), seed=st.integers(0, 2**16))
def test_lost_entries_equal_the_real_casts_count(compute, exponents, seed):
    """float32 gradients rounded by the real cast: lost exactly where the cast is below the
    dtype's smallest normal (np.finfo's for float16), non-zero float32 entries counted."""
    rng = np.random.default_rng(seed)
    ref = (rng.uniform(1, 2, len(exponents)) * 2.0 ** np.array(exponents)
           * rng.choice([-1, 1], len(exponents))).astype(np.float32)[None]
    cast = ref.astype(LOW[compute])
    tiny = np.finfo(np.float16).tiny if compute == "float16" else np.finfo(np.float32).tiny
    expect = int(np.sum((ref != 0) & (np.abs(cast.astype(np.float64)) < tiny)))
    lost, counted = lost_entries(cast.astype(np.float32), ref, smallest_normal(compute))
    assert (lost.tolist(), counted.tolist()) == ([expect], [int(np.sum(ref != 0))])


# ----------------------------------------------------------------------------- a run's records

def _independent_step0(cfg, seed, scale=None):
    """Step 0 of a run done by hand: its batch and weights, the compute dtype's gradients
    (scaled by `scale` when loss scaling is on) and float32's backward of the same forward pass
    and dL/dout, counted with the real cast's definition of subnormal (np.finfo)."""
    rng = seed_streams(seed)
    task = build_task(cfg.task, "float32", rng["task"], tokens=MODEL_KINDS[cfg.model.kind].tokens)
    low = build_model(cfg.model, task, "float32", compute=cfg.train.precision.compute)
    f32 = build_model(cfg.model, task, "float32")
    params = stack(low.init(rng["init"]), 1)
    x, y = task.batch(rng["data"])
    out, cache = low.forward(params, x)
    _, dout = task.loss(out, y)
    grads = low.backward(params, cache, dout * np.float32(scale) if scale else dout)
    ref = f32.backward(params, low.forward(params, x)[1], dout)  # float32's backward of the same forward
    tiny = np.finfo(np.float16).tiny if cfg.train.precision.compute == "float16" else np.finfo(np.float32).tiny
    per, lost_all, nz_all = {}, 0, 0
    for name in low.param_names:
        nz = ref[name] != 0
        lost = int(np.sum(nz & (np.abs(grads[name]) < tiny)))
        per[name] = lost / nz.sum() if nz.sum() else math.nan
        lost_all, nz_all = lost_all + lost, nz_all + int(nz.sum())
    return lost_all / nz_all, per


@pytest.mark.parametrize("compute,precision", [("float16", {}), ("bfloat16", {}),
                                               ("float16", dict(loss_scale="static", init_scale=1024.0))])
def test_a_runs_step_0_against_an_independent_replay(compute, precision):
    """The column and underflow.csv at step 0 (weights as initialised) equal the count by hand;
    with loss scaling the scaled gradient is the one counted (it loses fewer entries)."""
    cfg = cfg_of(compute, clipping=(NONE,), **precision)
    (r,) = train_seed(cfg, 0)
    overall, per = _independent_step0(cfg, 0, precision.get("init_scale"))
    at = r.columns.index("underflow")
    assert r.metrics_rows[0][at] == pytest.approx(overall, rel=1e-12)
    assert r.underflow_rows[0][1:] == pytest.approx([per[n] for n in r.param_names], rel=1e-12, nan_ok=True)
    if compute == "float16" and not precision:
        assert overall > 0  # the case is one where float16 loses entries
    if precision:
        unscaled, _ = _independent_step0(cfg, 0)
        assert overall < unscaled


def test_measured_steps_are_every_nth_and_the_last_and_only_those():
    (r, _) = train_seed(cfg_of(every=3, steps=8), 0)
    at = r.columns.index("underflow")
    measured = [row[0] for row in r.metrics_rows if not math.isnan(row[at])]
    assert measured == [0, 3, 6, 7]
    assert [row[0] for row in r.underflow_rows if not all(math.isnan(v) for v in row[1:])] == measured
    assert r.columns[at - 1] == "lr" and len(r.underflow_rows) == 8
    finals = [row[at] for row in r.metrics_rows if not math.isnan(row[at])]
    assert r.summary["final_underflow"] == finals[-1] and r.summary["max_underflow"] == max(finals)


@pytest.mark.parametrize("kind,precision", [
    ("mlp", {}), ("mlp", dict(loss_scale="dynamic", init_scale=2.0 ** 20, growth_interval=2)),
    ("gru", {}), ("transformer", dict(loss_scale="static", init_scale=256.0))])
def test_measuring_changes_no_training_number(kind, precision):
    """A run with measure_underflow equals one without in every shared column, its layer norms
    and its outcome; the scaled path too (with skipped steps, the scale backing off)."""
    cfg = dict(compute="float16", steps=9, clipping=(NONE, NORM), kind=kind, **precision)
    measured, plain = train_seed(cfg_of(every=2, **cfg), 0), train_seed(cfg_of(every=None, **cfg), 0)
    for a, b in zip(measured, plain):
        assert [c for c in a.columns if c != "underflow"] == list(b.columns)
        keep = [i for i, c in enumerate(a.columns) if c != "underflow"]
        assert [[row[i] for i in keep] for row in a.metrics_rows] == b.metrics_rows
        np.testing.assert_array_equal(a.layer_rows, b.layer_rows)  # exact, NaN where NaN
        assert a.first_nonfinite == b.first_nonfinite
        assert {k: v for k, v in a.summary.items() if "underflow" not in k} == b.summary
        assert b.underflow_rows == [] and "underflow" not in " ".join(b.summary)


@pytest.mark.parametrize("kind", ["mlp", "gru"])
def test_a_stack_measures_what_single_runs_measure(kind):
    cfg = cfg_of(every=2, steps=5, kind=kind)
    stacked = train_seed(cfg, 1)
    for i, r in enumerate(stacked):
        (alone,) = train_seed(cfg, 1, clips=[cfg.clipping[i]], indices=[i])
        assert alone.metrics_rows == r.metrics_rows
        np.testing.assert_array_equal(alone.underflow_rows, r.underflow_rows)
        assert alone.summary == r.summary


# ----------------------------------------------------------------------------- the run store

@pytest.fixture(scope="module")
def runs():
    return train_seed(cfg_of(every=2, steps=6), 0)


def test_runs_are_complete_and_their_damage_is_named(tmp_path, runs):
    for r in runs:
        write_run(tmp_path, r, "cafe0123")
    rid = runs[0].run_id
    d = tmp_path / "runs" / rid
    assert check_run(tmp_path, rid) == ("complete", "")
    text = (d / "underflow.csv").read_text()
    rep = io.read_json(d / "report.json")
    assert rep["underflow_tensor"] in runs[0].param_names and rep["final_underflow"] > 0

    (d / "underflow.csv").write_text(text.rsplit("\n", 2)[0] + "\n")
    assert check_run(tmp_path, rid) == ("damaged", "underflow.csv: 5 rows where report.json says 6")
    (d / "underflow.csv").write_text(text.replace("layer0.W", "layer9.W"))
    assert check_run(tmp_path, rid)[1].startswith("underflow.csv: its first line is not the header")
    # Every tensor's fraction at step 0 edited to 1: metrics.csv's overall one, a mean of theirs
    # weighted by their counts, would be 1 too.
    lines = text.split("\n")
    lines[1] = ",".join(["0"] + ["1.0"] * len(runs[0].param_names))
    (d / "underflow.csv").write_text("\n".join(lines))
    state, why = check_run(tmp_path, rid)
    assert state == "damaged" and why.startswith("underflow.csv: step 0: metrics.csv's underflow")
    (d / "underflow.csv").unlink()
    assert check_run(tmp_path, rid) == ("damaged", "underflow.csv: missing")
    (d / "underflow.csv").write_text(text)
    assert check_run(tmp_path, rid) == ("complete", "")

    io.write_json(d / "report.json", {**rep, "underflow_tensor": "layer3.b" if rep["underflow_tensor"] != "layer3.b"
                                      else "layer0.W"})
    state, why = check_run(tmp_path, rid)
    assert state == "damaged" and "`underflow_tensor`" in why
    io.write_json(d / "report.json", {**rep, "final_underflow": 0.5})
    state, why = check_run(tmp_path, rid)
    assert state == "damaged" and "`final_underflow`" in why


# ----------------------------------------------------------------------------- the config

def test_the_key_is_left_out_of_the_resolved_config_when_unset():
    """Configs without it keep their hash; set, it is written."""
    assert "measure_underflow" not in dump_yaml(cfg_of(every=None))
    assert "measure_underflow: 3" in dump_yaml(cfg_of(every=3))


@pytest.mark.parametrize("override,message", [
    ("train.precision.measure_underflow=0", "must be >= 1, got 0"),
    ("train.precision.measure_underflow=often", "must be an integer"),
])
def test_config_errors_are_one_line(tmp_path, capsys, override, message):
    path = tmp_path / "c.yaml"
    path.write_text(dump_yaml(cfg_of("float32", every=None)))
    assert cli("run", path, "--set", override, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "train.precision.measure_underflow" in err and message in err
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- plot and finding

def test_the_plot_is_drawn_and_the_report_has_a_finding(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(dump_yaml(cfg_of(every=2, steps=6)))
    assert cli("run", path, "--out", tmp_path / "out", "--quiet", "--workers", "1", "--no-plots") == 0
    (exp,) = (tmp_path / "out").iterdir()
    loaded = load_experiment(exp)
    assert "underflow.png" in [f.name for f in figures.plan(loaded).figures]
    png = scale.draw_underflow(loaded, exp / "plots" / "underflow.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    text = write_report(exp).read_text()
    assert "Gradient underflow in float16 (no loss scaling): at the last measured step `none` lost " in text
    assert "![underflow](plots/underflow.png)" in text


def test_an_experiment_that_does_not_measure_has_no_plot(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(dump_yaml(cfg_of(every=None, steps=3)))
    assert cli("run", path, "--out", tmp_path / "out", "--quiet", "--workers", "1", "--no-plots") == 0
    (exp,) = (tmp_path / "out").iterdir()
    names = [f.name for f in figures.plan(load_experiment(exp)).figures]
    assert "loss.png" in names and "underflow.png" not in names
    assert "underflow" not in (exp / "report.md").read_text()


def test_the_finding_names_the_worst_tensor_and_a_loss_free_variant():
    reports = [
        dict(variant="none", final_underflow=0.38, max_underflow=0.5, underflow_tensor="layer0.W",
             underflow_tensor_fraction=0.72),
        dict(variant="none", final_underflow=0.36, max_underflow=0.36, underflow_tensor="layer0.W",
             underflow_tensor_fraction=0.70),
        dict(variant="norm-1", final_underflow=0.0, max_underflow=0.0, underflow_tensor=None,
             underflow_tensor_fraction=0.0),
    ]
    assert underflow_finding(reports, dict(compute="float16")) == (
        "Gradient underflow in float16 (no loss scaling): at the last measured step `none` lost 36-38% of the "
        "gradient entries that were non-zero in float32 (zero or subnormal in float16; the most in layer0.W, "
        "70-72% of theirs), up to 50% at an earlier measured step; `norm-1` lost 0%.")
    assert underflow_finding([dict(variant="none", final_underflow=None)], {}) == ""


@pytest.mark.parametrize("kind", ["mlp", "rnn", "lstm", "gru", "transformer"])
def test_the_reference_reads_the_cache_the_steps_backward_leaves_as_a_fresh_one(kind):
    """The float32 replay runs on the step's forward cache after the step's backward has used
    it (in the training workspace): no model's backward may have changed what it reads."""

    cfg = cfg_of(kind=kind if kind in ("mlp", "transformer") else "gru")
    if kind in ("rnn", "lstm"):
        cfg = ExperimentConfig.model_validate({**cfg.model_dump(), "model": dict(kind=kind, depth=1, width=6)})
    rng = seed_streams(0)
    task = build_task(cfg.task, "float32", rng["task"], tokens=MODEL_KINDS[cfg.model.kind].tokens)
    low = build_model(cfg.model, task, "float32", compute="float16")
    meter = UnderflowMeter(build_model(cfg.model, task, "float32"), "float16", 1, 1)
    params = stack(low.init(rng["init"]), 2)
    x, y = task.batch(rng["data"])
    ws = Workspace()
    with np.errstate(all="ignore"):
        out, cache = low.forward(params, x, ws=ws)
        _, dout = task.loss(out, y)
        low.backward(params, cache, dout, dh_norms={} if kind in ("rnn", "lstm", "gru") else None, ws=ws)
        spent = meter.reference.backward(params, cache, dout.copy())
        fresh = meter.reference.backward(params, low.forward(params, x)[1], dout.copy())
    for name in low.param_names:
        np.testing.assert_array_equal(spent[name], fresh[name])


def test_float32_compute_accepts_the_key_and_measures_nothing():
    """float32 is the reference: with it the key is a no-op, so that one config serves a
    comparison (or a grid) over the compute dtype."""
    for r, plain in zip(train_seed(cfg_of("float32", every=2), 0), train_seed(cfg_of("float32", every=None), 0)):
        assert "underflow" not in r.columns and not r.underflow_rows
        assert r.metrics_rows == plain.metrics_rows
