"""skip_linear benchmarks (issue 5): ``F.linear(cat([x, skip], -1), weight, bias)`` without the cat.

Implementations (one benchmark each, per shape and pass; ``group`` = shape + pass):
- ``fused``: ``fastuvit.ops.skip_linear`` (Triton GEMM with two K phases; backward: Triton for
  grad_x/grad_skip, cuBLAS into the column blocks for grad_weight);
- ``eager``: ``F.linear(torch.cat([x, skip], -1), weight, bias)`` (what the official model runs);
- ``addmm``: two cuBLAS calls, ``addmm(bias, x, W1ᵀ)`` then ``addmm_(skip, W2ᵀ)`` in place;
- ``compile``: ``torch.compile`` of the eager form (inductor; ``aot_eager`` on the CPU);
- ``cublas_gemm``: ``F.linear`` of an input concatenated beforehand: the same (M, 2D)×(2D, D) GEMM
  on cuBLAS with nothing else, so fused TFLOP/s ÷ cublas_gemm TFLOP/s is the fraction of cuBLAS.
Passes: ``fwd``; ``fwd+bwd`` (gradients of x, skip, weight, bias); ``bwd_input`` compares the Triton
grad_x/grad_skip kernel (``fused``) with two cuBLAS matmuls (``cublas_two_mm``), the one piece of
the backward where the choice is open.

Shapes on CUDA: the released configs at batch 128 in bf16, M = 128·L: cifar10 (L 257, D 512),
imagenet256 large / huge (L 258, D 1024 / 1152), mscoco (L 334, D 512). On the CPU: tiny smoke
shapes, kernels in Triton's interpreter. FLOPs: 2·M·2D·D per GEMM (fwd 1, fwd+bwd 3, bwd_input 1);
bytes: the minimal traffic of the pass (each tensor read or written once).
"""
import pytest
import torch
import torch.nn.functional as F

import fastuvit
from benchmarks.harness import DEVICE, ON_GPU, measure

if ON_GPU:
    DTYPE = torch.bfloat16
    SHAPES = [("cifar10_uvit_small", 128, 257, 512), ("imagenet256_uvit_large", 128, 258, 1024),
              ("imagenet256_uvit_huge", 128, 258, 1152), ("mscoco_uvit_small", 128, 334, 512)]
else:
    DTYPE = torch.float32  # the interpreter's bf16 dots are wrong
    SHAPES = [("smoke", 2, 9, 40)]

COMPILE_BACKEND = "inductor" if ON_GPU else "aot_eager"


def eager(x, skip, weight, bias):
    return F.linear(torch.cat([x, skip], dim=-1), weight, bias)


def two_addmm(x, skip, weight, bias):
    D = x.shape[-1]
    out = torch.addmm(bias, x.reshape(-1, D), weight[:, :D].t())
    out.addmm_(skip.reshape(-1, D), weight[:, D:].t())
    return out.view(*x.shape[:-1], -1)


IMPLS = {
    "fused": fastuvit.ops.skip_linear,
    "eager": eager,
    "addmm": two_addmm,
    # static shapes, compiled afresh per benchmark (no automatic-dynamic recompile across shapes)
    "compile": lambda: torch.compile(eager, backend=COMPILE_BACKEND, dynamic=False),
    "cublas_gemm": None,  # F.linear on a pre-concatenated input, built in the test
}
CASES = ([(p, i) for p in ("fwd", "fwd+bwd") for i in IMPLS]
         + [("bwd_input", "fused"), ("bwd_input", "cublas_two_mm")])


def _bytes(pass_, M, D, elem):
    act, out, w = M * D * elem, M * D * elem, 2 * D * D * elem
    fwd = 2 * act + w + out
    if pass_ == "fwd":
        return fwd
    if pass_ == "bwd_input":
        return out + w + 2 * act
    return fwd + 2 * out + w + 2 * act + 2 * act + w  # bwd: g twice, W, x, skip; writes gx, gs, gW


@pytest.mark.parametrize("pass_,impl", CASES)
@pytest.mark.parametrize("name,batch,L,D", SHAPES)
def test_skip_linear(benchmark, name, batch, L, D, pass_, impl):
    torch.manual_seed(0)
    M = batch * L
    make = dict(device=DEVICE, dtype=DTYPE)
    training = pass_ == "fwd+bwd"
    x = torch.randn(batch, L, D, **make).requires_grad_(training)
    skip = torch.randn(batch, L, D, **make).requires_grad_(training)
    weight = (torch.randn(D, 2 * D, **make) * (2 * D) ** -0.5).requires_grad_(training)
    bias = torch.zeros(D, **make).requires_grad_(training)
    grad = torch.randn(batch, L, D, **make)

    if pass_ == "bwd_input":
        if impl == "fused":
            def fn():
                return torch.ops.fastuvit.skip_linear_bwd_input(grad, weight, True)
        else:
            def fn():
                return grad @ weight[:, :D], grad @ weight[:, D:]
    else:
        if impl == "cublas_gemm":
            cat = torch.cat([x.detach(), skip.detach()], dim=-1).requires_grad_(training)
            op, inputs = F.linear, (cat, weight, bias)
        else:
            op, inputs = IMPLS[impl], (x, skip, weight, bias)
            if impl == "compile":
                torch._dynamo.reset()
                op = op()
        if training:
            def fn():
                return torch.autograd.grad(op(*inputs), inputs, grad)
        else:
            def fn():
                with torch.no_grad():
                    return op(*inputs)

    gemms = {"fwd": 1, "fwd+bwd": 3, "bwd_input": 1}[pass_]
    measure(benchmark, fn, group=f"skip_linear {name} M={M} D={D} {pass_}", impl=impl,
            flops=gemms * 2.0 * M * (2 * D) * D, bytes_moved=_bytes(pass_, M, D, x.element_size()),
            shape=dict(config=name, batch=batch, L=L, D=D, M=M, dtype=str(DTYPE).replace("torch.", "")))
