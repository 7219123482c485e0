"""BM25 over articles and passages with SQLite FTS5, inside the index's own database: the reference scorer.

Searches do not run this: they score with the in-memory BM25 (search/text/bm25.py), which gives FTS5's scores
8x faster (``bench/quality.py --only lexical``). This module is what that claim is checked against. FTS5 is an
independent implementation (SQLite's tokenizer, its index, its ``bm25()``) kept up to date by SQLite itself:
triggers on ``articles`` and ``passages`` update the FTS tables in the same transaction as every write, so they
cannot drift from the stored rows, while the in-memory postings are updated by our own code on every add and
delete. tests/test_bm25.py requires the two to agree score for score (after a build, and after adds and deletes),
``bench/quality.py`` reports both engines' nDCG side by side, and ``newsdesk check`` verifies the FTS tables against
the rows. Without them a tokenizer change or a missed postings update would show only as worse rankings.

The price is paid on every write: about 1-2 ms per article (a 20-article write takes about 4x the SQLite time it
takes without the triggers, which is still 1-2% of embedding those articles) and a fifth more database
(``bench/fts_cost.py``; figures in bench/README.md). The tables are part of the index format (FORMAT_VERSION 2).

User text never reaches FTS5's query language: it is cut into word tokens, each quoted, joined with OR, so quotes,
operators (AND, NEAR, ``*``, ``^``, ``:``), punctuation and any script are searched as plain words.
"""

from __future__ import annotations

import functools
import sqlite3
from collections import Counter
from collections.abc import Iterable
from typing import Protocol

from search.errors import IndexCorrupt
from search.storage.store import Store
from search.text import unicode61
from search.text.porter import porter

# Function words that match nearly every document: dropping them keeps OR queries fast and BM25 focused.
STOPWORDS = frozenset(
    """a about above after again against all am an and any are as at be because been before being below between
    both but by can could did do does doing down during each few for from further had has have having he her here
    hers herself him himself his how i if in into is it its itself just me more most my myself no nor not now of off
    on once only or other our ours ourselves out over own same she should so some such than that the their theirs
    them themselves then there these they this those through to too under until up very was we were what when where
    which while who whom why will with would you your yours yourself yourselves""".split()
)
K1, B = 1.2, 0.75  # FTS5's bm25() constants


def query_terms(text: str) -> list[str]:
    """Distinct tokens of ``text``, stopwords dropped unless nothing else is left. FTS5's own tokens (folded), so that
    each quoted term of ``match_expression`` is one token to FTS5 (a word FTS5 split would become a phrase) and
    the in-memory BM25 looks up the very term FTS5 searches."""
    tokens = list(dict.fromkeys(unicode61.tokens(text)))
    content = [t for t in tokens if t not in STOPWORDS]
    return content or tokens


def match_expression(text: str) -> str | None:
    """An FTS5 MATCH string that searches every term of ``text`` as a plain quoted word, or None if it has none."""
    terms = query_terms(text)
    if not terms:
        return None
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)


class LexicalIndex(Protocol):
    """BM25 scores (higher is better) for articles and passages."""

    def search_articles(self, query: str, k: int) -> list[tuple[int, float]]: ...

    def score_articles(self, query: str, aids: Iterable[int]) -> dict[int, float]: ...

    def search_passages(self, query: str, k: int) -> list[tuple[int, float]]: ...

    def score_passages(self, query: str, ids: Iterable[int]) -> dict[int, float]: ...


class Fts5Lexical:
    """FTS5's BM25 (k1=1.2, b=0.75); an article's headline counts ``title_weight`` times its body's terms."""

    def __init__(self, store: Store, title_weight: float = 1.0) -> None:
        self._store = store
        self._title_weight = float(title_weight)

    def _rank(self, table: str) -> str:
        if table == "articles_fts":
            return f"bm25(articles_fts, {self._title_weight!r}, 1.0)"
        return "bm25(passages_fts)"

    def _run(self, sql: str, params: tuple[object, ...]) -> list[tuple[int, float]]:
        try:
            rows = self._store.connection().execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                raise IndexCorrupt("the index has no lexical tables; rebuild it with this version") from None
            raise
        return [(int(r), -float(s)) for r, s in rows]

    def _search(self, table: str, query: str, k: int) -> list[tuple[int, float]]:
        expr = match_expression(query)
        if expr is None or k <= 0:
            return []
        rank = self._rank(table)
        return self._run(
            f"SELECT rowid, {rank} FROM {table} WHERE {table} MATCH ? ORDER BY {rank} LIMIT ?", (expr, int(k))
        )

    def _score(self, table: str, query: str, keys: Iterable[int]) -> dict[int, float]:
        """BM25 of the given rows: one pass over the query's matches, filtered here.

        ``rowid IN (...)`` next to MATCH makes FTS5 run the whole full-text query once per listed value (hundreds
        of times per search); one unsorted pass costs about the same as one top-k query.
        """
        expr = match_expression(query)
        wanted = {int(k) for k in keys}
        if expr is None or not wanted:
            return {}
        rows = self._run(f"SELECT rowid, {self._rank(table)} FROM {table} WHERE {table} MATCH ?", (expr,))
        return {r: s for r, s in rows if r in wanted}

    def search_articles(self, query: str, k: int) -> list[tuple[int, float]]:
        return self._search("articles_fts", query, k)

    def score_articles(self, query: str, aids: Iterable[int]) -> dict[int, float]:
        return self._score("articles_fts", query, aids)

    def search_passages(self, query: str, k: int) -> list[tuple[int, float]]:
        return self._search("passages_fts", query, k)

    def score_passages(self, query: str, ids: Iterable[int]) -> dict[int, float]:
        return self._score("passages_fts", query, ids)


@functools.lru_cache(maxsize=400_000)
def stem(token: str) -> str:
    """The stem FTS5's ``porter`` tokenizer gives a token of ``unicode61.tokens`` (search/text/porter.py, FTS5's
    own variant of the algorithm), folded again here for callers holding raw words."""
    return porter(token.lower() if token.isascii() else token.translate(unicode61.FOLD))


def fts_term_counts(text: str) -> tuple[int, Counter[str]]:
    """(tokens, stem counts) of a text, tokenized as the FTS5 tables are (``unicode61.tokens``, then ``stem``)."""
    tokens = unicode61.tokens(text)
    counts: Counter[str] = Counter()
    for token, n in Counter(tokens).items():  # each distinct token stemmed once
        counts[stem(token)] += n
    return len(tokens), counts
