"""``attention(q, k, v, scale=None, backend="auto")``: non-causal multi-head attention on
(B, L, H, hd) tensors with any strides (the model passes views into its packed qkv projection),
returning a contiguous (B, L, H, hd) tensor (DESIGN.md §2, §3), ``proj``'s input after a free
reshape.

Backends declare what they support: ``why_not(q, k, v)`` returns None or the reason it refuses the
input; ``run(q, k, v, scale)`` computes it.

- ``"triton"``: the flash-attention kernels of ``fastuvit.kernels.attention`` (native head dims
  16–128 in multiples of 8, 72 included; any L) through the custom ops ``fastuvit::attention_fwd``
  / ``fastuvit::attention_bwd`` (fake implementations and registered autograd, so
  ``torch.compile(fullgraph=True)`` traces forward and backward). Runs on CUDA tensors, and on
  CPU tensors under ``TRITON_INTERPRET=1`` (how the tests check it without a GPU).
- ``"xformers"``: ``xformers.ops.memory_efficient_attention`` (takes (B, L, H, hd) as is), when
  xformers is installed.
- ``"sdpa"``: ``F.scaled_dot_product_attention``, PyTorch picking its kernel; ``"sdpa_flash"``,
  ``"sdpa_efficient"``, ``"sdpa_cudnn"`` pin one (``torch.nn.attention.sdpa_kernel``).
- ``"math"``: softmax(q kᵀ·scale) v as eager matmuls in the input dtype.

``"auto"`` tries ``auto_order(q)`` in turn (see ``AUTO_ORDER`` for where the order comes from);
when none takes the input, one ValueError lists every backend's reason.

Autocast: under ``torch.autocast`` the functional casts q, k, v to the autocast dtype first, as
``F.scaled_dot_product_attention`` does, so every backend returns that dtype.
"""
from __future__ import annotations

import functools
import importlib.util

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import check_same_device, check_same_dtype, check_tensor
from ._dispatch import interpreting, kernels_enabled, triton_available, use_triton


def attention_reference(q, k, v, scale=None):
    """Eager math in fp32: softmax(q kᵀ · scale) v, returned in q's dtype. (B, L, H, hd) layout."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    qf, kf, vf = (t.float().transpose(1, 2) for t in (q, k, v))  # B H L hd
    attn = (qf @ kf.transpose(-2, -1)) * scale
    return (attn.softmax(dim=-1) @ vf).transpose(1, 2).to(q.dtype)


def _kernels():
    from fastuvit.kernels import attention as kernels  # lazy: import fastuvit works without triton

    return kernels


# ----------------------------------------------------------------------------------------------
# Custom ops (the "triton" backend)


@torch.library.custom_op("fastuvit::attention_fwd", mutates_args=())
def _attention_fwd_op(q: Tensor, k: Tensor, v: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """(out (B, L, H, hd) contiguous, lse (B, H, L) fp32) from the Triton forward kernel."""
    return _kernels().attention_fwd(q, k, v, scale)


@_attention_fwd_op.register_fake
def _(q, k, v, scale):
    B, L, H, _ = q.shape
    return q.new_empty(q.shape), q.new_empty((B, H, L), dtype=torch.float32)


@torch.library.custom_op("fastuvit::attention_bwd", mutates_args=())
def _attention_bwd_op(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor,
                      scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """(dq, dk, dv), each contiguous (B, L, H, hd), recomputed from the forward's lse."""
    return _kernels().attention_bwd(grad_out, q, k, v, out, lse, scale)


@_attention_bwd_op.register_fake
def _(grad_out, q, k, v, out, lse, scale):
    return q.new_empty(q.shape), q.new_empty(q.shape), q.new_empty(q.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.scale = scale
    ctx.mark_non_differentiable(lse)


def _backward(ctx, grad_out, _grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = torch.ops.fastuvit.attention_bwd(grad_out, q, k, v, out, lse, ctx.scale)
    return dq, dk, dv, None


_attention_fwd_op.register_autograd(_backward, setup_context=_setup_context)


# ----------------------------------------------------------------------------------------------
# Backends


class _TritonBackend:
    name = "triton"

    def why_not(self, q, k, v):
        if not use_triton(q):
            if not kernels_enabled():
                return "kernels are off (fastuvit.ops.eager_fallback() or FASTUVIT_DISABLE_KERNELS=1)"
            if not triton_available():
                return "Triton is not importable"
            if q.device.type == "cpu":
                return "CPU tensors run the Triton kernels only under TRITON_INTERPRET=1"
            if q.device.type == "cuda" and interpreting():
                return "under TRITON_INTERPRET=1 the kernels run on CPU tensors only"
            return f"needs CUDA tensors, got {q.device.type}"
        return _kernels().unsupported_reason(q)

    def run(self, q, k, v, scale):
        return torch.ops.fastuvit.attention_fwd(q, k, v, scale)[0]


@functools.lru_cache(maxsize=None)
def _xformers_available() -> bool:
    if importlib.util.find_spec("xformers") is None:
        return False
    try:
        import xformers.ops  # noqa: F401
    except Exception:  # a broken install (e.g. built for another torch) counts as absent
        return False
    return True


class _XformersBackend:
    name = "xformers"

    def why_not(self, q, k, v):
        if not _xformers_available():
            return "xformers is not installed (pip install xformers) or does not import"
        if q.device.type != "cuda":
            return f"xformers' memory_efficient_attention needs CUDA tensors, got {q.device.type}"
        try:  # ask xformers' own dispatcher which kernel would take it (private API: best effort)
            from xformers.ops import fmha

            inp = fmha.Inputs(query=q, key=k, value=v)
            fmha.dispatch._dispatch_fw(inp, torch.is_grad_enabled() and q.requires_grad)
        except NotImplementedError as e:
            return "no xformers kernel takes it: " + " ".join(str(e).split())[:400]
        except Exception:  # the private API moved: let the call itself decide
            pass
        return None

    def run(self, q, k, v, scale):
        import xformers.ops

        return xformers.ops.memory_efficient_attention(q, k, v, scale=scale)  # B L H hd in, B L H hd out


def _cuda_capability(t: Tensor) -> tuple[int, int]:
    return torch.cuda.get_device_capability(t.device)


def _flash_refuses(q):
    """PyTorch's flash kernels: FlashAttention-2 on sm80–sm121 (fp16/bf16, hd ≤ 256, which it pads
    to a multiple of 32 or 64: 72 runs as 96); on the CPU its own flash kernel (any float dtype)."""
    if q.device.type == "cpu":
        return None if q.shape[1] > 0 else "needs L >= 1"
    if q.device.type != "cuda":
        return f"needs CUDA or CPU tensors, got {q.device.type}"
    if q.dtype not in (torch.float16, torch.bfloat16):
        return f"takes float16 / bfloat16 on CUDA, got {q.dtype}"
    if not (8, 0) <= _cuda_capability(q) <= (12, 1):
        return f"needs compute capability 8.0-12.1, got {_cuda_capability(q)}"
    if q.shape[-1] > 256:
        return f"head dim must be <= 256, got {q.shape[-1]}"
    return None


def _efficient_refuses(q):
    """PyTorch's memory-efficient kernel (xformers' CUTLASS kernels): CUDA only, sm50+, head dim a
    multiple of 8 for fp16 / bf16 (4 for fp32) on sm80+."""
    if q.device.type != "cuda":
        return f"PyTorch's memory-efficient kernel is CUDA-only, got {q.device.type} tensors"
    if _cuda_capability(q) < (5, 0):
        return f"needs compute capability >= 5.0, got {_cuda_capability(q)}"
    align = 8 if q.dtype in (torch.float16, torch.bfloat16) and _cuda_capability(q) >= (8, 0) else 4
    if q.shape[-1] % align:
        return f"head dim must be a multiple of {align} for {q.dtype}, got {q.shape[-1]}"
    return None


def _cudnn_refuses(q):
    """PyTorch's cuDNN attention: CUDA only, fp16 / bf16, sm80+, head dim a multiple of 8 and
    <= 128 (256 on sm90 / sm100 with cuDNN > 9.2.2: PyTorch's own check below decides), no key
    length 1, batch and heads <= 65535."""
    if q.device.type != "cuda":
        return f"cuDNN attention is CUDA-only, got {q.device.type} tensors"
    if q.dtype not in (torch.float16, torch.bfloat16):
        return f"takes float16 / bfloat16, got {q.dtype}"
    if _cuda_capability(q) < (8, 0):
        return f"needs compute capability >= 8.0, got {_cuda_capability(q)}"
    B, L, H, hd = q.shape
    if hd % 8:
        return f"head dim must be a multiple of 8, got {hd}"
    if L == 1:
        return "does not take key length 1"
    if B > 65535 or H > 65535:
        return f"batch and heads must be <= 65535, got {B} and {H}"
    return None


_SDPA_KERNELS = {
    # name: (SDPBackend member name, our readable constraints, torch.backends.cuda check)
    "sdpa_flash": ("FLASH_ATTENTION", _flash_refuses, "can_use_flash_attention"),
    "sdpa_efficient": ("EFFICIENT_ATTENTION", _efficient_refuses, "can_use_efficient_attention"),
    "sdpa_cudnn": ("CUDNN_ATTENTION", _cudnn_refuses, "can_use_cudnn_attention"),
}


def _pytorch_refuses(check_name, q, k, v):
    """PyTorch's own verdict on CUDA (it knows the cuDNN version, alignment, ...), when it offers
    one. Its reasons go to stderr with debug=True, so we point there."""
    check = getattr(torch.backends.cuda, check_name, None)
    if check is None or q.device.type != "cuda":
        return None
    try:
        params = torch.backends.cuda.SDPAParams(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                None, 0.0, False, False)
    except TypeError:  # another SDPAParams signature: skip the cross-check
        return None
    if check(params, False):
        return None
    return f"PyTorch refuses it (torch.backends.cuda.{check_name}(params, debug=True) prints why)"


class _SDPABackend:
    """``F.scaled_dot_product_attention``; ``kernel`` None lets PyTorch pick, else pins one."""

    def __init__(self, name: str):
        self.name = name
        self.kernel = _SDPA_KERNELS.get(name)

    def why_not(self, q, k, v):
        if self.kernel is None:
            return None  # PyTorch picks a kernel for any device, dtype and head dim (math at worst)
        _, refuses, check_name = self.kernel
        return refuses(q) or _pytorch_refuses(check_name, q, k, v)

    def run(self, q, k, v, scale):
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # B H L hd views
        if self.kernel is None:
            out = F.scaled_dot_product_attention(q, k, v, scale=scale)
        else:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            with sdpa_kernel(getattr(SDPBackend, self.kernel[0])):
                out = F.scaled_dot_product_attention(q, k, v, scale=scale)
        return out.transpose(1, 2)  # CUDA's fused kernels return B L H hd memory: contiguous again


class _MathBackend:
    name = "math"

    def why_not(self, q, k, v):
        return None

    def run(self, q, k, v, scale):
        qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))  # B H L hd
        attn = (qt @ kt.transpose(-2, -1)) * scale
        return (attn.softmax(dim=-1) @ vt).transpose(1, 2)


BACKENDS = {b.name: b for b in (_TritonBackend(), _XformersBackend(), _SDPABackend("sdpa"),
                                *(_SDPABackend(name) for name in _SDPA_KERNELS), _MathBackend())}

# "auto" order per device type, fastest first. PROVISIONAL, from reasoning, pending H100
# measurement: update from benchmarks/bench_attention.py's results (benchmarks/results/<device>/).
# - cuda: "triton" first (DESIGN §3; it runs hd 72 natively where FlashAttention-2 pads to 96 and
#   computes P/dS tiles sized for U-ViT's short L), then xformers (FA3 / CUTLASS), then "sdpa"
#   (PyTorch's own pick: cuDNN / flash / efficient), "math" last. If the measurement shows a
#   pinned SDPA kernel ahead of "triton" for some (dtype, head dim), key the order on those too.
# - cpu: "triton" only takes CPU tensors under TRITON_INTERPRET=1 (the tests); otherwise PyTorch's
#   CPU SDPA (its flash kernel), then "math".
AUTO_ORDER = {
    "cuda": ("triton", "xformers", "sdpa", "math"),
    "cpu": ("triton", "sdpa", "math"),
}
_DEFAULT_AUTO_ORDER = ("sdpa", "math")  # other devices (mps, xpu, ...)


def attention_backends() -> tuple[str, ...]:
    """Names of the registered backends (whether or not they can run here)."""
    return tuple(BACKENDS)


def auto_order(q) -> tuple[str, ...]:
    """The backends ``"auto"`` tries for ``q``, in order."""
    return AUTO_ORDER.get(q.device.type, _DEFAULT_AUTO_ORDER)


def check_attention_args(q, k, v, scale, backend) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        check_tensor(name, t, ndim=4)
    if k.shape != q.shape or v.shape != q.shape:
        raise ValueError(f"q, k and v must have one shape (B, L, H, hd), got {tuple(q.shape)}, "
                         f"{tuple(k.shape)} and {tuple(v.shape)}")
    check_same_device(q=q, k=k, v=v)
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
        raise TypeError(f"scale must be a float or None, got {type(scale).__name__}")
    if backend != "auto" and backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto' or one of {sorted(BACKENDS)}, got {backend!r}")


def select_backend(q, k, v, backend="auto"):
    """The backend that will run (q, k, v); ValueError with every reason when none can."""
    what = f"q {tuple(q.shape)} {str(q.dtype).replace('torch.', '')} on {q.device}"
    if backend != "auto":
        reason = BACKENDS[backend].why_not(q, k, v)
        if reason is None:
            return BACKENDS[backend]
        raise ValueError(f"attention backend {backend!r} cannot take {what}: {reason}")
    reasons = []
    for name in auto_order(q):
        reason = BACKENDS[name].why_not(q, k, v)
        if reason is None:
            return BACKENDS[name]
        reasons.append(f"{name}: {reason}")
    raise ValueError(f"no attention backend takes {what}: " + "; ".join(reasons))


def _autocast(q, k, v):
    """Cast to the autocast dtype where autocast is on for q's device, as SDPA does."""
    device_type = q.device.type
    if not torch.is_autocast_enabled(device_type):
        return q, k, v
    dtype = torch.get_autocast_dtype(device_type)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def attention(q, k, v, scale=None, backend="auto"):
    """softmax(q kᵀ · scale) v over (B, L, H, hd) inputs (any strides); scale defaults to hd^-0.5.
    Returns a contiguous (B, L, H, hd) tensor. ``backend``: "auto" or one of
    ``attention_backends()``."""
    check_attention_args(q, k, v, scale, backend)
    q, k, v = _autocast(q, k, v)
    check_same_dtype(q=q, k=k, v=v)
    scale = q.shape[-1] ** -0.5 if scale is None else float(scale)
    return select_backend(q, k, v, backend).run(q, k, v, scale).contiguous()
