"""Grid sweeps (`--grid KEY=V1,V2`, the config's `grid:`): the runs are the points x the
clipping variants x the seeds, a point trains exactly as `gradlab run --set KEY=VALUE` of it,
the hash covers the grid, run ids name the point, and a resume computes only what is missing.
The bad grid inputs are in the bad-input corpus (test_bad_inputs.py, cases grid_*)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import cli
from gradlab.config import config_hash, dump_yaml, load_config
from gradlab.config.grid import grid_points, planned, stack_key
from gradlab.experiment import collect_reports, run_experiment
from gradlab.points import label_value, point_label, short_names

BASE = """\
name: tiny_grid
seeds: [0, 1]
model: {kind: mlp, depth: 3, width: 8, activation: tanh}
task: {kind: teacher, batch_size: 16, input_dim: 4}
train: {steps: 25, optimizer: {kind: sgd, lr: 0.05, momentum: 0.9}}
clipping: [{method: none}, {method: norm, max_norm: 1.0}]
"""
GRID = ["--grid", "train.optimizer.lr=0.05,2.5", "--grid", "model.depth=2,3"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """One grid sweep (two worker processes, plots drawn), shared by the tests that read it."""
    tmp = tmp_path_factory.mktemp("grid")
    (tmp / "tiny.yaml").write_text(BASE)
    code = cli("sweep", tmp / "tiny.yaml", *GRID, "--thresholds", "1", "--out", tmp / "out", "--workers", "2",
               "--quiet")
    assert code == 0
    (exp,) = (tmp / "out").iterdir()
    return tmp, exp


def test_runs_are_points_x_variants_x_seeds_with_readable_unique_ids(swept):
    _, exp = swept
    ids = sorted(str(p.parent.relative_to(exp / "runs")) for p in (exp / "runs").glob("*/*/report.json"))
    points = ["lr=0.05,depth=2", "lr=0.05,depth=3", "lr=2.5,depth=2", "lr=2.5,depth=3"]
    assert ids == sorted(f"{p}/{v}-s{s}" for p in points for v in ("none", "norm-1") for s in (0, 1))
    reports = collect_reports(exp)
    assert [r["run_id"] for r in reports][:4] == ["lr=0.05,depth=2/none-s0", "lr=0.05,depth=2/norm-1-s0",
                                                  "lr=0.05,depth=2/none-s1", "lr=0.05,depth=2/norm-1-s1"]
    rep = json.loads((exp / "runs" / "lr=2.5,depth=3" / "norm-1-s1" / "report.json").read_text())
    assert list(rep["grid"].items()) == [("train.optimizer.lr", 2.5), ("model.depth", 3)]
    summary = json.loads((exp / "summary.json").read_text())
    assert [e["grid"] for e in summary] == [r["grid"] for r in reports]
    config = (exp / "config.yaml").read_text()
    assert "grid:\n  train.optimizer.lr:\n  - 0.05\n  - 2.5\n  model.depth:\n  - 2\n  - 3\n" in config


def test_a_grid_run_equals_a_plain_run_of_its_point_bit_for_bit(swept):
    tmp, exp = swept
    code = cli("sweep", tmp / "tiny.yaml", "--set", "train.optimizer.lr=2.5", "--set", "model.depth=3",
               "--thresholds", "1", "--out", tmp / "plain", "--workers", "1", "--quiet", "--no-plots")
    assert code == 0
    (plain,) = (tmp / "plain").iterdir()
    for rid in ("none-s0", "norm-1-s1"):
        for name in ("metrics.csv", "layer_norms.csv"):
            assert (plain / "runs" / rid / name).read_bytes() == \
                (exp / "runs" / "lr=2.5,depth=3" / rid / name).read_bytes()
    # The points really differ: lr 2.5 without clipping is not lr 0.05's run.
    assert (exp / "runs" / "lr=2.5,depth=3" / "none-s0" / "metrics.csv").read_bytes() != \
        (exp / "runs" / "lr=0.05,depth=3" / "none-s0" / "metrics.csv").read_bytes()


def test_plots_and_report_of_a_grid(swept):
    _, exp = swept
    names = sorted(p.name for p in (exp / "plots").glob("*.png"))
    # The small multiples per point (first seed), not per run; no threshold x seed figures,
    # which would mix the points.
    assert [n for n in names if n.startswith("heatmap")] == [
        "heatmaps_lr=0.05,depth=2_s0.png", "heatmaps_lr=0.05,depth=3_s0.png",
        "heatmaps_lr=2.5,depth=2_s0.png", "heatmaps_lr=2.5,depth=3_s0.png"]
    assert not [n for n in names if n.startswith("sweep_")]
    report = (exp / "report.md").read_text()
    assert "Grid over `train.optimizer.lr` (0.05, 2.5) and `model.depth` (2, 3): 4 points" in report
    # The findings are the grid's (gradlab.stability): per axis, what trained with and without clipping.
    findings = report[report.index("## Findings"):report.index("## Grid")]
    assert findings.count("Grid of 2 lr x 2 depth x 2 clipping over 2 seeds.") == 1, findings
    assert "![stability_map_lr_depth](plots/stability_map_lr_depth.png)" in report
    assert "## Threshold x seed" not in report
    assert cli("report", exp) == 0  # (the sweep drew the plots as `gradlab plot` does: experiment.finish)


def test_resume_computes_only_the_missing_runs(swept, tmp_path):
    src, exp = swept
    import shutil

    work = tmp_path / "out" / exp.name
    shutil.copytree(exp, work)
    (work / "runs" / "lr=0.05,depth=2" / "norm-1-s0" / "report.json").unlink()
    shutil.rmtree(work / "runs" / "lr=2.5,depth=3")
    kept = {p: p.stat().st_mtime_ns for p in (work / "runs").glob("*/*/metrics.csv")
            if (p.parent / "report.json").exists()}

    class Seen:
        def start(self, total_steps, n_runs, n_skipped):
            self.args = (total_steps, n_runs, n_skipped)

        def advance(self, steps): ...
        def note(self, text): ...
        def warn(self, text): ...

    seen = Seen()
    cfg = load_config(src / "tiny.yaml", sweep={"method": "norm", "thresholds": [1.0], "baseline": True},
                      grid=GRID[1::2])
    assert run_experiment(cfg, tmp_path / "out", progress=seen, plots=False, workers=1) == work
    assert seen.args == (3 * 25, 5, 11)  # 3 stacks (a point's seed): 1 + 2 x 2 runs; 11 of 16 kept
    assert {p: p.stat().st_mtime_ns for p in kept} == kept
    for p in (work / "runs").glob("*/*/*.csv"):
        assert p.read_bytes() == (exp / p.relative_to(work)).read_bytes()
    assert len(collect_reports(work)) == 16


def test_the_hash_covers_the_grid_and_the_file_grid_equals_the_option(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(BASE)
    plain = load_config(path)
    assert "grid" not in plain.resolved()
    a = load_config(path, grid=["train.optimizer.lr=0.05,2.5"])
    b = load_config(path, grid=["train.optimizer.lr=0.05,2"])
    assert len({config_hash(plain), config_hash(a), config_hash(b)}) == 3
    (tmp_path / "filed.yaml").write_text(BASE + "grid:\n  train.optimizer.lr: [0.05, 2.5]\n")
    filed = load_config(tmp_path / "filed.yaml", overrides=["name=tiny_grid"])
    assert config_hash(filed) == config_hash(a)
    # --grid replaces the file's axis of its key; the resolved config.yaml reads back to the same.
    assert config_hash(load_config(tmp_path / "filed.yaml", grid=["train.optimizer.lr=0.05,2"])) == config_hash(b)
    (tmp_path / "again.yaml").write_text(dump_yaml(a))
    assert config_hash(load_config(tmp_path / "again.yaml")) == config_hash(a)
    # An int for a float key is that float: one experiment, not two.
    assert config_hash(load_config(path, grid=["train.optimizer.lr=1,2"])) == \
        config_hash(load_config(path, grid=["train.optimizer.lr=1.0,2.0"]))


def test_the_hash_covers_the_points_themselves(tmp_path, capsys):
    """Two files with one resolved form can make different points (a kind's defaults): the
    points' digest in the resolved config keeps them apart, and a config.yaml run again
    whose points come out otherwise is refused rather than trained into the old directory."""
    (tmp_path / "a.yaml").write_text("name: adam\ntrain: {optimizer: {kind: adam, lr: 0.01}}\n")
    (tmp_path / "b.yaml").write_text("name: adam\ntrain: {optimizer: {kind: adam, lr: 0.01, weight_decay: 0.0}}\n")
    a, b = (load_config(tmp_path / f, grid=["train.optimizer.kind=adam,adamw"]) for f in ("a.yaml", "b.yaml"))
    assert {k: v for k, v in a.resolved().items() if k != "grid_sha256"} == \
        {k: v for k, v in b.resolved().items() if k != "grid_sha256"}
    assert [p.train.optimizer.weight_decay for _, p in grid_points(a)] == [0.0, 0.01]
    assert [p.train.optimizer.weight_decay for _, p in grid_points(b)] == [0.0, 0.0]
    assert config_hash(a) != config_hash(b)
    (tmp_path / "again.yaml").write_text(dump_yaml(a))
    assert cli("validate", tmp_path / "again.yaml") == 2
    err = capsys.readouterr().err
    assert f"again.yaml:{len(dump_yaml(a).splitlines())}: grid_sha256: the grid's points hash to" in err
    (tmp_path / "again.yaml").write_text(dump_yaml(b))
    assert config_hash(load_config(tmp_path / "again.yaml")) == config_hash(b)


def test_a_point_is_built_as_set_builds_it(tmp_path):
    """Defaults that depend on other values follow the point, as with --set: a transformer's
    positional table from the task's seq_len, an optimizer kind's own defaults."""
    path = tmp_path / "tf.yaml"
    path.write_text("name: tf\nmodel: {kind: transformer, depth: 1, width: 8, heads: 2}\n"
                    "task: {kind: dyck, seq_len: 8}\ntrain: {optimizer: {kind: adam, lr: 0.01}}\n")
    cfg = load_config(path, grid=["task.seq_len=8,16", "train.optimizer.kind=adam,adamw"])
    for point, pcfg in grid_points(cfg):
        sets = [f"{k}={v}" for k, v in point.items()]
        assert pcfg == load_config(path, sets)
    assert [p.model.max_len for _, p in grid_points(cfg)] == [8, 8, 16, 16]
    assert [p.train.optimizer.weight_decay for _, p in grid_points(cfg)] == [0.0, 0.01, 0.0, 0.01]


def test_stack_key_separates_shapes_from_hyperparameters(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(BASE)
    same = load_config(path, grid=["train.optimizer.lr=0.05,2.5", "train.optimizer.momentum=0,0.9",
                                   "clipping.1.max_norm=1,2"])
    assert len({stack_key(p) for _, p in grid_points(same)}) == 1
    for axis in ("model.depth=2,3", "task.batch_size=8,16", "train.steps=5,10", "train.optimizer.nesterov=false,true",
                 "model.init.gain=1,2"):
        cfg = load_config(path, grid=[axis])
        assert len({stack_key(p) for _, p in grid_points(cfg)}) == 2, axis


def test_a_grid_point_edited_in_a_report_is_damage(swept, tmp_path):
    import shutil

    _, exp = swept
    work = tmp_path / exp.name
    shutil.copytree(exp, work)
    path = work / "runs" / "lr=0.05,depth=2" / "none-s0" / "report.json"
    rep = json.loads(path.read_text())
    rep["grid"]["model.depth"] = 3
    path.write_text(json.dumps(rep))
    damaged: list = []
    assert len(collect_reports(work, damaged)) == 15
    assert damaged == [("lr=0.05,depth=2/none-s0",
                        "report.json: its variant, grid point and seed make run lr=0.05,depth=3/none-s0")]


def test_validate_and_run_take_the_grid(tmp_path, capsys):
    path = tmp_path / "tiny.yaml"
    path.write_text(BASE)
    assert cli("validate", path, *GRID, "--out", tmp_path / "out") == 0
    out = capsys.readouterr().out
    assert "# valid: 16 run(s) (4 grid point(s) x 2 variant(s) x 2 seed(s))" in out
    assert not (tmp_path / "out").exists()


def test_sweep_with_a_grid_and_no_thresholds_keeps_the_clipping_list(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(BASE.replace("steps: 25", "steps: 3"))
    assert cli("sweep", path, "--grid", "train.optimizer.lr=0.05,2.5", "--out", tmp_path / "out", "--quiet",
               "--no-plots", "--workers", "1") == 0
    (exp,) = (tmp_path / "out").iterdir()
    assert sorted(str(p.parent.relative_to(exp / "runs")) for p in (exp / "runs").glob("*/*/report.json")) == \
        sorted(f"lr={lr}/{v}-s{s}" for lr in ("0.05", "2.5") for v in ("none", "norm-1") for s in (0, 1))


def test_labels_short_names_and_run_ids():
    assert short_names(["train.optimizer.lr", "model.depth"]) == {"train.optimizer.lr": "lr", "model.depth": "depth"}
    assert short_names(["model.depth", "task.depth", "train.optimizer.betas.0"]) == \
        {"model.depth": "model.depth", "task.depth": "task.depth", "train.optimizer.betas.0": "betas.0"}
    assert point_label({"train.optimizer.lr": 0.1, "model.depth": 8}) == "lr=0.1,depth=8"
    assert point_label({"train.optimizer.betas": [0.9, 0.99], "task.path": "data/x.txt", "train.optimizer.nesterov":
                        True}) == "betas=0.9+0.99,path=data_x.txt,nesterov=true"
    assert [r.run_id for r in planned(load_config(Path(__file__).parents[1] / "configs" / "quickstart.yaml"))] == \
        [f"{v}-s{s}" for s in (0, 1, 2) for v in ("none", "norm-1", "norm-10")]  # no grid: today's ids


@settings(max_examples=150, deadline=None)
@given(st.lists(st.floats(min_value=1e-12, max_value=1e12), min_size=2, max_size=6, unique=True))
def test_distinct_values_have_distinct_labels(values):
    labels = [label_value(v) for v in values]
    assert len(set(labels)) == len(labels)
    assert all("/" not in x and x for x in labels)
    assert all(float(x) == v for x, v in zip(labels, values))


def test_the_memory_of_every_point_is_checked(tmp_path, monkeypatch):
    """A depth that no longer fits is refused before anything is written, naming --grid, the key and the value."""
    path = tmp_path / "tiny.yaml"
    path.write_text(BASE)
    code = cli("sweep", path, "--grid", "model.width=8,300000", "--thresholds", "1", "--out", tmp_path / "out")
    assert code == 2 and not (tmp_path / "out").exists()
    assert os.listdir(tmp_path) == ["tiny.yaml"]


def test_points_differing_in_hyperparameters_share_a_stack(tmp_path, monkeypatch):
    """lr points of one depth and seed train in one stack (train_seed's `configs`), cut
    between points only to use the cores."""
    from gradlab import experiment

    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    path = tmp_path / "tiny.yaml"
    path.write_text(BASE)
    cfg = load_config(path, grid=["train.optimizer.lr=0.05,0.5,2.5", "model.depth=2,3"])
    plans = experiment.plan(cfg, tmp_path)
    # (depth, seed) stacks of 3 points x 2 variants, each point of one depth.
    assert [(p.seed, sorted({k for k, _ in p.todo})) for p in plans] == \
        [(0, [0, 2, 4]), (1, [0, 2, 4]), (0, [1, 3, 5]), (1, [1, 3, 5])]
    assert all(len(p.todo) == 6 for p in plans)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)  # more cores than stacks: cut between points
    plans = experiment.plan(cfg, tmp_path)
    assert len(plans) == 8  # each (depth, seed) stack cut in two (2 + 1 points)
    assert sorted(t for p in plans for t in p.todo) == sorted((k, i) for k in range(6) for i in range(2) for _ in (0, 1))


def test_ctrl_c_keeps_the_finished_grid_runs_and_the_same_command_completes_them(tmp_path):
    """SIGINT to the process group (a terminal's Ctrl-C) in the middle of a grid sweep: exit
    130 with the finished runs kept, and the same command computes the rest (that a resume
    gives the bytes of an uninterrupted sweep: test_resume_computes_only_the_missing_runs)."""
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "long.yaml"
    # Three seeds on two workers: a third stack is still to train when the first is written.
    path.write_text(BASE.replace("steps: 25", "steps: 600").replace("width: 8", "width: 32")
                    .replace("seeds: [0, 1]", "seeds: [0, 1, 2]"))
    args = [sys.executable, "-m", "gradlab.cli", "sweep", str(path), "--grid", "train.optimizer.lr=0.01,0.02,0.05,0.1",
            "--thresholds", "1", "--no-plots", "--quiet", "--out", str(tmp_path / "out"), "--workers", "2"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (seen := list(tmp_path.glob("out/*/runs/*/*/report.json"))) and proc.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    kept = len(list(tmp_path.glob("out/*/runs/*/*/report.json")))
    # (Not always fewer than all: today's worker pool sometimes trains on for seconds after a
    # Ctrl-C, in a plain sweep as in a grid; the runs it finishes are complete and kept.)
    assert kept >= len(seen) > 0 and f"{kept} complete run(s) kept" in err, err
    assert subprocess.run(args, capture_output=True).returncode == 0
    (exp,) = list((tmp_path / "out").iterdir())
    reports = collect_reports(exp)
    assert len(reports) == 24 and all(r["steps"] == 600 for r in reports)
