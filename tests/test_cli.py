"""The ``fastuvit`` command: demo, train (npz / npy / image folder, resume), sample (run folders and
released-style .pth files, PNG or .npz), and one-line errors with exit status 2."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import fastuvit
from fastuvit.cli import main
from fastuvit.ops import eager_fallback

SMALL = ["--set", "img_size=4", "--set", "patch_size=2", "--set", "embed_dim=16", "--set", "depth=2",
         "--set", "num_heads=2"]


@pytest.fixture(autouse=True)
def _no_interpreter():
    with eager_fallback():  # pipeline tests, not kernel tests
        yield


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err


def png_size(path):
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG"
        return im.size


def test_demo_writes_samples_loss_curve_and_a_run_folder(tmp_path, capsys):
    out = tmp_path / "demo"
    code, err = run(capsys, "demo", "--steps", 3, "--out", out, "--sample-steps", 4, "--no-progress", "--seed", 1)
    assert code == 0, err
    assert png_size(out / "samples.png") == (10 * 50 + 2, 10 * 50 + 2)  # a row per digit, 10 per row, 6x enlarged
    assert png_size(out / "loss.png")[0] > 300
    assert "samples.png" in err and "loss.png" in err
    code, err = run(capsys, "sample", "--run", out, "--out", tmp_path / "s.npz", "--labels", "3,7", "--per-label", 2,
                    "--steps", 4, "--no-progress")
    assert code == 0, err
    with np.load(tmp_path / "s.npz") as f:
        assert f["samples"].shape == (4, 1, 8, 8) and f["labels"].tolist() == [3, 3, 7, 7]


def test_train_resume_and_sample(tmp_path, capsys):
    g = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", images=g.integers(0, 255, (12, 4, 4, 3), dtype=np.uint8), labels=g.integers(0, 3, 12))
    out = tmp_path / "run"
    common = ["train", "--variant", "uvit", *SMALL, "--set", "num_classes=4", "--data", tmp_path / "d.npz",
              "--out", out, "--batch-size", 4, "--warmup-steps", 1, "--save-every", 2, "--no-progress"]
    code, err = run(capsys, *common, "--steps", 3)
    assert code == 0, err
    assert {"run.json", "nnet.pth", "nnet_ema.pth", "train_state.pt"} <= set(os.listdir(out))
    code, err = run(capsys, *common, "--steps", 5, "--resume")
    assert code == 0, err
    assert "resumed" in err and "step 3" in err
    assert torch.load(out / "train_state.pt", weights_only=True)["step"] == 5
    code, err = run(capsys, "sample", "--run", out, "--out", tmp_path / "grid.png", "--per-label", 3, "--steps", 3,
                    "--sampler", "dpm_solver++", "--guidance-scale", 1.5, "--no-progress")
    assert code == 0, err
    # a row per label 0..2 (3 is the null class), 3 per row, each 4x4 sample enlarged to 64x64
    assert png_size(tmp_path / "grid.png") == (3 * (64 + 2) + 2, 3 * (64 + 2) + 2)


def test_train_from_image_folder_with_a_named_config(tmp_path, capsys):
    from PIL import Image

    for i in range(4):
        Image.fromarray(np.full((6, 6, 3), 40 * i, np.uint8)).save(tmp_path / f"{i}.png")
    code, err = run(capsys, "train", "--config", "cifar10_uvit_small", *SMALL, "--data", tmp_path,
                    "--out", tmp_path / "run", "--steps", 2, "--batch-size", 2, "--no-progress")
    assert code == 0, err
    info = __import__("json").loads((tmp_path / "run" / "run.json").read_text())
    assert info["schedule"] == "continuous" and info["config"] == "cifar10_uvit_small"  # the official VP-SDE


def test_sample_a_released_style_checkpoint_to_npz(tmp_path, capsys):
    overrides = dict(embed_dim=16, depth=2, num_heads=2, img_size=4, use_checkpoint=False)
    model = fastuvit.create_model("imagenet256_uvit_large", **overrides)
    torch.save(model.state_dict(), tmp_path / "nnet_ema.pth")  # as the released files: a plain state dict
    args = ["sample", "--config", "imagenet256_uvit_large", *[a for k, v in overrides.items()
                                                             for a in ("--set", f"{k}={v}")],
            "--checkpoint", tmp_path / "nnet_ema.pth", "--labels", "1,999", "--per-label", 1, "--steps", 4,
            "--no-progress"]
    code, err = run(capsys, *args, "--out", tmp_path / "z.npz")
    assert code == 0, err
    assert "guidance 0.4" in err  # the official scale of this config
    with np.load(tmp_path / "z.npz") as f:
        assert f["samples"].shape == (2, 4, 4, 4) and f["labels"].tolist() == [1, 999]
    code, err = run(capsys, *args, "--out", tmp_path / "z.png")
    assert code == 2 and "latents" in err


@pytest.mark.parametrize("argv,match", [
    ([], "required"),
    (["frobnicate"], "invalid choice"),
    (["train", "--variant", "uvit"], "required: --data, --out"),
    (["train", "--variant", "uvit", "--set", "oops", "--data", "x.npz", "--out", "o"], "KEY=VALUE"),
    (["train", "--data", "x.npz", "--out", "o"], "give a model"),
    (["train", "--config", "nope", "--data", "x.npz", "--out", "o"], "unknown config name"),
    (["train", "--variant", "uvit", "--set", "img_size=4", "--set", "bogus=1", "--data", "x.npz", "--out", "o"],
     "bogus"),
    (["train", "--variant", "uvit", "--set", "img_size=4", "--set", "patch_size=2", "--data", "missing.npz",
      "--out", "o"], "not found"),
    (["train", "--variant", "uvit", "--data", "x.npz", "--out", "o", "--steps", "0"], "positive integer"),
    (["sample", "--out", "x.png"], "--run DIR"),
    (["sample", "--run", "nowhere", "--out", "x.png"], "run folder"),
    (["sample", "--run", "r", "--out", "x.jpg"], ".png or .npz"),
    (["sample", "--config", "cifar10_uvit_small", "--checkpoint", "missing.pth", "--out", "x.png"], "not found"),
    (["demo", "--steps", "-3"], "positive integer"),
    (["demo", "--device", "tpu9"], "device"),
])
def test_bad_arguments_give_one_line_and_exit_2(argv, match, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run(capsys, *argv)
    assert code == 2
    assert err.count("\n") == 1 and "error" in err and "Traceback" not in err
    assert match in err


def test_bad_files_give_one_line_and_exit_2(tmp_path, capsys):
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    other = fastuvit.UViT(img_size=4, patch_size=2, in_chans=3, embed_dim=8, depth=1, num_heads=2)
    torch.save(other.state_dict(), tmp_path / "other.pth")
    (tmp_path / "bad.npz").write_bytes(b"PK garbage")
    for argv, match in [
        (["sample", "--config", "cifar10_uvit_small", *SMALL, "--checkpoint", tmp_path / "bad.pth"], "bad.pth"),
        (["sample", "--config", "cifar10_uvit_small", *SMALL, "--checkpoint", tmp_path / "other.pth"], "does not fit"),
        (["train", "--variant", "uvit", *SMALL, "--data", tmp_path / "bad.npz", "--out", tmp_path / "o"],
         "could not read"),
    ]:
        code, err = run(capsys, *argv, *(["--out", tmp_path / "x.png"] if argv[0] == "sample" else []))
        assert code == 2 and err.count("\n") == 1 and match in err and "Traceback" not in err, err


def test_console_script_and_module_entry_points(tmp_path):
    env = dict(os.environ, FASTUVIT_DISABLE_KERNELS="1")
    env.pop("TRITON_INTERPRET", None)
    exe = os.path.join(os.path.dirname(sys.executable), "fastuvit")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "fastuvit"]
    proc = subprocess.run([*cmd, "sample", "--run", str(tmp_path), "--out", "x.png"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "run folder" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "fastuvit", "--help"], env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "demo" in proc.stdout and "train" in proc.stdout and "sample" in proc.stdout
