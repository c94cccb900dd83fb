"""CUDA graphs: a captured network replays to the eager result; a reduce-overhead training step
matches eager. CUDA only."""
import pytest
import torch

import fastuvit
from fastuvit.cuda_graphs import GraphedNetwork
from model_cases import CASES, make_inputs, rel_err

pytestmark = pytest.mark.cuda


def _cuda_inputs(variant, kwargs, batch):
    return [t.cuda() if t is not None else None for t in make_inputs(variant, kwargs, batch=batch)]


@pytest.mark.parametrize("case", ["class_cond", "t2i"])
def test_graphed_network_replays_eager(case):
    variant, kwargs = CASES[case]
    model = (fastuvit.UViTT2I if variant == "uvit_t2i" else fastuvit.UViT)(**kwargs).cuda().eval()
    x, t, cond = _cuda_inputs(variant, kwargs, batch=4)
    net = GraphedNetwork(model, x, t, cond)
    for step in range(3):  # new inputs each replay, as in a sampling loop
        x_new, t_new = torch.randn_like(x), torch.rand_like(t) * 999
        with torch.no_grad():
            expected = model(x_new, t_new, cond)
        assert rel_err(net(x_new, t_new, cond), expected) <= 1e-5


def test_graphed_network_refuses_other_shapes():
    variant, kwargs = CASES["class_cond"]
    model = fastuvit.UViT(**kwargs).cuda().eval()
    x, t, y = _cuda_inputs(variant, kwargs, batch=2)
    net = GraphedNetwork(model, x, t, y)
    with pytest.raises(ValueError, match="x must match"):
        net(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, y]))


def test_reduce_overhead_training_step_matches_eager():
    variant, kwargs = CASES["class_cond"]
    eager = fastuvit.UViT(**kwargs).cuda()
    twin = fastuvit.UViT(**kwargs).cuda()
    twin.load_state_dict(eager.state_dict())
    compiled = torch.compile(twin, mode="reduce-overhead", fullgraph=True)
    x, t, y = _cuda_inputs(variant, kwargs, batch=4)
    target = torch.randn_like(x)
    # SGD, not Adam: an update proportional to the gradient keeps the fp32 rounding differences of
    # the two paths (inductor's fused kernels vs eager) proportional too. Adam's normalised update
    # turns a rounding difference in a near-zero gradient into a full lr-sized step (2.5e-4 relative
    # after 4 AdamW steps on an H100).
    opts = [torch.optim.SGD(m.parameters(), lr=0.05) for m in (eager, twin)]
    for step in range(4):
        for model, opt in zip((eager, compiled), opts):
            torch.compiler.cudagraph_mark_step_begin()
            loss = (model(x, t, y) - target).square().mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    for (name, p), q in zip(eager.named_parameters(), twin.parameters()):
        assert rel_err(q.detach(), p.detach()) <= 1e-4, name
