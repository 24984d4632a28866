"""How each protocol asks for constrained generation: TGI's `parameters.grammar`, OpenAI's
`response_format`, and vLLM's `structured_outputs` (and its older `guided_*` fields)."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any, Literal

from pydantic import Field, model_validator

from service.frontend.schemas.common import StrictModel

MAX_CHOICES = 256
MAX_CHOICE_CHARS = 1024
Schema = dict[str, Any] | str  # a JSON schema, or its JSON text


@dataclasses.dataclass(frozen=True)
class GrammarForm:
    """What a request asked for, whatever the protocol: kind "regex" (value a str), "json" (a schema,
    its JSON text, or None for any object) or "choice" (a list of texts); `param` names the field."""

    kind: str
    value: Any
    param: str


class RegexGrammar(StrictModel):
    type: Literal["regex"]
    value: str = Field(description="a regular expression (Rust regex syntax) the whole output must match")


class JsonGrammar(StrictModel):
    type: Literal["json", "json_object"]
    value: Schema = Field(description="a JSON schema (object or JSON text) the output must satisfy")


class JsonSchemaConfig(StrictModel):
    name: str | None = None
    schema_: dict[str, Any] = Field(alias="schema", description="the JSON schema")


class JsonSchemaGrammar(StrictModel):
    type: Literal["json_schema"]
    value: JsonSchemaConfig


TGIGrammar = Annotated[RegexGrammar | JsonGrammar | JsonSchemaGrammar, Field(discriminator="type")]


class TextFormat(StrictModel):
    type: Literal["text"]


class JsonObjectFormat(StrictModel):
    type: Literal["json_object"]


class JsonSchemaSpec(StrictModel):
    name: str = Field(max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema", description="the JSON schema; absent: any object")
    strict: bool | None = None


class JsonSchemaFormat(StrictModel):
    type: Literal["json_schema"]
    json_schema: JsonSchemaSpec


ResponseFormat = Annotated[TextFormat | JsonObjectFormat | JsonSchemaFormat, Field(discriminator="type")]


class StructuredOutputs(StrictModel):
    """vLLM's `structured_outputs`: exactly one of its forms."""

    regex: str | None = None
    json_: Schema | None = Field(None, alias="json")
    choice: list[str] | None = Field(None, min_length=1, max_length=MAX_CHOICES)
    json_object: bool | None = None

    @model_validator(mode="after")
    def _one_form(self) -> StructuredOutputs:
        given = [name for name, value in (("regex", self.regex), ("json", self.json_), ("choice", self.choice),
                                          ("json_object", self.json_object or None)) if value is not None]
        if len(given) != 1:
            raise ValueError(f"structured_outputs takes exactly one of regex, json, choice, json_object "
                             f"(this request gives {', '.join(given) or 'none'})")
        if self.choice is not None:
            check_choices(self.choice)
        return self


def check_choices(choices: list[str]) -> list[str]:
    if any(not c for c in choices):
        raise ValueError("a choice must not be empty")
    if any(len(c) > MAX_CHOICE_CHARS for c in choices):
        raise ValueError(f"choices are at most {MAX_CHOICE_CHARS} characters")
    return choices
