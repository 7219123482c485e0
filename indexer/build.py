"""Building an index: read sources, chunk, embed in batches, write a new index directory, swap it in.

The new directory is complete (SQLite committed, FAISS written, manifest last) before it replaces the old one, so
an interrupted or failed build leaves whatever index was there before untouched.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from search.alerts.matcher import copy_alerts, match_rebuilt
from search.errors import InvalidInput, NewsdeskError, SourceError, StaleIndex
from search.jsontypes import JSONObject, JSONValue
from search.models import Article
from search.news.dedup import DedupIndex
from search.news.grouping import label_unlabelled, save_duplicates
from search.news.neighbours import DEFAULT_NEIGHBOURS, load_graph
from search.ranking.catalog import ArticleCatalog
from search.ranking.paging import new_key
from search.settings import Settings
from search.storage.files import directory_writable
from search.storage.index import FORMAT_VERSION, SQLITE, building, now_iso
from search.storage.manifest import Manifest, read_manifest, write_manifest
from search.storage.store import NewArticle, SentenceVectors, Store
from search.text.bm25 import LexicalPostings
from search.text.chunking import Chunk, Chunker, sentence_spans
from search.text.embedding import Embedder, SentenceTransformerEmbedder, make_embedder
from search.vectors.base import IndexVectors
from search.vectors.factory import backend, backend_of, faiss_entry, open_vectors


@dataclass
class BuildReport:
    articles: int = 0
    passages: int = 0
    embedded: int = 0
    duplicate_ids: int = 0
    skipped_empty: int = 0
    sources: list[str] = field(default_factory=list)


def make_chunker(settings: Settings, embedder: Embedder) -> Chunker:
    max_tokens = settings.max_passage_tokens
    limit = getattr(embedder, "max_seq_length", None)
    if limit:
        # Leave room for the headline prefix when title context is on, so nothing gets truncated by the model.
        max_tokens = min(max_tokens, int(limit) - (48 if settings.title_context else 2))
    return Chunker(max_tokens=max_tokens, min_chars=settings.min_passage_chars, count_tokens=embedder.count_tokens)


def embedding_input(article: Article, chunk: Chunk, title_context: bool) -> str:
    """What the model sees for a passage: body passages carry their headline when ``title_context`` is on."""
    return input_text(article.title, chunk.field, chunk.text, title_context)


def input_text(title: str, field: str, text: str, title_context: bool) -> str:
    """``embedding_input`` from stored columns, so a re-index can match old vectors to new passages."""
    if title_context and field == "body" and title:
        return f"{title}\n{text}"
    return text


def lead_limit(embedder: Embedder, settings: Settings) -> int:
    """Tokens the article vector's input may hold: the model's window (``max_seq_length``), since what does not fit
    is truncated by the model anyway; a model that states none (a test's stand-in) gets ``max_passage_tokens``."""
    limit = getattr(embedder, "max_seq_length", None)
    return int(limit) if limit else settings.max_passage_tokens


def lead_input(article: Article, limit: int, count_tokens: Callable[[str], int]) -> str:
    """What the model sees for the article vector: the headline and the opening sentences, in order, as many whole
    sentences as fit ``limit`` tokens, as ONE input (issue 18).

    One embedding of an article's opening represents it better than the mean of its passage vectors (BBC section
    precision@5 by cosine 0.931 against 0.924, bench/mlt_transfer.py): a news story states its subject in the
    headline and first sentences, and the mean also averages in the digressions of its later paragraphs. Tokens
    are counted a sentence at a time (a word-piece count is additive over whitespace-separated words;
    ``count_tokens("")`` is the special tokens every input carries, counted once). The first sentence is kept even
    when it alone is too long (the model truncates it), so a body without sentence ends still gives its opening."""
    title = article.title.strip()
    special = count_tokens("")
    used = count_tokens(title) if title else special
    kept: list[str] = []
    for paragraph in article.paragraphs:
        text = paragraph.strip()
        if not text:
            continue
        end = 0
        for span in sentence_spans(text):
            n = count_tokens(text[span.start : span.end]) - special
            if used + n > limit and (kept or end):
                break
            used += n
            end = span.end
        else:
            kept.append(text[:end] if end else text)
            continue
        if end:
            kept.append(text[:end])
        break
    return "\n".join([t for t in (title, *kept) if t])


LEAD_TOKENS = "lead_tokens"  # the chunking entry that says the article vectors are of headline + lead (issue 18)


def chunking_config(chunker: Chunker, settings: Settings, embedder: Embedder) -> dict[str, int | bool]:
    """What decides the passages, the article vectors and their embedding inputs; recorded in the manifest, compared
    by a re-index. A manifest without ``lead_tokens`` is of an index whose article vectors are the mean of its
    passage vectors (before issue 18): ``lead_vectors_stale`` says so, and a re-index rebuilds it."""
    return {
        "max_tokens": chunker.max_tokens,
        "max_passage_tokens": settings.max_passage_tokens,
        "min_chars": chunker.min_chars,
        "title_context": settings.title_context,
        LEAD_TOKENS: lead_limit(embedder, settings),
    }


def lead_vectors_stale(manifest: Manifest) -> str | None:
    """Why the index's article vectors are not the headline + lead embeddings this code writes, or None when they
    are. Such an index keeps working: a write stores its new articles' ``mean_vector`` (indexer/update.py), the
    kind its other articles hold, since the cosine of a lead vector with a mean vector means nothing; ``newsdesk
    index`` rebuilds it (indexer/sync.py), which is how it moves to headline + lead vectors."""
    if LEAD_TOKENS in (manifest.get("chunking") or {}):
        return None
    return "the index's article vectors are means of passage vectors (it was built before issue 18)"


def mean_vector(vectors: np.ndarray, dimension: int) -> np.ndarray:
    """The normalised mean of an article's passage vectors: its article vector in an index built before issue 18,
    still what a write stores into such an index (``lead_vectors_stale``) so that it holds one kind of vector."""
    if len(vectors) == 0:
        return np.zeros(dimension, dtype=np.float32)
    mean = vectors.mean(axis=0)
    norm = float(np.linalg.norm(mean))
    out: np.ndarray = (mean / norm if norm > 0 else mean).astype(np.float32)
    return out


def dedupe_articles(articles: Iterable[Article], report: BuildReport) -> list[Article]:
    """A later record with an id already seen replaces the earlier one, as in a document store's upsert."""
    by_id: dict[str, Article] = {}
    for a in articles:
        if a.id in by_id:
            report.duplicate_ids += 1
            del by_id[a.id]  # keep source order of the surviving record
        by_id[a.id] = a
    return list(by_id.values())


def build_index(
    articles: Iterable[Article],
    target: Path,
    settings: Settings,
    embedder: Embedder | None = None,
    *,
    progress: bool | None = None,
    sources: list[str] | None = None,
    embed_groups: GroupEmbedder | None = None,
    origins: Mapping[str, str] | None = None,
    since: Snapshot | None = None,
) -> BuildReport:
    """Build a complete index at ``target`` from ``articles`` and swap it in atomically. ``origins`` records where
    articles that did not come from the sources came from (``newsdesk add``, the API: kept by ``--keep-missing``).

    Writes committed into the index being replaced after ``since`` (when the caller began reading it; by default
    when this build begins) are carried into the new build, the last of them under that store's write lock held
    across the swap, so a write acknowledged during the build is never lost with the old store (``_Previous``).

    ``embed_groups`` chunks and embeds the groups of ``settings.batch_articles`` articles somewhere else (``newsdesk
    index --ray``: on Ray actors); ``embedder`` then only needs to describe the model (name, dimension, fingerprint)."""
    embedder = embedder or make_embedder(settings)
    report = BuildReport(sources=list(sources or []))
    items = dedupe_articles(articles, report)
    if not items:
        raise SourceError("the sources hold no articles (every record was empty or there were no records)")
    chunker = make_chunker(settings, embedder)
    chunking = chunking_config(chunker, settings, embedder)
    fingerprint = embedder.fingerprint()
    # where vectors live, checked (a server that does not answer) before anything is embedded
    vector_store = backend(settings.store).entry(settings, target, embedder.dimension)
    replaced = _replaced_manifest(target)
    previous = _Previous.of(target, since)
    opened: IndexVectors | None = None
    generation = 0
    carried = 0  # the generation of the previous store up to which its writes are in the new one

    def rows_for(rows: list[NewArticle]) -> list[NewArticle]:
        """Rows copied from the previous store as they are, or embedded again where the model or chunking changed."""
        if previous is None or previous.same_vectors(fingerprint, chunking) or not rows:
            return rows
        fresh, _ = next(
            iter((embed_groups or local_groups(chunker, embedder, settings))([[r.article for r in rows]], None))
        )
        return [replace(f, origin=r.origin) for f, r in zip(fresh, rows, strict=True)]

    def last_writes() -> None:
        """Under the previous store's write lock, held until after the swap: its writes since the first carry."""
        if previous is None:
            return
        held.enter_context(previous.store.locked())
        previous.carry(store, carried, rows_for)
        copy_alerts(previous.store.connection(), store.connection())  # saved searches live in the index
        match_rebuilt(previous.store, store, manifest["model"], postings.passages.term_idf)  # its new articles
        report.articles, report.passages = store.counts()
        store.close()

    held = contextlib.ExitStack()
    try:
        with held, building(target, last_writes) as work:
            store = Store(work / SQLITE, create=True)
            try:
                groups = article_groups(items, settings.batch_articles)
                embed = embed_groups or local_groups(chunker, embedder, settings)
                with IndexProgress(len(items), "indexing", progress, embedder) as bar:
                    for group, (rows, embedded) in zip(groups, embed(groups, None), strict=True):
                        report.embedded += embedded
                        store.add_articles(rows)
                        bar.articles(len(group))
                if origins:
                    store.set_origins(dict(origins))
                if previous is not None:  # most of what was written meanwhile, before the caches are made
                    carried = previous.carry(store, previous.since, rows_for)
                report.articles, report.passages = store.counts()
                manifest: Manifest = {
                    "format_version": FORMAT_VERSION,
                    "name": target.name,
                    "build": store.build,  # as in SQLite's meta: which build a directory holds (open_index checks)
                    "model": fingerprint,
                    "chunking": chunking,
                    "faiss": faiss_entry(settings),
                    **vector_store,  # "store" and the backend's own entry (Milvus: "milvus")
                    "counts": {"articles": report.articles, "passages": report.passages},
                    "newest_date": store.newest_date(),
                    "sources": report.sources,
                    "created_at": now_iso(),
                    "updated_at": now_iso(),
                    "cursor_key": new_key(),  # paging.KEY_FIELD: signs search cursors; a new build ends every walk
                }
                # the backend's vectors (FAISS files, or Milvus collections), this generation
                opened = open_vectors(work, store, manifest, records=False)
                article_vectors = opened.articles
                dedup = DedupIndex()  # stories and duplicate groups, once every article is written
                store.set_groups(label_unlabelled(ArticleCatalog.load(store), article_vectors, store, dedup))
                save_duplicates(work, dedup, store.generation())
                postings = LexicalPostings.build(store)  # the in-memory BM25's postings, for this generation
                postings.save(work)
                load_graph(
                    work, store, article_vectors, postings.articles, DEFAULT_NEIGHBOURS
                )  # more-like-this profiles
                opened.fill(store, manifest)  # text, fields and labels for stateless replicas (Milvus)
                write_manifest(work, manifest)
                generation = store.generation()
            finally:
                store.close()
        if opened is not None:  # replicas (search/vectors/milvus/replica.py) move to the new build, then the old goes
            opened.publish(generation, manifest, take_over=True)
    finally:
        if opened is not None:
            opened.close()  # Milvus: the connection, and an in-process Milvus Lite's directory lock
        if previous is not None:
            previous.store.close()
    if replaced is not None:
        backend_of(replaced).drop_replaced(replaced, target)
    return report


@dataclass(frozen=True)
class Snapshot:
    """Where a full build began reading the index it replaces: that store's build id and generation."""

    build: str
    generation: int

    @staticmethod
    def of(store: Store) -> Snapshot:
        return Snapshot(store.build, store.generation())


@dataclass(frozen=True)
class _Previous:
    """The index a full build replaces, whose writers (a server's POSTs, ``newsdesk add``) go on committing into it
    while the build runs. Every write records its article ids in the store's change log (search/storage/store.py); the
    build copies the articles written after ``since`` into its own store twice: once before its caches are made
    (most of them, unlocked), then the rest under the old store's write lock, which it holds across the swap. A
    writer waiting on that lock then finds the directory swapped and catches up onto the new build (indexer/update.py
    ``apply_changes``). Copied articles keep their passages and vectors where the model and chunking are the same,
    and are embedded again otherwise; a deleted one is deleted from the new build."""

    store: Store
    manifest: Manifest
    since: int

    @staticmethod
    def of(target: Path, since: Snapshot | None) -> _Previous | None:
        """The index at ``target`` if its store can be written (nobody writes there otherwise), asked as
        ``open_index`` asks it (``directory_writable``)."""
        directory = target.absolute().resolve()
        try:
            manifest = read_manifest(directory)
            if not directory_writable(directory, directory / SQLITE):
                return None
            store = Store(directory / SQLITE)
        except NewsdeskError:
            return None
        if since is not None and since.build != store.build:
            store.close()
            raise StaleIndex(f"{target} was replaced by another build while this one read it; run the build again")
        return _Previous(store, manifest, since.generation if since is not None else store.generation())

    def same_vectors(self, fingerprint: JSONObject, chunking: dict[str, int | bool]) -> bool:
        """Whether the new build would give the copied articles the very passages and vectors they have: the same
        model files, backend (and int8 preset) and chunking. The probe vectors are left out: they only tell close
        models apart, and the same files on the same backend are the same model."""

        def recorded(value: object) -> JSONValue:  # as the manifest holds it (JSON: lists, not tuples)
            return json.loads(json.dumps(value))

        model = {k: v for k, v in recorded(fingerprint).items() if k != "probe"}
        old = {k: v for k, v in (self.manifest.get("model") or {}).items() if k != "probe"}
        return bool(model.get("files_sha256")) and model == old and self.manifest.get("chunking") == recorded(chunking)

    def carry(self, new: Store, since: int, rows_for: Callable[[list[NewArticle]], list[NewArticle]]) -> int:
        """Bring the articles written here after generation ``since`` into ``new`` as they are now (deleted ones
        deleted); returns the generation read first, the ``since`` of the next carry."""
        mark = self.store.generation()
        ids = self.store.changed_since(since)
        if ids:
            new.replace_articles(ids, rows_for(self.store.stored_rows(ids)))
        return mark


class IndexProgress:
    """What an indexing run shows while it embeds: on a terminal a tqdm bar over articles whose passage count moves
    after every forward pass (the bar itself moves per group of ``batch_articles``, 512 by default, which on a slow
    machine is minutes); elsewhere (a log file, CI, ``nohup``) a line every ``LOG_EVERY_S`` seconds and one at the
    end, as a bar's carriage returns make an unreadable log. ``mode``: None picks by the stream, True a bar, False
    nothing."""

    LOG_EVERY_S = 10.0

    def __init__(self, total: int, desc: str, mode: bool | None, embedder: Embedder | None = None) -> None:
        self.total, self.desc, self.embedder = total, desc, embedder
        self.done = self.passages_done = 0
        self.kind = "bar" if mode or (mode is None and sys.stderr.isatty()) else "lines" if mode is None else "off"
        self.started = self.logged = time.monotonic()
        self.bar = tqdm(total=total, unit="article", desc=desc, disable=self.kind != "bar", file=sys.stderr)

    def __enter__(self) -> IndexProgress:
        if self.kind != "off" and isinstance(self.embedder, SentenceTransformerEmbedder):
            self.embedder.on_batch = self.passages
        return self

    def __exit__(self, *exc: object) -> None:
        if isinstance(self.embedder, SentenceTransformerEmbedder):
            self.embedder.on_batch = None
        self.bar.close()
        if self.kind == "lines" and exc[0] is None:
            self._line()

    def passages(self, n: int) -> None:
        """``n`` more passages embedded (one forward pass)."""
        self.passages_done += n
        if self.kind == "bar":
            self.bar.set_postfix(passages=self.passages_done, refresh=True)
        self._maybe_log()

    def articles(self, n: int) -> None:
        """``n`` more articles written."""
        self.done += n
        self.bar.update(n)
        self._maybe_log()

    def _maybe_log(self) -> None:
        if self.kind == "lines" and time.monotonic() - self.logged >= self.LOG_EVERY_S:
            self._line()

    def _line(self) -> None:
        self.logged = time.monotonic()
        elapsed = max(self.logged - self.started, 1e-9)
        print(
            f"{self.desc}: {self.done}/{self.total} articles, {self.passages_done} passages embedded "
            f"({self.passages_done / elapsed:.0f} passages/s, {elapsed:.0f} s)",
            file=sys.stderr,
            flush=True,
        )


def _replaced_manifest(target: Path) -> Manifest | None:
    """The manifest of the index a build will replace, whose backend may keep data outside its directory (Milvus
    collections) that goes when it does."""
    try:
        return read_manifest(target.absolute())
    except NewsdeskError:
        return None


Reusable = tuple[np.ndarray, SentenceVectors | None]  # a passage's vector and its sentence vectors


def new_articles(
    articles: list[Article],
    chunker: Chunker,
    embedder: Embedder,
    settings: Settings,
    known: Mapping[str, Reusable] | None = None,
) -> tuple[list[NewArticle], int]:
    """Chunk and embed articles into rows ready for the store; returns (rows, number of texts embedded). Each
    row's article vector is the embedding of its headline and lead (``lead_input``), from the same batches.

    ``known`` maps embedding inputs to vectors already computed (an incremental re-index passes the old vectors
    of changed articles), so an unchanged paragraph of an edited article is not embedded again."""
    chunked = [(a, chunker.chunk(a)) for a in articles]
    limit = lead_limit(embedder, settings)
    leads = [lead_input(a, limit, embedder.count_tokens) for a in articles]
    vectors, sentences, lead_vectors, embedded = _embed(chunked, embedder, settings, known, leads)
    rows: list[NewArticle] = []
    i = 0
    for (a, chunks), article_vector in zip(chunked, lead_vectors, strict=True):
        rows.append(
            NewArticle(
                article=a,
                passages=[(c.position, c.field, c.start, c.end, c.text) for c in chunks],
                passage_vectors=vectors[i : i + len(chunks)],
                article_vector=article_vector,
                sentences=sentences[i : i + len(chunks)],
            )
        )
        i += len(chunks)
    return rows, embedded


class GroupEmbedder(Protocol):
    """Chunks and embeds groups of articles, yielding ``(rows, number of texts embedded)`` per group, in order.

    The indexer embeds a corpus group by group (``article_groups``) so memory stays bounded. ``local_groups`` does it
    in this process; ``indexer/distributed.py`` runs ``new_articles`` on the very same groups on Ray actors, which
    keeps the vectors equal: the int8 backend's vector of a text depends a little on the texts embedded with it."""

    def __call__(
        self, groups: list[list[Article]], known: Mapping[str, Reusable] | None
    ) -> Iterator[tuple[list[NewArticle], int]]: ...


def local_groups(chunker: Chunker, embedder: Embedder, settings: Settings) -> GroupEmbedder:
    """The in-process ``GroupEmbedder``: ``new_articles`` on each group in turn."""

    def embed(
        groups: list[list[Article]], known: Mapping[str, Reusable] | None
    ) -> Iterator[tuple[list[NewArticle], int]]:
        for group in groups:
            yield new_articles(group, chunker, embedder, settings, known)

    return embed


def article_groups(items: list[Article], size: int) -> list[list[Article]]:
    """``items`` cut into consecutive groups of ``size`` (the ``batch_articles`` setting), the last one shorter."""
    if size < 1:
        raise InvalidInput(f"setting batch_articles must be at least 1, got {size}")
    return [items[i : i + size] for i in range(0, len(items), size)]


def _embed(
    chunked: list[tuple[Article, list[Chunk]]],
    embedder: Embedder,
    settings: Settings,
    known: Mapping[str, Reusable] | None = None,
    leads: list[str] | None = None,
) -> tuple[np.ndarray, list[SentenceVectors | None], np.ndarray, int]:
    """Vectors for every chunk in order, with the sentence vectors of multi-sentence chunks from the same forward
    pass (``Embedder.encode_spans``), and a vector for each of ``leads`` (the article vectors' inputs) from the same
    batches; identical inputs are embedded once (a short article's lead is often its one body passage's input) and
    ``known`` ones not at all. Returns (vectors, sentences, lead vectors, number embedded)."""
    known = known or {}
    leads = leads or []
    inputs: list[str] = []
    spans: dict[str, list[tuple[int, int]]] = {}  # sentence spans of each input, relative to the chunk text
    prefix: dict[str, int] = {}  # the chunk text ends its input; a headline and a newline may come first
    for a, chunks in chunked:
        for c in chunks:
            text = embedding_input(a, c, settings.title_context)
            inputs.append(text)
            if text not in spans:
                sentences = sentence_spans(c.text)
                spans[text] = [(s.start, s.end) for s in sentences] if len(sentences) > 1 else []
                prefix[text] = len(text) - len(c.text)
    for text in leads:
        if text not in spans:  # a lead needs no sentence vectors, unless it is also a passage's input
            spans[text], prefix[text] = [], 0
    empty = np.zeros((0, embedder.dimension), dtype=np.float32)
    if not inputs and not leads:
        return empty, [], empty, 0
    unique = [t for t in dict.fromkeys([*inputs, *leads]) if t not in known]
    shifted = [[(prefix[t] + a, prefix[t] + b) for a, b in spans[t]] for t in unique]
    vecs, span_vecs = embedder.encode_spans(unique, shifted, batch_size=settings.batch_size)
    found: dict[str, Reusable] = {
        t: (v, (spans[t], sv) if spans[t] else None) for t, v, sv in zip(unique, vecs, span_vecs, strict=True)
    }
    found.update({t: known[t] for t in [*inputs, *leads] if t not in found})
    out = np.stack([found[t][0] for t in inputs]).astype(np.float32, copy=False) if inputs else empty
    lead_out = np.stack([found[t][0] for t in leads]).astype(np.float32, copy=False) if leads else empty
    return out, [found[t][1] for t in inputs], lead_out, len(unique)
