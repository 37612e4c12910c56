"""What a threshold sweep is, read from its runs: the clipping variants (each described by
its rule's descriptor, report.json's `rule`), how they group into families (one method, one
swept knob, the other knobs equal) and their order. The report's sweep table and finding, the
sweep plots and the stability grid's clipping axis all read the sweep through `sweep_rows`, so
they agree on it. Pure Python: `gradlab report` needs no NumPy for it."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field

from . import io
from .io import as_float as _float

_METHOD_RANK = {m: i for i, m in enumerate(("none", "norm", "value", "per_tensor", "agc", "autoclip", "zclip", "skip"))}


def config_dict(cfg) -> dict:
    """config.yaml as plain data, from that data or from an ExperimentConfig."""
    if isinstance(cfg, dict):
        return cfg
    if hasattr(cfg, "resolved"):
        return cfg.resolved()
    if hasattr(cfg, "model_dump"):
        return cfg.model_dump(mode="json")
    return {}


def _same(a, b) -> bool:
    """Equal as report.json holds them (inf and nan as strings)."""
    return io.json_safe(a) == io.json_safe(b)


def _entry_of(rule: dict) -> dict:
    """The config.yaml clipping entry a descriptor describes (a chain's knobs hold its rules'
    descriptors)."""
    knobs = rule.get("knobs") if isinstance(rule.get("knobs"), dict) else {}
    if rule.get("method") == "chain" and isinstance(knobs.get("rules"), list):
        knobs = {**knobs, "rules": [_entry_of(r) if isinstance(r, dict) else r for r in knobs["rules"]]}
    return {"method": rule.get("method"), **knobs}


def _canon(entry: dict) -> str:
    """A clipping entry as one comparable string (a set of them matches a 1000-threshold
    sweep's entries to its runs in linear time)."""
    return json.dumps(io.json_safe(entry), sort_keys=True)


def _sortable(v) -> tuple:
    x = _float(v)
    return (0, x, "") if x is not None and not math.isnan(x) else (1, 0.0, io.dumps_json(v))


@dataclass
class SweepRow:
    """One clipping variant across seeds: its descriptor (report.json's `rule`) and seed -> its
    report (finished runs only). Everything the table and plots say of the variant is read
    from the descriptor, never from its id."""

    variant: str
    rule: dict
    runs: dict = field(default_factory=dict)

    @property
    def method(self) -> str:
        return str(self.rule.get("method"))

    @property
    def knob(self) -> str | None:
        """The knob a sweep of this rule varies (None for none and chain)."""
        swept = self.rule.get("swept")
        return swept.get("knob") if isinstance(swept, dict) else None

    @property
    def threshold(self) -> float | None:
        swept = self.rule.get("swept")
        return _float(swept.get("value")) if isinstance(swept, dict) else None

    @property
    def fixed(self) -> dict:
        """The knobs a sweep holds fixed: every knob but the swept one."""
        knobs = self.rule.get("knobs") if isinstance(self.rule.get("knobs"), dict) else {}
        return {k: v for k, v in knobs.items() if k != self.knob}

    @property
    def norm_type(self) -> float | None:
        return _float(self.fixed.get("norm_type", 2.0)) if self.method == "norm" else None

    @property
    def label(self) -> str:
        return str(self.rule.get("label") or self.variant)

    @property
    def family(self) -> tuple:
        """The rows one sweep line joins: one method, one swept knob, the other knobs equal."""
        return (self.method, self.knob, tuple(sorted((k, _sortable(v)) for k, v in self.fixed.items())))

    @property
    def ok(self) -> list[dict]:
        return [r for r in self.runs.values() if not r.get("diverged")]

    @property
    def diverged(self) -> list[dict]:
        return [r for r in self.runs.values() if r.get("diverged")]

    @property
    def steps(self) -> list[int]:
        return sorted(int(s) for s in (_float(r.get("divergence_step")) for r in self.diverged) if s is not None)

    @property
    def mean_loss(self) -> float | None:
        """The mean final loss over the seeds that did not diverge (a diverged run keeps its
        last finite loss, which is not a result)."""
        losses = [x for x in (_float(r.get("final_loss")) for r in self.ok) if x is not None and math.isfinite(x)]
        return sum(losses) / len(losses) if losses else None

    @property
    def clip_fraction(self) -> float | None:
        """The mean over every finished seed (a diverged run's is over its steps before divergence)."""
        return self._mean("clip_fraction")

    @property
    def grad_cosine(self) -> float | None:
        """The mean over the finished seeds of their mean grad_cosine over clipped steps (the
        direction the rule kept); None where no seed clipped or recorded it."""
        return self._mean("mean_grad_cosine")

    def _mean(self, key: str) -> float | None:
        values = [_float(r.get(key)) for r in self.runs.values()]
        values = [x for x in values if x is not None and math.isfinite(x)]
        return sum(values) / len(values) if values else None

    @property
    def stable(self) -> bool:
        return bool(self.runs) and not self.diverged


def _described(clip: dict) -> tuple[str, dict] | None:
    """(variant id, descriptor) of one config.yaml clipping entry, by the schema's own rule;
    None when the entry is not a valid rule of this gradlab."""
    from pydantic import ValidationError

    from .config import parse_rule
    try:
        rule = parse_rule(clip)
    except ValidationError:
        return None
    return rule.variant_id(), io.json_safe(rule.describe())


def rules_of(reports: list[dict], cfg) -> dict[str, dict]:
    """variant -> its descriptor, for every variant of the config and of the finished runs.

    A run's report.json says it; a config entry is matched to a run by its knobs (config.yaml
    holds every knob resolved), so a complete experiment needs no schema. The schema describes
    the entries no run describes: variants still to run, and runs of a gradlab before
    descriptors (their rule is the config entry of the same variant)."""
    cfg = config_dict(cfg)
    out: dict[str, dict] = {}
    for r in reports:
        rule = r.get("rule")
        if isinstance(rule, dict) and isinstance(r.get("variant"), str):
            out.setdefault(r["variant"], rule)
    described = {_canon(_entry_of(d)) for d in out.values()}
    for clip in cfg.get("clipping") or []:
        if isinstance(clip, dict) and _canon(clip) not in described:
            found = _described(clip)
            if found is not None:
                out.setdefault(*found)
    for r in reports:  # an older run its config no longer describes: what its report says
        v = r.get("variant")
        if isinstance(v, str) and v not in out:
            t = r.get("threshold")
            out[v] = {"method": str(r.get("method")), "knobs": {}, "label": v,
                      "swept": None if t is None else {"knob": "threshold", "value": t}}
    return out


def is_sweep(reports: list[dict], cfg) -> bool:
    """A threshold sweep: the config has `sweep` (from `gradlab sweep`), or its clipping list
    (or the finished runs) has one method at two or more thresholds."""
    if isinstance(config_dict(cfg).get("sweep"), dict):
        return True
    seen: dict[str, set] = defaultdict(set)
    for rule in rules_of(reports, cfg).values():
        row = SweepRow("", rule)
        if row.method != "none" and row.threshold is not None:
            seen[row.method].add(row.threshold)
    return any(len(ts) >= 2 for ts in seen.values())


def sweep_rows(reports: list[dict], cfg) -> tuple[list, list[SweepRow]]:
    """(seeds, rows) of the threshold x seed table: the baseline first, then each family by
    ascending threshold; the config's variants and seeds are there before their runs finish."""
    cfg = config_dict(cfg)
    rows = {v: SweepRow(v, rule) for v, rule in rules_of(reports, cfg).items()}
    seeds = [s for s in (cfg.get("seeds") or ([cfg["seed"]] if cfg.get("seed") is not None else [])) if s is not None]
    for r in reports:
        rows[r["variant"]].runs[r.get("seed")] = r
        if r.get("seed") not in seeds:
            seeds.append(r.get("seed"))

    def order(row: SweepRow) -> tuple:
        method, knob, fixed = row.family
        return (_METHOD_RANK.get(method, len(_METHOD_RANK)), method, str(knob), fixed,
                row.threshold if row.threshold is not None else 0.0, row.variant)

    return seeds, sorted(rows.values(), key=order)


def _text(v) -> str:
    x = _float(v)
    if isinstance(v, list):
        return ", ".join(map(_text, v))
    if x is None:
        return str(v).lower()
    return format(x, "g") if math.isfinite(x) else str(x)


def family_names(rows: list[SweepRow]) -> dict[tuple, str]:
    """family -> 'norm max_norm (norm_type 1)': its method and swept knob, and the fixed knobs
    in which it differs from another family of its method (none when it is the only one)."""
    first: dict[tuple, SweepRow] = {}
    for r in rows:
        if r.method != "none":
            first.setdefault(r.family, r)
    names = {}
    for fam, r in first.items():
        others = [o for f, o in first.items() if f != fam and o.method == r.method]
        differ = [k for k, v in r.fixed.items() if any(not _same(o.fixed.get(k), v) for o in others)]
        rest = ", ".join(f"{k} {_text(r.fixed[k])}" for k in differ)
        names[fam] = " ".join(x for x in (r.method, r.knob) if x) + (f" ({rest})" if rest else "")
    return names
