"""Released configs, create_model, and loading / saving weights."""
import os
import pickle

import pytest
import torch

import fastuvit
from fastuvit import reference
from model_cases import CASES, call, make_inputs

# name -> (in_chans, img_size, patch, D, depth, heads, num_classes or "text", conv, head dim, tokens L)
DESIGN_TABLE = {
    "cifar10_uvit_small": (3, 32, 2, 512, 12, 8, None, True, 64, 257),
    "celeba64_uvit_small": (3, 64, 4, 512, 12, 8, None, True, 64, 257),
    "imagenet64_uvit_mid": (3, 64, 4, 768, 16, 12, 1000, True, 64, 258),
    "imagenet64_uvit_large": (3, 64, 4, 1024, 20, 16, 1000, True, 64, 258),
    "imagenet256_uvit_large": (4, 32, 2, 1024, 20, 16, 1001, True, 64, 258),
    "imagenet256_uvit_huge": (4, 32, 2, 1152, 28, 16, 1001, False, 72, 258),
    "imagenet512_uvit_large": (4, 64, 4, 1024, 20, 16, 1001, True, 64, 258),
    "imagenet512_uvit_huge": (4, 64, 4, 1152, 28, 16, 1001, False, 72, 258),
    "mscoco_uvit_small": (4, 32, 2, 512, 12, 8, "text", True, 64, 334),
    "mscoco_uvit_small_deep": (4, 32, 2, 512, 16, 8, "text", True, 64, 334),
}


@pytest.mark.parametrize("name", sorted(DESIGN_TABLE))
def test_released_configs_follow_the_design_table(name):
    c, size, p, D, depth, heads, cond, conv, hd, L = DESIGN_TABLE[name]
    with torch.device("meta"):
        model = fastuvit.create_model(name)
    assert isinstance(model, fastuvit.UViTT2I if cond == "text" else fastuvit.UViT)
    sd = model.state_dict()
    assert sd["patch_embed.proj.weight"].shape == (D, c, p, p)
    assert sd["pos_embed"].shape == (1, L, D)
    assert len(model.in_blocks) == len(model.out_blocks) == depth // 2
    assert model.in_blocks[0].attn.num_heads == heads and D // heads == hd
    assert ("final_layer.weight" in sd) == conv
    assert "attn.qkv.bias" not in "".join(sd)  # qkv_bias False everywhere
    assert sd["in_blocks.0.mlp.fc1.weight"].shape == (4 * D, D)  # mlp_ratio 4
    if cond == "text":
        assert sd["context_embed.weight"].shape == (D, 768)
    elif cond is not None:
        assert sd["label_emb.weight"].shape == (cond, D)
    imagenet = name.startswith("imagenet")
    assert model.in_blocks[0].use_checkpoint == imagenet


def test_create_model_overrides_and_reference():
    model = fastuvit.create_model("cifar10_uvit_small", depth=2, embed_dim=64, num_heads=4)
    assert len(model.in_blocks) == 1 and model.embed_dim == 64
    ref = fastuvit.create_model("mscoco_uvit_small", reference=True, depth=2, embed_dim=64, num_heads=4)
    assert isinstance(ref, reference.UViTT2I)


def test_create_model_errors():
    with pytest.raises(ValueError, match="unknown config name 'cifar_small'"):
        fastuvit.create_model("cifar_small")
    with pytest.raises(TypeError, match="create_model"):
        fastuvit.create_model("cifar10_uvit_small", not_an_argument=1)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_save_load_round_trip(tmp_path, suffix):
    variant, kwargs = CASES["class_cond"]
    model = fastuvit.UViT(**kwargs)
    path = tmp_path / f"nnet{suffix}"
    fastuvit.save_state_dict(model, path)
    assert sorted(os.listdir(tmp_path)) == [path.name]  # no temporary file left behind
    loaded = fastuvit.load_checkpoint(fastuvit.UViT(**kwargs), path)
    x, t, y = make_inputs(variant, kwargs)
    with torch.no_grad():
        assert torch.equal(call(loaded, x, t, y), call(model, x, t, y))


def test_official_style_pth_loads_with_plain_torch(tmp_path):
    """What the official training writes: torch.save(nnet.state_dict(), 'nnet.pth')."""
    kwargs = CASES["t2i"][1]
    ref = reference.UViTT2I(**kwargs)
    torch.save(ref.state_dict(), tmp_path / "nnet_ema.pth")
    model = fastuvit.UViTT2I(**kwargs)
    model.load_state_dict(torch.load(tmp_path / "nnet_ema.pth", weights_only=True), strict=True)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values()))


def test_wrapper_prefixes_are_stripped(tmp_path):
    kwargs = CASES["uncond"][1]
    model = fastuvit.UViT(**kwargs)
    wrapped = {f"module._orig_mod.{k}": v for k, v in model.state_dict().items()}
    torch.save(wrapped, tmp_path / "ddp.pth")
    fastuvit.load_checkpoint(fastuvit.UViT(**kwargs), tmp_path / "ddp.pth")


def test_mismatched_checkpoint_names_every_key(tmp_path):
    small = fastuvit.UViT(**CASES["class_cond"][1])
    other = fastuvit.UViT(**dict(CASES["class_cond"][1], num_classes=5, conv=False, depth=2))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    fastuvit.save_state_dict(small, tmp_path / "small.pth")
    with pytest.raises(ValueError) as info:
        fastuvit.load_checkpoint(other, tmp_path / "small.pth")
    msg = str(info.value)
    assert "unexpected keys" in msg and "in_blocks.1.norm1.weight" in msg and "final_layer.weight" in msg
    assert "mis-shaped keys" in msg and "label_emb.weight: checkpoint (10, 64) vs model (5, 64)" in msg
    assert all(torch.equal(before[k], v) for k, v in other.state_dict().items())  # untouched
    fastuvit.save_state_dict({k: v for k, v in small.state_dict().items() if k != "norm.bias"}, tmp_path / "m.pth")
    with pytest.raises(ValueError, match=r"missing keys \(1\): norm.bias"):
        fastuvit.load_checkpoint(fastuvit.UViT(**CASES["class_cond"][1]), tmp_path / "m.pth")


def test_truncated_file_is_a_clear_error(tmp_path):
    model = fastuvit.UViT(**CASES["uncond"][1])
    for suffix in (".pth", ".safetensors"):
        path = tmp_path / f"nnet{suffix}"
        fastuvit.save_state_dict(model, path)
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
        with pytest.raises(ValueError, match="truncated or corrupted"):
            fastuvit.load_checkpoint(fastuvit.UViT(**CASES["uncond"][1]), path)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PAYLOAD_RAN",))


def test_pickle_with_code_is_refused_and_never_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open("evil.pth", "wb") as f:
        pickle.dump({"pos_embed": _Payload()}, f)
    with pytest.raises(ValueError, match="refused to load"):
        fastuvit.load_state_dict_file("evil.pth")
    assert not os.path.exists("PAYLOAD_RAN")


def test_missing_file_and_bad_argument():
    with pytest.raises(FileNotFoundError):
        fastuvit.load_state_dict_file("/nonexistent/nnet.pth")
    with pytest.raises(TypeError, match="checkpoint must be"):
        fastuvit.load_checkpoint(fastuvit.UViT(**CASES["uncond"][1]), 3)


def test_load_model_by_name(tmp_path):
    overrides = dict(depth=2, embed_dim=64, num_heads=4)
    model = fastuvit.create_model("imagenet256_uvit_large", **overrides)
    fastuvit.save_state_dict(model, tmp_path / "w.safetensors")
    loaded = fastuvit.load_model("imagenet256_uvit_large", tmp_path / "w.safetensors", **overrides)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
