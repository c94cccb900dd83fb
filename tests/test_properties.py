"""Property tests of the fused ops (issue 8): random shapes, strides and dtypes within each op's
contract, output and every gradient under the numerical policy, through the Triton kernels (in the
interpreter on CPU). Examples are derandomized (the same ones every run, so CI is reproducible) and
bounded in number; FASTUVIT_PROPERTY_EXAMPLES raises the count for a longer local search."""
import os

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fastuvit.ops import (attention, attention_reference, patch_embed, patch_embed_reference, skip_linear,
                          skip_linear_reference, use_triton)
from numerics import assert_op_matches_policy

EXAMPLES = int(os.environ.get("FASTUVIT_PROPERTY_EXAMPLES", "12"))
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(autouse=True, scope="module")
def _kernels_run():
    # The point is the kernels: fail rather than pass through the eager fallback.
    assert use_triton(torch.empty(1, device=DEVICE)), "the Triton kernels would not run here"


def randn(*shape):
    return torch.randn(*shape, device=DEVICE)


@PROPERTY
@given(lead=st.lists(st.integers(1, 5), min_size=1, max_size=3), D=st.integers(16, 96), N=st.integers(1, 80),
       bias=st.booleans(), layout=st.sampled_from(["contiguous", "row_padded", "transposed"]),
       weight_t=st.booleans(), dtype=st.sampled_from(DTYPES))
def test_skip_linear_property(lead, D, N, bias, layout, weight_t, dtype):
    pad = 5 if layout == "row_padded" else 0
    swap = layout == "transposed" and len(lead) >= 2
    base_lead = [lead[1], lead[0], *lead[2:]] if swap else lead
    leaves = [randn(*base_lead, D + pad), randn(*base_lead, D + pad),
              randn(2 * D, N) if weight_t else randn(N, 2 * D)] + ([randn(N)] if bias else [])

    def views(x, skip, weight, b=None):
        x, skip = x[..., :D], skip[..., :D]  # unit-stride columns, padded rows
        if swap:
            x, skip = x.transpose(0, 1), skip.transpose(0, 1)
        return x, skip, (weight.t() if weight_t else weight), b

    names = ["x", "skip", "weight"] + (["bias"] if bias else [])
    assert_op_matches_policy(skip_linear, skip_linear_reference, leaves, dtype, names, views=views)


@PROPERTY
@given(B=st.integers(1, 3), C=st.integers(1, 4), p=st.sampled_from([1, 2, 4]), h=st.integers(1, 4),
       w=st.integers(1, 4), D=st.integers(8, 80), E=st.integers(0, 3), bias=st.booleans(),
       pos=st.sampled_from([None, "2d", "3d"]), channels_last=st.booleans(), dtype=st.sampled_from(DTYPES))
def test_patch_embed_property(B, C, p, h, w, D, E, bias, pos, channels_last, dtype):
    L = E + h * w
    leaves = [randn(B, C, h * p, w * p), randn(D, C, p, p) * 0.2]
    names = ["x", "weight"]
    if bias:
        leaves.append(randn(D)); names.append("bias")
    if pos:
        leaves.append(randn(L, D) if pos == "2d" else randn(1, L, D)); names.append("pos_embed")
    if E:
        leaves.append(randn(B, E, D)); names.append("prefix")
    present = dict(zip(names, range(len(names))))

    def views(*args):
        x = args[0].contiguous(memory_format=torch.channels_last) if channels_last else args[0]
        get = lambda name: args[present[name]] if name in present else None  # noqa: E731
        return x, args[1], get("bias"), get("pos_embed"), get("prefix")

    assert_op_matches_policy(patch_embed, patch_embed_reference, leaves, dtype, names, views=views)


@PROPERTY
@given(B=st.integers(1, 2), L=st.integers(1, 80), H=st.integers(1, 3), hd=st.sampled_from([16, 24, 40, 64, 72, 80]),
       packed=st.booleans(), scale=st.sampled_from([None, 0.1]), dtype=st.sampled_from(DTYPES))
def test_attention_property(B, L, H, hd, packed, scale, dtype):
    if packed:  # views into one packed qkv projection, as the model passes them
        leaves = [randn(B, L, 3, H, hd)]
        views = lambda qkv: (qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2])  # noqa: E731
        names = ["qkv"]
    else:
        leaves = [randn(B, L, H, hd) for _ in range(3)]
        views = None
        names = ["q", "k", "v"]
    assert_op_matches_policy(lambda q, k, v: attention(q, k, v, scale=scale, backend="triton"),
                             lambda q, k, v: attention_reference(q, k, v, scale=scale),
                             leaves, dtype, names, views=views)
