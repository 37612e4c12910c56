"""The `gradlab` console script's entry point: the signal handling that must be in place
before the command's libraries load. Standard library only, and nothing done at import but in
a process multiprocessing spawned (importing gradlab from a notebook or a test changes no
handler)."""

from __future__ import annotations

import os
import signal
import sys


def _interrupted_at_start(signum, frame) -> None:
    """Ctrl-C or SIGTERM while the command's libraries still load (Typer's and pydantic's
    imports are most of start-up): nothing has been read or written, so leave at once with
    the exit code and the one line of any interruption, not a traceback through the import
    machinery. cli.main() puts the working handlers in place."""
    os.write(2, b"gradlab: interrupted\n" if signum == signal.SIGINT else b"gradlab: error: terminated\n")
    os._exit(130 if signum == signal.SIGINT else 143)


def spawned() -> bool:
    """Whether this is a process multiprocessing spawned (a LocalCluster's Dask worker:
    spawning re-imports the parent's main module, the console script or gradlab.cli), not the
    command itself."""
    mp = sys.modules.get("multiprocessing.process")
    return mp is not None and mp.current_process().name != "MainProcess"


def ignore_ctrl_c_if_spawned() -> None:
    """In a spawned worker, ignore Ctrl-C from its first moments: the terminal's Ctrl-C
    reaches the whole process group, and the `gradlab` process decides what it means
    (cluster.dask_setup keeps ignoring it once the worker runs). A worker interrupted while
    it started printed a traceback."""
    if spawned():
        signal.signal(signal.SIGINT, signal.SIG_IGN)


ignore_ctrl_c_if_spawned()


def main() -> None:
    if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not where SIGINT is ignored
        signal.signal(signal.SIGINT, _interrupted_at_start)
        signal.signal(signal.SIGTERM, _interrupted_at_start)
    from .cli import main as run

    run()
