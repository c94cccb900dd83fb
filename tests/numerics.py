"""The numerical policy of DESIGN.md §5, as one assertion.

For a fused op in dtype T: ``ref32`` is the eager reference in fp32 from the same inputs, ``ref_T``
the eager reference in T, ``out`` the fused op in T. Require, for the output and every gradient,

    max|out - ref32| <= 2 * max|ref_T - ref32| + atol[T] * max(1, max|ref32|)

(the atol term is scaled by the magnitude of the values, so large-valued outputs are not held to
an absolute 1e-5).
"""
import torch

ATOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def policy_bound(ref_T: torch.Tensor, ref32: torch.Tensor, dtype: torch.dtype) -> float:
    ref32 = ref32.double()
    magnitude = max(1.0, ref32.abs().max().item()) if ref32.numel() else 1.0
    return 2 * (ref_T.double() - ref32).abs().max().item() + ATOL[dtype] * magnitude if ref32.numel() else 0.0


def assert_policy(out: torch.Tensor, ref_T: torch.Tensor, ref32: torch.Tensor, dtype: torch.dtype,
                  name: str = "output") -> None:
    assert out.shape == ref32.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref32.shape)}"
    assert out.dtype == dtype, f"{name}: dtype {out.dtype} != {dtype}"
    if out.numel() == 0:
        return
    assert torch.isfinite(out).all(), f"{name}: non-finite values"
    err = (out.double() - ref32.double()).abs().max().item()
    bound = policy_bound(ref_T, ref32, dtype)
    assert err <= bound, f"{name}: max|out - ref32| = {err:.3e} > bound {bound:.3e} ({dtype})"


def _is_float(t) -> bool:
    return isinstance(t, torch.Tensor) and t.is_floating_point()


def forward_and_grads(fn, leaves, grad_out=None, views=None):
    """Run ``fn(*views(leaves))`` on fresh leaf copies; return (output, grads of the float leaves,
    grad_out). ``views`` builds the op's arguments from the leaves (slices, transposes, channels_last
    copies), so non-contiguous inputs get gradients with respect to their base tensors."""
    leaves = [t.detach().clone().requires_grad_() if _is_float(t) else t for t in leaves]
    out = fn(*(views(*leaves) if views else leaves))
    if grad_out is None:
        grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1234)).to(out.device)
    differentiable = [t for t in leaves if _is_float(t)]
    grads = torch.autograd.grad(out, differentiable, grad_out.to(out.dtype), allow_unused=True)
    return out, grads, grad_out


def assert_op_matches_policy(op, reference, leaves, dtype, names, views=None):
    """The DESIGN.md §5 rule for ``op`` against ``reference``, output and every gradient: ``out`` and
    ``ref_T`` from the leaves cast to ``dtype``, ``ref32`` from them upcast to fp32 (the same values).
    ``names`` label the float leaves in order."""
    cast = [t.to(dtype) if _is_float(t) else t for t in leaves]
    out, grads, g = forward_and_grads(op, cast, views=views)
    ref_t, grads_t, _ = forward_and_grads(reference, cast, g, views=views)
    ref32, grads32, _ = forward_and_grads(reference, [t.float() if _is_float(t) else t for t in cast], g,
                                          views=views)
    assert_policy(out, ref_t, ref32.to(torch.float32), dtype, "output")
    for name, o, rt, r32 in zip(names, grads, grads_t, grads32):
        assert (o is None) == (r32 is None), f"grad {name}: presence differs from the reference"
        if o is not None:
            assert_policy(o, rt, r32, dtype, f"grad {name}")
