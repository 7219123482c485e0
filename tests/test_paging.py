"""Cursor tokens and per-source page caps (pure functions); walks over a real index are in test_service.py."""

from __future__ import annotations

import base64

import pytest

from search.errors import InvalidInput, StaleCursor
from search.paging import Cursor, diversify, fingerprint, resume


def test_cursor_round_trip_and_checks() -> None:
    c = Cursor(20, 1000, 7, fingerprint("q", "hybrid", None, 10, None))
    assert Cursor.decode(c.encode()) == c
    assert resume(c.encode(), c.fingerprint, 7) == c
    with pytest.raises(InvalidInput, match="another query"):
        resume(c.encode(), fingerprint("other", "hybrid", None, 10, None), 7)
    with pytest.raises(StaleCursor):
        resume(c.encode(), c.fingerprint, 8)


@pytest.mark.parametrize(
    "token",
    ["", "garbage!", "x" * 600, base64.urlsafe_b64encode(b'[1, 5, 2, 0, "f"]').decode(), "WzIsMCwxLDEsImYiXQ"],
)
def test_foreign_tokens_are_input_errors(token: str) -> None:
    with pytest.raises(InvalidInput):
        Cursor.decode(token)


def test_diversify_caps_each_page_and_keeps_everything_once() -> None:
    items = [("a", i) for i in range(6)] + [("b", 6), (None, 7), ("c", 8), ("a", 9)]
    pages = diversify(items, lambda it: it[0], page_size=4, cap=2)
    flat = [it for page in pages for it in page]
    assert sorted(flat, key=lambda it: it[1]) == items  # nothing lost, nothing repeated
    for page in pages:
        assert len(page) <= 4
        counts: dict[str, int] = {}
        for src, _ in page:
            if src is not None:
                counts[src] = counts.get(src, 0) + 1
        assert max(counts.values(), default=0) <= 2
    assert pages[0] == [("a", 0), ("a", 1), ("b", 6), (None, 7)]  # rank order, a's third waits
    assert pages[1][:2] == [("a", 2), ("a", 3)]  # the waiting come first on the next page
    with pytest.raises(InvalidInput):
        diversify(items, lambda it: it[0], page_size=0, cap=1)


def test_diversify_is_the_identity_when_nothing_hits_the_cap() -> None:
    items = [(s, i) for i, s in enumerate("abcdefgh")]
    assert [it for p in diversify(items, lambda it: it[0], 3, 1) for it in p] == items
