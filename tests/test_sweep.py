"""gradlab sweep: the command, its option checks, workers and lockstep that change nothing,
interruption (Ctrl-C, SIGTERM, kill -9) and resume, and the experiment lock."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import cli

from gradlab.config import load_config
from gradlab.experiment import prepare, run_experiment
from gradlab.store import experiment_lock

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
SHORT = ["--set", "train.steps=25", "--set", "model.depth=6"]


def test_sweep_replaces_the_clipping_list_and_gets_its_own_directory(tmp_path):
    assert cli("sweep", QUICKSTART, "--thresholds", "10,0.5,2", "--seeds", "0", *SHORT, "--out", tmp_path, "--quiet", "--no-plots") == 0
    (exp,) = tmp_path.iterdir()
    cfg = yaml.safe_load((exp / "config.yaml").read_text())
    assert cfg["sweep"] == {"method": "norm", "thresholds": [0.5, 2.0, 10.0], "baseline": True}
    assert [c.get("max_norm") for c in cfg["clipping"]] == [None, 0.5, 2.0, 10.0]
    runs = sorted(p.name for p in (exp / "runs").iterdir())
    assert runs == ["none-s0", "norm-0.5-s0", "norm-10-s0", "norm-2-s0"]
    # a run of a config with that very clipping list is a different experiment
    plain = load_config(QUICKSTART, ["train.steps=25", "model.depth=6"], [0])
    assert prepare(plain, tmp_path) != exp


def test_value_method_without_baseline(tmp_path):
    assert cli("sweep", QUICKSTART, "--thresholds", "0.01,0.1", "--method", "value", "--no-baseline",
               "--seeds", "1", *SHORT, "--out", tmp_path, "--quiet", "--no-plots") == 0
    (exp,) = tmp_path.iterdir()
    assert sorted(p.name for p in (exp / "runs").iterdir()) == ["value-0.01-s1", "value-0.1-s1"]


BAD = [
    (["--thresholds", "1,,2"], "--thresholds: an empty item"),
    (["--thresholds", "abc"], "--thresholds: `abc` is not a number"),
    (["--thresholds", "-1"], "--thresholds: `-1` is not a positive finite number"),
    (["--thresholds", "0"], "--thresholds: `0` is not a positive finite number"),
    (["--thresholds", "nan"], "--thresholds: `nan` is not a positive finite number"),
    (["--thresholds", "inf"], "--thresholds: `inf` is not a positive finite number"),
    (["--thresholds", ""], "--thresholds: an empty list"),
    (["--thresholds", "1,2,1"], "--thresholds: `1` appears twice"),
    (["--thresholds", "1", "--seeds", "-1"], "--seeds"),
    (["--thresholds", "1", "--workers", "0"], "--workers"),
    (["--thresholds", "1", "--method", "clip"], "--method: must be one of norm, value, per_tensor"),
    ([], "--thresholds"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[" ".join(a) or "missing" for a, _ in BAD])
def test_bad_sweep_options_exit_2_with_one_line(tmp_path, capsys, args, message):
    assert cli("sweep", QUICKSTART, *args, "--out", tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "out").exists()


def test_results_do_not_depend_on_workers_or_lockstep(tmp_path):
    """Bit for bit: one process or two, variants stacked or one at a time."""
    cfg = load_config(QUICKSTART, ["train.steps=20", "model.depth=6"], [0, 1, 2],
                      sweep={"method": "norm", "thresholds": [0.5, 5.0], "baseline": True})
    outs = {}
    for name, kw in {"serial": dict(workers=1), "parallel": dict(workers=2),
                     "unstacked": dict(workers=1, lockstep=False)}.items():
        exp = run_experiment(cfg, tmp_path / name, plots=False, **kw)
        outs[name] = {str(p.relative_to(exp)): p.read_bytes()
                      for p in sorted((exp / "runs").rglob("*")) if p.is_file()}
    assert len(outs["serial"]) == 3 * 3 * 3
    assert outs["parallel"] == outs["serial"]
    assert outs["unstacked"] == outs["serial"]


def _start(args, tmp_path):
    return subprocess.Popen([sys.executable, "-m", "gradlab.cli", *map(str, args), "--out", str(tmp_path), "--quiet"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_reports(tmp_path, n, proc, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline and len(list(tmp_path.rglob("report.json"))) < n:
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.02)


SWEEP = ["sweep", QUICKSTART, "--thresholds", "1,10", "--seeds", "0,1,2,3", "--set", "train.steps=300", "--no-plots"]


@pytest.mark.parametrize("sig, code, workers", [(signal.SIGINT, 130, "1"), (signal.SIGINT, 130, "2"),
                                                (signal.SIGTERM, 143, "2")])
def test_interrupt_keeps_finished_runs_and_resume_completes_only_the_rest(tmp_path, sig, code, workers):
    proc = _start([*SWEEP, "--workers", workers], tmp_path)
    _wait_for_reports(tmp_path, 3, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err and "run the same command to resume" in err
    kept = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("report.json")}
    assert 3 <= len(kept) < 12 and not list(tmp_path.rglob("*.tmp"))
    assert cli(*SWEEP, "--workers", workers, "--out", tmp_path, "--quiet") == 0
    after = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("report.json")}
    assert len(after) == 12
    assert all(after[p] == t for p, t in kept.items())  # finished runs were not recomputed


def test_kill_9_is_repaired_with_the_same_numbers(tmp_path):
    ref = tmp_path / "ref"
    args = [*SWEEP[:5], "0,1,2", "--set", "train.steps=300", "--no-plots"]
    assert cli(*args, "--out", ref, "--quiet", "--workers", "1") == 0
    broken = tmp_path / "broken"
    proc = _start([*args, "--workers", "2"], broken)
    _wait_for_reports(broken, 1, proc)
    proc.kill()
    proc.wait()
    # a run folder whose report.json never came, and a temp file, as a kill mid-write leaves them
    (exp,) = broken.iterdir()
    half = exp / "runs" / "norm-10-s2"
    half.mkdir(parents=True, exist_ok=True)
    (half / "report.json").unlink(missing_ok=True)
    (half / "metrics.csv").write_text("step,loss\n0,")
    (half / ".report.json.abc.tmp").write_text("{")
    assert cli(*args, "--out", broken, "--quiet", "--workers", "2") == 0
    (ref_exp,) = ref.iterdir()
    for p in sorted((ref_exp / "runs").rglob("*")):
        if p.is_file():
            assert (exp / p.relative_to(ref_exp)).read_bytes() == p.read_bytes(), p
    assert not list(exp.rglob("*.tmp"))


def test_a_second_process_on_the_same_experiment_is_refused(tmp_path, capsys):
    cfg = load_config(QUICKSTART, ["train.steps=5"], [0])
    exp = prepare(cfg, tmp_path)
    with experiment_lock(exp):
        assert cli("run", QUICKSTART, "--set", "train.steps=5", "--seeds", "0", "--out", tmp_path) == 2
    err = capsys.readouterr().err
    assert f"in use by another gradlab process (pid {os.getpid()})" in err
    assert cli("run", QUICKSTART, "--set", "train.steps=5", "--seeds", "0", "--out", tmp_path, "--quiet", "--no-plots") == 0


def test_workers_limit_blas_to_one_thread_even_when_numpy_is_not_loaded_yet():
    """The CLI loads NumPy lazily, so a worker may start without it: the limit must still hold
    (it did not once, and two oversubscribed workers ran a sweep 70x slower)."""
    code = ("import sys; from gradlab.executors import limit_blas_threads; "
            "assert 'numpy' not in sys.modules; print(limit_blas_threads())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "1"


@pytest.mark.parametrize("damage", ["report", "metrics", "layers"])
def test_damaged_runs_are_detected_warned_about_and_redone(tmp_path, capsys, damage):
    args = ["run", QUICKSTART, "--set", "train.steps=15", "--set", "model.depth=4", "--seeds", "0",
            "--out", tmp_path, "--quiet", "--no-plots"]
    assert cli(*args) == 0
    (exp,) = tmp_path.iterdir()
    run = exp / "runs" / "norm-1-s0"
    good = {p.name: p.read_bytes() for p in run.iterdir()}
    target = {"report": "report.json", "metrics": "metrics.csv", "layers": "layer_norms.csv"}[damage]
    data = good[target]
    (run / target).write_bytes(data[: len(data) // 2])  # cut short, as a full disk or a crash would
    capsys.readouterr()
    assert cli(*args) == 0
    err = capsys.readouterr().err
    assert "warning: run norm-1-s0: its files are damaged" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == good  # redone, same numbers
    summary = json.loads((exp / "summary.json").read_text())
    assert [r["run_id"] for r in summary] == ["none-s0", "norm-1-s0", "norm-10-s0"]
