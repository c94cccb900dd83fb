"""Bad input at the model boundary gets a ValueError / TypeError naming the argument (issue 8)."""
import pytest
import torch

import fastuvit
from fastuvit import reference
from model_cases import BASE, CASES, make_inputs


@pytest.mark.parametrize("change,error,words", [
    (dict(embed_dim=60, num_heads=8), ValueError, "embed_dim (60) must be divisible by num_heads (8)"),
    (dict(img_size=15), ValueError, "img_size (15) must be divisible by patch_size (2)"),
    (dict(depth=0), ValueError, "depth must be >= 1"),
    (dict(patch_size=2.0), TypeError, "patch_size must be an int"),
    (dict(num_heads=True), TypeError, "num_heads must be an int"),
    (dict(mlp_ratio=0), ValueError, "mlp_ratio must be a positive number"),
])
def test_constructor_arguments(change, error, words):
    for cls in (fastuvit.UViT, reference.UViT, fastuvit.UViTT2I):
        with pytest.raises(error) as info:
            cls(**dict(BASE, **change))
        assert words in str(info.value)


@pytest.fixture
def class_cond():
    kwargs = CASES["class_cond"][1]
    return fastuvit.UViT(**kwargs), make_inputs("uvit", kwargs)


def test_empty_batch(class_cond):
    model, (x, t, y) = class_cond
    with pytest.raises(ValueError, match="empty batch"):
        model(x[:0], t[:0], y[:0])


@pytest.mark.parametrize("labels,error,words", [
    (torch.tensor([0.0, 1.0]), TypeError, "y must hold integer class labels"),
    (torch.tensor([True, False]), TypeError, "y must hold integer class labels"),
    (torch.tensor([0, 10]), ValueError, r"y must be class labels in \[0, 9\], got values in \[0, 10\]"),
    (torch.tensor([-1, 3]), ValueError, r"in \[0, 9\], got values in \[-1, 3\]"),
])
def test_labels(class_cond, labels, error, words):
    model, (x, t, _) = class_cond
    with pytest.raises(error, match=words):
        model(x, t, labels)


def test_dtype_and_device_mismatches(class_cond):
    model, (x, t, y) = class_cond
    with pytest.raises(TypeError, match="x has dtype torch.float64 but the model's parameters are torch.float32"):
        model(x.double(), t, y)
    with pytest.raises(ValueError, match="x is on meta but the model is on cpu"):
        model(x.to("meta"), t, y)
    with pytest.raises(ValueError, match="timesteps is on meta"):
        model(x, t.to("meta"), y)
    with pytest.raises(TypeError, match="timesteps must be real numbers"):
        model(x, torch.tensor([True, False]), y)
    with pytest.raises(TypeError, match="timesteps must be a torch.Tensor"):
        model(x, [1.0, 2.0], y)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        model(x.numpy(), t, y)


def test_autocast_accepts_fp32_images_into_a_fp32_model(class_cond):
    model, (x, t, y) = class_cond
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16), fastuvit.ops.eager_fallback():
        assert torch.isfinite(model(x, t, y)).all()


def test_context_errors():
    kwargs = CASES["t2i"][1]
    model = fastuvit.UViTT2I(**kwargs)
    x, t, ctx = make_inputs("uvit_t2i", kwargs)
    with pytest.raises(ValueError, match=r"context must be a tensor of shape \(B, num_clip_token, clip_dim\) = \(2, 5, 32\)"):
        model(x, t, ctx[..., :16])
    with pytest.raises(ValueError, match="context is on meta"):
        model(x, t, ctx.to("meta"))
