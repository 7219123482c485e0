"""Issue 17, vectors at archive scale: bases memory-mapped on open, changed through a layer beside them (never copied
into memory by a write) and mapped again after a merge writes a new base; bases
checked by size on open and by CRC-32 in ``check`` and before a merge, and ``faiss_factory=auto`` (exact below a
threshold, ANN from it, with recall@10 against exact search recorded and measured)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import search.vectors.faiss as faiss_backend
from indexer.build import build_index
from indexer.update import add_articles, optimize
from search.errors import IndexCorrupt, InvalidInput
from search.models import Article
from search.settings import Settings
from search.storage.files import file_crc32
from search.storage.index import check_index, open_index
from search.storage.manifest import AutoEntry, FaissEntry, read_manifest
from search.vectors.faiss import PASSAGE_VECTORS, FaissVectorStore, ann_search, resolve, sampled_recall
from tests.fakes import HashEmbedder, wire_articles
from tests.test_cli import assert_ok, invoke
from tests.test_segments import _same_as_sqlite

EMBEDDER = HashEmbedder()


def _articles(n: int, seed: int, prefix: str) -> list[Article]:
    return [
        Article(id=f"{prefix}-{i}", title=r["title"], paragraphs=tuple(r["paragraphs"]), date=r.get("date"))
        for i, r in enumerate(wire_articles(n, seed=seed))
    ]


def _settings(target: Path, **kw: object) -> Settings:
    return Settings(index_dir=target, **kw)  # type: ignore[arg-type]


@pytest.fixture(autouse=True)
def _appending(monkeypatch: pytest.MonkeyPatch) -> None:
    """About 80 passages: writes of a few articles would pass the merge fraction; lift it so writes append."""
    monkeypatch.setattr(faiss_backend, "MERGE_FRACTION", 10.0)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("scale") / "base"
    build_index(_articles(40, 1, "base"), target, _settings(target), EMBEDDER, progress=False)
    return target


@pytest.fixture
def index_dir(tmp_path: Path, built: Path) -> Path:
    shutil.copytree(built, tmp_path / "idx")
    return tmp_path / "idx"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- memory-mapped bases -----------------------------------------------------------------------------------


def test_an_open_maps_the_bases_writes_keep_them_mapped_and_a_merge_maps_the_new_ones(index_dir: Path) -> None:
    before = _digest(index_dir / PASSAGE_VECTORS)
    index = open_index(index_dir, EMBEDDER)
    try:
        assert index.passages.mapped and index.articles.mapped  # type: ignore[attr-defined]
        add_articles(index, _articles(2, 7, "new"), EMBEDDER, _settings(index_dir))  # FAISS would abort if resized
        assert index.passages.mapped and index.articles.mapped  # type: ignore[attr-defined]
        assert _digest(index_dir / PASSAGE_VECTORS) == before  # the write appended a segment; the base is untouched
        _same_as_sqlite(index_dir)
        assert optimize(index) > 0
        assert _digest(index_dir / PASSAGE_VECTORS) != before
        add_articles(index, _articles(1, 8, "after"), EMBEDDER, _settings(index_dir))
        passages: FaissVectorStore = index.passages  # type: ignore[assignment]
        assert passages.mapped and passages._mapped_file is not None  # the merged base, mapped from the change on
        assert os.fstat(passages._mapped_file.fileno()).st_ino == (index_dir / PASSAGE_VECTORS).stat().st_ino
        aid = index.store.aid_of("after-0")
        assert aid is not None and len(passages._layer.ids) == len(index.store.passages_of(aid))  # what came after
    finally:
        index.close()
    _same_as_sqlite(index_dir)
    reopened = open_index(index_dir, EMBEDDER)
    try:
        assert "after-0" in reopened.catalog.ids
    finally:
        reopened.close()


def _unit(rng: np.random.Generator, n: int, d: int = 16) -> np.ndarray:
    v = rng.standard_normal((n, d)).astype(np.float32)
    unit: np.ndarray = v / np.linalg.norm(v, axis=1, keepdims=True)
    return unit


@pytest.mark.parametrize("factory", ["IDMap2,Flat", "IVF8,Flat", "HNSW16"])
def test_a_mapped_store_takes_changes_through_its_layer_like_one_held_in_memory(tmp_path: Path, factory: str) -> None:
    """Random adds, replacements and removals on a mapped store (its layer) and on the same store read into memory
    agree step by step: ids, count, reconstructions, and searches (exact ones against a numpy oracle), with and
    without an allowed list; a save folds the layer into a new base, mapped again."""
    rng = np.random.default_rng(3)
    ids = np.arange(1000, 1300, dtype=np.int64)
    held = dict(zip(ids.tolist(), _unit(rng, 300), strict=True))
    FaissVectorStore.build(16, factory, [(ids, np.stack(list(held.values())))]).save(tmp_path / "v.faiss")
    search = {"IVF8,Flat": "nprobe=8", "HNSW16": "efSearch=400"}.get(factory, "")  # every list, or the whole graph
    mapped = FaissVectorStore.load(tmp_path / "v.faiss", factory, search)
    read = FaissVectorStore.load(tmp_path / "v.faiss", factory, search)
    read._own()
    assert mapped.mapped and not read.mapped
    for step in range(12):
        gone = rng.choice(np.array(sorted(held), np.int64), size=15, replace=False)
        fresh = np.concatenate([rng.choice(gone, size=5, replace=False), 2000 + step * 10 + np.arange(10)])
        vecs = _unit(rng, len(fresh))
        for store in (mapped, read):
            assert store.remove(gone) == len(gone)
            store.add(fresh, vecs)
        for i in gone.tolist():
            held.pop(i)
        held.update(zip(fresh.tolist(), vecs, strict=True))
        assert mapped.mapped
        live = np.array(sorted(held), np.int64)
        np.testing.assert_array_equal(mapped.ids(), live)
        np.testing.assert_array_equal(read.ids(), live)
        assert mapped.count() == read.count() == len(live)
        np.testing.assert_allclose(mapped.reconstruct_batch(fresh), vecs, atol=1e-6)
        with pytest.raises(KeyError):
            mapped.reconstruct_batch(np.setdiff1d(gone, fresh)[:1])
        queries = _unit(rng, 4)
        allowed = np.sort(rng.choice(live, size=40, replace=False))
        for allow in (None, allowed):
            got_s, got_i = mapped.search(queries, 8, allowed=allow)
            assert set(got_i.ravel().tolist()) <= set(live.tolist())
            # the oracle: brute force over what is live (the ANN indexes search exhaustively here)
            pool = live if allow is None else allow
            matrix = np.stack([held[i] for i in pool.tolist()])
            scores = queries @ matrix.T
            want = pool[np.argsort(-scores, axis=1, kind="stable")[:, :8]]
            np.testing.assert_array_equal(got_i, want)
            np.testing.assert_allclose(got_s, np.sort(scores, axis=1)[:, ::-1][:, :8], atol=1e-5)
            np.testing.assert_array_equal(got_i, read.search(queries, 8, allowed=allow)[1])
    mapped.save(tmp_path / "w.faiss")  # served as it was until the next change, which maps the new base
    np.testing.assert_array_equal(mapped.ids(), np.array(sorted(held), np.int64))
    mapped.add(np.array([9999], np.int64), vecs[:1])
    assert mapped.mapped and mapped._mapped_file is not None and len(mapped._layer.ids) == 1
    assert os.fstat(mapped._mapped_file.fileno()).st_ino == (tmp_path / "w.faiss").stat().st_ino
    np.testing.assert_array_equal(mapped.ids(), np.array(sorted([*held, 9999]), np.int64))
    np.testing.assert_allclose(mapped.reconstruct_batch(fresh), vecs, atol=1e-6)


def test_searches_beside_a_whole_save_of_a_mapped_store_see_one_state(tmp_path: Path) -> None:
    """A save runs beside searches (under the service's read lock): writing a mapped store with a layer must not
    change what a search reads (the fold is a copy; the new base is taken at the next change)."""
    rng = np.random.default_rng(5)
    ids = np.arange(20_000, dtype=np.int64)
    vectors = _unit(rng, 20_000)
    FaissVectorStore.build(16, "IDMap2,Flat", [(ids, vectors)]).save(tmp_path / "v.faiss")
    store = FaissVectorStore.load(tmp_path / "v.faiss", "IDMap2,Flat")
    store.remove(ids[:300])
    store.add(np.arange(5000, 5300, dtype=np.int64), vectors[:300])
    queries = _unit(rng, 8)
    want = store.search(queries, 10)[1]
    stop, seen = threading.Event(), []

    def search() -> None:
        while not stop.is_set():
            seen.append(bool((store.search(queries, 10)[1] == want).all()))

    thread = threading.Thread(target=search)
    thread.start()
    try:
        for n in range(8):
            store.save(tmp_path / f"w{n}.faiss")
    finally:
        stop.set()
        thread.join()
    assert seen and all(seen)


def test_a_mapped_store_opened_with_a_wrong_size_is_refused(tmp_path: Path) -> None:
    vectors = np.eye(4, 8, dtype=np.float32)
    FaissVectorStore.build(8, "IDMap2,Flat", [(np.arange(4, dtype=np.int64), vectors)]).save(tmp_path / "v.faiss")
    size = (tmp_path / "v.faiss").stat().st_size
    assert FaissVectorStore.load(tmp_path / "v.faiss", "IDMap2,Flat", size=size).count() == 4
    with pytest.raises(IndexCorrupt):
        FaissVectorStore.load(tmp_path / "v.faiss", "IDMap2,Flat", size=size + 1)


# -- verification: by size on open, by checksum in check and before a merge --------------------------------


def test_an_open_does_not_checksum_the_bases(index_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    summed: list[str] = []
    real = file_crc32

    def counting(path: Path, chunk: int = 1 << 20) -> int:
        summed.append(path.name)
        return real(path, chunk)

    monkeypatch.setattr(faiss_backend, "file_crc32", counting)
    index = open_index(index_dir, EMBEDDER)
    index.close()
    assert summed == []


def test_a_truncated_base_is_refused_at_open_and_rebuilt(index_dir: Path) -> None:
    path = index_dir / PASSAGE_VECTORS
    size = path.stat().st_size
    with path.open("r+b") as fh:
        fh.truncate(size - 64)  # a header FAISS still reads: only the size tells
    open_index(index_dir, EMBEDDER).close()
    assert path.stat().st_size == size
    _same_as_sqlite(index_dir)


def test_a_same_size_corrupted_base_is_caught_by_check_and_by_a_merge(index_dir: Path) -> None:
    index = open_index(index_dir, EMBEDDER)
    try:
        add_articles(index, _articles(2, 9, "new"), EMBEDDER, _settings(index_dir))  # a segment to merge later
    finally:
        index.close()
    path = index_dir / PASSAGE_VECTORS
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x5A  # inside the vector codes: the same size, a vector changed
    path.write_bytes(bytes(data))
    problems = check_index(index_dir)
    assert len(problems) == 1 and PASSAGE_VECTORS in problems[0], problems
    index = open_index(index_dir, EMBEDDER)  # by size it looks whole
    try:
        with pytest.raises(OSError, match="checksum"):
            optimize(index)
    finally:
        index.close()
    _same_as_sqlite(index_dir)  # the merge dropped the stamp: the open rebuilt from SQLite


# -- faiss_factory=auto ------------------------------------------------------------------------------------


def test_auto_resolves_by_count() -> None:
    entry: FaissEntry = {
        "factory": "IDMap2,Flat",
        "search": "",
        "auto": {"threshold": 1000, "ann": "IVF{nlist},Flat", "ann_search": "nprobe=8", "passages_search": ""},
    }
    assert resolve(entry, 999) == ("IDMap2,Flat", "")
    assert resolve(entry, 1000) == ("IVF128,Flat", "nprobe=8")
    assert resolve({**entry, "search": "nprobe=4"}, 10**6) == ("IVF4096,Flat", "nprobe=4")
    assert resolve({"factory": "HNSW32", "search": "efSearch=64"}, 10) == ("HNSW32", "efSearch=64")


def test_auto_probes_a_share_of_the_ivf_lists() -> None:
    """nprobe follows the lists (issue 17: a fixed 256 of 4,096 lists gave recall@10 0.936 at 924k passages): the
    share of them, at least 256 or all of a small IVF; an nprobe the settings name wins; a manifest from before
    the share, or a graph, keeps its ann_search."""
    auto: AutoEntry = {"threshold": 1000, "ann": "IVF{nlist},Flat", "ann_search": "", "probe_share": 0.125,
                       "passages_search": ""}  # fmt: skip
    assert ann_search(auto, "IVF4096,Flat") == "nprobe=512"
    assert ann_search(auto, "IVF16384,Flat") == "nprobe=2048"
    assert ann_search(auto, "IVF2048,Flat") == "nprobe=256"
    assert ann_search(auto, "IVF32,Flat") == "nprobe=32"
    assert ann_search({**auto, "probe_share": 0.25}, "IVF4096,SQ8") == "nprobe=1024"
    assert ann_search({**auto, "ann_search": "nprobe=64"}, "IVF4096,Flat") == "nprobe=64"
    assert ann_search({**auto, "ann_search": "quantizer_efSearch=32"}, "IVF4096,Flat") == (
        "quantizer_efSearch=32,nprobe=512"
    )
    assert ann_search({**auto, "ann": "HNSW32", "ann_search": "efSearch=64"}, "HNSW32") == "efSearch=64"
    old: AutoEntry = {"threshold": 1000, "ann": "IVF{nlist},Flat", "ann_search": "nprobe=256", "passages_search": ""}
    assert ann_search(old, "IVF4096,Flat") == "nprobe=256"
    entry: FaissEntry = {"factory": "IDMap2,Flat", "search": "", "auto": auto}
    assert resolve(entry, 10**6) == ("IVF4096,Flat", "nprobe=512")
    assert Settings().faiss_ann_probe_share == 0.125 and Settings().faiss_ann_search == ""
    with pytest.raises(InvalidInput):
        Settings(faiss_ann_probe_share=0.0).validated()


def test_a_new_probe_share_reaches_an_ann_base_without_a_rebuild(tmp_path: Path, runner: CliRunner) -> None:
    target = tmp_path / "ann"
    rows = _articles(40, 1, "a")
    build_index(rows, target, _settings(target, faiss_ann_threshold=50, faiss_ann_search="nprobe=4"), EMBEDDER)
    index = open_index(target, EMBEDDER)
    try:
        nlist = faiss_backend.ivf_lists(index.passages.count())
        assert index.passages.search_params == "nprobe=4"  # type: ignore[attr-defined]
        shared = _settings(target, faiss_ann_threshold=50, faiss_ann_probe_share=0.5)
        assert index.vectors.search_params_changed(index.manifest, shared)
        want = f"nprobe={min(nlist, 256)}"
        assert index.passages.search_params == want  # type: ignore[attr-defined]
        auto = index.manifest["faiss"]["auto"]
        assert auto["probe_share"] == 0.5 and auto["passages_search"] == want
        assert index.manifest["faiss"]["recall"]["at10"] >= 0.99  # re-measured: every list probed (ties aside)
        assert not index.vectors.search_params_changed(index.manifest, shared)
    finally:
        index.close()


def test_auto_builds_exact_below_the_threshold_and_ann_above(tmp_path: Path) -> None:
    small, large = tmp_path / "small", tmp_path / "large"
    rows = _articles(40, 1, "a")
    build_index(rows, small, _settings(small), EMBEDDER, progress=False)
    faiss = read_manifest(small)["faiss"]
    assert faiss["factory"] == "IDMap2,Flat" and "recall" not in faiss and faiss["auto"]["threshold"] == 250_000
    build_index(rows, large, _settings(large, faiss_ann_threshold=50, faiss_ann_search="nprobe=4"), EMBEDDER)
    faiss = read_manifest(large)["faiss"]
    passages = read_manifest(large)["counts"]["passages"]
    assert faiss["factory"] == f"IVF{faiss_backend.ivf_lists(passages)},Flat" and passages >= 50
    assert faiss["articles"] == "IDMap2,Flat"  # 40 articles: below the threshold
    assert faiss["auto"]["passages_search"] == "nprobe=4" and 0 < faiss["recall"]["at10"] <= 1
    index = open_index(large, EMBEDDER)
    try:
        assert index.passages.factory.startswith("IVF") and index.passages.search_params == "nprobe=4"  # type: ignore[attr-defined]
    finally:
        index.close()
    assert check_index(large) == []


def test_a_merge_that_crosses_the_threshold_turns_the_base_ann(index_dir: Path) -> None:
    manifest = read_manifest(index_dir)
    passages = manifest["counts"]["passages"]
    threshold = passages + 5  # the base is exact; a write of a few articles crosses
    manifest["faiss"]["auto"]["threshold"] = threshold
    (index_dir / "manifest.json").write_text(json.dumps(manifest))
    settings = _settings(index_dir, faiss_ann_threshold=threshold)
    index = open_index(index_dir, EMBEDDER)
    try:
        add_articles(index, _articles(4, 11, "more"), EMBEDDER, settings)
        assert index.passages.factory == "IDMap2,Flat"  # type: ignore[attr-defined]  # appended: no base written
        optimize(index)
        assert index.passages.factory.startswith("IVF")  # type: ignore[attr-defined]
    finally:
        index.close()
    faiss = read_manifest(index_dir)["faiss"]
    assert faiss["factory"].startswith("IVF") and faiss["recall"]["sample"] > 0
    index = open_index(index_dir, EMBEDDER)
    try:
        assert index.passages.factory == faiss["factory"]  # type: ignore[attr-defined]
        assert index.passages.count() == index.store.counts()[1]
    finally:
        index.close()
    assert check_index(index_dir) == []


def test_an_explicit_factory_is_recorded_as_before(tmp_path: Path) -> None:
    target = tmp_path / "x"
    build_index(_articles(10, 1, "a"), target, _settings(target, faiss_factory="IDMap2,Flat"), EMBEDDER)
    faiss = read_manifest(target)["faiss"]
    assert faiss["factory"] == "IDMap2,Flat" and "auto" not in faiss


def test_sampled_recall_matches_a_numpy_oracle() -> None:
    rng = np.random.default_rng(5)
    vectors = rng.standard_normal((3000, 32)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    ids = rng.choice(10**6, size=3000, replace=False).astype(np.int64)
    store = FaissVectorStore.build(32, "IVF64,Flat", [(ids, vectors)], "nprobe=2")
    got = sampled_recall(store)
    from_sqlite = sampled_recall(store, [(ids[:1000], vectors[:1000]), (ids[1000:], vectors[1000:])])
    # the oracle: the same seeded sample, exact top 10 by numpy over every vector, the store's own top 10
    picked = np.sort(np.random.default_rng(faiss_backend.RECALL_SEED).choice(np.sort(ids), 200, replace=False))
    row = {int(i): r for r, i in enumerate(ids)}
    queries = vectors[[row[int(i)] for i in picked]]
    exact = ids[np.argsort(-(queries @ vectors.T), axis=1)[:, :10]]
    found = store.search(queries, 10)[1]
    oracle = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(found, exact, strict=True)])
    assert got["sample"] == 200 and got["exact"] == "reconstructed" and from_sqlite["exact"] == "sqlite"
    assert got["at10"] == pytest.approx(oracle, abs=1e-4) and from_sqlite["at10"] == pytest.approx(oracle, abs=1e-4)
    assert oracle < 0.99  # nprobe=2 of 64 lists: a real loss, so the figure is not trivially 1
    store.set_search_params("nprobe=64")
    assert sampled_recall(store)["at10"] == 1.0


def test_stats_and_check_report_the_ann_recall(tmp_path: Path, runner: CliRunner) -> None:
    target = tmp_path / "ann"
    build_index(_articles(40, 1, "a"), target, _settings(target, faiss_ann_threshold=50), EMBEDDER, progress=False)
    result = invoke(runner, "stats", "--index", target, "--json")
    assert_ok(result)
    faiss = json.loads(result.output)["faiss"]
    assert faiss["factory"].startswith("IVF") and faiss["recall"]["sample"] > 0 and faiss["auto"]["threshold"] == 50
    result = invoke(runner, "stats", "--index", target)
    assert_ok(result)
    assert "recall@10" in result.output and "auto: exact below 50" in result.output
    result = invoke(runner, "check", "--index", target)
    assert_ok(result)
    assert "recall@10" in result.output and "sampled stored vectors" in result.output


def test_an_exact_index_built_before_auto_adopts_it_without_a_rebuild(tmp_path: Path) -> None:
    target = tmp_path / "old"
    build_index(_articles(10, 1, "a"), target, _settings(target, faiss_factory="IDMap2,Flat"), EMBEDDER)
    manifest = read_manifest(target)
    backend = faiss_backend.FaissBackend()
    auto = _settings(target, faiss_ann_threshold=50)
    assert backend.incompatibility(manifest, auto) is None
    assert backend.incompatibility(manifest, _settings(target, faiss_factory="HNSW32")) is not None
    index = open_index(target, EMBEDDER)
    try:
        assert index.vectors.search_params_changed(index.manifest, auto)  # the rule recorded: the sync saves it
        assert index.manifest["faiss"]["auto"]["threshold"] == 50
        assert not index.vectors.search_params_changed(index.manifest, auto)
    finally:
        index.close()
