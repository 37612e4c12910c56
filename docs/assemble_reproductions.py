"""Writes docs/reproductions.md from the registry and the per-reproduction sections in
docs/reproductions/NAME.md (the figures beside them). The sections are written by hand from
each `gradlab reproduce NAME` page; this page is assembled, never edited, so the index's
titles and times are the registry's and a test can tell when it is stale.

    python docs/assemble_reproductions.py
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

INTRO = (
    "Each section puts a paper's claim beside what gradlab measured from its shipped configs "
    "(`configs/papers/`), with a verdict computed from the runs. Rerun one with `gradlab reproduce NAME`; "
    "its page, `outputs/reproductions/NAME/reproduction.md`, holds the numbers of your run. Figures live "
    "in `docs/reproductions/`."
)


def assemble(docs: Path = HERE) -> str:
    from gradlab.reproductions import reproductions

    reps = list(reproductions().values())
    out = ["# Reproductions", "", INTRO, "", "| name | paper and result | about (min, 2 cores) |", "|---|---|---|"]
    out += [f"| [`{r.name}`](#{r.name}) | {r.title} | {r.minutes:g} |" for r in reps]
    for r in reps:
        section = (docs / "reproductions" / f"{r.name}.md").read_text(encoding="utf-8").rstrip()
        # The sections link their figures as siblings; this page sits one folder up.
        section = re.sub(r"\]\(([\w.-]+\.png)\)", r"](reproductions/\1)", section)
        out += ["", f'<a id="{r.name}"></a>', "", section]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parent))  # runs from a checkout without an install
    (HERE / "reproductions.md").write_text(assemble(), encoding="utf-8")
    sys.exit(0)
