"""Duplicate fingerprints saved by what changed (``search/news/grouping.py`` over ``search/news/segmented.py``): a
save appends a segment to ``duplicates.npz`` instead of rewriting it, and base + segments load to exactly the
``DedupIndex`` a fresh save of the same articles loads to. Crash and damage cases. No model, no index.
"""

from __future__ import annotations

import io
import random
from pathlib import Path

import numpy as np
import pytest

from search.news import grouping, segmented
from search.news.dedup import DedupIndex
from search.news.grouping import DUPLICATES_FILE, DUPLICATES_STATE, read_duplicates, save_duplicates
from search.vectors.segments import MERGE_SEGMENTS
from tests.test_dedup import _collection


def _arrays(index: DedupIndex) -> dict[str, object]:
    """Everything a ``DedupIndex`` holds that matters (articles, fingerprints, dates, vectors and groups) in one
    comparable form: its archive's arrays (groups numbered by their first member, ids and bodies sorted)."""
    with np.load(io.BytesIO(index.to_bytes()), allow_pickle=False) as npz:
        return {name: npz[name].tobytes() for name in npz.files} | {"canonical": index.canonical_map()}


@pytest.fixture(autouse=True)
def _small_bases(monkeypatch: pytest.MonkeyPatch) -> None:
    """These bases hold 20-30 articles, so a segment of a few is already past the default fraction: merges by
    fraction are tested once, below, and the rest appends until the count limit."""
    monkeypatch.setattr(segmented, "MERGE_FRACTION", 5.0)


def _segments(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if ".seg-" in p.name)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_base_and_segments_load_to_the_index_a_fresh_save_gives(tmp_path: Path, seed: int) -> None:
    """Random runs of additions, replacements and removals, each saved: the loaded index always equals the one in
    memory and one written whole from scratch; saves append (the base is not rewritten), and past MERGE_SEGMENTS
    one segment of everything since the base replaces the listed ones (the fraction being raised: no new base)."""
    rng = random.Random(seed)
    docs = _collection()
    index = DedupIndex()
    for d in docs[:20]:
        index.add(d.id, d.text, d.date, d.headline_vector, title=d.title)
    save_duplicates(tmp_path, index, 1)
    appended = merged = compacted = 0
    for generation in range(2, 30):
        base = (tmp_path / DUPLICATES_FILE).stat()
        listed = len(_segments(tmp_path))
        for _ in range(rng.randint(1, 3)):
            d = rng.choice(docs)
            if rng.random() < 0.35 and len(index):
                index.remove(rng.choice(index.ids()))
            else:
                text = d.text if rng.random() < 0.8 else d.text + " an added closing sentence"  # a replacement
                index.add(d.id, text, d.date, d.headline_vector, title=d.title)
        save_duplicates(tmp_path, index, generation)
        same_base = (tmp_path / DUPLICATES_FILE).stat()
        rewritten = (same_base.st_ino, same_base.st_mtime_ns) != (base.st_ino, base.st_mtime_ns)
        merged += rewritten
        appended += not rewritten
        compacted += not rewritten and listed == MERGE_SEGMENTS and len(_segments(tmp_path)) == 1
        loaded = read_duplicates(tmp_path)
        assert loaded is not None and loaded[1] == generation
        fresh = tmp_path / "fresh"
        fresh.mkdir(exist_ok=True)
        save_duplicates(fresh, DedupIndex.from_bytes(index.to_bytes()), generation)
        fresh_loaded = read_duplicates(fresh)
        assert fresh_loaded is not None
        assert _arrays(loaded[0]) == _arrays(index) == _arrays(fresh_loaded[0])
        assert len(_segments(tmp_path)) <= MERGE_SEGMENTS
    assert appended > compacted > 0 and merged == 0  # both paths were taken; the base never rewritten


def test_a_saved_and_loaded_index_keeps_appending_and_grouping(tmp_path: Path) -> None:
    """The loaded index is a working one: it takes changes and appends them again, and its groups equal the batch
    run's (the incremental rules hold through a reload from segments)."""
    docs = _collection()
    index = DedupIndex()
    for d in docs[:-6]:
        index.add(d.id, d.text, d.date, d.headline_vector, title=d.title)
    save_duplicates(tmp_path, index, 1)
    loaded = read_duplicates(tmp_path)
    assert loaded is not None
    again = loaded[0]
    for d in docs[-6:]:
        again.add(d.id, d.text, d.date, d.headline_vector, title=d.title)
    again.remove("chain0/b")
    save_duplicates(tmp_path, again, 2)
    assert _segments(tmp_path) == ["duplicates.seg-2.npz"]
    final = read_duplicates(tmp_path)
    assert final is not None
    reference = DedupIndex()
    for d in docs:
        if d.id != "chain0/b":
            reference.add(d.id, d.text, d.date, d.headline_vector, title=d.title)
    assert _arrays(final[0]) == _arrays(reference)


def test_a_save_killed_before_its_stamp_leaves_the_old_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = _collection()
    index = DedupIndex()
    for d in docs[:20]:
        index.add(d.id, d.text, d.date, d.headline_vector, title=d.title)
    save_duplicates(tmp_path, index, 1)
    before = _arrays(index)
    index.remove(docs[0].id)
    index.add(docs[25].id, docs[25].text, docs[25].date, docs[25].headline_vector)

    def killed(path: Path, stamp: object) -> None:
        raise OSError("killed before the stamp")

    with monkeypatch.context() as patched, pytest.raises(OSError):
        patched.setattr(grouping, "write_stamp", killed)
        save_duplicates(tmp_path, index, 2)
    assert _segments(tmp_path) == ["duplicates.seg-2.npz"]  # written, not listed
    loaded = read_duplicates(tmp_path)
    assert loaded is not None and loaded[1] == 1 and _arrays(loaded[0]) == before
    save_duplicates(tmp_path, index, 3)  # the journal still holds the change: appended on top of generation 1
    assert _segments(tmp_path) == ["duplicates.seg-3.npz"]  # the unlisted one is garbage, removed
    loaded = read_duplicates(tmp_path)
    assert loaded is not None and loaded[1] == 3 and _arrays(loaded[0]) == _arrays(index)


def test_a_damaged_or_missing_segment_is_a_damaged_cache(tmp_path: Path) -> None:
    docs = _collection()
    index = DedupIndex()
    for d in docs[:20]:
        index.add(d.id, d.text, d.date, d.headline_vector, title=d.title)
    save_duplicates(tmp_path, index, 1)
    index.add(docs[22].id, docs[22].text, docs[22].date, docs[22].headline_vector)
    save_duplicates(tmp_path, index, 2)
    segment = tmp_path / "duplicates.seg-2.npz"
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 0xFF
    segment.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        read_duplicates(tmp_path)
    assert grouping.duplicates_problems(tmp_path, 2)  # check reports it
    assert grouping.duplicates_problems(tmp_path, 3) == []  # a stale cache is legal: rebuilt by the next write
    segment.unlink()
    with pytest.raises(OSError):
        read_duplicates(tmp_path)
    (tmp_path / DUPLICATES_FILE).write_bytes(b"short")  # a base of another size than its stamp says
    with pytest.raises(ValueError, match="not the file"):
        read_duplicates(tmp_path)


def test_another_writer_s_save_makes_the_next_save_write_a_base(tmp_path: Path) -> None:
    """A save appends only to the files its changes are relative to: when another process saved meanwhile (the
    stamp on disk is not the one this index loaded), appending would mix two histories, so it writes a base."""
    docs = _collection()
    mine, theirs = DedupIndex(), DedupIndex()
    for d in docs[:20]:
        mine.add(d.id, d.text, d.date, d.headline_vector, title=d.title)
        theirs.add(d.id, d.text, d.date, d.headline_vector, title=d.title)
    save_duplicates(tmp_path, mine, 1)
    theirs.add(docs[21].id, docs[21].text, docs[21].date)
    save_duplicates(tmp_path, theirs, 2)  # a whole base: ``theirs`` was never saved here
    mine.add(docs[22].id, docs[22].text, docs[22].date)
    save_duplicates(tmp_path, mine, 3)
    assert _segments(tmp_path) == []
    loaded = read_duplicates(tmp_path)
    assert loaded is not None and _arrays(loaded[0]) == _arrays(mine)


def test_a_stamp_from_before_segments_still_loads(tmp_path: Path) -> None:
    """An index saved by the code before segments: ``{"generation": g}`` beside a whole ``duplicates.npz``."""
    docs = _collection()
    index = DedupIndex()
    for d in docs[:10]:
        index.add(d.id, d.text, d.date, d.headline_vector, title=d.title)
    (tmp_path / DUPLICATES_FILE).write_bytes(index.to_bytes())
    (tmp_path / DUPLICATES_STATE).write_text('{"generation": 4}', encoding="utf-8")
    loaded = read_duplicates(tmp_path)
    assert loaded is not None and loaded[1] == 4 and _arrays(loaded[0]) == _arrays(index)
    loaded[0].add(docs[12].id, docs[12].text, docs[12].date)
    save_duplicates(tmp_path, loaded[0], 5)  # no base entry to append to: a base
    assert segmented.read_stamp(tmp_path / DUPLICATES_STATE)["base"]["rows"] == 11


def test_segments_past_the_merge_fraction_make_a_new_base(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(segmented, "MERGE_FRACTION", 0.1)
    docs = _collection()
    index = DedupIndex()
    for d in docs[:30]:
        index.add(d.id, d.text, d.date, d.headline_vector, title=d.title)
    save_duplicates(tmp_path, index, 1)
    index.remove(docs[0].id)  # 2 rows: within 10% of 30
    save_duplicates(tmp_path, index, 2)
    assert _segments(tmp_path) == ["duplicates.seg-2.npz"]
    for d in docs[1:3]:
        index.remove(d.id)  # 2 + 4 rows: past it
    save_duplicates(tmp_path, index, 3)
    assert _segments(tmp_path) == []
    assert segmented.read_stamp(tmp_path / DUPLICATES_STATE)["base"]["rows"] == 27
