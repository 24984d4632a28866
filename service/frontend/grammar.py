"""From a protocol's grammar request to an automaton the engine applies (`charlm.grammar`).

Each protocol's form (a regular expression, a JSON schema, a list of choices) becomes one regular
expression: JSON schemas through outlines-core, as TGI does. It is compiled over the model's
characters (`service.engine.grammars`, cached) in a worker thread, so the event loop never waits on
it, within a time limit. Everything that can be wrong is a 422 (400 on /v1) naming the field:
a regex that does not compile, a schema that is invalid or too large, characters the model lacks,
a grammar nothing satisfies, a budget shorter than its shortest text.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
from typing import Any

from outlines_core.json_schema import build_regex_from_schema

from charlm.grammar import Automaton
from charlm.vocab import Vocab
from service.engine.grammars import GrammarError, compile_regex, grammar_key, library_failure
from service.frontend.errors import ServiceError
from service.frontend.schemas.grammar import GrammarForm

COMPILE_S = 5.0  # a grammar not compiled by then is refused (its compilation finishes and is cached)
COMPILERS = 2  # grammars compiled at once; one asked for again while it compiles waits for that compilation
MAX_REGEX_CHARS = 65536
MAX_SCHEMA_CHARS = 16384
RUST_REGEX_META = set("\\.+*?()|[]{}^$#&-~")
_PRIMITIVE = {"type": ["string", "number", "boolean", "null"]}
# What "any JSON object" means here: values that are primitives, or arrays or objects of them. A fully
# recursive JSON grammar is not regular; two levels compile in a fraction of a second.
JSON_OBJECT_SCHEMA = {"type": "object", "additionalProperties": {"anyOf": [
    _PRIMITIVE, {"type": "array", "items": _PRIMITIVE}, {"type": "object", "additionalProperties": _PRIMITIVE}]}}
_compilers = concurrent.futures.ThreadPoolExecutor(max_workers=COMPILERS, thread_name_prefix="grammar-compiler")
_compiling: dict[str, concurrent.futures.Future[Automaton]] = {}  # by grammar key; touched on the event loop


def rust_escape(text: str) -> str:
    """`text` as a regular expression that matches it literally (Rust's meta characters escaped)."""
    return "".join("\\" + c if c in RUST_REGEX_META else c for c in text)


def schema_regex(schema: Any, param: str) -> str:
    """The regular expression of a JSON schema (an object or its JSON text; None: any object)."""
    if schema is None:
        schema = JSON_OBJECT_SCHEMA
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except json.JSONDecodeError as exc:
            raise ServiceError(422, f"{param}: the schema is not valid JSON: {exc}", param=param) from None
    if not isinstance(schema, dict):
        raise ServiceError(422, f"{param}: a JSON schema is an object, not {type(schema).__name__}", param=param)
    text = json.dumps(schema)
    if len(text) > MAX_SCHEMA_CHARS:
        raise ServiceError(422, f"{param}: the schema is too large: {len(text)} characters of JSON; the limit is "
                           f"{MAX_SCHEMA_CHARS}", param=param)
    try:
        return build_regex_from_schema(text)
    except BaseException as exc:
        if not library_failure(exc):
            raise
        raise ServiceError(422, f"{param}: invalid or unsupported JSON schema: {exc}", param=param) from None


def regex_of(form: GrammarForm) -> str:
    if form.kind == "regex":
        regex = str(form.value)
    elif form.kind == "choice":
        regex = "(" + "|".join(rust_escape(choice) for choice in form.value) + ")"
    else:
        regex = schema_regex(form.value, form.param)
    if len(regex) > MAX_REGEX_CHARS:
        raise ServiceError(422, f"{form.param}: the grammar is too large: its regular expression has {len(regex)} "
                           f"characters; the limit is {MAX_REGEX_CHARS}", param=form.param)
    return regex


async def compile_grammar(form: GrammarForm, vocab: Vocab, max_new_tokens: int, tokens_param: str) -> Automaton:
    """The automaton of `form` over `vocab`, or a ServiceError that says what is wrong."""
    regex = regex_of(form)
    key = grammar_key(regex, vocab)
    future = _compiling.get(key)
    if future is None:
        future = _compiling[key] = _compilers.submit(compile_regex, regex, vocab)
        future.add_done_callback(lambda _: _compiling.pop(key, None))  # dict.pop is atomic: any thread may
    try:
        automaton = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(future)), COMPILE_S)
    except GrammarError as exc:
        kind = "unknown_characters" if "does not have" in str(exc) else None  # 422 in both protocols, as a prompt's
        raise ServiceError(422, f"{form.param}: {exc}", param=form.param, kind=kind) from None
    except TimeoutError:
        raise ServiceError(422, f"{form.param}: the grammar takes more than {COMPILE_S:g} s to compile: simplify it",
                           param=form.param) from None
    assert automaton.shortest is not None  # compile_regex refuses grammars that accept nothing
    if automaton.shortest > max_new_tokens:
        raise ServiceError(422, f"{tokens_param} {max_new_tokens} is shorter than the shortest text the grammar "
                           f"accepts ({automaton.shortest} characters)", param=tokens_param)
    return automaton
