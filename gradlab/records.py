"""What a run's outcome is, derived from its per-step records alone.

The training loop (metrics.Recorder) and the run store's damage check (store.check_run)
both derive report.json's outcome fields from the rows of metrics.csv through `summarize`,
so a report.json edited by hand, or a metrics.csv from another run, disagrees with it and
is caught. Pure Python: the check runs in `plot` and `report`, which need no NumPy for it.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

# The columns of metrics.csv the README documents, in order; `grad_cosine` follows (runs of a
# gradlab before it lack it), then each rule's own (`skipped`), then `accuracy` for
# classification tasks.
METRIC_COLUMNS = ("step", "loss", "grad_norm", "clipped_norm", "clip_coef", "clipped", "update_norm", "nonfinite")
INTEGER_COLUMNS = ("clipped", "nonfinite", "skipped")
OUTCOME_FIELDS = ("max_grad_norm", "final_loss", "steps_completed", "clip_fraction", "final_accuracy",
                  "mean_grad_cosine", "skip_fraction", "final_val_loss", "best_val_loss", "final_loss_scale",
                  "min_loss_scale", "max_underflow", "final_underflow", "smoothness_measured",
                  "max_smoothness", "median_smoothness")
# The model's and the loss's own statistics (the transformer's attention, a classifier's log Z),
# last in metrics.csv and only where some model produces them: a run of a model without them
# keeps the metrics.csv it always had, byte for byte. Per block, `max_attn_logit` is reduced
# by its max (the block whose logits grow is the news) and `attn_entropy` by its mean.
DIAGNOSTIC_COLUMNS = ("max_attn_logit", "attn_entropy", "logit_z")
DIAGNOSTIC_FIELDS = ("max_attn_logit", "final_max_attn_logit", "min_attn_entropy", "final_attn_entropy",
                     "max_logit_z", "final_logit_z")


def summarize(columns: Sequence[str], rows: Sequence[Sequence[float]]) -> dict:
    """max_grad_norm, final_loss, steps_completed, clip_fraction (and final_accuracy,
    mean_grad_cosine, skip_fraction, final_val_loss and best_val_loss, final_loss_scale and
    min_loss_scale: each where metrics.csv has the column it comes from).

    A step is healthy when nothing in it was non-finite; the row of the step a run diverged
    at is kept for its gradient norm but not for its loss. A value that never existed (a run
    that diverged at step 0 has no finite gradient norm and no loss) is None, written as
    null: never "nan", so that "no value" reads the same in every field.
    """
    at = {c: i for i, c in enumerate(columns)}
    healthy = [r for r in rows if r[at["nonfinite"]] == 0]
    norms = [r[at["grad_norm"]] for r in rows if math.isfinite(r[at["grad_norm"]])]
    losses = [r[at["loss"]] for r in healthy if math.isfinite(r[at["loss"]])]
    # A count over a count: exact, and the same however the rows are summed.
    clipped = sum(1 for r in healthy if r[at["clipped"]] == 1)
    out = {
        "max_grad_norm": float(max(norms)) if norms else None,
        "final_loss": float(losses[-1]) if losses else None,
        "steps_completed": len(healthy),
        "clip_fraction": clipped / len(healthy) if healthy else 0.0,
    }
    if "grad_cosine" in at:
        # The direction a rule kept where it acted: over the healthy clipped steps, in step order.
        cos = [r[at["grad_cosine"]] for r in healthy if r[at["clipped"]] == 1 and math.isfinite(r[at["grad_cosine"]])]
        out["mean_grad_cosine"] = sum(cos) / len(cos) if cos else None
    if "skipped" in at:
        out["skip_fraction"] = sum(1 for r in healthy if r[at["skipped"]] == 1) / len(healthy) if healthy else 0.0
    if "loss_scale" in at:
        # The scale each step used (a run with loss scaling): the last step's, and the lowest,
        # over every row, the one a run diverged at too (its scale is what it failed with).
        scales = [r[at["loss_scale"]] for r in rows]
        out["final_loss_scale"] = float(scales[-1]) if scales else None
        out["min_loss_scale"] = float(min(scales)) if scales else None
    if "val_loss" in at:
        # The steps evaluated (val_loss is NaN elsewhere): the last one's, and the lowest. A
        # held-out loss that overflowed is no value (null), as a diverged run's final_loss.
        evaluated = [r[at["val_loss"]] for r in healthy if not math.isnan(r[at["val_loss"]])]
        finite = [v for v in evaluated if math.isfinite(v)]
        out["final_val_loss"] = float(evaluated[-1]) if evaluated and math.isfinite(evaluated[-1]) else None
        out["best_val_loss"] = float(min(finite)) if finite else None
    if "underflow" in at:
        # The steps measured (NaN elsewhere, and on a step where float32 had no non-zero
        # gradient entry at all): the largest fraction over every row, the last healthy one's.
        measured = [r[at["underflow"]] for r in rows if not math.isnan(r[at["underflow"]])]
        last = [r[at["underflow"]] for r in healthy if not math.isnan(r[at["underflow"]])]
        out["max_underflow"] = float(max(measured)) if measured else None
        out["final_underflow"] = float(last[-1]) if last else None
    if "smoothness" in at:
        # The healthy steps measured (NaN elsewhere, and where the step moved nothing): how
        # many, the largest estimate and the median (the scale a fixed L would have to cover).
        smooth = sorted(r[at["smoothness"]] for r in healthy if not math.isnan(r[at["smoothness"]]))
        out["smoothness_measured"] = len(smooth)
        out["max_smoothness"] = float(smooth[-1]) if smooth else None
        out["median_smoothness"] = (float((smooth[(len(smooth) - 1) // 2] + smooth[len(smooth) // 2]) / 2)
                                    if smooth else None)
    if "accuracy" in at:
        acc: Optional[float] = float(healthy[-1][at["accuracy"]]) if healthy else None
        out["final_accuracy"] = acc if acc is None or math.isfinite(acc) else None
    out.update(_diagnostics(at, rows, healthy))
    return out


def _diagnostics(at: dict, rows, healthy) -> dict:
    """The extremes and final values of the DIAGNOSTIC_COLUMNS metrics.csv has. Extremes over
    every row's finite values, like max_grad_norm: the step a run diverged at often has the
    largest finite attention logit, the cause in plain sight; final values from the last
    healthy step, like final_loss (None when it is not finite)."""
    out: dict = {}

    def extreme(col: str, pick) -> Optional[float]:
        vals = [r[at[col]] for r in rows if math.isfinite(r[at[col]])]
        return float(pick(vals)) if vals else None

    def final(col: str) -> Optional[float]:
        v = float(healthy[-1][at[col]]) if healthy else math.nan
        return v if math.isfinite(v) else None

    if "max_attn_logit" in at:
        out["max_attn_logit"] = extreme("max_attn_logit", max)
        out["final_max_attn_logit"] = final("max_attn_logit")
    if "attn_entropy" in at:
        out["min_attn_entropy"] = extreme("attn_entropy", min)
        out["final_attn_entropy"] = final("attn_entropy")
    if "logit_z" in at:
        out["max_logit_z"] = extreme("logit_z", max)
        out["final_logit_z"] = final("logit_z")
    return out


def underflow_worst(tensors: Sequence[str], underflow_rows: Sequence[Sequence[float]], columns: Sequence[str],
                    rows: Sequence[Sequence[float]]) -> dict:
    """The tensor that lost the largest fraction of its gradient entries to underflow at the
    step `final_underflow` comes from (the last healthy measured step), and that fraction:
    report.json's `underflow_tensor` and `underflow_tensor_fraction` (both None when no step
    was measured; the tensor None and the fraction 0 when no tensor lost any entry). The
    first tensor in the model's order wins a tie. From underflow.csv's rows (step, then a
    fraction per tensor, NaN where float32 had no non-zero entry); pure Python, as
    `summarize`, for the run store's check."""
    at = {c: i for i, c in enumerate(columns)}
    last = None
    for r in rows:
        if r[at["nonfinite"]] == 0 and not math.isnan(r[at["underflow"]]):
            last = int(r[0])
    best: tuple[Optional[str], Optional[float]] = (None, None)
    if last is not None and last < len(underflow_rows):
        for name, x in zip(tensors, underflow_rows[last][1:]):
            if not math.isnan(x) and (best[1] is None or x > best[1]):
                best = (name, float(x))
    if best[1] == 0.0:  # nothing lost anywhere: no tensor is the worst
        best = (None, 0.0)
    return {"underflow_tensor": best[0], "underflow_tensor_fraction": best[1]}
