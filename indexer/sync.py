"""Re-indexing a corpus into an existing index: only what changed is embedded and written.

``newsdesk index SOURCE --index DIR`` on a directory that already holds a compatible index (same model vectors,
same chunking) compares each source article's content hash with the stored one: new and changed articles are
chunked and embedded (a changed article's paragraphs that kept their text reuse their stored vectors), articles no
longer in the sources are deleted, and unchanged ones are not touched. Deletions and insertions commit in one
SQLite transaction, so a reader or a crash sees the old corpus or the new one. An article whose text is unchanged
but whose metadata (date, source, url, tags, extra) changed has its row updated in place, without embedding.

Articles written by ``newsdesk add`` or the API are recorded as such (the store's ``origin`` column); when they are
missing from the sources, ``warn`` is told how many before they are deleted, and ``keep_missing`` keeps every
article missing from the sources (in a full build too: their stored text is indexed again). That is of articles
written before the re-index read the index: those written while a full build runs are carried into it whatever the
sources say (indexer/build.py ``_Previous``), since their writers were told they were stored.

Anything else (no index yet, another model, other chunking settings, another FAISS factory, another vector store,
Milvus URI or Milvus index, or most of the corpus changed) is a full build into a new directory swapped in
atomically, as before.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from indexer.build import (
    BuildReport,
    GroupEmbedder,
    IndexProgress,
    Snapshot,
    article_groups,
    build_index,
    chunking_config,
    dedupe_articles,
    lead_vectors_stale,
    local_groups,
    make_chunker,
)
from indexer.update import apply_changes, apply_metadata, reusable_vectors, save_state
from search.errors import IndexMissing, ModelMismatch, NewsdeskError, SourceError
from search.jsontypes import JSONObject
from search.models import Article
from search.settings import Settings
from search.storage.index import SQLITE, Index, check_replaceable, open_index
from search.storage.manifest import read_manifest
from search.storage.store import ORIGINS, NewArticle, Store, metadata_key
from search.text.embedding import (
    Embedder,
    check_compatible,
    files_hash,
    make_embedder,
    quantization_config,
    resolve_model,
)
from search.vectors.factory import vector_change

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
    # vectors written without being embedded (passages, and article vectors: an article's headline + lead): a stored
    # vector was reused, or an identical text embedded once
    reused: int = 0
    metadata: int = 0  # articles whose text is unchanged but whose date, source, url, tags or extra changed
    kept: int = 0  # articles missing from the sources kept by keep_missing
    deleted_added: int = 0  # of the deleted, those written by newsdesk add or the API


class _Model:
    """The embedder, loaded on first use: re-indexing a corpus with nothing new must not pay for loading a model."""

    def __init__(self, settings: Settings, given: Embedder | None) -> None:
        self._settings, self._embedder = settings, given

    def get(self) -> Embedder:
        if self._embedder is None:
            self._embedder = make_embedder(self._settings)
        return self._embedder


def sync_index(
    articles: Iterable[Article],
    settings: Settings,
    embedder: Embedder | None = None,
    *,
    rebuild: bool = False,
    progress: bool | None = None,
    sources: list[str] | None = None,
    embed_groups: GroupEmbedder | None = None,
    keep_missing: bool = False,
    warn: Callable[[str], None] | None = None,
) -> SyncReport:
    """Bring the index at ``settings.index_dir`` in line with ``articles``: incrementally when it can.

    Articles missing from ``articles`` are deleted, unless ``keep_missing``; ``warn`` hears, before anything is
    written, how many of them were written by ``newsdesk add`` or the API. ``embed_groups`` embeds elsewhere
    (``newsdesk index --ray``, indexer/distributed.py), as for ``build_index``."""
    model = _Model(settings, embedder)
    report = SyncReport(sources=list(sources or []))
    items = dedupe_articles(articles, report)
    if not items:
        raise SourceError("the sources hold no articles (every record was empty or there were no records)")
    missing = _missing(settings, {a.id for a in items}, keep_missing)
    if keep_missing:
        report.kept = len(missing.kept)
    else:
        report.deleted_added = missing.added
        if missing.added and warn is not None:
            warn(
                f"{missing.added} of the {missing.count} articles missing from the sources were added by newsdesk add "
                "or the API and will be deleted; run with --keep-missing to keep articles missing from the sources"
            )
    reason = "--rebuild was given" if rebuild else _incompatibility(settings, model)
    if reason is None:
        index = open_index(settings.index_dir, None)  # _incompatibility verified the model
        try:
            stored = index.writable[1].article_hashes()
            wanted = {a.id for a in items}
            todo = [a for a in items if stored.get(a.id) != a.content_hash()]
            gone = [] if keep_missing else [i for i in stored if i not in wanted]
            if stored and (len(todo) + len(gone)) / max(len(stored), 1) <= FULL_BUILD_SHARE:
                _apply(index, items, todo, gone, stored, settings, model, report, progress, embed_groups)
                if _new_search_params(index, settings):
                    save_state(index)
                return report
            reason = f"{len(todo) + len(gone)} of {len(stored)} articles changed"
        finally:
            index.close()
    check_replaceable(settings.index_dir.absolute())  # before the model loads: a foreign directory is refused now
    built = build_index(
        items + missing.kept,
        settings.index_dir,
        settings,
        model.get(),
        progress=progress,
        sources=sources,
        embed_groups=embed_groups,
        origins=missing.origins if keep_missing else None,
        since=missing.snapshot,
    )
    report.articles, report.passages, report.embedded = built.articles, built.passages, built.embedded
    report.added, report.mode, report.reason = built.articles, "full", reason or ""
    report.deleted = 0 if keep_missing else missing.count
    return report


@dataclass(frozen=True)
class _Missing:
    """The stored articles missing from the sources: how many, how many of them came from add or the API, their
    origins, and (for ``keep_missing``) the articles themselves, for a full build to index again."""

    count: int = 0
    added: int = 0
    origins: dict[str, str] = field(default_factory=dict)
    kept: list[Article] = field(default_factory=list)
    # the store's build and generation when it was read: writes after it are carried into a full build
    snapshot: Snapshot | None = None


def _missing(settings: Settings, wanted: set[str], keep: bool) -> _Missing:
    """Read from the existing index's SQLite store alone (no vectors, no model): any index whose store opens."""
    try:
        read_manifest(settings.index_dir)
        store = Store(settings.index_dir.absolute() / SQLITE)
    except NewsdeskError:
        return _Missing()
    try:
        snapshot = Snapshot.of(store)  # first: a write committed while the rest is read is carried again, not lost
        stored = store.article_metadata()
        gone = [i for i in stored if i not in wanted]
        origins = {i: str(stored[i][1]) for i in gone if stored[i][1] in ORIGINS}
        kept = [store.article(aid) for aid in (store.aid_of(i) for i in gone) if aid is not None] if keep else []
        return _Missing(len(gone), len(origins), origins, kept, snapshot)
    except sqlite3.DatabaseError:
        return _Missing()
    finally:
        store.close()


def _incompatibility(settings: Settings, model: _Model) -> str | None:
    """Why the existing index cannot be updated in place, or None when it can.

    When the index records the same model files, backend and chunking settings, that settles it without loading
    the model; otherwise the model is loaded and its probe vectors compared, as any open does."""
    try:
        manifest = read_manifest(settings.index_dir)
    except IndexMissing:
        return "no index yet"
    except NewsdeskError as exc:
        return f"the existing index cannot be opened ({exc})"
    reason = vector_change(manifest, settings)  # another backend, or one configured otherwise
    if reason:
        return reason
    stale = lead_vectors_stale(manifest)  # article vectors of another kind: every one is embedded again
    if stale:
        return stale
    recorded = manifest.get("chunking") or {}
    if _same_model_files(manifest["model"], settings) and "max_passage_tokens" in recorded:
        chosen = (settings.max_passage_tokens, settings.min_passage_chars, settings.title_context)
        if (recorded["max_passage_tokens"], recorded.get("min_chars"), recorded.get("title_context")) != chosen:
            return "chunking settings changed"
        return None
    embedder = model.get()
    try:
        check_compatible(manifest["model"], embedder)
    except ModelMismatch:
        return "the model changed"
    current = chunking_config(make_chunker(settings, embedder), settings, embedder)
    if any(recorded.get(k) != v for k, v in current.items() if k in recorded) or not recorded:
        return "chunking settings changed"
    return None


def _new_search_params(index: Index, settings: Settings) -> bool:
    """Record changed search parameters (efSearch, nprobe, ef): query-time, so nothing is rebuilt."""
    return index.vectors.search_params_changed(index.manifest, settings)


def _same_model_files(recorded: JSONObject, settings: Settings) -> bool:
    """The index's vectors came from these very model files, by this backend (and int8 preset)."""
    if recorded.get("name") != settings.model or recorded.get("backend", "torch") != settings.backend:
        return False
    if settings.backend == "onnx-int8" and recorded.get("quantization") != quantization_config():
        return False
    expected = recorded.get("files_sha256")
    return bool(expected) and expected == files_hash(Path(resolve_model(settings.model)))


def _apply(
    index: Index,
    items: list[Article],
    todo: list[Article],
    gone: list[str],
    stored: dict[str, str],
    settings: Settings,
    model: _Model,
    report: SyncReport,
    progress: bool | None,
    embed_groups: GroupEmbedder | None = None,
) -> None:
    report.mode, report.reason = "incremental", "compatible index found"
    report.added = sum(1 for a in todo if a.id not in stored)
    report.changed = len(todo) - report.added
    report.unchanged = len(items) - len(todo)
    same_text = [a for a in items if a.id in stored and stored[a.id] == a.content_hash()]
    recorded = index.writable[1].article_metadata()
    changed_metadata = [
        a for a in same_text if recorded[a.id][0] != metadata_key(a.date, a.source, a.url, a.tags, a.extra)
    ]
    now_from_sources = {a.id: None for a in same_text if recorded[a.id][1] is not None}
    rows: list[NewArticle] = []
    if todo:  # only then is the model loaded
        embedder = model.get()
        chunker = make_chunker(settings, embedder)
        known = reusable_vectors(index, [a.id for a in todo if a.id in stored], settings, embedder)
        groups = article_groups(todo, settings.batch_articles)
        embed = embed_groups or local_groups(chunker, embedder, settings)
        with IndexProgress(len(todo), "re-indexing", progress, embedder) as bar:
            for group, (group_rows, embedded) in zip(groups, embed(groups, known), strict=True):
                rows += group_rows
                report.embedded += embedded
                bar.articles(len(group))
    report.reused = sum(len(r.passages) + 1 for r in rows) - report.embedded  # passages and article vectors
    report.deleted = len(gone)
    if todo or gone:
        if report.sources:
            index.manifest["sources"] = report.sources
        catch_up_model = model.get() if todo else None  # checked against the model of a build swapped in meanwhile
        apply_changes(index, [a.id for a in todo if a.id in stored] + gone, rows, embedder=catch_up_model)
    report.metadata = apply_metadata(index, changed_metadata)
    report.unchanged -= report.metadata
    if now_from_sources:  # an article added by add or the API that the sources now hold is theirs from now on
        index.writable[1].set_origins(now_from_sources)
    report.articles, report.passages = index.store.counts()
