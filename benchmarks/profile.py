"""Run N steady-state steps of a released config for Nsight Systems / Nsight Compute.

    # timeline with the model's NVTX ranges (blocks and ops), warm-up excluded:
    nsys profile -t cuda,nvtx --capture-range=cudaProfilerApi -o uvit_huge \
        python benchmarks/profile.py imagenet256_uvit_huge --mode train --batch 64 --nvtx
    # kernel metrics of the fused attention kernels inside the attention ranges:
    ncu --nvtx --nvtx-include "attention/" --profile-from-start off -k regex:attn -c 20 \
        python benchmarks/profile.py imagenet256_uvit_huge --mode sample --batch 8 --nvtx --steps 1

The measured steps run between ``torch.cuda.profiler.start()`` and ``stop()`` (cudaProfilerApi), after
``--warmup`` steps that compile, autotune and settle the allocator. ``--impl reference`` profiles the
official-style eager baseline for comparison. Without CUDA it runs on the CPU (a smoke check of the
script; use --tiny there).
"""
from __future__ import annotations

import os
import sys

# Run as a script, this file's folder is sys.path[0], where this profile.py would shadow the standard
# library's profile module (which torch._dynamo imports through cProfile).
if sys.path and os.path.abspath(sys.path[0]) == os.path.dirname(os.path.abspath(__file__)):
    sys.path.pop(0)

import argparse  # noqa: E402
import time  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import fastuvit  # noqa: E402
from fastuvit import profiling  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="Profile steps of a U-ViT config (see module docstring).")
    p.add_argument("config", choices=sorted(fastuvit.CONFIGS))
    p.add_argument("--mode", choices=("train", "sample"), default="train",
                   help="train: forward+backward+AdamW; sample: one guided network evaluation (2·B batch)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--impl", choices=("fastuvit", "reference"), default="fastuvit")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--nvtx", action="store_true", help="emit the model's NVTX ranges (eager mode)")
    p.add_argument("--tiny", action="store_true", help="shrink the model (smoke runs without a GPU)")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    overrides = dict(depth=2, embed_dim=64, num_heads=4) if args.tiny else {}
    if args.impl == "reference":
        model = fastuvit.create_model(args.config, reference=True, attention_mode="official", **overrides)
    else:
        model = fastuvit.create_model(args.config, **overrides)
    model = model.to(device)
    net = torch.compile(model) if args.compile else model
    profiling.enable_ranges(args.nvtx)

    batch = args.batch * (2 if args.mode == "sample" else 1)  # guidance doubles the batch
    x, t, cond = fastuvit.example_inputs(model, batch, device=device)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4) if args.mode == "train" else None
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=device == "cuda")

    def step():
        if opt is None:
            with torch.no_grad(), autocast:
                return net(x, t) if cond is None else net(x, t, cond)
        with autocast:
            out = net(x, t) if cond is None else net(x, t, cond)
        F.mse_loss(out.float(), x).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(args.warmup):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.profiler.start()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.profiler.stop()
    elapsed = (time.perf_counter() - start) / args.steps
    print(f"{args.config} {args.mode} batch {batch} {args.impl}{' compiled' if args.compile else ''}: "
          f"{elapsed * 1e3:.2f} ms/step on {device}")


if __name__ == "__main__":
    main()
