"""The ``newsdesk`` command line: index, serve, search (single and batch), check.

Heavy imports (torch, FAISS) happen inside commands, so ``newsdesk --help`` is instant. Every ``NewsdeskError``
becomes one line on stderr and exit status 1; usage errors exit 2 as click does.
"""

from __future__ import annotations

import json
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, TextIO, TypedDict, TypeVar

import click

from search.errors import IndexMissing, NewsdeskError, SourceError
from search.jsontypes import JSONObject
from search.models import SearchResponse, to_plain
from search.settings import BACKENDS, MODES, STORES, Settings

if TYPE_CHECKING:
    from search.service import BatchResult

HELP = Settings.help()
F = TypeVar("F", bound=Callable[..., object])  # a command function, which click's decorators return as they got it


class _Run(TypedDict):
    """How ``newsdesk index`` runs a build or a re-index (indexer/sync.py, indexer/distributed.py)."""

    rebuild: bool
    progress: bool | None
    sources: list[str]
    keep_missing: bool
    warn: Callable[[str], None]


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except NewsdeskError as exc:
            click.echo(f"error: {exc.message}", err=True)
            sys.exit(1)
        except sqlite3.DatabaseError as exc:  # e.g. a bad page only a query reached: newsdesk check says more
            click.echo(f"error: SQLite: {exc} (newsdesk check tells whether the index is damaged)", err=True)
            sys.exit(1)
        except OSError as exc:  # the disk or the file system (full, read-only, missing), not a bug: one line
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)


def _optional_text(value: object) -> str | None:
    """A string option as click gives it: the text, or None when not given."""
    return None if value is None else str(value)


def _index_option(f: F) -> F:
    return click.option(
        "--index",
        "index_dir",
        type=click.Path(path_type=Path, file_okay=False),
        default=None,
        help=HELP["index_dir"] + " [env NEWSDESK_INDEX_DIR; default index_data/sample]",
    )(f)


def _model_option(f: F) -> F:
    return click.option("--model", default=None, help=HELP["model"])(f)


def _backend_option(f: F) -> F:
    return click.option("--backend", type=click.Choice(BACKENDS), default=None, help=HELP["backend"])(f)


def _store_options(f: F) -> F:
    """The vector store a build uses (recorded in the manifest; opening an index always uses its own)."""
    f = click.option("--milvus-search", default=None, help=HELP["milvus_search"])(f)
    f = click.option("--milvus-index-params", default=None, help=HELP["milvus_index_params"])(f)
    f = click.option("--milvus-index", default=None, help=HELP["milvus_index"])(f)
    f = click.option("--milvus-uri", default=None, help=HELP["milvus_uri"] + " [env NEWSDESK_MILVUS_URI]")(f)
    store_help = HELP["store"] + " [env NEWSDESK_STORE; default faiss]"
    return click.option("--store", type=click.Choice(STORES), default=None, help=store_help)(f)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """newsdesk: semantic search over news articles."""


@main.command("index")
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path))
@_index_option
@_model_option
@click.option("--batch-size", type=int, default=None, help=HELP["batch_size"])
@click.option("--max-passage-tokens", type=int, default=None, help=HELP["max_passage_tokens"])
@click.option("--min-passage-chars", type=int, default=None, help=HELP["min_passage_chars"])
@click.option("--title-context/--no-title-context", default=None, help=HELP["title_context"])
@click.option("--faiss-factory", default=None, help=HELP["faiss_factory"])
@click.option("--faiss-search", default=None, help=HELP["faiss_search"])
@_store_options
@_backend_option
@click.option("--threads", type=int, default=None, help=HELP["threads"])
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")
@click.option("--rebuild", is_flag=True, help="Build from scratch even if the index could be updated in place.")
@click.option(
    "--keep-missing",
    is_flag=True,
    help="Keep articles that are in the index but not in SOURCES (by default they are deleted, with a warning for "
    "those written by newsdesk add or the API).",
)
@click.option(
    "--skip-bad-records",
    is_flag=True,
    help="Leave out records that cannot be read (bad JSON, bad bytes, a missing field), listing them in the summary; "
    "by default the first one stops the run before anything is written.",
)
@click.option("--ray", default=None, metavar="local|ADDRESS", help=HELP["ray"] + " [env NEWSDESK_RAY]")
@click.option("--ray-actors", type=int, default=None, help=HELP["ray_actors"])
@click.option("--batch-articles", type=int, default=None, help=HELP["batch_articles"])
@click.option("--id-field", default=None, help="Source field holding the article id.")
@click.option("--title-field", default=None, help="Source field holding the headline.")
@click.option("--paragraphs-field", default=None, help="Source field holding a list of paragraphs.")
@click.option("--text-field", default=None, help="Source field holding the body text (split into paragraphs).")
@click.option("--date-field", default=None, help="Source field holding the publication date.")
@click.option("--source-field", default=None, help="Source field holding the outlet name.")
@click.option("--url-field", default=None, help="Source field holding the article URL.")
@click.option("--tags-field", default=None, help="Source field holding tags or a category.")
def index_cmd(
    sources: tuple[Path, ...], quiet: bool, rebuild: bool, keep_missing: bool, skip_bad_records: bool, **opts: object
) -> None:
    """Build or update an index from SOURCES (.jsonl, .jsonl.gz, .csv, RSS/Atom feeds, HTML pages, .warc/.warc.gz
    crawls, or directories of .txt/.md/.html files).

    On an existing compatible index only new and changed articles are embedded, articles whose metadata alone
    changed are updated in place, and articles missing from SOURCES are deleted (--keep-missing keeps them);
    otherwise (or with --rebuild) a new index is built and swapped in when complete."""
    from indexer.sources import FieldMap, ReadReport, read_sources
    from indexer.sync import SyncReport, sync_index
    from indexer.web import Fetcher

    fields = {k[: -len("_field")]: _optional_text(opts.pop(k)) for k in list(opts) if k.endswith("_field")}
    settings = Settings.from_env(None, **opts)
    for s in sources:
        if not s.exists():
            raise SourceError(f"{s}: no such file or directory")
    read = ReadReport()
    articles = read_sources(
        list(sources), FieldMap(**fields), report=read, skip_bad=skip_bad_records, fetcher=Fetcher.of(settings)
    )
    progress = None if not quiet else False
    report: SyncReport
    ray_summary = ""
    run: _Run = {
        "rebuild": rebuild,
        "progress": progress,
        "sources": [str(s) for s in sources],
        "keep_missing": keep_missing,
        "warn": lambda message: click.echo(f"warning: {message}", err=True),
    }
    if settings.ray:  # chunk and embed on Ray actors (indexer/distributed.py); the index is written here as below
        from indexer.distributed import ray_sync_index

        ray_report = ray_sync_index(articles, settings, **run)
        report, ray_summary = ray_report, ray_report.summary()
    else:
        report = sync_index(articles, settings, **run)
    if quiet:
        return
    kept = f", {report.kept} missing from the sources kept" if report.kept else ""
    if report.mode == "incremental":
        click.echo(
            f"updated {settings.index_dir}: {report.added} added, {report.changed} changed, {report.metadata} "
            f"metadata updated, {report.deleted} deleted{_added_note(report.deleted_added)}, {report.unchanged} "
            f"unchanged{kept}; {report.embedded} texts embedded, {report.reused} reused; now {report.articles} "
            f"articles, {report.passages} passages",
            err=True,
        )
    else:
        deleted = f", {report.deleted} deleted{_added_note(report.deleted_added)}" if report.deleted else ""
        click.echo(
            f"indexed {report.articles} articles, {report.passages} passages "
            f"({report.embedded} embedded, {report.duplicate_ids} duplicate ids replaced{deleted}{kept}) into "
            f"{settings.index_dir} [full build: {report.reason}]",
            err=True,
        )
    for line in read.lines():
        click.echo(line, err=True)
    if ray_summary:
        click.echo(ray_summary, err=True)


def _added_note(n: int) -> str:
    return f" ({n} of them written by newsdesk add or the API)" if n else ""


@main.command()
@_index_option
@_model_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", type=int, default=8000, show_default=True, help="Port to listen on.")
@click.option(
    "--workers",
    type=int,
    default=None,
    help="Request threads per server process [default: 1 with several processes, 4 with one].",
)
@click.option(
    "--processes",
    type=int,
    default=None,
    help="Server processes: 1 runs waitress; more run gunicorn workers, each loading the model and index itself "
    "[default: one per usable core and one more; one on a single core or an index only one process may open].",
)
@click.option("--threads", type=int, default=None, help=HELP["threads"])
@click.option(
    "--milvus-uri", default=None, help="With --collections: the Milvus serving the index [env NEWSDESK_MILVUS_URI]."
)
@click.option("--collections", default=None, help=HELP["collections"] + " [env NEWSDESK_COLLECTIONS]")
@click.option("--replica-poll", type=float, default=None, help=HELP["replica_poll"])
@click.option("--read-only", is_flag=True, default=None, help=HELP["read_only"] + " [env NEWSDESK_READ_ONLY]")
@_backend_option
def serve(host: str, port: int, workers: int | None, processes: int | None, **opts: object) -> None:
    """Serve the API and the web page with a production WSGI server (waitress, or gunicorn for several processes).

    Without --processes and --workers it picks the configuration that served the most searches per core for the
    cores it may run on, and says what it picked and why in one line at start-up.

    With --collections, serve as a stateless replica of an index on Milvus: no index directory is read, any number
    of replicas serve one corpus, and each reloads when the indexer publishes a write."""
    from api.app import create_app
    from api.server import ServerLimits, plan_server, usable_cores
    from api.server import serve as run_server
    from search.storage.manifest import read_manifest
    from search.vectors.factory import backend_of
    from search.vectors.replicas import replica_problem

    if (workers is not None and workers < 1) or (processes is not None and processes < 1):
        raise click.UsageError("--workers and --processes must be at least 1")
    settings = Settings.from_env(None, **opts)
    # writes possible: several processes get one more that writes, niced (api/writes.py)
    writable = bool(settings.api_key) and not settings.read_only and not settings.collections
    plan = plan_server(usable_cores(), processes, workers, writes=writable)
    if settings.collections:
        served = f"{settings.collections} on {settings.milvus_uri}"
        problem = replica_problem(settings, plan.processes)
    else:
        manifest = read_manifest(settings.index_dir)  # a missing or unfinished index fails here, once
        served = str(settings.index_dir)
        problem = backend_of(manifest).serving_problem(manifest, plan.processes)  # e.g. Milvus Lite: one process
        problem = problem and f"{settings.index_dir} {problem}"
    if problem and processes is None:  # the default picked several processes: this index allows one
        plan = plan_server(usable_cores(), None, workers, single=problem, writes=writable)
    elif problem:
        raise click.UsageError(problem)
    write_nice = settings.write_nice if plan.processes > 1 and writable else None
    apart = "" if write_nice is None else f" (writes in a process of their own at nice {write_nice})"
    click.echo(f"serving {served} on http://{host}:{port}/{apart} with {plan.describe()}", err=True)
    limits = ServerLimits.of(settings)
    run_server(
        lambda: create_app(settings),
        host,
        port,
        threads=plan.threads,
        processes=plan.processes,
        limits=limits,
        write_nice=write_nice,
    )


@main.command()
@click.argument("text", required=False)
@_index_option
@_model_option
@click.option("--k", type=int, default=10, show_default=True, help="Results per query.")
@click.option("--offset", type=int, default=0, show_default=True, help="Results to skip (paging).")
@click.option("--json", "as_json", is_flag=True, help="Print the full JSON response.")
@click.option(
    "--queries", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Batch mode: JSONL of queries."
)
@click.option("--run", "run_path", type=click.Path(path_type=Path, dir_okay=False), default=None, help="TREC run out.")
@click.option("--passages", "passages_path", type=click.Path(path_type=Path, dir_okay=False), default=None)
@click.option("--tag", default="newsdesk", show_default=True, help="Run tag in the TREC file.")
@click.option("--mode", type=click.Choice(MODES), default=None, help=HELP["mode"])
@click.option("--from", "date_from", default=None, metavar="YYYY-MM-DD", help="Only articles dated on or after this.")
@click.option("--to", "date_to", default=None, metavar="YYYY-MM-DD", help="Only articles dated on or before this.")
@click.option("--source", "sources", multiple=True, help="Only articles from this source (repeat: any of them).")
@click.option(
    "--category", "categories", multiple=True, help="Only articles with this category or tag (repeat: any of them)."
)
@click.option("--max-per-source", type=int, default=None, help="At most this many results of one source on a page.")
@click.option("--facets", is_flag=True, help="Also count the matching articles by source, category and month.")
@click.option(
    "--recency",
    default=None,
    metavar="HALF_LIFE",
    help="Favour newer articles: decay scores by age (7d, 12h), as the API.",
)
@click.option("--as-of", "as_of", default=None, metavar="YYYY-MM-DD", help="The day --recency counts ages from.")
@click.option("--threads", type=int, default=None, help=HELP["threads"])
@_backend_option
def search(
    text: str | None,
    k: int,
    offset: int,
    as_json: bool,
    queries: Path | None,
    run_path: Path | None,
    passages_path: Path | None,
    tag: str,
    mode: str | None,
    date_from: str | None,
    date_to: str | None,
    sources: tuple[str, ...],
    categories: tuple[str, ...],
    max_per_source: int | None,
    facets: bool,
    recency: str | None,
    as_of: str | None,
    **opts: object,
) -> None:
    """Search the index for TEXT, or run every query of --queries (batch mode, writes --run and --passages).

    The filters (--from, --to, --source, --category), --facets and --max-per-source are the API's. Every argument,
    the index and the query are checked before the model loads, so a mistake is reported at once."""
    from search.checks import check_k, check_mode, check_offset, check_query

    if (text is None) == (queries is None):
        raise click.UsageError("give either a query TEXT or --queries FILE")
    single_only = date_from or date_to or sources or categories or facets or offset or max_per_source is not None
    if queries is not None and (single_only or recency or as_of):
        raise click.UsageError(
            "--from, --to, --source, --category, --facets, --offset, --max-per-source, --recency and --as-of apply to "
            "a single query"
        )
    if as_of is not None and recency is None:
        raise click.UsageError("--as-of applies with --recency")
    if queries is not None and run_path is None and passages_path is None:
        raise click.UsageError("batch mode needs --run OUT.trec and/or --passages OUT.jsonl")
    if not tag or any(c.isspace() for c in tag):
        raise click.UsageError("--tag must be one word without whitespace")
    settings = Settings.from_env(None, **opts)
    check_mode(settings, mode)
    batch = _read_queries(queries) if queries is not None else None
    if batch is not None:
        if not 1 <= k <= settings.max_batch_k:
            raise click.UsageError(f"--k must be between 1 and {settings.max_batch_k} for batch runs, got {k}")
        for qid, query in batch:
            try:
                check_query(settings, query)
            except NewsdeskError as exc:
                raise SourceError(f"{queries}: query {qid!r}: {exc.message}") from None
    else:
        assert text is not None
        check_query(settings, text)
        check_k(settings, k)
        check_offset(offset)
    if not settings.collections and not settings.index_dir.exists():  # before numpy and FAISS are even imported
        raise IndexMissing(f"no index at {settings.index_dir} (build one with: newsdesk index SOURCE --index DIR)")
    from search.ranking.catalog import Filter
    from search.ranking.recency import Recency

    filters = Filter.parse(date_from, date_to, sources, categories)
    decay = Recency.of(recency, as_of) if recency is not None else None
    _check_index(settings)
    from search.loading import load_service

    service = load_service(settings)
    if batch is not None:
        results = service.batch_search([t for _, t in batch], k, mode)
        for line in _write_batch(batch, results, run_path, passages_path, tag):
            click.echo(line, err=True)
        return
    assert text is not None
    response = service.search(
        text,
        k=k,
        offset=offset,
        mode=mode,
        filters=filters,
        max_per_source=max_per_source,
        facets=facets,
        recency=decay,
    )
    if as_json:
        click.echo(json.dumps(to_plain(response), ensure_ascii=False, indent=2))
        return
    for rank, r in enumerate(response.results, offset + 1):
        click.echo(f"{rank:>3}. [{r.score:.3f}] {r.article.title or r.article.id}  ({r.article.id})")
        if r.passages:
            p = r.passages[0]
            click.echo(f"     {p.text[p.highlight.start : p.highlight.end]}")
    for name, counts in (response.facets or {}).items():
        click.echo(f"{name}: " + (", ".join(f"{c.value} ({c.count})" for c in counts) or "none"))
    _print_count(response, offset)


def _print_count(response: SearchResponse, offset: int) -> None:
    """How many articles match, and why a filter matched none, on stderr: stdout keeps only the ranked lines."""
    shown = len(response.results)
    if not response.total:
        click.echo(f"no articles match {response.query!r}", err=True)
    elif shown:
        click.echo(f"articles {offset + 1}-{offset + shown} of {response.total} that match", err=True)
    else:
        click.echo(f"no more articles: {response.total} match", err=True)
    for note in response.notes:
        click.echo(f"note: {note}", err=True)


def _check_index(settings: Settings) -> None:
    """A missing or unfinished index fails here, before the model loads (a replica has no directory to check)."""
    if not settings.collections:
        from search.storage.manifest import read_manifest

        read_manifest(settings.index_dir)


def _read_queries(path: Path) -> list[tuple[str, str]]:
    return [(qid, text) for qid, text, _ in read_query_file(path)]


def read_query_file(path: Path) -> list[tuple[str, str, list[str] | None]]:
    """(id, text, answers) rows: ``_id``/``id``/``question_id`` with ``text``/``question``, and optionally
    ``answers``/``answer_text`` (RealTime QA's format) for answer-recall evaluation."""
    from indexer.sources import read_jsonl_objects

    out: list[tuple[str, str, list[str] | None]] = []
    for n, row in read_jsonl_objects(path):
        qid = next((row[key] for key in ("_id", "id", "question_id") if key in row), None)
        text = row.get("text", row.get("question"))
        if qid is None or not isinstance(text, str):
            raise SourceError(f"{path}:{n}: a query row needs '_id' or 'id' and 'text'")
        answers = row.get("answers", row.get("answer_text"))
        if answers is not None and not (isinstance(answers, list) and all(isinstance(a, str) for a in answers)):
            raise SourceError(f"{path}:{n}: 'answers' must be a list of strings")
        out.append((str(qid), text, answers))
    if not out:
        raise SourceError(f"{path}: no queries")
    return out


def trec_id(value: str) -> str:
    """An id as one TREC field: whitespace and ``%`` percent-encoded, every other character kept.

    TREC runs are whitespace-separated, so ``/leading slash & id`` must not reach one raw; ids without whitespace or
    ``%`` (BEIR's, ``business/001``, URLs) come out unchanged, and ``urllib.parse.unquote`` reverses it.
    """
    return "".join(
        "".join(f"%{b:02X}" for b in ch.encode("utf-8")) if ch.isspace() or ch == "%" else ch for ch in value
    )


def _write_batch(
    batch: list[tuple[str, str]], results: list[BatchResult], run: Path | None, passages: Path | None, tag: str
) -> list[str]:
    """Write the TREC run and the passage file; returns a line saying what each file got."""
    wrote: list[str] = []
    if run is not None:
        lines = 0
        with _atomic_text(run) as fh:
            for (qid, _), res in zip(batch, results, strict=True):
                for rank, (doc, score) in enumerate(res.articles, 1):
                    fh.write(f"{trec_id(qid)} Q0 {trec_id(doc)} {rank} {score:.6f} {tag}\n")
                    lines += 1
        wrote.append(f"wrote {run}: TREC run of {len(batch)} queries, {lines} ranked articles (tag {tag})")
    if passages is not None:
        with _atomic_text(passages) as fh:
            for (qid, text), res in zip(batch, results, strict=True):
                row = {
                    "query_id": qid,
                    "query": text,
                    "passages": [
                        {
                            "article_id": p.article_id,
                            "passage_id": p.passage_id,
                            "text": p.text,
                            "score": p.score,
                            "scores": to_plain(p.scores),
                        }
                        for p in res.passages
                    ],
                }
                fh.write(json.dumps(row, ensure_ascii=False) + "\n")
        count = sum(len(res.passages) for res in results)
        wrote.append(f"wrote {passages}: {len(batch)} queries, {count} ranked passages (JSON Lines)")
    return wrote


class _atomic_text:
    """Write to a temporary file beside ``path`` and rename on success: a failed run leaves no half file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.tmp = path.with_name(f".{path.name}.tmp")

    def __enter__(self) -> TextIO:
        self.fh = self.tmp.open("w", encoding="utf-8")
        return self.fh

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.fh.close()
        if exc_type is None:
            self.tmp.replace(self.path)
        else:
            self.tmp.unlink(missing_ok=True)


@main.command("eval")
@_index_option
@_model_option
@click.option("--queries", type=click.Path(path_type=Path, dir_okay=False), required=True, help="JSONL of queries.")
@click.option("--qrels", type=click.Path(path_type=Path, dir_okay=False), default=None, help="Judgments (BEIR/TREC).")
@click.option("--mode", "modes", type=click.Choice(MODES), multiple=True, help="Modes to compare [default: all].")
@click.option("--answer-k", default="1,5,10,20", show_default=True, help="Cut-offs for answer recall.")
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.option("--threads", type=int, default=None, help=HELP["threads"])
@_backend_option
def eval_cmd(
    queries: Path, qrels: Path | None, modes: tuple[str, ...], answer_k: str, as_json: bool, **opts: object
) -> None:
    """Evaluate ranking: nDCG@10, recall@100 and MRR@10 against --qrels, and answer recall@k for queries that
    carry answer strings (RealTime QA format), for each mode."""
    from search.loading import load_service
    from search.ranking.evaluation import answer_recall, evaluate_run, read_qrels

    rows = read_query_file(queries)
    judged = read_qrels(qrels) if qrels is not None else None
    with_answers = [r for r in rows if r[2]]
    if judged is None and not with_answers:
        raise click.UsageError("give --qrels, or queries that carry 'answers' / 'answer_text'")
    try:
        cutoffs = sorted({int(x) for x in answer_k.split(",") if x.strip()})
    except ValueError:
        raise click.UsageError("--answer-k takes comma-separated integers, e.g. 1,5,10") from None
    if not cutoffs or cutoffs[0] < 1:
        raise click.UsageError("--answer-k takes positive integers")
    settings = Settings.from_env(None, **opts)
    _check_index(settings)
    service = load_service(settings)
    report: dict[str, dict[str, float]] = {}
    for mode in modes or MODES:
        figures: dict[str, float] = {}
        if judged is not None:
            ranked = [q for q in rows if q[0] in judged]
            results = service.batch_search([t for _, t, _ in ranked], 100, mode, passages=False)
            run = {qid: [doc for doc, _ in r.articles] for (qid, _, _), r in zip(ranked, results, strict=True)}
            figures.update(evaluate_run(run, judged))
        if with_answers:
            results = service.batch_search([t for _, t, _ in with_answers], cutoffs[-1], mode, articles=False)
            texts = [[p.text for p in r.passages] for r in results]
            answers = [a or [] for _, _, a in with_answers]
            figures.update({f"answer_recall@{k}": answer_recall(texts, answers, k) for k in cutoffs})
            figures["questions"] = len(with_answers)
        report[mode] = figures
    if as_json:
        click.echo(json.dumps(report, indent=2))
        return
    names = [n for n in next(iter(report.values())) if n not in ("queries", "questions")]
    click.echo("mode     " + "".join(f"{n:>18}" for n in names))
    for mode, figures in report.items():
        click.echo(f"{mode:<9}" + "".join(f"{figures[n]:>18.4f}" for n in names))


@main.command()
@_index_option
def check(index_dir: Path | None) -> None:
    """Check that manifest, SQLite and vectors agree. Exit 0 if sound, 1 with the problems listed."""
    from search.storage.index import check_index

    settings = Settings.from_env(index_dir=index_dir)
    problems = check_index(settings.index_dir)
    quality = {} if problems else _vector_quality(settings.index_dir)
    recall = quality.get("recall")
    if isinstance(recall, dict) and recall["at10"] < quality["recall_floor"]:
        problems.append(f"ANN recall@10 {recall['at10']:.3f} is below {quality['recall_floor']} ({quality['factory']})")
    if problems:
        for p in problems:
            click.echo(f"problem: {p}", err=True)
        sys.exit(1)
    if isinstance(recall, dict):
        click.echo(
            f"vectors: {quality['factory']} ({quality['search'] or 'defaults'}), recall@10 {recall['at10']:.3f} "
            f"against exact search on {recall['sample']} sampled stored vectors"
        )
    click.echo(f"{settings.index_dir}: ok")


def _vector_quality(directory: Path) -> JSONObject:
    """What the index's vector backend measures for ``check`` (an ANN base's recall against exact search)."""
    from search.storage.index import open_store
    from search.storage.manifest import read_manifest
    from search.vectors.factory import backend_of

    manifest = read_manifest(directory)
    store = open_store(directory)
    try:
        return backend_of(manifest).quality(directory, store, manifest)
    finally:
        store.close()


@main.command()
@click.argument("sources", nargs=-1, required=True, type=click.Path(path_type=Path))
@_index_option
@_model_option
@_backend_option
def add(sources: tuple[Path, ...], **opts: object) -> None:
    """Insert or replace (by id) the articles of SOURCES in an existing index, in one transaction.

    A server on the same index sees them on its next request (it reloads when the store's generation moves)."""
    from indexer.sources import ReadReport, read_sources
    from indexer.update import add_articles
    from indexer.web import Fetcher
    from search.storage.index import open_index
    from search.text.embedding import make_embedder

    settings = Settings.from_env(None, **opts)
    read = ReadReport()
    # every record read and checked before anything is written
    articles = list(read_sources(list(sources), report=read, fetcher=Fetcher.of(settings)))
    for line in read.lines():
        click.echo(line, err=True)
    if not articles:
        raise SourceError("the sources hold no articles")
    _check_index(settings)  # a missing index fails before the model loads
    embedder = make_embedder(settings)
    written = add_articles(open_index(settings.index_dir, embedder), articles, embedder, settings)
    click.echo(f"added or replaced {written} articles in {settings.index_dir}", err=True)


@main.command()
@click.argument("ids", nargs=-1, required=True)
@_index_option
def delete(ids: tuple[str, ...], index_dir: Path | None) -> None:
    """Delete articles by id, in one transaction; an unknown id is an error and nothing is deleted."""
    from indexer.update import delete_articles
    from search.errors import NotFound
    from search.storage.index import open_index

    settings = Settings.from_env(index_dir=index_dir)
    index = open_index(settings.index_dir, None)
    missing = [i for i in ids if index.store.aid_of(i) is None]
    if missing:
        raise NotFound(f"no article with id {missing[0]!r} in {settings.index_dir}")
    deleted = delete_articles(index, list(ids))
    click.echo(f"deleted {deleted} articles from {settings.index_dir}", err=True)


@main.command()
@_index_option
def optimize(index_dir: Path | None) -> None:
    """Merge the vector segments that writes appended into new base files now, rather than when the merge policy
    next asks (search/vectors/segments.py); the index serves and takes writes throughout."""
    from indexer.update import optimize as merge_segments
    from search.storage.index import open_index

    settings = Settings.from_env(index_dir=index_dir)
    _check_index(settings)
    started = time.monotonic()
    index = open_index(settings.index_dir, None)
    try:
        merged = merge_segments(index)
    finally:
        index.close()
    took = time.monotonic() - started
    if merged:
        click.echo(f"merged {merged} segment files into the base files of {settings.index_dir} in {took:.1f} s")
    else:
        click.echo(f"{settings.index_dir}: no segments to merge")


@main.command()
@click.argument("sources", nargs=-1, required=True)
@_index_option
@_model_option
@_backend_option
@click.option("--every", default="5m", show_default=True, help="Time between polls: seconds, or 30s, 5m, 2h.")
@click.option("--once", is_flag=True, help="Poll once and exit (a cron job, a test).")
@click.option("--fetch-timeout", type=float, default=None, help=HELP["fetch_timeout"])
@click.option("--watch-concurrency", type=int, default=None, help=HELP["watch_concurrency"])
@click.option("--user-agent", default=None, help=HELP["user_agent"])
@click.option("--threads", type=int, default=None, help=HELP["threads"])
def watch(sources: tuple[str, ...], every: str, once: bool, **opts: object) -> None:
    """Poll SOURCES (feed or page URLs, feed files, .warc crawls, directories of pages) and ingest new and changed
    items into the index through the API's write path. What was seen (ETag, Last-Modified, item guids and content
    fingerprints) is kept in the index with each write, so a restart ingests nothing twice. One line per poll on
    stderr; per-source detail in the log; counts in /metrics of any server on the index."""
    import logging

    from indexer.watch import PollSummary, Watcher, parse_every
    from indexer.web import Fetcher
    from search.loading import load_service

    interval = parse_every(every)
    settings = Settings.from_env(None, **opts)
    for s in sources:
        if not s.startswith(("http://", "https://")) and not Path(s).exists():
            raise SourceError(f"{s}: no such file or directory (give a URL, a file or a directory)")
    _check_index(settings)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sources = tuple(s if s.startswith(("http://", "https://")) else str(Path(s).absolute()) for s in sources)
    watcher = Watcher(load_service(settings), list(sources), Fetcher.of(settings), settings.watch_concurrency)

    def report(summary: PollSummary) -> None:
        click.echo(summary.line(), err=True)

    if once:
        report(watcher.poll())
        return
    click.echo(f"watching {len(sources)} source(s) every {every} into {settings.index_dir}", err=True)
    try:
        watcher.run(interval, lambda: False, report)
    except KeyboardInterrupt:
        click.echo("stopped", err=True)


@main.command()
@click.argument("out", type=click.Path(path_type=Path))
@_index_option
@click.option(
    "--caches/--no-caches",
    default=False,
    show_default=True,
    help="Also copy the derived caches (vectors, BM25 postings, profiles), so a restore need not rebuild them.",
)
def backup(out: Path, index_dir: Path | None, caches: bool) -> None:
    """Back up the index to the new directory OUT while it serves and takes writes: SQLite's online backup of the
    store (every write acknowledged before the backup began is in it), the manifest, and with --caches the caches."""
    from indexer.backup import backup as take_backup

    settings = Settings.from_env(index_dir=index_dir)
    _check_index(settings)
    info = take_backup(settings.index_dir, out, caches=caches)
    click.echo(info.line(out), err=True)


@main.command()
@click.argument("backup_dir", metavar="BACKUP", type=click.Path(path_type=Path, file_okay=False))
@_index_option
def restore(backup_dir: Path, index_dir: Path | None) -> None:
    """Restore the backup BACKUP (made by newsdesk backup) as the index at --index: a new directory, or an index,
    which is replaced atomically once the restored one is complete; caches are rebuilt from SQLite."""
    from indexer.backup import restore as restore_backup

    settings = Settings.from_env(index_dir=index_dir)
    if not backup_dir.is_dir():
        raise SourceError(f"{backup_dir}: no such backup directory")
    generation, n_articles, n_passages = restore_backup(backup_dir, settings.index_dir)
    click.echo(
        f"restored {settings.index_dir} from {backup_dir}: generation {generation}, {n_articles} articles, "
        f"{n_passages} passages",
        err=True,
    )


def index_stats(directory: Path) -> JSONObject:
    """What an index holds, read from its manifest and SQLite store: no model is loaded and no vector is read, so
    it answers in milliseconds for an index of any size."""
    from search.storage.index import open_store
    from search.storage.manifest import read_manifest
    from search.vectors.factory import backend_of

    directory = directory.absolute()
    manifest = read_manifest(directory)
    store = open_store(directory)
    try:
        n_articles, n_passages = store.counts()
        newest, generation = store.newest_date(), store.generation()
    finally:
        store.close()
    real = directory.resolve()
    files = [p for p in real.rglob("*") if p.is_file()]
    model, faiss = manifest["model"], manifest["faiss"]
    return {
        "index": str(manifest.get("name") or directory.name),
        "path": str(real),
        "model": model.get("name"),
        "dimension": model.get("dimension"),
        "backend": model.get("backend", "torch"),
        "quantization": model.get("quantization"),
        "articles": n_articles,
        "passages": n_passages,
        "newest_date": newest,
        "faiss": {
            "factory": faiss.get("factory"),  # under auto, what the bases hold now
            "search": faiss.get("auto", {}).get("passages_search") or faiss.get("search") or None,
            "metric": faiss.get("metric"),
            "articles": faiss.get("articles"),
            "auto": dict(faiss["auto"]) if "auto" in faiss else None,
            "recall": dict(faiss["recall"]) if "recall" in faiss else None,  # an ANN base's, when it was written
        },
        "store": backend_of(manifest).describe(manifest),
        "generation": generation,
        "created_at": manifest.get("created_at"),
        "updated_at": manifest.get("updated_at"),
        "size_bytes": sum(p.stat().st_size for p in files),
        "files": len(files),
    }


def _vectors_row(info: JSONObject) -> tuple[str, str]:
    """Where the vectors live, as the index's backend words it (the FAISS factory, or Milvus's URI, index and
    collections)."""
    from search.vectors.factory import backend

    name = str(info["store"]["backend"])
    return name, backend(name).summary(info)


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def memory_stats(settings: Settings) -> dict[str, int]:
    """Resident memory by component of the index opened as a server opens it (read-only here: nothing is written)
    with the model the settings load: what ``stats --memory`` reports (search/memory.py)."""
    from search.memory import memory_report
    from search.storage.index import open_index
    from search.text.embedding import make_embedder

    index = open_index(settings.index_dir, None, read_only=True)
    try:
        return memory_report(index.memory(), make_embedder(settings))
    finally:
        index.close()


def _memory_row(memory: dict[str, int]) -> tuple[str, str]:
    """The one ``memory`` line: RSS, then each component that holds anything, largest first, then other."""
    parts = sorted(((v, k) for k, v in memory.items() if k not in ("rss", "other") and v), reverse=True)
    shown = ", ".join(f"{k} {_size(v)}" for v, k in parts)
    return "memory", f"{_size(memory['rss'])} resident: {shown}, other {_size(memory['other'])}"


@main.command()
@_index_option
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.option(
    "--memory",
    is_flag=True,
    help="Also open the index and load the model as a server does, and report resident memory by component "
    "(seconds, and the index's size in RAM; without it stats reads the manifest and SQLite alone).",
)
def stats(index_dir: Path | None, as_json: bool, memory: bool) -> None:
    """Show what an index holds: name, model and backend, counts, newest article, vector store, size on disk, and
    with --memory the resident memory by component."""
    settings = Settings.from_env(index_dir=index_dir)
    info = index_stats(settings.index_dir)
    if memory:
        info["memory"] = memory_stats(settings)
    if as_json:
        click.echo(json.dumps(info, indent=2, ensure_ascii=False))
        return
    quantization = f", {info['quantization']}" if info["quantization"] else ""
    rows = [
        ("index", f"{info['index']}  ({info['path']})"),
        ("model", f"{info['model']}  ({info['dimension']} dimensions, backend {info['backend']}{quantization})"),
        ("articles", f"{info['articles']:,}"),
        ("passages", f"{info['passages']:,}"),
        ("newest", info["newest_date"] or "no dates"),
        _vectors_row(info),
        ("updated", f"{info['updated_at']}  (generation {info['generation']})"),
        ("on disk", f"{_size(info['size_bytes'])} in {info['files']} files"),
    ]
    if memory:
        rows.append(_memory_row(info["memory"]))
    for name, value in rows:
        click.echo(f"{name:<9} {value}")


if __name__ == "__main__":
    main()


@main.group(cls=_Group)
def alerts() -> None:
    """Saved searches: every later write's new articles that match one are recorded (and posted to its webhook)."""


@alerts.command("add")
@click.argument("query")
@_index_option
@_model_option
@_backend_option
@click.option("--mode", type=click.Choice(MODES), default=None, help=HELP["mode"])
@click.option("--from", "date_from", default=None, metavar="YYYY-MM-DD", help="Only articles dated on or after this.")
@click.option("--to", "date_to", default=None, metavar="YYYY-MM-DD", help="Only articles dated on or before this.")
@click.option("--source", "sources", multiple=True, help="Only articles from this source (repeat: any of them).")
@click.option("--category", "categories", multiple=True, help="Only articles with this category (repeat: any).")
@click.option("--threshold", type=float, default=None, help="Score a new article must reach (default: by mode).")
@click.option("--top-per-day", type=int, default=None, help="Instead of a threshold: at most N new articles a day.")
@click.option("--webhook", default=None, help="http(s) URL each new match is POSTed to (by a running server).")
def alerts_add(
    query: str,
    mode: str | None,
    date_from: str | None,
    date_to: str | None,
    sources: tuple[str, ...],
    categories: tuple[str, ...],
    threshold: float | None,
    top_per_day: int | None,
    webhook: str | None,
    **opts: object,
) -> None:
    """Save QUERY as a search that new articles are matched against; prints the saved search as JSON."""
    from search.alerts.service import AlertService
    from search.loading import load_service

    settings = Settings.from_env(None, **opts)
    _check_index(settings)
    alert = AlertService(load_service(settings)).create(
        query,
        mode,
        date_from=date_from,
        date_to=date_to,
        sources=sources,
        categories=categories,
        threshold=threshold,
        top_per_day=top_per_day,
        webhook=webhook,
    )
    click.echo(json.dumps(to_plain(alert), ensure_ascii=False))


@alerts.command("list")
@_index_option
@click.option("--json", "as_json", is_flag=True, help="Print the saved searches as JSON.")
def alerts_list(index_dir: Path | None, as_json: bool) -> None:
    """List the saved searches of the index, with how many matches each recorded."""
    from search.alerts.saved import alert_of, entry_counts, saved_searches
    from search.storage.index import open_index

    settings = Settings.from_env(index_dir=index_dir)
    _check_index(settings)
    index = open_index(settings.index_dir, None)
    try:
        conn = index.sqlite.connection()
        counts = entry_counts(conn)
        found = [alert_of(a, counts.get(a.id, 0)) for a in saved_searches(conn)]
    finally:
        index.close()
    if as_json:
        click.echo(json.dumps(to_plain({"alerts": found}), ensure_ascii=False))
        return
    for a in found:
        how = f"top {a.top_per_day}/day" if a.top_per_day is not None else f"threshold {a.threshold:g}"
        hook = f" -> {a.webhook}" if a.webhook else ""
        click.echo(f"{a.id}\t{a.mode}\t{how}\t{a.entries} matches\t{a.query}{hook}")
    if not found:
        click.echo(f"{settings.index_dir}: no saved searches", err=True)


@alerts.command("rm")
@click.argument("alert_id", type=int)
@_index_option
def alerts_rm(alert_id: int, index_dir: Path | None) -> None:
    """Delete a saved search and its matches; an unknown id is an error."""
    from search.alerts.saved import delete_alert
    from search.storage.index import open_index

    settings = Settings.from_env(index_dir=index_dir)
    _check_index(settings)
    index = open_index(settings.index_dir, None)
    try:
        _, store = index.writable
        with store.connection() as conn:
            delete_alert(conn, alert_id)
    finally:
        index.close()
    click.echo(f"deleted alert {alert_id} from {settings.index_dir}", err=True)
