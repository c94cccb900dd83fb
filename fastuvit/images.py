"""Pictures out of samples: [-1, 1] tensors to uint8, a grid of them or one file each as PNGs, and a
loss curve."""
from __future__ import annotations

import os

import numpy as np
import torch


def uint8_images(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) in [-1, 1] -> uint8 (B, H, W, C) on the same device, with the official pixels: its
    ``unpreprocess`` (``0.5·(x + 1)`` clamped to [0, 1]) then torchvision's ``save_image`` (·255 + 0.5,
    truncated)."""
    x = (0.5 * (x.detach().float() + 1)).clamp(0, 1)
    return (x * 255 + 0.5).clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) in [-1, 1] -> uint8 (B, H, W, C) numpy array (``uint8_images`` on the host)."""
    return uint8_images(x).cpu().numpy()


def image_grid(images: np.ndarray, ncol: int, pad: int = 2, scale: int = 1, background: int = 255) -> np.ndarray:
    """uint8 (B, H, W, C) -> one uint8 (rows·(H·scale + pad) + pad, ..., C) grid, ``ncol`` per row,
    each image enlarged ``scale`` times (nearest neighbour)."""
    if images.ndim != 4:
        raise ValueError(f"images must be (B, H, W, C), got shape {images.shape}")
    b, h, w, c = images.shape
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
        h, w = h * scale, w * scale
    ncol = max(1, min(ncol, b))
    nrow = -(-b // ncol)
    grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), background, dtype=np.uint8)
    for i, img in enumerate(images):
        r, q = divmod(i, ncol)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + q * (w + pad): pad + q * (w + pad) + w] = img
    return grid


def save_png(array: np.ndarray, path: str | os.PathLike) -> str:
    """Write a uint8 (H, W, 1 or 3) array as a PNG; returns the path."""
    from PIL import Image

    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(path)
    return path


def save_grid(x: torch.Tensor, path: str | os.PathLike, ncol: int, scale: int = 1, pad: int = 2) -> str:
    """Samples (B, C, H, W) in [-1, 1] (C = 1 or 3) as a PNG grid of ``ncol`` columns."""
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"a PNG grid needs (B, 1 or 3, H, W) samples, got shape {tuple(x.shape)}")
    return save_png(image_grid(to_uint8(x), ncol, pad=pad, scale=scale), path)


def plot_losses(losses, path: str | os.PathLike, title: str = "training loss") -> str:
    """The per-step losses (light) and their moving average (dark) on a log scale, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    losses = np.asarray(losses, dtype=np.float64)
    steps = np.arange(1, len(losses) + 1)
    window = max(1, len(losses) // 50)
    smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.plot(steps, losses, color="#9ecae1", linewidth=0.6, label="per step")
    ax.plot(steps[window - 1:], smooth, color="#08519c", linewidth=1.6, label=f"mean of {window}")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("noise-prediction MSE")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
