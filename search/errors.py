"""Every error newsdesk raises on purpose, in one hierarchy.

The API maps each class to an HTTP status and a stable ``code`` string, and the CLI prints its message on one line
and exits non-zero, so a caller can tell bad input from a broken index without parsing messages.
"""

from __future__ import annotations


class NewsdeskError(Exception):
    """Base class: anything newsdesk reports to a user rather than crashing on."""

    code = "newsdesk_error"
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidInput(NewsdeskError):
    """A request or argument that can never succeed as given (empty query, k out of range, ...)."""

    code = "invalid_input"
    status = 400


class NotFound(NewsdeskError):
    """A named thing (an article id) that the index does not hold."""

    code = "not_found"
    status = 404


class Unauthorized(NewsdeskError):
    """A request without the API key it needs, or with a wrong one."""

    code = "unauthorized"
    status = 401


class WritesDisabled(NewsdeskError):
    """A write over HTTP to a server with no write key configured: refused rather than left open."""

    code = "writes_disabled"
    status = 403


class StaleCursor(NewsdeskError):
    """A paging cursor made on an earlier state of the index: the list it walked no longer exists."""

    code = "stale_cursor"
    status = 409


class StaleIndex(NewsdeskError):
    """The store moved on since this process loaded its in-memory index: another process committed a write, or a
    rebuild swapped the index directory. A writer catches up (reloads) and writes again; a request that still meets
    it after that is answered 503, retryable."""

    code = "index_changed"
    status = 503


class SourceError(NewsdeskError):
    """An input corpus that cannot be read: missing file, unknown format, malformed row, missing fields."""

    code = "bad_source"
    status = 400


class IndexError_(NewsdeskError):
    """The index directory cannot be used. Named with a trailing underscore so it never shadows the builtin."""

    code = "index_error"
    status = 503


class IndexMissing(IndexError_):
    """No index exists at the configured location."""

    code = "index_missing"


class IndexCorrupt(IndexError_):
    """The manifest, the SQLite store and the vectors disagree, or a file is unreadable."""

    code = "index_corrupt"


class ModelMismatch(IndexError_):
    """The configured embedding model is not the one the index was built with.

    Vectors from two models live in unrelated spaces even when their dimensions agree, so searching one with the
    other returns confident nonsense; refusing is the only safe answer.
    """

    code = "model_mismatch"
    status = 409


class VectorStoreUnavailable(IndexError_):
    """The index's vector store cannot be reached or opened: a Milvus server that does not answer, or a Milvus Lite
    database another process holds. Not the request's fault and not a broken index, so neither 4xx nor corrupt."""

    code = "vector_store_unavailable"


class StorageError(NewsdeskError):
    """The disk refused a write newsdesk needed (full, or gone read-only) while building an index. The build is
    abandoned and the previous index kept; a write already committed to SQLite is not this (see indexer/update.py
    ``save_after_commit``): its caches are left stale and rebuilt on the next open."""

    code = "storage_error"
    status = 507
