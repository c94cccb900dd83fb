"""Concat-free U-ViT long skip: ``F.linear(cat([x, skip], -1), weight, bias)`` as one GEMM with
two K phases, and the input gradient as one GEMM with two N halves, in Triton.

Shapes: x, skip (..., D) with any leading dims and strides (unit-stride last dim; see Limits),
weight (N, 2·D) with any strides, bias (N,); out (..., N). M = prod(leading dims).

Forward (``_skip_linear_fwd_kernel``): out tile [BLOCK_M, BLOCK_N] accumulates, in one fp32
accumulator, x[rows] @ weight[:, :D]ᵀ over K = D and then skip[rows] @ weight[:, D:]ᵀ over K = D;
bias is added in the epilogue and the tile is cast once. The (M, 2·D) concatenation never exists:
the eager form writes and re-reads it (2·M·2D·2 bytes, ~300 MB at B=128, L=258, D=1152 in bf16).
Program ids walk the tiles in groups of GROUP_M row tiles (L2 reuse of the weight tiles).

Backward, with g = grad_out (..., N):
- ``_skip_linear_bwd_input_kernel``: [grad_x | grad_skip] = g @ weight, [M, N] × [N, 2·D], one
  launch whose column tiles cover the two D-wide halves separately (a tile never straddles x and
  skip), each half stored into its own contiguous (..., D) tensor.
- grad_weight and grad_bias are not here: ``fastuvit.ops.skip_linear`` computes
  grad_weight = gᵀ[x | skip] as two cuBLAS GEMMs (torch.mm) written straight into the column blocks
  of one preallocated (N, 2·D) tensor, and grad_bias = Σ g. Why not Triton: that GEMM has a long K
  (= M, 33k at batch 128) and a small output (N × 2D: 1152 × 2304 is 81 tiles of 128×256, fewer than
  the 132 SMs), so without split-K a tiled kernel leaves the GPU a third idle, and a deterministic
  split-K would add a workspace and a reduction pass to reach what cuBLAS already does.

Rows: a tensor's leading dims are merged where their strides allow; at most two merged dims stay,
addressed as row m -> (m // rows_inner)·stride_outer + (m % rows_inner)·stride_inner (int64).
So contiguous, row-sliced (e.g. a view of the first D columns of a wider tensor) and transposed
leading dims, as from ``x.transpose(0, 1)``, all run without a copy.

Precision: fp32 accumulation; fp16/bf16 inputs on tensor cores; fp32 inputs use IEEE dots unless
torch allows TF32 for matmuls (then TF32, as F.linear would). Output in the input dtype.

Limits: a last dim that is not unit-stride, or more than two leading dims that cannot be merged,
costs one contiguous copy of that input (a strided K would make every K-loop load uncoalesced, and
each element is re-read N/BLOCK_N times). M < 2³¹. D need not be a multiple of anything: the K
loop masks its tail (an EVEN_K specialisation skips the masks when it divides), row/column tails
wrap for loads and are masked for stores.

Caveat: the two K phases are two pipelined loops, so a tile drains its pipeline once at the phase
boundary (about one load latency per tile, ~2-3% at D=1152; a single loop switching base pointers
is the alternative to measure).

Determinism: no atomics, no split-K: the same inputs with the same autotuned config give bitwise
identical results.

Autotuning targets Hopper (H100/H200): ``HOPPER_GEMM_CONFIGS``, keyed on (M bucket, N, K, dtypes),
pruned per problem by ``prune_gemm_configs``; ``FASTUVIT_AUTOTUNE=0`` takes the first surviving
config without benchmarking. Under TRITON_INTERPRET=1 one small fixed config runs
(``_common.autotune``). Checked without a GPU by compiling for sm_90 (tests/test_skip_linear.py):
both kernels lower tl.dot to wgmma and pipeline the K loop with 16-byte cp.async when D and the
strides are multiples of 16 (a D that is not loads element by element, unpipelined).
"""
from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from ._common import autotune, next_power_of_2


def _cfg(block_m, block_n, block_k, num_stages, num_warps, group_m=8):
    return triton.Config({"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "GROUP_M": group_m},
                         num_stages=num_stages, num_warps=num_warps)


# Hopper tiles for 16-bit GEMMs with K in the hundreds to thousands; the prune filter shrinks
# them for small problems and drops what does not fit in shared memory (fp32 halves the choice).
HOPPER_GEMM_CONFIGS = [
    _cfg(128, 256, 64, 3, 8),
    _cfg(256, 128, 64, 3, 8),
    _cfg(128, 256, 64, 4, 8),
    _cfg(128, 128, 64, 4, 8),
    _cfg(128, 128, 64, 4, 4),
    _cfg(128, 128, 128, 3, 8),
    _cfg(64, 256, 64, 4, 4),
    _cfg(128, 64, 64, 4, 4),
    _cfg(64, 128, 64, 4, 4),
    _cfg(64, 64, 64, 4, 4),
    _cfg(64, 64, 32, 5, 4),
]
# Under the interpreter cost is per program and per op: mid-size tiles that still leave masked
# tails, and GROUP_M = 4 so the test shapes have several (and partial) row groups.
INTERPRET_GEMM_CONFIG = _cfg(32, 32, 32, 1, 4, group_m=4)
MIN_TILE = 16  # tl.dot's smallest dimension


@functools.lru_cache(maxsize=None)
def _max_shared_memory(device_index: int) -> int:
    return triton.runtime.driver.active.utils.get_device_properties(device_index)["max_shared_mem"]


def prune_gemm_configs(configs, named_args, smem_limit=None, **kwargs):
    """Clamp each tile to the problem (no tile wider than the next power of two of its dim: the
    extra lanes would be all masked), then drop duplicates and configs whose pipelined A and B tiles
    do not fit in shared memory. Always returns at least one config (``_common.autotune`` keeps only
    the first under ``FASTUVIT_AUTOTUNE=0``)."""
    m, n, k = (max(MIN_TILE, next_power_of_2(named_args[d])) for d in ("M_BUCKET", "N", "K"))
    elem = named_args["w_ptr"].element_size()
    if smem_limit is None:
        smem_limit = _max_shared_memory(torch.cuda.current_device())
    seen, kept = set(), []
    for c in configs:
        bm, bn, bk = min(c.kwargs["BLOCK_M"], m), min(c.kwargs["BLOCK_N"], n), min(c.kwargs["BLOCK_K"], k)
        sig = (bm, bn, bk, c.kwargs["GROUP_M"], c.num_stages, c.num_warps)
        if sig in seen:
            continue
        seen.add(sig)
        if c.num_stages * (bm + bn) * bk * elem > smem_limit:
            continue
        kept.append(_cfg(bm, bn, bk, c.num_stages, c.num_warps, c.kwargs["GROUP_M"]))
    if not kept:  # the smallest tile with two stages fits anything a GPU has
        kept = [_cfg(min(64, m), min(64, n), min(32, k), 2, 4)]
    return kept


def _even_k(args):
    return args["K"] % args["BLOCK_K"] == 0


def _gemm_kernel(fn):
    """The autotuning shared by both kernels: keyed on the GEMM's (M bucket, N, K) and dtypes."""
    fn = triton.heuristics({"EVEN_K": _even_k})(fn)
    return autotune(HOPPER_GEMM_CONFIGS, key=["M_BUCKET", "N", "K"], interpret_config=INTERPRET_GEMM_CONFIG,
                    prune_configs_by={"early_config_prune": prune_gemm_configs})(fn)


@triton.jit
def _grouped_tile(pid, M, num_pid_n, BLOCK_M: tl.constexpr, GROUP_M: tl.constexpr):
    """Tile (pid_m, pid_n) of program ``pid``, walking GROUP_M row tiles per column sweep."""
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_in_group = GROUP_M * num_pid_n
    first_pid_m = (pid // num_pid_in_group) * GROUP_M
    group_size_m = min(num_pid_m - first_pid_m, GROUP_M)
    pid_m = first_pid_m + (pid % num_pid_in_group) % group_size_m
    pid_n = (pid % num_pid_in_group) // group_size_m
    return pid_m, pid_n


@triton.jit
def _row_offsets(rows, rows_inner, stride_outer, stride_inner):
    m = rows.to(tl.int64)
    return (m // rows_inner) * stride_outer + (m % rows_inner) * stride_inner


@triton.jit
def _accumulate(acc, a_ptrs, b_ptrs, K, stride_bk, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
                DOT_PRECISION: tl.constexpr):
    """acc += A[:, :K] @ B[:K, :]: A tiles at a_ptrs (unit stride along K), B tiles at b_ptrs."""
    offs_k = tl.arange(0, BLOCK_K)
    for k in range(0, tl.cdiv(K, BLOCK_K)):
        if EVEN_K:
            a = tl.load(a_ptrs)
            b = tl.load(b_ptrs)
        else:
            k_left = K - k * BLOCK_K
            a = tl.load(a_ptrs, mask=offs_k[None, :] < k_left, other=0.0)
            b = tl.load(b_ptrs, mask=offs_k[:, None] < k_left, other=0.0)
        acc = tl.dot(a, b, acc, input_precision=DOT_PRECISION)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K * stride_bk
    return acc


@_gemm_kernel
@triton.jit
def _skip_linear_fwd_kernel(
    x_ptr, skip_ptr, w_ptr, b_ptr, out_ptr,
    M, N, K, M_BUCKET,
    x_rows_inner, x_stride_outer, x_stride_inner,
    s_rows_inner, s_stride_outer, s_stride_inner,
    stride_wn, stride_wk,
    HAS_BIAS: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    # GEMM dims: M rows, N = weight rows (output width), K = D per phase.
    pid_m, pid_n = _grouped_tile(tl.program_id(0), M, tl.cdiv(N, BLOCK_N), BLOCK_M, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    rows = offs_m % M  # tails wrap onto valid rows/columns: loads need no M/N masks, stores do
    cols = offs_n % N

    # B = weight[:, phase]ᵀ: element (k, n) at n·stride_wn + k·stride_wk.
    w_ptrs = w_ptr + cols.to(tl.int64)[None, :] * stride_wn + offs_k[:, None] * stride_wk
    x_ptrs = x_ptr + _row_offsets(rows, x_rows_inner, x_stride_outer, x_stride_inner)[:, None] + offs_k[None, :]
    s_ptrs = skip_ptr + _row_offsets(rows, s_rows_inner, s_stride_outer, s_stride_inner)[:, None] + offs_k[None, :]

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc = _accumulate(acc, x_ptrs, w_ptrs, K, stride_wk, BLOCK_K, EVEN_K, DOT_PRECISION)
    acc = _accumulate(acc, s_ptrs, w_ptrs + K * stride_wk, K, stride_wk, BLOCK_K, EVEN_K, DOT_PRECISION)

    mask_n = offs_n < N
    if HAS_BIAS:
        acc += tl.load(b_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)[None, :]
    out_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty), mask=(offs_m < M)[:, None] & mask_n[None, :])


@_gemm_kernel
@triton.jit
def _skip_linear_bwd_input_kernel(
    g_ptr, w_ptr, dx_ptr, ds_ptr,
    M, N, K, M_BUCKET,
    g_rows_inner, g_stride_outer, g_stride_inner,
    stride_wk, stride_wn,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    # GEMM dims: M rows, N = D per half (column tiles never straddle the halves), K = weight rows.
    tiles_per_half = tl.cdiv(N, BLOCK_N)
    pid_m, pid_n = _grouped_tile(tl.program_id(0), M, 2 * tiles_per_half, BLOCK_M, GROUP_M)
    half = pid_n // tiles_per_half  # 0: grad_x, 1: grad_skip
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = (pid_n - half * tiles_per_half) * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    rows = offs_m % M
    cols = half * N + offs_n % N  # column of weight

    g_ptrs = g_ptr + _row_offsets(rows, g_rows_inner, g_stride_outer, g_stride_inner)[:, None] + offs_k[None, :]
    w_ptrs = w_ptr + cols.to(tl.int64)[None, :] * stride_wn + offs_k[:, None] * stride_wk
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc = _accumulate(acc, g_ptrs, w_ptrs, K, stride_wk, BLOCK_K, EVEN_K, DOT_PRECISION)

    out_offs = offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
    if half == 0:
        tl.store(dx_ptr + out_offs, acc.to(dx_ptr.dtype.element_ty), mask=mask)
    else:
        tl.store(ds_ptr + out_offs, acc.to(ds_ptr.dtype.element_ty), mask=mask)


# ----------------------------------------------------------------------------------------------
# Launchers


def _row_layout(t: torch.Tensor):
    """(tensor, rows_inner, stride_outer, stride_inner) addressing t's rows (see the header); copies
    t only when its last dim is not unit-stride or its leading dims need more than two strides."""
    if t.stride(-1) != 1 and t.shape[-1] > 1:
        t = t.contiguous()
    merged: list[list[int]] = []  # [size, stride], outermost first
    for size, stride in zip(t.shape[:-1], t.stride()[:-1]):
        if size == 1:
            continue
        if merged and merged[-1][1] == size * stride:
            merged[-1] = [merged[-1][0] * size, stride]
        else:
            merged.append([size, stride])
    if len(merged) > 2:
        return _row_layout(t.contiguous())
    if not merged:
        return t, 1, 0, 0
    if len(merged) == 1:
        return t, merged[0][0], 0, merged[0][1]
    return t, merged[1][0], merged[0][1], merged[1][1]


def _dot_precision(dtype: torch.dtype) -> str:
    # 16-bit inputs ignore it; fp32 follows torch's matmul setting, as F.linear does.
    if dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32:
        return "ieee"
    return "tf32"


def _m_bucket(m: int) -> int:
    """Autotune key for the row count: its next power of two."""
    return next_power_of_2(max(m, 1))


def _check_same_dtype_device(**tensors) -> None:
    present = {k: v for k, v in tensors.items() if v is not None}
    if len({(v.dtype, v.device) for v in present.values()}) > 1:
        listing = ", ".join(f"{k} {v.dtype} on {v.device}" for k, v in present.items())
        raise ValueError(f"operands must share dtype and device, got {listing}")


def skip_linear_fwd(x: torch.Tensor, skip: torch.Tensor, weight: torch.Tensor,
                    bias: torch.Tensor | None = None) -> torch.Tensor:
    """x @ weight[:, :D]ᵀ + skip @ weight[:, D:]ᵀ + bias, shape (..., N), in x's dtype."""
    D, N = x.shape[-1], weight.shape[0]
    if skip.shape != x.shape or weight.dim() != 2 or weight.shape[1] != 2 * D:
        raise ValueError(f"x {tuple(x.shape)} and skip {tuple(skip.shape)} must match, and weight "
                         f"{tuple(weight.shape)} must be (N, 2·D)")
    _check_same_dtype_device(x=x, skip=skip, weight=weight, bias=bias)
    M = math.prod(x.shape[:-1])
    out = torch.empty(*x.shape[:-1], N, device=x.device, dtype=x.dtype)
    if M == 0 or N == 0:
        return out
    if bias is not None:
        bias = bias.contiguous()  # N elements
    x, *x_rows = _row_layout(x)
    skip, *s_rows = _row_layout(skip)
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(N, meta["BLOCK_N"]),)  # noqa: E731
    _skip_linear_fwd_kernel[grid](
        x, skip, weight, bias, out,
        M, N, D, _m_bucket(M),
        *x_rows, *s_rows,
        weight.stride(0), weight.stride(1),
        HAS_BIAS=bias is not None, DOT_PRECISION=_dot_precision(x.dtype),
    )
    return out


def skip_linear_bwd_input(grad_out: torch.Tensor, weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_x, grad_skip) = (g @ weight[:, :D], g @ weight[:, D:]), each (..., D) contiguous."""
    N, D = weight.shape[0], weight.shape[1] // 2
    if weight.dim() != 2 or grad_out.shape[-1] != N:
        raise ValueError(f"grad_out {tuple(grad_out.shape)} must end in weight's rows, weight {tuple(weight.shape)}")
    _check_same_dtype_device(grad_out=grad_out, weight=weight)
    M = math.prod(grad_out.shape[:-1])
    grad_x = torch.empty(*grad_out.shape[:-1], D, device=grad_out.device, dtype=grad_out.dtype)
    grad_skip = torch.empty_like(grad_x)
    if M == 0 or D == 0:
        return grad_x, grad_skip
    g, *g_rows = _row_layout(grad_out)
    grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * 2 * triton.cdiv(D, meta["BLOCK_N"]),)  # noqa: E731
    _skip_linear_bwd_input_kernel[grid](
        g, weight, grad_x, grad_skip,
        M, D, N, _m_bucket(M),
        *g_rows,
        weight.stride(0), weight.stride(1),
        DOT_PRECISION=_dot_precision(g.dtype),
    )
    return grad_x, grad_skip
