"""What crosses between processes about an engine: how to start it (`EngineSpec`), what it serves
(`ModelInfo`, reported once it has started) and each request (`RequestSpec`)."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import torch

from charlm.checkpoint import LoadedModel
from charlm.sampling_params import SamplingParams
from charlm.vocab import Vocab
from service.engine.grammars import compile_regex
from service.engine.sequences import GenerationRequest


@dataclasses.dataclass(frozen=True)
class EngineSpec:
    name: str
    path: Path
    device: str
    dtype: torch.dtype
    max_batch_size: int
    max_queued: int
    cuda_graphs: bool
    threads: int  # intra-op CPU threads
    log_level: str
    fingerprint: str = ""  # of the weights the control plane read: the engine must serve the same version
    address: str = ""  # the Unix socket front ends connect to
    compile_step: bool | None = None  # torch.compile the decode step (None: on CUDA)
    choose_dtype: bool = False  # `dtype` is float32, and the engine times which dtype decodes faster


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a front end needs to know of a served version: to encode prompts and to describe it."""

    architecture: str
    parameters: int
    chars: list[str]  # the vocabulary, by id
    start_char: str  # where a generation from an empty prompt starts
    context_length: int | None
    version: str  # the weights' fingerprint

    @classmethod
    def of(cls, loaded: LoadedModel) -> ModelInfo:
        model, vocab = loaded.model, loaded.vocab
        return cls(model.architecture, model.num_parameters(), list(vocab.chars), vocab.start_char,
                   model.context_size, loaded.fingerprint)

    @functools.cached_property
    def vocab(self) -> Vocab:
        return Vocab(self.chars, self.start_char)


@dataclasses.dataclass(frozen=True)
class RequestSpec:
    """What crosses the socket of a `GenerationRequest`."""

    key: int
    prompt_ids: list[int]
    max_new_tokens: int
    params: SamplingParams
    stop: tuple[str, ...]
    top_n: int
    timeout_s: float | None
    request_id: str
    submitted_at: float  # time.monotonic() is one clock for every process of the machine
    grammar: str | None = None  # the regular expression (the front end checked it); compiled where it runs
    prompt_logprobs: int | None = None  # score the prompt, with this many alternatives per character

    def request(self, client: int, vocab: Vocab) -> GenerationRequest:
        """The request as an engine runs it: its grammar compiled over `vocab` (cached; raises
        GrammarError)."""
        grammar = compile_regex(self.grammar, vocab) if self.grammar is not None else None
        return GenerationRequest(self.prompt_ids, self.max_new_tokens, self.params, stop=self.stop, top_n=self.top_n,
                                 timeout_s=self.timeout_s, request_id=self.request_id, submitted_at=self.submitted_at,
                                 key=self.key, client=client, grammar=grammar, prompt_logprobs=self.prompt_logprobs)
