"""Labelling articles with their story and duplicate group, whichever path they arrive by.

A full build labels every article once it has written them all (``label_unlabelled``); an incremental change
labels its new articles before writing, so labels commit in the same transaction as the articles
(``label_new``); an index made before labels existed is labelled when it opens. All three use the same rules
(``search/news/stories.py``; duplicates: ``search/news/dedup.py``, exact and near-identical bodies and reworded
headlines),
with the articles already labelled as the fixed past, so labels never change once given.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from search.models import PARAGRAPH_SEPARATOR
from search.news.dedup import DedupIndex, DuplicateIndex
from search.news.stories import DEFAULT_STORIES, Grouped, StoryConfig, assign_stories
from search.ranking.catalog import NO_DATE, ArticleCatalog, day_or_none
from search.storage.files import DAMAGED_CACHE, discarded_on_failure, stamped
from search.storage.store import Store
from search.vectors.base import VectorStore

Labels = list[tuple[str, str]]  # (story, duplicate group) per article
DUPLICATES_FILE = "duplicates.npz"  # the DedupIndex of the labelled articles, a cache stamped like the FAISS files
DUPLICATES_STATE = "duplicates.json"


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
    rows = np.flatnonzero(keep)

    def search(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return articles.search(queries, k, allowed=grouped_aids)

    days = [day_or_none(t.date) for t in texts]
    grouped = Grouped(
        keys=grouped_aids,
        labels=[catalog.story_labels[r] for r in rows.tolist()],
        days=[None if catalog.days[r] == NO_DATE else int(catalog.days[r]) for r in rows.tolist()],
        search=search if len(grouped_aids) else None,
    )
    stories = assign_stories(ids, vectors, days, grouped, config)
    label_of = {catalog.ids[r]: catalog.dup_labels[r] for r in rows.tolist()}
    for i in sorted(range(len(ids)), key=lambda i: (days[i] is None, days[i] or 0, ids[i])):
        t = texts[i]
        dedup.add(ids[i], t.body, t.date, t.headline, title=t.title)
        found = next((label_of[m] for m in dedup.group(ids[i]) if m != ids[i] and m in label_of), None)
        label_of[ids[i]] = found or ids[i]
    return list(zip(stories, (label_of[i] for i in ids), strict=True))


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
    """The cached ``DedupIndex`` if it matches the store's generation, else one rebuilt from the labelled
    articles' texts (fingerprints cost about 2 ms an article; the cache spares a server that on every start)."""
    try:
        state = json.loads((directory / DUPLICATES_STATE).read_text(encoding="utf-8"))
        if state.get("generation") == store.generation():
            return DedupIndex.from_bytes((directory / DUPLICATES_FILE).read_bytes())
    except DAMAGED_CACHE:
        pass  # missing, stale, damaged or from another signature version: rebuilt below
    dedup = DedupIndex()
    rows = np.flatnonzero(catalog.labelled).tolist()
    texts = article_texts(store, catalog.aids[rows].tolist())
    for r in rows:
        t = texts[int(catalog.aids[r])]
        dedup.add(catalog.ids[r], t.body, t.date, t.headline, title=t.title)
    return dedup


def duplicates_problems(directory: Path, generation: int) -> list[str]:
    """What ``newsdesk check`` says of the duplicate cache: a damaged stamp, or a damaged file stamped with the store's
    generation, is a problem (the next write rebuilds it); a missing or stale one is not."""
    try:
        if stamped(directory / DUPLICATES_STATE, lambda state: state.get("generation") == generation):
            DedupIndex.from_bytes((directory / DUPLICATES_FILE).read_bytes())
    except DAMAGED_CACHE as exc:
        return [f"the duplicate cache is unreadable ({type(exc).__name__}: {exc}); the next write rebuilds it"]
    return []


def save_duplicates(directory: Path, dedup: DuplicateIndex, generation: int) -> None:
    """Write the cache, then record the generation it matches (last, so a crash leaves it stale, not wrong)."""
    tmp = directory / f".{DUPLICATES_FILE}.tmp"
    state = directory / f".{DUPLICATES_STATE}.tmp"
    with discarded_on_failure(tmp, state):
        tmp.write_bytes(dedup.to_bytes())
        os.replace(tmp, directory / DUPLICATES_FILE)
        state.write_text(json.dumps({"generation": generation}), encoding="utf-8")
        os.replace(state, directory / DUPLICATES_STATE)
