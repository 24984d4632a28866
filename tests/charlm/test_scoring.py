"""Scoring a text: equal to the model's forward pass, a sliding window past the context that scores
every character once, and recurrent models carrying their state across chunks."""

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import charlm.scoring
from charlm.checkpoint import load_model
from charlm.scoring import score, window_plan

BUNDLED = Path(__file__).resolve().parents[2] / "models"
TEXT = "the king and the queen shall speak of love and war, my lord, at night; the lord"


@torch.inference_mode()
def test_scores_equal_the_forward_pass_within_the_context(trained_dir):
    loaded = load_model(trained_dir)
    ids = torch.from_numpy(loaded.vocab.encode(TEXT[:15]))  # within every tiny model's context
    scores = score(loaded.model, ids, top_n=3)
    logits, _ = loaded.model(ids[None, :-1])
    log_softmax = logits[0].float().log_softmax(dim=-1)  # (N - 1, V)
    expected = log_softmax.gather(1, ids[1:, None]).squeeze(1)
    np.testing.assert_allclose(scores.logprobs, expected.numpy(), atol=1e-5)
    np.testing.assert_array_equal(scores.top_ids, log_softmax.topk(3).indices.numpy())
    assert scores.ranks.tolist() == [int((row > row[t]).sum()) + 1 for row, t in zip(log_softmax, ids[1:],
                                                                                      strict=True)]


@torch.inference_mode()
def test_the_top_alternative_carries_the_very_float_of_the_character_it_is():
    """lm-evaluation-harness counts a character as greedy when its log-prob equals the largest
    alternative's exactly."""
    loaded = load_model(BUNDLED / "shakespeare-gpt")
    ids = torch.from_numpy(loaded.vocab.encode("First Citizen:\nBefore we proceed any further, hear me speak."))
    scores = score(loaded.model, ids, top_n=1)
    greedy = scores.ranks == 1
    assert greedy.any() and (scores.logprobs[greedy] == scores.top_logprobs[greedy, 0]).all()
    assert (scores.logprobs[~greedy] < scores.top_logprobs[~greedy, 0]).all()


@given(st.integers(1, 300), st.integers(1, 40), st.data())
def test_the_window_plan_scores_every_character_once_with_enough_context(targets, context, data):
    stride = data.draw(st.integers(1, context))
    scored = []
    for index, (start, new) in enumerate(window_plan(targets, context, stride)):
        width = min(context, targets)
        assert 1 <= new <= width and start >= 0 and start + width <= targets
        if index:  # past the first window, a character sees at least context - stride before it
            assert width - new >= context - stride
        scored += range(start + width - new, start + width)
    assert scored == list(range(targets))


@torch.inference_mode()
def test_a_text_longer_than_the_context_is_scored_window_by_window(tiny_models):
    loaded = load_model(tiny_models / "tiny-gpt")  # context 16
    ids = torch.from_numpy(loaded.vocab.encode(TEXT))
    scores = score(loaded.model, ids, window=16, stride=8)
    targets = len(ids) - 1
    expected = np.zeros(targets, dtype=np.float32)
    for start, new in window_plan(targets, 16, 8):
        logits, _ = loaded.model(ids[None, start : start + 16])
        log_softmax = logits[0].float().log_softmax(dim=-1)
        for offset in range(16 - new, 16):
            expected[start + offset] = log_softmax[offset, ids[start + offset + 1]]
    np.testing.assert_allclose(scores.logprobs, expected, atol=1e-5)


@pytest.mark.parametrize("name", ["tiny-lstm", "tiny-lstm_attention"])
@torch.inference_mode()
def test_a_recurrent_model_carries_its_state_across_chunks(tiny_models, name, monkeypatch):
    loaded = load_model(tiny_models / name)
    ids = torch.from_numpy(loaded.vocab.encode(TEXT))
    whole = score(loaded.model, ids)
    monkeypatch.setattr(charlm.scoring, "RECURRENT_CHUNK", 7)
    chunked = score(loaded.model, ids)
    np.testing.assert_allclose(chunked.logprobs, whole.logprobs, atol=1e-5)
    logits, _ = loaded.model(ids[None, :-1])
    expected = logits[0].float().log_softmax(dim=-1).gather(1, ids[1:, None]).squeeze(1)
    np.testing.assert_allclose(whole.logprobs, expected.numpy(), atol=1e-5)
