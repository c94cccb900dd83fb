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


def autotune_enabled() -> bool:
    """``FASTUVIT_AUTOTUNE=0``: take the first config that survives pruning instead of benchmarking
    them all (fast start-up, e.g. for test suites). Read whenever a new key is tuned."""
    return os.environ.get("FASTUVIT_AUTOTUNE", "1") != "0"


def with_autotune_setting(prune=None):
    """An ``early_config_prune`` that applies ``prune`` and then ``FASTUVIT_AUTOTUNE``."""

    def early_config_prune(configs, named_args, **kwargs):
        kept = prune(configs, named_args, **kwargs) if prune else list(configs)
        return kept if autotune_enabled() else kept[:1]

    return early_config_prune


def autotune(configs, key, interpret_config: triton.Config | None = None, prune_configs_by=None,
             **autotune_kwargs):
    """``triton.autotune`` on a GPU (``prune_configs_by`` as there, plus ``FASTUVIT_AUTOTUNE=0``);
    under the interpreter, run ``interpret_config`` (default: the first config) only. Keep the
    interpreter config small: the interpreter is slow."""
    if not configs:
        raise ValueError("configs must not be empty")

    def decorator(fn):
        if INTERPRET:
            return _FixedConfig(fn, interpret_config or configs[0])
        prune = dict(prune_configs_by or {})
        prune["early_config_prune"] = with_autotune_setting(prune.get("early_config_prune"))
        return triton.autotune(configs=configs, key=key, prune_configs_by=prune, **autotune_kwargs)(fn)

    return decorator


def next_power_of_2(n: int) -> int:
    return triton.next_power_of_2(n)
