"""``skip_linear``: U-ViT's long skip ``F.linear(cat([x, skip], -1), weight, bias)`` (DESIGN.md §2),
without materialising the concatenation.

``skip_linear_reference`` is the eager form with the concatenation: the ground truth the fused
kernel is tested against and the forward fallback where the kernel does not run.

Layers: ``fastuvit::skip_linear`` (forward) and ``fastuvit::skip_linear_bwd_input`` (grad_x and
grad_skip) are custom ops that run the Triton kernels of ``fastuvit.kernels.skip_linear`` where
``use_triton`` says so and an eager fallback otherwise; ``fastuvit::skip_linear_bwd_weight`` writes
grad_weight = gᵀ[x | skip] as two BLAS GEMMs (cuBLAS on a GPU) straight into the column blocks of
one (N, 2·D) tensor on every device (why not Triton: the kernel file's header). grad_bias is Σ g.
All have fake implementations, so ``torch.compile(fullgraph=True)`` traces forward and backward.

Autocast: under ``torch.autocast`` the functional casts the floating inputs to the autocast dtype
(read at call time: bf16 or fp16) before the op, as ``F.linear`` does, so the output has that dtype.
``torch.library.register_autocast`` would fix one dtype per device, hence the explicit cast; calling
``torch.ops.fastuvit.skip_linear`` directly skips it.

Memory: autograd saves x and skip (alive anyway in U-ViT) instead of the (M, 2·D) concatenation the
eager form saves for its weight gradient.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import check_same_device, check_same_dtype, check_tensor
from ._dispatch import use_triton


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


def _kernels():
    from fastuvit.kernels import skip_linear as kernels  # lazy: import fastuvit works without triton

    return kernels


# ----------------------------------------------------------------------------------------------
# Custom ops


@torch.library.custom_op("fastuvit::skip_linear", mutates_args=())
def _skip_linear_op(x: Tensor, skip: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    if use_triton(x):
        return _kernels().skip_linear_fwd(x, skip, weight, bias)
    return skip_linear_reference(x, skip, weight, bias)


@_skip_linear_op.register_fake
def _(x, skip, weight, bias):
    return x.new_empty(*x.shape[:-1], weight.shape[0])


@torch.library.custom_op("fastuvit::skip_linear_bwd_input", mutates_args=())
def _skip_linear_bwd_input_op(grad_out: Tensor, weight: Tensor, use_kernels: bool) -> tuple[Tensor, Tensor]:
    """``use_kernels``: the forward's decision (the backward may run in another thread, where
    ``eager_fallback`` is not in force)."""
    if use_kernels:
        return _kernels().skip_linear_bwd_input(grad_out, weight)
    D = weight.shape[1] // 2
    return grad_out @ weight[:, :D], grad_out @ weight[:, D:]


@_skip_linear_bwd_input_op.register_fake
def _(grad_out, weight, use_kernels):
    shape = (*grad_out.shape[:-1], weight.shape[1] // 2)
    return grad_out.new_empty(shape), grad_out.new_empty(shape)


def _rows(t: Tensor) -> Tensor:
    return t.reshape(-1, t.shape[-1])  # a view whenever the leading dims merge


@torch.library.custom_op("fastuvit::skip_linear_bwd_weight", mutates_args=())
def _skip_linear_bwd_weight_op(grad_out: Tensor, x: Tensor, skip: Tensor) -> Tensor:
    N, D = grad_out.shape[-1], x.shape[-1]
    g_t = _rows(grad_out).t()  # N M
    grad_weight = grad_out.new_empty(N, 2 * D)
    # BLAS writes into the strided column blocks in place (row stride 2·D): no concat, no copy.
    torch.mm(g_t, _rows(x), out=grad_weight[:, :D])
    torch.mm(g_t, _rows(skip), out=grad_weight[:, D:])
    return grad_weight


@_skip_linear_bwd_weight_op.register_fake
def _(grad_out, x, skip):
    return grad_out.new_empty(grad_out.shape[-1], 2 * x.shape[-1])


def _setup_context(ctx, inputs, output):
    x, skip, weight, bias = inputs
    need_x, need_skip, need_weight = ctx.needs_input_grad[:3]
    ctx.use_kernels = use_triton(x)
    ctx.save_for_backward(x if need_weight else None, skip if need_weight else None,
                          weight if need_x or need_skip else None)


def _backward(ctx, grad_out):
    x, skip, weight = ctx.saved_tensors
    need_x, need_skip, need_weight, need_bias = ctx.needs_input_grad[:4]  # (x, skip, weight, bias)
    grad_x = grad_skip = grad_weight = grad_bias = None
    if need_x or need_skip:
        grad_x, grad_skip = torch.ops.fastuvit.skip_linear_bwd_input(grad_out, weight, ctx.use_kernels)
    if need_weight:
        grad_weight = torch.ops.fastuvit.skip_linear_bwd_weight(grad_out, x, skip)
    if need_bias:
        grad_bias = grad_out.sum(dim=tuple(range(grad_out.dim() - 1)))
    return (grad_x if need_x else None), (grad_skip if need_skip else None), grad_weight, grad_bias


_skip_linear_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# Functional


def _autocast(x, skip, weight, bias):
    """Cast to the autocast dtype where autocast is on for x's device, as F.linear does."""
    device_type = x.device.type
    if not torch.is_autocast_enabled(device_type):
        return x, skip, weight, bias
    dtype = torch.get_autocast_dtype(device_type)
    return x.to(dtype), skip.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)


def skip_linear(x, skip, weight, bias=None):
    """``F.linear(cat([x, skip], -1), weight, bias)``; x, skip (..., D), weight (D_out, 2·D),
    bias (D_out,) or None; returns (..., D_out). No (..., 2·D) tensor is ever made."""
    check_skip_linear_args(x, skip, weight, bias)
    x, skip, weight, bias = _autocast(x, skip, weight, bias)
    check_same_dtype(x=x, skip=skip, weight=weight, bias=bias)
    return torch.ops.fastuvit.skip_linear(x, skip, weight, bias)
