import json

import pytest

from charlm.vocab import UnknownCharactersError, Vocab


def test_vocab_is_the_sorted_set_of_characters():
    vocab = Vocab.from_text("hello, world\n")
    assert vocab.chars == sorted(set("hello, world\n"))
    assert vocab.start_char == "\n"


def test_round_trip_of_cyrillic_text():
    text = "Я помню чудное мгновенье:\nПередо мной явилась ты,"
    vocab = Vocab.from_text(text)
    ids = vocab.encode(text)
    assert ids.dtype.name == "int64" and len(ids) == len(text)
    assert vocab.decode(ids.tolist()) == text


def test_code_points_beyond_the_basic_plane_are_single_characters():
    text = "a😀b𝔘"
    vocab = Vocab.from_text(text)
    assert len(vocab) == 4
    assert vocab.decode(vocab.encode(text).tolist()) == text


def test_encode_names_unknown_characters_and_their_positions():
    vocab = Vocab.from_text("abc ")
    with pytest.raises(UnknownCharactersError) as info:
        vocab.encode("a€c€ Ж")
    assert info.value.unknown == {"€": [1, 3], "Ж": [5]}
    message = str(info.value)
    assert "'€' (U+20AC) at 1, 3" in message and "'Ж' (U+0416) at 5" in message


def test_unknown_character_message_caps_the_positions_it_lists():
    vocab = Vocab.from_text("a")
    with pytest.raises(UnknownCharactersError, match="and 15 more"):
        vocab.encode("z" * 20)


def test_start_character_falls_back_to_the_first_character_without_newline():
    assert Vocab.from_text("ba").start_char == "a"


def test_save_and_load_keep_the_fingerprint(tmp_path):
    vocab = Vocab.from_text("Пушкин\nwrote\tverse")
    vocab.save(tmp_path / "vocab.json")
    loaded = Vocab.load(tmp_path / "vocab.json")
    assert loaded.chars == vocab.chars
    assert loaded.fingerprint == vocab.fingerprint
    assert "Пушкин"[0] in json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))["chars"]


def test_fingerprint_changes_with_the_characters_and_their_order():
    base = Vocab(["a", "b", "c"])
    assert Vocab(["a", "b", "c"]).fingerprint == base.fingerprint
    assert Vocab(["a", "b", "d"]).fingerprint != base.fingerprint
    assert Vocab(["b", "a", "c"]).fingerprint != base.fingerprint


@pytest.mark.parametrize(
    "chars, problem",
    [([], "at least one"), (["ab"], "exactly one"), (["a", "a"], "unique")],
)
def test_invalid_vocabularies_are_refused(chars, problem):
    with pytest.raises(ValueError, match=problem):
        Vocab(chars)
