"""gradlab's transformer step against PyTorch eager on CPU, measured in one run.

Milliseconds per training step (fresh batch, forward, softmax cross-entropy, backward, clip
by global norm at 1.0, AdamW step), float32, one variant (V = 1): a decoder-only pre-LN
transformer, d_model 128, 4 layers, 4 heads, MLP ratio 4, biases, GELU (tanh), T 64,
batch 32, on gradlab's `lm` task (character-level language modelling of gradlab's own
source: 117 token ids, windows at uniform starts, the target of each position the next
character). Torch runs the same model on windows of the same ids (the same
initial weights, copied from gradlab's; attention by F.scaled_dot_product_attention, causal,
which is what torch eager offers for it) with torch.optim.AdamW and clip_grad_norm_.

Cases:
- step:   gradlab (one BLAS thread, as train_seed pins per seed) against torch on the same
          thread count (`--threads`, default 1), and torch on `--side-threads` (default 2)
          as a side column; `--batch` adds the same comparison at larger batches;
- loop:   `train_seed` of the same config (records, diagnostics and checks included)
          against the bare step loop (engine_bench's GradlabStep);
- precision: the step at emulated float16 and bfloat16 compute (gradlab.compute) against
          the float32 step, gradlab alone (engine_bench's precision goal: at most 2x);
- memory: peak RSS (VmHWM) of a subprocess taking 20 bare steps, minus that of a subprocess
          that only imports numpy and gradlab, against the bytes the step must hold:
          parameters, gradients, AdamW's two moments, and the activations a backward needs
          (per block: the two LayerNorms' normalised inputs and outputs, q, k and v, the
          attention probabilities, the attention output, the MLP's pre-activation and GELU
          output; the final norm's and the logits' softmax), all float32.

engine_bench's `transformer` case times the same step (this module's config and TorchStep)
beside the other model kinds, with its NumPy floor; this script keeps the transformer's
larger batches, the train_seed loop, memory and precision cases.

Timing follows engine_bench (whose helpers this imports): warm-up steps, then `--repeats`
interleaved rounds of `--steps` steps per engine, each after `--settle` seconds of untimed
steps; medians, the ratio of the medians with the per-round range in brackets. Not a test:
pytest never imports it.

    python benchmarks/transformer_bench.py [--repeats 5] [--steps 10] [--threads 1]
        [--side-threads 2] [--batch 32,128] [--only step,loop,memory,precision]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from engine_bench import PRECISION_GOAL, ROOT, GradlabStep, Table, child_env, interleaved  # noqa: E402

sys.path.insert(0, str(ROOT))

SHAPE = dict(width=128, depth=4, heads=4, seq_len=64, batch=32)
LR = 1e-4  # small, so that the weights stay put while we time them
CASES = ("step", "loop", "memory", "precision")
STEP_GOAL = 1.0
MEMORY_GOAL = 2.0


def config(batch: int = SHAPE["batch"], steps: int = 20, eval_every: int | None = None):
    from gradlab.config import ExperimentConfig

    s = SHAPE
    return ExperimentConfig.model_validate(dict(
        name="transformer-bench", seeds=[0],
        model=dict(kind="transformer", depth=s["depth"], width=s["width"], heads=s["heads"], norm="pre"),
        task=dict(kind="lm", batch_size=batch, seq_len=s["seq_len"]),
        train=dict(steps=steps, dtype="float32", optimizer=dict(kind="adamw", lr=LR, weight_decay=0.01),
                   **({"eval_every": eval_every} if eval_every else {})),
        clipping=[dict(method="norm", max_norm=1.0)]))


def gradlab_step(batch: int) -> GradlabStep:
    return GradlabStep(config(batch))


# ----------------------------------------------------------------------------- torch
class TorchStep:
    """The same step in torch eager, gradlab's initial weights copied in; batches are windows
    of the same token ids, drawn by torch."""

    def __init__(self, torch, g: GradlabStep, threads: int) -> None:
        nn, F = torch.nn, torch.nn.functional
        self.torch, self.threads = torch, threads
        m, p0 = g.model, {k: torch.from_numpy(v.copy()) for k, v in g.p0.items()}
        D, H = m.D, m.H

        def lin(name, n_in, n_out):
            layer = nn.Linear(n_in, n_out)
            with torch.no_grad():
                layer.weight.copy_(p0[f"{name}.W"].T)
                layer.bias.copy_(p0[f"{name}.b"])
            return layer

        def ln(name):
            layer = nn.LayerNorm(D)
            with torch.no_grad():
                layer.weight.copy_(p0[f"{name}.g"])
                layer.bias.copy_(p0[f"{name}.b"])
            return layer

        class Block(nn.Module):
            def __init__(self, i: int) -> None:
                super().__init__()
                b = f"block.{i}"
                self.ln1, self.ln2 = ln(f"{b}.ln1"), ln(f"{b}.ln2")
                self.qkv, self.proj = lin(f"{b}.attn.qkv", D, 3 * D), lin(f"{b}.attn.proj", D, D)
                self.fc, self.out = lin(f"{b}.mlp.fc", D, m.ratio * D), lin(f"{b}.mlp.proj", m.ratio * D, D)

            def forward(self, x):
                Bn, T, _ = x.shape
                q, k, v = self.qkv(self.ln1(x)).view(Bn, T, 3, H, D // H).permute(2, 0, 3, 1, 4)
                a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                x = x + self.proj(a.transpose(1, 2).reshape(Bn, T, D))
                return x + self.out(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))

        class Net(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.tok = nn.Embedding.from_pretrained(p0["tok.E"], freeze=False)
                self.pos = nn.Parameter(p0["pos.E"].clone())
                self.blocks = nn.ModuleList(Block(i) for i in range(m.depth))
                self.ln_f, self.head = ln("ln_f"), lin("head", D, m.output_dim)

            def forward(self, x):
                h = self.tok(x) + self.pos[:x.shape[1]]
                for blk in self.blocks:
                    h = blk(h)
                return self.head(self.ln_f(h))

        self.net = Net()
        self.params = list(self.net.parameters())
        n_torch, n_gradlab = sum(p.numel() for p in self.params), sum(v.size for v in g.p0.values())
        assert n_torch == n_gradlab, (n_torch, n_gradlab)
        self.opt = torch.optim.AdamW(self.params, lr=LR, weight_decay=0.01)
        self.text = torch.from_numpy(g.task.train_ids)
        self.T, self.B = g.task.seq_len, g.task.batch_size
        self.offsets = torch.arange(self.T + 1)

    def __call__(self) -> None:
        torch = self.torch
        torch.set_num_threads(self.threads)
        starts = torch.randint(0, len(self.text) - self.T - 1, (self.B, 1))
        w = self.text[starts + self.offsets]  # (B, T + 1)
        logits = self.net(w[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), w[:, 1:].reshape(-1))
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()


# ----------------------------------------------------------------------------- cases
def bench_step(table: Table, torch, args, batch: int) -> None:
    fns = {"gradlab": gradlab_step(batch)}
    if torch is not None:
        fns["torch"] = TorchStep(torch, gradlab_step(batch), args.threads)
        if args.side_threads:
            fns["torch_side"] = TorchStep(torch, gradlab_step(batch), args.side_threads)
    ms = interleaved(fns, args.steps, args.repeats, args.warmup, args.settle)
    s = SHAPE
    name = f"d{s['width']} L{s['depth']} H{s['heads']} T{s['seq_len']} b{batch}"
    table.add(f"{name} step vs torch ({args.threads} thr)", ms["gradlab"], ms.get("torch"), STEP_GOAL)
    if "torch_side" in ms:
        table.add(f"{name} step vs torch ({args.side_threads} thr, side)", ms["gradlab"], ms["torch_side"], None)


def bench_precision(table: Table, args) -> None:
    """The step at float16 and bfloat16 compute against the float32 step, interleaved."""
    cfg = config(SHAPE["batch"])
    fns = {c: GradlabStep(cfg, compute=c) for c in ("float32", "float16", "bfloat16")}
    ms = interleaved(fns, args.steps, args.repeats, args.warmup, args.settle)
    s = SHAPE
    for c in ("float16", "bfloat16"):
        table.add(f"transformer d{s['depth']} w{s['width']} T{s['seq_len']} b{s['batch']} {c} vs float32 compute",
                  ms[c], ms["float32"], PRECISION_GOAL)


def bench_loop(table: Table, args) -> None:
    from threadpoolctl import threadpool_limits

    from gradlab.train import train_seed

    steps = args.loop_steps
    cfg = config(steps=steps)

    def bare() -> None:
        with threadpool_limits(1, user_api="blas"):
            step = GradlabStep(cfg)
            for _ in range(steps):
                step()

    # The held-out evaluation is work of its own (by default every ceil(steps / 20) steps, 4
    # batches: in a 30-step run 60 forward passes, in a 300-step run 80): timed apart from
    # the records and checks, with one evaluation at the last step.
    once = config(steps=steps, eval_every=steps)
    fns = {"bare": bare, "train_seed": lambda: train_seed(cfg, 0), "train_seed_once": lambda: train_seed(once, 0)}
    train_seed(config(steps=3), 0)  # warm-up: imports, caches
    ms = {k: [t / steps for t in v] for k, v in interleaved(fns, 1, args.repeats, 1).items()}
    s = SHAPE
    name = f"lm d{s['width']} L{s['depth']} T{s['seq_len']} b{s['batch']}, {steps} steps"
    table.add(f"{name}: train_seed, one evaluation, vs bare loop", ms["train_seed_once"], ms["bare"], None)
    table.add(f"{name}: train_seed, default evaluation, vs bare", ms["train_seed"], ms["bare"], None)


def memory_child(mode: str, steps: int) -> None:
    """Print this process's peak RSS (VmHWM, KiB): after the imports only, or after `steps` steps."""
    from threadpoolctl import threadpool_limits

    import gradlab.train  # noqa: F401  (what the baseline imports too)

    threadpool_limits(1)
    if mode == "run":
        g = gradlab_step(SHAPE["batch"])
        for _ in range(steps):
            g()
    print(next(ln.split()[1] for ln in open("/proc/self/status") if ln.startswith("VmHWM:")))


def must_hold(g: GradlabStep) -> dict:
    s, m = SHAPE, g.model
    N, D, R, T = s["batch"] * s["seq_len"], m.D, m.ratio * m.D, s["seq_len"]
    n_params = sum(v.size for v in g.p0.values())
    per_block = 2 * N * D * 2 + 3 * N * D + s["batch"] * m.H * T * T + N * D + 2 * N * R
    saved = m.depth * per_block + 2 * N * D + N * m.output_dim
    return {"params": 4 * n_params, "grads": 4 * n_params, "moments": 8 * n_params, "saved": 4 * saved,
            "n_params": n_params}


def bench_memory(args) -> list[str]:
    def peak(mode: str) -> int:
        r = subprocess.run([sys.executable, __file__, "--_memory-child", mode, "--steps", "20"],
                           check=True, capture_output=True, text=True, env=child_env(1))
        return int(r.stdout.split()[-1]) * 1024

    base = statistics.median(peak("base") for _ in range(3))
    run = statistics.median(peak("run") for _ in range(3))
    need = must_hold(gradlab_step(SHAPE["batch"]))
    total = need["params"] + need["grads"] + need["moments"] + need["saved"]
    ratio = (run - base) / total
    mib = lambda b: f"{b / 2**20:.1f} MiB"  # noqa: E731
    return [f"memory, 20 bare steps, median of 3: peak RSS {mib(run)} - baseline {mib(base)} (numpy + gradlab "
            f"imported) = {mib(run - base)}; the step must hold {mib(total)} (params {mib(need['params'])} "
            f"({need['n_params']:,} float32) + grads {mib(need['grads'])} + AdamW moments {mib(need['moments'])} "
            f"+ saved activations {mib(need['saved'])}); ratio {ratio:.2f}x, goal <= {MEMORY_GOAL:g}x: "
            f"{'met' if ratio <= MEMORY_GOAL else 'MISSED'}"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=10, help="training steps per round and engine")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--settle", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=1, help="torch's threads in the main column (gradlab: 1)")
    ap.add_argument("--side-threads", type=int, default=2, help="torch's threads in the side column (0: none)")
    ap.add_argument("--batch", default=str(SHAPE["batch"]), help="comma-separated batch sizes for the step case")
    ap.add_argument("--loop-steps", type=int, default=30)
    ap.add_argument("--only", default=",".join(CASES))
    ap.add_argument("--_memory-child", choices=["base", "run"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._memory_child:
        memory_child(args._memory_child, args.steps)
        return
    only = {c.strip() for c in args.only.split(",") if c.strip()}
    if only - set(CASES):
        ap.error(f"--only: unknown case(s) {', '.join(sorted(only - set(CASES)))}")
    notes = bench_memory(args) if "memory" in only else []  # while this process is small

    import numpy as np  # noqa: F401  (loads OpenBLAS before the limits)
    from threadpoolctl import threadpool_limits

    try:
        import torch
    except ImportError:
        torch = None
    threadpool_limits(1, user_api="blas")  # gradlab's per-seed pinning
    t0 = time.perf_counter()
    from engine_bench import machine_facts

    machine_facts(torch, 1)
    print(f"timing: {args.warmup} warm-up steps, then median of {args.repeats} interleaved rounds of {args.steps} "
          f"steps (each after {args.settle:g} s of untimed steps); float32, V = 1, AdamW lr {LR:g} wd 0.01, "
          "clip by global norm at 1.0; gradlab on 1 BLAS thread")
    print()
    table = Table()
    if "step" in only:
        for b in (int(x) for x in args.batch.split(",")):
            bench_step(table, torch, args, b)
    if "loop" in only:
        bench_loop(table, args)
    if "precision" in only:
        bench_precision(table, args)
    if table.rows:
        table.print()
    print()
    for line in notes:
        print(line)
    print(f"(benchmark wall time {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
