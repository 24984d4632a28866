"""A simple one-sequence decoding loop over `step` and `sample`, for the command line.

The service batches many sequences with the same two calls; this loop is the
reference it must agree with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import torch

from charlm.models import CharModel
from charlm.sampling import SamplingBatch, SamplingParams, make_generator, sample
from charlm.vocab import Vocab


@dataclasses.dataclass(frozen=True)
class GeneratedChar:
    char: str
    id: int
    logprob: float


def prompt_ids(vocab: Vocab, prompt: str) -> list[int]:
    """The ids a generation starts from: the prompt, or the start character when empty."""
    return vocab.encode(prompt).tolist() if prompt else [vocab.start_id]


@torch.inference_mode()
def generate(
    model: CharModel,
    vocab: Vocab,
    prompt: str,
    max_new_tokens: int,
    params: SamplingParams,
) -> Iterator[GeneratedChar]:
    """Yield up to `max_new_tokens` characters following `prompt`, one at a time.

    Raises UnknownCharactersError before generating when the prompt cannot be encoded.
    """
    device = next(model.parameters()).device
    tokens = torch.tensor([prompt_ids(vocab, prompt)], device=device)  # (1, T)
    generator, _ = make_generator(params.seed)
    batch = SamplingBatch.of([params], device)
    state = None
    for _ in range(max_new_tokens):
        logits, state = model.step(tokens, state)
        ids, logprobs = sample(logits, batch, [generator])
        char_id = int(ids[0])
        yield GeneratedChar(vocab.chars[char_id], char_id, float(logprobs[0]))
        tokens = ids[:, None]  # (1, 1)
