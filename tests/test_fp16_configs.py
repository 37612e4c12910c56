"""The shipped float16 configs tell the stories their comments and the README tell: float16
without loss scaling loses an MLP's small gradients (configs/fp16_no_scaling.yaml), and each
float16 story also holds on a transformer (configs/transformer_fp16.yaml). Shortened runs of
one seed (the transformer's on shorter sequences, in smaller batches): the outcome, not the
README's digits."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from gradlab.config import load_config
from gradlab.train import train_seed

ROOT = Path(__file__).resolve().parents[1]


SMALL = ("task.seq_len=16", "task.batch_size=8")


def run(name, *overrides, only=None):
    """The reports (with their metrics columns) of seed 0's variants, or of variant `only`."""
    small = SMALL if name.startswith("transformer") else ()
    cfg = load_config(ROOT / "configs" / name, overrides=["seeds=[0]", *small, *overrides])
    clips = None if only is None else [cfg.clipping[only]]
    return [r.report() | {"column": _columns(r)} for r in train_seed(cfg, 0, clips)]


def _columns(r):
    table = np.array(r.metrics_rows, dtype=float)
    return {name: table[:, k] for k, name in enumerate(r.columns)}


def test_fp16_without_scaling_stalls_where_float32_bfloat16_and_loss_scaling_train():
    steps = "train.steps=100"
    half = run("fp16_no_scaling.yaml", steps)
    others = [run("fp16_no_scaling.yaml", steps, f"train.precision.compute={compute}", only=0)[0]
              for compute in ("float32", "bfloat16")]
    others.append(run("fp16_no_scaling.yaml", steps, "train.precision.loss_scale=dynamic", only=0)[0])
    for other in others:
        assert half[0]["column"]["loss"][0] == other["column"]["loss"][0]  # the same weights and batch
        assert half[0]["final_loss"] > 4 * other["final_loss"] and not other["diverged"], other["final_loss"]
    # Clipping cannot give back what underflow took: no step reaches the threshold.
    assert all(r["clip_fraction"] == 0 and not r["diverged"] for r in half)


def test_transformer_dynamic_scale_saw_tooths_and_skips_only_overflowing_steps():
    for r in run("transformer_fp16.yaml", "train.steps=60", "train.precision.growth_interval=10"):
        scale = r["column"]["loss_scale"]
        assert r["skip_fraction"] > 0 and not r["diverged"]
        assert scale.max() > 65536 and r["min_loss_scale"] >= 65536 / 2
        assert all(name.endswith("(backward)") for name in r["overflow_births"])


def test_transformer_scale_collapses_when_the_attention_logits_overflow_float16():
    for r in run("transformer_fp16.yaml", "train.steps=45", "model.init.gain=300", only=1):
        assert r["first_nonfinite"]["kind"] == "loss_scale_collapse" and r["divergence_step"] == 40
        assert r["overflow_births"] == {"block.0.attn.logits (forward)": 41}


def test_transformer_clip_before_unscale_stalls_sgd_and_hides_under_adamw():
    sgd = ("train.steps=60", "train.optimizer.kind=sgd", "train.optimizer.lr=0.3")
    (right,) = run("transformer_fp16.yaml", *sgd, only=1)
    (wrong,) = run("transformer_fp16.yaml", *sgd, "train.precision.clip=before_unscale", only=1)
    assert wrong["final_loss"] > right["final_loss"] + 1.0, (wrong["final_loss"], right["final_loss"])
    assert wrong["clip_fraction"] > 0.9 > right["clip_fraction"]
    (adamw_right,) = run("transformer_fp16.yaml", "train.steps=60", only=1)
    (adamw_wrong,) = run("transformer_fp16.yaml", "train.steps=60", "train.precision.clip=before_unscale", only=1)
    assert abs(adamw_wrong["final_loss"] - adamw_right["final_loss"]) < 0.05


def test_transformer_without_scaling_trains_as_float32_does():
    half = run("transformer_fp16.yaml", "train.steps=60", "train.precision.loss_scale=none")
    full = run("transformer_fp16.yaml", "train.steps=60", "train.precision.loss_scale=none",
               "train.precision.compute=float32")
    for h, f in zip(half, full):
        assert abs(h["final_loss"] - f["final_loss"]) < 0.05 and not h["diverged"]
