"""Labelling articles with their story and duplicate group, whichever path they arrive by.

A full build labels every article once it has written them all (``label_unlabelled``); an incremental change
labels its new articles before writing, so labels commit in the same transaction as the articles
(``label_new``); an index made before labels existed is labelled when it opens. All three use the same rules
(``search/news/stories.py``; duplicates: ``search/news/dedup.py``, exact and near-identical bodies and reworded
headlines),
with the articles already labelled as the fixed past, so labels never change once given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from search.jsontypes import JSONObject
from search.models import PARAGRAPH_SEPARATOR
from search.news.dedup import DedupIndex, DuplicateIndex
from search.news.segmented import (
    appended,
    base_stamp,
    listed_segments,
    read_stamp,
    remove_garbage,
    write_atomic,
    write_stamp,
)
from search.news.stories import DEFAULT_STORIES, Grouped, StoryConfig, assign_stories
from search.ranking.catalog import NO_DATE, ArticleCatalog, day_or_none
from search.storage.files import DAMAGED_CACHE, stamped
from search.storage.store import Store
from search.vectors.base import VectorStore

Labels = list[tuple[str, str]]  # (story, duplicate group) per article
DUPLICATES_FILE = "duplicates.npz"  # the DedupIndex of the labelled articles, a cache stamped like the FAISS files
DUPLICATES_STATE = "duplicates.json"  # its stamp: the generation, the base and the segments (segmented.py)
DUPLICATES_STEM = "duplicates"


@dataclass(frozen=True)
class Text:
    """What duplicate detection reads of an article: headline, body, date and headline vector (if embedded)."""

    title: str
    body: str
    date: str | None
    headline: np.ndarray | None


def label_new(
    catalog: ArticleCatalog,
    articles: VectorStore,
    dedup: DuplicateIndex,
    ids: Sequence[str],
    vectors: np.ndarray,
    texts: Sequence[Text],
    exclude: set[int] | None = None,
    config: StoryConfig = DEFAULT_STORIES,
) -> Labels:
    """Labels of new articles against the labelled ones in ``catalog`` (vectors in ``articles``, duplicate
    fingerprints in ``dedup``, which gains the new articles), ignoring the keys in ``exclude`` (deleted by the
    same change; the caller removes them from ``dedup``).

    A new article takes the duplicate label of the first labelled article of its ``dedup`` group (canonical
    first), or starts its own; labels already given are never rewritten, even when a new article bridges two
    groups (it joins one of them)."""
    exclude = exclude or set()
    keep = catalog.labelled & ~np.isin(catalog.aids, np.asarray(sorted(exclude), dtype=np.int64))
    grouped_aids = catalog.aids[keep]

    def search(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return articles.search(queries, k, allowed=grouped_aids)

    def story_of(keys: np.ndarray) -> list[tuple[str, int | None] | None]:
        rows = catalog.positions(keys).tolist()
        return [
            (catalog.story_labels[r], None if catalog.days[r] == NO_DATE else int(catalog.days[r]))
            if r >= 0 and keep[r]
            else None
            for r in rows
        ]

    # Only what the neighbour search and the duplicate groups name is looked up, by key or id (not a pass over
    # every labelled article, 26k of them at the whole RealTime QA corpus).
    days = [day_or_none(t.date) for t in texts]
    grouped = Grouped(len(grouped_aids), story_of, search if len(grouped_aids) else None)
    stories = assign_stories(ids, vectors, days, grouped, config)
    given: dict[str, str] = {}  # duplicate labels of the new articles so far

    def duplicate_label(article_id: str) -> str | None:
        if article_id in given:
            return given[article_id]
        row = catalog.row_of(article_id)
        return catalog.dup_labels[row] if row >= 0 and keep[row] else None

    for i in sorted(range(len(ids)), key=lambda i: (days[i] is None, days[i] or 0, ids[i])):
        t = texts[i]
        dedup.add(ids[i], t.body, t.date, t.headline, title=t.title)
        members = (duplicate_label(m) for m in dedup.group(ids[i]) if m != ids[i])
        given[ids[i]] = next((label for label in members if label is not None), None) or ids[i]
    return list(zip(stories, (given[i] for i in ids), strict=True))


def label_unlabelled(
    catalog: ArticleCatalog,
    articles: VectorStore,
    store: Store,
    dedup: DuplicateIndex,
    config: StoryConfig = DEFAULT_STORIES,
) -> dict[int, tuple[str, str]]:
    """Labels for every article of ``catalog`` that has none, keyed by article key (vectors from ``articles``,
    texts from ``store``; ``dedup`` holds the labelled articles and gains these)."""
    rows = np.flatnonzero(~catalog.labelled)
    if not len(rows):
        return {}
    aids = catalog.aids[rows]
    texts = article_texts(store, aids.tolist())
    labels = label_new(
        catalog,
        articles,
        dedup,
        [catalog.ids[r] for r in rows.tolist()],
        articles.reconstruct_batch(aids),
        [texts[int(a)] for a in aids.tolist()],
        config=config,
    )
    return dict(zip(aids.tolist(), labels, strict=True))


def article_texts(store: Store, aids: Sequence[int]) -> dict[int, Text]:
    """Headline, body, date and headline vector of the given articles, read in chunks."""
    return {
        aid: Text(title, PARAGRAPH_SEPARATOR.join(paragraphs), date, vec)
        for aid, (title, paragraphs, date, vec) in store.article_texts(aids).items()
    }


def load_duplicates(directory: Path, store: Store, catalog: ArticleCatalog) -> DedupIndex:
    """The cached ``DedupIndex`` (base and segments) if it matches the store's generation, else one rebuilt from the
    labelled articles' texts (fingerprints cost about 2 ms an article; the cache spares a server that on every
    start)."""
    try:
        cached = read_duplicates(directory)
        if cached is not None and cached[1] == store.generation():
            return cached[0]
    except DAMAGED_CACHE:
        pass  # damaged, or from another signature version: rebuilt below
    dedup = DedupIndex()
    rows = np.flatnonzero(catalog.labelled).tolist()
    texts = article_texts(store, catalog.aids[rows].tolist())
    for r in rows:
        t = texts[int(catalog.aids[r])]
        dedup.add(catalog.ids[r], t.body, t.date, t.headline, title=t.title)
    return dedup


def read_duplicates(directory: Path) -> tuple[DedupIndex, int] | None:
    """The saved ``DedupIndex`` (the base, then its segments in order) and the generation its stamp names; None
    when there is no stamp; one of ``DAMAGED_CACHE`` when a listed file is missing or damaged."""
    stamp = read_stamp(directory / DUPLICATES_STATE)
    if "generation" not in stamp:
        return None
    segments = listed_segments(directory, stamp, DUPLICATES_FILE)
    dedup = DedupIndex.from_bytes((directory / DUPLICATES_FILE).read_bytes())
    for path in segments:
        dedup.apply_delta(path.read_bytes())
    dedup.since_base = set(dedup.touched)
    dedup.touched.clear()
    dedup.stamp = stamp
    return dedup, int(stamp["generation"])


def duplicates_problems(directory: Path, generation: int) -> list[str]:
    """What ``newsdesk check`` says of the duplicate cache: a damaged stamp, or a damaged base or segment stamped with
    the store's generation, is a problem (the next write rebuilds it); a missing or stale one is not."""
    try:
        if stamped(directory / DUPLICATES_STATE, lambda state: state.get("generation") == generation):
            read_duplicates(directory)
    except DAMAGED_CACHE as exc:
        return [f"the duplicate cache is unreadable ({type(exc).__name__}: {exc}); the next write rebuilds it"]
    return []


def save_duplicates(directory: Path, dedup: DedupIndex, generation: int, *, merge: bool = False) -> None:
    """Append a segment of what changed since ``dedup`` was loaded or saved (search/news/segmented.py), or write the
    whole base when the files on disk are not the ones it is relative to, the merge policy says so, or ``merge``
    (``newsdesk optimize``) asks; the stamp last (a crash in between leaves the previous stamp, whose files are all
    still there). Under the caches lock."""
    on_disk = read_stamp(directory / DUPLICATES_STATE)
    stamp: JSONObject | None = None
    if dedup.stamp is not None and on_disk == dedup.stamp and not merge:
        if not dedup.touched:
            stamp = on_disk | {"generation": generation}
        else:
            delta = dedup.delta_bytes()
            rows = 2 * len(dedup.touched)  # tombstones and additions, as the vector segments count them

            def whole() -> tuple[int, Callable[[Path], object]]:
                everything = dedup.delta_bytes(whole=True)
                return 2 * len(dedup.touched | dedup.since_base), lambda p: p.write_bytes(everything)

            stamp = appended(
                directory, on_disk, DUPLICATES_STEM, generation, rows, lambda p: p.write_bytes(delta), whole
            )
    if stamp is None:
        data = dedup.to_bytes()
        write_atomic(directory / DUPLICATES_FILE, lambda p: p.write_bytes(data))
        stamp = base_stamp(directory, DUPLICATES_FILE, len(dedup), {"generation": generation})
        dedup.since_base = set()
    else:
        dedup.since_base |= dedup.touched
    write_stamp(directory / DUPLICATES_STATE, stamp)
    dedup.stamp = stamp
    dedup.touched.clear()
    remove_garbage(directory, DUPLICATES_STEM, stamp)
