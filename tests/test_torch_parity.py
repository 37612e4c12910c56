"""gradlab's recurrent models against torch.nn.RNN / LSTM / GRU, in float64, with the same
weights: loss and every gradient of a batch, and ten optimizer steps with clipping at 1.0.

Needs torch (`pip install torch==2.13.0`); without it the module is skipped."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from gradlab.clipping import ClipByGlobalNorm, apply_rule  # noqa: E402
from gradlab.config import ClipNorm  # noqa: E402
from gradlab.losses import mse  # noqa: E402
from gradlab.models import stack  # noqa: E402
from gradlab.models.recurrent import Recurrent  # noqa: E402
from gradlab.norms import param_norms  # noqa: E402

T, B, IN, H, OUT, DEPTH = 12, 5, 3, 6, 2, 2
TORCH_CLASS = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}


class TorchNet(torch.nn.Module):
    def __init__(self, kind, activation, per_step):
        super().__init__()
        kw = {"nonlinearity": activation} if kind == "rnn" else {}
        self.rnn = TORCH_CLASS[kind](IN, H, num_layers=DEPTH, **kw).double()
        self.head = torch.nn.Linear(H, OUT).double()
        self.per_step = per_step

    def forward(self, x):
        seq, _ = self.rnn(x)
        return self.head(seq if self.per_step else seq[-1])


def build(kind, activation="tanh", per_step=False, seed=0):
    model = Recurrent(kind, DEPTH, H, IN, OUT, per_step=per_step, activation_name=activation,
                      gain=1.2, dtype="float64")
    params = model.init(np.random.default_rng(seed))
    r = np.random.default_rng(seed + 1)
    for k in params:  # nonzero biases, so that their layout is tested too
        params[k] = params[k] + 0.1 * r.standard_normal(params[k].shape)
    net = TorchNet(kind, activation, per_step)
    with torch.no_grad():
        for l in range(DEPTH):
            for ours, theirs in (("W_ih", "weight_ih"), ("W_hh", "weight_hh"), ("b_ih", "bias_ih"), ("b_hh", "bias_hh")):
                getattr(net.rnn, f"{theirs}_l{l}").copy_(torch.tensor(params[f"{kind}.{l}.{ours}"]))
        net.head.weight.copy_(torch.tensor(params["head.W"].T))
        net.head.bias.copy_(torch.tensor(params["head.b"]))
    return model, stack(params, 1), net


def torch_grads(net, kind):
    g = {}
    for l in range(DEPTH):
        for ours, theirs in (("W_ih", "weight_ih"), ("W_hh", "weight_hh"), ("b_ih", "bias_ih"), ("b_hh", "bias_hh")):
            g[f"{kind}.{l}.{ours}"] = getattr(net.rnn, f"{theirs}_l{l}").grad.numpy()
    g["head.W"] = net.head.weight.grad.numpy().T
    g["head.b"] = net.head.bias.grad.numpy()
    return g


def torch_params(net, kind):
    with torch.no_grad():
        for p in net.parameters():
            p.grad = p.detach().clone()  # reuse torch_grads' mapping for the values
    return torch_grads(net, kind)


def data(per_step, seed=2):
    r = np.random.default_rng(seed)
    return r.standard_normal((T, B, IN)), r.standard_normal((T, B, OUT) if per_step else (B, OUT))


CASES = [("rnn", "tanh"), ("rnn", "relu"), ("lstm", "tanh"), ("gru", "tanh")]


@pytest.mark.parametrize("kind, activation", CASES)
@pytest.mark.parametrize("per_step", [False, True])
def test_loss_and_gradients_match_torch(kind, activation, per_step):
    model, params, net = build(kind, activation, per_step)
    x, y = data(per_step)
    out, cache = model.forward(params, x)
    loss, dout = mse(out.reshape(1, -1, OUT), y.reshape(-1, OUT))
    grads = model.backward(params, cache, dout.reshape(out.shape))
    t_out = net(torch.tensor(x))
    t_loss = torch.nn.functional.mse_loss(t_out, torch.tensor(y))
    t_loss.backward()
    assert float(loss[0]) == pytest.approx(t_loss.item(), rel=1e-6)
    for name, g in torch_grads(net, kind).items():
        np.testing.assert_allclose(grads[name][0], g, rtol=1e-6, atol=1e-12, err_msg=name)


OPTIMIZERS = [
    ("sgd", dict(lr=0.1, momentum=0.9)),
    ("adam", dict(lr=0.01)),
    ("adamw", dict(lr=0.01, weight_decay=0.05)),
    ("rmsprop", dict(lr=0.01, momentum=0.5, centered=True)),
]


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("opt_kind, hp", OPTIMIZERS, ids=[o for o, _ in OPTIMIZERS])
def test_ten_clipped_steps_match_torch(kind, opt_kind, hp):
    from gradlab.optim import build_optimizer
    from gradlab.transforms import apply_updates
    from gradlab import config as C

    cfg_cls = {"sgd": C.SGDConfig, "adam": C.AdamConfig, "adamw": C.AdamWConfig, "rmsprop": C.RMSpropConfig}[opt_kind]
    opt = build_optimizer(cfg_cls(kind=opt_kind, **hp))
    model, params, net = build(kind, seed=3)
    state = opt.init(params)
    clip = ClipByGlobalNorm([ClipNorm(method="norm", max_norm=1.0)])
    t_opt = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW,
             "rmsprop": torch.optim.RMSprop}[opt_kind](net.parameters(), **hp)
    for step in range(10):
        x, y = data(False, seed=10 + step)
        out, cache = model.forward(params, x)
        _, dout = mse(out, y)
        grads = model.backward(params, cache, dout)
        apply_rule(clip, grads)
        updates, state, _ = opt.update(grads, state, params)
        apply_updates(params, updates)
        t_opt.zero_grad()
        torch.nn.functional.mse_loss(net(torch.tensor(x)), torch.tensor(y)).backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        t_opt.step()
    for name, w in torch_params(net, kind).items():
        np.testing.assert_allclose(params[name][0], w, rtol=1e-6, atol=1e-10, err_msg=name)


@pytest.mark.parametrize("opt_kind, hp", OPTIMIZERS[:2], ids=[o for o, _ in OPTIMIZERS[:2]])
def test_ten_clipped_steps_with_a_warmup_cosine_schedule_match_torch(opt_kind, hp):
    """gradlab's schedule against torch's LambdaLR of the factor the README documents,
    stepped after each optimizer step."""
    from types import SimpleNamespace

    from gradlab.optim import build_optimizer
    from gradlab.schedules import Schedule
    from gradlab.transforms import apply_updates
    from gradlab import config as C

    steps, warmup, min_lr = 10, 3, hp["lr"] / 10
    opt = build_optimizer({"sgd": C.SGDConfig, "adam": C.AdamConfig}[opt_kind](kind=opt_kind, **hp))
    sched = Schedule(SimpleNamespace(kind="warmup_cosine", warmup_steps=warmup, min_lr=min_lr), hp["lr"], steps)
    model, params, net = build("lstm", seed=3)
    state = opt.init(params)
    clip = ClipByGlobalNorm([ClipNorm(method="norm", max_norm=1.0)])
    t_opt = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam}[opt_kind](net.parameters(), **hp)

    def factor(t):
        if t < warmup:
            return (t + 1) / warmup
        return (min_lr + (hp["lr"] - min_lr) * (1 + np.cos(np.pi * (t - warmup) / (steps - warmup))) / 2) / hp["lr"]
    t_sched = torch.optim.lr_scheduler.LambdaLR(t_opt, factor)
    for step in range(steps):
        x, y = data(False, seed=10 + step)
        out, cache = model.forward(params, x)
        _, dout = mse(out, y)
        grads = model.backward(params, cache, dout)
        apply_rule(clip, grads)
        updates, state, _ = opt.update(grads, state, params, lr=sched.lr(step))
        apply_updates(params, updates)
        assert sched.lr(step) == pytest.approx(t_opt.param_groups[0]["lr"], rel=1e-14)
        t_opt.zero_grad()
        torch.nn.functional.mse_loss(net(torch.tensor(x)), torch.tensor(y)).backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        t_opt.step()
        t_sched.step()
    for name, w in torch_params(net, "lstm").items():
        np.testing.assert_allclose(params[name][0], w, rtol=1e-6, atol=1e-10, err_msg=name)
