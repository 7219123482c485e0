"""The connection to Milvus: pymilvus's ``MilvusClient``, and Milvus Lite servers run in this process.

The one module that holds pymilvus objects (a client, a gRPC server, a query iterator), typed ``Any``: pymilvus
ships no type information. Everything else in search/vectors/milvus/ calls Milvus through ``MilvusConnection.call``,
which turns Milvus's errors into ours (a lost server is a 503 with one line, not a traceback).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import threading
from pathlib import Path
from typing import Any

from search.errors import VectorStoreUnavailable
from search.vectors.milvus.config import check_uri, is_lite, lite_path

CONNECT_TIMEOUT = 10.0  # seconds to reach a Milvus server before reporting it unreachable
# Connects to the in-process Milvus Lite server before reporting it unreachable: it is running (this process started
# it), yet a fresh clone's make test once saw a connect to it time out with every core busy.
LITE_CONNECT_TRIES = 3
LITE_WORKERS = 8  # gRPC threads of an in-process Milvus Lite: concurrent reads are safe, our writes are serialised
# OpenMP threads per Milvus Lite worker thread (its HNSW/IVF indexes are FAISS): one, as search_threads pins the
# FAISS backend's request threads, since concurrent requests already fill the two cores.
LITE_OMP_THREADS = 1


# -- connections and in-process Milvus Lite ------------------------------------------------------------------


class _DropIteratorWarning(logging.Filter):
    """pymilvus's query iterator warns that Milvus Lite gives no MVCC timestamp and falls back to the client's
    clock, on every ``ids()`` call; with ``Strong`` consistency that fallback is what we want, so it is dropped."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "mvccTs" not in record.getMessage()


class _LiteServers:
    """In-process Milvus Lite servers, one per ``.db`` path, shared by every connection to it in this process.

    Started here rather than through pymilvus's ``.db`` URI hook (``milvus_lite.server_manager``) for two reasons:
    that hook logs a traceback and returns a bare "Open local milvus failed" when the directory is locked by
    another process, where we owe the user one clear line; and its gRPC worker threads cannot be given an
    initializer, which we need to pin their OpenMP pool like the FAISS backend's request threads. The server is
    built exactly as ``milvus_lite.adapter.grpc.server`` builds it. Reference-counted: the last ``release`` stops
    it and closes the database (flushing its memtable), freeing the directory lock for other processes.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._servers: dict[Path, tuple[Any, Any, int, int]] = {}  # path -> (grpc server, MilvusLite, port, users)
        atexit.register(self.release_all)

    def acquire(self, path: Path) -> str:
        with self._lock:
            entry = self._servers.get(path)
            if entry is None:
                server, db, port = _start_lite(path)
                entry = (server, db, port, 0)
            self._servers[path] = (*entry[:3], entry[3] + 1)
            return f"http://127.0.0.1:{entry[2]}"

    def release(self, path: Path) -> None:
        with self._lock:
            entry = self._servers.get(path)
            if entry is None:
                return
            if entry[3] > 1:
                self._servers[path] = (*entry[:3], entry[3] - 1)
                return
            del self._servers[path]
        _stop_lite(entry[0], entry[1])

    def release_all(self) -> None:
        with self._lock:
            entries = list(self._servers.values())
            self._servers.clear()
        for server, db, *_ in entries:
            _stop_lite(server, db)


def _pin_omp() -> None:
    import faiss

    faiss.omp_set_num_threads(LITE_OMP_THREADS)


def _start_lite(path: Path) -> tuple[Any, Any, int]:
    from concurrent import futures

    import grpc
    from milvus_lite import DataDirLockedError, MilvusLite
    from milvus_lite.adapter.grpc.servicer import MilvusServicer
    from pymilvus.grpc_gen import milvus_pb2_grpc

    if not path.parent.is_dir():
        raise VectorStoreUnavailable(f"cannot open Milvus Lite at {path}: {path.parent} does not exist")
    try:
        db = MilvusLite(str(path))
    except DataDirLockedError:
        raise VectorStoreUnavailable(
            f"Milvus Lite at {path} is open in another process (Milvus Lite allows one process at a time); stop "
            "that process, or build the index on a Milvus server with --milvus-uri http://HOST:19530"
        ) from None
    except OSError as exc:
        raise VectorStoreUnavailable(f"cannot open Milvus Lite at {path}: {exc.strerror or exc}") from None
    try:
        limit = 256 * 1024 * 1024  # as milvus_lite.adapter.grpc.server and Milvus standalone
        pool = futures.ThreadPoolExecutor(LITE_WORKERS, thread_name_prefix="milvus-lite", initializer=_pin_omp)
        options = [("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)]
        server = grpc.server(pool, options=options)
        milvus_pb2_grpc.add_MilvusServiceServicer_to_server(MilvusServicer(db), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
    except BaseException:
        db.close()
        raise
    return server, db, int(port)


def _stop_lite(server: Any, db: Any) -> None:
    with contextlib.suppress(Exception):
        server.stop(grace=1).wait()
    with contextlib.suppress(Exception):
        db.close()


_LITE = _LiteServers()
_DROP_ITERATOR_WARNING = _DropIteratorWarning()


class MilvusConnection:
    """A ``MilvusClient`` on the index's Milvus; for Milvus Lite also a hold on the in-process server."""

    def __init__(self, uri: str, directory: Path) -> None:
        from pymilvus import MilvusClient
        from pymilvus.exceptions import MilvusException

        check_uri(uri)
        # Milvus Lite, in process or as a server, gives query iterators no MVCC timestamp: a warning per page
        logging.getLogger("pymilvus.client.iterator.query_iterator").addFilter(_DROP_ITERATOR_WARNING)
        self.uri = uri
        self.lite: Path | None = lite_path(uri, directory) if is_lite(uri) else None
        address = _LITE.acquire(self.lite) if self.lite is not None else uri
        tries = LITE_CONNECT_TRIES if self.lite is not None else 1
        for attempt in range(tries):
            try:
                self.client: Any = MilvusClient(uri=address, timeout=CONNECT_TIMEOUT)
                break
            except MilvusException as exc:
                if attempt + 1 < tries:
                    continue  # our own server, started: a connect that timed out on a loaded machine is tried again
                self._release()
                raise VectorStoreUnavailable(f"cannot reach Milvus at {uri}: {reason(exc)}") from None
        self._closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            with contextlib.suppress(Exception):
                self.client.close()
            self._release()

    def _release(self) -> None:
        if self.lite is not None:
            _LITE.release(self.lite)

    def call(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """``client.<method>(...)`` with Milvus's errors as ours: a lost server is a 503, not a traceback."""
        from pymilvus.exceptions import MilvusException

        try:
            return getattr(self.client, method)(*args, **kwargs)
        except MilvusException as exc:
            raise VectorStoreUnavailable(f"Milvus at {self.uri} failed to {what}: {reason(exc)}") from None


def reason(exc: Exception) -> str:
    message = str(getattr(exc, "message", "") or exc).strip().splitlines()
    return message[0] if message else type(exc).__name__


def next_page(iterator: Any, connection: MilvusConnection) -> list[Any]:
    from pymilvus.exceptions import MilvusException

    try:
        return list(iterator.next())
    except MilvusException as exc:
        raise VectorStoreUnavailable(f"Milvus at {connection.uri} failed to list ids: {reason(exc)}") from None
