"""Learning-rate schedules: the closed forms, torch's schedulers when installed, the lr the
loop trains with and records, and what the config refuses."""

import math
from types import SimpleNamespace

import numpy as np
import pytest

from gradlab.config import ExperimentConfig, config_hash
from gradlab.config.schema import ScheduleConfig, TrainConfig
from gradlab.schedules import Schedule
from gradlab.train import train_seed

STEPS, LR, MIN_LR, WARMUP = 50, 0.1, 0.01, 8


def sched(kind, warmup_steps=0, min_lr=0.0, lr=LR, steps=STEPS):
    return Schedule(SimpleNamespace(kind=kind, warmup_steps=warmup_steps, min_lr=min_lr), lr, steps)


def lrs(s, steps=STEPS):
    return [s.lr(t) for t in range(steps)]


def cosine(t, span, lo=MIN_LR, hi=LR):
    return lo + (hi - lo) * (1 + math.cos(math.pi * t / span)) / 2


def test_closed_forms():
    assert lrs(sched("constant")) == [LR] * STEPS
    warm = lrs(sched("linear_warmup", WARMUP))
    assert warm[0] == LR * (1 / WARMUP) and warm[WARMUP - 1] == LR and warm[WARMUP:] == [LR] * (STEPS - WARMUP)
    np.testing.assert_allclose(warm[:WARMUP], [LR * (t + 1) / WARMUP for t in range(WARMUP)], rtol=1e-15)
    cos = lrs(sched("cosine", min_lr=MIN_LR))
    assert cos[0] == LR
    np.testing.assert_allclose(cos, [cosine(t, STEPS) for t in range(STEPS)], rtol=1e-14)
    wc = lrs(sched("warmup_cosine", WARMUP, MIN_LR))
    np.testing.assert_allclose(wc[:WARMUP], warm[:WARMUP], rtol=1e-15)
    np.testing.assert_allclose(wc[WARMUP:], [cosine(t, STEPS - WARMUP) for t in range(STEPS - WARMUP)], rtol=1e-14)
    assert wc[WARMUP] == LR and min(wc) > MIN_LR  # the floor is T_max's, one step past the end
    assert lrs(sched("warmup_cosine", STEPS, MIN_LR)) == lrs(sched("linear_warmup", STEPS))
    assert lrs(sched("linear_warmup", 0)) == [LR] * STEPS
    assert lrs(sched("warmup_cosine", 0, MIN_LR)) == lrs(sched("cosine", min_lr=MIN_LR))


def test_lr_is_a_python_float():
    """A NumPy float64 scalar would promote a float32 step to float64."""
    for kind in ("constant", "linear_warmup", "cosine", "warmup_cosine"):
        assert all(type(x) is float for x in lrs(sched(kind, WARMUP if "warmup" in kind else 0)))


# ----------------------------------------------------------------------------- torch
def torch_lrs(make, steps=STEPS, lr=LR):
    torch = pytest.importorskip("torch")
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    sch = make(torch, opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    return out


def test_linear_warmup_is_torchs_lambda_lr():
    ours = sched("linear_warmup", WARMUP)
    theirs = torch_lrs(lambda torch, opt: torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: min(1.0, (t + 1) / WARMUP)))
    assert lrs(ours) == theirs  # bit for bit


@pytest.mark.parametrize("kind, warmup", [("cosine", 0), ("warmup_cosine", WARMUP), ("linear_warmup", WARMUP),
                                          ("constant", 0)])
def test_every_schedule_is_torchs_lambda_lr_of_its_factor(kind, warmup):
    ours = sched(kind, warmup, MIN_LR if "cosine" in kind else 0.0)
    theirs = torch_lrs(lambda torch, opt: torch.optim.lr_scheduler.LambdaLR(opt, ours.factor))
    assert lrs(ours) == theirs  # bit for bit


def test_cosine_is_torchs_cosine_annealing():
    theirs = torch_lrs(lambda torch, opt: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=STEPS, eta_min=MIN_LR))
    # torch's recursive form rounds differently from the closed form: close, not equal.
    np.testing.assert_allclose(lrs(sched("cosine", min_lr=MIN_LR)), theirs, rtol=1e-12)


def test_warmup_cosine_is_torchs_warmup_then_cosine_annealing():
    def make(torch, opt):
        S = torch.optim.lr_scheduler
        return S.SequentialLR(opt, [S.LambdaLR(opt, lambda t: (t + 1) / WARMUP),
                                    S.CosineAnnealingLR(opt, T_max=STEPS - WARMUP, eta_min=MIN_LR)],
                              milestones=[WARMUP])
    theirs = torch_lrs(make)
    np.testing.assert_allclose(lrs(sched("warmup_cosine", WARMUP, MIN_LR)), theirs, rtol=1e-12)


# ----------------------------------------------------------------------------- the loop
def make(schedule=None, clipping=({"method": "none"}, {"method": "norm", "max_norm": 1.0}), steps=20,
         optimizer=None, **train):
    t = dict(steps=steps, optimizer=optimizer or dict(lr=0.05, momentum=0.9), **train)
    if schedule is not None:
        t["schedule"] = schedule
    return ExperimentConfig.model_validate(dict(
        name="s", model=dict(depth=4, width=16, init=dict(scheme="normal", gain=1.5)),
        task=dict(batch_size=16, input_dim=4), train=t, clipping=list(clipping)))


WC = dict(kind="warmup_cosine", warmup_steps=5, min_lr=0.001)


def column(result, name):
    return [row[result.columns.index(name)] for row in result.metrics_rows]


@pytest.mark.parametrize("schedule", [None, WC, dict(kind="linear_warmup", warmup_steps=7),
                                      dict(kind="cosine", min_lr=0.01)])
def test_metrics_lr_column_is_the_schedule(schedule):
    cfg = make(schedule)
    expected = lrs(Schedule(cfg.train.schedule, 0.05, 20), 20)
    for r in train_seed(cfg, 0):
        assert column(r, "lr") == expected


def test_a_schedule_changes_the_run_and_stacked_equals_alone():
    cfg = make(WC)
    together = train_seed(cfg, 1)
    for i, c in enumerate(cfg.clipping):
        alone = train_seed(cfg, 1, [c], [i])[0]
        assert alone.metrics_rows == together[i].metrics_rows  # bit for bit
        assert alone.layer_rows == together[i].layer_rows
    plain = train_seed(make(), 1)
    assert column(plain[0], "loss") != column(together[0], "loss")


def test_a_float32_step_at_a_scheduled_lr_stays_float32():
    from gradlab.optim import SGD, Adam

    for opt in (SGD(0.1, momentum=0.9), Adam(0.1)):
        p = {"w": np.ones((2, 3), np.float32)}
        state = opt.init(p)
        updates, _, _ = opt.update({"w": np.ones((2, 3), np.float32)}, state, p, lr=Schedule(
            ScheduleConfig(**WC), 0.1, 20).lr(3))
        assert updates["w"].dtype == np.float32


def test_the_default_schedule_keeps_the_resolved_config_and_its_hash():
    plain, explicit = make(), make(dict(kind="constant"))
    assert "schedule" not in plain.resolved()["train"]
    assert plain.resolved() == explicit.resolved() and config_hash(plain) == config_hash(explicit)
    assert make(WC).resolved()["train"]["schedule"] == {**WC}
    assert config_hash(make(WC)) != config_hash(plain)


def test_the_run_store_accepts_runs_with_a_schedule(tmp_path):
    from gradlab.cli import main
    from gradlab.store import check_run

    args = ["run", "configs/quickstart.yaml", "--set", "train.steps=12", "--set", "model.depth=3",
            "--set", "train.schedule.kind=warmup_cosine", "--set", "train.schedule.warmup_steps=4",
            "--set", "train.schedule.min_lr=0.001", "--seeds", "0", "--workers", "1", "--no-plots", "--quiet",
            "--out", str(tmp_path)]
    main(args)
    (exp,) = tmp_path.iterdir()
    runs = sorted(p.name for p in (exp / "runs").iterdir())
    assert runs
    for rid in runs:
        state, problem = check_run(exp, rid)
        assert problem == "", (rid, problem)
        header = (exp / "runs" / rid / "metrics.csv").read_text().split("\n")[0].split(",")
        assert "lr" in header


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize("train, message", [
    (dict(schedule=dict(kind="linear_warmup", warmup_steps=21)), "warmup_steps must be <= train.steps (20), got 21"),
    (dict(schedule=dict(kind="cosine", min_lr=0.5)), "min_lr must be <= the optimizer's lr (0.05), got 0.5"),
    (dict(schedule=dict(kind="cosine", warmup_steps=3)), "warmup_steps applies to kinds linear_warmup"),
    (dict(schedule=dict(kind="linear_warmup", warmup_steps=3, min_lr=0.01)), "min_lr applies to kinds cosine"),
    (dict(schedule=dict(kind="linear_warmup", warmup_steps=-1)), "greater than or equal to 0"),
    (dict(schedule=dict(kind="cosine", min_lr=-0.1)), "greater than or equal to 0"),
])
def test_bad_schedules_are_refused(train, message):
    with pytest.raises(Exception) as e:
        make(**train)
    assert message in str(e.value)


def test_edge_schedules_are_allowed():
    make(dict(kind="linear_warmup", warmup_steps=20))
    make(dict(kind="cosine", min_lr=0.05))
    TrainConfig.model_validate(dict(schedule=dict(kind="warmup_cosine")))


def test_a_skipped_step_moves_along_the_schedule_and_stacked_equals_alone():
    """A skip leaves the variants with different Adam step counts (the per-variant path of
    the optimizer); the lr still follows the loop's step, the same for every variant."""
    clipping = ({"method": "none"}, {"method": "skip", "sigma": 0.5, "window": 24})
    cfg = make(WC, clipping, steps=40, optimizer=dict(kind="adam", lr=0.01))
    together = train_seed(cfg, 2)
    assert 1 in column(together[1], "skipped")
    expected = lrs(Schedule(cfg.train.schedule, 0.01, 40), 40)
    for i, c in enumerate(cfg.clipping):
        assert column(together[i], "lr") == expected
        alone = train_seed(cfg, 2, [c], [i])[0]
        assert alone.metrics_rows == together[i].metrics_rows  # bit for bit
