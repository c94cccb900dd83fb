"""``attention(q, k, v, scale=None, backend="auto")``: non-causal multi-head attention on
(B, L, H, hd) tensors with any strides (the model passes views into its packed qkv projection),
returning (B, L, H, hd) (DESIGN.md §2, §3).

Backends declare what they support: ``why_not(q, k, v)`` returns None or the reason it refuses the
input. ``"auto"`` takes the first backend of ``AUTO_ORDER`` that accepts; when none does, the error
lists every backend's reason.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ._checks import check_same_device, check_same_dtype, check_tensor


def attention_reference(q, k, v, scale=None):
    """Eager math in fp32: softmax(q kᵀ · scale) v, returned in q's dtype. (B, L, H, hd) layout."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qf, kf, vf = (t.float().transpose(1, 2) for t in (q, k, v))  # B H L hd
    attn = (qf @ kf.transpose(-2, -1)) * scale
    return (attn.softmax(dim=-1) @ vf).transpose(1, 2).to(q.dtype)


class _SDPABackend:
    name = "sdpa"

    def why_not(self, q, k, v):
        return None  # PyTorch picks a kernel for any device, dtype and head dim

    def run(self, q, k, v, scale):
        out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=scale)
        return out.transpose(1, 2)


class _MathBackend:
    name = "math"

    def why_not(self, q, k, v):
        return None

    def run(self, q, k, v, scale):
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))  # B H L hd
        attn = (qt @ kt.transpose(-2, -1)) * scale
        return (attn.softmax(dim=-1) @ vt).transpose(1, 2)


BACKENDS = {b.name: b for b in (_SDPABackend(), _MathBackend())}
AUTO_ORDER = ("sdpa", "math")


def attention_backends() -> tuple[str, ...]:
    """Names of the registered backends (whether or not they can run here)."""
    return tuple(BACKENDS)


def check_attention_args(q, k, v, scale, backend) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, ndim=4)
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k and v must have one shape (B, L, H, hd), got {tuple(q.shape)}, "
                         f"{tuple(k.shape)} and {tuple(v.shape)}")
    check_same_dtype(q=q, k=k, v=v)
    check_same_device(q=q, k=k, v=v)
    if scale is not None and not isinstance(scale, (int, float)):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {sorted(BACKENDS)}, got {backend!r}")


def select_backend(q, k, v, backend="auto"):
    """The backend that will run (q, k, v); ValueError with every reason when none can."""
    candidates = AUTO_ORDER if backend == "auto" else (backend,)
    reasons = []
    for name in candidates:
        reason = BACKENDS[name].why_not(q, k, v)
        if reason is None:
            return BACKENDS[name]
        reasons.append(f"{name}: {reason}")
    raise ValueError(f"no attention backend supports q {tuple(q.shape)} {q.dtype} on {q.device}: "
                     + "; ".join(reasons))


def attention(q, k, v, scale=None, backend="auto"):
    """softmax(q kᵀ · scale) v over (B, L, H, hd) inputs; scale defaults to hd^-0.5."""
    check_attention_args(q, k, v, scale, backend)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return select_backend(q, k, v, backend).run(q, k, v, scale)
