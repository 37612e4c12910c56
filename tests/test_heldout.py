"""The held-out split and the validation loss: measured on a set no training batch comes
from, on the steps `train.eval_every` names and always the last, without moving a single
training number; and every config written before it existed keeps its hash."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from gradlab.config import ExperimentConfig, config_hash, dump_yaml, load_config
from gradlab.errors import UserError
from gradlab.records import summarize
from gradlab.train import seed_streams, train_seed

ROOT = Path(__file__).resolve().parents[1]
TRAINING = ("loss", "grad_norm", "clipped_norm", "clip_coef", "clipped", "update_norm", "nonfinite")

# The hash of every shipped config as gradlab computed it before the held-out split existed.
HASHES = {
    "adaptive_rules.yaml": "82d1d247", "deep_relu_large_init.yaml": "bf3dd92d",
    "deep_tanh_large_gain.yaml": "a5ae62b2", "gru_temporal_order.yaml": "f4deb3e4",
    "lstm_copy.yaml": "905bc27e", "mlp_spirals.yaml": "f16e2fdd", "quickstart.yaml": "fa8d9505",
    "rnn_adding.yaml": "fc8a627f", "value_vs_norm.yaml": "da5552da",
}


@pytest.mark.parametrize("name", sorted(HASHES))
def test_every_shipped_config_keeps_its_hash(name):
    cfg = load_config(ROOT / "configs" / name)
    assert config_hash(cfg) == HASHES[name]
    assert "eval_every" not in cfg.resolved()["train"] and "eval_batches" not in cfg.resolved()["train"]


def test_eval_knobs_set_are_in_the_resolved_config_and_its_hash(tmp_path):
    p = tmp_path / "quickstart.yaml"
    p.write_text((ROOT / "configs" / "quickstart.yaml").read_text())
    base = load_config(p)
    every = load_config(p, ["train.eval_every=7"])
    batches = load_config(p, ["train.eval_batches=2"])
    assert every.resolved()["train"]["eval_every"] == 7 and batches.resolved()["train"]["eval_batches"] == 2
    assert len({config_hash(base), config_hash(every), config_hash(batches)}) == 3
    again = tmp_path / "again.yaml"
    again.write_text(dump_yaml(every))
    assert load_config(again) == every
    for bad in ("train.eval_every=0", "train.eval_batches=0", "train.eval_every=true"):
        with pytest.raises(UserError):
            load_config(p, [bad])


def test_the_first_three_streams_are_the_ones_of_before():
    """spawn(4)'s first three children are spawn(3)'s: init, data and task draw what they drew."""
    for seed in (0, 1, 12345):
        old = np.random.SeedSequence(seed).spawn(3)
        new = seed_streams(seed)
        for child, name in zip(old, ("init", "data", "task")):
            assert np.array_equal(np.random.default_rng(child).integers(0, 2**62, 8), new[name].integers(0, 2**62, 8))
        assert not np.array_equal(seed_streams(seed)["heldout"].integers(0, 2**62, 8),
                                  seed_streams(seed)["data"].integers(0, 2**62, 8))


@pytest.mark.parametrize("steps, every, want", [
    (200, None, list(range(9, 200, 10))),  # the default: 20 evaluations, the last step among them
    (7, None, list(range(7))),  # fewer than 20 steps: every step
    (45, None, [2, 5, 8, 11, 14, 17, 20, 23, 26, 29, 32, 35, 38, 41, 44]),
    (10, 4, [3, 7, 9]),  # the last step always
    (10, 100, [9]),
])
def test_eval_steps(steps, every, want):
    train = ExperimentConfig.model_validate(dict(name="e", train=dict(steps=steps, eval_every=every))).train
    assert [s for s in range(steps) if train.evaluates(s)] == want


def small(task: dict, model: dict, steps: int = 12, **train) -> ExperimentConfig:
    return ExperimentConfig.model_validate(dict(
        name="h", model=model, task=task, train=dict(steps=steps, **train),
        clipping=[dict(method="none"), dict(method="norm", max_norm=0.5)]))


CASES = {
    "teacher": (dict(kind="teacher", batch_size=8), dict(kind="mlp", depth=3, width=8)),
    "copy": (dict(kind="copy", batch_size=4, seq_len=9, copy_len=2, n_symbols=3), dict(kind="gru", depth=1, width=6)),
    "associative_recall": (dict(kind="associative_recall", batch_size=4, n_pairs=3, n_keys=6, n_values=4),
                           dict(kind="lstm", depth=1, width=6)),
    "dyck": (dict(kind="dyck", batch_size=4, seq_len=10, n_types=2, depth=3), dict(kind="rnn", depth=1, width=6)),
    "lm": (dict(kind="lm", batch_size=4, seq_len=8), dict(kind="gru", depth=1, width=8)),
}


@pytest.mark.parametrize("case", CASES)
def test_val_loss_on_the_eval_steps_and_the_training_numbers_unmoved(case):
    """A recurrent model learns each new task; val_loss is there every eval_every steps and
    on the last one (NaN elsewhere), report.json's final and best come from those rows, and
    evaluating at every step changes no training number (the forward uses no workspace)."""
    task, model = CASES[case]
    sparse = train_seed(small(task, model, eval_every=5), 0)
    dense = train_seed(small(task, model, eval_every=1), 0)
    for a, b in zip(sparse, dense):
        assert a.first_nonfinite is None
        at = {c: i for i, c in enumerate(a.columns)}
        for name in TRAINING:
            assert [r[at[name]] for r in a.metrics_rows] == [r[at[name]] for r in b.metrics_rows], name
        val = [r[at["val_loss"]] for r in a.metrics_rows]
        assert [s for s, v in enumerate(val) if not math.isnan(v)] == [4, 9, 11]
        assert all(v > 0 and math.isfinite(v) for v in val if not math.isnan(v))
        dense_val = [r[at["val_loss"]] for r in b.metrics_rows]
        assert [dense_val[s] for s in (4, 9, 11)] == [val[s] for s in (4, 9, 11)]  # the same held-out set
        assert a.summary["final_val_loss"] == val[11]
        assert a.summary["best_val_loss"] == min(v for v in val if not math.isnan(v))
        if "val_accuracy" in at:
            acc = [r[at["val_accuracy"]] for r in a.metrics_rows]
            assert all(0 <= acc[s] <= 1 for s in (4, 9, 11)) and math.isnan(acc[0])


def test_runs_without_val_columns_summarize_as_before():
    cols = ("step", "loss", "grad_norm", "clipped_norm", "clip_coef", "clipped", "update_norm", "nonfinite")
    rows = [[0, 1.0, 2.0, 1.0, 0.5, 1, 0.1, 0], [1, 0.5, 1.0, 1.0, 1.0, 0, 0.1, 0]]
    out = summarize(cols, rows)
    assert "final_val_loss" not in out and "best_val_loss" not in out and out["final_loss"] == 0.5


def test_a_held_out_loss_that_overflows_is_no_value_and_no_divergence():
    cols = ("step", "loss", "grad_norm", "clipped_norm", "clip_coef", "clipped", "update_norm", "nonfinite",
            "val_loss")
    rows = [[0, 1.0, 2.0, 1.0, 0.5, 1, 0.1, 0, 0.7], [1, 0.5, 1.0, 1.0, 1.0, 0, 0.1, 0, math.nan],
            [2, 0.4, 1.0, 1.0, 1.0, 0, 0.1, 0, math.inf]]
    out = summarize(cols, rows)
    assert out["final_val_loss"] is None and out["best_val_loss"] == 0.7 and out["steps_completed"] == 3


def test_a_diverged_variant_is_not_evaluated_after_it_diverged():
    cfg = ExperimentConfig.model_validate(dict(
        name="d", model=dict(kind="mlp", depth=4, width=16), task=dict(kind="teacher", batch_size=8),
        train=dict(steps=20, eval_every=2, optimizer=dict(kind="sgd", lr=1e6)),
        clipping=[dict(method="none"), dict(method="norm", max_norm=1e-8)]))
    none, clipped = train_seed(cfg, 0)
    assert none.first_nonfinite is not None and clipped.first_nonfinite is None
    at = none.columns.index("val_loss")
    assert all(math.isnan(r[at]) for r in none.metrics_rows[none.first_nonfinite.step:])
    assert len([r for r in clipped.metrics_rows if not math.isnan(r[at])]) == 10


# ----------------------------------------------------------------------------- the lm text in the loader

def write_lm(tmp_path: Path, text: bytes, seq_len: int = 8, path: str = "data/text.txt", model: str = "gru") -> Path:
    (tmp_path / "data").mkdir(exist_ok=True)
    (tmp_path / "data" / "text.txt").write_bytes(text)
    cfg = tmp_path / "lm.yaml"
    cfg.write_text(f"name: lm\nmodel: {{kind: {model}, depth: 1, width: 8}}\n"
                   f"task:\n  kind: lm\n  seq_len: {seq_len}\n  path: {path}\n")
    return cfg


@pytest.mark.parametrize("model", ["gru", "transformer"])  # a transformer checks its task while validating
def test_lm_path_is_relative_to_the_config_and_the_hash_covers_the_text(tmp_path, monkeypatch, model):
    text = ("the quick brown fox jumps over the lazy dog. " * 10).encode()
    cfg_path = write_lm(tmp_path, text, model=model)
    monkeypatch.chdir("/")  # not the config's directory
    cfg = load_config(cfg_path)
    import hashlib

    assert cfg.task.path == str(tmp_path / "data" / "text.txt")
    assert cfg.task.sha256 == hashlib.sha256(text).hexdigest()
    before = config_hash(cfg)
    (tmp_path / "data" / "text.txt").write_bytes(text.replace(b"fox", b"cat"))
    assert config_hash(load_config(cfg_path)) != before  # other data, another experiment
    # The resolved config pins the text it was made from: an edit since is caught.
    resolved = tmp_path / "resolved.yaml"
    resolved.write_text(dump_yaml(cfg))
    with pytest.raises(UserError, match="sha256") as info:
        load_config(resolved)
    assert info.value.key == "task.sha256"


def test_lm_without_path_learns_gradlabs_source():
    cfg = ExperimentConfig.model_validate(dict(name="l", model=dict(kind="gru"), task=dict(kind="lm")))
    from gradlab.config.loading import _Origins, _resolve_text

    resolved = _resolve_text(cfg, Path("x.yaml"), _Origins("x.yaml", {}))
    from gradlab.texts import default_text, sha256

    assert resolved.task.path is None and resolved.task.sha256 == sha256(default_text())
    assert "path" in resolved.resolved()["task"] and "sha256" in resolved.resolved()["task"]


@pytest.mark.parametrize("text, seq_len, fragment", [
    (b"abc" * 40 + b"\xff" + b"abc", 4, "not UTF-8 text (byte 0xff at byte offset 120)"),
    (b"abcdefghij" * 8, 8, "has 80 characters; seq_len 8 needs at least 90"),
])
def test_lm_bad_texts_name_the_file_key_and_line(tmp_path, text, seq_len, fragment):
    cfg_path = write_lm(tmp_path, text, seq_len)
    with pytest.raises(UserError) as info:
        load_config(cfg_path)
    e = info.value
    assert (e.file, e.key, e.line) == (str(cfg_path), "task.path", 6) and fragment in e.message


@pytest.mark.parametrize("path, fragment", [("nope.txt", "no such file"), ("data", "is a directory")])
def test_lm_missing_file_or_directory(tmp_path, path, fragment):
    cfg_path = write_lm(tmp_path, b"x" * 1000, path=path)
    with pytest.raises(UserError) as info:
        load_config(cfg_path)
    assert (info.value.key, info.value.line) == ("task.path", 6) and fragment in info.value.message


# ----------------------------------------------------------------------------- through the CLI

def test_an_lm_experiment_end_to_end_resumes_and_draws_the_held_out_loss(tmp_path):
    """gradlab run on a text beside the config: report.json carries final and best val_loss,
    the run store accepts them (a second run recomputes nothing), loss.png is drawn."""
    import json

    from conftest import cli

    text = "".join(f"line {i}: the cat sat on the mat {i % 7}\n" for i in range(60))
    cfg_path = write_lm(tmp_path, text.encode(), seq_len=12)
    out = tmp_path / "out"
    args = ["run", cfg_path, "--out", out, "--workers", "1", "--quiet", "--set", "train.steps=8",
            "--set", "task.batch_size=4"]
    assert cli(*args) == 0
    (exp,) = out.iterdir()
    reports = json.loads((exp / "summary.json").read_text())
    assert len(reports) == 2
    for r in reports:
        assert r["final_val_loss"] is not None and r["best_val_loss"] <= r["final_val_loss"]
    assert (exp / "plots" / "loss.png").is_file()
    stamps = {p: p.stat().st_mtime_ns for p in exp.rglob("report.json")}
    assert cli(*args) == 0
    assert {p: p.stat().st_mtime_ns for p in exp.rglob("report.json")} == stamps  # complete: kept


def test_runs_written_before_the_held_out_split_are_complete_and_kept(tmp_path):
    """A run of a gradlab without val_loss (its metrics.csv lacks the column, its report the
    fields) is complete for the run store, and a rerun keeps it rather than redoing it."""
    import csv
    import json

    from conftest import cli
    from gradlab.store import check_run

    out = tmp_path / "out"
    args = ["run", ROOT / "configs" / "quickstart.yaml", "--out", out, "--workers", "1", "--quiet", "--no-plots",
            "--seeds", "0", "--set", "train.steps=5"]
    assert cli(*args) == 0
    (exp,) = out.iterdir()
    for d in (exp / "runs").iterdir():
        with open(d / "metrics.csv", newline="") as fh:
            rows = list(csv.reader(fh))
        keep = [i for i, c in enumerate(rows[0]) if c != "val_loss"]
        assert len(keep) == len(rows[0]) - 1
        with open(d / "metrics.csv", "w", newline="") as fh:
            csv.writer(fh, lineterminator="\n").writerows([[r[i] for i in keep] for r in rows])
        rep = json.loads((d / "report.json").read_text())
        for key in ("final_val_loss", "best_val_loss"):
            del rep[key]
        (d / "report.json").write_text(json.dumps(rep, indent=2) + "\n")
        assert check_run(exp, d.name)[0] == "complete", check_run(exp, d.name)
    before = {p: p.read_bytes() for p in (exp / "runs").rglob("*") if p.is_file()}
    assert cli(*args) == 0
    assert {p: p.read_bytes() for p in (exp / "runs").rglob("*") if p.is_file()} == before


def test_a_bad_path_from_set_names_the_option_and_a_fifo_is_refused_without_reading(tmp_path):
    import os

    cfg_path = write_lm(tmp_path, b"abcdefghij" * 100)
    with pytest.raises(UserError) as info:
        load_config(cfg_path, ["task.path=missing.txt"])
    e = info.value
    assert (e.file, e.key, e.line) == ("--set task.path=missing.txt", "task.path", None)
    assert "missing.txt: no such file" in e.message
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(UserError, match="not a regular file") as info:
        load_config(cfg_path, ["task.path=pipe"])  # would block forever if it were opened
    assert info.value.key == "task.path"


@pytest.mark.parametrize("case", CASES)
def test_the_held_out_set_is_fixed_per_seed_and_none_of_the_training_batches(case):
    from gradlab.tasks import build_task

    cfg = small(*CASES[case])
    task = build_task(cfg.task, "float32", seed_streams(3)["task"])
    held = task.heldout(seed_streams(3)["heldout"], 4)
    again = task.heldout(seed_streams(3)["heldout"], 4)
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(held, again))
    data = seed_streams(3)["data"]
    training = [task.batch(data) for _ in range(20)]
    assert not any(np.array_equal(h[0], t[0]) for h in held for t in training)
    other = task.heldout(seed_streams(4)["heldout"], 4)
    assert not np.array_equal(held[0][0], other[0][0])  # another seed, another held-out set
