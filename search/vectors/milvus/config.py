"""Where an index's Milvus collections live and how they are indexed: the manifest's ``milvus`` entry.

Validated from the settings when a build chooses ``--store milvus`` (search/settings.py), recorded in the manifest,
and read back by every open, check and replica. Also the URI rules: ``http(s)://host:19530`` is a Milvus server,
a path ending in ``.db`` is Milvus Lite in this process (relative to the index directory).
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from search.errors import IndexCorrupt, InvalidInput
from search.jsontypes import JSONObject
from search.settings import Settings
from search.storage.manifest import MilvusEntry, Params

DEFAULT_URI = "milvus.db"
# Index types MilvusClient accepts for a dense float vector; Milvus Lite builds FLAT, HNSW, HNSW_SQ, IVF_FLAT,
# IVF_SQ8 and AUTOINDEX (a cluster all of them); an unsupported one fails when the collection is created.
INDEX_TYPES = ("FLAT", "HNSW", "HNSW_SQ", "HNSW_PQ", "IVF_FLAT", "IVF_SQ8", "IVF_PQ", "AUTOINDEX", "DISKANN", "SCANN")
# What Milvus Lite 3.2 builds: it accepts any other type when the index is created, then fails to build it in the
# background (logging a traceback) and searches by brute force, so other types are refused here for it.
LITE_INDEX_TYPES = ("FLAT", "HNSW", "HNSW_SQ", "IVF_FLAT", "IVF_SQ8", "AUTOINDEX")
ARTICLE_INDEX = "FLAT"
KINDS = ("passages", "articles")  # the SQLite table each collection mirrors
RECORD_KINDS = ("article_rows", "passage_rows", "sentence_rows")  # what replicas read (records.py)
SCHEMA: JSONObject = {
    "fields": [
        {"name": "id", "type": "INT64", "primary_key": True, "auto_id": False},
        {"name": "vector", "type": "FLOAT_VECTOR"},
    ],
    "metric": "IP",
    "consistency_level": "Strong",
}
_NAME = re.compile(r"[^A-Za-z0-9_]+")


# -- configuration ---------------------------------------------------------------------------------------------


def parse_params(text: str, what: str) -> Params:
    """``"M=32,efConstruction=200"`` as ``{"M": 32, "efConstruction": 200}`` (numbers as numbers); "" is {}."""
    out: Params = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, eq, raw = part.partition("=")
        name, raw = name.strip(), raw.strip()
        if not eq or not name or not raw:
            raise InvalidInput(f"invalid Milvus {what} {text!r}: expected name=value, comma-separated (e.g. ef=128)")
        out[name] = _number(raw)
    return out


def _number(raw: str) -> int | float | str:
    """``raw`` as an int, else a float, else as it is."""
    for parse in (int, float):
        try:
            number: int | float = parse(raw)
            return number
        except ValueError:
            continue
    return raw


def format_params(params: Mapping[str, int | float | str]) -> str:
    return ",".join(f"{k}={v}" for k, v in params.items())


@dataclass(frozen=True)
class MilvusConfig:
    """Where the collections live and how passage vectors are indexed and searched (the manifest's ``milvus``)."""

    uri: str = DEFAULT_URI
    index_type: str = "FLAT"
    index_params: Params = field(default_factory=dict)
    search_params: Params = field(default_factory=dict)
    collections: dict[str, str] = field(default_factory=dict)  # vector and record collections of this build, by kind
    meta: str = ""  # the index's stable meta collection (search/vectors/milvus/records.py), what replicas follow

    @classmethod
    def from_settings(cls, settings: Settings, index_name: str = "") -> MilvusConfig:
        """Validated settings for a new build, with fresh collection names (a rebuild never writes into the
        collections the index it replaces is still serving from)."""
        index_type = str(settings.milvus_index).strip().upper()
        if index_type not in INDEX_TYPES:
            raise InvalidInput(f"setting milvus_index must be one of {', '.join(INDEX_TYPES)}, got {index_type!r}")
        uri = str(settings.milvus_uri).strip() or DEFAULT_URI
        check_uri(uri)
        return cls(
            uri=uri,
            index_type=index_type,
            index_params=parse_params(settings.milvus_index_params, "index parameters"),
            search_params=parse_params(settings.milvus_search, "search parameters"),
            collections=collection_names(index_name),
            meta=meta_name(index_name or "index"),
        )

    @classmethod
    def from_manifest(cls, entry: MilvusEntry | JSONObject) -> MilvusConfig:
        """The manifest's ``milvus`` entry (or a record's copy of it); IndexCorrupt when a key is missing."""
        try:
            index = entry["index"]["passages"]
            return cls(
                uri=str(entry["uri"]),
                index_type=str(index["type"]),
                index_params=dict(index.get("params") or {}),
                search_params=dict(entry.get("search_params") or {}),
                collections=_with_records({kind: str(entry["collections"][kind]) for kind in KINDS}),
                meta=str(entry.get("meta") or _meta_of(str(entry["collections"]["passages"]))),
            )
        except (KeyError, TypeError) as exc:
            raise IndexCorrupt(f"the manifest's milvus entry lacks {exc}; rebuild the index") from None

    def manifest_entry(self, dimension: int) -> MilvusEntry:
        """What the manifest records, like its ``faiss`` entry: enough to reopen and to compare with settings."""
        schema: JSONObject = json.loads(json.dumps(SCHEMA))
        schema["fields"][1]["dim"] = dimension
        return {
            "uri": self.uri,
            "collections": dict(self.collections),
            "meta": self.meta,
            "schema": schema,
            "index": {
                "passages": {"type": self.index_type, "params": dict(self.index_params)},
                "articles": {"type": ARTICLE_INDEX, "params": {}},
            },
            "search_params": dict(self.search_params),
        }


def meta_name(index_name: str) -> str:
    """The stable meta collection of an index name: ``newsdesk_<name>_meta``."""
    stem = _NAME.sub("_", index_name).strip("_")[:100] or "index"
    return f"newsdesk_{stem}_meta"


def record_names(collections: dict[str, str]) -> dict[str, str]:
    """Record collection names beside a build's vector collections (``..._passages`` -> ``..._passage_rows``)."""
    base = collections["passages"].removesuffix("_passages")
    return {kind: collections.get(kind) or f"{base}_{kind}" for kind in RECORD_KINDS}


def collection_names(index_name: str) -> dict[str, str]:
    """``newsdesk_<index>_<12 hex>_<kind>``: Milvus names allow letters, digits and underscores, first not a digit.
    The vector collections (``KINDS``) and the record collections (``RECORD_KINDS``) of one build."""
    stem = _NAME.sub("_", index_name).strip("_")[:100] or "index"
    build = uuid.uuid4().hex[:12]
    return {kind: f"newsdesk_{stem}_{build}_{kind}" for kind in (*KINDS, *RECORD_KINDS)}


def _with_records(collections: dict[str, str]) -> dict[str, str]:
    """A manifest's collections with the record collections' names (derived for an index built before them)."""
    return {**collections, **record_names(collections)}


def _meta_of(passages: str) -> str:
    """The meta collection of an index built before it was recorded: from ``newsdesk_<stem>_<12 hex>_passages``."""
    stem = passages.removeprefix("newsdesk_").removesuffix("_passages")
    return meta_name(stem.rsplit("_", 1)[0] if "_" in stem else stem)


def is_lite(uri: str) -> bool:
    return not uri.startswith(("http://", "https://", "tcp://", "unix:"))


def check_uri(uri: str) -> None:
    if is_lite(uri) and not uri.endswith(".db"):
        raise InvalidInput(
            f"milvus_uri {uri!r} is neither http(s)://host:port (a Milvus server) nor a path ending in .db "
            "(Milvus Lite)"
        )


def lite_path(uri: str, directory: Path) -> Path:
    """A Milvus Lite URI as an absolute path, relative ones inside the index directory. Symlinks are resolved: an
    index path is a symlink swapped by every rebuild, and the Lite server of the old target must not be reused."""
    path = Path(uri).expanduser()
    return (path if path.is_absolute() else directory / path).resolve()


def same_location(a: str, b: str) -> bool:
    """Whether two URIs name the same Milvus (for Lite: the same path as written, relative to the index)."""
    return a.rstrip("/") == b.rstrip("/")
