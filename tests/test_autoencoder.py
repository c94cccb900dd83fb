"""fastuvit.autoencoder: the Stable Diffusion KL-f8 autoencoder against the official
``FrozenAutoencoderKL`` (libs/autoencoder.py).

Numbers: tests/data/autoencoder_golden.npz, made by make_latent_golden.py with the official code on
the official architecture at width 32 and seeded weights (and, with FASTUVIT_OFFICIAL_REPO, the
same comparison live). Layout: the official key names and shapes of the small and the released
configuration, stored in the golden file. Loading: released-size files in the official layout, and
files of other models refused.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fastuvit.autoencoder import (OFFICIAL_AUTOENCODERS, FrozenAutoencoderKL, default_decode_autocast,
                                  load_autoencoder, official_key)
from fastuvit.checkpoint import save_state_dict

import latent_cases as cases

def _golden_from_file():
    with np.load(cases.AUTOENCODER_GOLDEN) as f:
        golden = {k: f[k] for k in f.files}
    golden["official_layouts"] = json.loads(str(golden["official_layouts"]))
    return golden


def _golden_live(tmp_path):
    golden = cases.official_outputs("autoencoder_golden", tmp_path)
    golden["official_layouts"] = json.loads(str(golden["official_layouts"]))
    return golden


@pytest.fixture(params=cases.official_sources())
def official(request, tmp_path):
    return _golden_from_file() if request.param == "golden file" else _golden_live(tmp_path)


def small_autoencoder(official_outputs):
    """fastuvit's autoencoder at the golden file's configuration, with its seeded weights."""
    ae = FrozenAutoencoderKL(float(official_outputs["scale_factor"]), ch=cases.SMALL_DDCONFIG["ch"])
    layout = official_outputs["official_layouts"]["small"]
    return ae.load_official_state_dict(cases.seeded_state_dict(layout, cases.AUTOENCODER_SEED))


def close_to(got: torch.Tensor, expected: np.ndarray) -> bool:
    """fp32 rounding: within 2e-5 of the largest value (the layers' sums run in other orders)."""
    expected = torch.from_numpy(expected)
    assert got.shape == expected.shape, (tuple(got.shape), tuple(expected.shape))
    return (got - expected).abs().max().item() <= 2e-5 * expected.abs().max().item()


def test_every_method_matches_the_official_autoencoder(official):
    ae = small_autoencoder(official)
    x = torch.from_numpy(official["x"])
    with torch.no_grad():
        assert close_to(ae.encode_moments(x), official["moments"])
        torch.manual_seed(int(official["sample_seed"]))  # the official sample draws from the global RNG
        assert close_to(ae.sample(torch.from_numpy(official["moments"])), official["z_sample"])
        torch.manual_seed(int(official["sample_seed"]))
        assert close_to(ae.encode(x), official["z_encode"])
        assert close_to(ae.decode(torch.from_numpy(official["z_sample"])), official["decoded"])
        # any latent size (here 5x3, not square): the decoder is convolutional
        assert close_to(ae.decode(torch.from_numpy(official["z_normal"])), official["decoded_normal"])
        assert close_to(ae(torch.from_numpy(official["z_normal"]), "decode"), official["decoded_normal"])


def test_sample_with_a_generator_is_reproducible_and_scaled():
    ae = FrozenAutoencoderKL(0.5, ch=32)
    moments = torch.cat([torch.full((1, 4, 2, 2), 3.0), torch.full((1, 4, 2, 2), -100.0)], 1)  # logvar clamped
    z1 = ae.sample(moments, generator=torch.Generator().manual_seed(1))
    z2 = ae.sample(moments, generator=torch.Generator().manual_seed(1))
    assert torch.equal(z1, z2)
    noise = torch.randn(1, 4, 2, 2, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(z1, 0.5 * (3.0 + np.exp(-15.0) * noise))


def test_layouts_are_the_official_ones(official):
    for name, ch in (("small", cases.SMALL_DDCONFIG["ch"]), ("released", 128)):
        ours = {k: list(shape) for k, (_, shape) in FrozenAutoencoderKL(ch=ch).official_layout().items()}
        assert ours == official["official_layouts"][name], name


def test_key_names_agree_with_diffusers_own_converter():
    """diffusers converts latent-diffusion VAE checkpoints for its single-file loader; fastuvit keeps
    its own table (the converter drops unknown keys silently, strict loading cannot build on it), and
    both must agree key for key and value for value."""
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    ae = FrozenAutoencoderKL(ch=32)
    state = ae.official_state_dict()
    config = {"down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4}
    theirs = convert_ldm_vae_checkpoint({k: v.clone() for k, v in state.items()}, config)
    ours = ae.vae.state_dict()
    assert set(theirs) == set(ours)
    for key in ours:
        assert torch.equal(theirs[key].reshape(ours[key].shape), ours[key]), key
    levels = 4
    assert {official_key(k, levels) for k in ours} == set(state)


@pytest.fixture(scope="module")
def released_file(tmp_path_factory):
    path, state = cases.released_autoencoder(tmp_path_factory.mktemp("ae"))
    return Path(path), state


def test_released_file_loads_strictly_and_decodes(released_file):
    path, state = released_file
    ae = load_autoencoder(path, scale_factor=0.2301)
    assert ae.scale_factor == 0.2301 and not ae.training
    assert not any(p.requires_grad for p in ae.parameters())
    assert {p.device.type for p in ae.parameters()} == {"cpu"}
    loaded = ae.official_state_dict()
    assert set(loaded) == set(state)
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key
    z = torch.randn(2, 4, 3, 2)
    with torch.no_grad():
        x = ae.decode(z)
        assert x.shape == (2, 3, 24, 16) and torch.isfinite(x).all()
        assert ae.encode_moments(x).shape == (2, 8, 3, 2)
    # safetensors in the official layout too, here in fp16: the weights are cast to fp32
    save_state_dict({k: v.half() for k, v in state.items()}, path.parent / "ae.safetensors")
    half = load_autoencoder(path.parent / "ae.safetensors")
    assert half.scale_factor == 0.18215 and {p.dtype for p in half.parameters()} == {torch.float32}
    assert torch.equal(half.official_state_dict()["decoder.conv_out.weight"],
                       state["decoder.conv_out.weight"].half().float())


def test_another_models_file_is_refused_naming_keys(released_file, tmp_path):
    import fastuvit

    path, state = released_file
    uvit = fastuvit.UViT(img_size=4, patch_size=2, in_chans=4, embed_dim=8, depth=1, num_heads=2)
    torch.save(uvit.state_dict(), tmp_path / "nnet_ema.pth")
    with pytest.raises(ValueError, match=r"nnet_ema\.pth is not a KL-f8 autoencoder") as info:
        load_autoencoder(tmp_path / "nnet_ema.pth")
    message = str(info.value)
    assert "missing keys (248): decoder.conv_in.bias, decoder.conv_in.weight" in message
    assert "unexpected keys" in message and "pos_embed" in message

    ae = load_autoencoder(path)
    before = {k: v.clone() for k, v in ae.vae.state_dict().items()}
    broken = dict(state)
    del broken["decoder.up.0.block.2.conv2.bias"]  # official up.0 = diffusers' last up block
    broken["first_stage_model.extra"] = torch.zeros(1)  # a latent-diffusion checkpoint's prefix
    broken["encoder.mid.attn_1.q.weight"] = state["encoder.mid.attn_1.q.weight"][:, :, 0, 0]  # a linear layout
    with pytest.raises(ValueError) as info:
        ae.load_official_state_dict(broken)
    message = str(info.value)
    assert "missing keys (1): decoder.up.0.block.2.conv2.bias" in message
    assert "unexpected keys (1): first_stage_model.extra" in message
    assert "encoder.mid.attn_1.q.weight: checkpoint (512, 512) vs model (512, 512, 1, 1)" in message
    for key, value in ae.vae.state_dict().items():  # nothing was loaded
        assert torch.equal(value, before[key]), key


def test_a_small_model_file_does_not_fit_the_released_architecture(tmp_path):
    small = FrozenAutoencoderKL(ch=32)
    torch.save(small.official_state_dict(), tmp_path / "small.pth")
    with pytest.raises(ValueError, match="mis-shaped keys"):
        load_autoencoder(tmp_path / "small.pth")
    with pytest.raises(FileNotFoundError):
        load_autoencoder(tmp_path / "missing.pth")


def test_decode_large_batch_is_decode_in_chunks():
    torch.manual_seed(0)
    ae = FrozenAutoencoderKL(ch=32)
    z = torch.randn(5, 4, 2, 3)
    with torch.no_grad():
        whole = ae.decode(z)
    chunked = ae.decode_large_batch(z, batch_size=2)
    assert chunked.dtype == torch.float32 and chunked.shape == whole.shape
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # an explicit autocast dtype is honoured
        coarse = ae.decode_large_batch(z, batch_size=3, autocast_dtype=torch.bfloat16)
    assert coarse.dtype == torch.float32 and 0 < (coarse - whole).abs().max() < 0.2 * whole.abs().max()
    with pytest.raises(ValueError, match="batch_size"):
        ae.decode_large_batch(z, batch_size=0)


def test_decoding_autocast_is_the_official_fp16_on_a_gpu_only():
    assert default_decode_autocast(torch.device("cuda", 1)) is torch.float16
    assert default_decode_autocast("cpu") is None


def test_official_files_and_scale_factors_per_config():
    assert OFFICIAL_AUTOENCODERS["imagenet256_uvit_huge"] == ("autoencoder_kl_ema.pth", 0.18215)
    assert OFFICIAL_AUTOENCODERS["imagenet512_uvit_large"] == ("autoencoder_kl.pth", 0.18215)
    assert OFFICIAL_AUTOENCODERS["mscoco_uvit_small"] == ("autoencoder_kl.pth", 0.23010)
    from fastuvit.configs import CONFIGS

    latent = {name for name, (_, kwargs) in CONFIGS.items() if kwargs.get("in_chans") == 4}
    assert set(OFFICIAL_AUTOENCODERS) == latent


@pytest.mark.parametrize("method,value,error,match", [
    ("decode", torch.randn(1, 3, 4, 4), ValueError, r"z must be latents of shape \(B, 4, H, W\), got \(1, 3, 4, 4\)"),
    ("decode", torch.randn(4, 4, 4), ValueError, "z must be latents"),
    ("decode", torch.randn(0, 4, 4, 4), ValueError, "empty batch"),
    ("decode", torch.randn(1, 4, 0, 4), ValueError, "height and width"),
    ("decode", torch.ones(1, 4, 4, 4, dtype=torch.int64), TypeError, "floating-point"),
    ("decode", np.zeros((1, 4, 4, 4), np.float32), TypeError, "torch.Tensor"),
    ("decode", torch.randn(1, 4, 4, 4, device="meta"), ValueError, "on meta but the autoencoder is on cpu"),
    ("encode_moments", torch.randn(1, 4, 16, 16), ValueError, r"x must be images of shape \(B, 3, H, W\)"),
    ("encode_moments", torch.randn(1, 3, 20, 16), ValueError, r"multiples of 8 .* got \(20, 16\)"),
    ("encode", torch.randn(1, 3, 16, 12), ValueError, "multiples of 8"),
    ("sample", torch.randn(1, 4, 2, 2), ValueError, r"moments must be moments \(mean, logvar\) of shape \(B, 8"),
])
def test_bad_inputs_are_refused_naming_the_argument(method, value, error, match):
    ae = FrozenAutoencoderKL(ch=32)
    with pytest.raises(error, match=match):
        getattr(ae, method)(value)


@pytest.mark.parametrize("kwargs,match", [
    (dict(scale_factor=0), "scale_factor"), (dict(scale_factor="0.18"), "scale_factor"),
    (dict(ch=48), "multiple of 32"), (dict(ch_mult=()), "ch_mult"), (dict(num_res_blocks=0), "num_res_blocks"),
    (dict(z_channels=True), "z_channels"),
])
def test_bad_constructor_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FrozenAutoencoderKL(**kwargs)
    with pytest.raises(ValueError, match="fn must be"):
        FrozenAutoencoderKL(ch=32)(torch.zeros(1, 4, 1, 1), "reconstruct")


def test_without_diffusers_one_line_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)  # as if not installed
    with pytest.raises(ImportError, match=r'^the Stable Diffusion autoencoder needs diffusers, which is not '
                                          r'installed: pip install "fastuvit\[latent\]"$'):
        FrozenAutoencoderKL()


def test_import_fastuvit_needs_neither_diffusers_nor_transformers():
    code = ("import sys; sys.modules['diffusers'] = sys.modules['transformers'] = None; "
            "import fastuvit, fastuvit.autoencoder, fastuvit.text, fastuvit.pipeline; print('imported')")
    env = dict(os.environ, FASTUVIT_DISABLE_KERNELS="1")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "imported", run.stderr
