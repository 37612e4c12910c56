"""Reliability (issue 7): kill -9 at random moments, files damaged between runs, and `plot` /
`report` on experiments that are only partly there.

The contract under test (the README's "The experiment directory"): nothing is ever half-written, a
killed experiment resumes to the very bytes of an uninterrupted one, a damaged run is named,
warned about and redone, and summary.json is derived from the runs, never trusted.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import cli, live_processes

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def snapshot(exp: Path) -> dict[str, bytes]:
    """Every file of an experiment by relative path, but the lock file (flock's, always empty)."""
    return {str(p.relative_to(exp)): p.read_bytes() for p in sorted(exp.rglob("*"))
            if p.is_file() and p.name != ".lock"}


def results(exp: Path) -> dict[str, bytes]:
    """What must not depend on how the experiment got there: runs/ and summary.json."""
    return {k: v for k, v in snapshot(exp).items() if k.startswith("runs/") or k == "summary.json"}


# ----------------------------------------------------------------------------- kill -9

SWEEP = ["sweep", QUICKSTART, "--thresholds", "1,10", "--seeds", "0,1,2", "--set", "train.steps=150",
         "--no-plots", "--workers", "2", "--quiet"]


def _start(out: Path, log: Path) -> subprocess.Popen:
    """`gradlab sweep` in a session of its own: its process group is it and its workers
    (forked by multiprocessing, so they stay in the group), all killed with one killpg."""
    with open(log, "ab") as err:
        return subprocess.Popen([sys.executable, "-m", "gradlab.cli", *map(str, SWEEP), "--out", str(out)],
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)


def _group_size(pgid: int) -> int:
    """Live (not zombie) processes in the group: ones that could still hold the lock or write."""
    n = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        n += int(fields[2]) == pgid and fields[0] != "Z"
    return n


def _group_alive(pgid: int) -> bool:
    return _group_size(pgid) > 0


def _entries(out: Path, runs_only: bool) -> int:
    """Files under runs/ (and with not `runs_only`, the experiment's own temporary files: the
    config, the lock owner, the summary), temporary ones included: a new one means a write."""
    return sum(1 for _ in out.glob("*/runs/*/*")) + (0 if runs_only else sum(1 for _ in out.glob("*/.*.tmp")))


def _kill_at(proc: subprocess.Popen, out: Path, mode: str, rng: random.Random, span: float) -> bool:
    """SIGKILL the whole group at a moment chosen by `mode`; False when it finished first.

    early: in the first quarter of an uninterrupted run (imports, planning, training, before
    any run is written); anytime: uniform over a whole run; on_run_write: the moment a new
    file shows up under runs/, i.e. in the middle of writing a seed's runs; on_write: the
    same, or a temporary file of the experiment's own (config, lock owner, summary)."""
    deadline = time.monotonic() + (rng.uniform(0, span / 4) if mode == "early" else
                                   rng.uniform(0, span) if mode == "anytime" else 60)
    runs_only = mode == "on_run_write"
    before = _entries(out, runs_only)
    while proc.poll() is None and time.monotonic() < deadline:
        if mode.startswith("on_") and _entries(out, runs_only) > before:
            break
        time.sleep(0.001)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    end = time.monotonic() + 30
    while _group_alive(proc.pid) and time.monotonic() < end:  # orphaned workers die a moment later
        time.sleep(0.005)
    assert not _group_alive(proc.pid), "a worker survived SIGKILL of its process group"
    if proc.returncode != -signal.SIGKILL:
        assert proc.returncode == 0
        return False
    return True


def _state(out: Path) -> dict:
    """What a kill left behind, for the log of the loop."""
    runs = [d for d in out.glob("*/runs/*") if d.is_dir()]
    return {"complete": sum((d / "report.json").is_file() for d in runs),
            "partial": sum(not (d / "report.json").is_file() for d in runs),
            "tmp": len(list(out.rglob("*.tmp"))),
            "stale_owner": any(out.glob("*/.lock.owner"))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[dict[str, bytes], float]:
    """An uninterrupted sweep (same command, same workers): its files and how long it took,
    which only scales the random kill moments."""
    out = tmp_path_factory.mktemp("reference")
    t0 = time.monotonic()
    proc = _start(out, out / "stderr.log")
    assert proc.wait(timeout=300) == 0, (out / "stderr.log").read_text()
    span = time.monotonic() - t0
    (exp,) = [d for d in out.iterdir() if d.is_dir()]
    files = snapshot(exp)
    assert len([k for k in files if k.endswith("report.json")]) == 9
    return files, span


def kill_and_resume(tmp_path: Path, reference, kills: int, seed: int, modes=None) -> list[dict]:
    """Kill the sweep `kills` times (restarting it after each), in rounds: a round ends when a
    restart gets to finish before its kill; then it is run to the end and compared, byte for
    byte, with the reference, and the next round starts from an empty directory."""
    files, span = reference
    rng = random.Random(seed)
    log: list[dict] = []
    rounds = 0
    while len(log) < kills:
        out = tmp_path / f"round{rounds}"
        stderr = tmp_path / f"round{rounds}.log"
        while len(log) < kills:
            mode = modes[len(log)] if modes else rng.choice(["early", "anytime", "on_write", "on_run_write"])
            if not _kill_at(_start(out, stderr), out, mode, rng, span):
                break
            log.append({"round": rounds, "mode": mode, **_state(out)})
        proc = _start(out, stderr)  # and let it finish
        assert proc.wait(timeout=300) == 0, stderr.read_text()
        err = stderr.read_text()
        assert "in use by another gradlab process" not in err and "Traceback" not in err, err
        (exp,) = [d for d in out.iterdir() if d.is_dir()]
        got = snapshot(exp)
        assert sorted(got) == sorted(files), log  # no *.tmp, no .lock.owner, nothing missing
        for name, data in files.items():
            assert got[name] == data, (name, log)
        rounds += 1
    return log


def test_kill_9_three_times_then_resume_gives_the_same_bytes(tmp_path, reference):
    """One kill before any run is written, one in the middle of a write, one anywhere."""
    log = kill_and_resume(tmp_path, reference, kills=3, seed=7, modes=["early", "on_run_write", "anytime"])
    assert len(log) == 3


@pytest.mark.slow
def test_kill_9_many_times_then_resume_gives_the_same_bytes(tmp_path, reference):
    kills = int(os.environ.get("GRADLAB_KILLS", "30"))
    log = kill_and_resume(tmp_path, reference, kills=kills, seed=2024)
    print(f"\n{kills} kills in {log[-1]['round'] + 1} round(s):")
    for entry in log:
        print("  ", entry)
    assert len(log) == kills


def test_kill_9_of_the_main_process_alone_stops_its_workers(tmp_path):
    """SIGKILL to the `gradlab` process only (`kill -9 PID`, the OOM killer): no handler runs,
    so the workers must notice by themselves, not train on unwatched beside the `gradlab` that
    resumes the experiment (they once trained every seed left, for minutes)."""
    args = ["sweep", QUICKSTART, "--thresholds", "1,10", "--seeds", "0,1,2,3,4,5", "--set", "train.steps=3000",
            "--no-plots", "--workers", "2", "--quiet", "--out", tmp_path]
    proc = subprocess.Popen([sys.executable, "-m", "gradlab.cli", *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while _group_size(proc.pid) < 3 and time.monotonic() < deadline:  # the workers have started
            time.sleep(0.005)
        assert _group_size(proc.pid) == 3
        proc.kill()
        proc.wait()
        at_kill = len(list(tmp_path.rglob("report.json")))
        deadline = time.monotonic() + 60
        while _group_alive(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.01)
        # Gone, also when killed before its tasks reached the workers (they once waited forever);
        # each worker may finish writing the seed it is on, none starts another.
        assert not _group_alive(proc.pid)
        assert len(list(tmp_path.rglob("report.json"))) <= at_kill + 2 * 3
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass



def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_worker_killed_is_reported_at_once_as_what_it_is(tmp_path):
    """A worker killed alone (the OOM killer, kill -9) is no bug: the parent says so at once,
    with the seed and the signal, stops the other worker, keeps the complete runs (exit 3);
    the same command then resumes."""
    args = ["run", QUICKSTART, "--seeds", "0,1,2,3", "--set", "train.steps=3000", "--no-plots", "--workers", "2",
            "--quiet", "--out", tmp_path]
    proc = subprocess.Popen([sys.executable, "-m", "gradlab.cli", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while len(live_processes(parent=proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.005)
        # Both are training once each has run a second of CPU past its imports (each seed
        # takes many seconds): a fixed sleep was too short on a loaded machine, where a worker
        # could still be importing, and the parent rightly said "between seeds".
        while min(map(_cpu_seconds, live_processes(parent=proc.pid)), default=0.0) < 1.5 and time.monotonic() < deadline:
            time.sleep(0.02)
        victim = min(live_processes(parent=proc.pid))
        os.kill(victim, signal.SIGKILL)
        killed = time.monotonic()
        _, err = proc.communicate(timeout=60)
        took = time.monotonic() - killed
        assert proc.returncode == 3, err
        (exp,) = tmp_path.iterdir()
        assert err.startswith("gradlab: error: the worker process for seed ") and err.count("\n") == 1, err
        assert "was killed (signal 9, SIGKILL), perhaps by the out-of-memory killer; 0 complete run(s) kept in " \
            f"{exp}; run the same command to resume" in err, err
        assert "bug" not in err
        assert took < 5, f"reported {took:.1f} s after the kill"  # the other seed would take far longer
        assert not _group_alive(proc.pid)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


# ----------------------------------------------------------------------------- damaged files

# Quickstart's network, 12 steps: none-s0 diverges (step 7), the clipped runs train; one
# threshold per method, so not a sweep (fewer plots to draw).
TINY = """\
name: faults
seeds: [0, 1]
model: {kind: mlp, depth: 16, width: 64, activation: relu, init: {scheme: he, gain: 1.0}}
task: {kind: teacher, batch_size: 64, input_dim: 16, output_dim: 1}
train: {steps: 12, optimizer: {kind: sgd, lr: 0.03, momentum: 0.9}, dtype: float32}
clipping:
  - {method: none}
  - {method: norm, max_norm: 1.0}
  - {method: value, clip_value: 0.1}
"""
RUNS = ["none-s0", "norm-1-s0", "value-0.1-s0", "none-s1", "norm-1-s1", "value-0.1-s1"]


@pytest.fixture(scope="module")
def clean(tmp_path_factory) -> tuple[Path, Path]:
    """(config, experiment directory) of a clean, complete run, never modified."""
    d = tmp_path_factory.mktemp("clean")
    config = d / "tiny.yaml"
    config.write_text(TINY)
    assert cli("run", config, "--out", d / "out", "--quiet", "--no-plots") == 0
    (exp,) = (d / "out").iterdir()
    assert json.loads((exp / "runs" / "none-s0" / "report.json").read_text())["diverged"]
    return config, exp


@pytest.fixture
def exp(clean, tmp_path) -> Path:
    """A copy of the clean experiment, to damage."""
    copy = tmp_path / "out" / clean[1].name
    shutil.copytree(clean[1], copy)
    return copy


def _json(edit):
    return lambda data: json.dumps(edit(json.loads(data)), indent=2).encode()


def _row(i: int, edit):
    """Edit line i (0 is the header) of a CSV."""
    def apply(data: bytes) -> bytes:
        lines = data.decode().split("\n")
        lines[i] = edit(lines[i])
        return "\n".join(lines).encode()
    return apply


def _set(key, value):
    def edit(rep):
        rep[key] = value
        return rep
    return edit


def _drop(key):
    def edit(rep):
        del rep[key]
        return rep
    return edit


DELETE = None
# (run, file, damage: bytes -> bytes or DELETE). test_sweep.py cuts each file in half already.
RUN_DAMAGES = {
    "report-garbage": ("norm-1-s0", "report.json", lambda b: b"\x00\xff\xfe garbage"),
    "report-empty": ("norm-1-s0", "report.json", lambda b: b""),
    "report-a-list": ("norm-1-s0", "report.json", _json(lambda rep: [rep])),
    "report-steps-as-text": ("norm-1-s0", "report.json", _json(_set("steps_completed", "12"))),
    "report-diverged-not-bool": ("norm-1-s0", "report.json", _json(_set("diverged", "no"))),
    "report-no-diverged": ("norm-1-s0", "report.json", _json(_drop("diverged"))),
    "report-clip-fraction-text": ("norm-1-s0", "report.json", _json(_set("clip_fraction", "lots"))),
    "report-of-another-run": ("norm-1-s0", "report.json", _json(_set("run_id", "norm-1-s1"))),
    "report-seed-disagrees": ("norm-1-s0", "report.json", _json(_set("seed", 1))),
    "report-first-nonfinite-text": ("none-s0", "report.json", _json(_set("first_nonfinite", "layer3"))),
    "report-divergence-step-null": ("none-s0", "report.json", _json(_set("divergence_step", None))),
    # Numbers edited by hand: report.json must agree with its own metrics.csv.
    "report-final-loss-edited": ("norm-1-s0", "report.json", _json(_set("final_loss", 0.001))),
    "report-max-grad-norm-edited": ("norm-1-s0", "report.json", _json(_set("max_grad_norm", 1.0))),
    "report-clip-fraction-edited": ("norm-1-s0", "report.json", _json(_set("clip_fraction", 0.0))),
    "report-divergence-step-moved": ("none-s0", "report.json", _json(
        lambda rep: {**rep, "divergence_step": rep["divergence_step"] - 1, "steps_completed": rep["steps_completed"],
                     "first_nonfinite": {**rep["first_nonfinite"], "step": rep["divergence_step"] - 1}})),
    "metrics-last-loss-edited": ("norm-1-s0", "metrics.csv", _row(-2, lambda line: line.split(",", 1)[0] + ",0.5"
                                                              + line[line.index(",", line.index(",") + 1):])),
    "report-environment-not-an-object": ("norm-1-s0", "report.json", _json(_set("environment", "SkylakeX"))),
    "report-environment-without-kernel": ("none-s1", "report.json",
                                          _json(lambda rep: {**rep, "environment": _drop("blas_kernel")(rep["environment"])})),
    "metrics-cut-mid-row": ("norm-1-s0", "metrics.csv", lambda b: b[:-4]),
    "metrics-last-row-gone": ("norm-1-s0", "metrics.csv", lambda b: b[:b.rstrip(b"\n").rfind(b"\n") + 1]),
    "metrics-extra-column": ("norm-1-s0", "metrics.csv", _row(5, lambda line: line + ",1")),
    "metrics-missing-column": ("none-s0", "metrics.csv", _row(3, lambda line: line.rsplit(",", 1)[0])),
    "metrics-not-a-number": ("norm-1-s0", "metrics.csv", _row(2, lambda line: "2,abc" + line[line.index(",", 2):])),
    "metrics-steps-shuffled": ("norm-1-s0", "metrics.csv", _row(4, lambda line: "9" + line[1:])),
    "metrics-wrong-header": ("norm-1-s0", "metrics.csv", _row(0, lambda line: line.replace("grad_norm", "grad"))),
    "metrics-empty": ("norm-1-s0", "metrics.csv", lambda b: b""),
    "metrics-binary": ("norm-1-s0", "metrics.csv", lambda b: b"\xff\xd8\xff" * 100),
    "metrics-deleted": ("norm-1-s0", "metrics.csv", DELETE),
    "layers-extra-column": ("value-0.1-s1", "layer_norms.csv", _row(3, lambda line: line + ",0.5")),
    "layers-cut-mid-row": ("value-0.1-s1", "layer_norms.csv", lambda b: b[:-7]),
    "layers-header-only": ("value-0.1-s1", "layer_norms.csv", lambda b: b[:b.index(b"\n") + 1]),
    "layers-empty": ("value-0.1-s1", "layer_norms.csv", lambda b: b""),
    "layers-deleted": ("value-0.1-s1", "layer_norms.csv", DELETE),
}


def damage(exp: Path, rid: str, name: str, how) -> None:
    path = exp / "runs" / rid / name
    if how is DELETE:
        path.unlink()
    else:
        path.write_bytes(how(path.read_bytes()))


@pytest.mark.parametrize("case", RUN_DAMAGES)
def test_a_damaged_run_file_is_named_warned_about_and_redone(clean, exp, capsys, case):
    config, clean_exp = clean
    rid, name, how = RUN_DAMAGES[case]
    damage(exp, rid, name, how)
    capsys.readouterr()
    assert cli("run", config, "--out", exp.parent, "--quiet", "--no-plots") == 0
    err = capsys.readouterr().err
    named = f"({name}" if "edited" not in case and "moved" not in case else "(report.json and metrics.csv disagree"
    assert f"gradlab: warning: run {rid}: its files are damaged {named}" in err, err
    assert err.count("warning") == 1 and "Traceback" not in err, err
    assert results(exp) == results(clean_exp)  # redone, same numbers; summary rebuilt


SUMMARY_DAMAGES = {
    "truncated": lambda b: b[: len(b) // 3],
    "garbage": lambda b: b"\x89PNG\x00\xff not a summary",
    "empty": lambda b: b"",
    "not-a-list": _json(lambda runs: {"runs": runs}),
    "an-entry-not-a-report": _json(lambda runs: runs[:2] + ["none-s1"] + runs[3:]),
    "disagrees-with-a-run": _json(lambda runs: [_set("final_loss", 0.001)(r) if r["run_id"] == "norm-1-s1" else r
                                                for r in runs]),
    "a-run-the-config-lacks": _json(lambda runs: runs + [_set("run_id", "norm-5-s0")(dict(runs[1]))]),
    "a-run-twice": _json(lambda runs: runs + runs[:1]),
}


@pytest.mark.parametrize("command", ["run", "report"])
@pytest.mark.parametrize("case", SUMMARY_DAMAGES)
def test_a_damaged_summary_is_rebuilt_from_the_runs_and_named(clean, exp, capsys, command, case):
    config, clean_exp = clean
    path = exp / "summary.json"
    path.write_bytes(SUMMARY_DAMAGES[case](path.read_bytes()))
    capsys.readouterr()
    args = ["run", config, "--out", exp.parent, "--quiet", "--no-plots"] if command == "run" else ["report", exp]
    assert cli(*args) == 0
    err = capsys.readouterr().err
    assert "warning: summary.json" in err and "rebuilt" in err and "Traceback" not in err, err
    assert results(exp) == results(clean_exp)


@pytest.mark.parametrize("command", ["run", "report"])
def test_a_summary_that_lags_behind_the_runs_is_rebuilt_quietly(clean, exp, capsys, command):
    """kill -9 between a run's report.json and the summary leaves a summary without that run:
    nothing is damaged, so nothing to warn about."""
    config, clean_exp = clean
    path = exp / "summary.json"
    path.write_bytes(_json(lambda runs: runs[:-2])(path.read_bytes()))
    capsys.readouterr()
    args = ["run", config, "--out", exp.parent, "--quiet", "--no-plots"] if command == "run" else ["report", exp]
    assert cli(*args) == 0
    assert "warning" not in capsys.readouterr().err
    assert results(exp) == results(clean_exp)


# ----------------------------------------------------------------------------- plot and report


def assert_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000 and path.read_bytes()[:8] == PNG_MAGIC, path


def test_plot_and_report_of_a_partly_finished_experiment(clean, exp, capsys):
    """Two runs complete, three missing (never started, stopped before its report, stopped
    before its layer norms), one damaged, and summary.json garbage: plot and report show the
    two, name the others, rebuild the summary; `run` then completes the experiment."""
    config, clean_exp = clean
    runs = exp / "runs"
    (runs / "none-s0" / "report.json").unlink()
    shutil.rmtree(runs / "norm-1-s1")
    (runs / "value-0.1-s0" / "report.json").unlink()
    (runs / "value-0.1-s0" / "layer_norms.csv").unlink()
    damage(exp, "none-s1", "metrics.csv", lambda b: b[: len(b) // 2])
    (exp / "summary.json").write_bytes(b"[{\"run_id\": ")
    capsys.readouterr()

    assert cli("plot", exp) == 0
    out, err = capsys.readouterr()
    drawn = {Path(line).name for line in out.split()}
    # value-0.1 turns the gradient: the direction it kept is drawn too.
    assert drawn == {"grad_norm.png", "loss.png", "direction.png", "heatmap_norm-1-s0.png", "heatmap_value-0.1-s1.png"}
    for name in drawn:
        assert_png(exp / "plots" / name)
    assert {p.name for p in (exp / "plots").glob("heatmap_*")} == {"heatmap_norm-1-s0.png", "heatmap_value-0.1-s1.png"}
    assert "warning: run none-s1: its files are damaged (metrics.csv" in err
    assert "not finished, so not drawn: none-s0, value-0.1-s0, none-s1, norm-1-s1" in err
    assert "warning: summary.json" in err and "Traceback" not in err
    clean_summary = json.loads((clean_exp / "summary.json").read_text())
    kept = [r for r in clean_summary if r["run_id"] in ("norm-1-s0", "value-0.1-s1")]
    assert json.loads((exp / "summary.json").read_text()) == kept

    assert cli("report", exp) == 0
    out, err = capsys.readouterr()
    assert "norm-1-s0" in out and "value-0.1-s1" in out
    assert "not finished: none-s0, value-0.1-s0, none-s1, norm-1-s1" in out
    assert "warning: run none-s1: its files are damaged (metrics.csv" in err and "summary.json" not in err
    md = (exp / "report.md").read_text()
    assert "| norm-1-s0 |" in md and "| none-s0 |" not in md and "| none-s1 |" not in md
    assert "Not finished yet: none-s0, value-0.1-s0, none-s1, norm-1-s1." in md
    assert "![heatmap_norm-1-s0](plots/heatmap_norm-1-s0.png)" in md

    assert cli("run", config, "--out", exp.parent, "--quiet", "--no-plots") == 0
    assert results(exp) == results(clean_exp)


def test_damaged_runs_do_not_stop_plot_and_report_from_showing_the_others(clean, exp, capsys):
    """Four runs each damaged in a way a reader could trip over (a report that is a list, a
    report with text where a number goes, binary metrics, a ragged layer_norms.csv)."""
    config, clean_exp = clean
    bad = {"norm-1-s0": ("report.json", _json(lambda rep: [rep])),
           "value-0.1-s0": ("report.json", _json(_set("clip_fraction", "lots"))),
           "none-s1": ("metrics.csv", lambda b: b"\xff\xd8\xff" * 100),
           "value-0.1-s1": ("layer_norms.csv", _row(3, lambda line: line + ",0.5"))}
    for rid, (name, how) in bad.items():
        damage(exp, rid, name, how)
    capsys.readouterr()
    assert cli("plot", exp) == 0
    out, err = capsys.readouterr()
    assert_png(exp / "plots" / "heatmap_none-s0.png")
    assert_png(exp / "plots" / "heatmap_norm-1-s1.png")
    assert len(list((exp / "plots").glob("heatmap_*"))) == 2
    for rid, (name, _) in bad.items():
        assert f"warning: run {rid}: its files are damaged ({name}" in err, err
    assert "not finished, so not drawn: norm-1-s0, value-0.1-s0, none-s1, value-0.1-s1" in err
    assert cli("report", exp) == 0
    out, err = capsys.readouterr()
    assert "none-s0" in out and "norm-1-s1" in out and "Traceback" not in err
    assert [r["run_id"] for r in json.loads((exp / "summary.json").read_text())] == ["none-s0", "norm-1-s1"]
    assert cli("run", config, "--out", exp.parent, "--quiet", "--no-plots") == 0
    assert results(exp) == results(clean_exp)


@pytest.mark.parametrize("command", ["plot", "report"])
def test_plot_and_report_with_no_complete_run_exit_2_with_one_line(exp, capsys, command):
    for rid in RUNS[1:]:
        (exp / "runs" / rid / "report.json").unlink()
    damage(exp, "none-s0", "report.json", lambda b: b[:10])
    before = snapshot(exp)
    capsys.readouterr()
    assert cli(command, exp) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"gradlab: error: {exp}: no complete run to {command} yet (6 not finished, 1 of them damaged)"
    assert snapshot(exp) == before  # nothing written


# ----------------------------------------------------------------------------- hand-edited files

@pytest.mark.parametrize("renamed", [False, True], ids=["in-place", "renamed-directory"])
@pytest.mark.parametrize("command", ["plot", "report"])
def test_an_edited_config_yaml_is_refused_not_believed(exp, capsys, command, renamed):
    """The runs came from the config the directory is named after: a config.yaml edited by
    hand would put another experiment's settings in the report's header and plot titles."""
    if renamed:  # the hash8 in the name is gone; the runs still record their config
        exp = exp.rename(exp.parent / "my-results")
    path = exp / "config.yaml"
    path.write_text(path.read_text().replace("lr: 0.03", "lr: 0.3"))
    before = snapshot(exp)
    capsys.readouterr()
    assert cli(command, exp) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"gradlab: error: {path}: edited after its runs were computed") and err.count("\n") == 1, err
    assert snapshot(exp) == before


def test_a_renamed_experiment_with_its_config_intact_is_still_shown(exp, capsys):
    exp = exp.rename(exp.parent / "my-results")
    assert cli("report", exp) == 0
    assert "warning" not in capsys.readouterr().err


def test_a_run_folder_copied_from_another_experiment_is_damaged(exp, capsys, tmp_path):
    """A run records the hash of its config: one computed from another config is not this
    experiment's, however well-formed its files are."""
    other = tmp_path / "other.yaml"
    other.write_text(TINY.replace("lr: 0.03", "lr: 0.02"))
    assert cli("run", other, "--out", tmp_path / "o", "--quiet", "--no-plots") == 0
    (other_exp,) = (tmp_path / "o").iterdir()
    shutil.rmtree(exp / "runs" / "norm-1-s0")
    shutil.copytree(other_exp / "runs" / "norm-1-s0", exp / "runs" / "norm-1-s0")
    capsys.readouterr()
    assert cli("report", exp) == 0
    err = capsys.readouterr().err
    assert f"run norm-1-s0: its files are damaged (report.json: it was computed from another config ({other_exp.name[-8:]}" in err, err


def test_a_run_diverged_at_step_0_has_null_for_every_value_it_never_had(tmp_path, capsys):
    """No finite gradient norm and no loss: both null in report.json, `-` in the table."""
    config = tmp_path / "zero.yaml"
    config.write_text(TINY.replace("gain: 1.0", "gain: 1.0e+30").replace("seeds: [0, 1]", "seeds: [0]"))
    assert cli("run", config, "--out", tmp_path / "out", "--quiet", "--no-plots") == 0
    (exp,) = (tmp_path / "out").iterdir()
    rep = json.loads((exp / "runs" / "none-s0" / "report.json").read_text())
    assert rep["divergence_step"] == 0 and rep["steps_completed"] == 0
    assert rep["max_grad_norm"] is None and rep["final_loss"] is None
    capsys.readouterr()
    assert cli("report", exp) == 0
    assert "nan" not in capsys.readouterr().out


def test_a_folder_turned_read_only_mid_run_names_the_file_that_failed(tmp_path, monkeypatch, capsys):
    """After the file system turns read-only, every write fails, the lock's owner file
    among them: the message names the first file that could not be written, not the last,
    and says how many complete runs were kept."""
    import errno

    readonly, fsyncs = [False], [0]
    real = {name: getattr(os, name) for name in ("fsync", "open", "unlink", "replace", "mkdir")}

    def fsync(fd):
        fsyncs[0] += 1
        readonly[0] = readonly[0] or fsyncs[0] > 2 + 3 * 3  # config, owner, 3 runs of seed 0
        if readonly[0]:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real["fsync"](fd)

    def refuse(name):
        def call(*args, **kwargs):
            writes = name != "open" or (len(args) > 1 and args[1] & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if readonly[0] and writes:
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), args[0])
            return real[name](*args, **kwargs)
        return call

    monkeypatch.setattr(os, "fsync", fsync)
    for name in ("open", "unlink", "replace", "mkdir"):
        monkeypatch.setattr(os, name, refuse(name))
    out = tmp_path / "out"
    capsys.readouterr()
    code = cli("run", config_path(tmp_path), "--out", out, "--quiet", "--no-plots", "--workers", "1")
    monkeypatch.undo()
    err = capsys.readouterr().err
    (exp,) = out.iterdir()
    assert code == 2, err
    assert err.startswith(f"gradlab: error: {exp}/runs/none-s1/metrics.csv: cannot write this file "
                          "(read-only file system)"), err
    assert err.endswith(f"; 3 complete run(s) kept in {exp}\n") and err.count("\n") == 1, err


def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return path
