"""Re-indexing a corpus into an existing index: only what changed is embedded and written.

``newsdesk index SOURCE --index DIR`` on a directory that already holds a compatible index (same model vectors,
same chunking) compares each source article's content hash with the stored one: new and changed articles are
chunked and embedded (a changed article's paragraphs that kept their text reuse their stored vectors), articles no
longer in the sources are deleted, and unchanged ones are not touched. Deletions and insertions commit in one
SQLite transaction, so a reader or a crash sees the old corpus or the new one.

Anything else (no index yet, another model, other chunking settings, another FAISS factory, or most of the corpus
changed) is a full build into a new directory swapped in atomically, as before.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

from tqdm import tqdm

from indexer.build import (
    GROUP_ARTICLES,
    BuildReport,
    build_index,
    chunking_config,
    dedupe_articles,
    make_chunker,
    new_articles,
)
from indexer.update import apply_changes, reusable_vectors, save_state
from search.embedding import Embedder, make_embedder
from search.errors import IndexMissing, ModelMismatch, NewsdeskError, SourceError
from search.index import Index, open_index
from search.models import Article
from search.settings import Settings
from search.store import NewArticle

# Past this share of changed or deleted articles, a fresh build is cheaper than deleting and re-inserting rows.
FULL_BUILD_SHARE = 0.5


@dataclass
class SyncReport(BuildReport):
    mode: str = "full"  # "full" or "incremental"
    reason: str = ""
    added: int = 0
    changed: int = 0
    deleted: int = 0
    unchanged: int = 0
    # passages written without being embedded: a stored vector was reused, or an identical text embedded once
    reused: int = field(default=0)


def sync_index(
    articles: Iterable[Article],
    settings: Settings,
    embedder: Embedder | None = None,
    *,
    rebuild: bool = False,
    progress: bool | None = None,
    sources: list[str] | None = None,
) -> SyncReport:
    """Bring the index at ``settings.index_dir`` in line with ``articles``: incrementally when it can."""
    embedder = embedder or make_embedder(settings)
    report = SyncReport(sources=list(sources or []))
    items = dedupe_articles(articles, report)
    if not items:
        raise SourceError("the sources hold no articles (every record was empty or there were no records)")
    reason = "--rebuild was given" if rebuild else _incompatibility(settings, embedder)
    if reason is None:
        index = open_index(settings.index_dir, embedder)
        try:
            stored = index.store.article_hashes()
            wanted = {a.id for a in items}
            todo = [a for a in items if stored.get(a.id) != a.content_hash()]
            gone = [i for i in stored if i not in wanted]
            if stored and (len(todo) + len(gone)) / max(len(stored), 1) <= FULL_BUILD_SHARE:
                _apply(index, items, todo, gone, stored, settings, embedder, report, progress)
                if index.manifest["faiss"].get("search", "") != settings.faiss_search:
                    # a search parameter (efSearch, nprobe) is query-time: record it, nothing to rebuild
                    index.passages.set_search_params(settings.faiss_search)
                    index.manifest["faiss"]["search"] = settings.faiss_search
                    save_state(index)
                return report
            reason = f"{len(todo) + len(gone)} of {len(stored)} articles changed"
        finally:
            index.close()
    built = build_index(items, settings.index_dir, settings, embedder, progress=progress, sources=sources)
    report.articles, report.passages, report.embedded = built.articles, built.passages, built.embedded
    report.added, report.mode, report.reason = built.articles, "full", reason or ""
    return report


def _incompatibility(settings: Settings, embedder: Embedder) -> str | None:
    """Why the existing index cannot be updated in place, or None when it can."""
    try:
        index = open_index(settings.index_dir, embedder)
    except IndexMissing:
        return "no index yet"
    except ModelMismatch:
        return "the model changed"
    except NewsdeskError as exc:
        return f"the existing index cannot be opened ({exc})"
    try:
        manifest = index.manifest
        if manifest.get("chunking") != chunking_config(make_chunker(settings, embedder), settings):
            return "chunking settings changed"
        if manifest["faiss"].get("factory") != settings.faiss_factory:
            return "the FAISS factory changed"
        return None
    finally:
        index.close()


def _apply(
    index: Index,
    items: list[Article],
    todo: list[Article],
    gone: list[str],
    stored: dict[str, str],
    settings: Settings,
    embedder: Embedder,
    report: SyncReport,
    progress: bool | None,
) -> None:
    report.mode, report.reason = "incremental", "compatible index found"
    report.added = sum(1 for a in todo if a.id not in stored)
    report.changed = len(todo) - report.added
    report.unchanged = len(items) - len(todo)
    chunker = make_chunker(settings, embedder)
    known = reusable_vectors(index, [a.id for a in todo if a.id in stored], settings)
    rows: list[NewArticle] = []
    if progress is None:
        progress = sys.stderr.isatty()
    bar = tqdm(total=len(todo), unit="article", desc="re-indexing", disable=not progress or not todo, file=sys.stderr)
    for i in range(0, len(todo), GROUP_ARTICLES):
        group_rows, embedded = new_articles(todo[i : i + GROUP_ARTICLES], chunker, embedder, settings, known)
        rows += group_rows
        report.embedded += embedded
        bar.update(len(todo[i : i + GROUP_ARTICLES]))
    bar.close()
    report.reused = sum(len(r.passages) for r in rows) - report.embedded
    report.deleted = len(gone)
    if todo or gone:
        if report.sources:
            index.manifest["sources"] = report.sources
        apply_changes(index, [a.id for a in todo if a.id in stored] + gone, rows)
    report.articles, report.passages = index.store.counts()
