"""Test setup. Without a GPU, Triton kernels run in Triton's interpreter: TRITON_INTERPRET must be
set before any kernel module (fastuvit.kernels.*) is imported, so it is set here, first.
(``torch.cuda.is_available`` does not import Triton.)"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)
