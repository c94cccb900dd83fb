"""Small U-ViT configurations covering every constructor option (shared by the model tests)."""
import torch

BASE = dict(img_size=16, patch_size=2, in_chans=3, embed_dim=64, depth=4, num_heads=4)

# id -> (variant, kwargs); variant "uvit" or "uvit_t2i"
CASES = {
    "uncond": ("uvit", dict(BASE)),
    "class_cond": ("uvit", dict(BASE, num_classes=10)),
    "t2i": ("uvit_t2i", dict(BASE, clip_dim=32, num_clip_token=5)),
    "t2i_no_conv_no_skip": ("uvit_t2i", dict(BASE, clip_dim=32, num_clip_token=3, conv=False, skip=False)),
    "no_conv": ("uvit", dict(BASE, num_classes=10, conv=False)),
    "no_skip": ("uvit", dict(BASE, skip=False)),
    "mlp_time_embed": ("uvit", dict(BASE, num_classes=10, mlp_time_embed=True)),
    "qkv_bias": ("uvit", dict(BASE, qkv_bias=True)),
    "qk_scale_ignored": ("uvit", dict(BASE, qk_scale=0.3)),
    "use_checkpoint": ("uvit", dict(BASE, num_classes=10, use_checkpoint=True)),
    "patch1": ("uvit", dict(BASE, img_size=8, patch_size=1)),
    "patch4": ("uvit", dict(BASE, patch_size=4, in_chans=4, num_classes=7)),
    "head_dim72": ("uvit", dict(BASE, embed_dim=144, num_heads=2, num_classes=5)),
    "odd_dim_odd_depth": ("uvit", dict(BASE, embed_dim=63, num_heads=3, depth=5, mlp_ratio=2.5)),
}


def make_inputs(variant, kwargs, batch=2, generator_seed=1):
    g = torch.Generator().manual_seed(generator_seed)
    c, s = kwargs.get("in_chans", 3), kwargs["img_size"]
    x = torch.randn(batch, c, s, s, generator=g)
    t = torch.rand(batch, generator=g) * 999  # fractional, as the samplers pass them
    if variant == "uvit_t2i":
        cond = torch.randn(batch, kwargs.get("num_clip_token", 77), kwargs.get("clip_dim", 768), generator=g)
    elif kwargs.get("num_classes", -1) > 0:
        cond = torch.randint(0, kwargs["num_classes"], (batch,), generator=g)
    else:
        cond = None
    return x, t, cond


def call(model, x, t, cond):
    return model(x, t) if cond is None else model(x, t, cond)


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()
