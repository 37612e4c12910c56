"""gradlab's engine against PyTorch eager on CPU, and against the NumPy floor, measured in one run.

Milliseconds per training step (fresh batch, forward, loss, backward, clip by global norm at
1.0, SGD step), float32, one variant (V = 1), for the same shapes in gradlab and in torch:

- mlp:  depth 32, width 256, tanh, batch 128, teacher task (Gaussian inputs, MSE), against an
        `nn.Sequential` of Linear/Tanh; and against the floor: the same MLP's matmuls, bias
        adds and tanh / tanh' in NumPy with preallocated buffers and `out=`, plus one SGD axpy
        over a flat parameter buffer (the least arithmetic a step needs on this BLAS);
- rnn, lstm, gru: hidden 128, adding task (seq_len 100, batch 32, head on the last step, MSE),
        against torch's fused `nn.RNN` (tanh) / `nn.LSTM` / `nn.GRU`;
- run:  `run_experiment(cfg, tmp, plots=False, workers=1)` (what `gradlab run` does: logging,
        health checks, progress, CSV and JSON files; one BLAS thread per seed) on an MLP (depth 8, width 256, batch 128,
        200 steps, clipped by norm at 1.0) against the bare step loop on the same config, and
        `train_seed` (the loop with its records and checks, no files) against both;
- memory: peak RSS of `train_seed` on the mlp shape (20 steps) in a subprocess, minus that of
        a subprocess that only imports numpy and gradlab, next to the bytes the step must
        hold (parameters, gradients, momentum buffer if any, saved activations);
- startup: `gradlab --help` and `gradlab validate configs/quickstart.yaml`, median of 5;
- precision: the emulated float16 and bfloat16 compute (gradlab.compute: float32 arithmetic
        rounded at every op boundary) against float32 compute, on the mlp and recurrent
        shapes above, gradlab alone (the goal: at most 2x the float32 step);
- underflow: train.precision.measure_underflow's cost, whole `train_seed` runs of the mlp
        shape in float16 measuring every step and every 10th against measuring none (a measured
        step adds one float32 forward and backward: the float32 run's step is shown beside).

Both engines start from gradlab's initial weights and run on the same number of threads
(default: the cores; threadpoolctl for NumPy's BLAS, `torch.set_num_threads` for torch).
Timing: warm-up steps, then `--repeats` rounds, each timing `--steps` steps of every engine
of the case in turn (interleaved, so that drift hits all alike); the median ms/step is shown.
Each engine's round starts with `--settle` seconds of untimed steps: the library that ran
before leaves its threads spinning for a while (OpenBLAS ~0.1 s), which would otherwise be
charged to the next engine (torch's first steps after gradlab's took 2x as long). The ratio
column is the ratio of the medians, with the range of the per-round ratios in brackets.
`--no-openblas-env` re-executes the script without OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE
(this command alone; never in tests or CI). Not a test: pytest never imports it.

    python benchmarks/engine_bench.py [--repeats 5] [--steps 20] [--threads N] [--settle 0.2]
        [--only mlp,floor,rnn,lstm,gru,run,memory,startup,precision,underflow] [--no-openblas-env]
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
CASES = ("mlp", "floor", "rnn", "lstm", "gru", "run", "memory", "startup", "precision", "underflow")
LR = 1e-3  # small, so that the weights stay put while we time them (clipping at 1.0 may bite)

MLP_SHAPE = dict(depth=32, width=256, batch=128)
REC_SHAPE = dict(width=128, seq_len=100, batch=32)
RUN_SHAPE = dict(depth=8, width=256, batch=128, steps=200)
GOALS = {"mlp": 0.7, "rnn": 0.6, "lstm": 1.2, "gru": 0.8, "floor": 1.25, "run": 1.05}
PRECISION_GOAL = 2.0  # emulated float16 / bfloat16 step over the float32 step
# A float16 run measuring underflow every step / every 10th over one measuring none: a measured
# step adds a float32 forward and backward (less than a float16 step) and the counting.
UNDERFLOW_GOALS = {1: 2.0, 10: 1.1}
STARTUP_GOAL = 0.35
MEMORY_GOAL = 2.0


# ----------------------------------------------------------------------------- configs
def mlp_config(depth: int, width: int, batch: int, steps: int = 20):
    from gradlab.config import ExperimentConfig

    return ExperimentConfig.model_validate(dict(
        name="engine-bench", seeds=[0],
        model=dict(kind="mlp", depth=depth, width=width, activation="tanh", init=dict(scheme="xavier", gain=1.0)),
        task=dict(kind="teacher", batch_size=batch, input_dim=16, output_dim=1),
        train=dict(steps=steps, dtype="float32", optimizer=dict(kind="sgd", lr=LR)),
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
            t = time.perf_counter()
            for _ in range(steps):
                fn()
            times[k].append((time.perf_counter() - t) / steps * 1e3)
    return times


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple] = []

    def add(self, case: str, mine: list[float], base: list[float] | None, goal: float | None) -> None:
        """One row from per-round ms/step: medians, their ratio, and (in brackets) the range
        of the per-round ratios, which shows how firm a met or MISSED is."""
        m = statistics.median(mine)
        b = statistics.median(base) if base else None
        ratio = m / b if b else None
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


def bench_mlp(table: Table, torch, args, with_torch: bool, with_floor: bool) -> None:
    cfg = mlp_config(**MLP_SHAPE)
    g = GradlabStep(cfg)
    fns = {"gradlab": g}
    if with_torch and torch is not None:
        fns["torch"] = TorchStep(torch, "mlp", GradlabStep(cfg), MLP_SHAPE)
    if with_floor:
        fns["floor"] = NumpyFloor(GradlabStep(cfg))
    ms = interleaved(fns, args.steps, args.repeats, args.warmup, args.settle)
    s = MLP_SHAPE
    name = f"mlp d{s['depth']} w{s['width']} b{s['batch']}"
    if with_torch:
        table.add(f"{name} vs torch nn.Sequential", ms["gradlab"], ms.get("torch"), GOALS["mlp"])
    if with_floor:
        table.add(f"{name} vs numpy floor", ms["gradlab"], ms["floor"], GOALS["floor"])


def bench_recurrent(table: Table, torch, args, kind: str) -> None:
    cfg = rec_config(kind, **REC_SHAPE)
    fns = {"gradlab": GradlabStep(cfg)}
    if torch is not None:
        fns["torch"] = TorchStep(torch, kind, GradlabStep(cfg), REC_SHAPE)
    ms = interleaved(fns, args.steps, args.repeats, args.warmup, args.settle)
    s = REC_SHAPE
    table.add(f"{kind} h{s['width']} T{s['seq_len']} b{s['batch']} vs torch nn.{kind.upper()}",
              ms["gradlab"], ms.get("torch"), GOALS[kind])


def bench_run(table: Table, args) -> list[str]:
    """run_experiment against train_seed and the bare step loop, whole runs, interleaved."""
    import yaml

    from gradlab.experiment import run_experiment
    from gradlab.train import train_seed

    s = RUN_SHAPE
    cfg = mlp_config(s["depth"], s["width"], s["batch"], s["steps"])

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

    fns = {"bare": bare, "train_seed": lambda: train_seed(cfg, 0), "run": in_process, "cli": cli}
    with tempfile.TemporaryDirectory() as out:  # warm-up: imports, caches
        run_experiment(mlp_config(s["depth"], s["width"], s["batch"], 5), out, plots=False, workers=1)
    ms = {k: [t / s["steps"] for t in v] for k, v in interleaved(fns, 1, args.repeats, 1).items()}
    name = f"mlp d{s['depth']} w{s['width']} b{s['batch']}, {s['steps']} steps:"
    table.add(f"{name} run_experiment vs bare loop", ms["run"], ms["bare"], GOALS["run"])
    table.add(f"{name} run_experiment vs train_seed", ms["run"], ms["train_seed"], None)
    table.add(f"{name} train_seed vs bare loop", ms["train_seed"], ms["bare"], None)
    table.add(f"{name} `gradlab run` process vs bare loop", ms["cli"], ms["bare"], None)
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


def bench_startup(threads: int) -> list[str]:
    lines = []
    for argv in (["--help"], ["validate", "configs/quickstart.yaml"]):
        cmd = [gradlab_exe(), *argv]
        ts = []
        for i in range(6):  # the first run only warms the file cache
            t = time.perf_counter()
            subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, env=child_env(threads))
            if i:
                ts.append(time.perf_counter() - t)
        m = statistics.median(ts)
        lines.append(f"start-up `gradlab {' '.join(argv)}`: {m:.3f} s (median of 5; min {min(ts):.3f}, "
                     f"max {max(ts):.3f}), goal <= {STARTUP_GOAL} s: {'met' if m <= STARTUP_GOAL else 'MISSED'}")
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


def bench_precision(table: Table, args) -> None:
    """Each model kind's step at float16 and bfloat16 compute against its float32 step."""
    shapes = {"mlp": (mlp_config(**MLP_SHAPE), "d{depth} w{width} b{batch}".format(**MLP_SHAPE))}
    for kind in ("rnn", "lstm", "gru"):
        shapes[kind] = (rec_config(kind, **REC_SHAPE), "h{width} T{seq_len} b{batch}".format(**REC_SHAPE))
    for kind, (cfg, shape) in shapes.items():
        fns = {c: GradlabStep(cfg, compute=c) for c in ("float32", "float16", "bfloat16")}
        ms = interleaved(fns, args.steps, args.repeats, args.warmup, args.settle)
        for c in ("float16", "bfloat16"):
            table.add(f"{kind} {shape} {c} vs float32 compute", ms[c], ms["float32"], PRECISION_GOAL)


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
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads for both libraries")
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
    threadpool_limits(args.threads)
    if torch is not None:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    machine_facts(torch, args.threads)
    print(f"timing: {args.warmup} warm-up steps, then median of {args.repeats} interleaved rounds of "
          f"{args.steps} steps (each after {args.settle:g} s of untimed steps); float32, V = 1, SGD lr {LR:g}, "
          "clip by global norm at 1.0")
    print()

    table, notes = Table(), []
    if {"mlp", "floor"} & only:
        bench_mlp(table, torch, args, "mlp" in only, "floor" in only)
    for kind in ("rnn", "lstm", "gru"):
        if kind in only:
            bench_recurrent(table, torch, args, kind)
    if "run" in only:
        notes += bench_run(table, args)
    if "precision" in only:
        bench_precision(table, args)
    if "underflow" in only:
        bench_underflow(table, args)
    if table.rows:
        table.print()
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
