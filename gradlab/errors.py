"""The one user-error type. The CLI turns it into one line on stderr and exit code 2."""

from __future__ import annotations

import re

ECHO_LIMIT = 72
# A path is cut in the middle, keeping its start and its file name; a long one is still
# a path someone typed, so it gets more room than a value.
PATH_LIMIT = 160


def _printable(text: object) -> str:
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def clip(text: object, limit: int = ECHO_LIMIT) -> str:
    """User text echoed in a message (an option's value, a key, a line of a file): one line,
    control characters escaped, cut to `limit` characters so that a 100 KB value still gives
    a readable line."""
    text = _printable(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def clip_path(text: object, limit: int = PATH_LIMIT) -> str:
    text = _printable(text)
    if len(text) <= limit:
        return text
    tail = (limit - 3) * 2 // 3
    return text[: limit - 3 - tail] + "..." + text[-tail:]


def one_line(message: str) -> str:
    """A whole message as one readable line, whatever user text it holds: every run of
    characters without a space longer than PATH_LIMIT is cut in its middle. The places that
    echo user text cut it themselves, shorter; this keeps any other (a path in an OS error, a
    Typer usage error) from making a 100 KB line."""
    return re.sub(r"\S{%d,}" % (PATH_LIMIT + 1), lambda m: clip_path(m.group(0)), _printable(message))


class UserError(Exception):
    """Bad input from the user: a config, an option value or a path.

    Carries where the problem is (file, key path, line) so that the message can point at
    it; everything that is not a UserError is a bug.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        key: str | None = None,
        line: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.file = file
        self.key = key
        self.line = line

    def __reduce__(self):
        # Whole across a process boundary (a worker's disk-full error reaches the parent),
        # with the OSError that caused it, if any: the CLI then says which runs are kept.
        cause = self.__cause__ if isinstance(self.__cause__, OSError) else None
        return _restore, (self.message, self.file, self.key, self.line, cause)

    def __str__(self) -> str:
        where = ""
        if self.file:
            where = clip_path(self.file)
            if self.line is not None:
                where += f":{self.line}"
        parts = [p for p in (where, self.key and clip(self.key)) if p]
        prefix = ": ".join(parts)
        return f"{prefix}: {one_line(self.message)}" if prefix else one_line(self.message)


def _restore(message: str, file: str | None, key: str | None, line: int | None,
             cause: OSError | None) -> UserError:
    e = UserError(message, file=file, key=key, line=line)
    e.__cause__ = cause
    return e


class Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so that it unwinds like Ctrl-C (exit code 143)."""


class WorkerLost(Exception):
    """A worker process died without reporting (kill -9, the OOM killer): not a bug of
    gradlab's and not bad input, so it has an exit code of its own (3)."""

    def __init__(self, seed: int | None, exitcode: int | None) -> None:
        import signal

        self.seed, self.exitcode = seed, exitcode
        if exitcode is None:  # a Dask unit whose every worker died (distributed's KilledWorker)
            super().__init__(f"the Dask workers that ran seed {seed} died, as often as the scheduler allows "
                             "(distributed.scheduler.allowed-failures)")
            return
        if exitcode < 0:
            try:
                name = signal.Signals(-exitcode).name
            except ValueError:
                name = "an unknown signal"
            how = f"was killed (signal {-exitcode}, {name})"
            if -exitcode == signal.SIGKILL:
                how += ", perhaps by the out-of-memory killer"
        else:
            how = f"exited with status {exitcode}"
        of = f"for seed {seed}" if seed is not None else "between seeds"
        super().__init__(f"the worker process {of} {how}")
