"""Soak, determinism and faults (issue 8): long training without memory growth, bit-identical
reruns, a process killed while writing a checkpoint. These test the training loop, not the
kernels, so the model runs its eager fallbacks (the interpreter would make 300 steps take minutes)."""
import os
import signal
import subprocess
import sys

import pytest
import torch

import fastuvit
from reliability_case import MODEL, make_trainer


@pytest.fixture(autouse=True)
def _eager_and_restore_determinism():
    deterministic = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    with fastuvit.ops.eager_fallback():
        yield
    torch.use_deterministic_algorithms(deterministic)
    torch.set_num_threads(threads)


def _resident_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


SOAK_STEPS, WARMUP_STEPS = 300, 50


def test_soak_300_steps_flat_memory_finite_loss():
    trainer = make_trainer(steps=SOAK_STEPS)
    trainer.fit(WARMUP_STEPS)
    cuda = trainer.device.type == "cuda"
    before = torch.cuda.max_memory_allocated() if cuda else _resident_bytes()
    losses = trainer.fit(SOAK_STEPS)
    after = torch.cuda.max_memory_allocated() if cuda else _resident_bytes()
    assert trainer.step == SOAK_STEPS
    assert all(torch.isfinite(torch.tensor(losses))), "non-finite loss"
    # CUDA: the peak must not move at all; CPU: resident memory within allocator noise (a leak of
    # one activation per step would add ~250 x 64 KB here).
    limit = 0 if cuda else 8 * 2**20
    assert after - before <= limit, f"memory grew by {(after - before) / 2**20:.1f} MiB over {SOAK_STEPS - WARMUP_STEPS} steps"


def test_two_deterministic_runs_give_bit_identical_weights():
    states = []
    for _ in range(2):
        trainer = make_trainer(steps=15)
        trainer.fit()
        states.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
        states.append({k: v.clone() for k, v in trainer.ema.state_dict().items()})
    for a, b in ((states[0], states[2]), (states[1], states[3])):
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), k


def test_sigkill_while_checkpointing_keeps_the_previous_one_and_resume_continues(tmp_path):
    here = os.path.dirname(os.path.abspath(__file__))
    child = subprocess.Popen([sys.executable, os.path.join(here, "reliability_case.py"), str(tmp_path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=dict(os.environ, FASTUVIT_DISABLE_KERNELS="1"))
    try:
        line = child.stdout.readline()  # blocks until the second checkpoint is half-written
        assert line.strip() == "WRITING", child.stderr.read()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL

    # The kill hit the first file of the second save (nnet.pth, written before the training state):
    # every file under its own name is still the whole checkpoint of step 6.
    path = tmp_path / "train_state.pth"
    resumed = make_trainer(steps=12)
    resumed.load(str(path))
    assert resumed.step == 6
    weights = fastuvit.load_state_dict_file(tmp_path / "nnet.pth")
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(weights[k], v), k
    fastuvit.load_checkpoint(fastuvit.UViT(**MODEL), tmp_path / "nnet_ema.pth")
    tail = resumed.fit(12)

    uninterrupted = make_trainer(steps=12)
    losses = uninterrupted.fit(12)
    assert tail == losses[6:], "the resumed run left the uninterrupted loss trajectory"
    for (k, a), b in zip(uninterrupted.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
