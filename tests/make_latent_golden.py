"""Regenerate tests/data/autoencoder_golden.npz and tests/data/clip_golden.npz with the official code
(baofff/U-ViT ``libs/autoencoder.py`` and ``libs/clip.py``):

    FASTUVIT_OFFICIAL_REPO=/path/to/U-ViT python tests/make_latent_golden.py

Needs torch, einops, numpy and transformers (no network: the CLIP model is the tiny local one of
``latent_cases.write_tiny_clip``). On the CPU, fp32:

- autoencoder: the official ``FrozenAutoencoderKL`` of ``SMALL_DDCONFIG`` loading a ``.pth`` of
  ``seeded_state_dict`` weights in its own key layout; stored: the input images, ``encode_moments``,
  ``sample`` (global RNG seeded), ``encode`` (seeded again: the same latents), and ``decode`` of the
  sampled latents and of unit-normal latents; plus the official key names and shapes of the small and
  of the released configuration (``get_model``'s), which the tests compare with fastuvit's layout;
- CLIP: ``FrozenCLIPEmbedder(version=<tiny folder>, device="cpu")``: its token ids and
  ``encode(PROMPTS)`` (the 77-token truncation included).
"""
import contextlib
import io
import json
import os
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import latent_cases as cases  # noqa: E402


def official_layout(ddconfig):
    """{key: shape} of the official FrozenAutoencoderKL built from ``ddconfig`` (no weights loaded)."""
    from libs.autoencoder import Decoder, Encoder

    holder = torch.nn.Module()
    with contextlib.redirect_stdout(io.StringIO()):  # the official constructors print
        holder.encoder, holder.decoder = Encoder(**ddconfig), Decoder(**ddconfig)
    holder.quant_conv = torch.nn.Conv2d(2 * ddconfig["z_channels"], 8, 1)
    holder.post_quant_conv = torch.nn.Conv2d(4, ddconfig["z_channels"], 1)
    return {k: tuple(v.shape) for k, v in holder.state_dict().items()}


def autoencoder_golden(tmp):
    from libs.autoencoder import FrozenAutoencoderKL

    small = official_layout(cases.SMALL_DDCONFIG)
    path = os.path.join(tmp, "autoencoder_small.pth")
    torch.save(cases.seeded_state_dict(small, cases.AUTOENCODER_SEED), path)
    with contextlib.redirect_stdout(io.StringIO()):
        ae = FrozenAutoencoderKL(cases.SMALL_DDCONFIG, 4, path, scale_factor=cases.SCALE_FACTOR)
    x = cases.autoencoder_input()
    with torch.no_grad():
        moments = ae.encode_moments(x)
        torch.manual_seed(5)
        z_sample = ae.sample(moments)
        torch.manual_seed(5)
        z_encode = ae.encode(x)
        decoded = ae.decode(z_sample)
        z_normal = torch.from_numpy(np.random.default_rng(3).standard_normal((2, 4, 5, 3)).astype(np.float32))
        decoded_normal = ae.decode(z_normal)
    layouts = dict(small=small, released=official_layout(cases.RELEASED_DDCONFIG))
    return dict(x=x, moments=moments, z_sample=z_sample, z_encode=z_encode, decoded=decoded, z_normal=z_normal,
                decoded_normal=decoded_normal, official_layouts=np.array(json.dumps(layouts)),
                scale_factor=np.array(cases.SCALE_FACTOR), sample_seed=np.array(5))


def clip_golden(tmp):
    from libs.clip import FrozenCLIPEmbedder

    clip = FrozenCLIPEmbedder(version=cases.write_tiny_clip(os.path.join(tmp, "clip")), device="cpu")
    tokens = clip.tokenizer(cases.PROMPTS, truncation=True, max_length=77, padding="max_length",
                            return_tensors="pt")["input_ids"]
    with torch.no_grad():
        context = clip.encode(cases.PROMPTS)
    return dict(prompts=np.array(cases.PROMPTS), tokens=tokens, context=context)


def main():
    repo = os.environ.get("FASTUVIT_OFFICIAL_REPO")
    if not repo:
        sys.exit("set FASTUVIT_OFFICIAL_REPO to a checkout of baofff/U-ViT")
    sys.path.insert(0, repo)
    torch.set_num_threads(1)  # one summation order
    with tempfile.TemporaryDirectory() as tmp:
        for path, arrays in ((cases.AUTOENCODER_GOLDEN, autoencoder_golden(tmp)),
                             (cases.CLIP_GOLDEN, clip_golden(tmp))):
            arrays = {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in arrays.items()}
            np.savez_compressed(path, **arrays)
            print(f"{path}: {os.path.getsize(path)} bytes, {', '.join(f'{k} {v.shape}' for k, v in arrays.items())}")


if __name__ == "__main__":
    main()
