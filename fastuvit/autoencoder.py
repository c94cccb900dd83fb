"""The Stable Diffusion KL-f8 autoencoder of the latent U-ViTs (ImageNet 256/512, MS-COCO).

    ae = fastuvit.autoencoder.load_autoencoder("autoencoder_kl_ema.pth")   # the released file
    z = ae.encode(images)              # (B, 3, H, W) in [-1, 1] -> (B, 4, H/8, W/8), times the scale factor
    images = ae.decode(z)              # back; decode_large_batch(z) in chunks under fp16 autocast on a GPU

``FrozenAutoencoderKL`` has the official class's methods and numbers (``libs/autoencoder.py``:
``encode_moments``, ``sample``, ``encode``, ``decode``): it is diffusers' ``AutoencoderKL`` built
from the official configuration (no download), with the released ``.pth`` files' keys renamed to
diffusers' layout on load. Those files load strictly: a file of another model is refused with a
``ValueError`` naming the missing, unexpected and mis-shaped keys (in the official names).

diffusers is an optional dependency (``pip install "fastuvit[latent]"``); importing this module does
not need it, building an autoencoder does.
"""
from __future__ import annotations

import os
import re
from typing import Mapping, NamedTuple

import torch
from torch import nn

from ._extras import require

SCALE_FACTOR = 0.18215


class OfficialAutoencoder(NamedTuple):
    file: str
    scale_factor: float


# The autoencoder each released latent config uses (its config's `autoencoder` entry; the files are in
# the official repository's assets/stable-diffusion/). MS-COCO trains and evaluates with 0.23010.
OFFICIAL_AUTOENCODERS = {
    "imagenet256_uvit_large": OfficialAutoencoder("autoencoder_kl.pth", SCALE_FACTOR),
    "imagenet256_uvit_huge": OfficialAutoencoder("autoencoder_kl_ema.pth", SCALE_FACTOR),
    "imagenet512_uvit_large": OfficialAutoencoder("autoencoder_kl.pth", SCALE_FACTOR),
    "imagenet512_uvit_huge": OfficialAutoencoder("autoencoder_kl_ema.pth", SCALE_FACTOR),
    "mscoco_uvit_small": OfficialAutoencoder("autoencoder_kl.pth", 0.23010),
    "mscoco_uvit_small_deep": OfficialAutoencoder("autoencoder_kl.pth", 0.23010),
}

# diffusers' AutoencoderKL names -> the official (latent-diffusion) names, applied in order. The decoder's
# up blocks are also numbered the other way round (official up.0 is the last, full-resolution one).
_OFFICIAL_NAMES = [
    (r"\.down_blocks\.(\d+)\.resnets\.", r".down.\1.block."),
    (r"\.down_blocks\.(\d+)\.downsamplers\.0\.", r".down.\1.downsample."),
    (r"\.up_blocks\.(\d+)\.resnets\.", r".up.\1.block."),
    (r"\.up_blocks\.(\d+)\.upsamplers\.0\.", r".up.\1.upsample."),
    (r"\.mid_block\.resnets\.0\.", ".mid.block_1."),
    (r"\.mid_block\.resnets\.1\.", ".mid.block_2."),
    (r"\.mid_block\.attentions\.0\.group_norm\.", ".mid.attn_1.norm."),
    (r"\.mid_block\.attentions\.0\.to_([qkv])\.", r".mid.attn_1.\1."),
    (r"\.mid_block\.attentions\.0\.to_out\.0\.", ".mid.attn_1.proj_out."),
    (r"\.conv_shortcut\.", ".nin_shortcut."),
    (r"\.conv_norm_out\.", ".norm_out."),
]
_ATTENTION_WEIGHT = re.compile(r"\.mid\.attn_1\.(q|k|v|proj_out)\.weight$")


def official_key(key: str, levels: int) -> str:
    """The official name of a diffusers ``AutoencoderKL`` state-dict key (``levels`` = len(ch_mult))."""
    key = re.sub(r"^decoder\.up_blocks\.(\d+)\.", lambda m: f"decoder.up_blocks.{levels - 1 - int(m[1])}.", key)
    for pattern, official in _OFFICIAL_NAMES:
        key = re.sub(pattern, official, key)
    return key


class FrozenAutoencoderKL(nn.Module):
    """The official ``FrozenAutoencoderKL`` (eval mode, no gradients) on diffusers' ``AutoencoderKL``.

    The keyword arguments are the official ``ddconfig``'s; the defaults are the released model's
    (``get_model``). ``ch`` must be a multiple of 32 (GroupNorm's groups). Weights start random: load
    the released ones with ``load_autoencoder`` or ``load_official_state_dict``.
    """

    def __init__(self, scale_factor: float = SCALE_FACTOR, *, ch: int = 128, ch_mult=(1, 2, 4, 4),
                 num_res_blocks: int = 2, z_channels: int = 4, in_channels: int = 3, out_ch: int = 3):
        super().__init__()
        diffusers = require("diffusers", "latent", "the Stable Diffusion autoencoder")
        if not isinstance(scale_factor, (int, float)) or isinstance(scale_factor, bool) or not scale_factor > 0:
            raise ValueError(f"scale_factor must be a positive number, got {scale_factor!r}")
        if not isinstance(ch, int) or ch < 32 or ch % 32:
            raise ValueError(f"ch must be a positive multiple of 32 (GroupNorm's 32 groups), got {ch!r}")
        ch_mult = tuple(ch_mult)
        if not ch_mult or not all(isinstance(m, int) and m > 0 for m in ch_mult):
            raise ValueError(f"ch_mult must be positive integers, got {ch_mult!r}")
        for name, value in (("num_res_blocks", num_res_blocks), ("z_channels", z_channels),
                            ("in_channels", in_channels), ("out_ch", out_ch)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self.vae = diffusers.AutoencoderKL(
            in_channels=in_channels, out_channels=out_ch, down_block_types=["DownEncoderBlock2D"] * len(ch_mult),
            up_block_types=["UpDecoderBlock2D"] * len(ch_mult), block_out_channels=[ch * m for m in ch_mult],
            layers_per_block=num_res_blocks, latent_channels=z_channels, norm_num_groups=32,
            scaling_factor=scale_factor)
        self.scale_factor = float(scale_factor)
        self.embed_dim = self.z_channels = z_channels
        self.in_channels, self.out_ch = in_channels, out_ch
        self.downsampling = 2 ** (len(ch_mult) - 1)
        self.eval()
        self.requires_grad_(False)

    # -- the official methods -------------------------------------------------------------------
    def encode_moments(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1], H and W multiples of 8 -> moments (B, 8, H/8, W/8): mean, logvar."""
        self._check(x, "x", self.in_channels, "images", multiple=self.downsampling)
        return self.vae.quant_conv(self.vae.encoder(x))

    def sample(self, moments: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """A latent drawn from the moments, times the scale factor: ``scale·(mean + exp(logvar/2)·ε)``,
        logvar clamped to [-30, 20]. Without ``generator`` ε comes from the global RNG, as officially."""
        self._check(moments, "moments", 2 * self.z_channels, "moments (mean, logvar)")
        mean, logvar = torch.chunk(moments, 2, dim=1)
        std = torch.exp(0.5 * torch.clamp(logvar, -30.0, 20.0))
        noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        return self.scale_factor * (mean + std * noise)

    def encode(self, x: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """``sample(encode_moments(x))``: (B, 3, H, W) -> scaled latents (B, 4, H/8, W/8)."""
        return self.sample(self.encode_moments(x), generator=generator)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, 4, h, w) -> images (B, 3, 8h, 8w), about [-1, 1] (not clamped)."""
        self._check(z, "z", self.z_channels, "latents")
        z = (1.0 / self.scale_factor) * z  # as officially written: the same rounding as z / scale_factor isn't
        return self.vae.decoder(self.vae.post_quant_conv(z))

    def forward(self, inputs: torch.Tensor, fn: str) -> torch.Tensor:
        """The official dispatch: ``fn`` is "encode_moments", "encode" or "decode"."""
        if fn not in ("encode_moments", "encode", "decode"):
            raise ValueError(f"fn must be 'encode_moments', 'encode' or 'decode', got {fn!r}")
        return getattr(self, fn)(inputs)

    # -- pictures out of samples ------------------------------------------------------------------
    @torch.no_grad()
    def decode_large_batch(self, z: torch.Tensor, batch_size: int = 50, autocast_dtype="auto",
                           progress: bool = False) -> torch.Tensor:
        """``decode`` in chunks of ``batch_size`` (the official evaluation's 50: the decoder's activations
        are large), under autocast: ``"auto"`` is fp16 on a GPU, as officially, and none on the CPU;
        or a dtype, or None. Returns fp32 on the latents' device."""
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        self._check(z, "z", self.z_channels, "latents")
        if autocast_dtype == "auto":
            autocast_dtype = default_decode_autocast(z.device)
        chunks = range(0, z.shape[0], batch_size)
        if progress and len(chunks) > 1:
            from tqdm.auto import tqdm

            chunks = tqdm(chunks, desc="decoding", leave=False)
        out = []
        for i in chunks:
            with torch.autocast(z.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                out.append(self.decode(z[i:i + batch_size]).float())
        return torch.cat(out)

    # -- the official weights ---------------------------------------------------------------------
    def official_layout(self) -> dict[str, tuple[str, tuple[int, ...]]]:
        """{official key: (diffusers key, official shape)} of this architecture."""
        levels = len(self.vae.config.block_out_channels)
        layout = {}
        for key, value in self.vae.state_dict().items():
            name = official_key(key, levels)
            # the official attention's q/k/v/proj_out are 1x1 convolutions; diffusers' are linear layers
            shape = tuple(value.shape) + ((1, 1) if _ATTENTION_WEIGHT.search(name) else ())
            layout[name] = (key, shape)
        return layout

    def official_state_dict(self) -> dict[str, torch.Tensor]:
        """The weights in the official layout: what ``torch.save`` makes an ``autoencoder_kl.pth`` of."""
        state = self.vae.state_dict()
        return {name: state[key].reshape(shape) for name, (key, shape) in self.official_layout().items()}

    def load_official_state_dict(self, state: Mapping[str, torch.Tensor], source: str = "state dict", *,
                                 assign: bool = False) -> "FrozenAutoencoderKL":
        """Load weights in the official layout, strictly; returns self. A state dict of another model
        raises ``ValueError`` listing the missing, unexpected and mis-shaped keys, loading nothing.
        ``assign=True`` takes the tensors as the parameters (cast to their dtype) instead of copying."""
        from .checkpoint import shape_mismatch

        layout = self.official_layout()
        problem = shape_mismatch({name: shape for name, (_, shape) in layout.items()}, state)
        if problem is not None:
            raise ValueError(f"{source} is not a KL-f8 autoencoder of this configuration (the official "
                             f"autoencoder_kl.pth layout): {problem}")
        ours = self.vae.state_dict()
        converted = {key: state[name].reshape(ours[key].shape).to(ours[key].dtype) for name, (key, _) in layout.items()}
        self.vae.load_state_dict(converted, strict=True, assign=assign)
        return self

    # -- checks -------------------------------------------------------------------------------------
    def _check(self, x, name: str, channels: int, what: str, multiple: int = 1) -> None:
        """Shape, dtype and device only: nothing that waits for the device."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != channels:
            raise ValueError(f"{name} must be {what} of shape (B, {channels}, H, W), got {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError(f"{name} is an empty batch")
        if x.shape[2] % multiple or x.shape[3] % multiple or x.shape[2] == 0 or x.shape[3] == 0:
            raise ValueError(f"{name}: height and width must be positive multiples of {multiple} (the "
                             f"autoencoder halves them {multiple.bit_length() - 1} times), got {tuple(x.shape[2:])}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
        device = self.vae.post_quant_conv.weight.device
        if x.device != device:
            raise ValueError(f"{name} is on {x.device} but the autoencoder is on {device}")


def default_decode_autocast(device: torch.device) -> torch.dtype | None:
    """The official evaluation decodes under ``torch.cuda.amp.autocast()``: fp16 on a GPU. On the CPU,
    fp32 (CPU autocast is bf16, coarser and no faster there)."""
    return torch.float16 if torch.device(device).type == "cuda" else None


def load_autoencoder(path: str | os.PathLike, scale_factor: float = SCALE_FACTOR, *,
                     device: str | torch.device | None = None) -> FrozenAutoencoderKL:
    """The released autoencoder (``autoencoder_kl.pth`` / ``autoencoder_kl_ema.pth``, read with
    ``weights_only=True``), loaded strictly, in eval mode, on ``device`` (default: the CPU).

    ``scale_factor``: 0.18215 (ImageNet), 0.23010 for the MS-COCO models; ``OFFICIAL_AUTOENCODERS``
    has each released config's file and factor.
    """
    from .checkpoint import load_state_dict_file

    state = load_state_dict_file(path)
    with torch.device("meta"):  # no random initialisation (seconds at this size): every weight comes from the file
        model = FrozenAutoencoderKL(scale_factor)
    model.load_official_state_dict(state, source=os.fspath(path), assign=True)
    return model.to(device) if device is not None else model


__all__ = ["FrozenAutoencoderKL", "load_autoencoder", "official_key", "default_decode_autocast",
           "OFFICIAL_AUTOENCODERS", "OfficialAutoencoder", "SCALE_FACTOR"]
