"""search/text/unicode61.py is FTS5's tokenizer: its tables against SQLite's FTS5 itself, code point by code point,
and the in-memory BM25 against FTS5's bm25() on texts where a ``\\w`` regex tokenizes otherwise."""

from __future__ import annotations

import json
import sqlite3
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from search.text import unicode61
from search.text.bm25 import Postings, _phrases
from search.text.fts import fts_term_counts, match_expression, query_terms, stem

TOKENIZE = "porter unicode61 remove_diacritics 2"  # search/storage/store.py's TOKENIZE


def probe(codepoints: list[int]) -> dict[int, tuple[bool, bool, str]]:
    """What FTS5's unicode61 (remove_diacritics 2, no stemming) does with each code point: (starts a token,
    continues one, what it folds to), read from the tokens FTS5 indexes for " c " and "qcq"."""
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE VIRTUAL TABLE t USING fts5(x, tokenize='unicode61 remove_diacritics 2')")
    conn.execute("CREATE VIRTUAL TABLE v USING fts5vocab(t, instance)")
    conn.executemany("INSERT INTO t(rowid, x) VALUES (?, ?)", ((c * 2, f" {chr(c)} ") for c in codepoints))
    conn.executemany("INSERT INTO t(rowid, x) VALUES (?, ?)", ((c * 2 + 1, f"q{chr(c)}q") for c in codepoints))
    found: dict[int, list[str]] = {}
    for term, doc in conn.execute("SELECT term, doc FROM v"):
        found.setdefault(int(doc), []).append(str(term))
    out = {}
    for c in codepoints:
        middle = found.get(c * 2 + 1, [])
        out[c] = (bool(found.get(c * 2)), len(middle) == 1, middle[0][1:-1] if len(middle) == 1 else "")
    return out


def modelled(c: int) -> tuple[bool, bool, str]:
    """What the tables say of a code point, in ``probe``'s terms."""
    text = f"q{chr(c)}q"
    middle = unicode61.tokens(text)
    return bool(unicode61.tokens(f" {chr(c)} ")), len(middle) == 1, middle[0][1:-1] if len(middle) == 1 else ""


def named() -> list[int]:
    """Every code point the tables name, each range's neighbours, and a sample of the rest."""
    points = {c for a, b in unicode61._SEPARATORS for c in range(a - 1, b + 2)}
    points.update(c for c in unicode61._DIACRITICS)
    points.update(a for a, _ in unicode61._FOLDS)
    points.update(range(1, 0x110000, 257))
    return sorted(c for c in points if 0 < c < 0x110000 and not 0xD800 <= c <= 0xDFFF)


def test_tables_are_what_fts5_does_to_each_code_point() -> None:
    points = named()
    fts5 = probe(points)
    wrong = [(hex(c), fts5[c], modelled(c)) for c in points if fts5[c] != modelled(c)]
    assert wrong == []


TEXTS = [
    "Ce\u0301sar and Ce\u0301line: a pie\u0300ce de re\u0301sistance",  # decomposed accents continue a token
    "But first 🤷\u200d♀️ Ask HR: 📸 Gallery 🧀 Taco Bell",  # emoji are tokens, the joiner and sign are not
    "MÜNCHEN Straße µ-law Ωmega ΣΊΣΥΦΟΣ İstanbul ﬁnance ² ½ Ⅻ 日本s 東京 gig_workers U.S. 3.14",
]


def test_tokens_and_stems_are_fts5s() -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute(f"CREATE VIRTUAL TABLE t USING fts5(x, tokenize='{TOKENIZE}')")
    conn.execute("CREATE VIRTUAL TABLE v USING fts5vocab(t, instance)")
    conn.executemany("INSERT INTO t(rowid, x) VALUES (?, ?)", enumerate(TEXTS, 1))
    for rowid, text in enumerate(TEXTS, 1):
        want = [t for (t,) in conn.execute("SELECT term FROM v WHERE doc = ? ORDER BY offset", (rowid,))]
        length, counts = fts_term_counts(text)
        assert (length, counts) == (len(want), Counter(want)), text


def fts5_stems(tokens: list[str]) -> list[list[str]]:
    """FTS5's porter terms of each token (one row per token)."""
    conn = sqlite3.connect(":memory:")
    conn.execute(f"CREATE VIRTUAL TABLE t USING fts5(x, tokenize='{TOKENIZE}')")
    conn.execute("CREATE VIRTUAL TABLE v USING fts5vocab(t, instance)")
    conn.executemany("INSERT INTO t(rowid, x) VALUES (?, ?)", enumerate(tokens, 1))
    found: dict[int, list[str]] = {}
    for term, doc in conn.execute("SELECT term, doc FROM v"):
        found.setdefault(int(doc), []).append(str(term))
    return [found.get(i, []) for i in range(1, len(tokens) + 1)]


# words for each rule of FTS5's porter, and the ones where Snowball's porter (PyStemmer) stems otherwise
RULE_WORDS = """caresses ponies ties caress cats sses ies feed agreed plastered bled motoring sing conflated troubled
sized hopping tanned falling hissing fizzed failing filing happy sky relational conditional rational valenci
hesitanci digitizer conformabli radicalli differentli vileli analogousli vietnamization predication operator
feudalism decisiveness hopefulness callousness formaliti sensitiviti sensibiliti triplicate formative formalize
electriciti electrical hopeful goodness revival allowance inference airliner gyroscopic adjustable defensible
irritant replacement adjustment dependent adoption homologou communism activate angulariti homologous effective
bowdlerize probate rate cease controll roll generalizations oscillators technology apology assembly audibly
biotechnologies yyy aing eed ing straße cafés 日本s naïve""".split()


def test_porter_is_fts5s_on_each_rule_and_the_bundled_corpus() -> None:
    words = set(RULE_WORDS)
    root = Path(__file__).resolve().parent.parent
    for path in (root / "tests" / "fixtures" / "corpus.jsonl", root / "index_data" / "sample.jsonl"):
        for line in path.read_text(encoding="utf-8").splitlines():
            words.update(unicode61.tokens(json.dumps(json.loads(line), ensure_ascii=False)))
    tokens = sorted(t for w in words for t in unicode61.tokens(w))
    want = fts5_stems(tokens)
    wrong = [(t, stem(t), w) for t, w in zip(tokens, want, strict=True) if [stem(t)] != w]
    assert len(tokens) > 500 and wrong == []
    assert stem("Technology") == "technolog" and stem("Ce\u0301sar") == "cesar"  # raw words are folded first


def test_query_terms_are_single_fts5_tokens() -> None:
    # an underscore or a decomposed accent would make FTS5 search a phrase, or a term nobody indexed
    assert query_terms("Which gig_workers sued Ce\u0301sar?") == ["gig", "workers", "sued", "cesar"]
    assert match_expression("🤷 shrug") == '"🤷" OR "shrug"'


def fts5_scores(texts: list[str], query: str) -> dict[int, float]:
    conn = sqlite3.connect(":memory:")
    conn.execute(f"CREATE VIRTUAL TABLE t USING fts5(x, tokenize='{TOKENIZE}')")
    conn.executemany("INSERT INTO t(rowid, x) VALUES (?, ?)", enumerate(texts, 1))
    expr = match_expression(query)
    return {int(r): -float(s) for r, s in conn.execute("SELECT rowid, bm25(t) FROM t WHERE t MATCH ?", (expr,))}


def test_bm25_scores_rows_with_accents_and_emoji_as_fts5_does() -> None:
    texts = [
        *TEXTS,
        "Cesar cooks a pie",
        "C\u00e9sar cooks a pie with cheese 🧀 🧀",
        "Nothing to see here",
        "The CES show in Las Vegas, ce\u0301sar",
    ]
    postings = Postings.build([(i, (t,)) for i, t in enumerate(texts, 1)], 1)
    for query in ("cesar pie", "ce show", "🧀 taco", "gig workers", "shrug 🤷"):
        want = fts5_scores(texts, query)
        scores = postings.scores(_phrases(query), (1.0,))
        got = {int(postings.rowids[i]): float(scores[i]) for i in np.flatnonzero(scores > 0)}
        assert set(got) == set(want), query
        for rowid, score in want.items():
            assert got[rowid] == pytest.approx(score, rel=1e-6), (query, rowid)


if __name__ == "__main__":  # print the tables again from this SQLite's FTS5 (every code point: about 100 s)
    every = probe([c for c in range(1, 0x110000) if not 0xD800 <= c <= 0xDFFF])
    separators = [c for c, (start, cont, _) in every.items() if not start and not cont]
    print(sqlite3.sqlite_version, "separators", len(separators), file=sys.stderr)
    print("_DIACRITICS =", tuple(hex(c) for c, (start, cont, _) in every.items() if cont and not start))
    print("_FOLDS =", tuple((hex(c), hex(ord(f))) for c, (start, _, f) in every.items() if start and f != chr(c)))
    ranges: list[list[int]] = []
    for c in separators:
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1][1] = c
        else:
            ranges.append([c, c])
    print("_SEPARATORS =", tuple((hex(a), hex(b)) for a, b in ranges))


def test_texts_whose_only_non_ascii_characters_separate_take_the_ascii_path_and_tokenize_as_fts5() -> None:
    """Curly quotes, dashes and non-breaking spaces send a text down the ASCII path (lowercase, ``[a-z0-9]+``);
    its tokens are FTS5's own, read through FTS5, on random mixes of ASCII and every plain separator. A non-ASCII
    letter, accent or astral character anywhere keeps a text on the full path."""
    rng = np.random.default_rng(7)
    plain = sorted(unicode61._PLAIN_SEPARATORS)
    assert {"\u201c", "\u2014", "\u00a0", "\u2019"} <= set(plain) and "\u00e9" not in set(plain)
    words = ["Trump", "U.S.", "CEO's", "2024", "x", "ABC123", "", " ", "\n"]
    texts = []
    for _ in range(300):
        parts = [str(rng.choice(words)) if rng.random() < 0.6 else str(rng.choice(plain)) for _ in range(12)]
        texts.append("".join(parts))
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE VIRTUAL TABLE t USING fts5(x, tokenize='unicode61 remove_diacritics 2')")
    conn.execute("CREATE VIRTUAL TABLE v USING fts5vocab(t, instance)")
    conn.executemany("INSERT INTO t(rowid, x) VALUES (?, ?)", enumerate(texts, start=1))
    fts: dict[int, list[tuple[int, str]]] = {}
    for term, doc, offset in conn.execute("SELECT term, doc, offset FROM v"):
        fts.setdefault(int(doc), []).append((int(offset), str(term)))
    for rowid, text in enumerate(texts, start=1):
        assert unicode61.tokens(text) == [t for _, t in sorted(fts.get(rowid, []))], text
    for keeps_full_path in ("caf\u00e9 \u201cx\u201d", "Ce\u0301sar \u2014", "\U0001f600 \u2014 a"):
        assert unicode61.tokens(keeps_full_path) == [
            t.lower() if t.isascii() else t.translate(unicode61.FOLD) for t in unicode61._TOKEN.findall(keeps_full_path)
        ]
