"""Functional fused ops (DESIGN.md §2). Each takes every tensor input differentiably and runs the
Triton kernels where ``_dispatch.use_triton`` says so, an eager fallback otherwise."""
from ._dispatch import eager_fallback, use_triton
from .attention import attention, attention_backends, attention_reference
from .patch_embed import patch_embed, patch_embed_reference
from .skip_linear import skip_linear, skip_linear_reference

__all__ = [
    "eager_fallback", "use_triton",
    "attention", "attention_backends", "attention_reference",
    "patch_embed", "patch_embed_reference",
    "skip_linear", "skip_linear_reference",
]
