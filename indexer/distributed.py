"""Distributed indexing on Ray Data: ``newsdesk index SOURCE... --ray local|ADDRESS``.

Chunking and embedding, the expensive part of indexing, run on Ray actors; everything else is the local indexer's
own code, so a ``--ray`` index is the index ``newsdesk index`` builds without it:

- This process (the driver) reads the sources and calls ``sync_index``, which decides between an incremental update
  and a full build exactly as without ``--ray`` and writes the index itself: SQLite, FAISS or Milvus, BM25 postings,
  story and duplicate labels and manifest, by the same code path. It never loads the model: a Ray task describes it
  (name, dimension, token limit, fingerprint) and makes the int8 ONNX export, once, before any actor starts, so
  actors do not race to make it.
- ``sync_index`` hands its groups of ``batch_articles`` articles to ``RayGroups`` instead of embedding them here:
  each group is one row of a Ray dataset, mapped by ``ChunkEmbed`` actors (one model each; one GPU each when the
  cluster has GPUs and the backend is torch) that run ``new_articles``, the local indexer's own function, on the
  very same groups. The groups matter: the int8 backend quantises activations per forward pass, so a text's vector
  moves (up to 0.03 a component) with the texts that share its batch. Cut where the local indexer cuts, the vectors
  equal a local build's (bit for bit with onnx-int8; to about 1e-7 with torch, whose thread count differs).
- Every finished group is committed to a checkpoint beside the index (``.<name>.ray-checkpoint.sqlite``), keyed by
  a hash of its articles' exact text, the model's fingerprint and the chunking settings, before the index write
  takes it. A run that is killed or fails, rerun with the same command, reads its finished groups back instead of
  embedding them again. The index is written only by the local code path (a full build swaps a complete new
  directory in; an update commits in one transaction), so no run, killed or retried, leaves an article twice or
  half-written. The checkpoint is deleted once the index is written.
- Ray retries a failed group: an actor that dies is restarted and its task retried (Ray Data's defaults for actor
  pools, ``max_restarts=-1`` and ``max_task_retries=-1``), and an exception in a task is retried in place, up to
  ``TASK_RETRIES`` times (``DataContext.retried_map_errors`` and ``max_map_retries``). Results are taken by group,
  once, however many attempts a group took.

Test hook, read here and only by tests/test_distributed.py: ``NEWSDESK_TEST_RAY_FAULT=crash:PATH`` (or
``raise:PATH``) makes the one task that creates the marker file PATH kill its actor process (or raise) before
returning; ``sleep:SECONDS`` makes every task sleep before returning, so a test can kill a run midway. Several,
comma-separated, apply in turn.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import socket
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypedDict

import numpy as np

from indexer.build import Reusable, chunking_config, make_chunker, new_articles
from indexer.sync import SyncReport, sync_index
from search.errors import InvalidInput, NewsdeskError
from search.jsontypes import JSONObject
from search.models import Article
from search.settings import Settings
from search.storage.store import NewArticle, SentenceVectors
from search.text.embedding import files_hash, make_embedder, resolve_model

if TYPE_CHECKING:
    from ray import ObjectRef

LOCAL = "local"
AUTO = "auto"
FAULT_ENV = "NEWSDESK_TEST_RAY_FAULT"
# Attempts after the first for a task that raised (and for the task describing the model): enough for a transient
# error, few enough that a group that always fails stops the run (the finished groups stay in the checkpoint).
TASK_RETRIES = 3
CONNECT_TIMEOUT_S = 5.0  # Ray itself waits minutes for an address where nothing answers
_HOST_PORT = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+):(?P<port>\d{1,5})")


@dataclass
class RayReport(SyncReport):
    """``SyncReport`` and where the work went: actors, threads each, groups embedded now or restored."""

    actors: int = 0
    threads: int = 0
    gpus: int = 0
    batches: int = 0
    restored: int = 0  # groups read back from an interrupted run's checkpoint

    def summary(self) -> str:
        """The line ``newsdesk index --ray`` adds to its report."""
        if not self.batches:
            return "ray: nothing to embed"
        gpus = ", a GPU each" if self.gpus else ""
        restored = f"; {self.restored} restored from an interrupted run" if self.restored else ""
        return (
            f"ray: {self.batches - self.restored} of {self.batches} batches embedded by {self.actors} actor(s) of "
            f"{self.threads} thread(s){gpus}{restored}"
        )


def ray_sync_index(
    articles: Iterable[Article],
    settings: Settings,
    *,
    rebuild: bool = False,
    progress: bool | None = None,
    sources: list[str] | None = None,
    keep_missing: bool = False,
    warn: Callable[[str], None] | None = None,
) -> RayReport:
    """``sync_index`` with chunking and embedding on the Ray cluster ``settings.ray`` (``local`` starts one here).

    A Ray connection this process already holds (a test's, a notebook's) is used as it is; one started here is shut
    down before returning."""
    if settings.ray_actors < 0:
        raise InvalidInput(f"setting ray_actors must not be negative, got {settings.ray_actors}")
    faults = check_faults(os.environ.get(FAULT_ENV, ""))
    parse_address(settings.ray)
    items = list(articles)  # every source read (and any bad record reported) before Ray starts
    started = connect(settings.ray, settings)
    checkpoint = Checkpoint(checkpoint_path(settings.index_dir))
    try:
        model = RemoteModel(describe_remotely(settings))
        embed = RayGroups(settings, model, checkpoint, faults)
        report = sync_index(
            items,
            settings,
            model,
            rebuild=rebuild,
            progress=progress,
            sources=sources,
            embed_groups=embed,
            keep_missing=keep_missing,
            warn=warn,
        )
        checkpoint.remove()  # the index holds every group now
    finally:
        checkpoint.close()  # after a failure the finished groups stay, for the rerun
        if started:
            import ray

            ray.shutdown()
    plan = embed.plan or ActorPlan(0, 0, 0)
    return RayReport(
        **vars(report),
        actors=plan.actors,
        threads=plan.threads,
        gpus=plan.gpus,
        batches=embed.batches,
        restored=embed.restored,
    )


# -- connecting ----------------------------------------------------------------------------------------------------


def parse_address(address: str) -> tuple[str, str | None, int | None]:
    """``(kind, host, port)`` of a ``--ray`` value: ``local``, ``auto`` or ``HOST:PORT`` (a cluster's head, joined
    from a machine of the cluster). Anything else, Ray Client's ``ray://`` included, is an ``InvalidInput``.

    Ray Data does not run over Ray Client: with Ray 2.60 its executor fails on the client's stand-in worker
    ("'Worker' object has no attribute 'core_worker'"), so a ``ray://`` address is refused up front with what to do
    instead, rather than after the model has been loaded on the cluster."""
    value = address.strip()
    if value in (LOCAL, AUTO):
        return value, None, None
    if value.startswith("ray://"):
        raise InvalidInput(
            f"--ray {address}: Ray Data does not run over Ray Client (ray://); run newsdesk index on a machine of "
            "the cluster with --ray auto, or --ray HEAD:6379 (the head's address)"
        )
    match = _HOST_PORT.fullmatch(value)
    if match is None:
        raise InvalidInput(f"--ray takes local, auto or HOST:PORT (a Ray cluster's head), got {address!r}")
    port = int(match["port"])
    if not 0 < port < 65536:
        raise InvalidInput(f"--ray {address!r}: port {port} is out of range")
    return "cluster", match["host"].strip("[]"), port


def connect(address: str, settings: Settings) -> bool:
    """Join the Ray cluster at ``address``, or start one here for ``local``; True when this call started Ray.

    ``local`` is a Ray instance with ``settings.threads`` CPUs, no dashboard, no usage statistics, and its node
    address on the loopback interface (Ray otherwise binds the machine's network address). An address where
    nothing answers fails in seconds with one line, instead of Ray's minutes of retrying."""
    kind, host, port = parse_address(address)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if kind == LOCAL:
        os.environ.setdefault("RAY_AUTH_MODE", "token")  # Ray's default for a local instance, said without a warning
        # Read when ray is first imported: the node's address becomes 127.0.0.1 (Ray's single-machine mode on macOS
        # and Windows), so nothing of it listens on, or talks to, the machine's network interfaces.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        # How long the head waits for its GCS server to write its port (Ray: 30 s). On 2 busy cores (a fresh clone's
        # make test, with the other xdist worker's tests running) the GCS took longer, and a local run failed
        # before it began; a local head waits up to 2 minutes, as Ray itself does for a RocksDB-backed GCS.
        os.environ.setdefault("RAY_gcs_server_port_wait_time_s", "120")
    try:
        import ray
    except ImportError as exc:
        raise NewsdeskError(f"--ray needs Ray Data, not installed here ({exc}): pip install 'newsdesk[ray]'") from exc
    if ray.is_initialized():
        return False
    if host is not None and port is not None:
        _reachable(address, host, port)
    try:
        if kind == LOCAL:
            ray.init(
                num_cpus=settings.threads, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING
            )
        else:
            ray.init(address=address.strip(), log_to_driver=False, logging_level=logging.WARNING)
    except Exception as exc:
        # Ray's errors here are ConnectionError, RuntimeError, ValueError, TimeoutError and, for a local node whose
        # raylet has not registered with its GCS within a fixed 30 s ("The current node timed out during startup"),
        # a bare Exception: each becomes one line and a non-zero exit, not a traceback.
        raise NewsdeskError(f"cannot connect to Ray at {address}: {_first_line(exc)}") from exc
    return True


def _reachable(address: str, host: str, port: int) -> None:
    try:
        socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise NewsdeskError(f"cannot connect to Ray at {address}: {host}:{port} does not answer ({reason})") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- the model, described by a Ray task ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelInfo:
    """What the driver needs of the model without loading it."""

    name: str
    dimension: int
    max_seq_length: int | None
    fingerprint: JSONObject


def describe_model(settings: Settings) -> ModelInfo:
    """Load the model (making the int8 ONNX export when it is missing) and describe it. Runs as one Ray task before
    the actors start, so they find the export made instead of racing to make it."""
    embedder = make_embedder(settings)
    limit = getattr(embedder, "max_seq_length", None)
    return ModelInfo(embedder.name, embedder.dimension, int(limit) if limit else None, embedder.fingerprint())


# by (Ray job, model, backend, model cache, hash of the model's files)
_described: dict[tuple[str, str, str, str, str | None], ModelInfo] = {}


def describe_remotely(settings: Settings) -> ModelInfo:
    """``describe_model`` on the cluster, on one thread (so the fingerprint's probe vectors do not vary by run).

    Remembered for the life of the Ray connection, by model files and backend: a process indexing again (a notebook,
    the tests) does not pay for loading the model once more before its actors load it."""
    import ray

    files = files_hash(Path(resolve_model(settings.model)))
    key = (ray.get_runtime_context().get_job_id(), settings.model, settings.backend, str(settings.model_cache), files)
    if key not in _described:
        task = ray.remote(num_cpus=1, max_retries=TASK_RETRIES)(describe_model)
        try:
            _described[key] = ray.get(task.remote(settings.replace(threads=1)))
        except Exception as exc:  # a RayTaskError wrapping what the task raised
            raise _unwrapped(exc, "describing the model on Ray failed") from exc
    return _described[key]


def _unwrapped(exc: BaseException, doing: str) -> NewsdeskError:
    """A newsdesk error a Ray task raised, as itself; anything else as one line saying what failed."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, NewsdeskError):
        return type(cause)(cause.message)
    return NewsdeskError(f"{doing}: {_first_line(cause if isinstance(cause, BaseException) else exc)}")


class RemoteModel:
    """The ``Embedder`` the driver hands ``sync_index``: a Ray task's description of the model, enough to check an
    index's compatibility, choose the chunking settings and write the manifest. It embeds nothing: the actors do."""

    # No tokenizer here either: what needs one in the driver (reusing an unchanged article's headline + lead vector,
    # indexer/update.py ``reusable_vectors``) is left to the actors, which embed that input again.
    counts_tokens = False

    def __init__(self, info: ModelInfo) -> None:
        self.name = info.name
        self.dimension = info.dimension
        self.max_seq_length = info.max_seq_length
        self._fingerprint = info.fingerprint

    def fingerprint(self) -> JSONObject:
        return self._fingerprint

    def encode(self, texts: list[str], *, batch_size: int = 64, progress: bool = False) -> np.ndarray:
        raise NewsdeskError("with --ray the model runs on Ray actors, not in the indexing process")

    def encode_spans(
        self, texts: list[str], spans: list[list[tuple[int, int]]], *, batch_size: int = 64
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        raise NewsdeskError("with --ray the model runs on Ray actors, not in the indexing process")

    def count_tokens(self, text: str) -> int:
        raise NewsdeskError("with --ray the tokenizer runs on Ray actors, not in the indexing process")


# -- actors --------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ActorPlan:
    actors: int
    threads: int  # CPUs of each actor, and its torch / onnxruntime threads
    gpus: int  # GPUs of each actor: 0 or 1


def plan_actors(resources: Mapping[str, float], settings: Settings, groups: int) -> ActorPlan:
    """How many embedding actors, and what each gets, for ``groups`` groups on a cluster with ``resources``.

    A GPU each when the cluster has GPUs and the backend is torch (the int8 backend runs on CPUs only), as many
    actors as GPUs; otherwise a CPU each, as many as CPUs, with the CPUs shared out evenly as threads (on ``local``
    the cluster has ``threads`` CPUs: 2 actors of 1 thread here). ``ray_actors`` caps the count, and no more actors
    start than there are groups to embed."""
    cpus = max(1, int(resources.get("CPU", 1)))
    gpus = int(resources.get("GPU", 0))
    wanted = settings.ray_actors
    if gpus and settings.backend == "torch":
        return ActorPlan(max(1, min(wanted or gpus, gpus, groups)), 1, 1)
    actors = max(1, min(wanted or cpus, cpus, groups))
    return ActorPlan(actors, max(1, cpus // actors), 0)


class ChunkEmbed:
    """A Ray actor's work: one model and one chunker for the whole run; each call chunks and embeds one group of
    articles with ``new_articles`` and returns one row per article (``encode_rows``)."""

    def __init__(
        self, settings: Settings, threads: int, device: str, known: ObjectRef[dict[str, Reusable]] | None, fault: str
    ) -> None:
        import ray

        self.settings = settings.replace(threads=threads)
        self.embedder = make_embedder(self.settings, device=device)  # pins torch / onnxruntime to ``threads``
        self.chunker = make_chunker(self.settings, self.embedder)
        self.known: Mapping[str, Reusable] | None = ray.get(known) if known is not None else None
        self.fault = fault

    def __call__(self, batch: GroupTable) -> ArrowTable:
        import pyarrow as pa

        tables = []
        for item in batch.to_pylist():
            group, payload = item["group"], item["articles"]
            articles = [Article(id=i, title=t, paragraphs=tuple(p)) for i, t, p in json.loads(payload)]
            rows, embedded = new_articles(articles, self.chunker, self.embedder, self.settings, self.known)
            for fault in filter(None, self.fault.split(",")):
                _inject(fault)
            tables.append(encode_rows(group, rows, embedded))
        joined: ArrowTable = pa.concat_tables(tables)
        return joined


def check_faults(faults: str) -> str:
    """``faults`` (the test hook's value) when every one reads ``crash:PATH``, ``raise:PATH`` or ``sleep:SECONDS``."""
    for fault in filter(None, faults.split(",")):
        mode, _, arg = fault.partition(":")
        if not arg or mode not in ("crash", "raise", "sleep"):
            raise InvalidInput(f"{FAULT_ENV} takes crash:PATH, raise:PATH or sleep:SECONDS, got {fault!r}")
        if mode == "sleep":
            try:
                float(arg)
            except ValueError:
                raise InvalidInput(f"{FAULT_ENV}: {arg!r} is not a number of seconds") from None
    return faults


def _inject(fault: str) -> None:
    """The test hook (``NEWSDESK_TEST_RAY_FAULT``): fail the one task that creates the marker file, or sleep."""
    mode, _, arg = fault.partition(":")
    if mode == "sleep":
        time.sleep(float(arg))
        return
    try:
        os.close(os.open(arg, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return  # this fault was injected already: the retry goes through
    if mode == "crash":
        os._exit(1)  # the actor process dies mid-task, as on a lost node or an out-of-memory kill
    raise RuntimeError(f"injected failure ({FAULT_ENV}={fault})")


# -- rows on the wire and in the checkpoint -----------------------------------------------------------------------

COLUMNS = ("group", "n", "id", "embedded", "passages", "vectors", "article_vector", "sentences", "sentence_vectors")


class StoredRow(TypedDict):
    """One article of a group as the checkpoint keeps it (``COLUMNS`` but the group, which its key replaces)."""

    n: int  # the article's place in its group
    id: str
    embedded: int  # the group's count of texts embedded (passages and headline + leads) rather than reused
    passages: str  # JSON
    vectors: bytes  # float32
    article_vector: bytes
    sentences: str  # JSON
    sentence_vectors: bytes


class ResultRow(StoredRow):
    """One article of a group as an actor returns it (``encode_rows``): every one of ``COLUMNS``."""

    group: int


class ArrowTable(Protocol):
    """What is used here of a ``pyarrow.Table`` (pyarrow has no type hints) of ``encode_rows``'s schema."""

    def to_pylist(self) -> list[ResultRow]: ...


class GroupItem(TypedDict):
    """A group of articles as the dataset the actors map holds it: one row per group."""

    group: int
    articles: str  # JSON: [[id, title, [paragraph, ...]], ...]


class GroupTable(Protocol):
    """What an actor is given: a ``pyarrow.Table`` of ``GroupItem`` rows (one, with ``batch_size=1``)."""

    def to_pylist(self) -> list[GroupItem]: ...


def encode_rows(group: int, rows: list[NewArticle], embedded: int) -> ArrowTable:
    """One group's rows as an Arrow table, one row per article: passages as JSON, vectors as raw float32 bytes
    (exact, no pickling), sentence spans as JSON and their vectors concatenated. ``embedded`` is the group's."""
    import pyarrow as pa

    columns: dict[str, list[int | str | bytes]] = {name: [] for name in COLUMNS}
    for n, row in enumerate(rows):
        sentences = list(row.sentences) or [None] * len(row.passages)
        stacked = [np.asarray(s[1], dtype=np.float32) for s in sentences if s is not None]
        values: dict[str, int | str | bytes] = {
            "group": group,
            "n": n,
            "id": row.article.id,
            "embedded": embedded,
            "passages": json.dumps([list(p) for p in row.passages]),
            "vectors": np.ascontiguousarray(row.passage_vectors, dtype=np.float32).tobytes(),
            "article_vector": np.ascontiguousarray(row.article_vector, dtype=np.float32).tobytes(),
            "sentences": json.dumps([None if s is None else [list(span) for span in s[0]] for s in sentences]),
            "sentence_vectors": np.concatenate(stacked).tobytes() if stacked else b"",
        }
        for name in COLUMNS:
            columns[name].append(values[name])
    schema = pa.schema(
        [
            ("group", pa.int64()),
            ("n", pa.int64()),
            ("id", pa.string()),
            ("embedded", pa.int64()),
            ("passages", pa.string()),
            ("vectors", pa.binary()),
            ("article_vector", pa.binary()),
            ("sentences", pa.string()),
            ("sentence_vectors", pa.binary()),
        ]
    )
    table: ArrowTable = pa.table(columns, schema=schema)
    return table


def decode_row(article: Article, row: StoredRow, dimension: int) -> NewArticle:
    """An article's ``NewArticle`` from its encoded row; ``article`` is the driver's own (every field, as read)."""
    if row["id"] != article.id:
        raise NewsdeskError(f"a Ray result for {row['id']!r} came back in the place of {article.id!r}")
    passages = [(int(p), str(f), int(s), int(e), str(t)) for p, f, s, e, t in json.loads(row["passages"])]
    vectors = np.frombuffer(row["vectors"], dtype=np.float32).reshape(-1, dimension).copy()
    pooled = np.frombuffer(row["sentence_vectors"], dtype=np.float32).reshape(-1, dimension)
    sentences: list[SentenceVectors | None] = []
    at = 0
    for spans in json.loads(row["sentences"]):
        if spans is None:
            sentences.append(None)
            continue
        sentences.append(([(int(a), int(b)) for a, b in spans], pooled[at : at + len(spans)].copy()))
        at += len(spans)
    return NewArticle(
        article=article,
        passages=passages,
        passage_vectors=vectors,
        article_vector=np.frombuffer(row["article_vector"], dtype=np.float32).copy(),
        sentences=sentences,
    )


def checkpoint_path(index_dir: Path) -> Path:
    """Where an unfinished ``--ray`` run keeps its finished groups: beside the index, hidden like its versions."""
    index_dir = index_dir.absolute()
    return index_dir.parent / f".{index_dir.name}.ray-checkpoint.sqlite"


class Checkpoint:
    """Finished groups of a ``--ray`` run that has not written its index yet, each committed in one transaction and
    keyed by ``group_key``, so a rerun finds them whatever else changed, and a group taken twice is stored once."""

    SCHEMA = """
    CREATE TABLE IF NOT EXISTS groups (key TEXT PRIMARY KEY, articles INTEGER NOT NULL);
    CREATE TABLE IF NOT EXISTS rows (
        key TEXT NOT NULL, n INTEGER NOT NULL, id TEXT NOT NULL, embedded INTEGER NOT NULL, passages TEXT NOT NULL,
        vectors BLOB NOT NULL, article_vector BLOB NOT NULL, sentences TEXT NOT NULL, sentence_vectors BLOB NOT NULL,
        PRIMARY KEY (key, n)
    );
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._conn: sqlite3.Connection | None = None

    def _db(self) -> sqlite3.Connection:
        """Opened when first needed: a run with nothing to embed leaves no file. An unreadable one starts over."""
        if self._conn is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            for attempt in (1, 2):
                conn = sqlite3.connect(self.path, timeout=60)
                try:
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.executescript(self.SCHEMA)
                    conn.execute("SELECT COUNT(*) FROM groups").fetchone()
                except sqlite3.DatabaseError:
                    conn.close()
                    if attempt == 2:
                        raise
                    self._unlink()
                    continue
                self._conn = conn
                break
        assert self._conn is not None
        return self._conn

    def keys(self) -> set[str]:
        if self._conn is None and not self.path.exists():
            return set()
        return {str(k) for (k,) in self._db().execute("SELECT key FROM groups")}

    def save(self, key: str, rows: Sequence[StoredRow]) -> None:
        conn = self._db()
        with conn:
            conn.execute("DELETE FROM rows WHERE key = ?", (key,))
            conn.executemany(
                "INSERT INTO rows (key, n, id, embedded, passages, vectors, article_vector, sentences, "
                "sentence_vectors) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        key,
                        r["n"],
                        r["id"],
                        r["embedded"],
                        r["passages"],
                        r["vectors"],
                        r["article_vector"],
                        r["sentences"],
                        r["sentence_vectors"],
                    )
                    for r in rows
                ],
            )
            conn.execute("INSERT OR REPLACE INTO groups (key, articles) VALUES (?, ?)", (key, len(rows)))

    def load(self, key: str) -> list[StoredRow]:
        cursor = self._db().execute(f"SELECT {', '.join(COLUMNS[1:])} FROM rows WHERE key = ? ORDER BY n", (key,))
        return [
            StoredRow(
                n=n,
                id=aid,
                embedded=embedded,
                passages=passages,
                vectors=vectors,
                article_vector=article_vector,
                sentences=sentences,
                sentence_vectors=sentence_vectors,
            )
            for n, aid, embedded, passages, vectors, article_vector, sentences, sentence_vectors in cursor
        ]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def remove(self) -> None:
        self.close()
        self._unlink()

    def _unlink(self) -> None:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)


def group_key(config: Mapping[str, object], group: list[Article]) -> str:
    """What a group's rows depend on: the model, the chunking settings and its articles' exact ids and text (not the
    content hash, which ignores case and spacing that the passages keep)."""
    payload = json.dumps([config, [[a.id, a.title, list(a.paragraphs)] for a in group]], sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8", "surrogatepass")).hexdigest()


# -- the group embedder --------------------------------------------------------------------------------------------


class RayGroups:
    """``sync_index``'s ``GroupEmbedder`` for ``--ray``: groups not in the checkpoint go to a Ray dataset mapped by
    ``ChunkEmbed`` actors; each result is committed to the checkpoint as it arrives, then handed on in order."""

    def __init__(self, settings: Settings, model: RemoteModel, checkpoint: Checkpoint, fault: str = "") -> None:
        self.settings = settings
        self.model = model
        self.checkpoint = checkpoint
        self.fault = fault
        self.plan: ActorPlan | None = None
        self.batches = 0
        self.restored = 0

    def __call__(
        self, groups: list[list[Article]], known: Mapping[str, Reusable] | None
    ) -> Iterator[tuple[list[NewArticle], int]]:
        config = {
            "model": self.model.fingerprint(),
            "chunking": chunking_config(make_chunker(self.settings, self.model), self.settings, self.model),
            "batch_size": self.settings.batch_size,
        }
        keys = [group_key(config, g) for g in groups]
        done = self.checkpoint.keys()
        missing = [i for i, key in enumerate(keys) if key not in done]
        self.batches, self.restored = len(groups), len(groups) - len(missing)
        results = self._run(groups, missing, known) if missing else iter(())
        arrived: dict[int, list[ResultRow]] = {}
        for i, (group, key) in enumerate(zip(groups, keys, strict=True)):
            rows: Sequence[StoredRow]
            if key in done:
                rows = self.checkpoint.load(key)
            else:
                rows = self._take(i, len(group), arrived, results)
                self.checkpoint.save(key, rows)
            out = [decode_row(a, r, self.model.dimension) for a, r in zip(group, rows, strict=True)]
            yield out, int(rows[0]["embedded"]) if rows else 0

    def _take(
        self, group: int, size: int, arrived: dict[int, list[ResultRow]], results: Iterator[ResultRow]
    ) -> list[ResultRow]:
        """Group ``group``'s rows, reading results until they are all in (they come in order, by group)."""
        while len(arrived.get(group, ())) < size:
            try:
                row = next(results)
            except StopIteration:
                raise NewsdeskError(f"Ray returned no result for batch {group}") from None
            except NewsdeskError:
                raise
            except Exception as exc:  # a task that failed for good (after its retries), as Ray reports it
                raise _unwrapped(exc, "a Ray task failed") from exc
            arrived.setdefault(int(row["group"]), []).append(row)
        rows = sorted(arrived.pop(group)[:size], key=lambda r: int(r["n"]))
        if [int(r["n"]) for r in rows] != list(range(size)):
            raise NewsdeskError(f"Ray returned an incomplete result for batch {group}")
        return rows

    def _run(
        self, groups: list[list[Article]], missing: list[int], known: Mapping[str, Reusable] | None
    ) -> Iterator[ResultRow]:
        """Result rows of the ``missing`` groups, in order: one dataset row per group, one actor call per row."""
        import ray
        import ray.data

        # Ray Data's console handler prints its execution plan, deprecation notes and a line saying progress bars are
        # off: errors only on stderr (failures come back as exceptions), its full log stays in the session's files.
        for handler in logging.getLogger("ray.data").handlers:
            if handler.name == "console":
                handler.setLevel(logging.ERROR)
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True  # results come in group order, as the index is written
        context.enable_progress_bars = False  # the indexer's own bar counts articles written
        context.retried_map_errors = True  # an exception in a task: retried in place ...
        context.max_map_retries = TASK_RETRIES  # ... this many times
        context.max_errored_blocks = 0  # never skip a group that keeps failing: fail the run, keep the checkpoint
        resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
        self.plan = plan = plan_actors(resources, self.settings, len(missing))
        payload = [
            GroupItem(group=i, articles=json.dumps([[a.id, a.title, list(a.paragraphs)] for a in groups[i]]))
            for i in missing
        ]
        mapped = ray.data.from_items(payload, override_num_blocks=len(payload)).map_batches(
            ChunkEmbed,
            fn_constructor_kwargs={
                "settings": self.settings,
                "threads": plan.threads,
                "device": "cuda" if plan.gpus else "cpu",
                "known": ray.put(dict(known)) if known else None,
                "fault": self.fault,
            },
            batch_size=1,
            batch_format="pyarrow",
            # A fixed pool. Ray Data's defaults for its actors: one that dies is restarted and its task retried.
            compute=ray.data.ActorPoolStrategy(size=plan.actors),
            num_cpus=plan.threads,
            num_gpus=plan.gpus or None,
        )
        import pyarrow as pa

        for batch in mapped.iter_batches(batch_size=None, batch_format="pyarrow"):
            if not isinstance(batch, pa.Table):  # what batch_format asks for; Ray types a batch as any format
                raise NewsdeskError(f"Ray Data returned a {type(batch).__name__} batch, not a pyarrow table")
            table: ArrowTable = batch
            yield from table.to_pylist()
