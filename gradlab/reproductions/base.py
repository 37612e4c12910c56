"""What a reproduction is: a paper's claim, the shipped configs that test it, and an analysis
that reads their finished runs and says, from the measured numbers alone, whether the claim
held here (reproduced, partly, not) and why.

The analysis is the only place a reproduction's own code runs; training is the ordinary
`run_experiment` of ordinary configs, so every figure in a reproduction can be rerun with
`gradlab run configs/papers/<file>.yaml` and inspected with the usual plots and reports.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

VERDICTS = ("reproduced", "partly", "not")


@dataclass
class Context:
    """What an analysis reads and where it writes."""

    root: Path  # the reproduction's folder: <out>/reproductions/<name>/
    experiments: dict[str, Path]  # config file stem -> its finished experiment directory
    configs: dict[str, Any]  # config file stem -> the ExperimentConfig as run (after `sets`)
    plots: Path  # root / "plots": the analysis's figures go here
    workers: Optional[int] = None  # --workers, for analyses that compute
    sets: tuple[str, ...] = ()  # the --set overrides every config was run with


@dataclass
class Outcome:
    """An analysis's answer. `body` is markdown (figures as paths relative to the root, e.g.
    `plots/cliff.png`); every number in it comes from the runs."""

    verdict: str  # one of VERDICTS
    why: str  # one sentence
    body: str

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(VERDICTS)}, got {self.verdict!r}")
        if not self.why.strip():
            raise ValueError("an outcome says why")


@dataclass(frozen=True)
class Reproduction:
    name: str  # the command-line name: `gradlab reproduce pascanu-cliff`
    title: str  # "Pascanu, Mikolov & Bengio 2013, Figure 6: the cliff"
    paper: str  # the citation, with its address
    claim: str  # the paper's claim (markdown), citing its figure or table
    configs: tuple[str, ...]  # file names under configs/papers/, run in this order
    analyse: Callable[[Context], Outcome] = field(compare=False)
    minutes: float  # measured wall time of a fresh `gradlab reproduce NAME` on 2 cores


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A markdown table; floats in a compact general format."""
    def cell(x: Any) -> str:
        if isinstance(x, float):
            return f"{x:.4g}"
        return str(x).replace("|", "\\|")

    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)
