"""gradlab's transformer against a torch transformer written out by hand from the equations
the model documents, in float64, with the same weights: the loss and every gradient of a
batch, ten AdamW steps with clipping at 1.0, and a stack of differing variants.

The torch side uses torch's own ops (F.layer_norm, F.gelu(approximate="tanh"),
F.scaled_dot_product_attention or an explicit masked softmax, F.cross_entropy) so that a
convention gradlab got wrong (a layout, a scale, an eps, where a norm sits) shows up as a
mismatch rather than being copied into the reference.

Needs torch (`pip install torch==2.13.0`); without it the module is skipped."""

import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from gradlab.clipping import ClipByGlobalNorm, apply_rule  # noqa: E402
from gradlab.config import AdamWConfig, ClipNorm  # noqa: E402
from gradlab.config.schema import TransformerConfig  # noqa: E402
from gradlab.losses import mse, softmax_cross_entropy  # noqa: E402
from gradlab.models.transformer import Transformer  # noqa: E402
from gradlab.models.workspace import Workspace  # noqa: E402
from gradlab.optim import build_optimizer  # noqa: E402
from gradlab.transforms import apply_updates  # noqa: E402

T, B, D, HEADS, RATIO, DEPTH, MAX_LEN = 6, 3, 8, 2, 3, 2, 8  # max_len > T: pos.E rows T.. get 0
VOCAB, N_CLASSES, N_REAL = 7, 5, 2
EPS = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    """The tensors are tiny: with torch's threads on a shared 2-core machine the file took a
    minute of waiting on busy cores, with one thread a few seconds."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


# task -> (per_step, token ids, classification)
TASKS = {"copy": (True, True, True), "temporal_order": (False, True, True), "adding": (False, False, False)}


def build(task, norm="pre", qk_norm=False, bias=True, tied=False, z_loss=0.0, V=1, seed=0,
          depth=DEPTH, width=D, heads=HEADS, ratio=RATIO):
    """gradlab's model and a stack of V parameter sets that differ, every gain and bias away
    from its init (1, 0) so that their layout is tested too."""
    per_step, ids, _ = TASKS[task]
    cfg = TransformerConfig(kind="transformer", depth=depth, width=width, heads=heads, mlp_ratio=ratio, norm=norm,
                            qk_norm=qk_norm, bias=bias, tie_embeddings=tied, z_loss=z_loss, max_len=MAX_LEN)
    n_in = VOCAB if ids else N_REAL
    n_out = VOCAB if tied else (N_CLASSES if ids else 1)
    model = Transformer(cfg, n_in, n_out, per_step=per_step, max_len=MAX_LEN, dtype="float64")
    r = np.random.default_rng(seed + 100)
    params = {}
    for name, p0 in model.init(np.random.default_rng(seed)).items():
        params[name] = np.stack([p0 + 0.3 * r.standard_normal(p0.shape) for _ in range(V)])
    return model, params


def data(task, n_out, seed):
    """x: (T, B) int64 ids or (T, B, 2) adding-task inputs; y: (T, B) or (B,) int64 labels,
    or (B, 1) regression targets."""
    per_step, ids, classification = TASKS[task]
    r = np.random.default_rng(seed)
    x = r.integers(0, VOCAB, (T, B)) if ids else np.stack([r.uniform(size=(T, B)), r.integers(0, 2, (T, B))], -1)
    if classification:
        y = r.integers(0, n_out, (T, B) if per_step else (B,))
    else:
        y = r.standard_normal((B, 1))
    return x, y


class TorchTransformer(torch.nn.Module):
    """The transformer as the docstring of gradlab.models.transformer states it, batch-first
    inside (torch's convention), parameters named as gradlab names them."""

    def __init__(self, model, params, v=0, explicit_softmax=False):
        super().__init__()
        self.m, self.explicit = model, explicit_softmax
        self.stats = []  # (max |attention logit|, mean entropy) per block, explicit path only
        self.max_u = 0.0  # the largest |GELU input|
        self.w = torch.nn.ParameterDict({name.replace(".", "/"): torch.nn.Parameter(torch.tensor(params[name][v]))
                                         for name in model.shapes})

    def p(self, name):
        key = name.replace(".", "/")
        return self.w[key] if key in self.w else None

    def ln(self, x, name):
        return F.layer_norm(x, x.shape[-1:], self.p(f"{name}.g"), self.p(f"{name}.b"), eps=EPS)

    def linear(self, x, name):
        y = x @ self.p(f"{name}.W")
        b = self.p(f"{name}.b")
        return y if b is None else y + b

    def attn(self, a, b):
        n, t, D = a.shape
        H = self.m.H
        dh = D // H
        q, k, v = (z.reshape(n, t, H, dh).transpose(1, 2) for z in self.linear(a, f"{b}.attn.qkv").split(D, -1))
        if self.m.qk_norm:
            q, k = self.ln(q, f"{b}.attn.q_ln"), self.ln(k, f"{b}.attn.k_ln")
        if self.explicit:
            s = q @ k.transpose(-1, -2) / math.sqrt(dh)
            future = torch.ones(t, t, dtype=torch.bool).triu(1)
            w = torch.softmax(s.masked_fill(future, float("-inf")), -1)
            entropy = -(w * torch.log(w.masked_fill(future, 1.0))).sum(-1)
            self.stats.append((s.masked_fill(future, 0.0).abs().max().item(), entropy.mean().item()))
            o = w @ v
        else:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.linear(o.transpose(1, 2).reshape(n, t, D), f"{b}.attn.proj")

    def mlp(self, a, b):
        u = self.linear(a, f"{b}.mlp.fc")
        self.max_u = max(self.max_u, u.abs().max().item())
        return self.linear(F.gelu(u, approximate="tanh"), f"{b}.mlp.proj")

    def forward(self, x):
        E = self.p("tok.E")
        h = E[x] if x.dtype == torch.int64 else x @ E  # (T, B, D)
        h = (h + self.p("pos.E")[:x.shape[0], None]).transpose(0, 1)  # (B, T, D)
        for i in range(self.m.depth):
            b = f"block.{i}"
            if self.m.norm == "pre":
                h = h + self.attn(self.ln(h, f"{b}.ln1"), b)
                h = h + self.mlp(self.ln(h, f"{b}.ln2"), b)
            else:
                h = self.ln(h + self.attn(h, b), f"{b}.ln1")
                h = self.ln(h + self.mlp(h, b), f"{b}.ln2")
        if self.m.norm == "pre":
            h = self.ln(h, "ln_f")
        if self.m.tied:
            logits = h @ E.T
            if self.p("head.b") is not None:
                logits = logits + self.p("head.b")
        else:
            logits = self.linear(h, "head")
        # (T, B, O) time-major per step; a sequence-to-one task reads the last position.
        return logits.transpose(0, 1) if self.m.per_step else logits[:, -1]

    def loss(self, x, y):
        out = self(torch.tensor(x))
        if not np.issubdtype(y.dtype, np.integer):
            return F.mse_loss(out, torch.tensor(y))
        flat = out.reshape(-1, out.shape[-1])
        loss = F.cross_entropy(flat, torch.tensor(y).reshape(-1))
        if self.m.z_loss:
            loss = loss + self.m.z_loss * (torch.logsumexp(flat, -1) ** 2).mean()
        return loss

    def numpy(self, grad=False):
        return {name: (p.grad if grad else p).detach().numpy() for name, p in
                ((k.replace("/", "."), p) for k, p in self.w.items())}


def gradlab_loss(model, params, x, y, ws=None):
    """The per-variant loss (V,) and every gradient, as the training loop computes them."""
    out, cache = model.forward(params, x, ws=ws)
    if np.issubdtype(y.dtype, np.integer):
        loss, dout = softmax_cross_entropy(out, y, z_loss=model.z_loss)
    else:
        loss, dout = mse(out, y)
    return loss, model.backward(params, cache, dout, ws=ws)


def assert_close(ours, theirs, name, rtol=1e-6, floor=0.0):
    """Norm-relative per tensor (a tensor's small entries may carry cancellation that an
    elementwise rtol would flag) and elementwise to the tensor's own scale. `floor` is an
    absolute tolerance for tensors whose exact value is 0: the key LayerNorm's bias adds
    q.b_k to a whole row of scores, which the softmax ignores, so its gradient is rounding
    error on both sides, ~1e-17, and agrees with nothing."""
    assert ours.shape == theirs.shape, name
    scale = np.linalg.norm(theirs)
    assert np.linalg.norm(ours - theirs) <= rtol * scale + floor, (name, np.linalg.norm(ours - theirs), scale)
    np.testing.assert_allclose(ours, theirs, rtol=rtol, atol=1e-9 * np.abs(theirs).max() + floor, err_msg=name)


def assert_gradients_close(ours, theirs, what=""):
    """Every tensor, with the zero-gradient floor at 1e-12 of the whole gradient's norm."""
    floor = 1e-12 * math.sqrt(sum(float(np.vdot(g, g)) for g in theirs.values()))
    for name, g in theirs.items():
        assert_close(ours[name], g, name + what, floor=floor)


def _cases():
    for task in TASKS:
        classification, ids = TASKS[task][2], TASKS[task][1]
        for norm in ("pre", "post"):
            for qk_norm in (False, True):
                for bias in (True, False):
                    for tied in ((False, True) if ids else (False,)):
                        for z_loss in ((0.0, 0.03) if classification else (0.0,)):
                            yield pytest.param(task, norm, qk_norm, bias, tied, z_loss,
                                               id=f"{task}-{norm}{'-qk' if qk_norm else ''}{'' if bias else '-nobias'}"
                                                  f"{'-tied' if tied else ''}{f'-z{z_loss}' if z_loss else ''}")


@pytest.mark.parametrize("task, norm, qk_norm, bias, tied, z_loss", list(_cases()))
def test_loss_and_every_gradient_match_torch(task, norm, qk_norm, bias, tied, z_loss):
    """In the training loop's setting: a Workspace whose buffers a step on another batch
    left full, so that a buffer read before it is written shows."""
    model, params = build(task, norm, qk_norm, bias, tied, z_loss)
    ws = Workspace()
    gradlab_loss(model, params, *data(task, model.output_dim, seed=0), ws=ws)
    x, y = data(task, model.output_dim, seed=1)
    loss, grads = gradlab_loss(model, params, x, y, ws=ws)
    net = TorchTransformer(model, params)
    t_loss = net.loss(x, y)
    t_loss.backward()
    assert float(loss[0]) == pytest.approx(t_loss.item(), rel=1e-6)
    t_grads = net.numpy(grad=True)
    assert set(grads) == set(t_grads) == set(model.shapes)
    assert_gradients_close({k: g[0] for k, g in grads.items()}, t_grads)
    if qk_norm and bias:  # the structural zero the floor is for, on both sides
        for i in range(DEPTH):
            k_b = f"block.{i}.attn.k_ln.b"
            assert np.abs(grads[k_b]).max() < 1e-12 and np.abs(t_grads[k_b]).max() < 1e-12


@pytest.mark.parametrize("depth, width, heads, ratio", [(1, 12, 3, 1), (3, 8, 8, 2), (2, 6, 1, 4)],
                         ids=["d1-3heads", "d3-dh1", "d2-1head"])
@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("task", ["copy", "temporal_order", "adding"])
def test_other_shapes_match_torch(task, norm, depth, width, heads, ratio):
    """Other depths, head counts (down to one head, and to dh = 1, where q_ln and k_ln
    normalise single numbers to their bias) and MLP ratios, with qk_norm."""
    model, params = build(task, norm, qk_norm=True, depth=depth, width=width, heads=heads, ratio=ratio, seed=7)
    x, y = data(task, model.output_dim, seed=8)
    loss, grads = gradlab_loss(model, params, x, y)
    net = TorchTransformer(model, params)
    t_loss = net.loss(x, y)
    t_loss.backward()
    assert float(loss[0]) == pytest.approx(t_loss.item(), rel=1e-6)
    assert_gradients_close({k: g[0] for k, g in grads.items()}, net.numpy(grad=True))


@pytest.mark.parametrize("qk_norm", [False, True])
@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("task", ["copy", "temporal_order", "adding"])
def test_saturated_weights_match_torch(task, norm, qk_norm):
    """Weights, embeddings and gains 30 times larger: one-hot attention rows, GELU inputs past
    the +-20 where gradlab's backward clips, losses of 1e4 to 1e7. Where training diverges is
    where the gradients must still be right."""
    model, params = build(task, norm, qk_norm, z_loss=0.0 if task == "adding" else 0.03, seed=11)
    for name in params:
        if name.rsplit(".", 1)[1] in ("W", "E", "g"):
            params[name] *= 30.0
    x, y = data(task, model.output_dim, seed=12)
    loss, grads = gradlab_loss(model, params, x, y)
    net = TorchTransformer(model, params)
    t_loss = net.loss(x, y)
    t_loss.backward()
    assert net.max_u > 20.0  # the clipped branch of gradlab's GELU backward runs
    assert float(loss[0]) == pytest.approx(t_loss.item(), rel=1e-6)
    assert_gradients_close({k: g[0] for k, g in grads.items()}, net.numpy(grad=True))


@pytest.mark.parametrize("task", ["copy", "temporal_order", "adding"])
def test_float32_stays_float32_and_near_torch_float64(task):
    model, params = build(task, "pre", qk_norm=True, z_loss=0.0 if task == "adding" else 0.03)
    m32 = Transformer(TransformerConfig(kind="transformer", depth=DEPTH, width=D, heads=HEADS, mlp_ratio=RATIO,
                                        qk_norm=True, z_loss=model.z_loss, max_len=MAX_LEN),
                      model.input_dim, model.output_dim, per_step=model.per_step, max_len=MAX_LEN, dtype="float32")
    x, y = data(task, model.output_dim, seed=1)
    f32 = (lambda a: a.astype(np.float32) if a.dtype.kind == "f" else a)
    loss, grads = gradlab_loss(m32, {k: p.astype(np.float32) for k, p in params.items()}, f32(x), f32(y))
    net = TorchTransformer(model, params)
    t_loss = net.loss(x, y)
    t_loss.backward()
    assert loss.dtype == np.float32 and all(g.dtype == np.float32 for g in grads.values())
    assert float(loss[0]) == pytest.approx(t_loss.item(), rel=1e-5)
    t_grads = net.numpy(grad=True)
    floor = 1e-6 * math.sqrt(sum(float(np.vdot(g, g)) for g in t_grads.values()))
    for name, g in t_grads.items():
        assert np.linalg.norm(grads[name][0] - g) <= 1e-4 * np.linalg.norm(g) + floor, name


@pytest.mark.parametrize("task", ["copy", "temporal_order"])
def test_the_explicit_masked_softmax_is_torch_s_causal_attention(task):
    """The reference's two attention paths agree, so neither hides a mask or scale convention."""
    model, params = build(task, "pre", qk_norm=True)
    x, _ = data(task, model.output_dim, seed=1)
    a = TorchTransformer(model, params)(torch.tensor(x))
    b = TorchTransformer(model, params, explicit_softmax=True)(torch.tensor(x))
    assert_close(a.detach().numpy(), b.detach().numpy(), "logits", rtol=1e-12)


@pytest.mark.parametrize("norm, qk_norm", [("pre", False), ("post", True)])
@pytest.mark.parametrize("task", ["copy", "temporal_order"])
def test_the_attention_and_logit_statistics_match_torch(task, norm, qk_norm):
    """What the metrics report of a step (max_attn_logit, attn_entropy per block, logit_z)
    against the same quantities taken from torch's scores, softmax and logsumexp, for three
    differing variants."""
    model, params = build(task, norm, qk_norm, V=3, seed=9)
    x, y = data(task, model.output_dim, seed=10)
    out, cache = model.forward(params, x)
    diag = model.diagnostics(cache)
    stats = {}
    softmax_cross_entropy(out, y, stats=stats)
    for v in range(3):
        net = TorchTransformer(model, params, v=v, explicit_softmax=True)
        with torch.no_grad():
            logits = net(torch.tensor(x))
        max_logit, entropy = np.array(net.stats).T
        np.testing.assert_allclose(diag["max_attn_logit"][v], max_logit, rtol=1e-12)
        np.testing.assert_allclose(diag["attn_entropy"][v], entropy, rtol=1e-12)
        assert stats["logit_z"][v] == pytest.approx(torch.logsumexp(logits, -1).mean().item(), rel=1e-12)


@pytest.mark.parametrize("task, norm, tied, z_loss", [
    ("copy", "pre", False, 0.03), ("copy", "post", True, 0.0),
    ("temporal_order", "pre", True, 0.0), ("temporal_order", "post", False, 0.03),
    ("adding", "pre", False, 0.0), ("adding", "post", False, 0.0)])
def test_ten_clipped_adamw_steps_match_torch(task, norm, tied, z_loss):
    """gradlab's AdamW (its defaults) after ClipByGlobalNorm(1.0) against torch.optim.AdamW
    after clip_grad_norm_(1.0), on the same ten batches. The weights' change over the ten
    steps is compared as well as the weights: at lr 1e-3 the change is a small part of a
    weight, and a wrong update could hide under 1e-6 of the weight itself."""
    cfg = AdamWConfig(kind="adamw")
    opt = build_optimizer(cfg)
    model, params = build(task, norm, qk_norm=True, tied=tied, z_loss=z_loss, seed=3)
    start = {k: v[0].copy() for k, v in params.items()}
    state = opt.init(params)
    clip = ClipByGlobalNorm([ClipNorm(method="norm", max_norm=1.0)])
    net = TorchTransformer(model, params)
    t_opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps,
                              weight_decay=cfg.weight_decay, amsgrad=cfg.amsgrad)
    clipped, ws = 0, Workspace()
    for step in range(10):
        x, y = data(task, model.output_dim, seed=10 + step)
        _, grads = gradlab_loss(model, params, x, y, ws=ws)
        apply_rule(clip, grads)
        updates, state, _ = opt.update(grads, state, params)
        apply_updates(params, updates)
        t_opt.zero_grad()
        net.loss(x, y).backward()
        clipped += float(torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)) > 1.0
        t_opt.step()
    assert clipped  # the clipping is exercised, not only the optimizer
    # k_ln.b's gradient is rounding error (see assert_close), which Adam turns into steps of
    # up to lr |g| / eps, ~1e-12, different on the two sides: a floor far below any real step.
    floor = 1e-8 * cfg.lr
    for name, w in net.numpy().items():
        assert_close(params[name][0], w, name)
        assert_close(params[name][0] - start[name], w - start[name], name + " (change)", floor=floor)


@pytest.mark.parametrize("task, norm, qk_norm, bias, tied, z_loss", [
    ("copy", "pre", True, True, True, 0.03), ("temporal_order", "post", True, False, False, 0.0),
    ("adding", "post", False, True, False, 0.0)])
def test_three_differing_variants_in_one_stack_equal_three_torch_models(task, norm, qk_norm, bias, tied, z_loss):
    model, params = build(task, norm, qk_norm, bias, tied, z_loss, V=3, seed=5)
    x, y = data(task, model.output_dim, seed=6)
    loss, grads = gradlab_loss(model, params, x, y)
    assert len(set(loss.tolist())) == 3  # the variants do differ
    for v in range(3):
        net = TorchTransformer(model, params, v=v, explicit_softmax=True)
        t_loss = net.loss(x, y)
        t_loss.backward()
        assert float(loss[v]) == pytest.approx(t_loss.item(), rel=1e-6)
        assert_gradients_close({k: g[v] for k, g in grads.items()}, net.numpy(grad=True), f" [variant {v}]")
