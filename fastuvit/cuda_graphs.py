"""CUDA graphs for sampling: capture the network once, replay it every solver step.

    net = fastuvit.cuda_graphs.GraphedNetwork(model, x, t, y)     # example inputs fix the shapes
    eps = net(x_t, t_batch, y)                                       # same call as model(...)

Guided sampling batches the conditional and unconditional halves into one call, so capture with
the doubled batch (2·B) and the sampler replays one graph per step. The output is a static buffer
that the next call overwrites: consume it (the solver's arithmetic does) or ``.clone()`` it.

Inputs are copied into static buffers before each replay, so any tensors of the captured shapes,
dtypes and device may be passed. Weights are read in place: an optimizer step or
``load_state_dict`` (which copies into the parameters) is seen by the next replay; replacing a
parameter tensor object is not.

For training, ``torch.compile(model, mode="reduce-overhead")`` captures the compiled forward and
backward in CUDA graphs (it needs static input shapes and ``torch.compiler.cudagraph_mark_step_begin()``
between steps when outputs are kept across them).
"""
from __future__ import annotations

import torch


class GraphedNetwork:
    def __init__(self, model: torch.nn.Module, x: torch.Tensor, timesteps: torch.Tensor, cond=None, warmup: int = 3):
        if not torch.cuda.is_available() or x.device.type != "cuda":
            raise ValueError("GraphedNetwork needs CUDA tensors: x is on " + str(x.device))
        self.model = model
        self.static_inputs = [t.clone() if isinstance(t, torch.Tensor) else t for t in (x, timesteps, cond)]
        # Warm up on a side stream (allocator and autotuning), as the CUDA graphs docs prescribe.
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(warmup):
                self._run()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.no_grad():
            self.static_output = self._run()

    def __getattr__(self, name):  # model attributes (num_classes, extras...) read through
        if name == "model":
            raise AttributeError(name)
        return getattr(self.model, name)

    def _run(self):
        x, t, cond = self.static_inputs
        return self.model(x, t) if cond is None else self.model(x, t, cond)

    def __call__(self, x, timesteps, cond=None):
        for name, static, new in zip(("x", "timesteps", "cond"), self.static_inputs, (x, timesteps, cond)):
            if (static is None) != (new is None):
                raise ValueError(f"{name}: the graph was captured {'without' if static is None else 'with'} it")
            if static is None:
                continue
            if new.shape != static.shape or new.dtype != static.dtype:
                raise ValueError(f"{name} must match the captured {tuple(static.shape)} {static.dtype}, "
                                 f"got {tuple(new.shape)} {new.dtype}")
            static.copy_(new)
        self.graph.replay()
        return self.static_output
