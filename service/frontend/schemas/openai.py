"""OpenAI completions wire format (`/v1/completions`, `/v1/models`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from charlm.sampling import MAX_SEED, MAX_TOP_K, SamplingParams
from service.frontend.schemas.common import MAX_TOP_N, StrictModel, check_stop, require_neutral
from service.frontend.schemas.grammar import (
    GrammarForm,
    JsonObjectFormat,
    JsonSchemaFormat,
    ResponseFormat,
    Schema,
    StructuredOutputs,
    check_choices,
)

MAX_LOGPROBS = 5  # as OpenAI allows
MAX_LOGIT_BIAS_ENTRIES = 1024
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "suffix": (None,),
}


class StreamOptions(StrictModel):
    include_usage: bool = False


class CompletionRequest(StrictModel):
    model: str | None = Field(None, description="model name (default: the server's default model)")
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        "", description="a prompt, a list of prompts, or prompts as character ids (one list, or a list of lists)")
    max_tokens: int | None = Field(16, ge=0, description="characters to generate per choice")
    temperature: float | None = Field(1.0, ge=0, allow_inf_nan=False, description="0 is greedy")
    top_p: float | None = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(0, ge=0, le=MAX_TOP_K, description="charlm extension; 0: off")
    n: int = Field(1, ge=1, description="choices per prompt")
    stream: bool = False
    stream_options: StreamOptions | None = None
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, description="alternatives to report per step")
    echo: bool = Field(False, description="prepend the prompt to each choice's text; with logprobs (and no "
                       "stream), the prompt's characters come first in logprobs, the first one's null")
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
    prompt_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_N, description="vLLM extension: each prompt "
                                        "character's log-probability and rank, with this many alternatives")
    response_format: ResponseFormat | None = Field(None, description="json_object, or json_schema with a schema")
    structured_outputs: StructuredOutputs | None = Field(None, description="vLLM extension: exactly one of regex, "
                                                         "json (a schema), choice, json_object")
    guided_regex: str | None = Field(None, description="vLLM's older form of structured_outputs.regex")
    guided_json: Schema | None = Field(None, description="vLLM's older form of structured_outputs.json")
    guided_choice: list[str] | None = Field(None, min_length=1, max_length=256,
                                            description="vLLM's older form of structured_outputs.choice")

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
        require_neutral({"suffix": self.suffix}, NEUTRAL)
        plain_text = self.response_format is None or self.response_format.type == "text"
        forms = [name for name, value in (
            ("response_format", None if plain_text else self.response_format),
            ("structured_outputs", self.structured_outputs), ("guided_regex", self.guided_regex),
            ("guided_json", self.guided_json), ("guided_choice", self.guided_choice)) if value is not None]
        if len(forms) > 1:
            raise ValueError(f"give one grammar, in one form: this request sets {' and '.join(forms)}")
        if self.guided_choice is not None:
            check_choices(self.guided_choice)
        if self.stream and self.prompt_logprobs is not None:
            raise ValueError("prompt_logprobs cannot be streamed: send stream false")
        if self.best_of is not None and self.best_of < self.n:
            raise ValueError(f"best_of ({self.best_of}) must be at least n ({self.n})")
        if self.stream and self.best_of is not None and self.best_of != self.n:
            raise ValueError("best_of cannot be used with stream: candidates are compared when they are done")
        return self

    @property
    def candidates(self) -> int:
        """Sequences per prompt: best_of, else n."""
        return self.best_of or self.n

    def grammar_form(self) -> GrammarForm | None:
        """The grammar asked for, in whichever form (the validator allowed one at most)."""
        if isinstance(self.response_format, JsonObjectFormat):
            return GrammarForm("json", None, "response_format")
        if isinstance(self.response_format, JsonSchemaFormat):
            return GrammarForm("json", self.response_format.json_schema.schema_, "response_format.json_schema.schema")
        so = self.structured_outputs
        if so is not None:
            if so.regex is not None:
                return GrammarForm("regex", so.regex, "structured_outputs.regex")
            if so.json_ is not None:
                return GrammarForm("json", so.json_, "structured_outputs.json")
            if so.choice is not None:
                return GrammarForm("choice", so.choice, "structured_outputs.choice")
            return GrammarForm("json", None, "structured_outputs.json_object")
        if self.guided_regex is not None:
            return GrammarForm("regex", self.guided_regex, "guided_regex")
        if self.guided_json is not None:
            return GrammarForm("json", self.guided_json, "guided_json")
        if self.guided_choice is not None:
            return GrammarForm("choice", self.guided_choice, "guided_choice")
        return None

    @property
    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: texts, or character ids (which the route decodes with the model's vocabulary)."""
        prompt = self.prompt
        if isinstance(prompt, str) or (prompt and isinstance(prompt[0], int)):
            return [prompt]  # a str, or one prompt's ids
        return list(prompt)  # type: ignore[arg-type]  # several prompts

    @property
    def prompt_scores(self) -> int | None:
        """How many alternatives to report per prompt character, when the prompt is scored: for
        echo with logprobs (without a stream) and for prompt_logprobs."""
        asked = [n for n in (self.logprobs if self.echo and not self.stream else None, self.prompt_logprobs)
                 if n is not None]
        return max(asked) if asked else None

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
    token_logprobs: list[float | None] = Field(description="null for an echoed prompt's first character")
    top_logprobs: list[dict[str, float] | None] | None
    text_offset: list[int]


class PromptLogprob(BaseModel):
    logprob: float
    rank: int | None
    decoded_token: str


class Choice(BaseModel):
    text: str
    index: int
    logprobs: Logprobs | None = None
    finish_reason: str | None = None
    prompt_logprobs: list[dict[str, PromptLogprob] | None] | None = Field(
        None, description="vLLM's: per prompt character (the first null), it and the top alternatives by id")


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

