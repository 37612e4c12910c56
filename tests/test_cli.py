"""The real CLI, end to end: files written, exit codes, resume, bad input, Ctrl-C."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import cli

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
# The quickstart, shortened: still diverges (seeds 0 and 1) within 30 steps.
SMALL = ["--set", "train.steps=30", "--seeds", "0,1"]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    out = tmp_path_factory.mktemp("out")
    assert cli("run", QUICKSTART, *SMALL, "--out", out, "--quiet") == 0
    (exp,) = [d for d in out.iterdir() if d.is_dir()]
    return exp


def read_csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


def test_run_writes_the_experiment_directory(experiment):
    assert experiment.name.startswith("quickstart-") and len(experiment.name) == len("quickstart-") + 8
    for f in ("config.yaml", "summary.json", "report.md"):
        assert (experiment / f).is_file(), f
    summary = json.loads((experiment / "summary.json").read_text())
    assert [r["run_id"] for r in summary] == ["none-s0", "norm-1-s0", "norm-10-s0", "none-s1", "norm-1-s1", "norm-10-s1"]
    for r in summary:
        d = experiment / "runs" / r["run_id"]
        assert json.loads((d / "report.json").read_text()) == r
        for key in ("run_id", "seed", "method", "threshold", "diverged", "divergence_step", "first_nonfinite",
                    "max_grad_norm", "final_loss", "steps_completed", "clip_fraction"):
            assert key in r
        rows = read_csv(d / "metrics.csv")
        assert list(rows[0]) == ["step", "loss", "grad_norm", "clipped_norm", "clip_coef", "clipped", "update_norm",
                                 "nonfinite", "grad_cosine", "lr", "val_loss"]
        layer = read_csv(d / "layer_norms.csv")
        assert list(layer[0])[:3] == ["step", "layer0.W", "layer0.b"] and len(layer) == len(rows)
    plots = {p.name for p in (experiment / "plots").glob("*.png")}
    # The quickstart is a sweep (norm at 1 and at 10): one heatmap figure per seed, a panel per variant.
    assert {"grad_norm.png", "loss.png", "heatmaps_s0.png", "heatmaps_s1.png"} <= plots
    assert not [name for name in plots if name.startswith("heatmap_")]
    assert not list(experiment.rglob("*.tmp"))


def test_baseline_diverges_located_and_clipped_runs_hit_the_threshold(experiment):
    summary = {r["run_id"]: r for r in json.loads((experiment / "summary.json").read_text())}
    none = summary["none-s0"]
    assert none["diverged"] and none["first_nonfinite"]["phase"] in ("forward", "backward", "update")
    assert none["first_nonfinite"]["where"] and none["first_nonfinite"]["step"] == none["divergence_step"]
    rows = read_csv(experiment / "runs" / "none-s0" / "metrics.csv")
    assert rows[-1]["nonfinite"] == "1" and int(rows[-1]["step"]) == none["divergence_step"]
    for rid in ("norm-1-s0", "norm-1-s1"):
        assert not summary[rid]["diverged"] and summary[rid]["steps_completed"] == 30
        for row in read_csv(experiment / "runs" / rid / "metrics.csv"):
            if row["clipped"] == "1":
                assert float(row["clipped_norm"]) == pytest.approx(1.0, rel=1e-5)
                assert float(row["grad_norm"]) > 1.0
            else:
                assert row["clipped_norm"] == row["grad_norm"]


def test_report_md_has_table_findings_and_plots(experiment):
    text = (experiment / "report.md").read_text()
    assert "| run | method | threshold | seed | diverged |" in text
    assert "| none-s0 | none | - | 0 | yes |" in text
    assert "diverged in 2 of 2 seeds" in text
    assert "![grad_norm](plots/grad_norm.png)" in text


def test_rerun_skips_complete_runs_and_force_recomputes(experiment, capsys):
    out = experiment.parent
    before = {p: p.stat().st_mtime_ns for p in experiment.rglob("report.json")}
    assert cli("run", QUICKSTART, *SMALL, "--out", out) == 0
    assert "6 run(s) already complete" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in experiment.rglob("report.json")} == before
    report = (experiment / "runs" / "norm-1-s1" / "report.json").read_text()
    assert cli("run", QUICKSTART, *SMALL, "--out", out, "--force", "--quiet") == 0
    after = {p: p.stat().st_mtime_ns for p in experiment.rglob("report.json")}
    assert all(after[p] != before[p] for p in before)
    assert (experiment / "runs" / "norm-1-s1" / "report.json").read_text() == report  # same numbers


def test_a_missing_run_is_redone_alone(experiment):
    victim = experiment / "runs" / "norm-10-s1" / "report.json"
    kept = experiment / "runs" / "none-s0" / "report.json"
    text, t_kept = victim.read_text(), kept.stat().st_mtime_ns
    victim.unlink()
    assert cli("run", QUICKSTART, *SMALL, "--out", experiment.parent, "--quiet") == 0
    assert victim.read_text() == text and kept.stat().st_mtime_ns == t_kept


def test_plot_and_report_work_from_the_directory_alone(experiment, capsys):
    for p in (experiment / "plots").glob("*.png"):
        p.unlink()
    (experiment / "report.md").unlink()
    assert cli("plot", experiment) == 0
    assert (experiment / "plots" / "grad_norm.png").stat().st_size > 10_000
    assert cli("report", experiment) == 0
    out = capsys.readouterr().out
    assert "none-s0" in out and "forward" in out or "backward" in out
    assert (experiment / "report.md").is_file()
    assert cli("report", "--out", experiment.parent) == 0  # no argument: the most recent


def test_plot_of_a_partly_finished_experiment_says_what_is_missing(tmp_path, capsys):
    assert cli("run", QUICKSTART, "--set", "train.steps=10", "--set", "model.depth=3", "--seeds", "0",
               "--out", tmp_path, "--quiet", "--no-plots") == 0
    (exp,) = tmp_path.iterdir()
    (exp / "runs" / "norm-10-s0" / "report.json").unlink()
    capsys.readouterr()
    assert cli("plot", exp) == 0
    captured = capsys.readouterr()
    assert "grad_norm.png" in captured.out and "not finished, so not drawn: norm-10-s0" in captured.err
    assert (exp / "plots" / "heatmaps_s0.png").is_file()


def test_validate_prints_resolved_config_and_writes_nothing(tmp_path, capsys):
    assert cli("validate", QUICKSTART, "--set", "model.depth=4", cwd=tmp_path) == 0
    out = capsys.readouterr().out
    assert "depth: 4" in out and "seeds:" in out and "valid: 9 run(s)" in out
    assert list(tmp_path.iterdir()) == []


BAD = [
    (["run", "missing.yaml"], "missing.yaml: no such file"),
    (["run", "."], "is a directory"),
    (["run", QUICKSTART, "--set", "model.depth"], "--set"),
    (["run", QUICKSTART, "--set", "model.depht=3"], "did you mean `depth`"),
    (["run", QUICKSTART, "--set", "model.depth=abc"], "must be an integer"),
    (["run", QUICKSTART, "--set", "model.depth=0"], "model.depth"),
    (["run", QUICKSTART, "--seeds", "-1"], "--seeds"),
    (["run", QUICKSTART, "--seeds", "1,,2"], "--seeds"),
    (["run", QUICKSTART, "--seeds", "abc"], "--seeds"),
    (["run", QUICKSTART, "--bogus"], "No such option"),
    (["validate", "bad.yaml"], "bad.yaml:3: model.depth: must be an integer, got true (bool)"),
    (["plot", "nowhere"], "nowhere: no such experiment directory"),
    (["report", "nowhere"], "nowhere: no such experiment directory"),
    (["plot"], "no experiment found"),
]


@pytest.mark.parametrize("args, message", BAD, ids=[" ".join(map(str, a)) for a, _ in BAD])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(tmp_path, capsys, args, message):
    (tmp_path / "bad.yaml").write_text("name: bad\nmodel:\n  depth: true\n")
    before = set(tmp_path.rglob("*"))
    assert cli(*args, cwd=tmp_path) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert set(tmp_path.rglob("*")) == before


def test_out_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "f").write_text("")
    assert cli("run", QUICKSTART, *SMALL, "--out", tmp_path / "f" / "sub") == 2
    assert "--out" in capsys.readouterr().err


def test_foreign_directory_is_refused(tmp_path, capsys):
    assert cli("report", tmp_path) == 2
    assert "not a gradlab experiment directory" in capsys.readouterr().err


def test_ctrl_c_exits_130_and_keeps_finished_runs(tmp_path):
    """SIGINT mid-experiment: exit 130, no traceback, complete runs kept, no temp files; the
    same command then finishes only what is missing."""
    args = [sys.executable, "-m", "gradlab.cli", "run", str(QUICKSTART), "--seeds", "0,1,2,3,4,5,6,7",
            "--set", "train.steps=300", "--out", str(tmp_path), "--quiet"]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and len(list(tmp_path.rglob("report.json"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "interrupted" in err
    done = list(tmp_path.rglob("report.json"))
    assert 3 <= len(done) < 24
    assert not list(tmp_path.rglob("*.tmp"))
    for r in done:
        json.loads(r.read_text())
        assert (r.parent / "metrics.csv").is_file()


@pytest.mark.parametrize("signum, code, line", [(signal.SIGINT, 130, "gradlab: interrupted"),
                                                (signal.SIGTERM, 143, "gradlab: error: terminated")])
def test_a_signal_during_a_command_without_its_own_handler_is_not_a_success(tmp_path, capsys, monkeypatch,
                                                                               signum, code, line):
    """Typer catches a KeyboardInterrupt no command caught and, outside its standalone mode,
    returns exit code 130 instead of raising: `gradlab plot` stopped by Ctrl-C or SIGTERM
    mid-drawing used to leave as exit 0, silently."""
    import gradlab.experiment

    out = tmp_path / "out"
    assert cli("run", QUICKSTART, *SMALL, "--out", out, "--no-plots") == 0
    (exp,) = out.iterdir()
    capsys.readouterr()

    def drawing(*a, **k):
        os.kill(os.getpid(), signum)  # through the handler main() installed, as from a terminal
        time.sleep(5)  # not reached: the handler raises at once
        raise AssertionError("the signal was not delivered")

    monkeypatch.setattr(gradlab.experiment, "finish", drawing)
    assert cli("plot", exp) == code
    assert capsys.readouterr().err == line + "\n"


def test_an_interrupt_a_library_wraps_is_still_an_interrupt(tmp_path, capsys, monkeypatch):
    """pydantic turns a KeyboardInterrupt raised while it builds a schema into a SchemaError:
    Ctrl-C during `validate`'s imports read as an internal error (exit 1, a bug report)."""
    import gradlab.cli

    def load(*a, **k):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as e:
            raise RuntimeError("Error building validator") from e

    monkeypatch.setattr(gradlab.cli, "_load", load)
    assert cli("validate", QUICKSTART) == 130
    assert capsys.readouterr().err == "gradlab: interrupted\n"


def test_ctrl_c_while_the_command_starts_is_one_line_and_exit_130(tmp_path):
    """Before the command's libraries have loaded (Typer and pydantic are most of start-up),
    the console script's handler leaves at once: exit 130, one line, no traceback through
    the import machinery. A process multiprocessing spawns (a Dask worker re-importing the
    main module) ignores Ctrl-C instead: the `gradlab` process decides what it means."""
    code = ("import os, signal, sys, time; sys.argv = ['gradlab', '--help']; import gradlab.entry as e; "
            "signal.signal(signal.SIGINT, e._interrupted_at_start); os.kill(os.getpid(), signal.SIGINT); "
            "time.sleep(5); print('not interrupted')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (proc.returncode, proc.stderr, proc.stdout) == (130, "gradlab: interrupted\n", "")
    code = ("import multiprocessing as mp, signal\n"
            "def child(q):\n"
            "    import gradlab.entry\n"
            "    q.put(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)\n"
            "if __name__ == '__main__':\n"
            "    ctx = mp.get_context('spawn'); q = ctx.Queue(); p = ctx.Process(target=child, args=(q,))\n"
            "    p.start(); print(q.get(timeout=30)); p.join()\n"
            "    import gradlab.entry\n"
            "    print(signal.getsignal(signal.SIGINT) is signal.default_int_handler)\n")
    script = tmp_path / "spawn.py"
    script.write_text(code)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["True", "True"], proc.stderr


def test_a_signal_during_a_write_is_delivered_after_it(tmp_path):
    from gradlab import io

    target = tmp_path / "f.txt"
    with pytest.raises(KeyboardInterrupt):
        with io.deferred_interrupt():
            os.kill(os.getpid(), signal.SIGINT)
            io.write_text(target, "complete")
    assert target.read_text() == "complete"


def test_plot_and_report_without_a_directory_take_the_experiment_run_last(tmp_path, capsys):
    """`run a; run b; run a --force; plot` plots a: the most recent experiment is the one
    whose runs were written last, not the one whose config.yaml is newest."""
    out = tmp_path / "out"
    small = ["--set", "train.steps=3", "--seeds", "0", "--out", out, "--quiet", "--no-plots"]
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(QUICKSTART.read_text().replace("name: quickstart", "name: exp_a"))
    b.write_text(QUICKSTART.read_text().replace("name: quickstart", "name: exp_b"))
    for args in ([a], [b], [a, "--force"]):
        assert cli("run", *args, *small) == 0
        time.sleep(0.02)  # distinct file times, even on coarse clocks
    capsys.readouterr()
    assert cli("report", "--out", out) == 0
    assert "exp_a-" in capsys.readouterr().out
    assert cli("plot", "--out", out) == 0
    assert "exp_a-" in capsys.readouterr().out


PIPE_COMMANDS = {
    "validate": ["validate", QUICKSTART],
    "help": ["--help"],
    "run": ["run", QUICKSTART, *SMALL, "--no-plots"],
    "report": ["report"],
    "plot": ["plot"],
}


@pytest.mark.parametrize("command", PIPE_COMMANDS)
def test_a_reader_gone_from_the_pipe_is_a_quiet_exit_141(experiment, command):
    """`gradlab report | head -1`: the reader closes the pipe; that is not a bug. Quiet, with
    the status a shell shows for SIGPIPE, like cat and git, and the work itself done."""
    args = PIPE_COMMANDS[command] + (["--out", experiment.parent] if command in ("run", "report", "plot") else [])
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first byte: every write fails with EPIPE
    try:
        proc = subprocess.run([sys.executable, "-m", "gradlab.cli", *map(str, args)], stdout=write,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    finally:
        os.close(write)
    assert proc.returncode == 141, proc.stderr
    assert "error" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.mark.parametrize("stream", [1, 2])
def test_a_closed_standard_stream_is_not_a_bug(tmp_path, stream):
    """`gradlab validate cfg >&-` (or `2>&-`): the output goes nowhere and the exit status
    still answers the question: 0 for a valid config, 2 for a missing one."""
    def close():
        os.close(stream)

    for config, code in ((QUICKSTART, 0), (tmp_path / "missing.yaml", 2)):
        proc = subprocess.run([sys.executable, "-m", "gradlab.cli", "validate", str(config)], preexec_fn=close,
                              timeout=60, cwd=tmp_path,
                              env={**os.environ, "TMPDIR": str(tmp_path)})
        assert proc.returncode == code
    assert not list(tmp_path.glob("gradlab-crash-*"))  # no crash log: no bug


@pytest.mark.parametrize("width", [60, 80, 200])
def test_the_table_fits_the_terminal_and_never_cuts_a_value(experiment, capsys, monkeypatch, width):
    """At any width the table keeps run ids, steps and numbers whole: headers shorten and the
    least important columns go first; --wide keeps every column, wider than the screen."""
    from gradlab.store import collect_reports
    from gradlab.report import columns, table_rows

    reports = collect_reports(experiment)
    monkeypatch.setenv("COLUMNS", str(width))
    for wide in (False, True):
        capsys.readouterr()
        assert cli("report", experiment, *(["--wide"] if wide else [])) == 0
        out = capsys.readouterr().out
        lines = out.splitlines()
        table = [ln for ln in lines if ln[:1] in "┏┃┡│└"]
        header = table[1]
        if not wide:
            assert max(len(ln) for ln in table) <= width, out
        assert "…" not in out
        for rep, row in zip(reports, table_rows(reports)):
            line = next(ln for ln in table if ln.startswith(f"│ {rep['run_id']} "))
            cells = [c.strip() for c in line.strip("│").split("│")]
            for value in cells:  # every cell shown is a whole value of that run's row
                assert value in row, (value, row)
            assert {row[0], row[4], row[5]} <= set(cells)  # run, diverged, step: always
        names = [c.strip() for c in header.strip("┃").split("┃")]
        if wide:
            assert names == list(columns(reports))
        elif width == 200:
            assert names == [c for c in columns(reports) if c not in ("method", "threshold", "seed")]
        else:
            assert len(names) < len(columns(reports)) - 3
