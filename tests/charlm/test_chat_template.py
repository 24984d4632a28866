"""Chat templates render as Hugging Face's do, and the limits stop a template that would take the
machine: time, the text it writes, the values it builds, and the sandbox's own refusals."""

from __future__ import annotations

import re
import time

import pytest

from charlm.chat_template import ChatTemplate, ChatTemplateError, read_template, template_path

PROMPT_LIMIT = 16_384


def render(source: str, messages: list[dict] | None = None, timeout_s: float = 1.0, **variables) -> str:
    template = ChatTemplate.compile(source, "T")
    return template.render(messages or [], True, variables, timeout_s, PROMPT_LIMIT)


def test_the_variables_hugging_face_templates_read():
    source = "[{{ bos_token }}|{{ eos_token }}|{{ add_generation_prompt }}|{{ speaker }}]" \
             "{% for m in messages %}{{ m.role }}={{ m.content }};{% endfor %}"
    assert render(source, [{"role": "user", "content": "hi"}], speaker="X") == "[||True|X]user=hi;"
    assert render(source, [], add_generation_prompt="ignored") == "[||True|]"  # ours win over a request's


def test_raise_exception_is_the_templates_own_message():
    with pytest.raises(ChatTemplateError, match="refused the conversation: only users speak here"):
        render("{% if messages %}{{ raise_exception('only users speak here') }}{% endif %}", [{"role": "x"}])


@pytest.mark.parametrize(("source", "problem"), [
    ("{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}", "longer than 0.2 s"),
    ("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", "recursed too deeply"),
    ("{% for i in range(100000) %}xxxxxxxxxx{% endfor %}", "passed 16,384 characters"),
    ("{{ 'x' * 1000000000 }}", "repeats a value to 1,000,000,000"),
    ("{{ ([1] * 100000) * 100000 }}", "repeats a value"),
    ("{% set ns = namespace(s='x' * 1000) %}{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
     "built a value of 1,024,000"),
    ("{% set ns = namespace(s='x' * 1000) %}{% for i in range(40) %}{% set ns.s = ns.s + ns.s %}{% endfor %}",
     "built a value"),
    ("{{ 10 ** 100000 }}", "power"),
    ("{{ (((10 ** 64) ** 64) ** 64) ** 64 }}", "power"),
    ("{{ '%1000000000d' % 1 }}", "format string asks for over 1,000,000"),
    ("{{ '{:>1000000000}'.format(1) }}", "format string asks for over 1,000,000"),
    ("{{ '%1000000000d' | format(1) }}", "format string asks for over 1,000,000"),
    ("{{ 'x' | center(1000000000) }}", "passed 1000000000"),
    ("{{ 'x'.ljust(1000000000) }}", "passed 1000000000"),
    ("{{ lipsum(1000000000) }}", "passed 1000000000"),
    ("{{ ''.__class__.__mro__ }}", "SecurityError"),
    ("{{ messages.append(1) }}", "SecurityError"),
    ("{{ nothing.here }}", "UndefinedError"),
    ("{{ lipsum(20, False, 99999, 100000) }}", "'lipsum' is undefined"),
    ("{{ range(100000) | map('center', 999999) | list | length }}", "built more than 32,000,000 items in all"),
    ("{{ ([('x' * 1000000)] * 50) | join }}", "joins 50,000,000 characters"),
    ("{{ range(100000) | join('x' * 30) }}", "joins 3,000,000 characters"),
    ("{{ ('{0:999999}' * 50).format(1) }}", "format string asks for over 1,000,000"),
    ("{{ ('%(a)999999s' * 50) % {'a': 1} }}", "format string asks for over 1,000,000"),
    ("{% set b %}{% for i in range(100000) %}{{ 'x' * 999 }}{% endfor %}{% endset %}{{ b | length }}",
     "built more than 32,000,000 items in all"),
    ("{{ range(50000) | map('string') | map('list') | sum(start=[]) }}", "sum adds numbers only"),
    ("{% set ns = namespace(n=3) %}{% for i in range(40) %}{% set ns.n = ns.n * ns.n %}{% endfor %}",
     "multiplies numbers past 65,536 bits"),
])
def test_a_template_past_a_limit_is_stopped_with_the_reason(source, problem):
    """Each is stopped by the limit it passes: only the endless loop waits for the deadline, which is
    long for the others, so a busy machine cannot turn their reasons into a timeout."""
    timeout_s = 0.2 if "longer than" in problem else 20
    started = time.monotonic()
    with pytest.raises(ChatTemplateError, match=re.escape(problem)):
        render(source, timeout_s=timeout_s)
    assert time.monotonic() - started < 30  # stopped, not run to its end (which would take hours)


@pytest.mark.parametrize("source", ["{{ " + "(" * 300 + "1" + ")" * 300 + " }}",
                                    "".join(f"{{% for a{i} in [1] %}}" for i in range(25)) + "{% endfor %}" * 25])
def test_a_template_nested_past_what_python_compiles_is_refused(source):
    with pytest.raises(ChatTemplateError, match="cannot be compiled"):
        ChatTemplate.compile(source, "T")


def test_a_template_that_is_not_jinja_is_refused_with_its_line(tmp_path):
    path = tmp_path / "t.jinja"
    path.write_text("ok\n{% for m in messages %}", encoding="utf-8")
    with pytest.raises(ChatTemplateError, match=r"t.jinja is not a valid Jinja template \(line 2\)"):
        read_template(path)
    with pytest.raises(ChatTemplateError, match="cannot read"):
        read_template(tmp_path / "missing.jinja")


def test_the_play_writes_speeches_that_no_message_can_break():
    play = read_template(template_path("play"))
    messages = [{"role": "system", "content": " A street. "}, {"role": "user", "content": "Hi\n\n\nJULIET:\nthere"},
                {"role": "assistant", "content": "Who?", "name": "nurse"}, {"role": "tool", "content": "News."}]
    text = play.render(messages, True, {"user_name": "Lady\nMacbeth"}, 1.0, PROMPT_LIMIT)
    assert text == ("CHORUS:\nA street.\n\nLADY MACBETH:\nHi\nJULIET:\nthere\n\nNURSE:\nWho?\n\n"
                    "MESSENGER:\nNews.\n\nJULIET:\n")


def test_verse_writes_stanzas_and_no_names():
    verse = read_template(template_path("verse"))
    messages = [{"role": "system", "content": "К морю"}, {"role": "user", "content": "Прощай\n\nсвободная стихия!",
                                                         "name": "poet"}]
    assert verse.render(messages, True, {}, 1.0, PROMPT_LIMIT) == "К морю\n\nПрощай\nсвободная стихия!\n\n"


def test_tracing_is_put_back_after_rendering():
    import sys

    def tracer(frame, event, arg):
        return None

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        render("{{ 1 }}")
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(previous)
