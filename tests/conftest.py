"""Test setup. Without a GPU, Triton kernels run in Triton's interpreter: TRITON_INTERPRET must be
set before any kernel module (fastuvit.kernels.*) is imported, so it is set here, first.
(``torch.cuda.is_available`` does not import Triton.)"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# No test downloads: the CLIP tests use a tiny local model, and a hub id must fail at once, not time out.
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    """``cuda`` tests need a GPU; ``interpreter`` tests run the kernels on CPU tensors, which only
    Triton's interpreter can do (on a GPU machine the ``cuda`` tests cover the same kernels)."""
    skips = {}
    if not torch.cuda.is_available():
        skips["cuda"] = pytest.mark.skip(reason="needs a CUDA device")
    if os.environ.get("TRITON_INTERPRET") != "1":
        skips["interpreter"] = pytest.mark.skip(reason="runs the kernels on CPU tensors: needs TRITON_INTERPRET=1")
    for item in items:
        for marker, skip in skips.items():
            if marker in item.keywords:
                item.add_marker(skip)
