"""End-to-end benchmarks (issue 7) of released configs: a training step (forward, backward, AdamW),
and sampling (50 DPM-Solver steps with the official guidance, one batched 2·B forward per step).

Implementations, each in bf16 autocast on CUDA:
- ``official_eager``: the reference with the official attention (q, k, v cast to fp32 before SDPA);
- ``sdpa_eager``: the reference with same-dtype SDPA (the best eager baseline);
- ``reference_compile``: ``torch.compile`` of the ``sdpa_eager`` model;
- ``fastuvit_eager`` and ``fastuvit_compile``: fastuvit.UViT / UViTT2I, eager and compiled;
- ``fastuvit_cudagraph`` (sampling, CUDA): the network captured once and replayed every step.

Every implementation keeps the config's ``use_checkpoint`` (the ImageNet models checkpoint), so all
do the same work. extra_info: img/s, model TFLOP/s and MFU (against 989 TFLOP/s dense bf16), peak
memory. Without a GPU: a tiny model, fp32, ``aot_eager`` instead of inductor, as a smoke test.
"""
import pytest
import torch
import torch.nn.functional as F

import fastuvit
from benchmarks.harness import DEVICE, ON_GPU, measure, uvit_forward_flops, uvit_training_flops

IMPLS = ("official_eager", "sdpa_eager", "reference_compile", "fastuvit_eager", "fastuvit_compile")

if ON_GPU:
    TRAIN_CASES = [("cifar10_uvit_small", 128), ("imagenet256_uvit_large", 128), ("imagenet256_uvit_huge", 128),
                   ("imagenet256_uvit_huge", 64), ("mscoco_uvit_small", 128)]
    OVERRIDES = {}
else:
    TRAIN_CASES = [("cifar10_uvit_small", 2), ("mscoco_uvit_small", 2)]
    OVERRIDES = dict(img_size=8, depth=2, embed_dim=32, num_heads=2)  # smoke shapes


def build(name, impl):
    overrides = dict(OVERRIDES)
    if name.startswith("mscoco") and not ON_GPU:
        overrides.update(num_clip_token=4, clip_dim=16)
    if impl.startswith("fastuvit"):
        model = fastuvit.create_model(name, **overrides)
    else:
        mode = "official" if impl == "official_eager" else "sdpa"
        model = fastuvit.create_model(name, reference=True, attention_mode=mode, **overrides)
    model = model.to(DEVICE)
    compiled = torch.compile(model, backend="inductor" if ON_GPU else "aot_eager") if impl.endswith("compile") else model
    return model, compiled


def example_batch(model, batch):
    return fastuvit.example_inputs(model, batch, device=DEVICE)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("name,batch", TRAIN_CASES)
def test_training_step(benchmark, name, batch, impl):
    model, net = build(name, impl)
    x, t, cond = example_batch(model, batch)
    target = torch.randn_like(x)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=0.03, betas=(0.99, 0.99),
                            fused=ON_GPU)

    def step():
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=ON_GPU):
            out = net(x, t) if cond is None else net(x, t, cond)
        F.mse_loss(out.float(), target).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    flops = uvit_training_flops(model, batch)
    median_ms = measure(benchmark, step, group=f"train {name} B={batch}", impl=impl, flops=flops,
                        shape=dict(config=name, batch=batch, overrides=OVERRIDES))
    benchmark.extra_info["img_per_s"] = batch / (median_ms * 1e-3)
    if "fraction_of_peak_tflops" in benchmark.extra_info:
        benchmark.extra_info["mfu"] = benchmark.extra_info["fraction_of_peak_tflops"]


# Sampling: 50 DPM-Solver steps of the official evaluation's kind, with its guidance (one batched
# forward of 2·B per step when guided). Latency per batch and img/s.
SAMPLE_IMPLS = IMPLS + (("fastuvit_cudagraph",) if ON_GPU else ())
if ON_GPU:
    SAMPLE_CASES = [(name, b) for name in ("cifar10_uvit_small", "imagenet256_uvit_large", "imagenet256_uvit_huge",
                                           "mscoco_uvit_small") for b in (1, 8, 64)]
    SAMPLE_STEPS = 50
else:
    SAMPLE_CASES = [("mscoco_uvit_small", 1)]  # guided: exercises the batched 2·B path
    SAMPLE_STEPS = 3


@pytest.mark.parametrize("impl", SAMPLE_IMPLS)
@pytest.mark.parametrize("name,batch", SAMPLE_CASES)
def test_sampling(benchmark, name, batch, impl):
    from fastuvit import sampling
    from fastuvit.cuda_graphs import GraphedNetwork

    model, net = build(name, "fastuvit_eager" if impl == "fastuvit_cudagraph" else impl)
    model.eval()
    official = sampling.OFFICIAL_SAMPLING[name]
    guidance = official["guidance_scale"]
    noise, _, cond = example_batch(model, batch)
    null_cond = None
    if guidance and hasattr(model, "context_embed"):
        null_cond = torch.zeros_like(cond[0])  # stands in for the encoded empty prompt
    if impl == "fastuvit_cudagraph":
        rows = 2 * batch if guidance else batch
        x, t, c = example_batch(model, rows)
        with torch.autocast(DEVICE, dtype=torch.bfloat16):
            net = GraphedNetwork(model, x, t, c)

    def run():
        with torch.no_grad():
            return sampling.sample(net, noise, cond, schedule=official["schedule"], sampler="dpm_solver",
                                   steps=SAMPLE_STEPS, guidance_scale=guidance, null_cond=null_cond,
                                   autocast_dtype=torch.bfloat16 if ON_GPU else None)

    evaluations = SAMPLE_STEPS * (2 if guidance else 1)
    flops = uvit_forward_flops(model, batch) * evaluations
    median_ms = measure(benchmark, run, group=f"sample {name} B={batch} steps={SAMPLE_STEPS}", impl=impl,
                        flops=flops, shape=dict(config=name, batch=batch, steps=SAMPLE_STEPS, guidance=guidance))
    benchmark.extra_info["img_per_s"] = batch / (median_ms * 1e-3)
    benchmark.extra_info["latency_ms"] = median_ms
