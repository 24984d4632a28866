"""Hugging Face text-generation-inference (TGI) wire format."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, field_validator, model_validator

from charlm.sampling import MAX_SEED, MAX_TOP_K, SamplingParams
from charlm.sampling_params import MAX_REPETITION_PENALTY, MAX_TEMPERATURE, MIN_REPETITION_PENALTY
from service.frontend.schemas.common import MAX_TOP_N, StrictModel, check_stop, require_neutral
from service.frontend.schemas.grammar import GrammarForm, JsonSchemaGrammar, RegexGrammar, TGIGrammar

DEFAULT_MAX_NEW_TOKENS = 100

# TGI fields that clients send with neutral defaults; other values are refused.
NEUTRAL: dict[str, tuple[Any, ...]] = {
    "watermark": (False,),
    "adapter_id": (None,),
}


class Parameters(StrictModel):
    max_new_tokens: int | None = Field(None, ge=0, description=f"default {DEFAULT_MAX_NEW_TOKENS}")
    temperature: float | None = Field(None, ge=0, le=MAX_TEMPERATURE, allow_inf_nan=False, description="0 is "
                                      "greedy; below 1e-4 in effect greedy")
    top_k: int | None = Field(None, ge=0, le=MAX_TOP_K, description="0 or null: off")
    top_p: float | None = Field(None, gt=0, le=1, description="1.0 or null: off")
    do_sample: bool = Field(False, description="sample (temperature 1) when no temperature is given")
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    stop: list[str] = Field(default_factory=list, description="stop strings, excluded from the output")
    return_full_text: bool | None = Field(False, description="prepend the prompt to generated_text")
    details: bool = Field(False, description="include finish reason, seed and per-character logprobs")
    top_n_tokens: int | None = Field(None, ge=0, le=MAX_TOP_N)
    truncate: int | None = Field(None, ge=1, description="keep only the last N characters of the prompt (N at "
                                 "most the server's prompt limit, max_prompt_chars in /info)")
    best_of: int | None = Field(None, ge=1, description="generate this many (sampling) and answer the one "
                                "with the highest mean log-probability; not for streams; prompts x best_of at "
                                "most the server's max_n")
    repetition_penalty: float | None = Field(None, ge=MIN_REPETITION_PENALTY, le=MAX_REPETITION_PENALTY,
                                             allow_inf_nan=False, description="1 or null: off; "
                                             "divides positive logits (multiplies negative ones) of characters in "
                                             "the prompt or the output")
    frequency_penalty: float | None = Field(None, ge=-2, le=2, allow_inf_nan=False, description="0 or null: off; "
                                            "subtracts penalty x a character's share of the prompt and output")
    typical_p: float | None = Field(None, gt=0, le=1, allow_inf_nan=False, description="1.0 or null: off")
    min_p: float | None = Field(None, ge=0, le=1, allow_inf_nan=False, description="charlm extension: keep "
                                "characters at least min_p times as likely as the most likely; 0 or null: off")
    watermark: bool = False
    decoder_input_details: bool = Field(False, description="with details: each prompt character's id, text and "
                                        "log-probability in details.prefill (the first one null); not for streams")
    grammar: TGIGrammar | None = Field(None, description="generate only text that matches a regular expression "
                                       "(regex) or satisfies a JSON schema (json, json_object, json_schema)")
    adapter_id: str | None = None

    _check_stop = field_validator("stop")(check_stop)

    @model_validator(mode="after")
    def _refuse_unsupported(self) -> Parameters:
        require_neutral(self.model_dump(), NEUTRAL)
        if (self.best_of or 1) > 1 and self.sampling().temperature == 0:
            raise ValueError("best_of > 1 needs sampling: set do_sample, a temperature, top_k, top_p, typical_p "
                             "or min_p")
        return self

    def grammar_form(self) -> GrammarForm | None:
        param = "parameters.grammar"
        if self.grammar is None:
            return None
        if isinstance(self.grammar, RegexGrammar):
            return GrammarForm("regex", self.grammar.value, f"{param}.value")
        if isinstance(self.grammar, JsonSchemaGrammar):
            return GrammarForm("json", self.grammar.value.schema_, f"{param}.value.schema")
        return GrammarForm("json", self.grammar.value, f"{param}.value")

    def sampling(self) -> SamplingParams:
        """Greedy unless asked to sample: by do_sample, a temperature or a sampling filter (as TGI does)."""
        filters = (self.top_k is not None, self.top_p is not None, self.typical_p not in (None, 1.0),
                   self.min_p not in (None, 0.0))
        samples = self.do_sample or any(filters)
        temperature = self.temperature if self.temperature is not None else (1.0 if samples else 0.0)
        return SamplingParams(
            temperature, self.top_k or 0, self.top_p or 1.0, self.seed, min_p=self.min_p or 0.0,
            typical_p=self.typical_p or 1.0, repetition_penalty=self.repetition_penalty or 1.0,
            relative_frequency_penalty=self.frequency_penalty or 0.0,
        )


class GenerateRequest(StrictModel):
    inputs: str | list[str] = Field(description="a prompt, or a list of prompts generated as one batch")
    parameters: Parameters = Parameters()
    model: str | None = Field(None, description="model name (default: the server's default model)")


class CompatGenerateRequest(GenerateRequest):
    """TGI's `POST /`: the same request, streamed when `stream` is true."""

    stream: bool = False


class Token(BaseModel):
    id: int
    text: str
    logprob: float
    special: bool = False


class PrefillToken(BaseModel):
    id: int
    text: str
    logprob: float | None = Field(description="null for the first character, which has no context")


class SequenceDetails(BaseModel):
    """What TGI reports of one generated sequence: the chosen one's details, and each other
    best_of candidate's."""

    finish_reason: str
    generated_tokens: int
    seed: int | None
    prefill: list[PrefillToken] = Field(default_factory=list, description="the prompt's characters, with "
                                        "decoder_input_details")
    tokens: list[Token]
    top_tokens: list[list[Token]] | None = None


class BestOfSequence(SequenceDetails):
    generated_text: str


class Details(SequenceDetails):
    best_of_sequences: list[BestOfSequence] | None = None


class GenerateResponse(BaseModel):
    generated_text: str
    details: Details | None = None


class StreamDetails(BaseModel):
    finish_reason: str
    generated_tokens: int
    seed: int | None
    input_length: int


class StreamResponse(BaseModel):
    index: int
    token: Token
    top_tokens: list[Token] | None = None
    generated_text: str | None = None
    details: StreamDetails | None = None
