"""The Triton decode attention kernel against scaled dot-product attention, run by Triton's
interpreter on a CPU (tests/conftest.py sets TRITON_INTERPRET), and compiled for an H100/H200."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from charlm import decode_kernel
from tests.helpers import require_triton

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def triton_installed() -> None:
    require_triton()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize(("span", "head_dim", "splits"), [
    (100, 32, 1),  # a window that is no multiple of the tile
    (100, 32, 2),  # split: the second split is partly empty for long rows, wholly for short ones
    (256, 64, 4),  # gpt-baby's window and head size, split as for a small batch
    (40, 24, 1),  # a head size that is no power of two
])
def test_the_kernel_equals_scaled_dot_product_attention_at_every_length(dtype, span, head_dim, splits):
    generator = torch.Generator().manual_seed(span + head_dim + splits)
    q, keys, values, lengths = decode_kernel.random_case(16, 2, span, head_dim, dtype, CPU, generator)
    got = decode_kernel.attention(q, keys, values, lengths, splits)
    assert got.shape == q.shape and got.dtype == dtype
    torch.testing.assert_close(got.float(), decode_kernel.reference(q, keys, values, lengths),
                               atol=decode_kernel.TOLERANCE[dtype], rtol=0)


def test_a_row_comes_out_the_same_alone_and_among_others():
    """Batch invariance: a row's arithmetic does not depend on the rows beside it."""
    generator = torch.Generator().manual_seed(3)
    q, keys, values, lengths = decode_kernel.random_case(6, 2, 150, 32, torch.bfloat16, CPU, generator)
    together = decode_kernel.attention(q, keys, values, lengths, splits=3)
    for row in (0, 4):
        alone = decode_kernel.attention(q[row : row + 1], keys[row : row + 1], values[row : row + 1],
                                        lengths[row : row + 1], splits=3)
        assert torch.equal(alone, together[row : row + 1])


def test_keys_beyond_a_rows_length_are_never_read():
    generator = torch.Generator().manual_seed(5)
    q, keys, values, lengths = decode_kernel.random_case(4, 2, 70, 16, torch.float32, CPU, generator)
    expected = decode_kernel.attention(q, keys, values, lengths, splits=2)
    for row, length in enumerate(lengths.tolist()):
        keys[row, :, length:] = float("nan")
        values[row, :, length:] = float("nan")
    assert torch.equal(decode_kernel.attention(q, keys, values, lengths, splits=2), expected)


def test_the_self_check_passes_the_kernel_and_names_a_wrong_one(monkeypatch, caplog):
    decode_kernel.self_check.cache_clear()
    assert decode_kernel.self_check(CPU, torch.float32, 16, 80) is None
    monkeypatch.setattr(decode_kernel, "attention", lambda q, *_: torch.zeros_like(q))
    with caplog.at_level(logging.WARNING):
        problem = decode_kernel.check_logged(CPU, torch.float32, 16, 81)
        decode_kernel.check_logged(CPU, torch.float32, 16, 81)  # the reason is logged once
    assert problem is not None and "differs from scaled dot-product attention" in problem
    assert caplog.text.count("Triton decode attention not used") == 1
    decode_kernel.self_check.cache_clear()


def test_the_kernels_compile_for_an_h100_or_h200():
    """The interpreter runs Python; the GPU runs what Triton's compiler makes of the same code: it
    compiles for sm_90 here (the compiler and ptxas ship in Triton's wheel), in a process of its
    own because Triton's library is interpreted in this one."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-m", "tests.charlm.kernel_compile"], env=env, capture_output=True,
                          text=True, timeout=300, cwd=Path(__file__).parents[2])
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["attend-1", "attend-4", "combine-4"]
