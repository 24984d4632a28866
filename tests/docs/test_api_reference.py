"""The API reference (docs/api-*.md and the pages of the routes beside them) checked against the
pydantic schemas the routes validate with, so the reference cannot drift from the code.

Where a page has a table of a request's fields, its first column must name exactly the schema's
fields: a field added to the code and not to the table fails, and so does a row for a field the
code does not have (`stream_options.include_usage` names a field of the nested model). Every field
of every response schema, and of the requests documented in prose, must be named in code on its
page. And the routes: every method and path the app serves is named (`POST /v1/completions`) on
a page, and every one a page names is served."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel

from service.frontend.app import create_app
from service.frontend.schemas import chat, errors, fine_tuning, openai, system, tgi, tokenizer

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)

# (page, the first header cell of its table, the schema the table documents)
TABLES = [
    ("api-tgi.md", "body field", tgi.CompatGenerateRequest),
    ("api-tgi.md", "parameter", tgi.Parameters),
    ("api-openai.md", "field", openai.CompletionRequest),
    ("api-chat.md", "field", chat.ChatCompletionRequest),
]

# page -> the schemas whose every field it names
NAMED = {
    "api-tgi.md": [tgi.GenerateResponse, tgi.Details, tgi.BestOfSequence, tgi.StreamResponse, tgi.StreamDetails,
                   tgi.Token, tgi.PrefillToken],
    "api-openai.md": [openai.Completion, openai.Choice, openai.Logprobs, openai.PromptLogprob, openai.Usage,
                      openai.ModelList, openai.ModelCard, openai.ModelDetail],
    "api-chat.md": [chat.ChatCompletion, chat.ChatChoice, chat.ChatReply, chat.ChoiceLogprobs, chat.TokenLogprob,
                    chat.TopLogprob],
    "api-scoring.md": [tokenizer.TokenizeRequest, tokenizer.TokenizeResponse, tokenizer.DetokenizeRequest,
                       tokenizer.DetokenizeResponse, tokenizer.TokenizerInfo],
    "api-errors.md": [errors.TGIError, errors.OpenAIError, errors.OpenAIErrorDetail],
    "operations.md": [system.Health, system.Liveness, system.Readiness, system.Info, system.ModelInfo,
                      system.FrontEnd],
    "train-while-serving.md": [system.AdminModels, system.AdminModel, system.ReloadResult],
    "training-service.md": [fine_tuning.JobRequest, fine_tuning.Hyperparameters, fine_tuning.Method,
                            fine_tuning.Supervised],
}


def table_rows(page: str, header: str) -> list[str]:
    """The first cells of the one table on `page` whose header row starts with `header`."""
    tables = re.findall(r"^\| *" + re.escape(header) + r" *\|.*\n\|[-| :]+\|\n((?:\|.*\n?)+)",
                        (DOCS / page).read_text(), flags=re.MULTILINE)
    assert len(tables) == 1, f"{page}: {len(tables)} tables headed {header!r}"
    return [row.split(" | ", 1)[0] for row in tables[0].splitlines()]


def documented_fields(cell: str) -> list[str]:
    """The field names a first cell documents: each `name` (or `parent.child`) in code."""
    return [name for span in CODE_SPAN.findall(cell) if re.fullmatch(r"[a-z_]+(\.[a-z_]+)?", name := span[1])]


def nested_model(schema: type[BaseModel], field: str) -> type[BaseModel]:
    """The model a field holds (through Optional, lists and unions)."""
    pending: list[object] = [schema.model_fields[field].annotation]
    while pending:
        kind = pending.pop()
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            return kind
        pending.extend(typing.get_args(kind))
    raise AssertionError(f"{schema.__name__}.{field} holds no model")


@pytest.mark.parametrize(("page", "header", "schema"), TABLES, ids=lambda value: getattr(value, "__name__", value))
def test_a_request_table_names_exactly_the_schemas_fields(page: str, header: str, schema: type[BaseModel]):
    names = [name for cell in table_rows(page, header) for name in documented_fields(cell)]
    assert len(names) == len(set(names)), f"{page}: a field documented twice"
    for name in (name for name in names if "." in name):
        parent, child = name.split(".")
        assert child in nested_model(schema, parent).model_fields, f"{page}: {name} is no field"
    documented = {name.split(".")[0] for name in names}
    assert sorted(documented - set(schema.model_fields)) == [], f"{page}: rows for fields {schema.__name__} lacks"
    assert sorted(set(schema.model_fields) - documented) == [], f"{page}: {schema.__name__} fields not in the table"


def test_every_chat_message_field_is_in_the_messages_row():
    row = next(row for row in table_rows("api-chat.md", "field") if row.startswith("| `messages`"))
    cell = (DOCS / "api-chat.md").read_text().split(row, 1)[1].split("\n", 1)[0]
    named = {word for span in CODE_SPAN.findall(cell) for word in re.findall(r"\w+", span[1])}
    assert sorted(set(chat.ChatMessage.model_fields) - named) == []


@pytest.mark.parametrize("page", sorted(NAMED))
def test_every_response_field_is_named_on_its_page(page: str):
    named = {word for span in CODE_SPAN.findall((DOCS / page).read_text()) for word in re.findall(r"\w+", span[1])}
    missing = {schema.__name__: sorted(set(schema.model_fields) - named) for schema in NAMED[page]}
    assert {name: fields for name, fields in missing.items() if fields} == {}


def route(method: str, path: str) -> tuple[str, str]:
    """A route as the docs and OpenAPI both write it: path parameters unnamed, no query or option."""
    return method.upper(), re.sub(r"\{[^}]*\}", "{}", re.split(r"[?\[]", path)[0])


def test_every_route_is_documented_and_every_documented_route_is_served():
    served = {route(method, path) for path, methods in create_app().openapi()["paths"].items() for method in methods}
    documented = {route(*match) for page in [REPO / "README.md", *DOCS.glob("*.md")]
                  for match in re.findall(r"\b(GET|POST|PUT|PATCH|DELETE) (/[^\s`|,;)]*)", page.read_text())}
    assert sorted(served - documented) == [], "routes no page names"
    assert sorted(documented - served) == [], "routes the pages name that the app does not serve"
