"""Reading and writing model weights: the released ``.pth`` files (plain state dicts, read with
``torch.load(weights_only=True)``, so a pickle never runs code) and safetensors.

A state dict that does not fit the model is refused with one ``ValueError`` naming the missing,
unexpected and mis-shaped keys. Writes go to a temporary file in the same folder and are renamed
into place, so an interrupted save never leaves a half-written file under the target name.
"""
from __future__ import annotations

import os
import pickle
import tempfile
from typing import Mapping

import torch

# Prefixes that wrappers add to every key: DDP / DataParallel, and torch.compile's OptimizedModule.
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def _is_safetensors(path: str) -> bool:
    return str(path).endswith(".safetensors")


def load_state_dict_file(path: str | os.PathLike, map_location="cpu") -> dict[str, torch.Tensor]:
    """Read a state dict from ``.pth``/``.pt``/``.bin`` (torch.save) or ``.safetensors``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        if _is_safetensors(path):
            from safetensors.torch import load_file

            device = map_location if isinstance(map_location, str) else "cpu"
            state = load_file(path, device=device)
        else:
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise ValueError(f"refused to load {path}: it is not a plain tensor checkpoint (weights_only=True "
                         f"rejects pickled code and objects): {str(e).splitlines()[0]}") from None
    except Exception as e:  # truncated or corrupted file
        raise ValueError(f"could not read checkpoint {path} (truncated or corrupted?): "
                         f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors), "
                         f"got {type(state).__name__}")
    return strip_wrapper_prefixes(dict(state))


def strip_wrapper_prefixes(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop a ``module.`` / ``_orig_mod.`` prefix that every key carries (DDP, torch.compile)."""
    changed = True
    while changed and state:
        changed = False
        for prefix in _WRAPPER_PREFIXES:
            if all(k.startswith(prefix) for k in state):
                state = {k[len(prefix):]: v for k, v in state.items()}
                changed = True
    return state


def state_dict_mismatch(model: torch.nn.Module, state: Mapping[str, torch.Tensor]) -> str | None:
    """None when ``state`` fits ``model`` exactly; else a message listing every difference."""
    return shape_mismatch({k: v.shape for k, v in model.state_dict().items()}, state)


def shape_mismatch(expected: Mapping[str, tuple], state: Mapping[str, torch.Tensor]) -> str | None:
    """None when ``state`` has exactly the keys of ``expected`` ({key: shape}) with those shapes; else
    a message listing the missing, unexpected and mis-shaped keys."""
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = sorted(
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k])}"
        for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k])
    )
    if not (missing or unexpected or misshaped):
        return None
    parts = []
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("mis-shaped keys", misshaped)):
        if items:
            shown = ", ".join(items[:20]) + (f", ... ({len(items) - 20} more)" if len(items) > 20 else "")
            parts.append(f"{title} ({len(items)}): {shown}")
    return "; ".join(parts)


def load_checkpoint(model: torch.nn.Module, checkpoint, strict: bool = True) -> torch.nn.Module:
    """Load a path (``.pth``/``.safetensors``) or a state dict into ``model``; returns ``model``.

    With ``strict=True`` (default) a checkpoint of another model raises ``ValueError`` listing the
    missing, unexpected and mis-shaped keys, and the model is left untouched.
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        state = load_state_dict_file(checkpoint)
    elif isinstance(checkpoint, Mapping):
        state = strip_wrapper_prefixes(dict(checkpoint))
    else:
        raise TypeError(f"checkpoint must be a path or a state dict, got {type(checkpoint).__name__}")
    problem = state_dict_mismatch(model, state)
    if problem is not None and strict:
        raise ValueError(f"checkpoint does not fit {type(model).__name__}: {problem}")
    if problem is not None:  # non-strict still refuses shape mismatches, which load_state_dict cannot take
        expected = model.state_dict()
        state = {k: v for k, v in state.items() if k in expected and v.shape == expected[k].shape}
    model.load_state_dict(state, strict=strict)
    return model


def atomic_save(obj, path: str | os.PathLike, save_fn=None) -> None:
    """Write ``obj`` with ``save_fn(obj, tmp_path)`` (default ``torch.save``) to a temporary file
    beside ``path``, fsync it, and rename it over ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=folder)
    os.close(fd)
    try:
        (save_fn or torch.save)(obj, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_state_dict(model_or_state, path: str | os.PathLike) -> None:
    """Save weights as ``.safetensors`` (by extension) or with ``torch.save``, atomically."""
    state = model_or_state.state_dict() if isinstance(model_or_state, torch.nn.Module) else dict(model_or_state)
    state = {k: v.detach().contiguous() for k, v in state.items()}
    if _is_safetensors(os.fspath(path)):
        from safetensors.torch import save_file

        atomic_save(state, path, save_fn=lambda obj, p: save_file(obj, p))
    else:
        atomic_save(state, path)


def load_model(name: str, checkpoint, **overrides) -> torch.nn.Module:
    """``create_model(name, **overrides)`` with the weights of ``checkpoint`` (strict)."""
    from .configs import create_model

    return load_checkpoint(create_model(name, **overrides), checkpoint)
