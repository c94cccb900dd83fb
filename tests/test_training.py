"""fastuvit.training and fastuvit.data: the loss, optimizer/warm-up/EMA, mixed precision, activation
checkpointing, label dropout, atomic and resumable checkpoints (resume == uninterrupted run), and
the data sources."""
import os

import numpy as np
import pytest
import torch

import fastuvit
from fastuvit.data import ArrayDataset, BatchOrder, load_dataset
from fastuvit.ops import eager_fallback
from fastuvit.sampling import DiscreteSchedule
from fastuvit.training import TrainConfig, Trainer, load_run, noise_prediction_loss, save_run_info, warmup_factor

TINY = dict(img_size=4, patch_size=2, in_chans=1, embed_dim=16, depth=2, num_heads=2, num_classes=4)


@pytest.fixture(autouse=True)
def _no_interpreter():
    with eager_fallback():  # pipeline tests, not kernel tests
        yield


def tiny_data(n=24, seed=0, labels=3):
    g = np.random.default_rng(seed)
    return ArrayDataset(g.uniform(-1, 1, (n, 1, 4, 4)).astype(np.float32), g.integers(0, labels, n))


def make_trainer(seed=0, data=None, **overrides):
    torch.manual_seed(seed)
    model = fastuvit.UViT(**TINY)
    config = TrainConfig(**{**dict(steps=6, batch_size=8, lr=1e-3, warmup_steps=3, ema_rate=0.9, seed=1), **overrides})
    return Trainer(model, data or tiny_data(), config)


def assert_same_state(a: Trainer, b: Trainer):
    for x, y in ((a.model, b.model), (a.ema, b.ema)):
        for (k, v), w in zip(x.state_dict().items(), y.state_dict().values()):
            assert torch.equal(v, w), k
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    for i in sa["state"]:
        for k in sa["state"][i]:
            assert torch.equal(sa["state"][i][k], sb["state"][i][k]), (i, k)
    assert sa["param_groups"][0]["lr"] == sb["param_groups"][0]["lr"]
    assert a.step == b.step and a.scheduler.last_epoch == b.scheduler.last_epoch


# ---------------------------------------------------------------------------------------------
def test_resume_equals_uninterrupted_run(tmp_path):
    straight = make_trainer()
    straight.fit(6)
    first = make_trainer()
    first.fit(3)
    path = str(tmp_path / "run" / "train_state.pt")
    first.save(path)
    torch.rand(5)  # disturb the global RNG: the checkpoint restores it
    resumed = make_trainer(seed=123)  # other initial weights: the checkpoint must replace them all
    resumed.load(path)
    assert resumed.step == 3
    assert torch.equal(torch.get_rng_state(), torch.load(path, weights_only=True)["rng"]["torch"])
    resumed.fit(6)
    assert_same_state(straight, resumed)
    # the exported weights are plain state dicts that load strictly, the EMA one included
    model = fastuvit.load_checkpoint(fastuvit.UViT(**TINY), str(tmp_path / "run" / "nnet_ema.pth"))
    torch.testing.assert_close(model.state_dict(), first.ema.state_dict(), rtol=0, atol=0)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    trainer = make_trainer()
    trainer.fit(2)
    path = str(tmp_path / "train_state.pt")
    trainer.save(path, weights=False)
    before = open(path, "rb").read()
    trainer.fit(3)

    def broken_save(obj, f, *args, **kwargs):
        with open(f, "wb") as fh:
            fh.write(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        trainer.save(path, weights=False)
    assert open(path, "rb").read() == before  # the previous checkpoint is untouched
    assert os.listdir(tmp_path) == ["train_state.pt"]  # and no temporary file is left


def test_loss_is_noise_prediction_mse():
    torch.manual_seed(0)
    model = fastuvit.UViT(**TINY)
    ns = DiscreteSchedule()
    x0, y = torch.randn(3, 1, 4, 4), torch.tensor([0, 1, 2])
    noise, n = torch.randn(3, 1, 4, 4), torch.tensor([1, 500, 1000])
    loss = noise_prediction_loss(model, x0, y, ns, n.double() / 1000, noise)
    ac = torch.cumprod(1 - ns.betas, 0)[n - 1].float().view(-1, 1, 1, 1)
    expected = (model(ac.sqrt() * x0 + (1 - ac).sqrt() * noise, n, y) - noise).pow(2).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-6)


def test_optimizer_warmup_and_ema():
    trainer = make_trainer(warmup_steps=4, ema_rate=0.75, weight_decay=0.03, betas=(0.99, 0.99))
    opt = trainer.optimizer
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["betas"] == (0.99, 0.99) and opt.defaults["weight_decay"] == 0.03
    lrs = []
    for _ in range(6):
        ema_before = [p.clone() for p in trainer.ema.parameters()]
        lrs.append(trainer.train_step()["lr"])
        for e0, e1, p in zip(ema_before, trainer.ema.parameters(), trainer.model.parameters()):
            torch.testing.assert_close(e1, 0.75 * e0 + 0.25 * p.detach())
    assert lrs == [1e-3 * warmup_factor(k, 4) for k in range(6)] == [0, 2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3]
    defaults = TrainConfig()
    assert (defaults.lr, defaults.weight_decay, defaults.betas, defaults.ema_rate) == (2e-4, 0.03, (0.99, 0.99), 0.9999)


def test_label_dropout_uses_the_null_class():
    trainer = make_trainer(label_dropout=0.5, batch_size=24)
    labels = torch.cat([trainer.batch(k)[1] for k in range(8)])
    nulls = (labels == 3).float().mean().item()  # null label = num_classes - 1
    assert 0.3 < nulls < 0.7 and labels.max() == 3
    assert (make_trainer(label_dropout=0.0).batch(0)[1] < 3).all()
    shifted = ArrayDataset(tiny_data().x, tiny_data().cond + 1)  # labels 1..3, class 0 free
    assert (make_trainer(label_dropout=0.9, null_label=0, data=shifted).batch(0)[1] == 0).any()


def test_text_label_dropout_uses_the_empty_context():
    g = np.random.default_rng(0)
    ctx, empty = g.normal(size=(16, 3, 6)).astype(np.float32), np.full((3, 6), 7.0, np.float32)
    data = ArrayDataset(g.uniform(-1, 1, (16, 1, 4, 4)).astype(np.float32), ctx, empty_context=empty)
    torch.manual_seed(0)
    model = fastuvit.UViTT2I(img_size=4, patch_size=2, in_chans=1, embed_dim=16, depth=1, num_heads=2, clip_dim=6,
                             num_clip_token=3)
    trainer = Trainer(model, data, TrainConfig(batch_size=16, label_dropout=0.5, seed=3))
    cond = trainer.batch(0)[1]
    dropped = (cond == 7.0).all(-1).all(-1)
    assert 0 < dropped.sum() < 16
    assert trainer.train_step()["loss"].isfinite()
    with pytest.raises(ValueError, match="empty context"):
        Trainer(model, ArrayDataset(data.x, ctx), TrainConfig(label_dropout=0.1))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps(precision, tmp_path):
    trainer = make_trainer(precision=precision)
    losses = trainer.fit(3)
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())  # fp32 master weights
    assert (trainer.scaler is not None) == (precision == "fp16")
    trainer.save(str(tmp_path / "s.pt"), weights=False)
    again = make_trainer(precision=precision)
    again.load(str(tmp_path / "s.pt"))
    if precision == "fp16":
        assert again.scaler.get_scale() == trainer.scaler.get_scale()


def test_activation_checkpointing_gives_the_same_step():
    plain, ckpt = make_trainer(grad_checkpointing=False), make_trainer(grad_checkpointing=True)
    assert all(b.use_checkpoint for b in ckpt.model.in_blocks) and not plain.model.mid_block.use_checkpoint
    plain.fit(2)
    ckpt.fit(2)
    for p, q in zip(plain.model.parameters(), ckpt.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


def test_grad_clip_bounds_the_update():
    trainer = make_trainer(grad_clip=1e-3, lr=1.0, warmup_steps=0, weight_decay=0.0)
    trainer.train_step()
    norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in trainer.model.parameters()))
    assert norm <= 1e-3 * 1.01


def test_config_and_setup_errors():
    for kwargs, match in [(dict(lr=0), "lr"), (dict(precision="fp8"), "precision"), (dict(batch_size=0), "batch_size"),
                          (dict(label_dropout=1.0), "label_dropout"), (dict(betas=(0.9,)), "betas"),
                          (dict(schedule="cosine"), "schedule"), (dict(ema_rate=2.0), "ema_rate")]:
        with pytest.raises(ValueError, match=match):
            TrainConfig(**kwargs)
    with pytest.raises(ValueError, match="null class"):
        make_trainer(data=tiny_data(labels=4))  # label 3 is the null class of a 4-class model
    make_trainer(data=tiny_data(labels=4), label_dropout=0.0)  # fine without label dropout
    with pytest.raises(ValueError, match="4 classes"):
        make_trainer(data=tiny_data(labels=5), label_dropout=0.0)
    with pytest.raises(ValueError, match="no labels"):
        make_trainer(data=ArrayDataset(tiny_data().x))
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        make_trainer(data=ArrayDataset(np.zeros((4, 3, 4, 4), np.float32), np.zeros(4, np.int64)))
    with pytest.raises(ValueError, match="fp16"):
        Trainer(fastuvit.UViT(**TINY), tiny_data(), TrainConfig(precision="fp16"), strategy="fsdp")


def test_loading_a_foreign_checkpoint_fails_clearly(tmp_path):
    trainer = make_trainer()
    trainer.save(str(tmp_path / "a.pt"), weights=False)
    other = Trainer(fastuvit.UViT(**dict(TINY, embed_dim=8)), tiny_data(), TrainConfig())
    with pytest.raises(ValueError, match="does not fit"):
        other.load(str(tmp_path / "a.pt"))
    torch.save({"model": {}}, tmp_path / "b.pt")
    with pytest.raises(ValueError, match="not a fastuvit training checkpoint"):
        trainer.load(str(tmp_path / "b.pt"))


def test_run_folder_round_trip(tmp_path):
    trainer = make_trainer()
    trainer.fit(1)
    trainer.save(str(tmp_path / "train_state.pt"))
    save_run_info(str(tmp_path), "uvit", TINY, "discrete", null_label=3)
    model, info = load_run(str(tmp_path))
    assert info["null_label"] == 3 and info["schedule"] == "discrete"
    torch.testing.assert_close(model.state_dict(), trainer.ema.state_dict(), rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="run folder"):
        load_run(str(tmp_path / "nope"))


# ---------------------------------------------------------------------------------------------
# data
def test_batch_order_is_a_permutation_per_epoch_and_deterministic():
    order = BatchOrder(10, 4, seed=7)
    stream = np.concatenate([order.indices(k) for k in range(5)])  # 20 positions = 2 epochs
    assert sorted(stream[:10]) == list(range(10)) and sorted(stream[10:]) == list(range(10))
    assert not np.array_equal(stream[:10], stream[10:])
    assert np.array_equal(BatchOrder(10, 4, seed=7).indices(3), order.indices(3))
    assert not np.array_equal(BatchOrder(10, 4, seed=8).indices(0), order.indices(0))
    assert len(BatchOrder(3, 8).indices(0)) == 8  # a batch larger than the dataset spans epochs


def test_array_dataset_get_keeps_order_and_maps_uint8():
    x = np.arange(5 * 2 * 2 * 3, dtype=np.uint8).reshape(5, 2, 2, 3) * 2  # NHWC images
    data = ArrayDataset(x, np.arange(5))
    assert data.shape == (3, 2, 2) and data.num_classes == 5
    got, labels = data.get(np.array([4, 0, 2]))
    assert labels.tolist() == [4, 0, 2]
    expected = torch.from_numpy(x[[4, 0, 2]].transpose(0, 3, 1, 2).astype(np.float32)) / 127.5 - 1
    torch.testing.assert_close(got, expected)


def test_load_dataset_sources(tmp_path):
    from PIL import Image

    x = np.random.default_rng(0).integers(0, 255, (6, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=x, labels=np.arange(6) % 2)
    data = load_dataset(tmp_path / "d.npz")
    assert data.shape == (3, 8, 8) and data.cond.tolist() == [0, 1, 0, 1, 0, 1]
    latents = np.zeros((4, 4, 2, 2), np.float32)
    np.save(tmp_path / "z.npy", latents)
    np.save(tmp_path / "y.npy", np.array([1, 0, 1, 0]))
    data = load_dataset(tmp_path / "z.npy", labels=tmp_path / "y.npy")
    assert data.shape == (4, 2, 2) and data.cond.tolist() == [1, 0, 1, 0]
    for cls in ("cat", "dog"):
        os.makedirs(tmp_path / "imgs" / cls)
        for i in range(2):
            Image.fromarray(x[i]).resize((12, 10)).save(tmp_path / "imgs" / cls / f"{i}.png")
    data = load_dataset(tmp_path / "imgs", image_size=8)
    assert data.shape == (3, 8, 8) and data.cond.tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="no data array"):
        np.savez(tmp_path / "bad.npz", foo=x)
        load_dataset(tmp_path / "bad.npz")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_dataset(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match=".npz, a .npy"):
        (tmp_path / "x.txt").write_text("hi")
        load_dataset(tmp_path / "x.txt")
    with pytest.raises(ValueError, match="could not read"):
        (tmp_path / "broken.npy").write_bytes(b"\x93NUMPY garbage")
        load_dataset(tmp_path / "broken.npy")
    with pytest.raises(ValueError, match="labels"):
        ArrayDataset(latents, np.zeros(3, np.int64))
