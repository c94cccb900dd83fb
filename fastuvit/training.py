"""Training U-ViT as the official code does: noise-prediction MSE on x_t = alpha_t·x0 + sigma_t·eps
(discrete: n uniform in 1..1000 fed as n; continuous VP: t uniform in (0, 1) fed as 999·t), AdamW
(lr 2e-4, weight decay 0.03 on every parameter, betas (0.99, 0.99)), linear warm-up
``lr·min(step/warmup, 1)``, EMA of the weights (0.9999), label dropout to the null class (or the
empty context) for classifier-free guidance.

Beyond the official loop: bf16/fp16 autocast (fp16 with a GradScaler), activation checkpointing
(the model's ``use_checkpoint``), optional gradient clipping, DDP/FSDP2 through
``fastuvit.distributed``, and checkpoints holding the model, EMA, optimizer, scheduler, scaler, step
and RNG states, written atomically and resumable.

Determinism: the examples, times, noise and dropout of step k are drawn from generators seeded by
(seed, k) for the whole global batch, each process taking its slice. A resumed run therefore
repeats an uninterrupted one, and N processes compute the same global batch as one.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

from .checkpoint import atomic_save, save_state_dict
from .data import ArrayDataset, BatchOrder, _stream_seed
from .distributed import all_reduce_mean, barrier, dist_info, shard_blocks, wrap_model
from .sampling import NoiseSchedule, get_schedule

CHECKPOINT_FORMAT = "fastuvit.training/1"
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class TrainConfig:
    """Training hyper-parameters; the defaults are the official ImageNet-256 ones (batch aside)."""

    steps: int = 1000
    batch_size: int = 128  # global: split evenly over the processes
    lr: float = 2e-4
    weight_decay: float = 0.03
    betas: tuple[float, float] = (0.99, 0.99)
    warmup_steps: int = 5000
    ema_rate: float = 0.9999
    precision: str = "fp32"  # "bf16" or "fp16" autocast
    label_dropout: float = 0.1  # p_uncond: labels -> null class, contexts -> empty context
    null_label: int | None = None  # default num_classes - 1
    grad_clip: float | None = None
    grad_checkpointing: bool | None = None  # None: keep the model's use_checkpoint
    schedule: str = "discrete"  # or "continuous"
    seed: int = 0

    def __post_init__(self):
        self.betas = tuple(float(b) for b in self.betas)
        for name in ("steps", "batch_size", "warmup_steps", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < (1 if name == "batch_size" else 0):
                raise ValueError(f"{name} must be an int >= {1 if name == 'batch_size' else 0}, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be two numbers in [0, 1), got {self.betas}")
        if not 0 <= self.ema_rate <= 1:
            raise ValueError(f"ema_rate must be in [0, 1], got {self.ema_rate}")
        if not 0 <= self.label_dropout < 1:
            raise ValueError(f"label_dropout must be in [0, 1), got {self.label_dropout}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {self.grad_clip}")
        get_schedule(self.schedule)  # validates the name


def warmup_factor(step: int, warmup_steps: int) -> float:
    """The official ``customized`` schedule: ``min(step / warmup_steps, 1)`` (so step 0 has lr 0)."""
    return min(step / warmup_steps, 1.0) if warmup_steps > 0 else 1.0


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of an FSDP2 DTensor parameter, or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


@torch.no_grad()
def ema_update(ema: nn.Module, model: nn.Module, rate: float) -> None:
    """``ema = rate·ema + (1 − rate)·model`` over the parameters (same structure and sharding)."""
    ema_params = [_local(p) for p in ema.parameters()]
    params = [_local(p.detach()) for p in model.parameters()]
    if len(ema_params) != len(params):
        raise ValueError("ema and model have different parameter lists")
    torch._foreach_lerp_(ema_params, params, 1.0 - rate)


def noise_prediction_loss(model: nn.Module, x0: torch.Tensor, cond, schedule: NoiseSchedule, t: torch.Tensor,
                          noise: torch.Tensor, autocast_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Mean over the batch of the per-example mean squared error of the predicted noise at x_t."""
    alpha, sigma = schedule.training_coefficients(t)
    shape = (-1, *([1] * (x0.dim() - 1)))
    xt = alpha.view(shape) * x0 + sigma.view(shape) * noise
    timesteps = schedule.model_time(t).float()
    with torch.autocast(x0.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
        pred = model(xt, timesteps) if cond is None else model(xt, timesteps, cond)
    return (pred.float() - noise).pow(2).flatten(1).mean(1).mean()


def _rng_state() -> dict:
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Trains ``model`` (a ``fastuvit.UViT`` / ``UViTT2I``) on ``dataset`` (``fastuvit.data.ArrayDataset``).

    ``strategy``: None (one process), "ddp" or "fsdp" (under torchrun, after
    ``fastuvit.distributed.init_distributed``). ``trainer.ema`` holds the EMA weights (sample with it).
    """

    def __init__(self, model: nn.Module, dataset: ArrayDataset, config: TrainConfig | None = None, *,
                 device: str | torch.device | None = None, strategy: str | None = None):
        self.config = cfg = config or TrainConfig()
        self.info = dist_info()
        if self.info.distributed and not torch.distributed.is_initialized():
            raise ValueError("WORLD_SIZE > 1 but no process group: call fastuvit.distributed.init_distributed() first")
        if cfg.batch_size % self.info.world_size:
            raise ValueError(f"batch_size {cfg.batch_size} does not split evenly over {self.info.world_size} processes")
        self.local_batch = cfg.batch_size // self.info.world_size
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.autocast_dtype = PRECISIONS[cfg.precision]
        if cfg.precision == "fp16" and strategy == "fsdp":
            raise ValueError("precision fp16 is not supported with FSDP; use bf16")
        self.schedule = get_schedule(cfg.schedule)
        self.dataset = dataset
        self._check_model_and_data(model, dataset)
        self.order = BatchOrder(len(dataset), cfg.batch_size, cfg.seed)

        model = model.to(self.device)
        if cfg.grad_checkpointing is not None:
            for module in model.modules():
                if hasattr(module, "use_checkpoint"):
                    module.use_checkpoint = cfg.grad_checkpointing
        self.ema = copy.deepcopy(model).requires_grad_(False).eval()
        self.model = wrap_model(model, strategy, self.device)
        if strategy == "fsdp" and self.info.distributed:
            shard_blocks(self.ema)  # the same sharding as the model, so the EMA update is shard-local
        self.strategy = strategy
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, betas=cfg.betas,
                                           weight_decay=cfg.weight_decay)
        warmup = cfg.warmup_steps
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: warmup_factor(s, warmup))
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.precision == "fp16" else None
        self.step = 0

    # -- setup ---------------------------------------------------------------------------------
    def _check_model_and_data(self, model, dataset):
        cfg = self.config
        if not (getattr(model, "img_size", 0) and getattr(model, "in_chans", 0)):
            raise TypeError(f"model must be a fastuvit.UViT or UViTT2I, got {type(model).__name__}")
        expected = (model.in_chans, model.img_size, model.img_size)
        if dataset.shape != expected:
            raise ValueError(f"the data are {dataset.shape} (C, H, W) but the model takes {expected}")
        self.text = hasattr(model, "context_embed")
        num_classes = getattr(model, "num_classes", -1)
        self.conditional = self.text or num_classes > 0
        self.null_label = None
        self.empty_context = None
        if self.text:
            if dataset.cond is None or dataset.cond.ndim != 3:
                raise ValueError("a text-to-image model needs contexts (N, L, D) in the data")
            if cfg.label_dropout > 0:
                if dataset.empty_context is None:
                    raise ValueError("label_dropout > 0 for a text-to-image model needs the empty context "
                                     "(key 'empty_context' in the .npz)")
                self.empty_context = torch.from_numpy(dataset.empty_context).to(self.device)
        elif self.conditional:
            if dataset.cond is None or dataset.cond.ndim != 1:
                raise ValueError(f"the model is class-conditional ({num_classes} classes) but the data have no labels")
            self.null_label = num_classes - 1 if cfg.null_label is None else cfg.null_label
            if not 0 <= self.null_label < num_classes:
                raise ValueError(f"null_label must be in [0, {num_classes}), got {self.null_label}")
            if dataset.num_classes > num_classes:
                raise ValueError(f"labels go up to {dataset.num_classes - 1} but the model has {num_classes} classes")
            if cfg.label_dropout > 0 and bool((dataset.cond == self.null_label).any()):
                raise ValueError(f"the data use label {self.null_label}, the null class of label dropout; "
                                 f"give another null_label or num_classes + 1 classes")

    # -- one step --------------------------------------------------------------------------------
    def batch(self, step: int):
        """(x0, cond, t, noise) of this process for global step ``step``."""
        cfg, b, rank = self.config, self.local_batch, self.info.rank
        mine = slice(rank * b, (rank + 1) * b)
        x0, cond = self.dataset.get(self.order.indices(step)[mine])
        g = torch.Generator(self.device).manual_seed(_stream_seed(cfg.seed, 2, step))
        t = self.schedule.training_time(cfg.batch_size, g, self.device)[mine]
        noise = torch.randn((cfg.batch_size, *x0.shape[1:]), generator=g, device=self.device)[mine]
        drop = (torch.rand(cfg.batch_size, generator=g, device=self.device) < cfg.label_dropout)[mine]
        x0 = x0.to(self.device, non_blocking=True)
        if not self.conditional:
            cond = None
        else:
            cond = cond.to(self.device, non_blocking=True)
            if cfg.label_dropout > 0:
                if self.text:
                    cond = torch.where(drop[:, None, None], self.empty_context.expand_as(cond), cond)
                else:
                    cond = torch.where(drop, torch.full_like(cond, self.null_label), cond)
        return x0, cond, t, noise

    def train_step(self) -> dict:
        """One optimizer step; returns {"loss": mean over the global batch (tensor), "lr": float}."""
        self.model.train()
        x0, cond, t, noise = self.batch(self.step)
        loss = noise_prediction_loss(self.model, x0, cond, self.schedule, t, noise, self.autocast_dtype)
        self.optimizer.zero_grad(set_to_none=True)
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if self.config.grad_clip is not None:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if self.config.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            self.optimizer.step()
        self.scheduler.step()
        ema_update(self.ema, self.model, self.config.ema_rate)
        self.step += 1
        return {"loss": all_reduce_mean(loss.detach()), "lr": lr}

    def fit(self, steps: int | None = None, *, progress: bool = False, callback=None, save_every: int | None = None,
            save_path: str | None = None, log_every: int = 10) -> list[float]:
        """Train until ``steps`` (default ``config.steps``) steps are done; returns the per-step losses.

        ``callback(step, loss)`` runs every ``log_every`` steps and at the end; with ``save_path``, a
        checkpoint is written every ``save_every`` steps and at the end.
        """
        steps = self.config.steps if steps is None else steps
        bar = None
        if progress and self.info.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=steps, initial=min(self.step, steps), desc="train", unit="step", dynamic_ncols=True)
        losses, pending = [], []
        while self.step < steps:
            pending.append(self.train_step()["loss"])
            if bar is not None:
                bar.update(1)
            last = self.step == steps
            if self.step % log_every == 0 or last:
                values = torch.stack(pending).float().cpu().tolist()
                losses += values
                pending = []
                if bar is not None:
                    bar.set_postfix(loss=f"{sum(values) / len(values):.4f}")
                if callback is not None:
                    callback(self.step, values[-1])
            if save_path is not None and (last or (save_every and self.step % save_every == 0)):
                self.save(save_path)
        if bar is not None:
            bar.close()
        return losses

    # -- checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """The full training state, gathered on the CPU (under FSDP the main process gets the
        tensors, the others empty dicts). A collective call: every process must make it."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state, optim_state = get_state_dict(self.model, self.optimizer, options=options)
        ema_state = get_model_state_dict(self.ema, options=options)
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "model": model_state,
            "ema": ema_state,
            "optimizer": optim_state,
            "scheduler": self.scheduler.state_dict(),
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "rng": _rng_state(),
            "config": dataclasses.asdict(self.config),
        }

    def save(self, path: str, weights: bool = True) -> None:
        """Write the training state to ``path`` atomically (main process); with ``weights``, also
        ``nnet.pth`` and ``nnet_ema.pth`` (plain state dicts, the official names) beside it."""
        state = self.state_dict()
        if self.info.is_main:
            if weights:
                folder = os.path.dirname(os.path.abspath(path))
                save_state_dict(state["model"], os.path.join(folder, "nnet.pth"))
                save_state_dict(state["ema"], os.path.join(folder, "nnet_ema.pth"))
            atomic_save(state, path)
        barrier()

    def load(self, path: str) -> None:
        """Resume from a checkpoint written by ``save`` (any strategy or number of processes)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict, set_state_dict

        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise FileNotFoundError(f"checkpoint not found: {path}") from None
        except Exception as e:
            raise ValueError(f"could not read training checkpoint {path}: {str(e).splitlines()[0]}") from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{path} is not a fastuvit training checkpoint (format {CHECKPOINT_FORMAT})")
        options = StateDictOptions(full_state_dict=True)
        try:
            set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                           optim_state_dict=state["optimizer"], options=options)
            set_model_state_dict(self.ema, state["ema"], options=options)
        except (RuntimeError, KeyError, ValueError) as e:  # another model's checkpoint
            raise ValueError(f"{path} does not fit this model and optimizer: {str(e).splitlines()[0]}") from None
        self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"] is not None:
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        _set_rng_state(state["rng"])


# -- run folders: what `fastuvit train` / `fastuvit demo` write and `fastuvit sample --run` reads ----------
RUN_FILE = "run.json"


def save_run_info(folder: str, variant: str, model_kwargs: dict, schedule: str, null_label: int | None = None,
                  **extra) -> str:
    """Write ``run.json``: how to rebuild the model (``variant`` "uvit"/"uvit_t2i" and its kwargs)
    and sample from it (schedule, null label) — beside ``nnet.pth`` / ``nnet_ema.pth``."""
    import json

    info = dict(format=RUN_FILE, variant=variant, model=model_kwargs, schedule=schedule, null_label=null_label,
                **extra)
    path = os.path.join(folder, RUN_FILE)

    def write(obj, tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=2)

    atomic_save(info, path, save_fn=write)
    return path


def load_run(folder: str, ema: bool = True):
    """(model with the run's EMA (or raw) weights, run info) from a run folder."""
    import json

    from .checkpoint import load_checkpoint
    from .model import UViT, UViTT2I

    path = os.path.join(folder, RUN_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder} is not a run folder (no {RUN_FILE})")
    try:
        with open(path) as f:
            info = json.load(f)
        variant, kwargs = info["variant"], dict(info["model"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path} is not a valid run description: {e}") from None
    if variant not in ("uvit", "uvit_t2i"):
        raise ValueError(f"{path}: unknown variant {variant!r}")
    model = (UViTT2I if variant == "uvit_t2i" else UViT)(**kwargs)
    weights = os.path.join(folder, "nnet_ema.pth" if ema else "nnet.pth")
    return load_checkpoint(model, weights), info


__all__ = ["TrainConfig", "Trainer", "noise_prediction_loss", "ema_update", "warmup_factor",
           "CHECKPOINT_FORMAT", "PRECISIONS", "save_run_info", "load_run", "RUN_FILE"]
