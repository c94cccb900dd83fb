"""fastuvit.ops.skip_linear: F.linear(cat([x, skip], -1), weight, bias) without the concat.

Forward and every gradient under the numerical policy (tests/numerics.py) against the eager
reference; on CPU the Triton kernels run in the interpreter (fp32, fp16) and the ``launches``
fixture checks they really ran; on CUDA bf16 too. Also: strided inputs, the eager fallback,
autocast, torch.compile (one frame), determinism, the autotune prune filter and bad inputs.
"""
import json
import math
import os
import subprocess
import sys
import threading

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import fastuvit
from fastuvit.kernels._common import with_autotune_setting
from fastuvit.ops import skip_linear, skip_linear_reference, use_triton
from launch_spy import spy_on_launchers
from numerics import assert_policy

import fastuvit.kernels.skip_linear as kernels  # noqa: E402  (a broken kernel module must fail, not skip)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
NAMES = ("x", "skip", "weight", "bias")


@pytest.fixture(autouse=True, scope="module")
def _no_autotuning():
    """On a GPU each new (shape, dtype) would benchmark every config of both kernels: take the first
    config that survives the prune filter instead (``test_cuda_every_config`` covers all of them)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FASTUVIT_AUTOTUNE", "0")
        yield


@pytest.fixture
def launches(monkeypatch):
    """Counts the Triton launcher calls (so no test passes through the fallback by accident)."""
    return spy_on_launchers(monkeypatch, kernels, ("skip_linear_fwd", "skip_linear_bwd_input"))


def make_leaves(lead, D, N, bias=True, device=DEVICE):
    x = torch.randn(*lead, D, device=device)
    skip = torch.randn(*lead, D, device=device)
    weight = torch.randn(N, 2 * D, device=device) / math.sqrt(2 * D)
    b = torch.randn(N, device=device) * 0.1 if bias else None
    return [x, skip, weight, b]


def as_is(x, skip, weight, bias):
    return x, skip, weight, bias


def forward_backward(op, leaves, views, grad):
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in leaves]
    out = op(*views(*leaves))
    present = [t for t in leaves if t is not None]
    grads = torch.autograd.grad(out, present, grad.to(out.dtype))
    return out.detach(), grads


def assert_op_matches_policy(leaves, dtype, views=as_is, grad_view=lambda g: g):
    """leaves: fp32 base tensors (None for no bias); views maps them to (x, skip, weight, bias)."""
    leaves_T = [None if t is None else t.to(dtype) for t in leaves]
    leaves_32 = [None if t is None else t.float() for t in leaves_T]
    with torch.no_grad():
        out_shape = skip_linear_reference(*views(*leaves_32)).shape
    grad = grad_view(torch.randn(out_shape, device=leaves[0].device))
    out, grads = forward_backward(skip_linear, leaves_T, views, grad)
    ref_T, grads_T = forward_backward(skip_linear_reference, leaves_T, views, grad)
    ref32, grads_32 = forward_backward(skip_linear_reference, leaves_32, views, grad)
    assert_policy(out, ref_T, ref32, dtype, "output")
    names = [n for n, t in zip(NAMES, leaves) if t is not None]
    for name, g, g_T, g32 in zip(names, grads, grads_T, grads_32):
        assert_policy(g, g_T, g32, dtype, f"grad_{name}")


# (leading dims, D, N): M = 1; the smallest D; awkward D (40, 72, 200) and N != D; M = 257 (masked
# row tails, several and partial GROUP_M groups); three leading dims and D = 64, 96 (multiples of
# BLOCK_K: the unmasked K loop), N = 130 (a column tail).
SHAPES = [((1,), 16, 16), ((2, 17), 40, 24), ((257,), 72, 72), ((1, 9), 200, 40), ((3, 2, 5), 64, 48),
          ((2, 33), 96, 130)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("lead,D,N", SHAPES)
def test_kernel_matches_reference(lead, D, N, dtype, launches):
    leaves = make_leaves(lead, D, N, bias=(D != 16))
    assert use_triton(*leaves[:3])
    assert_op_matches_policy(leaves, dtype)
    assert launches == {"skip_linear_fwd": 1, "skip_linear_bwd_input": 1}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_strided_inputs(dtype, launches):
    B, L, D, N = 2, 9, 40, 24

    def views(xb, sb, wb, bb):
        return (xb[..., 3:3 + D],           # row-sliced, misaligned start: one merged leading dim
                sb.transpose(0, 1),         # (L, B, D) storage: two leading strides
                wb.t(),                     # weight stored transposed: (N, 2D) with strides (1, N)
                bb[::2])                    # strided bias

    leaves = [torch.randn(B, L, 2 * D + 8, device=DEVICE), torch.randn(L, B, D, device=DEVICE),
              torch.randn(2 * D, N, device=DEVICE) / math.sqrt(2 * D), torch.randn(2 * N, device=DEVICE) * 0.1]
    assert_op_matches_policy(leaves, dtype, views, grad_view=lambda g: torch.cat([g, g], -1)[..., ::2])
    assert launches == {"skip_linear_fwd": 1, "skip_linear_bwd_input": 1}


def test_row_layout_copies_only_when_it_must():
    base = torch.randn(4, 6, 40)
    for t, expect in [(base, (24, 0, 40)), (base[:, :, :16], (24, 0, 40)), (base.transpose(0, 1), (4, 40, 240)),
                      (base[:1, :1], (1, 0, 0))]:
        out, *layout = kernels._row_layout(t)
        assert out.data_ptr() == t.data_ptr() and tuple(layout) == expect
    # a strided last dim, or three leading dims that do not merge: one contiguous copy
    for t in (base[..., ::2], torch.randn(2, 3, 4, 8).permute(1, 0, 2, 3)):
        out, *layout = kernels._row_layout(t)
        assert out.is_contiguous() and torch.equal(out, t) and layout[2] == t.shape[-1]


def test_copied_operands_still_match(launches):
    x = torch.randn(3, 5, 2, 32, device=DEVICE)[..., ::2].permute(2, 0, 1, 3)  # strided last dim
    skip, weight = torch.randn(2, 3, 5, 16, device=DEVICE), torch.randn(8, 32, device=DEVICE)
    assert_op_matches_policy([x, skip, weight, None], torch.float32)


def test_partial_gradients(launches):
    x, skip, weight, bias = make_leaves((2, 7), 24, 16)
    x.requires_grad_()
    out = skip_linear(x, skip, weight, bias)  # only x needs a gradient: no weight GEMM
    (gx,) = torch.autograd.grad(out, x, torch.ones_like(out))
    torch.testing.assert_close(gx, torch.ones_like(out) @ weight[:, :24], rtol=1e-5, atol=1e-5)
    assert launches == {"skip_linear_fwd": 1, "skip_linear_bwd_input": 1}


def test_empty_rows(launches):
    x, skip, weight, bias = (t.requires_grad_() for t in make_leaves((0,), 24, 16))
    out = skip_linear(x, skip, weight, bias)
    assert out.shape == (0, 16)
    out.sum().backward()
    assert x.grad.shape == x.shape and weight.grad.abs().sum() == 0 and bias.grad.abs().sum() == 0


def test_deterministic():
    leaves = make_leaves((33,), 40, 40)
    grad = torch.ones(33, 40, device=DEVICE)
    a, ga = forward_backward(skip_linear, leaves, as_is, grad)
    b, gb = forward_backward(skip_linear, leaves, as_is, grad)
    assert torch.equal(a, b) and all(torch.equal(u, v) for u, v in zip(ga, gb))


def test_eager_fallback(launches):
    leaves = make_leaves((2, 17), 40, 24)
    with fastuvit.ops.eager_fallback():
        assert not use_triton(*leaves[:3])
        assert_op_matches_policy(leaves, torch.float32)
    assert not launches


def test_eager_fallback_reaches_a_backward_in_another_thread(launches):
    """On CUDA autograd runs the backward in its own device thread, where the thread-local switch
    is off: the forward's decision must carry over (found on an H100). Same situation on the CPU:
    the backward run from another thread."""
    leaves = [t.requires_grad_() for t in make_leaves((2, 17), 40, 24)]
    with fastuvit.ops.eager_fallback():
        out = skip_linear(*leaves)
    worker = threading.Thread(target=lambda: out.sum().backward())
    worker.start()
    worker.join()
    assert not launches and all(t.grad is not None for t in leaves)


def test_autocast_matches_f_linear(launches):
    # fp16 (the interpreter's bf16 dots are wrong; bf16 autocast is tested on CUDA below).
    leaves = [t.requires_grad_() for t in make_leaves((2, 9), 40, 24)]
    with torch.autocast(DEVICE, dtype=torch.float16):
        out = skip_linear(*leaves)
        ref = skip_linear_reference(*leaves)
    assert out.dtype == ref.dtype == torch.float16
    grads = torch.autograd.grad(out.float().sum(), leaves)
    ref_grads = torch.autograd.grad(ref.float().sum(), leaves)
    torch.testing.assert_close(out, ref, rtol=2e-3, atol=2e-3)
    for g, r in zip(grads, ref_grads):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, r, rtol=2e-3, atol=2e-3)
    assert launches["skip_linear_fwd"] == 1


@pytest.mark.parametrize("autocast", [False, True])
def test_compile_one_frame_forward_and_backward(autocast, launches):
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("aot_eager")

    def f(x, skip, weight, bias):
        with torch.autocast(DEVICE, dtype=torch.float16, enabled=autocast):
            out = skip_linear(x, skip, weight, bias)
        assert out.dtype == (torch.float16 if autocast else torch.float32)
        return out.float().square().sum()

    compiled = torch.compile(f, backend=counter, fullgraph=True)
    leaves = make_leaves((2, 17), 40, 24)
    one = torch.tensor(1.0, device=DEVICE)
    eager_loss, eager_grads = forward_backward(f, leaves, as_is, one)
    loss, grads = forward_backward(compiled, leaves, as_is, one)
    assert counter.frame_count == 1
    torch.testing.assert_close(loss, eager_loss)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e)
    assert launches == {"skip_linear_fwd": 2, "skip_linear_bwd_input": 2}


def test_model_out_blocks_use_the_kernel(launches):
    model = fastuvit.UViT(img_size=8, patch_size=2, in_chans=3, embed_dim=32, depth=4, num_heads=2).to(DEVICE)
    with torch.no_grad():
        model(torch.randn(1, 3, 8, 8, device=DEVICE), torch.tensor([10.0], device=DEVICE))
    assert launches["skip_linear_fwd"] == len(model.out_blocks) == 2


def test_prune_filter(monkeypatch):
    monkeypatch.setenv("FASTUVIT_AUTOTUNE", "1")
    w16, w32 = torch.empty(1, dtype=torch.float16), torch.empty(1, dtype=torch.float32)
    big = dict(M_BUCKET=65536, N=1152, K=1152, w_ptr=w16)
    kept = kernels.prune_gemm_configs(kernels.HOPPER_GEMM_CONFIGS, big, smem_limit=232448)
    assert len(kept) == len(kernels.HOPPER_GEMM_CONFIGS)  # all fit on Hopper in 16 bits
    fp32 = kernels.prune_gemm_configs(kernels.HOPPER_GEMM_CONFIGS, dict(big, w_ptr=w32), smem_limit=232448)
    assert 0 < len(fp32) < len(kept)  # fp32 doubles the tiles' footprint
    tiny = kernels.prune_gemm_configs(kernels.HOPPER_GEMM_CONFIGS, dict(M_BUCKET=1, N=24, K=16, w_ptr=w16),
                                      smem_limit=232448)
    for c in tiny:  # clamped to the problem, no duplicates
        assert (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]) == (16, 32, 16)
    assert len({(c.num_stages, c.num_warps) for c in tiny}) == len(tiny)
    assert kernels.prune_gemm_configs(kernels.HOPPER_GEMM_CONFIGS, big, smem_limit=1)  # never empty
    monkeypatch.setenv("FASTUVIT_AUTOTUNE", "0")  # applied by kernels/_common.autotune around the filter
    prune = with_autotune_setting(lambda configs, args: kernels.prune_gemm_configs(configs, args, smem_limit=232448))
    (first,) = prune(kernels.HOPPER_GEMM_CONFIGS, big)
    assert (first.kwargs, first.num_stages, first.num_warps) == (kept[0].kwargs, kept[0].num_stages, kept[0].num_warps)


# Runs in a subprocess without TRITON_INTERPRET (the interpreter replaces @triton.jit functions).
_HOPPER_AOT = """
import json, sys, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from fastuvit.kernels import skip_linear as kernels

name, unit_stride = sys.argv[1:]
fn = getattr(kernels, name)
while not isinstance(fn, triton.runtime.jit.JITFunction):
    fn = fn.fn
config = kernels.HOPPER_GEMM_CONFIGS[4]
# as the runtime specialises the realistic shapes: pointers and ints divisible by 16, unit stride 1
consts = dict(config.kwargs, EVEN_K=True, DOT_PRECISION="tf32", **{unit_stride: 1})
if "HAS_BIAS" in fn.arg_names:
    consts["HAS_BIAS"] = True
sig = {p.name: "constexpr" if p.is_constexpr or p.name in consts else "*bf16" if p.name.endswith("_ptr") else "i32"
       for p in fn.params}
attrs = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names) if sig[n] != "constexpr"}
target = GPUTarget("cuda", 90, 32)
options = triton.compiler.make_backend(target).parse_options(dict(num_warps=config.num_warps,
                                                                   num_stages=config.num_stages))
ptx = triton.compile(ASTSource(fn, sig, consts, attrs), target=target, options=options.__dict__).asm["ptx"]
print(json.dumps({k: ptx.count(k) for k in ("wgmma.mma_async", "cp.async.cg.shared.global", "ld.global.b16")}))
"""


@pytest.mark.parametrize("kernel,unit_stride", [("_skip_linear_fwd_kernel", "stride_wk"),
                                                ("_skip_linear_bwd_input_kernel", "stride_wn")])
def test_kernels_compile_for_hopper_with_wgmma_and_async_copies(kernel, unit_stride):
    # No GPU needed: Hopper codegen must accept the kernels, issue wgmma and pipeline the loads with
    # 16-byte cp.async (a lost alignment or contiguity hint shows up here as scalar loads).
    pytest.importorskip("triton.backends.nvidia")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    run = subprocess.run([sys.executable, "-c", _HOPPER_AOT, kernel, unit_stride], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    counts = json.loads(run.stdout.strip().splitlines()[-1])
    assert counts["wgmma.mma_async"] > 0 and counts["cp.async.cg.shared.global"] > 0, counts
    assert counts["ld.global.b16"] <= 1, counts  # the bias epilogue: one element per thread


@pytest.mark.parametrize("bad,exc,match", [
    (dict(skip=torch.randn(2, 5, 9)), ValueError, "x and skip"),
    (dict(weight=torch.randn(4, 8)), ValueError, "weight must be"),
    (dict(weight=torch.randn(4, 16, 1)), ValueError, "weight must have 2"),
    (dict(bias=torch.randn(5)), ValueError, "bias must have length 4"),
    (dict(weight=torch.randn(4, 16, dtype=torch.float16)), TypeError, "x float32, skip float32, weight float16"),
    (dict(skip=torch.randn(2, 5, 8, dtype=torch.float64)), TypeError, "skip must have dtype"),
    (dict(x=torch.randint(0, 3, (2, 5, 8))), TypeError, "x must have dtype"),
    (dict(bias=[0.0] * 4), TypeError, "bias must be a torch.Tensor"),
    (dict(weight=torch.randn(4, 16, device="meta")), ValueError, "weight on meta"),
])
def test_bad_inputs(bad, exc, match):
    args = dict(x=torch.randn(2, 5, 8), skip=torch.randn(2, 5, 8), weight=torch.randn(4, 16), bias=torch.randn(4))
    args.update(bad)
    with pytest.raises(exc, match=match):
        skip_linear(**args)


# ---------------------------------------------------------------------------------------- CUDA


# Each new (shape, dtype) autotunes both kernels (up to 11 configs each): a few shapes per dtype.
CUDA_CASES = ([(lead, D, N, dt) for lead, D, N in [((2, 17), 40, 24), ((1, 9), 200, 40), ((2, 258), 1152, 1152)]
               for dt in (torch.bfloat16, torch.float16, torch.float32)]
              + [((1,), 16, 16, torch.bfloat16), ((3, 334), 512, 512, torch.bfloat16),
                 ((1, 257), 2048, 2048, torch.bfloat16)])


@pytest.mark.cuda
@pytest.mark.parametrize("lead,D,N,dtype", CUDA_CASES)
def test_cuda_kernel_matches_reference(lead, D, N, dtype, launches):
    assert_op_matches_policy(make_leaves(lead, D, N), dtype)
    assert launches == {"skip_linear_fwd": 1, "skip_linear_bwd_input": 1}


@pytest.mark.cuda
@pytest.mark.parametrize("index", range(len(kernels.HOPPER_GEMM_CONFIGS)))
def test_cuda_every_config(index, monkeypatch, launches):
    # One config at a time (an autotuner with one config runs it as is), on a shape with row,
    # column and K tails in both kernels.
    for kernel in (kernels._skip_linear_fwd_kernel, kernels._skip_linear_bwd_input_kernel):
        monkeypatch.setattr(kernel, "configs", [kernels.HOPPER_GEMM_CONFIGS[index]])
        monkeypatch.setattr(kernel, "cache", {})
    assert_op_matches_policy(make_leaves((3, 100), 200, 136), torch.bfloat16)
    assert launches == {"skip_linear_fwd": 1, "skip_linear_bwd_input": 1}


@pytest.mark.cuda
def test_cuda_bf16_autocast(launches):
    leaves = [t.requires_grad_() for t in make_leaves((2, 258), 1152, 1152)]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = skip_linear(*leaves)
        ref = skip_linear_reference(*leaves)
    assert out.dtype == ref.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref, rtol=2e-2, atol=2e-2)
    grads = torch.autograd.grad(out.float().square().sum(), leaves)
    ref_grads = torch.autograd.grad(ref.float().square().sum(), leaves)
    for g, r in zip(grads, ref_grads):
        assert g.dtype == torch.float32
        assert (g - r).abs().max() <= 2e-2 * r.abs().max()
    assert launches == {"skip_linear_fwd": 1, "skip_linear_bwd_input": 1}


@pytest.mark.cuda
def test_cuda_compile_inductor(launches):
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("inductor")
    compiled = torch.compile(lambda *a: skip_linear(*a).float().square().sum(), backend=counter, fullgraph=True)
    leaves = [t.to(torch.bfloat16) for t in make_leaves((2, 258), 512, 512)]
    loss, grads = forward_backward(compiled, leaves, as_is, torch.tensor(1.0, device="cuda"))
    eager_loss, eager_grads = forward_backward(lambda *a: skip_linear(*a).float().square().sum(), leaves, as_is,
                                               torch.tensor(1.0, device="cuda"))
    assert counter.frame_count == 1
    torch.testing.assert_close(loss, eager_loss)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e)

