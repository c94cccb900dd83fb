"""The ``fastuvit`` command.

    fastuvit demo   [--steps N] [--out DIR] [--device D] [--seed S]
    fastuvit train  (--config NAME | --variant uvit|uvit_t2i) [--set KEY=VALUE ...] --data PATH --out DIR [...]
    fastuvit sample (--run DIR | --config NAME --checkpoint FILE) --out FILE.png|DIR/|FILE.npz
                    [--labels L,... | --prompt TEXT ... | --prompts FILE] [--autoencoder FILE] [--clip PATH_OR_ID] [...]

``train`` runs in one process, or under ``torchrun --nproc_per_node N -m fastuvit train ...`` with
DDP (default) or FSDP2 (``--strategy fsdp``). ``sample`` decodes a latent model's samples with the
Stable Diffusion autoencoder and encodes prompts with CLIP, both on the sampling device (the
``latent`` extra). Bad arguments or files, and a missing extra, end with a one-line error on stderr
and exit status 2 (``FASTUVIT_DEBUG=1`` shows the traceback instead).
"""
from __future__ import annotations

import argparse
import ast
import os
import sys
from typing import NamedTuple

from ._extras import MissingExtraError

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
    from .text import DEFAULT_CLIP
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

    smp = sub.add_parser("sample", help="sample a trained or released model to PNGs (a grid or one per sample) "
                                        "or an .npz")
    smp.add_argument("--run", help="a run folder written by fastuvit train / demo")
    _add_model_arguments(smp)
    smp.add_argument("--checkpoint", help="weights: .pth (the released nnet.pth / nnet_ema.pth) or .safetensors")
    smp.add_argument("--out", required=True, help="FILE.png (a grid), DIR/ (one PNG per sample) or FILE.npz (the "
                                                   "samples: a latent model's latents)")
    smp.add_argument("--labels", type=_int_list, help="class labels, a row each (default 0..9)")
    smp.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                     help="a prompt for a text-to-image model, a row each (repeatable)")
    smp.add_argument("--prompts", metavar="FILE", help="a text file of prompts, one a line (blank lines skipped)")
    smp.add_argument("--per-label", "--per-prompt", dest="per_label", type=_positive_int, default=8, metavar="N",
                     help="samples per label or prompt (%(default)s)")
    smp.add_argument("--n", type=_positive_int, default=64, help="samples of an unconditional model (%(default)s)")
    smp.add_argument("--clip", default=DEFAULT_CLIP, metavar="PATH_OR_ID",
                     help="the CLIP text encoder: a local folder or a hub id (%(default)s)")
    smp.add_argument("--context", help="instead of prompts: .npy (N, L, D) text contexts")
    smp.add_argument("--empty-context", help=".npy (L, D): the null context of guidance (default: CLIP's encoding "
                                             "of the empty prompt)")
    smp.add_argument("--autoencoder", metavar="FILE", help="a latent model's autoencoder, for pictures: the released "
                                                           "autoencoder_kl.pth / autoencoder_kl_ema.pth")
    smp.add_argument("--scale-factor", type=float, default=None,
                     help="the latents' scale factor (default: the config's: 0.18215, MS-COCO 0.23010)")
    smp.add_argument("--decode-batch-size", type=_positive_int, default=50,
                     help="latents decoded at a time (%(default)s)")
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


# -- fastuvit sample, step by step ----------------------------------------------------------------------
class _Plan(NamedTuple):
    """How to sample: the released config (None for others) and the sampler settings."""
    config: str | None
    schedule: str
    sampler: str
    steps: int
    guidance_scale: float
    null_label: int | None


class _Conditions(NamedTuple):
    """What to sample: a condition per sample (None: unconditional), the null one of guidance, a name
    tag per sample (for file names), the samples per grid row, and the prompt per sample (text models)."""
    cond: object
    null_cond: object
    tags: list
    ncol: int
    prompts: tuple = ()


def _output_kind(out: str) -> str:
    """"grid" (FILE.png), "folder" (DIR/: a PNG per sample) or "npz" (the samples themselves)."""
    if out.endswith(("/", os.sep)) or os.path.isdir(out):
        return "folder"
    kind = {".png": "grid", ".npz": "npz"}.get(os.path.splitext(out)[1].lower())
    if kind is None:
        raise UsageError(f"--out must end in .png or .npz, or be a folder (DIR/), got {out}")
    return kind


def _sampling_model(args):
    """The network (weights loaded, on the CPU) and the plan: the official settings of its config,
    overridden by the command's."""
    from .checkpoint import load_checkpoint
    from .sampling import OFFICIAL_SAMPLING
    from .training import load_run

    if args.run:
        if args.config or args.variant or args.set or args.checkpoint:
            raise UsageError("--run takes the model and weights from the run folder; drop --config/--variant/--set/"
                             "--checkpoint")
        model, run = load_run(args.run)
        config, schedule, null_label = run.get("config"), run.get("schedule", "discrete"), run.get("null_label")
    else:
        if not args.checkpoint:
            raise UsageError("give --run DIR, or a model (--config/--variant) and --checkpoint FILE")
        variant, kwargs = _model_spec(args)
        model = load_checkpoint(_build_model(variant, kwargs), args.checkpoint)
        config, null_label = args.config, None
        schedule = OFFICIAL_SAMPLING.get(config or "", {}).get("schedule", "discrete")
    official = OFFICIAL_SAMPLING.get(config or "", {})
    plan = _Plan(config=config, schedule=args.schedule or schedule,
                 sampler=args.sampler or official.get("sampler", "dpm_solver"),
                 steps=args.steps or official.get("steps", 50),
                 guidance_scale=args.guidance_scale if args.guidance_scale is not None
                 else official.get("guidance_scale", 0.0),
                 null_label=args.null_label if args.null_label is not None else null_label)
    return model, plan


def _model_kind(model) -> str:
    if hasattr(model, "context_embed"):
        return "text-to-image"
    return "class-conditional" if getattr(model, "num_classes", -1) > 0 else "unconditional"


def _check_condition_arguments(args, model, plan) -> None:
    """--labels for class-conditional models; --prompt/--prompts/--context for text-to-image ones."""
    kind = _model_kind(model)
    text_flags = [flag for flag, value in (("--prompt", args.prompt), ("--prompts", args.prompts),
                                           ("--context", args.context), ("--empty-context", args.empty_context))
                  if value]
    if kind != "text-to-image" and text_flags:
        use = ": use --labels" if kind == "class-conditional" else ""
        raise UsageError(f"{text_flags[0]} is for text-to-image models; this one is {kind}{use}")
    if kind != "class-conditional" and args.labels is not None:
        use = ": use --prompt TEXT or --prompts FILE" if kind == "text-to-image" else ""
        raise UsageError(f"--labels is for class-conditional models; this one is {kind}{use}")
    if kind == "text-to-image":
        if args.context and (args.prompt or args.prompts):
            raise UsageError("give --prompt/--prompts or --context, not both")
        if not (args.prompt or args.prompts or args.context):
            raise UsageError("a text-to-image model needs --prompt TEXT (repeatable), --prompts FILE or "
                             "--context FILE.npy")
    if kind == "unconditional" and plan.guidance_scale != 0:
        raise UsageError("an unconditional model cannot be guided: use --guidance-scale 0")


def _autoencoder(args, model, config, out_kind, device):
    """The autoencoder that turns a latent model's samples into pictures (None for pixel models and
    for .npz output), on the sampling device; or a one-line error naming the file the config uses."""
    from .autoencoder import OFFICIAL_AUTOENCODERS, SCALE_FACTOR, load_autoencoder

    official = OFFICIAL_AUTOENCODERS.get(config or "")
    latent = model.in_chans not in (1, 3)
    if args.autoencoder is None:
        if args.scale_factor is not None:
            raise UsageError("--scale-factor goes with --autoencoder FILE")
        if latent and out_kind != "npz":
            which = (f"{official.file}, the Stable Diffusion autoencoder its official config uses" if official
                     else "the Stable Diffusion KL-f8 autoencoder, e.g. autoencoder_kl.pth")
            raise UsageError(f"{config or 'the model'} makes {model.in_chans}-channel latents: give --autoencoder "
                             f"FILE ({which}) for pictures, or write the latents to FILE.npz")
        return None
    if out_kind == "npz":
        raise UsageError("--autoencoder decodes to pictures: write them to FILE.png or DIR/ (an .npz keeps the "
                         "latents, without --autoencoder)")
    if not latent:
        raise UsageError(f"--autoencoder is for latent models; this one makes {model.in_chans}-channel images")
    if args.scale_factor is not None and not args.scale_factor > 0:
        raise UsageError(f"--scale-factor must be positive, got {args.scale_factor}")
    scale = args.scale_factor if args.scale_factor is not None else official.scale_factor if official else SCALE_FACTOR
    autoencoder = load_autoencoder(args.autoencoder, scale, device=device)
    if autoencoder.z_channels != model.in_chans:
        raise ValueError(f"the autoencoder decodes {autoencoder.z_channels}-channel latents; the model makes "
                         f"{model.in_chans}-channel ones")
    return autoencoder


def _read_prompts(args) -> list:
    """--prompt values, then the lines of --prompts FILE (blank lines skipped)."""
    prompts = list(args.prompt)
    if args.prompts:
        if not os.path.isfile(args.prompts):
            raise FileNotFoundError(f"prompts file not found: {args.prompts}")
        with open(args.prompts, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
        if not any(lines):
            raise ValueError(f"--prompts {args.prompts} has no prompts (one a line)")
        prompts += [line for line in lines if line]
    return prompts


def _slug(text: str, limit: int = 48) -> str:
    """A file-name-safe tag of a prompt: lower case, runs of other characters as one '-'."""
    import re

    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].rstrip("-")


def _text_conditions(args, model, plan, prompts, device) -> _Conditions:
    """Contexts of the prompts (or --context), and the null context when guided: CLIP's encoding of
    the empty prompt (or --empty-context). CLIP runs on the sampling device; so do its outputs."""
    import numpy as np
    import torch

    from .text import load_text_encoder

    expected = (model.num_clip_token, model.clip_dim)
    clip = None
    if prompts or (plan.guidance_scale != 0 and not args.empty_context):
        clip = load_text_encoder(args.clip, device=device)
        if (clip.max_length, clip.dim) != expected:
            raise ValueError(f"the CLIP text encoder {args.clip} makes {clip.max_length}x{clip.dim} contexts; the "
                             f"model reads {expected[0]}x{expected[1]} (openai/clip-vit-large-patch14's)")
    if prompts:
        for index, tokens in clip.truncated(prompts):
            print(f"fastuvit: prompt {index + 1} is {tokens} tokens long: CLIP reads its first {clip.max_length} "
                  f"(start and end tokens included) and drops the rest, as the official code", file=sys.stderr)
        contexts, tags = clip.encode(prompts), [_slug(p) for p in prompts]
    else:
        contexts = torch.from_numpy(_load_npy(args.context, "context").astype(np.float32))
        if contexts.dim() != 3 or tuple(contexts.shape[1:]) != expected:
            raise ValueError(f"--context must be (N, {expected[0]}, {expected[1]}), got {tuple(contexts.shape)}")
        contexts, tags = contexts.to(device), [f"context{i}" for i in range(len(contexts))]
    null_cond = None
    if plan.guidance_scale != 0:
        null_cond = (torch.from_numpy(_load_npy(args.empty_context, "empty context").astype(np.float32)).to(device)
                     if args.empty_context else clip.empty_context())
    per = args.per_label
    return _Conditions(contexts.repeat_interleave(per, 0), null_cond, [t for t in tags for _ in range(per)], per,
                       [p for p in prompts for _ in range(per)])


def _conditions(args, model, plan, prompts, device) -> _Conditions:
    """A row of --per-label samples per label / prompt / context; unconditional models get --n samples."""
    import torch

    from .sampling import default_null_label

    kind = _model_kind(model)
    if kind == "text-to-image":
        return _text_conditions(args, model, plan, prompts, device)
    if kind == "unconditional":
        return _Conditions(None, None, [""] * args.n, 8)
    null_label = default_null_label(model) if plan.null_label is None else plan.null_label
    labels = args.labels if args.labels is not None else [
        v for v in range(min(11, model.num_classes)) if v != null_label][:10]
    bad = [v for v in labels if not 0 <= v < model.num_classes]
    if not labels or bad:
        raise UsageError(f"--labels must be in [0, {model.num_classes}), got {bad or 'none'}")
    per = args.per_label
    return _Conditions(torch.tensor(labels).repeat_interleave(per), null_label,
                       [f"class{v}" for v in labels for _ in range(per)], per)


def _write_samples(batches, out_kind: str, out: str, conditions: _Conditions) -> str:
    """Consume the sample batches (on the sampling device) into --out. Pictures become uint8 on the
    device before they are copied to the host."""
    import numpy as np
    import torch

    from .images import image_grid, save_png, uint8_images

    if out_kind == "npz":
        samples = torch.cat([b.cpu() for b in batches]).numpy()
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        labelled = conditions.cond is not None and conditions.cond.dim() == 1
        extra = {"labels": conditions.cond.numpy()} if labelled else {}
        if conditions.prompts:
            extra["prompts"] = np.array(conditions.prompts)
        np.savez(out, samples=samples, **extra)
        return out
    if out_kind == "grid":
        images = np.concatenate([uint8_images(b).cpu().numpy() for b in batches])
        return save_png(image_grid(images, conditions.ncol, scale=max(1, 64 // images.shape[1])), out)
    index = 0
    for batch in batches:
        for image in uint8_images(batch).cpu().numpy():
            tag = conditions.tags[index]
            save_png(image, os.path.join(out, f"{index:05d}{'-' + tag if tag else ''}.png"))
            index += 1
    return out


def cmd_sample(args):
    """Check the arguments (cheap refusals first), load the network, the autoencoder and CLIP onto one
    device, then sample, decode and write batch by batch."""
    import torch

    from .distributed import init_distributed
    from .pipeline import sample_batches
    from .training import PRECISIONS

    out_kind = _output_kind(args.out)
    model, plan = _sampling_model(args)
    _check_condition_arguments(args, model, plan)
    prompts = _read_prompts(args)
    _, device = init_distributed(args.device)
    model = model.to(device).eval()
    autoencoder = _autoencoder(args, model, plan.config, out_kind, device)  # before CLIP: the cheaper to refuse
    conditions = _conditions(args, model, plan, prompts, device)
    n = len(conditions.tags)
    noise = torch.randn(n, model.in_chans, model.img_size, model.img_size,
                        generator=torch.Generator().manual_seed(args.seed))
    batches = sample_batches(model, noise, conditions.cond, autoencoder=autoencoder, batch_size=args.batch_size,
                             decode_batch_size=args.decode_batch_size, progress=not args.no_progress,
                             generator=torch.Generator(device).manual_seed(args.seed), schedule=plan.schedule,
                             sampler=plan.sampler, steps=plan.steps, guidance_scale=plan.guidance_scale,
                             null_cond=conditions.null_cond, autocast_dtype=PRECISIONS[args.precision])
    path = _write_samples(batches, out_kind, args.out, conditions)
    decoded = f", decoded by {args.autoencoder}" if autoencoder is not None else ""
    print(f"{n} samples ({plan.sampler}, {plan.steps} steps, guidance {plan.guidance_scale}{decoded}): {path}",
          file=sys.stderr)


COMMANDS = {"demo": cmd_demo, "train": cmd_train, "sample": cmd_sample}


def main(argv=None) -> int:
    try:
        args = build_parser().parse_args(argv)
        COMMANDS[args.command](args)
    except UsageError as e:
        print(f"{e.prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, TypeError, FileNotFoundError, IsADirectoryError, PermissionError, MissingExtraError) as e:
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
