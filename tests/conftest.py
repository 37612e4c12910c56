"""Shared test helpers."""

import os
import signal
from pathlib import Path

from gradlab.cli import main


# A shell that starts a job in the background (`cmd &` in a script, nohup, some CI runners)
# starts it with SIGINT ignored, and the processes it runs inherit that: Python then installs
# no KeyboardInterrupt handler, and the Ctrl-C tests' signals would be lost. The tests stand
# for a terminal's Ctrl-C, so they get Python's own handler back (which the gradlab processes
# they start then get at exec too).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def cli(*args, cwd=None):
    """Run `gradlab ARGS` in-process (optionally in `cwd`); returns the exit code."""
    old = os.getcwd()
    if cwd:
        os.chdir(cwd)
    try:
        main([str(a) for a in args])
    except SystemExit as e:
        return e.code
    finally:
        os.chdir(old)
    return 0


# Tests marked slow (long fault loops) run only on request: --runslow or GRADLAB_SLOW=1.

def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", default=False,
                     help="also run the tests marked slow (or set GRADLAB_SLOW=1)")


# The parity suite (the README's third command, and .ci/run) sets GRADLAB_REQUIRE_TORCH=1: there
# a missing torch is an error, not dozens of quietly skipped comparisons.
def pytest_configure(config):
    if os.environ.get("GRADLAB_REQUIRE_TORCH") == "1":
        try:
            import torch  # noqa: F401
        except ImportError as e:
            import pytest

            raise pytest.UsageError(f"GRADLAB_REQUIRE_TORCH=1 but torch does not import ({e}); "
                                    "pip install torch==2.13.0") from None


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow") or os.environ.get("GRADLAB_SLOW") == "1":
        return
    import pytest

    skip = pytest.mark.skip(reason="slow: run with --runslow or GRADLAB_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def live_processes(parent: int | None = None, group: int | None = None) -> list[int]:
    """Pids of the live (not zombie) processes whose parent is `parent` or whose process
    group is `group`, from /proc: what a test of workers and clusters checks is left."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and (int(fields[1]) == parent or int(fields[2]) == group):
            pids.append(int(stat.parent.name))
    return pids
