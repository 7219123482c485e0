"""Vector segments: a save writes what changed since the last one, not the whole FAISS file.

As Lucene's and Qdrant's segments: the base file (``vectors.faiss``, ``articles.faiss``, format unchanged) holds the
vectors as of some generation, and each later save appends one small immutable segment file per kind
(``vectors.seg-<generation>.npz``) holding the vectors added since the save before it, keyed by id, and the ids it
removed or replaced (tombstones). ``vectors.json``, written last with a rename, lists the segments in order with
every file's CRC-32, so a crash at any moment leaves either the old list or the new one; a file it does not list is
garbage, removed by the next save. An open loads the base and applies the segments in order (tombstones first,
then additions), which gives the same in-memory FAISS index as one built from the same vectors, so the query side
is unchanged. When the segments grow past ``MERGE_FRACTION`` of the base, a save writes a new base instead (a
merge) and the list empties; past ``MERGE_SEGMENTS`` files it writes them and its own change as one segment (the
base kept); ``newsdesk optimize`` forces a merge.

A segment holds the float32 vectors as written (the embeddings SQLite stores), not FAISS codes: re-adding them to a
trained SQ/PQ/IVF index on open encodes them exactly as the writer's in-memory index did.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from search.errors import IndexCorrupt
from search.storage.files import DAMAGED_CACHE, discarded_on_failure

# Merge policy: a save that would leave more than this many segments per kind, or segment rows (additions and
# tombstones) above this fraction of the vectors held, writes a new base instead. Eight appends cost a few MB each
# at 1.1M passages where a base is 1.7 GB; an open applies the segments in one removal and one addition.
MERGE_SEGMENTS = 8
MERGE_FRACTION = 0.10
# A journal (changes not saved yet) larger than this many rows and than MERGE_FRACTION of its store is dropped: the
# next save merges anyway, and a long run of failed saves (a full disk) must not hold a second copy of the vectors.
JOURNAL_FLOOR = 4096

_SEGMENT_NAME = re.compile(r"^(?P<stem>.+)\.seg-(?P<generation>\d+)\.npz$")


def segment_name(base: str, generation: int) -> str:
    """``vectors.faiss`` at generation 12 -> ``vectors.seg-12.npz``."""
    return f"{base.removesuffix('.faiss')}.seg-{generation}.npz"


def is_segment_of(name: str, base: str) -> bool:
    match = _SEGMENT_NAME.match(name)
    return match is not None and match["stem"] == base.removesuffix(".faiss")


@dataclass(frozen=True)
class Delta:
    """What a run of changes did to a set of vectors: ``tombstones`` (sorted int64 ids removed or replaced, which
    include every id of ``ids``) are removed first, then ``ids`` are added with ``vectors`` (in the order they were
    last added)."""

    tombstones: np.ndarray
    ids: np.ndarray
    vectors: np.ndarray

    @property
    def rows(self) -> int:
        """The size that counts towards the merge policy: tombstones and additions."""
        return len(self.tombstones) + len(self.ids)

    @classmethod
    def empty(cls, dimension: int) -> Delta:
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, dimension), np.float32))


Op = tuple[np.ndarray, np.ndarray | None]  # (ids, vectors): an addition; (ids, None): a removal


def net(ops: Iterable[Op], dimension: int) -> Delta:
    """The one ``Delta`` equivalent to applying ``ops`` in order: an id removed after its last addition is only a
    tombstone, an id added (again) carries the vector of its last addition."""
    removed: set[int] = set()
    last: dict[int, tuple[int, int]] = {}  # id -> (op, row) of its latest addition still standing
    batches: list[np.ndarray] = []
    for ids, vectors in ops:
        keys = np.asarray(ids, dtype=np.int64).tolist()
        removed.update(keys)
        if vectors is None:
            for key in keys:
                last.pop(key, None)
        else:
            batch = len(batches)
            batches.append(np.asarray(vectors, dtype=np.float32))
            for row, key in enumerate(keys):
                last.pop(key, None)  # re-inserted at the end: additions keep the order of their last write
                last[key] = (batch, row)
    if not last:
        return Delta(np.array(sorted(removed), np.int64), np.zeros(0, np.int64), np.zeros((0, dimension), np.float32))
    ids = np.fromiter(last, np.int64, len(last))
    vectors = np.stack([batches[b][r] for b, r in last.values()]).astype(np.float32, copy=False)
    return Delta(np.array(sorted(removed), np.int64), ids, vectors)


def compose(deltas: Iterable[Delta], dimension: int) -> Delta:
    """Successive deltas (a store's segments, oldest first) as one."""
    ops: list[Op] = []
    for delta in deltas:
        ops.append((delta.tombstones, None))
        ops.append((delta.ids, delta.vectors))
    return net(ops, dimension)


class Journal:
    """The additions and removals a ``FaissVectorStore`` took since its files were last written: what the next
    save appends as a segment. Holds copies of the added vectors (a write's few hundred rows)."""

    def __init__(self) -> None:
        self.ops: list[Op] = []
        self.rows = 0

    def added(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.ops.append((np.array(ids, dtype=np.int64), np.array(vectors, dtype=np.float32)))
        self.rows += 2 * len(ids)  # a tombstone and an addition each, as Delta.rows counts them

    def removed(self, ids: np.ndarray) -> None:
        self.ops.append((np.array(ids, dtype=np.int64), None))
        self.rows += len(ids)

    def too_big(self, held: int) -> bool:
        return self.rows > max(JOURNAL_FLOOR, MERGE_FRACTION * held)

    def delta(self, dimension: int) -> Delta:
        return net(self.ops, dimension)


def write_segment(path: Path, delta: Delta) -> None:
    """Write a segment file through a temporary file and a rename (a reader never sees half of one)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with discarded_on_failure(tmp):
        with tmp.open("wb") as fh:
            np.savez(fh, tombstones=delta.tombstones, ids=delta.ids, vectors=delta.vectors)
        os.replace(tmp, path)


def read_segment(path: Path, dimension: int) -> Delta:
    """A segment file; IndexCorrupt when it is missing, damaged or of another shape (the caller rebuilds)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            tombstones = np.asarray(data["tombstones"], dtype=np.int64)
            ids = np.asarray(data["ids"], dtype=np.int64)
            vectors = np.asarray(data["vectors"], dtype=np.float32)
    except DAMAGED_CACHE as exc:
        raise IndexCorrupt(f"cannot read {path.name}: {exc}".splitlines()[0]) from None
    if (
        tombstones.ndim != 1
        or ids.ndim != 1
        or vectors.shape != (len(ids), dimension)
        or not np.isin(ids, tombstones).all()
    ):
        raise IndexCorrupt(f"{path.name} is not a segment of {dimension}-dimensional vectors")
    return Delta(tombstones, ids, vectors)


def garbage(directory: Path, bases: Iterable[str], listed: set[str]) -> list[Path]:
    """Files of the vector caches that nothing refers to: segments the stamp does not list (a save or merge that
    died before its stamp, or merged away) and temporary files of a save that was killed. Only safe to delete under
    the caches lock (``Store.saving``), where no other process is writing them."""
    bases = list(bases)
    found: list[Path] = []
    for path in directory.iterdir():
        name = path.name
        if any(is_segment_of(name, base) for base in bases) and name not in listed:
            found.append(path)
        elif name.startswith(".") and name.endswith(".tmp"):
            inner = name[1:].rsplit(".", 2)[0]  # ".vectors.faiss.123.tmp" -> "vectors.faiss"
            if inner in bases or any(is_segment_of(inner, base) for base in bases):
                found.append(path)
    return found
