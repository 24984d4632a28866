"""Decode attention in Triton: one query per row over a fixed-shape K/V cache with per-row lengths.

A decoding step has one query per (row, head) and reads that row's first `length` cached keys
and values; the rest of the window is never touched. Each program of `_attend` walks one
(row, head)'s keys in tiles of BLOCK_N with an online softmax, in float32 whatever the cache's
dtype. When rows are few (a batch of 1 has only n_head of them), the keys are split among
several programs (flash-decoding) and `_combine` merges their partial results; the number of
splits depends only on the shapes, so a row's arithmetic never depends on the other rows.

Triton ships with CUDA builds of torch; without it this module imports, `available()` says why
not, and the models keep scaled dot-product attention. On a CPU the kernels run under Triton's
interpreter: slow, but the same code, which is how the tests check it without a GPU.
"""

from __future__ import annotations

import functools
import logging
import math
from typing import Any

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

try:
    import triton
    import triton.language as tl

    IMPORT_ERROR: str | None = None
except ImportError as exc:  # CPU builds of torch come without Triton
    IMPORT_ERROR = f"Triton is not installed ({exc})"

BLOCK_N = 64  # keys per tile
PROGRAMS_PER_SM = 2  # split the keys until there are about this many programs per multiprocessor


def available() -> str | None:
    """None when the kernels can be launched, else why not."""
    return IMPORT_ERROR


def _attend(q_ptr, k_ptr, v_ptr, lengths_ptr, out_ptr, part_acc_ptr, part_max_ptr, part_sum_ptr,
            heads, span, keys_per_split, scale,
            sq_b, sq_h, sk_b, sk_h, sk_s, sv_b, sv_h, sv_s, so_b, so_h,
            HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, SPLITS: tl.constexpr):
    """One (row, head) and one split of its keys: softmax(q k / sqrt(d)) v over keys
    [split * keys_per_split, ...) below the row's length. With one split, the output itself;
    otherwise the unnormalised partial sum, its running maximum and its softmax denominator."""
    row_head = tl.program_id(0)
    split = tl.program_id(1)
    row = row_head // heads
    head = row_head % heads
    length = tl.minimum(tl.load(lengths_ptr + row), span)
    start = split * keys_per_split
    end = tl.minimum(start + keys_per_split, length)
    dims = tl.arange(0, BLOCK_D)
    in_head = dims < HEAD_DIM
    q = tl.load(q_ptr + row * sq_b + head * sq_h + dims, mask=in_head, other=0.0).to(tl.float32) * scale
    running_max = tl.max(tl.full([BLOCK_N], float("-inf"), tl.float32), axis=0)
    denominator = tl.sum(tl.zeros([BLOCK_N], tl.float32), axis=0)
    acc = tl.zeros([BLOCK_D], tl.float32)
    keys = k_ptr + row * sk_b + head * sk_h
    values = v_ptr + row * sv_b + head * sv_h
    for first in range(start, end, BLOCK_N):
        slots = first + tl.arange(0, BLOCK_N)
        in_row = slots < end
        tile = in_row[:, None] & in_head[None, :]
        k = tl.load(keys + slots[:, None] * sk_s + dims[None, :], mask=tile, other=0.0).to(tl.float32)
        scores = tl.where(in_row, tl.sum(k * q[None, :], axis=1), float("-inf"))  # (BLOCK_N,)
        new_max = tl.maximum(running_max, tl.max(scores, axis=0))
        rescale = tl.exp(running_max - new_max)
        weights = tl.exp(scores - new_max)
        v = tl.load(values + slots[:, None] * sv_s + dims[None, :], mask=tile, other=0.0).to(tl.float32)
        acc = acc * rescale + tl.sum(weights[:, None] * v, axis=0)
        denominator = denominator * rescale + tl.sum(weights, axis=0)
        running_max = new_max
    if SPLITS == 1:
        out = acc / tl.maximum(denominator, 1e-30)
        tl.store(out_ptr + row * so_b + head * so_h + dims, out.to(out_ptr.dtype.element_ty), mask=in_head)
    else:
        part = row_head * SPLITS + split
        tl.store(part_acc_ptr + part * BLOCK_D + dims, acc)
        tl.store(part_max_ptr + part, running_max)
        tl.store(part_sum_ptr + part, denominator)


def _combine(out_ptr, part_acc_ptr, part_max_ptr, part_sum_ptr, heads, so_b, so_h,
             HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, SPLITS: tl.constexpr, BLOCK_S: tl.constexpr):
    """One (row, head): merge the partial results of its splits (empty ones weigh nothing)."""
    row_head = tl.program_id(0)
    row = row_head // heads
    head = row_head % heads
    splits = tl.arange(0, BLOCK_S)
    real = splits < SPLITS
    parts = row_head * SPLITS + splits
    maxima = tl.load(part_max_ptr + parts, mask=real, other=float("-inf"))
    sums = tl.load(part_sum_ptr + parts, mask=real, other=0.0)
    top = tl.max(maxima, axis=0)
    weights = tl.where(sums > 0, tl.exp(maxima - top), 0.0)  # (BLOCK_S,)
    dims = tl.arange(0, BLOCK_D)
    acc = tl.load(part_acc_ptr + parts[:, None] * BLOCK_D + dims[None, :], mask=real[:, None], other=0.0)
    total = tl.sum(weights[:, None] * acc, axis=0) / tl.maximum(tl.sum(weights * sums, axis=0), 1e-30)
    tl.store(out_ptr + row * so_b + head * so_h + dims, total.to(out_ptr.dtype.element_ty), mask=dims < HEAD_DIM)


# Compiled for a GPU, or interpreted on a CPU when TRITON_INTERPRET=1 was set before Triton was
# imported (Triton's own library is decorated at its import: it cannot be switched later).
ATTEND: Any = triton.jit(_attend) if IMPORT_ERROR is None else None
COMBINE: Any = triton.jit(_combine) if IMPORT_ERROR is None else None


def split_count(row_heads: int, span: int, device: torch.device) -> int:
    """How many programs share one (row, head)'s keys: enough that the GPU's multiprocessors all
    have work, never more than there are tiles of keys. A function of the shapes alone."""
    if device.type != "cuda":
        return 1
    programs = PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(math.ceil(programs / row_heads), math.ceil(span / BLOCK_N)))


def attention(q: Tensor, keys: Tensor, values: Tensor, lengths: Tensor, splits: int = 0) -> Tensor:
    """Attention of one query per row, q (B, H, 1, hd), over the first lengths[b] of keys and
    values (B, H, S, hd) (any strides, last dimension contiguous); (B, H, 1, hd) in q's dtype.

    Every length must be at least 1 (a step always attends to its own key); `splits` 0 means
    `split_count`'s. Interpreted (slowly) on a CPU. An operator of its own to torch.compile,
    which calls it as it is.
    """
    return torch.ops.charlm.decode_attention(q, keys, values, lengths, splits)


@torch.library.custom_op("charlm::decode_attention", mutates_args=())
def _launch(q: Tensor, keys: Tensor, values: Tensor, lengths: Tensor, splits: int) -> Tensor:
    B, H, _, hd = q.shape
    span = keys.size(2)
    splits = splits or split_count(B * H, span, q.device)
    keys_per_split = BLOCK_N * math.ceil(math.ceil(span / splits) / BLOCK_N)
    splits = math.ceil(span / keys_per_split)  # none of them empty by construction
    block_d = triton.next_power_of_2(hd)
    out = torch.empty(B, H, 1, hd, dtype=q.dtype, device=q.device)
    parts = B * H * splits if splits > 1 else 1  # no partial results with one split
    part_acc = torch.empty(parts, block_d, dtype=torch.float32, device=q.device)
    part_max = torch.empty(parts, dtype=torch.float32, device=q.device)
    part_sum = torch.empty(parts, dtype=torch.float32, device=q.device)
    ATTEND[(B * H, splits)](
        q, keys, values, lengths, out, part_acc, part_max, part_sum,
        H, span, keys_per_split, hd**-0.5,
        q.stride(0), q.stride(1), keys.stride(0), keys.stride(1), keys.stride(2),
        values.stride(0), values.stride(1), values.stride(2), out.stride(0), out.stride(1),
        HEAD_DIM=hd, BLOCK_D=block_d, BLOCK_N=BLOCK_N, SPLITS=splits,
    )
    if splits > 1:
        COMBINE[(B * H,)](out, part_acc, part_max, part_sum, H, out.stride(0), out.stride(1),
                          HEAD_DIM=hd, BLOCK_D=block_d, SPLITS=splits, BLOCK_S=triton.next_power_of_2(splits))
    return out


@_launch.register_fake
def _(q: Tensor, keys: Tensor, values: Tensor, lengths: Tensor, splits: int) -> Tensor:
    return torch.empty(q.shape, dtype=q.dtype, device=q.device)


def reference(q: Tensor, keys: Tensor, values: Tensor, lengths: Tensor) -> Tensor:
    """What `attention` computes, by scaled dot-product attention with a mask, in float32."""
    slots = torch.arange(keys.size(2), device=q.device)
    mask = (slots[None, :] < lengths[:, None])[:, None, None, :]  # (B, 1, 1, S)
    return torch.nn.functional.scaled_dot_product_attention(q.float(), keys.float(), values.float(), attn_mask=mask)


def random_case(batch: int, heads: int, span: int, head_dim: int, dtype: torch.dtype, device: torch.device,
                generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """q, keys, values as a GPT step lays them out (views into a (2, B, H, S, hd) cache and a
    permuted projection) and lengths from 1 to `span`, the extremes included."""
    def normal(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=generator).to(device=device, dtype=dtype)

    q = normal(batch, 1, 3, heads, head_dim).permute(2, 0, 3, 1, 4)[0]  # (B, H, 1, hd), strided
    cache = normal(2, batch, heads, span + 3, head_dim)[:, :, :, :span]  # (2, B, H, S, hd) of a larger window
    lengths = torch.randint(1, span + 1, (batch,), generator=generator)
    lengths[0], lengths[-1] = 1, span
    return q, cache[0], cache[1], lengths.to(device)


TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-3}


@functools.cache
def self_check(device: torch.device, dtype: torch.dtype, head_dim: int, span: int) -> str | None:
    """Run the kernel on random inputs of these shapes, split and unsplit, against `reference`:
    None when it agrees, else why it cannot be used. Once per process and shape; it synchronises,
    so it runs before any graph is captured."""
    if IMPORT_ERROR is not None:
        return IMPORT_ERROR
    try:
        generator = torch.Generator().manual_seed(0)
        for splits in (1, math.ceil(span / BLOCK_N)):
            q, keys, values, lengths = random_case(5, 2, span, head_dim, dtype, device, generator)
            got, expected = attention(q, keys, values, lengths, splits).float(), reference(q, keys, values, lengths)
            error = (got - expected).abs().max().item()
            if not error <= TOLERANCE.get(dtype, 2e-2):
                return f"the kernel differs from scaled dot-product attention by {error:.3g} ({splits} splits)"
    except Exception as exc:  # a compiler or driver problem: the model keeps SDPA
        return f"the kernel failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


def check_logged(device: torch.device, dtype: torch.dtype, head_dim: int, span: int) -> str | None:
    """`self_check`, with the reason logged (once) when the kernel cannot be used."""
    first = self_check.cache_info().currsize
    problem = self_check(device, dtype, head_dim, span)
    if problem is not None and self_check.cache_info().currsize > first:
        logger.warning("Triton decode attention not used on %s (%s, head size %d): %s; using scaled dot-product "
                       "attention", device, str(dtype).removeprefix("torch."), head_dim, problem)
    return problem
