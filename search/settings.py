"""Settings, declared once with their defaults and help text.

Read from ``NEWSDESK_*`` environment variables and CLI flags at the edges only (``Settings.from_env`` and
``Settings.replace``), then passed down as one immutable object, so no module reads the environment by itself.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TypeVar, get_args

from search.errors import InvalidInput
from search.models import Mode, Scoring
from search.ranking.answers import AnswerRanking
from search.ranking.fusion import Fusion
from search.vectors.registry import VECTOR_BACKENDS

DEFAULT_MODEL = "all-MiniLM-L6-v2"
MODES: tuple[Mode, ...] = get_args(Mode)  # the Literal is the one list; this is its runtime form
BACKENDS = ("torch", "onnx-int8")
STORES = tuple(VECTOR_BACKENDS)  # the vector backends (search/vectors/registry.py)
SIMILAR_SCORINGS: tuple[Scoring, ...] = get_args(Scoring)
# bench/count_floor.py on the dev sets (SciFact train, RealTime QA dev): see bench/README.md
MATCH_FLOOR = 0.22
T = TypeVar("T")


def _setting(default: T, help: str, *, secret: bool = False) -> T:
    """A field with its help text; a secret one stays out of ``repr`` (settings end up in logs and tracebacks)."""
    return field(default=default, metadata={"help": help}, repr=not secret)


@dataclass(frozen=True)
class Settings:
    """Everything a user can tune. Each field's ``help`` is what ``newsdesk --help`` and the README show."""

    index_dir: Path = _setting(Path("index_data/sample"), "Index directory to build or serve.")
    model: str = _setting(
        DEFAULT_MODEL,
        "sentence-transformers model name or local path; the default is the bundled all-MiniLM-L6-v2.",
    )
    threads: int = _setting(2, "Threads for torch, FAISS/OpenMP and tokenizers (this machine has 2 cores).")
    search_threads: int = _setting(
        1,
        "FAISS threads per query in the search service: concurrent requests already fill the cores, and OpenMP's "
        "fork and join costs one query more than it saves (measured by bench/scale.py).",
    )
    # onnx-int8 by measurement (bench/embed.py): 1.85x the passages/s of a plain torch loop on BBC paragraphs,
    # SciFact test nDCG@10 0.7400 against 0.7392 with torch fp32.
    backend: str = _setting(
        "onnx-int8",
        "Embedding backend: onnx-int8 (the model exported once to int8 ONNX, run by onnxruntime) or torch (fp32).",
    )
    model_cache: Path = _setting(
        Path("~/.cache/newsdesk/models"), "Where the onnx-int8 backend keeps the models it exports (one per model)."
    )
    batch_size: int = _setting(64, "Passages per embedding batch while indexing.")
    max_passage_tokens: int = _setting(
        200, "Split paragraphs longer than this many model tokens on sentence boundaries."
    )
    min_passage_chars: int = _setting(
        60, "Paragraphs shorter than this (bylines, captions) merge with a neighbouring paragraph."
    )
    title_context: bool = _setting(
        True, "Embed each body passage with its article's headline in front (the stored text stays exact)."
    )
    faiss_factory: str = _setting(
        "auto",
        "FAISS index_factory string for passage vectors, or auto: exact IDMap2,Flat below faiss_ann_threshold vectors, "
        "faiss_ann_factory from there (decided when a base is written: a build, or a merge that crosses it).",
    )
    # bench/README.md "Exact below a threshold": exact p50 on 1 thread grows with the vectors (55 ms at 110k, 82-111 ms
    # at 175k) where IVF stays at a few ms; 110k and the 180k archive stay exact, the 1.1M corpus is ANN. IVF,Flat keeps
    # exact codes (recall not capped as SQ8's), maps its lists (HNSW cannot) and merges without retraining; how many
    # lists it probes is faiss_ann_probe_share below.
    faiss_ann_threshold: int = _setting(
        250_000, "With faiss_factory auto: passage (or article) vectors from which the index is ANN, not exact."
    )
    faiss_ann_factory: str = _setting(
        "IVF{nlist},Flat",
        "With faiss_factory auto: the ANN factory above the threshold; {nlist} is the power of two nearest 4*sqrt(N).",
    )
    faiss_ann_search: str = _setting(
        "", "With faiss_factory auto: search parameters of the ANN index, unless faiss_search sets them."
    )
    # bench/README.md "How many lists a search probes": recall@10 of IVF{nlist},Flat on question queries fell as the
    # archive grew at a fixed nprobe (256 of 4,096 lists: 0.936 at 924k); as a share of the lists it held.
    faiss_ann_probe_share: float = _setting(
        0.125,
        "With faiss_factory auto and an IVF ANN factory: the share of its lists a search probes (nprobe = share x "
        "nlist, at least 256 or all lists; recorded when a base is written or `newsdesk index` runs), unless "
        "faiss_ann_search or faiss_search name nprobe.",
    )
    faiss_search: str = _setting(
        "", "FAISS search parameters for passage vectors, e.g. efSearch=128 (HNSW) or nprobe=32 (IVF); empty: defaults."
    )
    # -- vector store backend (issue 8) --
    # Build-time choices, recorded in the manifest like faiss_factory: an index is opened with what built it.
    # Validated by search/vectors/milvus/config.py (MilvusConfig.from_settings) when a build uses them.
    store: str = _setting(
        "faiss",
        "Vector store for passage and article vectors: faiss (in-process files in the index directory) or milvus "
        "(two Milvus collections, through pymilvus).",
    )
    milvus_uri: str = _setting(
        "milvus.db",
        "Milvus for --store milvus: http(s)://HOST:19530 (a Milvus server or cluster) or a path ending in .db "
        "(Milvus Lite in-process, one process at a time; a relative path is inside the index directory).",
    )
    milvus_index: str = _setting(
        "FLAT",
        "Milvus index type for passage vectors: FLAT (exact), HNSW, HNSW_SQ, IVF_FLAT, IVF_SQ8 (and on a Milvus "
        "server IVF_PQ, DISKANN, SCANN, AUTOINDEX); article vectors are always FLAT.",
    )
    milvus_index_params: str = _setting(
        "", "Milvus index build parameters, e.g. M=32,efConstruction=200 (HNSW) or nlist=1024 (IVF); empty: defaults."
    )
    milvus_search: str = _setting(
        "", "Milvus search parameters for passage vectors, e.g. ef=128 (HNSW) or nprobe=32 (IVF); empty: defaults."
    )
    # -- distributed indexing (issue 8) --
    # `newsdesk index --ray` (indexer/distributed.py) chunks and embeds on Ray actors; this process writes the index.
    # batch_articles was indexer/build.py's GROUP_ARTICLES: the int8 backend's vector of a text depends a little on
    # the texts in its forward pass, so a --ray build equals a local one only when both cut the corpus alike.
    ray: str = _setting(
        "",
        "Chunk and embed on Ray while indexing: local (a Ray instance on this machine with `threads` CPUs), auto (the "
        "cluster this machine is part of) or HOST:6379 (a cluster's head; Ray Data does not run over Ray Client's "
        "ray://); empty: in this process.",
    )
    ray_actors: int = _setting(
        0,
        "Embedding actors for --ray, one model each; 0: one per GPU when the cluster has GPUs and the backend is "
        "torch, else one per CPU.",
    )
    batch_articles: int = _setting(
        512,
        "Articles chunked and embedded together while indexing (bounds memory); with --ray one Ray task, and what an "
        "interrupted run resumes from.",
    )
    # -- stateless replicas (search/vectors/milvus/replica.py) --
    collections: str = _setting(
        "",
        "Serve as a stateless replica the index published on Milvus (at milvus_uri) under this name: "
        "newsdesk_<index name> (or its _meta collection); no index directory is read. Empty: serve index_dir.",
    )
    replica_poll: float = _setting(
        0.5, "Seconds between a replica's checks for a newly published state (a write or a rebuild) in Milvus."
    )
    candidates: int = _setting(200, "Passages retrieved from FAISS per query before grouping into articles.")
    mode: str = _setting("hybrid", "Default ranking: hybrid (BM25 and dense, fused), dense or lexical.")
    fusion: str = _setting("convex", "How hybrid mode fuses: convex (weighted sum of normalised scores) or rrf.")
    fusion_alpha: float = _setting(0.6, "Weight of the dense side in convex fusion (tuned on SciFact train).")
    # RealTime QA dev answer recall@5 is flat from 0.4 to 0.8 (0.40-0.42 on 100 questions); 0.8 is the one that also
    # picks the answering paragraph for "why" questions on the sample, where 0.6 prefers a word-overlap paragraph.
    passage_alpha: float = _setting(
        0.8, "Weight of the dense side when fusing passage scores (which passages to show, batch passage runs)."
    )
    # bench/quality.py rtqa (bench/README.md "Answer ranking"), answer recall@5 on 222 dev questions: RRF (k=60)
    # 0.545, the convex passage fusion 0.563, these signals with k=20 0.590 (sentence, headline, article BM25 and
    # RM3 did not help there: left out); on the 223 later questions held back from the choice: 0.462 / 0.466 / 0.498.
    answer_signals: str = _setting(
        "dense,lexical,date",
        "Signals that rank a dated question's passages (as_of: /api/answers, batch passage runs) in hybrid mode, "
        "fused by weighted reciprocal rank: any of dense, lexical, fused, sentence, article, headline, expanded, "
        "date, each optionally name:weight (search/ranking/answers.py); empty: passage_alpha fusion, which an "
        "undated question always gets.",
    )
    answer_rrf_k: int = _setting(20, "The k of the reciprocal-rank fusion of answer_signals: weight / (k + rank).")
    fusion_normalisation: str = _setting("max", "Score normalisation before convex fusion: max, minmax or zscore.")
    rrf_k: int = _setting(60, "The k of reciprocal-rank fusion: 1 / (k + rank).")
    title_weight: float = _setting(1.0, "BM25 weight of an article's headline relative to its body.")
    lexical_candidates: int = _setting(100, "Articles and passages taken from BM25 per query before fusion.")
    # bench/bm25_topk.py: identical top k, but no faster in numpy at 1.1M passages (0.93-1.2x), and its bounds are
    # recomputed after every write (2.8 s at 1.1M): off until a compiled postings walk makes it pay. Measured again on
    # the 924k-passage archive (bench/archive.py's index, 30 questions after 10 warm-up ones, load average ~11 on the
    # 2 shared cores): lexical search p50 74 ms off / 65 ms on, hybrid 671 / 828 ms (a hybrid search spends ~60% in
    # FAISS counting dense matches and under 5% in BM25), top 100 of both tables 42 / 46 ms; at 109k both tables are
    # under 200,000 rows and take the exhaustive path either way.
    lexical_pruning: bool = _setting(
        False,
        "Find BM25's top k by block-max MaxScore pruning (same answers as scoring every posting: 120 of 120 top 10s "
        "and top 100s at 924k passages) on tables of 200,000 rows or more. Off: no faster in numpy (924k passages: "
        "lexical p50 65 ms on vs 74 ms off, hybrid 828 vs 671 ms, within a loaded machine's noise).",
    )
    match_floor: float = _setting(
        MATCH_FLOOR,
        "Cosine (query to best passage) from which an article holding no query word still matches a query in dense "
        "and hybrid modes: what a search's total and facets count, and where its results end. Measured for the "
        "bundled model by bench/count_floor.py; -1 counts and lists every candidate.",
    )
    passages_per_result: int = _setting(3, "Best passages shown under each article.")
    related_per_result: int = _setting(3, "Related stories listed under each search result.")
    related_from_profiles: int = _setting(
        10_000,
        "Articles from which related stories are re-ranked from each article's more-like-this profile (its nearest "
        "articles, kept by every write) instead of scanning every article vector; -1: always scan. "
        "bench/archive.py reports what it keeps of the scan (related_recall).",
    )
    similar_scoring: str = _setting(
        "profile",
        "More like this ranks by: profile (shared neighbours over article vectors and tf-idf, "
        "search/news/neighbours.py) "
        "or cosine (the article vectors' cosine alone).",
    )
    duplicate_threshold: float = _setting(
        0.995, "Article-vector cosine at or above which two articles count as exact duplicates."
    )
    # Both floors chosen by bench/timeline.py on half of the Reuters topics (best F1 of "shares a topic with the
    # article"), checked on the other half: see bench/README.md.
    timeline_min_similarity: float = _setting(
        0.45,
        "Article-vector cosine below which a neighbour is left out of an article's timeline (its story's articles "
        "stay); chosen on Reuters topics by bench/timeline.py.",
    )
    timeline_min_relevance: float = _setting(
        0.4,
        "Best-passage cosine to the query below which an article is left out of a query's timeline; chosen on "
        "Reuters topics by bench/timeline.py.",
    )
    max_query_chars: int = _setting(1000, "Longest query accepted.")
    max_k: int = _setting(100, "Largest k accepted by search and similar.")
    max_batch_k: int = _setting(
        1000,
        "Largest k accepted by batch runs (newsdesk search --queries, evaluation): a TREC run is deeper than a page.",
    )
    query_cache_size: int = _setting(1024, "Recent query embeddings kept in memory.")
    read_only: bool = _setting(
        False,
        "Open the index read-only: SQLite opened without write access, writes refused (403 writes_disabled, newsdesk "
        "add fails). Also on by itself where the index directory cannot be written (a read-only copy or mount).",
    )
    api_key: str = _setting(
        "",
        "Key for the write endpoints (Authorization: Bearer <key>); empty: writes over HTTP are disabled.",
        secret=True,
    )
    read_api_key: str = _setting(
        "", "Key required for reads as well (the write key also reads); empty: reads are open.", secret=True
    )
    max_body_bytes: int = _setting(
        16 * 1024 * 1024,
        "Largest request body the API accepts; the server refuses a larger one (413) before reading it, and reads no "
        "body of a write without the write key.",
    )
    # -- slow clients (api/server.py): how long a request may take to arrive, and how many connections a process holds
    header_timeout: float = _setting(
        10.0,
        "Seconds a client may take to send a request's line and headers, from their first byte; a slower connection "
        "is closed, so clients trickling bytes cannot hold the server.",
    )
    body_timeout: float = _setting(
        60.0, "Seconds a client may take to send a request's body once its headers arrived; a slower one is closed."
    )
    idle_timeout: float = _setting(
        30.0, "Seconds an open connection may send nothing (between keep-alive requests) before it is closed."
    )
    max_connections: int = _setting(
        500,
        "Open connections per server process; past it, new connections wait in the listen backlog until one closes.",
    )
    write_nice: int = _setting(
        10,
        "CPU niceness (0-19) of the write process newsdesk serve runs beside its serving processes when it runs "
        "several: writes take the CPU searches leave, so a stream of writes costs searches little; 0 shares it "
        "equally. One process serving (--processes 1) writes in itself.",
    )
    max_batch_articles: int = _setting(1000, "Most articles one write request may carry.")
    max_field_chars: int = _setting(
        200_000, "Longest text field of a written article (id, title, each paragraph; ids are capped at 1,000)."
    )
    cursor_depth: int = _setting(
        1000, "Articles in the fixed ranked list a cursor walk pages through (search with cursor=*)."
    )
    # -- the web (indexer/web.py, indexer/watch.py): feeds and pages fetched by newsdesk index and newsdesk watch
    fetch_timeout: float = _setting(
        10.0, "Seconds one HTTP request for a feed or page may take (connect and each read) before it is given up."
    )
    user_agent: str = _setting(
        "newsdesk/0.1 (news search indexer)",
        "User-Agent header sent with every request for a feed or page, so that sites can tell who reads them.",
    )
    watch_concurrency: int = _setting(
        4, "Feeds and pages newsdesk watch fetches at once; the rest wait, so a poll holds this many connections."
    )
    # -- saved searches (search/alerts/): defaults chosen by bench/alerts.py on RealTime QA dev (bench/README.md)
    alert_threshold_hybrid: float = _setting(
        0.7,
        "Score a new article must reach for a hybrid saved search without its own threshold: 0.6 x its best "
        "passage's cosine + 0.4 x the IDF-weighted share of the query's terms it holds.",
    )
    alert_threshold_dense: float = _setting(
        0.625, "Cosine of its best passage a new article must reach for a dense saved search without its own threshold."
    )
    alert_threshold_lexical: float = _setting(
        0.85,
        "IDF-weighted share of the query's terms a new article must hold for a lexical saved search without its own "
        "threshold.",
    )
    max_alerts: int = _setting(
        10000, "Most saved searches an index keeps (each write scores its articles against all)."
    )
    alert_entries: int = _setting(
        20, "Latest matches an alert's page, Atom feed and GET /api/alerts/<id> show (copies grouped under each)."
    )
    alert_webhook_timeout: float = _setting(
        5.0, "Seconds one webhook post may take (connect and answer) before it counts as failed and is retried."
    )
    alert_retry_base: float = _setting(
        2.0, "Seconds before the first retry of a failed webhook post; each further retry waits twice as long."
    )
    alert_max_attempts: int = _setting(8, "Tries of a webhook post before the match is marked failed (and counted).")
    alert_poll: float = _setting(
        5.0, "Seconds between a server's looks for webhook posts due (matches written by other processes, retries)."
    )

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: object) -> Settings:
        """Defaults, then ``NEWSDESK_<FIELD>`` variables, then explicit overrides (CLI flags)."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in fields(cls):
            raw = env.get(f"NEWSDESK_{f.name.upper()}")
            if raw is not None and raw != "":
                values[f.name] = _parse(f.name, f.default, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        # Names and values known only at run time (the environment, a CLI's options): the constructor taken as an
        # untyped callable, as ``replace`` below takes ``dataclasses.replace``; ``validated`` checks the values.
        make: Callable[..., Settings] = cls
        return make(**values).validated()

    def replace(self, **changes: object) -> Settings:
        """These settings with ``changes`` (None meaning "unchanged", as an option not given on the command line)."""
        change: Callable[..., Settings] = dataclasses.replace
        return change(self, **{k: v for k, v in changes.items() if v is not None}).validated()

    def validated(self) -> Settings:
        positive = (
            "threads",
            "search_threads",
            "batch_size",
            "max_passage_tokens",
            "candidates",
            "max_k",
            "max_batch_k",
            "max_query_chars",
            "lexical_candidates",
            "cursor_depth",
            "max_body_bytes",
            "max_connections",
            "max_batch_articles",
            "max_field_chars",
            "watch_concurrency",
            "max_alerts",
            "alert_entries",
            "alert_max_attempts",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise InvalidInput(f"setting {name} must be at least 1, got {getattr(self, name)}")
        for name in ("passages_per_result", "related_per_result", "min_passage_chars", "query_cache_size"):
            if getattr(self, name) < 0:
                raise InvalidInput(f"setting {name} must not be negative, got {getattr(self, name)}")
        if self.related_from_profiles < -1:
            raise InvalidInput(
                f"setting related_from_profiles must be -1 (never) or a count, got {self.related_from_profiles}"
            )
        if self.similar_scoring not in SIMILAR_SCORINGS:
            raise InvalidInput(f"setting similar_scoring must be one of {', '.join(SIMILAR_SCORINGS)}")
        if not 0.0 < self.duplicate_threshold <= 1.0:
            raise InvalidInput("setting duplicate_threshold must be in (0, 1]")
        for name in ("timeline_min_similarity", "timeline_min_relevance"):
            if not -1.0 <= getattr(self, name) <= 1.0:
                raise InvalidInput(f"setting {name} must be a cosine in [-1, 1], got {getattr(self, name)}")
        if self.mode not in MODES:
            raise InvalidInput(f"setting mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        for name in (
            "header_timeout",
            "body_timeout",
            "idle_timeout",
            "fetch_timeout",
            "alert_webhook_timeout",
            "alert_retry_base",
            "alert_poll",
        ):
            if not getattr(self, name) > 0:
                raise InvalidInput(f"setting {name} must be a positive number of seconds, got {getattr(self, name)}")
        if not 0 <= self.write_nice <= 19:
            raise InvalidInput(f"setting write_nice must be a niceness from 0 to 19, got {self.write_nice}")
        if self.replica_poll < 0:
            raise InvalidInput(f"setting replica_poll must not be negative, got {self.replica_poll}")
        if not -1.0 <= self.match_floor <= 1.0:
            raise InvalidInput(f"setting match_floor must be a cosine, between -1 and 1, got {self.match_floor}")
        if not 0.0 < self.faiss_ann_probe_share <= 1.0:
            raise InvalidInput(f"setting faiss_ann_probe_share must be in (0, 1], got {self.faiss_ann_probe_share}")
        if self.title_weight <= 0:
            raise InvalidInput("setting title_weight must be positive")
        self.fusion_config()  # validates method, alpha, normalisation and rrf_k
        self.fusion_config(passages=True)
        AnswerRanking.parse(self.answer_signals, self.answer_rrf_k)  # validates names, weights and k
        return self

    def fusion_config(self, passages: bool = False) -> Fusion:
        alpha = self.passage_alpha if passages else self.fusion_alpha
        return Fusion(self.fusion, alpha, self.fusion_normalisation, self.rrf_k)

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: f.metadata["help"] for f in fields(cls)}


def _parse(name: str, default: object, raw: str) -> object:
    try:
        if isinstance(default, bool):
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if isinstance(default, Path):
            return Path(raw)
        if isinstance(default, int | float | str):
            return type(default)(raw)
        raise TypeError(f"setting {name} has a default of type {type(default).__name__}, which no variable can set")
    except ValueError:
        raise InvalidInput(f"NEWSDESK_{name.upper()}={raw!r} is not a valid {type(default).__name__}") from None
