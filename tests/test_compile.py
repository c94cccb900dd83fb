"""torch.compile(fullgraph=True) of the whole model: exactly one frame, outputs and gradients equal
to eager, for inference and training, with activation checkpointing too. On CPU the fused ops'
kernels run interpreted inside the compiled graph (custom ops are opaque to inductor)."""
import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import fastuvit
from model_cases import CASES, call, make_inputs, rel_err


def _compiled(model):
    torch._dynamo.reset()
    counter = CompileCounterWithBackend("inductor")
    return torch.compile(model, backend=counter, fullgraph=True), counter


@pytest.mark.parametrize("case", ["class_cond", "t2i"])
def test_compiled_inference_is_one_frame_and_matches_eager(case):
    variant, kwargs = CASES[case]
    model = (fastuvit.UViTT2I if variant == "uvit_t2i" else fastuvit.UViT)(**kwargs).eval()
    x, t, cond = make_inputs(variant, kwargs)
    compiled, counter = _compiled(model)
    with torch.no_grad():
        expected = call(model, x, t, cond)
        got = call(compiled, x, t, cond)
        again = call(compiled, x, t + 1, cond)  # new timestep values: no recompilation
    assert counter.frame_count == 1
    assert rel_err(got, expected) <= 1e-4
    assert again.shape == expected.shape


@pytest.mark.parametrize("use_checkpoint", [False, True])
def test_compiled_training_step_matches_eager(use_checkpoint):
    variant, kwargs = CASES["class_cond"]
    kwargs = dict(kwargs, use_checkpoint=use_checkpoint)
    eager = fastuvit.UViT(**kwargs)
    twin = fastuvit.UViT(**kwargs)
    twin.load_state_dict(eager.state_dict())
    compiled, counter = _compiled(twin)
    x, t, y = make_inputs(variant, kwargs)
    target = torch.randn_like(x)
    losses = []
    for model in (eager, compiled):
        loss = (model(x, t, y) - target).square().mean()
        loss.backward()
        losses.append(loss.detach())
    assert counter.frame_count == 1
    assert rel_err(losses[1], losses[0]) <= 1e-5
    for (name, p), q in zip(eager.named_parameters(), twin.parameters()):
        assert rel_err(q.grad, p.grad) <= 1e-4, name
