"""From noise to pictures, batch by batch, on one device.

    for images in pipeline.sample_batches(model, noise, labels, autoencoder=ae, batch_size=64,
                                          schedule="discrete", guidance_scale=0.4):
        ...   # (B, 3, 256, 256) in about [-1, 1], on the model's device

Each batch is sampled by ``fastuvit.sampling.sample`` and, for a latent model, handed straight to the
autoencoder's ``decode_large_batch`` (chunks of ``decode_batch_size``, fp16 autocast on a GPU): the
latents never leave the device, and nothing here waits on it, so the GPU runs sampling and decoding
back to back. Only the starting noise crosses over (host to device, a batch at a time), and the caller
decides when the pictures come back (``fastuvit.images.uint8_images`` on the device first: a quarter
of the bytes).
"""
from __future__ import annotations

from typing import Iterator

import torch

from .sampling import sample


def _device_of(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def sample_batches(model, noise: torch.Tensor, cond: torch.Tensor | None = None, *, autoencoder=None,
                   batch_size: int = 64, decode_batch_size: int = 50, decode_autocast="auto",
                   generator: torch.Generator | None = None, progress: bool = False,
                   **sampling) -> Iterator[torch.Tensor]:
    """Yield the samples of ``model`` (eval mode) from ``noise`` (N, C, H, W, any device) ``batch_size``
    at a time, on the model's device; decoded to images when ``autoencoder`` (a
    ``fastuvit.autoencoder.FrozenAutoencoderKL`` on the same device) is given.

    ``cond``: labels (N,) or contexts (N, L, D), moved to the device once; ``sampling``: the keyword
    arguments of ``fastuvit.sampling.sample`` (schedule, sampler, steps, guidance_scale, null_cond,
    autocast_dtype); ``generator``: the SDE samplers' noise, on the model's device.
    """
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    device = _device_of(model)
    if autoencoder is not None and _device_of(autoencoder) != device:
        raise ValueError(f"the autoencoder is on {_device_of(autoencoder)} but the model is on {device}: "
                         f"move both to one device (decoding there avoids copying the latents)")
    if cond is not None:
        if cond.shape[0] != noise.shape[0]:
            raise ValueError(f"cond has {cond.shape[0]} entries for {noise.shape[0]} noise samples")
        cond = cond.to(device)
    starts = range(0, noise.shape[0], batch_size)
    if progress and len(starts) > 1:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="batches")
    for start in starts:
        part = slice(start, start + batch_size)
        with torch.no_grad():
            x = sample(model, noise[part].to(device), None if cond is None else cond[part], generator=generator,
                       progress=progress, **sampling)
        if autoencoder is not None:
            x = autoencoder.decode_large_batch(x, decode_batch_size, autocast_dtype=decode_autocast,
                                               progress=progress)
        yield x


__all__ = ["sample_batches"]
