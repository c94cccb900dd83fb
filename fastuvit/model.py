"""The public U-ViT: a drop-in for the official ``libs.uvit.UViT`` / ``libs.uvit_t2i.UViT`` (same
constructor arguments and defaults, same state_dict keys, same forward signature) whose hot paths
run through the fused ops of ``fastuvit.ops``:

- the input path is one ``patch_embed`` call: patchify + linear + [prefix tokens, patches] +
  ``pos_embed``, the time (and label, or context) tokens being the prefix;
- each out-block's long skip is one ``skip_linear(x, skip)`` call: no concatenation;
- attention runs on (B, L, H, hd) views into the packed qkv projection and returns (B, L, H, hd),
  which is ``proj``'s input without a rearrange copy.

The module tree is the reference's (``fastuvit.reference``), built by the same code, so the
weights, the init and the RNG order are the same.

Extra keyword-only arguments (none of them changes the state_dict):
- ``attention_backend``: ``"auto"`` or a backend of ``fastuvit.ops.attention``.
- ``apply_qk_scale``: see ``fastuvit.reference``; the official outputs ignore ``qk_scale``.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from . import ops, reference
from .profiling import ranged
from .reference import timestep_embedding, timestep_frequencies, unpatchify

_TIME_FREQUENCIES: dict = {}


def _time_frequencies(dim: int, device: torch.device) -> torch.Tensor:
    """The official time-embedding frequencies on ``device``, copied there once: the official
    per-call host-to-device copy cannot be captured in a CUDA graph. (Under torch.compile the
    table is traced as a constant instead of being cached.)"""
    if torch.compiler.is_compiling():
        return timestep_frequencies(dim).to(device)
    key = (dim, device)
    if key not in _TIME_FREQUENCIES:
        _TIME_FREQUENCIES[key] = timestep_frequencies(dim).to(device)
    return _TIME_FREQUENCIES[key]


class Attention(nn.Module):
    def __init__(self, dim, num_heads=8, qkv_bias=False, qk_scale=None, attention_backend="auto",
                 apply_qk_scale=False):
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = qk_scale or head_dim ** -0.5
        self.softmax_scale = self.scale if apply_qk_scale else head_dim ** -0.5
        self.attention_backend = attention_backend
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, L, C = x.shape
        qkv = self.qkv(x).view(B, L, 3, self.num_heads, C // self.num_heads)  # channels split (3, H, hd)
        out = ops.attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], scale=self.softmax_scale,
                            backend=self.attention_backend)  # B L H hd
        return self.proj(out.reshape(B, L, C))


class Block(reference.Block):
    attention_cls = Attention

    def _forward(self, x, skip=None):
        if self.skip_linear is not None:
            x = ranged("skip", ops.skip_linear, x, skip, self.skip_linear.weight, self.skip_linear.bias)
        x = x + ranged("attention", self.attn, self.norm1(x))
        x = x + ranged("mlp", self.mlp, self.norm2(x))
        return x


class PatchEmbed(reference.PatchEmbed):
    """Keeps the Conv2d parameters (``patch_embed.proj.*``); its forward is the fused input path."""

    def forward(self, x, pos_embed, prefix):
        return ops.patch_embed(x, self.proj.weight, self.proj.bias, pos_embed=pos_embed, prefix=prefix)


class _FusedUViT(reference._UViTBase):
    block_cls = Block
    patch_embed_cls = PatchEmbed

    def set_attention_backend(self, backend: str) -> None:
        """Switch every block's attention backend (``"auto"``, ``"triton"``, ``"sdpa"``, ...)."""
        if backend != "auto" and backend not in ops.attention_backends():
            raise ValueError(f"backend must be 'auto' or one of {ops.attention_backends()}, got {backend!r}")
        for module in self.modules():
            if isinstance(module, Attention):
                module.attention_backend = backend

    def _check_image(self, x, timesteps):
        """Shapes, dtypes and devices only: nothing here reads tensor values on the device."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != self.in_chans or x.shape[2] != self.img_size or x.shape[3] != self.img_size:
            raise ValueError(f"x must be (B, {self.in_chans}, {self.img_size}, {self.img_size}), "
                             f"got {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError("x is an empty batch (B = 0)")
        param = self.pos_embed
        if x.device != param.device:
            raise ValueError(f"x is on {x.device} but the model is on {param.device}")
        if x.dtype != param.dtype and not torch.is_autocast_enabled(x.device.type):
            raise TypeError(f"x has dtype {x.dtype} but the model's parameters are {param.dtype} "
                            f"(convert one, or run under torch.autocast)")
        if not isinstance(timesteps, torch.Tensor):
            raise TypeError(f"timesteps must be a torch.Tensor of shape (B,), got {type(timesteps).__name__}")
        if timesteps.shape != (x.shape[0],):
            raise ValueError(f"timesteps must have shape (B,) = ({x.shape[0]},), got {tuple(timesteps.shape)}")
        if timesteps.is_complex() or timesteps.dtype == torch.bool:
            raise TypeError(f"timesteps must be real numbers, got dtype {timesteps.dtype}")
        if timesteps.device != x.device:
            raise ValueError(f"timesteps is on {timesteps.device} but x is on {x.device}")

    def _check_condition(self, name, cond, x):
        if cond.device != x.device:
            raise ValueError(f"{name} is on {cond.device} but x is on {x.device}")

    def _run(self, x, timesteps, prefix_after_time=None, prefix_before_time=None):
        freqs = _time_frequencies(self.embed_dim, timesteps.device)
        time_token = self.time_embed(timestep_embedding(timesteps, self.embed_dim, freqs=freqs)).unsqueeze(1)  # B 1 D
        prefix = [t for t in (prefix_before_time, time_token, prefix_after_time) if t is not None]
        prefix = prefix[0] if len(prefix) == 1 else torch.cat(prefix, dim=1)  # B extras D
        x = ranged("embed", self.patch_embed, x, self.pos_embed, prefix)  # B extras+N D
        skips = []
        for i, blk in enumerate(self.in_blocks):
            x = ranged(f"in_blocks.{i}", blk, x)
            skips.append(x)
        x = ranged("mid_block", self.mid_block, x)
        for i, blk in enumerate(self.out_blocks):
            x = ranged(f"out_blocks.{i}", blk, x, skips.pop())
        return ranged("decoder", self._decode, x)  # B C H W

    def _decode(self, x):
        # norm and decoder_pred act per token: dropping the extras tokens first gives the official
        # numbers without computing rows that are thrown away (78 of 334 tokens for MS-COCO).
        x = self.decoder_pred(self.norm(x[:, self.extras:]))  # B N p·p·C
        return self.final_layer(unpatchify(x, self.in_chans))  # B C H W


class UViT(_FusedUViT):
    """U-ViT (``libs/uvit.py``): unconditional when ``num_classes <= 0``, else class-conditional
    with tokens [label, time, patches]."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12,
                 mlp_ratio=4.0, qkv_bias=False, qk_scale=None, norm_layer=nn.LayerNorm, mlp_time_embed=False,
                 num_classes=-1, use_checkpoint=False, conv=True, skip=True, *, attention_backend="auto",
                 apply_qk_scale=False):
        super().__init__()
        self._build(img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, qkv_bias, qk_scale,
                    norm_layer, mlp_time_embed, use_checkpoint, conv, skip,
                    lambda: self._add_label_embedding(num_classes, embed_dim),
                    attention_backend=attention_backend, apply_qk_scale=apply_qk_scale)

    def forward(self, x, timesteps, y=None):
        self._check_image(x, timesteps)
        if self.num_classes > 0:
            if y is None:
                raise ValueError(f"y (class labels of shape (B,)) is required: the model has "
                                 f"num_classes={self.num_classes}")
            if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],):
                raise ValueError(f"y must be a tensor of shape (B,) = ({x.shape[0]},), got "
                                 f"{tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__}")
            if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
                raise TypeError(f"y must hold integer class labels, got dtype {y.dtype}")
            self._check_condition("y", y, x)
            if y.device.type == "cpu" and not torch.compiler.is_compiling():
                # Free on CPU; on CUDA it would cost a host sync (an out-of-range label there trips
                # the embedding's device-side assert instead).
                low, high = int(y.min()), int(y.max())
                if low < 0 or high >= self.num_classes:
                    raise ValueError(f"y must be class labels in [0, {self.num_classes - 1}], "
                                     f"got values in [{low}, {high}]")
            return self._run(x, timesteps, prefix_before_time=self.label_emb(y).unsqueeze(1))  # [label, time]
        if y is not None:
            raise ValueError("y was given but the model is unconditional (num_classes <= 0)")
        return self._run(x, timesteps)


class UViTT2I(_FusedUViT):
    """Text-to-image U-ViT (``libs/uvit_t2i.py``): tokens [time, context, patches]."""

    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, depth=12, num_heads=12,
                 mlp_ratio=4.0, qkv_bias=False, qk_scale=None, norm_layer=nn.LayerNorm, mlp_time_embed=False,
                 use_checkpoint=False, clip_dim=768, num_clip_token=77, conv=True, skip=True, *,
                 attention_backend="auto", apply_qk_scale=False):
        super().__init__()
        self.clip_dim, self.num_clip_token = clip_dim, num_clip_token
        self._build(img_size, patch_size, in_chans, embed_dim, depth, num_heads, mlp_ratio, qkv_bias, qk_scale,
                    norm_layer, mlp_time_embed, use_checkpoint, conv, skip,
                    lambda: self._add_context_embedding(clip_dim, num_clip_token, embed_dim),
                    attention_backend=attention_backend, apply_qk_scale=apply_qk_scale)

    def forward(self, x, timesteps, context):
        self._check_image(x, timesteps)
        expected = (x.shape[0], self.num_clip_token, self.clip_dim)
        if not isinstance(context, torch.Tensor) or context.shape != expected:
            raise ValueError(f"context must be a tensor of shape (B, num_clip_token, clip_dim) = {expected}, got "
                             f"{tuple(context.shape) if isinstance(context, torch.Tensor) else type(context).__name__}")
        self._check_condition("context", context, x)
        return self._run(x, timesteps, prefix_after_time=self.context_embed(context))  # [time, context]


def example_inputs(model, batch: int, device=None, generator: torch.Generator | None = None):
    """Random inputs for ``model`` (fastuvit or reference, either variant): (x, timesteps, cond), cond
    being labels, a context or None. For smoke runs, benchmarks and profiling."""
    device = device or model.pos_embed.device
    kw = dict(generator=generator)
    x = torch.randn(batch, model.in_chans, model.img_size, model.img_size, **kw).to(device)
    timesteps = (torch.rand(batch, **kw) * 999).to(device)
    if hasattr(model, "context_embed"):
        cond = torch.randn(batch, model.extras - 1, model.context_embed.in_features, **kw).to(device)
    elif model.num_classes > 0:
        cond = torch.randint(0, model.num_classes, (batch,), **kw).to(device)
    else:
        cond = None
    return x, timesteps, cond
