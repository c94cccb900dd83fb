"""The eager ground truth: U-ViT in plain PyTorch, reproducing the official implementation
(baofff/U-ViT ``libs/uvit.py`` and ``libs/uvit_t2i.py``) exactly: constructor arguments and
defaults, module tree and state_dict keys, token order, skip order, unpatchify order, init (same
RNG consumption, so the same seed gives the same weights).

Attention modes (``attention_mode``):
- ``"official"``: what the official code runs on torch >= 2.0: q, k, v cast to fp32, then
  ``scaled_dot_product_attention`` with its default scale. Under autocast, SDPA is on the
  lower-precision list, so the cast is undone there, exactly as in the official code.
- ``"sdpa"``: same-dtype ``scaled_dot_product_attention`` (the best eager baseline).
- ``"math"``: explicit ``softmax(q kᵀ · scale) v``, computed in the input dtype.

``qk_scale``: the official SDPA path never passes its ``scale`` to SDPA, so ``qk_scale`` has no
effect on the official outputs. We reproduce that by default; ``apply_qk_scale=True`` makes every
mode use ``qk_scale`` (as the official legacy math path did).
"""
from __future__ import annotations

import math
import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

ATTENTION_MODES = ("official", "sdpa", "math")


def timestep_frequencies(dim: int, max_period: int = 10000) -> torch.Tensor:
    """The (dim // 2,) fp32 frequencies of the time embedding, computed on the CPU as the official
    code computes them (the same bits whatever device the model runs on)."""
    half = dim // 2
    return torch.exp(-math.log(max_period) * torch.arange(start=0, end=half, dtype=torch.float32) / half)


def timestep_embedding(timesteps: torch.Tensor, dim: int, max_period: int = 10000,
                       freqs: torch.Tensor | None = None) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: (B,) -> (B, dim), fp32. ``freqs``:
    ``timestep_frequencies(dim, max_period)`` already on the device (else made and copied per call,
    as the official code does)."""
    if freqs is None:
        freqs = timestep_frequencies(dim, max_period).to(device=timesteps.device)
    args = timesteps[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def patchify(imgs: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, h·p, w·p) -> (B, h·w, p·p·C), patch vectors ordered (p1, p2, C)."""
    B, C, H, W = imgs.shape
    p = patch_size
    x = imgs.reshape(B, C, H // p, p, W // p, p).permute(0, 2, 4, 3, 5, 1)
    return x.reshape(B, (H // p) * (W // p), p * p * C)


def unpatchify(x: torch.Tensor, channels: int = 3) -> torch.Tensor:
    """(B, h·w, p·p·C) -> (B, C, h·p, w·p) for a square grid, patch vectors ordered (p1, p2, C)."""
    B, N, patch_dim = x.shape
    p = int((patch_dim // channels) ** 0.5)
    h = w = int(N ** 0.5)
    if h * w != N or p * p * channels != patch_dim:
        raise ValueError(f"cannot unpatchify tokens of shape {tuple(x.shape)} with {channels} channels")
    x = x.reshape(B, h, w, p, p, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(B, channels, h * p, w * p)


@torch.no_grad()
def trunc_normal_(tensor: torch.Tensor, std: float = 1.0, a: float = -2.0, b: float = 2.0) -> torch.Tensor:
    """Zero-mean normal truncated to [a, b] by the inverse CDF, as the official code's timm copy
    does. (torch >= 2.13's ``nn.init.trunc_normal_`` rejection-samples: other numbers per seed.)"""
    def norm_cdf(v):
        return (1.0 + math.erf(v / math.sqrt(2.0))) / 2.0

    lo, hi = norm_cdf(a / std), norm_cdf(b / std)
    tensor.uniform_(2 * lo - 1, 2 * hi - 1)
    tensor.erfinv_()
    tensor.mul_(std * math.sqrt(2.0))
    return tensor.clamp_(min=a, max=b)


def init_uvit_weights(model: nn.Module) -> None:
    """The official init: trunc-normal(.02) for ``pos_embed`` and Linear weights, zero Linear
    biases, LayerNorm (1, 0); everything else keeps PyTorch's default. Same RNG order."""

    def init(m):
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.constant_(m.bias, 0)
        elif isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)

    trunc_normal_(model.pos_embed, std=0.02)
    model.apply(init)


def check_uvit_args(img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio) -> None:
    """Constructor arguments the official code would take and then fail on (or silently misuse)."""
    for name, value in (("img_size", img_size), ("patch_size", patch_size), ("in_chans", in_chans),
                        ("embed_dim", embed_dim), ("depth", depth), ("num_heads", num_heads)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if img_size % patch_size:
        raise ValueError(f"img_size ({img_size}) must be divisible by patch_size ({patch_size})")
    if embed_dim % num_heads:
        raise ValueError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
    if not isinstance(mlp_ratio, (int, float)) or isinstance(mlp_ratio, bool) or int(embed_dim * mlp_ratio) < 1:
        raise ValueError(f"mlp_ratio must be a positive number, got {mlp_ratio!r}")


def warn_if_qk_scale_ignored(qk_scale, apply_qk_scale: bool) -> None:
    if qk_scale is not None and not apply_qk_scale:
        warnings.warn(
            "qk_scale has no effect, as in the official U-ViT code (its SDPA path ignores it); "
            "pass apply_qk_scale=True to use it",
            stacklevel=3,
        )


class Attention(nn.Module):
    def __init__(self, dim, num_heads=8, qkv_bias=False, qk_scale=None, attention_mode="official",
                 apply_qk_scale=False):
        super().__init__()
        if attention_mode not in ATTENTION_MODES:
            raise ValueError(f"attention_mode must be one of {ATTENTION_MODES}, got {attention_mode!r}")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = qk_scale or head_dim ** -0.5
        self.softmax_scale = self.scale if apply_qk_scale else head_dim ** -0.5
        self.attention_mode = attention_mode
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, L, C = x.shape
        qkv = self.qkv(x).reshape(B, L, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # B H L hd
        if self.attention_mode == "official":
            out = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), scale=self.softmax_scale)
            out = out.to(qkv.dtype)  # a no-op wherever the official code runs (fp32, or autocast)
        elif self.attention_mode == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, scale=self.softmax_scale)
        else:
            attn = (q @ k.transpose(-2, -1)) * self.softmax_scale
            out = attn.softmax(dim=-1) @ v
        out = out.transpose(1, 2).reshape(B, L, C)
        return self.proj(out)


class Mlp(nn.Module):
    def __init__(self, in_features, hidden_features, act_layer=nn.GELU):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features, in_features)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    attention_cls = Attention  # the fused model swaps in its own

    def __init__(self, dim, num_heads, mlp_ratio=4.0, qkv_bias=False, qk_scale=None, act_layer=nn.GELU,
                 norm_layer=nn.LayerNorm, skip=False, use_checkpoint=False, **attention_kwargs):
        super().__init__()
        self.norm1 = norm_layer(dim)
        self.attn = self.attention_cls(dim, num_heads=num_heads, qkv_bias=qkv_bias, qk_scale=qk_scale,
                                       **attention_kwargs)
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer)
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None
        self.use_checkpoint = use_checkpoint

    def forward(self, x, skip=None):
        if self.use_checkpoint and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(self._forward, x, skip, use_reentrant=False)
        return self._forward(x, skip)

    def _forward(self, x, skip=None):
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        x = x + self.attn(self.norm1(x))
        x = x + self.mlp(self.norm2(x))
        return x


class PatchEmbed(nn.Module):
    def __init__(self, patch_size, in_chans=3, embed_dim=768):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)  # B N D


class _UViTBase(nn.Module):
    """The parts the class-conditional and text-to-image variants share, built in the official
    order (the RNG order of the init depends on it). The fused model (``fastuvit.model``) builds
    the same tree with its own ``block_cls`` and ``patch_embed_cls``."""

    block_cls = Block
    patch_embed_cls = PatchEmbed

    def _build(self, img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, qkv_bias,
               qk_scale, norm_layer, mlp_time_embed, use_checkpoint, conv, skip, make_condition,
               **attention_kwargs):
        check_uvit_args(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                        depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio)
        warn_if_qk_scale_ignored(qk_scale, attention_kwargs.get("apply_qk_scale", False))
        self.img_size, self.patch_size = img_size, patch_size
        self.num_features = self.embed_dim = embed_dim
        self.in_chans = in_chans
        self.patch_embed = self.patch_embed_cls(patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim)
        num_patches = (img_size // patch_size) ** 2
        self.time_embed = nn.Sequential(
            nn.Linear(embed_dim, 4 * embed_dim), nn.SiLU(), nn.Linear(4 * embed_dim, embed_dim),
        ) if mlp_time_embed else nn.Identity()
        make_condition()  # label_emb or context_embed, and self.extras
        self.pos_embed = nn.Parameter(torch.zeros(1, self.extras + num_patches, embed_dim))

        def block(skip_block=False):
            return self.block_cls(dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio,
                                  qkv_bias=qkv_bias, qk_scale=qk_scale, norm_layer=norm_layer,
                                  skip=skip_block, use_checkpoint=use_checkpoint, **attention_kwargs)

        self.in_blocks = nn.ModuleList([block() for _ in range(depth // 2)])
        self.mid_block = block()
        self.out_blocks = nn.ModuleList([block(skip) for _ in range(depth // 2)])
        self.norm = norm_layer(embed_dim)
        self.patch_dim = patch_size ** 2 * in_chans
        self.decoder_pred = nn.Linear(embed_dim, self.patch_dim, bias=True)
        self.final_layer = nn.Conv2d(self.in_chans, self.in_chans, 3, padding=1) if conv else nn.Identity()
        init_uvit_weights(self)

    def _add_label_embedding(self, num_classes, embed_dim):
        self.num_classes = num_classes
        if num_classes > 0:
            self.label_emb = nn.Embedding(num_classes, embed_dim)
            self.extras = 2
        else:
            self.extras = 1

    def _add_context_embedding(self, clip_dim, num_clip_token, embed_dim):
        self.context_embed = nn.Linear(clip_dim, embed_dim)
        self.extras = 1 + num_clip_token

    @torch.jit.ignore
    def no_weight_decay(self):
        return {"pos_embed"}

    def _run(self, x, timesteps, make_prefix):
        x = self.patch_embed(x)  # B N D
        time_token = self.time_embed(timestep_embedding(timesteps, self.embed_dim)).unsqueeze(1)  # B 1 D
        x = torch.cat((*make_prefix(time_token), x), dim=1) + self.pos_embed  # B extras+N D
        skips = []
        for blk in self.in_blocks:
            x = blk(x)
            skips.append(x)
        x = self.mid_block(x)
        for blk in self.out_blocks:
            x = blk(x, skips.pop())
        x = self.decoder_pred(self.norm(x))  # B extras+N p·p·C
        x = x[:, self.extras:, :]
        x = unpatchify(x, self.in_chans)  # B C H W
        return self.final_layer(x)


class UViT(_UViTBase):
    """Reference U-ViT (``libs/uvit.py``); unconditional when ``num_classes <= 0``."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12,
                 mlp_ratio=4.0, qkv_bias=False, qk_scale=None, norm_layer=nn.LayerNorm, mlp_time_embed=False,
                 num_classes=-1, use_checkpoint=False, conv=True, skip=True, *, attention_mode="official",
                 apply_qk_scale=False):
        super().__init__()
        self._build(img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, qkv_bias, qk_scale,
                    norm_layer, mlp_time_embed, use_checkpoint, conv, skip,
                    lambda: self._add_label_embedding(num_classes, embed_dim),
                    attention_mode=attention_mode, apply_qk_scale=apply_qk_scale)

    def forward(self, x, timesteps, y=None):
        if y is None:
            return self._run(x, timesteps, lambda t: (t,))
        return self._run(x, timesteps, lambda t: (self.label_emb(y).unsqueeze(1), t))  # [label, time]


class UViTT2I(_UViTBase):
    """Reference text-to-image U-ViT (``libs/uvit_t2i.py``): tokens [time, context, patches]."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12,
                 mlp_ratio=4.0, qkv_bias=False, qk_scale=None, norm_layer=nn.LayerNorm, mlp_time_embed=False,
                 use_checkpoint=False, clip_dim=768, num_clip_token=77, conv=True, skip=True, *,
                 attention_mode="official", apply_qk_scale=False):
        super().__init__()
        self._build(img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, qkv_bias, qk_scale,
                    norm_layer, mlp_time_embed, use_checkpoint, conv, skip,
                    lambda: self._add_context_embedding(clip_dim, num_clip_token, embed_dim),
                    attention_mode=attention_mode, apply_qk_scale=apply_qk_scale)

    def forward(self, x, timesteps, context):
        return self._run(x, timesteps, lambda t: (t, self.context_embed(context)))
