"""``fastuvit demo``: a class-conditional U-ViT trained on scikit-learn's 8x8 handwritten digits
(``load_digits``: 1797 images shipped inside the package, no download), then guided samples.

Writes to ``out``: ``samples.png`` (a row per digit 0-9), ``loss.png`` (the training loss curve),
and a run folder (``run.json``, ``nnet.pth``, ``nnet_ema.pth``) that ``fastuvit sample --run`` reads.
The defaults take a few minutes on a 2-core CPU.
"""
from __future__ import annotations

import os
import time

import numpy as np
import torch

from .data import ArrayDataset
from .distributed import init_distributed
from .images import plot_losses, save_grid
from .model import UViT
from .sampling import sample
from .training import TrainConfig, Trainer, save_run_info

# 16 tokens of 2x2 pixels, 10 digit classes + the null class (10) for guidance.
DIGITS_MODEL = dict(img_size=8, patch_size=2, in_chans=1, embed_dim=64, depth=6, num_heads=4, mlp_ratio=4,
                    num_classes=11)
# Tuned for a recognisable grid in a few CPU minutes: a higher lr and Adam betas suited to a short run
# on a small batch (the official (0.99, 0.99) suit batch 1024 over 500k steps), a fast EMA, guidance 2.
DEFAULTS = dict(steps=2000, batch_size=128, lr=2e-3, betas=(0.9, 0.999), warmup_steps=50, ema_rate=0.995,
                label_dropout=0.1, schedule="continuous", sample_steps=30, guidance_scale=2.0, per_digit=10)


def digits_dataset() -> ArrayDataset:
    """scikit-learn's digits as (1797, 1, 8, 8) floats in [-1, 1] (ink 16 -> 1) with labels 0-9."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = digits.images.astype(np.float32)[:, None] / 8.0 - 1.0
    return ArrayDataset(x, digits.target.astype(np.int64))


def default_cpu_threads() -> int:
    """All cores but one (at least one). The demo's matrices are small: a second thread gains ~1.5x
    on an idle 2-core machine, but when another process keeps one core busy, OpenMP threads waiting
    on each other make a 2-thread step ~10x slower than a 1-thread one."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(torch.get_num_threads(), cores - 1))


def run_demo(out: str = "fastuvit-demo", steps: int = DEFAULTS["steps"], device: str | None = None, seed: int = 0,
             batch_size: int = DEFAULTS["batch_size"], sample_steps: int = DEFAULTS["sample_steps"],
             guidance_scale: float = DEFAULTS["guidance_scale"], threads: int | None = None, progress: bool = True,
             log=print) -> dict:
    """Train, sample, write the PNGs; returns their paths and the times taken (seconds).
    ``threads``: CPU threads (default ``default_cpu_threads()``)."""
    previous_threads = torch.get_num_threads()
    _, device = init_distributed(device)
    if device.type == "cpu":
        torch.set_num_threads(threads or default_cpu_threads())
    try:
        return _run(out, steps, device, seed, batch_size, sample_steps, guidance_scale, progress, log)
    finally:
        torch.set_num_threads(previous_threads)


def _run(out, steps, device, seed, batch_size, sample_steps, guidance_scale, progress, log):
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = UViT(**DIGITS_MODEL)
    config = TrainConfig(steps=steps, batch_size=batch_size, lr=DEFAULTS["lr"], betas=DEFAULTS["betas"],
                         warmup_steps=DEFAULTS["warmup_steps"], ema_rate=DEFAULTS["ema_rate"],
                         label_dropout=DEFAULTS["label_dropout"], schedule=DEFAULTS["schedule"], seed=seed)
    trainer = Trainer(model, digits_dataset(), config, device=device)
    threads = torch.get_num_threads()
    log(f"training a {sum(p.numel() for p in model.parameters()) / 1e3:.0f}k-parameter U-ViT on 1797 8x8 digits "
        f"for {steps} steps of {batch_size} on {device}"
        + (f" ({threads} CPU thread{'s' * (threads > 1)})" if device.type == "cpu" else ""))
    losses = trainer.fit(progress=progress)
    train_s = time.perf_counter() - start

    os.makedirs(out, exist_ok=True)
    trainer.save(os.path.join(out, "train_state.pt"))
    save_run_info(out, "uvit", DIGITS_MODEL, config.schedule, null_label=trainer.null_label, step=trainer.step,
                  data="sklearn load_digits, [-1, 1]")

    sample_start = time.perf_counter()
    per_digit = DEFAULTS["per_digit"]
    labels = torch.arange(10, device=device).repeat_interleave(per_digit)  # a row per digit
    noise = torch.randn(len(labels), 1, 8, 8, generator=torch.Generator().manual_seed(seed)).to(device)
    samples = sample(trainer.ema, noise, labels, schedule=config.schedule, sampler="dpm_solver", steps=sample_steps,
                     guidance_scale=guidance_scale)
    sample_s = time.perf_counter() - sample_start
    paths = {
        "samples": save_grid(samples, os.path.join(out, "samples.png"), ncol=per_digit, scale=6),
        "loss": plot_losses(losses, os.path.join(out, "loss.png"), title="fastuvit demo: 8x8 digits"),
    }
    total_s = time.perf_counter() - start
    log(f"samples (a row per digit, guidance scale {guidance_scale}): {paths['samples']}")
    log(f"loss curve: {paths['loss']}")
    log(f"done in {total_s:.0f} s (training {train_s:.0f} s, sampling {sample_s:.1f} s); "
        f"final loss {np.mean(losses[-50:]):.4f}")
    return dict(paths, out=out, train_s=train_s, sample_s=sample_s, total_s=total_s, losses=losses)
