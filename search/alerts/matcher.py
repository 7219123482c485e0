"""Matching a write's new articles against every saved search, in one batched pass, inside the write's transaction.

Called by the write path (indexer/update.py ``apply_changes``, through ``Store.replace_articles``' ``before_commit``)
with the rows the write inserts: every write comes through there (the API's writer, ``newsdesk add``, ``newsdesk
watch``, an incremental ``newsdesk index``), and the matches commit with the articles or not at all. A full build
bulk-loads its store without this path; one that replaces an index (``newsdesk index --rebuild``, or a re-index
that changed too much to go incrementally) copies the saved searches and their matches into the new build
(``copy_alerts``) and matches only the articles the replaced index did not hold as they are (``match_rebuilt``),
so re-indexing an archive does not flood every alert with old news, and new articles alert however they came.

Scores, all in [0, 1]-ish units so one threshold reads the same for every article:
- dense: the cosine of the saved query's vector and the article's best new passage (one matrix product: the saved
  query vectors times the write's passage vectors, then the maximum over each article's passages);
- lexical: the IDF-weighted share of the query's terms the article holds (title and body, stemmed as the BM25 side
  stems), a second product: the alerts' normalised term weights times each article's term presence. A percolator
  needs no BM25 over the new passages alone (their own document frequencies would be those of ten articles);
- hybrid: ``HYBRID_DENSE_WEIGHT`` times the dense score plus the rest times the lexical one (fusion_alpha's default).

An alert keeps the articles whose score reaches its threshold (chosen by bench/alerts.py; settings
``alert_threshold_*``), or with ``top_per_day`` the first N a day that search would count as matching (a query term,
or a passage at ``match_floor``). An article whose duplicate group or story already has an entry of that alert is
recorded grouped under that entry: shown with it, never delivered again.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from search.alerts.saved import SavedSearch, alerts_version, model_key, now_text, saved_searches, set_vectors
from search.jsontypes import JSONObject
from search.ranking.catalog import day_or_none, parse_day
from search.ranking.highlight import LEXICAL_WEIGHT, sentence_scores
from search.settings import MATCH_FLOOR
from search.storage.store import NewArticle, Store
from search.text.bm25 import Postings
from search.text.embedding import Embedder
from search.text.fts import fts_term_counts, query_terms, stem

log = logging.getLogger("newsdesk.alerts")

ANSWER_PASSAGES = 3  # passages nearest by cosine among which a match's answering passage is chosen (_answer)
REBUILD_BATCH = 500  # articles a rebuild matches at once (match_rebuilt)
HYBRID_DENSE_WEIGHT = 0.6  # the dense side's share of a hybrid alert's score (as fusion_alpha's default)
Idf = Callable[[str], float | None]  # a stemmed term's IDF in the index (None: no passage holds it)


@dataclass(frozen=True)
class Compiled:
    """The saved searches as matrices, made once per alerts version (create, delete, re-embedding)."""

    alerts: list[SavedSearch]
    vectors: np.ndarray  # (alerts, dimension)
    terms: dict[str, int]  # stemmed term -> column of ``weights``
    weights: np.ndarray  # (alerts, terms): each row the query's IDF weights, summing to 1 (0 without terms)
    dense: np.ndarray  # (alerts,) weight of the dense score
    lexical: np.ndarray  # (alerts,) weight of the lexical score
    thresholds: np.ndarray  # (alerts,) NaN for top_per_day alerts


_CACHE: dict[tuple[str, int, str], Compiled] = {}
_CACHE_LOCK = threading.Lock()


def compile_alerts(alerts: list[SavedSearch], dimension: int, idf: Idf) -> Compiled:
    """The matrices one write's pass multiplies with: made once per alerts version, not per write (each query's
    terms stemmed and weighted by the index's IDF as it was then; IDFs move slowly as a corpus grows)."""
    vectors = np.zeros((len(alerts), dimension), dtype=np.float32)
    terms: dict[str, int] = {}
    per_alert: list[dict[str, float]] = []
    for i, a in enumerate(alerts):
        if a.vector.shape == (dimension,):
            vectors[i] = a.vector
        found = {stem(t): idf(stem(t)) for t in query_terms(a.query)}
        known = [w for w in found.values() if w is not None]
        fallback = max(known) if known else 1.0  # a term no passage holds yet is at least as rare as the rarest
        weights = {t: (w if w is not None else fallback) for t, w in found.items()}
        for t in weights:
            terms.setdefault(t, len(terms))
        per_alert.append(weights)
    matrix = np.zeros((len(alerts), max(len(terms), 1)), dtype=np.float32)
    for i, weights in enumerate(per_alert):
        total = sum(weights.values())
        for t, w in weights.items():
            matrix[i, terms[t]] = w / total if total > 0 else 0.0
    modes = [a.mode for a in alerts]
    dense = np.asarray([{"dense": 1.0, "lexical": 0.0}.get(m, HYBRID_DENSE_WEIGHT) for m in modes], np.float32)
    thresholds = np.asarray([np.nan if a.threshold is None else a.threshold for a in alerts], dtype=np.float32)
    return Compiled(alerts, vectors, terms, matrix, dense, 1.0 - dense, thresholds)


def _compiled(
    conn: sqlite3.Connection, key: str, fingerprint: JSONObject, dimension: int, idf: Idf, embedder: Embedder | None
) -> Compiled | None:
    """The saved searches as matrices, from the cache while no alert was created, deleted or embedded again since
    (one small query a write). Compiling embeds again the saved queries another model made (a rebuild with a new
    model), in the caller's transaction; without an embedder (a delete) they are left out until a write has one."""
    model = model_key(fingerprint)
    version = alerts_version(conn)
    if version == 0:
        return None
    with _CACHE_LOCK:
        found = _CACHE.get((key, version, model))
    if found is None:
        alerts = saved_searches(conn)
        stale = [a for a in alerts if a.model != model]
        if stale and embedder is not None:
            vectors = embedder.encode([a.query for a in stale])
            set_vectors(conn, {a.id: v for a, v in zip(stale, vectors, strict=True)}, model)
            log.info("embedded %d saved searches again with the index's model", len(stale))
            # not cached: this transaction may still roll back, and its version number be taken by another change
            return compile_alerts(saved_searches(conn), dimension, idf)
        found = compile_alerts([a for a in alerts if a.model == model], dimension, idf)
        with _CACHE_LOCK:
            _CACHE.clear()  # one index per process is the rule; a handful of stale entries would only cost memory
            _CACHE[(key, version, model)] = found
    return found if found.alerts else None


@dataclass(frozen=True)
class _Candidate:
    alert: int  # row of ``Compiled.alerts``
    article: int  # row of the write's articles
    score: float


def match_rows(
    conn: sqlite3.Connection,
    rows: Sequence[NewArticle],
    *,
    key: str,
    fingerprint: JSONObject,
    idf: Idf,
    generation: int,
    embedder: Embedder | None = None,
    postings: Postings | None = None,
    aids: Sequence[int] = (),
    passage_postings: Postings | None = None,
    pids: Sequence[int] = (),
) -> int:
    """Score ``rows`` (the write's new and changed articles) against every saved search and record the matches in
    the open transaction of ``conn``; returns how many rows it recorded. ``key`` names the store (its path and build)
    for the cached matrices. ``postings``: the article table's BM25 postings the write built (``aids``: the rows'
    keys), whose delta already holds each new article's terms, so the lexical side tokenizes nothing again;
    ``passage_postings`` and ``pids`` the same for the passages (the answering passage's lexical bonus)."""
    if not rows:
        return 0
    dimension = int(rows[0].passage_vectors.shape[1])
    compiled = _compiled(conn, key, fingerprint, dimension, idf, embedder)
    if compiled is None:
        return 0
    terms = _terms_in(postings, aids, compiled) if postings is not None and len(aids) == len(rows) else None
    fused, dense, lexical = alert_scores(compiled, rows, terms)
    candidates = _candidates(compiled, rows, fused, dense, lexical)
    passages = _Passages(passage_postings, list(pids), rows) if passage_postings is not None else None
    return _record(conn, compiled, rows, candidates, generation, passages)


def _terms_in(postings: Postings, aids: Sequence[int], compiled: Compiled) -> list[set[str]] | None:
    """The saved searches' terms each new article holds, read from the delta segment of the write's new postings
    (its forward index: each row's term ids); None when a row is not there (tokenize instead)."""
    delta = postings.delta
    found, rows = delta.positions(aids)
    if len(found) != len(aids):
        return None
    ptr, term_ids = delta.forward()
    wanted = {tid: t for t in compiled.terms if (tid := delta.vocab.get(t)) is not None}
    out = []
    for r in rows.tolist():
        out.append({wanted[t] for t in term_ids[ptr[r] : ptr[r + 1]].tolist() if t in wanted})
    return out


def article_terms(rows: Sequence[NewArticle]) -> list[set[str]]:
    """Each article's stemmed terms (title and body), tokenized as the BM25 side tokenizes."""
    return [set(fts_term_counts(r.article.title + "\n" + r.article.body)[1]) for r in rows]


def alert_scores(
    compiled: Compiled, rows: Sequence[NewArticle], terms: list[set[str]] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(alerts x articles) fused scores, dense scores and lexical scores (``terms``: ``article_terms(rows)``)."""
    counts = np.asarray([len(r.passages) for r in rows], dtype=np.int64)
    passages = np.concatenate([r.passage_vectors for r in rows]).astype(np.float32, copy=False)
    starts = np.cumsum(counts) - counts
    sims = compiled.vectors @ passages.T  # (alerts, passages)
    dense = np.maximum.reduceat(sims, starts, axis=1) if len(passages) else np.zeros((len(compiled.alerts), 0))
    presence = np.zeros((len(rows), compiled.weights.shape[1]), dtype=np.float32)
    for j, found in enumerate(article_terms(rows) if terms is None else terms):
        presence[j, [compiled.terms[t] for t in found if t in compiled.terms]] = 1.0
    lexical = compiled.weights @ presence.T  # (alerts, articles)
    fused = compiled.dense[:, None] * dense + compiled.lexical[:, None] * lexical
    return fused, dense, lexical


def _candidates(
    compiled: Compiled, rows: Sequence[NewArticle], scores: np.ndarray, dense: np.ndarray, lexical: np.ndarray
) -> list[_Candidate]:
    thresholds = compiled.thresholds[:, None]
    keep = np.where(np.isnan(thresholds), False, scores >= np.nan_to_num(thresholds, nan=np.inf))
    top = np.isnan(compiled.thresholds)
    if top.any():  # top_per_day: what search counts as matching in the alert's mode
        by_terms = (lexical > 0) & (compiled.lexical[:, None] > 0)
        by_meaning = (dense >= MATCH_FLOOR) & (compiled.dense[:, None] > 0)
        keep[top] = (by_terms | by_meaning)[top]
    out: list[_Candidate] = []
    for i, j in zip(*np.nonzero(keep), strict=True):
        alert = compiled.alerts[int(i)]
        if _passes(alert, rows[int(j)]):
            out.append(_Candidate(int(i), int(j), float(scores[i, j])))
    out.sort(key=lambda c: (c.alert, -c.score, c.article))
    return out


def _passes(alert: SavedSearch, row: NewArticle) -> bool:
    """Whether the article passes the alert's filters, as search's filters read them (search/ranking/catalog.py)."""
    f = alert.filters
    a = row.article
    if f["from"] or f["to"]:
        day = day_or_none(a.date)
        if day is None:
            return False
        if f["from"] and day < parse_day(f["from"], "from"):
            return False
        if f["to"] and day > parse_day(f["to"], "to"):
            return False
    if f["source"] and (a.source or "").casefold() not in {s.casefold() for s in f["source"]}:
        return False
    return not f["category"] or bool({t.casefold() for t in a.tags} & {c.casefold() for c in f["category"]})


def _record(
    conn: sqlite3.Connection,
    compiled: Compiled,
    rows: Sequence[NewArticle],
    candidates: list[_Candidate],
    generation: int,
    passages: _Passages | None = None,
) -> int:
    recorded = 0
    at = now_text()
    today = at[:10]
    for c in candidates:
        alert = compiled.alerts[c.alert]
        row = rows[c.article]
        a = row.article
        known = conn.execute("SELECT 1 FROM alert_matches WHERE alert = ? AND article = ?", (alert.id, a.id)).fetchone()
        if known is not None:  # a changed version of an article already reported
            continue
        day = a.date[:10] if a.date else today
        parent = _entry_of(conn, alert.id, row)
        if parent is None and alert.top_per_day is not None:
            n = conn.execute(
                "SELECT COUNT(*) FROM alert_matches WHERE alert = ? AND day = ? AND parent IS NULL", (alert.id, day)
            ).fetchone()[0]
            if int(n) >= alert.top_per_day:
                continue
        held = passages.terms(c.article, _query_terms(compiled, c.alert)) if passages is not None else None
        passage, (start, end) = _answer(row, compiled, c.alert, held)
        delivery = "pending" if alert.webhook and parent is None else None
        conn.execute(
            "INSERT INTO alert_matches (alert, article, title, date, source, url, story, duplicates, score, passage, "
            "sentence_start, sentence_end, day, parent, matched_at, generation, delivery, next_attempt) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                alert.id,
                a.id,
                a.title,
                a.date,
                a.source,
                a.url,
                row.story,
                row.duplicates if row.duplicates is not None else a.id,
                c.score,
                passage,
                start,
                end,
                day,
                parent,
                at,
                generation,
                delivery,
                time.time() if delivery else None,
            ),
        )
        recorded += 1
    return recorded


def _entry_of(conn: sqlite3.Connection, alert: int, row: NewArticle) -> int | None:
    """The entry of ``alert`` this article collapses under: the first one of its duplicate group, else of its
    story; None when it is news to the alert. An earlier match belongs to the group by the labels it matched with,
    or by its article's labels now (a rebuild labels its stories anew, under other names)."""
    dup = row.duplicates if row.duplicates is not None else row.article.id
    for column, label in (("duplicates", dup), ("story", row.story)):
        if label is None:
            continue
        found = conn.execute(
            f"SELECT COALESCE(m.parent, m.id) FROM alert_matches m WHERE m.alert = ? AND m.{column} = ? "
            "UNION ALL SELECT COALESCE(m.parent, m.id) FROM alert_matches m JOIN articles a ON a.id = m.article "
            f"JOIN article_groups g ON g.aid = a.aid WHERE m.alert = ? AND g.{column} = ? ORDER BY 1 LIMIT 1",
            (alert, label, alert, label),
        ).fetchone()
        if found is not None:
            return int(found[0])
    return None


@dataclass(frozen=True)
class _Passages:
    """The write's new passages in its BM25 postings, for the answering passage's lexical bonus: which of a query's
    few terms each passage of a matched article holds, read from those terms' postings in the delta segment (the
    write's rows are there; a forward index of the whole delta would cost a sort of it on every write)."""

    postings: Postings
    pids: list[int]  # the write's new passage ids, article after article
    rows: Sequence[NewArticle]

    def terms(self, article: int, wanted: Iterable[str]) -> list[set[str]] | None:
        start = sum(len(r.passages) for r in self.rows[:article])
        ids = self.pids[start : start + len(self.rows[article].passages)]
        delta = self.postings.delta
        found, rows = delta.positions(ids)
        if len(ids) != len(self.rows[article].passages) or len(found) != len(ids):
            return None
        out: list[set[str]] = [set() for _ in ids]
        for term in wanted:
            tid = delta.vocab.get(term)
            if tid is None or tid + 1 >= len(delta.indptr):
                continue
            holders = delta.docs[delta.indptr[tid] : delta.indptr[tid + 1]]
            for j in np.flatnonzero(np.isin(rows, holders)).tolist():
                out[j].add(term)
        return out


def _query_terms(compiled: Compiled, i: int) -> dict[str, float]:
    """Saved search ``i``'s stemmed terms with their normalised IDF weights."""
    names = list(compiled.terms)  # column order: terms were numbered as they were first met
    return {names[c]: float(compiled.weights[i, c]) for c in np.flatnonzero(compiled.weights[i]).tolist()}


def _answer(row: NewArticle, compiled: Compiled, i: int, held: list[set[str]] | None) -> tuple[str, tuple[int, int]]:
    """The article's passage that best answers the alert and the sentence in it, as search marks them: the query's
    cosine plus the lexical bonus, the IDF-weighted share of its terms held (search/ranking/highlight.py). Each
    passage's terms come from the write's postings (``held``); without them the bonus tokenizes each passage, so
    only the ``ANSWER_PASSAGES`` nearest by cosine are weighed (over a long article's every passage it cost most of
    a write's matching pass, bench/alerts.py)."""
    qvec = compiled.vectors[i]
    terms = _query_terms(compiled, i)
    texts = [p[4] for p in row.passages]
    cosines = row.passage_vectors @ qvec
    if held is not None:
        total = sum(terms.values()) or 1.0
        shares = np.asarray([sum(w for t, w in terms.items() if t in h) / total for h in held], dtype=cosines.dtype)
        best = int(np.argmax(cosines + LEXICAL_WEIGHT * shares))
    else:
        near = np.argsort(-cosines, kind="stable")[:ANSWER_PASSAGES]
        weighed = sentence_scores(row.passage_vectors[near], [texts[k] for k in near], qvec, terms, LEXICAL_WEIGHT)
        best = int(near[int(np.argmax(weighed))])
    text = texts[best]
    spans = list(row.sentences)[best] if len(row.sentences) > best else None
    if spans is None or not spans[0]:
        return text, (0, len(text))
    pairs, vectors = spans
    sentences = [text[s:e] for s, e in pairs]
    pick = int(np.argmax(sentence_scores(vectors.astype(np.float32), sentences, qvec, terms, LEXICAL_WEIGHT)))
    return text, pairs[pick]


def copy_alerts(source: sqlite3.Connection, target: sqlite3.Connection) -> int:
    """Copy every saved search, its matches and the delivery counters from the store a full build replaces into the
    new build's (indexer/build.py, under the old store's write lock before the swap): saved searches live in the
    index, and a rebuild must not drop them. Returns how many saved searches were copied."""
    try:
        alerts = source.execute("SELECT * FROM alerts").fetchall()
        matches = source.execute("SELECT * FROM alert_matches ORDER BY id").fetchall()
        counts = source.execute("SELECT name, value FROM alert_counts").fetchall()
    except sqlite3.OperationalError:  # a store from before saved searches
        return 0
    with target:
        for table, found in (("alerts", alerts), ("alert_matches", matches), ("alert_counts", counts)):
            if found:
                marks = ",".join("?" * len(found[0]))
                target.executemany(f"INSERT OR REPLACE INTO {table} VALUES ({marks})", found)
    return len(alerts)


def match_rebuilt(old: Store, new: Store, fingerprint: JSONObject, idf: Idf) -> int:
    """Match, in a full build that replaces an index, the articles the replaced index did not hold as they are
    (new ids, or changed text): what an incremental re-index would have written. The articles both hold unchanged
    match nothing again, so re-indexing an archive floods no alert. Called under the old store's write lock before
    the swap, after ``copy_alerts`` (indexer/build.py); returns how many matches it recorded."""
    conn = new.connection()
    if alerts_version(conn) == 0:
        return 0
    before = old.article_hashes()
    fresh = [i for i, h in new.article_hashes().items() if before.get(i) != h]
    if not fresh:
        return 0
    recorded = 0
    key = f"{new.path}:{new.build}"
    for start in range(0, len(fresh), REBUILD_BATCH):  # the rows carry every passage vector: a batch at a time
        ids = fresh[start : start + REBUILD_BATCH]
        keys = {i: new.aid_of(i) for i in ids}
        labels = new.groups_of(k for k in keys.values() if k is not None)
        rows = []
        for r in new.stored_rows(ids):
            story, dup = labels.get(keys.get(r.article.id) or -1, (None, None))
            rows.append(replace(r, story=story, duplicates=dup))
        with conn:
            generation = new.generation()
            recorded += match_rows(conn, rows, key=key, fingerprint=fingerprint, idf=idf, generation=generation)
    return recorded
