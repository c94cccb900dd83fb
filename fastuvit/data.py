"""Training data: images or latents (N, C, H, W) in memory or memory-mapped, with optional class
labels or text contexts, and the order in which training visits them.

Sources (``load_dataset``):
- ``.npz``: the data under ``x``/``images``/``latents``/``arr_0``; labels under ``y``/``labels``;
  text contexts under ``context``/``contexts`` and the empty context under ``empty_context``.
- ``.npy``: the data alone (unlabelled); ``labels=`` may name a second ``.npy``.
- a folder of images (png/jpg/...): class-conditional when the images sit in one sub-folder per
  class (labels in sorted folder-name order), else unlabelled; resized (shorter side, then centre
  crop) to ``image_size``.

uint8 arrays are images, stored (N, H, W, C) or (N, C, H, W) and mapped to [-1, 1]; float arrays are
used as they are (latents: scale them as the model expects, e.g. by 0.18215 for Stable Diffusion's
autoencoder). The visiting order is a pure function of (seed, step), so a run resumed from a
checkpoint or spread over processes sees exactly the batches of an uninterrupted single process.
"""
from __future__ import annotations

import os

import numpy as np
import torch

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
_DATA_KEYS = ("x", "images", "latents", "arr_0")
_LABEL_KEYS = ("y", "labels")
_CONTEXT_KEYS = ("context", "contexts")


class ArrayDataset:
    """``x`` (N, C, H, W) (uint8 images, or float), ``cond`` labels (N,) / contexts (N, L, D) or None."""

    def __init__(self, x, cond=None, empty_context=None, channels: int | None = None):
        x = x if isinstance(x, np.ndarray) else np.asarray(x)
        if x.ndim != 4:
            raise ValueError(f"data must be a 4-D array (N, C, H, W) or (N, H, W, C), got shape {x.shape}")
        if channels is not None:
            nhwc = x.shape[1] != channels and x.shape[-1] == channels
        else:  # without a hint, only uint8 images with a channel-like last axis count as NHWC
            nhwc = x.dtype == np.uint8 and x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4)
        if nhwc:
            x = x.transpose(0, 3, 1, 2)  # NHWC -> NCHW (a view, fine for memory maps)
        if not (x.dtype == np.uint8 or np.issubdtype(x.dtype, np.floating)):
            raise ValueError(f"data must be uint8 images or float images/latents, got dtype {x.dtype}")
        if len(x) == 0:
            raise ValueError("the dataset is empty")
        self.x = x
        if cond is not None:
            cond = np.asarray(cond)
            if len(cond) != len(x):
                raise ValueError(f"{len(cond)} labels/contexts for {len(x)} examples")
            if cond.ndim == 1:
                if not np.issubdtype(cond.dtype, np.integer):
                    raise ValueError(f"labels must be integers, got dtype {cond.dtype}")
                if cond.min() < 0:
                    raise ValueError("labels must be >= 0")
                cond = cond.astype(np.int64)
            elif cond.ndim == 3:
                cond = cond.astype(np.float32)
            else:
                raise ValueError(f"labels must be (N,) or contexts (N, L, D), got shape {cond.shape}")
        self.cond = cond
        if empty_context is not None:
            empty_context = np.asarray(empty_context, dtype=np.float32)
            if cond is None or cond.ndim != 3 or empty_context.shape != cond.shape[1:]:
                raise ValueError(f"empty_context must have the contexts' shape (L, D), got {empty_context.shape}")
        self.empty_context = empty_context

    def __len__(self):
        return len(self.x)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])

    @property
    def num_classes(self) -> int | None:
        """1 + the largest label, for labelled data."""
        return int(self.cond.max()) + 1 if self.cond is not None and self.cond.ndim == 1 else None

    def get(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(x float32 (b, C, H, W), cond) for the given example indices."""
        order = np.argsort(indices, kind="stable")  # sorted reads for memory maps, then back in order
        x = np.asarray(self.x[indices[order]])[np.argsort(order, kind="stable")]
        x = torch.from_numpy(np.ascontiguousarray(x))
        x = x.float() / 127.5 - 1.0 if x.dtype == torch.uint8 else x.float()
        cond = None if self.cond is None else torch.from_numpy(self.cond[indices])
        return x, cond


def _pick(archive, keys, what, path, required=True):
    for key in keys:
        if key in archive:
            return archive[key]
    if required:
        raise ValueError(f"{path} has no {what} (looked for the keys {', '.join(keys)}; it has "
                         f"{', '.join(archive.files) or 'none'})")
    return None


def _read(path, fn, *args, **kwargs):
    """fn(*args, **kwargs), a truncated or foreign file reported as one ValueError."""
    try:
        return fn(*args, **kwargs)
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"could not read {path}: {e}") from None


def load_dataset(path: str | os.PathLike, labels: str | os.PathLike | None = None,
                 image_size: int | None = None, channels: int | None = None) -> ArrayDataset:
    """Load ``.npz`` / ``.npy`` arrays or a folder of images (see the module docstring).
    ``channels`` (the model's) tells (N, H, W, C) arrays from (N, C, H, W) ones."""
    path = os.fspath(path)
    if os.path.isdir(path):
        if labels is not None:
            raise ValueError("labels= applies to .npy data; an image folder takes its labels from sub-folders")
        return load_image_folder(path, image_size, channels or 3)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data not found: {path}")
    if path.endswith(".npz"):
        with _read(path, np.load, path, allow_pickle=False) as archive:
            x = _pick(archive, _DATA_KEYS, "data array", path)
            cond = _pick(archive, _LABEL_KEYS, "labels", path, required=False)
            if cond is None:
                cond = _pick(archive, _CONTEXT_KEYS, "contexts", path, required=False)
            empty = archive["empty_context"] if "empty_context" in archive else None
    elif path.endswith(".npy"):
        x, cond, empty = _read(path, np.load, path, mmap_mode="r", allow_pickle=False), None, None
    else:
        raise ValueError(f"data must be a .npz, a .npy or a folder of images, got {path}")
    if labels is not None:
        if cond is not None:
            raise ValueError(f"{path} already holds labels; do not pass labels= as well")
        labels = os.fspath(labels)
        if not os.path.isfile(labels):
            raise FileNotFoundError(f"labels not found: {labels}")
        cond = _read(labels, np.load, labels, allow_pickle=False)
    return ArrayDataset(x, cond, empty, channels=channels)


def load_image_folder(folder: str, image_size: int | None, channels: int = 3) -> ArrayDataset:
    """Images of ``folder`` (one sub-folder per class, or flat), resized and centre-cropped to
    ``image_size`` (required unless they all share one square size), as uint8 (N, C, H, W)."""
    from PIL import Image

    def images_in(d):
        return sorted(os.path.join(d, f) for f in os.listdir(d)
                      if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(d, f)))

    classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    files, labels = images_in(folder), None
    if classes:
        if files:
            raise ValueError(f"{folder} mixes images and class sub-folders; use one or the other")
        per_class = [images_in(os.path.join(folder, c)) for c in classes]
        files = [f for fs in per_class for f in fs]
        labels = np.array([i for i, fs in enumerate(per_class) for _ in fs], dtype=np.int64)
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}")
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise ValueError(f"image folders give 1 or 3 channels, the model wants {channels}")
    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                im = im.convert(mode)
                size = image_size or im.size[0]
                if image_size is None and im.size != (size, size):
                    raise ValueError(f"{f} is {im.size[0]}x{im.size[1]}; give image_size to resize")
                scale = size / min(im.size)
                im = im.resize((max(size, round(im.size[0] * scale)), max(size, round(im.size[1] * scale))),
                               Image.BICUBIC)
                left, top = (im.size[0] - size) // 2, (im.size[1] - size) // 2
                arr = np.asarray(im.crop((left, top, left + size, top + size)), dtype=np.uint8)
        except OSError as e:
            raise ValueError(f"could not read image {f}: {e}") from None
        out.append(arr.reshape(size, size, channels).transpose(2, 0, 1))
    return ArrayDataset(np.stack(out), labels)


def _stream_seed(seed: int, stream: int, index: int) -> int:
    """A 63-bit seed for item ``index`` of random stream ``stream`` (reproducible, well mixed)."""
    h = (seed * 0x9E3779B97F4A7C15 + stream * 0xBF58476D1CE4E5B9 + index * 0x94D049BB133111EB) % (1 << 64)
    h ^= h >> 31
    return (h * 0xD6E8FEB86659FD93 % (1 << 64)) >> 1


class BatchOrder:
    """The examples of global batch ``step``: consecutive positions of an endless stream made of one
    fresh permutation of the dataset per epoch, seeded by (seed, epoch)."""

    def __init__(self, num_examples: int, batch_size: int, seed: int = 0):
        self.n, self.batch_size, self.seed = num_examples, batch_size, seed
        self._cache: dict[int, np.ndarray] = {}

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._cache:
            if len(self._cache) > 4:
                self._cache.clear()
            g = torch.Generator().manual_seed(_stream_seed(self.seed, 1, epoch))
            self._cache[epoch] = torch.randperm(self.n, generator=g).numpy()
        return self._cache[epoch]

    def indices(self, step: int) -> np.ndarray:
        positions = np.arange(step * self.batch_size, (step + 1) * self.batch_size)
        epochs, offsets = positions // self.n, positions % self.n
        return np.concatenate([self._permutation(int(e))[offsets[epochs == e]] for e in np.unique(epochs)])
