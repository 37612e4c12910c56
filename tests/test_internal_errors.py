"""A bug is not bad input: exit 1, one line naming a crash log that holds the traceback;
--debug or GRADLAB_DEBUG=1 shows the traceback instead. Bad input stays exit 2 either way."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import cli

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
BUG_LINE = re.compile(r"gradlab: error: internal error \(RuntimeError: (?P<what>.*)\); this is a bug\. "
                      r"The traceback is in (?P<log>\S+); rerun with --debug to see it\n")

# The real `gradlab` entry point in a real process, with one internal function broken.
BROKEN = """
import sys
import gradlab.config

def load_config(*args, **kwargs):
    raise RuntimeError("boom\\nsecond line of the message")

gradlab.config.load_config = load_config
from gradlab.cli import main
sys.argv[0] = "gradlab"
main()
"""


def broken_process(*args: str, env: dict | None = None, tmp: Path) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "GRADLAB_DEBUG"}
    environ.update(env or {}, TMPDIR=str(tmp))  # the crash log goes to the temp dir
    return subprocess.run([sys.executable, "-c", BROKEN, *args], capture_output=True, text=True, env=environ,
                          cwd=tmp, timeout=60)


def boom(*args, **kwargs):
    raise RuntimeError("boom\nsecond line of the message")


def test_a_bug_exits_1_with_one_line_naming_the_crash_log(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("gradlab.config.load_config", boom)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    assert cli("validate", QUICKSTART) == 1
    err = capsys.readouterr().err
    m = BUG_LINE.fullmatch(err)
    assert m, err
    assert m["what"] == "boom second line of the message"  # the exception's text, on one line
    log = Path(m["log"])
    assert log.parent == tmp_path
    text = log.read_text()
    assert text.startswith("Traceback (most recent call last):")
    assert "in boom" in text and text.rstrip().endswith("RuntimeError: boom\nsecond line of the message")


@pytest.mark.parametrize("how", ["--debug", "GRADLAB_DEBUG=1"])
def test_debug_shows_the_traceback_of_a_bug(tmp_path, how):
    args = ["validate", str(QUICKSTART)]
    if how == "--debug":
        proc = broken_process("--debug", *args, tmp=tmp_path)
    else:
        proc = broken_process(*args, env={"GRADLAB_DEBUG": "1"}, tmp=tmp_path)
    assert proc.returncode == 1
    assert "Traceback (most recent call last):" in proc.stderr and "RuntimeError: boom" in proc.stderr
    assert "this is a bug" not in proc.stderr
    assert not list(tmp_path.glob("gradlab-crash-*.log"))


def test_without_debug_the_process_prints_one_line_and_keeps_the_log(tmp_path):
    proc = broken_process("validate", str(QUICKSTART), tmp=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    m = BUG_LINE.fullmatch(proc.stderr)
    assert m, proc.stderr
    assert "RuntimeError: boom" in Path(m["log"]).read_text()


@pytest.mark.parametrize("debug", [["--debug"], []])
def test_debug_leaves_bad_input_at_exit_2_and_one_line(tmp_path, monkeypatch, capsys, debug):
    monkeypatch.setenv("GRADLAB_DEBUG", "1")
    assert cli(*debug, "validate", tmp_path / "missing.yaml") == 2
    assert capsys.readouterr().err == f"gradlab: error: {tmp_path / 'missing.yaml'}: no such file\n"
    assert cli(*debug, "run", QUICKSTART, "--workers", "0") == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_debug_is_in_the_help_and_still_taken_anywhere(capsys):
    """main() takes --debug out of the arguments before Typer sees them; the help lists it all the same."""
    assert cli("--help") == 0
    out = capsys.readouterr().out
    assert re.search(r"^\s+--debug\s+Show the Python traceback of an internal error", out, re.M), out
    for args in (["--debug", "validate", QUICKSTART], ["validate", QUICKSTART, "--debug"]):
        assert cli(*args) == 0
        assert "# valid:" in capsys.readouterr().out
