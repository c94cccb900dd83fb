"""What the autoencoder and CLIP tests share with ``make_latent_golden.py``, which ran the official
``libs/autoencoder.py`` and ``libs/clip.py`` on the same models to write the golden files:

- ``SMALL_DDCONFIG``: the official KL-f8 architecture (ch_mult 1-2-4-4, 2 res blocks, mid attention)
  at width 32 instead of 128, so a forward takes milliseconds;
- ``seeded_state_dict``: weights drawn with numpy from a seed in sorted key order, so the tests
  rebuild the exact weights the golden outputs came from without storing them (and a key set that
  differs from the official one cannot reproduce them);
- ``write_tiny_clip``: a CLIP text model folder (a BPE vocabulary learnt from ``PROMPTS``, CLIP's
  special tokens and normaliser, a 2-layer 32-wide ``CLIPTextModel``) that ``CLIPTokenizer`` /
  ``CLIPTextModel.from_pretrained`` read offline, as they read openai/clip-vit-large-patch14.
"""
import json
import math
import os
import sys
from collections import Counter

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
AUTOENCODER_GOLDEN = os.path.join(HERE, "data", "autoencoder_golden.npz")
CLIP_GOLDEN = os.path.join(HERE, "data", "clip_golden.npz")

# The official get_model() ddconfig, 4x narrower (ch 128 -> 32); everything else as released.
SMALL_DDCONFIG = dict(double_z=True, z_channels=4, resolution=32, in_channels=3, out_ch=3, ch=32,
                      ch_mult=[1, 2, 4, 4], num_res_blocks=2, attn_resolutions=[], dropout=0.0)
RELEASED_DDCONFIG = dict(SMALL_DDCONFIG, resolution=256, ch=128)
AUTOENCODER_SEED = 14
SCALE_FACTOR = 0.23010  # the MS-COCO one: a scale other than the default is exercised

PROMPTS = [
    "A green train is coming down the tracks.",
    "",
    "A close up of a plate of broccoli and sauce.",
    "Café  crème,  NAÏVE\tspacing — and ünïcode!",
    # 100+ tokens with the tiny vocabulary: truncated to 77
    " ".join(["a group of elephants walking in muddy water next to the green train"] * 8),
]
CLIP_SEED = 77
CLIP_WIDTH = 32


def official_sources():
    """Fixture params: the golden file always; the official code itself with FASTUVIT_OFFICIAL_REPO."""
    import pytest

    live = pytest.mark.skipif(not os.environ.get("FASTUVIT_OFFICIAL_REPO"),
                              reason="set FASTUVIT_OFFICIAL_REPO to an official U-ViT checkout")
    return ["golden file", pytest.param("official code", marks=live)]


def official_outputs(name, tmp):
    """``make_latent_golden.<name>(tmp)`` run live with the official checkout of
    FASTUVIT_OFFICIAL_REPO on the path: what the golden file holds, as numpy arrays."""
    import make_latent_golden

    repo = os.environ["FASTUVIT_OFFICIAL_REPO"]
    sys.path.insert(0, repo)
    try:
        outputs = getattr(make_latent_golden, name)(str(tmp))
    finally:
        sys.path.remove(repo)
    return {k: v.numpy() if isinstance(v, torch.Tensor) else v for k, v in outputs.items()}


def seeded_state_dict(shapes, seed):
    """{key: tensor} for {key: shape}: conv/linear weights N(0, 1/fan_in), norm weights 1 + N(0, .1²),
    biases and embeddings N(0, .1²) / N(0, 1/width), drawn in sorted key order."""
    rng = np.random.default_rng(seed)
    state = {}
    for key in sorted(shapes):
        shape = tuple(shapes[key])
        draw = rng.standard_normal(shape)
        if "embedding" in key:
            value = draw / math.sqrt(shape[-1])
        elif len(shape) > 1:
            value = draw / math.sqrt(np.prod(shape[1:]))
        elif key.endswith("weight"):
            value = 1 + 0.1 * draw
        else:
            value = 0.1 * draw
        state[key] = torch.from_numpy(value.astype(np.float32))
    return state


def autoencoder_input(batch=2, size=32, seed=AUTOENCODER_SEED):
    """Images in [-1, 1] (B, 3, size, size) with some structure (gradients plus noise)."""
    rng = np.random.default_rng(seed + 1)
    ramp = np.linspace(-1, 1, size, dtype=np.float32)
    x = 0.6 * ramp[None, None, :, None] * ramp[None, None, None, :] + 0.3 * rng.standard_normal((batch, 3, size, size))
    return torch.from_numpy(np.clip(x, -1, 1).astype(np.float32))


# -- a tiny CLIP text model folder ------------------------------------------------------------------
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _byte_alphabet():
    """GPT-2 / CLIP byte-to-unicode table: printable bytes map to themselves, the rest to 256+."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def _learn_merges(corpus, n_merges):
    """A small BPE learnt on lower-cased words (bytes as CLIP's alphabet, '</w>' closing each word);
    ties broken by the pair's text, so the result is deterministic."""
    table = _byte_alphabet()
    words = Counter()
    for text in corpus:
        for word in text.lower().split():
            symbols = [table[b] for b in word.encode("utf-8")]
            symbols[-1] += "</w>"
            words[tuple(symbols)] += 1
    merges = []
    for _ in range(n_merges):
        pairs = Counter()
        for word, count in words.items():
            for pair in zip(word, word[1:]):
                pairs[pair] += count
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged = Counter()
        for word, count in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += count
        words = merged
    return merges


def write_tiny_clip(folder, n_merges=80):
    """Write a CLIPTokenizer + CLIPTextModel folder (weights from ``CLIP_SEED``); returns the folder."""
    from transformers import CLIPTextConfig, CLIPTextModel

    os.makedirs(folder, exist_ok=True)
    alphabet = _byte_alphabet()
    merges = _learn_merges(PROMPTS[:1] + PROMPTS[2:], n_merges)
    tokens = alphabet + [c + "</w>" for c in alphabet] + ["".join(m) for m in merges] + [BOS, EOS]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(vocab, f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    # the special tokens of openai/clip-vit-large-patch14 (padding with <|endoftext|>)
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump(dict(tokenizer_class="CLIPTokenizer", model_max_length=77, bos_token=BOS, eos_token=EOS,
                       unk_token=EOS, pad_token=EOS, do_lower_case=True), f)
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=CLIP_WIDTH, intermediate_size=37, num_hidden_layers=2,
                            num_attention_heads=2, max_position_embeddings=77, hidden_act="quick_gelu",
                            projection_dim=CLIP_WIDTH, bos_token_id=vocab[BOS], eos_token_id=vocab[EOS],
                            pad_token_id=vocab[EOS])
    model = CLIPTextModel(config)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for key, value in seeded_state_dict({k: v.shape for k, v in params.items()}, CLIP_SEED).items():
            params[key].copy_(value)
    model.save_pretrained(folder)
    return folder


def released_autoencoder(folder):
    """A file as the released ``autoencoder_kl.pth``: a plain state dict with the official code's keys and
    shapes (from the golden file), weights from ``seeded_state_dict`` (seed 0). (path, state dict)."""
    with np.load(AUTOENCODER_GOLDEN) as f:
        layout = json.loads(str(f["official_layouts"]))["released"]
    state = seeded_state_dict(layout, 0)
    path = os.path.join(folder, "autoencoder_kl.pth")
    torch.save(state, path)
    return path, state
