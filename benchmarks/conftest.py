"""Benchmarks run on CUDA at the released configs' shapes; without a GPU they run at tiny shapes
as smoke tests (kernels through Triton's interpreter), so the harness never rots."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
