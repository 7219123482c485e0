from __future__ import annotations

import pytest

from search.models import Article
from search.text.chunking import Chunker, sentence_spans, split_paragraphs

NK = (
    "The accusation also comes at a time when US President Joe Biden and South Korean President Yoon Suk-yeol "
    "recently agreed to deploy more US weapons. The ministry added that US hostility had pushed the isolated nation "
    "to develop its defenses. To note, North Korea has rebuffed the overtures."
)


def sentences(text: str) -> list[str]:
    return [text[s.start : s.end] for s in sentence_spans(text)]


def test_sentences_split_on_terminal_punctuation_with_exact_offsets() -> None:
    got = sentences(NK)
    assert len(got) == 3
    assert got[1] == "The ministry added that US hostility had pushed the isolated nation to develop its defenses."
    for s in sentence_spans(NK):
        assert NK[s.start : s.end] == NK[s.start : s.end].strip()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("U.S. Expected to Expand Travel Ban. Officials said so.", 2),
        ("Mr. Smith met Dr. Jones in St. Louis on Jan. 5. They talked.", 2),
        ("He said “no.” Then he left.", 2),
        ("Prices rose 3.5 percent. Markets fell.", 2),
        ("What now? Nobody knows! Fine.", 3),
        ("no capital after. this stays one sentence", 1),
        ("", 0),
        ("   ", 0),
    ],
)
def test_sentence_boundaries(text: str, expected: int) -> None:
    assert len(sentence_spans(text)) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # titles, singular and plural, never end a sentence
        (
            "Sens. Elizabeth Warren and Bernie Sanders wrote to the agency. It replied.",
            ["Sens. Elizabeth Warren and Bernie Sanders wrote to the agency.", "It replied."],
        ),
        (
            "Reps. Smith and Jones met Gov. Newsom and Lt. Gov. Kounalakis. They agreed.",
            ["Reps. Smith and Jones met Gov. Newsom and Lt. Gov. Kounalakis.", "They agreed."],
        ),
        # state and month abbreviations before a name or a number
        (
            "The bill passed on Feb. 3, the report said. Mass. Gov. Maura Healey signed it.",
            ["The bill passed on Feb. 3, the report said.", "Mass. Gov. Maura Healey signed it."],
        ),
        (
            "The U.S. Supreme Court and the U.N. Security Council met George W. Bush. Then they left.",
            ["The U.S. Supreme Court and the U.N. Security Council met George W. Bush.", "Then they left."],
        ),
        ("Sony Corp. said No. 2 was fine. Shares rose.", ["Sony Corp. said No. 2 was fine.", "Shares rose."]),
        # ... but an initialism or abbreviation followed by a word that opens sentences ends one
        ("He moved to the U.S. The court ruled later.", ["He moved to the U.S.", "The court ruled later."]),
        ("She was born in Pasadena, Calif. He was not.", ["She was born in Pasadena, Calif.", "He was not."]),
    ],
)
def test_abbreviations_stay_whole(text: str, expected: list[str]) -> None:
    assert sentences(text) == expected


def test_quoted_sentence_keeps_closing_quote() -> None:
    text = "“While holding exercises, the US is moving to establish an Asia-style NATO,” said the ministry. Next one."
    first = sentences(text)[0]
    assert first.endswith("said the ministry.")
    assert first.startswith("“While")


def test_split_paragraphs_blank_lines_and_single_lines() -> None:
    assert split_paragraphs("a b\nc\n\nd\r\n\r\ne") == ["a b c", "d", "e"]
    assert split_paragraphs("line one\nline two\n") == ["line one", "line two"]
    assert split_paragraphs("  \n\n ") == []


def article(*paragraphs: str, title: str = "Headline here") -> Article:
    return Article(id="a", title=title, paragraphs=tuple(paragraphs))


def test_headline_passage_then_paragraphs_with_spans_into_body() -> None:
    a = article(
        "First paragraph is long enough to stand on its own as a passage.",
        "Second paragraph, also long enough to stand.",
    )
    chunks = Chunker(min_chars=20).chunk(a)
    assert [c.field for c in chunks] == ["title", "body", "body"]
    assert chunks[0].text == "Headline here"
    for c in chunks:
        source = a.title if c.field == "title" else a.body
        assert source[c.start : c.end] == c.text
    assert [c.position for c in chunks] == [0, 1, 2]


def test_short_paragraphs_merge_with_the_next_and_a_trailing_one_with_the_previous() -> None:
    a = article("By Staff", "A long paragraph that easily clears the minimum length for a passage.", "Photo: AP")
    chunks = [c for c in Chunker(min_chars=40).chunk(a) if c.field == "body"]
    assert len(chunks) == 1
    assert chunks[0].text.startswith("By Staff")
    assert chunks[0].text.endswith("Photo: AP")
    assert a.body[chunks[0].start : chunks[0].end] == chunks[0].text


def test_all_short_paragraphs_become_one_passage() -> None:
    chunks = [c for c in Chunker(min_chars=100).chunk(article("a.", "b.")) if c.field == "body"]
    assert [c.text for c in chunks] == ["a.\n\nb."]


def test_long_paragraph_splits_on_sentences_under_the_token_limit() -> None:
    sentence = "The committee reviewed the budget proposal in detail today."
    para = " ".join([sentence] * 12)
    chunker = Chunker(max_tokens=30, min_chars=0, count_tokens=lambda t: len(t.split()))
    body = [c for c in chunker.chunk(article(para)) if c.field == "body"]
    assert len(body) > 1
    for c in body:
        assert len(c.text.split()) <= 30
        assert c.text.endswith(".")
        assert para[c.start : c.end] == c.text
    # Nothing is lost: the pieces cover every sentence in order.
    assert " ".join(c.text for c in body) == para


def test_single_sentence_over_the_limit_is_cut_on_words_not_truncated() -> None:
    para = " ".join(f"w{i}" for i in range(50))
    chunker = Chunker(max_tokens=10, min_chars=0, count_tokens=lambda t: len(t.split()))
    body = [c for c in chunker.chunk(article(para)) if c.field == "body"]
    assert all(len(c.text.split()) <= 10 for c in body)
    assert " ".join(c.text for c in body) == para


def test_headline_only_article_has_one_passage_and_untitled_has_none_for_title() -> None:
    assert [c.field for c in Chunker().chunk(article(title="Only a headline"))] == ["title"]
    assert [c.field for c in Chunker(min_chars=0).chunk(article("Body only.", title=""))] == ["body"]


def test_real_tokenizer_limit_respected(embedder) -> None:
    para = " ".join(["Officials said inflation remained far above the bank's target for the year."] * 40)
    chunker = Chunker(max_tokens=64, min_chars=0, count_tokens=embedder.count_tokens)
    body = [c for c in chunker.chunk(article(para)) if c.field == "body"]
    assert len(body) > 1
    assert all(embedder.count_tokens(c.text) <= 64 for c in body)
