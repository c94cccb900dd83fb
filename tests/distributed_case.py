"""The tiny training run shared by tests/test_distributed.py and tests/distributed_worker.py."""
import numpy as np
import torch

import fastuvit
from fastuvit.data import ArrayDataset
from fastuvit.training import TrainConfig, Trainer

MODEL = dict(img_size=4, patch_size=2, in_chans=1, embed_dim=16, depth=2, num_heads=2, num_classes=4)
STEPS, HALF = 4, 2
CONFIG = dict(steps=STEPS, batch_size=8, lr=1e-3, warmup_steps=2, ema_rate=0.9, label_dropout=0.25, seed=5)


def dataset():
    g = np.random.default_rng(0)
    return ArrayDataset(g.uniform(-1, 1, (20, 1, 4, 4)).astype(np.float32), g.integers(0, 3, 20))


def make_trainer(strategy=None):
    torch.manual_seed(0)  # the same initial weights in every process
    return Trainer(fastuvit.UViT(**MODEL), dataset(), TrainConfig(**CONFIG), device="cpu", strategy=strategy)
