"""Timing and bookkeeping for the pytest-benchmark suites (DESIGN.md §6).

``measure(benchmark, fn, ...)``: on CUDA, the median comes from ``triton.testing.do_bench`` (CUDA
events, L2 flushed between runs) and pytest-benchmark's own rounds call ``fn`` followed by a device
synchronisation, so its statistics are synchronised too. On the CPU it is a smoke run: few rounds.
Everything a report needs goes into ``extra_info``: the implementation and shape, median ms,
TFLOP/s, GB/s and its fraction of peak bandwidth, peak memory, device and versions. Speedups
against the baselines of the same group are computed from the JSON by ``benchmarks/report.py``.
"""
from __future__ import annotations

import platform

import torch

ON_GPU = torch.cuda.is_available()
DEVICE = "cuda" if ON_GPU else "cpu"

# Peak figures for the fractions reported (dense bf16 tensor-core FLOP/s, HBM bytes/s).
PEAKS = {
    "H100": {"tflops": 989.0, "gbps": 3350.0},   # H100 SXM5: 3.35 TB/s HBM3
    "H200": {"tflops": 989.0, "gbps": 4800.0},   # H200: 4.8 TB/s HBM3e
}


def device_name() -> str:
    return torch.cuda.get_device_name() if ON_GPU else f"cpu ({platform.processor() or platform.machine()})"


def device_peaks() -> dict | None:
    name = device_name()
    for key, peaks in PEAKS.items():
        if key in name:
            return peaks
    return None


def versions() -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version()}
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:
        info["triton"] = None
    return info


def measure(benchmark, fn, *, group: str, impl: str, flops: float | None = None,
            bytes_moved: float | None = None, shape: dict | None = None, cpu_rounds: int = 2) -> float:
    """Time ``fn`` (no arguments) and record it; returns the median in milliseconds.

    ``group`` names what is compared (op + shape + pass); ``impl`` which implementation this is.
    """
    benchmark.group = group
    if ON_GPU:
        import triton.testing

        fn()  # compile / autotune outside the timed region
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        median_ms = triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")
        peak_mem = torch.cuda.max_memory_allocated()

        def synced():
            fn()
            torch.cuda.synchronize()

        # Enough rounds for stable statistics, without spending minutes on a multi-second function.
        rounds = max(3, min(20, int(2000 / max(median_ms, 1e-3))))
        benchmark.pedantic(synced, rounds=rounds, iterations=1, warmup_rounds=1)
    else:
        benchmark.pedantic(fn, rounds=cpu_rounds, iterations=1, warmup_rounds=1)
        median_ms = benchmark.stats.stats.median * 1e3
        peak_mem = None

    info = benchmark.extra_info
    info.update(impl=impl, median_ms=median_ms, device=device_name(), peak_memory_bytes=peak_mem,
                smoke=not ON_GPU, **versions())
    if shape:
        info["shape"] = shape
    peaks = device_peaks()
    if flops is not None:
        info["tflops"] = flops / (median_ms * 1e-3) / 1e12
        if peaks:
            info["fraction_of_peak_tflops"] = info["tflops"] / peaks["tflops"]
    if bytes_moved is not None:
        info["gbps"] = bytes_moved / (median_ms * 1e-3) / 1e9
        if peaks:
            info["fraction_of_peak_gbps"] = info["gbps"] / peaks["gbps"]
    return median_ms


def uvit_forward_flops(model, batch: int) -> float:
    """Analytic forward FLOPs of a U-ViT (DESIGN.md §6): per token per block 2·(4 + 2·mlp_ratio)·D²
    (qkv 6D², proj 2D², MLP 4·ratio·D²) + 4·L·D (attention), 4·D² per token for each long skip,
    plus the patch embedding, the context embedding and the decoder."""
    D, L, extras = model.embed_dim, model.pos_embed.shape[1], model.extras
    blocks = [*model.in_blocks, model.mid_block, *model.out_blocks]
    hidden = blocks[0].mlp.fc1.out_features
    per_token = sum(2 * (3 * D * D + D * D + 2 * D * hidden) + 4 * L * D for _ in blocks)
    per_token += sum(4 * D * D for b in blocks if b.skip_linear is not None)
    per_token += 2 * D * model.patch_dim  # decoder_pred on every token
    flops = per_token * L + 2 * model.patch_dim * D * (L - extras)  # + patch embedding of N patches
    if hasattr(model, "context_embed"):
        flops += 2 * model.context_embed.in_features * D * (extras - 1)
    return float(flops * batch)


def uvit_training_flops(model, batch: int) -> float:
    """Forward + backward (2x forward), + one more forward when blocks are checkpointed."""
    recompute = 1 if model.mid_block.use_checkpoint else 0
    return (3 + recompute) * uvit_forward_flops(model, batch)
