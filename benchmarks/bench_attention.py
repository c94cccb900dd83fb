"""Attention benchmarks (issue 6): ``fastuvit.ops.attention`` per backend at U-ViT's shapes.

Implementations (one benchmark each, per shape and pass; ``group`` = shape + pass), every one on
the model's inputs, (B, L, H, hd) views into one packed qkv tensor, through
``fastuvit.ops.attention(q, k, v, backend=...)``:
- ``triton``: the flash-attention kernels of ``fastuvit.kernels.attention`` (the candidate);
- ``sdpa_flash``, ``sdpa_efficient``, ``sdpa_cudnn``: PyTorch's SDPA pinned to one kernel;
  ``sdpa``: PyTorch's own pick;
- ``xformers``: ``memory_efficient_attention`` (when installed);
- ``math``: eager softmax(q kᵀ·scale) v in the input dtype;
- ``official_fp32``: what the official U-ViT runs outside autocast: q, k, v cast to fp32, SDPA, cast
  back.
A backend that refuses the input here (``why_not``) is skipped with its reason.
Passes: ``fwd`` (no autograd), ``bwd`` (the backward of a recorded forward), ``fwd+bwd``.

Shapes on CUDA, bf16: U-ViT's (B=128, H=16, L=258, hd 72: ImageNet huge; hd 64: ImageNet large;
B=128, H=8, L=257 and 334, hd 64: CIFAR-10 and MS-COCO) and, for context, L = 1024 and 4096 at
smaller batches. On the CPU: one smoke shape, the kernels in Triton's interpreter (fp32).
FLOPs (the usual convention): forward 4·B·H·L²·hd, backward 2.5× forward (5 matmuls; the Triton
backward runs 7, see the kernel header, so its TFLOP/s are "effective").

Targets (H100, bf16, L = 258, fwd+bwd): hd 72 ≥ 1.1× the best of the SDPA kernels and xformers,
hd 64 ≥ 0.95×. Pending GPU measurement.
"""
import pytest
import torch
import torch.nn.functional as F

from benchmarks.harness import DEVICE, ON_GPU, measure
from fastuvit.ops import attention
from fastuvit.ops.attention import BACKENDS

if ON_GPU:
    DTYPE = torch.bfloat16
    SHAPES = [("imagenet_huge", 128, 16, 258, 72), ("imagenet_large", 128, 16, 258, 64),
              ("cifar10", 128, 8, 257, 64), ("mscoco", 128, 8, 334, 64),
              ("context_L1024", 16, 16, 1024, 72), ("context_L1024", 16, 16, 1024, 64),
              ("context_L4096", 2, 16, 4096, 72), ("context_L4096", 2, 16, 4096, 64)]
else:
    DTYPE = torch.float32  # the interpreter's bf16 dots are wrong
    SHAPES = [("smoke", 1, 2, 17, 72)]

IMPLS = ("triton", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn", "sdpa", "xformers", "math", "official_fp32")
PASSES = {"fwd": 1.0, "bwd": 2.5, "fwd+bwd": 3.5}  # × forward FLOPs


def official_fp32(q, k, v):
    qf, kf, vf = (t.transpose(1, 2).float() for t in (q, k, v))  # B H L hd, fp32
    return F.scaled_dot_product_attention(qf, kf, vf).transpose(1, 2).to(q.dtype)


@pytest.mark.parametrize("pass_", list(PASSES))
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name,B,H,L,hd", SHAPES)
def test_attention(benchmark, name, B, H, L, hd, impl, pass_):
    torch.manual_seed(0)
    qkv = torch.randn(B, L, 3, H, hd, device=DEVICE, dtype=DTYPE).requires_grad_(pass_ != "fwd")
    q, k, v = qkv.unbind(2)  # the model's views: strides (L·3·H·hd, 3·H·hd, hd, 1)
    if impl == "official_fp32":
        op = official_fp32
    else:
        reason = BACKENDS[impl].why_not(q, k, v)
        if reason is not None:
            pytest.skip(f"{impl}: {reason}")

        def op(q, k, v, _impl=impl):
            return attention(q, k, v, backend=_impl)

    grad = torch.randn(B, L, H, hd, device=DEVICE, dtype=DTYPE)
    if pass_ == "fwd":
        def fn():
            with torch.no_grad():
                return op(q, k, v)
    elif pass_ == "bwd":
        out = op(q, k, v)

        def fn():
            return torch.autograd.grad(out, qkv, grad, retain_graph=True)
    else:
        def fn():
            return torch.autograd.grad(op(q, k, v), qkv, grad)

    fwd_flops = 4.0 * B * H * L * L * hd
    measure(benchmark, fn, group=f"attention {name} B={B} H={H} L={L} hd={hd} {pass_}", impl=impl,
            flops=PASSES[pass_] * fwd_flops,
            shape=dict(config=name, B=B, H=H, L=L, hd=hd, dtype=str(DTYPE).replace("torch.", "")))
