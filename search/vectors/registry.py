"""The vector backends this version has, by the name a manifest's ``store`` records: the one list of them.

A name maps to ``"module:Class"`` (a ``VectorBackend``, search/vectors/base.py), imported only when an index asks for
it (search/vectors/factory.py). This module imports nothing, so the settings and the command line can offer the
names (``--store``, ``NEWSDESK_STORE``) without loading a backend. A new backend is one module and one line here.
"""

from __future__ import annotations

VECTOR_BACKENDS: dict[str, str] = {
    "faiss": "search.vectors.faiss:FaissBackend",  # in-process files in the index directory (the default)
    "milvus": "search.vectors.milvus.backend:MilvusBackend",  # two Milvus collections, Lite or a cluster
}
