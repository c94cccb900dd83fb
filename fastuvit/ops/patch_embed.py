"""``patch_embed``: Conv2d(stride = kernel = p) patchify + linear, token assembly with the prefix
tokens, and ``pos_embed``, as one op (DESIGN.md §2):

    cat([prefix, conv2d(x, weight, bias, stride=p).flatten(2).transpose(1, 2)], 1) + pos_embed

``patch_embed_reference`` is that eager chain: the ground truth the fused kernel is tested against
and the fallback where the kernel does not run.

Layers: the functional ``patch_embed`` checks the arguments and applies autocast, then calls the
custom op ``fastuvit::patch_embed`` (fake implementation + registered autograd; its backward is the
custom ops ``fastuvit::patch_embed_bwd_dx`` and ``fastuvit::patch_embed_bwd_params``, so
``torch.compile`` traces forward and backward without a graph break). Each op's implementation
picks, at run time, the Triton kernels of ``fastuvit.kernels.patch_embed`` where
``use_triton(x)`` holds, else the eager computation (``F.conv2d`` / ``aten.convolution_backward``).

Dtypes follow the eager chain: x, weight and bias share one dtype (the conv's); prefix and
pos_embed may be wider and the output has the promoted dtype. Under ``torch.autocast`` the conv
runs in the autocast dtype and the cat/add promote, so with the model's fp32 prefix and pos_embed
the output is fp32, as in eager.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ._checks import check_same_device, check_same_dtype, check_tensor
from ._dispatch import use_triton


def patch_embed_reference(x, weight, bias=None, pos_embed=None, prefix=None):
    tokens = F.conv2d(x, weight, bias, stride=weight.shape[-1]).flatten(2).transpose(1, 2)  # B N D
    if prefix is not None:
        tokens = torch.cat([prefix, tokens], dim=1)  # B E+N D
    if pos_embed is not None:
        tokens = tokens + pos_embed
    return tokens


def check_patch_embed_args(x, weight, bias, pos_embed, prefix) -> None:
    check_tensor("x", x, ndim=4)
    check_tensor("weight", weight, ndim=4)
    D, C, p, p2 = weight.shape
    if p != p2:
        raise ValueError(f"weight must be (D, C, p, p) with a square kernel, got {tuple(weight.shape)}")
    if x.shape[1] != C:
        raise ValueError(f"x has {x.shape[1]} channels but weight expects {C} (weight shape {tuple(weight.shape)})")
    H, W = x.shape[-2:]
    if H % p or W % p:
        raise ValueError(f"x's height and width ({H}, {W}) must be divisible by the patch size {p}")
    if bias is not None:
        check_tensor("bias", bias, ndim=1)
        if bias.shape[0] != D:
            raise ValueError(f"bias must have length {D} (weight's D), got {bias.shape[0]}")
    E = 0
    if prefix is not None:
        check_tensor("prefix", prefix, ndim=3)
        if prefix.shape[0] != x.shape[0] or prefix.shape[2] != D:
            raise ValueError(f"prefix must be (B={x.shape[0]}, E, D={D}), got {tuple(prefix.shape)}")
        E = prefix.shape[1]
    if pos_embed is not None:
        check_tensor("pos_embed", pos_embed, ndim=(2, 3))
        L = E + (H // p) * (W // p)
        if tuple(pos_embed.shape[-2:]) != (L, D) or (pos_embed.dim() == 3 and pos_embed.shape[0] != 1):
            raise ValueError(f"pos_embed must be (1, {L}, {D}) for {E} prefix tokens and "
                             f"{(H // p) * (W // p)} patches, got {tuple(pos_embed.shape)}")
    check_same_device(x=x, weight=weight, bias=bias, pos_embed=pos_embed, prefix=prefix)


def _output_dtype(x, pos_embed, prefix) -> torch.dtype:
    """The eager chain's: the conv's dtype promoted by the cat with prefix and the add of pos_embed."""
    dtype = x.dtype
    for t in (prefix, pos_embed):
        if t is not None:
            dtype = torch.promote_types(dtype, t.dtype)
    return dtype


def _num_patches(x, weight) -> int:
    p = weight.shape[-1]
    return (x.shape[-2] // p) * (x.shape[-1] // p)


def _like(t: torch.Tensor, template: torch.Tensor) -> torch.Tensor:
    """``t`` with the strides ``torch.empty_like(template)`` has (what the fake implementations
    promise)."""
    out = torch.empty_like(template, dtype=t.dtype)
    return t if out.stride() == t.stride() else out.copy_(t)


def _conv_grad(grad, x, weight):
    """The conv output's gradient (B, D, H/p, W/p) in the conv's dtype, as the eager autograd
    passes it on (for the eager fallback)."""
    B, _, H, W = x.shape
    p = weight.shape[-1]
    patches = grad[:, grad.shape[1] - _num_patches(x, weight):]  # B N D
    return patches.to(x.dtype).transpose(1, 2).reshape(B, weight.shape[0], H // p, W // p)


def _conv_backward(grad, x, weight, need_x: bool, need_weight: bool):
    p = weight.shape[-1]
    return torch.ops.aten.convolution_backward(_conv_grad(grad, x, weight), x, weight, None, [p, p], [0, 0],
                                               [1, 1], False, [0, 0], 1, [need_x, need_weight, False])


@torch.library.custom_op("fastuvit::patch_embed", mutates_args=())
def _patch_embed_op(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                    pos_embed: Optional[torch.Tensor], prefix: Optional[torch.Tensor]) -> torch.Tensor:
    if use_triton(x):
        from ..kernels.patch_embed import patch_embed_fwd

        return patch_embed_fwd(x, weight, bias, pos_embed, prefix, _output_dtype(x, pos_embed, prefix))
    return patch_embed_reference(x, weight, bias, pos_embed, prefix).contiguous()


@_patch_embed_op.register_fake
def _(x, weight, bias, pos_embed, prefix):
    E = prefix.shape[1] if prefix is not None else 0
    return x.new_empty((x.shape[0], E + _num_patches(x, weight), weight.shape[0]),
                       dtype=_output_dtype(x, pos_embed, prefix))


@torch.library.custom_op("fastuvit::patch_embed_bwd_dx", mutates_args=())
def _patch_embed_bwd_dx_op(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                           use_kernels: bool) -> torch.Tensor:
    """dx from grad_out (B, E + N, D); x is read for its shape, dtype and layout only.
    ``use_kernels``: the forward's decision (the backward may run in another thread, where
    ``eager_fallback`` is not in force)."""
    if use_kernels:
        from ..kernels.patch_embed import patch_embed_bwd_dx

        return patch_embed_bwd_dx(grad, x, weight)
    return _like(_conv_backward(grad, x, weight, True, False)[0], x)


@_patch_embed_bwd_dx_op.register_fake
def _(grad, x, weight, use_kernels):
    return torch.empty_like(x)


@torch.library.custom_op("fastuvit::patch_embed_bwd_params", mutates_args=())
def _patch_embed_bwd_params_op(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor,
                               need_colsum: bool, use_kernels: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(dweight, contiguous, in weight's dtype; colsum): colsum (E + N, D) fp32 is grad_out summed
    over the batch (empty when not ``need_colsum``): dpos_embed = colsum, dbias = colsum[E:].sum(0)."""
    if use_kernels:
        from ..kernels.patch_embed import patch_embed_bwd_params

        dweight, colsum = patch_embed_bwd_params(grad, x, weight, need_colsum)
    else:
        dweight = _conv_backward(grad, x, weight, False, True)[1].contiguous()
        colsum = grad.sum(0, dtype=torch.float32) if need_colsum else None
    return dweight, colsum if colsum is not None else grad.new_empty((0,), dtype=torch.float32)


@_patch_embed_bwd_params_op.register_fake
def _(grad, x, weight, need_colsum, use_kernels):
    colsum_shape = tuple(grad.shape[1:]) if need_colsum else (0,)
    return weight.new_empty(weight.shape), grad.new_empty(colsum_shape, dtype=torch.float32)


def _setup_context(ctx, inputs, output):
    x, weight, bias, pos_embed, prefix = inputs
    ctx.save_for_backward(x, weight)
    ctx.use_kernels = use_triton(x)
    ctx.bias_dtype = bias.dtype if bias is not None else None
    ctx.pos_meta = (pos_embed.shape, pos_embed.dtype) if pos_embed is not None else None
    ctx.prefix_meta = (prefix.shape[1], prefix.dtype) if prefix is not None else (0, None)


def _backward(ctx, grad):
    x, weight = ctx.saved_tensors
    need_x, need_weight, need_bias, need_pos, need_prefix = ctx.needs_input_grad
    E, prefix_dtype = ctx.prefix_meta
    dx = dweight = dbias = dpos = dprefix = None
    if need_x:
        dx = torch.ops.fastuvit.patch_embed_bwd_dx(grad, x, weight, ctx.use_kernels)
    if need_weight or need_bias or need_pos:
        dweight, colsum = torch.ops.fastuvit.patch_embed_bwd_params(grad, x, weight, need_bias or need_pos,
                                                                   ctx.use_kernels)
        dweight = dweight if need_weight else None
        if need_bias:
            dbias = colsum[E:].sum(0).to(ctx.bias_dtype)
        if need_pos:
            dpos = colsum.to(ctx.pos_meta[1]).reshape(ctx.pos_meta[0])
    if need_prefix:
        dprefix = grad[:, :E].to(prefix_dtype)
    return dx, dweight, dbias, dpos, dprefix


_patch_embed_op.register_autograd(_backward, setup_context=_setup_context)


def patch_embed(x, weight, bias=None, pos_embed=None, prefix=None):
    """(B, C, H, W) image -> (B, E + N, D) tokens; weight in the Conv2d layout (D, C, p, p), bias (D,),
    pos_embed (1, E + N, D) or (E + N, D), prefix (B, E, D); each optional but x and weight."""
    check_patch_embed_args(x, weight, bias, pos_embed, prefix)
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):  # the eager chain's conv runs in the autocast dtype
        dtype = torch.get_autocast_dtype(device_type)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    check_same_dtype(x=x, weight=weight, bias=bias)  # the eager conv would fail on a mismatch too
    return torch.ops.fastuvit.patch_embed(x, weight, bias, pos_embed, prefix)
