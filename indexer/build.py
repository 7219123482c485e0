"""Building an index: read sources, chunk, embed in batches, write a new index directory, swap it in.

The new directory is complete (SQLite committed, FAISS written, manifest last) before it replaces the old one, so
an interrupted or failed build leaves whatever index was there before untouched.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from search.chunking import Chunk, Chunker
from search.embedding import Embedder, SentenceTransformerEmbedder
from search.errors import SourceError
from search.index import (
    ARTICLE_FACTORY,
    FORMAT_VERSION,
    SQLITE,
    building,
    load_vectors,
    now_iso,
    write_manifest,
)
from search.models import Article
from search.settings import Settings
from search.store import NewArticle, Store

GROUP_ARTICLES = 512  # articles embedded and written per step: bounds memory on large corpora


@dataclass
class BuildReport:
    articles: int = 0
    passages: int = 0
    embedded: int = 0
    duplicate_ids: int = 0
    skipped_empty: int = 0
    sources: list[str] = field(default_factory=list)


def make_chunker(settings: Settings, embedder: Embedder) -> Chunker:
    max_tokens = settings.max_passage_tokens
    limit = getattr(embedder, "max_seq_length", None)
    if limit:
        # Leave room for the headline prefix when title context is on, so nothing gets truncated by the model.
        max_tokens = min(max_tokens, int(limit) - (48 if settings.title_context else 2))
    return Chunker(max_tokens=max_tokens, min_chars=settings.min_passage_chars, count_tokens=embedder.count_tokens)


def embedding_input(article: Article, chunk: Chunk, title_context: bool) -> str:
    """What the model sees for a passage: body passages carry their headline when ``title_context`` is on."""
    if title_context and chunk.field == "body" and article.title:
        return f"{article.title}\n{chunk.text}"
    return chunk.text


def dedupe_articles(articles: Iterable[Article], report: BuildReport) -> list[Article]:
    """A later record with an id already seen replaces the earlier one, as in a document store's upsert."""
    by_id: dict[str, Article] = {}
    for a in articles:
        if a.id in by_id:
            report.duplicate_ids += 1
            del by_id[a.id]  # keep source order of the surviving record
        by_id[a.id] = a
    return list(by_id.values())


def build_index(
    articles: Iterable[Article],
    target: Path,
    settings: Settings,
    embedder: Embedder | None = None,
    *,
    progress: bool | None = None,
    sources: list[str] | None = None,
) -> BuildReport:
    """Build a complete index at ``target`` from ``articles`` and swap it in atomically."""
    embedder = embedder or SentenceTransformerEmbedder(settings.model, settings.threads)
    report = BuildReport(sources=list(sources or []))
    items = dedupe_articles(articles, report)
    if not items:
        raise SourceError("the sources hold no articles (every record was empty or there were no records)")
    chunker = make_chunker(settings, embedder)
    if progress is None:
        progress = sys.stderr.isatty()
    fingerprint = embedder.fingerprint()
    with building(target) as work:
        store = Store(work / SQLITE, create=True)
        try:
            bar = tqdm(total=len(items), unit="article", desc="indexing", disable=not progress, file=sys.stderr)
            for group in _groups(items, GROUP_ARTICLES):
                rows, embedded = new_articles(group, chunker, embedder, settings)
                report.embedded += embedded
                store.add_articles(rows)
                bar.update(len(group))
            bar.close()
            report.articles, report.passages = store.counts()
            manifest: dict[str, Any] = {
                "format_version": FORMAT_VERSION,
                "name": target.name,
                "model": fingerprint,
                "chunking": {
                    "max_tokens": chunker.max_tokens,
                    "min_chars": chunker.min_chars,
                    "title_context": settings.title_context,
                },
                "faiss": {"factory": settings.faiss_factory, "metric": "inner_product", "articles": ARTICLE_FACTORY},
                "counts": {"articles": report.articles, "passages": report.passages},
                "newest_date": store.newest_date(),
                "sources": report.sources,
                "created_at": now_iso(),
                "updated_at": now_iso(),
            }
            load_vectors(work, store, manifest)  # writes vectors.faiss / articles.faiss for this generation
            write_manifest(work, manifest)
        finally:
            store.close()
    return report


def new_articles(
    articles: list[Article], chunker: Chunker, embedder: Embedder, settings: Settings
) -> tuple[list[NewArticle], int]:
    """Chunk and embed articles into rows ready for the store; returns (rows, number of texts embedded)."""
    chunked = [(a, chunker.chunk(a)) for a in articles]
    vectors, embedded = _embed(chunked, embedder, settings)
    rows: list[NewArticle] = []
    i = 0
    for a, chunks in chunked:
        pv = vectors[i : i + len(chunks)]
        i += len(chunks)
        rows.append(
            NewArticle(
                article=a,
                passages=[(c.position, c.field, c.start, c.end, c.text) for c in chunks],
                passage_vectors=pv,
                article_vector=_mean_vector(pv, embedder.dimension),
            )
        )
    return rows, embedded


def _groups(items: list[Article], size: int) -> Iterator[list[Article]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _embed(
    chunked: list[tuple[Article, list[Chunk]]], embedder: Embedder, settings: Settings
) -> tuple[np.ndarray, int]:
    """Vectors for every chunk in order; identical inputs are embedded once. Returns (vectors, number embedded)."""
    inputs = [embedding_input(a, c, settings.title_context) for a, chunks in chunked for c in chunks]
    unique = list(dict.fromkeys(inputs))
    if not unique:
        return np.zeros((0, embedder.dimension), dtype=np.float32), 0
    vecs = embedder.encode(unique, batch_size=settings.batch_size)
    position = {text: i for i, text in enumerate(unique)}
    out: np.ndarray = vecs[[position[t] for t in inputs]]
    return out, len(unique)


def _mean_vector(vectors: np.ndarray, dimension: int) -> np.ndarray:
    if len(vectors) == 0:
        return np.zeros(dimension, dtype=np.float32)
    mean = vectors.mean(axis=0)
    norm = float(np.linalg.norm(mean))
    out: np.ndarray = (mean / norm if norm > 0 else mean).astype(np.float32)
    return out
