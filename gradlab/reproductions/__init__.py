"""The reproductions `gradlab reproduce` knows, by name, in the order it lists and runs them.

Each is a module of this package defining `REPRODUCTION` (gradlab.reproductions.base); the
modules are imported only when asked for, so `gradlab --help` stays light.
"""

from __future__ import annotations

import difflib
import importlib

from ..errors import UserError, clip
from .base import VERDICTS, Context, Outcome, Reproduction, table

# Module names, in the order of the papers (listing and `--all`).
_MODULES: tuple[str, ...] = (
    "pascanu_cliff",
    "pascanu_temporal_order",
    "zhang_smoothness",
    "xiong_warmup",
    "wortsman_stability",
)


def reproductions() -> dict:
    """name -> Reproduction, in listing order."""
    found = {}
    for module in _MODULES:
        rep = importlib.import_module(f"{__name__}.{module}").REPRODUCTION
        if rep.name in found:
            raise ValueError(f"two reproductions are named {rep.name!r}")
        found[rep.name] = rep
    return found


def get(name: str) -> Reproduction:
    """The reproduction called `name`; a UserError naming NAME and the known names otherwise."""
    known = reproductions()
    if name in known:
        return known[name]
    close = difflib.get_close_matches(name, list(known), n=1)
    hint = f" (did you mean `{close[0]}`?)" if close else ""
    raise UserError(f"no reproduction `{clip(name)}`{hint}; known: {', '.join(known) or 'none'} "
                    "(`gradlab reproduce` lists them)", key="NAME")


__all__ = ["VERDICTS", "Context", "Outcome", "Reproduction", "get", "reproductions", "table"]
