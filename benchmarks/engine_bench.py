"""gradlab's engine against PyTorch eager on CPU, and against each model's NumPy floor, measured in one run.

Milliseconds per training step (fresh batch, forward, loss, backward, clip by global norm at
1.0, optimizer step), float32, one variant (V = 1), for the same shapes in gradlab and in torch:

- mlp:  depth 32, width 256, tanh, batch 128, teacher task (Gaussian inputs, MSE), SGD, against
        an `nn.Sequential` of Linear/Tanh; its floor: the same MLP's matmuls, bias adds and
        tanh / tanh' in NumPy with preallocated buffers and `out=`, plus one SGD axpy over a
        flat parameter buffer (the least arithmetic a step needs on this BLAS);
- rnn, lstm, gru: hidden 128, adding task (seq_len 100, batch 32, head on the last step, MSE),
        SGD, against torch's `nn.RNN` (tanh) / `nn.LSTM` (one fused oneDNN kernel) / `nn.GRU`;
- transformer: d_model 128, 4 blocks, 4 heads, T 64, batch 32, `lm` task, AdamW, against
        transformer_bench's torch eager twin (same weights, scaled_dot_product_attention);
- floors (rnn, lstm, gru, transformer): the model's GEMMs and transcendental functions alone
        (OpFloor: the same products and exp/tanh calls, per time step where the recurrence
        needs them, preallocated, `out=`), the least a NumPy engine must spend; a goal against
        torch that the floor itself misses is out of reach on this BLAS. The recurrent models
        also get "floor + cell passes": the same plus the binary elementwise passes their cell
        needs per step (CELL_PASSES), which NumPy cannot fuse (benchmarks/fusion_bench.py
        measures what fusing them with numba or numexpr gives);
- run:  `run_experiment(cfg, tmp, plots=False, workers=1)` (what `gradlab run` does: logging,
        health checks, progress, CSV and JSON files; one BLAS thread per seed) on an MLP (depth 8,
        width 256, batch 128, 200 steps, clipped by norm at 1.0, one held-out evaluation) against
        the bare step loop on the same config, and `train_seed` (the loop with its records and
        checks, no files); and train_seed with the default evaluation schedule (about 20);
- memory: peak RSS of `train_seed` on the mlp shape (20 steps) in a subprocess, minus that of
        a subprocess that only imports numpy and gradlab, next to the bytes the step must
        hold (parameters, gradients, momentum buffer if any, saved activations);
- startup: `gradlab --help` and `gradlab validate configs/quickstart.yaml`, median of 5;
- precision: the emulated float16 and bfloat16 compute (gradlab.compute: float32 arithmetic
        rounded at every op boundary) against float32 compute, every model kind above, gradlab
        alone (the goal: at most 2x the float32 step);
- underflow: train.precision.measure_underflow's cost, whole `train_seed` runs of the mlp
        shape in float16 measuring every step and every 10th against measuring none (a measured
        step adds one float32 forward and backward: the float32 run's step is shown beside).

Threads. The goal rows are thread for thread: `--threads` (default 1) for NumPy's BLAS
(threadpoolctl) and for torch (`torch.set_num_threads`); gradlab trains each seed on one
BLAS thread anyway. The "(N thr, default)" rows time torch on its own default thread count
(`--side-threads`, default torch's), the comparison a user meets, against gradlab on 1.
The BLAS kernel (threadpoolctl) and the load average are printed above the table: the same
NumPy code runs up to 5x apart between OpenBLAS kernels, and the machine may be shared.

Timing: warm-up steps, then `--repeats` rounds, each timing `--steps` steps (the
transformer: a quarter as many) of every engine of the case in turn (interleaved, so that
drift hits all alike); the median ms/step is shown. Each engine's round starts with `--settle`
seconds of untimed steps: the library that ran before leaves its threads spinning for a while
(OpenBLAS ~0.1 s), which would otherwise be charged to the next engine. The ratio column is
the median of the per-round ratios (each round's figures share the machine's state of that
moment, which a ratio of medians taken from different rounds would not), with their range in
brackets; after the
table, one verdict per model: goal met, missed within the floor's reach, or out of reach.
`--no-openblas-env` re-executes the script without OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE
(this command alone; never in tests or CI). Not a test: pytest never imports it.

    python benchmarks/engine_bench.py [--repeats 5] [--steps 20] [--threads 1] [--side-threads N]
        [--settle 0.2] [--clock wall|cpu]
        [--only mlp,rnn,lstm,gru,transformer,run,memory,startup,precision,underflow] [--no-openblas-env]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OPENBLAS_VARS = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
REEXEC_MARK = "GRADLAB_ENGINE_BENCH_REMOVED"  # set in the re-executed child: what was removed
MODELS = ("mlp", "rnn", "lstm", "gru", "transformer")
CASES = (*MODELS, "run", "memory", "startup", "precision", "underflow")
LR = 1e-3  # small, so that the weights stay put while we time them (clipping at 1.0 may bite)

MLP_SHAPE = dict(depth=32, width=256, batch=128)
REC_SHAPE = dict(width=128, seq_len=100, batch=32)
RUN_SHAPE = dict(depth=8, width=256, batch=128, steps=200)
# Ratios at the same thread count (1: gradlab trains a seed on one BLAS thread).
GOALS = {"mlp": 0.7, "mlp_floor": 1.1, "lstm": 1.0, "gru": 0.55, "rnn": 0.4, "transformer": 1.0, "run": 1.05}
PRECISION_GOAL = 2.0  # emulated float16 / bfloat16 step over the float32 step
# A float16 run measuring underflow every step / every 10th over one measuring none: a measured
# step adds a float32 forward and backward (less than a float16 step) and the counting.
UNDERFLOW_GOALS = {1: 2.0, 10: 1.1}
STARTUP_GOAL = 0.35  # gradlab validate
HELP_GOAL = 0.15  # gradlab --help
MEMORY_GOAL = 2.0


# ----------------------------------------------------------------------------- configs
def mlp_config(depth: int, width: int, batch: int, steps: int = 20, eval_every: int | None = None):
    from gradlab.config import ExperimentConfig

    return ExperimentConfig.model_validate(dict(
        name="engine-bench", seeds=[0],
        model=dict(kind="mlp", depth=depth, width=width, activation="tanh", init=dict(scheme="xavier", gain=1.0)),
        task=dict(kind="teacher", batch_size=batch, input_dim=16, output_dim=1),
        train=dict(steps=steps, dtype="float32", optimizer=dict(kind="sgd", lr=LR),
                   **({"eval_every": eval_every} if eval_every else {})),
        clipping=[dict(method="norm", max_norm=1.0)]))


def rec_config(kind: str, width: int, seq_len: int, batch: int, steps: int = 20):
    from gradlab.config import ExperimentConfig

    return ExperimentConfig.model_validate(dict(
        name="engine-bench", seeds=[0],
        model=dict(kind=kind, depth=1, width=width, activation="tanh", init=dict(scheme="orthogonal", gain=1.0)),
        task=dict(kind="adding", batch_size=batch, seq_len=seq_len),
        train=dict(steps=steps, dtype="float32", optimizer=dict(kind="sgd", lr=LR)),
        clipping=[dict(method="norm", max_norm=1.0)]))


# ----------------------------------------------------------------------------- gradlab
class GradlabStep:
    """One training step of gradlab's engine, used as train.py uses it, without records or checks."""

    def __init__(self, cfg, seed: int = 0, compute: str = "float32") -> None:
        from gradlab.clipping import Clipper
        from gradlab.kinds import MODEL_KINDS
        from gradlab.config import ClipNorm
        from gradlab.models import build_model, stack
        from gradlab.models.workspace import Workspace
        from gradlab.norms import param_norms
        from gradlab.optim import build_optimizer
        from gradlab.tasks import build_task
        from gradlab.train import seed_streams
        from gradlab.transforms import apply_updates

        self.apply_updates = apply_updates
        rng = seed_streams(seed)
        self.task = build_task(cfg.task, cfg.train.dtype, rng["task"], tokens=MODEL_KINDS[cfg.model.kind].tokens)
        self.model = build_model(cfg.model, self.task, cfg.train.dtype, cfg.train.tbptt, compute=compute)
        self.p0 = self.model.init(rng["init"])
        self.params = stack(self.p0, 1)
        self.clipper = Clipper([ClipNorm(method="norm", max_norm=1.0)])
        self.clipper.init(self.params)
        self.opt = build_optimizer(cfg.train.optimizer)
        self.state = self.opt.init(self.params)
        self.data = rng["data"]
        self.param_norms = param_norms
        self.ws = Workspace()

    def __call__(self) -> None:
        # Each step's arrays live until the next step replaces them, as the loop variables of
        # train_seed do. It matters: freeing them all at once lets glibc trim the heap and hand
        # back the mmap'd temporaries, and the next step pays page faults for fresh memory
        # (a bare loop whose steps freed everything ran 30% slower than train_seed's).
        self.x, self.y = self.task.batch(self.data)
        self.out, self.cache = self.model.forward(self.params, self.x, ws=self.ws)
        self.loss, self.dout = self.task.loss(self.out, self.y)
        self.grads = self.model.backward(self.params, self.cache, self.dout, ws=self.ws)
        self.norms = self.param_norms(self.grads)
        self.stats = self.clipper(self.grads, self.norms)
        updates, self.state, stats = self.opt.update(self.grads, self.state, self.params)
        self.apply_updates(self.params, updates)
        self.update_norm = stats["update_norm"]


class NumpyFloor:
    """The MLP step's least arithmetic in NumPy: forward matmul + bias + tanh per layer, the MSE
    gradient, backward matmuls (dW, dx), bias sums and tanh', then one SGD axpy over one flat
    buffer. Every array preallocated, every op with `out=`; a fixed batch, no clipping."""

    def __init__(self, g: GradlabStep, lr: float = LR) -> None:
        import numpy as np

        self.np, self.lr = np, lr
        names = list(g.p0)
        sizes = [g.p0[n].size for n in names]
        self.pflat = np.empty(sum(sizes), np.float32)
        self.gflat = np.zeros_like(self.pflat)
        self.W, self.b, self.dW, self.db = [], [], [], []
        off = 0
        for n, s in zip(names, sizes):
            p = self.pflat[off:off + s].reshape(g.p0[n].shape)
            p[...] = g.p0[n]
            d = self.gflat[off:off + s].reshape(g.p0[n].shape)
            (self.W if n.endswith(".W") else self.b).append(p)
            (self.dW if n.endswith(".W") else self.db).append(d)
            off += s
        x, y = g.task.batch(np.random.default_rng(1))
        self.x, self.y = x, y
        B = x.shape[0]
        self.Z = [np.empty((B, w.shape[1]), np.float32) for w in self.W]  # post-activation (last: output)
        width = max(w.shape[1] for w in self.W[:-1])
        self.dh = np.empty((B, width), np.float32)
        self.tmp = np.empty((B, width), np.float32)
        self.dout = np.empty_like(self.Z[-1])
        self.scale = 2.0 / self.dout.size

    def __call__(self) -> None:
        np = self.np
        h, last = self.x, len(self.W) - 1
        for i, (W, b, z) in enumerate(zip(self.W, self.b, self.Z)):
            np.matmul(h, W, out=z)
            z += b
            if i < last:
                np.tanh(z, out=z)
            h = z
        dz = np.subtract(self.Z[-1], self.y, out=self.dout)
        dz *= self.scale
        for i in range(last, -1, -1):
            h_in = self.Z[i - 1] if i else self.x
            np.matmul(h_in.T, dz, out=self.dW[i])
            np.sum(dz, axis=0, out=self.db[i])
            if i:
                dh, tmp = self.dh[:, :h_in.shape[1]], self.tmp[:, :h_in.shape[1]]
                np.matmul(dz, self.W[i].T, out=dh)
                np.multiply(h_in, h_in, out=tmp)
                np.subtract(1.0, tmp, out=tmp)
                np.multiply(dh, tmp, out=dh)
                dz = dh
        self.gflat *= self.lr
        self.pflat -= self.gflat


class OpFloor:
    """A model's floor: its GEMMs and transcendental functions alone, in NumPy, in the order and
    with the call count the model needs (a recurrence's per-step products stay per step),
    every operand preallocated and every op with `out=`: no bias, no elementwise product, no
    copy, no optimizer. Built from a list of ops, ("mm", a_shape, b_shape) for a (batched)
    matrix product a @ b, or ("exp" | "tanh", shape) for an elementwise function; an op
    repeated `n` times is (op..., n). Operands are fixed random float32 arrays in [-1, 1)."""

    def __init__(self, ops: list[tuple]) -> None:
        import numpy as np

        rng = np.random.default_rng(0)
        arr = lambda shape: rng.uniform(-1, 1, shape).astype(np.float32)  # noqa: E731
        self.calls = []
        for op in ops:
            n = op[-1] if isinstance(op[-1], int) else 1
            if op[0] == "mm":
                a, b = arr(op[1]), arr(op[2])
                out = np.empty(np.matmul(a[..., :1, :], b[..., :1]).shape[:-2] + (a.shape[-2], b.shape[-1]),
                               np.float32)
                self.calls += [(np.matmul, a, b, out)] * n
            elif op[0] == "mul":  # one binary elementwise pass (add, subtract, multiply cost alike)
                x = arr(op[1])
                self.calls += [(np.multiply, x, x.copy(), x.copy())] * n
            else:
                x = arr(op[1])
                self.calls += [(getattr(np, op[0]), x, x.copy())] * n
        self.n_calls = len(self.calls)

    def __call__(self) -> None:
        for f, *a in self.calls:
            f(*a[:-1], out=a[-1])


def recurrent_floor(kind: str, width: int, seq_len: int, batch: int, input_dim: int = 2, output_dim: int = 1,
                    cell: bool = False):
    """A one-layer RNN/LSTM/GRU step's floor, feature-major like gradlab's engine: the input
    projection of all steps (one product), per step the recurrent product and the gate
    functions (sigmoids as exp, the cheaper form NumPy has; the LSTM's tanh(g) and tanh(c),
    the GRU's tanh(n), the RNN's tanh(h)); the head; backward, per step (but the first) the
    product through W_hh^T, then the weight gradients as one product each. The derivatives
    come from saved outputs (products, not functions), so the backward has no
    transcendentals. With `cell`, also the cell's binary elementwise passes (CELL_PASSES):
    what a NumPy engine, which cannot fuse them, must add to that floor."""
    G = GATES_FLOOR[kind]
    H, T, B = width, seq_len, batch
    sig = {"rnn": 0, "lstm": 3, "gru": 2}[kind] * H
    tanh = {"rnn": 1, "lstm": 2, "gru": 1}[kind]
    ops = [("mm", (G * H, input_dim), (T, input_dim, B)),
           ("mm", (G * H, H), (H, B), T - 1)]
    if sig:
        ops.append(("exp", (sig, B), T))
    ops.append(("tanh", (H, B), tanh * T))
    ops += [("mm", (B, H), (H, output_dim)),  # head
            ("mm", (H, G * H), (G * H, B), T - 1),  # dh_{t-1} = W_hh^T dGh_t
            ("mm", (G * H, T * B), (T * B, input_dim)),  # dW_ih
            ("mm", (G * H, (T - 1) * B), ((T - 1) * B, H)),  # dW_hh
            ("mm", (H, B), (B, output_dim))]  # dW_head
    if cell:
        ops += [("mul", shape, n * (T - 1)) for shape, n in CELL_PASSES[kind](H, B)]
    return OpFloor(ops)


# The binary elementwise passes per time step that a cell's arithmetic needs in NumPy,
# unfused, beyond its products and functions: ((rows, B), passes) for the forward and the
# backward together, as gradlab's engine counts them (the bias add of the recurrent product;
# a sigmoid's negation, +1 and reciprocal; the state updates; the backward's products with
# the saved gates and derivatives, and dL/dh_t's sum over its two sources).
CELL_PASSES = {
    "rnn": lambda H, B: [((H, B), 3)],
    "lstm": lambda H, B: [((4 * H, B), 1), ((3 * H, B), 6), ((H, B), 18)],
    "gru": lambda H, B: [((2 * H, B), 6), ((H, B), 20)],
}


GATES_FLOOR = {"rnn": 1, "lstm": 4, "gru": 3}


def transformer_floor(width: int, depth: int, heads: int, seq_len: int, batch: int, vocab: int, ratio: int = 4):
    """A decoder-only transformer step's floor: per block the qkv, attention-output and MLP
    products, the attention scores and the probabilities times v (one batched product each
    over batch x heads), the softmax's exp over the (T, T) scores and the GELU's (one exp over
    the MLP's hidden units: gradlab's sigmoid form); the head's product and the loss's exp over
    the logits; backward, two products per forward product (the input's and the weight's
    gradient; for attention, both operands'). LayerNorm's square roots (one per position) are
    left out."""
    N, D, R, dh, BH, T = batch * seq_len, width, ratio * width, width // heads, batch * heads, seq_len

    def linear(n_in: int, n_out: int) -> list:  # y = x W; dx = dy W^T; dW = x^T dy
        return [("mm", (N, n_in), (n_in, n_out)), ("mm", (N, n_out), (n_out, n_in)),
                ("mm", (n_in, N), (N, n_out))]

    block = (linear(D, 3 * D) + linear(D, D) + linear(D, R) + linear(R, D)
             + [("mm", (BH, T, dh), (BH, dh, T)), ("mm", (BH, T, T), (BH, T, dh)),  # scores, p v
                ("mm", (BH, T, dh), (BH, dh, T)), ("mm", (BH, T, T), (BH, T, dh)),  # dp = do v^T, ds k
                ("mm", (BH, T, T), (BH, T, dh)), ("mm", (BH, T, T), (BH, T, dh)),  # dk = ds^T q, dv = p^T do
                ("exp", (BH, T, T)), ("exp", (N, R))])
    return OpFloor(block * depth + linear(D, vocab) + [("exp", (N, vocab))])


# ----------------------------------------------------------------------------- torch
class TorchStep:
    """The same step in PyTorch eager: fresh batch drawn by torch, forward, MSE, backward,
    clip_grad_norm_(1.0), SGD; gradlab's initial weights copied in."""

    def __init__(self, torch, kind: str, g: GradlabStep, shape: dict) -> None:
        self.torch, self.kind = torch, kind
        nn = torch.nn
        torch.manual_seed(0)
        p0 = {k: torch.from_numpy(v.copy()) for k, v in g.p0.items()}
        if kind == "mlp":
            layers = []
            for i in range(g.model.depth):
                W = p0[f"layer{i}.W"]
                lin = nn.Linear(W.shape[0], W.shape[1])
                with torch.no_grad():
                    lin.weight.copy_(W.T)
                    lin.bias.copy_(p0[f"layer{i}.b"])
                layers += [lin, nn.Tanh()] if i < g.model.depth - 1 else [lin]
            self.net = nn.Sequential(*layers)
            teacher = g.task.teacher_params  # the teacher labels the batch, as in gradlab
            t_layers = []
            for i in range(g.task.teacher.depth):
                W = torch.from_numpy(teacher[f"layer{i}.W"][0].copy())
                lin = nn.Linear(W.shape[0], W.shape[1])
                with torch.no_grad():
                    lin.weight.copy_(W.T)
                    lin.bias.copy_(torch.from_numpy(teacher[f"layer{i}.b"][0].copy()))
                t_layers += [lin, nn.Tanh()] if i < g.task.teacher.depth - 1 else [lin]
            self.teacher = nn.Sequential(*t_layers).requires_grad_(False)
            self.B, self.D = shape["batch"], g.task.input_dim
            self.batch = self._teacher_batch
        else:
            cls = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[kind]
            extra = dict(nonlinearity="tanh") if kind == "rnn" else {}
            rec = cls(2, shape["width"], 1, **extra)
            head = nn.Linear(shape["width"], 1)
            with torch.no_grad():
                for n in ("W_ih", "W_hh", "b_ih", "b_hh"):
                    tn = {"W_ih": "weight_ih_l0", "W_hh": "weight_hh_l0", "b_ih": "bias_ih_l0", "b_hh": "bias_hh_l0"}[n]
                    getattr(rec, tn).copy_(p0[f"{kind}.0.{n}"])
                head.weight.copy_(p0["head.W"].T)
                head.bias.copy_(p0["head.b"])
            self.net = _LastStep(nn, rec, head)
            self.T, self.B = shape["seq_len"], shape["batch"]
            self.batch = self._adding_batch
        self.params = list(self.net.parameters())
        self.opt = torch.optim.SGD(self.params, lr=LR)
        self.mse = nn.functional.mse_loss
        self.clip = nn.utils.clip_grad_norm_

    def _teacher_batch(self):
        x = self.torch.randn(self.B, self.D)
        with self.torch.no_grad():
            return x, self.teacher(x)

    def _adding_batch(self):
        torch, T, B = self.torch, self.T, self.B
        half = T // 2
        values = torch.rand(T, B)
        x = torch.zeros(T, B, 2)
        x[..., 0] = values
        first, second = torch.randint(0, half, (B,)), torch.randint(half, T, (B,))
        cols = torch.arange(B)
        x[first, cols, 1] = 1.0
        x[second, cols, 1] = 1.0
        return x, (values[first, cols] + values[second, cols])[:, None]

    def __call__(self) -> None:
        x, y = self.batch()
        loss = self.mse(self.net(x), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.clip(self.params, 1.0)
        self.opt.step()


def _LastStep(nn, rec, head):
    class LastStep(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rec, self.head = rec, head

        def forward(self, x):
            out, _ = self.rec(x)
            return self.head(out[-1])

    return LastStep()


# ----------------------------------------------------------------------------- timing
CLOCK = {"wall": time.perf_counter, "cpu": time.process_time}
clock = time.perf_counter  # --clock sets it


def _cpu_with_children() -> float:
    """CPU seconds of this process and of its finished children (10 ms ticks: for whole runs)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def interleaved(fns: dict, steps: int, repeats: int, warmup: int, settle: float = 0.0) -> dict[str, list[float]]:
    """ms/step of each fn in each round: warm-up, then `repeats` rounds of `steps` steps of each in turn.

    Each round of an engine starts with `settle` seconds of untimed steps: when two libraries
    share the process, the one that just ran leaves its pool threads busy-waiting (OpenBLAS
    spins ~0.1 s after its last call), which would be charged to whichever engine comes next.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t = time.perf_counter()
            while time.perf_counter() - t < settle:
                fn()
            t = clock()
            for _ in range(steps):
                fn()
            times[k].append((clock() - t) / steps * 1e3)
    return times


def paired(mine: list[float], base: list[float]) -> float:
    """The median of the per-round ratios. The rounds are interleaved, so each round's two
    figures share the machine's state of that moment: on a shared host (whose load the guest
    cannot see: the CPU clock itself slows under it) the per-round ratio cancels the drift that
    a ratio of the two medians, taken from different rounds, keeps."""
    return statistics.median(x / y for x, y in zip(mine, base))


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple] = []

    def add(self, case: str, mine: list[float], base: list[float] | None, goal: float | None) -> None:
        """One row from per-round ms/step: medians, their ratio, and (in brackets) the range
        of the per-round ratios, which shows how firm a met or MISSED is."""
        m = statistics.median(mine)
        b = statistics.median(base) if base else None
        ratio = paired(mine, base) if base else None
        met = "-" if goal is None or ratio is None else ("met" if ratio <= goal else "MISSED")
        spread = ""
        if base:
            per_round = [x / y for x, y in zip(mine, base)]
            spread = f" ({min(per_round):.2f}-{max(per_round):.2f})"
        self.rows.append((case, f"{m:.2f}", "-" if b is None else f"{b:.2f}",
                          "-" if ratio is None else f"{ratio:.3f}x{spread}",
                          "-" if goal is None else f"<= {goal:g}x", met))

    def print(self) -> None:
        head = ("case", "gradlab ms/step", "baseline ms/step", "ratio", "goal", "met?")
        w = [max(len(r[i]) for r in [head, *self.rows]) for i in range(len(head))]
        fmt = lambda r: " | ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(r))  # noqa: E731
        print(fmt(head))
        print("-+-".join("-" * n for n in w))
        for r in self.rows:
            print(fmt(r))


class WithThreads:
    """A torch engine run on `threads` threads whatever ran before it (the thread-for-thread
    and the default-thread engines share the process and take turns)."""

    def __init__(self, torch, threads: int, fn) -> None:
        self.torch, self.threads, self.fn = torch, threads, fn

    def __call__(self) -> None:
        if self.torch.get_num_threads() != self.threads:
            self.torch.set_num_threads(self.threads)
        self.fn()


def model_case(kind: str):
    """(config, name, torch's counterpart) of a model kind's benchmark shape."""
    if kind == "mlp":
        s = MLP_SHAPE
        cfg = mlp_config(**s)
        return cfg, f"mlp d{s['depth']} w{s['width']} b{s['batch']}", "nn.Sequential"
    if kind == "transformer":
        from transformer_bench import SHAPE as s, config

        cfg = config(s["batch"])
        name = f"transformer d{s['width']} L{s['depth']} H{s['heads']} T{s['seq_len']} b{s['batch']}"
        return cfg, name, "eager"
    s = REC_SHAPE
    return rec_config(kind, **s), f"{kind} h{s['width']} T{s['seq_len']} b{s['batch']}", f"nn.{kind.upper()}"


def make_floor(kind: str, g: GradlabStep):
    if kind == "mlp":
        return NumpyFloor(g)
    if kind == "transformer":
        from transformer_bench import SHAPE as s

        return transformer_floor(s["width"], s["depth"], s["heads"], s["seq_len"], s["batch"], g.model.output_dim)
    return recurrent_floor(kind, **REC_SHAPE)


def make_torch(torch, kind: str, cfg, threads: int):
    if kind == "transformer":
        from transformer_bench import TorchStep as TransformerTorchStep

        return TransformerTorchStep(torch, GradlabStep(cfg), threads)
    return WithThreads(torch, threads, TorchStep(torch, kind, GradlabStep(cfg), MLP_SHAPE if kind == "mlp" else REC_SHAPE))


def bench_model(table: Table, torch, args, kind: str, verdicts: list[str]) -> None:
    """gradlab against torch on the same threads, torch on its default threads, and the
    model's NumPy floor, all interleaved in one run."""
    cfg, name, module = model_case(kind)
    g = GradlabStep(cfg)
    fns = {"gradlab": g, "floor": make_floor(kind, GradlabStep(cfg))}
    if kind in CELL_PASSES:
        fns["floor_cell"] = recurrent_floor(kind, **REC_SHAPE, cell=True)
    if torch is not None:
        fns["torch"] = make_torch(torch, kind, cfg, args.threads)
        if args.side_threads and args.side_threads != args.threads:
            fns["torch_side"] = make_torch(torch, kind, cfg, args.side_threads)
    steps = max(1, args.steps // 4) if kind == "transformer" else args.steps  # its step is ~8x an RNN's
    ms = interleaved(fns, steps, args.repeats, args.warmup, args.settle)
    goal = GOALS[kind]
    thr = f"{args.threads} thr"
    med = {k: statistics.median(v) for k, v in ms.items()}
    if torch is not None:
        table.add(f"{name} vs torch {module} ({thr})", ms["gradlab"], ms["torch"], goal)
    table.add(f"{name} vs its numpy floor", ms["gradlab"], ms["floor"], GOALS.get(kind + "_floor"))
    if torch is not None:
        table.add(f"{name} numpy floor vs torch ({thr})", ms["floor"], ms["torch"], None)
        if "floor_cell" in ms:
            table.add(f"{name} floor + cell passes vs torch ({thr})", ms["floor_cell"], ms["torch"], None)
        if "torch_side" in ms:
            table.add(f"{name} vs torch {module} ({args.side_threads} thr, default)", ms["gradlab"],
                      ms["torch_side"], None)
        mine, floor = paired(ms["gradlab"], ms["torch"]), paired(ms["floor"], ms["torch"])
        cell = paired(ms["floor_cell"], ms["torch"]) if "floor_cell" in ms else None
        under = sum(x / y <= goal for x, y in zip(ms["gradlab"], ms["torch"]))
        verdict = ("met" if mine <= goal else "MISSED, out of reach: the floor alone is above the goal" if floor > goal
                   else "MISSED, out of reach unfused: the floor plus the cell's elementwise passes is above the goal"
                   if cell is not None and cell > goal else "MISSED, within the floor's reach")
        verdicts.append(f"{kind}: gradlab {mine:.2f}x torch at {thr}, goal <= {goal:g}x: {verdict}, "
                        f"{under} of {len(ms['torch'])} rounds at or under it "
                        f"(floor {floor:.2f}x torch" + (f", with the cell's passes {cell:.2f}x" if cell else "")
                        + f"; gradlab spends {med['gradlab'] - med['floor']:.1f} ms/step over its floor, "
                        f"{100 * (1 - med['floor'] / med['gradlab']):.0f}% of the step"
                        # What the cell's passes do not explain: the per-step buffers streamed
                        # through the cache, the weight gradients' layout copies and bias sums,
                        # the optimizer and the norms.
                        + (f"; {med['gradlab'] - med['floor_cell']:.1f} ms over the floor with the cell's passes"
                           if cell else "") + ")")


def bench_run(table: Table, args) -> list[str]:
    """run_experiment against train_seed and the bare step loop, whole runs, interleaved."""
    import yaml

    from gradlab.experiment import run_experiment
    from gradlab.train import train_seed

    s = RUN_SHAPE
    # The held-out evaluation is work of its own, not overhead (by default every
    # ceil(steps / 20) steps, 4 batches: 84 forward passes in this 200-step run): the
    # overhead rows evaluate once, at the last step; one row times the default beside.
    cfg = mlp_config(s["depth"], s["width"], s["batch"], s["steps"], eval_every=s["steps"])
    default_eval = mlp_config(s["depth"], s["width"], s["batch"], s["steps"])

    def bare() -> None:
        # train_seed pins one BLAS thread (numbers independent of the thread count): so does
        # the bare loop here, or this case would time threads, not overhead.
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, user_api="blas"):
            step = GradlabStep(cfg)
            for _ in range(s["steps"]):
                step()

    def in_process() -> None:
        with tempfile.TemporaryDirectory() as out:
            run_experiment(cfg, out, plots=False, workers=1)

    def cli() -> None:  # the whole process: interpreter, imports, loop, files
        with tempfile.TemporaryDirectory() as out:
            path = Path(out) / "bench.yaml"
            path.write_text(yaml.safe_dump(cfg.resolved()))
            subprocess.run([gradlab_exe(), "run", str(path), "--out", str(Path(out) / "o"), "--quiet",
                            "--no-plots", "--workers", "1"], check=True, stdout=subprocess.DEVNULL,
                           env=child_env(args.threads))

    fns = {"bare": bare, "train_seed": lambda: train_seed(cfg, 0), "run": in_process, "cli": cli,
           "default_eval": lambda: train_seed(default_eval, 0)}
    with tempfile.TemporaryDirectory() as out:  # warm-up: imports, caches
        run_experiment(mlp_config(s["depth"], s["width"], s["batch"], 5), out, plots=False, workers=1)
    global clock
    saved = clock
    if clock is time.process_time:  # the `gradlab run` process is a child: its CPU time counts too
        clock = _cpu_with_children
    try:
        ms = {k: [t / s["steps"] for t in v] for k, v in interleaved(fns, 1, args.repeats, 1).items()}
    finally:
        clock = saved
    name = f"mlp d{s['depth']} w{s['width']} b{s['batch']}, {s['steps']} steps:"
    table.add(f"{name} run_experiment vs bare loop", ms["run"], ms["bare"], GOALS["run"])
    table.add(f"{name} run_experiment vs train_seed", ms["run"], ms["train_seed"], None)
    table.add(f"{name} train_seed vs bare loop", ms["train_seed"], ms["bare"], None)
    table.add(f"{name} `gradlab run` process vs bare loop", ms["cli"], ms["bare"], None)
    table.add(f"{name} train_seed, default evaluation, vs bare loop", ms["default_eval"], ms["bare"], None)
    med = {k: statistics.median(v) for k, v in ms.items()}
    pct = lambda a, b: f"{100 * (med[a] / med[b] - 1):+.1f}%"  # noqa: E731
    return [f"gradlab run overhead over the bare step loop: {pct('run', 'bare')} (train_seed alone "
            f"{pct('train_seed', 'bare')}; run_experiment over train_seed {pct('run', 'train_seed')}; the whole "
            f"`gradlab run --no-plots` process, start-up included, {pct('cli', 'bare')})"]


# ----------------------------------------------------------------------------- subprocesses
def gradlab_exe() -> str:
    exe = Path(sys.executable).with_name("gradlab")
    return str(exe) if exe.exists() else "gradlab"


def child_env(threads: int) -> dict:
    env = dict(os.environ)
    env["OPENBLAS_NUM_THREADS"] = env["OMP_NUM_THREADS"] = str(threads)
    return env


def memory_child(mode: str, threads: int) -> None:
    """Print this process's peak RSS (KiB): after the imports only, or after train_seed."""
    import resource

    import numpy as np  # noqa: F401
    from threadpoolctl import threadpool_limits

    from gradlab.train import train_seed

    threadpool_limits(threads)
    if mode == "run":
        s = MLP_SHAPE
        train_seed(mlp_config(s["depth"], s["width"], s["batch"], 20), 0)
    hwm = next((ln.split()[1] for ln in open("/proc/self/status") if ln.startswith("VmHWM:")), "0") \
        if Path("/proc/self/status").exists() else "0"
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, hwm)  # KiB, both


def memory_peaks(threads: int) -> dict:
    """Peak RSS (bytes) of the baseline and the run subprocesses, median of 3 each.

    Call it before this process loads NumPy or torch: on Linux a child's ru_maxrss starts at
    its parent's high-water mark (it survives fork and exec), so a big parent hides the child's
    own peak. VmHWM (the high-water mark of the child's own address space) cross-checks it.
    """
    def peak(mode: str) -> tuple[int, int]:
        r = subprocess.run([sys.executable, __file__, "--_memory-child", mode, "--threads", str(threads)],
                           check=True, capture_output=True, text=True, env=child_env(threads))
        maxrss, hwm = r.stdout.split()[-2:]
        return int(maxrss) * 1024, int(hwm) * 1024

    out = {}
    for mode in ("base", "run"):
        got = [peak(mode) for _ in range(3)]
        out[mode] = statistics.median(g[0] for g in got)
        out[mode + "_hwm"] = statistics.median(g[1] for g in got)
    return out


def bench_memory(peaks: dict) -> list[str]:
    base, run = peaks["base"], peaks["run"]
    s = MLP_SHAPE
    cfg = mlp_config(s["depth"], s["width"], s["batch"], 20)
    g = GradlabStep(cfg)
    n_params = sum(v.size for v in g.p0.values())
    momentum = cfg.train.optimizer.momentum
    params = grads = 4 * n_params
    buf = 4 * n_params if momentum else 0
    saved = 2 * s["batch"] * s["width"] * s["depth"] * 4
    need = params + grads + buf + saved
    delta = run - base
    ratio = delta / need
    mib = lambda b: f"{b / 2**20:.1f} MiB"  # noqa: E731
    return [f"memory, mlp d{s['depth']} w{s['width']} b{s['batch']} via train_seed (20 steps), median of 3: peak RSS "
            f"{mib(run)} - baseline {mib(base)} (numpy + gradlab imported) = {mib(delta)}; the step must hold "
            f"{mib(need)} (params {mib(params)} ({n_params:,} float32) + grads {mib(grads)} + momentum buffer "
            f"{mib(buf)} + saved activations 2 x {s['batch']} x {s['width']} x {s['depth']} x 4 B = {mib(saved)}); "
            f"ratio {ratio:.2f}x, goal <= {MEMORY_GOAL:g}x: {'met' if ratio <= MEMORY_GOAL else 'MISSED'}"
            + ("" if abs(peaks["run_hwm"] - run) < 2**20 and abs(peaks["base_hwm"] - base) < 2**20 else
               f" (VmHWM disagrees with ru_maxrss: run {mib(peaks['run_hwm'])}, baseline {mib(peaks['base_hwm'])})")]


# A child that runs a gradlab command in-process and prints the third-party modules it loaded.
_MODULES_CHILD = """
import contextlib, io, sys
from gradlab.cli import main
sys.argv = ["gradlab", *sys.argv[1:]]
with contextlib.redirect_stdout(io.StringIO()):
    try:
        main()
    except SystemExit:
        pass
std = sys.stdlib_module_names
print(" ".join(sorted(m for m, mod in list(sys.modules.items()) if not m.startswith("_")
                      and getattr(mod, "__spec__", None) is not None  # not cython_runtime's kind
                      and m.split(".")[0] not in std and m.split(".")[0] != "gradlab")))
"""


def bench_startup(threads: int) -> list[str]:
    """Each command's start-up beside its floor, measured interleaved: a bare interpreter
    importing the same third-party modules the command loads (typer, pydantic, yaml, ...), what
    no change to gradlab can remove. The gap between them is gradlab's own share."""
    lines = []
    env = child_env(threads)
    for argv, goal in ((["--help"], HELP_GOAL), (["validate", "configs/quickstart.yaml"], STARTUP_GOAL)):
        mods = subprocess.run([sys.executable, "-c", _MODULES_CHILD, *argv], cwd=ROOT, env=env, check=True,
                              capture_output=True, text=True).stdout.split()
        cmds = {"gradlab": [gradlab_exe(), *argv],
                "floor": [sys.executable, "-c", "import " + ", ".join(mods) if mods else "pass"]}
        ts: dict[str, list[float]] = {k: [] for k in cmds}
        for i in range(6):  # the first round only warms the file cache
            for k, cmd in cmds.items():
                t = time.perf_counter()
                subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, env=env)
                if i:
                    ts[k].append(time.perf_counter() - t)
        m, f = statistics.median(ts["gradlab"]), statistics.median(ts["floor"])
        g = ts["gradlab"]
        tops = sorted({n.split(".")[0] for n in mods})
        lines.append(f"start-up `gradlab {' '.join(argv)}`: {m:.3f} s (median of 5; min {min(g):.3f}, "
                     f"max {max(g):.3f}), goal <= {goal} s: {'met' if m <= goal else 'MISSED'}; floor (python "
                     f"importing what it loads: {', '.join(tops) or 'nothing'}) {f:.3f} s, gradlab's own "
                     f"{m - f:.3f} s" + ("" if m <= goal or f < goal else ": out of reach, the floor alone is above the goal"))
    return lines


# ----------------------------------------------------------------------------- main
def reexec_without_openblas_env(argv: list[str]) -> None:
    env = dict(os.environ)
    was = [f"{k}={env.pop(k)}" if k in env else f"{k} unset" for k in OPENBLAS_VARS]
    env[REEXEC_MARK] = "; ".join(was)
    args = [a for a in argv if a != "--no-openblas-env"]
    sys.stdout.flush()
    os.execve(sys.executable, [sys.executable, __file__, *args], env)


def machine_facts(torch, threads: int) -> None:
    import numpy as np
    from threadpoolctl import threadpool_info

    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    print(f"machine: {os.cpu_count()} cores ({cpu}); Python {platform.python_version()}; benchmark threads: {threads}")
    print(f"numpy {np.__version__}")
    for p in threadpool_info():
        print(f"  threadpool {p['user_api']}/{p['internal_api']} {p.get('version')}: kernel "
              f"{p.get('architecture', '-')}, {p['num_threads']} thread(s), {Path(p['filepath']).name}")
    if torch is None:
        print("torch: not installed (pip install torch==2.13.0): gradlab figures only, no ratios against torch")
    else:
        mkl = "MKL" if torch.backends.mkl.is_available() else "no MKL"
        print(f"torch {torch.__version__}: get_num_threads() = {torch.get_num_threads()}, interop "
              f"{torch.get_num_interop_threads()}, {mkl}, mkldnn {torch.backends.mkldnn.is_available()}")
    removed = os.environ.get(REEXEC_MARK)
    print("  " + "; ".join(f"{k}={os.environ[k]}" if k in os.environ else f"{k} unset" for k in OPENBLAS_VARS)
          + (f"  (--no-openblas-env: both removed from this run's environment; before: {removed})"
             if removed is not None else "  (as set; --no-openblas-env removes both)"))


def kernel_line(torch, threads: int) -> str:
    """The BLAS kernels behind the figures: the same NumPy code differs up to 5x between
    OpenBLAS's kernels (float32 tanh: 0.4 ns per element under AVX-512, 2.6 ns under Haswell)."""
    from threadpoolctl import threadpool_info

    blas = [f"{p['internal_api']} {p.get('version')} {p.get('architecture', '-')} kernel, {p['num_threads']} thread(s)"
            for p in threadpool_info() if p["user_api"] == "blas"]
    line = f"BLAS: numpy {'; '.join(blas) or 'unknown'}"
    if torch is not None:
        line += (f"; torch {torch.__version__} {'MKL' if torch.backends.mkl.is_available() else 'no MKL'}"
                 f" + oneDNN {torch.backends.mkldnn.is_available()}, {threads} thread(s) in the thread-for-thread rows")
    return line + f"; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"


def bench_precision(table: Table, args) -> None:
    """Each model kind's step at float16 and bfloat16 compute against its float32 step."""
    for kind in MODELS:
        cfg, name, _ = model_case(kind)
        fns = {c: GradlabStep(cfg, compute=c) for c in ("float32", "float16", "bfloat16")}
        steps = max(1, args.steps // 4) if kind == "transformer" else args.steps
        ms = interleaved(fns, steps, args.repeats, args.warmup, args.settle)
        for c in ("float16", "bfloat16"):
            table.add(f"{name} {c} vs float32 compute", ms[c], ms["float32"], PRECISION_GOAL)


def bench_underflow(table: Table, args) -> None:
    """train_seed in float16 measuring underflow every step and every 10th, against measuring
    none; the float32 run (no measuring) for the size of the float32 replay."""
    from gradlab.train import train_seed

    s = MLP_SHAPE

    def config(compute: str, every):
        cfg = mlp_config(s["depth"], s["width"], s["batch"], args.steps)
        precision = dict(compute=compute, **({"measure_underflow": every} if every else {}))
        return cfg.model_copy(update={"train": cfg.train.model_validate(
            {**cfg.train.model_dump(), "precision": precision})})

    cfgs = {"off": config("float16", None), 1: config("float16", 1), 10: config("float16", 10),
            "float32": config("float32", None)}
    fns = {k: (lambda c=c: train_seed(c, 0)) for k, c in cfgs.items()}
    ms = {k: [t / args.steps for t in v] for k, v in interleaved(fns, 1, args.repeats, 1).items()}
    name = "mlp d{depth} w{width} b{batch} float16".format(**s)
    for every in (1, 10):
        table.add(f"{name} measure_underflow {every} vs off", ms[every], ms["off"], UNDERFLOW_GOALS[every])
    table.add(f"{name}: float32 step vs float16 step", ms["float32"], ms["off"], None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds per case (median reported)")
    ap.add_argument("--steps", type=int, default=20, help="training steps per round and engine")
    ap.add_argument("--warmup", type=int, default=5, help="untimed steps per engine before a case")
    ap.add_argument("--settle", type=float, default=0.2,
                    help="untimed seconds of steps at the start of each engine's round (other pools go idle)")
    ap.add_argument("--threads", type=int, default=1,
                    help="threads for both libraries in the thread-for-thread rows (gradlab trains on 1)")
    ap.add_argument("--side-threads", type=int, default=None,
                    help="torch's threads in the default-thread rows (default: torch's own default; 0: none)")
    ap.add_argument("--clock", choices=sorted(CLOCK), default="wall",
                    help="wall: elapsed time; cpu: this process's CPU time, the run case's with its children (fairer on a shared machine, "
                         "1 thread only: the default-thread rows are left out)")
    ap.add_argument("--only", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    ap.add_argument("--no-openblas-env", action="store_true",
                    help="re-execute without OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE in the environment")
    ap.add_argument("--_memory-child", choices=["base", "run"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._memory_child:
        memory_child(args._memory_child, args.threads)
        return
    if args.no_openblas_env and REEXEC_MARK not in os.environ:
        reexec_without_openblas_env(sys.argv[1:])  # before NumPy loads OpenBLAS, which reads them
    only = {c.strip() for c in args.only.split(",") if c.strip()}
    if only - set(CASES):
        ap.error(f"--only: unknown case(s) {', '.join(sorted(only - set(CASES)))}; choose from {', '.join(CASES)}")

    peaks = memory_peaks(args.threads) if "memory" in only else None  # while this process is small

    import numpy as np  # noqa: F401  (loads OpenBLAS before the limits)
    from threadpoolctl import threadpool_limits

    try:
        import torch
    except ImportError:
        torch = None
    global clock
    clock = CLOCK[args.clock]
    if args.clock == "cpu" and args.threads != 1:
        ap.error("--clock cpu needs --threads 1 (CPU time adds up the threads)")
    if args.clock == "cpu":
        args.side_threads = 0
    if torch is not None and args.side_threads is None:
        args.side_threads = torch.get_num_threads()  # what a user meets: torch's default
    threadpool_limits(args.threads)
    if torch is not None:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    machine_facts(torch, args.threads)
    print(f"timing ({args.clock} clock): {args.warmup} warm-up steps, then median of {args.repeats} interleaved rounds of "
          f"{args.steps} steps (each after {args.settle:g} s of untimed steps); float32, V = 1, SGD lr {LR:g}, "
          "clip by global norm at 1.0")
    print()

    table, notes = Table(), []
    verdicts: list[str] = []
    for kind in MODELS:
        if kind in only:
            bench_model(table, torch, args, kind, verdicts)
    if "run" in only:
        notes += bench_run(table, args)
    if "precision" in only:
        bench_precision(table, args)
    if "underflow" in only:
        bench_underflow(table, args)
    if table.rows:
        print(kernel_line(torch, args.threads))
        table.print()
        notes += verdicts
    if "memory" in only:
        notes += bench_memory(peaks)
    if "startup" in only:
        notes += bench_startup(args.threads)
    if torch is None and table.rows:
        notes.append("torch is missing (pip install torch==2.13.0): no torch baselines, no ratios against torch")
    print()
    for line in notes:
        print(line)
    print(f"(benchmark wall time {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
