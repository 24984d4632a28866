"""Properties of request validation: any JSON value in any field is either refused with a
ValidationError or yields sampling parameters the engine accepts. Nothing else escapes."""

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from service.frontend.schemas.chat import ChatCompletionRequest
from service.frontend.schemas.openai import CompletionRequest
from service.frontend.schemas.tgi import GenerateRequest, Parameters

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


def fields_of(model: type[BaseModel]) -> list[str]:
    return sorted(model.model_fields)


def validate(model: type[BaseModel], body: dict[str, Any], culprits: set[str]) -> BaseModel | None:
    """The request, or None when refused; a refusal must blame one of `culprits` (the fields the
    body set, or a required one it left out) in each error, by its place or in its message, as the
    error answer shows them (service.frontend.errors.describe_validation)."""
    try:
        return model.model_validate(body)
    except ValidationError as error:
        for problem in error.errors():
            place = {str(part) for part in problem["loc"]}
            assert place & culprits or any(name in problem["msg"] for name in culprits), (body, problem)
        return None


@pytest.mark.parametrize("field", fields_of(Parameters))
@given(value=json_values)
@settings(max_examples=40)  # per field; many fields
def test_any_tgi_parameter_value_is_refused_or_usable(field, value):
    request = validate(GenerateRequest, {"inputs": "the", "parameters": {field: value}}, {field})
    if isinstance(request, GenerateRequest):
        request.parameters.sampling()  # raises if validation let through a value the sampler refuses
        request.parameters.grammar_form()
        assert request.parameters.max_new_tokens is None or request.parameters.max_new_tokens >= 0


@pytest.mark.parametrize("field", fields_of(CompletionRequest))
@given(value=json_values)
@settings(max_examples=40)  # per field; many fields
def test_any_completion_field_value_is_refused_or_usable(field, value):
    request = validate(CompletionRequest, {"prompt": "the", field: value}, {field})
    if isinstance(request, CompletionRequest):
        request.sampling()
        request.grammar_form()
        assert request.prompt_scores is None or request.prompt_scores >= 0
        texts_or_ids = [isinstance(p, str) or all(isinstance(i, int) for i in p) for p in request.prompts]
        assert all(texts_or_ids) and request.n >= 1


@pytest.mark.parametrize("field", fields_of(ChatCompletionRequest))
@given(value=json_values)
@settings(max_examples=40)  # per field; many fields
def test_any_chat_field_value_is_refused_or_usable(field, value):
    body = {"messages": [{"role": "user", "content": "the"}], field: value}
    request = validate(ChatCompletionRequest, body, {field})
    if isinstance(request, ChatCompletionRequest):
        request.sampling()
        request.grammar_form()
        assert request.top_n >= 0 and request.n >= 1 and isinstance(request.echoed, str)
        assert all(isinstance(m.for_template()["content"], str) for m in request.messages)


@given(message=st.dictionaries(st.sampled_from(["role", "content", "name", "tool_calls", "tool_call_id", "x"]),
                               json_values, max_size=4))
def test_any_message_is_refused_or_text_a_template_can_read(message):
    request = validate(ChatCompletionRequest, {"messages": [message]}, {"messages"})
    if isinstance(request, ChatCompletionRequest):
        (read,) = [m.for_template() for m in request.messages]
        assert isinstance(read["content"], str) and read["role"] in ("system", "developer", "user", "assistant",
                                                                       "tool")


@given(st.dictionaries(st.text(max_size=12), json_values, max_size=6))
def test_any_json_object_is_refused_or_a_request(body):
    for model in (GenerateRequest, CompletionRequest, ChatCompletionRequest):
        validate(model, body, set(body) | {"inputs", "prompt", "messages"})  # the required fields
