"""``patch_embed``: Conv2d(stride = kernel = p) patchify + linear, token assembly with the prefix
tokens, and ``pos_embed``, as one op (DESIGN.md §2):

    cat([prefix, conv2d(x, weight, bias, stride=p).flatten(2).transpose(1, 2)], 1) + pos_embed

``patch_embed_reference`` is that eager chain: the ground truth the fused kernel is tested against
and the fallback where the kernel does not run.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_same_device, check_tensor


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


def patch_embed(x, weight, bias=None, pos_embed=None, prefix=None):
    """(B, C, H, W) image -> (B, E + N, D) tokens; weight in the Conv2d layout (D, C, p, p)."""
    check_patch_embed_args(x, weight, bias, pos_embed, prefix)
    return patch_embed_reference(x, weight, bias, pos_embed, prefix)
