"""Stateless replicas: an index served from the vector engine alone, with no index directory (``serve
--collections``). Milvus is the backend that publishes what replicas read (search/vectors/milvus/replica.py); the
server and the CLI reach it through here, so that outside search/vectors/ nothing names it.
"""

from __future__ import annotations

from search.settings import Settings
from search.storage.index import Index
from search.text.embedding import Embedder
from search.vectors.milvus import replica
from search.vectors.milvus.config import check_uri, is_lite


def open_replica(settings: Settings, embedder: Embedder | None, *, background: bool = False) -> Index:
    """The index published under ``settings.collections`` on the engine at ``settings.milvus_uri``; ``embedder``
    must be the model it was built with (None: unchecked). ``background``: reloads run in a thread."""
    return replica.open_replica(
        settings.milvus_uri, settings.collections, embedder, settings.replica_poll, background=background
    )


def replica_problem(settings: Settings, processes: int) -> str | None:
    """Why replicas cannot be served by ``processes`` processes (Milvus Lite opens in one at a time), or None;
    InvalidInput for a URI that names no Milvus."""
    check_uri(settings.milvus_uri)
    if is_lite(settings.milvus_uri) and processes > 1:
        return "Milvus Lite opens in one process at a time: replicas need a Milvus server URI"
    return None
