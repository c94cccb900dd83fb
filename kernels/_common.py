"""Helpers shared by the kernel files: interpreter detection and autotuning that degrades to one
fixed config under ``TRITON_INTERPRET=1`` (``triton.autotune`` needs a GPU driver to benchmark)."""
from __future__ import annotations

import os

import triton

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


class _FixedConfig:
    """Launches ``fn`` with one config's meta-parameters, with the same ``fn[grid](...)`` call
    shape as an autotuned kernel, so launchers do not care which one they hold."""

    def __init__(self, fn, config: triton.Config):
        self.fn = fn
        self.config = config

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            meta = dict(self.config.kwargs)
            meta.update(kwargs)
            if self.config.num_warps is not None:
                meta.setdefault("num_warps", self.config.num_warps)
            return self.fn[grid](*args, **meta)

        return launch


def autotune(configs, key, interpret_config: triton.Config | None = None, **autotune_kwargs):
    """``triton.autotune`` on a GPU; under the interpreter, run ``interpret_config`` (default: the
    first config) only. Keep the interpreter config small: the interpreter is slow."""
    if not configs:
        raise ValueError("configs must not be empty")

    def decorator(fn):
        if INTERPRET:
            return _FixedConfig(fn, interpret_config or configs[0])
        return triton.autotune(configs=configs, key=key, **autotune_kwargs)(fn)

    return decorator


def next_power_of_2(n: int) -> int:
    return triton.next_power_of_2(n)
