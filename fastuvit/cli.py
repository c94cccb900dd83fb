"""The ``fastuvit`` command.

    fastuvit demo   [--steps N] [--out DIR] [--device D] [--seed S]
    fastuvit train  (--config NAME | --variant uvit|uvit_t2i) [--set KEY=VALUE ...] --data PATH --out DIR [...]
    fastuvit sample (--run DIR | --config NAME --checkpoint FILE) --out FILE.png|FILE.npz [...]

``train`` runs in one process, or under ``torchrun --nproc_per_node N -m fastuvit train ...`` with
DDP (default) or FSDP2 (``--strategy fsdp``). Bad arguments or files end with a one-line error on
stderr and exit status 2 (``FASTUVIT_DEBUG=1`` shows the traceback instead).
"""
from __future__ import annotations

import argparse
import ast
import os
import sys

EXIT_USAGE = 2


class UsageError(Exception):
    """A user mistake: printed as one line, exit status 2."""

    def __init__(self, message, prog="fastuvit"):
        super().__init__(message)
        self.prog = prog


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of usage + message
        raise UsageError(message, self.prog)


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _key_value(text):
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key, ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return key, value  # a bare string


def _int_list(text):
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    from .demo import DEFAULTS
    from .distributed import STRATEGIES
    from .sampling import SAMPLERS
    from .training import PRECISIONS, TrainConfig

    parser = _Parser(prog="fastuvit", description="Train and sample U-ViT diffusion models.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = sub.add_parser("demo", help="train a small U-ViT on 8x8 digits and draw guided samples (CPU, minutes)")
    demo.add_argument("--steps", type=_positive_int, default=DEFAULTS["steps"], help="training steps (%(default)s)")
    demo.add_argument("--out", default="fastuvit-demo", help="output folder (%(default)s)")
    demo.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if present)")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--batch-size", type=_positive_int, default=DEFAULTS["batch_size"])
    demo.add_argument("--sample-steps", type=_positive_int, default=DEFAULTS["sample_steps"],
                      help="DPM-Solver model evaluations (%(default)s)")
    demo.add_argument("--guidance-scale", type=float, default=DEFAULTS["guidance_scale"])
    demo.add_argument("--threads", type=_positive_int, default=None,
                      help="CPU threads (default: all cores but one, so a busy neighbour cannot stall it)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")

    defaults = TrainConfig()
    train = sub.add_parser("train", help="train a U-ViT on .npz/.npy images or latents, or an image folder")
    _add_model_arguments(train)
    train.add_argument("--data", required=True, help=".npz (x/images/latents + y/labels or context), .npy, or a "
                                                     "folder of images (one sub-folder per class)")
    train.add_argument("--labels", help=".npy of labels for .npy data")
    train.add_argument("--out", required=True, help="run folder: train_state.pt, nnet.pth, nnet_ema.pth, run.json")
    train.add_argument("--steps", type=_positive_int, default=defaults.steps)
    train.add_argument("--batch-size", type=_positive_int, default=defaults.batch_size, help="global batch")
    train.add_argument("--lr", type=float, default=defaults.lr)
    train.add_argument("--weight-decay", type=float, default=defaults.weight_decay)
    train.add_argument("--adam-betas", type=float, nargs=2, default=defaults.betas, metavar=("B1", "B2"))
    train.add_argument("--warmup-steps", type=int, default=defaults.warmup_steps)
    train.add_argument("--ema-rate", type=float, default=defaults.ema_rate)
    train.add_argument("--precision", choices=list(PRECISIONS), default=defaults.precision)
    train.add_argument("--label-dropout", type=float, default=defaults.label_dropout,
                       help="probability of the null label / empty context (%(default)s)")
    train.add_argument("--null-label", type=int, default=None, help="default: num_classes - 1")
    train.add_argument("--grad-clip", type=float, default=None)
    train.add_argument("--grad-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                       help="activation checkpointing per block (default: the config's use_checkpoint)")
    train.add_argument("--schedule", choices=["discrete", "continuous"], default=None,
                       help="default: the official one of --config, else discrete")
    train.add_argument("--strategy", choices=list(STRATEGIES), default="ddp", help="under torchrun (%(default)s)")
    train.add_argument("--save-every", type=_positive_int, default=1000)
    train.add_argument("--resume", action="store_true", help="continue from OUT/train_state.pt if it exists")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--device", default=None)
    train.add_argument("--no-progress", action="store_true")

    smp = sub.add_parser("sample", help="sample a trained or released model to a PNG grid or an .npz")
    smp.add_argument("--run", help="a run folder written by fastuvit train / demo")
    _add_model_arguments(smp)
    smp.add_argument("--checkpoint", help="weights: .pth (the released nnet.pth / nnet_ema.pth) or .safetensors")
    smp.add_argument("--out", required=True, help="FILE.png (a grid, 1 or 3 channels) or FILE.npz (samples)")
    smp.add_argument("--labels", type=_int_list, help="class labels, a row each (default 0..9)")
    smp.add_argument("--per-label", type=_positive_int, default=8, help="samples per label (%(default)s)")
    smp.add_argument("--n", type=_positive_int, default=64, help="samples of an unconditional model (%(default)s)")
    smp.add_argument("--context", help=".npy (N, L, D) text contexts of a text-to-image model")
    smp.add_argument("--empty-context", help=".npy (L, D): the empty context, for guidance")
    smp.add_argument("--guidance-scale", type=float, default=None, help="default: the official one, else 0")
    smp.add_argument("--null-label", type=int, default=None, help="default: the run's, else num_classes - 1")
    smp.add_argument("--sampler", choices=list(SAMPLERS), default=None)
    smp.add_argument("--steps", type=_positive_int, default=None, help="model evaluations")
    smp.add_argument("--schedule", choices=["discrete", "continuous"], default=None)
    smp.add_argument("--precision", choices=list(PRECISIONS), default="fp32", help="autocast of the network")
    smp.add_argument("--batch-size", type=_positive_int, default=64)
    smp.add_argument("--seed", type=int, default=0)
    smp.add_argument("--device", default=None)
    smp.add_argument("--no-progress", action="store_true")
    return parser


def _add_model_arguments(p):
    p.add_argument("--config", help="a released config name (e.g. imagenet256_uvit_huge)")
    p.add_argument("--variant", choices=["uvit", "uvit_t2i"], help="without --config: the model class")
    p.add_argument("--set", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="a model constructor argument (repeatable), e.g. --set embed_dim=256")


def _model_spec(args) -> tuple[str, dict]:
    """(variant, kwargs) from --config / --variant and --set."""
    from .configs import model_config

    overrides = dict(args.set)
    if args.config:
        if args.variant:
            raise UsageError("give --config or --variant, not both")
        return model_config(args.config, **overrides)
    if not args.variant:
        raise UsageError("give a model: --config NAME, or --variant uvit|uvit_t2i with --set KEY=VALUE arguments")
    return args.variant, overrides


def _build_model(variant, kwargs):
    from .model import UViT, UViTT2I

    try:
        return (UViTT2I if variant == "uvit_t2i" else UViT)(**kwargs)
    except TypeError as e:
        raise UsageError(f"bad model arguments: {e}") from None


# ---------------------------------------------------------------------------------------------------
def cmd_demo(args):
    from .demo import run_demo

    run_demo(out=args.out, steps=args.steps, device=args.device, seed=args.seed, batch_size=args.batch_size,
             sample_steps=args.sample_steps, guidance_scale=args.guidance_scale, threads=args.threads,
             progress=not args.no_progress,
             log=lambda line: print(line, file=sys.stderr))


def cmd_train(args):
    import torch

    from .data import load_dataset
    from .distributed import init_distributed
    from .sampling import OFFICIAL_SAMPLING
    from .training import TrainConfig, Trainer, save_run_info

    variant, kwargs = _model_spec(args)
    schedule = args.schedule or OFFICIAL_SAMPLING.get(args.config or "", {}).get("schedule", "discrete")
    config = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                         betas=tuple(args.adam_betas), warmup_steps=args.warmup_steps, ema_rate=args.ema_rate,
                         precision=args.precision, label_dropout=args.label_dropout, null_label=args.null_label,
                         grad_clip=args.grad_clip, grad_checkpointing=args.grad_checkpointing, schedule=schedule,
                         seed=args.seed)
    info, device = init_distributed(args.device)
    try:
        torch.manual_seed(args.seed)  # the same initial weights in every process
        model = _build_model(variant, kwargs)
        dataset = load_dataset(args.data, labels=args.labels, image_size=model.img_size, channels=model.in_chans)
        trainer = Trainer(model, dataset, config, device=device, strategy=args.strategy)
        state_path = os.path.join(args.out, "train_state.pt")
        if args.resume and os.path.isfile(state_path):
            trainer.load(state_path)
            if info.is_main:
                print(f"resumed from {state_path} at step {trainer.step}", file=sys.stderr)
        if info.is_main:
            os.makedirs(args.out, exist_ok=True)
            save_run_info(args.out, variant, kwargs, schedule, null_label=trainer.null_label, config=args.config,
                          train=dict(vars(config)), world_size=info.world_size)
        trainer.fit(progress=not args.no_progress, save_every=args.save_every, save_path=state_path)
        if info.is_main:
            print(f"trained to step {trainer.step}: {os.path.join(args.out, 'nnet_ema.pth')}", file=sys.stderr)
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _load_npy(path, what):
    import numpy as np

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise ValueError(f"could not read {what} {path}: {e}") from None


def cmd_sample(args):
    import numpy as np
    import torch

    from .checkpoint import load_checkpoint
    from .distributed import init_distributed
    from .images import save_grid
    from .sampling import OFFICIAL_SAMPLING, default_null_label, sample
    from .training import PRECISIONS, load_run

    out_kind = os.path.splitext(args.out)[1].lower()
    if out_kind not in (".png", ".npz"):
        raise UsageError(f"--out must end in .png or .npz, got {args.out}")
    official = {}
    if args.run:
        if args.config or args.variant or args.set or args.checkpoint:
            raise UsageError("--run takes the model and weights from the run folder; drop --config/--variant/--set/"
                             "--checkpoint")
        model, run = load_run(args.run)
        schedule, null_label = run.get("schedule", "discrete"), run.get("null_label")
        official = OFFICIAL_SAMPLING.get(run.get("config") or "", {})
    else:
        if not args.checkpoint:
            raise UsageError("give --run DIR, or a model (--config/--variant) and --checkpoint FILE")
        variant, kwargs = _model_spec(args)
        model = load_checkpoint(_build_model(variant, kwargs), args.checkpoint)
        official = OFFICIAL_SAMPLING.get(args.config or "", {})
        schedule, null_label = official.get("schedule", "discrete"), None
    schedule = args.schedule or schedule
    sampler = args.sampler or official.get("sampler", "dpm_solver")
    steps = args.steps or official.get("steps", 50)
    scale = args.guidance_scale if args.guidance_scale is not None else official.get("guidance_scale", 0.0)
    null_cond = args.null_label if args.null_label is not None else null_label

    _, device = init_distributed(args.device)
    model = model.to(device).eval()
    text = hasattr(model, "context_embed")
    cond, ncol = None, 8
    if text:
        if not args.context:
            raise UsageError("a text-to-image model needs --context FILE.npy (N, L, D)")
        cond = torch.from_numpy(_load_npy(args.context, "context").astype(np.float32))
        expected = (model.num_clip_token, model.clip_dim)
        if cond.dim() != 3 or tuple(cond.shape[1:]) != expected:
            raise ValueError(f"--context must be (N, {expected[0]}, {expected[1]}), got {tuple(cond.shape)}")
        if scale != 0:
            if not args.empty_context:
                raise UsageError("guidance needs --empty-context FILE.npy (L, D); or --guidance-scale 0")
            null_cond = torch.from_numpy(_load_npy(args.empty_context, "empty context").astype(np.float32))
    elif getattr(model, "num_classes", -1) > 0:
        null_cond = default_null_label(model) if null_cond is None else null_cond
        labels = args.labels if args.labels is not None else [
            v for v in range(min(11, model.num_classes)) if v != null_cond][:10]
        bad = [v for v in labels if not 0 <= v < model.num_classes]
        if not labels or bad:
            raise UsageError(f"--labels must be in [0, {model.num_classes}), got {bad or 'none'}")
        cond = torch.tensor(labels).repeat_interleave(args.per_label)
        ncol = args.per_label
    else:
        if scale != 0:
            raise UsageError("an unconditional model cannot be guided: use --guidance-scale 0")
    n = len(cond) if cond is not None else args.n
    if out_kind == ".png" and model.in_chans not in (1, 3):
        raise UsageError(f"the model makes {model.in_chans}-channel samples (latents?): write them to an .npz")

    generator = torch.Generator().manual_seed(args.seed)
    noise = torch.randn(n, model.in_chans, model.img_size, model.img_size, generator=generator)
    sde_generator = torch.Generator(device).manual_seed(args.seed)
    outs = []
    for i in range(0, n, args.batch_size):
        part = slice(i, i + args.batch_size)
        with torch.no_grad():
            outs.append(sample(model, noise[part].to(device), None if cond is None else cond[part].to(device),
                               schedule=schedule, sampler=sampler, steps=steps, guidance_scale=scale,
                               null_cond=null_cond, autocast_dtype=PRECISIONS[args.precision],
                               generator=sde_generator, progress=not args.no_progress).cpu())
    samples = torch.cat(outs)
    if out_kind == ".png":
        path = save_grid(samples, args.out, ncol=ncol, scale=max(1, 64 // model.img_size))
    else:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        extra = {} if cond is None or text else {"labels": cond.numpy()}
        np.savez(args.out, samples=samples.numpy(), **extra)
        path = args.out
    print(f"{n} samples ({sampler}, {steps} steps, guidance {scale}): {path}", file=sys.stderr)


COMMANDS = {"demo": cmd_demo, "train": cmd_train, "sample": cmd_sample}


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        COMMANDS[args.command](args)
    except UsageError as e:
        print(f"{e.prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, TypeError, FileNotFoundError, IsADirectoryError, PermissionError) as e:
        if os.environ.get("FASTUVIT_DEBUG") == "1":  # the traceback, for bug reports
            raise
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"fastuvit: error: {message}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("fastuvit: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
