"""fastuvit.ops.patch_embed against the eager chain (DESIGN.md §5): forward and every gradient,
through Triton's interpreter on the CPU (fp32, fp16) and on CUDA when present (bf16 too); autocast,
mixed dtypes, strided inputs, torch.compile, the eager fallback, determinism and bad inputs."""
import contextlib
import threading

import pytest
import torch

import fastuvit.ops as ops
from fastuvit.ops import patch_embed, patch_embed_reference
from launch_spy import spy_on_launchers
from numerics import assert_policy, policy_bound

LAUNCHERS = ("patch_embed_fwd", "patch_embed_bwd_dx", "patch_embed_bwd_params")


@pytest.fixture
def launches(monkeypatch):
    """Counts the Triton launcher calls, so a test cannot pass through the eager fallback."""
    import fastuvit.kernels.patch_embed as kernels

    return spy_on_launchers(monkeypatch, kernels, LAUNCHERS)


@pytest.fixture
def no_tf32():
    """fp32 references on CUDA must not run in TF32 (the kernels use IEEE fp32 dots)."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def make_inputs(B, C, H, W, p, D, E, dtype=torch.float32, device="cpu", *, pos="3d", bias=True,
                layout="contiguous", aux_dtype=None, empty_prefix=False):
    """x, weight, bias, pos_embed, prefix at unit-ish scale; ``aux_dtype`` for prefix and pos_embed;
    ``empty_prefix``: a (B, 0, D) prefix tensor when E = 0 (else None)."""
    aux_dtype = aux_dtype or dtype
    L = E + (H // p) * (W // p)
    randn = lambda *shape, dt=dtype: torch.randn(*shape, device=device, dtype=dt)
    x = randn(B, C, H, W)
    weight = randn(D, C, p, p) * (C * p * p) ** -0.5
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif layout == "strided":  # a view into a wider image batch, and a permuted weight
        x = randn(B, C + 1, H, 2 * W)[:, 1:, :, ::2]
        weight = randn(C, p, p, D).permute(3, 0, 1, 2) * (C * p * p) ** -0.5
    b = randn(D) if bias else None
    pos_embed = {"3d": lambda: randn(1, L, D, dt=aux_dtype), "2d": lambda: randn(L, D, dt=aux_dtype),
                 None: lambda: None}[pos]()
    prefix = randn(B, E, D, dt=aux_dtype) if E or empty_prefix else None
    return x, weight, b, pos_embed, prefix


def forward_and_grads(fn, inputs, grad_out=None):
    inputs = [t.detach().requires_grad_() if t is not None else None for t in inputs]
    out = fn(*inputs)
    live = [t for t in inputs if t is not None]
    if grad_out is None:
        grad_out = torch.randn_like(out)
    grads = torch.autograd.grad(out, live, grad_out.to(out.dtype))
    return out, grads, grad_out


def upcast(inputs):
    return [t.float() if t is not None else None for t in inputs]


def test_strided_inputs_stay_strided():
    x, w, *_ = make_inputs(2, 3, 8, 8, 2, 8, 0, torch.float16, layout="strided")
    assert not x.is_contiguous() and not w.is_contiguous()
    x, *_ = make_inputs(2, 3, 8, 8, 2, 8, 0, torch.float16, layout="channels_last")
    assert x.stride(1) == 1 and not x.is_contiguous()


def check_against_policy(inputs, dtype, policy_dtype=None, ctx=contextlib.nullcontext):
    """The fused op vs the eager chain in dtype (ref_T) and in fp32 (ref32), output and grads."""
    policy_dtype = policy_dtype or dtype
    with ctx():
        out, grads, g = forward_and_grads(patch_embed, inputs)
        ref_t, grads_t, _ = forward_and_grads(patch_embed_reference, inputs, g)
    ref32, grads32, _ = forward_and_grads(patch_embed_reference, upcast(inputs), g)
    assert out.dtype == ref_t.dtype
    names = [n for n, t in zip(("x", "weight", "bias", "pos_embed", "prefix"), inputs) if t is not None]
    for name, o, rt, r32 in zip(["output"] + names, [out, *grads], [ref_t, *grads_t], [ref32, *grads32]):
        assert o.dtype == rt.dtype and o.shape == rt.shape, name
        err = (o.double() - r32.double()).abs().max().item() if o.numel() else 0.0
        bound = policy_bound(rt, r32, policy_dtype)
        assert err <= bound, f"{name}: max|out - ref32| = {err:.3e} > bound {bound:.3e} ({dtype})"
    return out, grads


# (B, C, H, W, p, D, E, options): masked tails in every tile dimension, K from 3 to 768, D not a
# power of two, batch 1, E = 0 with and without a prefix tensor, strided and channels_last images.
CPU_CASES = [
    pytest.param(2, 3, 8, 8, 2, 40, 1, {}, id="cifar-like-p2-K12"),
    pytest.param(1, 4, 8, 12, 4, 72, 2, {"pos": "2d", "layout": "channels_last"}, id="B1-p4-K64-cl-pos2d"),
    pytest.param(3, 3, 6, 4, 1, 20, 0, {"bias": False}, id="p1-K3-nobias"),
    pytest.param(2, 3, 32, 16, 16, 24, 3, {"layout": "strided"}, id="p16-K768-strided"),
    pytest.param(2, 1, 16, 8, 8, 33, 5, {"pos": None}, id="p8-C1-nopos"),
    pytest.param(1, 4, 4, 4, 2, 200, 0, {"pos": "2d", "empty_prefix": True}, id="D200-emptyprefix"),
    pytest.param(2, 4, 8, 8, 2, 72, 77, {}, id="mscoco-like-E77-L93"),
    pytest.param(1, 3, 32, 32, 2, 64, 1, {}, id="cifar10-L257"),
]


@pytest.mark.interpreter
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("B,C,H,W,p,D,E,opts", CPU_CASES)
def test_matches_eager_chain_cpu(B, C, H, W, p, D, E, opts, dtype, launches):
    inputs = make_inputs(B, C, H, W, p, D, E, dtype, **opts)
    assert ops.use_triton(inputs[0])
    check_against_policy(inputs, dtype)
    assert sorted(set(launches)) == sorted(LAUNCHERS)


@pytest.mark.interpreter
def test_huge_width_single_image(launches):
    """imagenet256_uvit_huge's D = 1152 and E = 2, on a 4×4 latent."""
    check_against_policy(make_inputs(1, 4, 4, 4, 2, 1152, 2), torch.float32)
    assert "patch_embed_fwd" in launches


@pytest.mark.interpreter
def test_mixed_dtypes_follow_eager_promotion(launches):
    """fp16 conv, fp32 prefix and pos_embed: the eager chain promotes to fp32, so does the op."""
    inputs = make_inputs(2, 4, 8, 8, 2, 48, 2, torch.float16, aux_dtype=torch.float32)
    out, grads = check_against_policy(inputs, torch.float16)
    assert out.dtype == torch.float32
    assert [g.dtype for g in grads] == [torch.float16] * 3 + [torch.float32] * 2
    assert launches


@pytest.mark.interpreter
def test_autocast_like_the_model(launches):
    """The model's call under autocast: fp32 everything, conv in the autocast dtype, fp32 output
    (as in eager), values and grads within the policy of the autocast dtype."""
    inputs = make_inputs(2, 4, 8, 8, 2, 48, 2, torch.float32)
    autocast = lambda: torch.autocast("cpu", dtype=torch.float16)
    out, grads = check_against_policy(inputs, torch.float32, policy_dtype=torch.float16, ctx=autocast)
    assert out.dtype == torch.float32 and all(g.dtype == torch.float32 for g in grads)
    assert sorted(set(launches)) == sorted(LAUNCHERS)


def test_stride_zero_grad_and_partial_requires_grad(launches):
    """out.sum() hands back an expanded (stride 0) gradient; only some inputs need grads."""
    x, w, b, pos, pre = make_inputs(3, 3, 8, 8, 2, 24, 1)
    w.requires_grad_()
    pos.requires_grad_()
    patch_embed(x, w, b, pos, pre).sum().backward()
    wr, pr = w.detach().requires_grad_(), pos.detach().requires_grad_()
    patch_embed_reference(x, wr, b, pr, pre).sum().backward()
    torch.testing.assert_close(w.grad, wr.grad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(pos.grad, pr.grad, rtol=1e-5, atol=1e-5)
    assert "patch_embed_bwd_dx" not in launches  # x needs no grad


@pytest.mark.interpreter
def test_weight_grad_deterministic_and_split_invariant():
    """Same inputs -> bitwise-equal gradients; the batch split count only regroups fp32 sums."""
    from fastuvit.kernels.patch_embed import patch_embed_bwd_params

    x, w, *_ = make_inputs(5, 3, 8, 8, 2, 40, 0)
    grad = torch.randn(5, 2 + 16, 40)
    runs = [patch_embed_bwd_params(grad, x, w, num_splits=s) for s in (1, 3, 3, 5)]
    assert torch.equal(runs[1][0], runs[2][0]) and torch.equal(runs[1][1], runs[2][1])
    ref_dw = torch.einsum("bnd,bnk->dk", grad[:, 2:].double(),
                          x.double().unfold(2, 2, 2).unfold(3, 2, 2).permute(0, 2, 3, 1, 4, 5).reshape(5, 16, 12))
    for dw, colsum in runs:
        torch.testing.assert_close(dw.double().reshape(40, 12), ref_dw, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(colsum, grad.sum(0), rtol=1e-5, atol=1e-5)


def test_eager_fallback_path(launches):
    inputs = make_inputs(2, 3, 8, 8, 2, 40, 1)
    with ops.eager_fallback():
        assert not ops.use_triton(inputs[0])
        out, grads, g = forward_and_grads(patch_embed, inputs)
    ref, ref_grads, _ = forward_and_grads(patch_embed_reference, inputs, g)
    assert not launches
    torch.testing.assert_close(out, ref)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want)


def test_eager_fallback_reaches_a_backward_in_another_thread(launches):
    """The forward's decision carries to the backward, which CUDA's autograd runs in another thread
    (where the thread-local switch is off)."""
    inputs = [t.requires_grad_() for t in make_inputs(2, 3, 8, 8, 2, 40, 1)]
    with ops.eager_fallback():
        out = patch_embed(*inputs)
    worker = threading.Thread(target=lambda: out.sum().backward())
    worker.start()
    worker.join()
    assert not launches and all(t.grad is not None for t in inputs)


@pytest.mark.interpreter
@pytest.mark.parametrize("fallback", [False, True], ids=["kernels", "fallback"])
def test_compile_fullgraph_one_frame(fallback, launches):
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    inputs = make_inputs(2, 3, 8, 8, 2, 40, 1)

    def f(x, w, b, pos, pre):
        return patch_embed(x * 2, w, b, pos, pre).square().sum()

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(f, backend=counter, fullgraph=True)
    with ops.eager_fallback() if fallback else contextlib.nullcontext():
        eager_in = [t.clone().requires_grad_() for t in inputs]
        comp_in = [t.clone().requires_grad_() for t in inputs]
        f(*eager_in).backward()
        compiled(*comp_in).backward()
    assert counter.frame_count == 1
    for a, b in zip(eager_in, comp_in):
        torch.testing.assert_close(a.grad, b.grad)
    assert bool(launches) != fallback


def test_fake_tensor_shapes_and_dtypes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x, w, b, pos, pre = make_inputs(2, 4, 8, 8, 2, 48, 2, torch.float16, aux_dtype=torch.float32)
        out = torch.ops.fastuvit.patch_embed(x, w, b, pos, pre)
        assert out.shape == (2, 18, 48) and out.dtype == torch.float32
        dx = torch.ops.fastuvit.patch_embed_bwd_dx(out, x, w, True)
        dw, colsum = torch.ops.fastuvit.patch_embed_bwd_params(out, x, w, True, True)
        assert dx.shape == x.shape and dw.shape == w.shape and colsum.shape == (18, 48)


@pytest.mark.parametrize("fallback", [False, True], ids=["kernels", "fallback"])
def test_opcheck(fallback):
    """Schema, fake-tensor (shapes, dtypes and strides of real vs fake outputs) and autograd checks
    of the three custom ops, with strided inputs, on the kernel and the fallback path."""
    x, w, b, pos, pre = make_inputs(2, 3, 4, 8, 2, 16, 1, layout="strided")
    grad = torch.randn(2, 9, 16)
    kernels = not fallback
    with ops.eager_fallback() if fallback else contextlib.nullcontext():
        torch.library.opcheck(torch.ops.fastuvit.patch_embed.default, (x, w, b, pos, pre))
        torch.library.opcheck(torch.ops.fastuvit.patch_embed_bwd_dx.default, (grad, x, w, kernels))
        torch.library.opcheck(torch.ops.fastuvit.patch_embed_bwd_params.default, (grad, x, w, True, kernels))
        torch.library.opcheck(torch.ops.fastuvit.patch_embed_bwd_params.default, (grad, x, w, False, kernels))


@pytest.mark.parametrize("change, error, words", [
    (lambda a: a.update(weight=torch.randn(8, 3, 2, 4)), ValueError, ["weight", "square"]),
    (lambda a: a.update(x=torch.randn(2, 3, 9, 8)), ValueError, ["divisible", "9"]),
    (lambda a: a.update(x=torch.randn(2, 4, 8, 8)), ValueError, ["channels"]),
    (lambda a: a.update(pos_embed=torch.randn(1, 16, 8)), ValueError, ["pos_embed", "17"]),
    (lambda a: a.update(pos_embed=torch.randn(2, 17, 8)), ValueError, ["pos_embed"]),
    (lambda a: a.update(prefix=torch.randn(3, 1, 8)), ValueError, ["prefix"]),
    (lambda a: a.update(bias=torch.randn(7)), ValueError, ["bias"]),
    (lambda a: a.update(weight=a["weight"].half()), TypeError, ["x float32", "weight float16"]),
    (lambda a: a.update(bias=a["bias"].double()), TypeError, ["bias"]),
    (lambda a: a.update(x=a["x"].long()), TypeError, ["x"]),
    (lambda a: a.update(weight=a["weight"].to("meta")), ValueError, ["device", "weight on meta"]),
    (lambda a: a.update(prefix=[[0.0]]), TypeError, ["prefix"]),
])
def test_bad_inputs(change, error, words):
    args = dict(zip(("x", "weight", "bias", "pos_embed", "prefix"), make_inputs(2, 3, 8, 8, 2, 8, 1)))
    change(args)
    with pytest.raises(error) as info:
        patch_embed(**args)
    for word in words:
        assert word in str(info.value), (word, str(info.value))


# ---------------------------------------------------------------------------------------- CUDA

CUDA_CASES = [
    pytest.param(4, 4, 32, 32, 2, 1152, 2, {}, id="imagenet256-huge"),
    pytest.param(3, 3, 32, 32, 2, 512, 1, {"layout": "channels_last"}, id="cifar10-cl"),
    pytest.param(2, 4, 64, 64, 4, 1024, 2, {"pos": "2d"}, id="imagenet512-large"),
    pytest.param(2, 4, 32, 32, 2, 512, 77, {}, id="mscoco-E77"),
    pytest.param(1, 3, 64, 32, 16, 200, 3, {"layout": "strided"}, id="p16-K768-strided"),
    pytest.param(3, 3, 10, 6, 1, 72, 0, {"bias": False}, id="p1-K3"),
]


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("B,C,H,W,p,D,E,opts", CUDA_CASES)
def test_matches_eager_chain_cuda(B, C, H, W, p, D, E, opts, dtype, launches, no_tf32):
    inputs = make_inputs(B, C, H, W, p, D, E, dtype, device="cuda", **opts)
    assert ops.use_triton(inputs[0])
    check_against_policy(inputs, dtype)
    assert sorted(set(launches)) == sorted(LAUNCHERS)


@pytest.mark.cuda
def test_autocast_bf16_cuda(launches, no_tf32):
    inputs = make_inputs(4, 4, 32, 32, 2, 1152, 2, torch.float32, device="cuda")
    autocast = lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    out, _ = check_against_policy(inputs, torch.float32, policy_dtype=torch.bfloat16, ctx=autocast)
    assert out.dtype == torch.float32 and launches


@pytest.mark.cuda
def test_bf16_output_policy_uses_assert_policy(launches, no_tf32):
    """The plain §5 assertion on the bf16 forward at the training shape's width."""
    inputs = make_inputs(8, 4, 32, 32, 2, 1152, 2, torch.bfloat16, device="cuda")
    out = patch_embed(*inputs)
    assert_policy(out, patch_embed_reference(*inputs), patch_embed_reference(*upcast(inputs)), torch.bfloat16)
    assert launches


@pytest.mark.cuda
def test_compile_inductor_cuda(launches):
    """Inductor around the custom ops (fullgraph), forward and backward, against the eager op."""
    torch._dynamo.reset()
    inputs = make_inputs(4, 4, 32, 32, 2, 1152, 2, torch.bfloat16, device="cuda", aux_dtype=torch.float32)
    f = lambda *a: patch_embed(*a).float().square().mean()
    eager_in = [t.clone().requires_grad_() for t in inputs]
    comp_in = [t.clone().requires_grad_() for t in inputs]
    f(*eager_in).backward()
    torch.compile(f, fullgraph=True)(*comp_in).backward()
    for a, b in zip(eager_in, comp_in):
        torch.testing.assert_close(a.grad, b.grad)
    assert launches
