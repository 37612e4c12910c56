"""Shared test helpers."""

import os

from gradlab.cli import main


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
