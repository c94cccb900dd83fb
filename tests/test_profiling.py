"""The model's profiling ranges: present in a profiler trace when on, absent when off."""
import torch

import fastuvit
from fastuvit import profiling
from model_cases import CASES, make_inputs


def _range_names(model, x, t, y):
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with torch.no_grad(), fastuvit.ops.eager_fallback():
            model(x, t, y)
    return {e.name for e in prof.events()}


def test_ranges_mark_blocks_and_ops_when_on():
    kwargs = CASES["class_cond"][1]
    model = fastuvit.UViT(**kwargs)
    x, t, y = make_inputs("uvit", kwargs)
    profiling.enable_ranges(True)
    try:
        names = _range_names(model, x, t, y)
    finally:
        profiling.enable_ranges(False)
    expected = {"embed", "in_blocks.0", "in_blocks.1", "mid_block", "out_blocks.0", "out_blocks.1",
                "skip", "attention", "mlp", "decoder"}
    assert expected <= names, expected - names


def test_ranges_are_absent_when_off():
    kwargs = CASES["class_cond"][1]
    model = fastuvit.UViT(**kwargs)
    assert not profiling.ranges_enabled()
    names = _range_names(model, *make_inputs("uvit", kwargs))
    assert not ({"embed", "mid_block", "decoder"} & names)


def test_profile_script_runs(tmp_path):
    """benchmarks/profile.py, run as a script (its name must not shadow the stdlib's profile)."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, FASTUVIT_DISABLE_KERNELS="1")
    result = subprocess.run(
        [sys.executable, os.path.join(root, "benchmarks", "profile.py"), "imagenet256_uvit_huge", "--tiny",
         "--batch", "1", "--steps", "1", "--warmup", "1", "--nvtx", "--compile"],
        capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ms/step" in result.stdout
