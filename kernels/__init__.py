"""Triton kernels of fastuvit, installed as ``fastuvit.kernels``: one file per fused op, each with
its ``@triton.jit`` kernels and launchers (checks, allocation, grid). Importing a module here
imports Triton; ``fastuvit.ops`` imports them lazily so ``import fastuvit`` works without it."""
