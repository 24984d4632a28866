"""Constrained generation over both protocols: every output matches its grammar, ends as the grammar
says, and every way a grammar can be wrong is a clear error."""

import json
import re

import jsonschema
import pytest

from charlm.checkpoint import load_model
from service.engine.grammars import compile_regex
from tests.service.helpers import running_app, settings_for
from tests.service.test_errors import assert_openai_error, assert_tgi_error

pytestmark = pytest.mark.anyio

WORDS = r"(king|queen|lord|love|war|night)"
TITLE = r"[A-Z][a-z]+ (of|the) [A-Z][a-z]+\n"  # the issue's example, over the tiny models' letters
PERSON = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20}, "age": {"type": "integer"},
                                           "alive": {"type": "boolean"}}, "required": ["name", "age", "alive"]}


def tgi_regex(regex: str, seed: int, prompt: str = "the ", **parameters) -> dict:
    return {"inputs": prompt, "parameters": {"max_new_tokens": 60, "do_sample": True, "seed": seed, "details": True,
                                             "grammar": {"type": "regex", "value": regex}, **parameters}}


@pytest.fixture()
async def json_client(json_models):
    async with running_app(settings_for(json_models, default_model="tiny-json")) as (client, _):
        yield client


def assert_follows(regex: str, body: dict, vocab) -> str:
    """A complete text matches and ends with eos_token; one cut by the budget is the start of a match."""
    text, reason = body["generated_text"], body["details"]["finish_reason"]
    if reason == "eos_token":
        assert re.fullmatch(regex, text), text
    else:
        assert reason == "length" and compile_regex(regex, vocab).walk(vocab.encode(text).tolist()) is not None, text
    return reason


async def test_every_tgi_output_matches_its_regex(client, tiny_models):
    vocab = load_model(tiny_models / "tiny-gpt").vocab
    reasons = [assert_follows(TITLE, (await client.post("/generate", json=tgi_regex(TITLE, seed))).json(), vocab)
               for seed in range(12)]
    assert reasons.count("eos_token") >= 6  # complete: after the newline, nothing more


async def test_an_open_ended_regex_ends_where_the_model_would_rather_write_something_else(client):
    """`(word )*word` may stop after any word: it stops when the model gives the characters that
    cannot follow more probability than those that can, else at the budget."""
    regex = rf"({WORDS} )*{WORDS}"
    ends = set()
    for seed in range(8):
        body = (await client.post("/generate", json=tgi_regex(regex, seed, max_new_tokens=40))).json()
        assert re.fullmatch(regex, body["generated_text"]) or body["details"]["finish_reason"] == "length"
        ends.add(body["details"]["finish_reason"])
    assert "eos_token" in ends


async def test_a_stream_ends_as_the_same_request_without_a_stream(client):
    async with client.stream("POST", "/generate_stream", json=tgi_regex(TITLE, 3)) as response:
        events = [json.loads(line[5:]) async for line in response.aiter_lines() if line.startswith("data:")]
    text = "".join(e["token"]["text"] for e in events if not e["token"]["special"])
    whole = (await client.post("/generate", json=tgi_regex(TITLE, 3))).json()
    assert events[-1]["generated_text"] == text == whole["generated_text"]
    assert events[-1]["details"]["finish_reason"] == whole["details"]["finish_reason"]


async def test_a_budget_reached_mid_grammar_ends_with_length(client, tiny_models):
    vocab = load_model(tiny_models / "tiny-gpt").vocab
    regex = r"[a-z ]+\."  # ends only with a full stop
    bodies = [(await client.post("/generate", json=tgi_regex(regex, seed, max_new_tokens=6))).json()
              for seed in range(8)]
    assert "length" in [assert_follows(regex, body, vocab) for body in bodies]
    assert all(len(b["generated_text"]) == 6 for b in bodies if b["details"]["finish_reason"] == "length")


async def test_openai_choices_come_from_the_list_and_end_with_stop(client):
    choices = ["the king", "my lord", "love and war"]
    for form in ({"structured_outputs": {"choice": choices}}, {"guided_choice": choices}):
        body = {"prompt": "the ", "max_tokens": 20, "n": 4, "seed": 2, **form}
        response = (await client.post("/v1/completions", json=body)).json()
        assert all(c["text"] in choices and c["finish_reason"] == "stop" for c in response["choices"]), response


async def test_openai_regex_forms(client):
    for form in ({"structured_outputs": {"regex": TITLE}}, {"guided_regex": TITLE}):
        response = (await client.post("/v1/completions", json={"prompt": "the ", "max_tokens": 60, "seed": 4,
                                                               **form})).json()
        (choice,) = response["choices"]
        assert choice["finish_reason"] == "length" or re.fullmatch(TITLE, choice["text"]), response


async def test_json_schema_outputs_parse_and_validate(json_client):
    forms = [
        ("/generate", lambda s: {"inputs": "", "parameters": {"max_new_tokens": 200, "do_sample": True, "seed": s,
                                                              "grammar": {"type": "json", "value": PERSON}}}),
        ("/generate", lambda s: {"inputs": "", "parameters": {"max_new_tokens": 200, "do_sample": True, "seed": s,
                                                              "grammar": {"type": "json_schema", "value": {
                                                                  "name": "person", "schema": PERSON}}}}),
        ("/v1/completions", lambda s: {"prompt": "", "max_tokens": 200, "seed": s, "response_format": {
            "type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}}}),
        ("/v1/completions", lambda s: {"prompt": "", "max_tokens": 200, "seed": s,
                                       "structured_outputs": {"json": json.dumps(PERSON)}}),
    ]
    for path, body in forms:
        for seed in range(5):
            answer = (await json_client.post(path, json=body(seed))).json()
            text = answer["generated_text"] if path == "/generate" else answer["choices"][0]["text"]
            jsonschema.validate(json.loads(text), PERSON)


async def test_json_object_is_any_flat_or_shallow_object(json_client):
    for form in ({"response_format": {"type": "json_object"}}, {"structured_outputs": {"json_object": True}}):
        answer = (await json_client.post("/v1/completions", json={"prompt": "", "max_tokens": 200, "seed": 1,
                                                                  **form})).json()
        assert "choices" in answer, answer
        assert isinstance(json.loads(answer["choices"][0]["text"]), dict), answer


@pytest.mark.parametrize("grammar, needles", [
    ({"type": "regex", "value": "(king"}, ["parameters.grammar.value", "does not compile", "missing )"]),
    ({"type": "regex", "value": "king €"}, ["needs characters the model does not have", "'€' (U+20AC)"]),
    ({"type": "regex", "value": "[^\\s\\S]"}, ["no text the model can write satisfies the grammar"]),
    ({"type": "regex", "value": "(king)?"}, []),  # accepts the empty text and more: fine
    ({"type": "regex", "value": ""}, ["accepts only the empty text"]),
    ({"type": "json", "value": "{not json"}, ["parameters.grammar.value", "not valid JSON"]),
    ({"type": "json", "value": {"type": "fish"}}, ["invalid or unsupported JSON schema", "fish"]),
    ({"type": "json", "value": [1, 2]}, ["parameters.grammar.json.value", "valid dictionary"]),
    ({"type": "json", "value": "[1, 2]"}, ["a JSON schema is an object, not list"]),
    ({"type": "json", "value": {"type": "object", "description": "x" * 20000}}, ["the schema is too large"]),
    ({"type": "json", "value": PERSON}, ["needs characters the model does not have", "'{' (U+007B)"]),
    ({"type": "json_schema", "value": {"schema": PERSON, "strict": True}}, ["unknown field", "strict"]),
    ({"type": "cfg", "value": "S -> a"}, ["parameters.grammar"]),
])
async def test_tgi_grammar_errors(client, grammar, needles):
    response = await client.post("/generate", json=tgi_regex("x", 1) | {"parameters": {"grammar": grammar}})
    if not needles:
        assert response.status_code == 200, response.text
        return
    assert_tgi_error(response, 422, *needles)


async def test_a_budget_shorter_than_the_shortest_text_is_refused(client):
    response = await client.post("/generate", json=tgi_regex("king and queen", 1, max_new_tokens=5))
    assert_tgi_error(response, 422, "parameters.max_new_tokens 5 is shorter than the shortest text the grammar "
                                    "accepts (14 characters)")
    response = await client.post("/v1/completions", json={"prompt": "a", "max_tokens": 3, "guided_choice": ["king"]})
    assert_openai_error(response, 400, "max_tokens 3 is shorter than")


@pytest.mark.parametrize("body, status, needles", [
    ({"guided_regex": "(a"}, 400, ["guided_regex", "does not compile"]),
    ({"guided_regex": "€"}, 422, ["guided_regex", "'€' (U+20AC)"]),  # missing characters: 422, as a prompt's
    ({"response_format": {"type": "json_object"}, "guided_regex": "a"}, 400,
     ["response_format and guided_regex", "one grammar"]),
    ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, 400, ["exactly one of", "regex, choice"]),
    ({"structured_outputs": {}}, 400, ["exactly one of", "none"]),
    ({"structured_outputs": {"grammar": "S -> a"}}, 400, ["unknown field", "structured_outputs.grammar"]),
    ({"structured_outputs": {"choice": ["king", ""]}}, 400, ["a choice must not be empty"]),
    ({"guided_choice": []}, 400, ["guided_choice"]),
    ({"guided_decoding_backend": "outlines"}, 400, ["unknown field", "guided_decoding_backend"]),
    ({"response_format": {"type": "json_schema"}}, 400, ["response_format.json_schema.json_schema"]),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": {"type": "nope"}}}}, 400,
     ["response_format.json_schema.schema", "unsupported JSON schema"]),
    ({"response_format": {"type": "yaml"}}, 400, ["response_format"]),
])
async def test_openai_grammar_errors(client, body, status, needles):
    response = await client.post("/v1/completions", json={"prompt": "the ", "max_tokens": 10, **body})
    assert_openai_error(response, status, *needles)


async def test_a_plain_text_response_format_changes_nothing(client):
    body = {"prompt": "the king", "max_tokens": 10, "seed": 5}
    plain = (await client.post("/v1/completions", json=body)).json()["choices"][0]["text"]
    text = (await client.post("/v1/completions", json=body | {"response_format": {"type": "text"}})).json()
    assert text["choices"][0]["text"] == plain


async def test_grammars_cross_to_an_engine_in_its_own_process(tiny_models):
    async with running_app(settings_for(tiny_models, engine_process=True, max_batch_size=4)) as (client, _):
        vocab = load_model(tiny_models / "tiny-gpt").vocab
        for seed in range(3):
            assert_follows(TITLE, (await client.post("/generate", json=tgi_regex(TITLE, seed))).json(), vocab)
        body = {"inputs": "the king", "parameters": {"max_new_tokens": 1, "details": True,
                                                     "decoder_input_details": True}}
        prefill = (await client.post("/generate", json=body)).json()["details"]["prefill"]
        assert [t["text"] for t in prefill] == list("the king") and prefill[0]["logprob"] is None


async def test_characters_biased_away_never_make_garbage(client, tiny_models):
    """With every allowed character banned by logit_bias, a row that must go on still draws what the
    grammar allows, and one that may stop ends there."""
    chars = load_model(tiny_models / "tiny-gpt").vocab.chars
    banned = {str(chars.index(c)): -100 for c in "kq "}
    body = {"prompt": "the ", "max_tokens": 40, "seed": 3, "logit_bias": banned,
            "guided_regex": "(king|queen)( (king|queen))*"}
    (choice,) = (await client.post("/v1/completions", json=body)).json()["choices"]
    assert choice["text"] in ("king", "queen") and choice["finish_reason"] == "stop"
