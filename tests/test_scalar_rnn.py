"""The scalar_rnn model and its scalar_target task: Pascanu et al. 2013's one-unit recurrence.

The model contract (tests/test_model_contract.py) checks its gradients by finite differences
and its stacking; here: the loss is the paper's error written out in plain Python, the
gradients hold by finite differences on both sides of the wall at the paper's T = 50, a torch
twin agrees, and the schema pairs the model with its task only.
"""

import math

import numpy as np
import pytest

from gradlab.config import ExperimentConfig
from gradlab.errors import UserError
from gradlab.gradcheck import check_gradients
from gradlab.models import build_model, stack
from gradlab.tasks import build_task


def _model(w, b, T=50, target=0.7, dtype="float64", V=None):
    cfg = ExperimentConfig.model_validate(dict(
        name="s", model=dict(kind="scalar_rnn", w=w, b=b), task=dict(kind="scalar_target", seq_len=T, target=target),
        train=dict(dtype=dtype)))
    task = build_task(cfg.task, dtype, np.random.default_rng(0))
    model = build_model(cfg.model, task, dtype)
    return cfg, task, model, stack(model.init(np.random.default_rng(0)), 1)


def _paper_error(w, b, T=50, x0=0.5, target=0.7):
    x = x0
    for _ in range(T):
        x = w / (1 + math.exp(-x)) + b
    return (1 / (1 + math.exp(-x)) - target) ** 2


@pytest.mark.parametrize("w,b", [(1.0, 0.0), (5.0, -2.5), (8.0, -4.3), (-3.0, 2.0), (12.0, -7.0)])
def test_the_loss_is_the_papers_error(w, b):
    _, task, model, params = _model(w, b)
    x, y = task.batch(np.random.default_rng(1))
    out, _ = model.forward(params, x)
    loss, _ = task.loss(out, y)
    assert loss[0] == pytest.approx(_paper_error(w, b), rel=1e-12, abs=1e-15)


@pytest.mark.parametrize("w,b", [(5.0, -2.4), (5.0, -2.6), (8.0, -4.0), (2.0, 0.3)])
def test_gradients_match_finite_differences_at_t50(w, b):
    _, task, model, params = _model(w, b)
    x, y = task.batch(np.random.default_rng(1))

    def loss():
        return float(task.loss(model.forward(params, x)[0], y)[0][0])

    out, cache = model.forward(params, x)
    _, dout = task.loss(out, y)
    grads = model.backward(params, cache, dout)
    check_gradients(loss, params, grads, eps=1e-7, rtol=1e-5)


def test_the_error_surface_has_a_wall():
    """Across b at w = 5 the error jumps between its two basins (0.34 and 0.01) within one
    step of 0.01 in b, where everywhere else neighbouring points differ by less than 0.01:
    the wall of the paper's Figure 6."""
    errs = []
    for b in np.linspace(-3.5, -1.5, 201):
        _, task, model, params = _model(5.0, float(b))
        x, y = task.batch(np.random.default_rng(1))
        errs.append(float(task.loss(model.forward(params, x)[0], y)[0][0]))
    jumps = np.sort(np.abs(np.diff(errs)))
    assert jumps[-1] > 0.3 and jumps[-2] < 0.01


def test_the_model_pairs_with_its_task_only():
    with pytest.raises(ValueError, match="scalar_target only"):
        ExperimentConfig.model_validate(dict(name="s", model=dict(kind="scalar_rnn"), task=dict(kind="teacher")))
    with pytest.raises(ValueError, match="needs kind scalar_rnn"):
        ExperimentConfig.model_validate(dict(name="s", model=dict(kind="mlp"), task=dict(kind="scalar_target")))
    with pytest.raises(ValueError, match="scalar_target only, not adding"):
        ExperimentConfig.model_validate(dict(name="s", model=dict(kind="scalar_rnn"), task=dict(kind="adding")))
    with pytest.raises(ValueError, match="needs kind scalar_rnn"):  # not the other non-sequence kinds
        ExperimentConfig.model_validate(dict(name="s", model=dict(kind="lstm"), task=dict(kind="scalar_target")))
    with pytest.raises(ValueError, match=r"it needs kind mlp \["):  # the scalar_rnn learns its own task only
        ExperimentConfig.model_validate(dict(name="s", model=dict(kind="gru"), task=dict(kind="teacher")))


def test_a_bad_value_is_one_line_naming_its_key(tmp_path):
    from gradlab.config import load_config

    f = tmp_path / "c.yaml"
    f.write_text("model: {kind: scalar_rnn, w: .nan}\ntask: {kind: scalar_target, target: 1.5}\n")
    with pytest.raises(UserError) as e:
        load_config(f)
    assert e.value.key in ("model.w", "task.target")


def test_torch_twin_agrees():
    torch = pytest.importorskip("torch")
    for w0, b0 in [(5.0, -2.4), (8.0, -4.3), (1.5, 0.2)]:
        _, task, model, params = _model(w0, b0)
        x, y = task.batch(np.random.default_rng(1))
        out, cache = model.forward(params, x)
        loss, dout = task.loss(out, y)
        grads = model.backward(params, cache, dout)
        w = torch.tensor(w0, dtype=torch.float64, requires_grad=True)
        b = torch.tensor(b0, dtype=torch.float64, requires_grad=True)
        h = torch.tensor(0.5, dtype=torch.float64)
        for _ in range(50):
            h = w * torch.sigmoid(h) + b
        err = (torch.sigmoid(h) - 0.7) ** 2
        err.backward()
        assert loss[0] == pytest.approx(err.item(), rel=1e-12)
        assert grads["rnn.w"][0, 0] == pytest.approx(w.grad.item(), rel=1e-9, abs=1e-14)
        assert grads["rnn.b"][0, 0] == pytest.approx(b.grad.item(), rel=1e-9, abs=1e-14)
