"""A tiny deterministic training setup shared by tests/test_reliability.py and the child process it
kills (run as a script: ``python reliability_case.py FOLDER``)."""
import os
import sys

import numpy as np
import torch

import fastuvit
from fastuvit.data import ArrayDataset
from fastuvit.training import TrainConfig, Trainer

MODEL = dict(img_size=8, patch_size=2, in_chans=3, embed_dim=32, depth=2, num_heads=2, num_classes=5)


def make_trainer(steps: int, seed: int = 0, batch_size: int = 8) -> Trainer:
    torch.manual_seed(seed)
    torch.set_num_threads(1)  # the same reduction order in every process
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(seed)
    data = ArrayDataset(rng.integers(0, 256, (64, 3, 8, 8), dtype=np.uint8), rng.integers(0, 4, 64))
    config = TrainConfig(steps=steps, batch_size=batch_size, warmup_steps=10, lr=1e-3, ema_rate=0.99, seed=seed)
    return Trainer(fastuvit.UViT(**MODEL), data, config, device="cpu")


def _child(folder: str) -> None:
    """Train 6 steps and checkpoint; train on; the next checkpoint write blocks half-way (the parent
    SIGKILLs the process there)."""
    trainer = make_trainer(steps=12)
    path = os.path.join(folder, "train_state.pth")
    trainer.fit(6)
    trainer.save(path)
    trainer.fit(9)
    real_save = torch.save

    def stalled_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        with open(f, "r+b") as handle:  # leave a half-written file, as a crash mid-write would
            handle.truncate(os.path.getsize(f) // 2)
        print("WRITING", flush=True)
        import time

        time.sleep(600)

    torch.save = stalled_save
    trainer.save(path)


if __name__ == "__main__":
    os.environ["FASTUVIT_DISABLE_KERNELS"] = "1"
    _child(sys.argv[1])
