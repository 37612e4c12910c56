"""The text of the `lm` task: a UTF-8 file, or gradlab's own source by default.

Pure Python (no NumPy): the config loader reads and checks the text while validating, so
that a missing or undecodable file is a bad input named at `task.path`, and `gradlab
validate` stays light. The loader pins the text by its sha256 in the resolved config, so the
experiment's hash covers what was learnt, not only where it lay.
"""

from __future__ import annotations

import hashlib
import stat
from functools import lru_cache
from pathlib import Path
from typing import Optional

# The held-out split is the text's last tenth: a model that memorised the training windows
# has not seen it, so its loss there measures what it learnt about the language.
HELD_OUT_FRACTION = 10  # 1 / this of the characters


class TextError(ValueError):
    """Why a text cannot be the lm task's (the loader names the file, key and line)."""


def held_out_start(n_chars: int) -> int:
    """Where the held-out tail of a text of `n_chars` characters begins."""
    return n_chars - n_chars // HELD_OUT_FRACTION


def min_chars(seq_len: int) -> int:
    """The shortest text whose training part and held-out tail each hold one window of
    seq_len inputs and their seq_len next characters."""
    return HELD_OUT_FRACTION * (seq_len + 1)


def default_text() -> str:
    """Every `*.py` of the installed gradlab package, sorted by relative path, concatenated:
    real text with a rich vocabulary, the same on every machine for one gradlab version."""
    root = Path(__file__).resolve().parent
    files = sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix())
    return "".join(p.read_text(encoding="utf-8") for p in files)


def read_text(path: str) -> str:
    """The file's text; a TextError naming what is wrong (missing, not a regular file, not
    UTF-8 at byte N). Read as bytes and decoded strictly: a stray Latin-1 byte must not
    become a replacement character the model then learns."""
    p = Path(path)
    try:
        st = p.stat()
        if stat.S_ISDIR(st.st_mode):
            raise TextError("is a directory, expected a UTF-8 text file")
        if not stat.S_ISREG(st.st_mode):  # a FIFO or a device would block or never end
            raise TextError("is not a regular file; the lm task reads a UTF-8 text file")
        raw = p.read_bytes()
    except FileNotFoundError:
        raise TextError("no such file") from None
    except PermissionError:
        raise TextError("permission denied: cannot read this file") from None
    except OSError as e:
        raise TextError(f"cannot read: {e.strerror or e}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise TextError(f"is not UTF-8 text (byte 0x{raw[e.start]:02x} at byte offset {e.start})") from None


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@lru_cache(maxsize=8)
def lm_text(path: Optional[str], digest: Optional[str] = None) -> str:
    """The text a resolved lm config names, checked against its pinned sha256 (a file edited
    after the config was resolved would silently train on other data). Cached: every seed
    and the memory estimate ask for it."""
    text = default_text() if path is None else read_text(path)
    if digest is not None and sha256(text) != digest:
        where = "gradlab's source" if path is None else "the file"
        raise TextError(f"{where} changed since the config was resolved: its sha256 is {sha256(text)[:12]}..., "
                        f"the config pins {digest[:12]}...")
    return text


def vocabulary(text: str) -> list[str]:
    """The sorted distinct characters: class i is the i-th."""
    return sorted(set(text))
