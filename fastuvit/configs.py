"""The released U-ViT models (official config file stems, DESIGN.md §1) and ``create_model``.

Configs are plain data: a variant name and the constructor kwargs of the official config file.
"""
from __future__ import annotations

import copy

_SMALL = dict(embed_dim=512, num_heads=8, mlp_ratio=4, qkv_bias=False, mlp_time_embed=False)
_LARGE = dict(embed_dim=1024, depth=20, num_heads=16, mlp_ratio=4, qkv_bias=False, mlp_time_embed=False,
              use_checkpoint=True)
_HUGE = dict(embed_dim=1152, depth=28, num_heads=16, mlp_ratio=4, qkv_bias=False, mlp_time_embed=False,
             use_checkpoint=True, conv=False)

# name -> (variant, kwargs); variant "uvit" is UViT, "uvit_t2i" is UViTT2I.
CONFIGS: dict[str, tuple[str, dict]] = {
    "cifar10_uvit_small": ("uvit", dict(img_size=32, patch_size=2, depth=12, num_classes=-1, **_SMALL)),
    "celeba64_uvit_small": ("uvit", dict(img_size=64, patch_size=4, depth=12, num_classes=-1, **_SMALL)),
    "imagenet64_uvit_mid": ("uvit", dict(img_size=64, patch_size=4, embed_dim=768, depth=16, num_heads=12,
                                         mlp_ratio=4, qkv_bias=False, mlp_time_embed=False, num_classes=1000,
                                         use_checkpoint=True)),
    "imagenet64_uvit_large": ("uvit", dict(img_size=64, patch_size=4, num_classes=1000, **_LARGE)),
    "imagenet256_uvit_large": ("uvit", dict(img_size=32, patch_size=2, in_chans=4, num_classes=1001, **_LARGE)),
    "imagenet256_uvit_huge": ("uvit", dict(img_size=32, patch_size=2, in_chans=4, num_classes=1001, **_HUGE)),
    "imagenet512_uvit_large": ("uvit", dict(img_size=64, patch_size=4, in_chans=4, num_classes=1001, **_LARGE)),
    "imagenet512_uvit_huge": ("uvit", dict(img_size=64, patch_size=4, in_chans=4, num_classes=1001, **_HUGE)),
    "mscoco_uvit_small": ("uvit_t2i", dict(img_size=32, in_chans=4, patch_size=2, depth=12, clip_dim=768,
                                           num_clip_token=77, **_SMALL)),
    "mscoco_uvit_small_deep": ("uvit_t2i", dict(img_size=32, in_chans=4, patch_size=2, depth=16, clip_dim=768,
                                                num_clip_token=77, **_SMALL)),
}


def model_config(name: str, **overrides) -> tuple[str, dict]:
    """(variant, kwargs) of a released config with ``overrides`` applied; a fresh copy."""
    if not isinstance(name, str) or name not in CONFIGS:
        raise ValueError(f"unknown config name {name!r}; known: {', '.join(sorted(CONFIGS))}")
    variant, kwargs = copy.deepcopy(CONFIGS[name])
    kwargs.update(overrides)
    return variant, kwargs


def create_model(name: str, *, reference: bool = False, **overrides):
    """Build a released config: ``fastuvit.UViT`` / ``UViTT2I``, or with ``reference=True`` the eager
    ``fastuvit.reference`` model. ``overrides`` are constructor kwargs (``use_checkpoint=False``...)."""
    from . import model as fused_models
    from . import reference as reference_models

    variant, kwargs = model_config(name, **overrides)
    module = reference_models if reference else fused_models
    cls = module.UViTT2I if variant == "uvit_t2i" else module.UViT
    try:
        return cls(**kwargs)
    except TypeError as e:  # an override that is not a constructor argument
        raise TypeError(f"create_model({name!r}): {e}") from None
