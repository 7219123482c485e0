"""What a query reads besides vectors, kept in Milvus beside them, so API replicas need no index directory (issue 8).

An index on Milvus (``--store milvus``) has, besides its two vector collections (search/vectors/milvus/vectors.py),
three record
collections mirroring SQLite's rows, and one meta collection that tells replicas what to serve:

- ``<build>_article_rows``: per article (key = SQLite ``aid``): id, title, paragraphs, date, source, url, tags,
  extra, content hash, story and duplicate-group labels.
- ``<build>_passage_rows``: per passage (key = passage id, owner = its article): position, field, span, text.
- ``<build>_sentence_rows``: per multi-sentence passage: its sentence spans and their float16 vectors (what the
  highlighter reads), base64 in the record: Milvus has no BLOB type, and one row per passage keeps a result page to
  one lookup.
- ``newsdesk_<index name>_meta`` (a stable name, unlike the per-build collections): key 1 holds the manifest, key 0
  the published state ``{"generation", "collections", "log"}``, written last, and key ``LOG_KEY + g`` the delta
  that published generation ``g`` (``change_record``: what changed since the state before it, in the log ``log``
  names). A replica polls key 0; when it changes, it applies the deltas since its own generation
  (``read_changes``), or reloads whole when they do not reach back to it or a rebuild points it at new collections.

Every record is one JSON document. Milvus ``VARCHAR`` is limited to 65,535 bytes (a cluster counts UTF-8 bytes,
Milvus Lite characters), so a longer document (an article with a long body) is cut into parts of at most
``PART_BYTES`` bytes, on character boundaries, stored as rows ``id = key << PART_BITS | part`` with the same ``key``;
a reader joins them in part order. Milvus also requires a vector field in every collection: these carry a constant
2-dimensional ``pad`` vector that nothing searches.

SQLite stays the source of truth: writes commit there first, then reach the records with the vectors, and the
published generation moves last; an open that finds ``vectors.json`` stale (a writer died in between) rewrites the
records from SQLite as it repairs the vectors.
"""

from __future__ import annotations

import base64
import contextlib
import json
import uuid
from collections.abc import Iterable, Iterator
from typing import cast

import numpy as np

from search.errors import IndexCorrupt, VectorStoreUnavailable
from search.jsontypes import JSONObject
from search.storage.manifest import Manifest
from search.storage.store import Store
from search.vectors.milvus.client import MilvusConnection
from search.vectors.milvus.config import RECORD_KINDS

PART_BITS = 10  # up to 1,024 parts of 60,000 bytes: about 61 MB per record, above any accepted article
PART_BYTES = 60_000  # under VARCHAR's 65,535 with room to spare
MAX_VARCHAR = 65_535
PAD = [1.0, 0.0]  # the vector every record carries: Milvus requires a vector field in each collection
READ_KEYS = 1_000  # keys per "key in [...]" query: parts stay far below a cluster's 16,384-row query window
WRITE_ROWS = 512  # rows per insert: at most ~30 MB of text, under gRPC's 64 MiB
SCAN_BATCH = 2_000  # rows per query_iterator page
STATE_KEY, MANIFEST_KEY = 0, 1
_FIELDS = ["id", "key", "owner", "data"]
LOG_KEY = 1 << 32  # the delta that published generation g is the meta record of key LOG_KEY + g
LOG_KEEP = 1_000  # deltas kept in the log: a replica further behind reloads in full


def split_parts(text: str) -> list[str]:
    """``text`` cut into pieces of at most ``PART_BYTES`` UTF-8 bytes, never inside a character."""
    raw = text.encode("utf-8", "surrogatepass")
    if len(raw) <= PART_BYTES:
        return [text]
    parts: list[str] = []
    start = 0
    while start < len(raw):
        end = min(start + PART_BYTES, len(raw))
        while end < len(raw) and (raw[end] & 0xC0) == 0x80:  # a continuation byte: back up to a character start
            end -= 1
        parts.append(raw[start:end].decode("utf-8", "surrogatepass"))
        start = end
    if len(parts) >= 1 << PART_BITS:
        raise IndexCorrupt(f"a record of {len(raw)} bytes is too long for Milvus ({1 << PART_BITS} parts)")
    return parts


def encode_sentences(spans: list[tuple[int, int]], vectors: np.ndarray) -> JSONObject:
    data = np.ascontiguousarray(vectors, dtype=np.float16).tobytes()
    return {"spans": [list(s) for s in spans], "vectors": base64.b64encode(data).decode("ascii")}


def decode_sentences(record: JSONObject) -> tuple[list[tuple[int, int]], np.ndarray]:
    spans = [(int(a), int(b)) for a, b in record["spans"]]
    raw = np.frombuffer(base64.b64decode(record["vectors"]), dtype=np.float16)
    return spans, raw.astype(np.float32).reshape(len(spans), -1)


class RecordCollection:
    """Keyed JSON records in one Milvus collection: ``id`` (pk), ``key``, ``owner``, ``data``, ``pad``."""

    def __init__(self, connection: MilvusConnection, name: str) -> None:
        self.connection = connection
        self.name = name

    @classmethod
    def create(cls, connection: MilvusConnection, name: str) -> RecordCollection:
        """A new, empty, loaded collection (one of that name is dropped first)."""
        from pymilvus import DataType, MilvusClient

        conn = connection
        if conn.call("look up a collection", "has_collection", name):
            conn.call("drop a collection", "drop_collection", name)
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("id", DataType.INT64, is_primary=True)
        schema.add_field("key", DataType.INT64)
        schema.add_field("owner", DataType.INT64)
        schema.add_field("data", DataType.VARCHAR, max_length=MAX_VARCHAR)
        schema.add_field("pad", DataType.FLOAT_VECTOR, dim=len(PAD))
        index = conn.client.prepare_index_params()
        index.add_index(field_name="pad", index_type="FLAT", metric_type="IP")
        conn.call("create a collection", "create_collection", name, schema=schema, consistency_level="Strong")
        conn.call("index a collection", "create_index", name, index, sync=False)
        conn.call("load a collection", "load_collection", name)
        return cls(connection, name)

    @classmethod
    def open(cls, connection: MilvusConnection, name: str) -> RecordCollection:
        if not connection.call("look up a collection", "has_collection", name):
            raise IndexCorrupt(f"Milvus at {connection.uri} has no collection {name}")
        connection.call("load a collection", "load_collection", name)
        return cls(connection, name)

    # -- writes --

    def put(
        self, records: Iterable[tuple[int, int, JSONObject]], *, replace: bool = True, cleared: bool = False
    ) -> int:
        """Write (key, owner, document) records; ``replace`` first deletes every part of those keys (a shorter new
        version must not keep an old version's later parts). ``cleared``: the keys hold no part now (new keys, or
        keys deleted just before), so the parts are upserted with no delete by a ``key in [...]`` filter after them,
        a scan of every row on Milvus Lite (three per write, 100k passages). Returns how many records were written."""
        rows: list[JSONObject] = []
        keys: list[int] = []
        written = 0
        for key, owner, doc in records:
            keys.append(int(key))
            written += 1
            text = json.dumps(doc, ensure_ascii=False, separators=(",", ":"))
            for part, piece in enumerate(split_parts(text)):
                rows.append({"id": (int(key) << PART_BITS) | part, "key": key, "owner": owner, "data": piece})
            if len(rows) >= WRITE_ROWS:
                self._write(keys, rows, replace, cleared)
                keys, rows = [], []
        self._write(keys, rows, replace, cleared)
        return written

    def _write(self, keys: list[int], rows: list[JSONObject], replace: bool, cleared: bool) -> None:
        """Insert ``rows``; with ``replace``, upsert them and then (unless ``cleared``) delete the keys' parts they
        did not write, so a reader sees the old or the new version of a one-part record, never none."""
        for row in rows:
            row["pad"] = PAD
        if not replace:
            if rows:
                self.connection.call("write records", "insert", self.name, rows)
            return
        if rows:
            self.connection.call("write records", "upsert", self.name, rows)
        if keys and not cleared:
            unique = sorted(set(keys))
            written = sorted(int(r["id"]) for r in rows)
            self.connection.call(
                "delete records",
                "delete",
                self.name,
                filter=f"key in [{','.join(map(str, unique))}] and id not in [{','.join(map(str, written))}]",
            )

    def delete(self, keys: Iterable[int]) -> None:
        unique = sorted({int(k) for k in keys})
        for start in range(0, len(unique), READ_KEYS):
            chunk = unique[start : start + READ_KEYS]
            self.connection.call("delete records", "delete", self.name, filter=f"key in [{','.join(map(str, chunk))}]")

    def flush(self) -> None:
        self.connection.call("flush", "flush", self.name)

    # -- reads --

    def get(self, keys: Iterable[int]) -> dict[int, JSONObject]:
        """The documents of the given keys (absent keys are left out)."""
        return {key: doc for key, (_, doc) in self.owned(keys).items()}

    def owned(self, keys: Iterable[int]) -> dict[int, tuple[int, JSONObject]]:
        """key -> (owner, document) of the given keys (absent keys are left out).

        Each key's first part is read by primary key (a point read; a ``key in [...]`` filter makes Milvus Lite
        scan every row, 0.5 s over 100k passages, on every results page); only the keys whose first part is not
        a whole document (a record cut into parts) are then read by that filter."""
        unique = sorted({int(k) for k in keys})
        out: dict[int, tuple[int, JSONObject]] = {}
        split: list[int] = []
        for start in range(0, len(unique), READ_KEYS):
            ids = [key << PART_BITS for key in unique[start : start + READ_KEYS]]
            for r in self.connection.call("read records", "get", self.name, ids=ids, output_fields=_FIELDS):
                try:
                    doc: JSONObject = json.loads(str(r["data"]))
                except ValueError:  # the first of several parts
                    split.append(int(r["key"]))
                    continue
                out[int(r["key"])] = (int(r["owner"]), doc)
        return out | self._owned_parts(split)

    def _owned_parts(self, unique: list[int]) -> dict[int, tuple[int, JSONObject]]:
        """``owned`` for records cut into parts: every part of the keys, joined in order."""
        found: dict[int, list[tuple[int, str]]] = {}
        owners: dict[int, int] = {}
        for start in range(0, len(unique), READ_KEYS):
            chunk = unique[start : start + READ_KEYS]
            rows = self.connection.call(
                "read records",
                "query",
                self.name,
                filter=f"key in [{','.join(map(str, chunk))}]",
                output_fields=_FIELDS,
                consistency_level="Strong",
            )
            for r in rows:
                found.setdefault(int(r["key"]), []).append((int(r["id"]), str(r["data"])))
                owners[int(r["key"])] = int(r["owner"])
        return {key: (owners[key], _joined(parts)) for key, parts in found.items()}

    def scan(self, fields: tuple[str, ...] = ("key", "owner", "data")) -> Iterator[JSONObject]:
        """Every row (a part of a record), in no particular order, through a paged query iterator (a cluster's
        query window does not bound it)."""
        from pymilvus.exceptions import MilvusException

        iterator = self.connection.call(
            "scan records",
            "query_iterator",
            self.name,
            batch_size=SCAN_BATCH,
            filter="",
            output_fields=["id", *fields],
        )
        try:
            while True:
                try:
                    page = list(iterator.next())
                except MilvusException as exc:
                    where = f"Milvus at {self.connection.uri}"
                    raise VectorStoreUnavailable(f"{where} failed to scan {self.name}: {exc}") from None
                if not page:
                    return
                yield from page
        finally:
            with contextlib.suppress(Exception):
                iterator.close()

    def documents(self) -> dict[int, tuple[int, JSONObject]]:
        """Every record: key -> (owner, document)."""
        parts: dict[int, list[tuple[int, str]]] = {}
        owners: dict[int, int] = {}
        for row in self.scan():
            key = int(row["key"])
            parts.setdefault(key, []).append((int(row["id"]), str(row["data"])))
            owners[key] = int(row["owner"])
        return {key: (owners[key], _joined(p)) for key, p in parts.items()}

    def owners(self) -> tuple[np.ndarray, np.ndarray]:
        """(keys ascending, owner of each), reading no documents."""
        seen: dict[int, int] = {}
        for row in self.scan(("key", "owner")):
            seen[int(row["key"])] = int(row["owner"])
        keys = np.fromiter(sorted(seen), np.int64, len(seen))
        return keys, np.fromiter((seen[int(k)] for k in keys), np.int64, len(keys))

    def keys(self) -> np.ndarray:
        return self.owners()[0]


def _joined(parts: list[tuple[int, str]]) -> JSONObject:
    parts.sort()
    doc: JSONObject = json.loads("".join(p for _, p in parts))
    return doc


# -- from SQLite --------------------------------------------------------------------------------------------------


def article_records(store: Store, aids: Iterable[int] | None = None) -> Iterator[tuple[int, int, JSONObject]]:
    for aid, doc in store.article_documents(aids):
        yield aid, aid, doc


def passage_records(store: Store, pids: Iterable[int] | None = None) -> Iterator[tuple[int, int, JSONObject]]:
    yield from store.passage_documents(pids)


def sentence_records(store: Store, pids: Iterable[int] | None = None) -> Iterator[tuple[int, int, JSONObject]]:
    for pid, aid, spans, vectors in store.sentence_rows(pids):
        yield pid, aid, encode_sentences(spans, vectors)


SOURCES = {"article_rows": article_records, "passage_rows": passage_records, "sentence_rows": sentence_records}


class EngineRecords:
    """The record collections and the meta collection of one index build, as its writer sees them."""

    def __init__(self, connection: MilvusConnection, names: dict[str, str], meta: str) -> None:
        self.connection = connection
        self.names = names
        self.meta = meta

    def collection(self, kind: str) -> RecordCollection:
        return RecordCollection(self.connection, self.names[kind])

    def ensure(self) -> bool:
        """Create missing collections; True if all were there already."""
        complete = True
        for name in [*self.names.values(), self.meta]:
            if not self.connection.call("look up a collection", "has_collection", name):
                RecordCollection.create(self.connection, name)
                complete = False
            else:
                self.connection.call("load a collection", "load_collection", name)
        return complete

    def fill(self, store: Store) -> None:
        """Write every record of a new build into its (new, empty) collections."""
        for kind in RECORD_KINDS:
            coll = self.collection(kind)
            coll.put(SOURCES[kind](store), replace=False)
            coll.flush()

    def sync(self, store: Store) -> None:
        """Make the collections hold exactly SQLite's records (a repair after a crash): every record rewritten,
        keys SQLite no longer has deleted."""
        for kind in RECORD_KINDS:
            coll = self.collection(kind)
            held = coll.keys()
            written: list[int] = []
            batch: list[tuple[int, int, JSONObject]] = []
            for record in SOURCES[kind](store):
                batch.append(record)
                written.append(record[0])
                if len(batch) >= WRITE_ROWS:
                    coll.put(batch)
                    batch = []
            coll.put(batch)
            extra = np.setdiff1d(held, np.asarray(written, dtype=np.int64))
            coll.delete(extra.tolist())

    def apply(self, store: Store, deleted: tuple[list[int], list[int]], added: tuple[list[int], list[int]]) -> None:
        """After a committed write that deleted and added (article keys, passage ids): the same in the records.
        Deleted keys go first: SQLite may give a new row the key of one deleted in the same transaction."""
        del_aids, del_pids = deleted
        new_aids, new_pids = added
        self.collection("article_rows").delete(del_aids)
        self.collection("passage_rows").delete(del_pids)
        self.collection("sentence_rows").delete(del_pids)
        # The records held SQLite's rows before this write (an open repairs them otherwise), so a new key is either
        # new to the collections or one of the deleted just above: none holds a part to sweep after the upserts.
        self.collection("article_rows").put(article_records(store, new_aids), cleared=True)
        self.collection("passage_rows").put(passage_records(store, new_pids), cleared=True)
        self.collection("sentence_rows").put(sentence_records(store, new_pids), cleared=True)

    def publish(
        self, generation: int, collections: dict[str, str], manifest: JSONObject, delta: JSONObject | None
    ) -> None:
        """Tell replicas the records and vectors now match ``generation``: the delta since the previous published
        state first (``change_record``; None starts a new log, which sends every replica to a full reload), then
        the manifest, the state last. Deltas older than ``LOG_KEEP`` generations are trimmed."""
        meta = RecordCollection(self.connection, self.meta)
        if delta is not None:
            meta.put([(LOG_KEY + generation, generation, delta)])
            log = str(delta["log"])
        else:
            log = uuid.uuid4().hex
        meta.put([(MANIFEST_KEY, MANIFEST_KEY, manifest)])
        state: JSONObject = {"generation": generation, "collections": collections, "log": log}
        meta.put([(STATE_KEY, generation, state)])
        self.connection.call(
            "trim the change log",
            "delete",
            self.meta,
            filter=f"key >= {LOG_KEY} and key <= {LOG_KEY + generation - LOG_KEEP}",
        )

    def problems(self, store: Store) -> list[str]:
        """Record keys that differ from SQLite's rows (``newsdesk check``)."""
        out: list[str] = []
        for kind, table in (("article_rows", "articles"), ("passage_rows", "passages")):
            try:
                held = RecordCollection.open(self.connection, self.names[kind]).keys()
            except (VectorStoreUnavailable, IndexCorrupt) as exc:
                out.append(exc.message)
                continue
            stored = store.keys(table)
            if not np.array_equal(held, stored):
                name = self.names[kind]
                out.append(f"Milvus collection {name} holds {len(held)} records, SQLite {len(stored)} {table}")
        return out


def read_state(connection: MilvusConnection, meta: str) -> JSONObject | None:
    """The published state ``{"generation", "collections"}`` of a meta collection, or None if it has none."""
    rows = connection.call(
        "read the published state",
        "query",
        meta,
        filter=f"key == {STATE_KEY}",
        output_fields=["id", "data"],
        consistency_level="Strong",
    )
    if not rows:
        return None
    try:
        return _joined([(int(r["id"]), str(r["data"])) for r in rows])
    except ValueError:
        return None  # caught between the delete and the insert of a publish: as if unchanged


def change_record(store: Store, state: JSONObject, generation: int) -> JSONObject | None:
    """What changed between the published ``state`` and ``generation``, as a replica applies it
    (search/vectors/milvus/replica.py): the article ids SQLite's change log names since the state's generation (every
    process's writes, not only this one's), with the keys those articles and their passages hold now; a replica
    finds the keys they held before in its own catalog. None where no delta can describe the step (another build's
    collections, a state from before the log, a generation going back): replicas reload in full."""
    try:
        previous, log = int(state["generation"]), str(state["log"])
    except (KeyError, TypeError, ValueError):
        return None
    if previous > generation:
        return None
    ids = store.changed_since(previous)  # a superset where a later write landed meanwhile: replicas re-read those
    aids = sorted(a for a in (store.aid_of(i) for i in ids) if a is not None)
    pids = sorted(p.id for aid in aids for p in store.passages_of(aid))
    return {"from": previous, "to": generation, "log": log, "ids": ids, "aids": aids, "pids": pids}


def read_changes(connection: MilvusConnection, meta: str, state: JSONObject, since: int) -> list[JSONObject] | None:
    """The deltas that take a replica from generation ``since`` to the published ``state``, oldest first; None when
    the log does not reach back that far (trimmed, or a new log began) or a record is damaged: a full reload then."""
    try:
        generation, log = int(state["generation"]), str(state["log"])
    except (KeyError, TypeError, ValueError):
        return None
    if generation < since or generation - since > LOG_KEEP:
        return None
    try:
        found = RecordCollection(connection, meta).get(range(LOG_KEY + since + 1, LOG_KEY + generation + 1))
    except ValueError:  # a damaged record (unreadable JSON)
        return None
    chain: list[JSONObject] = []
    at = generation
    while at > since:  # walk back from the published state: each delta names the state it follows
        delta = found.get(LOG_KEY + at)
        if not isinstance(delta, dict) or delta.get("log") != log or delta.get("to") != at:
            return None
        try:
            at = int(delta["from"])
            [str(i) for i in delta["ids"]], [int(a) for a in delta["aids"]], [int(p) for p in delta["pids"]]
        except (KeyError, TypeError, ValueError):
            return None
        chain.append(delta)
    return chain[::-1]


def read_manifest_record(connection: MilvusConnection, meta: str) -> Manifest:
    """The manifest a build published beside its collections (what a replica serves by)."""
    docs = RecordCollection(connection, meta).get([MANIFEST_KEY])
    if MANIFEST_KEY not in docs:
        raise IndexCorrupt(f"Milvus collection {meta} holds no manifest: build the index with this version")
    manifest = docs[MANIFEST_KEY]
    missing = [key for key in ("model", "faiss", "milvus") if key not in manifest]
    if missing:
        raise IndexCorrupt(f"the manifest published in {meta} lacks {missing[0]!r}; rebuild the index")
    return cast(Manifest, manifest)
