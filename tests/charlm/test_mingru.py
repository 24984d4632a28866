"""minGRU: the parallel scan of `forward` and the recurrence of `step` agree, far past the training
length, in float32 and bfloat16; the decode state never grows."""

from pathlib import Path

import pytest
import torch

from charlm.checkpoint import LoadedModel, load_model
from charlm.models import build_model
from charlm.models.mingru import LinearScan, doubling_scan
from tests.helpers import make_corpus


def recurrence(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """h_t = a_t * h_{t-1} + b_t one step at a time: what the scan must equal."""
    h, out = h0, []
    for t in range(a.size(1)):
        h = a[:, t] * h + b[:, t]
        out.append(h)
    return torch.stack(out, dim=1)


def random_recurrence(length: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 a in (0, 1), spanning channels that forget at once to ones that barely forget; b >= 0."""
    g = torch.Generator().manual_seed(seed)
    a = torch.sigmoid(torch.randn(3, length, 5, generator=g, dtype=torch.float64) * 6)
    b = torch.rand(3, length, 5, generator=g, dtype=torch.float64) * 3
    return a, b, torch.rand(3, 5, generator=g, dtype=torch.float64)


def history(loaded: LoadedModel, length: int) -> torch.Tensor:
    """(2, length) ids of verse-like text the tiny model has not seen (another seed)."""
    text = make_corpus(n_lines=length // 10 + 20, seed=7)
    ids = torch.tensor(loaded.vocab.encode(text[: 2 * length])).view(2, length)
    return ids


def steps(model, ids: torch.Tensor) -> torch.Tensor:
    """The logits (B, T, V) of feeding ids (B, T) one character at a time through `step`."""
    state = model.init_state(ids.size(0), "cpu")
    return torch.stack([model.step(ids[:, t], state) for t in range(ids.size(1))], dim=1)


@pytest.fixture()
def tiny_mingru(tiny_models: Path) -> LoadedModel:
    return load_model(tiny_models / "tiny-mingru")


@pytest.mark.parametrize("length", [1, 2, 7, 64, 300])
def test_the_doubling_scan_equals_the_recurrence(length):
    a, b, h0 = random_recurrence(length)
    torch.testing.assert_close(doubling_scan(a, b, h0), recurrence(a, b, h0), rtol=1e-12, atol=1e-12)


def test_the_scan_gradient_equals_the_gradient_of_the_recurrence():
    a, b, h0 = (t.requires_grad_() for t in random_recurrence(37))
    weights = torch.randn(3, 37, 5, dtype=torch.float64)  # a loss whose gradient differs per position
    by_scan = torch.autograd.grad((LinearScan.apply(a, b, h0) * weights).sum(), (a, b, h0))
    by_loop = torch.autograd.grad((recurrence(a, b, h0) * weights).sum(), (a, b, h0))
    for scanned, looped in zip(by_scan, by_loop, strict=True):
        torch.testing.assert_close(scanned, looped, rtol=1e-10, atol=1e-12)


def test_the_float32_scan_stays_exact_over_ten_thousand_steps():
    """No running product is divided out again, so a long sequence loses no precision."""
    a, b, h0 = random_recurrence(10_000, seed=1)
    scanned = doubling_scan(a.float(), b.float(), h0.float()).double()
    torch.testing.assert_close(scanned, recurrence(a, b, h0), rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_step_equals_forward_at_ten_times_the_training_length(tiny_mingru):
    model = tiny_mingru.model
    length = 10 * tiny_mingru.info["training"]["seq_len"]
    ids = history(tiny_mingru, length)
    full = model(ids)[0]  # (2, length, V)
    assert full.abs().max() > 1  # a trained model: logits that mean something
    torch.testing.assert_close(steps(model, ids), full, rtol=1e-4, atol=1e-4)


@torch.no_grad()
def test_bf16_step_equals_bf16_forward_and_stays_near_float32(tiny_models, tiny_mingru):
    """bfloat16 weights, float32 state: the two paths agree as closely as bfloat16 rounds, and
    the next-character distribution stays near float32's over ten times the training length."""
    bf16 = load_model(tiny_models / "tiny-mingru", dtype=torch.bfloat16).model
    ids = history(tiny_mingru, 10 * tiny_mingru.info["training"]["seq_len"])
    full = bf16(ids)[0].float()
    torch.testing.assert_close(steps(bf16, ids).float(), full, rtol=0.02, atol=0.02)
    fp32 = tiny_mingru.model(ids)[0]
    torch.testing.assert_close(full.softmax(-1), fp32.softmax(-1), rtol=0, atol=0.02)


@torch.no_grad()
def test_the_decode_state_of_a_row_does_not_grow_with_its_context(tiny_mingru):
    model = tiny_mingru.model
    sizes = []
    for length in (3, 2000):
        state = model.init_state(1, "cpu")
        model.prefill(torch.zeros(1, length, dtype=torch.long), state)
        sizes.append(state.nbytes)
    config = model.config
    assert sizes == [config.n_layer * config.hidden_size * 4] * 2  # float32 h of every layer


@torch.no_grad()
def test_training_chunks_that_carry_state_equal_one_long_sequence():
    """`forward_carry` over consecutive chunks (streams batching) sees what `forward` sees at once."""
    torch.manual_seed(0)
    model = build_model("mingru", {"vocab_size": 11, "n_embd": 16, "hidden_size": 12, "n_layer": 2}).eval()
    ids = torch.randint(0, 11, (3, 40))
    first, _, state = model.forward_carry(ids[:, :25], None, None)
    second, _, _ = model.forward_carry(ids[:, 25:], None, state)
    torch.testing.assert_close(torch.cat([first, second], dim=1), model(ids)[0], rtol=1e-5, atol=1e-6)
