"""The transformer's diagnostics (attention logits and entropy, the output's log Z): how they
are recorded (metrics.csv, attention.csv), summarised (report.json), checked by the run store,
and where a divergence inside a transformer is located."""

import json
import math

import numpy as np
import pytest

from gradlab import io
from gradlab.config import ExperimentConfig
from gradlab.divergence import Locator, locate_step
from gradlab.models import build_model, stack
from gradlab.records import DIAGNOSTIC_COLUMNS, summarize
from gradlab.store import check_run, write_run
from gradlab.tasks import build_task
from gradlab.train import train_seed

NONE, NORM = {"method": "none"}, {"method": "norm", "max_norm": 1.0}


def tf_cfg(steps=8, lr=0.003, depth=2, **model):
    return ExperimentConfig.model_validate(dict(
        name="tf", model=dict(kind="transformer", depth=depth, width=8, heads=2, **model),
        task=dict(kind="copy", seq_len=7, copy_len=2, n_symbols=3, batch_size=4),
        train=dict(steps=steps, optimizer=dict(kind="adamw", lr=lr)), clipping=[NONE, NORM]))


def written(tmp_path, results):
    for r in results:
        write_run(tmp_path, r, "cafe0123")
    return tmp_path


def read(path):
    header, rows = io.read_csv(path)
    return header, np.array(rows, dtype=float)


# ----------------------------------------------------------------------------- other models

def test_an_mlp_run_writes_the_metrics_csv_it_always_did(tmp_path):
    """The diagnostics add nothing to a model without them: an MLP regression's metrics.csv
    has exactly the columns it had (the held-out loss, which every task has, last), its
    report no diagnostic field, and no attention.csv is written."""
    cfg = ExperimentConfig.model_validate(dict(
        name="g", model=dict(depth=2, width=1, activation="relu"),
        task=dict(kind="teacher", input_dim=1, output_dim=1, batch_size=4),
        train=dict(steps=6, dtype="float64", optimizer=dict(lr=0.1)),
        clipping=[NONE, {"method": "norm", "max_norm": 0.5}]))
    written(tmp_path, train_seed(cfg, 0))
    for rid in ("none-s0", "norm-0.5-s0"):
        header, _ = io.read_csv(tmp_path / "runs" / rid / "metrics.csv")
        assert header == ["step", "loss", "grad_norm", "clipped_norm", "clip_coef", "clipped", "update_norm",
                          "nonfinite", "grad_cosine", "lr", "val_loss"]
        assert not (tmp_path / "runs" / rid / "attention.csv").exists()
        rep = io.read_json(tmp_path / "runs" / rid / "report.json")
        assert not {"max_attn_logit", "max_logit_z", "min_attn_entropy"} & set(rep)


def test_a_recurrent_classifier_records_logit_z_but_no_attention(tmp_path):
    """logit_z comes from the loss, not the model: an LSTM on a classification task has it."""
    cfg = ExperimentConfig.model_validate(dict(
        name="l", model=dict(kind="lstm", depth=1, width=4),
        task=dict(kind="copy", seq_len=7, copy_len=2, n_symbols=3, batch_size=4),
        train=dict(steps=3), clipping=[NONE]))
    (r,) = train_seed(cfg, 0)
    assert r.columns[-1] == "logit_z" and "max_attn_logit" not in r.columns
    assert r.attention_rows == [] and "max_logit_z" in r.summary
    written(tmp_path, [r])
    assert check_run(tmp_path, r.run_id) == ("complete", "")


# ----------------------------------------------------------------------------- recording

@pytest.fixture(scope="module")
def tf_runs():
    return train_seed(tf_cfg(), 0)


def test_transformer_metrics_have_the_diagnostics_last(tf_runs):
    for r in tf_runs:
        assert r.columns[-3:] == DIAGNOSTIC_COLUMNS
        assert r.columns[:-3] == ("step", "loss", "grad_norm", "clipped_norm", "clip_coef", "clipped",
                                  "update_norm", "nonfinite", "grad_cosine", "lr", "accuracy", "val_loss",
                                  "val_accuracy")
        assert r.attention_columns == ["step", "block.0.max_attn_logit", "block.1.max_attn_logit",
                                       "block.0.attn_entropy", "block.1.attn_entropy"]


def test_metrics_csv_reduces_attention_csv_over_the_blocks(tmp_path, tf_runs):
    written(tmp_path, tf_runs)
    for r in tf_runs:
        d = tmp_path / "runs" / r.run_id
        mh, m = read(d / "metrics.csv")
        ah, a = read(d / "attention.csv")
        assert len(m) == len(a) == 8 and np.array_equal(m[:, 0], a[:, 0])
        logits = a[:, [ah.index("block.0.max_attn_logit"), ah.index("block.1.max_attn_logit")]]
        entropy = a[:, [ah.index("block.0.attn_entropy"), ah.index("block.1.attn_entropy")]]
        assert np.array_equal(m[:, mh.index("max_attn_logit")], logits.max(axis=1))
        assert np.allclose(m[:, mh.index("attn_entropy")], entropy.mean(axis=1), rtol=1e-15)
        # At init, attention is nearly uniform over the causal prefix (entropy up to log 7) and
        # the logits are O(1): the statistics are what they claim to be.
        assert np.all((entropy > 0) & (entropy < math.log(7)))
        assert np.all((logits > 0) & (logits < 20))
        assert np.all(np.isfinite(m[:, mh.index("logit_z")]))


def test_diagnostics_match_the_model_and_the_loss(tf_runs):
    """Step 0's recorded values are the model's diagnostics and the loss's log Z for the
    first batch, recomputed here from the initial weights."""
    from gradlab.train import seed_streams

    cfg = tf_cfg()
    rng = seed_streams(0)
    task = build_task(cfg.task, "float32", rng["task"])
    model = build_model(cfg.model, task, "float32", None)
    params = stack(model.init(rng["init"]), 1)
    x, y = task.batch(rng["data"])
    out, cache = model.forward(params, x)
    diag = model.diagnostics(cache)
    task.loss(out, y, z_loss=model.z_loss, stats=diag)
    row = dict(zip(tf_runs[0].columns, tf_runs[0].metrics_rows[0]))
    assert row["max_attn_logit"] == diag["max_attn_logit"][0].max()
    assert row["logit_z"] == diag["logit_z"][0]
    assert tf_runs[0].attention_rows[0][1:3] == list(diag["max_attn_logit"][0])


def test_report_fields_are_derived_from_metrics_csv(tf_runs):
    for r in tf_runs:
        rows = np.array(r.metrics_rows, dtype=float)
        col = {c: i for i, c in enumerate(r.columns)}
        s = r.summary
        assert s["max_attn_logit"] == rows[:, col["max_attn_logit"]].max()
        assert s["final_max_attn_logit"] == rows[-1, col["max_attn_logit"]]
        assert s["min_attn_entropy"] == rows[:, col["attn_entropy"]].min()
        assert s["final_attn_entropy"] == rows[-1, col["attn_entropy"]]
        assert s["max_logit_z"] == rows[:, col["logit_z"]].max()
        assert s["final_logit_z"] == rows[-1, col["logit_z"]]
        assert r.report()["max_attn_logit"] == s["max_attn_logit"]


def test_summarize_keeps_the_divergence_rows_finite_extremes_only():
    cols = ("step", "loss", "grad_norm", "clipped_norm", "clip_coef", "clipped", "update_norm", "nonfinite",
            "max_attn_logit", "attn_entropy", "logit_z")
    rows = [[0, 1.0, 1.0, 1.0, 1.0, 0, 0.1, 0, 3.0, 1.5, 2.0],
            [1, 1.0, 1.0, 1.0, 1.0, 0, 0.1, 0, 5.0, 1.2, 4.0],
            [2, math.nan, math.inf, math.nan, math.nan, 0, math.nan, 1, 9e30, math.nan, math.inf]]
    s = summarize(cols, rows)
    # The step it diverged at counts for the extremes, where its values are finite (the huge
    # attention logit is the news), not for the final values.
    assert (s["max_attn_logit"], s["final_max_attn_logit"]) == (9e30, 5.0)
    assert (s["min_attn_entropy"], s["final_attn_entropy"]) == (1.2, 1.2)
    assert (s["max_logit_z"], s["final_logit_z"]) == (4.0, 4.0)
    none = summarize(cols, rows[2:])
    assert [none[k] for k in ("max_attn_logit", "final_max_attn_logit", "min_attn_entropy", "max_logit_z")] == \
        [9e30, None, None, None]


# ----------------------------------------------------------------------------- the run store

def test_transformer_runs_are_complete_and_their_damage_is_named(tmp_path, tf_runs):
    written(tmp_path, tf_runs)
    rid = tf_runs[0].run_id
    d = tmp_path / "runs" / rid
    assert check_run(tmp_path, rid) == ("complete", "")
    attention = (d / "attention.csv").read_text()

    (d / "attention.csv").write_text(attention.rsplit("\n", 2)[0] + "\n")
    assert check_run(tmp_path, rid) == ("damaged", "attention.csv: 7 rows where report.json says 8")
    (d / "attention.csv").write_text(attention.replace("block.1.attn_entropy", "block.1.bogus!"))
    assert check_run(tmp_path, rid) == ("damaged", "attention.csv: its first line is not the header gradlab writes")
    (d / "attention.csv").unlink()
    assert check_run(tmp_path, rid) == ("damaged", "attention.csv: missing")
    (d / "attention.csv").write_text(attention)

    rep = io.read_json(d / "report.json")
    io.write_json(d / "report.json", {**rep, "max_attn_logit": rep["max_attn_logit"] * 2})
    state, why = check_run(tmp_path, rid)
    assert state == "damaged" and "`max_attn_logit`" in why


def test_runs_written_before_the_diagnostics_stay_complete(tmp_path, tf_runs):
    """A transformer run as a gradlab without the diagnostics wrote it: neither attention.csv
    nor the diagnostic columns nor the report's fields."""
    written(tmp_path, tf_runs[:1])
    d = tmp_path / "runs" / tf_runs[0].run_id
    (d / "attention.csv").unlink()
    header, rows = io.read_csv(d / "metrics.csv")
    keep = [i for i, c in enumerate(header) if c not in DIAGNOSTIC_COLUMNS]
    io.write_csv(d / "metrics.csv", [header[i] for i in keep],
                 [[int(r[0])] + [r[i] if header[i] not in ("clipped", "nonfinite") else int(r[i]) for i in keep[1:]]
                  for r in rows])
    rep = io.read_json(d / "report.json")
    for key in ("max_attn_logit", "final_max_attn_logit", "min_attn_entropy", "final_attn_entropy", "max_logit_z",
                "final_logit_z"):
        del rep[key]
    io.write_json(d / "report.json", rep)
    assert check_run(tmp_path, tf_runs[0].run_id) == ("complete", "")


def test_a_diverged_transformer_run_keeps_its_rows_in_step(tmp_path):
    """An lr of 1e19 makes the weights overflow in step 1's forward pass."""
    runs = train_seed(tf_cfg(steps=4, lr=1e19), 0)
    written(tmp_path, runs)
    for r in runs:
        assert r.first_nonfinite is not None and r.first_nonfinite.step == 1
        assert len(r.attention_rows) == len(r.metrics_rows) == 2
        assert check_run(tmp_path, r.run_id) == ("complete", "")
        rep = json.loads((tmp_path / "runs" / r.run_id / "report.json").read_text())
        assert rep["final_max_attn_logit"] == r.metrics_rows[0][r.columns.index("max_attn_logit")]


# ----------------------------------------------------------------------------- divergence inside a transformer

D = 8  # the width of `setup`'s transformer: qkv.W is (D, 3D), q, k and v side by side


def setup(**model):
    """A 2-block transformer (float32, one variant), a batch, and its weights to break."""
    cfg = tf_cfg(**model)
    task = build_task(cfg.task, "float32", np.random.default_rng(0))
    m = build_model(cfg.model, task, "float32", None)
    params = stack(m.init(np.random.default_rng(1)), 1)
    x, y = task.batch(np.random.default_rng(2))
    return m, task, params, x, y


def locate(m, task, params, x, y):
    with np.errstate(all="ignore"):
        return locate_step(m, task, params, x, y, [0])[0]


def test_an_attention_score_that_overflows_is_located_in_its_block():
    m, task, p, x, y = setup()
    p["block.1.attn.qkv.W"][..., :2 * D] *= 1e20  # q and k: finite, their products not
    assert locate(m, task, p, x, y) == ("forward", "block.1.attn.logits", "inf")
    with np.errstate(all="ignore"):
        out, cache = m.forward(p, x)
    diag = m.diagnostics(cache)
    # Block 0 is untouched and says so; block 1's statistics are not finite.
    assert np.isfinite(diag["max_attn_logit"][0, 0]) and not np.isfinite(diag["max_attn_logit"][0, 1])


def test_the_causal_masks_minus_inf_is_never_a_divergence():
    m, task, p, x, y = setup()
    seen = {}
    m.forward(p, x, probe=lambda name, a, where=None: seen.setdefault(name, (a.copy(), where)))
    logits, allowed = seen["block.0.attn.logits"]
    assert np.isneginf(logits).any() and np.isfinite(logits[..., allowed]).all()
    # Every value of the step is finite but the masked logits: nothing found, the locator's
    # answer when it finds no tensor to name.
    assert locate(m, task, p, x, y) == ("backward", "gradient norm", "inf")
    loc = Locator([0])
    loc.see("forward", "block.0.attn.logits", logits, where=allowed)
    assert loc.found == {}
    loc.see("forward", "unmasked", logits)
    assert loc.found == {0: ("forward", "unmasked", "inf")}


def test_huge_attention_logits_that_stay_finite_are_no_divergence():
    """Scaled by 1e15, the scores reach ~1e30: finite in float32, and the softmax (taken
    after subtracting each row's max) stays finite too."""
    m, task, p, x, y = setup()
    p["block.1.attn.qkv.W"][..., :2 * D] *= 1e15
    out, cache = m.forward(p, x)
    assert 1e20 < m.diagnostics(cache)["max_attn_logit"][0, 1] < 3.4e38
    assert locate(m, task, p, x, y)[1] != "block.1.attn.logits"


def test_a_layer_norm_gain_that_overflows_its_output():
    m, task, p, x, y = setup()
    p["block.0.ln1.g"][:] = 3e38  # finite, but a normalised value above 1.13 times it is not
    assert locate(m, task, p, x, y) == ("forward", "block.0.ln1", "inf")


def test_the_head_logits():
    m, task, p, x, y = setup()
    p["head.W"][:] = 3e38
    assert locate(m, task, p, x, y) == ("forward", "head.logits", "inf")


def test_the_z_loss_overflows_the_loss_with_finite_logits():
    """Logits near 1e20 are finite in float32, their log Z squared (1e40) is not."""
    m, task, p, x, y = setup(z_loss=1e-4)
    p["head.W"] *= 1e20
    assert locate(m, task, p, x, y) == ("forward", "loss", "inf")


def test_the_gradient_into_a_gelu_overflows_in_the_backward_pass():
    """A GELU's output is finite for every finite input, so its tensor can only be born
    non-finite in the backward pass: here block 0's MLP is switched off (a bias of -1e4
    makes the GELU output exactly 0, so its huge output weights change nothing in the forward
    pass), and a head scaled by 1e30 sends a gradient of that size back to it."""
    m, task, p, x, y = setup()
    p["head.W"] *= 1e30
    p["block.0.mlp.fc.b"][:] = -1e4
    p["block.0.mlp.proj.W"][:] = 1e20
    # inf, or NaN where the kernel sums an inf and a -inf (Haswell's does, SkylakeX's not)
    assert locate(m, task, p, x, y)[:2] == ("backward", "block.0.mlp.gelu")


# ----------------------------------------------------------------------------- attention.png

TF_YAML = """name: tfplot
model: {kind: transformer, depth: 3, width: 8, heads: 2}
task: {kind: copy, seq_len: 7, copy_len: 2, n_symbols: 3, batch_size: 4}
train: {steps: 12, optimizer: {kind: sgd, lr: 1.0e+19}}
seeds: [0, 1]
clipping: [{method: none}, {method: norm, max_norm: 1.0e-20}]
"""


def run_cli(tmp_path, text):
    from conftest import cli

    (tmp_path / "x.yaml").write_text(text)
    assert cli("run", "x.yaml", "--quiet", "--no-plots", "--workers", "1", "--out", "out", cwd=tmp_path) == 0
    (exp,) = (tmp_path / "out").iterdir()
    return exp


@pytest.fixture(scope="module")
def tf_plot(tmp_path_factory):
    """The transformer experiment (its unclipped runs diverge at step 1, the clipped ones
    train) drawn, with what attention.png shows."""
    from gradlab.plots import draw_experiment, style

    exp = run_cli(tmp_path_factory.mktemp("tfplot"), TF_YAML)
    facts = {}
    real_save = style.save

    def save(fig, path):
        if path.name == "attention.png":
            axes = [ax for ax in fig.axes if ax.get_visible()]
            facts["titles"] = [ax.get_title() for ax in axes]
            facts["ylabels"] = [ax.get_ylabel() for ax in axes]
            facts["legend"] = [t.get_text() for ax in axes if ax.get_legend() for t in ax.get_legend().get_texts()]
            facts["x_marks"] = sum(1 for ax in axes for line in ax.get_lines() if line.get_marker() == "x")
            facts["lines"] = {ax.get_title(): [(line.get_color(), str(line._unscaled_dash_pattern)) for line in ax.get_lines()
                                               if line.get_marker() in (None, "None", "")] for ax in axes}
        return real_save(fig, path)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(style, "save", save)
        written = draw_experiment(exp)
    return exp, written, facts


def test_attention_png_has_a_row_per_seed_and_a_line_per_block(tf_plot):
    exp, written, facts = tf_plot
    assert (exp / "plots" / "attention.png") in written
    assert facts["titles"] == [f"{what}, seed {s}" for s in (0, 1)
                               for what in ("largest |attention logit|", "attention entropy", "output log Z")]
    # Each row's divergences in its first panel; the key beside the first row.
    assert facts["legend"].count("none: diverged at step 1") == 2
    assert facts["legend"][1:3] == ["none (no clipping)", "norm-1e-20: max_norm 1e-20"]
    assert {"block 0 (first)", "block 1", "block 2 (last)", "diverged (NaN/inf)"} <= set(facts["legend"])
    # Per seed: the clipped run's three blocks in the logit panel, in the colour every figure
    # gives it, one dash per block; the diverged baseline's lines end with an x each.
    clipped = facts["lines"]["largest |attention logit|, seed 0"]
    assert len({dash for _, dash in clipped}) == 3 and len(clipped) == 6
    assert facts["x_marks"] >= 2 * (3 + 3 + 1)


def test_attention_png_is_redrawn_when_an_attention_csv_changes(tf_plot):
    import os

    from gradlab.plots import draw_experiment

    exp, _, _ = tf_plot
    assert draw_experiment(exp, only_stale=True) == []
    path = exp / "runs" / "norm-1e-20-s0" / "attention.csv"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert [p.name for p in draw_experiment(exp, only_stale=True)] == ["attention.png"]


def test_an_mlp_experiment_has_no_attention_png(tmp_path):
    from gradlab.plots import figures, load_experiment

    exp = run_cli(tmp_path, "name: m\nmodel: {depth: 2, width: 4}\ntask: {input_dim: 2, batch_size: 4}\n"
                            "train: {steps: 3}\nseeds: [0]\nclipping: [{method: none}]\n")
    names = [f.name for f in figures.plan(load_experiment(exp)).figures]
    assert "grad_norm.png" in names and "attention.png" not in names


# ----------------------------------------------------------------------------- report

def _rep(rid, diverged, **extra):
    variant, seed = rid.rsplit("-s", 1)
    return {"run_id": rid, "method": variant.split("-")[0], "threshold": None if variant == "none" else 1.0,
            "seed": int(seed), "variant": variant, "diverged": diverged, "divergence_step": 12 if diverged else None,
            "first_nonfinite": {"phase": "forward", "where": "block.1.attn.logits"} if diverged else None,
            "max_grad_norm": 3.18e10, "final_loss": 7.08, "clip_fraction": 0.5, "steps": 300,
            "steps_completed": 12 if diverged else 300, **extra}


def test_the_report_shows_attention_logits_for_transformer_runs_only():
    from gradlab.report import columns, findings, table_rows, terminal_columns

    plain = [_rep("none-s0", True), _rep("norm-1-s0", False)]
    assert "max attn logit" not in columns(plain) and "max log Z" not in columns(plain)
    # A recurrent classifier records log Z too, but its table does not show it.
    assert "max log Z" not in columns([_rep("none-s0", False, max_logit_z=3.0, final_logit_z=3.0)])
    tf = [_rep("none-s0", True, max_attn_logit=5.08e15, max_logit_z=7.4e11),
          _rep("norm-1-s0", False, max_attn_logit=4.36e5, max_logit_z=136.0)]
    cols = columns(tf)
    assert cols[-2:] == ("max attn logit", "max log Z")
    assert [row[-2:] for row in table_rows(tf)] == [["5.08e+15", "7.4e+11"], ["4.36e+05", "136"]]
    assert "largest attention logit 5.08e+15" in findings(tf)
    assert "attention" not in findings(plain)
    # A terminal of 80 columns keeps what fits, and values are never cut; a wide one shows
    # the largest attention logit (briefly headed), not log Z, which is for report.md.
    for width in (60, 80):
        shown = terminal_columns(tf, width)
        assert [h for _, h in shown][:3] == ["run", "div", "step"]
        widths = [max(len(h), *(len(r[i]) for r in table_rows(tf))) for i, h in shown]
        assert sum(widths) + 3 * len(widths) + 1 <= width
    wide = dict((h, i) for i, h in terminal_columns(tf, 200))
    assert "max attn logit" in wide and "max log Z" not in wide


def test_attention_csv_from_another_run_is_damage(tmp_path, tf_runs):
    """Both files of one run agree: its blocks' largest logit is metrics.csv's column."""
    written(tmp_path, tf_runs)
    a, b = (tmp_path / "runs" / r.run_id for r in tf_runs)
    text = (a / "attention.csv").read_text()
    assert text != (b / "attention.csv").read_text()
    (b / "attention.csv").write_text(text)
    state, why = check_run(tmp_path, tf_runs[1].run_id)
    assert state == "damaged" and why.startswith("attention.csv: step ") and "max_attn_logit" in why


def test_attention_png_of_runs_non_finite_from_their_first_step(tmp_path, monkeypatch):
    """A gain of 1e30 overflows block 0's attention scores at step 0 in every variant:
    every panel says it has nothing finite, and each run's x sits on its top edge."""
    from gradlab.plots import draw_experiment, style

    exp = run_cli(tmp_path, TF_YAML.replace("heads: 2}", "heads: 2, init: {gain: 1.0e+30}}")
                  .replace("lr: 1.0e+19", "lr: 0.01").replace("seeds: [0, 1]", "seeds: [0]"))
    rep = io.read_json(exp / "runs" / "none-s0" / "report.json")
    assert rep["first_nonfinite"]["where"] == "block.0.attn.logits" and rep["max_attn_logit"] is None
    texts = []
    real_save = style.save

    def save(fig, path):
        if path.name == "attention.png":
            texts.extend(t.get_text() for ax in fig.axes for t in ax.texts)
        return real_save(fig, path)

    monkeypatch.setattr(style, "save", save)
    assert (exp / "plots" / "attention.png") in draw_experiment(exp)
    assert texts == ["no finite value to draw"] * 3


def test_a_sweep_over_a_transformer_draws_its_attention(tmp_path):
    """`gradlab sweep` takes a transformer config like any other: every threshold's runs, the
    sweep's figures and attention.png."""
    from conftest import cli

    (tmp_path / "x.yaml").write_text("name: tfsweep\nmodel: {kind: transformer, depth: 1, width: 8, heads: 2}\n"
                                     "task: {kind: lm, seq_len: 8, batch_size: 4}\ntrain: {steps: 4}\n")
    assert cli("sweep", "x.yaml", "--thresholds", "0.1,1", "--quiet", "--workers", "1", "--out", "out",
               cwd=tmp_path) == 0
    (exp,) = (tmp_path / "out").iterdir()
    assert sorted(p.name for p in (exp / "runs").iterdir()) == ["none-s0", "norm-0.1-s0", "norm-1-s0"]
    plots = {p.name for p in (exp / "plots").iterdir()}
    assert {"attention.png", "sweep_final_loss.png"} <= plots, plots
