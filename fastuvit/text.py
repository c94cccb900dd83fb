"""The CLIP text encoder of the text-to-image U-ViTs (MS-COCO): prompts -> contexts (B, 77, 768).

    clip = fastuvit.text.load_text_encoder("openai/clip-vit-large-patch14", device="cuda")  # or a local folder
    context = clip.encode(["A green train is coming down the tracks."])   # (1, 77, 768)
    null = clip.empty_context()                                            # (77, 768): guidance's null context

``FrozenCLIPEmbedder`` computes what the official ``libs/clip.py`` class of that name does:
transformers' ``CLIPTokenizer`` pads or truncates every prompt to 77 tokens (start and end tokens
included; a longer prompt loses its tail, silently there, reported here by ``truncated``), and
``CLIPTextModel``'s ``last_hidden_state`` for those ids, with no attention mask (the padding tokens
are encoded too, and the U-ViT reads all 77). The encoding of the empty prompt is the null context of
classifier-free guidance and of label dropout in training.

transformers is an optional dependency (``pip install "fastuvit[latent]"``); importing this module
does not need it, loading an encoder does. The weights come from a local folder (e.g. one made with
``huggingface-cli download openai/clip-vit-large-patch14 --local-dir clip``) or, with network, a hub id.
"""
from __future__ import annotations

import contextlib
import os
import re

import torch
from torch import nn

from ._extras import require

DEFAULT_CLIP = "openai/clip-vit-large-patch14"
_HUB_ID = re.compile(r"[\w-][\w.-]*(/[\w-][\w.-]*)?")  # "name" or "owner/name"; anything else is a path
MAX_LENGTH = 77


def _prompt_list(prompts) -> list[str]:
    """One prompt (str) or a non-empty sequence of them -> a list."""
    if isinstance(prompts, str):
        return [prompts]
    if not isinstance(prompts, (list, tuple)):
        raise TypeError(f"prompts must be a string or a list of strings, got {type(prompts).__name__}")
    if not prompts:
        raise ValueError("prompts is an empty list: give at least one prompt")
    bad = [type(p).__name__ for p in prompts if not isinstance(p, str)]
    if bad:
        raise TypeError(f"prompts must be strings, got {', '.join(sorted(set(bad)))}")
    return list(prompts)


@contextlib.contextmanager
def _quiet(transformers):
    """No loading progress bar, and no notice that the full CLIP checkpoint's vision weights go unused."""
    logging = transformers.utils.logging
    verbosity, bar = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bar:
            logging.enable_progress_bar()


class FrozenCLIPEmbedder(nn.Module):
    """The official ``FrozenCLIPEmbedder``: a CLIP tokenizer and text transformer from ``version``
    (a local folder or a hub id), frozen, in eval mode, fp32, on ``device`` (default: the CPU).
    Encodings come back on the encoder's device."""

    def __init__(self, version: str | os.PathLike = DEFAULT_CLIP, device: str | torch.device | None = None,
                 max_length: int = MAX_LENGTH):
        super().__init__()
        transformers = require("transformers", "latent", "the CLIP text encoder")
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 2:
            raise ValueError(f"max_length must be an integer >= 2 (start and end tokens), got {max_length!r}")
        version = os.fspath(version)
        if not os.path.isdir(version) and not _HUB_ID.fullmatch(version):
            raise FileNotFoundError(f"CLIP text encoder folder not found: {version}")
        try:
            with _quiet(transformers):
                self.tokenizer = transformers.CLIPTokenizer.from_pretrained(version)
                self.transformer = transformers.CLIPTextModel.from_pretrained(version, dtype=torch.float32)
        except (OSError, ValueError) as e:  # no such folder / hub id, no network, incomplete folder
            hint = "" if os.path.isdir(version) else (" (without network: download it elsewhere and give "
                                                       "its folder)")
            raise ValueError(f"could not load a CLIP text encoder from {version!r}{hint}: "
                             f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        positions = self.transformer.config.max_position_embeddings
        if max_length > positions:
            raise ValueError(f"max_length {max_length} is longer than the model's {positions} positions")
        self.version, self.max_length = version, max_length
        self.eval()
        self.requires_grad_(False)
        if device is not None:
            self.to(device)

    @property
    def device(self) -> torch.device:
        return self.transformer.get_input_embeddings().weight.device

    @property
    def dim(self) -> int:
        """The width of a context token (768 for CLIP ViT-L/14)."""
        return self.transformer.config.hidden_size

    def tokenize(self, prompts) -> torch.Tensor:
        """Token ids (B, max_length) on the CPU: start token, the prompt's tokens (cut to fit), end
        token, then end tokens as padding, exactly as the official call to the tokenizer."""
        batch = self.tokenizer(_prompt_list(prompts), truncation=True, max_length=self.max_length,
                               return_length=True, return_overflowing_tokens=False, padding="max_length",
                               return_tensors="pt")
        return batch["input_ids"]

    def token_counts(self, prompts) -> list[int]:
        """Each prompt's length in tokens before truncation, start and end tokens included."""
        ids = self.tokenizer(_prompt_list(prompts), truncation=False, verbose=False)["input_ids"]
        return [len(i) for i in ids]

    def truncated(self, prompts) -> list[tuple[int, int]]:
        """(index, tokens) of the prompts longer than max_length, whose tails ``encode`` drops."""
        return [(i, n) for i, n in enumerate(self.token_counts(prompts)) if n > self.max_length]

    @torch.no_grad()
    def encode(self, prompts) -> torch.Tensor:
        """Contexts (B, max_length, dim), fp32, on the encoder's device."""
        tokens = self.tokenize(prompts).to(self.device)
        return self.transformer(input_ids=tokens).last_hidden_state

    def forward(self, prompts) -> torch.Tensor:
        return self.encode(prompts)

    def empty_context(self) -> torch.Tensor:
        """The encoding of the empty prompt (max_length, dim): the null context of guidance."""
        return self.encode([""])[0]


def load_text_encoder(version: str | os.PathLike = DEFAULT_CLIP, *, device: str | torch.device | None = None,
                      max_length: int = MAX_LENGTH) -> FrozenCLIPEmbedder:
    """``FrozenCLIPEmbedder(version, device, max_length)``: the official text encoder is the default
    hub id; a local folder of it works offline."""
    return FrozenCLIPEmbedder(version, device=device, max_length=max_length)


__all__ = ["FrozenCLIPEmbedder", "load_text_encoder", "DEFAULT_CLIP", "MAX_LENGTH"]
