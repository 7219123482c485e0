"""Labelling articles with their story and duplicate group, whichever path they arrive by.

A full build labels every article once it has written them all (``label_unlabelled``); an incremental change
labels its new articles before writing, so labels commit in the same transaction as the articles
(``label_new``); an index made before labels existed is labelled when it opens. All three use the same rules
(``search/stories.py``; duplicates: the same content hash, ``search/dedup.py`` for near-duplicates), with the
articles already labelled as the fixed past, so labels never change once given.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from search.catalog import NO_DATE, ArticleCatalog
from search.stories import DEFAULT_STORIES, Grouped, StoryConfig, assign_stories
from search.vectors import VectorStore

Labels = list[tuple[str, str]]  # (story, duplicate group) per article


def label_new(
    catalog: ArticleCatalog,
    articles: VectorStore,
    ids: Sequence[str],
    vectors: np.ndarray,
    days: Sequence[int | None],
    hashes: Sequence[str],
    exclude: set[int] | None = None,
    config: StoryConfig = DEFAULT_STORIES,
) -> Labels:
    """Labels of new articles against the labelled ones in ``catalog`` (vectors in ``articles``), ignoring the
    keys in ``exclude`` (deleted by the same change)."""
    exclude = exclude or set()
    keep = catalog.labelled & ~np.isin(catalog.aids, np.asarray(sorted(exclude), dtype=np.int64))
    grouped_aids = catalog.aids[keep]
    rows = np.flatnonzero(keep)

    def search(queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        return articles.search(queries, k, allowed=grouped_aids)

    grouped = Grouped(
        keys=grouped_aids,
        labels=[catalog.story_labels[r] for r in rows.tolist()],
        days=[None if catalog.days[r] == NO_DATE else int(catalog.days[r]) for r in rows.tolist()],
        search=search if len(grouped_aids) else None,
    )
    stories = assign_stories(ids, vectors, days, grouped, config)
    by_hash = {catalog.hashes[r]: catalog.dup_labels[r] for r in rows.tolist()}
    duplicates: list[str] = []
    order = sorted(range(len(ids)), key=lambda i: (days[i] is None, days[i] or 0, ids[i]))
    dup_of: dict[int, str] = {}
    for i in order:
        dup_of[i] = by_hash.setdefault(hashes[i], ids[i])
    duplicates = [dup_of[i] for i in range(len(ids))]
    return list(zip(stories, duplicates, strict=True))


def label_unlabelled(
    catalog: ArticleCatalog, articles: VectorStore, config: StoryConfig = DEFAULT_STORIES
) -> dict[int, tuple[str, str]]:
    """Labels for every article of ``catalog`` that has none, keyed by article key (vectors from ``articles``)."""
    rows = np.flatnonzero(~catalog.labelled)
    if not len(rows):
        return {}
    aids = catalog.aids[rows]
    labels = label_new(
        catalog,
        articles,
        [catalog.ids[r] for r in rows.tolist()],
        articles.reconstruct_batch(aids),
        [None if catalog.days[r] == NO_DATE else int(catalog.days[r]) for r in rows.tolist()],
        [catalog.hashes[r] for r in rows.tolist()],
        config=config,
    )
    return dict(zip(aids.tolist(), labels, strict=True))
