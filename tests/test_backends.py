"""A third vector backend is one module and one registry entry (issue 16): a brute-force numpy backend, defined
here, registered with the factory, and driven through the normal code paths (build, open, search, add, delete,
check, repair after a crash), each answer compared with numpy over the vectors SQLite stores."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from indexer.build import build_index
from indexer.sources import read_sources
from indexer.update import add_articles, delete_articles
from search.errors import IndexCorrupt, InvalidInput
from search.models import Article
from search.service import SearchService
from search.settings import STORES, Settings
from search.storage.files import discarded_on_failure
from search.storage.index import VECTORS_STATE, check_index, open_index
from search.storage.manifest import Manifest, VectorEntry, read_manifest, write_manifest
from search.storage.store import Store
from search.vectors import factory
from search.vectors.base import IndexVectors, Matches, VectorBackend, checked_batch, matches_of
from tests.conftest import CORPUS
from tests.fakes import HashEmbedder

VECTORS = "numpy-vectors.npz"


class NumpyStore:
    """Exact inner-product search over arrays held in memory: the ``VectorStore`` interface at its simplest."""

    def __init__(self, dimension: int, ids: np.ndarray | None = None, vectors: np.ndarray | None = None) -> None:
        self.dimension = dimension
        self._ids = np.zeros(0, np.int64) if ids is None else np.asarray(ids, np.int64)
        self._vectors = np.zeros((0, dimension), np.float32) if vectors is None else np.asarray(vectors, np.float32)

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids, vectors = checked_batch(ids, vectors, self.dimension)
        self._ids = np.concatenate([self._ids, ids])
        self._vectors = np.concatenate([self._vectors, vectors])

    def remove(self, ids: np.ndarray) -> int:
        gone = np.isin(self._ids, np.asarray(ids, np.int64))
        self._ids, self._vectors = self._ids[~gone], self._vectors[~gone]
        return int(gone.sum())

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        queries = np.atleast_2d(np.asarray(queries, np.float32))
        keep = np.ones(len(self._ids), bool) if allowed is None else np.isin(self._ids, allowed)
        ids, vectors = self._ids[keep], self._vectors[keep]
        k = max(1, k)
        scores = np.full((len(queries), k), -np.inf, np.float32)
        found = np.full((len(queries), k), -1, np.int64)
        if len(ids):
            full = queries @ vectors.T
            order = np.lexsort((np.broadcast_to(ids, full.shape), -full), axis=1)[:, :k]
            n = order.shape[1]
            scores[:, :n] = np.take_along_axis(full, order, axis=1)
            found[:, :n] = ids[order]
        return scores, found

    def range(self, query: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
        scores = self._vectors @ np.asarray(query, np.float32).reshape(-1)
        keep = scores >= np.float32(floor)
        return scores[keep], self._ids[keep]

    def matches(self, query: np.ndarray, floor: float, best: int) -> Matches:
        return matches_of(*self.range(query, floor), best)

    def reconstruct(self, id_: int) -> np.ndarray:
        vector: np.ndarray = self.reconstruct_batch(np.asarray([id_]))[0]
        return vector

    def reconstruct_batch(self, ids: np.ndarray) -> np.ndarray:
        position = {int(i): n for n, i in enumerate(self._ids)}
        try:
            return self._vectors[[position[int(i)] for i in ids]].reshape(len(ids), self.dimension)
        except KeyError as exc:
            raise KeyError(exc.args[0]) from None

    def count(self) -> int:
        return len(self._ids)

    def ids(self) -> np.ndarray:
        return np.sort(self._ids)


class NumpyVectors(IndexVectors):
    def __init__(self, passages: NumpyStore, articles: NumpyStore) -> None:
        self.passages: NumpyStore = passages
        self.articles: NumpyStore = articles

    def save(self, directory: Path, generation: int, manifest: Manifest) -> None:
        pids, aids = self.passages.ids(), self.articles.ids()
        tmp = directory / f".{VECTORS}.tmp.npz"
        with discarded_on_failure(tmp):
            np.savez(
                tmp,
                passages_ids=pids,
                passages_vectors=self.passages.reconstruct_batch(pids),
                articles_ids=aids,
                articles_vectors=self.articles.reconstruct_batch(aids),
            )
            os.replace(tmp, directory / VECTORS)
        (directory / VECTORS_STATE).write_text(json.dumps({"generation": generation, "store": "numpy"}))

    def search_params_changed(self, manifest: Manifest, settings: Settings) -> bool:
        return False  # exact: nothing to tune

    def memory_bytes(self) -> int:
        return sum(s._ids.nbytes + s._vectors.nbytes for s in (self.passages, self.articles))


class NumpyBackend(VectorBackend):
    name = "numpy"
    opened: ClassVar[list[str]] = []  # how each open went: "loaded" (its file matched the store) or "rebuilt"

    def entry(self, settings: Settings, target: Path, dimension: int) -> VectorEntry:
        return {"store": self.name}

    def open(self, directory: Path, store: Store, manifest: Manifest, *, records: bool = True) -> NumpyVectors:
        dim = int(manifest["model"]["dimension"])
        if _stamp(directory) == store.generation():
            with np.load(directory / VECTORS) as saved:
                self.opened.append("loaded")
                return NumpyVectors(
                    NumpyStore(dim, saved["passages_ids"], saved["passages_vectors"]),
                    NumpyStore(dim, saved["articles_ids"], saved["articles_vectors"]),
                )
        self.opened.append("rebuilt")
        vectors = NumpyVectors(NumpyStore(dim), NumpyStore(dim))
        for kind, vs in (("passages", vectors.passages), ("articles", vectors.articles)):
            for ids, vecs in store.iter_vectors(kind):
                vs.add(ids, vecs)
        with store.saving(store.generation()) as ok:
            if ok:
                vectors.save(directory, store.generation(), manifest)
        return vectors

    def check(self, directory: Path, store: Store, manifest: Manifest) -> list[str]:
        if _stamp(directory) != store.generation():
            return []  # stale: the next open rebuilds it
        problems = []
        with np.load(directory / VECTORS) as saved:
            for kind in ("passages", "articles"):
                ids, vecs = zip(*store.iter_vectors(kind), strict=True)
                if not np.array_equal(np.concatenate(ids), saved[f"{kind}_ids"]):
                    problems.append(f"{VECTORS} holds other {kind} than SQLite")
                elif not np.allclose(np.concatenate(vecs), saved[f"{kind}_vectors"], atol=1e-6):
                    problems.append(f"{VECTORS}: {kind} vectors differ from SQLite")
        return problems


def _stamp(directory: Path) -> int | None:
    try:
        return int(json.loads((directory / VECTORS_STATE).read_text())["generation"])
    except (OSError, ValueError, KeyError):
        return None


@pytest.fixture
def numpy_backend() -> Iterator[type[NumpyBackend]]:
    factory.register("numpy", NumpyBackend)
    NumpyBackend.opened.clear()
    try:
        yield NumpyBackend
    finally:
        factory.REGISTRY.pop("numpy")
        factory._loaded.pop("numpy", None)


def _oracle(store: Store, embedder: HashEmbedder, query: str) -> dict[str, float]:
    """Every article's dense score for ``query``, its best passage's cosine, from the vectors SQLite stores."""
    ids, vecs = zip(*store.iter_vectors("passages"), strict=True)
    pids, scores = np.concatenate(ids), np.concatenate(vecs) @ embedder.encode([query])[0]
    owners = dict(zip(*store.passage_owners(), strict=True))
    best: dict[int, float] = {}
    for pid, score in zip(pids.tolist(), scores.tolist(), strict=True):
        aid = int(owners[pid])
        best[aid] = max(best.get(aid, -np.inf), score)
    refs = store.article_refs(list(best))
    return {refs[aid].id: score for aid, score in best.items()}


def _assert_dense(service: SearchService, store: Store, embedder: HashEmbedder, query: str) -> list[str]:
    """A dense search ranks articles as numpy does: the best of them first, each scored with its best passage's
    cosine, best first (the service ends the list at its match floor and shows one article per duplicate group)."""
    got = service.search(query, k=5, mode="dense").results
    want = _oracle(store, embedder, query)
    assert got and got[0].score == pytest.approx(max(want.values()), abs=1e-5)
    assert [r.score for r in got] == pytest.approx([want[r.article.id] for r in got], abs=1e-5)
    assert [r.score for r in got] == sorted((r.score for r in got), reverse=True)
    return [r.article.id for r in got]


def test_a_third_backend_is_one_class_and_one_registry_entry(tmp_path: Path, numpy_backend) -> None:
    embedder = HashEmbedder()
    target = tmp_path / "idx"
    settings = Settings(index_dir=target, store="numpy")
    build_index(read_sources([CORPUS]), target, settings, embedder, progress=False)
    manifest = read_manifest(target)
    assert manifest.get("store") == "numpy" and "milvus" not in manifest
    files = {p.name for p in target.resolve().iterdir()}
    assert VECTORS in files and "vectors.faiss" not in files
    assert check_index(target) == []

    index = open_index(target, embedder)
    assert isinstance(index.vectors, NumpyVectors) and numpy_backend.opened == ["rebuilt", "loaded"]
    service = SearchService(index, embedder, settings)
    try:
        store = index.sqlite
        query = "North Korea accuses the United States"
        first = _assert_dense(service, store, embedder, query)
        assert _assert_dense(service, store, embedder, "carmaker shares profit") == ["business/002"]

        added = Article(id="numpy/1", title="Walrus cobalt zeppelin", paragraphs=("Quartz walrus cobalt zeppelin.",))
        add_articles(index, [added], embedder, settings)
        assert service.search("walrus cobalt zeppelin quartz", k=1, mode="dense").results[0].article.id == "numpy/1"
        assert index.passages.count() == store.counts()[1] and index.articles.count() == store.counts()[0]
        delete_articles(index, [first[0]])
        assert first[0] not in _assert_dense(service, store, embedder, query)
        assert check_index(target) == []
    finally:
        index.close()

    # a vector the file holds for a passage SQLite does not: newsdesk check says so, whatever the backend
    directory = target.resolve()
    with np.load(directory / VECTORS) as saved:
        arrays = dict(saved)
    arrays["passages_ids"] = arrays["passages_ids"] + 1
    np.savez(directory / VECTORS, **arrays)
    assert check_index(target) == [f"{VECTORS} holds other passages than SQLite"]
    # a crash between the commit and the save: the stamp lags the store, and the next open repairs the vectors
    (directory / VECTORS_STATE).write_text(json.dumps({"generation": 0, "store": "numpy"}))
    assert check_index(target) == []
    reopened = open_index(target, None)
    try:
        assert numpy_backend.opened[-1] == "rebuilt"
        np.testing.assert_array_equal(reopened.passages.ids(), reopened.sqlite.keys("passages"))
    finally:
        reopened.close()
    assert check_index(target) == []


def test_an_unknown_backend_is_refused_before_anything_is_embedded(tmp_path: Path) -> None:
    class Refusing(HashEmbedder):
        def encode_spans(
            self, texts: list[str], spans: list[list[tuple[int, int]]], *, batch_size: int = 64
        ) -> tuple[np.ndarray, list[np.ndarray]]:
            raise AssertionError("the corpus was embedded before the store was checked")

    settings = Settings(index_dir=tmp_path / "idx", store="numpy")
    with pytest.raises(InvalidInput, match="store must be one of faiss, milvus, got 'numpy'"):
        build_index(read_sources([CORPUS]), settings.index_dir, settings, Refusing(), progress=False)
    assert not (tmp_path / "idx").exists()


def test_the_registry_offers_what_the_store_setting_accepts() -> None:
    """``--store`` (search/settings.py STORES, the CLI's choices) and the factory name the same backends, from the
    one list in search/vectors/registry.py."""
    assert set(factory.REGISTRY) == set(STORES)
    for name in STORES:
        assert factory.backend(name).name == name


def test_an_index_on_a_backend_this_version_lacks_is_refused_not_opened_as_faiss(
    tmp_path: Path, corpus_index: Path
) -> None:
    """Its manifest names a store the registry does not have: open, check and stats say so in one line, where the
    code before the factory took every store but "milvus" for FAISS and served whatever that rebuilt."""
    copy = tmp_path / "copy"
    shutil.copytree(corpus_index.resolve(), copy)
    manifest = read_manifest(copy)
    manifest["store"] = "elastic"
    write_manifest(copy, manifest)
    with pytest.raises(IndexCorrupt, match="'elastic' store, which this newsdesk does not have"):
        open_index(copy, None)
    assert [p for p in check_index(copy) if "'elastic' store" in p] == check_index(copy) != []
