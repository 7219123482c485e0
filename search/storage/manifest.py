"""The index manifest (``manifest.json``): its shape, and the one place it is read from and written to disk.

Every build writes it last (search/storage/index.py ``building``), every open reads it first. It records what the
index was built with (the model's fingerprint, the chunking settings, the FAISS factory, the vector backend and its
entry) and caches what SQLite holds (counts, newest date). The JSON on disk is what ``json.dumps`` gives of the
dictionary, keys in the order written: a ``TypedDict`` types the keys without changing a byte of it, so manifests
written before these types open unchanged (their optional keys simply absent).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NotRequired, TypedDict, cast

from search.errors import IndexCorrupt, IndexMissing
from search.jsontypes import JSONObject
from search.storage.files import discarded_on_failure, fsync_path

FORMAT_VERSION = 2  # 2: BM25 tables (articles_fts, passages_fts)
MANIFEST = "manifest.json"
REQUIRED = ("model", "counts", "faiss")  # besides format_version: what every manifest since version 2 has

Params = dict[str, int | float | str]  # index or search parameters, e.g. {"M": 32, "efConstruction": 200}


class Counts(TypedDict):
    articles: int
    passages: int


class FaissEntry(TypedDict):
    """How the FAISS caches are built and searched; written by every build, whatever its vector backend."""

    factory: str
    search: NotRequired[str]  # "" or absent: FAISS's defaults
    metric: NotRequired[str]
    articles: NotRequired[str]  # the article vectors' factory
    # factory "auto" (search/vectors/faiss.py ``resolve``): ``factory``/``articles`` are what the bases hold now
    auto: NotRequired[AutoEntry]
    recall: NotRequired[RecallEntry]  # of an ANN passage base, measured when it was written


class AutoEntry(TypedDict):
    """The size rule of ``faiss_factory=auto``, as the build recorded it: exact below ``threshold`` vectors, else
    ``ann`` (``{nlist}`` filled from the count) searched with ``ann_search``, and where that names no nprobe, an IVF
    probing ``probe_share`` of its lists (absent in a manifest from before the share: ``ann_search`` alone)."""

    threshold: int
    ann: str
    ann_search: str
    probe_share: NotRequired[float]
    passages_search: str  # the search parameters the passage base is searched with now


class RecallEntry(TypedDict):
    """Recall@10 of the ANN passage base against exact search, on ``sample`` stored vectors used as queries."""

    at10: float
    sample: int
    exact: str  # where the exact vectors came from


class IndexSpec(TypedDict):
    type: str
    params: Params


class MilvusEntry(TypedDict):
    """Where an index on Milvus keeps its collections (search/vectors/milvus/)."""

    uri: str
    collections: dict[str, str]
    meta: NotRequired[str]  # absent in an index built before replicas: derived from the collection names
    schema: NotRequired[JSONObject]
    index: dict[str, IndexSpec]
    search_params: NotRequired[Params]


class Manifest(TypedDict):
    """``manifest.json``. ``store`` names the vector backend (search/vectors/factory.py); absent means FAISS, as
    in an index built before backends could be chosen."""

    format_version: int
    name: NotRequired[str]
    build: NotRequired[str]  # the SQLite store's build id
    model: JSONObject  # the embedder's fingerprint (search/text/embedding.py), compared as a whole
    chunking: NotRequired[dict[str, int | bool]]
    faiss: FaissEntry
    store: NotRequired[str]
    milvus: NotRequired[MilvusEntry]
    counts: Counts
    newest_date: NotRequired[str | None]
    sources: NotRequired[list[str]]
    created_at: NotRequired[str]
    updated_at: NotRequired[str]
    cursor_key: NotRequired[str]  # signs search cursors (search/ranking/paging.py)


class VectorEntry(TypedDict, total=False):
    """The part of a manifest a vector backend writes at build time: its name and its own entry."""

    store: str
    milvus: MilvusEntry


def read_manifest(directory: Path) -> Manifest:
    """The manifest of the index at ``directory``; IndexMissing or IndexCorrupt with a line saying what to do."""
    path = directory / MANIFEST
    if not directory.exists():
        raise IndexMissing(f"no index at {directory} (build one with: newsdesk index SOURCE --index {directory})")
    if not path.is_file():
        raise IndexCorrupt(f"{directory} has no {MANIFEST}; it is not a newsdesk index or its build did not finish")
    try:
        decoded: JSONObject = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexCorrupt(f"{path} is unreadable: {exc}") from None
    if not isinstance(decoded, dict) or decoded.get("format_version") != FORMAT_VERSION:
        version = decoded.get("format_version") if isinstance(decoded, dict) else None
        raise IndexCorrupt(f"{path}: format version {version!r} is not {FORMAT_VERSION}; rebuild the index")
    for key in REQUIRED:
        if key not in decoded:
            raise IndexCorrupt(f"{path} lacks {key!r}")
    return cast(Manifest, decoded)  # checked above: the keys every manifest has


def write_manifest(directory: Path, manifest: Manifest) -> None:
    """Replace ``manifest.json`` atomically (a temporary file, synced, then renamed)."""
    tmp = directory / f".{MANIFEST}.tmp"
    with discarded_on_failure(tmp):
        tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        fsync_path(tmp)
        os.replace(tmp, directory / MANIFEST)


def looks_like_manifest(path: Path) -> bool:
    """Whether ``path`` holds a newsdesk manifest (any version): what ``is_newsdesk_index`` asks of an old index."""
    try:
        decoded: JSONObject = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(decoded, dict) and {"format_version", *REQUIRED} <= decoded.keys()
