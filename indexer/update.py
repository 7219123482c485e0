"""Adding and deleting articles in an open index, keeping SQLite, BM25 and FAISS in step.

SQLite (with the BM25 tables, through triggers) changes in one transaction; FAISS is then updated in memory and
saved with the new generation. If the process dies between the two, the next open sees a stale generation and
rebuilds FAISS from the stored vectors, so the dense side can lag a crash but never disagree after an open.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from indexer.build import make_chunker, new_articles
from search.embedding import Embedder
from search.index import Index, now_iso, save_vectors, write_manifest
from search.models import Article
from search.settings import Settings


def add_articles(index: Index, articles: Iterable[Article], embedder: Embedder, settings: Settings) -> int:
    """Insert or replace (by id) articles; returns how many were written."""
    items = list({a.id: a for a in articles}.values())
    if not items:
        return 0
    delete_articles(index, [a.id for a in items], save=False)
    chunker = make_chunker(settings, embedder)
    rows, _ = new_articles(items, chunker, embedder, settings)
    pids = index.store.add_articles(rows)
    index.passages.add(np.asarray(pids, dtype=np.int64), np.concatenate([r.passage_vectors for r in rows]))
    aids = [index.store.aid_of(a.id) for a in items]
    index.articles.add(np.asarray(aids, dtype=np.int64), np.stack([r.article_vector for r in rows]))
    _saved(index)
    return len(items)


def delete_articles(index: Index, article_ids: Iterable[str], *, save: bool = True) -> int:
    """Delete articles by id (unknown ids are ignored); returns how many were deleted."""
    aids, pids = index.store.delete_articles(article_ids)
    if aids:
        index.passages.remove(np.asarray(pids, dtype=np.int64))
        index.articles.remove(np.asarray(aids, dtype=np.int64))
        if save:
            _saved(index)
    return len(aids)


def _saved(index: Index) -> None:
    save_vectors(index.directory, index.passages, index.articles, index.store.generation(), index.manifest)
    n_articles, n_passages = index.store.counts()
    index.manifest["counts"] = {"articles": n_articles, "passages": n_passages}
    index.manifest["newest_date"] = index.store.newest_date()
    index.manifest["updated_at"] = now_iso()
    write_manifest(index.directory, index.manifest)
