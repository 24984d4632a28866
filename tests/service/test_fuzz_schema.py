"""Schema-driven fuzzing of every route, from the service's own OpenAPI document.

Schemathesis generates requests from the schema (valid ones, and invalid ones that break it on
purpose) and checks each response: never a 5xx, every status code and content type documented,
every JSON body matching its documented schema, schema-breaking requests refused. `bench/fuzz.py`
runs the same checks with a much larger budget.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    negative_data_rejection,
    not_a_server_error,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from charlm.chat_template import template_path
from service.frontend.app import create_app
from service.settings import Settings
from tests.service.helpers import live_server

EXAMPLES = int(os.environ.get("CHARLM_FUZZ_EXAMPLES", "25"))  # per route and mode; bench/fuzz.py runs more
# Valid requests may still be refused (an unknown model name, characters outside the vocabulary),
# so "valid data is accepted" is not among the checks; every refusal must still be documented.
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance, negative_data_rejection, unsupported_method]
# A body limit above what the fuzzer sends: a request breaking a list's maxItems (1,025 chat messages)
# may pass the default megabyte, and must meet the schema's refusal, not the size limit's 413.
FUZZ_LIMITS = {"max_new_tokens": 24, "max_n": 3, "max_prompt_chars": 256, "request_timeout_s": 20.0,
               "max_body_bytes": 16 * 1024 * 1024}


# The document depends only on the settings, so it is built here, without loading any model.
schema = schemathesis.openapi.from_dict(create_app(Settings(**FUZZ_LIMITS)).openapi())


@pytest.fixture(scope="module")
def fuzzed_server(tiny_models: Path) -> Iterator[str]:
    """Chats reach generation (a template for every model) and templates sent with requests are
    rendered (trusted), so the fuzzer's templates meet the sandbox and its limits."""
    chat = {"chat_template": template_path("verse"), "trust_request_chat_template": True,
            "chat_template_timeout_s": 0.5}
    with live_server(tiny_models, **chat, **FUZZ_LIMITS) as (base_url, _):
        yield base_url


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_every_route_answers_within_its_documented_schema(case: schemathesis.Case, fuzzed_server: str) -> None:
    case.call_and_validate(base_url=fuzzed_server, checks=CHECKS, timeout=30)
