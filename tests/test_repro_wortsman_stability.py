"""Wortsman et al. 2023 (`gradlab reproduce wortsman-stability`): the two checks' rules on
constructed numbers, and the whole reproduction end to end on a shrunk run, its LR sensitivity
checked against a hand computation from the runs' files."""

from __future__ import annotations

import math
import re

import pytest

from gradlab.io import read_csv, read_json
from gradlab.reproductions import get
from gradlab.reproductions import wortsman_stability as ws
from gradlab.reproductions.runner import run_reproduction


def test_variant_names():
    assert ws.variant_name(False, 0.0) == "none"
    assert ws.variant_name(False, 1e-4) == "z_loss"
    assert ws.variant_name(True, 0) == "qk_norm"
    assert ws.variant_name(True, 1e-4) == "qk_norm + z_loss"


def _top(plain_growth, plain_entropy, qk_growth, plain_final=3.2, qk_final=2.9, qk_entropy=0.6):
    def runs(growth, entropy, final):
        return [dict(seed=s, logit0=5.0, logit_max=5.0 * g, entropy0=2.0, entropy_min=2.0 * e, final=final,
                     diverged=False) for s, (g, e) in enumerate(zip(growth, entropy))]
    return {"none": runs(plain_growth, plain_entropy, plain_final),
            "z_loss": runs(plain_growth, plain_entropy, plain_final),
            "qk_norm": runs(qk_growth, [qk_entropy] * len(qk_growth), qk_final),
            "qk_norm + z_loss": runs(qk_growth, [qk_entropy] * len(qk_growth), qk_final)}


@pytest.mark.parametrize("top, ok", [
    (_top([1e4, 5e4], [0.01, 0.02], [15, 20]), True),
    (_top([1e4, 5], [0.01, 0.02], [15, 20]), False),  # one seed's logit did not grow
    (_top([1e4, 5e4], [0.01, 0.5], [15, 20]), False),  # one seed's entropy did not collapse
    (_top([1e4, 5e4], [0.01, 0.02], [15, 2000]), False),  # qk_norm's growth not 10x smaller
    (_top([1e4, 5e4], [0.01, 0.02], [15, 20], qk_entropy=0.05), False),  # qk_norm's entropy collapsed
    (_top([1e4, 5e4], [0.01, 0.02], [15, 20], plain_final=2.8), False),  # ends below qk_norm's
])
def test_the_logit_rule(top, ok):
    assert ws.logit_check(top)[0] is ok


def test_the_sensitivity_rule_needs_every_seed_and_a_tenth():
    sens = {"none": {"mean": 0.3, "seeds": {0: 0.3, 1: 0.2}},
            "qk_norm": {"mean": 0.1, "seeds": {0: 0.1, 1: 0.1}},
            "z_loss": {"mean": 0.29, "seeds": {0: 0.29, 1: 0.19}},  # lower, by less than a tenth
            "qk_norm + z_loss": {"mean": 0.2, "seeds": {0: 0.1, 1: 0.25}}}  # not in seed 1
    lower, text = ws.sens_check(sens)
    assert lower == {"qk_norm": True, "z_loss": False, "qk_norm + z_loss": False}
    assert "none 0.3" in text


SHRUNK = ("train.steps=16", "model.width=8", "model.heads=2", "model.mlp_ratio=1", "model.depth=1",
          "task.seq_len=4", "task.batch_size=2", "seeds=[0]", "train.eval_batches=1")


def test_the_reproduction_end_to_end_on_a_shrunk_run(tmp_path):
    rep = get("wortsman-stability")
    root = run_reproduction(rep, tmp_path, sets=SHRUNK, workers=1, plots=False)
    page = (root / "reproduction.md").read_text()
    record = read_json(root / "reproduction.json")
    assert f"## Verdict: {record['verdict']}" in page
    for png in ("wortsman_logits.png", "wortsman_sensitivity.png"):
        assert (root / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"plots/{png}" in page
    # The unmitigated variant's LR sensitivity, by hand from its runs' files: the mean over the
    # learning rates of min(final held-out loss, loss at step 0), less the least of them.
    exp = root / record["experiments"]["wortsman_stability"]
    lrs = ["0.0003", "0.001", "0.003", "0.01", "0.03", "0.1", "0.3"]
    clamped = []
    for lr in lrs:
        run = exp / "runs" / f"qk_norm=false,z_loss=0,lr={lr}" / "norm-1-s0"
        rep_ = read_json(run / "report.json")
        header, rows = read_csv(run / "metrics.csv")
        l0 = rows[0][header.index("loss")]
        final = rep_["final_val_loss"]
        clamped.append(l0 if rep_["diverged"] or not math.isfinite(final) else min(final, l0))
    best = min(clamped)
    by_hand = sum(c - best for c in clamped) / len(clamped)
    section = page.split("### LR sensitivity per variant")[1]
    row = re.search(r"^\| none \|(.*)\|$", section, re.M).group(1).split("|")
    assert row[-2].strip() == f"{by_hand:.3g}"  # printed to 3 significant digits
    # Every variant has its row, in the order none, z_loss, qk_norm, both.
    names = re.findall(r"^\| (none|z_loss|qk_norm|qk_norm \+ z_loss) \| 0 \|", page, re.M)
    assert names == ["none", "z_loss", "qk_norm", "qk_norm + z_loss"]
