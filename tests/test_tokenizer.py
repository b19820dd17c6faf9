import pytest

from tinygpt.model.tokenizer import CharTokenizer, UnknownCharactersError


def test_vocabulary_is_the_sorted_distinct_characters_of_the_corpus(corpus, tokenizer):
    assert len(tokenizer) == 65
    assert tokenizer.vocab == "".join(sorted(set(corpus)))
    assert tokenizer.vocab[0] == "\n" and tokenizer.vocab[1] == " "


def test_encode_decode_round_trip(corpus, tokenizer):
    sample = corpus[:5000]
    ids = tokenizer.encode(sample)
    assert all(0 <= i < 65 for i in ids)
    assert tokenizer.decode(ids) == sample


def test_unknown_characters_are_named():
    with pytest.raises(UnknownCharactersError) as err:
        CharTokenizer("abc").encode("abxcy")
    assert err.value.chars == ["x", "y"]
    assert "'x'" in str(err.value) and "'y'" in str(err.value)


@pytest.mark.parametrize(
    ("typed", "expected"),
    [
        ("\u201cHark!\u201d", "'Hark!'"),  # curly double quotes
        ('"Hark!"', "'Hark!'"),  # straight double quotes: none in Shakespeare
        ("it\u2019s", "it's"),
        ("a\tb", "a b"),
        ("a\r\nb\rc", "a\nb\nc"),
        ("caf\u00e9 na\u00efve \u00c9lan", "cafe naive Elan"),
        ("wait\u2026", "wait..."),
        ("so\u2014then", "so-then"),
        ("a\u00a0b", "a b"),
    ],
)
def test_normalize_maps_close_equivalents(tokenizer, typed, expected):
    assert tokenizer.normalize(typed) == expected


@pytest.mark.parametrize(("typed", "named"), [("in 1592", "'1', '5', '9', '2'"), ("hi \U0001f600", "'\U0001f600'")])
def test_normalize_refuses_what_has_no_equivalent(tokenizer, typed, named):
    with pytest.raises(UnknownCharactersError) as err:
        tokenizer.normalize(typed)
    for ch in named.split(", "):
        assert ch in str(err.value)


def test_normalize_keeps_characters_the_vocabulary_has():
    tokenizer = CharTokenizer.from_text('say "hi"\tthere')
    assert tokenizer.normalize('"hi"\t') == '"hi"\t'
