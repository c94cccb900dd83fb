"""Fused U-ViT patch embedding: patchify + linear + token assembly + ``pos_embed``, forward and
backward, in Triton.

    out = cat([prefix, conv2d(x, weight, bias, stride=p).flatten(2).transpose(1, 2)], 1) + pos_embed

Shapes: x (B, C, H, W) with any strides (channels_last too), weight (D, C, p, p) (Conv2d layout,
any strides), bias (D,), pos_embed (L, D) (the launchers take the (1, L, D) parameter's last two
dims), prefix (B, E, D); out (B, L, D) with L = E + N, N = (H/p)·(W/p), K = C·p·p. x, weight and
bias share one "compute" dtype; prefix and pos_embed may be wider (the model passes fp32 ones
under autocast) and the output has the promoted dtype, as the eager cat/add would give.

Roofline. At the imagenet256_uvit_huge training shape (B 128, C 4, 32×32, p 2, D 1152, E 2, bf16)
the op reads ~1 MB of x, 37 KB of weight, 0.6 MB of pos_embed and writes 76 MB of output; it does
2·B·N·D·K = 1.2 GFLOP, ~16 FLOP/byte, far below the H100's ~300 FLOP/byte ridge: the op is bound
by the output write (76 MB at 3.35 TB/s: ~23 µs). The eager chain (conv, cat, add) writes the
token tensor three times and reads it twice (~380 MB): one pass that writes it once is worth ~5× in
principle. Its backward is worse: the transposed gradient is made dense for cuDNN, then read by the
data, weight and bias gradients, and once more for the pos_embed sum (~450 MB); here the gradient is
read twice (~150 MB, + ~15 MB of fp32 partials).

Forward (``_patch_embed_fwd_kernel``): a GEMM [B·N, K] × [K, D] whose A operand is gathered straight
from the image: token m = (b, ph, pw), column k = (c, i, j) lives at x[b, c, ph·p + i, pw·p + j]
(no patchify copy; K is masked, so K = 3 and K = 768 both work, padded to the 16 that tl.dot needs).
The epilogue adds bias and pos_embed row E + n in fp32, casts once, and stores at out[b, E + n].
The programs past the patch tiles of the same 1-D grid copy the prefix rows (+ their pos_embed
rows) into out[:, :E]: one launch in all. D is the fastest grid dimension, so the programs that
share an x tile run together and the re-reads of x (D / BLOCK_D of them, 1 MB each) hit L2. The
tiles (64-128 × 64-256) were checked by compiling for sm_90 (no GPU at hand): with the unit
strides and 16-divisible sizes the JIT specialises on, the epilogue stores are 16-byte vectors and
no bf16/fp16 config spills registers (a few fp32 ones, whose IEEE dots run on the FMA units, spill
a little; the autotuner passes them over).

Backward, with G = grad_out (B, L, D):
- ``_patch_embed_bwd_dx_kernel``: dP = G[:, E:] @ W, [B·N, D] × [D, K], each token's K values
  scattered back to its p×p×C patch of dx (every pixel belongs to one patch: plain stores, no
  atomics). Reads G once (once per K block when K > 64).
- ``_patch_embed_bwd_params_kernel``: one more read of G computes, per (D block, block of BLOCK_R
  rows of L, batch split), the dW partial Σ_b G[b, rows]ᵀ·P[b, rows] (the prefix rows gather zeros,
  so they add nothing) and colsum[rows] = Σ_b G[b, rows]. A second stage sums the partials over the
  splits (``torch.sum`` of [splits·L/BLOCK_R, D, K] and [splits, L, D] fp32 buffers: ~7 MB at the
  huge shape). From colsum: dpos_embed = colsum, dbias = Σ colsum[E:]; dprefix = G[:, :E].
  Splitting the batch, not only D and the rows, is what fills the GPU (D/128 × L/BLOCK_R is 81
  programs at the huge shape); the launcher picks the splits for ~2 programs per SM, as more only
  grow the partials.
- Deterministic: no atomics anywhere. Every sum runs in a fixed order (the batch loop, the dot over
  BLOCK_R rows, the split sums), so the same inputs on the same device with the same autotuned
  config give bitwise-identical gradients.

Precision: fp32 accumulation everywhere; fp32 inputs use IEEE dots (no TF32), fp16/bf16 use tensor
cores. Like the eager autocast backward, the dx and dW dots take G in the compute dtype; colsum
(dbias, dpos_embed) sums G in fp32 as loaded.

Limits: any p (a constexpr: one compiled variant per patch size; the released models use 2 and 4,
the tests 1 to 16); int64 offsets in the pointer arithmetic, int32 token indices (B·L < 2³¹).
Autotuning targets Hopper; under TRITON_INTERPRET=1 one small fixed config runs
(``_common.autotune``). GPU timings are pending (no GPU so far): see benchmarks/bench_patch_embed.py.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._common import INTERPRET, autotune, next_power_of_2

MAX_BLOCK_K = 64  # K above this loops (forward) or becomes a grid dimension (backward)


def _block_k(K: int) -> int:
    return min(max(16, next_power_of_2(K)), MAX_BLOCK_K)


def _dot_precision(dtype: torch.dtype) -> str:
    # "tf32" is the default for 16-bit inputs (ignored there); fp32 inputs must not lose bits to TF32.
    return "ieee" if dtype == torch.float32 else "tf32"


def _bucket(n: int) -> int:
    """Autotune key bucket for a token count: the next power of two (at least 1024)."""
    return max(1024, next_power_of_2(n))


def _prune_by_d(configs, named_args, **kwargs):
    """Drop tiles much wider than D (all masked lanes) and, for short inputs, taller than M."""
    D, M = named_args["D"], named_args["M"]
    max_d, max_m = max(64, next_power_of_2(D)), max(64, next_power_of_2(M))
    kept = [c for c in configs if c.kwargs["BLOCK_D"] <= max_d and c.kwargs.get("BLOCK_M", 0) <= max_m]
    return kept or configs[:1]


def _cfg(num_warps, num_stages, **blocks):
    return triton.Config(blocks, num_warps=num_warps, num_stages=num_stages)


# Forward: output-write bound; wide D tiles give long contiguous row segments per store.
# (BLOCK_M, BLOCK_D, num_warps, num_stages); 128 x 256 tiles spill registers on sm_90: left out.
FWD_CONFIGS = [_cfg(w, s, BLOCK_M=m, BLOCK_D=d) for m, d, w, s in (
    (64, 128, 4, 3), (128, 128, 8, 3), (128, 64, 4, 3), (64, 256, 8, 3), (32, 256, 8, 3), (32, 128, 4, 4),
    (64, 64, 4, 4))]
# Backward dx: reads G once; the D loop is the reduction.
BWD_DX_CONFIGS = [_cfg(w, s, BLOCK_M=m, BLOCK_D=d) for m, d, w, s in (
    (64, 64, 4, 3), (64, 128, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (32, 128, 4, 4), (64, 256, 8, 2))]
# Backward params: BLOCK_R and the batch splits are fixed by the launcher (they size the partial
# buffers); the D tile and the pipeline depth are tuned.
BWD_PARAMS_CONFIGS = [_cfg(w, s, BLOCK_D=d) for d, w, s in (
    (64, 4, 3), (128, 4, 3), (128, 8, 3), (256, 8, 3), (64, 4, 4), (128, 8, 4))]
# Under the interpreter the cost is per program and per op: mid-size tiles that still leave
# masked tails at the test shapes.
INTERPRET_FWD = _cfg(4, 1, BLOCK_M=32, BLOCK_D=32)
INTERPRET_DX = _cfg(4, 1, BLOCK_M=32, BLOCK_D=32)
INTERPRET_PARAMS = _cfg(4, 1, BLOCK_D=32)
BLOCK_R = 16 if INTERPRET else 32  # rows of L per params program (a dot dimension: >= 16)


@triton.jit
def _patch_offsets(offs_n, Wp, sh, sw, P: tl.constexpr):
    """Offset of patch n's top-left pixel inside one image plane (int64)."""
    ph = offs_n // Wp
    pw = offs_n - ph * Wp
    return (ph * P).to(tl.int64) * sh + (pw * P).to(tl.int64) * sw


@triton.jit
def _k_offsets(offs_k, sc, sh, sw, P: tl.constexpr):
    """Offset of column k = (c, i, j) of a patch vector, for a tensor with (c, h, w) strides."""
    c = offs_k // (P * P)
    r = offs_k % (P * P)
    return c.to(tl.int64) * sc + (r // P).to(tl.int64) * sh + (r % P).to(tl.int64) * sw


@autotune(FWD_CONFIGS, key=["D", "K", "m_bucket"], interpret_config=INTERPRET_FWD,
          prune_configs_by={"early_config_prune": _prune_by_d})
@triton.jit
def _patch_embed_fwd_kernel(
    x_ptr, w_ptr, b_ptr, pos_ptr, pre_ptr, out_ptr,
    M, N, Wp, E, D, K, BE,
    sxb, sxc, sxh, sxw,
    swd, swc, swh, sww,
    spl, spd,
    sqb, sqe, sqd,
    sob, sol, sod,
    m_bucket,
    P: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_POS: tl.constexpr, HAS_PREFIX: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    num_d = tl.cdiv(D, BLOCK_D)
    pid_m = pid // num_d
    pid_d = pid % num_d
    num_patch_tiles = tl.cdiv(M, BLOCK_M)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    out_dtype = out_ptr.dtype.element_ty

    if pid_m < num_patch_tiles:
        # Patch tokens: m = b·N + n.
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        mask_m = offs_m < M
        b = offs_m // N
        n = offs_m % N
        x_row = b.to(tl.int64) * sxb + _patch_offsets(n, Wp, sxh, sxw, P)
        acc = tl.zeros((BLOCK_M, BLOCK_D), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            mask_k = offs_k < K
            a = tl.load(x_ptr + x_row[:, None] + _k_offsets(offs_k, sxc, sxh, sxw, P)[None, :],
                        mask=mask_m[:, None] & mask_k[None, :], other=0.0)
            w = tl.load(w_ptr + _k_offsets(offs_k, swc, swh, sww, P)[:, None] + offs_d[None, :].to(tl.int64) * swd,
                        mask=mask_k[:, None] & mask_d[None, :], other=0.0)
            acc = tl.dot(a, w, acc, input_precision=DOT_PRECISION)
        if HAS_BIAS:
            acc += tl.load(b_ptr + offs_d, mask=mask_d, other=0.0).to(tl.float32)[None, :]
        row = (E + n).to(tl.int64)
        mask = mask_m[:, None] & mask_d[None, :]
        if HAS_POS:
            acc += tl.load(pos_ptr + row[:, None] * spl + offs_d[None, :] * spd, mask=mask, other=0.0).to(tl.float32)
        out_off = b.to(tl.int64)[:, None] * sob + row[:, None] * sol + offs_d[None, :] * sod
        tl.store(out_ptr + out_off, acc.to(out_dtype), mask=mask)
    else:
        if HAS_PREFIX:
            # Prefix rows r = b·E + e (only launched when B·E > 0).
            # (names differ from the patch branch's: Triton unifies same-named values across branches)
            offs_r = (pid_m - num_patch_tiles) * BLOCK_M + tl.arange(0, BLOCK_M)
            mask_r = (offs_r < BE)[:, None] & mask_d[None, :]
            rb = (offs_r // E).to(tl.int64)
            re = (offs_r % E).to(tl.int64)
            val = tl.load(pre_ptr + rb[:, None] * sqb + re[:, None] * sqe + offs_d[None, :] * sqd,
                          mask=mask_r, other=0.0).to(tl.float32)
            if HAS_POS:
                val += tl.load(pos_ptr + re[:, None] * spl + offs_d[None, :] * spd, mask=mask_r, other=0.0).to(tl.float32)
            tl.store(out_ptr + rb[:, None] * sob + re[:, None] * sol + offs_d[None, :] * sod, val.to(out_dtype),
                     mask=mask_r)


@autotune(BWD_DX_CONFIGS, key=["D", "K", "m_bucket"], interpret_config=INTERPRET_DX,
          prune_configs_by={"early_config_prune": _prune_by_d})
@triton.jit
def _patch_embed_bwd_dx_kernel(
    g_ptr, w_ptr, dx_ptr,
    M, N, Wp, E, D, K,
    sgb, sgl, sgd,
    swd, swc, swh, sww,
    sxb, sxc, sxh, sxw,
    m_bucket,
    P: tl.constexpr, DOT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    num_k = tl.cdiv(K, BLOCK_K)
    pid_m = pid // num_k
    pid_k = pid % num_k
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mask_m = offs_m < M
    b = offs_m // N
    n = offs_m % N
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_k = offs_k < K
    g_row = b.to(tl.int64) * sgb + (E + n).to(tl.int64) * sgl
    w_col = _k_offsets(offs_k, swc, swh, sww, P)
    compute_dtype = w_ptr.dtype.element_ty
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        offs_d = d0 + tl.arange(0, BLOCK_D)
        mask_d = offs_d < D
        g = tl.load(g_ptr + g_row[:, None] + offs_d[None, :].to(tl.int64) * sgd,
                    mask=mask_m[:, None] & mask_d[None, :], other=0.0)
        w = tl.load(w_ptr + offs_d[:, None].to(tl.int64) * swd + w_col[None, :],
                    mask=mask_d[:, None] & mask_k[None, :], other=0.0)
        acc = tl.dot(g.to(compute_dtype), w, acc, input_precision=DOT_PRECISION)
    dx_off = (b.to(tl.int64) * sxb + _patch_offsets(n, Wp, sxh, sxw, P))[:, None] \
        + _k_offsets(offs_k, sxc, sxh, sxw, P)[None, :]
    tl.store(dx_ptr + dx_off, acc.to(dx_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_k[None, :])


@autotune(BWD_PARAMS_CONFIGS, key=["D", "K", "L", "b_per_split"], interpret_config=INTERPRET_PARAMS,
          prune_configs_by={"early_config_prune": _prune_by_d})
@triton.jit
def _patch_embed_bwd_params_kernel(
    g_ptr, x_ptr, dw_part_ptr, colsum_part_ptr,
    B, L, M, Wp, E, D, K, b_per_split,
    sgb, sgl, sgd,
    sxb, sxc, sxh, sxw,
    P: tl.constexpr, DOT_PRECISION: tl.constexpr, NEED_COLSUM: tl.constexpr,
    BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr,
):
    # M is only read by the prune filter (tile heights); the rows here are the L rows of G.
    pid_dk = tl.program_id(0)
    pid_r = tl.program_id(1)
    pid_s = tl.program_id(2)
    num_k = tl.cdiv(K, BLOCK_K)
    pid_d = pid_dk // num_k
    pid_k = pid_dk % num_k
    offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
    mask_r = offs_r < L
    is_patch = mask_r & (offs_r >= E)  # prefix rows gather zeros: they add nothing to dW
    n = tl.where(is_patch, offs_r - E, 0)
    offs_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    mask_d = offs_d < D
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    mask_k = offs_k < K
    mask_g = mask_r[:, None] & mask_d[None, :]
    mask_x = is_patch[:, None] & mask_k[None, :]

    b_start = pid_s * b_per_split
    b_end = tl.minimum(b_start + b_per_split, B)
    g_ptrs = g_ptr + b_start.to(tl.int64) * sgb + offs_r[:, None].to(tl.int64) * sgl + offs_d[None, :].to(tl.int64) * sgd
    x_ptrs = x_ptr + b_start.to(tl.int64) * sxb + _patch_offsets(n, Wp, sxh, sxw, P)[:, None] \
        + _k_offsets(offs_k, sxc, sxh, sxw, P)[None, :]
    compute_dtype = x_ptr.dtype.element_ty
    dw = tl.zeros((BLOCK_D, BLOCK_K), dtype=tl.float32)
    colsum = tl.zeros((BLOCK_R, BLOCK_D), dtype=tl.float32)
    for _ in range(b_start, b_end):
        g = tl.load(g_ptrs, mask=mask_g, other=0.0)
        a = tl.load(x_ptrs, mask=mask_x, other=0.0)
        dw = tl.dot(tl.trans(g.to(compute_dtype)), a, dw, input_precision=DOT_PRECISION)
        if NEED_COLSUM:
            colsum += g.to(tl.float32)
        g_ptrs += sgb
        x_ptrs += sxb

    split = pid_s * tl.num_programs(1) + pid_r
    dw_off = (split.to(tl.int64) * D + offs_d[:, None]) * K + offs_k[None, :]
    tl.store(dw_part_ptr + dw_off, dw, mask=mask_d[:, None] & mask_k[None, :])
    if NEED_COLSUM:
        if pid_k == 0:  # the K blocks all computed it; one stores it
            cs_off = (pid_s.to(tl.int64) * L + offs_r[:, None]) * D + offs_d[None, :]
            tl.store(colsum_part_ptr + cs_off, colsum, mask=mask_g)


def _check(x: torch.Tensor, weight: torch.Tensor):
    D, C, p, p2 = weight.shape
    if p != p2:
        raise ValueError(f"weight must be (D, C, p, p) with a square kernel, got {tuple(weight.shape)}")
    B, C_x, H, W = x.shape
    if C_x != C or H % p or W % p:
        raise ValueError(f"x {tuple(x.shape)} does not match weight {tuple(weight.shape)} (C, and H, W divisible by p)")
    if x.dtype != weight.dtype:
        raise TypeError(f"x and weight must have one dtype, got {x.dtype} and {weight.dtype}")
    return B, C, H, W, D, p, (H // p) * (W // p), W // p


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 2  # interpreter: a small figure, so the test shapes exercise several batch splits


def patch_embed_fwd(x, weight, bias, pos_embed, prefix, out_dtype: torch.dtype):
    """x (B, C, H, W), weight (D, C, p, p), bias (D,), pos_embed (L, D) or (1, L, D), prefix (B, E, D)
    (each of the last three optional) -> (B, E + N, D) in ``out_dtype``."""
    B, C, H, W, D, p, N, Wp = _check(x, weight)
    E = prefix.shape[1] if prefix is not None else 0
    L = E + N
    out = torch.empty((B, L, D), dtype=out_dtype, device=x.device)
    if out.numel() == 0:
        return out
    pos2 = pos_embed.reshape(pos_embed.shape[-2:]) if pos_embed is not None else None
    M, K, BE = B * N, C * p * p, B * E
    spl, spd = pos2.stride() if pos2 is not None else (0, 0)
    sqb, sqe, sqd = prefix.stride() if prefix is not None else (0, 0, 0)

    def grid(meta):
        tiles = triton.cdiv(M, meta["BLOCK_M"]) + triton.cdiv(BE, meta["BLOCK_M"])
        return (tiles * triton.cdiv(D, meta["BLOCK_D"]),)

    _patch_embed_fwd_kernel[grid](
        x, weight, bias, pos2, prefix, out,
        M, N, Wp, E, D, K, BE,
        *x.stride(), *weight.stride(), spl, spd, sqb, sqe, sqd, *out.stride(),
        _bucket(M),
        P=p, HAS_BIAS=bias is not None, HAS_POS=pos2 is not None, HAS_PREFIX=BE > 0,
        DOT_PRECISION=_dot_precision(x.dtype), BLOCK_K=_block_k(K),
    )
    return out


def patch_embed_bwd_dx(grad, x, weight):
    """dx (like x, in x's dtype) from grad_out (B, E + N, D)."""
    B, C, H, W, D, p, N, Wp = _check(x, weight)
    E = grad.shape[1] - N
    dx = torch.empty_like(x)
    if dx.numel() == 0:
        return dx
    if D == 0:
        return dx.zero_()
    M, K = B * N, C * p * p
    block_k = _block_k(K)

    def grid(meta):
        return (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(K, block_k),)

    _patch_embed_bwd_dx_kernel[grid](
        grad, weight, dx,
        M, N, Wp, E, D, K,
        *grad.stride(), *weight.stride(), *dx.stride(),
        _bucket(M),
        P=p, DOT_PRECISION=_dot_precision(x.dtype), BLOCK_K=block_k,
    )
    return dx


def patch_embed_bwd_params(grad, x, weight, need_colsum=True, num_splits=None):
    """From grad_out (B, E + N, D): dweight (like weight, in its dtype) and colsum (E + N, D) fp32,
    the batch sum of grad_out (dpos_embed = colsum, dbias = colsum[E:].sum(0)). ``num_splits``
    overrides the number of batch splits (a test hook; default: ~2 programs per SM)."""
    B, C, H, W, D, p, N, Wp = _check(x, weight)
    L = grad.shape[1]
    E = L - N
    K = C * p * p
    block_k = _block_k(K)
    num_r = triton.cdiv(L, BLOCK_R)
    if num_splits is None:  # ~2 programs per SM; more splits only grow the fp32 partials
        programs = triton.cdiv(D, 128) * triton.cdiv(K, block_k) * num_r
        num_splits = triton.cdiv(2 * _num_sms(x.device), programs)
    num_splits = max(1, min(num_splits, B))
    b_per_split = triton.cdiv(B, num_splits) if B else 1
    num_splits = triton.cdiv(B, b_per_split) if B else 1
    dw_part = torch.empty((num_splits * num_r, D, K), dtype=torch.float32, device=x.device)
    colsum_part = torch.empty((num_splits, L, D) if need_colsum else (0,), dtype=torch.float32,
                              device=x.device)
    if dw_part.numel():

        def grid(meta):
            return (triton.cdiv(D, meta["BLOCK_D"]) * triton.cdiv(K, block_k), num_r, num_splits)

        _patch_embed_bwd_params_kernel[grid](
            grad, x, dw_part, colsum_part,
            B, L, B * N, Wp, E, D, K, b_per_split,
            *grad.stride(), *x.stride(),
            P=p, DOT_PRECISION=_dot_precision(x.dtype), NEED_COLSUM=need_colsum,
            BLOCK_R=BLOCK_R, BLOCK_K=block_k,
        )
    # Second stage, deterministic: fixed-order sums over the splits.
    dweight = dw_part.sum(0).view(D, C, p, p).to(weight.dtype)
    colsum = colsum_part.sum(0) if need_colsum else None
    return dweight, colsum
