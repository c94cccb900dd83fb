"""fastuvit.ops.attention: flash attention on (B, L, H, hd) views, with per-call backend dispatch.

Forward and dq / dk / dv under the numerical policy (tests/numerics.py) against the fp32 eager
reference. On CPU the Triton kernels run in the interpreter (fp32, fp16) and the ``launches``
fixture checks they really ran; the covering set below takes every L of the policy at hd 72 and
64, and every head dim at L = 17 and 258, with contiguous, packed-qkv, transposed and unaligned
strides, batch 1 and B·H > 1. On CUDA the full cross product runs (fp16 and bf16), every backend
too. Also: log-sum-exp, backend selection and its errors, the eager fallback, autocast,
torch.compile (one frame), determinism, the autotune prune filter and bad inputs.
"""
import importlib

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch._dynamo.testing import CompileCounterWithBackend

import fastuvit
from fastuvit.ops import attention, attention_backends, attention_reference, eager_fallback, use_triton
from fastuvit.ops.attention import BACKENDS, auto_order, select_backend
from launch_spy import spy_on_launchers
from numerics import assert_policy, forward_and_grads

import fastuvit.kernels.attention as kernels  # noqa: E402  (a broken kernel module must fail, not skip)
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
LENGTHS = (1, 2, 17, 64, 257, 258, 334)
HEAD_DIMS = (16, 64, 72, 80, 128)
CPU_DTYPES = (torch.float32, torch.float16)  # bf16 dots are wrong in the interpreter


@pytest.fixture
def launches(monkeypatch):
    """Counts the Triton launcher calls (so no test passes through a fallback by accident)."""
    return spy_on_launchers(monkeypatch, kernels, ("attention_fwd", "attention_bwd"))


def views(qkv, layout):
    """q, k, v (B, L, H, hd) from a packed (B, L, 3, H, hd) tensor, in one of four layouts."""
    if layout == "packed":  # what the model passes: qkv.view(B, L, 3, H, hd)[:, :, i]
        return qkv.unbind(2)
    if layout == "contiguous":
        return [t.contiguous() for t in qkv.unbind(2)]
    if layout == "transposed":  # (B, H, L, hd) memory
        return [t.transpose(1, 2).contiguous().transpose(1, 2) for t in qkv.unbind(2)]
    if layout == "unaligned":  # strides not multiples of 8: the kernels' STRIDE_ALIGN = 1 path
        return F.pad(qkv, (0, 1))[..., :-1].unbind(2)
    raise ValueError(layout)


def assert_matches_policy(B, L, H, hd, dtype, layout="packed", backend="auto", device=DEVICE, scale=None):
    """The policy for the output and dq, dk, dv (each its own bound) from one packed qkv leaf."""
    qkv = torch.randn(B, L, 3, H, hd, generator=torch.Generator().manual_seed(L * 1000 + hd)).to(device, dtype)
    label = f"(B={B} L={L} H={H} hd={hd} {layout} {backend})"
    out, (grad,), grad_out = forward_and_grads(lambda q, k, v: attention(q, k, v, scale, backend), [qkv],
                                               views=lambda t: views(t, layout))
    reference = lambda q, k, v: attention_reference(q, k, v, scale)  # noqa: E731
    ref_T, (grad_T,), _ = forward_and_grads(reference, [qkv], grad_out, views=lambda t: views(t, "packed"))
    ref32, (grad32,), _ = forward_and_grads(reference, [qkv.float()], grad_out, views=lambda t: views(t, "packed"))
    assert out.is_contiguous()
    assert_policy(out, ref_T, ref32, dtype, f"output {label}")
    for name, g, g_T, g32 in zip(("dq", "dk", "dv"), grad.unbind(2), grad_T.unbind(2), grad32.unbind(2)):
        assert_policy(g, g_T, g32, dtype, f"{name} {label}")


# ----------------------------------------------------------------------------------------------
# Triton kernels (interpreter on CPU): the covering set


@pytest.mark.parametrize("L", LENGTHS)
def test_every_length_hd72_packed(L, launches):
    assert_matches_policy(1, L, 2, 72, torch.float32, "packed")
    assert launches == {"attention_fwd": 1, "attention_bwd": 1}


@pytest.mark.parametrize("L", LENGTHS)
def test_every_length_hd64_fp16(L, launches):
    assert_matches_policy(1, L, 1, 64, torch.float16, "contiguous")
    assert launches == {"attention_fwd": 1, "attention_bwd": 1}


@pytest.mark.parametrize("hd", HEAD_DIMS)
@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_every_head_dim_short(hd, dtype, launches):
    assert_matches_policy(2, 17, 3, hd, dtype, "packed")  # B·H = 6, tail tiles only
    assert launches == {"attention_fwd": 1, "attention_bwd": 1}


@pytest.mark.parametrize("hd, dtype, layout", [(16, torch.float32, "transposed"), (80, torch.float16, "packed"),
                                               (128, torch.float32, "contiguous")])
def test_head_dims_at_258(hd, dtype, layout, launches):
    assert_matches_policy(1, 258, 1, hd, dtype, layout)  # full tiles + a 2-row tail tile
    assert launches == {"attention_fwd": 1, "attention_bwd": 1}


@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_unaligned_strides_and_scale(dtype, launches):
    assert_matches_policy(2, 70, 2, 72, dtype, "unaligned", scale=0.3)
    assert launches == {"attention_fwd": 1, "attention_bwd": 1}


def test_non_unit_last_stride_is_copied(launches):
    qkv = torch.randn(1, 33, 3, 2, 48, device=DEVICE)
    q, k, v = (t.transpose(-1, -2).contiguous().transpose(-1, -2) for t in qkv.unbind(2))  # hd stride L·H
    assert q.stride(-1) != 1
    torch.testing.assert_close(attention(q, k, v), attention_reference(q, k, v), atol=1e-5, rtol=1e-5)
    assert launches["attention_fwd"] == 1


@settings(max_examples=6, deadline=None, derandomize=True)
@given(B=st.integers(1, 2), L=st.integers(1, 80), H=st.integers(1, 2), hd8=st.integers(2, 16),
       layout=st.sampled_from(["packed", "transposed"]))
def test_random_shapes(B, L, H, hd8, layout):
    assert_matches_policy(B, L, H, 8 * hd8, torch.float32, layout)


@pytest.mark.parametrize("own, loop", [(32, 64), (64, 32)])
def test_tile_roles_differ(own, loop, monkeypatch, launches):
    """The interpreter's config has BLOCK_OWN == BLOCK_LOOP; run them apart, so a kernel that mixes
    the two up fails."""
    from fastuvit.kernels._common import INTERPRET

    if not INTERPRET:
        pytest.skip("the interpreter's fixed config only exists under TRITON_INTERPRET=1")
    config = kernels.triton.Config({"BLOCK_OWN": own, "BLOCK_LOOP": loop}, num_warps=4)
    for kernel in (kernels._attention_fwd_kernel, kernels._attention_bwd_kernel):
        monkeypatch.setattr(kernel, "config", config)
    assert_matches_policy(1, 150, 2, 72, torch.float32)
    assert launches == {"attention_fwd": 1, "attention_bwd": 1}


def test_log_sum_exp():
    qkv = torch.randn(2, 45, 3, 3, 40, device=DEVICE)
    q, k, v = qkv.unbind(2)
    out, lse = torch.ops.fastuvit.attention_fwd(q, k, v, 0.2)
    scores = torch.einsum("blhd,bmhd->bhlm", q, k) * 0.2
    assert lse.shape == (2, 3, 45) and lse.dtype == torch.float32
    # base-2 log-sum-exp of the log2e-scaled scores = natural log-sum-exp / ln 2
    torch.testing.assert_close(lse, torch.logsumexp(scores, -1) / torch.log(torch.tensor(2.0)), atol=1e-5, rtol=1e-5)


def test_empty(launches):
    for shape in ((1, 0, 2, 16), (0, 5, 2, 16)):
        q = torch.randn(shape, device=DEVICE, requires_grad=True)
        out = attention(q, q, q, backend="triton")
        out.sum().backward()
        assert out.shape == shape and q.grad.shape == shape


def test_deterministic():
    qkv = torch.randn(1, 90, 3, 2, 72, device=DEVICE, requires_grad=True)
    grad = torch.randn(1, 90, 2, 72, device=DEVICE)
    runs = [torch.autograd.grad(attention(*qkv.unbind(2), backend="triton"), qkv, grad)[0] for _ in range(2)]
    assert torch.equal(runs[0], runs[1])


# ----------------------------------------------------------------------------------------------
# Backends and dispatch


def test_backend_registry():
    assert set(attention_backends()) == {"triton", "xformers", "sdpa", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn",
                                         "math"}
    for order in (auto_order(torch.empty(1, device="cpu")), auto_order(torch.empty(1, device="meta"))):
        assert set(order) <= set(BACKENDS) and order[-1] == "math"


@pytest.mark.parametrize("backend", ["sdpa", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn", "math", "xformers"])
@pytest.mark.parametrize("dtype", CPU_DTYPES)
def test_cpu_backends_against_reference(backend, dtype):
    """Every backend on CPU tensors: the policy where it runs, a stated refusal where it cannot."""
    q = torch.randn(2, 17, 3, 72, dtype=dtype)
    reason = BACKENDS[backend].why_not(q, q, q)
    if backend in ("sdpa_efficient", "sdpa_cudnn", "xformers"):  # CUDA-only kernels
        assert reason is not None
        with pytest.raises(ValueError, match=f"backend '{backend}' cannot take"):
            attention(q, q, q, backend=backend)
        return
    assert reason is None
    assert_matches_policy(2, 17, 3, 72, dtype, "packed", backend=backend, device="cpu")


def test_refusal_reasons_on_cpu():
    q = torch.randn(1, 4, 2, 64)
    assert "CUDA" in BACKENDS["sdpa_efficient"].why_not(q, q, q)
    assert "CUDA" in BACKENDS["sdpa_cudnn"].why_not(q, q, q)
    xformers_reason = BACKENDS["xformers"].why_not(q, q, q)
    assert "xformers" in xformers_reason  # not installed here, or CUDA-only
    assert BACKENDS["sdpa_flash"].why_not(q, q, q) is None  # PyTorch's CPU flash kernel


def test_auto_dispatch_on_cpu():
    q = torch.randn(1, 5, 2, 72)
    assert select_backend(q, q, q).name == ("triton" if use_triton(q) else "sdpa")
    q21 = torch.randn(1, 5, 3, 21)  # hd not a multiple of 8: the kernels refuse, SDPA takes it
    assert "head dim" in BACKENDS["triton"].why_not(q21, q21, q21)
    assert select_backend(q21, q21, q21).name == "sdpa"
    qb = q.bfloat16()
    if use_triton(q):
        assert "interpreter" in BACKENDS["triton"].why_not(qb, qb, qb)
    assert select_backend(qb, qb, qb).name == "sdpa"


def test_explicit_backend_that_cannot_run():
    q = torch.randn(1, 5, 3, 21, device=DEVICE)
    with pytest.raises(ValueError, match=r"backend 'triton' cannot take .*head dim must be a multiple of 8"):
        attention(q, q, q, backend="triton")


def test_no_backend_lists_every_reason(monkeypatch):
    q = torch.randn(1, 5, 2, 64)
    module = importlib.import_module("fastuvit.ops.attention")  # the name fastuvit.ops.attention is the function
    monkeypatch.setitem(module.AUTO_ORDER, "cpu", ("triton", "sdpa_cudnn"))
    with eager_fallback(), pytest.raises(ValueError) as err:
        attention(q, q, q)
    assert "no attention backend takes" in str(err.value)
    assert "triton: kernels are off" in str(err.value) and "sdpa_cudnn: cuDNN attention is CUDA-only" in str(err.value)


def test_eager_fallback(launches):
    qkv = torch.randn(1, 20, 3, 2, 72, device=DEVICE, requires_grad=True)
    q, k, v = qkv.unbind(2)
    with eager_fallback():
        assert select_backend(q, k, v).name != "triton"
        out = attention(q, k, v)
        out.sum().backward()
    assert not launches
    torch.testing.assert_close(out, attention_reference(q, k, v), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast(dtype, launches):
    """Under autocast the op casts like SDPA does: output in the autocast dtype."""
    qkv = torch.randn(1, 19, 3, 2, 64, device=DEVICE, requires_grad=True)
    q, k, v = qkv.unbind(2)
    with torch.autocast(DEVICE, dtype=dtype):
        out = attention(q, k, v)
        expected = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v))).transpose(1, 2)
    assert out.dtype == expected.dtype == dtype
    out.float().sum().backward()
    assert qkv.grad.dtype == torch.float32
    torch.testing.assert_close(out.float(), expected.float(), atol=2e-2, rtol=2e-2)
    q_cast = q.to(dtype)
    assert launches["attention_fwd"] == (1 if select_backend(q_cast, q_cast, q_cast).name == "triton" else 0)


def test_autocast_mixed_dtypes_are_cast():
    q = torch.randn(1, 8, 2, 32, device=DEVICE)
    with torch.autocast(DEVICE, dtype=torch.float16):
        assert attention(q, q.half(), q).dtype == torch.float16


@pytest.mark.parametrize("mode", ["kernels", "fallback", "autocast"])
def test_compile_one_frame_forward_and_backward(mode, launches):
    qkv = torch.randn(2, 30, 3, 2, 72, device=DEVICE, requires_grad=True)

    def f(qkv):
        out = attention(*qkv.unbind(2))
        return out.reshape(2, 30, -1).float().square().sum()

    counter = CompileCounterWithBackend("aot_eager")
    context = {"kernels": torch.enable_grad(), "fallback": eager_fallback(),
               "autocast": torch.autocast(DEVICE, dtype=torch.float16)}[mode]
    with context:
        torch._dynamo.reset()
        loss = torch.compile(f, backend=counter, fullgraph=True)(qkv)
        (grad,) = torch.autograd.grad(loss, qkv)
        expected = f(qkv)
        (expected_grad,) = torch.autograd.grad(expected, qkv)
    assert counter.frame_count == 1
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(grad, expected_grad)
    if mode != "fallback" and use_triton(qkv):
        assert launches["attention_fwd"] == 2 and launches["attention_bwd"] == 2


def test_model_attention_uses_the_kernel(launches):
    model = fastuvit.UViT(img_size=8, patch_size=2, in_chans=3, embed_dim=144, depth=1, num_heads=2).to(DEVICE)
    x = torch.randn(1, 3, 8, 8, device=DEVICE)
    model(x, torch.rand(1, device=DEVICE) * 999).sum().backward()
    assert launches["attention_fwd"] == 1 and launches["attention_bwd"] == 1  # depth 1: one mid-block


def test_prune_filter():
    fwd, bwd = kernels._pruner(1), kernels._pruner(2)
    q72 = torch.empty(1, 1, 1, 72, dtype=torch.bfloat16)
    kept = fwd(kernels.FWD_CONFIGS, {"L_BUCKET": 288, "Q": q72}, HEAD_DIM=72, D_MAIN=64, D_TAIL=16)
    assert kept and all(c.num_warps == 8 for c in kept if c.kwargs["BLOCK_OWN"] == 128)
    assert any(c.kwargs["BLOCK_LOOP"] == 128 for c in kept)
    q128 = torch.empty(1, 1, 1, 128, dtype=torch.float32)  # fp32 128×128 k and v tiles: 128 KB a stage
    kept = fwd(kernels.FWD_CONFIGS, {"L_BUCKET": 288, "Q": q128}, HEAD_DIM=128, D_MAIN=128, D_TAIL=0)
    assert kept and not any(c.kwargs["BLOCK_LOOP"] == 128 for c in kept)
    short = bwd(kernels.BWD_CONFIGS, {"L_BUCKET": 32, "Q": q72}, HEAD_DIM=72, D_MAIN=64, D_TAIL=16)
    assert short and all(c.kwargs["BLOCK_OWN"] == 64 and c.kwargs["BLOCK_LOOP"] == 32 for c in short)
    assert kernels.length_bucket(257) == kernels.length_bucket(258) == 288 and kernels.length_bucket(3000) == 4096


def test_head_dim_split():
    assert [kernels.head_dim_split(hd) for hd in (16, 24, 64, 72, 80, 96, 104, 128)] == [
        (16, 0), (16, 16), (64, 0), (64, 16), (64, 16), (64, 32), (64, 64), (128, 0)]


# ----------------------------------------------------------------------------------------------
# Bad inputs

GOOD = torch.randn(1, 4, 2, 16)


@pytest.mark.parametrize("args, kwargs, exc, match", [
    (([1.0], GOOD, GOOD), {}, TypeError, "q must be a torch.Tensor"),
    ((GOOD, GOOD[0], GOOD), {}, ValueError, "k must have 4 dimensions"),
    ((GOOD, GOOD, GOOD.int()), {}, TypeError, "v must have dtype"),
    ((GOOD, GOOD[:, :3], GOOD), {}, ValueError, "q, k and v must have one shape"),
    ((GOOD, GOOD.half(), GOOD), {}, TypeError, "q float32, k float16, v float32"),
    ((GOOD, GOOD.to("meta"), GOOD), {}, ValueError, "one device"),
    ((GOOD, GOOD, GOOD), {"scale": "0.1"}, TypeError, "scale must be a float"),
    ((GOOD, GOOD, GOOD), {"backend": "flash"}, ValueError, "backend must be 'auto' or one of"),
])
def test_bad_inputs(args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        attention(*args, **kwargs)


def test_launcher_checks():
    q = torch.randn(1, 4, 2, 16)
    with pytest.raises(ValueError, match="lse must be"):
        kernels.attention_bwd(q, q, q, q, q, torch.zeros(1, 2, 5), 1.0)
    with pytest.raises(ValueError, match="head dim"):
        kernels.attention_fwd(*(torch.randn(1, 4, 2, 12),) * 3, 1.0)


# ----------------------------------------------------------------------------------------------
# CUDA: the full cross product, bf16, every backend


@pytest.mark.cuda
@pytest.mark.parametrize("L", LENGTHS)
@pytest.mark.parametrize("hd", HEAD_DIMS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("layout", ["packed", "contiguous"])
def test_cuda_cross_product(L, hd, dtype, layout, launches):
    assert_matches_policy(2, L, 3, hd, dtype, layout, backend="triton", device="cuda")
    assert launches == {"attention_fwd": 1, "attention_bwd": 1}


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["sdpa", "sdpa_flash", "sdpa_efficient", "sdpa_cudnn", "xformers", "math"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("L, hd", [(258, 72), (257, 64), (334, 64), (17, 80)])
def test_cuda_backends(backend, dtype, L, hd):
    q = torch.randn(2, L, 3, hd, device="cuda", dtype=dtype)
    reason = BACKENDS[backend].why_not(q, q, q)
    if reason is not None:
        pytest.skip(f"{backend} refuses on this machine: {reason}")
    assert_matches_policy(2, L, 3, hd, dtype, "packed", backend=backend, device="cuda")


@pytest.mark.cuda
def test_cuda_auto_picks_triton():
    q = torch.randn(2, 258, 16, 72, device="cuda", dtype=torch.bfloat16)
    assert select_backend(q, q, q).name == "triton"


@pytest.mark.cuda
def test_cuda_many_heads_and_deterministic():
    qkv = torch.randn(35000, 2, 3, 2, 16, device="cuda", dtype=torch.float16, requires_grad=True)  # B·H > 65535
    grad = torch.randn(35000, 2, 2, 16, device="cuda", dtype=torch.float16)
    runs = [torch.autograd.grad(attention(*qkv.unbind(2), backend="triton"), qkv, grad)[0] for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    assert_matches_policy(35000, 2, 2, 16, torch.float16, device="cuda")


@pytest.mark.cuda
def test_cuda_compile_inductor(launches):
    qkv = torch.randn(4, 258, 3, 16, 72, device="cuda", dtype=torch.bfloat16, requires_grad=True)

    def f(qkv):
        return attention(*qkv.unbind(2)).float().square().sum()

    loss = torch.compile(f, fullgraph=True)(qkv)
    (grad,) = torch.autograd.grad(loss, qkv)
    expected = f(qkv)
    (expected_grad,) = torch.autograd.grad(expected, qkv)
    torch.testing.assert_close(loss, expected, rtol=1e-3, atol=1e-2)
    torch.testing.assert_close(grad, expected_grad, rtol=2e-2, atol=2e-2)
    assert launches["attention_fwd"] >= 1
