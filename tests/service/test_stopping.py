from service.engine.stopping import StopMatcher


def feed(matcher, text):
    released, stopped = [], False
    for char in text:
        out, stopped = matcher.push(char, char)
        released += out
        if stopped:
            break
    return "".join(released), stopped


def test_without_stops_every_character_is_released_at_once():
    matcher = StopMatcher([])
    assert matcher.push("a", "a") == (["a"], False)


def test_a_stop_spanning_several_characters_is_found_and_excluded():
    assert feed(StopMatcher(["END"]), "the END of it") == ("the ", True)


def test_only_a_possible_stop_prefix_is_held_back():
    matcher = StopMatcher(["abc"])
    assert matcher.push("x", "x") == (["x"], False)
    assert matcher.push("a", "a") == ([], False)  # could start "abc"
    assert matcher.push("b", "b") == ([], False)
    assert matcher.push("x", "x") == (["a", "b", "x"], False)  # no longer can


def test_held_characters_are_flushed_at_the_end():
    matcher = StopMatcher(["abc"])
    feed(matcher, "zab")
    assert matcher.flush() == ["a", "b"]


def test_the_earliest_of_several_stops_wins():
    assert feed(StopMatcher(["xyz", "yz"]), "axyz") == ("a", True)
    assert feed(StopMatcher(["\n\n", "."]), "one.\n\n") == ("one", True)


def test_overlapping_prefixes_release_exactly_what_cannot_match():
    matcher = StopMatcher(["aab"])
    assert feed(matcher, "aaab") == ("a", True)
