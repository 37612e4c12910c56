"""Loss scaling (train.precision) without torch: the config and its hash, skipped steps that
leave parameters and optimizer state bit for bit, stacks equal to single runs, the scale's
rule read back from metrics.csv alone, the collapse, and the clip order."""

import copy
import csv
import json

import numpy as np
import pytest
import yaml
from pathlib import Path

from conftest import cli
from gradlab import train as train_mod
from gradlab.config import ExperimentConfig, config_hash
from gradlab.config.schema import PrecisionConfig
from gradlab.train import SCALER_COLUMNS, train_seed

ROOT = Path(__file__).resolve().parents[1]
NONE = {"method": "none"}


def make(clipping, precision=None, **over):
    base = dict(name="ls", model=dict(depth=6, width=16, activation="tanh", init=dict(scheme="normal", gain=1.5)),
                task=dict(batch_size=16, input_dim=4),
                train=dict(steps=30, optimizer=dict(kind="adam", lr=0.05)), clipping=clipping)
    if precision is not None:
        base["train"]["precision"] = precision
    for k, v in over.items():
        base[k] = {**base.get(k, {}), **v} if isinstance(v, dict) else v
    return ExperimentConfig.model_validate(base)


# A scale near float32's largest: the first steps overflow, back off, grow again, and growth to
# 2 x 3e38 (inf) is refused, so every part of the rule is exercised in a few steps.
EDGE = {"loss_scale": "dynamic", "init_scale": 3.0e38, "growth_interval": 3}
CLIPS = [NONE, {"method": "norm", "max_norm": 1.0}, {"method": "value", "clip_value": 0.05}]


def columns(r):
    return {c: [row[i] for row in r.metrics_rows] for i, c in enumerate(r.columns)}


# ----------------------------------------------------------------------------- config


def test_the_default_precision_keeps_the_resolved_config_and_its_hash():
    plain, default = make([NONE]), make([NONE], {})
    explicit = make([NONE], {"compute": "float32", "loss_scale": "none"})
    assert "precision" not in plain.resolved()["train"]
    assert plain.resolved() == default.resolved() == explicit.resolved()
    assert config_hash(plain) == config_hash(default) == config_hash(explicit)
    assert config_hash(make([NONE], EDGE)) != config_hash(plain)


@pytest.mark.parametrize("precision", [EDGE, {"loss_scale": "static", "init_scale": 1024.0},
                                       {"loss_scale": "dynamic", "clip": "before_unscale"}])
def test_a_resolved_precision_loads_again_with_the_same_hash(precision):
    """The resolved config keeps only the knobs its kind reads: loaded again, it is not refused
    for a knob (growth_interval on static) it never set."""
    cfg = make([NONE], precision)
    again = ExperimentConfig.model_validate(yaml.safe_load(yaml.safe_dump(cfg.resolved())))
    assert again == cfg and config_hash(again) == config_hash(cfg)
    kept = cfg.resolved()["train"]["precision"]
    if precision["loss_scale"] == "static":
        assert set(kept) == {"compute", "loss_scale", "init_scale", "clip"}


def test_defaults_are_gradscalers():
    p = PrecisionConfig(loss_scale="dynamic")
    assert (p.init_scale, p.growth_factor, p.backoff_factor, p.growth_interval, p.min_scale) == (
        65536.0, 2.0, 0.5, 2000, 2.0 ** -24)


# ----------------------------------------------------------------------------- the loop


def test_no_scaling_writes_the_columns_it_always_wrote():
    r = train_seed(make(CLIPS), 0)
    assert not any(set(SCALER_COLUMNS) & set(x.columns) for x in r)
    assert all("skip_fraction" not in x.summary and "final_loss_scale" not in x.summary for x in r)


# metrics.csv and layer_norms.csv (sha256, bytes) of a tiny run as the gradlab before loss
# scaling wrote them (commit a2e926c). One example, one unit per layer and in the teacher,
# float64: every sum has one term, so the bytes are the same under OpenBLAS's Haswell and
# SkylakeX kernels (checked; with the default 32-unit teacher the targets are not).
GOLDEN = {
    "none-s0/metrics.csv": ("8dd18d75532c7b0a867864f5faa5580f784b4c4eaa7c4fb8bad546f16b83d9c6", 765),
    "skip-0.5-w4-s0/metrics.csv": ("801d2a2b01af4248154ba14e6d29753395c9002bcfb63396ae369e759cbaffd7", 785),
    "none-s0/layer_norms.csv": ("aa1b05c4b6a62549f511bf6234b2318131695d8d3ff1ef9d502acf53ac32368e", 366),
    "skip-0.5-w4-s0/layer_norms.csv": ("aa1b05c4b6a62549f511bf6234b2318131695d8d3ff1ef9d502acf53ac32368e", 366),
}


@pytest.mark.parametrize("precision", [None, {"compute": "float32", "loss_scale": "none"}], ids=["absent", "none"])
def test_a_run_without_loss_scaling_writes_the_bytes_it_always_did(tmp_path, precision):
    import hashlib

    data = {"name": "gold", "model": {"depth": 2, "width": 1, "activation": "relu"},
            "task": {"kind": "teacher", "input_dim": 1, "output_dim": 1, "batch_size": 1, "teacher_depth": 1,
                     "teacher_width": 1},
            "train": {"steps": 6, "dtype": "float64", "optimizer": {"lr": 0.1}},
            "clipping": [NONE, {"method": "skip", "sigma": 0.5, "window": 4}]}
    if precision is not None:
        data["train"]["precision"] = precision
    path = tmp_path / "gold.yaml"
    path.write_text(yaml.safe_dump(data))
    assert cli("run", path, "--out", tmp_path / "out", "--quiet") == 0
    runs = next((tmp_path / "out").iterdir()) / "runs"
    for name, want in GOLDEN.items():
        raw = (runs / name).read_bytes()
        assert (hashlib.sha256(raw).hexdigest(), len(raw)) == want, name


@pytest.mark.parametrize("model,task", [
    (None, None),
    ({"kind": "gru", "depth": 1, "width": 8}, {"kind": "adding", "seq_len": 10, "batch_size": 8}),
], ids=["mlp", "gru"])
def test_a_power_of_two_scale_that_never_overflows_changes_no_number(model, task):
    """Multiplying by 2**k and by 2**-k is exact in binary floating point while nothing
    overflows: every number of the run (metrics, layer norms, gradient through time) equals
    the unscaled run's, in both clip orders, bit for bit."""
    def cfg(precision=None):
        c = make(CLIPS, precision)
        if model:  # a whole model and task in place of make's MLP on the teacher task
            c = ExperimentConfig.model_validate({**c.resolved(), "model": model, "task": task})
        return c

    base = train_seed(cfg(), 0)
    scaled = train_seed(cfg({"loss_scale": "static", "init_scale": 1024.0}), 0)
    for a, b in zip(base, scaled):
        keep = [i for i, c in enumerate(b.columns) if c not in SCALER_COLUMNS]
        assert list(a.columns) == [b.columns[i] for i in keep]
        assert [[row[i] for i in keep] for row in b.metrics_rows] == a.metrics_rows
        assert b.layer_rows == a.layer_rows and b.flow_rows == a.flow_rows
        assert bool(b.flow_rows) == bool(model)
        assert columns(b)["loss_scale"] == [1024.0] * 30 and columns(b)["skipped"] == [0] * 30


def test_skipped_steps_leave_parameters_and_optimizer_state_bit_for_bit(monkeypatch):
    """Every step the loss scale skips, with Adam (moments and step count), leaves that
    variant's parameters and state exactly as they were; the others still move."""
    original = train_mod._Stack.update
    seen = {"skipped": 0, "moved": 0}

    def checked(self, grads, skipped=None, lr=None):
        before = copy.deepcopy({"params": self.params, "state": self.state})
        out = original(self, grads, skipped, lr)
        for v in range(len(self.alive)):
            same = all(np.array_equal(before["params"][k][v], p[v]) for k, p in self.params.items())
            state_same = all(np.array_equal(a[v], b[v]) for a, b in zip(_leaves(before["state"]), _leaves(self.state)))
            if skipped is not None and skipped[v]:
                assert same and state_same
                seen["skipped"] += 1
            else:
                assert not same and not state_same
                seen["moved"] += 1
        return out

    monkeypatch.setattr(train_mod._Stack, "update", checked)
    r = train_seed(make(CLIPS, EDGE), 0)
    assert seen["skipped"] >= 3 and seen["moved"] > seen["skipped"]
    for x in r:
        c = columns(x)
        assert all(u == 0.0 for u, s in zip(c["update_norm"], c["skipped"]) if s)


def _leaves(node):
    if isinstance(node, dict):
        for k in sorted(node):
            yield from _leaves(node[k])
    elif isinstance(node, np.ndarray) and node.ndim:
        yield node


def test_stacked_variants_with_their_own_scales_equal_single_runs():
    # SGD with momentum: the unclipped variant's gradients grow and overflow far more often.
    cfg = make(CLIPS, EDGE, train={"steps": 40, "optimizer": {"kind": "sgd", "lr": 0.2, "momentum": 0.9}},
               model={"init": {"scheme": "normal", "gain": 2.0}})
    together = train_seed(cfg, 2)
    skips = [sum(columns(r)["skipped"]) for r in together]
    assert len({tuple(columns(r)["loss_scale"]) for r in together}) == 3 and len(set(skips)) == 3, skips
    for i, c in enumerate(cfg.clipping):
        alone = train_seed(cfg, 2, [c], [i])[0]
        assert alone.columns == together[i].columns
        np.testing.assert_array_equal(np.array(alone.metrics_rows, float), np.array(together[i].metrics_rows, float))
        np.testing.assert_array_equal(np.array(alone.layer_rows, float), np.array(together[i].layer_rows, float))
        assert alone.summary == together[i].summary


def replay(rows, p):
    """The scale each step should use, from the first one and the skipped column alone."""
    scale, tracker, want = np.float32(rows[0]["loss_scale"]), 0, []
    for r in rows:
        want.append(float(scale))
        if r["skipped"] == "1":
            scale, tracker = np.float32(float(scale) * p["backoff_factor"]), 0
        elif tracker + 1 == p["growth_interval"]:
            with np.errstate(over="ignore"):
                grown = np.float32(float(scale) * p["growth_factor"])
            scale, tracker = (grown if np.isfinite(grown) else scale), 0
        else:
            tracker += 1
    return want


def test_the_loss_scale_column_follows_the_rule_from_metrics_csv_alone(tmp_path):
    cfg = tmp_path / "ls.yaml"
    cfg.write_text(yaml.safe_dump({**make(CLIPS, EDGE, train={"steps": 40}).resolved(), "seeds": [0, 1]}))
    assert cli("run", cfg, "--out", tmp_path / "out", "--quiet") == 0
    exp = next((tmp_path / "out").iterdir())
    p = yaml.safe_load((exp / "config.yaml").read_text())["train"]["precision"]
    changes = 0
    for run in sorted((exp / "runs").iterdir()):
        with open(run / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        got = [float(r["loss_scale"]) for r in rows]
        assert got == replay(rows, p), run.name
        changes += sum(a != b for a, b in zip(got, got[1:]))
        rep = json.loads((run / "report.json").read_text())
        assert rep["final_loss_scale"] == got[-1] and rep["min_loss_scale"] == min(got)
        assert rep["skip_fraction"] == sum(r["skipped"] == "1" for r in rows) / len(rows)
        assert not rep["diverged"]
    assert changes >= 6


def test_a_scale_below_min_scale_ends_the_run_as_a_collapse(tmp_path, capsys):
    """Gradients non-finite at every scale (a forward that overflows): each step is skipped
    and backs off, until the scale falls below min_scale."""
    cfg = make([NONE], {"loss_scale": "dynamic", "init_scale": 1.0, "min_scale": 0.01},
               model={"activation": "relu", "init": {"scheme": "normal", "gain": 1e8}})
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg.resolved()))
    assert cli("run", path, "--out", tmp_path / "out") == 0
    out = capsys.readouterr().out
    run = next((tmp_path / "out").iterdir()) / "runs" / "none-s0"
    rep = json.loads((run / "report.json").read_text())
    # 1, 0.5, ..., 2**-6 = 0.015625 used; the backoff after it gives 2**-7 < 0.01
    assert rep["diverged"] and rep["divergence_step"] == 6
    assert rep["first_nonfinite"] == {"step": 6, "phase": "update", "where": "loss_scale",
                                      "kind": "loss_scale_collapse", "t": None}
    assert rep["min_loss_scale"] == rep["final_loss_scale"] == 2.0 ** -6 and rep["steps_completed"] == 6
    assert "loss scale fell below min_scale" in out
    assert cli("report", next((tmp_path / "out").iterdir())) == 0  # the store finds the run whole


def test_without_loss_scaling_the_same_run_diverges_where_the_value_was_born():
    cfg = make([NONE], model={"activation": "relu", "init": {"scheme": "normal", "gain": 1e8}})
    r = train_seed(cfg, 0)[0]
    assert r.first_nonfinite is not None and r.first_nonfinite.kind in ("nan", "inf")
    assert r.first_nonfinite.step == 0 and r.first_nonfinite.phase == "forward"


def test_clipping_before_the_unscale_divides_the_threshold_by_the_scale():
    """The same norm-1 rule clips every step on the scaled gradients (norms of about 1e3 x
    1024), and the update it makes is 1024 times smaller than clipping after the unscale."""
    clips = [{"method": "norm", "max_norm": 1.0}]
    sgd = {"optimizer": {"kind": "sgd", "lr": 0.05}}
    after = train_seed(make(clips, {"loss_scale": "static", "init_scale": 1024.0}, train=sgd), 0)[0]
    before = train_seed(make(clips, {"loss_scale": "static", "init_scale": 1024.0, "clip": "before_unscale"},
                             train=sgd), 0)[0]
    a, b = columns(after), columns(before)
    assert a["grad_norm"][0] == b["grad_norm"][0]  # recorded unscaled in both orders
    assert sum(b["clipped"]) == 30 > sum(a["clipped"])
    assert b["clipped_norm"][0] == pytest.approx(1.0 / 1024.0, rel=1e-6)
    assert a["clipped_norm"][0] == pytest.approx(min(1.0, a["grad_norm"][0]), rel=1e-6)
    assert b["update_norm"][0] == pytest.approx(0.05 / 1024.0, rel=1e-6)
    assert a["update_norm"][0] == pytest.approx(0.05 * a["clipped_norm"][0], rel=1e-6)


# ----------------------------------------------------------------------------- the plot


def test_loss_scale_png_for_experiments_that_scale_only(tmp_path):
    from gradlab.plots import figures
    from gradlab.plots.load import load_experiment

    cfg = tmp_path / "ls.yaml"
    cfg.write_text(yaml.safe_dump(make(CLIPS, EDGE, train={"steps": 12}).resolved()))
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(make(CLIPS, train={"steps": 12}).resolved() | {"name": "plain"}))
    assert cli("run", cfg, "--out", tmp_path / "out", "--quiet") == 0
    assert cli("run", plain, "--out", tmp_path / "out", "--quiet") == 0
    scaled = next((tmp_path / "out").glob("ls-*"))
    assert (scaled / "plots" / "loss_scale.png").stat().st_size > 10_000
    assert not list((tmp_path / "out").glob("plain-*/plots/loss_scale.png"))
    names = [f.name for f in figures.plan(load_experiment(scaled)).figures]
    assert names.count("loss_scale.png") == 1


def test_the_gradient_through_time_record_skips_the_steps_the_scale_skipped():
    """bptt_norms.csv keeps the first and the last healthy step: a step whose scaled backward
    overflowed is neither (its dL/dh_t are inf)."""
    c = make([NONE], {"loss_scale": "dynamic", "init_scale": 3e38, "growth_interval": 3})
    c = ExperimentConfig.model_validate({**c.resolved(), "model": {"kind": "gru", "depth": 1, "width": 8,
                                                                   "init": {"gain": 3.0}},
                                         "task": {"kind": "adding", "seq_len": 10, "batch_size": 8}})
    r = train_seed(c, 0)[0]
    skipped = columns(r)["skipped"]
    assert skipped[:2] == [1, 1] and skipped[2] == 0
    steps = sorted({row[0] for row in r.flow_rows})
    assert steps[0] == 2 and not skipped[steps[-1]]
    assert all(np.isfinite(row[3]) for row in r.flow_rows)


def test_a_static_scale_skips_overflowing_steps_and_never_moves():
    cfg = make(CLIPS, {"loss_scale": "static", "init_scale": 3.0e38},
               train={"steps": 40, "optimizer": {"kind": "sgd", "lr": 0.2, "momentum": 0.9}},
               model={"init": {"scheme": "normal", "gain": 2.0}})
    for r in train_seed(cfg, 2):
        c = columns(r)
        assert set(c["loss_scale"]) == {float(np.float32(3.0e38))}
        assert r.first_nonfinite is None and r.summary["skip_fraction"] == sum(c["skipped"]) / 40
    assert sum(columns(train_seed(cfg, 2)[0])["skipped"]) >= 10  # the unclipped variant's overflows


# ----------------------------------------------------------------------------- why it backed off

def test_every_backoff_names_where_its_first_overflow_was_born():
    """Each step the loss scale skipped is replayed with probes: report.json counts where the
    first overflow was born, once per skipped step, and only real tensors are named."""
    (r,) = train_seed(make([NONE], dict(EDGE, compute="float16", init_scale=65536.0)), 0)
    skipped = int(sum(columns(r)["skipped"]))
    births = r.report()["overflow_births"]
    assert skipped > 0 and sum(births.values()) == skipped
    model = set(r.param_names) | {f"layer{i}.{part}" for i in range(6) for part in ("linear", "tanh")} | {"loss"}
    for where in births:
        name, phase = where.rsplit(" (", 1)
        assert name in model and phase in ("forward)", "backward)"), where


def test_the_report_says_why_the_scale_backed_off(tmp_path):
    from gradlab.report import findings

    (r,) = train_seed(make([NONE], dict(EDGE, compute="float16", init_scale=65536.0)), 0)
    rep = r.report()
    text = findings([rep])
    top, n = max(rep["overflow_births"].items(), key=lambda kv: (kv[1], kv[0]))
    assert f"`none`'s loss scale backed off {sum(rep['overflow_births'].values())} times; {n} time" in text
    assert f"the first overflow was born in {top}" in text


def test_runs_without_loss_scaling_report_no_births():
    (r,) = train_seed(make([NONE]), 0)
    assert "overflow_births" not in r.report()


def test_fp16_scale_collapse_config_collapses_at_step_40_born_in_the_forward_pass():
    """configs/fp16_scale_collapse.yaml: float16 activations overflow in the forward pass
    whatever the scale, so every step is skipped and the scale halves from 65536 to below
    2^-24: 41 backoffs, each born in layer6.linear; bfloat16's range holds them."""
    from gradlab.config import load_config

    cfg = load_config(ROOT / "configs" / "fp16_scale_collapse.yaml", overrides=["seeds=[0]", "train.steps=45"])
    for r in train_seed(cfg, 0):
        rep = r.report()
        assert rep["first_nonfinite"]["kind"] == "loss_scale_collapse" and rep["divergence_step"] == 40
        assert rep["overflow_births"] == {"layer6.linear (forward)": 41}
    cfg = load_config(ROOT / "configs" / "fp16_scale_collapse.yaml",
                      overrides=["seeds=[0]", "train.steps=45", "train.precision.compute=bfloat16"])
    clipped = train_seed(cfg, 0)[1].report()
    assert not clipped["diverged"] and clipped["skip_fraction"] == 0


def test_clip_order_config_clipping_before_unscaling_divides_the_threshold_by_the_scale():
    """configs/clip_order.yaml: before unscaling, norm-1 meets gradients `scale` times larger,
    so it clips (nearly) every step to a norm of about 1/scale; after unscaling it clips to 1."""
    from gradlab.config import load_config

    def clipped_norms(order):
        cfg = load_config(ROOT / "configs" / "clip_order.yaml",
                          overrides=["seeds=[0]", f"train.precision.clip={order}"])
        r = train_seed(cfg, 0)[1]
        c = columns(r)
        return [n * s for n, s, k in zip(c["clipped_norm"], c["loss_scale"], c["clipped"]) if k], r.report()

    after, rep_after = clipped_norms("after_unscale")
    before, rep_before = clipped_norms("before_unscale")
    assert rep_before["clip_fraction"] > 0.9 > rep_after["clip_fraction"]
    # The record is of unscaled norms: before unscaling, norm x scale is the threshold, 1.
    assert np.allclose(before, 1.0, rtol=1e-3) and not np.allclose(after, 1.0, rtol=1e-3)


def test_the_report_says_what_clipping_before_the_unscale_did_to_the_threshold():
    from gradlab.report import _scaling, clip_order_finding

    reports = [{"variant": "none", "method": "none", "clip_fraction": 0.0},
               {"variant": "norm-1", "method": "norm", "clip_fraction": 0.99},
               {"variant": "norm-1", "method": "norm", "clip_fraction": 1.0}]
    before = {"compute": "float16", "loss_scale": "dynamic", "clip": "before_unscale"}
    text = clip_order_finding(before, reports)
    assert "65536 times the true ones" in text and "`norm-1` clipped 99%-100% of its steps" in text
    assert "`none`" not in text
    assert clip_order_finding(dict(before, clip="after_unscale"), reports) == ""
    assert clip_order_finding({"loss_scale": "none", "clip": "before_unscale"}, reports) == ""
    assert _scaling({"compute": "bfloat16"}) == " masters, bfloat16 compute"
    assert _scaling(None) == "" and _scaling({}) == ""


def test_an_option_that_makes_a_files_knob_inapplicable_names_the_knobs_line(tmp_path):
    """`--set train.precision.loss_scale=none` on a file that sets growth_interval is refused
    (a knob the kind never reads), and the one line says where the file sets it."""
    from gradlab.config import load_config
    from gradlab.errors import UserError

    path = tmp_path / "c.yaml"
    path.write_text("name: a\ntrain:\n  precision:\n    loss_scale: dynamic\n    growth_interval: 20\n")
    with pytest.raises(UserError) as e:
        load_config(path, ["train.precision.loss_scale=none"])
    assert e.value.file == "--set train.precision.loss_scale=none"
    assert e.value.message.endswith(f"(train.precision.growth_interval is set in {path} line 5)")
    # Both keys from options: nothing in the file to point at.
    with pytest.raises(UserError) as e:
        load_config(path, ["train.precision.growth_interval=3", "train.precision.loss_scale=none"])
    assert "is set in" not in e.value.message
