"""Stateless serving: an index opened from Milvus alone, with no index directory (issue 8).

``newsdesk serve --milvus-uri URI --collections newsdesk_<name>`` serves the index whose meta collection is
``newsdesk_<name>_meta`` (search/vectors/milvus/records.py). At start, and again whenever the published state changes
(a write,
or a rebuild pointing at new collections), the replica reads from the engine what the query side keeps in memory:

- every article record: the catalog (dates, sources, tags, labels), article references, and the article texts;
- every passage's owner, and (unless the lexical side is the engine's, see below) its text;
- then builds the BM25 postings, the passage owners, the catalog and the more-like-this profiles in memory, as a
  directory index builds them from SQLite, and opens the two vector collections.

Per request it reads from Milvus what a page shows: passage texts, sentence vectors, full articles; vectors come
from the vector collections. Nothing is written: a replica refuses writes (they go through the indexer, which owns
SQLite, or a server on the index directory), and every replica that loaded one published state answers alike.

The lexical side is the in-memory BM25 (``search/text/bm25.py``) built from the engine's text, the same postings as
SQLite FTS5 gives a directory index (Porter stemming), so a replica ranks exactly as the writer does.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from search.errors import IndexCorrupt, IndexMissing, NotFound, WritesDisabled
from search.jsontypes import JSONObject
from search.models import Article, ArticleRef, Passage
from search.news.neighbours import DEFAULT_NEIGHBOURS, NeighbourGraph
from search.ranking.catalog import ArticleCatalog
from search.storage.index import Index, PassageOwners
from search.storage.manifest import Manifest
from search.storage.store import ArticleText, CatalogRow, SentenceVectors, StoredPassage
from search.text.bm25 import LexicalPostings, Postings
from search.text.embedding import Embedder, check_compatible
from search.vectors.milvus.client import MilvusConnection
from search.vectors.milvus.config import ARTICLE_INDEX, MilvusConfig, meta_name
from search.vectors.milvus.records import (
    RecordCollection,
    decode_sentences,
    read_manifest_record,
    read_state,
)
from search.vectors.milvus.repair import MilvusVectors
from search.vectors.milvus.vectors import MilvusVectorStore

LOAD_TRIES = 5  # a load that saw the published state move under it (a write landed meanwhile) starts again


def meta_collection(name: str) -> str:
    """``--collections`` as given: a meta collection's name, or the ``newsdesk_<name>`` prefix, or an index name."""
    if name.endswith("_meta"):
        return name
    return meta_name(name.removeprefix("newsdesk_"))


class MilvusReadStore:
    """The ``Store`` read interface over one published state of an index on Milvus. What every request needs
    (catalog rows, references, owners, counts) is held from the load; passage texts, sentence vectors and whole
    articles are read from the record collections per request."""

    def __init__(
        self,
        generation: int,
        articles: dict[int, JSONObject],
        owners: tuple[np.ndarray, np.ndarray],
        collections: dict[str, RecordCollection],
        vectors: tuple[MilvusVectorStore, MilvusVectorStore],
    ) -> None:
        self._generation = generation
        self._collections = collections
        self._passage_vectors, self._article_vectors = vectors
        self._owners = owners
        keys = sorted(articles)
        self._ids = {aid: str(articles[aid]["id"]) for aid in keys}
        self._aid_of = {article_id: aid for aid, article_id in self._ids.items()}
        self._refs = {
            aid: ArticleRef(
                id=str(doc["id"]), title=doc["title"], date=doc["date"], source=doc["source"], url=doc["url"]
            )
            for aid, doc in articles.items()
        }
        self._hashes = {aid: str(doc.get("content_hash") or "") for aid, doc in articles.items()}
        self._catalog_rows: list[CatalogRow] = [
            (aid, articles[aid]["date"], articles[aid]["source"], tuple(articles[aid]["tags"]), self._ids[aid])
            for aid in keys
        ]
        self._groups = {
            aid: (str(doc["story"]), str(doc["duplicates"]))
            for aid, doc in articles.items()
            if doc.get("story") is not None
        }
        dates = [d for d in (doc["date"] for doc in articles.values()) if d]
        self._newest = max(dates) if dates else None

    # -- what the service reads ------------------------------------------------------------------------------

    def generation(self) -> int:
        """The generation of the published state this store was loaded from."""
        return self._generation

    def counts(self) -> tuple[int, int]:
        return len(self._ids), len(self._owners[0])

    def groups(self) -> dict[int, tuple[str, str]]:
        return dict(self._groups)

    def newest_date(self) -> str | None:
        return self._newest

    def aid_of(self, article_id: str) -> int | None:
        return self._aid_of.get(article_id)

    def article(self, aid: int) -> Article:
        doc = self._collections["article_rows"].get([aid]).get(int(aid))
        if doc is None:  # deleted since this state was loaded: gone from the replica too once it reloads
            raise NotFound(f"no article with id {self._ids.get(int(aid), aid)!r}")
        return Article(
            id=doc["id"],
            title=doc["title"],
            paragraphs=tuple(doc["paragraphs"]),
            date=doc["date"],
            source=doc["source"],
            url=doc["url"],
            tags=tuple(doc["tags"]),
            extra=doc["extra"],
        )

    def article_refs(self, aids: Iterable[int]) -> dict[int, ArticleRef]:
        return {int(a): self._refs[int(a)] for a in aids if int(a) in self._refs}

    def content_hashes(self, aids: Iterable[int]) -> dict[int, str]:
        return {int(a): self._hashes[int(a)] for a in aids if int(a) in self._hashes}

    def passages(self, ids: Iterable[int]) -> dict[int, StoredPassage]:
        out: dict[int, StoredPassage] = {}
        pids, owners = self._owners
        for pid, doc in self._collections["passage_rows"].get(ids).items():
            at = int(np.searchsorted(pids, pid))
            if at >= len(pids) or int(pids[at]) != pid:
                continue  # written after this state was loaded: not served until the replica reloads
            aid = int(owners[at])
            passage = Passage(pid, self._ids[aid], doc["position"], doc["field"], doc["start"], doc["end"], doc["text"])
            out[pid] = StoredPassage(passage, aid)
        return out

    def passages_of(self, aid: int) -> list[Passage]:
        pids, owners = self._owners
        found = self.passages(pids[owners == int(aid)].tolist())
        return sorted((sp.passage for sp in found.values()), key=lambda p: p.position)

    def passage_vectors(self, ids: Iterable[int]) -> dict[int, np.ndarray]:
        """Vectors of the given passages that the collection holds (others are left out, as SQLite's are)."""
        vs = self._passage_vectors
        wanted = sorted({int(i) for i in ids if int(i) >= 0})
        out: dict[int, np.ndarray] = {}
        for start in range(0, len(wanted), 1000):
            rows = vs.connection.call(
                "read vectors", "get", vs.collection, ids=wanted[start : start + 1000], output_fields=["vector"]
            )
            out.update((int(r["id"]), np.asarray(r["vector"], dtype=np.float32)) for r in rows)
        return out

    def sentence_vectors(self, pids: Iterable[int]) -> dict[int, SentenceVectors]:
        return {pid: decode_sentences(doc) for pid, doc in self._collections["sentence_rows"].get(pids).items()}

    def article_vector(self, aid: int) -> np.ndarray:
        return self._article_vectors.reconstruct(int(aid))

    # -- what the in-memory structures are built from ------------------------------------------------------------

    def passage_owners(self) -> tuple[np.ndarray, np.ndarray]:
        return self._owners

    def catalog_rows(self) -> list[CatalogRow]:
        return list(self._catalog_rows)

    def keys(self, table: str) -> np.ndarray:
        if table == "passages":
            return self._owners[0]
        return np.fromiter(sorted(self._ids), np.int64, len(self._ids))

    def article_texts(self, aids: Sequence[int]) -> dict[int, ArticleText]:
        raise WritesDisabled("a replica does not label articles: labels come from the indexer")

    def set_groups(self, labels: dict[int, tuple[str, str]]) -> None:
        raise WritesDisabled("a replica serves the index read-only; write through the indexer")

    def close(self) -> None:
        """The connection belongs to the replica (``Replica.close``)."""


@dataclass
class Replica:
    """Where a replica's index comes from, and whether the engine has published something newer since."""

    connection: MilvusConnection
    uri: str
    meta: str
    embedder: Embedder | None
    state: JSONObject
    poll_seconds: float = 0.5
    background: bool = False  # reload in a thread, serving the loaded state meanwhile (SearchService.refresh)

    def __post_init__(self) -> None:
        self._checked = time.monotonic()
        self._latest: JSONObject | None = self.state
        self._lock = threading.Lock()

    def changed(self) -> bool:
        """Whether the engine publishes another state than the one loaded (asked at most every ``poll_seconds``;
        an unreachable engine keeps the loaded state, whose per-request reads then fail as 503s)."""
        with self._lock:
            now = time.monotonic()
            if now - self._checked >= self.poll_seconds:
                self._checked = now
                latest = read_state(self.connection, self.meta)
                if latest is not None:
                    self._latest = latest
            return self._latest != self.state

    def reopen(self) -> Index:
        """The index as now published (an ``Index``), sharing this replica's connection."""
        return load_replica(self.connection, self.uri, self.meta, self.embedder, self.poll_seconds, self.background)

    def close(self) -> None:
        self.connection.close()


def open_replica(
    uri: str, collections: str, embedder: Embedder | None, poll_seconds: float = 0.5, background: bool = False
) -> Index:
    """The index published in ``collections`` (see ``meta_collection``) on the Milvus at ``uri``, as an ``Index``
    with no directory. Its vectors must have been built by ``embedder``'s model (None skips the check). A
    ``background`` replica is reloaded in a thread when a new state is published (else by the request seeing it)."""
    connection = MilvusConnection(uri, Path.cwd())
    try:
        return load_replica(connection, uri, meta_collection(collections), embedder, poll_seconds, background)
    except BaseException:
        connection.close()
        raise


def load_replica(
    connection: MilvusConnection,
    uri: str,
    meta: str,
    embedder: Embedder | None,
    poll_seconds: float,
    background: bool = False,
) -> Index:
    """The index ``meta`` publishes, read whole (retried while a write moves the published state under it)."""
    if not connection.call("look up a collection", "has_collection", meta):
        raise IndexMissing(
            f"Milvus at {uri} has no collection {meta}: build the index there first "
            f"(newsdesk index SOURCES --store milvus --milvus-uri {uri})"
        )
    connection.call("load a collection", "load_collection", meta)
    for _ in range(LOAD_TRIES):
        state = read_state(connection, meta)
        if state is None:
            raise IndexMissing(f"Milvus collection {meta} publishes no index yet (a build has not finished)")
        manifest = read_manifest_record(connection, meta)
        if embedder is not None:
            check_compatible(manifest["model"], embedder)
        config = MilvusConfig.from_manifest(manifest["milvus"])
        if dict(state["collections"]) != config.collections:
            continue  # the manifest of another build than the state's: a rebuild is publishing
        loaded = _load(connection, config, manifest, int(state["generation"]))
        if read_state(connection, meta) == state:
            store, passages, articles, lexical = loaded
            replica = Replica(connection, uri, meta, embedder, state, poll_seconds, background)
            owners = PassageOwners.of(*store.passage_owners())
            catalog = ArticleCatalog.of(store.catalog_rows(), store.groups())
            graph = _graph(articles, lexical.articles, store.generation())
            vectors = MilvusVectors(passages, articles, config, owned=False)  # the connection is the replica's
            return Index(None, manifest, store, vectors, lexical, owners, catalog, neighbours=graph, replica=replica)
    raise IndexCorrupt(f"the index published in {meta} kept changing while it was read ({LOAD_TRIES} tries)")


def _load(
    connection: MilvusConnection, config: MilvusConfig, manifest: Manifest, generation: int
) -> tuple[MilvusReadStore, MilvusVectorStore, MilvusVectorStore, LexicalPostings]:
    dim = int(manifest["model"]["dimension"])
    collections = {
        kind: RecordCollection.open(connection, config.collections[kind])
        for kind in ("article_rows", "passage_rows", "sentence_rows")
    }
    passages = MilvusVectorStore.open(
        connection, config.collections["passages"], dim, config.index_type, config.search_params
    )
    articles = MilvusVectorStore.open(connection, config.collections["articles"], dim, ARTICLE_INDEX)
    article_docs = {key: doc for key, (_, doc) in collections["article_rows"].documents().items()}
    passage_docs = collections["passage_rows"].documents()
    pids = np.fromiter(sorted(passage_docs), np.int64, len(passage_docs))
    owners = np.fromiter((passage_docs[int(p)][0] for p in pids), np.int64, len(pids))
    store = MilvusReadStore(generation, article_docs, (pids, owners), collections, (passages, articles))
    lexical = LexicalPostings(
        passages=Postings.build(((int(p), (passage_docs[int(p)][1]["text"],)) for p in pids), 1),
        articles=Postings.build(_article_columns(article_docs), 2),
        generation=generation,
    )
    return store, passages, articles, lexical


def _article_columns(docs: dict[int, JSONObject]) -> Iterator[tuple[int, Sequence[str]]]:
    """(key, (title, body)) in key order, the body as the FTS5 trigger joins it (search/text/bm25.py)."""
    for aid in sorted(docs):
        yield aid, (docs[aid]["title"], "\n".join(docs[aid]["paragraphs"]))


def _graph(articles: MilvusVectorStore, postings: Postings, generation: int) -> NeighbourGraph | None:
    """More-like-this profiles built from the engine's article vectors and the postings (search/news/neighbours.py)."""
    return NeighbourGraph.of(articles, postings, generation, DEFAULT_NEIGHBOURS)
