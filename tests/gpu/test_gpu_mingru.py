"""minGRU on a CUDA GPU: the scan under bf16 autocast (training) agrees with the float32 step far
past the training length, and its gradients are finite. Skipped without CUDA."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from charlm.checkpoint import load_model
from tests.helpers import make_corpus

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu_check.sh runs these)"),
]
CUDA = torch.device("cuda")


def test_the_bf16_autocast_scan_agrees_with_the_float32_step_at_ten_times_the_training_length(tiny_models: Path):
    loaded = load_model(tiny_models / "tiny-mingru", device=CUDA)
    model = loaded.model
    length = 10 * loaded.info["training"]["seq_len"]
    ids = torch.tensor(loaded.vocab.encode(make_corpus(seed=7)[: 2 * length]), device=CUDA).view(2, length)
    with torch.no_grad():
        state = model.init_state(2, CUDA)
        stepped = torch.stack([model.step(ids[:, t], state) for t in range(length)], dim=1)  # (2, T, V)
    with torch.autocast(device_type="cuda", dtype=torch.bfloat16):
        logits, loss = model(ids[:, :-1], ids[:, 1:])
    assert loss is not None
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    torch.testing.assert_close(logits.float().softmax(-1), stepped[:, :-1].softmax(-1), rtol=0, atol=0.03)
