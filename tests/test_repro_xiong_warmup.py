"""Xiong et al. 2020 (`gradlab reproduce xiong-warmup`): the transformer's `init_style: vaswani`
that the reproduction trains, the three checks' rules on constructed numbers, and the whole
reproduction end to end on a shrunk run (its numbers read back from the runs)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest

from gradlab.config import ExperimentConfig
from gradlab.config.schema import TransformerConfig
from gradlab.io import read_csv, read_json
from gradlab.models.transformer import Transformer
from gradlab.reproductions import get
from gradlab.reproductions import xiong_warmup as xw
from gradlab.reproductions.runner import run_reproduction


# ----------------------------------------------------------------------------- init_style


def _init(style: str, depth: int = 3, width: int = 16) -> dict[str, np.ndarray]:
    cfg = TransformerConfig(kind="transformer", depth=depth, width=width, heads=2, norm="post", init_style=style)
    model = Transformer(cfg, 11, 11, per_step=True, max_len=8, dtype="float64")
    return model.init(np.random.default_rng(0))


def test_vaswani_init_drops_the_depth_scaling_and_the_small_embeddings_and_nothing_else():
    depth, width = 3, 16
    gpt2, vas = _init("gpt2", depth, width), _init("vaswani", depth, width)
    assert gpt2.keys() == vas.keys()
    for name in gpt2:
        if name.endswith(".proj.W"):  # GPT-2's 1/sqrt(2 depth), the same draw
            np.testing.assert_array_equal(vas[name] * (1.0 / math.sqrt(2 * depth)), gpt2[name])
        elif name.endswith(".E"):  # N(0, 1) against N(0, 1/width), the same draw
            np.testing.assert_array_equal(vas[name] / math.sqrt(width), gpt2[name])
        else:
            np.testing.assert_array_equal(vas[name], gpt2[name])
    assert 0.8 < np.std(vas["tok.E"]) < 1.2


def test_the_default_init_style_is_left_out_of_the_resolved_config():
    """Configs written before init_style keep their hash (and their experiment directory)."""
    base = {"name": "t", "model": {"kind": "transformer", "depth": 2, "width": 16, "heads": 2},
            "task": {"kind": "lm", "seq_len": 8}}
    assert "init_style" not in ExperimentConfig.model_validate(base).resolved()["model"]
    vas = {**base, "model": {**base["model"], "init_style": "vaswani"}}
    assert ExperimentConfig.model_validate(vas).resolved()["model"]["init_style"] == "vaswani"


def test_a_bad_init_style_is_refused(tmp_path):
    from conftest import cli

    path = tmp_path / "c.yaml"
    path.write_text("model: {kind: transformer, depth: 2, width: 16, heads: 2, init_style: xavier}\n"
                    "task: {kind: lm, seq_len: 8}\n")
    assert cli("validate", path) == 2


# ----------------------------------------------------------------------------- the rules


def _t(counts: dict, lrs=(1, 2), warmups=(0, 10)) -> dict:
    return dict(counts=counts, lrs=list(lrs), warmups=list(warmups))


def _counts(pre0, post0, post10, n=2):
    out = {}
    for lr, (a, b, c) in zip((1, 2), zip(pre0, post0, post10)):
        out[("pre", 0, lr)] = (a, n)
        out[("pre", 10, lr)] = (n, n)
        out[("post", 0, lr)] = (b, n)
        out[("post", 10, lr)] = (c, n)
    return out


@pytest.mark.parametrize("pre0, post0, post10, holds", [
    ((2, 2), (2, 0), (2, 2), [2]),  # lr 2: pre learns without warm-up, post only with one
    ((2, 2), (2, 1), (2, 2), []),  # post learnt in one seed without warm-up: not "in none"
    ((2, 2), (2, 0), (2, 1), []),  # warm-up does not rescue post in every seed
    ((2, 1), (2, 0), (2, 2), []),  # pre did not learn in every seed without warm-up
    ((2, 2), (0, 0), (2, 2), [1, 2]),
])
def test_the_warmup_rule(pre0, post0, post10, holds):
    got, text = xw.warmup_check(_t(_counts(pre0, post0, post10)))
    assert got == holds
    assert text.endswith(".")


def test_the_depth_rule():
    def by(pre, post):
        return dict(depths=[2, 4, 8], by={**{("pre", d): [(x, 1.0)] for d, x in zip([2, 4, 8], pre)},
                                          **{("post", d): [(x, 1.0)] for d, x in zip([2, 4, 8], post)}})
    ok, text, rows = xw.depth_check(by([1.0, 0.7, 0.5], [1.5, 1.5, 1.6]))
    assert ok and len(rows) == 3 and rows[-1][-1] == pytest.approx(1.6 / 0.5)
    assert not xw.depth_check(by([1.0, 0.7, 0.5], [1.5, 0.9, 1.6]))[0]  # the ratio dips at depth 4
    assert not xw.depth_check(by([1.0, 0.7, 0.5], [0.9, 1.5, 1.6]))[0]  # post below pre at depth 2


def test_the_profile_rule():
    def prof(post, pre):
        return dict(depth=3, prof={("post", xw.W1): [post], ("post", xw.W2): [post],
                                   ("pre", xw.W1): [pre], ("pre", xw.W2): [pre]})
    assert xw.profile_check(prof([1.0, 1.5, 2.0], [1.0, 1.0, 0.9]))[0]
    assert not xw.profile_check(prof([1.0, 1.5, 0.9], [1.0, 1.0, 0.9]))[0]  # post falls at the last block
    assert not xw.profile_check(prof([1.0, 1.5, 1.2], [1.0, 1.0, 0.5]))[0]  # pre varies more than post


# ----------------------------------------------------------------------------- end to end

SHRUNK = ("train.steps=100", "model.width=8", "model.heads=2", "model.mlp_ratio=1", "task.seq_len=4",
          "task.batch_size=2", "seeds=[0]", "train.eval_batches=1")


def test_the_reproduction_end_to_end_on_a_shrunk_run(tmp_path):
    rep = get("xiong-warmup")
    root = run_reproduction(rep, tmp_path, sets=SHRUNK, workers=1, plots=False)
    page = (root / "reproduction.md").read_text()
    record = read_json(root / "reproduction.json")
    assert record["verdict"] in ("reproduced", "partly", "not")
    assert f"## Verdict: {record['verdict']}" in page
    for png in ("xiong_warmup_map.png", "xiong_init.png"):
        assert (root / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"plots/{png}" in page
    # Every cell of the grid in the table: 2 norms x 3 warm-ups, 4 learning rates.
    assert len(re.findall(r"^\| (pre|post)-LN \| (0|25|100) \|", page, re.M)) == 6
    # The numbers come from the runs: one run's held-out loss, one run's step-0 gradient norm.
    exp = root / record["experiments"]["xiong_warmup"]
    run = next(p for p in (exp / "runs").glob("norm=post,warmup_steps=0,lr=0.001/none-s0"))
    assert f"{read_json(run / 'report.json')['final_val_loss']:.2f}" in page
    init = root / record["experiments"]["xiong_init"]
    header, rows = read_csv(init / "runs" / "norm=pre,depth=16" / "none-s0" / "layer_norms.csv")
    last = rows[0][header.index("block.15.mlp.proj.W")]
    assert f"| 16 | {last:.4g} |" in page
