"""Properties of the sampling filters on arbitrary logits and parameters."""

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from charlm.sampling import MAX_TOP_K, SamplingParams, SamplingRows, filtered_sorted_probs, sample
from charlm.sampling_params import MAX_REPETITION_PENALTY, MAX_TEMPERATURE, MIN_REPETITION_PENALTY

logit_rows = st.lists(st.floats(-30, 30, allow_nan=False), min_size=2, max_size=24)
temperatures = st.floats(0.05, 5.0)
top_ks = st.integers(0, 30)
top_ps = st.floats(0.01, 1.0)


def filtered(logits: list[float], temperature: float, top_k: int, top_p: float) -> tuple[torch.Tensor, torch.Tensor]:
    rows = SamplingRows.of([SamplingParams(temperature, top_k, top_p)], len(logits), "cpu")
    probs, order = filtered_sorted_probs(torch.tensor([logits]), rows)
    return probs[0], order[0]


@given(logit_rows, temperatures, top_ks, top_ps)
def test_filtered_probabilities_are_a_sorted_distribution(logits, temperature, top_k, top_p):
    probs, order = filtered(logits, temperature, top_k, top_p)
    assert torch.all(probs >= 0) and math.isclose(probs.sum().item(), 1.0, rel_tol=1e-5)
    assert torch.all(probs[:-1] >= probs[1:] - 1e-7)  # descending
    assert sorted(order.tolist()) == list(range(len(logits)))  # a permutation
    assert probs[0] > 0  # the most likely character always survives


@given(logit_rows, temperatures, top_ks, top_ps)
def test_top_k_and_top_p_keep_the_smallest_sufficient_prefix(logits, temperature, top_k, top_p):
    probs, _ = filtered(logits, temperature, top_k, top_p)
    kept = int((probs > 0).sum())
    if top_k:
        assert kept <= top_k
    # Before top-p: the distribution after temperature and top-k.
    scaled = torch.tensor(logits) / temperature
    before = scaled.sort(descending=True).values[: top_k or len(logits)].softmax(-1)
    mass_before_last_kept = before[: kept - 1].sum().item()
    if top_p < 1.0:
        assert mass_before_last_kept < top_p + 1e-5  # no kept character was unnecessary


@given(logit_rows, temperatures, top_ks, top_ps, st.integers(0, 2**63 - 1))
def test_a_drawn_character_is_one_the_filters_kept(logits, temperature, top_k, top_p, seed):
    probs, order = filtered(logits, temperature, top_k, top_p)
    allowed = set(order[probs > 0].tolist())
    rows = SamplingRows.of([SamplingParams(temperature, top_k, top_p)], len(logits), "cpu", [seed])
    result = sample(torch.tensor([logits]), rows)
    assert result.ids.item() in allowed and result.logprobs.item() <= 0


@given(logit_rows)
def test_temperature_zero_is_argmax(logits):
    row = torch.tensor([logits])  # float32, as the models produce
    ids = sample(row, SamplingRows.of([SamplingParams(0.0)], len(logits), "cpu", [0])).ids
    assert row[0, ids.item()] == row.max()


@given(st.floats(allow_nan=True), st.integers(-5, MAX_TOP_K + 5), st.floats(allow_nan=True))
def test_parameters_out_of_range_are_refused(temperature, top_k, top_p):
    valid = 0 <= temperature <= MAX_TEMPERATURE and 0 <= top_k <= MAX_TOP_K and 0 < top_p <= 1
    if valid:
        SamplingParams(temperature, top_k, top_p)
    else:
        with pytest.raises(ValueError):
            SamplingParams(temperature, top_k, top_p)


EXTREMES_ALLOWED = [  # the edges of what the HTTP schemas let through, and float32's rounding of them
    SamplingParams(temperature=5e-324), SamplingParams(temperature=1e-45), SamplingParams(temperature=-0.0),
    SamplingParams(temperature=MAX_TEMPERATURE), SamplingParams(top_p=5e-324), SamplingParams(typical_p=5e-324),
    SamplingParams(min_p=5e-324), SamplingParams(min_p=1.0), SamplingParams(repetition_penalty=MIN_REPETITION_PENALTY),
    SamplingParams(repetition_penalty=MAX_REPETITION_PENALTY), SamplingParams(frequency_penalty=-2.0),
    SamplingParams(presence_penalty=2.0), SamplingParams(logit_bias=((0, 100.0), (1, -100.0))),
]


@pytest.mark.parametrize("params", EXTREMES_ALLOWED, ids=repr)
@given(logits=logit_rows)
def test_every_allowed_extreme_draws_from_a_finite_distribution(params, logits):
    """No extreme may turn a row into NaN or infinity. A top_p or typical_p of 5e-324 is 0 in
    float32: top-p must still keep the most likely character (then the one drawn), typical-p the
    one nearest the entropy."""
    def rows() -> SamplingRows:
        return SamplingRows.of([params], len(logits), "cpu", [7], prompts=[[0, 1, 1]])

    probs, _ = filtered_sorted_probs(torch.tensor([logits]), rows())
    assert torch.isfinite(probs).all() and math.isclose(probs.sum().item(), 1.0, rel_tol=1e-5)
    draw = sample(torch.tensor([logits]), rows())
    assert 0 <= draw.ids.item() < len(logits) and math.isfinite(draw.logprobs.item())
    if params.top_p < 1e-40:  # compared as the sampler sees them: in float32, where -3.6e-50 is 0.0
        as_float32 = torch.tensor(logits)
        assert as_float32[draw.ids.item()] == as_float32.max()
    if params.typical_p < 1e-40:
        assert (probs > 0).sum() == 1
