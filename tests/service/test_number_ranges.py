"""Every number a client can send, at the extremes JSON carries, on every route that takes numbers:
the answer is a normal one or a 4xx naming the field, never a 500 and never an error in a stream.
No value may reach the engine out of the range its float32 and int64 rows hold (issue 31).

The fields are read from the schemas, so a numeric field added later is checked too; the requests
go through the real app (uvicorn, an engine thread) and a tiny trained model.
"""

from __future__ import annotations

import json
import math
import types
import typing
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from charlm.chat_template import template_path
from service.frontend.schemas.chat import ChatCompletionRequest
from service.frontend.schemas.openai import CompletionRequest
from service.frontend.schemas.tgi import Parameters
from tests.service.helpers import live_server

# What JSON can carry at the edges: doubles near their limits, past float32's (3.4e38), the smallest
# subnormal, both zeros, integers past int64 and uint64, and the non-standard tokens Python's json writes.
EXTREMES: list[Any] = [
    1e308, -1e308, 3.5e38, -3.5e38, 1e39, 1e300, 9.38e306, 5e-324, -5e-324, 1e-45, -0.0, 0.0, 0, 1, -1,
    2**31, 2**63, 2**64, -(2**64), 10**30, math.inf, -math.inf, math.nan,
]
LIMITS = {"max_new_tokens": 24, "max_n": 3, "max_prompt_chars": 256}
Body = Callable[[Any], dict[str, Any]]


def numeric_fields(model: type[BaseModel]) -> list[str]:
    """The fields of `model` that take an int or a float (booleans are not numbers here)."""
    def numeric(annotation: Any) -> bool:
        if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
            return any(numeric(arm) for arm in typing.get_args(annotation))
        return annotation in (int, float)
    return sorted(name for name, info in model.model_fields.items() if numeric(info.annotation))


def tgi(field: str) -> Body:
    # do_sample: best_of > 1 needs sampling; details: the finish reason shows.
    return lambda value: {"inputs": "the", "parameters": {"max_new_tokens": 4, "do_sample": True, "details": True,
                                                          field: value}}


def openai(base: dict[str, Any], field: str) -> Body:
    return lambda value: {**base, "max_tokens": 4, field: value}


COMPLETION = {"prompt": "the"}
CHAT = {"messages": [{"role": "user", "content": "the"}], "logprobs": True}  # top_logprobs needs logprobs

# (route, what the error must name, the body carrying the value, streamed)
CASES: list[tuple[str, str, Body, bool]] = [
    *((route, f"parameters.{field}", tgi(field), route == "/generate_stream")
      for route in ("/generate", "/generate_stream", "/") for field in numeric_fields(Parameters)),
    *(("/v1/completions", field, openai({**COMPLETION, "stream": stream}, field), stream)
      for field in numeric_fields(CompletionRequest) for stream in (False, True)),
    *(("/v1/chat/completions", field, openai({**CHAT, "stream": stream}, field), stream)
      for field in numeric_fields(ChatCompletionRequest) for stream in (False, True)),
    ("/v1/completions", "logit_bias", lambda value: {**COMPLETION, "max_tokens": 4, "logit_bias": {"1": value}},
     False),
    ("/v1/completions", "logit_bias", lambda value: {**COMPLETION, "max_tokens": 4, "logit_bias": {str(value): 1}},
     False),
    ("/v1/chat/completions", "logit_bias", lambda value: {**CHAT, "max_tokens": 4, "logit_bias": {"1": value}},
     False),
    ("/v1/completions", "prompt", lambda value: {"prompt": [1, value], "max_tokens": 4}, False),
    ("/v1/completions", "prompt", lambda value: {"prompt": [[value]], "max_tokens": 4}, False),
    ("/detokenize", "tokens", lambda value: {"tokens": [value]}, False),
]


@pytest.fixture(scope="module")
def base_url(tiny_models: Path) -> Iterator[str]:
    with live_server(tiny_models, chat_template=template_path("verse"), **LIMITS) as (url, _):
        yield url


def events(text: str) -> list[dict[str, Any]]:
    """The JSON events of a Server-Sent Events body ([DONE] and comments left out)."""
    data = [line.removeprefix("data:").strip() for line in text.splitlines() if line.startswith("data:")]
    return [json.loads(d) for d in data if d and d != "[DONE]"]


def finish_reasons(answer: dict[str, Any]) -> list[str | None]:
    details = answer.get("details") or {}
    return [details.get("finish_reason"), *(c.get("finish_reason") for c in answer.get("choices", []))]


def check(url: str, route: str, field: str, body: Body, stream: bool, value: Any) -> None:
    """A 200 without an error anywhere in it, or a 400/422 whose error names `field`."""
    content = json.dumps(body(value))  # allow_nan: NaN and Infinity go out as Python writes them
    response = httpx.post(f"{url}{route}", content=content, headers={"Content-Type": "application/json"},
                          timeout=60)
    said = f"{route} {field}={value!r}: {response.status_code} {response.text[:300]}"
    if response.status_code == 200:
        answers = events(response.text) if stream else [response.json()]
        if isinstance(answers[0], list):  # /generate with a list of prompts answers a list
            answers = answers[0]
        assert all("error" not in a for a in answers), said
        assert all("error" not in finish_reasons(a) for a in answers), said
        return
    assert response.status_code in (400, 422), said
    error = response.json()["error"]
    if route.startswith("/v1/"):
        assert error["param"] == field or field in error["message"], said
    else:
        assert field in error, said


@pytest.mark.parametrize(("route", "field", "body", "stream"), CASES,
                         ids=[f"{c[0]}:{c[1]}{':stream' if c[3] else ''}" for c in CASES])
def test_every_extreme_of_every_numeric_field_is_answered_or_refused_by_name(base_url, route, field, body, stream):
    for value in EXTREMES:
        check(base_url, route, field, body, stream, value)


@given(case=st.sampled_from(CASES),
       value=st.floats() | st.integers(min_value=-(2**70), max_value=2**70) | st.sampled_from(EXTREMES))
@example(case=next(c for c in CASES if c[:2] == ("/v1/completions", "temperature")), value=9.38e306)
@settings(max_examples=150, deadline=None)
def test_any_number_in_any_numeric_field_is_answered_or_refused_by_name(base_url, case, value):
    route, field, body, stream = case
    check(base_url, route, field, body, stream, value)


def test_a_logit_bias_key_too_long_for_an_id_is_refused_by_name(base_url):
    """A key is a string, so JSON's limit on a number's digits does not stop it; int() of 5,000 digits
    raises (Python's limit), which must be a refusal, not a 500."""
    for body in ({**COMPLETION, "logit_bias": {"1" * 5000: 1}}, {**CHAT, "logit_bias": {"9" * 11: -1}}):
        route = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
        response = httpx.post(f"{base_url}{route}", json=body, timeout=60)
        assert response.status_code == 400 and response.json()["error"]["param"] == "logit_bias", response.text
