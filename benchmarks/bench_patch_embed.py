"""Patch-embedding benchmarks (issue 4): the fused op vs the eager chain it replaces vs
``torch.compile`` of that chain, forward and forward+backward.

Implementations: ``fused`` (``fastuvit.ops.patch_embed``: the Triton kernels on CUDA), ``eager``
(``patch_embed_reference``: conv2d, flatten/transpose, cat, add) and ``compile`` (``torch.compile``
of ``patch_embed_reference``; inductor on CUDA, ``aot_eager`` on the CPU smoke run).

Shapes: the released configs' input paths at batch 128, from ``fastuvit.configs`` (C, H = W, p, D,
E = the prefix tokens: 1 time token, + 1 label token for the class-conditional models, + 77 text
tokens for MS-COCO). Modes: ``bf16`` (every tensor bf16, the §6 protocol) and, at
imagenet256_uvit_huge, ``autocast`` (the model's call: fp32 parameters and prefix under bf16
autocast, so the conv runs in bf16 and the output is fp32, as in eager).

extra_info: TFLOP/s from 2·B·N·D·K per forward (×3 with the backward) and GB/s from the minimum
bytes (``min_bytes``) with its fraction of peak HBM bandwidth. Without a GPU: one tiny fp32 shape,
kernels through Triton's interpreter, as a smoke test.
"""
import pytest
import torch

from benchmarks.harness import DEVICE, ON_GPU, measure
from fastuvit.configs import model_config
from fastuvit.ops import patch_embed, patch_embed_reference

IMPLS = ("fused", "eager", "compile")
PASSES = ("fwd", "fwd+bwd")


def input_path_shape(name: str) -> dict:
    """C, H, p, D, E of a released config's patch embedding."""
    variant, kw = model_config(name)
    extras = 1 + (kw.get("num_clip_token", 0) if variant == "uvit_t2i" else int(kw.get("num_classes", -1) > 0))
    return dict(C=kw.get("in_chans", 3), H=kw["img_size"], p=kw["patch_size"], D=kw["embed_dim"], E=extras)


if ON_GPU:
    BATCH = 128
    CASES = [(name, "bf16") for name in ("imagenet256_uvit_huge", "cifar10_uvit_small", "imagenet512_uvit_huge",
                                          "imagenet512_uvit_large", "mscoco_uvit_small")]
    CASES.append(("imagenet256_uvit_huge", "autocast"))
    SHAPES = {name: input_path_shape(name) for name, _ in CASES}
else:
    BATCH = 2
    CASES = [("smoke", "fp32")]
    SHAPES = {"smoke": dict(C=4, H=8, p=2, D=32, E=2)}

def implementation(impl: str):
    if impl == "fused":
        return patch_embed
    if impl == "eager":
        return patch_embed_reference
    torch._dynamo.reset()  # a fresh compile per shape: no recompile limit, no dynamic-shape fallback
    return torch.compile(patch_embed_reference, backend="inductor" if ON_GPU else "aot_eager", dynamic=False)


def make_inputs(shape: dict, mode: str, requires_grad: bool):
    C, H, p, D, E = (shape[k] for k in ("C", "H", "p", "D", "E"))
    dtype = torch.bfloat16 if mode == "bf16" else torch.float32  # autocast: fp32 tensors
    L = E + (H // p) ** 2
    tensors = [torch.randn(BATCH, C, H, H), torch.randn(D, C, p, p) * (C * p * p) ** -0.5, torch.randn(D),
               torch.randn(1, L, D) * 0.02, torch.randn(BATCH, E, D)]
    return [t.to(DEVICE, dtype).requires_grad_(requires_grad) for t in tensors]


def min_bytes(inputs, out, backward: bool) -> int:
    """Forward: read every input once, write the output once. Backward adds: read grad_out, x and
    weight once; write each input's gradient once."""
    nbytes = lambda t: t.numel() * t.element_size()
    total = sum(map(nbytes, inputs)) + nbytes(out)
    if backward:
        total += nbytes(out) + nbytes(inputs[0]) + nbytes(inputs[1]) + sum(map(nbytes, inputs))
    return total


@pytest.mark.parametrize("pass_", PASSES)
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name,mode", CASES)
def test_patch_embed(benchmark, name, mode, impl, pass_):
    shape = SHAPES[name]
    backward = pass_ == "fwd+bwd"
    inputs = make_inputs(shape, mode, backward)
    fn = implementation(impl)
    autocast = lambda: torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=mode == "autocast")
    with autocast():
        out = fn(*inputs)
    grad_out = torch.randn_like(out)

    def run():
        with autocast():
            out = fn(*inputs)
        if backward:
            torch.autograd.grad(out, inputs, grad_out)

    N = (shape["H"] // shape["p"]) ** 2
    flops = 2 * BATCH * N * shape["D"] * shape["C"] * shape["p"] ** 2 * (3 if backward else 1)
    nbytes = min_bytes(inputs, out, backward)
    measure(benchmark, run, group=f"patch_embed {name} B={BATCH} {mode} {pass_}", impl=impl, flops=flops,
            bytes_moved=nbytes, shape=dict(config=name, batch=BATCH, mode=mode, pass_=pass_, **shape))
    benchmark.extra_info.update(min_bytes=nbytes, out_dtype=str(out.dtype).replace("torch.", ""))
