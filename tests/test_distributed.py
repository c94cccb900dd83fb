"""Distributed training on CPU with gloo and 2 processes (torchrun): DDP and FSDP2 replicas stay
identical, a 2-process run equals a 1-process run with the same global batch, and an FSDP training
checkpoint resumes in a single process."""
import os
import subprocess
import sys

import pytest
import torch

from distributed_case import HALF, STEPS, make_trainer
from fastuvit.ops import eager_fallback

HERE = os.path.dirname(os.path.abspath(__file__))
STRATEGIES = ("ddp", "fsdp")
# all-reduce sums in another order than one process's batch mean: equal up to fp32 rounding
TOL = dict(rtol=1e-5, atol=1e-6)

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="needs torch.distributed with gloo")


def worker_env():
    env = dict(os.environ, FASTUVIT_DISABLE_KERNELS="1", OMP_NUM_THREADS="1")
    env.pop("TRITON_INTERPRET", None)  # the workers train; they do not test kernels
    return env


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           os.path.join(HERE, "distributed_worker.py"), str(out)]
    proc = subprocess.run(cmd, env=worker_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return {(s, r): torch.load(out / f"{s}_rank{r}.pt", weights_only=True) for s in STRATEGIES for r in (0, 1)}, out


@pytest.fixture(scope="module")
def one_process():
    with eager_fallback():
        trainer = make_trainer(None)
        losses = trainer.fit(STEPS)
    return {"model": trainer.model.state_dict(), "ema": trainer.ema.state_dict(), "losses": losses}


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_replicas_are_identical(two_processes, strategy):
    runs, _ = two_processes
    for part in ("model", "ema"):
        a, b = runs[strategy, 0][part], runs[strategy, 1][part]
        assert list(a) == list(b)
        for k in a:
            assert torch.equal(a[k], b[k]), (strategy, part, k)
    assert runs[strategy, 0]["losses"] == runs[strategy, 1]["losses"]  # all-reduced: the global batch's


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_two_processes_equal_one_with_the_same_global_batch(two_processes, one_process, strategy):
    runs, _ = two_processes
    got = runs[strategy, 0]
    for part in ("model", "ema"):
        assert list(got[part]) == list(one_process[part])
        for k, v in one_process[part].items():
            torch.testing.assert_close(got[part][k], v, **TOL, msg=f"{strategy} {part} {k}")
    torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(one_process["losses"]), **TOL)
    initial = make_trainer(None).model.state_dict()
    assert all(not torch.equal(one_process["model"][k], initial[k]) for k in initial)  # the runs did train


def test_fsdp_checkpoint_resumes_in_one_process(two_processes):
    runs, out = two_processes
    with eager_fallback():
        trainer = make_trainer(None)
        trainer.load(str(out / "fsdp_state.pt"))
        assert trainer.step == HALF
        trainer.fit(STEPS)
    for part, module in (("model", trainer.model), ("ema", trainer.ema)):
        for k, v in module.state_dict().items():
            torch.testing.assert_close(runs["fsdp", 0][part][k], v, **TOL, msg=f"{part} {k}")


@pytest.mark.parametrize("strategy", ["fsdp"])
def test_cli_train_under_torchrun_equals_one_process(tmp_path, strategy):
    import numpy as np

    from fastuvit.cli import main

    g = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=g.uniform(-1, 1, (10, 1, 4, 4)).astype(np.float32), y=g.integers(0, 2, 10))
    args = ["train", "--variant", "uvit", "--set", "img_size=4", "--set", "patch_size=2", "--set", "embed_dim=16",
            "--set", "depth=2", "--set", "num_heads=2", "--set", "num_classes=3", "--set", "in_chans=1",
            "--data", str(tmp_path / "d.npz"),
            "--steps", "3", "--batch-size", "4", "--warmup-steps", "1", "--ema-rate", "0.5", "--no-progress"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "fastuvit",
           *args, "--out", str(tmp_path / "two"), "--strategy", strategy, "--device", "cpu"]
    proc = subprocess.run(cmd, env=worker_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    with eager_fallback():
        assert main([*args, "--out", str(tmp_path / "one")]) == 0
    for name in ("nnet.pth", "nnet_ema.pth"):
        one = torch.load(tmp_path / "one" / name, weights_only=True)
        two = torch.load(tmp_path / "two" / name, weights_only=True)
        assert list(one) == list(two)
        for k in one:
            torch.testing.assert_close(two[k], one[k], **TOL, msg=f"{name} {k}")
    info = __import__("json").loads((tmp_path / "two" / "run.json").read_text())
    assert info["world_size"] == 2
