"""Where each fused op runs (DESIGN.md §3).

- CUDA tensors and Triton importable -> the Triton kernels.
- CPU tensors -> the eager fallback, except under ``TRITON_INTERPRET=1``, where the Triton kernels
  run in Triton's interpreter (that is how the test suite checks them without a GPU).

Nothing here imports Triton at module load: ``import fastuvit`` works without it.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
import threading

import torch

_state = threading.local()


_triton_available: bool | None = None


def triton_available() -> bool:
    """Triton is importable (a CPU-only torch may come without it). Cached in a plain global, not
    ``functools.lru_cache``, which dynamo warns about when it traces a caller."""
    global _triton_available
    if _triton_available is None:
        _triton_available = _import_triton()
    return _triton_available


def _import_triton() -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # a broken install counts as absent, not as a crash at dispatch time
        return False
    return True


def interpreting() -> bool:
    """Triton kernels run in the interpreter (read per call: tests may set it late)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def kernels_enabled() -> bool:
    return getattr(_state, "kernels_enabled", True) and os.environ.get("FASTUVIT_DISABLE_KERNELS", "0") != "1"


@contextlib.contextmanager
def eager_fallback():
    """Run the eager fallbacks instead of the Triton kernels inside this block (this thread), e.g.
    to bisect a numerical difference, or to keep the interpreter out of CPU runs that do not test
    kernels. ``FASTUVIT_DISABLE_KERNELS=1`` does the same process-wide. The fused ops read it when
    they run; a ``torch.compile``-d function that already traced attention with ``backend="auto"``
    keeps the backend it traced (recompile, or pass a backend, to change it)."""
    previous = getattr(_state, "kernels_enabled", True)
    _state.kernels_enabled = False
    try:
        yield
    finally:
        _state.kernels_enabled = previous


def use_triton(*tensors: torch.Tensor) -> bool:
    """True when the Triton kernels should run for these tensors (all on one device)."""
    if not kernels_enabled() or not triton_available():
        return False
    device_type = tensors[0].device.type
    if device_type == "cuda":
        return not interpreting()
    if device_type == "cpu":
        return interpreting()
    return False
