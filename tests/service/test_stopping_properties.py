"""Properties of stop-string matching, on generated text over a small alphabet (so stops occur)."""

from hypothesis import given
from hypothesis import strategies as st

from service.engine.stopping import StopMatcher

ALPHABET = "ab "
texts = st.text(alphabet=ALPHABET, max_size=40)
stop_lists = st.lists(st.text(alphabet=ALPHABET, min_size=1, max_size=4), max_size=3)


def expected_output(text: str, stops: list[str]) -> tuple[str, bool]:
    """OpenAI semantics: generation ends at the first character that completes a stop string, and
    the output is everything before the earliest stop string found by then."""
    for end in range(1, len(text) + 1):
        found = [i for i in (text[:end].find(s) for s in stops) if i >= 0]
        if found:
            return text[: min(found)], True
    return text, False


def run_matcher(text: str, stops: list[str]) -> tuple[str, bool, int]:
    matcher: StopMatcher[str] = StopMatcher(stops)
    released, most_held = [], 0
    for char in text:
        now, matched = matcher.push(char, char)
        released += now
        most_held = max(most_held, len(matcher.held))
        if matched:
            return "".join(released), True, most_held
    return "".join(released + matcher.flush()), False, most_held


@given(texts, stop_lists)
def test_output_is_the_text_before_the_first_stop_string(text, stops):
    output, matched, _ = run_matcher(text, stops)
    assert (output, matched) == expected_output(text, stops)


@given(texts, stop_lists)
def test_held_back_text_is_shorter_than_the_longest_stop_string(text, stops):
    _, _, most_held = run_matcher(text, stops)
    assert most_held <= max((len(s) for s in stops), default=1) - 1


@given(texts)
def test_without_stop_strings_every_character_is_released_at_once(text):
    matcher: StopMatcher[str] = StopMatcher([])
    assert all(matcher.push(c, c) == ([c], False) for c in text)
