"""``skip_linear``: U-ViT's long skip ``F.linear(cat([x, skip], -1), weight, bias)`` (DESIGN.md §2).

``skip_linear_reference`` is the eager form with the concatenation: the ground truth the fused
kernel is tested against and the fallback where the kernel does not run.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_same_device, check_tensor


def skip_linear_reference(x, skip, weight, bias=None):
    return F.linear(torch.cat([x, skip], dim=-1), weight, bias)


def check_skip_linear_args(x, skip, weight, bias) -> None:
    check_tensor("x", x)
    check_tensor("skip", skip)
    check_tensor("weight", weight, ndim=2)
    if x.dim() < 1:
        raise ValueError("x must have at least one dimension")
    if x.shape != skip.shape:
        raise ValueError(f"x and skip must have one shape, got {tuple(x.shape)} and {tuple(skip.shape)}")
    D = x.shape[-1]
    if weight.shape[1] != 2 * D:
        raise ValueError(f"weight must be (D_out, 2·D) = (·, {2 * D}) for inputs of width {D}, "
                         f"got {tuple(weight.shape)}")
    if bias is not None:
        check_tensor("bias", bias, ndim=1)
        if bias.shape[0] != weight.shape[0]:
            raise ValueError(f"bias must have length {weight.shape[0]} (weight's rows), got {bias.shape[0]}")
    check_same_device(x=x, skip=skip, weight=weight, bias=bias)


def skip_linear(x, skip, weight, bias=None):
    """``F.linear(cat([x, skip], -1), weight, bias)``; x, skip (..., D), weight (D_out, 2·D)."""
    check_skip_linear_args(x, skip, weight, bias)
    return skip_linear_reference(x, skip, weight, bias)
