"""Stateless serving: an index opened from Milvus alone, with no index directory (issue 8).

``newsdesk serve --milvus-uri URI --collections newsdesk_<name>`` serves the index whose meta collection is
``newsdesk_<name>_meta`` (search/vectors/milvus/records.py). At start (and after a rebuild pointing at new
collections, or whenever the published deltas cannot take it to the new state: ``Replica.reopen``), the replica reads
from the engine what the query side keeps in memory:

- every article record: the catalog (dates, sources, tags, labels), article references, and the article texts;
- every passage's owner, and (unless the lexical side is the engine's, see below) its text;
- then builds the BM25 postings, the passage owners, the catalog and the more-like-this profiles in memory, as a
  directory index builds them from SQLite, and opens the two vector collections.

After a write it catches up by the deltas the writer published (``Replica._caught_up``): it reads only the records
they name and applies them with the writer's own in-memory update (search/storage/changes.py).

Per request it reads from Milvus what a page shows: passage texts, sentence vectors, full articles; vectors come
from the vector collections. Nothing is written: a replica refuses writes (they go through the indexer, which owns
SQLite, or a server on the index directory), and every replica that loaded one published state answers alike.

The lexical side is the in-memory BM25 (``search/text/bm25.py``) built from the engine's text, the same postings as
SQLite FTS5 gives a directory index (Porter stemming), so a replica ranks exactly as the writer does.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from search.errors import IndexCorrupt, IndexMissing, NotFound, WritesDisabled
from search.jsontypes import JSONObject
from search.models import Article, ArticleRef, Passage
from search.news.neighbours import DEFAULT_NEIGHBOURS, NeighbourGraph
from search.ranking.catalog import ArticleCatalog
from search.storage.changes import apply_in_memory
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
    read_changes,
    read_manifest_record,
    read_state,
)
from search.vectors.milvus.repair import MilvusVectors
from search.vectors.milvus.vectors import MilvusVectorStore

log = logging.getLogger("newsdesk.replica")

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
        self._ids: dict[int, str] = {}
        self._aid_of: dict[str, int] = {}
        self._refs: dict[int, ArticleRef] = {}
        self._hashes: dict[int, str] = {}
        self._rows: dict[int, CatalogRow] = {}
        self._groups: dict[int, tuple[str, str]] = {}
        for aid in sorted(articles):
            self._take(aid, articles[aid])
        self._catalog_rows: list[CatalogRow] | None = None
        dates = [row[1] for row in self._rows.values() if row[1]]
        self._newest: str | None = max(dates) if dates else None

    def _take(self, aid: int, doc: JSONObject) -> None:
        """Hold article ``aid`` as ``doc`` (its record) describes it."""
        article_id = str(doc["id"])
        self._ids[aid] = article_id
        self._aid_of[article_id] = aid
        self._refs[aid] = ArticleRef(
            id=article_id, title=doc["title"], date=doc["date"], source=doc["source"], url=doc["url"]
        )
        self._hashes[aid] = str(doc.get("content_hash") or "")
        self._rows[aid] = (aid, doc["date"], doc["source"], tuple(doc["tags"]), article_id)
        if doc.get("story") is not None:
            self._groups[aid] = (str(doc["story"]), str(doc["duplicates"]))
        else:
            self._groups.pop(aid, None)

    def _drop(self, aid: int) -> None:
        article_id = self._ids.pop(aid, None)
        if article_id is not None and self._aid_of.get(article_id) == aid:
            del self._aid_of[article_id]
        for held in (self._refs, self._hashes, self._rows, self._groups):
            held.pop(aid, None)

    def changed(self, generation: int, removed: Iterable[int], written: dict[int, JSONObject]) -> MilvusReadStore:
        """A new store for ``generation``: this one without the ``removed`` article keys, with the ``written``
        records (new articles, or new versions of held ones). This one is left as it was (it is still served while
        the new one is made); its passage owners follow with ``set_owners``."""
        new = copy.copy(self)
        new._generation = generation
        new._ids, new._aid_of, new._refs = dict(self._ids), dict(self._aid_of), dict(self._refs)
        new._hashes, new._rows, new._groups = dict(self._hashes), dict(self._rows), dict(self._groups)
        dropped = [int(a) for a in removed]
        gone = {new._rows[a][1] for a in {*dropped, *map(int, written)} if a in new._rows}  # dates leaving
        for aid in dropped:
            new._drop(aid)
        for aid in sorted(written):
            new._take(int(aid), written[aid])
        new._catalog_rows = None  # sorted again only if asked for (a full load's catalog): a delta reads its rows
        dates = [str(new._rows[int(a)][1]) for a in written if new._rows[int(a)][1]]
        if self._newest is not None and self._newest in gone:  # the newest article went: look through them all
            dates += [row[1] for row in new._rows.values() if row[1]]
        elif self._newest is not None:
            dates.append(self._newest)
        new._newest = max(dates) if dates else None
        return new

    def holds(self, aid: int) -> bool:
        return int(aid) in self._ids

    def collection(self, kind: str) -> RecordCollection:
        """One of the record collections (``article_rows``, ``passage_rows``, ``sentence_rows``)."""
        return self._collections[kind]

    def use_vectors(self, passages: MilvusVectorStore, articles: MilvusVectorStore) -> None:
        """Read vectors through these stores (a new state's, counting its vectors) from now on."""
        self._passage_vectors, self._article_vectors = passages, articles

    def set_owners(self, pids: np.ndarray, aids: np.ndarray) -> None:
        """(passage ids ascending, the article of each): the index's ``PassageOwners`` arrays, shared."""
        self._owners = (pids, aids)

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
        if self._catalog_rows is None:
            self._catalog_rows = [self._rows[aid] for aid in sorted(self._rows)]
        return list(self._catalog_rows)

    def catalog_rows_of(self, aids: Iterable[int]) -> list[CatalogRow]:
        """The catalog rows of the held articles among ``aids``, in key order: a delta's own rows, looked up."""
        return [self._rows[a] for a in sorted({int(a) for a in aids}) if a in self._rows]

    def groups_of(self, aids: Iterable[int]) -> dict[int, tuple[str, str]]:
        """The labels of the labelled articles among ``aids``."""
        return {a: self._groups[a] for a in {int(a) for a in aids} if a in self._groups}

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
class Loads:
    """How a replica (and the replicas that followed it) came by each state it served: read whole, or caught up
    by the published deltas. What tests and benchmarks read to tell the two apart."""

    full: int = 0
    deltas: int = 0


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
    loads: Loads = field(default_factory=Loads)  # shared with the replicas that follow this one

    def __post_init__(self) -> None:
        self._checked = time.monotonic()
        self._latest: JSONObject | None = self.state
        self._lock = threading.Lock()

    @property
    def generation(self) -> int:
        return int(self.state["generation"])

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

    def reopen(self, current: Index) -> Index:
        """The index as now published (an ``Index``), sharing this replica's connection: ``current`` (the index
        this replica serves) brought forward by the deltas published since, or, where the log does not reach back
        to it (trimmed, a new log after a rebuild or relabelling, a damaged record), read whole."""
        state = read_state(self.connection, self.meta)
        if state == self.state:
            return current
        if state is not None and state.get("collections") == self.state.get("collections"):
            try:
                index = self._caught_up(current, state)
            except (IndexCorrupt, ValueError, KeyError) as exc:  # a delta that does not fit what this replica holds
                log.warning("replica %s: the published deltas do not apply (%s); reloading in full", self.meta, exc)
                index = None
            if index is not None:
                # A write published meanwhile may show in some records read: the next delta names them again
                # (what they hold then is read again), so the replica never stays behind a published state.
                self.loads.deltas += 1
                return index
        self.loads.full += 1
        return load_replica(
            self.connection, self.uri, self.meta, self.embedder, self.poll_seconds, self.background, self.loads
        )

    def _caught_up(self, current: Index, state: JSONObject) -> Index | None:
        """``current`` with every delta from this replica's generation to ``state`` applied, as a new ``Index``
        (``current`` is left as it was: it is served meanwhile); None where the log cannot take it there.

        What each article id a delta names held here (its key and passages, found in this replica's catalog and
        owners) is dropped, and what the engine holds for it now (the keys the delta names) is read, once, however
        many deltas named it: the work is the change, not the corpus. An article whose record comes back with its
        key, content hash and passages unchanged (new metadata: date, tags...) keeps its postings and profile."""
        store = current.store
        if not isinstance(store, MilvusReadStore) or not isinstance(current.vectors, MilvusVectors):
            return None
        chain = read_changes(self.connection, self.meta, state, self.generation)
        if chain is None:
            return None
        manifest = read_manifest_record(self.connection, self.meta)
        if (manifest["model"], manifest["milvus"]) != (current.manifest["model"], current.manifest["milvus"]):
            return None  # new search parameters or another model: read whole, as a first load does
        generation = int(state["generation"])
        old_aids = {a for a in (store.aid_of(str(i)) for d in chain for i in d["ids"]) if a is not None}
        aids = sorted(old_aids | {int(a) for d in chain for a in d["aids"]})
        _, old_pids = current.owners.passages_of(sorted(old_aids))
        pids = sorted(set(old_pids.tolist()) | {int(p) for d in chain for p in d["pids"]})
        articles = store.collection("article_rows").get(aids)
        passages = store.collection("passage_rows").owned(pids)

        held_aids = {a for a in aids if store.holds(a)}
        held_pids = current.owners.articles_of(np.asarray(pids, dtype=np.int64))
        held_by = {pid: int(aid) for pid, aid in zip(pids, held_pids.tolist(), strict=True) if aid >= 0}
        if not set(held_by.values()) <= held_aids:
            raise IndexCorrupt("a delta names a passage of an article it does not name")
        now_by = {pid: owner for pid, (owner, _) in passages.items() if owner in articles}
        same = {
            a
            for a in held_aids & set(articles)
            if store.content_hashes([a]).get(a) == str(articles[a].get("content_hash") or "")
            and {p for p, o in held_by.items() if o == a} == {p for p, o in now_by.items() if o == a}
        }
        deleted = (sorted(held_aids - same), sorted(p for p, o in held_by.items() if o not in same))
        added_pids = sorted(p for p, o in now_by.items() if o not in same)
        added = (sorted(set(articles) - same), added_pids)
        docs = {p: doc for p, (_, doc) in passages.items()}

        new_store = store.changed(generation, held_aids, articles)
        vectors = current.vectors
        passage_vectors, article_vectors = copy.copy(vectors.passages), copy.copy(vectors.articles)
        article_vectors.remember(forget=aids)  # every key the delta names: its vector may be new or gone
        index = replace(
            current,
            manifest=manifest,
            store=new_store,
            vectors=MilvusVectors(passage_vectors, article_vectors, vectors.config, owned=False),
            replica=Replica(
                self.connection, self.uri, self.meta, self.embedder, state, self.poll_seconds, self.background,
                self.loads,
            ),
        )  # fmt: skip
        owners = np.asarray([now_by[p] for p in added_pids], dtype=np.int64)
        apply_in_memory(index, DeltaRows(new_store, articles, docs), deleted, added, owners, generation)
        new_store.set_owners(index.owners.pids, index.owners.aids)
        new_store.use_vectors(passage_vectors, article_vectors)
        article_vectors.held = index.catalog.aids
        passage_vectors.set_count(len(index.owners.pids))
        article_vectors.set_count(len(index.catalog.aids))
        if index.neighbours is not None and (deleted[0] or added[0]):
            index.neighbours = index.neighbours.updated(
                deleted[0], added[0], article_vectors, index.lexical.articles, generation
            )
        return index

    def close(self) -> None:
        self.connection.close()


@dataclass
class DeltaRows:
    """What ``apply_in_memory`` (search/storage/changes.py) reads of a delta: the texts of the rows it added, read
    from the engine once, and the catalog of the new state."""

    store: MilvusReadStore
    articles: dict[int, JSONObject]
    passages: dict[int, JSONObject]

    def passage_text_rows(self, ids: Iterable[int] | None = None) -> Iterator[tuple[int, str]]:
        for pid in sorted(self.passages if ids is None else {int(i) for i in ids}):
            yield pid, str(self.passages[pid]["text"])

    def article_text_rows(self, aids: Iterable[int] | None = None) -> Iterator[tuple[int, str, list[str]]]:
        for aid in sorted(self.articles if aids is None else {int(a) for a in aids}):
            doc = self.articles[aid]
            yield aid, str(doc["title"]), [str(p) for p in doc["paragraphs"]]

    def catalog_rows(self, aids: Iterable[int] | None = None) -> list[CatalogRow]:
        """The rows of ``aids`` (a delta's changed articles: ``ArticleCatalog.updated``) looked up by key, not the
        whole catalog filtered; every row only when asked for all."""
        return self.store.catalog_rows() if aids is None else self.store.catalog_rows_of(aids)

    def groups(self) -> dict[int, tuple[str, str]]:
        return self.store.groups()

    def groups_of(self, aids: Iterable[int]) -> dict[int, tuple[str, str]]:
        return self.store.groups_of(aids)


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
    loads: Loads | None = None,
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
            replica = Replica(connection, uri, meta, embedder, state, poll_seconds, background, loads or Loads())
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
    articles.remember()  # the profiles read every article vector, at this load and after every delta
    article_docs = {key: doc for key, (_, doc) in collections["article_rows"].documents().items()}
    articles.held = np.fromiter(sorted(article_docs), np.int64, len(article_docs))
    articles.set_count(len(article_docs))
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
