"""The decoding contract: `step` gives the logits `forward` gives, for every architecture."""

import pytest
import torch

from charlm.models import ARCHITECTURES, GPT, base, build_model
from charlm.models.gpt import GPTState
from tests.helpers import TINY, require_triton

V = 13
CONFIGS = {
    "gpt": {"vocab_size": V, "block_size": 8, "n_layer": 2, "n_head": 2, "n_embd": 16},
    "lstm": {"vocab_size": V, "hidden_size": 16, "n_layer": 2},
    "lstm_attention": {"vocab_size": V, "hidden_size": 16, "n_embd": 8, "n_head": 2, "block_size": 5},
    "mingru": {"vocab_size": V, "n_embd": 16, "hidden_size": 12, "n_layer": 2},
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


def step_with_room(model, tokens: torch.Tensor, state) -> torch.Tensor:
    """`step`, after re-encoding the rows whose window is full, as a decoder does."""
    if model.decode_window is not None:
        full = (state.length >= model.decode_window).nonzero().squeeze(1)
        if full.numel():
            model.reencode(state, full)
    return model.step(tokens, state)


def test_a_gpt_on_a_cpu_decodes_with_scaled_dot_product_attention_by_default():
    model = make("gpt")
    assert model.prepare_decoding() == {"decode_attention": "sdpa", "decode_attention_reason": "on cpu"}
    assert not model.attention_kernel


def test_registry_has_the_four_architectures():
    assert set(ARCHITECTURES) == {"gpt", "lstm", "lstm_attention", "mingru"}


def test_every_architecture_has_test_settings():
    """Tests parametrised over the families take them from here and from tests.helpers.TINY (the
    tiny trained models every decoding and service test runs on): a new family must join both."""
    assert set(CONFIGS) == set(ARCHITECTURES) == set(TINY)


@pytest.mark.parametrize("architecture", sorted(CONFIGS))
def test_forward_returns_logits_and_loss(architecture):
    model = make(architecture)
    idx = torch.randint(0, V, (3, 7))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 7, V)
    assert loss is not None and loss.ndim == 0 and loss.item() > 0
    assert model(idx)[1] is None


@pytest.mark.parametrize(("architecture", "attention"),
                         [(a, how) for a in sorted(CONFIGS) for how in ("sdpa", "bmm")] + [("gpt", "triton")])
def test_prefill_then_fixed_shape_steps_equal_full_forward(architecture, attention, monkeypatch):
    """Prefill a prompt, then feed one character at a time with `step`, far past block_size, with
    each way of attending over the cache (GPT's steps with the Triton kernel too, interpreted here)."""
    if attention == "triton":
        require_triton()
    monkeypatch.setattr(base, "DECODE_ATTENTION", attention)
    model = make(architecture)
    chosen = model.prepare_decoding()
    assert architecture != "gpt" or chosen["decode_attention"] == attention
    history = torch.randint(0, V, (3, 30))
    with torch.no_grad():
        state = model.init_state(3, "cpu")
        logits = model.prefill(history[:, :4], state)
        for t in range(4, history.size(1)):
            expected = reference_logits(model, history[:, :t], state)
            torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)
            logits = step_with_room(model, history[:, t], state)


@pytest.mark.parametrize("architecture", sorted(CONFIGS))
def test_step_equals_a_one_character_prefill(architecture):
    model = make(architecture)
    prompt, nxt = torch.randint(0, V, (2, 5)), torch.randint(0, V, (2,))
    with torch.no_grad():
        by_step, by_prefill = model.init_state(2, "cpu"), model.init_state(2, "cpu")
        model.prefill(prompt, by_step)
        model.prefill(prompt, by_prefill)
        torch.testing.assert_close(model.step(nxt, by_step), model.prefill(nxt[:, None], by_prefill),
                                   rtol=1e-4, atol=1e-5)


def test_gpt_window_slides_by_reencoding_its_most_recent_half():
    model = make("gpt")  # block_size 8
    history = torch.randint(0, V, (1, 20))
    with torch.no_grad():
        state = model.init_state(1, "cpu")
        model.prefill(history[:, :8], state)
        assert state.window(0).tolist() == history[0, :8].tolist()
        step_with_room(model, history[:, 8], state)  # full: keep the last 4, then append
        assert state.window(0).tolist() == history[0, 4:9].tolist()
        for t in range(9, 20):
            step_with_room(model, history[:, t], state)
            window = state.window(0).tolist()
            assert 4 < len(window) <= 8 and window == history[0, t + 1 - len(window) : t + 1].tolist()


def test_gpt_prefill_longer_than_block_size_keeps_the_last_block():
    model = make("gpt")
    history = torch.randint(0, V, (2, 19))
    with torch.no_grad():
        state = model.init_state(2, "cpu")
        logits = model.prefill(history, state)
        assert state.window(1).tolist() == history[1, -8:].tolist()
        torch.testing.assert_close(logits, model(history[:, -8:])[0][:, -1], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("architecture", sorted(CONFIGS))
def test_rows_of_different_lengths_decode_as_if_alone(architecture):
    """Rows prefilled separately into one state (views of its rows), stepped together with an
    idle row, then moved: each row's logits are those of its sequence alone."""
    model = make(architecture)
    prompts = [torch.randint(0, V, (1, n)) for n in (2, 6, 11)]
    nxt = torch.randint(0, V, (4,))
    with torch.no_grad():
        batch = model.init_state(4, "cpu")  # row 3 stays idle
        for row, prompt in enumerate(prompts):
            model.prefill(prompt, batch.narrow(row, 1))
        batched = step_with_room(model, nxt, batch)
        for row, prompt in enumerate(prompts):
            alone = model.init_state(1, "cpu")
            model.prefill(prompt, alone)
            single = step_with_room(model, nxt[row : row + 1], alone)
            torch.testing.assert_close(batched[row : row + 1], single, rtol=1e-4, atol=1e-5)
            if row == 2:  # the last row moved into the first keeps decoding as itself
                batch.copy_row(2, 0)
                moved = step_with_room(model, nxt[:1].expand(4), batch)[0]
                torch.testing.assert_close(moved, step_with_room(model, nxt[:1], alone)[0], rtol=1e-4, atol=1e-5)


def test_idle_rows_of_a_fixed_batch_may_run_past_the_window():
    """An idle row is stepped with the rest but never re-encoded: every index stays in range."""
    model = make("gpt")
    state = model.init_state(2, "cpu")
    with torch.no_grad():
        for _ in range(3 * model.config.block_size):
            logits = model.step(torch.zeros(2, dtype=torch.long), state)
    assert torch.isfinite(logits).all()


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
        ("mingru", {"vocab_size": 5, "hidden_size": 0}, "hidden_size must be at least 1"),
        ("mingru", {"vocab_size": 5, "dropout": -0.1}, "dropout"),
        ("transformer", {"vocab_size": 5}, "unknown architecture"),
    ],
)
def test_invalid_configs_are_refused_with_a_reason(architecture, config, problem):
    with pytest.raises(ValueError, match=problem):
        build_model(architecture, config)
