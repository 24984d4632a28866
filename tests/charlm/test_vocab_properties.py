"""Properties of vocabulary encoding over arbitrary Unicode, lone surrogates included."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from charlm.vocab import UnknownCharactersError, Vocab

any_text = st.text(alphabet=st.characters(exclude_categories=()), max_size=60)  # surrogates too
corpus_text = st.text(min_size=1, max_size=40)


@given(corpus_text)
def test_a_vocabulary_round_trips_its_own_text(text):
    vocab = Vocab.from_text(text)
    assert vocab.decode(vocab.encode(text)) == text


@given(corpus_text, any_text)
def test_unknown_characters_are_reported_with_every_position(corpus, text):
    vocab = Vocab.from_text(corpus)
    outside = {c for c in text if c not in vocab}
    if not outside:
        assert vocab.decode(vocab.encode(text)) == text
        return
    with pytest.raises(UnknownCharactersError) as caught:
        vocab.encode(text)
    expected = {c: [i for i, x in enumerate(text) if x == c] for c in outside}
    assert caught.value.unknown == expected
    assert f"{len(outside)} character(s) not in the model's vocabulary" in str(caught.value)


@given(corpus_text)
def test_saving_and_loading_keeps_characters_and_fingerprint(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("vocab") / "vocab.json"
    vocab = Vocab.from_text(text)
    vocab.save(path)
    loaded = Vocab.load(path)
    assert loaded.chars == vocab.chars and loaded.fingerprint == vocab.fingerprint
