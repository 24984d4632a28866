"""OpenAI completions wire format (`/v1/completions`, `/v1/models`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from charlm.sampling import MAX_SEED, MAX_TOP_K, SamplingParams
from service.frontend.schemas.common import StrictModel, check_stop, require_neutral

MAX_LOGPROBS = 5  # as OpenAI allows
MAX_LOGIT_BIAS_ENTRIES = 1024
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "suffix": (None,),
}


class StreamOptions(StrictModel):
    include_usage: bool = False


class CompletionRequest(StrictModel):
    model: str | None = Field(None, description="model name (default: the server's default model)")
    prompt: str | list[str] = Field("", description="a prompt or a list of prompts (not token ids)")
    max_tokens: int | None = Field(16, ge=0, description="characters to generate per choice")
    temperature: float | None = Field(1.0, ge=0, allow_inf_nan=False, description="0 is greedy")
    top_p: float | None = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(0, ge=0, le=MAX_TOP_K, description="charlm extension; 0: off")
    n: int = Field(1, ge=1, description="choices per prompt")
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, description="alternatives to report per step")
    echo: bool = Field(False, description="prepend the prompt to each choice's text")
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    user: str | None = None
    suffix: str | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False,
                                           description="subtracted from the logit of every character already generated")
    frequency_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False,
                                            description="subtracted once per time a character was generated")
    best_of: int | None = Field(None, ge=1, description="candidates per prompt (>= n); the n with the highest mean "
                                "log-probability are answered; not for streams")
    logit_bias: dict[str, float] | None = Field(None, description="character id (as a string) -> bias in "
                                                "[-100, 100], added to its logit")
    min_p: float | None = Field(None, ge=0, le=1, allow_inf_nan=False, description="charlm extension: keep "
                                "characters at least min_p times as likely as the most likely; 0: off")

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, stop: str | list[str] | None) -> list[str]:
        return check_stop([stop] if isinstance(stop, str) else list(stop or []))

    @field_validator("logit_bias")
    @classmethod
    def _check_logit_bias(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        if bias is not None and len(bias) > MAX_LOGIT_BIAS_ENTRIES:
            raise ValueError(f"logit_bias names {len(bias)} characters; at most {MAX_LOGIT_BIAS_ENTRIES}")
        for key, value in (bias or {}).items():
            if not key.isdecimal():
                raise ValueError(f"logit_bias keys are character ids written as decimal strings, not {key!r}")
            if not -100 <= value <= 100:
                raise ValueError(f"logit_bias[{key!r}] is {value}; biases lie in [-100, 100]")
        return bias

    @model_validator(mode="after")
    def _refuse_unsupported(self) -> CompletionRequest:
        require_neutral(self.model_dump(), NEUTRAL)
        if self.best_of is not None and self.best_of < self.n:
            raise ValueError(f"best_of ({self.best_of}) must be at least n ({self.n})")
        if self.stream and self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of cannot be used with stream: candidates are compared when they are done")
        return self

    @property
    def candidates(self) -> int:
        """Sequences per prompt: best_of, else n."""
        return self.best_of or self.n

    @property
    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else self.prompt

    def sampling(self) -> SamplingParams:
        temperature = 1.0 if self.temperature is None else self.temperature
        bias = tuple(sorted((int(key), value) for key, value in (self.logit_bias or {}).items()))
        return SamplingParams(
            temperature, self.top_k or 0, self.top_p or 1.0, self.seed, min_p=self.min_p or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0, presence_penalty=self.presence_penalty or 0.0,
            logit_bias=bias,
        )


class Logprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]] | None
    text_offset: list[int]


class Choice(BaseModel):
    text: str
    index: int
    logprobs: Logprobs | None = None
    finish_reason: str | None = None


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "charlm"
    architecture: str
    parameters: int
    vocab_size: int
    context_length: int | None = Field(description="characters the model attends to; null: unbounded")
    version: str = Field(description="the weights' fingerprint; it changes when the model is retrained")


class ModelDetail(ModelCard):
    card: str | None = Field(description="the model directory's README.md (written by charlm train): its "
                                         "corpus, training and samples; null when there is none")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]

