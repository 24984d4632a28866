"""Properties of request validation: any JSON value in any field is either refused with a
ValidationError or yields sampling parameters the engine accepts. Nothing else escapes."""

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

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


@given(st.dictionaries(st.text(max_size=12), json_values, max_size=6))
def test_any_json_object_is_refused_or_a_request(body):
    for model in (GenerateRequest, CompletionRequest):
        validate(model, body, set(body) | {"inputs", "prompt"})  # the required fields
