"""Flash attention for U-ViT's shapes: non-causal, no mask, (B, L, H, hd) tensors with any strides.

Algorithm (FlashAttention-2, Dao 2023):
- Forward ``_attention_fwd_kernel``: one program per (batch·head, query tile). It streams the key /
  value tiles with the online softmax (running max and sum in fp32, exp2 of log2e-scaled scores),
  writes O = softmax(q kᵀ·scale) v and the log-sum-exp of each row (fp32, in base 2 of the
  log2e-scaled scores: ``lse2 = max + log2(sum)``, so the backward recomputes
  P = exp2(s·scale·log2e − lse2) with no extra multiply).
- Backward, by recomputation from the log-sum-exp: ``_attention_bwd_preprocess_kernel`` computes
  delta = rowsum(dO ∘ O) (fp32); then ``_attention_bwd_kernel`` runs twice: its dK/dV pass (one
  program per key tile) loops over the query tiles and accumulates dV = Pᵀ dO and
  dK = scale · dSᵀ Q, dS = P ∘ (dP − delta), dP = dO Vᵀ; its dQ pass (one program per query
  tile) loops over the key tiles and accumulates dQ = scale · dS K. No atomics: every output
  element is written by exactly one program in a fixed order, so the backward is deterministic
  (run to run, bit for bit). The price is recomputing Q Kᵀ and dO Vᵀ in the dQ pass: 7 matmuls
  instead of the 5 counted by the usual "backward = 2.5× forward" FLOP convention.

Shapes:
- Any L ≥ 1, no divisibility: a program's own tile (queries in the forward and dQ kernels, keys
  in the dK/dV kernel) is either a full BLOCK_OWN tile or a 16-row tail tile (the rows past the
  last full tile are covered by 16-row programs, so L = 258 with BLOCK_OWN = 128 costs 256 + 16
  rows, not 384); the loop over the other sequence runs full BLOCK_LOOP tiles without masks,
  then 16-row tail steps with masks.
- Head dims 16–128 in multiples of 8, not padded to a power of two: the head dim is split into a
  power-of-two main tile and a tail tile (72 = 64 + 16 with 8 masked columns, 80 = 64 + 16,
  96 = 64 + 32), every product over the head dim is two ``tl.dot`` calls. Tails that are not a
  power of two ≥ 16 are padded (104 = 64 + 64 with 24 masked columns).
- Strides: q, k, v, dO any strides with a unit last stride (the launcher copies otherwise); O,
  dQ, dK, dV are allocated contiguous (B, L, H, hd). When every stride is a multiple of 8
  elements the kernels are told so (``STRIDE_ALIGN``): Triton only knows integer arguments
  divisible by 16 to be aligned, so for hd = 72 (head stride 72) the sm_90 code would otherwise
  have scalar loads and no cp.async pipelining at all (checked in the PTX).
- Offsets are int64 (B·H·L·hd may exceed 2³¹). B·H is folded into a 1-D grid, so any size works.
- fp16 / bf16 on a GPU (P and dS are rounded to the input dtype before their matmuls, as in
  FlashAttention); fp32 with IEEE dot products (no TF32), which is what the CPU tests use.

Tuning: autotuned for Hopper with configs in named lists, pruned by sequence bucket, warps and
shared memory (``_pruner``); the key is (sequence-length bucket, head dim, dtypes), and L, H are
not specialised on, so a new L in the same bucket reuses the tuned config and binary. Under
``TRITON_INTERPRET=1`` one fixed config runs. Register and shared-memory figures quoted below come
from compiling for sm_90 with this Triton's ptxas (no GPU needed); timings are pending a GPU.

Caveats: dropout, masks, causal attention and different q / kv lengths are not supported (U-ViT
needs none). bf16 dot products are wrong in Triton's interpreter, so bf16 is GPU-only here.
"""
from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from ._common import autotune, next_power_of_2

LOG2E = 1.4426950408889634
TAIL_ROWS = 16  # rows of a tail tile (the smallest tl.dot operand dimension)
PREPROCESS_ROWS = 64  # rows per program of the delta = rowsum(dO ∘ O) kernel
MIN_HEAD_DIM, MAX_HEAD_DIM, HEAD_DIM_MULTIPLE = 16, 128, 8
SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


# --------------------------------------------------------------------------------------------
# Shape helpers (host side)
# --------------------------------------------------------------------------------------------

def head_dim_split(hd: int) -> tuple[int, int]:
    """(main, tail) tile widths covering ``hd``: the largest power of two ≤ hd, then the rest
    rounded up to a power of two ≥ 16 (0 when hd is a power of two)."""
    main = 1 << (hd.bit_length() - 1)
    rest = hd - main
    return main, (0 if rest == 0 else max(TAIL_ROWS, next_power_of_2(rest)))


def length_bucket(L: int) -> int:
    """Autotune key for the sequence length: L rounded up to a multiple of 32 up to 1024, to a
    power of two above. U-ViT's 257 / 258 share a bucket, 334 has its own."""
    return -(-L // 32) * 32 if L <= 1024 else next_power_of_2(L)


def unsupported_reason(q: torch.Tensor) -> str | None:
    """Why these kernels cannot take attention inputs shaped like ``q`` (B, L, H, hd), or None."""
    hd = q.shape[-1]
    if hd % HEAD_DIM_MULTIPLE or not MIN_HEAD_DIM <= hd <= MAX_HEAD_DIM:
        return (f"head dim must be a multiple of {HEAD_DIM_MULTIPLE} in "
                f"[{MIN_HEAD_DIM}, {MAX_HEAD_DIM}], got {hd}")
    if q.dtype not in SUPPORTED_DTYPES:
        return f"dtype must be float16, bfloat16 or float32, got {q.dtype}"
    if q.device.type == "cpu" and q.dtype == torch.bfloat16:
        return "bfloat16 dot products are wrong in Triton's interpreter (bfloat16 runs on a GPU only)"
    if q.device.type == "cuda" and torch.cuda.get_device_capability(q.device) < (8, 0):
        return "needs a GPU of compute capability >= 8.0 (cp.async pipelining, bfloat16 tensor cores)"
    return None


def _stride_align(*tensors: torch.Tensor) -> int:
    """8 when every (b, l, h) stride of every tensor is a multiple of 8 elements, else 1."""
    return 8 if all(s % 8 == 0 for t in tensors for s in t.stride()[:3]) else 1


def _unit_last_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.stride(-1) == 1 or t.shape[-1] == 1 else t.contiguous()


# --------------------------------------------------------------------------------------------
# Device helpers
# --------------------------------------------------------------------------------------------

@triton.jit
def _load_split(base, rows, row_stride, L, HEAD_DIM: tl.constexpr, D_MAIN: tl.constexpr, D_TAIL: tl.constexpr,
                MASK_ROWS: tl.constexpr, STRIDE_ALIGN: tl.constexpr):
    """The (main, tail) column tiles of ``rows`` of a (L, hd) slice; masked rows and the columns past
    hd read as 0. With D_TAIL == 0, tail is main: a placeholder, never read."""
    ptrs = base + tl.multiple_of(rows.to(tl.int64) * row_stride, STRIDE_ALIGN)[:, None]
    row_ok = rows[:, None] < L
    cols = tl.arange(0, D_MAIN)[None, :]
    if MASK_ROWS:
        main = tl.load(ptrs + cols, mask=row_ok, other=0.0)
    else:
        main = tl.load(ptrs + cols)
    tail = main
    if D_TAIL > 0:
        cols = D_MAIN + tl.arange(0, D_TAIL)[None, :]
        if MASK_ROWS | (D_MAIN + D_TAIL > HEAD_DIM):
            tail = tl.load(ptrs + cols, mask=row_ok & (cols < HEAD_DIM), other=0.0)
        else:
            tail = tl.load(ptrs + cols)
    return main, tail


@triton.jit
def _store_split(base, main, tail, rows, row_stride, L, HEAD_DIM: tl.constexpr, D_MAIN: tl.constexpr,
                 D_TAIL: tl.constexpr, MASK_ROWS: tl.constexpr, STRIDE_ALIGN: tl.constexpr):
    """Store the (main, tail) column tiles of ``rows`` (the inverse of ``_load_split``)."""
    ptrs = base + tl.multiple_of(rows.to(tl.int64) * row_stride, STRIDE_ALIGN)[:, None]
    row_ok = rows[:, None] < L
    cols = tl.arange(0, D_MAIN)[None, :]
    ty = base.dtype.element_ty
    if MASK_ROWS:
        tl.store(ptrs + cols, main.to(ty), mask=row_ok)
    else:
        tl.store(ptrs + cols, main.to(ty))
    if D_TAIL > 0:
        cols = D_MAIN + tl.arange(0, D_TAIL)[None, :]
        if MASK_ROWS | (D_MAIN + D_TAIL > HEAD_DIM):
            tl.store(ptrs + cols, tail.to(ty), mask=row_ok & (cols < HEAD_DIM))
        else:
            tl.store(ptrs + cols, tail.to(ty))


@triton.jit
def _load_row_stats(lse_base, delta_base, rows, L, MASK_ROWS: tl.constexpr):
    """lse and delta of ``rows``; masked rows read 0 (they meet q = dO = 0, see the callers)."""
    if MASK_ROWS:
        lse = tl.load(lse_base + rows, mask=rows < L, other=0.0)
        delta = tl.load(delta_base + rows, mask=rows < L, other=0.0)
    else:
        lse = tl.load(lse_base + rows)
        delta = tl.load(delta_base + rows)
    return lse, delta


@triton.jit
def _tile_of_program(pid, L, BLOCK: tl.constexpr, TAIL: tl.constexpr):
    """Programs per (batch·head): L // BLOCK full tiles, then TAIL-row tiles over the remainder.
    Returns (batch·head index, first row of the tile, whether it is a full tile)."""
    n_full = L // BLOCK
    n_tiles = n_full + tl.cdiv(L - n_full * BLOCK, TAIL)
    tile = pid % n_tiles
    start = tl.where(tile < n_full, tile * BLOCK, n_full * BLOCK + (tile - n_full) * TAIL)
    return pid // n_tiles, start, tile < n_full


# --------------------------------------------------------------------------------------------
# Forward
# --------------------------------------------------------------------------------------------

@triton.jit
def _fwd_step(q_main, q_tail, m_i, l_i, acc_main, acc_tail, k_base, v_base, stride_kl, stride_vl,
              start_n, L, qk_scale, BLOCK_N: tl.constexpr, MASK_N: tl.constexpr, HEAD_DIM: tl.constexpr,
              D_MAIN: tl.constexpr, D_TAIL: tl.constexpr, STRIDE_ALIGN: tl.constexpr,
              PRECISION: tl.constexpr):
    """One key / value tile of the online softmax (the *_tail tensors: see ``_load_split``)."""
    keys = start_n + tl.arange(0, BLOCK_N)
    k_main, k_tail = _load_split(k_base, keys, stride_kl, L, HEAD_DIM, D_MAIN, D_TAIL, MASK_N, STRIDE_ALIGN)
    s = tl.dot(q_main, tl.trans(k_main), input_precision=PRECISION)
    if D_TAIL > 0:
        s = tl.dot(q_tail, tl.trans(k_tail), s, input_precision=PRECISION)
    s = s * qk_scale  # log2e-scaled scores
    if MASK_N:
        s = tl.where(keys[None, :] < L, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: every step has at least one valid key
    p = tl.math.exp2(s - m_new[:, None])
    alpha = tl.math.exp2(m_i - m_new)
    l_i = l_i * alpha + tl.sum(p, 1)
    v_main, v_tail = _load_split(v_base, keys, stride_vl, L, HEAD_DIM, D_MAIN, D_TAIL, MASK_N, STRIDE_ALIGN)
    p = p.to(v_main.dtype)
    acc_main = tl.dot(p, v_main, acc_main * alpha[:, None], input_precision=PRECISION)
    if D_TAIL > 0:
        acc_tail = tl.dot(p, v_tail, acc_tail * alpha[:, None], input_precision=PRECISION)
    return m_new, l_i, acc_main, acc_tail


@triton.jit
def _fwd_tile(q_base, k_base, v_base, o_base, lse_base, stride_ql, stride_kl, stride_vl, stride_ol,
              start_m, L, qk_scale, BLOCK_M: tl.constexpr, MASK_M: tl.constexpr, BLOCK_N: tl.constexpr,
              TAIL: tl.constexpr, HEAD_DIM: tl.constexpr, D_MAIN: tl.constexpr, D_TAIL: tl.constexpr,
              STRIDE_ALIGN: tl.constexpr, PRECISION: tl.constexpr):
    rows = start_m + tl.arange(0, BLOCK_M)
    q_main, q_tail = _load_split(q_base, rows, stride_ql, L, HEAD_DIM, D_MAIN, D_TAIL, MASK_M, STRIDE_ALIGN)
    acc_main = tl.zeros([BLOCK_M, D_MAIN], dtype=tl.float32)
    acc_tail = acc_main  # placeholder when D_TAIL == 0
    if D_TAIL > 0:
        acc_tail = tl.zeros([BLOCK_M, D_TAIL], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    n_full_end = (L // BLOCK_N) * BLOCK_N
    for start_n in range(0, n_full_end, BLOCK_N):
        m_i, l_i, acc_main, acc_tail = _fwd_step(
            q_main, q_tail, m_i, l_i, acc_main, acc_tail, k_base, v_base, stride_kl, stride_vl, start_n, L,
            qk_scale, BLOCK_N, False, HEAD_DIM, D_MAIN, D_TAIL, STRIDE_ALIGN, PRECISION)
    for start_n in range(n_full_end, L, TAIL):
        m_i, l_i, acc_main, acc_tail = _fwd_step(
            q_main, q_tail, m_i, l_i, acc_main, acc_tail, k_base, v_base, stride_kl, stride_vl, start_n, L,
            qk_scale, TAIL, True, HEAD_DIM, D_MAIN, D_TAIL, STRIDE_ALIGN, PRECISION)
    inv_l = (1.0 / l_i)[:, None]
    _store_split(o_base, acc_main * inv_l, acc_tail * inv_l, rows, stride_ol, L, HEAD_DIM, D_MAIN, D_TAIL, MASK_M,
                 STRIDE_ALIGN)
    lse = m_i + tl.math.log2(l_i)
    if MASK_M:
        tl.store(lse_base + rows, lse, mask=rows < L)
    else:
        tl.store(lse_base + rows, lse)


SMEM_LIMIT = 232448  # bytes of shared memory a block may use on sm_90 (227 KB)


def _pruner(own_operands: int):
    """Early config prune for a kernel whose own tile has ``own_operands`` (B, hd) operands in
    shared memory (1 in the forward: q; 2 in the backward: k and v, or q and dO) and whose loop
    streams two per stage. Drops:
    - tiles longer than the sequence bucket (they only add masked rows);
    - 128-row own tiles on 4 warps (ptxas caps them at 255 registers on sm_90, 8 warps do not);
    - configs over the shared-memory limit (the estimate matches Triton's sm_90 figures within
      1 KB for hd 72 and 128).
    """
    def prune(configs, named_args, **kwargs):
        args = {**named_args, **kwargs}
        bucket, elem = args["L_BUCKET"], args["Q"].element_size()
        width = args["D_MAIN"] + args["D_TAIL"]
        kept = []
        for c in configs:
            own, loop = c.kwargs["BLOCK_OWN"], c.kwargs["BLOCK_LOOP"]
            smem = (c.num_stages * 2 * loop + own_operands * own) * width * elem + 1024  # + lse / delta
            if own > max(bucket, 64) or loop > max(bucket, 32):
                continue
            if own == 128 and c.num_warps < 8:
                continue
            if smem > SMEM_LIMIT:
                continue
            kept.append(c)
        return kept or configs[:1]

    return prune


def _configs(owns, loops, warps, stages):
    return [triton.Config({"BLOCK_OWN": o, "BLOCK_LOOP": lp}, num_warps=w, num_stages=s)
            for o in owns for lp in loops for w in warps for s in stages]


# BLOCK_OWN: rows of the program's own tile (queries in the forward and the dQ kernel, keys in the
# dK/dV kernel); BLOCK_LOOP: rows per step of the loop over the other sequence.
# Kept small (12 per kernel after pruning) so that tuning a new (head dim, dtype) compiles ~36
# variants, not ~100: the forward streams 64 or 128 keys a step; the backward steps hold two
# operand pairs and two transposed score tiles, so they stream 32 or 64 rows (ptxas: 230-255
# registers a thread at hd 72 already).
FWD_CONFIGS = _configs((64, 128), (64, 128), (4, 8), (2, 3))
BWD_CONFIGS = _configs((64, 128), (32, 64), (4, 8), (2, 3))
# Interpreter: 64-row tiles run fastest at U-ViT's test lengths (17-334); the CPU tests also run
# BLOCK_OWN != BLOCK_LOOP once, so a mix-up of the two in a kernel shows.
INTERPRET_CONFIG = triton.Config({"BLOCK_OWN": 64, "BLOCK_LOOP": 64}, num_warps=4, num_stages=1)
AUTOTUNE_KEY = ["L_BUCKET", "HEAD_DIM"]  # the autotuner appends the tensors' dtypes
# Sizes are masked, not specialised on: L = 258 and L = 1024 share one binary (strides keep their
# alignment specialisation, which the vector loads need).
NO_SPECIALIZE = ["H", "L", "L_BUCKET"]


@autotune(FWD_CONFIGS, key=AUTOTUNE_KEY, interpret_config=INTERPRET_CONFIG,
          prune_configs_by={"early_config_prune": _pruner(1)})
@triton.jit(do_not_specialize=NO_SPECIALIZE)
def _attention_fwd_kernel(Q, K, V, O, LSE, qk_scale,
                          stride_qb, stride_ql, stride_qh, stride_kb, stride_kl, stride_kh,
                          stride_vb, stride_vl, stride_vh, stride_ob, stride_ol, stride_oh,
                          H, L, L_BUCKET,
                          HEAD_DIM: tl.constexpr, D_MAIN: tl.constexpr, D_TAIL: tl.constexpr,
                          STRIDE_ALIGN: tl.constexpr, PRECISION: tl.constexpr, TAIL: tl.constexpr,
                          BLOCK_OWN: tl.constexpr, BLOCK_LOOP: tl.constexpr):
    bh, start, full = _tile_of_program(tl.program_id(0), L, BLOCK_OWN, TAIL)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)  # int64: B·L·H·hd may exceed 2³¹
    q_base = Q + tl.multiple_of(b * stride_qb + h * stride_qh, STRIDE_ALIGN)
    k_base = K + tl.multiple_of(b * stride_kb + h * stride_kh, STRIDE_ALIGN)
    v_base = V + tl.multiple_of(b * stride_vb + h * stride_vh, STRIDE_ALIGN)
    o_base = O + tl.multiple_of(b * stride_ob + h * stride_oh, STRIDE_ALIGN)
    lse_base = LSE + bh.to(tl.int64) * L
    if full:
        _fwd_tile(q_base, k_base, v_base, o_base, lse_base, stride_ql, stride_kl, stride_vl, stride_ol, start, L,
                  qk_scale, BLOCK_OWN, False, BLOCK_LOOP, TAIL, HEAD_DIM, D_MAIN, D_TAIL, STRIDE_ALIGN, PRECISION)
    else:
        _fwd_tile(q_base, k_base, v_base, o_base, lse_base, stride_ql, stride_kl, stride_vl, stride_ol, start, L,
                  qk_scale, TAIL, True, BLOCK_LOOP, TAIL, HEAD_DIM, D_MAIN, D_TAIL, STRIDE_ALIGN, PRECISION)


# --------------------------------------------------------------------------------------------
# Backward
# --------------------------------------------------------------------------------------------

@triton.jit(do_not_specialize=["H", "L"])
def _attention_bwd_preprocess_kernel(O, DO, DELTA, stride_ob, stride_ol, stride_oh,
                                     stride_dob, stride_dol, stride_doh, H, L,
                                     HEAD_DIM: tl.constexpr, D_MAIN: tl.constexpr, D_TAIL: tl.constexpr,
                                     STRIDE_ALIGN: tl.constexpr, BLOCK: tl.constexpr):
    """delta[bh, l] = sum_d dO[b, l, h, d] · O[b, l, h, d] in fp32."""
    n_tiles = tl.cdiv(L, BLOCK)
    pid = tl.program_id(0)
    bh, tile = pid // n_tiles, pid % n_tiles
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)  # int64: B·L·H·hd may exceed 2³¹
    rows = tile * BLOCK + tl.arange(0, BLOCK)
    o_base = O + tl.multiple_of(b * stride_ob + h * stride_oh, STRIDE_ALIGN)
    do_base = DO + tl.multiple_of(b * stride_dob + h * stride_doh, STRIDE_ALIGN)
    o, o_t = _load_split(o_base, rows, stride_ol, L, HEAD_DIM, D_MAIN, D_TAIL, True, STRIDE_ALIGN)
    do, do_t = _load_split(do_base, rows, stride_dol, L, HEAD_DIM, D_MAIN, D_TAIL, True, STRIDE_ALIGN)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    if D_TAIL > 0:
        delta += tl.sum(o_t.to(tl.float32) * do_t.to(tl.float32), 1)
    tl.store(DELTA + bh.to(tl.int64) * L + rows, delta, mask=rows < L)


@triton.jit
def _dkdv_step(k_main, k_tail, v_main, v_tail, dk_main, dk_tail, dv_main, dv_tail,
               q_base, do_base, lse_base, delta_base, stride_ql, stride_dol, start_m, L, qk_scale,
               BLOCK_M: tl.constexpr, MASK_M: tl.constexpr, HEAD_DIM: tl.constexpr, D_MAIN: tl.constexpr,
               D_TAIL: tl.constexpr, STRIDE_ALIGN: tl.constexpr, PRECISION: tl.constexpr):
    """One query tile's contribution to this key tile's dK, dV (transposed scores: keys × queries).
    Masked query rows read q = dO = lse = delta = 0: P = 1 there, but dV = Pᵀ dO and dK = dSᵀ Q
    get nothing from dO = q = 0 (and dS = P (dP − delta) = 0)."""
    rows = start_m + tl.arange(0, BLOCK_M)
    q, q_t = _load_split(q_base, rows, stride_ql, L, HEAD_DIM, D_MAIN, D_TAIL, MASK_M, STRIDE_ALIGN)
    do, do_t = _load_split(do_base, rows, stride_dol, L, HEAD_DIM, D_MAIN, D_TAIL, MASK_M, STRIDE_ALIGN)
    lse, delta = _load_row_stats(lse_base, delta_base, rows, L, MASK_M)
    s_t = tl.dot(k_main, tl.trans(q), input_precision=PRECISION)
    dp_t = tl.dot(v_main, tl.trans(do), input_precision=PRECISION)
    if D_TAIL > 0:
        s_t = tl.dot(k_tail, tl.trans(q_t), s_t, input_precision=PRECISION)
        dp_t = tl.dot(v_tail, tl.trans(do_t), dp_t, input_precision=PRECISION)
    p_t = tl.math.exp2(s_t * qk_scale - lse[None, :])
    ds_t = (p_t * (dp_t - delta[None, :])).to(q.dtype)
    p_t = p_t.to(do.dtype)
    dv_main = tl.dot(p_t, do, dv_main, input_precision=PRECISION)
    dk_main = tl.dot(ds_t, q, dk_main, input_precision=PRECISION)
    if D_TAIL > 0:
        dv_tail = tl.dot(p_t, do_t, dv_tail, input_precision=PRECISION)
        dk_tail = tl.dot(ds_t, q_t, dk_tail, input_precision=PRECISION)
    return dk_main, dk_tail, dv_main, dv_tail


@triton.jit
def _dkdv_tile(q_base, k_base, v_base, do_base, dk_base, dv_base, lse_base, delta_base,
               stride_ql, stride_kl, stride_vl, stride_dol, stride_gl, start_n, L, scale, qk_scale,
               BLOCK_N: tl.constexpr, MASK_N: tl.constexpr, BLOCK_M: tl.constexpr, TAIL: tl.constexpr,
               HEAD_DIM: tl.constexpr, D_MAIN: tl.constexpr, D_TAIL: tl.constexpr,
               STRIDE_ALIGN: tl.constexpr, PRECISION: tl.constexpr):
    keys = start_n + tl.arange(0, BLOCK_N)
    k_main, k_tail = _load_split(k_base, keys, stride_kl, L, HEAD_DIM, D_MAIN, D_TAIL, MASK_N, STRIDE_ALIGN)
    v_main, v_tail = _load_split(v_base, keys, stride_vl, L, HEAD_DIM, D_MAIN, D_TAIL, MASK_N, STRIDE_ALIGN)
    dk_main = tl.zeros([BLOCK_N, D_MAIN], dtype=tl.float32)
    dv_main = tl.zeros([BLOCK_N, D_MAIN], dtype=tl.float32)
    dk_tail, dv_tail = dk_main, dv_main  # placeholders when D_TAIL == 0
    if D_TAIL > 0:
        dk_tail = tl.zeros([BLOCK_N, D_TAIL], dtype=tl.float32)
        dv_tail = tl.zeros([BLOCK_N, D_TAIL], dtype=tl.float32)
    m_full_end = (L // BLOCK_M) * BLOCK_M
    for start_m in range(0, m_full_end, BLOCK_M):
        dk_main, dk_tail, dv_main, dv_tail = _dkdv_step(
            k_main, k_tail, v_main, v_tail, dk_main, dk_tail, dv_main, dv_tail, q_base, do_base, lse_base,
            delta_base, stride_ql, stride_dol, start_m, L, qk_scale, BLOCK_M, False, HEAD_DIM, D_MAIN, D_TAIL,
            STRIDE_ALIGN, PRECISION)
    for start_m in range(m_full_end, L, TAIL):
        dk_main, dk_tail, dv_main, dv_tail = _dkdv_step(
            k_main, k_tail, v_main, v_tail, dk_main, dk_tail, dv_main, dv_tail, q_base, do_base, lse_base,
            delta_base, stride_ql, stride_dol, start_m, L, qk_scale, TAIL, True, HEAD_DIM, D_MAIN, D_TAIL,
            STRIDE_ALIGN, PRECISION)
    _store_split(dk_base, dk_main * scale, dk_tail * scale, keys, stride_gl, L, HEAD_DIM, D_MAIN, D_TAIL, MASK_N,
                 STRIDE_ALIGN)
    _store_split(dv_base, dv_main, dv_tail, keys, stride_gl, L, HEAD_DIM, D_MAIN, D_TAIL, MASK_N, STRIDE_ALIGN)


@triton.jit
def _dq_step(q_main, q_tail, do_main, do_tail, lse, delta, dq_main, dq_tail, k_base, v_base,
             stride_kl, stride_vl, start_n, L, qk_scale, BLOCK_N: tl.constexpr, MASK_N: tl.constexpr,
             HEAD_DIM: tl.constexpr, D_MAIN: tl.constexpr, D_TAIL: tl.constexpr,
             STRIDE_ALIGN: tl.constexpr, PRECISION: tl.constexpr):
    """One key tile's contribution to this query tile's dQ. Masked keys read k = v = 0: their P is
    not 0, but dQ = dS K gets nothing from k = 0."""
    keys = start_n + tl.arange(0, BLOCK_N)
    k, k_t = _load_split(k_base, keys, stride_kl, L, HEAD_DIM, D_MAIN, D_TAIL, MASK_N, STRIDE_ALIGN)
    v, v_t = _load_split(v_base, keys, stride_vl, L, HEAD_DIM, D_MAIN, D_TAIL, MASK_N, STRIDE_ALIGN)
    s = tl.dot(q_main, tl.trans(k), input_precision=PRECISION)
    dp = tl.dot(do_main, tl.trans(v), input_precision=PRECISION)
    if D_TAIL > 0:
        s = tl.dot(q_tail, tl.trans(k_t), s, input_precision=PRECISION)
        dp = tl.dot(do_tail, tl.trans(v_t), dp, input_precision=PRECISION)
    p = tl.math.exp2(s * qk_scale - lse[:, None])
    ds = (p * (dp - delta[:, None])).to(k.dtype)
    dq_main = tl.dot(ds, k, dq_main, input_precision=PRECISION)
    if D_TAIL > 0:
        dq_tail = tl.dot(ds, k_t, dq_tail, input_precision=PRECISION)
    return dq_main, dq_tail


@triton.jit
def _dq_tile(q_base, k_base, v_base, do_base, dq_base, lse_base, delta_base, stride_ql, stride_kl, stride_vl,
             stride_dol, stride_gl, start_m, L, scale, qk_scale, BLOCK_M: tl.constexpr, MASK_M: tl.constexpr,
             BLOCK_N: tl.constexpr, TAIL: tl.constexpr, HEAD_DIM: tl.constexpr, D_MAIN: tl.constexpr,
             D_TAIL: tl.constexpr, STRIDE_ALIGN: tl.constexpr, PRECISION: tl.constexpr):
    rows = start_m + tl.arange(0, BLOCK_M)
    q_main, q_tail = _load_split(q_base, rows, stride_ql, L, HEAD_DIM, D_MAIN, D_TAIL, MASK_M, STRIDE_ALIGN)
    do_main, do_tail = _load_split(do_base, rows, stride_dol, L, HEAD_DIM, D_MAIN, D_TAIL, MASK_M, STRIDE_ALIGN)
    lse, delta = _load_row_stats(lse_base, delta_base, rows, L, MASK_M)  # masked rows: never stored
    dq_main = tl.zeros([BLOCK_M, D_MAIN], dtype=tl.float32)
    dq_tail = dq_main  # placeholder when D_TAIL == 0
    if D_TAIL > 0:
        dq_tail = tl.zeros([BLOCK_M, D_TAIL], dtype=tl.float32)
    n_full_end = (L // BLOCK_N) * BLOCK_N
    for start_n in range(0, n_full_end, BLOCK_N):
        dq_main, dq_tail = _dq_step(q_main, q_tail, do_main, do_tail, lse, delta, dq_main, dq_tail, k_base, v_base,
                                    stride_kl, stride_vl, start_n, L, qk_scale, BLOCK_N, False, HEAD_DIM, D_MAIN,
                                    D_TAIL, STRIDE_ALIGN, PRECISION)
    for start_n in range(n_full_end, L, TAIL):
        dq_main, dq_tail = _dq_step(q_main, q_tail, do_main, do_tail, lse, delta, dq_main, dq_tail, k_base, v_base,
                                    stride_kl, stride_vl, start_n, L, qk_scale, TAIL, True, HEAD_DIM, D_MAIN,
                                    D_TAIL, STRIDE_ALIGN, PRECISION)
    _store_split(dq_base, dq_main * scale, dq_tail * scale, rows, stride_gl, L, HEAD_DIM, D_MAIN, D_TAIL, MASK_M,
                 STRIDE_ALIGN)


@autotune(BWD_CONFIGS, key=AUTOTUNE_KEY + ["DQ_PASS"], interpret_config=INTERPRET_CONFIG,
          prune_configs_by={"early_config_prune": _pruner(2)})
@triton.jit(do_not_specialize=NO_SPECIALIZE)
def _attention_bwd_kernel(Q, K, V, DO, DQ, DK, DV, LSE, DELTA, scale, qk_scale,
                          stride_qb, stride_ql, stride_qh, stride_kb, stride_kl, stride_kh,
                          stride_vb, stride_vl, stride_vh, stride_dob, stride_dol, stride_doh,
                          stride_gb, stride_gl, stride_gh, H, L, L_BUCKET,
                          HEAD_DIM: tl.constexpr, D_MAIN: tl.constexpr, D_TAIL: tl.constexpr,
                          STRIDE_ALIGN: tl.constexpr, PRECISION: tl.constexpr, TAIL: tl.constexpr,
                          DQ_PASS: tl.constexpr, BLOCK_OWN: tl.constexpr, BLOCK_LOOP: tl.constexpr):
    """DQ_PASS False: one program per (batch·head, key tile) accumulates dK, dV over the query
    tiles. DQ_PASS True: one program per (batch·head, query tile) accumulates dQ over the key
    tiles. Two launches, each tuned and compiled for its pass (dQ, dK, dV share their strides)."""
    bh, start, full = _tile_of_program(tl.program_id(0), L, BLOCK_OWN, TAIL)
    b, h = (bh // H).to(tl.int64), (bh % H).to(tl.int64)  # int64: B·L·H·hd may exceed 2³¹
    q_base = Q + tl.multiple_of(b * stride_qb + h * stride_qh, STRIDE_ALIGN)
    k_base = K + tl.multiple_of(b * stride_kb + h * stride_kh, STRIDE_ALIGN)
    v_base = V + tl.multiple_of(b * stride_vb + h * stride_vh, STRIDE_ALIGN)
    do_base = DO + tl.multiple_of(b * stride_dob + h * stride_doh, STRIDE_ALIGN)
    grad_offset = tl.multiple_of(b * stride_gb + h * stride_gh, STRIDE_ALIGN)
    lse_base = LSE + bh.to(tl.int64) * L
    delta_base = DELTA + bh.to(tl.int64) * L
    if DQ_PASS:
        if full:
            _dq_tile(q_base, k_base, v_base, do_base, DQ + grad_offset, lse_base, delta_base, stride_ql, stride_kl,
                     stride_vl, stride_dol, stride_gl, start, L, scale, qk_scale, BLOCK_OWN, False, BLOCK_LOOP, TAIL,
                     HEAD_DIM, D_MAIN, D_TAIL, STRIDE_ALIGN, PRECISION)
        else:
            _dq_tile(q_base, k_base, v_base, do_base, DQ + grad_offset, lse_base, delta_base, stride_ql, stride_kl,
                     stride_vl, stride_dol, stride_gl, start, L, scale, qk_scale, TAIL, True, BLOCK_LOOP, TAIL,
                     HEAD_DIM, D_MAIN, D_TAIL, STRIDE_ALIGN, PRECISION)
    else:
        if full:
            _dkdv_tile(q_base, k_base, v_base, do_base, DK + grad_offset, DV + grad_offset, lse_base, delta_base,
                       stride_ql, stride_kl, stride_vl, stride_dol, stride_gl, start, L, scale, qk_scale, BLOCK_OWN,
                       False, BLOCK_LOOP, TAIL, HEAD_DIM, D_MAIN, D_TAIL, STRIDE_ALIGN, PRECISION)
        else:
            _dkdv_tile(q_base, k_base, v_base, do_base, DK + grad_offset, DV + grad_offset, lse_base, delta_base,
                       stride_ql, stride_kl, stride_vl, stride_dol, stride_gl, start, L, scale, qk_scale, TAIL,
                       True, BLOCK_LOOP, TAIL, HEAD_DIM, D_MAIN, D_TAIL, STRIDE_ALIGN, PRECISION)


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------

def _grid(B: int, H: int, L: int):
    """One program per (batch·head, tile): L // BLOCK_OWN full tiles, then 16-row tail tiles."""
    def grid(meta):
        n_full = L // meta["BLOCK_OWN"]
        return (B * H * (n_full + triton.cdiv(L - n_full * meta["BLOCK_OWN"], TAIL_ROWS)),)

    return grid


def _check(**tensors: torch.Tensor) -> None:
    names = list(tensors)
    first = tensors[names[0]]
    for name, t in tensors.items():
        if t.dim() != 4 or t.shape != first.shape:
            raise ValueError(f"{name} must have the shape (B, L, H, hd) of {names[0]} {tuple(first.shape)}, "
                             f"got {tuple(t.shape)}")
        if t.dtype != first.dtype or t.device != first.device:
            raise TypeError(f"{name} must be {first.dtype} on {first.device} like {names[0]}, "
                            f"got {t.dtype} on {t.device}")
    reason = unsupported_reason(first)
    if reason is not None:
        raise ValueError(f"the Triton attention kernels cannot take {names[0]} {tuple(first.shape)}: {reason}")


def _layout(q: torch.Tensor, *tensors: torch.Tensor) -> dict:
    """The constexprs describing the head dim and the strides of a launch."""
    d_main, d_tail = head_dim_split(q.shape[-1])
    return dict(HEAD_DIM=q.shape[-1], D_MAIN=d_main, D_TAIL=d_tail, STRIDE_ALIGN=_stride_align(q, *tensors))


# fp32 operands: IEEE products (TF32 would miss the fp32 tolerance); ignored for fp16 / bf16.
_TILING = dict(PRECISION="ieee", TAIL=TAIL_ROWS)


def _device_guard(t: torch.Tensor):
    return torch.cuda.device(t.device) if t.device.type == "cuda" else contextlib.nullcontext()


def attention_fwd(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float):
    """O = softmax(q kᵀ · scale) v for (B, L, H, hd) inputs; returns (O contiguous (B, L, H, hd),
    lse (B, H, L) fp32, base-2 log-sum-exp of the log2e-scaled scores)."""
    _check(q=q, k=k, v=v)
    q, k, v = (_unit_last_stride(t) for t in (q, k, v))
    B, L, H, hd = q.shape
    out = torch.empty((B, L, H, hd), dtype=q.dtype, device=q.device)
    lse = torch.empty((B, H, L), dtype=torch.float32, device=q.device)
    if out.numel() == 0:
        return out, lse
    with _device_guard(q):
        _attention_fwd_kernel[_grid(B, H, L)](
            q, k, v, out, lse, scale * LOG2E, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3],
            *out.stride()[:3], H, L, length_bucket(L), **_layout(q, k, v, out), **_TILING)
    return out, lse


def attention_bwd(dout: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor,
                  lse: torch.Tensor, scale: float):
    """dq, dk, dv (contiguous (B, L, H, hd)) of ``attention_fwd``, from its O and lse."""
    _check(q=q, k=k, v=v, out=out, dout=dout)
    q, k, v, out, dout = (_unit_last_stride(t) for t in (q, k, v, out, dout))
    B, L, H, hd = q.shape
    if lse.shape != (B, H, L) or lse.dtype != torch.float32 or not lse.is_contiguous():
        raise ValueError(f"lse must be a contiguous float32 (B, H, L) = {(B, H, L)} tensor, "
                         f"got {tuple(lse.shape)} {lse.dtype}")
    dq, dk, dv = (torch.empty((B, L, H, hd), dtype=q.dtype, device=q.device) for _ in range(3))
    if dq.numel() == 0:
        return dq, dk, dv
    delta = torch.empty((B, H, L), dtype=torch.float32, device=q.device)
    layout = _layout(q, k, v, out, dout, dq)
    strides = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *dout.stride()[:3], *dq.stride()[:3])
    with _device_guard(q):
        _attention_bwd_preprocess_kernel[(B * H * triton.cdiv(L, PREPROCESS_ROWS),)](
            out, dout, delta, *out.stride()[:3], *dout.stride()[:3], H, L, **layout, BLOCK=PREPROCESS_ROWS)
        for dq_pass in (False, True):
            _attention_bwd_kernel[_grid(B, H, L)](q, k, v, dout, dq, dk, dv, lse, delta, scale, scale * LOG2E,
                                                  *strides, H, L, length_bucket(L), **layout, **_TILING,
                                                  DQ_PASS=dq_pass)
    return dq, dk, dv
