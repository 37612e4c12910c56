"""Every path a user gives (the config, --out, an experiment directory) that the file system
cannot take is bad input: exit 2, one line naming the path, nothing written. Never a bug."""

import os
from pathlib import Path

import pytest

from conftest import cli

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
RUN = ["--set", "train.steps=2", "--seeds", "0", "--quiet", "--no-plots"]


def _paths(tmp: Path) -> dict[str, Path]:
    (tmp / "a_file").write_text("x")
    os.symlink(tmp / "loop_b", tmp / "loop_a")
    os.symlink(tmp / "loop_a", tmp / "loop_b")
    return {
        "component_too_long": tmp / ("d" * 300),
        "path_too_long": tmp.joinpath(*["d" * 200] * 25),
        "too_deep_for_the_runs": tmp.joinpath(*["d" * 250] * ((4096 - len(str(tmp))) // 251)),
        "under_a_file": tmp / "a_file" / "sub",
        "symlink_loop": tmp / "loop_a" / "sub",
    }


COMMANDS = {
    "run --out": lambda p: ["run", QUICKSTART, *RUN, "--out", p],
    "sweep --out": lambda p: ["sweep", QUICKSTART, "--thresholds", "1", *RUN, "--out", p],
    "validate --out": lambda p: ["validate", QUICKSTART, "--out", p],
    "plot DIR": lambda p: ["plot", p],
    "report DIR": lambda p: ["report", p],
    "plot --out": lambda p: ["plot", "--out", p],
    "report --out": lambda p: ["report", "--out", p],
    "run CONFIG": lambda p: ["run", Path(str(p) + ".yaml")],
}


def _tree(root: Path) -> set:
    return {p for p in root.rglob("*")}


KINDS = ["component_too_long", "path_too_long", "too_deep_for_the_runs", "under_a_file", "symlink_loop"]
CASES = [(command, kind) for command in COMMANDS for kind in KINDS
         if kind != "too_deep_for_the_runs" or command in ("run --out", "sweep --out")]  # only training goes deep


@pytest.mark.parametrize("command,kind", CASES)
def test_a_path_the_file_system_refuses_is_bad_input(tmp_path, capsys, command, kind):
    path = _paths(tmp_path)[kind]
    before = _tree(tmp_path)
    capsys.readouterr()
    code = cli(*COMMANDS[command](path))
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("gradlab") and err.count("\n") == 1 and "internal error" not in err, err
    assert len(err) < 400, err  # the path is cut, not echoed whole
    assert _tree(tmp_path) == before  # nothing written
