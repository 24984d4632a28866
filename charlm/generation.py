"""A one-sequence decoding loop for the command line, over the same decoder the service uses.

The service batches many sequences in a `SlotDecoder`; this loop drives one with a
single row, and is the reference the service must agree with.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import torch

from charlm.decoding import SlotDecoder
from charlm.models import CharModel
from charlm.sampling import SamplingParams, resolve_seed
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
    model_dir: Path | None = None,
) -> Iterator[GeneratedChar]:
    """Yield up to `max_new_tokens` characters following `prompt`, one at a time. `model_dir`,
    where the model came from, may carry its exported CPU step (`charlm.cpu_onnx`).

    Raises UnknownCharactersError before generating when the prompt cannot be encoded.
    """
    ids = prompt_ids(vocab, prompt)
    name = model_dir.name if model_dir is not None else "model"  # for the log's lines
    decoder = SlotDecoder(model, 1, graphs=False, name=name, model_dir=model_dir)
    decoder.prepare_cpu_step()  # the service's lone request steps so too: the same seed, the same text
    decoder.add(ids, params, resolve_seed(params.seed))
    for _ in range(max_new_tokens):
        result = decoder.launch().result()
        char_id = result.ids[0]
        yield GeneratedChar(vocab.chars[char_id], char_id, result.logprobs[0])
