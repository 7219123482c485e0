"""Caches of search/news saved by what changed: a base file and the small segments later saves appended to it.

The duplicate fingerprints (``duplicates.npz``) and the more-like-this profiles (``neighbours.npz``) grow with the
corpus, so rewriting them whole on every write costs the corpus, not the write. As the vector segments
(search/vectors/segments.py, whose merge policy this shares): a build or a merge writes the base file; each later
save writes one immutable ``<stem>.seg-<generation>.npz`` holding what changed since the save before, and then the
stamp (``<stem>.json``, written last with a rename) listing the base (its size) and the segments in order, each with
its CRC-32 (they are small: checking them costs nothing). A crash at any moment leaves the old stamp, whose files are
all still there; a segment the stamp does not list is garbage, removed by the next save under the caches lock. A
save appends only when the stamp on disk is the one the in-memory cache was loaded from or last saved (another
process saved meanwhile: it writes a base), writes a base once the segments pass ``MERGE_FRACTION`` of the base's
rows, and past ``MERGE_SEGMENTS`` files writes one segment of everything since the base in place of the listed ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import uuid
from collections.abc import Callable
from pathlib import Path

from search.jsontypes import JSONObject
from search.storage.files import discarded_on_failure, file_crc32
from search.vectors.segments import MERGE_FRACTION, MERGE_SEGMENTS


def segment_name(stem: str, generation: int) -> str:
    """``duplicates`` at generation 12 -> ``duplicates.seg-12.npz``."""
    return f"{stem}.seg-{generation}.npz"


def read_stamp(path: Path) -> JSONObject:
    """The stamp at ``path``, or {} when it is missing or not a JSON object (a cache to write whole)."""
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


def listed_segments(directory: Path, stamp: JSONObject, base: str) -> list[Path]:
    """The segment files ``stamp`` lists, in order, after checking that the base has the size it was saved with and
    every segment its CRC-32; ValueError (a damaged cache, rebuilt by the caller) if not. A stamp from before
    segments (no ``base`` entry) lists none."""
    entry = stamp.get("base")
    if entry is None:
        return []
    if not isinstance(entry, dict) or entry.get("file") != base:
        raise ValueError(f"the stamp of {base} names another base")
    if (directory / base).stat().st_size != entry.get("size"):
        raise ValueError(f"{base} is not the file its stamp lists")
    paths = []
    for segment in stamp.get("segments", []):
        path = directory / str(segment["file"])
        if file_crc32(path) != segment["crc32"]:
            raise ValueError(f"{path.name} differs from the checksum it was saved with")
        paths.append(path)
    return paths


def base_stamp(directory: Path, base: str, rows: int, fields: JSONObject) -> JSONObject:
    """The stamp of a base file just written (no segments): ``fields`` (the generation and what else its cache
    checks), the base's size and rows (which the merge policy compares segments to) and a token of this write."""
    size = (directory / base).stat().st_size
    # a token of this write: another process's base of the same size and rows is still another base, which the
    # changes an index holds are not relative to (a save compares the stamp on disk with the one it last wrote)
    token = uuid.uuid4().hex
    return fields | {"base": {"file": base, "size": size, "rows": rows, "token": token}, "segments": []}


def appended(
    directory: Path,
    stamp: JSONObject,
    stem: str,
    generation: int,
    rows: int,
    write: Callable[[Path], object],
    whole: Callable[[], tuple[int, Callable[[Path], object]]] | None = None,
) -> JSONObject | None:
    """The stamp after appending a segment of ``rows`` changes (written by ``write`` to the path given) to the files
    ``stamp`` lists, or None when the merge policy says to write a base instead (or the name is taken). Past
    ``MERGE_SEGMENTS`` files, ``whole`` gives (rows, writer) of one segment holding everything since the base, which
    replaces the listed ones (a tiered merge, as Lucene's: it costs the segments' size, not the base's; at 924k
    passages the profiles' base is 108 MB and the fingerprints' 71 MB, rewritten every ninth write before)."""
    segments = list(stamp.get("segments", []))
    base = stamp.get("base")
    if not isinstance(base, dict):
        return None
    name = segment_name(stem, generation)
    total = rows + sum(int(s["rows"]) for s in segments)
    if total > MERGE_FRACTION * max(int(base["rows"]), 1) or any(s["file"] == name for s in segments):
        return None
    if len(segments) + 1 > MERGE_SEGMENTS:
        if whole is None:
            return None
        rows, write = whole()
        segments = []
    write_atomic(directory / name, write)
    segments.append({"file": name, "crc32": file_crc32(directory / name), "rows": rows})
    return stamp | {"generation": generation, "segments": segments}


def write_atomic(path: Path, write: Callable[[Path], object]) -> None:
    """``write`` to a temporary file, renamed to ``path`` (a reader never sees half of one)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with discarded_on_failure(tmp):
        write(tmp)
        os.replace(tmp, path)


def write_stamp(path: Path, stamp: JSONObject) -> None:
    """The stamp, through ``.<name>.tmp`` and a rename (under the caches lock: one writer at a time)."""
    tmp = path.with_name(f".{path.name}.tmp")
    with discarded_on_failure(tmp):
        tmp.write_text(json.dumps(stamp), encoding="utf-8")
        os.replace(tmp, path)


_SEGMENT = re.compile(r"^(?P<stem>.+)\.seg-\d+\.npz$")


def remove_garbage(directory: Path, stem: str, stamp: JSONObject) -> None:
    """Delete the segments of ``stem`` that ``stamp`` (just written) does not list, and temporary files of a save
    of it that was killed. Only under the caches lock (``Store.saving``): no other process writes them then."""
    listed = {str(s["file"]) for s in stamp.get("segments", [])}
    for path in directory.iterdir():
        name = path.name
        match = _SEGMENT.match(name)
        mine = match is not None and match["stem"] == stem and name not in listed
        killed = name.startswith(f".{stem}.") and name.endswith(".tmp")
        if mine or killed:
            with contextlib.suppress(OSError):
                path.unlink()
