"""NVTX ranges for Nsight Systems / Compute, behind a switch that costs nothing when off.

    fastuvit.profiling.enable_ranges()        # or FASTUVIT_NVTX=1 in the environment
    nsys profile -t cuda,nvtx python benchmarks/profile.py imagenet256_uvit_huge

The model marks each block (``in_blocks.3``, ``mid_block``, ``out_blocks.0``) and each op in it
(``embed``, ``skip``, ``attention``, ``mlp``, ``decoder``). With ranges off, ``ranged(name, fn, *a)``
is a plain call ``fn(*a)``: ``torch.compile`` guards on the flag and traces no profiling code. With
ranges on, CUDA runs push/pop NVTX ranges (for nsys) and every device records
``torch.profiler.record_function`` ranges (for torch.profiler traces); compiled code then sees the
ranges as graph breaks, so profile ranges in eager mode and compiled code by kernel names.
"""
from __future__ import annotations

import os

import torch

_enabled = os.environ.get("FASTUVIT_NVTX", "0") == "1"


def ranges_enabled() -> bool:
    return _enabled


def enable_ranges(enabled: bool = True) -> None:
    """Turn the model's NVTX / record_function ranges on or off (process-wide)."""
    global _enabled
    _enabled = bool(enabled)


def ranged(name: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``, inside a range called ``name`` when ranges are on."""
    if not _enabled:
        return fn(*args, **kwargs)
    use_nvtx = torch.cuda.is_available()
    if use_nvtx:
        torch.cuda.nvtx.range_push(name)
    try:
        with torch.profiler.record_function(name):
            return fn(*args, **kwargs)
    finally:
        if use_nvtx:
            torch.cuda.nvtx.range_pop()
