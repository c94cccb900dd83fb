"""fastuvit.text: the CLIP text encoder against the official ``FrozenCLIPEmbedder`` (libs/clip.py).

The model is a tiny CLIP text transformer with a BPE vocabulary learnt from a few prompts
(``latent_cases.write_tiny_clip``: no download); tests/data/clip_golden.npz holds the official
class's token ids and encodings of ``latent_cases.PROMPTS`` for it, the empty prompt and a prompt
past 77 tokens included (and with FASTUVIT_OFFICIAL_REPO the comparison also runs live).
"""
import sys

import numpy as np
import pytest
import torch

from fastuvit.text import FrozenCLIPEmbedder, load_text_encoder

import latent_cases as cases

@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    return cases.write_tiny_clip(str(tmp_path_factory.mktemp("clip")))


@pytest.fixture(scope="module")
def clip(clip_folder):
    return load_text_encoder(clip_folder)


@pytest.fixture(params=cases.official_sources())
def official(request, tmp_path):
    if request.param == "official code":
        return cases.official_outputs("clip_golden", tmp_path)
    with np.load(cases.CLIP_GOLDEN) as f:
        return {k: f[k] for k in f.files}


def test_tokens_and_encodings_match_the_official_embedder(clip, official):
    prompts = [str(p) for p in official["prompts"]]
    assert prompts == cases.PROMPTS
    assert torch.equal(clip.tokenize(prompts), torch.from_numpy(official["tokens"]))
    context = clip.encode(prompts)
    assert context.shape == (len(prompts), 77, cases.CLIP_WIDTH) and context.dtype == torch.float32
    expected = torch.from_numpy(official["context"])
    assert (context - expected).abs().max() <= 1e-5 * expected.abs().max()
    assert torch.equal(clip(prompts), context)  # forward is encode, as officially


def test_empty_context_is_the_empty_prompts_encoding(clip, official):
    empty = clip.empty_context()
    assert empty.shape == (77, cases.CLIP_WIDTH)
    expected = torch.from_numpy(official["context"][cases.PROMPTS.index("")])
    assert (empty - expected).abs().max() <= 1e-5 * expected.abs().max()


def test_long_prompts_are_cut_to_77_tokens_and_reported(clip):
    long = cases.PROMPTS[-1]
    counts = clip.token_counts(cases.PROMPTS)
    assert counts[1] == 2 and counts[-1] > 77  # the empty prompt: start and end tokens
    assert clip.truncated(cases.PROMPTS) == [(len(cases.PROMPTS) - 1, counts[-1])]
    tokens = clip.tokenize(long)[0]
    eos = clip.tokenizer.eos_token_id
    full = clip.tokenizer(long)["input_ids"]
    assert tokens.tolist() == full[:76] + [eos]  # the tail is dropped, the end token kept
    # the encoding only sees the first 77 tokens: words past them change nothing
    torch.testing.assert_close(clip.encode(long + " broccoli sauce train"), clip.encode(long), rtol=0, atol=0)


def test_a_single_string_is_a_batch_of_one(clip):
    assert clip.encode("a green train").shape == (1, 77, cases.CLIP_WIDTH)


@pytest.mark.parametrize("prompts,error,match", [
    ([], ValueError, "prompts is an empty list"),
    ((), ValueError, "prompts is an empty list"),
    (["a train", 3], TypeError, "prompts must be strings, got int"),
    (None, TypeError, "prompts must be a string or a list of strings, got NoneType"),
    (np.array(["a train"]), TypeError, "got ndarray"),
])
def test_bad_prompts_are_refused(clip, prompts, error, match):
    with pytest.raises(error, match=match):
        clip.encode(prompts)


def test_frozen_fp32_and_movable(clip_folder):
    encoder = FrozenCLIPEmbedder(clip_folder, device="cpu")
    assert not encoder.training and not any(p.requires_grad for p in encoder.parameters())
    assert encoder.device == torch.device("cpu") and encoder.dim == cases.CLIP_WIDTH
    assert all(p.dtype == torch.float32 for p in encoder.parameters())
    assert encoder.encode("a train").device == encoder.device


def test_missing_or_broken_folders_and_unreachable_hub_ids(tmp_path, clip_folder):
    with pytest.raises(FileNotFoundError, match="CLIP text encoder folder not found"):
        load_text_encoder(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="could not load a CLIP text encoder from .*empty"):
        load_text_encoder(tmp_path / "empty")
    # the tests run with HF_HUB_OFFLINE=1 (conftest): a hub id that is not cached fails at once
    with pytest.raises(ValueError, match="without network: download it elsewhere and give its folder"):
        load_text_encoder("openai/clip-vit-large-patch14-not-cached")
    with pytest.raises(ValueError, match="max_length"):
        load_text_encoder(clip_folder, max_length=78)  # past the model's 77 positions


def test_without_transformers_one_line_names_the_extra(monkeypatch, clip_folder):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r'^the CLIP text encoder needs transformers, which is not installed: '
                                          r'pip install "fastuvit\[latent\]"$'):
        load_text_encoder(clip_folder)
