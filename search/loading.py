"""Loading the model and opening the index: the heavy, once-per-process step of a server or a CLI command.

Here rather than in api/app.py so that the CLI's ``search`` and ``eval`` do not import Flask and the web layer
(0.6 s of a CLI search, measured with ``python -X importtime``) to answer in a terminal.
"""

from __future__ import annotations

from search.service import SearchService
from search.settings import Settings


def load_service(settings: Settings) -> SearchService:
    """The service for ``settings``: its index directory, or (``collections``) a stateless replica on Milvus."""
    from search.storage.index import open_index
    from search.text.embedding import make_embedder

    embedder = make_embedder(settings)
    if settings.collections:  # a stateless replica: everything from Milvus, no index directory
        from search.vectors.replicas import open_replica

        return SearchService(open_replica(settings, embedder, background=True), embedder, settings)
    read_only = True if settings.read_only else None  # None: read-only where the directory cannot be written
    return SearchService(open_index(settings.index_dir, embedder, read_only=read_only), embedder, settings)
