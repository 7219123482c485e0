"""Locating the sentence of a passage that answers the query.

Sentence vectors come from the index when it has them (made at index time from each passage's own forward pass,
see ``Embedder.encode_spans``), so showing a result costs no model call. Passages of an index built without them
have their sentences embedded here, with the same model, cached by passage id.

A sentence is chosen by its vector's cosine to the query plus a lexical bonus: the IDF-weighted share of the
query's terms it contains (``sentence_score``). Measured by ``bench/sentences.py`` on RealTime QA passages whose
answer lies in one sentence: the vector alone marks the answering sentence in about half of them, because the
sentence that restates the question is closer in meaning than the one that answers it; the terms the answer
sentence shares with the question (names, places) pull it back.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from functools import lru_cache

import numpy as np

from search.models import Highlight
from search.text import unicode61
from search.text.chunking import Span, sentence_spans
from search.text.embedding import Embedder
from search.text.fts import stem

StoredSentences = Callable[[list[int]], dict[int, tuple[list[tuple[int, int]], np.ndarray]]]
# Query term stem -> IDF weight (``MemoryBM25.term_weights``).
TermWeights = dict[str, float]
# How much a sentence holding every query term gains over one holding none, in cosine units: chosen on the
# RealTime QA dev questions by ``bench/sentences.py`` (see bench/README.md).
LEXICAL_WEIGHT = 1.0
# Sentences whose stems are kept (``sentence_terms``): the sentences of a few thousand result passages.
SENTENCE_TERMS_CACHE = 16384


@lru_cache(maxsize=SENTENCE_TERMS_CACHE)
def sentence_terms(sentence: str) -> frozenset[str]:
    """The stems of ``sentence``'s tokens, tokenised and stemmed as the FTS5 tables are (``fts_term_counts``'s
    keys, without counting them). Kept by text: the same passages come back on many result pages, and tokenising
    and stemming their sentences was 3 ms of a search's CPU, most of its highlighting."""
    return frozenset(stem(t) for t in set(unicode61.tokens(sentence)))


def lexical_overlap(sentence: str, terms: TermWeights) -> float:
    """The IDF-weighted share of the query's terms that occur in ``sentence`` (stemmed as the BM25 side stems)."""
    total = sum(terms.values())
    if total <= 0:
        return 0.0
    present = sentence_terms(sentence)
    return sum(w for t, w in terms.items() if t in present) / total


def sentence_scores(
    vectors: np.ndarray, sentences: list[str], query: np.ndarray, terms: TermWeights | None, weight: float
) -> np.ndarray:
    """Each sentence's cosine to the query plus ``weight`` times its lexical overlap with the query's terms."""
    scores: np.ndarray = vectors @ query
    if terms and weight:
        scores = scores + weight * np.asarray([lexical_overlap(s, terms) for s in sentences], dtype=scores.dtype)
    return scores


class Highlighter:
    def __init__(
        self,
        embedder: Embedder,
        stored: StoredSentences | None = None,
        cache_size: int = 4096,
        lexical_weight: float = LEXICAL_WEIGHT,
    ) -> None:
        self._embedder = embedder
        self._lexical_weight = lexical_weight
        self._stored = stored
        self._cache: OrderedDict[int, tuple[list[Span], np.ndarray]] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()

    def locate(
        self, query: np.ndarray, passages: list[tuple[int, str]], terms: TermWeights | None = None
    ) -> list[Highlight]:
        """One highlight per (passage id, text): the span of the sentence that best answers ``query`` (its vector;
        with ``terms``, the query's weighted terms, also the terms it shares with the query)."""
        todo: list[tuple[int, str]] = []
        with self._lock:
            known = {pid: self._cache[pid] for pid, _ in passages if pid in self._cache}
            for pid in known:
                self._cache.move_to_end(pid)
        split = {pid: known[pid][0] if pid in known else sentence_spans(text) for pid, text in passages}
        wanted = [pid for pid, _ in passages if pid not in known and len(split[pid]) > 1]
        if wanted and self._stored is not None:
            for pid, (stored_spans, stored_vecs) in self._stored(wanted).items():
                if [(s.start, s.end) for s in split[pid]] == stored_spans:  # stored for this very text
                    known[pid] = (split[pid], stored_vecs)
            with self._lock:
                for pid in wanted:
                    if pid in known:
                        self._cache[pid] = known[pid]
                self._trim()
        for pid, text in passages:
            if pid not in known and len(split[pid]) > 1:
                todo.append((pid, text))
        if todo:
            sentences = [text[s.start : s.end] for pid, text in todo for s in split[pid]]
            vecs = self._embedder.encode(sentences, batch_size=64)
            i = 0
            for pid, _ in todo:
                n = len(split[pid])
                known[pid] = (split[pid], vecs[i : i + n])
                i += n
            with self._lock:
                for pid, _ in todo:
                    self._cache[pid] = known[pid]
                self._trim()
        out: list[Highlight] = []
        for pid, text in passages:
            spans = split[pid]
            if not spans:
                out.append(Highlight(0, len(text)))
            elif len(spans) == 1:
                out.append(Highlight(spans[0].start, spans[0].end))
            else:
                texts = [text[sp.start : sp.end] for sp in spans]
                best = int(np.argmax(sentence_scores(known[pid][1], texts, query, terms, self._lexical_weight)))
                out.append(Highlight(known[pid][0][best].start, known[pid][0][best].end))
        return out

    def _trim(self) -> None:
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
