"""Every file gradlab writes goes through here: atomically (temporary name, then rename).

A reader (or a run killed half-way) never sees a half-written file: either the old content,
the new content, or no file.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import io
import json
import math
import os
import signal
import tempfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

from .errors import UserError


@contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block ends, so that a write in flight finishes; then
    deliver the signal to the handler that was in place (KeyboardInterrupt for Ctrl-C)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    old = {s: signal.signal(s, lambda signum, frame: received.append(signum))
           for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if received:
            signal.raise_signal(received[0])


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files readable by the owner only; results should get the usual mode.
_FILE_MODE = 0o666 & ~_umask()


def write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path` atomically: a temporary file in the same folder, then rename.

    A failure of the file system (disk full, read-only, permission denied) is the user's to
    fix, not a bug: it becomes a UserError naming the path, and no temporary file is left.
    """
    path = Path(path)
    make_dir(path.parent)
    with deferred_interrupt():
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
            with os.fdopen(fd, "wb") as fh:
                os.fchmod(fh.fileno(), _FILE_MODE)
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException as e:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
            if isinstance(e, OSError):
                raise UserError(f"cannot write this file ({os_reason(e)})", file=str(path)) from e
            raise


def make_dir(path: Path) -> None:
    """A folder and its parents; a failure of the file system is a UserError naming it."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        where = e.filename if e.filename else path
        raise UserError(f"cannot create this directory ({os_reason(e)})", file=str(where)) from e


# Errors of the file system that the user fixes (space, permissions, mounts) and errors of a
# path the user gave (too long, a file where a folder should be, a symlink loop): not bugs.
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO,
                                errno.EFBIG, errno.ENAMETOOLONG, errno.ELOOP, errno.ENOTDIR, errno.EISDIR})

PATH_MAX, NAME_MAX = 4096, 255  # Linux's; pathconf may say otherwise for a given file system


def path_problem(path: Any) -> Optional[str]:
    """Why no file system would accept `path`, or None: a part longer than the file system
    allows, or a path longer than the kernel takes. Checked before anything is written,
    because the OSError would otherwise surface mid-run, far from the option that caused it."""
    full = os.fsencode(os.path.abspath(path))
    if len(full) >= PATH_MAX:
        return f"the path is {len(full)} bytes long; the system allows {PATH_MAX - 1}"
    for part in Path(path).parts:
        n = len(os.fsencode(part))
        if n > NAME_MAX:
            return f"a part of the path is {n} bytes long; the file system allows {NAME_MAX}"
    return None


def os_reason(e: OSError) -> str:
    """A short reason for a failed write, with the remedy where there is an obvious one."""
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        what = "no space left on device" if e.errno == errno.ENOSPC else "disk quota exceeded"
        return f"{what}; free some space and run the same command again"
    if e.errno == errno.EROFS:
        return "read-only file system"
    if e.errno == errno.ENAMETOOLONG:
        return f"file name too long (the file system allows {NAME_MAX} bytes a name)"
    if e.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    text = e.strerror or str(e)
    return text[:1].lower() + text[1:]


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def json_safe(obj: Any) -> Any:
    """JSON has no NaN or inf: write them as strings a reader can parse back."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def data_hash(data: Any) -> str:
    """First 8 hex digits of the sha256 of the canonical JSON of plain data. Of a resolved
    config it is the experiment's hash8; of an experiment's config.yaml as read back, the
    same hash, unless the file was edited (the schema of a later gradlab plays no part)."""
    text = json.dumps(json_safe(data), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:8]


def as_float(x: Any) -> Optional[float]:
    """A number read back from JSON (which spells nan and inf as strings); None when absent."""
    if x is None or isinstance(x, bool):
        return None
    try:
        return float(x)
    except (TypeError, ValueError):
        return None


def dumps_json(obj: Any) -> str:
    return json.dumps(json_safe(obj), indent=2, allow_nan=False) + "\n"


def write_json(path: Path, obj: Any) -> None:
    write_text(path, dumps_json(obj))


def read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def read_yaml(path: Path) -> Any:
    """A YAML file that gradlab wrote itself (an experiment's config.yaml), with libyaml's safe
    loader where PyYAML has it: ten times faster than the pure-Python one, and as safe. User
    configs go through config.py's loader instead, which keeps line numbers for messages."""
    import yaml

    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    with open(path, encoding="utf-8") as fh:
        return yaml.load(fh, Loader=loader)  # noqa: S506 (a safe loader)


def format_number(x: float) -> str:
    """Shortest text that reads back to the same float32/float64 value."""
    if isinstance(x, (int,)) and not isinstance(x, bool):
        return str(x)
    x = float(x)
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return repr(x)


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """What write_csv writes: the header, then each row, numbers as format_number spells them."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for row in rows:
        w.writerow([format_number(v) if not isinstance(v, str) else v for v in row])
    return buf.getvalue()


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    write_text(path, csv_text(header, rows))


def read_csv(path: Path) -> tuple[list[str], list[list[float]]]:
    """Read a numeric CSV written by write_csv: header and rows of floats."""
    with open(path, encoding="utf-8", newline="") as fh:
        r = csv.reader(fh)
        header = next(r)
        rows = [[float(v) for v in row] for row in r if row]
    return header, rows
