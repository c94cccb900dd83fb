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
