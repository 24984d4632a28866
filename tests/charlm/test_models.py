"""The decoding contract: `step` gives the logits `forward` gives, for every architecture."""

import pytest
import torch

from charlm.models import ARCHITECTURES, GPT, build_model
from charlm.models.gpt import GPTState

V = 13
CONFIGS = {
    "gpt": {"vocab_size": V, "block_size": 8, "n_layer": 2, "n_head": 2, "n_embd": 16},
    "lstm": {"vocab_size": V, "hidden_size": 16, "n_layer": 2},
    "lstm_attention": {"vocab_size": V, "hidden_size": 16, "n_embd": 8, "n_head": 2, "block_size": 5},
}


def make(architecture: str):
    torch.manual_seed(0)
    return build_model(architecture, CONFIGS[architecture]).eval()


def reference_logits(model, history: torch.Tensor, state) -> torch.Tensor:
    """What `forward` says about the next character after each row of `history` (B, T)."""
    if isinstance(model, GPT):
        assert isinstance(state, GPTState)  # the window the cache holds, for each row
        return torch.stack([model(state.window(b)[None])[0][0, -1] for b in range(history.size(0))])
    return model(history)[0][:, -1]


def test_registry_has_the_three_architectures():
    assert set(ARCHITECTURES) == {"gpt", "lstm", "lstm_attention"}


@pytest.mark.parametrize("architecture", sorted(CONFIGS))
def test_forward_returns_logits_and_loss(architecture):
    model = make(architecture)
    idx = torch.randint(0, V, (3, 7))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 7, V)
    assert loss is not None and loss.ndim == 0 and loss.item() > 0
    assert model(idx)[1] is None


@pytest.mark.parametrize("architecture", sorted(CONFIGS))
def test_cached_step_decoding_equals_full_forward(architecture):
    """Prefill a prompt, then feed one character at a time, far past block_size."""
    model = make(architecture)
    history = torch.randint(0, V, (3, 30))
    with torch.no_grad():
        logits, state = model.step(history[:, :4])
        for t in range(4, history.size(1)):
            expected = reference_logits(model, history[:, :t], state)
            torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
            logits, state = model.step(history[:, t : t + 1], state)


def test_gpt_window_slides_by_reencoding_its_most_recent_half():
    model = make("gpt")  # block_size 8
    history = torch.randint(0, V, (1, 20))
    with torch.no_grad():
        _, state = model.step(history[:, :8])
        assert state.window(0).tolist() == history[0, :8].tolist()
        _, state = model.step(history[:, 8:9], state)  # full: keep the last 4, then append
        assert state.window(0).tolist() == history[0, 4:9].tolist()
        for t in range(9, 20):
            _, state = model.step(history[:, t : t + 1], state)
            window = state.window(0).tolist()
            assert 4 < len(window) <= 8 and window == history[0, t + 1 - len(window) : t + 1].tolist()


def test_gpt_prefill_longer_than_block_size_keeps_the_last_block():
    model = make("gpt")
    history = torch.randint(0, V, (2, 19))
    with torch.no_grad():
        logits, state = model.step(history)
        assert state.window(1).tolist() == history[1, -8:].tolist()
        torch.testing.assert_close(logits, model(history[:, -8:])[0][:, -1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("architecture", sorted(CONFIGS))
def test_rows_of_different_lengths_decode_as_if_alone(architecture):
    """States prefilled separately, concatenated, stepped together, then split again."""
    model = make(architecture)
    prompts = [torch.randint(0, V, (1, n)) for n in (2, 6, 11)]
    with torch.no_grad():
        alone = [model.step(p) for p in prompts]
        batch_state = type(alone[0][1]).concat([model.step(p)[1] for p in prompts])
        nxt = torch.randint(0, V, (3, 1))
        batched_logits, batch_state = model.step(nxt, batch_state)
        for row, (_, state) in enumerate(alone):
            single, _ = model.step(nxt[row : row + 1], state)
            torch.testing.assert_close(batched_logits[row : row + 1], single, rtol=1e-4, atol=1e-5)
        kept = batch_state.select(torch.tensor([2, 0]))
        assert kept.batch_size == 2


def test_gpt_ties_input_and_output_embeddings():
    model = make("gpt")
    assert model.lm_head.weight is model.wte.weight


@pytest.mark.parametrize(
    "architecture, config, problem",
    [
        ("gpt", {"vocab_size": 5, "n_embd": 10, "n_head": 3}, "multiple of n_head"),
        ("gpt", {"vocab_size": 5, "dropout": 1.5}, "dropout"),
        ("lstm", {"vocab_size": 5, "hidden_size": 0}, "hidden_size"),
        ("lstm", {"vocab_size": 5, "layers": 2}, "unknown config key"),
        ("lstm_attention", {"vocab_size": 5, "n_head": "two"}, "n_head must be int"),
        ("transformer", {"vocab_size": 5}, "unknown architecture"),
    ],
)
def test_invalid_configs_are_refused_with_a_reason(architecture, config, problem):
    with pytest.raises(ValueError, match=problem):
        build_model(architecture, config)
