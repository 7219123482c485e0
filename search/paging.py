"""Paging a ranked list: cursors that stay stable across pages, and a per-page cap on results from one source.

A cursor (Solr's ``cursorMark`` idiom: ask with ``cursor=*``, then pass back each response's ``next_cursor``) fixes
the depth of the candidate pool for the whole walk, so every page is cut from the same ranked list and a walk
returns each result exactly once, with no gaps, even though the pool a plain ``offset`` request ranks grows with the
offset. The token is self-contained (no server-side state: any worker process can serve the next page) and names
the query it belongs to and the index generation it was made on; an index change ends the walk with a clear error
rather than a silently shifted list.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from search.errors import InvalidInput, StaleCursor

T = TypeVar("T")
START = "*"
MAX_CURSOR_CHARS = 512


@dataclass(frozen=True)
class Cursor:
    offset: int
    depth: int
    generation: int
    fingerprint: str

    def encode(self) -> str:
        raw = json.dumps([1, self.offset, self.depth, self.generation, self.fingerprint], separators=(",", ":"))
        return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> Cursor:
        bad = InvalidInput("cursor is not one this server made (pass back next_cursor unchanged, or * to start)")
        if len(token) > MAX_CURSOR_CHARS:
            raise bad
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
            version, offset, depth, generation, fingerprint = json.loads(raw)
        except (ValueError, TypeError):
            raise bad from None
        fields_ok = all(isinstance(v, int) and not isinstance(v, bool) for v in (version, offset, depth, generation))
        if not fields_ok or version != 1 or not isinstance(fingerprint, str) or not 0 <= offset <= depth:
            raise bad
        return cls(offset, depth, generation, fingerprint)


def fingerprint(*parts: Hashable) -> str:
    """What a cursor belongs to (query, mode, filters, page size...): a short hash of their repr."""
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def resume(token: str, expect_fingerprint: str, generation: int) -> Cursor:
    """The cursor ``token`` encodes, checked against the request it comes with and the index it will page."""
    cursor = Cursor.decode(token)
    if cursor.fingerprint != expect_fingerprint:
        raise InvalidInput("cursor belongs to another query, mode, filter or page size; start again with cursor=*")
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
