"""torch.autograd.gradcheck in fp64 of every registered autograd formula (issue 8).

The custom ops' backward formulas (``register_autograd`` + the backward custom ops) are checked
against finite differences in fp64 through the eager fallbacks. The Triton kernels do run fp64 in the
interpreter, but they accumulate in fp32 by design, which finite differences at eps 1e-6 cannot
tell from a wrong formula; the kernels' gradients are checked against the references under the
numerical policy (test_<op>.py, test_properties.py) instead.
"""
import pytest
import torch

import fastuvit


def _leaf(*shape):
    return torch.randn(*shape, dtype=torch.float64).requires_grad_()


@pytest.fixture(autouse=True)
def _fallback():
    with fastuvit.ops.eager_fallback():
        yield


@pytest.mark.parametrize("bias", [True, False])
def test_skip_linear_formula(bias):
    b = _leaf(5) if bias else None

    def fn(x, skip, weight):
        return torch.ops.fastuvit.skip_linear(x, skip, weight, b)

    inputs = (_leaf(2, 3, 6), _leaf(2, 3, 6), _leaf(5, 12))
    assert torch.autograd.gradcheck(fn, inputs)
    if bias:
        assert torch.autograd.gradcheck(lambda bb: torch.ops.fastuvit.skip_linear(*inputs, bb), (b,))


@pytest.mark.parametrize("E", [0, 2])
def test_patch_embed_formula(E):
    prefix = _leaf(2, E, 5) if E else None

    def fn(x, weight, bias, pos_embed):
        return torch.ops.fastuvit.patch_embed(x, weight, bias, pos_embed, prefix)

    assert torch.autograd.gradcheck(fn, (_leaf(2, 3, 4, 6), _leaf(5, 3, 2, 2), _leaf(5), _leaf(E + 6, 5)))
    if E:  # the prefix gradient on its own
        x, weight = _leaf(2, 3, 4, 6).detach(), _leaf(5, 3, 2, 2).detach()
        assert torch.autograd.gradcheck(
            lambda pre: torch.ops.fastuvit.patch_embed(x, weight, None, None, pre), (prefix,))
