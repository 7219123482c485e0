"""Paging a ranked list: cursors that stay stable across pages, and a per-page cap on results from one source.

A cursor (Solr's ``cursorMark`` idiom: ask with ``cursor=*``, then pass back each response's ``next_cursor``) fixes
the depth of the candidate pool for the whole walk, so every page is cut from the same ranked list and a walk
returns each result exactly once, with no gaps, even though the pool a plain ``offset`` request ranks grows with the
offset. The token is self-contained (no server-side state: any worker process can serve the next page) and names
the query it belongs to and the index generation it was made on; an index change ends the walk with a clear error
rather than a silently shifted list.

A cursor is signed (HMAC-SHA256) with a key kept in the index (``index_key``): the generation is public and the
query's fingerprint an unkeyed hash, so an unsigned token could be forged with a depth of a million and make one
request rank the whole corpus. Every field is bounded as well, so a signed cursor from a server with a larger
``cursor_depth`` cannot do it either. Any server of the same index (worker processes, replicas reading its
published manifest) holds the same key, so any of them serves the next page.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
import weakref
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from search.errors import InvalidInput, StaleCursor

T = TypeVar("T")
START = "*"
MAX_CURSOR_CHARS = 512


KEY_FIELD = "cursor_key"  # the manifest's entry: 64 hex digits, made by each build
MAC_BYTES = 16  # 128 bits of HMAC-SHA256: forging one is a 2^-128 guess per request
_FINGERPRINT_CHARS = 16
_PROCESS_KEY = secrets.token_bytes(32)  # the last resort of index_key: cursors valid in this process only
_STORE_KEYS: weakref.WeakKeyDictionary[object, bytes] = weakref.WeakKeyDictionary()
log = logging.getLogger("newsdesk.paging")


def new_key() -> str:
    """A fresh cursor key for a build's manifest."""
    return secrets.token_hex(32)


def index_key(manifest: Mapping[str, object], store: object) -> bytes:
    """The key an index's cursors are signed with.

    The manifest's ``cursor_key`` (written by every build, and published with the manifest to Milvus, so replicas
    share it); for an index built before it existed, one kept in the SQLite store's meta table, made by its first
    writable open; for a read-only copy of such an index, a key of this process (cursors then last one process).
    """
    raw = manifest.get(KEY_FIELD)
    if isinstance(raw, str):
        try:
            key = bytes.fromhex(raw)
        except ValueError:
            key = b""
        if len(key) >= 16:
            return key
    known = _STORE_KEYS.get(store) if store is not None else None
    if known is not None:
        return known
    kept = getattr(store, "cursor_secret", None)
    secret: bytes | None = kept() if callable(kept) else None
    if not secret:
        log.warning("the index has no cursor key and cannot keep one: cursors are valid in this process only")
        secret = _PROCESS_KEY
    if store is not None:
        _STORE_KEYS[store] = secret
    return secret


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class Cursor:
    offset: int
    depth: int
    generation: int
    fingerprint: str

    def encode(self, key: bytes) -> str:
        """``base64(payload).base64(mac)``: the payload is readable (nothing in it is secret), the MAC binds it."""
        payload = json.dumps([2, self.offset, self.depth, self.generation, self.fingerprint], separators=(",", ":"))
        raw = payload.encode()
        return f"{_b64(raw)}.{_b64(_mac(key, raw))}"

    @classmethod
    def decode(cls, token: str, key: bytes) -> Cursor:
        """The cursor in ``token`` if this index's key signed it, else ``InvalidInput`` (tampered, forged, made by
        another index or another version: the caller starts again with ``*``)."""
        bad = InvalidInput("cursor is not one this server made (pass back next_cursor unchanged, or * to start)")
        if len(token) > MAX_CURSOR_CHARS or token.count(".") != 1:
            raise bad
        body, mac = token.split(".")
        try:
            raw, given = _unb64(body), _unb64(mac)
        except ValueError:
            raise bad from None
        if not hmac.compare_digest(given, _mac(key, raw)):
            raise bad
        try:  # signed by this index: well formed unless the format changed
            version, offset, depth, generation, fingerprint = json.loads(raw)
        except (ValueError, TypeError):
            raise bad from None
        numbers = (version, offset, depth, generation)
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in numbers) or version != 2:
            raise bad
        if not isinstance(fingerprint, str) or len(fingerprint) != _FINGERPRINT_CHARS:
            raise bad
        if not 0 <= offset <= depth or generation < 0:
            raise bad
        return cls(offset, depth, generation, fingerprint)


def _mac(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()[:MAC_BYTES]


def fingerprint(*parts: Hashable) -> str:
    """What a cursor belongs to (query, mode, filters, page size...): a short hash of their repr."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:_FINGERPRINT_CHARS]


def resume(
    token: str, expect_fingerprint: str, generation: int, key: bytes, *, page_size: int, max_depth: int
) -> Cursor:
    """The cursor ``token`` encodes, checked against the request it comes with and the index it will page: signed
    by ``key``, of this query, at this generation, at a page boundary, and no deeper than ``max_depth`` (the
    server's ``cursor_depth``, or the page size if larger)."""
    cursor = Cursor.decode(token, key)
    if cursor.fingerprint != expect_fingerprint:
        raise InvalidInput("cursor belongs to another query, mode, filter or page size; start again with cursor=*")
    if cursor.depth > max_depth:
        raise InvalidInput(f"cursor pages deeper than this server's cursor_depth ({max_depth}); start again with *")
    if cursor.offset % page_size:
        raise InvalidInput("cursor does not start a page; pass back next_cursor unchanged, or * to start")
    if cursor.generation != generation:
        raise StaleCursor("the index changed since this cursor was made; start again with cursor=*")
    return cursor


def diversify(items: Sequence[T], source_of: Callable[[T], str | None], page_size: int, cap: int) -> list[list[T]]:
    """``items`` cut into pages of at most ``page_size`` with no more than ``cap`` items of one source on a page.

    Pages are filled in rank order; an item whose source is full on the current page waits, keeping its rank among
    the waiting, and is placed first on a later page. A page ends short only when every remaining item's source is
    full on it. Items without a source are never capped. Deterministic: the same list gives the same pages.
    """
    if cap < 1 or page_size < 1:
        raise InvalidInput("page size and per-source cap must be at least 1")
    waiting: list[T] = list(items)
    pages: list[list[T]] = []
    while waiting:
        counts: dict[str, int] = {}
        page: list[T] = []
        rest: list[T] = []
        for item in waiting:
            src = source_of(item)
            if len(page) < page_size and (src is None or counts.get(src, 0) < cap):
                page.append(item)
                if src is not None:
                    counts[src] = counts.get(src, 0) + 1
            else:
                rest.append(item)
        pages.append(page)
        waiting = rest
    return pages
