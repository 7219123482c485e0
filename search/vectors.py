"""Vector storage behind a narrow interface; FAISS in-process is the embedded default.

The FAISS file is a cache derived from the embeddings stored in SQLite, so it can always be rebuilt without
re-embedding; a second backend (a later issue's Milvus) is a new class with the same methods.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from search.errors import IndexCorrupt, InvalidInput


class VectorStore(Protocol):
    """Inner-product search over int64-keyed float32 vectors."""

    dimension: int

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    def remove(self, ids: np.ndarray) -> int: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (len(queries), k); missing slots have id -1 and score -inf."""
        ...

    def reconstruct(self, id_: int) -> np.ndarray: ...

    def count(self) -> int: ...

    def ids(self) -> np.ndarray: ...

    def save(self, path: Path) -> None: ...


class FaissVectorStore:
    """A FAISS index from an ``index_factory`` string, wrapped with an id map when the factory has none."""

    def __init__(self, dimension: int, factory: str = "IDMap2,Flat", index: Any = None) -> None:
        import faiss

        self.dimension = dimension
        self.factory = factory
        if index is None:
            try:
                index = faiss.index_factory(dimension, factory, faiss.METRIC_INNER_PRODUCT)
            except RuntimeError as exc:
                raise InvalidInput(f"invalid FAISS index_factory string {factory!r}: {exc}") from None
            if not isinstance(index, faiss.IndexIDMap | faiss.IndexIDMap2):
                index = faiss.IndexIDMap2(index)
        self._index: Any = index

    @classmethod
    def load(cls, path: Path, factory: str) -> FaissVectorStore:
        import faiss

        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise IndexCorrupt(f"cannot read {path.name}: {exc}".splitlines()[0]) from None
        return cls(index.d, factory, index)

    @classmethod
    def build(cls, dimension: int, factory: str, batches: Iterable[tuple[np.ndarray, np.ndarray]]) -> FaissVectorStore:
        """Fill a new store from (ids, vectors) batches, training first when the factory needs it."""
        store = cls(dimension, factory)
        batches = list(batches)
        if not store._index.is_trained:
            sample = np.concatenate([v for _, v in batches]) if batches else np.zeros((0, dimension), np.float32)
            store.train(sample)
        for ids, vecs in batches:
            store.add(ids, vecs)
        return store

    def train(self, vectors: np.ndarray) -> None:
        try:
            self._index.train(np.ascontiguousarray(vectors, dtype=np.float32))
        except RuntimeError as exc:
            raise InvalidInput(f"FAISS index {self.factory!r} cannot be trained here: {exc}".splitlines()[0]) from None

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dimension:
            raise InvalidInput(f"expected vectors of dimension {self.dimension}, got shape {vectors.shape}")
        self._index.add_with_ids(vectors, np.ascontiguousarray(ids, dtype=np.int64))

    def remove(self, ids: np.ndarray) -> int:
        import faiss

        if len(ids) == 0:
            return 0
        return int(self._index.remove_ids(faiss.IDSelectorBatch(np.ascontiguousarray(ids, dtype=np.int64))))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        k = max(1, min(k, max(self.count(), 1)))
        scores, ids = self._index.search(queries, k)
        scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
        return scores, ids

    def reconstruct(self, id_: int) -> np.ndarray:
        try:
            return np.asarray(self._index.reconstruct(int(id_)), dtype=np.float32)
        except RuntimeError:
            raise KeyError(id_) from None

    def count(self) -> int:
        return int(self._index.ntotal)

    def ids(self) -> np.ndarray:
        import faiss

        return np.sort(faiss.vector_to_array(self._index.id_map).astype(np.int64))

    def save(self, path: Path) -> None:
        """Write to a temporary file and rename, so a reader never sees half a file."""
        import faiss

        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        faiss.write_index(self._index, str(tmp))
        os.replace(tmp, path)
