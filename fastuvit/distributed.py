"""Distributed training on PyTorch's own engine, launched with ``torchrun``: DDP, or FSDP2
(``torch.distributed.fsdp.fully_shard``, one shard group per transformer block, then the root).

``init_distributed`` reads torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK): NCCL on CUDA,
gloo on CPU. In a single process it does nothing, and ``wrap_model`` returns the model unchanged.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn

STRATEGIES = ("ddp", "fsdp")


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def dist_info() -> DistInfo:
    """This process's place: from the process group when there is one, else from torchrun's env."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)
    return DistInfo(int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1")), local_rank)


def init_distributed(device: str | torch.device | None = None) -> tuple[DistInfo, torch.device]:
    """Join torchrun's process group (when WORLD_SIZE > 1) and pick this process's device:
    ``cuda:LOCAL_RANK`` when CUDA is there (unless ``device`` says otherwise), else the CPU."""
    info = dist_info()
    if device is None:
        device = torch.device("cuda", info.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"device must be cpu, cuda or cuda:N, got {device!r}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} requested but CUDA is not available")
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", info.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if info.distributed and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        info = dist_info()
    return info, device


def wrap_model(model: nn.Module, strategy: str | None, device: torch.device) -> nn.Module:
    """DDP or FSDP2 around ``model`` (already on ``device``); unchanged without a process group.
    FSDP2 shards each U-ViT block (``in_blocks``, ``mid_block``, ``out_blocks``) and then the rest."""
    if strategy not in (None, *STRATEGIES):
        raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)} or None, got {strategy!r}")
    if strategy is None or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return model
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    shard_blocks(model)
    return model


def shard_blocks(model: nn.Module) -> nn.Module:
    """``fully_shard`` each block, then the root module (FSDP2; the module becomes an FSDPModule)."""
    from torch.distributed.fsdp import fully_shard

    blocks = [*getattr(model, "in_blocks", []), *([model.mid_block] if hasattr(model, "mid_block") else []),
              *getattr(model, "out_blocks", [])]
    for block in blocks:
        fully_shard(block)
    fully_shard(model)
    return model


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (FSDP2 modules are their own module)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """The mean over processes (a no-op in one process)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        value = value.clone()
        dist.all_reduce(value)
        value /= dist.get_world_size()
    return value


def barrier() -> None:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()
