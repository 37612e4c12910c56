"""Loss scaling against torch.amp.GradScaler("cpu"): for scripted gradients, finite and not,
gradlab's scale, skip and unscaled gradient sequences equal those GradScaler gives a tiny
torch model and optimizer, bit for bit; and the loop's clipping before the unscale equals
torch's clip_grad_norm_ called on the scaled gradients (the common bug)."""

from types import SimpleNamespace

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from gradlab.clipping import Clipper  # noqa: E402
from gradlab.norms import param_norms  # noqa: E402
from gradlab.precision import LossScaler  # noqa: E402

INF, NAN = float("inf"), float("nan")


def knobs(**over):
    base = dict(compute="float32", loss_scale="dynamic", init_scale=2.0 ** 16, growth_factor=2.0,
                backoff_factor=0.5, growth_interval=3, min_scale=0.0, clip="after_unscale")
    return SimpleNamespace(**{**base, **over})


def found_inf(scaler, opt) -> bool:
    """Whether GradScaler will skip this step: what unscale_ recorded for the optimizer (no
    public accessor; torch 2.13's attribute)."""
    return bool(sum(v.item() for v in scaler._per_optimizer_states[id(opt)]["found_inf_per_device"].values()))


def torch_run(xs, cfg, max_norm=None):
    """GradScaler driving loss = sum(w * x) with SGD: per step the scale it used, whether it
    skipped, and the unscaled gradient the optimizer was given."""
    w = torch.nn.Parameter(torch.ones(len(xs[0]), dtype=torch.float32))
    opt = torch.optim.SGD([w], lr=0.01)
    scaler = torch.amp.GradScaler("cpu", init_scale=cfg.init_scale, growth_factor=cfg.growth_factor,
                                  backoff_factor=cfg.backoff_factor, growth_interval=cfg.growth_interval)
    scales, skips, grads = [], [], []
    for x in xs:
        opt.zero_grad()
        loss = (w * torch.tensor(x, dtype=torch.float32)).sum()
        scaler.scale(loss).backward()
        scales.append(scaler.get_scale())
        if max_norm is not None:  # the bug: clipping the scaled gradients
            torch.nn.utils.clip_grad_norm_([w], max_norm)
        scaler.unscale_(opt)
        grads.append(w.grad.detach().numpy().copy())
        skips.append(found_inf(scaler, opt))
        scaler.step(opt)
        scaler.update()
    return scales, skips, grads


def gradlab_run(xs_per_variant, cfg, max_norm=None):
    """LossScaler over a stack of variants, each with its own scripted gradients; with
    max_norm, torch's clip_grad_norm_ (gradlab's `norm` rule) on the scaled gradients first."""
    V = len(xs_per_variant)
    scaler = LossScaler(cfg, V)
    clipper = Clipper([SimpleNamespace(method="norm", max_norm=max_norm, eps=1e-6, norm_type=2.0)] * V) \
        if max_norm is not None else None
    if clipper:
        clipper.init({"w": np.zeros((V, 1))})
    scales, skips, grads = [], [], []
    with np.errstate(all="ignore"):
        for t in range(len(xs_per_variant[0])):
            x = np.array([xs[t] for xs in xs_per_variant], dtype=np.float32)
            # dL/dw = x for loss = sum(w * x): the scaled backward is x * scale.
            g = {"w": scaler.scale_output_grad(x)}
            scales.append(scaler.scale.astype(np.float64).copy())
            if clipper:
                clipper(g, param_norms(g), {})
            found = scaler.unscale_(g)
            grads.append(g["w"].copy())
            skips.append(found.copy())
            scaler.update(found)
    return ([[float(s[v]) for s in scales] for v in range(V)], [[bool(s[v]) for s in skips] for v in range(V)],
            [[a[v] for a in grads] for v in range(V)])


CLEAN = [0.5, -0.25, 1e-3]
# growth after exactly 3 clean steps; an overflow and a NaN back off and reset the tracker;
# two clean steps then a bad one: no growth; a finite gradient that overflows once scaled.
SEQUENCE = ([CLEAN] * 3 + [[INF, 1.0, 0.0]] + [CLEAN] * 3 + [[1.0, NAN, 2.0]] + [CLEAN] * 2
            + [[-INF, 0.0, 0.0]] + [CLEAN] * 4 + [[1e30, 1.0, 1.0]] + [CLEAN] * 5)


def same(a, b):
    for ta, tb in zip(a, b):
        np.testing.assert_array_equal(np.asarray(ta, dtype=np.float32), np.asarray(tb, dtype=np.float32))


@pytest.mark.parametrize("cfg", [
    knobs(),
    knobs(init_scale=2.0 ** 126),  # growth to 2**128 is inf in float32: refused, tracker reset
    knobs(init_scale=1000.3, growth_factor=1.7, backoff_factor=0.3, growth_interval=2),  # rounding of the products
    knobs(init_scale=0.37, growth_interval=1),  # a scale below 1: inv_scale above 1
], ids=["default", "growth_to_inf_refused", "odd_factors", "below_one"])
def test_scale_skip_and_unscaled_gradients_equal_gradscaler(cfg):
    t_scales, t_skips, t_grads = torch_run(SEQUENCE, cfg)
    (g_scales,), (g_skips,), (g_grads,) = gradlab_run([SEQUENCE], cfg)
    assert g_scales == t_scales
    assert g_skips == t_skips
    assert any(t_skips) and not all(t_skips)
    same(g_grads, t_grads)


def test_the_scripted_sequence_shows_every_rule():
    """Growth, backoff and a refused growth all happen in the sequences above."""
    scales, skips, _ = torch_run(SEQUENCE, knobs())
    assert scales[:4] == [2.0 ** 16] * 3 + [2.0 ** 17]  # grown after exactly 3 clean steps
    assert skips[3] and scales[4] == 2.0 ** 16  # backed off
    capped, _, _ = torch_run([CLEAN] * 7, knobs(init_scale=2.0 ** 126))
    assert capped == [2.0 ** 126] * 3 + [2.0 ** 127] * 4  # 2**128 refused, and again 3 steps later


def test_variants_in_a_stack_keep_their_own_scales():
    """Two variants with different gradients: each equals GradScaler on its own sequence."""
    other = [CLEAN] * 5 + [[NAN, 0.0, 0.0]] + [CLEAN] * (len(SEQUENCE) - 6)
    cfg = knobs(growth_interval=2)
    g_scales, g_skips, g_grads = gradlab_run([SEQUENCE, other], cfg)
    for v, xs in enumerate([SEQUENCE, other]):
        t_scales, t_skips, t_grads = torch_run(xs, cfg)
        assert g_scales[v] == t_scales and g_skips[v] == t_skips
        same(g_grads[v], t_grads)
    assert g_scales[0] != g_scales[1]


def test_clipping_before_the_unscale_equals_torch_clipping_scaled_gradients():
    """clip: before_unscale is clip_grad_norm_ called between backward and scaler.step: the
    threshold applies to the scaled norm, so in effect it is max_norm / scale."""
    xs = [[3.0, -4.0, 0.0], [0.3, 0.4, 0.0], [1e-6, 0.0, 0.0], [INF, 0.0, 0.0], [3.0, 4.0, 12.0]]
    cfg = knobs(init_scale=1024.0, growth_interval=2)
    t_scales, t_skips, t_grads = torch_run(xs, cfg, max_norm=1.0)
    (g_scales,), (g_skips,), (g_grads,) = gradlab_run([xs], cfg, max_norm=1.0)
    assert g_scales == t_scales and g_skips == t_skips
    finite = [i for i, s in enumerate(t_skips) if not s]
    # torch's clip coefficient is taken in float32, gradlab's in float64: equal to float32 rounding.
    for i in finite:
        np.testing.assert_allclose(g_grads[i], t_grads[i], rtol=2e-7, atol=0)
    # the unscaled gradients have norm about max_norm / scale: the bug's signature
    assert np.linalg.norm(g_grads[0]) == pytest.approx(1.0 / 1024.0, rel=1e-5)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_scaled_mlp_backward_skips_and_scales_as_gradscaler(seed):
    """The whole step on a float32 MLP: gradlab scales dL/dout, torch the loss; a scale near
    float32's largest makes the backward overflow on some steps and not on others. The scale
    and skip sequences are torch's exactly; the weights agree to float32 rounding.

    One example a batch: with 16, torch sums a bias gradient over the batch in float32 in an
    order whose partial sums can overflow where gradlab's sum of the same terms (2.2e38) does
    not (seed 0, step 11), a difference of the reduction, not of the scaler, that would skip
    one step in torch and not in gradlab."""
    from gradlab.losses import mse
    from gradlab.models import MLP, stack

    depth, width, n_in, lr = 3, 8, 4, 0.05
    model = MLP(depth, width, n_in, 1, "tanh", "normal", 1.5, "float32")
    p0 = model.init(np.random.default_rng(seed))
    params = stack(p0, 1)
    layers = [torch.nn.Linear(a, b) for a, b in zip([n_in] + [width] * (depth - 1), [width] * (depth - 1) + [1])]
    with torch.no_grad():
        for i, lin in enumerate(layers):
            lin.weight.copy_(torch.tensor(p0[f"layer{i}.W"].T))
            lin.bias.copy_(torch.tensor(p0[f"layer{i}.b"]))
    net = torch.nn.Sequential(*[m for lin in layers[:-1] for m in (lin, torch.nn.Tanh())], layers[-1])
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    cfg = knobs(init_scale=3.0e38, growth_interval=2)
    torch_scaler = torch.amp.GradScaler("cpu", init_scale=cfg.init_scale, growth_factor=cfg.growth_factor,
                                        backoff_factor=cfg.backoff_factor, growth_interval=cfg.growth_interval)
    ours = LossScaler(cfg, 1)
    data = np.random.default_rng(seed + 1)
    ours_seq, torch_seq = [], []
    with np.errstate(all="ignore"):
        for _ in range(30):
            x = data.standard_normal((1, n_in)).astype(np.float32)
            y = (3.0 * data.standard_normal((1, 1))).astype(np.float32)
            out, cache = model.forward(params, x)
            _, dout = mse(out, y)
            grads = model.backward(params, cache, ours.scale_output_grad(dout))
            used = float(ours.scale[0])
            found = ours.unscale_(grads)
            if not found[0]:
                for k in params:
                    params[k] -= np.float32(lr) * grads[k]
            ours.update(found)
            ours_seq.append((used, bool(found[0])))

            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(net(torch.tensor(x)), torch.tensor(y))
            torch_scaler.scale(loss).backward()
            scale = torch_scaler.get_scale()
            torch_scaler.unscale_(opt)
            skipped = found_inf(torch_scaler, opt)
            torch_scaler.step(opt)
            torch_scaler.update()
            torch_seq.append((scale, skipped))
    assert ours_seq == torch_seq
    skips = [s for _, s in ours_seq]
    assert 3 <= sum(skips) < len(skips) - 5, skips
    for i, lin in enumerate(layers):
        np.testing.assert_allclose(params[f"layer{i}.W"][0], lin.weight.detach().numpy().T, rtol=1e-4, atol=1e-6)


def test_a_gradient_the_unscale_overflows_is_not_found_inf():
    """The kernel looks at the scaled gradients: float32's largest times 0.8151375651359558,
    unscaled by the rounded reciprocal, overflows, yet the step is not skipped (in torch as in
    gradlab; gradlab's loop then sees a non-finite gradient norm that no skip absorbs: the run
    diverges)."""
    big = float(np.finfo(np.float32).max)
    xs = [CLEAN, [big, 1.0, 0.0], CLEAN]
    cfg = knobs(init_scale=0.8151375651359558, growth_interval=5)
    t_scales, t_skips, t_grads = torch_run(xs, cfg)
    (g_scales,), (g_skips,), (g_grads,) = gradlab_run([xs], cfg)
    assert g_scales == t_scales and g_skips == t_skips == [False, False, False]
    same(g_grads, t_grads)
    assert np.isinf(g_grads[1][0])
