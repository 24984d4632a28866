import pytest
import torch

from charlm.sampling import (
    SamplingParams,
    SamplingRows,
    filtered_sorted_probs,
    mix32,
    noise_key,
    sample,
    uniform_noise,
)

V = 50


def draw(logits, params, seeds):
    result = sample(logits, SamplingRows.of(params, logits.size(-1), logits.device, list(seeds)))
    return result.ids, result.logprobs


def random_logits(rows: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(rows, V, generator=torch.Generator().manual_seed(seed)) * 3


def test_temperature_zero_is_greedy_argmax():
    logits = random_logits(8)
    ids, _ = draw(logits, [SamplingParams(temperature=0.0)] * 8, range(8))
    assert ids.tolist() == logits.argmax(dim=-1).tolist()


def test_top_k_never_picks_outside_the_k_best():
    logits = random_logits(1).expand(400, V)
    ids, _ = draw(logits, [SamplingParams(temperature=5.0, top_k=3)] * 400, range(400))
    allowed = set(logits[0].topk(3).indices.tolist())
    assert set(ids.tolist()) <= allowed
    assert len(set(ids.tolist())) == 3  # a hot temperature reaches all three


def test_top_p_keeps_the_smallest_prefix_reaching_the_mass():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    batch = SamplingRows.of([SamplingParams(top_p=0.75)], 4, "cpu")
    probs, order = filtered_sorted_probs(logits, batch)
    assert order[0].tolist() == [0, 1, 2, 3]
    torch.testing.assert_close(probs[0], torch.tensor([0.625, 0.375, 0.0, 0.0]))


def test_top_p_always_keeps_the_most_likely_character():
    logits = torch.log(torch.tensor([[0.9, 0.1]]))
    probs, _ = filtered_sorted_probs(logits, SamplingRows.of([SamplingParams(top_p=0.01)], 2, "cpu"))
    assert probs[0].tolist() == [1.0, 0.0]


def test_same_seed_gives_the_same_draw_alone_or_inside_a_batch():
    logits = random_logits(4)
    params = [
        SamplingParams(temperature=1.0, seed=7),
        SamplingParams(temperature=0.7, top_k=5),
        SamplingParams(temperature=1.3, top_p=0.9),
        SamplingParams(temperature=0.0),
    ]
    seeds = [7, 1, 2, 3]
    batched, _ = draw(logits, params, seeds)
    for row in range(4):
        alone, _ = draw(logits[row : row + 1], [params[row]], [seeds[row]])
        assert alone.item() == batched[row].item()


def test_a_seed_draws_the_same_sequence_every_time_and_the_draws_vary():
    logits = random_logits(1) / 6  # flat enough that 30 draws differ
    params = [SamplingParams(temperature=1.0)]
    first, second = SamplingRows.of(params, V, "cpu", [42]), SamplingRows.of(params, V, "cpu", [42])
    run_a = [sample(logits, first).ids.item() for _ in range(30)]
    run_b = [sample(logits, second).ids.item() for _ in range(30)]
    assert run_a == run_b and len(set(run_a)) > 1
    assert first.drawn.item() == 30  # each draw moves the row's noise counter


def test_noise_is_uniform_and_exact():
    keys = torch.tensor([noise_key(seed) for seed in range(64)]).repeat_interleave(1000)
    counters = torch.arange(1000).repeat(64)
    u = uniform_noise(keys, counters)
    assert u.dtype == torch.float32 and bool(((u >= 0) & (u < 1)).all())
    assert bool(((u * 2**24).round() == u * 2**24).all())  # 24-bit values: the same on every device
    counts = torch.histc(u, bins=16, min=0, max=1)
    expected = u.numel() / 16
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    assert chi_square < 50  # 15 degrees of freedom: p < 1e-5 that a uniform source exceeds it
    lag_1 = torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1]
    assert abs(float(lag_1)) < 0.02


def test_noise_streams_of_neighbouring_seeds_differ():
    counters = torch.arange(200)
    streams = [uniform_noise(torch.full((200,), noise_key(seed)), counters) for seed in (7, 8, 2**40 + 7)]
    assert not torch.equal(streams[0], streams[1]) and not torch.equal(streams[0], streams[2])


def test_the_hash_agrees_on_python_ints_and_tensors():
    values = [0, 1, 12345, 2**31, 2**32 - 1]
    assert mix32(torch.tensor(values)).tolist() == [mix32(v) for v in values]


def test_sampled_frequencies_follow_the_distribution():
    probs = torch.tensor([0.6, 0.3, 0.1])
    logits = probs.log().expand(3000, 3)
    ids, _ = draw(logits, [SamplingParams()] * 3000, range(3000))
    freq = torch.bincount(ids, minlength=3).float() / 3000
    torch.testing.assert_close(freq, probs, atol=0.03, rtol=0)


def test_logprobs_are_under_the_unmodified_distribution():
    logits = random_logits(3)
    ids, logprobs = draw(logits, [SamplingParams(temperature=0.5, top_k=2)] * 3, range(3))
    expected = logits.log_softmax(-1).gather(1, ids[:, None]).squeeze(1)
    torch.testing.assert_close(logprobs, expected)


def test_a_tiny_temperature_behaves_like_greedy():
    logits = random_logits(6)
    ids, _ = draw(logits, [SamplingParams(temperature=1e-30)] * 6, range(6))
    assert ids.tolist() == logits.argmax(dim=-1).tolist()


def test_top_p_of_one_keeps_every_character():
    logits = torch.zeros(1, 1000)  # a sum of many equal probabilities rounds above 1
    probs, _ = filtered_sorted_probs(logits, SamplingRows.of([SamplingParams(top_p=1.0)], 1000, "cpu"))
    assert bool((probs > 0).all())


@pytest.mark.parametrize(
    "kwargs",
    [{"temperature": -1.0}, {"temperature": float("nan")}, {"top_k": -1}, {"top_p": 0.0}, {"top_p": 1.5},
     {"seed": -3}],
)
def test_invalid_sampling_params_are_refused(kwargs):
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)


@pytest.mark.parametrize("temperature", [1e-4, 0.3, 0.8, 1.0, 7.5, 100.0])
def test_a_draw_without_filters_equals_the_full_draw_bit_for_bit(temperature):
    """`filters=False` (no greedy row, no floored temperature, no top-k or top-p) skips arithmetic
    that leaves such rows as they are: ids, log-probabilities and the counters all agree exactly."""
    params = [SamplingParams(temperature=temperature)] * 64
    assert not any(p.filtered for p in params)
    logits = random_logits(64, seed=3)
    full_rows, plain_rows = (SamplingRows.of(params, V, "cpu", list(range(64))) for _ in range(2))
    for _ in range(20):
        full = sample(logits, full_rows, controls=False)
        plain = sample(logits, plain_rows, controls=False, filters=False)
        assert torch.equal(full.ids, plain.ids) and torch.equal(full.logprobs, plain.logprobs)
        probs, order = filtered_sorted_probs(logits, full_rows, controls=False)
        plain_probs, plain_order = filtered_sorted_probs(logits, plain_rows, controls=False, filters=False)
        assert torch.equal(probs, plain_probs) and torch.equal(order, plain_order)
    assert torch.equal(full_rows.drawn, plain_rows.drawn)


@pytest.mark.parametrize("kwargs", [{"temperature": 0.0}, {"temperature": 5e-5}, {"top_k": 3}, {"top_p": 0.9}])
def test_greedy_floored_top_k_and_top_p_rows_are_filtered(kwargs):
    assert SamplingParams(**kwargs).filtered
