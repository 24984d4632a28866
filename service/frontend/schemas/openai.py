"""OpenAI completions wire format (`/v1/completions`, `/v1/models`), and what chat completions share with it."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from charlm.sampling import MAX_SEED, MAX_TOP_K, SamplingParams
from charlm.sampling_params import MAX_REPETITION_PENALTY, MAX_TEMPERATURE, MIN_REPETITION_PENALTY
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
MAX_ID_DIGITS = 10  # a character id is an int32
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "suffix": (None,),
}


class StreamOptions(StrictModel):
    include_usage: bool = False
    include_obfuscation: bool | None = Field(None, description="accepted as false or null: charlm pads no chunks")

    @model_validator(mode="after")
    def _refuse_obfuscation(self) -> StreamOptions:
        require_neutral({"include_obfuscation": self.include_obfuscation}, {"include_obfuscation": (None, False)},
                        "stream_options.")
        return self


class SamplingRequest(StrictModel):
    """What OpenAI's completions and chat completions share: the model, how many characters, how
    they are drawn, and grammars (OpenAI's response_format and vLLM's forms)."""

    model: str | None = Field(None, description="model name (default: the server's default model)")
    max_tokens: int | None = Field(None, ge=0, description="characters to generate per choice")
    max_completion_tokens: int | None = Field(None, ge=0, description="OpenAI's newer name for max_tokens; it wins "
                                              "when both are given")
    temperature: float | None = Field(1.0, ge=0, le=MAX_TEMPERATURE, allow_inf_nan=False, description="0 is "
                                      "greedy; below 1e-4 in effect greedy")
    top_p: float | None = Field(1.0, gt=0, le=1)
    top_k: int | None = Field(0, ge=0, le=MAX_TOP_K, description="charlm extension; 0: off")
    n: int = Field(1, ge=1, description="choices per prompt")
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    user: str | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False,
                                           description="subtracted from the logit of every character already generated")
    frequency_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False,
                                            description="subtracted once per time a character was generated")
    logit_bias: dict[str, float] | None = Field(None, description="character id (as a string) -> bias in "
                                                "[-100, 100], added to its logit")
    min_p: float | None = Field(None, ge=0, le=1, allow_inf_nan=False, description="charlm extension: keep "
                                "characters at least min_p times as likely as the most likely; 0: off")
    typical_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False, description="charlm extension: "
                                    "locally typical sampling; 1 or null: off")
    repetition_penalty: float | None = Field(None, ge=MIN_REPETITION_PENALTY, le=MAX_REPETITION_PENALTY,
                                             allow_inf_nan=False, description="charlm extension: "
                                             "divides the positive logits of characters already seen; 1 or null: off")
    response_format: ResponseFormat | None = Field(None, description="json_object, or json_schema with a schema")
    structured_outputs: StructuredOutputs | None = Field(None, description="vLLM extension: exactly one of regex, "
                                                         "json (a schema), choice, json_object")
    guided_regex: str | None = Field(None, description="vLLM's older form of structured_outputs.regex")
    guided_json: Schema | None = Field(None, description="vLLM's older form of structured_outputs.json")
    guided_choice: list[str] | None = Field(None, min_length=1, max_length=256,
                                            description="vLLM's older form of structured_outputs.choice")

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, stop: str | list[str] | None) -> list[str] | None:
        """A list, or None when the request gave none (a chat reply then stops where its model's does)."""
        return None if stop is None else check_stop([stop] if isinstance(stop, str) else list(stop))

    @field_validator("guided_choice")
    @classmethod
    def _check_choices(cls, choices: list[str] | None) -> list[str] | None:
        return None if choices is None else check_choices(choices)

    @field_validator("logit_bias")
    @classmethod
    def _check_logit_bias(cls, bias: dict[str, float] | None) -> dict[str, float] | None:
        if bias is not None and len(bias) > MAX_LOGIT_BIAS_ENTRIES:
            raise ValueError(f"logit_bias names {len(bias)} characters; at most {MAX_LOGIT_BIAS_ENTRIES}")
        for key, value in (bias or {}).items():
            if not key.isdecimal() or len(key) > MAX_ID_DIGITS:  # int() of a long one would refuse or crawl
                raise ValueError(f"logit_bias keys are character ids written as decimal strings of at most "
                                 f"{MAX_ID_DIGITS} digits, not {key[:32]!r}")
            if not -100 <= value <= 100:
                raise ValueError(f"logit_bias[{key!r}] is {value}; biases lie in [-100, 100]")
        return bias

    @model_validator(mode="after")
    def _one_grammar(self) -> SamplingRequest:
        plain_text = self.response_format is None or self.response_format.type == "text"
        forms = [name for name, value in (
            ("response_format", None if plain_text else self.response_format),
            ("structured_outputs", self.structured_outputs), ("guided_regex", self.guided_regex),
            ("guided_json", self.guided_json), ("guided_choice", self.guided_choice)) if value is not None]
        if len(forms) > 1:
            raise ValueError(f"give one grammar, in one form: this request sets {' and '.join(forms)}")
        return self

    def max_new_tokens(self, default: int) -> int:
        """max_completion_tokens, else max_tokens, else `default`."""
        for value in (self.max_completion_tokens, self.max_tokens):
            if value is not None:
                return value
        return default

    @property
    def tokens_param(self) -> str:
        """The field that set the length, for messages."""
        return "max_completion_tokens" if self.max_completion_tokens is not None else "max_tokens"

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

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

    def sampling(self) -> SamplingParams:
        temperature = 1.0 if self.temperature is None else self.temperature
        bias = tuple(sorted((int(key), value) for key, value in (self.logit_bias or {}).items()))
        return SamplingParams(
            temperature, self.top_k or 0, self.top_p or 1.0, self.seed, min_p=self.min_p or 0.0,
            typical_p=self.typical_p or 1.0, repetition_penalty=self.repetition_penalty or 1.0,
            frequency_penalty=self.frequency_penalty or 0.0, presence_penalty=self.presence_penalty or 0.0,
            logit_bias=bias,
        )


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        "", description="a prompt, a list of prompts, or prompts as character ids (one list, or a list of lists)")
    max_tokens: int | None = Field(16, ge=0, description="characters to generate per choice")
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, description="alternatives to report per step")
    echo: bool = Field(False, description="prepend the prompt to each choice's text; with logprobs (and no "
                       "stream), the prompt's characters come first in logprobs, the first one's null")
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, description="candidates per prompt (>= n); the n with the highest mean "
                                "log-probability are answered; not for streams")
    prompt_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_N, description="vLLM extension: each prompt "
                                        "character's log-probability and rank, with this many alternatives")

    @model_validator(mode="after")
    def _refuse_unsupported(self) -> CompletionRequest:
        require_neutral({"suffix": self.suffix}, NEUTRAL)
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
    loaded: bool = Field(description="its engine runs; false: it loads at the first request that names it (on "
                         "standby), or it cannot serve now (see status)")
    status: str = Field(description="ready, loading, restarting, standby, unloaded or failed")
    architecture: str | None = Field(description="null for a model not loaded since the server started")
    parameters: int | None
    vocab_size: int | None
    context_length: int | None = Field(description="characters the model attends to; null: unbounded (or not known "
                                       "yet)")
    version: str | None = Field(description="the weights' fingerprint; it changes when the model is retrained")


class ModelDetail(ModelCard):
    card: str | None = Field(description="the model directory's README.md (written by charlm train): its "
                                         "corpus, training and samples; null when there is none")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]

