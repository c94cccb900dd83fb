"""Pictures from every kind of released model: ``fastuvit sample`` with the autoencoder (latent models)
and CLIP (text-to-image), ``fastuvit.pipeline.sample_batches``, and their refusals.

The models are the released configs shrunk (width 16, depth 2, 4x4 latents), the autoencoder is the
released architecture with random weights in a file of the official layout, CLIP the tiny local model
of ``latent_cases``: nothing is downloaded.
"""
import collections
import os
import sys
import traceback

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

import fastuvit
from fastuvit.autoencoder import FrozenAutoencoderKL, load_autoencoder
from fastuvit.cli import main
from fastuvit.images import uint8_images
from fastuvit.ops import eager_fallback
from fastuvit.pipeline import sample_batches
from fastuvit.text import load_text_encoder

import latent_cases as cases

SMALL = dict(embed_dim=16, depth=2, num_heads=2, img_size=4, use_checkpoint=False)


@pytest.fixture(autouse=True)
def _no_interpreter():
    with eager_fallback():  # pipeline tests, not kernel tests
        yield


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Checkpoints of shrunk released configs, the released-architecture autoencoder, a tiny CLIP."""
    folder = tmp_path_factory.mktemp("released")
    torch.manual_seed(0)
    made = {}
    for name, config, extra in (("imagenet256_uvit_huge", "imagenet256_uvit_huge", {}),
                                ("imagenet256_uvit_large", "imagenet256_uvit_large", {}),
                                ("mscoco_uvit_small", "mscoco_uvit_small", dict(clip_dim=cases.CLIP_WIDTH)),
                                ("mscoco_clip_768", "mscoco_uvit_small", {}),
                                ("cifar10_uvit_small", "cifar10_uvit_small", dict(img_size=8))):
        overrides = dict(SMALL, **extra)
        path = folder / f"{name}.pth"
        torch.save(fastuvit.create_model(config, **overrides).state_dict(), path)
        made[name] = ["--config", config, "--checkpoint", path,
                      *[a for k, v in overrides.items() for a in ("--set", f"{k}={v}")]]
    made["autoencoder"] = cases.released_autoencoder(folder)[0]
    made["clip"] = cases.write_tiny_clip(str(folder / "clip"))
    return made


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def read_png(path):
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im)


FAST = ["--steps", 4, "--no-progress"]


def test_class_conditional_latent_model_to_a_grid_to_pngs_and_to_latents(files, tmp_path, capsys):
    model = files["imagenet256_uvit_huge"]
    args = ["sample", *model, "--labels", "1,999", "--per-label", 2, *FAST]
    code, err = run(capsys, *args, "--autoencoder", files["autoencoder"], "--out", tmp_path / "grid.png")
    assert code == 0, err
    assert "4 samples (dpm_solver, 4 steps, guidance 0.4, decoded by" in err
    # 2 per row, a row per label; 32x32 pictures (4x4 latents, 8x upsampled), shown 2x
    assert read_png(tmp_path / "grid.png").shape == (2 * (64 + 2) + 2, 2 * (64 + 2) + 2, 3)

    code, err = run(capsys, *args, "--autoencoder", files["autoencoder"], "--out", f"{tmp_path / 'pngs'}/")
    assert code == 0, err
    names = sorted(os.listdir(tmp_path / "pngs"))
    assert names == ["00000-class1.png", "00001-class1.png", "00002-class999.png", "00003-class999.png"]
    pictures = np.stack([read_png(tmp_path / "pngs" / n) for n in names])
    assert pictures.shape == (4, 32, 32, 3)

    # the same seed's latents, decoded by hand: the pictures are the autoencoder's decoding of them
    code, err = run(capsys, *args, "--out", tmp_path / "z.npz")
    assert code == 0, err
    with np.load(tmp_path / "z.npz") as f:
        latents = torch.from_numpy(f["samples"])
        assert latents.shape == (4, 4, 4, 4) and f["labels"].tolist() == [1, 1, 999, 999]
    expected = uint8_images(load_autoencoder(files["autoencoder"]).decode_large_batch(latents)).numpy()
    assert np.array_equal(pictures, expected)


def test_text_to_image_from_prompts_with_the_null_context_computed(files, tmp_path, capsys):
    model = files["mscoco_uvit_small"]
    long = cases.PROMPTS[-1]
    args = ["sample", *model, "--autoencoder", files["autoencoder"], "--clip", files["clip"], "--per-prompt", 2, *FAST]
    code, err = run(capsys, *args, "--prompt", "A green train.", "--prompt", long, "--out", f"{tmp_path / 'pngs'}/")
    assert code == 0, err
    assert "guidance 1.0" in err  # the official MS-COCO scale: guided, with CLIP's empty-prompt context
    assert err.count("\n") == 2 and "prompt 2 is 106 tokens long: CLIP reads its first 77" in err
    names = sorted(os.listdir(tmp_path / "pngs"))
    assert len(names) == 4 and names[0] == "00000-a-green-train.png" and names[2].startswith("00002-a-group-of-")
    pngs = np.stack([read_png(tmp_path / "pngs" / n) for n in names])

    # the same with the null context given explicitly, and the prompts from a file
    clip = load_text_encoder(files["clip"])
    np.save(tmp_path / "empty.npy", clip.empty_context().numpy())
    (tmp_path / "prompts.txt").write_text(f"A green train.\n\n{long}\n")
    code, err = run(capsys, *args, "--prompts", tmp_path / "prompts.txt", "--empty-context", tmp_path / "empty.npy",
                    "--out", tmp_path / "grid.png")
    assert code == 0, err
    grid = read_png(tmp_path / "grid.png")
    assert grid.shape == (2 * (64 + 2) + 2, 2 * (64 + 2) + 2, 3)
    for i, picture in enumerate(pngs):  # each picture in its place in the grid, 2x enlarged
        r, c = divmod(i, 2)
        cell = grid[2 + r * 66: 2 + r * 66 + 64: 2, 2 + c * 66: 2 + c * 66 + 64: 2]
        assert np.array_equal(cell, picture), i

    code, err = run(capsys, *args, "--prompt", "A green train.", "--out", tmp_path / "z.npz")
    assert code == 2 and "--autoencoder decodes to pictures" in err
    code, err = run(capsys, *[a for a in args if a != files["autoencoder"] and a != "--autoencoder"],
                    "--prompt", "A green train.", "--out", tmp_path / "z.npz")
    assert code == 0, err
    with np.load(tmp_path / "z.npz") as f:
        assert f["samples"].shape == (2, 4, 4, 4) and f["prompts"].tolist() == ["A green train."] * 2


def test_the_configs_scale_factor_is_the_default(files, tmp_path, capsys, monkeypatch):
    used = []

    def recording(path, scale_factor, **kwargs):
        used.append(scale_factor)
        return load_autoencoder(path, scale_factor, **kwargs)

    monkeypatch.setattr(fastuvit.autoencoder, "load_autoencoder", recording)
    common = [files["autoencoder"], "--per-label", 1, "--steps", 2, "--sampler", "dpm_solver++", "--no-progress",
              "--out", tmp_path / "x.png"]
    for argv in (["sample", *files["mscoco_uvit_small"], "--clip", files["clip"], "--prompt", "a", "--autoencoder"],
                 ["sample", *files["imagenet256_uvit_large"], "--labels", "3", "--autoencoder"],
                 ["sample", *files["imagenet256_uvit_large"], "--labels", "3", "--scale-factor", "0.5",
                  "--autoencoder"]):
        code, err = run(capsys, *argv, *common)
        assert code == 0, err
    assert used == [0.23010, 0.18215, 0.5]


@pytest.mark.parametrize("model,argv,match", [
    ("imagenet256_uvit_huge", ["--labels", "1"],
     "imagenet256_uvit_huge makes 4-channel latents: give --autoencoder FILE (autoencoder_kl_ema.pth, the Stable "
     "Diffusion autoencoder its official config uses) for pictures, or write the latents to FILE.npz"),
    ("imagenet256_uvit_large", ["--out", "pngs/"], "give --autoencoder FILE (autoencoder_kl.pth, the Stable"),
    ("mscoco_uvit_small", ["--prompt", "a train"], "give --autoencoder FILE (autoencoder_kl.pth"),
    ("imagenet256_uvit_huge", ["--prompt", "a train"],
     "--prompt is for text-to-image models; this one is class-conditional: use --labels"),
    ("cifar10_uvit_small", ["--prompts", "p.txt"], "--prompts is for text-to-image models; this one is unconditional"),
    ("mscoco_uvit_small", ["--labels", "3"], "--labels is for class-conditional models; this one is text-to-image"),
    ("mscoco_uvit_small", [], "a text-to-image model needs --prompt TEXT (repeatable), --prompts FILE or --context"),
    ("mscoco_uvit_small", ["--prompt", "a", "--context", "c.npy"], "give --prompt/--prompts or --context, not both"),
    ("mscoco_uvit_small", ["--prompts", "missing.txt", "--autoencoder", "AE"], "prompts file not found: missing.txt"),
    ("mscoco_uvit_small", ["--prompts", "empty.txt", "--autoencoder", "AE"], "--prompts empty.txt has no prompts"),
    ("mscoco_uvit_small", ["--prompt", "a", "--autoencoder", "AE", "--clip", "nowhere/"],
     "CLIP text encoder folder not found: nowhere/"),
    ("mscoco_clip_768", ["--prompt", "a", "--autoencoder", "AE", "--clip", "CLIP"],
     "the CLIP text encoder ... makes 77x32 contexts; the model reads 77x768"),
    ("imagenet256_uvit_huge", ["--autoencoder", "missing.pth"], "checkpoint file not found: missing.pth"),
    ("imagenet256_uvit_huge", ["--autoencoder", "NNET"],
     "imagenet256_uvit_huge.pth is not a KL-f8 autoencoder ... missing keys (248)"),
    ("imagenet256_uvit_huge", ["--autoencoder", "AE", "--out", "z.npz"], "--autoencoder decodes to pictures"),
    ("imagenet256_uvit_huge", ["--scale-factor", "0.2"], "--scale-factor goes with --autoencoder FILE"),
    ("imagenet256_uvit_huge", ["--autoencoder", "AE", "--scale-factor", "0"], "--scale-factor must be positive"),
    ("cifar10_uvit_small", ["--autoencoder", "AE"], "--autoencoder is for latent models; this one makes 3-channel"),
])
def test_bad_arguments_give_one_line_and_exit_2(files, model, argv, match, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.txt").write_text("\n  \n")
    swap = {"AE": files["autoencoder"], "CLIP": files["clip"], "NNET": files["imagenet256_uvit_huge"][3]}
    argv = [swap.get(a, a) for a in argv]
    out = [] if "--out" in argv else ["--out", "x.png"]
    code, err = run(capsys, "sample", *files[model], *argv, *out, *FAST)
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("fastuvit: error: ") and "Traceback" not in err
    assert all(part in err for part in match.split(" ... ")), err


def test_a_missing_extra_is_one_line_naming_it(files, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "diffusers", None)
    code, err = run(capsys, "sample", *files["imagenet256_uvit_huge"], "--autoencoder", files["autoencoder"],
                    "--out", tmp_path / "x.png", *FAST)
    assert code == 2 and err == ('fastuvit: error: the Stable Diffusion autoencoder needs diffusers, which is not '
                                 'installed: pip install "fastuvit[latent]"\n')


# -- fastuvit.pipeline --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def latent_model():
    torch.manual_seed(0)
    return fastuvit.create_model("imagenet256_uvit_huge", **SMALL).eval()


@pytest.fixture(scope="module")
def small_autoencoder():
    torch.manual_seed(1)
    return FrozenAutoencoderKL(ch=32)


SAMPLING = dict(schedule="discrete", sampler="dpm_solver", steps=3, guidance_scale=0.4)


def test_sample_batches_decode_each_batch_of_samples(latent_model, small_autoencoder):
    noise, labels = torch.randn(5, 4, 4, 4), torch.tensor([1, 2, 3, 4, 5])
    got = list(sample_batches(latent_model, noise, labels, autoencoder=small_autoencoder, batch_size=2,
                              decode_batch_size=1, **SAMPLING))
    assert [tuple(b.shape) for b in got] == [(2, 3, 32, 32), (2, 3, 32, 32), (1, 3, 32, 32)]
    with torch.no_grad():
        latents = fastuvit.sampling.sample(latent_model, noise, labels, **SAMPLING)
        expected = small_autoencoder.decode(latents)
    torch.testing.assert_close(torch.cat(got), expected, rtol=1e-4, atol=1e-4)
    plain = torch.cat(list(sample_batches(latent_model, noise, labels, batch_size=3, **SAMPLING)))
    torch.testing.assert_close(plain, latents, rtol=1e-5, atol=1e-5)


class HostCalls(TorchFunctionMode):
    """Records the tensor methods that bring values to the host (a device sync on a GPU), with the
    file that called them. ``.to(cpu)`` counts too, except on the ``inputs`` (and views of them): on
    a GPU those calls take them from the host to the device."""
    HOST = {"cpu", "numpy", "item", "tolist", "__bool__", "__int__", "__float__", "__index__"}

    def __init__(self, inputs=()):
        super().__init__()
        self.calls = collections.Counter()
        self.inputs = inputs

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        moves_home = (name == "to" and any(str(a) == "cpu" for a in (*args[1:], *(kwargs or {}).values()))
                      and not any(args[0] is t or args[0]._base is t for t in self.inputs))
        if name in self.HOST or moves_home:
            caller = traceback.extract_stack()[-2].filename
            self.calls[os.path.basename(caller), name] += 1
        return func(*args, **(kwargs or {}))


def test_latents_go_from_the_sampler_to_the_decoder_without_leaving_the_device(latent_model, small_autoencoder,
                                                                                monkeypatch):
    """What the GPU path relies on, checked on the CPU: the decoder gets the very tensor the sampler
    returned, and neither the pipeline, the decoder nor the uint8 conversion calls anything that
    copies values to the host or waits for the device (on a GPU the samplers and the model do the
    same calls as here; the model's label-range check only runs for CPU tensors)."""
    handed = []
    real_sample, real_decode = fastuvit.pipeline.sample, small_autoencoder.decode_large_batch
    monkeypatch.setattr(fastuvit.pipeline, "sample", lambda *a, **k: handed.append(real_sample(*a, **k)) or handed[-1])
    monkeypatch.setattr(small_autoencoder, "decode_large_batch",
                        lambda z, *a, **k: handed.append(z) or real_decode(z, *a, **k))
    noise, labels = torch.randn(4, 4, 4, 4), torch.tensor([1, 2, 3, 4])
    spy = HostCalls(inputs=(noise, labels))
    with spy:
        images = [uint8_images(x) for x in sample_batches(latent_model, noise, labels, autoencoder=small_autoencoder,
                                                          batch_size=2, **SAMPLING)]
    assert len(handed) == 4 and handed[0] is handed[1] and handed[2] is handed[3]
    ours = {"pipeline.py", "autoencoder.py", "images.py"}
    assert not [call for call in spy.calls if call[0] in ours], spy.calls
    assert [im.dtype for im in images] == [torch.uint8] * 2


def test_sample_batches_refuses_split_devices_and_mismatched_conditions(latent_model):
    elsewhere = FrozenAutoencoderKL(ch=32).to("meta")
    with pytest.raises(ValueError, match="the autoencoder is on meta but the model is on cpu"):
        next(sample_batches(latent_model, torch.randn(1, 4, 4, 4), torch.tensor([1]), autoencoder=elsewhere))
    with pytest.raises(ValueError, match="cond has 2 entries for 1 noise samples"):
        next(sample_batches(latent_model, torch.randn(1, 4, 4, 4), torch.tensor([1, 2])))
    with pytest.raises(ValueError, match="batch_size"):
        next(sample_batches(latent_model, torch.randn(1, 4, 4, 4), torch.tensor([1]), batch_size=0))


def test_png_pixels_are_the_official_ones():
    """The official pipeline: unpreprocess (0.5·(x + 1), clamped to [0, 1]) then torchvision's
    save_image (·255 + 0.5, truncated to uint8)."""
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0]).reshape(1, 1, 1, 7)
    assert uint8_images(x).flatten().tolist() == [0, 0, 64, 128, 191, 255, 255]  # 63.75+.5, 127.5+.5, 191.25+.5
    assert uint8_images(torch.zeros(2, 3, 4, 5)).shape == (2, 4, 5, 3)
