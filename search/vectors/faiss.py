"""The FAISS backend, the embedded default: in-process indexes saved as files in the index directory.

``vectors.faiss`` (passages) and ``articles.faiss`` (article vectors, always exact) are caches derived from the
embeddings stored in SQLite, so they can always be rebuilt without re-embedding; ``vectors.json`` records the store
generation they were saved at, the factory, the segments later saves appended to them (search/vectors/segments.py:
a write's save costs what it changed, not 1.7 GB at 1.1M passages), every file's CRC-32 and the bases' sizes. An
open maps the bases (``FaissVectorStore.load``) and checks them by size, the segments by CRC-32; ``newsdesk check``
and a merge verify the bases' CRC-32 too. An open that finds them stale, damaged or of another factory rebuilds them
from SQLite (``FaissBackend.open``). ``faiss_factory=auto`` picks exact or ANN by the vectors' count whenever a base
is written (``resolve``), and an ANN base's recall@10 against exact search is measured then (``sampled_recall``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import BinaryIO, Protocol, cast

import numpy as np

from search.arrays import sorted_lookup
from search.errors import IndexCorrupt, InvalidInput
from search.jsontypes import JSONObject
from search.settings import Settings
from search.storage.files import discarded_on_failure, file_crc32, prefetch
from search.storage.manifest import AutoEntry, FaissEntry, Manifest, RecallEntry, VectorEntry, write_manifest
from search.storage.store import Store
from search.vectors.base import (
    EXACT_FILTER_LIMIT,
    VECTORS_STATE,
    Changes,
    IndexVectors,
    Matches,
    VectorBackend,
    best_of,
    checked_batch,
    deepened_range,
    ids_problem,
    kth_highest,
    lookup_keys,
    matches_of,
)
from search.vectors.segments import (
    MERGE_FRACTION,
    MERGE_SEGMENTS,
    Delta,
    Journal,
    compose,
    garbage,
    is_segment_of,
    read_segment,
    segment_name,
    write_segment,
)
from search.vectors.sketch import SKETCH_FROM, Int8Sketch

log = logging.getLogger(__name__)
_SKETCH_START = threading.Lock()

IVF_TRAIN_PER_LIST = 64  # k-means sample per IVF list: FAISS wants >= 39; 64 keeps training at 1M to minutes
TRAIN_SEED = 20240501  # the training sample is reproducible: the same vectors give the same index
PASSAGE_VECTORS = "vectors.faiss"
ARTICLE_VECTORS = "articles.faiss"
ARTICLE_FACTORY = "IDMap2,Flat"  # article vectors stay exact: related stories and labels compare exact cosines
EXACT_FACTORY = "IDMap2,Flat"
AUTO = "auto"  # faiss_factory: exact below the manifest's threshold, its ANN factory from there (``resolve``)
RECALL_SAMPLE = 200  # stored vectors used as queries when recall@10 of an ANN base is measured
RECALL_SEED = 17
# nprobe of an auto IVF is never below this many lists (or all of them): the fixed nprobe before the share, and what a
# small IVF needs (recall@10 0.86 probing 4 of 32 lists in tests/test_faiss_scale.py's 80 passages)
PROBE_FLOOR = 256
RECALL_FLOOR = 0.95  # ``newsdesk check`` reports an ANN base below this recall@10 against exact search


class FaissIndex(Protocol):
    """What this module calls on a FAISS index. faiss's SWIG classes carry no usable types, so this protocol says
    which of their members the code relies on (an ``IndexIDMap2`` adds those of ``_IdMap``)."""

    d: int
    ntotal: int
    is_trained: bool

    def train(self, x: np.ndarray) -> None: ...

    def add_with_ids(self, x: np.ndarray, xids: np.ndarray) -> None: ...

    def remove_ids(self, sel: object) -> int: ...

    def search(self, x: np.ndarray, k: int, params: object = None) -> tuple[np.ndarray, np.ndarray]: ...

    def range_search(
        self, x: np.ndarray, thresh: float, params: object = None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    def reconstruct(self, key: int) -> np.ndarray: ...

    def reconstruct_batch(self, keys: np.ndarray) -> np.ndarray: ...


class _IdMap(FaissIndex, Protocol):
    """``IndexIDMap2``: our ids around an index that numbers its vectors 0..n-1."""

    id_map: object  # a faiss Int64Vector: position -> our id (-1: an HNSW tombstone)
    index: FaissIndex

    def construct_rev_map(self) -> None: ...


class _FlatIP(Protocol):
    """``IndexFlatIP``: float32 codes, row after row."""

    ntotal: int
    d: int

    def get_xb(self) -> object: ...


class _SearchDepth(Protocol):
    efSearch: int


class _HNSW(Protocol):
    hnsw: _SearchDepth


class _InvertedLists(Protocol):
    nlist: int

    def list_size(self, list_no: int) -> int: ...

    def get_ids(self, list_no: int) -> object: ...

    def release_ids(self, list_no: int, ids: object) -> None: ...


class _DirectMap(Protocol):
    type: int


class _IVF(Protocol):
    """An inverted-file index (``IndexIVF``): its lists hold our ids, found through a hashtable (``direct_map``)."""

    nlist: int
    nprobe: int
    quantizer: FaissIndex
    invlists: _InvertedLists
    direct_map: _DirectMap

    def set_direct_map_type(self, kind: object) -> None: ...


def ivf_lists(count: int) -> int:
    """IVF lists for ``count`` vectors: the power of two nearest 4·√N (1,024 at 100k, 4,096 at 1M), as bench/scale.py
    measured them."""
    return int(2 ** round(np.log2(4 * np.sqrt(max(count, 1)))))


def resolve(entry: FaissEntry, count: int, *, articles: bool = False) -> tuple[str, str]:
    """(factory, search parameters) a base of ``count`` vectors is written with: the recorded factory for an
    explicit one; under ``auto``, as Qdrant's indexing threshold, exact while ``count`` is below the threshold and
    the ANN factory (``{nlist}`` filled in) from it, searched with ``faiss_search`` or else the ANN's own."""
    auto = entry.get("auto")
    if auto is None:
        return (
            (entry.get("articles") or ARTICLE_FACTORY, "") if articles else (entry["factory"], entry.get("search", ""))
        )
    if count < auto["threshold"]:
        return EXACT_FACTORY, ""
    search = "" if articles else entry.get("search", "")
    factory = auto["ann"].replace("{nlist}", str(ivf_lists(count)))
    return factory, search or ann_search(auto, factory)


def ann_search(auto: AutoEntry, factory: str) -> str:
    """The search parameters of an ANN base of ``factory`` under ``auto``: its ``ann_search``, and where that names no
    nprobe and the factory is IVF, nprobe = ``probe_share`` of its lists, but at least ``PROBE_FLOOR`` (all lists
    of a smaller IVF). A fixed nprobe lost recall as the archive grew (256 of 4,096 lists: recall@10 0.936 on
    question queries at 924k passages); on the tuning samples (bench/README.md "How many lists a search probes")
    recall at a fixed share of the lists rose with their number, and a small IVF needs a larger share."""
    search = auto["ann_search"]
    share = auto.get("probe_share")
    lists = re.search(r"IVF(\d+)", factory)
    if share is None or lists is None or re.search(r"(^|,)\s*nprobe\s*=", search):
        return search
    nlist = int(lists[1])
    probe = f"nprobe={max(1, round(nlist * share), min(nlist, PROBE_FLOOR))}"
    return f"{search},{probe}" if search.strip() else probe


def is_exact(factory: str) -> bool:
    """Whether a factory keeps every vector as written and scans them all (check compares them, recall is 1)."""
    return "Flat" in factory and not any(part in factory for part in ("PQ", "SQ", "IVF", "HNSW"))


class FaissVectorStore:
    """A FAISS index from an ``index_factory`` string (inner product on normalised vectors), keyed by our int64 ids.

    Three families, told apart by the index FAISS builds, each with add, remove, reconstruct, save/load and ``ids()``:

    - Flat-coded (``IDMap2,Flat``, ``SQ8``, ``PQ48``): wrapped in ``IDMap2``; FAISS removes ids itself.
    - IVF (``IVF1024,SQ8``, ``IVF4096,PQ48np``; ``np`` skips PQ's slow polysemous training): the IVF stores our ids
      itself and keeps a hashtable from id to slot for ``reconstruct`` and ``remove``. It is never wrapped in an id
      map (an ``IDMap`` prefix is dropped), because ``IDMap2.remove_ids`` renumbers positions the inverted lists do
      not. Training k-means runs on a seeded random sample of at most ``IVF_TRAIN_PER_LIST`` × nlist vectors; fewer
      vectors than lists is refused.
    - HNSW (``HNSW32``, ``HNSW32,Flat``, ``HNSW32_SQ8``): wrapped in ``IDMap2``. An HNSW graph cannot drop a node,
      so ``remove`` leaves a tombstone: the node's id-map entry becomes -1, which the FAISS file saves with the
      index. Searches skip tombstones with an ``IDSelector`` (the graph is still walked through them, so recall
      holds without over-fetching), ``count()`` and ``ids()`` report live vectors only, and a re-added id gets a
      new node. When tombstones outnumber live vectors the graph is rebuilt from the live ones (a full HNSW add:
      seconds at 100k vectors, minutes at 1M), which bounds both memory and the dead share of every search.

    ``search_params`` (the ``faiss_search`` setting, e.g. ``efSearch=128`` or ``nprobe=32``; empty means FAISS's
    defaults) is applied with ``faiss.ParameterSpace`` whenever a store is created, built or loaded.
    """

    def __init__(
        self, dimension: int, factory: str = "IDMap2,Flat", index: FaissIndex | None = None, search: str = ""
    ) -> None:
        faiss = _faiss()

        self.dimension = dimension
        self.factory = factory
        if index is None:
            # Our own IDMap2 goes on the outside (IVF gets none): drop any id-map prefix the factory string has.
            head, _, rest = factory.partition(",")
            inner = rest if head.strip() in ("IDMap", "IDMap2") and rest else factory
            try:
                index = faiss.index_factory(dimension, inner, faiss.METRIC_INNER_PRODUCT)
            except RuntimeError as exc:
                raise InvalidInput(f"invalid FAISS index_factory string {factory!r}: {exc}") from None
            if _hashed(index) is None and not isinstance(index, faiss.IndexIDMap2):
                index = faiss.IndexIDMap2(index)
        self._index: FaissIndex = index
        self._ivf: _IVF | None = faiss.try_extract_index_ivf(index)
        self._hnsw: _HNSW | None = None if self._ivf is not None else _find_hnsw(index)
        self._dead = 0  # HNSW tombstones
        if self._hnsw is not None:
            self._dead = int((faiss.vector_to_array(self._mapped().id_map) < 0).sum())
        self._live = faiss.IDSelectorRange(0, 2**63 - 1)  # every id but the -1 of a tombstone
        # the base file this store's codes are memory-mapped from (``load``), held open so that a fold (``_own``)
        # reads the very bytes that were mapped even after a merge replaced the file; None: owned in memory
        self._mapped_file: BinaryIO | None = None
        # what changed a mapped base since it was mapped, held beside it (the base is never resized: FAISS aborts)
        self._layer = _Layer.empty(dimension)
        self._base_ids: np.ndarray | None = None  # the mapped base's ids, sorted: read once, when first needed
        self._written: BinaryIO | None = None  # the base the last whole save wrote, served from the next change
        # changes since the files were written (segments.py): tracked only for a store loaded from or saved to
        # its files, so that a build, which writes a whole base, keeps no second copy of its vectors
        self.journal: Journal | None = None
        self._sketch: _Sketched | None = None  # the mapped flat base's int8 sketch, once built (``_sketch_soon``)
        # for which base a build was decided, and its thread (None: that base gets no sketch); decided once a base
        self._sketching: tuple[FaissIndex, threading.Thread | None] | None = None
        self.search_params = ""
        self.set_search_params(search)

    def _mapped(self) -> _IdMap:
        """The index as the ``IndexIDMap2`` every index but an IVF is wrapped in (``__init__``, ``load``)."""
        return cast(_IdMap, self._index)

    @classmethod
    def load(cls, path: Path, factory: str, search: str = "", *, size: int | None = None) -> FaissVectorStore:
        """The index in ``path``, its codes memory-mapped (FAISS ``IO_FLAG_MMAP_IFC``: flat codes and IVF lists are
        views of the file, so an open reads only headers, id maps and graphs); IndexCorrupt when the file cannot be
        read or is not ``size`` bytes long (the size its stamp recorded: a truncated or replaced base). The mapping
        is read-only: the first change copies the index into memory (``_own``), as FAISS aborts the process when a
        mapped index is resized."""
        faiss = _faiss()

        try:
            fh = path.open("rb")
        except OSError as exc:
            raise IndexCorrupt(f"cannot read {path.name}: {exc.strerror}") from None
        try:
            if size is not None and os.fstat(fh.fileno()).st_size != size:
                raise IndexCorrupt(f"{path.name} is not the size its stamp recorded; it is rebuilt")
            index = _read_mapped(fh)
        except RuntimeError as exc:
            fh.close()
            raise IndexCorrupt(f"cannot read {path.name}: {exc}".splitlines()[0]) from None
        except BaseException:
            fh.close()
            raise
        ivf = _hashed(index)
        if isinstance(index, faiss.IndexIDMap | faiss.IndexIDMap2) and ivf is not None:
            raise IndexCorrupt(f"{path.name} wraps its IVF index in an id map (removal is unsafe); it is rebuilt")
        if ivf is None and not isinstance(index, faiss.IndexIDMap2):
            raise IndexCorrupt(f"{path.name} has no IDMap2 around its index; it is rebuilt")
        store = cls(index.d, factory, index, search)
        store._mapped_file = fh if _is_mapped(fh) else None
        if store._mapped_file is None:
            fh.close()
        else:
            prefetch(fh.fileno())  # the codes are read on demand: have the kernel read them ahead of the searches
            store._read_base_ids_ahead()
        return store

    def rebuild_as(self, factory: str, search: str) -> None:
        """Become a ``factory`` index holding the same vectors (as this one reconstructs them: exact from a flat
        base), trained afresh: the switch of ``faiss_factory=auto`` when a merge crosses the threshold. In place,
        so whoever holds this store searches the new index."""
        ids = self.ids()
        vectors = self.reconstruct_batch(ids)
        fresh = FaissVectorStore.build(self.dimension, factory, [(ids, vectors)], search)
        if self._mapped_file is not None:
            self._mapped_file.close()
        self.__dict__.update({k: v for k, v in fresh.__dict__.items() if k != "journal"})

    @property
    def mapped(self) -> bool:
        """Whether the codes are still views of the base file (nothing changed this store since it was loaded)."""
        return self._mapped_file is not None

    def _own(self) -> None:
        """Read a memory-mapped store fully into memory with its layer folded in (``_folded``) and serve that: what
        training starts from. Called only where no search runs on this store (a build)."""
        if self._mapped_file is None:
            return
        index, ivf = self._folded()
        self._mapped_file.close()
        self._install(index, ivf, None)

    def _folded(self) -> tuple[FaissIndex, _IVF | None]:
        """A new in-memory index holding what this store holds: the mapped base read fully (through the descriptor
        held since ``load``, not the path a merge may have replaced) with the layer's removed vectors removed and
        its added ones added. The store itself is unchanged, so searches may run meanwhile. The mapped file is never
        written: FAISS cannot grow or shrink a mapped index (it aborts), and the base must stay what its stamp says
        for other processes."""
        faiss = _faiss()
        fh = self._mapped_file
        assert fh is not None
        layer = self._layer
        index = faiss.read_index(faiss.PyCallbackIOReader(_Reader(fh).read))
        ivf = _hashed(index)
        if len(layer.gone):
            hnsw = ivf is None and _find_hnsw(index) is not None
            _drop(index, ivf, hnsw, layer.gone, self.factory)
        if len(layer.ids):
            index.add_with_ids(layer.vectors, layer.ids)
        return index, ivf

    def _install(self, index: FaissIndex, ivf: _IVF | None, mapped_file: BinaryIO | None) -> None:
        """Serve ``index`` (mapped from ``mapped_file``, or held in memory when None) with an empty layer. Called
        where no search runs on this store: a build, or the start of a change (under the service's write lock)."""
        faiss = _faiss()
        self._index, self._ivf = index, ivf
        self._hnsw = None if ivf is not None else _find_hnsw(index)
        self._dead = int((faiss.vector_to_array(self._mapped().id_map) < 0).sum()) if self._hnsw is not None else 0
        self._mapped_file, self._base_ids, self._layer = mapped_file, None, _Layer.empty(self.dimension)
        self._sketch = None
        self.set_search_params(self.search_params)

    def _take_written(self) -> None:
        """Before a change: serve the base the last whole save wrote (mapped), in place of what was served
        meanwhile (the previous base and its layer, or an in-memory copy), which held the same vectors. Deferred
        from the save to here because a save runs beside searches (under the service's read lock) and a search
        must not see this store's parts swapped one by one; a change runs under the write lock."""
        fh, self._written = self._written, None
        if fh is None:
            return
        try:
            index = _read_mapped(fh) if _is_mapped(fh) else None
        except RuntimeError:
            index = None
        if index is None:
            fh.close()
            return  # what is served holds the same vectors
        if self._mapped_file is not None:
            self._mapped_file.close()
        self._install(index, _hashed(index), fh)

    def _mapped_base_ids(self) -> np.ndarray:
        """The mapped base's ids, sorted (tombstones of an HNSW base left out), read once: the base never changes
        while it is mapped."""
        found = self._base_ids
        if found is None:
            found = self._base_ids = _index_ids(self._index, self._ivf)
        return found

    def _read_base_ids_ahead(self) -> None:
        """Read the mapped base's ids in a background thread (0.4 s at 924k passages: an IVF's ids lie in its
        mapped lists), so that the first write after an open need not. Set only if the same base is still mapped."""
        index, ivf = self._index, self._ivf

        def read() -> None:
            found = _index_ids(index, ivf)
            if self._index is index and self._base_ids is None:
                self._base_ids = found

        threading.Thread(target=read, name="newsdesk-faiss-ids", daemon=True).start()

    def _sketch_soon(self) -> None:
        """Start building the int8 sketch of a mapped exact base (search/vectors/sketch.py) in a background thread,
        once per base: 1.2-1.5 s of one core at 110k passages, which no search waits for (``range`` scans the
        float32 codes until it is there). Started by the first range search, so a store never range-searched (the
        article vectors) holds none. Set only if the same base is still served; a build that fails leaves the
        searches on FAISS's own scan, and says so once in the log."""
        index = self._index
        with _SKETCH_START:  # two searches of one process at once start one build
            started = self._sketching
            if started is not None and started[0] is index:
                return
            mapped = self._mapped_file is not None and self._ivf is None and self._hnsw is None
            flat = _flat_ip(index) if mapped else None
            if flat is None or int(flat.ntotal) < SKETCH_FROM:
                self._sketching = (index, None)  # not asked again at every search of this base
                return

            def build() -> None:
                try:
                    sketched = _Sketched.of(index, flat)
                except Exception as exc:  # a cache: searches go on without it
                    log.warning(
                        "no int8 sketch of the passage vectors (%s: %s); scanning them in float32",
                        type(exc).__name__,
                        exc,
                    )
                    return
                if self._index is index:
                    self._sketch = sketched

            thread = threading.Thread(target=build, name="newsdesk-faiss-sketch", daemon=True)
            self._sketching = (index, thread)
            thread.start()

    def wait_for_sketch(self, timeout: float = 60.0) -> bool:
        """Wait for a sketch build started (tests, benchmarks); whether a sketch now serves the base."""
        started = self._sketching
        if started is not None and started[1] is not None:
            started[1].join(timeout)
        return self._current_sketch() is not None

    @classmethod
    def build(
        cls, dimension: int, factory: str, batches: Iterable[tuple[np.ndarray, np.ndarray]], search: str = ""
    ) -> FaissVectorStore:
        """Fill a new store from (ids, vectors) batches, training first when the factory needs it."""
        store = cls(dimension, factory, search=search)
        batches = list(batches)
        if not store._index.is_trained:
            store.train(store._training_sample(batches))
        for ids, vecs in batches:
            store.add(ids, vecs)
        return store

    def _training_sample(self, batches: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """Every vector, or for IVF a seeded random sample of at most ``IVF_TRAIN_PER_LIST`` per list."""
        n = sum(len(v) for _, v in batches)
        limit = n
        if self._ivf is not None:
            nlist = int(self._ivf.nlist)
            if n < nlist:
                hint = max(1, int(4 * np.sqrt(n)))
                raise InvalidInput(
                    f"FAISS index {self.factory!r} has {nlist} IVF lists but there are only {n} vectors to train it "
                    f"on; use at most {n} lists (about IVF{hint}) or the exact IDMap2,Flat"
                )
            limit = min(n, IVF_TRAIN_PER_LIST * nlist)
        if not batches:
            return np.zeros((0, self.dimension), np.float32)
        if limit >= n:
            return np.concatenate([v for _, v in batches])
        pick = np.sort(np.random.default_rng(TRAIN_SEED).choice(n, size=limit, replace=False))
        parts, start = [], 0
        for _, v in batches:
            lo, hi = np.searchsorted(pick, [start, start + len(v)])
            parts.append(np.asarray(v)[pick[lo:hi] - start])
            start += len(v)
        return np.concatenate(parts)

    def train(self, vectors: np.ndarray) -> None:
        self._own()
        try:
            self._index.train(np.ascontiguousarray(vectors, dtype=np.float32))
        except RuntimeError as exc:
            raise InvalidInput(f"FAISS index {self.factory!r} cannot be trained here: {exc}".splitlines()[0]) from None

    def set_search_params(self, search: str) -> None:
        """Apply search-time parameters ("efSearch=128", "nprobe=32,quantizer_efSearch=64"); "" resets to defaults."""
        faiss = _faiss()

        parts = [p.partition("=") for p in search.split(",")] if search.strip() else []
        for name, eq, value in parts:
            try:
                ok = bool(eq and name.strip()) and float(value) > 0
            except ValueError:
                ok = False
            if not ok:
                raise InvalidInput(
                    f"invalid FAISS search parameters {search!r}: expected name=positive number, comma-separated "
                    "(efSearch=128 for HNSW, nprobe=32 for IVF)"
                )
        spec = ",".join(f"{name.strip()}={value.strip()}" for name, _, value in parts)
        if self._ivf is not None:  # FAISS's defaults, so that "" means them even for an index saved with others
            self._ivf.nprobe = faiss.SearchParametersIVF().nprobe
            quantizer = _find_hnsw(self._ivf.quantizer)
            if quantizer is not None:
                quantizer.hnsw.efSearch = faiss.SearchParametersHNSW().efSearch
        if self._hnsw is not None:
            self._hnsw.hnsw.efSearch = faiss.SearchParametersHNSW().efSearch
        if spec:
            try:
                faiss.ParameterSpace().set_index_parameters(self._index, spec)
            except RuntimeError as exc:
                reason = str(exc).splitlines()[0].rsplit(":", 1)[-1].strip()
                raise InvalidInput(
                    f"FAISS search parameters {search!r} do not apply to index {self.factory!r}: {reason}"
                ) from None
        self.search_params = spec

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids) == 0:
            return
        ids, vectors = checked_batch(ids, vectors, self.dimension)
        self._take_written()
        if self._mapped_file is not None:
            self._layer = self._layer.added(ids, vectors, self._mapped_base_ids())
        else:
            self._index.add_with_ids(vectors, ids)
        if self.journal is not None:
            self.journal.added(ids, vectors)
            self._bound_journal()

    def _bound_journal(self) -> None:
        if self.journal is not None and self.journal.too_big(self.count()):
            self.journal = None  # the next save writes a whole base, as it would merge anyway

    def remove(self, ids: np.ndarray) -> int:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids) == 0:
            return 0
        self._take_written()
        if self._mapped_file is not None:
            self._layer, removed = self._layer.removed(ids, self._mapped_base_ids())
        else:
            removed = self._removed(ids)
        if self.journal is not None:  # after the removal: one FAISS refused is not journalled as done
            self.journal.removed(ids)
            self._bound_journal()
        return removed

    def _removed(self, ids: np.ndarray) -> int:
        removed = _drop(self._index, self._ivf, self._hnsw is not None, ids, self.factory)
        if self._hnsw is not None and removed:
            self._dead += removed
            if self._dead > self.count():
                self._compact()
        return removed

    def _compact(self) -> None:
        """Rebuild the HNSW graph from the live vectors (trained codecs such as SQ8 are kept, not retrained)."""
        faiss = _faiss()

        mapped = self._mapped()
        id_map = faiss.vector_to_array(mapped.id_map)
        live = np.flatnonzero(id_map >= 0)
        inner = faiss.downcast_index(mapped.index)
        vectors = inner.reconstruct_batch(live) if len(live) else np.zeros((0, self.dimension), np.float32)
        fresh = faiss.clone_index(inner)
        fresh.reset()
        index = faiss.IndexIDMap2(fresh)
        if len(live):
            index.add_with_ids(vectors, id_map[live])
        self._index, self._hnsw, self._dead = index, _find_hnsw(index), 0

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Best ``k`` (score, id) per query, best first; ids of -1 (score -inf) pad a short answer.

        ``allowed`` (sorted ids) restricts the search to those vectors, as a filter must: few of them are scored
        exactly (a graph or list walk through mostly excluded vectors would lose recall and time), many through an
        ``IDSelector`` inside the index's own search. A mapped base with a layer is searched without the vectors
        removed since (a selector) and the layer's additions exactly beside it, the two answers merged.
        """
        faiss = _faiss()

        queries = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if allowed is not None:
            allowed = np.ascontiguousarray(allowed, dtype=np.int64)
            if len(allowed) == 0:  # nothing may match: one padding slot, as a short answer is padded
                return np.full((len(queries), 1), -np.inf, np.float32), np.full((len(queries), 1), -1, np.int64)
            k = max(1, min(k, len(allowed)))
            if len(allowed) <= EXACT_FILTER_LIMIT:
                try:
                    return _exact_top(queries, allowed, self.reconstruct_batch(allowed), k)
                except KeyError:
                    pass  # an id the store has and this copy lacks: the selector below skips it
        else:
            k = max(1, min(k, max(self.count(), 1)))
        layer = self._layer
        selector: object | None = None
        if allowed is not None:
            selector = faiss.IDSelectorBatch(allowed)
        elif self._dead:
            selector = self._live
        selector = layer.excluding(selector)
        if selector is None:
            scores, ids = self._index.search(queries, k)
        else:
            scores, ids = self._index.search(queries, k, params=self._params(selector))
        scores = np.where(ids < 0, -np.inf, scores).astype(np.float32)
        if len(layer.ids):
            more_s, more_i = layer.search(queries, k, allowed)
            scores, ids = _merged_top(scores, ids, more_s, more_i, k)
        return scores, ids

    def range(self, query: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
        """Every (score, id) at or above ``floor``: one FAISS ``range_search``, which scans the flat codes or the
        probed IVF lists once whatever the number of hits (a top-k search deepened until its last hit fell below
        the floor asked for 819,200 hits at 924k passages). FAISS keeps inner products strictly above its radius,
        so the radius is the float32 just below the floor. An HNSW graph's range search stops at efSearch
        candidates (it found 152 of 228 in-range vectors of 5,000), so HNSW deepens a top-k search instead. A
        mapped exact base scans its int8 sketch first once it has one (``_Sketched``): the same hits and floats."""
        sketched = self._sketched()
        if sketched is None:
            return self._range(query, floor)
        q = np.ascontiguousarray(np.reshape(query, -1), dtype=np.float32)
        rows, scores = sketched.hits(q, floor, self._layer.gone)
        return self._with_layer(q, floor, scores, sketched.ids[rows])

    def matches(self, query: np.ndarray, floor: float, best: int) -> Matches:
        sketched = self._sketched()
        if sketched is None:
            return matches_of(*self._range(query, floor), best)
        q = np.ascontiguousarray(np.reshape(query, -1), dtype=np.float32)
        layer = self._layer
        more_scores, more_ids = self._with_layer(q, floor, np.zeros(0, np.float32), np.zeros(0, np.int64))
        return sketched.matches(q, floor, best, layer.gone, more_scores, more_ids)

    def _current_sketch(self) -> _Sketched | None:
        """The int8 sketch of the base served now, if one is built (a sketch of a base since replaced is not)."""
        sketched = self._sketch
        return sketched if sketched is not None and sketched.index is self._index else None

    def _sketched(self) -> _Sketched | None:
        """``_current_sketch``; without one, its build is started if this base was not decided yet."""
        sketched = self._current_sketch()
        if sketched is None and self.count():
            started = self._sketching
            if started is None or started[0] is not self._index:
                self._sketch_soon()
        return sketched

    def _range(self, query: np.ndarray, floor: float) -> tuple[np.ndarray, np.ndarray]:
        """``range`` through FAISS's own search of the base."""
        query = np.ascontiguousarray(np.reshape(query, (1, -1)), dtype=np.float32)
        if self._hnsw is not None or self.count() == 0:
            return deepened_range(self, query[0], floor)
        radius = float(np.nextafter(np.float32(floor), np.float32(-np.inf)))
        gone = self._layer.excluding(None)  # the base's vectors removed since it was mapped are skipped
        if gone is None:
            _, scores, ids = self._index.range_search(query, radius)
        else:
            _, scores, ids = self._index.range_search(query, radius, params=self._params(gone))
        keep = scores >= np.float32(floor)
        scores, ids = np.asarray(scores[keep], dtype=np.float32), np.asarray(ids[keep], dtype=np.int64)
        return self._with_layer(query[0], floor, scores, ids)

    def _with_layer(
        self, query: np.ndarray, floor: float, scores: np.ndarray, ids: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """The base's hits and, after them, the layer's added vectors at the floor, scored exactly."""
        layer = self._layer
        if not len(layer.ids):
            return scores, ids
        more = (layer.vectors @ query).astype(np.float32)
        hit = more >= np.float32(floor)
        return np.concatenate([scores, more[hit]]), np.concatenate([ids, layer.ids[hit]])

    def _params(self, selector: object) -> object:
        """Search parameters carrying ``selector`` and the index's own efSearch/nprobe (a bare parameter object
        would reset them to FAISS's defaults)."""
        faiss = _faiss()

        if self._hnsw is not None:
            return faiss.SearchParametersHNSW(sel=selector, efSearch=int(self._hnsw.hnsw.efSearch))
        if self._ivf is not None:
            return faiss.SearchParametersIVF(sel=selector, nprobe=int(self._ivf.nprobe))
        return faiss.SearchParameters(sel=selector)

    def reconstruct(self, id_: int) -> np.ndarray:
        one: np.ndarray = self.reconstruct_batch(np.array([id_], dtype=np.int64))[0]
        return one

    def reconstruct_batch(self, ids: np.ndarray) -> np.ndarray:
        keys = lookup_keys(ids)
        if len(keys) == 0:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if (keys < 0).any():
            raise KeyError(ids)
        layer = self._layer
        if not layer.changed:
            return self._base_vectors(keys, ids)
        rows = layer.lookup(keys)
        in_delta = rows >= 0
        if np.isin(keys[~in_delta], layer.gone).any():
            raise KeyError(ids)  # removed from the base since it was mapped
        out = np.empty((len(keys), self.dimension), dtype=np.float32)
        if in_delta.any():
            out[in_delta] = layer.vectors[rows[in_delta]]
        if not in_delta.all():
            out[~in_delta] = self._base_vectors(np.ascontiguousarray(keys[~in_delta]), ids)
        return out

    def _base_vectors(self, keys: np.ndarray, ids: np.ndarray) -> np.ndarray:
        sketched = self._current_sketch()
        gathered = sketched.gather(keys) if sketched is not None else None
        if gathered is not None:
            return gathered
        try:
            return np.asarray(self._index.reconstruct_batch(keys), dtype=np.float32)
        except RuntimeError:
            raise KeyError(ids) from None

    def count(self) -> int:
        layer = self._layer
        return int(self._index.ntotal) - self._dead - len(layer.gone) + len(layer.ids)

    def memory_bytes(self) -> int:
        """Bytes the FAISS index holds in memory (``faiss_bytes``): its share of the memory report's ``vectors``."""
        layer, sketched = self._layer, self._current_sketch()
        sketch = sketched.nbytes if sketched is not None else 0
        return faiss_bytes(self._index) + int(layer.vectors.nbytes + layer.ids.nbytes + layer.gone.nbytes) + sketch

    def ids(self) -> np.ndarray:
        layer = self._layer
        if not layer.changed:
            return _index_ids(self._index, self._ivf)
        base = np.setdiff1d(self._mapped_base_ids(), layer.gone, assume_unique=True)
        return np.union1d(base, layer.ids)

    def save(self, path: Path) -> None:
        """Write to a temporary file and rename, so a reader never sees half a file.

        Written through a Python file rather than ``faiss.write_index(path)``, which ignores a failed ``fclose``: on a
        full disk an index small enough to sit in stdio's buffer was lost without an error. Here every failed write
        (ENOSPC, EROFS) is an ``OSError``, and the temporary file is removed."""
        faiss = _faiss()

        # a mapped IVF would be written as a reference to on-disk lists, and this file may be that one: a mapped
        # store writes a copy read in full with its layer folded in (``_folded``: searches go on meanwhile)
        index = self._folded()[0] if self._mapped_file is not None else self._index
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with discarded_on_failure(tmp):
            with tmp.open("wb") as fh:
                try:
                    faiss.write_index(index, faiss.PyCallbackIOWriter(fh.write))
                except RuntimeError as exc:  # a FAISS error while serialising: reported like a failed write
                    raise OSError(f"cannot write {tmp.name}: {str(exc).splitlines()[0]}") from None
            os.replace(tmp, path)
        try:  # this very file (not whatever a later merge puts at the path), mapped at the next change
            written: BinaryIO | None = path.open("rb")
        except OSError:
            written = None
        if self._written is not None:
            self._written.close()
        self._written = written


class _Sketched:
    """A mapped exact base's int8 sketch with what rescoring its candidates needs: the base's float32 codes (a
    pointer FAISS's own inner-product kernel reads: the scores are the very floats its range search gives) and
    each row's id. Holds the index, so that the codes stay mapped while a search uses them."""

    __slots__ = ("ascending", "codes", "dimension", "ids", "index", "sketch", "vectors")

    def __init__(
        self, index: FaissIndex, codes: object, vectors: np.ndarray, ids: np.ndarray, sketch: Int8Sketch
    ) -> None:
        self.index, self.codes, self.vectors, self.ids, self.sketch = index, codes, vectors, ids, sketch
        self.dimension = vectors.shape[1]
        self.ascending = bool(np.all(ids[1:] > ids[:-1]))  # as a build writes them: a row is found by bisection

    @classmethod
    def of(cls, index: FaissIndex, flat: _FlatIP) -> _Sketched:
        faiss = _faiss()
        n, d = int(flat.ntotal), int(flat.d)
        codes = flat.get_xb()
        vectors = faiss.rev_swig_ptr(codes, n * d).reshape(n, d)
        ids = np.asarray(faiss.vector_to_array(cast(_IdMap, index).id_map), dtype=np.int64)
        return cls(index, codes, vectors, ids, Int8Sketch.of(vectors))

    def gather(self, keys: np.ndarray) -> np.ndarray | None:
        """The base's vectors of ``keys`` (all in the base), copied by one numpy gather from the mapped codes: the
        same floats FAISS's ``reconstruct_batch`` gives, which looks each id up and copies it on its own (1.2 ms
        of a hybrid search's 3,000 at 110k passages). None where rows are not in id order or a key is not here."""
        if not self.ascending or not len(keys):
            return None
        rows = np.searchsorted(self.ids, keys)
        if int(rows.max()) >= len(self.ids) or not np.array_equal(self.ids[rows], keys):
            return None
        gathered: np.ndarray = self.vectors[rows]
        return gathered

    def _exact(self, query: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The rows' scores by ``fvec_inner_products_by_idx`` (FAISS's ``fvec_inner_product`` per row, as its
        range search computes them: the same floats)."""
        faiss = _faiss()
        rows = np.ascontiguousarray(rows, dtype=np.int64)
        out = np.empty(len(rows), dtype=np.float32)
        if len(rows):
            faiss.fvec_inner_products_by_idx(
                faiss.swig_ptr(out),
                faiss.swig_ptr(query),
                self.codes,
                faiss.swig_ptr(rows),
                self.dimension,
                1,
                len(rows),
            )
        return out

    def _candidates(self, query: np.ndarray, floor: float, gone: np.ndarray) -> tuple[np.ndarray, ...]:
        """The sketch's candidate rows (those of removed vectors left out), their sketch scores and margins."""
        rows, scores, margins = self.sketch.bounds(query, floor)
        if len(gone):
            kept = ~sorted_lookup(gone, self.ids[rows])[1]
            rows, scores, margins = rows[kept], scores[kept], margins[kept]
        return rows, scores, margins

    def hits(self, query: np.ndarray, floor: float, gone: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, exact scores) of every row at or above ``floor`` but the ``gone`` ids', in row order as FAISS's
        range search gives them: every candidate scored exactly."""
        rows = self._candidates(query, floor, gone)[0]
        exact = self._exact(query, rows)
        keep = exact >= np.float32(floor)
        return rows[keep], exact[keep]

    def matches(
        self,
        query: np.ndarray,
        floor: float,
        best: int,
        gone: np.ndarray,
        more_scores: np.ndarray,
        more_ids: np.ndarray,
    ) -> Matches:
        """``Matches`` of the base (less ``gone``) and the layer's hits (``more_*``, exact), scoring exactly only the
        candidates whose margin straddles the floor and those that may be among the best: a candidate whose
        lowest possible score reaches the floor is a hit unscored, and one whose highest possible score is below
        the ``best``-th highest lowest score of the hits cannot be among the best. Bit-identical to ``matches_of``
        over ``hits`` (tests/test_sketch.py). At 110k real passages, the match floor and the best 200 (means over
        200 perturbed passages as queries), about 4,160 of 6,900 candidates are scored: 3,600 straddle the floor,
        560 more may be among the best."""
        rows, approx, margin = self._candidates(query, floor, gone)
        lower, upper = approx - margin, approx + margin
        exact = np.full(len(rows), np.nan, dtype=np.float32)
        unsure = np.flatnonzero(lower < np.float32(floor))
        exact[unsure] = self._exact(query, rows[unsure])
        hit = (lower >= np.float32(floor)) | (exact >= np.float32(floor))
        rows, lower, upper, exact = rows[hit], lower[hit], upper[hit], exact[hit]
        ids = self.ids[rows]
        if best <= 0:
            return Matches(np.concatenate([ids, more_ids]), np.zeros(0, np.float32), np.zeros(0, np.int64))
        known = np.where(np.isnan(exact), lower, exact)  # at most each hit's exact score
        pooled = np.concatenate([known, more_scores])
        maybe = np.flatnonzero(upper >= kth_highest(pooled, best)) if len(pooled) > best else np.arange(len(rows))
        todo = maybe[np.isnan(exact[maybe])]
        exact[todo] = self._exact(query, rows[todo])
        scores = np.concatenate([exact[maybe], more_scores])
        best_scores, best_ids = best_of(scores, np.concatenate([ids[maybe], more_ids]), best)
        return Matches(np.concatenate([ids, more_ids]), best_scores, best_ids)

    @property
    def nbytes(self) -> int:
        return self.sketch.nbytes + int(self.ids.nbytes)


def _flat_ip(index: FaissIndex) -> _FlatIP | None:
    """The ``IndexFlatIP`` inside an ``IDMap2`` (the exact base), or None for any other index."""
    faiss = _faiss()
    if not isinstance(index, faiss.IndexIDMap2):
        return None
    inner = faiss.downcast_index(cast(_IdMap, index).index)
    return cast(_FlatIP, inner) if isinstance(inner, faiss.IndexFlatIP) else None


class _Reader:
    """Reads a file from its start by ``pread``, leaving its descriptor's offset alone (a store's mapped file may be
    read by another thread at the same time: a save's fold beside a prefetch)."""

    def __init__(self, fh: BinaryIO) -> None:
        self.fd, self.at = fh.fileno(), 0

    def read(self, size: int) -> bytes:
        parts = []
        while size > 0:
            data = os.pread(self.fd, size, self.at)
            if not data:
                break  # the end of the file
            parts.append(data)
            self.at += len(data)
            size -= len(data)
        return b"".join(parts)


class _Layer:
    """What changed a memory-mapped base since it was mapped, kept beside it: the vectors added since (``ids``,
    ``vectors``: few, searched exactly with numpy; a merge writes a new base and maps that) and ``gone``, the sorted
    ids of the base's vectors removed or replaced since. Lucene's and Qdrant's segment and tombstones, inside one
    store: a write costs what it changed, not a copy of the base (1.45 GB at 924k passages, 9 s, before this).
    Immutable: a change makes a new layer, swapped in whole, so a search that read one sees one state."""

    __slots__ = ("gone", "ids", "vectors")

    def __init__(self, ids: np.ndarray, vectors: np.ndarray, gone: np.ndarray) -> None:
        self.ids = ids
        self.vectors = vectors
        self.gone = gone

    @classmethod
    def empty(cls, dimension: int) -> _Layer:
        return cls(np.zeros(0, np.int64), np.zeros((0, dimension), np.float32), np.zeros(0, np.int64))

    @property
    def changed(self) -> bool:
        return bool(len(self.ids) or len(self.gone))

    def added(self, ids: np.ndarray, vectors: np.ndarray, base_ids: np.ndarray) -> _Layer:
        """This layer with ``ids`` added (replacing a vector of the same id, in the base or among the added)."""
        keep = ~np.isin(self.ids, ids)
        held = self.vectors if len(self.vectors) else np.zeros((0, vectors.shape[1]), np.float32)
        replaced = ids[sorted_lookup(base_ids, ids)[1]]
        gone = np.union1d(self.gone, replaced) if len(replaced) else self.gone
        return _Layer(
            np.concatenate([self.ids[keep], ids]),
            np.concatenate([held[keep], np.asarray(vectors, np.float32)]),
            gone,
        )

    def removed(self, ids: np.ndarray, base_ids: np.ndarray) -> tuple[_Layer, int]:
        """This layer with ``ids`` removed, and how many live vectors that removed."""
        hit = np.isin(self.ids, ids)
        in_base = np.unique(ids[sorted_lookup(base_ids, ids)[1]])
        from_base = in_base[~sorted_lookup(self.gone, in_base)[1]]  # a replaced base vector is gone already
        gone = np.union1d(self.gone, from_base) if len(from_base) else self.gone
        return _Layer(self.ids[~hit], self.vectors[~hit], gone), int(hit.sum()) + len(from_base)

    def excluding(self, selector: object | None) -> object | None:
        """``selector`` (None: every id) narrowed to skip the base vectors removed since the base was mapped; FAISS's
        own wrappers keep the selectors combined here alive as long as the one returned."""
        if not len(self.gone):
            return selector
        faiss = _faiss()
        gone: object = faiss.IDSelectorNot(faiss.IDSelectorBatch(self.gone))
        return gone if selector is None else faiss.IDSelectorAnd(selector, gone)

    def lookup(self, keys: np.ndarray) -> np.ndarray:
        """Each key's row among the added vectors, -1 where it is not one of them."""
        if not len(self.ids):
            return np.full(len(keys), -1, np.int64)
        order = np.argsort(self.ids, kind="stable")
        at = np.minimum(np.searchsorted(self.ids, keys, sorter=order), len(order) - 1)
        rows = order[at]
        found: np.ndarray = np.where(self.ids[rows] == keys, rows, -1)
        return found

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top ``k`` of the added vectors (those in ``allowed`` when given), padded as FAISS pads."""
        ids, vectors = self.ids, self.vectors
        if allowed is not None:
            inside = np.isin(ids, allowed)
            ids, vectors = ids[inside], vectors[inside]
        if not len(ids):
            return np.full((len(queries), 1), -np.inf, np.float32), np.full((len(queries), 1), -1, np.int64)
        return _exact_top(queries, ids, vectors, k)


def _hashed(index: FaissIndex) -> _IVF | None:
    """The IVF inside ``index`` with its id hashtable on (``reconstruct`` and ``remove`` look our ids up in it), or
    None for an index that is not IVF."""
    faiss = _faiss()
    ivf: _IVF | None = faiss.try_extract_index_ivf(index)
    if ivf is not None and ivf.direct_map.type != faiss.DirectMap.Hashtable:
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
    return ivf


def _drop(index: FaissIndex, ivf: _IVF | None, hnsw: bool, ids: np.ndarray, factory: str) -> int:
    """Remove ``ids`` from an index held in memory; returns how many it held. An HNSW graph cannot drop a node:
    its id-map entry becomes -1 (a tombstone, saved with the index). An IVF's id hashtable takes only an explicit id
    array; an id map a batch selector."""
    faiss = _faiss()
    if hnsw:
        mapped = cast(_IdMap, index)
        id_map = faiss.vector_to_array(mapped.id_map)
        hit = np.isin(id_map, ids) & (id_map >= 0)
        removed = int(hit.sum())
        if removed:
            id_map[hit] = -1
            faiss.copy_array_to_vector(id_map, mapped.id_map)
            mapped.construct_rev_map()
        return removed
    try:
        if ivf is not None:
            return int(index.remove_ids(faiss.IDSelectorArray(ids)))
        return int(index.remove_ids(faiss.IDSelectorBatch(ids)))
    except RuntimeError as exc:
        raise InvalidInput(f"FAISS index {factory!r} cannot remove vectors: {exc}".splitlines()[0]) from None


def _merged_top(
    scores: np.ndarray, ids: np.ndarray, more_s: np.ndarray, more_i: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The best ``k`` of two answers per query (best first, ties by id, padding last), as one search gives."""
    both_s = np.concatenate([scores, more_s], axis=1)
    both_i = np.concatenate([ids, more_i], axis=1)
    order = np.lexsort((np.where(both_i < 0, np.iinfo(np.int64).max, both_i), -both_s), axis=1)[:, :k]
    return np.take_along_axis(both_s, order, axis=1), np.take_along_axis(both_i, order, axis=1)


def _index_ids(index: FaissIndex, ivf: _IVF | None) -> np.ndarray:
    """Every live id a FAISS index holds, sorted: its id map's (tombstones left out), or an IVF's lists'."""
    faiss = _faiss()

    if ivf is None:
        id_map = faiss.vector_to_array(cast(_IdMap, index).id_map).astype(np.int64)
        return np.sort(id_map[id_map >= 0])
    lists = ivf.invlists
    parts = [np.zeros(0, np.int64)]
    for i in range(lists.nlist):
        size = lists.list_size(i)
        if size:
            ptr = lists.get_ids(i)
            parts.append(faiss.rev_swig_ptr(ptr, size).astype(np.int64))  # astype copies before release
            lists.release_ids(i, ptr)
    return np.sort(np.concatenate(parts))


def _read_mapped(fh: BinaryIO) -> FaissIndex:
    """The index in the open file ``fh``, its codes mapped where FAISS can (read through ``/proc/self/fd``, so the
    mapping is of this descriptor's file even if the path is replaced meanwhile); a full read where there is no
    ``/proc`` or no mapping flag in this FAISS."""
    faiss = _faiss()
    flag = getattr(faiss, "IO_FLAG_MMAP_IFC", None)
    by_fd = Path(f"/proc/self/fd/{fh.fileno()}")
    if flag is not None and by_fd.exists():
        index: FaissIndex = faiss.read_index(str(by_fd), flag)
        return index
    fh.seek(0)
    read: FaissIndex = faiss.read_index(faiss.PyCallbackIOReader(fh.read))
    return read


def _is_mapped(fh: BinaryIO) -> bool:
    """Whether ``_read_mapped`` mapped rather than read (only then is the descriptor kept)."""
    return getattr(_faiss(), "IO_FLAG_MMAP_IFC", None) is not None and Path(f"/proc/self/fd/{fh.fileno()}").exists()


def _find_hnsw(index: FaissIndex) -> _HNSW | None:
    """The HNSW index inside id-map and pre-transform wrappers, or None."""
    faiss = _faiss()
    index = faiss.downcast_index(index)
    while True:
        if isinstance(index, faiss.IndexHNSW):
            found: _HNSW = index
            return found
        if not isinstance(index, faiss.IndexIDMap | faiss.IndexIDMap2 | faiss.IndexPreTransform):
            return None
        index = faiss.downcast_index(index.index)


HASH_ENTRY_BYTES = 40  # one std::unordered_map<int64, int64> entry in libstdc++: a 32-byte node and an 8-byte bucket


def faiss_bytes(index: FaissIndex) -> int:
    """What a FAISS index holds in memory, summed from its parts: vector codes (flat, SQ, PQ: ``codes``), an HNSW
    graph (neighbour lists, levels, offsets) around its storage, an IVF's inverted lists (codes and ids) with its
    quantizer and id hashtable, and an id map (``id_map``, and ``IDMap2``'s reverse hashtable). The hashtables are
    estimated at ``HASH_ENTRY_BYTES`` an entry (FAISS does not expose their size); everything else is exact. Read
    without copying: serialising a 1.7 GB index to measure it would double it."""
    faiss = _faiss()
    index = faiss.downcast_index(index)
    if isinstance(index, faiss.IndexIDMap2):
        return int(index.id_map.size()) * (8 + HASH_ENTRY_BYTES) + faiss_bytes(index.index)
    if isinstance(index, faiss.IndexIDMap):
        return int(index.id_map.size()) * 8 + faiss_bytes(index.index)
    if isinstance(index, faiss.IndexPreTransform):
        return faiss_bytes(index.index)  # the transforms' matrices are d x d: negligible beside the vectors
    if isinstance(index, faiss.IndexHNSW):
        graph = index.hnsw
        links = int(graph.neighbors.size()) * 4 + int(graph.levels.size()) * 4 + int(graph.offsets.size()) * 8
        return links + faiss_bytes(index.storage)
    if isinstance(index, faiss.IndexFlatCodes):
        return int(index.codes.size())
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        lists = ivf.invlists
        entries = sum(int(lists.list_size(i)) for i in range(lists.nlist))
        hashtable = int(ivf.ntotal) * HASH_ENTRY_BYTES if ivf.direct_map.type == faiss.DirectMap.Hashtable else 0
        return entries * (int(lists.code_size) + 8) + hashtable + faiss_bytes(ivf.quantizer)
    return int(index.ntotal) * int(index.d) * 4  # another kind: as if its vectors were stored flat


def _faiss() -> ModuleType:
    """The faiss module, typed as a module (whose attributes are untyped): its stubs lack names it has (DirectMap,
    SearchParametersHNSW); what the code calls on its objects is declared by the protocols above."""
    import faiss

    return faiss


def _exact_top(queries: np.ndarray, ids: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product top ``k`` of ``queries`` over the given vectors, in the shape FAISS returns."""
    scores = queries @ vectors.T
    k = min(k, len(ids))
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((ids[part], -top), axis=1)  # best first, ties by id
    rows = np.arange(len(queries))[:, None]
    return top[rows, order].astype(np.float32), ids[part][rows, order]


# -- the backend: an index's two FAISS caches ------------------------------------------------------------------


class FaissVectors(IndexVectors):
    """An index's passage and article ``FaissVectorStore``s, in memory, saved as files in its directory: a base file
    per kind and the segments written since (search/vectors/segments.py), listed in ``vectors.json``."""

    def __init__(self, passages: FaissVectorStore, articles: FaissVectorStore, stamp: JSONObject | None = None) -> None:
        self.passages: FaissVectorStore = passages
        self.articles: FaissVectorStore = articles
        # the stamp the files on disk had when these stores were loaded or last saved, which their journals are
        # relative to; None: the files hold something else (a fresh build), so the next save writes whole bases
        self.stamp: JSONObject | None = stamp

    def _stores(self) -> tuple[tuple[str, FaissVectorStore], tuple[str, FaissVectorStore]]:
        return (PASSAGE_VECTORS, self.passages), (ARTICLE_VECTORS, self.articles)

    def save(self, directory: Path, generation: int, manifest: Manifest) -> None:
        """Append a segment per kind holding the changes since the last save, or write whole bases (a merge) when
        the files on disk are not the ones the changes are relative to or the merge policy says so; the stamp
        last (a crash in between leaves the previous stamp, whose files are all still there)."""
        self._write(directory, generation, manifest, merge=False)

    follows = True

    def follow(
        self, directory: Path, generation: int, deleted: Changes, added: Changes, vectors: tuple[np.ndarray, np.ndarray]
    ) -> None:
        """Another process's committed write applied in memory, as that writer applied it (``remove`` then ``add``:
        the same keys in both are a replaced vector). Where that writer's save already stamped the files on disk
        with ``generation``, they hold exactly this state: it is adopted (its stamp, empty journals), so this
        process's own next save appends to it instead of rewriting both bases. Else the journals keep the change
        relative to the stamp loaded, which a save may append to only while the files are still that stamp's."""
        for store, keys, added_vectors in ((self.passages, 1, vectors[0]), (self.articles, 0, vectors[1])):
            store.remove(np.asarray(deleted[keys], dtype=np.int64))
            store.add(np.asarray(added[keys], dtype=np.int64), added_vectors)
        on_disk = _read_state(directory)
        if on_disk.get("generation") == generation and on_disk.get("factories") == {
            base: store.factory for base, store in self._stores()
        }:
            self.stamp = on_disk
            for _, store in self._stores():
                store.journal = Journal()

    def merge(self, directory: Path, generation: int, manifest: Manifest) -> int:
        """Write both bases from memory and drop every segment (``newsdesk optimize``); returns how many segment
        files were merged. Nothing is written when the files on disk already hold exactly this state in bases."""
        on_disk = _read_state(directory)
        merged = sum(len(_entries(on_disk, base)) for base, _ in self._stores())
        if (
            merged == 0
            and on_disk == self.stamp
            and on_disk.get("generation") == generation
            and all(s.journal is not None and not s.journal.ops for _, s in self._stores())
        ):
            for base, _ in self._stores():  # nothing to merge: still verified, as the open no longer checksums them
                _verify_before_merge(directory, on_disk, base)
            return 0
        before = json.dumps(manifest["faiss"], sort_keys=True)
        self._write(directory, generation, manifest, merge=True)
        if json.dumps(manifest["faiss"], sort_keys=True) != before:  # auto crossed its threshold, or a new recall:
            write_manifest(directory, manifest)  # a save writes the manifest after the caches; a merge alone does not
        return merged

    def _write(self, directory: Path, generation: int, manifest: Manifest, *, merge: bool) -> None:
        on_disk = _read_state(directory)
        spec = manifest["faiss"]
        factory = spec["factory"]
        appendable = not merge and self.stamp is not None and on_disk == self.stamp
        # (no checksum of the bases here: reading 1.7 GB per save is what segments avoid; under the caches lock,
        # files the stamp lists are the ones this process loaded or wrote)
        appendable = appendable and on_disk.get("factory") == factory
        old_sums = on_disk.get("crc32") if appendable else None
        sums: JSONObject = dict(old_sums) if isinstance(old_sums, dict) else {}
        old_sizes = on_disk.get("bytes") if appendable else None
        sizes: JSONObject = dict(old_sizes) if isinstance(old_sizes, dict) else {}
        segments: JSONObject = {}
        rewritten: set[str] = set()
        for base, store in self._stores():
            entries = _entries(on_disk, base) if appendable else []
            plan = _append_plan(store, base, entries, generation, directory) if appendable else None
            if plan is None:  # a whole base: a merge, or files this state's journal is not relative to
                if self.stamp is not None and on_disk == self.stamp:
                    _verify_before_merge(directory, on_disk, base)
                _follow_size(store, spec, articles=store is self.articles)
                for entry in entries:
                    sums.pop(entry["file"], None)
                store.save(directory / base)
                rewritten.add(base)
                sums[base] = file_crc32(directory / base)
                sizes[base] = (directory / base).stat().st_size
                segments[base] = []
                continue
            delta, entries = plan
            if delta.rows:
                name = segment_name(base, generation)
                write_segment(directory / name, delta)
                sums[name] = file_crc32(directory / name)
                entries = [*entries, {"file": name, "rows": delta.rows}]
            if base not in sums:  # a stamp from before checksums
                sums[base] = file_crc32(directory / base)
            if base not in sizes:  # a stamp from before sizes
                sizes[base] = (directory / base).stat().st_size
            segments[base] = entries
        if "auto" in spec:  # what the bases hold now, for the manifest written after this save
            spec["factory"], spec["articles"] = self.passages.factory, self.articles.factory
            spec["auto"]["passages_search"] = self.passages.search_params
            factory = spec["factory"]
        if PASSAGE_VECTORS in rewritten and not is_exact(self.passages.factory):  # measured once per base
            spec["recall"] = sampled_recall(self.passages)
        elif is_exact(self.passages.factory):
            spec.pop("recall", None)
        state: JSONObject = {
            "generation": generation,
            "factory": factory,
            "factories": {base: store.factory for base, store in self._stores()},
            "searches": {base: store.search_params for base, store in self._stores()},
            "crc32": sums,
            "bytes": sizes,
            "segments": segments,
        }
        tmp = directory / f".{VECTORS_STATE}.tmp"
        with discarded_on_failure(tmp):
            tmp.write_text(json.dumps(state), encoding="utf-8")
            os.replace(tmp, directory / VECTORS_STATE)
        self.stamp = state
        for _, store in self._stores():
            store.journal = Journal()
        listed = {entry["file"] for base, _ in self._stores() for entry in segments[base]}
        for path in garbage(directory, (PASSAGE_VECTORS, ARTICLE_VECTORS), listed):
            with contextlib.suppress(OSError):
                path.unlink()

    def search_params_changed(self, manifest: Manifest, settings: Settings) -> bool:
        entry = manifest["faiss"]
        rule = (
            settings.faiss_ann_threshold,
            settings.faiss_ann_factory,
            settings.faiss_ann_search,
            settings.faiss_ann_probe_share,
        )
        auto = entry.get("auto")
        adopted = False
        if settings.faiss_factory == AUTO and (
            auto is None or (auto["threshold"], auto["ann"], auto["ann_search"], auto.get("probe_share")) != rule
        ):
            # the size rule is recorded (or its settings changed): the factory applies from the next base written,
            # the search parameters (query-time) to an ANN base now
            passages_search = auto["passages_search"] if auto is not None else ""
            entry["auto"] = auto = {
                "threshold": rule[0],
                "ann": rule[1],
                "ann_search": rule[2],
                "probe_share": rule[3],
                "passages_search": passages_search,
            }
            adopted = True
            if not settings.faiss_search and not is_exact(self.passages.factory):
                self.passages.set_search_params(ann_search(auto, self.passages.factory))
                if self.passages.search_params != passages_search:
                    auto["passages_search"] = self.passages.search_params
                    entry["recall"] = sampled_recall(self.passages)
        if entry.get("search", "") == settings.faiss_search:
            return adopted
        if auto is None:
            self.passages.set_search_params(settings.faiss_search)
        elif not is_exact(self.passages.factory):  # an exact base takes no search parameters
            self.passages.set_search_params(settings.faiss_search or ann_search(auto, self.passages.factory))
            auto["passages_search"] = self.passages.search_params
        entry["search"] = settings.faiss_search
        if not is_exact(self.passages.factory):
            entry["recall"] = sampled_recall(self.passages)
        return True

    def memory_bytes(self) -> int:
        return self.passages.memory_bytes() + self.articles.memory_bytes()


def _follow_size(store: FaissVectorStore, entry: FaissEntry, *, articles: bool) -> None:
    """Under ``faiss_factory=auto``, before a whole base is written: an exact store grown past the threshold becomes
    the ANN index (a growing archive turns ANN at its next merge). Not the other way: an archive that shrinks stays
    ANN until its next full build, which starts from SQLite's exact vectors rather than an ANN's reconstructions."""
    if "auto" not in entry or not is_exact(store.factory):
        return
    factory, search = resolve(entry, store.count(), articles=articles)
    if factory != store.factory:
        store.rebuild_as(factory, search)


def sampled_recall(
    store: FaissVectorStore, vectors: Iterable[tuple[np.ndarray, np.ndarray]] | None = None
) -> RecallEntry:
    """Recall@10 of ``store``'s own search against exact search, over a seeded sample of ``RECALL_SAMPLE`` of its
    vectors used as queries. The exact top 10 is a brute-force scan (in blocks) over ``vectors`` (ids, vectors)
    when given (``check`` passes SQLite's stored embeddings), else over the vectors the store reconstructs (exact
    for flat-coded IVF and HNSW; SQ/PQ codes give their decoded vectors, so then the figure leaves out the
    quantisation error)."""
    ids = store.ids()
    k = min(10, len(ids))
    if k == 0:
        return {"at10": 1.0, "sample": 0, "exact": "none"}
    picked = np.sort(np.random.default_rng(RECALL_SEED).choice(ids, size=min(RECALL_SAMPLE, len(ids)), replace=False))
    source = "sqlite" if vectors is not None else "reconstructed"
    if vectors is None:
        block = 65_536
        vectors = ((ids[i : i + block], store.reconstruct_batch(ids[i : i + block])) for i in range(0, len(ids), block))
    queries: np.ndarray | None = None
    best_s = np.full((len(picked), k), -np.inf, np.float32)
    best_i = np.full((len(picked), k), -1, np.int64)
    blocks = list(vectors) if source == "sqlite" else vectors
    if source == "sqlite":  # the queries are the stored embeddings of the picked ids
        parts = [(b_ids, b_vecs) for b_ids, b_vecs in blocks]
        all_ids = np.concatenate([b for b, _ in parts])
        order = np.argsort(all_ids)
        at = order[np.searchsorted(all_ids[order], picked)]
        flat = np.concatenate([v for _, v in parts])
        queries = np.ascontiguousarray(flat[at], dtype=np.float32)
        blocks = parts
    else:
        queries = store.reconstruct_batch(picked)
    for b_ids, b_vecs in blocks:
        scores = queries @ np.asarray(b_vecs, dtype=np.float32).T
        both_s = np.concatenate([best_s, scores], axis=1)
        both_i = np.concatenate([best_i, np.broadcast_to(np.asarray(b_ids, np.int64), scores.shape)], axis=1)
        top = np.argpartition(-both_s, k - 1, axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(both_s, top, axis=1), np.take_along_axis(both_i, top, axis=1)
    _, found = store.search(queries, k)
    hits = sum(len(np.intersect1d(a, e)) for a, e in zip(found, best_i, strict=True))
    return {"at10": round(hits / (k * len(picked)), 4), "sample": len(picked), "exact": source}


def _append_plan(
    store: FaissVectorStore, base: str, entries: list[JSONObject], generation: int, directory: Path
) -> tuple[Delta, list[JSONObject]] | None:
    """The segment to append for ``store``'s journal (maybe empty: nothing changed) and the segments it follows;
    None when a whole base must be written instead: no journal, or the segments' rows past ``MERGE_FRACTION`` of
    the store. Past ``MERGE_SEGMENTS`` files the segments and this change are written as one segment (a tiered
    merge, as Lucene's: it costs the segments' size, a few MB), the base kept: rewriting a 1.45 GB base every
    ninth write at 924k passages made that write cost seconds."""
    if store.journal is None:
        return None
    delta = store.journal.delta(store.dimension)
    if not delta.rows:
        return delta, entries
    if any(entry["file"] == segment_name(base, generation) for entry in entries):
        return None  # this generation has a segment already (cannot happen with a journal; a whole base is safe)
    rows = delta.rows + sum(int(entry["rows"]) for entry in entries)
    if rows > MERGE_FRACTION * max(store.count(), 1):
        return None
    if len(entries) + 1 > MERGE_SEGMENTS:
        held = [read_segment(directory / str(entry["file"]), store.dimension) for entry in entries]
        return compose([*held, delta], store.dimension), []
    return delta, entries


def _entries(state: JSONObject, base: str) -> list[JSONObject]:
    """The segments ``state`` lists for ``base``, oldest first (none in a stamp from before segments); IndexCorrupt
    for a list of the wrong shape."""
    listed = state.get("segments", {})
    entries = listed.get(base, []) if isinstance(listed, dict) else None
    if not isinstance(entries, list) or not all(
        isinstance(e, dict) and isinstance(e.get("file"), str) and is_segment_of(e["file"], base)
        and isinstance(e.get("rows"), int)
        for e in entries
    ):  # fmt: skip
        raise IndexCorrupt(f"{VECTORS_STATE} lists the segments of {base} in a form this newsdesk cannot read")
    return entries


def _listed_files(state: JSONObject) -> list[str]:
    """Every file ``state`` says the vectors are made of: both bases and their segments."""
    names = [PASSAGE_VECTORS, ARTICLE_VECTORS]
    for base in (PASSAGE_VECTORS, ARTICLE_VECTORS):
        names += [entry["file"] for entry in _entries(state, base)]
    return names


def _load_store(directory: Path, state: JSONObject, base: str, factory: str, search: str = "") -> FaissVectorStore:
    """A base file with its segments applied in order (their net tombstones in one removal, then their net
    additions in one addition: a removal scans the whole id map once, not once per segment)."""
    sizes = state.get("bytes")
    size = sizes.get(base) if isinstance(sizes, dict) else None
    store = FaissVectorStore.load(directory / base, factory, search, size=size if isinstance(size, int) else None)
    entries = _entries(state, base)
    if entries:
        delta = compose((read_segment(directory / e["file"], store.dimension) for e in entries), store.dimension)
        # only the tombstones the base holds: most name vectors the segments added (a replaced or new id), and a
        # removal from an IDMap2 rebuilds its whole reverse map (seconds at 1.1M) even when it removes nothing
        held = delta.tombstones[np.isin(delta.tombstones, store.ids(), assume_unique=True)]
        store.remove(held)
        store.add(delta.ids, delta.vectors)
    store.journal = Journal()
    return store


def _load(directory: Path, state: JSONObject, manifest: Manifest) -> FaissVectors:
    """The vectors the stamp ``state`` describes; IndexCorrupt when a file is damaged or missing. Under
    ``faiss_factory=auto`` the stamp says which factory each base holds (it is written with them)."""
    entry = manifest["faiss"]
    factory, search = entry["factory"], entry.get("search") or ""
    articles = entry.get("articles") or ARTICLE_FACTORY
    auto = entry.get("auto")
    if auto is not None:
        factories, searches = state.get("factories"), state.get("searches")
        if isinstance(factories, dict) and isinstance(searches, dict):
            factory, articles = str(factories.get(PASSAGE_VECTORS)), str(factories.get(ARTICLE_VECTORS))
            search = str(searches.get(PASSAGE_VECTORS) or "")
        else:  # a stamp from before auto (an index that adopted it): the bases hold the manifest's factories
            search = auto["passages_search"]
        if entry.get("search"):  # faiss_search, changed since (search_params_changed) or not
            search = search if is_exact(factory) else entry["search"]
        entry["factory"], entry["articles"], auto["passages_search"] = factory, articles, search
    return FaissVectors(
        _load_store(directory, state, PASSAGE_VECTORS, factory, search),
        _load_store(directory, state, ARTICLE_VECTORS, articles),
        state,
    )


OPEN_TRIES = 3  # a save or merge in another process may replace the files between reading the stamp and them


class FaissBackend(VectorBackend):
    name = "faiss"

    def pin_threads(self, threads: int) -> None:
        _faiss().omp_set_num_threads(threads)

    def entry(self, settings: Settings, target: Path, dimension: int) -> VectorEntry:
        return {"store": self.name}

    def open(self, directory: Path, store: Store, manifest: Manifest, *, records: bool = True) -> FaissVectors:
        """The FAISS caches (bases and segments) if they match the store's generation and factory, the bases their
        recorded sizes and the segments their checksums, else rebuilt from the stored embeddings and saved (where
        the directory can be written and no writer saves meanwhile)."""
        dim = int(manifest["model"]["dimension"])
        entry = manifest["faiss"]
        auto = "auto" in entry  # the stamp says what the bases hold; else they must hold the manifest's factory
        generation = store.generation()
        for _ in range(OPEN_TRIES):
            state = _read_state(directory)
            if state.get("generation") != generation or (not auto and state.get("factory") != entry["factory"]):
                break
            try:
                if _intact(directory, state):
                    loaded = _load(directory, state, manifest)
                    n_articles, n_passages = store.counts()
                    if (loaded.passages.count(), loaded.articles.count()) == (n_passages, n_articles):
                        return loaded
            except IndexCorrupt:
                pass  # a damaged cache is rebuilt below like a stale one
            if _read_state(directory) == state:
                break  # the files are what the stamp lists, and wrong; else a save replaced them: read again
        n_articles, n_passages = store.counts()
        factory, search = resolve(entry, n_passages)
        articles, _ = resolve(entry, n_articles, articles=True)
        vectors = FaissVectors(
            FaissVectorStore.build(dim, factory, store.iter_vectors("passages"), search),
            FaissVectorStore.build(dim, articles, store.iter_vectors("articles")),
        )
        if auto:
            entry["factory"], entry["articles"], entry["auto"]["passages_search"] = factory, articles, search
        # a read-only index still serves from the rebuilt in-memory copy; one written meanwhile saves its own
        with contextlib.suppress(OSError), store.saving(generation) as ok:
            if ok:
                vectors.save(directory, generation, manifest)
        return vectors

    def check(self, directory: Path, store: Store, manifest: Manifest) -> list[str]:
        """The caches, when their stamp claims the store's generation: every listed file intact, the bases with
        their segments applied holding exactly SQLite's ids and (exact factories) every vector equal to its stored
        embedding, and every vector a segment adds (any factory: segments hold raw vectors) equal to it."""
        state_path = directory / VECTORS_STATE
        if not (directory / PASSAGE_VECTORS).is_file() or not state_path.is_file():
            return []  # a missing cache is legal: it is rebuilt on open
        try:
            state = json.loads(state_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return [f"{VECTORS_STATE} is unreadable"]
        if not isinstance(state, dict):
            return [f"{VECTORS_STATE} is unreadable"]
        if state.get("generation") != store.generation():
            return []  # stale caches are legal too: open rebuilds them
        try:
            damaged = _damaged(directory, state)
            if damaged in (PASSAGE_VECTORS, ARTICLE_VECTORS) and (directory / damaged).is_file():
                # an open checks a base by its size only: this one must be dropped to be rebuilt
                return [
                    f"{damaged} differs from the checksum it was saved with; `newsdesk optimize` drops it and the "
                    "next open rebuilds it from SQLite"
                ]
            if damaged:
                return [f"{damaged} differs from the checksum it was saved with; rebuilt on open"]
            vectors = _load(directory, state, manifest)
        except IndexCorrupt as exc:
            return [exc.message]
        problems: list[str] = []
        factory = manifest["faiss"]["factory"]
        for table, base, vs, fac in (
            ("passages", PASSAGE_VECTORS, vectors.passages, factory),
            ("articles", ARTICLE_VECTORS, vectors.articles, ARTICLE_FACTORY),
        ):
            entries = _entries(state, base)
            what = base if not entries else f"{base} with its {len(entries)} segments"
            problem = ids_problem(vs.ids(), store, table, what)
            if problem:
                problems.append(problem)
                continue
            if entries:
                added = compose((read_segment(directory / e["file"], vs.dimension) for e in entries), vs.dimension)
                problem = _segment_problem(added, store, table, base)
                if problem:
                    problems.append(problem)
                    continue
            if "Flat" in fac and "PQ" not in fac and "SQ" not in fac:
                for ids, vecs in store.iter_vectors(table):
                    for i, v in zip(ids, vecs, strict=True):
                        if not np.allclose(vs.reconstruct(int(i)), v, atol=1e-5):
                            problems.append(f"{base}: vector {i} differs from its stored embedding")
                            return problems
        return problems

    def quality(self, directory: Path, store: Store, manifest: Manifest) -> JSONObject:
        """The passage base's factory and, for an ANN one, recall@10 against a brute-force scan of SQLite's stored
        embeddings, on ``RECALL_SAMPLE`` of them (seeded) as queries, and whether it reaches ``RECALL_FLOOR``."""
        state = _read_state(directory)
        if state.get("generation") != store.generation():
            return {}  # stale caches: the next open rebuilds them
        try:
            vectors = _load(directory, state, manifest)
        except IndexCorrupt:
            return {}  # check reports it
        passages = vectors.passages
        report: JSONObject = {"factory": passages.factory, "search": passages.search_params, "exact": True}
        if not is_exact(passages.factory):
            recall = sampled_recall(passages, store.iter_vectors("passages"))
            report.update({"exact": False, "recall": dict(recall), "recall_floor": RECALL_FLOOR})
        return report

    def summary(self, stats: JSONObject) -> str:
        faiss = stats["faiss"]
        line = f"{faiss['factory']}  (search {faiss['search'] or 'defaults'}, {faiss['metric']})"
        auto = faiss.get("auto")
        if isinstance(auto, dict):
            line += f"; auto: exact below {auto['threshold']:,} vectors, {auto['ann']} from there"
            share = auto.get("probe_share")
            if isinstance(share, int | float) and not re.search(r"nprobe\s*=", str(auto.get("ann_search", ""))):
                line += f" probing {share:g} of its lists"
        recall = faiss.get("recall")
        if isinstance(recall, dict):
            line += f"; recall@10 {recall['at10']:.3f} on {recall['sample']} sampled vectors ({recall['exact']})"
        return line

    def incompatibility(self, manifest: Manifest, settings: Settings) -> str | None:
        """An explicit factory must be the one recorded; ``auto`` keeps any index that follows it, and adopts an exact
        one built before it (``search_params_changed`` records the rule; the next merge past the threshold turns it
        ANN), so a new default rebuilds nothing."""
        entry = manifest["faiss"]
        if settings.faiss_factory == AUTO:
            return None if "auto" in entry or entry.get("factory") == EXACT_FACTORY else "the FAISS factory changed"
        if "auto" in entry or entry.get("factory") != settings.faiss_factory:
            return "the FAISS factory changed"
        return None


def _read_state(directory: Path) -> JSONObject:
    try:
        state = json.loads((directory / VECTORS_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def _intact(directory: Path, state: JSONObject) -> bool:
    """What an open verifies before loading: every small file the stamp lists (segments) still has the CRC-32 it
    recorded, and the bases too when the stamp has no sizes for them (a stamp from before sizes); a base with a
    recorded size is checked by size as it is loaded (``FaissVectorStore.load``), and in full by ``newsdesk check``
    and before a merge reads it (``_verify_before_merge``), as Lucene verifies checksums on merge and in CheckIndex:
    reading 1.7 GB to checksum it would cost more than the open. A stamp from before checksums, which lists no
    segments: yes; False for a stamp listing segments in a form this newsdesk cannot read."""
    sizes = state.get("bytes")
    sized = {name for name, size in sizes.items() if isinstance(size, int)} if isinstance(sizes, dict) else set()
    try:
        return _damaged(directory, state, skip=sized & {PASSAGE_VECTORS, ARTICLE_VECTORS}) is None
    except IndexCorrupt:
        return False


def _verify_before_merge(directory: Path, state: JSONObject, base: str) -> None:
    """Refuse to merge from a base whose bytes are not the ones it was saved with (the in-memory copy a merge writes
    was read from it, unverified at open): the stamp is removed so the next open rebuilds from SQLite, and the save
    fails with an OSError (a committed write stays committed: ``save_after_commit`` logs it)."""
    sums = state.get("crc32")
    if not isinstance(sums, dict) or base not in sums:
        return
    try:
        same = file_crc32(directory / base) == sums[base]
    except OSError:
        same = False
    if not same:
        with contextlib.suppress(OSError):
            (directory / VECTORS_STATE).unlink()
        raise OSError(f"{base} differs from the checksum it was saved with; the vectors are rebuilt on next open")


def _damaged(directory: Path, state: JSONObject, skip: set[str] | frozenset[str] = frozenset()) -> str | None:
    """The first listed file (but those in ``skip``) whose CRC-32 is not the recorded one (or that is missing), or
    None."""
    names = _listed_files(state)
    sums = state.get("crc32")
    if not isinstance(sums, dict):
        return None if names == [PASSAGE_VECTORS, ARTICLE_VECTORS] else VECTORS_STATE
    for name in names:
        if name in skip:
            if not (directory / name).is_file():
                return name
            continue
        try:
            if file_crc32(directory / name) != sums.get(name):
                return name
        except OSError:
            return name
    return None


def _segment_problem(added: Delta, store: Store, table: str, base: str) -> str | None:
    """The ``check`` line when a vector the segments of ``base`` add differs from SQLite's embedding of that id."""
    if not len(added.ids):
        return None  # the segments only delete
    order = np.argsort(added.ids)
    keys = added.ids[order]
    for ids, vecs in store.iter_vectors(table):
        at = np.searchsorted(keys, ids)
        hit = (at < len(keys)) & (keys[np.minimum(at, len(keys) - 1)] == ids)
        if not hit.any():
            continue
        ours = added.vectors[order[at[hit]]]
        bad = ~np.all(np.isclose(ours, np.asarray(vecs)[hit], atol=1e-6), axis=1)
        if bad.any():
            return f"{base}: a segment's vector {int(ids[hit][bad][0])} differs from its stored embedding"
    return None
